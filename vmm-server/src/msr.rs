//! The model-specific registers the guest sees through RDMSR and WRMSR.
//!
//! Answered here: the TSC (the host's, which the guest also reads with
//! RDTSC), the APIC base (at 0xFEE00000, bootstrap processor, disabled:
//! CPUID shows no APIC), the MTRRs (MTRRcap with eight variable ranges,
//! fixed ranges and write-combining; every range register keeps what the
//! guest writes, with the manual's reserved-bit checks), PAT (with its
//! type checks), MISC_ENABLE (fast strings; BTS and PEBS unavailable),
//! the microcode revision, FEATURE_CONTROL (locked, VMX off), VM_CR (SVM
//! disabled and locked), HWCR, and the AMD SYSCFG and NB_CFG (zero; NB_CFG
//! writes ignored), which Linux reads and writes on AMD CPUs, and the AMD
//! legacy performance counters PERF_CTL0-3 and PERF_CTR0-3
//! (0xC0010000-0xC0010007): a PMU that never counts, reading zero and
//! ignoring writes, as KVM answers without a virtual PMU (kernels built
//! for QEMU program them whatever CPUID says).
//!
//! IA32_APIC_BASE refuses the x2APIC enable bit (10) with #GP: CPUID
//! shows no x2APIC. That is the ISA board; on the PC board the local APIC
//! answers IA32_APIC_BASE, the x2APIC MSRs 0x800-0x8FF and
//! IA32_TSC_DEADLINE before this table is asked ([`crate::irqchip`]).
//!
//! EFER is read from the exit record; a write that changes it needs the
//! stub (EFER lives in the VMCB), as do the MSRs whose values the
//! hardware keeps in the VMCB (FS/GS bases, KERNEL_GS_BASE, the SYSCALL
//! and SYSENTER MSRs): those the stub should not intercept at all.
//!
//! Every other MSR raises #GP(0), as on a CPU without it.

use core::fmt;

use crate::vcpu::{EFER_LMA, EFER_LME, EFER_NXE};

/// MSR numbers.
pub mod index {
    /// Time-stamp counter.
    pub const TSC: u32 = 0x10;
    /// Platform ID (Intel).
    pub const PLATFORM_ID: u32 = 0x17;
    /// APIC base.
    pub const APIC_BASE: u32 = 0x1b;
    /// Feature control (Intel).
    pub const FEATURE_CONTROL: u32 = 0x3a;
    /// Microcode revision (Intel: BIOS_SIGN_ID).
    pub const BIOS_SIGN_ID: u32 = 0x8b;
    /// MTRR capabilities.
    pub const MTRRCAP: u32 = 0xfe;
    /// SYSENTER_CS.
    pub const SYSENTER_CS: u32 = 0x174;
    /// SYSENTER_ESP.
    pub const SYSENTER_ESP: u32 = 0x175;
    /// SYSENTER_EIP.
    pub const SYSENTER_EIP: u32 = 0x176;
    /// Miscellaneous enables (Intel).
    pub const MISC_ENABLE: u32 = 0x1a0;
    /// First variable-range MTRR (base/mask pairs follow).
    pub const MTRR_PHYS_BASE0: u32 = 0x200;
    /// 64 KiB fixed-range MTRR.
    pub const MTRR_FIX64K: u32 = 0x250;
    /// 16 KiB fixed-range MTRRs.
    pub const MTRR_FIX16K: [u32; 2] = [0x258, 0x259];
    /// First 4 KiB fixed-range MTRR (eight follow).
    pub const MTRR_FIX4K: u32 = 0x268;
    /// Page attribute table.
    pub const PAT: u32 = 0x277;
    /// MTRR default type.
    pub const MTRR_DEF_TYPE: u32 = 0x2ff;
    /// EFER.
    pub const EFER: u32 = 0xc000_0080;
    /// STAR.
    pub const STAR: u32 = 0xc000_0081;
    /// LSTAR.
    pub const LSTAR: u32 = 0xc000_0082;
    /// CSTAR.
    pub const CSTAR: u32 = 0xc000_0083;
    /// SFMASK.
    pub const SFMASK: u32 = 0xc000_0084;
    /// FS base.
    pub const FS_BASE: u32 = 0xc000_0100;
    /// GS base.
    pub const GS_BASE: u32 = 0xc000_0101;
    /// KERNEL_GS_BASE.
    pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
    /// Hardware configuration (AMD).
    pub const HWCR: u32 = 0xc001_0015;
    /// VM_CR (AMD).
    pub const VM_CR: u32 = 0xc001_0114;
    /// SYSCFG (AMD): memory encryption and MTRR extensions, all off.
    pub const SYSCFG: u32 = 0xc001_0010;
    /// NB_CFG (AMD): reads zero, writes ignored (Linux sets the bit for
    /// extended PCI configuration through 0xCF8).
    pub const NB_CFG: u32 = 0xc001_001f;
    /// AMD legacy PERF_CTL0 (event select); PERF_CTL1-3 follow.
    pub const PERF_CTL0: u32 = 0xc001_0000;
    /// AMD legacy PERF_CTR0 (counter); PERF_CTR1-3 follow.
    pub const PERF_CTR0: u32 = 0xc001_0004;
}

