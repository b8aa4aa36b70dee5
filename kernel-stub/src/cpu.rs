//! The host CPU: port I/O, MSRs, the GDT with the TSS, the IDT with the
//! exception and system-call entry, and the stacks the stub runs on.

use core::arch::{asm, global_asm};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use ipc_proto::manifest::PortRange;
use kernel_stub::iopb::IOPB_BYTES;

/// State shared by the stub's code paths. Ring 0 runs with interrupts
/// disabled, so on one CPU there is never a second accessor at a time --
/// unless a fault or trap inside the stub reaches code that borrows the
/// same cell again: the borrow is checked (Hubris's task table does the
/// same), and such a re-entry ends the VM with a line instead of aliasing
/// a `&mut`. Across CPUs the cell is a spin lock: another CPU waits until
/// the holder is done (per-CPU state, `vm::KERNELS`, is never contended).
pub struct KernelCell<T> {
    value: UnsafeCell<T>,
    /// The CPU ([`id`]) inside `try_with`, or [`FREE`].
    owner: AtomicUsize,
}

const FREE: usize = usize::MAX;

// SAFETY: `try_with` hands out the `&mut` to one holder at a time: the
// owner word is taken with an atomic compare-exchange (acquire) and given
// back (release); a nested `with` on the same CPU (a fault inside `f`)
// finds its own id there and gets `None`.
unsafe impl<T> Sync for KernelCell<T> {}

impl<T> KernelCell<T> {
    /// A cell holding `v`.
    pub const fn new(v: T) -> Self {
        Self {
            value: UnsafeCell::new(v),
            owner: AtomicUsize::new(FREE),
        }
    }

    /// Runs `f` with exclusive access, after another CPU's holder is done;
    /// `None` if this CPU holds it already (a fault inside the stub while
    /// `f` of an outer call ran).
    pub fn try_with<R>(&self, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        let me = id();
        loop {
            match self
                .owner
                .compare_exchange(FREE, me, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(holder) if holder == me => return None,
                Err(_) => core::hint::spin_loop(),
            }
        }
        // SAFETY: this CPU took the owner word, so no other `&mut` to the
        // value exists; a re-entry while `f` runs finds it taken.
        let r = f(unsafe { &mut *self.value.get() });
        self.owner.store(FREE, Ordering::Release);
        Some(r)
    }

    /// Runs `f` with exclusive access; a re-entry ends the VM with a line.
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        match self.try_with(f) {
            Some(r) => r,
            None => reentered(),
        }
    }
}

/// A cell was borrowed twice: the stub faulted inside itself. Says so on
/// COM1 without touching any cell, then ends the VM.
fn reentered() -> ! {
    for &b in b"\n[stub] vm failed: stub fault: the stub re-entered its own state (a fault inside the stub)\n" {
        while inb(0x3fd) & 0x20 == 0 {}
        outb(0x3f8, b);
    }
    crate::vm::end(crate::vm::HOST_EXIT_FAILED)
}

pub fn outb(port: u16, val: u8) {
    // SAFETY: port I/O has no memory effects; the stub owns the host's ports.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") val, options(nomem, nostack, preserves_flags))
    }
}

pub fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: as for `outb`.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack, preserves_flags))
    };
    v
}

pub fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: only called for MSRs that exist on every CPU with SVM (checked by CPUID first).
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

#[allow(clippy::cast_possible_truncation, reason = "EDX:EAX halves")]
pub fn wrmsr(msr: u32, val: u64) {
    // SAFETY: as for `rdmsr`; the values written are the architectural ones the callers document.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") val as u32, in("edx") (val >> 32) as u32, options(nostack, preserves_flags))
    };
}

pub fn cpuid(leaf: u32) -> core::arch::x86_64::CpuidResult {
    core::arch::x86_64::__cpuid(leaf)
}

