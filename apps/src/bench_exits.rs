//! `splitvisor bench exits`: what one exit costs through the ring-3
//! servers, against the same guest on plain QEMU TCG (where its exits are
//! not exits at all). The guest is `images/guests/exitbench.S`: N
//! iterations of one kind of exit between a `begin` and an `end` line.
//!
//! Each kind runs in a boot of its own (`kind=K n=N` on the multiboot
//! command line), so that the vmm-server's exit counters of that boot, less
//! those of a reference boot (`kind=none`: the same lines around an empty
//! loop), are the exits the kind made. The loop's wall time is the time
//! between the arrival of its `begin` and `end` lines on the host, less the
//! reference loop's (which is the cost of printing the `end` line). Boot
//! time is outside the two lines and does not count. The guest's own
//! printing costs two port exits a character, taken out of the counts.
//! Plain QEMU's count is raised tenfold until its loop is long enough to
//! time; `--rounds` alternates the boots and takes the median. Under
//! shadow paging the mmu-server's figures per kind are shown too.
//!
//! TODO(bench exits, part 2): the in-stub handler variant (a stub built
//! for this benchmark that answers these exits itself: the lower bound of
//! the design), and instructions per exit path (stub entry, server, IPC,
//! return) counted through QEMU's -icount.
//!
//! The tables go to stdout, progress to stderr.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use ipc_proto::manifest::MmuMode as SystemMmu;
use splitvisor::run::emulator_missing_message as emulator_missing;
use splitvisor::run::{
    find_program, qemu_args, qemu_machine_args, run_emulator, FinalLine, RunOptions,
};
use splitvisor::DEFAULT_EMULATOR;

use crate::bench::key_values;
use splitvisor::run::TimedConsole;

/// The exit kinds of the guest, in its order.
pub(crate) const KINDS: [&str; 6] = ["io", "cpuid", "msr", "hlt", "mmio", "pf"];
/// The guest's reference loop: no exit.
const REFERENCE: &str = "none";
/// The exit reasons of the `[vmm] exits:` line shown per kind.
const REASONS: [&str; 8] = [
    "ioio",
    "cpuid",
    "msr",
    "hlt",
    "npf",
    "exception",
    "intr",
    "other",
];
const GUEST: &str = "exitbench";
/// A plain QEMU loop shorter than this is run again with ten times the
/// count (the lines' arrival times are good to about a millisecond)...
const PLAIN_LOOP_MIN: Duration = Duration::from_millis(100);
/// ...up to this many times splitvisor's count.
const PLAIN_SCALE_MAX: u64 = 1000;
/// What the lines' arrival times can tell apart on a busy host: a loop
/// less than this longer than the reference's gives only a bound.
const RESOLUTION: Duration = Duration::from_millis(10);
const LINE: &str = "exitbench: ";

#[derive(Args)]
pub struct ExitsArgs {
    /// How splitvisor virtualizes memory: npt (nested paging, on
    /// `EPYC,+svm,+npt`) or shadow (on `EPYC,+svm`; QEMU's TCG ignores
    /// the task-switch intercept, so the stub is told `unsafe_shadow`).
    #[arg(long, value_name = "MODE", default_value = "npt",
          value_parser = clap::builder::PossibleValuesParser::new(["npt", "shadow"]))]
    mmu: String,
    /// Iterations of each kind's loop.
    #[arg(long, value_name = "N", default_value_t = 10000,
          value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    count: u32,
    /// The kinds to measure, comma-separated or repeated: io (OUT to port
    /// 0x80), cpuid, msr (RDMSR of MTRRcap), hlt (local APIC timer
    /// one-shot, then HLT until it fires), mmio (a read of the local
    /// APIC's version register), pf (a PTE write, INVLPG and a read
    /// through the page: shadow #PFs). Default: all, but pf only with
    /// --mmu shadow (it makes no exit under nested paging).
    #[arg(long, value_name = "KIND", value_delimiter = ',',
          value_parser = clap::builder::PossibleValuesParser::new(KINDS))]
    kind: Vec<String>,
    /// Boot every kind this many times each way, alternated, and report
    /// the median wall time.
    #[arg(long, value_name = "R", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=50))]
    rounds: u32,
    /// Kill a boot after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 600,
          value_parser = clap::value_parser!(u64).range(1..))]
    timeout: u64,
}

