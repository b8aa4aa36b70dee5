//! The guest page-table walker: the reference for what the hardware would
//! do with the guest's own tables, in every paging mode.
//!
//! - Paging off: linear = physical (32 bits), everything allowed.
//! - 32-bit paging: two levels of 4-byte entries; 4 MiB pages when
//!   CR4.PSE = 1 (PSE-36: bits 20:13 of the PDE are physical bits 39:32).
//! - PAE paging: the four PDPTE registers ([`GuestCtl::pdptes`], loaded at
//!   CR3 load), then two levels of 8-byte entries; 2 MiB pages. With
//!   [`CpuModel::pdptes_on_walk`] (AMD with nested paging) the PDPTE is
//!   read from the PDPT in memory by each walk instead, and a present one
//!   with a reserved bit gives #PF with P and RSVD (no #GP at MOV CR3).
//! - Four-level paging: 2 MiB and 1 GiB pages; non-canonical addresses
//!   are refused before any table is read.
//!
//! Permissions (Intel SDM vol. 3, 4.6; AMD APM vol. 2, 5.6): U/S and R/W are
//! ANDed over the levels, NX ORed (when EFER.NXE and PAE/long paging);
//! supervisor writes ignore R/W when CR0.WP = 0. SMEP, SMAP and protection
//! keys are not modelled (the mmu-server refuses the CR4 bits).
//!
//! Reserved bits (SDM vol. 3, tables 4-5 to 4-20): physical-address bits
//! at and above MAXPHYADDR; XD when NX is not enabled; bits 62:52 in PAE
//! entries; PS in a PML4E; PS in a PDPTE without 1 GiB pages; the low
//! address bits of large pages (bit 21 and the PSE-36 bits beyond
//! MAXPHYADDR for 4 MiB pages). A present entry with a reserved bit set
//! gives #PF with P and RSVD. AMD additionally calls PML4E bit 8 MBZ; this
//! walker follows Intel and QEMU and ignores it.
//!
//! Accessed and dirty bits, as QEMU's TCG walker sets them: A on each
//! non-leaf entry as the walk passes it (so a walk that faults lower down
//! still leaves A set above), A on the leaf and D on the leaf of a write
//! only when the access is allowed. The PDPTE registers have no A bit.
//!
//! An entry that lies outside guest RAM reads as zero (not present); no
//! write goes there.

pub use crate::mem::{GuestMemory, NotRam, Ram};
use crate::regs::{bits, CpuModel, GuestCtl, PagingMode};

/// Bits of a #PF error code (AMD APM vol. 2, 8.4.2; Intel SDM vol. 3, 4.7).
pub mod pf {
    /// The fault was a protection violation (0: a not-present entry).
    pub const P: u32 = 1 << 0;
    /// The access was a write.
    pub const W: u32 = 1 << 1;
    /// The access was made at CPL 3.
    pub const U: u32 = 1 << 2;
    /// A reserved bit was set in a present entry.
    pub const RSVD: u32 = 1 << 3;
    /// The access was an instruction fetch (reported only when NX is enabled).
    pub const ID: u32 = 1 << 4;
}

/// Entry bits shared by every format.
pub mod pte {
    /// Present.
    pub const P: u64 = 1 << 0;
    /// Read/write.
    pub const RW: u64 = 1 << 1;
    /// User/supervisor.
    pub const US: u64 = 1 << 2;
    /// Page-level write-through.
    pub const PWT: u64 = 1 << 3;
    /// Page-level cache disable.
    pub const PCD: u64 = 1 << 4;
    /// Accessed.
    pub const A: u64 = 1 << 5;
    /// Dirty (leaves).
    pub const D: u64 = 1 << 6;
    /// Page size (levels 2 and 3) / PAT (level 1).
    pub const PS: u64 = 1 << 7;
    /// Global (leaves).
    pub const G: u64 = 1 << 8;
    /// Execute disable (PAE and four-level, with EFER.NXE).
    pub const NX: u64 = 1 << 63;
}

/// Effective-permission bits, accumulated over a walk.
pub mod acc {
    /// Writable.
    pub const W: u8 = 1 << 0;
    /// User-accessible.
    pub const U: u8 = 1 << 1;
    /// Executable.
    pub const X: u8 = 1 << 2;
    /// Everything.
    pub const ALL: u8 = W | U | X;
}

/// One memory access.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Access {
    /// A write (a read when neither this nor `fetch`).
    pub write: bool,
    /// Made at CPL 3.
    pub user: bool,
    /// An instruction fetch.
    pub fetch: bool,
}

impl Access {
    /// A data read.
    pub const fn read(user: bool) -> Self {
        Self {
            write: false,
            user,
            fetch: false,
        }
    }

    /// A data write.
    pub const fn write(user: bool) -> Self {
        Self {
            write: true,
            user,
            fetch: false,
        }
    }

    /// An instruction fetch.
    pub const fn fetch(user: bool) -> Self {
        Self {
            write: false,
            user,
            fetch: true,
        }
    }

    /// The access a hardware #PF error code describes (W, U and I/D).
    pub fn from_error_code(ec: u64) -> Self {
        let ec = ec as u32;
        Self {
            write: ec & pf::W != 0,
            user: ec & pf::U != 0,
            fetch: ec & pf::ID != 0,
        }
    }

