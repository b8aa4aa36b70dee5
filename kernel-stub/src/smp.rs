//! The other CPUs (application processors, APs): started by the boot CPU
//! with INIT, then two start-up IPIs (SIPI) through its local APIC (Intel
//! SDM vol. 3A, 8.4.4 "MP initialization example"; AMD APM vol. 2, 16.5),
//! broadcast to all CPUs but itself. The stub does not read the ACPI MADT:
//! each CPU that wakes takes the next index (`boot.rs`) and checks in, and
//! the boot CPU waits until every CPU that took one has done so. A CPU is
//! only ever named by its index, which the VM placement uses.
//!
//! Each AP gets its own stacks, GDT and TSS (`cpu::init`), SVM's host save
//! area or VMX's VMXON region (`arch::enable`), says `[stub] cpuN online`
//! and parks (HLT with interrupts off) until it has VMs to run.

use crate::arch::{self, Arch};
use crate::console::say;
use crate::cpu::{self, MAX_CPUS};
use crate::memory::LAPIC;
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

/// Where the real-mode start code is copied: a SIPI starts the CPU at
/// vector << 12, below 1 MiB; this page is free once the stub runs.
pub const TRAMPOLINE: u64 = 0x8000;

const MAX_CPUS_U32: u32 = 4;
const _: () = assert!(MAX_CPUS_U32 as usize == MAX_CPUS);

/// The index the next CPU that wakes takes (`boot.rs`'s `ap_long_mode`).
pub static NEXT_INDEX: AtomicU32 = AtomicU32::new(1);
/// CPUs that finished their start, bit n for CPU n, and whether they can
/// run VMs (`READY`).
static STARTED: AtomicU8 = AtomicU8::new(1);
static READY: AtomicU8 = AtomicU8::new(1);
/// The extension every CPU turns on (`Arch` as a number).
static ARCH: AtomicU8 = AtomicU8::new(0);
/// The TSC's rate (the boot CPU measured it; the CPUs share the clock).
static TSC_HZ: AtomicU64 = AtomicU64::new(0);

const IA32_APIC_BASE: u32 = 0x1b;
/// IA32_APIC_BASE: the boot CPU's flag and the global enable.
const APIC_BSP: u64 = 1 << 8;
const APIC_ENABLE: u64 = 1 << 11;
const APIC_X2: u64 = 1 << 10;
/// Interrupt command register, low and high words.
const ICR_LOW: u64 = 0x300;
const ICR_HIGH: u64 = 0x310;
/// ICR: delivery status (send pending), level assert, all excluding self.
const ICR_PENDING: u32 = 1 << 12;
const ICR_ASSERT: u32 = 1 << 14;
const ICR_ALL_BUT_SELF: u32 = 3 << 18;
const ICR_INIT: u32 = 5 << 8;
const ICR_STARTUP: u32 = 6 << 8;

/// A local APIC register (its own CPU's: each sees its own at [`LAPIC`]).
fn lapic_write(reg: u64, v: u32) {
    // SAFETY: `memory::map_lapic` mapped the register page (uncached,
    // supervisor) in every address space; a 32-bit aligned store is how
    // the APIC's registers are written.
    unsafe { ((LAPIC + reg) as *mut u32).write_volatile(v) }
}

fn lapic_read(reg: u64) -> u32 {
    // SAFETY: as for `lapic_write`.
    unsafe { ((LAPIC + reg) as *const u32).read_volatile() }
}

/// The local APIC timer's vector (`cpu`'s IDT has it), and the spurious
/// vector (ignored).
pub const TIMER_VECTOR: u8 = 0x30;
pub const SPURIOUS_VECTOR: u8 = 0xff;
const SVR: u64 = 0xf0;
const EOI: u64 = 0xb0;
const LVT_TIMER: u64 = 0x320;
const TIMER_INITIAL: u64 = 0x380;
const TIMER_CURRENT: u64 = 0x390;
const TIMER_DIVIDE: u64 = 0x3e0;
/// SVR: the APIC software-enabled.
const APIC_SOFT_ENABLE: u32 = 1 << 8;
/// LVT: masked.
const LVT_MASKED: u32 = 1 << 16;
/// Divide configuration: by 16 (SDM vol. 3A, 10.5.4).
const DIVIDE_BY_16: u32 = 0b0011;

/// This CPU's APIC timer counts `count` ticks, then interrupts once on
/// [`TIMER_VECTOR`]; 0 stops it.
pub fn timer_start(count: u32) {
    lapic_write(TIMER_INITIAL, count);
}

/// Ends the local APIC's interrupt in service.
pub fn end_of_interrupt() {
    lapic_write(EOI, 0);
}

/// Takes an interrupt that is pending while the stub runs with IF clear
/// (the APIC timer's, after the exit it caused): open the window for one
/// instruction; the IDT's entry ends it.
pub fn take_pending_interrupt() {
    // SAFETY: the only interrupt source of a CPU other than the boot CPU
    // is its APIC timer, whose trap entry ends it and returns; nothing
    // in the stub is borrowed across this (the caller holds only its own
    // CPU's state, which the entry does not touch).
    unsafe { core::arch::asm!("sti", "nop", "cli", options(nomem, nostack)) };
}

