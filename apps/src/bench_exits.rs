//! `splitvisor bench exits`: what one exit costs, three ways in one run:
//! through the ring-3 servers as shipped; through a stub built with
//! `bench-inline-exits`, whose handler answers the guest's exits in ring 0
//! (`kernel-stub/src/bench_inline.rs`: the lower bound of this design);
//! and the same guest on plain QEMU TCG (where its exits are not exits at
//! all). The guest is `images/guests/exitbench.S`: N iterations of one
//! kind of exit between a `begin` and an `end` line.
//!
//! Each kind runs in a boot of its own (`kind=K n=N` on the multiboot
//! command line), so that the exit counters of that boot, less those of a
//! reference boot of the same way (`kind=none`: the same lines around an
//! empty loop), are the exits the kind made. The loop's wall time is the
//! time between the arrival of its `begin` and `end` lines on the host,
//! less the reference loop's (which is the cost of printing the `end`
//! line). Boot time is outside the two lines and does not count. The
//! guest's own printing costs two port exits a character, taken out of
//! the counts. Plain QEMU's count is raised tenfold until its loop is long
//! enough to time; `--rounds` alternates the boots and takes the median.
//! Under shadow paging the mmu-server's figures per kind are shown too.
//!
//! With `--emulator bochs` the three ways run on Bochs with VMX, from GRUB
//! ISOs (plain Bochs boots the guest's ELF).
//!
//! With `--parts`, each kind also boots on stubs built with
//! `bench-exit-parts` (ring-3 and in-stub), which sum the TSC ticks spent
//! in the guest, in the stub after an exit, in ring 3 and in the stub
//! after a system call (`kernel-stub/src/bench_parts.rs`): under
//! `-icount` the instructions per part of the exit path ([`parts_table`]).
//!
//! The tables go to stdout, progress to stderr.

use std::cell::Cell;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use ipc_proto::manifest::MmuMode as SystemMmu;
use splitvisor::run::emulator_missing_message as emulator_missing;
use splitvisor::run::{
    find_program, qemu_args, qemu_machine_args, run_command, Console, EmulatorKind, FinalLine,
    RunOptions,
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
/// The vmm-server's handling time that the guest's TSC leaves out, on
/// its `[vmm] exits:` line.
const HANDLING_TICKS: &str = "handling_ticks";
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
    /// Plain QEMU's count for every kind. Default: N, raised tenfold (up
    /// to 1000 N) until the loop takes 100 ms, in the first round.
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1_000_000_000))]
    plain_count: Option<u32>,
    /// The emulator: QEMU (TCG, emulated SVM) by default; a program whose
    /// name starts with `bochs` boots GRUB ISOs in Bochs with VMX
    /// (corei7_skylake_x; --mmu npt then means EPT), plain Bochs too.
    #[arg(long, value_name = "PROGRAM", default_value = DEFAULT_EMULATOR)]
    emulator: String,
    /// Also boot each kind on stubs that sum the ticks spent per part of
    /// the exit path (guest, stub after the exit, ring 3, stub after the
    /// system call, idle): the instructions per part under -icount.
    #[arg(long)]
    parts: bool,
    /// Kill a boot after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 600,
          value_parser = clap::value_parser!(u64).range(1..))]
    timeout: u64,
}

