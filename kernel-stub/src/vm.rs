//! The VMs of this image (up to `MAX_VMS`, one manifest each) and the
//! tasks that serve them: created from the manifests at boot, scheduled by
//! their blocking system calls (no preemption), and stopped with a final
//! console line that the `splitvisor` command reads.
//!
//! A VM's tasks, channels and tables are its own: every index a server
//! names is looked up in its VM only. The tasks in no VM (a switch shared
//! by the VMs: no guest RAM, VCPU, ports or IRQs) sit in one more slot,
//! [`NO_VM`], scheduled like a VM without a guest; a channel across VMs
//! joins one of them to a VM's task (`Channel::far`, checked at boot by
//! `ipc_proto::manifest::check_links`), and a `Call`, `ReplyRecv` or
//! `Signal` on it reaches the other slot (`Kernel::far`): each side names
//! only its own channel numbers and sees only its own channel pages. Between VMs (`Kernel::next_vm`):
//! round-robin, a VM keeping the CPU for a slice of its guest's time
//! ([`SLICES_PER_S`]) or until nothing of it can run; a VM that ends
//! leaves the others running (`vm_ended`). The rules below are those
//! inside one VM.
//!
//! A task runs until it blocks: in `VcpuRun` (waiting for an exit), in
//! `ReplyRecv` (waiting for a call or a notification) or in `Call`
//! (waiting for a reply). What a task may do follows from its rights in
//! the manifest (`ipc_proto::manifest::Rights`), checked at every call.
//!
//! Scheduling, when the running task blocks (servers above the guest):
//! 1. a task that has not started yet starts;
//! 2. a task waiting in `ReplyRecv` whose notification word is not zero
//!    (a `Signal` from the other end of a channel, or a host IRQ it owns)
//!    runs, with the word as its result;
//! 3. a task waiting in `ReplyRecv` whose timeout passed runs, with
//!    `RECV_TIMEOUT` as its result;
//! 4. otherwise, once every task with a VCPU waits for an exit: a VCPU
//!    task whose notification word is not zero, and that had no
//!    notification exit since the guest last ran, gets the word as a
//!    notification exit (`ipc_proto::exit::stub_exit::NOTIFICATION`, the
//!    word read and cleared at once; the guest is not entered, its state
//!    stays as at the last exit, the task's resume was applied; its next
//!    `VcpuRun` with an empty resume changes nothing, a non-empty one
//!    applies as usual). At most one such exit per task
//!    between two entries: a server signalling a VCPU task in a loop
//!    delays the guest, never starves it;
//! 5. otherwise the guest runs, and its exit goes to the task whose
//!    `Rights::exits` holds its class (the shadow MMU's exits to the
//!    mmu-server, the rest to the vmm-server). The exit deadline's timer
//!    counts towards the vmm-server's deadline or the earliest
//!    `ReplyRecv` timeout, whichever comes first.
//!
//! When every task waits and the guest cannot run (a VCPU task blocked
//! in a `Call`), the stub idles: it polls the 8259s for an IRQ line a
//! waiting task owns and the TSC for the earliest timeout (it takes no
//! interrupt through its IDT), then schedules again. Only when neither
//! can come does it report the servers deadlocked.
//!
//! The guest before device work: a device server signalled since the
//! guest was last entered (a queue doorbell) waits for the guest's next
//! exit when the guest can run, so the guest goes on while its request
//! is pending. While one waits, the guest's PAUSE exits at once (a
//! spin-wait hint: Linux's `cpu_relax`, a driver polling its used ring)
//! and a 1 ms slice of the exit deadline bounds a run that has none; a
//! PAUSE exit is the scheduler's own, no server sees it. Exit handlers
//! (VCPU tasks) and drivers woken by their IRQ are never deferred.
//!
//! Servers run with interrupts on (the stub with them off): a host IRQ
//! that comes while a server runs is taken through the IDT
//! ([`interrupt`]), noted in its owner's word as after a guest exit, and
//! the same server goes on: no preemption. The timer's ticks there are the
//! watchdog's (`kernel_stub::watchdog`): a server that has had the CPU for
//! its budget without blocking is handled like one that faulted.

use crate::arch::{self, Arch, Entry, EntryFailure, ExitClass, Paging, Vcpu};
use crate::boot::{self, BootInfo};
use crate::console::say;
use crate::cpu::{self, KernelCell, TrapFrame, MAX_CPUS};
use crate::deadline::{self, ExitDeadline};
use crate::memory::{self, LARGE_PAGE};
use crate::syscall;
use crate::task;
use core::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use ipc_proto::manifest::{
    Blob, EntryMode, ExitClasses, GuestRam as RamRight, Manifest, PayloadHeader, Rights,
    MANIFEST_MAX, MAX_CHANNELS, MAX_TASKS, MAX_VMS, PAYLOAD_MAGIC, TASK_NAME_MAX,
};
use ipc_proto::mmu::{InstallPage, INSTALL_BATCH_MAX};
use ipc_proto::stats::MmuStats;
use ipc_proto::{ErrorCode, ExitKind, ExitRecord, ResumeFlags, Stats, VcpuPage, ABI_VERSION};
use kernel_stub::install::{AllocError, GuestRam, ShadowTables, TableFormat};
use kernel_stub::notify::{ExitGate, Notifications, WakeAt};
use kernel_stub::resume::PagingRules;
use kernel_stub::watchdog::{Watchdog, BUDGET_MS};
use stub_abi::layout::{BootInfo as ServerBootInfo, GUEST_RAM_WINDOW, STACK_TOP};
use stub_abi::syscall::{ReturnValue, NO_REPLY, RECV_TIMEOUT};
use stub_abi::Syscall;
use zerocopy::{FromBytes, IntoBytes};

/// QEMU's isa-debug-exit port (`-device isa-debug-exit,iobase=0xf4`): the
/// stub's way to end QEMU. On hardware the write is harmless.
const DEBUG_EXIT_PORT: u16 = 0xf4;
const HOST_EXIT_STOPPED: u8 = 0;
pub const HOST_EXIT_FAILED: u8 = 1;
const HOST_EXIT_CANNOT_RUN: u8 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    NotStarted,
    Running,
    /// In `VcpuRun`, waiting for an exit.
    WaitExit,
    /// In `ReplyRecv`, waiting for a call on one of its channels.
    WaitRecv,
    /// In `Call` on this channel, waiting for the reply.
    WaitReply(usize),
    /// May run again, its result already in its saved `rax` (a `Call`
    /// whose server was restarted).
    Ready,
}

/// Restarts of one task in a row, without an answer (to an exit or a
/// call) from it in between, before a fault of its stops the VM instead:
/// a server that faults at once every time cannot keep the VM restarting
/// it for ever. (A cap in host time would depend on the emulator's speed.)
const MAX_RESTARTS: u32 = 8;
/// While a device server's work is deferred (`Vm::pick_task`), the guest
/// runs at most 1/this of a second before the exit deadline lets it run.
const DEFERRED_SLICE_PER_S: u64 = 1000;
/// Restarts of one task in all before a fault of its stops the VM.
const MAX_RESTARTS_TOTAL: u32 = 1000;

struct Task {
    name: heapless::String<TASK_NAME_MAX>,
    /// What the manifest lets it do; checked at every system call.
    rights: Rights,
    root: u64,
    /// Saved registers while the task does not run.
    frame: TrapFrame,
    state: State,
    /// The task's VCPU page (exit handlers only).
    vcpu_page: Option<u64>,
    /// The mmu-server's install page.
    install_page: Option<u64>,
    /// Whether it has called `VcpuRun` before (its first resume is optional).
    ran_vcpu: bool,
    /// Its notification word.
    notes: Notifications,
    /// A VCPU task's notification exits (one between two entries).
    gate: ExitGate,
    /// It got a notification exit: its next `VcpuRun` with an empty
    /// resume changes nothing (its last one was applied already).
    noted: bool,
    /// The guest was entered since its last resume was applied (its
    /// notification exits say so: `stub_exit::GUEST_RAN`).
    entered_since_resume: bool,
    /// A device server (no VCPU page) was signalled since the guest was
    /// last entered: it waits for the guest's next exit when the guest can
    /// run (`schedule`), so the guest does not wait for its work.
    signalled_since_entry: bool,
    /// Its `ReplyRecv` timeout, while it waits there.
    wake: WakeAt,
    /// Its ELF in the payload, to restart it from.
    elf: Blob,
    /// How often it was restarted: a `Call` in flight when it moves on
    /// fails with `ServerRestarted`.
    generation: u32,
    /// Restarts since it last answered an exit or a call ([`MAX_RESTARTS`]).
    restarts_in_a_row: u32,
}

struct Channel {
    /// Task indices of this slot; a far end is `FAR_END` (no task).
    client: usize,
    server: usize,
    /// A channel across VMs: its entry in the other slot (slot, number),
    /// whose task is the other end.
    far: Option<(usize, usize)>,
    /// Its page, mapped into both ends.
    page: u64,
}

/// The slot of the tasks in no VM, after the VMs'.
const NO_VM: usize = MAX_VMS;
const SLOTS: usize = MAX_VMS + 1;

struct Vm {
    tasks: [Option<Task>; MAX_TASKS],
    /// The task slots in use: `tasks[..live]`, the manifest's tasks in
    /// order (none is added later), so that the scans on the exit path
    /// pass over those and not over all 16 slots.
    live: usize,
    channels: [Option<Channel>; MAX_CHANNELS],
    current: usize,
    /// False for the tasks in no VM: their `vcpu` is never entered.
    guest: bool,
    /// Channels across VMs whose far clients must hear `ServerRestarted`
    /// (their server here restarted): `Kernel::settle` tells them.
    far_restarted: u16,
    vcpu: Vcpu,
    shadow: bool,
    /// Whether the mmu-server has set a shadow root (`SET_PAGING`) or the
    /// nested root (`SET_NESTED_ROOT`) yet: the guest never runs before.
    paging_set: bool,
    ram: GuestRam,
    /// The TSC value the guest must exit by (`SET_EXIT_DEADLINE`; 0: none).
    exit_at: u64,
    /// Its current task's frame is saved and its ports revoked: another
    /// VM ran since (`Kernel::next_vm`).
    parked: bool,
    /// The CR0/CR4/EFER bits a `SET_PAGING` may set on this CPU.
    paging_rules: PagingRules,
    /// The frame of the PAE root the hardware walks from (shadow paging
    /// without LME): its entries 0-3 are loaded as PDPTEs at every entry.
    pae_root: Option<u64>,
    /// The exit the mmu-server handles now (class, record as the
    /// hardware gave it): delivered again to its next instance when it
    /// faults before it answers.
    mmu_exit: Option<(ExitClasses, ExitRecord)>,
    /// The guest's control registers the mmu-server published with its
    /// last accepted resume (shadow paging): written back into its VCPU
    /// page when it restarts, over whatever the faulting instance left.
    mmu_control: ipc_proto::GuestControl,
    /// How long the running server has had the CPU.
    watch: Watchdog,
    tsc_hz: u64,
    /// Times the stub idled (every task waiting, the guest unable to run).
    idles: u64,
    /// PAUSE exits taken to run deferred device servers (`schedule`).
    yields: u64,
}

/// What a VM's calls reach besides the VM: its shadow tables and
/// counters (one of each per VM, beside it in `Kernel`), and the host's
/// timer (one for all VMs).
struct Shared<'a> {
    tables: &'a mut ShadowTables,
    stats: &'a mut Stats,
    timer: &'a mut ExitDeadline,
    /// With several VMs live: when the running VM's turn ends.
    slice_end: Option<u64>,
    /// Every host IRQ line a task of any VM owns.
    irqs: u16,
    /// Lines that fired for another VM than the running one.
    elsewhere: &'a mut u16,
}

