//! End-to-end: Debian's stock x86-64 kernel with the busybox initramfs
//! under splitvisor on Bochs with emulated Intel VMX (`corei7_skylake_x`,
//! EPT and unrestricted guest), on the PC board, through `splitvisor run
//! --linux --emulator bochs --arch vmx --console hvc0 --disk IMG --net
//! user,hostfwd=...`, in one boot: the kernel's log and everything `/init` prints on
//! hvc0 (the virtio-console server), a DHCP lease through virtio-net, the
//! switch and the nic-driver's NE2000 on Bochs's restricted slirp, the MMU
//! workload (see `e2e_linux_qemu_svm.rs`), and a disk round trip through the virtio-blk server and the
//! disk-driver on Bochs's `ata0-master` (`splitvisor.disk=update`): the
//! guest reads the files the host put in the ext4 image (`mkfs.ext4 -d`),
//! writes its own, syncs and powers off (ACPI S5, status 0); on the host
//! `e2fsck -fn` finds the image clean and `debugfs` finds the guest's
//! files with the MD5 the guest printed. About two minutes on a 2.6 GHz
//! EPYC host (Bochs 2.7 at its default 100 M instructions per emulated
//! second); the 686-pae kernel with shadow paging on VMX is an
//! `--ignored` test (about 3 minutes). Run only these with
//!
//! ```sh
//! cargo test -p splitvisor --test e2e_linux_bochs_vmx -- --nocapture
//! ```

mod common;

use common::disk::{
    after, assert_fsck_clean, cat_in_image, disk_content, file_in_image, image_with_check_files,
    md5, Scratch,
};
use splitvisor::linux::{
    Flavour, DISK_FAILED, DISK_GUEST_TEXT, DISK_READ, DISK_WRITTEN, HVC_LOG_BEGIN, HVC_LOG_END,
    NET_FAILED, NET_LINE,
};

/// The text file the host puts in the image for the guest to read.
const HOST_TEXT: &str = "splitvisor disk check: written by the host";

/// 64 KiB that are not all alike (xorshift64), for the guest's MD5.
fn host_bytes() -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    (0..8192)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect()
}

/// Linux also takes the XSAVE the VM offers (x87, SSE, AVX; XSAVEC, so the
/// compacted format): CPUID 0xD's sizes agree with its own sums, or it
/// warns "XSAVE consistency problem" and falls back to FXSAVE.
#[test]
fn debian_amd64_runs_the_workload_and_a_disk_round_trip_on_hvc0_on_bochs_vmx_with_ept() {
    let dir = Scratch::new("linux-bochs-vmx");
    let (img, host_md5) = image_with_check_files(&dir, HOST_TEXT, &host_bytes());
    let disk = img.to_string_lossy().into_owned();
    // A hostfwd rule reaches Bochs's slirp: its host side accepts a
    // connection while the machine runs (the guest need not listen).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    let net = format!("user,hostfwd=tcp:127.0.0.1:{port}-:22");
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let prober = {
        let done = done.clone();
        std::thread::spawn(move || loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return true;
            }
            if done.load(std::sync::atomic::Ordering::Relaxed) {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
        })
    };

    let run = common::boot_linux_appending(
        Flavour::Amd64,
        "npt",
        &[
            "--emulator",
            "bochs",
            "--arch",
            "vmx",
            "--console",
            "hvc0",
            "--disk",
            &disk,
            "--net",
            &net,
        ],
        "splitvisor.net splitvisor.disk=update",
        1500,
    );
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(
        prober.join().unwrap(),
        "nothing accepted on 127.0.0.1:{port} (`--net {net}`) while Bochs ran\n{run}"
    );
    let out = &run.stdout;
    let xstate = "x86/fpu: Enabled xstate features 0x7, context size is 832 bytes, using 'compacted' format.";
    assert!(out.contains(xstate), "no `{xstate}`\n{run}");
    assert!(!out.contains("XSAVE consistency problem"), "{run}");

    // hvc0 alone was the console, and the kernel's log came through it.
    assert!(
        out.lines().any(|l| l.trim_end().ends_with(
            "Kernel command line: console=hvc0 splitvisor.net splitvisor.disk=update splitvisor.workload splitvisor.exit"
        )),
        "not console=hvc0 alone\n{run}"
    );
    for needle in [HVC_LOG_BEGIN, "printk: console [hvc0] enabled", HVC_LOG_END] {
        assert!(out.contains(needle), "no `{needle}`\n{run}");
    }

    // The network: virtio-net, the switch and the nic-driver's NE2000 on
    // Bochs's slirp (`restricted = 1`), and Linux's DHCP through them.
    let lease = out
        .lines()
        .find(|l| l.starts_with(NET_LINE) && l.contains(" by dhcp"))
        .unwrap_or_else(|| panic!("no DHCP lease on Bochs's network\n{run}"));
    assert!(lease.contains("address 10.0.2."), "{lease}\n{run}");
    assert!(!out.contains(NET_FAILED), "{run}");

    // The disk: Bochs's drive under the disk-driver, /dev/vda in the guest.
    assert!(
        out.lines()
            .any(|l| l.starts_with("disk: ") && l.contains(", 131072 sectors (64 MiB)")),
        "the disk-driver did not identify the drive\n{run}"
    );
    assert!(
        out.contains("[vda] 131072 512-byte logical blocks"),
        "no 64 MiB vda\n{run}"
    );
    assert!(!out.contains(DISK_FAILED), "{run}");
    for bad in ["I/O error", "EXT4-fs error"] {
        assert!(!out.contains(bad), "the guest saw `{bad}`\n{run}");
    }
    // Host to guest: the files the host made.
    assert_eq!(disk_content(out), [HOST_TEXT], "not the host's text\n{run}");
    assert_eq!(
        after(out, DISK_READ),
        Some(host_md5.as_str()),
        "not the host's bytes\n{run}"
    );
    // Guest to host: the files the guest wrote, in the image file.
    let written = after(out, DISK_WRITTEN)
        .unwrap_or_else(|| panic!("no `{DISK_WRITTEN}` line\n{run}"))
        .to_string();
    assert_fsck_clean(&img);
    assert_eq!(
        cat_in_image(&img, "splitvisor-disk-guest.txt").trim_end(),
        DISK_GUEST_TEXT
    );
    let bin = dir.join("guest.bin");
    assert_eq!(
        file_in_image(&img, "splitvisor-disk-guest.bin", &bin).len(),
        1 << 20
    );
    assert_eq!(
        md5(&bin),
        written,
        "the guest's random file in the image differs"
    );
    eprintln!("bochs vmx: read the host's md5 {host_md5}, wrote md5 {written}, e2fsck clean");
    if let Some(exits) = out.lines().find(|l| l.starts_with("[vmm] exits: total=")) {
        eprintln!("bochs vmx: {exits}");
    }
}

/// Shadow paging on VMX with a 32-bit PAE kernel: about 3 minutes, so not
/// in CI's run; run it with `cargo test -p splitvisor --test
/// e2e_linux_bochs_vmx -- --ignored`.
#[test]
#[ignore = "about 3 minutes; run with --ignored"]
fn debian_686_pae_runs_the_workload_on_bochs_vmx_with_shadow_paging() {
    common::boot_linux(
        Flavour::I686Pae,
        "shadow",
        &["--emulator", "bochs", "--arch", "vmx"],
        3000,
    );
}
