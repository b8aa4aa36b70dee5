//! A driver for the NE2000, the 16-bit ISA network card built around
//! National Semiconductor's DP8390 (QEMU's `-device ne2k_isa`, Bochs's
//! `ne2k:`), over a port-I/O trait: reset, the station address from the
//! card's PROM, the receive ring, and transmission -- all by the card's
//! remote DMA through its data port, so the card never touches host
//! memory and a server that runs this driver needs its 32 ports and its
//! IRQ line only.
//!
//! Everything the card returns is checked before use: a ring header whose
//! next-page pointer leaves the ring, disagrees with its length or
//! points past the card's write pointer (CURR) makes
//! the driver reset the ring (the DP8390 datasheet's overflow recovery),
//! a frame of an impossible length is skipped, and every wait is a
//! bounded number of polls.
//!
//! ```
//! use ne2k::{Ne2k, PortIo};
//!
//! /// An empty ISA bus: every port reads all ones.
//! struct FloatingBus;
//! impl PortIo for FloatingBus {
//!     fn inb(&mut self, _port: u16) -> u8 { 0xff }
//!     fn outb(&mut self, _port: u16, _value: u8) {}
//!     fn inw(&mut self, _port: u16) -> u16 { 0xffff }
//!     fn outw(&mut self, _port: u16, _value: u16) {}
//! }
//!
//! let mut nic = Ne2k::new(FloatingBus, 0x300);
//! let e = nic.reset().unwrap_err();
//! assert_eq!(e, ne2k::Error::NoCard { cr: 0xff });
//! assert!(e.to_string().contains("nothing answers"));
//! ```
#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod regs;

use core::fmt;

use regs::{cr, isr};

/// Port input and output: what the driver needs of the machine.
///
/// A ring-3 server implements it with `in`/`out` on the ports the stub
/// grants it; tests implement it with [`model::Card`] (feature `model`).
pub trait PortIo {
    /// Reads a byte from `port`.
    fn inb(&mut self, port: u16) -> u8;
    /// Writes a byte to `port`.
    fn outb(&mut self, port: u16, value: u8);
    /// Reads a 16-bit word from `port`.
    fn inw(&mut self, port: u16) -> u16;
    /// Writes a 16-bit word to `port`.
    fn outw(&mut self, port: u16, value: u16);
    /// `rep insw`: reads `buf.len() / 2` little-endian words from `port`
    /// into `buf` (`buf.len()` is even).
    fn insw(&mut self, port: u16, buf: &mut [u8]) {
        for pair in buf.chunks_exact_mut(2) {
            pair.copy_from_slice(&self.inw(port).to_le_bytes());
        }
    }
    /// `rep outsw`: writes `buf.len() / 2` little-endian words from `buf`
    /// to `port`.
    fn outsw(&mut self, port: u16, buf: &[u8]) {
        for pair in buf.chunks_exact(2) {
            self.outw(port, u16::from_le_bytes([pair[0], pair[1]]));
        }
    }
}

/// The first page of the transmit buffer: the NE2000's 16 KiB of buffer
/// memory start at 0x4000 (page 0x40); six pages hold a full frame.
pub const TX_START: u8 = 0x40;
/// The receive ring: the rest of the buffer memory, pages 0x46..0x80 (the
/// layout Linux's ne.c uses for a 16-bit card).
pub const RX_START: u8 = 0x46;
/// The page after the receive ring.
pub const RX_STOP: u8 = 0x80;
/// The longest frame: 1514 bytes of header and payload, and the 4-byte
/// CRC a real DP8390 stores with it (QEMU stores none).
pub const MAX_FRAME: usize = 1518;
/// The shortest frame a card stores (a runt is dropped; QEMU pads short
/// frames to 60 bytes) and the shortest it sends (shorter ones are padded).
pub const MIN_FRAME: usize = 60;
/// The longest frame [`Ne2k::transmit`] takes (no CRC: the card adds it).
pub const MAX_TX_FRAME: usize = 1514;
/// Polls of a status bit before the driver gives up.
pub const DEFAULT_MAX_POLLS: u32 = 100_000;

/// The interrupts the driver unmasks: frames in and out, their errors,
/// ring overflow.
pub const IMR: u8 = isr::PRX | isr::PTX | isr::RXE | isr::TXE | isr::OVW;

