//! What the Linux end-to-end tests share: one boot of `splitvisor run
//! --linux FLAVOUR` with the MMU workload, and the checks of its serial
//! output.

use std::process::Command;

use splitvisor::linux::{Flavour, INIT_MARKER, WORKLOAD_END};

/// The boots share `.cache/linux/` and the two cores: one at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Boots `flavour` with `--mmu mmu` and `extra` arguments (emulator, CPU)
/// through the workload, kills it after `timeout_secs`, and checks that the
/// kernel started, `/init` printed its marker and `uname -a` of this kernel,
/// the workload passed every part, and the VM ended with status 0.
pub fn boot_linux(flavour: Flavour, mmu: &str, extra: &[&str], timeout_secs: u64) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let out = Command::new(env!("CARGO_BIN_EXE_splitvisor"))
        .args(["run", "--linux", flavour.name(), "--mmu", mmu])
        .args(extra)
        .args(["--append", "splitvisor.workload splitvisor.exit"])
        .args(["--timeout", &timeout_secs.to_string()])
        .output()
        .expect("the splitvisor binary starts");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report = format!(
        "exit status {:?}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        out.status.code()
    );
    let lines: Vec<&str> = stdout.lines().collect();
    for l in lines
        .iter()
        .filter(|l| l.starts_with("workload: ") || l.starts_with("[vmm] mmu:"))
    {
        eprintln!("{} {mmu}: {l}", flavour.name());
    }
    assert!(
        stdout.contains("Linux version 6."),
        "the kernel did not start\n{report}"
    );
    assert!(lines.contains(&INIT_MARKER), "no init marker\n{report}");
    let uname = "Linux (none) 6.1.0-";
    let uname_line = lines
        .iter()
        .find(|l| l.starts_with(uname))
        .unwrap_or_else(|| panic!("no uname -a from the initramfs\n{report}"));
    assert!(
        uname_line.contains(&format!("-{} ", flavour.name()))
            && uname_line.contains(&format!(" {} GNU/Linux", flavour.machine())),
        "not the {} kernel: {uname_line}\n{report}",
        flavour.name()
    );
    for (part, count) in [
        ("fork+exec", "300 processes"),
        ("pipe ping-pong", "2000 round trips"),
        ("mmap/munmap", "200 maps of a 64-page file"),
    ] {
        let prefix = format!("workload: {part} {count} in ");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&prefix) && l.ends_with(" ms ok")),
            "no `{prefix}... ms ok` line\n{report}"
        );
    }
    assert!(
        lines.contains(&"workload: done, 0 failed"),
        "the workload failed\n{report}"
    );
    assert!(
        lines.contains(&format!("{WORKLOAD_END}0").as_str()),
        "/init did not report the workload's status\n{report}"
    );
    if mmu == "shadow" {
        assert!(
            lines.iter().any(|l| l.starts_with("[vmm] mmu: faults=")),
            "no shadow cache figures at the end\n{report}"
        );
    }
    assert_eq!(out.status.code(), Some(0), "{report}");
}
