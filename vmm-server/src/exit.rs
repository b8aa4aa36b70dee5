//! One architecture-independent [`Exit`] decoded from the stub's raw
//! [`ExitRecord`].
//!
//! SVM: the exit codes are the VMCB EXITCODE values (AMD APM vol. 2,
//! appendix C) and an IOIO exit carries its access in EXITINFO1 (APM vol. 2,
//! 15.10.2, figure 15-2). VMX: the exit codes are basic exit reasons (Intel
//! SDM vol. 3C, appendix C) and an I/O exit carries its access in the exit
//! qualification (SDM vol. 3C, table 28-5).
//!
//! Decoding never fails and never panics: a record that does not make sense
//! (an unknown `arch`, an IOIO record without exactly one operand size)
//! decodes to [`Exit::Other`], and the caller still has the raw record.

use ipc_proto::vcpu::svm_ioio;
use ipc_proto::{ExitKind, ExitRecord, VcpuArch};

/// RFLAGS.IF, the interrupt enable flag (APM vol. 2, 3.1.6).
pub const RFLAGS_IF: u64 = 1 << 9;

/// Width of a port access.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum IoSize {
    /// 8 bits (`in al, dx`).
    Byte = 1,
    /// 16 bits (`in ax, dx`).
    Word = 2,
    /// 32 bits (`in eax, dx`).
    Dword = 4,
}

impl IoSize {
    /// Width in bytes: 1, 2 or 4.
    pub const fn bytes(self) -> u8 {
        self as u8
    }

    /// The size for a width in bytes, if it is 1, 2 or 4.
    pub const fn from_bytes(bytes: u8) -> Option<Self> {
        match bytes {
            1 => Some(Self::Byte),
            2 => Some(Self::Word),
            4 => Some(Self::Dword),
            _ => None,
        }
    }

    /// All ones for this width: `0xff`, `0xffff` or `0xffff_ffff`.
    pub const fn mask(self) -> u32 {
        match self {
            Self::Byte => 0xff,
            Self::Word => 0xffff,
            Self::Dword => u32::MAX,
        }
    }
}

/// Direction of a port access, seen from the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IoDirection {
    /// `IN`/`INS`: the guest reads the port.
    In,
    /// `OUT`/`OUTS`: the guest writes the port.
    Out,
}

/// One decoded port access.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IoAccess {
    /// Port number.
    pub port: u16,
    /// Operand width.
    pub size: IoSize,
    /// Read or write.
    pub direction: IoDirection,
    /// `INS`/`OUTS`: the data is in guest memory, not in RAX.
    pub string: bool,
    /// A REP prefix: RCX counts the repetitions.
    pub rep: bool,
    /// For a non-string OUT, the value written: the low bytes of RAX masked
    /// to `size`. 0 for IN and for string accesses.
    pub value: u32,
    /// Address size of a string access in bytes (2, 4 or 8), when the
    /// hardware said (SVM EXITINFO1 bits 9:7). QEMU's TCG leaves those bits
    /// clear, so the emulator decodes the instruction instead.
    pub address_size: Option<u8>,
    /// Effective segment of a string access (0 = ES ... 5 = GS, SVM
    /// EXITINFO1 bits 12:10), given only together with `address_size`.
    pub segment: Option<u8>,
}

impl IoAccess {
    /// The instruction's mnemonic, for messages (`in`, `outsb`, ...).
    pub fn mnemonic(&self) -> &'static str {
        match (self.direction, self.string, self.size) {
            (IoDirection::In, false, _) => "in",
            (IoDirection::Out, false, _) => "out",
            (IoDirection::In, true, IoSize::Byte) => "insb",
            (IoDirection::In, true, IoSize::Word) => "insw",
            (IoDirection::In, true, IoSize::Dword) => "insd",
            (IoDirection::Out, true, IoSize::Byte) => "outsb",
            (IoDirection::Out, true, IoSize::Word) => "outsw",
            (IoDirection::Out, true, IoSize::Dword) => "outsd",
        }
    }
}

/// How a nested page fault (SVM NPF) or EPT violation (VMX) accessed memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NpfAccess {
    /// A write (else a read or a fetch).
    pub write: bool,
    /// An instruction fetch.
    pub fetch: bool,
    /// The fault happened while the CPU walked the guest's own page tables
    /// (SVM EXITINFO1 bit 33): the guest keeps page tables outside RAM,
    /// whose entries read as not present.
    pub in_table_walk: bool,
}

