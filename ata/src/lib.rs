//! An ATA PIO disk driver for one IDE channel: IDENTIFY DEVICE, SET
//! MULTIPLE MODE, READ/WRITE MULTIPLE (EXT) or READ/WRITE SECTORS (EXT),
//! FLUSH CACHE (EXT) and a software reset, after ATA/ATAPI-6 (T13/1410D)
//! and ATA8-ACS, over a port-I/O trait.
//!
//! Two things make PIO cheaper where each port access is an emulated one
//! (QEMU's and Bochs's IDE): 32-bit Data register accesses when IDENTIFY
//! DEVICE word 48 offers them ([`DataWidth`]), half the accesses of
//! 16-bit ones; and the MULTIPLE commands with the largest DRQ block word
//! 47 allows (16 sectors on QEMU), so that the device asks for data, and
//! its status is polled, once a block instead of once a sector.
//!
//! The driver touches the machine only through [`PortIo`] (byte, word and
//! doubleword port accesses, and `rep insw`/`rep insd`-style string
//! transfers straight into and out of a caller's buffers, which may be a
//! scatter list: [`Sink`], [`Source`]) and lets time pass only
//! through [`Wait`] (spin a bounded number of times with [`Spin`], or
//! block on the channel's interrupt). Every wait is bounded twice: by the
//! `Wait` giving up and by the driver's own poll limit, so no device answer
//! makes it loop forever. It moves data by PIO only: no DMA, so a server
//! that runs it needs the channel's ports (and its IRQ, if it waits for
//! it), not the right to point a bus master at memory.
//!
//! ```
//! use ata::{Ata, PortIo, Spin, Drive, PRIMARY};
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
//! let mut disk = Ata::new(FloatingBus, Spin::new(1000), PRIMARY, Drive::Master);
//! let e = disk.identify().unwrap_err();
//! assert_eq!(e, ata::Error::NoDevice { status: 0xff });
//! assert!(e.to_string().contains("nothing drives the bus"));
//! ```
#![no_std]
#![deny(missing_docs)]

pub mod identify;
pub mod regs;

use core::fmt;

pub use identify::{DiskInfo, Flush, IdentifyError};
use regs::{command as cmd, control, device, status};

/// Bytes in a sector (ATA/ATAPI-6 has no other logical sector size).
pub const SECTOR_SIZE: usize = 512;

/// Port input and output: what the driver needs of the machine.
///
/// A ring-3 server implements it with `in`/`out` on ports the stub lets
/// it use; tests implement it with a model of the device.
pub trait PortIo {
    /// Reads a byte from `port`.
    fn inb(&mut self, port: u16) -> u8;
    /// Writes a byte to `port`.
    fn outb(&mut self, port: u16, value: u8);
    /// Reads a 16-bit word from `port`.
    fn inw(&mut self, port: u16) -> u16;
    /// Writes a 16-bit word to `port`.
    fn outw(&mut self, port: u16, value: u16);
    /// `rep insw`: reads `buf.len() / 2` words from `port` into `buf`,
    /// each little-endian (the first byte of a word from the data bus's low
    /// half). `buf.len()` is even; `buf` need not be aligned.
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
    /// Reads a 32-bit doubleword from `port`. The default is what a host
    /// adapter without 32-bit cycles does with one: two word reads, the
    /// low word first.
    fn inl(&mut self, port: u16) -> u32 {
        let lo = self.inw(port);
        let hi = self.inw(port);
        u32::from(lo) | u32::from(hi) << 16
    }
    /// Writes a 32-bit doubleword to `port` (by default two words, the low
    /// one first).
    fn outl(&mut self, port: u16, value: u32) {
        self.outw(port, value as u16);
        self.outw(port, (value >> 16) as u16);
    }
    /// `rep insd`: reads `buf.len() / 4` little-endian doublewords from
    /// `port` into `buf` (`buf.len()` a multiple of 4, any alignment).
    fn insl(&mut self, port: u16, buf: &mut [u8]) {
        for quad in buf.chunks_exact_mut(4) {
            quad.copy_from_slice(&self.inl(port).to_le_bytes());
        }
    }
    /// `rep outsd`: writes `buf.len() / 4` little-endian doublewords from
    /// `buf` to `port`.
    fn outsl(&mut self, port: u16, buf: &[u8]) {
        for quad in buf.chunks_exact(4) {
            self.outl(
                port,
                u32::from_le_bytes([quad[0], quad[1], quad[2], quad[3]]),
            );
        }
    }
}

/// How wide the driver's Data register accesses are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataWidth {
    /// 16 bits (`insw`/`outsw`): what every ATA device takes.
    Word,
    /// 32 bits (`insd`/`outsd`): used when IDENTIFY DEVICE word 48 reads
    /// 0001h ([`DiskInfo::dword_io`]) and [`Ata::with_word_io_only`] did
    /// not forbid it. The device sees the same 16-bit words either way;
    /// the saving is in port accesses, each an emulated I/O on QEMU.
    Dword,
}

impl DataWidth {
    /// Bytes one access moves.
    pub const fn bytes(self) -> usize {
        match self {
            DataWidth::Word => 2,
            DataWidth::Dword => 4,
        }
    }

