//! Checks a `Resume` from the vmm-server before the stub obeys it.
//!
//! A server is not trusted: whatever it writes, the stub either applies a
//! resume that cannot make VMRUN fail its consistency checks, or refuses it
//! with an error code. Nothing here can panic.

use ipc_proto::{ErrorCode, EventKind, PagingState, Resume, ResumeFlags, ABI_VERSION};

/// What the stub knows of the guest's mode when it checks a resume.
#[derive(Clone, Copy, Debug)]
pub struct GuestMode {
    /// EFER.LMA and CS.L both set: RIP is a 64-bit address.
    pub long_mode_code: bool,
    /// The guest runs on shadow tables: only then may a resume set the
    /// hardware paging state.
    pub shadow: bool,
}

const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Checks a hardware paging state for a shadowed guest: paging must stay on
/// with 64-bit entries (PAE), or the guest would use guest-physical
/// addresses as host-physical ones or read shadow tables in another
/// format; the root must be a live shadow table of the level the mode walks
/// from (`root_level` looks a handle up).
pub fn validate_paging(
    p: &PagingState,
    root_level: impl Fn(u32) -> Option<u8>,
) -> Result<(), ErrorCode> {
    let lme = p.efer & EFER_LME != 0;
    let want_level = if lme { 4 } else { 3 };
    let ok = p.cr0 & CR0_PG != 0
        && p.cr0 >> 32 == 0
        && p.cr4 & CR4_PAE != 0
        && (p.efer & EFER_LMA != 0) == lme
        && p.reserved == 0
        && root_level(p.root) == Some(want_level);
    if ok {
        Ok(())
    } else {
        Err(ErrorCode::ResumeBadPaging)
    }
}

/// Checks the root of a nested-paging guest (`ResumeFlags::SET_NESTED_ROOT`):
/// a live four-level table of the stub's (`root_level` looks a handle up),
/// whose entries the install check passed in the VM's nested format.
pub fn validate_nested_root(
    p: &PagingState,
    root_level: impl Fn(u32) -> Option<u8>,
) -> Result<(), ErrorCode> {
    if p.reserved == 0 && root_level(p.root) == Some(4) {
        Ok(())
    } else {
        Err(ErrorCode::ResumeBadPaging)
    }
}

/// RFLAGS bits that must be zero: 3, 5, 15 and 22..=63 (AMD APM vol. 2, 3.1.6).
const RFLAGS_RESERVED_ZERO: u64 = (1 << 3) | (1 << 5) | (1 << 15) | !((1 << 22) - 1);
/// RFLAGS bit 1 reads as one.
const RFLAGS_RESERVED_ONE: u64 = 1 << 1;

/// Exceptions that push an error code (AMD APM vol. 2, 8.2).
fn pushes_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10 | 11 | 12 | 13 | 14 | 17 | 21 | 29 | 30)
}

/// A canonical 48-bit virtual address: bits 63..47 all equal.
pub fn is_canonical(addr: u64) -> bool {
    let top = addr >> 47;
    top == 0 || top == (1 << 17) - 1
}

