//! `splitvisor bench boot`: Debian's kernel booted to the initramfs's init
//! marker three ways in one run on the same machine — plain QEMU TCG with
//! the same kernel, initramfs and command line (no splitvisor; SeaBIOS and
//! QEMU's own PC devices), splitvisor with nested paging and splitvisor with
//! shadow paging — with the wall time to the marker, its ratio to plain
//! QEMU, the exits by reason, the IPC figures and, for shadow paging, the
//! shadow cache's hit rate and shadow faults per guest CR3 load (context
//! switch).
//!
//! The tables go to stdout, progress to stderr.

use std::ffi::OsString;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use ipc_proto::manifest::MmuMode as SystemMmu;
use splitvisor::linux::{Flavour, INIT_MARKER, WORKLOAD_END};
use splitvisor::run::emulator_missing_message as emulator_missing;
use splitvisor::run::TimedConsole;
use splitvisor::run::{
    find_program, qemu_args, qemu_machine_args, run_emulator, FinalLine, RunOptions,
};
use splitvisor::DEFAULT_EMULATOR;

use crate::bench::key_values;

#[derive(Args)]
pub struct BootArgs {
    /// Which of Debian's kernels to boot: amd64, 686
    /// or 686-pae.
    #[arg(long, value_name = "FLAVOUR", default_value = "amd64")]
    linux: Flavour,
    /// Also run the initramfs's MMU workload (fork+exec of 300 processes,
    /// 2000 pipe round trips, 200 mmap/munmap of a file) after the marker,
    /// and show its figures (guest time) and the wall time to its end.
    #[arg(long)]
    workload: bool,
    /// Kill a boot after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 600,
          value_parser = clap::value_parser!(u64).range(1..))]
    timeout: u64,
    /// The board splitvisor's boots run on: isa (the kernel gets
    /// `tsc=reliable tsc_early_khz=`) or pc (APICs, ACPI, fw_cfg; the
    /// command line is `console=ttyS0` and the markers alone, as plain
    /// QEMU's default PC gets too).
    #[arg(long, value_name = "BOARD", default_value = "pc",
          value_parser = clap::builder::PossibleValuesParser::new(["isa", "pc"]))]
    board: String,
    /// Also boot plain QEMU with virtio devices (virtio-blk on a fresh
    /// ext4 image, virtio-serial with a virtconsole, virtio-rng; see
    /// `splitvisor::linux_virtio`) twice, ttyS0 then hvc0 the console, to
    /// the init marker, and with `splitvisor.disk=write` to the disk
    /// check's line.
    #[arg(long)]
    virtio: bool,
}

impl BootArgs {
    fn board(&self) -> ipc_proto::manifest::Board {
        match self.board.as_str() {
            "pc" => ipc_proto::manifest::Board::Pc,
            _ => ipc_proto::manifest::Board::Isa,
        }
    }
}

/// How one boot runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Way {
    PlainQemu,
    Npt,
    Shadow,
}

impl Way {
    const ALL: [Way; 3] = [Way::PlainQemu, Way::Npt, Way::Shadow];

    fn name(self) -> &'static str {
        match self {
            Way::PlainQemu => "plain QEMU",
            Way::Npt => "splitvisor npt",
            Way::Shadow => "splitvisor shadow",
        }
    }

    /// QEMU's -cpu: the same model each time; shadow paging on a CPU
    /// without NPT, as on a machine that lacks it.
    fn cpu(self) -> &'static str {
        match self {
            Way::PlainQemu => "EPYC",
            Way::Npt => "EPYC,+svm,+npt",
            Way::Shadow => "EPYC,+svm",
        }
    }
}

/// One boot's figures.
struct Boot {
    way: Way,
    /// QEMU start to the init marker on the console.
    to_marker: Option<Duration>,
    /// QEMU start to the workload's last line.
    to_workload_end: Option<Duration>,
    /// QEMU start to its exit.
    wall: Duration,
    /// The stub's exit counters (`[vmm] exits:`).
    exits: Vec<(String, u64)>,
    /// The mmu-server's figures (`[vmm] mmu:`, shadow paging only).
    mmu: Vec<(String, u64)>,
    /// The workload's result lines, each with the wall time since the
    /// previous one (or since the init marker).
    workload: Vec<(Duration, String)>,
    failure: Option<String>,
}

impl Boot {
    fn exit(&self, key: &str) -> Option<u64> {
        find(&self.exits, key)
    }
    fn mmu(&self, key: &str) -> Option<u64> {
        find(&self.mmu, key)
    }
}

fn find(kv: &[(String, u64)], key: &str) -> Option<u64> {
    kv.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
}

