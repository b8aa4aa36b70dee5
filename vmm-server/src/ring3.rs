//! The vmm-server's ring-3 side on the native stub: the PC's devices, the
//! host console, the guest-RAM window, the heap, the panic handler and the
//! loop. A file of its own so that the attack campaign's hostile
//! vmm-server (`attack/src/bin/hostile-vmm.rs`) runs this very loop through
//! [`Hooks`] instead of a copy.

use core::cell::RefCell;
use core::ptr::{addr_of, addr_of_mut};
use core::sync::atomic::{AtomicBool, Ordering};

use ipc_proto::device::{op, PortMessage};
use ipc_proto::{ErrorCode, ExitRecord, Resume, Stats, ABI_VERSION};
use stub_abi::layout::{BootInfo, CHANNEL_PAGE_BASE, PAGE_SIZE};
use stub_abi::Syscall;
use vmm_server::board::Board;
use vmm_server::boards;
use vmm_server::cpuid::HostCpuid;
use vmm_server::devices::pci::PciBus;
use vmm_server::devices::remote::{PortChannel, RemotePort};
use vmm_server::devices::remote_pci::{PciChannel, RemotePci};
use vmm_server::devices::uart16550::{self, Uart16550};
use vmm_server::emulate::{GuestMemory, NotRam};
use vmm_server::trace::{Recorder, Sink, Traced};
use vmm_server::{Ending, Host, HostConsole, HostWrite, PortDevice, Stub, Vmm};

/// The RTC's time at boot when the stub gives none: 2026-01-01 00:00 UTC.
const RTC_EPOCH: i64 = 1_767_225_600;

use stub_abi::sys::{self, result, syscall3, vcpu_page};

/// The PCI function table (`ipc_proto::pci::FUNCTIONS_MAGIC`): the image
/// builder writes the channel of each PCI slot's server after the magic.
#[used]
static PCI_FUNCTIONS: [u8; ipc_proto::pci::FUNCTIONS_BLOCK_LEN] = {
    let mut b = [0u8; ipc_proto::pci::FUNCTIONS_BLOCK_LEN];
    let m = ipc_proto::pci::FUNCTIONS_MAGIC;
    let mut i = 0;
    while i < m.len() {
        b[i] = m[i];
        i += 1;
    }
    b
};

/// The table's slots (channel + 1, 0 for none) and flags, read as the
/// image left them.
fn pci_functions() -> ([u8; ipc_proto::pci::FUNCTION_SLOTS], u8) {
    // SAFETY: a static of this task; a volatile read so the compiler
    // does not fold the bytes the image builder patched.
    let b = unsafe { core::ptr::addr_of!(PCI_FUNCTIONS).read_volatile() };
    let at = ipc_proto::pci::FUNCTIONS_MAGIC.len();
    let mut slots = [0u8; ipc_proto::pci::FUNCTION_SLOTS];
    slots.copy_from_slice(&b[at..at + ipc_proto::pci::FUNCTION_SLOTS]);
    (slots, b[at + ipc_proto::pci::FUNCTION_SLOTS])
}

// `splitvisor run --trace`: the image builder patches this block.
ipc_proto::trace_block!(TRACE_BLOCK);

/// Trace lines go to the host console, where `splitvisor` takes them out
/// (`vmm_server::trace`); stamps are the TSC.
struct TraceSink;

impl Sink for TraceSink {
    fn line(&mut self, bytes: &[u8]) {
        console_write(bytes);
    }
    fn tsc(&mut self) -> u64 {
        rdtsc()
    }
}

/// Whether the last byte sent to the host console was '\n'; the panic
/// handler reads it because it cannot reach the shared console.
static AT_LINE_START: AtomicBool = AtomicBool::new(true);

fn console_write(bytes: &[u8]) {
    sys::console_write(bytes);
    if let Some(&last) = bytes.last() {
        AT_LINE_START.store(last == b'\n', Ordering::Relaxed);
    }
}

fn vm_stop(status: u8) -> ! {
    // SAFETY: VmStop takes no pointer.
    unsafe { syscall3(Syscall::VmStop, u64::from(status), 0, 0) };
    halt()
}

