//! splitvisor on seL4: the root task.
//!
//! seL4 starts it as its initial thread with the boot information's
//! address in RDI. It takes the stub's role: reads the splitvisor payload
//! (the same header and manifest the native stub boots, and the guest's
//! blobs, appended to this ELF by `splitvisor build --platform sel4`),
//! plans each component's capabilities from its task's rights
//! (`rights.rs`, the crate's lib), builds the guest's RAM
//! from 2 MiB frames mapped into its own VSpace and the EPT's objects,
//! copies the guest image, creates a VCPU and loads the two server ELFs
//! carried after the payload as components of their own (`component.rs`:
//! each its own VSpace and CSpace): the mmu-server, which maps guest RAM
//! into the EPT with `Page_MapEPT`, then the vmm-server, the VCPU's thread,
//! which runs the guest with `seL4_VMEnter` and handles its exits with
//! `vmm_server::Vmm`, the library the native ring-3 vmm-server runs. The
//! root task waits for their reports and faults. What is left of issue
//! 14: `sel4/README.md`, Next steps.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "sel4-root-task is the root task of splitvisor's seL4 image; it runs under seL4 only. \
         Build the image with `splitvisor build --platform sel4`."
    );
    std::process::exit(2);
}

#[cfg(target_os = "none")]
mod boot;
#[cfg(target_os = "none")]
mod component;
#[cfg(target_os = "none")]
mod console;
#[cfg(target_os = "none")]
mod vm;

#[cfg(target_os = "none")]
core::arch::global_asm!(
    ".section .text._start, \"ax\"",
    ".global _start",
    "_start:",
    "    lea rsp, [rip + __stack_top]",
    "    and rsp, -16",
    "    call {main}",
    "    ud2",
    main = sym vm::root_main,
);
