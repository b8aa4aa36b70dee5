//! `splitvisor run`: boot a system image in QEMU (or in Bochs, see
//! [`crate::bochs`]) and turn the stub's final console line into an exit
//! status.
//!
//! QEMU's serial output (the stub's console, the vmm-server's `[vmm] `
//! lines and the guest's UART text) is copied to our stdout as it arrives.
//! Complete lines are scanned for the stub's final line, which always starts
//! a line:
//!
//! ```text
//! [stub] vm stopped: guest status N     -> exit N
//! [stub] vm failed: REASON              -> exit 101
//! [stub] cannot run: REASON             -> exit 102
//! ```
//!
//! The stub then writes 0, 1 or 2 to the isa-debug-exit port, so QEMU ends
//! with status 1, 3 or 5; a mismatch gets a warning.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fmt;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

pub use crate::accel::Accel;

/// Exit status when the stub reports `vm failed`.
pub const EXIT_VM_FAILED: i32 = 101;
/// Exit status when the stub reports `cannot run`.
pub const EXIT_CANNOT_RUN: i32 = 102;
/// Exit status when the emulator is missing, could not start, the image
/// could not be built, or the emulator ended without a final stub line.
pub const EXIT_EMULATOR: i32 = 103;
/// Exit status when the run timed out (as timeout(1) does).
pub const EXIT_TIMEOUT: i32 = 124;
/// Exit status when the user quit the console with Ctrl-A X (as a shell
/// reports a program ended by Ctrl-C).
pub const EXIT_QUIT: i32 = 130;

/// The console's keys, for `run --help` and the line printed when the
/// console starts.
pub const CONSOLE_HELP: &str = "\
Console: when stdin is a terminal, `run` puts it in raw mode for the run
and passes every key to the guest's COM1, Ctrl-C included (as QEMU's
-nographic does). Escapes start with Ctrl-A:
  Ctrl-A X         quit: kill the emulator and print what is known
                   (exit status 130)
  Ctrl-A Ctrl-A    send Ctrl-A to the guest
  Ctrl-A H         show these keys
The terminal is restored when the run ends, however it ends. With stdin
not a terminal (a pipe, a file, CI), it goes to the guest as it is.";

/// The line on stderr when an interactive console starts.
pub const CONSOLE_START_LINE: &str = "splitvisor: console: keys go to the guest, Ctrl-C included; \
Ctrl-A X quits, Ctrl-A Ctrl-A sends Ctrl-A, Ctrl-A H shows the keys";

/// The console's escape key, Ctrl-A.
pub const ESCAPE_KEY: u8 = 0x01;

/// What one byte typed at the console does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsoleKey {
    /// Send this byte to the guest.
    Send(u8),
    /// Ctrl-A X: quit.
    Quit,
    /// Ctrl-A H: show the keys.
    Help,
    /// Nothing (the escape key, or an unknown escape, which is dropped).
    Nothing,
}

/// The console's escape parser: Ctrl-A starts an escape, the next byte
/// says what it is ([`CONSOLE_HELP`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EscapeParser {
    escaped: bool,
}

impl EscapeParser {
    /// Feeds one typed byte.
    pub fn feed(&mut self, b: u8) -> ConsoleKey {
        if !self.escaped {
            if b == ESCAPE_KEY {
                self.escaped = true;
                return ConsoleKey::Nothing;
            }
            return ConsoleKey::Send(b);
        }
        self.escaped = false;
        match b {
            b'x' | b'X' | 0x18 => ConsoleKey::Quit,
            ESCAPE_KEY | b'a' => ConsoleKey::Send(ESCAPE_KEY),
            b'h' | b'H' | b'?' | 0x08 => ConsoleKey::Help,
            _ => ConsoleKey::Nothing,
        }
    }
}

/// What the console showed last, for a run that ends without a verdict.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConsoleTail {
    /// The last lines of the stub and the vmm-server (`[stub] `,
    /// `[vmm] `), oldest first.
    pub system_lines: VecDeque<String>,
    /// The guest's last non-empty line (or its unfinished one).
    pub guest_line: Option<String>,
}

/// How many stub and vmm-server lines a [`ConsoleTail`] keeps.
const TAIL_LINES: usize = 8;

impl ConsoleTail {
    fn note(&mut self, line: &str) {
        let line = line.trim_end_matches(['\r', '\n']);
        if line.trim().is_empty() {
            return;
        }
        if line.starts_with("[stub] ") || line.starts_with("[vmm] ") {
            if self.system_lines.len() == TAIL_LINES {
                self.system_lines.pop_front();
            }
            self.system_lines.push_back(line.to_string());
        } else {
            self.guest_line = Some(line.to_string());
        }
    }

    /// What to say when no verdict came: that none came, the guest's last
    /// line and the last stub and vmm-server lines.
    pub fn no_verdict_messages(&self) -> Vec<String> {
        let mut m = vec![
            "splitvisor: no verdict: the stub printed no final line (so the guest wrote no \
             status to port 0xf4), and no statistics (the stub and the vmm-server print them \
             when the VM ends)"
                .to_string(),
        ];
        match &self.guest_line {
            Some(l) => m.push(format!("splitvisor: the guest's last output line: {l}")),
            None => m.push("splitvisor: the guest printed nothing".to_string()),
        }
        if !self.system_lines.is_empty() {
            m.push("splitvisor: the last stub and vmm-server lines:".to_string());
            m.extend(self.system_lines.iter().map(|l| format!("  {l}")));
        }
        m
    }
}

/// The default `--cpu`: an AMD model with SVM and nested paging.
pub const DEFAULT_CPU: &str = "EPYC,+svm,+npt";
/// The default `--emulator`.
pub const DEFAULT_EMULATOR: &str = "qemu-system-x86_64";

/// How long QEMU may take to exit after the stub's final line.
const EXIT_GRACE: Duration = Duration::from_secs(10);
/// How much of QEMU's stderr is kept.
const STDERR_KEEP: usize = 16 * 1024;
/// Longest line start kept for scanning; a final line is far shorter.
const LINE_KEEP: usize = 4096;

/// The stub's final console line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FinalLine {
    /// `[stub] vm stopped: guest status N`
    Stopped(u8),
    /// `[stub] vm failed: REASON`
    Failed(String),
    /// `[stub] cannot run: REASON`
    CannotRun(String),
}

impl FinalLine {
    /// The exit status of `splitvisor run` for this outcome.
    pub fn exit_code(&self) -> i32 {
        match self {
            FinalLine::Stopped(n) => i32::from(*n),
            FinalLine::Failed(_) => EXIT_VM_FAILED,
            FinalLine::CannotRun(_) => EXIT_CANNOT_RUN,
        }
    }

    /// QEMU's exit status after the stub wrote its code (0, 1, 2) to
    /// isa-debug-exit: `(code << 1) | 1`.
    pub fn expected_emulator_status(&self) -> i32 {
        let code = match self {
            FinalLine::Stopped(_) => 0,
            FinalLine::Failed(_) => 1,
            FinalLine::CannotRun(_) => 2,
        };
        (code << 1) | 1
    }
}

/// Parses one complete console line (without its line end). Only a line
/// that *starts* with `[stub] ` can be the final line.
pub fn parse_final_line(line: &str) -> Option<FinalLine> {
    let line = line.trim_end_matches(['\r', '\n']);
    let rest = line.strip_prefix("[stub] ")?;
    if let Some(n) = rest.strip_prefix("vm stopped: guest status ") {
        let n = n.trim_end();
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        return n.parse().ok().map(FinalLine::Stopped);
    }
    if let Some(reason) = rest.strip_prefix("vm failed: ") {
        return Some(FinalLine::Failed(reason.trim().to_string()));
    }
    rest.strip_prefix("cannot run: ")
        .map(|reason| FinalLine::CannotRun(reason.trim().to_string()))
}

