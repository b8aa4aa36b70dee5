//! End-to-end: the nic-driver server drives the machine's NE2000 (QEMU's
//! `ne2k_isa` behind its user-mode network, restricted to the machine, as
//! `splitvisor run --nic user` attaches it): it reads the card's station
//! address, sends a DHCPDISCOVER and prints QEMU's DHCPOFFER, next to the
//! `hello` guest on the PC and on the ISA board, on QEMU TCG with
//! emulated SVM and nested paging.
//!
//! Needs QEMU, gcc and binutils (`scripts/install-deps`).

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
    args.extend(splitvisor::nic::qemu_args());
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
        "nic: NE2000 at 0x300 irq 9, mac 52:54:00:12:34:56",
        "nic: dhcp offer 10.0.2.15 from 10.0.2.2",
        "hello from the guest",
    ] {
        assert!(has(line), "{line}:\n{text}\n{report:?}");
    }
    assert!(!text.contains("nic: panic"), "{text}");
}
