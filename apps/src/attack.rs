//! `splitvisor attack`: the attack campaign against the stub.
//!
//! Builds the hostile servers (crate `attack/`, package `attack-servers`:
//! `hostile-mmu` takes the mmu-server's task kind, `hostile-vmm` the
//! vmm-server's), packs them in place of the real ones with the `hello`
//! guest as the probe (`images::SystemSpec::hostile_servers`; no other
//! image ever has them), and boots the images in QEMU with emulated SVM,
//! nested (`EPYC,+svm,+npt`) and shadow (`EPYC,+svm,-npt`) paging. Each
//! mode gets three kinds of boot: the main one (system calls, installs,
//! resumes, bad handles; the probe must then run to its end), the
//! destructive one (shadow-table exhaustion, freeing the live root, an
//! interrupt the guest cannot take) and the FPU one (x87/SSE in a server
//! must fault). The guest-side attacks (`tssescape`, `efersvme`, when the
//! image builder has them) boot with the real servers, once per mode, and
//! so does the hostile virtio driver (`hostile-driver`, the `virtio` row:
//! its attacks on the virtio-console function and, on QEMU, the
//! virtio-blk function of a scratch disk).
//!
//! The servers print `attack: ...` lines (protocol in `attack/src/lib.rs`).
//! When an attempt ends the run (the stub accepted something that made the
//! VM fail, the stub faulted, or a server faulted as it must in the FPU
//! boot), the last `try` line names it: it is counted, and the boot is
//! repeated with that attempt skipped (a list patched into the servers'
//! ELF at the `SPLTVSR-ATTACK-1` block), until a boot runs every other
//! attempt to the servers' `done`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipc_proto::manifest::MmuMode;

use crate::run::{
    find_program, qemu_args, run_command, run_emulator, Arch, Capture, Console, FinalLine,
    RunOptions, TimedConsole, DEFAULT_EMULATOR,
};

/// The probe guest the hostile servers boot after their campaign.
pub const PROBE_GUEST: &str = "hello";
/// The probe's own line.
const PROBE_LINE: &str = "hello from the guest";
/// The guests that attack from inside (another engineer's), used when the
/// image builder has them.
pub const GUEST_ATTACKS: &[&str] = &["tssescape", "efersvme"];
/// The hostile virtio driver guest (`images/guests/hostile-driver.S`).
pub const VIRTIO_ATTACK: &str = "hostile-driver";
/// What a guest-side attack prints when it got out.
const ESCAPE_MARKER: &str = "ESCAPED";

/// The configuration block of `attack/src/lib.rs` (`Config`): 16 bytes of
/// magic, then `boot`, `short`, `nskip`, `reserved`, `skip[MAX_SKIPS]`,
/// all little-endian `u32`.
const CONFIG_MAGIC: &[u8; 16] = b"SPLTVSR-ATTACK-1";
const MAX_SKIPS: usize = 128;
const SERVER_MMU: u32 = 0;
const SERVER_VMM: u32 = 1;

/// Most boots one mode and kind may take (each run-ending attempt costs one).
const MAX_ROUNDS: usize = MAX_SKIPS + 1;

/// Rows of the table, in order.
pub const CLASSES: &[&str] = &[
    "installs",
    "resumes",
    "syscalls",
    "exhaustion",
    "fpu",
    "portio",
    "random-resumes",
    "leaks",
    "restart",
    "guests",
    "virtio",
];

/// The kinds of boot, with the number the servers know them by.
pub const BOOTS: &[(&str, u32)] = &[
    ("main", 0),
    ("destructive", 1),
    ("fpu", 2),
    ("random", 3),
    ("restart", 4),
];

/// The emulator the campaign boots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emulator {
    /// QEMU (TCG) with emulated SVM: `EPYC,+svm,+npt` and `EPYC,+svm,-npt`.
    Qemu,
    /// Bochs from a GRUB ISO: `corei7_skylake_x` for VMX (EPT and shadow
    /// paging), `ryzen` for SVM (NPT and shadow paging).
    Bochs,
}

/// One machine the campaign boots: emulator, CPU, extension, MMU mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// `npt`, `shadow` (QEMU) or `vmx-ept`, `vmx-shadow`, `svm-npt`, `svm-shadow` (Bochs).
    pub name: String,
    /// The emulator.
    pub emulator: Emulator,
    /// QEMU's `-cpu` or Bochs's `cpu: model=`.
    pub cpu: String,
    /// The extension the stub is told to use (Bochs), or none (QEMU: SVM from CPUID).
    pub arch: Option<Arch>,
    /// Nested or shadow paging.
    pub mode: MmuMode,
}

/// The machines for `emulator`, the `arches` (Bochs) and `modes`.
pub fn targets(emulator: Emulator, arches: &[Arch], modes: &[MmuMode]) -> Vec<Target> {
    let mut out = Vec::new();
    match emulator {
        Emulator::Qemu => {
            for &mode in modes {
                out.push(Target {
                    name: mode_name(mode).to_string(),
                    emulator,
                    cpu: cpu_of(mode).to_string(),
                    arch: None,
                    mode,
                });
            }
        }
        Emulator::Bochs => {
            for &arch in arches {
                for &mode in modes {
                    let (cpu, nested) = match arch {
                        Arch::Vmx => (crate::bochs::DEFAULT_CPU_VMX, "ept"),
                        Arch::Svm => (crate::bochs::DEFAULT_CPU_SVM, "npt"),
                    };
                    let paging = match mode {
                        MmuMode::Nested => nested,
                        _ => "shadow",
                    };
                    out.push(Target {
                        name: format!("{}-{paging}", arch.name()),
                        emulator,
                        cpu: cpu.to_string(),
                        arch: Some(arch),
                        mode,
                    });
                }
            }
        }
    }
    out
}

