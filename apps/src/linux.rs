//! `splitvisor run --linux [amd64|686|686-pae]`: one of Debian's stock
//! kernels and a busybox initramfs, fetched as Debian packages into
//! `<root>/.cache/linux/` (git-ignored; nothing downloaded is committed).
//!
//! 1. `apt-get download linux-image-FLAVOUR:ARCH busybox-static:ARCH`
//!    (ARCH is amd64 or, for the 32-bit kernels, i386, which needs
//!    `dpkg --add-architecture i386` and `apt-get update`, as
//!    `scripts/install-deps` does); the metapackage's `Depends` names the
//!    versioned `linux-image-*-FLAVOUR`, which is downloaded too. Packages
//!    already in the cache are reused.
//! 2. `dpkg-deb -x` unpacks the kernel package (for `boot/vmlinuz-*`) and
//!    busybox (`bin/busybox`).
//! 3. `gcc` builds the MMU workload (`apps/linux/workload.c`, no libc) for
//!    the kernel's architecture.
//! 4. The initramfs is an uncompressed cpio (newc) archive
//!    ([`images::linux::Cpio`]): busybox, the workload, `/dev/console`, and
//!    [`INIT`].

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use images::linux::Cpio;
use ipc_proto::manifest::Board;

/// Guest RAM for Linux guests unless `--ram` says otherwise.
pub const LINUX_RAM_MIB: u32 = 256;

/// The command line `--linux` boots with (`--append` adds to it), before
/// [`tsc_option`].
///
/// `console=ttyS0` puts the kernel's console and the shell on COM1;
/// `earlyprintk=serial` shows the messages before the console driver
/// starts, which is where an unsupported device stops a boot; `panic=-1`
/// reboots at once after a panic (the i8042 reset ends the VM) instead of
/// spinning until the timeout, the panic's message still on the console.
/// `tsc=reliable` keeps the clocksource watchdog from judging the TSC by
/// jiffies: the TSC is the host's (invariant, not intercepted), while
/// jiffies here lose the ticks that fall while the kernel keeps interrupts
/// off through long console writes, each character a trapped UART access
/// costing tens of microseconds; without it the watchdog marks the TSC
/// unstable within two seconds of boot and the kernel's clock becomes
/// jiffies, which then run slow.
pub const DEFAULT_APPEND: &str =
    "console=ttyS0 earlyprintk=serial,ttyS0,115200 panic=-1 tsc=reliable";

/// What `--linux` puts before the user's command line on the PC board:
/// the serial console and nothing else. The kernel finds its clocks (the
/// ACPI PM timer, the local APIC timer) and calibrates the TSC itself.
pub const PC_BOARD_APPEND: &str = "console=ttyS0";

/// The full `--linux` command line. On the ISA board: [`DEFAULT_APPEND`],
/// `tsc_early_khz=` with the guest's TSC rate (`guest_tsc_khz`, or the
/// host's: see [`tsc_option`]) and the user's `extra`. On the PC board:
/// [`PC_BOARD_APPEND`] and `extra`.
pub fn default_append(extra: Option<&str>, guest_tsc_khz: Option<u64>, board: Board) -> String {
    let mut s = match board {
        Board::Pc => PC_BOARD_APPEND.to_string(),
        Board::Isa => DEFAULT_APPEND.to_string(),
    };
    if board == Board::Isa {
        if let Some(t) = guest_tsc_khz
            .map(|khz| format!("tsc_early_khz={khz}"))
            .or_else(tsc_option)
        {
            s = format!("{s} {t}");
        }
    }
    if let Some(e) = extra.filter(|e| !e.is_empty()) {
        s = format!("{s} {e}");
    }
    s
}

/// `tsc_early_khz=N` with the host's TSC frequency, which is the guest's
/// where the emulator reads the host TSC for RDTSC (QEMU with KVM; the
/// stub does not offset it) -- the callers pass the rate when they know
/// it: 1 GHz under QEMU's TCG with its instruction clock
/// ([`crate::run::QEMU_TSC_KHZ`]), Bochs's own ([`crate::bochs::TSC_KHZ`]).
/// On the ISA board it is needed because the guest has no clock to
/// calibrate the TSC against that it can read fast enough: Linux's PIT calibration needs thousands of
/// port reads in 10 ms (each one is a VM exit costing tens to hundreds of
/// microseconds here), and there is no HPET or ACPI PM timer. Without it
/// the TSC is marked unstable and `calibrate_delay` spins on `jiffies`
/// without an exit, so the PIT tick never comes and the boot stops.
pub fn tsc_option() -> Option<String> {
    host_tsc_khz().map(|khz| format!("tsc_early_khz={khz}"))
}

