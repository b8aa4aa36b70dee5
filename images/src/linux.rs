//! The Linux x86 boot protocol (`Documentation/arch/x86/boot.rst`), the
//! **32-bit entry**: what a boot loader does for a bzImage after the
//! real-mode setup code would have run, done when the image is built.
//!
//! - The bzImage's checks: the boot sector's 0xAA55, the `HdrS` magic,
//!   protocol version at least 2.06 (`cmdline_size`; every kernel since
//!   2.6.22), `loadflags` LOADED_HIGH (a bzImage, not a zImage).
//! - The protected-mode kernel (everything after the `setup_sects` + 1
//!   sectors of setup code) goes to `pref_address` if the kernel is
//!   relocatable and that fits the guest's RAM, else to 1 MiB; entered at
//!   that address (`code32_start`) in flat 32-bit protected mode, paging
//!   off, interrupts off, with ESI = the `boot_params` ("zero page")
//!   address and EBX = EBP = EDI = 0.
//! - `boot_params` at [`BOOT_PARAMS_GPA`]: zero, with the kernel's setup
//!   header copied in at 0x1F1, `type_of_loader` = 0xFF (undefined),
//!   `cmd_line_ptr` (the command line at [`CMDLINE_GPA`]), `ramdisk_image`
//!   and `ramdisk_size` (the initrd at the highest page-aligned address that
//!   ends below the guest's RAM, `initrd_addr_max` and 4 GiB), and an e820
//!   map: RAM 0..0x9FC00, reserved 0x9FC00..1 MiB, RAM 1 MiB..the end.
//!
//! There is no BIOS: no ACPI tables, no MP table, no EBDA, no video mode
//! (the screen information is zero, so Linux uses no VGA console).

use crate::loaders::LoadedGuest;
use ipc_proto::manifest::EntryMode;

/// Where `boot_params` goes (one page).
pub const BOOT_PARAMS_GPA: u64 = 0x1_0000;
/// Where the command line goes (up to `cmdline_size` + 1 bytes).
pub const CMDLINE_GPA: u64 = 0x2_0000;
/// The end of the room for the command line.
const CMDLINE_END: u64 = 0x9_0000;
/// Where a kernel that is not relocatable loads.
pub const LOW_KERNEL_GPA: u64 = 0x10_0000;
/// End of conventional memory.
const CONVENTIONAL_END: u64 = 0x9_fc00;
/// The oldest boot protocol accepted: 2.06 has `cmdline_size`.
pub const MIN_PROTOCOL: u16 = 0x0206;
/// `type_of_loader` for a loader without an assigned ID.
const LOADER_UNDEFINED: u8 = 0xff;

// Offsets in the setup header / boot_params (boot.rst, "THE REAL-MODE KERNEL HEADER").
const SETUP_SECTS: usize = 0x1f1;
const BOOT_FLAG: usize = 0x1fe;
const JUMP: usize = 0x200;
const HEADER: usize = 0x202;
const VERSION: usize = 0x206;
const TYPE_OF_LOADER: usize = 0x210;
const LOADFLAGS: usize = 0x211;
const CODE32_START: usize = 0x214;
const RAMDISK_IMAGE: usize = 0x218;
const RAMDISK_SIZE: usize = 0x21c;
const HEAP_END_PTR: usize = 0x224;
const CMD_LINE_PTR: usize = 0x228;
const INITRD_ADDR_MAX: usize = 0x22c;
const KERNEL_ALIGNMENT: usize = 0x230;
const RELOCATABLE_KERNEL: usize = 0x234;
const CMDLINE_SIZE: usize = 0x238;
const PREF_ADDRESS: usize = 0x258;
const INIT_SIZE: usize = 0x260;
// boot_params outside the setup header.
const EXT_RAMDISK_IMAGE: usize = 0x0c0;
const EXT_RAMDISK_SIZE: usize = 0x0c4;
const EXT_CMD_LINE_PTR: usize = 0x0c8;
const E820_ENTRIES: usize = 0x1e8;
const E820_TABLE: usize = 0x2d0;