/// A seed for the random class when none is given: from the clock.
pub fn fresh_seed() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (t.as_nanos() as u32 ^ (t.as_secs() as u32).rotate_left(16)) | 1
}

/// Whether a stub's `vm failed:` reason says the CPU refused to enter the
/// guest (`arch::EntryFailure`): SVM's VMRUN consistency checks or an
/// exit code no intercept gives, VMX's VMLAUNCH/VMRESUME failures and
/// failed entries.
pub fn is_entry_failure(reason: &str) -> bool {
    [
        "VMRUN failed its consistency checks",
        "VMRUN ended with exit code",
        "VMLAUNCH failed",
        "VMRESUME failed",
        "VM entry failed",
    ]
    .iter()
    .any(|t| reason.contains(t))
}

/// How to run the campaign.
#[derive(Clone, Debug)]
pub struct AttackOptions {
    /// Fewer random attempts (CI).
    pub short: bool,
    /// The MMU modes to attack: nested and/or shadow.
    pub modes: Vec<MmuMode>,
    /// Wall-clock limit of one boot.
    pub timeout: Duration,
    /// Print every boot's console on stderr.
    pub verbose: bool,
    /// QEMU or Bochs.
    pub emulator: Emulator,
    /// With Bochs: VMX (`corei7_skylake_x`) and/or SVM (`ryzen`).
    pub arches: Vec<Arch>,
    /// The random class's seed.
    pub seed: u32,
    /// The kinds of boot to make (names of [`BOOTS`]); empty: all.
    pub boots: Vec<String>,
    /// Boot the guest-side attacks too.
    pub guests: bool,
}

impl Default for AttackOptions {
    fn default() -> Self {
        Self {
            short: false,
            modes: vec![MmuMode::Nested, MmuMode::Shadow],
            timeout: Duration::from_secs(180),
            verbose: false,
            emulator: Emulator::Qemu,
            arches: vec![Arch::Vmx, Arch::Svm],
            seed: 1,
            boots: Vec::new(),
            guests: true,
        }
    }
}

/// One row of the table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Row {
    /// Attempts made.
    pub attempts: u64,
    /// The stub refused (or, in the FPU class, the server faulted cleanly).
    pub refused: u64,
    /// The stub accepted something its oracle allows.
    pub accepted_ok: u64,
    /// Runs that ended with `[stub] vm failed: stub fault`, or hung.
    pub stub_faults: u64,
    /// The stub accepted something its oracle says it must refuse, or a
    /// guest printed that it reached host memory.
    pub escapes: u64,
    /// Controls the stub refused (denial of service, not an escape).
    pub denied: u64,
}

impl Row {
    fn add(&mut self, o: &Row) {
        self.attempts += o.attempts;
        self.refused += o.refused;
        self.accepted_ok += o.accepted_ok;
        self.stub_faults += o.stub_faults;
        self.escapes += o.escapes;
        self.denied += o.denied;
    }
}

/// What the campaign found.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Per class.
    pub rows: BTreeMap<String, Row>,
    /// One line per escape: mode, server, attempt.
    pub escapes: Vec<String>,
    /// One line per stub fault or hang.
    pub stub_faults: Vec<String>,
    /// One line per refused control.
    pub denied: Vec<String>,
    /// How each boot that ran its campaign to the end finished.
    pub notes: Vec<String>,
    /// Whether every main boot's probe guest ran to its end.
    pub probe_ok: bool,
    /// Draws of the random class whose entry the CPU refused after the
    /// stub accepted them: the draw and the stub's line.
    pub disagreements: Vec<String>,
    /// Boots made.
    pub boots: u64,
}

impl Report {
    fn row(&mut self, class: &str) -> &mut Row {
        self.rows.entry(class.to_string()).or_default()
    }

    /// Total of every class.
    pub fn total(&self) -> Row {
        let mut t = Row::default();
        for r in self.rows.values() {
            t.add(r);
        }
        t
    }

    /// No stub fault and no escape.
    pub fn clean(&self) -> bool {
        let t = self.total();
        t.stub_faults == 0 && t.escapes == 0
    }

    /// The table: class | attempts | refused | accepted | stub faults |
    /// escapes | denied.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "| class          | attempts | refused | accepted (allowed) | stub faults | escapes | denied |"
        );
        let _ = writeln!(
            s,
            "|----------------|---------:|--------:|-------------------:|------------:|--------:|-------:|"
        );
        let mut line = |name: &str, r: &Row| {
            let _ = writeln!(
                s,
                "| {name:<14} | {:>8} | {:>7} | {:>18} | {:>11} | {:>7} | {:>6} |",
                r.attempts, r.refused, r.accepted_ok, r.stub_faults, r.escapes, r.denied
            );
        };
        for class in CLASSES {
            if let Some(r) = self.rows.get(*class) {
                line(class, r);
            }
        }
        for (class, r) in &self.rows {
            if !CLASSES.contains(&class.as_str()) {
                line(class, r);
            }
        }
        line("total", &self.total());
        s
    }
}

/// One `attack: try` line.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Try {
    server: u32,
    index: u32,
    class: String,
    must: String,
    name: String,
}

fn server_number(name: &str) -> Option<u32> {
    match name {
        "mmu" => Some(SERVER_MMU),
        "vmm" => Some(SERVER_VMM),
        _ => None,
    }
}