fn vm_fail() -> ! {
    sys::vm_fail()
}

/// VmStop does not return; if a stub ever does, spin.
fn halt() -> ! {
    loop {
        core::hint::spin_loop();
    }
}

/// `ConsoleWrite` and `ConsoleRead` as the library's host console.
/// With a uart-server, the guest's output is that server's: it is asked
/// to send what it has buffered (and end its line) before each write.
struct ConsoleSyscall {
    uart: Option<ChannelSyscall>,
    /// A PCI function's server (a virtio console) reads host input.
    input_elsewhere: bool,
    /// TSC ticks between two `ConsoleRead`s that found nothing (0: no
    /// limit). The loop and the UART's polls look for input three or four
    /// times per exit; a system call each was four of five per exit.
    read_gap: u64,
    /// The TSC at the last `ConsoleRead` that found nothing.
    last_empty: Option<u64>,
}

impl HostWrite for ConsoleSyscall {
    fn write_host(&mut self, bytes: &[u8]) {
        if let Some(ch) = &mut self.uart {
            let _ = PortChannel::call(
                ch,
                &PortMessage {
                    op: op::FLUSH,
                    ..PortMessage::default()
                },
            );
        }
        console_write(bytes);
    }

    fn read_host(&mut self, buf: &mut [u8]) -> usize {
        // With a uart-server, host input is that server's (it reads it for
        // COM1); reading it here would take it from the guest.
        if self.uart.is_some() || self.input_elsewhere {
            return 0;
        }
        // Input typed within the gap waits for the next read (a
        // millisecond at most); a read that found some does not wait.
        let now = rdtsc();
        if self
            .last_empty
            .is_some_and(|t| now.wrapping_sub(t) < self.read_gap)
        {
            return 0;
        }
        let n = sys::console_read(buf);
        self.last_empty = (n == 0).then_some(now);
        n
    }
}

/// Guest RAM, mapped by the stub at `BootInfo::guest_ram_window`. It is
/// only touched through raw copies, never through a long-lived
/// reference: the guest changes it whenever it runs.
struct GuestRamWindow {
    base: u64,
    len: u64,
    /// Shadow paging: the channel that tells the mmu-server which frames
    /// this server wrote (`ipc_proto::guest_writes`).
    writes: Option<stub_abi::sys::GuestWrites>,
}

impl GuestRamWindow {
    fn check(&self, gpa: u64, n: usize) -> Result<*mut u8, NotRam> {
        let end = gpa.checked_add(n as u64).ok_or(NotRam)?;
        if end > self.len {
            return Err(NotRam);
        }
        Ok((self.base + gpa) as *mut u8)
    }
}

impl GuestMemory for GuestRamWindow {
    fn ram_bytes(&self) -> u64 {
        self.len
    }

    fn read_phys(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), NotRam> {
        let src = self.check(gpa, buf.len())?;
        // SAFETY: `check` keeps the range inside the window the stub
        // maps read-write for this task; the guest does not run while
        // the server does, and `buf` is our own memory.
        unsafe { core::ptr::copy_nonoverlapping(src, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    fn write_phys(&mut self, gpa: u64, data: &[u8]) -> Result<(), NotRam> {
        let dst = self.check(gpa, data.len())?;
        // SAFETY: as for `read_phys`.
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len()) };
        // A page table among them must not keep stale shadows.
        if let Some(w) = &self.writes {
            w.wrote(gpa, data.len() as u64);
        }
        Ok(())
    }
}

/// The host: the TSC as time source, the CPU's own CPUID, and console
/// input through `ConsoleRead`.
struct NativeHost {
    tsc_hz: u64,
}

fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no memory effects; the stub leaves CR4.TSD
    // clear, so ring 3 may execute it.
    unsafe { core::arch::x86_64::_rdtsc() }
}

