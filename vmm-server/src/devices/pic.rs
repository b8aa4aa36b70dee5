//! The PC's two 8259A programmable interrupt controllers, cascaded: the
//! slave's INT output drives the master's IR2 (Intel 8259A datasheet,
//! "Cascading"), plus the edge/level control registers (ELCR) of the PIIX
//! and later chipsets at ports 0x4d0/0x4d1.
//!
//! Modelled: the initialization sequence (ICW1-ICW4; single or cascade
//! mode, 8086 mode assumed), the mask register (OCW1), non-specific,
//! specific and rotating EOIs, automatic EOI with and without rotation,
//! priority setting (OCW2), IRR/ISR reads, the poll command and the special
//! mask mode (OCW3), special fully nested mode on the master, edge- and
//! level-triggered inputs (ELCR; ICW1's LTIM bit is ignored as on the PIIX,
//! where the ELCR decides), and spurious IRQ 7/15 when a request goes away
//! before the acknowledge.
//!
//! Before the guest initializes a chip, its mask register masks every input,
//! so that a BIOS-less guest that never programs the PIC receives nothing.
//!
//! Ports, as offsets from 0x20 (see [`RANGES`]): 0x00/0x01 master, 0x80/0x81
//! slave (ports 0xa0/0xa1), 0x4b0/0x4b1 ELCR (ports 0x4d0/0x4d1).

use super::{read_bytes, IoSize, PortDevice, WriteOutcome};

/// The port ranges the pair decodes: master, slave, ELCR. Offsets seen by
/// [`PortDevice`] count from the first range's base.
pub const RANGES: [(u16, u16); 3] = [(0x20, 2), (0xa0, 2), (0x4d0, 2)];
/// Base of the first range.
pub const BASE: u16 = 0x20;
/// Offset of the slave's ports.
pub const SLAVE: u16 = 0xa0 - BASE;
/// Offset of the ELCR.
pub const ELCR: u16 = 0x4d0 - BASE;

/// The master's input the slave is cascaded on.
const CASCADE_IRQ: u8 = 2;

#[derive(Clone, Debug, PartialEq, Eq)]
struct Chip {
    /// Interrupt request register.
    irr: u8,
    /// Interrupt mask register (OCW1).
    imr: u8,
    /// In-service register.
    isr: u8,
    /// The IR with the highest priority (rotation).
    lowest_priority_plus_one: u8,
    /// ICW2: vector of IR0 (bits 7:3).
    vector_base: u8,
    /// OCW3 RR/RIS: the next read of port 0 returns ISR (else IRR).
    read_isr: bool,
    /// OCW3 P: the next read of port 0 is a poll.
    poll: bool,
    /// OCW3 SMM.
    special_mask: bool,
    /// Which initialization word comes next on port 1 (0 = none).
    init_state: u8,
    /// ICW1 IC4: an ICW4 follows.
    needs_icw4: bool,
    /// ICW1 SNGL: no ICW3.
    single: bool,
    /// ICW4 AEOI.
    auto_eoi: bool,
    /// OCW2 rotate in automatic EOI mode.
    rotate_on_auto_eoi: bool,
    /// ICW4 SFNM.
    special_fully_nested: bool,
    /// ICW3 as written.
    icw3: u8,
    /// ELCR: bit set = level-triggered input.
    elcr: u8,
    /// ELCR bits that may be set.
    elcr_mask: u8,
    /// The input lines as last seen (edge detection).
    lines: u8,
    /// The guest has written ICW1 at least once.
    initialized: bool,
}

impl Chip {
    fn new(elcr_mask: u8) -> Self {
        Self {
            irr: 0,
            imr: 0xff,
            isr: 0,
            lowest_priority_plus_one: 0,
            vector_base: 0,
            read_isr: false,
            poll: false,
            special_mask: false,
            init_state: 0,
            needs_icw4: false,
            single: false,
            auto_eoi: false,
            rotate_on_auto_eoi: false,
            special_fully_nested: false,
            icw3: 0,
            elcr: 0,
            elcr_mask,
            lines: 0,
            initialized: false,
        }
    }

