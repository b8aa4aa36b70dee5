//! `splitvisor run --disk FILE[,ro]`: an image that cannot be used is one
//! sentence on stderr and exit status 2, before anything is built or any
//! emulator starts (the emulator here is a script that leaves a mark if it
//! is started); an image that can is attached, splitvisor's own lock does
//! not stop QEMU from taking its own, and the disk-driver server
//! identifies the disk by ATA PIO and says so on the console (`hello`
//! boots with the disk under QEMU TCG with emulated SVM and nested
//! paging, and under Bochs VMX); with its self-test on, the server reads,
//! writes and flushes the image (its writes land in the file), and reads
//! waiting for IRQ 14's notifications, next to the `timer` guest, which
//! runs long enough for the server's start (QEMU and Bochs VMX; on Bochs
//! the guest runs on afterwards only because the stub makes the 8259s look
//! at their lines again after each host interrupt: `kernel-stub/src/
//! deadline.rs`, `settle`).

mod common;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::disk::Scratch;
use common::splitvisor_run;

/// A fresh folder for one test, removed when the test ends.
fn scratch(name: &str) -> Scratch {
    Scratch::new(&format!("disk-{name}"))
}

/// An emulator that only leaves a mark that it ran.
fn fake_emulator(dir: &Path) -> (PathBuf, PathBuf) {
    let mark = dir.join("emulator-started");
    let script = dir.join("qemu-system-x86_64");
    std::fs::write(
        &script,
        format!("#!/bin/sh\ntouch {}\nexit 1\n", mark.display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    (script, mark)
}

/// Runs `splitvisor run --guest hello --disk DISK` with the fake emulator
/// and checks the refusal: status 2, nothing started, and stderr exactly
/// `splitvisor: SENTENCE`.
fn refused(dir: &Path, disk: &str, sentence: &str) {
    let (emulator, mark) = fake_emulator(dir);
    let run = splitvisor_run(
        &[
            "--guest",
            "hello",
            "--emulator",
            &emulator.to_string_lossy(),
            "--disk",
            disk,
        ],
        30,
    );
    assert_eq!(run.code, Some(2), "{run}");
    assert_eq!(run.stderr, format!("splitvisor: {sentence}\n"), "{run}");
    assert!(run.stdout.is_empty(), "{run}");
    assert!(!mark.exists(), "the emulator was started: {run}");
}

#[test]
fn a_missing_image_is_refused_before_boot() {
    let dir = scratch("missing");
    let img = dir.join("nope.img");
    refused(
        &dir,
        &img.to_string_lossy(),
        &format!("the disk image {} does not exist", img.display()),
    );
}

#[test]
fn a_directory_is_refused_before_boot() {
    let dir = scratch("dir");
    refused(
        &dir,
        &dir.to_string_lossy(),
        &format!(
            "the disk image {} is a directory; give an image file (create one with `truncate -s \
             1M disk.img`)",
            dir.display()
        ),
    );
}

#[test]
fn a_device_is_refused_before_boot() {
    let dir = scratch("device");
    refused(
        &dir,
        "/dev/null,ro",
        "the disk image /dev/null is not a regular file (a device, a FIFO or a socket); give an \
         image file",
    );
}

#[test]
fn an_image_of_a_wrong_size_is_refused_before_boot() {
    let dir = scratch("size");
    let img = dir.join("odd.img");
    std::fs::write(&img, vec![0u8; 1000]).unwrap();
    refused(
        &dir,
        &img.to_string_lossy(),
        &format!(
            "the disk image {0} is 1000 bytes, not a whole number of 512-byte sectors; round it \
             up with `truncate -s %512 {0}`",
            img.display()
        ),
    );
    std::fs::write(&img, b"").unwrap();
    refused(
        &dir,
        &format!("{},ro", img.display()),
        &format!(
            "the disk image {0} is empty; give it a size, e.g. `truncate -s 1M {0}`",
            img.display()
        ),
    );
}

#[test]
fn an_unwritable_image_is_refused_unless_read_only() {
    let dir = scratch("unwritable");
    let img = dir.join("ro.img");
    std::fs::write(&img, vec![0u8; 4096]).unwrap();
    std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o444)).unwrap();
    if File::options().write(true).open(&img).is_ok() {
        eprintln!("skipped: this user (root?) writes a file of mode 0444 anyway");
        return;
    }
    refused(
        &dir,
        &img.to_string_lossy(),
        &format!(
            "the disk image {0} cannot be opened for writing (Permission denied (os error 13)); \
             give it as --disk {0},ro to attach it read-only",
            img.display()
        ),
    );
}

