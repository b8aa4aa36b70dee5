//! Which SVM intercepts the stub turns on (AMD APM vol. 2, 15.7-15.14 and
//! appendix B, table B-1), and which exit codes therefore can come back:
//! an exit code the stub did not ask for (VMEXIT_INVALID as -1 or as
//! QEMU's 32-bit 0xffff_ffff, VMEXIT_BUSY, anything unknown) is a failed
//! entry, never an exit for a server. `kernel-stub/INTERCEPTS.md` says why
//! each intercept is on or safely off.

use ipc_proto::vcpu::svm_exit;

/// INTERCEPT_MISC1 (VMCB offset 0x0c) bits.
pub mod misc1 {
    pub const INTR: u32 = 1 << 0;
    pub const NMI: u32 = 1 << 1;
    pub const SMI: u32 = 1 << 2;
    pub const INIT: u32 = 1 << 3;
    pub const VINTR: u32 = 1 << 4;
    pub const RDPMC: u32 = 1 << 15;
    pub const CPUID: u32 = 1 << 18;
    pub const INVD: u32 = 1 << 22;
    pub const PAUSE: u32 = 1 << 23;
    pub const HLT: u32 = 1 << 24;
    pub const INVLPG: u32 = 1 << 25;
    pub const INVLPGA: u32 = 1 << 26;
    pub const IOIO: u32 = 1 << 27;
    pub const MSR: u32 = 1 << 28;
    pub const TASK_SWITCH: u32 = 1 << 29;
    pub const SHUTDOWN: u32 = 1 << 31;
}

/// INTERCEPT_MISC2 (VMCB offset 0x10) bits.
pub mod misc2 {
    pub const VMRUN: u32 = 1 << 0;
    pub const VMMCALL: u32 = 1 << 1;
    pub const VMLOAD: u32 = 1 << 2;
    pub const VMSAVE: u32 = 1 << 3;
    pub const STGI: u32 = 1 << 4;
    pub const CLGI: u32 = 1 << 5;
    pub const SKINIT: u32 = 1 << 6;
    pub const RDTSCP: u32 = 1 << 7;
    pub const WBINVD: u32 = 1 << 9;
    pub const MONITOR: u32 = 1 << 10;
    pub const MWAIT: u32 = 1 << 11;
    pub const MWAIT_CONDITIONAL: u32 = 1 << 12;
    pub const XSETBV: u32 = 1 << 13;
}

/// CR0, CR3 and CR4: the registers a shadow MMU must see (reads and writes).
pub const CR_SHADOWED: u16 = (1 << 0) | (1 << 3) | (1 << 4);
/// CR4 writes under nested paging: the vmm-server refuses the bits the
/// VM's CPUID hides (#GP) and applies the rest (`SET_PAGING`).
pub const CR4_WRITE: u32 = 1 << (16 + 4);
/// #PF: a shadowed guest's page faults go to the mmu-server.
pub const EXCEPTION_PF: u32 = 1 << 14;
/// #DB and #AC, in every mode: a guest can make their delivery raise them
/// again, which loops inside the CPU where no interrupt ends it (CVE-2015-
/// 5307, CVE-2015-8104); intercepted, each delivery is an exit and the
/// vmm-server injects them back.
pub const EXCEPTION_DB_AC: u32 = (1 << 1) | (1 << 17);

/// The intercept vectors of one VMCB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Intercepts {
    /// CR reads (bits 0-15) and writes (bits 16-31), VMCB offset 0.
    pub cr: u32,
    /// Exception vectors, VMCB offset 8.
    pub exceptions: u32,
    pub misc1: u32,
    pub misc2: u32,
    /// Nested paging is on: nested page faults exit.
    pub nested: bool,
}

impl Intercepts {
    /// The intercepts for nested (`shadow == false`) or shadow paging.
    /// VINTR is off here: a resume turns it on for one entry. RDTSCP runs
    /// natively where the host has it (`host_rdtscp`, CPUID 8000_0001
    /// EDX bit 27: the guest owns TSC_AUX and its CPUID shows RDTSCP);
    /// elsewhere it exits and the vmm-server raises #UD.
    pub const fn for_mode(shadow: bool, host_rdtscp: bool) -> Self {
        use misc1::*;
        use misc2::*;
        let always1 =
            INTR | NMI | SMI | INIT | RDPMC | CPUID | INVD | HLT | INVLPGA | IOIO | MSR | SHUTDOWN;
        let always2 = VMRUN
            | VMMCALL
            | VMLOAD
            | VMSAVE
            | STGI
            | CLGI
            | SKINIT
            | if host_rdtscp { 0 } else { RDTSCP }
            | WBINVD
            | MONITOR
            | MWAIT
            | MWAIT_CONDITIONAL
            | XSETBV;
        if shadow {
            Self {
                cr: (CR_SHADOWED as u32) << 16 | CR_SHADOWED as u32,
                exceptions: EXCEPTION_DB_AC | EXCEPTION_PF,
                // A task switch loads CR3 from the TSS without a CR3
                // intercept: under shadow paging that would be a
                // guest-chosen host-physical root.
                misc1: always1 | TASK_SWITCH,
                misc2: always2,
                nested: false,
            }
        } else {
            Self {
                cr: CR4_WRITE,
                exceptions: EXCEPTION_DB_AC,
                misc1: always1,
                misc2: always2,
                nested: true,
            }
        }
    }

