//! The simulated host CPU: which paging controls it implements, what its
//! VM entry (VMRUN) accepts, which paging mode a loaded state selects, and
//! the access-rights rules of its page walker. Written from the manuals
//! (AMD APM vol. 2 ch. 5 and 15.5.1; Intel SDM vol. 3A ch. 4, vol. 3C
//! 27.3.1), separately from the stub's checks: it is the oracle that
//! catches a validator that accepts too much.
//!
//! Every paging-control bit the CPU honours is modelled:
//!
//! | bit | what the walker does with it |
//! |---|---|
//! | CR0.PG | off: linear = host-physical (under shadow paging) |
//! | CR0.WP | supervisor writes to read-only pages fault; PKRU.WD applies to supervisor writes |
//! | CR4.PAE | off: 32-bit paging (4-byte entries, two levels) |
//! | CR4.PSE | 4 MiB pages (PSE-36) in 32-bit paging; ignored with PAE |
//! | CR4.PGE | G in a leaf makes the TLB entry survive a non-global flush |
//! | CR4.LA57 | with IA-32e paging: 5-level walk, the root read as a PML5; 57-bit canonical addresses |
//! | CR4.PCIDE | CR3\[11:0\] is a PCID that tags TLB entries; needs EFER.LMA at entry |
//! | CR4.SMEP | supervisor fetches from user pages fault |
//! | CR4.SMAP | supervisor data accesses to user pages fault unless explicit with RFLAGS.AC = 1 |
//! | CR4.PKE | IA-32e only: key in leaf bits 62:59; PKRU.AD/WD on data accesses to user pages |
//! | CR4.PKS | IA-32e only: the same with IA32_PKRS for supervisor pages |
//! | EFER.LME/LMA | IA-32e paging (4- or 5-level) |
//! | EFER.NXE | XD (bit 63) honoured; reserved when clear |
//!
//! Bits the simulated CPU does not implement (CET, LAM, VMXE under SVM,
//! SMXE, ...) are reserved: a state holding one fails VM entry, as VMRUN's
//! consistency checks fail it.

use ipc_proto::PagingState;

/// CR0, CR4 and EFER bits, as `ipc-proto` names them for every crate.
pub use ipc_proto::x86::{cr0, cr4, efer};

/// Page-fault error-code bits the walker reports.
pub mod pf {
    pub use mmu_server::walk::pf::{ID, P, RSVD, U, W};
    /// A protection-key violation.
    pub const PK: u32 = 1 << 5;
}

/// The simulated host CPU's paging features.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimCpu {
    /// MAXPHYADDR: entry bits from here to 51 are reserved.
    pub max_phys_bits: u32,
    /// CR4 bits the CPU implements (the rest are reserved).
    pub cr4: u64,
    /// EFER bits the CPU implements.
    pub efer: u64,
    /// 1 GiB pages (PS in a PDPTE).
    pub gb_pages: bool,
    /// XCR0 bits the CPU supports (CPUID 0xD.0 EAX); XSAVE itself is
    /// `cr4`'s OSXSAVE.
    pub xcr0: u64,
}

impl SimCpu {
    /// A CPU with every paging feature the walker models, LA57, PCID,
    /// SMEP, SMAP, PKU and PKS included: what a server can try is bounded
    /// by the validator, not by a small CPU.
    pub const ALL: SimCpu = SimCpu {
        max_phys_bits: 48,
        cr4: cr4::VME
            | cr4::PVI
            | cr4::TSD
            | cr4::DE
            | cr4::PSE
            | cr4::PAE
            | cr4::MCE
            | cr4::PGE
            | cr4::PCE
            | cr4::OSFXSR
            | cr4::OSXMMEXCPT
            | cr4::UMIP
            | cr4::LA57
            | cr4::FSGSBASE
            | cr4::PCIDE
            | cr4::OSXSAVE
            | cr4::SMEP
            | cr4::SMAP
            | cr4::PKE
            | cr4::PKS,
        efer: efer::SCE
            | efer::LME
            | efer::LMA
            | efer::NXE
            | efer::SVME
            | efer::LMSLE
            | efer::FFXSR
            | efer::TCE,
        gb_pages: true,
        // x87, SSE, AVX, MPX, AVX-512, PKRU: more than a guest may get.
        xcr0: 0x2ff,
    };

