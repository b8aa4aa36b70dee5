//! `splitvisor bench net`: VM-to-VM ping round trips and TCP throughput
//! between two Debian VMs, through splitvisor's switch (`run --vms 2
//! --net switch`, one CPU) against two plain-QEMU guests (two
//! `qemu-system-x86_64` processes, no splitvisor) joined by QEMU's own
//! socket network (`-netdev socket`, virtio-net-pci), in one run.
//!
//! Both boot the same kernel and initramfs with `splitvisor.net.bench.pair`
//! (`/init` in `splitvisor::linux`): VM 0 (10.0.3.1) pings VM 1 (10.0.3.2)
//! 20 times and sends it N MiB with busybox `nc`. The round trips are
//! ping's (guest time); the throughput is both the guest's (VM 0's
//! `/proc/uptime` around the send) and the host's (from VM 0's line before
//! the send to VM 1's line after the receive, by their arrival).
//!
//! The table goes to stdout, progress to stderr.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use clap::Args;

use splitvisor::linux::{Flavour, NET_BENCH};
use splitvisor::linux_virtio::PlainVirtio;

use crate::bench_io::timed_lines;

/// `splitvisor bench net`.
#[derive(Args)]
pub struct NetArgs {
    /// MiB VM 0 sends to VM 1 (through the switch two to three minutes of
    /// wall time per MiB under TCG).
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    mib: u32,
    /// Kill a boot after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 900,
          value_parser = clap::value_parser!(u64).range(1..))]
    timeout: u64,
}

/// Guest RAM of each VM, both ways (the file sent sits in the initramfs's
/// RAM on both sides).
const RAM_MIB: u32 = 128;

/// One VM's console: its fragments (the lines with its prefix, the prefix
/// taken off) joined without their ends, so that a line another VM's
/// output cut reads whole, and where each fragment ended and when.
struct VmText {
    text: String,
    ends: Vec<(usize, Duration)>,
}

impl VmText {
    fn new(lines: &[(Duration, String)], prefix: &str) -> Self {
        let mut v = VmText {
            text: String::new(),
            ends: Vec::new(),
        };
        for (t, l) in lines {
            if let Some(rest) = l.strip_prefix(prefix) {
                v.text.push_str(rest);
                v.ends.push((v.text.len(), *t));
            }
        }
        v
    }

    /// Each [`NET_BENCH`] record: the words up to its `;` and when the
    /// fragment holding the `;` arrived.
    fn records(&self) -> Vec<(Duration, Vec<String>)> {
        let mut out = Vec::new();
        let mut from = 0;
        while let Some(at) = self.text[from..].find(NET_BENCH) {
            let start = from + at + NET_BENCH.len();
            let Some(len) = self.text[start..].find(';') else {
                break;
            };
            let end = start + len;
            let when = self.ends.iter().find(|(e, _)| *e > end).map(|(_, t)| *t);
            if let Some(when) = when {
                let words = self.text[start..end]
                    .split_whitespace()
                    .map(str::to_string)
                    .collect();
                out.push((when, words));
            }
            from = end;
        }
        out
    }
}

/// Word `i` of a record, parsed.
fn word<T: std::str::FromStr>(w: &[String], i: usize) -> Option<T> {
    w.get(i).and_then(|s| s.parse().ok())
}

/// One way's figures.
#[derive(Debug, Default, PartialEq)]
struct NetFigures {
    pings_sent: u32,
    pings_received: u32,
    /// min, avg, max in ms (guest time).
    rtt_ms: Option<[f64; 3]>,
    /// Host time of the 20 pings (from `ping-begin` to `ping`).
    ping_wall: Option<Duration>,
    bytes_sent: u64,
    bytes_received: u64,
    /// VM 0's uptime around the send.
    send_guest_s: Option<f64>,
    /// Host time from VM 0's `tcp-begin` to VM 1's `tcp-received`.
    tcp_wall: Option<Duration>,
    md5_sent: String,
    md5_received: String,
}

