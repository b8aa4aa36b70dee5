//! Reads the program headers of a server's ELF executable from the image.
//!
//! The image is built by our own builder, but the stub still checks every
//! field it uses: a bad image gives an error, never a panic or a mapping
//! outside the server image window.

use stub_abi::layout::{SERVER_IMAGE_BASE, SERVER_IMAGE_END};

/// One loadable segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment<'a> {
    /// Virtual address in the server's address space.
    pub vaddr: u64,
    /// Size in memory (the part past `data` is zero).
    pub mem_size: u64,
    /// The bytes from the file.
    pub data: &'a [u8],
    /// PF_W.
    pub writable: bool,
    /// PF_X.
    pub executable: bool,
}

/// Why an ELF file cannot be loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElfError {
    NotElf64X86,
    NotExecutable,
    BadProgramHeaders,
    SegmentOutsideFile,
    SegmentOutsideWindow,
    EntryOutsideWindow,
}

impl ElfError {
    pub fn describe(self) -> &'static str {
        match self {
            Self::NotElf64X86 => "not a little-endian ELF64 x86-64 file",
            Self::NotExecutable => "not an executable (ET_EXEC)",
            Self::BadProgramHeaders => {
                "program header table outside the file or of the wrong entry size"
            }
            Self::SegmentOutsideFile => {
                "a segment's bytes lie outside the file, or its file size exceeds its memory size"
            }
            Self::SegmentOutsideWindow => "a segment lies outside the server image window",
            Self::EntryOutsideWindow => "the entry point lies outside the server image window",
        }
    }
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

const PT_LOAD: u32 = 1;
const PHDR_SIZE: usize = 56;

/// A checked ELF executable.
pub struct Elf<'a> {
    file: &'a [u8],
    pub entry: u64,
    phoff: usize,
    phnum: usize,
}

fn in_window(start: u64, len: u64) -> bool {
    start >= SERVER_IMAGE_BASE
        && start
            .checked_add(len)
            .is_some_and(|end| end <= SERVER_IMAGE_END)
}

impl<'a> Elf<'a> {
    /// Checks the header and every program header.
    pub fn parse(file: &'a [u8]) -> Result<Self, ElfError> {
        let ident_ok = file.get(0..6) == Some(&[0x7f, b'E', b'L', b'F', 2, 1][..]);
        if !ident_ok || u16_at(file, 18) != Some(0x3e) {
            return Err(ElfError::NotElf64X86);
        }
        if u16_at(file, 16) != Some(2) {
            return Err(ElfError::NotExecutable);
        }
        let entry = u64_at(file, 24).ok_or(ElfError::NotElf64X86)?;
        let phoff = u64_at(file, 32).ok_or(ElfError::BadProgramHeaders)?;
        let phentsize = u16_at(file, 54).ok_or(ElfError::BadProgramHeaders)?;
        let phnum = u16_at(file, 56).ok_or(ElfError::BadProgramHeaders)?;
        let table_end = phoff.checked_add(u64::from(phnum) * PHDR_SIZE as u64);
        if usize::from(phentsize) != PHDR_SIZE || table_end.is_none_or(|e| e > file.len() as u64) {
            return Err(ElfError::BadProgramHeaders);
        }
        if !in_window(entry, 1) {
            return Err(ElfError::EntryOutsideWindow);
        }
        let elf = Elf {
            file,
            entry,
            // Fits: the table ends inside `file` (checked above).
            phoff: usize::try_from(phoff).map_err(|_| ElfError::BadProgramHeaders)?,
            phnum: usize::from(phnum),
        };
        for i in 0..elf.phnum {
            elf.segment(i)?;
        }
        Ok(elf)
    }