/// CPUID with a subleaf, as `[eax, ebx, ecx, edx]`.
pub fn cpuid_words(leaf: u32, subleaf: u32) -> [u32; 4] {
    let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
    [r.eax, r.ebx, r.ecx, r.edx]
}

pub fn read_cr2() -> u64 {
    let v;
    // SAFETY: reading CR2 has no side effects.
    unsafe { asm!("mov {}, cr2", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// Loads a page-table root. The caller guarantees it maps the stub itself.
pub fn write_cr3(root: u64) {
    // SAFETY: every address space the stub builds maps the stub's identity
    // region (see `memory::AddressSpace::new`), so execution continues.
    unsafe { asm!("mov cr3, {}", in(reg) root, options(nostack, preserves_flags)) };
}

pub const MSR_EFER: u32 = 0xc000_0080;
/// TSC_AUX, which RDTSCP returns in ECX: the guest's own where the host has
/// RDTSCP (neither the stub nor a server reads it; one VM: INTERCEPTS.md).
pub const MSR_TSC_AUX: u32 = 0xc000_0103;

/// Whether the host has RDTSCP and TSC_AUX (CPUID 8000_0001 EDX bit 27).
pub fn has_rdtscp() -> bool {
    cpuid(0x8000_0001).edx & (1 << 27) != 0
}
pub const EFER_NXE: u64 = 1 << 11;
pub const EFER_SVME: u64 = 1 << 12;

pub const KERNEL_CS: u16 = 0x08;
pub const KERNEL_DS: u16 = 0x10;
pub const USER_CS: u16 = 0x18 | 3;
pub const USER_DS: u16 = 0x20 | 3;
const TSS_SEL: u16 = 0x28;

/// The CPUs the stub runs on at most: the boot CPU and 3 others (one per VM).
pub const MAX_CPUS: usize = 4;

#[repr(C, align(16))]
pub struct Stack([u8; STACK_BYTES]);
const STACK_BYTES: usize = 64 * 1024;

/// Each CPU's two stacks: the one it starts on (`stub_main`, `smp::ap_main`)
/// and the one the TSS enters on every trap from ring 3. Which CPU runs is
/// read from the stack pointer ([`id`]).
#[no_mangle]
pub static mut STACKS: [[Stack; 2]; MAX_CPUS] =
    [const { [const { Stack([0; STACK_BYTES]) }; 2] }; MAX_CPUS];

global_asm!(
    ".globl KERNEL_STACK_TOP",
    ".set KERNEL_STACK_TOP, STACKS + 65536",
);
extern "C" {
    pub static KERNEL_STACK_TOP: u8;
}

/// This CPU's index (0: the boot CPU), from the stack it runs on: each
/// CPU runs the stub on its own two stacks only. Anything else (no stub
/// code runs on another stack) counts as the boot CPU.
pub fn id() -> usize {
    let rsp: u64;
    // SAFETY: reading RSP has no side effects.
    unsafe { asm!("mov {}, rsp", out(reg) rsp, options(nomem, nostack, preserves_flags)) };
    let base = (&raw const STACKS) as u64;
    let per_cpu = core::mem::size_of::<[Stack; 2]>() as u64;
    let i = rsp.wrapping_sub(base) / per_cpu;
    if i < MAX_CPUS as u64 {
        kernel_stub::usize_from(i)
    } else {
        0
    }
}

/// The 64-bit TSS: RSP0 (the stack for traps from ring 3) and the I/O
/// permission bitmap, which lets the running task use its granted ports.
#[repr(C, packed(4))]
struct Tss {
    reserved0: u32,
    rsp0: u64,
    rsp: [u64; 2],
    reserved1: u64,
    ist: [u64; 7],
    reserved2: u64,
    reserved3: u16,
    iomap_base: u16,
    iopb: [u8; IOPB_BYTES],
    /// All ones: the CPU may read the byte after the last one it needs.
    iopb_end: u8,
}

static mut TSS: [Tss; MAX_CPUS] = [const {
    Tss {
        reserved0: 0,
        rsp0: 0,
        rsp: [0; 2],
        reserved1: 0,
        ist: [0; 7],
        reserved2: 0,
        reserved3: 0,
        // The bitmap follows the 104 bytes of the TSS proper; all ones: every
        // port access from ring 3 faults until `grant_ports` opens some.
        #[allow(clippy::cast_possible_truncation, reason = "104")]
        iomap_base: core::mem::offset_of!(Tss, iopb) as u16,
        iopb: [0xff; IOPB_BYTES],
        iopb_end: 0xff,
    }
}; MAX_CPUS];

/// A task switch: the ports of `prev` are closed to ring 3 again and those
/// of `next` opened (`kernel_stub::iopb`).
pub fn grant_ports(prev: &[PortRange], next: &[PortRange]) {
    // SAFETY: one core, interrupts off; the CPU reads the bitmap only on
    // an IN/OUT in ring 3, which cannot run now. No other reference to
    // the TSS is live (`init` ran at boot).
    let tss = &raw mut TSS;
    // SAFETY: as above, and the TSS is this CPU's own; the bitmap is
    // bytes, aligned in the packed TSS.
    let iopb = unsafe { &mut (*tss)[id()].iopb };
    kernel_stub::iopb::switch(iopb, prev, next);
}

/// The TSS descriptor's type: available (0x9) and busy (0xB) 64-bit TSS.
const TSS_AVAILABLE: u64 = 0x89 << 40;
const TSS_BUSY_BIT: u64 = 0x2 << 40;

/// Loads TR again. A VMX exit leaves TR's limit at 0x67 (SDM vol. 3C,
/// 28.5.2), which cuts the I/O permission bitmap off: every IN/OUT of a
/// server would #GP. LTR wants the descriptor marked available.
pub fn reload_tr() {
    // SAFETY: the GDT's TSS descriptor, written by `init`; clearing its
    // busy bit and loading it again changes nothing but TR's hidden limit
    // (back to the TSS's full size); no other reference to the GDT is live.
    unsafe {
        let gdt = &raw mut GDT;
        (*gdt)[id()][5] &= !TSS_BUSY_BIT;
        asm!("ltr {0:x}", in(reg) TSS_SEL, options(nostack, preserves_flags));
    }
}

/// Each CPU's GDT (its own TSS descriptor).
static mut GDT: [[u64; 7]; MAX_CPUS] = [[
    0,
    0x00af_9a00_0000_ffff, // 0x08 kernel code, 64-bit
    0x00cf_9200_0000_ffff, // 0x10 kernel data
    0x00af_fa00_0000_ffff, // 0x18 user code, 64-bit, DPL 3
    0x00cf_f200_0000_ffff, // 0x20 user data, DPL 3
    0,                     // 0x28 TSS, low half (filled in by `init`)
    0,                     // 0x30 TSS, high half
]; MAX_CPUS];

#[repr(C)]
#[derive(Clone, Copy)]
struct IdtEntry {
    offset_lo: u16,
    selector: u16,
    ist: u8,
    type_attr: u8,
    offset_mid: u16,
    offset_hi: u32,
    reserved: u32,
}

static mut IDT: [IdtEntry; 256] = [IdtEntry {
    offset_lo: 0,
    selector: 0,
    ist: 0,
    type_attr: 0,
    offset_mid: 0,
    offset_hi: 0,
    reserved: 0,
}; 256];

#[repr(C, packed)]
struct DescriptorPointer {
    limit: u16,
    base: u64,
}

/// Registers saved by the trap entry, in stack order. It is also a
/// blocked task's saved state: loading it into the trap stack and returning
/// resumes the task.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

impl TrapFrame {
    /// A ring-3 task about to run its first instruction at `rip` with
    /// `rsp`, all other registers zero, interrupts on (IOPL 0: it cannot
    /// turn them off).
    pub fn user_start(rip: u64, rsp: u64) -> Self {
        Self {
            rip,
            cs: u64::from(USER_CS),
            rflags: USER_RFLAGS,
            rsp,
            ss: u64::from(USER_DS),
            ..Self::default()
        }
    }
}

/// A server's RFLAGS at its start: IF set (the watchdog's timer and the
/// device servers' IRQs interrupt it), IOPL 0 (CLI and STI #GP), bit 1.
const USER_RFLAGS: u64 = 0x202;

// One entry stub per vector we install: exceptions 0-31, the 8259s' 16
// lines (`deadline::IRQ_VECTOR_BASE`) and the system call.
// Vectors where the CPU pushes an error code skip the dummy push.
macro_rules! trap_stubs {
    ($($vec:literal $err:literal),* $(,)?) => {
        global_asm!(
            $(
                concat!(".globl trap_", $vec),
                concat!("trap_", $vec, ":"),
                concat!(".if ", $err, " == 0"),
                "push 0",
                ".endif",
                concat!("push ", $vec),
                "jmp trap_common",
            )*
            ".section .rodata",
            ".balign 8",
            "trap_table:",
            $( concat!(".quad trap_", $vec), )*
            ".text",
        );
    };
}

trap_stubs!(
    0 0, 1 0, 2 0, 3 0, 4 0, 5 0, 6 0, 7 0, 8 1, 9 0, 10 1, 11 1, 12 1, 13 1, 14 1, 15 0,
    16 0, 17 1, 18 0, 19 0, 20 0, 21 1, 22 0, 23 0, 24 0, 25 0, 26 0, 27 0, 28 0, 29 1, 30 1, 31 0,
    32 0, 33 0, 34 0, 35 0, 36 0, 37 0, 38 0, 39 0, 40 0, 41 0, 42 0, 43 0, 44 0, 45 0, 46 0, 47 0,
    128 0, 48 0, 255 0,
);

global_asm!(
    "trap_common:",
    "push rax", "push rbx", "push rcx", "push rdx", "push rsi", "push rdi", "push rbp",
    "push r8", "push r9", "push r10", "push r11", "push r12", "push r13", "push r14", "push r15",
    "mov rdi, rsp",
    "cld",
    "call {handler}",
    "pop r15", "pop r14", "pop r13", "pop r12", "pop r11", "pop r10", "pop r9", "pop r8",
    "pop rbp", "pop rdi", "pop rsi", "pop rdx", "pop rcx", "pop rbx", "pop rax",
    "add rsp, 16",
    "iretq",
    handler = sym trap_handler,
);

extern "C" {
    static trap_table: [u64; 51];
}

/// The host IRQs' vectors (`deadline::init` programs the 8259s so).
const IRQ_VECTORS: core::ops::Range<u64> = IRQ_BASE..IRQ_BASE + 16;
const IRQ_BASE: u64 = crate::deadline::IRQ_VECTOR_BASE as u64;

/// Every trap lands here: system calls and host interrupts from ring 3,
/// and exceptions.
extern "C" fn trap_handler(frame: &mut TrapFrame) {
    let from_user = frame.cs & 3 == 3;
    const TIMER: u64 = crate::smp::TIMER_VECTOR as u64;
    const SPURIOUS: u64 = crate::smp::SPURIOUS_VECTOR as u64;
    match (frame.vector, from_user) {
        (0x80, true) => crate::syscall::dispatch(frame),
        // Another CPU's APIC timer (its exit deadline, its watchdog): in
        // ring 0 only taken after the exit it caused (`smp`).
        (TIMER, _) => {
            crate::smp::end_of_interrupt();
            if from_user {
                crate::vm::interrupt(frame, 0);
            }
        }
        (SPURIOUS, _) => {}
        // A host IRQ while a server ran (the watchdog, a device's line).
        (v, true) if IRQ_VECTORS.contains(&v) => crate::vm::interrupt(frame, v - IRQ_BASE),
        // A #DB in the stub can only be a guest's single-step trap that the
        // emulator delivered after VMRUN on the host side (Bochs's SVM
        // does, for a guest with RFLAGS.TF): the stub sets no breakpoints
        // (VM exits leave DR7 at 0x400) and never runs with TF. A trap:
        // carry on after the instruction it follows.
        (1, false) => {}
        // A server's fault: restarted, or the VM stops (`vm::user_fault`).
        (_, true) => crate::vm::user_fault(frame, read_cr2()),
        (_, false) => crate::vm::fail(format_args!(
            "stub fault: exception {} (error code {:#x}) at rip={:#x}, cr2={:#x}",
            frame.vector,
            frame.error_code,
            frame.rip,
            read_cr2()
        )),
    }
}

/// The time-stamp counter.
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no side effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Installs this CPU's GDT and TSS and the stub's IDT (the boot CPU
/// fills the IDT in; another CPU loads it as it is).
#[allow(
    clippy::cast_possible_truncation,
    reason = "gates split handler addresses into their fields; table limits are small constants"
)]
pub fn init() {
    // SAFETY: runs once per CPU at its start, before anything uses its
    // GDT and TSS (each CPU writes its own only); the IDT is written by
    // the boot CPU before it starts the others, which only load it. The
    // addresses are of statics that live forever.
    unsafe {
        let cpu = id();
        let tss = &raw mut TSS;
        let tss = &raw mut (*tss)[cpu];
        let stacks = &raw const STACKS;
        (*tss).rsp0 = (&raw const (*stacks)[cpu][1]) as u64 + core::mem::size_of::<Stack>() as u64;
        let base = tss as u64;
        let limit = core::mem::size_of::<Tss>() as u64 - 1;
        let gdt = &raw mut GDT;
        let gdt = &mut (*gdt)[cpu];
        gdt[5] = (limit & 0xffff)
            | ((base & 0xff_ffff) << 16)
            | TSS_AVAILABLE // present, 64-bit TSS (available)
            | (((limit >> 16) & 0xf) << 48)
            | (((base >> 24) & 0xff) << 56);
        gdt[6] = base >> 32;

        let idt = &raw mut IDT;
        let idt = &mut *idt;
        let table = &trap_table;
        for (i, &addr) in table.iter().enumerate().filter(|_| cpu == 0) {
            let vector = match i {
                48 => 0x80,
                49 => usize::from(crate::smp::TIMER_VECTOR),
                50 => usize::from(crate::smp::SPURIOUS_VECTOR),
                _ => i,
            };
            // 0x8e: present interrupt gate, DPL 0; 0xee: DPL 3 (callable
            // from ring 3). An interrupt gate clears IF: the stub runs
            // with interrupts off whatever it entered from. A host IRQ
            // ignores the DPL; an `int 0x20` from ring 3 #GPs.
            let type_attr = if vector == 0x80 { 0xee } else { 0x8e };
            idt[vector] = IdtEntry {
                offset_lo: addr as u16,
                selector: KERNEL_CS,
                ist: 0,
                type_attr,
                offset_mid: (addr >> 16) as u16,
                offset_hi: (addr >> 32) as u32,
                reserved: 0,
            };
        }

        let gdtp = DescriptorPointer {
            limit: (core::mem::size_of::<[u64; 7]>() - 1) as u16,
            base: gdt.as_ptr() as u64,
        };
        let idtp = DescriptorPointer {
            limit: (core::mem::size_of::<[IdtEntry; 256]>() - 1) as u16,
            base: idt.as_ptr() as u64,
        };
        asm!(
            "lgdt [{gdtp}]",
            "lidt [{idtp}]",
            "push {cs}",
            "lea {tmp}, [rip + 2f]",
            "push {tmp}",
            "retfq",
            "2:",
            "mov ds, {ds:x}",
            "mov es, {ds:x}",
            "mov ss, {ds:x}",
            "ltr {tss:x}",
            gdtp = in(reg) &gdtp,
            idtp = in(reg) &idtp,
            cs = in(reg) u64::from(KERNEL_CS),
            ds = in(reg) u64::from(KERNEL_DS),
            tss = in(reg) u64::from(TSS_SEL),
            tmp = out(reg) _,
        );
    }
    // No-execute for the servers' data pages, where the CPU has it.
    if cpuid(0x8000_0001).edx & (1 << 20) != 0 {
        wrmsr(MSR_EFER, rdmsr(MSR_EFER) | EFER_NXE);
    }
    // x87, MMX and SSE fault in ring 3 (EM: #NM or #UD; TS: #NM): the
    // guest's FPU state stays in the registers while servers run (VMRUN
    // and VM exits do not switch it), so a server could read it. The stub
    // and the servers are built without floating point; CR0 is switched
    // with the guest's by VMRUN and by the VMCS host-state area.
    const CR0_EM: u64 = 1 << 2;
    const CR0_TS: u64 = 1 << 3;
    // SMEP and SMAP: the stub never runs a server's code, and touches a
    // server's memory only between `with_user_access`'s STAC and CLAC.
    const CR4_SMEP: u64 = 1 << 20;
    const CR4_SMAP: u64 = 1 << 21;
    let leaf7_ebx = if cpuid(0).eax >= 7 {
        cpuid_words(7, 0)[1]
    } else {
        0
    };
    let smep = if leaf7_ebx & (1 << 7) != 0 {
        CR4_SMEP
    } else {
        0
    };
    let smap = leaf7_ebx & (1 << 20) != 0;
    SMAP.store(smap, Ordering::Relaxed);
    // OSXSAVE where the CPU has XSAVE, so that the stub can load the
    // guest's XCR0 (XSETBV #UDs without it).
    let xsave = cpuid_words(1, 0)[2] & (1 << 26) != 0;
    let osxsave = if xsave { 1 << 18 } else { 0 };
    // SAFETY: EM/TS only make FPU instructions fault, and nothing in ring 0
    // uses them; SMEP/SMAP/OSXSAVE are set only where CPUID reports them,
    // and the stub executes no user page and reads user pages only under
    // STAC; OSXSAVE only enables the XSAVE instructions.
    unsafe {
        let (cr0, cr4): (u64, u64);
        asm!("mov {}, cr0", out(reg) cr0, options(nomem, nostack, preserves_flags));
        asm!("mov cr0, {}", in(reg) cr0 | CR0_EM | CR0_TS, options(nostack, preserves_flags));
        asm!("mov {}, cr4", out(reg) cr4, options(nomem, nostack, preserves_flags));
        let cr4 = cr4 | smep | if smap { CR4_SMAP } else { 0 } | osxsave;
        asm!("mov cr4, {}", in(reg) cr4, options(nostack, preserves_flags));
    }
    // The guest starts from XCR0's reset value, x87 only.
    if xsave {
        xsetbv(1);
    }
}

/// Loads XCR0 with `value`, which `resume::validate_xcr0` (or the reset
/// value 1) vouches XSETBV takes without #GP; CR4.OSXSAVE is set.
#[allow(clippy::cast_possible_truncation, reason = "EDX:EAX halves")]
pub fn xsetbv(value: u64) {
    // SAFETY: ring 0 with CR4.OSXSAVE set (`init`) and a value the CPU
    // supports (x87 set, AVX only with SSE, bits from CPUID 0xD.0): no
    // #GP. XCR0 only selects the state XSAVE covers; the host uses none.
    unsafe {
        asm!("xsetbv", in("ecx") 0u32, in("eax") value as u32, in("edx") (value >> 32) as u32,
            options(nomem, nostack, preserves_flags));
    }
}

/// Loads the GDT register again. A VMX exit sets its limit to 0xffff (SDM
/// vol. 3C, 28.5.2), which would let ring 3 load selectors that name the
/// stub's data past the 7-entry GDT as descriptors.
#[allow(clippy::cast_possible_truncation, reason = "the GDT limit is 55")]
pub fn reload_gdt() {
    // SAFETY: the same GDT, with its real limit; the loaded segment
    // registers keep their hidden parts.
    unsafe {
        let gdtp = DescriptorPointer {
            limit: (core::mem::size_of::<[u64; 7]>() - 1) as u16,
            base: (&raw const GDT[id()]) as u64,
        };
        asm!("lgdt [{}]", in(reg) &gdtp, options(readonly, nostack, preserves_flags));
    }
}

/// Whether SMAP is on (then ring 0 reaches user pages only under STAC).
static SMAP: AtomicBool = AtomicBool::new(false);

/// Runs `f`, which reads or writes a server's memory that the caller
/// checked, with SMAP's protection lifted (STAC) for just that long.
pub fn with_user_access<R>(f: impl FnOnce() -> R) -> R {
    let smap = SMAP.load(Ordering::Relaxed);
    if smap {
        // SAFETY: STAC exists (CPUID said SMAP); it only sets RFLAGS.AC.
        unsafe { asm!("stac", options(nomem, nostack)) };
    }
    let r = f();
    if smap {
        // SAFETY: as above; CLAC clears RFLAGS.AC again.
        unsafe { asm!("clac", options(nomem, nostack)) };
    }
    r
}

/// Whether page-table entries may carry the NX bit.
pub fn nx_enabled() -> bool {
    rdmsr(MSR_EFER) & EFER_NXE != 0
}

/// Enters ring 3 at `rip` with `rsp`, all other registers zero, interrupts
/// on ([`USER_RFLAGS`]).
pub fn enter_user(rip: u64, rsp: u64) -> ! {
    // SAFETY: the caller loaded an address space in which `rip` and `rsp`
    // are mapped for ring 3; the selectors are the GDT's user ones.
    unsafe {
        asm!(
            "push {ss}",
            "push {rsp}",
            "push {rflags}",
            "push {cs}",
            "push {rip}",
            "xor eax, eax", "xor ebx, ebx", "xor ecx, ecx", "xor edx, edx",
            "xor esi, esi", "xor edi, edi", "xor ebp, ebp",
            "xor r8d, r8d", "xor r9d, r9d", "xor r10d, r10d", "xor r11d, r11d",
            "xor r12d, r12d", "xor r13d, r13d", "xor r14d, r14d", "xor r15d, r15d",
            "iretq",
            ss = in(reg) u64::from(USER_DS),
            rsp = in(reg) rsp,
            rflags = const USER_RFLAGS,
            cs = in(reg) u64::from(USER_CS),
            rip = in(reg) rip,
            options(noreturn)
        )
    }
}

/// Stops the CPU for good.
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: interrupts are off; HLT just parks the core.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

/// The TSC frequency, measured once against PIT channel 2 (the speaker
/// channel, gated by port 0x61) over 10 ms: 0 if the PIT never counted down.
pub fn tsc_hz() -> u64 {
    const PIT_HZ: u64 = 1_193_182;
    const COUNT: u64 = PIT_HZ / 100;
    outb(0x61, (inb(0x61) & !0x02) | 0x01); // gate channel 2 on, speaker off
    outb(0x43, 0xb0); // channel 2, lobyte/hibyte, mode 0 (interrupt on terminal count)
    let [lo, hi, ..] = COUNT.to_le_bytes();
    outb(0x42, lo);
    outb(0x42, hi);
    let start = rdtsc();
    // OUT2 (port 0x61 bit 5) goes high at terminal count; give up after ~1 s of spinning.
    let mut spins = 0u64;
    while inb(0x61) & 0x20 == 0 {
        spins += 1;
        if spins > 50_000_000 {
            return 0;
        }
    }
    (rdtsc() - start) * 100
}