/// A CPU's state, in one cell whose borrow is checked: a fault inside the
/// stub while it is borrowed reports instead of aliasing it. Each CPU has
/// its own ([`kernel`]) and holds only the VMs placed on it (in their
/// image's slots: VM n is `vms[n]` on its CPU, `None` elsewhere), so a
/// VM's tasks, channels, tables, timer and slice are only ever touched by
/// its CPU. What the CPUs share: the console and the frame allocator (each
/// behind its lock, `KernelCell`), the host IRQ lines ([`IRQS`]) and the
/// end of the run ([`ENDED`], [`LIVE`]).
struct Kernel {
    /// The VMs and their tasks, once `start` has built them; `None` once
    /// one ended.
    vms: [Option<Vm>; SLOTS],
    tables: [ShadowTables; SLOTS],
    stats: [Stats; SLOTS],
    /// The PIT, bounding each guest entry and each server run.
    timer: ExitDeadline,
    /// The VM whose task runs (or whose guest ran last).
    current: usize,
    /// VMs the image holds.
    count: usize,
    /// Several VMs, or tasks in no VM: each line gets its slot's prefix.
    prefixed: bool,
    /// When the current VM's turn ends (several VMs live).
    slice_end: u64,
    /// Every host IRQ line a task owns (no line has owners in two VMs).
    irqs: u16,
    /// Lines that fired while another VM than their owner's ran.
    irqs_elsewhere: u16,
}

/// A VM's turn, when others wait: its guest runs until its slice ends.
const SLICES_PER_S: u64 = 100;

const NO_STATS: Stats = Stats {
    exits_total: 0,
    exits_ioio: 0,
    exits_hlt: 0,
    exits_cpuid: 0,
    exits_msr: 0,
    exits_npf: 0,
    exits_exception: 0,
    exits_shutdown: 0,
    exits_invalid: 0,
    exits_other: 0,
    exits_host_interrupt: 0,
    restarts: 0,
    syscalls: 0,
    resumes_refused: 0,
    installs: 0,
    installs_refused: 0,
    channel_calls: [0; MAX_CHANNELS],
};

static KERNELS: [KernelCell<Kernel>; MAX_CPUS] = [const {
    KernelCell::new(Kernel {
        vms: [const { None }; SLOTS],
        tables: [const { ShadowTables::new() }; SLOTS],
        stats: [NO_STATS; SLOTS],
        timer: ExitDeadline::new(0),
        current: 0,
        count: 0,
        prefixed: false,
        slice_end: 0,
        irqs: 0,
        irqs_elsewhere: 0,
    })
}; MAX_CPUS];

/// This CPU's state.
fn kernel() -> &'static KernelCell<Kernel> {
    &KERNELS[cpu::id()]
}

/// How each ended VM ended, its exits and its CPU (any CPU's VM).
static ENDED: KernelCell<[Option<(Stop, u64, usize)>; MAX_VMS]> =
    KernelCell::new([const { None }; MAX_VMS]);
/// CPUs with a VM not ended yet: the last one reports the run's end.
static LIVE: AtomicUsize = AtomicUsize::new(1);
/// CPUs that run VMs, bit n for CPU n: with more than one, the end's table
/// names each VM's CPU.
static USED: AtomicU8 = AtomicU8::new(1);
/// Every host IRQ line a task of any VM owns (all on the boot CPU).
static IRQS: AtomicU16 = AtomicU16::new(0);
/// Building the VMs at boot, one CPU at a time: the CPU whose turn it is
/// ([`BUILT`] once all are built and may run).
static BUILD_TURN: AtomicUsize = AtomicUsize::new(0);
const BUILT: usize = usize::MAX;
/// The TSC's rate, measured once by the boot CPU.
static TSC_HZ: AtomicU64 = AtomicU64::new(0);
/// `unsafe_shadow` was on the boot command line.
static UNSAFE_SHADOW: AtomicBool = AtomicBool::new(false);

/// What a system call did, when it did not fail.
enum Next {
    /// Return this value to the caller.
    Return(u64),
    /// The caller blocked: another task's frame, its result set, is loaded.
    Switched,
}

/// Why a system call returns no value: an error code for the caller, or
/// the end of the VM (reported once the kernel state is not borrowed).
enum SysError {
    Code(ErrorCode),
    Stop(Stop),
    /// The VM has nothing to run now, or its guest's slice is over: the
    /// next VM that can go runs (`Kernel::settle`).
    Yield,
    /// A call on a channel across VMs, for `Kernel::far`.
    Far(FarOp),
}

/// A system call on a channel across VMs (its number here).
#[derive(Clone, Copy)]
enum FarOp {
    Call(usize),
    /// `ReplyRecv`: the caller waits in it already.
    Reply(usize),
    Signal(usize, u64),
}

impl From<ErrorCode> for SysError {
    fn from(e: ErrorCode) -> Self {
        Self::Code(e)
    }
}

impl From<Stop> for SysError {
    fn from(s: Stop) -> Self {
        Self::Stop(s)
    }
}

/// Every system call's result.
type SysResult = Result<Next, SysError>;

/// A value for the caller.
fn ret(r: Result<u64, ErrorCode>) -> SysResult {
    Ok(Next::Return(r?))
}

/// Why the VM cannot go on, found while the kernel state is borrowed;
/// reported (with `fail`) once it is not.
enum Stop {
    EntryFailed {
        why: EntryFailure,
        rip: u64,
    },
    NoServer {
        class: &'static str,
        code: u64,
        rip: u64,
    },
    NoPagingRoot {
        shadow: bool,
    },
    Deadlock,
    /// `VmStop`: the guest ended with this status.
    Stopped(u8),
    /// `VmStop` with a status that is not a byte.
    BadStatus(u64),
    /// `VmFail` from this task.
    GaveUp(heapless::String<TASK_NAME_MAX>),
    /// A task faulted in ring 3 (or hung) and is not restarted (`why`).
    Faulted {
        name: heapless::String<TASK_NAME_MAX>,
        cause: Cause,
        why: &'static str,
    },
}

/// Why a server is restarted, or the VM stops.
#[derive(Clone, Copy, Debug)]
enum Cause {
    /// An exception in ring 3.
    Exception {
        vector: u64,
        error_code: u64,
        rip: u64,
        cr2: u64,
    },
    /// The watchdog: it ran `ms` milliseconds without blocking.
    Watchdog { ms: u64, rip: u64 },
}

impl core::fmt::Display for Cause {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Self::Exception {
                vector,
                error_code,
                rip,
                cr2,
            } => write!(
                f,
                "exception {vector} (error code {error_code:#x}) at rip={rip:#x}, cr2={cr2:#x}"
            ),
            Self::Watchdog { ms, rip } => write!(
                f,
                "watchdog: it ran {ms} ms without blocking (budget {BUDGET_MS} ms), at rip={rip:#x}"
            ),
        }
    }
}

impl core::fmt::Display for Stop {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::EntryFailed { why, rip } => write!(f, "{why} at rip={rip:#x}"),
            Self::NoServer { class, code, rip } => write!(
                f,
                "exit {class} (code {code:#x}) at rip={rip:#x} has no server: the image has no task for it",
            ),
            Self::NoPagingRoot { shadow: true } => f.write_str("the mmu-server let the guest run without a shadow root"),
            Self::NoPagingRoot { shadow: false } => f.write_str(
                "the guest cannot run before the mmu-server names its nested page table root (SET_NESTED_ROOT)",
            ),
            Self::Deadlock => f.write_str("every task waits and the guest cannot run: the servers deadlocked"),
            Self::Stopped(status) => write!(f, "stopped with guest status {status}"),
            Self::BadStatus(status) => write!(f, "the vmm-server stopped the VM with status {status}, which is not a byte"),
            Self::GaveUp(name) => write!(f, "the {name} gave up (its reason is above)"),
            Self::Faulted { name, cause, why } => {
                let what = match cause {
                    Cause::Exception { .. } => "faulted",
                    Cause::Watchdog { .. } => "hung",
                };
                write!(f, "the {name} {what}: {cause}; stopping the VM{why}")
            }
        }
    }
}

fn stop_now(stop: Stop) -> ! {
    report(&stop);
    end(match stop {
        Stop::Stopped(_) => HOST_EXIT_STOPPED,
        _ => HOST_EXIT_FAILED,
    })
}

/// The current VM's end: the scheduler's figures, `vm stopped: guest
/// status N` or `vm failed: REASON` and the counters.
fn report(stop: &Stop) {
    scheduler_line();
    if let Stop::Stopped(status) = stop {
        say!("vm stopped: guest status {status}");
    } else {
        say!("vm failed: {stop}");
        counters();
    }
}

/// The current VM ended (`stop`): with one VM in the image, the run ends
/// with it. Otherwise its end is reported (with its prefix) and the others
/// go on; after the last, the table of every VM and the run's final line:
/// the first failure, else the first non-zero guest status, else 0.
fn vm_ended(frame: &mut TrapFrame, stop: Stop) -> SysResult {
    // One VM: the run ends with it (not with the tasks in no VM).
    if kernel()
        .try_with(|k| k.count <= 1 && k.current != NO_VM)
        .unwrap_or(true)
    {
        stop_now(stop)
    }
    report(&stop);
    let next = kernel().with(|k| {
        let i = k.current;
        // Callers in another slot blocked on this one's servers hear it.
        if let Some(vm) = k.vms[i].as_mut() {
            vm.far_restarted = u16::MAX;
        }
        k.tell_far_clients();
        k.vms[i] = None;
        let exits = k.stats[i].exits_total;
        // The tasks in no VM are not in the table.
        if i < MAX_VMS {
            ENDED.with(|e| e[i] = Some((stop, exits, cpu::id())));
        }
        k.vms[..MAX_VMS]
            .iter()
            .any(Option::is_some)
            .then(|| k.settle(frame, Err(SysError::Yield)))
    });
    if let Some(outcome) = next {
        return outcome;
    }
    crate::console::set_vm(None);
    // This CPU's VMs all ended: the last CPU to get here ends the run.
    if LIVE.fetch_sub(1, Ordering::AcqRel) > 1 {
        cpu::halt_forever()
    }
    let count = kernel().with(|k| k.count);
    let code = ENDED.with(|ended| {
        say!("all {count} VMs ended:");
        let ended = || ended.iter().enumerate();
        let smp = USED.load(Ordering::Relaxed).count_ones() > 1;
        for (i, (stop, exits, c)) in ended().filter_map(|(i, e)| Some((i, e.as_ref()?))) {
            if smp {
                say!("| vm{i} | cpu{c} | exits {exits} | {stop}");
            } else {
                say!("| vm{i} | exits {exits} | {stop}");
            }
        }
        let failed = ended().find_map(|(i, e)| match e {
            Some((Stop::Stopped(_), _, _)) | None => None,
            Some((stop, _, _)) => Some((i, stop)),
        });
        if let Some((i, stop)) = failed {
            say!("vm failed: vm{i}: {stop}");
            return HOST_EXIT_FAILED;
        }
        let status = ended().find_map(|(_, e)| match e {
            Some((Stop::Stopped(n), _, _)) if *n != 0 => Some(*n),
            _ => None,
        });
        say!("vm stopped: guest status {}", status.unwrap_or(0));
        HOST_EXIT_STOPPED
    });
    end(code)
}

/// Bochs's shutdown port: writing the string `Shutdown` ends Bochs.
const BOCHS_SHUTDOWN_PORT: u16 = 0x8900;

pub fn end(code: u8) -> ! {
    cpu::outb(DEBUG_EXIT_PORT, code);
    // Bochs stops at once: let COM1 send its last bytes first (LSR.TEMT).
    let mut spins = 0u32;
    while cpu::inb(0x3fd) & 0x40 == 0 && spins < 10_000_000 {
        spins += 1;
    }
    for b in *b"Shutdown" {
        cpu::outb(BOCHS_SHUTDOWN_PORT, b);
    }
    cpu::halt_forever()
}

/// The stub cannot run a VM at all (no SVM, a bad image): one line, then off.
pub fn cannot_run(why: &str) -> ! {
    say!("cannot run: {why}");
    end(HOST_EXIT_CANNOT_RUN)
}