/// What went wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The command register reads back all ones: no card at this base.
    NoCard {
        /// What the command register read.
        cr: u8,
    },
    /// The card did not report its reset (ISR.RST) in time.
    ResetTimeout,
    /// A remote DMA did not complete (ISR.RDC) in time.
    DmaTimeout,
    /// A transmission neither completed nor aborted in time.
    TxTimeout,
    /// The card aborted the transmission.
    TxAborted {
        /// The transmit status register.
        tsr: u8,
    },
    /// The frame to send is longer than [`MAX_TX_FRAME`].
    FrameTooLong {
        /// Its length.
        len: usize,
    },
    /// A received frame was skipped: its status says it is bad or its
    /// length is outside [`MIN_FRAME`]..=[`MAX_FRAME`].
    BadFrame {
        /// The ring header's status byte.
        status: u8,
        /// The ring header's length (frame plus 4-byte header).
        len: u16,
    },
    /// The ring's pointers were inconsistent (a next-page pointer or CURR
    /// outside the ring, or a next page that disagrees with the length),
    /// or the ring overflowed: the driver reset the ring, dropping what
    /// was in it.
    RingReset {
        /// The page the driver was about to read.
        page: u8,
        /// The next-page pointer or CURR that was wrong (0 for an overflow).
        next: u8,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::NoCard { cr } => write!(
                f,
                "nothing answers at this port (command register reads {cr:#04x})"
            ),
            Error::ResetTimeout => f.write_str("the card did not finish its reset"),
            Error::DmaTimeout => f.write_str("the card's remote DMA did not complete"),
            Error::TxTimeout => f.write_str("the card did not finish sending"),
            Error::TxAborted { tsr } => write!(f, "the card aborted sending (TSR {tsr:#04x})"),
            Error::FrameTooLong { len } => {
                write!(f, "a frame of {len} bytes is longer than {MAX_TX_FRAME}")
            }
            Error::BadFrame { status, len } => write!(
                f,
                "skipped a bad received frame (status {status:#04x}, length {len})"
            ),
            Error::RingReset { page, next } => write!(
                f,
                "receive ring reset (at page {page:#04x}, bad pointer {next:#04x})"
            ),
        }
    }
}

/// The driver of one card at `base` (ports base..=base+0x1f).
pub struct Ne2k<P> {
    io: P,
    base: u16,
    mac: [u8; 6],
    /// The ring page the next frame starts at.
    next: u8,
    max_polls: u32,
    ring_resets: u32,
}

/// `page` advanced by `pages`, wrapping at [`RX_STOP`].
fn ring_add(page: u8, pages: u16) -> u8 {
    let ring = u16::from(RX_STOP - RX_START);
    let off = (u16::from(page - RX_START) + pages) % ring;
    // Less than the ring's 58 pages: fits.
    RX_START + off as u8
}

/// Pages from `from` forward to `to` (both in the ring), wrapping at
/// [`RX_STOP`].
fn ring_distance(from: u8, to: u8) -> u16 {
    let ring = u16::from(RX_STOP - RX_START);
    (u16::from(to - RX_START) + ring - u16::from(from - RX_START)) % ring
}

fn in_ring(page: u8) -> bool {
    (RX_START..RX_STOP).contains(&page)
}

impl<P: PortIo> Ne2k<P> {
    /// A driver for the card at `base`; [`reset`](Self::reset) starts it.
    pub fn new(io: P, base: u16) -> Self {
        Self {
            io,
            base,
            mac: [0; 6],
            next: RX_START + 1,
            max_polls: DEFAULT_MAX_POLLS,
            ring_resets: 0,
        }
    }

    /// Gives up waiting for a status bit after `polls` reads.
    pub fn with_max_polls(mut self, polls: u32) -> Self {
        self.max_polls = polls;
        self
    }

    /// The port I/O.
    pub fn io(&self) -> &P {
        &self.io
    }

    /// The port I/O, mutably.
    pub fn io_mut(&mut self) -> &mut P {
        &mut self.io
    }

    /// The station address read from the PROM at reset.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// How often the receive ring was reset (overflow or bad pointers).
    pub fn ring_resets(&self) -> u32 {
        self.ring_resets
    }

