//! End-to-end under Bochs: build real images, wrap them in GRUB ISOs and
//! boot them in Bochs through the `splitvisor run --emulator bochs` command
//! a user types: Intel VMX with EPT on `corei7_skylake_x`, and AMD SVM with
//! nested paging on `ryzen` (a second implementation of SVM beside QEMU's).
//!
//! These need the Debian packages bochs, bochsbios, vgabios and bochs-term
//! (Bochs), grub-pc-bin, xorriso and mtools (the ISO), gcc and binutils:
//! `scripts/install-deps` installs them. Without them the tests fail, with
//! `splitvisor run` naming what to install, rather than skip. Each run takes
//! a few seconds: Bochs boots its BIOS and GRUB before the stub.

mod common;

use common::Run;

/// Generous: the first run also builds the stub and the vmm-server, and
/// several of these may run at once on two cores.
const TIMEOUT_SECS: u64 = 180;

fn bochs_run(guest: &str, arch: &str) -> Run {
    let args = ["--emulator", "bochs", "--guest", guest, "--arch", arch];
    common::splitvisor_run(&args, TIMEOUT_SECS)
}

fn assert_hello(r: &Run, arch: &str) {
    assert_eq!(r.code, Some(0), "{r}");
    let banner = format!("[stub] {arch}: nested paging, guest RAM 16 MiB, entry 0x100000,");
    assert!(
        r.stdout.lines().any(|l| l.starts_with(&banner)),
        "no `{banner}` line\n{r}"
    );
    assert!(
        r.has_line("hello from the guest"),
        "no exact guest line\n{r}"
    );
    assert!(
        r.stdout
            .lines()
            .any(|l| l.starts_with("[vmm] exits: total=49 ioio=49 ")),
        "no vmm statistics line with 49 I/O exits\n{r}"
    );
    assert!(r.has_line("[stub] vm stopped: guest status 0"), "{r}");
    assert!(
        r.stderr.contains("splitvisor: guest exited with status 0"),
        "{r}"
    );
}

#[test]
fn hello_guest_on_bochs_vmx_with_ept_prints_its_line_and_exits_0() {
    let r = bochs_run("hello", "vmx");
    assert_hello(&r, "vmx");
    assert!(r.stderr.contains("cpu corei7_skylake_x, arch=vmx"), "{r}");
}

#[test]
fn hello_guest_on_bochs_ryzen_svm_prints_its_line_and_exits_0() {
    let r = bochs_run("hello", "svm");
    assert_hello(&r, "svm");
    assert!(r.stderr.contains("cpu ryzen, arch=svm"), "{r}");
}

#[test]
fn status42_guest_on_bochs_vmx_exits_42() {
    let r = bochs_run("status42", "vmx");
    assert_eq!(r.code, Some(42), "{r}");
    assert!(r.has_line("exiting with status 42"), "{r}");
}

/// VMX reports a guest's triple fault as exit reason 2.
#[test]
fn triple_fault_guest_on_bochs_vmx_fails_with_exit_reason_2() {
    let r = bochs_run("triple-fault", "vmx");
    assert_eq!(r.code, Some(101), "{r}");
    assert!(r.all().contains("triple fault, code 0x2"), "{r}");
    assert!(r.all().contains("rip="), "guest RIP not mentioned\n{r}");
}

/// SVM reports it as #VMEXIT(SHUTDOWN), 0x7f, as QEMU does; Bochs 2.7 needs
/// the runner's help for that (see `splitvisor::bochs`).
#[test]
fn triple_fault_guest_on_bochs_svm_fails_with_shutdown_exit() {
    let r = bochs_run("triple-fault", "svm");
    assert_eq!(r.code, Some(101), "{r}");
    assert!(
        r.all().contains("0x7f"),
        "SHUTDOWN exit 0x7f not mentioned\n{r}"
    );
}

/// A CPU without the forced extension: the stub says so, the run says
/// which Bochs model has it.
#[test]
fn svm_forced_on_a_vmx_cpu_cannot_run() {
    let args = [
        "--emulator",
        "bochs",
        "--guest",
        "hello",
        "--arch",
        "svm",
        "--cpu",
        "corei7_skylake_x",
    ];
    let r = common::splitvisor_run(&args, TIMEOUT_SECS);
    assert_eq!(r.code, Some(102), "{r}");
    assert!(
        r.has_line("[stub] cannot run: SVM not available on this CPU"),
        "{r}"
    );
    assert!(r.stderr.contains("--cpu ryzen"), "{r}");
    assert!(!r.stdout.contains("hello from the guest"), "{r}");
}

#[test]
fn longmode_guest_on_bochs_vmx_with_ept_writes_efer_and_passes() {
    let r = bochs_run("longmode", "vmx");
    assert_eq!(r.code, Some(0), "{r}");
    assert!(r.has_line("longmode: all checks passed"), "{r}");
}

/// Every guest mode with nested paging under Bochs: VMX (EPT, unrestricted
/// guest) and SVM on `ryzen`, a second SVM beside QEMU's. The timer guest
/// once stalled on Bochs SVM after its first ticks, before the stub bounded
/// entries with the exit deadline; it passes on both now.
#[test]
fn guest_modes_on_bochs_vmx_and_svm_with_nested_paging() {
    let modes = [
        "realmode",
        "pmode",
        "paging32",
        "pae",
        "longmode",
        "mmio",
        "multiboot",
        "timer",
    ];
    for arch in ["vmx", "svm"] {
        for guest in modes {
            let r = bochs_run(guest, arch);
            assert_eq!(r.code, Some(0), "{guest} on {arch}: {r}");
            assert!(
                r.has_line(&format!("{guest}: all checks passed")),
                "{guest} on {arch}: {r}"
            );
        }
    }
}

