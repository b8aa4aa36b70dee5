//! End-to-end: a device server with rights a vmm-server does not have --
//! host ports 0x70-0x71 (the RTC) and host IRQ 8 (on the second 8259) --
//! next to the `timer` guest: the probe device server
//! (`attack/src/bin/probe-device.rs`) turns on the RTC's periodic
//! interrupt, takes three IRQ 8 notifications through `ReplyRecv` and
//! acknowledges each with `IrqAck`, and checks that what it was not
//! granted is refused; then it faults on purpose, and the stub restarts it
//! from its image (fresh data), and a second instance, blocked in a `Call`
//! to it, gets `ServerRestarted`; the guest still runs to its end. On QEMU with SVM
//! and on Bochs with VMX (where a VM exit cuts TR's limit, and with it the
//! TSS's I/O permission bitmap, until the stub reloads TR).
//!
//! Needs QEMU, Bochs, gcc and binutils (`scripts/install-deps`).

use std::time::Duration;

use ipc_proto::manifest::{GuestRam, MmuMode, Rights};
use splitvisor::attack::{boot_once, build_probe_device, targets, Emulator};
use splitvisor::run::Arch;

fn system() -> images::SystemSpec {
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
        console.contains("probe-device: 3 interrupts on IRQ 8 (ports and notifications work)"),
        "{console}"
    );
    assert!(
        console.contains("the probe-device faulted: exception 6")
            && console.contains("restarting it (generation 1)"),
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

#[test]
fn device_server_takes_irq8_notifications_on_qemu_svm() {
    let target = &targets(Emulator::Qemu, &[], &[MmuMode::Nested])[0];
    check(&boot_once(system(), target, Duration::from_secs(120)).expect("QEMU runs"));
}

#[test]
fn device_server_takes_irq8_notifications_on_bochs_vmx() {
    let target = &targets(Emulator::Bochs, &[Arch::Vmx], &[MmuMode::Nested])[0];
    check(&boot_once(system(), target, Duration::from_secs(400)).expect("Bochs runs"));
}
