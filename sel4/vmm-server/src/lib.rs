//! The contract between splitvisor's seL4 root task and the vmm-server
//! component it starts: the component's CSpace (which slot holds what),
//! the badges and label of its messages to the root task, and the
//! arguments the root task hands it (postcard, in a read-only page).
#![no_std]

use ipc_proto::manifest::{Board, EntryMode};
use serde::{Deserialize, Serialize};

/// The component's CSpace: one CNode of 2^4 slots, with a guard that makes
/// every other 64-bit capability address fail to resolve.
pub const CNODE_BITS: u64 = 4;
/// The VCPU, bound to the component's thread.
pub const SLOT_VCPU: u64 = 1;
/// An endpoint to the root task (badge [`BADGE_REPORT`]): the ending.
pub const SLOT_REPORT: u64 = 2;
/// The same endpoint (badge [`BADGE_FAULT`]): seL4 sends the component's
/// faults there.
pub const SLOT_FAULT: u64 = 3;
/// A send capability to the mmu-server component's endpoint (its badge
/// `sel4_mmu_server::BADGE_VMM`): the EPT violations on guest RAM go there.
pub const SLOT_MMU: u64 = 4;
/// How many capabilities the CSpace holds.
pub const CAPABILITIES: u64 = 4;
pub const BADGE_REPORT: u64 = 1;
pub const BADGE_FAULT: u64 = 2;
/// The label of the ending report (MR0: the debug-exit code); fault labels
/// are seL4's small fault numbers.
pub const REPORT_LABEL: u64 = 0x5650;

/// Where guest RAM is mapped in the component's VSpace (and the root
/// task's): PML4 slot 1.
pub const GUEST_WINDOW: u64 = 0x80_0000_0000;

/// What the root task tells the component.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Args {
    pub entry_mode: EntryMode,
    pub entry_rip: u64,
    /// RAX, RBX, RSI at entry.
    pub entry_regs: [u64; 3],
    pub board: Board,
    /// Guest RAM in bytes, mapped at [`GUEST_WINDOW`].
    pub ram: u64,
    pub tsc_hz: u64,
    /// The hostile case (`run --sel4-hostile-vmm`): a capability address of
    /// the root task's (where it held the EPT before handing it to the
    /// mmu-server) that the component invokes although it was not given
    /// it; 0 normally.
    pub hostile_target: u64,
}

/// The largest encoded [`Args`] (the page holds it with its length).
pub const ARGS_MAX: usize = 256;

/// What a VMX exit's handling needs read from the VMCS beyond what
/// `seL4_VMEnter`'s message registers carry (each `ReadVMCS` is a
/// `seL4_Call`, about 600 instructions in Bochs): decided per exit kind
/// from the message registers, so the cheap exits read nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitReads {
    /// The processor mode the vmm-server decodes and checks with: CR0,
    /// CR4, RSP, CS (base, limit, access rights; not the selector, which
    /// the vmm-server does not use) and SS's access rights (CPL); EFER is
    /// derived (see `vcpu.rs`). Otherwise the record carries the mode of
    /// the last exit that read it.
    pub mode: bool,
    /// The IDT-vectoring information: whether the exit interrupted an
    /// event's delivery. An instruction's exit never does.
    pub idt: bool,
}

/// [`ExitReads`] for the exit with basic reason `exit_code`, qualification
/// `qualification`, guest-physical address `gpa` and RCX `rcx`, on a VM
/// with `ram` bytes of guest RAM (whose EPT violations go to the
/// mmu-server component), for an instruction exit when `instruction`.
pub fn exit_reads(
    exit_code: u64,
    qualification: u64,
    gpa: u64,
    rcx: u64,
    ram: u64,
    instruction: bool,
) -> ExitReads {
    use ipc_proto::exit::vmx_exit;
    const EFER: u32 = 0xc000_0080;
    let mode = match exit_code {
        // Answered from the registers (port I/O but string I/O, CPUID,
        // HLT) or from nothing (interrupt window, host interrupt).
        vmx_exit::IO => qualification & (1 << 4) != 0,
        vmx_exit::EXTERNAL_INTERRUPT
        | vmx_exit::INTERRUPT_WINDOW
        | vmx_exit::CPUID
        | vmx_exit::HLT => false,
        // MSR exits are answered from RCX, RAX and RDX (RDMSR and WRMSR
        // raise #GP outside ring 0 before they exit); RDMSR of EFER is
        // answered from the mode.
        vmx_exit::RDMSR => rcx as u32 == EFER,
        vmx_exit::WRMSR => false,
        // The mmu-server maps guest RAM from the address alone.
        vmx_exit::EPT_VIOLATION => gpa >= ram,
        _ => true,
    };
    let idt = !instruction
        && !matches!(
            exit_code,
            vmx_exit::EXTERNAL_INTERRUPT | vmx_exit::INTERRUPT_WINDOW
        );
    ExitReads { mode, idt }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_read_only_what_their_handling_needs() {
        use ipc_proto::exit::vmx_exit::*;
        let ram = 16 << 20;
        let r = |code, q, gpa, rcx, insn| exit_reads(code, q, gpa, rcx, ram, insn);
        let nothing = ExitReads {
            mode: false,
            idt: false,
        };
        assert_eq!(r(IO, 0x3f8 << 16, 0, 0, true), nothing);
        assert!(r(IO, 1 << 4, 0, 0, true).mode, "string I/O decodes");
        assert_eq!(r(CPUID, 0, 0, 0, true), nothing);
        assert_eq!(r(HLT, 0, 0, 0, true), nothing);
        assert_eq!(r(INTERRUPT_WINDOW, 0, 0, 0, false), nothing);
        assert_eq!(r(EXTERNAL_INTERRUPT, 0, 0, 0, false), nothing);
        assert_eq!(r(RDMSR, 0, 0, 0x1b, true), nothing);
        assert_eq!(r(WRMSR, 0, 0, 0xc000_0080, true), nothing);
        assert!(r(RDMSR, 0, 0, 0xc000_0080, true).mode);
        // Guest RAM: the mmu-server's, which re-injects an interrupted event.
        assert_eq!(
            r(EPT_VIOLATION, 0, 0x10_0000, 0, false),
            ExitReads {
                mode: false,
                idt: true
            }
        );
        // Outside it: MMIO, decoded.
        assert_eq!(
            r(EPT_VIOLATION, 0, 0xfee0_0000, 0, false),
            ExitReads {
                mode: true,
                idt: true
            }
        );
        assert_eq!(
            r(CR_ACCESS, 0, 0, 0, true),
            ExitReads {
                mode: true,
                idt: false
            }
        );
        assert_eq!(
            r(EXCEPTION_OR_NMI, 0, 0, 0, false),
            ExitReads {
                mode: true,
                idt: true
            }
        );
    }

    #[test]
    fn args_fit_their_page_and_decode() {
        let a = Args {
            entry_mode: EntryMode::Real16,
            entry_rip: u64::MAX,
            entry_regs: [u64::MAX; 3],
            board: Board::Pc,
            ram: u64::MAX,
            tsc_hz: u64::MAX,
            hostile_target: u64::MAX,
        };
        let mut buf = [0u8; ARGS_MAX];
        let used = postcard::to_slice(&a, &mut buf).unwrap().len();
        assert!(used <= ARGS_MAX);
        assert_eq!(postcard::from_bytes::<Args>(&buf[..used]).unwrap(), a);
    }
}