    fn ins(self, io: &mut impl PortIo, port: u16, buf: &mut [u8]) {
        match self {
            DataWidth::Word => io.insw(port, buf),
            DataWidth::Dword => io.insl(port, buf),
        }
    }

    fn outs(self, io: &mut impl PortIo, port: u16, buf: &[u8]) {
        match self {
            DataWidth::Word => io.outsw(port, buf),
            DataWidth::Dword => io.outsl(port, buf),
        }
    }
}

/// Where a read's bytes go: memory addressed by the byte offset in the
/// transfer, such as one slice or a scatter list of guest buffers.
pub trait Sink {
    /// The memory for bytes `at..` of the transfer: at most `max` bytes
    /// (and at least 1), contiguous; `None` if nothing holds byte `at`.
    fn chunk_mut(&mut self, at: usize, max: usize) -> Option<&mut [u8]>;
}

/// Where a write's bytes come from, as [`Sink`].
pub trait Source {
    /// The memory of bytes `at..` of the transfer: at most `max` bytes
    /// (and at least 1); `None` if nothing holds byte `at`.
    fn chunk(&mut self, at: usize, max: usize) -> Option<&[u8]>;
}

/// One slice as a [`Sink`].
struct SliceSink<'a>(&'a mut [u8]);

impl Sink for SliceSink<'_> {
    fn chunk_mut(&mut self, at: usize, max: usize) -> Option<&mut [u8]> {
        let rest = self.0.get_mut(at..)?;
        let n = rest.len().min(max);
        rest.get_mut(..n).filter(|c| !c.is_empty())
    }
}

/// One slice as a [`Source`].
struct SliceSource<'a>(&'a [u8]);

impl Source for SliceSource<'_> {
    fn chunk(&mut self, at: usize, max: usize) -> Option<&[u8]> {
        let rest = self.0.get(at..)?;
        let n = rest.len().min(max);
        rest.get(..n).filter(|c| !c.is_empty())
    }
}

/// Whether `len` bytes from 0 on are all held by chunks of `chunk`.
fn covered(len: usize, mut chunk: impl FnMut(usize, usize) -> Option<usize>) -> bool {
    let mut at = 0;
    while at < len {
        match chunk(at, len - at) {
            Some(n) if n > 0 => at += n.min(len - at),
            _ => return false,
        }
    }
    true
}

/// Reads `n` bytes (a multiple of the width) from the Data register into
/// bytes `at..at + n` of `sink`: string reads straight into each chunk,
/// and one access split across two chunks where a boundary cuts it.
/// Bytes nothing holds are read and dropped, so that the device's protocol
/// stays whole; returns whether every byte found a home.
fn pio_in<P: PortIo>(
    io: &mut P,
    port: u16,
    width: DataWidth,
    at: usize,
    n: usize,
    sink: &mut impl Sink,
) -> bool {
    let unit = width.bytes();
    let end = at + n;
    let mut pos = at;
    let mut whole = true;
    while pos < end {
        if let Some(chunk) = sink.chunk_mut(pos, end - pos) {
            let run = chunk.len().min(end - pos);
            let run = run - run % unit;
            if run > 0 {
                width.ins(io, port, &mut chunk[..run]);
                pos += run;
                continue;
            }
        }
        // One access whose bytes belong to two chunks (or to none).
        let mut tmp = [0u8; 4];
        width.ins(io, port, &mut tmp[..unit]);
        let mut i = 0;
        while i < unit {
            match sink.chunk_mut(pos + i, unit - i) {
                Some(c) => {
                    let k = c.len().min(unit - i);
                    c[..k].copy_from_slice(&tmp[i..i + k]);
                    i += k;
                }
                None => {
                    whole = false;
                    i += 1;
                }
            }
        }
        pos += unit;
    }
    whole
}

/// Writes bytes `at..at + n` of `source` to the Data register, as
/// [`pio_in`] reads (bytes nothing holds are sent as zeros).
fn pio_out<P: PortIo>(
    io: &mut P,
    port: u16,
    width: DataWidth,
    at: usize,
    n: usize,
    source: &mut impl Source,
) -> bool {
    let unit = width.bytes();
    let end = at + n;
    let mut pos = at;
    let mut whole = true;
    while pos < end {
        if let Some(chunk) = source.chunk(pos, end - pos) {
            let run = chunk.len().min(end - pos);
            let run = run - run % unit;
            if run > 0 {
                width.outs(io, port, &chunk[..run]);
                pos += run;
                continue;
            }
        }
        let mut tmp = [0u8; 4];
        let mut i = 0;
        while i < unit {
            match source.chunk(pos + i, unit - i) {
                Some(c) => {
                    let k = c.len().min(unit - i);
                    tmp[i..i + k].copy_from_slice(&c[..k]);
                    i += k;
                }
                None => {
                    whole = false;
                    i += 1;
                }
            }
        }
        width.outs(io, port, &tmp[..unit]);
        pos += unit;
    }
    whole
}

