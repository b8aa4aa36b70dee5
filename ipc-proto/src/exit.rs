//! The one exit vocabulary: SVM exit codes and VMX basic exit reasons
//! side by side, and [`ExitKind`], the one decoder from an
//! [`ExitRecord`] to what the exit is, whatever the extension. The stub
//! counts exits by it, the vmm-server and the mmu-server dispatch on it;
//! each then reads the operands it needs (ports, addresses, error codes)
//! from the record itself.

use core::fmt;

use crate::vcpu::{ExitRecord, VcpuArch};

/// Raw SVM exit codes (AMD APM vol. 2, appendix C, "SVM Intercept Exit Codes").
pub mod svm_exit {
    /// An exception intercept is `EXCP_BASE + vector`.
    pub const EXCP_BASE: u64 = 0x40;
    /// A read of CR`n` is `CR_READ_BASE + n`.
    pub const CR_READ_BASE: u64 = 0x00;
    /// A write of CR`n` is `CR_WRITE_BASE + n`.
    pub const CR_WRITE_BASE: u64 = 0x10;
    /// A read of DR`n` is `DR_READ_BASE + n`.
    pub const DR_READ_BASE: u64 = 0x20;
    /// A write of DR`n` is `DR_WRITE_BASE + n`.
    pub const DR_WRITE_BASE: u64 = 0x30;
    /// Physical interrupt.
    pub const INTR: u64 = 0x60;
    /// Virtual interrupt: the interrupt window asked for with
    /// `ResumeFlags::REQUEST_INTERRUPT_WINDOW` is open.
    pub const VINTR: u64 = 0x64;
    /// Selective CR0 write (CR0 bits other than TS and MP changed).
    pub const CR0_SEL_WRITE: u64 = 0x65;
    /// CPUID.
    pub const CPUID: u64 = 0x72;
    /// HLT.
    pub const HLT: u64 = 0x78;
    /// INVLPG.
    pub const INVLPG: u64 = 0x79;
    /// IN/OUT/INS/OUTS; EXITINFO1 holds the decoded access.
    pub const IOIO: u64 = 0x7b;
    /// RDMSR/WRMSR.
    pub const MSR: u64 = 0x7c;
    /// Shutdown: the guest triple-faulted.
    pub const SHUTDOWN: u64 = 0x7f;
    /// VMRUN executed by the guest.
    pub const VMRUN: u64 = 0x80;
    /// VMMCALL.
    pub const VMMCALL: u64 = 0x81;
    /// RDPMC.
    pub const RDPMC: u64 = 0x6f;
    /// INVD.
    pub const INVD: u64 = 0x76;
    /// PAUSE (intercepted only while device work waits for the guest).
    pub const PAUSE: u64 = 0x77;
    /// INVLPGA.
    pub const INVLPGA: u64 = 0x7a;
    /// A hardware task switch (the guest's CR3 would be loaded from a TSS).
    pub const TASK_SWITCH: u64 = 0x7d;
    /// RDTSCP (intercepted only where the host lacks it; CPUID then hides it).
    pub const RDTSCP: u64 = 0x87;
    /// WBINVD.
    pub const WBINVD: u64 = 0x89;
    /// MONITOR.
    pub const MONITOR: u64 = 0x8a;
    /// MWAIT.
    pub const MWAIT: u64 = 0x8b;
    /// MWAIT with a wake-up condition armed.
    pub const MWAIT_CONDITIONAL: u64 = 0x8c;
    /// XSETBV.
    pub const XSETBV: u64 = 0x8d;
    /// Nested page fault.
    pub const NPF: u64 = 0x400;
    /// VMRUN failed its consistency checks: the guest never ran. The APM
    /// defines it as -1 in the 64-bit EXITCODE; QEMU writes the 32-bit
    /// 0xffff_ffff. The stub treats every code it did not ask for as a
    /// failed entry, whatever its width (`kernel_stub::exits`).
    pub const INVALID: u64 = u64::MAX;
}