impl NpfAccess {
    /// Decodes SVM's NPF EXITINFO1 (APM vol. 2, 15.25.6): bit 1 write,
    /// bit 4 fetch, bit 33 fault during the guest's table walk.
    pub fn from_svm(exit_info1: u64) -> Self {
        Self {
            write: exit_info1 & (1 << 1) != 0,
            fetch: exit_info1 & (1 << 4) != 0,
            in_table_walk: exit_info1 & (1 << 33) != 0,
        }
    }

    /// Decodes a VMX EPT-violation qualification (SDM vol. 3C, table
    /// 28-7): bit 1 write, bit 2 fetch; bit 8 clear with bit 7 set means
    /// the access was to a paging-structure entry.
    pub fn from_vmx(qualification: u64) -> Self {
        let linear_valid = qualification & (1 << 7) != 0;
        let final_translation = qualification & (1 << 8) != 0;
        Self {
            write: qualification & (1 << 1) != 0,
            fetch: qualification & (1 << 2) != 0,
            in_table_walk: linear_valid && !final_translation,
        }
    }
}

/// What a VM exit means, whatever the virtualization extension.
///
/// The raw exit code stays in the [`ExitRecord`] (and in [`exit_name`] for
/// messages); this enum says what the server has to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Exit {
    /// IN, OUT, INS or OUTS.
    Io(IoAccess),
    /// A nested page fault on guest-physical memory that no RAM backs: an
    /// access to a device's MMIO range (or to nothing), which the server
    /// emulates by decoding the instruction. Only [`Exit::decode_in`]
    /// produces it.
    Mmio {
        /// Guest-physical address of the access.
        gpa: u64,
        /// How it accessed memory.
        access: NpfAccess,
    },
    /// A nested page fault (SVM NPF) or EPT violation (VMX) that is not an
    /// MMIO access (inside RAM, or not classified).
    NestedPageFault {
        /// Guest-physical address of the access.
        gpa: u64,
        /// Arch-specific: SVM's #PF-style error code (EXITINFO1) or VMX's
        /// EPT-violation exit qualification.
        error_code: u64,
    },
    /// CPUID (leaf in EAX, subleaf in ECX).
    Cpuid,
    /// RDMSR or WRMSR (the MSR index is in the guest's ECX).
    Msr {
        /// WRMSR rather than RDMSR.
        write: bool,
    },
    /// HLT.
    Hlt {
        /// RFLAGS.IF at the exit: false means no interrupt can wake the guest.
        interrupts_enabled: bool,
    },
    /// INVLPG.
    Invlpg {
        /// The linear address, when the hardware decoded it (SVM decode
        /// assists, VMX qualification); else decode the instruction.
        linear: Option<u64>,
    },
    /// A read or write of a control register (MOV CRn, and for CR0 also
    /// LMSW, CLTS, SMSW).
    CrAccess {
        /// Which control register.
        cr: u8,
        /// A write (else a read).
        write: bool,
        /// The general-purpose register of a MOV, when the hardware decoded
        /// it (SVM decode assists: EXITINFO1 bit 63 and bits 3:0; VMX
        /// qualification bits 11:8).
        gpr: Option<u8>,
    },
    /// MOV to or from a debug register.
    DrAccess {
        /// Which debug register.
        dr: u8,
        /// A write (else a read).
        write: bool,
        /// The general-purpose register, when the hardware decoded it.
        gpr: Option<u8>,
    },
    /// An exception the stub intercepted.
    Exception {
        /// Its vector, 0..=31.
        vector: u8,
        /// The error code it pushes, for the vectors that push one
        /// (8, 10-14, 17, 21, 29, 30).
        error_code: Option<u32>,
        /// For #PF: the faulting linear address (SVM EXITINFO2).
        address: Option<u64>,
    },
    /// Shutdown: the guest triple-faulted.
    Shutdown,
    /// The interrupt window asked for with `REQUEST_INTERRUPT_WINDOW` is
    /// open (SVM VINTR, VMX interrupt-window exiting).
    InterruptWindow,
    /// A physical interrupt arrived while the guest ran (SVM INTR, VMX
    /// external interrupt): nothing for the guest.
    ExternalInterrupt,
    /// VMMCALL (SVM) or VMCALL (VMX).
    Vmmcall,
    /// A hardware task switch (SVM task-switch intercept, shadow paging
    /// only; VMX always). It is not emulated: it would load CR3, the
    /// segments and the registers from a TSS.
    TaskSwitch,
    /// An instruction the guest's CPUID does not announce and that the
    /// stub intercepts so that it never runs natively: MONITOR, MWAIT,
    /// INVLPGA (SVM, whose instructions the guest does not have), RDTSCP
    /// (intercepted only where the host lacks it, and CPUID then hides
    /// it). It raises #UD, as on such a CPU.
    Undefined,
    /// XSETBV (SVM exit 0x8D; VMX exit reason 55, unconditional): ECX
    /// names the XCR, EDX:EAX the value. XCR0 is not switched, so the
    /// vmm-server checks the value and the stub loads it (`SET_XCR0`).
    Xsetbv,
    /// RDPMC: the guest has no performance counters (its CPUID shows
    /// none), so #GP(0), as for a counter that does not exist; the host's
    /// counters never reach it.
    Rdpmc,
    /// WBINVD or INVD: the caches are the host's business; the guest's
    /// memory stays coherent without them, so they complete as no-ops.
    CacheFlush,
    /// The CPU refused to enter the guest (SVM VMRUN consistency checks,
    /// VMX VM-entry failure): the guest did not run.
    EntryFailed,
    /// Not a guest exit: the stub's notification exit
    /// (`ipc_proto::exit::stub_exit::NOTIFICATION`). The guest was not
    /// entered for it; the server loop reruns with the resume it gave before.
    Notification {
        /// The notification word (`Signal` bits, host IRQ bits).
        word: u32,
        /// The guest ran (for another task's exits) since this server's
        /// last resume was applied (`stub_exit::GUEST_RAN`).
        guest_ran: bool,
    },
    /// Any other exit; `raw` is the record's exit code.
    Other {
        /// The raw exit code.
        raw: u64,
    },
}