/// How the driver lets time pass while the device is busy.
pub trait Wait {
    /// Whether this wait is woken by the channel's interrupt: the driver
    /// then leaves nIEN clear so that the device asserts INTRQ; otherwise
    /// it sets nIEN and only polls.
    fn uses_irq(&self) -> bool {
        false
    }
    /// With [`Wait::uses_irq`]: the device is busy and due to assert INTRQ
    /// when it is done (a data-in block or a command's end is coming,
    /// ATA/ATAPI-6 9.6-9.8): wait for that interrupt before the status is
    /// read. The driver calls it at most once per interrupt the protocol
    /// promises, so an interrupt that came early (latched as a
    /// notification) ends the wait at once. The default does nothing; the
    /// status is polled after it either way, so it may also return early.
    fn wait_irq(&mut self) {}
    /// A new wait begins (a command was issued, a sector moved): restart
    /// the time budget.
    fn start(&mut self);
    /// The device is still busy: let some time pass (spin once, or block
    /// until the interrupt arrives or a short tick passes -- the driver
    /// polls the status again either way, so a wake-up without progress
    /// is harmless). Returns `false` when the budget is spent; the driver
    /// then reports [`Error::Timeout`].
    fn pause(&mut self) -> bool;
}

/// Busy-polls the status register: [`Wait::pause`] spins once, up to
/// `limit` times per wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spin {
    limit: u32,
    left: u32,
}

impl Spin {
    /// At most `limit` pauses per wait.
    pub const fn new(limit: u32) -> Self {
        Self { limit, left: limit }
    }
}

impl Wait for Spin {
    fn start(&mut self) {
        self.left = self.limit;
    }

    fn pause(&mut self) -> bool {
        if self.left == 0 {
            return false;
        }
        self.left -= 1;
        core::hint::spin_loop();
        true
    }
}

/// An IDE channel's ports and interrupt line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Channel {
    /// The Command Block's first port (the Data register).
    pub base: u16,
    /// The Control Block's Device Control / Alternate Status register.
    pub control: u16,
    /// The ISA interrupt line.
    pub irq: u8,
}

/// The primary channel of a PC: ports 0x1f0-0x1f7, 0x3f6, IRQ 14.
pub const PRIMARY: Channel = Channel {
    base: 0x1f0,
    control: 0x3f6,
    irq: 14,
};

/// Which of the channel's two devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drive {
    /// Device 0.
    Master,
    /// Device 1.
    Slave,
}

impl Drive {
    fn dev_bit(self) -> u8 {
        match self {
            Drive::Master => 0,
            Drive::Slave => device::DEV,
        }
    }
}

/// The operations of this driver, named as the standard names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// IDENTIFY DEVICE.
    IdentifyDevice,
    /// READ SECTORS (28-bit).
    ReadSectors,
    /// READ SECTORS EXT (48-bit).
    ReadSectorsExt,
    /// WRITE SECTORS (28-bit).
    WriteSectors,
    /// WRITE SECTORS EXT (48-bit).
    WriteSectorsExt,
    /// READ MULTIPLE (28-bit).
    ReadMultiple,
    /// READ MULTIPLE EXT (48-bit).
    ReadMultipleExt,
    /// WRITE MULTIPLE (28-bit).
    WriteMultiple,
    /// WRITE MULTIPLE EXT (48-bit).
    WriteMultipleExt,
    /// SET MULTIPLE MODE.
    SetMultipleMode,
    /// FLUSH CACHE.
    FlushCache,
    /// FLUSH CACHE EXT.
    FlushCacheExt,
    /// A software reset (SRST in the Device Control register).
    SoftwareReset,
}