/// VMX basic exit reasons (Intel SDM vol. 3C, appendix C). The stub's VMX
/// record: `exit_info1` = the exit qualification, `exit_info2` = the
/// VM-exit interruption information (bits 31:0) and its error code (bits
/// 63:32) for exception exits, the guest-physical address for EPT
/// violations.
pub mod vmx_exit {
    /// Exception or NMI (the vector is in the VM-exit interruption
    /// information); a #PF's qualification is the faulting address.
    pub const EXCEPTION_OR_NMI: u64 = 0;
    /// External interrupt.
    pub const EXTERNAL_INTERRUPT: u64 = 1;
    /// Triple fault.
    pub const TRIPLE_FAULT: u64 = 2;
    /// Interrupt window.
    pub const INTERRUPT_WINDOW: u64 = 7;
    /// Task switch.
    pub const TASK_SWITCH: u64 = 9;
    /// CPUID.
    pub const CPUID: u64 = 10;
    /// HLT.
    pub const HLT: u64 = 12;
    /// INVD.
    pub const INVD: u64 = 13;
    /// INVLPG; the qualification is the linear address.
    pub const INVLPG: u64 = 14;
    /// RDPMC.
    pub const RDPMC: u64 = 15;
    /// VMCALL.
    pub const VMCALL: u64 = 18;
    /// Control-register access; the qualification says which (table 28-3).
    pub const CR_ACCESS: u64 = 28;
    /// MOV DR; the qualification says which (table 28-4).
    pub const DR_ACCESS: u64 = 29;
    /// I/O instruction; the exit qualification holds the access.
    pub const IO: u64 = 30;
    /// RDMSR.
    pub const RDMSR: u64 = 31;
    /// WRMSR.
    pub const WRMSR: u64 = 32;
    /// VM-entry failure due to invalid guest state.
    pub const ENTRY_INVALID_GUEST_STATE: u64 = 33;
    /// VM-entry failure due to MSR loading.
    pub const ENTRY_MSR_LOADING: u64 = 34;
    /// MWAIT.
    pub const MWAIT: u64 = 36;
    /// MONITOR.
    pub const MONITOR: u64 = 39;
    /// PAUSE (with "PAUSE exiting", only while device work waits).
    pub const PAUSE: u64 = 40;
    /// VM-entry failure due to a machine-check event.
    pub const ENTRY_MACHINE_CHECK: u64 = 41;
    /// EPT violation: qualification bit 1 = write, `exit_info2` = address.
    pub const EPT_VIOLATION: u64 = 48;
    /// EPT misconfiguration: an EPT entry the CPU refuses.
    pub const EPT_MISCONFIG: u64 = 49;
    /// RDTSCP (with "RDTSC exiting" and "enable RDTSCP").
    pub const RDTSCP: u64 = 51;
    /// WBINVD.
    pub const WBINVD: u64 = 54;
    /// XSETBV.
    pub const XSETBV: u64 = 55;
    /// Bit 31 of the full exit reason: VM-entry failure.
    pub const ENTRY_FAILURE_BIT: u64 = 1 << 31;
}

