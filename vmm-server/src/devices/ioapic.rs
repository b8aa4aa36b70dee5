//! The 82093AA I/O APIC: 24 interrupt input pins, each routed by its
//! redirection table entry to the local APICs as an [`InterruptMessage`].
//!
//! Modelled from the Intel 82093AA datasheet (order no. 290566), 3.0
//! "Register description", and QEMU's `hw/intc/ioapic.c` (version 0x11):
//!
//! - MMIO at [`IOAPIC_BASE`]: IOREGSEL at offset 0x00 (bits 7:0 select a
//!   register, read back), IOWIN at 0x10 (32-bit accesses only, as QEMU:
//!   narrower ones read 0 and are dropped). Other offsets read 0, writes
//!   are dropped.
//! - Registers (datasheet 3.2): ID 0x00 (bits 27:24 writable), version
//!   0x01 ([`VERSION`]: 24 entries, version 0x11), arbitration 0x02 (reads
//!   the ID, as QEMU; read-only), redirection table 0x10-0x3F (entry n at
//!   0x10 + 2n, low dword first). Other indices read 0, writes are
//!   ignored (QEMU).
//! - Redirection entry (datasheet 3.2.4): vector 7:0, delivery mode 10:8,
//!   destination mode 11, delivery status 12 (read-only; delivery here is
//!   immediate, so it reads 0), polarity 13 (1 active low), remote IRR 14
//!   (read-only), trigger mode 15 (1 level), mask 16, destination 63:56.
//!   Reset: every entry masked, everything else 0.
//!
//! Inputs: [`IoApic::set_pin`] holds a pin's electrical level;
//! [`IoApic::pulse_pin`] sends one asserting edge. Active-low polarity
//! inverts the level before the edge/level logic. An edge entry delivers
//! when its input becomes asserted; an edge that comes while the entry is
//! masked is lost (datasheet 3.2.4, bit 16; QEMU). A level entry with
//! fixed or lowest-priority delivery delivers while the input is asserted
//! and remote IRR is clear, and sets remote IRR; [`IoApic::eoi`] clears it
//! and re-delivers if the input is still asserted (ICH/QEMU behaviour).
//! A masked level entry delivers when unmasked if its input is still
//! asserted. Level entries with other delivery modes (SMI, NMI, INIT,
//! ExtINT) never see an EOI, so they do not use remote IRR: they deliver
//! when the input becomes asserted, or when unmasked while asserted.
//!
//! Output: messages wait in a queue of [`QUEUE_DEPTH`] that the caller
//! drains with [`IoApic::take_messages`] after every exit and hands to the
//! local APIC. A message that finds the queue full is dropped and counted
//! ([`IoApic::dropped`]); the local APIC would merge repeats of a vector
//! in IRR anyway.

use super::interrupt::{DeliveryMode, Destination, InterruptMessage};
use super::WriteOutcome;
use crate::mmio::MmioDevice;

/// Guest-physical base of the I/O APIC (the PC default, as in the MADT).
pub const IOAPIC_BASE: u64 = 0xFEC0_0000;
/// Bytes of MMIO the I/O APIC decodes.
pub const IOAPIC_LEN: u64 = 0x1000;
/// Number of input pins (and redirection entries).
pub const PINS: u8 = 24;
/// Offset of IOREGSEL.
pub const IOREGSEL: u64 = 0x00;
/// Offset of IOWIN.
pub const IOWIN: u64 = 0x10;
/// Most messages that wait for [`IoApic::take_messages`].
pub const QUEUE_DEPTH: usize = 32;

/// Register indices (written to IOREGSEL; datasheet 3.1).
pub mod reg {
    /// IOAPICID.
    pub const ID: u8 = 0x00;
    /// IOAPICVER.
    pub const VERSION: u8 = 0x01;
    /// IOAPICARB.
    pub const ARBITRATION: u8 = 0x02;
    /// First redirection table register (entry 0, low dword).
    pub const REDTBL: u8 = 0x10;
}