impl Command {
    /// The standard's name.
    pub fn name(self) -> &'static str {
        match self {
            Command::IdentifyDevice => "IDENTIFY DEVICE",
            Command::ReadSectors => "READ SECTORS",
            Command::ReadSectorsExt => "READ SECTORS EXT",
            Command::WriteSectors => "WRITE SECTORS",
            Command::WriteSectorsExt => "WRITE SECTORS EXT",
            Command::ReadMultiple => "READ MULTIPLE",
            Command::ReadMultipleExt => "READ MULTIPLE EXT",
            Command::WriteMultiple => "WRITE MULTIPLE",
            Command::WriteMultipleExt => "WRITE MULTIPLE EXT",
            Command::SetMultipleMode => "SET MULTIPLE MODE",
            Command::FlushCache => "FLUSH CACHE",
            Command::FlushCacheExt => "FLUSH CACHE EXT",
            Command::SoftwareReset => "a software reset",
        }
    }

    /// The command code written to the Command register (none for a reset).
    pub fn code(self) -> Option<u8> {
        Some(match self {
            Command::IdentifyDevice => cmd::IDENTIFY_DEVICE,
            Command::ReadSectors => cmd::READ_SECTORS,
            Command::ReadSectorsExt => cmd::READ_SECTORS_EXT,
            Command::WriteSectors => cmd::WRITE_SECTORS,
            Command::WriteSectorsExt => cmd::WRITE_SECTORS_EXT,
            Command::ReadMultiple => cmd::READ_MULTIPLE,
            Command::ReadMultipleExt => cmd::READ_MULTIPLE_EXT,
            Command::WriteMultiple => cmd::WRITE_MULTIPLE,
            Command::WriteMultipleExt => cmd::WRITE_MULTIPLE_EXT,
            Command::SetMultipleMode => cmd::SET_MULTIPLE_MODE,
            Command::FlushCache => cmd::FLUSH_CACHE,
            Command::FlushCacheExt => cmd::FLUSH_CACHE_EXT,
            Command::SoftwareReset => return None,
        })
    }

    fn is_ext(self) -> bool {
        matches!(
            self,
            Command::ReadSectorsExt
                | Command::WriteSectorsExt
                | Command::ReadMultipleExt
                | Command::WriteMultipleExt
                | Command::FlushCacheExt
        )
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What went wrong, in words a user can act on ([`fmt::Display`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// No device answers: the status register reads 0xff (a floating bus:
    /// no controller, or nothing on it) or 0 (a controller without this
    /// device).
    NoDevice {
        /// What the status register read.
        status: u8,
    },
    /// The device is not an ATA disk; LBA Mid and LBA High hold its
    /// signature (0x14, 0xeb: ATAPI, such as a CD-ROM).
    NotAta {
        /// LBA Mid.
        lba_mid: u8,
        /// LBA High.
        lba_high: u8,
    },
    /// The disk has only cylinder/head/sector addressing.
    NoLba,
    /// The device stayed busy (or never asked for data) past the wait.
    Timeout {
        /// What it was doing.
        command: Command,
        /// The last status read.
        status: u8,
    },
    /// The device ended the command with ERR set.
    Device {
        /// The command.
        command: Command,
        /// The sector it was at (0 for commands without one).
        lba: u64,
        /// The status register.
        status: u8,
        /// The Error register ([`regs::error`]).
        error: u8,
    },
    /// The device set DF (device fault).
    Fault {
        /// The command.
        command: Command,
        /// The sector it was at.
        lba: u64,
        /// The status register.
        status: u8,
    },
    /// The device broke the PIO protocol: DRQ clear when a sector was due
    /// (`drq_expected`), or still set after the last one.
    Protocol {
        /// The command.
        command: Command,
        /// The sector it was at.
        lba: u64,
        /// The status register.
        status: u8,
        /// DRQ should have been set.
        drq_expected: bool,
    },
    /// The transfer runs past the end of the disk.
    OutOfRange {
        /// The first sector asked for.
        lba: u64,
        /// How many sectors.
        count: u64,
        /// The disk's sectors.
        sectors: u64,
    },
    /// A buffer that is not a whole number of sectors, or a scatter list
    /// with a hole.
    BadLength {
        /// Its length in bytes.
        len: usize,
    },
    /// A transfer before [`Ata::identify`] succeeded.
    NotIdentified,
    /// The disk reports neither FLUSH CACHE nor FLUSH CACHE EXT.
    FlushUnsupported,
}

/// The Error register's bits in words.
fn describe_error_bits(error: u8, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    use regs::error as e;
    let names = [
        (
            e::ABRT,
            "command aborted (not supported, or a bad parameter)",
        ),
        (
            e::IDNF,
            "sector not found (an address past the end of the medium)",
        ),
        (e::UNC, "uncorrectable data error (a bad sector)"),
        (e::ICRC, "interface CRC error"),
        (e::MC, "media changed"),
        (e::MCR, "media change requested"),
        (e::NM, "no media"),
        (e::AMNF, "address mark not found"),
    ];
    let mut first = true;
    for (bit, text) in names {
        if error & bit != 0 {
            if !first {
                f.write_str("; ")?;
            }
            f.write_str(text)?;
            first = false;
        }
    }
    if first {
        f.write_str("no reason given (the Error register reads 0)")?;
    }
    Ok(())
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::NoDevice { status: 0xff } => f.write_str(
                "no ATA device answers: the status register reads 0xff, so nothing drives the \
                 bus; attach a disk to the channel as its master",
            ),
            Error::NoDevice { status } => write!(
                f,
                "no ATA device answers: the controller is there but the status register reads \
                 {status:#04x} after the device was selected; attach a disk to the channel as \
                 its master"
            ),
            Error::NotAta { lba_mid, lba_high } => {
                let what = match (lba_mid, lba_high) {
                    regs::SIGNATURE_ATAPI => "an ATAPI device's, such as a CD-ROM drive",
                    regs::SIGNATURE_SATA => "a SATA device's, which needs an AHCI driver",
                    regs::SIGNATURE_SATAPI => "a SATA ATAPI device's",
                    _ => "not an ATA disk's",
                };
                write!(
                    f,
                    "the device is not an ATA disk: its signature (LBA Mid {lba_mid:#04x}, LBA \
                     High {lba_high:#04x}) is {what}; attach a disk image instead"
                )
            }
            Error::NoLba => f.write_str(
                "the disk has only cylinder/head/sector addressing (IDENTIFY DEVICE word 49 bit \
                 9 is clear); this driver needs LBA",
            ),
            Error::Timeout { command, status } => {
                let state = if status & status::BSY != 0 {
                    "still busy"
                } else if status & status::DRQ == 0 {
                    "not asking for data"
                } else {
                    "still asking for data"
                };
                write!(
                    f,
                    "the disk did not finish {command} in time (status {status:#04x}: {state}); \
                     a software reset may bring it back"
                )
            }
            Error::Device {
                command,
                lba,
                status,
                error,
            } => {
                write!(f, "the disk ended {command} ")?;
                if !matches!(
                    command,
                    Command::IdentifyDevice
                        | Command::SoftwareReset
                        | Command::SetMultipleMode
                        | Command::FlushCache
                        | Command::FlushCacheExt
                ) {
                    write!(f, "at sector {lba} ")?;
                }
                f.write_str("with an error: ")?;
                describe_error_bits(error, f)?;
                write!(f, " (status {status:#04x}, error {error:#04x})")
            }
            Error::Fault {
                command,
                lba,
                status,
            } => write!(
                f,
                "the disk reports a device fault during {command} near sector {lba} (status \
                 {status:#04x}); reset it, and if that does not help the medium is unusable"
            ),
            Error::Protocol {
                command,
                lba,
                status,
                drq_expected,
            } => write!(
                f,
                "the disk broke the PIO protocol during {command} at sector {lba}: {} (status \
                 {status:#04x}); reset it",
                if drq_expected {
                    "it stopped asking for data before the last sector"
                } else {
                    "it still asks for data after the last sector"
                }
            ),
            Error::OutOfRange {
                lba,
                count,
                sectors,
            } => write!(
                f,
                "sectors {lba} to {} lie past the end of the disk, which has {sectors} sectors",
                lba.saturating_add(count).saturating_sub(1)
            ),
            Error::BadLength { len } => write!(
                f,
                "a transfer of {len} bytes is not a whole number of {SECTOR_SIZE}-byte sectors"
            ),
            Error::NotIdentified => f.write_str(
                "the disk has not been identified: IDENTIFY DEVICE must succeed before a transfer",
            ),
            Error::FlushUnsupported => f.write_str(
                "the disk reports neither FLUSH CACHE nor FLUSH CACHE EXT (IDENTIFY DEVICE word \
                 83), so its write cache cannot be flushed",
            ),
        }
    }
}

