//! Links the ring-3 binary with the servers' linker script when it is built
//! for the bare machine; host builds use the ordinary host linker.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=../stub-abi/server.ld");
    // `server::config`'s switch for before/after figures.
    println!("cargo:rerun-if-env-changed=SPLITVISOR_MMU_UNSYNC");
    if std::env::var("TARGET").as_deref() == Ok("x86_64-unknown-none") {
        let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
        println!("cargo:rustc-link-arg-bins=-T{dir}/../stub-abi/server.ld");
    }
}
