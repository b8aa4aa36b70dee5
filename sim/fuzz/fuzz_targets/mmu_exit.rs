//! The mmu-server's exit handling (`Mmu::handle_exit`) on arbitrary exit
//! records over guest tables from the input, its resumes checked by the
//! stub and applied to the simulated hardware, whose walks must stay
//! isolated; and its pure instruction decoders (`mmu_server::insn`) on
//! the records' instruction bytes (`sim::fuzzing::mmu_exit_bytes`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sim::fuzzing::mmu_exit_bytes(data);
});
