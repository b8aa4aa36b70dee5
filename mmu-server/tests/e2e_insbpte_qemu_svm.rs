//! End-to-end: shadow coherence when the vmm-server writes a live guest
//! page table. The `insbpte` guest (`images/guests/insbpte.S`) maps a page
//! through its own page table, uses it (so the shadow MMU caches the
//! translation and write-protects the table), then rewrites the PTE with
//! `rep insb` from the UART's scratch register, which the vmm-server
//! emulates by writing guest RAM through its window, past the write
//! protection; after a CR3 reload the guest must see the new frame. The
//! vmm-server reports the frames it wrote over its guest-writes channel
//! (`ipc_proto::guest_writes`), and the mmu-server resyncs them at its
//! notification exit before the guest runs again.
//!
//! Booted in QEMU (TCG) with emulated AMD SVM: with the mmu-server's
//! shadow tables on a CPU without NPT (`EPYC,+svm,-npt`), the case this
//! is about, and with nested paging, the reference.
//!
//! They need `qemu-system-x86_64`, gcc and binutils (`scripts/install-deps`).

use ipc_proto::manifest::MmuMode;
use splitvisor::e2e::boot_with_mmu as boot;

fn passes(mmu: MmuMode, cpu: &str, how: &str) {
    let b = boot("insbpte", mmu, cpu, how);
    b.assert_status_0();
    assert!(
        b.has_line("insbpte: PASS: after mov cr3, 0x00800000 reads frame 0x303000"),
        "{how}:\n{}",
        b.console
    );
}

#[test]
fn insbpte_under_shadow_paging_sees_the_new_translation_on_svm() {
    passes(MmuMode::Shadow, "EPYC,+svm,-npt", "shadow");
}

#[test]
fn insbpte_under_nested_paging_sees_the_new_translation_on_svm() {
    passes(MmuMode::Nested, "EPYC,+svm,+npt", "npt");
}
