//! The ACPI fixed hardware a FADT points at, laid out as QEMU's PIIX4 PM
//! function puts it at port 0x600 (`hw/acpi/piix4.c`, `hw/acpi/core.c`),
//! and the PIIX reset control register at port 0xCF9.
//!
//! Registers, as offsets from [`PM_BASE`] (ACPI 6.4, 4.8 "ACPI Hardware
//! Specification": 4.8.4.1 "PM1 Event Grouping", 4.8.4.2 "PM1 Control
//! Grouping", and the "Power Management Timer" fixed feature):
//!
//! - +0 PM1_STS (16 bits; 4.8.3.1.1): status bits are set by hardware and
//!   cleared by writing 1 (4.8.4.1.1, table 4.11). TMR_STS (bit 0) sets whenever bit 23 of the
//!   timer toggles (a 24-bit timer: the FADT's TMR_VAL_EXT flag is clear,
//!   as QEMU's); PWRBTN_STS (bit 8) by [`AcpiPm::press_power_button`].
//! - +2 PM1_EN (16 bits; 4.8.4.1.2, table 4.12): TMR_EN, GBL_EN, PWRBTN_EN, SLPBTN_EN
//!   and RTC_EN are kept, other bits read 0. The SCI (IRQ 9, level,
//!   active high: the MADT needs an interrupt source override saying so,
//!   as QEMU's has) is held while `PM1_STS & PM1_EN != 0`.
//! - +4 PM1_CNT (16 bits; 4.8.4.2.1, table 4.13): SCI_EN (bit 0) always reads 1: the
//!   FADT gives no SMI_CMD port, so ACPI is always enabled (the FADT's
//!   SMI_CMD field: zero means no legacy mode). BM_RLD (bit 1) and SLP_TYP (12:10) are
//!   kept, GBL_RLS (bit 2) and SLP_EN (bit 13) read 0. Writing SLP_EN with
//!   SLP_TYP = [`S5_SLP_TYP`] powers off: [`WriteOutcome::Stop`] with
//!   status 0. Other sleep types are ignored (no S1-S4).
//! - +8 PM_TMR (32 bits, 24 significant): counts at
//!   [`PM_TIMER_HZ`] of virtual time from 0 at virtual time 0; writes are
//!   ignored.
//! - The rest of the [`LEN`] bytes (PIIX4's other PM registers) read 0 and
//!   drop writes.
//!
//! Accesses of any width are taken byte by byte, low byte first (the
//! FADT says 2-byte PM1 and 4-byte PM_TMR accesses, but a guest may read
//! PM1_STS and PM1_EN as one dword).

use super::{read_bytes, IoSize, PortDevice, WriteOutcome};
use crate::board::{IrqPin, Nanos, VirtualClock, SECOND};

/// First port of the PM block (QEMU's PIIX4 PM I/O base).
pub const PM_BASE: u16 = 0x600;
/// Ports the PM block decodes (PIIX4's PMBA block size).
pub const LEN: u16 = 0x40;
/// The ISA IRQ of the SCI (the FADT's SCI_INT, as QEMU).
pub const SCI_IRQ: u8 = 9;
/// Rate of the PM timer in Hz (ACPI 6.4, "Power Management Timer").
pub const PM_TIMER_HZ: u64 = 3_579_545;
/// The PM timer's significant bits: 24 (FADT TMR_VAL_EXT clear).
pub const PM_TIMER_MASK: u32 = 0x00ff_ffff;
/// The SLP_TYP value that means S5, soft off. The DSDT's `_S5` package
/// must carry it (`Package () { 0, 0, 0, 0 }`, as QEMU's DSDT).
pub const S5_SLP_TYP: u16 = 0;

/// Offset of PM1a_EVT_BLK: PM1_STS, then PM1_EN.
pub const PM1_STS: u16 = 0;
/// Offset of PM1_EN.
pub const PM1_EN: u16 = 2;
/// Offset of PM1a_CNT_BLK.
pub const PM1_CNT: u16 = 4;
/// Offset of PM_TMR_BLK.
pub const PM_TMR: u16 = 8;