/// syssize's unit, in bytes.
const SYSSIZE_UNIT: u64 = 16;

const LOADED_HIGH: u8 = 1 << 0;
const CAN_USE_HEAP: u8 = 1 << 7;

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}
fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

/// What the setup header says about a bzImage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BzImageInfo {
    /// Boot protocol version (0x020f is 2.15).
    pub protocol: u16,
    /// Sectors of real-mode setup code after the boot sector.
    pub setup_sects: usize,
    /// Bytes of the protected-mode kernel.
    pub kernel_len: usize,
    /// Whether the kernel may be loaded at any `kernel_alignment` address.
    pub relocatable: bool,
    /// Where a relocatable kernel prefers to be (protocol 2.10+).
    pub pref_address: u64,
    /// Memory the kernel needs from its load address while it decompresses.
    pub init_size: u64,
    /// Highest address the initrd may end at (inclusive).
    pub initrd_addr_max: u64,
    /// Longest command line, without its NUL.
    pub cmdline_size: usize,
}

/// Whether `file` claims to be a Linux kernel with a boot-protocol header
/// (`HdrS` at 0x202), whatever else is wrong with it.
pub fn looks_like_bzimage(file: &[u8]) -> bool {
    file.get(HEADER..HEADER + 4) == Some(b"HdrS")
}

/// Checks a bzImage's header.
pub fn parse_bzimage(file: &[u8]) -> Result<BzImageInfo, String> {
    if file.len() < 0x264 {
        return Err(format!(
            "not a Linux bzImage: {} bytes are too few for a boot sector and a setup header",
            file.len()
        ));
    }
    if u16_at(file, BOOT_FLAG) != 0xaa55 {
        return Err("not a Linux bzImage: its boot sector does not end with 0xAA55".into());
    }
    if &file[HEADER..HEADER + 4] != b"HdrS" {
        return Err(
            "not a Linux bzImage: no \"HdrS\" setup header (a kernel older than 2.0, or not a kernel)"
                .into(),
        );
    }
    let protocol = u16_at(file, VERSION);
    if protocol < MIN_PROTOCOL {
        return Err(format!(
            "the kernel speaks boot protocol {}.{:02}; splitvisor needs 2.06 or later (Linux 2.6.22+)",
            protocol >> 8,
            protocol & 0xff
        ));
    }
    if file[LOADFLAGS] & LOADED_HIGH == 0 {
        return Err(
            "the kernel is a zImage (loadflags without LOADED_HIGH); only bzImages are supported"
                .into(),
        );
    }
    let setup_sects = match file[SETUP_SECTS] {
        0 => 4,
        n => usize::from(n),
    };
    let kernel_off = (setup_sects + 1) * 512;
    if file.len() <= kernel_off {
        return Err(format!(
            "the bzImage is truncated: {} bytes end before its protected-mode kernel at offset {kernel_off:#x}",
            file.len()
        ));
    }
    // syssize (0x1f4, 16-byte units) says how long the protected-mode part
    // is. Neither QEMU nor GRUB checks it; a file ending less than one unit
    // short is the rounding up of the last unit (Debian's memtest86+
    // x64.bin ends 8 bytes short), and the missing bytes are taken as zero.
    // A file more than one unit short is truncated.
    let syssize = u64::from(u32_at(file, 0x1f4)) * 16;
    let kernel_len = file.len() - kernel_off;
    if (kernel_len as u64) + SYSSIZE_UNIT <= syssize {
        return Err(format!(
            "the bzImage is truncated: its header says {syssize} bytes of protected-mode kernel, the file has {kernel_len}"
        ));
    }
    let kernel_len = kernel_len.max(syssize as usize);
    let relocatable = protocol >= 0x0205 && file[RELOCATABLE_KERNEL] != 0;
    let pref_address = if protocol >= 0x020a {
        u64_at(file, PREF_ADDRESS)
    } else {
        LOW_KERNEL_GPA
    };
    let init_size = if protocol >= 0x020a {
        u64::from(u32_at(file, INIT_SIZE))
    } else {
        0
    };
    let initrd_addr_max = match u32_at(file, INITRD_ADDR_MAX) {
        0 => 0x37ff_ffff,
        n => u64::from(n),
    };
    Ok(BzImageInfo {
        protocol,
        setup_sects,
        kernel_len,
        relocatable,
        pref_address,
        init_size: init_size.max(kernel_len as u64),
        initrd_addr_max,
        cmdline_size: u32_at(file, CMDLINE_SIZE) as usize,
    })
}

