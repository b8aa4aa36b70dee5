//! The vmm-server ring-3 task: a thin loop around the `vmm_server` library.
//!
//! The stub starts it at `_start` in ring 3 with interrupts off,
//! `rsp = stub_abi::layout::STACK_TOP` and every other register zero. It
//! talks to the stub with `int 0x80` system calls ([`stub_abi::syscall`])
//! and through the VCPU page ([`stub_abi::layout::VCPU_PAGE`]).
//!
//! Faults injected on purpose (`splitvisor run --inject
//! vmm-server:crash@N`, `ipc_proto::inject`) fire at its N-th exit; the
//! stub does not restart the vmm-server (it holds the guest's device
//! state), so the VM stops with the fault.
#![cfg_attr(target_os = "none", no_std, no_main)]
#![warn(clippy::undocumented_unsafe_blocks)]

stub_abi::host_main!(
    "vmm-server is a ring-3 task of the splitvisor image; it runs under the stub only. \
     Build the bootable image with `splitvisor build`."
);

#[cfg(target_os = "none")]
mod ring3;

#[cfg(target_os = "none")]
stub_abi::server_entry!(server_main);

#[cfg(target_os = "none")]
ipc_proto::inject_block!(INJECT);

#[cfg(target_os = "none")]
extern "C" fn server_main() -> ! {
    let injector = ipc_proto::inject::Injector::new(&ipc_proto::inject::read_block(&INJECT));
    ring3::run(&mut Inject(injector))
}

/// The injected faults, as a hook before each resume (one per exit).
#[cfg(target_os = "none")]
struct Inject(ipc_proto::inject::Injector);

#[cfg(target_os = "none")]
impl ring3::Hooks for Inject {
    fn resume(
        &mut self,
        _exit: &ipc_proto::ExitRecord,
        _resume: &ipc_proto::Resume,
    ) -> Option<ipc_proto::Resume> {
        use stub_abi::inject::{self, Fault, GARBAGE};
        match self.0.tick()? {
            Fault::Crash => inject::crash(),
            Fault::Hang => inject::hang(),
            Fault::Corrupt => {
                let page = stub_abi::sys::vcpu_page();
                // SAFETY: the stub maps this task's VCPU page read-write at
                // VCPU_PAGE; the resume in it is plain data.
                let resume = unsafe { &raw mut (*page).resume }.cast::<u64>();
                for i in 0..core::mem::size_of::<ipc_proto::Resume>() / 8 {
                    // SAFETY: as above; `i` stays inside the resume.
                    unsafe { resume.add(i).write_volatile(GARBAGE) };
                }
                inject::crash()
            }
        }
    }
}
