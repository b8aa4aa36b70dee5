//! splitvisor on seL4: the vmm-server component.
//!
//! The root task loads this ELF into the component's own VSpace, gives it
//! a CSpace with exactly the capabilities of `sel4_vmm_server`'s contract
//! (the VCPU bound to its thread, two endpoint capabilities to the root
//! task), maps guest RAM at `GUEST_WINDOW` and starts it with RDI = its
//! argument page, RSI = its IPC buffer. It is the VCPU's thread: it sets
//! the guest's initial state, builds the board's devices and runs
//! `vmm_server::run` (the library the native ring-3 vmm-server runs) with
//! `seL4_VMEnter` itself; then it prints the final line and reports its
//! ending to the root task, which ends the run. A thin main, as the native
//! `ring3` main is: the seL4 side of the platform traits is `vcpu.rs`
//! (`Stub`) and `host.rs` (`GuestMemory`, `Host`).
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "sel4-vmm-server is the vmm-server component of splitvisor's seL4 image; the seL4 root \
         task starts it. Build the image with `splitvisor build --platform sel4`."
    );
    std::process::exit(2);
}

#[cfg(target_os = "none")]
mod console;
#[cfg(target_os = "none")]
mod heap;
#[cfg(target_os = "none")]
mod host;
#[cfg(target_os = "none")]
mod vcpu;
#[cfg(target_os = "none")]
mod vmm;

#[cfg(target_os = "none")]
core::arch::global_asm!(
    ".section .text._start, \"ax\"",
    ".global _start",
    "_start:",
    "    lea rsp, [rip + __stack_top]",
    "    and rsp, -16",
    "    call {main}",
    "    ud2",
    main = sym vmm::vmm_main,
);
