//! A model of an NE2000's registers, after how QEMU 7.2's
//! `hw/net/ne2000.c` (and its ISA front end, `ne2000-isa.c`) answers:
//! 48 KiB of card memory (the PROM image in the first 32 bytes, buffer
//! memory at 0x4000..0xc000), remote DMA through the data port, the
//! receive ring filled as QEMU's `ne2000_receive` fills it, transmission
//! done at once when CR.TXP is written. A [`PortIo`] for tests of this
//! driver and of servers built on it (feature `model`; it needs `std`).
extern crate std;

use std::vec;
use std::vec::Vec;

use crate::regs::{self, cr, isr};
use crate::PortIo;

/// The model's I/O base (QEMU's `ne2k_isa` default).
pub const BASE: u16 = 0x300;
/// Start of the card's buffer memory.
pub const PMEM_START: u32 = 0x4000;
/// End of the card's memory (QEMU's `NE2000_PMEM_END`).
pub const PMEM_END: u32 = 0xc000;
/// The station address QEMU gives its first NIC.
pub const QEMU_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

/// QEMU's longest frame check for a full ring (`MAX_ETH_FRAME_SIZE`).
const MAX_ETH_FRAME_SIZE: u32 = 1514;

/// The card's state: QEMU's `NE2000State`, field for field.
#[derive(Clone, Debug)]
pub struct Card {
    /// Command register.
    pub cmd: u8,
    /// Ring start, a byte address.
    pub start: u32,
    /// Ring stop, a byte address.
    pub stop: u32,
    /// BNRY (a page).
    pub boundary: u8,
    /// Transmit status.
    pub tsr: u8,
    /// Transmit page start.
    pub tpsr: u8,
    /// Transmit byte count.
    pub tcnt: u16,
    /// Remote byte count.
    pub rcnt: u16,
    /// Remote start address (advances with each access).
    pub rsar: u32,
    /// Receive status.
    pub rsr: u8,
    /// Receive configuration.
    pub rxcr: u8,
    /// Interrupt status.
    pub isr: u8,
    /// Data configuration.
    pub dcfg: u8,
    /// Interrupt mask.
    pub imr: u8,
    /// PAR0..PAR5.
    pub phys: [u8; 6],
    /// CURR (a page).
    pub curpag: u8,
    /// MAR0..MAR7.
    pub mult: [u8; 8],
    /// The station address in the PROM.
    pub macaddr: [u8; 6],
    /// The card's memory.
    pub mem: Vec<u8>,
    /// Frames the card sent, in order.
    pub sent: Vec<Vec<u8>>,
    /// Frames refused because the card was stopped or its ring full.
    pub refused: u32,
}

impl Card {
    /// A card with station address `mac`, as after power-on and a reset.
    pub fn new(mac: [u8; 6]) -> Self {
        let mut c = Self {
            cmd: cr::STP | cr::RD_ABORT,
            start: 0,
            stop: 0,
            boundary: 0,
            tsr: 0,
            tpsr: 0,
            tcnt: 0,
            rcnt: 0,
            rsar: 0,
            rsr: 0,
            rxcr: 0,
            isr: 0,
            dcfg: 0,
            imr: 0,
            phys: [0; 6],
            curpag: 0,
            mult: [0; 8],
            macaddr: mac,
            mem: vec![0; PMEM_END as usize],
            sent: Vec::new(),
            refused: 0,
        };
        c.reset();
        c
    }

    /// QEMU's `ne2000_reset` (a read of the reset port): ISR.RST, and the
    /// PROM image: the station address, 0x57 0x57 at 14 (the 16-bit
    /// signature), every byte doubled.
    pub fn reset(&mut self) {
        self.isr = isr::RST;
        self.mem[..6].copy_from_slice(&self.macaddr);
        self.mem[14] = 0x57;
        self.mem[15] = 0x57;
        for i in (0..16).rev() {
            self.mem[2 * i] = self.mem[i];
            self.mem[2 * i + 1] = self.mem[i];
        }
    }

    /// Whether the card asserts its IRQ line.
    pub fn irq(&self) -> bool {
        self.isr & self.imr & 0x7f != 0
    }

