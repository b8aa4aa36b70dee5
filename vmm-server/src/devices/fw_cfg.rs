//! QEMU's firmware configuration device (fw_cfg), traditional I/O port
//! interface: what SeaBIOS, OVMF and Linux's `qemu_fw_cfg` read to learn
//! the machine (QEMU `docs/specs/fw_cfg.rst`, `hw/nvram/fw_cfg.c`,
//! `include/standard-headers/linux/qemu_fw_cfg.h`).
//!
//! Ports ([`BASE`], [`LEN`]):
//!
//! - 0x510, selector: a 16-bit write selects an item and sets the data
//!   offset to 0. Bit 14 (write channel) is ignored, bit 15 selects the
//!   architecture-specific items, of which there are none here.
//! - 0x511, data: each byte read returns the item's next byte and
//!   advances the offset; past the end (and for items that do not exist)
//!   reads return 0. A byte read at 0x510 reads data too, and byte writes
//!   to either port are data writes, ignored (QEMU since 2.4). Wider reads
//!   and other writes are refused, as QEMU's `fw_cfg_comb_valid` does:
//!   reads return all ones and change nothing.
//! - The DMA interface (0x514) is left out, so [`key::ID`] reads 1: bit
//!   0, traditional interface, only.
//!
//! Items ([`key`]): the signature `"QEMU"`, the feature bitmap, the RAM
//! size (LE64), the boot and maximum CPU counts (LE16), the file directory
//! and the files at selectors 0x20 up. [`FwCfg::new`] adds `etc/e820`;
//! [`FwCfg::add_file`] adds more (ACPI tables, boot order). Files are kept
//! sorted by name and numbered from [`key::FILE_FIRST`] in that order, as
//! QEMU does; their bytes live in one fixed array of [`FILE_DATA_BYTES`].

use super::{IoSize, PortDevice, WriteOutcome};

/// The selector port; the data port is the next one.
pub const BASE: u16 = 0x510;
/// Ports decoded: selector and data.
pub const LEN: u16 = 2;
/// Offset of the selector register.
pub const SELECTOR: u16 = 0;
/// Offset of the data register.
pub const DATA: u16 = 1;

/// Selector keys (`qemu_fw_cfg.h`; `docs/specs/fw_cfg.rst`).
pub mod key {
    /// `FW_CFG_SIGNATURE`: the bytes "QEMU".
    pub const SIGNATURE: u16 = 0x0000;
    /// `FW_CFG_ID`: feature bitmap, LE32 (bit 0 traditional interface,
    /// bit 1 DMA).
    pub const ID: u16 = 0x0001;
    /// `FW_CFG_RAM_SIZE`: RAM bytes, LE64.
    pub const RAM_SIZE: u16 = 0x0003;
    /// `FW_CFG_NB_CPUS`: CPUs at boot, LE16.
    pub const NB_CPUS: u16 = 0x0005;
    /// `FW_CFG_MAX_CPUS`: most CPUs, LE16.
    pub const MAX_CPUS: u16 = 0x000f;
    /// `FW_CFG_FILE_DIR`: the file directory.
    pub const FILE_DIR: u16 = 0x0019;
    /// `FW_CFG_FILE_FIRST`: the first file's selector.
    pub const FILE_FIRST: u16 = 0x0020;
    /// `FW_CFG_WRITE_CHANNEL`: selector bit 14.
    pub const WRITE_CHANNEL: u16 = 0x4000;
    /// `FW_CFG_ARCH_LOCAL`: selector bit 15.
    pub const ARCH_LOCAL: u16 = 0x8000;
    /// `FW_CFG_ENTRY_MASK`: the item number in a selector.
    pub const ENTRY_MASK: u16 = !(WRITE_CHANNEL | ARCH_LOCAL);
}

/// The feature bitmap: traditional interface only (no DMA).
pub const FEATURES: u32 = 1;
/// Most files.
pub const MAX_FILES: usize = 16;
/// Bytes for all files' contents together.
pub const FILE_DATA_BYTES: usize = 8192;
/// Bytes of a file name in a directory entry, with its NUL: names are at
/// most 55 bytes.
pub const FILE_NAME_LEN: usize = 56;
/// Bytes of one directory entry (`struct FWCfgFile`).
pub const FILE_DIR_ENTRY_LEN: u32 = 64;

