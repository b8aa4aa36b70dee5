//! The 8254 programmable interval timer, with the PC's system control port
//! B (port 0x61) that gates channel 2 and reads its output back.
//!
//! The three counters run at 1.193182 MHz of virtual time
//! ([`crate::board::VirtualClock`]). Channel 0's output drives IRQ 0:
//! every rising edge is sent to the PIC as a pulse. Channel 2's gate is
//! port 0x61 bit 0 and its output is port 0x61 bit 5 (how Linux and
//! BIOSes calibrate the TSC); channel 1 (DRAM refresh on old PCs) counts
//! but drives nothing.
//!
//! Modelled from the Intel 82C54 datasheet: modes 0-5 (6 and 7 alias 2 and
//! 3), binary and BCD counting, LSB/MSB/LSB-then-MSB access with its flip-
//! flops, the counter latch command, the read-back command (count and
//! status, with OUT and NULL COUNT), gate behaviour (modes 0 and 4 pause
//! while the gate is low; modes 1, 2, 3 and 5 restart on its rising edge;
//! modes 2 and 3 hold OUT high while it is low).
//!
//! Simplifications: a count takes effect at once (the datasheet loads it
//! on the next clock, and modes 2 and 3 at the end of the current period),
//! so the counter reads N - d after d clocks; NULL COUNT clears when the
//! count is written completely.
//!
//! Ports, as offsets from 0x40 (see [`RANGES`]): 0-2 the counters, 3 the
//! control word, 0x21 port B (0x61).

use super::{read_bytes, IoSize, PortDevice, WriteOutcome};
use crate::board::{IrqPin, Nanos, VirtualClock, SECOND};

/// Input clock of every counter, in Hz.
pub const PIT_HZ: u64 = 1_193_182;
/// The port ranges: the 8254 and port B. Offsets count from 0x40.
pub const RANGES: [(u16, u16); 2] = [(0x40, 4), (0x61, 1)];
/// Offset of the control word register.
pub const CONTROL: u16 = 3;
/// Offset of port B (0x61).
pub const PORT_B: u16 = 0x61 - 0x40;

/// Port B bits (IBM PC/AT technical reference; Intel PCH datasheets, NMI
/// status and control register).
pub mod port_b {
    /// Channel 2 gate (read-write).
    pub const GATE2: u8 = 1 << 0;
    /// Speaker data enable (read-write).
    pub const SPEAKER: u8 = 1 << 1;
    /// The bits the guest may write (with parity and channel check enable).
    pub const WRITABLE: u8 = 0x0f;
    /// Refresh cycle toggle (read-only): flips every 15.085 microseconds.
    pub const REFRESH: u8 = 1 << 4;
    /// Channel 2 output (read-only).
    pub const OUT2: u8 = 1 << 5;
}

/// Nanoseconds per refresh toggle of port B bit 4.
const REFRESH_NS: Nanos = 15_085;

/// PIT clocks in `ns` nanoseconds (rounded down).
fn clocks(ns: Nanos) -> u64 {
    (u128::from(ns) * u128::from(PIT_HZ) / u128::from(SECOND)) as u64
}

/// Nanoseconds until `clocks` PIT clocks have elapsed (rounded up).
fn nanos(clocks: u64) -> Nanos {
    let ns = (u128::from(clocks) * u128::from(SECOND)).div_ceil(u128::from(PIT_HZ));
    u64::try_from(ns).unwrap_or(u64::MAX)
}

fn to_bcd(v: u32) -> u16 {
    let v = v % 10_000;
    (((v / 1000) << 12) | ((v / 100 % 10) << 8) | ((v / 10 % 10) << 4) | (v % 10)) as u16
}

fn from_bcd(v: u16) -> u32 {
    // Digits above 9 count as 9 (the chip's behaviour with them is undefined).
    (0..4).rev().fold(0, |acc, i| {
        acc * 10 + u32::from((v >> (4 * i)) & 0xf).min(9)
    })
}