/// Exception vectors that push an error code (APM vol. 2, 8.2; SDM vol. 3A,
/// table 6-1).
pub const fn pushes_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10..=14 | 17 | 21 | 29 | 30)
}

impl Exit {
    /// Decodes a record from the stub: [`ExitKind`] says what it is, the
    /// arch-specific fields give the operands.
    pub fn decode(rec: &ExitRecord) -> Self {
        let raw = rec.exit_code;
        let vmx = VcpuArch::from_raw(rec.arch) == Some(VcpuArch::Vmx);
        let (info1, info2) = (rec.exit_info1, rec.exit_info2);
        match ExitKind::of(rec) {
            ExitKind::Io => {
                let io = if vmx {
                    decode_vmx_io(info1, rec.regs.rax)
                } else {
                    decode_svm_ioio(info1, rec.regs.rax)
                };
                io.map_or(Self::Other { raw }, Self::Io)
            }
            ExitKind::CrAccess { cr, write } => Self::CrAccess {
                cr,
                write,
                gpr: if vmx {
                    // Table 28-3: a MOV (type 0 or 1) names its GPR in bits 11:8.
                    ((info1 >> 4) & 3 <= 1).then_some(((info1 >> 8) & 0xf) as u8)
                } else {
                    svm_assisted_gpr(info1)
                },
            },
            // SVM DR exits put the GPR in EXITINFO1 bits 3:0 with decode
            // assists, without a valid bit; QEMU's TCG leaves EXITINFO1
            // zero. VMX: table 28-4, bits 11:8.
            ExitKind::DrAccess { dr, write } => Self::DrAccess {
                dr,
                write,
                gpr: vmx.then_some(((info1 >> 8) & 0xf) as u8),
            },
            ExitKind::Exception {
                vector: Some(vector),
            } => Self::Exception {
                vector,
                // VMX: the stub puts the interruption information's error
                // code in EXITINFO2 bits 63:32, valid if bit 11; the CPU sets
                // it only for the vectors that push one, and so does this.
                // SVM: EXITINFO1. A #PF's address: SVM EXITINFO2, VMX the
                // exit qualification.
                error_code: match vmx {
                    true => (info2 & (1 << 11) != 0 && pushes_error_code(vector))
                        .then_some((info2 >> 32) as u32),
                    false => pushes_error_code(vector).then_some(info1 as u32),
                },
                address: (vector == 14).then_some(if vmx { info1 } else { info2 }),
            },
            ExitKind::Exception { vector: None } => Self::Other { raw },
            ExitKind::Hlt => Self::Hlt {
                interrupts_enabled: rec.regs.rflags & RFLAGS_IF != 0,
            },
            ExitKind::Msr { write } => Self::Msr { write },
            // SVM: with decode assists EXITINFO1 holds the linear address;
            // without (QEMU's TCG) it is zero and the instruction must be
            // decoded. VMX: always the qualification.
            ExitKind::Invlpg => Self::Invlpg {
                linear: (vmx || rec.insn_len != 0 || info1 != 0).then_some(info1),
            },
            // SVM: EXITINFO1 = #PF-style error code, EXITINFO2 = faulting
            // GPA (APM vol. 2, 15.25.6); VMX: qualification and GPA.
            ExitKind::NestedPageFault => Self::NestedPageFault {
                gpa: info2,
                error_code: info1,
            },
            ExitKind::Cpuid => Self::Cpuid,
            ExitKind::Shutdown => Self::Shutdown,
            ExitKind::InterruptWindow => Self::InterruptWindow,
            ExitKind::ExternalInterrupt => Self::ExternalInterrupt,
            ExitKind::Vmmcall => Self::Vmmcall,
            ExitKind::TaskSwitch => Self::TaskSwitch,
            ExitKind::Undefined => Self::Undefined,
            ExitKind::Xsetbv => Self::Xsetbv,
            ExitKind::Rdpmc => Self::Rdpmc,
            ExitKind::CacheFlush => Self::CacheFlush,
            ExitKind::EntryFailed => Self::EntryFailed,
            ExitKind::Notification => Self::Notification {
                word: (info1 & 0xffff_ffff) as u32,
                guest_ran: info2 & ipc_proto::exit::stub_exit::GUEST_RAN != 0,
            },
            // PAUSE is the stub's (its scheduler's yield), never delivered.
            ExitKind::NestedMisconfig | ExitKind::Pause | ExitKind::Other => Self::Other { raw },
        }
    }