/// Splits a byte stream into lines and remembers the last final line seen.
#[derive(Debug, Default)]
pub struct LineScanner {
    line: Vec<u8>,
    last: Option<FinalLine>,
    tail: ConsoleTail,
}

impl LineScanner {
    /// Feeds bytes; returns a final line completed by them, if any.
    pub fn feed(&mut self, bytes: &[u8]) -> Option<FinalLine> {
        let mut found = None;
        for &b in bytes {
            if b == b'\n' {
                if let Some(f) = self.end_line() {
                    found = Some(f);
                }
            } else if self.line.len() < LINE_KEEP {
                self.line.push(b);
            }
        }
        found
    }

    /// Ends the stream: a last line without a line end counts too.
    pub fn finish(&mut self) -> Option<FinalLine> {
        if self.line.is_empty() {
            None
        } else {
            self.end_line()
        }
    }

    /// The last final line seen.
    pub fn last(&self) -> Option<&FinalLine> {
        self.last.as_ref()
    }

    /// What the console showed last, an unfinished line included.
    pub fn tail(&self) -> ConsoleTail {
        let mut t = self.tail.clone();
        t.note(&String::from_utf8_lossy(&self.line));
        t
    }

    fn end_line(&mut self) -> Option<FinalLine> {
        let text = String::from_utf8_lossy(&self.line);
        self.tail.note(&text);
        let parsed = parse_final_line(&text);
        self.line.clear();
        if parsed.is_some() {
            self.last.clone_from(&parsed);
        }
        parsed
    }
}

/// A virtualization extension the stub can be told to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// AMD SVM.
    Svm,
    /// Intel VMX.
    Vmx,
}

impl Arch {
    /// `svm` or `vmx`.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Svm => "svm",
            Arch::Vmx => "vmx",
        }
    }

    /// The arch for `svm` or `vmx`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "svm" => Some(Arch::Svm),
            "vmx" => Some(Arch::Vmx),
            _ => None,
        }
    }

    /// The stub's boot command line: `arch=` when forced, and
    /// `unsafe_shadow` when asked for.
    pub fn stub_cmdline(arch: Option<Self>, unsafe_shadow: bool) -> String {
        let words = [
            arch.map(|a| format!("arch={}", a.name())),
            unsafe_shadow.then(|| "unsafe_shadow".to_string()),
        ];
        words.into_iter().flatten().collect::<Vec<_>>().join(" ")
    }
}

/// Which emulator a program is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmulatorKind {
    /// QEMU: boots the image with `-kernel`.
    Qemu,
    /// Bochs: boots a GRUB ISO of the image.
    Bochs,
}

impl EmulatorKind {
    /// Bochs when the program's file name starts with `bochs`, else QEMU.
    pub fn of(program: &str) -> Self {
        let name = Path::new(program)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with("bochs") {
            EmulatorKind::Bochs
        } else {
            EmulatorKind::Qemu
        }
    }

    /// The default `--cpu` for this emulator and `--arch`: QEMU's EPYC with
    /// SVM and NPT (QEMU's TCG has no VMX); Bochs's Skylake-X for VMX (and
    /// when no arch is given), its Ryzen for SVM.
    pub fn default_cpu(self, arch: Option<Arch>) -> &'static str {
        match (self, arch) {
            (EmulatorKind::Qemu, _) => DEFAULT_CPU,
            (EmulatorKind::Bochs, Some(Arch::Svm)) => crate::bochs::DEFAULT_CPU_SVM,
            (EmulatorKind::Bochs, _) => crate::bochs::DEFAULT_CPU_VMX,
        }
    }
}

/// What `splitvisor run` was asked to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunOptions {
    /// What to put in the image.
    pub system: images::SystemSpec,
    /// The CPU model: QEMU's `-cpu`, Bochs's `cpu: model=`.
    pub cpu: String,
    /// Force SVM or VMX (the stub's `arch=` boot option); `None` lets the
    /// stub pick from CPUID.
    pub arch: Option<Arch>,
    /// The emulator program.
    pub emulator: String,
    /// Wall-clock limit for the emulator.
    pub timeout: Duration,
    /// MiB of machine memory (QEMU `-m`, Bochs `megs:`).
    pub memory_mib: u32,
    /// Let the stub run shadow paging on a CPU that ignores the SVM
    /// task-switch intercept (QEMU's TCG), where a guest can escape (the
    /// stub's `unsafe_shadow` boot option): for tests on QEMU only.
    pub unsafe_shadow: bool,
}

impl RunOptions {
    /// Which emulator `emulator` is.
    pub fn emulator_kind(&self) -> EmulatorKind {
        EmulatorKind::of(&self.emulator)
    }
}

/// The default machine memory for a guest with `ram_mib` MiB of RAM: 256
/// MiB, or four times the guest's RAM (the image, the stub's frames and
/// the servers need room beside it).
pub fn default_memory_mib(ram_mib: u32) -> u32 {
    (ram_mib * 4).max(256)
}

/// The emulator's arguments to boot `image` under TCG.
pub fn qemu_args(opts: &RunOptions, image: &Path) -> Vec<OsString> {
    qemu_args_accel(opts, image, Accel::Tcg)
}

/// The emulator's arguments to boot `image` with `accel` (`--accel`; see
/// [`crate::accel`]). `opts.cpu` is used as given: `host` under KVM is the
/// caller's choice ([`Accel::default_cpu`]).
pub fn qemu_args_accel(opts: &RunOptions, image: &Path, accel: Accel) -> Vec<OsString> {
    let mut args = qemu_machine_args(&opts.cpu, opts.memory_mib, accel);
    if opts.system.host_cpus > 1 {
        args.push("-smp".into());
        args.push(opts.system.host_cpus.to_string().into());
    }
    args.push("-kernel".into());
    args.push(image.as_os_str().to_owned());
    let cmdline = Arch::stub_cmdline(opts.arch, opts.unsafe_shadow);
    if !cmdline.is_empty() {
        args.push("-append".into());
        args.push(cmdline.into());
    }
    args
}

/// A `Write` that keeps what it is given, shared with its clones: an
/// emulator's console for a caller that reads it afterwards.
#[derive(Clone, Default)]
pub struct Capture(pub Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// QEMU's instruction clock under TCG (`-icount`): the emulated machine's
/// time -- its TSC, which the vmm-server's virtual clock follows, and the
/// PIT the stub measures the TSC against -- advances by 4 ns (2^2) per
/// instruction instead of with the host's time, so that what a guest sees
/// of time does not depend on how busy the host is (`sleep=off`: an idle
/// CPU jumps to its next timer rather than waiting for it).
pub const QEMU_ICOUNT: &str = "shift=2,align=off,sleep=off";

/// The TSC rate QEMU's TCG gives the guest under [`QEMU_ICOUNT`]: its TSC
/// counts the virtual clock's nanoseconds (the stub measures 999 MHz).
pub const QEMU_TSC_KHZ: u64 = 1_000_000;

/// QEMU's arguments for the machine every boot uses: `accel` (TCG with
/// its instruction clock, [`QEMU_ICOUNT`], or KVM without it:
/// [`Accel::qemu_args`]), `cpu` and `memory_mib`, no default devices or
/// display, no reboot, COM1 on stdio, the debug-exit port at 0xF4; the
/// kernel to boot comes after.
pub fn qemu_machine_args(cpu: &str, memory_mib: u32, accel: Accel) -> Vec<OsString> {
    let mut args: Vec<OsString> = accel.qemu_args().into_iter().map(OsString::from).collect();
    let machine = [
        "-cpu",
        cpu,
        "-m",
        &memory_mib.to_string(),
        "-nodefaults",
        "-display",
        "none",
        "-no-reboot",
        "-monitor",
        "none",
        "-serial",
        "stdio",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=1",
    ];
    args.extend(machine.iter().map(OsString::from));
    args
}

/// The emulator's version, for benchmarks to name: QEMU's `--version`
/// first line, Bochs's Debian package version (Bochs has no version
/// flag), or `unknown` with the program's name.
pub fn emulator_version(program: &str) -> String {
    let output = |cmd: &mut Command| {
        cmd.stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_string()
            })
            .filter(|l| !l.is_empty())
    };
    let name = Path::new(program)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(program);
    let found = if name.starts_with("bochs") {
        output(Command::new("dpkg-query").args(["-W", "-f", "${Version}", "bochs"]))
            .map(|v| format!("Bochs (Debian package bochs {v})"))
    } else {
        output(Command::new(program).arg("--version"))
    };
    found.unwrap_or_else(|| format!("{program}: version unknown"))
}