    /// The priority (0 = highest) of the highest-priority bit in `mask`, or
    /// 8 for none.
    fn priority(&self, mask: u8) -> u8 {
        (0..8)
            .find(|p| mask & (1 << ((p + self.lowest_priority_plus_one) & 7)) != 0)
            .unwrap_or(8)
    }

    /// The IR this chip would signal now, if any.
    fn pending(&self, is_master: bool) -> Option<u8> {
        let req = self.priority(self.irr & !self.imr);
        if req == 8 {
            return None;
        }
        let mut in_service = self.isr;
        if self.special_mask {
            in_service &= !self.imr;
        }
        if self.special_fully_nested && is_master {
            in_service &= !(1 << CASCADE_IRQ);
        }
        let cur = self.priority(in_service);
        (req < cur).then_some((req + self.lowest_priority_plus_one) & 7)
    }

    fn set_line(&mut self, ir: u8, high: bool) {
        let m = 1u8 << ir;
        if self.elcr & m != 0 {
            if high {
                self.irr |= m;
            } else {
                self.irr &= !m;
            }
        } else if high && self.lines & m == 0 {
            self.irr |= m;
        }
        if high {
            self.lines |= m;
        } else {
            self.lines &= !m;
        }
    }

    /// The acknowledge of `ir`: into service (unless automatic EOI), out of
    /// the request register when edge-triggered.
    fn acknowledge(&mut self, ir: u8) {
        let m = 1u8 << ir;
        if self.auto_eoi {
            if self.rotate_on_auto_eoi {
                self.lowest_priority_plus_one = (ir + 1) & 7;
            }
        } else {
            self.isr |= m;
        }
        if self.elcr & m == 0 {
            self.irr &= !m;
        }
    }

    fn write_command(&mut self, v: u8) {
        if v & 0x10 != 0 {
            // ICW1: reset, then ICW2 [ICW3] [ICW4] follow on port 1.
            let elcr = (self.elcr, self.elcr_mask);
            *self = Self {
                irr: self.irr & elcr.0,
                imr: 0,
                lines: 0,
                elcr: elcr.0,
                ..Self::new(elcr.1)
            };
            self.initialized = true;
            self.needs_icw4 = v & 0x01 != 0;
            self.single = v & 0x02 != 0;
            self.init_state = 2;
        } else if v & 0x08 != 0 {
            // OCW3.
            if v & 0x04 != 0 {
                self.poll = true;
            }
            if v & 0x02 != 0 {
                self.read_isr = v & 0x01 != 0;
            }
            if v & 0x40 != 0 {
                self.special_mask = v & 0x20 != 0;
            }
        } else {
            // OCW2: R SL EOI in bits 7:5, level in 2:0.
            let level = v & 7;
            match v >> 5 {
                0b000 => self.rotate_on_auto_eoi = false,
                0b100 => self.rotate_on_auto_eoi = true,
                // Non-specific EOI (with rotation).
                cmd @ (0b001 | 0b101) => {
                    let p = self.priority(self.isr);
                    if p != 8 {
                        let ir = (p + self.lowest_priority_plus_one) & 7;
                        self.isr &= !(1 << ir);
                        if cmd == 0b101 {
                            self.lowest_priority_plus_one = (ir + 1) & 7;
                        }
                    }
                }
                // Specific EOI (with rotation).
                cmd @ (0b011 | 0b111) => {
                    self.isr &= !(1 << level);
                    if cmd == 0b111 {
                        self.lowest_priority_plus_one = (level + 1) & 7;
                    }
                }
                // Set priority: `level` becomes the lowest.
                0b110 => self.lowest_priority_plus_one = (level + 1) & 7,
                // 0b010: no operation.
                _ => {}
            }
        }
    }

    fn write_data(&mut self, v: u8) {
        match self.init_state {
            2 => {
                self.vector_base = v & 0xf8;
                self.init_state = match (self.single, self.needs_icw4) {
                    (false, _) => 3,
                    (true, true) => 4,
                    (true, false) => 0,
                };
            }
            3 => {
                self.icw3 = v;
                self.init_state = if self.needs_icw4 { 4 } else { 0 };
            }
            4 => {
                // Bit 0 (8086 mode) is assumed; buffered mode is irrelevant.
                self.auto_eoi = v & 0x02 != 0;
                self.special_fully_nested = v & 0x10 != 0;
                self.init_state = 0;
            }
            _ => self.imr = v,
        }
    }

