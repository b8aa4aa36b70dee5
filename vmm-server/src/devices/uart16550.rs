//! A 16550 UART with the register semantics of the TI PC16550D datasheet.
//!
//! Transmission is instantaneous: a byte written to THR goes straight to the
//! [`ConsoleSink`], so THR and the transmitter are always empty (LSR THRE and
//! TEMT set) and a driver that polls LSR never waits.
//!
//! Reception: bytes typed on the host console (the sink's
//! [`ConsoleSink::read_byte`]) are taken whenever the receiver has room --
//! one byte in RBR without FIFOs, 16 with -- so they arrive as fast as the
//! guest reads them and are never overrun. LSR.DR says a byte is there; with
//! IER.ERBFI the chip asks for a received-data interrupt (IIR 0x04) when the
//! FIFO holds its trigger level (FCR bits 7:6: 1, 4, 8 or 14 bytes), and a
//! character-timeout interrupt (IIR 0x0C) for fewer bytes at once, instead
//! of after four character times. In loopback mode (MCR bit 4) the
//! transmitter feeds the receiver instead, as the datasheet describes, and a
//! full receiver overruns (LSR.OE).
//!
//! The chip's INTR output, gated by MCR OUT2 as on a PC, drives the
//! [`IrqPin`] given to [`Uart16550::with_irq`] (IRQ 4 for COM1) as a level.
//!
//! Not modelled: line errors other than overrun, break, and the MSR delta
//! bits.

use super::{IoSize, PortDevice, WriteOutcome};
use crate::board::{IrqPin, Nanos};
pub use crate::console::ConsoleSink;

/// Base port of COM1.
pub const COM1_BASE: u16 = 0x3f8;
/// Ports a 16550 decodes.
pub const LEN: u16 = 8;

/// Register offsets (PC16550D table II).
pub mod reg {
    /// RBR (read) / THR (write) with DLAB=0; DLL with DLAB=1.
    pub const DATA: u16 = 0;
    /// IER with DLAB=0; DLM with DLAB=1.
    pub const IER: u16 = 1;
    /// IIR (read) / FCR (write).
    pub const IIR_FCR: u16 = 2;
    /// Line control.
    pub const LCR: u16 = 3;
    /// Modem control.
    pub const MCR: u16 = 4;
    /// Line status.
    pub const LSR: u16 = 5;
    /// Modem status.
    pub const MSR: u16 = 6;
    /// Scratch.
    pub const SCR: u16 = 7;
}

/// IER bits.
pub mod ier {
    /// Enable received data available interrupt.
    pub const ERBFI: u8 = 1 << 0;
    /// Enable THR empty interrupt.
    pub const ETBEI: u8 = 1 << 1;
    /// Enable receiver line status interrupt.
    pub const ELSI: u8 = 1 << 2;
    /// Enable modem status interrupt.
    pub const EDSSI: u8 = 1 << 3;
    /// The bits that exist.
    pub const MASK: u8 = 0x0f;
}

/// IIR values and bits.
pub mod iir {
    /// Bit 0 set: no interrupt pending.
    pub const NO_INTERRUPT: u8 = 0x01;
    /// Receiver line status (highest priority).
    pub const LINE_STATUS: u8 = 0x06;
    /// Received data available.
    pub const RX_DATA: u8 = 0x04;
    /// Transmitter holding register empty.
    pub const THR_EMPTY: u8 = 0x02;
    /// Character timeout: fewer bytes than the trigger level wait (FIFO mode).
    pub const CHAR_TIMEOUT: u8 = 0x0c;
    /// Modem status (lowest priority).
    pub const MODEM_STATUS: u8 = 0x00;
    /// Bits 7:6, set when FCR bit 0 enabled the FIFOs.
    pub const FIFOS_ENABLED: u8 = 0xc0;
}

/// FCR bits.
pub mod fcr {
    /// Enable the FIFOs.
    pub const ENABLE: u8 = 1 << 0;
    /// Clear the receiver FIFO.
    pub const CLEAR_RX: u8 = 1 << 1;
    /// Clear the transmitter FIFO.
    pub const CLEAR_TX: u8 = 1 << 2;
    /// Receiver trigger level: bits 7:6 give 1, 4, 8 or 14 bytes.
    pub const TRIGGER_SHIFT: u8 = 6;
}

/// Depth of the receiver FIFO.
pub const FIFO_DEPTH: usize = 16;

/// LCR bits.
pub mod lcr {
    /// Divisor latch access bit.
    pub const DLAB: u8 = 1 << 7;
}