    fn out(&mut self, reg: u16, value: u8) {
        self.io.outb(self.base + reg, value);
    }

    fn inp(&mut self, reg: u16) -> u8 {
        self.io.inb(self.base + reg)
    }

    /// Polls ISR until one of `bits` is set; returns ISR.
    fn poll_isr(&mut self, bits: u8) -> Option<u8> {
        self.poll_isr_n(bits, self.max_polls)
    }

    fn poll_isr_n(&mut self, bits: u8, polls: u32) -> Option<u8> {
        for _ in 0..polls {
            let v = self.inp(regs::ISR);
            if v & bits != 0 {
                return Some(v);
            }
        }
        None
    }

    /// Resets the card (a read and a write of the reset port), reads its
    /// station address from the PROM and starts it: receive ring at
    /// [`RX_START`]..[`RX_STOP`], word-wide remote DMA, broadcast and
    /// own-address frames accepted, interrupts [`IMR`] unmasked. Returns
    /// the station address.
    pub fn reset(&mut self) -> Result<[u8; 6], Error> {
        let v = self.inp(regs::RESET);
        self.out(regs::RESET, v);
        self.out(regs::CR, cr::STP | cr::RD_ABORT);
        let c = self.inp(regs::CR);
        if c == 0xff {
            return Err(Error::NoCard { cr: c });
        }
        self.poll_isr(isr::RST).ok_or(Error::ResetTimeout)?;
        self.out(regs::ISR, 0xff);
        // The DP8390's initialisation sequence ("Initialization
        // Procedure"): stopped, remote DMA off, receiver in monitor mode
        // and transmitter in loopback until the ring is set up.
        self.out(regs::DCR, regs::DCR_WORD);
        self.out(regs::RBCR0, 0);
        self.out(regs::RBCR1, 0);
        self.out(regs::RCR, regs::RCR_MONITOR);
        self.out(regs::TCR, regs::TCR_LOOPBACK);
        // The PROM: 16 bytes at 0 (read started, as Linux's ne.c does,
        // with the receiver and transmitter still off), each doubled on a 16-bit card (the
        // station address in the low bytes of the first six words).
        let mut prom = [0u8; 32];
        self.remote_read(0, &mut prom)?;
        for (i, m) in self.mac.iter_mut().enumerate() {
            *m = prom[2 * i];
        }
        self.out(regs::PSTART, RX_START);
        self.out(regs::PSTOP, RX_STOP);
        self.out(regs::BNRY, RX_START);
        self.out(regs::TPSR, TX_START);
        self.out(regs::ISR, 0xff);
        self.out(regs::IMR, IMR);
        self.out(regs::CR, cr::PAGE1 | cr::STP | cr::RD_ABORT);
        for (i, m) in self.mac.into_iter().enumerate() {
            self.io.outb(self.base + regs::PAR0 + i as u16, m);
        }
        for i in 0..8 {
            self.out(regs::MAR0 + i, 0);
        }
        self.out(regs::CURR, RX_START + 1);
        self.next = RX_START + 1;
        self.out(regs::CR, cr::STA | cr::RD_ABORT);
        self.out(regs::TCR, 0);
        self.out(regs::RCR, regs::RCR_BROADCAST);
        Ok(self.mac)
    }

    fn set_remote(&mut self, addr: u16, count: u16) {
        self.out(regs::RBCR0, count.to_le_bytes()[0]);
        self.out(regs::RBCR1, count.to_le_bytes()[1]);
        self.out(regs::RSAR0, addr.to_le_bytes()[0]);
        self.out(regs::RSAR1, addr.to_le_bytes()[1]);
    }

    /// Waits for the end of a remote DMA and acknowledges it.
    fn finish_dma(&mut self) -> Result<(), Error> {
        let r = self.poll_isr(isr::RDC);
        self.out(regs::ISR, isr::RDC);
        r.map(|_| ()).ok_or(Error::DmaTimeout)
    }