/// How the guest runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Way {
    Splitvisor,
    Plain,
}

/// One kind's loop as the guest's lines showed it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Loop {
    pub kind: String,
    pub n: u64,
    /// The guest's TSC over the loop (virtual time under -icount).
    pub tsc: u64,
    /// Between the arrival of its `begin` and `end` lines.
    pub wall: Duration,
}

/// Reads the guest's `begin`/`end` lines, with their arrival times, into
/// loops; a loop without both lines is left out.
pub(crate) fn loops(lines: &[(Duration, String)]) -> Vec<Loop> {
    let mut begun: Option<(String, Duration)> = None;
    let mut out = Vec::new();
    for (t, line) in lines {
        let Some(rest) = line.strip_prefix(LINE) else {
            continue;
        };
        if let Some(kind) = rest.strip_prefix("begin ") {
            begun = Some((kind.trim().to_string(), *t));
        } else if let Some(rest) = rest.strip_prefix("end ") {
            let mut words = rest.split_whitespace();
            let kind = words.next().unwrap_or_default();
            let kv = key_values(rest);
            let get = |k: &str| kv.iter().find(|(key, _)| key == k).map(|(_, v)| *v);
            if let (Some((bk, bt)), Some(n), Some(tsc)) = (&begun, get("n"), get("tsc")) {
                if bk == kind {
                    out.push(Loop {
                        kind: kind.to_string(),
                        n,
                        tsc,
                        wall: t.saturating_sub(*bt),
                    });
                }
            }
            begun = None;
        }
    }
    out
}

/// One boot of the guest.
#[derive(Debug, Default)]
pub(crate) struct Run {
    pub loops: Vec<Loop>,
    /// splitvisor's `[vmm] exits:` counters (none on plain QEMU).
    pub exits: Vec<(String, u64)>,
    /// The mmu-server's `[vmm] mmu:` figures (shadow paging).
    pub mmu: Vec<(String, u64)>,
    /// The guest's `end` lines, as printed.
    pub end_lines: Vec<String>,
    /// Characters of the guest's own lines, newlines included.
    pub guest_chars: u64,
    pub failure: Option<String>,
}

impl Run {
    fn the_loop(&self, kind: &str) -> Option<&Loop> {
        self.loops.iter().find(|l| l.kind == kind)
    }
    fn exit(&self, key: &str) -> u64 {
        self.exits
            .iter()
            .find(|(k, _)| k == key)
            .map_or(0, |(_, v)| *v)
    }
}

/// One way's cost of a kind, per iteration of its loop.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Cost {
    /// The loop's iterations.
    pub n: u64,
    pub us_per_op: f64,
    pub tsc_per_op: f64,
}

impl Cost {
    /// The smallest cost per op the lines' arrival times can tell.
    pub fn resolution_us(&self) -> f64 {
        RESOLUTION.as_secs_f64() * 1e6 / self.n.max(1) as f64
    }
}

/// The cost of `kind` in `run`, less the reference loop of `reference`.
pub(crate) fn cost(run: &Run, reference: &Run, kind: &str) -> Option<Cost> {
    let l = run.the_loop(kind)?;
    let r = reference.the_loop(REFERENCE)?;
    if l.n == 0 {
        return None;
    }
    let wall = l.wall.saturating_sub(r.wall).as_secs_f64();
    let tsc = l.tsc.saturating_sub(r.tsc) as f64;
    Some(Cost {
        n: l.n,
        us_per_op: wall * 1e6 / l.n as f64,
        tsc_per_op: tsc / l.n as f64,
    })
}

/// A kind's row.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Row {
    pub kind: String,
    pub n: u64,
    /// Exits by reason of the kind's boot less the reference boot's, then
    /// "total".
    pub exits: Vec<(String, i64)>,
    /// The servers' syscalls (IPC) in the kind's boot less the reference's.
    pub syscalls: Option<i64>,
    pub split: Option<Cost>,
    pub plain: Option<Cost>,
}