/// Exits the stub writes without entering the guest: the same codes
/// whatever the extension (out of both the SVM and the VMX ranges), so
/// [`ExitKind::of`] tells them first.
pub mod stub_exit {
    /// A notification exit: the guest would have been entered while the
    /// VCPU task waiting for this exit had a non-zero notification word
    /// (`stub_abi::syscall`). `exit_info1` holds the word (its low 32
    /// bits, as `ReplyRecv` returns them without `RECV_NOTIFICATION`),
    /// which the stub read and cleared at once. The guest did not run:
    /// its state is as at the previous exit, and the resume the task gave
    /// with the `VcpuRun` that returned this record was applied (perhaps
    /// before the guest ran for other tasks' exits). The task's next
    /// `VcpuRun` with an empty resume (`flags` 0) changes nothing; a
    /// non-empty one applies as usual. `exit_info2` holds [`GUEST_RAN`]
    /// or 0. Every other field but `abi_version` is zero.
    pub const NOTIFICATION: u64 = 1 << 40;
    /// A notification exit's `exit_info2` bit: the guest was entered
    /// since the task's last resume was applied (for exits of another
    /// task's, under shadow paging the mmu-server's), so that resume's
    /// event or interrupt window was used up. Clear: the guest has not run
    /// since, and the stub will apply the interrupt part of the task's next
    /// resume afresh (an empty one withdraws the last one's).
    pub const GUEST_RAN: u64 = 1;
}

/// What an exit is, whatever the extension: the exit code classified, with
/// the few numbers that name it (which CR, which vector). Operands (ports,
/// addresses, error codes) stay in the record for the server that needs
/// them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExitKind {
    /// IN, OUT, INS or OUTS.
    Io,
    /// CPUID.
    Cpuid,
    /// HLT.
    Hlt,
    /// INVLPG.
    Invlpg,
    /// RDMSR or WRMSR (the MSR index is in the guest's ECX).
    Msr {
        /// WRMSR (SVM: EXITINFO1 bit 0, APM vol. 2, 15.11).
        write: bool,
    },
    /// MOV to or from CR`cr`; for CR0 also CLTS, LMSW (writes) and SVM's
    /// selective CR0 write.
    CrAccess {
        /// Which control register.
        cr: u8,
        /// A write (else a read).
        write: bool,
    },
    /// MOV to or from DR`dr`.
    DrAccess {
        /// Which debug register.
        dr: u8,
        /// A write (else a read).
        write: bool,
    },
    /// An intercepted exception. `vector` is `None` for a VMX
    /// exception-or-NMI exit whose interruption information names no
    /// hardware or software exception (an NMI, or not valid).
    Exception {
        /// The vector, 0..=31.
        vector: Option<u8>,
    },
    /// SVM nested page fault or VMX EPT violation.
    NestedPageFault,
    /// VMX EPT misconfiguration (SVM has none: a bad NPT entry faults).
    NestedMisconfig,
    /// Shutdown (SVM) or triple fault (VMX).
    Shutdown,
    /// The interrupt window asked for is open (SVM VINTR).
    InterruptWindow,
    /// A physical interrupt arrived while the guest ran (SVM INTR).
    ExternalInterrupt,
    /// VMMCALL (SVM) or VMCALL (VMX).
    Vmmcall,
    /// A hardware task switch.
    TaskSwitch,
    /// An instruction the guest's CPUID does not announce: MONITOR,
    /// MWAIT, INVLPGA (SVM), RDTSCP.
    Undefined,
    /// XSETBV.
    Xsetbv,
    /// RDPMC.
    Rdpmc,
    /// WBINVD or INVD.
    CacheFlush,
    /// The CPU refused to enter the guest: SVM's negative exit codes (-1
    /// in the APM, the 32-bit 0xffff_ffff from QEMU), a VMX exit reason
    /// with bit 31 set or one of the VM-entry failure reasons.
    EntryFailed,
    /// PAUSE, a spin-wait hint: the stub's own, never a server's. The
    /// stub intercepts it only while a device server's work waits for the
    /// guest's next exit, and then runs that server and enters the guest
    /// again, which executes the PAUSE.
    Pause,
    /// Not a guest exit: the stub's notification exit
    /// ([`stub_exit::NOTIFICATION`], the word in `exit_info1`).
    Notification,
    /// Any other exit, or a record of an unknown `arch`.
    Other,
}