/// One counter.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Counter {
    /// Mode 0-5.
    mode: u8,
    /// Read/write access: 1 LSB, 2 MSB, 3 LSB then MSB.
    access: u8,
    bcd: bool,
    /// The count in use: 1..=65536 (binary) or 1..=10000 (BCD).
    reload: u32,
    /// When counting started; `None` while not counting.
    start: Option<Nanos>,
    /// Clocks counted when the gate paused a mode 0 or 4 count.
    paused_at: Option<u64>,
    /// The next write of an LSB-then-MSB count is the MSB.
    write_msb_next: bool,
    /// The LSB written first.
    lsb: u8,
    /// The next read of an LSB-then-MSB count returns the MSB.
    read_msb_next: bool,
    /// A latched count and whether its MSB is read next.
    latched_count: Option<(u16, bool)>,
    /// A latched status byte.
    latched_status: Option<u8>,
    gate: bool,
    /// A new count was written but is not in use yet.
    null_count: bool,
    /// OUT while not counting: low after a mode 0 control word, else high.
    idle_out: bool,
    /// Rising edges of OUT since `start` already reported.
    edges_seen: u64,
}

impl Counter {
    fn new(gate: bool) -> Self {
        Self {
            mode: 0,
            access: 3,
            bcd: false,
            reload: 0x1_0000,
            start: None,
            paused_at: None,
            write_msb_next: false,
            lsb: 0,
            read_msb_next: false,
            latched_count: None,
            latched_status: None,
            gate,
            null_count: true,
            idle_out: false,
            edges_seen: 0,
        }
    }

    fn modulus(&self) -> u32 {
        if self.bcd {
            10_000
        } else {
            0x1_0000
        }
    }

    /// The count for periodic arithmetic: modes 2 and 3 need at least 2
    /// (a count of 1 is illegal in those modes).
    fn period(&self) -> u64 {
        let n = u64::from(self.reload);
        if matches!(self.mode, 2 | 3) {
            n.max(2)
        } else {
            n
        }
    }

    /// Clocks counted at `now`, when counting.
    fn elapsed(&self, now: Nanos) -> Option<u64> {
        if let Some(d) = self.paused_at {
            return Some(d);
        }
        self.start.map(|s| clocks(now.saturating_sub(s)))
    }

    fn control(&mut self, access: u8, mode: u8, bcd: bool) {
        *self = Self {
            mode: if mode >= 6 { mode - 4 } else { mode },
            access,
            bcd,
            idle_out: mode != 0,
            ..Self::new(self.gate)
        };
    }

    fn count_at(&self, now: Nanos) -> u32 {
        let Some(d) = self.elapsed(now) else {
            return self.reload % self.modulus();
        };
        let n = self.period();
        let m = u64::from(self.modulus());
        let c = match self.mode {
            2 => n - d % n,
            3 => n - (2 * d) % n,
            _ => (n + m - d % m) % m,
        };
        c as u32 % self.modulus()
    }

    fn out_at(&self, now: Nanos) -> bool {
        let Some(d) = self.elapsed(now) else {
            return self.idle_out;
        };
        let n = self.period();
        match self.mode {
            0 | 1 => d >= n,
            2 => d % n != n - 1,
            3 => d % n < n.div_ceil(2),
            _ => d != n,
        }
    }

    /// Rising edges of OUT after `d` clocks of counting.
    fn edges_after(&self, d: u64) -> u64 {
        let n = self.period();
        match self.mode {
            2 | 3 => d / n,
            0 | 1 => u64::from(d >= n),
            _ => u64::from(d > n),
        }
    }

    /// The clock count at which rising edge number `k` (from 1) happens.
    fn edge_clock(&self, k: u64) -> Option<u64> {
        let n = self.period();
        match (self.mode, k) {
            (2 | 3, k) => Some(k.saturating_mul(n)),
            (0 | 1, 1) => Some(n),
            (4 | 5, 1) => Some(n + 1),
            _ => None,
        }
    }

    /// When a running one-shot count (modes 0, 1, 4, 5) raises OUT; `None`
    /// for periodic modes or while not counting.
    fn one_shot_end(&self) -> Option<Nanos> {
        let start = self.start.filter(|_| self.paused_at.is_none())?;
        if matches!(self.mode, 2 | 3) {
            return None;
        }
        self.edge_clock(1).map(|k| start.saturating_add(nanos(k)))
    }

