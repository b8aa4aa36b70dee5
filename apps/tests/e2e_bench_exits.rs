//! End-to-end: `splitvisor bench exits` as a user types it, with a small
//! count (plain QEMU's too, so that its count is not searched for), on
//! QEMU's emulated SVM with nested and with shadow paging. Checks that
//! every kind has its rows, made real exits through the ring-3 servers and
//! through the stub built with `bench-inline-exits` (the stub's counters),
//! that the in-stub handler answered them without the servers (no
//! syscalls), and that the guest's own `end` lines came from all three
//! ways with the counts asked for; under nested paging also the
//! instructions per part of the exit path (`--parts`). No timing is
//! checked: performance belongs in the benchmark, not in tests.

use std::process::Command;

const COUNT: u64 = 200;

struct Bench {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Bench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit status {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn bench(emulator: &str, mmu: &str, kinds: &[(&str, &str)], parts: bool) -> Bench {
    let kinds: Vec<&str> = kinds.iter().map(|(k, _)| *k).collect();
    let out = Command::new(env!("CARGO_BIN_EXE_splitvisor"))
        .args([
            "bench",
            "exits",
            "--emulator",
            emulator,
            "--mmu",
            mmu,
            "--count",
        ])
        .arg(COUNT.to_string())
        .arg("--plain-count")
        .arg(COUNT.to_string())
        .args(["--timeout", "300", "--kind", &kinds.join(",")])
        .args(parts.then_some("--parts"))
        .output()
        .expect("the splitvisor binary starts");
    Bench {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn check(emulator: &str, mmu: &str, kinds: &[(&str, &str)]) {
    check_with(emulator, mmu, kinds, false);
}

/// As [`check`]; with `parts`, also the instructions per part of the exit
/// path (`--parts`): the ring-3 way spends them in the stub after the
/// exit, in ring 3 and in the stub after the system call; the in-stub
/// way in ring 3 hardly at all.
fn check_with(emulator: &str, mmu: &str, kinds: &[(&str, &str)], parts: bool) {
    let b = bench(emulator, mmu, kinds, parts);
    assert_eq!(b.code, Some(0), "{b}");
    // The figures name the emulator they came from.
    let named = if emulator.starts_with("bochs") {
        "Emulator: Bochs"
    } else {
        "Emulator: QEMU emulator version"
    };
    assert!(b.stdout.lines().any(|l| l.starts_with(named)), "{b}");
    for (kind, reason) in kinds {
        let rows: Vec<Vec<&str>> = b
            .stdout
            .lines()
            .filter(|l| l.split_whitespace().next() == Some(kind))
            .map(|l| l.split_whitespace().collect())
            .collect();
        // The wall times, the rates, the exits by reason and, under shadow
        // paging, the mmu-server's figures.
        let tables = if mmu == "shadow" { 4 } else { 3 } + if parts { 2 } else { 0 };
        assert_eq!(rows.len(), tables, "{kind}: a row in each table\n{b}");
        // The wall times: kind, ops, plain ops, exits/op (ring-3),
        // exits/op (in-stub), ...
        let main = &rows[0];
        assert_eq!(
            main[1..3],
            [COUNT.to_string(), COUNT.to_string()],
            "{kind}\n{b}"
        );
        for (col, way) in [(3, "ring-3"), (4, "in-stub")] {
            let per_op: f64 = main[col].parse().unwrap_or(0.0);
            assert!(per_op >= 0.99, "{kind}: {way} exits/op {}\n{b}", main[col]);
        }
        // The exits by reason: kind, total, ioio, cpuid, msr, hlt, npf,
        // exception, intr, other, syscalls per exit (ring-3, in-stub).
        let by_reason = &rows[2];
        let col = [
            "ioio",
            "cpuid",
            "msr",
            "hlt",
            "npf",
            "exception",
            "intr",
            "other",
        ]
        .iter()
        .position(|r| r == reason)
        .unwrap();
        let n: u64 = by_reason[2 + col].parse().unwrap_or(0);
        assert!(n >= COUNT, "{kind}: {reason} exits {n}\n{b}");
        // The servers answer an exit with at least its `VcpuRun`; the
        // in-stub handler with none (the loop's setup and end may make a few).
        let sys = |col: usize| by_reason[col].parse::<f64>().unwrap_or(f64::NAN);
        assert!(sys(10) >= 0.99, "{kind}: ring-3 syscalls/exit\n{b}");
        assert!(sys(11).abs() < 0.5, "{kind}: in-stub syscalls/exit\n{b}");
        if parts {
            // kind, way, guest, exit, server, call, idle, sum, loop ins.
            let (ring3, in_stub) = (&rows[tables - 2], &rows[tables - 1]);
            assert_eq!(ring3[1], "ring-3", "{b}");
            assert_eq!(in_stub[1], "in-stub", "{b}");
            let ins = |row: &Vec<&str>, col: usize| row[col].parse::<f64>().unwrap_or(f64::NAN);
            for (col, place) in [(3, "exit"), (4, "server"), (5, "call")] {
                assert!(ins(ring3, col) >= 100.0, "{kind}: ring-3 {place}\n{b}");
            }
            assert!(ins(in_stub, 3) >= 100.0, "{kind}: in-stub exit\n{b}");
            assert!(
                ins(in_stub, 4) < ins(ring3, 4) / 4.0,
                "{kind}: in-stub server\n{b}"
            );
        }
        // The guest's own lines, from splitvisor and from plain QEMU.
        let prefix = format!("  exitbench: end {kind} n={COUNT} tsc=");
        let line = b
            .stdout
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("{kind}: no guest line\n{b}"));
        let ways: Vec<&str> = line.split(" | ").collect();
        assert_eq!(ways.len(), 3, "{kind}: {line}\n{b}");
        for (way, l) in ["in-stub", "plain"].iter().zip(&ways[1..]) {
            assert!(
                l.starts_with(&format!("exitbench: end {kind} n={COUNT} tsc=")),
                "{kind}: {way}'s line: {l}\n{b}"
            );
        }
    }
}

/// Port I/O and NPF exits with the parts of the path (`--parts` doubles
/// the boots; the other kinds run under shadow paging below).
#[test]
fn bench_exits_on_svm_npt() {
    check_with(
        "qemu-system-x86_64",
        "npt",
        &[("io", "ioio"), ("mmio", "npf")],
        true,
    );
}

#[test]
fn bench_exits_on_svm_shadow() {
    check(
        "qemu-system-x86_64",
        "shadow",
        &[
            ("io", "ioio"),
            ("cpuid", "cpuid"),
            ("msr", "msr"),
            ("hlt", "hlt"),
            ("mmio", "exception"),
            ("pf", "exception"),
        ],
    );
}

/// The same on Bochs with VMX (the in-stub handler decoding VMX records),
/// EPT and shadow paging.
#[test]
#[ignore = "about 6 minutes of Bochs boots; run with --ignored"]
fn bench_exits_on_bochs_vmx() {
    let kinds = [
        ("io", "ioio"),
        ("cpuid", "cpuid"),
        ("msr", "msr"),
        ("hlt", "hlt"),
        ("mmio", "npf"),
    ];
    check("bochs", "npt", &kinds);
    check(
        "bochs",
        "shadow",
        &[("mmio", "exception"), ("pf", "exception"), ("hlt", "hlt")],
    );
}