/// Accepts `r` or says why not.
pub fn validate(r: &Resume, mode: GuestMode) -> Result<ResumeFlags, ErrorCode> {
    if r.abi_version != ABI_VERSION {
        return Err(ErrorCode::AbiMismatch);
    }
    let flags = ResumeFlags::from_bits(r.flags).ok_or(ErrorCode::ResumeUnknownFlags)?;
    if flags.contains(ResumeFlags::SET_RIP) {
        let ok = if mode.long_mode_code {
            is_canonical(r.regs.rip)
        } else {
            r.regs.rip <= u64::from(u32::MAX)
        };
        if !ok {
            return Err(ErrorCode::ResumeBadRip);
        }
    }
    if flags.contains(ResumeFlags::SET_PAGING) && !mode.shadow
        || flags.contains(ResumeFlags::SET_NESTED_ROOT) && mode.shadow
    {
        return Err(ErrorCode::ResumeBadPaging);
    }
    if flags.contains(ResumeFlags::SET_RFLAGS)
        && (r.regs.rflags & RFLAGS_RESERVED_ZERO != 0 || r.regs.rflags & RFLAGS_RESERVED_ONE == 0)
    {
        return Err(ErrorCode::ResumeBadRflags);
    }
    if flags.contains(ResumeFlags::INJECT_EVENT) {
        let e = &r.event;
        let kind = EventKind::from_raw(e.kind).ok_or(ErrorCode::ResumeBadEvent)?;
        let vector_ok = match kind {
            // Exception vectors are 0..=31, and 2 (NMI) is not an exception:
            // VMRUN fails such an EVENTINJ (AMD APM vol. 2, 15.20).
            EventKind::Exception => e.vector < 32 && e.vector != 2,
            EventKind::Nmi => e.vector == 2,
            EventKind::ExternalInterrupt | EventKind::SoftwareInterrupt => true,
        };
        let error_code_ok = match e.has_error_code {
            0 => true,
            1 => kind == EventKind::Exception && pushes_error_code(e.vector),
            _ => false,
        };
        if !vector_ok || !error_code_ok || e.reserved != 0 {
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
        long_mode_code: false,
        shadow: false,
    };
    const LONG: GuestMode = GuestMode {
        long_mode_code: true,
        shadow: false,
    };

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

    #[test]
    fn a_plain_resume_is_accepted() {
        let mut r = resume(ResumeFlags::SET_RIP | ResumeFlags::SET_GPRS);
        r.regs.rip = 0x10_0010;
        assert_eq!(
            validate(&r, PROTECTED),
            Ok(ResumeFlags::SET_RIP | ResumeFlags::SET_GPRS)
        );
    }

    #[test]
    fn a_non_canonical_rip_is_refused_in_long_mode() {
        let mut r = resume(ResumeFlags::SET_RIP);
        r.regs.rip = 0x0000_8000_0000_0000;
        assert_eq!(validate(&r, LONG), Err(ErrorCode::ResumeBadRip));
        r.regs.rip = 0xffff_8000_0000_0000;
        assert!(validate(&r, LONG).is_ok());
    }

    #[test]
    fn a_rip_above_4_gib_is_refused_outside_long_mode() {
        let mut r = resume(ResumeFlags::SET_RIP);
        r.regs.rip = 0x1_0000_0000;
        assert_eq!(validate(&r, PROTECTED), Err(ErrorCode::ResumeBadRip));
        // Without SET_RIP the field is not looked at.
        r.flags = 0;
        assert!(validate(&r, PROTECTED).is_ok());
    }

    #[test]
    fn wrong_abi_and_unknown_flags_are_refused() {
        let mut r = resume(ResumeFlags::empty());
        r.abi_version = ABI_VERSION + 1;
        assert_eq!(validate(&r, PROTECTED), Err(ErrorCode::AbiMismatch));
        let mut r = resume(ResumeFlags::empty());
        r.flags = 1 << 31;
        assert_eq!(validate(&r, PROTECTED), Err(ErrorCode::ResumeUnknownFlags));
    }

    #[test]
    fn reserved_rflags_are_refused() {
        let mut r = resume(ResumeFlags::SET_RFLAGS);
        r.regs.rflags = 0x202;
        assert!(validate(&r, PROTECTED).is_ok());
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
                validate(&r, PROTECTED),
                Err(ErrorCode::ResumeBadRflags),
                "{bad:#x}"
            );
        }
    }

    #[test]
    fn events_are_checked_against_their_kind() {
        let ev = |vector, kind, has_error_code| {
            let mut r = resume(ResumeFlags::INJECT_EVENT);
            r.event = EventInjection {
                vector,
                kind,
                has_error_code,
                reserved: 0,
                error_code: 0,
            };
            validate(&r, PROTECTED)
        };
        assert!(ev(13, 3, 1).is_ok(), "#GP with error code");
        assert!(ev(6, 3, 0).is_ok(), "#UD");
        assert!(ev(0x20, 0, 0).is_ok(), "external interrupt");
        assert!(ev(2, 2, 0).is_ok(), "NMI");
        assert_eq!(
            ev(6, 3, 1),
            Err(ErrorCode::ResumeBadEvent),
            "#UD has no error code"
        );
        assert_eq!(
            ev(2, 3, 0),
            Err(ErrorCode::ResumeBadEvent),
            "vector 2 as an exception"
        );
        assert_eq!(
            ev(32, 3, 0),
            Err(ErrorCode::ResumeBadEvent),
            "exception vector above 31"
        );
        assert_eq!(
            ev(0x20, 1, 0),
            Err(ErrorCode::ResumeBadEvent),
            "reserved type 1"
        );
        assert_eq!(
            ev(0x20, 5, 0),
            Err(ErrorCode::ResumeBadEvent),
            "reserved type 5"
        );
        assert_eq!(
            ev(13, 3, 2),
            Err(ErrorCode::ResumeBadEvent),
            "has_error_code not 0/1"
        );
    }

    #[test]
    fn paging_must_stay_on_shadow_tables() {
        let level = |h: u32| match h {
            1 => Some(3),
            2 => Some(4),
            _ => None,
        };
        let pae = PagingState {
            cr0: CR0_PG | 0x11,
            cr4: CR4_PAE,
            efer: 0,
            root: 1,
            reserved: 0,
        };
        assert_eq!(validate_paging(&pae, level), Ok(()));
        let long = PagingState {
            efer: EFER_LME | EFER_LMA,
            root: 2,
            ..pae
        };
        assert_eq!(validate_paging(&long, level), Ok(()));
        let paged_real_mode = PagingState {
            cr0: CR0_PG | 0x10,
            ..pae
        };
        assert_eq!(validate_paging(&paged_real_mode, level), Ok(()));
        for bad in [
            PagingState { cr0: 0x11, ..pae },
            PagingState { cr4: 0, ..pae },
            PagingState { root: 2, ..pae },
            PagingState { root: 1, ..long },
            PagingState { root: 7, ..pae },
            PagingState {
                efer: EFER_LME,
                ..long
            },
            PagingState {
                cr0: pae.cr0 | 1 << 32,
                ..pae
            },
        ] {
            assert_eq!(
                validate_paging(&bad, level),
                Err(ErrorCode::ResumeBadPaging),
                "{bad:?}"
            );
        }
        let mut r = resume(ResumeFlags::SET_PAGING);
        r.paging = pae;
        assert_eq!(
            validate(&r, PROTECTED),
            Err(ErrorCode::ResumeBadPaging),
            "not in shadow mode"
        );
        assert!(validate(
            &r,
            GuestMode {
                long_mode_code: false,
                shadow: true
            }
        )
        .is_ok());
    }

    #[test]
    fn the_nested_root_is_a_level_4_table_and_only_for_nested_paging() {
        let level = |h: u32| match h {
            1 => Some(3),
            2 => Some(4),
            _ => None,
        };
        let root = |root, reserved| PagingState {
            root,
            reserved,
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
        assert!(validate(&r, PROTECTED).is_ok());
        let shadow = GuestMode {
            long_mode_code: false,
            shadow: true,
        };
        assert_eq!(validate(&r, shadow), Err(ErrorCode::ResumeBadPaging));
    }

    fn any_resume() -> impl Strategy<Value = Resume> {
        (
            any::<u32>(),
            any::<u64>(),
            any::<u64>(),
            any::<[u8; 4]>(),
            any::<u32>(),
            any::<bool>(),
        )
            .prop_map(
                |(
                    flags,
                    rip,
                    rflags,
                    [vector, kind, has_error_code, reserved],
                    error_code,
                    right_abi,
                )| Resume {
                    abi_version: if right_abi {
                        ABI_VERSION
                    } else {
                        ABI_VERSION ^ 0x55
                    },
                    flags: flags & 0x7f,
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
                    ..Default::default()
                },
            )
    }

    proptest! {
        /// Whatever a server writes, an accepted resume is one VMRUN can run:
        /// known flags, a RIP the mode can hold, legal RFLAGS, a legal event.
        #[test]
        fn accepted_resumes_are_always_legal(r in any_resume(), long in any::<bool>()) {
            let mode = GuestMode { long_mode_code: long, shadow: false };
            if let Ok(flags) = validate(&r, mode) {
                prop_assert_eq!(r.abi_version, ABI_VERSION);
                if flags.contains(ResumeFlags::SET_RIP) {
                    let fits = if long { is_canonical(r.regs.rip) } else { r.regs.rip >> 32 == 0 };
                    prop_assert!(fits);
                }
                if flags.contains(ResumeFlags::SET_RFLAGS) {
                    prop_assert!(r.regs.rflags & 2 != 0 && r.regs.rflags >> 22 == 0);
                }
                if flags.contains(ResumeFlags::INJECT_EVENT) {
                    prop_assert!(matches!(r.event.kind, 0 | 2 | 3 | 4));
                    prop_assert!(!(r.event.kind == 3 && (r.event.vector >= 32 || r.event.vector == 2)));
                }
            }
        }
    }
}