/// The e820 file's name.
pub const E820_FILE: &str = "etc/e820";
/// Bytes of one `struct e820_entry { le64 address; le64 length; le32
/// type; }` (QEMU `hw/i386/e820_memory_layout.h`, packed).
pub const E820_ENTRY_LEN: usize = 20;
/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// RAM sizes from this up are split around the PCI hole, as QEMU's
/// i440fx machine does (`pc_init1`): 3 GiB below 4 GiB, the rest from
/// 4 GiB. Smaller RAM is all below 4 GiB.
pub const SPLIT_RAM_FROM: u64 = 0xE000_0000;
/// RAM below 4 GiB when split.
pub const LOW_RAM_WHEN_SPLIT: u64 = 0xC000_0000;
/// Where RAM above 4 GiB starts.
pub const HIGH_RAM_BASE: u64 = 1 << 32;

/// Why a file could not be added.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FwCfgError {
    /// The name is empty, longer than 55 bytes or holds a NUL.
    BadName,
    /// A file of that name exists.
    Duplicate,
    /// [`MAX_FILES`] files exist already.
    TooManyFiles,
    /// The contents do not fit in what is left of [`FILE_DATA_BYTES`].
    NoRoom,
}

#[derive(Clone, Copy, Debug)]
struct File {
    name: [u8; FILE_NAME_LEN],
    start: usize,
    len: usize,
}

/// The fw_cfg device.
#[derive(Clone, Debug)]
pub struct FwCfg {
    selector: u16,
    offset: u32,
    ram_bytes: u64,
    cpus: u16,
    files: heapless::Vec<File, MAX_FILES>,
    data: [u8; FILE_DATA_BYTES],
    used: usize,
}

/// The `etc/e820` contents for `ram_bytes` of RAM: RAM from 0 to the
/// below-4G size and, if any, from 4 GiB up (QEMU `pc_memory_init`'s
/// `e820_add_entry` calls). Returns the buffer and the bytes used.
pub fn e820_table(ram_bytes: u64) -> ([u8; 2 * E820_ENTRY_LEN], usize) {
    let (low, high) = if ram_bytes >= SPLIT_RAM_FROM {
        (LOW_RAM_WHEN_SPLIT, ram_bytes - LOW_RAM_WHEN_SPLIT)
    } else {
        (ram_bytes, 0)
    };
    let mut buf = [0u8; 2 * E820_ENTRY_LEN];
    let mut used = 0;
    for (base, len) in [(0, low), (HIGH_RAM_BASE, high)] {
        if len == 0 {
            continue;
        }
        if let Some(e) = buf.get_mut(used..used + E820_ENTRY_LEN) {
            e[0..8].copy_from_slice(&base.to_le_bytes());
            e[8..16].copy_from_slice(&len.to_le_bytes());
            e[16..20].copy_from_slice(&E820_RAM.to_le_bytes());
            used += E820_ENTRY_LEN;
        }
    }
    (buf, used)
}

impl FwCfg {
    /// The device for a VM of `ram_bytes` of RAM and `cpus` CPUs (both
    /// the boot and the maximum count), with the file `etc/e820`.
    pub fn new(ram_bytes: u64, cpus: u16) -> Self {
        let mut fw = Self {
            selector: key::SIGNATURE,
            offset: 0,
            ram_bytes,
            cpus,
            files: heapless::Vec::new(),
            data: [0; FILE_DATA_BYTES],
            used: 0,
        };
        let (e820, len) = e820_table(ram_bytes);
        // Cannot fail on an empty table: the name is valid and 40 bytes fit.
        let _ = fw.add_file(E820_FILE, e820.get(..len).unwrap_or(&[]));
        fw
    }

    /// Adds a file named `name` holding a copy of `contents`. Files are
    /// numbered in name order, so selectors of files after it move up by
    /// one: look them up by name ([`FwCfg::file_selector`]), as guests do.
    pub fn add_file(&mut self, name: &str, contents: &[u8]) -> Result<(), FwCfgError> {
        let n = name.as_bytes();
        if n.is_empty() || n.len() >= FILE_NAME_LEN || n.contains(&0) {
            return Err(FwCfgError::BadName);
        }
        if self.files.is_full() {
            return Err(FwCfgError::TooManyFiles);
        }
        let end = self
            .used
            .checked_add(contents.len())
            .filter(|&e| e <= FILE_DATA_BYTES)
            .ok_or(FwCfgError::NoRoom)?;
        let mut file = File {
            name: [0; FILE_NAME_LEN],
            start: self.used,
            len: contents.len(),
        };
        file.name[..n.len()].copy_from_slice(n);
        let at = match self.files.binary_search_by(|f| f.name.cmp(&file.name)) {
            Ok(_) => return Err(FwCfgError::Duplicate),
            Err(at) => at,
        };
        self.data[self.used..end].copy_from_slice(contents);
        self.used = end;
        self.files
            .insert(at, file)
            .map_err(|_| FwCfgError::TooManyFiles)
    }

