//! What the devices of one VM share: the virtual clock they count time
//! from, and the interrupt request lines and message mailbox they drive
//! into the interrupt controllers.
//!
//! All are plain cells: a device holds `&Board` (or a pin of it), the exit
//! handler advances the clock and samples the lines and messages between
//! exits into the board's controllers
//! ([`crate::irqchip::InterruptController`]): a device never knows whether
//! 8259s alone (ISA board) or the APICs too (PC board) are behind its
//! line. Nothing here can panic, and nothing needs an allocator.

use core::cell::{Cell, RefCell};

use crate::devices::interrupt::{decode_msi, InterruptMessage};

/// Messages (MSI) the mailbox holds between two samples; more are dropped
/// and counted, as a bus that cannot take a write.
pub const MSI_MAILBOX: usize = 16;

/// Nanoseconds of virtual time since the VM started.
pub type Nanos = u64;

/// One second in [`Nanos`].
pub const SECOND: Nanos = 1_000_000_000;

/// The VM's virtual clock, read by the devices.
///
/// Only the exit handler moves it (see `crate::vmm` and the crate README for
/// how it follows the host's time source); devices read [`VirtualClock::now`].
#[derive(Debug, Default)]
pub struct VirtualClock {
    now: Cell<Nanos>,
}

impl VirtualClock {
    /// A clock at 0.
    pub const fn new() -> Self {
        Self { now: Cell::new(0) }
    }

    /// The current virtual time.
    pub fn now(&self) -> Nanos {
        self.now.get()
    }

    /// Moves the clock to `t`; the clock never goes backwards.
    pub fn advance_to(&self, t: Nanos) {
        if t > self.now.get() {
            self.now.set(t);
        }
    }
}

/// Number of ISA interrupt lines (IRQ 0-15 on the PIC pair).
pub const IRQ_LINES: u8 = 16;

/// The ISA interrupt request lines, and the mailbox of message-signalled
/// interrupts.
///
/// A device either holds its line at a level ([`IrqPin::set_level`], for
/// the UART and the keyboard controller, whose line stays up while an
/// interrupt is pending) or sends a rising edge ([`IrqPin::pulse`], for the
/// PIT, whose output edges are what the PIC latches); a PCI device with
/// MSI or MSI-X writes a message instead ([`Msi::write`]). The exit handler
/// collects all of them after every exit and feeds them into the
/// interrupt controllers.
#[derive(Debug, Default)]
pub struct IrqLines {
    levels: Cell<u16>,
    pulses: Cell<u16>,
    msis: RefCell<heapless::Deque<InterruptMessage, MSI_MAILBOX>>,
    msis_dropped: Cell<u64>,
}

impl IrqLines {
    /// All lines low, no edges, no messages.
    pub const fn new() -> Self {
        Self {
            levels: Cell::new(0),
            pulses: Cell::new(0),
            msis: RefCell::new(heapless::Deque::new()),
            msis_dropped: Cell::new(0),
        }
    }

    /// The pin of line `irq` (0..16; higher numbers give a pin that does
    /// nothing).
    pub fn pin(&self, irq: u8) -> IrqPin<'_> {
        IrqPin { lines: self, irq }
    }

    /// Where a device writes its message-signalled interrupts.
    pub fn msi(&self) -> Msi<'_> {
        Msi { lines: self }
    }

    /// What a PCI function on ISA line `intx` interrupts with.
    pub fn pci(&self, intx: u8) -> PciInterrupts<'_> {
        PciInterrupts {
            intx: self.pin(intx),
            msi: self.msi(),
        }
    }

    /// Takes the oldest message sent since the last sample.
    pub fn take_msi(&self) -> Option<InterruptMessage> {
        self.msis.borrow_mut().pop_front()
    }

    /// Messages dropped because the mailbox was full.
    pub fn msis_dropped(&self) -> u64 {
        self.msis_dropped.get()
    }

    /// The current levels, one bit per line.
    pub fn levels(&self) -> u16 {
        self.levels.get()
    }

    /// Takes the edges sent since the last call, one bit per line.
    pub fn take_pulses(&self) -> u16 {
        self.pulses.replace(0)
    }
}

/// One device's interrupt line.
#[derive(Clone, Copy, Debug)]
pub struct IrqPin<'a> {
    lines: &'a IrqLines,
    irq: u8,
}

impl IrqPin<'_> {
    fn mask(&self) -> u16 {
        1u16.checked_shl(u32::from(self.irq)).unwrap_or(0)
    }

    /// The line's number.
    pub fn irq(&self) -> u8 {
        self.irq
    }

    /// Holds the line high or low.
    pub fn set_level(&self, high: bool) {
        let l = self.lines.levels.get();
        // A rise is an edge for the 8259 even if the line fell and rose
        // again since the PIC last looked: keep it as a pulse.
        if high && l & self.mask() == 0 {
            self.pulse();
        }
        self.lines.levels.set(if high {
            l | self.mask()
        } else {
            l & !self.mask()
        });
    }

    /// Sends one rising edge (the line goes high and low again).
    pub fn pulse(&self) {
        self.lines.pulses.set(self.lines.pulses.get() | self.mask());
    }

    /// Whether the line is held high.
    pub fn is_high(&self) -> bool {
        self.lines.levels.get() & self.mask() != 0
    }
}

