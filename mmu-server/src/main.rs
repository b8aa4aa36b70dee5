//! The mmu-server ring-3 task: a thin loop around the `mmu_server` library.
//!
//! The stub starts it in ring 3 with `rsp = STACK_TOP`, in every image.
//! Under shadow paging it sets the first hardware paging state of the
//! guest, then handles the exits the stub routes to it (#PF, CR access,
//! INVLPG, EFER) and installs shadow entries with system calls. Under
//! nested paging it installs the nested tables (NPT on SVM, EPT on VMX)
//! mapping all guest RAM, names their root with `SET_NESTED_ROOT` in its
//! first resume, and then waits: the stub hands it no exits (nested page
//! faults outside RAM are MMIO, for the vmm-server).
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("mmu-server is a ring-3 task of the splitvisor image; it runs under the stub only. Build the image with `splitvisor build`.");
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