impl HostCpuid for NativeHost {
    fn host_cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
        let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
        [r.eax, r.ebx, r.ecx, r.edx]
    }
    /// The stub passes TSC_AUX through and lets RDTSCP run wherever the
    /// host has it (`kernel-stub/INTERCEPTS.md`).
    fn offers_rdtscp(&self) -> bool {
        true
    }
    /// The stub sets CR4.OSXSAVE where the host has XSAVE and loads the
    /// guest's checked XCR0 (`SET_XCR0`), which stays in the hardware.
    fn offers_xsave(&self) -> bool {
        true
    }
    fn current_xcr0(&self) -> Option<u64> {
        // CPUID.1:ECX.OSXSAVE: the stub set CR4.OSXSAVE, so XGETBV works.
        if self.host_cpuid(1, 0)[2] & (1 << 27) == 0 {
            return None;
        }
        let (lo, hi): (u32, u32);
        // SAFETY: XGETBV with ECX = 0 reads XCR0; with CR4.OSXSAVE set it
        // runs at any privilege level and touches no memory.
        unsafe {
            core::arch::asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi,
                options(nomem, nostack, preserves_flags));
        }
        Some(u64::from(hi) << 32 | u64::from(lo))
    }
}

impl Host for NativeHost {
    fn now(&mut self) -> u64 {
        rdtsc()
    }

    fn ticks_per_second(&self) -> u64 {
        self.tsc_hz
    }

    /// Spins until the TSC reaches `t`, a millisecond at a time at most
    /// (the caller polls the devices and waits again).
    fn wait_until(&mut self, t: u64) {
        let most = if self.tsc_hz == 0 {
            1_000_000
        } else {
            self.tsc_hz / 1000
        };
        let start = rdtsc();
        while rdtsc() < t && rdtsc().wrapping_sub(start) < most {
            core::hint::spin_loop();
        }
    }

    /// Spins for a millisecond: input may arrive at any time (the
    /// UART takes it when it is polled next).
    fn wait_for_input(&mut self) -> bool {
        let wait = if self.tsc_hz == 0 {
            1_000_000
        } else {
            self.tsc_hz / 1000
        };
        let start = rdtsc();
        while rdtsc().wrapping_sub(start) < wait {
            core::hint::spin_loop();
        }
        true
    }
}

/// A channel to a device server: the message goes into the channel's
/// page, `Call` waits for the reply, which comes back in the same page.
struct ChannelSyscall {
    channel: u64,
}

impl PortChannel for ChannelSyscall {
    fn call(&mut self, request: &PortMessage) -> Result<PortMessage, ErrorCode> {
        let page = (CHANNEL_PAGE_BASE + self.channel * PAGE_SIZE) as *mut PortMessage;
        // SAFETY: the stub maps the page of every channel this task is
        // an end of read-write at this address (`BootInfo::uart_channel`
        // names one); its server does not run while we do, and every
        // bit pattern is a valid PortMessage.
        unsafe { page.write_volatile(*request) };
        // SAFETY: Call takes no pointer; the asm's memory clobber orders
        // the volatile accesses around it.
        result(unsafe { syscall3(Syscall::Call, self.channel, 0, 0) })?;
        // SAFETY: as above; the server answered in the page.
        Ok(unsafe { page.read_volatile() })
    }
}

/// Tells each PCI function's server that the VM ends
/// (`ipc_proto::pci::op::END`), so that servers with counters print them
/// (virtio-net asks the switch for its lines). A server that is not
/// waiting for a call is skipped (`NotReady`).
fn tell_functions_the_end(slots: &[u8; ipc_proto::pci::FUNCTION_SLOTS]) {
    let end = ipc_proto::pci::PciMessage {
        op: ipc_proto::pci::op::END,
        ..Default::default()
    };
    for ch in slots.iter().filter_map(|s| s.checked_sub(1)) {
        let _ = PciChannel::call(
            &mut ChannelSyscall {
                channel: u64::from(ch),
            },
            &end,
        );
    }
}

impl ChannelSyscall {
    fn page<T>(&self) -> *mut T {
        (CHANNEL_PAGE_BASE + self.channel * PAGE_SIZE) as *mut T
    }
}

