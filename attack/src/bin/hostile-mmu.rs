//! The hostile mmu-server of `splitvisor attack` (never in a normal image):
//! it takes the mmu-server's task kind, runs its campaign against the stub
//! (`attack_servers::campaign`: system calls, installs, paging resumes,
//! shadow-table exhaustion, or x87/SSE in the FPU boot), then runs the
//! mmu-server's own loop, copied from `mmu-server/src/main.rs`, so that the
//! probe guest boots on the stub it attacked.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("hostile-mmu is a ring-3 task of `splitvisor attack`'s images; it runs under the stub only.");
    std::process::exit(2);
}

#[cfg(target_os = "none")]
mod ring3 {
    extern crate alloc;

    use core::fmt::Write;
    use ipc_proto::layout::{GUEST_RAM_WINDOW, INSTALL_PAGE};
    use ipc_proto::manifest::MmuMode;
    use ipc_proto::mmu::{Install, InstallError, InstallPage, TableHandle};
    use ipc_proto::sys::{self, ConsoleLine};
    use ipc_proto::vcpu::svm_exit;
    use ipc_proto::{
        ErrorCode, ExitRecord, GuestControl, PagingState, Resume, ResumeFlags, Syscall, VcpuArch,
        ABI_VERSION,
    };
    use mmu_server::{
        Action, Flush, GuestCtl, GuestMemory, Mmu, MmuConfig, MmuPlatform, NestedFormat,
        PlatformError,
    };

    use attack_servers::campaign::{self, Campaign};
    use attack_servers::{BOOT_DESTRUCTIVE, BOOT_FPU, BOOT_RANDOM, SERVER_MMU};

    ipc_proto::server_entry!(server_main);

    /// The shadow cache's bookkeeping: about 4.2 KiB per table for the
    /// default budget of 1024 tables, and the decoder's tables.
    const HEAP_BYTES: usize = 8 << 20;

    static mut ARENA: [u8; HEAP_BYTES] = [0; HEAP_BYTES];

    #[global_allocator]
    static HEAP: linked_list_allocator::LockedHeap = linked_list_allocator::LockedHeap::empty();

    macro_rules! say {
        ($($arg:tt)*) => {{
            let mut line = ConsoleLine::new();
            let _ = write!(line, "\n[mmu] ");
            let _ = write!(line, $($arg)*);
            let _ = line.write_str("\n");
            line.flush();
        }};
    }

    /// The native platform: system calls and the guest-RAM window.
    struct Native {
        ram_bytes: u64,
        /// The nested root, for the first resume (nested mode).
        nested_root: Option<TableHandle>,
    }

    impl Native {
        fn ram(&self, gpa: u64, len: usize) -> Option<*mut u8> {
            let end = gpa.checked_add(len as u64)?;
            (end <= self.ram_bytes).then_some((GUEST_RAM_WINDOW + gpa) as *mut u8)
        }
    }