/// The VM cannot go on: the reason, the statistics, then off.
pub fn fail(why: core::fmt::Arguments) -> ! {
    scheduler_line();
    say!("vm failed: {why}");
    counters();
    end(HOST_EXIT_FAILED)
}

/// The current VM's counters.
fn counters() {
    let counters = kernel().try_with(|k| {
        let mmu = k.vms[k.current].as_ref().and_then(Vm::mmu_stats);
        (k.stats[k.current], mmu)
    });
    match counters {
        Some((stats, mmu)) => {
            say!("{stats}");
            if let Some(mmu) = mmu {
                say!("{mmu}");
            }
        }
        None => say!("(no statistics: the stub faulted while it held its own state)"),
    }
}

/// The scheduler's figures, before the final line: `[stub] scheduler:
/// idle=N yields=Y longest_run_us=U (NAME) watchdog_ms=B` (the idle loop's
/// entries, the PAUSE exits that ran deferred device work, the longest
/// server run that ended in a system call).
fn scheduler_line() {
    let figures = kernel().try_with(|k| {
        let vm = k.vms[k.current].as_ref()?;
        let (ticks, task) = vm.watch.longest();
        let us = ticks / (vm.tsc_hz / 1_000_000).max(1);
        Some((vm.idles, vm.yields, us, vm.task(task).name.clone()))
    });
    if let Some(Some((idles, yields, us, name))) = figures {
        say!("scheduler: idle={idles} yields={yields} longest_run_us={us} ({name}) watchdog_ms={BUDGET_MS}");
    }
    #[cfg(feature = "bench-exit-parts")] // splitvisor bench exits --parts only
    say!("parts: {}", kernel_stub::bench_parts::PARTS);
}

/// `bench exits --parts`: the idle loop hands back to the place it
/// interrupted, however it ends.
#[cfg(feature = "bench-exit-parts")]
struct Restamp(kernel_stub::bench_parts::Place);

#[cfg(feature = "bench-exit-parts")]
impl Drop for Restamp {
    fn drop(&mut self) {
        cpu::stamp(self.0);
    }
}

fn count_exit(s: &mut Stats, class: ExitClass) {
    {
        s.exits_total += 1;
        let counter = match class {
            ExitClass::Ioio => &mut s.exits_ioio,
            ExitClass::Hlt => &mut s.exits_hlt,
            ExitClass::Cpuid => &mut s.exits_cpuid,
            ExitClass::Msr => &mut s.exits_msr,
            ExitClass::Npf => &mut s.exits_npf,
            ExitClass::Shutdown => &mut s.exits_shutdown,
            ExitClass::Invalid => &mut s.exits_invalid,
            ExitClass::Exception => &mut s.exits_exception,
            ExitClass::Other => &mut s.exits_other,
            ExitClass::HostInterrupt => &mut s.exits_host_interrupt,
        };
        *counter += 1;
    }
}

fn vcpu_page(pa: u64) -> *mut VcpuPage {
    pa as *mut VcpuPage
}

impl Task {
    /// A `Signal` from the other end of a channel: `bits` into its word.
    fn signalled(&mut self, bits: u64) -> Result<(), ErrorCode> {
        self.notes.signal(bits)?;
        self.signalled_since_entry = true;
        Ok(())
    }
}

impl Vm {
    /// A VM whose tasks wait to start, with its guest (shadow paging or
    /// not, its RAM) or, for the tasks in no VM, none.
    fn new(
        tasks: [Option<Task>; MAX_TASKS],
        channels: [Option<Channel>; MAX_CHANNELS],
        vcpu: Vcpu,
        guest: Option<(bool, GuestRam)>,
        tsc_hz: u64,
    ) -> Self {
        let (shadow, ram) = guest.unwrap_or((
            false,
            GuestRam {
                hpa_base: 0,
                bytes: 0,
            },
        ));
        let live = tasks.iter().rposition(Option::is_some).map_or(0, |i| i + 1);
        Self {
            tasks,
            live,
            channels,
            current: 0,
            guest: guest.is_some(),
            far_restarted: 0,
            vcpu,
            shadow,
            paging_set: false,
            exit_at: 0,
            parked: true,
            ram,
            paging_rules: PagingRules::from_cpuid(cpu::cpuid_words),
            pae_root: None,
            mmu_exit: None,
            mmu_control: ipc_proto::GuestControl::default(),
            watch: Watchdog::new(tsc_hz),
            tsc_hz,
            idles: 0,
            yields: 0,
        }
    }

    /// The task slots in use (`live`).
    fn live(&self) -> &[Option<Task>] {
        self.tasks.get(..self.live).unwrap_or_default()
    }

    fn live_mut(&mut self) -> &mut [Option<Task>] {
        self.tasks.get_mut(..self.live).unwrap_or_default()
    }

    fn task(&self, i: usize) -> &Task {
        self.tasks[i]
            .as_ref()
            .expect("task indices come from the table")
    }

    fn task_mut(&mut self, i: usize) -> &mut Task {
        self.tasks[i]
            .as_mut()
            .expect("task indices come from the table")
    }

    /// The first task whose rights pass `f`.
    fn find(&self, f: impl Fn(&Rights) -> bool) -> Option<usize> {
        self.live()
            .iter()
            .position(|t| t.as_ref().is_some_and(|t| f(&t.rights)))
    }

    /// The task that receives exits of `class`.
    fn handler(&self, class: ExitClasses) -> Option<usize> {
        self.find(|r| r.exits.contains(class))
    }

    /// Parks the current task (its new state already set) and resumes `next`
    /// with `rax` as the result of its pending system call.
    fn switch(&mut self, frame: &mut TrapFrame, next: usize, rax: u64) {
        let cur = self.current;
        if cur == next && !self.parked {
            // The task that trapped runs again (most exits: the guest's
            // handler called `VcpuRun`): its frame is `frame` already,
            // and CR3 still holds its root -- the VMRUN's exit restores
            // it (SVM's host save area; VMX's HOST_CR3, which `run` keeps
            // at the current CR3) and a task's tables never change while
            // it lives (a restart refills its pages, not its tables).
            frame.rax = rax;
            self.task_mut(next).state = State::Running;
            return;
        }
        if core::mem::take(&mut self.parked) {
            cpu::grant_ports(&[], &self.task(next).rights.ports);
        } else {
            self.task_mut(cur).frame = *frame;
            if cur != next {
                cpu::grant_ports(&self.task(cur).rights.ports, &self.task(next).rights.ports);
            }
        }
        let t = self.task_mut(next);
        *frame = t.frame;
        frame.rax = rax;
        t.state = State::Running;
        cpu::write_cr3(t.root);
        self.current = next;
    }

    /// Another VM runs next: the current task's frame (`frame`) is saved
    /// and its ports revoked.
    fn park(&mut self, frame: &TrapFrame) {
        if !self.parked {
            let cur = self.current;
            self.task_mut(cur).frame = *frame;
            cpu::grant_ports(&self.task(cur).rights.ports, &[]);
            self.parked = true;
        }
    }

    /// Whether the VM has something to run now: a task, or its guest.
    fn can_go(&self) -> bool {
        let now = cpu::rdtsc();
        self.handlers_ready()
            || self.live().iter().flatten().any(|t| {
                matches!(t.state, State::NotStarted | State::Ready)
                    || (t.state == State::WaitRecv && (t.notes.pending() || t.wake.due(now)))
            })
    }

    /// The current task has blocked: start a task that has not run yet, or,
    /// when all wait, run the guest and hand the exit to its handler; when
    /// the guest cannot run or its slice is over, yield to the next VM
    /// (`Kernel::next_vm`, which idles when none can go).
    fn schedule(&mut self, frame: &mut TrapFrame, sh: &mut Shared) -> SysResult {
        loop {
            // Servers that keep each other busy do not keep the CPU
            // from other VMs past the slice either.
            if sh.slice_end.is_some_and(|end| cpu::rdtsc() >= end) {
                return Err(SysError::Yield);
            }
            if let Some((i, rax)) = self.pick_task() {
                self.switch(frame, i, rax);
                return Ok(Next::Switched);
            }
            if !self.handlers_ready() {
                return Err(SysError::Yield);
            }
            let noted = self.live_mut().iter_mut().enumerate().find_map(|(i, t)| {
                let t = t.as_mut().filter(|t| t.vcpu_page.is_some())?;
                let word = t.gate.take(&mut t.notes)?;
                t.noted = true;
                Some((i, ExitRecord::notification(word, t.entered_since_resume)))
            });
            if let Some((i, rec)) = noted {
                return self.hand(frame, i, &rec);
            }
            if !self.paging_set {
                return Err(Stop::NoPagingRoot {
                    shadow: self.shadow,
                }
                .into());
            }
            // A waiting task with pending bits here is a deferred device
            // server (`pick_task`): the guest's next PAUSE (a spin-wait
            // hint: Linux's cpu_relax, a driver polling its used ring)
            // exits at once, and a slice of the exit deadline ends a run
            // that has none.
            // One pass on every exit (not one per question): the deferred
            // servers, the earliest `ReplyRecv` timeout (`earliest_wake`),
            // and every task marked as having seen the guest entered.
            let (mut deferred, mut wake) = (false, None);
            for t in self.live_mut().iter_mut().flatten() {
                if t.state == State::WaitRecv {
                    deferred |= t.notes.pending();
                    wake = WakeAt::earliest(wake, t.wake.at());
                }
                t.gate.entered();
                t.signalled_since_entry = false;
                t.entered_since_resume = true;
            }
            self.vcpu.set_pause_exiting(deferred);
            let now = cpu::rdtsc();
            let slice = deferred.then(|| now.saturating_add(self.tsc_hz / DEFERRED_SLICE_PER_S));
            let slice = WakeAt::earliest(slice, sh.slice_end);
            sh.timer.at = self.exit_at;
            sh.timer.arm(now, WakeAt::earliest(wake, slice));
            let rec = self.vcpu.run();
            #[cfg(feature = "bench-inline-exits")] // splitvisor bench exits only
            let rec = kernel_stub::bench_inline::answer_all(rec, |r, resume, f| {
                count_exit(sh.stats, ExitClass::of(r));
                self.vcpu.apply(resume, f, None);
                self.vcpu.run()
            });
            if let Some(why) = self.vcpu.entry_failure(&rec) {
                count_exit(sh.stats, ExitClass::of(&rec));
                return Err(Stop::EntryFailed {
                    why,
                    rip: rec.regs.rip,
                }
                .into());
            }
            // Decoded once: the pause check, the counters and the routing
            // each decoded it again before.
            let kind = ExitKind::of(&rec);
            if kind == ExitKind::Pause {
                // The scheduler's own exit: the deferred servers run now.
                self.yields += 1;
                continue;
            }
            let class = ExitClass::of_kind(kind);
            count_exit(sh.stats, class);
            if class == ExitClass::HostInterrupt {
                let lines = sh.timer.fired(sh.irqs);
                self.note_irqs(lines, sh.elsewhere);
            }
            let to = self.route(kind, class, &rec);
            return self.deliver(frame, to, &rec);
        }
    }

    /// Every task with a VCPU waits for an exit: the guest can be entered.
    fn handlers_ready(&self) -> bool {
        self.guest
            && self
                .live()
                .iter()
                .flatten()
                .all(|t| t.vcpu_page.is_none() || t.state == State::WaitExit)
    }

