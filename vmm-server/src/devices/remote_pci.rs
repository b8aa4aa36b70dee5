//! A PCI function that runs as a server of its own (a virtio device
//! server), reached over a channel: the PCI twin of [`super::remote`].
//!
//! The vmm-server puts a [`RemotePci`] on its [`super::pci::PciBus`] where
//! the function would be: every configuration-space access and every BAR
//! access becomes one [`PciMessage`] on the channel, and every poll one
//! `POLL` message (at most one per poll gap). The device server does the
//! work an access asks for before it replies, so the reply carries the
//! interrupts it raised: the INTx level, which the proxy holds on the
//! function's line, and MSI/MSI-X messages, which it writes to the board's
//! MSI mailbox (the interrupt controllers deliver them to the local APIC).
//!
//! Doorbells are asynchronous: at its first BAR write the proxy asks the
//! server which BAR range is doorbells (`DOORBELL`); a write there becomes
//! a `Signal` of the doorbell's bit and the guest runs on. The server does
//! the work when the stub schedules it and `Signal`s back; at the
//! vmm-server's notification exit [`PciFunction::notified`] sends a `POLL`
//! whose reply carries the interrupts. Bits coalesce, and the server
//! processes a whole queue for a bit, so a doorbell rung while the server
//! is busy is not lost: it is seen at the server's next `ReplyRecv`.
//!
//! The proxy knows nothing of virtio: any function a server models speaks
//! this protocol (the device side for any `virtio::VirtioDevice` is
//! `virtio_servers::serve`).
//!
//! A server that restarts (the stub reloads a faulting one from its image)
//! comes back with its device reset. Each reply names the server's
//! instance; the proxy keeps the guest's writes (configuration and BAR
//! writes, in order, up to [`LOG_LEN`]) and, when the instance changes,
//! replays them into the new one, sends `RESUME` (a virtio function then
//! continues each queue from its used ring's `idx` in guest memory, so
//! requests in flight are processed again) and rings every doorbell. The
//! guest sees a slow request, not a reset. A log that overflowed is not
//! replayed: the guest then meets a reset function.
//!
//! A call that fails (the server is gone or not waiting) is counted in
//! [`RemotePci::failures`]: reads see an empty bus (all ones), writes are
//! dropped and the interrupt line keeps its level.

use ipc_proto::pci::{doorbell_bit, op, PciMessage, MAX_MSIS};
use ipc_proto::ErrorCode;

use super::pci::PciFunction;
use crate::board::PciInterrupts;

/// One call/reply channel to a PCI function's server.
pub trait PciChannel {
    /// Sends `request` and waits for the server's reply.
    fn call(&mut self, request: &PciMessage) -> Result<PciMessage, ErrorCode>;
    /// Writes `count` at `ipc_proto::pci::DOORBELL_COUNT_OFFSET` of the
    /// channel page, then ORs `bits` into the server's notification word
    /// (`Signal`).
    fn signal(&mut self, bits: u64, count: u64) -> Result<(), ErrorCode>;
    /// The bit the server sets in the vmm-server's word when it has
    /// interrupts for this proxy (`ipc_proto::pci::served_bit`).
    fn served_bit(&self) -> u32;
}

impl<C: PciChannel + ?Sized> PciChannel for &mut C {
    fn call(&mut self, request: &PciMessage) -> Result<PciMessage, ErrorCode> {
        (**self).call(request)
    }
    fn signal(&mut self, bits: u64, count: u64) -> Result<(), ErrorCode> {
        (**self).signal(bits, count)
    }
    fn served_bit(&self) -> u32 {
        (**self).served_bit()
    }
}

/// The most guest writes kept for a replay (Linux's set-up of a
/// virtio-pci function, BAR sizing included, is about a hundred).
pub const LOG_LEN: usize = 512;

/// One write the guest made: `op`, `bar`, `offset`, `size`, `value`.
type Write = (u32, u8, u64, u8, u64);

