//! `splitvisor bench io`: the guest's disk throughput through splitvisor
//! (virtio-blk server + disk-driver, ATA PIO on QEMU's IDE disk) against
//! plain QEMU's own virtio-blk-pci on the same kind of image, in one run.
//!
//! Both boots run Debian's amd64 kernel with `splitvisor.disk=bench`
//! (`/init` times sequential 64 KiB writes and reads and 4 KiB random
//! reads on `/dev/vda` with busybox `dd`, by the guest's `/proc/uptime`:
//! [`splitvisor::linux::IO_LINE`]); the guest's clock is the host's in both
//! (TCG without `-icount`), so the figures compare.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use clap::Args;

use splitvisor::linux::{Flavour, IO_LINE};
use splitvisor::linux_virtio::PlainVirtio;

/// `splitvisor bench io`.
#[derive(Args)]
pub struct IoArgs {
    /// Kill a boot after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 600,
          value_parser = clap::value_parser!(u64).range(1..))]
    timeout: u64,
}

/// One timed part: its name, bytes moved and guest seconds.
#[derive(Clone, Debug, PartialEq)]
pub struct IoFigure {
    /// `seq-write`, `seq-read`, `rand-read-4k`.
    pub name: String,
    /// Bytes moved.
    pub bytes: u64,
    /// Guest seconds it took.
    pub seconds: f64,
}

/// The [`IO_LINE`] lines of a console (anywhere in a line: a kernel
/// message may come first).
pub fn parse_io_lines(console: &str) -> Vec<IoFigure> {
    console
        .lines()
        .filter_map(|l| {
            let rest = &l[l.find(IO_LINE)? + IO_LINE.len()..];
            let mut w = rest.split_whitespace();
            let name = w.next()?.to_string();
            let bytes = w.next()?.parse().ok()?;
            let a: f64 = w.next()?.parse().ok()?;
            let b: f64 = w.next()?.parse().ok()?;
            Some(IoFigure {
                name,
                bytes,
                seconds: b - a,
            })
        })
        .collect()
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
    let dir = std::env::temp_dir().join(format!("splitvisor-bench-io-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let img = dir.join("disk.img");
    let result = (|| {
        scratch_image(&img)?;
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        eprintln!("bench io: splitvisor (npt, virtio-blk server + disk-driver) ...");
        let out = Command::new(exe)
            .args(["run", "--linux", "amd64", "--board", "pc", "--mmu", "npt"])
            .args(["--cpu", "EPYC,+svm,+npt", "--disk"])
            .arg(&img)
            .args(["--append", "pci=lastbus=1 splitvisor.disk=bench"])
            .args(["--timeout", &a.timeout.to_string()])
            .output()
            .map_err(|e| e.to_string())?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let ours = parse_io_lines(&stdout);
        if ours.len() != 3 {
            return Err(format!(
                "the splitvisor boot printed {} of 3 io lines:\n{stdout}\n{}",
                ours.len(),
                String::from_utf8_lossy(&out.stderr)
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
        let plain = parse_io_lines(&plain_run.serial);
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
        println!("(guest seconds by /proc/uptime, 10 ms resolution; ratio: splitvisor's time over plain QEMU's)");
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_lines_are_found_after_kernel_messages() {
        let text = "x\n[  1.0] foo splitvisor-linux: io seq-write 16777216 10.50 12.50\nsplitvisor-linux: io rand-read-4k 819200 3 3.5\nsplitvisor-linux: io bad\n";
        let f = parse_io_lines(text);
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].name, "seq-write");
        assert!((f[0].seconds - 2.0).abs() < 1e-9);
        assert_eq!(rate(&f[0]), "8.39 MB/s");
        assert_eq!(rate(&f[1]), "400 reads/s");
    }
}