    /// The W, U and I/D bits of an error code for this access.
    pub fn error_code_bits(self, nx_enabled: bool) -> u32 {
        let mut ec = 0;
        if self.write {
            ec |= pf::W;
        }
        if self.user {
            ec |= pf::U;
        }
        if self.fetch && nx_enabled {
            ec |= pf::ID;
        }
        ec
    }
}

/// One entry the walk used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Step {
    /// Guest-physical address of the table (for a PAE PDPTE, of the
    /// 32-byte PDPT that CR3 names).
    pub table: u64,
    /// Entry index in that table.
    pub index: u16,
    /// The entry, after the walk's A/D updates.
    pub entry: u64,
    /// Permissions accumulated down to and including this entry.
    pub access: u8,
}

/// A successful walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// Guest-physical address of the accessed byte.
    pub gpa: u64,
    /// Size of the page (4 KiB, 2 MiB, 4 MiB or 1 GiB).
    pub page_size: u64,
    /// Effective permissions ([`acc`] bits).
    pub access: u8,
    /// G bit of the leaf.
    pub global: bool,
    /// D bit of the leaf after the walk (always set after a write).
    pub dirty: bool,
    /// Level of the leaf (1 for 4 KiB pages; 0 with paging off).
    pub leaf_level: u8,
    /// The entries used, by level (index 1..=4; index 0 unused).
    pub steps: [Option<Step>; 5],
}

impl Translation {
    /// The entry used at `level`, if the walk went through that level.
    pub fn step(&self, level: u8) -> Option<&Step> {
        self.steps.get(usize::from(level)).and_then(|s| s.as_ref())
    }

    /// Guest frames (4 KiB) holding the tables the walk read from memory.
    pub fn table_frames(&self) -> impl Iterator<Item = u64> + '_ {
        self.steps.iter().flatten().map(|s| s.table >> 12)
    }
}

/// Why a walk failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkError {
    /// #PF with this error code.
    PageFault {
        /// The error code hardware would push.
        error_code: u32,
    },
    /// A non-canonical address in long mode: #GP (or #SS), never #PF.
    NonCanonical,
}

/// Whether a long-mode linear address is canonical (48 bits).
pub fn is_canonical(la: u64) -> bool {
    let top = la >> 47;
    top == 0 || top == (1 << 17) - 1
}

/// Reserved bits of an entry at `level` in `mode` whose PS bit is `ps`
/// (`ps` is ignored where the format has no PS bit). For PAE, `level` 3
/// is a PDPTE as loaded into the PDPTE registers.
pub fn reserved_bits(mode: PagingMode, level: u8, ps: bool, nxe: bool, cpu: &CpuModel) -> u64 {
    let m = u32::from(cpu.max_phys_bits);
    let nx = if nxe { 0 } else { pte::NX };
    match mode {
        PagingMode::Off => 0,
        PagingMode::Bits32 => {
            if level == 2 && ps {
                // Bit 21, and PSE-36 bits 20:13 beyond MAXPHYADDR.
                (1 << 21) | bits(13 + m.min(40) - 32, 20)
            } else {
                0
            }
        }
        PagingMode::Pae => match level {
            // QEMU's walker ignores bits 8:5 and sets A (bit 5) there.
            3 if cpu.pdpte_bits_8_5_ignored => bits(1, 2) | bits(m, 63),
            3 => bits(1, 2) | bits(5, 8) | bits(m, 63),
            2 if ps => bits(m, 62) | nx | bits(13, 20),
            _ => bits(m, 62) | nx,
        },
        PagingMode::Long => {
            let hi = bits(m, 51) | nx;
            match level {
                4 => hi | pte::PS,
                3 if ps && cpu.gb_pages => hi | bits(13, 29),
                3 if ps => hi | pte::PS,
                2 if ps => hi | bits(13, 20),
                _ => hi,
            }
        }
    }
}

/// The permissions one entry grants ([`acc`] bits).
pub fn entry_access(entry: u64, nx_enabled: bool) -> u8 {
    let mut a = 0;
    if entry & pte::RW != 0 {
        a |= acc::W;
    }
    if entry & pte::US != 0 {
        a |= acc::U;
    }
    if !(nx_enabled && entry & pte::NX != 0) {
        a |= acc::X;
    }
    a
}

/// Whether an entry at `level` is a leaf (a page) rather than a pointer to
/// a table. Assumes the reserved-bit check has passed.
pub fn is_leaf(mode: PagingMode, level: u8, entry: u64, pse: bool) -> bool {
    let ps = entry & pte::PS != 0;
    match (mode, level) {
        (_, 1) => true,
        (PagingMode::Bits32, 2) => ps && pse,
        (PagingMode::Pae | PagingMode::Long, 2) => ps,
        (PagingMode::Long, 3) => ps,
        _ => false,
    }
}

