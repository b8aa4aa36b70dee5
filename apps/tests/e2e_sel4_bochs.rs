//! End-to-end on seL4 (issue 14): `splitvisor run --platform sel4` builds
//! the seL4 kernel (cached under `target/sel4/`), the root task and a GRUB
//! ISO, and boots it in Bochs (`corei7_skylake_x`: VMX with EPT and
//! unrestricted guest). The root task starts the mmu-server (it owns the
//! EPT and maps guest RAM into it as the vmm-server forwards it the guest's
//! EPT violations) and the vmm-server (the VCPU's thread, it runs the exit
//! handler) as components of their own (ELF, VSpace, CSpace); each test
//! reads the guest's own output and the final line.
//!
//! Needs the seL4 sources (`SEL4_SRC`, or `../shared/sel4/seL4-16.0.0.tar.gz`
//! beside the workspace): without them each test prints why and returns.
//! The kernel build needs cmake, ninja-build, libxml2-utils and the Python
//! packages pyyaml, jinja2, ply and lxml (`scripts/install-deps`).

mod common;

use common::Run;

/// Generous: the first run builds the kernel (about 10-20 s) and the root
/// task, several Bochs runs may share two cores, and Linux takes minutes.
const TIMEOUT_SECS: u64 = 900;

/// Why the seL4 tests cannot run here, if they cannot.
fn skip_reason() -> Option<String> {
    splitvisor::sel4::find_sources().err()
}

fn sel4_run(args: &[&str]) -> Option<Run> {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return None;
    }
    let mut all = vec!["--platform", "sel4"];
    all.extend_from_slice(args);
    Some(common::splitvisor_run(&all, TIMEOUT_SECS))
}

#[test]
fn hello_guest_on_sel4_in_bochs_prints_its_line_and_exits_0() {
    let Some(r) = sel4_run(&["--guest", "hello"]) else {
        return;
    };
    assert_eq!(r.code, Some(0), "{r}");
    assert!(
        r.stdout
            .contains("Booting all finished, dropped to user space"),
        "seL4 did not reach user space\n{r}"
    );
    assert!(
        r.has_line("hello from the guest"),
        "no exact guest line\n{r}"
    );
    assert!(
        r.stdout.lines().any(
            |l| l.starts_with("[stub] EPT handed to the mmu-server component")
                && l.contains("; 4 capabilities)")
        ),
        "the servers did not run as components of their own\n{r}"
    );
    assert!(
        r.has_line(
            "[mmu] EPT: 16 MiB of guest RAM in 8 2 MiB frames, mapped as the guest touches them"
        ),
        "the mmu-server did not take guest RAM\n{r}"
    );
    // Guest RAM is mapped on demand: the guest's first touch of each 2 MiB
    // page it uses (its code at 1 MiB, its stack) is an EPT violation that
    // the vmm-server component forwards to the mmu-server, which maps it
    // (`installs`); the I/O exits are the guest's 49.
    let stats = r
        .stdout
        .lines()
        .find(|l| l.starts_with("[vmm] exits: "))
        .unwrap_or_else(|| panic!("no vmm statistics line\n{r}"));
    let field = |name: &str| -> u64 {
        stats
            .split_whitespace()
            .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {stats:?}\n{r}"))
    };
    assert_eq!(field("ioio"), 49, "{r}");
    let (npf, installs) = (field("npf"), field("installs"));
    assert!(
        npf >= 1 && installs >= 1,
        "no EPT violation reached the mmu-server\n{r}"
    );
    assert_eq!(npf, installs, "an EPT violation was not a mapping\n{r}");
    assert_eq!(field("total"), 49 + npf, "{r}");
    assert!(
        r.stdout.lines().any(|l| l.starts_with("[stub] seL4: ")
            && l.ends_with(&format!(
                "EPT violations on guest RAM to the mmu-server {npf}"
            ))),
        "{r}"
    );
    assert!(r.has_line("[stub] vm stopped: guest status 0"), "{r}");
    assert!(
        r.stderr.contains("splitvisor: guest exited with status 0"),
        "{r}"
    );
}

#[test]
fn status42_guest_on_sel4_exits_42() {
    let Some(r) = sel4_run(&["--guest", "status42"]) else {
        return;
    };
    assert_eq!(r.code, Some(42), "{r}");
    assert!(r.has_line("exiting with status 42"), "{r}");
    assert!(r.has_line("[stub] vm stopped: guest status 42"), "{r}");
}

/// VMX reports the guest's triple fault as exit reason 2; the vmm-server
/// says so and the root task ends with `vm failed`.
#[test]
fn triple_fault_guest_on_sel4_fails_with_exit_reason_2() {
    let Some(r) = sel4_run(&["--guest", "triple-fault"]) else {
        return;
    };
    assert_eq!(r.code, Some(101), "{r}");
    assert!(r.all().contains("triple fault, code 0x2"), "{r}");
    assert!(r.all().contains("rip="), "guest RIP not mentioned\n{r}");
}

