//! The CMOS real-time clock (Motorola MC146818A and its PC chipset
//! successors) at ports 0x70 (index, with the NMI mask in bit 7) and 0x71
//! (data).
//!
//! The time follows the virtual clock from a starting wall-clock time the
//! caller gives ([`Rtc::new`]): seconds, minutes, hours (12- or 24-hour),
//! day of week, date, month, year and the century byte (0x32), in BCD or
//! binary as register B's DM bit says. Register A's UIP bit is set during
//! the last 244 microseconds before each update, so a guest that waits for
//! it to clear and then reads reads a consistent time. Register B's SET
//! bit stops updates while the guest writes a new time, which then counts
//! on. Register C's flags (update-ended, alarm, periodic) are set as time
//! passes and raise IRQ 8 when register B enables them; reading register C
//! clears them. Register D reports valid RAM and time.
//!
//! The rest of the 128 bytes is battery-backed RAM; [`Rtc::set_memory_size`]
//! fills in the PC/AT memory-size bytes that some guests read.
//!
//! Not modelled: the divider chain's reset (register A's DV bits are
//! stored only), daylight-saving adjustment (DSE), the square-wave output.

use super::{read_bytes, IoSize, PortDevice, WriteOutcome};
use crate::board::{IrqPin, Nanos, VirtualClock, SECOND};

/// The ports: index and data. Offsets count from 0x70.
pub const BASE: u16 = 0x70;
/// Ports decoded.
pub const LEN: u16 = 2;

/// Register numbers.
pub mod reg {
    /// Seconds.
    pub const SECONDS: u8 = 0x00;
    /// Seconds alarm.
    pub const SECONDS_ALARM: u8 = 0x01;
    /// Minutes.
    pub const MINUTES: u8 = 0x02;
    /// Minutes alarm.
    pub const MINUTES_ALARM: u8 = 0x03;
    /// Hours.
    pub const HOURS: u8 = 0x04;
    /// Hours alarm.
    pub const HOURS_ALARM: u8 = 0x05;
    /// Day of the week, 1 = Sunday.
    pub const DAY_OF_WEEK: u8 = 0x06;
    /// Day of the month.
    pub const DAY_OF_MONTH: u8 = 0x07;
    /// Month.
    pub const MONTH: u8 = 0x08;
    /// Year in the century.
    pub const YEAR: u8 = 0x09;
    /// Status register A: UIP, divider, rate select.
    pub const A: u8 = 0x0a;
    /// Status register B: SET, PIE, AIE, UIE, SQWE, DM, 24/12, DSE.
    pub const B: u8 = 0x0b;
    /// Status register C: IRQF, PF, AF, UF (read-only, cleared by reading).
    pub const C: u8 = 0x0c;
    /// Status register D: VRT.
    pub const D: u8 = 0x0d;
    /// Century (IBM PC convention, the ACPI FADT's default).
    pub const CENTURY: u8 = 0x32;
}

/// Register A bits.
pub mod a {
    /// Update in progress.
    pub const UIP: u8 = 1 << 7;
}

/// Register B bits.
pub mod b {
    /// Stop updates while the time is set.
    pub const SET: u8 = 1 << 7;
    /// Periodic interrupt enable.
    pub const PIE: u8 = 1 << 6;
    /// Alarm interrupt enable.
    pub const AIE: u8 = 1 << 5;
    /// Update-ended interrupt enable.
    pub const UIE: u8 = 1 << 4;
    /// Data mode: binary (else BCD).
    pub const DM_BINARY: u8 = 1 << 2;
    /// 24-hour mode (else 12-hour with bit 7 of the hour = PM).
    pub const HOURS_24: u8 = 1 << 1;
}

/// Register C bits.
pub mod c {
    /// An enabled flag is set: the IRQ line is asserted.
    pub const IRQF: u8 = 1 << 7;
    /// Periodic interrupt flag.
    pub const PF: u8 = 1 << 6;
    /// Alarm flag.
    pub const AF: u8 = 1 << 5;
    /// Update-ended flag.
    pub const UF: u8 = 1 << 4;
}

