//! End-to-end: servers restarted from their image while the guest runs
//! (issue 12), with faults injected on purpose through `splitvisor run
//! --inject SERVER:FAULT@N` (`ipc_proto::inject`), in QEMU (TCG, emulated
//! SVM), reading the guest's own console:
//! - the mmu-server crashes (`ud2`) every 2000 exits under shadow paging:
//!   the stub frees its tables, restarts it, the new instance rebuilds them
//!   from the guest's control registers and takes the exit again, and the
//!   guest's results are the same as without the crashes (cr3switch64 and
//!   pae, a few seconds each, and cr3switch64 on Bochs's VMX: in every run
//!   of the tests; Debian's amd64 kernel with the MMU workload, about a
//!   minute);
//! - the mmu-server scribbles garbage over the guest's registers in its
//!   VCPU page before it crashes: the stub writes back those of its last
//!   accepted resume, and the guest does not notice;
//! - the uart-server crashes: the guest keeps running and its console
//!   goes on (the line being buffered in the lost instance is lost);
//! - the attack campaign's restart boot (`splitvisor attack --boots
//!   restart`): a hostile mmu-server faults on purpose at seeded points,
//!   and each next instance's use of the freed handles is refused;
//! - the watchdog (`kernel_stub::watchdog`): a server that spins without
//!   blocking (`hang`) for the budget (8 s of the emulated TSC) is
//!   restarted like a faulting one: the mmu-server (QEMU's SVM and
//!   Bochs's VMX), the uart-server, the disk-driver in the middle of a
//!   request (its client asks again); a hanging vmm-server stops the VM
//!   with `vm failed: the vmm-server hung: ...` and status 101.
//!
//! Shadow paging on QEMU's TCG needs `--unsafe-shadow` (it ignores the
//! task-switch intercept); these guests are trusted. Run only these with
//!
//! ```sh
//! cargo test -p splitvisor --test e2e_restart -- --nocapture
//! ```

mod common;

use std::time::Duration;

use common::Run;
use ipc_proto::manifest::MmuMode;
use splitvisor::attack::{campaign, AttackOptions};
use splitvisor::linux::Flavour;

/// Generous: the first run also builds the image, and several tests may
/// run at once on two cores.
const TIMEOUT_SECS: u64 = 300;

/// What cr3switch64 prints when it ends well, with or without restarts.
const CR3SWITCH64_CHECKSUM: &str = "cr3switch64: checksum 0xdf577f08";

fn run(args: &[&str]) -> Run {
    common::splitvisor_run(args, TIMEOUT_SECS)
}

/// The `[stub] NAME restarted (generation G): ...` lines.
fn restarts(r: &Run, name: &str) -> usize {
    let prefix = format!("[stub] {name} restarted (generation ");
    r.stdout.lines().filter(|l| l.starts_with(&prefix)).count()
}

/// The stub's statistics line says `restarts=N`.
fn counted_restarts(r: &Run) -> Option<usize> {
    let line = r.stdout.lines().find(|l| l.contains("] exits: total="))?;
    let field = line.split(' ').find_map(|f| f.strip_prefix("restarts="))?;
    field.parse().ok()
}

/// The `[stub] NAME restarted (generation G): watchdog: ...` lines.
fn hung(text: &str, name: &str) -> usize {
    let prefix = format!("[stub] {name} restarted (generation ");
    text.lines()
        .filter(|l| l.starts_with(&prefix) && l.contains("): watchdog: it ran "))
        .count()
}

fn assert_ends_well(r: &Run, guest: &str) {
    let passed = format!("{guest}: all checks passed");
    assert!(r.has_line(&passed), "no `{passed}`\n{r}");
    assert!(r.has_line("[stub] vm stopped: guest status 0"), "{r}");
    assert_eq!(r.code, Some(0), "{r}");
}

fn cr3switch64_shadow(inject: &str) -> Run {
    run(&[
        "--guest",
        "cr3switch64",
        "--mmu",
        "shadow",
        "--unsafe-shadow",
        "--inject",
        inject,
    ])
}

/// (b) The quick one: 4000 CR3 switches, about 25000 exits to the
/// mmu-server, which crashes at every 2000th of them.
#[test]
fn cr3switch64_on_qemu_svm_shadow_survives_mmu_server_crashes() {
    let r = cr3switch64_shadow("mmu-server:crash@every2000");
    assert_ends_well(&r, "cr3switch64");
    assert!(r.has_line(CR3SWITCH64_CHECKSUM), "another checksum\n{r}");
    let n = restarts(&r, "mmu-server");
    assert!(n >= 10, "only {n} restarts of the mmu-server\n{r}");
    assert_eq!(counted_restarts(&r), Some(n), "{r}");
    assert!(
        r.stdout
            .contains("[stub] mmu-server restarted (generation 1): exception 6 "),
        "the restart line does not name the #UD\n{r}"
    );
}

