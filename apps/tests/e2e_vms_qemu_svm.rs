//! End-to-end: several VMs on one CPU (issue 13) in QEMU (TCG) with
//! emulated AMD SVM and nested paging: `splitvisor run --vms` and
//! `--config`, read from the serial output, where the stub prefixes each
//! VM's lines with `[vmN] ` and ends with a table of every VM.

mod common;

use common::Run;

const TIMEOUT_SECS: u64 = 180;

fn splitvisor_run(args: &[&str]) -> Run {
    common::splitvisor_run(args, TIMEOUT_SECS)
}

fn position(r: &Run, line: &str) -> usize {
    r.stdout
        .lines()
        .position(|l| l == line)
        .unwrap_or_else(|| panic!("no line {line:?}\n{r}"))
}

/// Two copies of the timer guest (one virtual second of PIT ticks, HLTs
/// and a spin without exits each), VM 0 with the machine's disk (`--disk`
/// goes to VM 0): both pass every check, and they take turns -- VM 1
/// starts before VM 0 ends, which only the stub's slices allow (VM 0's
/// guest alone would keep the CPU for its whole second). VM 0's
/// disk-driver runs its self-test and gets IRQ 14 as a notification: the
/// second VM's build leaves the 8259s as the first VM's left them.
/// With `--net switch` each VM's virtio-net server calls one switch, a
/// task in no VM, over a channel across VMs, with its own station
/// address; the switch crashes at the second call (`--inject
/// switch:crash@2`): the stub restarts it, the caller in the other VM
/// gets `ServerRestarted` across VMs, and the next instance serves the
/// calls at the VMs' ends.
#[test]
fn two_timer_guests_take_turns_and_both_pass_vm0_with_its_disk() {
    let dir = std::env::temp_dir().join(format!("splitvisor-vms-disk-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let img = dir.join("disk.img");
    let mut bytes = vec![0u8; 1 << 20];
    bytes[..16].copy_from_slice(b"SPLITVISOR-DISK!");
    std::fs::write(&img, &bytes).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_splitvisor"))
        .args(["run", "--guest", "timer", "--vms", "2", "--net", "switch"])
        .args(["--inject", "switch:crash@2", "--disk"])
        .arg(&img)
        .args(["--timeout", &TIMEOUT_SECS.to_string()])
        .env(splitvisor::disk::SELF_TEST_ENV, "1")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("the splitvisor binary starts");
    std::fs::remove_dir_all(&dir).ok();
    let r = Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert_eq!(r.code, Some(0), "{r}");
    for vm in ["vm0", "vm1"] {
        position(&r, &format!("[{vm}] timer: all checks passed"));
        position(&r, &format!("[stub] {vm}: vm stopped: guest status 0"));
        assert!(
            r.stdout
                .lines()
                .any(|l| l.starts_with(&format!("[stub] | {vm} | exits "))
                    && l.ends_with(" | stopped with guest status 0")),
            "no table line for {vm}\n{r}"
        );
    }
    assert!(
        position(
            &r,
            "[vm1] timer: pit channel 0: mode 2, count 1193 (1000.15 Hz)"
        ) < position(&r, "[vm0] timer: all checks passed"),
        "the VMs did not take turns\n{r}"
    );
    position(
        &r,
        "[vm0] disk: self-test: wrote, flushed and read back sector 2047",
    );
    let prefix = "[vm0] disk: self-test: read 4 sectors waiting for IRQ 14: status 0, ";
    let n: u32 = r
        .stdout
        .lines()
        .find_map(|l| {
            l.strip_prefix(prefix)?
                .strip_suffix(" notifications")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no line {prefix:?}\n{r}"));
    assert!(n >= 1, "{r}");
    assert!(!r.stdout.contains("[vm1] disk:"), "VM 1 has no disk\n{r}");
    // The switch in no VM, reached across VMs: the first caller got its
    // answer, the second the switch's crash as `ServerRestarted`.
    let reached = |vm: &str, mac: &str| {
        let line = format!("[{vm}] virtio-net: mac 02:53:56:00:00:{mac}, link on channel ");
        let tail = ": no card behind it (status 4): frames reach the switch's other ports only";
        r.stdout
            .lines()
            .any(|l| l.starts_with(&line) && l.ends_with(tail))
    };
    let lost = |vm: &str| {
        r.has_line(&format!("[{vm}] virtio-net: the link call failed: the server faulted and was restarted: the call was lost: frames go nowhere"))
    };
    assert!(
        (reached("vm0", "01") && lost("vm1")) || (reached("vm1", "02") && lost("vm0")),
        "{r}"
    );
    let restarted =
        "[stub] sys: switch restarted (generation 1): exception 6 (error code 0x0) at rip=";
    assert!(r.stdout.lines().any(|l| l.starts_with(restarted)), "{r}");
    for line in [
        "[sys] switch: port 1 is channel ",
        "[sys] switch: at the VM's end: port 1 vm ch ",
    ] {
        assert!(r.stdout.lines().any(|l| l.starts_with(line)), "{r}");
    }
    // Every guest line carries its VM's prefix: none is bare.
    assert!(!r.stdout.lines().any(|l| l.starts_with("timer:")), "{r}");
    assert!(r.has_line("[stub] all 2 VMs ended:"), "{r}");
    assert!(r.has_line("[stub] vm stopped: guest status 0"), "{r}");
}

/// VM 0 triple-faults under nested paging while VM 1 (shadow paging)
/// prints its line and exits 0: VM 0's failure ends VM 0 only, the table
/// shows both, and the run's status is the failure's (101). `--log-dir` gives
/// each VM its own log.
#[test]
fn a_triple_fault_in_one_vm_leaves_the_other_running_and_each_vm_has_its_log() {
    let dir = std::env::temp_dir().join(format!("splitvisor-vms-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("vms.toml");
    std::fs::write(
        &config,
        "[[vm]]\nguest = \"triple-fault\"\n\n[[vm]]\nguest = \"hello\"\nmmu = \"shadow\"\n",
    )
    .unwrap();
    let config = config.to_str().unwrap().to_string();
    // QEMU's TCG ignores the task-switch intercept: shadow paging needs this.
    let logs = dir.join("logs");
    let r = splitvisor_run(&[
        "--config",
        &config,
        "--unsafe-shadow",
        "--log-dir",
        logs.to_str().unwrap(),
    ]);
    let log = |name: &str| std::fs::read_to_string(logs.join(name)).unwrap_or_default();
    let (vm0, vm1, stub) = (log("vm0.log"), log("vm1.log"), log("stub.log"));
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(r.code, Some(101), "{r}");
    position(
        &r,
        "[vm0] [vmm] the guest triple-faulted (shutdown, code 0x7f) at rip=0x10001c",
    );
    position(
        &r,
        "[stub] vm0: vm failed: the vmm-server gave up (its reason is above)",
    );
    position(&r, "[vm1] hello from the guest");
    position(
        &r,
        "[stub] vm1: svm: shadow paging, guest RAM 16 MiB, entry 0x100000, tsc 999 MHz",
    );
    let table = |vm: &str, end: &str| {
        r.stdout
            .lines()
            .any(|l| l.starts_with(&format!("[stub] | {vm} | exits ")) && l.ends_with(end))
    };
    assert!(
        table("vm0", " | the vmm-server gave up (its reason is above)"),
        "{r}"
    );
    assert!(table("vm1", " | stopped with guest status 0"), "{r}");
    assert!(
        r.has_line("[stub] vm failed: vm0: the vmm-server gave up (its reason is above)"),
        "{r}"
    );
    // --log-dir: each VM's lines in its own file, without the prefix.
    let has = |log: &str, line: &str| log.lines().any(|l| l == line);
    assert!(
        has(
            &vm0,
            "[vmm] the guest triple-faulted (shutdown, code 0x7f) at rip=0x10001c"
        ),
        "vm0.log:\n{vm0}"
    );
    assert!(!vm0.contains("hello from the guest"), "vm0.log:\n{vm0}");
    assert!(has(&vm1, "hello from the guest"), "vm1.log:\n{vm1}");
    assert!(
        has(&vm1, "[stub] vm1: vm stopped: guest status 0"),
        "vm1.log:\n{vm1}"
    );
    assert!(
        stub.contains("[stub] all 2 VMs ended:"),
        "stub.log:\n{stub}"
    );
}

/// A config file with a key the format does not have is refused before
/// anything is built, naming the key.
#[test]
fn a_config_with_an_unknown_key_is_refused() {
    let dir = std::env::temp_dir().join(format!("splitvisor-badvms-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("vms.toml");
    std::fs::write(&config, "[[vm]]\nguest = \"hello\"\ncpus = 2\n").unwrap();
    let r = splitvisor_run(&["--config", config.to_str().unwrap()]);
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(r.code, Some(103), "{r}");
    assert!(r.stderr.contains("unknown field `cpus`"), "{r}");
}

/// seL4's root task reads one manifest: several VMs are refused there
/// before anything is built, rather than running VM 0 alone.
#[test]
fn several_vms_are_refused_on_sel4() {
    let r = splitvisor_run(&["--platform", "sel4", "--guest", "hello", "--vms", "2"]);
    assert_eq!(r.code, Some(2), "{r}");
    assert!(
        r.stderr
            .contains("several VMs (--vms, --config) are not available with --platform sel4"),
        "{r}"
    );
}
