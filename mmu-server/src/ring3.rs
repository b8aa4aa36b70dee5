//! The mmu-server's ring-3 side on the native stub: the platform (system
//! calls, the guest-RAM window, the install page, the VCPU page), the heap
//! and the panic handler; the loop is the library's
//! ([`mmu_server::server`]). A file of its own so that the attack
//! campaign's hostile mmu-server (`attack/src/bin/hostile-mmu.rs`) runs
//! this very platform through [`Hooks`] instead of a copy.

extern crate alloc;

use alloc::boxed::Box;

use ipc_proto::mmu::{Install, InstallError, InstallPage, TableHandle};
use ipc_proto::{ErrorCode, ExitRecord, GuestControl};
use stub_abi::layout::{GUEST_RAM_WINDOW, INSTALL_PAGE};
use stub_abi::sys;
use stub_abi::Syscall;
// The hostile mmu-server (`attack/`) names these as `ring3::Hooks`.
#[allow(unused_imports)]
pub use mmu_server::server::{Hooks, Plain};
use mmu_server::trace::{InstallResult, Recorder, Sink};
use mmu_server::{
    Flush, GuestMemory, MmuPlatform, MmuStats, MmuStub, NotRam, PlatformError, Reply,
};

/// The shadow cache's bookkeeping: about 4.2 KiB per table for the
/// default budget of 1024 tables, and the decoder's tables.
const HEAP_BYTES: usize = 8 << 20;

static mut ARENA: [u8; HEAP_BYTES] = [0; HEAP_BYTES];

#[global_allocator]
static HEAP: linked_list_allocator::LockedHeap = linked_list_allocator::LockedHeap::empty();

macro_rules! say {
    ($($arg:tt)*) => {
        stub_abi::sys::say_line("[mmu] ", format_args!($($arg)*))
    };
}

// `splitvisor run --trace`: the image builder patches this block (here,
// so that the hostile mmu-server built from this file has it too).
ipc_proto::trace_block!(TRACE_BLOCK);

/// The native platform: system calls, the guest-RAM window and the VCPU
/// page.
struct Native {
    ram_bytes: u64,
    /// `BootInfo::guest_write_channels`.
    guest_write_channels: u64,
    /// With `splitvisor run --trace`: the exits, replies and install
    /// batches go into the trace (`mmu_server::trace`).
    rec: Option<Box<Recorder<TraceSink>>>,
}

/// Trace lines go to the host console, where `splitvisor` takes them out;
/// stamps are the TSC.
struct TraceSink;

impl Sink for TraceSink {
    fn line(&mut self, bytes: &[u8]) {
        sys::console_write(bytes);
    }
    fn tsc(&mut self) -> u64 {
        sys::rdtsc()
    }
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
        let Some(rec) = self.rec.as_mut().filter(|r| r.is_on()) else {
            return install(batch);
        };
        let start = rec.tsc();
        let got = install(batch);
        let ticks = rec.tsc().wrapping_sub(start);
        rec.install(start, ticks, batch, InstallResult::of(&got));
        got
    }

    fn load_nested(&mut self, _root: TableHandle) {
        // The loop names the root in its first resume (`SET_NESTED_ROOT`).
    }

    fn flush_tlb(&mut self, _what: Flush) {
        let _ = sys::call(Syscall::MmuFlush, 0);
    }
}