/// PAE paging: the new instance reloads the PDPTEs from guest memory and
/// the stub checks its new PAE root; 17 exits to the mmu-server, a crash at
/// every third.
#[test]
fn pae_guest_on_qemu_svm_shadow_survives_mmu_server_crashes() {
    let r = run(&[
        "--guest",
        "pae",
        "--mmu",
        "shadow",
        "--unsafe-shadow",
        "--inject",
        "mmu-server:crash@every3",
    ]);
    assert_ends_well(&r, "pae");
    assert!(restarts(&r, "mmu-server") >= 4, "{r}");
}

/// The same on Intel VMX without EPT in Bochs, where shadow paging is safe
/// (it exits on task switches); about 30 s.
#[test]
fn cr3switch64_on_bochs_vmx_shadow_survives_mmu_server_crashes() {
    let r = run(&[
        "--emulator",
        "bochs",
        "--arch",
        "vmx",
        "--mmu",
        "shadow",
        "--guest",
        "cr3switch64",
        "--inject",
        "mmu-server:crash@every2000",
    ]);
    assert_ends_well(&r, "cr3switch64");
    assert!(r.has_line(CR3SWITCH64_CHECKSUM), "another checksum\n{r}");
    assert!(restarts(&r, "mmu-server") >= 10, "{r}");
}

/// The restarted mmu-server reads the guest's registers from its VCPU page,
/// which the crashing one filled with garbage: the stub's copy wins.
#[test]
fn cr3switch64_on_qemu_svm_shadow_survives_a_corrupting_mmu_server() {
    let r = cr3switch64_shadow("mmu-server:corrupt@every3000");
    assert_ends_well(&r, "cr3switch64");
    assert!(r.has_line(CR3SWITCH64_CHECKSUM), "another checksum\n{r}");
    assert!(restarts(&r, "mmu-server") >= 5, "{r}");
}

/// (c) COM1's server crashes at every 150th port access: the vmm-server's
/// call comes back with `ServerRestarted`, the new instance serves the next
/// one, and the guest's last lines still reach the console.
#[test]
fn cr3switch64_on_qemu_svm_keeps_its_console_when_the_uart_server_crashes() {
    let r = run(&[
        "--guest",
        "cr3switch64",
        "--uart-server",
        "--inject",
        "uart-server:crash@every150",
    ]);
    assert_ends_well(&r, "cr3switch64");
    assert!(r.has_line(CR3SWITCH64_CHECKSUM), "{r}");
    let n = restarts(&r, "uart-server");
    assert!(n >= 2, "only {n} restarts of the uart-server\n{r}");
    assert_eq!(counted_restarts(&r), Some(n), "{r}");
}

/// A server the image does not have is refused before boot, in one sentence.
#[test]
fn an_injection_into_a_missing_server_is_refused() {
    let r = run(&["--guest", "hello", "--inject", "uart-server:crash@1"]);
    assert_ne!(r.code, Some(0), "{r}");
    assert!(
        r.stderr
            .contains("--inject: the image has no task uart-server"),
        "{r}"
    );
}

/// (a) Debian's amd64 kernel runs the MMU workload (300 fork+exec, 2000
/// pipe round trips, 200 mmap/munmap) under shadow paging while the
/// mmu-server crashes at every 2000th exit: tens of restarts, the same
/// results. About a minute on QEMU's TCG; the first run downloads the
/// Debian packages (`e2e_linux_qemu_svm.rs`).
#[test]
fn debian_amd64_runs_the_workload_with_shadow_paging_while_the_mmu_server_crashes() {
    let run = common::boot_linux(
        Flavour::Amd64,
        "shadow",
        &[
            "--board",
            "isa",
            "--cpu",
            "EPYC,+svm",
            "--unsafe-shadow",
            "--inject",
            "mmu-server:crash@every2000",
        ],
        900,
    );
    let n = restarts(&run, "mmu-server");
    eprintln!("amd64 shadow: {n} mmu-server restarts");
    assert!(n >= 10, "only {n} restarts of the mmu-server\n{run}");
    assert_eq!(counted_restarts(&run), Some(n), "{run}");
}

/// Part 4: the hostile mmu-server faults on purpose three times (at start
/// with tables of its own, or at its first or second resume, drawn from
/// the seed); each next instance installs into, frees, and names as its
/// root the handles the last one held: all refused, the guest never
/// entered on a freed table, and the probe guest runs to its end.
#[test]
fn the_restart_attack_finds_every_freed_handle_refused() {
    let opts = AttackOptions {
        short: true,
        modes: vec![MmuMode::Nested, MmuMode::Shadow],
        timeout: Duration::from_secs(240),
        boots: vec!["restart".into()],
        guests: false,
        seed: 7,
        ..AttackOptions::default()
    };
    let report = campaign(&opts).expect("the campaign runs (QEMU, gcc, binutils installed)");
    let table = report.table();
    eprintln!("{table}");
    let row = report.rows.get("restart").copied().unwrap_or_default();
    assert!(row.attempts >= 60, "too few restart attempts:\n{table}");
    assert_eq!(row.refused, row.attempts, "{table}");
    let total = report.total();
    assert_eq!(
        (total.stub_faults, total.escapes),
        (0, 0),
        "{table}\n{:#?}",
        report.escapes
    );
    for mode in ["npt", "shadow"] {
        let note = format!(
            "{mode} restart: 1 boot(s); ended `vm stopped: guest status 0`; probe ran to its end"
        );
        assert!(
            report.notes.contains(&note),
            "no `{note}`:\n{:#?}",
            report.notes
        );
    }
}