    /// Reads `buf.len()` bytes (at most 0xfffe) of the card's memory at
    /// `addr` (even) by remote DMA, a word at a time.
    fn remote_read(&mut self, addr: u16, buf: &mut [u8]) -> Result<(), Error> {
        if buf.is_empty() {
            return Ok(());
        }
        let even = buf.len() & !1;
        let count = u16::try_from(buf.len() + (buf.len() & 1)).unwrap_or(0xfffe);
        self.set_remote(addr, count);
        self.out(regs::CR, cr::STA | cr::RD_READ);
        let port = self.base + regs::DATA;
        self.io.insw(port, &mut buf[..even]);
        if let Some(last) = buf.get_mut(even) {
            *last = self.io.inw(port).to_le_bytes()[0];
        }
        self.finish_dma()
    }

    /// Writes `data` (at most 0xfffe bytes) to the card's memory at `addr`
    /// (even) by remote DMA, padded to a whole word.
    fn remote_write(&mut self, addr: u16, data: &[u8]) -> Result<(), Error> {
        let even = data.len() & !1;
        let count = u16::try_from(data.len() + (data.len() & 1)).unwrap_or(0xfffe);
        self.set_remote(addr, count);
        self.out(regs::CR, cr::STA | cr::RD_WRITE);
        let port = self.base + regs::DATA;
        self.io.outsw(port, &data[..even]);
        if let Some(&last) = data.get(even) {
            self.io.outw(port, u16::from(last));
        }
        self.finish_dma()
    }

    /// Sends one Ethernet frame (destination, source, type, payload; no
    /// CRC), padded to [`MIN_FRAME`], and waits until the card has sent it.
    pub fn transmit(&mut self, frame: &[u8]) -> Result<(), Error> {
        if frame.len() > MAX_TX_FRAME {
            return Err(Error::FrameTooLong { len: frame.len() });
        }
        let mut short = [0u8; MIN_FRAME];
        let frame = if frame.len() < MIN_FRAME {
            short[..frame.len()].copy_from_slice(frame);
            &short[..]
        } else {
            frame
        };
        self.remote_write(u16::from(TX_START) << 8, frame)?;
        let len = u16::try_from(frame.len()).unwrap_or(0);
        self.out(regs::TPSR, TX_START);
        self.out(regs::TBCR0, len.to_le_bytes()[0]);
        self.out(regs::TBCR1, len.to_le_bytes()[1]);
        self.out(regs::CR, cr::STA | cr::TXP | cr::RD_ABORT);
        let v = self.poll_isr(isr::PTX | isr::TXE).ok_or(Error::TxTimeout)?;
        self.out(regs::ISR, isr::PTX | isr::TXE);
        if v & isr::PTX == 0 {
            return Err(Error::TxAborted {
                tsr: self.inp(regs::TSR),
            });
        }
        Ok(())
    }

    /// Stores every frame on the wire (RCR.PRO), or, with `on` false, only
    /// broadcast frames and those to the station address (as after
    /// [`reset`](Self::reset)): an uplink for guests with addresses of
    /// their own needs the first.
    pub fn set_promiscuous(&mut self, on: bool) {
        let pro = if on { regs::RCR_PROMISCUOUS } else { 0 };
        self.out(regs::RCR, regs::RCR_BROADCAST | pro);
    }

    /// The interrupt status (ISR): which events are pending.
    pub fn interrupts(&mut self) -> u8 {
        self.inp(regs::ISR)
    }

    /// Acknowledges the interrupt events `bits` (lowers the IRQ line once
    /// no unmasked event is left).
    pub fn ack(&mut self, bits: u8) {
        self.out(regs::ISR, bits);
    }

    /// CURR, the page the card writes its next frame to.
    fn current_page(&mut self) -> u8 {
        self.out(regs::CR, cr::PAGE1 | cr::STA | cr::RD_ABORT);
        let c = self.inp(regs::CURR);
        self.out(regs::CR, cr::STA | cr::RD_ABORT);
        c
    }

