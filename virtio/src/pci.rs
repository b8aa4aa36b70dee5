//! The virtio-pci transport (VIRTIO 1.2, 4.1), modern devices only: one
//! PCI function's configuration space and its two memory BARs, as a plain
//! state machine.
//!
//! - Configuration space: vendor 0x1af4, device 0x1040 + type, revision 1;
//!   an MSI-X capability and the virtio vendor capabilities (common,
//!   notify, ISR, device, PCI configuration access).
//! - [`VIRTIO_BAR`] (32-bit memory, 16 KiB): common configuration at
//!   [`COMMON_OFFSET`], ISR at [`ISR_OFFSET`], device configuration at
//!   [`DEVICE_OFFSET`], notification addresses at [`NOTIFY_OFFSET`] (queue
//!   `n` at `n * NOTIFY_OFF_MULTIPLIER`).
//! - [`MSIX_BAR`] (32-bit memory, 4 KiB): the MSI-X table at 0, the
//!   pending bit array at [`MSIX_PBA_OFFSET`]; one vector per queue plus
//!   one for configuration changes.
//!
//! Inputs: [`VirtioPci::config_read`] / [`VirtioPci::config_write`] for
//! configuration space, [`VirtioPci::bar_read`] / [`VirtioPci::bar_write`]
//! for the BARs, [`VirtioPci::process_queue`] after a notification and
//! [`VirtioPci::poll`] for device-started work. Outputs: a write to a
//! notification address returns [`BarWriteOutcome::QueueNotify`];
//! interrupts leave through the [`InterruptSink`] (an MSI-X message, or
//! the level of INTA#).

use core::fmt;

use crate::device::{DeviceError, VirtioDevice};
use crate::features::{VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1};
use crate::memory::GuestMemory;
use crate::queue::{Queue, QueueError};
use crate::status;

/// Where interrupts go: the only output besides queue notifications.
pub trait InterruptSink {
    /// Write `data` at `address` (an MSI-X message, PCI 6.8.2).
    fn send_msi(&mut self, address: u64, data: u32);
    /// INTA# is now asserted (`true`) or deasserted (a level).
    fn set_intx(&mut self, asserted: bool);
}

/// A sink that drops everything.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoInterrupts;

impl InterruptSink for NoInterrupts {
    fn send_msi(&mut self, _address: u64, _data: u32) {}
    fn set_intx(&mut self, _asserted: bool) {}
}

/// PCI vendor ID of virtio devices.
pub const VENDOR_ID: u16 = 0x1af4;
/// Modern device IDs are this plus the device type (4.1.2).
pub const DEVICE_ID_BASE: u16 = 0x1040;
/// Most queues a device has here.
pub const MAX_QUEUES: usize = 8;
/// "No vector" for config_msix_vector and queue_msix_vector (4.1.5.1.2).
pub const NO_VECTOR: u16 = 0xffff;

/// The BAR holding the virtio structures.
pub const VIRTIO_BAR: u8 = 0;
/// Size of [`VIRTIO_BAR`].
pub const VIRTIO_BAR_SIZE: u64 = 0x4000;
/// Common configuration in [`VIRTIO_BAR`].
pub const COMMON_OFFSET: u64 = 0x0000;
/// Bytes of common configuration (up to `queue_device`, 4.1.4.3).
pub const COMMON_LEN: u64 = 0x38;
/// ISR status in [`VIRTIO_BAR`].
pub const ISR_OFFSET: u64 = 0x1000;
/// Device-specific configuration in [`VIRTIO_BAR`].
pub const DEVICE_OFFSET: u64 = 0x2000;
/// Notification addresses in [`VIRTIO_BAR`].
pub const NOTIFY_OFFSET: u64 = 0x3000;
/// notify_off_multiplier: queue `n`'s address is `n` times this.
pub const NOTIFY_OFF_MULTIPLIER: u32 = 4;
/// The BAR holding the MSI-X table and PBA.
pub const MSIX_BAR: u8 = 1;
/// Size of [`MSIX_BAR`].
pub const MSIX_BAR_SIZE: u64 = 0x1000;
/// The pending bit array in [`MSIX_BAR`].
pub const MSIX_PBA_OFFSET: u64 = 0x800;

/// Common configuration registers (4.1.4.3).
pub mod common {
    /// le32, RW: which 32 feature bits `DEVICE_FEATURE` shows.
    pub const DEVICE_FEATURE_SELECT: u64 = 0x00;
    /// le32, RO.
    pub const DEVICE_FEATURE: u64 = 0x04;
    /// le32, RW.
    pub const DRIVER_FEATURE_SELECT: u64 = 0x08;
    /// le32, RW.
    pub const DRIVER_FEATURE: u64 = 0x0c;
    /// le16, RW.
    pub const CONFIG_MSIX_VECTOR: u64 = 0x10;
    /// le16, RO.
    pub const NUM_QUEUES: u64 = 0x12;
    /// u8, RW.
    pub const DEVICE_STATUS: u64 = 0x14;
    /// u8, RO.
    pub const CONFIG_GENERATION: u64 = 0x15;
    /// le16, RW.
    pub const QUEUE_SELECT: u64 = 0x16;
    /// le16, RW.
    pub const QUEUE_SIZE: u64 = 0x18;
    /// le16, RW.
    pub const QUEUE_MSIX_VECTOR: u64 = 0x1a;
    /// le16, RW.
    pub const QUEUE_ENABLE: u64 = 0x1c;
    /// le16, RO.
    pub const QUEUE_NOTIFY_OFF: u64 = 0x1e;
    /// le64, RW.
    pub const QUEUE_DESC: u64 = 0x20;
    /// le64, RW.
    pub const QUEUE_DRIVER: u64 = 0x28;
    /// le64, RW.
    pub const QUEUE_DEVICE: u64 = 0x30;
}

/// Configuration space offsets of this function's capabilities.
pub mod cap {
    /// MSI-X (PCI capability ID 0x11).
    pub const MSIX: usize = 0x40;
    /// virtio common configuration.
    pub const COMMON: usize = 0x4c;
    /// virtio notifications.
    pub const NOTIFY: usize = 0x5c;
    /// virtio ISR status.
    pub const ISR: usize = 0x70;
    /// virtio device configuration.
    pub const DEVICE: usize = 0x80;
    /// virtio PCI configuration access (a window onto the BARs).
    pub const PCI_CFG: usize = 0x90;
}

/// Command register bits the driver can set: memory space, bus master,
/// interrupt disable.
const COMMAND_MEMORY: u16 = 1 << 1;
const COMMAND_WMASK: u16 = COMMAND_MEMORY | 1 << 2 | 1 << 10;
const COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// Status register: capabilities list, interrupt status.
const STATUS_CAP_LIST: u16 = 1 << 4;
const STATUS_INTERRUPT: u16 = 1 << 3;
/// MSI-X message control: enable, function mask.
const MSIX_ENABLE: u16 = 1 << 15;
const MSIX_FUNCTION_MASK: u16 = 1 << 14;
/// The PCI configuration access capability's data window.
const PCI_CFG_DATA: usize = cap::PCI_CFG + 16;
/// Configuration space bytes modelled (the rest reads 0).
const CONFIG_SIZE: usize = 256;
/// ISR bits (4.1.4.5).
const ISR_QUEUE: u8 = 1;
const ISR_CONFIG: u8 = 2;

/// What a BAR write asks of the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarWriteOutcome {
    /// Nothing more.
    Done,
    /// The driver notified this queue: call [`VirtioPci::process_queue`]
    /// (now, or from the device server that owns the queue).
    QueueNotify(u16),
}

