//! [`Sim`]: the software platform. It plays the stub (handles, the install
//! check from `kernel_stub::install`, the paging check from
//! `kernel_stub::resume`) and the CPU's MMU: a page walker over the
//! *installed* shadow (or nested) tables, with a TLB.
//!
//! The hardware walker here is written separately from the mmu-server's
//! guest walker, from the manuals ([`crate::hw`]): it walks in whatever
//! mode the state the stub *accepted* selects (paging off, 32-bit, PAE,
//! four- and five-level), honouring every paging control, and in the
//! nested (NPT, EPT) formats. Reading a table at a level (or an entry
//! size) other than the one the stub checked it at is a violation: that
//! is how a validator that accepts too much shows.

use std::collections::HashMap;

use ipc_proto::mmu::{ept, Install, TableFormat, TableHandle, PTE_ADDR_MASK};
use ipc_proto::{PagingState, ResumeFlags};
use kernel_stub::install::{GuestRam, ShadowTables};
use mmu_server::walk::{Access, GuestMemory, NotRam, Ram};

use crate::hw::{canonical, cr4, entry_mode, pf, Controls, Rights};
pub use crate::hw::{HwAccess, HwMode, SimCpu};
use crate::stub::{self, PagingRules};
use mmu_server::{Flush, MmuPlatform, PlatformError};

const P: u64 = 1 << 0;
const RW: u64 = 1 << 1;
const US: u64 = 1 << 2;
const A: u64 = 1 << 5;
const D: u64 = 1 << 6;
const PS: u64 = 1 << 7;
const G: u64 = 1 << 8;
const NX: u64 = 1 << 63;

/// MAXPHYADDR of the simulated host CPU (`SimCpu::ALL`).
pub const HW_PHYS_BITS: u32 = 48;

fn bits(lo: u32, hi: u32) -> u64 {
    let top = if hi >= 63 {
        u64::MAX
    } else {
        (1u64 << (hi + 1)) - 1
    };
    top & !((1u64 << lo) - 1)
}

/// How the simulated platform behaves.
#[derive(Clone, Copy, Debug)]
pub struct SimConfig {
    /// Bytes of guest RAM (a multiple of 4 KiB).
    pub ram_bytes: u64,
    /// Host-physical address of guest-physical 0.
    pub hpa_base: u64,
    /// A paging state loaded with `FLUSH_NON_GLOBAL` keeps global
    /// translations (MOV to CR3 semantics; SVM's TLB_CONTROL 7). When
    /// false, every load flushes everything (VMX without VPID).
    pub keep_globals_on_load: bool,
    /// Most tables the stub hands out (fault injection: smaller than the
    /// server's budget makes `alloc_table` fail).
    pub max_tables: u32,
    /// The entry format of every table (the stub's choice at boot: EPT
    /// for the nested tables of a VMX guest). The nested walker reads
    /// this format; the shadow walker reads x86 entries.
    pub format: TableFormat,
    /// The host CPU: the paging features it implements (the stub's
    /// paging rules are derived from its CPUID, as on hardware).
    pub cpu: SimCpu,
    /// Host-physical address after which the stub hands out table frames
    /// (below 4 GiB, as the native stub's: PAE paging reads CR3\[31:5\]).
    pub table_base: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            ram_bytes: 8 << 20,
            hpa_base: 0x1_0000_0000,
            keep_globals_on_load: true,
            max_tables: ipc_proto::mmu::MAX_SHADOW_TABLES,
            format: TableFormat::X86,
            cpu: SimCpu::ALL,
            table_base: 0x8000_0000,
        }
    }
}

/// A translation the simulated TLB holds (4 KiB granularity), tagged with
/// the PCID it was made under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TlbEntry {
    gpa_page: u64,
    rights: Rights,
    dirty: bool,
    global: bool,
}

