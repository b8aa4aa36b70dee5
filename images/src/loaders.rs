//! Guest loaders: how a guest file becomes initial guest memory and
//! registers, the work a boot loader does. The image is static, so loading
//! happens when the image is built; the stub only copies the result.
//!
//! - **Multiboot v1** (what QEMU's `-kernel` and GRUB's `multiboot`
//!   accept): an ELF kernel (32-bit, or 64-bit as GRUB takes it) or one
//!   using the header's address fields (the "a.out kludge"), anywhere in
//!   the guest's RAM, low memory included, its ELF entry point translated
//!   from virtual to physical through its segment as GRUB does; entered in
//!   flat 32-bit protected mode with EAX = 0x2BADB002 and EBX = the
//!   multiboot information (memory sizes, memory map, command line, boot
//!   loader name, modules), as the Multiboot Specification 0.6.96 says
//!   (see [`load_multiboot`] for where each part goes).
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
/// Where the multiboot information and what it points to are placed,
/// unless the kernel covers it (then on the page after the kernel).
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

/// A multiboot module: its bytes and its command line (QEMU's `-initrd
/// "file args"`, GRUB's `module file args`: by convention the file's name
/// comes first).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MultibootModule<'a> {
    /// The module's contents, placed page-aligned.
    pub bytes: &'a [u8],
    /// Its string (`mod_list.cmdline`).
    pub cmdline: &'a str,
}

/// A multiboot v1 kernel with `ram_mib` MiB of RAM, command line `cmdline`
/// (given to the kernel as it is: QEMU and GRUB put the kernel's path
/// first, which the caller does) and `modules`.
///
/// What QEMU's `-kernel` and GRUB's `multiboot` accept is accepted: a
/// kernel anywhere in the guest's RAM, low memory included (a test kernel
/// linked at 0x8000); an ELF entry point given as a virtual address inside
/// a segment, translated through it to the physical one (GNU Mach: virtual
/// 0xc1000000, loaded at physical 0x1000000), as GRUB's
/// `multiboot_elfxx.c` does; a 64-bit ELF kernel (GRUB loads it by its
/// physical addresses and enters it in 32-bit mode; QEMU refuses it).
///
/// Layout: the kernel where it asks to be; the multiboot information at
/// [`MULTIBOOT_INFO_GPA`] unless the kernel covers it, else on the page
/// after the kernel (where QEMU puts it); the modules page-aligned after
/// both. Whatever does not fit the RAM or would overlap the kernel is
/// refused with a sentence saying which.
pub fn load_multiboot(
    file: &[u8],
    ram_mib: u32,
    cmdline: &str,
    modules: &[MultibootModule<'_>],
) -> Result<LoadedGuest, String> {
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
    if cmdline.contains('\0') || modules.iter().any(|m| m.cmdline.contains('\0')) {
        return Err("a command line contains a NUL byte".into());
    }
    let ram = u64::from(ram_mib) << 20;
    let (flat, load_gpa, entry) = if flags & MULTIBOOT_AOUT_KLUDGE != 0 {
        load_aout_kludge(file, off)?
    } else {
        load_elf(file)?
    };
    let end = load_gpa + flat.len() as u64;
    if end > ram {
        return Err(format!(
            "the kernel occupies {load_gpa:#x}..{end:#x}, past the end of the guest's RAM at {ram:#x} (use --ram)"
        ));
    }
    if !(load_gpa..end).contains(&entry) {
        return Err(format!(
            "the kernel's entry point {entry:#x} lies outside what it loads ({load_gpa:#x}..{end:#x})"
        ));
    }
    let info_len = multiboot_info_len(cmdline, modules) as u64;
    let overlaps = |a: u64, len: u64| a < end && load_gpa < a + len;
    let info_gpa = if !overlaps(MULTIBOOT_INFO_GPA, info_len)
        && MULTIBOOT_INFO_GPA + info_len <= CONVENTIONAL_END
    {
        MULTIBOOT_INFO_GPA
    } else {
        end.next_multiple_of(PAGE)
    };
    if info_gpa + info_len > ram.min(1 << 32) {
        return Err(format!(
            "the kernel covers {MULTIBOOT_INFO_GPA:#x}, where the multiboot information goes, and the {info_len} bytes of it do not fit after the kernel's end at {end:#x} either (RAM ends at {ram:#x}; use --ram)"
        ));
    }
    let mut next = end.max(info_gpa + info_len).next_multiple_of(PAGE);
    let mut placed = Vec::with_capacity(modules.len());
    for (i, m) in modules.iter().enumerate() {
        let at = next;
        let mod_end = at + m.bytes.len() as u64;
        if mod_end > ram.min(1 << 32) {
            return Err(format!(
                "multiboot module {} ({} bytes) does not fit in the guest's RAM: it would occupy {at:#x}..{mod_end:#x}, RAM ends at {ram:#x} (use --ram)",
                i + 1,
                m.bytes.len()
            ));
        }
        placed.push((at, *m));
        next = mod_end.next_multiple_of(PAGE);
    }
    let mut segments = vec![(info_gpa, multiboot_info(info_gpa, ram, cmdline, &placed))];
    segments.extend(placed.iter().map(|(at, m)| (*at, m.bytes.to_vec())));
    Ok(LoadedGuest {
        flat,
        load_gpa,
        entry,
        entry_mode: EntryMode::Flat32,
        entry_regs: [MULTIBOOT_BOOT_MAGIC, info_gpa, 0],
        segments,
    })
}

const PAGE: u64 = 0x1000;

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
        .map(|s| s.paddr.saturating_add(s.memsz))
        .max()
        .unwrap_or(start);
    if end - start > 512 << 20 || end > 1 << 32 {
        return Err(format!(
            "the kernel's segments span {start:#x}..{end:#x}: more than 512 MiB, or past 4 GiB"
        ));
    }
    let mut flat = vec![0u8; (end - start) as usize];
    for s in segs {
        let at = (s.paddr - start) as usize;
        let n = s.bytes.len().min(s.memsz as usize);
        flat[at..at + n].copy_from_slice(&s.bytes[..n]);
    }
    Ok((flat, start, elf_entry_paddr(&elf)))
}