    /// The task to run now, if any, and the result of its pending system
    /// call: one not started yet, one a reply made ready, one whose
    /// notification word is not zero (the word, now taken), one whose
    /// `ReplyRecv` timeout passed.
    ///
    /// The guest before device work: a device server signalled since the
    /// guest was last entered (a doorbell) waits for the guest's next
    /// exit -- a PAUSE, a halt, the exit deadline, any exit -- unless the
    /// guest cannot run now. Exit handlers (VCPU tasks) and IRQ-woken
    /// drivers are never deferred: the mmu-server resyncs before the
    /// guest runs, and a driver's device waits for it.
    fn pick_task(&mut self) -> Option<(usize, u64)> {
        // One pass finds the first task not started and the first ready
        // one, and whether a waiting task has notes or a timeout at all:
        // on most exits none has, and the scans below are skipped.
        let (mut not_started, mut ready) = (None, None);
        let (mut noted, mut timed) = (false, false);
        for (i, t) in self.live().iter().enumerate() {
            match t.as_ref().map(|t| (t.state, t)) {
                Some((State::NotStarted, _)) => _ = not_started.get_or_insert(i),
                Some((State::Ready, _)) => _ = ready.get_or_insert(i),
                Some((State::WaitRecv, t)) => {
                    noted |= t.notes.pending();
                    timed |= t.wake.at().is_some();
                }
                _ => {}
            }
        }
        if let Some(i) = not_started {
            return Some((i, 0));
        }
        if let Some(i) = ready {
            return Some((i, self.task(i).frame.rax));
        }
        if !noted && !timed {
            return None;
        }
        let guest_can_run = self.paging_set && self.handlers_ready();
        let notified = self.live().iter().position(|t| {
            t.as_ref().is_some_and(|t| {
                t.state == State::WaitRecv
                    && t.notes.pending()
                    && !(guest_can_run
                        && t.vcpu_page.is_none()
                        && t.signalled_since_entry
                        && !t.notes.has_irq())
            })
        });
        if let Some(i) = notified {
            return Some((i, self.task_mut(i).notes.take().unwrap_or(0)));
        }
        let now = cpu::rdtsc();
        let due = self.live().iter().position(|t| {
            t.as_ref()
                .is_some_and(|t| t.state == State::WaitRecv && t.wake.due(now))
        });
        let i = due?;
        self.task_mut(i).wake = WakeAt::default();
        Some((i, RECV_TIMEOUT))
    }

    /// The earliest `ReplyRecv` timeout of a waiting task.
    fn earliest_wake(&self) -> Option<u64> {
        self.live()
            .iter()
            .flatten()
            .filter(|t| t.state == State::WaitRecv)
            .fold(None, |e, t| WakeAt::earliest(e, t.wake.at()))
    }

    /// The IRQ lines its waiting tasks own.
    fn waiting_irqs(&self) -> u16 {
        self.live()
            .iter()
            .flatten()
            .filter(|t| t.state == State::WaitRecv)
            .fold(0, |m, t| m | t.rights.irqs)
    }

    /// Writes `rec` into the VCPU page of the task that receives `class`
    /// and resumes it. Under shadow paging every task but the shadow MMU's
    /// sees the guest's own control registers, which that task keeps in its page.
    /// (The record goes by reference: each copy of its 280 bytes costs
    /// about 70 instructions, and only the VCPU page needs one.)
    fn deliver(
        &mut self,
        frame: &mut TrapFrame,
        class: ExitClasses,
        rec: &ExitRecord,
    ) -> SysResult {
        let Some(handler) = self.handler(class) else {
            return Err(Stop::NoServer {
                class: ExitClass::of(rec).name(),
                code: rec.exit_code,
                rip: rec.regs.rip,
            }
            .into());
        };
        if self.task(handler).rights.install {
            self.mmu_exit = Some((class, *rec));
        }
        if !self.shadow {
            return self.hand(frame, handler, rec);
        }
        // The hardware CR3 is the shadow root's host-physical address,
        // which no server may learn: every task sees the guest's own.
        let c = self.guest_control().unwrap_or_default();
        let mut seen = *rec;
        seen.cr3 = c.cr3;
        if class != ExitClasses::SHADOW_MMU {
            (seen.cr0, seen.cr4, seen.efer) = (c.cr0, c.cr4, c.efer);
        }
        self.hand(frame, handler, &seen)
    }

    /// Writes `rec` into the VCPU page of task `to` and resumes it.
    fn hand(&mut self, frame: &mut TrapFrame, to: usize, rec: &ExitRecord) -> SysResult {
        let page = self.task(to).vcpu_page.ok_or(Stop::Deadlock)?;
        // SAFETY: the VCPU page is a frame the stub owns, identity-mapped.
        unsafe { core::ptr::write_volatile(&raw mut (*vcpu_page(page)).exit, *rec) };
        self.switch(frame, to, 0);
        Ok(Next::Switched)
    }

    /// The guest's control registers as the shadow MMU's task publishes them.
    fn guest_control(&self) -> Option<ipc_proto::GuestControl> {
        let page = self
            .handler(ExitClasses::SHADOW_MMU)
            .and_then(|i| self.task(i).vcpu_page)?;
        // SAFETY: the VCPU page is a frame the stub owns, identity-mapped.
        Some(unsafe { core::ptr::read_volatile(&raw const (*vcpu_page(page)).guest_control) })
    }

    /// The routing class of an exit (`Rights::exits` says who gets it).
    fn route(&self, kind: ExitKind, class: ExitClass, rec: &ExitRecord) -> ExitClasses {
        if self.shadow && arch::is_shadow_mmu_exit(kind, rec) {
            return ExitClasses::SHADOW_MMU;
        }
        match class {
            ExitClass::Ioio => ExitClasses::IOIO,
            ExitClass::Hlt => ExitClasses::HLT,
            ExitClass::Cpuid => ExitClasses::CPUID,
            ExitClass::Msr => ExitClasses::MSR,
            ExitClass::Npf => ExitClasses::NPF,
            ExitClass::Exception => ExitClasses::EXCEPTION,
            ExitClass::Shutdown => ExitClasses::SHUTDOWN,
            ExitClass::Invalid => ExitClasses::INVALID,
            ExitClass::HostInterrupt => ExitClasses::HOST_INTERRUPT,
            ExitClass::Other => ExitClasses::OTHER,
        }
    }

    /// `VcpuRun`: check and apply the caller's resume, then block until the
    /// next exit this caller handles.
    fn vcpu_run(&mut self, frame: &mut TrapFrame, sh: &mut Shared) -> SysResult {
        let cur = self.current;
        let page = self.task(cur).vcpu_page.ok_or(ErrorCode::NotPermitted)?;
        // SAFETY: the VCPU page is ours and identity-mapped; the copy is
        // taken once, so the server cannot change it after the check.
        let resume = unsafe { core::ptr::read_volatile(&raw const (*vcpu_page(page)).resume) };
        // Before a task's first entry, a resume with ABI version 0 means
        // "nothing to set"; after a notification exit, so does an empty one.
        let fresh = !self.task(cur).ran_vcpu;
        let noted = core::mem::take(&mut self.task_mut(cur).noted);
        let nothing = noted && resume.flags == 0 && resume.abi_version == ABI_VERSION;
        if !nothing && (!fresh || resume.abi_version != 0) {
            self.apply_resume(cur, &resume, sh)?;
            self.task_mut(cur).entered_since_resume = false;
        }
        let t = self.task_mut(cur);
        if !fresh {
            t.restarts_in_a_row = 0;
        }
        t.ran_vcpu = true;
        t.state = State::WaitExit;
        // A restarted mmu-server, its tables built again, gets the exit its
        // last instance faulted on; otherwise that exit is answered.
        let pending = if t.rights.install {
            self.mmu_exit.take()
        } else {
            None
        };
        match pending.filter(|_| fresh) {
            Some((class, rec)) => self.deliver(frame, class, &rec),
            None => self.schedule(frame, sh),
        }
    }

    /// Checks `resume` from task `from` and applies it to the VCPU.
    fn apply_resume(
        &mut self,
        from: usize,
        resume: &ipc_proto::Resume,
        sh: &mut Shared,
    ) -> Result<(), ErrorCode> {
        let mut refused = |e: ErrorCode| {
            sh.stats.resumes_refused += 1;
            say!(
                "refused a resume from the {}: {}",
                self.task(from).name,
                e.describe()
            );
            e
        };
        let tables = &sh.tables;
        let lookup = |h| tables.get(h);
        let flags =
            kernel_stub::resume::validate(resume, &self.vcpu.mode(), &self.paging_rules, |h| {
                lookup(h).map(|(_, level)| level)
            })
            .map_err(&mut refused)?;
        let mut root = None;
        // Under nested paging SET_PAGING only loads the guest's CR4 (the
        // vmm-server's answer to a MOV to CR4): no root, any VCPU task.
        let shadow_paging = self.shadow && flags.contains(ResumeFlags::SET_PAGING);
        if shadow_paging || flags.contains(ResumeFlags::SET_NESTED_ROOT) {
            if !self.task(from).rights.install {
                return Err(refused(ErrorCode::NotPermitted));
            }
            root = lookup(resume.paging.root).map(|(frame, _)| frame);
            let pae = resume.paging.efer & kernel_stub::resume::efer::LME == 0;
            let pae_root = root.filter(|_| shadow_paging && pae);
            if let Some(frame) = pae_root {
                let pdptes = frame as *mut [u64; 4];
                // SAFETY: a live shadow frame of the stub, identity-mapped.
                let loaded = unsafe { core::ptr::read_volatile(pdptes) };
                let Some(clean) = kernel_stub::install::pae_pdptes_reloaded(loaded) else {
                    return Err(refused(ErrorCode::ResumeBadPaging));
                };
                // SAFETY: as above; only A bits the CPU set are cleared.
                unsafe { core::ptr::write_volatile(pdptes, clean) };
            }
            if shadow_paging {
                self.pae_root = pae_root;
            }
            self.paging_set = true;
        }
        if flags.contains(ResumeFlags::SET_EXIT_DEADLINE) {
            self.exit_at = resume.exit_deadline;
        }
        // XCR0 is not switched by VMRUN or VM entry: the guest's stays.
        if flags.contains(ResumeFlags::SET_XCR0) {
            cpu::xsetbv(resume.xcr0);
        }
        self.vcpu.apply(resume, flags, root);
        if self.shadow
            && self
                .task(from)
                .rights
                .exits
                .contains(ExitClasses::SHADOW_MMU)
        {
            if let Some(c) = self.guest_control() {
                self.vcpu.show_guest(c.cr0, c.cr4);
                self.mmu_control = c;
            }
        }
        Ok(())
    }

    /// `VcpuForward`: the mmu-server found an access outside guest RAM;
    /// apply its resume (paging state only matters), hand its rewritten
    /// exit record to the vmm-server, and wait like `VcpuRun`.
    fn vcpu_forward(&mut self, frame: &mut TrapFrame, sh: &mut Shared) -> SysResult {
        self.require(|r| r.install)?;
        let cur = self.current;
        let page = self.task(cur).vcpu_page.ok_or(ErrorCode::NotPermitted)?;
        // SAFETY: the VCPU page is ours and identity-mapped; copied once.
        let (rec, resume) = unsafe {
            (
                core::ptr::read_volatile(&raw const (*vcpu_page(page)).exit),
                core::ptr::read_volatile(&raw const (*vcpu_page(page)).resume),
            )
        };
        if resume.flags & ResumeFlags::SET_PAGING.bits() != 0 {
            let paging = ResumeFlags::SET_PAGING | ResumeFlags::FLUSH_NON_GLOBAL;
            let only_paging = ipc_proto::Resume {
                flags: resume.flags & paging.bits(),
                ..resume
            };
            self.apply_resume(cur, &only_paging, sh)?;
        }
        self.task_mut(cur).state = State::WaitExit;
        self.mmu_exit = None;
        self.deliver(frame, ExitClasses::NPF, &rec)
    }

    /// Channel `ch` of a `Call` or `ReplyRecv`, with its index.
    fn channel(&self, ch: u64) -> Result<(usize, &Channel), ErrorCode> {
        let n = usize::try_from(ch).map_err(|_| ErrorCode::NotPermitted)?;
        let c = self
            .channels
            .get(n)
            .and_then(Option::as_ref)
            .ok_or(ErrorCode::NotPermitted)?;
        Ok((n, c))
    }