fn server_name(n: u32) -> &'static str {
    if n == SERVER_MMU {
        "mmu"
    } else {
        "vmm"
    }
}

/// What one boot's console says.
#[derive(Debug, Default)]
struct Parsed {
    /// Per server: the last `try` (with its line number) and whether `done`.
    last_try: BTreeMap<u32, (usize, Try)>,
    done: Vec<u32>,
    rows: BTreeMap<String, Row>,
    escapes: Vec<String>,
    denied: Vec<String>,
}

impl Parsed {
    /// The attempt that ended the run: the latest `try` of a server that
    /// did not say `done`.
    fn culprit(&self) -> Option<&Try> {
        self.last_try
            .iter()
            .filter(|(s, _)| !self.done.contains(s))
            .max_by_key(|(_, (pos, _))| *pos)
            .map(|(_, (_, t))| t)
    }
}

fn parse(console: &str) -> Parsed {
    let mut p = Parsed::default();
    for (pos, line) in console.lines().enumerate() {
        let Some(at) = line.find("attack: ") else {
            continue;
        };
        let rest = &line[at + "attack: ".len()..];
        let words: Vec<&str> = rest.split_whitespace().collect();
        match words.as_slice() {
            ["try", server, index, class, must, name @ ..] => {
                if let (Some(server), Ok(index)) = (server_number(server), index.parse()) {
                    let t = Try {
                        server,
                        index,
                        class: class.to_string(),
                        must: must.to_string(),
                        name: name.join(" "),
                    };
                    p.last_try.insert(server, (pos, t));
                }
            }
            ["done", server] => {
                if let Some(s) = server_number(server) {
                    p.done.push(s);
                }
            }
            ["escape", ..] => p.escapes.push(rest.to_string()),
            ["denied", ..] => p.denied.push(rest.to_string()),
            [server, class, figures @ ..]
                if server_number(server).is_some()
                    && figures.first().is_some_and(|f| f.starts_with("attempts=")) =>
            {
                let mut r = Row::default();
                for f in figures {
                    let Some((k, v)) = f.split_once('=') else {
                        continue;
                    };
                    let v: u64 = v.parse().unwrap_or(0);
                    match k {
                        "attempts" => r.attempts = v,
                        "refused" => r.refused = v,
                        "accepted_ok" => r.accepted_ok = v,
                        "escapes" => r.escapes = v,
                        "denied" => r.denied = v,
                        _ => {}
                    }
                }
                p.rows.entry(class.to_string()).or_default().add(&r);
            }
            _ => {}
        }
    }
    p
}

fn mode_name(m: MmuMode) -> &'static str {
    match m {
        MmuMode::Nested => "npt",
        _ => "shadow",
    }
}

fn cpu_of(m: MmuMode) -> &'static str {
    match m {
        MmuMode::Nested => "EPYC,+svm,+npt",
        _ => "EPYC,+svm,-npt",
    }
}

/// Builds the hostile servers for the bare target, in `target/image` as
/// `images::build_target_crates` builds the real ones; returns (vmm, mmu).
pub fn build_hostile_servers() -> Result<(PathBuf, PathBuf), String> {
    let [vmm, mmu] = images::build_for_target(&["attack-servers"], ["hostile-vmm", "hostile-mmu"])
        .map_err(|e| format!("building the hostile servers failed: {e}"))?;
    Ok((vmm, mmu))
}

/// Builds the stub's probe device server (`attack/src/bin/probe-device.rs`).
pub fn build_probe_device() -> Result<PathBuf, String> {
    let [elf] = images::build_for_target(&["attack-servers"], ["probe-device"])
        .map_err(|e| format!("building the probe device server failed: {e}"))?;
    Ok(elf)
}

/// Boots `system` once on `target` and returns its console: for the tests
/// of servers that are not the hostile ones (the probe device server).
pub fn boot_once(
    system: images::SystemSpec,
    target: &Target,
    timeout: Duration,
) -> Result<String, String> {
    let opts = AttackOptions {
        timeout,
        ..AttackOptions::default()
    };
    Ok(boot_image(system, target, &opts)?.console)
}

/// Issue 13's isolation case: the hostile servers' main campaign (boot
/// `main`, `opts.short`) as VM 0, beside `other` with the real servers as
/// VM 1, on QEMU with NPT. Returns how the run ended, its console, where
/// VM 0's lines start with `[vm0] ` and VM 1's with `[vm1] `, and each
/// line with the time it arrived.
pub fn beside_a_vm(
    opts: &AttackOptions,
    other: &str,
) -> Result<(Option<FinalLine>, String, TimedLines), String> {
    let (vmm, mmu) = build_hostile_servers()?;
    let dir = images::image_dir().join("attack");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let tag = format!("{}-vms", std::process::id());
    let mut paths = Vec::new();
    for (elf, kind) in [(vmm, "vmm"), (mmu, "mmu")] {
        let bytes = std::fs::read(&elf).map_err(|e| format!("{}: {e}", elf.display()))?;
        let path = dir.join(format!("{tag}-hostile-{kind}"));
        // BOOTS[0]: the main boot.
        let patched = patch(&bytes, BOOTS[0].1, opts.short, opts.seed, &[])?;
        images::write_atomic(&path, &patched).map_err(|e| e.to_string())?;
        paths.push(path);
    }
    let [vmm_server, mmu_server] = <[PathBuf; 2]>::try_from(paths).map_err(|_| "two servers")?;
    let system = images::SystemSpec {
        hostile_servers: Some(images::HostileServers {
            vmm_server,
            mmu_server,
            tag,
        }),
        more_vms: vec![images::SystemSpec::new(other)],
        ..images::SystemSpec::new(PROBE_GUEST)
    };
    let target = targets(Emulator::Qemu, &[], &[MmuMode::Nested]).remove(0);
    let out = boot_image(system, &target, opts)?;
    Ok((out.final_line, out.console, out.lines))
}