/// Why the simulated hardware could not translate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HwFault {
    /// #PF on the shadow tables, with the hardware error code.
    PageFault(u32),
    /// #GP: a non-canonical linear address.
    GeneralProtection,
    /// Nested page fault on guest-physical `gpa` (EXITINFO1 bits).
    NestedFault {
        /// The faulting guest-physical address.
        gpa: u64,
        /// Error code (P, W, U, I/D; bit 33 when during the guest walk).
        info: u64,
    },
}

/// Something the hardware found that the stub's checks should have made
/// impossible. Tests assert it never happens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation(pub String);

/// Counters of the simulated stub.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimCounters {
    /// Entries written.
    pub installs: u64,
    /// Entries refused.
    pub refused: u64,
    /// Tables allocated.
    pub allocs: u64,
    /// Tables freed.
    pub frees: u64,
    /// Full TLB flushes.
    pub flushes: u64,
    /// Paging-state loads.
    pub loads: u64,
    /// Of those, loads with `FLUSH_NON_GLOBAL` (a guest CR3 load alone).
    pub non_global_loads: u64,
    /// TLB hits and misses.
    pub tlb_hits: u64,
    /// TLB misses (hardware walks).
    pub tlb_misses: u64,
    /// Paging states the stub's check refused.
    pub paging_refused: u64,
    /// Paging states the stub accepted whose control registers VM entry
    /// refuses (reserved or inconsistent bits): the guest cannot run.
    pub entry_failures: u64,
    /// Paging states whose PAE PDPTEs VM entry refuses (reserved bits in
    /// the root's first four entries).
    pub pdpte_failures: u64,
}

/// The simulated stub and MMU of one VM.
pub struct Sim {
    /// Guest RAM.
    pub ram: Vec<u8>,
    cfg: SimConfig,
    tables: Box<ShadowTables>,
    rules: PagingRules,
    /// Shadow-table frames by host-physical address.
    frames: HashMap<u64, Box<[u64; 512]>>,
    /// The level each frame was first handed out at (frames are reused
    /// only at their level).
    frame_level: HashMap<u64, u8>,
    /// Frames of live tables (a freed table's frame is not one).
    live_frames: std::collections::HashSet<u64>,
    next_frame: u64,
    live_tables: u32,
    paging: Option<PagingState>,
    /// The mode the loaded state walks in.
    mode: Option<HwMode>,
    /// CR3 as the hardware holds it: the root's frame (and PCID 0). It
    /// stays what was loaded when the server frees that table: the
    /// hardware knows no handles.
    cr3: u64,
    pdpte_regs: [u64; 4],
    nested_root: Option<u64>,
    tlb: HashMap<(u16, u64), TlbEntry>,
    /// PKRU: the guest writes it with WRPKRU, which does not exit.
    pub pkru: u32,
    /// IA32_PKRS.
    pub pkrs: u32,
    /// The stub's counters.
    pub counters: SimCounters,
    /// First violation seen by the hardware walker, if any.
    pub violation: Option<Violation>,
}