    /// What CPUID reports for this CPU (EAX, EBX, ECX, EDX), for the
    /// leaves a validator reads features from.
    pub fn cpuid(&self, leaf: u32, _subleaf: u32) -> [u32; 4] {
        let has = |bit: u64, cpuid_bit: u32| -> u32 {
            if self.cr4 & bit != 0 {
                1 << cpuid_bit
            } else {
                0
            }
        };
        let efer_has = |bit: u64, cpuid_bit: u32| -> u32 {
            if self.efer & bit != 0 {
                1 << cpuid_bit
            } else {
                0
            }
        };
        match leaf {
            0 => [0xd, 0, 0, 0],
            1 => [
                0,
                0,
                has(cr4::PCIDE, 17) | has(cr4::OSXSAVE, 26),
                has(cr4::VME, 1)
                    | has(cr4::DE, 2)
                    | has(cr4::PSE, 3)
                    | has(cr4::PAE, 6)
                    | has(cr4::MCE, 7)
                    | has(cr4::PGE, 13)
                    | has(cr4::OSFXSR, 24)
                    | has(cr4::OSXMMEXCPT, 25),
            ],
            7 => [
                0,
                has(cr4::FSGSBASE, 0) | has(cr4::SMEP, 7) | has(cr4::SMAP, 20),
                has(cr4::UMIP, 2) | has(cr4::PKE, 3) | has(cr4::LA57, 16) | has(cr4::PKS, 31),
                0,
            ],
            0xd if _subleaf == 0 => [self.xcr0 as u32, 0, 0, 0],
            0x8000_0000 => [0x8000_0008, 0, 0, 0],
            0x8000_0001 => [
                0,
                0,
                0,
                efer_has(efer::NXE, 20)
                    | if self.gb_pages { 1 << 26 } else { 0 }
                    | efer_has(efer::LME, 29),
            ],
            0x8000_0008 => [self.max_phys_bits | (57 << 8), 0, 0, 0],
            _ => [0; 4],
        }
    }
}

/// The paging mode a loaded state makes the hardware use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HwMode {
    /// CR0.PG clear: linear addresses are host-physical.
    Off,
    /// 32-bit paging: a two-level walk of 4-byte entries from CR3\[31:12\].
    Bits32,
    /// PAE paging: four PDPTE registers loaded at entry from CR3\[31:5\].
    Pae,
    /// IA-32e paging with four levels (root read as a PML4).
    Long4,
    /// IA-32e paging with five levels (CR4.LA57: root read as a PML5).
    Long5,
}

impl HwMode {
    /// The level the walk reads the root at (32-bit paging: 2; PAE: 3).
    pub fn root_level(self) -> Option<u8> {
        match self {
            HwMode::Off => None,
            HwMode::Bits32 => Some(2),
            HwMode::Pae => Some(3),
            HwMode::Long4 => Some(4),
            HwMode::Long5 => Some(5),
        }
    }

    /// Entries are 8 bytes (PAE and IA-32e) rather than 4.
    pub fn wide(self) -> bool {
        !matches!(self, HwMode::Bits32)
    }

    /// IA-32e paging.
    pub fn long(self) -> bool {
        matches!(self, HwMode::Long4 | HwMode::Long5)
    }
}

