//! End-to-end, a device server that restarts: Debian's amd64 kernel on
//! the PC board in QEMU (TCG, emulated SVM, nested paging) writes its disk
//! check (`splitvisor.disk=write`: mount, a text file and 4 MiB of random
//! bytes with `dd`, `sync`, unmount) while the virtio-blk server crashes on
//! purpose at its 20th queue notification (`--inject virtio-blk:crash@20`,
//! after the mount, in the middle of the writes). The stub restarts it from
//! its image; the vmm-server's proxy replays the guest's set-up into the new
//! instance, which goes on from the used ring's `idx` in guest memory, so
//! the requests in flight are done again and the guest sees no error.
//!
//! Checked: the stub's restart line, the guest's `disk written` line and
//! power-off, no I/O error in the guest's log, `e2fsck -fn` finds the image
//! clean, `debugfs` finds the text, and a second boot reads the random file
//! back with the same MD5. That second boot also has a network (`--net
//! user`) whose two servers crash on purpose: virtio-net at each instance's
//! 5th queue notification and the switch at each instance's 8th call from
//! virtio-net (issue 13's `--inject` for them); the guest still gets its
//! DHCP lease through the restarts.
//!
//! ```sh
//! cargo test -p splitvisor --test e2e_virtio_blk_restart_qemu_svm -- --nocapture
//! ```

mod common;

use common::disk::{after, assert_fsck_clean, cat_in_image, Scratch};
use splitvisor::linux::{DISK_READ, DISK_TEXT, DISK_WRITTEN, INIT_MARKER, NET_LINE};
use splitvisor::linux_virtio::make_ext4_image;

/// Seconds one boot may take.
const TIMEOUT_SECS: u64 = 600;

fn boot(disk: &str, append: &str, extra: &[&str]) -> common::Run {
    let mut args = common::AMD64_PC_NPT.to_vec();
    args.extend(["--disk", disk, "--append", append]);
    args.extend(extra);
    let mut run = common::splitvisor_run(&args, TIMEOUT_SECS);
    run.stdout = common::rejoin_interrupted_lines(&run.stdout);
    run
}

#[test]
fn debian_writes_its_disk_through_a_virtio_blk_crash() {
    let dir = Scratch::new("virtio-blk-restart");
    let img = dir.join("disk.img");
    make_ext4_image(&img, 64).unwrap_or_else(|e| panic!("{e}"));
    let disk = img.to_string_lossy().into_owned();

    let write = boot(
        &disk,
        "splitvisor.disk=write",
        &["--inject", "virtio-blk:crash@20"],
    );
    let out = &write.stdout;
    assert!(out.contains(INIT_MARKER), "no init marker\n{write}");
    assert!(
        out.contains("[stub] virtio-blk restarted (generation 1): exception 6"),
        "virtio-blk did not crash and restart\n{write}"
    );
    let crash = out.find("virtio-blk restarted").unwrap();
    let mounted = out.find("EXT4-fs (vda): mounted").expect("mounted");
    assert!(mounted < crash, "the crash came before the mount\n{write}");
    assert!(
        !out.contains("I/O error"),
        "the guest saw an I/O error\n{write}"
    );
    let written = after(out, DISK_WRITTEN)
        .unwrap_or_else(|| panic!("no `{DISK_WRITTEN}` line\n{write}"))
        .to_string();
    assert_eq!(write.code, Some(0), "not powered off\n{write}");

    // On the host: the file system is consistent and holds the text.
    assert_fsck_clean(&img);
    assert_eq!(
        cat_in_image(&img, "splitvisor-disk-check.txt").trim_end(),
        DISK_TEXT
    );

    let read = boot(
        &disk,
        "splitvisor.disk=read splitvisor.net",
        &[
            "--net",
            "user",
            "--inject",
            "virtio-net:crash@5",
            "--inject",
            "switch:crash@8",
        ],
    );
    let back =
        after(&read.stdout, DISK_READ).unwrap_or_else(|| panic!("no `{DISK_READ}` line\n{read}"));
    assert_eq!(back, written, "the random file read back differs\n{read}");
    for server in ["virtio-net", "switch"] {
        assert!(
            read.stdout.contains(&format!(
                "[stub] {server} restarted (generation 1): exception 6"
            )),
            "{server} did not crash and restart\n{read}"
        );
    }
    let lease = read
        .stdout
        .lines()
        .find(|l| l.starts_with(NET_LINE) && l.contains(" by dhcp"))
        .unwrap_or_else(|| panic!("no DHCP lease through the restarts\n{read}"));
    assert!(lease.contains("address 10.0.2."), "{lease}\n{read}");
    eprintln!(
        "virtio-blk crashed during the writes; e2fsck clean; md5 {written} read back; \
         {} virtio-net and {} switch restarts, then: {lease}",
        read.stdout.matches("[stub] virtio-net restarted").count(),
        read.stdout.matches("[stub] switch restarted").count()
    );
}
