//! The virtualization extensions the stub can enter a guest with.
//! Each back end turns its exits into the same `ipc_proto::ExitRecord`.
//!
//! `select` picks one at boot (CPUID, or `arch=svm|vmx` on the boot command
//! line); `Vcpu` runs either behind one interface, so that `vm.rs` does not
//! care which.

pub mod svm;
pub mod vmx;

use crate::memory::OutOfMemory;
use ipc_proto::manifest::EntryMode;
use ipc_proto::{ExitKind, ExitRecord, Resume, ResumeFlags};
pub use kernel_stub::arch_select::{Arch, Request};
use kernel_stub::resume::GuestMode;

/// Where and how the guest starts.
pub struct Entry {
    pub mode: EntryMode,
    pub rip: u64,
    pub rax: u64,
    pub rbx: u64,
    pub rsi: u64,
}

/// How the guest's memory is translated.
#[derive(Clone, Copy)]
pub enum Paging {
    /// By nested paging (NPT, EPT) over tables the mmu-server builds (in
    /// the back end's format) and names with `SET_NESTED_ROOT`.
    Nested,
    /// Through shadow tables the mmu-server builds: the guest's CR0, CR3
    /// and CR4 accesses and its page faults exit. INVLPG runs natively
    /// while every guest page table is write-protected (the shadow tables
    /// are then current, so the guest's own INVLPG drops exactly the stale
    /// translation from the hardware TLB), and exits to the mmu-server
    /// while its `SET_PAGING` asks for it (`PagingState::INTERCEPT_INVLPG`:
    /// some page table is unsync and its shadow may be stale).
    Shadow,
}

/// What the multiboot command line asks for: `arch=svm` or `arch=vmx`,
/// and `unsafe_shadow`. Call before any frame is allocated: the loader may
/// have put the command line where the stub's frames start.
pub fn options_from_multiboot(mbi: u32) -> (Request, bool) {
    // SAFETY: a multiboot loader passes a valid information structure, in
    // the identity-mapped first GiB; flags at +0, cmdline at +16 when flag
    // bit 2 is set (multiboot 0.6.96, 3.3).
    let (flags, cmdline) = unsafe {
        let p = mbi as usize as *const u32;
        (p.read_volatile(), p.add(4).read_volatile())
    };
    if flags & (1 << 2) == 0
        || cmdline == 0
        || u64::from(cmdline) >= crate::memory::IDENTITY_MAP_END
    {
        return (Request::Auto, false);
    }
    let mut buf = [0u8; 256];
    let mut len = 0;
    while len < buf.len() {
        // SAFETY: the loader's NUL-terminated string, in identity-mapped RAM;
        // at most 256 bytes are read.
        let b = unsafe { ((cmdline as usize + len) as *const u8).read_volatile() };
        if b == 0 {
            break;
        }
        buf[len] = b;
        len += 1;
    }
    let words = &buf[..len];
    (
        kernel_stub::arch_select::parse_request(words),
        kernel_stub::arch_select::allows_unsafe_shadow(words),
    )
}

/// The extension to run with: the requested one, or what CPUID offers;
/// `Err` is the sentence for `cannot run`.
pub fn select(request: Request) -> Result<Arch, &'static str> {
    let has_svm = crate::cpu::cpuid(0x8000_0000).eax >= 0x8000_0001
        && crate::cpu::cpuid(0x8000_0001).ecx & (1 << 2) != 0;
    let has_vmx = crate::cpu::cpuid(1).ecx & (1 << 5) != 0;
    let arch = kernel_stub::arch_select::choose(request, has_svm, has_vmx)?;
    match arch {
        Arch::Svm => svm::check_support()?,
        Arch::Vmx => vmx::check_support()?,
    }
    Ok(arch)
}

/// Turns `arch` on for this CPU (another CPU at its start: SVM's
/// EFER.SVME and host save area, VMX's VMXON); `Err` says what failed.
pub fn enable(arch: Arch) -> Result<(), &'static str> {
    match arch {
        Arch::Svm => svm::enable().map_err(|_| "no memory for the host save area"),
        Arch::Vmx => vmx::enable(),
    }
}

/// Why the VM cannot run with this MMU mode on `arch`; `Err` is the
/// sentence for `cannot run`.
pub fn check_paging(arch: Arch, shadow: bool, entry: EntryMode) -> Result<(), &'static str> {
    match (arch, shadow) {
        (Arch::Svm, false) if !svm::has_nested_paging() => {
            Err("nested paging (NPT) not available on this CPU; run with --mmu shadow")
        }
        (Arch::Vmx, false) => vmx::check_nested(),
        (Arch::Vmx, true) if entry == EntryMode::Real16 => Err(
            "real mode under shadow paging needs SVM: VMX runs real mode only as an unrestricted guest, which needs EPT; run with --mmu nested or --arch svm",
        ),
        _ => Ok(()),
    }
}

/// Whether a shadowed guest's exit goes to the mmu-server: #PF, CR
/// reads and writes, INVLPG (intercepted while the mmu-server asks for
/// it), RDMSR/WRMSR of EFER.
pub fn is_shadow_mmu_exit(kind: ExitKind, rec: &ExitRecord) -> bool {
    match kind {
        ExitKind::Exception { vector: Some(14) } | ExitKind::CrAccess { .. } | ExitKind::Invlpg => {
            true
        }
        ExitKind::Msr { .. } => rec.regs.rcx & 0xffff_ffff == 0xc000_0080, // EFER
        _ => false,
    }
}

/// A VCPU of either extension (one per VM: the size difference is moot).
#[allow(dead_code, clippy::large_enum_variant)]
pub enum Vcpu {
    Svm(svm::Vcpu),
    Vmx(vmx::Vcpu),
}