/// The physical address of the ELF entry point, as GRUB finds it: the
/// segment whose *virtual* range holds `e_entry` translates it
/// (`e_entry - p_vaddr + p_paddr`); a kernel whose `e_entry` is in no
/// segment's virtual range keeps it as it is (a physical address, as QEMU
/// takes it).
pub fn elf_entry_paddr(elf: &ElfImage<'_>) -> u64 {
    elf.segments
        .iter()
        .find(|s| s.vaddr <= elf.entry && elf.entry - s.vaddr < s.memsz)
        .map_or(elf.entry, |s| elf.entry - s.vaddr + s.paddr)
}

// The multiboot information block: the structure, the memory map, the
// boot loader name, the module list, then the strings.
const MMAP_OFF: usize = 0x100;
const NAME_OFF: usize = 0x200;
const MODS_OFF: usize = 0x300;
const MOD_ENTRY: usize = 16;

fn multiboot_info_len(cmdline: &str, modules: &[MultibootModule<'_>]) -> usize {
    MODS_OFF
        + MOD_ENTRY * modules.len()
        + cmdline.len()
        + 1
        + modules.iter().map(|m| m.cmdline.len() + 1).sum::<usize>()
}

/// The multiboot information block for `gpa`: the structure, then the
/// memory map, the boot loader name, the module list (`modules`: where
/// each was placed) and the command lines.
fn multiboot_info(
    gpa: u64,
    ram: u64,
    cmdline: &str,
    modules: &[(u64, MultibootModule<'_>)],
) -> Vec<u8> {
    let plain: Vec<_> = modules.iter().map(|(_, m)| *m).collect();
    let at = |off: usize| (gpa + off as u64) as u32;
    let mut page = vec![0u8; multiboot_info_len(cmdline, &plain)];
    let put = |page: &mut Vec<u8>, off: usize, v: u32| {
        page[off..off + 4].copy_from_slice(&v.to_le_bytes())
    };
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
    let mut info_flags = 1 | 1 << 2 | 1 << 6 | 1 << 9; // mem_*, cmdline, mmap, boot_loader_name
    if !modules.is_empty() {
        info_flags |= 1 << 3; // mods_*
    }
    put(&mut page, 0, info_flags);
    put(&mut page, 4, (CONVENTIONAL_END / 1024) as u32);
    put(&mut page, 8, ((ram - 0x10_0000) / 1024) as u32);
    put(&mut page, 44, mmap.len() as u32);
    put(&mut page, 48, at(MMAP_OFF));
    put(&mut page, 64, at(NAME_OFF));
    page[MMAP_OFF..MMAP_OFF + mmap.len()].copy_from_slice(&mmap);
    page[NAME_OFF..NAME_OFF + 10].copy_from_slice(b"splitvisor");
    let mut strings = MODS_OFF + MOD_ENTRY * modules.len();
    let mut string = |page: &mut Vec<u8>, s: &str| {
        page[strings..strings + s.len()].copy_from_slice(s.as_bytes());
        let here = at(strings);
        strings += s.len() + 1;
        here
    };
    let cl = string(&mut page, cmdline);
    put(&mut page, 16, cl);
    if !modules.is_empty() {
        put(&mut page, 20, modules.len() as u32);
        put(&mut page, 24, at(MODS_OFF));
    }
    for (i, (mod_at, m)) in modules.iter().enumerate() {
        let e = MODS_OFF + MOD_ENTRY * i;
        let s = string(&mut page, m.cmdline);
        put(&mut page, e, *mod_at as u32);
        put(&mut page, e + 4, (*mod_at + m.bytes.len() as u64) as u32);
        put(&mut page, e + 8, s);
    }
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
        let g = load_multiboot(&file, 16, "console=ttyS0", &[]).unwrap();
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
        let cmdline = (u64::from(word(16)) - MULTIBOOT_INFO_GPA) as usize;
        assert_eq!(&info[cmdline..cmdline + 14], b"console=ttyS0\0");
        assert_eq!(word(44), 3 * 24, "three memory map entries");
    }

    #[test]
    fn unsupported_requirements_and_bad_files_are_refused() {
        assert!(load_multiboot(b"no header here", 16, "", &[])
            .unwrap_err()
            .contains("no valid multiboot header"));
        let video = header(
            MULTIBOOT_AOUT_KLUDGE | 4,
            [0x10_0000, 0x10_0000, 0, 0, 0x10_0000],
        );
        assert!(load_multiboot(&video, 16, "", &[])
            .unwrap_err()
            .contains("does not provide"));
        let past_ram = header(
            MULTIBOOT_AOUT_KLUDGE,
            [0xff_f000, 0xff_f000, 0, 0x100_1000, 0xff_f000],
        );
        assert!(load_multiboot(&past_ram, 16, "", &[])
            .unwrap_err()
            .contains("past the end of the guest's RAM"));
        let ok = header(
            MULTIBOOT_AOUT_KLUDGE,
            [0x10_0000, 0x10_0000, 0, 0, 0x10_0000],
        );
        let long = "x".repeat(MULTIBOOT_CMDLINE_MAX);
        assert!(load_multiboot(&ok, 16, &long, &[])
            .unwrap_err()
            .contains("command line"));
        let mut bad_sum = ok.clone();
        bad_sum[8] ^= 1;
        assert!(load_multiboot(&bad_sum, 16, "", &[]).is_err());
    }
    /// A minimal ELF executable (no sections) with `segs` as
    /// (vaddr, paddr, file bytes, memsz) and entry point `entry`; ELF64
    /// when `wide`, with the multiboot header at the start of the first
    /// segment's bytes.
    fn elf(wide: bool, entry: u64, segs: &[(u64, u64, Vec<u8>, u64)]) -> Vec<u8> {
        let (eh, ph) = if wide { (64usize, 56usize) } else { (52, 32) };
        let mut f = vec![0u8; eh + ph * segs.len()];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = if wide { 2 } else { 1 };
        f[5] = 1;
        f[6] = 1;
        let mut data_off = f.len().next_multiple_of(16);
        let mut body = Vec::new();
        let mut phdrs = Vec::new();
        for (vaddr, paddr, bytes, memsz) in segs {
            let mut p = Vec::new();
            let w = |p: &mut Vec<u8>, v: u64| {
                if wide {
                    p.extend_from_slice(&v.to_le_bytes())
                } else {
                    p.extend_from_slice(&(v as u32).to_le_bytes())
                }
            };
            p.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
            if wide {
                p.extend_from_slice(&5u32.to_le_bytes()); // flags
            }
            w(&mut p, data_off as u64);
            w(&mut p, *vaddr);
            w(&mut p, *paddr);
            w(&mut p, bytes.len() as u64);
            w(&mut p, *memsz);
            if !wide {
                p.extend_from_slice(&5u32.to_le_bytes());
            }
            w(&mut p, 0x10); // align
            phdrs.extend_from_slice(&p);
            body.extend_from_slice(bytes);
            data_off += bytes.len();
        }
        let put16 =
            |f: &mut Vec<u8>, o: usize, v: u16| f[o..o + 2].copy_from_slice(&v.to_le_bytes());
        put16(&mut f, 16, 2); // ET_EXEC
        put16(&mut f, 18, if wide { 62 } else { 3 });
        f[20] = 1;
        if wide {
            f[24..32].copy_from_slice(&entry.to_le_bytes());
            f[32..40].copy_from_slice(&(eh as u64).to_le_bytes());
            put16(&mut f, 52, eh as u16);
            put16(&mut f, 54, ph as u16);
            put16(&mut f, 56, segs.len() as u16);
        } else {
            f[24..28].copy_from_slice(&(entry as u32).to_le_bytes());
            f[28..32].copy_from_slice(&(eh as u32).to_le_bytes());
            put16(&mut f, 40, eh as u16);
            put16(&mut f, 42, ph as u16);
            put16(&mut f, 44, segs.len() as u16);
        }
        f[eh..eh + phdrs.len()].copy_from_slice(&phdrs);
        f.resize(f.len().next_multiple_of(16), 0);
        f.extend_from_slice(&body);
        f
    }

    fn text() -> Vec<u8> {
        let mut t = header(0, [0; 5]);
        t.resize(0x100, 0x90);
        t
    }

    fn word(info: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(info[off..off + 4].try_into().unwrap())
    }

    #[test]
    fn a_virtual_entry_point_is_translated_through_its_segment() {
        // GNU Mach 1.8 (i386): linked at virtual 0xc1000000, loaded at
        // physical 0x1000000, e_entry virtual; data at 0xc1100000 / 0x1100000.
        let file = elf(
            false,
            0xc100_0010,
            &[
                (0xc100_0000, 0x100_0000, text(), 0x100),
                (0xc110_0000, 0x110_0000, vec![1; 0x10], 0x2000),
            ],
        );
        let g = load_multiboot(&file, 32, "/boot/gnumach console=com0", &[]).unwrap();
        assert_eq!((g.load_gpa, g.entry), (0x100_0000, 0x100_0010));
        assert_eq!(g.flat.len(), 0x10_2000);
        assert_eq!(g.flat[0x10_0000], 1);
        // A physical entry point (in no segment's virtual range) stays.
        let file = elf(
            false,
            0x100_0010,
            &[(0xc100_0000, 0x100_0000, text(), 0x100)],
        );
        assert_eq!(
            load_multiboot(&file, 32, "", &[]).unwrap().entry,
            0x100_0010
        );
        // In neither: refused, naming the address.
        let file = elf(
            false,
            0x200_0000,
            &[(0xc100_0000, 0x100_0000, text(), 0x100)],
        );
        assert!(load_multiboot(&file, 64, "", &[])
            .unwrap_err()
            .contains("entry point 0x2000000 lies outside"));
    }

    #[test]
    fn a_64_bit_elf_kernel_loads_by_its_physical_addresses() {
        let file = elf(
            true,
            0xffff_ffff_8010_0020,
            &[(0xffff_ffff_8010_0000, 0x10_0000, text(), 0x1000)],
        );
        let g = load_multiboot(&file, 16, "", &[]).unwrap();
        assert_eq!(
            (g.load_gpa, g.entry, g.entry_mode),
            (0x10_0000, 0x10_0020, EntryMode::Flat32)
        );
        let high = elf(
            true,
            0x1_0000_0000,
            &[(0x1_0000_0000, 0x1_0000_0000, text(), 0x100)],
        );
        assert!(load_multiboot(&high, 16, "", &[])
            .unwrap_err()
            .contains("past 4 GiB"));
    }

    #[test]
    fn a_kernel_below_one_mib_moves_the_information_after_itself() {
        // Linked at 0x8000, where the information goes by default.
        let mut file = header(MULTIBOOT_AOUT_KLUDGE, [0x8000, 0x8000, 0, 0x9000, 0x8020]);
        file.resize(0x40, 0xcc);
        let g = load_multiboot(&file, 16, "k a=b", &[]).unwrap();
        assert_eq!(
            (g.load_gpa, g.entry, g.flat.len()),
            (0x8000, 0x8020, 0x1000)
        );
        let (info_gpa, info) = &g.segments[0];
        assert_eq!(*info_gpa, 0x9000, "the page after the kernel");
        assert_eq!(g.entry_regs[1], 0x9000);
        let cl = (u64::from(word(info, 16)) - info_gpa) as usize;
        assert_eq!(&info[cl..cl + 6], b"k a=b\0");
        // A kernel elsewhere in low memory leaves it at 0x8000.
        let mut file = header(MULTIBOOT_AOUT_KLUDGE, [0x1000, 0x1000, 0, 0x2000, 0x1000]);
        file.resize(0x40, 0);
        assert_eq!(
            load_multiboot(&file, 16, "", &[]).unwrap().segments[0].0,
            MULTIBOOT_INFO_GPA
        );
        // Filling the RAM to its end leaves no room for the information.
        let full = header(
            MULTIBOOT_AOUT_KLUDGE,
            [0x1000, 0x1000, 0, 0x100_0000, 0x1000],
        );
        assert!(load_multiboot(&full, 16, "", &[])
            .unwrap_err()
            .contains("multiboot information"));
    }

    #[test]
    fn modules_are_page_aligned_after_the_kernel_and_listed() {
        let mut file = header(
            MULTIBOOT_AOUT_KLUDGE,
            [0x10_0000, 0x10_0000, 0, 0x10_1800, 0x10_0000],
        );
        file.resize(0x40, 0);
        let one = vec![7u8; 0x1234];
        let two = b"second".to_vec();
        let mods = [
            MultibootModule {
                bytes: &one,
                cmdline: "/boot/one x=1",
            },
            MultibootModule {
                bytes: &two,
                cmdline: "/boot/two",
            },
        ];
        let g = load_multiboot(&file, 16, "/boot/kernel ", &mods).unwrap();
        let (gpa, info) = &g.segments[0];
        assert_eq!(*gpa, MULTIBOOT_INFO_GPA);
        assert_eq!(word(info, 0) & 1 << 3, 1 << 3, "mods_* valid");
        assert_eq!(word(info, 20), 2);
        let list = (u64::from(word(info, 24)) - gpa) as usize;
        let entry = |i: usize, k: usize| word(info, list + 16 * i + 4 * k);
        assert_eq!((entry(0, 0), entry(0, 1)), (0x10_2000, 0x10_3234));
        assert_eq!((entry(1, 0), entry(1, 1)), (0x10_4000, 0x10_4006));
        let s = (u64::from(entry(0, 2)) - gpa) as usize;
        assert_eq!(&info[s..s + 14], b"/boot/one x=1\0");
        assert_eq!(g.segments[1], (0x10_2000, one.clone()));
        assert_eq!(g.segments[2], (0x10_4000, two));
        let big = vec![0u8; 16 << 20];
        let e = load_multiboot(
            &file,
            16,
            "",
            &[MultibootModule {
                bytes: &big,
                cmdline: "big",
            }],
        )
        .unwrap_err();
        assert!(e.contains("module 1"), "{e}");
    }

    proptest::proptest! {
        /// Any a.out-kludge header and any ELF entry point: refused, or a
        /// kernel inside the RAM whose entry point it loads, with the
        /// information and modules in the RAM, overlapping nothing.
        #[test]
        fn whatever_loads_fits_and_overlaps_nothing(
            fields in proptest::array::uniform5(0u32..0x140_0000),
            len in 0x20usize..0x3000,
            mod_len in 0usize..0x5000,
            cmdline in "[ -~]{0,64}",
        ) {
            let mut file = header(MULTIBOOT_AOUT_KLUDGE, fields);
            file.resize(len, 0x90);
            let m = vec![1u8; mod_len];
            let mods = [MultibootModule { bytes: &m, cmdline: "m" }];
            if let Ok(g) = load_multiboot(&file, 16, &cmdline, &mods) {
                let ram = 16u64 << 20;
                let end = g.load_gpa + g.flat.len() as u64;
                proptest::prop_assert!(end <= ram);
                proptest::prop_assert!(g.load_gpa <= g.entry && g.entry < end);
                let mut spans = vec![(g.load_gpa, end)];
                for (at, bytes) in &g.segments {
                    spans.push((*at, at + bytes.len() as u64));
                    proptest::prop_assert!(at + bytes.len() as u64 <= ram);
                }
                for (i, a) in spans.iter().enumerate() {
                    for b in &spans[i + 1..] {
                        proptest::prop_assert!(a.1 <= b.0 || b.1 <= a.0, "{a:x?} {b:x?}");
                    }
                }
            }
        }

        /// Random bytes after a valid header never panic the ELF path.
        #[test]
        fn random_elf_bytes_never_panic(tail in proptest::collection::vec(0u8..=255, 0..512)) {
            let mut file = b"\x7fELF".to_vec();
            file.extend_from_slice(&tail);
            file.extend_from_slice(&header(0, [0; 5]));
            let _ = load_multiboot(&file, 16, "", &[]);
        }
    }
}