/// Why the transport set DEVICE_NEEDS_RESET (see
/// [`VirtioPci::last_error`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportError {
    /// The driver enabled a queue with a bad size or alignment.
    QueueEnable {
        /// The queue.
        queue: u16,
        /// What was wrong.
        error: QueueError,
    },
    /// The device failed while processing.
    Device(DeviceError),
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::QueueEnable { queue, error } => write!(f, "enabling queue {queue}: {error}"),
            Self::Device(e) => write!(f, "{e}"),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct MsixEntry {
    address: u64,
    data: u32,
    masked: bool,
}

/// A virtio device on PCI, its interrupt sink `I`.
#[derive(Debug)]
pub struct VirtioPci<D: VirtioDevice, I: InterruptSink> {
    device: D,
    irq: I,
    config: [u8; CONFIG_SIZE],
    wmask: [u8; CONFIG_SIZE],
    num_queues: u16,
    queues: [Queue; MAX_QUEUES],
    queue_vectors: [u16; MAX_QUEUES],
    offered: u64,
    driver_features: u64,
    device_feature_select: u32,
    driver_feature_select: u32,
    config_vector: u16,
    status: u8,
    config_generation: u8,
    queue_select: u16,
    isr: u8,
    intx: bool,
    msix: [MsixEntry; MAX_QUEUES + 1],
    pending: u16,
    last_error: Option<TransportError>,
}

fn put(buf: &mut [u8], at: usize, bytes: &[u8]) {
    buf[at..at + bytes.len()].copy_from_slice(bytes);
}

impl<D: VirtioDevice, I: InterruptSink> VirtioPci<D, I> {
    /// The function in its reset state: BARs unassigned, MSI-X disabled,
    /// device status 0. Queues beyond [`MAX_QUEUES`] are not offered.
    pub fn new(device: D, irq: I) -> Self {
        let num_queues = device.queue_max_sizes().len().min(MAX_QUEUES);
        let mut queues = [const { Queue::new(1) }; MAX_QUEUES];
        for (q, &max) in queues.iter_mut().zip(device.queue_max_sizes()) {
            *q = Queue::new(max);
        }
        let mut s = Self {
            offered: device.features()
                | VIRTIO_F_VERSION_1
                | VIRTIO_F_EVENT_IDX
                | VIRTIO_F_INDIRECT_DESC,
            device,
            irq,
            config: [0; CONFIG_SIZE],
            wmask: [0; CONFIG_SIZE],
            num_queues: num_queues as u16,
            queues,
            queue_vectors: [NO_VECTOR; MAX_QUEUES],
            driver_features: 0,
            device_feature_select: 0,
            driver_feature_select: 0,
            config_vector: NO_VECTOR,
            status: 0,
            config_generation: 0,
            queue_select: 0,
            isr: 0,
            intx: false,
            msix: [MsixEntry {
                masked: true,
                ..MsixEntry::default()
            }; MAX_QUEUES + 1],
            pending: 0,
            last_error: None,
        };
        s.build_config_space();
        s
    }

    fn msix_vectors(&self) -> u16 {
        self.num_queues + 1
    }

    fn build_config_space(&mut self) {
        let c = &mut self.config;
        let w = &mut self.wmask;
        put(c, 0x00, &VENDOR_ID.to_le_bytes());
        put(
            c,
            0x02,
            &(DEVICE_ID_BASE + self.device.device_type()).to_le_bytes(),
        );
        put(w, 0x04, &COMMAND_WMASK.to_le_bytes());
        put(c, 0x06, &STATUS_CAP_LIST.to_le_bytes());
        // Revision 1: a non-transitional device (4.1.2.1).
        put(c, 0x08, &(self.device.pci_class() << 8 | 1).to_le_bytes());
        // BARs: 32-bit, non-prefetchable memory; the size is in what
        // cannot be written.
        put(w, 0x10, &(!(VIRTIO_BAR_SIZE as u32 - 1)).to_le_bytes());
        put(w, 0x14, &(!(MSIX_BAR_SIZE as u32 - 1)).to_le_bytes());
        put(c, 0x2c, &VENDOR_ID.to_le_bytes());
        put(c, 0x2e, &self.device.device_type().to_le_bytes());
        c[0x34] = cap::MSIX as u8;
        w[0x3c] = 0xff; // interrupt line
        c[0x3d] = 1; // INTA#

        // MSI-X (PCI 6.8.2): table size N-1, table and PBA in MSIX_BAR.
        c[cap::MSIX] = 0x11;
        c[cap::MSIX + 1] = cap::COMMON as u8;
        put(c, cap::MSIX + 2, &(self.num_queues).to_le_bytes());
        w[cap::MSIX + 3] = ((MSIX_ENABLE | MSIX_FUNCTION_MASK) >> 8) as u8;
        put(c, cap::MSIX + 4, &u32::from(MSIX_BAR).to_le_bytes());
        put(
            c,
            cap::MSIX + 8,
            &(MSIX_PBA_OFFSET as u32 | u32::from(MSIX_BAR)).to_le_bytes(),
        );

        // virtio_pci_cap (4.1.4): vndr, next, len, cfg_type, bar, id,
        // padding, offset, length.
        let config_len = self.device.config_len();
        let after_isr = if config_len > 0 {
            cap::DEVICE
        } else {
            cap::PCI_CFG
        };
        let nq = u32::from(self.num_queues);
        let caps = [
            (
                cap::COMMON,
                cap::NOTIFY,
                16,
                1,
                COMMON_OFFSET,
                COMMON_LEN as u32,
            ),
            (
                cap::NOTIFY,
                cap::ISR,
                20,
                2,
                NOTIFY_OFFSET,
                nq.max(1) * NOTIFY_OFF_MULTIPLIER,
            ),
            (cap::ISR, after_isr, 16, 3, ISR_OFFSET, 1),
            (
                cap::DEVICE,
                cap::PCI_CFG,
                16,
                4,
                DEVICE_OFFSET,
                config_len.min(0x1000) as u32,
            ),
            (cap::PCI_CFG, 0, 20, 5, 0, 0),
        ];
        for (at, next, len, cfg_type, offset, length) in caps {
            if cfg_type == 4 && config_len == 0 {
                continue;
            }
            c[at] = 0x09;
            c[at + 1] = next as u8;
            c[at + 2] = len;
            c[at + 3] = cfg_type;
            c[at + 4] = VIRTIO_BAR;
            put(c, at + 8, &(offset as u32).to_le_bytes());
            put(c, at + 12, &length.to_le_bytes());
        }
        put(c, cap::NOTIFY + 16, &NOTIFY_OFF_MULTIPLIER.to_le_bytes());
        // The access capability's bar, offset, length and data are the
        // driver's.
        w[cap::PCI_CFG + 4] = 0xff;
        put(w, cap::PCI_CFG + 8, &[0xff; 8]);
        put(w, PCI_CFG_DATA, &[0xff; 4]);
    }

    /// The device model.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device model, to change it (then call
    /// [`VirtioPci::config_changed`] if its configuration changed).
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// The interrupt sink.
    pub fn interrupt_sink(&self) -> &I {
        &self.irq
    }

    /// The interrupt sink, mutably (e.g. to drain recorded messages).
    pub fn interrupt_sink_mut(&mut self) -> &mut I {
        &mut self.irq
    }

    /// The device status (2.1).
    pub fn status(&self) -> u8 {
        self.status
    }

    /// The features both sides agreed on (valid after FEATURES_OK).
    pub fn negotiated_features(&self) -> u64 {
        self.driver_features
    }

    /// Why DEVICE_NEEDS_RESET was set, if it was since the last reset.
    pub fn last_error(&self) -> Option<TransportError> {
        self.last_error
    }

    /// Queue `index`, if the device has it.
    pub fn queue(&self, index: u16) -> Option<&Queue> {
        self.queues[..usize::from(self.num_queues)].get(usize::from(index))
    }

    fn config_u16(&self, at: usize) -> u16 {
        u16::from_le_bytes([self.config[at], self.config[at + 1]])
    }