impl PciChannel for ChannelSyscall {
    fn call(
        &mut self,
        request: &ipc_proto::pci::PciMessage,
    ) -> Result<ipc_proto::pci::PciMessage, ErrorCode> {
        let page = self.page::<ipc_proto::pci::PciMessage>();
        // SAFETY: the stub maps the page of every channel this task is an
        // end of read-write at this address (the PCI function table names
        // it); a PciMessage fits the page; its server does not run while
        // we do, and every bit pattern is a valid PciMessage.
        unsafe { page.write_volatile(*request) };
        // SAFETY: Call takes no pointer; the asm's memory clobber orders
        // the volatile accesses around it.
        result(unsafe { syscall3(Syscall::Call, self.channel, 0, 0) })?;
        // SAFETY: as above; the server answered in the page.
        Ok(unsafe { page.read_volatile() })
    }

    fn signal(&mut self, bits: u64, count: u64) -> Result<(), ErrorCode> {
        let at = self
            .page::<u8>()
            .wrapping_add(ipc_proto::pci::DOORBELL_COUNT_OFFSET);
        // SAFETY: the channel page is mapped read-write here (see `call`)
        // and the offset is inside it, 8-aligned; the server reads the
        // count only when it runs, which it does not while we do.
        unsafe { at.cast::<u64>().write_volatile(count) };
        stub_abi::sys::signal(self.channel, bits).map(|_| ())
    }

    fn served_bit(&self) -> u32 {
        ipc_proto::pci::served_bit(self.channel) as u32
    }
}

/// What a variant of this server adds to its loop: the attack campaign's
/// hostile vmm-server (`attack/`) runs its attempts from these; the
/// vmm-server itself adds nothing ([`Plain`]).
pub trait Hooks {
    /// After the boot information, before the devices exist.
    fn start(&mut self, _boot: &BootInfo) {}
    /// Before `resume`, the answer to `exit`, goes to the stub; may
    /// replace it.
    fn resume(&mut self, _exit: &ExitRecord, _resume: &Resume) -> Option<Resume> {
        None
    }
}

/// No additions: the vmm-server as it is (unused by the hostile one).
#[allow(dead_code)]
pub struct Plain;

impl Hooks for Plain {}

/// The VCPU and statistics calls of the native stub, with the hooks.
struct NativeStub<'h> {
    hooks: &'h mut dyn Hooks,
    /// The exit the server answers next.
    last: Option<ExitRecord>,
}

impl Stub for NativeStub<'_> {
    fn vcpu_run(&mut self, resume: Option<&Resume>) -> Result<ExitRecord, ErrorCode> {
        let page = vcpu_page();
        let replaced = match (resume, &self.last) {
            (Some(r), Some(exit)) => self.hooks.resume(exit, r),
            _ => None,
        };
        if let Some(r) = replaced.as_ref().or(resume) {
            // SAFETY: the stub maps the VCPU page read-write at VCPU_PAGE
            // for this task; `resume` is inside it and suitably aligned
            // (VcpuPage is repr(C), the page is page-aligned).
            unsafe { addr_of_mut!((*page).resume).write_volatile(*r) };
        }
        // SAFETY: VcpuRun takes no pointer; the asm's memory clobber
        // orders the volatile accesses around it.
        result(unsafe { syscall3(Syscall::VcpuRun, 0, 0, 0) })?;
        // SAFETY: as above; the stub wrote `exit` before returning, and
        // every bit pattern is a valid ExitRecord.
        let exit = unsafe { addr_of!((*page).exit).read_volatile() };
        self.last = Some(exit);
        Ok(exit)
    }

    fn stats_read(&mut self) -> Result<Stats, ErrorCode> {
        // SAFETY: StatsRead takes no pointer.
        result(unsafe { syscall3(Syscall::StatsRead, 0, 0, 0) })?;
        // SAFETY: the VCPU page is mapped (see `vcpu_run`); every bit
        // pattern is a valid Stats.
        Ok(unsafe { addr_of!((*vcpu_page()).stats).read_volatile() })
    }

    fn mmu_stats(&mut self) -> Option<ipc_proto::stats::MmuStats> {
        // SAFETY: as above; `StatsRead` copied the mmu-server's counters.
        let mmu = unsafe { addr_of!((*vcpu_page()).mmu).read_volatile() };
        (mmu != ipc_proto::stats::MmuStats::default()).then_some(mmu)
    }
}

