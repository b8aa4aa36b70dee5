//! End-to-end: the vmm-server's test guests (`images/guests/`), each built
//! into a real image and booted in QEMU (TCG) with emulated AMD SVM and
//! nested paging, as `splitvisor run --guest NAME` does. Each guest prints
//! what it checked on COM1 and ends through the debug-exit port; the tests
//! read the console and the stub's final line.
//!
//! They need `qemu-system-x86_64`, gcc and binutils (`scripts/install-deps`).

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipc_proto::manifest::MmuMode;
use splitvisor::run::{
    qemu_args, run_emulator, FinalLine, RunOptions, DEFAULT_CPU, DEFAULT_EMULATOR,
};

/// Generous: several boots share two cores, and the first one also waits
/// for the stub and the vmm-server to build.
const TIMEOUT: Duration = Duration::from_secs(240);

#[derive(Clone, Default)]
struct Console(Arc<Mutex<Vec<u8>>>);

impl Write for Console {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Boot {
    final_line: Option<FinalLine>,
    console: String,
}

impl Boot {
    fn has_line(&self, line: &str) -> bool {
        self.console.lines().any(|l| l == line)
    }

    /// The guest passed: it printed `<name>: all checks passed` and ended
    /// with status 0.
    fn assert_passed(&self, name: &str) {
        assert_eq!(
            self.final_line,
            Some(FinalLine::Stopped(0)),
            "{name} did not end with status 0:\n{}",
            self.console
        );
        assert!(
            self.has_line(&format!("{name}: all checks passed")),
            "{}",
            self.console
        );
    }
}

fn boot(guest: &str, cmdline: &str) -> Boot {
    boot_with(guest, cmdline, MmuMode::Nested, DEFAULT_CPU)
}

/// Shadow paging on a CPU without NPT, so that nothing but the mmu-server's
/// shadow tables can translate guest memory.
fn boot_shadow(guest: &str) -> Boot {
    boot_with(guest, "", MmuMode::Shadow, "EPYC,+svm,-npt")
}

fn boot_with(guest: &str, cmdline: &str, mmu: MmuMode, cpu: &str) -> Boot {
    let mut system = images::SystemSpec::new(guest);
    system.cmdline = cmdline.to_string();
    system.mmu = mmu;
    let image = images::build_system_spec(&system).unwrap_or_else(|e| panic!("{guest}: {e}"));
    let opts = RunOptions {
        system,
        cpu: cpu.to_string(),
        arch: None,
        emulator: DEFAULT_EMULATOR.to_string(),
        timeout: TIMEOUT,
        memory_mib: 256,
    };
    let console = Console::default();
    let report = run_emulator(
        DEFAULT_EMULATOR,
        &qemu_args(&opts, &image),
        TIMEOUT,
        Box::new(console.clone()),
    )
    .expect("QEMU starts (scripts/install-deps installs it)");
    let text = String::from_utf8_lossy(&console.0.lock().unwrap()).into_owned();
    Boot {
        final_line: report.final_line,
        console: text,
    }
}

#[test]
fn realmode_boot_sector_with_string_io_on_svm() {
    let b = boot("realmode", "");
    b.assert_passed("realmode");
    assert!(
        b.has_line("realmode: rep outsb from ds:si"),
        "{}",
        b.console
    );
    assert!(b.has_line("realmode: rep insb into es:di"), "{}", b.console);
}

#[test]
fn pmode_boot_sector_switches_to_protected_mode_on_svm() {
    let b = boot("pmode", "");
    b.assert_passed("pmode");
    assert!(b.has_line("pmode: cr0.pe = 1, cs = 0x08"), "{}", b.console);
}

#[test]
fn paging32_guest_emulates_through_its_page_tables_on_svm() {
    let b = boot("paging32", "");
    b.assert_passed("paging32");
    assert!(
        b.console
            .contains("paging32: mmio at 0xd0000000 -> 0xfeb00000"),
        "{}",
        b.console
    );
}

#[test]
fn pae_guest_emulates_through_its_page_tables_on_svm() {
    boot("pae", "").assert_passed("pae");
}

#[test]
fn mmio_guest_instruction_forms_on_svm() {
    let b = boot("mmio", "");
    b.assert_passed("mmio");
    assert!(
        b.has_line("mmio: xchg, lock cmpxchg (both ways), lock cmpxchg8b ok"),
        "{}",
        b.console
    );
}

#[test]
fn multiboot_guest_prints_its_memory_map_and_command_line_on_svm() {
    let b = boot("multiboot", "console=ttyS0 splitvisor=1");
    b.assert_passed("multiboot");
    for line in [
        "multiboot: eax = 0x2badb002",
        "multiboot: command line: 'console=ttyS0 splitvisor=1'",
        "multiboot: boot loader: splitvisor",
        "multiboot:   base 0x0000000000100000 length 0x0000000000f00000 type 1",
    ] {
        assert!(b.has_line(line), "no line `{line}`:\n{}", b.console);
    }
}

/// Nonsense written to and read from four thousand ports: the vmm-server
/// keeps running and counts the ports nothing claims.
#[test]
fn portstorm_guest_survives_nonsense_on_every_port_on_svm() {
    let b = boot("portstorm", "");
    assert_eq!(b.final_line, Some(FinalLine::Stopped(0)), "{}", b.console);
    // The storm's byte to COM1's THR may land in front of the line.
    assert!(
        b.console
            .contains("portstorm: still running after the storm\n"),
        "{}",
        b.console
    );
    let stats = b
        .console
        .lines()
        .find(|l| l.starts_with("[vmm] exits: "))
        .expect("the statistics line");
    assert!(!stats.contains("unknown_port_reads=0 "), "{stats}");
}

#[test]
fn timer_guest_counts_1000_ticks_in_a_virtual_second_on_svm() {
    let b = boot("timer", "");
    b.assert_passed("timer");
    let line = b
        .console
        .lines()
        .find(|l| l.contains("ticks of irq 0 in one virtual second"))
        .expect("the count");
    let n: u32 = line["timer: ".len()..]
        .split(' ')
        .next()
        .and_then(|s| s.parse().ok())
        .expect("a number");
    assert!((990..=1010).contains(&n), "{line}");
    assert!(
        b.console
            .contains("timer: spin: 10 ticks while spinning without exits"),
        "{}",
        b.console
    );
}

#[test]
fn longmode_guest_reaches_64_bit_mode_on_svm() {
    let b = boot("longmode", "");
    b.assert_passed("longmode");
    assert!(
        b.has_line("longmode: cpuid 0x40000000 signature: splitvisor"),
        "{}",
        b.console
    );
}

/// Typed input reaches the guest: QEMU's stdin is the host console, the
/// stub's `ConsoleRead` takes it, the vmm-server's UART puts it in RBR and
/// raises IRQ 4. The line is typed once the guest asks for it (bytes that
/// arrive before the stub has set up its own COM1 are lost there).
#[test]
fn uartin_guest_reads_a_typed_line_with_irq4_on_svm() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    use std::sync::mpsc;

    let system = images::SystemSpec::new("uartin");
    let image = images::build_system_spec(&system).expect("image builds");
    let opts = RunOptions {
        system,
        cpu: DEFAULT_CPU.to_string(),
        arch: None,
        emulator: DEFAULT_EMULATOR.to_string(),
        timeout: TIMEOUT,
        memory_mib: 256,
    };
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
    let deadline = std::time::Instant::now() + TIMEOUT;
    while let Ok(line) =
        rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
    {
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
}

/// Every guest mode under shadow paging: the mmu-server shadows real mode
/// (paged real mode), protected mode without paging, 32-bit, PAE and long
/// mode page tables, and forwards the MMIO it finds to the vmm-server.
#[test]
fn guest_modes_under_shadow_paging_on_svm_without_npt() {
    for guest in [
        "realmode", "pmode", "paging32", "pae", "longmode", "mmio", "timer",
    ] {
        let b = boot_shadow(guest);
        b.assert_passed(guest);
        assert!(
            b.console.contains("[stub] svm: shadow paging"),
            "{}",
            b.console
        );
    }
}
