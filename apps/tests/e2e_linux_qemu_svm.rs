//! End-to-end: Debian's stock x86-64 kernel (`linux-image-amd64`) with a
//! busybox initramfs under splitvisor in QEMU (TCG, emulated SVM), through
//! `splitvisor run --linux`.
//!
//! The first run downloads about 72 MB of Debian packages with `apt-get
//! download` (into `.cache/linux/`, reused afterwards); each boot takes
//! about 10 s (NPT) and 20 s (shadow paging) on a 2.6 GHz EPYC host with
//! QEMU 7.2 TCG. Run only these with
//!
//! ```sh
//! cargo test -p splitvisor --test e2e_linux_qemu_svm
//! ```
//!
//! The kernel command line gets `splitvisor.exit`: the initramfs's `/init`
//! prints its marker and then ends the VM with status 0 by writing to port
//! 0xF4 through `/dev/port`.

use std::process::Command;

/// Seconds one boot may take.
const TIMEOUT_SECS: &str = "900";

/// The two boots share `.cache/linux/`: the first fetches and unpacks.
static CACHE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn boot_linux(mmu: &str) {
    let _cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    let out = Command::new(env!("CARGO_BIN_EXE_splitvisor"))
        .args([
            "run",
            "--linux",
            "--mmu",
            mmu,
            "--append",
            "splitvisor.exit",
        ])
        .args(["--timeout", TIMEOUT_SECS])
        .output()
        .expect("the splitvisor binary starts");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report = format!(
        "exit status {:?}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        out.status.code()
    );
    assert!(
        stdout.contains("Linux version 6."),
        "the kernel did not start\n{report}"
    );
    assert!(
        stdout.lines().any(|l| l == splitvisor::linux::INIT_MARKER),
        "no init marker\n{report}"
    );
    assert!(
        stdout.contains("Linux (none) 6."),
        "no uname -a from the initramfs\n{report}"
    );
    assert_eq!(out.status.code(), Some(0), "{report}");
}

#[test]
fn debian_linux_boots_to_init_with_npt() {
    boot_linux("npt");
}

#[test]
fn debian_linux_boots_to_init_with_shadow_paging() {
    boot_linux("shadow");
}
