//! What the end-to-end tests of this crate, the mmu-server and the
//! vmm-server share (they use it as a dev-dependency): build a guest's
//! image, boot it in QEMU (TCG) with emulated SVM, capture the serial
//! console, and read the guest's own lines and the servers' figures from
//! it. Not used by the `splitvisor` command itself.
//!
//! Each run needs `qemu-system-x86_64`, gcc and binutils
//! (`scripts/install-deps`); without them the test fails, it does not skip.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ipc_proto::manifest::MmuMode;

use crate::run::{qemu_args, run_emulator, Capture, FinalLine, RunOptions, DEFAULT_EMULATOR};

/// Generous: several boots share two cores, and the first one also waits
/// for the stub and the servers to build. A guest that hangs is cut here.
pub const TIMEOUT: Duration = Duration::from_secs(240);

/// One boot of a guest: how it ended and what it printed.
pub struct Boot {
    /// The guest's name (`SystemSpec::guest`).
    pub guest: String,
    /// How it was booted, for the messages (`npt`, `shadow`, ...).
    pub how: String,
    /// The stub's final line; `None` when the run timed out.
    pub final_line: Option<FinalLine>,
    /// The serial console.
    pub console: String,
}

/// The options `splitvisor run` would use for `system` on `cpu` with
/// [`TIMEOUT`].
/// Shadow paging runs with `unsafe_shadow` (see [`RunOptions`]).
pub fn options(system: images::SystemSpec, cpu: &str) -> RunOptions {
    let system_is_shadow = system.mmu.is_shadow();
    RunOptions {
        system,
        cpu: cpu.to_string(),
        arch: None,
        emulator: DEFAULT_EMULATOR.to_string(),
        timeout: TIMEOUT,
        memory_mib: 256,
        // QEMU's TCG ignores the task-switch intercept: the tests' guests
        // are the project's own, so shadow paging may run there.
        unsafe_shadow: system_is_shadow,
    }
}

/// Builds `system`'s image and boots it in QEMU on `cpu` (`how` names the
/// run in messages), as `splitvisor run` does; says on stderr how long it
/// took.
pub fn boot(system: images::SystemSpec, cpu: &str, how: &str) -> Boot {
    boot_with(options(system, cpu), how)
}

/// [`boot`] with options of the caller's.
pub fn boot_with(opts: RunOptions, how: &str) -> Boot {
    let guest = opts.system.guest.clone();
    let image = images::build_system_spec(&opts.system).unwrap_or_else(|e| panic!("{guest}: {e}"));
    let console = Capture::default();
    let start = Instant::now();
    let report = run_emulator(
        DEFAULT_EMULATOR,
        &qemu_args(&opts, &image),
        TIMEOUT,
        Box::new(console.clone()),
    )
    .expect("QEMU starts (scripts/install-deps installs it)");
    eprintln!("{guest} ({how}): {:.2} s", start.elapsed().as_secs_f64());
    let text = String::from_utf8_lossy(&console.0.lock().unwrap()).into_owned();
    Boot {
        guest,
        how: how.to_string(),
        final_line: report.final_line,
        console: text,
    }
}

/// [`boot`] for the built-in guest `guest` with `mmu`.
pub fn boot_with_mmu(guest: &str, mmu: MmuMode, cpu: &str, how: &str) -> Boot {
    let system = images::SystemSpec {
        mmu,
        ..images::SystemSpec::new(guest)
    };
    boot(system, cpu, how)
}

impl Boot {
    /// The console has exactly this line.
    pub fn has_line(&self, line: &str) -> bool {
        self.console.lines().any(|l| l == line)
    }

    /// The guest's own end: status 0, not a hang (the timeout leaves no
    /// final line), not a failed VM.
    pub fn assert_status_0(&self) {
        assert_eq!(
            self.final_line,
            Some(FinalLine::Stopped(0)),
            "{} ({}) did not end with status 0:\n{}",
            self.guest,
            self.how,
            self.console
        );
    }

    /// The guest passed its own checks: it printed `<guest>: all checks
    /// passed` and ended with status 0.
    pub fn assert_passed(&self) {
        self.assert_status_0();
        let (name, how) = (&self.guest, &self.how);
        assert!(
            self.has_line(&format!("{name}: all checks passed")),
            "{name} ({how}):\n{}",
            self.console
        );
    }

    /// The `0x........` of the guest's `<guest>: checksum 0x........` line.
    pub fn checksum(&self) -> String {
        let prefix = format!("{}: checksum ", self.guest);
        self.console
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no checksum line ({}):\n{}", self.how, self.console))
            .to_string()
    }

    /// A figure of the vmm-server's `[vmm] mmu:` line.
    pub fn mmu_figure(&self, key: &str) -> u64 {
        let line = self
            .console
            .lines()
            .find_map(|l| l.strip_prefix("[vmm] mmu: "))
            .unwrap_or_else(|| panic!("no `[vmm] mmu:` line ({}):\n{}", self.how, self.console));
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key}= in `{line}`"))
    }
}

/// Boots the `uartin` guest of `system` on `cpu` with QEMU's stdin as the
/// host console, types a line once the guest asks for it (bytes that
/// arrive before the stub has set up its own COM1 are lost there), and
/// checks that the guest read it, passed and ended with status 0. Returns
/// the console, up to the stub's final line.
pub fn uartin_reads_a_typed_line(system: images::SystemSpec, cpu: &str) -> String {
    let image = images::build_system_spec(&system).expect("image builds");
    let opts = options(system, cpu);
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
    let deadline = Instant::now() + TIMEOUT;
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
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
    console
}
