//! The reference for splitvisor's virtio devices: Debian's kernel and the
//! `--linux` initramfs on **plain QEMU** (TCG with the same instruction
//! clock as every other boot, no splitvisor) with QEMU's own virtio-pci
//! devices: virtio-blk on a raw image, virtio-serial with a virtconsole
//! (the guest's `hvc0`) and, if asked, virtio-rng. The initramfs loads the
//! modules ([`crate::linux_modules`]); `splitvisor.disk=write|read` on the
//! command line runs `/init`'s disk check ([`crate::linux::INIT`]).
//!
//! The console the kernel prefers ([`GuestConsole`], the last `console=`)
//! comes out on QEMU's stdout and is timed line by line; the other one goes
//! to a file read after the run. Both carry the kernel's messages.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::linux::{LinuxGuest, INIT_MARKER};
use crate::run::TimedConsole;
use crate::run::{find_program, run_command, Console};

/// Which console the guest's kernel and `/init` prefer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestConsole {
    /// `console=hvc0 console=ttyS0`: COM1 (ttyS0) is the console.
    Serial,
    /// `console=ttyS0 console=hvc0`: the virtconsole (hvc0) is; the kernel's
    /// messages reach it once `/init` has loaded `virtio_console` (those
    /// before are replayed), `/init`'s after it reopens `/dev/console`.
    Hvc,
}

impl GuestConsole {
    /// The `console=` options, the preferred one last.
    pub fn cmdline(self) -> &'static str {
        match self {
            GuestConsole::Serial => "console=hvc0 console=ttyS0",
            GuestConsole::Hvc => "console=ttyS0 console=hvc0",
        }
    }

    /// The device's name in the guest.
    pub fn name(self) -> &'static str {
        match self {
            GuestConsole::Serial => "ttyS0",
            GuestConsole::Hvc => "hvc0",
        }
    }
}

/// One plain-QEMU boot with virtio devices.
#[derive(Clone, Debug)]
pub struct PlainVirtio {
    /// QEMU.
    pub qemu: PathBuf,
    /// The kernel and initramfs ([`crate::linux::prepare_debian_linux`]).
    pub guest: LinuxGuest,
    /// A raw image for virtio-blk (`/dev/vda`), if any.
    pub disk: Option<PathBuf>,
    /// Also a virtio-rng device.
    pub rng: bool,
    /// The console the kernel prefers; both consoles are on the command
    /// line and the machine has the virtconsole either way.
    pub console: GuestConsole,
    /// More of the kernel's command line, after the `console=` options.
    pub append: String,
    /// QEMU's `-cpu` (`EPYC`, as `bench boot`'s plain boot).
    pub cpu: String,
    /// QEMU's `-icount` ([`crate::run::QEMU_ICOUNT`] unless changed; none:
    /// the guest's clock is the host's). With `sleep=off` an idle guest's
    /// clock jumps to its next timer at once, so while the guest waits for
    /// a disk request QEMU completes on a host thread, guest time races
    /// ahead (minutes of it in the wall milliseconds of a `sync`, and the
    /// kernel's hung-task warnings after "120 seconds"): the wall times
    /// hold, the guest's own figures for disk I/O do not.
    pub icount: Option<String>,
    /// Guest RAM.
    pub ram_mib: u32,
    /// Kill QEMU after this long.
    pub timeout: Duration,
    /// Where the console that is not on stdout goes (a file QEMU writes).
    pub other_console: PathBuf,
    /// More of QEMU's arguments (a NIC and its network).
    pub extra: Vec<String>,
}

impl PlainVirtio {
    /// A boot of `guest` with the defaults: no disk, no rng, ttyS0 the
    /// console, `-cpu EPYC`, `-icount` [`crate::run::QEMU_ICOUNT`],
    /// [`crate::linux::LINUX_RAM_MIB`], 90 s, the
    /// other console in the system's temporary directory.
    pub fn new(qemu: PathBuf, guest: LinuxGuest) -> Self {
        let other_console = std::env::temp_dir().join(format!(
            "splitvisor-plain-virtio-{}-{:?}.console",
            std::process::id(),
            std::thread::current().id()
        ));
        PlainVirtio {
            qemu,
            guest,
            disk: None,
            rng: false,
            console: GuestConsole::Serial,
            append: String::new(),
            cpu: "EPYC".to_string(),
            icount: Some(crate::run::QEMU_ICOUNT.to_string()),
            ram_mib: crate::linux::LINUX_RAM_MIB,
            timeout: Duration::from_secs(90),
            other_console,
            extra: Vec::new(),
        }
    }