    /// The `i`-th program header as a segment, `None` inside `Ok` when it is not PT_LOAD.
    fn segment(&self, i: usize) -> Result<Option<Segment<'a>>, ElfError> {
        let h = self.phoff + i * PHDR_SIZE;
        let f = self.file;
        let field = |off| u64_at(f, h + off).ok_or(ElfError::BadProgramHeaders);
        if u32_at(f, h) != Some(PT_LOAD) {
            return Ok(None);
        }
        let flags = u32_at(f, h + 4).ok_or(ElfError::BadProgramHeaders)?;
        let (offset, vaddr, file_size, mem_size) = (field(8)?, field(16)?, field(32)?, field(40)?);
        let data = offset
            .checked_add(file_size)
            .filter(|_| file_size <= mem_size)
            .and_then(|end| f.get(usize::try_from(offset).ok()?..usize::try_from(end).ok()?))
            .ok_or(ElfError::SegmentOutsideFile)?;
        if !in_window(vaddr, mem_size) {
            return Err(ElfError::SegmentOutsideWindow);
        }
        Ok(Some(Segment {
            vaddr,
            mem_size,
            data,
            writable: flags & 2 != 0,
            executable: flags & 1 != 0,
        }))
    }

    /// The loadable segments (all checked by `parse`).
    pub fn segments(&self) -> impl Iterator<Item = Segment<'a>> + '_ {
        (0..self.phnum).filter_map(|i| self.segment(i).ok().flatten())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 executable with the given PT_LOAD headers (vaddr, file bytes, mem size, flags).
    fn elf(entry: u64, segs: &[(u64, &[u8], u64, u32)]) -> Vec<u8> {
        let mut f = vec![0u8; 64];
        f[0..6].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1]);
        f[16..18].copy_from_slice(&2u16.to_le_bytes());
        f[18..20].copy_from_slice(&0x3eu16.to_le_bytes());
        f[24..32].copy_from_slice(&entry.to_le_bytes());
        f[32..40].copy_from_slice(&64u64.to_le_bytes());
        f[54..56].copy_from_slice(&56u16.to_le_bytes());
        f[56..58].copy_from_slice(&u16::try_from(segs.len()).unwrap().to_le_bytes());
        let mut data_off = 64 + 56 * segs.len() as u64;
        let mut tail = Vec::new();
        for (vaddr, bytes, mem, flags) in segs {
            let mut h = [0u8; 56];
            h[0..4].copy_from_slice(&PT_LOAD.to_le_bytes());
            h[4..8].copy_from_slice(&flags.to_le_bytes());
            h[8..16].copy_from_slice(&data_off.to_le_bytes());
            h[16..24].copy_from_slice(&vaddr.to_le_bytes());
            h[32..40].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
            h[40..48].copy_from_slice(&mem.to_le_bytes());
            f.extend_from_slice(&h);
            tail.extend_from_slice(bytes);
            data_off += bytes.len() as u64;
        }
        f.extend_from_slice(&tail);
        f
    }

    #[test]
    fn loads_segments_inside_the_window() {
        let f = elf(
            SERVER_IMAGE_BASE,
            &[
                (SERVER_IMAGE_BASE, b"code", 4, 5),
                (SERVER_IMAGE_BASE + 0x1000, b"d", 0x2000, 6),
            ],
        );
        let e = Elf::parse(&f).unwrap();
        let s: Vec<_> = e.segments().collect();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].data, b"code");
        assert!(s[0].executable && !s[0].writable);
        assert_eq!(s[1].mem_size, 0x2000);
        assert!(s[1].writable && !s[1].executable);
    }

    #[test]
    fn refuses_segments_and_entries_outside_the_window() {
        let f = elf(SERVER_IMAGE_BASE, &[(0x10_0000, b"x", 1, 5)]);
        assert_eq!(Elf::parse(&f).err(), Some(ElfError::SegmentOutsideWindow));
        let f = elf(SERVER_IMAGE_END - 1, &[(SERVER_IMAGE_END - 1, b"x", 2, 5)]);
        assert_eq!(Elf::parse(&f).err(), Some(ElfError::SegmentOutsideWindow));
        let f = elf(u64::MAX, &[(SERVER_IMAGE_BASE, b"x", 1, 5)]);
        assert_eq!(Elf::parse(&f).err(), Some(ElfError::EntryOutsideWindow));
        let f = elf(SERVER_IMAGE_BASE, &[(u64::MAX - 1, b"x", 4, 5)]);
        assert_eq!(Elf::parse(&f).err(), Some(ElfError::SegmentOutsideWindow));
    }

    #[test]
    fn refuses_file_size_beyond_memory_size() {
        let f = elf(SERVER_IMAGE_BASE, &[(SERVER_IMAGE_BASE, b"abcd", 2, 5)]);
        assert_eq!(Elf::parse(&f).err(), Some(ElfError::SegmentOutsideFile));
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let f = elf(SERVER_IMAGE_BASE, &[(SERVER_IMAGE_BASE, b"code", 4, 5)]);
        for n in 0..f.len() {
            assert!(Elf::parse(&f[..n]).is_err(), "truncated at {n}");
        }
    }

    proptest::proptest! {
        #[test]
        fn corrupted_files_never_panic(edits in proptest::collection::vec((0usize..4096, proptest::prelude::any::<u8>()), 1..8)) {
            let mut f = elf(SERVER_IMAGE_BASE, &[(SERVER_IMAGE_BASE, b"code", 4, 5), (SERVER_IMAGE_BASE + 0x1000, b"data", 8, 6)]);
            for (i, b) in edits {
                let n = f.len();
                f[i % n] = b;
            }
            if let Ok(e) = Elf::parse(&f) {
                for s in e.segments() {
                    proptest::prop_assert!(in_window(s.vaddr, s.mem_size));
                    proptest::prop_assert!(s.data.len() as u64 <= s.mem_size);
                }
            }
        }
    }
}