impl ExitKind {
    /// Classifies a record by its `arch` and exit code. Never fails: what
    /// it does not know is [`ExitKind::Other`].
    pub fn of(rec: &ExitRecord) -> Self {
        if rec.exit_code == stub_exit::NOTIFICATION {
            return Self::Notification;
        }
        match VcpuArch::from_raw(rec.arch) {
            Some(VcpuArch::Svm) => Self::of_svm(rec),
            Some(VcpuArch::Vmx) => Self::of_vmx(rec),
            None => Self::Other,
        }
    }

    #[allow(clippy::cast_possible_truncation)] // each operand is masked to its width first
    fn of_svm(rec: &ExitRecord) -> Self {
        use svm_exit::*;
        match rec.exit_code {
            IOIO => Self::Io,
            c @ 0x00..=0x0f => Self::CrAccess {
                cr: c as u8,
                write: false,
            },
            c @ 0x10..=0x1f => Self::CrAccess {
                cr: (c - CR_WRITE_BASE) as u8,
                write: true,
            },
            CR0_SEL_WRITE => Self::CrAccess { cr: 0, write: true },
            c @ 0x20..=0x2f => Self::DrAccess {
                dr: (c - DR_READ_BASE) as u8,
                write: false,
            },
            c @ 0x30..=0x3f => Self::DrAccess {
                dr: (c - DR_WRITE_BASE) as u8,
                write: true,
            },
            c @ 0x40..=0x5f => Self::Exception {
                vector: Some((c - EXCP_BASE) as u8),
            },
            INTR => Self::ExternalInterrupt,
            VINTR => Self::InterruptWindow,
            CPUID => Self::Cpuid,
            HLT => Self::Hlt,
            INVLPG => Self::Invlpg,
            MSR => Self::Msr {
                write: rec.exit_info1 & 1 != 0,
            },
            SHUTDOWN => Self::Shutdown,
            TASK_SWITCH => Self::TaskSwitch,
            INVLPGA | MONITOR | MWAIT | MWAIT_CONDITIONAL | RDTSCP => Self::Undefined,
            XSETBV => Self::Xsetbv,
            RDPMC => Self::Rdpmc,
            WBINVD | INVD => Self::CacheFlush,
            PAUSE => Self::Pause,
            VMMCALL => Self::Vmmcall,
            NPF => Self::NestedPageFault,
            // -1 (the APM), 0xffff_ffff (QEMU), and the other negative codes.
            c if c >= 0xffff_0000 => Self::EntryFailed,
            _ => Self::Other,
        }
    }

    #[allow(clippy::cast_possible_truncation)] // each operand is masked to its width first
    fn of_vmx(rec: &ExitRecord) -> Self {
        use vmx_exit::*;
        let q = rec.exit_info1;
        match rec.exit_code {
            c if c & ENTRY_FAILURE_BIT != 0 => Self::EntryFailed,
            ENTRY_INVALID_GUEST_STATE | ENTRY_MSR_LOADING | ENTRY_MACHINE_CHECK => {
                Self::EntryFailed
            }
            IO => Self::Io,
            CPUID => Self::Cpuid,
            HLT => Self::Hlt,
            INVLPG => Self::Invlpg,
            RDMSR => Self::Msr { write: false },
            WRMSR => Self::Msr { write: true },
            // Table 28-3: bits 3:0 CR, 5:4 type (0 MOV to CR, 1 MOV from
            // CR, 2 CLTS, 3 LMSW).
            CR_ACCESS => Self::CrAccess {
                cr: (q & 0xf) as u8,
                write: (q >> 4) & 3 != 1,
            },
            // Table 28-4: bits 2:0 DR, bit 4 direction (1 = MOV from DR).
            DR_ACCESS => Self::DrAccess {
                dr: (q & 7) as u8,
                write: q & (1 << 4) == 0,
            },
            // The stub puts the VM-exit interruption information in
            // EXITINFO2 bits 31:0 (SDM vol. 3C, 25.9.2): vector 7:0, type
            // 10:8 (3 hardware exception, 6 software exception), valid 31.
            EXCEPTION_OR_NMI => {
                let info = rec.exit_info2;
                let exception = info & (1 << 31) != 0 && matches!((info >> 8) & 7, 3 | 6);
                Self::Exception {
                    vector: exception.then_some((info & 0x1f) as u8),
                }
            }
            EPT_VIOLATION => Self::NestedPageFault,
            EPT_MISCONFIG => Self::NestedMisconfig,
            TRIPLE_FAULT => Self::Shutdown,
            INTERRUPT_WINDOW => Self::InterruptWindow,
            EXTERNAL_INTERRUPT => Self::ExternalInterrupt,
            VMCALL => Self::Vmmcall,
            TASK_SWITCH => Self::TaskSwitch,
            MWAIT | MONITOR | RDTSCP => Self::Undefined,
            XSETBV => Self::Xsetbv,
            RDPMC => Self::Rdpmc,
            WBINVD | INVD => Self::CacheFlush,
            PAUSE => Self::Pause,
            _ => Self::Other,
        }
    }
}

