//! splitvisor on seL4: the root task.
//!
//! seL4 starts it as its initial thread with the boot information's
//! address in RDI. It takes the stub's role: reads the splitvisor payload
//! (the same header, manifest and blobs the native stub boots, appended to
//! this ELF by `splitvisor build --platform sel4`), builds the guest's RAM
//! from 2 MiB frames mapped into an EPT and into its own VSpace, copies the
//! guest image, creates a VCPU bound to its own thread and runs the guest
//! with `seL4_VMEnter`.
//!
//! TODO(issue 14, milestone 2): the vmm-server's exit handler
//! (`vmm_server::Vmm`, the same library the native ring-3 vmm-server runs)
//! is linked into this root task and runs on its thread. The final shape is
//! a separate vmm-server component with its own VSpace and CSpace holding
//! exactly the capabilities its rights say (the VCPU, guest-RAM frames),
//! and the mmu-server building the EPT; see `sel4/README.md`.
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
mod console;
#[cfg(target_os = "none")]
mod heap;
#[cfg(target_os = "none")]
mod vcpu;
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