/// Console lines, each with the time it arrived.
pub type TimedLines = Vec<(Duration, String)>;

/// The `timer` guest's checks: from its PIT line to its last line.
const TIMER_FIRST: &str = "timer: pit channel 0";
const TIMER_LAST: &str = "timer: all checks passed";

/// How long the `timer` guest's checks took in a run's console `lines`,
/// its lines starting with `prefix` (`[vm1] `, or none alone).
pub fn timer_span(lines: &[(Duration, String)], prefix: &str) -> Option<Duration> {
    let when = |text: &str| {
        lines
            .iter()
            .find(|(_, l)| l.strip_prefix(prefix).is_some_and(|l| l.starts_with(text)))
            .map(|(t, _)| *t)
    };
    when(TIMER_LAST)?.checked_sub(when(TIMER_FIRST)?)
}

/// The slowdown `attack --beside` accepts for the `timer` VM beside the
/// hostile VM against alone: two VMs share one CPU round-robin in 10 ms
/// slices, so a fair share is at most twice as slow; the rest is room
/// for a loaded host.
pub const BESIDE_BOUND: f64 = 2.5;

/// `splitvisor attack --beside`: the `timer` guest alone, then beside
/// the hostile servers' main campaign ([`beside_a_vm`]), on QEMU with
/// NPT; 0 when it passed beside them within [`BESIDE_BOUND`] of its time
/// alone and nothing escaped.
pub fn beside_cli(opts: &AttackOptions) -> i32 {
    let target = targets(Emulator::Qemu, &[], &[MmuMode::Nested]).remove(0);
    eprintln!(
        "attack: the timer guest alone ({} {})",
        target.name, target.cpu
    );
    let alone = match boot_image(images::SystemSpec::new("timer"), &target, opts) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("splitvisor: attack: {e}");
            return 1;
        }
    };
    eprintln!("attack: the timer guest as VM 1 beside the hostile servers as VM 0");
    let (last, console, lines) = match beside_a_vm(opts, "timer") {
        Ok(r) => r,
        Err(e) => {
            eprintln!("splitvisor: attack: {e}");
            return 1;
        }
    };
    let parsed = parse(&console);
    let mut t = Row::default();
    parsed.rows.values().for_each(|r| t.add(r));
    let escapes = parsed.escapes.len();
    let fault = console.contains("stub fault");
    let passed = console.lines().any(|l| l == format!("[vm1] {TIMER_LAST}"));
    let (a, b) = (timer_span(&alone.lines, ""), timer_span(&lines, "[vm1] "));
    println!(
        "isolation beside a hostile VM (seed {}; {} {}, one CPU, 10 ms slices): the timer guest's checks, from `{TIMER_FIRST}` to `{TIMER_LAST}`, wall time",
        opts.seed, target.name, target.cpu
    );
    let secs =
        |d: Option<Duration>| d.map_or("-".to_string(), |d| format!("{:.2} s", d.as_secs_f64()));
    println!("  alone:                        {}", secs(a));
    let ratio = a
        .zip(b)
        .map(|(a, b)| b.as_secs_f64() / a.as_secs_f64().max(1e-3));
    println!(
        "  as VM 1 beside the hostile VM 0: {}{}",
        secs(b),
        ratio.map_or(String::new(), |r| format!(
            " ({r:.2}x alone; bound {BESIDE_BOUND}x: a fair share of one CPU is at most 2x)"
        ))
    );
    println!(
        "  hostile VM 0: {} attempts, {} refused, {} escapes; VM 1 passed every check: {}; stub faults: {}; the run ended: {last:?}",
        t.attempts,
        t.refused,
        escapes,
        if passed { "yes" } else { "NO" },
        if fault { "yes" } else { "none" }
    );
    let within = ratio.is_some_and(|r| r <= BESIDE_BOUND);
    i32::from(!(passed && within && escapes == 0 && !fault))
}

/// Issue 13's bad input between VMs: two `timer` VMs on one switch in no
/// VM (`--net switch`), VM 0 with one more port, the hostile link
/// (`attack/src/bin/hostile-link.rs`): it names channels that are not
/// its own, sends the switch a runt, a giant, a multicast source and a
/// flood of 100 broadcast frames. Returns the final line and the console.
pub fn hostile_link_beside_a_vm(
    opts: &AttackOptions,
) -> Result<(Option<FinalLine>, String), String> {
    const HOSTILE_LINK: &str = "hostile-link";
    let mut system = images::SystemSpec {
        more_vms: vec![images::SystemSpec::new("timer")],
        ..images::SystemSpec::new("timer")
    };
    crate::nic::add_net_servers(&mut system, &crate::nic::NetSpec::default())?;
    let switch = format!("{}{}", images::IN_NO_VM, crate::nic::SWITCH);
    system
        .device_channels
        .push((HOSTILE_LINK.into(), switch.clone()));
    let ch = system
        .channel_number(HOSTILE_LINK, &switch)
        .and_then(|n| n.checked_add(1))
        .ok_or("the hostile link's channel has no number")?;
    let [elf] = images::build_for_target(&["attack-servers"], [HOSTILE_LINK])
        .map_err(|e| format!("building the hostile link failed: {e}"))?;
    // Its configuration block's magic (`hostile-link.rs`'s CONFIG_MAGIC).
    let elf = crate::disk::patch_config(&elf, b"SVHOSTILELNK", ch, "hostile-link-patched")?;
    system.device_servers.push(images::DeviceServer {
        name: HOSTILE_LINK.into(),
        elf,
        rights: ipc_proto::manifest::Rights {
            console: true,
            ..ipc_proto::manifest::Rights::default()
        },
    });
    let target = targets(Emulator::Qemu, &[], &[MmuMode::Nested]).remove(0);
    let out = boot_image(system, &target, opts)?;
    Ok((out.final_line, out.console))
}

