//! The VCPU page: the exit record the stub writes on every VM exit and the
//! resume the server writes back. One page, mapped in the stub and in the
//! vmm-server at `stub_abi::layout::VCPU_PAGE`; nothing is copied through a
//! message buffer.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

macro_rules! wire {
    ($(#[$m:meta])* pub struct $name:ident { $($body:tt)* }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
        #[repr(C)]
        pub struct $name { $($body)* }
    };
}
pub(crate) use wire;

/// Which virtualization extension produced an exit record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum VcpuArch {
    /// AMD SVM: `exit_code` is the VMCB EXITCODE (AMD APM vol. 2, appendix C).
    Svm = 1,
    /// Intel VMX: `exit_code` is the basic exit reason (Intel SDM vol. 3, appendix C).
    Vmx = 2,
}

impl VcpuArch {
    /// The arch for a raw `arch` field, if known.
    pub fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            1 => Some(Self::Svm),
            2 => Some(Self::Vmx),
            _ => None,
        }
    }
}

// The exit codes moved to `crate::exit`, beside the VMX exit reasons; the
// old path stays for the stub's back ends.
pub use crate::exit::svm_exit;

/// IOIO EXITINFO1 bits (AMD APM vol. 2, 15.10.2, figure 15-2).
pub mod svm_ioio {
    /// 1 = IN, 0 = OUT.
    pub const TYPE_IN: u64 = 1 << 0;
    /// INS/OUTS.
    pub const STRING: u64 = 1 << 2;
    /// REP prefix.
    pub const REP: u64 = 1 << 3;
    /// 8-bit operand.
    pub const SZ8: u64 = 1 << 4;
    /// 16-bit operand.
    pub const SZ16: u64 = 1 << 5;
    /// 32-bit operand.
    pub const SZ32: u64 = 1 << 6;
    /// Address size bits A16/A32/A64 (7..=9).
    pub const ADDR_SHIFT: u32 = 7;
    /// Effective segment of a string access (10..=12).
    pub const SEG_SHIFT: u32 = 10;
    /// Port number (16..=31).
    pub const PORT_SHIFT: u32 = 16;
}

wire! {
    /// A segment register in the SVM VMCB format: `attrib` packs the
    /// descriptor's type (bits 0-3), S, DPL, P, AVL, L, D/B and G (bits 4-11).
    pub struct Segment {
        /// Selector.
        pub selector: u16,
        /// Packed attributes (APM vol. 2, 15.5.1 "Segment State").
        pub attrib: u16,
        /// Limit in bytes (already expanded by granularity).
        pub limit: u32,
        /// Base address.
        pub base: u64,
    }
}

impl Segment {
    /// The L bit: a 64-bit code segment.
    pub const ATTR_L: u16 = 1 << 9;
    /// The D/B bit: a 32-bit segment.
    pub const ATTR_DB: u16 = 1 << 10;
}

wire! {
    /// The guest's general-purpose registers, instruction pointer and flags.
    pub struct GuestRegs {
        /// RAX.
        pub rax: u64,
        /// RBX.
        pub rbx: u64,
        /// RCX.
        pub rcx: u64,
        /// RDX.
        pub rdx: u64,
        /// RSI.
        pub rsi: u64,
        /// RDI.
        pub rdi: u64,
        /// RBP.
        pub rbp: u64,
        /// RSP.
        pub rsp: u64,
        /// R8.
        pub r8: u64,
        /// R9.
        pub r9: u64,
        /// R10.
        pub r10: u64,
        /// R11.
        pub r11: u64,
        /// R12.
        pub r12: u64,
        /// R13.
        pub r13: u64,
        /// R14.
        pub r14: u64,
        /// R15.
        pub r15: u64,
        /// RIP.
        pub rip: u64,
        /// RFLAGS.
        pub rflags: u64,
    }
}

