//! End-to-end: Debian's stock kernels with a busybox initramfs under
//! splitvisor in QEMU (TCG, emulated SVM), on the ISA board, through
//! `splitvisor run --linux FLAVOUR --board isa`: the x86-64 kernel with nested paging and with shadow paging,
//! the i386 `686` (two-level paging) and `686-pae` kernels with shadow
//! paging.
//!
//! The kernel command line gets `splitvisor.workload splitvisor.exit`: the
//! initramfs's `/init` prints its marker and `uname -a`, runs the MMU
//! workload (`apps/linux/workload.c`: fork+exec of 300 processes, 2000
//! pipe round trips between two processes, 200 mmap/munmap of a 64-page
//! file), prints its results and ends the VM with status 0 by writing to
//! port 0xF4 through `/dev/port`. The test reads all of it from the guest's
//! serial output.
//!
//! The first run downloads about 180 MB of Debian packages with `apt-get
//! download` (into `.cache/linux/`, reused afterwards; the i386 ones need
//! `dpkg --add-architecture i386`, which `scripts/install-deps` does). On a
//! 2.6 GHz EPYC host with QEMU 7.2 TCG each boot takes 15 to 30 s. Run only
//! these with
//!
//! ```sh
//! cargo test -p splitvisor --test e2e_linux_qemu_svm -- --nocapture
//! ```

mod common;

use splitvisor::linux::Flavour;

/// EPYC has XSAVE and AVX (QEMU's TCG no XSAVEC): the kernel takes them.
const XSTATE: &str =
    "x86/fpu: Enabled xstate features 0x7, context size is 832 bytes, using 'standard' format.";

/// Seconds one boot may take.
const TIMEOUT_SECS: u64 = 900;

fn boot_linux(flavour: Flavour, mmu: &str) {
    // Shadow paging on a CPU without NPT, as a user without it would.
    let cpu = if mmu == "npt" {
        "EPYC,+svm,+npt"
    } else {
        "EPYC,+svm"
    };
    // QEMU's TCG ignores the task-switch intercept: the stub runs shadow
    // paging there only when told (Debian's kernel is trusted here).
    let unsafe_shadow: &[&str] = if mmu == "shadow" {
        &["--unsafe-shadow"]
    } else {
        &[]
    };
    // The ISA board: the PC board's Linux tests are in
    // e2e_linux_pc_board_qemu_svm.rs.
    let args = [&["--board", "isa", "--cpu", cpu][..], unsafe_shadow].concat();
    let run = common::boot_linux(flavour, mmu, &args, TIMEOUT_SECS);
    if mmu == "shadow" && flavour == Flavour::Amd64 {
        // Fork's and exit's runs of PTE writes make leaf tables unsync
        // (mmu-server/README.md); each episode ends in a sync.
        let figure = |key: &str| -> u64 {
            let line = run
                .stdout
                .lines()
                .find_map(|l| l.strip_prefix("[vmm] mmu: "))
                .unwrap_or_else(|| panic!("no `[vmm] mmu:` line\n{run}"));
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {key}= in `{line}`"))
        };
        let (unsyncs, syncs) = (figure("unsyncs"), figure("syncs"));
        assert!(
            unsyncs > 0 && syncs + 1 >= unsyncs,
            "unsyncs={unsyncs} syncs={syncs}"
        );
    }
    if flavour == Flavour::Amd64 {
        assert!(run.stdout.contains(XSTATE), "no `{XSTATE}`\n{run}");
    }
}

/// Exits of the boot recorded for the replay test: the first seconds of
/// the kernel (CPUID, MSRs, the PIT, the console), about 5 s of tracing.
const TRACE_EXITS: &str = "10000";

/// Also records the first [`TRACE_EXITS`] exits (`--trace-exits`) and
/// replays them through the exit handler on the host: every decision the
/// same (the regression test of `splitvisor replay` on a Linux boot).
#[test]
fn debian_amd64_runs_the_workload_with_npt_and_its_boot_prefix_replays_identically() {
    let file = std::env::temp_dir().join(format!("e2e-linux-trace-{}.rkyv", std::process::id()));
    let path = file.to_str().unwrap();
    let args = [
        "--board",
        "isa",
        "--cpu",
        "EPYC,+svm,+npt",
        "--trace",
        path,
        "--trace-exits",
        TRACE_EXITS,
    ];
    let run = common::boot_linux(Flavour::Amd64, "npt", &args, TIMEOUT_SECS);
    assert!(run.stdout.contains(XSTATE), "no `{XSTATE}`\n{run}");
    assert!(
        run.stderr.contains(&format!(
            "splitvisor: trace: {TRACE_EXITS} exits (a prefix: --trace-exits)"
        )),
        "{run}"
    );
    let replay = common::splitvisor(&["replay", path]);
    let said = &replay.stdout;
    eprintln!("amd64 npt: replay: {}", said.trim_end().replace('\n', "; "));
    assert_eq!(replay.code, Some(0), "{replay}");
    assert!(
        said.starts_with(&format!(
            "{TRACE_EXITS} exits, identical (the trace is a prefix of the run)"
        )),
        "{said}"
    );
    let _ = std::fs::remove_file(file);
}

#[test]
fn debian_amd64_runs_the_workload_with_shadow_paging() {
    boot_linux(Flavour::Amd64, "shadow");
}

#[test]
fn debian_686_runs_the_workload_with_shadow_paging() {
    boot_linux(Flavour::I686, "shadow");
}

/// This kernel found QEMU delivering an EVENTINJ interrupt twice, the second
/// time with IF clear (see the stub's `Vcpu::apply`): it hung after
/// `i8042: Probing ports directly` on a loaded host.
#[test]
fn debian_686_pae_runs_the_workload_with_shadow_paging() {
    boot_linux(Flavour::I686Pae, "shadow");
}