/// The manuals' short name of a raw exit code (`cpuid`, `ioio`, `npf`,
/// `exception #UD`, ...), for messages. `arch` is the record's raw `arch`.
pub fn exit_name(arch: u32, code: u64) -> ExitName {
    ExitName { arch, code }
}

/// Displays the name of an exit code; see [`exit_name`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitName {
    arch: u32,
    code: u64,
}

impl fmt::Display for ExitName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.code == stub_exit::NOTIFICATION {
            return f.write_str("notification");
        }
        match VcpuArch::from_raw(self.arch) {
            Some(VcpuArch::Svm) => {
                let c = self.code;
                if (svm_exit::EXCP_BASE..svm_exit::EXCP_BASE + 32).contains(&c) {
                    let v = (c - svm_exit::EXCP_BASE) as u8;
                    write!(f, "exception {}", exception_mnemonic(v))
                } else if c < 0x10 {
                    write!(f, "read cr{c}")
                } else if c < 0x20 {
                    write!(f, "write cr{}", c - 0x10)
                } else if c < 0x30 {
                    write!(f, "read dr{}", c - 0x20)
                } else if c < 0x40 {
                    write!(f, "write dr{}", c - 0x30)
                } else if (0x90..0xa0).contains(&c) {
                    write!(f, "cr{} write trap", c - 0x90)
                } else {
                    f.write_str(svm_name(c))
                }
            }
            Some(VcpuArch::Vmx) => f.write_str(vmx_name(self.code)),
            None => write!(f, "unknown-arch({})", self.arch),
        }
    }
}

/// `#UD`, `#GP`, ... for an exception vector (APM vol. 2, 8.2).
pub fn exception_mnemonic(vector: u8) -> &'static str {
    const NAMES: [&str; 32] = [
        "#DE",
        "#DB",
        "NMI",
        "#BP",
        "#OF",
        "#BR",
        "#UD",
        "#NM",
        "#DF",
        "vector 9",
        "#TS",
        "#NP",
        "#SS",
        "#GP",
        "#PF",
        "vector 15",
        "#MF",
        "#AC",
        "#MC",
        "#XF",
        "#VE",
        "#CP",
        "vector 22",
        "vector 23",
        "vector 24",
        "vector 25",
        "vector 26",
        "vector 27",
        "#HV",
        "#VC",
        "#SX",
        "vector 31",
    ];
    NAMES
        .get(usize::from(vector))
        .copied()
        .unwrap_or("vector >31")
}

