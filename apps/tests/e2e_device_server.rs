//! End-to-end: a device server with rights a vmm-server does not have --
//! host ports 0x70-0x71 (the RTC) and host IRQ 8 (on the second 8259) --
//! next to the `timer` guest: the probe device server
//! (`attack/src/bin/probe-device.rs`) waits in `ReplyRecv` with a 10 ms
//! timeout and gets `RECV_TIMEOUT` (the stub's exit deadline fires for
//! it while the guest runs), turns on the RTC's periodic
//! interrupt, takes three IRQ 8 notifications through `ReplyRecv` and
//! acknowledges each with `IrqAck`, and checks that what it was not
//! granted is refused; then it faults on purpose, and the stub restarts it
//! from its image (fresh data), and a second instance, blocked in a `Call`
//! to it, gets `ServerRestarted`; the guest still runs to its end. On QEMU with SVM
//! and on Bochs with VMX (where a VM exit cuts TR's limit, and with it the
//! TSS's I/O permission bitmap, until the stub reloads TR).
//!
//! The stub's idle loop: with the client given the `vcpu` right, a VCPU
//! task is blocked in a `Call` on a server that waits for its timeout and
//! its IRQ, so neither the guest nor any task can run: the stub idles,
//! polling the 8259s and the TSC, and its scheduler line counts it
//! (`[stub] scheduler: idle=N`); without it the guest runs instead and the
//! count stays 0.
//!
//! Needs QEMU, Bochs, gcc and binutils (`scripts/install-deps`).

use std::time::Duration;

use ipc_proto::manifest::{GuestRam, MmuMode, Rights};
use splitvisor::attack::{boot_once, build_probe_device, targets, Emulator};
use splitvisor::run::Arch;

fn system() -> images::SystemSpec {
    system_with(false)
}

/// The probe device and its client; `vcpu_client` gives the client a VCPU.
fn system_with(vcpu_client: bool) -> images::SystemSpec {
    let elf = build_probe_device().expect("the probe device server builds");
    images::SystemSpec {
        device_servers: vec![
            images::DeviceServer {
                name: "probe-device".into(),
                elf: elf.clone(),
                rights: Rights {
                    ports: images::rights::ports(&[(0x70, 0x71)]),
                    irqs: 1 << 8,
                    guest_ram: GuestRam::ReadOnly,
                    console: true,
                    ..Rights::default()
                },
            },
            images::DeviceServer {
                name: "probe-client".into(),
                elf,
                rights: Rights {
                    console: true,
                    vcpu: vcpu_client,
                    ..Rights::default()
                },
            },
        ],
        device_channels: vec![("probe-client".into(), "probe-device".into())],
        ..images::SystemSpec::new("timer")
    }
}

fn check(console: &str) {
    assert!(
        console.contains("probe-device: a ReplyRecv timeout of 10 ms came back as RECV_TIMEOUT"),
        "{console}"
    );
    assert!(
        console.contains("probe-device: 3 interrupts on IRQ 8 (ports and notifications work)"),
        "{console}"
    );
    assert!(
        console.contains("[stub] probe-device restarted (generation 1): exception 6 "),
        "{console}"
    );
    assert!(
        console.contains("probe-device: restarted with fresh data"),
        "{console}"
    );
    assert!(
        console.contains("probe-client: the call came back with ServerRestarted"),
        "{console}"
    );
    assert!(console.contains("vm stopped: guest status 0"), "{console}");
    assert!(!console.contains("ESCAPE"), "{console}");
}

/// How often the stub idled: `[stub] scheduler: idle=N ...`.
fn idles(console: &str) -> Option<u64> {
    let line = console
        .lines()
        .find_map(|l| l.split("[stub] scheduler: idle=").nth(1))?;
    line.split(' ').next()?.parse().ok()
}

/// The probe device's waits (its 10 ms timeout, three IRQ 8s) while its
/// client, a VCPU task, waits in a `Call`: the stub idles for each, and
/// the guest still runs to its end.
#[test]
fn the_stub_idles_while_a_vcpu_task_waits_on_a_device_server_on_qemu_svm() {
    let target = &targets(Emulator::Qemu, &[], &[MmuMode::Nested])[0];
    let console =
        boot_once(system_with(true), target, Duration::from_secs(120)).expect("QEMU runs");
    check(&console);
    assert!(console.contains("timer: all checks passed"), "{console}");
    let n = idles(&console).expect("a scheduler line");
    eprintln!("the stub idled {n} times");
    assert!(n >= 2, "the stub idled {n} times\n{console}");
}

