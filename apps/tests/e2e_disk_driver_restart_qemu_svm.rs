//! End-to-end: the disk-driver server restarted while Debian's amd64
//! kernel writes to its virtio-blk disk (issue 12), in QEMU (TCG, emulated
//! SVM, NPT, PC board), with `splitvisor run --disk IMG --inject
//! disk-driver:FAULT@everyN`:
//!
//! - the disk-driver executes `ud2` at every N-th block request (`crash`),
//!   or first writes garbage over its channel page (`corrupt`); the stub
//!   restarts it from its image, the new instance identifies the disk
//!   again, and the virtio-blk server's call comes back `ServerRestarted`;
//! - the virtio-blk server sends the lost request again (at most
//!   `virtio_blk::RESTART_RETRIES` times), so the guest sees no error:
//!   `/init` (`splitvisor.disk=write`) mounts the ext4 image, writes a
//!   text file and 4 MiB of random bytes, syncs, unmounts and powers off;
//! - on the host the image is consistent (`e2fsck -fn`), and the files
//!   in it are what the guest wrote (the text, and the MD5 the guest
//!   printed of the random file).
//!
//! ```sh
//! cargo test -p splitvisor --test e2e_disk_driver_restart_qemu_svm -- --nocapture
//! ```

mod common;

use std::time::Instant;

use common::disk::{after, assert_fsck_clean, cat_in_image, file_in_image, md5, Scratch};
use splitvisor::linux::{DISK_FAILED, DISK_TEXT, DISK_WRITTEN, INIT_MARKER};
use splitvisor::linux_virtio::make_ext4_image;

/// Seconds one boot may take (4 MiB by PIO, on a shared TCG host).
const TIMEOUT_SECS: u64 = 900;

/// The `[stub] disk-driver restarted (generation G): ...` lines.
fn restarts(r: &common::Run) -> usize {
    r.stdout
        .lines()
        .filter(|l| l.starts_with("[stub] disk-driver restarted (generation "))
        .count()
}

/// The stub's statistics line says `restarts=N`.
fn counted_restarts(r: &common::Run) -> Option<usize> {
    let line = r.stdout.lines().find(|l| l.contains("] exits: total="))?;
    let field = line.split(' ').find_map(|f| f.strip_prefix("restarts="))?;
    field.parse().ok()
}

/// Boots the write check on a fresh image with `inject`; checks what the
/// guest said, the restarts, and the image on the host. Returns the
/// number of restarts.
fn write_through_restarts(inject: &str, at_least: usize) -> usize {
    let dir = Scratch::new(&format!("disk-restart-{}", inject.replace([':', '@'], "-")));
    let img = dir.join("disk.img");
    make_ext4_image(&img, 64).unwrap_or_else(|e| panic!("{e}"));
    let disk = img.to_string_lossy().into_owned();
    let start = Instant::now();
    let run = {
        let _one = common::ONE_AT_A_TIME
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let args = [
            &common::AMD64_PC_NPT[..],
            &["--disk", &disk, "--append", "splitvisor.disk=write"],
            &["--inject", inject],
        ]
        .concat();
        let mut run = common::splitvisor_run(&args, TIMEOUT_SECS);
        run.stdout = common::rejoin_interrupted_lines(&run.stdout);
        run
    };
    let secs = start.elapsed().as_secs_f64();
    let out = &run.stdout;
    assert!(out.contains(INIT_MARKER), "no init marker\n{run}");
    assert!(!out.contains(DISK_FAILED), "{run}");
    assert!(!out.contains("virtio-blk: panic"), "{run}");
    // What the guest saw: no I/O error, the files written.
    for bad in ["I/O error", "blk_update_request", "EXT4-fs error"] {
        assert!(!out.contains(bad), "the guest saw `{bad}`\n{run}");
    }
    let written = after(out, DISK_WRITTEN)
        .unwrap_or_else(|| panic!("no `{DISK_WRITTEN}` line\n{run}"))
        .to_string();
    assert!(run.has_line("[stub] vm stopped: guest status 0"), "{run}");
    assert_eq!(run.code, Some(0), "{run}");

    let n = restarts(&run);
    assert!(n >= at_least, "only {n} disk-driver restarts\n{run}");
    assert_eq!(counted_restarts(&run), Some(n), "{run}");
    // Each new instance identified the disk again.
    let identified = out
        .lines()
        .filter(|l| l.starts_with("disk: QEMU HARDDISK, 131072 sectors"))
        .count();
    assert_eq!(identified, n + 1, "{run}");

    // The image on the host: consistent, and holding what was written.
    assert_fsck_clean(&img);
    assert_eq!(
        cat_in_image(&img, "splitvisor-disk-check.txt").trim_end(),
        DISK_TEXT
    );
    let bin = dir.join("bin");
    let bytes = file_in_image(&img, "splitvisor-disk-check.bin", &bin);
    assert_eq!(bytes.len(), 4 << 20);
    assert_eq!(md5(&bin), written, "the random file in the image differs");
    eprintln!("{inject}: {n} disk-driver restarts, {secs:.1} s, md5 {written}, e2fsck clean");
    n
}

/// `ud2` at every 10th request: the lost requests are sent again, the
/// guest sees no error, the image is consistent.
#[test]
fn debian_writes_its_disk_while_the_disk_driver_crashes() {
    write_through_restarts("disk-driver:crash@every10", 4);
}

/// The same with garbage written over the channel page before each
/// crash: the retry writes the request again, so the garbage is never
/// read as one.
#[test]
fn debian_writes_its_disk_while_the_disk_driver_corrupts_its_channel() {
    write_through_restarts("disk-driver:corrupt@every15", 3);
}
