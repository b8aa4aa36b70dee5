//! Control registers, EFER, and the paging mode they select.
//!
//! Bit positions follow the AMD APM vol. 2, 3.1 ("System-Control
//! Registers") and the Intel SDM vol. 3, 2.5 ("Control Registers").

/// CR0 bits.
pub mod cr0 {
    pub use ipc_proto::x86::cr0::*;
}

/// CR4 bits.
pub mod cr4 {
    pub use ipc_proto::x86::cr4::*;
    /// The CR4 bits the mmu-server virtualizes by default. Features that
    /// change the page walk and that it does not model (SMEP, SMAP, PKE,
    /// LA57, PCIDE) are absent: a guest that sets them gets #GP, so the
    /// vmm-server's CPUID must not announce them. OSXSAVE is absent too:
    /// the server binary adds it where the vmm-server's CPUID offers XSAVE
    /// (the host has it; the guest owns XCR0).
    pub const SUPPORTED: u64 =
        VME | PVI | TSD | DE | PSE | PAE | MCE | PGE | PCE | OSFXSR | OSXMMEXCPT | FSGSBASE;
}

/// EFER (MSR `0xC000_0080`) bits.
pub mod efer {
    pub use ipc_proto::x86::efer::*;
    /// The EFER bits a guest may write by default.
    pub const SUPPORTED: u64 = SCE | LME | LMA | NXE | FFXSR;
}

/// Which of the x86 paging modes the guest is in (AMD APM vol. 2, 5.1;
/// Intel SDM vol. 3, 4.1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PagingMode {
    /// CR0.PG = 0: linear addresses are physical (real or protected mode).
    Off,
    /// 32-bit two-level paging, with 4 MiB pages when CR4.PSE = 1.
    Bits32,
    /// PAE three-level paging (legacy mode), with 2 MiB pages.
    Pae,
    /// Four-level paging (long mode), with 2 MiB and 1 GiB pages.
    Long,
}

/// What the modelled CPU offers: the parts of CPUID that change a page walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuModel {
    /// MAXPHYADDR (CPUID 0x8000_0008 EAX[7:0]); bits at and above it are
    /// reserved in page-table entries. 32..=52.
    pub max_phys_bits: u8,
    /// 1 GiB pages (CPUID 0x8000_0001 EDX[26]). Without them PS in a
    /// long-mode PDPTE is a reserved bit.
    pub gb_pages: bool,
    /// CR4 bits a guest may set; others give #GP.
    pub cr4_supported: u64,
    /// EFER bits a guest may set; others give #GP.
    pub efer_supported: u64,
    /// PAE paging has no PDPTE registers: every walk reads the PDPTE from
    /// the PDPT in memory, a present one with a reserved bit is a #PF with
    /// P and RSVD, and no MOV to CR0/CR3/CR4 checks or loads them. This is
    /// an AMD CPU running a guest with nested paging (APM vol. 2, 15.25:
    /// "the guest's four PDPEs are not loaded into the processor at the
    /// time CR3 is written. Instead, the PDPEs are accessed on demand as
    /// part of a table walk"). Off: the PDPTE registers of Intel's model
    /// (SDM vol. 3, 4.4.1), which AMD's host-only legacy PAE mode and
    /// Intel VMX with and without EPT have too.
    pub pdptes_on_walk: bool,
    /// A PDPTE read on a walk has bits 8:5 free, which the SDM and AMD
    /// (Bochs's `ryzen`) reserve: QEMU 7.2's TCG walker ignores them and
    /// sets A (bit 5) in the guest's PDPTEs, so a walker that must agree
    /// with the CPU under QEMU (the vmm-server's emulator) ignores them too.
    pub pdpte_bits_8_5_ignored: bool,
}

impl Default for CpuModel {
    /// QEMU's default for its EPYC model under TCG: 40 physical address
    /// bits, 1 GiB pages.
    fn default() -> Self {
        Self {
            max_phys_bits: 40,
            gb_pages: true,
            cr4_supported: cr4::SUPPORTED,
            efer_supported: efer::SUPPORTED,
            pdptes_on_walk: false,
            pdpte_bits_8_5_ignored: false,
        }
    }
}