    fn buffer_full(&self) -> bool {
        let index = u32::from(self.curpag) << 8;
        let boundary = u32::from(self.boundary) << 8;
        let avail = if index < boundary {
            boundary - index
        } else {
            (self.stop.wrapping_sub(self.start)).wrapping_sub(index - boundary)
        };
        avail < MAX_ETH_FRAME_SIZE + 4
    }

    /// A frame from the network, stored as QEMU's `ne2000_receive` stores
    /// it; false if the card refused it (stopped, or its ring full).
    pub fn deliver(&mut self, frame: &[u8]) -> bool {
        if self.cmd & cr::STP != 0 || self.buffer_full() {
            self.refused += 1;
            return false;
        }
        let bcast = frame.len() >= 6 && frame[..6] == [0xff; 6];
        if self.rxcr & 0x10 == 0 {
            if bcast {
                if self.rxcr & regs::RCR_BROADCAST == 0 {
                    return true;
                }
            } else if frame.first().is_some_and(|b| b & 1 != 0) {
                // Multicast: the model takes none (the driver asks none).
                return true;
            } else if frame.len() < 6 || (0..6).any(|i| self.mem[2 * i] != frame[i]) {
                return true;
            }
        }
        let mut buf = frame.to_vec();
        if buf.len() < 60 {
            buf.resize(60, 0);
        }
        let size = buf.len() as u32;
        let mut index = u32::from(self.curpag) << 8;
        if index >= PMEM_END {
            index = self.start;
        }
        let total_len = size + 4;
        let mut next = index + ((total_len + 4 + 255) & !0xff);
        if next >= self.stop {
            next = next.wrapping_sub(self.stop.wrapping_sub(self.start));
        }
        self.rsr = regs::RSR_PRX;
        if bcast || buf[0] & 1 != 0 {
            self.rsr |= 0x20;
        }
        let hdr = [
            self.rsr,
            (next >> 8) as u8,
            total_len as u8,
            (total_len >> 8) as u8,
        ];
        for (i, b) in hdr.into_iter().enumerate() {
            if let Some(m) = self.mem.get_mut(index as usize + i) {
                *m = b;
            }
        }
        index += 4;
        let mut rest = &buf[..];
        while !rest.is_empty() {
            if index > self.stop {
                break;
            }
            let len = rest.len().min((self.stop - index) as usize);
            let at = index as usize;
            let Some(dst) = self.mem.get_mut(at..at + len) else {
                break;
            };
            dst.copy_from_slice(&rest[..len]);
            rest = &rest[len..];
            index += len as u32;
            if index == self.stop {
                index = self.start;
            }
        }
        self.curpag = (next >> 8) as u8;
        self.isr |= isr::PRX;
        true
    }

    fn write_reg(&mut self, addr: u16, val: u8) {
        if addr == regs::CR {
            self.cmd = val;
            if val & cr::STP == 0 {
                self.isr &= !isr::RST;
                if val & (cr::RD_READ | cr::RD_WRITE) != 0 && self.rcnt == 0 {
                    self.isr |= isr::RDC;
                }
                if val & cr::TXP != 0 {
                    let mut index = u32::from(self.tpsr) << 8;
                    if index >= PMEM_END {
                        index -= PMEM_END - PMEM_START;
                    }
                    let end = index + u32::from(self.tcnt);
                    if end <= PMEM_END {
                        self.sent
                            .push(self.mem[index as usize..end as usize].to_vec());
                    }
                    self.tsr = 0x01;
                    self.isr |= isr::PTX;
                    self.cmd &= !cr::TXP;
                }
            }
            return;
        }
        let page = self.cmd >> 6;
        let v = u32::from(val);
        match (page, addr) {
            (0, regs::PSTART) if v << 8 <= PMEM_END => self.start = v << 8,
            (0, regs::PSTOP) if v << 8 <= PMEM_END => self.stop = v << 8,
            (0, regs::BNRY) if v << 8 < PMEM_END => self.boundary = val,
            (0, regs::IMR) => self.imr = val,
            (0, regs::TPSR) => self.tpsr = val,
            (0, regs::TBCR0) => self.tcnt = (self.tcnt & 0xff00) | u16::from(val),
            (0, regs::TBCR1) => self.tcnt = (self.tcnt & 0x00ff) | (u16::from(val) << 8),
            (0, regs::RSAR0) => self.rsar = (self.rsar & 0xff00) | v,
            (0, regs::RSAR1) => self.rsar = (self.rsar & 0x00ff) | (v << 8),
            (0, regs::RBCR0) => self.rcnt = (self.rcnt & 0xff00) | u16::from(val),
            (0, regs::RBCR1) => self.rcnt = (self.rcnt & 0x00ff) | (u16::from(val) << 8),
            (0, regs::RCR) => self.rxcr = val,
            (0, regs::DCR) => self.dcfg = val,
            (0, regs::ISR) => self.isr &= !(val & 0x7f),
            (1, 0x01..=0x06) => self.phys[usize::from(addr) - 1] = val,
            (1, regs::CURR) => self.curpag = val,
            (1, 0x08..=0x0f) => self.mult[usize::from(addr) - 8] = val,
            _ => {}
        }
    }