    /// `Call`: hand the request in the channel page to the channel's server.
    fn call(&mut self, frame: &mut TrapFrame, sh: &mut Shared, ch: u64) -> SysResult {
        let cur = self.current;
        let (ch, c) = self.channel(ch)?;
        if c.client != cur {
            return Err(ErrorCode::NotPermitted.into());
        }
        if c.far.is_some() {
            return Err(SysError::Far(FarOp::Call(ch)));
        }
        let server = c.server;
        if self.task(server).state != State::WaitRecv {
            return Err(ErrorCode::NotReady.into());
        }
        sh.stats.channel_calls[ch] += 1;
        self.task_mut(cur).state = State::WaitReply(ch);
        self.switch(frame, server, ch as u64);
        Ok(Next::Switched)
    }

    /// `ReplyRecv`: answer the pending call on `ch`, if any, and wait for
    /// the next call or a notification.
    fn reply_recv(
        &mut self,
        frame: &mut TrapFrame,
        sh: &mut Shared,
        ch: u64,
        timeout: u64,
    ) -> SysResult {
        let cur = self.current;
        let reply_to = if ch == NO_REPLY {
            // Nobody could ever wake a task that is on no channel and owns
            // no IRQ: refuse rather than deadlock the VM.
            let on_channel = self
                .channels
                .iter()
                .flatten()
                .any(|c| c.client == cur || c.server == cur);
            if !on_channel && self.task(cur).rights.irqs == 0 {
                return Err(ErrorCode::NotPermitted.into());
            }
            None
        } else {
            let (n, c) = self.channel(ch)?;
            if c.server != cur {
                return Err(ErrorCode::NotPermitted.into());
            }
            Some((n, c.client, c.far.is_some()))
        };
        let t = self.task_mut(cur);
        t.state = State::WaitRecv;
        t.wake = WakeAt::after(cpu::rdtsc(), timeout);
        if let Some((n, client, far)) = reply_to {
            if far {
                return Err(SysError::Far(FarOp::Reply(n)));
            }
            if self.task(client).state == State::WaitReply(n) {
                self.task_mut(cur).restarts_in_a_row = 0;
                self.switch(frame, client, 0);
                return Ok(Next::Switched);
            }
        }
        self.wait(frame, sh)
    }

    /// The current task, in `ReplyRecv`, waits: its word at once if it
    /// is not zero, else the next task or the guest runs.
    fn wait(&mut self, frame: &mut TrapFrame, sh: &mut Shared) -> SysResult {
        let cur = self.current;
        if let Some(bits) = self.task_mut(cur).notes.take() {
            self.task_mut(cur).state = State::Running;
            return Ok(Next::Return(bits));
        }
        self.schedule(frame, sh)
    }

    /// `Signal`: OR `bits` into the other end of channel `ch`.
    fn signal(&mut self, ch: u64, bits: u64) -> SysResult {
        let cur = self.current;
        let (n, c) = self.channel(ch)?;
        let other = match (c.client == cur, c.server == cur) {
            (true, _) => c.server,
            (_, true) => c.client,
            _ => return Err(ErrorCode::NotPermitted.into()),
        };
        if c.far.is_some() {
            return Err(SysError::Far(FarOp::Signal(n, bits)));
        }
        self.task_mut(other).signalled(bits)?;
        Ok(Next::Return(0))
    }

    /// `IrqAck`: unmask a line the caller owns.
    fn irq_ack(&mut self, line: u64) -> Result<u64, ErrorCode> {
        let line = u8::try_from(line)
            .ok()
            .filter(|l| *l < 16)
            .ok_or(ErrorCode::NotPermitted)?;
        self.require(|r| r.irqs & (1 << line) != 0)?;
        deadline::set_masked(line, false);
        Ok(0)
    }

    /// The running task faulted in ring 3 (`frame` holds the fault), or
    /// hung (the watchdog: `frame` holds where it was). The
    /// vmm-server stops the VM; another task is restarted from its image in
    /// its own address space (its writable segments copied again, its stack
    /// zeroed, its notification word cleared, its IRQ lines unmasked), and
    /// a caller blocked in `Call` on it gets `ServerRestarted`. The
    /// mmu-server's tables are a cache: every handle it held is freed and
    /// the guest is not entered until its next instance names a root; that
    /// instance gets the exit this one was handling again.
    fn restart(&mut self, frame: &mut TrapFrame, cause: Cause, sh: &mut Shared) -> SysResult {
        let cur = self.current;
        let stop = |vm: &Self, why| Stop::Faulted {
            name: vm.task(cur).name.clone(),
            cause,
            why,
        };
        let t = self.task(cur);
        let mmu = t.rights.install;
        if t.rights.vcpu && !mmu {
            return Err(stop(self, "").into());
        }
        if t.restarts_in_a_row >= MAX_RESTARTS {
            return Err(stop(self, " (restarted 8 times in a row, answering nothing)").into());
        }
        if t.generation >= MAX_RESTARTS_TOTAL {
            return Err(stop(self, " (restarted 1000 times)").into());
        }
        let entry = blob(payload(), t.elf)
            .and_then(|file| task::reload(file, t.root).ok())
            .ok_or_else(|| stop(self, " (it could not be restarted)"))?;
        say!(
            "{} restarted (generation {}): {cause}",
            t.name,
            t.generation + 1
        );
        let irqs = t.rights.irqs;
        sh.stats.restarts += 1;
        if mmu {
            self.forget_tables(cur, sh);
        }
        let t = self.task_mut(cur);
        t.restarts_in_a_row += 1;
        t.generation += 1;
        t.ran_vcpu = false;
        t.notes = Notifications::default();
        t.state = State::NotStarted;
        t.frame = TrapFrame::user_start(entry, STACK_TOP);
        // What `schedule` saves as the task's frame: its fresh start.
        *frame = t.frame;
        for line in (0..16u8).filter(|l| irqs & (1 << l) != 0) {
            deadline::set_masked(line, false);
        }
        for n in 0..MAX_CHANNELS {
            let Some((client, far)) = self.channels[n]
                .as_ref()
                .filter(|c| c.server == cur)
                .map(|c| (c.client, c.far.is_some()))
            else {
                continue;
            };
            if far {
                self.far_restarted |= 1 << n;
                continue;
            }
            let c = self.task_mut(client);
            if c.state == State::WaitReply(n) {
                c.frame.rax = ErrorCode::ServerRestarted.to_return_value();
                c.state = State::Ready;
            }
        }
        self.schedule(frame, sh)
    }

    /// A host IRQ `line` interrupted the running server (`frame`): ended,
    /// noted in its owner's word (the line masked) as after a guest exit,
    /// and the server goes on, unless the watchdog says its budget is
    /// spent: then it is restarted like a faulting one (the vmm-server's
    /// hang stops the VM).
    fn interrupt(&mut self, frame: &mut TrapFrame, line: u8, sh: &mut Shared) -> SysResult {
        sh.timer.end_of_interrupt(line);
        let granted = sh.irqs;
        let mut lines = sh.timer.fired(granted);
        if granted & (1 << line) != 0 {
            deadline::set_masked(line, true);
            lines |= 1 << line;
        }
        self.note_irqs(lines, sh.elsewhere);
        if let Some(ms) = self.watch.expired(cpu::rdtsc(), self.tsc_hz) {
            let rip = frame.rip;
            let outcome = self.restart(frame, Cause::Watchdog { ms, rip }, sh);
            self.enter_ring3(true, sh.timer);
            return outcome;
        }
        self.enter_ring3(false, sh.timer);
        Ok(Next::Switched)
    }

    /// The stub returns to ring 3: the timer counts (towards the
    /// watchdog's bite at the latest), and with `fresh` the server's run
    /// starts now.
    fn enter_ring3(&mut self, fresh: bool, timer: &mut ExitDeadline) {
        let now = cpu::rdtsc();
        if fresh {
            self.watch.ran(now);
        }
        timer.arm_for_server(now, self.watch.at());
    }

    /// Every host IRQ line a task owns.
    fn granted_irqs(&self) -> u16 {
        self.live()
            .iter()
            .flatten()
            .fold(0, |m, t| m | t.rights.irqs)
    }

    /// The mmu-server `task` restarts: every table it held is freed (its
    /// handles refused from now on), the guest is not entered before the
    /// next instance names a root, and that instance finds in its VCPU
    /// page the guest's control registers of the last resume the stub
    /// accepted, which it checks before it builds tables for them.
    fn forget_tables(&mut self, task: usize, sh: &mut Shared) {
        sh.tables.free_all();
        self.paging_set = false;
        self.pae_root = None;
        self.vcpu.flush_tlb();
        if let Some(page) = self.task(task).vcpu_page {
            // SAFETY: the VCPU page is a frame the stub owns, identity-mapped.
            unsafe {
                core::ptr::write_volatile(
                    &raw mut (*vcpu_page(page)).guest_control,
                    self.mmu_control,
                )
            };
        }
    }

    /// Host IRQ lines that fired while this VM ran: its own noted, the
    /// others' left in `elsewhere` for their VMs (`Kernel::settle`).
    fn note_irqs(&mut self, lines: u16, elsewhere: &mut u16) {
        let mine = self.granted_irqs();
        self.notify_irqs(lines & mine);
        *elsewhere |= lines & !mine;
    }

    /// Host IRQ lines that fired (masked now): set each in its owner's word.
    fn notify_irqs(&mut self, lines: u16) {
        for line in (0..16u8).filter(|l| lines & (1 << l) != 0) {
            if let Some(owner) = self.find(|r| r.irqs & (1 << line) != 0) {
                self.task_mut(owner).notes.irq(line);
            }
        }
    }

    /// The current task's rights must pass `f`.
    fn require(&self, f: impl Fn(&Rights) -> bool) -> Result<(), ErrorCode> {
        if f(&self.task(self.current).rights) {
            Ok(())
        } else {
            Err(ErrorCode::NotPermitted)
        }
    }

    fn shadow_alloc(&mut self, sh: &mut Shared, level: u64) -> Result<u64, ErrorCode> {
        self.require(|r| r.install)?;
        let level = u8::try_from(level).map_err(|_| ErrorCode::BadLevel)?;
        let (handle, frame) = sh
            .tables
            .alloc(level, || memory::alloc_frame().ok())
            .map_err(|e| match e {
                AllocError::BadLevel => ErrorCode::BadLevel,
                AllocError::NoHandles | AllocError::OutOfMemory => ErrorCode::OutOfMemory,
            })?;
        // SAFETY: a shadow frame the stub owns; a reused one holds old entries.
        unsafe {
            core::ptr::write_bytes(frame as *mut u8, 0, kernel_stub::usize_from(memory::PAGE))
        };
        Ok(u64::from(handle))
    }

    fn shadow_free(&mut self, sh: &mut Shared, handle: u64) -> Result<u64, ErrorCode> {
        self.require(|r| r.install)?;
        let handle = u32::try_from(handle).map_err(|_| ErrorCode::NotPermitted)?;
        sh.tables
            .free(handle)
            .map_err(|_| ErrorCode::NotPermitted)?;
        Ok(0)
    }

