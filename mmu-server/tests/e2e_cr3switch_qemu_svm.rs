//! End-to-end: the CR3-switch guests (`images/guests/cr3switch*.S`: 8
//! address spaces of 64 pages, 4000 CR3 switches with PTE edits, INVLPG
//! and large pages, one per paging mode; and `cr3bench64`, the same in
//! long mode without the edits), each booted in QEMU (TCG) with
//! emulated AMD SVM twice: with nested paging (`EPYC,+svm,+npt`) and with
//! the mmu-server's shadow tables on a CPU without NPT (`EPYC,+svm,-npt`).
//! Both runs must pass the guest's own checks and print the same checksum
//! of what it read.
//!
//! They need `qemu-system-x86_64`, gcc and binutils (`scripts/install-deps`).

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipc_proto::manifest::MmuMode;
use splitvisor::run::{qemu_args, run_emulator, FinalLine, RunOptions, DEFAULT_EMULATOR};

/// Generous: several boots share two cores, and the first one also waits
/// for the stub and the servers to build.
const TIMEOUT: Duration = Duration::from_secs(240);

/// The CR3 loads each guest makes (`NSWITCH` in `cr3switch.inc`).
const SWITCHES: u64 = 4000;

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
    guest: String,
    how: &'static str,
    final_line: Option<FinalLine>,
    console: String,
}

impl Boot {
    /// The guest passed its own checks and ended with status 0.
    fn assert_passed(&self) {
        let name = &self.guest;
        assert_eq!(
            self.final_line,
            Some(FinalLine::Stopped(0)),
            "{name} ({}) did not end with status 0:\n{}",
            self.how,
            self.console
        );
        assert!(
            self.console
                .lines()
                .any(|l| l == format!("{name}: all checks passed")),
            "{name} ({}):\n{}",
            self.how,
            self.console
        );
    }

    /// The `0x........` of `<guest>: checksum 0x........`.
    fn checksum(&self) -> String {
        let prefix = format!("{}: checksum ", self.guest);
        self.console
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no checksum line ({}):\n{}", self.how, self.console))
            .to_string()
    }

    /// A figure of the vmm-server's `[vmm] mmu:` line.
    fn mmu_figure(&self, key: &str) -> u64 {
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

fn boot(guest: &str, mmu: MmuMode, cpu: &str, how: &'static str) -> Boot {
    let mut system = images::SystemSpec::new(guest);
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
        guest: guest.to_string(),
        how,
        final_line: report.final_line,
        console: text,
    }
}

/// Boots `guest` with NPT and with shadow paging: both pass, with the same
/// checksum; the shadow run took every CR3 load (INVLPG is not intercepted),
/// and its cache survived the switches (a handful of shadow faults per
/// switch with the PTE edits, almost none without, where the 2006 baseline
/// takes one per touched page, 64 and more).
fn npt_and_shadow_agree(guest: &str, edits: bool) {
    let npt = boot(guest, MmuMode::Nested, "EPYC,+svm,+npt", "npt");
    npt.assert_passed();
    let shadow = boot(guest, MmuMode::Shadow, "EPYC,+svm,-npt", "shadow");
    shadow.assert_passed();
    assert_eq!(
        npt.checksum(),
        shadow.checksum(),
        "{guest}: the checksums differ\n--- npt:\n{}\n--- shadow:\n{}",
        npt.console,
        shadow.console
    );
    let loads = shadow.mmu_figure("cr3_loads");
    assert!(loads >= SWITCHES, "cr3_loads={loads}");
    // The guest's INVLPGs after its PTE edits run natively (the stub does
    // not intercept INVLPG): the equal checksums show that they suffice.
    assert_eq!(shadow.mmu_figure("invlpg"), 0);
    assert!(shadow.mmu_figure("root_hits") >= SWITCHES - 16);
    let faults = shadow.mmu_figure("faults");
    let most = if edits { 16 * SWITCHES } else { SWITCHES };
    assert!(
        faults < most,
        "{guest}: {faults} shadow faults for {loads} CR3 loads: the cache did not survive the \
         switches"
    );
}

#[test]
fn cr3switch32_npt_and_shadow_agree_on_svm() {
    npt_and_shadow_agree("cr3switch32", true);
}

#[test]
fn cr3switchpae_npt_and_shadow_agree_on_svm() {
    npt_and_shadow_agree("cr3switchpae", true);
}

#[test]
fn cr3switch64_npt_and_shadow_agree_on_svm() {
    npt_and_shadow_agree("cr3switch64", true);
}

/// The benchmark's pure context-switch workload: no PTE edits.
#[test]
fn cr3bench64_npt_and_shadow_agree_on_svm() {
    npt_and_shadow_agree("cr3bench64", false);
}
