//! `splitvisor bench io`: the guest's disk throughput through splitvisor
//! (virtio-blk server + disk-driver, ATA PIO on QEMU's IDE disk) against
//! plain QEMU's own virtio-blk-pci on the same kind of image, in one run.
//!
//! Both boots run Debian's amd64 kernel with `splitvisor.disk=bench`
//! (`/init` times sequential 64 KiB writes and reads and 4 KiB random
//! reads on `/dev/vda` with busybox `dd`, by the guest's `/proc/uptime`:
//! [`splitvisor::linux::IO_LINE`]); the guest's clock is the host's in both
//! (TCG without `-icount`), so the figures compare.

use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;

use splitvisor::linux::{Flavour, IO_BEGIN, IO_LINE};
use splitvisor::linux_virtio::PlainVirtio;

/// `splitvisor bench io`.
#[derive(Args)]
pub struct IoArgs {
    /// Kill a boot after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 600,
          value_parser = clap::value_parser!(u64).range(1..))]
    timeout: u64,
}

/// One timed part: its name, bytes moved and host seconds.
#[derive(Clone, Debug, PartialEq)]
pub struct IoFigure {
    /// `seq-write`, `seq-read`, `rand-read-4k`.
    pub name: String,
    /// Bytes moved.
    pub bytes: u64,
    /// Host seconds between the part's two lines.
    pub seconds: f64,
}

/// The parts timed in `lines` (each console line with when it arrived):
/// from each [`IO_BEGIN`] line to its [`IO_LINE`] line (found anywhere in
/// a line: a kernel message may come first).
pub fn parse_io_lines(lines: &[(Duration, String)]) -> Vec<IoFigure> {
    let after = |l: &str, p: &str| l.find(p).map(|i| l[i + p.len()..].to_string());
    let mut begun: Vec<(String, Duration)> = Vec::new();
    let mut out = Vec::new();
    for (t, l) in lines {
        if let Some(name) = after(l, IO_BEGIN) {
            begun.push((name.trim().to_string(), *t));
        } else if let Some(rest) = after(l, IO_LINE) {
            let mut w = rest.split_whitespace();
            let (Some(name), Some(bytes)) = (w.next(), w.next().and_then(|b| b.parse().ok()))
            else {
                continue;
            };
            if let Some((_, t0)) = begun.iter().find(|(n, _)| n == name) {
                out.push(IoFigure {
                    name: name.to_string(),
                    bytes,
                    seconds: t.saturating_sub(*t0).as_secs_f64(),
                });
            }
        }
    }
    out
}

/// Runs `cmd` and returns its stdout's lines, each with when it arrived.
pub(crate) fn timed_lines(mut cmd: Command) -> Result<Vec<(Duration, String)>, String> {
    let start = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut lines = Vec::new();
    for l in std::io::BufReader::new(stdout).split(b'\n') {
        let l = l.map_err(|e| e.to_string())?;
        lines.push((start.elapsed(), String::from_utf8_lossy(&l).into_owned()));
    }
    let _ = child.wait();
    Ok(lines)
}

fn scratch_image(path: &Path) -> Result<(), String> {
    let f = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    f.set_len(64 << 20)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// `MB/s` for the sequential parts, `reads/s` for the random one.
fn rate(f: &IoFigure) -> String {
    if f.seconds <= 0.0 {
        return "-".into();
    }
    if f.name.starts_with("rand") {
        format!("{:.0} reads/s", f.bytes as f64 / 4096.0 / f.seconds)
    } else {
        format!("{:.2} MB/s", f.bytes as f64 / 1e6 / f.seconds)
    }
}

/// Runs the benchmark; returns the exit status.
pub fn bench_io(a: &IoArgs) -> i32 {
    match run(a) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("splitvisor: bench io: {e}");
            1
        }
    }
}

fn run(a: &IoArgs) -> Result<(), String> {
    let guest = splitvisor::linux::prepare_debian_linux(Flavour::Amd64)?;
    println!("Guest kernel: {}", guest.packages);
    println!(
        "Emulator: {}",
        splitvisor::run::emulator_version(splitvisor::DEFAULT_EMULATOR)
    );
    let dir = std::env::temp_dir().join(format!("splitvisor-bench-io-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let img = dir.join("disk.img");
    let result = (|| {
        scratch_image(&img)?;
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        eprintln!("bench io: splitvisor (npt, virtio-blk server + disk-driver) ...");
        let mut cmd = Command::new(exe);
        cmd.args(["run", "--linux", "amd64", "--board", "pc", "--mmu", "npt"])
            .args(["--cpu", "EPYC,+svm,+npt", "--disk"])
            .arg(&img)
            .args(["--append", "splitvisor.disk=bench"])
            .args(["--timeout", &a.timeout.to_string()]);
        let lines = timed_lines(cmd)?;
        let ours = parse_io_lines(&lines);
        if ours.len() != 3 {
            let text: Vec<&str> = lines.iter().map(|(_, l)| l.as_str()).collect();
            return Err(format!(
                "the splitvisor boot printed {} of 3 io lines:\n{}",
                ours.len(),
                text.join("\n")
            ));
        }
        scratch_image(&img)?;
        eprintln!("bench io: plain QEMU (its own virtio-blk-pci) ...");
        let qemu = splitvisor::run::find_program(splitvisor::DEFAULT_EMULATOR)
            .ok_or("qemu-system-x86_64 is not installed")?;
        let mut p = PlainVirtio::new(qemu, guest.clone());
        p.disk = Some(img.clone());
        p.append = "splitvisor.disk=bench".into();
        p.icount = None;
        p.timeout = Duration::from_secs(a.timeout);
        let plain_run = p.run()?;
        let plain = parse_io_lines(&plain_run.lines);
        if plain.len() != 3 {
            return Err(format!(
                "the plain QEMU boot printed {} of 3 io lines\n{plain_run}",
                plain.len()
            ));
        }
        println!(
            "{:<14} {:>10} {:>18} {:>18} {:>8}",
            "", "bytes", "splitvisor", "plain QEMU", "ratio"
        );
        for (o, p) in ours.iter().zip(&plain) {
            let ratio = if o.seconds > 0.0 {
                format!("{:.1}x", o.seconds / p.seconds.max(0.01))
            } else {
                "-".into()
            };
            println!(
                "{:<14} {:>10} {:>18} {:>18} {:>8}",
                o.name,
                o.bytes,
                rate(o),
                rate(p),
                ratio
            );
        }
        println!("(host time between the guest's lines before and after each part; ratio: splitvisor's time over plain QEMU's)");
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_lines_are_timed_from_begin_to_end() {
        let at = |ms: u64, l: &str| (Duration::from_millis(ms), l.to_string());
        let lines = [
            at(100, "splitvisor-linux: io-begin seq-write"),
            at(
                2100,
                "[  1.0] foo splitvisor-linux: io seq-write 16777216 10.50 12.50",
            ),
            at(2200, "splitvisor-linux: io-begin rand-read-4k"),
            at(2700, "splitvisor-linux: io rand-read-4k 819200 3 3.5"),
            at(2800, "splitvisor-linux: io seq-read 100 1 2"),
        ];
        let f = parse_io_lines(&lines);
        assert_eq!(f.len(), 2, "no begin, no figure");
        assert_eq!(f[0].name, "seq-write");
        assert!((f[0].seconds - 2.0).abs() < 1e-9);
        assert_eq!(rate(&f[0]), "8.39 MB/s");
        assert_eq!(rate(&f[1]), "400 reads/s");
    }
}