    impl GuestMemory for Native {
        fn read(&mut self, gpa: u64, buf: &mut [u8]) -> bool {
            let Some(p) = self.ram(gpa, buf.len()) else {
                return false;
            };
            // SAFETY: the range lies inside guest RAM, which the stub maps
            // read-write at GUEST_RAM_WINDOW; the guest is stopped.
            unsafe { core::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), buf.len()) };
            true
        }

        fn write(&mut self, gpa: u64, data: &[u8]) -> bool {
            let Some(p) = self.ram(gpa, data.len()) else {
                return false;
            };
            // SAFETY: as for `read`.
            unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) };
            true
        }
    }

    impl MmuPlatform for Native {
        fn guest_ram_bytes(&self) -> u64 {
            self.ram_bytes
        }

        fn alloc_table(&mut self, level: u8) -> Result<TableHandle, PlatformError> {
            sys::call(Syscall::ShadowAlloc, u64::from(level))
                .map(|h| h as TableHandle)
                .map_err(|_| PlatformError::OutOfTables)
        }

        fn free_table(&mut self, table: TableHandle) -> Result<(), PlatformError> {
            sys::call(Syscall::ShadowFree, u64::from(table))
                .map(drop)
                .map_err(|_| PlatformError::UnknownTable)
        }

        fn install(&mut self, batch: &[Install]) -> Result<(), PlatformError> {
            let page = INSTALL_PAGE as *mut InstallPage;
            // SAFETY: the stub maps the install page read-write at
            // INSTALL_PAGE for the mmu-server; `batch` fits (the library
            // sends at most INSTALL_BATCH_MAX entries).
            unsafe {
                (&raw mut (*page).count).write_volatile(batch.len() as u32);
                for (i, e) in batch.iter().enumerate() {
                    (&raw mut (*page).entries[i]).write_volatile(*e);
                }
            }
            match sys::call(Syscall::MmuInstall, 0) {
                Ok(_) => Ok(()),
                Err(_) => {
                    // SAFETY: as above; the stub wrote the refused index and reason.
                    let (index, raw) = unsafe {
                        (
                            (&raw const (*page).count).read_volatile(),
                            (&raw const (*page).reserved).read_volatile(),
                        )
                    };
                    let error = InstallError::from_raw(raw).unwrap_or(InstallError::UnknownTable);
                    Err(PlatformError::Refused {
                        index: index as usize,
                        error,
                    })
                }
            }
        }

        fn load_nested(&mut self, root: TableHandle) {
            self.nested_root = Some(root);
        }

        fn flush_tlb(&mut self, _what: Flush) {
            let _ = sys::call(Syscall::MmuFlush, 0);
        }
    }

    fn fail(why: impl core::fmt::Display) -> ! {
        say!("{why}");
        sys::vm_fail()
    }

    extern "C" fn server_main() -> ! {
        let boot = sys::boot_info();
        if boot.abi_version != ABI_VERSION {
            fail(format_args!(
                "the stub speaks ABI version {}, this server was built for {ABI_VERSION}",
                boot.abi_version
            ));
        }
        // SAFETY: the arena is used by the allocator only, from here on.
        unsafe { HEAP.lock().init((&raw mut ARENA).cast::<u8>(), HEAP_BYTES) };

        let decode_assists = core::arch::x86_64::__cpuid(0x8000_000a).edx & (1 << 7) != 0;
        let mode = match boot.mmu_mode {
            m if m == MmuMode::ShadowBaseline as u64 => mmu_server::MmuMode::Baseline,
            m if m == MmuMode::Shadow as u64 => mmu_server::MmuMode::Shadow,
            _ => mmu_server::MmuMode::Nested,
        };
        let nested = if boot.arch == VcpuArch::Vmx as u32 {
            NestedFormat::Ept {
                large_pages: boot.nested_large_pages != 0,
            }
        } else {
            NestedFormat::Npt
        };
        // An AMD CPU walking a nested-paging guest's tables reads its PAE
        // PDPTEs on each walk (no PDPTE registers); shadow paging and VMX
        // keep the registers (see `CpuModel::pdptes_on_walk`).
        let cpu = mmu_server::CpuModel {
            pdptes_on_walk: mode == mmu_server::MmuMode::Nested && nested == NestedFormat::Npt,
            ..mmu_server::CpuModel::default()
        };
        let cfg = MmuConfig {
            decode_assists,
            mode,
            nested,
            cpu,
            ..MmuConfig::default()
        };
        let mut platform = Native {
            ram_bytes: boot.guest_ram_bytes,
            nested_root: None,
        };
        // The campaign. In the destructive boot under shadow paging it runs
        // at the first exit instead, once the stub walks a live root.
        let mut campaign = Campaign::new(SERVER_MMU);
        let shadow_mode = mode != mmu_server::MmuMode::Nested;
        // The random draws too: they need the guest running on its root.
        let at_first_exit =
            matches!(campaign.boot(), BOOT_DESTRUCTIVE | BOOT_RANDOM) && shadow_mode;
        if !at_first_exit {
            match campaign.boot() {
                BOOT_FPU => campaign::fpu(&mut campaign),
                BOOT_DESTRUCTIVE => campaign::exhaustion(&mut campaign, None),
                // Under nested paging the mmu-server has no paging state to draw.
                BOOT_RANDOM => {}
                _ => {
                    campaign::syscalls(&mut campaign, boot.guest_ram_bytes);
                    campaign::installs(&mut campaign, boot.guest_ram_bytes);
                    campaign::exhaustion_light(&mut campaign);
                    campaign::mmu_resumes(&mut campaign, shadow_mode);
                }
            }
            campaign.finish();
        }
        let mut mmu = Mmu::new(cfg, boot.guest_ram_bytes);
        if let Err(f) = mmu.start(
            &mut platform,
            GuestCtl {
                cr0: boot.guest_cr0,
                ..GuestCtl::RESET
            },
        ) {
            fail(f);
        }
        let (flags, paging) = match (mmu.take_paging(), platform.nested_root) {
            (Some(paging), _) => (ResumeFlags::SET_PAGING, paging),
            (None, Some(root)) => (
                ResumeFlags::SET_NESTED_ROOT,
                PagingState {
                    root,
                    ..Default::default()
                },
            ),
            (None, None) => fail("no shadow or nested root after start"),
        };
        let first_root = paging.root;
        let first_paging = paging;
        let mut first_exit = at_first_exit;
        // After the random draws: the next resume loads `first_paging` again.
        let mut restore_paging = false;
        let mut resume = Resume {
            abi_version: ABI_VERSION,
            flags: flags.bits(),
            paging,
            ..Default::default()
        };

        let page = sys::vcpu_page();
        // Hands the exit to the stub: `VcpuRun` resumes the guest,
        // `VcpuForward` gives the exit to the vmm-server first.
        let mut next_call = Syscall::VcpuRun;
        loop {
            let c = mmu.ctl();
            let guest_control = GuestControl {
                cr0: c.cr0,
                cr3: c.cr3,
                cr4: c.cr4,
                efer: c.efer,
            };
            // SAFETY: the stub maps this task's VCPU page read-write at VCPU_PAGE.
            unsafe {
                (&raw mut (*page).mmu).write_volatile(mmu.stats());
                (&raw mut (*page).guest_control).write_volatile(guest_control);
                (&raw mut (*page).resume).write_volatile(resume);
            }
            if let Err(e) = sys::call(next_call, 0) {
                fail(format_args!(
                    "the stub refused the resume: {}",
                    ErrorCode::describe(e)
                ));
            }
            // SAFETY: as above; the stub wrote the exit before returning.
            let mut exit = unsafe { (&raw const (*page).exit).read_volatile() };
            if first_exit {
                first_exit = false;
                if campaign.boot() == BOOT_RANDOM {
                    exit = campaign::mmu_random(&mut campaign, first_paging, exit);
                    restore_paging = true;
                } else {
                    campaign::exhaustion(&mut campaign, Some(first_root));
                }
                campaign.finish();
            }
            (resume, next_call) = match mmu.handle_exit(&mut platform, &exit) {
                Action::Resume(r) => (r, Syscall::VcpuRun),
                Action::Mmio { gpa, write, .. } => {
                    // Device memory: the vmm-server emulates the access as
                    // it would a nested page fault (SVM NPF: EXITINFO1 bit
                    // 1 = write) or an EPT violation (VMX reason 48: bit 0
                    // read, bit 1 write); EXITINFO2 = the guest-physical address.
                    let (exit_code, access) = if exit.arch == VcpuArch::Vmx as u32 {
                        (
                            mmu_server::mmu::vmx_exit::EPT_VIOLATION,
                            if write { 2 } else { 1 },
                        )
                    } else {
                        (svm_exit::NPF, if write { 2 } else { 0 })
                    };
                    let npf = ExitRecord {
                        exit_code,
                        exit_info1: access,
                        exit_info2: gpa,
                        ..exit
                    };
                    // SAFETY: as above.
                    unsafe { (&raw mut (*page).exit).write_volatile(npf) };
                    let (paging, flags) = mmu
                        .take_paging_flags()
                        .unwrap_or((PagingState::default(), ResumeFlags::empty()));
                    let r = Resume {
                        abi_version: ABI_VERSION,
                        flags: flags.bits(),
                        paging,
                        ..Default::default()
                    };
                    (r, Syscall::VcpuForward)
                }
                Action::Fail(f) => fail(format_args!(
                    "{f} (exit code {:#x}, rip={:#x})",
                    exit.exit_code, exit.regs.rip
                )),
            };
            if restore_paging {
                restore_paging = false;
                if resume.flags & ResumeFlags::SET_PAGING.bits() == 0 {
                    resume.flags |= ResumeFlags::SET_PAGING.bits();
                    resume.paging = first_paging;
                }
            }
        }
    }

    #[panic_handler]
    fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
        fail(info.message())
    }
}
