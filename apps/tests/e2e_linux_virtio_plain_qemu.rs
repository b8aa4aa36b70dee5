//! End-to-end, the guest side of virtio storage and console on **plain
//! QEMU** (TCG with the instruction clock, no splitvisor): Debian's x86-64
//! kernel and the `--linux` initramfs, which loads the virtio-pci,
//! virtio-blk, virtio-console, virtio-rng and ext4 modules, with QEMU's own
//! virtio-blk-pci (a raw image `mkfs.ext4` made on the host),
//! virtio-serial-pci + virtconsole and virtio-rng-pci
//! ([`splitvisor::linux_virtio::PlainVirtio`]). What each test checks comes
//! from the guest's own consoles.
//!
//! - Data written to the disk in one boot (`splitvisor.disk=write`) is
//!   read back in the next (`splitvisor.disk=read`): a text line and the
//!   MD5 of 4 MiB from `/dev/urandom`.
//! - With `console=hvc0` the kernel's log (the part before virtio_console
//!   was loaded copied there by `/init`), `/init`'s lines and the kernel's
//!   own messages from then on appear on the virtconsole.
//!
//! The reference splitvisor's virtio devices will be compared against.
//!
//! ```sh
//! cargo test -p splitvisor --test e2e_linux_virtio_plain_qemu -- --nocapture
//! ```

mod common;

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use common::disk::{after, disk_content, Scratch};
use common::ONE_AT_A_TIME;
use splitvisor::linux::{
    Flavour, LinuxGuest, DISK_FAILED, DISK_READ, DISK_TEXT, DISK_WRITTEN, HVC_LOG_BEGIN,
    HVC_LOG_END, INIT_MARKER, MODULE_FAILED,
};
use splitvisor::linux_virtio::{make_ext4_image, GuestConsole, PlainVirtio, PlainVirtioRun};

/// Seconds one boot may take (about 10-20 s each on a loaded 2-core
/// machine).
const TIMEOUT_SECS: u64 = 90;

/// `flavour`'s kernel and initramfs, prepared once for the file's tests.
fn guest(flavour: Flavour) -> LinuxGuest {
    static GUESTS: Mutex<Vec<(Flavour, LinuxGuest)>> = Mutex::new(Vec::new());
    let mut g = GUESTS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, guest)) = g.iter().find(|(f, _)| *f == flavour) {
        return guest.clone();
    }
    let guest = splitvisor::linux::prepare_debian_linux(flavour)
        .unwrap_or_else(|e| panic!("could not prepare Debian's {} kernel: {e}", flavour.name()));
    g.push((flavour, guest.clone()));
    guest
}

fn plain(console: GuestConsole, append: &str, disk: Option<PathBuf>) -> PlainVirtioRun {
    plain_flavour(Flavour::Amd64, console, append, disk)
}

fn plain_flavour(
    flavour: Flavour,
    console: GuestConsole,
    append: &str,
    disk: Option<PathBuf>,
) -> PlainVirtioRun {
    let qemu = splitvisor::run::find_program(splitvisor::DEFAULT_EMULATOR)
        .expect("qemu-system-x86_64 is installed (scripts/install-deps)");
    let mut b = PlainVirtio::new(qemu, guest(flavour));
    b.console = console;
    b.append = append.to_string();
    b.disk = disk;
    b.rng = true;
    b.timeout = Duration::from_secs(TIMEOUT_SECS);
    let run = b.run().unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "plain QEMU, {}, console {}, `{}`: init marker after {}, QEMU ended after {:.2} s",
        flavour.name(),
        console.name(),
        b.cmdline(),
        run.to_marker
            .map_or("-".to_string(), |d| format!("{:.2} s", d.as_secs_f64())),
        run.wall.as_secs_f64()
    );
    if std::env::var_os("SPLITVISOR_SHOW_CONSOLES").is_some() {
        eprintln!("{run}");
    }
    assert!(!run.timed_out, "timed out\n{run}");
    assert_eq!(run.status, Some(0), "not powered off\n{run}");
    if console == GuestConsole::Serial {
        // hvc0 is not the console: /init leaves its output and the
        // kernel's log where they are.
        assert!(!run.serial.contains(HVC_LOG_BEGIN), "{run}");
        assert!(!run.hvc.contains(HVC_LOG_BEGIN), "{run}");
    }
    for (name, text) in [("ttyS0", &run.serial), ("hvc0", &run.hvc)] {
        assert!(
            !text.contains(MODULE_FAILED),
            "a module failed to load ({name})\n{run}"
        );
    }
    run
}

