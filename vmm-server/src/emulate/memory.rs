//! Guest memory as the emulator sees it: guest-physical RAM behind
//! [`GuestMemory`], and the linear-to-physical translation behind
//! [`Translate`], with [`PageWalker`] over the shared walker of the
//! guest's own page tables (`guest_walk`, which the mmu-server uses too).
//!
//! On the native stub, guest RAM is mapped zero-copy into the vmm-server at
//! `stub_abi::layout::GUEST_RAM_WINDOW`; [`Ram`] wraps that window (or any
//! byte slice in tests). A guest-physical address outside RAM is not an
//! error of the guest: it is MMIO, which the emulator sends to the devices.
//!
//! The mmu-server can stand in for [`PageWalker`] through [`Translate`],
//! and see every emulated write to RAM (protected page-table writes) by
//! implementing [`GuestMemory`].

use guest_walk::walk::{acc, walk, WalkError};
use guest_walk::{CpuModel, GuestCtl};

use crate::vcpu::{CR0_PG, CR4_SMAP, CR4_SMEP, RFLAGS_AC};

pub use guest_walk::walk::pf;
pub use guest_walk::{Access, GuestMemory, NotRam, Ram};

/// The registers that decide how linear addresses translate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Paging {
    /// CR0 (PG, WP).
    pub cr0: u64,
    /// CR3: the root table.
    pub cr3: u64,
    /// CR4 (PSE, PAE, SMEP, SMAP).
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
    /// A non-canonical address: #GP(0) (the emulator checks canonical
    /// addresses before it translates, so this is a second line).
    NonCanonical,
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

/// The guest's own page tables walked as the CPU walks them, by the shared
/// walker (no paging, 32-bit with PSE-36, PAE, four-level; U/S, R/W with
/// CR0.WP, NX, reserved bits, A/D), plus SMEP and SMAP, which the guest
/// may use under nested paging (the mmu-server refuses them under shadow
/// paging, so the shared walker leaves them out).
#[derive(Clone, Copy, Debug, Default)]
pub struct PageWalker;

/// The CPU the walk models: the PDPTEs are read from memory at each walk
/// (the emulator has no PDPTE registers to look at) with bits 8:5 free,
/// as QEMU's walker has them (it sets A there), 1 GiB pages, and no
/// physical-address bits reserved below the architectural 52.
const CPU: CpuModel = CpuModel {
    max_phys_bits: 52,
    gb_pages: true,
    cr4_supported: u64::MAX,
    efer_supported: u64::MAX,
    pdptes_on_walk: true,
    pdpte_bits_8_5_ignored: true,
};

impl Translate for PageWalker {
    fn translate(
        &mut self,
        mem: &mut dyn GuestMemory,
        p: &Paging,
        linear: u64,
        access: Access,
    ) -> Result<u64, TranslateError> {
        let ctl = GuestCtl {
            cr0: p.cr0,
            cr3: p.cr3,
            cr4: p.cr4,
            efer: p.efer,
            pdptes: [0; 4],
        };
        let smep = p.cr4 & CR4_SMEP != 0;
        // With SMEP a fetch's #PF carries I/D even without NX (SDM vol. 3A, 4.7).
        let fault = |code: u32| {
            let id = if access.fetch && smep { pf::ID } else { 0 };
            TranslateError::Fault(PageFault {
                address: linear,
                error_code: code | id,
            })
        };
        // SMEP and SMAP (SDM vol. 3A, 4.6): a supervisor access to a user
        // page, found by a walk that sets no A/D bit, as the CPU sets none
        // on an access it refuses.
        let smap = p.cr4 & CR4_SMAP != 0 && p.rflags & RFLAGS_AC == 0;
        let paged = p.cr0 & CR0_PG != 0;
        if paged && !access.user && (smep && access.fetch || smap && !access.fetch) {
            if let Ok(t) = walk(mem, &ctl, &CPU, linear, access, false) {
                if t.access & acc::U != 0 {
                    return Err(fault(pf::P | access.error_code_bits(ctl.nx_enabled())));
                }
            }
        }
        match walk(mem, &ctl, &CPU, linear, access, true) {
            Ok(t) => Ok(t.gpa),
            Err(WalkError::PageFault { error_code }) => Err(fault(error_code)),
            Err(WalkError::NonCanonical) => Err(TranslateError::NonCanonical),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::vcpu::{CR0_PE, CR0_PG, CR0_WP, CR4_PAE, CR4_PSE, EFER_LMA, EFER_LME, EFER_NXE};
    use guest_walk::walk::pte::NX as XD;
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
        // Nothing is written outside RAM; the PDE the walk passed is marked
        // accessed, as QEMU's walker marks it (the shared walker's rule).
        assert_eq!(t.get64(0x3000 + 3 * 8), 0xc000_0000 | 0x7 | 0x20);
    }
}
