//! Guest memory as the emulator sees it: guest-physical RAM behind
//! [`GuestMemory`], and the linear-to-physical translation behind
//! [`Translate`], with [`PageWalker`], a walker of the guest's own page
//! tables for every paging mode.
//!
//! On the native stub, guest RAM is mapped zero-copy into the vmm-server at
//! `ipc_proto::layout::GUEST_RAM_WINDOW`; [`Ram`] wraps that window (or any
//! byte slice in tests). A guest-physical address outside RAM is not an
//! error of the guest: it is MMIO, which the emulator sends to the devices.
//!
//! The mmu-server keeps a walker of its own for shadow paging; it can stand
//! in for [`PageWalker`] through [`Translate`], and see every emulated write
//! to RAM (protected page-table writes) by implementing [`GuestMemory`].

use crate::vcpu::{
    CR0_PG, CR0_WP, CR4_LA57, CR4_PAE, CR4_PSE, CR4_SMAP, CR4_SMEP, EFER_LMA, EFER_NXE, RFLAGS_AC,
};

/// The address is not guest RAM (it is MMIO, or nothing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotRam;

/// Guest-physical memory.
pub trait GuestMemory {
    /// Bytes of RAM from guest-physical 0.
    fn ram_bytes(&self) -> u64;

    /// Reads `buf.len()` bytes at `gpa`; [`NotRam`] when any byte lies
    /// outside RAM (nothing is read then).
    fn read_phys(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), NotRam>;

    /// Writes `data` at `gpa`; [`NotRam`] when any byte lies outside RAM
    /// (nothing is written then).
    fn write_phys(&mut self, gpa: u64, data: &[u8]) -> Result<(), NotRam>;
}

/// Guest RAM in one byte slice: guest-physical `gpa` is `bytes[gpa]`.
#[derive(Debug)]
pub struct Ram<'a> {
    bytes: &'a mut [u8],
}

impl<'a> Ram<'a> {
    /// RAM over `bytes`.
    pub fn new(bytes: &'a mut [u8]) -> Self {
        Self { bytes }
    }

    fn range(&self, gpa: u64, len: usize) -> Option<core::ops::Range<usize>> {
        let start = usize::try_from(gpa).ok()?;
        let end = start.checked_add(len)?;
        (end <= self.bytes.len()).then_some(start..end)
    }
}

impl GuestMemory for Ram<'_> {
    fn ram_bytes(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn read_phys(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), NotRam> {
        let r = self.range(gpa, buf.len()).ok_or(NotRam)?;
        buf.copy_from_slice(&self.bytes[r]);
        Ok(())
    }

    fn write_phys(&mut self, gpa: u64, data: &[u8]) -> Result<(), NotRam> {
        let r = self.range(gpa, data.len()).ok_or(NotRam)?;
        self.bytes[r].copy_from_slice(data);
        Ok(())
    }
}

/// How memory is accessed, for the permission checks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Access {
    /// A write.
    pub write: bool,
    /// An instruction fetch.
    pub fetch: bool,
    /// A user-mode access (CPL 3).
    pub user: bool,
}

/// The registers that decide how linear addresses translate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Paging {
    /// CR0 (PG, WP).
    pub cr0: u64,
    /// CR3: the root table.
    pub cr3: u64,
    /// CR4 (PSE, PAE, LA57, SMEP, SMAP).
    pub cr4: u64,
    /// EFER (LMA, NXE).
    pub efer: u64,
    /// RFLAGS (AC, for SMAP).
    pub rflags: u64,
}

/// A page fault: the #PF the access raises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageFault {
    /// The linear address (CR2).
    pub address: u64,
    /// The #PF error code: P, W/R, U/S, RSVD, I/D (bits 0-4).
    pub error_code: u32,
}

/// Why a translation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TranslateError {
    /// The guest takes a page fault.
    Fault(PageFault),
}

/// Linear-to-physical translation.
pub trait Translate {
    /// The guest-physical address of `linear` under `paging`, for `access`;
    /// sets the accessed and dirty bits a hardware walk would set.
    fn translate(
        &mut self,
        mem: &mut dyn GuestMemory,
        paging: &Paging,
        linear: u64,
        access: Access,
    ) -> Result<u64, TranslateError>;
}

/// #PF error code bits.
pub mod pf {
    /// The page was present (a protection violation).
    pub const P: u32 = 1 << 0;
    /// A write.
    pub const W: u32 = 1 << 1;
    /// A user-mode access.
    pub const U: u32 = 1 << 2;
    /// A reserved bit was set in an entry.
    pub const RSVD: u32 = 1 << 3;
    /// An instruction fetch.
    pub const ID: u32 = 1 << 4;
}

