//! The mmu-server's ring-3 side on the native stub: the platform (system
//! calls, the guest-RAM window, the install page), the heap, the panic
//! handler and the loop. A file of its own so that the attack campaign's
//! hostile mmu-server (`attack/src/bin/hostile-mmu.rs`) runs this very loop
//! through [`Hooks`] instead of a copy.

extern crate alloc;

use core::fmt::Write;
use ipc_proto::exit::{svm_exit, vmx_exit};
use ipc_proto::layout::{GUEST_RAM_WINDOW, INSTALL_PAGE};
use ipc_proto::manifest::MmuMode;
use ipc_proto::mmu::{Install, InstallError, InstallPage, TableHandle};
use ipc_proto::sys::{self, ConsoleLine};
use ipc_proto::{
    ErrorCode, ExitRecord, GuestControl, PagingState, Resume, ResumeFlags, Syscall, VcpuArch,
    ABI_VERSION,
};
use mmu_server::{
    Action, Flush, GuestCtl, GuestMemory, Mmu, MmuConfig, MmuPlatform, NestedFormat, NotRam,
    PlatformError,
};

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
    fn ram_bytes(&self) -> u64 {
        self.ram_bytes
    }

    fn read_phys(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), NotRam> {
        let p = self.ram(gpa, buf.len()).ok_or(NotRam)?;
        // SAFETY: the range lies inside guest RAM, which the stub maps
        // read-write at GUEST_RAM_WINDOW; the guest is stopped.
        unsafe { core::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    fn write_phys(&mut self, gpa: u64, data: &[u8]) -> Result<(), NotRam> {
        let p = self.ram(gpa, data.len()).ok_or(NotRam)?;
        // SAFETY: as for `read_phys`.
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) };
        Ok(())
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

/// What a variant of this server adds to its loop: the attack campaign's
/// hostile mmu-server (`attack/`) runs its attempts from these; the
/// mmu-server itself adds nothing ([`Plain`]).
pub trait Hooks {
    /// After the heap and the boot information, before the MMU starts;
    /// `shadow`: the guest runs on shadow tables.
    fn start(&mut self, _boot: &ipc_proto::layout::BootInfo, _shadow: bool) {}
    /// Each exit the stub hands over, before the MMU handles it (`first`:
    /// the paging state of the first resume).
    fn exit(&mut self, _first: &PagingState, exit: ExitRecord) -> ExitRecord {
        exit
    }
    /// Each resume before it goes to the stub.
    fn resume(&mut self, _resume: &mut Resume) {}
}

/// No additions: the mmu-server as it is (unused by the hostile one).
#[allow(dead_code)]
pub struct Plain;

impl Hooks for Plain {}

/// The server: starts the MMU from the boot information, names the first
/// root, then handles the exits the stub routes to it, for ever.
pub fn run(hooks: &mut dyn Hooks) -> ! {
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
        cr4_supported: mmu_server::regs::cr4::SUPPORTED | xsave_cr4(),
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
    hooks.start(&boot, mode != mmu_server::MmuMode::Nested);
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
    let first_paging = paging;
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
        }
        hooks.resume(&mut resume);
        // SAFETY: as above.
        unsafe { (&raw mut (*page).resume).write_volatile(resume) };
        if let Err(e) = sys::call(next_call, 0) {
            fail(format_args!(
                "the stub refused the resume: {}",
                ErrorCode::describe(e)
            ));
        }
        // SAFETY: as above; the stub wrote the exit before returning.
        let exit = hooks.exit(&first_paging, unsafe {
            (&raw const (*page).exit).read_volatile()
        });
        (resume, next_call) = match mmu.handle_exit(&mut platform, &exit) {
            Action::Resume(r) => (r, Syscall::VcpuRun),
            Action::Mmio { gpa, write, .. } => {
                // Device memory: the vmm-server emulates the access as
                // it would a nested page fault (SVM NPF: EXITINFO1 bit
                // 1 = write) or an EPT violation (VMX reason 48: bit 0
                // read, bit 1 write); EXITINFO2 = the guest-physical address.
                let (exit_code, access) = if exit.arch == VcpuArch::Vmx as u32 {
                    (vmx_exit::EPT_VIOLATION, if write { 2 } else { 1 })
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
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    fail(info.message())
}

/// CR4.OSXSAVE where the vmm-server's CPUID offers XSAVE (the host has it
/// and its leaf 0xD shows x87 and SSE: `vmm_server::cpuid::offered_xcr0`);
/// the guest then owns XCR0, loaded by the stub on a checked XSETBV.
fn xsave_cr4() -> u64 {
    let cpuid = |leaf, sub| core::arch::x86_64::__cpuid_count(leaf, sub);
    let offered =
        cpuid(0, 0).eax >= 0xd && cpuid(1, 0).ecx & (1 << 26) != 0 && cpuid(0xd, 0).eax & 3 == 3;
    if offered {
        mmu_server::regs::cr4::OSXSAVE
    } else {
        0
    }
}