    /// `MmuInstall`: check and write the batch in the install page.
    fn mmu_install(&mut self, sh: &mut Shared) -> Result<u64, ErrorCode> {
        self.require(|r| r.install)?;
        let page = self
            .task(self.current)
            .install_page
            .ok_or(ErrorCode::NotPermitted)? as *mut InstallPage;
        let ram = self.ram;
        // SAFETY: the install page is a frame the stub owns; every field
        // is read once (volatile) before it is checked.
        let count = unsafe { core::ptr::read_volatile(&raw const (*page).count) } as usize;
        let Shared { tables, stats, .. } = sh;
        let mut refuse = |index: usize, e: ipc_proto::mmu::InstallError| {
            stats.installs_refused += 1;
            // `index` < INSTALL_BATCH_MAX: never the fallback.
            let index = u32::try_from(index).unwrap_or(u32::MAX);
            // SAFETY: as above.
            unsafe {
                core::ptr::write_volatile(&raw mut (*page).count, index);
                core::ptr::write_volatile(&raw mut (*page).reserved, e as u32);
            }
            ErrorCode::InstallRefused
        };
        if count > INSTALL_BATCH_MAX {
            return Err(refuse(0, ipc_proto::mmu::InstallError::BatchTooLarge));
        }
        for i in 0..count {
            // SAFETY: as above; `i` < INSTALL_BATCH_MAX.
            let ins = unsafe { core::ptr::read_volatile(&raw const (*page).entries[i]) };
            let (table, index, entry) = tables.check(&ins, ram).map_err(|e| refuse(i, e))?;
            let pdpte = index < 4 && Some(table) == self.pae_root;
            if pdpte && !kernel_stub::install::pae_pdptes_ok(&[entry]) {
                return Err(refuse(i, ipc_proto::mmu::InstallError::ReservedPdpteBits));
            }
            // SAFETY: `table` is a live shadow frame of the stub and `index` < 512.
            unsafe { core::ptr::write_volatile((table as *mut u64).add(index), entry) };
        }
        stats.installs += count as u64;
        Ok(count as u64)
    }

    fn mmu_flush(&mut self) -> Result<u64, ErrorCode> {
        self.require(|r| r.install)?;
        self.vcpu.flush_tlb();
        Ok(0)
    }

    /// `StatsRead`: copy the counters into the caller's VCPU page.
    fn stats_read(&self, sh: &Shared) -> Result<u64, ErrorCode> {
        let page = self
            .task(self.current)
            .vcpu_page
            .ok_or(ErrorCode::NotPermitted)?;
        let mmu = self.mmu_stats().unwrap_or_default();
        // SAFETY: the VCPU page is a frame the stub owns, identity-mapped.
        unsafe {
            core::ptr::write_volatile(&raw mut (*vcpu_page(page)).stats, *sh.stats);
            core::ptr::write_volatile(&raw mut (*vcpu_page(page)).mmu, mmu);
        }
        Ok(0)
    }

    /// The counters the page-table task keeps in its VCPU page, if there is one.
    fn mmu_stats(&self) -> Option<MmuStats> {
        let page = self.task(self.find(|r| r.install)?).vcpu_page?;
        // SAFETY: the VCPU page is a frame the stub owns, identity-mapped.
        Some(unsafe { core::ptr::read_volatile(&raw const (*vcpu_page(page)).mmu) })
    }

    /// One system call of the current task: checks its rights and runs it.
    fn syscall(&mut self, frame: &mut TrapFrame, sh: &mut Shared) -> SysResult {
        let (a0, a1) = (frame.rdi, frame.rsi);
        let root = self.task(self.current).root;
        match Syscall::from_raw(frame.rax) {
            Some(Syscall::VcpuRun) => self.vcpu_run(frame, sh),
            Some(Syscall::VcpuForward) => self.vcpu_forward(frame, sh),
            Some(Syscall::Call) => self.call(frame, sh, a0),
            Some(Syscall::ReplyRecv) => self.reply_recv(frame, sh, a0, a1),
            Some(Syscall::ConsoleWrite) => {
                self.require(|r| r.console)?;
                ret(syscall::console_write(root, a0, a1))
            }
            Some(Syscall::ConsoleRead) => {
                self.require(|r| r.console)?;
                ret(syscall::console_read(root, a0, a1))
            }
            Some(Syscall::StatsRead) => ret(self.stats_read(sh)),
            Some(Syscall::Signal) => self.signal(a0, a1),
            Some(Syscall::IrqAck) => ret(self.irq_ack(a0)),
            Some(Syscall::ShadowAlloc) => ret(self.shadow_alloc(sh, a0)),
            Some(Syscall::ShadowFree) => ret(self.shadow_free(sh, a0)),
            Some(Syscall::MmuInstall) => ret(self.mmu_install(sh)),
            Some(Syscall::MmuFlush) => ret(self.mmu_flush()),
            Some(Syscall::VmStop) => {
                self.require(|r| r.vcpu)?;
                Err(u8::try_from(a0)
                    .map_or(Stop::BadStatus(a0), Stop::Stopped)
                    .into())
            }
            Some(Syscall::VmFail) => Err(Stop::GaveUp(self.task(self.current).name.clone()).into()),
            None => Err(ErrorCode::UnknownSyscall.into()),
        }
    }
}

impl Kernel {
    /// The current VM and what its calls reach besides it.
    fn parts(&mut self) -> Option<(&mut Vm, Shared<'_>)> {
        let i = self.current;
        let several = self.vms.iter().flatten().count() > 1;
        let vm = self.vms[i].as_mut()?;
        let sh = Shared {
            tables: &mut self.tables[i],
            stats: &mut self.stats[i],
            timer: &mut self.timer,
            slice_end: several.then_some(self.slice_end),
            irqs: self.irqs,
            elsewhere: &mut self.irqs_elsewhere,
        };
        Some((vm, sh))
    }

    /// A VM's `outcome`, with a yield turned into the next VM's run, and
    /// IRQs that fired for other VMs noted for their owners (who run at
    /// their turn).
    fn settle(&mut self, frame: &mut TrapFrame, mut outcome: SysResult) -> SysResult {
        if let Err(SysError::Far(op)) = outcome {
            outcome = self.far(frame, op);
        }
        self.tell_far_clients();
        let yielded = matches!(outcome, Err(SysError::Yield));
        loop {
            let lines = core::mem::take(&mut self.irqs_elsewhere);
            // (Most calls: no line fired, and no VM is walked.)
            if lines != 0 {
                for vm in self.vms.iter_mut().flatten() {
                    vm.notify_irqs(lines & vm.granted_irqs());
                }
            }
            let Err(SysError::Yield) = outcome else {
                break;
            };
            outcome = self.next_vm(frame);
        }
        if let (true, Some((vm, sh))) = (yielded, self.parts()) {
            vm.enter_ring3(true, sh.timer);
        }
        outcome
    }

    /// Slot `i` runs next: its VCPU loaded, its prefix on the console.
    fn enter(&mut self, i: usize) {
        if i != self.current {
            if let Some(vm) = self.vms[i].as_mut().filter(|vm| vm.guest) {
                vm.vcpu.load();
            }
        }
        self.current = i;
        if self.prefixed {
            crate::console::set_vm(u8::try_from(i).ok());
        }
    }

    /// `op`, a call of the current slot's running task on a channel
    /// across VMs, reaches the task at its other end, in the other slot:
    /// a `Call` runs it (it must wait in `ReplyRecv`), a reply runs the
    /// caller if it waits for one (else the replier waits as usual), a
    /// `Signal` sets bits in its word. The other slot's task sees its own
    /// channel number, and only its own channel pages; a slot that ended
    /// answers `NotReady`.
    fn far(&mut self, frame: &mut TrapFrame, op: FarOp) -> SysResult {
        let here = self.current;
        let (FarOp::Call(n) | FarOp::Reply(n) | FarOp::Signal(n, _)) = op;
        let far = self.vms[here]
            .as_ref()
            .and_then(|vm| vm.channels[n].as_ref()?.far);
        let (there, m) = far
            .filter(|&(j, _)| j != here)
            .ok_or(ErrorCode::NotPermitted)?;
        let end = self.vms[there].as_ref().and_then(|vm| {
            let c = vm.channels[m].as_ref()?;
            let task = if c.client < MAX_TASKS {
                c.client
            } else {
                c.server
            };
            Some((task, vm.tasks.get(task)?.as_ref()?.state))
        });
        let wait = |k: &mut Self, frame: &mut TrapFrame| {
            let (vm, mut sh) = k.parts().ok_or(ErrorCode::NotReady)?;
            vm.wait(frame, &mut sh)
        };
        let Some((task, state)) = end else {
            return match op {
                FarOp::Reply(_) => wait(self, frame),
                _ => Err(ErrorCode::NotReady.into()),
            };
        };
        let call = match op {
            FarOp::Signal(_, bits) => {
                let other = self.vms[there].as_mut().ok_or(ErrorCode::NotReady)?;
                other.task_mut(task).signalled(bits)?;
                return Ok(Next::Return(0));
            }
            FarOp::Call(_) if state != State::WaitRecv => return Err(ErrorCode::NotReady.into()),
            FarOp::Reply(_) if state != State::WaitReply(m) => return wait(self, frame),
            FarOp::Call(_) => true,
            FarOp::Reply(_) => false,
        };
        let vm = self.vms[here].as_mut().ok_or(ErrorCode::NotReady)?;
        let t = vm.task_mut(vm.current);
        if call {
            t.state = State::WaitReply(n);
            self.stats[here].channel_calls[n] += 1;
        } else {
            t.restarts_in_a_row = 0;
        }
        vm.park(frame);
        self.enter(there);
        let (vm, sh) = self.parts().ok_or(ErrorCode::NotReady)?;
        vm.switch(frame, task, if call { m as u64 } else { 0 });
        vm.enter_ring3(true, sh.timer);
        Ok(Next::Switched)
    }

    /// Callers across VMs blocked on a server that restarted (or whose VM
    /// ended: every bit set) get `ServerRestarted`, as callers in its VM do.
    fn tell_far_clients(&mut self) {
        for i in 0..SLOTS {
            let Some(vm) = self.vms[i].as_mut() else {
                continue;
            };
            let bits = core::mem::take(&mut vm.far_restarted);
            // (Most calls: no bit, and no walk over the 16 channels.)
            if bits == 0 {
                continue;
            }
            for n in (0..MAX_CHANNELS).filter(|n| bits & (1 << n) != 0) {
                let far = self.vms[i]
                    .as_ref()
                    .and_then(|vm| vm.channels[n].as_ref()?.far);
                let Some((j, m)) = far else {
                    continue;
                };
                let Some(other) = self.vms[j].as_mut() else {
                    continue;
                };
                let client = other.channels[m].as_ref().map_or(usize::MAX, |c| c.client);
                if let Some(c) = other.tasks.get_mut(client).and_then(Option::as_mut) {
                    if c.state == State::WaitReply(m) {
                        c.frame.rax = ErrorCode::ServerRestarted.to_return_value();
                        c.state = State::Ready;
                    }
                }
            }
        }
    }

    /// Round-robin: the next VM (after the current one, which comes last)
    /// that has a task or its guest to run gets a slice; when none has,
    /// the stub idles until an IRQ of a waiting owner or the earliest
    /// timeout of any VM.
    fn next_vm(&mut self, frame: &mut TrapFrame) -> SysResult {
        if let Some(vm) = self.vms[self.current].as_mut() {
            vm.park(frame);
        }
        loop {
            let start = self.current;
            let next = (1..=SLOTS)
                .map(|d| (start + d) % SLOTS)
                .find(|&i| self.vms[i].as_ref().is_some_and(Vm::can_go));
            if let Some(i) = next {
                self.enter(i);
                let hz = self.vms[i].as_ref().map_or(0, |vm| vm.tsc_hz);
                self.slice_end = cpu::rdtsc().saturating_add(hz / SLICES_PER_S);
                let (vm, mut sh) = self.parts().ok_or(Stop::Deadlock)?;
                return vm.schedule(frame, &mut sh);
            }
            self.idle()?;
        }
    }