/// The AMD legacy performance-counter MSRs (PERF_CTL0-3, PERF_CTR0-3).
pub const fn is_legacy_perf(idx: u32) -> bool {
    idx >= index::PERF_CTL0 && idx <= index::PERF_CTR0 + 3
}

/// IA32_APIC_BASE bit 10: x2APIC mode.
pub const APIC_BASE_X2APIC: u64 = 1 << 10;

/// The MSRs whose guest values the hardware keeps in the VMCB: a server
/// cannot read or write them, the stub must let them through.
pub const VMCB_HELD: [u32; 10] = [
    index::SYSENTER_CS,
    index::SYSENTER_ESP,
    index::SYSENTER_EIP,
    index::STAR,
    index::LSTAR,
    index::CSTAR,
    index::SFMASK,
    index::FS_BASE,
    index::GS_BASE,
    index::KERNEL_GS_BASE,
];

/// Why an MSR access was not answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MsrError {
    /// The guest takes #GP(0).
    Gp,
    /// The access needs the stub: the MSR's value lives in the VMCB.
    NeedsStub,
}

/// What an MSR access needs to know of the moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsrContext {
    /// The guest's EFER.
    pub efer: u64,
    /// The host's TSC now.
    pub tsc: u64,
}

/// EFER.SVME, which the stub keeps set for VMRUN.
const EFER_SVME: u64 = 1 << 12;

/// The power-on PAT: WB, WT, UC-, UC, repeated.
pub const PAT_RESET: u64 = 0x0007_0406_0007_0406;
/// MTRRcap: write-combining, fixed ranges, eight variable ranges.
pub const MTRRCAP_VALUE: u64 = 1 << 10 | 1 << 8 | 8;
/// MISC_ENABLE at reset: fast strings, BTS and PEBS unavailable.
pub const MISC_ENABLE_RESET: u64 = 1 << 0 | 1 << 11 | 1 << 12;
/// Physical address bits assumed for the MTRR reserved-bit checks.
const PHYS_BITS: u32 = 48;

fn valid_memory_type(t: u8) -> bool {
    matches!(t, 0 | 1 | 4 | 5 | 6)
}

/// The MSRs the server keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MsrState {
    apic_base: u64,
    pat: u64,
    mtrr_def_type: u64,
    mtrr_var: [u64; 16],
    mtrr_fixed: [u64; 11],
    misc_enable: u64,
    hwcr: u64,
}

impl Default for MsrState {
    fn default() -> Self {
        Self::new()
    }
}

/// The fixed-range MTRR at `idx`, if it is one: its slot.
fn fixed_slot(idx: u32) -> Option<usize> {
    match idx {
        index::MTRR_FIX64K => Some(0),
        0x258 => Some(1),
        0x259 => Some(2),
        i if (index::MTRR_FIX4K..index::MTRR_FIX4K + 8).contains(&i) => {
            Some(3 + (i - index::MTRR_FIX4K) as usize)
        }
        _ => None,
    }
}