impl Sim {
    /// A platform with zeroed guest RAM.
    pub fn new(cfg: SimConfig) -> Self {
        let mut tables = Box::new(ShadowTables::new());
        tables.set_format(cfg.format);
        let cpu = cfg.cpu;
        Self {
            ram: vec![0; cfg.ram_bytes as usize],
            cfg,
            tables,
            rules: stub::rules(&cpu),
            frames: HashMap::new(),
            frame_level: HashMap::new(),
            live_frames: std::collections::HashSet::new(),
            next_frame: cfg.table_base,
            live_tables: 0,
            paging: None,
            mode: None,
            cr3: 0,
            pdpte_regs: [0; 4],
            nested_root: None,
            tlb: HashMap::new(),
            pkru: 0,
            pkrs: 0,
            counters: SimCounters::default(),
            violation: None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SimConfig {
        &self.cfg
    }

    /// The stub's paging rules for this CPU.
    pub fn rules(&self) -> &PagingRules {
        &self.rules
    }

    fn ram_desc(&self) -> GuestRam {
        GuestRam {
            hpa_base: self.cfg.hpa_base,
            bytes: self.cfg.ram_bytes,
        }
    }

    /// The hardware paging state loaded now.
    pub fn paging(&self) -> Option<PagingState> {
        self.paging
    }

    /// The mode the hardware walks in now.
    pub fn hw_mode(&self) -> Option<HwMode> {
        self.mode
    }

    /// Live tables the stub has handed out.
    pub fn live_tables(&self) -> u32 {
        self.live_tables
    }

    /// The level of a live table (what the stub's paging check needs).
    pub fn table_level(&self, h: TableHandle) -> Option<u8> {
        self.tables.get(h).map(|(_, l)| l)
    }

    fn violate(&mut self, what: String) {
        if self.violation.is_none() {
            self.violation = Some(Violation(what));
        }
    }

    /// Loads a hardware paging state the way the stub applies
    /// `SET_PAGING` alone: every translation is flushed.
    pub fn load_paging(&mut self, ps: &PagingState) -> Result<(), String> {
        self.load_paging_flags(ps, ResumeFlags::SET_PAGING)
    }

    /// Loads a hardware paging state the way the stub applies
    /// `SET_PAGING`: checked with `kernel_stub::resume::validate_paging`;
    /// then VM entry's own checks ([`entry_mode`]): a state the stub
    /// accepts but the CPU refuses fails (the guest does not run; counted
    /// in `entry_failures`). In PAE mode the four PDPTEs are read now (as
    /// a CR3 load does) from CR3\[31:5\] and must not have reserved bits,
    /// or the entry fails. With `FLUSH_NON_GLOBAL` (and
    /// `keep_globals_on_load`) global translations stay in the TLB, else
    /// the TLB is flushed.
    pub fn load_paging_flags(
        &mut self,
        ps: &PagingState,
        flags: ResumeFlags,
    ) -> Result<(), String> {
        let tables = &self.tables;
        let checked = stub::validate_paging(ps, &self.rules, |h| tables.get(h).map(|(_, l)| l));
        if let Err(e) = checked {
            self.counters.paging_refused += 1;
            return Err(format!(
                "the stub refused the paging state: {}",
                e.describe()
            ));
        }
        let Some((root_hpa, _)) = self.tables.get(ps.root) else {
            // The check let a dead handle through: the stub would load
            // nothing sensible; the model refuses it rather than guess.
            self.violate(format!("the stub accepted dead root handle {}", ps.root));
            return Err("the stub accepted a dead root".into());
        };
        let mode = match entry_mode(&self.cfg.cpu, ps) {
            Ok(m) => m,
            Err(e) => {
                self.counters.entry_failures += 1;
                return Err(e);
            }
        };
        if mode == HwMode::Pae {
            // CR3[31:5] locates the PDPT (SDM vol. 3A, 4.4.1).
            let pdpt = root_hpa & 0xffff_ffe0;
            let rsvd = bits(1, 2) | bits(5, 8) | bits(self.cfg.cpu.max_phys_bits, 63);
            let mut regs = [0; 4];
            for (i, r) in regs.iter_mut().enumerate() {
                let Some(e) = self.read_entry(pdpt + 8 * i as u64, 3, true) else {
                    self.counters.pdpte_failures += 1;
                    return Err(format!("VM entry failed: PDPTE {i} unreadable"));
                };
                if e & P != 0 && e & rsvd != 0 {
                    self.counters.pdpte_failures += 1;
                    return Err(format!(
                        "VMRUN failed: shadow PDPTE {i} = {e:#x} has reserved bits"
                    ));
                }
                *r = e;
            }
            self.pdpte_regs = regs;
        }
        if self.cfg.keep_globals_on_load && flags.contains(ResumeFlags::FLUSH_NON_GLOBAL) {
            self.tlb.retain(|_, e| e.global);
        } else {
            self.tlb.clear();
        }
        self.paging = Some(*ps);
        self.mode = Some(mode);
        self.cr3 = root_hpa;
        self.counters.loads += 1;
        if flags.contains(ResumeFlags::FLUSH_NON_GLOBAL) {
            self.counters.non_global_loads += 1;
        }
        Ok(())
    }

    /// Reads the 8-byte (or, `!wide`, 4-byte) entry at host-physical
    /// `hpa` as part of a walk that reads that table at `level`, the way
    /// the hardware does: whatever memory is there. Reading anything but
    /// a shadow table checked at that level with 8-byte entries is a
    /// violation (the stub's install check never saw those entries as
    /// such); guest RAM is read as the guest wrote it; other host memory
    /// is not modelled (`None`).
    fn read_entry(&mut self, hpa: u64, level: u8, wide: bool) -> Option<u64> {
        let page = hpa & !0xfff;
        let off = (hpa & 0xfff) as usize;
        if let Some(t) = self.frames.get(&page) {
            let q = t[off / 8];
            let e = if wide {
                q
            } else {
                (q >> (8 * (off % 8))) & 0xffff_ffff
            };
            let checked = self.frame_level.get(&page).copied().unwrap_or(0);
            if !wide || checked != level {
                let how = if wide {
                    "8-byte"
                } else {
                    "4-byte (32-bit paging)"
                };
                self.violate(format!(
                    "the hardware read table frame {page:#x}, checked as level {checked}, as a level-{level} table of {how} entries (entry {e:#x})"
                ));
            }
            return Some(e);
        }
        let base = self.cfg.hpa_base;
        if hpa >= base && hpa < base + self.cfg.ram_bytes {
            let gpa = (hpa - base) as usize;
            let n = if wide { 8 } else { 4 };
            let mut b = [0u8; 8];
            b[..n].copy_from_slice(&self.ram[gpa..gpa + n]);
            let e = u64::from_le_bytes(b);
            self.violate(format!(
                "the hardware walked a level-{level} table in guest RAM at host-physical {hpa:#x}: the guest writes its entries (entry {e:#x})"
            ));
            return Some(e);
        }
        self.violate(format!(
            "the hardware walked into {hpa:#x}, not a shadow table"
        ));
        None
    }

    fn set_bits(&mut self, hpa: u64, b: u64) {
        if let Some(t) = self.frames.get_mut(&(hpa & !0xfff)) {
            t[(hpa & 0xfff) as usize / 8] |= b;
        }
    }

    /// Converts a leaf's host-physical page to guest-physical, checking
    /// that it lies in guest RAM.
    fn leaf_gpa(&mut self, hpa: u64, size: u64) -> Option<u64> {
        let base = self.cfg.hpa_base;
        let inside = hpa >= base
            && hpa
                .checked_add(size)
                .is_some_and(|end| end <= base + self.cfg.ram_bytes);
        if !inside {
            self.violate(format!(
                "a leaf maps host-physical {hpa:#x} (+{size:#x}), outside guest RAM"
            ));
            return None;
        }
        Some(hpa - base)
    }

    fn pcid(&self) -> u16 {
        match self.paging {
            Some(ps) if ps.cr4 & cr4::PCIDE != 0 => (self.cr3 & 0xfff) as u16,
            _ => 0,
        }
    }

    /// Translates `la` for `access` (an explicit access with RFLAGS.AC
    /// clear) the way the CPU does in shadow mode; see
    /// [`Sim::translate_hw`].
    pub fn translate(&mut self, la: u64, access: Access) -> Result<u64, HwFault> {
        self.translate_hw(la, access.into())
    }

    /// Translates `la` for `access` the way the CPU does in shadow mode,
    /// in the mode the loaded state selects ([`HwMode`]): the TLB first
    /// (entries of the current PCID, and global ones), then a walk of the
    /// installed tables from CR3 (setting A/D in them). Errors are the
    /// #PF (or #GP) the hardware raises.
    pub fn translate_hw(&mut self, la: u64, access: HwAccess) -> Result<u64, HwFault> {
        let (Some(ps), Some(mode)) = (self.paging, self.mode) else {
            return Err(HwFault::PageFault(0));
        };
        let ctl = Controls::of(&ps, mode, self.pkru, self.pkrs);
        let ec_base = ctl.base_error(access);
        if mode == HwMode::Off {
            // Paging off under shadow paging: the linear address is a
            // host-physical one.
            let hpa = la & 0xffff_ffff;
            return match self.leaf_gpa(hpa, 1) {
                Some(gpa) => Ok(gpa),
                None => Err(HwFault::PageFault(ec_base | pf::P | pf::RSVD)),
            };
        }
        let la = if mode.long() { la } else { la & 0xffff_ffff };
        if mode.long() && !canonical(la, mode) {
            return Err(HwFault::GeneralProtection);
        }
        let vpn = la >> 12;
        let key = (self.pcid(), vpn);
        let tlb_hit = self
            .tlb
            .get(&key)
            .or_else(|| self.tlb.get(&(0, vpn)).filter(|e| e.global))
            .copied();
        if let Some(e) = tlb_hit {
            if ctl.check(e.rights, access).is_ok() && (!access.write || e.dirty) {
                self.counters.tlb_hits += 1;
                return Ok((e.gpa_page << 12) | (la & 0xfff));
            }
            // A TLB entry that does not allow the access is dropped and the
            // tables are walked again (what AMD does; Intel faults and drops).
            self.tlb.remove(&key);
        }
        self.counters.tlb_misses += 1;
        let max_phys = self.cfg.cpu.max_phys_bits;
        let nx_rsvd = if ctl.nx { 0 } else { NX };
        let mut rights = Rights {
            writable: true,
            user: true,
            exec: true,
            pkey: 0,
        };
        let wide = mode.wide();
        let (mut level, mut table): (u8, u64) = match mode {
            HwMode::Long5 => (5, self.cr3 & PTE_ADDR_MASK),
            HwMode::Long4 => (4, self.cr3 & PTE_ADDR_MASK),
            HwMode::Pae => {
                let e = self.pdpte_regs[((la >> 30) & 3) as usize];
                if e & P == 0 {
                    return Err(HwFault::PageFault(ec_base));
                }
                (2, e & bits(12, max_phys - 1))
            }
            HwMode::Bits32 => (2, self.cr3 & 0xffff_f000),
            HwMode::Off => unreachable!("handled above"),
        };
        loop {
            let shift = if wide {
                12 + 9 * u32::from(level - 1)
            } else {
                12 + 10 * u32::from(level - 1)
            };
            let i = (la >> shift) & if wide { 511 } else { 1023 };
            let at = table + i * if wide { 8 } else { 4 };
            let Some(e) = self.read_entry(at, level, wide) else {
                return Err(HwFault::PageFault(ec_base | pf::P | pf::RSVD));
            };
            if e & P == 0 {
                return Err(HwFault::PageFault(ec_base));
            }
            // Bit 7: PS at levels 2 and 3 (3 only with 1 GiB pages) in
            // PAE and IA-32e paging, at level 2 with CR4.PSE in 32-bit
            // paging; reserved at levels 4 and 5; PAT at level 1.
            let large = e & PS != 0
                && match mode {
                    HwMode::Bits32 => level == 2 && ps.cr4 & cr4::PSE != 0,
                    _ => level == 2 || (level == 3 && self.cfg.cpu.gb_pages),
                };
            let mut rsvd = match mode {
                // PSE-36: bits 20:13 hold physical bits 39:32.
                HwMode::Bits32 if large => bits(13 + (max_phys.min(40) - 32), 21),
                HwMode::Bits32 => 0,
                HwMode::Pae => bits(max_phys, 62) | nx_rsvd,
                _ => bits(max_phys, 51) | nx_rsvd,
            };
            if mode.long() && (level >= 4 || (level == 3 && !self.cfg.cpu.gb_pages)) {
                rsvd |= PS;
            }
            if large && wide {
                rsvd |= bits(13, shift - 1);
            }
            if e & rsvd != 0 {
                return Err(HwFault::PageFault(ec_base | pf::P | pf::RSVD));
            }
            rights.writable &= e & RW != 0;
            rights.user &= e & US != 0;
            rights.exec &= !(ctl.nx && e & NX != 0);
            if level == 1 || large {
                if mode.long() {
                    rights.pkey = ((e >> 59) & 0xf) as u8;
                }
                if let Err(ec) = ctl.check(rights, access) {
                    return Err(HwFault::PageFault(ec));
                }
                let set = A | if access.write { D } else { 0 };
                self.set_bits(at, set);
                let size = 1u64 << shift;
                let page = if wide {
                    (e & bits(12, max_phys - 1)) & !(size - 1)
                } else if large {
                    // PSE-36: PDE bits 20:13 are physical bits 39:32.
                    (e & 0xffc0_0000) | ((e >> 13) & 0xff) << 32
                } else {
                    e & 0xffff_f000
                };
                let Some(gpa_base) = self.leaf_gpa(page, size) else {
                    return Err(HwFault::PageFault(ec_base | pf::P | pf::RSVD));
                };
                let gpa = gpa_base + (la & (size - 1));
                self.tlb.insert(
                    key,
                    TlbEntry {
                        gpa_page: gpa >> 12,
                        rights,
                        dirty: e & D != 0 || access.write,
                        global: e & G != 0 && ps.cr4 & cr4::PGE != 0,
                    },
                );
                return Ok(gpa);
            }
            self.set_bits(at, A);
            table = if wide {
                e & bits(12, max_phys - 1)
            } else {
                e & 0xffff_f000
            };
            level -= 1;
        }
    }

    /// Nested mode: translates a guest-physical address through the
    /// nested tables (every access is a user access for NPT; EPT needs
    /// read, and write for a write), in the configured format.
    pub fn translate_nested(&mut self, gpa: u64, write: bool) -> Result<u64, HwFault> {
        let info = |p: bool| (if p { 1 } else { 0 }) | (if write { 2 } else { 0 }) | 4;
        let Some(mut table) = self.nested_root else {
            return Err(HwFault::NestedFault {
                gpa,
                info: info(false),
            });
        };
        let mut level = 4u32;
        loop {
            let i = (gpa >> (12 + 9 * (level - 1))) & 511;
            let Some(e) = self.read_entry(table + 8 * i, level as u8, true) else {
                return Err(HwFault::NestedFault {
                    gpa,
                    info: info(true),
                });
            };
            if !self.cfg.format.present(e) {
                return Err(HwFault::NestedFault {
                    gpa,
                    info: info(false),
                });
            }
            let allowed = match self.cfg.format {
                TableFormat::X86 => e & US != 0 && (!write || e & RW != 0),
                TableFormat::Ept => e & ept::READ != 0 && (!write || e & ept::WRITE != 0),
            };
            if !allowed {
                return Err(HwFault::NestedFault {
                    gpa,
                    info: info(true),
                });
            }
            if level == 1 || (e & PS != 0 && level <= 3) {
                let size = 1u64 << (12 + 9 * (level - 1));
                let page = (e & PTE_ADDR_MASK) & !(size - 1);
                let Some(base) = self.leaf_gpa(page, size) else {
                    return Err(HwFault::NestedFault {
                        gpa,
                        info: info(true),
                    });
                };
                return Ok(base + (gpa & (size - 1)));
            }
            table = e & PTE_ADDR_MASK;
            level -= 1;
        }
    }

    /// Checks what the stub's install check promises, over every table
    /// frame ever handed out (live or freed): a present leaf maps only
    /// guest RAM, a present non-leaf names a table frame one level down,
    /// PS is never set at level 4.
    pub fn check_isolation(&self) -> Result<(), Violation> {
        let base = self.cfg.hpa_base;
        let end = base + self.cfg.ram_bytes;
        for (&frame, t) in &self.frames {
            let level = self.frame_level[&frame];
            for (i, &e) in t.iter().enumerate() {
                if !self.cfg.format.present(e) {
                    continue;
                }
                let at = || format!("frame {frame:#x} level {level} entry {i} = {e:#x}");
                if level == 4 && e & PS != 0 {
                    return Err(Violation(format!("{}: PS at level 4", at())));
                }
                let leaf = level == 1 || ((level == 2 || level == 3) && e & PS != 0);
                let addr = e & PTE_ADDR_MASK;
                if leaf {
                    let size = 1u64 << (12 + 9 * (u32::from(level) - 1));
                    let page = addr & !(size - 1);
                    if page < base || page + size > end {
                        return Err(Violation(format!("{}: leaf outside guest RAM", at())));
                    }
                } else if self.frame_level.get(&addr) != Some(&(level - 1)) {
                    return Err(Violation(format!(
                        "{}: non-leaf does not name a table one level down",
                        at()
                    )));
                }
            }
        }
        Ok(())
    }

    /// Flushes the whole TLB (for tests).
    pub fn flush_all(&mut self) {
        self.tlb.clear();
    }
}

impl GuestMemory for Sim {
    fn ram_bytes(&self) -> u64 {
        self.ram.len() as u64
    }

    fn read_phys(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), NotRam> {
        Ram::new(&mut self.ram).read_phys(gpa, buf)
    }

    fn write_phys(&mut self, gpa: u64, data: &[u8]) -> Result<(), NotRam> {
        Ram::new(&mut self.ram).write_phys(gpa, data)
    }
}

impl MmuPlatform for Sim {
    fn guest_ram_bytes(&self) -> u64 {
        self.cfg.ram_bytes
    }

    fn alloc_table(&mut self, level: u8) -> Result<TableHandle, PlatformError> {
        if self.live_tables >= self.cfg.max_tables {
            return Err(PlatformError::OutOfTables);
        }
        let next = &mut self.next_frame;
        let (h, frame) = self
            .tables
            .alloc(level, || {
                *next += 0x1000;
                Some(*next)
            })
            .map_err(|_| PlatformError::OutOfTables)?;
        // The stub zeroes a table it hands out.
        self.frames.insert(frame, Box::new([0; 512]));
        self.live_frames.insert(frame);
        let old = self.frame_level.insert(frame, level);
        if old.is_some_and(|l| l != level) {
            self.violate(format!("frame {frame:#x} reused at level {level}"));
        }
        self.live_tables += 1;
        self.counters.allocs += 1;
        Ok(h)
    }

    fn free_table(&mut self, table: TableHandle) -> Result<(), PlatformError> {
        if let Some((frame, _)) = self.tables.get(table) {
            self.live_frames.remove(&frame);
        }
        self.tables
            .free(table)
            .map_err(|_| PlatformError::UnknownTable)?;
        self.live_tables -= 1;
        self.counters.frees += 1;
        Ok(())
    }

    fn install(&mut self, batch: &[Install]) -> Result<(), PlatformError> {
        let ram = self.ram_desc();
        for (index, ins) in batch.iter().enumerate() {
            match self.tables.check(ins, ram) {
                Ok((frame, i, entry)) => {
                    if let Some(t) = self.frames.get_mut(&frame) {
                        t[i] = entry;
                    }
                    self.counters.installs += 1;
                }
                Err(error) => {
                    self.counters.refused += 1;
                    return Err(PlatformError::Refused { index, error });
                }
            }
        }
        Ok(())
    }

    /// Loads the root the way the stub applies `SET_NESTED_ROOT`: checked
    /// with `kernel_stub::resume::validate_nested_root`; a refused root
    /// leaves the old one (none at first: every access faults).
    fn load_nested(&mut self, root: TableHandle) {
        let tables = &self.tables;
        let state = PagingState {
            root,
            ..PagingState::default()
        };
        if kernel_stub::resume::validate_nested_root(&state, |h| tables.get(h).map(|(_, l)| l))
            .is_err()
        {
            self.counters.refused += 1;
            return;
        }
        self.nested_root = self.tables.get(root).map(|(hpa, _)| hpa);
        self.tlb.clear();
    }

    fn flush_tlb(&mut self, what: Flush) {
        match what {
            Flush::All => {
                self.counters.flushes += 1;
                self.tlb.clear();
            }
            Flush::Page(la) => {
                // Every PCID's entry for the page (INVLPG drops the
                // current PCID's and global ones; dropping more is allowed).
                self.tlb.retain(|&(_, vpn), _| vpn != la >> 12);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ins(table: TableHandle, level: u8, index: u16, entry: u64) -> Install {
        Install {
            table,
            index,
            level,
            reserved: 0,
            entry,
        }
    }

    #[test]
    fn the_hardware_walks_installed_four_level_tables() {
        let mut s = Sim::new(SimConfig::default());
        let l4 = s.alloc_table(4).unwrap();
        let l3 = s.alloc_table(3).unwrap();
        let l2 = s.alloc_table(2).unwrap();
        let l1 = s.alloc_table(1).unwrap();
        let nl = P | RW | US;
        s.install(&[
            ins(l4, 4, 0, (u64::from(l3) << 12) | nl),
            ins(l3, 3, 0, (u64::from(l2) << 12) | nl),
            ins(l2, 2, 0, (u64::from(l1) << 12) | nl),
            ins(l1, 1, 3, 0x5000 | P | US),
            ins(l2, 2, 1, (1 << 21) | P | RW | PS),
        ])
        .unwrap();
        s.load_paging(&PagingState {
            cr0: 0x8001_0001,
            cr4: 1 << 5,
            efer: crate::hw::efer::LME | crate::hw::efer::LMA,
            root: l4,
            flags: 0,
        })
        .unwrap();
        assert_eq!(s.translate(0x3123, Access::read(true)), Ok(0x5123));
        assert_eq!(
            s.translate(0x3123, Access::write(true)),
            Err(HwFault::PageFault(pf::P | pf::W | pf::U))
        );
        assert_eq!(s.translate(0x20_0042, Access::write(false)), Ok(0x20_0042));
        assert_eq!(
            s.translate(0x4000, Access::read(false)),
            Err(HwFault::PageFault(0))
        );
        assert!(s.violation.is_none());
        // A refused install leaves the tables as they were.
        let r = s.install(&[ins(l1, 1, 4, (16 << 20) | P)]);
        assert!(matches!(r, Err(PlatformError::Refused { index: 0, .. })));
    }

    #[test]
    fn pae_pdptes_are_loaded_with_the_root_and_checked() {
        let mut s = Sim::new(SimConfig::default());
        let l3 = s.alloc_table(3).unwrap();
        let l2 = s.alloc_table(2).unwrap();
        let ps = PagingState {
            cr0: 0x8001_0001,
            cr4: 1 << 5,
            efer: 0,
            root: l3,
            flags: 0,
        };
        s.install(&[ins(l3, 3, 0, (u64::from(l2) << 12) | P | RW)])
            .unwrap();
        assert!(s.load_paging(&ps).unwrap_err().contains("reserved"));
        s.install(&[ins(l3, 3, 0, (u64::from(l2) << 12) | P)])
            .unwrap();
        s.load_paging(&ps).unwrap();
        s.install(&[ins(l2, 2, 0, P | RW | PS)]).unwrap();
        assert_eq!(s.translate(0x1000, Access::write(false)), Ok(0x1000));
        // Not in the PDPTE registers until the next load.
        s.install(&[ins(l3, 3, 1, (u64::from(l2) << 12) | P)])
            .unwrap();
        assert_eq!(
            s.translate(0x4000_0000, Access::read(false)),
            Err(HwFault::PageFault(0))
        );
        s.load_paging(&ps).unwrap();
        assert_eq!(s.translate(0x4000_0000, Access::read(false)), Ok(0));
    }
}
