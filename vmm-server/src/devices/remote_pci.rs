//! A PCI function that runs as a server of its own (a virtio device
//! server), reached over a channel: the PCI twin of [`super::remote`].
//!
//! The vmm-server puts a [`RemotePci`] on its [`super::pci::PciBus`] where
//! the function would be: every configuration-space access and every BAR
//! access becomes one [`PciMessage`] on the channel, and every poll one
//! `POLL` message (at most one per poll gap). The device server does the
//! work an access asks for before it replies (a write to a queue's
//! notification address processes that queue), so the reply carries the
//! interrupts it raised: the INTx level, which the proxy holds on the
//! function's line, and MSI/MSI-X messages, which it writes to the board's
//! MSI mailbox (the interrupt controllers deliver them to the local APIC).
//!
//! The proxy knows nothing of virtio: any function a server models speaks
//! this protocol (the device side for any `virtio::VirtioDevice` is
//! `virtio_servers::serve`).
//!
//! A call that fails (the server is gone or not waiting) is counted in
//! [`RemotePci::failures`]: reads see an empty bus (all ones), writes are
//! dropped and the interrupt line keeps its level.

use ipc_proto::pci::{op, PciMessage, MAX_MSIS};
use ipc_proto::ErrorCode;

use super::pci::PciFunction;
use crate::board::PciInterrupts;

/// One call/reply channel to a PCI function's server.
pub trait PciChannel {
    /// Sends `request` and waits for the server's reply.
    fn call(&mut self, request: &PciMessage) -> Result<PciMessage, ErrorCode>;
}

impl<C: PciChannel + ?Sized> PciChannel for &mut C {
    fn call(&mut self, request: &PciMessage) -> Result<PciMessage, ErrorCode> {
        (**self).call(request)
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

    /// The error of the last failed call.
    pub fn last_error(&self) -> Option<ErrorCode> {
        self.last_error
    }

    fn send(&mut self, op: u32, bar: u8, offset: u64, size: u8, value: u64) -> Option<u64> {
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
                Some(reply.value)
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
        let _ = self.send(op::BAR_WRITE, bar, offset, size, value & mask(size));
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
        let _ = self.send(op::POLL, 0, 0, 0, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::board::Board;
    use crate::devices::pci::{PciBus, PciHole, MMIO_WINDOW_BASE};
    use crate::mmio::MmioDevice;
    use std::vec::Vec;
    use virtio::devices::console::{Console, ConsoleOutput, TRANSMITQ};
    use virtio::pci::{common, VirtioPci, NOTIFY_OFFSET, NOTIFY_OFF_MULTIPLIER};
    use virtio::status::{ACKNOWLEDGE, DRIVER, DRIVER_OK, FEATURES_OK};
    use virtio::SliceMemory;
    use virtio_servers::console::InputBuffer;
    use virtio_servers::{serve, Collected};

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
        pci: VirtioPci<Console<Out, InputBuffer>, Collected>,
        ram: Vec<u8>,
        seen: Vec<PciMessage>,
        broken: bool,
    }

    impl PciChannel for Loopback {
        fn call(&mut self, request: &PciMessage) -> Result<PciMessage, ErrorCode> {
            if self.broken {
                return Err(ErrorCode::NotReady);
            }
            self.seen.push(*request);
            Ok(serve(
                &mut self.pci,
                &mut SliceMemory::new(&mut self.ram),
                request,
            ))
        }
    }

    fn loopback() -> Loopback {
        Loopback {
            pci: VirtioPci::new(
                Console::new(Out::default(), InputBuffer::new()),
                Collected::default(),
            ),
            ram: vec![0; 1 << 16],
            seen: Vec::new(),
            broken: false,
        }
    }

    fn put(ram: &mut [u8], gpa: usize, bytes: &[u8]) {
        ram[gpa..gpa + bytes.len()].copy_from_slice(bytes);
    }

    #[test]
    fn a_driver_sends_output_through_the_proxy_and_gets_an_msi() {
        let board = Board::new();
        let mut ch = loopback();
        {
            let mut proxy = RemotePci::new(&mut ch).with_irq(board.irq.pci(10));
            let bus = PciBus::new();
            bus.add(3, 0, 10, &mut proxy).unwrap();
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
            // The ring, in the server's RAM.
            let ram = &mut proxy.channel.ram;
            put(ram, 0x4000, b"hello\n");
            put(ram, 0x1000, &0x4000u64.to_le_bytes());
            put(ram, 0x1008, &6u32.to_le_bytes());
            put(ram, 0x2004, &0u16.to_le_bytes());
            put(ram, 0x2002, &1u16.to_le_bytes());
            let notify = NOTIFY_OFFSET + u64::from(TRANSMITQ) * u64::from(NOTIFY_OFF_MULTIPLIER);
            proxy.bar_write(0, notify, 2, u64::from(TRANSMITQ));
            assert_eq!(proxy.msis(), (1, 0));
            assert_eq!(proxy.failures(), 0);
        }
        assert_eq!(ch.pci.device().output().0, b"hello\n");
        let m = board.irq.take_msi().expect("the queue's MSI-X message");
        assert_eq!(m.vector, 0x41);
        let last = ch.seen.last().unwrap();
        assert_eq!((last.op, last.bar, last.size), (op::BAR_WRITE, 0, 2));
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
        assert_eq!(p.failures(), 4);
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