/// Finds a program the way a shell does: a name with a `/` is a path,
/// anything else is looked up on `PATH`.
pub fn find_program(name: &str) -> Option<PathBuf> {
    if name.is_empty() {
        return None;
    }
    if name.contains('/') {
        let p = PathBuf::from(name);
        return is_executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The sentence for a missing emulator.
pub fn emulator_missing_message(emulator: &str) -> String {
    if EmulatorKind::of(emulator) == EmulatorKind::Bochs {
        format!("{emulator} not found: {}", crate::bochs::PACKAGES_SENTENCE)
    } else if emulator == DEFAULT_EMULATOR || emulator.ends_with("/qemu-system-x86_64") {
        format!(
            "{emulator} not found: install the Debian package qemu-system-x86 \
             (apt-get install qemu-system-x86)"
        )
    } else {
        format!("{emulator} not found: give an executable on PATH or a path to one with --emulator")
    }
}

/// What happened to one emulator run.
#[derive(Debug)]
pub struct RunReport {
    /// The stub's last final line, if it printed one.
    pub final_line: Option<FinalLine>,
    /// The emulator's exit status, if it exited by itself.
    pub status: Option<ExitStatus>,
    /// It ran past the time limit and was killed.
    pub timed_out: bool,
    /// It did not exit within a grace period after the final line and was
    /// killed.
    pub killed_after_final_line: bool,
    /// The end of its stderr.
    pub stderr: String,
    /// The user quit the console (Ctrl-A X) and it was killed.
    pub quit: bool,
    /// What the console showed last.
    pub tail: ConsoleTail,
}

/// The emulator could not be started.
#[derive(Debug)]
pub struct SpawnError {
    /// The program.
    pub program: String,
    /// Why.
    pub source: io::Error,
}

impl fmt::Display for SpawnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "could not start {}: {}", self.program, self.source)
    }
}

impl std::error::Error for SpawnError {}

/// Where an emulator's console (the stub's COM1) comes out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Console {
    /// On the emulator's stdout (QEMU `-serial stdio`).
    Stdout,
    /// In a file the emulator writes (Bochs `com1: mode=file`), followed as
    /// it grows; the emulator's stdout then counts as diagnostics.
    File(PathBuf),
}

/// Runs `program args` with stdin closed, copying its stdout to `out` as it
/// arrives and scanning it for the stub's final line; kills it after
/// `timeout`, or `EXIT_GRACE` after the final line if it has not exited.
pub fn run_emulator(
    program: &str,
    args: &[OsString],
    timeout: Duration,
    out: Box<dyn Write + Send>,
) -> Result<RunReport, SpawnError> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    run_command(cmd, program, timeout, Console::Stdout, out)
}

/// [`run_emulator`] for a prepared command whose console comes out as
/// `console` says. A console file has terminal escapes and carriage
/// returns removed ([`StripEscapes`]).
pub fn run_command(
    cmd: Command,
    program: &str,
    timeout: Duration,
    console: Console,
    out: Box<dyn Write + Send>,
) -> Result<RunReport, SpawnError> {
    // QEMU's COM1 is its stdin: a pipe, so that a report can be asked for
    // before a timeout kills it (`vmm_server::console::REPORT_REQUEST`).
    let stdin = match console {
        Console::Stdout => Stdio::piped(),
        Console::File(_) => Stdio::null(),
    };
    run_command_with_stdin(cmd, program, timeout, console, out, stdin)
}

/// [`run_command`] with the emulator's stdin given: `splitvisor run`
/// passes its own, so that what the user types reaches the guest's COM1
/// (QEMU's `-serial stdio`).
pub fn run_command_with_stdin(
    cmd: Command,
    program: &str,
    timeout: Duration,
    console: Console,
    out: Box<dyn Write + Send>,
    stdin: Stdio,
) -> Result<RunReport, SpawnError> {
    run_command_typed(cmd, program, timeout, console, out, stdin, None)
}

/// [`run_command`] with `input` copied as it is into the emulator's stdin
/// (QEMU's COM1), which stays a pipe of ours, so that a report can be asked
/// for before a timeout kills it.
pub fn run_command_piping(
    cmd: Command,
    program: &str,
    timeout: Duration,
    out: Box<dyn Write + Send>,
    input: Box<dyn Read + Send>,
) -> Result<RunReport, SpawnError> {
    run_command_typed(
        cmd,
        program,
        timeout,
        Console::Stdout,
        out,
        Stdio::piped(),
        Some(Typed::AsIs(input)),
    )
}

/// [`run_command`] with what the user types coming from `typed` through
/// the console's [`EscapeParser`] into the emulator's stdin: Ctrl-A X
/// kills the emulator and ends the run with [`RunReport::quit`].
pub fn run_console(
    cmd: Command,
    program: &str,
    timeout: Duration,
    out: Box<dyn Write + Send>,
    typed: Box<dyn Read + Send>,
) -> Result<RunReport, SpawnError> {
    run_command_typed(
        cmd,
        program,
        timeout,
        Console::Stdout,
        out,
        Stdio::piped(),
        Some(Typed::Keys(typed)),
    )
}

/// What the vmm-server takes as a request to end the VM with a report,
/// typed on COM1 before a timeout or Ctrl-A X kills the emulator.
use ipc_proto::CONSOLE_REPORT_REQUEST as REPORT_REQUEST;

/// How long the vmm-server gets to print its report.
const REPORT_GRACE: Duration = Duration::from_secs(5);

/// The emulator's stdin, shared by the typed keys and the report request;
/// closed when the typed input ends, as if the emulator had it alone.
#[derive(Clone)]
struct SharedStdin(Arc<Mutex<Option<std::process::ChildStdin>>>);

impl SharedStdin {
    fn with<T>(
        &self,
        f: impl FnOnce(&mut std::process::ChildStdin) -> io::Result<T>,
    ) -> io::Result<T> {
        let mut g = self.0.lock().map_err(|_| io::Error::other("stdin lock"))?;
        match g.as_mut() {
            Some(s) => f(s),
            None => Err(io::ErrorKind::BrokenPipe.into()),
        }
    }

    fn close(&self) {
        if let Ok(mut g) = self.0.lock() {
            g.take();
        }
    }
}

impl Write for SharedStdin {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.with(|s| s.write(buf))
    }
    fn flush(&mut self) -> io::Result<()> {
        self.with(|s| s.flush())
    }
}

/// What goes into the emulator's stdin besides a report request.
enum Typed {
    /// Keys from a terminal, through the console's escapes.
    Keys(Box<dyn Read + Send>),
    /// Bytes from a pipe or a file, as they are.
    AsIs(Box<dyn Read + Send>),
}

/// Copies bytes to the emulator's stdin as they are, until either side ends.
fn pass_bytes(mut from: Box<dyn Read + Send>, mut to: impl Write) {
    let mut buf = [0u8; 256];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        if to.write_all(&buf[..n]).and_then(|()| to.flush()).is_err() {
            return;
        }
    }
}