/// The default bound on status polls in one wait, on top of the
/// [`Wait`]'s own.
pub const DEFAULT_MAX_POLLS: u32 = 1 << 22;

/// An ATA disk on one channel, driven by PIO.
#[derive(Debug)]
pub struct Ata<P, W> {
    io: P,
    wait: W,
    channel: Channel,
    drive: Drive,
    info: Option<DiskInfo>,
    max_polls: u32,
    /// Sectors per DRQ block that SET MULTIPLE MODE set (0: none, READ/
    /// WRITE SECTORS are used).
    multiple: u8,
    /// The Data register's width for transfers.
    width: DataWidth,
    /// [`Ata::with_word_io_only`].
    word_only: bool,
}

/// A sector transfer's direction.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    Read,
    Write,
}

impl<P: PortIo, W: Wait> Ata<P, W> {
    /// A driver for `drive` on `channel`; nothing is sent to the device
    /// until [`Ata::identify`] or [`Ata::reset`].
    pub fn new(io: P, wait: W, channel: Channel, drive: Drive) -> Self {
        Self {
            io,
            wait,
            channel,
            drive,
            info: None,
            max_polls: DEFAULT_MAX_POLLS,
            multiple: 0,
            width: DataWidth::Word,
            word_only: false,
        }
    }

    /// Never uses 32-bit Data register accesses, whatever IDENTIFY DEVICE
    /// says (for a host adapter known to split them wrongly).
    pub fn with_word_io_only(mut self) -> Self {
        self.word_only = true;
        self.width = DataWidth::Word;
        self
    }

    /// The Data register's width the transfers use.
    pub fn data_width(&self) -> DataWidth {
        self.width
    }

    /// Sectors per interrupt (per DRQ block): SET MULTIPLE MODE's setting,
    /// or 1 when the MULTIPLE commands are not in use.
    pub fn sectors_per_block(&self) -> u8 {
        self.multiple.max(1)
    }

    /// Bounds every wait to `polls` reads of the status register, whatever
    /// the [`Wait`] says (at least 1).
    pub fn with_max_polls(mut self, polls: u32) -> Self {
        self.max_polls = polls.max(1);
        self
    }

    /// What [`Ata::identify`] found, once it succeeded.
    pub fn info(&self) -> Option<&DiskInfo> {
        self.info.as_ref()
    }

    /// The port I/O.
    pub fn io(&self) -> &P {
        &self.io
    }

    /// The port I/O, mutably.
    pub fn io_mut(&mut self) -> &mut P {
        &mut self.io
    }

    /// The wait, mutably (a platform may switch it between polling and
    /// the interrupt between commands).
    pub fn wait_mut(&mut self) -> &mut W {
        &mut self.wait
    }

    /// The channel.
    pub fn channel(&self) -> Channel {
        self.channel
    }

    fn reg(&self, offset: u16) -> u16 {
        self.channel.base.wrapping_add(offset)
    }

    /// The Alternate Status register: the status without acknowledging an
    /// interrupt.
    fn alt_status(&mut self) -> u8 {
        self.io.inb(self.channel.control)
    }