/// MCR bits.
pub mod mcr {
    /// Data terminal ready.
    pub const DTR: u8 = 1 << 0;
    /// Request to send.
    pub const RTS: u8 = 1 << 1;
    /// OUT1.
    pub const OUT1: u8 = 1 << 2;
    /// OUT2; on a PC it gates the IRQ line.
    pub const OUT2: u8 = 1 << 3;
    /// Loopback mode.
    pub const LOOP: u8 = 1 << 4;
    /// The bits that exist.
    pub const MASK: u8 = 0x1f;
}

/// LSR bits.
pub mod lsr {
    /// Data ready.
    pub const DR: u8 = 1 << 0;
    /// Overrun error.
    pub const OE: u8 = 1 << 1;
    /// Transmitter holding register empty.
    pub const THRE: u8 = 1 << 5;
    /// Transmitter empty.
    pub const TEMT: u8 = 1 << 6;
}

/// MSR bits.
pub mod msr {
    /// Clear to send.
    pub const CTS: u8 = 1 << 4;
    /// Data set ready.
    pub const DSR: u8 = 1 << 5;
    /// Ring indicator.
    pub const RI: u8 = 1 << 6;
    /// Data carrier detect.
    pub const DCD: u8 = 1 << 7;
}

/// One 16550 UART whose transmitter writes to `S` and whose receiver reads
/// from it.
#[derive(Clone, Debug)]
pub struct Uart16550<'b, S: ConsoleSink> {
    sink: S,
    irq: Option<IrqPin<'b>>,
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    dll: u8,
    dlm: u8,
    fcr: u8,
    fifos_enabled: bool,
    /// The receiver: RBR, or the FIFO in FIFO mode.
    rx: heapless::Deque<u8, FIFO_DEPTH>,
    overrun: bool,
    /// The THR-empty interrupt is armed (PC16550D table IV: set when THR
    /// empties, cleared by reading IIR with it as source or by writing THR).
    thre_pending: bool,
}

impl<S: ConsoleSink> Uart16550<'_, S> {
    /// A UART in its reset state (PC16550D table VII) sending to `sink`,
    /// with no interrupt line. The divisor latch is not reset by the chip;
    /// it starts at 1 (115200 baud).
    pub fn new(sink: S) -> Self {
        Self {
            sink,
            irq: None,
            ier: 0,
            lcr: 0,
            mcr: 0,
            scr: 0,
            dll: 1,
            dlm: 0,
            fcr: 0,
            fifos_enabled: false,
            rx: heapless::Deque::new(),
            overrun: false,
            thre_pending: false,
        }
    }
}

impl<'b, S: ConsoleSink> Uart16550<'b, S> {
    /// The same UART driving `irq` (IRQ 4 for COM1).
    pub fn with_irq(mut self, irq: IrqPin<'b>) -> Self {
        self.irq = Some(irq);
        self.update_irq();
        self
    }

    /// The sink.
    pub fn sink(&self) -> &S {
        &self.sink
    }

    /// The sink, mutably.
    pub fn sink_mut(&mut self) -> &mut S {
        &mut self.sink
    }

    /// Gives the sink back.
    pub fn into_sink(self) -> S {
        self.sink
    }

    /// The divisor latch (DLM:DLL).
    pub fn divisor(&self) -> u16 {
        u16::from_le_bytes([self.dll, self.dlm])
    }

    fn dlab(&self) -> bool {
        self.lcr & lcr::DLAB != 0
    }

    fn loopback(&self) -> bool {
        self.mcr & mcr::LOOP != 0
    }

    fn rx_capacity(&self) -> usize {
        if self.fifos_enabled {
            FIFO_DEPTH
        } else {
            1
        }
    }

    fn rx_trigger(&self) -> usize {
        if self.fifos_enabled {
            [1, 4, 8, 14][usize::from(self.fcr >> fcr::TRIGGER_SHIFT)]
        } else {
            1
        }
    }

    /// The IIR value, highest-priority pending interrupt first (PC16550D table IV).
    fn iir(&self) -> u8 {
        let rx_enabled = self.ier & ier::ERBFI != 0;
        let id = if self.ier & ier::ELSI != 0 && self.overrun {
            iir::LINE_STATUS
        } else if rx_enabled && self.rx.len() >= self.rx_trigger() {
            iir::RX_DATA
        } else if rx_enabled && !self.rx.is_empty() {
            iir::CHAR_TIMEOUT
        } else if self.ier & ier::ETBEI != 0 && self.thre_pending {
            iir::THR_EMPTY
        } else {
            // No modem-status deltas are modelled, so no modem interrupt.
            iir::NO_INTERRUPT
        };
        if self.fifos_enabled {
            id | iir::FIFOS_ENABLED
        } else {
            id
        }
    }

