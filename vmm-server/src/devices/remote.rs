//! A device that runs as a server of its own, reached over a channel.
//!
//! The vmm-server registers a [`RemotePort`] in its router where the device
//! would be: every port access becomes one [`PortMessage`] on the channel
//! (the client fills the page, calls, and reads the answer in the same
//! page), and every poll one `POLL` message. The reply carries the device's
//! interrupt line, which the proxy holds on its [`IrqPin`] as the local
//! model would, so the PIC sees no difference.
//!
//! The device's side is [`serve`]: it applies one message to a local
//! [`PortDevice`] and builds the reply. The uart-server (`src/bin/uart-server.rs`)
//! is a loop of `ReplyRecv` around it.
//!
//! Polls are the bulk of the traffic (the exit handler polls every device
//! several times per exit), and a UART only needs them to notice host
//! input: [`RemotePort::with_poll_gap`] sends a `POLL` only when a given
//! time has passed since the last one (accesses do not count: a guest that
//! spins on the line status register must still see its input arrive).
//!
//! A call that fails (the server is gone or not waiting) is counted in
//! [`RemotePort::failures`]: reads see an empty bus (all ones), writes are
//! dropped and the interrupt line keeps its level.

use ipc_proto::device::{op, PortMessage};
use ipc_proto::ErrorCode;

use super::{IoSize, PortDevice, WriteOutcome};
use crate::board::{IrqPin, Nanos};

/// One call/reply channel to a device server.
pub trait PortChannel {
    /// Sends `request` and waits for the server's reply.
    fn call(&mut self, request: &PortMessage) -> Result<PortMessage, ErrorCode>;
}

impl<C: PortChannel + ?Sized> PortChannel for &mut C {
    fn call(&mut self, request: &PortMessage) -> Result<PortMessage, ErrorCode> {
        (**self).call(request)
    }
}

/// Forwards the accesses to ports `[base, ...)` to a device server.
pub struct RemotePort<'b, C: PortChannel> {
    channel: C,
    base: u16,
    irq: Option<IrqPin<'b>>,
    /// A host clock and the least time between two polls on it.
    poll_gap: Option<(&'b dyn Fn() -> u64, u64)>,
    /// The host time of the last poll, when `poll_gap` is set.
    last_poll: Option<u64>,
    calls: u64,
    polls_skipped: u64,
    failures: u64,
    last_error: Option<ErrorCode>,
}

impl<C: PortChannel> RemotePort<'_, C> {
    /// A proxy for the device whose first port is `base` (the router's
    /// offsets count from it; the messages carry whole port numbers).
    pub fn new(channel: C, base: u16) -> Self {
        Self {
            channel,
            base,
            irq: None,
            poll_gap: None,
            last_poll: None,
            calls: 0,
            polls_skipped: 0,
            failures: 0,
            last_error: None,
        }
    }
}

