//! Guest loaders: how a guest file becomes initial guest memory and
//! registers, the work a boot loader does. The image is static, so loading
//! happens when the image is built; the stub only copies the result.
//!
//! - **Multiboot v1** (what QEMU's `-kernel` accepts): an ELF32 kernel or
//!   one using the header's address fields (the "a.out kludge"), entered in
//!   flat 32-bit protected mode with EAX = 0x2BADB002 and EBX = the
//!   multiboot information (memory sizes, memory map, command line, boot
//!   loader name), as the Multiboot Specification 0.6.96 says.
//! - **Boot sector**: raw bytes ending their first 512 with 0x55 0xAA,
//!   loaded at 0x7c00 and entered in real mode at 0000:7C00 with DL = 0x80.
//!   There is no BIOS: the interrupt vector table is zero, so a boot sector
//!   must not call BIOS services; A20 is always enabled.

use crate::elf::ElfImage;
use ipc_proto::manifest::EntryMode;

/// A guest ready to be put into an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadedGuest {
    /// Bytes for guest-physical `load_gpa` onwards.
    pub flat: Vec<u8>,
    /// Where `flat` goes.
    pub load_gpa: u64,
    /// First instruction.
    pub entry: u64,
    /// Processor mode at entry.
    pub entry_mode: EntryMode,
    /// RAX, RBX, RSI at entry.
    pub entry_regs: [u64; 3],
    /// More (guest-physical address, bytes) to place.
    pub segments: Vec<(u64, Vec<u8>)>,
}

/// Where a BIOS loads a boot sector.
pub const BOOT_SECTOR_GPA: u64 = 0x7c00;
/// End of conventional memory (the EBDA starts here on a PC).
const CONVENTIONAL_END: u64 = 0x9_fc00;
/// Where the multiboot information and what it points to are placed.
pub const MULTIBOOT_INFO_GPA: u64 = 0x8000;
const MULTIBOOT_HEADER_MAGIC: u32 = 0x1bad_b002;
const MULTIBOOT_BOOT_MAGIC: u64 = 0x2bad_b002;
/// Header flags a loader may be asked for: page-aligned modules (0), memory
/// information (1, always given). Anything else in the low 16 bits is a
/// requirement this loader cannot meet (bit 2, a video mode, among them).
const MULTIBOOT_SUPPORTED_REQUIRED: u32 = 0b11;
const MULTIBOOT_AOUT_KLUDGE: u32 = 1 << 16;
/// Longest command line accepted (the rest of the information page).
pub const MULTIBOOT_CMDLINE_MAX: usize = 2048;

