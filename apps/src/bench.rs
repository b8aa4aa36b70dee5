//! `splitvisor bench mmu`: the context-switch benchmark of the shadow MMU,
//! cached shadow tables against the 2006 baseline (every CR3 load drops
//! every shadow table) and nested paging, side by side:
//!
//! 1. in the simulator (`sim::bench`): N address spaces of M touched pages,
//!    switched round-robin, in each paging mode, per switch after warm-up;
//! 2. on QEMU (TCG, emulated SVM): the CR3-switch test guests
//!    (`images/guests/cr3switch*.S`) booted with `--mmu shadow` and
//!    `--mmu baseline` on a CPU without NPT and with `--mmu npt`, with the
//!    wall time, the vmm-server's exit count and the mmu-server's figures
//!    (its `[vmm] mmu:` line) of each run.
//!
//! The tables go to stdout, progress to stderr.

use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use ipc_proto::manifest::MmuMode as SystemMmu;
use mmu_server::{MmuMode, PagingMode};
use sim::bench::{context_switch, table, BenchConfig, BenchReport};
use splitvisor::run::emulator_missing_message as emulator_missing;
use splitvisor::run::{find_program, qemu_args, run_emulator, Capture, FinalLine, RunOptions};
use splitvisor::DEFAULT_EMULATOR;

/// `splitvisor bench`.
#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: BenchWhat,
}

#[derive(Subcommand)]
enum BenchWhat {
    /// The shadow MMU's context-switch benchmark: cached shadow tables
    /// against the 2006 baseline and nested paging, in the simulator and on
    /// QEMU.
    ///
    /// The simulator part runs N address spaces of M touched pages each,
    /// switched round-robin, in every paging mode; the QEMU part boots the
    /// CR3-switch test guests (8 address spaces of 64 pages, 4000 CR3
    /// switches; cr3bench64 without PTE edits, the cr3switch guests with
    /// two PTE edits and an INVLPG per switch) with --mmu shadow and --mmu
    /// baseline on `EPYC,+svm,-npt` and with --mmu npt on `EPYC,+svm,+npt`.
    Mmu(MmuArgs),
    /// Debian's kernel to the init marker three ways in one run: plain QEMU
    /// TCG (no splitvisor), splitvisor with nested paging, splitvisor with
    /// shadow paging; wall time and its ratio to plain QEMU, exits by
    /// reason, IPC figures, and the shadow cache's hit rate and faults per
    /// guest CR3 load.
    ///
    /// Fetches the kernel like `run --linux` does and names it, with its
    /// Debian version and busybox's, on the first line (`Guest kernel:`);
    /// SPLITVISOR_KERNEL_PACKAGE=linux-image-NAME[=VERSION] boots that
    /// package instead of the one the metapackage depends on today (so does
    /// every `--linux` command). Takes about a minute for amd64 (QEMU 7.2
    /// TCG, 2.6 GHz EPYC).
    Boot(crate::bench_boot::BootArgs),
    /// Two VMs booting at once on 2 host CPUs against one VM alone:
    /// Debian's kernel to the init marker, under QEMU TCG with one host
    /// thread for all vCPUs (-icount) and with a thread per vCPU (MTTCG);
    /// wall times and the ratio (README, "SMP host").
    Smp(crate::bench_smp::SmpArgs),
    /// What an exit costs, three ways in one run: through the ring-3
    /// servers as shipped; through a stub built with its
    /// `bench-inline-exits` feature, which answers the guest's exits in
    /// ring 0 (the lower bound of this design; never a shipped stub); and
    /// the same guest on plain QEMU TCG (no splitvisor; its exits are not
    /// exits there). The exitbench guest makes N exits of each kind (port
    /// I/O, CPUID, RDMSR, HLT woken by the local APIC timer, MMIO, and
    /// shadow #PFs under --mmu shadow); the tables give the wall time per
    /// op each way and the ratios ring-3/in-stub and ring-3/plain, exits
    /// per second, instructions per op (the guest's TSC under -icount,
    /// plus the vmm-server's handling time, which the guest's TSC leaves
    /// out), the exits by reason and the servers' syscalls per exit; with
    /// --parts, the instructions per part of the exit path (guest, stub
    /// after the exit, ring 3, stub after the system call) from stubs
    /// built with `bench-exit-parts`.
    ///
    /// How it times: each kind runs in a boot of its own (one per way),
    /// and the guest prints a line before and after its loop; the loop's
    /// wall time is between the two lines' arrival on the host, less that
    /// of a reference boot's empty loop (the cost of printing the end
    /// line), so boot time does not count. Plain QEMU's count is raised
    /// tenfold (up to 1000 N) until its loop takes 100 ms (or fixed with
    /// --plain-count): the lines' arrival is good to about a millisecond.
    /// The exits of a kind are its boot's `[vmm] exits:` counters less the
    /// reference boot's, less two port exits per character the guest
    /// printed beyond the reference's. All ways run TCG with the same
    /// -icount (or, with --emulator bochs, Bochs with VMX from GRUB ISOs);
    /// run it on an otherwise idle machine, or with --rounds. Builds the
    /// in-stub stub once, in target/image/bench-inline.
    Exits(crate::bench_exits::ExitsArgs),
    /// The guest's disk through splitvisor (`--disk`: the virtio-blk
    /// server and the disk-driver) against plain QEMU's own virtio-blk on
    /// the same kind of image, in one run: Debian's amd64 kernel times
    /// sequential 64 KiB writes (with fsync) and reads of 16 MiB, and 200
    /// random 4 KiB reads, with busybox `dd` on /dev/vda; MB/s, reads/s
    /// and the ratio. The first line names the kernel package and version
    /// (pinned with SPLITVISOR_KERNEL_PACKAGE, as for `bench boot`). About
    /// a minute.
    Io(crate::bench_io::IoArgs),
    /// VM-to-VM ping round trips and TCP throughput through splitvisor's
    /// switch (--vms 2 --net switch, one CPU) against two plain-QEMU
    /// guests on QEMU's own socket network (-netdev socket, virtio-net-pci),
    /// in one run: Debian's amd64 kernel, VM 0 pings VM 1 20 times and
    /// sends it N MiB with busybox nc; RTT min/avg/max (guest time), MiB/s
    /// by the guest's clock and by the host's (the lines' arrival), and
    /// the ratios. The first line names the kernel package (pinned with
    /// SPLITVISOR_KERNEL_PACKAGE, as for `bench boot`). A few minutes.
    Net(crate::bench_net::NetArgs),
}