/// Turns this CPU's local APIC on (every LVT masked, as after reset) and
/// measures its timer against the TSC over 10 ms: its ticks a second.
fn timer_init(tsc_hz: u64) -> u64 {
    lapic_write(SVR, APIC_SOFT_ENABLE | u32::from(SPURIOUS_VECTOR));
    lapic_write(TIMER_DIVIDE, DIVIDE_BY_16);
    lapic_write(LVT_TIMER, LVT_MASKED | u32::from(TIMER_VECTOR));
    lapic_write(TIMER_INITIAL, u32::MAX);
    wait_tsc(tsc_hz / 100);
    let counted = u32::MAX - lapic_read(TIMER_CURRENT);
    lapic_write(TIMER_INITIAL, 0);
    // One-shot, unmasked: armed by `timer_start` from now on.
    lapic_write(LVT_TIMER, u32::from(TIMER_VECTOR));
    u64::from(counted) * 100
}

/// Sends an IPI to every other CPU and waits until the APIC took it.
fn broadcast(icr: u32) {
    lapic_write(ICR_HIGH, 0);
    lapic_write(ICR_LOW, icr | ICR_ALL_BUT_SELF);
    for _ in 0..1_000_000 {
        if lapic_read(ICR_LOW) & ICR_PENDING == 0 {
            break;
        }
        core::hint::spin_loop();
    }
}

fn wait_tsc(ticks: u64) {
    let end = cpu::rdtsc().saturating_add(ticks);
    while cpu::rdtsc() < end {
        core::hint::spin_loop();
    }
}

/// Starts every other CPU with `arch` turned on; returns the mask of the
/// CPUs that can run VMs (bit 0: this one). Without a local APIC where
/// the stub maps it, only the boot CPU runs.
pub fn start_others(arch: Arch, hz: u64) -> u8 {
    let base = cpu::rdmsr(IA32_APIC_BASE);
    // The xAPIC's registers at their reset address (x2APIC mode, which
    // firmware may have turned on, has no MMIO registers): else one CPU.
    if base & 0xf_ffff_f000 != LAPIC
        || base & (APIC_ENABLE | APIC_BSP | APIC_X2) != APIC_ENABLE | APIC_BSP
    {
        return 1;
    }
    crate::memory::map_lapic();
    extern "C" {
        static ap_trampoline: u8;
        static ap_trampoline_end: u8;
    }
    let start = (&raw const ap_trampoline) as u64;
    let len = (&raw const ap_trampoline_end) as u64 - start;
    // SAFETY: the trampoline is code in the stub's image; the page at
    // TRAMPOLINE is identity-mapped RAM below 1 MiB that nothing uses
    // (the multiboot information was read already), and the code is a few
    // dozen bytes.
    unsafe {
        core::ptr::copy_nonoverlapping(
            start as *const u8,
            TRAMPOLINE as *mut u8,
            kernel_stub::usize_from(len),
        )
    };
    ARCH.store(arch as u8, Ordering::Relaxed);
    TSC_HZ.store(hz, Ordering::Relaxed);
    broadcast(ICR_INIT | ICR_ASSERT);
    wait_tsc(hz / 100); // 10 ms
    #[allow(clippy::cast_possible_truncation, reason = "0x8000 >> 12")]
    let vector = (TRAMPOLINE >> 12) as u32;
    for _ in 0..2 {
        broadcast(ICR_STARTUP | ICR_ASSERT | vector);
        wait_tsc(hz / 5000); // 200 us
    }
    // Every CPU that woke takes an index within a few microseconds of
    // its SIPI; then each finishes its start. Wait (at most 1 s) until
    // each that took one has.
    wait_tsc(hz / 100);
    let end = cpu::rdtsc().saturating_add(hz);
    loop {
        let taken = NEXT_INDEX.load(Ordering::Acquire).min(MAX_CPUS_U32);
        let all = u8::try_from((1u32 << taken) - 1).unwrap_or(u8::MAX);
        if STARTED.load(Ordering::Acquire) == all || cpu::rdtsc() > end {
            break;
        }
        core::hint::spin_loop();
    }
    let answered = NEXT_INDEX.load(Ordering::Acquire);
    if answered > MAX_CPUS_U32 {
        say!("{answered} CPUs answered; the stub runs on the first {MAX_CPUS}");
    }
    READY.load(Ordering::Acquire)
}

/// An AP's first Rust code, on its own stack (`boot.rs`).
pub extern "C" fn ap_main(index: u32) -> ! {
    cpu::init();
    let arch = if ARCH.load(Ordering::Relaxed) == Arch::Vmx as u8 {
        Arch::Vmx
    } else {
        Arch::Svm
    };
    let bit = 1u8 << (index & 7);
    let lapic_hz = timer_init(TSC_HZ.load(Ordering::Relaxed));
    match arch::enable(arch) {
        Ok(()) => {
            say!("cpu{index} online");
            READY.fetch_or(bit, Ordering::Release);
        }
        Err(why) => {
            say!("cpu{index} runs no VM: {why}");
            STARTED.fetch_or(bit, Ordering::Release);
            cpu::halt_forever()
        }
    }
    STARTED.fetch_or(bit, Ordering::Release);
    crate::vm::start_other(arch, lapic_hz)
}
