//! `splitvisor bench smp`: Debian's kernel booted to the initramfs's init
//! marker by one VM alone, and by two VMs at once, one on each of 2 host
//! CPUs (`run --cpus 2`), under QEMU's two TCG threading modes: one host
//! thread for every vCPU with the instruction clock (`-icount`, what every
//! other run uses), and a host thread per vCPU (MTTCG, `-accel
//! tcg,thread=multi`, which QEMU allows only without `-icount`: the guests'
//! clocks then follow the host's). The table gives each boot's wall time
//! to the marker and the ratio of two VMs at once to one alone.
//!
//! The tables go to stdout, progress to stderr.

use std::ffi::OsString;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use splitvisor::linux::{Flavour, INIT_MARKER};
use splitvisor::run::emulator_missing_message as emulator_missing;
use splitvisor::run::{find_program, qemu_args, run_emulator, RunOptions, TimedConsole};
use splitvisor::DEFAULT_EMULATOR;

#[derive(Args)]
pub struct SmpArgs {
    /// Which of Debian's kernels to boot: amd64, 686 or 686-pae.
    #[arg(long, value_name = "FLAVOUR", default_value = "amd64")]
    linux: Flavour,
    /// Kill a boot after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 600,
          value_parser = clap::value_parser!(u64).range(1..))]
    timeout: u64,
}

/// QEMU's TCG threading.
#[derive(Clone, Copy)]
enum Threads {
    /// One host thread runs every vCPU in turn, with `-icount`.
    Single,
    /// A host thread per vCPU (MTTCG), without `-icount`.
    Multi,
}

impl Threads {
    fn name(self) -> &'static str {
        match self {
            Threads::Single => "single (-icount)",
            Threads::Multi => "multi (MTTCG)",
        }
    }
}

/// Time to the init marker of each VM of one boot (`None`: never).
fn boot(
    qemu: &str,
    guest: &splitvisor::linux::LinuxGuest,
    vms: u8,
    threads: Threads,
    timeout: Duration,
) -> Result<Vec<Option<Duration>>, String> {
    let board = ipc_proto::manifest::Board::Pc;
    let one = images::SystemSpec {
        cmdline: splitvisor::linux::default_append(Some("splitvisor.exit"), None, board),
        ram_mib: splitvisor::linux::LINUX_RAM_MIB,
        board,
        initrd: Some(guest.initrd.clone()),
        ..images::SystemSpec::new(&guest.kernel.to_string_lossy())
    };
    let system = images::SystemSpec {
        more_vms: (1..vms)
            .map(|cpu| images::SystemSpec { cpu, ..one.clone() })
            .collect(),
        host_cpus: vms,
        ..one
    };
    let image = images::build_system_spec(&system).map_err(|e| e.to_string())?;
    let opts = RunOptions {
        memory_mib: splitvisor::run::default_memory_mib(system.all_ram_mib()),
        system,
        cpu: "EPYC,+svm,+npt".to_string(),
        arch: None,
        emulator: qemu.to_string(),
        timeout,
        unsafe_shadow: false,
    };
    let mut args = qemu_args(&opts, &image);
    if let Threads::Multi = threads {
        // `-accel tcg -icount X` becomes `-accel tcg,thread=multi`.
        let at = args.iter().position(|a| a == "-icount");
        if let Some(at) = at {
            args.drain(at..at + 2);
        }
        for a in args.iter_mut().filter(|a| *a == "tcg") {
            *a = OsString::from("tcg,thread=multi");
        }
    }
    eprintln!(
        "splitvisor: bench smp: {vms} VM(s) on {vms} CPU(s), TCG threads {}",
        threads.name()
    );
    let console = TimedConsole {
        start: Instant::now(),
        inner: Arc::default(),
    };
    run_emulator(qemu, &args, timeout, Box::new(console.clone())).map_err(|e| e.to_string())?;
    let text = console.inner.lock().unwrap();
    Ok((0..vms)
        .map(|vm| {
            // A VM's line may be cut by another VM's output (the stub ends
            // it and the rest comes with the prefix again): look for the
            // marker in the VM's text joined across such cuts.
            let prefix = if vms > 1 {
                format!("[vm{vm}] ")
            } else {
                String::new()
            };
            let mut joined = String::new();
            text.lines.iter().find_map(|(t, line)| {
                joined.push_str(line.strip_prefix(&prefix)?);
                let found = joined.contains(INIT_MARKER);
                let keep = joined.len().saturating_sub(INIT_MARKER.len());
                joined.drain(..keep);
                found.then_some(*t)
            })
        })
        .collect())
}

fn secs(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{:.2}", d.as_secs_f64()))
}

/// Runs `splitvisor bench smp`; returns the exit status.
pub fn bench_smp(a: &SmpArgs) -> i32 {
    let Some(qemu) = find_program(DEFAULT_EMULATOR) else {
        eprintln!("splitvisor: {}", emulator_missing(DEFAULT_EMULATOR));
        return 1;
    };
    let qemu = qemu.to_string_lossy().into_owned();
    let guest = match splitvisor::linux::prepare_debian_linux(a.linux) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("splitvisor: bench smp: {e}");
            return 1;
        }
    };
    println!("Guest kernel: {}", guest.packages);
    println!("Emulator: {}", splitvisor::run::emulator_version(&qemu));
    println!(
        "{:<18} {:>12} {:>14} {:>14} {:>7}",
        "TCG threads", "one VM s", "two VMs: vm0 s", "two VMs: vm1 s", "ratio"
    );
    let timeout = Duration::from_secs(a.timeout);
    let mut ok = true;
    for threads in [Threads::Single, Threads::Multi] {
        let one = boot(&qemu, &guest, 1, threads, timeout);
        let two = boot(&qemu, &guest, 2, threads, timeout);
        let (one, two) = match (one, two) {
            (Ok(one), Ok(two)) => (one[0], two),
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("splitvisor: bench smp: {e}");
                ok = false;
                continue;
            }
        };
        let last = two.iter().copied().max().flatten();
        let ratio = match (one, last, two.iter().all(Option::is_some)) {
            (Some(o), Some(l), true) => format!("{:.2}x", l.as_secs_f64() / o.as_secs_f64()),
            _ => {
                ok = false;
                "-".into()
            }
        };
        println!(
            "{:<18} {:>12} {:>14} {:>14} {:>7}",
            threads.name(),
            secs(one),
            secs(two[0]),
            secs(two.get(1).copied().flatten()),
            ratio
        );
    }
    println!("(wall time from QEMU's start to each VM's `{INIT_MARKER}`; ratio: the later of the two VMs against one VM alone)");
    if ok {
        0
    } else {
        1
    }
}