#[derive(Args)]
struct MmuArgs {
    /// Address spaces in the simulator (N).
    #[arg(long, value_name = "N", default_value_t = 8,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    spaces: u16,
    /// Touched pages per address space in the simulator (M).
    #[arg(long, value_name = "M", default_value_t = 64,
          value_parser = clap::value_parser!(u16).range(1..=512))]
    pages: u16,
    /// A CR3-switch guest to boot on QEMU: cr3bench64 (the pure
    /// context-switch workload, 64-bit), or cr3switch32, cr3switchpae,
    /// cr3switch64 (with two PTE edits and an INVLPG per switch); may be
    /// given more than once. Default: cr3bench64 and cr3switch64.
    #[arg(long, value_name = "NAME",
          value_parser = clap::builder::PossibleValuesParser::new(QEMU_GUESTS))]
    guest: Vec<String>,
    /// Boot all four CR3-switch guests on QEMU.
    #[arg(long, conflicts_with = "guest")]
    all_guests: bool,
    /// Only the simulator.
    #[arg(long, conflicts_with = "no_sim")]
    no_qemu: bool,
    /// Only QEMU.
    #[arg(long)]
    no_sim: bool,
    /// Kill QEMU after this many seconds (per boot).
    #[arg(long, value_name = "SECS", default_value_t = 600,
          value_parser = clap::value_parser!(u64).range(1..))]
    timeout: u64,
}

/// The CR3-switch guests: with PTE edits and INVLPG in every paging mode,
/// and the pure context-switch workload (no edits) in long mode.
const QEMU_GUESTS: [&str; 4] = ["cr3switch32", "cr3switchpae", "cr3switch64", "cr3bench64"];