/// Copies typed bytes through the escape parser to the emulator's stdin
/// until Ctrl-A X (sets `quit`) or the end of either side.
fn pass_keys(mut from: Box<dyn Read + Send>, mut to: impl Write, quit: &AtomicBool) {
    let mut parser = EscapeParser::default();
    let mut buf = [0u8; 256];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        let mut send = Vec::with_capacity(n);
        for &b in &buf[..n] {
            match parser.feed(b) {
                ConsoleKey::Send(b) => send.push(b),
                ConsoleKey::Quit => {
                    let _ = to.write_all(&send).and_then(|()| to.flush());
                    quit.store(true, Ordering::SeqCst);
                    return;
                }
                // The terminal is raw: end lines with CR LF.
                ConsoleKey::Help => eprint!("\r\n{}\r\n", CONSOLE_HELP.replace('\n', "\r\n")),
                ConsoleKey::Nothing => {}
            }
        }
        if to.write_all(&send).and_then(|()| to.flush()).is_err() {
            return;
        }
    }
}

fn run_command_typed(
    mut cmd: Command,
    program: &str,
    timeout: Duration,
    console: Console,
    out: Box<dyn Write + Send>,
    stdin: Stdio,
    typed: Option<Typed>,
) -> Result<RunReport, SpawnError> {
    let mut child = cmd
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| SpawnError {
            program: program.to_string(),
            source,
        })?;
    let quit_asked = Arc::new(AtomicBool::new(false));
    let stdin = child
        .stdin
        .take()
        .map(|s| SharedStdin(Arc::new(Mutex::new(Some(s)))));
    // Not joined: they may wait on the terminal or a pipe after the run.
    match (typed, stdin.clone()) {
        (Some(Typed::Keys(from)), Some(to)) => {
            let quit = quit_asked.clone();
            thread::spawn(move || {
                pass_keys(from, to.clone(), &quit);
                if !quit.load(Ordering::SeqCst) {
                    to.close();
                }
            });
        }
        // A pipe or file that ends leaves the emulator's stdin open: the
        // report request may still have to go through it.
        (Some(Typed::AsIs(from)), Some(to)) => {
            thread::spawn(move || pass_bytes(from, to));
        }
        _ => {}
    }
    let shown = Arc::new(Mutex::new(ConsoleTail::default()));
    let (final_tx, final_rx) = mpsc::channel();
    let exited = Arc::new(AtomicBool::new(false));
    let (console_thread, stdout_tail) = match console {
        Console::Stdout => (
            child.stdout.take().map(|s| {
                let shown = shown.clone();
                thread::spawn(move || copy_and_scan(s, out, final_tx, shown))
            }),
            None,
        ),
        Console::File(path) => {
            let file = StripEscapes::new(TailFile::new(path, exited.clone()));
            let shown = shown.clone();
            (
                Some(thread::spawn(move || {
                    copy_and_scan(file, out, final_tx, shown)
                })),
                child.stdout.take().map(|s| thread::spawn(move || tail(s))),
            )
        }
    };
    let stdout_thread = console_thread;
    let stderr_thread = child.stderr.take().map(|s| thread::spawn(move || tail(s)));

    let start = Instant::now();
    let mut final_line = None;
    let mut grace_deadline: Option<Instant> = None;
    let mut timed_out = false;
    let mut killed_after_final_line = false;
    let mut quit = false;
    // Before a timeout or Ctrl-A X kills the emulator, the vmm-server is
    // asked for its report, and given REPORT_GRACE to end the VM with it.
    let mut report_deadline: Option<Instant> = None;
    let ask_report = |stdin: &Option<SharedStdin>| -> Option<Instant> {
        let mut s = stdin.clone()?;
        s.write_all(REPORT_REQUEST).and_then(|()| s.flush()).ok()?;
        Some(Instant::now() + REPORT_GRACE)
    };
    let status = loop {
        if let Ok(f) = final_rx.try_recv() {
            final_line = Some(f);
            grace_deadline.get_or_insert(Instant::now() + EXIT_GRACE);
        }
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) => {}
            Err(_) => {
                kill(&mut child);
                break None;
            }
        }
        if report_deadline.is_some_and(|d| Instant::now() >= d) {
            kill(&mut child);
            break None;
        }
        if start.elapsed() >= timeout && !timed_out {
            timed_out = true;
            report_deadline = ask_report(&stdin).filter(|_| final_line.is_none());
            if report_deadline.is_none() {
                kill(&mut child);
                break None;
            }
        }
        if quit_asked.load(Ordering::SeqCst) && !quit {
            quit = true;
            report_deadline = ask_report(&stdin).filter(|_| final_line.is_none());
            if report_deadline.is_none() {
                kill(&mut child);
                break None;
            }
        }
        if grace_deadline.is_some_and(|d| Instant::now() >= d) {
            killed_after_final_line = true;
            kill(&mut child);
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };

    // Ctrl-A X closes the emulator's stdin, which may end it first.
    quit |= quit_asked.load(Ordering::SeqCst);

    // The emulator is gone, so its pipes close; a child it left behind
    // could keep them open, so wait for the readers only a little.
    exited.store(true, Ordering::SeqCst);
    let scanned = stdout_thread.and_then(|t| join_within(t, Duration::from_secs(2)));
    if let Some(Some(f)) = scanned {
        final_line = Some(f);
    }
    while let Ok(f) = final_rx.try_recv() {
        final_line = Some(f);
    }
    let mut stderr = stderr_thread
        .and_then(|t| join_within(t, Duration::from_secs(2)))
        .unwrap_or_default();
    if let Some(t) = stdout_tail.and_then(|t| join_within(t, Duration::from_secs(2))) {
        stderr = t + &stderr;
    }
    let tail = shown.lock().map(|t| t.clone()).unwrap_or_default();
    Ok(RunReport {
        final_line,
        status,
        timed_out,
        killed_after_final_line,
        stderr,
        quit,
        tail,
    })
}

/// Reads a file that another process is still writing: at its end it waits
/// for more until `done` is set, then ends. A file that does not exist yet
/// reads as empty until it does.
pub struct TailFile {
    path: PathBuf,
    file: Option<std::fs::File>,
    done: Arc<AtomicBool>,
}

impl TailFile {
    /// Follows `path` until `done` is set.
    pub fn new(path: PathBuf, done: Arc<AtomicBool>) -> Self {
        Self {
            path,
            file: None,
            done,
        }
    }
}

