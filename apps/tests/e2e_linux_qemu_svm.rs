//! End-to-end: Debian's stock kernels with a busybox initramfs under
//! splitvisor in QEMU (TCG, emulated SVM), through `splitvisor run --linux
//! FLAVOUR`: the x86-64 kernel with nested paging and with shadow paging,
//! the i386 `686` (two-level paging) and `686-pae` kernels with shadow
//! paging.
//!
//! The kernel command line gets `splitvisor.workload splitvisor.exit`: the
//! initramfs's `/init` prints its marker and `uname -a`, runs the MMU
//! workload (`apps/linux/workload.c`: fork+exec of 300 processes, 2000
//! pipe round trips between two processes, 200 mmap/munmap of a 64-page
//! file), prints its results and ends the VM with status 0 by writing to
//! port 0xF4 through `/dev/port`. The test reads all of it from the guest's
//! serial output.
//!
//! The first run downloads about 180 MB of Debian packages with `apt-get
//! download` (into `.cache/linux/`, reused afterwards; the i386 ones need
//! `dpkg --add-architecture i386`, which `scripts/install-deps` does). On a
//! 2.6 GHz EPYC host with QEMU 7.2 TCG each boot takes 15 to 30 s. Run only
//! these with
//!
//! ```sh
//! cargo test -p splitvisor --test e2e_linux_qemu_svm -- --nocapture
//! ```

use std::process::Command;

use splitvisor::linux::{Flavour, INIT_MARKER, WORKLOAD_END};

/// Seconds one boot may take.
const TIMEOUT_SECS: &str = "900";

/// The boots share `.cache/linux/` and the two cores: one at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn boot_linux(flavour: Flavour, mmu: &str) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // Shadow paging on a CPU without NPT, as a user without it would.
    let cpu = if mmu == "npt" {
        "EPYC,+svm,+npt"
    } else {
        "EPYC,+svm"
    };
    let out = Command::new(env!("CARGO_BIN_EXE_splitvisor"))
        .args(["run", "--linux", flavour.name(), "--mmu", mmu, "--cpu", cpu])
        .args(["--append", "splitvisor.workload splitvisor.exit"])
        .args(["--timeout", TIMEOUT_SECS])
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

#[test]
fn debian_amd64_runs_the_workload_with_npt() {
    boot_linux(Flavour::Amd64, "npt");
}

#[test]
fn debian_amd64_runs_the_workload_with_shadow_paging() {
    boot_linux(Flavour::Amd64, "shadow");
}

#[test]
fn debian_686_runs_the_workload_with_shadow_paging() {
    boot_linux(Flavour::I686, "shadow");
}

#[test]
fn debian_686_pae_runs_the_workload_with_shadow_paging() {
    boot_linux(Flavour::I686Pae, "shadow");
}
