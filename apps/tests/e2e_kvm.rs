//! End-to-end: `splitvisor run --accel kvm|auto`, QEMU with the host's KVM
//! and nested virtualization.
//!
//! The boot under KVM runs only where [`splitvisor::accel::probe_host`]
//! says KVM can run the stub (`/dev/kvm` opens read-write and kvm_amd's or
//! kvm_intel's `nested` is on); elsewhere -- CI, whose `/dev/kvm` is
//! paravirtual -- it prints `skipped: ...` with the reason and passes.
//! The other tests check what `--accel` says before any QEMU starts, on
//! any host, in well under a second each.

mod common;

use splitvisor::accel::{probe_host, KvmStatus};

const TIMEOUT_SECS: u64 = 120;

#[test]
fn hello_boots_under_kvm_where_kvm_can_run_the_stub() {
    let (module, value) = match probe_host() {
        KvmStatus::Usable { module, value } => (module, value),
        KvmStatus::Unusable(why) => {
            eprintln!("skipped: KVM cannot run the stub on this host: {why}");
            return;
        }
    };
    eprintln!("KVM here: {module} nested={value}");
    let r = common::splitvisor_run(&["--guest", "hello", "--accel", "kvm"], TIMEOUT_SECS);
    assert!(r.stderr.contains(" -accel kvm -cpu host"), "{r}");
    assert_eq!(r.code, Some(0), "{r}");
    assert!(r.has_line("hello from the guest"), "{r}");
}

#[test]
fn kvm_where_it_cannot_work_stops_before_qemu_and_says_why() {
    let KvmStatus::Unusable(why) = probe_host() else {
        eprintln!("skipped: KVM can run the stub here");
        return;
    };
    // The image is not even built: the error comes first.
    let r = common::splitvisor_run(&["--guest", "hello", "--accel", "kvm"], TIMEOUT_SECS);
    assert_eq!(r.code, Some(splitvisor::EXIT_EMULATOR), "{r}");
    assert!(
        r.stderr
            .contains(&format!("splitvisor: --accel kvm cannot work here: {why}")),
        "{r}"
    );
    assert!(!r.stderr.contains("booting"), "{r}");
}

#[test]
fn auto_says_in_one_line_which_it_picked_and_why() {
    // A missing emulator ends the run right after the accelerator's line.
    let r = common::splitvisor_run(
        &[
            "--guest",
            "hello",
            "--accel",
            "auto",
            "--emulator",
            "/nonexistent/qemu-system-x86_64",
        ],
        TIMEOUT_SECS,
    );
    let lines: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.starts_with("splitvisor: accel auto: "))
        .collect();
    assert_eq!(lines.len(), 1, "{r}");
    let expected = match probe_host() {
        KvmStatus::Usable { module, value } => {
            format!("splitvisor: accel auto: kvm (/dev/kvm opens, {module} nested={value})")
        }
        KvmStatus::Unusable(why) => format!("splitvisor: accel auto: tcg ({why})"),
    };
    assert_eq!(lines[0], expected, "{r}");
    assert_eq!(r.code, Some(splitvisor::EXIT_EMULATOR), "{r}");
}

#[test]
fn bochs_has_no_kvm() {
    let r = common::splitvisor_run(
        &["--guest", "hello", "--emulator", "bochs", "--accel", "kvm"],
        TIMEOUT_SECS,
    );
    assert_eq!(r.code, Some(2), "{r}");
    assert!(r.stderr.contains("Bochs has no KVM acceleration"), "{r}");
}
