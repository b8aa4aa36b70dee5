//! End-to-end: the PC board's test guests (`--board pc`: local APIC, I/O
//! APIC, ACPI tables and PM timer, fw_cfg), through the `splitvisor run`
//! command a user types, on QEMU's emulated SVM with nested and with shadow
//! paging, and on Bochs's emulated VMX with EPT.
//!
//! Each guest checks the board itself and prints one line per check
//! (`images/guests/README.md`; they pass on plain QEMU's PC too): `apic`
//! (xAPIC and x2APIC registers and mode changes with their #GP, timer
//! one-shot, periodic and TSC-deadline, self-IPI, TPR masking, nested ISR
//! and EOI order, ESR), `ioapic` (edge and level pins, remote IRR until
//! EOI, masked pins), `acpi` (RSDP -> XSDT -> MADT/FADT with checksums, the
//! PM timer), `fwcfg` (signature, CPU count, `etc/e820`), and `pcstorm`
//! (nonsense to every register of all of them: the VM keeps running).

mod common;

use common::Run;

/// Generous: several of these may run at once on two cores, and the first
/// one also builds the stub and the servers.
const TIMEOUT_SECS: u64 = 300;

fn run(guest: &str, how: &[&str]) -> Run {
    let args = [&["--guest", guest, "--board", "pc"][..], how].concat();
    common::splitvisor_run(&args, TIMEOUT_SECS)
}

const NPT: &[&str] = &["--cpu", "EPYC,+svm,+npt"];
// QEMU's TCG ignores the task-switch intercept: shadow paging there only
// when told (these guests are trusted).
const SHADOW: &[&str] = &["--mmu", "shadow", "--cpu", "EPYC,+svm", "--unsafe-shadow"];
const BOCHS_VMX: &[&str] = &["--emulator", "bochs", "--arch", "vmx"];

/// The guest said every check passed, and ended with status 0.
fn assert_all_passed(guest: &str, how: &[&str]) -> Run {
    let r = run(guest, how);
    let failed: Vec<&str> = r
        .stdout
        .lines()
        .filter(|l| l.starts_with(&format!("{guest}: ")) && l.contains("FAIL"))
        .collect();
    assert!(failed.is_empty(), "{failed:#?}\n{r}");
    assert!(
        r.has_line(&format!("{guest}: all checks passed")),
        "no pass line\n{r}"
    );
    assert_eq!(r.code, Some(0), "{r}");
    r
}

fn apic(how: &[&str]) {
    let r = assert_all_passed("apic", how);
    // The board offers both: nothing may be skipped here.
    for line in [
        "apic: timer oneshot: fired once, current count 0 ok",
        "apic: tsc deadline: fires once, msr 0x6e0 reads 0 after ok",
        "apic: x2apic: rdmsr 0x831 raises #gp ok",
        "apic: x2apic: x2apic -> xapic directly raises #gp ok",
        "apic: tpr masking: pending in irr, not delivered ok",
        "apic: nested: eoi clears the highest isr bit (0xa0) first ok",
    ] {
        assert!(r.has_line(line), "no `{line}`\n{r}");
    }
    // As hardware sets it (SDM vol. 3A, 11.5.3): receive illegal vector,
    // and send accept error for the absent APIC ID.
    assert!(
        r.stdout
            .contains("apic: esr after an ipi to apic id 0x0f: 0x00000004"),
        "{r}"
    );
}

fn ioapic(how: &[&str]) {
    let r = assert_all_passed("ioapic", how);
    for line in [
        "ioapic: edge: pit through gsi 2 ok",
        "ioapic: level: remote irr still set before eoi ok",
        "ioapic: level: remote irr clear after eoi ok",
    ] {
        assert!(r.has_line(line), "no `{line}`\n{r}");
    }
}

fn acpi(how: &[&str]) {
    let r = assert_all_passed("acpi", how);
    assert!(r.stdout.contains("acpi: rsdp at 0x000e0000"), "{r}");
    assert!(r.has_line("acpi: pm timer advances ok"), "{r}");
}

fn fwcfg(how: &[&str]) {
    let r = assert_all_passed("fwcfg", how);
    assert!(r.has_line("fwcfg: nb_cpus 1"), "{r}");
    assert!(
        r.has_line("fwcfg: e820 ram total matches multiboot mem_upper + 1 MiB ok"),
        "{r}"
    );
}

fn pcstorm(how: &[&str]) {
    let r = run("pcstorm", how);
    assert!(r.has_line("pcstorm: still running after the storm"), "{r}");
    assert!(
        r.has_line("pcstorm: esr after an ipi to the absent apic id 0x0f: 0x00000004"),
        "{r}"
    );
    assert_eq!(r.code, Some(0), "{r}");
}

#[test]
fn apic_guest_on_svm_npt() {
    apic(NPT);
}

#[test]
fn apic_guest_on_svm_shadow() {
    apic(SHADOW);
}

#[test]
fn apic_guest_on_bochs_vmx() {
    apic(BOCHS_VMX);
}

#[test]
fn ioapic_guest_on_svm_npt() {
    ioapic(NPT);
}

#[test]
fn ioapic_guest_on_svm_shadow() {
    ioapic(SHADOW);
}

#[test]
fn ioapic_guest_on_bochs_vmx() {
    ioapic(BOCHS_VMX);
}

#[test]
fn acpi_guest_on_svm_npt() {
    acpi(NPT);
}

#[test]
fn acpi_guest_on_svm_shadow() {
    acpi(SHADOW);
}

#[test]
fn acpi_guest_on_bochs_vmx() {
    acpi(BOCHS_VMX);
}

#[test]
fn fwcfg_guest_on_svm_npt() {
    fwcfg(NPT);
}

#[test]
fn fwcfg_guest_on_svm_shadow() {
    fwcfg(SHADOW);
}

#[test]
fn fwcfg_guest_on_bochs_vmx() {
    fwcfg(BOCHS_VMX);
}

#[test]
fn pcstorm_guest_on_svm_npt() {
    pcstorm(NPT);
}

#[test]
fn pcstorm_guest_on_svm_shadow() {
    pcstorm(SHADOW);
}

#[test]
fn pcstorm_guest_on_bochs_vmx() {
    pcstorm(BOCHS_VMX);
}

/// The ISA board stays what it was: no local APIC in CPUID, no ACPI
/// tables, no fw_cfg -- the `acpi` guest finds no RSDP there.
#[test]
fn isa_board_has_no_acpi_tables() {
    let args = ["--guest", "acpi", "--board", "isa"];
    let r = common::splitvisor_run(&args, TIMEOUT_SECS);
    assert_ne!(r.code, Some(0), "{r}");
    assert!(!r.stdout.contains("acpi: rsdp at"), "{r}");
}

/// `qemupc` (what kernels written for QEMU's PC rely on) on the PC board:
/// x2APIC is offered there, so its enable bit must take (and the APIC go
/// back to xAPIC mode through disabled) rather than #GP as on the ISA board.
#[test]
fn qemupc_guest_on_the_pc_board_enables_x2apic() {
    let r = run("qemupc", NPT);
    assert!(
        r.has_line(
            "qemupc: x2apic in cpuid; apic_base takes the x2apic enable bit, and goes back to xapic through disabled"
        ),
        "{r}"
    );
    assert!(r.has_line("qemupc: all checks passed"), "{r}");
    assert_eq!(r.code, Some(0), "{r}");
}
