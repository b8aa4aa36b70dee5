//! A hostile mmu-server driven by the fuzzer: allocations, frees, install
//! batches, paging loads and hardware walks against the simulated stub.
//! Panics when the tables the hardware can reach map anything but this
//! VM's RAM or point anywhere but to shadow tables one level down.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sim::isolation::fuzz_bytes(data);
});