/// Guest-physical base of the page a leaf at `level` maps.
pub fn leaf_base(mode: PagingMode, level: u8, entry: u64, cpu: &CpuModel) -> u64 {
    let m = u32::from(cpu.max_phys_bits);
    match (mode, level) {
        (PagingMode::Bits32, 1) => entry & 0xffff_f000,
        (PagingMode::Bits32, _) => (entry & 0xffc0_0000) | (((entry >> 13) & 0xff) << 32),
        (_, 1) => entry & bits(12, m - 1),
        (_, 2) => entry & bits(21, m - 1),
        _ => entry & bits(30, m - 1),
    }
}

/// Guest-physical address of the table a non-leaf entry points to.
pub fn table_base(mode: PagingMode, entry: u64, cpu: &CpuModel) -> u64 {
    match mode {
        PagingMode::Bits32 => entry & 0xffff_f000,
        _ => entry & cpu.frame_mask(),
    }
}

/// Size of a leaf at `level`.
pub fn leaf_size(mode: PagingMode, level: u8) -> u64 {
    match (mode, level) {
        (_, 1) => 1 << 12,
        (PagingMode::Bits32, _) => 1 << 22,
        (_, 2) => 1 << 21,
        _ => 1 << 30,
    }
}

fn read_entry<M: GuestMemory + ?Sized>(mem: &mut M, gpa: u64, size: usize) -> u64 {
    let mut b = [0u8; 8];
    if mem.read_phys(gpa, &mut b[..size]).is_err() {
        return 0;
    }
    u64::from_le_bytes(b)
}

fn write_entry<M: GuestMemory + ?Sized>(mem: &mut M, gpa: u64, size: usize, value: u64) {
    // Outside RAM the entry read as zero and the walk stopped; nothing to do.
    let _ = mem.write_phys(gpa, &value.to_le_bytes()[..size]);
}

/// The instruction raises #GP(0) and changes nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GeneralProtection;

/// Reads the four PDPTEs at `cr3` (bits 31:5). A PDPT outside guest RAM
/// reads as zeros. Without PDPTE registers (`cpu.pdptes_on_walk`) there
/// is nothing to load: zeros, never #GP.
pub fn load_pdptes<M: GuestMemory + ?Sized>(
    mem: &mut M,
    cr3: u64,
    cpu: &CpuModel,
) -> Result<[u64; 4], GeneralProtection> {
    if cpu.pdptes_on_walk {
        return Ok([0; 4]);
    }
    let base = cr3 & 0xffff_ffe0;
    let mut raw = [0u8; 32];
    if mem.read_phys(base, &mut raw).is_err() {
        raw = [0; 32];
    }
    let mut out = [0u64; 4];
    for (i, e) in out.iter_mut().enumerate() {
        let mut b = [0u8; 8];
        b.copy_from_slice(&raw[i * 8..i * 8 + 8]);
        *e = u64::from_le_bytes(b);
        if *e & pte::P != 0 && *e & reserved_bits(PagingMode::Pae, 3, false, false, cpu) != 0 {
            return Err(GeneralProtection);
        }
    }
    Ok(out)
}