impl Read for TailFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // Read the flag first: once it is set, the writer has finished,
            // so an empty read after it means the end.
            let finished = self.done.load(Ordering::SeqCst);
            if self.file.is_none() {
                self.file = std::fs::File::open(&self.path).ok();
            }
            if let Some(f) = self.file.as_mut() {
                let n = f.read(buf)?;
                if n > 0 {
                    return Ok(n);
                }
            }
            if finished {
                return Ok(0);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Drops terminal control sequences (ESC `[` ... final byte, character set
/// designations ESC `(` x, other two-byte ESC sequences) and carriage
/// returns from a console stream:
/// GRUB's serial terminal clears the screen and moves the cursor.
pub struct StripEscapes<R> {
    inner: R,
    state: EscState,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum EscState {
    Text,
    Esc,
    Csi,
    Charset,
}

impl<R: Read> StripEscapes<R> {
    /// Filters `inner`.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            state: EscState::Text,
        }
    }
}

impl<R: Read> Read for StripEscapes<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let n = self.inner.read(buf)?;
            if n == 0 {
                return Ok(0);
            }
            let mut kept = 0;
            for i in 0..n {
                let b = buf[i];
                let (keep, next) = match (self.state, b) {
                    (EscState::Text, 0x1b) => (false, EscState::Esc),
                    (EscState::Text, b'\r') => (false, EscState::Text),
                    (EscState::Text, _) => (true, EscState::Text),
                    (EscState::Esc, b'[') => (false, EscState::Csi),
                    (EscState::Esc, b'(' | b')' | b'*' | b'+') => (false, EscState::Charset),
                    (EscState::Charset, _) => (false, EscState::Text),
                    (EscState::Esc, _) => (false, EscState::Text),
                    (EscState::Csi, 0x40..=0x7e) => (false, EscState::Text),
                    (EscState::Csi, _) => (false, EscState::Csi),
                };
                if keep {
                    buf[kept] = b;
                    kept += 1;
                }
                self.state = next;
            }
            if kept > 0 {
                return Ok(kept);
            }
        }
    }
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn join_within<T>(t: JoinHandle<T>, limit: Duration) -> Option<T> {
    let until = Instant::now() + limit;
    while !t.is_finished() {
        if Instant::now() >= until {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
    t.join().ok()
}

/// Copies `from` to `out` chunk by chunk (flushing each), feeding a
/// [`LineScanner`]; sends each final line on `tx` as soon as it is complete
/// and returns the last one.
fn copy_and_scan(
    mut from: impl Read,
    mut out: Box<dyn Write + Send>,
    tx: mpsc::Sender<FinalLine>,
    tail: Arc<Mutex<ConsoleTail>>,
) -> Option<FinalLine> {
    let mut scanner = LineScanner::default();
    let mut buf = [0u8; 4096];
    let mut out_ok = true;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        if out_ok {
            // A closed stdout (`| head`) must not stop the scanning.
            out_ok = out.write_all(&buf[..n]).and_then(|()| out.flush()).is_ok();
        }
        if let Some(f) = scanner.feed(&buf[..n]) {
            let _ = tx.send(f);
        }
        if let Ok(mut t) = tail.lock() {
            *t = scanner.tail();
        }
    }
    if let Some(f) = scanner.finish() {
        let _ = tx.send(f);
    }
    scanner.last().cloned()
}

/// Reads `from` to the end and returns its last `STDERR_KEEP` bytes.
fn tail(mut from: impl Read) -> String {
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > 2 * STDERR_KEEP {
                    kept.drain(..kept.len() - STDERR_KEEP);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    if kept.len() > STDERR_KEEP {
        kept.drain(..kept.len() - STDERR_KEEP);
    }
    String::from_utf8_lossy(&kept).into_owned()
}

/// The last `n` lines of `text`, each indented, for an error message.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].iter().map(|l| format!("  {l}\n")).collect()
}

/// The verdict on a run: the exit status and the messages for stderr.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// `splitvisor run`'s exit status.
    pub code: i32,
    /// Lines for stderr, each without a line end.
    pub messages: Vec<String>,
}

/// Turns a [`RunReport`] into the exit status and what to tell the user.
pub fn conclude(report: &RunReport, opts: &RunOptions) -> Verdict {
    let mut messages = Vec::new();
    let stderr_tail = || {
        let t = last_lines(&report.stderr, 20);
        if t.is_empty() {
            "the emulator wrote nothing on stderr".to_string()
        } else {
            format!("the emulator's stderr ends with:\n{}", t.trim_end())
        }
    };
    let code = match (&report.final_line, report.timed_out) {
        (Some(_), false) if report.quit => {
            messages.push(format!(
                "splitvisor: quit (Ctrl-A X): the vmm-server's report is above; killed {}",
                opts.emulator
            ));
            EXIT_QUIT
        }
        (_, true) => {
            messages.push(format!(
                "splitvisor: timed out after {} s: killed {} (raise --timeout if the guest needs \
                 longer)",
                opts.timeout.as_secs(),
                opts.emulator
            ));
            if report.final_line.is_none() {
                messages.extend(report.tail.no_verdict_messages());
            } else {
                messages.push(
                    "splitvisor: no verdict from the guest; asked before the kill, the \
                     vmm-server ended the VM with its report above (the guest's RIP, its last \
                     exits, the statistics)"
                        .to_string(),
                );
                if let Some(l) = &report.tail.guest_line {
                    messages.push(format!("splitvisor: the guest's last output line: {l}"));
                }
            }
            EXIT_TIMEOUT
        }
        (None, false) if report.quit => {
            messages.push(format!(
                "splitvisor: quit (Ctrl-A X): killed {}",
                opts.emulator
            ));
            messages.extend(report.tail.no_verdict_messages());
            EXIT_QUIT
        }
        (None, false) => {
            let how = match report.status {
                Some(s) => format!("ended ({s})"),
                None => "stopped".to_string(),
            };
            messages.push(format!(
                "splitvisor: {} {how} without the stub's final line; {}",
                opts.emulator,
                stderr_tail()
            ));
            messages.extend(report.tail.no_verdict_messages());
            EXIT_EMULATOR
        }
        (Some(f), false) => {
            let bochs = opts.emulator_kind() == EmulatorKind::Bochs;
            if report.killed_after_final_line {
                let how = if bochs {
                    "did the stub write Shutdown to port 0x8900?"
                } else {
                    "is isa-debug-exit at port 0xf4?"
                };
                messages.push(format!(
                    "splitvisor: warning: {} did not exit within {} s of the stub's final line \
                     and was killed ({how})",
                    opts.emulator,
                    EXIT_GRACE.as_secs()
                ));
            } else if let (Some(status), false) = (report.status, bochs) {
                // Bochs ends with status 1 whatever the stub wrote to 0xf4.
                let expected = f.expected_emulator_status();
                if status.code() != Some(expected) {
                    messages.push(format!(
                        "splitvisor: warning: the stub's final line expects {} to exit with \
                         status {expected}, but it ended ({status})",
                        opts.emulator
                    ));
                }
            }
            match f {
                FinalLine::Stopped(n) => {
                    messages.push(format!("splitvisor: guest exited with status {n}"));
                }
                FinalLine::Failed(reason) => messages.push(format!(
                    "splitvisor: the VM failed: {reason} (exit status {EXIT_VM_FAILED})"
                )),
                FinalLine::CannotRun(reason) => {
                    let about_svm = reason.contains("SVM") || reason.contains("NPT");
                    let about_vmx = reason.contains("VMX") || reason.contains("EPT");
                    let hint = if reason.contains("unsafe_shadow") {
                        "; --unsafe-shadow runs anyway, for guests you trust".to_string()
                    } else if bochs && (about_svm || about_vmx) {
                        format!(
                            "; Bochs emulates VMX with --cpu {} and SVM with --cpu {} (this run \
                             used `{}`)",
                            crate::bochs::DEFAULT_CPU_VMX,
                            crate::bochs::DEFAULT_CPU_SVM,
                            opts.cpu
                        )
                    } else if about_svm && opts.cpu != DEFAULT_CPU {
                        format!(
                            "; QEMU emulates SVM with nested paging with --cpu {DEFAULT_CPU} \
                             (this run used `{}`)",
                            opts.cpu
                        )
                    } else if about_vmx {
                        "; QEMU's TCG does not emulate VMX: use --emulator bochs".to_string()
                    } else {
                        String::new()
                    };
                    messages.push(format!(
                        "splitvisor: the stub cannot run: {reason}{hint} (exit status \
                         {EXIT_CANNOT_RUN})"
                    ));
                }
            }
            f.exit_code()
        }
    };
    Verdict { code, messages }
}

/// The terminal on stdin in raw mode (no echo, no line editing, no signal
/// keys: Ctrl-C is a byte for the guest; output still ends lines with CR
/// LF) until dropped, which restores it: on every way out of `run`, a
/// panic's unwinding included.
struct RawTerminal {
    saved: String,
}