    /// No VM can go: poll the 8259s for an IRQ line a waiting task owns
    /// and the TSC for the earliest timeout (the stub takes no interrupt
    /// through its IDT). When neither can come, nothing can ever wake
    /// anyone: the current VM's deadlock report.
    fn idle(&mut self) -> Result<(), Stop> {
        if let Some(vm) = self.vms[self.current].as_mut() {
            vm.idles += 1;
        }
        #[cfg(feature = "bench-exit-parts")] // splitvisor bench exits --parts only
        let was = cpu::stamp(kernel_stub::bench_parts::Place::Idle);
        #[cfg(feature = "bench-exit-parts")]
        let _back = Restamp(was);
        loop {
            let vms = || self.vms.iter().flatten();
            let lines = if self.timer.has_lines() {
                deadline::unmasked(vms().fold(0, |m, vm| m | vm.waiting_irqs()))
            } else {
                0
            };
            let wake = vms().fold(None, |e, vm| WakeAt::earliest(e, vm.earliest_wake()));
            if lines == 0 && wake.is_none() {
                // Every VM deadlocked: the first live one (the current
                // one may have ended) is reported, then the next.
                if self.vms[self.current].is_none() {
                    self.current = self.vms.iter().position(Option::is_some).unwrap_or(0);
                    crate::console::set_vm(u8::try_from(self.current).ok());
                }
                return Err(Stop::Deadlock);
            }
            while (lines == 0 || deadline::asking(lines) == 0)
                && wake.is_none_or(|at| at > cpu::rdtsc())
            {
                core::hint::spin_loop();
            }
            let fired = self.timer.fired(self.irqs);
            for vm in self.vms.iter_mut().flatten() {
                vm.notify_irqs(fired);
            }
            if self.vms.iter().flatten().any(Vm::can_go) {
                return Ok(());
            }
        }
    }
}

/// A system call from ring 3 (`int 0x80`): run it with the kernel state
/// borrowed, then set the caller's result or end the VM.
pub fn syscall(frame: &mut TrapFrame) {
    let now = cpu::rdtsc();
    let outcome = kernel().with(|k| {
        let Some((vm, mut sh)) = k.parts() else {
            return Err(ErrorCode::NotReady.into());
        };
        sh.stats.syscalls += 1;
        vm.watch.ended(vm.current, now);
        let outcome = vm.syscall(frame, &mut sh);
        // A call that returns at once (StatsRead, Signal, a
        // ReplyRecv with bits pending) does not restart the
        // server's run: only one that blocked, so a server that
        // loops on such calls is still a hung one.
        vm.enter_ring3(matches!(outcome, Ok(Next::Switched)), sh.timer);
        k.settle(frame, outcome)
    });
    finish(frame, outcome);
}

/// A host IRQ `line` while a server ran (`frame`): noted for its owner,
/// and the server goes on, or is restarted by the watchdog
/// (`Vm::interrupt`).
pub fn interrupt(frame: &mut TrapFrame, line: u64) {
    // `line` < 16: the trap entry's vector range.
    let line = u8::try_from(line & 15).unwrap_or(0);
    let outcome = kernel().with(|k| match k.parts() {
        Some((vm, mut sh)) => {
            let outcome = vm.interrupt(frame, line, &mut sh);
            k.settle(frame, outcome)
        }
        None => Err(ErrorCode::NotReady.into()),
    });
    if let Err(SysError::Code(_)) = outcome {
        fail(format_args!(
            "a host interrupt came before the VM was built"
        ));
    }
    finish(frame, outcome);
}

/// A fault in ring 3 (`frame` holds it): the task is restarted or the VM
/// stops (`Vm::fault`).
pub fn user_fault(frame: &mut TrapFrame, cr2: u64) {
    let cause = Cause::Exception {
        vector: frame.vector,
        error_code: frame.error_code,
        rip: frame.rip,
        cr2,
    };
    let outcome = kernel().with(|k| match k.parts() {
        Some((vm, mut sh)) => {
            let outcome = vm.restart(frame, cause, &mut sh);
            vm.enter_ring3(true, sh.timer);
            k.settle(frame, outcome)
        }
        None => Err(ErrorCode::NotReady.into()),
    });
    if let Err(SysError::Code(_)) = outcome {
        fail(format_args!("a server faulted before the VM was built"));
    }
    finish(frame, outcome);
}

/// After a system call or a fault: the caller's result, or the VM's end
/// (and, with several VMs, the next one's run).
fn finish(frame: &mut TrapFrame, mut outcome: SysResult) {
    loop {
        match outcome {
            Ok(Next::Return(v)) => frame.rax = v,
            Ok(Next::Switched) => {}
            Err(SysError::Code(e)) => frame.rax = e.to_return_value(),
            // `settle` ran it.
            Err(SysError::Far(_)) => frame.rax = ErrorCode::NotPermitted.to_return_value(),
            Err(SysError::Yield) => {
                outcome = kernel().with(|k| k.settle(frame, Err(SysError::Yield)));
                continue;
            }
            Err(SysError::Stop(stop)) => {
                outcome = vm_ended(frame, stop);
                continue;
            }
        }
        return;
    }
}

/// The payload the image builder appended after the stub.
fn payload() -> &'static [u8] {
    let start = boot::payload_start();
    let len = boot::image_end().saturating_sub(start);
    // SAFETY: the loader placed the whole image, payload included, in
    // identity-mapped memory, and nothing writes to it.
    unsafe { core::slice::from_raw_parts(start as *const u8, kernel_stub::usize_from(len)) }
}

/// The manifest area: one manifest per VM, back to back.
fn read_manifests(payload: &[u8]) -> Result<&[u8], &'static str> {
    let (header, rest) = PayloadHeader::read_from_prefix(payload)
        .map_err(|_| "the image has no payload after the stub")?;
    if header.magic != PAYLOAD_MAGIC {
        return Err("the image has no splitvisor payload (bad magic)");
    }
    if header.abi_version != ABI_VERSION {
        return Err("the image was built for another ABI version");
    }
    let len = header.manifest_len as usize;
    rest.get(..len)
        .filter(|_| len <= MANIFEST_MAX)
        .ok_or("the manifest is truncated or too large")
}

fn blob(payload: &[u8], b: Blob) -> Option<&[u8]> {
    payload.get(b.offset as usize..(b.offset as usize).checked_add(b.len as usize)?)
}

/// The VMs of the image, each with its index: `cannot run` if one does
/// not decode or there are more than the stub runs.
fn manifests(payload: &[u8]) -> impl Iterator<Item = (usize, Manifest)> + '_ {
    let mut rest = read_manifests(payload).unwrap_or_else(|why| cannot_run(why));
    (0..).map_while(move |i| {
        if rest.is_empty() {
            return None;
        }
        let (manifest, more) = postcard::take_from_bytes::<Manifest>(rest)
            .unwrap_or_else(|_| cannot_run("the manifest does not decode"));
        rest = more;
        // The tasks in no VM come last (`check_image_links`).
        manifest.guest.as_ref()?;
        if i == MAX_VMS {
            cannot_run("the image holds more VMs than the stub runs (4)");
        }
        Some((i, manifest))
    })
}

/// The tasks in no VM, if the image has them: after every VM.
fn no_vm_manifest(payload: &[u8]) -> Option<Manifest> {
    let mut rest = read_manifests(payload).ok()?;
    while let Ok((m, more)) = postcard::take_from_bytes::<Manifest>(rest) {
        if m.guest.is_none() {
            return Some(m);
        }
        rest = more;
    }
    None
}

/// The boot CPU: starts the others, checks where the VMs are placed, lets
/// each CPU build its own VMs in turn (its own VCPUs, host state and
/// timer), then runs its own.
pub fn start(boot: BootInfo) -> ! {
    let arch = arch::select(boot.arch).unwrap_or_else(|why| cannot_run(why));
    let payload = payload();
    let area = read_manifests(payload).unwrap_or_else(|why| cannot_run(why));
    ipc_proto::manifest::check_image_links(area).unwrap_or_else(|why| cannot_run(why));
    memory::init(boot::image_end(), boot.ram_top);
    let hz = cpu::tsc_hz();
    TSC_HZ.store(hz, Ordering::Relaxed);
    UNSAFE_SHADOW.store(boot.unsafe_shadow, Ordering::Relaxed);
    let ready = crate::smp::start_others(arch, hz);
    // The host's timer quiet before each VM's build runs probe guests of
    // its own (a firmware tick pending at each entry would end every
    // run); once, as it masks the IRQ lines a VM built before unmasked.
    deadline::init();
    let mut used = 0u8;
    let no_vm = no_vm_manifest(payload);
    for (i, m) in manifests(payload) {
        let cpu = m.guest.as_ref().map_or(0, |g| g.cpu);
        // The tasks in no VM run on cpu0, beside the VMs they link to.
        let linked = no_vm
            .iter()
            .flat_map(|n| &n.links)
            .any(|l| usize::from(l.vm) == i);
        if cpu != 0 && linked {
            cannot_run("a VM with a channel across VMs must run on cpu0 (the tasks in no VM run there; not yet across CPUs)");
        }
        if usize::from(cpu) >= MAX_CPUS || ready & (1 << cpu) == 0 {
            say!("vm{i} is placed on cpu{cpu}, which did not come up");
            cannot_run("a VM is placed on a CPU the machine does not have (run with --cpus)");
        }
        if cpu != 0 && m.tasks.iter().any(|t| t.rights.irqs != 0) {
            cannot_run("a VM that owns a host IRQ line must run on cpu0: the 8259s interrupt only the boot CPU");
        }
        used |= 1 << cpu;
    }
    LIVE.store(used.count_ones() as usize, Ordering::Relaxed);
    USED.store(used, Ordering::Relaxed);
    build_own(arch, payload);
    if let Some(manifest) = no_vm {
        // After cpu0's VMs: the links name their channel pages.
        crate::console::set_vm(u8::try_from(NO_VM).ok());
        let vm = build_no_vm(arch, &manifest, payload).unwrap_or_else(|why| cannot_run(why));
        kernel().with(|k| k.vms[NO_VM] = Some(vm));
    }
    for n in (1..MAX_CPUS).filter(|n| used & (1 << n) != 0) {
        BUILD_TURN.store(n, Ordering::Release);
        while BUILD_TURN.load(Ordering::Acquire) == n {
            core::hint::spin_loop();
        }
    }
    BUILD_TURN.store(BUILT, Ordering::Release);
    run_own(ExitDeadline::new(hz))
}

/// Another CPU, online (`smp::ap_main`): builds its VMs at its turn, then
/// runs them; one without VMs halts.
pub fn start_other(arch: Arch, lapic_hz: u64) -> ! {
    let me = cpu::id();
    loop {
        match BUILD_TURN.load(Ordering::Acquire) {
            BUILT => cpu::halt_forever(),
            n if n == me => break,
            _ => core::hint::spin_loop(),
        }
    }
    build_own(arch, payload());
    BUILD_TURN.store(0, Ordering::Release);
    while BUILD_TURN.load(Ordering::Acquire) != BUILT {
        core::hint::spin_loop();
    }
    run_own(ExitDeadline::local(
        TSC_HZ.load(Ordering::Relaxed),
        lapic_hz,
    ))
}

/// Builds the VMs placed on this CPU into its state.
fn build_own(arch: Arch, payload: &'static [u8]) {
    let me = cpu::id();
    let mut count = 0;
    for (i, manifest) in manifests(payload) {
        count = i + 1;
        if manifest.guest.as_ref().map_or(0, |g| usize::from(g.cpu)) != me {
            continue;
        }
        let several = i > 0 || manifests(payload).nth(1).is_some();
        if several {
            crate::console::set_vm(u8::try_from(i).ok());
        }
        let unsafe_shadow = UNSAFE_SHADOW.load(Ordering::Relaxed);
        let vm =
            build(arch, &manifest, payload, unsafe_shadow, i).unwrap_or_else(|why| cannot_run(why));
        let irqs = vm.granted_irqs();
        // A line's IRQ goes to the one task that owns it.
        if IRQS.fetch_or(irqs, Ordering::Relaxed) & irqs != 0 {
            cannot_run("two VMs own the same host IRQ line");
        }
        kernel().with(|k| {
            k.irqs |= irqs;
            k.vms[i] = Some(vm);
        });
    }
    kernel().with(|k| k.count = count);
}

