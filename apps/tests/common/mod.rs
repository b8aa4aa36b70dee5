//! What the end-to-end tests of the `splitvisor` command share: one
//! `splitvisor run` and what it printed ([`splitvisor_run`]), and for the
//! Linux tests one boot of `splitvisor run --linux FLAVOUR` with the MMU
//! workload and the checks of its serial output ([`boot_linux`]); for the
//! disk tests [`disk`]. Each test file uses a part of it.
#![allow(dead_code)]

pub mod disk;

use std::process::Command;

use splitvisor::linux::{Flavour, INIT_MARKER, WORKLOAD_END};

/// `splitvisor run` options for Debian's amd64 kernel on the PC board
/// under QEMU's TCG with emulated SVM and nested paging.
pub const AMD64_PC_NPT: [&str; 8] = [
    "--linux",
    "amd64",
    "--board",
    "pc",
    "--mmu",
    "npt",
    "--cpu",
    "EPYC,+svm,+npt",
];

/// One `splitvisor run`: its exit status and output.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Stdout and stderr together.
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    /// Stdout has exactly this line.
    pub fn has_line(&self, line: &str) -> bool {
        self.stdout.lines().any(|l| l == line)
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit status {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `splitvisor run ARGS --timeout TIMEOUT_SECS`, as a user would.
pub fn splitvisor_run(args: &[&str], timeout_secs: u64) -> Run {
    let timeout = timeout_secs.to_string();
    splitvisor(&[&["run"], args, &["--timeout", &timeout]].concat())
}

/// Runs `splitvisor ARGS` (any command).
pub fn splitvisor(args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_splitvisor"))
        .args(args)
        .output()
        .expect("the splitvisor binary starts");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The console with each kernel message that interrupted a line of a user
/// program (`workload: [    9.61] clocksource: ...` then `fork+exec ...`
/// on the next line) moved onto a line of its own, so that the program's
/// line reads whole again.
pub fn rejoin_interrupted_lines(console: &str) -> String {
    let mut out = String::with_capacity(console.len());
    let mut lines = console.split('\n').peekable();
    while let Some(line) = lines.next() {
        let kernel = line.find("[ ").filter(|&i| {
            i > 0 && {
                let rest = &line[i + 1..];
                let stamp = rest.trim_start();
                stamp.find("] ").is_some_and(|end| {
                    let t = &stamp[..end];
                    !t.is_empty() && t.chars().all(|c| c.is_ascii_digit() || c == '.')
                })
            }
        });
        match (kernel, lines.peek()) {
            (Some(i), Some(_)) => {
                let next = lines.next().unwrap_or_default();
                out.push_str(&line[i..]);
                out.push('\n');
                out.push_str(&line[..i]);
                out.push_str(next);
            }
            _ => out.push_str(line),
        }
        if lines.peek().is_some() {
            out.push('\n');
        }
    }
    out
}

/// The boots share `.cache/linux/` and the two cores: one at a time.
pub static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Boots `flavour` with `--mmu mmu` and `extra` arguments (emulator, CPU)
/// through the workload, kills it after `timeout_secs`, and checks that the
/// kernel started, `/init` printed its marker and `uname -a` of this kernel,
/// the workload passed every part, and the VM ended with status 0.
pub fn boot_linux(flavour: Flavour, mmu: &str, extra: &[&str], timeout_secs: u64) -> Run {
    boot_linux_appending(flavour, mmu, extra, "", timeout_secs)
}

/// [`boot_linux`] with more of the kernel command line, `append`, before
/// `splitvisor.workload splitvisor.exit`; returns the run for more checks.
pub fn boot_linux_appending(
    flavour: Flavour,
    mmu: &str,
    extra: &[&str],
    append: &str,
    timeout_secs: u64,
) -> Run {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut args = vec!["--linux", flavour.name(), "--mmu", mmu];
    args.extend_from_slice(extra);
    let append = format!("{append} splitvisor.workload splitvisor.exit");
    args.extend(["--append", append.trim_start()]);
    let mut run = splitvisor_run(&args, timeout_secs);
    run.stdout = rejoin_interrupted_lines(&run.stdout);
    let stdout = &run.stdout;
    let report = run.to_string();
    let lines: Vec<&str> = stdout.lines().collect();
    for l in lines
        .iter()
        .filter(|l| l.starts_with("workload: ") || l.starts_with("[vmm] mmu:"))
    {
        eprintln!("{} {mmu}: {l}", flavour.name());
    }
    assert!(
        stdout.contains("Linux version 6."),
        "the kernel did not start\n{report}"
    );
    assert!(lines.contains(&INIT_MARKER), "no init marker\n{report}");
    let uname = "Linux (none) 6.1.0-";
    let uname_line = lines
        .iter()
        .find(|l| l.starts_with(uname))
        .unwrap_or_else(|| panic!("no uname -a from the initramfs\n{report}"));
    assert!(
        uname_line.contains(&format!("-{} ", flavour.name()))
            && uname_line.contains(&format!(" {} GNU/Linux", flavour.machine())),
        "not the {} kernel: {uname_line}\n{report}",
        flavour.name()
    );
    for (part, count) in [
        ("fork+exec", "300 processes"),
        ("pipe ping-pong", "2000 round trips"),
        ("mmap/munmap", "200 maps of a 64-page file"),
    ] {
        let prefix = format!("workload: {part} {count} in ");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&prefix) && l.ends_with(" ms ok")),
            "no `{prefix}... ms ok` line\n{report}"
        );
    }
    assert!(
        lines.contains(&"workload: done, 0 failed"),
        "the workload failed\n{report}"
    );
    assert!(
        lines.contains(&format!("{WORKLOAD_END}0").as_str()),
        "/init did not report the workload's status\n{report}"
    );
    if mmu == "shadow" {
        assert!(
            lines.iter().any(|l| l.starts_with("[vmm] mmu: faults=")),
            "no shadow cache figures at the end\n{report}"
        );
    }
    assert_eq!(run.code, Some(0), "{report}");
    run
}

/// The counters on the switch's last line for a port that starts with
/// `port` (`switch: at the VM's end: port 1 vm ch 1 in=9/1580B
/// out=7/2474B runt=0 ...`): frame counts by name.
pub fn switch_counters(out: &str, port: &str) -> Option<std::collections::HashMap<String, u64>> {
    let line = out
        .lines()
        .rev()
        .filter_map(|l| l.strip_prefix("switch: "))
        .find(|l| l.starts_with(port))?;
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| Some((k.to_string(), v.split('/').next()?.parse().ok()?)))
        .collect()
}
