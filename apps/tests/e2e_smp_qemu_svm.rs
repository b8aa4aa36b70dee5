//! End-to-end: an SMP host (issue 13) in QEMU (TCG, `-smp 2`) with
//! emulated AMD SVM and nested paging: the stub starts the second CPU,
//! which runs the VMs placed on it (`run --cpus`, the `cpu` key of
//! `--config`) with its own host state and APIC timer.

mod common;

const TIMEOUT_SECS: u64 = 180;

fn temp_config(name: &str, text: &str) -> (std::path::PathBuf, String) {
    let dir = std::env::temp_dir().join(format!("splitvisor-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("vms.toml");
    std::fs::write(&config, text).unwrap();
    let path = config.to_str().unwrap().to_string();
    (dir, path)
}

/// Two copies of the timer guest (one virtual second of PIT ticks, HLTs
/// and a spin without exits each), VM 1 on CPU 1: both pass every check,
/// and the end's table names each VM's CPU. CPU 1 bounds its guest's runs
/// with its APIC timer (the PIT is CPU 0's): its guest's spin without
/// exits still gets its ticks only because that timer ends the runs.
#[test]
fn two_timer_guests_on_two_cpus_both_pass() {
    let r = common::splitvisor_run(
        &["--guest", "timer", "--vms", "2", "--cpus", "2"],
        TIMEOUT_SECS,
    );
    assert_eq!(r.code, Some(0), "{r}");
    assert!(r.has_line("[stub] cpu1 online"), "{r}");
    for (vm, cpu) in [("vm0", "cpu0"), ("vm1", "cpu1")] {
        assert!(
            r.has_line(&format!("[{vm}] timer: all checks passed")),
            "{r}"
        );
        assert!(
            r.has_line(&format!(
                "[{vm}] timer: spin: 10 ticks while spinning without exits"
            )),
            "{r}"
        );
        assert!(
            r.stdout.lines().any(
                |l| l.starts_with(&format!("[stub] | {vm} | {cpu} | exits "))
                    && l.ends_with(" | stopped with guest status 0")
            ),
            "no table line for {vm} on {cpu}\n{r}"
        );
    }
    assert!(r.has_line("[stub] all 2 VMs ended:"), "{r}");
    assert!(r.has_line("[stub] vm stopped: guest status 0"), "{r}");
}

/// The `cpu` key of `--config` places a VM; the only VM on CPU 1 runs
/// there alone (CPU 0 has none) and its run ends the machine.
#[test]
fn a_config_places_the_only_vm_on_cpu1() {
    let (dir, config) = temp_config("smp1", "[[vm]]\nguest = \"hello\"\ncpu = 1\n");
    let r = common::splitvisor_run(&["--config", &config], TIMEOUT_SECS);
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(r.code, Some(0), "{r}");
    assert!(r.has_line("[stub] cpu1 online"), "{r}");
    assert!(r.has_line("hello from the guest"), "{r}");
    assert!(r.has_line("[stub] vm stopped: guest status 0"), "{r}");
}

/// The 8259s interrupt only the boot CPU: a VM that owns a host IRQ line
/// (the disk-driver's IRQ 14, `--disk` goes to VM 0) placed on CPU 1 is
/// refused at boot with a `cannot run:` line.
#[test]
fn a_vm_with_a_host_irq_on_cpu1_cannot_run() {
    let (dir, config) = temp_config("smpirq", "[[vm]]\nguest = \"hello\"\ncpu = 1\n");
    let img = dir.join("disk.img");
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    let r = common::splitvisor_run(
        &["--config", &config, "--disk", img.to_str().unwrap()],
        TIMEOUT_SECS,
    );
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(r.code, Some(102), "{r}");
    assert!(
        r.has_line("[stub] cannot run: a VM that owns a host IRQ line must run on cpu0: the 8259s interrupt only the boot CPU"),
        "{r}"
    );
}

/// A VM placed on a CPU the run does not have is refused before anything
/// is built.
#[test]
fn a_vm_on_a_cpu_the_run_lacks_is_refused() {
    let (dir, config) = temp_config("smpbad", "[[vm]]\nguest = \"hello\"\ncpu = 1\n");
    let r = common::splitvisor_run(&["--config", &config, "--cpus", "1"], TIMEOUT_SECS);
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(r.code, Some(103), "{r}");
    assert!(
        r.stderr
            .contains("a VM is placed on cpu 1, but the run has 1 CPU(s) (--cpus)"),
        "{r}"
    );
}

/// The watchdog per CPU: both VMs' vmm-servers spin at their 100th exit
/// (`--inject` goes to every copy of `--vms`); CPU 0's PIT and CPU 1's
/// APIC timer each interrupt their spinning server, and each VM stops
/// with the watchdog's line. About 7 s.
#[test]
fn the_watchdog_stops_a_hanging_vmm_server_on_each_cpu() {
    let r = common::splitvisor_run(
        &[
            "--guest",
            "cr3switch64",
            "--vms",
            "2",
            "--cpus",
            "2",
            "--inject",
            "vmm-server:hang@100",
        ],
        TIMEOUT_SECS,
    );
    assert_eq!(r.code, Some(101), "{r}");
    for (vm, cpu) in [("vm0", "cpu0"), ("vm1", "cpu1")] {
        assert!(
            r.stdout.lines().any(|l| l.starts_with(&format!(
                "[stub] | {vm} | {cpu} | exits 100 | the vmm-server hung: watchdog: it ran "
            )) && l.ends_with("; stopping the VM")),
            "{r}"
        );
    }
}
