//! The splitvisor stub: the only privileged code of the system.
//!
//! It boots from a multiboot loader, enters the guest with AMD SVM, and on
//! every VM exit hands an `ExitRecord` to the ring-3 vmm-server, whose
//! `Resume` it checks before re-entering the guest. It holds no device model
//! and no instruction emulator; every line here is one that could not live
//! in a server.
//!
//! Modules that only make sense on the bare machine are compiled for
//! `x86_64-unknown-none` only; the checks (`resume`, `elf`) also build on the
//! host so that their unit tests run with `cargo test`.
// The TCB first: every narrowing cast here is checked or says why it is safe
// (the workspace has cast_possible_truncation as a TODO).
#![deny(clippy::cast_possible_truncation)]
#![cfg_attr(target_os = "none", no_std, no_main)]
#![cfg_attr(not(target_os = "none"), allow(dead_code))]

#[cfg(target_os = "none")]
mod arch;
#[cfg(target_os = "none")]
mod boot;
#[cfg(target_os = "none")]
mod console;
#[cfg(target_os = "none")]
mod cpu;
#[cfg(target_os = "none")]
mod deadline;
#[cfg(target_os = "none")]
mod memory;
#[cfg(target_os = "none")]
mod smp;
#[cfg(target_os = "none")]
mod syscall;
#[cfg(target_os = "none")]
mod task;
#[cfg(target_os = "none")]
mod vm;

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("kernel-stub runs on the bare machine only; build the bootable image with `splitvisor build`");
    std::process::exit(2);
}