    fn read_command(&mut self, is_master: bool) -> u8 {
        if self.poll {
            self.poll = false;
            match self.pending(is_master) {
                Some(ir) => {
                    self.acknowledge(ir);
                    0x80 | ir
                }
                None => 0,
            }
        } else if self.read_isr {
            self.isr
        } else {
            self.irr
        }
    }
}

/// The master and slave 8259A with their ELCRs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DualPic {
    chips: [Chip; 2],
}

impl Default for DualPic {
    fn default() -> Self {
        Self::new()
    }
}

impl DualPic {
    /// Both chips uninitialized, every input masked; IRQ 0-2, 8 and 13 may
    /// not be made level-triggered (their ELCR bits read as zero).
    pub fn new() -> Self {
        Self {
            chips: [Chip::new(0xf8), Chip::new(0xde)],
        }
    }

    /// Drives ISA line `irq` (0..16) high or low.
    pub fn set_irq(&mut self, irq: u8, high: bool) {
        if irq < 16 {
            self.chips[usize::from(irq >> 3)].set_line(irq & 7, high);
            self.update_cascade();
        }
    }

    /// A rising edge on `irq` (the line goes high, then back low).
    pub fn pulse_irq(&mut self, irq: u8) {
        self.set_irq(irq, true);
        self.set_irq(irq, false);
    }

    /// The slave's INT output is the master's IR2.
    fn update_cascade(&mut self) {
        let slave_int = self.chips[1].pending(false).is_some();
        self.chips[0].set_line(CASCADE_IRQ, slave_int);
    }

    /// The master's INT output: an interrupt is waiting for the CPU.
    pub fn interrupt_pending(&self) -> bool {
        self.chips[0].pending(true).is_some()
    }

    /// The CPU's interrupt acknowledge: returns the vector and moves the
    /// interrupt into service. A request that went away answers with the
    /// spurious vector of IR7 (of the slave when it was cascaded).
    pub fn acknowledge(&mut self) -> u8 {
        let vector = match self.chips[0].pending(true) {
            Some(CASCADE_IRQ) => {
                let slave = match self.chips[1].pending(false) {
                    Some(ir) => {
                        self.chips[1].acknowledge(ir);
                        ir
                    }
                    None => 7,
                };
                self.chips[0].acknowledge(CASCADE_IRQ);
                self.chips[1].vector_base | slave
            }
            Some(ir) => {
                self.chips[0].acknowledge(ir);
                self.chips[0].vector_base | ir
            }
            None => self.chips[0].vector_base | 7,
        };
        self.update_cascade();
        vector
    }

    /// Whether the guest has initialized the master (written its ICW1).
    pub fn initialized(&self) -> bool {
        self.chips[0].initialized
    }

    /// IRR, ISR and IMR of the master (`slave` false) or slave, for tests
    /// and reports.
    pub fn registers(&self, slave: bool) -> (u8, u8, u8) {
        let c = &self.chips[usize::from(slave)];
        (c.irr, c.isr, c.imr)
    }

    /// The vector base the guest programmed with ICW2.
    pub fn vector_base(&self, slave: bool) -> u8 {
        self.chips[usize::from(slave)].vector_base
    }

    /// Reads one register at `offset` (see the module docs).
    pub fn read_register(&mut self, offset: u16) -> u8 {
        let v = match offset {
            0 => self.chips[0].read_command(true),
            1 => self.chips[0].imr,
            SLAVE => self.chips[1].read_command(false),
            o if o == SLAVE + 1 => self.chips[1].imr,
            ELCR => self.chips[0].elcr,
            o if o == ELCR + 1 => self.chips[1].elcr,
            _ => 0xff,
        };
        self.update_cascade();
        v
    }