    /// The chip's INTR output: an enabled interrupt is pending.
    pub fn interrupt_pending(&self) -> bool {
        self.iir() & iir::NO_INTERRUPT == 0
    }

    /// The IRQ line on a PC: INTR gated by MCR OUT2 (it reads as low in
    /// loopback mode, where OUT2 is disconnected from the pin).
    pub fn irq_line(&self) -> bool {
        self.interrupt_pending() && self.mcr & mcr::OUT2 != 0 && !self.loopback()
    }

    fn update_irq(&self) {
        if let Some(p) = &self.irq {
            p.set_level(self.irq_line());
        }
    }

    /// Takes bytes from the host console while the receiver has room.
    /// Returns how many arrived.
    pub fn receive_from_host(&mut self) -> usize {
        let mut n = 0;
        if !self.loopback() {
            while self.rx.len() < self.rx_capacity() {
                match self.sink.read_byte() {
                    Some(b) => {
                        let _ = self.rx.push_back(b);
                        n += 1;
                    }
                    None => break,
                }
            }
        }
        self.update_irq();
        n
    }

    fn msr(&self) -> u8 {
        if self.loopback() {
            // Loopback: the modem outputs drive the modem inputs.
            let m = self.mcr;
            let bit = |on: bool, b: u8| if on { b } else { 0 };
            bit(m & mcr::RTS != 0, msr::CTS)
                | bit(m & mcr::DTR != 0, msr::DSR)
                | bit(m & mcr::OUT1 != 0, msr::RI)
                | bit(m & mcr::OUT2 != 0, msr::DCD)
        } else {
            // A terminal that is always there and ready.
            msr::CTS | msr::DSR | msr::DCD
        }
    }

    /// Reads one 8-bit register.
    pub fn read_register(&mut self, offset: u16) -> u8 {
        let v = self.read_register_inner(offset);
        if offset == reg::DATA && !self.dlab() {
            // Room again: the next typed byte moves in at once.
            self.receive_from_host();
        }
        self.update_irq();
        v
    }

    /// Writes one 8-bit register.
    pub fn write_register(&mut self, offset: u16, value: u8) {
        self.write_register_inner(offset, value);
        self.update_irq();
    }

    fn read_register_inner(&mut self, offset: u16) -> u8 {
        match offset {
            reg::DATA if self.dlab() => self.dll,
            reg::DATA => self.rx.pop_front().unwrap_or(0),
            reg::IER if self.dlab() => self.dlm,
            reg::IER => self.ier,
            reg::IIR_FCR => {
                let v = self.iir();
                if v & !iir::FIFOS_ENABLED == iir::THR_EMPTY {
                    self.thre_pending = false;
                }
                v
            }
            reg::LCR => self.lcr,
            reg::MCR => self.mcr,
            reg::LSR => {
                let mut v = lsr::THRE | lsr::TEMT;
                if !self.rx.is_empty() {
                    v |= lsr::DR;
                }
                if self.overrun {
                    v |= lsr::OE;
                }
                self.overrun = false;
                v
            }
            reg::MSR => self.msr(),
            reg::SCR => self.scr,
            _ => 0xff,
        }
    }

    fn write_register_inner(&mut self, offset: u16, value: u8) {
        match offset {
            reg::DATA if self.dlab() => self.dll = value,
            reg::DATA => {
                if self.loopback() {
                    if self.rx.len() >= self.rx_capacity() {
                        // The new byte overwrites the last one (datasheet: overrun).
                        self.overrun = true;
                        self.rx.pop_back();
                    }
                    let _ = self.rx.push_back(value);
                } else {
                    self.sink.write_byte(value);
                }
                // Sent at once: THR is empty again.
                self.thre_pending = true;
            }
            reg::IER if self.dlab() => self.dlm = value,
            reg::IER => {
                let old = self.ier;
                self.ier = value & ier::MASK;
                if (old ^ self.ier) & ier::ETBEI != 0 {
                    // Enabling ETBEI while THR is empty raises the interrupt.
                    self.thre_pending = self.ier & ier::ETBEI != 0;
                }
            }
            reg::IIR_FCR => {
                let enable = value & fcr::ENABLE != 0;
                if enable != self.fifos_enabled || value & fcr::CLEAR_RX != 0 {
                    // Changing FIFO mode clears the FIFOs.
                    self.rx.clear();
                }
                self.fifos_enabled = enable;
                self.fcr = value;
            }
            reg::LCR => self.lcr = value,
            reg::MCR => self.mcr = value & mcr::MASK,
            reg::SCR => self.scr = value,
            // LSR is for factory testing, MSR is read-only.
            _ => {}
        }
    }
}