const PRESENT: u64 = 1 << 0;
const RW: u64 = 1 << 1;
const US: u64 = 1 << 2;
const ACCESSED: u64 = 1 << 5;
const DIRTY: u64 = 1 << 6;
const PS: u64 = 1 << 7;
const XD: u64 = 1 << 63;
/// Address bits of a 64-bit entry (bits 12..=51).
const ADDR: u64 = 0x000f_ffff_ffff_f000;

/// A walker of the guest's page tables, as the CPU walks them: no paging,
/// 32-bit paging (with PSE and PSE-36 4 MiB pages), PAE (with 2 MiB pages;
/// the four PDPTEs are read from memory at each walk), four- and five-level
/// paging (2 MiB and 1 GiB pages); U/S, R/W with CR0.WP, NX with EFER.NXE,
/// SMEP and SMAP; reserved-bit faults for XD without NXE and for a page
/// size bit where none may be; accessed and dirty bits.
#[derive(Clone, Copy, Debug, Default)]
pub struct PageWalker;

/// One entry read during a walk.
#[derive(Clone, Copy)]
struct Entry {
    gpa: u64,
    value: u64,
    wide: bool,
}

/// Reads one entry. An entry outside guest RAM reads as zero, not
/// present, as in the mmu-server's walker (and KVM's): the guest takes a
/// #PF without P, under shadow and nested paging alike.
fn read_entry(mem: &mut dyn GuestMemory, gpa: u64, wide: bool) -> Result<Entry, TranslateError> {
    let mut b = [0u8; 8];
    let n = if wide { 8 } else { 4 };
    if mem.read_phys(gpa, &mut b[..n]).is_err() {
        b = [0; 8];
    }
    Ok(Entry {
        gpa,
        value: u64::from_le_bytes(b),
        wide,
    })
}

fn set_bits(mem: &mut dyn GuestMemory, e: &Entry, bits: u64) {
    if e.value & bits != bits {
        let v = e.value | bits;
        let n = if e.wide { 8 } else { 4 };
        // The entry was just read from RAM, so it can be written.
        let _ = mem.write_phys(e.gpa, &v.to_le_bytes()[..n]);
    }
}