    /// Decodes a record, turning a nested page fault outside guest RAM
    /// (`[0, ram_bytes)`) into [`Exit::Mmio`].
    pub fn decode_in(rec: &ExitRecord, ram_bytes: u64) -> Self {
        match Self::decode(rec) {
            Self::NestedPageFault { gpa, error_code } if gpa >= ram_bytes => {
                let access = match VcpuArch::from_raw(rec.arch) {
                    Some(VcpuArch::Vmx) => NpfAccess::from_vmx(error_code),
                    _ => NpfAccess::from_svm(error_code),
                };
                Self::Mmio { gpa, access }
            }
            other => other,
        }
    }
}

/// With decode assists, EXITINFO1 bit 63 says a MOV CR left its GPR
/// number in bits 3:0 (APM vol. 2, 15.8.1).
fn svm_assisted_gpr(info1: u64) -> Option<u8> {
    (info1 & (1 << 63) != 0).then_some((info1 & 0xf) as u8)
}

/// Decodes an SVM IOIO EXITINFO1 (APM vol. 2, 15.10.2); `rax` supplies the
/// value of a non-string OUT. `None` unless exactly one of SZ8/SZ16/SZ32 is
/// set, which the hardware guarantees.
pub fn decode_svm_ioio(exit_info1: u64, rax: u64) -> Option<IoAccess> {
    let size = match exit_info1 & (svm_ioio::SZ8 | svm_ioio::SZ16 | svm_ioio::SZ32) {
        svm_ioio::SZ8 => IoSize::Byte,
        svm_ioio::SZ16 => IoSize::Word,
        svm_ioio::SZ32 => IoSize::Dword,
        _ => return None,
    };
    let direction = if exit_info1 & svm_ioio::TYPE_IN != 0 {
        IoDirection::In
    } else {
        IoDirection::Out
    };
    let mut io = io_access(
        (exit_info1 >> svm_ioio::PORT_SHIFT) as u16,
        size,
        direction,
        exit_info1 & svm_ioio::STRING != 0,
        exit_info1 & svm_ioio::REP != 0,
        rax,
    );
    io.address_size = match (exit_info1 >> svm_ioio::ADDR_SHIFT) & 0b111 {
        0b001 => Some(2),
        0b010 => Some(4),
        0b100 => Some(8),
        _ => None,
    };
    let seg = ((exit_info1 >> svm_ioio::SEG_SHIFT) & 0b111) as u8;
    io.segment = (io.address_size.is_some() && seg <= 5).then_some(seg);
    Some(io)
}

