//! What IDENTIFY DEVICE's 256 words say (ATA/ATAPI-6 8.15, table 27).

/// Bytes of the model number (words 27-46).
pub const MODEL_LEN: usize = 40;

/// How the device flushes its write cache, from words 83 and 86.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flush {
    /// FLUSH CACHE EXT (word 83 bit 13; needs the 48-bit feature set).
    CacheExt,
    /// FLUSH CACHE (word 83 bit 12).
    Cache,
    /// Neither command is reported: the device has no write cache to
    /// flush, or does not say.
    None,
}

/// The parts of an IDENTIFY DEVICE answer this driver uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskInfo {
    model: [u8; MODEL_LEN],
    model_len: u8,
    /// Addressable sectors: words 100-103 with the 48-bit feature set,
    /// else words 60-61.
    pub sectors: u64,
    /// The 48-bit Address feature set is supported (word 83 bit 10) and
    /// enabled (word 86 bit 10): the EXT commands are available.
    pub lba48: bool,
    /// How to flush the write cache.
    pub flush: Flush,
    /// The write cache is enabled (word 85 bit 5), when the device says it
    /// has one (word 82 bit 5).
    pub write_cache: Option<bool>,
    /// The most sectors a DRQ block of READ/WRITE MULTIPLE may hold (word
    /// 47 bits 7:0, ATA8-ACS 7.16.7.17; 0: no MULTIPLE commands). Bits
    /// 15:8 should read 80h; they are not checked (older Bochs leaves them
    /// 0), but a value that is not a power of two counts as 0.
    pub max_multiple: u8,
    /// The Data register takes 32-bit accesses (word 48 reads 0001h,
    /// ATA-1's "can perform doubleword I/O", which QEMU's and Bochs's IDE
    /// disks answer). ATA-2 on made the word reserved and ATA8-ACS gave it
    /// to the Trusted Computing feature set with bits 15:14 = 01, so any
    /// other value means 16-bit transfers only.
    pub dword_io: bool,
}

/// Why an IDENTIFY DEVICE answer cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdentifyError {
    /// Word 49 bit 9 is clear: the device has only cylinder/head/sector
    /// addressing.
    NoLba,
    /// Word 0 bit 15 is set: the answer is not an ATA device's.
    NotAta,
}

/// Word `i` of the answer.
fn word(data: &[u8; 512], i: usize) -> u16 {
    u16::from_le_bytes([data[2 * i], data[2 * i + 1]])
}

/// Words 82-84 and 85-87 are valid when bits 15:14 of word 83 (and 84,
/// 87) read 01 (ATA/ATAPI-6 8.15.31).
fn command_sets_valid(w: u16) -> bool {
    w & 0xc000 == 0x4000
}

impl DiskInfo {
    /// Reads the 512 bytes of an IDENTIFY DEVICE answer, as they came from
    /// the Data register (little-endian words).
    pub fn parse(data: &[u8; 512]) -> Result<Self, IdentifyError> {
        if word(data, 0) & 0x8000 != 0 {
            return Err(IdentifyError::NotAta);
        }
        if word(data, 49) & (1 << 9) == 0 {
            return Err(IdentifyError::NoLba);
        }
        // The model number's ASCII comes two characters a word, the first
        // in the high byte (8.15.11), padded with spaces.
        let mut model = [0u8; MODEL_LEN];
        for (i, pair) in model.chunks_exact_mut(2).enumerate() {
            let w = word(data, 27 + i);
            pair.copy_from_slice(&w.to_be_bytes());
        }
        for b in &mut model {
            if !b.is_ascii_graphic() && *b != b' ' {
                *b = b'?';
            }
        }
        let mut len = MODEL_LEN;
        while len > 0 && model[len - 1] == b' ' {
            len -= 1;
        }
        let (w82, w83, w85, w86) = (
            word(data, 82),
            word(data, 83),
            word(data, 85),
            word(data, 86),
        );
        let valid = command_sets_valid(w83);
        let lba48 = valid && w83 & (1 << 10) != 0 && w86 & (1 << 10) != 0;
        let sectors = if lba48 {
            (0..4).fold(0u64, |acc, i| {
                acc | (u64::from(word(data, 100 + i)) << (16 * i))
            })
        } else {
            u64::from(word(data, 60)) | (u64::from(word(data, 61)) << 16)
        };
        let flush = if valid && lba48 && w83 & (1 << 13) != 0 {
            Flush::CacheExt
        } else if valid && w83 & (1 << 12) != 0 {
            Flush::Cache
        } else {
            Flush::None
        };
        let write_cache = (valid && w82 & (1 << 5) != 0).then_some(w85 & (1 << 5) != 0);
        let max = (word(data, 47) & 0xff) as u8;
        let max_multiple = if max.is_power_of_two() { max } else { 0 };
        Ok(Self {
            model,
            model_len: u8::try_from(len).unwrap_or(0),
            sectors,
            lba48,
            flush,
            write_cache,
            max_multiple,
            dword_io: word(data, 48) == 0x0001,
        })
    }

