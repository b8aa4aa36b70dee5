//! The splitvisor mmu-server as a library: the guest page-table walker,
//! the shadow-table cache kept coherent by write protection, and the
//! nested-paging map (NPT or EPT; all guest RAM is mapped eagerly at
//! start, see [`nested`]).
//!
//! Nothing here touches the machine: the server reaches its platform (the
//! native stub, or `sim` on the host) through [`MmuPlatform`], and guest
//! memory through [`GuestMemory`]. It allocates (shadow-table bookkeeping
//! lives in `alloc` collections); the ring-3 binary provides a global
//! allocator over a static arena.
//!
//! ```
//! use mmu_server::{Mmu, MmuConfig, Action, GuestCtl};
//! # fn run<P: mmu_server::MmuPlatform>(platform: &mut P, exit: &ipc_proto::ExitRecord) {
//! let mut mmu = Mmu::new(MmuConfig::default(), platform.guest_ram_bytes());
//! mmu.start(platform, GuestCtl::RESET).unwrap();
//! match mmu.handle_exit(platform, exit) {
//!     Action::Resume(resume) => { /* hand it to the stub's VcpuRun */ }
//!     Action::Mmio { gpa, .. } => { /* the vmm-server emulates it */ }
//!     Action::Fail(why) => panic!("{why}"),
//! }
//! # }
//! ```
#![cfg_attr(not(test), no_std)]
#![deny(missing_docs)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod ctl;
pub mod insn;
pub mod mmu;
pub mod nested;
pub mod platform;
// The walker and the paging controls are shared with the vmm-server; the
// old paths stay.
pub use guest_walk::regs;
pub use guest_walk::walk::{self};
pub mod server;
pub mod shadow;
pub mod stats;
pub mod trace;

pub use mmu::{Action, EferError, Failure, Mmu, MmuConfig, MmuMode};
pub use nested::NestedFormat;
pub use platform::{Flush, MmuPlatform, PlatformError, ShadowFormat};
pub use regs::{CpuModel, GuestCtl, PagingMode};
pub use server::{Hooks, MmuStub, Reply, Stopped};
pub use shadow::{Role, ShadowKey, TableKind};
pub use stats::MmuStats;
pub use walk::{walk, Access, GuestMemory, NotRam, Translation, WalkError};
