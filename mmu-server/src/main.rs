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
//!
//! With `splitvisor run --trace` it records its exits, replies and
//! install batches (`mmu_server::trace`).
//!
//! Faults injected on purpose (`splitvisor run --inject
//! mmu-server:crash@N`, `ipc_proto::inject`) fire at its N-th exit.
#![cfg_attr(target_os = "none", no_std, no_main)]

stub_abi::host_main!(
    "mmu-server is a ring-3 task of the splitvisor image; it runs under the stub only. Build the image with `splitvisor build`."
);

#[cfg(target_os = "none")]
mod ring3;

#[cfg(target_os = "none")]
stub_abi::server_entry!(server_main);

#[cfg(target_os = "none")]
ipc_proto::inject_block!(INJECT);

#[cfg(target_os = "none")]
extern "C" fn server_main() -> ! {
    ring3::run(&mut inject::Inject::new())
}

/// The injected faults, as hooks of the server loop.
#[cfg(target_os = "none")]
mod inject {
    use crate::ring3::Hooks;
    use ipc_proto::{ExitRecord, GuestControl, PagingState};
    use stub_abi::inject::{self, Fault, Injector, GARBAGE};
    use stub_abi::layout::BootInfo;
    use stub_abi::sys;

    pub struct Inject(Injector);

    impl Inject {
        pub fn new() -> Self {
            Self(Injector::new(&inject::read_block(&crate::INJECT)))
        }
    }

    impl Hooks for Inject {
        fn start(&mut self, _boot: &BootInfo, _shadow: bool) {
            // SAFETY: the stub maps this task's VCPU page at VCPU_PAGE.
            let c = unsafe { (&raw const (*sys::vcpu_page()).guest_control).read_volatile() };
            let restarted = c != GuestControl::default();
            // A one-shot fault fired in an earlier instance already.
            if restarted && self.0.injection().is_some_and(|i| !i.every) {
                self.0.disarm();
            }
        }

        fn exit(&mut self, _first: &PagingState, exit: ExitRecord) -> ExitRecord {
            match self.0.tick() {
                None => exit,
                Some(Fault::Crash) => inject::crash(),
                Some(Fault::Hang) => inject::hang(),
                Some(Fault::Corrupt) => {
                    let garbage = GuestControl {
                        cr0: GARBAGE,
                        cr3: GARBAGE,
                        cr4: GARBAGE,
                        efer: GARBAGE,
                    };
                    // SAFETY: as above.
                    unsafe { (&raw mut (*sys::vcpu_page()).guest_control).write_volatile(garbage) };
                    inject::crash()
                }
            }
        }
    }
}