impl Translate for PageWalker {
    fn translate(
        &mut self,
        mem: &mut dyn GuestMemory,
        p: &Paging,
        linear: u64,
        acc: Access,
    ) -> Result<u64, TranslateError> {
        if p.cr0 & CR0_PG == 0 {
            return Ok(if p.efer & EFER_LMA != 0 {
                linear
            } else {
                linear & 0xffff_ffff
            });
        }
        let fault = |present: bool, rsvd: bool| {
            let mut code = 0;
            if present {
                code |= pf::P;
            }
            if acc.write {
                code |= pf::W;
            }
            if acc.user {
                code |= pf::U;
            }
            if rsvd {
                code |= pf::RSVD | pf::P;
            }
            // I/D: a fetch with SMEP, or with NX enabled, which takes
            // EFER.NXE and PAE or four-level paging (SDM vol. 3, 4.7).
            let nx = p.efer & EFER_NXE != 0 && p.cr4 & CR4_PAE != 0;
            if acc.fetch && (nx || p.cr4 & CR4_SMEP != 0) {
                code |= pf::ID;
            }
            TranslateError::Fault(PageFault {
                address: linear,
                error_code: code,
            })
        };
        let nxe = p.efer & EFER_NXE != 0;
        let mut walked: [Option<Entry>; 5] = [None; 5];
        let mut depth = 0;
        // Accumulated permissions across the levels.
        let (mut rw, mut us, mut xd) = (true, true, false);
        let (pa, leaf) = if p.efer & EFER_LMA == 0 && p.cr4 & CR4_PAE == 0 {
            // 32-bit paging.
            let pde = read_entry(
                mem,
                (p.cr3 & 0xffff_f000) | (((linear >> 22) & 0x3ff) * 4),
                false,
            )?;
            if pde.value & PRESENT == 0 {
                return Err(fault(false, false));
            }
            walked[depth] = Some(pde);
            depth += 1;
            rw &= pde.value & RW != 0;
            us &= pde.value & US != 0;
            if pde.value & PS != 0 && p.cr4 & CR4_PSE != 0 {
                let high = ((pde.value >> 13) & 0xff) << 32;
                let pa = (pde.value & 0xffc0_0000) | high | (linear & 0x3f_ffff);
                (pa, pde)
            } else {
                let pte = read_entry(
                    mem,
                    (pde.value & 0xffff_f000) | (((linear >> 12) & 0x3ff) * 4),
                    false,
                )?;
                if pte.value & PRESENT == 0 {
                    return Err(fault(false, false));
                }
                walked[depth] = Some(pte);
                depth += 1;
                rw &= pte.value & RW != 0;
                us &= pte.value & US != 0;
                ((pte.value & 0xffff_f000) | (linear & 0xfff), pte)
            }
        } else {
            // PAE, four-level or five-level: 64-bit entries, 9 bits a level.
            let (mut table, mut level) = if p.efer & EFER_LMA == 0 {
                let pdpte = read_entry(
                    mem,
                    (p.cr3 & 0xffff_ffe0) | (((linear >> 30) & 3) * 8),
                    true,
                )?;
                if pdpte.value & PRESENT == 0 {
                    return Err(fault(false, false));
                }
                // Legacy PDPTEs have no R/W, U/S or XD: bits 1, 2 and 63 are
                // reserved. (Intel reserves 5-8 too; AMD, and QEMU, set the
                // accessed bit 5 in them.)
                if pdpte.value & (0x6 | XD) != 0 {
                    return Err(fault(true, true));
                }
                (pdpte.value & ADDR, 2u32)
            } else if p.cr4 & CR4_LA57 != 0 {
                (p.cr3 & ADDR, 5)
            } else {
                (p.cr3 & ADDR, 4)
            };
            loop {
                let index = (linear >> (12 + 9 * (level - 1))) & 0x1ff;
                let e = read_entry(mem, table + index * 8, true)?;
                if e.value & PRESENT == 0 {
                    return Err(fault(false, false));
                }
                if e.value & XD != 0 && !nxe {
                    return Err(fault(true, true));
                }
                if depth < walked.len() {
                    walked[depth] = Some(e);
                    depth += 1;
                }
                rw &= e.value & RW != 0;
                us &= e.value & US != 0;
                xd |= e.value & XD != 0;
                let large = e.value & PS != 0 && level > 1;
                if large && level > 3 {
                    // No page-size bit in a PML4E or PML5E.
                    return Err(fault(true, true));
                }
                if level == 1 || large {
                    let page_mask = (1u64 << (12 + 9 * (level - 1))) - 1;
                    let base = if large {
                        // Bit 12 of a large page entry is PAT.
                        e.value & ADDR & !page_mask
                    } else {
                        e.value & ADDR
                    };
                    break (base | (linear & page_mask), e);
                }
                table = e.value & ADDR;
                level -= 1;
            }
        };
        // Permission checks (APM vol. 2, 5.6; SDM vol. 3A, 4.6).
        let smap =
            !acc.user && !acc.fetch && us && p.cr4 & CR4_SMAP != 0 && p.rflags & RFLAGS_AC == 0;
        let denied = (acc.user && !us)
            || (acc.write && !rw && (acc.user || p.cr0 & CR0_WP != 0))
            || (acc.fetch && xd && nxe)
            || (acc.fetch && !acc.user && us && p.cr4 & CR4_SMEP != 0)
            || smap;
        if denied {
            return Err(fault(true, false));
        }
        for e in walked.iter().take(depth).flatten() {
            set_bits(mem, e, ACCESSED);
        }
        if acc.write {
            // Re-read: the accessed bit may just have been set in the same entry.
            let leaf = read_entry(mem, leaf.gpa, leaf.wide)?;
            set_bits(mem, &leaf, DIRTY);
        }
        Ok(pa)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::vcpu::{CR0_PE, EFER_LME};
    use std::vec;
    use std::vec::Vec;

    /// A guest RAM for tests, with helpers to build page tables.
    pub(crate) struct TestRam {
        pub(crate) bytes: Vec<u8>,
    }

    impl TestRam {
        pub(crate) fn new(size: usize) -> Self {
            Self {
                bytes: vec![0; size],
            }
        }
        pub(crate) fn ram(&mut self) -> Ram<'_> {
            Ram::new(&mut self.bytes)
        }
        pub(crate) fn put32(&mut self, at: u64, v: u32) {
            self.bytes[at as usize..at as usize + 4].copy_from_slice(&v.to_le_bytes());
        }
        pub(crate) fn put64(&mut self, at: u64, v: u64) {
            self.bytes[at as usize..at as usize + 8].copy_from_slice(&v.to_le_bytes());
        }
        pub(crate) fn get64(&self, at: u64) -> u64 {
            u64::from_le_bytes(self.bytes[at as usize..at as usize + 8].try_into().unwrap())
        }
    }

