//! The stub's resume check (`kernel_stub::resume::validate`, and through
//! it `validate_paging`) on arbitrary bytes as a `Resume`, a guest mode,
//! a CPU's features and a table-level map. Panics when an accepted resume
//! breaks a documented invariant, or when an accepted paging state is one
//! VM entry refuses or the hardware walks from the root at another level
//! than it was checked at (`sim::fuzzing::resume_bytes`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sim::fuzzing::resume_bytes(data);
});