impl CpuModel {
    /// The address bits `12..max_phys_bits` of an entry.
    pub fn frame_mask(&self) -> u64 {
        bits(12, u32::from(self.max_phys_bits) - 1)
    }
}

/// Bits `lo..=hi` set (empty when `lo > hi`).
pub const fn bits(lo: u32, hi: u32) -> u64 {
    if lo > hi || lo > 63 {
        return 0;
    }
    let top = if hi >= 63 {
        u64::MAX
    } else {
        (1u64 << (hi + 1)) - 1
    };
    top & !((1u64 << lo) - 1)
}

/// The guest's own view of its paging controls. In shadow mode these are
/// not the hardware's values: the mmu-server owns them and answers CR
/// reads from them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestCtl {
    /// CR0.
    pub cr0: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// EFER, LMA included.
    pub efer: u64,
    /// The PDPTE registers of PAE paging (Intel SDM vol. 3, 4.4.1): loaded
    /// from memory when CR3 is loaded in PAE mode, and used by every walk
    /// until the next load. Zero outside PAE mode, and always zero when
    /// the CPU reads PDPTEs on each walk ([`CpuModel::pdptes_on_walk`]).
    pub pdptes: [u64; 4],
}

impl GuestCtl {
    /// The state after RESET/INIT: real mode, paging off
    /// (CR0 = 0x6000_0010, AMD APM vol. 2, table 14-1).
    pub const RESET: GuestCtl = GuestCtl {
        cr0: cr0::CD | cr0::NW | cr0::ET,
        cr3: 0,
        cr4: 0,
        efer: 0,
        pdptes: [0; 4],
    };

    /// The paging mode these registers select.
    pub fn mode(&self) -> PagingMode {
        if self.cr0 & cr0::PG == 0 {
            PagingMode::Off
        } else if self.efer & efer::LMA != 0 {
            PagingMode::Long
        } else if self.cr4 & cr4::PAE != 0 {
            PagingMode::Pae
        } else {
            PagingMode::Bits32
        }
    }

    /// CR0.WP.
    pub fn wp(&self) -> bool {
        self.cr0 & cr0::WP != 0
    }

    /// EFER.NXE.
    pub fn nxe(&self) -> bool {
        self.efer & efer::NXE != 0
    }

    /// CR4.PSE.
    pub fn pse(&self) -> bool {
        self.cr4 & cr4::PSE != 0
    }

    /// CR4.PGE.
    pub fn pge(&self) -> bool {
        self.cr4 & cr4::PGE != 0
    }

    /// Whether the XD/NX bit means anything: PAE or four-level paging
    /// with EFER.NXE. Only then does a #PF error code carry I/D.
    pub fn nx_enabled(&self) -> bool {
        matches!(self.mode(), PagingMode::Pae | PagingMode::Long) && self.nxe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_ranges() {
        assert_eq!(bits(12, 39), 0x0000_00ff_ffff_f000);
        assert_eq!(bits(40, 51), 0x000f_ff00_0000_0000);
        assert_eq!(bits(52, 63), 0xfff0_0000_0000_0000);
        assert_eq!(bits(5, 4), 0);
        assert_eq!(bits(0, 63), u64::MAX);
        assert_eq!(CpuModel::default().frame_mask(), 0x0000_00ff_ffff_f000);
    }

    #[test]
    fn modes_follow_the_registers() {
        let mut c = GuestCtl::RESET;
        assert_eq!(c.mode(), PagingMode::Off);
        c.cr0 |= cr0::PE | cr0::PG;
        assert_eq!(c.mode(), PagingMode::Bits32);
        c.cr4 |= cr4::PAE;
        assert_eq!(c.mode(), PagingMode::Pae);
        assert!(!c.nx_enabled());
        c.efer |= efer::NXE;
        assert!(c.nx_enabled());
        c.efer |= efer::LME | efer::LMA;
        assert_eq!(c.mode(), PagingMode::Long);
        c.cr4 &= !cr4::PAE;
        c.efer &= !(efer::LME | efer::LMA);
        assert!(!c.nx_enabled(), "no NX in 32-bit paging");
    }
}