/// A raw boot sector.
pub fn load_boot_sector(bytes: &[u8]) -> Result<LoadedGuest, String> {
    if bytes.len() < 512 || bytes[510..512] != [0x55, 0xaa] {
        return Err("not a boot sector: its first 512 bytes do not end with 0x55 0xAA".into());
    }
    let room = (CONVENTIONAL_END - BOOT_SECTOR_GPA) as usize;
    if bytes.len() > room {
        return Err(format!(
            "{} bytes do not fit between 0x7c00 and the end of conventional memory ({room} bytes)",
            bytes.len()
        ));
    }
    Ok(LoadedGuest {
        flat: bytes.to_vec(),
        load_gpa: BOOT_SECTOR_GPA,
        entry: BOOT_SECTOR_GPA,
        entry_mode: EntryMode::Real16,
        entry_regs: [0; 3],
        segments: Vec::new(),
    })
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

/// Offset of a valid multiboot v1 header in the first 8 KiB, if any.
pub fn find_multiboot_header(file: &[u8]) -> Option<usize> {
    (0..file.len().min(8192).saturating_sub(11))
        .step_by(4)
        .find(|&off| {
            let (Some(magic), Some(flags), Some(sum)) = (
                u32_at(file, off),
                u32_at(file, off + 4),
                u32_at(file, off + 8),
            ) else {
                return false;
            };
            magic == MULTIBOOT_HEADER_MAGIC && magic.wrapping_add(flags).wrapping_add(sum) == 0
        })
}

/// A multiboot v1 kernel with `ram_mib` MiB of RAM and command line `cmdline`.
pub fn load_multiboot(file: &[u8], ram_mib: u32, cmdline: &str) -> Result<LoadedGuest, String> {
    let off = find_multiboot_header(file)
        .ok_or("not a multiboot kernel: no valid multiboot header in its first 8 KiB")?;
    let flags = u32_at(file, off + 4).unwrap_or(0);
    if flags & 0xffff & !MULTIBOOT_SUPPORTED_REQUIRED != 0 {
        return Err(format!(
            "the kernel requires multiboot features splitvisor does not provide (header flags {flags:#x}; only bits 0 and 1 of the low 16 are supported)"
        ));
    }
    if cmdline.len() >= MULTIBOOT_CMDLINE_MAX {
        return Err(format!(
            "the command line is {} bytes; at most {} fit",
            cmdline.len(),
            MULTIBOOT_CMDLINE_MAX - 1
        ));
    }
    let ram = u64::from(ram_mib) << 20;
    let (flat, load_gpa, entry) = if flags & MULTIBOOT_AOUT_KLUDGE != 0 {
        load_aout_kludge(file, off)?
    } else {
        load_elf(file)?
    };
    let end = load_gpa + flat.len() as u64;
    if load_gpa < 0x10_0000 || end > ram {
        return Err(format!(
            "the kernel occupies {load_gpa:#x}..{end:#x}, outside 1 MiB..{ram:#x} (the guest's RAM above the low megabyte)"
        ));
    }
    if !(load_gpa..end).contains(&entry) {
        return Err(format!(
            "the kernel's entry point {entry:#x} lies outside what it loads"
        ));
    }
    Ok(LoadedGuest {
        flat,
        load_gpa,
        entry,
        entry_mode: EntryMode::Flat32,
        entry_regs: [MULTIBOOT_BOOT_MAGIC, MULTIBOOT_INFO_GPA, 0],
        segments: vec![(MULTIBOOT_INFO_GPA, multiboot_info(ram, cmdline))],
    })
}

fn load_aout_kludge(file: &[u8], off: usize) -> Result<(Vec<u8>, u64, u64), String> {
    let field = |i: usize| u64::from(u32_at(file, off + 12 + 4 * i).unwrap_or(0));
    let (header_addr, load_addr, load_end, bss_end, entry) =
        (field(0), field(1), field(2), field(3), field(4));
    let start = (off as u64)
        .checked_sub(header_addr.wrapping_sub(load_addr))
        .filter(|_| header_addr >= load_addr)
        .ok_or("the multiboot header's address fields put the load address after the header")?;
    let file_len = if load_end == 0 {
        file.len() as u64 - start
    } else {
        load_end.saturating_sub(load_addr)
    };
    let bytes = file
        .get(start as usize..(start + file_len) as usize)
        .ok_or("the multiboot header's load range exceeds the file")?;
    let mem_len = if bss_end == 0 {
        file_len
    } else {
        bss_end.saturating_sub(load_addr).max(file_len)
    };
    let mut flat = bytes.to_vec();
    flat.resize(mem_len as usize, 0);
    Ok((flat, load_addr, entry))
}

fn load_elf(file: &[u8]) -> Result<(Vec<u8>, u64, u64), String> {
    if file.get(4) != Some(&1) {
        return Err("the kernel is not ELF32 and has no multiboot address fields (a 64-bit ELF needs the a.out kludge)".into());
    }
    let elf = ElfImage::parse(file)
        .map_err(|e| format!("the kernel is not a readable ELF file: {}", e.0))?;
    let segs: Vec<_> = elf.segments.iter().filter(|s| s.memsz > 0).collect();
    let start = segs
        .iter()
        .map(|s| s.paddr)
        .min()
        .ok_or("the kernel has no loadable segment")?;
    let end = segs
        .iter()
        .map(|s| s.paddr + s.memsz)
        .max()
        .unwrap_or(start);
    if end - start > 512 << 20 {
        return Err("the kernel spans more than 512 MiB".into());
    }
    let mut flat = vec![0u8; (end - start) as usize];
    for s in segs {
        let at = (s.paddr - start) as usize;
        let n = s.bytes.len().min(s.memsz as usize);
        flat[at..at + n].copy_from_slice(&s.bytes[..n]);
    }
    Ok((flat, start, elf.entry))
}

/// The multiboot information page: the structure, then the memory map,
/// the boot loader name and the command line.
fn multiboot_info(ram: u64, cmdline: &str) -> Vec<u8> {
    const MMAP_OFF: usize = 0x100;
    const NAME_OFF: usize = 0x200;
    const CMDLINE_OFF: usize = 0x300;
    let gpa = |off: usize| (MULTIBOOT_INFO_GPA + off as u64) as u32;
    let mut page = vec![0u8; CMDLINE_OFF + MULTIBOOT_CMDLINE_MAX];
    let mut put = |off: usize, v: u32| page[off..off + 4].copy_from_slice(&v.to_le_bytes());
    // Memory map (type 1 = available, 2 = reserved): low memory, the EBDA
    // and BIOS area, and the RAM above 1 MiB.
    let ranges: [(u64, u64, u32); 3] = [
        (0, CONVENTIONAL_END, 1),
        (CONVENTIONAL_END, 0x10_0000 - CONVENTIONAL_END, 2),
        (0x10_0000, ram - 0x10_0000, 1),
    ];
    let mut mmap = Vec::new();
    for (base, len, kind) in ranges {
        mmap.extend_from_slice(&20u32.to_le_bytes());
        mmap.extend_from_slice(&base.to_le_bytes());
        mmap.extend_from_slice(&len.to_le_bytes());
        mmap.extend_from_slice(&kind.to_le_bytes());
    }
    put(0, 1 | 1 << 2 | 1 << 6 | 1 << 9); // mem_*, cmdline, mmap, boot_loader_name
    put(4, (CONVENTIONAL_END / 1024) as u32);
    put(8, ((ram - 0x10_0000) / 1024) as u32);
    put(16, gpa(CMDLINE_OFF));
    put(44, mmap.len() as u32);
    put(48, gpa(MMAP_OFF));
    put(64, gpa(NAME_OFF));
    page[MMAP_OFF..MMAP_OFF + mmap.len()].copy_from_slice(&mmap);
    page[NAME_OFF..NAME_OFF + 10].copy_from_slice(b"splitvisor");
    page[CMDLINE_OFF..CMDLINE_OFF + cmdline.len()].copy_from_slice(cmdline.as_bytes());
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(flags: u32, fields: [u32; 5]) -> Vec<u8> {
        let mut h = Vec::new();
        for v in [
            MULTIBOOT_HEADER_MAGIC,
            flags,
            0u32.wrapping_sub(MULTIBOOT_HEADER_MAGIC)
                .wrapping_sub(flags),
        ] {
            h.extend_from_slice(&v.to_le_bytes());
        }
        for v in fields {
            h.extend_from_slice(&v.to_le_bytes());
        }
        h
    }

    #[test]
    fn boot_sectors_need_their_signature() {
        let mut s = vec![0u8; 512];
        assert!(load_boot_sector(&s).is_err());
        s[510] = 0x55;
        s[511] = 0xaa;
        let g = load_boot_sector(&s).unwrap();
        assert_eq!(
            (g.load_gpa, g.entry, g.entry_mode),
            (0x7c00, 0x7c00, EntryMode::Real16)
        );
        assert!(load_boot_sector(&s[..511]).is_err());
        s.resize(700 * 1024, 0);
        assert!(load_boot_sector(&s).unwrap_err().contains("do not fit"));
    }

    #[test]
    fn aout_kludge_kernels_load_where_their_header_says() {
        // Header at file offset 0, loaded at 1 MiB, 0x40 bytes of file, bss to 0x1000.
        let mut file = header(
            MULTIBOOT_AOUT_KLUDGE | 2,
            [0x10_0000, 0x10_0000, 0x10_0040, 0x10_1000, 0x10_0020],
        );
        file.resize(0x40, 0xcc);
        let g = load_multiboot(&file, 16, "console=ttyS0").unwrap();
        assert_eq!(
            (g.load_gpa, g.entry, g.flat.len()),
            (0x10_0000, 0x10_0020, 0x1000)
        );
        assert_eq!(g.flat[0x3f], 0xcc);
        assert_eq!(g.flat[0x40], 0);
        assert_eq!(g.entry_regs, [0x2bad_b002, MULTIBOOT_INFO_GPA, 0]);
        let (gpa, info) = &g.segments[0];
        assert_eq!(*gpa, MULTIBOOT_INFO_GPA);
        let word = |off: usize| u32::from_le_bytes(info[off..off + 4].try_into().unwrap());
        assert_eq!(word(0), 1 | 1 << 2 | 1 << 6 | 1 << 9);
        assert_eq!(word(8), 15 * 1024, "mem_upper in KiB above 1 MiB");
        let cmdline = (word(16) as u64 - MULTIBOOT_INFO_GPA) as usize;
        assert_eq!(&info[cmdline..cmdline + 14], b"console=ttyS0\0");
        assert_eq!(word(44), 3 * 24, "three memory map entries");
    }

    #[test]
    fn unsupported_requirements_and_bad_files_are_refused() {
        assert!(load_multiboot(b"no header here", 16, "")
            .unwrap_err()
            .contains("no valid multiboot header"));
        let video = header(
            MULTIBOOT_AOUT_KLUDGE | 4,
            [0x10_0000, 0x10_0000, 0, 0, 0x10_0000],
        );
        assert!(load_multiboot(&video, 16, "")
            .unwrap_err()
            .contains("does not provide"));
        let low = header(MULTIBOOT_AOUT_KLUDGE, [0x1000, 0x1000, 0, 0, 0x1000]);
        assert!(load_multiboot(&low, 16, "")
            .unwrap_err()
            .contains("outside 1 MiB"));
        let ok = header(
            MULTIBOOT_AOUT_KLUDGE,
            [0x10_0000, 0x10_0000, 0, 0, 0x10_0000],
        );
        let long = "x".repeat(MULTIBOOT_CMDLINE_MAX);
        assert!(load_multiboot(&ok, 16, &long)
            .unwrap_err()
            .contains("command line"));
        let mut bad_sum = ok.clone();
        bad_sum[8] ^= 1;
        assert!(load_multiboot(&bad_sum, 16, "").is_err());
    }
}