/// One `MmuInstall` call with `batch`.
fn install(batch: &[Install]) -> Result<(), PlatformError> {
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

fn fail(why: impl core::fmt::Display) -> ! {
    say!("{why}");
    sys::vm_fail()
}

impl MmuStub for Native {
    fn take_guest_writes(&mut self, word: u32, frame: &mut dyn FnMut(u64)) -> bool {
        use ipc_proto::guest_writes::{signal_bit, GuestWritesPage};
        use stub_abi::layout::{CHANNEL_PAGE_BASE, PAGE_SIZE};
        // Only the channels the manifest names: a signaller cannot make
        // this server read a page it does not have.
        let mask = self.guest_write_channels;
        let mut overflow = false;
        for ch in (0..16usize).filter(|ch| mask & signal_bit(*ch) & u64::from(word) != 0) {
            let page = (CHANNEL_PAGE_BASE + ch as u64 * PAGE_SIZE) as *mut GuestWritesPage;
            // SAFETY: the stub maps the page of every channel this task
            // is an end of (the manifest's check: the mmu-server serves
            // each guest-writes channel) read-write there; its writer is
            // blocked while this task runs.
            overflow |= unsafe { (*page).drain(&mut *frame) };
        }
        overflow
    }

    fn reply(
        &mut self,
        reply: &Reply,
        control: &GuestControl,
        stats: &MmuStats,
    ) -> Result<ExitRecord, ErrorCode> {
        let Some(rec) = self.rec.as_mut().filter(|r| r.is_on()) else {
            return reply_call(reply, control, stats);
        };
        let tsc = rec.tsc();
        rec.reply(tsc, reply);
        let got = reply_call(reply, control, stats);
        if let Some(rec) = self.rec.as_mut() {
            let tsc = rec.tsc();
            rec.exit(tsc, &got);
        }
        got
    }

    fn restored_control(&mut self) -> Option<GuestControl> {
        // SAFETY: the stub maps this task's VCPU page read-write at
        // VCPU_PAGE; it is zero until an instance of this server published
        // the guest's registers with an accepted resume.
        let c = unsafe { (&raw const (*sys::vcpu_page()).guest_control).read_volatile() };
        (c != GuestControl::default()).then_some(c)
    }
}

/// Publishes `control` and `stats`, hands the stub `reply` and returns the
/// next exit.
fn reply_call(
    reply: &Reply,
    control: &GuestControl,
    stats: &MmuStats,
) -> Result<ExitRecord, ErrorCode> {
    let page = sys::vcpu_page();
    // `VcpuRun` resumes the guest, `VcpuForward` gives the rewritten
    // exit to the vmm-server first.
    let (call, resume) = match reply {
        Reply::Run(r) => (Syscall::VcpuRun, r),
        Reply::Forward { exit, resume } => {
            // SAFETY: the stub maps this task's VCPU page read-write
            // at VCPU_PAGE.
            unsafe { (&raw mut (*page).exit).write_volatile(*exit) };
            (Syscall::VcpuForward, resume)
        }
    };
    // SAFETY: as above.
    unsafe {
        (&raw mut (*page).mmu).write_volatile(*stats);
        (&raw mut (*page).guest_control).write_volatile(*control);
        (&raw mut (*page).resume).write_volatile(*resume);
    }
    sys::call(call, 0)?;
    // SAFETY: as above; the stub wrote the exit before returning.
    Ok(unsafe { (&raw const (*page).exit).read_volatile() })
}

/// The server: the library's loop ([`mmu_server::server::run`]) on the
/// native platform, with `hooks`.
pub fn run(hooks: &mut dyn Hooks) -> ! {
    let boot = sys::boot_info();
    // SAFETY: the arena is used by the allocator only, from here on.
    unsafe { HEAP.lock().init((&raw mut ARENA).cast::<u8>(), HEAP_BYTES) };
    let decode_assists = core::arch::x86_64::__cpuid(0x8000_000a).edx & (1 << 7) != 0;
    let cfg = mmu_server::server::config(&boot, decode_assists, xsave_cr4());
    // With `--trace`, what this server gets and decides is recorded too.
    let trace = ipc_proto::trace::TraceConfig::decode(&ipc_proto::trace::read_block(&TRACE_BLOCK));
    let rec = trace.map(|t| {
        let meta = mmu_server::trace::Meta {
            version: mmu_server::trace::VERSION,
            mmu_mode: boot.mmu_mode,
            tsc_hz: boot.tsc_hz,
        };
        Box::new(Recorder::new(TraceSink, t.max_exits, meta))
    });
    let mut platform = Native {
        ram_bytes: boot.guest_ram_bytes,
        guest_write_channels: boot.guest_write_channels,
        rec,
    };
    fail(mmu_server::server::run(&mut platform, &boot, cfg, hooks))
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
