#![doc = include_str!("../README.md")]
#![no_std]
#![deny(missing_docs)]
#![forbid(unsafe_code)]

#[cfg(test)]
extern crate std;

pub mod device;
pub mod devices;
pub mod memory;
pub mod pci;
pub mod queue;

pub use device::{DeviceError, VirtioDevice};
pub use memory::{GuestMemory, MemoryError, SliceMemory};
pub use pci::{BarWriteOutcome, InterruptSink, VirtioPci};
pub use queue::{Buffer, DescriptorChain, Queue, QueueError};

/// Feature bits the transport handles (VIRTIO 1.2, 6).
pub mod features {
    /// Indirect descriptors (2.7.5.3).
    pub const VIRTIO_F_INDIRECT_DESC: u64 = 1 << 28;
    /// used_event / avail_event (2.7.10).
    pub const VIRTIO_F_EVENT_IDX: u64 = 1 << 29;
    /// A modern (1.x) device; a driver that does not accept it is refused.
    pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
}

/// Device status bits (2.1).
pub mod status {
    /// The guest found the device.
    pub const ACKNOWLEDGE: u8 = 1;
    /// The guest knows how to drive it.
    pub const DRIVER: u8 = 2;
    /// The driver is ready.
    pub const DRIVER_OK: u8 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u8 = 8;
    /// The device hit an error it cannot recover from: the driver must
    /// reset it.
    pub const DEVICE_NEEDS_RESET: u8 = 0x40;
    /// The guest gave up on the device.
    pub const FAILED: u8 = 0x80;
}