    /// Takes the next received frame from the ring into `buf` and returns
    /// its length, or `None` when the ring is empty. A bad frame is
    /// skipped ([`Error::BadFrame`]: call again for the next one); bad
    /// ring pointers make it reset the ring ([`Error::RingReset`]: the
    /// ring is empty then). A caller that drains the ring calls it at most
    /// [`RX_STOP`] - [`RX_START`] times in a row: every frame takes a page.
    pub fn receive(&mut self, buf: &mut [u8; MAX_FRAME]) -> Result<Option<usize>, Error> {
        let curr = self.current_page();
        if !in_ring(curr) {
            let page = self.next;
            self.reset_ring();
            return Err(Error::RingReset { page, next: curr });
        }
        let page = self.next;
        if page == curr {
            return Ok(None);
        }
        let mut hdr = [0u8; 4];
        self.remote_read(u16::from(page) << 8, &mut hdr)?;
        let [status, next, lo, hi] = hdr;
        let len = u16::from_le_bytes([lo, hi]);
        // The page after the frame: its header and data rounded up to
        // pages, or one more (QEMU counts 4 bytes more than it stores);
        // past this page and no further than CURR, so that every frame
        // taken brings the driver closer to CURR and a drain ends.
        let pages = len.div_ceil(256);
        if !in_ring(next)
            || (next != ring_add(page, pages) && next != ring_add(page, pages + 1))
            || ring_distance(page, next) == 0
            || ring_distance(page, next) > ring_distance(page, curr)
        {
            self.reset_ring();
            return Err(Error::RingReset { page, next });
        }
        let frame_len = usize::from(len).wrapping_sub(4);
        if status & regs::RSR_PRX == 0 || !(MIN_FRAME..=MAX_FRAME).contains(&frame_len) {
            self.release(next);
            return Err(Error::BadFrame { status, len });
        }
        // The data after the header, in two pieces if it wraps at RX_STOP.
        let start = (u16::from(page) << 8) + 4;
        let to_end = usize::from((u16::from(RX_STOP) << 8) - start);
        let first = frame_len.min(to_end);
        self.remote_read(start, &mut buf[..first])?;
        if first < frame_len {
            self.remote_read(u16::from(RX_START) << 8, &mut buf[first..frame_len])?;
        }
        self.release(next);
        Ok(Some(frame_len))
    }

    /// Hands the ring up to `next` back to the card: BNRY trails the next
    /// frame by one page.
    fn release(&mut self, next: u8) {
        self.next = next;
        let bnry = if next == RX_START {
            RX_STOP - 1
        } else {
            next - 1
        };
        self.out(regs::BNRY, bnry);
    }

    /// Empties the receive ring after an overflow (ISR.OVW) or bad
    /// pointers, by the DP8390 datasheet's buffer overflow recovery: stop,
    /// clear the remote byte count, loopback, start, reset BNRY and CURR,
    /// acknowledge OVW, leave loopback. Frames in the ring are dropped.
    pub fn reset_ring(&mut self) {
        self.ring_resets = self.ring_resets.saturating_add(1);
        self.out(regs::CR, cr::STP | cr::RD_ABORT);
        // The datasheet asks for 1.6 ms after STP, until RST; QEMU never
        // sets RST here, so this is a short bounded wait only.
        let _ = self.poll_isr_n(isr::RST, (self.max_polls / 100).max(1));
        self.out(regs::RBCR0, 0);
        self.out(regs::RBCR1, 0);
        self.out(regs::TCR, regs::TCR_LOOPBACK);
        self.out(regs::BNRY, RX_START);
        self.out(regs::CR, cr::PAGE1 | cr::STP | cr::RD_ABORT);
        self.out(regs::CURR, RX_START + 1);
        self.out(regs::CR, cr::STA | cr::RD_ABORT);
        self.next = RX_START + 1;
        self.out(regs::ISR, isr::OVW | isr::RST);
        self.out(regs::TCR, 0);
    }
}

#[cfg(any(test, feature = "model"))]
pub mod model;
#[cfg(test)]
mod tests;

#[cfg(test)]
mod ring_tests {
    use super::*;

    #[test]
    fn ring_arithmetic_wraps_at_the_stop_page() {
        assert_eq!(ring_add(RX_STOP - 1, 1), RX_START);
        assert_eq!(ring_add(RX_START, 58), RX_START);
        assert_eq!(ring_add(0x7e, 6), 0x4a);
        assert_eq!(ring_distance(0x7e, 0x4a), 6);
        assert_eq!(ring_distance(0x4a, 0x7e), 52);
        assert_eq!(ring_distance(0x50, 0x50), 0);
    }
}
