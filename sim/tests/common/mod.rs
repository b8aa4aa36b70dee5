//! The reference CPU and the random worlds of the shadow-vs-reference
//! property tests.
#![allow(dead_code)]

use mmu_server::regs::{cr0, cr4, efer};
use mmu_server::walk::{pte, Access, GuestMemory, NotRam, WalkError};
use mmu_server::{ctl, walk, CpuModel, GuestCtl, MmuConfig, MmuMode, PagingMode};
use sim::guest::GuestTables;
use sim::machine::code;
use sim::{Outcome, SimConfig};

pub const RAM: u64 = 8 << 20;
pub const CODE_GPA: u64 = 0x1000;
/// Page-table frames come from [1 MiB, 2 MiB).
pub const TABLES: (u64, u64) = (0x10_0000, 0x20_0000);
/// Data frames from [2 MiB, 8 MiB).
pub const DATA: (u64, u64) = (0x20_0000, RAM);

/// SplitMix64: the worlds are a function of one seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Flat guest memory for the reference CPU.
pub struct Ram(pub Vec<u8>);

impl GuestMemory for Ram {
    fn ram_bytes(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_phys(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), NotRam> {
        walk::Ram::new(&mut self.0).read_phys(gpa, buf)
    }
    fn write_phys(&mut self, gpa: u64, data: &[u8]) -> Result<(), NotRam> {
        walk::Ram::new(&mut self.0).write_phys(gpa, data)
    }
}

/// The reference: the architecture's answer computed straight from the
/// guest's own tables with the mmu-server's walker (itself checked against
/// a spec oracle), no TLB, no shadow.
pub struct Reference {
    pub mem: Ram,
    pub ctl: GuestCtl,
    pub cpu: CpuModel,
    pub code: Option<u64>,
}

impl Reference {
    fn bitness(&self) -> u32 {
        if self.ctl.efer & efer::LMA != 0 {
            64
        } else if self.ctl.cr0 & cr0::PE != 0 {
            32
        } else {
            16
        }
    }

    pub fn access(&mut self, la: u64, a: Access) -> Outcome {
        match walk(&mut self.mem, &self.ctl, &self.cpu, la, a, true) {
            Ok(t) if t.gpa >= RAM => Outcome::Mmio(t.gpa),
            Ok(t) => Outcome::Ok(t.gpa),
            Err(WalkError::PageFault { error_code }) => Outcome::PageFault {
                error_code,
                cr2: if self.ctl.mode() == PagingMode::Long {
                    la
                } else {
                    la & 0xffff_ffff
                },
            },
            Err(WalkError::NonCanonical) => Outcome::GeneralProtection,
        }
    }

    fn fetch(&mut self, offset: u64) -> Option<Outcome> {
        let la = self.code? + offset;
        match self.access(la, Access::fetch(false)) {
            Outcome::Ok(gpa) => {
                let want = code::at(offset);
                let mut got = [0u8; 4];
                let ok = self.mem.read_phys(gpa, &mut got[..want.len()]).is_ok()
                    && &got[..want.len()] == want;
                (!ok).then_some(Outcome::StrayCode)
            }
            o => Some(o),
        }
    }

    pub fn store(&mut self, la: u64, value: u64, size: u64, user: bool) -> Outcome {
        let offset = match (self.bitness(), size) {
            (64, 8) => code::STORE64,
            (16, _) => code::STORE32_16,
            _ => code::STORE32,
        };
        if !user {
            if let Some(o) = self.fetch(offset) {
                return o;
            }
        }
        match self.access(la, Access::write(user)) {
            Outcome::Ok(gpa) => {
                assert!(self
                    .mem
                    .write_phys(gpa, &value.to_le_bytes()[..size as usize])
                    .is_ok());
                Outcome::Stored
            }
            o => o,
        }
    }

    pub fn mov_to_cr(&mut self, n: u8, value: u64) -> Outcome {
        if let Some(o) = self.fetch(code::MOV_TO_CR + code::cr_slot(n)) {
            return o;
        }
        let code64 = self.bitness() == 64;
        let v = if code64 { value } else { value & 0xffff_ffff };
        let r = match n {
            0 => ctl::mov_to_cr0(&mut self.mem, &self.ctl, &self.cpu, v, code64),
            3 => ctl::mov_to_cr3(&mut self.mem, &self.ctl, &self.cpu, v),
            _ => ctl::mov_to_cr4(&mut self.mem, &self.ctl, &self.cpu, v),
        };
        match r {
            Ok(c) => {
                self.ctl = c;
                Outcome::Done
            }
            Err(_) => Outcome::GeneralProtection,
        }
    }