/// A function's doorbell registers: `len` bytes of BAR `bar` from
/// `offset`, one doorbell every `stride` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Doorbells {
    bar: u8,
    offset: u64,
    len: u64,
    stride: u64,
}

impl Doorbells {
    /// The doorbell a write at `offset` of `bar` rings.
    fn index(&self, bar: u8, offset: u64) -> Option<u64> {
        let rel = offset.checked_sub(self.offset)?;
        (bar == self.bar && rel < self.len).then(|| rel / self.stride)
    }
}

/// Forwards a PCI function's accesses to its server.
pub struct RemotePci<'b, C: PciChannel> {
    channel: C,
    irq: Option<PciInterrupts<'b>>,
    /// A host clock and the least time between two polls on it.
    poll_gap: Option<(&'b dyn Fn() -> u64, u64)>,
    last_poll: Option<u64>,
    calls: u64,
    failures: u64,
    msis: u64,
    msis_dropped: u64,
    last_error: Option<ErrorCode>,
    /// `None` until the server was asked; then its answer.
    doorbells: Option<Option<Doorbells>>,
    /// Doorbells signalled, and how many of them the server had seen at
    /// its last answer to a poll.
    rung: u64,
    seen: u64,
    notified: u64,
    /// The guest's writes, for a replay into a restarted server (on the
    /// heap, allocated once at the first write: the ring-3 vmm-server's
    /// stack is small and its allocator never frees).
    log: alloc::vec::Vec<Write>,
    log_overflowed: bool,
    /// The server instance of the last reply.
    instance: Option<u32>,
    restarts: u64,
}

impl<'b, C: PciChannel> RemotePci<'b, C> {
    /// A proxy for the function whose server answers on `channel`.
    pub fn new(channel: C) -> Self {
        Self {
            channel,
            irq: None,
            poll_gap: None,
            last_poll: None,
            calls: 0,
            failures: 0,
            msis: 0,
            msis_dropped: 0,
            last_error: None,
            doorbells: None,
            rung: 0,
            seen: 0,
            notified: 0,
            log: alloc::vec::Vec::new(),
            log_overflowed: false,
            instance: None,
            restarts: 0,
        }
    }

    /// The same proxy raising the interrupts each reply reports on `irq`.
    pub fn with_irq(mut self, irq: PciInterrupts<'b>) -> Self {
        self.irq = Some(irq);
        self
    }

    /// The same proxy sending a poll only when `gap` ticks of `now` have
    /// passed since its last poll.
    pub fn with_poll_gap(mut self, now: &'b dyn Fn() -> u64, gap: u64) -> Self {
        self.poll_gap = Some((now, gap));
        self
    }

    /// Messages sent so far.
    pub fn calls(&self) -> u64 {
        self.calls
    }

    /// Calls that failed so far.
    pub fn failures(&self) -> u64 {
        self.failures
    }

    /// MSI messages the replies carried, and those the server reported lost.
    pub fn msis(&self) -> (u64, u64) {
        (self.msis, self.msis_dropped)
    }

    /// Doorbell writes signalled, and the server's notifications answered
    /// with a poll.
    pub fn doorbells(&self) -> (u64, u64) {
        (self.rung, self.notified)
    }

    /// Restarts of the server seen, and whether the guest's writes could
    /// be replayed into it (the log did not overflow).
    pub fn restarts(&self) -> (u64, bool) {
        (self.restarts, !self.log_overflowed)
    }

    /// The error of the last failed call.
    pub fn last_error(&self) -> Option<ErrorCode> {
        self.last_error
    }