/// The version register: maximum redirection entry 23 in bits 23:16,
/// version 0x11 in bits 7:0 (datasheet 3.2.2; QEMU's default for PIIX).
pub const VERSION: u32 = ((PINS as u32 - 1) << 16) | 0x11;

/// Redirection entry bits (datasheet 3.2.4).
pub mod entry {
    /// Vector, bits 7:0.
    pub const VECTOR: u64 = 0xff;
    /// Destination mode, bit 11: 1 logical.
    pub const DEST_LOGICAL: u64 = 1 << 11;
    /// Delivery status, bit 12 (read-only).
    pub const DELIVERY_STATUS: u64 = 1 << 12;
    /// Interrupt input pin polarity, bit 13: 1 active low.
    pub const ACTIVE_LOW: u64 = 1 << 13;
    /// Remote IRR, bit 14 (read-only).
    pub const REMOTE_IRR: u64 = 1 << 14;
    /// Trigger mode, bit 15: 1 level.
    pub const LEVEL: u64 = 1 << 15;
    /// Interrupt mask, bit 16.
    pub const MASKED: u64 = 1 << 16;
    /// The bits software cannot write.
    pub const READ_ONLY: u64 = DELIVERY_STATUS | REMOTE_IRR;
}

/// The I/O APIC input an ISA IRQ drives, as the MADT's interrupt source
/// override says: IRQ 0 (the PIT) is on pin 2, the others are identity
/// mapped (ACPI 6.4, 5.2.12.5 "Interrupt Source Override Structure";
/// QEMU's `ioapic_set_irq`).
pub fn isa_irq_to_pin(irq: u8) -> u8 {
    if irq == 0 {
        2
    } else {
        irq
    }
}

/// The I/O APIC.
#[derive(Clone, Debug)]
pub struct IoApic {
    ioregsel: u8,
    /// Bits 3:0 of the ID register (bits 27:24).
    id: u8,
    redirection: [u64; PINS as usize],
    /// The electrical level of each pin, one bit per pin.
    levels: u32,
    queue: heapless::Deque<InterruptMessage, QUEUE_DEPTH>,
    dropped: u64,
}

impl Default for IoApic {
    fn default() -> Self {
        Self::new()
    }
}

impl IoApic {
    /// After reset: ID 0, every entry masked, every pin low.
    pub fn new() -> Self {
        Self {
            ioregsel: 0,
            id: 0,
            redirection: [entry::MASKED; PINS as usize],
            levels: 0,
            queue: heapless::Deque::new(),
            dropped: 0,
        }
    }

    /// The redirection entry of `pin` (`None` past the last pin).
    pub fn entry(&self, pin: u8) -> Option<u64> {
        self.redirection.get(usize::from(pin)).copied()
    }

    /// The electrical level of `pin` (low for a pin that does not exist).
    pub fn level(&self, pin: u8) -> bool {
        pin < PINS && self.levels & (1 << pin) != 0
    }

    /// Whether `pin`'s input is asserted: its level, inverted if the entry
    /// is active low.
    fn asserted(&self, pin: u8) -> bool {
        let low = self.entry(pin).is_some_and(|e| e & entry::ACTIVE_LOW != 0);
        self.level(pin) != low
    }

    /// Holds `pin` at `level` (high or low). Pins past the last do nothing.
    pub fn set_pin(&mut self, pin: u8, level: bool) {
        if pin >= PINS {
            return;
        }
        let was = self.asserted(pin);
        if level {
            self.levels |= 1 << pin;
        } else {
            self.levels &= !(1 << pin);
        }
        if self.asserted(pin) && !was {
            self.assert_edge(pin);
        }
    }

    /// One asserting edge on `pin` between two samples: the line leaves
    /// its level and comes back (a rise and fall from low, a fall and
    /// rise from high), so whichever the polarity the input asserts once
    /// and ends as it was. A level entry sees a brief assertion: it
    /// delivers if remote IRR is clear, and no EOI re-delivers it.
    pub fn pulse_pin(&mut self, pin: u8) {
        let level = self.level(pin);
        self.set_pin(pin, !level);
        self.set_pin(pin, level);
    }

