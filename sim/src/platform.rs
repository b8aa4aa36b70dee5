//! [`Sim`]: the software platform. It plays the stub (handles, the install
//! check from `kernel_stub::install`, the paging check from
//! `kernel_stub::resume`) and the CPU's MMU: a page walker over the
//! *installed* shadow (or nested) tables, with a TLB.
//!
//! The hardware walker here is written separately from the mmu-server's
//! guest walker, from the manuals, for the two formats the hardware uses
//! in shadow mode (PAE and four-level) and the nested (NPT) format.

use std::collections::HashMap;

use ipc_proto::mmu::{ept, Install, TableFormat, TableHandle, PTE_ADDR_MASK};
use ipc_proto::{PagingState, ResumeFlags};
use kernel_stub::install::{GuestRam, ShadowTables};
use mmu_server::walk::{pf, Access, GuestMemory};
use mmu_server::{Flush, MmuPlatform, PlatformError};

const P: u64 = 1 << 0;
const RW: u64 = 1 << 1;
const US: u64 = 1 << 2;
const A: u64 = 1 << 5;
const D: u64 = 1 << 6;
const PS: u64 = 1 << 7;
const G: u64 = 1 << 8;
const NX: u64 = 1 << 63;
const CR0_WP: u64 = 1 << 16;
const CR4_PGE: u64 = 1 << 7;
const EFER_LME: u64 = 1 << 8;
const EFER_NXE: u64 = 1 << 11;

/// MAXPHYADDR of the simulated host CPU.
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
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            ram_bytes: 8 << 20,
            hpa_base: 0x1_0000_0000,
            keep_globals_on_load: true,
            max_tables: ipc_proto::mmu::MAX_SHADOW_TABLES,
            format: TableFormat::X86,
        }
    }
}

/// A translation the simulated TLB holds (4 KiB granularity).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TlbEntry {
    gpa_page: u64,
    writable: bool,
    user: bool,
    exec: bool,
    dirty: bool,
    global: bool,
}

/// Why the simulated hardware could not translate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HwFault {
    /// #PF on the shadow tables, with the hardware error code.
    PageFault(u32),
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
}

