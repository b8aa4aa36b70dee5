//! Guest memory and the guest page-table walker, shared by the splitvisor
//! servers: the mmu-server walks the guest's tables to build shadow
//! tables, the vmm-server to emulate an instruction's memory operands.
//! One walker, so that both see the same translation the hardware would.
//!
//! ```
//! use guest_walk::{walk, Access, CpuModel, GuestCtl, Ram};
//! let mut bytes = vec![0u8; 1 << 16];
//! let mut ram = Ram::new(&mut bytes);
//! // Paging off: linear = physical.
//! let t = walk(&mut ram, &GuestCtl::RESET, &CpuModel::default(), 0x1234, Access::read(false), true);
//! assert_eq!(t.unwrap().gpa, 0x1234);
//! ```
#![no_std]
#![deny(missing_docs)]
#![forbid(unsafe_code)]

#[cfg(test)]
extern crate std;

pub mod mem;
pub mod regs;
pub mod walk;

pub use mem::{GuestMemory, NotRam, Ram};
pub use regs::{CpuModel, GuestCtl, PagingMode};
pub use walk::{walk, Access, Translation, WalkError};