/// Loads a bzImage with `ram_mib` MiB of RAM, an initrd and a command line.
pub fn load_linux(
    file: &[u8],
    initrd: Option<&[u8]>,
    cmdline: &str,
    ram_mib: u32,
) -> Result<LoadedGuest, String> {
    let info = parse_bzimage(file)?;
    let ram = u64::from(ram_mib) << 20;
    let cmdline_room = (CMDLINE_END - CMDLINE_GPA) as usize - 1;
    let cmdline_max = info.cmdline_size.min(cmdline_room);
    if cmdline.len() > cmdline_max {
        return Err(format!(
            "the command line is {} bytes; this kernel accepts at most {cmdline_max}",
            cmdline.len()
        ));
    }
    if cmdline.contains('\0') {
        return Err("the command line contains a NUL byte".into());
    }
    let load = if info.relocatable && info.pref_address >= LOW_KERNEL_GPA {
        let align = u64::from(u32_at(file, KERNEL_ALIGNMENT)).max(1);
        if info.pref_address % align == 0 && info.pref_address + info.init_size <= ram {
            info.pref_address
        } else {
            LOW_KERNEL_GPA
        }
    } else {
        LOW_KERNEL_GPA
    };
    let kernel_end = load + info.init_size;
    if kernel_end > ram {
        return Err(format!(
            "the kernel needs {:#x}..{kernel_end:#x} ({} MiB) while it decompresses; the guest has {ram_mib} MiB of RAM (use --ram)",
            load,
            kernel_end.div_ceil(1 << 20)
        ));
    }
    let kernel_off = (info.setup_sects + 1) * 512;
    let mut flat = file[kernel_off..].to_vec();
    flat.resize(info.kernel_len, 0);

    let mut bp = vec![0u8; 4096];
    let header_end = (JUMP + 2 + usize::from(file[JUMP + 1]))
        .min(0x290)
        .min(file.len());
    bp[SETUP_SECTS..header_end].copy_from_slice(&file[SETUP_SECTS..header_end]);
    bp[TYPE_OF_LOADER] = LOADER_UNDEFINED;
    // No real-mode code runs: no heap, and keep the segments we give.
    bp[LOADFLAGS] &= !CAN_USE_HEAP;
    bp[HEAP_END_PTR..HEAP_END_PTR + 2].fill(0);
    put32(&mut bp, CODE32_START, load as u32);
    put32(&mut bp, CMD_LINE_PTR, CMDLINE_GPA as u32);
    put32(&mut bp, EXT_CMD_LINE_PTR, 0);

    let mut segments = vec![(BOOT_PARAMS_GPA, Vec::new())];
    let mut cl = cmdline.as_bytes().to_vec();
    cl.push(0);
    segments.push((CMDLINE_GPA, cl));

    if let Some(initrd) = initrd.filter(|i| !i.is_empty()) {
        let len = initrd.len() as u64;
        let top = ram.min(info.initrd_addr_max + 1).min(1 << 32);
        let at = top.checked_sub(len).map(|a| a & !0xfff);
        match at {
            Some(at) if at >= kernel_end => {
                put32(&mut bp, RAMDISK_IMAGE, at as u32);
                put32(&mut bp, RAMDISK_SIZE, len as u32);
                put32(&mut bp, EXT_RAMDISK_IMAGE, 0);
                put32(&mut bp, EXT_RAMDISK_SIZE, 0);
                segments.push((at, initrd.to_vec()));
            }
            _ => {
                return Err(format!(
                    "the initrd ({} MiB) does not fit in the guest's RAM above the kernel ({} MiB of {ram_mib} MiB are free below {:#x}); use a larger --ram",
                    len.div_ceil(1 << 20),
                    top.saturating_sub(kernel_end) >> 20,
                    top
                ))
            }
        }
    }

    let e820: [(u64, u64, u32); 3] = [
        (0, CONVENTIONAL_END, E820_RAM),
        (
            CONVENTIONAL_END,
            LOW_KERNEL_GPA - CONVENTIONAL_END,
            E820_RESERVED,
        ),
        (LOW_KERNEL_GPA, ram - LOW_KERNEL_GPA, E820_RAM),
    ];
    for (i, (base, len, kind)) in e820.iter().enumerate() {
        let at = E820_TABLE + 20 * i;
        bp[at..at + 8].copy_from_slice(&base.to_le_bytes());
        bp[at + 8..at + 16].copy_from_slice(&len.to_le_bytes());
        put32(&mut bp, at + 16, *kind);
    }
    bp[E820_ENTRIES] = e820.len() as u8;
    segments[0].1 = bp;

    Ok(LoadedGuest {
        flat,
        load_gpa: load,
        entry: load,
        entry_mode: EntryMode::Flat32,
        entry_regs: [0, 0, BOOT_PARAMS_GPA],
        segments,
    })
}