/// The mmu-server spins at its 500th exit: the watchdog restarts it after
/// its budget, the new instance takes that exit again, and the guest's
/// results are those of a run without it.
#[test]
fn cr3switch64_on_qemu_svm_shadow_survives_a_hanging_mmu_server() {
    let r = cr3switch64_shadow("mmu-server:hang@500");
    assert_ends_well(&r, "cr3switch64");
    assert!(r.has_line(CR3SWITCH64_CHECKSUM), "another checksum\n{r}");
    assert_eq!(hung(&r.stdout, "mmu-server"), 1, "{r}");
    assert_eq!(counted_restarts(&r), Some(1), "{r}");
}

/// The same on Bochs's VMX (host interrupts taken in ring 3 after VM
/// exits, whose host state leaves IF clear).
#[test]
fn cr3switch64_on_bochs_vmx_shadow_survives_a_hanging_mmu_server() {
    let r = run(&[
        "--emulator",
        "bochs",
        "--arch",
        "vmx",
        "--mmu",
        "shadow",
        "--guest",
        "cr3switch64",
        "--inject",
        "mmu-server:hang@500",
    ]);
    assert_ends_well(&r, "cr3switch64");
    assert!(r.has_line(CR3SWITCH64_CHECKSUM), "another checksum\n{r}");
    assert_eq!(hung(&r.stdout, "mmu-server"), 1, "{r}");
}

/// COM1's server spins at its 150th request (each instance): restarted,
/// the vmm-server's call comes back with `ServerRestarted`, and the
/// console goes on.
#[test]
fn cr3switch64_on_qemu_svm_keeps_its_console_when_the_uart_server_hangs() {
    let r = run(&[
        "--guest",
        "cr3switch64",
        "--uart-server",
        "--inject",
        "uart-server:hang@150",
    ]);
    assert_ends_well(&r, "cr3switch64");
    assert!(r.has_line(CR3SWITCH64_CHECKSUM), "{r}");
    // Each new instance hangs at its own 150th request again.
    let n = hung(&r.stdout, "uart-server");
    assert!(n >= 2, "only {n} watchdog restarts of the uart-server\n{r}");
    assert_eq!(counted_restarts(&r), Some(n), "{r}");
}

/// The vmm-server holds the guest's devices: its hang stops the VM, with
/// one line saying so and the failure's status (101).
#[test]
fn a_hanging_vmm_server_stops_the_vm_on_qemu_svm() {
    let r = run(&["--guest", "cr3switch64", "--inject", "vmm-server:hang@100"]);
    assert_eq!(r.code, Some(101), "{r}");
    assert!(
        r.stdout.lines().any(|l| l
            .starts_with("[stub] vm failed: the vmm-server hung: watchdog: it ran ")
            && l.ends_with("; stopping the VM")),
        "{r}"
    );
    assert!(!r.has_line(CR3SWITCH64_CHECKSUM), "{r}");
}

/// The disk-driver spins on the fourth request of each instance (first
/// the client's READ, `disk-driver/src/bin/disk-client.rs`), next to the
/// `hello` guest: the watchdog restarts it (it identifies the disk
/// again), the client's call comes back with `ServerRestarted` and it
/// asks again, and the sectors read back as written.
#[test]
fn the_disk_driver_hanging_in_a_request_is_restarted_on_qemu_svm() {
    use common::disk::{DiskClient, Scratch};
    use ipc_proto::inject::{Fault, Injection};
    use splitvisor::run::DEFAULT_CPU;

    let dir = Scratch::new("disk-hang");
    let mut client = DiskClient::new(&dir);
    let driver = client.driver.clone();
    client.system.inject = vec![(
        driver.clone(),
        Injection {
            fault: Fault::Hang,
            at: 4,
            every: false,
        },
    )];
    let (text, report) = client.run(DEFAULT_CPU, Duration::from_secs(TIMEOUT_SECS));
    let has = |l: &str| text.lines().any(|x| x == l);
    // The first instance hangs at the READ, the second (READ again, then
    // the three refusals) at the unknown op, the third serves that.
    let n = hung(&text, &driver);
    assert!(
        n == 2,
        "{n} watchdog restarts of the disk-driver, not 2\n{text}\n{report:?}"
    );
    for line in [
        "disk-client: the disk-driver was restarted: asking again",
        "disk-client: WRITE 0, FLUSH 0, READ 0: the sectors read back as written",
        "hello from the guest",
        "[stub] vm stopped: guest status 0",
    ] {
        assert!(has(line), "{line}:\n{text}\n{report:?}");
    }
    // Every instance identified the disk again.
    let identified = text
        .lines()
        .filter(|l| l.starts_with("disk: QEMU HARDDISK"))
        .count();
    assert_eq!(identified, n + 1, "{text}");
    let asked = text.lines().filter(|l| l.contains("asking again")).count();
    assert_eq!(asked, n, "{text}");
}