impl<'b, C: PortChannel> RemotePort<'b, C> {
    /// The same proxy holding `irq` at the level each reply reports.
    pub fn with_irq(mut self, irq: IrqPin<'b>) -> Self {
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

    /// Polls left out because the last message was too recent.
    pub fn polls_skipped(&self) -> u64 {
        self.polls_skipped
    }

    /// Calls that failed so far.
    pub fn failures(&self) -> u64 {
        self.failures
    }

    /// The error of the last failed call.
    pub fn last_error(&self) -> Option<ErrorCode> {
        self.last_error
    }

    /// The channel.
    pub fn channel_mut(&mut self) -> &mut C {
        &mut self.channel
    }

    /// Asks the server to send its buffered output now ([`op::FLUSH`]).
    pub fn flush(&mut self) {
        let _ = self.send(op::FLUSH, 0, IoSize::Byte, 0);
    }

    fn send(&mut self, op: u32, offset: u16, size: IoSize, value: u32) -> Option<PortMessage> {
        let request = PortMessage {
            op,
            port: self.base.wrapping_add(offset),
            size: size.bytes(),
            irq_level: 0,
            value,
            stop: 0,
        };
        self.calls += 1;
        match self.channel.call(&request) {
            Ok(reply) => {
                if let Some(p) = &self.irq {
                    p.set_level(reply.irq_level != 0);
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

/// What a reply's `stop` field asks for.
fn outcome(stop: u32) -> WriteOutcome {
    if stop & 0x100 != 0 {
        WriteOutcome::Stop { status: stop as u8 }
    } else {
        WriteOutcome::Continue
    }
}

impl<C: PortChannel> PortDevice for RemotePort<'_, C> {
    fn read(&mut self, offset: u16, size: IoSize) -> u32 {
        match self.send(op::READ, offset, size, 0) {
            Some(reply) => reply.value & size.mask(),
            None => size.mask(),
        }
    }

    fn write(&mut self, offset: u16, size: IoSize, value: u32) -> WriteOutcome {
        match self.send(op::WRITE, offset, size, value & size.mask()) {
            Some(reply) => outcome(reply.stop),
            None => WriteOutcome::Continue,
        }
    }

    /// Lets the server take host input and reports its line; the server's
    /// deadlines (none for a UART) are its own business.
    fn poll(&mut self) -> Option<Nanos> {
        if let Some((now, gap)) = self.poll_gap {
            let t = now();
            if self
                .last_poll
                .is_some_and(|last| t.wrapping_sub(last) < gap)
            {
                self.polls_skipped += 1;
                return None;
            }
            self.last_poll = Some(t);
        }
        let _ = self.send(op::POLL, 0, IoSize::Byte, 0);
        None
    }
}

/// The device server's side: applies `request` to `device`, which decodes
/// ports `[base, base + len)`, and builds the reply; `irq_line` reads the
/// device's interrupt line after the access. A port outside the range or a
/// size other than 1, 2 or 4 is answered like an empty bus (all ones, the
/// write dropped); an unknown op only reports the line. `FLUSH` is the
/// caller's business (it owns the device's output): here it is a `POLL`.
pub fn serve<D: PortDevice>(
    device: &mut D,
    base: u16,
    len: u16,
    request: &PortMessage,
    irq_line: impl FnOnce(&D) -> bool,
) -> PortMessage {
    let mut reply = PortMessage {
        op: request.op,
        port: request.port,
        size: request.size,
        irq_level: 0,
        value: 0,
        stop: 0,
    };
    let size = match request.size {
        1 => Some(IoSize::Byte),
        2 => Some(IoSize::Word),
        4 => Some(IoSize::Dword),
        _ => None,
    };
    let offset = request.port.wrapping_sub(base);
    let access = size.filter(|_| request.port >= base && offset < len);
    match (request.op, access) {
        (op::READ, Some(size)) => reply.value = device.read(offset, size) & size.mask(),
        (op::READ, None) => reply.value = size.map_or(u32::MAX, IoSize::mask),
        (op::WRITE, Some(size)) => {
            if let WriteOutcome::Stop { status } =
                device.write(offset, size, request.value & size.mask())
            {
                reply.stop = 0x100 | u32::from(status);
            }
        }
        (op::POLL | op::FLUSH, _) => {
            let _ = device.poll();
        }
        _ => {}
    }
    reply.irq_level = u8::from(irq_line(device));
    reply
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::board::Board;
    use crate::devices::debug_exit::{self, DebugExit};
    use crate::devices::uart16550::{self, reg, Uart16550};
    use crate::router::Router;
    use std::vec::Vec;

    /// A channel whose server is a UART in the same process: what the
    /// uart-server does, without the stub in between.
    struct Loopback {
        uart: Uart16550<'static, Vec<u8>>,
        seen: Vec<PortMessage>,
        broken: bool,
    }

    impl Loopback {
        fn new() -> Self {
            Self {
                uart: Uart16550::new(Vec::new()),
                seen: Vec::new(),
                broken: false,
            }
        }
    }

    impl PortChannel for Loopback {
        fn call(&mut self, request: &PortMessage) -> Result<PortMessage, ErrorCode> {
            if self.broken {
                return Err(ErrorCode::NotReady);
            }
            self.seen.push(*request);
            Ok(serve(
                &mut self.uart,
                uart16550::COM1_BASE,
                uart16550::LEN,
                request,
                |u| u.irq_line(),
            ))
        }
    }

    #[test]
    fn accesses_become_messages_with_whole_ports() {
        let mut ch = Loopback::new();
        {
            let mut p = RemotePort::new(&mut ch, uart16550::COM1_BASE);
            let mut r = Router::new();
            r.register(uart16550::COM1_BASE, uart16550::LEN, &mut p)
                .unwrap();
            r.write(0x3fb, IoSize::Byte, 0x03);
            assert_eq!(r.read(0x3fb, IoSize::Byte), 0x03);
            assert_eq!(r.read(0x3fd, IoSize::Byte), 0x60, "LSR: THR empty");
            for &b in b"hi\n" {
                r.write(0x3f8, IoSize::Byte, u32::from(b));
            }
            r.poll();
        }
        assert_eq!(ch.uart.sink(), b"hi\n");
        let first = ch.seen[0];
        assert_eq!(
            (first.op, first.port, first.size, first.value),
            (op::WRITE, 0x3fb, 1, 3)
        );
        assert_eq!(ch.seen[1].op, op::READ);
        assert_eq!(ch.seen.last().unwrap().op, op::POLL);
        assert_eq!(ch.seen.len(), 7);
    }

    #[test]
    fn the_reply_drives_the_irq_line() {
        let board = Board::new();
        let mut ch = Loopback::new();
        let mut p = RemotePort::new(&mut ch, uart16550::COM1_BASE).with_irq(board.irq.pin(4));
        // OUT2 and ETBEI: THR empty raises the line at once.
        p.write(reg::MCR, IoSize::Byte, 0x08);
        assert!(!board.irq.pin(4).is_high());
        p.write(reg::IER, IoSize::Byte, 0x02);
        assert!(board.irq.pin(4).is_high());
        // Reading IIR (THR empty as the source) clears it.
        assert_eq!(p.read(reg::IIR_FCR, IoSize::Byte), 0x02);
        assert!(!board.irq.pin(4).is_high());
        assert_eq!(p.calls(), 3);
        assert_eq!(p.failures(), 0);
    }

    #[test]
    fn wide_accesses_are_forwarded_whole_and_masked() {
        let mut ch = Loopback::new();
        let mut p = RemotePort::new(&mut ch, uart16550::COM1_BASE);
        p.write(reg::SCR, IoSize::Byte, 0x5a);
        // LSR, MSR, SCR and a byte past the registers.
        assert_eq!(p.read(reg::LSR, IoSize::Dword), 0xff5a_b060);
        assert_eq!(ch.seen[1].size, 4);
    }

    #[test]
    fn a_failed_call_reads_an_empty_bus_and_keeps_the_line() {
        let board = Board::new();
        board.irq.pin(4).set_level(true);
        let mut ch = Loopback::new();
        ch.broken = true;
        let mut p = RemotePort::new(&mut ch, uart16550::COM1_BASE).with_irq(board.irq.pin(4));
        assert_eq!(p.read(reg::LSR, IoSize::Byte), 0xff);
        assert_eq!(p.read(reg::LSR, IoSize::Word), 0xffff);
        assert_eq!(p.write(0, IoSize::Byte, 1), WriteOutcome::Continue);
        assert_eq!(p.poll(), None);
        assert_eq!(p.failures(), 4);
        assert_eq!(p.last_error(), Some(ErrorCode::NotReady));
        assert!(board.irq.pin(4).is_high());
    }

    #[test]
    fn polls_wait_for_the_gap_since_the_last_poll() {
        let clock = std::cell::Cell::new(1000u64);
        let now = || clock.get();
        let mut ch = Loopback::new();
        {
            let mut p = RemotePort::new(&mut ch, uart16550::COM1_BASE).with_poll_gap(&now, 10);
            p.poll();
            p.poll();
            clock.set(1009);
            p.poll();
            clock.set(1010);
            p.poll();
            clock.set(1019);
            // An access does not stand in for a poll, nor delay the next.
            p.read(reg::LSR, IoSize::Byte);
            p.poll();
            clock.set(1020);
            p.poll();
            assert_eq!((p.calls(), p.polls_skipped()), (4, 3));
        }
        let ops: Vec<u32> = ch.seen.iter().map(|m| m.op).collect();
        assert_eq!(ops, [op::POLL, op::POLL, op::READ, op::POLL]);
        assert_eq!(ch.seen.len(), 4);
    }

    #[test]
    fn a_stop_in_the_reply_ends_the_vm() {
        struct DebugExitServer(DebugExit);
        impl PortChannel for DebugExitServer {
            fn call(&mut self, r: &PortMessage) -> Result<PortMessage, ErrorCode> {
                Ok(serve(&mut self.0, debug_exit::PORT, 1, r, |_| false))
            }
        }
        let mut p = RemotePort::new(DebugExitServer(DebugExit::new()), debug_exit::PORT);
        assert_eq!(
            p.write(0, IoSize::Byte, 3),
            DebugExit::new().write(0, IoSize::Byte, 3)
        );
        assert!(matches!(
            p.write(0, IoSize::Byte, 3),
            WriteOutcome::Stop { .. }
        ));
    }

    #[test]
    fn the_server_answers_bad_requests_like_an_empty_bus() {
        let mut u: Uart16550<'static, Vec<u8>> = Uart16550::new(Vec::new());
        let msg = |op, port, size, value| PortMessage {
            op,
            port,
            size,
            irq_level: 0,
            value,
            stop: 0,
        };
        let mut ask = |m: PortMessage| serve(&mut u, 0x3f8, 8, &m, |u| u.irq_line());
        assert_eq!(
            ask(msg(op::READ, 0x400, 1, 0)).value,
            0xff,
            "past the range"
        );
        assert_eq!(ask(msg(op::READ, 0x3f7, 2, 0)).value, 0xffff, "before it");
        assert_eq!(ask(msg(op::READ, 0x3fd, 3, 0)).value, u32::MAX, "bad size");
        assert_eq!(ask(msg(op::WRITE, 0x3f8, 3, 0x41)).stop, 0);
        assert_eq!(ask(msg(99, 0x3f8, 1, 0x41)).irq_level, 0);
        assert_eq!(ask(msg(op::WRITE, 0x400, 1, 0x41)).stop, 0);
        assert!(u.sink().is_empty(), "nothing reached the transmitter");
        let r = serve(&mut u, 0x3f8, 8, &msg(op::READ, 0x3fd, 1, 0), |u| {
            u.irq_line()
        });
        assert_eq!((r.value, r.port, r.size), (0x60, 0x3fd, 1));
    }
}