/// `elf` with its configuration block set to `boot`, `short` and `skips`.
fn patch(elf: &[u8], boot: u32, short: bool, seed: u32, skips: &[u32]) -> Result<Vec<u8>, String> {
    let at = elf
        .windows(CONFIG_MAGIC.len())
        .position(|w| w == CONFIG_MAGIC)
        .ok_or("the hostile server has no configuration block")?;
    if skips.len() > MAX_SKIPS {
        return Err(format!("more than {MAX_SKIPS} attempts to skip"));
    }
    let mut out = elf.to_vec();
    let mut put = |i: usize, v: u32| {
        let o = at + 16 + 4 * i;
        out[o..o + 4].copy_from_slice(&v.to_le_bytes());
    };
    put(0, boot);
    put(1, u32::from(short));
    put(2, skips.len() as u32);
    put(3, seed);
    for i in 0..MAX_SKIPS {
        put(4 + i, skips.get(i).copied().unwrap_or(0));
    }
    Ok(out)
}

struct BootOutcome {
    final_line: Option<FinalLine>,
    /// Killed at the time limit (else, without a final line, the emulator
    /// ended by itself: the host machine reset or stopped).
    timed_out: bool,
    console: String,
    /// Each console line and when it arrived (QEMU boots; none on Bochs).
    lines: TimedLines,
}

fn boot_image(
    system: images::SystemSpec,
    target: &Target,
    opts: &AttackOptions,
) -> Result<BootOutcome, String> {
    boot_image_with_disk(system, target, opts, None)
}

/// [`boot_image`] with `disk` as QEMU's IDE disk (QEMU only).
fn boot_image_with_disk(
    system: images::SystemSpec,
    target: &Target,
    opts: &AttackOptions,
    disk: Option<&crate::disk::Disk>,
) -> Result<BootOutcome, String> {
    if target.emulator == Emulator::Bochs {
        return boot_bochs(system, target, opts);
    }
    let image = images::build_system_spec(&system).map_err(|e| e.to_string())?;
    let unsafe_shadow = system.mmu.is_shadow() && system.guest != "tssescape";
    let run = RunOptions {
        system,
        cpu: target.cpu.clone(),
        arch: None,
        emulator: DEFAULT_EMULATOR.to_string(),
        timeout: opts.timeout,
        memory_mib: 256,
        // QEMU's TCG ignores the task-switch intercept: the hostile servers
        // run beside a guest of ours; the task-switch guest must be refused.
        unsafe_shadow,
    };
    let console = TimedConsole {
        start: Instant::now(),
        inner: Arc::default(),
    };
    let mut args = qemu_args(&run, &image);
    if let Some(d) = disk {
        args.extend(d.qemu_args());
    }
    let report = run_emulator(
        DEFAULT_EMULATOR,
        &args,
        opts.timeout,
        Box::new(console.clone()),
    )
    .map_err(|e| format!("{e} (scripts/install-deps installs QEMU)"))?;
    let kept = std::mem::take(&mut *console.inner.lock().unwrap());
    let text = String::from_utf8_lossy(&kept.bytes).into_owned();
    if opts.verbose {
        eprintln!("{text}");
    }
    Ok(BootOutcome {
        final_line: report.final_line,
        timed_out: report.timed_out,
        console: text,
        lines: kept.lines,
    })
}

/// One boot in Bochs: the image on a GRUB ISO with `arch=` on the stub's
/// command line, COM1 in a file (as `splitvisor run --emulator bochs`).
fn boot_bochs(
    system: images::SystemSpec,
    target: &Target,
    opts: &AttackOptions,
) -> Result<BootOutcome, String> {
    use crate::bochs;
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let files = bochs::bochs_files();
    if let Some(m) = bochs::missing_files(&files) {
        return Err(m);
    }
    let program = find_program("bochs").ok_or_else(|| bochs::PACKAGES_SENTENCE.to_string())?;
    let image = images::build_system_spec(&system).map_err(|e| e.to_string())?;
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = images::image_dir()
        .join("attack")
        .join(format!("bochs-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let run_files = bochs::RunFiles {
        iso: dir.join("attack.iso"),
        com1: dir.join("com1.txt"),
        log: dir.join("bochs.log"),
    };
    images::iso::build_iso(
        &image,
        &run_files.iso,
        &Arch::stub_cmdline(target.arch, false),
    )
    .map_err(|e| format!("could not build the ISO: {e}"))?;
    let rc = bochs::bochsrc(&target.cpu, 256, &files, &run_files)?;
    let (rc_path, cmds_path) = (dir.join("bochsrc"), dir.join("rc"));
    std::fs::write(&rc_path, rc)
        .and_then(|()| std::fs::write(&cmds_path, bochs::DEBUGGER_COMMANDS))
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut cmd = Command::new(&program);
    cmd.args(bochs::bochs_args(&rc_path, &cmds_path))
        .current_dir(&dir)
        .env("TERM", "vt100");
    let console = Capture::default();
    let report = run_command(
        cmd,
        &program.to_string_lossy(),
        opts.timeout,
        Console::File(run_files.com1.clone()),
        Box::new(console.clone()),
    )
    .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&console.0.lock().unwrap()).into_owned();
    if opts.verbose {
        eprintln!("{text}");
    }
    if report.final_line.is_some() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!(
            "attack: Bochs's configuration, log and COM1 output are in {}",
            dir.display()
        );
    }
    Ok(BootOutcome {
        final_line: report.final_line,
        timed_out: report.timed_out,
        console: text,
        lines: Vec::new(),
    })
}

