//! The interrupt controllers of one VM, as the exit handler sees them:
//! where an ISA line goes, which vector the vCPU takes next, and which MMIO
//! and MSR accesses are theirs.
//!
//! The ISA board has the 8259 pair alone. The PC board adds the local APIC
//! and the I/O APIC, wired as on a PC (and as QEMU's `pc` machine): every
//! ISA line goes to both the 8259s and an I/O APIC pin (IRQ 0 to pin 2, as
//! the MADT's override says); the 8259s' output reaches the vCPU through
//! the local APIC's LINT0 in ExtINT mode (the "virtual wire", on at reset,
//! so a guest that never touches the APICs sees the ISA board); the I/O
//! APIC's messages go to the local APIC, and its EOIs of level-triggered
//! vectors come back to the I/O APIC (SDM vol. 3A, 11.8.5).
//!
//! Who goes first: the local APIC's highest vector above its PPR, then the
//! 8259s through LINT0, as QEMU's `cpu_get_pic_interrupt` does.
//!
//! Both boards are an [`InterruptController`]: the 8259 pair alone
//! ([`DualPic`]) and [`IrqChip`], which wires in the APICs on the PC
//! board. Devices never see either: they drive the [`IrqLines`] of the
//! board (a line, or a message for MSI), which [`IrqChip::sample`] feeds
//! in through the trait.

use crate::board::{IrqLines, Nanos, IRQ_LINES};
use crate::devices::interrupt::InterruptMessage;
use crate::devices::ioapic::{self, IoApic, IOAPIC_BASE};
use crate::devices::lapic::{ApicError, LocalApic};
use crate::devices::pic::DualPic;
use crate::mmio::MmioDevice;

/// The I/O APIC's MMIO window (IOREGSEL, IOWIN and the rest of its page).
pub const IOAPIC_WINDOW: u64 = 0x1000;

/// IA32_APIC_BASE.
pub const MSR_APIC_BASE: u32 = 0x1b;
/// IA32_TSC_DEADLINE.
pub const MSR_TSC_DEADLINE: u32 = 0x6e0;
/// The x2APIC registers' MSRs (SDM vol. 3A, table 11-6).
pub const MSR_X2APIC: core::ops::RangeInclusive<u32> = 0x800..=0x8ff;

/// Interrupt controllers as the lines and the vCPU see them, whatever the
/// board has behind them.
pub trait InterruptController {
    /// Holds ISA line `irq` (0..16) high or low.
    fn set_line(&mut self, irq: u8, high: bool);
    /// A rising edge on ISA line `irq` while it is held low (the line goes
    /// high and low again).
    fn pulse_line(&mut self, irq: u8);
    /// Delivers an interrupt message (a device's MSI or MSI-X write); a
    /// board without a local APIC drops it.
    fn deliver(&mut self, m: &InterruptMessage);
    /// Whether an interrupt waits for the vCPU (RFLAGS.IF decides whether
    /// it can take it now).
    fn interrupt_pending(&self) -> bool;
    /// The interrupt acknowledge cycle: the vector the vCPU takes now, and
    /// where it came from. Call only when
    /// [`InterruptController::interrupt_pending`].
    fn acknowledge(&mut self) -> (u8, Source);
    /// The end of a level-triggered `vector` the local APIC broadcasts:
    /// the I/O APIC delivers again a pin still asserted. The 8259s take
    /// their EOIs as port writes, so the ISA board ignores it.
    fn eoi(&mut self, vector: u8);
}

/// The ISA board: the 8259 pair alone.
impl InterruptController for DualPic {
    fn set_line(&mut self, irq: u8, high: bool) {
        self.set_irq(irq, high);
    }

    fn pulse_line(&mut self, irq: u8) {
        self.pulse_irq(irq);
    }

    fn deliver(&mut self, _m: &InterruptMessage) {
        // No local APIC: dropped, as on a PC without one.
    }

    fn interrupt_pending(&self) -> bool {
        DualPic::interrupt_pending(self)
    }

    fn acknowledge(&mut self) -> (u8, Source) {
        (DualPic::acknowledge(self), Source::Pic)
    }

    fn eoi(&mut self, _vector: u8) {}
}

/// The local APIC and the I/O APIC of the PC board.
pub struct Apics<'d> {
    /// The vCPU's local APIC.
    pub lapic: LocalApic<'d>,
    /// The I/O APIC.
    pub ioapic: IoApic,
}

/// A vector the vCPU takes, and where it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The local APIC (its IRR, now in its ISR).
    LocalApic,
    /// The 8259 pair (through LINT0 on the PC board).
    Pic,
}

/// The VM's interrupt controllers.
pub struct IrqChip<'d> {
    pic: DualPic,
    apics: Option<Apics<'d>>,
    /// The ISA line levels last fed in.
    levels: u16,
}

impl<'d> IrqChip<'d> {
    /// The ISA board: the 8259 pair alone.
    pub fn isa() -> Self {
        Self {
            pic: DualPic::new(),
            apics: None,
            levels: 0,
        }
    }

