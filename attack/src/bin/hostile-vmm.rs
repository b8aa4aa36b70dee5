//! The hostile vmm-server of `splitvisor attack` (never in a normal image):
//! it takes the vmm-server's task kind, runs its campaign against the stub
//! (`attack_servers::campaign`: system calls, resumes, an event the guest
//! cannot take in the destructive boot, random resumes, or x87/SSE in the
//! FPU boot) from the hooks of the vmm-server's own loop
//! (`vmm-server/src/ring3.rs`), so that the probe guest runs to its end on
//! the stub it attacked.
#![cfg_attr(target_os = "none", no_std, no_main)]
#![warn(clippy::undocumented_unsafe_blocks)]

stub_abi::host_main!(
    "hostile-vmm is a ring-3 task of `splitvisor attack`'s images; it runs under the stub only."
);

/// The vmm-server's ring-3 side, the very file its binary uses.
#[cfg(target_os = "none")]
#[path = "../../../vmm-server/src/ring3.rs"]
mod ring3;

#[cfg(target_os = "none")]
mod hostile {
    use attack_servers::campaign::{self, Campaign};
    use attack_servers::{
        BOOT_DESTRUCTIVE, BOOT_FPU, BOOT_MAIN, BOOT_RANDOM, BOOT_RESTART, SERVER_VMM,
    };
    use ipc_proto::{ExitRecord, Resume};
    use stub_abi::layout::BootInfo;

    stub_abi::server_entry!(server_main);

    /// The campaign around the vmm-server's loop.
    #[derive(Default)]
    struct Attack {
        /// The random campaign, until it has run at the first exit.
        random: Option<Campaign>,
        tsc_hz: u64,
        /// Shadow paging (else nested).
        shadow: bool,
        /// Guest RAM in this task: base and length.
        ram: (u64, u64),
        /// The main boot looks at the first exit record for host addresses
        /// before it is done.
        leak_check: Option<Campaign>,
        /// The main boot under shadow paging: the channel to the
        /// mmu-server, on which it signals before every `VcpuRun` (the
        /// hostile mmu-server does the same back), so that without the
        /// stub's one notification exit per task between two entries the
        /// two would wake each other for ever and the guest never run.
        notify_loop: Option<u64>,
    }

    impl crate::ring3::Hooks for Attack {
        fn start(&mut self, boot: &BootInfo) {
            self.tsc_hz = boot.tsc_hz;
            self.shadow = boot.mmu_mode != 0;
            self.ram = (boot.guest_ram_window, boot.guest_ram_bytes);
            let mut c = Campaign::new(SERVER_VMM);
            if c.boot() == BOOT_MAIN && self.shadow {
                self.notify_loop = stub_abi::sys::GuestWrites::find().map(|w| w.channel());
            }
            match c.boot() {
                // The random draws wait for the first exit (`resume`).
                BOOT_RANDOM => {
                    self.random = Some(c);
                    return;
                }
                BOOT_FPU => {
                    campaign::fpu(&mut c);
                    campaign::port_io(&mut c);
                }
                BOOT_DESTRUCTIVE => campaign::vmm_destructive(&mut c),
                // The mmu-server's boot: the vmm-server only serves the probe.
                BOOT_RESTART => {}
                _ => {
                    campaign::syscalls(&mut c, boot.guest_ram_bytes);
                    campaign::vmm_resumes(&mut c, self.shadow);
                    c.clear_resume();
                    self.leak_check = Some(c);
                    return;
                }
            }
            c.finish();
        }

        /// In the random boot: the draws at the first exit, then the
        /// server's own `answer` with the guest put back there.
        fn resume(&mut self, first: &ExitRecord, answer: &Resume) -> Option<Resume> {
            if let Some(ch) = self.notify_loop {
                let _ = stub_abi::sys::signal(ch, 1);
            }
            if let Some(c) = self.leak_check.as_mut() {
                campaign::leaks(c, first, self.ram.1);
                c.finish();
                self.leak_check = None;
            }
            let mut c = self.random.take()?;
            let (base, len) = self.ram;
            campaign::harness(&mut |gpa, bytes| {
                if gpa + bytes.len() as u64 <= len {
                    // SAFETY: inside guest RAM, which the stub maps
                    // read-write for this task; the guest is stopped.
                    unsafe {
                        core::ptr::copy_nonoverlapping(
                            bytes.as_ptr(),
                            (base + gpa) as *mut u8,
                            bytes.len(),
                        )
                    };
                }
            });
            campaign::vmm_random(&mut c, *first, self.tsc_hz, self.shadow);
            c.finish();
            Some(campaign::restore_after_draws(first, answer))
        }
    }

    extern "C" fn server_main() -> ! {
        crate::ring3::run(&mut Attack::default())
    }
}
