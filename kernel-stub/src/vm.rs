//! The one VM of this image: created from the manifest at boot, run on
//! behalf of the vmm-server, and stopped with a final console line that the
//! `splitvisor` command reads.

use crate::arch::svm::{self, Vcpu};
use crate::boot::{self, BootInfo};
use crate::console::say;
use crate::cpu::{self, KernelCell};
use crate::memory::{self, LARGE_PAGE, PTE_LARGE, PTE_PRESENT, PTE_USER, PTE_WRITABLE};
use crate::task;
use ipc_proto::layout::{BootInfo as ServerBootInfo, GUEST_RAM_WINDOW};
use ipc_proto::manifest::{Blob, Manifest, PayloadHeader, TaskKind, MANIFEST_MAX, PAYLOAD_MAGIC};
use ipc_proto::vcpu::svm_exit;
use ipc_proto::{ErrorCode, ExitRecord, Stats, VcpuArch, VcpuPage, ABI_VERSION};
use zerocopy::{FromBytes, IntoBytes};

/// QEMU's isa-debug-exit port (`-device isa-debug-exit,iobase=0xf4`): the
/// stub's way to end the emulator. On hardware the write is harmless.
const DEBUG_EXIT_PORT: u16 = 0xf4;
const HOST_EXIT_STOPPED: u8 = 0;
const HOST_EXIT_FAILED: u8 = 1;
const HOST_EXIT_CANNOT_RUN: u8 = 2;

struct Vm {
    vcpu: Vcpu,
    /// Physical address of the page shared with the vmm-server.
    vcpu_page: u64,
    /// Address space of the running server.
    server_root: u64,
    /// Whether the guest has run: the first `VcpuRun` has no resume to apply.
    started: bool,
}

static VM: KernelCell<Option<Vm>> = KernelCell::new(None);
static STATS: KernelCell<Stats> = KernelCell::new(Stats {
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
    syscalls: 0,
    resumes_refused: 0,
});

fn end(code: u8) -> ! {
    cpu::outb(DEBUG_EXIT_PORT, code);
    cpu::halt_forever()
}

/// The stub cannot run a VM at all (no SVM, a bad image): one line, then off.
pub fn cannot_run(why: &str) -> ! {
    say!("cannot run: {why}");
    end(HOST_EXIT_CANNOT_RUN)
}

/// The VM cannot go on: the reason, the statistics, then off.
pub fn fail(why: core::fmt::Arguments) -> ! {
    say!("vm failed: {why}");
    let stats = STATS.with(|s| *s);
    say!("{stats}");
    end(HOST_EXIT_FAILED)
}

/// `VmStop`: the vmm-server says the guest ended with `status`.
pub fn stop_by_server(status: u64) -> Result<u64, ErrorCode> {
    let Ok(status) = u8::try_from(status) else {
        fail(format_args!(
            "the vmm-server stopped the VM with status {status}, which is not a byte"
        ));
    };
    say!("vm stopped: guest status {status}");
    end(HOST_EXIT_STOPPED)
}

pub fn count_syscall() {
    STATS.with(|s| s.syscalls += 1);
}

fn count_exit(code: u64) {
    STATS.with(|s| {
        s.exits_total += 1;
        let counter = match code {
            svm_exit::IOIO => &mut s.exits_ioio,
            svm_exit::HLT => &mut s.exits_hlt,
            svm_exit::CPUID => &mut s.exits_cpuid,
            svm_exit::MSR => &mut s.exits_msr,
            svm_exit::NPF => &mut s.exits_npf,
            svm_exit::SHUTDOWN => &mut s.exits_shutdown,
            svm_exit::INVALID => &mut s.exits_invalid,
            c if (svm_exit::EXCP_BASE..svm_exit::EXCP_BASE + 32).contains(&c) => {
                &mut s.exits_exception
            }
            _ => &mut s.exits_other,
        };
        *counter += 1;
    });
}