impl NetFigures {
    /// From the two VMs' texts, their times on one clock.
    fn parse(vm0: &VmText, vm1: &VmText) -> NetFigures {
        let mut f = NetFigures::default();
        let (r0, r1) = (vm0.records(), vm1.records());
        let when = |recs: &[(Duration, Vec<String>)], key: &str| {
            recs.iter()
                .find(|(_, w)| w.first().is_some_and(|k| k == key))
                .map(|(t, w)| (*t, w[1..].to_vec()))
        };
        let ping_begin = when(&r0, "ping-begin");
        if let Some((t, w)) = when(&r0, "ping") {
            f.pings_sent = word(&w, 0).unwrap_or(0);
            f.pings_received = word(&w, 1).unwrap_or(0);
            let rtt: Vec<f64> = w
                .get(2)
                .map(|s| s.split('/').filter_map(|x| x.parse().ok()).collect())
                .unwrap_or_default();
            f.rtt_ms = rtt.try_into().ok();
            f.ping_wall = ping_begin.map(|(b, _)| t.saturating_sub(b));
        }
        let tcp_begin = when(&r0, "tcp-begin").map(|(t, _)| t);
        if let Some((_, w)) = when(&r0, "tcp-sent") {
            f.bytes_sent = word(&w, 0).unwrap_or(0);
            f.send_guest_s = word::<f64>(&w, 1)
                .zip(word::<f64>(&w, 2))
                .map(|(a, b)| b - a);
            f.md5_sent = w.get(3).cloned().unwrap_or_default();
        }
        if let Some((t, w)) = when(&r1, "tcp-received") {
            f.bytes_received = word(&w, 0).unwrap_or(0);
            f.md5_received = w.get(2).cloned().unwrap_or_default();
            f.tcp_wall = tcp_begin.map(|b| t.saturating_sub(b));
        }
        f
    }

    /// What is missing or wrong, if anything.
    fn problem(&self, mib: u32) -> Option<String> {
        let bytes = u64::from(mib) << 20;
        if self.rtt_ms.is_none() {
            Some(format!(
                "no round trips ({} of {} pings answered)",
                self.pings_received, self.pings_sent
            ))
        } else if self.bytes_sent != bytes || self.bytes_received != bytes {
            Some(format!(
                "sent {} and received {} bytes, not {bytes}",
                self.bytes_sent, self.bytes_received
            ))
        } else if self.md5_sent.len() != 32 || self.md5_sent != self.md5_received {
            Some(format!(
                "MD5 sent {:?}, received {:?}",
                self.md5_sent, self.md5_received
            ))
        } else if self.tcp_wall.is_none() || self.ping_wall.is_none() {
            Some("a line missing".into())
        } else {
            None
        }
    }

    fn mib_per_s(&self, secs: Option<f64>) -> Option<f64> {
        secs.filter(|s| *s > 0.0)
            .map(|s| self.bytes_received as f64 / 1048576.0 / s)
    }
    fn guest_rate(&self) -> Option<f64> {
        self.mib_per_s(self.send_guest_s)
    }
    fn wall_rate(&self) -> Option<f64> {
        self.mib_per_s(self.tcp_wall.map(|d| d.as_secs_f64()))
    }
}

/// The kernel's command line's bench part.
fn append(mib: u32) -> String {
    format!("splitvisor.net.bench.pair splitvisor.net.bench.mib={mib} splitvisor.exit")
}

/// Two VMs on splitvisor's switch, in one QEMU.
fn splitvisor_way(a: &NetArgs) -> Result<NetFigures, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    eprintln!("bench net: splitvisor (--vms 2 --net switch, npt, one CPU) ...");
    let mut cmd = Command::new(exe);
    cmd.args(["run", "--linux", "amd64", "--board", "pc", "--mmu", "npt"])
        .args(["--cpu", "EPYC,+svm,+npt", "--vms", "2", "--net", "switch"])
        .args(["--ram", &RAM_MIB.to_string()])
        .args(["--append", &append(a.mib)])
        .args(["--timeout", &a.timeout.to_string()]);
    let lines = timed_lines(cmd)?;
    let f = NetFigures::parse(
        &VmText::new(&lines, "[vm0] "),
        &VmText::new(&lines, "[vm1] "),
    );
    if let Some(why) = f.problem(a.mib) {
        let tail: Vec<&str> = lines
            .iter()
            .rev()
            .take(30)
            .map(|(_, l)| l.as_str())
            .collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(format!(
            "splitvisor: {why}; the output ends with:\n{}",
            tail.join("\n")
        ));
    }
    Ok(f)
}