/// SVM exit code names (APM vol. 2, appendix C, table C-1).
fn svm_name(code: u64) -> &'static str {
    match code {
        0x60 => "intr",
        0x61 => "nmi",
        0x62 => "smi",
        0x63 => "init",
        0x64 => "vintr",
        0x65 => "cr0_sel_write",
        0x66 => "idtr_read",
        0x67 => "gdtr_read",
        0x68 => "ldtr_read",
        0x69 => "tr_read",
        0x6a => "idtr_write",
        0x6b => "gdtr_write",
        0x6c => "ldtr_write",
        0x6d => "tr_write",
        0x6e => "rdtsc",
        0x6f => "rdpmc",
        0x70 => "pushf",
        0x71 => "popf",
        0x72 => "cpuid",
        0x73 => "rsm",
        0x74 => "iret",
        0x75 => "swint",
        0x76 => "invd",
        0x77 => "pause",
        0x78 => "hlt",
        0x79 => "invlpg",
        0x7a => "invlpga",
        0x7b => "ioio",
        0x7c => "msr",
        0x7d => "task_switch",
        0x7e => "ferr_freeze",
        0x7f => "shutdown",
        0x80 => "vmrun",
        0x81 => "vmmcall",
        0x82 => "vmload",
        0x83 => "vmsave",
        0x84 => "stgi",
        0x85 => "clgi",
        0x86 => "skinit",
        0x87 => "rdtscp",
        0x88 => "icebp",
        0x89 => "wbinvd",
        0x8a => "monitor",
        0x8b => "mwait",
        0x8c => "mwait_conditional",
        0x8d => "xsetbv",
        0x8e => "rdpru",
        0x8f => "efer_write_trap",
        0xa0 => "invlpgb",
        0xa1 => "invlpgb_illegal",
        0xa2 => "invpcid",
        0xa3 => "mcommit",
        0xa4 => "tlbsync",
        0x400 => "npf",
        0x401 => "avic_incomplete_ipi",
        0x402 => "avic_noaccel",
        0x403 => "vmgexit",
        svm_exit::INVALID => "invalid",
        0xffff_ffff_ffff_fffe => "busy",
        _ => "unknown",
    }
}

