//! End-to-end: the CR3-switch guests (`images/guests/cr3switch*.S`: 8
//! address spaces of 64 pages, 4000 CR3 switches with PTE edits, INVLPG
//! and large pages, one per paging mode; and `cr3bench64`, the same in
//! long mode without the edits), each booted in QEMU (TCG) with
//! emulated AMD SVM twice: with nested paging (`EPYC,+svm,+npt`) and with
//! the mmu-server's shadow tables on a CPU without NPT (`EPYC,+svm,-npt`).
//! Both runs must pass the guest's own checks and print the same checksum
//! of what it read.
//!
//! They need `qemu-system-x86_64`, gcc and binutils (`scripts/install-deps`).

use ipc_proto::manifest::MmuMode;
use splitvisor::e2e::boot_with_mmu as boot;

/// The CR3 loads each guest makes (`NSWITCH` in `cr3switch.inc`).
const SWITCHES: u64 = 4000;

/// Boots `guest` with NPT and with shadow paging: both pass, with the same
/// checksum; the shadow run took every CR3 load, INVLPG exited only while
/// a leaf table was unsync, and its cache survived the switches (a handful of shadow faults per
/// switch with the PTE edits, almost none without, where the 2006 baseline
/// takes one per touched page, 64 and more).
fn npt_and_shadow_agree(guest: &str, edits: bool) {
    let npt = boot(guest, MmuMode::Nested, "EPYC,+svm,+npt", "npt");
    npt.assert_passed();
    let shadow = boot(guest, MmuMode::Shadow, "EPYC,+svm,-npt", "shadow");
    shadow.assert_passed();
    assert_eq!(
        npt.checksum(),
        shadow.checksum(),
        "{guest}: the checksums differ\n--- npt:\n{}\n--- shadow:\n{}",
        npt.console,
        shadow.console
    );
    let loads = shadow.mmu_figure("cr3_loads");
    assert!(loads >= SWITCHES, "cr3_loads={loads}");
    // INVLPG exits only while some table is unsync (the edits come one or
    // two per table between CR3 loads, fewer than `unsync_after`, so they
    // are emulated); otherwise the guest's own INVLPG runs natively, and
    // the equal checksums show that it suffices.
    let (unsyncs, invlpg) = (shadow.mmu_figure("unsyncs"), shadow.mmu_figure("invlpg"));
    assert!(
        invlpg == 0 || unsyncs > 0,
        "unsyncs={unsyncs} invlpg={invlpg}"
    );
    assert_eq!(shadow.mmu_figure("syncs"), unsyncs);
    assert!(shadow.mmu_figure("root_hits") >= SWITCHES - 16);
    let faults = shadow.mmu_figure("faults");
    let most = if edits { 16 * SWITCHES } else { SWITCHES };
    assert!(
        faults < most,
        "{guest}: {faults} shadow faults for {loads} CR3 loads: the cache did not survive the \
         switches"
    );
}

#[test]
fn cr3switch32_npt_and_shadow_agree_on_svm() {
    npt_and_shadow_agree("cr3switch32", true);
}

#[test]
fn cr3switchpae_npt_and_shadow_agree_on_svm() {
    npt_and_shadow_agree("cr3switchpae", true);
}

#[test]
fn cr3switch64_npt_and_shadow_agree_on_svm() {
    npt_and_shadow_agree("cr3switch64", true);
}

/// The benchmark's pure context-switch workload: no PTE edits.
#[test]
fn cr3bench64_npt_and_shadow_agree_on_svm() {
    npt_and_shadow_agree("cr3bench64", false);
}
