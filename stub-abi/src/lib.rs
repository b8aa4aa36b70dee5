//! The native stub's ABI, as its ring-3 tasks and the stub itself see it:
//! the `int 0x80` system calls ([`syscall`], and their wrappers in
//! [`sys`]), the fixed virtual addresses of every ring-3 task
//! ([`layout`]), and a task's start-up ([`server_entry!`],
//! [`ring3_task!`], [`host_main!`], [`port_io!`]).
//!
//! The wire types both platforms share (exit records, resumes, the
//! manifest, the device messages) are `ipc_proto`'s; the seL4 components
//! (`sel4/`) do not depend on this crate.
#![no_std]
#![deny(missing_docs)]

pub mod inject;
pub mod layout;
#[cfg(target_os = "none")]
pub mod sys;
pub mod syscall;

pub use syscall::Syscall;

/// A ring-3 task's `main` where it cannot run (built for the host, as
/// `cargo test` and `cargo clippy` do): prints `$why` and exits with
/// status 2.
#[macro_export]
macro_rules! host_main {
    ($why:expr) => {
        #[cfg(not(target_os = "none"))]
        fn main() {
            eprintln!("{}", $why);
            std::process::exit(2);
        }
    };
}
