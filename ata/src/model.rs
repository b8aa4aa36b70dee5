//! A model of an ATA disk's register behaviour on the primary channel,
//! after ATA/ATAPI-6's PIO protocols (9.7 PIO data-in, 9.8 PIO data-out,
//! 9.6 non-data), ATA8-ACS's MULTIPLE commands (SET MULTIPLE MODE 7.51,
//! READ/WRITE MULTIPLE (EXT) 7.26-7.27, 7.64-7.65: DRQ blocks of the set
//! number of sectors, the last one shorter, one interrupt a block) and
//! how QEMU's `hw/ide/core.c` answers (32-bit Data register accesses as
//! two words when IDENTIFY word 48 says so): a [`PortIo`] for
//! tests of this driver and of the servers built on it (feature `model`;
//! it needs `std`).
extern crate std;

use std::collections::BTreeMap;
use std::vec::Vec;

use crate::identify::qemu_like;
use crate::regs::{self, command as cmd, control, device, error as err, status};
use crate::{PortIo, SECTOR_SIZE};

/// What is on the channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    /// Nothing: no controller either, every port reads all ones.
    FloatingBus,
    /// A controller without a device: registers read 0 (QEMU's PIIX IDE
    /// with no drive).
    ControllerOnly,
    /// An ATAPI device (a CD-ROM).
    Atapi,
    /// A disk.
    Disk,
}

/// Where the device is in a command's protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// No command.
    Idle,
    /// PIO data-in: `left` sectors to go, the current one in `buf`.
    DataIn {
        /// The sector in the buffer.
        lba: u64,
        /// Sectors to go, this one included.
        left: u32,
        /// Sectors to go in this DRQ block, this one included.
        block: u32,
    },
    /// PIO data-out.
    DataOut {
        /// The sector being written.
        lba: u64,
        /// Sectors to go, this one included.
        left: u32,
        /// Sectors to go in this DRQ block, this one included.
        block: u32,
    },
}

/// A register that keeps its previous content (for 48-bit commands).
#[derive(Clone, Copy, Debug, Default)]
pub struct Fifo {
    /// The current content.
    pub cur: u8,
    /// The previous content (read with HOB).
    pub prev: u8,
}

impl Fifo {
    fn write(&mut self, v: u8) {
        self.prev = self.cur;
        self.cur = v;
    }
}

/// An ATA device (or its absence) on the primary channel, as its
/// registers behave.
pub struct Device {
    /// What is on the channel.
    pub attached: Attached,
    /// The disk's sectors.
    pub sectors: u64,
    /// It has the 48-bit feature set.
    pub lba48: bool,
    /// IDENTIFY reports FLUSH CACHE (EXT).
    pub flush_bits: bool,
    /// Sparse storage: absent sectors read as zeros.
    pub data: BTreeMap<u64, [u8; SECTOR_SIZE]>,
    /// Sector Count.
    pub count: Fifo,
    /// LBA Low.
    pub low: Fifo,
    /// LBA Mid.
    pub mid: Fifo,
    /// LBA High.
    pub high: Fifo,
    /// Device register.
    pub device: u8,
    /// Device Control register.
    pub control: u8,
    /// Status register.
    pub status: u8,
    /// Error register.
    pub error: u8,
    /// Protocol phase.
    pub phase: Phase,
    /// The sector buffer.
    pub buf: [u8; SECTOR_SIZE],
    /// Next byte of the buffer.
    pub pos: usize,
    /// Status reads that still show BSY before a pending step happens.
    pub busy_reads: u32,
    /// How many status reads each step stays busy.
    pub latency: u32,
    /// Never leaves BSY once a command is issued.
    pub stuck: bool,
    /// This sector is unreadable and unwritable (UNC).
    pub bad_sector: Option<u64>,
    /// Sets DF on the next command.
    pub fault: bool,
    /// A flush command aborts though IDENTIFY claims it.
    pub flush_aborts: bool,
    /// INTRQ is asserted.
    pub irq_pending: bool,
    /// Every command code written, in order.
    pub commands: Vec<u8>,
    /// Flushes done.
    pub flushes: u32,
    /// Port accesses so far.
    pub port_ops: u64,
    /// 32-bit Data register accesses so far (in `port_ops` too).
    pub dword_ops: u64,
    /// IDENTIFY word 47's maximum sectors per DRQ block (0: no MULTIPLE
    /// commands; QEMU's is 16).
    pub max_multiple: u8,
    /// The current DRQ block size (SET MULTIPLE MODE; 0: not set, the
    /// MULTIPLE commands abort). Power-on and a software reset clear it.
    pub multiple: u8,
    /// IDENTIFY word 48 reads 0001h and 32-bit Data accesses move two
    /// words. Without it the model is a 16-bit bus: a 32-bit access moves
    /// one word, and a read's high half floats (0xffff).
    pub dword_io: bool,
    /// Interrupts raised so far (with nIEN clear).
    pub irqs: u64,
}