/// Each processor mode the guest can be in under EPT: real mode (a boot
/// sector with DL = 0x80), the switch to protected mode, 32-bit and PAE
/// paging, long mode (EFER.LME through the root task's share of MSR
/// exits); each prints its checks and ends with status 0.
fn mode_guest(guest: &str) {
    let Some(r) = sel4_run(&["--guest", guest]) else {
        return;
    };
    assert_eq!(r.code, Some(0), "{r}");
    assert!(r.has_line(&format!("{guest}: all checks passed")), "{r}");
}

#[test]
fn realmode_guest_on_sel4_passes() {
    mode_guest("realmode");
}

#[test]
fn pmode_guest_on_sel4_passes() {
    mode_guest("pmode");
}

#[test]
fn paging32_guest_on_sel4_passes() {
    mode_guest("paging32");
}

#[test]
fn pae_guest_on_sel4_passes() {
    mode_guest("pae");
}

#[test]
fn longmode_guest_on_sel4_passes() {
    mode_guest("longmode");
}

/// The PC board's devices from inside the guest: the local APIC (MMIO
/// through EPT violations, its timer on the exit deadline), the I/O APIC,
/// the ACPI tables and PM block.
#[test]
fn apic_guest_on_sel4_passes() {
    mode_guest("apic");
}

#[test]
fn ioapic_guest_on_sel4_passes() {
    mode_guest("ioapic");
}

#[test]
fn acpi_guest_on_sel4_passes() {
    mode_guest("acpi");
}

/// The PC board's checks from inside the guest, and CR4 bits the VM's
/// CPUID hides raising #GP (the root task's CR4 mask and SET_PAGING).
#[test]
fn qemupc_guest_on_sel4_passes() {
    mode_guest("qemupc");
}

/// The PIT through the 8259 at 1 kHz: ticks counted in a virtual second,
/// HLT woken by ticks, and ticks while the guest spins without exits (the
/// exit deadline, kept with the VMX-preemption timer).
#[test]
fn timer_guest_on_sel4_passes() {
    let Some(r) = sel4_run(&["--guest", "timer"]) else {
        return;
    };
    assert_eq!(r.code, Some(0), "{r}");
    assert!(r.all().contains("timer: all checks passed"), "{r}");
}

/// The bad-page-table guest agrees with the native stub's EPT results in
/// every case but those whose page-table walk leaves guest RAM: there the
/// vmm-server injects the page fault with `SET_CR2`, and seL4 16.0.0 cannot
/// set a guest's CR2 (a known gap, `sel4/README.md`), so the guest reads a
/// stale CR2 and counts those cases (only those) as mismatches.
#[test]
fn badpt32_on_sel4_differs_only_where_sel4_cannot_set_cr2() {
    let Some(r) = sel4_run(&["--guest", "badpt32"]) else {
        return;
    };
    let mismatches: Vec<&str> = r
        .stdout
        .lines()
        .filter(|l| l.starts_with("badpt32: ") && l.ends_with(" MISMATCH"))
        .collect();
    assert_eq!(mismatches.len(), 3, "{r}");
    assert!(mismatches.iter().all(|l| l.contains("_beyond_ram_")), "{r}");
    assert!(r.has_line("badpt32: done, 25 cases, 3 mismatches"), "{r}");
    assert!(r.stdout.contains("seL4 cannot set the guest's CR2"), "{r}");
    assert_eq!(r.code, Some(3), "{r}");
}

/// Debian's stock amd64 kernel (fetched into `.cache/linux/` as the other
/// Linux tests do) boots to its init marker and ends the VM through port
/// 0xF4: on the ISA board 94,000 exits (58 of them EPT violations that the
/// mmu-server component maps), on the PC board (APICs, ACPI) 74,000 with
/// milestone 1; 130-250 s in Bochs each, depending on the machine's load.
fn debian_amd64_boots_to_init_on_sel4(board: &str) {
    let Some(r) = sel4_run(&[
        "--linux",
        "amd64",
        "--board",
        board,
        "--append",
        "splitvisor.exit",
    ]) else {
        return;
    };
    let stdout = common::rejoin_interrupted_lines(&r.stdout);
    assert!(
        stdout.contains("Linux version 6."),
        "the kernel did not start\n{r}"
    );
    assert!(
        stdout.lines().any(|l| l == splitvisor::linux::INIT_MARKER),
        "no init marker\n{r}"
    );
    assert_eq!(r.code, Some(0), "{r}");
}

