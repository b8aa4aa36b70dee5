//! The build script of every ring-3 server crate of the native stub
//! (`build = "../stub-abi/server_build.rs"` in its Cargo.toml): links its
//! binaries with the servers' linker script (`stub-abi/server.ld`) when
//! they are built for the bare machine; host builds (tests, clippy) use the
//! ordinary host linker.

fn main() {
    println!("cargo:rerun-if-changed=../stub-abi/server_build.rs");
    println!("cargo:rerun-if-changed=../stub-abi/server.ld");
    if std::env::var("TARGET").as_deref() == Ok("x86_64-unknown-none") {
        let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
        println!("cargo:rustc-link-arg-bins=-T{dir}/../stub-abi/server.ld");
    }
}
