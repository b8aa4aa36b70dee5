//! End-to-end: several VMs on one CPU (issue 13) on Bochs with VMX, one
//! VM under EPT and one under shadow paging. VMX has one current VMCS:
//! each VM's is made current (VMPTRLD) when its turn comes, and VM 1 can
//! only say hello with its own guest state after VM 0 ended.

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

fn has_table_line(r: &Run, vm: &str) -> bool {
    r.stdout.lines().any(|l| {
        l.starts_with(&format!("[stub] | {vm} | exits "))
            && l.ends_with(" | stopped with guest status 0")
    })
}

/// About 11 s. The config's `net = "switch"` joins the VMs' virtio-net
/// servers to one switch in no VM: each reaches it across VMs (the
/// dummy VMCS of the tasks in no VM never current when a guest runs).
#[test]
fn hello_under_ept_and_under_shadow_paging_each_in_its_vm() {
    let r = run_config(
        "vms-hello",
        "net = \"switch\"\n[[vm]]\nguest = \"hello\"\n\n[[vm]]\nguest = \"hello\"\nmmu = \"shadow\"\n",
    );
    assert_eq!(r.code, Some(0), "{r}");
    for (vm, paging) in [("vm0", "nested"), ("vm1", "shadow")] {
        assert!(
            r.stdout.lines().any(|l| l.starts_with(&format!(
                "[stub] {vm}: vmx: {paging} paging, guest RAM 16 MiB"
            ))),
            "{r}"
        );
        assert!(r.has_line(&format!("[{vm}] hello from the guest")), "{r}");
        assert!(has_table_line(&r, vm), "{r}");
        let line = format!("[{vm}] virtio-net: mac 02:53:56:00:00:0");
        assert!(
            r.stdout.lines().any(|l| l.starts_with(&line)
                && l.ends_with("frames reach the switch's other ports only")),
            "{r}"
        );
    }
    for port in ["1", "2"] {
        let line = format!("[sys] switch: port {port} is channel ");
        assert!(r.stdout.lines().any(|l| l.starts_with(&line)), "{r}");
    }
}

/// Two timer guests that take turns (each VMCS made current many times):
/// about 26 s, over the default set's budget for one boot.
#[test]
#[ignore = "26 s of Bochs; run with --ignored"]
fn two_timer_guests_take_turns_under_ept_and_shadow_paging() {
    let r = run_config(
        "vms-timer",
        "[[vm]]\nguest = \"timer\"\n\n[[vm]]\nguest = \"timer\"\nmmu = \"shadow\"\n",
    );
    assert_eq!(r.code, Some(0), "{r}");
    let at = |line: &str| {
        r.stdout
            .lines()
            .position(|l| l == line)
            .unwrap_or_else(|| panic!("no line {line:?}\n{r}"))
    };
    for vm in ["vm0", "vm1"] {
        at(&format!("[{vm}] timer: all checks passed"));
        assert!(has_table_line(&r, vm), "{r}");
    }
    assert!(
        at("[vm1] timer: pit channel 0: mode 2, count 1193 (1000.15 Hz)")
            < at("[vm0] timer: all checks passed"),
        "the VMs did not take turns\n{r}"
    );
}
