//! End-to-end: the short attack campaign (`splitvisor attack --short`):
//! the hostile mmu-server and vmm-server against the stub, under nested
//! and shadow paging in QEMU (TCG) with emulated SVM, and the guest-side
//! attacks when the image builder has them. No stub fault and no escape;
//! and every class ran, and the probe guest ran to its end after the main
//! campaigns (the stub was still intact). In the main boot under shadow
//! paging the two hostile servers also signal each other before every
//! `VcpuRun` (over the vmm-server's guest-writes channel): each signal is
//! a notification exit for the other, and only the stub's rule of one
//! notification exit per task between two guest entries lets the probe
//! guest run to its end (`kernel_stub::notify::ExitGate`).
//!
//! Needs `qemu-system-x86_64`, gcc and binutils (`scripts/install-deps`);
//! fails without them.

use std::time::Duration;

use ipc_proto::manifest::MmuMode;
use splitvisor::attack::{campaign, AttackOptions};

#[test]
fn the_short_campaign_finds_no_stub_fault_and_no_escape() {
    let opts = AttackOptions {
        short: true,
        modes: vec![MmuMode::Nested, MmuMode::Shadow],
        timeout: Duration::from_secs(240),
        // The random class has its own test (e2e_attack_random.rs).
        boots: vec!["main".into(), "destructive".into(), "fpu".into()],
        ..AttackOptions::default()
    };
    let report = campaign(&opts).expect("the campaign runs (QEMU, gcc, binutils installed)");
    let table = report.table();
    eprintln!("{table}");
    for class in [
        "installs",
        "resumes",
        "syscalls",
        "exhaustion",
        "fpu",
        "portio",
        "virtio",
    ] {
        let row = report.rows.get(class).copied().unwrap_or_default();
        assert!(row.attempts > 0, "class {class} made no attempt:\n{table}");
    }
    let total = report.total();
    assert_eq!(
        (total.stub_faults, total.escapes),
        (0, 0),
        "stub faults and escapes:\n{table}\nstub faults: {:#?}\nescapes: {:#?}",
        report.stub_faults,
        report.escapes
    );
    assert!(
        report.probe_ok,
        "the probe guest did not run to its end after a main campaign:\n{table}\n{:#?}",
        report.notes
    );
}