fn is_stub_fault(f: &Option<FinalLine>) -> bool {
    match f {
        None => true,
        Some(FinalLine::Failed(r)) => r.starts_with("stub fault"),
        _ => false,
    }
}

fn describe(out: &BootOutcome) -> String {
    match &out.final_line {
        None if out.timed_out => "no final line: timed out (the stub hung)".into(),
        None => "no final line: the emulator ended without it (the host machine reset or stopped)"
            .into(),
        Some(FinalLine::Stopped(n)) => format!("vm stopped: guest status {n}"),
        Some(FinalLine::Failed(r)) => format!("vm failed: {r}"),
        Some(FinalLine::CannotRun(r)) => format!("cannot run: {r}"),
    }
}

struct Campaign<'a> {
    opts: &'a AttackOptions,
    vmm_elf: Vec<u8>,
    mmu_elf: Vec<u8>,
    dir: PathBuf,
    report: Report,
}

impl Campaign<'_> {
    /// Boots one mode and kind until a boot runs both campaigns to `done`.
    fn boots(&mut self, target: &Target, boot_name: &str, boot: u32) -> Result<(), String> {
        let mode = target.mode;
        let how = format!("{} {boot_name}", target.name);
        let mut skips: Vec<u32> = Vec::new();
        for _ in 0..MAX_ROUNDS {
            let tag = format!("{}-{}", std::process::id(), target.name);
            let vmm_path = self.dir.join(format!("{tag}-hostile-vmm"));
            let mmu_path = self.dir.join(format!("{tag}-hostile-mmu"));
            let write = |p: &Path, elf: &[u8]| -> Result<(), String> {
                let bytes = patch(elf, boot, self.opts.short, self.opts.seed, &skips)?;
                images::write_atomic(p, &bytes).map_err(|e| e.to_string())
            };
            write(&vmm_path, &self.vmm_elf)?;
            write(&mmu_path, &self.mmu_elf)?;
            let system = images::SystemSpec {
                mmu: mode,
                hostile_servers: Some(images::HostileServers {
                    vmm_server: vmm_path,
                    mmu_server: mmu_path,
                    tag,
                }),
                ..images::SystemSpec::new(PROBE_GUEST)
            };
            let start = Instant::now();
            let out = boot_image(system, target, self.opts)?;
            self.report.boots += 1;
            let parsed = parse(&out.console);
            let secs = start.elapsed().as_secs_f64();
            if let Some(t) = parsed.culprit() {
                let what = format!(
                    "{how}: {} #{} {} ({}) {}",
                    server_name(t.server),
                    t.index,
                    t.class,
                    t.must,
                    t.name
                );
                let ended = describe(&out);
                let mut row = Row {
                    attempts: 1,
                    ..Row::default()
                };
                let verdict;
                let entry_failed = matches!(&out.final_line,
                    Some(FinalLine::Failed(r)) if is_entry_failure(r));
                if is_stub_fault(&out.final_line) {
                    row.stub_faults += 1;
                    verdict = "STUB FAULT";
                    self.report.stub_faults.push(format!("{what}: {ended}"));
                } else if entry_failed && t.must != "refuse" {
                    // Accepted, and the CPU refused to enter: the validator
                    // and the CPU's consistency checks disagree.
                    row.escapes += 1;
                    verdict = "ESCAPE (accepted, and the CPU refused the entry)";
                    self.report.escapes.push(format!("{what}: {ended}"));
                    self.report
                        .disagreements
                        .push(format!("{what}\n      {ended}"));
                } else if (t.class == "fpu" || t.class == "portio")
                    && matches!(&out.final_line, Some(FinalLine::Failed(r)) if r.contains("faulted"))
                {
                    row.refused += 1;
                    verdict = "refused (the server faulted)";
                } else if t.must == "refuse" {
                    row.escapes += 1;
                    verdict = "ESCAPE (accepted, and the run ended)";
                    self.report.escapes.push(format!("{what}: {ended}"));
                } else {
                    row.accepted_ok += 1;
                    verdict = "accepted (allowed), and the run ended";
                }
                self.report.row(&t.class).add(&row);
                eprintln!("attack: {what}: {verdict}: {ended} ({secs:.1} s)");
                skips.push(t.server << 24 | t.index);
                if skips.len() > MAX_SKIPS {
                    self.report.notes.push(format!(
                        "{how}: gave up after {MAX_SKIPS} run-ending attempts"
                    ));
                    return Ok(());
                }
                continue;
            }
            // Both campaigns ran to `done` (or one never started).
            for s in [SERVER_MMU, SERVER_VMM] {
                if !parsed.done.contains(&s) {
                    self.report.notes.push(format!(
                        "{how}: the {} campaign did not run ({})",
                        server_name(s),
                        describe(&out)
                    ));
                }
            }
            for (class, r) in &parsed.rows {
                self.report.row(class).add(r);
            }
            self.report
                .escapes
                .extend(parsed.escapes.iter().map(|e| format!("{how}: {e}")));
            self.report
                .denied
                .extend(parsed.denied.iter().map(|e| format!("{how}: {e}")));
            if is_stub_fault(&out.final_line) {
                let row = self.report.row("after-campaign");
                row.attempts += 1;
                row.stub_faults += 1;
                self.report
                    .stub_faults
                    .push(format!("{how}: after both campaigns: {}", describe(&out)));
            }
            let probe = out.final_line == Some(FinalLine::Stopped(0))
                && out.console.lines().any(|l| l == PROBE_LINE);
            if boot == 0 && !probe {
                self.report.probe_ok = false;
            }
            let ended = describe(&out);
            let probe_note = if probe {
                "probe ran to its end"
            } else {
                "probe did not finish"
            };
            eprintln!("attack: {how}: campaign complete: {ended}; {probe_note} ({secs:.1} s)");
            self.report.notes.push(format!(
                "{how}: {} boot(s); ended `{ended}`; {probe_note}",
                skips.len() + 1
            ));
            return Ok(());
        }
        Ok(())
    }

    /// The guest-side attacks, with the real servers.
    fn guests(&mut self, target: &Target) -> Result<(), String> {
        for g in GUEST_ATTACKS {
            if !images::GUESTS.contains(g) {
                continue;
            }
            let how = format!("{} guest {g}", target.name);
            let system = images::SystemSpec {
                mmu: target.mode,
                ..images::SystemSpec::new(g)
            };
            let out = boot_image(system, target, self.opts)?;
            self.report.boots += 1;
            let ended = describe(&out);
            let mut row = Row {
                attempts: 1,
                ..Row::default()
            };
            let marker = out
                .console
                .lines()
                .find(|l| l.contains(ESCAPE_MARKER))
                .map(str::to_string);
            if let Some(m) = &marker {
                row.escapes += 1;
                self.report.escapes.push(format!("{how}: {m}"));
            }
            if is_stub_fault(&out.final_line) {
                row.stub_faults += 1;
                self.report.stub_faults.push(format!("{how}: {ended}"));
            } else if marker.is_none() {
                row.refused += 1;
            }
            self.report.row("guests").add(&row);
            eprintln!("attack: {how}: {ended}");
            self.report.notes.push(format!("{how}: ended `{ended}`"));
        }
        Ok(())
    }
}