/// How the guest runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Way {
    /// Through the ring-3 servers, as shipped.
    Splitvisor,
    /// On the stub built with `bench-inline-exits`.
    InStub,
    /// On plain QEMU, no splitvisor.
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
    /// The stub's `[stub] parts:` ticks per place (`--parts` stubs only).
    pub parts: Vec<(String, u64)>,
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
/// The TSC's is the guest's plus the vmm-server's handling time, which
/// the guest's TSC leaves out (its `handling_ticks`, the kind's boot less
/// the reference's): the host's TSC over the loop.
pub(crate) fn cost(run: &Run, reference: &Run, kind: &str) -> Option<Cost> {
    let l = run.the_loop(kind)?;
    let r = reference.the_loop(REFERENCE)?;
    if l.n == 0 {
        return None;
    }
    let wall = l.wall.saturating_sub(r.wall).as_secs_f64();
    let hidden = run
        .exit(HANDLING_TICKS)
        .saturating_sub(reference.exit(HANDLING_TICKS));
    let tsc = (l.tsc.saturating_sub(r.tsc) + hidden) as f64;
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
    /// "total" (through the servers).
    pub exits: Vec<(String, i64)>,
    /// The servers' syscalls (IPC) in the kind's boot less the reference's.
    pub syscalls: Option<i64>,
    /// The exits of the in-stub way's boot less its reference's.
    pub stub_exits: Option<i64>,
    /// The servers' syscalls in the in-stub way's boot less its reference's.
    pub stub_syscalls: Option<i64>,
    pub split: Option<Cost>,
    pub stub: Option<Cost>,
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
    fn stub_exits_per_op(&self) -> Option<f64> {
        self.stub_exits
            .filter(|_| self.n > 0)
            .map(|e| e as f64 / self.n as f64)
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

/// Exits by reason (then "total") of `run` less `reference`'s, less two
/// port exits per character the guest printed beyond the reference's (LSR
/// and THR: the kind's lines are not as long as the reference's); empty
/// without counters.
fn exits_less(run: &Run, reference: &Run) -> Vec<(String, i64)> {
    if run.exits.is_empty() {
        return Vec::new();
    }
    let uart = 2 * (run.guest_chars.cast_signed() - reference.guest_chars.cast_signed());
    REASONS
        .iter()
        .chain(["total"].iter())
        .map(|r| {
            let d = run.exit(r).cast_signed() - reference.exit(r).cast_signed();
            let d = if matches!(*r, "ioio" | "total") {
                d - uart
            } else {
                d
            };
            (r.to_string(), d)
        })
        .collect()
}

/// The boots of one way: one (kind's boot, reference boot) pair per round.
pub(crate) type Pairs<'a> = [(&'a Run, &'a Run)];

/// The row of `kind` from its boots and the reference boots of each way,
/// one pair per round; the exits come from the first round.
pub(crate) fn row(
    kind: &str,
    n: u64,
    splits: &Pairs<'_>,
    stubs: &Pairs<'_>,
    plains: &Pairs<'_>,
) -> Row {
    let empty = Run::default();
    fn first<'a>(pairs: &Pairs<'a>, empty: &'a Run) -> (&'a Run, &'a Run) {
        pairs.first().copied().unwrap_or((empty, empty))
    }
    let (split, split_ref) = first(splits, &empty);
    let exits = exits_less(split, split_ref);
    let syscalls_less = |run: &Run, reference: &Run| {
        (!run.exits.is_empty())
            .then(|| run.exit("syscalls").cast_signed() - reference.exit("syscalls").cast_signed())
    };
    let syscalls = syscalls_less(split, split_ref);
    let (stub, stub_ref) = first(stubs, &empty);
    let stub_exits = exits_less(stub, stub_ref)
        .into_iter()
        .find(|(k, _)| k == "total")
        .map(|(_, v)| v);
    let stub_syscalls = syscalls_less(stub, stub_ref);
    Row {
        kind: kind.to_string(),
        n,
        exits,
        syscalls,
        stub_exits,
        stub_syscalls,
        split: median_cost(splits, kind),
        stub: median_cost(stubs, kind),
        plain: median_cost(plains, kind),
    }
}

/// A way's wall time per op as shown: the figure, or `<bound` when the
/// loop was less than [`RESOLUTION`] longer than the reference's. Returns
/// (the figure used for rates and ratios, whether it is an upper bound).
fn shown(c: Option<Cost>) -> Option<(f64, bool)> {
    let c = c?;
    if c.us_per_op < c.resolution_us() {
        Some((c.resolution_us(), true))
    } else {
        Some((c.us_per_op, false))
    }
}

/// The main table (wall time and ratios), the rates and instructions
/// table, and the exits-by-reason table. `tsc_per_ins`: the guest's TSC
/// ticks per instruction (4 under QEMU's -icount shift 2, 1 in Bochs).
pub(crate) fn table(rows: &[Row], tsc_per_ins: f64) -> String {
    let mut s = String::new();
    let f = |v: Option<f64>, prec: usize| v.map_or("-".to_string(), |v| format!("{v:.prec$}"));
    let us = |v: Option<(f64, bool)>| match v {
        None => "-".to_string(),
        Some((u, true)) => format!("<{u:.4}"),
        Some((u, false)) => format!("{u:.4}"),
    };
    // a / b, a bound when b is one (a smaller b: a larger ratio).
    let ratio = |a: Option<(f64, bool)>, b: Option<(f64, bool)>| match (a, b) {
        (Some((a, false)), Some((b, bound))) if b > 0.0 => {
            format!("{}{:.1}x", if bound { ">" } else { "" }, a / b)
        }
        _ => "-".to_string(),
    };
    let per_s = |v: Option<(f64, bool)>, per_op: Option<f64>| match (v, per_op) {
        (Some((u, bound)), Some(e)) if u > 0.0 => {
            format!("{}{:.0}", if bound { ">" } else { "" }, e * 1e6 / u)
        }
        _ => "-".to_string(),
    };
    let _ = writeln!(
        s,
        "Wall time per op (one iteration of the kind's loop), microseconds:"
    );
    let _ = writeln!(
        s,
        "{:<6} {:>8} {:>9} {:>9} {:>9} {:>11} {:>11} {:>11} {:>10} {:>11}",
        "kind",
        "ops",
        "plain ops",
        "exits/op",
        "stub e/op",
        "ring-3 us",
        "in-stub us",
        "plain us",
        "r3/stub",
        "r3/plain"
    );
    for r in rows {
        let (sv, st, pl) = (shown(r.split), shown(r.stub), shown(r.plain));
        let _ = writeln!(
            s,
            "{:<6} {:>8} {:>9} {:>9} {:>9} {:>11} {:>11} {:>11} {:>10} {:>11}",
            r.kind,
            r.n,
            r.plain.map_or("-".to_string(), |c| c.n.to_string()),
            f(r.exits_per_op(), 2),
            f(r.stub_exits_per_op(), 2),
            us(sv),
            us(st),
            us(pl),
            ratio(sv, st),
            ratio(sv, pl),
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "Exits per second (plain: ops per second, its ops are no exits) and the \
         instructions per op of the emulated machine (from the guest's TSC per op plus the \
         vmm-server's handling time, which the guest's TSC leaves out: 4 ticks an instruction \
         under QEMU's -icount, 1 in Bochs; guest, stub and servers together):"
    );
    let _ = writeln!(
        s,
        "{:<6} {:>12} {:>12} {:>12} {:>11} {:>11} {:>11}",
        "kind", "ring-3 e/s", "in-stub e/s", "plain op/s", "ring-3 ins", "in-stub ins", "plain ins"
    );
    for r in rows {
        let ins = |c: Option<Cost>| f(c.map(|c| c.tsc_per_op / tsc_per_ins), 0);
        let _ = writeln!(
            s,
            "{:<6} {:>12} {:>12} {:>12} {:>11} {:>11} {:>11}",
            r.kind,
            per_s(shown(r.split), r.exits_per_op()),
            per_s(shown(r.stub), r.stub_exits_per_op()),
            per_s(shown(r.plain), Some(1.0)),
            ins(r.split),
            ins(r.stub),
            ins(r.plain),
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "Exits by reason through the ring-3 servers (the kind's boot less the reference boot's \
         `[vmm] exits:`, and less two port exits per character the guest printed beyond the \
         reference's), and the servers' syscalls per exit, through the ring-3 servers and with \
         the in-stub handler:"
    );
    let _ = write!(s, "{:<6} {:>8}", "kind", "total");
    for r in REASONS {
        let _ = write!(s, " {r:>9}");
    }
    let _ = writeln!(s, " {:>13} {:>13}", "syscalls/exit", "in-stub sys/e");
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
        let per_exit = |sys: Option<i64>, e: Option<i64>| match (sys, e) {
            // (no "-0.00" for a few syscalls fewer than the reference's)
            (Some(sys), Some(e)) if e > 0 => format!("{:.2}", (sys as f64 / e as f64).max(0.0)),
            _ => "-".to_string(),
        };
        let _ = writeln!(
            s,
            " {:>13} {:>13}",
            per_exit(r.syscalls, Some(r.total_exits())),
            per_exit(r.stub_syscalls, r.stub_exits)
        );
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

/// The places of a `--parts` stub's `[stub] parts:` line, in its order.
const PLACES: [&str; 5] = ["guest", "exit", "server", "call", "idle"];

/// The figures of a `[stub] parts: ...` line (`[stub] vmN: parts: ...`
/// with several VMs).
fn stub_parts_line(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("[stub] ")?;
    rest.strip_prefix("parts: ")
        .or_else(|| rest.split_once(": parts: ").map(|(_, r)| r))
}

/// The `--parts` table: for each kind and way (`name`, its kind's boot
/// and reference boot), the instructions per op spent in each place (the
/// kind's ticks less the reference's, per op, per instruction), their sum,
/// and the loop's own instructions per op from the guest's TSC, which the
/// sum should match (the two boots print lines of different lengths).
pub(crate) fn parts_table(rows: &[(&str, &str, &Run, &Run)], n: u64, tsc_per_ins: f64) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Instructions per op by place (--parts: stubs built with bench-exit-parts sum the host's \
         TSC at each change of place; the kind's boot less the reference boot's). guest: VMRUN \
         to #VMEXIT; exit: the stub from the exit to ring 3 (or back to the guest); server: \
         ring 3; call: the stub from a system call (or IRQ) to ring 3 or VMRUN; idle: the stub \
         waiting for a timer or IRQ; loop ins: the stamped boot's own figure, as above:"
    );
    let _ = write!(s, "{:<6} {:<8}", "kind", "way");
    for p in PLACES {
        let _ = write!(s, " {p:>8}");
    }
    let _ = writeln!(s, " {:>8} {:>9}", "sum", "loop ins");
    for (kind, name, run, reference) in rows {
        let _ = write!(s, "{kind:<6} {name:<8}");
        let get = |r: &Run, k: &str| r.parts.iter().find(|(key, _)| key == k).map(|(_, v)| *v);
        let mut sum = Some(0.0);
        for p in PLACES {
            let v = match (get(run, p), get(reference, p)) {
                (Some(a), Some(b)) if n > 0 => Some((a as f64 - b as f64) / n as f64 / tsc_per_ins),
                _ => None,
            };
            sum = sum.zip(v).map(|(s, v)| s + v);
            let _ = write!(
                s,
                " {:>8}",
                v.map_or("-".to_string(), |v| format!("{v:.0}"))
            );
        }
        let ins = cost(run, reference, kind).map(|c| c.tsc_per_op / tsc_per_ins);
        let cell = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
        let _ = writeln!(s, " {:>8} {:>9}", cell(sum), cell(ins));
    }
    s
}

/// Runs `splitvisor bench exits`; returns the exit status.
pub fn bench_exits(a: &ExitsArgs) -> i32 {
    let Some(program) = find_program(&a.emulator) else {
        eprintln!("splitvisor: {}", emulator_missing(&a.emulator));
        return 1;
    };
    let program = program.to_string_lossy().into_owned();
    let bochs = EmulatorKind::of(&program) == EmulatorKind::Bochs;
    if let Some(missing) = Some(images::iso::missing_tools()).filter(|m| bochs && !m.is_empty()) {
        eprintln!(
            "splitvisor: {}",
            images::iso::IsoError::ToolsMissing(missing)
        );
        return 1;
    }
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
        program: &program,
        bochs,
        shadow,
        timeout,
        plain_elf: &plain_elf,
        // Three reference boots and three per kind, each round (plain
        // QEMU's count raised in the first round boots more).
        // With --parts, two more each in the first round.
        boots: Cell::new((
            0,
            (a.rounds as usize * 3 + if a.parts { 2 } else { 0 }) * (kinds.len() + 1),
        )),
    };
    // Plain QEMU's count per kind, found in the first round.
    let mut plain_counts: Vec<u64> = a
        .plain_count
        .map(|c| vec![u64::from(c); kinds.len()])
        .unwrap_or_default();
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
        let stub_ref = bench.boot(Way::InStub, REFERENCE, n);
        // The instructions are exact: the parts of the first round only.
        let with_parts = a.parts && round == 0;
        let parts_boots = |kind: &str| {
            with_parts.then(|| {
                (
                    bench.boot_with(Way::Splitvisor, kind, n, true),
                    bench.boot_with(Way::InStub, kind, n, true),
                )
            })
        };
        let parts_refs = parts_boots(REFERENCE);
        let mut plain_refs: Vec<(u64, Run)> = vec![(n, bench.boot(Way::Plain, REFERENCE, n))];
        let mut runs: Vec<KindRuns> = Vec::new();
        for (i, kind) in kinds.iter().enumerate() {
            let split = bench.boot(Way::Splitvisor, kind, n);
            let stub = bench.boot(Way::InStub, kind, n);
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
                    bench.plan_more();
                };
                plain_counts.push(pn);
                plain
            };
            let pn = plain_counts[i];
            if !plain_refs.iter().any(|(c, _)| *c == pn) {
                bench.plan_more();
                plain_refs.push((pn, bench.boot(Way::Plain, REFERENCE, pn)));
            }
            runs.push(KindRuns {
                kind,
                split,
                stub,
                plain,
                parts: parts_boots(kind),
            });
        }
        rounds.push(Round {
            split_ref,
            stub_ref,
            plain_refs,
            parts_refs,
            runs,
        });
    }
    let mut rows = Vec::new();
    for (i, kind) in kinds.iter().enumerate() {
        let pn = plain_counts.get(i).copied().unwrap_or(n);
        let splits: Vec<(&Run, &Run)> = rounds
            .iter()
            .map(|r| (&r.runs[i].split, &r.split_ref))
            .collect();
        let stubs: Vec<(&Run, &Run)> = rounds
            .iter()
            .map(|r| (&r.runs[i].stub, &r.stub_ref))
            .collect();
        let plains: Vec<(&Run, &Run)> = rounds
            .iter()
            .map(|r| (&r.runs[i].plain, r.plain_ref(pn)))
            .collect();
        rows.push(row(kind, n, &splits, &stubs, &plains));
    }

    let (mmu, cpu) = bench.split_cpu();
    println!(
        "Emulator: {}",
        splitvisor::run::emulator_version(&a.emulator)
    );
    println!(
        "Exits, {n} per kind: through splitvisor's ring-3 servers, through its stub built with \
         bench-inline-exits (the exits answered in ring 0; --mmu {mmu}, cpu {cpu}), and on plain \
         {}; wall time from the arrival of the guest's begin/end lines, less the reference loop's",
        if bochs {
            "Bochs (the same cpu), all Bochs from GRUB ISOs".to_string()
        } else {
            format!(
                "QEMU (-cpu EPYC), all TCG with -icount {}",
                splitvisor::run::QEMU_ICOUNT
            )
        }
    );
    if a.rounds > 1 {
        println!(
            "Wall times: the median of {} rounds, alternated (ring-3, in-stub, plain, ...)",
            a.rounds
        );
    }
    print!("{}", table(&rows, if bochs { 1.0 } else { 4.0 }));
    if shadow {
        let first: Vec<(&str, &Run)> = rounds[0].runs.iter().map(|k| (k.kind, &k.split)).collect();
        print!("{}", mmu_table(&first, &rounds[0].split_ref));
    }
    if let Some((split_ref, stub_ref)) = &rounds[0].parts_refs {
        let rows: Vec<(&str, &str, &Run, &Run)> = rounds[0]
            .runs
            .iter()
            .filter_map(|k| k.parts.as_ref().map(|p| (k.kind, p)))
            .flat_map(|(kind, (split, stub))| {
                [
                    (kind, Way::Splitvisor.name(bochs), split, split_ref),
                    (kind, Way::InStub.name(bochs), stub, stub_ref),
                ]
            })
            .collect();
        println!();
        print!("{}", parts_table(&rows, n, if bochs { 1.0 } else { 4.0 }));
    }
    // The first round's lines and failures of every round.
    let first = &rounds[0];
    println!(
        "The guest's own lines (ring-3 | in-stub | {}), first round:",
        Way::Plain.name(bochs)
    );
    let reference = (&first.split_ref, &first.stub_ref, &Run::default());
    let kinds_first = first.runs.iter().map(|k| (&k.split, &k.stub, &k.plain));
    for (split, stub, plain) in std::iter::once(reference).chain(kinds_first) {
        for (i, l) in split.end_lines.iter().enumerate() {
            let other = |r: &Run| r.end_lines.get(i).map_or("-".to_string(), String::clone);
            println!("  {l} | {} | {}", other(stub), other(plain));
        }
    }
    for (pn, r) in &first.plain_refs {
        for l in &r.end_lines {
            println!("  ({}'s reference, n={pn}) {l}", Way::Plain.name(bochs));
        }
    }
    let mut ok = true;
    for round in &rounds {
        let refs = [
            (REFERENCE, &round.split_ref, Way::Splitvisor),
            (REFERENCE, &round.stub_ref, Way::InStub),
        ]
        .into_iter()
        .chain(
            round
                .plain_refs
                .iter()
                .map(|(_, r)| (REFERENCE, r, Way::Plain)),
        );
        let kinds = round.runs.iter().flat_map(|k| {
            [
                (k.kind, &k.split, Way::Splitvisor),
                (k.kind, &k.stub, Way::InStub),
                (k.kind, &k.plain, Way::Plain),
            ]
        });
        let parts = round
            .parts_refs
            .iter()
            .map(|p| (REFERENCE, p))
            .chain(
                round
                    .runs
                    .iter()
                    .filter_map(|k| k.parts.as_ref().map(|p| (k.kind, p))),
            )
            .flat_map(|(kind, (split, stub))| {
                [(kind, split, Way::Splitvisor), (kind, stub, Way::InStub)]
            });
        for (kind, r, way) in refs.chain(kinds).chain(parts) {
            if let Some(why) = &r.failure {
                ok = false;
                println!("{kind} ({}): FAILED: {why}", way.name(bochs));
            }
        }
    }
    if ok {
        0
    } else {
        1
    }
}

