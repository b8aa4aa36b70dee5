//! End-to-end: Debian's amd64 kernel on the PC board in QEMU (TCG,
//! emulated SVM) with `--console hvc0`: a virtio-pci console at PCI
//! 00:03.0 whose device model runs as a ring-3 server of its own (the
//! virtio-console task, crate `virtio-servers`), reached from the
//! vmm-server's PCI proxy over a channel (`ipc_proto::pci`).
//!
//! The guest's console is hvc0 alone (`console=hvc0`): everything the test
//! reads from the guest came through the virtio console's transmit queue
//! and the server's `ConsoleWrite` -- the kernel's log so far (which
//! `/init` copies to hvc0, between its two markers), `/init`'s marker and
//! `uname -a`, and `splitvisor.exit`'s power-off through ACPI (status 0;
//! the kernel's own `reboot: Power down` is not seen: the virtio console
//! is shut down before the kernel prints it).
//!
//! Then the same boot with COM1 (`--console ttyS0`, the 8250) for the
//! exits each console costs: the vmm-server's final statistics line counts
//! them, and the test prints both.
//!
//! ```sh
//! cargo test -p splitvisor --test e2e_virtio_console_qemu_svm -- --nocapture
//! ```

mod common;

use splitvisor::linux::{HVC_LOG_BEGIN, HVC_LOG_END, INIT_MARKER};

/// Seconds one boot may take.
const TIMEOUT_SECS: u64 = 900;

/// The total of the vmm-server's last `[vmm] exits: total=N` line.
fn total_exits(out: &str) -> Option<u64> {
    out.lines()
        .rev()
        .find_map(|l| l.split("[vmm] exits: total=").nth(1))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

fn boot(console: &str, mmu: &str) -> common::Run {
    let (cpu, unsafe_shadow): (&str, &[&str]) = if mmu == "npt" {
        ("EPYC,+svm,+npt", &[])
    } else {
        ("EPYC,+svm", &["--unsafe-shadow"])
    };
    boot_with(console, mmu, &[&["--cpu", cpu][..], unsafe_shadow].concat())
}

fn boot_with(console: &str, mmu: &str, extra: &[&str]) -> common::Run {
    let args = [
        &[
            "--linux",
            "amd64",
            "--mmu",
            mmu,
            "--board",
            "pc",
            "--console",
            console,
            "--append",
            "splitvisor.exit",
        ][..],
        extra,
    ]
    .concat();
    common::splitvisor_run(&args, TIMEOUT_SECS)
}

fn check_hvc0_boot(mmu: &str) -> u64 {
    check_hvc0_run(boot("hvc0", mmu))
}

fn check_hvc0_run(run: common::Run) -> u64 {
    let out = &run.stdout;
    let has = |needle: &str| out.contains(needle);
    for needle in [
        HVC_LOG_BEGIN,
        "Linux version 6.",
        // Linux finds the function through the DSDT's root bridge, and
        // routes its INTA# through the slot's interrupt link (`_PRT`).
        "ACPI: PCI Root Bridge [PCI0] (domain 0000 [bus 00])",
        "pci_bus 0000:00: root bus resource [mem 0xfe000000-0xfeafffff window]",
        "pci 0000:00:03.0: [1af4:1043]",
        "ACPI: \\_SB_.LNK3: Enabled at IRQ 10",
        HVC_LOG_END,
        INIT_MARKER,
        "Linux (none) 6.1.0-",
        "splitvisor-linux: powering off through ACPI",
    ] {
        assert!(has(needle), "no `{needle}`\n{run}");
    }
    // The BARs stay where the board put them, in the PCI window.
    assert!(
        has("pci 0000:00:03.0: BAR 0 [mem 0xfe000000-0xfe003fff]")
            && has("pci 0000:00:03.0: BAR 1 [mem 0xfe004000-0xfe004fff]"),
        "the BARs are not the board's\n{run}"
    );
    // The command line is the test's alone (no `pci=lastbus=1`).
    assert!(
        out.lines().any(|l| l
            .trim_end()
            .ends_with("Kernel command line: console=hvc0 splitvisor.exit")),
        "{run}"
    );
    assert!(
        !has("splitvisor-linux: console=hvc0 but no /dev/hvc0"),
        "no hvc0\n{run}"
    );
    assert_eq!(run.code, Some(0), "{run}");
    total_exits(out).unwrap_or_else(|| panic!("no exit statistics\n{run}"))
}

#[test]
fn debian_amd64_boots_on_hvc0_with_npt_and_saves_exits_against_ttys0() {
    let _one = common::ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let hvc0 = check_hvc0_boot("npt");
    let serial = boot("ttyS0", "npt");
    assert!(
        serial.stdout.contains(INIT_MARKER),
        "the ttyS0 boot did not reach /init\n{serial}"
    );
    let ttys0 =
        total_exits(&serial.stdout).unwrap_or_else(|| panic!("no exit statistics\n{serial}"));
    eprintln!(
        "debian amd64 npt, boot to splitvisor.exit: hvc0 {hvc0} exits, ttyS0 {ttys0} exits, \
         {} saved",
        ttys0.saturating_sub(hvc0)
    );
    assert!(hvc0 < ttys0, "hvc0 {hvc0} exits, ttyS0 {ttys0}");
}

#[test]
fn debian_amd64_boots_on_hvc0_with_shadow_paging() {
    let _one = common::ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let hvc0 = check_hvc0_boot("shadow");
    eprintln!("debian amd64 shadow, boot to splitvisor.exit: hvc0 {hvc0} exits");
}

/// One Bochs VMX run (EPT): about 5 minutes, so not in CI's run.
#[test]
#[ignore = "about 5 minutes on Bochs; run with --ignored"]
fn debian_amd64_boots_on_hvc0_on_bochs_vmx_with_ept() {
    let _one = common::ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let run = boot_with("hvc0", "npt", &["--emulator", "bochs", "--arch", "vmx"]);
    let hvc0 = check_hvc0_run(run);
    eprintln!("debian amd64 bochs vmx ept, boot to splitvisor.exit: hvc0 {hvc0} exits");
}

#[test]
fn exit_totals_are_read_from_the_last_statistics_line() {
    let out = "[vmm] exits: total=5 ioio=1\nx\n[vmm] exits: total=16917 ioio=5514 hlt=699\n";
    assert_eq!(total_exits(out), Some(16917));
    assert_eq!(total_exits("nothing"), None);
}