impl Campaign<'_> {
    /// The hostile virtio driver guest against the virtio-console function
    /// and (QEMU: a scratch disk) the virtio-blk function: each attack the
    /// device must contain is an attempt; one it did not contain, or a
    /// server restart (a server crashed on guest input), is an escape.
    fn virtio(&mut self, target: &Target) -> Result<(), String> {
        if !images::GUESTS.contains(&VIRTIO_ATTACK) {
            return Ok(());
        }
        let how = format!("{} guest {VIRTIO_ATTACK}", target.name);
        let mut system = images::SystemSpec {
            mmu: target.mode,
            board: ipc_proto::manifest::Board::Pc,
            ..images::SystemSpec::new(VIRTIO_ATTACK)
        };
        crate::virtio::add_virtio_console(&mut system)?;
        let disk = if target.emulator == Emulator::Qemu {
            std::fs::create_dir_all(&self.dir)
                .map_err(|e| format!("{}: {e}", self.dir.display()))?;
            let path = self
                .dir
                .join(format!("hostile-driver-{}.img", std::process::id()));
            let f = std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            f.set_len(1 << 20)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            let spec = crate::disk::DiskSpec {
                path,
                read_only: false,
            };
            crate::disk::add_disk_servers(&mut system, false)?;
            Some(crate::disk::Disk::open(&spec).map_err(|e| e.to_string())?)
        } else {
            None
        };
        let out = boot_image_with_disk(system, target, self.opts, disk.as_ref());
        if let Some(d) = disk {
            let path = d.spec().path.clone();
            drop(d);
            let _ = std::fs::remove_file(path);
        }
        let out = out?;
        self.report.boots += 1;
        let ended = describe(&out);
        let mut row = Row::default();
        for l in out.console.lines() {
            let Some(rest) = l.strip_prefix("hostile-driver: ") else {
                continue;
            };
            if !rest.contains(": status ") {
                continue;
            }
            row.attempts += 1;
            if rest.ends_with(": contained") {
                row.refused += 1;
            } else {
                row.escapes += 1;
                self.report.escapes.push(format!("{how}: {l}"));
            }
        }
        for l in out
            .console
            .lines()
            .filter(|l| l.contains(" restarted (generation "))
        {
            row.escapes += 1;
            self.report
                .escapes
                .push(format!("{how}: a server crashed on guest input: {l}"));
        }
        if is_stub_fault(&out.final_line) {
            row.stub_faults += 1;
            self.report.stub_faults.push(format!("{how}: {ended}"));
        } else if !out.console.lines().any(|l| {
            l.starts_with("hostile-driver: ")
                && l.ends_with(" contained")
                && l.contains(" attacks, ")
        }) {
            row.escapes += 1;
            self.report
                .escapes
                .push(format!("{how}: no summary line: {ended}"));
        }
        self.report.row("virtio").add(&row);
        eprintln!(
            "attack: {how}: {} attacks, {} contained; {ended}",
            row.attempts, row.refused
        );
        self.report.notes.push(format!(
            "{how}: {} attacks, {} contained; ended `{ended}`",
            row.attempts, row.refused
        ));
        Ok(())
    }
}