    /// The model number (words 27-46), trailing spaces removed; bytes
    /// that are not printable ASCII read `?`.
    pub fn model(&self) -> &str {
        let bytes = &self.model[..usize::from(self.model_len).min(MODEL_LEN)];
        core::str::from_utf8(bytes).unwrap_or("?")
    }

    /// The capacity in bytes.
    pub fn bytes(&self) -> u64 {
        self.sectors.saturating_mul(crate::SECTOR_SIZE as u64)
    }
}

impl core::fmt::Display for DiskInfo {
    /// `QEMU HARDDISK, 2048 sectors (1 MiB), write cache flush supported`.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let model = if self.model().is_empty() {
            "(no model name)"
        } else {
            self.model()
        };
        write!(f, "{model}, {} sectors (", self.sectors)?;
        let bytes = self.bytes();
        const MIB: u64 = 1 << 20;
        const GIB: u64 = 1 << 30;
        if bytes >= GIB && bytes.is_multiple_of(GIB) {
            write!(f, "{} GiB", bytes / GIB)?;
        } else if bytes >= MIB && bytes.is_multiple_of(MIB) {
            write!(f, "{} MiB", bytes / MIB)?;
        } else if bytes >= MIB {
            write!(f, "{}.{} MiB", bytes / MIB, (bytes % MIB) * 10 / MIB)?;
        } else {
            write!(f, "{} KiB", bytes / 1024)?;
        }
        f.write_str("), ")?;
        f.write_str(match self.flush {
            Flush::CacheExt | Flush::Cache => "write cache flush supported",
            Flush::None => "no write cache flush",
        })
    }
}