impl RawTerminal {
    /// `None` when stty cannot read or set the terminal.
    fn enter() -> Option<Self> {
        let out = Command::new("stty")
            .arg("-g")
            .stdin(Stdio::inherit())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let saved = String::from_utf8(out.stdout).ok()?.trim().to_string();
        if !out.status.success() || saved.is_empty() {
            return None;
        }
        let raw = Command::new("stty")
            .args(["raw", "-echo", "opost"])
            .stdin(Stdio::inherit())
            .status()
            .ok()?;
        raw.success().then_some(Self { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = Command::new("stty")
            .arg(&self.saved)
            .stdin(Stdio::inherit())
            .status();
    }
}

/// `splitvisor run`: checks the emulator, builds the image, boots it and
/// returns the exit status. Progress and verdicts go to stderr, the
/// emulator's serial output to stdout. QEMU runs under TCG.
pub fn run(opts: &RunOptions) -> i32 {
    run_accel(opts, Accel::Tcg)
}

/// [`run`] with QEMU's accelerator `accel`, already resolved from
/// `--accel` by [`crate::accel::resolve`] (Bochs ignores it).
pub fn run_accel(opts: &RunOptions, accel: Accel) -> i32 {
    run_with_disk(opts, accel, None)
}

/// [`run_accel`] with the image of `--disk`, checked and locked by
/// [`crate::disk::Disk::open`], as the machine's primary IDE master.
pub fn run_with_disk(opts: &RunOptions, accel: Accel, disk: Option<&crate::disk::Disk>) -> i32 {
    run_with_disk_to(opts, accel, disk, Box::new(io::stdout()))
}

/// [`run_with_disk`] with the console going to `out` instead of stdout
/// (`--trace` takes its lines out there, `--log-dir` copies them).
pub fn run_with_disk_to(
    opts: &RunOptions,
    accel: Accel,
    disk: Option<&crate::disk::Disk>,
    out: Box<dyn Write + Send>,
) -> i32 {
    let Some(emulator) = find_program(&opts.emulator) else {
        eprintln!("splitvisor: {}", emulator_missing_message(&opts.emulator));
        return EXIT_EMULATOR;
    };
    if opts.emulator_kind() == EmulatorKind::Bochs {
        return crate::bochs::run_with_disk(opts, &emulator, disk, out);
    }
    let image = match images::build_system_spec(&opts.system) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("splitvisor: could not build the image: {e}");
            return EXIT_EMULATOR;
        }
    };
    eprintln!(
        "splitvisor: booting {} in {} -accel {} -cpu {}",
        image.display(),
        opts.emulator,
        accel.name(),
        opts.cpu
    );
    let mut args = qemu_args_accel(opts, &image, accel);
    if let Some(d) = disk {
        args.extend(d.qemu_args());
    }
    // The card exactly when the image has its driver (`--nic`).
    if crate::nic::wants_nic(&opts.system) {
        args.extend(crate::nic::qemu_args(&opts.system.net_forwards));
    }
    let program = emulator.to_string_lossy().into_owned();
    let mut cmd = Command::new(&program);
    cmd.args(&args);
    let terminal = io::IsTerminal::is_terminal(&io::stdin());
    let raw = if terminal { RawTerminal::enter() } else { None };
    let result = if raw.is_some() {
        // The line ends with CR LF: the terminal is raw now.
        eprint!("{CONSOLE_START_LINE}\r\n");
        run_console(cmd, &program, opts.timeout, out, Box::new(io::stdin()))
    } else {
        run_command_piping(cmd, &program, opts.timeout, out, Box::new(io::stdin()))
    };
    if raw.is_some() {
        drop(raw);
    } else if terminal {
        // QEMU puts a terminal on its stdin into raw mode and cannot
        // restore it when it is killed at the timeout.
        let _ = Command::new("stty").arg("sane").status();
    }
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("splitvisor: {e}");
            return EXIT_EMULATOR;
        }
    };
    let verdict = conclude(&report, opts);
    for m in &verdict.messages {
        eprintln!("{m}");
    }
    verdict.code
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::sync::{Arc, Mutex};

    #[test]
    fn final_lines_parse() {
        assert_eq!(
            parse_final_line("[stub] vm stopped: guest status 0"),
            Some(FinalLine::Stopped(0))
        );
        assert_eq!(
            parse_final_line("[stub] vm stopped: guest status 42\r"),
            Some(FinalLine::Stopped(42))
        );
        assert_eq!(
            parse_final_line("[stub] vm failed: shutdown (exit 0x7f) at rip=0x10001c"),
            Some(FinalLine::Failed(
                "shutdown (exit 0x7f) at rip=0x10001c".into()
            ))
        );
        assert_eq!(
            parse_final_line("[stub] cannot run: SVM not available on this CPU"),
            Some(FinalLine::CannotRun("SVM not available on this CPU".into()))
        );
    }

    #[test]
    fn other_lines_do_not_parse() {
        for line in [
            "",
            "hello from the guest",
            "[stub] booting",
            "[vmm] exits: total=3 ioio=2 hlt=0",
            " [stub] vm stopped: guest status 0",
            "hello[stub] vm stopped: guest status 0",
            "[stub]vm stopped: guest status 0",
            "[stub] vm stopped: guest status",
            "[stub] vm stopped: guest status -1",
            "[stub] vm stopped: guest status 256",
            "[stub] vm stopped: guest status 1x",
        ] {
            assert_eq!(parse_final_line(line), None, "{line:?}");
        }
    }

    #[test]
    fn scanner_counts_only_lines_starting_with_stub() {
        let mut s = LineScanner::default();
        // Guest text without a newline, then what looks like a final line:
        // it is part of the guest's line and must not count.
        assert_eq!(
            s.feed(b"guest says[stub] vm stopped: guest status 9\n"),
            None
        );
        assert_eq!(s.last(), None);
        // Split across chunks.
        assert_eq!(s.feed(b"[stub] vm sto"), None);
        assert_eq!(
            s.feed(b"pped: guest status 7\r\nmore"),
            Some(FinalLine::Stopped(7))
        );
        assert_eq!(s.finish(), None);
        assert_eq!(s.last(), Some(&FinalLine::Stopped(7)));
    }

    #[test]
    fn scanner_takes_an_unterminated_last_line_at_the_end() {
        let mut s = LineScanner::default();
        assert_eq!(s.feed(b"x\n[stub] vm failed: boom"), None);
        assert_eq!(s.finish(), Some(FinalLine::Failed("boom".into())));
    }

    #[test]
    fn exit_codes() {
        assert_eq!(FinalLine::Stopped(0).exit_code(), 0);
        assert_eq!(FinalLine::Stopped(42).exit_code(), 42);
        assert_eq!(FinalLine::Stopped(255).exit_code(), 255);
        assert_eq!(FinalLine::Failed(String::new()).exit_code(), 101);
        assert_eq!(FinalLine::CannotRun(String::new()).exit_code(), 102);
        assert_eq!(FinalLine::Stopped(7).expected_emulator_status(), 1);
        assert_eq!(
            FinalLine::Failed(String::new()).expected_emulator_status(),
            3
        );
        assert_eq!(
            FinalLine::CannotRun(String::new()).expected_emulator_status(),
            5
        );
    }

    fn opts() -> RunOptions {
        RunOptions {
            system: images::SystemSpec::new("hello"),
            cpu: DEFAULT_CPU.into(),
            arch: None,
            emulator: DEFAULT_EMULATOR.into(),
            timeout: Duration::from_secs(60),
            memory_mib: 256,
            unsafe_shadow: false,
        }
    }

    fn report(final_line: Option<FinalLine>, status: Option<i32>) -> RunReport {
        RunReport {
            final_line,
            status: status.map(|c| ExitStatus::from_raw(c << 8)),
            timed_out: false,
            killed_after_final_line: false,
            stderr: String::new(),
            quit: false,
            tail: ConsoleTail::default(),
        }
    }

    #[test]
    fn verdicts() {
        let v = conclude(&report(Some(FinalLine::Stopped(42)), Some(1)), &opts());
        assert_eq!(v.code, 42);
        assert_eq!(v.messages, ["splitvisor: guest exited with status 42"]);

        let v = conclude(
            &report(Some(FinalLine::Failed("x".into())), Some(3)),
            &opts(),
        );
        assert_eq!(v.code, EXIT_VM_FAILED);
        assert_eq!(v.messages.len(), 1);

        // Mismatch between the final line and QEMU's status: a warning.
        let v = conclude(&report(Some(FinalLine::Stopped(0)), Some(3)), &opts());
        assert_eq!(v.code, 0);
        assert!(v.messages[0].contains("warning"), "{:?}", v.messages);

        let mut o = opts();
        o.cpu = "qemu64".into();
        let cannot = FinalLine::CannotRun("SVM not available on this CPU".into());
        let v = conclude(&report(Some(cannot), Some(5)), &o);
        assert_eq!(v.code, EXIT_CANNOT_RUN);
        assert_eq!(v.messages.len(), 1);
        assert!(v.messages[0].contains("SVM not available on this CPU"));
        assert!(v.messages[0].contains("--cpu EPYC,+svm,+npt"));

        let mut r = report(None, Some(1));
        r.stderr = "qemu: could not load kernel\n".into();
        let v = conclude(&r, &opts());
        assert_eq!(v.code, EXIT_EMULATOR);
        assert!(v.messages[0].contains("could not load kernel"));

        let mut r = report(Some(FinalLine::Stopped(0)), None);
        r.timed_out = true;
        let v = conclude(&r, &opts());
        assert_eq!(v.code, EXIT_TIMEOUT);
        assert!(v.messages[0].contains("timed out after 60 s"));
    }

    #[test]
    fn qemu_command_line() {
        let args = qemu_args(&opts(), Path::new("/x/hello.img"));
        let args: Vec<_> = args.iter().map(|a| a.to_string_lossy()).collect();
        assert_eq!(
            args.join(" "),
            "-accel tcg -icount shift=2,align=off,sleep=off -cpu EPYC,+svm,+npt -m 256 \
             -nodefaults -display none -no-reboot \
             -monitor none -serial stdio -device isa-debug-exit,iobase=0xf4,iosize=1 \
             -kernel /x/hello.img"
        );
    }

    #[test]
    fn qemu_under_kvm_has_no_instruction_clock() {
        let mut o = opts();
        o.cpu = "host".into();
        let args = qemu_args_accel(&o, Path::new("/x/hello.img"), Accel::Kvm);
        let args: Vec<_> = args.iter().map(|a| a.to_string_lossy()).collect();
        assert_eq!(
            args.join(" "),
            "-accel kvm -cpu host -m 256 -nodefaults -display none -no-reboot \
             -monitor none -serial stdio -device isa-debug-exit,iobase=0xf4,iosize=1 \
             -kernel /x/hello.img"
        );
        assert!(!args.iter().any(|a| a.contains("icount")));
        let tcg = qemu_machine_args("EPYC", 64, Accel::Tcg);
        assert_eq!(tcg[..4], ["-accel", "tcg", "-icount", QEMU_ICOUNT]);
    }

    #[test]
    fn qemu_gets_the_arch_on_the_stub_command_line() {
        let mut o = opts();
        o.arch = Some(Arch::Vmx);
        let args = qemu_args(&o, Path::new("/x/hello.img"));
        let args: Vec<_> = args.iter().map(|a| a.to_string_lossy()).collect();
        assert!(args
            .join(" ")
            .ends_with("-kernel /x/hello.img -append arch=vmx"));
    }

    #[test]
    fn emulators_and_their_default_cpus() {
        assert_eq!(EmulatorKind::of("bochs"), EmulatorKind::Bochs);
        assert_eq!(EmulatorKind::of("/usr/bin/bochs"), EmulatorKind::Bochs);
        assert_eq!(EmulatorKind::of(DEFAULT_EMULATOR), EmulatorKind::Qemu);
        assert_eq!(
            EmulatorKind::of("/opt/qemu/bin/qemu-system-x86_64"),
            EmulatorKind::Qemu
        );
        let bochs = EmulatorKind::Bochs;
        assert_eq!(bochs.default_cpu(Some(Arch::Vmx)), "corei7_skylake_x");
        assert_eq!(bochs.default_cpu(None), "corei7_skylake_x");
        assert_eq!(bochs.default_cpu(Some(Arch::Svm)), "ryzen");
        assert_eq!(EmulatorKind::Qemu.default_cpu(Some(Arch::Vmx)), DEFAULT_CPU);
        assert_eq!(Arch::from_name("vmx"), Some(Arch::Vmx));
        assert_eq!(Arch::from_name("VMX"), None);
        assert_eq!(Arch::stub_cmdline(Some(Arch::Svm), false), "arch=svm");
        assert_eq!(Arch::stub_cmdline(None, false), "");
        assert_eq!(Arch::stub_cmdline(None, true), "unsafe_shadow");
        assert_eq!(
            Arch::stub_cmdline(Some(Arch::Vmx), true),
            "arch=vmx unsafe_shadow"
        );
        assert!(emulator_missing_message("bochs").contains("apt-get install bochs bochsbios"));
    }

    #[test]
    fn terminal_escapes_and_carriage_returns_are_dropped() {
        let grub =
            b"\x1b[H\x1b[J\x1b[1;1H  Booting `splitvisor'\r\n\r\n\r[stub] vmx: x\r\nhi\x1b(B!\n";
        // One byte at a time too: the state carries across reads.
        for chunk in [grub.len(), 1] {
            let mut r = StripEscapes::new(Chunked(&grub[..], chunk));
            let mut got = String::new();
            r.read_to_string(&mut got).unwrap();
            assert_eq!(got, "  Booting `splitvisor'\n\n[stub] vmx: x\nhi!\n");
        }
    }

    /// A reader that hands out at most `.1` bytes per read.
    struct Chunked<'a>(&'a [u8], usize);

    impl Read for Chunked<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.0.len().min(self.1).min(buf.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn a_console_file_is_followed_until_the_writer_is_done() {
        let dir = images::image_dir().join("test-tail");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("com1-{}.txt", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let done = Arc::new(AtomicBool::new(false));
        let reader = TailFile::new(path.clone(), done.clone());
        let t = thread::spawn(move || {
            let mut r = reader;
            let mut s = String::new();
            r.read_to_string(&mut s).map(|_| s)
        });
        // The file appears late and grows while it is read.
        thread::sleep(Duration::from_millis(60));
        std::fs::write(&path, "[stub] vmx\n").unwrap();
        thread::sleep(Duration::from_millis(60));
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"[stub] vm stopped: guest status 0\n").unwrap();
        done.store(true, Ordering::SeqCst);
        let got = t.join().unwrap().unwrap();
        assert_eq!(got, "[stub] vmx\n[stub] vm stopped: guest status 0\n");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn bochs_runs_are_not_held_to_qemus_exit_status() {
        let mut o = opts();
        o.emulator = "bochs".into();
        o.cpu = "ryzen".into();
        // Bochs exits 1 after the stub's Shutdown, whatever the outcome.
        let v = conclude(&report(Some(FinalLine::Stopped(0)), Some(1)), &o);
        assert_eq!(v.messages, ["splitvisor: guest exited with status 0"]);
        let cannot = FinalLine::CannotRun("VMX not available on this CPU".into());
        let v = conclude(&report(Some(cannot), Some(1)), &o);
        assert!(
            v.messages[0].contains("--cpu corei7_skylake_x"),
            "{:?}",
            v.messages
        );
    }

    #[test]
    fn programs_are_found_like_a_shell_finds_them() {
        assert!(find_program("sh").is_some());
        assert!(find_program("/bin/sh").is_some());
        assert!(find_program("no-such-program-splitvisor").is_none());
        assert!(find_program("./no/such/file").is_none());
        assert!(find_program("").is_none());
        assert!(emulator_missing_message(DEFAULT_EMULATOR).contains("apt-get install"));
    }

    #[derive(Clone, Default)]
    struct SharedBuf(Arc<Mutex<Vec<u8>>>);

    impl Write for SharedBuf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn sh(script: &str, timeout: Duration) -> (RunReport, String) {
        let buf = SharedBuf::default();
        let args = [OsString::from("-c"), OsString::from(script)];
        let r = run_emulator("sh", &args, timeout, Box::new(buf.clone())).unwrap();
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        (r, out)
    }

    #[test]
    fn emulator_output_is_copied_and_scanned() {
        let (r, out) = sh(
            "printf 'hello\\n[stub] vm stopped: guest status 3\\n'; echo oops >&2; exit 1",
            Duration::from_secs(20),
        );
        assert_eq!(out, "hello\n[stub] vm stopped: guest status 3\n");
        assert_eq!(r.final_line, Some(FinalLine::Stopped(3)));
        assert_eq!(r.status.and_then(|s| s.code()), Some(1));
        assert_eq!(r.stderr, "oops\n");
        assert!(!r.timed_out);
    }

    #[test]
    fn a_hanging_emulator_is_killed_at_the_timeout() {
        let start = Instant::now();
        let (r, out) = sh("echo started; exec sleep 30", Duration::from_millis(300));
        assert!(r.timed_out);
        assert_eq!(out, "started\n");
        assert!(start.elapsed() < Duration::from_secs(10));
        assert_eq!(conclude(&r, &opts()).code, EXIT_TIMEOUT);
    }

    #[test]
    fn a_timeout_says_what_it_knows() {
        let (r, _) = sh(
            "printf '[stub] svm: nested paging\\n[vmm] guest ram 16 MiB\\nguest: step 1\\n\\nguest: step 2'; \
             exec sleep 30",
            Duration::from_millis(500),
        );
        assert!(r.timed_out);
        assert_eq!(r.tail.guest_line.as_deref(), Some("guest: step 2"));
        let v = conclude(&r, &opts());
        assert_eq!(v.code, EXIT_TIMEOUT);
        let text = v.messages.join("\n");
        assert!(text.contains("timed out after 60 s"), "{text}");
        assert!(text.contains("no verdict"), "{text}");
        assert!(
            text.contains("the guest's last output line: guest: step 2"),
            "{text}"
        );
        assert!(
            text.contains("  [stub] svm: nested paging\n  [vmm] guest ram 16 MiB"),
            "{text}"
        );
    }

    #[test]
    fn the_console_tail_keeps_the_last_system_lines_and_guest_line() {
        let mut s = LineScanner::default();
        for i in 0..20 {
            s.feed(format!("[vmm] line {i}\r\n").as_bytes());
        }
        s.feed(b"guest says hi\n\n   \n[stub] x\npartial");
        let t = s.tail();
        assert_eq!(t.system_lines.len(), TAIL_LINES);
        assert_eq!(t.system_lines.front().unwrap(), "[vmm] line 13");
        assert_eq!(t.system_lines.back().unwrap(), "[stub] x");
        assert_eq!(t.guest_line.as_deref(), Some("partial"));
        let mut s = LineScanner::default();
        s.feed(b"[stub] only\n");
        let m = s.tail().no_verdict_messages();
        assert!(
            m.iter()
                .any(|l| l == "splitvisor: the guest printed nothing"),
            "{m:?}"
        );
    }

    #[test]
    fn the_escape_parser_passes_keys_and_quits_on_ctrl_a_x() {
        let mut p = EscapeParser::default();
        let keys: Vec<ConsoleKey> = b"a\x03\x01\x01b\x01qc\x01h\x01x"
            .iter()
            .map(|&b| p.feed(b))
            .collect();
        use ConsoleKey::*;
        assert_eq!(
            keys,
            [
                Send(b'a'),
                Send(0x03), // Ctrl-C goes to the guest
                Nothing,
                Send(0x01), // Ctrl-A Ctrl-A sends Ctrl-A
                Send(b'b'),
                Nothing,
                Nothing, // an unknown escape is dropped
                Send(b'c'),
                Nothing,
                Help,
                Nothing,
                Quit,
            ]
        );
        let mut p = EscapeParser::default();
        assert_eq!((p.feed(0x01), p.feed(b'X')), (Nothing, Quit));
        assert_eq!(p.feed(b'x'), Send(b'x'), "the escape ended");
    }

    /// Typed bytes reach the emulator's stdin, Ctrl-C as a byte; Ctrl-A X
    /// kills it and the verdict says so.
    #[test]
    fn ctrl_a_x_quits_the_console_and_ctrl_c_reaches_the_guest() {
        let buf = SharedBuf::default();
        let mut cmd = Command::new("sh");
        // Echo what arrives as hex, one byte a line, until stdin ends.
        cmd.args(["-c", "echo ready; exec od -An -tx1 -v -w1"]);
        let typed = Box::new(io::Cursor::new(b"\x03\x01\x01z\x01x ignored".to_vec()));
        let start = Instant::now();
        let r = run_console(
            cmd,
            "sh",
            Duration::from_secs(20),
            Box::new(buf.clone()),
            typed,
        )
        .unwrap();
        assert!(r.quit, "{r:?}");
        assert!(!r.timed_out);
        assert!(start.elapsed() < Duration::from_secs(10));
        let v = conclude(&r, &opts());
        assert_eq!(v.code, EXIT_QUIT);
        assert!(
            v.messages[0].contains("quit (Ctrl-A X)"),
            "{:?}",
            v.messages
        );
        assert!(
            v.messages.iter().any(|m| m.contains("no verdict")),
            "{:?}",
            v.messages
        );
    }

    #[test]
    fn console_keys_reach_the_emulator_until_input_ends() {
        let buf = SharedBuf::default();
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "od -An -tx1 -v -w1"]);
        let typed = Box::new(io::Cursor::new(b"\x03\x01\x01z".to_vec()));
        let r = run_console(
            cmd,
            "sh",
            Duration::from_secs(20),
            Box::new(buf.clone()),
            typed,
        )
        .unwrap();
        assert!(!r.quit && !r.timed_out, "{r:?}");
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let bytes: Vec<&str> = out.split_whitespace().collect();
        assert_eq!(bytes, ["03", "01", "7a"], "{out}");
    }

    #[test]
    fn a_missing_emulator_is_a_spawn_error() {
        let r = run_emulator(
            "/no/such/emulator",
            &[],
            Duration::from_secs(1),
            Box::new(io::sink()),
        );
        assert!(r.is_err());
    }
}

