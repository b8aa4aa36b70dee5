//! The checks of the splitvisor stub, as a library: the stub binary uses
//! them on the bare machine, and `sim` uses the very same code on the host,
//! so a property test of the simulator exercises the real checks.
#![cfg_attr(not(test), no_std)]

pub mod elf;
pub mod install;
pub mod resume;