/// The simulated stub and MMU of one VM.
pub struct Sim {
    /// Guest RAM.
    pub ram: Vec<u8>,
    cfg: SimConfig,
    tables: Box<ShadowTables>,
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
    pdpte_regs: [u64; 4],
    nested_root: Option<u64>,
    tlb: HashMap<u64, TlbEntry>,
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
        Self {
            ram: vec![0; cfg.ram_bytes as usize],
            cfg,
            tables,
            frames: HashMap::new(),
            frame_level: HashMap::new(),
            live_frames: std::collections::HashSet::new(),
            next_frame: 0x100_0000_0000,
            live_tables: 0,
            paging: None,
            pdpte_regs: [0; 4],
            nested_root: None,
            tlb: HashMap::new(),
            counters: SimCounters::default(),
            violation: None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SimConfig {
        &self.cfg
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
    /// in PAE format the four PDPTEs are read from the root now (as a CR3
    /// load does) and must not have reserved bits, or the entry fails.
    /// With `FLUSH_NON_GLOBAL` (and `keep_globals_on_load`) global
    /// translations stay in the TLB, else the TLB is flushed.
    pub fn load_paging_flags(
        &mut self,
        ps: &PagingState,
        flags: ResumeFlags,
    ) -> Result<(), String> {
        let tables = &self.tables;
        kernel_stub::resume::validate_paging(ps, |h| tables.get(h).map(|(_, l)| l))
            .map_err(|e| format!("the stub refused the paging state: {}", e.describe()))?;
        let (root_hpa, _) = self.tables.get(ps.root).expect("validated");
        if ps.efer & EFER_LME == 0 {
            let root = &self.frames[&root_hpa];
            let rsvd = bits(1, 2) | bits(5, 8) | bits(HW_PHYS_BITS, 63);
            for i in 0..4 {
                if root[i] & P != 0 && root[i] & rsvd != 0 {
                    return Err(format!(
                        "VMRUN failed: shadow PDPTE {i} = {:#x} has reserved bits",
                        root[i]
                    ));
                }
                self.pdpte_regs[i] = root[i];
            }
        }
        if self.cfg.keep_globals_on_load && flags.contains(ResumeFlags::FLUSH_NON_GLOBAL) {
            self.tlb.retain(|_, e| e.global);
        } else {
            self.tlb.clear();
        }
        self.paging = Some(*ps);
        self.counters.loads += 1;
        if flags.contains(ResumeFlags::FLUSH_NON_GLOBAL) {
            self.counters.non_global_loads += 1;
        }
        Ok(())
    }

    /// Reads entry `i` of the table at `hpa`; `None` when `hpa` is not a
    /// shadow frame (a violation: the stub only lets non-leaves name
    /// shadow frames).
    fn entry(&mut self, hpa: u64, i: u64) -> Option<u64> {
        let e = self.frames.get(&hpa).map(|t| t[i as usize]);
        if e.is_none() {
            self.violate(format!(
                "the hardware walked into {hpa:#x}, not a shadow table"
            ));
        }
        e
    }

    fn set_bits(&mut self, hpa: u64, i: u64, b: u64) {
        if let Some(t) = self.frames.get_mut(&hpa) {
            t[i as usize] |= b;
        }
    }

    /// Converts a leaf's host-physical page to guest-physical, checking
    /// that it lies in guest RAM.
    fn leaf_gpa(&mut self, hpa: u64, size: u64) -> Option<u64> {
        let base = self.cfg.hpa_base;
        if hpa < base || hpa + size > base + self.cfg.ram_bytes {
            self.violate(format!(
                "a leaf maps host-physical {hpa:#x} (+{size:#x}), outside guest RAM"
            ));
            return None;
        }
        Some(hpa - base)
    }

    /// Translates `la` for `access` the way the CPU does in shadow mode:
    /// the TLB first, then a walk of the installed tables (setting A/D in
    /// them). Errors are the #PF the hardware raises.
    pub fn translate(&mut self, la: u64, access: Access) -> Result<u64, HwFault> {
        let Some(ps) = self.paging else {
            return Err(HwFault::PageFault(0));
        };
        let vpn = la >> 12;
        if let Some(e) = self.tlb.get(&vpn).copied() {
            let wp = ps.cr0 & CR0_WP != 0;
            let ok = (!access.user || e.user)
                && (!access.write || ((e.writable || (!wp && !access.user)) && e.dirty))
                && (!access.fetch || e.exec);
            if ok {
                self.counters.tlb_hits += 1;
                return Ok((e.gpa_page << 12) | (la & 0xfff));
            }
            // A TLB entry that does not allow the access is dropped and the
            // tables are walked again (what AMD does; Intel faults and drops).
            self.tlb.remove(&vpn);
        }
        self.counters.tlb_misses += 1;
        let long = ps.efer & EFER_LME != 0;
        let nxe = ps.efer & EFER_NXE != 0;
        let wp = ps.cr0 & CR0_WP != 0;
        let nx_bit = if nxe { 0 } else { NX };
        let ec_base = {
            let mut ec = 0;
            if access.write {
                ec |= pf::W;
            }
            if access.user {
                ec |= pf::U;
            }
            if access.fetch && nxe {
                ec |= pf::ID;
            }
            ec
        };
        let (mut w, mut u, mut x) = (true, true, true);
        let (mut level, mut table) = if long {
            if !mmu_server::walk::is_canonical(la) {
                return Err(HwFault::PageFault(ec_base));
            }
            let (root, _) = self.tables.get(ps.root).expect("loaded root is live");
            (4u32, root)
        } else {
            let e = self.pdpte_regs[((la >> 30) & 3) as usize];
            if e & P == 0 {
                return Err(HwFault::PageFault(ec_base));
            }
            (2u32, e & PTE_ADDR_MASK)
        };
        loop {
            let i = (la >> (12 + 9 * (level - 1))) & 511;
            let Some(e) = self.entry(table, i) else {
                return Err(HwFault::PageFault(ec_base | pf::P | pf::RSVD));
            };
            if e & P == 0 {
                return Err(HwFault::PageFault(ec_base));
            }
            let ps_bit = e & PS != 0 && (level == 2 || level == 3);
            let mut rsvd = if long {
                bits(HW_PHYS_BITS, 51) | nx_bit
            } else {
                bits(HW_PHYS_BITS, 62) | nx_bit
            };
            if level == 4 {
                rsvd |= PS;
            }
            if ps_bit {
                rsvd |= bits(13, 12 + 9 * (level - 1) - 1);
            }
            if e & rsvd != 0 {
                return Err(HwFault::PageFault(ec_base | pf::P | pf::RSVD));
            }
            w &= e & RW != 0;
            u &= e & US != 0;
            x &= !(nxe && e & NX != 0);
            if level == 1 || ps_bit {
                let user_ok = !access.user || u;
                let write_ok = !access.write || w || (!access.user && !wp);
                let fetch_ok = !access.fetch || x;
                if !(user_ok && write_ok && fetch_ok) {
                    return Err(HwFault::PageFault(ec_base | pf::P));
                }
                let set = A | if access.write { D } else { 0 };
                self.set_bits(table, i, set);
                let size = 1u64 << (12 + 9 * (level - 1));
                let page = (e & PTE_ADDR_MASK) & !(size - 1);
                let Some(gpa_base) = self.leaf_gpa(page, size) else {
                    return Err(HwFault::PageFault(ec_base | pf::P | pf::RSVD));
                };
                let gpa = gpa_base + (la & (size - 1));
                self.tlb.insert(
                    vpn,
                    TlbEntry {
                        gpa_page: gpa >> 12,
                        writable: w,
                        user: u,
                        exec: x,
                        dirty: e & D != 0 || access.write,
                        global: e & G != 0 && ps.cr4 & CR4_PGE != 0,
                    },
                );
                return Ok(gpa);
            }
            self.set_bits(table, i, A);
            table = e & PTE_ADDR_MASK;
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
            let Some(e) = self.entry(table, i) else {
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
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> bool {
        let Some(end) = gpa.checked_add(buf.len() as u64) else {
            return false;
        };
        if end > self.ram.len() as u64 {
            return false;
        }
        buf.copy_from_slice(&self.ram[gpa as usize..end as usize]);
        true
    }

    fn write(&mut self, gpa: u64, data: &[u8]) -> bool {
        let Some(end) = gpa.checked_add(data.len() as u64) else {
            return false;
        };
        if end > self.ram.len() as u64 {
            return false;
        }
        self.ram[gpa as usize..end as usize].copy_from_slice(data);
        true
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
                    self.frames.get_mut(&frame).expect("live table frame")[i] = entry;
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
                self.tlb.remove(&(la >> 12));
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
            efer: EFER_LME | (1 << 10),
            root: l4,
            reserved: 0,
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
            reserved: 0,
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
