//! The vmm-server ring-3 task: a thin loop around the `vmm_server` library.
//!
//! The stub starts it at `_start` in ring 3 with interrupts off,
//! `rsp = ipc_proto::layout::STACK_TOP` and every other register zero. It
//! talks to the stub with `int 0x80` system calls ([`ipc_proto::syscall`])
//! and through the VCPU page ([`ipc_proto::layout::VCPU_PAGE`]).
#![cfg_attr(target_os = "none", no_std, no_main)]
#![warn(clippy::undocumented_unsafe_blocks)]

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "vmm-server is a ring-3 task of the splitvisor image; it runs under the stub only. \
         Build the bootable image with `splitvisor build`."
    );
    std::process::exit(2);
}

#[cfg(target_os = "none")]
mod ring3;

#[cfg(target_os = "none")]
ipc_proto::server_entry!(server_main);

#[cfg(target_os = "none")]
extern "C" fn server_main() -> ! {
    ring3::run(&mut ring3::Plain)
}