    /// Whether `code` is an exit these intercepts can produce (VINTR
    /// included, which a resume may ask for).
    pub fn expects(&self, code: u64) -> bool {
        let bit = |word: u32, n: u64| n < 32 && word & (1 << n) != 0;
        match code {
            // CR reads are codes 0-15, writes 16-31: the word's own bits.
            0x00..=0x1f => bit(self.cr, code),
            0x40..=0x5f => bit(self.exceptions, code - svm_exit::EXCP_BASE),
            svm_exit::VINTR => true,
            0x60..=0x7f => bit(self.misc1, code - 0x60),
            0x80..=0x9f => bit(self.misc2, code - 0x80),
            svm_exit::NPF => self.nested,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_vmrun_is_never_an_expected_exit() {
        for shadow in [false, true] {
            let i = Intercepts::for_mode(shadow, false);
            for code in [
                u64::MAX,
                0xffff_ffff,
                u64::MAX - 1,
                0xffff_fffe,
                0x401,
                0x1234,
            ] {
                assert!(!i.expects(code), "{code:#x}");
            }
        }
    }

    #[test]
    fn the_exits_the_servers_handle_are_expected() {
        let nested = Intercepts::for_mode(false, false);
        let shadow = Intercepts::for_mode(true, false);
        for code in [
            svm_exit::IOIO,
            svm_exit::MSR,
            svm_exit::CPUID,
            svm_exit::HLT,
            svm_exit::SHUTDOWN,
            svm_exit::INTR,
            svm_exit::VINTR,
            svm_exit::VMRUN,
            svm_exit::VMMCALL,
            svm_exit::RDPMC,
            svm_exit::INVLPGA,
            svm_exit::WBINVD,
            svm_exit::MONITOR,
            svm_exit::MWAIT,
            svm_exit::XSETBV,
            svm_exit::RDTSCP,
        ] {
            assert!(nested.expects(code) && shadow.expects(code), "{code:#x}");
        }
        assert!(nested.expects(svm_exit::NPF) && !shadow.expects(svm_exit::NPF));
        assert!(shadow.expects(svm_exit::CR_WRITE_BASE + 4));
        assert!(nested.expects(svm_exit::CR_WRITE_BASE + 4));
        for code in [
            svm_exit::CR_READ_BASE + 3,
            svm_exit::CR_READ_BASE + 4,
            svm_exit::CR_WRITE_BASE,
            svm_exit::EXCP_BASE + 14,
            svm_exit::TASK_SWITCH,
        ] {
            assert!(shadow.expects(code) && !nested.expects(code), "{code:#x}");
        }
        // Off in both modes (INVLPG runs natively; CR8 is not shadowed).
        assert!(!shadow.expects(svm_exit::INVLPG));
        assert!(!shadow.expects(svm_exit::CR_WRITE_BASE + 8));
    }

    /// A guest must not be able to loop the CPU in #DB or #AC delivery.
    #[test]
    fn debug_and_alignment_checks_always_exit() {
        for shadow in [false, true] {
            let i = Intercepts::for_mode(shadow, false);
            assert!(i.expects(svm_exit::EXCP_BASE + 1) && i.expects(svm_exit::EXCP_BASE + 17));
        }
    }

    /// RDTSCP exits (and is then an expected exit) only where the host
    /// lacks it; nothing else depends on the host's RDTSCP.
    #[test]
    fn rdtscp_runs_natively_only_where_the_host_has_it() {
        for shadow in [false, true] {
            let hidden = Intercepts::for_mode(shadow, false);
            let offered = Intercepts::for_mode(shadow, true);
            assert!(hidden.misc2 & misc2::RDTSCP != 0 && hidden.expects(svm_exit::RDTSCP));
            assert!(offered.misc2 & misc2::RDTSCP == 0 && !offered.expects(svm_exit::RDTSCP));
            assert_eq!(
                Intercepts {
                    misc2: offered.misc2 | misc2::RDTSCP,
                    ..offered
                },
                hidden
            );
        }
    }

    /// Finding 1: the hardware task switch loaded a guest-chosen CR3.
    #[test]
    fn shadow_paging_intercepts_task_switches() {
        assert!(Intercepts::for_mode(true, false).misc1 & misc1::TASK_SWITCH != 0);
    }
}