/// A short name for an exit, for the stub's own messages.
fn exit_name(code: u64) -> &'static str {
    match code {
        svm_exit::IOIO => "ioio",
        svm_exit::HLT => "hlt",
        svm_exit::CPUID => "cpuid",
        svm_exit::MSR => "msr",
        svm_exit::NPF => "npf",
        svm_exit::SHUTDOWN => "shutdown",
        svm_exit::VMMCALL => "vmmcall",
        svm_exit::INVALID => "invalid",
        c if (svm_exit::EXCP_BASE..svm_exit::EXCP_BASE + 32).contains(&c) => "exception",
        _ => "other",
    }
}

/// Runs the guest to its next exit; an entry that failed VMRUN's checks
/// ends the VM here, since no server can repair a VMCB it cannot see.
fn run_to_exit(vcpu: &mut Vcpu) -> ExitRecord {
    let rec = vcpu.run();
    count_exit(rec.exit_code);
    if rec.exit_code == svm_exit::INVALID {
        fail(format_args!(
            "VMRUN failed its consistency checks (exit code {:#x}) at rip={:#x}",
            rec.exit_code, rec.regs.rip
        ));
    }
    rec
}

fn vcpu_page(pa: u64) -> *mut VcpuPage {
    pa as *mut VcpuPage
}

/// `VcpuRun`: check and apply the server's resume, run the guest, and
/// leave the next exit record in the VCPU page.
pub fn vcpu_run() -> Result<u64, ErrorCode> {
    VM.with(|vm| {
        let vm = vm.as_mut().ok_or(ErrorCode::NotPermitted)?;
        let page = vcpu_page(vm.vcpu_page);
        // SAFETY: the VCPU page is ours and identity-mapped; the copy is
        // taken once, so the server cannot change it after the check.
        let resume = unsafe { core::ptr::read_volatile(&raw const (*page).resume) };
        // Before the first entry, a resume with ABI version 0 means "nothing to set".
        if vm.started || resume.abi_version != 0 {
            let flags =
                kernel_stub::resume::validate(&resume, vm.vcpu.mode()).inspect_err(|e| {
                    STATS.with(|s| s.resumes_refused += 1);
                    say!("refused a resume from the vmm-server: {}", e.describe());
                })?;
            vm.vcpu.apply(&resume, flags);
        }
        vm.started = true;
        let rec = run_to_exit(&mut vm.vcpu);
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(&raw mut (*page).exit, rec) };
        Ok(0)
    })
}

/// `StatsRead`: copy the counters into the VCPU page.
pub fn stats_read() -> Result<u64, ErrorCode> {
    let stats = STATS.with(|s| *s);
    let page = VM
        .with(|vm| vm.as_ref().map(|vm| vm.vcpu_page))
        .ok_or(ErrorCode::NotPermitted)?;
    // SAFETY: the VCPU page is ours and identity-mapped.
    unsafe { core::ptr::write_volatile(&raw mut (*vcpu_page(page)).stats, stats) };
    Ok(0)
}

/// Address space of the server that made the current system call.
pub fn current_root() -> u64 {
    VM.with(|vm| vm.as_ref().map_or(0, |vm| vm.server_root))
}

/// The payload the image builder appended after the stub.
fn payload() -> &'static [u8] {
    let start = boot::payload_start();
    let len = boot::image_end().saturating_sub(start);
    // SAFETY: the loader placed the whole image, payload included, in
    // identity-mapped memory, and nothing writes to it.
    unsafe { core::slice::from_raw_parts(start as *const u8, len as usize) }
}

fn read_manifest(payload: &[u8]) -> Result<Manifest, &'static str> {
    let (header, rest) = PayloadHeader::read_from_prefix(payload)
        .map_err(|_| "the image has no payload after the stub")?;
    if header.magic != PAYLOAD_MAGIC {
        return Err("the image has no splitvisor payload (bad magic)");
    }
    if header.abi_version != ABI_VERSION {
        return Err("the image was built for another ABI version");
    }
    let len = header.manifest_len as usize;
    let bytes = rest
        .get(..len)
        .filter(|_| len <= MANIFEST_MAX)
        .ok_or("the manifest is truncated or too large")?;
    postcard::from_bytes(bytes).map_err(|_| "the manifest does not decode")
}