impl Device {
    /// A device of `sectors` sectors, idle.
    pub fn new(attached: Attached, sectors: u64, lba48: bool) -> Self {
        Self {
            attached,
            sectors,
            lba48,
            flush_bits: true,
            data: BTreeMap::new(),
            count: Fifo::default(),
            low: Fifo::default(),
            mid: Fifo::default(),
            high: Fifo::default(),
            device: 0,
            control: 0,
            status: status::DRDY,
            error: 0,
            phase: Phase::Idle,
            buf: [0; SECTOR_SIZE],
            pos: 0,
            busy_reads: 0,
            latency: 0,
            stuck: false,
            bad_sector: None,
            fault: false,
            flush_aborts: false,
            irq_pending: false,
            commands: Vec::new(),
            flushes: 0,
            port_ops: 0,
            dword_ops: 0,
            max_multiple: 16,
            multiple: 0,
            dword_io: true,
            irqs: 0,
        }
    }

    /// A disk with the 48-bit feature set, as QEMU's.
    pub fn disk(sectors: u64) -> Self {
        Self::new(Attached::Disk, sectors, true)
    }

    /// Sector `lba`'s content.
    pub fn sector(&self, lba: u64) -> [u8; SECTOR_SIZE] {
        self.data.get(&lba).copied().unwrap_or([0; SECTOR_SIZE])
    }

    fn selected_absent(&self) -> bool {
        self.device & device::DEV != 0
    }

    fn raise(&mut self) {
        if self.control & control::NIEN == 0 {
            self.irq_pending = true;
            self.irqs += 1;
        }
    }

    fn abort(&mut self, e: u8) {
        self.error = e;
        self.status = status::DRDY | status::ERR;
        self.phase = Phase::Idle;
        self.raise();
    }

    fn shown_status(&mut self) -> u8 {
        match self.attached {
            Attached::FloatingBus => return 0xff,
            Attached::ControllerOnly => return 0,
            _ => {}
        }
        if self.selected_absent() {
            return 0;
        }
        if self.stuck {
            return status::BSY;
        }
        if self.busy_reads > 0 {
            self.busy_reads -= 1;
            return status::BSY;
        }
        self.status
    }

    /// Loads the DRQ block of `block` sectors from `lba` for PIO data-in
    /// (its first sector into the buffer), or ends with UNC if one of them
    /// is bad: the device reads a whole block before it asks the host to
    /// take it.
    fn load(&mut self, lba: u64, block: u32) {
        if self
            .bad_sector
            .is_some_and(|b| (lba..lba + u64::from(block)).contains(&b))
        {
            self.abort(err::UNC);
            return;
        }
        self.buf = self.sector(lba);
        self.pos = 0;
        self.status = status::DRDY | status::DRQ;
        self.busy_reads = self.latency;
        self.raise();
    }

