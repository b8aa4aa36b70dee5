//! End-to-end: an SMP host (issue 13) on Bochs with two VMX CPUs (`cpu:
//! count=2`; Debian's Bochs is built with SMP): the second CPU does its
//! own VMXON, builds its VM's VMCS with its own host state (GDT, TSS,
//! stack) and bounds the guest's runs with its APIC timer.

mod common;

use common::Run;

const TIMEOUT_SECS: u64 = 400;

fn run_config(tag: &str, config: &str) -> Run {
    let dir = std::env::temp_dir().join(format!("splitvisor-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("vms.toml");
    std::fs::write(&path, config).unwrap();
    let r = common::splitvisor_run(
        &["--emulator", "bochs", "--config", path.to_str().unwrap()],
        TIMEOUT_SECS,
    );
    std::fs::remove_dir_all(&dir).ok();
    r
}

fn has_table_line(r: &Run, vm: &str, cpu: &str) -> bool {
    r.stdout.lines().any(|l| {
        l.starts_with(&format!("[stub] | {vm} | {cpu} | exits "))
            && l.ends_with(" | stopped with guest status 0")
    })
}

/// VM 0 (EPT) on CPU 0, VM 1 (shadow paging) on CPU 1.
#[test]
fn hello_under_ept_on_cpu0_and_under_shadow_paging_on_cpu1() {
    let r = run_config(
        "smp-hello",
        "[[vm]]\nguest = \"hello\"\n\n[[vm]]\nguest = \"hello\"\nmmu = \"shadow\"\ncpu = 1\n",
    );
    assert_eq!(r.code, Some(0), "{r}");
    assert!(r.has_line("[stub] cpu1 online"), "{r}");
    for (vm, cpu, paging) in [("vm0", "cpu0", "nested"), ("vm1", "cpu1", "shadow")] {
        assert!(
            r.stdout.lines().any(|l| l.starts_with(&format!(
                "[stub] {vm}: vmx: {paging} paging, guest RAM 16 MiB"
            ))),
            "{r}"
        );
        assert!(r.has_line(&format!("[{vm}] hello from the guest")), "{r}");
        assert!(has_table_line(&r, vm, cpu), "{r}");
    }
}

/// Two timer guests, one per CPU: each CPU's timer (the PIT on CPU 0, the
/// APIC timer on CPU 1) ends the guest's spin without exits.
#[test]
#[ignore = "about 45 s of Bochs; run with --ignored"]
fn two_timer_guests_on_two_vmx_cpus_both_pass() {
    let r = run_config(
        "smp-timer",
        "[[vm]]\nguest = \"timer\"\n\n[[vm]]\nguest = \"timer\"\nmmu = \"shadow\"\ncpu = 1\n",
    );
    assert_eq!(r.code, Some(0), "{r}");
    for (vm, cpu) in [("vm0", "cpu0"), ("vm1", "cpu1")] {
        assert!(
            r.has_line(&format!("[{vm}] timer: all checks passed")),
            "{r}"
        );
        assert!(has_table_line(&r, vm, cpu), "{r}");
    }
}
