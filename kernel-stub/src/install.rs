//! The install check: the stub's whole defence against a buggy or hostile
//! mmu-server. Every entry that reaches a page table the hardware walks
//! passes through [`ShadowTables::check`] (see `ipc_proto::mmu` for the rules).
//!
//! A frame never changes level: a freed table's frame is only ever reused
//! for a table of the same level, so an entry that still points to it (the
//! server forgot to clear it) reaches a table whose entries were all
//! checked for that level: no sequence of installs and frees can make the
//! hardware read a non-leaf table as a leaf table and map a shadow frame
//! into the guest. A handle is not bound to a level: when every handle has
//! been used and none of the wanted level is free, a dead handle of
//! another level gets a new frame and its old frame is retired, never
//! written again. Freeing the table the hardware walks from (the root
//! a resume named last) is harmless for the same reason: the hardware
//! goes on reading a frame of the root's level, whose entries were checked
//! for it, whatever table of that level it becomes next.
//!
//! The same checks hold for nested tables (NPT, EPT): every table of a VM
//! has the one [`TableFormat`] the stub set before the first allocation,
//! and an entry is present, a leaf or a non-leaf exactly as the hardware
//! reading that format decides.

pub use ipc_proto::mmu::TableFormat;
use ipc_proto::mmu::{
    ept, Install, InstallError, TableHandle, MAX_SHADOW_TABLES, PTE_ADDR_MASK, PTE_PS,
};

/// This VM's RAM: guest-physical `[0, bytes)` at host-physical `hpa_base`.
#[derive(Clone, Copy, Debug)]
pub struct GuestRam {
    /// Host-physical address of guest-physical 0 (2 MiB aligned).
    pub hpa_base: u64,
    /// Size in bytes.
    pub bytes: u64,
}

#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    /// Host-physical frame; 0 = never allocated.
    frame: u64,
    level: u8,
    live: bool,
}

/// Why a table could not be allocated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocError {
    /// Level not 1..=4.
    BadLevel,
    /// All handles are live.
    NoHandles,
    /// The frame source is empty.
    OutOfMemory,
}

/// The shadow (or nested) tables of one VM, by handle.
pub struct ShadowTables {
    slots: [Slot; MAX_SHADOW_TABLES as usize],
    format: TableFormat,
}

/// Bits reserved in a present PAE PDPTE, the four entries of a PAE root
/// that the CPU loads into registers with CR3 (and VM entry and VMRUN with
/// it): 1, 2, 5-8 and 52-63 (Intel SDM vol. 3A, table 4-8; AMD APM vol. 2,
/// figure 5-10). The same bits are legal in a level-3 table of four-level
/// paging, so the check applies to the root of PAE paging only.
pub const PAE_PDPTE_RESERVED: u64 = 0b1_1110_0110 | 0xfff0_0000_0000_0000;

/// Whether the first four entries of a PAE root can be loaded as PDPTEs.
pub fn pae_pdptes_ok(entries: &[u64]) -> bool {
    entries
        .iter()
        .take(4)
        .all(|&e| e & 1 == 0 || e & PAE_PDPTE_RESERVED == 0)
}

/// The PDPTEs of a PAE root about to be loaded again, as the hardware may
/// have left them: QEMU 7.2 sets A (bit 5, reserved) in legacy PDPTEs it
/// walked, which Bochs, VM entry and VMRUN would refuse; the stub clears
/// it. `None` when another reserved bit is set (only a server can have put
/// it there).
pub fn pae_pdptes_reloaded(mut pdptes: [u64; 4]) -> Option<[u64; 4]> {
    const A: u64 = 1 << 5;
    for e in &mut pdptes {
        if *e & 1 != 0 {
            *e &= !A;
        }
    }
    pae_pdptes_ok(&pdptes).then_some(pdptes)
}

