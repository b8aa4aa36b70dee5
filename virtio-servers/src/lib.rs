//! The device side of a virtio-pci function that runs as a server of its
//! own: [`serve`] applies one `ipc_proto::pci::PciMessage` from the
//! vmm-server's proxy (`vmm_server::devices::remote_pci`) to a
//! [`VirtioPci`] and builds the reply, with the interrupts the access
//! raised ([`Collected`]), in guest RAM mapped into this server
//! ([`RamWindow`]).
//!
//! Queue notifications are asynchronous: [`serve`] answers `DOORBELL` with
//! the notification addresses, the proxy `Signal`s this server for a
//! guest's write there, and [`Server::notified`] processes those queues
//! and says whether to `Signal` the proxy back ([`Server`] keeps the
//! channel; the interrupts wait in [`Collected`] for the proxy's `POLL`).
//! A notification that comes through a message (the PCI configuration
//! window) is processed before the reply.
//!
//! Any `virtio::VirtioDevice` works: a device server is a thin loop of
//! `ReplyRecv` around [`Server`] (`src/bin/virtio-console.rs`). Nothing here
//! panics on what the guest or the vmm-server sends: bad sizes and
//! registers read all ones or are dropped (the virtio crate checks them),
//! and a queue the guest corrupted puts the device into NEEDS_RESET.
#![cfg_attr(not(test), no_std)]
#![deny(missing_docs)]

use ipc_proto::pci::{doorbell_bit, op, served_bit, MsiMessage, PciMessage, MAX_MSIS};
use virtio::pci::{
    BarWriteOutcome, InterruptSink, VirtioPci, NOTIFY_OFFSET, NOTIFY_OFF_MULTIPLIER, VIRTIO_BAR,
};
use virtio::{GuestMemory, MemoryError, VirtioDevice};

pub mod console;
pub mod net;
#[cfg(target_os = "none")]
pub mod ring3;
pub mod rng;

/// The interrupts a function raised since the last reply: MSI messages
/// (up to [`MAX_MSIS`], the rest counted) and INTA#'s level.
#[derive(Clone, Copy, Debug, Default)]
pub struct Collected {
    msis: [MsiMessage; MAX_MSIS],
    count: u8,
    dropped: u32,
    intx: bool,
    /// The INTx level the last reply reported.
    intx_reported: bool,
}

impl Collected {
    /// Whether the proxy has not heard of something yet: a message, a
    /// lost one, or a change of INTA#'s level.
    pub fn has_news(&self) -> bool {
        self.count != 0 || self.dropped != 0 || self.intx != self.intx_reported
    }