    /// The DRQ block size of a data command: 1 for READ/WRITE SECTORS,
    /// the set size for the MULTIPLE ones.
    fn block_of(&self, code: u8) -> u32 {
        match code {
            cmd::READ_MULTIPLE
            | cmd::READ_MULTIPLE_EXT
            | cmd::WRITE_MULTIPLE
            | cmd::WRITE_MULTIPLE_EXT => u32::from(self.multiple),
            _ => 1,
        }
    }

    /// The 28- or 48-bit address and count the registers hold.
    fn address(&self, ext: bool) -> (u64, u32) {
        if ext {
            let lba = u64::from(self.low.cur)
                | u64::from(self.mid.cur) << 8
                | u64::from(self.high.cur) << 16
                | u64::from(self.low.prev) << 24
                | u64::from(self.mid.prev) << 32
                | u64::from(self.high.prev) << 40;
            let n = u32::from(self.count.cur) | u32::from(self.count.prev) << 8;
            (lba, if n == 0 { 65536 } else { n })
        } else {
            let lba = u64::from(self.low.cur)
                | u64::from(self.mid.cur) << 8
                | u64::from(self.high.cur) << 16
                | u64::from(self.device & 0x0f) << 24;
            let n = u32::from(self.count.cur);
            (lba, if n == 0 { 256 } else { n })
        }
    }

    fn execute(&mut self, code: u8) {
        self.commands.push(code);
        if self.attached != Attached::Disk && self.attached != Attached::Atapi {
            return;
        }
        if self.selected_absent() {
            return;
        }
        self.error = 0;
        self.busy_reads = self.latency;
        if self.fault {
            self.status = status::DRDY | status::DF;
            self.raise();
            return;
        }
        if self.attached == Attached::Atapi {
            // An ATAPI device aborts IDENTIFY DEVICE and shows its
            // signature (ATA/ATAPI-6 8.15.3; QEMU's cmd_identify).
            self.mid.cur = regs::SIGNATURE_ATAPI.0;
            self.high.cur = regs::SIGNATURE_ATAPI.1;
            self.abort(err::ABRT);
            return;
        }
        match code {
            cmd::IDENTIFY_DEVICE => {
                let mut id = qemu_like("QEMU HARDDISK", self.sectors, self.lba48);
                if !self.flush_bits {
                    id[2 * 83 + 1] &= !0x30; // bits 13, 12
                }
                let w47: u16 = if self.max_multiple == 0 {
                    0
                } else {
                    0x8000 | u16::from(self.max_multiple)
                };
                id[94..96].copy_from_slice(&w47.to_le_bytes());
                id[96..98].copy_from_slice(&u16::from(self.dword_io).to_le_bytes());
                // Word 59: bit 8, the setting is valid; 7:0, the setting.
                let w59: u16 = if self.multiple == 0 {
                    0
                } else {
                    0x100 | u16::from(self.multiple)
                };
                id[118..120].copy_from_slice(&w59.to_le_bytes());
                self.buf = id;
                self.pos = 0;
                self.status = status::DRDY | status::DRQ;
                self.phase = Phase::DataIn {
                    lba: 0,
                    left: 1,
                    block: 1,
                };
                self.raise();
            }
            cmd::SET_MULTIPLE_MODE => {
                // A size the device does not have aborts (ATA8-ACS 7.51:
                // up to word 47's maximum; QEMU and Bochs also want a
                // power of two), and the old setting stays.
                let n = self.count.cur;
                if n == 0 || n > self.max_multiple || !n.is_power_of_two() {
                    self.abort(err::ABRT);
                    return;
                }
                self.multiple = n;
                self.status = status::DRDY;
                self.raise();
            }
            cmd::READ_SECTORS
            | cmd::READ_SECTORS_EXT
            | cmd::WRITE_SECTORS
            | cmd::WRITE_SECTORS_EXT
            | cmd::READ_MULTIPLE
            | cmd::READ_MULTIPLE_EXT
            | cmd::WRITE_MULTIPLE
            | cmd::WRITE_MULTIPLE_EXT => {
                let ext = matches!(
                    code,
                    cmd::READ_SECTORS_EXT
                        | cmd::WRITE_SECTORS_EXT
                        | cmd::READ_MULTIPLE_EXT
                        | cmd::WRITE_MULTIPLE_EXT
                );
                let size = self.block_of(code);
                // A MULTIPLE command before SET MULTIPLE MODE aborts.
                if (ext && !self.lba48) || size == 0 {
                    self.abort(err::ABRT);
                    return;
                }
                let (lba, n) = self.address(ext);
                if lba + u64::from(n) > self.sectors {
                    self.abort(err::IDNF);
                    return;
                }
                let block = n.min(size);
                if matches!(
                    code,
                    cmd::READ_SECTORS
                        | cmd::READ_SECTORS_EXT
                        | cmd::READ_MULTIPLE
                        | cmd::READ_MULTIPLE_EXT
                ) {
                    self.phase = Phase::DataIn {
                        lba,
                        left: n,
                        block,
                    };
                    self.load(lba, block);
                } else {
                    // PIO data-out: DRQ for the first block without an
                    // interrupt (9.8).
                    self.phase = Phase::DataOut {
                        lba,
                        left: n,
                        block,
                    };
                    self.pos = 0;
                    self.status = status::DRDY | status::DRQ;
                }
            }
            cmd::FLUSH_CACHE | cmd::FLUSH_CACHE_EXT => {
                if self.flush_aborts || (code == cmd::FLUSH_CACHE_EXT && !self.lba48) {
                    self.abort(err::ABRT);
                    return;
                }
                self.flushes += 1;
                self.status = status::DRDY;
                self.raise();
            }
            _ => self.abort(err::ABRT),
        }
    }