/// A console sink that keeps what it is given and the time each line was
/// complete (from `start`): what the benchmarks and the plain-QEMU
/// reference runs time the guest's lines with.
#[derive(Clone)]
pub struct TimedConsole {
    /// Time zero of the line times.
    pub start: Instant,
    /// What was kept, shared with the clones given to the console reader.
    pub inner: Arc<Mutex<TimedText>>,
}

/// What a [`TimedConsole`] kept.
#[derive(Default)]
pub struct TimedText {
    /// Every byte so far.
    pub bytes: Vec<u8>,
    /// Where the line being written starts.
    line_start: usize,
    /// Each complete line and when its newline arrived.
    pub lines: Vec<(Duration, String)>,
}

impl TimedText {
    /// When the first line starting with `prefix` was complete.
    pub fn when(&self, prefix: &str) -> Option<Duration> {
        self.lines
            .iter()
            .find(|(_, l)| l.starts_with(prefix))
            .map(|(t, _)| *t)
    }
}

impl Write for TimedConsole {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let now = self.start.elapsed();
        let mut g = self.inner.lock().unwrap();
        g.bytes.extend_from_slice(buf);
        while let Some(n) = g.bytes[g.line_start..].iter().position(|&b| b == b'\n') {
            let end = g.line_start + n;
            let line = String::from_utf8_lossy(&g.bytes[g.line_start..end])
                .trim_end_matches('\r')
                .to_string();
            g.lines.push((now, line));
            g.line_start = end + 1;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