    /// Writes one register at `offset` (see the module docs).
    pub fn write_register(&mut self, offset: u16, v: u8) {
        match offset {
            0 => self.chips[0].write_command(v),
            1 => self.chips[0].write_data(v),
            SLAVE => self.chips[1].write_command(v),
            o if o == SLAVE + 1 => self.chips[1].write_data(v),
            ELCR => self.chips[0].elcr = v & self.chips[0].elcr_mask,
            o if o == ELCR + 1 => self.chips[1].elcr = v & self.chips[1].elcr_mask,
            _ => {}
        }
        self.update_cascade();
    }
}

impl PortDevice for DualPic {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What Linux (`init_8259A`) and most BIOSes write: vector bases 0x30
    /// and 0x38 here, cascade on IR2, 8086 mode, then masks.
    fn initialized(auto_eoi: bool) -> DualPic {
        let mut p = DualPic::new();
        let icw4 = if auto_eoi { 0x03 } else { 0x01 };
        for (cmd, data, base, icw3) in [(0, 1, 0x30, 0x04), (SLAVE, SLAVE + 1, 0x38, 0x02)] {
            p.write_register(cmd, 0x11);
            p.write_register(data, base);
            p.write_register(data, icw3);
            p.write_register(data, icw4);
        }
        p.write_register(1, 0x00);
        p.write_register(SLAVE + 1, 0x00);
        p
    }

    #[test]
    fn everything_is_masked_until_initialized() {
        let mut p = DualPic::new();
        p.pulse_irq(0);
        p.pulse_irq(9);
        assert!(!p.interrupt_pending());
        assert!(!p.initialized());
        assert_eq!(p.read_register(1), 0xff);
        assert_eq!(p.read_register(SLAVE + 1), 0xff);
    }

    #[test]
    fn init_words_set_the_vector_base_and_clear_the_mask() {
        let mut p = initialized(false);
        assert!(p.initialized());
        assert_eq!((p.vector_base(false), p.vector_base(true)), (0x30, 0x38));
        assert_eq!(p.read_register(1), 0);
        // The low three bits of ICW2 are ignored in 8086 mode.
        p.write_register(0, 0x11);
        p.write_register(1, 0x47);
        p.write_register(1, 0x04);
        p.write_register(1, 0x01);
        assert_eq!(p.vector_base(false), 0x40);
    }

    #[test]
    fn single_mode_without_icw4_takes_only_icw2() {
        let mut p = DualPic::new();
        p.write_register(0, 0x12); // SNGL, no IC4
        p.write_register(1, 0x08);
        p.write_register(1, 0xfe); // already OCW1
        assert_eq!(p.read_register(1), 0xfe);
        p.pulse_irq(0);
        assert_eq!(p.acknowledge(), 0x08);
    }

    #[test]
    fn an_edge_is_latched_acknowledged_and_ended() {
        let mut p = initialized(false);
        p.pulse_irq(0);
        assert!(p.interrupt_pending());
        assert_eq!(p.registers(false), (0x01, 0x00, 0x00));
        assert_eq!(p.acknowledge(), 0x30);
        assert_eq!(p.registers(false), (0x00, 0x01, 0x00));
        assert!(!p.interrupt_pending());
        // A second tick while IR0 is in service waits (same priority).
        p.pulse_irq(0);
        assert!(!p.interrupt_pending());
        p.write_register(0, 0x20); // non-specific EOI
        assert!(p.interrupt_pending());
        assert_eq!(p.acknowledge(), 0x30);
    }

    #[test]
    fn a_held_edge_line_latches_once() {
        let mut p = initialized(false);
        p.set_irq(4, true);
        assert_eq!(p.acknowledge(), 0x34);
        p.write_register(0, 0x20);
        p.set_irq(4, true);
        assert!(
            !p.interrupt_pending(),
            "no new edge while the line stays high"
        );
        p.set_irq(4, false);
        p.set_irq(4, true);
        assert!(p.interrupt_pending());
    }