wire! {
    /// Everything the stub knows about one VM exit, written to the VCPU page
    /// before the vmm-server runs.
    pub struct ExitRecord {
        /// [`crate::ABI_VERSION`] of the stub that wrote this record.
        pub abi_version: u32,
        /// [`VcpuArch`] as a raw number.
        pub arch: u32,
        /// Number of this exit, counting from 1.
        pub sequence: u64,
        /// Raw exit code (SVM EXITCODE / VMX basic exit reason).
        pub exit_code: u64,
        /// SVM EXITINFO1 / VMX exit qualification.
        pub exit_info1: u64,
        /// SVM EXITINFO2 / VMX guest-linear or guest-physical address.
        pub exit_info2: u64,
        /// Event that was being delivered when the exit happened (SVM EXITINTINFO format).
        pub exit_int_info: u64,
        /// Address of the next instruction, or 0 when the hardware did not say.
        pub next_rip: u64,
        /// The guest's registers at the exit.
        pub regs: GuestRegs,
        /// CR0.
        pub cr0: u64,
        /// CR2.
        pub cr2: u64,
        /// CR3.
        pub cr3: u64,
        /// CR4.
        pub cr4: u64,
        /// EFER.
        pub efer: u64,
        /// CS, for the operating mode and the linear address of RIP.
        pub cs: Segment,
        /// Current privilege level.
        pub cpl: u8,
        /// 1 when the guest is in an interrupt shadow (after STI or MOV SS).
        pub interrupt_shadow: u8,
        /// Number of valid bytes in `insn_bytes` (0 when the hardware gave none).
        pub insn_len: u8,
        /// Reserved, zero.
        pub reserved: [u8; 5],
        /// Bytes of the instruction that exited, when the hardware fetched them.
        pub insn_bytes: [u8; 16],
    }
}

impl ExitRecord {
    /// The stub's notification exit carrying notification word `word`
    /// ([`crate::exit::stub_exit::NOTIFICATION`]); `guest_ran`: the guest
    /// was entered since the task's last resume was applied
    /// ([`crate::exit::stub_exit::GUEST_RAN`] in `exit_info2`).
    pub fn notification(word: u32, guest_ran: bool) -> Self {
        Self {
            abi_version: crate::ABI_VERSION,
            exit_code: crate::exit::stub_exit::NOTIFICATION,
            exit_info1: u64::from(word),
            exit_info2: if guest_ran {
                crate::exit::stub_exit::GUEST_RAN
            } else {
                0
            },
            ..Self::default()
        }
    }

    /// The event whose delivery this exit interrupted, to inject again at
    /// the next entry (`exit_int_info`: APM vol. 2, 15.7.2), or `None`.
    ///
    /// `None` too when the guest's own INT n, INT3 or INTO raised it (a
    /// software interrupt, or #BP or #OF, which nothing else raises): RIP
    /// still points at the instruction (APM vol. 2, 15.20; SDM vol. 3C,
    /// 28.2.4), so the guest executes it again and it is delivered once.
    /// Injected, it would push the instruction's own address, and the
    /// handler would return into it and take the event a second time.
    pub fn event_to_redeliver(&self) -> Option<EventInjection> {
        let info = self.exit_int_info;
        let kind = ((info >> 8) & 7) as u8;
        let vector = info as u8;
        let software = kind == EventKind::SoftwareInterrupt as u8
            || (kind == EventKind::Exception as u8 && matches!(vector, 3 | 4));
        if info & EXITINTINFO_VALID == 0 || software {
            return None;
        }
        Some(EventInjection {
            vector,
            kind,
            has_error_code: u8::from(info & EXITINTINFO_EV != 0),
            reserved: 0,
            error_code: (info >> 32) as u32,
        })
    }
}

/// `exit_int_info`'s valid bit.
pub const EXITINTINFO_VALID: u64 = 1 << 31;
/// `exit_int_info`'s error-code-valid bit.
pub const EXITINTINFO_EV: u64 = 1 << 11;