    /// The PC board: the 8259 pair, the local APIC and the I/O APIC.
    pub fn pc(lapic: LocalApic<'d>, ioapic: IoApic) -> Self {
        Self {
            apics: Some(Apics { lapic, ioapic }),
            ..Self::isa()
        }
    }

    /// The 8259 pair.
    pub fn pic(&self) -> &DualPic {
        &self.pic
    }

    /// The 8259 pair, for its ports.
    pub fn pic_mut(&mut self) -> &mut DualPic {
        &mut self.pic
    }

    /// The APICs, on the PC board.
    pub fn apics(&self) -> Option<&Apics<'d>> {
        self.apics.as_ref()
    }

    /// The local APIC, on the PC board.
    pub fn lapic_mut(&mut self) -> Option<&mut LocalApic<'d>> {
        self.apics.as_mut().map(|a| &mut a.lapic)
    }

    /// Feeds the ISA lines' levels, the edges and the messages sent since
    /// the last call into the controllers, then lets the APICs talk: the
    /// I/O APIC's messages to the local APIC, the local APIC's EOIs of
    /// level-triggered vectors back to the I/O APIC.
    pub fn sample(&mut self, lines: &IrqLines) {
        let levels = lines.levels();
        let changed = levels ^ self.levels;
        let pulses = lines.take_pulses();
        // Most exits move no line: the walk is skipped (it ran three
        // times an exit).
        if changed | pulses != 0 {
            for irq in 0..IRQ_LINES {
                let bit = 1u16 << irq;
                let high = levels & bit != 0;
                if changed & bit != 0 {
                    self.set_line(irq, high);
                }
                if pulses & bit != 0 {
                    if !high {
                        self.pulse_line(irq);
                    } else if changed & bit == 0 {
                        // Low and high again between two samples: the
                        // controllers must see that rising edge too.
                        self.set_line(irq, false);
                        self.set_line(irq, true);
                    }
                }
            }
        }
        self.levels = levels;
        while let Some(m) = lines.take_msi() {
            self.deliver(&m);
        }
        self.route();
    }

    /// Moves messages and EOIs between the APICs until both are quiet (an
    /// EOI may re-deliver a level pin that is still asserted).
    fn route(&mut self) {
        let Some(a) = &mut self.apics else { return };
        // Each round either delivers or ends; a level pin re-delivers only
        // after an EOI, so a few rounds settle it.
        for _ in 0..4 {
            let mut quiet = true;
            for m in a.ioapic.take_messages() {
                quiet = false;
                a.lapic.deliver(&m);
            }
            while let Some(vector) = a.lapic.take_eoi() {
                quiet = false;
                a.ioapic.eoi(vector);
            }
            if quiet {
                break;
            }
        }
    }

    /// Brings the local APIC's timer up to the virtual clock and the
    /// host's TSC (`tsc`, for the TSC-deadline mode); returns its next
    /// deadline in virtual time.
    pub fn poll(&mut self, tsc: u64) -> Option<Nanos> {
        let a = self.apics.as_mut()?;
        a.lapic.poll_tsc(tsc);
        a.lapic.poll()
    }

    /// The armed TSC deadline (host TSC ticks), if any.
    pub fn tsc_deadline(&self) -> Option<u64> {
        self.apics.as_ref()?.lapic.armed_tsc_deadline()
    }

    /// Whether the 8259s' output reaches the vCPU: always on the ISA
    /// board; through LINT0 (ExtINT, unmasked, or the APIC globally
    /// disabled) on the PC board.
    fn pic_connected(&self) -> bool {
        self.apics
            .as_ref()
            .is_none_or(|a| a.lapic.lint0_accepts_pic())
    }

    /// Takes a pending NMI (from the local APIC: ICR, LINT1, an I/O APIC
    /// entry in NMI mode).
    pub fn take_nmi(&mut self) -> bool {
        self.apics.as_mut().is_some_and(|a| a.lapic.take_nmi())
    }

    /// The device behind MMIO address `gpa` and the offset in it, if it is
    /// an APIC's: the local APIC's page where IA32_APIC_BASE puts it (in
    /// xAPIC mode), the I/O APIC's page.
    pub fn mmio(&mut self, gpa: u64) -> Option<(&mut dyn MmioDevice, u64)> {
        let a = self.apics.as_mut()?;
        if let Some(base) = a.lapic.mmio_base() {
            if gpa.wrapping_sub(base) < 0x1000 {
                return Some((&mut a.lapic, gpa - base));
            }
        }
        if gpa.wrapping_sub(IOAPIC_BASE) < IOAPIC_WINDOW {
            return Some((&mut a.ioapic, gpa - IOAPIC_BASE));
        }
        None
    }

    /// Whether MSR `index` is the APIC's (on the PC board).
    pub fn owns_msr(&self, index: u32) -> bool {
        self.apics.is_some()
            && (index == MSR_APIC_BASE || index == MSR_TSC_DEADLINE || MSR_X2APIC.contains(&index))
    }

    /// RDMSR of an APIC MSR (see [`IrqChip::owns_msr`]); `tsc` is the
    /// host's TSC now. `Err` is a #GP.
    pub fn read_msr(&mut self, index: u32) -> Result<u64, ApicError> {
        let Some(a) = &mut self.apics else {
            return Err(ApicError::Gp);
        };
        match index {
            MSR_APIC_BASE => Ok(a.lapic.apic_base()),
            MSR_TSC_DEADLINE => Ok(a.lapic.tsc_deadline()),
            _ => a.lapic.msr_read(index),
        }
    }

    /// WRMSR of an APIC MSR; `tsc` is the host's TSC now.
    pub fn write_msr(&mut self, index: u32, value: u64, tsc: u64) -> Result<(), ApicError> {
        let Some(a) = &mut self.apics else {
            return Err(ApicError::Gp);
        };
        let r = match index {
            MSR_APIC_BASE => a.lapic.set_apic_base(value, true),
            MSR_TSC_DEADLINE => {
                a.lapic.write_tsc_deadline(value, tsc);
                Ok(())
            }
            _ => a.lapic.msr_write(index, value),
        };
        // A self-IPI or an EOI may have been written.
        self.route();
        r
    }
}

