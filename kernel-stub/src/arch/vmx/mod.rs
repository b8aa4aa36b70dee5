//! Intel VMX (Intel SDM vol. 3C, chapters 24-29): VMXON, a VMCS set up
//! from the capability MSRs, EPT, VMLAUNCH/VMRESUME, and the translation of
//! an exit into the same `ExitRecord` that SVM produces.
//!
//! The record of a VMX exit (`arch` = `VcpuArch::Vmx`):
//! - `exit_code`: the basic exit reason (bits 15:0 of the exit reason); for
//!   an entry that failed with an exit (bit 31 set) the full exit reason,
//!   and `u64::MAX` when VMLAUNCH/VMRESUME itself failed. The stub reports
//!   both kinds itself (`Vcpu::entry_failure`); no server sees them.
//! - `exit_info1`: the exit qualification (an I/O exit keeps the VMX format,
//!   SDM table 28-5, which the vmm-server decodes).
//! - `exit_info2`: the guest-physical address for EPT violations and
//!   misconfigurations (48, 49); for exception or NMI exits (0) the VM-exit
//!   interruption information in bits 31:0 and its error code in bits
//!   63:32; for I/O exits the guest-linear address (string I/O); else 0.
//! - `exit_int_info`: the IDT-vectoring information in SVM EXITINTINFO form.
//! - `next_rip`: RIP + the VM-exit instruction length for exits caused by
//!   an instruction, else 0.
//! - `cr0`/`cr4`: what the guest sees (the read shadows for the bits VMX
//!   fixes); `insn_len` is 0: VMX does not fetch the instruction.
//!
//! With nested paging the guest runs with EPT (the mmu-server's tables,
//! rooted where its `SET_NESTED_ROOT` says) and unrestricted guest, so it
//! may start in real mode or with paging off; a CPU without them cannot run
//! it and `check_nested` says so. With shadow paging (`Paging::Shadow`)
//! there is no EPT: CR3 loads and stores and every #PF exit (to the
//! mmu-server, which decodes these VMX records itself), the guest owns no
//! CR0/CR4 bit (it reads the read shadows, which `show_guest` sets to its
//! own values, and a write that changes one exits), and `SET_PAGING`
//! loads CR0/CR4/EFER, the IA-32e mode entry control and CR3 = the shadow
//! root (the entry loads PAE PDPTEs from it). Without unrestricted guest
//! (it needs EPT) VMX fixes CR0.PE and PG to 1: real mode cannot run under
//! shadow paging on VMX, and the stub refuses it (SVM runs it as "paged
//! real mode"). Every port, every MSR, HLT, MWAIT,
//! MONITOR, external interrupts and NMIs exit; CPUID, INVD, XSETBV, the VMX
//! instructions and triple faults (reason 2) always do.

mod vmcs;

use crate::cpu;
use crate::memory::{self, OutOfMemory};
use core::arch::{asm, global_asm};
use core::fmt;
use core::sync::atomic::{AtomicU8, Ordering};
use ipc_proto::manifest::EntryMode;
use ipc_proto::{
    ExitRecord, GuestRegs, PagingState, Resume, ResumeFlags, Segment, VcpuArch, ABI_VERSION,
};
use kernel_stub::resume::GuestMode;
use kernel_stub::vmx_rules::{self as rules, *};
use vmcs::*;

use super::{Entry, Paging};

/// Why VMX cannot be used on this CPU, as one sentence.
pub fn check_support() -> Result<(), &'static str> {
    if cpu::cpuid(1).ecx & (1 << 5) == 0 {
        return Err("VMX not available on this CPU");
    }
    let fc = cpu::rdmsr(IA32_FEATURE_CONTROL);
    if fc & 1 != 0 && fc & (1 << 2) == 0 {
        return Err("VMX is disabled by the firmware (IA32_FEATURE_CONTROL locked without VMXON outside SMX)");
    }
    let caps = read_caps();
    if !caps
        .proc
        .allows(PROC_HLT_EXITING | PROC_UNCONDITIONAL_IO_EXITING)
        || !caps
            .exit
            .allows(EXIT_HOST_ADDRESS_SPACE_SIZE | EXIT_SAVE_EFER | EXIT_LOAD_EFER)
        || !caps.entry.allows(ENTRY_LOAD_EFER)
    {
        return Err("the CPU's VMX lacks HLT or I/O exiting, or loading and saving EFER");
    }
    Ok(())
}

/// Why VMX cannot run a guest with nested paging (EPT) on this CPU. Call
/// after `check_support`.
pub fn check_nested() -> Result<(), &'static str> {
    let caps = read_caps();
    if !caps.proc.allows(PROC_SECONDARY_CONTROLS) || !caps.proc2.allows(PROC2_ENABLE_EPT) {
        return Err("EPT not available on this CPU; run with --mmu shadow");
    }
    if caps.ept & EPT_CAP_WALK_LENGTH_4 == 0
        || caps.ept & (EPT_CAP_MEMORY_TYPE_WB | EPT_CAP_MEMORY_TYPE_UC) == 0
    {
        return Err("the CPU's EPT has no 4-level walk or no write-back/uncacheable memory type");
    }
    if !caps.proc2.allows(PROC2_UNRESTRICTED_GUEST) {
        return Err("VMX without unrestricted guest cannot run a guest that starts in real mode or with paging off (the multiboot hand-over) with EPT; run with --mmu shadow");
    }
    Ok(())
}

