//! Generates `consts.rs` (invocation labels, object types, syscall numbers,
//! boot-information and IPC-buffer offsets, VMEnter message registers) from
//! the libsel4 headers of the installed kernel named by `SEL4_PREFIX`, by
//! compiling and running `gen_consts.c` with the build machine's C compiler
//! (`$CC`, else `cc`). Only for the bare target: host builds (`cargo test
//! --workspace`) get an empty crate and need no kernel.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=gen_consts.c");
    println!("cargo:rerun-if-env-changed=SEL4_PREFIX");
    if std::env::var("TARGET").as_deref() != Ok("x86_64-unknown-none") {
        return;
    }
    let Some(prefix) = std::env::var_os("SEL4_PREFIX") else {
        panic!(
            "SEL4_PREFIX is not set: it names an installed seL4 kernel (the folder holding \
             libsel4/include); `splitvisor build --platform sel4` sets it"
        );
    };
    let include = PathBuf::from(prefix).join("libsel4").join("include");
    println!(
        "cargo:rerun-if-changed={}",
        include.join("kernel").join("gen_config.h").display()
    );
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let exe = out.join("gen_consts");
    let cc = std::env::var_os("CC").unwrap_or_else(|| "cc".into());
    let status = Command::new(&cc)
        .arg("-ffreestanding")
        .arg("-I")
        .arg(&include)
        .arg("-o")
        .arg(&exe)
        .arg("gen_consts.c")
        .status()
        .unwrap_or_else(|e| panic!("cannot run the C compiler {cc:?}: {e}"));
    assert!(
        status.success(),
        "gen_consts.c did not compile against {}",
        include.display()
    );
    let text = Command::new(&exe).output().expect("gen_consts runs");
    assert!(text.status.success(), "gen_consts failed");
    std::fs::write(out.join("consts.rs"), text.stdout).expect("OUT_DIR is writable");
}
