//! End-to-end: build real images and boot them in QEMU (TCG) with emulated
//! AMD SVM, through the `splitvisor run` command a user types.
//!
//! These tests need `qemu-system-x86_64` (Debian package qemu-system-x86),
//! gcc and binutils: `scripts/install-deps` installs them. Without QEMU they
//! fail -- `splitvisor run` exits 103 and says what to install -- rather
//! than skip: a test that claims a guest ran must boot it.

mod common;

use common::Run;

/// Generous: five of these may run at once on two cores, and the first one
/// also waits for the stub and the vmm-server to build.
const TIMEOUT_SECS: u64 = 180;

fn splitvisor_run(args: &[&str]) -> Run {
    common::splitvisor_run(args, TIMEOUT_SECS)
}

#[test]
fn hello_guest_on_svm_with_npt_prints_its_line_and_exits_0() {
    let r = splitvisor_run(&["--guest", "hello", "--cpu", "EPYC,+svm,+npt"]);
    assert_eq!(r.code, Some(0), "{r}");
    assert!(
        r.stdout.lines().any(|l| l == "hello from the guest"),
        "no exact guest line\n{r}"
    );
    assert!(
        r.stdout
            .lines()
            .any(|l| l.starts_with("[vmm] exits: total=")),
        "no vmm statistics line\n{r}"
    );
    assert!(
        r.stderr.contains("splitvisor: guest exited with status 0"),
        "{r}"
    );
    // The mmu-server, not the stub, built the nested table: 16 MiB of RAM
    // is a PML4, a PDPT, a PD and eight 2 MiB leaves, ten checked installs.
    let mmu = r
        .stdout
        .lines()
        .find(|l| l.starts_with("[vmm] mmu: "))
        .unwrap_or_else(|| panic!("no mmu statistics line\n{r}"));
    assert!(
        mmu.contains(" live=3 ") && mmu.contains(" installs=10 "),
        "{r}"
    );
}

/// A CPU model without SVM. (QEMU's plain `qemu64` model *does* advertise
/// SVM, without NPT, hence `-svm`.)
#[test]
fn hello_guest_on_a_cpu_without_svm_cannot_run() {
    let r = splitvisor_run(&["--guest", "hello", "--cpu", "qemu64,-svm"]);
    assert_eq!(r.code, Some(102), "{r}");
    assert!(r.all().contains("SVM not available on this CPU"), "{r}");
    assert!(!r.stdout.contains("hello from the guest"), "{r}");
}

#[test]
fn status42_guest_on_svm_exits_42() {
    let r = splitvisor_run(&["--guest", "status42"]);
    assert_eq!(r.code, Some(42), "{r}");
    assert!(
        r.stdout.lines().any(|l| l == "exiting with status 42"),
        "{r}"
    );
}

#[test]
fn triple_fault_guest_on_svm_fails_with_shutdown_exit() {
    let r = splitvisor_run(&["--guest", "triple-fault"]);
    assert_eq!(r.code, Some(101), "{r}");
    let all = r.all();
    assert!(
        all.contains("0x7f"),
        "SHUTDOWN exit code 0x7f not mentioned\n{r}"
    );
    assert!(all.contains("rip="), "guest RIP not mentioned\n{r}");
}

#[test]
fn hello_guest_without_vmm_server_fails_with_no_server() {
    let r = splitvisor_run(&["--guest", "hello", "--no-vmm-server"]);
    assert_eq!(r.code, Some(101), "{r}");
    assert!(r.all().contains("no server"), "{r}");
    assert!(!r.stdout.contains("hello from the guest"), "{r}");
}