    /// The function's doorbells, asked for once (a server that does not
    /// know the op answers all ones: no doorbells).
    fn doorbells_of(&mut self) -> Option<Doorbells> {
        if let Some(d) = self.doorbells {
            return d;
        }
        self.calls += 1;
        let request = PciMessage {
            op: op::DOORBELL,
            ..PciMessage::default()
        };
        let d = match self.channel.call(&request) {
            Ok(r) if r.op == op::DOORBELL && r.value != 0 && (1..=128).contains(&r.size) => {
                Some(Doorbells {
                    bar: r.bar,
                    offset: r.offset,
                    len: r.value,
                    stride: u64::from(r.size),
                })
            }
            Ok(_) => None,
            Err(e) => {
                // Asked again at the next BAR write.
                self.failures += 1;
                self.last_error = Some(e);
                return None;
            }
        };
        self.doorbells = Some(d);
        d
    }

    /// Sends a poll now; its reply also says how many doorbells the
    /// server has taken.
    fn poll_now(&mut self) {
        if let Some(seen) = self.send(op::POLL, 0, 0, 0, 0) {
            if self.doorbells.is_some_and(|d| d.is_some()) {
                self.seen = seen.min(self.rung);
            }
        }
    }

    fn send(&mut self, op: u32, bar: u8, offset: u64, size: u8, value: u64) -> Option<u64> {
        self.send_logged(op, bar, offset, size, value, true)
    }

    /// [`Self::send`], keeping a write in the replay log only if `log`
    /// (doorbell writes stay out: a replay rings every doorbell anyway).
    fn send_logged(
        &mut self,
        op: u32,
        bar: u8,
        offset: u64,
        size: u8,
        value: u64,
        log: bool,
    ) -> Option<u64> {
        if log && matches!(op, op::CONFIG_WRITE | op::BAR_WRITE) {
            if self.log.len() < LOG_LEN {
                if self.log.capacity() == 0 {
                    self.log.reserve_exact(LOG_LEN);
                }
                self.log.push((op, bar, offset, size, value));
            } else {
                self.log_overflowed = true;
            }
        }
        let reply = self.exchange(op, bar, offset, size, value)?;
        let restarted = reply.instance != 0 && self.instance.is_some_and(|i| i != reply.instance);
        if reply.instance != 0 {
            self.instance = Some(reply.instance);
        }
        if !restarted {
            return Some(reply.value);
        }
        // The answer came from a new instance with a reset device: bring
        // it to where the guest left it, then ask again.
        self.restarts += 1;
        self.replay();
        self.exchange(op, bar, offset, size, value).map(|r| r.value)
    }

    /// Replays the guest's writes into a restarted server, lets it resume
    /// from guest memory and rings every doorbell (the ones rung before
    /// died with the old instance's notification word).
    fn replay(&mut self) {
        if self.log_overflowed {
            return;
        }
        for i in 0..self.log.len() {
            let (op, bar, offset, size, value) = self.log[i];
            let _ = self.exchange(op, bar, offset, size, value);
        }
        let _ = self.exchange(op::RESUME, 0, 0, 0, 0);
        let Some(Some(_)) = self.doorbells else {
            return;
        };
        let all = ipc_proto::SIGNAL_BITS;
        match self.channel.signal(all, self.rung + 1) {
            Ok(()) => self.rung += 1,
            Err(e) => {
                self.failures += 1;
                self.last_error = Some(e);
            }
        }
    }

    /// One message and its reply; the interrupts the reply carries are
    /// raised.
    fn exchange(
        &mut self,
        op: u32,
        bar: u8,
        offset: u64,
        size: u8,
        value: u64,
    ) -> Option<PciMessage> {
        let request = PciMessage {
            op,
            size,
            bar,
            offset,
            value,
            ..PciMessage::default()
        };
        self.calls += 1;
        match self.channel.call(&request) {
            Ok(reply) => {
                let count = usize::from(reply.msi_count).min(MAX_MSIS);
                self.msis += count as u64;
                self.msis_dropped += u64::from(reply.msis_dropped);
                if let Some(irq) = &mut self.irq {
                    for m in &reply.msis[..count] {
                        irq.send_msi(m.address, m.data);
                    }
                    irq.set_intx(reply.intx != 0);
                }
                Some(reply)
            }
            Err(e) => {
                self.failures += 1;
                self.last_error = Some(e);
                None
            }
        }
    }
}