/// The value after `prefix` on the line starting with it.
/// The kernel's timestamp (guest time, seconds) of its first message
/// ending with `message`: under `-icount` it counts the machine's
/// instructions (4 ns each) and idle time, not the host's load.
fn guest_stamp(console: &str, message: &str) -> String {
    console
        .lines()
        .find(|l| l.ends_with(message))
        .and_then(|l| l.strip_prefix('['))
        .and_then(|l| l.split(']').next())
        .map_or("-".to_string(), |t| t.trim().to_string())
}

#[test]
fn what_one_boot_writes_to_the_virtio_disk_the_next_reads_back() {
    disk_round_trip(Flavour::Amd64);
}

/// The 32-bit kernels' modules work too (`--ignored`: four more boots).
#[test]
#[ignore = "four more boots"]
fn the_i386_kernels_read_back_what_they_wrote() {
    disk_round_trip(Flavour::I686);
    disk_round_trip(Flavour::I686Pae);
}

fn disk_round_trip(flavour: Flavour) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = Scratch::new(&format!("virtio-plain-{}", flavour.name()));
    let img = dir.join("disk.img");
    make_ext4_image(&img, 64).unwrap_or_else(|e| panic!("{e}"));

    let write = plain_flavour(
        flavour,
        GuestConsole::Serial,
        "splitvisor.disk=write",
        Some(img.clone()),
    );
    let out = &write.serial;
    assert!(
        out.contains("virtio_blk virtio"),
        "no virtio-blk disk\n{write}"
    );
    assert!(
        out.contains("[vda] 131072 512-byte logical blocks"),
        "no 64 MiB vda\n{write}"
    );
    assert!(!out.contains(DISK_FAILED), "{write}");
    let written = after(out, DISK_WRITTEN)
        .unwrap_or_else(|| panic!("no `{DISK_WRITTEN}` line\n{write}"))
        .to_string();
    assert_eq!(written.len(), 32, "not an MD5: {written}");

    let read = plain_flavour(
        flavour,
        GuestConsole::Serial,
        "splitvisor.disk=read",
        Some(img.clone()),
    );
    let out = &read.serial;
    assert!(!out.contains(DISK_FAILED), "{read}");
    assert_eq!(
        disk_content(out),
        [DISK_TEXT],
        "not the text written\n{read}"
    );
    let back = after(out, DISK_READ).unwrap_or_else(|| panic!("no `{DISK_READ}` line\n{read}"));
    assert_eq!(back, written, "the random file read back differs\n{read}");
    eprintln!(
        "disk: written and read back, md5 {written}; the write boot took {:.2} s, the read boot {:.2} s",
        write.wall.as_secs_f64(),
        read.wall.as_secs_f64()
    );
}

#[test]
fn the_boot_log_and_init_appear_on_hvc0() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = Scratch::new("virtio-plain-hvc");
    let img = dir.join("disk.img");
    make_ext4_image(&img, 64).unwrap_or_else(|e| panic!("{e}"));
    let run = plain(
        GuestConsole::Hvc,
        "splitvisor.disk=write",
        Some(img.clone()),
    );
    let lines: Vec<&str> = run.hvc.lines().collect();
    let at = |what: &str, line: &dyn Fn(&str) -> bool| {
        lines
            .iter()
            .position(|l| line(l))
            .unwrap_or_else(|| panic!("no {what} on hvc0\n{run}"))
    };
    // The kernel's log before virtio_console was loaded, copied by /init
    // (the kernel's own replay to a late console is lost: see
    // HVC_LOG_BEGIN), then /init's lines, and the kernel's own lines from
    // then on (ext4 mounting the disk) printed to hvc0 by the kernel.
    let begin = at("copied log", &|l| l == HVC_LOG_BEGIN);
    let version = at("Linux version", &|l| l.contains("] Linux version 6.1.0-"));
    let cmdline = at("command line", &|l| {
        l.ends_with("Kernel command line: console=ttyS0 console=hvc0 splitvisor.disk=write")
    });
    let enabled = at("console enabled line", &|l| {
        l.ends_with("printk: console [hvc0] enabled")
    });
    let end = at("end of the copied log", &|l| l == HVC_LOG_END);
    let marker = at("init marker", &|l| l == INIT_MARKER);
    let uname = at("uname -a", &|l| l.starts_with("Linux (none) 6.1.0-"));
    let ext4 = at("ext4 mount", &|l| {
        l.contains("EXT4-fs (vda): mounted filesystem")
    });
    let written = at("disk written", &|l| l.starts_with(DISK_WRITTEN));
    assert!(
        begin < version && version < cmdline && cmdline < enabled && enabled < end,
        "the copied log out of order\n{run}"
    );
    assert!(
        end < marker && marker < uname && uname < ext4 && ext4 < written,
        "out of order\n{run}"
    );
    assert!(
        run.when(INIT_MARKER).is_some(),
        "the marker was not timed on hvc0\n{run}"
    );
    // ttyS0 has the kernel's messages too (ext4's as well), none of
    // /init's: the modules load before its first line.
    assert!(run.serial.contains("] Linux version 6.1.0-"), "{run}");
    assert!(
        run.serial.contains("EXT4-fs (vda): mounted filesystem"),
        "{run}"
    );
    assert!(!run.serial.contains(INIT_MARKER), "{run}");
}