impl<S: ConsoleSink> PortDevice for Uart16550<'_, S> {
    /// Byte registers: a wider access reads consecutive registers, low byte
    /// first; bytes past the last register read as 0xff.
    fn read(&mut self, offset: u16, size: IoSize) -> u32 {
        super::read_bytes(offset, size, |o| self.read_register(o))
    }

    /// Byte registers: a wider access writes consecutive registers, low byte
    /// first; bytes past the last register are dropped.
    fn write(&mut self, offset: u16, size: IoSize, value: u32) -> WriteOutcome {
        for i in 0..size.bytes() {
            if let Some(o) = offset.checked_add(u16::from(i)) {
                self.write_register(o, (value >> (8 * i)) as u8);
            }
        }
        WriteOutcome::Continue
    }

    /// Takes typed bytes while there is room; input has no deadline.
    fn poll(&mut self) -> Option<Nanos> {
        self.receive_from_host();
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    fn uart() -> Uart16550<'static, Vec<u8>> {
        Uart16550::new(Vec::new())
    }

    #[test]
    fn lsr_reads_0x60_thr_and_transmitter_empty() {
        let mut u = uart();
        assert_eq!(u.read(reg::LSR, IoSize::Byte), 0x60);
        u.write(reg::DATA, IoSize::Byte, u32::from(b'x'));
        assert_eq!(
            u.read(reg::LSR, IoSize::Byte),
            0x60,
            "still empty after a byte"
        );
    }

    #[test]
    fn a_polling_driver_sends_its_bytes() {
        let mut u = uart();
        // Typical init: 8N1, divisor 1, FIFOs on, DTR|RTS|OUT2.
        u.write(reg::IER, IoSize::Byte, 0);
        u.write(reg::LCR, IoSize::Byte, 0x80);
        u.write(reg::DATA, IoSize::Byte, 1);
        u.write(reg::IER, IoSize::Byte, 0);
        u.write(reg::LCR, IoSize::Byte, 0x03);
        u.write(reg::IIR_FCR, IoSize::Byte, 0xc7);
        u.write(reg::MCR, IoSize::Byte, 0x0b);
        for &b in b"hi\n" {
            while u.read(reg::LSR, IoSize::Byte) & u32::from(lsr::THRE) == 0 {}
            u.write(reg::DATA, IoSize::Byte, u32::from(b));
        }
        assert_eq!(u.sink(), b"hi\n");
    }

    #[test]
    fn dlab_latches_dll_and_dlm() {
        let mut u = uart();
        u.write(reg::IER, IoSize::Byte, 0x05);
        u.write(reg::LCR, IoSize::Byte, 0x83);
        u.write(reg::DATA, IoSize::Byte, 0x0c);
        u.write(reg::IER, IoSize::Byte, 0x00);
        assert_eq!(u.read(reg::DATA, IoSize::Byte), 0x0c);
        assert_eq!(u.read(reg::IER, IoSize::Byte), 0x00);
        assert_eq!(u.divisor(), 12);
        assert!(u.sink().is_empty(), "DLL writes are not data");
        u.write(reg::LCR, IoSize::Byte, 0x03);
        assert_eq!(u.read(reg::IER, IoSize::Byte), 0x05, "IER untouched by DLM");
        assert_eq!(u.read(reg::DATA, IoSize::Byte), 0, "RBR, nothing received");
    }

    #[test]
    fn thr_reaches_the_sink_only_with_dlab_clear() {
        let mut u = uart();
        u.write(reg::LCR, IoSize::Byte, 0x80);
        u.write(reg::DATA, IoSize::Byte, u32::from(b'a'));
        assert!(u.sink().is_empty());
        u.write(reg::LCR, IoSize::Byte, 0x03);
        u.write(reg::DATA, IoSize::Byte, u32::from(b'b'));
        assert_eq!(u.sink(), b"b");
    }

    #[test]
    fn scratch_and_lcr_read_back() {
        let mut u = uart();
        for v in [0x00, 0x5a, 0xa5, 0xff] {
            u.write(reg::SCR, IoSize::Byte, v);
            assert_eq!(u.read(reg::SCR, IoSize::Byte), v);
        }
        u.write(reg::LCR, IoSize::Byte, 0x1b);
        assert_eq!(u.read(reg::LCR, IoSize::Byte), 0x1b);
        u.write(reg::LCR, IoSize::Byte, 0x9b);
        assert_eq!(u.read(reg::LCR, IoSize::Byte), 0x9b);
    }

    #[test]
    fn ier_and_mcr_are_masked() {
        let mut u = uart();
        u.write(reg::IER, IoSize::Byte, 0xff);
        assert_eq!(u.read(reg::IER, IoSize::Byte), 0x0f);
        u.write(reg::MCR, IoSize::Byte, 0xff);
        assert_eq!(u.read(reg::MCR, IoSize::Byte), 0x1f);
    }

    #[test]
    fn iir_without_and_with_fifos() {
        let mut u = uart();
        assert_eq!(u.read(reg::IIR_FCR, IoSize::Byte), 0x01);
        u.write(reg::IIR_FCR, IoSize::Byte, 0x01);
        assert_eq!(u.read(reg::IIR_FCR, IoSize::Byte), 0xc1);
        u.write(reg::IIR_FCR, IoSize::Byte, 0x00);
        assert_eq!(u.read(reg::IIR_FCR, IoSize::Byte), 0x01);
    }

    #[test]
    fn thr_empty_interrupt_follows_the_datasheet() {
        let mut u = uart();
        u.write(reg::MCR, IoSize::Byte, u32::from(mcr::OUT2));
        u.write(reg::IER, IoSize::Byte, u32::from(ier::ETBEI));
        assert!(u.interrupt_pending() && u.irq_line());
        assert_eq!(u.read(reg::IIR_FCR, IoSize::Byte), 0x02);
        // Reading IIR with THRE as source clears it.
        assert_eq!(u.read(reg::IIR_FCR, IoSize::Byte), 0x01);
        assert!(!u.irq_line());
        // Writing THR empties at once: the interrupt comes back.
        u.write(reg::DATA, IoSize::Byte, u32::from(b'z'));
        u.write(reg::IIR_FCR, IoSize::Byte, 0x01);
        assert_eq!(u.read(reg::IIR_FCR, IoSize::Byte), 0xc2);
        // Disabling ETBEI drops it.
        u.write(reg::DATA, IoSize::Byte, u32::from(b'z'));
        u.write(reg::IER, IoSize::Byte, 0);
        assert_eq!(u.read(reg::IIR_FCR, IoSize::Byte), 0xc1);
        assert!(!u.interrupt_pending());
    }

    #[test]
    fn loopback_mirrors_modem_lines_and_data() {
        let mut u = uart();
        assert_eq!(u.read(reg::MSR, IoSize::Byte), 0xb0);
        // The Linux 8250 probe: loopback with RTS|OUT2 must read CTS|DCD.
        u.write(reg::MCR, IoSize::Byte, 0x1a);
        assert_eq!(u.read(reg::MSR, IoSize::Byte) & 0xf0, 0x90);
        u.write(reg::MCR, IoSize::Byte, 0x10);
        assert_eq!(u.read(reg::MSR, IoSize::Byte) & 0xf0, 0x00);
        u.write(reg::DATA, IoSize::Byte, 0x55);
        assert!(u.sink().is_empty(), "loopback does not transmit");
        assert_eq!(u.read(reg::LSR, IoSize::Byte), 0x61);
        u.write(reg::DATA, IoSize::Byte, 0x56);
        assert_eq!(u.read(reg::LSR, IoSize::Byte), 0x63, "overrun");
        assert_eq!(u.read(reg::LSR, IoSize::Byte), 0x61, "OE clears on read");
        assert_eq!(u.read(reg::DATA, IoSize::Byte), 0x56);
        assert_eq!(u.read(reg::LSR, IoSize::Byte), 0x60);
    }

    /// A terminal: what the guest sent and what the user types.
    #[derive(Default)]
    struct Term {
        out: Vec<u8>,
        typed: std::collections::VecDeque<u8>,
    }

    impl ConsoleSink for Term {
        fn write_byte(&mut self, byte: u8) {
            self.out.push(byte);
        }
        fn read_byte(&mut self) -> Option<u8> {
            self.typed.pop_front()
        }
    }

    fn typed(text: &[u8]) -> Term {
        Term {
            out: Vec::new(),
            typed: text.iter().copied().collect(),
        }
    }

    #[test]
    fn typed_bytes_reach_rbr_with_dr() {
        let mut u = Uart16550::new(typed(b"ok"));
        assert_eq!(
            u.read(reg::LSR, IoSize::Byte),
            0x60,
            "nothing taken before a poll"
        );
        u.poll();
        assert_eq!(u.read(reg::LSR, IoSize::Byte), 0x61);
        assert_eq!(u.read(reg::DATA, IoSize::Byte), u32::from(b'o'));
        // Reading RBR makes room: the next byte moves in at once.
        assert_eq!(u.read(reg::LSR, IoSize::Byte), 0x61);
        assert_eq!(u.read(reg::DATA, IoSize::Byte), u32::from(b'k'));
        assert_eq!(u.read(reg::LSR, IoSize::Byte), 0x60);
        assert_eq!(u.read(reg::DATA, IoSize::Byte), 0, "empty RBR");
    }

    #[test]
    fn the_receive_interrupt_drives_irq4_through_out2() {
        let b = crate::board::Board::new();
        let mut u = Uart16550::new(typed(b"a")).with_irq(b.irq.pin(4));
        u.write(reg::IER, IoSize::Byte, u32::from(ier::ERBFI));
        u.poll();
        assert!(u.interrupt_pending());
        assert!(!b.irq.pin(4).is_high(), "OUT2 clear: the line stays low");
        u.write(
            reg::MCR,
            IoSize::Byte,
            u32::from(mcr::OUT2 | mcr::DTR | mcr::RTS),
        );
        assert!(b.irq.pin(4).is_high());
        assert_eq!(u.read(reg::IIR_FCR, IoSize::Byte), 0x04);
        assert_eq!(u.read(reg::DATA, IoSize::Byte), u32::from(b'a'));
        assert!(!b.irq.pin(4).is_high(), "reading the byte drops the line");
        assert_eq!(u.read(reg::IIR_FCR, IoSize::Byte), 0x01);
    }

    #[test]
    fn fifo_trigger_level_and_character_timeout() {
        let mut u = Uart16550::new(typed(b"0123456789abcdefXYZ"));
        u.write(reg::IER, IoSize::Byte, u32::from(ier::ERBFI));
        // FIFOs on, trigger level 8 (bits 7:6 = 10).
        u.write(reg::IIR_FCR, IoSize::Byte, 0x87);
        u.poll();
        assert_eq!(
            u.rx.len(),
            FIFO_DEPTH,
            "16 bytes taken, the rest waits on the host"
        );
        assert_eq!(
            u.read(reg::IIR_FCR, IoSize::Byte),
            0xc4,
            "at or above the trigger"
        );
        for _ in 0..10 {
            u.read(reg::DATA, IoSize::Byte);
        }
        // Each read made room for one more: 16 - 10 + 3 = 9 left.
        assert_eq!(u.rx.len(), 9);
        for _ in 0..2 {
            u.read(reg::DATA, IoSize::Byte);
        }
        assert_eq!(
            u.read(reg::IIR_FCR, IoSize::Byte),
            0xcc,
            "below the trigger: timeout"
        );
        // Clearing the receiver FIFO drops what was there.
        u.write(reg::IIR_FCR, IoSize::Byte, 0x83);
        assert_eq!(u.read(reg::LSR, IoSize::Byte) & 1, 0);
    }

    #[test]
    fn loopback_takes_no_host_input() {
        let mut u = Uart16550::new(typed(b"z"));
        u.write(reg::MCR, IoSize::Byte, u32::from(mcr::LOOP));
        u.poll();
        assert_eq!(u.read(reg::LSR, IoSize::Byte), 0x60);
        u.write(reg::MCR, IoSize::Byte, 0);
        u.poll();
        assert_eq!(u.read(reg::DATA, IoSize::Byte), u32::from(b'z'));
        assert!(u.sink().out.is_empty());
    }

    #[test]
    fn wide_accesses_touch_consecutive_registers() {
        let mut u = uart();
        u.write(reg::LCR, IoSize::Word, 0x5a03);
        assert_eq!(u.read(reg::LCR, IoSize::Byte), 0x03);
        assert_eq!(u.read(reg::MCR, IoSize::Byte), 0x1a);
        u.write(reg::MCR, IoSize::Byte, 0);
        assert_eq!(u.read(reg::LSR, IoSize::Word), 0xb060);
        u.write(reg::SCR, IoSize::Byte, 0x42);
        assert_eq!(u.read(reg::SCR, IoSize::Dword), 0xffff_ff42);
    }
}
