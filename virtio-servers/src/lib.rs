//! The device side of a virtio-pci function that runs as a server of its
//! own: [`serve`] applies one `ipc_proto::pci::PciMessage` from the
//! vmm-server's proxy (`vmm_server::devices::remote_pci`) to a
//! [`VirtioPci`] and builds the reply, with the interrupts the access
//! raised ([`Collected`]). A queue notification is processed before the
//! reply (synchronous), in guest RAM mapped into this server
//! ([`RamWindow`]).
//!
//! Any `virtio::VirtioDevice` works: a device server is a thin loop of
//! `ReplyRecv` around [`serve`] (`src/bin/virtio-console.rs`). Nothing here
//! panics on what the guest or the vmm-server sends: bad sizes and
//! registers read all ones or are dropped (the virtio crate checks them),
//! and a queue the guest corrupted puts the device into NEEDS_RESET.
#![cfg_attr(not(test), no_std)]
#![deny(missing_docs)]

use ipc_proto::pci::{op, MsiMessage, PciMessage, MAX_MSIS};
use virtio::pci::{BarWriteOutcome, InterruptSink, VirtioPci};
use virtio::{GuestMemory, MemoryError, VirtioDevice};

pub mod console;

/// The interrupts a function raised since the last reply: MSI messages
/// (up to [`MAX_MSIS`], the rest counted) and INTA#'s level.
#[derive(Clone, Copy, Debug, Default)]
pub struct Collected {
    msis: [MsiMessage; MAX_MSIS],
    count: u8,
    dropped: u32,
    intx: bool,
}

impl Collected {
    /// Moves the messages into `reply` and reports the INTx level.
    pub fn drain_into(&mut self, reply: &mut PciMessage) {
        reply.msis = self.msis;
        reply.msi_count = self.count;
        reply.msis_dropped = self.dropped;
        reply.intx = u8::from(self.intx);
        self.count = 0;
        self.dropped = 0;
        self.msis = [MsiMessage::default(); MAX_MSIS];
    }
}

impl InterruptSink for Collected {
    fn send_msi(&mut self, address: u64, data: u32) {
        match self.msis.get_mut(usize::from(self.count)) {
            Some(m) => {
                *m = MsiMessage {
                    address,
                    data,
                    reserved: 0,
                };
                self.count += 1;
            }
            None => self.dropped = self.dropped.saturating_add(1),
        }
    }

    fn set_intx(&mut self, asserted: bool) {
        self.intx = asserted;
    }
}

/// Applies `request` to `pci` (its queues in `mem`) and builds the reply:
/// the value read, and the interrupts raised. A configuration offset past
/// 4 KiB or an unknown op reads all ones and changes nothing; `POLL` lets
/// the device take input of its own.
pub fn serve<D: VirtioDevice, M: GuestMemory + ?Sized>(
    pci: &mut VirtioPci<D, Collected>,
    mem: &mut M,
    request: &PciMessage,
) -> PciMessage {
    let mut reply = PciMessage {
        op: request.op,
        size: request.size,
        bar: request.bar,
        offset: request.offset,
        ..PciMessage::default()
    };
    let config_offset = u16::try_from(request.offset).ok().filter(|&o| o < 0x1000);
    let notify = match (request.op, config_offset) {
        (op::CONFIG_READ, Some(o)) => {
            reply.value = u64::from(pci.config_read(o, request.size));
            BarWriteOutcome::Done
        }
        (op::CONFIG_WRITE, Some(o)) => pci.config_write(o, request.size, request.value as u32),
        (op::BAR_READ, _) => {
            reply.value = pci.bar_read(request.bar, request.offset, request.size);
            BarWriteOutcome::Done
        }
        (op::BAR_WRITE, _) => {
            pci.bar_write(request.bar, request.offset, request.size, request.value)
        }
        (op::POLL, _) => {
            pci.poll(mem);
            BarWriteOutcome::Done
        }
        _ => {
            reply.value = u64::MAX;
            BarWriteOutcome::Done
        }
    };
    if let BarWriteOutcome::QueueNotify(q) = notify {
        pci.process_queue(q, mem);
    }
    pci.interrupt_sink_mut().drain_into(&mut reply);
    reply
}

/// Guest RAM `[0, len)` mapped into this server at `base` (the stub maps
/// the guest's RAM window into a task with that right), as
/// [`GuestMemory`].
///
/// The guest does not run while this server handles a message (one vCPU,
/// synchronous calls), so the bytes do not change under a slice this
/// server holds.
pub struct RamWindow {
    base: *mut u8,
    len: u64,
}

impl RamWindow {
    /// The window at `base`, `len` bytes.
    ///
    /// # Safety
    ///
    /// `[base, base + len)` is mapped read-write in this task for as long
    /// as the window lives, and nothing else in this task refers to it.
    pub unsafe fn new(base: *mut u8, len: u64) -> Self {
        Self { base, len }
    }
}

impl GuestMemory for RamWindow {
    fn ram_size(&self) -> u64 {
        self.len
    }

    fn slice(&self, gpa: u64, len: u64) -> Result<&[u8], MemoryError> {
        let r = virtio::memory::check_range(self.len, gpa, len)?;
        // SAFETY: check_range put the range inside [0, self.len), which
        // `new`'s contract says is mapped; the slice borrows self.
        Ok(unsafe { core::slice::from_raw_parts(self.base.add(r.start), r.len()) })
    }

    fn slice_mut(&mut self, gpa: u64, len: u64) -> Result<&mut [u8], MemoryError> {
        let r = virtio::memory::check_range(self.len, gpa, len)?;
        // SAFETY: as in `slice`; the slice borrows self mutably, so no
        // other slice of the window is live.
        Ok(unsafe { core::slice::from_raw_parts_mut(self.base.add(r.start), r.len()) })
    }
}
