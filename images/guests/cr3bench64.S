/* cr3bench64: cr3switch64 without the PTE edits and INVLPGs, the pure
 * context-switch workload of `splitvisor bench mmu`: 8 address spaces of
 * 64 pages each (a quarter of them written at each visit), switched
 * round-robin 4000 times in 64-bit mode. Prints its checksum (the same
 * under npt, shadow and baseline). Ends with status 0 on port 0xF4, or 1. */
#define GUEST_NAME "cr3bench64"
#define CS_NO_EDITS
#include "cr3switch64.S"
