//! End-to-end: Debian's amd64 kernel on the PC board in QEMU (TCG,
//! emulated SVM with NPT) with `--rng`: a virtio-pci entropy function at
//! PCI 00:03.0 whose device model runs as a ring-3 server of its own (the
//! virtio-rng task, crate `virtio-servers`), reached from the vmm-server's
//! PCI proxy over a channel.
//!
//! The guest finds the function through the DSDT's root bridge, loads
//! `virtio_rng`, and `/init` (with `splitvisor.rng`) reads 4096 bytes from
//! `/dev/hwrng` twice and prints their count and MD5: both reads must be
//! whole and differ.
//!
//! ```sh
//! cargo test -p splitvisor --test e2e_virtio_rng_qemu_svm -- --nocapture
//! ```

mod common;

use splitvisor::linux::{INIT_MARKER, RNG_LINE};

/// Seconds one boot may take.
const TIMEOUT_SECS: u64 = 900;

/// Boots with `--rng`, `extra` options and `append`, checks both reads of
/// /dev/hwrng, and returns the console.
fn read_rng(extra: &[&str], append: &str) -> String {
    let _one = common::ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let run = common::splitvisor_run(
        &[
            &common::AMD64_PC_NPT[..],
            &["--rng", "--append", append],
            extra,
        ]
        .concat(),
        TIMEOUT_SECS,
    );
    let out = common::rejoin_interrupted_lines(&run.stdout);
    if std::env::var_os("SPLITVISOR_SHOW_CONSOLES").is_some() {
        eprintln!("{run}");
    }
    for needle in [
        "ACPI: PCI Root Bridge [PCI0] (domain 0000 [bus 00])",
        INIT_MARKER,
        "splitvisor-linux: powering off through ACPI",
    ] {
        assert!(out.contains(needle), "no `{needle}`\n{run}");
    }
    let reads: Vec<&str> = out
        .lines()
        .filter_map(|l| l.trim_end().strip_prefix(RNG_LINE))
        .collect();
    assert_eq!(reads.len(), 2, "two reads of /dev/hwrng\n{run}");
    let md5s: Vec<&str> = reads
        .iter()
        .map(|r| {
            let md5 = r
                .strip_prefix("virtio_rng.0 4096 bytes, md5 ")
                .unwrap_or_else(|| panic!("not 4096 bytes from virtio_rng.0: {r}\n{run}"));
            assert_eq!(md5.len(), 32, "{r}");
            md5
        })
        .collect();
    assert_ne!(md5s[0], md5s[1], "the two reads were the same\n{run}");
    assert!(!out.contains("virtio-rng] panic"), "{run}");
    assert_eq!(run.code, Some(0), "{run}");
    out
}

/// The line of `/proc/interrupts` (printed by `splitvisor.platform`) of
/// the virtio function's interrupt that has all of `words`.
fn interrupt_line<'a>(out: &'a str, words: &[&str]) -> Option<&'a str> {
    out.lines()
        .find(|l| l.contains("virtio0") && words.iter().all(|w| l.contains(w)))
}

#[test]
fn debian_amd64_reads_the_virtio_rng_with_npt() {
    let out = read_rng(&[], "splitvisor.platform splitvisor.rng splitvisor.exit");
    // Device ID 0x1040 + 4 (entropy), VIRTIO 1.2 §4.1.2.1.
    assert!(out.contains("pci 0000:00:03.0: [1af4:1044]"), "{out}");
    assert!(
        interrupt_line(&out, &["PCI-MSI"]).is_some(),
        "no MSI-X interrupt of virtio0 in /proc/interrupts\n{out}"
    );
}

/// Without MSI (`pci=nomsi`) the function interrupts through INTA#, which
/// Linux routes by the DSDT's `_PRT` to the link `LNK3`, line 10, level
/// and active high: the reads complete only if that routing is right.
#[test]
fn debian_amd64_reads_the_virtio_rng_through_inta_and_the_prt() {
    let out = read_rng(
        &[],
        "pci=nomsi splitvisor.platform splitvisor.rng splitvisor.exit",
    );
    assert!(
        out.contains("ACPI: \\_SB_.LNK3: Enabled at IRQ 10"),
        "{out}"
    );
    // Level-triggered (fasteoi) on I/O APIC pin 10.
    assert!(
        interrupt_line(&out, &["IO-APIC", "10-fasteoi"]).is_some(),
        "virtio0 is not on IO-APIC 10-fasteoi\n{out}"
    );
}

/// All three slots: hvc0 at 00:03.0, the disk at 00:04.0, the entropy
/// device at 00:05.0, each on its own link and line (10, 11, 5), level, on
/// the I/O APIC (`pci=nomsi`).
#[test]
fn debian_amd64_reads_the_virtio_rng_in_the_third_slot_through_lnk5() {
    let dir = common::disk::Scratch::new("rng");
    let img = dir.join("disk.img");
    splitvisor::linux_virtio::make_ext4_image(&img, 64).unwrap_or_else(|e| panic!("{e}"));
    let disk = img.to_string_lossy().into_owned();
    let out = read_rng(
        &["--console", "hvc0", "--disk", &disk],
        "pci=nomsi splitvisor.platform splitvisor.rng splitvisor.exit",
    );
    for needle in [
        "pci 0000:00:03.0: [1af4:1043]",
        "pci 0000:00:04.0: [1af4:1042]",
        "pci 0000:00:05.0: [1af4:1044]",
        "ACPI: \\_SB_.LNK5: Enabled at IRQ 5",
    ] {
        assert!(out.contains(needle), "no `{needle}`\n{out}");
    }
    // virtio2 (the third function to probe) is the entropy device.
    assert!(
        out.lines()
            .any(|l| l.contains("virtio2") && l.contains("IO-APIC") && l.contains(" 5-fasteoi")),
        "virtio2 is not on IO-APIC 5-fasteoi\n{out}"
    );
}