/// Runs `splitvisor bench boot`; returns the exit status.
pub fn bench_boot(a: &BootArgs) -> i32 {
    let Some(qemu) = find_program(DEFAULT_EMULATOR) else {
        eprintln!("splitvisor: {}", emulator_missing(DEFAULT_EMULATOR));
        return 1;
    };
    let qemu = qemu.to_string_lossy().into_owned();
    eprintln!(
        "splitvisor: bench boot: preparing Debian's {} kernel",
        a.linux.name()
    );
    let guest = match splitvisor::linux::prepare_debian_linux(a.linux) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("splitvisor: bench boot: {e}");
            return 1;
        }
    };
    println!("Guest kernel: {}", guest.packages);
    println!("Emulator: {}", splitvisor::run::emulator_version(&qemu));
    let extra = if a.workload {
        "splitvisor.workload splitvisor.exit"
    } else {
        "splitvisor.exit"
    };
    let cmdline = splitvisor::linux::default_append(
        Some(extra),
        Some(splitvisor::run::QEMU_TSC_KHZ),
        a.board(),
    );
    let timeout = Duration::from_secs(a.timeout);
    let ram = splitvisor::linux::LINUX_RAM_MIB;
    let boots: Vec<Boot> = Way::ALL
        .iter()
        .map(|&way| boot(&qemu, way, &guest, &cmdline, ram, a.board(), timeout))
        .collect();
    print_tables(a, &cmdline, &boots);
    let virtio_ok = !a.virtio || virtio_boots(&qemu, &guest, timeout);
    if boots.iter().all(|b| b.failure.is_none()) && virtio_ok {
        0
    } else {
        1
    }
}

/// `--virtio`: plain QEMU with virtio devices, each console preferred in
/// turn, with `splitvisor.exit` and with `splitvisor.disk=write`; prints a
/// table of the wall times and returns whether every boot ended well.
fn virtio_boots(qemu: &str, guest: &splitvisor::linux::LinuxGuest, timeout: Duration) -> bool {
    use splitvisor::linux::DISK_WRITTEN;
    use splitvisor::linux_virtio::{make_ext4_image, GuestConsole, PlainVirtio};
    let img = std::env::temp_dir().join(format!(
        "splitvisor-bench-virtio-{}.img",
        std::process::id()
    ));
    let mut rows = Vec::new();
    let mut ok = true;
    for console in [GuestConsole::Serial, GuestConsole::Hvc] {
        for append in ["splitvisor.exit", "splitvisor.disk=write"] {
            let mut b = PlainVirtio::new(qemu.into(), guest.clone());
            b.console = console;
            b.append = append.to_string();
            b.rng = true;
            b.timeout = timeout;
            if append.starts_with("splitvisor.disk") {
                if let Err(e) = make_ext4_image(&img, 64) {
                    eprintln!("splitvisor: bench boot: {e}");
                    ok = false;
                    continue;
                }
                b.disk = Some(img.clone());
            }
            eprintln!(
                "splitvisor: bench boot: booting (plain QEMU with virtio, console {}, {append})",
                console.name()
            );
            match b.run() {
                Ok(r) => {
                    let ended = r.status == Some(0) && !r.timed_out && r.to_marker.is_some();
                    ok &= ended;
                    rows.push(format!(
                        "{:<8} {:<24} {:>10} {:>12} {:>11.2}{}",
                        console.name(),
                        append,
                        secs(r.to_marker),
                        secs(r.when(DISK_WRITTEN)),
                        r.wall.as_secs_f64(),
                        if ended { "" } else { "  FAILED" }
                    ));
                }
                Err(e) => {
                    eprintln!("splitvisor: bench boot: {e}");
                    ok = false;
                }
            }
        }
    }
    let _ = std::fs::remove_file(&img);
    println!(
        "Plain QEMU with virtio-blk, virtio-serial (virtconsole) and virtio-rng, the console the \
         kernel prefers (the last console=) timed:"
    );
    println!(
        "{:<8} {:<24} {:>10} {:>12} {:>11}",
        "console", "command line", "marker s", "disk done s", "QEMU end s"
    );
    for r in rows {
        println!("{r}");
    }
    ok
}