/// The bits besides the address an entry may carry, by format and kind: an
/// allowlist, so that no bit the hardware gives a meaning to on some CPU
/// (protection keys in 59-62, EPT's sub-page, shadow-stack and
/// suppress-#VE bits, bits reserved today) reaches a table. x86 (AMD APM
/// vol. 2, 5.4; Intel SDM vol. 3A, 4.5): P, R/W, U/S, PWT, PCD, A, the
/// available 9-11 and NX; leaves add D and G, and PAT (bit 7 in a 4 KiB
/// leaf; bit 12 of a large one, which the address check keeps) or PS.
/// EPT (SDM vol. 3C, 29.3.2): R, W, X, A; leaves add the memory type, the
/// ignore-PAT bit, D, and LARGE when large.
fn allowed_bits(format: TableFormat, leaf: bool, large: bool) -> u64 {
    const P: u64 = 1;
    const RW: u64 = 1 << 1;
    const US: u64 = 1 << 2;
    const PWT: u64 = 1 << 3;
    const PCD: u64 = 1 << 4;
    const A: u64 = 1 << 5;
    const D: u64 = 1 << 6;
    const PAT_4K: u64 = 1 << 7;
    const G: u64 = 1 << 8;
    const AVL: u64 = 7 << 9;
    const NX: u64 = 1 << 63;
    match (format, leaf) {
        (TableFormat::X86, false) => P | RW | US | PWT | PCD | A | AVL | NX,
        (TableFormat::X86, true) => {
            P | RW | US | PWT | PCD | A | D | G | AVL | NX | if large { PTE_PS } else { PAT_4K }
        }
        (TableFormat::Ept, false) => ept::PRESENT_MASK | ept::ACCESSED,
        (TableFormat::Ept, true) => {
            ept::PRESENT_MASK
                | ept::MEMORY_TYPE
                | ept::IGNORE_PAT
                | ept::ACCESSED
                | ept::DIRTY
                | if large { ept::LARGE } else { 0 }
        }
    }
}

/// An EPT entry the CPU would call a misconfiguration (SDM vol. 3C,
/// 29.3.3.1): write without read, or in a leaf a reserved memory type
/// (2, 3 or 7).
fn ept_misconfigured(entry: u64, leaf: bool) -> bool {
    let write_only = entry & ept::WRITE != 0 && entry & ept::READ == 0;
    let memory_type = (entry & ept::MEMORY_TYPE) >> 3;
    write_only || leaf && matches!(memory_type, 2 | 3 | 7)
}

/// Bytes mapped by a leaf at `level`.
fn leaf_size(level: u8) -> u64 {
    1 << (12 + 9 * (u32::from(level) - 1))
}

impl Default for ShadowTables {
    fn default() -> Self {
        Self::new()
    }
}

impl ShadowTables {
    /// No tables, in the x86 format.
    pub const fn new() -> Self {
        Self {
            slots: [Slot {
                frame: 0,
                level: 0,
                live: false,
            }; MAX_SHADOW_TABLES as usize],
            format: TableFormat::X86,
        }
    }

    /// Sets the entry format of every table; refused (`false`) once a
    /// table was handed out, whose entries were checked in the old one.
    pub fn set_format(&mut self, format: TableFormat) -> bool {
        let fresh = self.slots.iter().all(|s| s.frame == 0);
        if fresh {
            self.format = format;
        }
        fresh
    }