    fn status(&self, now: Nanos) -> u8 {
        u8::from(self.out_at(now)) << 7
            | u8::from(self.null_count) << 6
            | (self.access & 3) << 4
            | (self.mode & 7) << 1
            | u8::from(self.bcd)
    }

    fn latch_count(&mut self, now: Nanos) {
        if self.latched_count.is_none() {
            let c = self.count_at(now);
            let c = if self.bcd { to_bcd(c) } else { c as u16 };
            self.latched_count = Some((c, false));
        }
    }

    fn start_counting(&mut self, now: Nanos) {
        self.null_count = false;
        self.edges_seen = 0;
        self.paused_at = None;
        // Modes 1 and 5 wait for a rising gate edge; 2 and 3 for the gate.
        self.start = if matches!(self.mode, 1 | 5) || (!self.gate && matches!(self.mode, 2 | 3)) {
            None
        } else {
            if !self.gate {
                self.paused_at = Some(0);
            }
            Some(now)
        };
    }

    fn write_count(&mut self, v: u8, now: Nanos) {
        let raw = match self.access {
            1 => u16::from(v),
            2 => u16::from(v) << 8,
            _ if !self.write_msb_next => {
                self.lsb = v;
                self.write_msb_next = true;
                if self.mode == 0 {
                    // Writing the first byte stops a mode 0 count; OUT low.
                    self.start = None;
                    self.paused_at = None;
                    self.idle_out = false;
                }
                self.null_count = true;
                return;
            }
            _ => {
                self.write_msb_next = false;
                u16::from_le_bytes([self.lsb, v])
            }
        };
        let value = if self.bcd {
            from_bcd(raw)
        } else {
            u32::from(raw)
        };
        self.reload = if value == 0 { self.modulus() } else { value };
        self.start_counting(now);
    }

    fn read(&mut self, now: Nanos) -> u8 {
        if let Some(s) = self.latched_status.take() {
            return s;
        }
        if let Some((c, msb_next)) = self.latched_count {
            let [lo, hi] = c.to_le_bytes();
            return match self.access {
                1 => {
                    self.latched_count = None;
                    lo
                }
                2 => {
                    self.latched_count = None;
                    hi
                }
                _ if !msb_next => {
                    self.latched_count = Some((c, true));
                    lo
                }
                _ => {
                    self.latched_count = None;
                    hi
                }
            };
        }
        let c = self.count_at(now);
        let [lo, hi] = if self.bcd { to_bcd(c) } else { c as u16 }.to_le_bytes();
        match self.access {
            1 => lo,
            2 => hi,
            _ => {
                self.read_msb_next = !self.read_msb_next;
                if self.read_msb_next {
                    lo
                } else {
                    hi
                }
            }
        }
    }

    fn set_gate(&mut self, high: bool, now: Nanos) {
        let rising = high && !self.gate;
        let falling = !high && self.gate;
        self.gate = high;
        match self.mode {
            0 | 4 => {
                if falling {
                    self.paused_at = self.elapsed(now);
                } else if rising {
                    if let Some(d) = self.paused_at.take() {
                        self.start = Some(now.saturating_sub(nanos(d)));
                    }
                }
            }
            1 | 5 if rising && !self.null_count => {
                self.start = Some(now);
                self.edges_seen = 0;
            }
            2 | 3 => {
                if falling {
                    self.start = None;
                    self.idle_out = true;
                } else if rising && !self.null_count {
                    self.start = Some(now);
                    self.edges_seen = 0;
                }
            }
            _ => {}
        }
    }
}

/// The 8254 with port B.
pub struct Pit<'b> {
    clock: &'b VirtualClock,
    irq0: Option<IrqPin<'b>>,
    counters: [Counter; 3],
    port_b: u8,
    lost_ticks: u64,
}

impl<'b> Pit<'b> {
    /// A PIT counting `clock`'s time whose channel 0 pulses `irq0`.
    /// Channels 0 and 1 have their gates tied high; channel 2's is port B
    /// bit 0, low at reset. No counter counts until the guest programs it.
    pub fn new(clock: &'b VirtualClock, irq0: Option<IrqPin<'b>>) -> Self {
        Self {
            clock,
            irq0,
            counters: [Counter::new(true), Counter::new(true), Counter::new(false)],
            port_b: 0,
            lost_ticks: 0,
        }
    }