/// Only the hostile virtio driver's boots (the `virtio` row), one per
/// target of `opts`: what `campaign` runs for it, without the hostile
/// servers.
pub fn virtio_campaign(opts: &AttackOptions) -> Result<Report, String> {
    let mut c = Campaign {
        opts,
        vmm_elf: Vec::new(),
        mmu_elf: Vec::new(),
        dir: images::image_dir().join("attack"),
        report: Report {
            probe_ok: true,
            ..Report::default()
        },
    };
    for target in targets(opts.emulator, &opts.arches, &opts.modes) {
        c.virtio(&target)?;
    }
    Ok(c.report)
}

/// Runs the whole campaign.
pub fn campaign(opts: &AttackOptions) -> Result<Report, String> {
    let (vmm, mmu) = build_hostile_servers()?;
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let mut c = Campaign {
        opts,
        vmm_elf: read(&vmm)?,
        mmu_elf: read(&mmu)?,
        dir: images::image_dir().join("attack"),
        report: Report {
            probe_ok: true,
            ..Report::default()
        },
    };
    for target in targets(opts.emulator, &opts.arches, &opts.modes) {
        for (name, boot) in BOOTS {
            if opts.boots.is_empty() || opts.boots.iter().any(|b| b == name) {
                c.boots(&target, name, *boot)?;
            }
        }
        if opts.guests {
            c.guests(&target)?;
            c.virtio(&target)?;
        }
    }
    Ok(c.report)
}

/// `splitvisor attack`: runs the campaign, prints the table and the
/// escapes and stub faults; 0 when there are none, 1 otherwise.
pub fn run_cli(opts: &AttackOptions) -> i32 {
    let start = Instant::now();
    eprintln!(
        "attack: seed {} (again with --seed {})",
        opts.seed, opts.seed
    );
    let report = match campaign(opts) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("splitvisor: attack: {e}");
            return 1;
        }
    };
    println!(
        "attack campaign ({}; {}; seed {}): {} boots in {:.0} s",
        if opts.short { "short" } else { "full" },
        targets(opts.emulator, &opts.arches, &opts.modes)
            .iter()
            .map(|t| format!("{} {}", t.name, t.cpu))
            .collect::<Vec<_>>()
            .join(", "),
        opts.seed,
        report.boots,
        start.elapsed().as_secs_f64()
    );
    print!("{}", report.table());
    for (title, list) in [
        ("stub faults", &report.stub_faults),
        ("escapes", &report.escapes),
        (
            "accepted resumes the CPU refused to enter",
            &report.disagreements,
        ),
        ("denied controls", &report.denied),
        ("boots", &report.notes),
    ] {
        if !list.is_empty() {
            println!("{title}:");
            for l in list {
                println!("  {l}");
            }
        }
    }
    println!(
        "probe guest ({PROBE_GUEST}) after the main campaigns: {}",
        if report.probe_ok {
            "ran to its end"
        } else {
            "did NOT run to its end"
        }
    );
    if report.clean() {
        println!("no stub faults, no escapes");
        0
    } else {
        let t = report.total();
        println!("{} stub fault(s), {} escape(s)", t.stub_faults, t.escapes);
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timer_span_runs_from_its_pit_line_to_its_last_line() {
        let at = |ms: u64, l: &str| (Duration::from_millis(ms), l.to_string());
        let lines = [
            at(
                5,
                "[vm0] attack: try vmm 0 syscalls refuse unknown-number 0x0",
            ),
            at(
                10,
                "[vm1] timer: flat protected mode; gdt and idt loaded next",
            ),
            at(
                20,
                "[vm1] timer: pit channel 0: mode 2, count 1193 (1000.15 Hz)",
            ),
            at(30, "timer: pit channel 0: mode 2, count 1193 (1000.15 Hz)"),
            at(2520, "[vm1] timer: all checks passed"),
            at(2600, "timer: all checks passed"),
        ];
        assert_eq!(
            timer_span(&lines, "[vm1] "),
            Some(Duration::from_millis(2500))
        );
        assert_eq!(timer_span(&lines, ""), Some(Duration::from_millis(2570)));
        assert_eq!(timer_span(&lines[..4], "[vm1] "), None);
        assert_eq!(timer_span(&lines, "[vm2] "), None);
    }

    #[test]
    fn a_run_that_ends_in_an_attempt_names_it() {
        let console = "\
attack: try vmm 0 syscalls refuse unknown-number 0x0
attack: try vmm 1 resumes refuse event reserved-type-1
attack: vmm syscalls attempts=1 refused=1 accepted_ok=0 escapes=0 denied=0
attack: done vmm
attack: try mmu 3 resumes refuse set-paging cr4-bit-12
[stub] vm failed: something
";
        let p = parse(console);
        let t = p.culprit().unwrap();
        assert_eq!(
            (t.server, t.index, t.class.as_str()),
            (SERVER_MMU, 3, "resumes")
        );
        assert_eq!(t.name, "set-paging cr4-bit-12");
        assert_eq!(p.rows["syscalls"].attempts, 1);
        let done = parse("attack: try mmu 0 fpu refuse x\nattack: done mmu\n");
        assert!(done.culprit().is_none());
    }

    #[test]
    fn the_config_block_is_patched_after_the_magic() {
        let mut elf = vec![0u8; 8];
        elf.extend_from_slice(CONFIG_MAGIC);
        elf.extend(std::iter::repeat_n(0u8, 16 + 4 * MAX_SKIPS + 8));
        let out = patch(&elf, 2, true, 77, &[1 << 24 | 5]).unwrap();
        let word = |i: usize| u32::from_le_bytes(out[24 + 4 * i..28 + 4 * i].try_into().unwrap());
        assert_eq!(
            (word(0), word(1), word(2), word(3), word(4)),
            (2, 1, 1, 77, 1 << 24 | 5)
        );
        assert_eq!(out.len(), elf.len());
    }
}