    /// A table at `level`: a dead slot's frame of the same level when there
    /// is one (the caller must zero it), else a new frame from `new_frame`
    /// in a handle never used or, when all were, in a dead handle of another
    /// level (whose old frame is retired). Returns the handle and the frame.
    pub fn alloc(
        &mut self,
        level: u8,
        new_frame: impl FnOnce() -> Option<u64>,
    ) -> Result<(TableHandle, u64), AllocError> {
        if !(1..=4).contains(&level) {
            return Err(AllocError::BadLevel);
        }
        let reuse = self
            .slots
            .iter()
            .position(|s| !s.live && s.frame != 0 && s.level == level);
        let i = match reuse {
            Some(i) => i,
            None => {
                let i = self
                    .slots
                    .iter()
                    .position(|s| s.frame == 0)
                    .or_else(|| self.slots.iter().position(|s| !s.live))
                    .ok_or(AllocError::NoHandles)?;
                let frame = new_frame().ok_or(AllocError::OutOfMemory)?;
                self.slots[i] = Slot {
                    frame,
                    level,
                    live: false,
                };
                i
            }
        };
        self.slots[i].live = true;
        // `i` < MAX_SHADOW_TABLES, a TableHandle itself: never the error.
        let handle = TableHandle::try_from(i).map_err(|_| AllocError::NoHandles)?;
        Ok((handle, self.slots[i].frame))
    }

    /// Marks a table dead; its frame stays bound to its level.
    pub fn free(&mut self, h: TableHandle) -> Result<(), InstallError> {
        let s = self
            .slots
            .get_mut(h as usize)
            .filter(|s| s.live)
            .ok_or(InstallError::UnknownTable)?;
        s.live = false;
        Ok(())
    }

    /// Marks every table dead (the mmu-server restarts): no handle it was
    /// given names a table any more.
    pub fn free_all(&mut self) {
        for s in &mut self.slots {
            s.live = false;
        }
    }

    /// Frame and level of a live table.
    pub fn get(&self, h: TableHandle) -> Option<(u64, u8)> {
        self.slots
            .get(h as usize)
            .filter(|s| s.live)
            .map(|s| (s.frame, s.level))
    }

