//! End-to-end: `splitvisor bench exits` as a user types it, with a small
//! count, on QEMU's emulated SVM with nested and with shadow paging. Checks
//! that every kind has its row, made real exits under splitvisor (the
//! vmm-server's counters), and that the guest's own `end` lines came from
//! both ways with the counts asked for. No timing is checked: performance
//! belongs in the benchmark, not in tests.

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

fn bench(mmu: &str) -> Bench {
    let out = Command::new(env!("CARGO_BIN_EXE_splitvisor"))
        .args(["bench", "exits", "--mmu", mmu, "--count"])
        .arg(COUNT.to_string())
        .args(["--timeout", "300"])
        .output()
        .expect("the splitvisor binary starts");
    Bench {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn check(mmu: &str, kinds: &[(&str, &str)]) {
    let b = bench(mmu);
    assert_eq!(b.code, Some(0), "{b}");
    for (kind, reason) in kinds {
        let rows: Vec<Vec<&str>> = b
            .stdout
            .lines()
            .filter(|l| l.split_whitespace().next() == Some(kind))
            .map(|l| l.split_whitespace().collect())
            .collect();
        // The main table, the exits by reason and, under shadow paging, the
        // mmu-server's figures.
        let tables = if mmu == "shadow" { 3 } else { 2 };
        assert_eq!(rows.len(), tables, "{kind}: a row in each table\n{b}");
        // The main table: kind, ops, plain ops, exits/op, ...
        let main = &rows[0];
        assert_eq!(main[1], COUNT.to_string(), "{kind}\n{b}");
        let per_op: f64 = main[3].parse().unwrap_or(0.0);
        assert!(per_op >= 0.99, "{kind}: exits/op {}\n{b}", main[3]);
        // The exits by reason: kind, total, ioio, cpuid, msr, hlt, npf,
        // exception, intr, other.
        let by_reason = &rows[1];
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
        // The guest's own lines, from splitvisor and from plain QEMU.
        let prefix = format!("  exitbench: end {kind} n={COUNT} tsc=");
        let line = b
            .stdout
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("{kind}: no guest line\n{b}"));
        let (_, plain) = line.split_once(" | ").expect("both ways");
        assert!(
            plain.starts_with(&format!("exitbench: end {kind} n=")),
            "{kind}: plain QEMU's line: {plain}\n{b}"
        );
    }
}

#[test]
fn bench_exits_on_svm_npt() {
    check(
        "npt",
        &[
            ("io", "ioio"),
            ("cpuid", "cpuid"),
            ("msr", "msr"),
            ("hlt", "hlt"),
            ("mmio", "npf"),
        ],
    );
}

#[test]
fn bench_exits_on_svm_shadow() {
    check(
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