    fn tr(ram: &mut TestRam, p: &Paging, lin: u64, acc: Access) -> Result<u64, TranslateError> {
        PageWalker.translate(&mut ram.ram(), p, lin, acc)
    }

    const R: Access = Access {
        write: false,
        fetch: false,
        user: false,
    };
    const W: Access = Access {
        write: true,
        fetch: false,
        user: false,
    };

    fn pf(lin: u64, code: u32) -> Result<u64, TranslateError> {
        Err(TranslateError::Fault(PageFault {
            address: lin,
            error_code: code,
        }))
    }

    #[test]
    fn ram_bounds() {
        let mut t = TestRam::new(16);
        let mut r = t.ram();
        let mut b = [0u8; 4];
        assert!(r.read_phys(12, &mut b).is_ok());
        assert_eq!(r.read_phys(13, &mut b), Err(NotRam));
        assert_eq!(r.write_phys(u64::MAX, &[1]), Err(NotRam));
        assert_eq!(r.ram_bytes(), 16);
    }

    #[test]
    fn paging_off_is_identity_truncated_to_32_bits() {
        let mut t = TestRam::new(4096);
        let p = Paging {
            cr0: CR0_PE,
            ..Default::default()
        };
        assert_eq!(tr(&mut t, &p, 0x1_0000_1234, R), Ok(0x1234));
    }

    #[test]
    fn thirty_two_bit_paging_with_4k_and_4m_pages() {
        let mut t = TestRam::new(0x10000);
        // PD at 0x1000, PT at 0x2000.
        t.put32(0x1000 + 4, 0x2000 | 0x7); // 4 MiB..8 MiB via PT, user rw
        t.put32(0x2000 + 4 * 5, 0x0000_9000 | 0x1); // 0x405000 -> 0x9000, supervisor ro
        t.put32(0x1000 + 4 * 2, 0x00c0_0000 | 0x83 | (0x3 << 13)); // 8 MiB 4M page, PSE-36 high bits 3
        let p = Paging {
            cr0: CR0_PE | CR0_PG | CR0_WP,
            cr3: 0x1000,
            cr4: CR4_PSE,
            ..Default::default()
        };
        assert_eq!(tr(&mut t, &p, 0x40_5123, R), Ok(0x9123));
        assert_eq!(t.bytes[0x2000 + 20] & 0x20, 0x20, "accessed bit set");
        assert_eq!(
            tr(&mut t, &p, 0x40_5123, W),
            pf(0x40_5123, pf::P | pf::W),
            "read-only with WP"
        );
        let user_read = Access { user: true, ..R };
        assert_eq!(
            tr(&mut t, &p, 0x40_5000, user_read),
            pf(0x40_5000, pf::P | pf::U),
            "supervisor page"
        );
        assert_eq!(tr(&mut t, &p, 0x80_1234, W), Ok(0x3_00c0_1234));
        assert_eq!(t.bytes[0x1008] & 0x60, 0x60, "A and D on the 4M PDE");
        assert_eq!(tr(&mut t, &p, 0x1000, R), pf(0x1000, 0), "not present");
        let nxe = Paging {
            efer: EFER_NXE,
            ..p
        };
        let fetch = Access { fetch: true, ..R };
        assert_eq!(
            tr(&mut t, &nxe, 0x1000, fetch),
            pf(0x1000, 0),
            "no I/D: EFER.NXE means nothing without PAE"
        );
        let no_wp = Paging {
            cr0: CR0_PE | CR0_PG,
            ..p
        };
        assert_eq!(
            tr(&mut t, &no_wp, 0x40_5000, W),
            Ok(0x9000),
            "supervisor ignores R/W without WP"
        );
    }