impl Row {
    pub fn total_exits(&self) -> i64 {
        self.exits
            .iter()
            .find(|(k, _)| k == "total")
            .map_or(0, |(_, v)| *v)
    }
    fn exits_per_op(&self) -> Option<f64> {
        (self.n > 0 && !self.exits.is_empty()).then(|| self.total_exits() as f64 / self.n as f64)
    }
}

/// The median cost over rounds, each a boot and its reference boot.
pub(crate) fn median_cost(pairs: &[(&Run, &Run)], kind: &str) -> Option<Cost> {
    let costs: Vec<Cost> = pairs
        .iter()
        .filter_map(|(run, reference)| cost(run, reference, kind))
        .collect();
    // A failed round leaves no figure rather than a skewed one.
    if costs.is_empty() || costs.len() < pairs.len() {
        return None;
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[(v.len() - 1) / 2]
    };
    Some(Cost {
        n: costs[0].n,
        us_per_op: median(costs.iter().map(|c| c.us_per_op).collect()),
        tsc_per_op: median(costs.iter().map(|c| c.tsc_per_op).collect()),
    })
}

/// The row of `kind` from its boots and the reference boots of each way,
/// one pair per round; the exits come from the first round.
pub(crate) fn row(kind: &str, n: u64, splits: &[(&Run, &Run)], plains: &[(&Run, &Run)]) -> Row {
    let empty = Run::default();
    let (split, split_ref) = splits.first().copied().unwrap_or((&empty, &empty));
    // Each character the guest prints costs two port exits (LSR, THR): the
    // kind's lines are not as long as the reference's.
    let uart = 2 * (split.guest_chars.cast_signed() - split_ref.guest_chars.cast_signed());
    let mut exits: Vec<(String, i64)> = REASONS
        .iter()
        .chain(["total"].iter())
        .map(|r| {
            let d = split.exit(r).cast_signed() - split_ref.exit(r).cast_signed();
            let d = if matches!(*r, "ioio" | "total") {
                d - uart
            } else {
                d
            };
            (r.to_string(), d)
        })
        .collect();
    // Without counters there is nothing to subtract.
    if split.exits.is_empty() {
        exits.clear();
    }
    let syscalls = (!split.exits.is_empty())
        .then(|| split.exit("syscalls").cast_signed() - split_ref.exit("syscalls").cast_signed());
    Row {
        kind: kind.to_string(),
        n,
        exits,
        syscalls,
        split: median_cost(splits, kind),
        plain: median_cost(plains, kind),
    }
}