/// The runs on QEMU: how the MMU is virtualized and on which CPU.
const QEMU_RUNS: [(&str, SystemMmu, &str); 3] = [
    ("shadow", SystemMmu::Shadow, "EPYC,+svm,-npt"),
    ("baseline", SystemMmu::ShadowBaseline, "EPYC,+svm,-npt"),
    ("npt", SystemMmu::Nested, "EPYC,+svm,+npt"),
];

/// Runs `splitvisor bench ...`; returns the exit status.
pub fn bench(a: &BenchArgs) -> i32 {
    match &a.what {
        BenchWhat::Mmu(m) => bench_mmu(m),
        BenchWhat::Boot(b) => crate::bench_boot::bench_boot(b),
        BenchWhat::Smp(s) => crate::bench_smp::bench_smp(s),
        BenchWhat::Exits(e) => crate::bench_exits::bench_exits(e),
        BenchWhat::Io(i) => crate::bench_io::bench_io(i),
        BenchWhat::Net(n) => crate::bench_net::bench_net(n),
    }
}

fn bench_mmu(a: &MmuArgs) -> i32 {
    let mut ok = true;
    if !a.no_sim {
        ok &= sim_part(usize::from(a.spaces), usize::from(a.pages));
    }
    if !a.no_qemu {
        let guests: Vec<&str> = if a.all_guests {
            QEMU_GUESTS.to_vec()
        } else if a.guest.is_empty() {
            vec!["cr3bench64", "cr3switch64"]
        } else {
            a.guest.iter().map(String::as_str).collect()
        };
        if !a.no_sim {
            println!();
        }
        ok &= qemu_part(&guests, Duration::from_secs(a.timeout));
    }
    if ok {
        0
    } else {
        1
    }
}

/// The simulator's table, cached against baseline (and nested) in every
/// paging mode, and the ratio of faults per switch.
fn sim_part(spaces: usize, pages: usize) -> bool {
    eprintln!("splitvisor: bench mmu: simulator, N = {spaces}, M = {pages}");
    let mut reports: Vec<BenchReport> = Vec::new();
    for mode in [PagingMode::Long, PagingMode::Pae, PagingMode::Bits32] {
        for mmu in [MmuMode::Shadow, MmuMode::Baseline, MmuMode::Nested] {
            let cfg = BenchConfig {
                spaces,
                pages,
                ..BenchConfig::standard(mode, mmu)
            };
            match context_switch(cfg) {
                Ok(r) => reports.push(r),
                Err(e) => {
                    eprintln!("splitvisor: bench mmu: simulator, {mode:?} {mmu:?}: {e}");
                    return false;
                }
            }
        }
    }
    println!(
        "Simulator (sim::bench): N = {spaces} address spaces of M = {pages} touched pages, \
         switched round-robin; per switch after warm-up (time: host cost of the simulator)"
    );
    print!("{}", table(&reports));
    for mode in [PagingMode::Long, PagingMode::Pae, PagingMode::Bits32] {
        let of = |mmu| {
            reports
                .iter()
                .find(|r| r.config.mode == mode && r.config.mmu == mmu)
        };
        if let (Some(c), Some(b)) = (of(MmuMode::Shadow), of(MmuMode::Baseline)) {
            println!(
                "{:<7} shadow faults per switch: cached {:.2}, baseline {:.2} ({})",
                format!("{mode:?}"),
                c.faults_per_switch,
                b.faults_per_switch,
                ratio(b.faults_per_switch, c.faults_per_switch)
            );
        }
    }
    true
}

/// "N times fewer", or "none cached" when the cached figure is zero.
fn ratio(baseline: f64, cached: f64) -> String {
    if cached > 0.0 {
        format!("{:.1}x fewer cached", baseline / cached)
    } else if baseline > 0.0 {
        "none at all cached".to_string()
    } else {
        "none either way".to_string()
    }
}

/// One boot of a CR3-switch guest.
struct QemuRun {
    guest: &'static str,
    mmu: &'static str,
    cpu: &'static str,
    wall: Duration,
    passed: bool,
    /// `None` when the run failed: what went wrong.
    failure: Option<String>,
    checksum: Option<String>,
    switches: Option<u64>,
    exits: Option<u64>,
    /// The `[vmm] mmu:` figures (absent with NPT).
    mmu_figures: Vec<(String, u64)>,
}