bitflags::bitflags! {
    /// Which parts of a [`Resume`] the stub applies.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct ResumeFlags: u32 {
        /// Write all general-purpose registers, RSP included, from `regs`.
        const SET_GPRS = 1 << 0;
        /// Continue at `regs.rip` (for example the exit's `next_rip`).
        const SET_RIP = 1 << 1;
        /// Write RFLAGS from `regs.rflags`.
        const SET_RFLAGS = 1 << 2;
        /// Inject `event` on entry.
        const INJECT_EVENT = 1 << 3;
        /// Exit (SVM VINTR, 0x64) as soon as the guest can take an external
        /// interrupt: RFLAGS.IF set and no interrupt shadow. Applies to this
        /// entry only; ask again on the next resume if still needed.
        const REQUEST_INTERRUPT_WINDOW = 1 << 4;
        /// Shadow paging, the mmu-server's call: load the hardware paging
        /// state from `paging`. Nested paging, any VCPU task's (the
        /// vmm-server's answer to a MOV to CR4): load the guest's CR4 from
        /// `paging.cr4` alone, within the stub's allowlist.
        const SET_PAGING = 1 << 5;
        /// Write CR2 from `cr2` (SVM does not set it when a #PF is injected).
        const SET_CR2 = 1 << 6;
        /// Nested paging only, the mmu-server's call: run the guest on the
        /// nested tables rooted at `paging.root` (a level-4 table of the
        /// stub's; nCR3 on SVM, the EPTP on VMX) from now on; the other
        /// fields of `paging` are ignored. The stub runs no nested-paging
        /// guest before a resume with this flag.
        const SET_NESTED_ROOT = 1 << 7;
        /// With `SET_PAGING`: the load flushes only the guest's non-global
        /// translations, as the guest's own MOV to CR3 does, so global
        /// pages survive the switch of shadow roots (SVM TLB_CONTROL 7,
        /// AMD APM vol. 2, 15.16.1). Without it the load flushes every
        /// translation of the guest (what a CR0 or CR4.PGE change needs). A
        /// flush asked for with `Syscall::MmuFlush` stays a full one. On VMX
        /// without VPID every entry flushes everything anyway, so the flag
        /// changes nothing there. Ignored without `SET_PAGING`.
        const FLUSH_NON_GLOBAL = 1 << 8;
        /// Bound every entry from now on by `exit_deadline`: the guest
        /// exits (as for a host interrupt) no later than when the host's
        /// TSC reaches it, exits or not of its own. 0 removes the bound. The
        /// vmm-server names its next timer deadline so that a guest spinning
        /// without exits (`while (jiffies == j);`) still sees its tick.
        const SET_EXIT_DEADLINE = 1 << 9;
        /// Load XCR0 from `xcr0` (the vmm-server's answer to an XSETBV
        /// exit). XCR0 is not switched by VMRUN or VM entry, so the
        /// guest's value stays in the hardware; the stub checks it
        /// against its allowlist (x87, SSE, AVX), the host's CPUID 0xD
        /// and XSETBV's rules (x87 set, AVX only with SSE).
        const SET_XCR0 = 1 << 10;
        /// Run the guest with `tsc_offset` added to the host's TSC (SVM
        /// TSC_OFFSET, VMX "use TSC offsetting"): the vmm-server keeps the
        /// guest's TSC on the board's virtual clock, which leaves out the
        /// time spent handling exits. Guest-visible only.
        const SET_TSC_OFFSET = 1 << 11;
    }
}

wire! {
    /// The paging state the hardware runs a shadowed guest with. The guest's
    /// own CR0/CR3/CR4/EFER are the mmu-server's business (it intercepts
    /// them); these are what the CPU really uses. With
    /// [`ResumeFlags::SET_NESTED_ROOT`] only `root` (and `flags`) count.
    pub struct PagingState {
        /// Hardware CR0: PG must be set (the guest always runs on shadow
        /// tables; SVM allows paging with PE clear, "paged real mode").
        pub cr0: u64,
        /// Hardware CR4: PAE must be set (shadow tables use 64-bit entries).
        pub cr4: u64,
        /// Hardware EFER: with LME set the root is a level-4 table,
        /// otherwise a level-3 (PAE) one. SVME is forced on by the stub.
        pub efer: u64,
        /// The shadow root ([`crate::mmu::TableHandle`]).
        pub root: u32,
        /// [`PagingState::INTERCEPT_INVLPG`] (shadow paging), other bits
        /// zero; zero with `SET_NESTED_ROOT`.
        pub flags: u32,
    }
}

impl PagingState {
    /// Shadow paging: the guest's INVLPG exits (to the mmu-server) until
    /// the next `SET_PAGING` without this bit. The mmu-server asks for it
    /// while some guest page table is unsynchronized (writable, its
    /// shadow possibly stale), when it must resync at the guest's INVLPG.
    pub const INTERCEPT_INVLPG: u32 = 1;
}

/// Kinds of injectable events (the TYPE field of SVM EVENTINJ, APM vol. 2, 15.20).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum EventKind {
    /// External interrupt.
    ExternalInterrupt = 0,
    /// Non-maskable interrupt.
    Nmi = 2,
    /// Hardware exception.
    Exception = 3,
    /// Software interrupt (INTn).
    SoftwareInterrupt = 4,
}

impl EventKind {
    /// The kind for a raw TYPE value, if it is one the ABI allows.
    pub fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            0 => Some(Self::ExternalInterrupt),
            2 => Some(Self::Nmi),
            3 => Some(Self::Exception),
            4 => Some(Self::SoftwareInterrupt),
            _ => None,
        }
    }
}