/// The figures the README shows: QEMU's start to the init marker on the
/// console the kernel prefers and to the disk check's line, ttyS0 then
/// hvc0, without and with a disk (`splitvisor.exit`; the disk boot
/// writes), and the kernel's own timestamps (guest time) of running /init
/// and of the power-off. Not run
/// by default (four boots):
/// `cargo test -p splitvisor --test e2e_linux_virtio_plain_qemu -- --ignored --nocapture`.
#[test]
#[ignore = "figures for the README, four boots"]
fn figures_to_the_marker_with_ttys0_and_hvc0() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = Scratch::new("virtio-plain-figures");
    let img = dir.join("disk.img");
    let mut rows = Vec::new();
    for console in [GuestConsole::Serial, GuestConsole::Hvc] {
        for disk in [false, true] {
            let (append, disk) = if disk {
                make_ext4_image(&img, 64).unwrap_or_else(|e| panic!("{e}"));
                ("splitvisor.disk=write", Some(img.clone()))
            } else {
                ("splitvisor.exit", None)
            };
            let run = plain(console, append, disk);
            let to = |prefix: &str| {
                run.when(prefix)
                    .map_or("-".to_string(), |d| format!("{:.2}", d.as_secs_f64()))
            };
            rows.push(format!(
                "{:<7} {:<22} {:>9} {:>12} {:>11.2} {:>12} {:>14}",
                console.name(),
                append,
                to(INIT_MARKER),
                to(DISK_WRITTEN),
                run.wall.as_secs_f64(),
                guest_stamp(&run.serial, "Run /init as init process"),
                guest_stamp(&run.serial, "reboot: Power down"),
            ));
        }
    }
    println!(
        "{:<7} {:<22} {:>9} {:>12} {:>11} {:>12} {:>14}",
        "console",
        "append",
        "marker s",
        "disk done s",
        "QEMU end s",
        "guest /init",
        "guest poweroff"
    );
    for r in rows {
        println!("{r}");
    }
}

/// Each of Debian's kernels gets its own initramfs with its own modules
/// (686 and 686-pae share busybox and the workload, not their modules),
/// all of [`splitvisor::linux_modules::WANTED`] and their dependencies in
/// load order, found in the kernel's package (no boot).
#[test]
fn every_flavour_carries_its_own_modules() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    for flavour in Flavour::ALL {
        let g = splitvisor::linux::prepare_debian_linux(flavour)
            .unwrap_or_else(|e| panic!("{}: {e}", flavour.name()));
        let name = g.initrd.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with(&format!("initramfs-{}-", flavour.name())) && name.ends_with(".cpio"),
            "{name}"
        );
        let cpio = std::fs::read(&g.initrd).unwrap();
        let text = String::from_utf8_lossy(&cpio);
        let version = format!("-{}", flavour.name());
        let list_name = format!("{version}/{}\0", splitvisor::linux_modules::LOAD_LIST);
        let at = text
            .find(&list_name)
            .unwrap_or_else(|| panic!("{}: no load list", flavour.name()));
        // The list's contents follow its name in the archive.
        let list = &text[at + list_name.len()..];
        let list = list.trim_start_matches('\0');
        let list = &list[..list.find('\0').unwrap_or(list.len())];
        let names: Vec<String> = list
            .lines()
            .map(|p| {
                let file = p.rsplit('/').next().unwrap();
                splitvisor::linux_modules::module_name(file).unwrap()
            })
            .collect();
        for w in splitvisor::linux_modules::WANTED {
            assert!(
                names.iter().any(|n| n == w),
                "{}: no {w} in {names:?}",
                flavour.name()
            );
        }
        assert_eq!(names.last().map(String::as_str), Some("ext4"), "{names:?}");
        let ring = names.iter().position(|n| n == "virtio_ring").unwrap();
        let pci = names.iter().position(|n| n == "virtio_pci").unwrap();
        assert!(ring < pci, "{names:?}");
        eprintln!(
            "{}: {} bytes of initramfs, {} modules: {}",
            flavour.name(),
            cpio.len(),
            names.len(),
            names.join(" ")
        );
    }
}