    /// The Status register (acknowledges INTRQ).
    fn status(&mut self) -> u8 {
        let port = self.reg(regs::STATUS);
        self.io.inb(port)
    }

    /// 400 ns for the status to become valid after a command or a device
    /// selection (ATA/ATAPI-6 9.2.2, 9.7): four reads of Alternate Status,
    /// each at least 100 ns on an ISA bus.
    fn delay_400ns(&mut self) {
        for _ in 0..4 {
            self.alt_status();
        }
    }

    /// The Device Control value between resets: nIEN unless the wait
    /// wants the interrupt.
    fn control_bits(&self) -> u8 {
        if self.wait.uses_irq() {
            0
        } else {
            control::NIEN
        }
    }

    /// Polls Alternate Status until none of `busy` is set; returns it.
    fn wait_clear(&mut self, command: Command, busy: u8) -> Result<u8, Error> {
        self.wait.start();
        let mut st = self.alt_status();
        for _ in 0..self.max_polls {
            if st == 0xff {
                return Err(Error::NoDevice { status: st });
            }
            if st & busy == 0 {
                return Ok(st);
            }
            if !self.wait.pause() {
                break;
            }
            st = self.alt_status();
        }
        Err(Error::Timeout {
            command,
            status: st,
        })
    }

    /// Selects the drive (with LBA bits 27:24 in `head`) once the channel
    /// is idle (the host may write the Command Block only with BSY and DRQ
    /// clear, ATA/ATAPI-6 9.2).
    fn select(&mut self, command: Command, head: u8) -> Result<(), Error> {
        let port = self.channel.control;
        let bits = self.control_bits();
        self.io.outb(port, bits);
        self.wait_clear(command, status::BSY | status::DRQ)?;
        let port = self.reg(regs::DEVICE);
        let value = device::OBSOLETE | device::LBA | self.drive.dev_bit() | (head & 0x0f);
        self.io.outb(port, value);
        self.delay_400ns();
        self.wait_clear(command, status::BSY | status::DRQ)?;
        Ok(())
    }

    /// Writes the address and count of a transfer and the command. The
    /// 48-bit form writes each register twice, the high-order byte first:
    /// the device keeps the first as the "previous content" (8.28, 6.20).
    fn issue(&mut self, command: Command, lba: u64, count: u32) {
        let b = |shift: u32| ((lba >> shift) & 0xff) as u8;
        let c = |shift: u32| ((count >> shift) & 0xff) as u8;
        if command.is_ext() {
            let writes = [
                (regs::SECTOR_COUNT, c(8)),
                (regs::LBA_LOW, b(24)),
                (regs::LBA_MID, b(32)),
                (regs::LBA_HIGH, b(40)),
                (regs::SECTOR_COUNT, c(0)),
                (regs::LBA_LOW, b(0)),
                (regs::LBA_MID, b(8)),
                (regs::LBA_HIGH, b(16)),
            ];
            for (r, v) in writes {
                let port = self.reg(r);
                self.io.outb(port, v);
            }
        } else {
            for (r, v) in [
                (regs::SECTOR_COUNT, c(0)),
                (regs::LBA_LOW, b(0)),
                (regs::LBA_MID, b(8)),
                (regs::LBA_HIGH, b(16)),
            ] {
                let port = self.reg(r);
                self.io.outb(port, v);
            }
        }
        if let Some(code) = command.code() {
            let port = self.reg(regs::COMMAND);
            self.io.outb(port, code);
        }
        self.delay_400ns();
    }

    /// The error a finished status reports, if any: ERR, then DF.
    fn check(&mut self, command: Command, lba: u64, st: u8) -> Result<(), Error> {
        if st & status::ERR != 0 {
            let port = self.reg(regs::ERROR);
            let error = self.io.inb(port);
            return Err(Error::Device {
                command,
                lba,
                status: st,
                error,
            });
        }
        if st & status::DF != 0 {
            return Err(Error::Fault {
                command,
                lba,
                status: st,
            });
        }
        Ok(())
    }

    /// Waits for the interrupt the protocol promises next, in interrupt
    /// mode, if the device is still busy: a device that finished at once
    /// (Bochs completes PIO commands inside the port write) may have
    /// raised and dropped its request before anyone saw it, so its status
    /// is believed instead. The interrupt may then stay latched and end a
    /// later wait early, which the status polls after it make harmless.
    fn irq_due(&mut self) {
        if self.wait.uses_irq() && self.alt_status() & status::BSY != 0 {
            self.wait.wait_irq();
        }
    }

    /// Waits for the device to ask for a sector's data (BSY clear, DRQ
    /// set), acknowledging its interrupt.
    fn wait_drq(&mut self, command: Command, lba: u64) -> Result<(), Error> {
        self.wait_clear(command, status::BSY)?;
        let st = self.status();
        self.check(command, lba, st)?;
        if st & status::DRQ == 0 {
            return Err(Error::Protocol {
                command,
                lba,
                status: st,
                drq_expected: true,
            });
        }
        Ok(())
    }