    /// Moves the messages into `reply` and reports the INTx level.
    pub fn drain_into(&mut self, reply: &mut PciMessage) {
        reply.msis = self.msis;
        reply.msi_count = self.count;
        reply.msis_dropped = self.dropped;
        reply.intx = u8::from(self.intx);
        self.intx_reported = self.intx;
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
        (op::DOORBELL, _) => {
            // Queue n's notification address is NOTIFY_OFFSET + n *
            // NOTIFY_OFF_MULTIPLIER (the notify capability says so).
            let queues = pci.device().queue_max_sizes().len() as u64;
            reply.bar = VIRTIO_BAR;
            reply.offset = NOTIFY_OFFSET;
            reply.size = NOTIFY_OFF_MULTIPLIER as u8;
            reply.value = queues.max(1) * u64::from(NOTIFY_OFF_MULTIPLIER);
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

/// Processes the queues whose doorbell bits (`ipc_proto::pci::doorbell_bit`)
/// are set in `bits`; the last bit stands for every queue from
/// `ipc_proto::pci::DOORBELLS - 1` on. The interrupts raised stay in the sink.
pub fn serve_doorbells<D: VirtioDevice, M: GuestMemory + ?Sized>(
    pci: &mut VirtioPci<D, Collected>,
    mem: &mut M,
    bits: u64,
) {
    let queues = pci.device().queue_max_sizes().len() as u64;
    for q in 0..queues {
        if bits & doorbell_bit(q) != 0 {
            pci.process_queue(q as u16, mem);
        }
    }
}

/// A device server's state between `ReplyRecv`s: the function, and the
/// channel of the proxy it serves (learned from the first message).
pub struct Server<D: VirtioDevice> {
    /// The function.
    pub pci: VirtioPci<D, Collected>,
    client: Option<u64>,
    /// The proxy's doorbell count when this server last took its word.
    doorbells_seen: u64,
    /// This instance's id in every reply (`PciMessage::instance`).
    instance: u32,
}

impl<D: VirtioDevice> Server<D> {
    /// A server for `device`.
    pub fn new(device: D) -> Self {
        Self {
            pci: VirtioPci::new(device, Collected::default()),
            client: None,
            doorbells_seen: 0,
            instance: 1,
        }
    }

    /// The same server answering with `id` as its instance id (made
    /// non-zero): the binaries take the TSC at start, so a restarted
    /// instance's differs.
    pub fn with_instance(mut self, id: u32) -> Self {
        self.instance = id.max(1);
        self
    }

    /// Whether `request` writes a queue's notification address (a doorbell
    /// sent as a call: the proxy's synchronous mode, or the PCI
    /// configuration window's access is not counted).
    pub fn is_doorbell(&self, request: &PciMessage) -> bool {
        let queues = self.pci.device().queue_max_sizes().len() as u64;
        let len = queues.max(1) * u64::from(NOTIFY_OFF_MULTIPLIER);
        request.op == op::BAR_WRITE
            && request.bar == VIRTIO_BAR
            && request
                .offset
                .checked_sub(NOTIFY_OFFSET)
                .is_some_and(|o| o < len)
    }

    /// The proxy's channel, once a message came on it.
    pub fn client(&self) -> Option<u64> {
        self.client
    }

    /// Answers `request`, which came on channel `ch` (see [`serve`]).
    pub fn message<M: GuestMemory + ?Sized>(
        &mut self,
        ch: u64,
        mem: &mut M,
        request: &PciMessage,
    ) -> PciMessage {
        self.client = Some(ch);
        let mut reply = serve(&mut self.pci, mem, request);
        match request.op {
            op::POLL => reply.value = self.doorbells_seen,
            op::RESUME => {
                self.pci.resume_queues(mem);
                reply.value = 0;
            }
            _ => {}
        }
        reply.instance = self.instance;
        reply
    }

    /// A notification word from `ReplyRecv`, with the proxy's doorbell
    /// count read from the channel page at that moment
    /// (`ipc_proto::pci::DOORBELL_COUNT_OFFSET`): processes the rung
    /// doorbells (the low 16 bits; the rest are host IRQs, not ours) and
    /// returns the channel and bits to `Signal` when the proxy has
    /// interrupts to fetch.
    pub fn notified<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &mut M,
        word: u64,
        doorbells: u64,
    ) -> Option<(u64, u64)> {
        if word & 0xffff != 0 {
            self.doorbells_seen = doorbells;
        }
        serve_doorbells(&mut self.pci, mem, word & 0xffff);
        let ch = self.client?;
        // Signal even without interrupts when doorbells were processed: the
        // proxy's POLL then learns that they were.
        (word & 0xffff != 0 || self.pci.interrupt_sink().has_news()).then_some((ch, served_bit(ch)))
    }
}

/// What an injected fault (`splitvisor run --inject SERVER:FAULT@N`) does
/// at a request: ticks `injector` once, and crashes or hangs when it says
/// so; a `corrupt` first has `scribble` write `ipc_proto::inject::GARBAGE`
/// over the server's channel pages. A request is a queue notification: a
/// notification word with doorbell bits, or a message that writes a
/// notification address ([`Server::is_doorbell`]).
pub fn inject_at_request(injector: &mut ipc_proto::inject::Injector, scribble: impl FnOnce()) {
    use stub_abi::inject::{crash, hang, Fault};
    match injector.tick() {
        None => {}
        Some(Fault::Crash) => crash(),
        Some(Fault::Hang) => hang(),
        Some(Fault::Corrupt) => {
            scribble();
            crash()
        }
    }
}

/// Guest RAM `[0, len)` mapped into this server at `base` (the stub maps
/// the guest's RAM window into a task with that right), as
/// [`GuestMemory`].
///
/// The guest runs only while this server is blocked in a system call (one
/// CPU, no preemption of ring-3 tasks): a device reads what it needs into
/// locals and holds no slice across a `Call` (virtio-blk hands the disk
/// driver addresses, not slices), so the bytes do not change under a
/// slice this server holds.
///
/// Under shadow paging the window reports each range it lends for writing
/// (used rings, console input, block status bytes) on the task's
/// guest-writes channel to the mmu-server ([`RamWindow::with_guest_writes`];
/// `ipc_proto::guest_writes`), so a shadowed page table the device writes
/// is resynced before the guest runs again.
pub struct RamWindow<W: GuestWriteSink = ()> {
    base: *mut u8,
    len: u64,
    writes: Option<W>,
}

/// Where a [`RamWindow`] reports the guest ranges it lends for writing.
pub trait GuestWriteSink {
    /// `len` bytes at `gpa` are (about to be) written.
    fn wrote(&self, gpa: u64, len: u64);
}

/// No reports.
impl GuestWriteSink for () {
    fn wrote(&self, _gpa: u64, _len: u64) {}
}

/// The task's guest-writes channel to the mmu-server.
#[cfg(target_os = "none")]
impl GuestWriteSink for stub_abi::sys::GuestWrites {
    fn wrote(&self, gpa: u64, len: u64) {
        stub_abi::sys::GuestWrites::wrote(self, gpa, len);
    }
}

impl RamWindow {
    /// The window at `base`, `len` bytes.
    ///
    /// # Safety
    ///
    /// `[base, base + len)` is mapped read-write in this task for as long
    /// as the window lives, and nothing else in this task refers to it.
    pub unsafe fn new(base: *mut u8, len: u64) -> Self {
        Self {
            base,
            len,
            writes: None,
        }
    }

    /// The same window reporting its writes on `writes` (`None`: the image
    /// gives this task no guest-writes channel, as under nested paging).
    pub fn with_guest_writes<W: GuestWriteSink>(self, writes: Option<W>) -> RamWindow<W> {
        RamWindow {
            base: self.base,
            len: self.len,
            writes,
        }
    }
}

impl<W: GuestWriteSink> GuestMemory for RamWindow<W> {
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
        // Reported before the write: the mmu-server reads the report only
        // once this task blocks, after it.
        if let Some(w) = &self.writes {
            w.wrote(gpa, len);
        }
        // SAFETY: as in `slice`; the slice borrows self mutably, so no
        // other slice of the window is live.
        Ok(unsafe { core::slice::from_raw_parts_mut(self.base.add(r.start), r.len()) })
    }
}

#[cfg(test)]
mod tests {
    use super::console::{Console, ConsoleOutput, InputBuffer};
    use super::*;
    use virtio::devices::console::RECEIVEQ;
    use virtio::pci::{common, MSIX_BAR, VIRTIO_BAR};
    use virtio::status::{ACKNOWLEDGE, DRIVER, DRIVER_OK, FEATURES_OK};
    use virtio::SliceMemory;

