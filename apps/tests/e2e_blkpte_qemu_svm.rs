//! End-to-end: shadow coherence when a device server writes a live guest
//! page table. The `blkpte` guest (`images/guests/blkpte.S`) maps a page
//! through its own page table, uses it (so the shadow MMU caches the
//! translation and write-protects the table), then issues a legal
//! virtio-blk READ whose data buffer is that page table: the disk-driver
//! server writes the sectors into guest RAM through its window, past the
//! write protection. After a CR3 reload the guest must see the frame the
//! new PTE names; then once more with an 8 KiB buffer whose second frame
//! is the table. The guest's CPU never writes the table, so under shadow
//! paging only the disk-driver's report over its guest-writes channel
//! (`ipc_proto::guest_writes`) makes the mmu-server resync it; without
//! the report the guest prints `blkpte: FAIL: stale translation ...`.
//!
//! Booted in QEMU (TCG) with emulated AMD SVM on the PC board: under the
//! mmu-server's shadow tables on a CPU without NPT, the case this is
//! about, and under nested paging, the reference; and under shadow paging
//! on Bochs with emulated Intel VMX.
//!
//! ```sh
//! cargo test -p splitvisor --test e2e_blkpte_qemu_svm -- --nocapture
//! ```

mod common;

use common::disk::scratch_image;
use common::Run;

/// A page table whose entry 0 maps `frame` (present, writable), the rest
/// not present.
fn page_table(frame: u32) -> Vec<u8> {
    let mut page = vec![0u8; 4096];
    page[..4].copy_from_slice(&(frame | 3).to_le_bytes());
    page
}

/// What the guest reads: sectors 0-7 a page table mapping frame 0x303000
/// (step 1), sectors 8-15 the scratch page's fill and 16-23 a page table
/// mapping frame 0x306000 (step 2, one 8 KiB buffer).
fn disk_image() -> Vec<u8> {
    let mut bytes = page_table(0x30_3000);
    bytes.extend(std::iter::repeat_n(0x5a, 4096));
    bytes.extend(page_table(0x30_6000));
    bytes.resize(1 << 20, 0);
    bytes
}

fn run(tag: &str, extra: &[&str]) -> Run {
    let (_dir, disk) = scratch_image(&format!("blkpte-{tag}"), &disk_image(), 0);
    let mut args = vec!["--guest", "blkpte", "--board", "pc", "--disk", &disk];
    args.extend(extra);
    common::splitvisor_run(&args, 300)
}

/// A figure of the vmm-server's `[vmm] mmu: key=value ...` line.
fn mmu_figure(r: &Run, key: &str) -> u64 {
    let line = r
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("[vmm] mmu: "))
        .unwrap_or_else(|| panic!("no `[vmm] mmu:` line\n{r}"));
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in `{line}`"))
}

fn assert_pass(r: &Run) {
    for line in [
        "blkpte: 0x00800000 reads frame 0x300000",
        "blkpte: virtio-blk read sectors 0-7 into the live page table: pte 0x00303003",
        "blkpte: PASS: after mov cr3, 0x00800000 reads frame 0x303000",
        "blkpte: virtio-blk read sectors 8-23 into a scratch page and the live page table: pte 0x00306003",
        "blkpte: PASS: after mov cr3, 0x00800000 reads frame 0x306000",
        "blkpte: all checks passed",
        "[stub] vm stopped: guest status 0",
    ] {
        assert!(r.has_line(line), "no `{line}`\n{r}");
    }
    assert!(!r.stdout.contains("FAIL"), "{r}");
    assert!(!r.stdout.contains("panic"), "{r}");
    assert_eq!(r.code, Some(0), "{r}");
}

/// The stub ran the guest with `mode` (`svm: shadow paging`, ...).
fn assert_mode(r: &Run, mode: &str) {
    let line = format!("[stub] {mode}, guest RAM 16 MiB,");
    assert!(
        r.stdout.lines().any(|l| l.starts_with(&line)),
        "no `{line}...`\n{r}"
    );
}

/// Under shadow paging: no write of the guest's CPU hit a write-protected
/// table (wp_faults would resync it), so the disk-driver's reports made
/// the resyncs, one per READ.
fn assert_resynced_by_the_reports(r: &Run) {
    assert_eq!(mmu_figure(r, "wp_faults"), 0, "{r}");
    assert!(mmu_figure(r, "resyncs") >= 2, "{r}");
}

#[test]
fn blkpte_under_shadow_paging_sees_the_new_translation_on_svm() {
    let r = run(
        "shadow",
        &[
            "--mmu",
            "shadow",
            "--cpu",
            "EPYC,+svm,-npt",
            "--unsafe-shadow",
        ],
    );
    assert_pass(&r);
    assert_mode(&r, "svm: shadow paging");
    assert_resynced_by_the_reports(&r);
}

#[test]
fn blkpte_under_nested_paging_sees_the_new_translation_on_svm() {
    let r = run("npt", &["--mmu", "npt", "--cpu", "EPYC,+svm,+npt"]);
    assert_pass(&r);
    assert_mode(&r, "svm: nested paging");
}

/// The same under shadow paging on Bochs with emulated Intel VMX (about
/// 6 s), whose task-switch intercept makes `--unsafe-shadow` unneeded.
#[test]
fn blkpte_under_shadow_paging_sees_the_new_translation_on_bochs_vmx() {
    let r = run(
        "bochs",
        &["--mmu", "shadow", "--emulator", "bochs", "--arch", "vmx"],
    );
    assert_pass(&r);
    assert_mode(&r, "vmx: shadow paging");
    assert_resynced_by_the_reports(&r);
}