/// The host's TSC frequency in kHz, measured over 100 ms.
#[cfg(target_arch = "x86_64")]
pub fn host_tsc_khz() -> Option<u64> {
    #[allow(unused_unsafe)]
    // SAFETY: RDTSC has no preconditions on x86-64.
    let rdtsc = || unsafe { core::arch::x86_64::_rdtsc() };
    let t0 = std::time::Instant::now();
    let c0 = rdtsc();
    std::thread::sleep(std::time::Duration::from_millis(100));
    let c1 = rdtsc();
    let secs = t0.elapsed().as_secs_f64();
    #[allow(
        clippy::cast_sign_loss,
        reason = "ticks over elapsed time are not negative (and `as` saturates at 0)"
    )]
    let khz = (c1.wrapping_sub(c0) as f64 / secs / 1000.0) as u64;
    (khz > 1000).then_some(khz)
}

/// The host's TSC frequency (none off x86-64).
#[cfg(not(target_arch = "x86_64"))]
pub fn host_tsc_khz() -> Option<u64> {
    None
}

/// Which of Debian's kernels `--linux` boots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Flavour {
    /// `linux-image-amd64`: x86-64, four-level paging.
    Amd64,
    /// `linux-image-686`: i386 with two-level (non-PAE) paging.
    #[value(name = "686")]
    I686,
    /// `linux-image-686-pae`: i386 with PAE paging.
    #[value(name = "686-pae")]
    I686Pae,
}

impl Flavour {
    /// All flavours, 64-bit first.
    pub const ALL: [Flavour; 3] = [Flavour::Amd64, Flavour::I686, Flavour::I686Pae];

    /// The name `--linux` takes (and Debian's flavour name).
    pub fn name(self) -> &'static str {
        match self {
            Flavour::Amd64 => "amd64",
            Flavour::I686 => "686",
            Flavour::I686Pae => "686-pae",
        }
    }

    /// Debian's architecture of the packages.
    pub fn debian_arch(self) -> &'static str {
        match self {
            Flavour::Amd64 => "amd64",
            Flavour::I686 | Flavour::I686Pae => "i386",
        }
    }

    fn metapackage(self) -> String {
        format!("linux-image-{}", self.name())
    }

    /// What `uname -m` prints in this kernel.
    pub fn machine(self) -> &'static str {
        match self {
            Flavour::Amd64 => "x86_64",
            Flavour::I686 | Flavour::I686Pae => "i686",
        }
    }
}

/// The marker `/init` prints once it runs.
pub const INIT_MARKER: &str = "splitvisor-linux: init started";

/// The line `/init` prints after the workload, with its exit status (the
/// number of parts that failed).
pub const WORKLOAD_END: &str = "splitvisor-linux: workload exit status ";

/// The initramfs's `/init`: mounts proc, sys and devtmpfs, prints the
/// marker and `uname -a`, then hands over to busybox `init` ([`INITTAB`]:
/// a shell on ttyS0; `poweroff`, `halt` and `reboot` end the VM with status
/// 0). With `splitvisor.workload` on the kernel command line it first runs
/// `/bin/workload` (fork+exec, pipe ping-pong, mmap/munmap; see
/// `apps/linux/workload.c`) and prints [`WORKLOAD_END`]; with
/// `splitvisor.platform` it prints `/proc/interrupts` and the clock source;
/// with `splitvisor.exit` it then ends the VM with status 0 instead of
/// starting the shell, for tests and benchmarks.
pub const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /sbin /usr/bin /usr/sbin
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "splitvisor-linux: init started"
uname -a
case " $(cat /proc/cmdline) " in
*" splitvisor.workload "*)
    /bin/workload
    echo "splitvisor-linux: workload exit status $?"
    ;;
