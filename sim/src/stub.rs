//! The one place the sim calls the stub's resume checks
//! (`kernel_stub::resume`), so that a change of their signatures is
//! adapted here alone.

use ipc_proto::{ErrorCode, PagingState, Resume, ResumeFlags};
pub use kernel_stub::resume::{GuestMode, PagingRules};

use crate::hw::SimCpu;

/// The stub's paging rules for `cpu`, from its CPUID as the stub reads
/// them at boot.
pub fn rules(cpu: &SimCpu) -> PagingRules {
    PagingRules::from_cpuid(|leaf, sub| cpu.cpuid(leaf, sub))
}

/// The guest's mode for a check of `ps` alone: 64-bit code when `ps`
/// is a long-mode state (CS.L set, CS.D clear), RFLAGS at reset.
pub fn mode_for(ps: &PagingState) -> GuestMode {
    let lma = ps.efer & crate::hw::efer::LMA != 0;
    GuestMode {
        lma,
        cs_l: lma,
        cs_d: !lma,
        rflags: 2,
        interrupt_shadow: false,
        shadow: true,
    }
}

/// `kernel_stub::resume::validate_paging` for a shadowed guest.
pub fn validate_paging(
    ps: &PagingState,
    rules: &PagingRules,
    root_level: impl Fn(u32) -> Option<u8>,
) -> Result<(), ErrorCode> {
    kernel_stub::resume::validate_paging(ps, rules, &mode_for(ps), root_level)
}

/// `kernel_stub::resume::validate`.
pub fn validate(
    r: &Resume,
    mode: &GuestMode,
    rules: &PagingRules,
    root_level: impl Fn(u32) -> Option<u8>,
) -> Result<ResumeFlags, ErrorCode> {
    kernel_stub::resume::validate(r, mode, rules, root_level)
}