impl MsrState {
    /// The values after reset.
    pub const fn new() -> Self {
        Self {
            apic_base: 0xfee0_0000 | 1 << 8,
            pat: PAT_RESET,
            mtrr_def_type: 0,
            mtrr_var: [0; 16],
            mtrr_fixed: [0; 11],
            misc_enable: MISC_ENABLE_RESET,
            hwcr: 0,
        }
    }

    /// RDMSR.
    pub fn read(&self, idx: u32, ctx: &MsrContext) -> Result<u64, MsrError> {
        use index::*;
        Ok(match idx {
            TSC => ctx.tsc,
            PLATFORM_ID | BIOS_SIGN_ID => 0,
            APIC_BASE => self.apic_base,
            // Locked with VMX disabled, so a guest does not try to enable it.
            FEATURE_CONTROL => 1,
            MTRRCAP => MTRRCAP_VALUE,
            MISC_ENABLE => self.misc_enable,
            PAT => self.pat,
            MTRR_DEF_TYPE => self.mtrr_def_type,
            i if (MTRR_PHYS_BASE0..MTRR_PHYS_BASE0 + 16).contains(&i) => {
                self.mtrr_var[(i - MTRR_PHYS_BASE0) as usize]
            }
            i if fixed_slot(i).is_some() => self.mtrr_fixed[fixed_slot(i).unwrap_or(0)],
            // The stub's SVME is not the guest's business.
            EFER => ctx.efer & !EFER_SVME,
            HWCR => self.hwcr,
            // SVM disabled by the firmware, and locked.
            VM_CR => 1 << 3 | 1 << 4,
            SYSCFG | NB_CFG => 0,
            // A PMU that never counts.
            i if is_legacy_perf(i) => 0,
            i if VMCB_HELD.contains(&i) => return Err(MsrError::NeedsStub),
            _ => return Err(MsrError::Gp),
        })
    }

    /// WRMSR.
    pub fn write(&mut self, idx: u32, v: u64, ctx: &MsrContext) -> Result<(), MsrError> {
        use index::*;
        let phys_mask = (1u64 << PHYS_BITS) - 1;
        match idx {
            // The guest cannot move the host's TSC; the write is dropped.
            TSC | BIOS_SIGN_ID => {}
            APIC_BASE => {
                // Base (page aligned, within the physical address width),
                // BSP (8) and enable (11); bit 9 and the rest are reserved,
                // and so is x2APIC (10): CPUID shows no x2APIC (KVM
                // answers #GP the same way).
                if v & !(phys_mask & !0xfff | 1 << 8 | 1 << 11) != 0 {
                    return Err(MsrError::Gp);
                }
                self.apic_base = v;
            }
            MISC_ENABLE => self.misc_enable = v,
            PAT => {
                if v.to_le_bytes()
                    .iter()
                    .any(|&t| !matches!(t, 0 | 1 | 4 | 5 | 6 | 7))
                {
                    return Err(MsrError::Gp);
                }
                self.pat = v;
            }
            MTRR_DEF_TYPE => {
                if v & !0xcff != 0 || !valid_memory_type(v as u8) {
                    return Err(MsrError::Gp);
                }
                self.mtrr_def_type = v;
            }
            i if (MTRR_PHYS_BASE0..MTRR_PHYS_BASE0 + 16).contains(&i) => {
                let n = (i - MTRR_PHYS_BASE0) as usize;
                let ok = if n.is_multiple_of(2) {
                    v & !(phys_mask & !0xfff | 0xff) == 0 && valid_memory_type(v as u8)
                } else {
                    v & !(phys_mask & !0xfff | 1 << 11) == 0
                };
                if !ok {
                    return Err(MsrError::Gp);
                }
                self.mtrr_var[n] = v;
            }
            i if fixed_slot(i).is_some() => {
                if v.to_le_bytes().iter().any(|&t| !valid_memory_type(t)) {
                    return Err(MsrError::Gp);
                }
                self.mtrr_fixed[fixed_slot(i).unwrap_or(0)] = v;
            }
            EFER => {
                // SCE, LME and NXE may be written; writes to LMA are
                // ignored; SVME is refused (CPUID shows no SVM, VM_CR says
                // it is disabled), and the stub keeps the real one set.
                let writable = 1 | EFER_LME | EFER_NXE;
                if v & !(writable | EFER_LMA) != 0 {
                    return Err(MsrError::Gp);
                }
                if v & writable != ctx.efer & writable {
                    return Err(MsrError::NeedsStub);
                }
            }
            HWCR => self.hwcr = v,
            NB_CFG => {}
            // Event selects and counters take any value and count nothing.
            i if is_legacy_perf(i) => {}
            i if VMCB_HELD.contains(&i) => return Err(MsrError::NeedsStub),
            // Read-only MSRs and unknown ones.
            _ => return Err(MsrError::Gp),
        }
        Ok(())
    }
}