/// The server: the PC's devices behind the router, then the exit loop.
pub fn run(hooks: &mut dyn Hooks) -> ! {
    let boot = sys::boot_info();
    // Channel number + 1 to the uart-server, 0 when COM1 is ours.
    let uart_channel = boot.uart_channel.checked_sub(1);
    let (pci_slots, pci_flags) = pci_functions();
    // With `--trace`, every input and decision of the handler is recorded
    // through `Traced` wrappers; without, they only forward.
    let trace = ipc_proto::trace::TraceConfig::decode(&ipc_proto::trace::read_block(&TRACE_BLOCK));
    let recorder = trace.map(|t| {
        let meta = vmm_server::trace::Meta {
            version: vmm_server::trace::VERSION,
            board: boot.board,
            mmu_mode: boot.mmu_mode,
            uart_channel: boot.uart_channel,
            pci_functions: pci_slots.iter().filter(|&&s| s != 0).count() as u8,
            tsc_hz: boot.tsc_hz,
            guest_ram_bytes: boot.guest_ram_bytes,
        };
        RefCell::new(Recorder::new(TraceSink, t.max_exits, meta))
    });
    let rec = recorder.as_ref();
    let poll_gap = match boot.tsc_hz {
        0 => 1_000_000,
        hz => hz / 1000,
    };
    let console = RefCell::new(HostConsole::new(
        Traced::new(
            ConsoleSyscall {
                uart: uart_channel.map(|channel| ChannelSyscall { channel }),
                input_elsewhere: pci_flags & ipc_proto::pci::TAKES_HOST_INPUT != 0,
                read_gap: poll_gap,
                last_empty: None,
            },
            rec,
        ),
        true,
    ));
    if boot.abi_version != ABI_VERSION {
        console.borrow_mut().server_line(format_args!(
            "the stub speaks ABI version {}, this server was built for version {ABI_VERSION}",
            boot.abi_version
        ));
        vm_fail();
    }
    hooks.start(&boot);

    let board = Board::new();
    let mut ram = Traced::new(
        GuestRamWindow {
            base: boot.guest_ram_window,
            len: boot.guest_ram_bytes,
            writes: stub_abi::sys::GuestWrites::find(),
        },
        rec,
    );
    let mut host = Traced::new(
        NativeHost {
            tsc_hz: boot.tsc_hz,
        },
        rec,
    );
    // The board's devices and their ports, from its table.
    let kind = boards::kind_of(boot.board);
    let table = boards::table(kind);
    let com1_irq = boards::pin(&board, table, boards::Slot::Com1);
    let mut local_uart = Uart16550::new(&console).with_irq(com1_irq);
    let mut remote_uart = uart_channel.map(|channel| {
        RemotePort::new(ChannelSyscall { channel }, uart16550::COM1_BASE)
            .with_irq(com1_irq)
            // Host input is looked for once a millisecond at most: the
            // exit handler polls several times per exit.
            .with_poll_gap(&rdtsc, poll_gap)
    });
    let uart: &mut dyn PortDevice = match &mut remote_uart {
        Some(r) => r,
        None => &mut local_uart,
    };
    // The PCI functions that run as servers of their own, on the PC
    // board's slots; the ISA board has none.
    let mut functions: [Option<RemotePci<'_, ChannelSyscall>>; ipc_proto::pci::FUNCTION_SLOTS] =
        core::array::from_fn(|i| {
            let channel = u64::from(pci_slots[i].checked_sub(1)?);
            let &(_, intx) = boards::PC_PCI_SLOTS.get(i)?;
            (kind == ipc_proto::manifest::Board::Pc).then(|| {
                RemotePci::new(ChannelSyscall { channel })
                    .with_irq(board.irq.pci(intx))
                    .with_poll_gap(&rdtsc, poll_gap)
            })
        });
    let bus = PciBus::new();
    for (i, f) in functions.iter_mut().enumerate() {
        let (Some(f), Some(&(device, intx))) = (f, boards::PC_PCI_SLOTS.get(i)) else {
            continue;
        };
        if let Err(e) = bus.add(device, 0, intx, f) {
            console
                .borrow_mut()
                .server_line(format_args!("PCI 00:{device:02x}.0: {e}"));
            vm_fail();
        }
    }
    let mut devices =
        boards::Devices::new(&board, table, boot.guest_ram_bytes, RTC_EPOCH).with_pci_bus(&bus);
    let (router, mmio) = match devices.routers(table, uart) {
        Ok(routers) => routers,
        Err(e) => {
            console.borrow_mut().server_line(format_args!("{e}"));
            vm_fail();
        }
    };
    // Build iced's decoder tables now, so that running out of heap shows
    // at start rather than at the first emulated instruction.
    let _ = iced_x86::Decoder::new(64, &[0x90], 0).decode();
    let config = vmm_server::vmm::VmmConfig {
        shadow_paging: boot.mmu_mode != 0,
        tsc_offsetting: true,
        ..Default::default()
    };
    let mut vmm = Vmm::new(router, &board, &mut ram, &mut host)
        .with_mmio(mmio)
        .with_irqchip(boards::irqchip(kind, &board))
        .with_pci_bus(&bus)
        .with_config(config);

    let mut stub = Traced::new(NativeStub { hooks, last: None }, rec);
    let ending = vmm_server::run(&mut stub, &mut vmm, &console);
    if let Some(r) = rec {
        r.borrow_mut().end(ending, vmm.stats());
    }
    match ending {
        Ending::Stop { status } => {
            tell_functions_the_end(&pci_slots);
            vm_stop(status)
        }
        // The stub has no reset yet: a reset ends the VM, as QEMU's
        // -no-reboot does.
        Ending::Reset => {
            tell_functions_the_end(&pci_slots);
            vm_stop(0)
        }
        Ending::Fail => vm_fail(),
    }
}

/// The heap: `iced-x86` builds its decoder tables (about 370 KiB, in
/// some 7700 allocations) on the first decode and never frees them, and
/// allocates nothing after that; the server itself allocates nothing.
/// A bump allocator over a static arena is all that needs.
const ARENA_SIZE: usize = 1 << 20;

#[repr(C, align(4096))]
struct Arena(core::cell::UnsafeCell<[u8; ARENA_SIZE]>);

// SAFETY: the arena is only handed out in disjoint pieces by `Bump`,
// whose cursor is atomic.
unsafe impl Sync for Arena {}

static ARENA: Arena = Arena(core::cell::UnsafeCell::new([0; ARENA_SIZE]));
static ARENA_USED: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

struct Bump;

// SAFETY: every block handed out lies inside the arena, is aligned as
// asked, and never overlaps another (the cursor only moves forward, by
// compare-and-swap); a request that does not fit gets null.
unsafe impl core::alloc::GlobalAlloc for Bump {
    unsafe fn alloc(&self, layout: core::alloc::Layout) -> *mut u8 {
        let base = ARENA.0.get() as usize;
        let mut used = ARENA_USED.load(Ordering::Relaxed);
        loop {
            let start = (base + used).next_multiple_of(layout.align()) - base;
            let Some(end) = start
                .checked_add(layout.size())
                .filter(|&e| e <= ARENA_SIZE)
            else {
                return core::ptr::null_mut();
            };
            match ARENA_USED.compare_exchange(used, end, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return (base + start) as *mut u8,
                Err(now) => used = now,
            }
        }
    }

    /// Nothing is given back: iced's tables live as long as the server.
    unsafe fn dealloc(&self, _ptr: *mut u8, _layout: core::alloc::Layout) {}
}

#[global_allocator]
static ALLOCATOR: Bump = Bump;

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let mut c = HostConsole::new(
        ConsoleSyscall {
            uart: None,
            input_elsewhere: false,
            read_gap: 0,
            last_empty: None,
        },
        AT_LINE_START.load(Ordering::Relaxed),
    );
    match info.location() {
        Some(l) => c.server_line(format_args!(
            "panic: {} at {}:{}",
            info.message(),
            l.file(),
            l.line()
        )),
        None => c.server_line(format_args!("panic: {}", info.message())),
    }
    vm_fail()
}