/// The main table and the exits-by-reason table.
pub(crate) fn table(rows: &[Row]) -> String {
    let mut s = String::new();
    let f = |v: Option<f64>, prec: usize| v.map_or("-".to_string(), |v| format!("{v:.prec$}"));
    let _ = writeln!(
        s,
        "{:<6} {:>8} {:>9} {:>8} {:>10} {:>11} {:>8} {:>10} {:>11} {:>10} {:>10} {:>10}",
        "kind",
        "ops",
        "plain ops",
        "exits/op",
        "sv us/op",
        "plain us/op",
        "sv/plain",
        "sv ops/s",
        "plain ops/s",
        "sv us/exit",
        "sv tsc/op",
        "plain tsc"
    );
    for r in rows {
        let sv = r.split.map(|c| c.us_per_op);
        // A loop less than RESOLUTION longer than the reference's says only
        // that an op costs less than RESOLUTION / n.
        let bound = |c: Cost| (c.us_per_op < c.resolution_us()).then(|| c.resolution_us());
        let pl_bound = r.plain.and_then(bound);
        let pl = r.plain.map(|c| c.us_per_op);
        let per_exit = match (sv, r.exits_per_op()) {
            (Some(us), Some(e)) if e > 0.0 => Some(us / e),
            _ => None,
        };
        let (pl_us, pl_per_s, ratio) = match (sv, pl, pl_bound) {
            (_, None, _) => ("-".to_string(), "-".to_string(), "-".to_string()),
            (sv, _, Some(b)) => (
                format!("<{b:.4}"),
                format!(">{:.0}", 1e6 / b),
                sv.map_or("-".to_string(), |a| format!(">{:.0}x", a / b)),
            ),
            (sv, Some(p), None) => (
                format!("{p:.4}"),
                format!("{:.0}", 1e6 / p),
                sv.map_or("-".to_string(), |a| format!("{:.0}x", a / p)),
            ),
        };
        let _ = writeln!(
            s,
            "{:<6} {:>8} {:>9} {:>8} {:>10} {:>11} {:>8} {:>10} {:>11} {:>10} {:>10} {:>10}",
            r.kind,
            r.n,
            r.plain.map_or("-".to_string(), |c| c.n.to_string()),
            f(r.exits_per_op(), 2),
            f(sv, 2),
            pl_us,
            ratio,
            f(sv.filter(|&u| u > 0.0).map(|u| 1e6 / u), 0),
            pl_per_s,
            f(per_exit, 2),
            f(r.split.map(|c| c.tsc_per_op), 0),
            f(r.plain.map(|c| c.tsc_per_op), 0),
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "Exits by reason under splitvisor (the kind's boot less the reference boot's \
         `[vmm] exits:`, and less two port exits per character the guest printed beyond the \
         reference's), and the servers' syscalls per exit:"
    );
    let _ = write!(s, "{:<6} {:>8}", "kind", "total");
    for r in REASONS {
        let _ = write!(s, " {r:>9}");
    }
    let _ = writeln!(s, " {:>13}", "syscalls/exit");
    for r in rows {
        let get = |k: &str| {
            r.exits
                .iter()
                .find(|(key, _)| key == k)
                .map_or("-".to_string(), |(_, v)| v.to_string())
        };
        let _ = write!(s, "{:<6} {:>8}", r.kind, get("total"));
        for reason in REASONS {
            let _ = write!(s, " {:>9}", get(reason));
        }
        let per_exit = match (r.syscalls, r.total_exits()) {
            (Some(sys), e) if e > 0 => format!("{:.2}", sys as f64 / e as f64),
            _ => "-".to_string(),
        };
        let _ = writeln!(s, " {per_exit:>13}");
    }
    s
}

/// The mmu-server's figures shown under shadow paging.
const MMU_FIGURES: [&str; 7] = [
    "faults",
    "wp_faults",
    "emulated",
    "unprotects",
    "misses",
    "installs",
    "batches",
];

/// The mmu-server's figures of each kind's boot less the reference boot's.
pub(crate) fn mmu_table(runs: &[(&str, &Run)], reference: &Run) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "The mmu-server's figures under splitvisor (`[vmm] mmu:`, the kind's boot less the \
         reference boot's):"
    );
    let _ = write!(s, "{:<6}", "kind");
    for k in MMU_FIGURES {
        let _ = write!(s, " {k:>10}");
    }
    let _ = writeln!(s);
    let get = |r: &Run, k: &str| r.mmu.iter().find(|(key, _)| key == k).map(|(_, v)| *v);
    for (kind, r) in runs {
        let _ = write!(s, "{kind:<6}");
        for k in MMU_FIGURES {
            let cell = match (get(r, k), get(reference, k)) {
                (Some(a), Some(b)) => (a.cast_signed() - b.cast_signed()).to_string(),
                _ => "-".to_string(),
            };
            let _ = write!(s, " {cell:>10}");
        }
        let _ = writeln!(s);
    }
    s
}