    /// Waits for the end of a command and checks how it ended.
    fn finish(&mut self, command: Command, lba: u64) -> Result<(), Error> {
        self.wait_clear(command, status::BSY)?;
        let st = self.status();
        self.check(command, lba, st)?;
        if st & status::DRQ != 0 {
            return Err(Error::Protocol {
                command,
                lba,
                status: st,
                drq_expected: false,
            });
        }
        Ok(())
    }

    /// IDENTIFY DEVICE (ATA/ATAPI-6 8.15): finds the disk and what it
    /// offers, and keeps the answer for the transfers.
    pub fn identify(&mut self) -> Result<DiskInfo, Error> {
        let command = Command::IdentifyDevice;
        let st = self.alt_status();
        if st == 0xff {
            return Err(Error::NoDevice { status: st });
        }
        self.select(command, 0)?;
        self.issue(command, 0, 0);
        self.irq_due();
        let st = self.alt_status();
        if st == 0 || st == 0xff {
            return Err(Error::NoDevice { status: st });
        }
        self.wait_clear(command, status::BSY)?;
        let (mid, high) = (self.reg(regs::LBA_MID), self.reg(regs::LBA_HIGH));
        let signature = (self.io.inb(mid), self.io.inb(high));
        let not_ata = Error::NotAta {
            lba_mid: signature.0,
            lba_high: signature.1,
        };
        if signature != (0, 0) {
            // Read Status to acknowledge the interrupt of the abort.
            self.status();
            return Err(not_ata);
        }
        self.wait_drq(command, 0)?;
        let mut data = [0u8; SECTOR_SIZE];
        let port = self.reg(regs::DATA);
        self.io.insw(port, &mut data);
        self.finish(command, 0)?;
        let info = DiskInfo::parse(&data).map_err(|e| match e {
            IdentifyError::NoLba => Error::NoLba,
            IdentifyError::NotAta => not_ata,
        })?;
        self.info = Some(info);
        self.width = if info.dword_io && !self.word_only {
            DataWidth::Dword
        } else {
            DataWidth::Word
        };
        self.multiple = 0;
        if info.max_multiple > 1 {
            self.set_multiple(info.max_multiple);
        }
        Ok(info)
    }

    /// SET MULTIPLE MODE (ATA8-ACS 7.51, a non-data command) with `count`
    /// sectors per DRQ block. A device that refuses leaves the driver on
    /// READ/WRITE SECTORS, which every ATA disk has; one that does not
    /// answer is reset.
    fn set_multiple(&mut self, count: u8) {
        let command = Command::SetMultipleMode;
        let done = self.select(command, 0).and_then(|()| {
            self.issue(command, 0, u32::from(count));
            self.irq_due();
            self.finish(command, 0)
        });
        self.multiple = match done {
            Ok(()) => count,
            Err(Error::Timeout { .. } | Error::Protocol { .. }) => {
                self.multiple = 0;
                let _ = self.reset();
                0
            }
            Err(_) => 0,
        };
    }

    /// The identified disk, and the range check of a transfer.
    fn prepare(&self, lba: u64, len: usize) -> Result<(DiskInfo, u64), Error> {
        let info = self.info.ok_or(Error::NotIdentified)?;
        if !len.is_multiple_of(SECTOR_SIZE) {
            return Err(Error::BadLength { len });
        }
        let count = (len / SECTOR_SIZE) as u64;
        if lba.checked_add(count).is_none_or(|end| end > info.sectors) {
            return Err(Error::OutOfRange {
                lba,
                count,
                sectors: info.sectors,
            });
        }
        Ok((info, count))
    }

    /// Moves the sectors at `lba`, `len` bytes, through `each(byte offset
    /// in the transfer, bytes, io, data port, width)` -- one call per DRQ
    /// block -- in as few commands as the address size allows. `each`
    /// answers whether every byte had a home in the caller's buffers.
    fn transfer(
        &mut self,
        dir: Dir,
        lba: u64,
        len: usize,
        mut each: impl FnMut(usize, usize, &mut P, u16, DataWidth) -> bool,
    ) -> Result<(), Error> {
        let (info, count) = self.prepare(lba, len)?;
        // 48-bit commands when the disk has them (up to 65536 sectors
        // each), else 28-bit ones (up to 256, below sector 2^28); the
        // MULTIPLE ones once SET MULTIPLE MODE took (a DRQ block of
        // `multiple` sectors, the last one shorter: ATA8-ACS 7.26).
        let multiple = self.multiple > 0;
        let (command, per_command) = match (dir, info.lba48, multiple) {
            (Dir::Read, true, false) => (Command::ReadSectorsExt, 65536),
            (Dir::Write, true, false) => (Command::WriteSectorsExt, 65536),
            (Dir::Read, false, false) => (Command::ReadSectors, 256),
            (Dir::Write, false, false) => (Command::WriteSectors, 256),
            (Dir::Read, true, true) => (Command::ReadMultipleExt, 65536),
            (Dir::Write, true, true) => (Command::WriteMultipleExt, 65536),
            (Dir::Read, false, true) => (Command::ReadMultiple, 256),
            (Dir::Write, false, true) => (Command::WriteMultiple, 256),
        };
        let block = u64::from(self.multiple.max(1));
        let width = self.width;
        let mut whole = true;
        let mut done = 0u64;
        while done < count {
            let n = (count - done).min(per_command);
            let start = lba + done;
            if !command.is_ext() && start + n > 1 << 28 {
                return Err(Error::OutOfRange {
                    lba,
                    count,
                    sectors: info.sectors.min(1 << 28),
                });
            }
            let head = if command.is_ext() {
                0
            } else {
                ((start >> 24) & 0x0f) as u8
            };
            self.select(command, head)?;
            // A count of 0 in the register means 256 (65536 with EXT).
            self.issue(command, start, (n % per_command) as u32);
            let mut i = 0;
            while i < n {
                let b = (n - i).min(block);
                // PIO data-in interrupts before each block; data-out after
                // each block, not before the first (ATA/ATAPI-6 9.7, 9.8).
                if dir == Dir::Read {
                    self.irq_due();
                }
                self.wait_drq(command, start + i)?;
                let port = self.reg(regs::DATA);
                // At most 65536 sectors from the start of a buffer that
                // is `len` bytes: fits a usize.
                let at = ((done + i) as usize) * SECTOR_SIZE;
                whole &= each(at, b as usize * SECTOR_SIZE, &mut self.io, port, width);
                if dir == Dir::Write {
                    self.irq_due();
                }
                i += b;
            }
            self.finish(command, start + n - 1)?;
            done += n;
        }
        if !whole {
            return Err(Error::BadLength { len });
        }
        Ok(())
    }

