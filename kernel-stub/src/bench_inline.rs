//! `bench-inline-exits`: the stub answers the `exitbench` guest's exits
//! itself, for `splitvisor bench exits` only (the lower bound of this
//! design: an exit that goes no further than ring 0). Never in a shipped
//! image: the feature builds a separate stub (`images::build_bench_inline_stub`),
//! and without it this module is not compiled into the stub at all.
//!
//! It answers exactly the exits of `images/guests/exitbench.S`, with fixed
//! values and RIP advanced past the instruction, and leaves every other
//! exit to the servers:
//! - OUT to port 0x80; CPUID (leaf 0's answer, whatever the leaf); RDMSR
//!   of MTRRcap (0xFE);
//! - HLT with interrupts on: wakes the guest at once with its timer's
//!   vector (0x40), as if the timer had fired;
//! - the local APIC's version register read (`mov eax, [0xFEE00030]`,
//!   5 bytes) and the TICR and EOI writes (`mov dword ptr [..], imm32`,
//!   10 bytes): an NPF under nested paging, a #PF under shadow paging;
//! - under shadow paging, a write to the `pf` kind's page table at
//!   [`PF_PT`] (`mov [edx], eax`, 2 bytes): skipped, not emulated (the PTE
//!   keeps its frame), so the fault costs its exit and nothing more.
//!
//! The instruction lengths are the guest's encodings (QEMU's SVM gives no
//! instruction bytes for NPF and #PF exits); `bench_exits`'s e2e test boots
//! this stub with that guest, so a change of either shows there.

use ipc_proto::{
    EventInjection, EventKind, ExitKind, ExitRecord, Resume, ResumeFlags, VcpuArch, ABI_VERSION,
};

/// The `exitbench` guest's `pf` page table (its `PF_PT`).
pub const PF_PT: u64 = 0x0080_0000;
/// The local APIC's registers the guest's loops touch.
const APIC_VER: u64 = 0xfee0_0030;
const APIC_EOI: u64 = 0xfee0_00b0;
const APIC_TICR: u64 = 0xfee0_0380;
/// The guest's timer vector.
const TIMER_VECTOR: u8 = 0x40;
/// What CPUID leaf 0 answers: the highest leaf and "AuthenticAMD".
const CPUID_0: [u64; 4] = [0xd, 0x6874_7541, 0x444d_4163, 0x6974_6e65];
/// MTRRcap as the vmm-server answers it: WC, fixed ranges, 8 variable.
const MTRRCAP: u64 = 1 << 10 | 1 << 8 | 8;
const RFLAGS_IF: u64 = 1 << 9;
/// EXITINTINFO's valid bit (the record's format on both extensions).
const EVENT_VALID: u64 = 1 << 31;
/// A guest memory access that exited.
enum Access {
    /// An NPF or EPT violation: the guest-physical address, a write.
    Nested(u64, bool),
    /// A #PF under shadow paging: the linear address (the guest maps its
    /// APIC one to one), and its error code.
    Page(u64, u64),
}

/// #PF error code bits (SDM vol. 3A, 4.7): P, W.
const PRESENT: u64 = 1;
const WRITE: u64 = 1 << 1;

fn access(rec: &ExitRecord) -> Option<Access> {
    let arch = VcpuArch::from_raw(rec.arch)?;
    match (ExitKind::of(rec), arch) {
        // SVM EXITINFO1 bit 1 (APM vol. 2, 15.25.6), VMX qualification
        // bit 1 (SDM table 28-7): a write.
        (ExitKind::NestedPageFault, _) => {
            Some(Access::Nested(rec.exit_info2, rec.exit_info1 & WRITE != 0))
        }
        // SVM: error code in EXITINFO1, CR2 in EXITINFO2 (APM vol. 2, 15.12).
        (ExitKind::Exception { vector: Some(14) }, VcpuArch::Svm) => {
            Some(Access::Page(rec.exit_info2, rec.exit_info1))
        }
        // VMX: the linear address is the qualification, the error code
        // bits 63:32 of exit_info2 (the stub's record, vmx/mod.rs).
        (ExitKind::Exception { vector: Some(14) }, VcpuArch::Vmx) => {
            Some(Access::Page(rec.exit_info1, rec.exit_info2 >> 32))
        }
        _ => None,
    }
}

/// The port of an I/O exit and whether it was an IN: the port is bits
/// 31:16 of EXITINFO1 (SVM) and of the qualification (VMX); IN is bit 0
/// (SVM, APM vol. 2, 15.10.2) or bit 3 (VMX, SDM table 28-5).
fn io(rec: &ExitRecord) -> Option<(u64, bool)> {
    let in_bit = match VcpuArch::from_raw(rec.arch)? {
        VcpuArch::Svm => 1,
        VcpuArch::Vmx => 1 << 3,
    };
    Some((
        (rec.exit_info1 >> 16) & 0xffff,
        rec.exit_info1 & in_bit != 0,
    ))
}