/// The board's wiring: on the PC board every ISA line goes to the 8259s
/// and an I/O APIC pin, messages to the local APIC, which goes before the
/// 8259s; on the ISA board, the 8259s alone.
impl InterruptController for IrqChip<'_> {
    fn set_line(&mut self, irq: u8, high: bool) {
        self.pic.set_line(irq, high);
        if let Some(a) = &mut self.apics {
            a.ioapic.set_pin(ioapic::isa_irq_to_pin(irq), high);
        }
    }

    fn pulse_line(&mut self, irq: u8) {
        self.pic.pulse_line(irq);
        if let Some(a) = &mut self.apics {
            a.ioapic.pulse_pin(ioapic::isa_irq_to_pin(irq));
        }
    }

    fn deliver(&mut self, m: &InterruptMessage) {
        match &mut self.apics {
            Some(a) => {
                a.lapic.deliver(m);
            }
            None => self.pic.deliver(m),
        }
    }

    fn interrupt_pending(&self) -> bool {
        self.apics
            .as_ref()
            .is_some_and(|a| a.lapic.pending_vector().is_some())
            || (self.pic_connected() && self.pic.interrupt_pending())
    }

    fn acknowledge(&mut self) -> (u8, Source) {
        if let Some(a) = &mut self.apics {
            if a.lapic.pending_vector().is_some() {
                if let Some(v) = a.lapic.acknowledge() {
                    return (v, Source::LocalApic);
                }
            }
        }
        InterruptController::acknowledge(&mut self.pic)
    }

    fn eoi(&mut self, vector: u8) {
        if let Some(a) = &mut self.apics {
            a.ioapic.eoi(vector);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::board::Board;

    /// Programs the 8259 pair as the `timer` guest does: vectors 0x20 and
    /// 0x28, only IRQ 0 unmasked.
    fn program_pic(chip: &mut IrqChip<'_>) {
        let pic = chip.pic_mut();
        for (offset, value) in [
            (0, 0x11),
            (0x80, 0x11),
            (1, 0x20),
            (0x81, 0x28),
            (1, 0x04),
            (0x81, 0x02),
            (1, 0x01),
            (0x81, 0x01),
            (1, 0xfe),
            (0x81, 0xff),
        ] {
            pic.write_register(offset, value);
        }
    }

    #[test]
    fn a_device_message_reaches_the_local_apic_on_the_pc_board_only() {
        let b = Board::new();
        let mut pc = IrqChip::pc(LocalApic::new(&b.clock), IoApic::new());
        // Software-enable the local APIC (SVR bit 8), as a guest does.
        MmioDevice::write(pc.lapic_mut().unwrap(), 0xf0, 4, 0x1ff);
        b.irq.msi().write(0xfee0_0000, 0x41);
        pc.sample(&b.irq);
        assert!(pc.interrupt_pending());
        assert_eq!(pc.acknowledge(), (0x41, Source::LocalApic));
        let mut isa = IrqChip::isa();
        b.irq.msi().write(0xfee0_0000, 0x41);
        isa.sample(&b.irq);
        assert!(!isa.interrupt_pending(), "no APIC: dropped");
        assert_eq!(b.irq.take_msi(), None);
    }

    #[test]
    fn pc_board_at_reset_is_the_isa_board_through_lint0() {
        let b = Board::new();
        let mut chip = IrqChip::pc(LocalApic::new(&b.clock), IoApic::new());
        program_pic(&mut chip);
        assert!(!chip.interrupt_pending(), "nothing yet");
        b.irq.pin(0).pulse();
        chip.sample(&b.irq);
        assert!(chip.interrupt_pending());
        assert_eq!(chip.acknowledge(), (0x20, Source::Pic));
        assert!(!chip.interrupt_pending());
    }
}