    #[test]
    fn pae_paging_with_nx_and_reserved_bits() {
        let mut t = TestRam::new(0x10000);
        // PDPT at 0x1000 (32-byte aligned), PD at 0x2000, PT at 0x3000.
        t.put64(0x1000, 0x2000 | 1);
        t.put64(0x2000, 0x3000 | 0x7);
        t.put64(0x3000 + 8 * 3, 0x5000 | 0x7 | XD);
        t.put64(0x2000 + 8, 0x0020_0000 | 0x87); // 2 MiB page at 2 MiB
        let p = Paging {
            cr0: CR0_PE | CR0_PG | CR0_WP,
            cr3: 0x1000,
            cr4: CR4_PAE,
            efer: EFER_NXE,
            ..Default::default()
        };
        let fetch = Access { fetch: true, ..R };
        assert_eq!(tr(&mut t, &p, 0x3abc, R), Ok(0x5abc));
        assert_eq!(tr(&mut t, &p, 0x3abc, fetch), pf(0x3abc, pf::P | pf::ID));
        assert_eq!(tr(&mut t, &p, 0x20_0042, W), Ok(0x20_0042));
        let no_nxe = Paging { efer: 0, ..p };
        assert_eq!(
            tr(&mut t, &no_nxe, 0x3abc, R),
            pf(0x3abc, pf::P | pf::RSVD),
            "XD without NXE"
        );
        t.put64(0x1000, 0x2000 | 1 | 2);
        assert_eq!(
            tr(&mut t, &p, 0x3abc, R),
            pf(0x3abc, pf::P | pf::RSVD),
            "R/W in a PDPTE"
        );
    }

    #[test]
    fn four_level_paging_with_large_pages_and_smep_smap() {
        let mut t = TestRam::new(0x10000);
        // PML4 0x1000, PDPT 0x2000, PD 0x3000, PT 0x4000.
        let lin: u64 = 0xffff_8000_0040_3000;
        let i4 = (lin >> 39) & 0x1ff;
        t.put64(0x1000 + i4 * 8, 0x2000 | 0x7);
        t.put64(0x2000, 0x3000 | 0x7);
        t.put64(0x3000 + 2 * 8, 0x4000 | 0x7);
        t.put64(0x4000 + 3 * 8, 0x8000 | 0x7);
        // A 1 GiB page in PDPT entry 1 (supervisor).
        t.put64(0x2000 + 8, 0x4000_0000 | 0x83);
        let p = Paging {
            cr0: CR0_PE | CR0_PG | CR0_WP,
            cr3: 0x1000,
            cr4: CR4_PAE | CR4_SMEP | CR4_SMAP,
            efer: EFER_LMA | EFER_LME | EFER_NXE,
            ..Default::default()
        };
        let user = Access { user: true, ..R };
        assert_eq!(tr(&mut t, &p, lin | 0x12, user), Ok(0x8012));
        assert_eq!(
            tr(&mut t, &p, lin, R),
            pf(lin, pf::P),
            "SMAP: supervisor read of a user page"
        );
        let ac = Paging {
            rflags: RFLAGS_AC,
            ..p
        };
        assert_eq!(tr(&mut t, &ac, lin, R), Ok(0x8000), "AC lifts SMAP");
        let sfetch = Access { fetch: true, ..R };
        assert_eq!(
            tr(&mut t, &ac, lin, sfetch),
            pf(lin, pf::P | pf::ID),
            "SMEP"
        );
        let big = (i4 << 39) | 0xffff_0000_0000_0000 | (1 << 30) | 0x1234_5678;
        assert_eq!(tr(&mut t, &p, big, W), Ok(0x4000_0000 | 0x1234_5678));
        assert_eq!(t.get64(0x2008) & 0x60, 0x60);
        t.put64(0x1000 + i4 * 8, 0x2000 | 0x87);
        assert_eq!(
            tr(&mut t, &p, lin, user),
            pf(lin, pf::P | pf::U | pf::RSVD),
            "PS in a PML4E"
        );
    }

    #[test]
    fn entries_outside_ram_read_as_not_present() {
        let mut t = TestRam::new(0x4000);
        let mut p = Paging {
            cr0: CR0_PE | CR0_PG,
            cr3: 0xfee0_0000,
            ..Default::default()
        };
        assert_eq!(tr(&mut t, &p, 0, R), pf(0, 0));
        // Four-level paging: a PDE in RAM naming a page table at 3 GiB.
        p.cr3 = 0x1000;
        p.cr4 = CR4_PAE;
        p.efer = EFER_LME | EFER_LMA | EFER_NXE;
        t.put64(0x1000, 0x2000 | 0x7);
        t.put64(0x2000, 0x3000 | 0x7);
        t.put64(0x3000 + 3 * 8, 0xc000_0000 | 0x7);
        let lin = 0x60_1000;
        let user_fetch = Access {
            fetch: true,
            user: true,
            write: false,
        };
        assert_eq!(tr(&mut t, &p, lin, user_fetch), pf(lin, pf::U | pf::ID));
        // Nothing is written outside RAM, and nothing below is marked accessed.
        assert_eq!(t.get64(0x3000 + 3 * 8), 0xc000_0000 | 0x7);
    }
}