    /// The selector of the file `name`.
    pub fn file_selector(&self, name: &str) -> Option<u16> {
        let n = name.as_bytes();
        let i = self
            .files
            .iter()
            .position(|f| f.name.get(..n.len()) == Some(n) && f.name.get(n.len()) == Some(&0))?;
        key::FILE_FIRST.checked_add(u16::try_from(i).ok()?)
    }

    /// The file behind item number `item`, if it is one.
    fn file(&self, item: u16) -> Option<&File> {
        let i = item.checked_sub(key::FILE_FIRST)?;
        self.files.get(usize::from(i))
    }

    /// Byte `offset` of the item `selector` selects; `None` past its end or
    /// when there is no such item.
    fn item_byte(&self, selector: u16, offset: u32) -> Option<u8> {
        if selector & key::ARCH_LOCAL != 0 {
            return None;
        }
        let off = usize::try_from(offset).ok()?;
        let item = selector & key::ENTRY_MASK;
        match item {
            key::SIGNATURE => b"QEMU".get(off).copied(),
            key::ID => FEATURES.to_le_bytes().get(off).copied(),
            key::RAM_SIZE => self.ram_bytes.to_le_bytes().get(off).copied(),
            key::NB_CPUS | key::MAX_CPUS => self.cpus.to_le_bytes().get(off).copied(),
            key::FILE_DIR => self.file_dir_byte(offset),
            _ => {
                let f = self.file(item)?;
                if off >= f.len {
                    return None;
                }
                self.data.get(f.start.checked_add(off)?).copied()
            }
        }
    }

    /// Byte `offset` of the file directory: a BE32 count, then a 64-byte
    /// `struct FWCfgFile { be32 size; be16 select; be16 reserved; char
    /// name[56]; }` per file.
    fn file_dir_byte(&self, offset: u32) -> Option<u8> {
        let count = u32::try_from(self.files.len()).ok()?;
        let Some(rel) = offset.checked_sub(4) else {
            return count
                .to_be_bytes()
                .get(usize::try_from(offset).ok()?)
                .copied();
        };
        let index = u16::try_from(rel / FILE_DIR_ENTRY_LEN).ok()?;
        let field = usize::try_from(rel % FILE_DIR_ENTRY_LEN).ok()?;
        let f = self.files.get(usize::from(index))?;
        Some(match field {
            0..=3 => u32::try_from(f.len).ok()?.to_be_bytes()[field],
            4..=5 => key::FILE_FIRST.checked_add(index)?.to_be_bytes()[field - 4],
            6..=7 => 0,
            _ => *f.name.get(field - 8)?,
        })
    }

    /// Bytes of the item `selector` selects (0 when there is none).
    pub fn item_len(&self, selector: u16) -> u32 {
        if selector & key::ARCH_LOCAL != 0 {
            return 0;
        }
        let item = selector & key::ENTRY_MASK;
        match item {
            key::SIGNATURE | key::ID => 4,
            key::RAM_SIZE => 8,
            key::NB_CPUS | key::MAX_CPUS => 2,
            key::FILE_DIR => {
                // At most MAX_FILES entries: no overflow.
                4 + FILE_DIR_ENTRY_LEN * self.files.len() as u32
            }
            _ => self
                .file(item)
                .and_then(|f| u32::try_from(f.len).ok())
                .unwrap_or(0),
        }
    }

    /// Selects an item: the data offset goes back to 0.
    pub fn select(&mut self, selector: u16) {
        self.selector = selector;
        self.offset = 0;
    }

    /// The next data byte (0 past the end).
    pub fn read_data(&mut self) -> u8 {
        match self.item_byte(self.selector, self.offset) {
            Some(b) => {
                self.offset = self.offset.saturating_add(1);
                b
            }
            None => 0,
        }
    }
}

impl PortDevice for FwCfg {
    fn read(&mut self, offset: u16, size: IoSize) -> u32 {
        match (offset, size) {
            (SELECTOR | DATA, IoSize::Byte) => u32::from(self.read_data()),
            _ => u32::MAX,
        }
    }