/// UIP is set this long before each update.
const UIP_NS: Nanos = 244_000;

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01 (H. Hinnant's `civil_from_days`).
#[allow(
    clippy::cast_sign_loss,
    reason = "the algorithm keeps the day in 1..=31 and the month in 1..=12"
)]
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// A broken-down time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Tm {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    /// 0 = Sunday.
    weekday: u32,
}

fn tm_from_unix(secs: i64) -> Tm {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400) as u32;
    let (year, month, day) = civil_from_days(days);
    Tm {
        year,
        month,
        day,
        hour: rem / 3600,
        minute: rem / 60 % 60,
        second: rem % 60,
        weekday: (days + 4).rem_euclid(7) as u32,
    }
}

/// The RTC.
pub struct Rtc<'b> {
    clock: &'b VirtualClock,
    irq8: Option<IrqPin<'b>>,
    index: u8,
    nmi_masked: bool,
    ram: [u8; 128],
    /// Wall-clock nanoseconds since the Unix epoch at virtual time 0.
    wall_at_zero: i128,
    /// Virtual time up to which flags were brought.
    flags_at: Nanos,
    /// No second or periodic boundary lies before this virtual time (0:
    /// not known), so a catch-up before it sets no flag: it skips the
    /// 128-bit divisions that find the boundaries (four each poll).
    quiet_until: Nanos,
    /// Computes every catch-up (tests compare the skip with it).
    catch_up_always: bool,
}

impl<'b> Rtc<'b> {
    /// An RTC counting `clock`'s time from `unix_seconds` (the wall-clock
    /// time at virtual time 0), raising `irq8`. BCD, 24-hour mode,
    /// 1024 Hz periodic rate, no interrupts enabled.
    pub fn new(clock: &'b VirtualClock, irq8: Option<IrqPin<'b>>, unix_seconds: i64) -> Self {
        let mut ram = [0u8; 128];
        ram[usize::from(reg::A)] = 0x26;
        ram[usize::from(reg::B)] = b::HOURS_24;
        ram[usize::from(reg::D)] = 0x80;
        // Equipment byte: math coprocessor, VGA.
        ram[0x14] = 0x02;
        Self {
            clock,
            irq8,
            index: 0,
            nmi_masked: false,
            ram,
            wall_at_zero: i128::from(unix_seconds) * i128::from(SECOND) - i128::from(clock.now()),
            flags_at: clock.now(),
            quiet_until: 0,
            catch_up_always: false,
        }
    }

    /// Fills in the memory-size bytes of the PC/AT CMOS map for a guest with
    /// `ram_bytes` of RAM from address 0: base memory (0x15-0x16, 640 KiB),
    /// extended memory above 1 MiB up to 64 MiB in KiB (0x17-0x18 and
    /// 0x30-0x31), and memory above 16 MiB in 64 KiB units (0x34-0x35).
    pub fn set_memory_size(&mut self, ram_bytes: u64) {
        let base_kib = (ram_bytes >> 10).min(640) as u16;
        let ext_kib = ((ram_bytes.saturating_sub(1 << 20)) >> 10).min(0xfc00) as u16;
        let above_16m = ((ram_bytes.saturating_sub(16 << 20)) >> 16).min(0xffff) as u16;
        for (at, v) in [
            (0x15, base_kib),
            (0x17, ext_kib),
            (0x30, ext_kib),
            (0x34, above_16m),
        ] {
            self.ram[at..at + 2].copy_from_slice(&v.to_le_bytes());
        }
    }

    /// Whether the guest masked NMIs (port 0x70 bit 7).
    pub fn nmi_masked(&self) -> bool {
        self.nmi_masked
    }

    fn b(&self) -> u8 {
        self.ram[usize::from(reg::B)]
    }

    fn wall_ns(&self) -> i128 {
        self.wall_at_zero + i128::from(self.clock.now())
    }

    fn encode(&self, v: u32) -> u8 {
        if self.b() & b::DM_BINARY != 0 {
            v as u8
        } else {
            (((v / 10 % 10) << 4) | (v % 10)) as u8
        }
    }

    fn decode(&self, v: u8) -> u32 {
        if self.b() & b::DM_BINARY != 0 {
            u32::from(v)
        } else {
            u32::from(v >> 4).min(9) * 10 + u32::from(v & 0xf).min(9)
        }
    }