wire! {
    /// An event to inject when the guest is entered.
    pub struct EventInjection {
        /// Interrupt or exception vector.
        pub vector: u8,
        /// [`EventKind`] as a raw number.
        pub kind: u8,
        /// 1 when `error_code` is pushed.
        pub has_error_code: u8,
        /// Reserved, zero.
        pub reserved: u8,
        /// Error code, when `has_error_code` is 1.
        pub error_code: u32,
    }
}

wire! {
    /// What the vmm-server asks the stub to do before re-entering the guest.
    pub struct Resume {
        /// [`crate::ABI_VERSION`] the server was built against.
        pub abi_version: u32,
        /// [`ResumeFlags`] as raw bits; unknown bits are refused.
        pub flags: u32,
        /// Register values, applied according to `flags`.
        pub regs: GuestRegs,
        /// The event to inject when `INJECT_EVENT` is set.
        pub event: EventInjection,
        /// The hardware paging state when `SET_PAGING` is set.
        pub paging: PagingState,
        /// CR2 when `SET_CR2` is set.
        pub cr2: u64,
        /// A host TSC value when `SET_EXIT_DEADLINE` is set (0: none).
        pub exit_deadline: u64,
        /// XCR0 when `SET_XCR0` is set.
        pub xcr0: u64,
        /// The guest's TSC offset (two's complement) when `SET_TSC_OFFSET`
        /// is set.
        pub tsc_offset: u64,
    }
}

wire! {
    /// The guest's own control registers, as a shadow MMU virtualizes them.
    pub struct GuestControl {
        /// CR0 as the guest sees it.
        pub cr0: u64,
        /// CR3 as the guest sees it.
        pub cr3: u64,
        /// CR4 as the guest sees it.
        pub cr4: u64,
        /// EFER as the guest sees it.
        pub efer: u64,
    }
}

