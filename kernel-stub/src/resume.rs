//! Checks a `Resume` from the vmm-server before the stub obeys it.
//!
//! A server is not trusted: whatever it writes, the stub either applies a
//! resume that cannot make VMRUN fail its consistency checks, or refuses it
//! with an error code. Nothing here can panic.

use ipc_proto::{ErrorCode, EventKind, PagingState, Resume, ResumeFlags, ABI_VERSION};

/// What the stub knows of the guest when it checks a resume: the state
/// the resume does not set but the entry checks depend on.
#[derive(Clone, Copy, Debug, Default)]
pub struct GuestMode {
    /// EFER.LMA now (a `SET_PAGING` may change it).
    pub lma: bool,
    /// CS.L: 64-bit code when LMA is set.
    pub cs_l: bool,
    /// CS.D (default operand size 32).
    pub cs_d: bool,
    /// RFLAGS now (a `SET_RFLAGS` may change it).
    pub rflags: u64,
    /// An interrupt shadow (STI, MOV SS) is in force now; `SET_RIP` ends it.
    pub interrupt_shadow: bool,
    /// The guest runs on shadow tables: only then may a resume set the
    /// hardware paging state.
    pub shadow: bool,
}

/// CR0 bits (AMD APM vol. 2, 3.1.1; Intel SDM vol. 3A, 2.5).
pub mod cr0 {
    pub use ipc_proto::x86::cr0::*;
}

/// CR4 bits (AMD APM vol. 2, 3.1.3; Intel SDM vol. 3A, 2.5).
pub mod cr4 {
    pub use ipc_proto::x86::cr4::*;
    /// The bits a shadowed guest's hardware CR4 may ever hold. Left out on
    /// purpose: LA57 (the hardware would walk every checked table one level
    /// higher than it was checked at), PCIDE (CR3 is the stub's root, no
    /// PCIDs), PKE, PKS, CET and the rest (the shadow tables do not use
    /// them), VMXE and SMXE (the host's). PSE is ignored with PAE, which is
    /// always set, but no server needs it either.
    pub const SHADOW_ALLOWED: u64 = VME
        | PVI
        | TSD
        | DE
        | PAE
        | MCE
        | PGE
        | PCE
        | OSFXSR
        | OSXMMEXCPT
        | UMIP
        | FSGSBASE
        | OSXSAVE
        | SMEP
        | SMAP;
}

/// XCR0 bits (SDM vol. 1, 13.3).
pub mod xcr0 {
    pub use ipc_proto::x86::xcr0::*;
}

/// EFER bits (AMD APM vol. 2, 3.1.7). SVME is set by the stub itself on
/// SVM (VMRUN requires it), never by a server.
pub mod efer {
    pub use ipc_proto::x86::efer::*;
    /// The bits a shadowed guest's hardware EFER may hold.
    pub const SHADOW_ALLOWED: u64 = SCE | LME | LMA | NXE | FFXSR;
}

/// The hardware paging state a server may ask for: an allowlist of bits,
/// each also one this CPU implements (a bit the CPU lacks is reserved, and
/// VMRUN or VM entry would fail on it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PagingRules {
    /// CR0 bits that may be set.
    pub cr0: u64,
    /// CR4 bits that may be set.
    pub cr4: u64,
    /// EFER bits that may be set.
    pub efer: u64,
    /// XCR0 bits a `SET_XCR0` may set: none without XSAVE.
    pub xcr0: u64,
}

impl PagingRules {
    /// A CPU with every feature: the allowlists alone.
    pub const ALL_FEATURES: Self = Self {
        cr0: cr0::DEFINED,
        cr4: cr4::SHADOW_ALLOWED,
        efer: efer::SHADOW_ALLOWED,
        xcr0: xcr0::ALLOWED,
    };

    /// The allowlists narrowed to what `cpuid(leaf, subleaf)` says the CPU
    /// has (EAX, EBX, ECX, EDX).
    pub fn from_cpuid(cpuid: impl Fn(u32, u32) -> [u32; 4]) -> Self {
        let max = cpuid(0, 0)[0];
        let [_, _, ecx1, edx1] = cpuid(1, 0);
        let [_, ebx7, ecx7, _] = if max >= 7 { cpuid(7, 0) } else { [0; 4] };
        let ext_max = cpuid(0x8000_0000, 0)[0];
        let edx_ext = if ext_max >= 0x8000_0001 {
            cpuid(0x8000_0001, 0)[3]
        } else {
            0
        };
        let has = |word: u32, bit: u32, feature: u64| {
            if word & (1 << bit) != 0 {
                feature
            } else {
                0
            }
        };
        let cr4_features = has(edx1, 1, cr4::VME | cr4::PVI)
            | cr4::TSD
            | has(edx1, 2, cr4::DE)
            | has(edx1, 6, cr4::PAE)
            | has(edx1, 7, cr4::MCE)
            | has(edx1, 13, cr4::PGE)
            | cr4::PCE
            | has(edx1, 24, cr4::OSFXSR)
            | has(edx1, 25, cr4::OSXMMEXCPT)
            | has(ecx7, 2, cr4::UMIP)
            | has(ebx7, 0, cr4::FSGSBASE)
            | has(ecx1, 26, cr4::OSXSAVE)
            | has(ebx7, 7, cr4::SMEP)
            | has(ebx7, 20, cr4::SMAP);
        let efer_features = efer::SCE
            | has(edx_ext, 29, efer::LME | efer::LMA)
            | has(edx_ext, 20, efer::NXE)
            | has(edx_ext, 25, efer::FFXSR);
        // XCR0: what CPUID 0xD.0 EAX says the CPU supports.
        let xcr0_features = if max >= 0xd && ecx1 & (1 << 26) != 0 {
            u64::from(cpuid(0xd, 0)[0])
        } else {
            0
        };
        Self {
            cr0: cr0::DEFINED,
            cr4: cr4::SHADOW_ALLOWED & cr4_features,
            efer: efer::SHADOW_ALLOWED & efer_features,
            xcr0: xcr0::ALLOWED & xcr0_features,
        }
    }
}