/// One kind's boots in one round, one each way.
struct KindRuns<'k> {
    kind: &'k str,
    split: Run,
    stub: Run,
    plain: Run,
    /// `--parts`: the ring-3 and in-stub boots on the stamping stubs.
    parts: Option<(Run, Run)>,
}

/// One round: the reference boots and one boot of each kind each way.
struct Round<'k> {
    split_ref: Run,
    stub_ref: Run,
    /// Plain QEMU's reference boots, by count.
    plain_refs: Vec<(u64, Run)>,
    /// `--parts`: the reference boots on the stamping stubs.
    parts_refs: Option<(Run, Run)>,
    runs: Vec<KindRuns<'k>>,
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

impl Way {
    fn name(self, bochs: bool) -> &'static str {
        match self {
            Way::Splitvisor => "ring-3",
            Way::InStub => "in-stub",
            Way::Plain if bochs => "plain Bochs",
            Way::Plain => "plain QEMU",
        }
    }
}

fn plain_dir() -> std::path::PathBuf {
    images::image_dir().join("plain")
}

/// An emulator's command, where its COM1 comes out, and a folder to
/// remove after the run.
type Launch = (Command, Console, Option<PathBuf>);

struct Bench<'a> {
    /// QEMU or Bochs.
    program: &'a str,
    bochs: bool,
    shadow: bool,
    timeout: Duration,
    plain_elf: &'a std::path::Path,
    /// The boots started and planned, for the progress lines.
    boots: Cell<(usize, usize)>,
}