    fn data_in(&mut self) -> u16 {
        let Phase::DataIn { lba, left, block } = self.phase else {
            return 0xffff;
        };
        if self.status & status::DRQ == 0 || self.busy_reads > 0 {
            return 0xffff;
        }
        let w = u16::from_le_bytes([self.buf[self.pos], self.buf[self.pos + 1]]);
        self.pos += 2;
        if self.pos == SECTOR_SIZE {
            if left > 1 && block > 1 {
                // The next sector of the same DRQ block: DRQ stays set.
                self.phase = Phase::DataIn {
                    lba: lba + 1,
                    left: left - 1,
                    block: block - 1,
                };
                self.buf = self.sector(lba + 1);
                self.pos = 0;
            } else if left > 1 {
                let size = self.block_of(*self.commands.last().unwrap_or(&0));
                let next = (left - 1).min(size.max(1));
                self.phase = Phase::DataIn {
                    lba: lba + 1,
                    left: left - 1,
                    block: next,
                };
                self.load(lba + 1, next);
            } else {
                self.phase = Phase::Idle;
                self.status = status::DRDY;
            }
        }
        w
    }

    fn data_out(&mut self, v: u16) {
        let Phase::DataOut { lba, left, block } = self.phase else {
            return;
        };
        if self.status & status::DRQ == 0 || self.busy_reads > 0 {
            return;
        }
        self.buf[self.pos..self.pos + 2].copy_from_slice(&v.to_le_bytes());
        self.pos += 2;
        if self.pos < SECTOR_SIZE {
            return;
        }
        if self.bad_sector == Some(lba) {
            self.abort(err::UNC);
            return;
        }
        self.data.insert(lba, self.buf);
        self.pos = 0;
        if left > 1 && block > 1 {
            // The next sector of the same DRQ block: no interrupt.
            self.phase = Phase::DataOut {
                lba: lba + 1,
                left: left - 1,
                block: block - 1,
            };
            return;
        }
        self.busy_reads = self.latency;
        if left > 1 {
            let size = self.block_of(*self.commands.last().unwrap_or(&0));
            self.phase = Phase::DataOut {
                lba: lba + 1,
                left: left - 1,
                block: (left - 1).min(size.max(1)),
            };
            self.status = status::DRDY | status::DRQ;
        } else {
            self.phase = Phase::Idle;
            self.status = status::DRDY;
        }
        self.raise();
    }

