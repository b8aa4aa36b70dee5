//! The checks of the splitvisor stub, as a library: the stub binary uses
//! them on the bare machine, and `sim` uses the very same code on the host,
//! so a property test of the simulator exercises the real checks.
#![cfg_attr(not(test), no_std)]
// Every narrowing cast is checked or says why (see main.rs).
#![deny(clippy::cast_possible_truncation)]

/// The in-stub exit handler of `splitvisor bench exits` (feature
/// `bench-inline-exits`; compiled for the host's tests too).
#[cfg(any(test, feature = "bench-inline-exits"))]
pub mod bench_inline;
/// Where the exit path's time goes, for `splitvisor bench exits --parts`
/// (feature `bench-exit-parts`; compiled for the host's tests too).
#[cfg(any(test, feature = "bench-exit-parts"))]
pub mod bench_parts;
pub mod elf;
pub mod install;
pub mod iopb;
pub mod notify;
pub mod resume;
pub mod user_range;
pub mod watchdog;

/// Choosing SVM or VMX: the `arch=` boot option and the CPU's features.
#[path = "arch/select.rs"]
pub mod arch_select;
/// The SVM intercepts the stub turns on, and the exit codes they allow.
#[path = "arch/svm/intercepts.rs"]
pub mod svm_intercepts;
/// VMX rules from the Intel SDM: control settings, fixed bits, formats, and
/// the checks that name the field a failed VM entry tripped on.
#[path = "arch/vmx/rules.rs"]
pub mod vmx_rules;

/// `v` as a `usize`: the stub runs on x86_64 only, where both are 64 bits
/// (asserted at compile time), so this never truncates and cannot fail.
#[inline(always)]
#[allow(clippy::cast_possible_truncation, reason = "usize is 64 bits here")]
pub const fn usize_from(v: u64) -> usize {
    const { assert!(usize::BITS == u64::BITS) };
    v as usize
}