/// PM1_STS and PM1_EN bits (ACPI 6.4, tables 4.11 and 4.12).
pub mod pm1 {
    /// Timer carry (bit 23 toggled).
    pub const TMR: u16 = 1 << 0;
    /// Bus master status (STS only).
    pub const BM: u16 = 1 << 4;
    /// Global release (BIOS wants the global lock).
    pub const GBL: u16 = 1 << 5;
    /// Power button.
    pub const PWRBTN: u16 = 1 << 8;
    /// Sleep button.
    pub const SLPBTN: u16 = 1 << 9;
    /// RTC alarm.
    pub const RTC: u16 = 1 << 10;
    /// Wake status (STS only).
    pub const WAK: u16 = 1 << 15;
    /// The enable bits kept in PM1_EN.
    pub const EN_BITS: u16 = TMR | GBL | PWRBTN | SLPBTN | RTC;
}

/// PM1_CNT bits (ACPI 6.4, table 4.13).
pub mod cnt {
    /// SCI_EN: the SCI, not an SMI, signals power management events.
    pub const SCI_EN: u16 = 1 << 0;
    /// BM_RLD.
    pub const BM_RLD: u16 = 1 << 1;
    /// GBL_RLS (write-only).
    pub const GBL_RLS: u16 = 1 << 2;
    /// SLP_TYP, bits 12:10.
    pub const SLP_TYP_SHIFT: u16 = 10;
    /// SLP_TYP mask.
    pub const SLP_TYP: u16 = 7 << SLP_TYP_SHIFT;
    /// SLP_EN (write-only): enter the sleep state of SLP_TYP.
    pub const SLP_EN: u16 = 1 << 13;
}

/// PM timer ticks in `ns` nanoseconds of virtual time (rounded down).
fn ticks(ns: Nanos) -> u64 {
    (u128::from(ns) * u128::from(PM_TIMER_HZ) / u128::from(SECOND)) as u64
}

/// The virtual time at which `ticks` PM timer ticks have elapsed (rounded
/// up).
fn nanos(ticks: u64) -> Nanos {
    let ns = (u128::from(ticks) * u128::from(SECOND)).div_ceil(u128::from(PM_TIMER_HZ));
    u64::try_from(ns).unwrap_or(u64::MAX)
}

/// Ticks between toggles of timer bit 23.
const TOGGLE_TICKS: u64 = 1 << 23;

/// The PM1 event and control blocks and the PM timer.
#[derive(Debug)]
pub struct AcpiPm<'b> {
    clock: &'b VirtualClock,
    sci: Option<IrqPin<'b>>,
    sts: u16,
    en: u16,
    /// BM_RLD and SLP_TYP as last written.
    cnt: u16,
    /// The virtual time of the next toggle of timer bit 23.
    next_toggle: Nanos,
}

impl<'b> AcpiPm<'b> {
    /// The PM block at reset, timing with `clock` and driving `sci` (IRQ
    /// [`SCI_IRQ`]) as a level.
    pub fn new(clock: &'b VirtualClock, sci: Option<IrqPin<'b>>) -> Self {
        let mut pm = Self {
            clock,
            sci,
            sts: 0,
            en: 0,
            cnt: 0,
            next_toggle: 0,
        };
        pm.next_toggle = pm.toggle_after(clock.now());
        pm.update_sci();
        pm
    }

    /// The first toggle of timer bit 23 after virtual time `now`.
    fn toggle_after(&self, now: Nanos) -> Nanos {
        let t = ticks(now);
        nanos(
            (t / TOGGLE_TICKS)
                .saturating_add(1)
                .saturating_mul(TOGGLE_TICKS),
        )
    }

    /// The PM timer's value now (24 bits).
    pub fn timer(&self) -> u32 {
        ticks(self.clock.now()) as u32 & PM_TIMER_MASK
    }

    /// Sets TMR_STS if bit 23 toggled since the last look.
    fn update_timer(&mut self) {
        let now = self.clock.now();
        if now >= self.next_toggle {
            self.sts |= pm1::TMR;
            self.next_toggle = self.toggle_after(now);
        }
    }

    /// Whether the SCI is asserted.
    pub fn sci_level(&self) -> bool {
        self.sts & self.en != 0
    }

    fn update_sci(&self) {
        if let Some(pin) = &self.sci {
            pin.set_level(self.sci_level());
        }
    }

    /// PM1_STS now.
    pub fn status(&mut self) -> u16 {
        self.update_timer();
        self.sts
    }