/// Runs this CPU's first VM (the lowest-numbered) with `timer`; a CPU
/// without VMs halts.
fn run_own(timer: ExitDeadline) -> ! {
    let first = kernel().with(|k| {
        // The tasks in no VM (cpu0's) start first: they serve the VMs.
        let system = k.vms[NO_VM].is_some();
        let i = if system {
            NO_VM
        } else {
            k.vms.iter().position(Option::is_some)?
        };
        k.current = i;
        k.prefixed = k.count > 1 || system;
        crate::console::set_vm(k.prefixed.then_some(u8::try_from(i).ok()).flatten());
        let hz = k.vms[i].as_ref()?.tsc_hz;
        k.timer = timer;
        k.slice_end = cpu::rdtsc().saturating_add(hz / SLICES_PER_S);
        let (vm, sh) = k.parts()?;
        vm.parked = false;
        vm.vcpu.load();
        let t = vm.task_mut(0);
        t.state = State::Running;
        cpu::grant_ports(&[], &t.rights.ports);
        let first = (t.root, t.frame.rip);
        vm.enter_ring3(true, sh.timer);
        Some(first)
    });
    let Some((root, rip)) = first else {
        if cpu::id() == 0 && LIVE.load(Ordering::Relaxed) == 0 {
            cannot_run("the image has no VM")
        }
        cpu::halt_forever()
    };
    cpu::write_cr3(root);
    cpu::enter_user(rip, STACK_TOP)
}

/// Builds VM `index` from its manifest, every task waiting to start.
fn build(
    arch: Arch,
    manifest: &Manifest,
    payload: &[u8],
    unsafe_shadow: bool,
    index: usize,
) -> Result<Vm, &'static str> {
    let g = manifest.guest.as_ref().ok_or("a VM has no guest")?;
    if g.ram_mib == 0 || !g.ram_mib.is_multiple_of(2) || g.ram_mib > 512 {
        return Err("guest RAM must be an even number of MiB between 2 and 512");
    }
    let ram_bytes = u64::from(g.ram_mib) << 20;
    let oom = "not enough host memory for the guest RAM and the stub's tables";
    let ram = memory::alloc(ram_bytes / memory::PAGE, LARGE_PAGE).map_err(|_| oom)?;
    let copy_in = |bytes: Option<&[u8]>, gpa: u64| -> Result<(), &'static str> {
        let bytes = bytes.ok_or("a guest image lies outside the payload")?;
        let fits = gpa
            .checked_add(bytes.len() as u64)
            .is_some_and(|end| end <= ram_bytes);
        if !fits {
            return Err("a guest image does not fit in guest RAM at its load address");
        }
        // SAFETY: `ram` is ours, identity-mapped, and the range was checked to fit.
        unsafe {
            core::ptr::copy_nonoverlapping(bytes.as_ptr(), (ram + gpa) as *mut u8, bytes.len())
        };
        Ok(())
    };
    copy_in(blob(payload, g.image), g.load_gpa)?;
    for s in &g.segments {
        copy_in(blob(payload, s.blob), s.gpa)?;
    }

    let shadow = g.mmu.is_shadow();
    manifest.check_rights()?;
    if !manifest.tasks.iter().any(|t| t.rights.install) {
        return Err("the image has no mmu-server: it builds the shadow or nested page tables");
    }
    let paging = if shadow {
        Paging::Shadow
    } else {
        Paging::Nested
    };
    arch::check_paging(arch, shadow, g.entry_mode)?;
    if shadow && arch == Arch::Svm && !arch::svm::task_switch_exits().map_err(|_| oom)? {
        if !unsafe_shadow {
            return Err("this CPU does not exit on task switches although the VMCB asks it to (QEMU's TCG ignores the SVM task-switch intercept): under shadow paging a guest could load any host-physical page table; use nested paging, Bochs or hardware (the boot option unsafe_shadow runs anyway, for tests)");
        }
        say!("UNSAFE: this CPU ignores the task-switch intercept; shadow paging runs only because the boot command line says unsafe_shadow: a guest can escape");
    }
    // Every table of the VM is read in one format: EPT for a nested VMX guest.
    let ept = arch == Arch::Vmx && !shadow;
    kernel().with(|k| {
        k.tables[index].set_format(if ept {
            TableFormat::Ept
        } else {
            TableFormat::X86
        })
    });
    let entry = Entry {
        mode: g.entry_mode,
        rip: g.entry_rip,
        rax: g.entry_rax,
        rbx: g.entry_rbx,
        rsi: g.entry_rsi,
    };
    // One ASID per VM: its guest's TLB entries are its own.
    let asid = u32::try_from(index + 1).map_err(|_| oom)?;
    let vcpu = arch::create_vcpu(arch, paging, &entry, asid).map_err(|_| oom)?;
    let tsc_hz = TSC_HZ.load(Ordering::Relaxed);
    say!(
        "{}: {} paging, guest RAM {} MiB, entry {:#x}, tsc {} MHz",
        arch.name(),
        if shadow { "shadow" } else { "nested" },
        g.ram_mib,
        g.entry_rip,
        tsc_hz / 1_000_000
    );

    let info = ServerBootInfo {
        abi_version: ABI_VERSION,
        arch: arch.vcpu_arch() as u32,
        guest_ram_bytes: ram_bytes,
        guest_ram_window: GUEST_RAM_WINDOW,
        tsc_hz,
        guest_cr0: if g.entry_mode == EntryMode::Real16 {
            0x10
        } else {
            0x11
        },
        mmu_mode: g.mmu as u64,
        uart_channel: u64::from(manifest.uart_channel),
        // SVM's nested tables always have 2 MiB pages; EPT says so in an MSR.
        nested_large_pages: u64::from(arch == Arch::Svm || arch::vmx::ept_large_pages()),
        board: g.board as u64,
        guest_write_channels: u64::from(manifest.guest_write_channels),
    };
    let channels = channels(manifest, |_| memory::alloc_frame().ok())?;
    let tasks = load_tasks(manifest, payload, &info, Some((ram, ram_bytes)), &channels)?;
    if tasks[0].is_none() {
        return Err("a VM of the image has no task");
    }
    // The device servers' IRQ lines, unmasked from the start.
    for t in &manifest.tasks {
        for line in (0..16u8).filter(|l| t.rights.irqs & (1 << l) != 0) {
            deadline::set_masked(line, false);
        }
    }
    let ram = GuestRam {
        hpa_base: ram,
        bytes: ram_bytes,
    };
    Ok(Vm::new(tasks, channels, vcpu, Some((shadow, ram)), tsc_hz))
}

/// The channel table of `manifest`, each channel's page from `page(n)`.
fn channels(
    manifest: &Manifest,
    mut page: impl FnMut(usize) -> Option<u64>,
) -> Result<[Option<Channel>; MAX_CHANNELS], &'static str> {
    let mut channels: [Option<Channel>; MAX_CHANNELS] = Default::default();
    for (n, c) in manifest.channels.iter().enumerate() {
        // `check_rights` found each end in the task table, or far
        // (`FAR_END`, no task index), joined by `check_links`.
        channels[n] = Some(Channel {
            client: usize::from(c.client),
            server: usize::from(c.server),
            far: None,
            page: page(n).ok_or("not enough host memory for the channel pages")?,
        });
    }
    Ok(channels)
}

/// The tasks in no VM (a switch shared by the VMs), in slot [`NO_VM`]:
/// no guest RAM (`check_rights` refused every guest and host right),
/// a VCPU that is never entered (`Vm::guest` false), and each link's
/// channel sharing its VM's channel page, each side naming the other.
fn build_no_vm(arch: Arch, manifest: &Manifest, payload: &[u8]) -> Result<Vm, &'static str> {
    let oom = "not enough host memory for the tasks in no VM";
    let link = |n: usize| manifest.links.iter().find(|l| usize::from(l.channel) == n);
    // A link's page is its VM's channel page.
    let mut channels = channels(manifest, |n| match link(n) {
        Some(l) => kernel().with(|k| {
            let vm = k.vms[usize::from(l.vm)].as_ref()?;
            Some(vm.channels[usize::from(l.vm_channel)].as_ref()?.page)
        }),
        None => memory::alloc_frame().ok(),
    })?;
    for l in &manifest.links {
        let (vm, ch, n) = (
            usize::from(l.vm),
            usize::from(l.vm_channel),
            usize::from(l.channel),
        );
        kernel()
            .with(|k| {
                let c = k.vms[vm].as_mut()?.channels[ch].as_mut()?;
                c.far = Some((NO_VM, n));
                Some(())
            })
            .ok_or("a link names a VM or channel the image does not have")?;
        if let Some(c) = channels[n].as_mut() {
            c.far = Some((vm, ch));
        }
    }
    let tsc_hz = cpu::tsc_hz();
    let info = ServerBootInfo {
        abi_version: ABI_VERSION,
        arch: arch.vcpu_arch() as u32,
        tsc_hz,
        ..ServerBootInfo::default()
    };
    let tasks = load_tasks(manifest, payload, &info, None, &channels)?;
    let entry = Entry {
        mode: EntryMode::Flat32,
        rip: 0,
        rax: 0,
        rbx: 0,
        rsi: 0,
    };
    let asid = u32::try_from(NO_VM + 1).map_err(|_| oom)?;
    let vcpu = arch::create_vcpu(arch, Paging::Shadow, &entry, asid).map_err(|_| oom)?;
    Ok(Vm::new(tasks, channels, vcpu, None, tsc_hz))
}

/// Loads the tasks of `manifest`, each with the boot information `info`,
/// its channels' pages and, as its rights say, `ram` (host-physical
/// base, bytes), a VCPU page and an install page.
fn load_tasks(
    manifest: &Manifest,
    payload: &[u8],
    info: &ServerBootInfo,
    ram: Option<(u64, u64)>,
    channels: &[Option<Channel>; MAX_CHANNELS],
) -> Result<[Option<Task>; MAX_TASKS], &'static str> {
    let oom = "not enough host memory for the servers";
    let boot_info = memory::alloc_frame().map_err(|_| oom)?;
    // SAFETY: a fresh identity-mapped frame, larger than `info`.
    unsafe {
        core::ptr::copy_nonoverlapping(
            info.as_bytes().as_ptr(),
            boot_info as *mut u8,
            info.as_bytes().len(),
        )
    };
    let mut tasks: [Option<Task>; MAX_TASKS] = Default::default();
    for (i, t) in manifest.tasks.iter().enumerate() {
        let vcpu_page = if t.rights.vcpu {
            Some(memory::alloc_frame().map_err(|_| oom)?)
        } else {
            None
        };
        let install_page = if t.rights.install {
            Some(memory::alloc_frame().map_err(|_| oom)?)
        } else {
            None
        };
        let mut ends = [(0usize, 0u64); MAX_CHANNELS];
        let mut n_ends = 0;
        for (n, c) in channels.iter().enumerate() {
            if let Some(c) = c.as_ref().filter(|c| c.client == i || c.server == i) {
                ends[n_ends] = (n, c.page);
                n_ends += 1;
            }
        }
        let maps = task::SharedMaps {
            boot_info,
            vcpu_page,
            install_page,
            guest_ram: match (t.rights.guest_ram, ram) {
                (RamRight::None, _) | (_, None) => None,
                (RamRight::ReadOnly, Some((ram, bytes))) => Some((ram, bytes, false)),
                (RamRight::ReadWrite, Some((ram, bytes))) => Some((ram, bytes, true)),
            },
            channels: &ends[..n_ends],
        };
        let elf = blob(payload, t.elf).ok_or("a server's ELF lies outside the payload")?;
        let loaded = task::load(elf, &maps).map_err(|e| {
            say!("cannot load the {}: {e}", t.name);
            "a server could not be loaded"
        })?;
        tasks[i] = Some(Task {
            name: t.name.clone(),
            rights: t.rights.clone(),
            root: loaded.root,
            frame: TrapFrame::user_start(loaded.entry, STACK_TOP),
            state: State::NotStarted,
            vcpu_page,
            install_page,
            ran_vcpu: false,
            notes: Notifications::default(),
            gate: ExitGate::default(),
            noted: false,
            entered_since_resume: false,
            signalled_since_entry: false,
            wake: WakeAt::default(),
            elf: t.elf,
            generation: 0,
            restarts_in_a_row: 0,
        });
    }
    Ok(tasks)
}