    fn write(&mut self, offset: u16, size: IoSize, value: u32) -> WriteOutcome {
        if (offset, size) == (SELECTOR, IoSize::Word) {
            self.select(value as u16);
        }
        WriteOutcome::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn read_item(fw: &mut FwCfg, selector: u16, len: usize) -> heapless::Vec<u8, 2048> {
        fw.write(SELECTOR, IoSize::Word, u32::from(selector));
        (0..len)
            .map(|_| fw.read(DATA, IoSize::Byte) as u8)
            .collect()
    }

    fn be32(b: &[u8]) -> u32 {
        u32::from_be_bytes(b[..4].try_into().unwrap())
    }

    #[test]
    fn signature_id_ram_and_cpus() {
        let mut fw = FwCfg::new(0x1000_0000, 2);
        assert_eq!(
            read_item(&mut fw, key::SIGNATURE, 6).as_slice(),
            b"QEMU\0\0"
        );
        assert_eq!(read_item(&mut fw, key::ID, 4).as_slice(), &[1, 0, 0, 0]);
        assert_eq!(
            read_item(&mut fw, key::RAM_SIZE, 8).as_slice(),
            &0x1000_0000u64.to_le_bytes()
        );
        assert_eq!(read_item(&mut fw, key::NB_CPUS, 2).as_slice(), &[2, 0]);
        assert_eq!(read_item(&mut fw, key::MAX_CPUS, 2).as_slice(), &[2, 0]);
        // The write-channel bit is ignored; arch-local and unknown items
        // read zeros.
        assert_eq!(read_item(&mut fw, 0x4000, 4).as_slice(), b"QEMU");
        assert_eq!(read_item(&mut fw, 0x8000, 4).as_slice(), &[0; 4]);
        assert_eq!(read_item(&mut fw, 0x0002, 4).as_slice(), &[0; 4]);
        assert_eq!(read_item(&mut fw, 0x3fff, 4).as_slice(), &[0; 4]);
        // Reselecting rewinds; a byte read at 0x510 reads data too.
        fw.write(SELECTOR, IoSize::Word, 0);
        assert_eq!(fw.read(SELECTOR, IoSize::Byte), u32::from(b'Q'));
        assert_eq!(fw.read(DATA, IoSize::Byte), u32::from(b'E'));
        // Wide reads are refused and do not advance; byte writes are ignored.
        assert_eq!(fw.read(DATA, IoSize::Word), u32::MAX);
        fw.write(DATA, IoSize::Byte, 0);
        fw.write(SELECTOR, IoSize::Byte, 5);
        fw.write(SELECTOR, IoSize::Dword, 5);
        assert_eq!(fw.read(DATA, IoSize::Byte), u32::from(b'M'));
    }

    /// Parses the directory back: (name, selector, size) per file.
    fn directory(fw: &mut FwCfg) -> heapless::Vec<(heapless::String<56>, u16, u32), 16> {
        let count = be32(&read_item(fw, key::FILE_DIR, 4)) as usize;
        assert_eq!(fw.item_len(key::FILE_DIR), 4 + 64 * count as u32);
        let all = read_item(fw, key::FILE_DIR, 4 + 64 * count + 8);
        assert_eq!(&all[all.len() - 8..], &[0; 8], "zeros past the end");
        all[4..4 + 64 * count]
            .chunks(64)
            .map(|e| {
                let name_bytes = &e[8..];
                let n = name_bytes.iter().position(|&b| b == 0).unwrap();
                assert_eq!(&e[6..8], &[0, 0]);
                (
                    core::str::from_utf8(&name_bytes[..n])
                        .unwrap()
                        .try_into()
                        .unwrap(),
                    u16::from_be_bytes([e[4], e[5]]),
                    be32(e),
                )
            })
            .collect()
    }

    /// Parses `etc/e820` back: (address, length, type) per entry.
    fn e820(fw: &mut FwCfg) -> heapless::Vec<(u64, u64, u32), 4> {
        let sel = fw.file_selector(E820_FILE).unwrap();
        let len = fw.item_len(sel) as usize;
        assert_eq!(len % E820_ENTRY_LEN, 0);
        read_item(fw, sel, len)
            .chunks(E820_ENTRY_LEN)
            .map(|e| {
                (
                    u64::from_le_bytes(e[0..8].try_into().unwrap()),
                    u64::from_le_bytes(e[8..16].try_into().unwrap()),
                    u32::from_le_bytes(e[16..20].try_into().unwrap()),
                )
            })
            .collect()
    }

    #[test]
    fn file_directory_and_e820() {
        let mut fw = FwCfg::new(512 << 20, 1);
        let dir = directory(&mut fw);
        assert_eq!(dir.len(), 1);
        assert_eq!(dir[0].0.as_str(), "etc/e820");
        assert_eq!(dir[0].1, key::FILE_FIRST);
        assert_eq!(dir[0].2, 20);
        assert_eq!(e820(&mut fw).as_slice(), &[(0, 512 << 20, E820_RAM)]);
    }

    #[test]
    fn large_ram_is_split_around_the_pci_hole() {
        let mut fw = FwCfg::new(4 << 30, 1);
        assert_eq!(
            e820(&mut fw).as_slice(),
            &[(0, 3 << 30, E820_RAM), (1 << 32, 1 << 30, E820_RAM)]
        );
        let mut fw = FwCfg::new(SPLIT_RAM_FROM - 1, 1);
        assert_eq!(
            e820(&mut fw).as_slice(),
            &[(0, SPLIT_RAM_FROM - 1, E820_RAM)]
        );
        let mut fw = FwCfg::new(0, 1);
        assert_eq!(e820(&mut fw).as_slice(), &[]);
    }

    #[test]
    fn files_are_sorted_by_name() {
        let mut fw = FwCfg::new(64 << 20, 1);
        fw.add_file("etc/acpi/tables", &[1, 2, 3]).unwrap();
        fw.add_file("bootorder", b"/rom@genroms/linuxboot.bin\n")
            .unwrap();
        fw.add_file("opt/x", &[]).unwrap();
        let dir = directory(&mut fw);
        let names: heapless::Vec<&str, 8> = dir.iter().map(|d| d.0.as_str()).collect();
        assert_eq!(
            names.as_slice(),
            &["bootorder", "etc/acpi/tables", "etc/e820", "opt/x"]
        );
        for (i, d) in dir.iter().enumerate() {
            assert_eq!(d.1, key::FILE_FIRST + i as u16);
            assert_eq!(fw.file_selector(&d.0), Some(d.1));
            assert_eq!(fw.item_len(d.1), d.2);
        }
        let sel = fw.file_selector("etc/acpi/tables").unwrap();
        assert_eq!(read_item(&mut fw, sel, 5).as_slice(), &[1, 2, 3, 0, 0]);
        assert_eq!(e820(&mut fw).as_slice(), &[(0, 64 << 20, E820_RAM)]);
        assert_eq!(fw.file_selector("etc"), None);
        assert_eq!(fw.file_selector("etc/e8200"), None);
    }

    #[test]
    fn add_file_errors() {
        let mut fw = FwCfg::new(64 << 20, 1);
        assert_eq!(fw.add_file("", &[]), Err(FwCfgError::BadName));
        assert_eq!(fw.add_file("a\0b", &[]), Err(FwCfgError::BadName));
        let long = "x".repeat(56);
        assert_eq!(fw.add_file(&long, &[]), Err(FwCfgError::BadName));
        fw.add_file(&long[..55], &[]).unwrap();
        assert_eq!(fw.add_file(E820_FILE, &[]), Err(FwCfgError::Duplicate));
        assert_eq!(
            fw.add_file("big", &[0; FILE_DATA_BYTES]),
            Err(FwCfgError::NoRoom)
        );
        for i in 2..MAX_FILES {
            fw.add_file(&format!("f{i}"), &[i as u8]).unwrap();
        }
        assert_eq!(fw.add_file("more", &[]), Err(FwCfgError::TooManyFiles));
        assert_eq!(directory(&mut fw).len(), MAX_FILES);
    }

    proptest! {
        #[test]
        fn random_accesses_never_panic(
            ops in proptest::collection::vec((any::<u16>(), 0u8..3, any::<u32>(), any::<bool>()), 0..300)
        ) {
            let mut fw = FwCfg::new(128 << 20, 4);
            fw.add_file("etc/x", &[7; 100]).unwrap();
            for (offset, size, value, is_write) in ops {
                let size = [IoSize::Byte, IoSize::Word, IoSize::Dword][usize::from(size)];
                if is_write {
                    prop_assert_eq!(fw.write(offset, size, value), WriteOutcome::Continue);
                } else {
                    fw.read(offset, size);
                }
                prop_assert!(fw.offset <= fw.item_len(fw.selector));
            }
        }
    }
}