/// Takes `op` (LOCK_EX, LOCK_SH) on `path` as another process would.
///
/// Retries for a while: a lock this test dropped lives on in a child that
/// another test of this binary forks at that moment (the child holds a
/// copy of every descriptor until its exec closes them), which a loaded
/// machine can stretch to a noticeable time.
fn flock(path: &Path, op: i32) -> File {
    let f = File::open(path).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        // SAFETY: the descriptor is open; flock takes an advisory lock only.
        let r = unsafe { libc::flock(f.as_raw_fd(), op | libc::LOCK_NB) };
        if r == 0 {
            return f;
        }
        let e = std::io::Error::last_os_error();
        assert!(
            e.kind() == std::io::ErrorKind::WouldBlock && std::time::Instant::now() < deadline,
            "{e}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn a_locked_image_is_refused_before_boot() {
    let dir = scratch("locked");
    let img = dir.join("locked.img");
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    let rw = img.to_string_lossy().into_owned();
    let ro = format!("{rw},ro");
    let exclusive = flock(&img, libc::LOCK_EX);
    refused(
        &dir,
        &rw,
        &format!("the disk image {rw} is locked by another process; stop it or attach a copy"),
    );
    refused(
        &dir,
        &ro,
        &format!(
            "the disk image {rw} is locked for writing by another process; stop it or attach a \
             copy"
        ),
    );
    drop(exclusive);
    // A reader shares with readers only.
    let shared = flock(&img, libc::LOCK_SH);
    refused(
        &dir,
        &rw,
        &format!("the disk image {rw} is locked by another process; stop it or attach a copy"),
    );
    // splitvisor shares the reader's lock (retried for the same reason as
    // `flock`'s: the refused runs above were children of this process too).
    let spec = splitvisor::disk::DiskSpec::parse(&ro).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut disk = splitvisor::disk::Disk::open(&spec);
    while disk.is_err() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
        disk = splitvisor::disk::Disk::open(&spec);
    }
    assert!(disk.is_ok(), "{:?}", disk.err());
    drop(shared);
}

#[test]
fn an_image_with_a_bochs_lock_file_is_refused_before_boot() {
    let dir = scratch("bochslock");
    let img = dir.join("b.img");
    std::fs::write(&img, vec![0u8; 4096]).unwrap();
    let lock = dir.join("b.img.lock");
    std::fs::write(&lock, b"").unwrap();
    refused(
        &dir,
        &img.to_string_lossy(),
        &format!(
            "the disk image {} is locked by Bochs ({} exists); stop that Bochs, or delete the \
             lock file if no Bochs runs",
            img.display(),
            lock.display()
        ),
    );
}

/// Whether a process holds a record lock on `path`'s byte `at` (QEMU's
/// lock bytes).
fn record_locked(path: &Path, at: i64) -> bool {
    let f = File::open(path).unwrap();
    // SAFETY: an all-zero flock is a valid value of the plain C struct.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = at;
    fl.l_len = 1;
    // SAFETY: the descriptor is open and `fl` is live for the call.
    let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    r == 0 && fl.l_type != libc::F_UNLCK as libc::c_short
}

