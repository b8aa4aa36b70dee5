//! The vmm-server component's main (milestone 2, first stage): the thread
//! the root task starts in a VSpace and CSpace of its own (see
//! `component.rs`). It is the VCPU's thread: it sets the guest's initial
//! state, builds the board's devices and runs `vmm_server::run` with
//! `seL4_VMEnter` itself, then prints the final line and reports its
//! ending to the root task, which ends the run.
//!
//! TODO(issue 14): this is still the root task's image; the final shape
//! loads the vmm-server ELF of the payload (a thin seL4 main of the
//! `vmm_server` library) instead.

use core::cell::{RefCell, UnsafeCell};

use ipc_proto::manifest::{Board, EntryMode};
use sel4_sys::{c, invoke, CPtr};
use vmm_server::board::Board as Devices;
use vmm_server::boards;
use vmm_server::devices::uart16550::Uart16550;
use vmm_server::{Ending, HostConsole, Vmm};

use crate::component;
use crate::console::{say, vmm_line, DebugConsole};
use crate::vcpu::Vcpu;
use crate::vm::{
    cannot_run, end, rdtsc, GuestRam, Sel4Host, HOST_EXIT_FAILED, HOST_EXIT_STOPPED, RTC_EPOCH,
};

/// What the root task tells the component: written before the component's
/// data is copied, read by the component from its copy.
#[derive(Clone, Copy)]
pub struct Args {
    pub entry_mode: EntryMode,
    pub entry_rip: u64,
    /// RAX, RBX, RSI at entry.
    pub entry_regs: [u64; 3],
    pub board: Board,
    pub ram: u64,
    pub tsc_hz: u64,
    /// The hostile case (`run --sel4-hostile-vmm`): a capability address
    /// of the root task's (its EPT) that the component invokes although it
    /// was not given it; 0 normally.
    pub hostile_target: CPtr,
}

pub struct ArgsCell(UnsafeCell<Option<Args>>);

// SAFETY: written once by the root task before the component exists;
// afterwards each of the two reads only its own copy.
unsafe impl Sync for ArgsCell {}

impl ArgsCell {
    pub fn set(&self, args: Args) {
        // SAFETY: see `Sync`: the root task's one thread, no reader yet.
        unsafe { *self.0.get() = Some(args) };
    }

    fn get(&self) -> Option<Args> {
        // SAFETY: see `Sync`: nobody writes the component's copy.
        unsafe { *self.0.get() }
    }
}

pub static ARGS: ArgsCell = ArgsCell(UnsafeCell::new(None));

/// Whether this thread is the vmm-server component (set in its copy of
/// the data only): its ending goes to the root task, not to the ports.
pub static IN_VMM: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Tells the root task how the run ends (`code`: the debug-exit byte) and
/// stops: the root task never replies.
pub fn report(code: u8) -> ! {
    let _ = invoke(
        component::SLOT_REPORT,
        component::REPORT_LABEL,
        &[],
        &[u64::from(code)],
    );
    loop {
        core::hint::spin_loop();
    }
}

/// The component's entry (from `_vmm_start`).
pub extern "C" fn vmm_main() -> ! {
    sel4_sys::set_ipc_buffer(component::ipc_buffer_va() as *mut u8);
    IN_VMM.store(true, core::sync::atomic::Ordering::Relaxed);
    let Some(args) = ARGS.get() else {
        cannot_run(format_args!("the vmm-server component has no arguments"))
    };
    if args.hostile_target != 0 {
        vmm_line(format_args!(
            "hostile: invoking capability {:#x} of the root task's (its EPT), which this server was not given",
            args.hostile_target
        ));
        let r = invoke(args.hostile_target, c::TCB_SET_EPT_ROOT, &[], &[]);
        // A blocking call on an address that does not resolve is a
        // capability fault, which seL4 sends to the root task: not here.
        vmm_line(format_args!("hostile: seL4 answered {r:?}"));
    }
    let mut vcpu = Vcpu::new(
        component::SLOT_VCPU,
        args.entry_mode,
        args.entry_rip,
        args.entry_regs,
    )
    .unwrap_or_else(|e| cannot_run(format_args!("{e}")));
    let mut mem = GuestRam { len: args.ram };
    let console = RefCell::new(HostConsole::new(DebugConsole, true));
    let board = Devices::new();
    let host_hz = args.tsc_hz;
    let mut host = Sel4Host { tsc_hz: host_hz };
    // The board's devices and their ports, from its table (as natively).
    let table = boards::table(args.board);
    let mut uart =
        Uart16550::new(&console).with_irq(boards::pin(&board, table, boards::Slot::Com1));
    let mut devices = boards::Devices::new(&board, table, args.ram, RTC_EPOCH);
    let (router, mmio) = devices
        .routers(table, &mut uart)
        .unwrap_or_else(|e| cannot_run(format_args!("{e}")));
    // iced's decoder tables, built now so that a short heap shows at start.
    let _ = iced_x86::Decoder::new(64, &[0x90], 0).decode();
    let mut vmm = Vmm::new(router, &board, &mut mem, &mut host)
        .with_mmio(mmio)
        .with_irqchip(boards::irqchip(args.board, &board));
    let start = rdtsc();
    let ending = vmm_server::run(&mut vcpu, &mut vmm, &console);
    drop(vmm);
    let cycles = rdtsc() - start;
    let exits = vcpu.stats_total();
    let tenths = |n: u64| {
        let t = n * 10 / exits.max(1);
        (t / 10, t % 10)
    };
    let (r, rt) = tenths(vcpu.reads_total);
    let (w, wt) = tenths(vcpu.writes_total);
    say!(
        "seL4: {exits} exits in {} Mcycles ({} exits/s), ReadVMCS {} ({r}.{rt} per exit), \
         WriteVMCS and WriteRegisters {} ({w}.{wt} per exit)",
        cycles / 1_000_000,
        match host_hz {
            0 => 0,
            hz => u128::from(exits) * u128::from(hz) / u128::from(cycles.max(1)),
        },
        vcpu.reads_total,
        vcpu.writes_total
    );
    if let Some(e) = vcpu.failure {
        say!("vm failed: {e}");
        end(HOST_EXIT_FAILED);
    }
    match ending {
        Ending::Stop { status } => {
            say!("vm stopped: guest status {status}");
            end(HOST_EXIT_STOPPED)
        }
        // A reset ends the VM, as QEMU's -no-reboot does.
        Ending::Reset => {
            say!("vm stopped: guest status 0");
            end(HOST_EXIT_STOPPED)
        }
        Ending::Fail => {
            say!("vm failed: the vmm-server could not go on (see its lines above)");
            end(HOST_EXIT_FAILED)
        }
    }
}