    /// READ SECTORS (EXT) or READ MULTIPLE (EXT): fills `buf` (a whole
    /// number of sectors) from sector `lba` on, by PIO straight into `buf`.
    pub fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), Error> {
        let len = buf.len();
        self.read_into(lba, len, &mut SliceSink(buf))
    }

    /// As [`Ata::read`], into the `len` bytes of `sink` (a scatter list:
    /// its chunks may split a sector or a Data register access). A `sink`
    /// with a hole is refused before the device is asked.
    pub fn read_into(&mut self, lba: u64, len: usize, sink: &mut impl Sink) -> Result<(), Error> {
        if !covered(len, |at, max| sink.chunk_mut(at, max).map(|c| c.len())) {
            return Err(Error::BadLength { len });
        }
        self.transfer(Dir::Read, lba, len, |at, n, io, port, width| {
            pio_in(io, port, width, at, n, sink)
        })
    }

    /// WRITE SECTORS (EXT) or WRITE MULTIPLE (EXT): writes `buf` (a whole
    /// number of sectors) from sector `lba` on. The data may sit in the
    /// disk's write cache until [`Ata::flush`].
    pub fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), Error> {
        self.write_from(lba, buf.len(), &mut SliceSource(buf))
    }

    /// As [`Ata::write`], from the `len` bytes of `source`.
    pub fn write_from(
        &mut self,
        lba: u64,
        len: usize,
        source: &mut impl Source,
    ) -> Result<(), Error> {
        if !covered(len, |at, max| source.chunk(at, max).map(|c| c.len())) {
            return Err(Error::BadLength { len });
        }
        self.transfer(Dir::Write, lba, len, |at, n, io, port, width| {
            pio_out(io, port, width, at, n, source)
        })
    }

    /// FLUSH CACHE (EXT): returns when the disk has written its cache to
    /// the medium.
    pub fn flush(&mut self) -> Result<(), Error> {
        let info = self.info.ok_or(Error::NotIdentified)?;
        let command = match info.flush {
            Flush::CacheExt => Command::FlushCacheExt,
            Flush::Cache => Command::FlushCache,
            Flush::None => return Err(Error::FlushUnsupported),
        };
        self.select(command, 0)?;
        if let Some(code) = command.code() {
            let port = self.reg(regs::COMMAND);
            self.io.outb(port, code);
        }
        self.delay_400ns();
        self.irq_due();
        self.finish(command, 0)
    }

    /// A software reset of the channel (ATA/ATAPI-6 9.2, 11.2): SRST set,
    /// held at least 5 us, cleared, then the wait for BSY to clear (up to
    /// 31 s on real disks; here, the wait's budget). Both devices on the
    /// channel are reset; the identified disk stays identified.
    pub fn reset(&mut self) -> Result<(), Error> {
        let command = Command::SoftwareReset;
        let port = self.channel.control;
        let bits = self.control_bits();
        self.io.outb(port, control::SRST | bits);
        // Each Alternate Status read takes at least 100 ns on an ISA bus.
        for _ in 0..50 {
            self.alt_status();
        }
        self.io.outb(port, bits);
        self.delay_400ns();
        let st = self.wait_clear(command, status::BSY)?;
        if st == 0 {
            return Err(Error::NoDevice { status: st });
        }
        // Acknowledge any interrupt of the reset.
        self.status();
        // A device may forget the DRQ block size in a reset (ATA8-ACS
        // leaves it to the device); set it again.
        let multiple = core::mem::take(&mut self.multiple);
        if multiple > 0 {
            self.set_multiple(multiple);
        }
        Ok(())
    }
}

#[cfg(any(test, feature = "model"))]
pub mod model;
#[cfg(test)]
mod tests;
