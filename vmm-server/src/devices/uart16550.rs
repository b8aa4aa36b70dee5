//! A 16550 UART with the register semantics of the TI PC16550D datasheet.
//!
//! Transmission is instantaneous: a byte written to THR goes straight to the
//! [`ConsoleSink`], so THR and the transmitter are always empty (LSR THRE and
//! TEMT set) and a driver that polls LSR never waits. There is no input from
//! the host yet; the receiver only sees bytes in loopback mode (MCR bit 4),
//! where the transmitter is looped back to it as the datasheet describes.
//!
//! The model computes the interrupt the chip would raise (IIR, and
//! [`Uart16550::irq_line`] for the IRQ4 wire gated by OUT2), but nothing
//! delivers it yet: there is no PIC.
//!
//! Not modelled: the 16-byte FIFOs' depth and trigger levels (FIFO mode only
//! shows in IIR bits 7:6), the character timeout, line errors other than
//! overrun, and the MSR delta bits.

use super::{IoSize, PortDevice, WriteOutcome};
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
}

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

/// One 16550 UART whose transmitter writes to `S`.
#[derive(Clone, Debug)]
pub struct Uart16550<S: ConsoleSink> {
    sink: S,
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    dll: u8,
    dlm: u8,
    fifos_enabled: bool,
    /// Receiver buffer and its DR bit (only loopback fills it).
    rbr: u8,
    data_ready: bool,
    overrun: bool,
    /// The THR-empty interrupt is armed (PC16550D table IV: set when THR
    /// empties, cleared by reading IIR with it as source or by writing THR).
    thre_pending: bool,
}

impl<S: ConsoleSink> Uart16550<S> {
    /// A UART in its reset state (PC16550D table VII) sending to `sink`.
    /// The divisor latch is not reset by the chip; it starts at 1 (115200 baud).
    pub fn new(sink: S) -> Self {
        Self {
            sink,
            ier: 0,
            lcr: 0,
            mcr: 0,
            scr: 0,
            dll: 1,
            dlm: 0,
            fifos_enabled: false,
            rbr: 0,
            data_ready: false,
            overrun: false,
            thre_pending: false,
        }
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

    /// The IIR value, highest-priority pending interrupt first (PC16550D table IV).
    fn iir(&self) -> u8 {
        let id = if self.ier & ier::ELSI != 0 && self.overrun {
            iir::LINE_STATUS
        } else if self.ier & ier::ERBFI != 0 && self.data_ready {
            iir::RX_DATA
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
        match offset {
            reg::DATA if self.dlab() => self.dll,
            reg::DATA => {
                self.data_ready = false;
                self.rbr
            }
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
                if self.data_ready {
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

    /// Writes one 8-bit register.
    pub fn write_register(&mut self, offset: u16, value: u8) {
        match offset {
            reg::DATA if self.dlab() => self.dll = value,
            reg::DATA => {
                if self.loopback() {
                    self.overrun |= self.data_ready;
                    self.rbr = value;
                    self.data_ready = true;
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
                    self.data_ready = false;
                }
                self.fifos_enabled = enable;
            }
            reg::LCR => self.lcr = value,
            reg::MCR => self.mcr = value & mcr::MASK,
            reg::SCR => self.scr = value,
            // LSR is for factory testing, MSR is read-only.
            _ => {}
        }
    }
}

impl<S: ConsoleSink> PortDevice for Uart16550<S> {
    /// Byte registers: a wider access reads consecutive registers, low byte
    /// first; bytes past the last register read as 0xff.
    fn read(&mut self, offset: u16, size: IoSize) -> u32 {
        let mut v = 0;
        for i in 0..size.bytes() {
            let byte = offset
                .checked_add(u16::from(i))
                .map_or(0xff, |o| self.read_register(o));
            v |= u32::from(byte) << (8 * i);
        }
        v
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    fn uart() -> Uart16550<Vec<u8>> {
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