esac
case " $(cat /proc/cmdline) " in
*" splitvisor.platform "*)
    echo "splitvisor-linux: /proc/interrupts"
    cat /proc/interrupts
    echo "splitvisor-linux: clocksource $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)"
    ;;
esac
case " $(cat /proc/cmdline) " in
*" splitvisor.exit "*)
    /sbin/splitvisor-exit
    ;;
esac
echo "splitvisor-linux: starting a shell on ttyS0 (poweroff ends the VM)"
exec /bin/busybox init
"#;

/// busybox init's table: a shell on the console (cttyhack makes it the
/// controlling terminal, ttyS0), and the VM's end on shutdown.
pub const INITTAB: &str = "ttyS0::respawn:-/bin/sh
::shutdown:/sbin/splitvisor-exit
";

/// Ends the VM with status 0: with ACPI (the PC board) by powering off
/// (the kernel enters S5 through the FADT's PM1a control block), else by
/// the byte 0 to the debug-exit port 0xF4, through `/dev/port`.
pub const EXIT_SCRIPT: &str = "#!/bin/sh
if [ -e /sys/firmware/acpi/tables/FACP ]; then
    echo 'splitvisor-linux: powering off through ACPI'
    poweroff -f
fi
echo 'splitvisor-linux: exiting through port 0xf4'
printf '\\000' | dd of=/dev/port bs=1 seek=244 count=1 2>/dev/null
";

/// The kernel and initramfs `--linux` boots.
#[derive(Clone, Debug)]
pub struct LinuxGuest {
    /// Debian's bzImage.
    pub kernel: PathBuf,
    /// The busybox initramfs.
    pub initrd: PathBuf,
}

/// `<root>/.cache/linux`.
pub fn cache_dir() -> PathBuf {
    images::workspace_root().join(".cache").join("linux")
}

fn run(cmd: &mut Command, what: &str) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("could not run {what}: {e} (is it installed?)"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
        return Err(format!("{what} failed ({}): {last}", out.status));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The cached `.deb` of `package` for Debian architecture `arch`,
/// downloading it if it is not there.
pub(crate) fn fetch_deb(dir: &Path, package: &str, arch: &str) -> Result<PathBuf, String> {
    let find = || -> Option<PathBuf> {
        let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    n.starts_with(&format!("{package}_")) && n.ends_with(&format!("_{arch}.deb"))
                })
            })
            .collect();
        found.sort();
        found.pop()
    };
    if let Some(p) = find() {
        return Ok(p);
    }
    let spec = format!("{package}:{arch}");
    run(
        Command::new("apt-get")
            .args(["download", &spec])
            .current_dir(dir),
        &format!("apt-get download {spec}"),
    )
    .map_err(|e| {
        let hint = if arch == "amd64" {
            "run `apt-get update` (scripts/install-deps does)"
        } else {
            "the i386 packages need `dpkg --add-architecture i386 && apt-get update` \
             (scripts/install-deps does both)"
        };
        format!("could not download the Debian package {spec}: {e}; {hint}")
    })?;
    find().ok_or_else(|| {
        format!(
            "apt-get download {package} left no {package}_*.deb in {}",
            dir.display()
        )
    })
}

/// The versioned kernel package the metapackage depends on.
fn kernel_package(meta: &Path) -> Result<String, String> {
    let depends = run(
        Command::new("dpkg-deb")
            .args(["-f"])
            .arg(meta)
            .arg("Depends"),
        "dpkg-deb -f",
    )?;
    depends
        .split([',', '|'])
        .map(|d| d.split_whitespace().next().unwrap_or(""))
        .find(|d| d.starts_with("linux-image-"))
        .map(str::to_string)
        .ok_or_else(|| format!("{} depends on no linux-image-* package", meta.display()))
}

pub(crate) fn unpack(deb: &Path, into: &Path) -> Result<(), String> {
    let stamp = into.join(".unpacked");
    if stamp.is_file() {
        return Ok(());
    }
    std::fs::create_dir_all(into).map_err(|e| format!("{}: {e}", into.display()))?;
    run(
        Command::new("dpkg-deb").arg("-x").arg(deb).arg(into),
        &format!("dpkg-deb -x {}", deb.display()),
    )?;
    std::fs::write(&stamp, b"").map_err(|e| format!("{}: {e}", stamp.display()))
}

