//! Why the stub (or the platform in its place) refused a call.

/// Why a call to the platform was refused.
///
/// It lives here, not in `stub-abi` with the native system calls, because
/// the servers' platform-free libraries refuse with it on every platform:
/// `vmm_server::server::Stub::vcpu_run` (the seL4 vmm-server component's
/// too), `mmu_server::MmuStub`, the device channels. Its numbers are the
/// wire values; `stub_abi::syscall::ReturnValue` is the native stub's
/// encoding of them in `rax`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ErrorCode {
    /// No such system call.
    UnknownSyscall = 1,
    /// The caller has no right to this call.
    NotPermitted = 2,
    /// A pointer argument is not inside the caller's own memory.
    BadPointer = 3,
    /// A length argument is larger than the call allows.
    TooLong = 4,
    /// `Resume.abi_version` is not the stub's [`crate::ABI_VERSION`].
    AbiMismatch = 5,
    /// `Resume.flags` has bits the stub does not know.
    ResumeUnknownFlags = 6,
    /// The new RIP is not canonical, or too wide for the guest's code segment.
    ResumeBadRip = 7,
    /// The new RFLAGS sets reserved bits or clears bit 1.
    ResumeBadRflags = 8,
    /// The event to inject has a reserved type or a vector its type forbids.
    ResumeBadEvent = 9,
    /// An install was refused (details in the install page).
    InstallRefused = 10,
    /// The call cannot be served now (no shadow root yet, the channel's
    /// server is not waiting, ...).
    NotReady = 11,
    /// The stub has no memory or handles left for the request.
    OutOfMemory = 12,
    /// The hardware paging state has a CR0, CR4 or EFER bit outside the
    /// stub's allowlist (or one the CPU lacks), a combination VMRUN or VM
    /// entry refuses, would let the guest bypass the shadow tables (CR0.PG
    /// or CR4.PAE clear), or names a root of the wrong level;
    /// or a nested root that is not a live level-4 table, or a root of the
    /// other MMU mode (`SET_PAGING` under nested paging, `SET_NESTED_ROOT`
    /// under shadow paging).
    ResumeBadPaging = 13,
    /// `ShadowAlloc` of a level other than 1..=4.
    BadLevel = 14,
    /// `SET_XCR0` with a value outside the stub's allowlist or the host's
    /// CPUID 0xD, x87 clear, or AVX without SSE.
    ResumeBadXcr0 = 15,
    /// An argument is out of its range: `Signal` bits outside
    /// [`crate::SIGNAL_BITS`].
    BadArgument = 16,
    /// The server of the channel faulted while the caller waited in `Call`
    /// and was restarted from its image (the channel's generation moved
    /// on): the request was lost; retry or give up on purpose.
    ServerRestarted = 17,
}

impl ErrorCode {
    /// All codes, for lookups and tests.
    pub const ALL: [ErrorCode; 17] = [
        Self::UnknownSyscall,
        Self::NotPermitted,
        Self::BadPointer,
        Self::TooLong,
        Self::AbiMismatch,
        Self::ResumeUnknownFlags,
        Self::ResumeBadRip,
        Self::ResumeBadRflags,
        Self::ResumeBadEvent,
        Self::InstallRefused,
        Self::NotReady,
        Self::OutOfMemory,
        Self::ResumeBadPaging,
        Self::BadLevel,
        Self::ResumeBadXcr0,
        Self::BadArgument,
        Self::ServerRestarted,
    ];

    /// A sentence a user can act on.
    pub fn describe(self) -> &'static str {
        match self {
            Self::UnknownSyscall => "unknown system call",
            Self::NotPermitted => "the task has no right to this call",
            Self::BadPointer => "pointer outside the task's memory",
            Self::TooLong => "length larger than the call allows",
            Self::AbiMismatch => "resume built against another ABI version",
            Self::ResumeUnknownFlags => "resume has unknown flag bits",
            Self::ResumeBadRip => "resume RIP is non-canonical or too wide for the guest's mode",
            Self::ResumeBadRflags => "resume RFLAGS sets reserved bits",
            Self::ResumeBadEvent => "resume event has a reserved type or a forbidden vector",
            Self::InstallRefused => "a page-table install was refused",
            Self::NotReady => "the call cannot be served now",
            Self::OutOfMemory => "the stub has no memory or handles left",
            Self::ResumeBadPaging => {
                "resume paging state has bits outside the allowlist, a combination the CPU refuses, or a root that would bypass the shadow or nested tables"
            }
            Self::BadLevel => "page-table level not 1..=4",
            Self::ResumeBadXcr0 => "resume XCR0 has bits outside the allowlist or breaks XSETBV's rules",
            Self::BadArgument => "an argument is outside the range the call allows",
            Self::ServerRestarted => "the server faulted and was restarted: the call was lost",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_numbered_from_one_in_order() {
        for (i, c) in ErrorCode::ALL.into_iter().enumerate() {
            assert_eq!(c as u32, i as u32 + 1);
            assert!(!c.describe().is_empty());
        }
    }
}
