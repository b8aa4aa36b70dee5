//! A deterministic software platform that implements the splitvisor stub
//! ABI on the host, for the mmu-server:
//!
//! - [`platform::Sim`]: guest RAM, shadow-table handles and frames checked
//!   by the stub's own `kernel_stub::install::ShadowTables::check`, an MMU
//!   that walks the *installed* tables (never the guest's), and a TLB;
//! - [`machine::Machine`]: a guest CPU reduced to its memory accesses and
//!   paging instructions; whatever faults in the shadow walk becomes an
//!   exit to the mmu-server, whose resume is checked with
//!   `kernel_stub::resume::validate` and applied;
//! - [`guest::GuestTables`]: builds guest page tables in every mode;
//! - [`bench`]: the context-switch workload, cached against baseline;
//! - [`hw`]: the simulated host CPU: its paging features, VM entry's
//!   checks, the paging modes and access rights the walker follows;
//! - [`isolation`]: a hostile mmu-server against the install path and
//!   the paging state.
//!
//! Everything is deterministic: no clocks (except the benchmark's timer),
//! no hashing order that matters, no threads.

#![deny(missing_docs)]

pub mod bench;
pub mod fuzzing;
pub mod guest;
pub mod hw;
pub mod isolation;
pub mod machine;
pub mod platform;
pub mod stub;

pub use machine::{Machine, Outcome};
pub use platform::{Sim, SimConfig};