impl QemuRun {
    fn figure(&self, key: &str) -> Option<u64> {
        self.mmu_figures
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| *v)
    }
}

/// Boots each guest in each mode and prints the side-by-side table.
fn qemu_part(guests: &[&str], timeout: Duration) -> bool {
    let Some(qemu) = find_program(DEFAULT_EMULATOR) else {
        eprintln!("splitvisor: {}", emulator_missing(DEFAULT_EMULATOR));
        return false;
    };
    let qemu = qemu.to_string_lossy().into_owned();
    let mut runs = Vec::new();
    for guest in guests {
        let Some(guest) = QEMU_GUESTS.iter().copied().find(|g| g == guest) else {
            continue;
        };
        for (mmu, mode, cpu) in QEMU_RUNS {
            runs.push(qemu_run(&qemu, guest, mmu, mode, cpu, timeout));
        }
    }

    println!(
        "QEMU (TCG, emulated SVM): the CR3-switch guests; wall time of the whole boot \
         (QEMU start to guest exit), the vmm-server's exits and the mmu-server's figures \
         (per switch: over the whole run, warm-up included; faults include wp_faults, the \
         cr3switch guests' PTE edits, two per switch, emulated)"
    );
    println!(
        "{:<13} {:<9} {:<15} {:>7} {:>8} {:>8} {:>9} {:>7} {:>9} {:>8} {:>8} {:>13} {:>12} {:<11} result",
        "guest",
        "mmu",
        "cpu",
        "wall s",
        "exits",
        "faults",
        "wp_faults",
        "misses",
        "cr3_loads",
        "installs",
        "switches",
        "faults/switch",
        "exits/switch",
        "checksum",
    );
    let dash = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    let per = |v: Option<u64>, n: Option<u64>| match (v, n) {
        (Some(v), Some(n)) if n > 0 => format!("{:.2}", v as f64 / n as f64),
        _ => "-".to_string(),
    };
    for r in &runs {
        println!(
            "{:<13} {:<9} {:<15} {:>7.2} {:>8} {:>8} {:>9} {:>7} {:>9} {:>8} {:>8} {:>13} {:>12} {:<11} {}",
            r.guest,
            r.mmu,
            r.cpu,
            r.wall.as_secs_f64(),
            dash(r.exits),
            dash(r.figure("faults")),
            dash(r.figure("wp_faults")),
            dash(r.figure("misses")),
            dash(r.figure("cr3_loads")),
            dash(r.figure("installs")),
            dash(r.switches),
            per(r.figure("faults"), r.switches),
            per(r.exits, r.switches),
            r.checksum.as_deref().unwrap_or("-"),
            if r.passed { "passed" } else { "FAILED" }
        );
    }

    let mut ok = true;
    for guest in guests {
        let of: Vec<&QemuRun> = runs.iter().filter(|r| r.guest == *guest).collect();
        let by = |mmu: &str| of.iter().copied().find(|r| r.mmu == mmu);
        for r in &of {
            if let Some(why) = &r.failure {
                ok = false;
                println!("{guest} ({}): FAILED: {why}", r.mmu);
            }
        }
        if let (Some(s), Some(b)) = (by("shadow"), by("baseline")) {
            let f = |r: &QemuRun| match (r.figure("faults"), r.switches) {
                (Some(v), Some(n)) if n > 0 => Some(v as f64 / n as f64),
                _ => None,
            };
            if let (Some(fs), Some(fb)) = (f(s), f(b)) {
                println!(
                    "{guest}: shadow faults per CR3 switch: cached {fs:.2}, baseline {fb:.2} \
                     ({}); wall {:.2} s against {:.2} s",
                    ratio(fb, fs),
                    s.wall.as_secs_f64(),
                    b.wall.as_secs_f64()
                );
            }
        }
        let sums: Vec<&str> = of.iter().filter_map(|r| r.checksum.as_deref()).collect();
        if sums.len() == of.len() && sums.windows(2).all(|w| w[0] == w[1]) {
            println!(
                "{guest}: the checksum is the same in every mode: {}",
                sums.first().copied().unwrap_or("-")
            );
        } else {
            ok = false;
            let each: Vec<String> = of
                .iter()
                .map(|r| format!("{} {}", r.mmu, r.checksum.as_deref().unwrap_or("none")))
                .collect();
            println!("{guest}: the checksums DIFFER: {}", each.join(", "));
        }
    }
    ok
}