#[test]
#[ignore = "about 2.5 minutes in Bochs; the PC-board boot below runs by default; run with --ignored"]
fn debian_amd64_boots_to_init_on_sel4_isa_board() {
    debian_amd64_boots_to_init_on_sel4("isa");
}

/// Its timer check spins up to 1.6 s of TSC time waiting for PIT ticks:
/// the exit deadline must survive seL4's own timer interrupts.
#[test]
fn debian_amd64_boots_to_init_on_sel4_pc_board() {
    debian_amd64_boots_to_init_on_sel4("pc");
}

#[test]
fn shadow_paging_on_sel4_is_refused_in_one_sentence() {
    // Refused before anything is built: no seL4 sources needed.
    let r = common::splitvisor_run(
        &["--platform", "sel4", "--guest", "hello", "--mmu", "shadow"],
        TIMEOUT_SECS,
    );
    assert_eq!(r.code, Some(102), "{r}");
    assert!(
        r.stderr
            .contains("seL4 has no counterpart of shadow paging"),
        "{r}"
    );
}

/// The root task hands each component the capabilities its manifest
/// rights say (`sel4_root_task::rights`); a task it has no component for
/// is refused by name, before Bochs starts: no seL4 sources needed. The
/// uart-server (`--uart-server`), and the virtio-rng server (`--rng`).
#[test]
fn a_task_the_root_task_cannot_place_is_refused_by_name() {
    for (flag, task) in [("--uart-server", "uart-server"), ("--rng", "virtio-rng")] {
        let r = common::splitvisor_run(
            &[
                "--platform",
                "sel4",
                "--guest",
                "hello",
                "--board",
                "pc",
                flag,
            ],
            TIMEOUT_SECS,
        );
        assert_eq!(r.code, Some(102), "{r}");
        let said = format!(
            "splitvisor: cannot run: the task {task} cannot be placed on seL4: the root task \
             carries components for the vmm-server and the mmu-server only"
        );
        assert!(r.stderr.contains(&said), "{r}");
        assert!(!r.stdout.contains("seL4"), "Bochs ran:\n{r}");
    }
}

/// Issue 14's hostile case: the vmm-server component invokes a capability
/// address of the root task's (where it held the EPT), which is not in its
/// CSpace.
/// seL4 refuses the lookup and sends a capability fault to the root task,
/// which ends the run with `vm failed` naming the address; the guest never
/// runs. Before that it asks the mmu-server to map addresses outside guest
/// RAM, which the mmu-server refuses.
#[test]
fn hostile_vmm_server_invoking_a_capability_it_was_not_given_is_refused() {
    let Some(r) = sel4_run(&["--guest", "hello", "--sel4-hostile-vmm"]) else {
        return;
    };
    assert_eq!(r.code, Some(101), "{r}");
    let tried = r
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("[vmm] hostile: invoking capability "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("the hostile server did not say what it invokes\n{r}"))
        .to_string();
    assert!(
        r.stdout.lines().any(|l| l.starts_with(&format!(
            "[stub] vm failed: seL4 refused the vmm-server's use of capability {tried}, \
             which it was not given (capability fault"
        ))),
        "the root task did not report the refused capability {tried}\n{r}"
    );
    // Before that, the mmu-server refused to map what is not guest RAM
    // (1: `REPLY_NOT_RAM`) and a message that is not an EPT violation (3).
    for line in [
        "[vmm] hostile: the mmu-server answered Ok(1) to label 0x4550 for guest-physical 0xfee00000",
        "[vmm] hostile: the mmu-server answered Ok(1) to label 0x4550 for guest-physical 0xffffffffffffffff",
        "[vmm] hostile: the mmu-server answered Ok(3) to label 0x4551 for guest-physical 0x0",
    ] {
        assert!(r.has_line(line), "no `{line}`\n{r}");
    }
    assert!(
        !r.stdout.contains("[vmm] hostile: seL4 answered"),
        "the invocation returned to the server instead of faulting\n{r}"
    );
    assert!(!r.stdout.contains("hello from the guest"), "{r}");
}

/// The native stub under the same Bochs VMX model (`corei7_skylake_x`).
fn native_bochs_vmx_run(args: &[&str]) -> Run {
    let mut all = vec!["--emulator", "bochs", "--arch", "vmx"];
    all.extend_from_slice(args);
    common::splitvisor_run(&all, TIMEOUT_SECS)
}

/// `exitbench: end KIND n=N tsc=T` lines: (kind, n, T).
fn exitbench_ends(stdout: &str) -> Vec<(String, u64, u64)> {
    stdout
        .lines()
        .filter_map(|l| {
            let mut w = l.strip_prefix("exitbench: end ")?.split_whitespace();
            let kind = w.next()?.to_string();
            let n = w.next()?.strip_prefix("n=")?.parse().ok()?;
            let tsc = w.next()?.strip_prefix("tsc=")?.parse().ok()?;
            Some((kind, n, tsc))
        })
        .collect()
}