/// Runs `splitvisor bench exits`; returns the exit status.
pub fn bench_exits(a: &ExitsArgs) -> i32 {
    let Some(qemu) = find_program(DEFAULT_EMULATOR) else {
        eprintln!("splitvisor: {}", emulator_missing(DEFAULT_EMULATOR));
        return 1;
    };
    let qemu = qemu.to_string_lossy().into_owned();
    let shadow = a.mmu == "shadow";
    let kinds: Vec<&str> = if a.kind.is_empty() {
        KINDS
            .iter()
            .copied()
            .filter(|k| shadow || *k != "pf")
            .collect()
    } else {
        KINDS
            .iter()
            .copied()
            .filter(|k| a.kind.iter().any(|x| x == k))
            .collect()
    };
    let timeout = Duration::from_secs(a.timeout);
    let n = u64::from(a.count);
    let plain_elf =
        match images::guests::build_guest(&images::workspace_root(), GUEST, &plain_dir()) {
            Ok(g) => g.elf_path,
            Err(e) => {
                eprintln!("splitvisor: bench exits: could not build {GUEST}: {e}");
                return 1;
            }
        };
    let bench = Bench {
        qemu: &qemu,
        shadow,
        timeout,
        plain_elf: &plain_elf,
    };
    // Plain QEMU's count per kind, found in the first round.
    let mut plain_counts: Vec<u64> = Vec::new();
    let mut rounds: Vec<Round> = Vec::new();
    for round in 0..a.rounds {
        if a.rounds > 1 {
            eprintln!(
                "splitvisor: bench exits: round {} of {}",
                round + 1,
                a.rounds
            );
        }
        let split_ref = bench.boot(Way::Splitvisor, REFERENCE, n);
        let mut plain_refs: Vec<(u64, Run)> = vec![(n, bench.boot(Way::Plain, REFERENCE, n))];
        let mut runs: Vec<(&str, Run, Run)> = Vec::new();
        for (i, kind) in kinds.iter().enumerate() {
            let split = bench.boot(Way::Splitvisor, kind, n);
            let plain = if let Some(&pn) = plain_counts.get(i) {
                bench.boot(Way::Plain, kind, pn)
            } else {
                // An exit on plain QEMU may be a few instructions: raise its
                // count tenfold until the loop takes long enough to time by
                // the lines.
                let mut pn = n;
                let plain = loop {
                    let plain = bench.boot(Way::Plain, kind, pn);
                    let long_enough = plain
                        .the_loop(kind)
                        .is_none_or(|l| l.wall >= PLAIN_LOOP_MIN);
                    if long_enough || plain.failure.is_some() || pn >= n * PLAIN_SCALE_MAX {
                        break plain;
                    }
                    pn *= 10;
                };
                plain_counts.push(pn);
                plain
            };
            let pn = plain_counts[i];
            if !plain_refs.iter().any(|(c, _)| *c == pn) {
                plain_refs.push((pn, bench.boot(Way::Plain, REFERENCE, pn)));
            }
            runs.push((kind, split, plain));
        }
        rounds.push(Round {
            split_ref,
            plain_refs,
            runs,
        });
    }
    let mut rows = Vec::new();
    for (i, kind) in kinds.iter().enumerate() {
        let pn = plain_counts.get(i).copied().unwrap_or(n);
        let splits: Vec<(&Run, &Run)> = rounds
            .iter()
            .map(|r| (&r.runs[i].1, &r.split_ref))
            .collect();
        let plains: Vec<(&Run, &Run)> = rounds
            .iter()
            .map(|r| (&r.runs[i].2, r.plain_ref(pn)))
            .collect();
        rows.push(row(kind, n, &splits, &plains));
    }

    let (mmu, cpu) = bench.split_cpu();
    println!(
        "Exits, {n} per kind: splitvisor (--mmu {mmu}, -cpu {cpu}) against plain QEMU (-cpu EPYC), \
         both TCG with -icount {}; wall time per op (one iteration of the kind's loop) from the \
         arrival of the guest's begin/end lines, less the reference loop's; tsc: the guest's own \
         TSC per op (virtual time: 4 ns per instruction)",
        splitvisor::run::QEMU_ICOUNT
    );
    if a.rounds > 1 {
        println!(
            "Wall times: the median of {} rounds, alternated (splitvisor, plain QEMU, ...)",
            a.rounds
        );
    }
    print!("{}", table(&rows));
    if shadow {
        let first: Vec<(&str, &Run)> = kinds
            .iter()
            .zip(&rounds[0].runs)
            .map(|(k, (_, split, _))| (*k, split))
            .collect();
        print!("{}", mmu_table(&first, &rounds[0].split_ref));
    }
    // The first round's lines and failures of every round.
    let Round {
        split_ref,
        plain_refs,
        runs,
    } = &rounds[0];
    println!("The guest's own lines (splitvisor | plain QEMU), first round:");
    let reference = (REFERENCE, split_ref, &Run::default());
    let first = runs.iter().map(|(k, s, p)| (*k, s, p));
    for (_, split, plain) in std::iter::once(reference).chain(first) {
        for (i, l) in split.end_lines.iter().enumerate() {
            println!(
                "  {l} | {}",
                plain.end_lines.get(i).map_or("-", String::as_str)
            );
        }
    }
    for (pn, r) in plain_refs {
        for l in &r.end_lines {
            println!("  (plain QEMU's reference, n={pn}) {l}");
        }
    }
    let mut ok = true;
    for round in &rounds {
        let refs = std::iter::once((REFERENCE, &round.split_ref, "splitvisor")).chain(
            round
                .plain_refs
                .iter()
                .map(|(_, r)| (REFERENCE, r, "plain QEMU")),
        );
        let kinds = round
            .runs
            .iter()
            .flat_map(|(k, s, p)| [(*k, s, "splitvisor"), (*k, p, "plain QEMU")]);
        for (kind, r, way) in refs.chain(kinds) {
            if let Some(why) = &r.failure {
                ok = false;
                println!("{kind} ({way}): FAILED: {why}");
            }
        }
    }
    if ok {
        0
    } else {
        1
    }
}