fn qemu_run(
    qemu: &str,
    guest: &'static str,
    mmu: &'static str,
    mode: SystemMmu,
    cpu: &'static str,
    timeout: Duration,
) -> QemuRun {
    let mut run = QemuRun {
        guest,
        mmu,
        cpu,
        wall: Duration::ZERO,
        passed: false,
        failure: None,
        checksum: None,
        switches: None,
        exits: None,
        mmu_figures: Vec::new(),
    };
    let system = images::SystemSpec {
        mmu: mode,
        ..images::SystemSpec::new(guest)
    };
    eprintln!("splitvisor: bench mmu: building {guest} (--mmu {mmu})");
    let image = match images::build_system_spec(&system) {
        Ok(p) => p,
        Err(e) => {
            run.failure = Some(format!("could not build the image: {e}"));
            return run;
        }
    };
    let opts = RunOptions {
        system,
        cpu: cpu.to_string(),
        arch: None,
        emulator: qemu.to_string(),
        timeout,
        memory_mib: 256,
        // QEMU's TCG ignores the task-switch intercept; the guest is ours.
        unsafe_shadow: mode.is_shadow(),
    };
    eprintln!("splitvisor: bench mmu: booting {guest} --mmu {mmu} -cpu {cpu}");
    let console = Capture::default();
    let start = Instant::now();
    let report = run_emulator(
        qemu,
        &qemu_args(&opts, &image),
        timeout,
        Box::new(console.clone()),
    );
    run.wall = start.elapsed();
    let text = String::from_utf8_lossy(&console.0.lock().unwrap()).into_owned();
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            run.failure = Some(e.to_string());
            return run;
        }
    };
    eprintln!(
        "splitvisor: bench mmu: {guest} --mmu {mmu}: {:.2} s",
        run.wall.as_secs_f64()
    );
    let prefix = format!("{guest}: ");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(&prefix) {
            if let Some(sum) = rest.strip_prefix("checksum ") {
                run.checksum = Some(sum.trim().to_string());
            } else if let Some((n, _)) = rest.split_once(" cr3 switches over ") {
                run.switches = n.parse().ok();
            } else if rest == "all checks passed" {
                run.passed = true;
            }
        } else if let Some(rest) = line.strip_prefix("[vmm] exits: ") {
            run.exits = key_values(rest)
                .into_iter()
                .find(|(k, _)| k == "total")
                .map(|(_, v)| v);
        } else if let Some(rest) = line.strip_prefix("[vmm] mmu: ") {
            run.mmu_figures = key_values(rest);
        }
    }
    let stopped = report.final_line == Some(FinalLine::Stopped(0));
    if !(stopped && run.passed) {
        run.passed = false;
        let last: Vec<&str> = text.lines().rev().take(12).collect();
        let last: Vec<&str> = last.into_iter().rev().collect();
        let why = if report.timed_out {
            format!("timed out after {} s", timeout.as_secs())
        } else {
            format!("ended with {:?}", report.final_line)
        };
        run.failure = Some(format!(
            "{why}; the console ends with:\n  {}",
            last.join("\n  ")
        ));
    }
    run
}

/// `key=value` pairs with numeric values.
pub(crate) fn key_values(text: &str) -> Vec<(String, u64)> {
    text.split_whitespace()
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_values_reads_the_mmu_line() {
        let kv = key_values("faults=16 guest_faults=0 cr3_loads=3 odd=x");
        assert_eq!(
            kv,
            vec![
                ("faults".to_string(), 16),
                ("guest_faults".to_string(), 0),
                ("cr3_loads".to_string(), 3)
            ]
        );
    }

    #[test]
    fn ratio_words() {
        assert_eq!(ratio(64.0, 2.0), "32.0x fewer cached");
        assert_eq!(ratio(64.0, 0.0), "none at all cached");
    }
}