    fn config_u32(&self, at: usize) -> u32 {
        u32::from_le_bytes([
            self.config[at],
            self.config[at + 1],
            self.config[at + 2],
            self.config[at + 3],
        ])
    }

    fn command(&self) -> u16 {
        self.config_u16(0x04)
    }

    fn msix_control(&self) -> u16 {
        self.config_u16(cap::MSIX + 2)
    }

    fn msix_enabled(&self) -> bool {
        self.msix_control() & MSIX_ENABLE != 0
    }

    /// Where BAR `bar` is (its base), when the driver assigned it and
    /// memory decoding is on; `None` otherwise.
    pub fn bar_address(&self, bar: u8) -> Option<u64> {
        let reg = match bar {
            VIRTIO_BAR => 0x10,
            MSIX_BAR => 0x14,
            _ => return None,
        };
        let base = u64::from(self.config_u32(reg) & !0xf);
        (self.command() & COMMAND_MEMORY != 0 && base != 0).then_some(base)
    }

    /// The size of BAR `bar` (0 for BARs that do not exist).
    pub fn bar_size(bar: u8) -> u64 {
        match bar {
            VIRTIO_BAR => VIRTIO_BAR_SIZE,
            MSIX_BAR => MSIX_BAR_SIZE,
            _ => 0,
        }
    }

    /// Which BAR and offset `gpa` falls in, if any: what a router asks on
    /// an MMIO access outside RAM.
    pub fn decode(&self, gpa: u64) -> Option<(u8, u64)> {
        [VIRTIO_BAR, MSIX_BAR].into_iter().find_map(|bar| {
            let base = self.bar_address(bar)?;
            let off = gpa.checked_sub(base)?;
            (off < Self::bar_size(bar)).then_some((bar, off))
        })
    }

    // ---- configuration space ----

    /// Reads `size` (1, 2 or 4) bytes of configuration space at `offset`;
    /// past the 256 bytes modelled (extended space) reads 0, other sizes
    /// all ones.
    pub fn config_read(&mut self, offset: u16, size: u8) -> u32 {
        if !matches!(size, 1 | 2 | 4) {
            return u32::MAX;
        }
        let start = usize::from(offset);
        let end = start + usize::from(size);
        if end > CONFIG_SIZE {
            return 0;
        }
        if start < PCI_CFG_DATA + 4 && end > PCI_CFG_DATA {
            let v = self.pci_cfg_window_read();
            put(&mut self.config, PCI_CFG_DATA, &v.to_le_bytes());
        }
        (0..usize::from(size)).fold(0, |v, i| v | u32::from(self.config[start + i]) << (8 * i))
    }

    /// Writes the low `size` bytes of `value` at `offset` of configuration
    /// space: only the writable bits change (command, BARs, interrupt
    /// line, MSI-X enable and function mask, the access capability). A
    /// write through the access capability's window to a notification
    /// address returns [`BarWriteOutcome::QueueNotify`].
    pub fn config_write(&mut self, offset: u16, size: u8, value: u32) -> BarWriteOutcome {
        let mut outcome = BarWriteOutcome::Done;
        if !matches!(size, 1 | 2 | 4) {
            return outcome;
        }
        let start = usize::from(offset);
        let end = start + usize::from(size);
        if end > CONFIG_SIZE {
            return outcome;
        }
        let msix_before = (
            self.msix_enabled(),
            self.msix_control() & MSIX_FUNCTION_MASK != 0,
        );
        for i in 0..usize::from(size) {
            let at = start + i;
            let b = (value >> (8 * i)) as u8;
            self.config[at] = (self.config[at] & !self.wmask[at]) | (b & self.wmask[at]);
        }
        if start < PCI_CFG_DATA + 4 && end > PCI_CFG_DATA {
            let v = self.config_u32(PCI_CFG_DATA);
            outcome = self.pci_cfg_window_write(v);
        }
        let msix_after = (
            self.msix_enabled(),
            self.msix_control() & MSIX_FUNCTION_MASK != 0,
        );
        if msix_after != msix_before {
            self.deliver_pending();
        }
        self.update_intx();
        outcome
    }

    /// The access capability names `length` (1, 2, 4) bytes at `offset`
    /// of `bar` (4.1.4.9).
    fn pci_cfg_window(&self) -> Option<(u8, u64, u8)> {
        let bar = self.config[cap::PCI_CFG + 4];
        let offset = u64::from(self.config_u32(cap::PCI_CFG + 8));
        let length = self.config_u32(cap::PCI_CFG + 12);
        match length {
            1 | 2 | 4 if offset % u64::from(length) == 0 => Some((bar, offset, length as u8)),
            _ => None,
        }
    }

    fn pci_cfg_window_read(&mut self) -> u32 {
        match self.pci_cfg_window() {
            Some((bar, offset, len)) => self.bar_read(bar, offset, len) as u32,
            None => 0,
        }
    }

    fn pci_cfg_window_write(&mut self, v: u32) -> BarWriteOutcome {
        match self.pci_cfg_window() {
            Some((bar, offset, len)) => self.bar_write(bar, offset, len, u64::from(v)),
            None => BarWriteOutcome::Done,
        }
    }

    // ---- BARs ----

    /// Reads `size` (1, 2, 4 or 8) bytes at `offset` of `bar`.
    pub fn bar_read(&mut self, bar: u8, offset: u64, size: u8) -> u64 {
        if !matches!(size, 1 | 2 | 4 | 8) {
            return u64::MAX;
        }
        let mask = u64::MAX >> (64 - 8 * u32::from(size));
        let v = match bar {
            VIRTIO_BAR => match offset {
                COMMON_OFFSET..0x1000 => self.common_read(offset - COMMON_OFFSET, size),
                ISR_OFFSET => {
                    // Reading ISR clears it and deasserts INTA# (4.1.4.5).
                    let v = self.isr;
                    self.isr = 0;
                    self.update_intx();
                    u64::from(v)
                }
                DEVICE_OFFSET..NOTIFY_OFFSET => {
                    let mut b = [0u8; 8];
                    self.device
                        .read_config(offset - DEVICE_OFFSET, &mut b[..usize::from(size)]);
                    u64::from_le_bytes(b)
                }
                _ => 0,
            },
            MSIX_BAR => self.msix_read(offset, size),
            _ => u64::MAX,
        };
        v & mask
    }

    /// Writes the low `size` (1, 2, 4 or 8) bytes of `value` at `offset`
    /// of `bar`.
    pub fn bar_write(&mut self, bar: u8, offset: u64, size: u8, value: u64) -> BarWriteOutcome {
        if !matches!(size, 1 | 2 | 4 | 8) {
            return BarWriteOutcome::Done;
        }
        let value = value & (u64::MAX >> (64 - 8 * u32::from(size)));
        match bar {
            VIRTIO_BAR => match offset {
                COMMON_OFFSET..0x1000 => self.common_write(offset - COMMON_OFFSET, size, value),
                DEVICE_OFFSET..NOTIFY_OFFSET => {
                    let b = value.to_le_bytes();
                    self.device
                        .write_config(offset - DEVICE_OFFSET, &b[..usize::from(size)]);
                }
                NOTIFY_OFFSET.. => {
                    let rel = offset - NOTIFY_OFFSET;
                    let m = u64::from(NOTIFY_OFF_MULTIPLIER);
                    if rel.is_multiple_of(m) && rel / m < u64::from(self.num_queues) {
                        let q = (rel / m) as u16;
                        if self.queues[usize::from(q)].ready() {
                            return BarWriteOutcome::QueueNotify(q);
                        }
                    }
                }
                _ => {}
            },
            MSIX_BAR => self.msix_write(offset, size, value),
            _ => {}
        }
        BarWriteOutcome::Done
    }

    // ---- common configuration (4.1.4.3) ----