    pub fn read_cr(&mut self, n: u8) -> Outcome {
        if let Some(o) = self.fetch(code::MOV_FROM_CR + code::cr_slot(n)) {
            return o;
        }
        let v = match n {
            0 => self.ctl.cr0,
            3 => self.ctl.cr3,
            _ => self.ctl.cr4,
        };
        Outcome::Value(if self.bitness() == 64 {
            v
        } else {
            v & 0xffff_ffff
        })
    }

    pub fn invlpg(&mut self) -> Outcome {
        let off = if self.bitness() == 16 {
            code::INVLPG_16
        } else {
            code::INVLPG
        };
        self.fetch(off).unwrap_or(Outcome::Done)
    }

    pub fn write_efer(&mut self, v: u64) -> Outcome {
        if let Some(o) = self.fetch(code::WRMSR) {
            return o;
        }
        match ctl::write_efer(&self.ctl, &self.cpu, v) {
            Ok(c) => {
                self.ctl = c;
                Outcome::Done
            }
            Err(_) => Outcome::GeneralProtection,
        }
    }
}

/// Which paging setup a world starts in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    Long,
    Pae,
    Bits32,
    /// 32-bit tables, paging off (protected mode).
    Bits32Off,
    /// PAE tables, paging off.
    PaeOff,
    /// Paging off in real mode ("paged real mode" on the hardware).
    Real,
}

impl Start {
    pub const ALL: [Start; 6] = [
        Start::Long,
        Start::Pae,
        Start::Bits32,
        Start::Bits32Off,
        Start::PaeOff,
        Start::Real,
    ];
    pub fn table_mode(self) -> PagingMode {
        match self {
            Start::Long => PagingMode::Long,
            Start::Pae | Start::PaeOff => PagingMode::Pae,
            _ => PagingMode::Bits32,
        }
    }
}

/// A random world: several address spaces sharing a kernel direct map of
/// all RAM (global when PGE), random user mappings of every page size,
/// shared page tables, MMIO leaves, reserved bits.
pub struct World {
    pub start: Start,
    pub mem: Vec<u8>,
    pub ctl: GuestCtl,
    pub cr3s: Vec<u64>,
    pub kernel: u64,
    pub user: Vec<u64>,
    /// Page-table frames and whether they belong to the shared kernel part.
    pub tables: Vec<u64>,
    /// Entry indices the builder used, by table frame.
    pub used: Vec<(u64, u64)>,
    pub cpu: CpuModel,
}

impl World {
    pub fn kernel_la(&self, gpa: u64) -> u64 {
        self.kernel + gpa
    }

    pub fn entry_size(&self) -> u64 {
        if self.start.table_mode() == PagingMode::Bits32 {
            4
        } else {
            8
        }
    }

    pub fn canonical(&self, la: u64) -> u64 {
        if self.start.table_mode() == PagingMode::Long {
            ((la << 16).cast_signed() >> 16).cast_unsigned()
        } else {
            la & 0xffff_ffff
        }
    }
}

fn random_flags(r: &mut Rng, mode: PagingMode, leaf: bool) -> u64 {
    let mut f = pte::P;
    if r.chance(5) {
        f = 0;
    }
    if r.chance(if leaf { 60 } else { 90 }) {
        f |= pte::RW;
    }
    if r.chance(if leaf { 75 } else { 90 }) {
        f |= pte::US;
    }
    if r.chance(60) {
        f |= pte::A;
    }
    if leaf && r.chance(50) {
        f |= pte::D;
    }
    if mode != PagingMode::Bits32 && r.chance(if leaf { 25 } else { 8 }) {
        f |= pte::NX;
    }
    if r.chance(10) {
        f |= pte::PWT | pte::PCD;
    }
    if r.chance(4) {
        f |= match mode {
            PagingMode::Bits32 => 0,
            PagingMode::Pae => 1 << 55,
            _ => 1 << 45,
        };
    }
    f
}

fn data_frame(r: &mut Rng) -> u64 {
    if r.chance(4) {
        // Beyond RAM: MMIO.
        return RAM + r.below(16) * 4096;
    }
    DATA.0 + r.below((DATA.1 - DATA.0) / 4096) * 4096
}

/// Builds the world for `start` from `seed`.
pub fn build(start: Start, seed: u64) -> World {
    build_with(start, seed, true)
}