    /// A press of the power button: PWRBTN_STS, and the SCI if
    /// PWRBTN_EN (the guest's ACPI then powers off through S5).
    pub fn press_power_button(&mut self) {
        self.update_timer();
        self.sts |= pm1::PWRBTN;
        self.update_sci();
    }

    fn pm1_cnt(&self) -> u16 {
        self.cnt | cnt::SCI_EN
    }

    fn read_byte(&mut self, offset: u16) -> u8 {
        let reg16 = |v: u16, hi: bool| if hi { (v >> 8) as u8 } else { v as u8 };
        match offset {
            0 | 1 => reg16(self.status(), offset == 1),
            2 | 3 => reg16(self.en, offset == 3),
            4 | 5 => reg16(self.pm1_cnt(), offset == 5),
            8..=11 => (self.timer() >> (8 * (offset - 8))) as u8,
            _ => 0,
        }
    }

    fn write_byte(&mut self, offset: u16, v: u8) -> WriteOutcome {
        let v16 = |hi: bool| if hi { u16::from(v) << 8 } else { u16::from(v) };
        let byte_mask = |hi: bool| if hi { 0xff00u16 } else { 0x00ff };
        match offset {
            0 | 1 => {
                self.update_timer();
                self.sts &= !v16(offset == 1);
            }
            2 | 3 => {
                let hi = offset == 3;
                self.en = (self.en & !byte_mask(hi)) | (v16(hi) & pm1::EN_BITS & byte_mask(hi));
            }
            4 | 5 => {
                let hi = offset == 5;
                let keep = cnt::BM_RLD | cnt::SLP_TYP;
                self.cnt = (self.cnt & !byte_mask(hi)) | (v16(hi) & keep & byte_mask(hi));
                if v16(hi) & cnt::SLP_EN != 0
                    && (self.cnt & cnt::SLP_TYP) >> cnt::SLP_TYP_SHIFT == S5_SLP_TYP
                {
                    return WriteOutcome::Stop { status: 0 };
                }
            }
            _ => {}
        }
        WriteOutcome::Continue
    }
}

impl PortDevice for AcpiPm<'_> {
    fn read(&mut self, offset: u16, size: IoSize) -> u32 {
        // One instant for all bytes of the timer.
        let v = read_bytes(offset, size, |o| self.read_byte(o));
        self.update_sci();
        v
    }

    fn write(&mut self, offset: u16, size: IoSize, value: u32) -> WriteOutcome {
        let mut outcome = WriteOutcome::Continue;
        for i in 0..size.bytes() {
            let Some(o) = offset.checked_add(u16::from(i)) else {
                break;
            };
            let r = self.write_byte(o, (value >> (8 * i)) as u8);
            if r != WriteOutcome::Continue {
                outcome = r;
            }
        }
        self.update_sci();
        outcome
    }

    /// Sets TMR_STS when bit 23 toggled, updates the SCI, and returns the
    /// next toggle if TMR_EN is on.
    fn poll(&mut self) -> Option<Nanos> {
        self.update_timer();
        self.update_sci();
        (self.en & pm1::TMR != 0).then_some(self.next_toggle)
    }
}

/// The PIIX reset control register's port (PIIX4 datasheet 4.1.17, RC;
/// ICH "Reset Control Register").
pub const RESET_PORT: u16 = 0xCF9;
/// Ports [`ResetControl`] decodes.
pub const RESET_LEN: u16 = 1;
/// The value a FADT's RESET_REG write uses: SYS_RST | RST_CPU, a hard
/// reset.
pub const RESET_VALUE: u8 = 0x06;
/// RC bit 2, RST_CPU: writing it as 1 resets.
const RST_CPU: u8 = 1 << 2;
/// RC bits 3:1 read back (FULL_RST, RST_CPU, SYS_RST).
const RC_BITS: u8 = 0x0e;

/// The reset control register at [`RESET_PORT`].
///
/// A write with RST_CPU (bit 2) set resets the machine
/// ([`WriteOutcome::Reset`]; soft and hard resets are the same here).
/// Reads return the last byte written, bits 3:1 only. Only byte accesses
/// at 0xCF9 belong to it: the PCI configuration address register at
/// 0xCF8 is dword-only, so the router must send byte accesses to 0xCF9
/// here and the rest to [`crate::devices::pci`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResetControl {
    value: u8,
}