/// The register checks VM entry (VMRUN) makes on a paging state, as the
/// stub applies it (EFER.SVME set), and the mode the hardware then walks
/// in. `Err` says why the entry fails: the guest does not run.
pub fn entry_mode(cpu: &SimCpu, ps: &PagingState) -> Result<HwMode, String> {
    let efer = ps.efer | efer::SVME;
    let (c0, c4) = (ps.cr0, ps.cr4);
    let fail = |why: &str| Err(format!("VM entry failed: {why}"));
    if c0 & !cr0::DEFINED != 0 {
        return fail(&format!("CR0 {c0:#x} has reserved bits"));
    }
    if c0 & cr0::NW != 0 && c0 & cr0::CD == 0 {
        return fail("CR0.NW set with CR0.CD clear");
    }
    if c4 & !cpu.cr4 != 0 {
        return fail(&format!(
            "CR4 {c4:#x} has bits this CPU reserves ({:#x})",
            c4 & !cpu.cr4
        ));
    }
    if efer & !cpu.efer != 0 {
        return fail(&format!("EFER {efer:#x} has reserved bits"));
    }
    let pg = c0 & cr0::PG != 0;
    let pae = c4 & cr4::PAE != 0;
    let lme = efer & efer::LME != 0;
    let lma = efer & efer::LMA != 0;
    if lme && pg && !pae {
        return fail("EFER.LME and CR0.PG set with CR4.PAE clear");
    }
    if lme && pg && c0 & cr0::PE == 0 {
        return fail("EFER.LME and CR0.PG set with CR0.PE clear");
    }
    // VMX checks EFER.LMA against the IA-32e-mode entry control and
    // LME = LMA when PG is set (SDM vol. 3C, 27.3.1.1); on SVM the CPU's
    // long-mode state follows the loaded EFER, so a mismatch is refused.
    if lma != (lme && pg) {
        return fail("EFER.LMA does not equal EFER.LME and CR0.PG");
    }
    if c4 & cr4::PCIDE != 0 && !lma {
        return fail("CR4.PCIDE set outside IA-32e mode");
    }
    Ok(if !pg {
        HwMode::Off
    } else if !pae {
        HwMode::Bits32
    } else if !lma {
        HwMode::Pae
    } else if c4 & cr4::LA57 != 0 {
        HwMode::Long5
    } else {
        HwMode::Long4
    })
}

/// One access as the hardware sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HwAccess {
    /// A write.
    pub write: bool,
    /// An instruction fetch.
    pub fetch: bool,
    /// A user-mode access (CPL 3, not implicit).
    pub user: bool,
    /// An implicit supervisor-mode access (descriptor tables, the TSS;
    /// also when made at CPL 3): SMAP applies whatever RFLAGS.AC says.
    pub implicit: bool,
    /// RFLAGS.AC when the access was made.
    pub ac: bool,
}

impl From<mmu_server::walk::Access> for HwAccess {
    fn from(a: mmu_server::walk::Access) -> Self {
        Self {
            write: a.write,
            fetch: a.fetch,
            user: a.user,
            implicit: false,
            ac: false,
        }
    }
}

/// What the entries of one translation allow (the AND of R/W and U/S and
/// the OR of XD over every level), with the leaf's protection key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rights {
    /// R/W set at every level.
    pub writable: bool,
    /// U/S set at every level: a user-mode address.
    pub user: bool,
    /// XD clear at every level (or NXE clear).
    pub exec: bool,
    /// Leaf bits 62:59 (IA-32e paging), else 0.
    pub pkey: u8,
}

/// The paging controls the access rights depend on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Controls {
    /// CR0.WP.
    pub wp: bool,
    /// CR4.SMEP.
    pub smep: bool,
    /// CR4.SMAP.
    pub smap: bool,
    /// CR4.PKE (IA-32e paging only).
    pub pke: bool,
    /// CR4.PKS (IA-32e paging only).
    pub pks: bool,
    /// EFER.NXE and not 32-bit paging: I/D is reported.
    pub nx: bool,
    /// PKRU.
    pub pkru: u32,
    /// IA32_PKRS.
    pub pkrs: u32,
}

impl Controls {
    /// The controls of `ps` in `mode`, with the key registers.
    pub fn of(ps: &PagingState, mode: HwMode, pkru: u32, pkrs: u32) -> Self {
        let long = mode.long();
        Self {
            wp: ps.cr0 & cr0::WP != 0,
            smep: ps.cr4 & cr4::SMEP != 0,
            smap: ps.cr4 & cr4::SMAP != 0,
            pke: long && ps.cr4 & cr4::PKE != 0,
            pks: long && ps.cr4 & cr4::PKS != 0,
            nx: mode.wide() && ps.efer & efer::NXE != 0,
            pkru,
            pkrs,
        }
    }