/// Whether something listens on 127.0.0.1:`port` (`/proc/net/tcp`: state
/// 0A); a probe connection would be taken by QEMU as its peer.
fn listening(port: u16) -> bool {
    let want = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/tcp").is_ok_and(|t| {
        t.lines().skip(1).any(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.get(1) == Some(&want.as_str()) && w.get(3) == Some(&"0A")
        })
    })
}

/// Two plain-QEMU guests on QEMU's socket network: VM 1's QEMU listens,
/// VM 0's connects once it does.
fn plain_way(
    a: &NetArgs,
    qemu: PathBuf,
    guest: &splitvisor::linux::LinuxGuest,
) -> Result<NetFigures, String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let vm = |n: u8, netdev: String| {
        let mut p = PlainVirtio::new(qemu.clone(), guest.clone());
        p.append = append(a.mib);
        p.ram_mib = RAM_MIB;
        p.timeout = Duration::from_secs(a.timeout);
        p.extra = vec![
            "-netdev".into(),
            format!("socket,id=n0,{netdev}"),
            "-device".into(),
            format!("virtio-net-pci,netdev=n0,mac=02:53:56:00:00:0{n}"),
        ];
        p
    };
    let (vm0, vm1) = (
        vm(1, format!("connect=127.0.0.1:{port}")),
        vm(2, format!("listen=127.0.0.1:{port}")),
    );
    eprintln!("bench net: plain QEMU (two processes, -netdev socket on 127.0.0.1:{port}) ...");
    let start = Instant::now();
    // Each boot's line times from its own start, moved onto `start`'s.
    let boot = move |p: PlainVirtio| {
        let offset = start.elapsed();
        p.run().map(|r| {
            let lines: Vec<(Duration, String)> = r
                .lines
                .iter()
                .map(|(t, l)| (*t + offset, l.clone()))
                .collect();
            (r, lines)
        })
    };
    let second = std::thread::spawn(move || boot(vm1));
    while !listening(port) && !second.is_finished() && start.elapsed().as_secs() < 60 {
        std::thread::sleep(Duration::from_millis(20));
    }
    let first = boot(vm0);
    let second = second.join().map_err(|_| "a plain QEMU thread panicked")?;
    let ((r0, l0), (r1, l1)) = (first?, second?);
    let f = NetFigures::parse(&VmText::new(&l0, ""), &VmText::new(&l1, ""));
    match f.problem(a.mib) {
        Some(why) => Err(format!(
            "plain QEMU: {why}\n--- VM 0 ---\n{r0}\n--- VM 1 ---\n{r1}"
        )),
        None => Ok(f),
    }
}

fn cell(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

fn ratio(ours: Option<f64>, plain: Option<f64>) -> String {
    match (ours, plain) {
        (Some(o), Some(p)) if p > 0.0 => format!("{:.2}x", o / p),
        _ => "-".into(),
    }
}

fn print_table(mib: u32, ours: &NetFigures, plain: &NetFigures) {
    println!(
        "{:<34} {:>14} {:>14} {:>10}",
        "", "splitvisor", "plain QEMU", "ratio"
    );
    let row = |name: &str, o: Option<f64>, p: Option<f64>, digits: usize| {
        println!(
            "{name:<34} {:>14} {:>14} {:>10}",
            cell(o, digits),
            cell(p, digits),
            ratio(o, p)
        );
    };
    for (i, what) in ["min", "avg", "max"].iter().enumerate() {
        row(
            &format!("ping RTT {what} ms (guest)"),
            ours.rtt_ms.map(|r| r[i]),
            plain.rtt_ms.map(|r| r[i]),
            3,
        );
    }
    let answered = |f: &NetFigures| Some(f64::from(f.pings_received));
    row("pings answered of 20", answered(ours), answered(plain), 0);
    let wall = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
    row(
        "20 pings, wall s",
        wall(ours.ping_wall),
        wall(plain.ping_wall),
        2,
    );
    row(
        &format!("TCP {mib} MiB, MiB/s (guest)"),
        ours.guest_rate(),
        plain.guest_rate(),
        3,
    );
    row(
        &format!("TCP {mib} MiB, MiB/s (wall)"),
        ours.wall_rate(),
        plain.wall_rate(),
        3,
    );
    row(
        &format!("TCP {mib} MiB, wall s"),
        wall(ours.tcp_wall),
        wall(plain.tcp_wall),
        2,
    );
    println!(
        "(guest: ping's own figures and VM 0's /proc/uptime around the send, under -icount {} \
         an instruction count, and each plain QEMU's clock races ahead while its guest waits; \
         wall: host time between the lines' arrival, VM 0's before the send to VM 1's after \
         the receive; MD5 {} the same on both sides both ways)",
        splitvisor::run::QEMU_ICOUNT,
        ours.md5_sent
    );
}

/// Runs `splitvisor bench net`; returns the exit status.
pub fn bench_net(a: &NetArgs) -> i32 {
    match run(a) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("splitvisor: bench net: {e}");
            1
        }
    }
}

