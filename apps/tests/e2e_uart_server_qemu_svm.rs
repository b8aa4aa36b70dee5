//! End-to-end: COM1 as a ring-3 server of its own (`--uart-server`),
//! reached from the vmm-server over channel 0, booted in QEMU (TCG) with
//! emulated AMD SVM. The guest's output and input pass through the
//! uart-server; the stub counts the messages on the channel.
//!
//! They need `qemu-system-x86_64`, gcc and binutils (`scripts/install-deps`).

mod common;

use common::Run;
use splitvisor::e2e;
use splitvisor::run::DEFAULT_CPU;

/// Generous: several boots share two cores, and the first one also waits
/// for the stub and the servers to build.
const TIMEOUT_SECS: u64 = 240;

fn splitvisor_run(args: &[&str]) -> Run {
    common::splitvisor_run(args, TIMEOUT_SECS)
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
        "--unsafe-shadow",
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
    let console = e2e::uartin_reads_a_typed_line(system, DEFAULT_CPU);
    assert!(channel_calls(&console, 0).unwrap_or(0) > 0, "{console}");
}