/// A device's message-signalled interrupts (MSI, MSI-X): the message
/// goes to whatever controllers the board has (the local APIC on the PC
/// board; nowhere on the ISA board, as on a PC without an APIC).
#[derive(Clone, Copy, Debug)]
pub struct Msi<'a> {
    lines: &'a IrqLines,
}

impl Msi<'_> {
    /// The device writes `data` at `address`, as its MSI capability or
    /// MSI-X table entry says (see
    /// [`crate::devices::interrupt::decode_msi`]). False when the write
    /// is no interrupt message (outside the APICs' window, a reserved
    /// delivery mode) or the mailbox is full; either way it is lost.
    pub fn write(&self, address: u64, data: u32) -> bool {
        let Some(m) = decode_msi(address, data) else {
            return false;
        };
        let queued = self.lines.msis.borrow_mut().push_back(m).is_ok();
        if !queued {
            let d = &self.lines.msis_dropped;
            d.set(d.get().saturating_add(1));
        }
        queued
    }
}

/// What a PCI function interrupts with: its INTx line (a level, INTA#)
/// and its MSI or MSI-X messages. The two calls are
/// `virtio::pci::InterruptSink`'s, so a virtio-pci function plugs in with
/// an impl that forwards them.
#[derive(Clone, Copy, Debug)]
pub struct PciInterrupts<'a> {
    /// The INTx line.
    pub intx: IrqPin<'a>,
    /// The messages.
    pub msi: Msi<'a>,
}

impl PciInterrupts<'_> {
    /// Writes an MSI/MSI-X message (lost when it is none, see [`Msi::write`]).
    pub fn send_msi(&mut self, address: u64, data: u32) {
        self.msi.write(address, data);
    }

    /// INTA# asserted or deasserted.
    pub fn set_intx(&mut self, asserted: bool) {
        self.intx.set_level(asserted);
    }
}

/// The shared state of one VM's devices.
#[derive(Debug, Default)]
pub struct Board {
    /// The virtual clock.
    pub clock: VirtualClock,
    /// The ISA interrupt lines.
    pub irq: IrqLines,
}

impl Board {
    /// A board at time 0 with every line low.
    pub const fn new() -> Self {
        Self {
            clock: VirtualClock::new(),
            irq: IrqLines::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_never_goes_back() {
        let c = VirtualClock::new();
        c.advance_to(10);
        c.advance_to(5);
        assert_eq!(c.now(), 10);
    }

    #[test]
    fn pins_drive_levels_and_edges() {
        let b = Board::new();
        let p4 = b.irq.pin(4);
        let p0 = b.irq.pin(0);
        p4.set_level(true);
        p0.pulse();
        assert_eq!(b.irq.levels(), 1 << 4);
        assert!(p4.is_high());
        // IRQ 0's pulse, and IRQ 4's rise (kept as an edge).
        assert_eq!(b.irq.take_pulses(), 1 | 1 << 4);
        assert_eq!(b.irq.take_pulses(), 0);
        p4.set_level(true);
        assert_eq!(b.irq.take_pulses(), 0, "no edge while the line stays high");
        p4.set_level(false);
        assert_eq!(b.irq.levels(), 0);
        // An out-of-range pin is harmless.
        let bad = b.irq.pin(200);
        bad.set_level(true);
        bad.pulse();
        assert_eq!((b.irq.levels(), b.irq.take_pulses()), (0, 0));
    }

    #[test]
    fn messages_queue_until_sampled_and_overflow_is_counted() {
        let b = Board::new();
        let msi = b.irq.msi();
        assert!(!msi.write(0xfed0_0000, 0x41), "not the APICs' window");
        for v in 0..MSI_MAILBOX as u32 + 1 {
            msi.write(0xfee0_0000, 0x40 + v);
        }
        assert_eq!(b.irq.msis_dropped(), 1);
        assert_eq!(b.irq.take_msi().map(|m| m.vector), Some(0x40));
        let rest = core::iter::from_fn(|| b.irq.take_msi()).count();
        assert_eq!(rest, MSI_MAILBOX - 1);
    }

    #[test]
    fn a_pci_function_drives_its_line_and_sends_messages() {
        let b = Board::new();
        let mut f = b.irq.pci(11);
        f.set_intx(true);
        assert_eq!(b.irq.levels(), 1 << 11);
        f.set_intx(false);
        f.send_msi(0xfee0_0000, 0x45);
        assert_eq!(b.irq.take_msi().map(|m| m.vector), Some(0x45));
    }
}