    /// The kernel's command line.
    pub fn cmdline(&self) -> String {
        let mut s = self.console.cmdline().to_string();
        if !self.append.is_empty() {
            s = format!("{s} {}", self.append);
        }
        s
    }

    /// QEMU's arguments.
    pub fn args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |s: &str| a.push(s.into());
        push("-accel");
        push("tcg");
        if let Some(icount) = &self.icount {
            push("-icount");
            push(icount);
        }
        let ram = self.ram_mib.to_string();
        for s in [
            "-cpu",
            &self.cpu,
            "-m",
            &ram,
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
            "-monitor",
            "none",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=1",
        ] {
            push(s);
        }
        let other = self.other_console.to_string_lossy().into_owned();
        match self.console {
            GuestConsole::Serial => {
                for s in ["-serial", "stdio", "-chardev"] {
                    push(s);
                }
                push(&format!("file,id=hvc0,path={other}"));
            }
            GuestConsole::Hvc => {
                push("-serial");
                push(&format!("file:{other}"));
                for s in ["-chardev", "stdio,id=hvc0,signal=off"] {
                    push(s);
                }
            }
        }
        for s in [
            "-device",
            "virtio-serial-pci",
            "-device",
            "virtconsole,chardev=hvc0",
        ] {
            push(s);
        }
        if let Some(disk) = &self.disk {
            push("-drive");
            // QEMU's option syntax doubles a comma inside a value.
            let file = disk.to_string_lossy().replace(',', ",,");
            push(&format!("if=none,id=d0,format=raw,file={file}"));
            push("-device");
            push("virtio-blk-pci,drive=d0");
        }
        if self.rng {
            push("-device");
            push("virtio-rng-pci");
        }
        for s in &self.extra {
            push(s);
        }
        push("-append");
        push(&self.cmdline());
        a.push("-kernel".into());
        a.push(self.guest.kernel.clone().into_os_string());
        a.push("-initrd".into());
        a.push(self.guest.initrd.clone().into_os_string());
        a
    }

    /// Boots and waits for QEMU to end (or kills it at the timeout).
    pub fn run(&self) -> Result<PlainVirtioRun, String> {
        let _ = std::fs::remove_file(&self.other_console);
        let mut cmd = Command::new(&self.qemu);
        cmd.args(self.args());
        let start = Instant::now();
        let timed = TimedConsole {
            start,
            inner: Arc::default(),
        };
        let program = self.qemu.to_string_lossy().into_owned();
        let report = run_command(
            cmd,
            &program,
            self.timeout,
            Console::Stdout,
            Box::new(timed.clone()),
        )
        .map_err(|e| e.to_string())?;
        let wall = start.elapsed();
        let other = std::fs::read(&self.other_console)
            .map(|b| String::from_utf8_lossy(&b).replace('\r', ""))
            .unwrap_or_default();
        let _ = std::fs::remove_file(&self.other_console);
        let g = timed.inner.lock().unwrap();
        let preferred = String::from_utf8_lossy(&g.bytes).replace('\r', "");
        let (serial, hvc) = match self.console {
            GuestConsole::Serial => (preferred, other),
            GuestConsole::Hvc => (other, preferred),
        };
        Ok(PlainVirtioRun {
            serial,
            hvc,
            to_marker: g.when(INIT_MARKER),
            lines: g.lines.clone(),
            wall,
            status: report.status.and_then(|s| s.code()),
            timed_out: report.timed_out,
            stderr: report.stderr,
        })
    }
}

/// What one [`PlainVirtio`] boot showed.
#[derive(Clone, Debug)]
pub struct PlainVirtioRun {
    /// Everything on ttyS0.
    pub serial: String,
    /// Everything on hvc0.
    pub hvc: String,
    /// QEMU's start to the init marker on the preferred console.
    pub to_marker: Option<Duration>,
    /// The preferred console's lines, each with when it was complete.
    pub lines: Vec<(Duration, String)>,
    /// QEMU's start to its end.
    pub wall: Duration,
    /// QEMU's exit status (0 after the guest's ACPI power-off).
    pub status: Option<i32>,
    /// QEMU was killed at the timeout.
    pub timed_out: bool,
    /// The end of QEMU's stderr.
    pub stderr: String,
}