/// Test data for the model (feature `model`).
#[cfg(any(test, feature = "model"))]
/// An IDENTIFY DEVICE answer as QEMU's `ide_identify` (hw/ide/core.c)
/// builds it for a disk of `sectors` sectors.
pub fn qemu_like(model: &str, sectors: u64, lba48: bool) -> [u8; 512] {
    let mut w = [0u16; 256];
    w[0] = 0x0040;
    let mut m = [b' '; MODEL_LEN];
    m[..model.len()].copy_from_slice(model.as_bytes());
    for i in 0..20 {
        w[27 + i] = u16::from_be_bytes([m[2 * i], m[2 * i + 1]]);
    }
    w[47] = 0x8000 | 16; // MAX_MULT_SECTORS
    w[48] = 1; // "dword I/O"
    w[49] = (1 << 11) | (1 << 9) | (1 << 8);
    let s28 = u32::try_from(sectors.min(0x0fff_ffff)).unwrap();
    w[60] = (s28 & 0xffff) as u16;
    w[61] = (s28 >> 16) as u16;
    w[82] = (1 << 14) | (1 << 5) | 1;
    w[83] = (1 << 14) | (1 << 13) | (1 << 12) | if lba48 { 1 << 10 } else { 0 };
    w[84] = 1 << 14;
    w[85] = (1 << 14) | (1 << 5) | 1;
    w[86] = (1 << 13) | (1 << 12) | if lba48 { 1 << 10 } else { 0 };
    w[87] = 1 << 14;
    for i in 0..4 {
        w[100 + i] = ((sectors >> (16 * i)) & 0xffff) as u16;
    }
    let mut out = [0u8; 512];
    for (i, v) in w.iter().enumerate() {
        out[2 * i..2 * i + 2].copy_from_slice(&v.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::string::ToString;

    #[test]
    fn qemus_answer_reads_as_qemu_reads_it() {
        let info = DiskInfo::parse(&qemu_like("QEMU HARDDISK", 2048, true)).unwrap();
        assert_eq!(info.model(), "QEMU HARDDISK");
        assert_eq!(info.sectors, 2048);
        assert!(info.lba48);
        assert_eq!(info.flush, Flush::CacheExt);
        assert_eq!(info.write_cache, Some(true));
        assert_eq!(info.max_multiple, 16);
        assert!(info.dword_io);
        assert_eq!(
            info.to_string(),
            "QEMU HARDDISK, 2048 sectors (1 MiB), write cache flush supported"
        );
    }

    #[test]
    fn lba48_counts_come_from_words_100_to_103() {
        let big = (1u64 << 28) + 5;
        let info = DiskInfo::parse(&qemu_like("BIG", big, true)).unwrap();
        assert_eq!(info.sectors, big);
        let info = DiskInfo::parse(&qemu_like("SMALL", 2048, false)).unwrap();
        assert_eq!(info.sectors, 2048);
        assert_eq!(info.flush, Flush::Cache);
        assert!(!info.lba48);
    }

    #[test]
    fn invalid_command_set_words_count_as_absent() {
        let mut d = qemu_like("X", 100, true);
        d[2 * 83 + 1] = 0; // bits 15:14 of word 83 now 00
        let info = DiskInfo::parse(&d).unwrap();
        assert!(!info.lba48);
        assert_eq!(info.flush, Flush::None);
        assert_eq!(info.sectors, 100);
        assert!(info.to_string().ends_with("(50 KiB), no write cache flush"));
    }

    #[test]
    fn chs_only_and_non_ata_answers_are_refused() {
        let mut d = qemu_like("X", 100, false);
        d[2 * 49 + 1] &= !0x02;
        assert_eq!(DiskInfo::parse(&d), Err(IdentifyError::NoLba));
        let mut d = qemu_like("X", 100, false);
        d[1] = 0x85;
        assert_eq!(DiskInfo::parse(&d), Err(IdentifyError::NotAta));
    }

    #[test]
    fn word_48_means_doubleword_io_only_as_ata_1_wrote_it() {
        let set = |v: u16| {
            let mut d = qemu_like("X", 100, true);
            d[96..98].copy_from_slice(&v.to_le_bytes());
            DiskInfo::parse(&d).unwrap().dword_io
        };
        assert!(set(0x0001));
        assert!(!set(0x0000));
        // ATA8-ACS: Trusted Computing supported, not doubleword I/O.
        assert!(!set(0x4001));
        assert!(!set(0x0003));
    }

    #[test]
    fn word_47_gives_the_multiple_maximum_if_a_power_of_two() {
        let max = |v: u16| {
            let mut d = qemu_like("X", 100, true);
            d[94..96].copy_from_slice(&v.to_le_bytes());
            DiskInfo::parse(&d).unwrap().max_multiple
        };
        assert_eq!(max(0x8010), 16);
        assert_eq!(max(0x0010), 16);
        assert_eq!(max(0x8080), 128);
        assert_eq!(max(0x8000), 0);
        assert_eq!(max(0x800c), 0);
    }

    #[test]
    fn model_bytes_are_printable() {
        let mut d = qemu_like("AB", 100, false);
        d[2 * 27] = 0x07; // 'B' -> BEL
        let info = DiskInfo::parse(&d).unwrap();
        assert_eq!(info.model(), "A?");
    }
}