/// One round: the reference boots and one boot of each kind each way.
struct Round<'k> {
    split_ref: Run,
    /// Plain QEMU's reference boots, by count.
    plain_refs: Vec<(u64, Run)>,
    runs: Vec<(&'k str, Run, Run)>,
}

impl Round<'_> {
    fn plain_ref(&self, n: u64) -> &Run {
        &self
            .plain_refs
            .iter()
            .find(|(c, _)| *c == n)
            .expect("a reference boot for every count")
            .1
    }
}

fn plain_dir() -> std::path::PathBuf {
    images::image_dir().join("plain")
}

struct Bench<'a> {
    qemu: &'a str,
    shadow: bool,
    timeout: Duration,
    plain_elf: &'a std::path::Path,
}

impl Bench<'_> {
    fn split_cpu(&self) -> (&'static str, &'static str) {
        if self.shadow {
            ("shadow", "EPYC,+svm")
        } else {
            ("npt", "EPYC,+svm,+npt")
        }
    }

    /// One boot running `kind` `n` times.
    fn boot(&self, way: Way, kind: &str, n: u64) -> Run {
        let cmdline = format!("kind={kind} n={n}");
        let mut run = Run::default();
        let (mmu, cpu) = self.split_cpu();
        let args: Vec<OsString> = match way {
            Way::Plain => {
                let mut args = qemu_machine_args("EPYC", 256, splitvisor::run::Accel::Tcg);
                args.extend(["-kernel".into(), self.plain_elf.as_os_str().to_owned()]);
                args.extend(["-append".into(), cmdline.clone().into()]);
                args
            }
            Way::Splitvisor => {
                let system = images::SystemSpec {
                    mmu: if self.shadow {
                        SystemMmu::Shadow
                    } else {
                        SystemMmu::Nested
                    },
                    cmdline: cmdline.clone(),
                    ..images::SystemSpec::new(GUEST)
                };
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
                    emulator: self.qemu.to_string(),
                    timeout: self.timeout,
                    memory_mib: 256,
                    // QEMU's TCG ignores the task-switch intercept; the guest is ours.
                    unsafe_shadow: self.shadow,
                };
                qemu_args(&opts, &image)
            }
        };
        let name = match way {
            Way::Plain => "plain QEMU".to_string(),
            Way::Splitvisor => format!("splitvisor {mmu}"),
        };
        eprintln!("splitvisor: bench exits: {name}: {cmdline}");
        let start = Instant::now();
        let console = TimedConsole {
            start,
            inner: Arc::default(),
        };
        let report = run_emulator(self.qemu, &args, self.timeout, Box::new(console.clone()));
        let wall = start.elapsed();
        let text = {
            let g = console.inner.lock().unwrap();
            run.loops = loops(&g.lines);
            for (_, line) in &g.lines {
                if let Some(rest) = line.strip_prefix("[vmm] exits: ") {
                    run.exits = key_values(rest);
                } else if let Some(rest) = line.strip_prefix("[vmm] mmu: ") {
                    run.mmu = key_values(rest);
                } else if line.starts_with("exitbench: end ") {
                    run.end_lines.push(line.clone());
                }
                if line.starts_with(LINE) {
                    run.guest_chars += line.len() as u64 + 1;
                }
            }
            String::from_utf8_lossy(&g.bytes).into_owned()
        };
        let report = match report {
            Ok(r) => r,
            Err(e) => {
                run.failure = Some(e.to_string());
                return run;
            }
        };
        // Plain QEMU exits with (0 << 1) | 1 through isa-debug-exit;
        // splitvisor with the stub's final line.
        let ended = match way {
            Way::Plain => report.status.and_then(|s| s.code()) == Some(1),
            Way::Splitvisor => report.final_line == Some(FinalLine::Stopped(0)),
        };
        let done = text.lines().any(|l| l == "exitbench: done");
        if !ended || !done || report.timed_out || run.the_loop(kind).is_none() {
            let last: Vec<&str> = text.lines().rev().take(12).collect();
            let last: Vec<&str> = last.into_iter().rev().collect();
            let why = if report.timed_out {
                format!("timed out after {} s", self.timeout.as_secs())
            } else {
                format!(
                    "ended with {:?} (QEMU status {:?})",
                    report.final_line, report.status
                )
            };
            run.failure = Some(format!(
                "{why}; the console ends with:\n  {}",
                last.join("\n  ")
            ));
        }
        eprintln!(
            "splitvisor: bench exits: {name}: {kind}: boot {:.2} s, loop {}",
            wall.as_secs_f64(),
            run.the_loop(kind).map_or("-".to_string(), |l| format!(
                "{:.3} s",
                l.wall.as_secs_f64()
            ))
        );
        run
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn loops_pair_begin_and_end_lines() {
        let lines: Vec<(Duration, String)> = [
            (0, "[stub] svm: nested paging"),
            (10, "exitbench: begin none"),
            (12, "exitbench: end none n=100 tsc=836"),
            (20, "exitbench: begin io"),
            (520, "exitbench: end io n=100 tsc=2400036"),
            (530, "exitbench: begin cpuid"), // no end: left out
            (600, "exitbench: done"),
        ]
        .iter()
        .map(|(t, l)| (ms(*t), l.to_string()))
        .collect();
        let l = loops(&lines);
        assert_eq!(
            l,
            vec![
                Loop {
                    kind: "none".into(),
                    n: 100,
                    tsc: 836,
                    wall: ms(2)
                },
                Loop {
                    kind: "io".into(),
                    n: 100,
                    tsc: 2400036,
                    wall: ms(500)
                },
            ]
        );
    }

    fn run(kind: &str, wall: u64, tsc: u64, exits: &str) -> Run {
        Run {
            loops: vec![Loop {
                kind: kind.into(),
                n: 100,
                tsc,
                wall: ms(wall),
            }],
            exits: key_values(exits),
            ..Run::default()
        }
    }

    #[test]
    fn rows_subtract_the_reference() {
        let sr = run(
            "none",
            2,
            36,
            "total=500 ioio=400 cpuid=0 hlt=1 syscalls=2500",
        );
        let mut s = run(
            "cpuid",
            7,
            2_000_036,
            "total=604 ioio=404 cpuid=100 hlt=1 syscalls=3000",
        );
        // Two characters more in the guest's lines: four port exits.
        s.guest_chars = 2;
        let pr = run("none", 1, 36, "");
        let p = run("cpuid", 1, 4036, "");
        let r = row("cpuid", 100, &[(&s, &sr)], &[(&p, &pr)]);
        assert_eq!(r.total_exits(), 100);
        assert_eq!(r.exits_per_op(), Some(1.0));
        let c = r.split.unwrap();
        assert!((c.us_per_op - 50.0).abs() < 1e-9, "{c:?}");
        assert!((c.tsc_per_op - 20000.0).abs() < 1e-9);
        let p = r.plain.unwrap();
        assert_eq!(p.us_per_op, 0.0);
        assert!((p.tsc_per_op - 40.0).abs() < 1e-9);
        let t = table(&[r]);
        let line = t.lines().find(|l| l.starts_with("cpuid ")).unwrap();
        let cells: Vec<&str> = line.split_whitespace().collect();
        // kind, ops, plain ops, exits/op, sv us/op, plain us, ratio (none: plain 0)
        // (plain QEMU's loop is no longer than the reference's: a bound)
        assert_eq!(
            &cells[..9],
            [
                "cpuid",
                "100",
                "100",
                "1.00",
                "50.00",
                "<100.0000",
                ">0x",
                "20000",
                ">10000"
            ]
        );
        assert!(t.contains("Exits by reason"));
        let by_reason = t
            .lines()
            .filter(|l| l.starts_with("cpuid "))
            .nth(1)
            .unwrap();
        let cells: Vec<&str> = by_reason.split_whitespace().collect();
        // kind, total, ioio, cpuid, ...
        assert_eq!(&cells[..4], ["cpuid", "100", "0", "100"]);
        assert_eq!(cells.last(), Some(&"5.00"), "{by_reason}");
    }

    #[test]
    fn a_failed_boot_gives_dashes() {
        let empty = Run::default();
        let r = row("io", 100, &[(&empty, &empty)], &[(&empty, &empty)]);
        assert!(r.split.is_none() && r.plain.is_none() && r.exits.is_empty());
        let t = table(&[r]);
        let line = t.lines().find(|l| l.starts_with("io ")).unwrap();
        assert!(line.split_whitespace().skip(2).all(|c| c == "-"), "{line}");
        let plain = run("io", 50, 4036, "");
        let plain_ref = run("none", 10, 36, "");
        let r = row("io", 100, &[(&empty, &empty)], &[(&plain, &plain_ref)]);
        assert_eq!(r.plain.map(|c| c.us_per_op), Some(400.0));
        let t = table(&[r]);
        let line = t.lines().find(|l| l.starts_with("io ")).unwrap();
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cells[5], "400.0000", "{line}");
        // A failed round among good ones: no figure.
        let r = row("io", 100, &[], &[(&plain, &plain_ref), (&empty, &empty)]);
        assert!(r.plain.is_none() && r.split.is_none());
    }

    #[test]
    fn mmu_figures_less_the_reference() {
        let reference = Run {
            mmu: key_values("faults=8 wp_faults=0 misses=8 installs=40 batches=8"),
            ..Run::default()
        };
        let pf = Run {
            mmu: key_values("faults=208 wp_faults=100 misses=108 installs=340 batches=208"),
            ..Run::default()
        };
        let t = mmu_table(&[("pf", &pf)], &reference);
        let line = t.lines().find(|l| l.starts_with("pf ")).unwrap();
        let cells: Vec<&str> = line.split_whitespace().collect();
        // faults, wp_faults, emulated (absent), unprotects (absent), misses
        assert_eq!(&cells[1..6], ["200", "100", "-", "-", "100"]);
    }

    #[test]
    fn the_median_of_rounds() {
        let reference = run("none", 10, 36, "");
        let slow = run("io", 110, 4036, "");
        let fast = run("io", 20, 4036, "");
        let mid = run("io", 50, 4036, "");
        let pairs = [(&slow, &reference), (&fast, &reference), (&mid, &reference)];
        let c = median_cost(&pairs, "io").unwrap();
        assert_eq!(c.us_per_op, 400.0);
        assert_eq!(c.tsc_per_op, 40.0);
    }
}