fn io_access(
    port: u16,
    size: IoSize,
    direction: IoDirection,
    string: bool,
    rep: bool,
    rax: u64,
) -> IoAccess {
    let value = if direction == IoDirection::Out && !string {
        rax as u32 & size.mask()
    } else {
        0
    };
    IoAccess {
        port,
        size,
        direction,
        string,
        rep,
        value,
        address_size: None,
        segment: None,
    }
}

/// Decodes a VMX I/O exit qualification (SDM vol. 3C, table 28-5): bits 2:0
/// size - 1 (0, 1 or 3), bit 3 IN, bit 4 string, bit 5 REP, bits 31:16 port.
pub fn decode_vmx_io(qualification: u64, rax: u64) -> Option<IoAccess> {
    let size = match qualification & 0b111 {
        0 => IoSize::Byte,
        1 => IoSize::Word,
        3 => IoSize::Dword,
        _ => return None,
    };
    let direction = if qualification & (1 << 3) != 0 {
        IoDirection::In
    } else {
        IoDirection::Out
    };
    Some(io_access(
        (qualification >> 16) as u16,
        size,
        direction,
        qualification & (1 << 4) != 0,
        qualification & (1 << 5) != 0,
        rax,
    ))
}

// The names live with the codes, in the one exit vocabulary.
pub use ipc_proto::exit::{exception_mnemonic, exit_name, ExitName};

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ipc_proto::exit::{svm_exit, vmx_exit};
    use ipc_proto::vcpu::svm_ioio::*;
    use ipc_proto::ABI_VERSION;
    use proptest::prelude::*;

    /// A hand-made SVM record.
    pub(crate) fn svm_record(code: u64, info1: u64, info2: u64) -> ExitRecord {
        let mut rec = ExitRecord {
            abi_version: ABI_VERSION,
            arch: VcpuArch::Svm as u32,
            sequence: 1,
            exit_code: code,
            exit_info1: info1,
            exit_info2: info2,
            ..Default::default()
        };
        rec.regs.rflags = 2;
        rec.regs.rip = 0x10_0020;
        rec
    }

    /// EXITINFO1 of a non-string IOIO exit.
    pub(crate) fn ioio(port: u16, size: u64, is_in: bool) -> u64 {
        (u64::from(port) << PORT_SHIFT) | size | if is_in { TYPE_IN } else { 0 }
    }

    #[test]
    fn in_al_dx_decodes() {
        // `in al, dx` with dx = 0x3fd; A32 address size bit set as hardware does.
        let mut rec = svm_record(svm_exit::IOIO, ioio(0x3fd, SZ8, true) | (1 << 8), 0x10_0021);
        rec.regs.rax = 0x1234_5678;
        assert_eq!(
            Exit::decode(&rec),
            Exit::Io(IoAccess {
                port: 0x3fd,
                size: IoSize::Byte,
                direction: IoDirection::In,
                string: false,
                rep: false,
                value: 0,
                address_size: Some(4),
                segment: Some(0),
            })
        );
    }

    #[test]
    fn tcg_string_io_has_no_address_size() {
        // QEMU's TCG sets neither the address-size nor the segment bits.
        let rec = svm_record(svm_exit::IOIO, ioio(0x3f8, SZ8, false) | STRING | REP, 0);
        let Exit::Io(io) = Exit::decode(&rec) else {
            panic!()
        };
        assert_eq!((io.address_size, io.segment), (None, None));
        // Hardware: A64 and DS (3).
        let rec = svm_record(
            svm_exit::IOIO,
            ioio(0x3f8, SZ8, false) | STRING | (0b100 << ADDR_SHIFT) | (3 << SEG_SHIFT),
            0,
        );
        let Exit::Io(io) = Exit::decode(&rec) else {
            panic!()
        };
        assert_eq!((io.address_size, io.segment), (Some(8), Some(3)));
    }

    #[test]
    fn cr_dr_and_invlpg_exits_decode() {
        let d = |code, i1| Exit::decode(&svm_record(code, i1, 0));
        assert_eq!(
            d(0x03, 0),
            Exit::CrAccess {
                cr: 3,
                write: false,
                gpr: None
            }
        );
        assert_eq!(
            d(0x10, (1 << 63) | 5),
            Exit::CrAccess {
                cr: 0,
                write: true,
                gpr: Some(5)
            }
        );
        assert_eq!(
            d(0x37, 0),
            Exit::DrAccess {
                dr: 7,
                write: true,
                gpr: None
            }
        );
        assert_eq!(d(svm_exit::INVLPG, 0), Exit::Invlpg { linear: None });
        assert_eq!(
            d(svm_exit::INVLPG, 0xffff_8000_0000_1000),
            Exit::Invlpg {
                linear: Some(0xffff_8000_0000_1000)
            }
        );
    }

    #[test]
    fn npf_outside_ram_is_mmio() {
        let rec = svm_record(svm_exit::NPF, 0x6, 0xfee0_0300);
        assert_eq!(
            Exit::decode_in(&rec, 16 << 20),
            Exit::Mmio {
                gpa: 0xfee0_0300,
                access: NpfAccess {
                    write: true,
                    fetch: false,
                    in_table_walk: false
                }
            }
        );
        let rec = svm_record(svm_exit::NPF, 0x1_0000_0004 | 0x10, 0x1000);
        assert_eq!(
            Exit::decode_in(&rec, 16 << 20),
            Exit::NestedPageFault {
                gpa: 0x1000,
                error_code: 0x1_0000_0014
            },
            "inside RAM it stays a nested page fault"
        );
        let rec = svm_record(svm_exit::NPF, 1 << 33, 0x4000_0000);
        let Exit::Mmio { access, .. } = Exit::decode_in(&rec, 16 << 20) else {
            panic!()
        };
        assert!(access.in_table_walk);
    }

    #[test]
    fn out_dx_al_carries_only_al() {
        let mut rec = svm_record(svm_exit::IOIO, ioio(0x3f8, SZ8, false), 0x10_0021);
        rec.regs.rax = 0xdead_beef_cafe_1241;
        let Exit::Io(io) = Exit::decode(&rec) else {
            panic!("not io")
        };
        assert_eq!(io.direction, IoDirection::Out);
        assert_eq!(io.port, 0x3f8);
        assert_eq!(io.size, IoSize::Byte);
        assert_eq!(io.value, 0x41);
    }

    #[test]
    fn sixteen_and_thirty_two_bit_accesses() {
        let mut rec = svm_record(svm_exit::IOIO, ioio(0xcfc, SZ16, false), 0);
        rec.regs.rax = 0xffff_ffff_1234_5678;
        let Exit::Io(io) = Exit::decode(&rec) else {
            panic!()
        };
        assert_eq!((io.size, io.value), (IoSize::Word, 0x5678));
        rec.exit_info1 = ioio(0xcfc, SZ32, false);
        let Exit::Io(io) = Exit::decode(&rec) else {
            panic!()
        };
        assert_eq!(
            (io.size, io.value, io.port),
            (IoSize::Dword, 0x1234_5678, 0xcfc)
        );
        rec.exit_info1 = ioio(0xcfc, SZ32, true);
        let Exit::Io(io) = Exit::decode(&rec) else {
            panic!()
        };
        assert_eq!((io.direction, io.value), (IoDirection::In, 0));
    }

    #[test]
    fn string_and_rep_bits() {
        let rec = svm_record(
            svm_exit::IOIO,
            ioio(0x3f8, SZ8, false) | STRING | REP | (3 << SEG_SHIFT),
            0,
        );
        let Exit::Io(io) = Exit::decode(&rec) else {
            panic!()
        };
        assert!(io.string && io.rep);
        assert_eq!(io.value, 0, "OUTS takes its data from memory, not RAX");
        assert_eq!(io.mnemonic(), "outsb");
        let rec = svm_record(svm_exit::IOIO, ioio(0x1f0, SZ16, true) | STRING, 0);
        let Exit::Io(io) = Exit::decode(&rec) else {
            panic!()
        };
        assert!(io.string && !io.rep);
        assert_eq!(io.mnemonic(), "insw");
    }

    #[test]
    fn malformed_ioio_is_other() {
        for bad in [0, SZ8 | SZ16, SZ8 | SZ16 | SZ32] {
            let rec = svm_record(svm_exit::IOIO, bad, 0);
            assert_eq!(
                Exit::decode(&rec),
                Exit::Other {
                    raw: svm_exit::IOIO
                }
            );
        }
    }

    #[test]
    fn other_svm_exits_decode() {
        let mut rec = svm_record(svm_exit::HLT, 0, 0);
        assert_eq!(
            Exit::decode(&rec),
            Exit::Hlt {
                interrupts_enabled: false
            }
        );
        rec.regs.rflags = 0x202;
        assert_eq!(
            Exit::decode(&rec),
            Exit::Hlt {
                interrupts_enabled: true
            }
        );
        let d = |code, i1, i2| Exit::decode(&svm_record(code, i1, i2));
        assert_eq!(d(svm_exit::SHUTDOWN, 0, 0), Exit::Shutdown);
        assert_eq!(d(svm_exit::INVALID, 0, 0), Exit::EntryFailed);
        assert_eq!(d(svm_exit::CPUID, 0, 0), Exit::Cpuid);
        assert_eq!(d(svm_exit::MSR, 0, 0), Exit::Msr { write: false });
        assert_eq!(d(svm_exit::MSR, 1, 0), Exit::Msr { write: true });
        assert_eq!(
            d(svm_exit::NPF, 0x6, 0xfee0_0000),
            Exit::NestedPageFault {
                gpa: 0xfee0_0000,
                error_code: 0x6
            }
        );
        assert_eq!(
            d(0x40, 0, 0),
            Exit::Exception {
                vector: 0,
                error_code: None,
                address: None
            }
        );
        assert_eq!(
            d(0x4e, 0x6, 0xdead_b000),
            Exit::Exception {
                vector: 14,
                error_code: Some(6),
                address: Some(0xdead_b000)
            }
        );
        assert_eq!(
            d(0x4d, 0x18, 0),
            Exit::Exception {
                vector: 13,
                error_code: Some(0x18),
                address: None
            }
        );
        assert_eq!(
            d(0x5f, 0, 0),
            Exit::Exception {
                vector: 31,
                error_code: None,
                address: None
            }
        );
        assert_eq!(d(0x60, 0, 0), Exit::ExternalInterrupt);
        assert_eq!(d(0x64, 0, 0), Exit::InterruptWindow);
        assert_eq!(d(svm_exit::VMMCALL, 0, 0), Exit::Vmmcall);
        assert_eq!(d(0x90, 0, 0), Exit::Other { raw: 0x90 });
    }

    #[test]
    fn unknown_arch_is_other() {
        let mut rec = svm_record(svm_exit::HLT, 0, 0);
        rec.arch = 7;
        assert_eq!(Exit::decode(&rec), Exit::Other { raw: svm_exit::HLT });
        assert_eq!(exit_name(7, 0x78).to_string(), "unknown-arch(7)");
    }

    #[test]
    fn vmx_exits_decode() {
        let mut rec = svm_record(vmx_exit::IO, (0x3f8 << 16) | (1 << 3), 0);
        rec.arch = VcpuArch::Vmx as u32;
        let Exit::Io(io) = Exit::decode(&rec) else {
            panic!()
        };
        assert_eq!(
            (io.port, io.size, io.direction),
            (0x3f8, IoSize::Byte, IoDirection::In)
        );
        rec.exit_info1 = (0xf4 << 16) | 3 | (1 << 4) | (1 << 5);
        let Exit::Io(io) = Exit::decode(&rec) else {
            panic!()
        };
        assert!(io.string && io.rep && io.size == IoSize::Dword);
        rec.exit_code = vmx_exit::WRMSR;
        assert_eq!(Exit::decode(&rec), Exit::Msr { write: true });
        rec.exit_code = vmx_exit::TRIPLE_FAULT;
        assert_eq!(Exit::decode(&rec), Exit::Shutdown);
        rec.exit_code = vmx_exit::ENTRY_FAILURE_BIT | 33;
        assert_eq!(Exit::decode(&rec), Exit::EntryFailed);
        rec.exit_code = vmx_exit::CR_ACCESS;
        rec.exit_info1 = 3 | (6 << 8); // MOV to CR3 from RSI
        assert_eq!(
            Exit::decode(&rec),
            Exit::CrAccess {
                cr: 3,
                write: true,
                gpr: Some(6)
            }
        );
        rec.exit_info1 = 3 << 4; // LMSW
        assert_eq!(
            Exit::decode(&rec),
            Exit::CrAccess {
                cr: 0,
                write: true,
                gpr: None
            },
            "LMSW"
        );
        rec.exit_code = vmx_exit::DR_ACCESS;
        rec.exit_info1 = 7 | (1 << 4) | (2 << 8);
        assert_eq!(
            Exit::decode(&rec),
            Exit::DrAccess {
                dr: 7,
                write: false,
                gpr: Some(2)
            }
        );
        rec.exit_code = vmx_exit::INTERRUPT_WINDOW;
        assert_eq!(Exit::decode(&rec), Exit::InterruptWindow);
        // #PF with error code 2 at 0xdead000; then an NMI, which is not an exception.
        rec.exit_code = vmx_exit::EXCEPTION_OR_NMI;
        rec.exit_info1 = 0xdead_b000;
        rec.exit_info2 = (2 << 32) | (1 << 31) | (1 << 11) | (3 << 8) | 14;
        assert_eq!(
            Exit::decode(&rec),
            Exit::Exception {
                vector: 14,
                error_code: Some(2),
                address: Some(0xdead_b000)
            }
        );
        rec.exit_info2 = (1 << 31) | (2 << 8) | 2;
        assert_eq!(Exit::decode(&rec), Exit::Other { raw: 0 });
        rec.exit_code = vmx_exit::EPT_VIOLATION;
        rec.exit_info1 = 0b010;
        rec.exit_info2 = 0xfed0_0000;
        assert!(matches!(
            Exit::decode_in(&rec, 1 << 20),
            Exit::Mmio {
                access: NpfAccess { write: true, .. },
                ..
            }
        ));
        assert_eq!(exit_name(2, 12).to_string(), "hlt");
    }

    #[test]
    fn exit_names() {
        let svm = VcpuArch::Svm as u32;
        assert_eq!(exit_name(svm, 0x72).to_string(), "cpuid");
        assert_eq!(exit_name(svm, 0x7b).to_string(), "ioio");
        assert_eq!(exit_name(svm, 0x46).to_string(), "exception #UD");
        assert_eq!(exit_name(svm, 0x03).to_string(), "read cr3");
        assert_eq!(exit_name(svm, 0x13).to_string(), "write cr3");
        assert_eq!(exit_name(svm, u64::MAX).to_string(), "invalid");
        assert_eq!(exit_name(svm, 0x1234).to_string(), "unknown");
    }

    proptest! {
        #[test]
        fn any_exit_info1_decodes_without_panicking(info1 in any::<u64>(), rax in any::<u64>()) {
            if let Some(io) = decode_svm_ioio(info1, rax) {
                prop_assert_eq!(u64::from(io.port), (info1 >> 16) & 0xffff);
                prop_assert_eq!(io.value & !io.size.mask(), 0);
            }
            let _ = decode_vmx_io(info1, rax);
            let rec = svm_record(svm_exit::IOIO, info1, 0);
            let _ = Exit::decode(&rec);
        }

        #[test]
        fn ioio_fields_round_trip(
            port in any::<u16>(),
            size in prop_oneof![Just(IoSize::Byte), Just(IoSize::Word), Just(IoSize::Dword)],
            is_in in any::<bool>(),
            string in any::<bool>(),
            rep in any::<bool>(),
            addr_and_seg in 0u64..64,
            rax in any::<u64>(),
        ) {
            let sz = match size { IoSize::Byte => SZ8, IoSize::Word => SZ16, IoSize::Dword => SZ32 };
            let info1 = ioio(port, sz, is_in)
                | if string { STRING } else { 0 }
                | if rep { REP } else { 0 }
                | (addr_and_seg << ADDR_SHIFT);
            let io = decode_svm_ioio(info1, rax).expect("one size bit is set");
            prop_assert_eq!(io.port, port);
            prop_assert_eq!(io.size, size);
            prop_assert_eq!(io.direction, if is_in { IoDirection::In } else { IoDirection::Out });
            prop_assert_eq!((io.string, io.rep), (string, rep));
            let want = if !is_in && !string { rax as u32 & size.mask() } else { 0 };
            prop_assert_eq!(io.value, want);
        }
    }
}