/// The capability MSRs; the TRUE_* controls when IA32_VMX_BASIC bit 55 says
/// they exist (SDM vol. 3D, A.2). Call only on a CPU with VMX.
fn read_caps() -> Caps {
    let basic = cpu::rdmsr(IA32_VMX_BASIC);
    let ctl = |plain: u32, index: u32| {
        let msr = if basic & (1 << 55) != 0 {
            IA32_VMX_TRUE_PINBASED_CTLS + index
        } else {
            plain
        };
        Allowed::from_msr(cpu::rdmsr(msr))
    };
    let proc = ctl(IA32_VMX_PROCBASED_CTLS, 1);
    let proc2 = if proc.allows(PROC_SECONDARY_CONTROLS) {
        Allowed::from_msr(cpu::rdmsr(IA32_VMX_PROCBASED_CTLS2))
    } else {
        Allowed::default()
    };
    // The EPT/VPID capability MSR exists when EPT or VPID (bit 5) may be enabled.
    let ept = if proc2.may_be_one & (PROC2_ENABLE_EPT | 1 << 5) != 0 {
        cpu::rdmsr(IA32_VMX_EPT_VPID_CAP)
    } else {
        0
    };
    Caps {
        pin: ctl(IA32_VMX_PINBASED_CTLS, 0),
        proc,
        proc2,
        exit: ctl(IA32_VMX_EXIT_CTLS, 2),
        entry: ctl(IA32_VMX_ENTRY_CTLS, 3),
        cr0_fixed0: cpu::rdmsr(IA32_VMX_CR0_FIXED0),
        cr0_fixed1: cpu::rdmsr(IA32_VMX_CR0_FIXED1),
        cr4_fixed0: cpu::rdmsr(IA32_VMX_CR4_FIXED0),
        cr4_fixed1: cpu::rdmsr(IA32_VMX_CR4_FIXED1),
        ept,
        misc: cpu::rdmsr(IA32_VMX_MISC),
    }
}

/// Whether EPT may hold 2 MiB leaves (what the mmu-server builds with).
/// Call after `check_support`.
pub fn ept_large_pages() -> bool {
    read_caps().ept & EPT_CAP_2MB_PAGES != 0
}

/// The guest's registers that VMX does not keep in the VMCS; the layout is
/// what `vmx_enter` expects.
#[repr(C)]
struct GuestFrame {
    /// RAX..R15 (RSP, RIP and RFLAGS live in the VMCS).
    regs: GuestRegs,
    cr2: u64,
}

/// Why the guest could not be entered.
#[derive(Clone, Copy, Debug)]
pub enum EntryFailure {
    /// VMXON, VMCLEAR, VMPTRLD or a VMWRITE of `field` failed while setting up.
    Setup { what: &'static str, field: u32 },
    /// Something this back end does not do yet.
    Unsupported(&'static str),
    /// VMLAUNCH or VMRESUME failed with VMfailInvalid: no current VMCS.
    NoCurrentVmcs { launch: bool },
    /// VMLAUNCH or VMRESUME failed with VMfailValid and this
    /// VM-instruction error; `culprit` is the field the stub found wrong.
    Instruction {
        launch: bool,
        error: u64,
        culprit: Option<Culprit>,
    },
    /// The entry failed with an exit (exit reason bit 31 set): 33 invalid
    /// guest state, 34 MSR loading, 41 machine check.
    Exit {
        reason: u32,
        qualification: u64,
        culprit: Option<Culprit>,
    },
}

impl fmt::Display for EntryFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let insn = |launch: bool| if launch { "VMLAUNCH" } else { "VMRESUME" };
        match self {
            Self::Setup { what, field } => {
                write!(f, "VMX set-up failed: {what} (VMCS field {field:#06x})")
            }
            Self::Unsupported(what) => write!(f, "VMX cannot do this yet: {what}"),
            Self::NoCurrentVmcs { launch } => {
                write!(
                    f,
                    "{} failed with VMfailInvalid (no current VMCS)",
                    insn(*launch)
                )
            }
            Self::Instruction {
                launch,
                error,
                culprit,
            } => {
                write!(
                    f,
                    "{} failed: VM-instruction error {error} ({})",
                    insn(*launch),
                    instruction_error(*error)
                )?;
                match culprit {
                    Some(c) => write!(f, "; {c}"),
                    None => Ok(()),
                }
            }
            Self::Exit {
                reason,
                qualification,
                culprit,
            } => {
                let what = match reason & 0xffff {
                    33 => "invalid guest state",
                    34 => "MSR loading",
                    41 => "machine-check event",
                    _ => "unknown reason",
                };
                write!(
                    f,
                    "VM entry failed with exit reason {reason:#x} ({what}), qualification {qualification:#x}"
                )?;
                match culprit {
                    Some(c) => write!(f, "; {c}"),
                    None => Ok(()),
                }
            }
        }
    }
}

/// One virtual CPU: the current VMCS and the registers VMX does not switch.
pub struct Vcpu {
    frame: GuestFrame,
    caps: Caps,
    /// The control fields as programmed (interrupt-window exiting varies).
    controls: Controls,
    /// Bits of CR0/CR4 the guest reads from the read shadows.
    cr0_mask: u64,
    cr4_mask: u64,
    host_cr3: u64,
    /// Shadow paging: no EPT, the mmu-server's tables in CR3.
    shadow: bool,
    /// Nested paging: the EPTP of the mmu-server's root, 0 before
    /// `SET_NESTED_ROOT`.
    eptp: u64,
    launched: bool,
    failure: Option<EntryFailure>,
    sequence: u64,
    /// Its VMCS: VMREAD, VMWRITE and entries use the current one, so it
    /// is made current whenever its VM's turn comes (`load`).
    vmcs: u64,
}

/// The CPUs (bit n: CPU n) that have executed VMXON.
static VMX_ON: AtomicU8 = AtomicU8::new(0);