fn blob(payload: &[u8], b: Blob) -> Option<&[u8]> {
    payload.get(b.offset as usize..(b.offset as usize).checked_add(b.len as usize)?)
}

/// Builds the VM from the manifest and hands it to the vmm-server.
pub fn start(boot: BootInfo) -> ! {
    if let Err(why) = svm::check_support() {
        cannot_run(why);
    }
    let payload = payload();
    let manifest = read_manifest(payload).unwrap_or_else(|why| cannot_run(why));
    memory::init(boot::image_end(), boot.ram_top);
    match build(&manifest, payload) {
        Ok(()) => unreachable_after_start(),
        Err(why) => cannot_run(why),
    }
}

fn unreachable_after_start() -> ! {
    fail(format_args!(
        "internal error: the VM returned to the boot path"
    ))
}

fn build(manifest: &Manifest, payload: &[u8]) -> Result<(), &'static str> {
    let g = &manifest.guest;
    if g.ram_mib == 0 || g.ram_mib % 2 != 0 || g.ram_mib > 512 {
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

    // Nested page table: guest-physical [0, ram_bytes) onto our frames.
    // Nested walks are user accesses, so leaves need the U bit (APM 15.25.5).
    let npt = memory::alloc_frame().map_err(|_| oom)?;
    let npt_flags = PTE_PRESENT | PTE_WRITABLE | PTE_USER;
    for off in (0..ram_bytes).step_by(LARGE_PAGE as usize) {
        memory::map(npt, off, ram + off, npt_flags | PTE_LARGE, npt_flags).map_err(|_| oom)?;
    }
    let entry = svm::Entry {
        mode: g.entry_mode,
        rip: g.entry_rip,
        rax: g.entry_rax,
        rbx: g.entry_rbx,
        rsi: g.entry_rsi,
    };
    let mut vcpu = svm::create_vcpu(npt, &entry).map_err(|_| oom)?;
    let tsc_hz = cpu::tsc_hz();
    say!(
        "svm: nested paging on, guest RAM {} MiB, entry {:#x}, tsc {} MHz",
        g.ram_mib,
        g.entry_rip,
        tsc_hz / 1_000_000
    );

    let Some(server) = manifest.task(TaskKind::VmmServer) else {
        // Nobody to hand exits to: run to the first exit and say so.
        let rec = run_to_exit(&mut vcpu);
        fail(format_args!(
            "exit {} (code {:#x}) at rip={:#x} has no server: the image has no vmm-server",
            exit_name(rec.exit_code),
            rec.exit_code,
            rec.regs.rip
        ));
    };
    let vcpu_page = memory::alloc_frame().map_err(|_| oom)?;
    let boot_info = memory::alloc_frame().map_err(|_| oom)?;
    let info = ServerBootInfo {
        abi_version: ABI_VERSION,
        arch: VcpuArch::Svm as u32,
        guest_ram_bytes: ram_bytes,
        guest_ram_window: GUEST_RAM_WINDOW,
        tsc_hz,
    };
    // SAFETY: a fresh identity-mapped frame, larger than `info`.
    unsafe {
        core::ptr::copy_nonoverlapping(
            info.as_bytes().as_ptr(),
            boot_info as *mut u8,
            info.as_bytes().len(),
        )
    };

    let elf = blob(payload, server.elf).ok_or("the vmm-server's ELF lies outside the payload")?;
    let shared = task::VmmShared {
        vcpu_page,
        boot_info,
        guest_ram: ram,
        guest_ram_bytes: ram_bytes,
    };
    let server = match task::load_vmm_server(elf, &shared) {
        Ok(t) => t,
        Err(e) => {
            say!("cannot load the vmm-server: {e}");
            return Err("the vmm-server could not be loaded");
        }
    };
    VM.with(|vm| {
        *vm = Some(Vm {
            vcpu,
            vcpu_page,
            server_root: server.root,
            started: false,
        })
    });
    task::start(&server)
}
