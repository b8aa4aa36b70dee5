//! What a virtio device model implements, whatever the transport.

use core::fmt;

use crate::memory::{GuestMemory, MemoryError};
use crate::queue::{Queue, QueueError};

/// Device types (VIRTIO 1.2, 5).
pub mod device_type {
    /// Network card (5.1).
    pub const NET: u16 = 1;
    /// Block device (5.2).
    pub const BLOCK: u16 = 2;
    /// Console (5.3).
    pub const CONSOLE: u16 = 3;
    /// Entropy source (5.4).
    pub const ENTROPY: u16 = 4;
}

/// Why a device gave up on its queues: the transport sets
/// DEVICE_NEEDS_RESET (2.1.2) and stops processing until the driver resets
/// the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceError {
    /// The driver broke a virtqueue rule.
    Queue(QueueError),
    /// A request the device cannot even answer (e.g. a block request with
    /// no room for its status byte).
    BadRequest(&'static str),
    /// A guest buffer could not be accessed.
    Memory(MemoryError),
}

impl From<QueueError> for DeviceError {
    fn from(e: QueueError) -> Self {
        Self::Queue(e)
    }
}

impl From<MemoryError> for DeviceError {
    fn from(e: MemoryError) -> Self {
        Self::Memory(e)
    }
}

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Queue(e) => write!(f, "virtqueue: {e}"),
            Self::BadRequest(what) => write!(f, "malformed request: {what}"),
            Self::Memory(e) => write!(f, "guest memory: {e}"),
        }
    }
}

/// A virtio device model: its identity, features, configuration space and
/// what it does with its queues. The transport owns the queues and the
/// feature negotiation, and calls [`VirtioDevice::process_queue`] when the
/// driver notifies a queue.
pub trait VirtioDevice {
    /// The device type (5): 1 network, 2 block, 3 console, 4 entropy.
    fn device_type(&self) -> u16;

    /// The PCI class code (class, subclass, programming interface in bits
    /// 23:0); "other" by default.
    fn pci_class(&self) -> u32 {
        0xff_0000
    }

    /// The device-specific feature bits offered (bits 0–23 and 50–127 are
    /// device-specific; the transport adds VIRTIO_F_VERSION_1,
    /// VIRTIO_F_INDIRECT_DESC and VIRTIO_F_EVENT_IDX).
    fn features(&self) -> u64;

    /// The maximum size of each queue; the slice's length is the number of
    /// queues (at most [`crate::pci::MAX_QUEUES`]).
    fn queue_max_sizes(&self) -> &[u16];

    /// Bytes of device-specific configuration.
    fn config_len(&self) -> u64;

    /// Reads the configuration at `offset` into `data` (bytes past
    /// [`VirtioDevice::config_len`] read as 0).
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// The driver writes the configuration (ignored by default).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    /// The driver set FEATURES_OK with `features` (already a subset of
    /// what was offered); `false` refuses them.
    fn ack_features(&mut self, _features: u64) -> bool {
        true
    }

    /// Device reset (status 0): back to the state before the driver came.
    fn reset(&mut self) {}

    /// The driver notified queue `index` (below `queues.len()`): take its
    /// chains, do the work, return them with [`Queue::add_used`]. The
    /// transport interrupts the driver for queues whose used index moved.
    fn process_queue<M: GuestMemory + ?Sized>(
        &mut self,
        index: u16,
        queues: &mut [Queue],
        mem: &mut M,
    ) -> Result<(), DeviceError>;

    /// Work the device starts itself (console input arrived, ...);
    /// nothing by default.
    fn poll<M: GuestMemory + ?Sized>(
        &mut self,
        _queues: &mut [Queue],
        _mem: &mut M,
    ) -> Result<(), DeviceError> {
        Ok(())
    }
}

/// Copies the configuration bytes `config` at `offset` into `data`, 0
/// past the end: the usual [`VirtioDevice::read_config`].
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, d) in data.iter_mut().enumerate() {
        *d = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(i))
            .and_then(|o| config.get(o))
            .copied()
            .unwrap_or(0);
    }
}