/// VMX basic exit reason names (SDM vol. 3C, appendix C).
fn vmx_name(code: u64) -> &'static str {
    if code & vmx_exit::ENTRY_FAILURE_BIT != 0 {
        return "entry failure";
    }
    match code {
        0 => "exception or nmi",
        1 => "external interrupt",
        2 => "triple fault",
        3 => "init",
        4 => "sipi",
        7 => "interrupt window",
        8 => "nmi window",
        9 => "task switch",
        10 => "cpuid",
        12 => "hlt",
        13 => "invd",
        14 => "invlpg",
        15 => "rdpmc",
        16 => "rdtsc",
        18 => "vmcall",
        28 => "cr access",
        29 => "mov dr",
        30 => "io",
        31 => "rdmsr",
        32 => "wrmsr",
        33 => "entry failure: invalid guest state",
        34 => "entry failure: msr loading",
        36 => "mwait",
        39 => "monitor",
        40 => "pause",
        41 => "entry failure: machine check",
        48 => "ept violation",
        49 => "ept misconfiguration",
        54 => "wbinvd",
        55 => "xsetbv",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(arch: VcpuArch, code: u64, info1: u64, info2: u64) -> ExitRecord {
        ExitRecord {
            arch: arch as u32,
            exit_code: code,
            exit_info1: info1,
            exit_info2: info2,
            ..Default::default()
        }
    }

    #[test]
    fn svm_codes_classify() {
        let svm = |c, i1| ExitKind::of(&rec(VcpuArch::Svm, c, i1, 0));
        assert_eq!(svm(svm_exit::IOIO, 0), ExitKind::Io);
        assert_eq!(svm(0x13, 0), ExitKind::CrAccess { cr: 3, write: true });
        assert_eq!(
            svm(svm_exit::CR0_SEL_WRITE, 0),
            ExitKind::CrAccess { cr: 0, write: true }
        );
        assert_eq!(
            svm(0x27, 0),
            ExitKind::DrAccess {
                dr: 7,
                write: false
            }
        );
        assert_eq!(svm(0x4e, 0), ExitKind::Exception { vector: Some(14) });
        assert_eq!(svm(svm_exit::MSR, 1), ExitKind::Msr { write: true });
        assert_eq!(svm(svm_exit::INVALID, 0), ExitKind::EntryFailed);
        assert_eq!(svm(0xffff_ffff, 0), ExitKind::EntryFailed);
        assert_eq!(svm(0x61, 0), ExitKind::Other);
        assert_eq!(svm(svm_exit::PAUSE, 0), ExitKind::Pause);
        let unknown = rec(VcpuArch::Svm, svm_exit::HLT, 0, 0);
        assert_eq!(
            ExitKind::of(&ExitRecord { arch: 7, ..unknown }),
            ExitKind::Other
        );
    }

    #[test]
    fn notification_exits_classify_whatever_the_arch() {
        let n = ExitRecord::notification(0x4001, false);
        assert_eq!(ExitKind::of(&n), ExitKind::Notification);
        assert_eq!(n.exit_info1, 0x4001);
        assert_eq!(n.exit_info2, 0);
        let ran = ExitRecord::notification(1, true);
        assert_eq!(ran.exit_info2, stub_exit::GUEST_RAN);
        assert_eq!(n.abi_version, crate::ABI_VERSION);
        for arch in [VcpuArch::Svm, VcpuArch::Vmx] {
            let r = rec(arch, stub_exit::NOTIFICATION, 1, 0);
            assert_eq!(ExitKind::of(&r), ExitKind::Notification);
            let mut name = heapless::String::<16>::new();
            core::fmt::write(
                &mut name,
                format_args!("{}", exit_name(arch as u32, r.exit_code)),
            )
            .unwrap();
            assert_eq!(name, "notification");
        }
        // Out of both ranges: no SVM code (negative ones included) and no
        // VMX reason (16 bits and bit 31) is the notification's.
        const {
            assert!(stub_exit::NOTIFICATION > u32::MAX as u64);
            assert!(stub_exit::NOTIFICATION < u64::MAX - 0xffff);
        }
    }

    #[test]
    fn vmx_reasons_classify() {
        let vmx = |c, q, i2| ExitKind::of(&rec(VcpuArch::Vmx, c, q, i2));
        assert_eq!(vmx(vmx_exit::IO, 0, 0), ExitKind::Io);
        assert_eq!(vmx(vmx_exit::PAUSE, 0, 0), ExitKind::Pause);
        // MOV from CR3 (type 1), LMSW (type 3) is a write of CR0.
        assert_eq!(
            vmx(vmx_exit::CR_ACCESS, 0x13, 0),
            ExitKind::CrAccess {
                cr: 3,
                write: false
            }
        );
        assert_eq!(
            vmx(vmx_exit::CR_ACCESS, 0x30, 0),
            ExitKind::CrAccess { cr: 0, write: true }
        );
        // #PF: valid, hardware exception, vector 14.
        let pf = vmx(vmx_exit::EXCEPTION_OR_NMI, 0, 0x8000_0b0e);
        assert_eq!(pf, ExitKind::Exception { vector: Some(14) });
        // NMI: type 2.
        let nmi = vmx(vmx_exit::EXCEPTION_OR_NMI, 0, 0x8000_0202);
        assert_eq!(nmi, ExitKind::Exception { vector: None });
        assert_eq!(
            vmx(vmx_exit::ENTRY_FAILURE_BIT | 33, 0, 0),
            ExitKind::EntryFailed
        );
        assert_eq!(vmx(u64::MAX, 0, 0), ExitKind::EntryFailed);
        assert_eq!(
            vmx(vmx_exit::EPT_MISCONFIG, 0, 0),
            ExitKind::NestedMisconfig
        );
        assert_eq!(vmx(vmx_exit::WRMSR, 0, 0), ExitKind::Msr { write: true });
        assert_eq!(vmx(3, 0, 0), ExitKind::Other);
    }
}
