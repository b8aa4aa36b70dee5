//! Every wire type between the splitvisor stub and its servers.
//!
//! This crate is the one place where a byte layout is defined. Fixed-size
//! records that cross the privilege boundary on every VM exit use `zerocopy`
//! layouts (`#[repr(C)]`, no implicit padding); the boot manifest, which is
//! variable control-plane data read once, uses `postcard`.
//!
//! The layouts are pinned by the tests at the bottom of each module: a change
//! that moves a field breaks a test and must bump [`ABI_VERSION`].
#![no_std]
#![deny(missing_docs)]

pub mod block;
pub mod device;
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

pub mod exit;
pub mod guest_writes;
pub mod inject;
pub mod layout;
pub mod manifest;
pub mod mmu;
pub mod net;
pub mod pci;
pub mod stats;
#[cfg(target_os = "none")]
pub mod sys;
pub mod syscall;
pub mod trace;
pub mod vcpu;
pub mod x86;

/// Bytes the host types on the guest's console (COM1) to ask the
/// vmm-server to end the VM with a report -- the guest's RIP, the last
/// exits, the statistics line -- before it kills the emulator (`splitvisor
/// run` at a timeout or Ctrl-A X). Nobody types them; the guest may see
/// them too, which no longer matters.
pub const CONSOLE_REPORT_REQUEST: &[u8; 8] = b"\0\x1bSVREP\0";

/// Version of the stub ABI. The stub refuses a `Resume` from a server built
/// against another version.
pub const ABI_VERSION: u32 = 13;

pub use exit::ExitKind;
pub use stats::Stats;
pub use syscall::{ErrorCode, Syscall};
pub use vcpu::{
    EventInjection, EventKind, ExitRecord, GuestControl, GuestRegs, PagingState, Resume,
    ResumeFlags, Segment, VcpuArch, VcpuPage,
};