wire! {
    /// The page shared by the stub and the vmm-server.
    pub struct VcpuPage {
        /// Written by the stub on each exit; read-only by convention for the server.
        pub exit: ExitRecord,
        /// Written by the server before `Syscall::VcpuRun`; copied and checked by the stub.
        pub resume: Resume,
        /// Written by the stub on `Syscall::StatsRead`.
        pub stats: crate::Stats,
        /// The mmu-server's counters: the mmu-server keeps them current in
        /// its own page; `StatsRead` copies them into the caller's.
        pub mmu: crate::stats::MmuStats,
        /// Shadow paging: the mmu-server keeps the guest's own control
        /// registers here; the stub puts them in the exit records other
        /// servers get, in place of the hardware's.
        pub guest_control: GuestControl,
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn software_events_are_executed_again_not_redelivered() {
        let rec = |info| ExitRecord {
            exit_int_info: info,
            ..ExitRecord::default()
        };
        assert_eq!(rec(0).event_to_redeliver(), None);
        assert_eq!(rec(0x0000_030e).event_to_redeliver(), None, "not valid");
        // INT 0x30, INT3 (#BP), INTO (#OF): the guest runs them again.
        for info in [0x8000_0430, 0x8000_0303, 0x8000_0304] {
            assert_eq!(rec(info).event_to_redeliver(), None, "{info:#x}");
        }
        // A #PF with its error code and an external interrupt go again.
        let pf = rec(0x0000_0006_8000_0b0e).event_to_redeliver().unwrap();
        assert_eq!(
            (pf.vector, pf.kind, pf.has_error_code, pf.error_code),
            (14, 3, 1, 6)
        );
        let irq = rec(0x8000_0030).event_to_redeliver().unwrap();
        assert_eq!((irq.vector, irq.kind, irq.has_error_code), (0x30, 0, 0));
    }
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn segment_layout_is_pinned() {
        assert_eq!(size_of::<Segment>(), 16);
        assert_eq!(offset_of!(Segment, selector), 0);
        assert_eq!(offset_of!(Segment, attrib), 2);
        assert_eq!(offset_of!(Segment, limit), 4);
        assert_eq!(offset_of!(Segment, base), 8);
    }

    #[test]
    fn guest_regs_layout_is_pinned() {
        assert_eq!(size_of::<GuestRegs>(), 18 * 8);
        assert_eq!(offset_of!(GuestRegs, rax), 0);
        assert_eq!(offset_of!(GuestRegs, rsp), 7 * 8);
        assert_eq!(offset_of!(GuestRegs, r8), 8 * 8);
        assert_eq!(offset_of!(GuestRegs, r15), 15 * 8);
        assert_eq!(offset_of!(GuestRegs, rip), 16 * 8);
        assert_eq!(offset_of!(GuestRegs, rflags), 17 * 8);
    }

    #[test]
    fn exit_record_layout_is_pinned() {
        assert_eq!(offset_of!(ExitRecord, abi_version), 0);
        assert_eq!(offset_of!(ExitRecord, arch), 4);
        assert_eq!(offset_of!(ExitRecord, sequence), 8);
        assert_eq!(offset_of!(ExitRecord, exit_code), 16);
        assert_eq!(offset_of!(ExitRecord, exit_info1), 24);
        assert_eq!(offset_of!(ExitRecord, exit_info2), 32);
        assert_eq!(offset_of!(ExitRecord, exit_int_info), 40);
        assert_eq!(offset_of!(ExitRecord, next_rip), 48);
        assert_eq!(offset_of!(ExitRecord, regs), 56);
        assert_eq!(offset_of!(ExitRecord, cr0), 200);
        assert_eq!(offset_of!(ExitRecord, cr2), 208);
        assert_eq!(offset_of!(ExitRecord, cr3), 216);
        assert_eq!(offset_of!(ExitRecord, cr4), 224);
        assert_eq!(offset_of!(ExitRecord, efer), 232);
        assert_eq!(offset_of!(ExitRecord, cs), 240);
        assert_eq!(offset_of!(ExitRecord, cpl), 256);
        assert_eq!(offset_of!(ExitRecord, interrupt_shadow), 257);
        assert_eq!(offset_of!(ExitRecord, insn_len), 258);
        assert_eq!(offset_of!(ExitRecord, insn_bytes), 264);
        assert_eq!(size_of::<ExitRecord>(), 280);
    }

    #[test]
    fn event_injection_layout_is_pinned() {
        assert_eq!(size_of::<EventInjection>(), 8);
        assert_eq!(offset_of!(EventInjection, vector), 0);
        assert_eq!(offset_of!(EventInjection, kind), 1);
        assert_eq!(offset_of!(EventInjection, has_error_code), 2);
        assert_eq!(offset_of!(EventInjection, error_code), 4);
    }

    #[test]
    fn resume_layout_is_pinned() {
        assert_eq!(offset_of!(Resume, abi_version), 0);
        assert_eq!(offset_of!(Resume, flags), 4);
        assert_eq!(offset_of!(Resume, regs), 8);
        assert_eq!(offset_of!(Resume, event), 152);
        assert_eq!(offset_of!(Resume, paging), 160);
        assert_eq!(offset_of!(Resume, cr2), 192);
        assert_eq!(offset_of!(Resume, exit_deadline), 200);
        assert_eq!(offset_of!(Resume, xcr0), 208);
        assert_eq!(offset_of!(Resume, tsc_offset), 216);
        assert_eq!(size_of::<Resume>(), 224);
        assert_eq!(size_of::<PagingState>(), 32);
        assert_eq!(offset_of!(PagingState, cr0), 0);
        assert_eq!(offset_of!(PagingState, cr4), 8);
        assert_eq!(offset_of!(PagingState, efer), 16);
        assert_eq!(offset_of!(PagingState, root), 24);
        assert_eq!(offset_of!(PagingState, flags), 28);
    }

    #[test]
    fn vcpu_page_layout_is_pinned_and_fits_a_page() {
        assert_eq!(offset_of!(VcpuPage, exit), 0);
        assert_eq!(offset_of!(VcpuPage, resume), 280);
        assert_eq!(offset_of!(VcpuPage, stats), 504);
        assert!(size_of::<VcpuPage>() <= crate::PAGE_SIZE as usize);
    }

    #[test]
    fn resume_flags_and_event_kinds_round_trip() {
        assert_eq!(ResumeFlags::all().bits(), 0b1111_1111_1111);
        for k in [
            EventKind::ExternalInterrupt,
            EventKind::Nmi,
            EventKind::Exception,
            EventKind::SoftwareInterrupt,
        ] {
            assert_eq!(EventKind::from_raw(k as u8), Some(k));
        }
        assert_eq!(EventKind::from_raw(1), None);
        assert_eq!(EventKind::from_raw(5), None);
        assert_eq!(VcpuArch::from_raw(1), Some(VcpuArch::Svm));
        assert_eq!(VcpuArch::from_raw(0), None);
    }
}