/// The same on Bochs's VMX, whose 8259 answers the idle loop's polls its
/// own way (`deadline::fired`).
#[test]
fn the_stub_idles_while_a_vcpu_task_waits_on_a_device_server_on_bochs_vmx() {
    let target = &targets(Emulator::Bochs, &[Arch::Vmx], &[MmuMode::Nested])[0];
    let console =
        boot_once(system_with(true), target, Duration::from_secs(400)).expect("Bochs runs");
    check(&console);
    assert!(console.contains("timer: all checks passed"), "{console}");
    let n = idles(&console).expect("a scheduler line");
    eprintln!("the stub idled {n} times");
    assert!(n >= 2, "the stub idled {n} times\n{console}");
}

#[test]
fn device_server_takes_irq8_notifications_on_qemu_svm() {
    let target = &targets(Emulator::Qemu, &[], &[MmuMode::Nested])[0];
    let console = boot_once(system(), target, Duration::from_secs(120)).expect("QEMU runs");
    check(&console);
    // No VCPU task blocked in a call: the guest runs whenever all wait.
    assert_eq!(idles(&console), Some(0), "{console}");
}

#[test]
fn device_server_takes_irq8_notifications_on_bochs_vmx() {
    let target = &targets(Emulator::Bochs, &[Arch::Vmx], &[MmuMode::Nested])[0];
    check(&boot_once(system(), target, Duration::from_secs(400)).expect("Bochs runs"));
}

/// The stub's own check of the manifest, behind the builder's: an image
/// whose probe device is granted the PIT's ports 0x40-0x43 (the builder
/// would refuse it, so the built image is patched: the manifest's port
/// range 0x70-0x71, bytes `01 70 71`, becomes `01 40 43`) does not boot.
/// The stub says so in one line (`cannot run: ...`) and starts no task.
#[test]
fn the_stub_refuses_a_manifest_granting_its_own_ports_on_qemu_svm() {
    use splitvisor::run::{qemu_args, run_emulator, Capture, RunOptions, DEFAULT_EMULATOR};
    let mut system = system();
    system.device_servers.truncate(1);
    system.device_channels.clear();
    let image = images::build_system_spec(&system).expect("the image builds");
    let mut bytes = std::fs::read(&image).unwrap();
    let magic = ipc_proto::manifest::PAYLOAD_MAGIC;
    // At a page boundary: the stub's own code holds the magic too.
    let payload = (0..bytes.len() - 8)
        .step_by(4096)
        .find(|&i| bytes[i..i + 8] == magic)
        .expect("a payload");
    let manifest = &mut bytes[payload..payload + 4096];
    let at: Vec<usize> = (0..manifest.len() - 3)
        .filter(|&i| manifest[i..i + 3] == [1, 0x70, 0x71])
        .collect();
    assert_eq!(at.len(), 1, "the port range is found once in the manifest");
    manifest[at[0] + 1..at[0] + 3].copy_from_slice(&[0x40, 0x43]);
    let patched = image.with_file_name("device-server-stub-ports.img");
    std::fs::write(&patched, &bytes).unwrap();
    let opts = RunOptions {
        system,
        cpu: "EPYC,+svm,+npt".into(),
        arch: None,
        emulator: DEFAULT_EMULATOR.into(),
        timeout: Duration::from_secs(60),
        memory_mib: 256,
        unsafe_shadow: false,
    };
    let console = Capture::default();
    run_emulator(
        DEFAULT_EMULATOR,
        &qemu_args(&opts, &patched),
        opts.timeout,
        Box::new(console.clone()),
    )
    .expect("QEMU runs");
    let text = String::from_utf8_lossy(&console.0.lock().unwrap()).into_owned();
    assert!(
        text.contains("[stub] cannot run: a task is granted a host I/O port the stub drives"),
        "{text}"
    );
    assert!(!text.contains("probe-device:"), "{text}");
}