/// An initramfs: a cpio archive in the "newc" format (uncompressed, which
/// Linux accepts as it is).
#[derive(Default)]
pub struct Cpio {
    bytes: Vec<u8>,
    ino: u32,
}

impl Cpio {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) {
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.bytes.extend_from_slice(b"070701");
        for f in fields {
            self.bytes.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }

    /// A directory.
    pub fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, &[], (0, 0));
    }

    /// A regular file with permissions `perm` (e.g. 0o755).
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, 0o100000 | perm, data, (0, 0));
    }

    /// A symbolic link to `target`.
    pub fn symlink(&mut self, name: &str, target: &str) {
        self.entry(name, 0o120777, target.as_bytes(), (0, 0));
    }

    /// A character device.
    pub fn chardev(&mut self, name: &str, major: u32, minor: u32) {
        self.entry(name, 0o020600, &[], (major, minor));
    }

    /// The archive with its trailer.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[], (0, 0));
        while !self.bytes.len().is_multiple_of(512) {
            self.bytes.push(0);
        }
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A synthetic bzImage: boot sector, `setup_sects` sectors of setup, a
    /// header of `protocol`, and `kernel_len` bytes of protected-mode kernel.
    fn bzimage(protocol: u16, setup_sects: u8, kernel_len: usize, relocatable: bool) -> Vec<u8> {
        let sects = if setup_sects == 0 {
            4
        } else {
            setup_sects as usize
        };
        let mut f = vec![0u8; (sects + 1) * 512 + kernel_len];
        f[SETUP_SECTS] = setup_sects;
        put32(&mut f, 0x1f4, (kernel_len / 16) as u32);
        f[BOOT_FLAG] = 0x55;
        f[BOOT_FLAG + 1] = 0xaa;
        f[JUMP] = 0xeb;
        f[JUMP + 1] = 0x66; // header up to 0x268
        f[HEADER..HEADER + 4].copy_from_slice(b"HdrS");
        f[VERSION..VERSION + 2].copy_from_slice(&protocol.to_le_bytes());
        f[LOADFLAGS] = LOADED_HIGH | CAN_USE_HEAP;
        put32(&mut f, CODE32_START, 0x10_0000);
        put32(&mut f, INITRD_ADDR_MAX, 0x7fff_ffff);
        put32(&mut f, KERNEL_ALIGNMENT, 0x20_0000);
        f[RELOCATABLE_KERNEL] = u8::from(relocatable);
        put32(&mut f, CMDLINE_SIZE, 2047);
        f[PREF_ADDRESS..PREF_ADDRESS + 8].copy_from_slice(&0x100_0000u64.to_le_bytes());
        put32(&mut f, INIT_SIZE, 0x80_0000);
        let k = (sects + 1) * 512;
        f[k] = 0xfc; // cld
        f[k + kernel_len - 1] = 0xcc;
        f
    }

    #[test]
    fn a_relocatable_kernel_loads_at_pref_address_with_boot_params() {
        let file = bzimage(0x020f, 0x1b, 0x4000, true);
        let initrd = vec![0x5a; 10_000];
        let g = load_linux(&file, Some(&initrd), "console=ttyS0", 64).unwrap();
        assert_eq!((g.load_gpa, g.entry), (0x100_0000, 0x100_0000));
        assert_eq!(g.entry_mode, EntryMode::Flat32);
        assert_eq!(g.entry_regs, [0, 0, BOOT_PARAMS_GPA]);
        assert_eq!(g.flat.len(), 0x4000);
        assert_eq!((g.flat[0], g.flat[0x3fff]), (0xfc, 0xcc));
        let (gpa, bp) = &g.segments[0];
        assert_eq!(*gpa, BOOT_PARAMS_GPA);
        assert_eq!(&bp[HEADER..HEADER + 4], b"HdrS");
        assert_eq!(bp[TYPE_OF_LOADER], 0xff);
        assert_eq!(bp[SETUP_SECTS], 0x1b);
        assert_eq!(u32_at(bp, CODE32_START), 0x100_0000);
        assert_eq!(u64::from(u32_at(bp, CMD_LINE_PTR)), CMDLINE_GPA);
        let (cgpa, cl) = &g.segments[1];
        assert_eq!(
            (*cgpa, cl.as_slice()),
            (CMDLINE_GPA, &b"console=ttyS0\0"[..])
        );
        // The initrd: page aligned, ending below 64 MiB.
        let (igpa, ibytes) = &g.segments[2];
        assert_eq!(u64::from(u32_at(bp, RAMDISK_IMAGE)), *igpa);
        assert_eq!(u32_at(bp, RAMDISK_SIZE), 10_000);
        assert_eq!(*igpa % 4096, 0);
        assert!(*igpa + 10_000 <= 64 << 20 && *igpa > (64 << 20) - 16384);
        assert_eq!(ibytes.len(), 10_000);
        // e820: low RAM, reserved, RAM above 1 MiB.
        assert_eq!(bp[E820_ENTRIES], 3);
        let entry = |i: usize| {
            let at = E820_TABLE + 20 * i;
            (u64_at(bp, at), u64_at(bp, at + 8), u32_at(bp, at + 16))
        };
        assert_eq!(entry(0), (0, 0x9fc00, 1));
        assert_eq!(entry(1), (0x9fc00, 0x6_0400, 2));
        assert_eq!(entry(2), (0x10_0000, (63 << 20), 1));
    }

    #[test]
    fn a_fixed_kernel_or_too_little_ram_loads_at_one_mib() {
        let file = bzimage(0x0206, 0, 0x2000, false);
        let g = load_linux(&file, None, "", 16).unwrap();
        assert_eq!(g.load_gpa, 0x10_0000);
        assert_eq!(g.segments.len(), 2, "no initrd segment");
        assert_eq!(u32_at(&g.segments[0].1, RAMDISK_IMAGE), 0);
        // Relocatable, but pref_address + init_size (24 MiB) exceed 16 MiB.
        let file = bzimage(0x020f, 4, 0x2000, true);
        assert_eq!(load_linux(&file, None, "", 16).unwrap().load_gpa, 0x10_0000);
    }

    #[test]
    fn a_syssize_rounded_past_the_file_is_padded_not_refused() {
        // memtest86+x64.bin: syssize * 16 is 8 bytes past the file's end.
        let mut f = bzimage(0x020c, 2, 0x2008, false);
        put32(&mut f, 0x1f4, 0x2010 / 16);
        let g = load_linux(&f, None, "console=ttyS0,115200", 16).unwrap();
        assert_eq!(g.flat.len(), 0x2010);
        assert_eq!(g.flat[0x2007], 0xcc);
        assert!(g.flat[0x2008..].iter().all(|&b| b == 0));
        // 15 bytes short: still the last unit's rounding.
        let short = &f[..f.len() - 7];
        assert_eq!(load_linux(short, None, "", 16).unwrap().flat.len(), 0x2010);
        // A whole unit short is a truncated file.
        let short = &f[..f.len() - 8];
        assert!(load_linux(short, None, "", 16)
            .unwrap_err()
            .contains("truncated"));
    }

    #[test]
    fn bad_input_gives_one_sentence() {
        let good = bzimage(0x020f, 4, 0x2000, true);
        let err = |f: &[u8]| load_linux(f, None, "", 64).unwrap_err();
        assert!(err(b"ELF").contains("not a Linux bzImage"));
        let mut f = good.clone();
        f[BOOT_FLAG] = 0;
        assert!(err(&f).contains("0xAA55"));
        let mut f = good.clone();
        f[HEADER] = b'X';
        assert!(err(&f).contains("HdrS"));
        let f = bzimage(0x0204, 4, 0x2000, false);
        assert!(err(&f).contains("2.04"));
        let mut f = good.clone();
        f[LOADFLAGS] = 0;
        assert!(err(&f).contains("zImage"));
        assert!(err(&good[..good.len() - 100]).contains("truncated"));
        assert!(err(&good[..5 * 512]).contains("truncated"));
        let long = "x".repeat(2048);
        assert!(load_linux(&good, None, &long, 64)
            .unwrap_err()
            .contains("at most 2047"));
        let big = vec![0u8; 60 << 20];
        assert!(load_linux(&good, Some(&big), "", 64)
            .unwrap_err()
            .contains("initrd"));
        assert!(load_linux(&good, None, "", 4)
            .unwrap_err()
            .contains("--ram"));
    }

    proptest::proptest! {
        /// Any file and any syssize: an error or a kernel at least as long
        /// as syssize says and the file has, never a panic.
        #[test]
        fn any_syssize_loads_or_is_refused(
            kernel_len in 1usize..0x3000,
            syssize in 0u32..0x400,
            cut in 0usize..64,
        ) {
            let mut f = bzimage(0x020f, 4, kernel_len, false);
            put32(&mut f, 0x1f4, syssize);
            let f = &f[..f.len().saturating_sub(cut)];
            if let Ok(g) = load_linux(f, None, "", 32) {
                let have = f.len() - 5 * 512;
                proptest::prop_assert!(g.flat.len() >= have);
                proptest::prop_assert!(g.flat.len() as u64 >= u64::from(syssize) * 16);
                proptest::prop_assert!((have as u64) + 16 > u64::from(syssize) * 16);
            }
        }
    }

    #[test]
    fn cpio_newc_entries_are_aligned() {
        let mut c = Cpio::new();
        c.dir("dev");
        c.file("init", 0o755, b"#!/bin/sh\n");
        c.symlink("bin/sh", "busybox");
        c.chardev("dev/console", 5, 1);
        let a = c.finish();
        assert!(a.starts_with(b"070701"));
        assert_eq!(a.len() % 512, 0);
        let text = String::from_utf8_lossy(&a);
        assert!(text.contains("TRAILER!!!"));
        // The init file's data starts 4-aligned after its header and name.
        let pos = a.windows(10).position(|w| w == b"#!/bin/sh\n").unwrap();
        assert_eq!(pos % 4, 0);
    }
}
