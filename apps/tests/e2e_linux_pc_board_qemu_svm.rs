//! End-to-end: Debian's stock kernels on the PC board (`--board pc`: local
//! APIC, I/O APIC, ACPI, fw_cfg) in QEMU (TCG, emulated SVM), with only
//! `console=ttyS0` added to the stock command line -- no `tsc_early_khz`,
//! no `tsc=reliable`, no APIC hidden in CPUID.
//!
//! From the guest's own console each test reads: the kernel found the ACPI
//! tables at 0xE0000 and the I/O APIC from the MADT, calibrated its TSC
//! against a clock of the board (the ACPI PM timer), routes the PIT through
//! the I/O APIC (`/proc/interrupts`: `IO-APIC 2-edge timer`) and takes
//! local APIC timer interrupts (a rising `LOC` count); the MMU workload
//! passes; and `/init`'s exit powers the machine off through ACPI S5
//! (`reboot: Power down`, status 0), not through the debug-exit port.
//!
//! ```sh
//! cargo test -p splitvisor --test e2e_linux_pc_board_qemu_svm -- --nocapture
//! ```

mod common;

use splitvisor::linux::Flavour;

/// Seconds one boot may take.
const TIMEOUT_SECS: u64 = 900;

fn boot_on_pc_board(flavour: Flavour, mmu: &str) {
    let (cpu, unsafe_shadow): (&str, &[&str]) = if mmu == "npt" {
        ("EPYC,+svm,+npt", &[])
    } else {
        // QEMU's TCG ignores the task-switch intercept: the stub runs
        // shadow paging there only when told (Debian's kernel is trusted).
        ("EPYC,+svm", &["--unsafe-shadow"])
    };
    let args = [&["--board", "pc", "--cpu", cpu][..], unsafe_shadow].concat();
    let run =
        common::boot_linux_appending(flavour, mmu, &args, "splitvisor.platform", TIMEOUT_SECS);
    let report = run.to_string();
    let out = &run.stdout;
    let has = |needle: &str| out.contains(needle);
    assert!(
        out.lines().any(|l| l.trim_end().ends_with(
            "Kernel command line: console=ttyS0 splitvisor.platform splitvisor.workload splitvisor.exit"
        )),
        "not the stock command line with console=ttyS0 alone\n{report}"
    );
    for needle in [
        "ACPI: RSDP 0x00000000000E0000",
        "ACPI: PM-Timer IO Port: 0x608",
        "IOAPIC[0]: apic_id 0, version 17, address 0xfec00000, GSI 0-23",
        "ACPI: INT_SRC_OVR (bus 0 bus_irq 0 global_irq 2 dfl dfl)",
        "tsc: using PMTIMER reference calibration",
        "ACPI: PM: Preparing to enter system sleep state S5",
        "reboot: Power down",
        "splitvisor-linux: powering off through ACPI",
    ] {
        assert!(has(needle), "no `{needle}`\n{report}");
    }
    assert!(
        !has("splitvisor-linux: exiting through port 0xf4"),
        "ended through the debug-exit port, not ACPI\n{report}"
    );
    let lines: Vec<&str> = out.lines().collect();
    let timer = lines
        .iter()
        .find(|l| l.trim_start().starts_with("0:") && l.ends_with(" timer"))
        .unwrap_or_else(|| panic!("no IRQ 0 line in /proc/interrupts\n{report}"));
    assert!(
        timer.contains("IO-APIC") && timer.contains("2-edge"),
        "IRQ 0 is not routed through I/O APIC pin 2: {timer}\n{report}"
    );
    let loc: u64 = lines
        .iter()
        .find_map(|l| l.trim_start().strip_prefix("LOC:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no LOC line in /proc/interrupts\n{report}"));
    assert!(
        loc > 100,
        "only {loc} local APIC timer interrupts\n{report}"
    );
    eprintln!("{} {mmu}: LOC {loc}; {}", flavour.name(), timer.trim());
}

#[test]
fn debian_amd64_on_the_pc_board_with_npt() {
    boot_on_pc_board(Flavour::Amd64, "npt");
}

#[test]
fn debian_amd64_on_the_pc_board_with_shadow_paging() {
    boot_on_pc_board(Flavour::Amd64, "shadow");
}

#[test]
fn debian_686_pae_on_the_pc_board_with_shadow_paging() {
    boot_on_pc_board(Flavour::I686Pae, "shadow");
}

#[test]
fn debian_686_on_the_pc_board_with_npt() {
    boot_on_pc_board(Flavour::I686, "npt");
}

#[test]
fn a_kernel_message_inside_a_program_line_is_moved_out() {
    let console = "a\nworkload: [    9.611830] clocksource: Long readout\nfork+exec 300 ok\nb";
    assert_eq!(
        common::rejoin_interrupted_lines(console),
        "a\n[    9.611830] clocksource: Long readout\nworkload: fork+exec 300 ok\nb"
    );
    assert_eq!(
        common::rejoin_interrupted_lines("[    1.0] x\ny"),
        "[    1.0] x\ny"
    );
}

/// The guest's TSC follows the board's virtual clock (a TSC offset that
/// leaves out the time spent handling exits, as the PIT, PM timer and LAPIC
/// timer do): Debian calibrates it at QEMU's 1 GHz against the PM timer and
/// keeps it as its clocksource. With the guest's TSC the host's it read
/// 1770 MHz, and the watchdog marked it unstable ("broken BIOS").
#[test]
fn debian_amd64_tsc_agrees_with_the_board_clocks() {
    let args = ["--board", "pc", "--cpu", "EPYC,+svm,+npt"];
    let run = common::boot_linux_appending(Flavour::Amd64, "npt", &args, "", TIMEOUT_SECS);
    let out = &run.stdout;
    let mhz: f64 = out
        .lines()
        .find_map(|l| l.split("tsc: Detected ").nth(1))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no `tsc: Detected` line\n{run}"));
    assert!(
        (995.0..=1005.0).contains(&mhz),
        "TSC calibrated at {mhz} MHz\n{run}"
    );
    assert!(
        !out.contains("Marking TSC unstable"),
        "the TSC was marked unstable\n{run}"
    );
}