fn boot(
    qemu: &str,
    way: Way,
    guest: &splitvisor::linux::LinuxGuest,
    cmdline: &str,
    ram_mib: u32,
    board: ipc_proto::manifest::Board,
    timeout: Duration,
) -> Boot {
    let mut b = Boot {
        way,
        to_marker: None,
        to_workload_end: None,
        wall: Duration::ZERO,
        exits: Vec::new(),
        mmu: Vec::new(),
        workload: Vec::new(),
        failure: None,
    };
    let args: Vec<OsString> = if way == Way::PlainQemu {
        let mut args = qemu_machine_args(way.cpu(), ram_mib, splitvisor::run::Accel::Tcg);
        args.extend(["-append".into(), cmdline.into()]);
        args.extend(["-kernel".into(), guest.kernel.clone().into_os_string()]);
        args.extend(["-initrd".into(), guest.initrd.clone().into_os_string()]);
        args
    } else {
        let system = images::SystemSpec {
            mmu: if way == Way::Npt {
                SystemMmu::Nested
            } else {
                SystemMmu::Shadow
            },
            cmdline: cmdline.to_string(),
            ram_mib,
            board,
            initrd: Some(guest.initrd.clone()),
            ..images::SystemSpec::new(&guest.kernel.to_string_lossy())
        };
        eprintln!(
            "splitvisor: bench boot: building the image ({})",
            way.name()
        );
        let image = match images::build_system_spec(&system) {
            Ok(p) => p,
            Err(e) => {
                b.failure = Some(format!("could not build the image: {e}"));
                return b;
            }
        };
        let unsafe_shadow = system.mmu.is_shadow();
        let opts = RunOptions {
            system,
            cpu: way.cpu().to_string(),
            arch: None,
            emulator: qemu.to_string(),
            timeout,
            memory_mib: splitvisor::run::default_memory_mib(ram_mib),
            // QEMU's TCG ignores the task-switch intercept; Debian's
            // kernel is trusted here.
            unsafe_shadow,
        };
        qemu_args(&opts, &image)
    };
    eprintln!(
        "splitvisor: bench boot: booting ({}, -cpu {})",
        way.name(),
        way.cpu()
    );
    let start = Instant::now();
    let console = TimedConsole {
        start,
        inner: Arc::default(),
    };
    let report = run_emulator(qemu, &args, timeout, Box::new(console.clone()));
    b.wall = start.elapsed();
    let text = {
        let g = console.inner.lock().unwrap();
        b.to_marker = g.when(INIT_MARKER);
        b.to_workload_end = g.when(WORKLOAD_END);
        let mut since = b.to_marker.unwrap_or_default();
        for (t, line) in &g.lines {
            if let Some(rest) = line.strip_prefix("[vmm] exits: ") {
                b.exits = key_values(rest);
            } else if let Some(rest) = line.strip_prefix("[vmm] mmu: ") {
                b.mmu = key_values(rest);
            } else if line.starts_with("workload: ") {
                b.workload.push((t.saturating_sub(since), line.clone()));
                since = *t;
            }
        }
        String::from_utf8_lossy(&g.bytes).into_owned()
    };
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            b.failure = Some(e.to_string());
            return b;
        }
    };
    // Plain QEMU ends through isa-debug-exit (status 1 for the byte 0) or,
    // with ACPI, by powering off (status 0); splitvisor with the stub's
    // final line.
    let ended = match way {
        Way::PlainQemu => matches!(report.status.and_then(|s| s.code()), Some(0 | 1)),
        _ => report.final_line == Some(FinalLine::Stopped(0)),
    };
    if b.to_marker.is_none() || !ended || report.timed_out {
        let last: Vec<&str> = text.lines().rev().take(12).collect();
        let last: Vec<&str> = last.into_iter().rev().collect();
        let why = if report.timed_out {
            format!("timed out after {} s", timeout.as_secs())
        } else if b.to_marker.is_none() {
            "no init marker".to_string()
        } else {
            format!(
                "ended with {:?} (QEMU status {:?})",
                report.final_line, report.status
            )
        };
        b.failure = Some(format!(
            "{why}; the console ends with:\n  {}",
            last.join("\n  ")
        ));
    }
    eprintln!(
        "splitvisor: bench boot: {}: init marker after {}",
        way.name(),
        b.to_marker
            .map_or("-".to_string(), |d| format!("{:.2} s", d.as_secs_f64()))
    );
    b
}

fn secs(d: Option<Duration>) -> String {
    d.map_or("-".to_string(), |d| format!("{:.2}", d.as_secs_f64()))
}