    #[test]
    fn priority_and_nesting() {
        let mut p = initialized(false);
        p.pulse_irq(4);
        assert_eq!(p.acknowledge(), 0x34);
        // A higher priority request nests, a lower one waits.
        p.pulse_irq(6);
        assert!(!p.interrupt_pending());
        p.pulse_irq(1);
        assert_eq!(p.acknowledge(), 0x31);
        assert_eq!(p.registers(false).1, 0b0001_0010);
        // Non-specific EOI ends the highest-priority one in service (IR1).
        p.write_register(0, 0x20);
        assert_eq!(p.registers(false).1, 0b0001_0000);
        assert!(!p.interrupt_pending(), "IR6 still waits for IR4");
        // Specific EOI of IR4.
        p.write_register(0, 0x64);
        assert_eq!(p.acknowledge(), 0x36);
    }

    #[test]
    fn masks_hold_requests_back() {
        let mut p = initialized(false);
        p.write_register(1, 0x01);
        p.pulse_irq(0);
        assert!(!p.interrupt_pending());
        assert_eq!(
            p.registers(false).0,
            1,
            "IRR still latches a masked request"
        );
        p.write_register(1, 0x00);
        assert_eq!(p.acknowledge(), 0x30);
    }

    #[test]
    fn irr_and_isr_reads_through_ocw3() {
        let mut p = initialized(false);
        p.pulse_irq(3);
        p.pulse_irq(5);
        assert_eq!(p.read_register(0), 0b0010_1000, "IRR after reset");
        p.acknowledge();
        p.write_register(0, 0x0b); // read ISR
        assert_eq!(p.read_register(0), 0b0000_1000);
        assert_eq!(p.read_register(0), 0b0000_1000, "the selection sticks");
        p.write_register(0, 0x0a); // read IRR
        assert_eq!(p.read_register(0), 0b0010_0000);
    }

    #[test]
    fn the_slave_cascades_on_ir2() {
        let mut p = initialized(false);
        p.pulse_irq(12);
        assert!(p.interrupt_pending());
        assert_eq!(p.acknowledge(), 0x3c);
        assert_eq!(p.registers(false).1, 0x04, "master IR2 in service");
        assert_eq!(p.registers(true).1, 0x10, "slave IR4 in service");
        // Masking IR2 on the master hides the slave.
        p.write_register(SLAVE, 0x20);
        p.write_register(0, 0x20);
        p.write_register(1, 0x04);
        p.pulse_irq(8);
        assert!(!p.interrupt_pending());
        p.write_register(1, 0x00);
        assert_eq!(p.acknowledge(), 0x38);
    }

    #[test]
    fn a_vanished_level_request_is_spurious() {
        let mut p = initialized(false);
        p.write_register(ELCR, 0xff);
        assert_eq!(p.read_register(ELCR), 0xf8, "IRQ 0-2 stay edge-triggered");
        p.write_register(ELCR + 1, 0xff);
        assert_eq!(p.read_register(ELCR + 1), 0xde, "IRQ 8 and 13 too");
        p.set_irq(5, true);
        assert!(p.interrupt_pending());
        p.set_irq(5, false);
        assert!(!p.interrupt_pending(), "level request withdrawn");
        assert_eq!(p.acknowledge(), 0x37, "spurious IRQ 7");
        assert_eq!(p.registers(false).1, 0, "and nothing in service");
        // Spurious on the slave: IRQ 15 with IR2 in service on the master.
        p.set_irq(11, true);
        assert!(p.interrupt_pending());
        p.set_irq(11, false);
        assert_eq!(p.acknowledge(), 0x3f, "spurious IRQ 15");
        assert_eq!(
            p.registers(false).1,
            0x04,
            "the master's IR2 is in service: the guest must EOI the master"
        );
    }

    #[test]
    fn a_level_request_stays_until_the_line_drops() {
        let mut p = initialized(false);
        p.write_register(ELCR + 1, 0x08); // IRQ 11 level
        p.set_irq(11, true);
        assert_eq!(p.acknowledge(), 0x3b);
        p.write_register(SLAVE, 0x20);
        p.write_register(0, 0x20);
        assert!(p.interrupt_pending(), "still asserted after EOI");
        p.set_irq(11, false);
        assert_eq!(
            p.registers(true).0,
            0,
            "the slave's request follows its line"
        );
        // The master latched IR2's edge when the slave asked again after the
        // EOI: the CPU gets the slave's spurious IRQ 15, as on hardware.
        assert_eq!(p.acknowledge(), 0x3f);
    }