    fn encode_hour(&self, h: u32) -> u8 {
        if self.b() & b::HOURS_24 != 0 {
            self.encode(h)
        } else {
            let h12 = if h.is_multiple_of(12) { 12 } else { h % 12 };
            self.encode(h12) | if h >= 12 { 0x80 } else { 0 }
        }
    }

    fn decode_hour(&self, v: u8) -> u32 {
        if self.b() & b::HOURS_24 != 0 {
            self.decode(v) % 24
        } else {
            let h = self.decode(v & 0x7f) % 12;
            h + if v & 0x80 != 0 { 12 } else { 0 }
        }
    }

    /// The time registers for wall time `ns`.
    fn time_registers(&self, ns: i128) -> [(u8, u8); 8] {
        let t = tm_from_unix(ns.div_euclid(i128::from(SECOND)) as i64);
        [
            (reg::SECONDS, self.encode(t.second)),
            (reg::MINUTES, self.encode(t.minute)),
            (reg::HOURS, self.encode_hour(t.hour)),
            (reg::DAY_OF_WEEK, self.encode(t.weekday + 1)),
            (reg::DAY_OF_MONTH, self.encode(t.day)),
            (reg::MONTH, self.encode(t.month)),
            // Not negative: the guest sets centuries 0..=255 at most.
            (
                reg::YEAR,
                self.encode(u32::try_from(t.year.rem_euclid(100)).unwrap_or(0)),
            ),
            (
                reg::CENTURY,
                self.encode(u32::try_from(t.year.div_euclid(100)).unwrap_or(0)),
            ),
        ]
    }

    /// Copies the current time into the register file.
    fn freeze_time(&mut self) {
        for (r, v) in self.time_registers(self.wall_ns()) {
            self.ram[usize::from(r)] = v;
        }
    }

    /// Makes the time in the register file the current time, keeping the
    /// fraction of the second.
    fn thaw_time(&mut self) {
        let r = |i: u8| self.ram[usize::from(i)];
        let year = i64::from(self.decode(r(reg::CENTURY))) * 100
            + i64::from(self.decode(r(reg::YEAR)) % 100);
        let month = self.decode(r(reg::MONTH)).clamp(1, 12);
        let day = self.decode(r(reg::DAY_OF_MONTH)).clamp(1, 31);
        let secs = days_from_civil(year, month, day) * 86_400
            + i64::from(self.decode_hour(r(reg::HOURS))) * 3600
            + i64::from(self.decode(r(reg::MINUTES)) % 60) * 60
            + i64::from(self.decode(r(reg::SECONDS)) % 60);
        let frac = self.wall_ns().rem_euclid(i128::from(SECOND));
        self.wall_at_zero =
            i128::from(secs) * i128::from(SECOND) + frac - i128::from(self.clock.now());
    }

    /// The periodic interrupt's period, from register A's rate select.
    fn periodic_ns(&self) -> Option<Nanos> {
        let rs = self.ram[usize::from(reg::A)] & 0x0f;
        let hz: u64 = match rs {
            0 => return None,
            1 | 2 => 32_768 >> (rs + 6),
            _ => 32_768 >> (rs - 1),
        };
        Some(SECOND / hz)
    }

    fn alarm_matches(&self, ns: i128) -> bool {
        let now = self.time_registers(ns);
        [
            (reg::SECONDS_ALARM, now[0].1),
            (reg::MINUTES_ALARM, now[1].1),
            (reg::HOURS_ALARM, now[2].1),
        ]
        .iter()
        .all(|&(alarm, cur)| {
            let a = self.ram[usize::from(alarm)];
            // 0xc0-0xff is "don't care".
            a >= 0xc0 || a == cur
        })
    }