/// Builds the world; without `mmio_large`, large pages always lie in RAM
/// (so that no edit can turn one into a table pointer outside RAM).
pub fn build_with(start: Start, seed: u64, mmio_large: bool) -> World {
    build_inner(start, seed, mmio_large, false)
}

/// Builds the world with, in every space, two densely mapped runs of 24
/// user pages (in the two 2 MiB halves of one 4 MiB region, so both
/// quadrants of a 32-bit page table) whose leaves have random flags:
/// neighbours with A clear, A set and D clear, A and D set, read-only,
/// supervisor, NX, reserved bits, MMIO frames and page-table frames, for
/// PTE prefetch to fill around a fault.
pub fn build_dense(start: Start, seed: u64) -> World {
    build_inner(start, seed, true, true)
}

fn build_inner(start: Start, seed: u64, mmio_large: bool, dense: bool) -> World {
    let mode = start.table_mode();
    let mut r = Rng(seed);
    let mut mem = Ram(vec![0u8; RAM as usize]);
    let mut gt = GuestTables::new(mode, TABLES.0, TABLES.1);
    let nspaces = 2 + r.below(3) as usize;
    let kernel = match mode {
        PagingMode::Long => 0xffff_8000_0000_0000,
        _ => 0xc000_0000,
    };
    let sup = pte::P | pte::RW | pte::A;
    let g = pte::G;
    // The kernel: a direct map of all RAM in a first space, whose kernel
    // tables the other spaces share.
    let mut cr3s = Vec::new();
    let first = gt.new_space(&mut mem);
    let large = mode != PagingMode::Bits32 && r.chance(50);
    let mut a = 0;
    while a < RAM {
        if large {
            gt.map(&mut mem, first, kernel + a, 2, a, sup | pte::D | g, sup);
            a += 2 << 20;
        } else {
            gt.map(&mut mem, first, kernel + a, 1, a, sup | pte::D | g, sup);
            a += 4096;
        }
    }
    cr3s.push(first);
    let kernel_tables: Vec<u64> = gt.frames.clone();
    for i in 1..nspaces {
        let cr3 = if mode == PagingMode::Pae && r.chance(40) {
            // Two PDPTs in one frame.
            cr3s[i - 1] + 32
        } else {
            gt.new_space(&mut mem)
        };
        // Share the kernel's top-level entries.
        match mode {
            PagingMode::Long => {
                let mut e = [0u8; 8];
                mem.read_phys(first + 256 * 8, &mut e).unwrap();
                mem.write_phys((cr3 & !0xfff) + 256 * 8, &e).unwrap();
            }
            PagingMode::Pae => {
                let mut e = [0u8; 8];
                mem.read_phys(first + 3 * 8, &mut e).unwrap();
                mem.write_phys(cr3 + 3 * 8, &e).unwrap();
            }
            _ => {
                let mut e = [0u8; 8];
                mem.read_phys(first + 768 * 4, &mut e).unwrap();
                mem.write_phys(cr3 + 768 * 4, &e).unwrap();
            }
        }
        cr3s.push(cr3);
    }
    // User regions.
    let regions: &[u64] = match mode {
        PagingMode::Long => &[
            0x40_0000,
            0x60_0000,
            0x7f_c000_0000,
            0x80_0000_0000,
            0x4000_0000,
        ],
        _ => &[0x40_0000, 0x80_0000, 0x4000_0000, 0x8000_0000, 0xbfc0_0000],
    };
    // Four pages per region, in both 2 MiB halves (a 32-bit page table
    // is shadowed by two PAE page tables).
    let pages = [0u64, 0x1000, 0x20_0000, 0x20_1000];
    let mut user = Vec::new();
    for &base in regions {
        for p in pages {
            user.push(base + p);
        }
    }
    let mut used = Vec::new();
    let mut shared_pt: Vec<(u64, u64)> = Vec::new();
    for &cr3 in &cr3s {
        for &base in regions {
            let nl = random_flags(&mut r, mode, false) | pte::P;
            let choice = r.below(10);
            if choice < 2 {
                // A large page (PSE pages in 32-bit paging: 4 MiB).
                let level = if mode == PagingMode::Long && r.chance(30) {
                    3
                } else {
                    2
                };
                let size = match (mode, level) {
                    (PagingMode::Bits32, _) => 4 << 20,
                    (_, 2) => 2 << 20,
                    _ => 1 << 30,
                };
                let gpa = if r.chance(80) || !mmio_large {
                    r.below(RAM / size) * size
                } else {
                    RAM.max(size) * 2
                };
                let flags = random_flags(&mut r, mode, true);
                gt.map(&mut mem, cr3, base & !(size - 1), level, gpa, flags, nl);
                if let Some(e) = gt.entry(&mut mem, cr3, base, level, None) {
                    used.push((e.gpa & !0xfff, (e.gpa & 0xfff) / gt.entry_size()));
                }
            } else if choice < 4 && !shared_pt.is_empty() {
                // Share a page table made for another space.
                let (b, t) = shared_pt[r.below(shared_pt.len() as u64) as usize];
                let _ = b;
                gt.link(&mut mem, cr3, base, 2, t, nl);
            } else {
                for p in pages {
                    if r.chance(15) {
                        continue;
                    }
                    let flags = random_flags(&mut r, mode, true);
                    let gpa = data_frame(&mut r);
                    gt.map(&mut mem, cr3, base + p, 1, gpa, flags, nl);
                    if let Some(e) = gt.entry(&mut mem, cr3, base + p, 1, None) {
                        used.push((e.gpa & !0xfff, (e.gpa & 0xfff) / gt.entry_size()));
                        if p == 0 && r.chance(50) {
                            shared_pt.push((base, e.gpa & !0xfff));
                        }
                    }
                    if let Some(e) = gt.entry(&mut mem, cr3, base, 2, None) {
                        used.push((e.gpa & !0xfff, (e.gpa & 0xfff) / gt.entry_size()));
                    }
                }
            }
        }
        if mode != PagingMode::Bits32 {
            for lvl in 3..=gt.top() {
                if let Some(e) = gt.entry(&mut mem, cr3, regions[0], lvl, None) {
                    used.push((e.gpa & !0xfff, (e.gpa & 0xfff) / gt.entry_size()));
                }
            }
        }
    }
    if dense {
        let mut d = Rng(seed ^ 0xde45_e000);
        let base = match mode {
            PagingMode::Long => 0x10_0000_0000,
            _ => 0x2000_0000,
        };
        let table_frames = gt.frames.clone();
        for &cr3 in &cr3s {
            let nl = if d.chance(80) {
                pte::P | pte::RW | pte::US | pte::A
            } else {
                random_flags(&mut d, mode, false) | pte::P
            };
            for half in [0u64, 0x20_0000] {
                for i in 0..24u64 {
                    let la = base + half + i * 4096;
                    let flags = random_flags(&mut d, mode, true);
                    let gpa = if d.chance(8) {
                        table_frames[d.below(table_frames.len() as u64) as usize]
                    } else {
                        data_frame(&mut d)
                    };
                    gt.map(&mut mem, cr3, la, 1, gpa, flags, nl);
                    if let Some(e) = gt.entry(&mut mem, cr3, la, 1, None) {
                        used.push((e.gpa & !0xfff, (e.gpa & 0xfff) / gt.entry_size()));
                    }
                    if cr3 == cr3s[0] {
                        user.push(la);
                    }
                }
            }
        }
    }
    let _ = kernel_tables;
    // The code page is identity-mapped (supervisor, executable) in every
    // space, so that the instructions that turn paging off and on again
    // run at the same address either way.
    for &cr3 in &cr3s {
        gt.map(&mut mem, cr3, CODE_GPA, 1, CODE_GPA, sup, sup);
    }
    for (off, bytes) in code::BYTES {
        mem.write_phys(CODE_GPA + off, bytes).unwrap();
    }
    let ctl = match start {
        Start::Long => GuestCtl {
            cr0: cr0::PE | cr0::PG | cr0::WP | cr0::ET,
            cr3: cr3s[0],
            cr4: cr4::PAE | if r.chance(50) { cr4::PGE } else { 0 },
            efer: efer::LME | efer::LMA | if r.chance(70) { efer::NXE } else { 0 },
            pdptes: [0; 4],
        },
        Start::Pae | Start::PaeOff => GuestCtl {
            cr0: cr0::PE | cr0::ET | cr0::WP | if start == Start::Pae { cr0::PG } else { 0 },
            cr3: cr3s[0],
            cr4: cr4::PAE | if r.chance(50) { cr4::PGE } else { 0 },
            efer: if r.chance(70) { efer::NXE } else { 0 },
            pdptes: [0; 4],
        },
        Start::Bits32 | Start::Bits32Off => GuestCtl {
            cr0: cr0::PE | cr0::ET | cr0::WP | if start == Start::Bits32 { cr0::PG } else { 0 },
            cr3: cr3s[0],
            cr4: cr4::PSE | if r.chance(50) { cr4::PGE } else { 0 },
            efer: 0,
            pdptes: [0; 4],
        },
        Start::Real => GuestCtl {
            cr3: cr3s[0],
            ..GuestCtl::RESET
        },
    };
    let mut ctl = ctl;
    if r.chance(25) {
        ctl.cr0 &= !cr0::WP;
    }
    used.sort_unstable();
    used.dedup();
    World {
        start,
        mem: mem.0,
        ctl,
        cr3s,
        kernel,
        user,
        tables: gt.frames.clone(),
        used,
        cpu: CpuModel::default(),
    }
}

