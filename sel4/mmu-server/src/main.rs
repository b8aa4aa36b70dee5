//! splitvisor on seL4: the mmu-server component.
//!
//! The root task loads this ELF into a VSpace of its own and gives it a
//! CSpace with the EPT objects and the guest-RAM frames
//! (`sel4_mmu_server`'s contract); RDI is its argument page, RSI its IPC
//! buffer. It builds the guest-physical map the way the native mmu-server
//! installs checked mappings, here with seL4's EPT invocations: the PDPT
//! and page directory into the PML4, then it reports to the root task,
//! which starts the vmm-server on that EPT. Guest RAM is mapped on demand:
//! the vmm-server component forwards each EPT violation on guest RAM to
//! this component's endpoint (`seL4_Call`), which maps the 2 MiB frame
//! holding the address with `Page_MapEPT` and replies; the guest retries
//! the access. An address outside guest RAM is never mapped.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "sel4-mmu-server is the mmu-server component of splitvisor's seL4 image; the seL4 root \
         task starts it. Build the image with `splitvisor build --platform sel4`."
    );
    std::process::exit(2);
}

#[cfg(target_os = "none")]
mod mmu;

#[cfg(target_os = "none")]
core::arch::global_asm!(
    ".section .text._start, \"ax\"",
    ".global _start",
    "_start:",
    "    lea rsp, [rip + __stack_top]",
    "    and rsp, -16",
    "    call {main}",
    "    ud2",
    main = sym mmu::mmu_main,
);