    /// Checks one install. On success: the host-physical frame of the table,
    /// the index, and the entry to write, with its address made host-physical.
    pub fn check(&self, ins: &Install, ram: GuestRam) -> Result<(u64, usize, u64), InstallError> {
        let (frame, level) = self.get(ins.table).ok_or(InstallError::UnknownTable)?;
        if ins.level != level {
            return Err(InstallError::WrongLevel);
        }
        if ins.index >= 512 || ins.reserved != 0 {
            return Err(InstallError::BadIndex);
        }
        let e = ins.entry;
        if !self.format.present(e) {
            return Ok((frame, usize::from(ins.index), e));
        }
        // Bit 7 is PS at levels 2 and 3, PAT at level 1, reserved at level 4
        // (in EPT: a large leaf at levels 2 and 3, ignored at 1, reserved at 4).
        if level == 4 && e & PTE_PS != 0 {
            return Err(InstallError::BadPageSize);
        }
        let large = (level == 2 || level == 3) && e & PTE_PS != 0;
        let leaf = level == 1 || large;
        let addr = e & PTE_ADDR_MASK;
        let attributes = e & !PTE_ADDR_MASK;
        let misconfigured = self.format == TableFormat::Ept && ept_misconfigured(e, leaf);
        if attributes & !allowed_bits(self.format, leaf, large) != 0 || misconfigured {
            return Err(InstallError::ReservedBits);
        }
        let translated = if leaf {
            let size = leaf_size(level);
            // A large page's address field below the page size holds the
            // PAT bit (12, x86 only); the rest of it is reserved.
            let pat = if self.format == TableFormat::X86 {
                1 << 12
            } else {
                0
            };
            if addr & (size - 1) & !pat != 0 {
                return Err(InstallError::ReservedBits);
            }
            let gpa = addr & !(size - 1);
            let inside = gpa.checked_add(size).is_some_and(|end| end <= ram.bytes);
            if !inside {
                return Err(InstallError::OutsideGuestMemory);
            }
            (e & !PTE_ADDR_MASK) | (addr & (size - 1)) | (ram.hpa_base + gpa)
        } else {
            let child = u32::try_from(addr >> 12).map_err(|_| InstallError::BadChild)?;
            match self.get(child) {
                Some((child_frame, child_level)) if child_level + 1 == level => {
                    (e & !PTE_ADDR_MASK) | child_frame
                }
                _ => return Err(InstallError::BadChild),
            }
        };
        Ok((frame, usize::from(ins.index), translated))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const RAM: GuestRam = GuestRam {
        hpa_base: 0x4000_0000,
        bytes: 16 << 20,
    };

    fn frames() -> impl FnMut() -> Option<u64> {
        let mut next = 0x1000_0000u64;
        move || {
            next += 0x1000;
            Some(next)
        }
    }

    fn install(table: TableHandle, level: u8, index: u16, entry: u64) -> Install {
        Install {
            table,
            index,
            level,
            reserved: 0,
            entry,
        }
    }

    #[test]
    fn leaves_are_translated_into_guest_ram() {
        let mut t = ShadowTables::new();
        let mut f = frames();
        let (pt, pt_frame) = t.alloc(1, &mut f).unwrap();
        let (frame, index, e) = t.check(&install(pt, 1, 3, 0x5000 | 0x67), RAM).unwrap();
        assert_eq!((frame, index), (pt_frame, 3));
        assert_eq!(e, (RAM.hpa_base + 0x5000) | 0x67);
        // The last page of RAM is fine, the page after it is not.
        assert!(t
            .check(&install(pt, 1, 0, (RAM.bytes - 0x1000) | 1), RAM)
            .is_ok());
        assert_eq!(
            t.check(&install(pt, 1, 0, RAM.bytes | 1), RAM),
            Err(InstallError::OutsideGuestMemory)
        );
    }

    #[test]
    fn large_leaves_must_fit_whole() {
        let mut t = ShadowTables::new();
        let mut f = frames();
        let (pd, _) = t.alloc(2, &mut f).unwrap();
        let (pdpt, _) = t.alloc(3, &mut f).unwrap();
        let e = t
            .check(&install(pd, 2, 0, 0x20_0000 | PTE_PS | 1 | 1 << 12), RAM)
            .unwrap()
            .2;
        assert_eq!(
            e,
            (RAM.hpa_base + 0x20_0000) | PTE_PS | 1 | 1 << 12,
            "PAT bit kept"
        );
        assert_eq!(
            t.check(&install(pd, 2, 0, RAM.bytes | PTE_PS | 1), RAM),
            Err(InstallError::OutsideGuestMemory)
        );
        assert_eq!(
            t.check(&install(pdpt, 3, 0, PTE_PS | 1), RAM),
            Err(InstallError::OutsideGuestMemory),
            "1 GiB > 16 MiB of RAM"
        );
        let (pt, _) = t.alloc(1, &mut f).unwrap();
        assert_eq!(
            t.check(&install(pt, 1, 0, PTE_PS | 1), RAM).err(),
            None,
            "bit 7 at level 1 is PAT, not PS"
        );
    }

    #[test]
    fn non_leaves_must_name_a_live_table_one_level_down() {
        let mut t = ShadowTables::new();
        let mut f = frames();
        let (pml4, _) = t.alloc(4, &mut f).unwrap();
        let (pdpt, pdpt_frame) = t.alloc(3, &mut f).unwrap();
        let (pt, _) = t.alloc(1, &mut f).unwrap();
        let e = t
            .check(&install(pml4, 4, 0, (u64::from(pdpt) << 12) | 7), RAM)
            .unwrap()
            .2;
        assert_eq!(e, pdpt_frame | 7);
        assert_eq!(
            t.check(&install(pml4, 4, 0, (u64::from(pt) << 12) | 7), RAM),
            Err(InstallError::BadChild)
        );
        assert_eq!(
            t.check(&install(pml4, 4, 0, (999u64 << 12) | 7), RAM),
            Err(InstallError::BadChild)
        );
        assert_eq!(
            t.check(&install(pml4, 4, 0, PTE_PS | 1), RAM),
            Err(InstallError::BadPageSize)
        );
        t.free(pdpt).unwrap();
        assert_eq!(
            t.check(&install(pml4, 4, 0, (u64::from(pdpt) << 12) | 7), RAM),
            Err(InstallError::BadChild)
        );
    }

    #[test]
    fn bad_tables_levels_and_indices_are_refused() {
        let mut t = ShadowTables::new();
        let mut f = frames();
        let (pt, _) = t.alloc(1, &mut f).unwrap();
        assert_eq!(
            t.check(&install(pt + 1, 1, 0, 0), RAM),
            Err(InstallError::UnknownTable)
        );
        assert_eq!(
            t.check(&install(pt, 2, 0, 0), RAM),
            Err(InstallError::WrongLevel)
        );
        assert_eq!(
            t.check(&install(pt, 1, 512, 0), RAM),
            Err(InstallError::BadIndex)
        );
        assert_eq!(t.alloc(0, &mut f), Err(AllocError::BadLevel));
        assert_eq!(t.alloc(5, &mut f), Err(AllocError::BadLevel));
    }

    /// Two VMs, each with its own tables and RAM (the stub checks a VM's
    /// installs against its own): VM A's mmu-server naming a table of VM B
    /// by handle, or VM B's RAM by address, never reaches it.
    #[test]
    fn a_vms_installs_reach_only_its_own_tables_and_ram() {
        let ram_b = GuestRam {
            hpa_base: RAM.hpa_base + RAM.bytes,
            bytes: RAM.bytes,
        };
        let (mut a, mut b) = (ShadowTables::new(), ShadowTables::new());
        let mut f = frames();
        let (a_pt, _) = a.alloc(1, &mut f).unwrap();
        let (_, _) = b.alloc(1, &mut f).unwrap();
        let (b_pt, b_frame) = b.alloc(1, &mut f).unwrap();
        // B's second handle is no table of A's.
        assert_eq!(
            a.check(&install(b_pt, 1, 0, 0), RAM),
            Err(InstallError::UnknownTable)
        );
        // A's PD cannot point at B's table, by handle or by frame.
        let (a_pd, _) = a.alloc(2, &mut f).unwrap();
        for child in [u64::from(b_pt) << 12, b_frame] {
            assert_eq!(
                a.check(&install(a_pd, 2, 0, child | 7), RAM),
                Err(InstallError::BadChild)
            );
        }
        // B's RAM, as a guest-physical address of A (A's RAM ends where
        // B's host-physical RAM starts) or as B's host-physical address.
        for addr in [RAM.bytes, ram_b.hpa_base] {
            assert_eq!(
                a.check(&install(a_pt, 1, 0, addr | 7), RAM),
                Err(InstallError::OutsideGuestMemory)
            );
        }
        // A's last page lands in A's RAM, never B's.
        let last = RAM.bytes - 0x1000;
        let e = a.check(&install(a_pt, 1, 0, last | 7), RAM).unwrap().2;
        assert_eq!(e & PTE_ADDR_MASK, RAM.hpa_base + last);
        assert!(e & PTE_ADDR_MASK < ram_b.hpa_base);
    }

    #[test]
    fn freed_frames_are_reused_only_at_their_level() {
        let mut t = ShadowTables::new();
        let mut f = frames();
        let (a, a_frame) = t.alloc(1, &mut f).unwrap();
        t.free(a).unwrap();
        let (_, b_frame) = t.alloc(2, &mut f).unwrap();
        assert_ne!(a_frame, b_frame);
        let (_, c_frame) = t.alloc(1, &mut f).unwrap();
        assert_eq!(a_frame, c_frame);
        assert_eq!(t.free(a + 100), Err(InstallError::UnknownTable));
    }

    #[test]
    fn ept_entries_are_present_when_any_of_rwx_is_set() {
        let mut t = ShadowTables::new();
        assert!(t.set_format(TableFormat::Ept));
        let mut f = frames();
        let (pml4, _) = t.alloc(4, &mut f).unwrap();
        let (pd, _) = t.alloc(2, &mut f).unwrap();
        let (pt, _) = t.alloc(1, &mut f).unwrap();
        assert!(!t.set_format(TableFormat::X86), "fixed once a table exists");
        // Bit 0 clear but write or execute set: present in EPT, so checked;
        // write without read is a misconfiguration, refused first.
        for rights in [2u64, 6] {
            assert_eq!(
                t.check(&install(pt, 1, 0, 0x5000 | rights), RAM),
                Err(InstallError::ReservedBits)
            );
        }
        {
            let rights = 4u64;
            assert_eq!(
                t.check(&install(pt, 1, 0, RAM.bytes | rights), RAM),
                Err(InstallError::OutsideGuestMemory)
            );
            assert_eq!(
                t.check(&install(pml4, 4, 0, (999u64 << 12) | rights), RAM),
                Err(InstallError::BadChild)
            );
            assert_eq!(
                t.check(&install(pd, 2, 0, RAM.bytes | 0x80 | rights), RAM),
                Err(InstallError::OutsideGuestMemory),
                "a 2 MiB leaf past the end of RAM"
            );
        }
        assert_eq!(
            t.check(&install(pml4, 4, 0, 0x80 | 7), RAM),
            Err(InstallError::BadPageSize)
        );
        // A write-back 2 MiB leaf and a non-leaf are translated.
        let leaf = 0x20_0000 | 0x80 | (6 << 3) | 7;
        assert_eq!(
            t.check(&install(pd, 2, 1, leaf), RAM).unwrap().2,
            (RAM.hpa_base + 0x20_0000) | 0x80 | (6 << 3) | 7
        );
        assert!(t
            .check(&install(pd, 2, 2, (u64::from(pt) << 12) | 7), RAM)
            .is_ok());
        // Entries with none of R/W/X are not present, whatever else they hold.
        assert_eq!(
            t.check(&install(pt, 1, 0, 0xdead_b000 | 0x38), RAM),
            Ok((t.get(pt).unwrap().0, 0, 0xdead_b000 | 0x38))
        );
    }

    /// Every bit besides the address goes through an allowlist of its
    /// format and kind: protection keys, EPT's sub-page and suppress-#VE
    /// bits, reserved bits below a large page's size, reserved memory types.
    #[test]
    fn attribute_bits_outside_the_allowlist_are_refused() {
        let mut t = ShadowTables::new();
        let mut f = frames();
        let (pt, _) = t.alloc(1, &mut f).unwrap();
        let (pd, _) = t.alloc(2, &mut f).unwrap();
        let (pml4, _) = t.alloc(4, &mut f).unwrap();
        let (pdpt, _) = t.alloc(3, &mut f).unwrap();
        let ok = |t: &ShadowTables, table, level, e| t.check(&install(table, level, 0, e), RAM);
        // x86: a 4 KiB leaf with every allowed bit, then each other bit alone.
        let leaf = 0x5000 | 0x1ff | 0xe00 | 1 << 63;
        assert!(ok(&t, pt, 1, leaf).is_ok());
        let non_leaf = (u64::from(pdpt) << 12) | 0x3f | 0xe00 | 1 << 63;
        assert!(ok(&t, pml4, 4, non_leaf).is_ok());
        for bit in (52..63).chain([6, 8]) {
            assert_eq!(
                ok(&t, pml4, 4, (u64::from(pdpt) << 12) | 1 | 1 << bit),
                Err(InstallError::ReservedBits),
                "non-leaf bit {bit}"
            );
        }
        for bit in 52..63 {
            assert_eq!(
                ok(&t, pt, 1, 0x5001 | 1 << bit),
                Err(InstallError::ReservedBits),
                "leaf bit {bit}"
            );
        }
        // A 2 MiB leaf: PAT (bit 12) is kept, bits 13-20 are reserved.
        assert!(ok(&t, pd, 2, 0x20_0000 | 1 << 12 | 0x81).is_ok());
        assert_eq!(
            ok(&t, pd, 2, 0x20_0000 | 1 << 13 | 0x81),
            Err(InstallError::ReservedBits)
        );
        // EPT: a leaf's reserved memory types and bits 10, 11, 52-63.
        let mut e = ShadowTables::new();
        assert!(e.set_format(TableFormat::Ept));
        let (ept_pt, _) = e.alloc(1, &mut f).unwrap();
        assert!(ok(&e, ept_pt, 1, 0x5000 | 7 | 6 << 3 | 1 << 6 | 3 << 8).is_ok());
        for mt in [2u64, 3, 7] {
            assert_eq!(
                ok(&e, ept_pt, 1, 0x5007 | mt << 3),
                Err(InstallError::ReservedBits)
            );
        }
        for bit in [10, 11, 52, 57, 58, 60, 61, 63] {
            assert_eq!(
                ok(&e, ept_pt, 1, 0x5037 | 1 << bit),
                Err(InstallError::ReservedBits),
                "EPT bit {bit}"
            );
        }
    }

    #[test]
    fn x86_entries_with_bit_0_clear_are_not_present() {
        let mut t = ShadowTables::new();
        let mut f = frames();
        let (pt, frame) = t.alloc(1, &mut f).unwrap();
        assert_eq!(
            t.check(&install(pt, 1, 0, 0xdead_b006), RAM),
            Ok((frame, 0, 0xdead_b006))
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Alloc(u8),
        Free(u16),
        Install(u16, u8, u16, u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1u8..=4).prop_map(Op::Alloc),
            any::<u16>().prop_map(|h| Op::Free(h % 16)),
            (any::<u16>(), 0u8..=5, any::<u16>(), any::<u64>())
                .prop_map(|(h, l, i, e)| Op::Install(h % 16, l, i % 600, e)),
        ]
    }

    /// An mmu-server restart: every handle the old instance held is dead
    /// (an install into it is refused), and the new instance's tables reuse
    /// the frames.
    #[test]
    fn free_all_kills_every_handle() {
        let mut t = ShadowTables::new();
        let mut f = frames();
        let held: Vec<_> = (1..=4).map(|l| t.alloc(l, &mut f).unwrap()).collect();
        t.free_all();
        for &(h, _) in &held {
            assert_eq!(t.get(h), None);
            assert_eq!(t.free(h), Err(InstallError::UnknownTable));
        }
        let (_, frame) = t.alloc(1, &mut f).unwrap();
        assert_eq!(frame, held[0].1, "a dead level-1 frame is reused");
    }

    /// Finding 8: after every handle was used at level 1 and freed, tables
    /// of the other levels could not be had any more.
    #[test]
    fn handles_are_not_bound_to_their_first_level() {
        let mut t = ShadowTables::new();
        let mut f = frames();
        let mut level1 = Vec::new();
        for _ in 0..MAX_SHADOW_TABLES {
            level1.push(t.alloc(1, &mut f).unwrap());
        }
        assert_eq!(t.alloc(2, &mut f), Err(AllocError::NoHandles));
        for &(h, _) in &level1 {
            t.free(h).unwrap();
        }
        let level1: Vec<u64> = level1.into_iter().map(|(_, frame)| frame).collect();
        for level in [2, 3, 4] {
            let (h, frame) = t
                .alloc(level, &mut f)
                .expect("a dead handle takes a new frame");
            assert!(
                !level1.contains(&frame),
                "a level-1 frame became level {level}"
            );
            assert_eq!(t.get(h), Some((frame, level)));
        }
        assert_eq!(t.alloc(0, &mut f), Err(AllocError::BadLevel));
        assert_eq!(t.alloc(5, &mut f), Err(AllocError::BadLevel));
    }

    /// The attack campaign's random resumes: a PAE root whose PDPTEs set
    /// reserved bits made VM entry fail (Bochs VMX, qualification 2) and
    /// VMRUN fail (Bochs ryzen).
    #[test]
    fn pae_pdptes_with_reserved_bits_are_found() {
        assert!(
            pae_pdptes_ok(&[0x1001, 0x1019, 0, 0x1e01]),
            "P, PWT, PCD, bits 9-11"
        );
        for bad in [
            0x1003,
            0x1005,
            0x1021,
            0x1041,
            0x1081,
            0x1101,
            1 << 52 | 1,
            1 << 63 | 1,
        ] {
            assert!(!pae_pdptes_ok(&[0, 0, 0, bad]), "{bad:#x}");
        }
        assert!(
            pae_pdptes_ok(&[0x1003 & !1, 0, 0, 0]),
            "not present: anything goes"
        );
        assert!(pae_pdptes_ok(&[0, 0, 0, 0, 0x1003]), "entry 4 is no PDPTE");
        // On a reload, the A bit QEMU's walk set is cleared; others refuse.
        assert_eq!(
            pae_pdptes_reloaded([0x1021, 0, 0x20, 0]),
            Some([0x1001, 0, 0x20, 0])
        );
        assert_eq!(pae_pdptes_reloaded([0x1023, 0, 0, 0]), None);
    }

    /// Finding 9: a server may free the table loaded as the root (the
    /// 2006 baseline frees every table before it builds the next root);
    /// the frame keeps its level, so whatever table of that level it
    /// becomes, the hardware reads entries checked for that level.
    #[test]
    fn a_freed_root_is_only_ever_reused_as_a_root() {
        let mut t = ShadowTables::new();
        let mut f = frames();
        let (root, frame) = t.alloc(4, &mut f).unwrap();
        t.free(root).unwrap();
        assert_ne!(t.alloc(3, &mut f).unwrap().1, frame);
        assert_ne!(t.alloc(1, &mut f).unwrap().1, frame);
        assert_eq!(t.alloc(4, &mut f).unwrap().1, frame);
    }

    proptest! {
        /// Whatever a server does, every accepted present entry points
        /// either into guest RAM (a leaf) or to a shadow frame whose level
        /// is exactly one below (a non-leaf) -- now and after any frees;
        /// in the x86 and in the EPT format, present as the hardware of
        /// that format decides.
        #[test]
        fn accepted_entries_never_escape(ops in proptest::collection::vec(op(), 1..200), ept in any::<bool>()) {
            let mut t = ShadowTables::new();
            let format = if ept { TableFormat::Ept } else { TableFormat::X86 };
            prop_assert!(t.set_format(format));
            let mut f = frames();
            let mut level_of_frame = std::collections::HashMap::new();
            for o in ops {
                match o {
                    Op::Alloc(l) => if let Ok((_, fr)) = t.alloc(l, &mut f) {
                        let old = level_of_frame.insert(fr, l);
                        prop_assert!(old.is_none() || old == Some(l), "frame reused at another level");
                    },
                    Op::Free(h) => { let _ = t.free(u32::from(h)); }
                    Op::Install(h, l, i, e) => if let Ok((_, _, out)) = t.check(&install(u32::from(h), l, i, e), RAM) {
                        if format.present(out) {
                            let addr = out & PTE_ADDR_MASK;
                            let leaf = l == 1 || (l < 4 && out & PTE_PS != 0);
                            if leaf {
                                let size = leaf_size(l);
                                let base = addr & !(size - 1);
                                prop_assert!(base >= RAM.hpa_base && base + size <= RAM.hpa_base + RAM.bytes);
                            } else {
                                prop_assert_eq!(level_of_frame.get(&addr).copied(), Some(l - 1));
                            }
                        }
                    },
                }
            }
        }
    }
}