#[test]
fn an_image_a_qemu_has_open_is_refused_before_boot() {
    let dir = scratch("qemu");
    let img = dir.join("busy.img");
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    let rw = img.to_string_lossy().into_owned();
    // A stopped QEMU (-S) with the image as its IDE disk, read-write.
    let mut qemu = Command::new("qemu-system-x86_64")
        .args(["-nodefaults", "-display", "none", "-S", "-monitor", "none"])
        .args(splitvisor::disk::qemu_drive_args(
            &splitvisor::disk::DiskSpec::parse(&rw).unwrap(),
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("QEMU starts (scripts/install-deps installs it)");
    let start = Instant::now();
    while !record_locked(&img, 101) && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let held = record_locked(&img, 101);
    if held {
        refused(
            &dir,
            &rw,
            &format!("the disk image {rw} is locked by a QEMU process; stop it or attach a copy"),
        );
        refused(
            &dir,
            &format!("{rw},ro"),
            &format!(
                "the disk image {rw} is locked for writing by a QEMU process; stop it or attach \
                 a copy"
            ),
        );
    }
    let _ = qemu.kill();
    let _ = qemu.wait();
    assert!(held, "QEMU did not lock byte 101 of the image within 30 s");
}

#[test]
fn e2e_hello_qemu_svm_npt_with_a_disk_the_disk_driver_identifies_it() {
    let dir = scratch("boot");
    let img = dir.join("disk.img");
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    for (disk, line) in [
        (
            img.to_string_lossy().into_owned(),
            "disk: QEMU HARDDISK, 2048 sectors (1 MiB), write cache flush supported",
        ),
        (
            format!("{},ro", img.display()),
            "disk: QEMU HARDDISK, 2048 sectors (1 MiB), write cache flush supported, read-only",
        ),
    ] {
        // splitvisor holds its flock on the image while QEMU takes its own.
        let run = splitvisor_run(&["--guest", "hello", "--disk", &disk], 240);
        assert_eq!(run.code, Some(0), "--disk {disk}: {run}");
        assert!(run.has_line(line), "--disk {disk}: {run}");
        assert!(run.has_line("hello from the guest"), "{run}");
    }
}

#[test]
fn e2e_timer_bochs_vmx_with_a_disk_the_disk_driver_identifies_writes_flushes_and_takes_irq14() {
    let dir = scratch("bochs");
    let img = dir.join("disk.img");
    let mut bytes = vec![0u8; 1 << 20];
    bytes[..16].copy_from_slice(b"SPLITVISOR-BOCHS");
    std::fs::write(&img, &bytes).unwrap();
    let run = run_self_test(&[
        "--guest",
        "timer",
        "--emulator",
        "bochs",
        "--arch",
        "vmx",
        "--disk",
        &img.to_string_lossy(),
    ]);
    assert_eq!(run.code, Some(0), "{run}");
    for line in [
        // Bochs's disks are "Generic 1234" unless the bochsrc names them.
        "disk: Generic 1234, 2048 sectors (1 MiB), write cache flush supported",
        // Bochs's harddrv: 32-bit data accesses and READ/WRITE MULTIPLE too.
        "disk: PIO 32-bit, 16 sectors per interrupt",
        "disk: self-test: sector 0 begins \"SPLITVISOR-BOCHS\"",
        "disk: self-test: wrote, flushed and read back sector 2047",
        "timer: all checks passed",
    ] {
        assert!(run.has_line(line), "{line}: {run}");
    }
    // Fewer notifications than QEMU's (Bochs completes most blocks inside
    // the port access, so the driver does not wait), at least one. The
    // disk raised IRQ 14 while the guest did not run and its line fell at
    // the driver's status read: Bochs's 8259s keep INTR up until they
    // look again, which the stub makes them do (`deadline::settle`);
    // without that every entry exited at once and `timer` timed out.
    assert_irq_notifications(&run);
    let after = std::fs::read(&img).unwrap();
    assert_eq!(
        after[(1 << 20) - 512..(1 << 20) - 480],
        disk_driver_pattern()[..]
    );
    // Bochs's lock file is gone with it.
    assert!(!splitvisor::disk::bochs_lock_path(&img).exists(), "{run}");
}

/// `splitvisor run ARGS` with the disk-driver's self-test on.
fn run_self_test(args: &[&str]) -> common::Run {
    let out = Command::new(env!("CARGO_BIN_EXE_splitvisor"))
        .arg("run")
        .args(args)
        .args(["--timeout", "240"])
        .env(splitvisor::disk::SELF_TEST_ENV, "1")
        .stdin(Stdio::null())
        .output()
        .expect("the splitvisor binary starts");
    common::Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn e2e_timer_qemu_svm_npt_the_disk_driver_reads_writes_and_flushes_the_image() {
    let dir = scratch("selftest");
    let img = dir.join("disk.img");
    let mut bytes = vec![0u8; 1 << 20];
    bytes[..16].copy_from_slice(b"SPLITVISOR-DISK!");
    std::fs::write(&img, &bytes).unwrap();
    let disk = img.to_string_lossy().into_owned();
    let run = run_self_test(&["--guest", "timer", "--disk", &disk]);
    assert_eq!(run.code, Some(0), "{run}");
    for line in [
        "disk: QEMU HARDDISK, 2048 sectors (1 MiB), write cache flush supported",
        // QEMU's IDE: word 48 0001h, word 47 8010h.
        "disk: PIO 32-bit, 16 sectors per interrupt",
        "disk: self-test: sector 0 begins \"SPLITVISOR-DISK!\"",
        "disk: self-test: wrote, flushed and read back sector 2047",
        "timer: all checks passed",
    ] {
        assert!(run.has_line(line), "{line}: {run}");
    }
    assert_irq_notifications(&run);
    // What the ring-3 driver wrote by PIO is in the user's file.
    let after = std::fs::read(&img).unwrap();
    let last = &after[(1 << 20) - 512..];
    for (i, &b) in last.iter().enumerate() {
        assert_eq!(
            b,
            disk_driver_pattern()[i % 32],
            "byte {i} of the last sector"
        );
    }
    assert_eq!(after[..(1 << 20) - 512], bytes[..(1 << 20) - 512]);

    // Read-only: the server refuses the write and the file stays as it was.
    std::fs::write(&img, &bytes).unwrap();
    let run = run_self_test(&["--guest", "timer", "--disk", &format!("{disk},ro")]);
    assert_eq!(run.code, Some(0), "{run}");
    assert!(
        run.has_line("disk: self-test: writing sector 2047: status 5"),
        "{run}"
    );
    assert_eq!(std::fs::read(&img).unwrap(), bytes);
}

/// The self-test's read in interrupt mode succeeded, woken by at least one
/// IRQ 14 notification (QEMU: one per sector; one latched when the disk
/// finished before the driver looked, which the self-test then takes).
fn assert_irq_notifications(run: &common::Run) {
    let prefix = "disk: self-test: read 4 sectors waiting for IRQ 14: status 0, ";
    let line = run
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no line {prefix:?}: {run}"));
    let n: u32 = line
        .strip_suffix(" notifications")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line:?}: {run}"));
    assert!(n >= 1, "{run}");
}

/// `disk_driver::SELF_TEST_PATTERN`, as the test sees it.
fn disk_driver_pattern() -> &'static [u8; 32] {
    b"splitvisor disk-driver was here\n"
}
