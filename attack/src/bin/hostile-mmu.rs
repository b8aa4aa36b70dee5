//! The hostile mmu-server of `splitvisor attack` (never in a normal image):
//! it takes the mmu-server's task kind, runs its campaign against the stub
//! (`attack_servers::campaign`: system calls, installs, paging resumes,
//! shadow-table exhaustion, random paging states, or x87/SSE in the FPU
//! boot) from the hooks of the mmu-server's own loop
//! (`mmu-server/src/ring3.rs`), so that the probe guest boots on the stub
//! it attacked.
#![cfg_attr(target_os = "none", no_std, no_main)]

stub_abi::host_main!(
    "hostile-mmu is a ring-3 task of `splitvisor attack`'s images; it runs under the stub only."
);

/// The mmu-server's ring-3 side, the very file its binary uses.
#[cfg(target_os = "none")]
#[path = "../../../mmu-server/src/ring3.rs"]
mod ring3;

#[cfg(target_os = "none")]
mod hostile {
    use attack_servers::campaign::{self, Campaign};
    use attack_servers::{
        BOOT_DESTRUCTIVE, BOOT_FPU, BOOT_MAIN, BOOT_RANDOM, BOOT_RESTART, SERVER_MMU,
    };
    use ipc_proto::{ExitKind, ExitRecord, GuestControl, PagingState, Resume, ResumeFlags};
    use stub_abi::layout::BootInfo;

    stub_abi::server_entry!(server_main);

    /// The campaign around the mmu-server's loop.
    #[derive(Default)]
    struct Attack {
        /// Made once the heap is up (`start`).
        campaign: Option<Campaign>,
        /// Under shadow paging the destructive and random attempts wait for
        /// the first exit, once the stub walks a live root.
        at_first_exit: bool,
        /// After the random draws: the next resume loads this again.
        restore: Option<PagingState>,
        /// The main boot under shadow paging looks at the first exit
        /// record for host addresses (guest RAM's size) before it is done.
        leak_check: Option<u64>,
        /// The main boot under shadow paging: its guest-writes channel to
        /// the vmm-server, on which it signals before every resume (see
        /// hostile-vmm's `notify_loop`).
        notify_loop: Option<u64>,
        /// The restart boot: this instance's number (how many faulted
        /// before it) and the resume it faults at, with the root it named.
        restart: Option<(u64, u64, u64)>,
        resumes: u64,
    }

    /// Instances that fault on purpose in the restart boot; the next one
    /// serves the probe guest to its end.
    const RESTART_FAULTS: u64 = 3;

    impl crate::ring3::Hooks for Attack {
        fn start(&mut self, boot: &BootInfo, shadow: bool) {
            let c = self.campaign.insert(Campaign::new(SERVER_MMU));
            if c.boot() == BOOT_MAIN && shadow {
                self.notify_loop = stub_abi::sys::GuestWrites::find().map(|w| w.channel());
            }
            if c.boot() == BOOT_RESTART {
                let (generation, old) = campaign::restart_mark();
                if generation > 0 {
                    // SAFETY: the stub maps the VCPU page read-write.
                    let control: GuestControl = unsafe {
                        (&raw const (*stub_abi::sys::vcpu_page()).guest_control).read_volatile()
                    };
                    campaign::restart(c, &old, control, shadow);
                }
                c.finish();
                if generation >= RESTART_FAULTS {
                    return;
                }
                // Where this instance faults, drawn from the seed: at start
                // with tables of its own, or at its first or (under shadow
                // paging, after an exit) second resume.
                for _ in 0..generation {
                    c.draw();
                }
                let point = c.draw() % if shadow { 3 } else { 2 };
                if point == 0 {
                    campaign::fault_with_mark(generation + 1, &campaign::restart_tables());
                }
                self.restart = Some((generation, point, u64::MAX));
                return;
            }
            self.at_first_exit = matches!(c.boot(), BOOT_DESTRUCTIVE | BOOT_RANDOM) && shadow;
            if self.at_first_exit {
                return;
            }
            match c.boot() {
                BOOT_FPU => campaign::fpu(c),
                BOOT_DESTRUCTIVE => campaign::exhaustion(c, None),
                // Under nested paging there is no paging state to draw.
                BOOT_RANDOM => {}
                _ => {
                    campaign::syscalls(c, boot.guest_ram_bytes);
                    campaign::installs(c, boot.guest_ram_bytes);
                    campaign::exhaustion_light(c);
                    campaign::mmu_resumes(c, shadow);
                    // Under nested paging no exit comes to the mmu-server.
                    if shadow {
                        c.clear_resume();
                        self.leak_check = Some(boot.guest_ram_bytes);
                        return;
                    }
                }
            }
            c.finish();
        }

        fn exit(&mut self, first: &PagingState, exit: ExitRecord) -> ExitRecord {
            // The attempts "at the first exit" wait for a guest exit: a
            // notification exit (the vmm-server's loader writes, reported
            // before the first entry) is no exit of the guest's.
            if ExitKind::of(&exit) == ExitKind::Notification {
                return exit;
            }
            if let (Some(ram), Some(c)) = (self.leak_check.take(), self.campaign.as_mut()) {
                campaign::leaks(c, &exit, ram);
                c.finish();
            }
            let Some(c) = self.campaign.as_mut().filter(|_| self.at_first_exit) else {
                return exit;
            };
            self.at_first_exit = false;
            let exit = if c.boot() == BOOT_RANDOM {
                self.restore = Some(*first);
                campaign::mmu_random(c, *first, exit)
            } else {
                campaign::exhaustion(c, Some(first.root));
                exit
            };
            c.finish();
            exit
        }

        fn resume(&mut self, resume: &mut Resume) {
            if let Some(ch) = self.notify_loop {
                let _ = stub_abi::sys::signal(ch, 1);
            }
            if let Some((generation, at, root)) = self.restart.as_mut() {
                self.resumes += 1;
                let named = ResumeFlags::SET_PAGING | ResumeFlags::SET_NESTED_ROOT;
                if *root == u64::MAX && resume.flags & named.bits() != 0 {
                    *root = u64::from(resume.paging.root);
                }
                if self.resumes == *at {
                    campaign::fault_with_mark(*generation + 1, &[*root]);
                }
            }
            if let Some(first) = self.restore.take() {
                if resume.flags & ResumeFlags::SET_PAGING.bits() == 0 {
                    resume.flags |= ResumeFlags::SET_PAGING.bits();
                    resume.paging = first;
                }
            }
        }
    }

    extern "C" fn server_main() -> ! {
        crate::ring3::run(&mut Attack::default())
    }
}