/// One guest operation of a property-test run.
#[derive(Clone, Debug)]
pub enum Op {
    Read {
        addr: Addr,
        user: bool,
    },
    Fetch {
        addr: Addr,
        user: bool,
    },
    Write {
        addr: Addr,
        user: bool,
        value: u64,
    },
    /// A kernel store into a page table through the direct map.
    Edit {
        entry: u16,
        mutation: Mutation,
    },
    /// Change the entry that maps user page `page` in the current space
    /// (`up` levels above its leaf), then access the page (`then`).
    Poke {
        page: u16,
        up: u8,
        mutation: Mutation,
        then: u8,
    },
    Switch(u8),
    Invlpg(Addr),
    ReadCr(u8),
    ToggleWp,
    ToggleNxe,
    TogglePse,
    TogglePge,
    TogglePaging,
}

#[derive(Clone, Copy, Debug)]
pub enum Addr {
    User(u16, u16),
    Kernel(u16, u16),
    Raw(u64),
}

#[derive(Clone, Copy, Debug)]
pub enum Mutation {
    /// Flip one of P, RW, US, A, D, PS, G, NX, or a reserved bit.
    Flip(u8),
    /// Point the entry at another table or data frame.
    Repoint(u16),
    /// Clear the entry.
    Clear,
}