impl PlainVirtioRun {
    /// When the first line starting with `prefix` was complete on the
    /// preferred console.
    pub fn when(&self, prefix: &str) -> Option<Duration> {
        self.lines
            .iter()
            .find(|(_, l)| l.starts_with(prefix))
            .map(|(t, _)| *t)
    }
}

impl std::fmt::Display for PlainVirtioRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "QEMU status {:?}{}, {:.2} s\n--- ttyS0 ---\n{}\n--- hvc0 ---\n{}\n--- QEMU's stderr ---\n{}",
            self.status,
            if self.timed_out { " (timed out)" } else { "" },
            self.wall.as_secs_f64(),
            self.serial,
            self.hvc,
            self.stderr
        )
    }
}

/// `mkfs.ext4`, on `PATH` or in `/sbin` or `/usr/sbin` (which a user's
/// `PATH` may lack).
pub fn find_mkfs_ext4() -> Option<PathBuf> {
    find_program("mkfs.ext4").or_else(|| {
        ["/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
    })
}

/// Makes `path` a fresh raw image of `mib` MiB holding an empty ext4 file
/// system (`mkfs.ext4 -F -q`, from e2fsprogs, on the host).
pub fn make_ext4_image(path: &Path, mib: u64) -> Result<(), String> {
    make_ext4_image_of(path, mib, None)
}

/// [`make_ext4_image`] whose file system holds a copy of the folder `root`
/// (`mkfs.ext4 -d root`): files a guest reads without a boot writing them.
pub fn make_ext4_image_holding(path: &Path, mib: u64, root: &Path) -> Result<(), String> {
    make_ext4_image_of(path, mib, Some(root))
}

fn make_ext4_image_of(path: &Path, mib: u64, root: Option<&Path>) -> Result<(), String> {
    let mkfs = find_mkfs_ext4().ok_or_else(|| {
        "mkfs.ext4 not found: install e2fsprogs (scripts/install-deps does)".to_string()
    })?;
    let f = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    f.set_len(mib << 20)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    drop(f);
    let out = Command::new(&mkfs)
        .args(["-F", "-q"])
        .args(root.iter().flat_map(|r| [Path::new("-d"), r]))
        .arg(path)
        .output()
        .map_err(|e| format!("could not run {}: {e}", mkfs.display()))?;
    if !out.status.success() {
        return Err(format!(
            "mkfs.ext4 {} failed ({}): {}",
            path.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boot() -> PlainVirtio {
        let guest = LinuxGuest {
            kernel: "/k/vmlinuz".into(),
            initrd: "/k/initrd,x.cpio".into(),
            packages: String::new(),
        };
        let mut b = PlainVirtio::new("qemu-system-x86_64".into(), guest);
        b.other_console = "/tmp/other".into();
        b
    }

    fn joined(b: &PlainVirtio) -> String {
        b.args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn the_preferred_console_is_on_stdout_and_last_on_the_command_line() {
        let mut b = boot();
        b.append = "splitvisor.exit".into();
        let a = joined(&b);
        assert!(
            a.contains("-serial stdio -chardev file,id=hvc0,path=/tmp/other"),
            "{a}"
        );
        assert!(a.contains("-device virtio-serial-pci -device virtconsole,chardev=hvc0"));
        assert!(a.contains("-append console=hvc0 console=ttyS0 splitvisor.exit -kernel"));
        assert!(
            a.starts_with("-accel tcg -icount shift=2,align=off,sleep=off -cpu EPYC"),
            "{a}"
        );
        assert!(
            !a.contains("virtio-blk") && !a.contains("virtio-rng"),
            "{a}"
        );
        b.console = GuestConsole::Hvc;
        let a = joined(&b);
        assert!(a.contains("-serial file:/tmp/other -chardev stdio,id=hvc0,signal=off"));
        assert!(a.contains("-append console=ttyS0 console=hvc0 splitvisor.exit"));
        b.icount = None;
        assert!(joined(&b).starts_with("-accel tcg -cpu EPYC"));
    }

    #[test]
    fn a_disk_is_a_raw_virtio_blk_drive() {
        let mut b = boot();
        b.disk = Some("/d/a,b.img".into());
        b.rng = true;
        let a = joined(&b);
        assert!(
            a.contains(
                "-drive if=none,id=d0,format=raw,file=/d/a,,b.img -device virtio-blk-pci,drive=d0"
            ),
            "{a}"
        );
        assert!(a.contains("-device virtio-rng-pci"), "{a}");
    }
}