    /// The error-code bits every fault of `a` carries (W, U, I/D).
    pub fn base_error(&self, a: HwAccess) -> u32 {
        let mut ec = 0;
        if a.write {
            ec |= pf::W;
        }
        if a.user {
            ec |= pf::U;
        }
        if a.fetch && (self.nx || self.smep) {
            ec |= pf::ID;
        }
        ec
    }

    /// Whether `rights` allow `a` (SDM vol. 3A, 4.6; APM vol. 2, 5.6):
    /// `Err` is the #PF error code.
    pub fn check(&self, rights: Rights, a: HwAccess) -> Result<(), u32> {
        let base = self.base_error(a) | pf::P;
        // Protection keys come first: an access both rights and keys
        // refuse reports PK.
        if !a.fetch {
            let keyed = if rights.user {
                self.pke.then_some(self.pkru)
            } else {
                self.pks.then_some(self.pkrs)
            };
            if let Some(reg) = keyed {
                let k = u32::from(rights.pkey) * 2;
                let ad = reg >> k & 1 != 0;
                let wd = reg >> (k + 1) & 1 != 0;
                if ad || (a.write && wd && (a.user || self.wp)) {
                    // A user access to a supervisor page faults on U/S
                    // alone, without PK.
                    if a.user && !rights.user {
                        return Err(base);
                    }
                    return Err(base | pf::PK);
                }
            }
        }
        let ok = if a.user {
            rights.user && (!a.write || rights.writable) && (!a.fetch || rights.exec)
        } else if a.fetch {
            rights.exec && !(self.smep && rights.user)
        } else {
            let smap_blocks = self.smap && rights.user && (a.implicit || !a.ac);
            !smap_blocks && (!a.write || rights.writable || !self.wp)
        };
        if ok {
            Ok(())
        } else {
            Err(base)
        }
    }
}

