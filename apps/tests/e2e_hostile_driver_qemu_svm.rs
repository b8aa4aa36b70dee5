//! End-to-end: a hostile virtio driver inside the guest (the built-in
//! `hostile-driver` guest, `images/guests/hostile-driver.S`) against the
//! virtio-console function (`--console hvc0`) and the virtio-blk function
//! (`--disk`), each a ring-3 server, in QEMU (TCG, emulated SVM) on the PC
//! board (and once on Bochs with VMX and EPT).
//!
//! The guest finds the functions on PCI bus 0, sets each up as a driver
//! does, and attacks it twelve ways (descriptor loops, a chain longer than
//! the queue, a wrapping length, buffers beyond RAM, in the local APIC and
//! in the device's own BAR, a nested indirect table naming itself, an
//! available-index jump, a head out of range, notifications of queues
//! never enabled, MSI-X writes out of range, BAR 0 moved over RAM). After
//! each it checks DEVICE_NEEDS_RESET where the spec says the queue is
//! broken (and its absence elsewhere), resets the device and sends a legal
//! request, and prints one line per attack and `hostile-driver: N
//! attacks, M contained`.
//!
//! The tests read those lines and the statistics: no server was restarted
//! (a server crash on guest input would be a bug), nothing panicked, and
//! the VM ended with the guest's own status 0.
//!
//! ```sh
//! cargo test -p splitvisor --test e2e_hostile_driver_qemu_svm -- --nocapture
//! ```

mod common;

use std::time::Duration;

use common::disk::scratch_image;
use common::Run;
use ipc_proto::manifest::MmuMode;
use splitvisor::attack::{virtio_campaign, AttackOptions};

/// The attacks, as the guest names them.
const ATTACKS: [(&str, bool); 12] = [
    ("desc-loop", true),
    ("long-chain", true),
    ("wrapping-len", true),
    ("beyond-ram", true),
    ("apic-mmio", true),
    ("own-bar", true),
    ("indirect-self", true),
    ("avail-jump", true),
    ("head-range", true),
    ("notify-off", false),
    ("msix-range", false),
    ("bar-over-ram", false),
];

fn run(extra: &[&str]) -> Run {
    let mut args = vec![
        "--guest",
        "hostile-driver",
        "--board",
        "pc",
        "--console",
        "hvc0",
    ];
    args.extend(extra);
    common::splitvisor_run(&args, 300)
}

/// The frames that are data, not queue rules, on virtio-net's transmitq:
/// never NEEDS_RESET.
const NET_ATTACKS: [(&str, bool); 6] = [
    ("hdr-csum", false),
    ("hdr-gso", false),
    ("short-frame", false),
    ("hdr-only", false),
    ("writable-tx", false),
    ("oversized", false),
];

/// Each of `attacks` on `device` has its line, contained.
fn assert_attack_lines(r: &Run, device: &str, attacks: &[(&str, bool)]) {
    for &(attack, needs_reset) in attacks {
        let want = if needs_reset { "yes" } else { "no" };
        let line = format!("hostile-driver: {device} {attack}: status ");
        let Some(l) = r.stdout.lines().find(|l| l.starts_with(&line)) else {
            panic!("no `{line}...` line\n{r}");
        };
        assert!(
            l.ends_with(&format!("needs-reset {want} (expected {want}): contained")),
            "{l}\n{r}"
        );
    }
}

/// Every attack on each of `devices` contained, no server restarted.
fn assert_all_contained(r: &Run, devices: &[&str]) {
    assert_all_contained_plus(r, devices, 0);
}

/// The same, with `more` attacks besides ATTACKS on each device.
fn assert_all_contained_plus(r: &Run, devices: &[&str], more: usize) {
    for device in devices {
        assert_attack_lines(r, device, &ATTACKS);
    }
    let n = ATTACKS.len() * devices.len() + more;
    let summary = format!("hostile-driver: {n} attacks, {n} contained");
    assert!(r.has_line(&summary), "no `{summary}`\n{r}");
    assert!(!r.stdout.contains("NOT CONTAINED"), "{r}");
    // No server needed a restart: the stub prints a line for each and a
    // `restarts=` field in its statistics when there was one.
    assert!(!r.stdout.contains(" restarted (generation "), "{r}");
    assert!(!r.stdout.contains(" restarts="), "{r}");
    assert!(!r.stdout.contains("panic"), "{r}");
    assert!(r.has_line("hostile-driver: all checks passed"), "{r}");
    assert!(r.has_line("[stub] vm stopped: guest status 0"), "{r}");
    assert_eq!(r.code, Some(0), "{r}");
    // The legal requests reached the host through the virtio console:
    // one after each reset, one more before it after each attack that
    // leaves the queue working.
    let legal = r
        .stdout
        .lines()
        .filter(|l| *l == "hostile-driver: a legal request")
        .count();
    let keep_working = ATTACKS.iter().filter(|(_, nr)| !nr).count();
    assert_eq!(legal, ATTACKS.len() + keep_working, "{r}");
}

/// The guest before device work: the first request was not done before
/// the guest's next instruction after its doorbell (the guest's own line),
/// and PAUSE exits ran the deferred servers (the stub's `[stub] scheduler:
/// ... yields=Y` line).
fn assert_guest_ran_first(r: &Run) {
    let line = "hostile-driver: the first request was done before the guest's next instruction: no";
    assert!(r.has_line(line), "no `{line}`\n{r}");
    let yields: u64 = r
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("[stub] scheduler: "))
        .and_then(|l| l.split(' ').find_map(|f| f.strip_prefix("yields=")))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no `yields=` in the scheduler line\n{r}"));
    assert!(yields > 0, "yields={yields}\n{r}");
}

