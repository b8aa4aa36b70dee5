//! The device side of virtio 1.2, platform-free.
#![no_std]
#![deny(missing_docs)]
#![forbid(unsafe_code)]

#[cfg(test)]
extern crate std;

pub mod memory;
pub mod queue;
