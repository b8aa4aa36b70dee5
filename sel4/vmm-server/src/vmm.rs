//! The component's main: arguments, the hostile case, the VCPU, the
//! devices, the exit loop, the final line and the report to the root task.

use core::cell::RefCell;

use sel4_sys::{c, invoke};
use sel4_vmm_server::{Args, ARGS_MAX, REPORT_LABEL, SLOT_MMU, SLOT_REPORT, SLOT_VCPU};
use vmm_server::board::Board as Devices;
use vmm_server::boards;
use vmm_server::devices::uart16550::Uart16550;
use vmm_server::{Ending, HostConsole, Vmm};

use crate::console::{say, vmm_line, DebugConsole};
use crate::host::{rdtsc, GuestRam, Sel4Host};
use crate::vcpu::Vcpu;

/// The debug-exit byte the root task writes at the end, as the native
/// stub does (QEMU's isa-debug-exit; Bochs ignores it).
pub const HOST_EXIT_STOPPED: u8 = 0;
pub const HOST_EXIT_FAILED: u8 = 1;
pub const HOST_EXIT_CANNOT_RUN: u8 = 2;
/// The RTC's time at boot: 2026-01-01 00:00 UTC.
const RTC_EPOCH: i64 = 1_767_225_600;

/// Ends the run: the root task does the rest.
pub fn end(code: u8) -> ! {
    report(code)
}

fn cannot_run(why: core::fmt::Arguments) -> ! {
    say!("cannot run: {why}");
    end(HOST_EXIT_CANNOT_RUN)
}

/// The arguments: a length (u64) and postcard bytes in the page at `page`.
fn args(page: *const u8) -> Option<Args> {
    // SAFETY: the root task mapped the argument page read-only at `page`
    // (RDI at entry); the length is checked before the bytes are read.
    let bytes = unsafe {
        let len = (page as *const u64).read_volatile() as usize;
        if len > ARGS_MAX {
            return None;
        }
        core::slice::from_raw_parts(page.add(8), len)
    };
    postcard::from_bytes(bytes).ok()
}

/// Tells the root task how the run ends (`code`: the debug-exit byte) and
/// stops: the root task never replies.
pub fn report(code: u8) -> ! {
    let _ = invoke(SLOT_REPORT, REPORT_LABEL, &[], &[u64::from(code)]);
    loop {
        core::hint::spin_loop();
    }
}

/// The component's entry (from `_start`): RDI its argument page, RSI its
/// IPC buffer.
pub extern "C" fn vmm_main(args_page: *const u8, ipc_buffer: *mut u8) -> ! {
    sel4_sys::set_ipc_buffer(ipc_buffer);
    let Some(args) = args(args_page) else {
        cannot_run(format_args!(
            "the vmm-server component's arguments do not decode"
        ))
    };
    if args.hostile_target != 0 {
        // First the mmu-server: asked to map what is not guest RAM (the
        // local APIC, the top of the address space) or with a message that
        // is not an EPT violation, it maps nothing and says why.
        use sel4_mmu_server as m;
        for (label, gpa) in [
            (m::EPT_VIOLATION_LABEL, 0xfee0_0000),
            (m::EPT_VIOLATION_LABEL, u64::MAX),
            (m::EPT_VIOLATION_LABEL + 1, 0),
        ] {
            let r = invoke(SLOT_MMU, label, &[], &[gpa, 0]);
            vmm_line(format_args!(
                "hostile: the mmu-server answered {:?} to label {label:#x} for guest-physical {gpa:#x}",
                r.map(|mrs| mrs[0])
            ));
        }
        vmm_line(format_args!(
            "hostile: invoking capability {:#x} of the root task's (where it held the EPT), which this server was not given",
            args.hostile_target
        ));
        let r = invoke(args.hostile_target, c::TCB_SET_EPT_ROOT, &[], &[]);
        // A blocking call on an address that does not resolve is a
        // capability fault, which seL4 sends to the root task: not here.
        vmm_line(format_args!("hostile: seL4 answered {r:?}"));
    }
    let mut vcpu = Vcpu::new(SLOT_VCPU, args.entry_mode, args.entry_rip, args.entry_regs)
        .unwrap_or_else(|e| cannot_run(format_args!("{e}")))
        .with_mmu(SLOT_MMU, args.ram);
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
         WriteVMCS and WriteRegisters {} ({w}.{wt} per exit), \
         EPT violations on guest RAM to the mmu-server {}",
        cycles / 1_000_000,
        match host_hz {
            0 => 0,
            hz => u128::from(exits) * u128::from(hz) / u128::from(cycles.max(1)),
        },
        vcpu.reads_total,
        vcpu.writes_total,
        vcpu.ept_forwarded
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