/// The resume that answers `rec` in the stub, or `None`: the servers'.
pub fn resume_for(rec: &ExitRecord) -> Option<(Resume, ResumeFlags)> {
    // An event cut short by the exit is the servers' to deliver again.
    if rec.exit_int_info & EVENT_VALID != 0 {
        return None;
    }
    let mut regs = rec.regs;
    // The hardware's next RIP when it gave one, else the guest's encoding.
    let next = |len: u64| {
        if rec.next_rip != 0 {
            rec.next_rip
        } else {
            rec.regs.rip.wrapping_add(len)
        }
    };
    let mut event = EventInjection::default();
    let mut flags = ResumeFlags::SET_GPRS | ResumeFlags::SET_RIP;
    regs.rip = match ExitKind::of(rec) {
        ExitKind::Io if io(rec)? == (0x80, false) => next(2),
        ExitKind::Cpuid => {
            [regs.rax, regs.rbx, regs.rcx, regs.rdx] = CPUID_0;
            next(2)
        }
        ExitKind::Msr { write: false } if rec.regs.rcx & 0xffff_ffff == 0xfe => {
            regs.rax = MTRRCAP & 0xffff_ffff;
            regs.rdx = MTRRCAP >> 32;
            next(2)
        }
        ExitKind::Hlt if rec.regs.rflags & RFLAGS_IF != 0 => {
            event.vector = TIMER_VECTOR;
            event.kind = EventKind::ExternalInterrupt as u8;
            flags |= ResumeFlags::INJECT_EVENT;
            next(1)
        }
        _ => {
            // (address, write, a write to a present page: under shadow
            // paging a write-protected guest page table, not a shadow miss
            // such as the guest's own writes that fill the table).
            let (address, write, protected) = match access(rec)? {
                Access::Nested(a, write) => (a, write, false),
                Access::Page(a, e) => (a, e & WRITE != 0, e & PRESENT != 0),
            };
            match (address, write) {
                (APIC_VER, false) => {
                    // The version register of QEMU's local APIC.
                    regs.rax = 0x0005_0014;
                    regs.rip.wrapping_add(5)
                }
                (APIC_EOI | APIC_TICR, true) => regs.rip.wrapping_add(10),
                (a, true) if protected && a & !0xfff == PF_PT => regs.rip.wrapping_add(2),
                _ => return None,
            }
        }
    };
    let resume = Resume {
        abi_version: ABI_VERSION,
        flags: flags.bits(),
        regs,
        event,
        ..Resume::default()
    };
    Some((resume, flags))
}