    /// Sets the flags for the time between the last call and now.
    fn catch_up(&mut self) {
        let now = self.clock.now();
        if now <= self.flags_at {
            return;
        }
        if now < self.quiet_until && !self.catch_up_always {
            self.flags_at = now;
            self.update_irq();
            return;
        }
        let (from, to) = (
            self.wall_at_zero + i128::from(self.flags_at),
            self.wall_at_zero + i128::from(now),
        );
        let mut flags = 0;
        let sec = i128::from(SECOND);
        if self.b() & b::SET == 0 && to.div_euclid(sec) > from.div_euclid(sec) {
            flags |= c::UF;
            if self.alarm_matches(to) {
                flags |= c::AF;
            }
        }
        if let Some(p) = self.periodic_ns() {
            let p = i128::from(p);
            if to.div_euclid(p) > from.div_euclid(p) {
                flags |= c::PF;
            }
        }
        self.flags_at = now;
        self.quiet_until = self.next_boundary(to);
        self.ram[usize::from(reg::C)] |= flags;
        self.update_irq();
    }

    /// The virtual time of the first second or periodic boundary after
    /// wall-clock time `wall` (ns): the next time a catch-up can set a
    /// flag, as the register values stand (a write forgets it).
    fn next_boundary(&self, wall: i128) -> Nanos {
        let after = |p: i128| (wall.div_euclid(p) + 1) * p;
        let second = (self.b() & b::SET == 0).then(|| after(i128::from(SECOND)));
        let period = self.periodic_ns().map(|p| after(i128::from(p)));
        let next = match (second, period) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => match a.or(b) {
                Some(n) => n,
                None => return Nanos::MAX,
            },
        };
        // Before virtual time 0 (a clock set back): never skip.
        Nanos::try_from(next - self.wall_at_zero).unwrap_or(if next < self.wall_at_zero {
            0
        } else {
            Nanos::MAX
        })
    }

    fn update_irq(&mut self) {
        let enabled = self.b() & (b::PIE | b::AIE | b::UIE);
        let reg_c = &mut self.ram[usize::from(reg::C)];
        // PIE, AIE and UIE sit at the bit positions of PF, AF and UF plus 0.
        if *reg_c & enabled & (c::PF | c::AF | c::UF) != 0 {
            *reg_c |= c::IRQF;
        }
        if let Some(p) = &self.irq8 {
            p.set_level(*reg_c & c::IRQF != 0);
        }
    }

    /// Reads the register at the current index.
    pub fn read_data(&mut self) -> u8 {
        self.catch_up();
        let i = self.index;
        match i {
            reg::SECONDS
            | reg::MINUTES
            | reg::HOURS
            | reg::DAY_OF_WEEK
            | reg::DAY_OF_MONTH
            | reg::MONTH
            | reg::YEAR
            | reg::CENTURY
                if self.b() & b::SET == 0 =>
            {
                // During the UIP window the registers still hold the old second.
                let regs = self.time_registers(self.wall_ns());
                regs.iter().find(|(r, _)| *r == i).map_or(0, |(_, v)| *v)
            }
            reg::A => {
                let frac = self.wall_ns().rem_euclid(i128::from(SECOND));
                let uip = self.b() & b::SET == 0 && frac >= i128::from(SECOND - UIP_NS);
                (self.ram[usize::from(reg::A)] & !a::UIP) | if uip { a::UIP } else { 0 }
            }
            reg::C => {
                let v = core::mem::take(&mut self.ram[usize::from(reg::C)]);
                self.update_irq();
                v
            }
            reg::D => 0x80,
            _ => self.ram[usize::from(i & 0x7f)],
        }
    }

    /// Writes the register at the current index.
    pub fn write_data(&mut self, v: u8) {
        self.catch_up();
        // The rate, SET or the time may change: the boundaries move.
        self.quiet_until = 0;
        let i = self.index;
        match i {
            reg::SECONDS
            | reg::MINUTES
            | reg::HOURS
            | reg::DAY_OF_WEEK
            | reg::DAY_OF_MONTH
            | reg::MONTH
            | reg::YEAR
            | reg::CENTURY => {
                let set = self.b() & b::SET != 0;
                if !set {
                    self.freeze_time();
                }
                self.ram[usize::from(i)] = v;
                if !set {
                    self.thaw_time();
                }
            }
            reg::A => self.ram[usize::from(reg::A)] = v & !a::UIP,
            reg::B => {
                let old = self.b();
                if v & b::SET != 0 && old & b::SET == 0 {
                    self.freeze_time();
                }
                // Registers keep their stored format; switching DM or 24/12
                // while stopped is the guest's business.
                self.ram[usize::from(reg::B)] = v;
                if v & b::SET == 0 && old & b::SET != 0 {
                    self.thaw_time();
                }
                self.update_irq();
            }
            reg::C | reg::D => {}
            _ => self.ram[usize::from(i & 0x7f)] = v,
        }
    }
}