/// The initramfs: busybox, `/bin/workload`, `/dev/console`, `/init`,
/// `/etc/inittab` and `/sbin/splitvisor-exit`.
pub fn initramfs(busybox: &[u8], workload: &[u8]) -> Vec<u8> {
    let mut c = Cpio::new();
    for d in [
        "bin", "dev", "etc", "proc", "sys", "tmp", "sbin", "usr", "usr/bin", "usr/sbin",
    ] {
        c.dir(d);
    }
    c.chardev("dev/console", 5, 1);
    c.file("bin/busybox", 0o755, busybox);
    c.symlink("bin/sh", "busybox");
    c.file("bin/workload", 0o755, workload);
    c.file("init", 0o755, INIT.as_bytes());
    c.file("etc/inittab", 0o644, INITTAB.as_bytes());
    c.file("sbin/splitvisor-exit", 0o755, EXIT_SCRIPT.as_bytes());
    c.finish()
}

/// The source of `/bin/workload`.
pub const WORKLOAD_C: &str = include_str!("../linux/workload.c");

/// Builds the workload for `flavour`'s architecture with the host's gcc
/// into `dir`.
fn build_workload(dir: &Path, flavour: Flavour) -> Result<Vec<u8>, String> {
    let arch = flavour.debian_arch();
    let src = dir.join("workload.c");
    let out = dir.join(format!("workload-{arch}"));
    images::write_atomic(&src, WORKLOAD_C.as_bytes()).map_err(|e| e.to_string())?;
    let bits = if arch == "i386" { "-m32" } else { "-m64" };
    run(
        Command::new("gcc")
            .args([bits, "-static", "-nostdlib", "-ffreestanding"])
            .args(["-fno-pie", "-no-pie", "-O2", "-o"])
            .arg(&out)
            .arg(&src),
        &format!("gcc {bits} (building the {arch} workload)"),
    )?;
    std::fs::read(&out).map_err(|e| format!("{}: {e}", out.display()))
}

/// Fetches (or finds in the cache) Debian's `flavour` kernel and busybox,
/// builds the workload and writes the initramfs.
pub fn prepare_debian_linux(flavour: Flavour) -> Result<LinuxGuest, String> {
    let dir = cache_dir();
    let arch = flavour.debian_arch();
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let meta = fetch_deb(&dir, &flavour.metapackage(), arch)?;
    let kpkg = kernel_package(&meta)?;
    let kdeb = fetch_deb(&dir, &kpkg, arch)?;
    let bdeb = fetch_deb(&dir, "busybox-static", arch)?;
    let kroot = dir.join(format!("root-{kpkg}"));
    let broot = dir.join(format!("root-busybox-static-{arch}"));
    unpack(&kdeb, &kroot)?;
    unpack(&bdeb, &broot)?;
    let boot = kroot.join("boot");
    let kernel = std::fs::read_dir(&boot)
        .map_err(|e| format!("{}: {e}", boot.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .ok_or_else(|| format!("the package {kpkg} has no boot/vmlinuz-*"))?;
    let bb = broot.join("bin").join("busybox");
    let busybox = std::fs::read(&bb)
        .map_err(|e| format!("busybox-static has no bin/busybox ({}: {e})", bb.display()))?;
    let workload = build_workload(&dir, flavour)?;
    let initrd = dir.join(format!("initramfs-{arch}.cpio"));
    images::write_atomic(&initrd, &initramfs(&busybox, &workload)).map_err(|e| e.to_string())?;
    Ok(LinuxGuest { kernel, initrd })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_initramfs_holds_init_busybox_and_a_console() {
        let a = initramfs(b"\x7fELF fake busybox", b"\x7fELF fake workload");
        let text = String::from_utf8_lossy(&a);
        for name in ["init\0", "bin/busybox\0", "dev/console\0", "TRAILER!!!\0"] {
            assert!(text.contains(name), "{name}");
        }
        for name in [
            "etc\0",
            "etc/inittab\0",
            "sbin/splitvisor-exit\0",
            "bin/workload\0",
        ] {
            assert!(text.contains(name), "{name}");
        }
        assert!(text.contains(INIT_MARKER));
        assert!(INIT.starts_with("#!/bin/busybox sh\n"));
    }
}