fn run(a: &NetArgs) -> Result<(), String> {
    let qemu = splitvisor::run::find_program(splitvisor::DEFAULT_EMULATOR)
        .ok_or("qemu-system-x86_64 is not installed")?;
    let guest = splitvisor::linux::prepare_debian_linux(Flavour::Amd64)?;
    println!("Guest kernel: {}", guest.packages);
    println!(
        "Emulator: {}",
        splitvisor::run::emulator_version(&qemu.to_string_lossy())
    );
    println!(
        "Two Debian amd64 VMs of {RAM_MIB} MiB, QEMU TCG -icount {}: splitvisor --vms 2 --net \
         switch (npt, one CPU, -cpu EPYC,+svm,+npt) against two plain QEMUs (-cpu EPYC, \
         virtio-net-pci on -netdev socket)",
        splitvisor::run::QEMU_ICOUNT
    );
    let ours = splitvisor_way(a)?;
    let plain = plain_way(a, qemu, &guest)?;
    print_table(a.mib, &ours, &plain);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64, l: &str) -> (Duration, String) {
        (Duration::from_millis(ms), l.to_string())
    }

    #[test]
    fn records_are_read_across_cut_lines_and_timed_by_their_end() {
        let md5 = "0123456789abcdef0123456789abcdef";
        let lines = [
            at(100, "[vm0] splitvisor-linux: net bench ping-begin;"),
            at(
                200,
                "[vm0] splitvisor-linux: net bench ping 20 19 0.5/1.25/4.0;",
            ),
            at(300, "[vm0] splitvisor-linux: net bench tcp-begin;"),
            at(400, "[vm1] [   3.1] some kernel line"),
            at(2300, "[vm0] splitvisor-linux: net bench tcp-se"),
            at(2350, "[sys] switch: port 1 in=8"),
            at(2400, &format!("[vm0] nt 8388608 10.00 14.00 {md5};")),
            at(
                2500,
                &format!("[vm1] splitvisor-linux: net bench tcp-received 8388608 20.5 {md5};"),
            ),
        ];
        let f = NetFigures::parse(
            &VmText::new(&lines, "[vm0] "),
            &VmText::new(&lines, "[vm1] "),
        );
        assert_eq!(f.pings_sent, 20);
        assert_eq!(f.pings_received, 19);
        assert_eq!(f.rtt_ms, Some([0.5, 1.25, 4.0]));
        assert_eq!(f.ping_wall, Some(Duration::from_millis(100)));
        assert_eq!(f.bytes_sent, 8 << 20);
        assert_eq!(f.send_guest_s, Some(4.0));
        assert_eq!(f.tcp_wall, Some(Duration::from_millis(2200)));
        assert_eq!(f.problem(8), None);
        assert_eq!(f.guest_rate(), Some(2.0));
        assert!(f.problem(4).is_some(), "the wrong size");
    }

    #[test]
    fn a_record_without_its_end_or_answers_is_a_problem() {
        let lines = [
            at(1, "splitvisor-linux: net bench ping 20 0 none;"),
            at(2, "splitvisor-linux: net bench tcp-sent 8388608 1 2"),
        ];
        let v = VmText::new(&lines, "");
        let f = NetFigures::parse(&v, &VmText::new(&[], ""));
        assert_eq!(f.rtt_ms, None);
        assert_eq!(f.bytes_sent, 0);
        assert_eq!(
            f.problem(8).as_deref(),
            Some("no round trips (0 of 20 pings answered)")
        );
    }

    #[test]
    fn only_a_listening_socket_counts() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(listening(port));
        drop(l);
        assert!(!listening(port));
    }
}