    /// The input of `pin` became asserted.
    fn assert_edge(&mut self, pin: u8) {
        let Some(e) = self.entry(pin) else { return };
        if e & entry::MASKED != 0 {
            // Edges are lost while masked; a level entry delivers at
            // unmask if the input is still asserted.
            return;
        }
        if e & entry::LEVEL != 0 && uses_remote_irr(e) {
            self.service_level(pin);
        } else {
            self.deliver(e);
        }
    }

    /// A fixed or lowest-priority level entry: delivers if unmasked,
    /// asserted and remote IRR is clear, and sets remote IRR.
    fn service_level(&mut self, pin: u8) {
        let Some(e) = self.entry(pin) else { return };
        if e & (entry::MASKED | entry::REMOTE_IRR) != 0 || !self.asserted(pin) {
            return;
        }
        if let Some(slot) = self.redirection.get_mut(usize::from(pin)) {
            *slot |= entry::REMOTE_IRR;
        }
        self.deliver(e);
    }

    /// Queues the message of entry `e` (dropped if its delivery mode is
    /// reserved for the I/O APIC: 011 and 110).
    fn deliver(&mut self, e: u64) {
        let delivery = match DeliveryMode::from_bits((e >> 8) as u32) {
            Some(DeliveryMode::StartUp) | None => return,
            Some(d) => d,
        };
        let dest = (e >> 56) as u32;
        let message = InterruptMessage {
            vector: (e & entry::VECTOR) as u8,
            delivery,
            destination: if e & entry::DEST_LOGICAL != 0 {
                Destination::Logical(dest)
            } else {
                Destination::Physical(dest)
            },
            level_triggered: e & entry::LEVEL != 0,
        };
        if self.queue.push_back(message).is_err() {
            self.dropped = self.dropped.wrapping_add(1);
        }
    }

    /// Drains the messages sent since the last call, oldest first, for the
    /// local APIC. Messages not taken stay queued.
    pub fn take_messages(&mut self) -> impl Iterator<Item = InterruptMessage> + '_ {
        core::iter::from_fn(move || self.queue.pop_front())
    }

    /// Messages waiting for [`IoApic::take_messages`].
    pub fn pending_messages(&self) -> usize {
        self.queue.len()
    }

    /// Messages lost to a full queue so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The local APIC's EOI broadcast for `vector`: clears remote IRR of
    /// every level entry with that vector, and delivers again those whose
    /// input is still asserted and which are unmasked (QEMU's
    /// `ioapic_eoi_broadcast`; the 82093AA has no EOI register).
    pub fn eoi(&mut self, vector: u8) {
        for pin in 0..PINS {
            let Some(slot) = self.redirection.get_mut(usize::from(pin)) else {
                continue;
            };
            let e = *slot;
            if e & entry::VECTOR != u64::from(vector)
                || e & entry::LEVEL == 0
                || e & entry::REMOTE_IRR == 0
            {
                continue;
            }
            *slot = e & !entry::REMOTE_IRR;
            self.service_level(pin);
        }
    }

    /// The register `index` selects, for a read.
    fn read_register(&self, index: u8) -> u32 {
        match index {
            reg::ID | reg::ARBITRATION => u32::from(self.id) << 24,
            reg::VERSION => VERSION,
            _ => match redirection_index(index) {
                Some((pin, high)) => {
                    let e = self.entry(pin).unwrap_or(0);
                    if high {
                        (e >> 32) as u32
                    } else {
                        e as u32
                    }
                }
                None => 0,
            },
        }
    }

    fn write_register(&mut self, index: u8, value: u32) {
        match index {
            reg::ID => self.id = ((value >> 24) & 0xf) as u8,
            reg::VERSION | reg::ARBITRATION => {}
            _ => {
                if let Some((pin, high)) = redirection_index(index) {
                    self.write_entry(pin, high, value);
                }
            }
        }
    }

    fn write_entry(&mut self, pin: u8, high: bool, value: u32) {
        let Some(slot) = self.redirection.get_mut(usize::from(pin)) else {
            return;
        };
        let old = *slot;
        let mut e = if high {
            (old & 0xffff_ffff) | u64::from(value) << 32
        } else {
            (old & !0xffff_ffff) | u64::from(value)
        };
        e = (e & !entry::READ_ONLY) | (old & entry::READ_ONLY);
        if e & entry::LEVEL == 0 {
            // An edge entry has no remote IRR: Linux clears a stuck one by
            // switching the entry to edge and back (QEMU's
            // `ioapic_fix_edge_remote_irr`).
            e &= !entry::REMOTE_IRR;
        }
        *slot = e;
        // A level still asserted is delivered at unmask (or when the entry
        // becomes a level one); edges that came while masked are lost.
        if e & entry::LEVEL != 0 && e & entry::MASKED == 0 && self.asserted(pin) {
            if uses_remote_irr(e) {
                self.service_level(pin);
            } else if old & entry::MASKED != 0 || old & entry::LEVEL == 0 {
                self.deliver(e);
            }
        }
    }
}