impl Bench<'_> {
    /// One boot more than planned: a raised plain QEMU count.
    fn plan_more(&self) {
        let (started, planned) = self.boots.get();
        self.boots.set((started, planned + 1));
    }

    /// The MMU mode's name and the CPU of splitvisor's ways.
    fn split_cpu(&self) -> (&'static str, &'static str) {
        match (self.bochs, self.shadow) {
            (true, true) => ("shadow", splitvisor::bochs::DEFAULT_CPU_VMX),
            (true, false) => ("ept", splitvisor::bochs::DEFAULT_CPU_VMX),
            (false, true) => ("shadow", "EPYC,+svm"),
            (false, false) => ("npt", "EPYC,+svm,+npt"),
        }
    }

    /// QEMU with the system image, or plain QEMU with the guest.
    fn qemu_launch(&self, way: Way, image: &Path, cmdline: &str) -> Launch {
        let (_, cpu) = self.split_cpu();
        let args = match way {
            Way::Plain => {
                let mut args = qemu_machine_args("EPYC", 256, splitvisor::run::Accel::Tcg);
                args.extend(["-kernel".into(), image.as_os_str().to_owned()]);
                args.extend(["-append".into(), cmdline.into()]);
                args
            }
            Way::Splitvisor | Way::InStub => {
                let opts = RunOptions {
                    system: images::SystemSpec::new(GUEST),
                    cpu: cpu.to_string(),
                    arch: None,
                    emulator: self.program.to_string(),
                    timeout: self.timeout,
                    memory_mib: 256,
                    // QEMU's TCG ignores the task-switch intercept; the guest is ours.
                    unsafe_shadow: self.shadow,
                };
                qemu_args(&opts, image)
            }
        };
        let mut cmd = Command::new(self.program);
        cmd.args(args);
        (cmd, Console::Stdout, None)
    }

    /// Bochs (VMX) booting a GRUB ISO of the system image with
    /// `arch=vmx`, or of the bare guest with `cmdline` (GRUB puts the
    /// image's path first; the guest skips that word).
    fn bochs_launch(&self, way: Way, image: &Path, cmdline: &str) -> Result<Launch, String> {
        use splitvisor::bochs;
        let files = bochs::bochs_files();
        if let Some(m) = bochs::missing_files(&files) {
            return Err(m);
        }
        let (grub_cmdline, tag) = match way {
            Way::Plain => (cmdline.to_string(), "plain"),
            Way::Splitvisor => ("arch=vmx".to_string(), "ring3"),
            Way::InStub => ("arch=vmx".to_string(), "in-stub"),
        };
        let dir = images::image_dir()
            .join("bochs")
            .join(format!("bench-exits-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let run_files = bochs::RunFiles {
            iso: dir.join("exitbench.iso"),
            com1: dir.join("com1.txt"),
            log: dir.join("bochs.log"),
        };
        images::iso::build_iso(image, &run_files.iso, &grub_cmdline)
            .map_err(|e| format!("could not build the ISO: {e}"))?;
        let (_, cpu) = self.split_cpu();
        let rc = bochs::bochsrc(cpu, 256, &files, &run_files)?;
        let (rc_path, cmds_path) = (dir.join("bochsrc"), dir.join("rc"));
        std::fs::write(&rc_path, rc)
            .and_then(|()| std::fs::write(&cmds_path, bochs::DEBUGGER_COMMANDS))
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut cmd = Command::new(self.program);
        cmd.args(bochs::bochs_args(&rc_path, &cmds_path))
            .current_dir(&dir)
            // The term display needs a terminal type; it draws on its own pty.
            .env("TERM", "vt100");
        Ok((cmd, Console::File(run_files.com1), Some(dir)))
    }

    /// One boot running `kind` `n` times.
    fn boot(&self, way: Way, kind: &str, n: u64) -> Run {
        self.boot_with(way, kind, n, false)
    }

    /// One boot running `kind` `n` times; with `parts`, on a stub built
    /// with `bench-exit-parts`.
    fn boot_with(&self, way: Way, kind: &str, n: u64, parts: bool) -> Run {
        let cmdline = format!("kind={kind} n={n}");
        let mut run = Run::default();
        let (mmu, _) = self.split_cpu();
        // The system image (splitvisor's ways) or the bare guest (plain).
        let image = match way {
            Way::Plain => self.plain_elf.to_path_buf(),
            Way::Splitvisor | Way::InStub => {
                let system = images::SystemSpec {
                    mmu: if self.shadow {
                        SystemMmu::Shadow
                    } else {
                        SystemMmu::Nested
                    },
                    cmdline: cmdline.clone(),
                    bench_inline_stub: way == Way::InStub,
                    bench_parts_stub: parts,
                    ..images::SystemSpec::new(GUEST)
                };
                match images::build_system_spec(&system) {
                    Ok(p) => p,
                    Err(e) => {
                        run.failure = Some(format!("could not build the image: {e}"));
                        return run;
                    }
                }
            }
        };
        let launch = if self.bochs {
            self.bochs_launch(way, &image, &cmdline)
        } else {
            Ok(self.qemu_launch(way, &image, &cmdline))
        };
        let (cmd, console_kind, run_dir) = match launch {
            Ok(l) => l,
            Err(e) => {
                run.failure = Some(e);
                return run;
            }
        };
        let name = match way {
            Way::Plain => way.name(self.bochs).to_string(),
            Way::Splitvisor | Way::InStub if parts => {
                format!("{} {mmu} parts", way.name(self.bochs))
            }
            Way::Splitvisor | Way::InStub => format!("{} {mmu}", way.name(self.bochs)),
        };
        let (started, planned) = self.boots.get();
        self.boots.set((started + 1, planned));
        eprintln!(
            "splitvisor: bench exits: [{}/{planned}] {name}: {cmdline}",
            started + 1
        );
        let start = Instant::now();
        let console = TimedConsole {
            start,
            inner: Arc::default(),
        };
        let report = run_command(
            cmd,
            self.program,
            self.timeout,
            console_kind,
            Box::new(console.clone()),
        );
        let wall = start.elapsed();
        if let Some(dir) = run_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
        let text = {
            let g = console.inner.lock().unwrap();
            run.loops = loops(&g.lines);
            for (_, line) in &g.lines {
                if let Some(rest) = line.strip_prefix("[vmm] exits: ") {
                    run.exits = key_values(rest);
                } else if let Some(rest) = line.strip_prefix("[vmm] mmu: ") {
                    run.mmu = key_values(rest);
                } else if let Some(rest) = stub_parts_line(line) {
                    run.parts = key_values(rest);
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
        // Plain QEMU exits with (0 << 1) | 1 through isa-debug-exit, plain
        // Bochs at the guest's shutdown after `done`; splitvisor with the
        // stub's final line.
        let ended = match way {
            Way::Plain if self.bochs => true,
            Way::Plain => report.status.and_then(|s| s.code()) == Some(1),
            Way::Splitvisor | Way::InStub => report.final_line == Some(FinalLine::Stopped(0)),
        };
        let done = text.lines().any(|l| l == "exitbench: done");
        if !ended || !done || report.timed_out || run.the_loop(kind).is_none() {
            let last: Vec<&str> = text.lines().rev().take(12).collect();
            let last: Vec<&str> = last.into_iter().rev().collect();
            let why = if report.timed_out {
                format!("timed out after {} s", self.timeout.as_secs())
            } else {
                format!(
                    "ended with {:?} (emulator status {:?})",
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
                n: 10_000,
                tsc,
                wall: ms(wall),
            }],
            exits: key_values(exits),
            ..Run::default()
        }
    }

    fn cells<'t>(t: &'t str, kind: &str, table: usize) -> Vec<&'t str> {
        t.lines()
            .filter(|l| l.split_whitespace().next() == Some(kind))
            .nth(table)
            .unwrap_or_else(|| panic!("no row {table} for {kind}:\n{t}"))
            .split_whitespace()
            .collect()
    }

    #[test]
    fn rows_subtract_the_reference() {
        let mut sr = run(
            "none",
            2,
            36,
            "total=500 ioio=400 cpuid=0 hlt=1 syscalls=2500",
        );
        let mut s = run(
            "cpuid",
            502,
            2_000_036,
            "total=10504 ioio=404 cpuid=10000 hlt=1 syscalls=52500",
        );
        // Two characters more in the guest's lines: four port exits.
        s.guest_chars = 2;
        let tr = run("none", 2, 36, "total=500 ioio=400 syscalls=2500");
        let t = run(
            "cpuid",
            102,
            400_036,
            "total=10500 ioio=400 cpuid=10000 syscalls=2500",
        );
        // The vmm-server's handling time, which the guest's TSC left
        // out, counts: 100 ticks per op more.
        s.exits.push((HANDLING_TICKS.into(), 1_000_050));
        sr.exits.push((HANDLING_TICKS.into(), 50));
        let pr = run("none", 1, 36, "");
        let p = run("cpuid", 1, 40_036, "");
        let r = row("cpuid", 10_000, &[(&s, &sr)], &[(&t, &tr)], &[(&p, &pr)]);
        assert_eq!(r.total_exits(), 10_000);
        assert_eq!(r.exits_per_op(), Some(1.0));
        assert_eq!(r.stub_exits, Some(10_000));
        let c = r.split.unwrap();
        assert!((c.us_per_op - 50.0).abs() < 1e-9, "{c:?}");
        assert!((c.tsc_per_op - 300.0).abs() < 1e-9);
        assert!((r.stub.unwrap().us_per_op - 10.0).abs() < 1e-9);
        let p = r.plain.unwrap();
        assert_eq!(p.us_per_op, 0.0);
        assert!((p.tsc_per_op - 4.0).abs() < 1e-9);
        let t = table(&[r], 4.0);
        // kind, ops, plain ops, exits/op, stub exits/op, ring-3 us,
        // in-stub us, plain us, ring-3/in-stub, ring-3/plain (plain QEMU's
        // loop is no longer than the reference's: a bound).
        assert_eq!(
            cells(&t, "cpuid", 0),
            [
                "cpuid", "10000", "10000", "1.00", "1.00", "50.0000", "10.0000", "<1.0000", "5.0x",
                ">50.0x"
            ]
        );
        // Exits (ops) per second each way, instructions per op each way.
        assert_eq!(
            cells(&t, "cpuid", 1),
            ["cpuid", "20000", "100000", ">1000000", "75", "10", "1"]
        );
        assert!(t.contains("Exits by reason"));
        let by_reason = cells(&t, "cpuid", 2);
        // kind, total, ioio, cpuid, ...
        assert_eq!(&by_reason[..4], ["cpuid", "10000", "0", "10000"]);
        // Syscalls per exit: ring-3, in-stub (2500 less 2500: none).
        assert_eq!(by_reason[by_reason.len() - 2..], ["5.00", "0.00"]);
    }

    #[test]
    fn parts_per_op_less_the_reference() {
        assert_eq!(
            stub_parts_line("[stub] parts: guest=1 exit=2"),
            Some("guest=1 exit=2")
        );
        assert_eq!(
            stub_parts_line("[stub] vm1: parts: guest=1"),
            Some("guest=1")
        );
        assert_eq!(stub_parts_line("[stub] scheduler: idle=0"), None);
        let parts = |r: &mut Run, line: &str| r.parts = key_values(stub_parts_line(line).unwrap());
        let mut reference = run("none", 2, 400, "");
        parts(
            &mut reference,
            "[stub] parts: guest=1000 exit=200 server=3000 call=400 idle=0",
        );
        let mut r = run("io", 500, 400 + 10_000 * 4 * 700, "");
        // Per op: guest 10, exit 100, server 500, call 90 instructions.
        parts(
            &mut r,
            "[stub] parts: guest=401000 exit=4000200 server=20003000 call=3600400 idle=0",
        );
        let t = parts_table(&[("io", "ring-3", &r, &reference)], 10_000, 4.0);
        assert_eq!(
            cells(&t, "io", 0),
            ["io", "ring-3", "10", "100", "500", "90", "0", "700", "700"]
        );
        // A boot without the line gives dashes.
        let t = parts_table(
            &[("io", "ring-3", &r, &run("none", 2, 400, ""))],
            10_000,
            4.0,
        );
        assert_eq!(
            cells(&t, "io", 0),
            ["io", "ring-3", "-", "-", "-", "-", "-", "-", "700"]
        );
    }

    #[test]
    fn a_failed_boot_gives_dashes() {
        let empty = Run::default();
        let none = [(&empty, &empty)];
        let r = row("io", 100, &none, &none, &none);
        assert!(r.split.is_none() && r.plain.is_none() && r.exits.is_empty());
        assert!(r.stub.is_none() && r.stub_exits.is_none());
        let t = table(&[r], 4.0);
        for table in 0..3 {
            let line = cells(&t, "io", table);
            assert!(line.iter().skip(2).all(|c| *c == "-"), "{line:?}");
        }
        let plain = run("io", 50, 4036, "");
        let plain_ref = run("none", 10, 36, "");
        let r = row("io", 10_000, &none, &none, &[(&plain, &plain_ref)]);
        assert_eq!(r.plain.map(|c| c.us_per_op), Some(4.0));
        let t = table(&[r], 4.0);
        assert_eq!(cells(&t, "io", 0)[7], "4.0000");
        // A failed round among good ones: no figure.
        let r = row(
            "io",
            100,
            &[],
            &[],
            &[(&plain, &plain_ref), (&empty, &empty)],
        );
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
        assert_eq!(c.us_per_op, 4.0);
        assert!((c.tsc_per_op - 0.4).abs() < 1e-9);
    }
}