    fn read_reg(&mut self, addr: u16) -> u8 {
        if addr == regs::CR {
            return self.cmd;
        }
        match (self.cmd >> 6, addr) {
            (0, regs::TSR) => self.tsr,
            (0, regs::BNRY) => self.boundary,
            (0, regs::ISR) => self.isr,
            (0, regs::RSAR0) => self.rsar as u8,
            (0, regs::RSAR1) => (self.rsar >> 8) as u8,
            (0, 0x0c) => self.rsr,
            (0, 0x0a) => 0x50,
            (0, 0x0b) => 0x43,
            (1, 0x01..=0x06) => self.phys[usize::from(addr) - 1],
            (1, regs::CURR) => self.curpag,
            (1, 0x08..=0x0f) => self.mult[usize::from(addr) - 8],
            (2, 0x01) => (self.start >> 8) as u8,
            (2, 0x02) => (self.stop >> 8) as u8,
            (3, 0x05) | (3, 0x06) => 0x40,
            _ => 0,
        }
    }

    fn mem_ok(addr: u32) -> bool {
        addr < 32 || (PMEM_START..PMEM_END).contains(&addr)
    }

    fn dma_update(&mut self, len: u16) {
        self.rsar += u32::from(len);
        if self.rsar == self.stop {
            self.rsar = self.start;
        }
        if self.rcnt <= len {
            self.rcnt = 0;
            self.isr |= isr::RDC;
        } else {
            self.rcnt -= len;
        }
    }

    fn asic_read(&mut self) -> u16 {
        if self.dcfg & 1 != 0 {
            let a = self.rsar & !1;
            let v = if Self::mem_ok(a) {
                u16::from_le_bytes([self.mem[a as usize], self.mem[a as usize + 1]])
            } else {
                0xffff
            };
            self.dma_update(2);
            v
        } else {
            let a = self.rsar;
            let v = if Self::mem_ok(a) {
                u16::from(self.mem[a as usize])
            } else {
                0xff
            };
            self.dma_update(1);
            v
        }
    }

    fn asic_write(&mut self, val: u16) {
        if self.rcnt == 0 {
            return;
        }
        if self.dcfg & 1 != 0 {
            let a = self.rsar & !1;
            if Self::mem_ok(a) {
                self.mem[a as usize..a as usize + 2].copy_from_slice(&val.to_le_bytes());
            }
            self.dma_update(2);
        } else {
            let a = self.rsar;
            if Self::mem_ok(a) {
                self.mem[a as usize] = val as u8;
            }
            self.dma_update(1);
        }
    }
}

impl PortIo for Card {
    fn inb(&mut self, port: u16) -> u8 {
        match port.wrapping_sub(BASE) {
            a @ 0..=0x0f => self.read_reg(a),
            regs::DATA => self.asic_read() as u8,
            regs::RESET => {
                self.reset();
                0
            }
            _ => 0xff,
        }
    }

    fn outb(&mut self, port: u16, value: u8) {
        match port.wrapping_sub(BASE) {
            a @ 0..=0x0f => self.write_reg(a, value),
            regs::DATA => self.asic_write(u16::from(value)),
            _ => {}
        }
    }

    fn inw(&mut self, port: u16) -> u16 {
        if port.wrapping_sub(BASE) == regs::DATA {
            self.asic_read()
        } else {
            0xffff
        }
    }

    fn outw(&mut self, port: u16, value: u16) {
        if port.wrapping_sub(BASE) == regs::DATA {
            self.asic_write(value);
        }
    }
}