/// Checks a hardware paging state for a shadowed guest whose code segment
/// is `mode`'s: only allowed bits, in a combination VMRUN and VM entry
/// accept (APM vol. 2, 15.5.1; SDM vol. 3C, 27.3.1.1); paging on with
/// 64-bit entries (PAE), or the guest would use guest-physical addresses as
/// host-physical ones or read shadow tables in another format; the root a
/// live shadow table of the level the mode walks from (`root_level` looks
/// a handle up).
pub fn validate_paging(
    p: &PagingState,
    rules: &PagingRules,
    mode: &GuestMode,
    root_level: impl Fn(u32) -> Option<u8>,
) -> Result<(), ErrorCode> {
    let lme = p.efer & efer::LME != 0;
    let want_level = if lme { 4 } else { 3 };
    let ok = p.cr0 & !rules.cr0 == 0
        && p.cr4 & !rules.cr4 == 0
        && p.efer & !rules.efer == 0
        && p.cr0 & cr0::PG != 0
        && (p.cr0 & cr0::NW == 0 || p.cr0 & cr0::CD != 0)
        && (!lme || p.cr0 & cr0::PE != 0)
        && p.cr4 & cr4::PAE != 0
        && (p.efer & efer::LMA != 0) == lme
        && !(lme && mode.cs_l && mode.cs_d)
        && p.flags & !PagingState::INTERCEPT_INVLPG == 0
        && root_level(p.root) == Some(want_level);
    if ok {
        Ok(())
    } else {
        Err(ErrorCode::ResumeBadPaging)
    }
}

/// Checks the CR4 a server gives a nested-paging guest (`SET_PAGING`
/// under nested paging, where only `cr4` counts: the vmm-server's answer
/// to an intercepted MOV to CR4): the allowlist, plus PSE, which the
/// guest's own 32-bit paging may use; PAE stays set in long mode, as
/// VMRUN and VM entry require (APM vol. 2, 15.5.1; SDM vol. 3C, 26.3.1.1).
pub fn validate_nested_cr4(
    cr4: u64,
    rules: &PagingRules,
    mode: &GuestMode,
) -> Result<(), ErrorCode> {
    if cr4 & !(rules.cr4 | cr4::PSE) == 0 && (!mode.lma || cr4 & cr4::PAE != 0) {
        Ok(())
    } else {
        Err(ErrorCode::ResumeBadPaging)
    }
}

/// Checks the XCR0 a server gives the guest (`SET_XCR0`, the answer to
/// an XSETBV exit): only allowed bits the CPU supports, x87 set, AVX only
/// with SSE, so the stub's XSETBV cannot #GP (SDM vol. 2C, XSETBV). The
/// host uses no extended state, so any such value is safe to keep.
pub fn validate_xcr0(value: u64, rules: &PagingRules) -> Result<(), ErrorCode> {
    let ok = value & !rules.xcr0 == 0
        && value & xcr0::X87 != 0
        && (value & xcr0::AVX == 0 || value & xcr0::SSE != 0);
    if ok {
        Ok(())
    } else {
        Err(ErrorCode::ResumeBadXcr0)
    }
}

/// Checks the root of a nested-paging guest (`ResumeFlags::SET_NESTED_ROOT`):
/// a live four-level table of the stub's (`root_level` looks a handle up),
/// whose entries the install check passed in the VM's nested format.
pub fn validate_nested_root(
    p: &PagingState,
    root_level: impl Fn(u32) -> Option<u8>,
) -> Result<(), ErrorCode> {
    if p.flags == 0 && root_level(p.root) == Some(4) {
        Ok(())
    } else {
        Err(ErrorCode::ResumeBadPaging)
    }
}

/// RFLAGS bits that must be zero: 3, 5, 15 and 22..=63 (AMD APM vol. 2, 3.1.6).
const RFLAGS_RESERVED_ZERO: u64 = (1 << 3) | (1 << 5) | (1 << 15) | !((1 << 22) - 1);
/// RFLAGS bit 1 reads as one.
const RFLAGS_RESERVED_ONE: u64 = 1 << 1;
/// RFLAGS.TF.
const RFLAGS_TF: u64 = 1 << 8;
/// RFLAGS.IF.
const RFLAGS_IF: u64 = 1 << 9;
/// RFLAGS.VM.
const RFLAGS_VM: u64 = 1 << 17;