    /// The field at `offset`: its start, width, and value.
    fn common_field(&self, offset: u64) -> Option<(u64, u8, u64)> {
        use common::*;
        let q = self.selected_queue();
        let (start, width) = match offset {
            0x00..0x10 => (offset & !3, 4),
            0x10..0x14 | 0x16..0x20 => (offset & !1, 2),
            0x14 | 0x15 => (offset, 1),
            0x20..0x38 => (offset & !7, 8),
            _ => return None,
        };
        let half = |v: u64, sel: u32| match sel {
            0 => v & 0xffff_ffff,
            1 => v >> 32,
            _ => 0,
        };
        let v = match start {
            DEVICE_FEATURE_SELECT => u64::from(self.device_feature_select),
            DEVICE_FEATURE => half(self.offered, self.device_feature_select),
            DRIVER_FEATURE_SELECT => u64::from(self.driver_feature_select),
            DRIVER_FEATURE => half(self.driver_features, self.driver_feature_select),
            CONFIG_MSIX_VECTOR => u64::from(self.config_vector),
            NUM_QUEUES => u64::from(self.num_queues),
            DEVICE_STATUS => u64::from(self.status),
            CONFIG_GENERATION => u64::from(self.config_generation),
            QUEUE_SELECT => u64::from(self.queue_select),
            QUEUE_SIZE => q.map_or(0, |q| u64::from(self.queues[q].size())),
            QUEUE_MSIX_VECTOR => {
                q.map_or(u64::from(NO_VECTOR), |q| u64::from(self.queue_vectors[q]))
            }
            QUEUE_ENABLE => q.map_or(0, |q| u64::from(self.queues[q].ready())),
            QUEUE_NOTIFY_OFF => q.map_or(0, |q| q as u64),
            QUEUE_DESC => q.map_or(0, |q| self.queues[q].addresses().0),
            QUEUE_DRIVER => q.map_or(0, |q| self.queues[q].addresses().1),
            QUEUE_DEVICE => q.map_or(0, |q| self.queues[q].addresses().2),
            _ => 0,
        };
        Some((start, width, v))
    }

    fn selected_queue(&self) -> Option<usize> {
        (self.queue_select < self.num_queues).then_some(usize::from(self.queue_select))
    }

    fn common_read(&mut self, offset: u64, size: u8) -> u64 {
        // An access may cover several fields (a 64-bit read of the
        // feature select and feature): byte by byte.
        (0..u64::from(size)).fold(0, |v, i| {
            let b = self
                .common_field(offset + i)
                .map_or(0, |(start, _, f)| (f >> (8 * (offset + i - start))) & 0xff);
            v | b << (8 * i)
        })
    }

    fn common_write(&mut self, offset: u64, size: u8, value: u64) {
        // Merge the written bytes into each field they touch, then apply
        // the field's write once.
        let mut i = 0u64;
        while i < u64::from(size) {
            let Some((start, width, mut f)) = self.common_field(offset + i) else {
                i += 1;
                continue;
            };
            while i < u64::from(size) && offset + i < start + u64::from(width) {
                let shift = 8 * (offset + i - start);
                let b = (value >> (8 * i)) & 0xff;
                f = (f & !(0xff << shift)) | b << shift;
                i += 1;
            }
            self.common_field_write(start, f);
        }
    }

    fn common_field_write(&mut self, start: u64, v: u64) {
        use common::*;
        let q = self.selected_queue();
        // Queue fields only change while the queue is disabled (4.1.4.3.2).
        let q_idle = q.filter(|&q| !self.queues[q].ready());
        match start {
            DEVICE_FEATURE_SELECT => self.device_feature_select = v as u32,
            DRIVER_FEATURE_SELECT => self.driver_feature_select = v as u32,
            DRIVER_FEATURE if self.status & status::FEATURES_OK == 0 => {
                match self.driver_feature_select {
                    0 => self.driver_features = (self.driver_features & !0xffff_ffff) | v,
                    1 => self.driver_features = (self.driver_features & 0xffff_ffff) | v << 32,
                    _ => {}
                }
            }
            CONFIG_MSIX_VECTOR => self.config_vector = self.checked_vector(v as u16),
            DEVICE_STATUS => self.write_status(v as u8),
            QUEUE_SELECT => self.queue_select = v as u16,
            QUEUE_SIZE => {
                if let Some(q) = q_idle {
                    self.queues[q].set_size(v as u16);
                }
            }
            QUEUE_MSIX_VECTOR => {
                if let Some(q) = q {
                    self.queue_vectors[q] = self.checked_vector(v as u16);
                }
            }
            QUEUE_ENABLE => {
                // Writing 0 is not allowed without VIRTIO_F_RING_RESET
                // (not offered): ignored.
                if let (Some(q), 1) = (q_idle, v) {
                    let ef = self.driver_features;
                    self.queues[q].set_features(
                        ef & VIRTIO_F_EVENT_IDX != 0,
                        ef & VIRTIO_F_INDIRECT_DESC != 0,
                    );
                    if let Err(error) = self.queues[q].enable() {
                        self.needs_reset(TransportError::QueueEnable {
                            queue: q as u16,
                            error,
                        });
                    }
                }
            }
            QUEUE_DESC => {
                if let Some(q) = q_idle {
                    self.queues[q].set_desc_table(v);
                }
            }
            QUEUE_DRIVER => {
                if let Some(q) = q_idle {
                    self.queues[q].set_avail_ring(v);
                }
            }
            QUEUE_DEVICE => {
                if let Some(q) = q_idle {
                    self.queues[q].set_used_ring(v);
                }
            }
            // Read-only fields, and the driver's features after
            // FEATURES_OK.
            _ => {}
        }
    }

    /// A vector the table has, or NO_VECTOR (the driver reads it back to
    /// see the mapping failed, 4.1.5.1.2).
    fn checked_vector(&self, v: u16) -> u16 {
        if v < self.msix_vectors() {
            v
        } else {
            NO_VECTOR
        }
    }

    /// 2.1, 3.1.1, 4.1.4.3: 0 resets; the driver cannot clear bits or set
    /// DEVICE_NEEDS_RESET; FEATURES_OK sticks only if the device accepts
    /// the features; DRIVER_OK needs FEATURES_OK.
    fn write_status(&mut self, v: u8) {
        if v == 0 {
            self.reset();
            return;
        }
        let driver_bits = status::ACKNOWLEDGE
            | status::DRIVER
            | status::FEATURES_OK
            | status::DRIVER_OK
            | status::FAILED;
        let new = (v & driver_bits) & !self.status;
        if new & status::FEATURES_OK != 0 {
            let f = self.driver_features;
            let ok = f & !self.offered == 0
                && f & VIRTIO_F_VERSION_1 != 0
                && self.device.ack_features(f);
            if ok {
                self.status |= status::FEATURES_OK;
            }
        }
        if new & status::DRIVER_OK != 0 && self.status & status::FEATURES_OK != 0 {
            self.status |= status::DRIVER_OK;
        }
        self.status |= new & (status::ACKNOWLEDGE | status::DRIVER | status::FAILED);
    }

    /// Device reset (2.4): what the driver sees before it first came,
    /// except the PCI function's own state (BARs, MSI-X).
    pub fn reset(&mut self) {
        self.device.reset();
        for q in &mut self.queues {
            q.reset();
        }
        self.queue_vectors = [NO_VECTOR; MAX_QUEUES];
        self.config_vector = NO_VECTOR;
        self.driver_features = 0;
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.queue_select = 0;
        self.status = 0;
        self.isr = 0;
        self.last_error = None;
        self.update_intx();
    }

    fn needs_reset(&mut self, e: TransportError) {
        self.last_error = Some(e);
        if self.status & status::DEVICE_NEEDS_RESET == 0 {
            self.status |= status::DEVICE_NEEDS_RESET;
            // 2.1.2: a configuration change notification, if the driver
            // is there to see it.
            if self.status & status::DRIVER_OK != 0 {
                self.notify_config();
            }
        }
    }