    /// Timer ticks (channel 0 rising edges) that came while the previous
    /// one was still unreported, and so merged with it.
    pub fn lost_ticks(&self) -> u64 {
        self.lost_ticks
    }

    /// Channel `ch`'s current count (0-2), for tests and reports.
    pub fn count(&self, ch: usize) -> Option<u32> {
        self.counters.get(ch).map(|c| c.count_at(self.clock.now()))
    }

    /// Channel `ch`'s output.
    pub fn out(&self, ch: usize) -> Option<bool> {
        self.counters.get(ch).map(|c| c.out_at(self.clock.now()))
    }

    fn control_word(&mut self, v: u8) {
        let now = self.clock.now();
        let sc = v >> 6;
        if sc == 3 {
            // Read-back: bit 5 clear latches counts, bit 4 clear latches status.
            for (i, c) in self.counters.iter_mut().enumerate() {
                if v & (2 << i) != 0 {
                    if v & 0x10 == 0 && c.latched_status.is_none() {
                        c.latched_status = Some(c.status(now));
                    }
                    if v & 0x20 == 0 {
                        c.latch_count(now);
                    }
                }
            }
            return;
        }
        let c = &mut self.counters[usize::from(sc)];
        let access = (v >> 4) & 3;
        if access == 0 {
            c.latch_count(now);
        } else {
            c.control(access, (v >> 1) & 7, v & 1 != 0);
        }
    }

    fn read_port_b(&self) -> u8 {
        let now = self.clock.now();
        let refresh = if (now / REFRESH_NS) & 1 != 0 {
            port_b::REFRESH
        } else {
            0
        };
        let out2 = if self.counters[2].out_at(now) {
            port_b::OUT2
        } else {
            0
        };
        (self.port_b & port_b::WRITABLE) | refresh | out2
    }

    /// Reads one register at `offset` (see the module docs).
    pub fn read_register(&mut self, offset: u16) -> u8 {
        let now = self.clock.now();
        match offset {
            0..=2 => self.counters[usize::from(offset)].read(now),
            PORT_B => self.read_port_b(),
            // The control word register cannot be read.
            _ => 0xff,
        }
    }

    /// Writes one register at `offset` (see the module docs).
    pub fn write_register(&mut self, offset: u16, v: u8) {
        let now = self.clock.now();
        match offset {
            0..=2 => self.counters[usize::from(offset)].write_count(v, now),
            CONTROL => self.control_word(v),
            PORT_B => {
                self.port_b = v & port_b::WRITABLE;
                self.counters[2].set_gate(v & port_b::GATE2 != 0, now);
            }
            _ => {}
        }
    }
}