/// Why an entry failed, whatever the extension.
pub enum EntryFailure {
    /// VMRUN's consistency checks (SVM gives no detail), or an exit code
    /// the stub never asked for.
    Svm {
        code: u64,
    },
    Vmx(vmx::EntryFailure),
}

impl core::fmt::Display for EntryFailure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Svm { code } if *code == u64::MAX || *code == 0xffff_ffff => {
                write!(
                    f,
                    "VMRUN failed its consistency checks (exit code {code:#x})"
                )
            }
            Self::Svm { code } => write!(
                f,
                "VMRUN ended with exit code {code:#x}, which is no intercept the stub set"
            ),
            Self::Vmx(e) => e.fmt(f),
        }
    }
}

/// Builds a VCPU of `arch`.
/// A VCPU for the guest of one VM. `asid` (1 and up, one per VM) tags the
/// TLB entries of its guest under SVM; VMX runs without VPIDs, so every
/// entry and exit flushes them (SDM vol. 3C, 28.3.3.1) and the VMs share none.
pub fn create_vcpu(
    arch: Arch,
    paging: Paging,
    entry: &Entry,
    asid: u32,
) -> Result<Vcpu, OutOfMemory> {
    Ok(match arch {
        Arch::Svm => {
            let virtual_interrupts = svm::virtual_interrupts_delivered()?;
            if !virtual_interrupts {
                crate::console::say!("svm: this CPU holds back virtual interrupts (Bochs does): external interrupts go in through EVENTINJ");
            }
            let mut vcpu = svm::create_vcpu(paging, entry, asid)?;
            vcpu.virtual_interrupts = virtual_interrupts;
            Vcpu::Svm(vcpu)
        }
        Arch::Vmx => Vcpu::Vmx(vmx::create_vcpu(paging, entry)?),
    })
}

impl Vcpu {
    /// Its VM's turn: VMX makes its VMCS current (each SVM VMRUN names
    /// its VMCB; a VMCB whose ASID is shared flushes it).
    pub fn load(&mut self) {
        match self {
            Self::Svm(v) => v.load(),
            Self::Vmx(v) => v.load(),
        }
    }

    pub fn run(&mut self) -> ExitRecord {
        match self {
            Self::Svm(v) => v.run(),
            Self::Vmx(v) => v.run(),
        }
    }

    /// Why the entry that produced `rec` failed, if it did.
    pub fn entry_failure(&self, rec: &ExitRecord) -> Option<EntryFailure> {
        match self {
            Self::Svm(v) => v.entry_failed(rec).then_some(EntryFailure::Svm {
                code: rec.exit_code,
            }),
            Self::Vmx(v) => v.entry_failure().map(EntryFailure::Vmx),
        }
    }

    pub fn mode(&self) -> GuestMode {
        match self {
            Self::Svm(v) => v.mode(),
            Self::Vmx(v) => v.mode(),
        }
    }

    /// PAUSE exits on or off for the next entries: on while a device
    /// server's work waits for the guest's next exit (`vm::schedule`).
    pub fn set_pause_exiting(&mut self, on: bool) {
        match self {
            Self::Svm(v) => v.set_pause_exiting(on),
            Self::Vmx(v) => v.set_pause_exiting(on),
        }
    }

    pub fn flush_tlb(&mut self) {
        match self {
            Self::Svm(v) => v.flush_tlb(),
            Self::Vmx(v) => v.flush_tlb(),
        }
    }

    pub fn apply(&mut self, r: &Resume, flags: ResumeFlags, root: Option<u64>) {
        match self {
            Self::Svm(v) => v.apply(r, flags, root),
            Self::Vmx(v) => v.apply(r, flags, root),
        }
    }

    /// Shadow paging: the guest's own CR0 and CR4, for what it reads
    /// without an exit (VMX read shadows; SVM intercepts the reads).
    pub fn show_guest(&mut self, cr0: u64, cr4: u64) {
        if let Self::Vmx(v) = self {
            v.show_guest(cr0, cr4);
        }
    }
}

/// The statistics class of an exit, whatever the extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitClass {
    Ioio,
    Hlt,
    Cpuid,
    Msr,
    Npf,
    Exception,
    Shutdown,
    Invalid,
    /// A host interrupt: the exit deadline's timer.
    HostInterrupt,
    Other,
}

impl ExitClass {
    /// A short name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ioio => "ioio",
            Self::Hlt => "hlt",
            Self::Cpuid => "cpuid",
            Self::Msr => "msr",
            Self::Npf => "nested page fault",
            Self::Exception => "exception",
            Self::Shutdown => "shutdown",
            Self::Invalid => "failed entry",
            Self::HostInterrupt => "host interrupt",
            Self::Other => "other",
        }
    }

    /// Classifies a record by `ipc_proto::ExitKind`, the servers' decoder.
    pub fn of(rec: &ExitRecord) -> Self {
        Self::of_kind(ExitKind::of(rec))
    }

    /// The class of an exit of `kind` (the exit path decodes a record once).
    pub fn of_kind(kind: ExitKind) -> Self {
        match kind {
            ExitKind::Io => Self::Ioio,
            ExitKind::Hlt => Self::Hlt,
            ExitKind::Cpuid => Self::Cpuid,
            ExitKind::Msr { .. } => Self::Msr,
            ExitKind::NestedPageFault | ExitKind::NestedMisconfig => Self::Npf,
            ExitKind::Exception { .. } => Self::Exception,
            ExitKind::Shutdown => Self::Shutdown,
            ExitKind::EntryFailed => Self::Invalid,
            ExitKind::ExternalInterrupt => Self::HostInterrupt,
            _ => Self::Other,
        }
    }
}