    // ---- processing ----

    fn can_process(&self) -> bool {
        self.status & (status::DRIVER_OK | status::DEVICE_NEEDS_RESET) == status::DRIVER_OK
    }

    /// Processes queue `queue` after the driver notified it, then
    /// interrupts the driver for every queue whose used ring moved and
    /// that wants it. Does nothing before DRIVER_OK, after
    /// DEVICE_NEEDS_RESET, or for a queue that is not enabled.
    pub fn process_queue<M: GuestMemory + ?Sized>(&mut self, queue: u16, mem: &mut M) {
        if !self.can_process() || !self.queue(queue).is_some_and(Queue::ready) {
            return;
        }
        self.run(mem, |d, qs, m| d.process_queue(queue, qs, m));
    }

    /// Continues every enabled queue from its used ring's `idx` in guest
    /// memory ([`Queue::resume_from_used`]): for a function whose
    /// transport state was replayed into a new instance. A ring outside
    /// RAM puts the device into NEEDS_RESET, as at any other use.
    pub fn resume_queues<M: GuestMemory + ?Sized>(&mut self, mem: &M) {
        let n = usize::from(self.num_queues);
        let mut failed = false;
        for q in self.queues[..n].iter_mut().filter(|q| q.ready()) {
            failed |= q.resume_from_used(mem).is_err();
        }
        if failed {
            self.status |= crate::status::DEVICE_NEEDS_RESET;
        }
    }

    /// Lets the device do work it starts itself (console input, ...).
    pub fn poll<M: GuestMemory + ?Sized>(&mut self, mem: &mut M) {
        if self.can_process() {
            self.run(mem, |d, qs, m| d.poll(qs, m));
        }
    }

    fn run<M, F>(&mut self, mem: &mut M, f: F)
    where
        M: GuestMemory + ?Sized,
        F: FnOnce(&mut D, &mut [Queue], &mut M) -> Result<(), DeviceError>,
    {
        let n = usize::from(self.num_queues);
        let mut before = [0u16; MAX_QUEUES];
        for (b, q) in before.iter_mut().zip(&self.queues[..n]) {
            *b = q.indices().1;
        }
        let r = f(&mut self.device, &mut self.queues[..n], mem);
        for (i, &was) in before.iter().enumerate().take(n) {
            let q = &mut self.queues[i];
            if !q.ready() || q.indices().1 == was {
                continue;
            }
            match q.needs_notification(mem) {
                Ok(true) => self.notify_queue(i),
                Ok(false) => {}
                Err(e) => self.needs_reset(TransportError::Device(e.into())),
            }
        }
        if let Err(e) = r {
            self.needs_reset(TransportError::Device(e));
        }
    }

    // ---- interrupts (4.1.5.3, 4.1.5.4) ----

    fn notify_queue(&mut self, q: usize) {
        if self.msix_enabled() {
            self.signal_vector(self.queue_vectors[q]);
        } else {
            self.isr |= ISR_QUEUE;
            self.update_intx();
        }
    }

    fn notify_config(&mut self) {
        self.isr |= ISR_CONFIG;
        if self.msix_enabled() {
            self.signal_vector(self.config_vector);
        } else {
            self.update_intx();
        }
    }

    /// The device's configuration changed: bumps config_generation and
    /// tells the driver (4.1.5.4).
    pub fn config_changed(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        if self.status & status::DRIVER_OK != 0 {
            self.notify_config();
        }
    }

    /// INTA# follows ISR while MSI-X is off and the command register
    /// allows it; the PCI status register's interrupt bit follows ISR.
    fn update_intx(&mut self) {
        let mut st = self.config_u16(0x06) & !STATUS_INTERRUPT;
        if self.isr != 0 && !self.msix_enabled() {
            st |= STATUS_INTERRUPT;
        }
        put(&mut self.config, 0x06, &st.to_le_bytes());
        let level = st & STATUS_INTERRUPT != 0 && self.command() & COMMAND_INTX_DISABLE == 0;
        if level != self.intx {
            self.intx = level;
            self.irq.set_intx(level);
        }
    }

    fn vector_masked(&self, v: usize) -> bool {
        self.msix_control() & MSIX_FUNCTION_MASK != 0 || self.msix[v].masked
    }

    /// Sends vector `v`, or sets its pending bit while it is masked
    /// (PCI 6.8.2.9).
    fn signal_vector(&mut self, v: u16) {
        let v = usize::from(v);
        if v >= usize::from(self.msix_vectors()) {
            return;
        }
        if self.vector_masked(v) {
            self.pending |= 1 << v;
        } else {
            let e = self.msix[v];
            self.irq.send_msi(e.address, e.data);
        }
    }

    fn deliver_pending(&mut self) {
        if !self.msix_enabled() {
            return;
        }
        for v in 0..usize::from(self.msix_vectors()) {
            if self.pending & (1 << v) != 0 && !self.vector_masked(v) {
                self.pending &= !(1 << v);
                let e = self.msix[v];
                self.irq.send_msi(e.address, e.data);
            }
        }
    }

    fn msix_read(&self, offset: u64, size: u8) -> u64 {
        let n = u64::from(self.msix_vectors());
        if offset >= MSIX_PBA_OFFSET {
            // The pending bits, read-only; 9 vectors fit in the first qword.
            let pba = u64::from(self.pending).to_le_bytes();
            return (0..u64::from(size)).fold(0, |v, i| {
                let b = usize::try_from(offset - MSIX_PBA_OFFSET + i)
                    .ok()
                    .and_then(|at| pba.get(at))
                    .copied()
                    .unwrap_or(0);
                v | u64::from(b) << (8 * i)
            });
        }
        (0..u64::from(size)).fold(0, |v, i| {
            let at = offset + i;
            let (entry, field) = (at / 16, at % 16);
            let b = if entry < n {
                let e = self.msix[entry as usize];
                let bytes = [
                    e.address.to_le_bytes(),
                    (u64::from(e.data) | u64::from(e.masked) << 32).to_le_bytes(),
                ];
                bytes[(field / 8) as usize][(field % 8) as usize]
            } else {
                0
            };
            v | u64::from(b) << (8 * i)
        })
    }