impl PortDevice for Rtc<'_> {
    fn read(&mut self, offset: u16, size: IoSize) -> u32 {
        read_bytes(offset, size, |o| match o {
            // The index register cannot be read back.
            0 => 0xff,
            1 => self.read_data(),
            _ => 0xff,
        })
    }

    fn write(&mut self, offset: u16, size: IoSize, value: u32) -> WriteOutcome {
        for i in 0..size.bytes() {
            let v = (value >> (8 * i)) as u8;
            match offset.checked_add(u16::from(i)) {
                Some(0) => {
                    self.index = v & 0x7f;
                    self.nmi_masked = v & 0x80 != 0;
                }
                Some(1) => self.write_data(v),
                _ => {}
            }
        }
        WriteOutcome::Continue
    }

    /// Sets the flags that came due and returns when the next enabled one
    /// comes: the next second for update-ended and alarm interrupts, the
    /// next period for the periodic one.
    fn poll(&mut self) -> Option<Nanos> {
        self.catch_up();
        let now = self.clock.now();
        let wall = self.wall_ns();
        let mut next: Option<Nanos> = None;
        let mut consider = |period: Nanos| {
            let p = i128::from(period);
            let wait = p - wall.rem_euclid(p);
            let t = now.saturating_add(u64::try_from(wait).unwrap_or(u64::MAX));
            next = Some(next.map_or(t, |n| n.min(t)));
        };
        let bits = self.b();
        if bits & (b::UIE | b::AIE) != 0 && bits & b::SET == 0 {
            consider(SECOND);
        }
        if bits & b::PIE != 0 {
            if let Some(p) = self.periodic_ns() {
                consider(p);
            }
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::board::Board;
    use proptest::prelude::*;

    /// 2024-02-29 23:59:58 UTC, a Thursday.
    const LEAP_DAY_EVENING: i64 = 1_709_251_198;

    fn rd(r: &mut Rtc<'_>, i: u8) -> u8 {
        r.write(0, IoSize::Byte, u32::from(i));
        r.read(1, IoSize::Byte) as u8
    }

    fn wr(r: &mut Rtc<'_>, i: u8, v: u8) {
        r.write(0, IoSize::Byte, u32::from(i));
        r.write(1, IoSize::Byte, u32::from(v));
    }

    #[test]
    fn calendar_arithmetic() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        for d in [-1_000_000, -1, 0, 1, 11_016, 19_782, 2_932_896] {
            let (y, m, day) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, day), d);
        }
        let t = tm_from_unix(LEAP_DAY_EVENING);
        assert_eq!(
            (t.year, t.month, t.day, t.hour, t.minute, t.second),
            (2024, 2, 29, 23, 59, 58)
        );
        assert_eq!(t.weekday, 4, "Thursday");
    }

    #[test]
    fn bcd_time_rolls_over_the_leap_day() {
        let board = Board::new();
        let mut r = Rtc::new(&board.clock, None, LEAP_DAY_EVENING);
        assert_eq!(rd(&mut r, reg::SECONDS), 0x58);
        assert_eq!(rd(&mut r, reg::HOURS), 0x23);
        assert_eq!(rd(&mut r, reg::DAY_OF_MONTH), 0x29);
        assert_eq!(rd(&mut r, reg::MONTH), 0x02);
        assert_eq!(rd(&mut r, reg::YEAR), 0x24);
        assert_eq!(rd(&mut r, reg::CENTURY), 0x20);
        assert_eq!(rd(&mut r, reg::DAY_OF_WEEK), 5, "Thursday is day 5");
        board.clock.advance_to(2 * SECOND);
        assert_eq!(rd(&mut r, reg::SECONDS), 0x00);
        assert_eq!(rd(&mut r, reg::HOURS), 0x00);
        assert_eq!(rd(&mut r, reg::DAY_OF_MONTH), 0x01);
        assert_eq!(rd(&mut r, reg::MONTH), 0x03);
    }

    #[test]
    fn binary_and_twelve_hour_modes() {
        let board = Board::new();
        let mut r = Rtc::new(&board.clock, None, LEAP_DAY_EVENING);
        wr(&mut r, reg::B, b::DM_BINARY);
        assert_eq!(rd(&mut r, reg::SECONDS), 58);
        assert_eq!(rd(&mut r, reg::HOURS), 0x80 | 11, "11 PM");
        wr(&mut r, reg::B, 0);
        assert_eq!(rd(&mut r, reg::HOURS), 0x80 | 0x11);
    }

    #[test]
    fn uip_is_set_just_before_the_update() {
        let board = Board::new();
        let mut r = Rtc::new(&board.clock, None, 0);
        assert_eq!(rd(&mut r, reg::A), 0x26);
        board.clock.advance_to(SECOND - UIP_NS - 1);
        assert_eq!(rd(&mut r, reg::A) & a::UIP, 0);
        board.clock.advance_to(SECOND - UIP_NS);
        assert_eq!(rd(&mut r, reg::A) & a::UIP, a::UIP);
        assert_eq!(rd(&mut r, reg::SECONDS), 0x00, "still the old second");
        board.clock.advance_to(SECOND);
        assert_eq!(rd(&mut r, reg::A) & a::UIP, 0);
        assert_eq!(rd(&mut r, reg::SECONDS), 0x01);
        wr(&mut r, reg::A, 0xa6);
        assert_eq!(rd(&mut r, reg::A), 0x26, "UIP is read-only");
    }

    #[test]
    fn setting_the_time_with_the_set_bit() {
        let board = Board::new();
        let mut r = Rtc::new(&board.clock, None, LEAP_DAY_EVENING);
        wr(&mut r, reg::B, b::SET | b::HOURS_24);
        board.clock.advance_to(5 * SECOND);
        assert_eq!(rd(&mut r, reg::SECONDS), 0x58, "stopped");
        for (i, v) in [
            (reg::SECONDS, 0x30),
            (reg::MINUTES, 0x15),
            (reg::HOURS, 0x08),
            (reg::DAY_OF_MONTH, 0x31),
            (reg::MONTH, 0x12),
            (reg::YEAR, 0x99),
            (reg::CENTURY, 0x19),
        ] {
            wr(&mut r, i, v);
        }
        wr(&mut r, reg::B, b::HOURS_24);
        board.clock.advance_to(6 * SECOND);
        assert_eq!(rd(&mut r, reg::SECONDS), 0x31);
        assert_eq!(rd(&mut r, reg::YEAR), 0x99);
        assert_eq!(rd(&mut r, reg::DAY_OF_WEEK), 6, "1999-12-31 was a Friday");
        // Writing a register without SET changes the running time.
        wr(&mut r, reg::MINUTES, 0x16);
        assert_eq!(rd(&mut r, reg::MINUTES), 0x16);
        assert_eq!(rd(&mut r, reg::SECONDS), 0x31);
    }

    #[test]
    fn update_and_periodic_flags_raise_irq8() {
        let board = Board::new();
        let mut r = Rtc::new(&board.clock, Some(board.irq.pin(8)), 0);
        assert_eq!(r.poll(), None, "no interrupt enabled");
        wr(&mut r, reg::B, b::UIE | b::HOURS_24);
        assert_eq!(r.poll(), Some(SECOND));
        board.clock.advance_to(SECOND);
        r.poll();
        assert!(board.irq.pin(8).is_high());
        // PF is set at the periodic rate whether or not PIE enables it.
        assert_eq!(rd(&mut r, reg::C), c::IRQF | c::PF | c::UF);
        assert!(!board.irq.pin(8).is_high(), "reading C lowers the line");
        assert_eq!(rd(&mut r, reg::C), 0);
        // 1024 Hz periodic interrupt (rate select 6).
        wr(&mut r, reg::B, b::PIE | b::HOURS_24);
        let t = r.poll().unwrap();
        assert_eq!(t - SECOND, SECOND / 1024 - SECOND % (SECOND / 1024));
        board.clock.advance_to(t);
        r.poll();
        assert_eq!(rd(&mut r, reg::C), c::IRQF | c::PF);
        // A flag without its enable bit does not raise IRQF.
        board.clock.advance_to(2 * SECOND + 1);
        r.poll();
        assert_eq!(rd(&mut r, reg::C), c::IRQF | c::PF | c::UF);
    }

    #[test]
    fn the_alarm() {
        let board = Board::new();
        let mut r = Rtc::new(&board.clock, Some(board.irq.pin(8)), 0);
        wr(&mut r, reg::SECONDS_ALARM, 0x03);
        wr(&mut r, reg::MINUTES_ALARM, 0xff);
        wr(&mut r, reg::HOURS_ALARM, 0xc0);
        wr(&mut r, reg::B, b::AIE | b::HOURS_24);
        for s in 1..=3 {
            board.clock.advance_to(s * SECOND);
            r.poll();
        }
        assert_eq!(rd(&mut r, reg::C) & (c::IRQF | c::AF), c::IRQF | c::AF);
    }

    #[test]
    fn index_port_and_nmi_mask_and_ram() {
        let board = Board::new();
        let mut r = Rtc::new(&board.clock, None, 0);
        r.write(0, IoSize::Byte, 0x80 | 0x40);
        assert!(r.nmi_masked());
        r.write(1, IoSize::Byte, 0x5a);
        r.write(0, IoSize::Byte, 0x40);
        assert!(!r.nmi_masked());
        assert_eq!(r.read(1, IoSize::Byte), 0x5a, "CMOS RAM keeps bytes");
        assert_eq!(r.read(0, IoSize::Byte), 0xff);
        assert_eq!(rd(&mut r, reg::D), 0x80);
        r.set_memory_size(16 << 20);
        assert_eq!((rd(&mut r, 0x15), rd(&mut r, 0x16)), (0x80, 0x02));
        assert_eq!((rd(&mut r, 0x17), rd(&mut r, 0x18)), (0x00, 0x3c), "15 MiB");
        assert_eq!((rd(&mut r, 0x34), rd(&mut r, 0x35)), (0, 0));
    }

    proptest! {
        #[test]
        fn nonsense_never_panics(ops in proptest::collection::vec((0u16..3, any::<u8>(), 0u64..3_000_000_000), 0..300)) {
            let board = Board::new();
            let mut r = Rtc::new(&board.clock, Some(board.irq.pin(8)), 1_700_000_000);
            for (off, v, dt) in ops {
                if v & 1 == 0 { r.write(off, IoSize::Byte, u32::from(v)); } else { r.read(off, IoSize::Byte); }
                board.clock.advance_to(board.clock.now() + dt);
                if let Some(t) = r.poll() {
                    prop_assert!(t > board.clock.now());
                }
            }
        }

        /// A catch-up skipped before the next second or periodic boundary
        /// changes nothing: register reads, polls and the IRQ line are
        /// those of an RTC that computes every catch-up, whatever the
        /// guest writes (rates, SET, the time, interrupt enables) and
        /// however the clock moves.
        #[test]
        fn a_skipped_catch_up_changes_nothing(
            ops in proptest::collection::vec(
                (0u8..4, prop_oneof![0u8..0x0e, Just(reg::A), Just(reg::B), Just(reg::C)], any::<u8>(),
                 prop_oneof![0u64..2_000_000, 0u64..3_000_000_000]),
                0..300),
        ) {
            let (b1, b2) = (Board::new(), Board::new());
            let mut skipping = Rtc::new(&b1.clock, Some(b1.irq.pin(8)), LEAP_DAY_EVENING);
            let mut always = Rtc::new(&b2.clock, Some(b2.irq.pin(8)), LEAP_DAY_EVENING);
            always.catch_up_always = true;
            for (op, i, v, dt) in ops {
                for (r, board) in [(&mut skipping, &b1), (&mut always, &b2)] {
                    board.clock.advance_to(board.clock.now() + dt);
                    if op == 0 {
                        wr(r, i, v);
                    }
                }
                match op {
                    0 => {}
                    1 => prop_assert_eq!(rd(&mut skipping, i), rd(&mut always, i)),
                    _ => prop_assert_eq!(skipping.poll(), always.poll()),
                }
                prop_assert_eq!(b1.irq.levels(), b2.irq.levels());
            }
        }
    }
}
