//! The virtio-pci transport and the network device under an arbitrary
//! driver and network: the first byte counts 12-byte records, each one
//! access (a configuration space write or read, a BAR write or read with
//! notifications processed at once, a poll, a frame from the network of
//! a length the record chooses, or a whole Linux-like initialisation of
//! both queues at addresses the record chooses, so that the rings in RAM
//! are reached); what follows the records is the start of guest RAM (64
//! KiB, the rest zero). Panics on any panic, when a frame outside
//! 14..=1514 bytes reaches the uplink, or when guest memory refused an
//! access and the device did not end in DEVICE_NEEDS_RESET.
#![no_main]

use core::cell::Cell;

use libfuzzer_sys::fuzz_target;
use std::collections::VecDeque;

use virtio::devices::net::{self, Net, NetBackend};
use virtio::features::VIRTIO_F_VERSION_1;
use virtio::memory::{GuestMemory, MemoryError, SliceMemory};
use virtio::pci::{common, BarWriteOutcome, NoInterrupts, NOTIFY_OFFSET};
use virtio::status::DEVICE_NEEDS_RESET;
use virtio::VirtioPci;

struct Watched<'a> {
    inner: SliceMemory<'a>,
    refused: Cell<u32>,
}

impl GuestMemory for Watched<'_> {
    fn ram_size(&self) -> u64 {
        self.inner.ram_size()
    }
    fn slice(&self, gpa: u64, len: u64) -> Result<&[u8], MemoryError> {
        self.inner
            .slice(gpa, len)
            .inspect_err(|_| self.refused.set(self.refused.get() + 1))
    }
    fn slice_mut(&mut self, gpa: u64, len: u64) -> Result<&mut [u8], MemoryError> {
        if self.inner.check(gpa, len).is_err() {
            self.refused.set(self.refused.get() + 1);
        }
        self.inner.slice_mut(gpa, len)
    }
}

const RAM: usize = 64 << 10;

/// The uplink: frames sent are checked, frames from the input wait.
#[derive(Default)]
struct Wire {
    tx: Vec<u8>,
    sent: u32,
    incoming: VecDeque<Vec<u8>>,
}

impl NetBackend for Wire {
    fn tx_buffer(&mut self) -> &mut [u8] {
        self.tx.resize(net::MAX_FRAME_LEN, 0);
        &mut self.tx
    }
    fn transmit(&mut self, len: usize) {
        assert!((net::ETH_HEADER_LEN..=net::MAX_FRAME_LEN).contains(&len));
        self.sent += 1;
    }
    fn peek(&mut self) -> Option<&[u8]> {
        self.incoming.front().map(Vec::as_slice)
    }
    fn consume(&mut self) {
        self.incoming.pop_front();
    }
}

/// Status, features (from `v`'s low bits), queue 0 (size and ring
/// addresses from `v`, in the first 4 KiB), DRIVER_OK: virtio_pci_modern's
/// order.
fn init<D: virtio::VirtioDevice, I: virtio::InterruptSink>(pci: &mut VirtioPci<D, I>, v: u64) {
    let mut w = |reg: u64, size: u8, val: u64| {
        pci.bar_write(0, reg, size, val);
    };
    w(common::DEVICE_STATUS, 1, 0);
    w(common::DEVICE_STATUS, 1, 3);
    let features = VIRTIO_F_VERSION_1 | (v & 3) << 28 | (v >> 2 & 1) << 9 | (v >> 3 & 1) << 5;
    w(common::DRIVER_FEATURE_SELECT, 4, 0);
    w(common::DRIVER_FEATURE, 4, features & 0xffff_ffff);
    w(common::DRIVER_FEATURE_SELECT, 4, 1);
    w(common::DRIVER_FEATURE, 4, features >> 32);
    w(common::DEVICE_STATUS, 1, 0xb);
    for q in 0..2u64 {
        w(common::QUEUE_SELECT, 2, q);
        w(common::QUEUE_SIZE, 2, 1 << (v >> 4 & 7));
        w(common::QUEUE_DESC, 8, ((v >> 8 & 0xff) << 4) + q * 0x1000);
        w(common::QUEUE_DRIVER, 8, ((v >> 16 & 0xfff) << 1) + q * 0x2000);
        w(common::QUEUE_DEVICE, 8, ((v >> 28 & 0x3ff) << 2) + q * 0x3000);
        w(common::QUEUE_ENABLE, 2, 1);
    }
    w(common::DEVICE_STATUS, 1, 0xf);
}
const PREFIX: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let (ops, prefix) = rest.split_at(rest.len().min(12 * usize::from(n)));
    let prefix = &prefix[..prefix.len().min(PREFIX)];
    let mut ram = vec![0u8; RAM];
    ram[..prefix.len()].copy_from_slice(prefix);
    let mut pci = VirtioPci::new(Net::new([2, 0x53, 0x56, 0, 0, 1], Wire::default()), NoInterrupts);
    let mut m = Watched {
        inner: SliceMemory::new(&mut ram),
        refused: Cell::new(0),
    };
    for op in ops.chunks_exact(12) {
        let kind = op[0] % 9;
        let size = [1u8, 2, 4, 8][usize::from(op[1] % 4)];
        let offset = u16::from_le_bytes([op[2], op[3]]);
        let value = u64::from_le_bytes([op[4], op[5], op[6], op[7], op[8], op[9], op[10], op[11]]);
        let bar = op[1] >> 4 & 1;
        // Offsets land in the interesting structures: the common, ISR,
        // device and notify areas of BAR 0, the MSI-X table and PBA.
        let bar_offset = u64::from(offset) & 0x3fff;
        let before = m.refused.get();
        let notify = match kind {
            0 => pci.config_write(offset & 0xff, size.min(4), value as u32),
            1 => {
                pci.config_read(offset & 0x1ff, size.min(4));
                BarWriteOutcome::Done
            }
            2 | 3 => pci.bar_write(bar, bar_offset, size, value),
            4 => {
                pci.bar_read(bar, bar_offset, size);
                BarWriteOutcome::Done
            }
            5 => {
                pci.poll(&mut m);
                BarWriteOutcome::Done
            }
            6 => {
                init(&mut pci, value);
                BarWriteOutcome::Done
            }
            7 => {
                // A frame of 0..=2047 bytes, its bytes from the record.
                let len = usize::from(offset & 0x7ff);
                let frame = (0..len).map(|i| op[4 + i % 8]).collect();
                pci.device_mut().backend_mut().incoming.push_back(frame);
                pci.poll(&mut m);
                BarWriteOutcome::Done
            }
            _ => {
                let q = u64::from(op[1] & 1);
                pci.bar_write(0, NOTIFY_OFFSET + 4 * q, 2, q)
            }
        };
        let rx_before = pci.device().stats().rx_frames;
        if let BarWriteOutcome::QueueNotify(q) = notify {
            pci.process_queue(q, &mut m);
        }
        let s = pci.device().stats();
        assert!(s.rx_bytes <= s.rx_frames * net::MAX_RX_FRAME_LEN as u64);
        assert!(s.rx_frames >= rx_before);
        if m.refused.get() != before {
            assert_ne!(
                pci.status() & DEVICE_NEEDS_RESET,
                0,
                "{:?}",
                pci.last_error()
            );
        }
    }
});