    #[test]
    fn automatic_eoi_and_rotation() {
        let mut p = initialized(true);
        p.pulse_irq(1);
        assert_eq!(p.acknowledge(), 0x31);
        assert_eq!(p.registers(false).1, 0, "nothing stays in service");
        // Rotate in AEOI mode: the acknowledged IR becomes the lowest.
        p.write_register(0, 0x80);
        p.pulse_irq(0);
        p.pulse_irq(3);
        assert_eq!(p.acknowledge(), 0x30);
        assert_eq!(p.acknowledge(), 0x33);
        p.pulse_irq(0);
        p.pulse_irq(4);
        assert_eq!(p.acknowledge(), 0x34, "IR4 now outranks IR0");
    }

    #[test]
    fn set_priority_and_rotate_on_eoi() {
        let mut p = initialized(false);
        p.write_register(0, 0xc4); // IR4 lowest: IR5 highest
        p.pulse_irq(0);
        p.pulse_irq(6);
        assert_eq!(p.acknowledge(), 0x36);
        p.write_register(0, 0xa0); // rotate on non-specific EOI
        assert_eq!(p.acknowledge(), 0x30);
        p.write_register(0, 0xe0); // rotate on specific EOI of IR0
        p.pulse_irq(7);
        p.pulse_irq(1);
        assert_eq!(p.acknowledge(), 0x31, "IR1 highest after IR0 became lowest");
    }

    #[test]
    fn the_poll_command() {
        let mut p = initialized(false);
        p.write_register(0, 0x0c);
        assert_eq!(p.read_register(0), 0, "nothing pending");
        p.pulse_irq(6);
        p.write_register(0, 0x0c);
        assert_eq!(p.read_register(0), 0x86);
        assert_eq!(p.registers(false).1, 0x40, "poll acknowledges");
        assert_eq!(p.read_register(0), 0, "IRR again after the poll");
    }

    #[test]
    fn special_mask_mode_lets_lower_priorities_in() {
        let mut p = initialized(false);
        p.pulse_irq(2 + 1);
        assert_eq!(p.acknowledge(), 0x33);
        p.write_register(1, 0x08); // mask the one in service
        p.write_register(0, 0x68); // set special mask
        p.pulse_irq(5);
        assert_eq!(p.acknowledge(), 0x35);
        p.write_register(0, 0x48); // reset special mask
        p.pulse_irq(6);
        assert!(!p.interrupt_pending());
    }

    #[test]
    fn special_fully_nested_mode_lets_the_slave_nest() {
        let mut p = DualPic::new();
        for (cmd, data, base, icw3, icw4) in [
            (0, 1, 0x30, 0x04, 0x11),
            (SLAVE, SLAVE + 1, 0x38, 0x02, 0x01),
        ] {
            p.write_register(cmd, 0x11);
            p.write_register(data, base);
            p.write_register(data, icw3);
            p.write_register(data, icw4);
        }
        p.write_register(1, 0);
        p.write_register(SLAVE + 1, 0);
        p.pulse_irq(13);
        assert_eq!(p.acknowledge(), 0x3d);
        p.pulse_irq(9);
        assert!(
            p.interrupt_pending(),
            "a higher slave IR nests despite IR2 in service"
        );
        assert_eq!(p.acknowledge(), 0x39);
    }

    proptest! {
        #[test]
        fn nonsense_never_panics(ops in proptest::collection::vec((0u16..0x4c0, any::<u8>(), 0u8..4), 0..200)) {
            let mut p = DualPic::new();
            for (off, v, what) in ops {
                let off = match off % 6 { 0 => 0, 1 => 1, 2 => SLAVE, 3 => SLAVE + 1, 4 => ELCR, _ => ELCR + 1 };
                match what {
                    0 => p.write_register(off, v),
                    1 => { p.read_register(off); }
                    2 => p.set_irq(v & 15, v & 16 != 0),
                    _ => { if p.interrupt_pending() { p.acknowledge(); } }
                }
                let (_, isr, _) = p.registers(false);
                prop_assert!(p.vector_base(false) & 7 == 0);
                let _ = isr;
            }
        }
    }
}
