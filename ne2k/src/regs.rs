//! DP8390 register offsets and bits (National Semiconductor DP8390D
//! datasheet, "Register Descriptions"), and the NE2000's own ports beside
//! them: the data port (remote DMA) at base+0x10 and the reset port at
//! base+0x1f.

/// Command register (all pages).
pub const CR: u16 = 0x00;
/// Page 0, write: page start (first page of the receive ring).
pub const PSTART: u16 = 0x01;
/// Page 0, write: page stop (the page after the receive ring).
pub const PSTOP: u16 = 0x02;
/// Page 0: boundary, the last ring page the host has read.
pub const BNRY: u16 = 0x03;
/// Page 0, write: transmit page start. Read: transmit status (TSR).
pub const TPSR: u16 = 0x04;
/// Page 0, read: transmit status.
pub const TSR: u16 = 0x04;
/// Page 0, write: transmit byte count, low and high.
pub const TBCR0: u16 = 0x05;
/// High byte of the transmit byte count.
pub const TBCR1: u16 = 0x06;
/// Page 0: interrupt status (write 1s to clear).
pub const ISR: u16 = 0x07;
/// Page 0, write: remote start address, low and high.
pub const RSAR0: u16 = 0x08;
/// High byte of the remote start address.
pub const RSAR1: u16 = 0x09;
/// Page 0, write: remote byte count, low and high.
pub const RBCR0: u16 = 0x0a;
/// High byte of the remote byte count.
pub const RBCR1: u16 = 0x0b;
/// Page 0, write: receive configuration.
pub const RCR: u16 = 0x0c;
/// Page 0, write: transmit configuration.
pub const TCR: u16 = 0x0d;
/// Page 0, write: data configuration.
pub const DCR: u16 = 0x0e;
/// Page 0, write: interrupt mask.
pub const IMR: u16 = 0x0f;
/// Page 1: physical address registers PAR0..PAR5.
pub const PAR0: u16 = 0x01;
/// Page 1: current page, where the card writes the next frame.
pub const CURR: u16 = 0x07;
/// Page 1: multicast address registers MAR0..MAR7.
pub const MAR0: u16 = 0x08;
/// NE2000: the data port; each access moves a byte or (DCR.WTS) a word
/// of remote DMA.
pub const DATA: u16 = 0x10;
/// NE2000: a read (then a write) resets the card.
pub const RESET: u16 = 0x1f;
/// The ports of one card: base..=base+0x1f.
pub const PORTS: u16 = 0x20;

/// Command register bits.
pub mod cr {
    /// Stop: the card goes off line.
    pub const STP: u8 = 0x01;
    /// Start.
    pub const STA: u8 = 0x02;
    /// Transmit the frame at TPSR, TBCR bytes.
    pub const TXP: u8 = 0x04;
    /// Remote DMA read.
    pub const RD_READ: u8 = 0x08;
    /// Remote DMA write.
    pub const RD_WRITE: u8 = 0x10;
    /// Abort or complete remote DMA.
    pub const RD_ABORT: u8 = 0x20;
    /// Register page 1.
    pub const PAGE1: u8 = 0x40;
}

/// Interrupt status (and mask) bits.
pub mod isr {
    /// A frame was received without error.
    pub const PRX: u8 = 0x01;
    /// A frame was transmitted without error.
    pub const PTX: u8 = 0x02;
    /// A frame was received with an error.
    pub const RXE: u8 = 0x04;
    /// A transmission was aborted.
    pub const TXE: u8 = 0x08;
    /// The receive ring overflowed.
    pub const OVW: u8 = 0x10;
    /// A tally counter's top bit is set.
    pub const CNT: u8 = 0x20;
    /// Remote DMA complete.
    pub const RDC: u8 = 0x40;
    /// The card is stopped (after a reset or STP), or the ring overflowed.
    pub const RST: u8 = 0x80;
}

/// Data configuration: word-wide remote DMA (WTS), normal operation (LS),
/// FIFO threshold 8 bytes (FT1) -- what Linux's ne.c writes for a 16-bit
/// card.
pub const DCR_WORD: u8 = 0x49;
/// Receive configuration: accept broadcast frames (AB) besides those to
/// the station address.
pub const RCR_BROADCAST: u8 = 0x04;
/// Receive configuration: promiscuous (PRO), every frame on the wire
/// stored, whatever its destination.
pub const RCR_PROMISCUOUS: u8 = 0x10;
/// Receive configuration: monitor mode, frames checked but not stored.
pub const RCR_MONITOR: u8 = 0x20;
/// Transmit configuration: internal loopback (LB0), used while the ring
/// is set up.
pub const TCR_LOOPBACK: u8 = 0x02;
/// Receive status: the frame is good.
pub const RSR_PRX: u8 = 0x01;