/// Issue 14's figure, for `sel4/README.md`: the cost of an exit on seL4
/// (the vmm-server component's thread gets it from `seL4_VMEnter`)
/// against the native stub (it switches to the ring-3 vmm-server), both
/// under Bochs VMX, from one test run. The exitbench guest times N exits
/// of each kind with its own TSC, which Bochs advances by instructions, so
/// the figure is the exit's path length in instructions (guest, VM exit
/// and entry, kernel, servers), steady across runs and hosts. Prints a
/// table; checks only that both runs made every kind's N operations.
#[test]
#[ignore = "figures for sel4/README.md, about 40 s of Bochs; run with --ignored --nocapture"]
fn figures_exit_cost_on_sel4_against_the_native_stub_under_bochs_vmx() {
    const N: u64 = 2000;
    let cmdline = format!("n={N}");
    let args = ["--guest", "exitbench", "--cmdline", &cmdline];
    let Some(sel4) = sel4_run(&args) else {
        return;
    };
    let native = native_bochs_vmx_run(&args);
    for (name, r) in [("seL4", &sel4), ("native", &native)] {
        assert_eq!(r.code, Some(0), "{name}\n{r}");
        assert!(r.has_line("exitbench: done"), "{name}\n{r}");
    }
    let (s, n) = (exitbench_ends(&sel4.stdout), exitbench_ends(&native.stdout));
    assert_eq!(s.len(), 7, "{sel4}");
    assert_eq!(n.len(), 7, "{native}");
    println!(
        "TSC cycles per operation (Bochs: about an instruction each), {N} operations per kind"
    );
    println!("kind   native   seL4  seL4/native");
    for ((kind, sn, st), (nkind, nn, nt)) in s.iter().zip(&n) {
        assert_eq!((kind, *sn), (nkind, N), "{sel4}\n{native}");
        assert_eq!(*nn, N, "{native}");
        let (sc, nc) = (st / N, nt / N);
        println!(
            "{kind:6} {nc:6} {sc:6}  {:.2}",
            sc as f64 / nc.max(1) as f64
        );
    }
    for r in [&sel4, &native] {
        if let Some(l) = r.stdout.lines().find(|l| l.starts_with("[vmm] exits: ")) {
            println!("{l}");
        }
    }
    if let Some(l) = sel4.stdout.lines().find(|l| l.starts_with("[stub] seL4: ")) {
        println!("{l}");
    }
}

/// The kernel's timestamp on `Run /init as init process` (guest seconds).
fn init_time(stdout: &str) -> Option<f64> {
    let l = stdout
        .lines()
        .find(|l| l.contains("Run /init as init process"))?;
    l.split_once('[')?.1.split_once(']')?.0.trim().parse().ok()
}

/// Issue 14's figure, for `sel4/README.md`: Debian's amd64 kernel to its
/// init marker on the ISA board on seL4 and on the native stub, both under
/// Bochs VMX, from one test run: wall time, the kernel's own time of
/// `/init`, the exits. Prints them; checks only that both reached init.
#[test]
#[ignore = "figures for sel4/README.md, about 6 minutes of Bochs; run with --ignored --nocapture"]
fn figures_linux_boot_on_sel4_against_the_native_stub_under_bochs_vmx() {
    let args = [
        "--linux",
        "amd64",
        "--board",
        "isa",
        "--append",
        "splitvisor.exit",
    ];
    let t = std::time::Instant::now();
    let Some(sel4) = sel4_run(&args) else {
        return;
    };
    let sel4_wall = t.elapsed().as_secs_f64();
    let t = std::time::Instant::now();
    let native = native_bochs_vmx_run(&args);
    let native_wall = t.elapsed().as_secs_f64();
    for (name, r, wall) in [("seL4", &sel4, sel4_wall), ("native", &native, native_wall)] {
        let stdout = common::rejoin_interrupted_lines(&r.stdout);
        assert!(
            stdout.lines().any(|l| l == splitvisor::linux::INIT_MARKER),
            "{name}: no init marker\n{r}"
        );
        assert_eq!(r.code, Some(0), "{name}\n{r}");
        let exits = r
            .stdout
            .lines()
            .find(|l| l.starts_with("[vmm] exits: "))
            .unwrap_or("");
        println!(
            "{name}: {wall:.0} s wall (build and Bochs), /init at {:?} s of guest time\n  {exits}",
            init_time(&stdout)
        );
        for l in r.all().lines().filter(|l| {
            l.starts_with("[stub] seL4: ") || l.starts_with("splitvisor: seL4 run took")
        }) {
            println!("  {l}");
        }
    }
}