/// Answers `rec` and the exits after it for as long as [`resume_for`]
/// can; `enter` counts the answered exit, applies the resume and runs the
/// guest again. Returns the first exit for the servers.
pub fn answer_all(
    mut rec: ExitRecord,
    mut enter: impl FnMut(&ExitRecord, &Resume, ResumeFlags) -> ExitRecord,
) -> ExitRecord {
    while let Some((resume, flags)) = resume_for(&rec) {
        rec = enter(&rec, &resume, flags);
    }
    rec
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipc_proto::exit::svm_exit;

    fn svm(code: u64, info1: u64, info2: u64) -> ExitRecord {
        let mut rec = ExitRecord {
            arch: VcpuArch::Svm as u32,
            exit_code: code,
            exit_info1: info1,
            exit_info2: info2,
            ..ExitRecord::default()
        };
        rec.regs.rip = 0x1000;
        rec.regs.rflags = 0x202;
        rec
    }

    fn rip(rec: &ExitRecord) -> Option<u64> {
        resume_for(rec).map(|(r, _)| r.regs.rip)
    }

    #[test]
    fn the_guests_instructions_are_answered() {
        // OUT 0x80, AL (EXITINFO1: port 0x80, 8-bit; EXITINFO2 the next RIP).
        let mut out = svm(svm_exit::IOIO, 0x80 << 16 | 1 << 4, 0);
        out.next_rip = 0x1002;
        assert_eq!(rip(&out), Some(0x1002));
        // Without a next RIP, the guest's encoding.
        out.next_rip = 0;
        assert_eq!(rip(&out), Some(0x1002));
        let (r, _) = resume_for(&svm(svm_exit::CPUID, 0, 0)).unwrap();
        assert_eq!(
            (r.regs.rax, r.regs.rbx, r.regs.rip),
            (0xd, 0x6874_7541, 0x1002)
        );
        let mut msr = svm(svm_exit::MSR, 0, 0);
        msr.regs.rcx = 0xfe;
        let (r, f) = resume_for(&msr).unwrap();
        assert_eq!((r.regs.rax, r.regs.rdx), (0x508, 0));
        assert_eq!(f, ResumeFlags::SET_GPRS | ResumeFlags::SET_RIP);
        let (r, f) = resume_for(&svm(svm_exit::HLT, 0, 0)).unwrap();
        assert!(f.contains(ResumeFlags::INJECT_EVENT));
        assert_eq!((r.event.vector, r.regs.rip), (0x40, 0x1001));
        assert_eq!(r.flags, f.bits());
    }

    #[test]
    fn the_guests_memory_accesses_are_answered() {
        let npf_read = svm(svm_exit::NPF, 1, APIC_VER);
        let (r, _) = resume_for(&npf_read).unwrap();
        assert_eq!((r.regs.rax, r.regs.rip), (0x0005_0014, 0x1005));
        assert_eq!(rip(&svm(svm_exit::NPF, 0b111, APIC_TICR)), Some(0x100a));
        // Shadow paging: a #PF (vector 14), error code P|W, CR2.
        let pf = svm_exit::EXCP_BASE + 14;
        assert_eq!(rip(&svm(pf, 0b011, APIC_EOI)), Some(0x100a));
        assert_eq!(rip(&svm(pf, 0b011, PF_PT + 8)), Some(0x1002));
        // VMX: the linear address in the qualification, the error code
        // above the interruption information.
        let mut vmx = svm(0, PF_PT, 3 << 32 | 0x8000_0b0e);
        vmx.arch = VcpuArch::Vmx as u32;
        assert_eq!(rip(&vmx), Some(0x1002));
    }

    #[test]
    fn everything_else_goes_to_the_servers() {
        // Another port, an IN from port 0x80, another MSR, a WRMSR.
        assert!(resume_for(&svm(svm_exit::IOIO, 0x3f8 << 16, 0)).is_none());
        assert!(resume_for(&svm(svm_exit::IOIO, 0x80 << 16 | 1, 0)).is_none());
        let mut msr = svm(svm_exit::MSR, 0, 0);
        msr.regs.rcx = 0x1b;
        assert!(resume_for(&msr).is_none());
        msr.regs.rcx = 0xfe;
        msr.exit_info1 = 1;
        assert!(resume_for(&msr).is_none());
        // HLT with interrupts off: nothing to wake it.
        let mut hlt = svm(svm_exit::HLT, 0, 0);
        hlt.regs.rflags = 2;
        assert!(resume_for(&hlt).is_none());
        // A write to the version register, a read of the page table,
        // another page, another exception, a record of no known arch.
        let pf = svm_exit::EXCP_BASE + 14;
        assert!(resume_for(&svm(svm_exit::NPF, 0b111, APIC_VER)).is_none());
        assert!(resume_for(&svm(pf, 0b001, PF_PT)).is_none());
        // A write that misses the shadow tables (P clear), and a write
        // to the page table under nested paging (no exit there).
        assert!(resume_for(&svm(pf, 0b010, PF_PT)).is_none());
        assert!(resume_for(&svm(svm_exit::NPF, 0b111, PF_PT)).is_none());
        assert!(resume_for(&svm(pf, 0b011, PF_PT + 0x1000)).is_none());
        assert!(resume_for(&svm(svm_exit::EXCP_BASE + 13, 0, APIC_EOI)).is_none());
        let mut odd = svm(svm_exit::CPUID, 0, 0);
        odd.arch = 7;
        assert!(resume_for(&odd).is_none());
        // An exit in the middle of delivering an event.
        let mut cut = svm(svm_exit::CPUID, 0, 0);
        cut.exit_int_info = EVENT_VALID | 0x40;
        assert!(resume_for(&cut).is_none());
    }

    #[test]
    fn answer_all_stops_at_the_first_exit_for_the_servers() {
        let mut exits = [svm(svm_exit::CPUID, 0, 0), svm(svm_exit::CPUID, 0, 0)]
            .into_iter()
            .chain([svm(svm_exit::IOIO, 0x3f8 << 16, 0)]);
        let mut answered = 0;
        let last = answer_all(svm(svm_exit::CPUID, 0, 0), |_, r, _| {
            assert_eq!(r.regs.rip, 0x1002);
            answered += 1;
            exits.next().unwrap()
        });
        assert_eq!(answered, 3);
        assert_eq!(last.exit_code, svm_exit::IOIO);
    }
}