impl PortDevice for Pit<'_> {
    /// Byte registers; a wider access reads consecutive ports.
    fn read(&mut self, offset: u16, size: IoSize) -> u32 {
        read_bytes(offset, size, |o| self.read_register(o))
    }

    fn write(&mut self, offset: u16, size: IoSize, value: u32) -> WriteOutcome {
        for i in 0..size.bytes() {
            if let Some(o) = offset.checked_add(u16::from(i)) {
                self.write_register(o, (value >> (8 * i)) as u8);
            }
        }
        WriteOutcome::Continue
    }

    /// Pulses IRQ 0 once if channel 0's output rose since the last poll
    /// (counting the extra edges as lost), and returns the next deadline:
    /// channel 0's next rising edge, or channel 2's one-shot end if that
    /// comes first.
    fn poll(&mut self) -> Option<Nanos> {
        let now = self.clock.now();
        // Channel 2's one-shot end is a deadline too: a guest that polls
        // OUT2 on port B (how Linux and the `timer` guest calibrate) must
        // see it rise at the count's end, not up to one exit later.
        let out2 = self.counters[2].one_shot_end().filter(|&t| t > now);
        let c = &mut self.counters[0];
        let (start, d) = match (c.start, c.paused_at) {
            (Some(s), None) => (s, clocks(now.saturating_sub(s))),
            _ => return out2,
        };
        let edges = c.edges_after(d);
        if edges > c.edges_seen {
            self.lost_ticks += edges - c.edges_seen - 1;
            c.edges_seen = edges;
            if let Some(p) = &self.irq0 {
                p.pulse();
            }
        }
        let tick = c
            .edge_clock(c.edges_seen + 1)
            .map(|k| start.saturating_add(nanos(k)));
        match (tick, out2) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::board::Board;
    use proptest::prelude::*;

    const TICK: Nanos = 838; // one PIT clock, rounded down

    fn program(p: &mut Pit<'_>, ch: u16, mode: u8, count: u16) {
        p.write_register(CONTROL, (ch as u8) << 6 | 0x30 | mode << 1);
        p.write_register(ch, count as u8);
        p.write_register(ch, (count >> 8) as u8);
    }

    fn read16(p: &mut Pit<'_>, ch: u16) -> u16 {
        let lo = p.read_register(ch);
        let hi = p.read_register(ch);
        u16::from_le_bytes([lo, hi])
    }

    #[test]
    fn clock_conversions_round_the_right_way() {
        assert_eq!(clocks(SECOND), PIT_HZ);
        assert_eq!(nanos(PIT_HZ), SECOND);
        for k in [1, 2, 1193, 65536, 1_000_000] {
            assert_eq!(clocks(nanos(k)), k, "edge {k} is reached at nanos(k)");
            assert!(clocks(nanos(k) - 1) < k);
        }
        assert_eq!(to_bcd(1234), 0x1234);
        assert_eq!(from_bcd(0x9999), 9999);
        assert_eq!(from_bcd(0x00af), 99, "non-decimal digits clamp to 9");
    }

    #[test]
    fn mode2_at_1khz_pulses_irq0_every_period() {
        let b = Board::new();
        let mut p = Pit::new(&b.clock, Some(b.irq.pin(0)));
        assert_eq!(p.poll(), None, "nothing counts before programming");
        program(&mut p, 0, 2, 1193);
        let first = p.poll().expect("a deadline");
        assert_eq!(first, nanos(1193));
        assert_eq!(b.irq.take_pulses(), 0);
        b.clock.advance_to(first - 1);
        assert_eq!(p.poll(), Some(first));
        assert_eq!(b.irq.take_pulses(), 0, "not yet");
        b.clock.advance_to(first);
        assert_eq!(p.poll(), Some(nanos(2 * 1193)));
        assert_eq!(b.irq.take_pulses(), 1);
        // 1000 periods later, one pulse, 999 lost.
        b.clock.advance_to(nanos(1001 * 1193));
        p.poll();
        assert_eq!(b.irq.take_pulses(), 1);
        assert_eq!(p.lost_ticks(), 999);
    }

    #[test]
    fn channel2_one_shot_end_is_a_deadline() {
        let b = Board::new();
        let mut p = Pit::new(&b.clock, None);
        program(&mut p, 2, 0, 59659);
        assert_eq!(p.poll(), None, "the gate is low: channel 2 waits");
        p.write_register(PORT_B, port_b::GATE2);
        let end = nanos(59659);
        assert_eq!(p.poll(), Some(end), "OUT2 rises at the count's end");
        b.clock.advance_to(end - 1);
        assert_eq!(p.read_register(PORT_B) & port_b::OUT2, 0);
        b.clock.advance_to(end);
        assert_ne!(p.read_register(PORT_B) & port_b::OUT2, 0);
        assert_eq!(p.poll(), None, "nothing more to wait for");
        // With channel 0 ticking too, the earlier of the two.
        program(&mut p, 0, 2, 1193);
        program(&mut p, 2, 0, 100);
        assert_eq!(p.poll(), Some(end + nanos(100)));
    }

    #[test]
    fn ticks_per_virtual_second_at_1khz() {
        let b = Board::new();
        let mut p = Pit::new(&b.clock, Some(b.irq.pin(0)));
        program(&mut p, 0, 2, 1193);
        let mut ticks = 0;
        // Follow the deadlines, as the exit handler does.
        while let Some(t) = p.poll() {
            if b.irq.take_pulses() & 1 != 0 {
                ticks += 1;
            }
            if t > SECOND {
                break;
            }
            b.clock.advance_to(t);
        }
        assert_eq!(ticks, 1000, "1193182 / 1193 = 1000.15 Hz");
        assert_eq!(p.lost_ticks(), 0);
    }

    #[test]
    fn mode2_counts_down_and_reloads() {
        let b = Board::new();
        let mut p = Pit::new(&b.clock, None);
        program(&mut p, 0, 2, 100);
        assert_eq!(read16(&mut p, 0), 100);
        b.clock.advance_to(nanos(30));
        assert_eq!(read16(&mut p, 0), 70);
        b.clock.advance_to(nanos(130));
        assert_eq!(read16(&mut p, 0), 70, "reloaded after 100 clocks");
        assert!(p.out(0).unwrap());
        b.clock.advance_to(nanos(199));
        assert!(!p.out(0).unwrap(), "low for the clock at count 1");
    }

    #[test]
    fn mode3_square_wave() {
        let b = Board::new();
        let mut p = Pit::new(&b.clock, Some(b.irq.pin(0)));
        program(&mut p, 0, 3, 10);
        assert!(p.out(0).unwrap());
        b.clock.advance_to(nanos(4));
        assert!(p.out(0).unwrap());
        assert_eq!(read16(&mut p, 0), 2, "counts down by two");
        b.clock.advance_to(nanos(5));
        assert!(!p.out(0).unwrap());
        b.clock.advance_to(nanos(10));
        assert!(p.out(0).unwrap());
        assert_eq!(p.poll(), Some(nanos(20)));
        assert_eq!(b.irq.take_pulses(), 1);
    }

    #[test]
    fn mode0_interrupts_once_on_terminal_count() {
        let b = Board::new();
        let mut p = Pit::new(&b.clock, Some(b.irq.pin(0)));
        p.write_register(CONTROL, 0x30);
        assert!(!p.out(0).unwrap(), "OUT low after a mode 0 control word");
        p.write_register(0, 0x10);
        assert_eq!(p.poll(), None, "half a count does not start counting");
        p.write_register(0, 0x00);
        assert_eq!(p.poll(), Some(nanos(16)));
        b.clock.advance_to(nanos(16));
        assert_eq!(p.poll(), None, "no second edge");
        assert_eq!(b.irq.take_pulses(), 1);
        assert!(p.out(0).unwrap());
        b.clock.advance_to(nanos(20));
        assert_eq!(read16(&mut p, 0), 0xfffc, "keeps counting past zero");
    }

    #[test]
    fn latch_command_freezes_the_read() {
        let b = Board::new();
        let mut p = Pit::new(&b.clock, None);
        program(&mut p, 0, 2, 1000);
        b.clock.advance_to(nanos(100));
        p.write_register(CONTROL, 0x00);
        b.clock.advance_to(nanos(300));
        p.write_register(CONTROL, 0x00); // ignored: already latched
        assert_eq!(read16(&mut p, 0), 900);
        assert_eq!(read16(&mut p, 0), 700, "live again after the latch is read");
    }

    #[test]
    fn lsb_only_and_msb_only_access() {
        let b = Board::new();
        let mut p = Pit::new(&b.clock, None);
        p.write_register(CONTROL, 0x14); // ch0, LSB only, mode 2
        p.write_register(0, 50);
        b.clock.advance_to(nanos(5));
        assert_eq!(p.read_register(0), 45);
        p.write_register(CONTROL, 0x24); // MSB only
        p.write_register(0, 2);
        assert_eq!(p.count(0), Some(512));
        assert_eq!(p.read_register(0), 2);
    }

    #[test]
    fn bcd_counting() {
        let b = Board::new();
        let mut p = Pit::new(&b.clock, None);
        p.write_register(CONTROL, 0x35); // mode 2, BCD
        p.write_register(0, 0x00);
        p.write_register(0, 0x10); // 1000
        b.clock.advance_to(nanos(1));
        assert_eq!(read16(&mut p, 0), 0x0999);
        p.write_register(CONTROL, 0x31); // mode 0, BCD, count 0 = 10000
        p.write_register(0, 0);
        p.write_register(0, 0);
        assert_eq!(p.count(0), Some(0));
        b.clock.advance_to(b.clock.now() + nanos(1));
        assert_eq!(read16(&mut p, 0), 0x9999);
    }

    #[test]
    fn read_back_latches_status_then_count() {
        let b = Board::new();
        let mut p = Pit::new(&b.clock, None);
        program(&mut p, 2, 0, 500);
        p.write_register(PORT_B, 1); // gate high
        b.clock.advance_to(nanos(20));
        p.write_register(CONTROL, 0xc8); // read-back ch2, count and status
        let status = p.read_register(2);
        assert_eq!(
            status, 0x30,
            "OUT low, count in use, LSB/MSB, mode 0, binary"
        );
        assert_eq!(read16(&mut p, 2), 480);
        p.write_register(CONTROL, 0xe8); // status only
        assert_eq!(p.read_register(2), 0x30);
        // A freshly programmed counter shows NULL COUNT.
        p.write_register(CONTROL, 0xb4);
        p.write_register(CONTROL, 0xe8);
        assert_eq!(p.read_register(2), 0x80 | 0x40 | 0x34);
    }

    #[test]
    fn linux_style_tsc_calibration_through_port_b() {
        // pit_hpet_ptimer_calibrate_cpu: gate high, speaker off, ch2 mode 0,
        // then poll port 0x61 bit 5.
        let b = Board::new();
        let mut p = Pit::new(&b.clock, None);
        let v = p.read_register(PORT_B);
        p.write_register(PORT_B, (v & !0x02) | 0x01);
        p.write_register(CONTROL, 0xb0);
        let latch = (PIT_HZ / 20) as u16; // 50 ms
        p.write_register(2, latch as u8);
        p.write_register(2, (latch >> 8) as u8);
        assert_eq!(p.read_register(PORT_B) & port_b::OUT2, 0);
        b.clock.advance_to(50_000_000 - 1_000);
        assert_eq!(p.read_register(PORT_B) & port_b::OUT2, 0);
        b.clock.advance_to(50_000_000 + 1_000);
        assert_eq!(p.read_register(PORT_B) & port_b::OUT2, port_b::OUT2);
        assert_eq!(p.read_register(PORT_B) & 0x0f, 0x01);
    }

    #[test]
    fn gate_low_pauses_mode0_and_restarts_mode2() {
        let b = Board::new();
        let mut p = Pit::new(&b.clock, None);
        p.write_register(PORT_B, 1);
        program(&mut p, 2, 0, 1000);
        b.clock.advance_to(nanos(100));
        p.write_register(PORT_B, 0);
        b.clock.advance_to(nanos(500));
        assert_eq!(p.count(2), Some(900), "paused");
        p.write_register(PORT_B, 1);
        b.clock.advance_to(nanos(600));
        assert!(p.count(2).unwrap().abs_diff(800) <= 1);
        program(&mut p, 2, 2, 100);
        b.clock.advance_to(nanos(650));
        p.write_register(PORT_B, 0);
        assert!(p.out(2).unwrap(), "mode 2 OUT high while the gate is low");
        b.clock.advance_to(nanos(700));
        p.write_register(PORT_B, 1);
        assert_eq!(p.count(2), Some(100), "restarted by the rising gate");
    }

    #[test]
    fn refresh_bit_toggles() {
        let b = Board::new();
        let mut p = Pit::new(&b.clock, None);
        let a = p.read_register(PORT_B) & port_b::REFRESH;
        b.clock.advance_to(REFRESH_NS);
        let c = p.read_register(PORT_B) & port_b::REFRESH;
        assert_ne!(a, c);
        let _ = TICK;
    }

    proptest! {
        #[test]
        fn nonsense_never_panics(ops in proptest::collection::vec((0u16..0x30, any::<u8>(), 0u64..100_000_000), 0..200)) {
            let b = Board::new();
            let mut p = Pit::new(&b.clock, Some(b.irq.pin(0)));
            for (off, v, dt) in ops {
                let off = [0, 1, 2, CONTROL, PORT_B][usize::from(off) % 5];
                if v & 1 == 0 { p.write_register(off, v); } else { p.read_register(off); }
                b.clock.advance_to(b.clock.now() + dt);
                if let Some(t) = p.poll() {
                    prop_assert!(t > b.clock.now(), "the next deadline is in the future");
                }
            }
        }
    }
}