fn read_cr0() -> u64 {
    let v;
    // SAFETY: reading CR0 has no side effects.
    unsafe { asm!("mov {}, cr0", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

fn read_cr4() -> u64 {
    let v;
    // SAFETY: reading CR4 has no side effects.
    unsafe { asm!("mov {}, cr4", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

fn read_cr3() -> u64 {
    let v;
    // SAFETY: reading CR3 has no side effects.
    unsafe { asm!("mov {}, cr3", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// Runs a VMX instruction with a memory operand holding a physical
/// address (VMXON, VMCLEAR, VMPTRLD); `false` if it failed.
macro_rules! vmx_pa_insn {
    ($insn:literal, $pa:expr) => {{
        let pa: u64 = $pa;
        let ok: u8;
        // SAFETY: the operand is a frame this VCPU owns, prepared with the
        // VMCS revision identifier; a failure only sets the flags.
        unsafe {
            asm!(concat!($insn, " [{pa}]"), "seta {ok}", pa = in(reg) &pa, ok = out(reg_byte) ok, options(nostack))
        };
        ok != 0
    }};
}

/// A zeroed frame that starts with the VMCS revision identifier.
#[allow(
    clippy::cast_possible_truncation,
    reason = "the revision identifier is bits 30:0 of IA32_VMX_BASIC"
)]
fn vmx_region(basic: u64) -> Result<u64, OutOfMemory> {
    let pa = memory::alloc_frame()?;
    // SAFETY: a fresh identity-mapped frame of ours.
    unsafe { (pa as *mut u32).write_volatile(basic as u32 & 0x7fff_ffff) };
    Ok(pa)
}

/// Turns VMX on (once): IA32_FEATURE_CONTROL, the fixed CR0/CR4 bits of
/// VMX operation, VMXON. `Err` names the step that failed.
fn vmx_on(caps: &Caps) -> Result<Result<(), &'static str>, OutOfMemory> {
    let me = 1u8 << cpu::id();
    if VMX_ON.load(Ordering::Relaxed) & me != 0 {
        return Ok(Ok(()));
    }
    let fc = cpu::rdmsr(IA32_FEATURE_CONTROL);
    if fc & 1 == 0 {
        cpu::wrmsr(IA32_FEATURE_CONTROL, fc | 1 | 1 << 2);
    }
    let cr0 = (read_cr0() | caps.cr0_fixed0) & caps.cr0_fixed1;
    let cr4 = (read_cr4() | caps.cr4_fixed0 | CR4_VMXE) & caps.cr4_fixed1;
    // SAFETY: FIXED0/FIXED1 only ask for NE (numeric errors reported
    // natively: the stub uses no x87) and VMXE on top of what runs now.
    unsafe { asm!("mov cr0, {}", "mov cr4, {}", in(reg) cr0, in(reg) cr4, options(nostack)) };
    let region = vmx_region(cpu::rdmsr(IA32_VMX_BASIC))?;
    if !vmx_pa_insn!("vmxon", region) {
        return Ok(Err("VMXON"));
    }
    VMX_ON.fetch_or(me, Ordering::Relaxed);
    Ok(Ok(()))
}

/// Turns VMX on for this CPU (another CPU at its start); `Err` names the
/// step that failed.
pub fn enable() -> Result<(), &'static str> {
    vmx_on(&read_caps()).unwrap_or(Err("no memory for the VMXON region"))
}

/// Segment access rights of the guest's initial segments.
const AR_CODE32: u32 = 0xc09b;
const AR_DATA32: u32 = 0xc093;
const AR_CODE16: u32 = 0x9b;
const AR_DATA16: u32 = 0x93;
const AR_TSS_BUSY: u32 = 0x8b;

/// Enables VMX and builds a VCPU that translates guest memory as `paging`
/// says and starts in the state `entry` describes. A failure of VMX itself
/// (not of memory) is reported by the first `run`.
const MSR_EFER: u32 = 0xc000_0080;

/// An MSR bitmap (Intel SDM vol. 3, 24.6.9: read-low, read-high, write-low,
/// write-high, 1 KiB each) where every MSR exits but `pass` (and EFER with
/// `efer`).
fn msr_bitmap_passing(pass: &[u32], efer: bool) -> Result<u64, OutOfMemory> {
    let page = memory::alloc_frame()?;
    // SAFETY: a fresh frame the stub owns, identity-mapped.
    let bits = unsafe { &mut *(page as *mut [u8; 4096]) };
    bits.fill(0xff);
    for &msr in pass.iter().chain(efer.then_some(&MSR_EFER)) {
        let (half, index) = if msr >= 0xc000_0000 {
            (1024, msr - 0xc000_0000)
        } else {
            (0, msr)
        };
        for base in [half, 2048 + half] {
            bits[base + (index / 8) as usize] &= !(1 << (index % 8));
        }
    }
    Ok(page)
}

pub fn create_vcpu(paging: Paging, entry: &Entry) -> Result<Vcpu, OutOfMemory> {
    let caps = read_caps();
    let mut v = Vcpu {
        frame: GuestFrame {
            regs: GuestRegs {
                rax: entry.rax,
                rbx: entry.rbx,
                rsi: entry.rsi,
                // A BIOS boots from the first hard disk with DL = 0x80.
                rdx: if entry.mode == EntryMode::Real16 {
                    0x80
                } else {
                    0
                },
                ..GuestRegs::default()
            },
            cr2: 0,
        },
        caps,
        controls: Controls::default(),
        cr0_mask: 0,
        cr4_mask: 0,
        host_cr3: 0,
        shadow: matches!(paging, Paging::Shadow),
        eptp: 0,
        launched: false,
        failure: None,
        sequence: 0,
        vmcs: 0,
    };
    let nested = matches!(paging, Paging::Nested);
    if let Err(what) = vmx_on(&caps)? {
        v.failure = Some(EntryFailure::Setup { what, field: 0 });
        return Ok(v);
    }
    let vmcs = vmx_region(cpu::rdmsr(IA32_VMX_BASIC))?;
    v.vmcs = vmcs;
    if !vmx_pa_insn!("vmclear", vmcs) || !vmx_pa_insn!("vmptrld", vmcs) {
        v.failure = Some(EntryFailure::Setup {
            what: "VMCLEAR/VMPTRLD",
            field: 0,
        });
        return Ok(v);
    }
    // Shadow paging: CR3 accesses and every #PF exit (PFEC mask
    // and match 0); no EPT, so no unrestricted guest either. MSRs exit but
    // those that are the guest's own state: the VMCS holds FS/GS base and
    // SYSENTER_*, the host does not use STAR/LSTAR/CSTAR/SFMASK/KernelGSBase,
    // and with EPT, EFER is saved and loaded at exit and entry (a shadow
    // MMU must see EFER writes). TSC_AUX, last, is the guest's with RDTSCP.
    let (rdtscp_proc, rdtscp_proc2) = rules::rdtscp_controls(cpu::has_rdtscp(), &caps);
    const GUEST_OWN_MSRS: [u32; 11] = [
        0xc000_0081,
        0xc000_0082,
        0xc000_0083,
        0xc000_0084,
        0xc000_0100,
        0xc000_0101,
        0xc000_0102,
        0x174,
        0x175,
        0x176,
        cpu::MSR_TSC_AUX,
    ];
    let own = &GUEST_OWN_MSRS[..10 + usize::from(rdtscp_proc2 != 0)];
    let msr_bitmap = msr_bitmap_passing(own, nested)?;
    // #DB and #AC always exit (a delivery that raises them again loops in
    // the CPU, CVE-2015-5307/8104); #PF too under shadow paging.
    let db_ac = (1 << 1) | (1 << 17);
    let (proc_paging, proc2, exceptions) = match nested {
        true => (
            PROC_SECONDARY_CONTROLS,
            PROC2_ENABLE_EPT | PROC2_UNRESTRICTED_GUEST,
            db_ac,
        ),
        false => (
            PROC_CR3_LOAD_EXITING | PROC_CR3_STORE_EXITING,
            0,
            db_ac | 1 << 14,
        ),
    };
    v.controls = Controls {
        pin: caps
            .pin
            .adjust(PIN_EXTERNAL_INTERRUPT_EXITING | PIN_NMI_EXITING),
        proc: caps.proc.adjust(
            PROC_HLT_EXITING
                | PROC_UNCONDITIONAL_IO_EXITING
                | PROC_MWAIT_EXITING
                | PROC_MONITOR_EXITING
                | PROC_RDPMC_EXITING
                | PROC_USE_TSC_OFFSETTING
                | proc_paging
                | rdtscp_proc
                | PROC_USE_MSR_BITMAPS,
        ) & !PROC_USE_IO_BITMAPS,
        proc2: caps.proc2.adjust(proc2 | rdtscp_proc2),
        exit: caps
            .exit
            .adjust(EXIT_HOST_ADDRESS_SPACE_SIZE | EXIT_SAVE_EFER | EXIT_LOAD_EFER),
        entry: caps.entry.adjust(ENTRY_LOAD_EFER) & !ENTRY_IA32E_MODE_GUEST,
        ..Controls::default()
    };
    let c = v.controls;
    for (field, value) in [
        (PIN_CONTROLS, c.pin),
        (PROC_CONTROLS, c.proc),
        (PROC2_CONTROLS, c.proc2),
        (EXIT_CONTROLS, c.exit),
        (ENTRY_CONTROLS, c.entry),
        (EXCEPTION_BITMAP, exceptions),
        (CR3_TARGET_COUNT, 0),
        (ENTRY_INTERRUPTION_INFO, 0),
        (0x4006, 0), // page-fault error-code mask
        (0x4008, 0), // page-fault error-code match
        (0x400e, 0), // VM-exit MSR-store count
        (0x4010, 0), // VM-exit MSR-load count
        (0x4014, 0), // VM-entry MSR-load count
    ] {
        v.write(field, u64::from(value));
    }
    // The EPTP comes with the mmu-server's SET_NESTED_ROOT.
    v.write(MSR_BITMAP, msr_bitmap);
    v.write(VMCS_LINK_POINTER, u64::MAX);
    v.host_state();
    v.guest_state(entry);
    Ok(v)
}

/// Drops cached EPT translations for `eptp` (single context where the CPU
/// has it, else all contexts): before its first use, and after the
/// mmu-server changed its entries.
fn invept(eptp: u64, ept_cap: u64) {
    let kind: u64 = if ept_cap & EPT_CAP_INVEPT_SINGLE != 0 {
        1
    } else if ept_cap & EPT_CAP_INVEPT_ALL != 0 {
        2
    } else {
        return;
    };
    if ept_cap & EPT_CAP_INVEPT == 0 {
        return;
    }
    let descriptor = [eptp, 0u64];
    // SAFETY: INVEPT only drops cached translations; the type is one the
    // CPU reports and the descriptor is a valid EPTP with zero high half.
    unsafe {
        asm!("invept {k}, [{d}]", k = in(reg) kind, d = in(reg) &descriptor, options(nostack))
    };
}

/// The stub's own GDT, IDT and TR, as the host-state area needs them.
fn host_tables() -> (u64, u64, u16, u64) {
    let mut gdtr = [0u8; 10];
    let mut idtr = [0u8; 10];
    let tr: u16;
    // SAFETY: SGDT/SIDT store 10 bytes into the buffers; STR reads a register.
    unsafe {
        asm!("sgdt [{}]", in(reg) &mut gdtr, options(nostack));
        asm!("sidt [{}]", in(reg) &mut idtr, options(nostack));
        asm!("str {:x}", out(reg) tr, options(nomem, nostack));
    }
    let base = |b: &[u8; 10]| {
        let mut v = [0u8; 8];
        v.copy_from_slice(&b[2..10]);
        u64::from_le_bytes(v)
    };
    let (gdt, idt) = (base(&gdtr), base(&idtr));
    // SAFETY: TR selects a 16-byte TSS descriptor in the stub's GDT,
    // which lives in the identity-mapped stub image.
    let (lo, hi) = unsafe {
        let d = (gdt + u64::from(tr & !7)) as *const u64;
        (d.read_volatile(), d.add(1).read_volatile())
    };
    let tr_base = ((lo >> 16) & 0xff_ffff) | (((lo >> 56) & 0xff) << 24) | (hi << 32);
    (gdt, idt, tr, tr_base)
}

global_asm!(
    // fn vmx_enter(frame: *mut GuestFrame /* rdi */, launched: u64 /* rsi */) -> u64
    // 0: the guest ran and exited; 1: VMfailInvalid; 2: VMfailValid.
    // VMX switches no general-purpose register but RSP: the host's
    // callee-saved ones are pushed, and the host RSP in the VMCS is set to
    // this frame, so that the exit (host RIP = vmx_exit) pops them.
    ".globl vmx_enter",
    "vmx_enter:",
    "push rbx",
    "push rbp",
    "push r12",
    "push r13",
    "push r14",
    "push r15",
    "push rdi",
    "mov rax, 0x6c14", // HOST_RSP
    "vmwrite rax, rsp",
    "jbe 3f",
    "mov rax, [rdi + 144]",
    "mov cr2, rax",
    "cmp rsi, 0", // ZF survives the moves below
    "mov rax, [rdi]",
    "mov rbx, [rdi + 8]",
    "mov rcx, [rdi + 16]",
    "mov rdx, [rdi + 24]",
    "mov rsi, [rdi + 32]",
    "mov rbp, [rdi + 48]",
    "mov r8, [rdi + 64]",
    "mov r9, [rdi + 72]",
    "mov r10, [rdi + 80]",
    "mov r11, [rdi + 88]",
    "mov r12, [rdi + 96]",
    "mov r13, [rdi + 104]",
    "mov r14, [rdi + 112]",
    "mov r15, [rdi + 120]",
    "mov rdi, [rdi + 40]",
    "je 2f",
    "vmresume",
    "jmp 3f",
    "2:",
    "vmlaunch",
    "3:", // the entry failed: CF set is VMfailInvalid, ZF set VMfailValid
    "mov eax, 2",
    "mov ecx, 1",
    "cmovc eax, ecx",
    "jmp 5f",
    ".globl vmx_exit",
    "vmx_exit:",
    "push rax",
    "mov rax, [rsp + 8]",
    "mov [rax + 8], rbx",
    "mov [rax + 16], rcx",
    "mov [rax + 24], rdx",
    "mov [rax + 32], rsi",
    "mov [rax + 40], rdi",
    "mov [rax + 48], rbp",
    "mov [rax + 64], r8",
    "mov [rax + 72], r9",
    "mov [rax + 80], r10",
    "mov [rax + 88], r11",
    "mov [rax + 96], r12",
    "mov [rax + 104], r13",
    "mov [rax + 112], r14",
    "mov [rax + 120], r15",
    "pop rbx",
    "mov [rax], rbx",
    "mov rbx, cr2",
    "mov [rax + 144], rbx",
    "xor eax, eax",
    "5:",
    "add rsp, 8",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop rbp",
    "pop rbx",
    "ret",
);

extern "C" {
    fn vmx_enter(frame: *mut GuestFrame, launched: u64) -> u64;
    fn vmx_exit();
}

impl Vcpu {
    /// VMWRITE; the first failure is kept and reported by `run`.
    fn write(&mut self, field: u32, value: u64) {
        if !vmcs::write(field, value) && self.failure.is_none() {
            self.failure = Some(EntryFailure::Setup {
                what: "VMWRITE",
                field,
            });
        }
    }

    fn host_state(&mut self) {
        let (gdt, idt, tr, tr_base) = host_tables();
        let ds = u64::from(cpu::KERNEL_DS);
        for (field, value) in [
            (HOST_CS_SELECTOR, u64::from(cpu::KERNEL_CS)),
            (HOST_SS_SELECTOR, ds),
            (HOST_DS_SELECTOR, ds),
            (HOST_ES_SELECTOR, ds),
            (HOST_FS_SELECTOR, 0),
            (HOST_GS_SELECTOR, 0),
            (HOST_TR_SELECTOR, u64::from(tr)),
            (HOST_CR0, read_cr0()),
            (HOST_CR4, read_cr4()),
            (HOST_FS_BASE, 0),
            (HOST_GS_BASE, 0),
            (HOST_TR_BASE, tr_base),
            (HOST_GDTR_BASE, gdt),
            (HOST_IDTR_BASE, idt),
            (0x4c00, 0), // host IA32_SYSENTER_CS
            (0x6c10, 0), // host IA32_SYSENTER_ESP
            (0x6c12, 0), // host IA32_SYSENTER_EIP
            (HOST_IA32_EFER, cpu::rdmsr(cpu::MSR_EFER)),
            (HOST_RIP, vmx_exit as *const () as u64),
        ] {
            self.write(field, value);
        }
    }

    fn guest_state(&mut self, entry: &Entry) {
        let caps = self.caps;
        // With unrestricted guest, PE and PG are the guest's own. Under
        // shadow paging the guest owns no bit: it reads the read shadows
        // (its values as the mmu-server holds them) and every write that
        // changes one exits.
        let exempt = if self.shadow { 0 } else { CR0_PE | CR0_PG };
        self.cr0_mask = ((caps.cr0_fixed0 & !exempt) | !caps.cr0_fixed1) & 0xffff_ffff;
        // Nested: the guest owns only the CR4 bits every CPU has; a write
        // that changes any other (OSXSAVE, PCIDE, SMEP...) exits to the
        // vmm-server, which refuses it or applies it with `SET_PAGING`.
        let cr4_owned = ipc_proto::x86::cr4::NESTED_GUEST_OWNED;
        self.cr4_mask = (caps.cr4_fixed0 | !caps.cr4_fixed1 | !cr4_owned) & 0xffff_ffff;
        if self.shadow {
            (self.cr0_mask, self.cr4_mask) = (u64::MAX, u64::MAX);
        }
        // The guest reads CR0.NE = 1 (VMX forces it), so a guest that
        // sets NE does not exit; CR4.VMXE reads as 0.
        let (cs, ds, limit, cr0_seen) = match entry.mode {
            EntryMode::Flat32 => (AR_CODE32, AR_DATA32, 0xffff_ffff, 0x31),
            EntryMode::Real16 => (AR_CODE16, AR_DATA16, 0xffff, 0x30),
        };
        let cr0 = (cr0_seen | (caps.cr0_fixed0 & !exempt)) & caps.cr0_fixed1;
        let cr4 = caps.cr4_fixed0 & caps.cr4_fixed1;
        let flat = |sel: u16| (u64::from(sel), limit);
        let (code_sel, data_sel) = match entry.mode {
            EntryMode::Flat32 => (0x08, 0x10),
            EntryMode::Real16 => (0, 0),
        };
        for (seg, ar, (sel, lim)) in [
            (ES, ds, flat(data_sel)),
            (CS, cs, flat(code_sel)),
            (SS, ds, flat(data_sel)),
            (DS, ds, flat(data_sel)),
            (FS, ds, flat(data_sel)),
            (GS, ds, flat(data_sel)),
            (LDTR, AR_UNUSABLE, (0, 0)),
            (TR, AR_TSS_BUSY, (0, 0xffff)),
        ] {
            self.write(GUEST_SELECTOR + 2 * seg, sel);
            self.write(GUEST_LIMIT + 2 * seg, lim);
            self.write(GUEST_AR + 2 * seg, u64::from(ar));
            self.write(GUEST_BASE + 2 * seg, 0);
        }
        for (field, value) in [
            (GUEST_GDTR_BASE, 0),
            (GUEST_IDTR_BASE, 0),
            (GUEST_GDTR_LIMIT, 0xffff),
            (GUEST_IDTR_LIMIT, 0xffff),
            (CR0_GUEST_HOST_MASK, self.cr0_mask),
            (CR4_GUEST_HOST_MASK, self.cr4_mask),
            (CR0_READ_SHADOW, cr0_seen),
            (CR4_READ_SHADOW, 0),
            (GUEST_CR0, cr0),
            (GUEST_CR3, 0),
            (GUEST_CR4, cr4),
            (GUEST_IA32_EFER, 0),
            (GUEST_DR7, 0x400),
            (GUEST_RSP, 0),
            (GUEST_RIP, entry.rip),
            (GUEST_RFLAGS, 2),
            (GUEST_INTERRUPTIBILITY, 0),
            (GUEST_ACTIVITY_STATE, 0),
            (0x2802, 0), // guest IA32_DEBUGCTL
            (0x482a, 0), // guest IA32_SYSENTER_CS
            (0x6822, 0), // guest pending debug exceptions
            (0x6824, 0), // guest IA32_SYSENTER_ESP
            (0x6826, 0), // guest IA32_SYSENTER_EIP
        ] {
            self.write(field, value);
        }
    }

    /// Makes its VMCS the current one (several VMs: another VM's may be);
    /// VMPTRLD keeps the launch state (SDM vol. 3C, 24.1).
    pub fn load(&mut self) {
        if self.failure.is_none() && !vmx_pa_insn!("vmptrld", self.vmcs) {
            self.failure = Some(EntryFailure::Setup {
                what: "VMPTRLD",
                field: 0,
            });
        }
    }

    /// Runs the guest until its next exit and describes the exit. A failed
    /// entry gives a record with the exit code described in the module
    /// documentation; `entry_failure` then says what went wrong.
    pub fn run(&mut self) -> ExitRecord {
        self.sequence += 1;
        if self.failure.is_none() {
            let cr3 = read_cr3();
            if cr3 != self.host_cr3 {
                self.host_cr3 = cr3;
                self.write(HOST_CR3, cr3);
            }
        }
        if self.failure.is_some() {
            return self.record(u64::MAX);
        }
        // SAFETY: the current VMCS belongs to this VCPU and its host state
        // returns to `vmx_exit` on this stack with the stub's own tables;
        // `vmx_enter` preserves the callee-saved registers either way.
        let outcome = unsafe { vmx_enter(&mut self.frame, u64::from(self.launched)) };
        let launch = !self.launched;
        crate::cpu::reload_gdt();
        crate::cpu::reload_tr();
        match outcome {
            0 => self.launched = true,
            1 => {
                self.failure = Some(EntryFailure::NoCurrentVmcs { launch });
                return self.record(u64::MAX);
            }
            _ => {
                let error = vmcs::read(VM_INSTRUCTION_ERROR).unwrap_or(0);
                let culprit = match error {
                    7 => control_culprit(&self.read_controls(), &self.caps),
                    8 => host_culprit(&self.read_host(), self.controls.exit, &self.caps),
                    _ => None,
                };
                self.failure = Some(EntryFailure::Instruction {
                    launch,
                    error,
                    culprit,
                });
                return self.record(u64::MAX);
            }
        }
        #[allow(
            clippy::cast_possible_truncation,
            reason = "the exit reason is a 32-bit field"
        )]
        let reason = vmcs::read(EXIT_REASON).unwrap_or(0) as u32;
        // Interrupt-window exiting was for this entry only -- unless the
        // exit is a PAUSE, the scheduler's yield: the guest is entered
        // again as it was, with the window it asked for.
        if self.controls.proc & PROC_INTERRUPT_WINDOW_EXITING != 0
            && u64::from(reason) != ipc_proto::exit::vmx_exit::PAUSE
        {
            self.controls.proc &= !PROC_INTERRUPT_WINDOW_EXITING;
            self.write(PROC_CONTROLS, u64::from(self.controls.proc));
        }
        if reason & (1 << 31) != 0 {
            let culprit = if reason & 0xffff == 33 {
                guest_culprit(&self.read_guest(), &self.read_controls(), &self.caps)
            } else {
                None
            };
            self.failure = Some(EntryFailure::Exit {
                reason,
                qualification: vmcs::read(EXIT_QUALIFICATION).unwrap_or(0),
                culprit,
            });
            return self.record(u64::from(reason));
        }
        self.record(u64::from(reason & 0xffff))
    }

    /// Turns PAUSE exiting on or off for the next entries (the
    /// scheduler's, `vm`), where the CPU allows it. The exit comes
    /// instead of the PAUSE (SDM vol. 3C, 26.1.3), so the guest is
    /// entered again as it was.
    pub fn set_pause_exiting(&mut self, on: bool) {
        let bit = if on && self.caps.proc.allows(PROC_PAUSE_EXITING) {
            PROC_PAUSE_EXITING
        } else {
            0
        };
        if self.failure.is_none() && self.controls.proc & PROC_PAUSE_EXITING != bit {
            self.controls.proc = self.controls.proc & !PROC_PAUSE_EXITING | bit;
            self.write(PROC_CONTROLS, u64::from(self.controls.proc));
        }
    }

    /// What went wrong with the last entry, if it failed.
    pub fn entry_failure(&self) -> Option<EntryFailure> {
        self.failure
    }

    #[allow(
        clippy::cast_possible_truncation,
        reason = "16- and 32-bit VMCS fields: VMREAD zero-extends them"
    )]
    fn read_controls(&self) -> Controls {
        let r = |f| vmcs::read(f).unwrap_or(0) as u32;
        Controls {
            pin: r(PIN_CONTROLS),
            proc: r(PROC_CONTROLS),
            proc2: r(PROC2_CONTROLS),
            exit: r(EXIT_CONTROLS),
            entry: r(ENTRY_CONTROLS),
            eptp: vmcs::read(EPT_POINTER).unwrap_or(0),
            cr3_targets: r(CR3_TARGET_COUNT),
            entry_info: r(ENTRY_INTERRUPTION_INFO),
            entry_error_code: r(ENTRY_EXCEPTION_ERROR_CODE),
            entry_length: r(ENTRY_INSTRUCTION_LENGTH),
        }
    }

    #[allow(
        clippy::cast_possible_truncation,
        reason = "16- and 32-bit VMCS fields: VMREAD zero-extends them"
    )]
    fn read_host(&self) -> HostState {
        let r = |f| vmcs::read(f).unwrap_or(0);
        let s = |f| r(f) as u16;
        HostState {
            cr0: r(HOST_CR0),
            cr4: r(HOST_CR4),
            efer: r(HOST_IA32_EFER),
            selectors: [
                s(HOST_CS_SELECTOR),
                s(HOST_SS_SELECTOR),
                s(HOST_DS_SELECTOR),
                s(HOST_ES_SELECTOR),
                s(HOST_FS_SELECTOR),
                s(HOST_GS_SELECTOR),
                s(HOST_TR_SELECTOR),
            ],
        }
    }

    #[allow(
        clippy::cast_possible_truncation,
        reason = "16- and 32-bit VMCS fields: VMREAD zero-extends them"
    )]
    fn read_guest(&self) -> GuestState {
        let r = |f| vmcs::read(f).unwrap_or(0);
        let ar = |seg| r(GUEST_AR + 2 * seg) as u32;
        GuestState {
            cr0: r(GUEST_CR0),
            cr4: r(GUEST_CR4),
            efer: r(GUEST_IA32_EFER),
            rflags: r(GUEST_RFLAGS),
            rip: r(GUEST_RIP),
            cs_ar: ar(CS),
            ss_ar: ar(SS),
            tr_ar: ar(TR),
            ldtr_ar: ar(LDTR),
            interruptibility: r(GUEST_INTERRUPTIBILITY) as u32,
            activity: r(GUEST_ACTIVITY_STATE) as u32,
            link_pointer: r(VMCS_LINK_POINTER),
        }
    }

    #[allow(
        clippy::cast_possible_truncation,
        reason = "16- and 32-bit VMCS fields: VMREAD zero-extends them; the basic exit reason is bits 15:0"
    )]
    fn record(&self, exit_code: u64) -> ExitRecord {
        let r = |f| vmcs::read(f).unwrap_or(0);
        let mut regs = self.frame.regs;
        regs.rsp = r(GUEST_RSP);
        regs.rip = r(GUEST_RIP);
        regs.rflags = r(GUEST_RFLAGS);
        let basic = exit_code as u16;
        let normal = exit_code >> 16 == 0;
        let next_rip = if normal && exit_has_instruction_length(basic) {
            regs.rip.wrapping_add(r(EXIT_INSTRUCTION_LENGTH))
        } else {
            0
        };
        let exit_info2 = match (normal, basic) {
            (true, 48 | 49) => r(GUEST_PHYSICAL_ADDRESS),
            (true, 0) => r(EXIT_INTERRUPTION_INFO) | r(EXIT_INTERRUPTION_ERROR_CODE) << 32,
            (true, 30) => r(GUEST_LINEAR_ADDRESS),
            _ => 0,
        };
        let seen = |value: u64, mask: u64, shadow: u32| (value & !mask) | (r(shadow) & mask);
        let cs_ar = r(GUEST_AR + 2 * CS) as u32;
        ExitRecord {
            abi_version: ABI_VERSION,
            arch: VcpuArch::Vmx as u32,
            sequence: self.sequence,
            exit_code,
            exit_info1: if normal { r(EXIT_QUALIFICATION) } else { 0 },
            exit_info2,
            exit_int_info: rules::exit_int_info(
                r(IDT_VECTORING_INFO) as u32,
                r(IDT_VECTORING_ERROR_CODE) as u32,
            ),
            next_rip,
            regs,
            cr0: seen(r(GUEST_CR0), self.cr0_mask, CR0_READ_SHADOW),
            cr2: self.frame.cr2,
            cr3: r(GUEST_CR3),
            cr4: seen(r(GUEST_CR4), self.cr4_mask, CR4_READ_SHADOW),
            efer: r(GUEST_IA32_EFER),
            cs: Segment {
                selector: r(GUEST_SELECTOR + 2 * CS) as u16,
                attrib: ar_to_attrib(cs_ar),
                limit: r(GUEST_LIMIT + 2 * CS) as u32,
                base: r(GUEST_BASE + 2 * CS),
            },
            cpl: ar_dpl(r(GUEST_AR + 2 * SS) as u32),
            interrupt_shadow: u8::from(r(GUEST_INTERRUPTIBILITY) & 3 != 0),
            insn_len: 0,
            reserved: [0; 5],
            insn_bytes: [0; 16],
        }
    }

    /// What the resume check needs to know of the guest's state.
    #[allow(
        clippy::cast_possible_truncation,
        reason = "16- and 32-bit VMCS fields: VMREAD zero-extends them"
    )]
    pub fn mode(&self) -> GuestMode {
        const AR_DB: u32 = 1 << 14;
        let cs = vmcs::read(GUEST_AR + 2 * CS).unwrap_or(0) as u32;
        GuestMode {
            lma: vmcs::read(GUEST_IA32_EFER).unwrap_or(0) & EFER_LMA != 0,
            cs_l: cs & AR_L != 0,
            cs_d: cs & AR_DB != 0,
            rflags: vmcs::read(GUEST_RFLAGS).unwrap_or(2),
            // Blocking by STI or by MOV SS (SDM vol. 3C, 25.4.2).
            interrupt_shadow: vmcs::read(GUEST_INTERRUPTIBILITY).unwrap_or(0) & 0b11 != 0,
            shadow: self.shadow,
        }
    }

    /// Without VPID every VM entry and exit flushes the guest's linear
    /// translations (SDM vol. 3C, 28.3.3.1), global ones included, so
    /// shadow tables need nothing (and `FLUSH_NON_GLOBAL` cannot keep
    /// global pages); the guest-physical translations the EPT caches
    /// survive entries and are dropped with INVEPT.
    pub fn flush_tlb(&mut self) {
        if self.eptp != 0 {
            invept(self.eptp, self.caps.ept);
        }
    }

    /// Shadow paging: what the guest reads of CR0 and CR4 (its own values,
    /// as the mmu-server holds them; any value is safe, they only answer
    /// the guest's reads and decide which of its writes exit).
    pub fn show_guest(&mut self, cr0: u64, cr4: u64) {
        if self.shadow && self.failure.is_none() {
            self.write(CR0_READ_SHADOW, cr0);
            self.write(CR4_READ_SHADOW, cr4);
        }
    }

    /// Loads the hardware paging state of a shadowed guest: CR0/CR4 with
    /// the bits VMX fixes, EFER and the IA-32e mode entry control, CR3 =
    /// the shadow root (`validate_paging` checked PG, PAE and the root's
    /// level). Without EPT the entry loads PAE PDPTEs from CR3 itself.
    fn load_paging(&mut self, p: &ipc_proto::PagingState, root: u64) {
        if p.cr0 & CR0_PE == 0 {
            // Without unrestricted guest (it needs EPT) VMX fixes PE to 1.
            self.failure = Some(EntryFailure::Unsupported(
                "real mode under shadow paging needs SVM (VMX runs real mode only as an unrestricted guest, which needs EPT)",
            ));
            return;
        }
        let caps = self.caps;
        // INVLPG exits while the mmu-server has unsync page tables
        // (`PagingState::INTERCEPT_INVLPG`).
        let invlpg = if p.flags & PagingState::INTERCEPT_INVLPG != 0 {
            PROC_INVLPG_EXITING
        } else {
            0
        };
        if self.controls.proc & PROC_INVLPG_EXITING != invlpg {
            self.controls.proc = self.controls.proc & !PROC_INVLPG_EXITING | invlpg;
            self.write(PROC_CONTROLS, u64::from(self.controls.proc));
        }
        self.controls.entry &= !ENTRY_IA32E_MODE_GUEST;
        if p.efer & EFER_LMA != 0 {
            self.controls.entry |= ENTRY_IA32E_MODE_GUEST;
        }
        for (field, value) in [
            (GUEST_CR0, (p.cr0 | caps.cr0_fixed0) & caps.cr0_fixed1),
            (GUEST_CR4, (p.cr4 | caps.cr4_fixed0) & caps.cr4_fixed1),
            (GUEST_IA32_EFER, p.efer),
            (GUEST_CR3, root),
            (ENTRY_CONTROLS, u64::from(self.controls.entry)),
        ] {
            self.write(field, value);
        }
    }

    /// Applies a resume that `resume::validate` accepted with `flags`;
    /// `root` is the host-physical frame of `r.paging.root`, checked by
    /// `resume::validate_paging` (`SET_PAGING`) or
    /// `resume::validate_nested_root` (`SET_NESTED_ROOT`).
    pub fn apply(&mut self, r: &Resume, flags: ResumeFlags, root: Option<u64>) {
        if self.failure.is_some() {
            return;
        }
        match root {
            Some(root) if self.shadow && flags.contains(ResumeFlags::SET_PAGING) => {
                self.load_paging(&r.paging, root)
            }
            Some(root) if !self.shadow && flags.contains(ResumeFlags::SET_NESTED_ROOT) => {
                self.eptp = rules::eptp(root, self.caps.ept);
                self.write(EPT_POINTER, self.eptp);
                invept(self.eptp, self.caps.ept);
            }
            _ => {}
        }
        if !self.shadow && flags.contains(ResumeFlags::SET_PAGING) {
            // Nested: the guest's CR4 (`validate_nested_cr4`), which its
            // reads of the masked bits see in the read shadow.
            let caps = self.caps;
            self.write(
                GUEST_CR4,
                (r.paging.cr4 | caps.cr4_fixed0) & caps.cr4_fixed1,
            );
            self.write(CR4_READ_SHADOW, r.paging.cr4);
        }
        if flags.contains(ResumeFlags::SET_CR2) {
            self.frame.cr2 = r.cr2;
        }
        if flags.contains(ResumeFlags::SET_TSC_OFFSET) {
            self.write(TSC_OFFSET, r.tsc_offset);
        }
        if flags.contains(ResumeFlags::SET_GPRS) {
            let keep = (self.frame.regs.rip, self.frame.regs.rflags);
            self.frame.regs = r.regs;
            (self.frame.regs.rip, self.frame.regs.rflags) = keep;
            self.write(GUEST_RSP, r.regs.rsp);
        }
        if flags.contains(ResumeFlags::SET_RIP) {
            self.write(GUEST_RIP, r.regs.rip);
            // The instruction that blocked interrupts (STI, MOV SS) is behind.
            let blocking = vmcs::read(GUEST_INTERRUPTIBILITY).unwrap_or(0) & !0b11;
            self.write(GUEST_INTERRUPTIBILITY, blocking);
        }
        if flags.contains(ResumeFlags::SET_RFLAGS) {
            self.write(GUEST_RFLAGS, r.regs.rflags);
        }
        if flags.contains(ResumeFlags::REQUEST_INTERRUPT_WINDOW)
            && self.caps.proc.allows(PROC_INTERRUPT_WINDOW_EXITING)
        {
            self.controls.proc |= PROC_INTERRUPT_WINDOW_EXITING;
            self.write(PROC_CONTROLS, u64::from(self.controls.proc));
        }
        if flags.contains(ResumeFlags::INJECT_EVENT) {
            let e = &r.event;
            let protected = vmcs::read(GUEST_CR0).unwrap_or(0) & CR0_PE != 0;
            let zero_length_ok = self.caps.misc & MISC_ZERO_LENGTH_INJECTION != 0;
            let ev = entry_event(e.vector, e.kind, e.error_code, protected, zero_length_ok);
            self.write(ENTRY_INTERRUPTION_INFO, u64::from(ev.info));
            self.write(ENTRY_EXCEPTION_ERROR_CODE, u64::from(ev.error_code));
            self.write(ENTRY_INSTRUCTION_LENGTH, u64::from(ev.length));
            if ev.rip_back != 0 {
                let rip = vmcs::read(GUEST_RIP).unwrap_or(0);
                self.write(GUEST_RIP, rip.wrapping_sub(ev.rip_back));
            }
        }
    }
}