    fn soft_reset(&mut self) {
        self.phase = Phase::Idle;
        self.status = status::DRDY;
        self.error = 1; // diagnostic code: no error
        self.count.cur = 1;
        self.low.cur = 1;
        let sig = if self.attached == Attached::Atapi {
            regs::SIGNATURE_ATAPI
        } else {
            (0, 0)
        };
        self.mid.cur = sig.0;
        self.high.cur = sig.1;
        self.device = 0;
        self.busy_reads = self.latency;
        self.stuck = false;
        self.fault = false;
        self.multiple = 0;
    }
}

/// The primary channel's Command Block.
pub const BASE: u16 = 0x1f0;
/// The primary channel's Control Block.
pub const CTRL: u16 = 0x3f6;

impl PortIo for Device {
    fn inb(&mut self, port: u16) -> u8 {
        self.port_ops += 1;
        if self.attached == Attached::FloatingBus {
            return 0xff;
        }
        if port == CTRL {
            return self.shown_status();
        }
        if self.attached == Attached::ControllerOnly {
            return 0;
        }
        let hob = self.control & control::HOB != 0;
        let pick = |f: Fifo| if hob { f.prev } else { f.cur };
        match port.wrapping_sub(BASE) {
            regs::ERROR => self.error,
            regs::SECTOR_COUNT => pick(self.count),
            regs::LBA_LOW => pick(self.low),
            regs::LBA_MID => pick(self.mid),
            regs::LBA_HIGH => pick(self.high),
            regs::DEVICE => self.device,
            regs::STATUS => {
                let s = self.shown_status();
                if s & status::BSY == 0 {
                    self.irq_pending = false;
                }
                s
            }
            _ => 0xff,
        }
    }

    fn outb(&mut self, port: u16, value: u8) {
        self.port_ops += 1;
        if self.attached == Attached::FloatingBus {
            return;
        }
        if port == CTRL {
            let was = self.control;
            self.control = value;
            if value & control::SRST != 0 {
                self.status = status::BSY;
            } else if was & control::SRST != 0 {
                self.soft_reset();
            }
            return;
        }
        if self.status & status::BSY != 0 && port != BASE + regs::COMMAND {
            return; // the device owns the registers
        }
        self.control &= !control::HOB;
        match port.wrapping_sub(BASE) {
            regs::FEATURES => {}
            regs::SECTOR_COUNT => self.count.write(value),
            regs::LBA_LOW => self.low.write(value),
            regs::LBA_MID => self.mid.write(value),
            regs::LBA_HIGH => self.high.write(value),
            regs::DEVICE => self.device = value,
            regs::COMMAND => self.execute(value),
            _ => {}
        }
    }

    fn inw(&mut self, port: u16) -> u16 {
        self.port_ops += 1;
        if self.attached == Attached::FloatingBus {
            return 0xffff;
        }
        if port == BASE + regs::DATA {
            self.data_in()
        } else {
            0xffff
        }
    }

    fn outw(&mut self, port: u16, value: u16) {
        self.port_ops += 1;
        if port == BASE + regs::DATA {
            self.data_out(value);
        }
    }

    fn inl(&mut self, port: u16) -> u32 {
        self.port_ops += 1;
        if self.attached == Attached::FloatingBus || port != BASE + regs::DATA {
            return 0xffff_ffff;
        }
        self.dword_ops += 1;
        let lo = self.data_in();
        let hi = if self.dword_io {
            self.data_in()
        } else {
            0xffff
        };
        u32::from(lo) | u32::from(hi) << 16
    }

    fn outl(&mut self, port: u16, value: u32) {
        self.port_ops += 1;
        if port == BASE + regs::DATA {
            self.dword_ops += 1;
            self.data_out(value as u16);
            if self.dword_io {
                self.data_out((value >> 16) as u16);
            }
        }
    }
}