impl ResetControl {
    /// After reset: 0.
    pub const fn new() -> Self {
        Self { value: 0 }
    }
}

impl PortDevice for ResetControl {
    fn read(&mut self, offset: u16, _size: IoSize) -> u32 {
        if offset == 0 {
            u32::from(self.value)
        } else {
            0xff
        }
    }

    fn write(&mut self, offset: u16, _size: IoSize, value: u32) -> WriteOutcome {
        if offset != 0 {
            return WriteOutcome::Continue;
        }
        let v = value as u8;
        self.value = v & RC_BITS;
        if v & RST_CPU != 0 {
            WriteOutcome::Reset
        } else {
            WriteOutcome::Continue
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::board::Board;

    fn r16(pm: &mut AcpiPm<'_>, off: u16) -> u16 {
        pm.read(off, IoSize::Word) as u16
    }

    #[test]
    fn timer_counts_at_3_579545_mhz() {
        let b = Board::new();
        let mut pm = AcpiPm::new(&b.clock, None);
        assert_eq!(pm.read(PM_TMR, IoSize::Dword), 0);
        b.clock.advance_to(SECOND);
        assert_eq!(
            pm.read(PM_TMR, IoSize::Dword),
            (PM_TIMER_HZ % (1 << 24)) as u32
        );
        b.clock.advance_to(10 * SECOND);
        assert_eq!(
            pm.read(PM_TMR, IoSize::Dword),
            (35_795_450 % (1 << 24)) as u32
        );
        // Byte reads see the same counter; writes are ignored.
        let lo = pm.read(PM_TMR, IoSize::Byte);
        let hi = pm.read(PM_TMR + 2, IoSize::Word);
        assert_eq!(lo | hi << 16, pm.timer() & 0xff_00ff);
        pm.write(PM_TMR, IoSize::Dword, 0);
        assert_eq!(pm.timer(), (35_795_450 % (1 << 24)) as u32);
        assert_eq!(pm.read(PM_TMR + 3, IoSize::Byte), 0, "24 bits");
        assert_eq!(ticks(nanos(12345)), 12345);
    }

    #[test]
    fn tmr_sts_sets_on_bit_23_toggle_and_raises_the_sci() {
        let b = Board::new();
        let mut pm = AcpiPm::new(&b.clock, Some(b.irq.pin(SCI_IRQ)));
        assert_eq!(pm.poll(), None, "TMR_EN off");
        pm.write(PM1_EN, IoSize::Word, u32::from(pm1::TMR));
        let t = pm.poll().unwrap();
        assert_eq!(t, nanos(1 << 23));
        b.clock.advance_to(t - 1);
        assert_eq!(pm.poll(), Some(t));
        assert_eq!(r16(&mut pm, PM1_STS), 0);
        assert!(!b.irq.pin(SCI_IRQ).is_high());
        b.clock.advance_to(t);
        assert_eq!(pm.poll(), Some(nanos(2 << 23)));
        assert_eq!(r16(&mut pm, PM1_STS), pm1::TMR);
        assert!(b.irq.pin(SCI_IRQ).is_high());
        // Write 1 to clear; writing 0 clears nothing.
        pm.write(PM1_STS, IoSize::Word, 0);
        assert_eq!(r16(&mut pm, PM1_STS), pm1::TMR);
        pm.write(PM1_STS, IoSize::Word, u32::from(pm1::TMR));
        assert_eq!(r16(&mut pm, PM1_STS), 0);
        assert!(!b.irq.pin(SCI_IRQ).is_high());
        // Status sets with TMR_EN off too, without an SCI.
        pm.write(PM1_EN, IoSize::Word, 0);
        b.clock.advance_to(nanos(2 << 23));
        assert_eq!(pm.poll(), None);
        assert_eq!(r16(&mut pm, PM1_STS), pm1::TMR);
        assert!(!b.irq.pin(SCI_IRQ).is_high());
        // A dword read sees STS and EN.
        pm.write(PM1_EN, IoSize::Word, 0xffff);
        assert_eq!(
            pm.read(PM1_STS, IoSize::Dword),
            u32::from(pm1::EN_BITS) << 16 | u32::from(pm1::TMR)
        );
    }

    #[test]
    fn power_button() {
        let b = Board::new();
        let mut pm = AcpiPm::new(&b.clock, Some(b.irq.pin(SCI_IRQ)));
        pm.press_power_button();
        assert!(!b.irq.pin(SCI_IRQ).is_high());
        pm.write(PM1_EN + 1, IoSize::Byte, u32::from(pm1::PWRBTN >> 8));
        assert!(b.irq.pin(SCI_IRQ).is_high());
        pm.write(PM1_STS + 1, IoSize::Byte, 1);
        assert!(!b.irq.pin(SCI_IRQ).is_high());
    }

    #[test]
    fn pm1_cnt_and_s5() {
        let b = Board::new();
        let mut pm = AcpiPm::new(&b.clock, None);
        assert_eq!(r16(&mut pm, PM1_CNT), cnt::SCI_EN, "ACPI always on");
        pm.write(PM1_CNT, IoSize::Word, 0);
        assert_eq!(r16(&mut pm, PM1_CNT), cnt::SCI_EN);
        // SLP_TYP without SLP_EN is only kept; other sleep types are ignored.
        assert_eq!(
            pm.write(PM1_CNT, IoSize::Word, 5 << 10),
            WriteOutcome::Continue
        );
        assert_eq!(r16(&mut pm, PM1_CNT), 5 << 10 | cnt::SCI_EN);
        assert_eq!(
            pm.write(PM1_CNT, IoSize::Word, 1 << 10 | u32::from(cnt::SLP_EN)),
            WriteOutcome::Continue
        );
        assert_eq!(r16(&mut pm, PM1_CNT), 1 << 10 | cnt::SCI_EN);
        // S5: power off with status 0 (as Linux writes it: SLP_TYP | SLP_EN).
        let s5 = u32::from(S5_SLP_TYP << cnt::SLP_TYP_SHIFT | cnt::SLP_EN);
        assert_eq!(
            pm.write(PM1_CNT, IoSize::Word, s5 | 1),
            WriteOutcome::Stop { status: 0 }
        );
        // A byte write of the high byte does it too.
        assert_eq!(
            pm.write(PM1_CNT + 1, IoSize::Byte, s5 >> 8),
            WriteOutcome::Stop { status: 0 }
        );
    }

    #[test]
    fn other_offsets_and_garbage() {
        let b = Board::new();
        let mut pm = AcpiPm::new(&b.clock, Some(b.irq.pin(SCI_IRQ)));
        for off in [6, 7, 12, 0x20, 0x3f, 0xfffe, u16::MAX] {
            assert_eq!(pm.read(off, IoSize::Byte), 0);
            pm.write(off, IoSize::Dword, u32::MAX);
        }
        for off in 0..LEN {
            for size in [IoSize::Byte, IoSize::Word, IoSize::Dword] {
                pm.read(off, size);
                // Anywhere but PM1_CNT (where it could power off).
                if off + u16::from(size.bytes()) <= PM1_CNT || off >= PM1_CNT + 2 {
                    assert_eq!(pm.write(off, size, 0xdead_beef), WriteOutcome::Continue);
                }
            }
        }
        b.clock.advance_to(u64::MAX);
        pm.poll();
        pm.read(PM_TMR, IoSize::Dword);
    }

    #[test]
    fn reset_control() {
        let mut rc = ResetControl::new();
        assert_eq!(rc.read(0, IoSize::Byte), 0);
        assert_eq!(rc.write(0, IoSize::Byte, 0x02), WriteOutcome::Continue);
        assert_eq!(rc.read(0, IoSize::Byte), 0x02);
        assert_eq!(rc.write(0, IoSize::Byte, 0xf1), WriteOutcome::Continue);
        assert_eq!(rc.read(0, IoSize::Byte), 0x00);
        assert_eq!(
            rc.write(0, IoSize::Byte, u32::from(RESET_VALUE)),
            WriteOutcome::Reset
        );
        assert_eq!(rc.read(0, IoSize::Byte), 0x06);
        assert_eq!(rc.write(1, IoSize::Byte, 0x06), WriteOutcome::Continue);
        assert_eq!(rc.read(1, IoSize::Byte), 0xff);
    }
}