    fn msix_write(&mut self, offset: u64, size: u8, value: u64) {
        let n = u64::from(self.msix_vectors());
        let end = offset.saturating_add(u64::from(size));
        if end > n * 16 {
            return; // the PBA is read-only; past the table: nothing
        }
        for i in 0..u64::from(size) {
            let at = offset + i;
            let (entry, field) = (at / 16, at % 16);
            let e = &mut self.msix[entry as usize];
            let b = (value >> (8 * i)) & 0xff;
            match field {
                0..8 => {
                    let s = 8 * field;
                    e.address = (e.address & !(0xff << s)) | b << s;
                }
                8..12 => {
                    let s = 8 * (field - 8);
                    e.data = (e.data & !(0xff << s)) | (b as u32) << s;
                }
                // Vector control: bit 0 masks; the rest is reserved.
                12 => e.masked = b & 1 != 0,
                _ => {}
            }
        }
        self.deliver_pending();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::read_config_bytes;
    use crate::memory::SliceMemory;
    use std::vec::Vec;

    /// Two queues (8 and 4 entries), 8 bytes of configuration that the
    /// driver can write, features bit 0 and bit 40.
    #[derive(Default, Debug)]
    struct Fake {
        config: [u8; 8],
        resets: u32,
        processed: Vec<u16>,
        refuse: bool,
        fail: Option<DeviceError>,
    }

    impl VirtioDevice for Fake {
        fn device_type(&self) -> u16 {
            9
        }
        fn features(&self) -> u64 {
            1 | 1 << 40
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[8, 4]
        }
        fn config_len(&self) -> u64 {
            8
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            read_config_bytes(&self.config, offset, data);
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            for (i, &b) in data.iter().enumerate() {
                if let Some(c) = self.config.get_mut(offset as usize + i) {
                    *c = b;
                }
            }
        }
        fn ack_features(&mut self, _features: u64) -> bool {
            !self.refuse
        }
        fn reset(&mut self) {
            self.resets += 1;
        }
        fn process_queue<M: GuestMemory + ?Sized>(
            &mut self,
            index: u16,
            queues: &mut [Queue],
            mem: &mut M,
        ) -> Result<(), DeviceError> {
            self.processed.push(index);
            if let Some(e) = self.fail {
                return Err(e);
            }
            let q = &mut queues[usize::from(index)];
            while let Some(c) = q.pop(mem)? {
                q.add_used(mem, c.head(), 0)?;
            }
            Ok(())
        }
    }

    #[derive(Default, Debug)]
    struct Irqs {
        msis: Vec<(u64, u32)>,
        intx: bool,
    }

    impl InterruptSink for Irqs {
        fn send_msi(&mut self, address: u64, data: u32) {
            self.msis.push((address, data));
        }
        fn set_intx(&mut self, asserted: bool) {
            self.intx = asserted;
        }
    }

    type Pci = VirtioPci<Fake, Irqs>;

    fn pci() -> Pci {
        VirtioPci::new(Fake::default(), Irqs::default())
    }

    fn cr(p: &mut Pci, reg: u64, size: u8) -> u64 {
        p.bar_read(VIRTIO_BAR, COMMON_OFFSET + reg, size)
    }

    fn cw(p: &mut Pci, reg: u64, size: u8, v: u64) {
        assert_eq!(
            p.bar_write(VIRTIO_BAR, COMMON_OFFSET + reg, size, v),
            BarWriteOutcome::Done
        );
    }

    /// ACKNOWLEDGE, DRIVER, features, FEATURES_OK.
    fn negotiate(p: &mut Pci, features: u64) -> bool {
        cw(p, common::DEVICE_STATUS, 1, 3);
        for sel in 0..2 {
            cw(p, common::DRIVER_FEATURE_SELECT, 4, sel);
            cw(
                p,
                common::DRIVER_FEATURE,
                4,
                (features >> (32 * sel)) & 0xffff_ffff,
            );
        }
        cw(p, common::DEVICE_STATUS, 1, 0xb);
        cr(p, common::DEVICE_STATUS, 1) & 8 != 0
    }

    /// Queue `q` at fixed addresses, size 4, enabled.
    fn setup_queue(p: &mut Pci, q: u16) {
        let base = 0x1000 * (u64::from(q) + 1);
        cw(p, common::QUEUE_SELECT, 2, u64::from(q));
        cw(p, common::QUEUE_SIZE, 2, 4);
        cw(p, common::QUEUE_DESC, 8, base);
        cw(p, common::QUEUE_DRIVER, 8, base + 0x100);
        cw(p, common::QUEUE_DEVICE, 8, base + 0x200);
        cw(p, common::QUEUE_ENABLE, 2, 1);
    }

    fn running(p: &mut Pci) {
        assert!(negotiate(p, VIRTIO_F_VERSION_1));
        setup_queue(p, 0);
        setup_queue(p, 1);
        cw(p, common::DEVICE_STATUS, 1, 0xf);
    }

    #[test]
    fn header_and_capability_chain() {
        let mut p = pci();
        assert_eq!(p.config_read(0, 4), 0x1049_1af4);
        assert_eq!(p.config_read(8, 4), 0xff_0000 << 8 | 1);
        assert_eq!(p.config_read(0x2c, 4), 9 << 16 | 0x1af4);
        assert_eq!(p.config_read(0x3d, 1), 1, "INTA#");
        assert_eq!(p.config_read(0x06, 2), 0x10, "capability list");
        assert_eq!(p.config_read(0x34, 1), cap::MSIX as u32);
        // vndr, next, len, type, bar, offset, length.
        let expect = [
            (cap::COMMON, cap::NOTIFY, 16, 1, 0, COMMON_LEN),
            (cap::NOTIFY, cap::ISR, 20, 2, NOTIFY_OFFSET, 8),
            (cap::ISR, cap::DEVICE, 16, 3, ISR_OFFSET, 1),
            (cap::DEVICE, cap::PCI_CFG, 16, 4, DEVICE_OFFSET, 8),
            (cap::PCI_CFG, 0, 20, 5, 0, 0),
        ];
        assert_eq!(
            p.config_read(cap::MSIX as u16, 2),
            0x11 | (cap::COMMON as u32) << 8
        );
        for (at, next, len, ty, off, length) in expect {
            let at = at as u16;
            assert_eq!(
                p.config_read(at, 4),
                9 | (next as u32) << 8 | len << 16 | ty << 24
            );
            assert_eq!(p.config_read(at + 4, 1), 0);
            assert_eq!(u64::from(p.config_read(at + 8, 4)), off);
            assert_eq!(u64::from(p.config_read(at + 12, 4)), length);
        }
        assert_eq!(
            p.config_read(cap::NOTIFY as u16 + 16, 4),
            NOTIFY_OFF_MULTIPLIER
        );
        // MSI-X: 3 vectors, table in BAR 1 at 0, PBA at 0x800.
        assert_eq!(p.config_read(cap::MSIX as u16 + 2, 2), 2);
        assert_eq!(p.config_read(cap::MSIX as u16 + 4, 4), 1);
        assert_eq!(p.config_read(cap::MSIX as u16 + 8, 4), 0x801);
        // Read-only: IDs, capabilities; other sizes; extended space.
        p.config_write(0, 4, 0);
        p.config_write(cap::COMMON as u16, 4, 0);
        assert_eq!(p.config_read(0, 2), 0x1af4);
        assert_eq!(p.config_read(cap::COMMON as u16, 1), 9);
        assert_eq!(p.config_read(0, 3), u32::MAX);
        assert_eq!(p.config_read(0x100, 4), 0);
        assert_eq!(p.config_read(0xfe, 4), 0);
    }

    #[test]
    fn bars_size_assign_and_decode() {
        let mut p = pci();
        p.config_write(0x10, 4, u32::MAX);
        assert_eq!(p.config_read(0x10, 4), 0xffff_c000, "16 KiB, 32-bit memory");
        p.config_write(0x14, 4, u32::MAX);
        assert_eq!(p.config_read(0x14, 4), 0xffff_f000, "4 KiB");
        for bar in 2..6u16 {
            p.config_write(0x10 + 4 * bar, 4, u32::MAX);
            assert_eq!(p.config_read(0x10 + 4 * bar, 4), 0, "no BAR {bar}");
        }
        p.config_write(0x10, 4, 0xfebf_0123);
        p.config_write(0x14, 4, 0xfebe_0000);
        assert_eq!(p.config_read(0x10, 4), 0xfebf_0000);
        assert_eq!(p.decode(0xfebf_0000), None, "memory decoding is off");
        p.config_write(4, 2, 0xffff);
        assert_eq!(
            p.config_read(4, 2),
            0x406,
            "memory, bus master, INTx disable"
        );
        assert_eq!(p.decode(0xfebf_3fff), Some((VIRTIO_BAR, 0x3fff)));
        assert_eq!(p.decode(0xfebf_4000), None);
        assert_eq!(p.decode(0xfebe_0010), Some((MSIX_BAR, 0x10)));
        assert_eq!(p.bar_read(5, 0, 4), u64::from(u32::MAX));
        p.config_write(0x3c, 1, 11);
        assert_eq!(p.config_read(0x3c, 2), 0x10b, "line RW, pin RO");
    }

    #[test]
    fn features_select_and_negotiation() {
        let mut p = pci();
        assert_eq!(cr(&mut p, common::DEVICE_FEATURE, 4), 1 | 3 << 28);
        cw(&mut p, common::DEVICE_FEATURE_SELECT, 4, 1);
        assert_eq!(cr(&mut p, common::DEVICE_FEATURE_SELECT, 4), 1);
        assert_eq!(cr(&mut p, common::DEVICE_FEATURE, 4), 1 | 1 << 8);
        cw(&mut p, common::DEVICE_FEATURE_SELECT, 4, 2);
        assert_eq!(cr(&mut p, common::DEVICE_FEATURE, 4), 0);
        cw(&mut p, common::DEVICE_FEATURE, 4, 0x1234);
        // Driver features: per 32-bit half; other selects drop writes.
        cw(&mut p, common::DRIVER_FEATURE_SELECT, 4, 5);
        cw(&mut p, common::DRIVER_FEATURE, 4, 0xffff_ffff);
        assert_eq!(cr(&mut p, common::DRIVER_FEATURE, 4), 0);
        // Not offered: refused; no VERSION_1: refused; device refuses.
        assert!(!negotiate(&mut p, VIRTIO_F_VERSION_1 | 2));
        assert!(!negotiate(&mut p, 1));
        p.device_mut().refuse = true;
        assert!(!negotiate(&mut p, VIRTIO_F_VERSION_1));
        p.device_mut().refuse = false;
        assert!(negotiate(
            &mut p,
            VIRTIO_F_VERSION_1 | 1 | VIRTIO_F_EVENT_IDX
        ));
        assert_eq!(
            p.negotiated_features(),
            VIRTIO_F_VERSION_1 | 1 | VIRTIO_F_EVENT_IDX
        );
        // Frozen after FEATURES_OK.
        cw(&mut p, common::DRIVER_FEATURE_SELECT, 4, 0);
        cw(&mut p, common::DRIVER_FEATURE, 4, 0);
        assert_eq!(cr(&mut p, common::DRIVER_FEATURE, 4), 1 | 1 << 29);
    }

    #[test]
    fn status_rules_and_reset() {
        let mut p = pci();
        cw(&mut p, common::DEVICE_STATUS, 1, 0x44);
        assert_eq!(
            cr(&mut p, common::DEVICE_STATUS, 1),
            0,
            "no NEEDS_RESET, no DRIVER_OK without FEATURES_OK"
        );
        cw(&mut p, common::DEVICE_STATUS, 1, 1);
        cw(&mut p, common::DEVICE_STATUS, 1, 2);
        assert_eq!(
            cr(&mut p, common::DEVICE_STATUS, 1),
            3,
            "bits are not cleared but by reset"
        );
        running(&mut p);
        assert_eq!(p.status(), 0xf);
        cw(&mut p, common::CONFIG_MSIX_VECTOR, 2, 1);
        cw(&mut p, common::QUEUE_SELECT, 2, 1);
        cw(&mut p, common::QUEUE_MSIX_VECTOR, 2, 2);
        let resets = p.device().resets;
        cw(&mut p, common::DEVICE_STATUS, 1, 0);
        assert_eq!(p.device().resets, resets + 1);
        assert_eq!(cr(&mut p, common::DEVICE_STATUS, 1), 0);
        assert_eq!(
            cr(&mut p, common::CONFIG_MSIX_VECTOR, 2),
            u64::from(NO_VECTOR)
        );
        assert_eq!(cr(&mut p, common::QUEUE_SELECT, 2), 0);
        assert_eq!(cr(&mut p, common::QUEUE_ENABLE, 2), 0);
        assert_eq!(cr(&mut p, common::QUEUE_SIZE, 2), 8);
        assert_eq!(cr(&mut p, common::QUEUE_DESC, 8), 0);
        assert_eq!(
            cr(&mut p, common::QUEUE_MSIX_VECTOR, 2),
            u64::from(NO_VECTOR)
        );
        assert_eq!(p.negotiated_features(), 0);
        cw(&mut p, common::DEVICE_STATUS, 1, 0x80);
        assert_eq!(p.status(), 0x80, "FAILED");
    }

    #[test]
    fn queue_registers() {
        let mut p = pci();
        assert_eq!(cr(&mut p, common::NUM_QUEUES, 2), 2);
        cw(&mut p, common::NUM_QUEUES, 2, 7);
        assert_eq!(cr(&mut p, common::NUM_QUEUES, 2), 2, "read-only");
        cw(&mut p, common::QUEUE_SELECT, 2, 1);
        assert_eq!(cr(&mut p, common::QUEUE_SIZE, 2), 4);
        assert_eq!(cr(&mut p, common::QUEUE_NOTIFY_OFF, 2), 1);
        cw(&mut p, common::QUEUE_SIZE, 2, 2);
        assert_eq!(cr(&mut p, common::QUEUE_SIZE, 2), 2);
        // 64-bit addresses in halves and whole.
        cw(&mut p, common::QUEUE_DESC, 4, 0x5000);
        cw(&mut p, common::QUEUE_DESC + 4, 4, 1);
        assert_eq!(cr(&mut p, common::QUEUE_DESC, 8), 0x1_0000_5000);
        assert_eq!(cr(&mut p, common::QUEUE_DESC + 4, 4), 1);
        cw(&mut p, common::QUEUE_DRIVER, 8, 0x6000);
        cw(&mut p, common::QUEUE_DEVICE, 8, 0x7000);
        assert_eq!(cr(&mut p, common::QUEUE_DRIVER, 8), 0x6000);
        assert_eq!(cr(&mut p, common::QUEUE_DEVICE, 8), 0x7000);
        cw(&mut p, common::QUEUE_ENABLE, 2, 1);
        assert_eq!(cr(&mut p, common::QUEUE_ENABLE, 2), 1);
        // Frozen while enabled; 0 does not disable.
        cw(&mut p, common::QUEUE_SIZE, 2, 1);
        cw(&mut p, common::QUEUE_DESC, 8, 0);
        cw(&mut p, common::QUEUE_ENABLE, 2, 0);
        assert_eq!(cr(&mut p, common::QUEUE_SIZE, 2), 2);
        assert_eq!(cr(&mut p, common::QUEUE_DESC, 8), 0x1_0000_5000);
        assert_eq!(cr(&mut p, common::QUEUE_ENABLE, 2), 1);
        // Queue 0 untouched.
        cw(&mut p, common::QUEUE_SELECT, 2, 0);
        assert_eq!(
            (
                cr(&mut p, common::QUEUE_SIZE, 2),
                cr(&mut p, common::QUEUE_ENABLE, 2)
            ),
            (8, 0)
        );
        // A queue that does not exist.
        cw(&mut p, common::QUEUE_SELECT, 2, 2);
        assert_eq!(cr(&mut p, common::QUEUE_SELECT, 2), 2);
        for reg in [common::QUEUE_SIZE, common::QUEUE_ENABLE, common::QUEUE_DESC] {
            cw(&mut p, reg, 2, 1);
            assert_eq!(cr(&mut p, reg, 2), 0);
        }
        assert_eq!(
            cr(&mut p, common::QUEUE_MSIX_VECTOR, 2),
            u64::from(NO_VECTOR)
        );
        // Past the structure.
        assert_eq!(cr(&mut p, COMMON_LEN, 4), 0);
        // A 64-bit read across two 32-bit registers.
        assert_eq!(
            cr(&mut p, common::DEVICE_FEATURE_SELECT, 8),
            u64::from(1u32 | 3 << 28) << 32
        );
        assert_eq!(p.config_read(0, 4) >> 16, 0x1049);
    }

    #[test]
    fn enabling_a_bad_queue_needs_reset() {
        let mut p = pci();
        assert!(negotiate(&mut p, VIRTIO_F_VERSION_1));
        cw(&mut p, common::DEVICE_STATUS, 1, 0xf);
        cw(&mut p, common::QUEUE_SIZE, 2, 3);
        cw(&mut p, common::QUEUE_ENABLE, 2, 1);
        assert_eq!(
            p.status() & status::DEVICE_NEEDS_RESET,
            status::DEVICE_NEEDS_RESET
        );
        assert_eq!(cr(&mut p, common::QUEUE_ENABLE, 2), 0);
        assert_eq!(
            p.last_error(),
            Some(TransportError::QueueEnable {
                queue: 0,
                error: QueueError::BadSize { size: 3, max: 8 }
            })
        );
        assert!(p.interrupt_sink().intx, "configuration change over INTx");
        assert_eq!(p.bar_read(VIRTIO_BAR, ISR_OFFSET, 1), 2);
        cw(&mut p, common::QUEUE_SIZE, 2, 4);
        cw(&mut p, common::QUEUE_DESC, 8, 0x1008);
        cw(&mut p, common::QUEUE_ENABLE, 2, 1);
        assert!(matches!(
            p.last_error(),
            Some(TransportError::QueueEnable {
                error: QueueError::Misaligned { .. },
                ..
            })
        ));
    }

    #[test]
    fn msix_vectors_masking_and_pending() {
        let mut ram = std::vec![0u8; 0x4000];
        let mut p = pci();
        running(&mut p);
        // Vector numbers beyond the table read back as NO_VECTOR.
        cw(&mut p, common::CONFIG_MSIX_VECTOR, 2, 3);
        assert_eq!(
            cr(&mut p, common::CONFIG_MSIX_VECTOR, 2),
            u64::from(NO_VECTOR)
        );
        cw(&mut p, common::CONFIG_MSIX_VECTOR, 2, 0);
        cw(&mut p, common::QUEUE_SELECT, 2, 0);
        cw(&mut p, common::QUEUE_MSIX_VECTOR, 2, 1);
        assert_eq!(cr(&mut p, common::QUEUE_MSIX_VECTOR, 2), 1);
        // Table: entries start masked.
        assert_eq!(p.bar_read(MSIX_BAR, 12, 4), 1);
        p.bar_write(MSIX_BAR, 16, 8, 0xfee0_1000);
        p.bar_write(MSIX_BAR, 24, 4, 0x51);
        assert_eq!(p.bar_read(MSIX_BAR, 16, 8), 0xfee0_1000);
        assert_eq!(p.bar_read(MSIX_BAR, 24, 4), 0x51);
        p.bar_write(MSIX_BAR, 0x30, 4, 1);
        assert_eq!(p.bar_read(MSIX_BAR, 0x30, 4), 0, "past the table");
        // MSI-X enabled, function masked; a used buffer on queue 0.
        p.config_write(cap::MSIX as u16 + 2, 2, 0xc000);
        assert_eq!(p.config_read(cap::MSIX as u16 + 2, 2), 0xc002);
        let mut m = SliceMemory::new(&mut ram);
        m.write_u16(0x1000 + 8, 16).unwrap(); // descriptor 0: 16 bytes at 0
        m.write_u16(0x1100 + 2, 1).unwrap(); // avail idx 1, head 0
        let notify = p.bar_write(VIRTIO_BAR, NOTIFY_OFFSET, 2, 0);
        assert_eq!(notify, BarWriteOutcome::QueueNotify(0));
        p.process_queue(0, &mut m);
        assert_eq!(p.device().processed, [0]);
        assert!(p.interrupt_sink().msis.is_empty());
        assert!(!p.interrupt_sink().intx, "no INTx with MSI-X on");
        assert_eq!(
            p.bar_read(MSIX_BAR, MSIX_PBA_OFFSET, 8),
            2,
            "vector 1 pending"
        );
        // Function unmasked: the entry itself is still masked.
        p.config_write(cap::MSIX as u16 + 2, 2, 0x8000);
        assert!(p.interrupt_sink().msis.is_empty());
        p.bar_write(MSIX_BAR, MSIX_PBA_OFFSET, 8, 0);
        assert_eq!(
            p.bar_read(MSIX_BAR, MSIX_PBA_OFFSET, 1),
            2,
            "PBA is read-only"
        );
        // Entry unmasked: delivered, pending bit cleared.
        p.bar_write(MSIX_BAR, 28, 4, 0);
        assert_eq!(p.interrupt_sink().msis, [(0xfee0_1000, 0x51)]);
        assert_eq!(p.bar_read(MSIX_BAR, MSIX_PBA_OFFSET, 8), 0);
        // A configuration change on vector 0 (masked): pending.
        p.config_changed();
        assert_eq!(cr(&mut p, common::CONFIG_GENERATION, 1), 1);
        assert_eq!(p.bar_read(MSIX_BAR, MSIX_PBA_OFFSET, 8), 1);
        // Notify addresses: only enabled queues, exact offsets.
        assert_eq!(
            p.bar_write(VIRTIO_BAR, NOTIFY_OFFSET + 4, 2, 1),
            BarWriteOutcome::QueueNotify(1)
        );
        assert_eq!(
            p.bar_write(VIRTIO_BAR, NOTIFY_OFFSET + 2, 2, 0),
            BarWriteOutcome::Done
        );
        assert_eq!(
            p.bar_write(VIRTIO_BAR, NOTIFY_OFFSET + 8, 2, 2),
            BarWriteOutcome::Done
        );
    }

    #[test]
    fn device_configuration_and_the_access_window() {
        let mut p = pci();
        p.bar_write(VIRTIO_BAR, DEVICE_OFFSET + 2, 2, 0xbeef);
        assert_eq!(p.bar_read(VIRTIO_BAR, DEVICE_OFFSET, 4), 0xbeef_0000);
        assert_eq!(
            p.bar_read(VIRTIO_BAR, DEVICE_OFFSET + 6, 4),
            0,
            "past the end"
        );
        // The VIRTIO_PCI_CAP_PCI_CFG window: bar 0, offset, length.
        let at = cap::PCI_CFG as u16;
        p.config_write(at + 4, 1, 0);
        p.config_write(at + 8, 4, (DEVICE_OFFSET + 2) as u32);
        p.config_write(at + 12, 4, 2);
        assert_eq!(p.config_read(at + 16, 2), 0xbeef);
        p.config_write(at + 16, 2, 0x1234);
        assert_eq!(p.bar_read(VIRTIO_BAR, DEVICE_OFFSET + 2, 2), 0x1234);
        // Misaligned or odd lengths do nothing.
        p.config_write(at + 12, 4, 3);
        assert_eq!(p.config_read(at + 16, 4), 0);
        // Notifications through the window come out of config_write.
        running(&mut p);
        p.config_write(at + 8, 4, NOTIFY_OFFSET as u32 + 4);
        p.config_write(at + 12, 4, 2);
        assert_eq!(
            p.config_write(at + 16, 2, 1),
            BarWriteOutcome::QueueNotify(1)
        );
    }

    #[test]
    fn device_errors_need_reset_and_stop_processing() {
        let mut ram = std::vec![0u8; 0x4000];
        let mut m = SliceMemory::new(&mut ram);
        let mut p = pci();
        // Before DRIVER_OK nothing is processed.
        p.process_queue(0, &mut m);
        assert!(p.device().processed.is_empty());
        running(&mut p);
        p.device_mut().fail = Some(DeviceError::BadRequest("test"));
        p.process_queue(1, &mut m);
        assert_eq!(p.status(), 0x4f);
        assert_eq!(
            p.last_error(),
            Some(TransportError::Device(DeviceError::BadRequest("test")))
        );
        assert!(p.interrupt_sink().intx);
        p.process_queue(1, &mut m);
        p.poll(&mut m);
        assert_eq!(p.device().processed, [1], "stopped");
        // The driver resets: all clear.
        cw(&mut p, common::DEVICE_STATUS, 1, 0);
        assert_eq!((p.status(), p.last_error()), (0, None));
        assert!(!p.interrupt_sink().intx);
    }
}