    #[derive(Default)]
    struct Out(Vec<u8>);
    impl ConsoleOutput for Out {
        fn write(&mut self, data: &[u8]) {
            self.0.extend_from_slice(data);
        }
    }

    fn msg(op: u32, bar: u8, offset: u64, size: u8, value: u64) -> PciMessage {
        PciMessage {
            op,
            bar,
            offset,
            size,
            value,
            ..PciMessage::default()
        }
    }

    #[test]
    fn host_input_reaches_the_receive_queue_on_a_poll_with_its_msi() {
        let mut ram = vec![0u8; 1 << 16];
        let mut pci = VirtioPci::new(
            Console::new(Out::default(), InputBuffer::new()),
            Collected::default(),
        );
        let mut mem = SliceMemory::new(&mut ram);
        let ask = |pci: &mut VirtioPci<_, _>, mem: &mut SliceMemory<'_>, m| serve(pci, mem, &m);
        // Firmware's BARs and memory decoding, MSI-X on (capability 0x40).
        ask(
            &mut pci,
            &mut mem,
            msg(op::CONFIG_WRITE, 0, 0x10, 4, 0xfe00_0000),
        );
        ask(
            &mut pci,
            &mut mem,
            msg(op::CONFIG_WRITE, 0, 0x14, 4, 0xfe00_4000),
        );
        ask(&mut pci, &mut mem, msg(op::CONFIG_WRITE, 0, 0x04, 2, 6));
        ask(
            &mut pci,
            &mut mem,
            msg(op::CONFIG_WRITE, 0, 0x42, 2, 0x8000),
        );
        // Vector 0: 0xFEE00000, data 0x42, unmasked.
        ask(
            &mut pci,
            &mut mem,
            msg(op::BAR_WRITE, MSIX_BAR, 0, 4, 0xfee0_0000),
        );
        ask(&mut pci, &mut mem, msg(op::BAR_WRITE, MSIX_BAR, 8, 4, 0x42));
        ask(&mut pci, &mut mem, msg(op::BAR_WRITE, MSIX_BAR, 12, 4, 0));
        let w = |pci: &mut VirtioPci<_, _>, mem: &mut SliceMemory<'_>, reg, size, v| {
            serve(pci, mem, &msg(op::BAR_WRITE, VIRTIO_BAR, reg, size, v))
        };
        w(
            &mut pci,
            &mut mem,
            common::DEVICE_STATUS,
            1,
            u64::from(ACKNOWLEDGE | DRIVER),
        );
        w(&mut pci, &mut mem, common::DRIVER_FEATURE_SELECT, 4, 1);
        w(&mut pci, &mut mem, common::DRIVER_FEATURE, 4, 1);
        let ok = ACKNOWLEDGE | DRIVER | FEATURES_OK;
        w(&mut pci, &mut mem, common::DEVICE_STATUS, 1, u64::from(ok));
        w(
            &mut pci,
            &mut mem,
            common::QUEUE_SELECT,
            2,
            u64::from(RECEIVEQ),
        );
        w(&mut pci, &mut mem, common::QUEUE_SIZE, 2, 4);
        w(&mut pci, &mut mem, common::QUEUE_MSIX_VECTOR, 2, 0);
        w(&mut pci, &mut mem, common::QUEUE_DESC, 8, 0x1000);
        w(&mut pci, &mut mem, common::QUEUE_DRIVER, 8, 0x2000);
        w(&mut pci, &mut mem, common::QUEUE_DEVICE, 8, 0x3000);
        w(&mut pci, &mut mem, common::QUEUE_ENABLE, 2, 1);
        w(
            &mut pci,
            &mut mem,
            common::DEVICE_STATUS,
            1,
            u64::from(ok | DRIVER_OK),
        );
        // One writable 16-byte buffer at 0x4000 on the receive queue.
        mem.write(0x1000, &0x4000u64.to_le_bytes()).unwrap();
        mem.write(0x1008, &16u32.to_le_bytes()).unwrap();
        mem.write(0x100c, &2u16.to_le_bytes()).unwrap(); // VIRTQ_DESC_F_WRITE
        mem.write(0x2004, &0u16.to_le_bytes()).unwrap();
        mem.write(0x2002, &1u16.to_le_bytes()).unwrap();
        // A poll with no input: nothing.
        let r = ask(&mut pci, &mut mem, msg(op::POLL, 0, 0, 0, 0));
        assert_eq!(r.msi_count, 0);
        // Keys typed on the host, read before the poll as the server does.
        pci.device_mut().input_mut().fill(|buf| {
            buf[..3].copy_from_slice(b"ls\r");
            3
        });
        let r = ask(&mut pci, &mut mem, msg(op::POLL, 0, 0, 0, 0));
        assert_eq!(r.msi_count, 1);
        assert_eq!((r.msis[0].address, r.msis[0].data), (0xfee0_0000, 0x42));
        assert_eq!(mem.slice(0x4000, 3).unwrap(), b"ls\r");
        assert_eq!(mem.read_u16(0x3002).unwrap(), 1, "used index");
        assert_eq!(mem.read_u32(0x3008).unwrap(), 3, "used length");
    }

    #[test]
    fn a_ram_window_reports_what_it_lends_for_writing() {
        struct Seen(std::cell::RefCell<Vec<(u64, u64)>>);
        impl GuestWriteSink for &Seen {
            fn wrote(&self, gpa: u64, len: u64) {
                self.0.borrow_mut().push((gpa, len));
            }
        }
        let mut ram = vec![0u8; 0x3000];
        let seen = Seen(Default::default());
        // SAFETY: `ram` outlives the window and is not used while it lives.
        let mut w =
            unsafe { RamWindow::new(ram.as_mut_ptr(), 0x3000) }.with_guest_writes(Some(&seen));
        w.write(0x1ffe, &[1, 2, 3, 4]).unwrap();
        let _ = w.slice(0x2000, 16).unwrap();
        assert!(w.slice_mut(0x2ff0, 0x20).is_err(), "past the end");
        assert_eq!(
            *seen.0.borrow(),
            [(0x1ffe, 4)],
            "reads and refusals are not writes"
        );
        assert_eq!(w.slice(0x1ffe, 4).unwrap(), &[1, 2, 3, 4]);
    }
}