/// `la` is canonical for a walk of `levels` (48 or 57 bits).
pub fn canonical(la: u64, mode: HwMode) -> bool {
    let bits = if mode == HwMode::Long5 { 57 } else { 48 };
    let top = la.cast_signed() >> (bits - 1);
    top == 0 || top == -1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ps(cr0: u64, cr4: u64, efer: u64) -> PagingState {
        PagingState {
            cr0,
            cr4,
            efer,
            root: 0,
            flags: 0,
        }
    }

    #[test]
    fn modes_follow_pg_pae_lma_and_la57() {
        let c = SimCpu::ALL;
        let pg = cr0::PG | cr0::PE;
        let long = efer::LME | efer::LMA;
        assert_eq!(entry_mode(&c, &ps(cr0::PE, 0, 0)), Ok(HwMode::Off));
        assert_eq!(entry_mode(&c, &ps(pg, 0, 0)), Ok(HwMode::Bits32));
        assert_eq!(entry_mode(&c, &ps(pg, cr4::PSE, 0)), Ok(HwMode::Bits32));
        assert_eq!(entry_mode(&c, &ps(pg, cr4::PAE, 0)), Ok(HwMode::Pae));
        assert_eq!(
            entry_mode(&c, &ps(pg, cr4::PAE | cr4::LA57, 0)),
            Ok(HwMode::Pae),
            "LA57 only matters in IA-32e mode"
        );
        assert_eq!(entry_mode(&c, &ps(pg, cr4::PAE, long)), Ok(HwMode::Long4));
        assert_eq!(
            entry_mode(&c, &ps(pg, cr4::PAE | cr4::LA57, long)),
            Ok(HwMode::Long5)
        );
        for bad in [
            ps(pg | 1 << 32, cr4::PAE, 0),
            ps(pg | cr0::NW, cr4::PAE, 0),
            ps(pg, cr4::PAE | cr4::CET, 0),
            ps(pg, cr4::PAE | cr4::VMXE, 0),
            ps(pg, cr4::PAE | 1 << 40, 0),
            ps(pg, cr4::PAE, 1 << 20),
            ps(pg, 0, long),
            ps(cr0::PG, cr4::PAE, long),
            ps(pg, cr4::PAE, efer::LME),
            ps(pg, cr4::PAE, efer::LMA),
            ps(pg, cr4::PAE | cr4::PCIDE, 0),
        ] {
            assert!(entry_mode(&c, &bad).is_err(), "{bad:?}");
        }
        let small = SimCpu {
            cr4: SimCpu::ALL.cr4 & !cr4::LA57,
            ..SimCpu::ALL
        };
        assert!(entry_mode(&small, &ps(pg, cr4::PAE | cr4::LA57, long)).is_err());
    }

    #[test]
    fn access_rights_follow_wp_smep_smap_and_keys() {
        let ctl = Controls {
            wp: true,
            smep: true,
            smap: true,
            pke: true,
            pks: true,
            nx: true,
            pkru: 0,
            pkrs: 0,
        };
        let user_rw = Rights {
            writable: true,
            user: true,
            exec: true,
            pkey: 3,
        };
        let sup_ro = Rights {
            writable: false,
            user: false,
            exec: true,
            pkey: 3,
        };
        let sup = |write, fetch, ac, implicit| HwAccess {
            write,
            fetch,
            user: false,
            implicit,
            ac,
        };
        let usr = |write| HwAccess {
            write,
            user: true,
            ..HwAccess::default()
        };
        assert_eq!(ctl.check(user_rw, usr(true)), Ok(()));
        assert_eq!(
            ctl.check(user_rw, sup(false, true, false, false)),
            Err(pf::P | pf::ID),
            "SMEP"
        );
        assert_eq!(
            ctl.check(user_rw, sup(false, false, false, false)),
            Err(pf::P),
            "SMAP, AC clear"
        );
        assert_eq!(ctl.check(user_rw, sup(true, false, true, false)), Ok(()));
        assert_eq!(
            ctl.check(user_rw, sup(false, false, true, true)),
            Err(pf::P),
            "SMAP: implicit accesses ignore AC"
        );
        assert_eq!(
            ctl.check(sup_ro, sup(true, false, false, false)),
            Err(pf::P | pf::W),
            "WP"
        );
        let no_wp = Controls { wp: false, ..ctl };
        assert_eq!(no_wp.check(sup_ro, sup(true, false, false, false)), Ok(()));
        assert_eq!(
            ctl.check(sup_ro, usr(false)),
            Err(pf::P | pf::U),
            "user access to a supervisor page"
        );
        // Key 3: AD is PKRU bit 6, WD bit 7.
        let ad = Controls {
            pkru: 1 << 6,
            ..ctl
        };
        assert_eq!(ad.check(user_rw, usr(false)), Err(pf::P | pf::U | pf::PK));
        let user_rw_fetch = HwAccess {
            fetch: true,
            ..usr(false)
        };
        assert_eq!(
            ad.check(user_rw, user_rw_fetch),
            Ok(()),
            "keys do not apply to fetches"
        );
        let wd = Controls {
            pkru: 1 << 7,
            ..ctl
        };
        assert_eq!(wd.check(user_rw, usr(false)), Ok(()));
        assert_eq!(
            wd.check(user_rw, usr(true)),
            Err(pf::P | pf::W | pf::U | pf::PK)
        );
        assert_eq!(
            wd.check(user_rw, sup(true, false, true, false)),
            Err(pf::P | pf::W | pf::PK),
            "WD applies to supervisor writes with WP"
        );
        let wd_no_wp = Controls { wp: false, ..wd };
        assert_eq!(
            wd_no_wp.check(user_rw, sup(true, false, true, false)),
            Ok(())
        );
        let pks = Controls {
            pkrs: 1 << 6,
            ..ctl
        };
        assert_eq!(
            pks.check(sup_ro, sup(false, false, false, false)),
            Err(pf::P | pf::PK)
        );
        assert_eq!(
            pks.check(user_rw, usr(false)),
            Ok(()),
            "PKRS: supervisor pages only"
        );
    }

    #[test]
    fn canonical_addresses_depend_on_la57() {
        assert!(canonical(0x7fff_ffff_f000, HwMode::Long4));
        assert!(!canonical(0x8000_0000_0000, HwMode::Long4));
        assert!(canonical(0x8000_0000_0000, HwMode::Long5));
        assert!(canonical(0xff00_0000_0000_0000, HwMode::Long5));
        assert!(!canonical(0x0100_0000_0000_0000, HwMode::Long5));
    }
}
