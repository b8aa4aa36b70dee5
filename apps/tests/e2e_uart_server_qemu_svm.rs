//! End-to-end: COM1 as a ring-3 server of its own (`--uart-server`),
//! reached from the vmm-server over channel 0, booted in QEMU (TCG) with
//! emulated AMD SVM. The guest's output and input pass through the
//! uart-server; the stub counts the messages on the channel.
//!
//! They need `qemu-system-x86_64`, gcc and binutils (`scripts/install-deps`).

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use splitvisor::run::{qemu_args, RunOptions, DEFAULT_CPU, DEFAULT_EMULATOR};

/// Generous: several boots share two cores, and the first one also waits
/// for the stub and the servers to build.
const TIMEOUT_SECS: u64 = 240;

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
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

fn splitvisor_run(args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_splitvisor"))
        .arg("run")
        .args(args)
        .args(["--timeout", &TIMEOUT_SECS.to_string()])
        .output()
        .expect("the splitvisor binary starts");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `channelN_calls=V` from the statistics line, if there.
fn channel_calls(stdout: &str, n: usize) -> Option<u64> {
    let key = format!("channel{n}_calls=");
    stdout
        .lines()
        .filter(|l| l.starts_with("[vmm] exits: total="))
        .flat_map(|l| l.split_whitespace())
        .find_map(|w| w.strip_prefix(key.as_str())?.parse().ok())
}

#[test]
fn hello_through_the_uart_server_prints_its_line_and_counts_messages() {
    let r = splitvisor_run(&["--guest", "hello", "--uart-server"]);
    assert_eq!(r.code, Some(0), "{r}");
    assert!(
        r.stdout.lines().any(|l| l == "hello from the guest"),
        "no exact guest line\n{r}"
    );
    let calls = channel_calls(&r.stdout, 0).unwrap_or(0);
    // At least one message per byte of "hello from the guest\n".
    assert!(calls >= 21, "channel0_calls={calls}\n{r}");
    assert!(
        r.stdout.contains("[stub] vm stopped: guest status 0"),
        "{r}"
    );
}

#[test]
fn hello_through_the_uart_server_under_shadow_paging() {
    let r = splitvisor_run(&[
        "--guest",
        "hello",
        "--uart-server",
        "--mmu",
        "shadow",
        "--cpu",
        "EPYC,+svm",
    ]);
    assert_eq!(r.code, Some(0), "{r}");
    assert!(
        r.stdout.lines().any(|l| l == "hello from the guest"),
        "no exact guest line\n{r}"
    );
    assert!(channel_calls(&r.stdout, 0).unwrap_or(0) >= 21, "{r}");
}

/// Without the flag COM1 stays inside the vmm-server: no channel traffic.
#[test]
fn hello_without_the_flag_uses_no_channel() {
    let r = splitvisor_run(&["--guest", "hello"]);
    assert_eq!(r.code, Some(0), "{r}");
    assert_eq!(channel_calls(&r.stdout, 0), None, "{r}");
}

/// Typed input reaches the guest through the uart-server's `ConsoleRead`,
/// and IRQ 4 follows its receiver (the guest checks the PIC's IRR).
#[test]
fn uartin_through_the_uart_server_reads_a_typed_line_with_irq4() {
    let system = images::SystemSpec {
        uart_server: true,
        ..images::SystemSpec::new("uartin")
    };
    let image = images::build_system_spec(&system).expect("image builds");
    let opts = RunOptions {
        system,
        cpu: DEFAULT_CPU.to_string(),
        arch: None,
        emulator: DEFAULT_EMULATOR.to_string(),
        timeout: Duration::from_secs(TIMEOUT_SECS),
        memory_mib: 256,
    };
    let mut child = Command::new(DEFAULT_EMULATOR)
        .args(qemu_args(&opts, &image))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("QEMU starts (scripts/install-deps installs it)");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Held open until the end: closing QEMU's stdin is not input.
    let mut stdin = child.stdin.take().expect("piped stdin");
    let mut typed = false;
    let mut console = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(TIMEOUT_SECS);
    while let Ok(line) =
        rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
    {
        if line == "uartin: waiting for a line on COM1" && !typed {
            stdin
                .write_all(b"typed on the host\n")
                .expect("QEMU reads stdin");
            stdin.flush().expect("QEMU reads stdin");
            typed = true;
        }
        console.push_str(&line);
        console.push('\n');
        if line.starts_with("[stub] vm ") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        console.contains("uartin: got: typed on the host\n"),
        "{console}"
    );
    assert!(console.contains("uartin: all checks passed\n"), "{console}");
    assert!(
        console.contains("[stub] vm stopped: guest status 0"),
        "{console}"
    );
    assert!(channel_calls(&console, 0).unwrap_or(0) > 0, "{console}");
}
