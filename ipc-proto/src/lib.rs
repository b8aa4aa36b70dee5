//! Every wire type between the splitvisor stub and its servers.
//!
//! This crate is the one place where a byte layout is defined. Fixed-size
//! records that cross the privilege boundary on every VM exit use `zerocopy`
//! layouts (`#[repr(C)]`, no implicit padding); the boot manifest, which is
//! variable control-plane data read once, uses `postcard`.
//!
//! The native stub's own ABI -- its `int 0x80` system calls, the fixed
//! addresses of its ring-3 tasks, their start-up -- is in `stub-abi`, so
//! that both platforms (the native stub and seL4) depend on this crate
//! equally.
//!
//! The layouts are pinned by the tests at the bottom of each module: a change
//! that moves a field breaks a test and must bump [`ABI_VERSION`].
#![no_std]
#![deny(missing_docs)]

pub mod block;
pub mod config_block;
pub mod device;
pub mod error;
pub mod exit;
pub mod guest_writes;
pub mod inject;
pub mod manifest;
pub mod mmu;
pub mod net;
pub mod pci;
pub mod stats;
pub mod trace;
pub mod vcpu;
pub mod x86;

/// Bytes the host types on the guest's console (COM1) to ask the
/// vmm-server to end the VM with a report -- the guest's RIP, the last
/// exits, the statistics line -- before it kills the emulator (`splitvisor
/// run` at a timeout or Ctrl-A X). Nobody types them; the guest may see
/// them too, which no longer matters.
pub const CONSOLE_REPORT_REQUEST: &[u8; 8] = b"\0\x1bSVREP\0";

/// Size of a small page: a channel's shared page, the VCPU page and the
/// install page are one each, and the messages in them must fit.
pub const PAGE_SIZE: u64 = 4096;

/// The notification bits one task may signal another with (the native
/// stub's `Signal`): the low 16. The pci doorbells
/// ([`pci::doorbell_bit`]) and the guest-writes channels
/// ([`guest_writes::signal_bit`]) take theirs from these.
pub const SIGNAL_BITS: u64 = 0xffff;

/// Version of the stub ABI. The stub refuses a `Resume` from a server built
/// against another version.
pub const ABI_VERSION: u32 = 15;

pub use error::ErrorCode;
pub use exit::ExitKind;
pub use stats::Stats;
pub use vcpu::{
    EventInjection, EventKind, ExitRecord, GuestControl, GuestRegs, PagingState, Resume,
    ResumeFlags, Segment, VcpuArch, VcpuPage,
};