#[test]
fn the_virtio_console_contains_a_hostile_driver_on_npt() {
    let r = run(&[]);
    assert_all_contained(&r, &["virtio-console"]);
    // The doorbell is a `Signal`: the console server runs at the guest's
    // next exit or PAUSE, not before the guest's next instruction.
    assert_guest_ran_first(&r);
}

#[test]
fn virtio_console_and_blk_contain_a_hostile_driver_on_npt() {
    let (_dir, disk) = scratch_image("hostile-npt", &[], 8 << 20);
    let r = run(&["--disk", &disk]);
    assert_all_contained(&r, &["virtio-console", "virtio-blk"]);
}

#[test]
fn virtio_console_and_blk_contain_a_hostile_driver_under_shadow_paging() {
    let (_dir, disk) = scratch_image("hostile-shadow", &[], 8 << 20);
    let r = run(&[
        "--disk",
        &disk,
        "--mmu",
        "shadow",
        "--cpu",
        "EPYC,+svm",
        "--unsafe-shadow",
    ]);
    assert_all_contained(&r, &["virtio-console", "virtio-blk"]);
    // Under shadow paging too: a device's writes to guest RAM reach the
    // mmu-server (a notification exit) before the guest runs again.
    assert_guest_ran_first(&r);
}

/// The same on Bochs with emulated Intel VMX and EPT (about 15 s): the
/// functions' MMIO through the VMX path, the disk as `ata0-master`, and
/// virtio-net's frames through Bochs's `ne2k:` card (`--net user`).
#[test]
fn virtio_console_blk_and_net_contain_a_hostile_driver_on_bochs_vmx_with_ept() {
    let (_dir, disk) = scratch_image("hostile-bochs", &[], 8 << 20);
    let r = run(&[
        "--disk",
        &disk,
        "--net",
        "user",
        "--emulator",
        "bochs",
        "--arch",
        "vmx",
    ]);
    assert_all_contained_plus(
        &r,
        &["virtio-console", "virtio-blk", "virtio-net"],
        NET_ATTACKS.len(),
    );
    assert_net_attacks_counted(&r);
    assert_guest_ran_first(&r);
}

/// The network's transmitq (`--net user`): the twelve queue attacks, and
/// six frames that are data (a header asking for offloads never
/// negotiated, frames too short, a device-writable buffer, a frame of
/// 2000 bytes): no NEEDS_RESET, the device sends the legal frame after
/// each, and the virtio-net server counts what it dropped (at 1, 2, 4:
/// five malformed, one oversized).
#[test]
fn virtio_net_contains_a_hostile_driver_and_counts_bad_frames_on_npt() {
    let r = run(&["--net", "user"]);
    assert_all_contained_plus(&r, &["virtio-console", "virtio-net"], NET_ATTACKS.len());
    assert_net_attacks_counted(&r);
    // The legal frames (broadcasts from 02:53:56:00:00:01) crossed the
    // switch to the uplink; the bad ones never reached it.
    let vm = common::switch_counters(&r.stdout, "at the VM's end: port 1 vm ")
        .unwrap_or_else(|| panic!("{r}"));
    let up = common::switch_counters(&r.stdout, "at the VM's end: port 0 uplink ")
        .unwrap_or_else(|| panic!("{r}"));
    assert!(vm["in"] > 0, "{vm:?}\n{r}");
    assert_eq!((up["out"], up["full"]), (vm["in"], 0), "{up:?}\n{r}");
    for drop in ["runt", "giant", "srcmc", "filtered"] {
        assert_eq!(vm[drop], 0, "{drop}\n{r}");
    }
}

/// virtio-net's six bad frames contained, and counted by its server.
fn assert_net_attacks_counted(r: &Run) {
    assert_attack_lines(r, "virtio-net", &NET_ATTACKS);
    for line in [
        "virtio-net: 4 malformed frames from the guest dropped",
        "virtio-net: 1 oversized frames from the guest (longer than 1514 bytes) dropped",
    ] {
        assert!(r.has_line(line), "no `{line}`\n{r}");
    }
    assert!(!r.stdout.contains("virtio-net: 8 malformed"), "{r}");
    assert!(!r.stdout.contains("virtio-net: 2 oversized"), "{r}");
}

/// `splitvisor attack`'s `virtio` row: the same guest with both functions,
/// under NPT and shadow paging, every attack an attempt the devices
/// contained.
#[test]
fn the_attack_campaigns_virtio_row_has_every_attack_contained() {
    let opts = AttackOptions {
        short: true,
        modes: vec![MmuMode::Nested, MmuMode::Shadow],
        timeout: Duration::from_secs(240),
        ..AttackOptions::default()
    };
    let report = virtio_campaign(&opts).expect("the boots run (QEMU, gcc, binutils installed)");
    let table = report.table();
    eprintln!("{table}");
    let row = report.rows.get("virtio").copied().unwrap_or_default();
    assert_eq!(row.attempts, 2 * 2 * ATTACKS.len() as u64, "{table}");
    assert_eq!(row.refused, row.attempts, "{table}\n{:#?}", report.escapes);
    let total = report.total();
    assert_eq!((total.stub_faults, total.escapes), (0, 0), "{table}");
}
