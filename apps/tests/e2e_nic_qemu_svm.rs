//! End-to-end: the nic-driver server drives the machine's NE2000 (QEMU's
//! `ne2k_isa` behind its user-mode network, restricted to the machine, as
//! `splitvisor run --nic user` attaches it): it reads the card's station
//! address, sends a DHCPDISCOVER and prints QEMU's DHCPOFFER, next to the
//! `hello` guest on the PC and on the ISA board, on QEMU TCG with
//! emulated SVM and nested paging.
//!
//! The same through `splitvisor run --nic user` on QEMU and on Bochs with
//! VMX and EPT.
//!
//! Needs QEMU, Bochs, gcc and binutils (`scripts/install-deps`).

use splitvisor::run::{qemu_args, run_emulator, Capture, DEFAULT_CPU, DEFAULT_EMULATOR};

#[test]
fn nic_driver_gets_a_dhcp_offer_on_qemu_svm_npt() {
    offer(images::SystemSpec::new("hello"));
}

/// The card is the machine's, not the guest's: the ISA board (no PCI bus
/// in the guest) changes nothing for it.
#[test]
fn nic_driver_gets_a_dhcp_offer_beside_the_isa_board_on_qemu_svm_npt() {
    offer(images::SystemSpec {
        board: ipc_proto::manifest::Board::Isa,
        ..images::SystemSpec::new("hello")
    });
}

fn offer(mut system: images::SystemSpec) {
    splitvisor::nic::add_nic_server(&mut system).expect("the nic-driver builds");
    assert!(splitvisor::nic::wants_nic(&system));
    let opts = splitvisor::e2e::options(system, DEFAULT_CPU);
    let image = images::build_system_spec(&opts.system).expect("the image builds");
    let mut args = qemu_args(&opts, &image);
    args.extend(splitvisor::nic::qemu_args(&[]));
    let console = Capture::default();
    let report = run_emulator(
        DEFAULT_EMULATOR,
        &args,
        splitvisor::e2e::TIMEOUT,
        Box::new(console.clone()),
    )
    .expect("QEMU starts (scripts/install-deps installs it)");
    let text = String::from_utf8_lossy(&console.0.lock().unwrap()).into_owned();
    eprintln!("{text}");
    let has = |l: &str| text.lines().any(|x| x == l);
    for line in [
        // QEMU's first NIC's address, and slirp's DHCP server.
        "nic: NE2000 at 0x300 irq 5, mac 52:54:00:12:34:56",
        "nic: dhcp offer 10.0.2.15 from 10.0.2.2",
        "hello from the guest",
    ] {
        assert!(has(line), "{line}:\n{text}\n{report:?}");
    }
    assert!(!text.contains("nic: panic"), "{text}");
}

/// `splitvisor run ARGS --nic user`: exit status, stdout, stderr.
fn run_cli(args: &[&str]) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_splitvisor"))
        .arg("run")
        .args(args)
        .args(["--nic", "user", "--timeout", "240"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("the splitvisor binary starts");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The same through `splitvisor run --nic user`, on Bochs with VMX and
/// EPT: Bochs's `ne2k:` line and its slirp with `restricted = 1`. Bochs's
/// slirp answers after the card reports the discover sent, so the offer
/// comes through an IRQ 5 notification there.
#[test]
fn run_nic_user_gets_a_dhcp_offer_on_qemu_svm_and_bochs_vmx() {
    for emulator in ["qemu-system-x86_64", "bochs"] {
        let (code, out, err) = run_cli(&["--guest", "hello", "--emulator", emulator]);
        let has = |l: &str| out.lines().any(|x| x == l);
        assert_eq!(code, Some(0), "{emulator}: {out}\n{err}");
        for line in [
            "nic: NE2000 at 0x300 irq 5, mac 52:54:00:12:34:56",
            "nic: dhcp offer 10.0.2.15 from 10.0.2.2",
            "hello from the guest",
        ] {
            assert!(has(line), "{emulator}: {line}:\n{out}\n{err}");
        }
    }
}

#[test]
fn run_nic_refuses_sel4_and_other_networks_before_booting() {
    // seL4's root task places the vmm-server and mmu-server only: its
    // rights check refuses the nic-driver by name before Bochs starts.
    const NOT_ON_SEL4: &str = "the task nic-driver cannot be placed on seL4";
    let (code, _, err) = run_cli(&["--guest", "hello", "--platform", "sel4"]);
    assert_eq!(code, Some(splitvisor::EXIT_CANNOT_RUN), "{err}");
    assert!(err.contains(NOT_ON_SEL4), "{err}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_splitvisor"))
        .args(["run", "--guest", "hello", "--nic", "tap"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the only one is `user`"));
    // `--net`: forward rules to the host's loopback only; the PC board
    // (the guest's virtio-net is a PCI function); not on seL4.
    for (args, says) in [
        (
            &["--net", "user,hostfwd=tcp:0.0.0.0:2222-:22"][..],
            "the host side is always 127.0.0.1",
        ),
        (
            &[
                "--net",
                "user,guestfwd=tcp:10.0.2.100:80-cmd:nc example.org 80",
            ],
            "the host side is always 127.0.0.1",
        ),
        (&["--net", "tap"], "is not a network: `user`"),
        (&["--net", "switch"], "--net switch joins several VMs"),
        (
            &["--net", "user", "--board", "isa"],
            "--net needs the PC board",
        ),
        (&["--net", "user", "--platform", "sel4"], NOT_ON_SEL4),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_splitvisor"))
            .args(["run", "--guest", "hello"])
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
        assert_ne!(out.status.code(), Some(0), "{args:?}: {err}");
    }
}