/// The exception vectors a resume may inject: the architecturally defined
/// ones a guest can take, 0..=21 but for 2 (NMI is no exception: VMRUN
/// fails such an EVENTINJ, AMD APM vol. 2, 15.20), 9 and 15 (reserved on
/// today's CPUs). The reserved 22..=31 are refused too: QEMU's VMRUN fails
/// on 31, which the attack campaign's random resumes found.
pub fn is_injectable_exception(vector: u8) -> bool {
    vector <= 21 && !matches!(vector, 2 | 9 | 15)
}

/// Exceptions that push an error code (AMD APM vol. 2, 8.2).
fn pushes_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10 | 11 | 12 | 13 | 14 | 17 | 21 | 29 | 30)
}

/// A canonical 48-bit virtual address: bits 63..47 all equal.
pub fn is_canonical(addr: u64) -> bool {
    let top = addr >> 47;
    top == 0 || top == (1 << 17) - 1
}

/// Accepts `r` or says why not. `root_level` looks a table handle up, for
/// `SET_PAGING` and `SET_NESTED_ROOT`; whether the caller may set a root
/// at all is the caller's check.
pub fn validate(
    r: &Resume,
    mode: &GuestMode,
    rules: &PagingRules,
    root_level: impl Fn(u32) -> Option<u8>,
) -> Result<ResumeFlags, ErrorCode> {
    if r.abi_version != ABI_VERSION {
        return Err(ErrorCode::AbiMismatch);
    }
    let flags = ResumeFlags::from_bits(r.flags).ok_or(ErrorCode::ResumeUnknownFlags)?;
    let set_paging = flags.contains(ResumeFlags::SET_PAGING);
    if flags.contains(ResumeFlags::SET_NESTED_ROOT) && mode.shadow {
        return Err(ErrorCode::ResumeBadPaging);
    }
    if set_paging && mode.shadow {
        validate_paging(&r.paging, rules, mode, &root_level)?;
    } else if set_paging {
        validate_nested_cr4(r.paging.cr4, rules, mode)?;
    }
    if flags.contains(ResumeFlags::SET_NESTED_ROOT) {
        validate_nested_root(&r.paging, &root_level)?;
    }
    if flags.contains(ResumeFlags::SET_XCR0) {
        validate_xcr0(r.xcr0, rules)?;
    }
    // The entry checks RIP against the mode the guest enters in, which a
    // SET_PAGING in the same resume may change.
    let lma = if set_paging && mode.shadow {
        r.paging.efer & efer::LMA != 0
    } else {
        mode.lma
    };
    let rip = if flags.contains(ResumeFlags::SET_RIP) {
        Some(r.regs.rip)
    } else {
        None
    };
    if let Some(rip) = rip {
        let ok = if lma && mode.cs_l {
            is_canonical(rip)
        } else {
            rip <= u64::from(u32::MAX)
        };
        if !ok {
            return Err(ErrorCode::ResumeBadRip);
        }
    }
    let rflags = if flags.contains(ResumeFlags::SET_RFLAGS) {
        let new = r.regs.rflags;
        let changed = new ^ mode.rflags;
        // VM entry checks the segments against VM (virtual-8086 mode) and
        // refuses VM in long mode; in an interrupt shadow it refuses IF
        // clear under STI blocking and a TF that disagrees with the
        // pending single-step (SDM vol. 3C, 27.3.1.4-5). A server never
        // needs to change them there: emulation that ends the shadow sets
        // RIP.
        let in_shadow = mode.interrupt_shadow && rip.is_none();
        if new & RFLAGS_RESERVED_ZERO != 0
            || new & RFLAGS_RESERVED_ONE == 0
            || changed & RFLAGS_VM != 0
            || in_shadow && changed & (RFLAGS_TF | RFLAGS_IF) != 0
        {
            return Err(ErrorCode::ResumeBadRflags);
        }
        new
    } else {
        mode.rflags
    };
    if flags.contains(ResumeFlags::INJECT_EVENT) {
        let e = &r.event;
        let kind = EventKind::from_raw(e.kind).ok_or(ErrorCode::ResumeBadEvent)?;
        let vector_ok = match kind {
            EventKind::Exception => is_injectable_exception(e.vector),
            EventKind::Nmi => e.vector == 2,
            EventKind::ExternalInterrupt | EventKind::SoftwareInterrupt => true,
        };
        let error_code_ok = match e.has_error_code {
            0 => true,
            1 => kind == EventKind::Exception && pushes_error_code(e.vector),
            _ => false,
        };
        // VM entry refuses an external interrupt the guest could not take
        // (IF clear, or in an interrupt shadow), and an NMI in an interrupt
        // shadow (SDM vol. 3C, 27.3.1.5); SVM would deliver them, against
        // the guest's own masking. SET_RIP ends the shadow.
        let shadow = mode.interrupt_shadow && rip.is_none();
        let deliverable = match kind {
            EventKind::ExternalInterrupt => rflags & RFLAGS_IF != 0 && !shadow,
            EventKind::Nmi => !shadow,
            EventKind::Exception | EventKind::SoftwareInterrupt => true,
        };
        if !vector_ok || !error_code_ok || !deliverable || e.reserved != 0 {
            return Err(ErrorCode::ResumeBadEvent);
        }
    }
    Ok(flags)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipc_proto::{EventInjection, GuestRegs};
    use proptest::prelude::*;

    const PROTECTED: GuestMode = GuestMode {
        lma: false,
        cs_l: false,
        cs_d: true,
        rflags: 0x202,
        interrupt_shadow: false,
        shadow: false,
    };
    const LONG: GuestMode = GuestMode {
        lma: true,
        cs_l: true,
        cs_d: false,
        ..PROTECTED
    };
    const SHADOW: GuestMode = GuestMode {
        shadow: true,
        ..PROTECTED
    };
    const RULES: PagingRules = PagingRules::ALL_FEATURES;

    /// Handle 1 is a level-3 table, 2 a level-4 one.
    fn level(h: u32) -> Option<u8> {
        match h {
            1 => Some(3),
            2 => Some(4),
            _ => None,
        }
    }

    fn check(r: &Resume, mode: GuestMode) -> Result<ResumeFlags, ErrorCode> {
        validate(r, &mode, &RULES, level)
    }

    fn resume(flags: ResumeFlags) -> Resume {
        Resume {
            abi_version: ABI_VERSION,
            flags: flags.bits(),
            regs: GuestRegs {
                rflags: 2,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    const PAE: PagingState = PagingState {
        cr0: cr0::PG | cr0::PE | cr0::ET,
        cr4: cr4::PAE,
        efer: 0,
        root: 1,
        flags: 0,
    };
    const LONG_PAGING: PagingState = PagingState {
        efer: efer::LME | efer::LMA,
        root: 2,
        ..PAE
    };

    fn paging(p: &PagingState, mode: &GuestMode) -> Result<(), ErrorCode> {
        validate_paging(p, &RULES, mode, level)
    }

    #[test]
    fn a_plain_resume_is_accepted() {
        let mut r = resume(ResumeFlags::SET_RIP | ResumeFlags::SET_GPRS);
        r.regs.rip = 0x10_0010;
        assert_eq!(
            check(&r, PROTECTED),
            Ok(ResumeFlags::SET_RIP | ResumeFlags::SET_GPRS)
        );
    }

    #[test]
    fn a_non_canonical_rip_is_refused_in_long_mode() {
        let mut r = resume(ResumeFlags::SET_RIP);
        r.regs.rip = 0x0000_8000_0000_0000;
        assert_eq!(check(&r, LONG), Err(ErrorCode::ResumeBadRip));
        r.regs.rip = 0xffff_8000_0000_0000;
        assert!(check(&r, LONG).is_ok());
    }

    #[test]
    fn a_rip_above_4_gib_is_refused_outside_long_mode() {
        let mut r = resume(ResumeFlags::SET_RIP);
        r.regs.rip = 0x1_0000_0000;
        assert_eq!(check(&r, PROTECTED), Err(ErrorCode::ResumeBadRip));
        // Compatibility mode (LMA without CS.L) holds 32-bit RIPs too.
        let compat = GuestMode {
            cs_l: false,
            ..LONG
        };
        assert_eq!(check(&r, compat), Err(ErrorCode::ResumeBadRip));
        // Without SET_RIP the field is not looked at.
        r.flags = 0;
        assert!(check(&r, PROTECTED).is_ok());
    }

    /// Finding 5: the RIP was checked against the mode before the
    /// resume's own SET_PAGING, which may leave long mode.
    #[test]
    fn the_rip_is_checked_against_the_mode_after_set_paging() {
        let mut r = resume(ResumeFlags::SET_RIP | ResumeFlags::SET_PAGING);
        r.regs.rip = 0xffff_8000_0000_0000;
        r.paging = PAE;
        let long_shadow = GuestMode {
            shadow: true,
            ..LONG
        };
        assert_eq!(check(&r, long_shadow), Err(ErrorCode::ResumeBadRip));
        r.paging = LONG_PAGING;
        assert!(check(&r, long_shadow).is_ok());
        // And entering long mode with a 64-bit CS makes a high RIP legal.
        let cs_l_legacy = GuestMode {
            lma: false,
            ..long_shadow
        };
        assert!(check(&r, cs_l_legacy).is_ok());
    }

    #[test]
    fn wrong_abi_and_unknown_flags_are_refused() {
        let mut r = resume(ResumeFlags::empty());
        r.abi_version = ABI_VERSION + 1;
        assert_eq!(check(&r, PROTECTED), Err(ErrorCode::AbiMismatch));
        let mut r = resume(ResumeFlags::empty());
        r.flags = 1 << 31;
        assert_eq!(check(&r, PROTECTED), Err(ErrorCode::ResumeUnknownFlags));
    }

    #[test]
    fn reserved_rflags_are_refused() {
        let mut r = resume(ResumeFlags::SET_RFLAGS);
        r.regs.rflags = 0x202;
        assert!(check(&r, PROTECTED).is_ok());
        for bad in [
            0x200,
            0x202 | 1 << 3,
            0x202 | 1 << 5,
            0x202 | 1 << 15,
            0x202 | 1 << 22,
            0x202 | 1 << 63,
        ] {
            r.regs.rflags = bad;
            assert_eq!(
                check(&r, PROTECTED),
                Err(ErrorCode::ResumeBadRflags),
                "{bad:#x}"
            );
        }
    }

    fn event(vector: u8, kind: u8, has_error_code: u8) -> Resume {
        let mut r = resume(ResumeFlags::INJECT_EVENT);
        r.event = EventInjection {
            vector,
            kind,
            has_error_code,
            reserved: 0,
            error_code: 0,
        };
        r
    }

    /// Finding 5: an accepted resume must enter. VM entry refuses a
    /// changed RFLAGS.VM (the segments are not virtual-8086 ones) and, in
    /// an interrupt shadow, a changed TF or IF.
    #[test]
    fn rflags_changes_vm_entry_refuses_are_refused() {
        let mut r = resume(ResumeFlags::SET_RFLAGS);
        r.regs.rflags = 0x202 | 1 << 17;
        assert_eq!(
            check(&r, PROTECTED),
            Err(ErrorCode::ResumeBadRflags),
            "VM set"
        );
        let in_shadow = GuestMode {
            interrupt_shadow: true,
            ..PROTECTED
        };
        for changed in [0x2, 0x302] {
            r.regs.rflags = changed;
            assert_eq!(
                check(&r, in_shadow),
                Err(ErrorCode::ResumeBadRflags),
                "{changed:#x}"
            );
            assert!(
                check(&r, PROTECTED).is_ok(),
                "{changed:#x} outside a shadow"
            );
            let mut past = r;
            past.flags |= ResumeFlags::SET_RIP.bits();
            assert!(check(&past, in_shadow).is_ok(), "{changed:#x} with SET_RIP");
        }
        r.regs.rflags = 0x202 | 1 << 11; // OF: no entry rule
        assert!(check(&r, in_shadow).is_ok());
    }

    #[test]
    fn events_are_checked_against_their_kind() {
        let ev =
            |vector, kind, has_error_code| check(&event(vector, kind, has_error_code), PROTECTED);
        assert!(ev(13, 3, 1).is_ok(), "#GP with error code");
        assert!(ev(6, 3, 0).is_ok(), "#UD");
        assert!(ev(0x20, 0, 0).is_ok(), "external interrupt");
        assert!(ev(2, 2, 0).is_ok(), "NMI");
        for (v, k, e, what) in [
            (6, 3, 1, "#UD has no error code"),
            (2, 3, 0, "vector 2 as an exception"),
            (32, 3, 0, "exception vector above 31"),
            (
                31,
                3,
                0,
                "reserved exception vector 31 (QEMU's VMRUN fails it)",
            ),
            (22, 3, 0, "reserved exception vector 22"),
            (15, 3, 0, "reserved exception vector 15"),
            (0x20, 1, 0, "reserved type 1"),
            (0x20, 5, 0, "reserved type 5"),
            (13, 3, 2, "has_error_code not 0/1"),
        ] {
            assert_eq!(ev(v, k, e), Err(ErrorCode::ResumeBadEvent), "{what}");
        }
    }

    /// Finding 5: an external interrupt injected while the guest has IF=0
    /// fails VM entry (Bochs VMX: 0x80000021) and would bypass the guest's
    /// masking on SVM.
    #[test]
    fn an_interrupt_the_guest_masks_is_refused() {
        let masked = GuestMode {
            rflags: 0x2,
            ..PROTECTED
        };
        let irq = event(0x20, 0, 0);
        assert_eq!(check(&irq, masked), Err(ErrorCode::ResumeBadEvent));
        // The same resume setting IF is fine; clearing it is not.
        let mut r = irq;
        r.flags |= ResumeFlags::SET_RFLAGS.bits();
        r.regs.rflags = 0x202;
        assert!(check(&r, masked).is_ok());
        r.regs.rflags = 0x2;
        assert_eq!(check(&r, PROTECTED), Err(ErrorCode::ResumeBadEvent));
        // An interrupt shadow blocks interrupts and NMIs until SET_RIP
        // moves past the instruction that set it.
        let in_shadow = GuestMode {
            interrupt_shadow: true,
            ..PROTECTED
        };
        assert_eq!(check(&irq, in_shadow), Err(ErrorCode::ResumeBadEvent));
        assert_eq!(
            check(&event(2, 2, 0), in_shadow),
            Err(ErrorCode::ResumeBadEvent)
        );
        assert!(
            check(&event(14, 3, 1), in_shadow).is_ok(),
            "exceptions are not blocked"
        );
        let mut past = irq;
        past.flags |= ResumeFlags::SET_RIP.bits();
        past.regs.rip = 0x1000;
        assert!(check(&past, in_shadow).is_ok());
    }

    #[test]
    fn paging_must_stay_on_shadow_tables() {
        assert_eq!(paging(&PAE, &SHADOW), Ok(()));
        assert_eq!(paging(&LONG_PAGING, &SHADOW), Ok(()));
        let paged_real_mode = PagingState {
            cr0: cr0::PG | cr0::ET,
            ..PAE
        };
        assert_eq!(paging(&paged_real_mode, &SHADOW), Ok(()));
        let invlpg_exits = PagingState {
            flags: PagingState::INTERCEPT_INVLPG,
            ..PAE
        };
        assert_eq!(paging(&invlpg_exits, &SHADOW), Ok(()));
        for bad in [
            PagingState { cr0: 0x11, ..PAE },
            PagingState { cr4: 0, ..PAE },
            PagingState { root: 2, ..PAE },
            PagingState {
                root: 1,
                ..LONG_PAGING
            },
            PagingState { root: 7, ..PAE },
            PagingState {
                efer: efer::LME,
                ..LONG_PAGING
            },
            PagingState {
                cr0: PAE.cr0 | 1 << 32,
                ..PAE
            },
            PagingState { flags: 2, ..PAE },
            PagingState {
                flags: 1 << 31,
                ..PAE
            },
        ] {
            assert_eq!(
                paging(&bad, &SHADOW),
                Err(ErrorCode::ResumeBadPaging),
                "{bad:?}"
            );
        }
        let mut r = resume(ResumeFlags::SET_PAGING);
        r.paging = PAE;
        assert!(check(&r, SHADOW).is_ok());
        // Under nested paging only CR4 counts (the root is not looked at).
        r.paging.root = 7;
        assert_eq!(check(&r, PROTECTED), Ok(ResumeFlags::SET_PAGING));
    }

    /// Nested paging: the vmm-server's answer to a MOV to CR4 carries only
    /// CR4, checked against the allowlist (with PSE); PAE stays in long
    /// mode, or VMRUN and VM entry would fail.
    #[test]
    fn a_nested_guests_cr4_is_allowlisted() {
        let cr4_only = |cr4: u64| {
            let mut r = resume(ResumeFlags::SET_PAGING | ResumeFlags::SET_RIP);
            r.regs.rip = 0x1000;
            r.paging = PagingState {
                cr4,
                ..Default::default()
            };
            r
        };
        for ok in [
            0,
            cr4::PSE,
            cr4::PGE | cr4::OSFXSR,
            cr4::SMEP | cr4::FSGSBASE,
        ] {
            assert!(check(&cr4_only(ok), PROTECTED).is_ok(), "{ok:#x}");
        }
        for bit in 0..64 {
            let b = 1u64 << bit;
            assert_eq!(
                check(&cr4_only(cr4::PAE | b), LONG).is_ok(),
                (cr4::SHADOW_ALLOWED | cr4::PSE) & b != 0,
                "CR4 bit {bit}"
            );
        }
        for bad in [cr4::LA57, cr4::PCIDE, cr4::VMXE, cr4::PKE] {
            assert_eq!(
                check(&cr4_only(cr4::PAE | bad), LONG),
                Err(ErrorCode::ResumeBadPaging)
            );
        }
        assert_eq!(
            check(&cr4_only(cr4::PGE), LONG),
            Err(ErrorCode::ResumeBadPaging)
        );
        // The CR4 load does not change the mode RIP is checked against.
        let mut far = cr4_only(cr4::PAE);
        far.regs.rip = 1 << 40;
        assert!(check(&far, LONG).is_ok());
        assert_eq!(check(&far, PROTECTED), Err(ErrorCode::ResumeBadRip));
    }

    /// Finding 2: CR4.LA57 made the hardware walk every checked table one
    /// level higher than it was checked at. Finding 5: bits VMRUN refuses.
    /// Every bit outside the allowlist is refused, alone.
    #[test]
    fn only_allowlisted_control_bits_are_accepted() {
        for bit in 0..64 {
            let b = 1u64 << bit;
            let with_cr0 = PagingState {
                cr0: LONG_PAGING.cr0 | b,
                ..LONG_PAGING
            };
            let with_cr4 = PagingState {
                cr4: LONG_PAGING.cr4 | b,
                ..LONG_PAGING
            };
            let with_efer = PagingState {
                efer: LONG_PAGING.efer | b,
                ..LONG_PAGING
            };
            let nw_alone = b == cr0::NW;
            assert_eq!(
                paging(&with_cr0, &SHADOW).is_ok(),
                cr0::DEFINED & b != 0 && !nw_alone,
                "CR0 bit {bit}"
            );
            assert_eq!(
                paging(&with_cr4, &SHADOW).is_ok(),
                cr4::SHADOW_ALLOWED & b != 0,
                "CR4 bit {bit}"
            );
            assert_eq!(
                paging(&with_efer, &SHADOW).is_ok(),
                efer::SHADOW_ALLOWED & b != 0,
                "EFER bit {bit}"
            );
        }
        for bad in [cr4::LA57, cr4::PCIDE, cr4::PKE, cr4::VMXE, 1 << 63] {
            let p = PagingState {
                cr4: PAE.cr4 | bad,
                ..PAE
            };
            assert_eq!(
                paging(&p, &SHADOW),
                Err(ErrorCode::ResumeBadPaging),
                "{bad:#x}"
            );
        }
        let nw_cd = PagingState {
            cr0: PAE.cr0 | cr0::NW | cr0::CD,
            ..PAE
        };
        assert_eq!(paging(&nw_cd, &SHADOW), Ok(()));
    }

    /// Long mode needs PE with PG, and a 64-bit CS may not also be D=1
    /// (APM vol. 2, 15.5.1: both make VMRUN fail).
    #[test]
    fn long_mode_combinations_vmrun_refuses_are_refused() {
        let no_pe = PagingState {
            cr0: cr0::PG | cr0::ET,
            ..LONG_PAGING
        };
        assert_eq!(paging(&no_pe, &SHADOW), Err(ErrorCode::ResumeBadPaging));
        let cs_l_and_d = GuestMode {
            cs_l: true,
            cs_d: true,
            ..SHADOW
        };
        assert_eq!(
            paging(&LONG_PAGING, &cs_l_and_d),
            Err(ErrorCode::ResumeBadPaging)
        );
        assert_eq!(
            paging(&PAE, &cs_l_and_d),
            Ok(()),
            "L is ignored outside long mode"
        );
    }

    /// A bit the CPU does not implement is reserved there: SMEP on a CPU
    /// without it, NXE without NX, long mode on a 32-bit CPU.
    #[test]
    fn the_allowlist_follows_the_cpu() {
        let bare = PagingRules::from_cpuid(|leaf, _| match leaf {
            0 => [1, 0, 0, 0],
            1 => [0, 0, 0, 1 << 6 | 1 << 13 | 1 << 24 | 1 << 25],
            0x8000_0000 => [0x8000_0001, 0, 0, 0],
            _ => [0; 4],
        });
        assert_eq!(
            bare.cr4,
            cr4::TSD | cr4::PAE | cr4::PGE | cr4::PCE | cr4::OSFXSR | cr4::OSXMMEXCPT
        );
        assert_eq!(bare.efer, efer::SCE);
        let smep = PagingState {
            cr4: PAE.cr4 | cr4::SMEP,
            ..PAE
        };
        assert_eq!(
            validate_paging(&smep, &bare, &SHADOW, level),
            Err(ErrorCode::ResumeBadPaging)
        );
        assert_eq!(
            validate_paging(&LONG_PAGING, &bare, &SHADOW, level),
            Err(ErrorCode::ResumeBadPaging)
        );
        let full = PagingRules::from_cpuid(|leaf, _| match leaf {
            0 => [0xd, 0, 0, 0],
            1 => [0, 0, u32::MAX, u32::MAX],
            7 => [0, u32::MAX, u32::MAX, 0],
            0x8000_0000 => [0x8000_0008, 0, 0, 0],
            _ => [u32::MAX; 4],
        });
        assert_eq!(full, PagingRules::ALL_FEATURES);
    }

    #[test]
    fn the_nested_root_is_a_level_4_table_and_only_for_nested_paging() {
        let root = |root, flags| PagingState {
            root,
            flags,
            ..Default::default()
        };
        assert_eq!(validate_nested_root(&root(2, 0), level), Ok(()));
        for bad in [root(1, 0), root(7, 0), root(2, 1)] {
            assert_eq!(
                validate_nested_root(&bad, level),
                Err(ErrorCode::ResumeBadPaging),
                "{bad:?}"
            );
        }
        let mut r = resume(ResumeFlags::SET_NESTED_ROOT);
        r.paging = root(2, 0);
        assert!(check(&r, PROTECTED).is_ok());
        assert_eq!(check(&r, SHADOW), Err(ErrorCode::ResumeBadPaging));
        r.paging = root(1, 0);
        assert_eq!(check(&r, PROTECTED), Err(ErrorCode::ResumeBadPaging));
    }

    fn any_resume() -> impl Strategy<Value = Resume> {
        (
            (any::<u32>(), any::<u64>(), any::<u64>(), any::<bool>()),
            (any::<[u8; 4]>(), any::<u32>()),
            (any::<u64>(), any::<u64>(), any::<u64>(), 0u32..4, 0u32..4),
        )
            .prop_map(
                |(
                    (flags, rip, rflags, right_abi),
                    ([vector, kind, has_error_code, reserved], error_code),
                    (cr0, cr4, efer, root, paging_flags),
                )| Resume {
                    abi_version: if right_abi {
                        ABI_VERSION
                    } else {
                        ABI_VERSION ^ 0x55
                    },
                    flags: flags & 0x3ff,
                    regs: GuestRegs {
                        rip,
                        rflags,
                        ..Default::default()
                    },
                    event: EventInjection {
                        vector,
                        kind: kind % 8,
                        has_error_code: has_error_code % 3,
                        reserved: reserved % 2,
                        error_code,
                    },
                    paging: PagingState {
                        // Mostly legal-looking states, with any bits on top.
                        cr0: (PAE.cr0 | cr0 & cr0::DEFINED) ^ (cr0 >> 60 << 60),
                        cr4: PAE.cr4 | 1 << (cr4 % 64) | cr4 >> 62,
                        efer: efer & 0xffff,
                        root,
                        flags: paging_flags,
                    },
                    ..Default::default()
                },
            )
    }

    fn any_mode() -> impl Strategy<Value = GuestMode> {
        (any::<[bool; 5]>(), prop_oneof![Just(2u64), Just(0x202u64)]).prop_map(
            |([lma, cs_l, cs_d, interrupt_shadow, shadow], rflags)| GuestMode {
                lma,
                cs_l,
                cs_d,
                rflags,
                interrupt_shadow,
                shadow,
            },
        )
    }

    /// XSETBV's #GP(0) conditions for XCR0 on a CPU whose CPUID 0xD.0
    /// shows `supported` (SDM vol. 2C, XSETBV; vol. 1, 13.3), with the
    /// stub's allowlist on top.
    fn xsetbv_accepts(value: u64, supported: u64) -> bool {
        value & !supported == 0
            && value & 1 != 0
            && !(value & 4 != 0 && value & 2 == 0)
            && value & !xcr0::ALLOWED == 0
    }

    #[test]
    fn xcr0_values() {
        let rules = |xcr0| PagingRules { xcr0, ..RULES };
        for ok in [1, 3, 7] {
            assert_eq!(validate_xcr0(ok, &rules(7)), Ok(()));
        }
        for bad in [0, 2, 5, 6, 8, 1 << 9 | 7, 0xe7, 1 << 63 | 1] {
            assert_eq!(validate_xcr0(bad, &rules(7)), Err(ErrorCode::ResumeBadXcr0));
        }
        assert_eq!(validate_xcr0(7, &rules(3)), Err(ErrorCode::ResumeBadXcr0));
        assert_eq!(
            validate_xcr0(1, &rules(0)),
            Err(ErrorCode::ResumeBadXcr0),
            "no XSAVE"
        );
        // From CPUID: AVX-512 and PKRU on the host stay out.
        let r = PagingRules::from_cpuid(|leaf, _| match leaf {
            0 => [0xd, 0, 0, 0],
            1 => [0, 0, 1 << 26, 0],
            0xd => [0x2e7, 0, 0, 0],
            _ => [0; 4],
        });
        assert_eq!(r.xcr0, 7);
        let r = PagingRules::from_cpuid(|leaf, _| match leaf {
            0 => [0xd, 0, 0, 0],
            0xd => [0x7, 0, 0, 0],
            _ => [0; 4],
        });
        assert_eq!(r.xcr0, 0, "no XSAVE in leaf 1");
    }

    proptest! {
        /// A `SET_XCR0` the stub accepts is one XSETBV takes without #GP on
        /// the CPU the rules came from, and within the allowlist.
        #[test]
        fn accepted_xcr0_never_faults(
            value in prop_oneof![0u64..16, any::<u64>(), (0u32..64).prop_map(|b| 1u64 << b | 3)],
            supported in prop_oneof![Just(0u64), Just(3u64), Just(7u64), any::<u32>().prop_map(u64::from)],
        ) {
            let rules = PagingRules::from_cpuid(|leaf, _| match leaf {
                0 => [0xd, 0, 0, 0],
                1 => [0, 0, if supported != 0 { 1 << 26 } else { 0 }, 0],
                0xd => [u32::try_from(supported).unwrap(), 0, 0, 0],
                _ => [0; 4],
            });
            let mut r = resume(ResumeFlags::SET_XCR0);
            r.xcr0 = value;
            let accepted = validate(&r, &PROTECTED, &rules, level).is_ok();
            prop_assert_eq!(accepted, xsetbv_accepts(value, supported));
        }

        /// Whatever a server writes, an accepted resume is one VMRUN and VM
        /// entry can run: known flags, a RIP the resulting mode can hold,
        /// legal RFLAGS, a legal deliverable event, and a paging state of
        /// allowlisted bits only, in a combination the CPU accepts.
        #[test]
        fn accepted_resumes_are_always_legal(r in any_resume(), mode in any_mode()) {
            if let Ok(flags) = validate(&r, &mode, &RULES, level) {
                prop_assert_eq!(r.abi_version, ABI_VERSION);
                let p = r.paging;
                if flags.contains(ResumeFlags::SET_PAGING) && !mode.shadow {
                    prop_assert_eq!(p.cr4 & !(cr4::SHADOW_ALLOWED | cr4::PSE), 0);
                    prop_assert!(!mode.lma || p.cr4 & cr4::PAE != 0);
                }
                let lma = if flags.contains(ResumeFlags::SET_PAGING) && mode.shadow {
                    prop_assert_eq!(p.cr0 & !cr0::DEFINED, 0);
                    prop_assert_eq!(p.cr4 & !cr4::SHADOW_ALLOWED, 0);
                    prop_assert_eq!(p.cr4 & cr4::LA57, 0);
                    prop_assert_eq!(p.efer & !efer::SHADOW_ALLOWED, 0);
                    prop_assert!(p.cr0 & cr0::PG != 0 && p.cr4 & cr4::PAE != 0);
                    prop_assert!(p.cr0 & cr0::NW == 0 || p.cr0 & cr0::CD != 0);
                    let lme = p.efer & efer::LME != 0;
                    prop_assert_eq!(lme, p.efer & efer::LMA != 0);
                    prop_assert!(!lme || (p.cr0 & cr0::PE != 0 && !(mode.cs_l && mode.cs_d)));
                    prop_assert_eq!(level(p.root), Some(if lme { 4 } else { 3 }));
                    lme
                } else {
                    mode.lma
                };
                if flags.contains(ResumeFlags::SET_RIP) {
                    let fits = if lma && mode.cs_l { is_canonical(r.regs.rip) } else { r.regs.rip >> 32 == 0 };
                    prop_assert!(fits);
                }
                let rflags = if flags.contains(ResumeFlags::SET_RFLAGS) {
                    prop_assert!(r.regs.rflags & 2 != 0 && r.regs.rflags >> 22 == 0);
                    prop_assert_eq!((r.regs.rflags ^ mode.rflags) & 1 << 17, 0);
                    if mode.interrupt_shadow && !flags.contains(ResumeFlags::SET_RIP) {
                        prop_assert_eq!((r.regs.rflags ^ mode.rflags) & 0x300, 0);
                    }
                    r.regs.rflags
                } else {
                    mode.rflags
                };
                if flags.contains(ResumeFlags::INJECT_EVENT) {
                    prop_assert!(matches!(r.event.kind, 0 | 2 | 3 | 4));
                    prop_assert!(!(r.event.kind == 3 && (r.event.vector > 21 || matches!(r.event.vector, 2 | 9 | 15))));
                    if r.event.kind == 0 {
                        prop_assert!(rflags & 0x200 != 0);
                    }
                    if matches!(r.event.kind, 0 | 2) {
                        prop_assert!(!mode.interrupt_shadow || flags.contains(ResumeFlags::SET_RIP));
                    }
                }
            }
        }
    }
}