fn print_tables(a: &BootArgs, cmdline: &str, boots: &[Boot]) {
    let plain = boots
        .iter()
        .find(|b| b.way == Way::PlainQemu)
        .and_then(|b| b.to_marker);
    println!(
        "Debian {} kernel to the init marker (QEMU TCG, {} MiB guest RAM, the same kernel, \
         initramfs and command line each time: {cmdline})",
        a.linux.name(),
        splitvisor::linux::LINUX_RAM_MIB
    );
    let row = |name: &str, cell: &dyn Fn(&Boot) -> String| {
        print!("{name:<30}");
        for b in boots {
            print!(" {:>18}", cell(b));
        }
        println!();
    };
    let num = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    row("", &|b| b.way.name().to_string());
    row("-cpu", &|b| b.way.cpu().to_string());
    row("wall s to init marker", &|b| secs(b.to_marker));
    row("ratio to plain QEMU", &|b| match (b.to_marker, plain) {
        (Some(m), Some(p)) if !p.is_zero() => {
            format!("{:.2}x", m.as_secs_f64() / p.as_secs_f64())
        }
        _ => "-".to_string(),
    });
    if a.workload {
        row("wall s to workload end", &|b| secs(b.to_workload_end));
    }
    row("wall s to emulator exit", &|b| secs(Some(b.wall)));
    row("exits", &|b| num(b.exit("total")));
    row(
        "exits per wall second",
        &|b| match (b.exit("total"), b.to_marker) {
            (Some(n), Some(t)) if !t.is_zero() => format!("{:.0}", n as f64 / t.as_secs_f64()),
            _ => "-".to_string(),
        },
    );
    // Where the time goes: the wall time over plain QEMU's, per exit.
    row(
        "extra wall us per exit",
        &|b| match (b.exit("total"), b.to_marker, plain) {
            (Some(n), Some(t), Some(p)) if n > 0 => {
                format!(
                    "{:.1}",
                    (t.as_secs_f64() - p.as_secs_f64()) * 1e6 / n as f64
                )
            }
            _ => "-".to_string(),
        },
    );
    for (key, what) in [
        ("ioio", "  port I/O"),
        ("hlt", "  HLT"),
        ("cpuid", "  CPUID"),
        ("msr", "  RDMSR/WRMSR"),
        ("npf", "  nested page fault"),
        ("exception", "  exception (#PF)"),
        ("intr", "  host timer (exit deadline)"),
        ("other", "  other (VINTR, CR, ..)"),
    ] {
        row(what, &|b| num(b.exit(key)));
    }
    row("IPC: syscalls of all servers", &|b| num(b.exit("syscalls")));
    row("IPC: installs (checked PTEs)", &|b| num(b.exit("installs")));
    row("IPC: install batches", &|b| num(b.mmu("batches")));
    row("vmm: interrupts injected", &|b| num(b.exit("irqs")));
    row("vmm: interrupt windows", &|b| num(b.exit("windows")));
    // The mmu-server's figures mean something in shadow mode only.
    let num = |b: &Boot, v: Option<u64>| {
        if b.way == Way::Shadow {
            num(v)
        } else {
            "-".to_string()
        }
    };
    let shadow = |b: &Boot| b.way == Way::Shadow;
    row("shadow faults", &|b| num(b, b.mmu("faults")));
    row("  write-protect faults", &|b| num(b, b.mmu("wp_faults")));
    row("    writes emulated", &|b| num(b, b.mmu("emulated")));
    row("    tables made unsync", &|b| num(b, b.mmu("unsyncs")));
    row("unsync tables synced", &|b| num(b, b.mmu("syncs")));
    row("  injected into the guest", &|b| {
        num(b, b.mmu("guest_faults"))
    });
    row("guest CR3 loads", &|b| num(b, b.mmu("cr3_loads")));
    row("INVLPG exits", &|b| num(b, b.mmu("invlpg")));
    row("other CR accesses", &|b| num(b, b.mmu("cr")));
    row(
        "shadow faults per CR3 load",
        &|b| match (b.mmu("faults"), b.mmu("cr3_loads")) {
            (Some(f), Some(n)) if n > 0 && shadow(b) => format!("{:.2}", f as f64 / n as f64),
            _ => "-".to_string(),
        },
    );
    row("shadow leaves prefetched", &|b| num(b, b.mmu("prefetched")));
    row("shadow table hits", &|b| num(b, b.mmu("hits")));
    row("shadow table misses", &|b| num(b, b.mmu("misses")));
    row(
        "shadow cache hit rate",
        &|b| match (b.mmu("hits"), b.mmu("misses")) {
            (Some(h), Some(m)) if h + m > 0 && shadow(b) => {
                format!("{:.1}%", 100.0 * h as f64 / (h + m) as f64)
            }
            _ => "-".to_string(),
        },
    );
    row(
        "root hits per CR3 load",
        &|b| match (b.mmu("root_hits"), b.mmu("cr3_loads")) {
            (Some(h), Some(n)) if n > 0 && shadow(b) => {
                format!("{:.1}%", 100.0 * h as f64 / n as f64)
            }
            _ => "-".to_string(),
        },
    );
    if a.workload {
        println!(
            "The workload's lines (its own figures are guest time, CLOCK_MONOTONIC) and the \
             wall time each took (the console line's arrival after the previous one):"
        );
        for b in boots {
            for (wall, l) in &b.workload {
                println!(
                    "{:<18} wall {:>6.2} s  {l}",
                    b.way.name(),
                    wall.as_secs_f64()
                );
            }
        }
    }
    for b in boots {
        if let Some(why) = &b.failure {
            println!("{}: FAILED: {why}", b.way.name());
        }
    }
}