/// Walks the guest's tables for `la` with the access `acc`.
///
/// With `update`, sets the Accessed and Dirty bits in guest memory as the
/// hardware would (see the module docs); without, only reads.
pub fn walk<M: GuestMemory + ?Sized>(
    mem: &mut M,
    ctl: &GuestCtl,
    cpu: &CpuModel,
    la: u64,
    access: Access,
    update: bool,
) -> Result<Translation, WalkError> {
    let mode = ctl.mode();
    let nxe = ctl.nx_enabled();
    let mut t = Translation {
        gpa: 0,
        page_size: 1 << 12,
        access: acc::ALL,
        global: false,
        dirty: true,
        leaf_level: 0,
        steps: [None; 5],
    };
    let fault = |extra: u32| WalkError::PageFault {
        error_code: extra | access.error_code_bits(nxe),
    };
    let (mut level, entry_size, mut table) = match mode {
        PagingMode::Off => {
            t.gpa = la & 0xffff_ffff;
            return Ok(t);
        }
        PagingMode::Bits32 => (2u8, 4usize, ctl.cr3 & 0xffff_f000),
        PagingMode::Pae => {
            let la = la & 0xffff_ffff;
            let i = (la >> 30) as usize;
            let pdpt = ctl.cr3 & 0xffff_ffe0;
            let pdpte = if cpu.pdptes_on_walk {
                read_entry(mem, pdpt + 8 * i as u64, 8)
            } else {
                ctl.pdptes[i]
            };
            if pdpte & pte::P == 0 {
                return Err(fault(0));
            }
            if cpu.pdptes_on_walk && pdpte & reserved_bits(mode, 3, false, nxe, cpu) != 0 {
                return Err(fault(pf::P | pf::RSVD));
            }
            t.steps[3] = Some(Step {
                table: pdpt,
                index: i as u16,
                entry: pdpte,
                access: acc::ALL,
            });
            (2u8, 8usize, pdpte & cpu.frame_mask())
        }
        PagingMode::Long => {
            if !is_canonical(la) {
                return Err(WalkError::NonCanonical);
            }
            (4u8, 8usize, ctl.cr3 & cpu.frame_mask())
        }
    };
    let la = if mode == PagingMode::Long {
        la
    } else {
        la & 0xffff_ffff
    };
    let mut perms = acc::ALL;
    loop {
        let index = if mode == PagingMode::Bits32 {
            (la >> (12 + 10 * (u32::from(level) - 1))) & 0x3ff
        } else {
            (la >> (12 + 9 * (u32::from(level) - 1))) & 0x1ff
        };
        let gpa = table + index * entry_size as u64;
        let mut e = read_entry(mem, gpa, entry_size);
        if e & pte::P == 0 {
            return Err(fault(0));
        }
        let ps = e & pte::PS != 0;
        if e & reserved_bits(mode, level, ps, nxe, cpu) != 0 {
            return Err(fault(pf::P | pf::RSVD));
        }
        perms &= entry_access(e, nxe);
        let leaf = is_leaf(mode, level, e, ctl.pse());
        if !leaf {
            if update && e & pte::A == 0 {
                e |= pte::A;
                write_entry(mem, gpa, entry_size, e);
            }
            t.steps[usize::from(level)] = Some(Step {
                table,
                index: index as u16,
                entry: e,
                access: perms,
            });
            table = table_base(mode, e, cpu);
            level -= 1;
            continue;
        }
        // The leaf: check the access against the accumulated permissions.
        let user_ok = !access.user || perms & acc::U != 0;
        let write_ok = !access.write || perms & acc::W != 0 || (!access.user && !ctl.wp());
        let fetch_ok = !access.fetch || perms & acc::X != 0;
        if !(user_ok && write_ok && fetch_ok) {
            return Err(fault(pf::P));
        }
        if update {
            let mut n = e | pte::A;
            if access.write {
                n |= pte::D;
            }
            if n != e {
                e = n;
                write_entry(mem, gpa, entry_size, e);
            }
        }
        t.steps[usize::from(level)] = Some(Step {
            table,
            index: index as u16,
            entry: e,
            access: perms,
        });
        let size = leaf_size(mode, level);
        t.page_size = size;
        t.gpa = leaf_base(mode, level, e, cpu) | (la & (size - 1));
        t.access = perms;
        t.global = e & pte::G != 0;
        t.dirty = e & pte::D != 0;
        t.leaf_level = level;
        return Ok(t);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::mem::NotRam;
    use crate::regs::{cr0, cr4, efer};
    use proptest::prelude::*;
    use std::vec;
    use std::vec::Vec;

    /// Flat test memory.
    pub struct Ram(pub Vec<u8>);

    impl GuestMemory for Ram {
        fn ram_bytes(&self) -> u64 {
            self.0.len() as u64
        }
        fn read_phys(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), NotRam> {
            crate::mem::Ram::new(&mut self.0).read_phys(gpa, buf)
        }
        fn write_phys(&mut self, gpa: u64, data: &[u8]) -> Result<(), NotRam> {
            crate::mem::Ram::new(&mut self.0).write_phys(gpa, data)
        }
    }

    impl Ram {
        pub fn new(bytes: usize) -> Self {
            Self(vec![0; bytes])
        }
        pub fn put64(&mut self, gpa: u64, v: u64) {
            self.write_phys(gpa, &v.to_le_bytes()).unwrap();
        }
        pub fn put32(&mut self, gpa: u64, v: u32) {
            self.write_phys(gpa, &v.to_le_bytes()).unwrap();
        }
        pub fn get64(&mut self, gpa: u64) -> u64 {
            let mut b = [0; 8];
            self.read_phys(gpa, &mut b).unwrap();
            u64::from_le_bytes(b)
        }
        pub fn get32(&mut self, gpa: u64) -> u32 {
            let mut b = [0; 4];
            self.read_phys(gpa, &mut b).unwrap();
            u32::from_le_bytes(b)
        }
    }

    const CPU: CpuModel = CpuModel {
        max_phys_bits: 40,
        gb_pages: true,
        cr4_supported: cr4::SUPPORTED,
        efer_supported: efer::SUPPORTED,
        pdptes_on_walk: false,
        pdpte_bits_8_5_ignored: false,
    };

    fn long_ctl(cr3: u64) -> GuestCtl {
        GuestCtl {
            cr0: cr0::PE | cr0::PG | cr0::WP,
            cr3,
            cr4: cr4::PAE,
            efer: efer::LME | efer::LMA | efer::NXE,
            pdptes: [0; 4],
        }
    }

    const RW: u64 = pte::P | pte::RW;
    const URW: u64 = pte::P | pte::RW | pte::US;

    /// PML4 at 0x1000, PDPT at 0x2000, PD at 0x3000, PT at 0x4000.
    fn long_tables(ram: &mut Ram, leaf: u64) {
        ram.put64(0x1000, 0x2000 | URW);
        ram.put64(0x2000, 0x3000 | URW);
        ram.put64(0x3000, 0x4000 | URW);
        ram.put64(0x4000 + 5 * 8, 0x9000 | leaf);
    }

    #[test]
    fn long_mode_4k_walk_sets_accessed_and_dirty() {
        let mut ram = Ram::new(1 << 20);
        long_tables(&mut ram, URW);
        let ctl = long_ctl(0x1000);
        let t = walk(&mut ram, &ctl, &CPU, 0x5123, Access::read(true), true).unwrap();
        assert_eq!(t.gpa, 0x9123);
        assert_eq!(t.page_size, 0x1000);
        assert_eq!(t.access, acc::ALL);
        assert!(!t.dirty);
        assert_eq!(ram.get64(0x1000) & pte::A, pte::A);
        assert_eq!(ram.get64(0x4000 + 40), 0x9000 | URW | pte::A);
        walk(&mut ram, &ctl, &CPU, 0x5000, Access::write(false), true).unwrap();
        assert_eq!(ram.get64(0x4000 + 40), 0x9000 | URW | pte::A | pte::D);
        assert_eq!(ram.get64(0x3000) & pte::D, 0, "no D above the leaf");
        // Without `update`, nothing changes.
        ram.put64(0x4000 + 40, 0x9000 | URW);
        walk(&mut ram, &ctl, &CPU, 0x5000, Access::write(false), false).unwrap();
        assert_eq!(ram.get64(0x4000 + 40), 0x9000 | URW);
    }

    #[test]
    fn protection_faults_carry_the_exact_error_code() {
        let mut ram = Ram::new(1 << 20);
        long_tables(&mut ram, pte::P | pte::NX);
        let mut ctl = long_ctl(0x1000);
        let ec = |r| match r {
            Err(WalkError::PageFault { error_code }) => error_code,
            other => panic!("{other:?}"),
        };
        let w = |ram: &mut Ram, ctl: &GuestCtl, a| walk(ram, ctl, &CPU, 0x5000, a, true);
        assert_eq!(ec(w(&mut ram, &ctl, Access::read(true))), pf::P | pf::U);
        assert_eq!(ec(w(&mut ram, &ctl, Access::write(false))), pf::P | pf::W);
        assert_eq!(ec(w(&mut ram, &ctl, Access::fetch(false))), pf::P | pf::ID);
        assert!(w(&mut ram, &ctl, Access::read(false)).is_ok());
        assert_eq!(ram.get64(0x4000 + 40) & pte::D, 0);
        // CR0.WP = 0: supervisor writes ignore R/W, and set D.
        ctl.cr0 &= !cr0::WP;
        assert!(w(&mut ram, &ctl, Access::write(false)).is_ok());
        assert_eq!(ram.get64(0x4000 + 40) & pte::D, pte::D);
        // Without NXE, bit 63 is reserved.
        ctl.efer &= !efer::NXE;
        assert_eq!(
            ec(w(&mut ram, &ctl, Access::fetch(false))),
            pf::P | pf::RSVD,
            "no I/D without NXE"
        );
    }

    #[test]
    fn not_present_and_reserved_faults() {
        let mut ram = Ram::new(1 << 20);
        long_tables(&mut ram, URW);
        let ctl = long_ctl(0x1000);
        let r = walk(&mut ram, &ctl, &CPU, 0x6000, Access::write(true), true);
        assert_eq!(
            r,
            Err(WalkError::PageFault {
                error_code: pf::W | pf::U
            })
        );
        // A above the missing leaf is set anyway.
        assert_ne!(ram.get64(0x3000) & pte::A, 0);
        ram.put64(0x4000 + 6 * 8, 0x9000 | URW | (1 << 45));
        let r = walk(&mut ram, &ctl, &CPU, 0x6000, Access::read(false), true);
        assert_eq!(
            r,
            Err(WalkError::PageFault {
                error_code: pf::P | pf::RSVD
            })
        );
        // PS in a PML4E is reserved.
        ram.put64(0x1000 + 8, URW | pte::PS);
        let r = walk(&mut ram, &ctl, &CPU, 1 << 39, Access::fetch(true), true);
        assert_eq!(
            r,
            Err(WalkError::PageFault {
                error_code: pf::P | pf::RSVD | pf::U | pf::ID
            })
        );
        assert_eq!(
            walk(&mut ram, &ctl, &CPU, 1 << 47, Access::read(false), true),
            Err(WalkError::NonCanonical)
        );
    }

    #[test]
    fn large_pages_in_long_mode() {
        let mut ram = Ram::new(1 << 20);
        ram.put64(0x1000, 0x2000 | URW);
        ram.put64(0x2000, (1 << 30) | URW | pte::PS | pte::G);
        ram.put64(0x2008, 0x3000 | URW);
        ram.put64(0x3000, (3 << 21) | RW | pte::PS);
        let ctl = long_ctl(0x1000);
        let t = walk(&mut ram, &ctl, &CPU, 0x1234_5678, Access::read(true), true).unwrap();
        assert_eq!(
            (t.gpa, t.page_size, t.global),
            ((1 << 30) + 0x1234_5678, 1 << 30, true)
        );
        let t = walk(
            &mut ram,
            &ctl,
            &CPU,
            (1 << 30) + 0x1_2345,
            Access::write(false),
            true,
        )
        .unwrap();
        assert_eq!(
            (t.gpa, t.page_size, t.access),
            ((3 << 21) + 0x1_2345, 1 << 21, acc::W | acc::X)
        );
        // Low address bits of a large page are reserved.
        ram.put64(0x3000, (3 << 21) | (1 << 13) | RW | pte::PS);
        assert!(matches!(
            walk(&mut ram, &ctl, &CPU, 1 << 30, Access::read(false), true),
            Err(WalkError::PageFault { error_code }) if error_code == pf::P | pf::RSVD
        ));
        // Without 1 GiB pages PS in a PDPTE is reserved.
        let cpu = CpuModel {
            gb_pages: false,
            ..CPU
        };
        assert!(matches!(
            walk(&mut ram, &ctl, &cpu, 0, Access::read(false), true),
            Err(WalkError::PageFault { error_code }) if error_code == pf::P | pf::RSVD
        ));
    }

    #[test]
    fn paging_32bit_with_pse() {
        let mut ram = Ram::new(1 << 20);
        let mut ctl = GuestCtl {
            cr0: cr0::PE | cr0::PG | cr0::WP,
            cr3: 0x1000,
            ..Default::default()
        };
        ram.put32(0x1000, 0x2000 | URW as u32);
        ram.put32(0x2000 + 4 * 3, 0x7000 | URW as u32);
        // PDE 1: a 4 MiB page at 12 MiB (with PSE-36 bits 0x01 → +4 GiB).
        ram.put32(0x1004, (12 << 20) | (1 << 13) | (URW | pte::PS) as u32);
        let t = walk(&mut ram, &ctl, &CPU, 0x3abc, Access::write(true), true).unwrap();
        assert_eq!(t.gpa, 0x7abc);
        assert_eq!(
            ram.get32(0x2000 + 12),
            0x7000 | (URW | pte::A | pte::D) as u32
        );
        // PSE off: PS is ignored, the PDE points to a table at 12 MiB (outside RAM: reads zero).
        assert!(matches!(
            walk(&mut ram, &ctl, &CPU, 0x40_0000, Access::read(false), true),
            Err(WalkError::PageFault { error_code: 0 })
        ));
        ctl.cr4 |= cr4::PSE;
        let t = walk(&mut ram, &ctl, &CPU, 0x40_1234, Access::read(false), true).unwrap();
        assert_eq!(t.gpa, (1 << 32) + (12 << 20) + 0x1234);
        assert_eq!(t.page_size, 4 << 20);
        // Fetches never report I/D, even with EFER.NXE set.
        ctl.efer |= efer::NXE;
        ram.put32(0x1004, 0);
        assert_eq!(
            walk(&mut ram, &ctl, &CPU, 0x40_0000, Access::fetch(true), true),
            Err(WalkError::PageFault { error_code: pf::U })
        );
        // Bit 21 of a 4 MiB PDE is reserved.
        ram.put32(0x1004, (12 << 20) | (1 << 21) | (URW | pte::PS) as u32);
        assert!(matches!(
            walk(&mut ram, &ctl, &CPU, 0x40_0000, Access::read(false), true),
            Err(WalkError::PageFault { error_code }) if error_code == pf::P | pf::RSVD
        ));
        // PSE-36 bits beyond MAXPHYADDR are reserved.
        let cpu = CpuModel {
            max_phys_bits: 36,
            ..CPU
        };
        ram.put32(0x1004, (12 << 20) | (1 << 17) | (URW | pte::PS) as u32);
        assert!(matches!(
            walk(&mut ram, &ctl, &cpu, 0x40_0000, Access::read(false), true),
            Err(WalkError::PageFault { error_code }) if error_code == pf::P | pf::RSVD
        ));
        assert!(walk(&mut ram, &ctl, &CPU, 0x40_0000, Access::read(false), true).is_ok());
    }

    #[test]
    fn pae_uses_the_pdpte_registers() {
        let mut ram = Ram::new(1 << 20);
        let mut ctl = GuestCtl {
            cr0: cr0::PE | cr0::PG | cr0::WP,
            cr3: 0x1020,
            cr4: cr4::PAE,
            efer: efer::NXE,
            pdptes: [0, 0, 0x2000 | pte::P, 0],
        };
        ram.put64(0x2000 + 8, (5 << 21) | URW | pte::PS | pte::NX);
        let la = 0x8000_0000 + (1 << 21) + 0x42;
        let t = walk(&mut ram, &ctl, &CPU, la, Access::read(true), true).unwrap();
        assert_eq!(t.gpa, (5 << 21) + 0x42);
        assert_eq!(t.step(3).unwrap().table, 0x1020);
        assert_eq!(
            walk(&mut ram, &ctl, &CPU, la, Access::fetch(true), true),
            Err(WalkError::PageFault {
                error_code: pf::P | pf::U | pf::ID
            })
        );
        // Memory at CR3 does not matter: only the registers do.
        ctl.pdptes[2] = 0;
        assert_eq!(
            walk(&mut ram, &ctl, &CPU, la, Access::read(false), true),
            Err(WalkError::PageFault { error_code: 0 })
        );
        // Bits 62:52 are reserved in PAE entries (ignored in long mode).
        ctl.pdptes[2] = 0x2000 | pte::P;
        ram.put64(0x2000 + 8, (5 << 21) | URW | pte::PS | (1 << 55));
        assert!(matches!(
            walk(&mut ram, &ctl, &CPU, la, Access::read(false), true),
            Err(WalkError::PageFault { error_code }) if error_code == pf::P | pf::RSVD
        ));
    }

    /// AMD with nested paging: no PDPTE registers, each walk reads the
    /// PDPT in memory and checks the PDPTE's reserved bits (2:1, 8:5,
    /// 63:MAXPHYADDR) as at any other level: #PF with P and RSVD.
    #[test]
    fn pae_reads_the_pdptes_on_each_walk_without_registers() {
        let cpu = CpuModel {
            pdptes_on_walk: true,
            ..CPU
        };
        let mut ram = Ram::new(1 << 20);
        let ctl = GuestCtl {
            cr0: cr0::PE | cr0::PG | cr0::WP,
            cr3: 0x1020,
            cr4: cr4::PAE,
            efer: 0,
            // Stale registers must not matter.
            pdptes: [0x9000 | pte::P; 4],
        };
        ram.put64(0x1020 + 16, 0x2000 | pte::P);
        ram.put64(0x2000 + 8, (5 << 21) | URW | pte::PS);
        let la = 0x8000_0000 + (1 << 21) + 0x42;
        let t = walk(&mut ram, &ctl, &cpu, la, Access::read(true), true).unwrap();
        assert_eq!(t.gpa, (5 << 21) + 0x42);
        assert_eq!(t.step(3).unwrap().table, 0x1020);
        assert_eq!(t.step(3).unwrap().entry, 0x2000 | pte::P);
        assert_eq!(
            ram.get64(0x1020 + 16),
            0x2000 | pte::P,
            "no A bit in a PDPTE"
        );
        // A write to the PDPT takes effect at the next walk.
        ram.put64(0x1020 + 16, 0);
        assert_eq!(
            walk(&mut ram, &ctl, &cpu, la, Access::write(false), true),
            Err(WalkError::PageFault { error_code: pf::W })
        );
        for bit in [1, 2, 5, 6, 7, 8, 40, 52, 62, 63] {
            ram.put64(0x1020 + 16, 0x2000 | pte::P | 1 << bit);
            assert_eq!(
                walk(&mut ram, &ctl, &cpu, la, Access::write(true), true),
                Err(WalkError::PageFault {
                    error_code: pf::P | pf::RSVD | pf::W | pf::U
                }),
                "bit {bit}"
            );
        }
        // Ignored bits 11:9, PWT and PCD.
        ram.put64(0x1020 + 16, 0x2000 | pte::P | 0xe18);
        assert!(walk(&mut ram, &ctl, &cpu, la, Access::read(false), true).is_ok());
        // QEMU's walker ignores 8:5 too (it sets A there).
        let qemu = CpuModel {
            pdpte_bits_8_5_ignored: true,
            ..cpu
        };
        ram.put64(0x1020 + 16, 0x2000 | pte::P | 0x1e0);
        assert!(walk(&mut ram, &ctl, &qemu, la, Access::read(false), true).is_ok());
        assert!(walk(&mut ram, &ctl, &cpu, la, Access::read(false), true).is_err());
        // A reserved bit in a PDPTE that is not present does not matter.
        ram.put64(0x1020 + 16, 0x2000 | 1 << 1);
        assert_eq!(
            walk(&mut ram, &ctl, &cpu, la, Access::read(false), true),
            Err(WalkError::PageFault { error_code: 0 })
        );
    }

    #[test]
    fn paging_off_is_identity() {
        let mut ram = Ram::new(4096);
        let ctl = GuestCtl::RESET;
        let t = walk(
            &mut ram,
            &ctl,
            &CPU,
            0x1_2345_6789,
            Access::write(true),
            true,
        )
        .unwrap();
        assert_eq!(t.gpa, 0x2345_6789);
    }

    /// A spec-style oracle for one long-mode 4 KiB walk built from four
    /// random entries: what the manuals' tables say, computed directly.
    fn oracle(entries: [u64; 4], ctl: &GuestCtl, a: Access) -> Result<u64, u32> {
        let nx_on = ctl.nxe();
        let io = if a.fetch && nx_on { pf::ID } else { 0 };
        let base = (if a.write { pf::W } else { 0 }) | (if a.user { pf::U } else { 0 }) | io;
        let (mut w, mut u, mut x) = (true, true, true);
        for (i, e) in entries.iter().enumerate() {
            let level = 4 - i;
            if e & 1 == 0 {
                return Err(base);
            }
            let mut rsvd = bits(40, 51);
            if !nx_on {
                rsvd |= 1 << 63;
            }
            if level == 4 || level == 3 || level == 2 {
                rsvd |= 1 << 7; // the oracle only builds 4 KiB walks: PS must be clear
            }
            if e & rsvd != 0 {
                return Err(base | pf::P | pf::RSVD);
            }
            w &= e & 2 != 0;
            u &= e & 4 != 0;
            x &= !(nx_on && e >> 63 != 0);
        }
        let denied = (a.user && !u) || (a.write && !w && (a.user || ctl.wp())) || (a.fetch && !x);
        if denied {
            return Err(base | pf::P);
        }
        Ok(entries[3] & bits(12, 39))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        /// PAE PDPTEs, read on each walk (AMD with nested paging) or held
        /// in registers loaded by MOV CR3 (Intel's PDPTE registers), against
        /// the format tables (SDM vol. 3, table 4-8; APM vol. 2, legacy-mode
        /// PDPE): P; 2:1 and 8:5 must be zero; PWT, PCD and 11:9 are free;
        /// 63:MAXPHYADDR must be zero.
        #[test]
        fn pae_pdpte_matches_the_format(
            flags in any::<u64>(), write in any::<bool>(), user in any::<bool>(),
            on_walk in any::<bool>(),
        ) {
            let cpu = CpuModel { pdptes_on_walk: on_walk, ..CPU };
            let mut ram = Ram::new(1 << 16);
            let pdpte = (flags & !bits(12, 39)) | 0x2000;
            ram.put64(0x1000, pdpte);
            ram.put64(0x2000, 0x3000 | URW);
            ram.put64(0x3000, 0x9000 | URW);
            let mut ctl = GuestCtl {
                cr0: cr0::PE | cr0::PG | cr0::WP,
                cr3: 0x1000,
                cr4: cr4::PAE,
                ..Default::default()
            };
            let loaded = load_pdptes(&mut ram, ctl.cr3, &cpu);
            let present = pdpte & 1 != 0;
            let reserved = pdpte & (0x1e6 | bits(40, 63)) != 0;
            if on_walk {
                prop_assert_eq!(loaded, Ok([0; 4]));
            } else if present && reserved {
                prop_assert!(loaded.is_err());
                return Ok(());
            } else {
                ctl.pdptes = loaded.unwrap();
            }
            let a = Access { write, user, fetch: false };
            let ec = |p: u32| p | if write { pf::W } else { 0 } | if user { pf::U } else { 0 };
            let got = walk(&mut ram, &ctl, &cpu, 0x123, a, true);
            match (present, reserved) {
                (false, _) => prop_assert_eq!(got, Err(WalkError::PageFault { error_code: ec(0) })),
                (true, true) => prop_assert_eq!(
                    got,
                    Err(WalkError::PageFault { error_code: ec(pf::P | pf::RSVD) })
                ),
                (true, false) => prop_assert_eq!(got.map(|t| t.gpa), Ok(0x9123)),
            }
            prop_assert_eq!(ram.get64(0x1000), pdpte, "a PDPTE has no A bit");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        /// The walker agrees with the spec oracle on permissions, error
        /// codes and addresses; A/D land exactly where QEMU puts them.
        #[test]
        fn long_walk_matches_the_spec(
            flags in proptest::array::uniform4(any::<u64>()),
            write in any::<bool>(), user in any::<bool>(), fetch in any::<bool>(),
            wp in any::<bool>(), nxe in any::<bool>(),
        ) {
            let fetch = fetch && !write;
            let a = Access { write, user, fetch };
            // Entries: random P/RW/US/A/D/PS(clear)/NX and sometimes a reserved bit.
            let tables = [0x1000u64, 0x2000, 0x3000, 0x4000];
            let mut entries = [0u64; 4];
            for i in 0..4 {
                let f = flags[i];
                let mut e = f & (pte::P | pte::RW | pte::US | pte::A | pte::D | pte::NX);
                if f & (0xf << 20) == 0 { e |= 1 << 44; } // reserved (1/16)
                if i < 3 && f & (0xf << 30) == 0 { e |= pte::PS; } // large or reserved
                if f & (0x3 << 40) == 0 { e &= !pte::P; }
                // Keep P mostly on.
                if f & (0x3 << 40) != 0 { e |= pte::P; }
                let next = if i < 3 { tables[i + 1] } else { 0x9000 };
                entries[i] = e | next;
            }
            let mut ram = Ram::new(1 << 16);
            for i in 0..4 { ram.put64(tables[i], entries[i]); }
            let mut ctl = long_ctl(0x1000);
            if !wp { ctl.cr0 &= !cr0::WP; }
            if !nxe { ctl.efer &= !efer::NXE; }
            let got = walk(&mut ram, &ctl, &CPU, 0xabc, a, true);
            let has_ps = entries[..3].iter().any(|e| e & pte::PS != 0);
            if !has_ps {
                let want = oracle(entries, &ctl, a);
                match (got, want) {
                    (Ok(t), Ok(gpa)) => prop_assert_eq!(t.gpa, gpa | 0xabc),
                    (Err(WalkError::PageFault { error_code }), Err(ec)) => prop_assert_eq!(error_code, ec),
                    (g, w) => prop_assert!(false, "walker {:?} oracle {:?}", g, w),
                }
                // A/D: every non-leaf the walk passed got A; the leaf got A (and D on writes) only on success.
                let mut passed = 0;
                for (i, e) in entries.iter().enumerate() {
                    let present_ok = e & 1 != 0 && e & (1 << 44) == 0 && (nxe || e >> 63 == 0);
                    if !present_ok { break; }
                    passed = i + 1;
                }
                for &table in tables.iter().take(passed.min(3)) {
                    prop_assert_ne!(ram.get64(table) & pte::A, 0);
                }
                let leaf = ram.get64(tables[3]);
                if got.is_ok() {
                    prop_assert_ne!(leaf & pte::A, 0);
                    prop_assert_eq!(leaf & pte::D != 0, entries[3] & pte::D != 0 || write);
                } else {
                    prop_assert_eq!(leaf, entries[3]);
                }
            }
        }
    }
}