/// Issue 11, defect 7, on Bochs VMX with EPT (the QEMU SVM runs are in
/// `vmm-server/tests/e2e_guests_qemu_svm.rs`): CR4 bits CPUID hides raise
/// #GP although the guest owns CR4 under nested paging — the stub's CR4
/// guest/host mask makes MOV to CR4 exit for every bit but the baseline
/// ones and the vmm-server refuses PCIDE — while offered bits
/// are set and cleared (FSGSBASE, which `corei7_skylake_x` has, through
/// the vmm-server's `SET_PAGING` and the read shadow). ISA board: the
/// guest checks that CPUID shows no x2APIC. RDTSCP, which the model has,
/// runs with "enable RDTSCP" and returns the TSC_AUX the guest wrote.
/// XSAVE, which the model has: CR4.OSXSAVE is offered, every XSETBV exits
/// (reason 55), the vmm-server refuses PKRU (hidden, the model has it) and
/// the stub loads the rest (`SET_XCR0`).
#[test]
fn qemupc_guest_on_bochs_vmx_refuses_hidden_cr4_bits() {
    let args = [
        "--emulator",
        "bochs",
        "--guest",
        "qemupc",
        "--arch",
        "vmx",
        "--board",
        "isa",
    ];
    let r = common::splitvisor_run(&args, TIMEOUT_SECS);
    assert_eq!(r.code, Some(0), "{r}");
    for line in XSAVE_SHOWN.iter().chain(&[
        "qemupc: cr4.pge, cr4.osfxsr (and cr4.fsgsbase if in cpuid): set and cleared",
        "qemupc: cr4.pcide: #GP, cr4 unchanged",
        RDTSCP_SHOWN,
        "qemupc: all checks passed",
    ]) {
        assert!(r.has_line(line), "no line `{line}`\n{r}");
    }
}

/// XSAVE under VMX shadow paging: CR4.OSXSAVE is the mmu-server's (its CPU
/// model offers it where the host has XSAVE) and reaches the hardware
/// through `SET_PAGING`; XSETBV exits to the vmm-server as with EPT.
#[test]
fn qemupc_guest_xsave_on_bochs_vmx_with_shadow_paging() {
    let args = [
        "--emulator",
        "bochs",
        "--guest",
        "qemupc",
        "--arch",
        "vmx",
        "--mmu",
        "shadow",
        "--board",
        "isa",
    ];
    let r = common::splitvisor_run(&args, TIMEOUT_SECS);
    assert_eq!(r.code, Some(0), "{r}");
    for line in XSAVE_SHOWN.iter().chain(&["qemupc: all checks passed"]) {
        assert!(r.has_line(line), "no line `{line}`\n{r}");
    }
}

const RDTSCP_SHOWN: &str =
    "qemupc: cpuid shows rdtscp; tsc_aux takes 0x5a17c0de, rdtscp returns it in ecx";

/// The qemupc guest's XSAVE lines where CPUID shows XSAVE, AVX and XSAVEC
/// (both Bochs models have them; QEMU's TCG has no XSAVEC).
const XSAVE_SHOWN: &[&str] = &[
    "qemupc: cpuid shows xsave, osxsave clear",
    "qemupc: cr4.osxsave set; cpuid osxsave 1; xgetbv: 1",
    "qemupc: xsetbv 3: xgetbv 3, cpuid 0xd ebx 576",
    "qemupc: xsetbv #GP: pkru (hidden), x87 clear, xcr1, avx without sse; xcr0 stays 3",
    "qemupc: xsave/xrstor round-trip xmm0",
    "qemupc: cpuid shows avx: xsetbv 7, xgetbv 7, cpuid 0xd ebx >= 832",
    "qemupc: cpuid shows xsavec (no xsaves): 0xd.1 ebx 576",
];

/// The same guest on Bochs's SVM (`ryzen`): its single-step checks (TF
/// over CPUID, IN and REP string I/O) once made Bochs deliver the guest's
/// single-step trap after VMRUN on the host side, a stub fault that ended
/// the machine. The stub now takes a #DB of its own as the spurious trap
/// it is, and the guest gets its #DB from the vmm-server. RDTSCP, which
/// `ryzen` has, runs unintercepted with the guest's TSC_AUX.
#[test]
fn qemupc_guest_single_steps_on_bochs_svm_without_faulting_the_stub() {
    let args = [
        "--emulator",
        "bochs",
        "--guest",
        "qemupc",
        "--arch",
        "svm",
        "--board",
        "isa",
    ];
    let r = common::splitvisor_run(&args, TIMEOUT_SECS);
    assert!(!r.stdout.contains("stub fault"), "{r}");
    assert_eq!(r.code, Some(0), "{r}");
    assert!(r.has_line(RDTSCP_SHOWN), "{r}");
    for line in XSAVE_SHOWN {
        assert!(r.has_line(line), "no line `{line}`\n{r}");
    }
    assert!(r.has_line("qemupc: all checks passed"), "{r}");
}