fn mask(size: u8) -> u64 {
    match size {
        1 | 2 | 4 | 8 => u64::MAX >> (64 - 8 * u32::from(size)),
        _ => u64::MAX,
    }
}

impl<C: PciChannel> PciFunction for RemotePci<'_, C> {
    fn config_read(&mut self, offset: u16, size: u8) -> u32 {
        let v = self.send(op::CONFIG_READ, 0, u64::from(offset), size, 0);
        (v.unwrap_or(u64::MAX) & mask(size)) as u32
    }

    fn config_write(&mut self, offset: u16, size: u8, value: u32) {
        let value = u64::from(value) & mask(size);
        let _ = self.send(op::CONFIG_WRITE, 0, u64::from(offset), size, value);
    }

    fn bar_read(&mut self, bar: u8, offset: u64, size: u8) -> u64 {
        self.send(op::BAR_READ, bar, offset, size, 0)
            .unwrap_or(u64::MAX)
            & mask(size)
    }

    fn bar_write(&mut self, bar: u8, offset: u64, size: u8, value: u64) {
        let doorbell = self.doorbells_of().and_then(|d| d.index(bar, offset));
        if let Some(i) = doorbell {
            match self.channel.signal(doorbell_bit(i), self.rung + 1) {
                Ok(()) => {
                    self.rung += 1;
                    return;
                }
                // The server cannot be signalled: ring it the slow way.
                Err(e) => {
                    self.failures += 1;
                    self.last_error = Some(e);
                }
            }
        }
        let value = value & mask(size);
        let _ = self.send_logged(op::BAR_WRITE, bar, offset, size, value, doorbell.is_none());
    }

    fn notified(&mut self, word: u32) {
        if word & self.channel.served_bit() != 0 {
            self.notified += 1;
            self.poll_now();
        }
    }

    fn busy(&self) -> bool {
        self.seen < self.rung
    }

    fn poll(&mut self) {
        if let Some((now, gap)) = self.poll_gap {
            let t = now();
            if self
                .last_poll
                .is_some_and(|last| t.wrapping_sub(last) < gap)
            {
                return;
            }
            self.last_poll = Some(t);
        }
        self.poll_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::board::Board;
    use crate::devices::pci::{PciBus, PciHole, MMIO_WINDOW_BASE};
    use crate::mmio::MmioDevice;
    use std::vec::Vec;
    use stub_abi::syscall::RECV_NOTIFICATION;
    use virtio::devices::console::{Console, ConsoleOutput, TRANSMITQ};
    use virtio::pci::{common, NOTIFY_OFFSET, NOTIFY_OFF_MULTIPLIER};
    use virtio::status::{ACKNOWLEDGE, DRIVER, DRIVER_OK, FEATURES_OK};
    use virtio::SliceMemory;
    use virtio_servers::console::InputBuffer;
    use virtio_servers::Server;

    #[derive(Default)]
    struct Out(Vec<u8>);
    impl ConsoleOutput for Out {
        fn write(&mut self, data: &[u8]) {
            self.0.extend_from_slice(data);
        }
    }

    /// A channel whose server is a virtio console in the same process:
    /// what the virtio-console server does, without the stub in between.
    struct Loopback {
        server: Server<Console<Out, InputBuffer>>,
        ram: Vec<u8>,
        seen: Vec<PciMessage>,
        broken: bool,
        /// The server's notification word (what `Signal` sets).
        word: u64,
        /// The vmm-server's word (what the server's `Signal` sets).
        back: u32,
        /// The doorbell count in the channel page.
        count: u64,
    }

    const CH: u64 = 2;

    impl PciChannel for Loopback {
        fn call(&mut self, request: &PciMessage) -> Result<PciMessage, ErrorCode> {
            if self.broken {
                return Err(ErrorCode::NotReady);
            }
            self.seen.push(*request);
            Ok(self
                .server
                .message(CH, &mut SliceMemory::new(&mut self.ram), request))
        }
        fn signal(&mut self, bits: u64, count: u64) -> Result<(), ErrorCode> {
            if self.broken {
                return Err(ErrorCode::NotReady);
            }
            self.count = count;
            self.word |= bits;
            Ok(())
        }
        fn served_bit(&self) -> u32 {
            ipc_proto::pci::served_bit(CH) as u32
        }
    }

    impl Loopback {
        /// The stub schedules the server: it takes its word, as
        /// `ReplyRecv` returns it, and signals back if it has news.
        fn schedule(&mut self) {
            let word = core::mem::take(&mut self.word);
            if word == 0 {
                return;
            }
            let mut mem = SliceMemory::new(&mut self.ram);
            if let Some((ch, bits)) =
                self.server
                    .notified(&mut mem, RECV_NOTIFICATION | word, self.count)
            {
                assert_eq!(ch, CH);
                self.back |= bits as u32;
            }
        }

        /// The stub restarts the server from its image: a fresh device, a
        /// new instance id, the notification word cleared.
        fn restart(&mut self, instance: u32) {
            self.server = Server::new(Console::new(Out::default(), InputBuffer::new()))
                .with_instance(instance);
            self.word = 0;
        }

        fn take_back(&mut self) -> u32 {
            core::mem::take(&mut self.back)
        }

        fn output(&self) -> &[u8] {
            &self.server.pci.device().output().0
        }
    }

    fn loopback() -> Loopback {
        Loopback {
            server: Server::new(Console::new(Out::default(), InputBuffer::new())),
            ram: vec![0; 1 << 16],
            seen: Vec::new(),
            broken: false,
            word: 0,
            back: 0,
            count: 0,
        }
    }

    fn put(ram: &mut [u8], gpa: usize, bytes: &[u8]) {
        ram[gpa..gpa + bytes.len()].copy_from_slice(bytes);
    }

    /// A guest driver's set-up of the console's transmit queue (size 4
    /// at 0x1000/0x2000/0x3000, MSI-X vector 1 = 0xFEE00000 data 0x41)
    /// through `proxy` on a bus, as Linux does it.
    fn set_up_transmitq(proxy: &mut RemotePci<'_, &mut Loopback>) {
        let bus = PciBus::new();
        bus.add(3, 0, 10, &mut *proxy).unwrap();
        let cfg = bus.bar_base(3, 0, 0).unwrap();
        let msix = bus.bar_base(3, 0, 1).unwrap();
        let mut hole = PciHole::new(&bus);
        let mut w = |gpa: u64, size: u8, v: u64| {
            hole.write(gpa - MMIO_WINDOW_BASE, size, v);
        };
        // MSI-X entry 1 (the transmit queue's vector): 0xFEE00000, vector 0x41.
        w(msix + 16, 4, 0xfee0_0000);
        w(msix + 16 + 8, 4, 0x41);
        w(msix + 16 + 12, 4, 0);
        w(
            cfg + common::DEVICE_STATUS,
            1,
            u64::from(ACKNOWLEDGE | DRIVER),
        );
        w(cfg + common::DRIVER_FEATURE_SELECT, 4, 1);
        w(cfg + common::DRIVER_FEATURE, 4, 1);
        let ok = ACKNOWLEDGE | DRIVER | FEATURES_OK;
        w(cfg + common::DEVICE_STATUS, 1, u64::from(ok));
        w(cfg + common::QUEUE_SELECT, 2, u64::from(TRANSMITQ));
        w(cfg + common::QUEUE_SIZE, 2, 4);
        w(cfg + common::QUEUE_MSIX_VECTOR, 2, 1);
        w(cfg + common::QUEUE_DESC, 8, 0x1000);
        w(cfg + common::QUEUE_DRIVER, 8, 0x2000);
        w(cfg + common::QUEUE_DEVICE, 8, 0x3000);
        w(cfg + common::QUEUE_ENABLE, 2, 1);
        w(cfg + common::DEVICE_STATUS, 1, u64::from(ok | DRIVER_OK));
        // MSI-X enable (message control, capability at 0x40).
        let mut host = crate::devices::pci::PciHost::new().with_bus(&bus);
        use crate::devices::{IoSize, PortDevice};
        let cap = (0x40..0x100)
            .step_by(4)
            .find(|&r| {
                host.write(0, IoSize::Dword, 0x8000_1800 | r);
                host.read(4, IoSize::Byte) == 0x11
            })
            .expect("an MSI-X capability");
        host.write(0, IoSize::Dword, 0x8000_1800 | cap);
        host.write(6, IoSize::Word, 0x8000);
    }

    /// The driver puts `text` in descriptor `slot` (at 0x4000 + slot *
    /// 0x100) and makes it available as the `n`-th buffer.
    fn offer(ram: &mut [u8], slot: u16, n: u16, text: &[u8]) {
        let buf = 0x4000 + usize::from(slot) * 0x100;
        let desc = 0x1000 + usize::from(slot) * 16;
        put(ram, buf, text);
        put(ram, desc, &(buf as u64).to_le_bytes());
        put(ram, desc + 8, &(text.len() as u32).to_le_bytes());
        put(ram, 0x2004 + 2 * usize::from(n % 4), &slot.to_le_bytes());
        put(ram, 0x2002, &(n + 1).to_le_bytes());
    }

    const TX_NOTIFY: u64 = NOTIFY_OFFSET + TRANSMITQ as u64 * NOTIFY_OFF_MULTIPLIER as u64;

    type Proxy<'b, 'c> = RemotePci<'b, &'c mut Loopback>;

    /// The console's proxy on `board`'s line 10, with the transmit queue
    /// set up.
    fn console<'b, 'c>(board: &'b Board, ch: &'c mut Loopback) -> Proxy<'b, 'c> {
        let mut proxy = RemotePci::new(ch).with_irq(board.irq.pci(10));
        set_up_transmitq(&mut proxy);
        proxy
    }

    /// The driver offers `text` ([`offer`]) and rings the transmit
    /// queue's doorbell.
    fn ring(proxy: &mut Proxy<'_, '_>, slot: u16, n: u16, text: &[u8]) {
        offer(&mut proxy.channel.ram, slot, n, text);
        proxy.bar_write(0, TX_NOTIFY, 2, u64::from(TRANSMITQ));
    }

    /// The stub runs the signalled server, and the vmm-server takes the
    /// notification exit that follows.
    fn serve(proxy: &mut Proxy<'_, '_>) {
        proxy.channel.schedule();
        let back = proxy.channel.take_back();
        proxy.notified(back);
    }

    #[test]
    fn a_doorbell_signals_and_the_msi_comes_at_the_notification() {
        let board = Board::new();
        let mut ch = loopback();
        {
            let mut proxy = console(&board, &mut ch);
            offer(&mut proxy.channel.ram, 0, 0, b"hello\n");
            let calls = proxy.calls();
            proxy.bar_write(0, TX_NOTIFY, 2, u64::from(TRANSMITQ));
            // The guest runs on: no call, the server only signalled.
            assert_eq!(proxy.calls(), calls);
            assert_eq!(proxy.channel.word, 1 << TRANSMITQ);
            assert!(proxy.busy());
            assert!(proxy.channel.output().is_empty());
            assert_eq!(proxy.msis(), (0, 0));
            // The stub schedules the server; it signals the proxy's end.
            proxy.channel.schedule();
            assert_eq!(proxy.channel.output(), b"hello\n");
            let back = proxy.channel.take_back();
            assert_eq!(back, 1 << CH);
            assert!(board.irq.take_msi().is_none(), "not before the poll");
            // A word without this function's bit changes nothing.
            proxy.notified(1 << (CH + 1));
            assert!(proxy.busy());
            // The vmm-server's notification exit.
            proxy.notified(back);
            assert!(!proxy.busy());
            assert_eq!(proxy.msis(), (1, 0));
            assert_eq!(proxy.doorbells(), (1, 1));
            assert_eq!(proxy.failures(), 0);
        }
        let m = board.irq.take_msi().expect("the queue's MSI-X message");
        assert_eq!(m.vector, 0x41);
        let last = ch.seen.last().unwrap();
        assert_eq!(last.op, op::POLL);
        assert_eq!(
            ch.seen.iter().filter(|m| m.op == op::DOORBELL).count(),
            1,
            "asked once"
        );
        assert!(
            !ch.seen
                .iter()
                .any(|m| m.op == op::BAR_WRITE && m.offset == TX_NOTIFY),
            "the doorbell never became a call"
        );
    }

    #[test]
    fn doorbells_rung_while_the_server_is_busy_are_not_lost() {
        let board = Board::new();
        let mut ch = loopback();
        let mut proxy = console(&board, &mut ch);
        // Two doorbells before the server runs: one bit, both buffers.
        ring(&mut proxy, 0, 0, b"a");
        ring(&mut proxy, 1, 1, b"b");
        proxy.channel.schedule();
        assert_eq!(proxy.channel.output(), b"ab");
        // The server has done its work and signalled, but the proxy has not
        // polled yet: a third doorbell comes.
        ring(&mut proxy, 2, 2, b"c");
        let back = proxy.channel.take_back();
        proxy.notified(back);
        assert!(proxy.busy(), "the third doorbell is still to be answered");
        serve(&mut proxy);
        assert_eq!(proxy.channel.output(), b"abc");
        assert!(!proxy.busy());
        assert_eq!(proxy.doorbells(), (3, 2));
        assert_eq!(proxy.channel.count, 3);
        let mut vectors = Vec::new();
        while let Some(m) = board.irq.take_msi() {
            vectors.push(m.vector);
        }
        assert!(!vectors.is_empty() && vectors.iter().all(|&v| v == 0x41));
        // The used ring holds all three.
        let ram = &proxy.channel.ram;
        assert_eq!(u16::from_le_bytes([ram[0x3002], ram[0x3003]]), 3);
    }

    #[test]
    fn a_restarted_server_gets_the_guests_writes_and_retries_what_was_in_flight() {
        let board = Board::new();
        let mut ch = loopback();
        let mut proxy = console(&board, &mut ch);
        ring(&mut proxy, 0, 0, b"a");
        serve(&mut proxy);
        assert_eq!(proxy.channel.output(), b"a");
        while board.irq.take_msi().is_some() {}
        // "b" is made available and rung; the server dies before it runs.
        ring(&mut proxy, 1, 1, b"b");
        proxy.channel.restart(7);
        assert!(proxy.busy());
        // The next poll meets the new instance: the proxy replays the
        // set-up, resumes it and rings its doorbells.
        proxy.poll();
        assert_eq!(proxy.restarts(), (1, true));
        let seen = &proxy.channel.seen;
        assert!(seen.iter().any(|m| m.op == op::RESUME));
        let status = &proxy.channel.server.pci;
        assert_ne!(status.status() & DRIVER_OK, 0, "the set-up replayed");
        serve(&mut proxy);
        // Only "b": the new instance went on from the used ring's idx.
        assert_eq!(proxy.channel.output(), b"b");
        assert!(!proxy.busy());
        assert_eq!(board.irq.take_msi().map(|m| m.vector), Some(0x41));
        let ram = &proxy.channel.ram;
        assert_eq!(u16::from_le_bytes([ram[0x3002], ram[0x3003]]), 2);
    }

    /// A server that signals the vmm-server for ever costs one poll per
    /// notification exit, never a loop in the proxy; the stub's `ExitGate`
    /// allows one such exit between two guest entries
    /// (`kernel_stub::notify`'s `a_signalling_loop_never_starves_the_guest`).
    #[test]
    fn a_server_that_signals_for_ever_costs_one_poll_per_notification() {
        let mut ch = loopback();
        let mut proxy = RemotePci::new(&mut ch);
        let bit = proxy.channel.served_bit();
        for _ in 0..100 {
            proxy.notified(bit | 1 << 30);
        }
        assert_eq!(proxy.calls(), 100);
        assert_eq!(proxy.doorbells(), (0, 100));
        assert!(proxy.channel.seen.iter().all(|m| m.op == op::POLL));
    }

    #[test]
    fn a_doorbell_that_cannot_be_signalled_is_a_call() {
        let board = Board::new();
        let mut ch = loopback();
        let proxy = console(&board, &mut ch);
        offer(&mut proxy.channel.ram, 0, 0, b"x");
        // The function's doorbells are known; now Signal fails but calls
        // go through (a stub that refuses the bits, say).
        struct NoSignal<'a>(&'a mut Loopback);
        impl PciChannel for NoSignal<'_> {
            fn call(&mut self, r: &PciMessage) -> Result<PciMessage, ErrorCode> {
                self.0.call(r)
            }
            fn signal(&mut self, _: u64, _: u64) -> Result<(), ErrorCode> {
                Err(ErrorCode::BadArgument)
            }
            fn served_bit(&self) -> u32 {
                self.0.served_bit()
            }
        }
        let mut p2 = RemotePci::new(NoSignal(proxy.channel));
        p2.bar_write(0, TX_NOTIFY, 2, 1);
        assert_eq!(p2.failures(), 1);
        assert!(!p2.busy());
        assert_eq!(p2.msis(), (1, 0));
        assert_eq!(p2.channel.0.output(), b"x");
    }

    #[test]
    fn a_failed_call_reads_an_empty_bus() {
        let board = Board::new();
        board.irq.pin(10).set_level(true);
        let mut ch = loopback();
        ch.broken = true;
        let mut p = RemotePci::new(&mut ch).with_irq(board.irq.pci(10));
        assert_eq!(p.config_read(0, 2), 0xffff);
        assert_eq!(p.bar_read(0, 0, 8), u64::MAX);
        p.bar_write(0, 0, 4, 1);
        p.poll();
        // The BAR write first asked for the doorbells, in vain.
        assert_eq!(p.failures(), 5);
        assert_eq!(p.last_error(), Some(ErrorCode::NotReady));
        assert!(board.irq.pin(10).is_high(), "the line keeps its level");
    }

    #[test]
    fn the_server_answers_bad_requests_without_harm() {
        let mut ch = loopback();
        let mut ask = |op, bar, offset, size, value| {
            ch.call(&PciMessage {
                op,
                bar,
                offset,
                size,
                value,
                ..PciMessage::default()
            })
            .unwrap()
        };
        assert_eq!(ask(op::CONFIG_READ, 0, 0x1_0000, 4, 0).value, u64::MAX);
        assert_eq!(ask(op::CONFIG_READ, 0, 0, 3, 0).value, u64::from(u32::MAX));
        assert_eq!(ask(99, 0, 0, 4, 0).value, u64::MAX);
        assert_eq!(ask(op::BAR_READ, 7, 0, 4, 0).value, u64::from(u32::MAX));
        ask(op::BAR_WRITE, 0, u64::MAX, 8, 0);
        ask(op::CONFIG_WRITE, 0, u64::MAX, 4, 0);
        let r = ask(op::POLL, 0, 0, 0, 0);
        assert_eq!((r.msi_count, r.intx), (0, 0));
        assert_eq!(ask(op::CONFIG_READ, 0, 0, 4, 0).value, 0x1043_1af4);
    }
}