/// The name of an MSR, for messages.
pub fn msr_name(idx: u32) -> MsrName {
    MsrName(idx)
}

/// Displays an MSR as `EFER (0xc0000080)`.
#[derive(Clone, Copy, Debug)]
pub struct MsrName(u32);

impl fmt::Display for MsrName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use index::*;
        let name = match self.0 {
            TSC => "TSC",
            APIC_BASE => "APIC_BASE",
            EFER => "EFER",
            STAR => "STAR",
            LSTAR => "LSTAR",
            CSTAR => "CSTAR",
            SFMASK => "SFMASK",
            FS_BASE => "FS_BASE",
            GS_BASE => "GS_BASE",
            KERNEL_GS_BASE => "KERNEL_GS_BASE",
            SYSENTER_CS => "SYSENTER_CS",
            SYSENTER_ESP => "SYSENTER_ESP",
            SYSENTER_EIP => "SYSENTER_EIP",
            PAT => "PAT",
            MISC_ENABLE => "MISC_ENABLE",
            i if (PERF_CTL0..PERF_CTR0).contains(&i) => "PERF_CTL",
            i if is_legacy_perf(i) => "PERF_CTR",
            _ => "MSR",
        };
        write!(f, "{name} ({:#x})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> MsrContext {
        MsrContext {
            efer: 1 << 12,
            tsc: 12345,
        }
    }

    #[test]
    fn answered_msrs() {
        let m = MsrState::new();
        let c = ctx();
        assert_eq!(m.read(index::TSC, &c), Ok(12345));
        assert_eq!(m.read(index::APIC_BASE, &c), Ok(0xfee0_0100));
        assert_eq!(m.read(index::MTRRCAP, &c), Ok(0x508));
        assert_eq!(m.read(index::PAT, &c), Ok(PAT_RESET));
        assert_eq!(m.read(index::MISC_ENABLE, &c), Ok(0x1801));
        assert_eq!(m.read(index::EFER, &c), Ok(0), "SVME hidden");
        assert_eq!(m.read(index::VM_CR, &c), Ok(0x18));
        assert_eq!(m.read(index::FEATURE_CONTROL, &c), Ok(1));
    }

    #[test]
    fn unknown_msrs_are_gp() {
        let mut m = MsrState::new();
        let c = ctx();
        for i in [0u32, 0x48, 0x179, 0x6e0, 0xc001_0117, 0xdead_beef] {
            assert_eq!(m.read(i, &c), Err(MsrError::Gp), "{i:#x}");
            assert_eq!(m.write(i, 0, &c), Err(MsrError::Gp), "{i:#x}");
        }
        assert_eq!(
            m.write(index::MTRRCAP, 0, &c),
            Err(MsrError::Gp),
            "read-only"
        );
    }

    #[test]
    fn mtrrs_and_pat_keep_valid_values_and_refuse_reserved_bits() {
        let mut m = MsrState::new();
        let c = ctx();
        m.write(index::MTRR_DEF_TYPE, 0xc06, &c).unwrap();
        assert_eq!(m.read(index::MTRR_DEF_TYPE, &c), Ok(0xc06));
        assert_eq!(m.write(index::MTRR_DEF_TYPE, 0x1006, &c), Err(MsrError::Gp));
        assert_eq!(
            m.write(index::MTRR_DEF_TYPE, 0x002, &c),
            Err(MsrError::Gp),
            "type 2"
        );
        m.write(0x200, 0x8000_0006, &c).unwrap();
        m.write(0x201, 0xffff_8000_0800, &c).unwrap();
        assert_eq!(m.read(0x201, &c), Ok(0xffff_8000_0800));
        assert_eq!(
            m.write(0x201, 0x400, &c),
            Err(MsrError::Gp),
            "reserved mask bit"
        );
        assert_eq!(
            m.write(0x202, 0x8000_0106, &c),
            Err(MsrError::Gp),
            "reserved base bit"
        );
        m.write(0x26f, 0x0606_0606_0505_0404, &c).unwrap();
        assert_eq!(m.read(0x26f, &c), Ok(0x0606_0606_0505_0404));
        assert_eq!(m.write(0x250, 0x07, &c), Err(MsrError::Gp));
        m.write(index::PAT, 0x0007_0106_0007_0406, &c).unwrap();
        assert_eq!(m.write(index::PAT, 0x02, &c), Err(MsrError::Gp));
        assert_eq!(m.write(index::PAT, 0x08, &c), Err(MsrError::Gp));
    }

    #[test]
    fn efer_writes_need_the_stub_unless_nothing_changes() {
        let mut m = MsrState::new();
        let c = ctx();
        assert_eq!(m.write(index::EFER, 0, &c), Ok(()), "nothing changes");
        assert_eq!(
            m.write(index::EFER, 1 << 10, &c),
            Ok(()),
            "LMA writes are ignored"
        );
        assert_eq!(
            m.write(index::EFER, 1 << 12, &c),
            Err(MsrError::Gp),
            "no SVM here"
        );
        assert_eq!(m.write(index::EFER, 1 << 8, &c), Err(MsrError::NeedsStub));
        assert_eq!(
            m.write(index::EFER, 1 << 2, &c),
            Err(MsrError::Gp),
            "reserved"
        );
        for i in VMCB_HELD {
            assert_eq!(m.read(i, &c), Err(MsrError::NeedsStub));
            assert_eq!(m.write(i, 0, &c), Err(MsrError::NeedsStub));
        }
        assert_eq!(
            std::format!("{}", msr_name(index::LSTAR)),
            "LSTAR (0xc0000082)"
        );
    }

    #[test]
    fn apic_base_checks_reserved_bits() {
        let mut m = MsrState::new();
        let c = ctx();
        assert_eq!(m.write(index::APIC_BASE, 0xfee0_0900, &c), Ok(()));
        assert_eq!(
            m.write(index::APIC_BASE, 0xfee0_0200, &c),
            Err(MsrError::Gp)
        );
    }

    #[test]
    fn the_x2apic_enable_bit_is_gp_without_x2apic_in_cpuid() {
        let mut m = MsrState::new();
        let c = ctx();
        for v in [0xfee0_0d00, 0xfee0_0500, 0xfee0_0400] {
            assert_eq!(
                m.write(index::APIC_BASE, v, &c),
                Err(MsrError::Gp),
                "{v:#x}"
            );
        }
        assert_eq!(m.read(index::APIC_BASE, &c), Ok(0xfee0_0100), "unchanged");
        assert_eq!(m.write(index::APIC_BASE, 0xfee0_0900, &c), Ok(()));
        assert_eq!(m.read(index::APIC_BASE, &c), Ok(0xfee0_0900));
    }

    #[test]
    fn amd_legacy_perf_counters_never_count() {
        let mut m = MsrState::new();
        let c = ctx();
        for i in 0xc001_0000u32..=0xc001_0007 {
            assert_eq!(m.read(i, &c), Ok(0), "{i:#x}");
            // Enable, OS and USR, event 0x76 (cycles); a counter preset.
            assert_eq!(m.write(i, 0x53_0076, &c), Ok(()), "{i:#x}");
            assert_eq!(m.write(i, u64::MAX, &c), Ok(()), "{i:#x}");
            assert_eq!(m.read(i, &c), Ok(0), "{i:#x} counts nothing");
        }
        for i in [0xc000_ffffu32, 0xc001_0008] {
            assert_eq!(m.read(i, &c), Err(MsrError::Gp), "{i:#x}");
            assert_eq!(m.write(i, 0, &c), Err(MsrError::Gp), "{i:#x}");
        }
        assert_eq!(
            std::format!("{} {}", msr_name(0xc001_0001), msr_name(0xc001_0007)),
            "PERF_CTL (0xc0010001) PERF_CTR (0xc0010007)"
        );
    }
}