/// Whether a level entry holds remote IRR until an EOI: only fixed and
/// lowest-priority messages are EOIed by a local APIC.
fn uses_remote_irr(e: u64) -> bool {
    (e >> 8) & 7 <= 1
}

/// The pin and half (true: bits 63:32) of redirection register `index`.
fn redirection_index(index: u8) -> Option<(u8, bool)> {
    let n = index.checked_sub(reg::REDTBL)?;
    let pin = n / 2;
    (pin < PINS).then_some((pin, n & 1 != 0))
}

impl MmioDevice for IoApic {
    fn read(&mut self, offset: u64, size: u8) -> u64 {
        match offset {
            IOREGSEL => u64::from(self.ioregsel),
            IOWIN if size == 4 => u64::from(self.read_register(self.ioregsel)),
            _ => 0,
        }
    }

    fn write(&mut self, offset: u64, size: u8, value: u64) -> WriteOutcome {
        match offset {
            // Bits 7:0 select; 31:8 are reserved.
            IOREGSEL => self.ioregsel = value as u8,
            IOWIN if size == 4 => self.write_register(self.ioregsel, value as u32),
            _ => {}
        }
        WriteOutcome::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn write_reg(io: &mut IoApic, index: u8, value: u32) {
        io.write(IOREGSEL, 4, u64::from(index));
        io.write(IOWIN, 4, u64::from(value));
    }

    fn read_reg(io: &mut IoApic, index: u8) -> u32 {
        io.write(IOREGSEL, 4, u64::from(index));
        io.read(IOWIN, 4) as u32
    }

    /// Programs `pin` with a 64-bit entry, high half first (as Linux does
    /// to keep it masked while half written).
    fn program(io: &mut IoApic, pin: u8, e: u64) {
        write_reg(io, reg::REDTBL + 2 * pin + 1, (e >> 32) as u32);
        write_reg(io, reg::REDTBL + 2 * pin, e as u32);
    }

    fn take(io: &mut IoApic) -> heapless::Vec<InterruptMessage, QUEUE_DEPTH> {
        io.take_messages().collect()
    }

    fn fixed(vector: u8, dest: u32, level: bool) -> InterruptMessage {
        InterruptMessage {
            vector,
            delivery: DeliveryMode::Fixed,
            destination: Destination::Physical(dest),
            level_triggered: level,
        }
    }

    #[test]
    fn id_version_arbitration_and_reset_state() {
        let mut io = IoApic::new();
        assert_eq!(read_reg(&mut io, reg::VERSION), 0x0017_0011);
        write_reg(&mut io, reg::ID, 0xffff_ffff);
        assert_eq!(read_reg(&mut io, reg::ID), 0x0f00_0000);
        assert_eq!(read_reg(&mut io, reg::ARBITRATION), 0x0f00_0000);
        write_reg(&mut io, reg::VERSION, 0);
        write_reg(&mut io, reg::ARBITRATION, 0);
        assert_eq!(read_reg(&mut io, reg::VERSION), VERSION);
        for pin in 0..PINS {
            assert_eq!(read_reg(&mut io, reg::REDTBL + 2 * pin), 1 << 16);
            assert_eq!(read_reg(&mut io, reg::REDTBL + 2 * pin + 1), 0);
        }
        // IOREGSEL reads back its low byte.
        io.write(IOREGSEL, 4, 0x1234_5678);
        assert_eq!(io.read(IOREGSEL, 4), 0x78);
    }

    #[test]
    fn out_of_range_indices_and_offsets() {
        let mut io = IoApic::new();
        for index in [0x03, 0x0f, 0x40, 0x41, 0xff] {
            write_reg(&mut io, index, 0xffff_ffff);
            assert_eq!(read_reg(&mut io, index), 0, "index {index:#x}");
        }
        // Nothing changed in the table.
        assert!((0..PINS).all(|p| io.entry(p) == Some(entry::MASKED)));
        // Narrow IOWIN accesses and other offsets.
        io.write(IOREGSEL, 4, u64::from(reg::VERSION));
        assert_eq!(io.read(IOWIN, 2), 0);
        assert_eq!(io.read(0x20, 4), 0);
        io.write(IOREGSEL, 4, u64::from(reg::ID));
        io.write(IOWIN, 1, 0xff00_0000);
        io.write(0x04, 4, 0xffff_ffff);
        assert_eq!(read_reg(&mut io, reg::ID), 0);
    }

    #[test]
    fn entries_keep_their_read_only_bits() {
        let mut io = IoApic::new();
        // Software cannot set delivery status or remote IRR.
        write_reg(&mut io, reg::REDTBL + 4, 0xffff_ffff);
        write_reg(&mut io, reg::REDTBL + 5, 0xff00_0000);
        assert_eq!(io.entry(2), Some(0xff00_0000_ffff_afff));
        assert_eq!(read_reg(&mut io, reg::REDTBL + 5), 0xff00_0000);
        // Level, fixed, unmasked, asserted: remote IRR set, and a write
        // does not clear it.
        program(&mut io, 9, 0x0000_0000_0000_8039);
        io.set_pin(9, true);
        assert_eq!(take(&mut io).as_slice(), &[fixed(0x39, 0, true)]);
        write_reg(&mut io, reg::REDTBL + 18, 0x8039);
        assert_ne!(io.entry(9).unwrap() & entry::REMOTE_IRR, 0);
        assert!(take(&mut io).is_empty());
    }

    #[test]
    fn edge_pins_deliver_on_rising_edges() {
        let mut io = IoApic::new();
        program(&mut io, 2, 0x0300_0000_0000_0830); // logical dest 3, vector 0x30
        io.set_pin(2, true);
        io.set_pin(2, true); // no new edge
        io.set_pin(2, false);
        io.pulse_pin(2);
        let m = InterruptMessage {
            vector: 0x30,
            delivery: DeliveryMode::Fixed,
            destination: Destination::Logical(3),
            level_triggered: false,
        };
        assert_eq!(take(&mut io).as_slice(), &[m, m]);
        // No remote IRR for edges; EOI does nothing.
        assert_eq!(io.entry(2).unwrap() & entry::REMOTE_IRR, 0);
        io.eoi(0x30);
        assert!(take(&mut io).is_empty());
        // A pulse on a pin held high is still one edge.
        io.set_pin(2, true);
        io.pulse_pin(2);
        assert_eq!(take(&mut io).len(), 2);
        assert!(io.level(2));
    }

    #[test]
    fn level_pins_hold_remote_irr_until_eoi() {
        let mut io = IoApic::new();
        program(&mut io, 11, 0x0100_0000_0000_8041);
        io.set_pin(11, true);
        assert_eq!(take(&mut io).as_slice(), &[fixed(0x41, 1, true)]);
        assert_ne!(io.entry(11).unwrap() & entry::REMOTE_IRR, 0);
        // Still asserted, remote IRR set: nothing more, even on re-assert.
        io.set_pin(11, false);
        io.set_pin(11, true);
        assert!(take(&mut io).is_empty());
        // EOI of another vector does nothing.
        io.eoi(0x42);
        assert!(take(&mut io).is_empty());
        // EOI while still asserted: delivered again.
        io.eoi(0x41);
        assert_eq!(take(&mut io).as_slice(), &[fixed(0x41, 1, true)]);
        // Deasserted, then EOI: remote IRR clears and nothing comes.
        io.set_pin(11, false);
        io.eoi(0x41);
        assert!(take(&mut io).is_empty());
        assert_eq!(io.entry(11).unwrap() & entry::REMOTE_IRR, 0);
        io.pulse_pin(11);
        assert_eq!(take(&mut io).len(), 1);
        io.eoi(0x41);
        assert!(take(&mut io).is_empty(), "the pulse is over");
    }

    #[test]
    fn switching_to_edge_clears_remote_irr() {
        let mut io = IoApic::new();
        program(&mut io, 5, 0x8050);
        io.set_pin(5, true);
        assert_eq!(take(&mut io).len(), 1);
        // Linux's EOI emulation: mask, edge, then level again.
        write_reg(&mut io, reg::REDTBL + 10, 0x1_0050);
        write_reg(&mut io, reg::REDTBL + 10, 0x1_8050);
        assert_eq!(io.entry(5).unwrap() & entry::REMOTE_IRR, 0);
        write_reg(&mut io, reg::REDTBL + 10, 0x8050);
        assert_eq!(take(&mut io).as_slice(), &[fixed(0x50, 0, true)]);
    }

    #[test]
    fn masked_pins() {
        let mut io = IoApic::new();
        // Edge while masked is lost.
        program(&mut io, 4, 0x1_0034);
        io.set_pin(4, true);
        write_reg(&mut io, reg::REDTBL + 8, 0x0034);
        assert!(take(&mut io).is_empty());
        io.set_pin(4, false);
        io.set_pin(4, true);
        assert_eq!(take(&mut io).as_slice(), &[fixed(0x34, 0, false)]);
        // Level still asserted at unmask is delivered.
        program(&mut io, 10, 0x1_8044);
        io.set_pin(10, true);
        assert!(take(&mut io).is_empty());
        write_reg(&mut io, reg::REDTBL + 20, 0x8044);
        assert_eq!(take(&mut io).as_slice(), &[fixed(0x44, 0, true)]);
        // A level that went away before unmask is not.
        program(&mut io, 12, 0x1_8045);
        io.set_pin(12, true);
        io.set_pin(12, false);
        write_reg(&mut io, reg::REDTBL + 24, 0x8045);
        assert!(take(&mut io).is_empty());
        // EOI of a masked, asserted entry clears remote IRR without delivery.
        io.set_pin(10, true);
        write_reg(&mut io, reg::REDTBL + 20, 0x1_8044);
        io.eoi(0x44);
        assert!(take(&mut io).is_empty());
        assert_eq!(io.entry(10).unwrap() & entry::REMOTE_IRR, 0);
    }

    #[test]
    fn active_low_inverts_the_input() {
        let mut io = IoApic::new();
        // Level, active low: asserted while the line is low.
        io.set_pin(9, true);
        program(&mut io, 9, 0xa039);
        assert!(take(&mut io).is_empty(), "line high: not asserted");
        io.set_pin(9, false);
        assert_eq!(take(&mut io).as_slice(), &[fixed(0x39, 0, true)]);
        io.set_pin(9, true);
        io.eoi(0x39);
        assert!(take(&mut io).is_empty());
        // Edge, active low: the falling edge delivers.
        program(&mut io, 3, 0x2033);
        io.set_pin(3, true);
        assert!(take(&mut io).is_empty());
        io.set_pin(3, false);
        assert_eq!(take(&mut io).len(), 1);
        io.pulse_pin(3);
        assert_eq!(take(&mut io).len(), 1);
    }

    #[test]
    fn other_delivery_modes() {
        let mut io = IoApic::new();
        // Level NMI: no remote IRR, once per assertion.
        program(&mut io, 6, 0x0000_0000_0000_8400);
        io.set_pin(6, true);
        let m = take(&mut io);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].delivery, DeliveryMode::Nmi);
        assert_eq!(io.entry(6).unwrap() & entry::REMOTE_IRR, 0);
        write_reg(&mut io, reg::REDTBL + 12, 0x8400);
        assert!(take(&mut io).is_empty());
        // ExtINT edge.
        program(&mut io, 0, 0x0700);
        io.pulse_pin(0);
        assert_eq!(take(&mut io)[0].delivery, DeliveryMode::ExtInt);
        // Reserved modes (011, 110) send nothing.
        program(&mut io, 7, 0x0337);
        program(&mut io, 8, 0x0638);
        io.pulse_pin(7);
        io.pulse_pin(8);
        assert!(take(&mut io).is_empty());
        // Lowest priority.
        program(&mut io, 1, 0x0131);
        io.pulse_pin(1);
        assert_eq!(take(&mut io)[0].delivery, DeliveryMode::LowestPriority);
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let mut io = IoApic::new();
        program(&mut io, 1, 0x0031);
        for _ in 0..QUEUE_DEPTH + 3 {
            io.pulse_pin(1);
        }
        assert_eq!(io.pending_messages(), QUEUE_DEPTH);
        assert_eq!(io.dropped(), 3);
        assert_eq!(io.take_messages().count(), QUEUE_DEPTH);
        assert_eq!(io.pending_messages(), 0);
    }

    #[test]
    fn isa_irqs_map_to_pins() {
        assert_eq!(isa_irq_to_pin(0), 2);
        assert_eq!(isa_irq_to_pin(1), 1);
        assert_eq!(isa_irq_to_pin(2), 2);
        assert_eq!(isa_irq_to_pin(9), 9);
        assert_eq!(isa_irq_to_pin(15), 15);
        // Pins past the last are ignored.
        let mut io = IoApic::new();
        io.set_pin(24, true);
        io.pulse_pin(200);
        assert!(!io.level(24));
        assert_eq!(io.entry(24), None);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Read(u64, u8),
        Write(u64, u8, u64),
        Pin(u8, bool),
        Pulse(u8),
        Eoi(u8),
        Take,
    }

    fn op() -> impl Strategy<Value = Op> {
        let offset = prop_oneof![Just(IOREGSEL), Just(IOWIN), any::<u64>()];
        let size = prop_oneof![Just(1u8), Just(2), Just(4), Just(8), any::<u8>()];
        prop_oneof![
            (offset.clone(), size.clone()).prop_map(|(o, s)| Op::Read(o, s)),
            (offset, size, any::<u64>()).prop_map(|(o, s, v)| Op::Write(o, s, v)),
            (0u8..30, any::<bool>()).prop_map(|(p, l)| Op::Pin(p, l)),
            any::<u8>().prop_map(Op::Pulse),
            any::<u8>().prop_map(Op::Eoi),
            Just(Op::Take),
        ]
    }

    proptest! {
        #[test]
        fn random_accesses_never_panic(ops in proptest::collection::vec(op(), 0..200)) {
            let mut io = IoApic::new();
            for op in ops {
                match op {
                    Op::Read(o, s) => {
                        let v = io.read(o, s);
                        prop_assert!(v <= u64::from(u32::MAX));
                    }
                    Op::Write(o, s, v) => {
                        prop_assert_eq!(io.write(o, s, v), WriteOutcome::Continue);
                    }
                    Op::Pin(p, l) => io.set_pin(p, l),
                    Op::Pulse(p) => io.pulse_pin(p),
                    Op::Eoi(v) => io.eoi(v),
                    Op::Take => { io.take_messages().for_each(drop); }
                }
                prop_assert!(io.pending_messages() <= QUEUE_DEPTH);
                for pin in 0..PINS {
                    let e = io.entry(pin).unwrap();
                    prop_assert_eq!(e & entry::DELIVERY_STATUS, 0);
                    if e & entry::LEVEL == 0 {
                        prop_assert_eq!(e & entry::REMOTE_IRR, 0);
                    }
                }
            }
        }
    }
}