/// What an edit writes, and where.
pub fn edit_target(w: &World, mem: &[u8], entry: u16, m: Mutation) -> (u64, u64) {
    let es = w.entry_size();
    let (frame, idx) = if w.used.is_empty() || entry % 8 == 7 {
        let f = w.tables[entry as usize % w.tables.len()];
        (f, u64::from(entry >> 3) % (4096 / es))
    } else {
        w.used[entry as usize % w.used.len()]
    };
    edit_at(w, mem, frame + idx * es, es, m)
}

/// The entry of `es` bytes at `gpa` after mutation `m`.
pub fn edit_at(w: &World, mem: &[u8], gpa: u64, es: u64, m: Mutation) -> (u64, u64) {
    let mut b = [0u8; 8];
    b[..es as usize].copy_from_slice(&mem[gpa as usize..(gpa + es) as usize]);
    let old = u64::from_le_bytes(b);
    let new = match m {
        Mutation::Flip(bit) => {
            let bits: [u64; 10] = [0, 1, 2, 5, 6, 7, 8, 63, 51, 21];
            let b = bits[bit as usize % bits.len()];
            if es == 4 && b > 31 {
                old ^ 1
            } else {
                old ^ (1 << b)
            }
        }
        Mutation::Repoint(n) => {
            let target = if n % 3 == 0 {
                DATA.0 + u64::from(n) * 4096 % (DATA.1 - DATA.0)
            } else {
                w.tables[n as usize % w.tables.len()]
            };
            let mask = if es == 4 {
                0xffff_f000
            } else {
                0x000f_ffff_ffff_f000
            };
            (old & !mask) | target
        }
        Mutation::Clear => 0,
    };
    (gpa, new)
}

pub fn configs(r: &mut Rng, start: Start) -> (SimConfig, MmuConfig, bool) {
    let budget = 8 + r.below(120) as u32;
    let sim = SimConfig {
        ram_bytes: RAM,
        keep_globals_on_load: false,
        max_tables: if r.chance(30) {
            budget.saturating_sub(2).max(8)
        } else {
            4096
        },
        ..SimConfig::default()
    };
    let mmu = MmuConfig {
        mode: if r.chance(25) {
            MmuMode::Baseline
        } else {
            MmuMode::Shadow
        },
        max_tables: budget,
        decode_assists: r.chance(50),
        global_pages: r.chance(70),
        flood_threshold: 1 + r.below(8) as u32,
        prefetch: [0, 8, 16, 16, 512][r.below(5) as usize],
        // The worlds edit page tables without flushing, which unsync
        // tables would (legally) answer with stale translations.
        unsync: false,
        ..MmuConfig::default()
    };
    let _ = start;
    (sim, mmu, r.chance(60))
}
