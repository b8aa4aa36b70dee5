//! End-to-end: the disk-driver server serves block requests over a
//! channel. A test client (`disk-driver/src/bin/disk-client.rs`, never in
//! a normal image) asks INFO, writes two sectors from an odd guest-physical
//! address, flushes, reads them back elsewhere in guest RAM, and sends
//! requests the server must refuse; the sectors it wrote are in the image
//! file afterwards. Next to the `hello` guest, on QEMU TCG with emulated
//! SVM and nested paging, with the image as QEMU's IDE disk as `splitvisor
//! run --disk` attaches it; and the same under shadow paging, where the
//! disk-driver reports each READ's buffer to the mmu-server over its
//! guest-writes channel (`ipc_proto::guest_writes`).
//!
//! Needs QEMU, gcc and binutils (`scripts/install-deps`).

mod common;

use common::disk::{DiskClient, Scratch};
use ipc_proto::manifest::MmuMode;
use splitvisor::run::DEFAULT_CPU;

#[test]
fn disk_driver_serves_a_client_over_a_channel_on_qemu_svm_npt() {
    serves(MmuMode::Nested, DEFAULT_CPU, "npt");
}

#[test]
fn disk_driver_serves_a_client_over_a_channel_on_qemu_svm_shadow() {
    serves(MmuMode::Shadow, "EPYC,+svm,-npt", "shadow");
}

fn serves(mmu: MmuMode, cpu: &str, how: &str) {
    let dir = Scratch::new(&format!("disk-channel-{how}"));
    let mut client = DiskClient::new(&dir);
    client.system.mmu = mmu;
    let (text, report) = client.run(cpu, splitvisor::e2e::TIMEOUT);
    eprintln!("{text}");
    let has = |l: &str| text.lines().any(|x| x == l);
    for line in [
        "disk: QEMU HARDDISK, 2048 sectors (1 MiB), write cache flush supported",
        "disk-client: INFO: status 0, 2048 sectors, flags 0x1",
        "disk: PIO 32-bit, 16 sectors per interrupt",
        "disk-client: WRITE 0, FLUSH 0, READ 0: the sectors read back as written",
        "disk-client: READ_LIST of 3 pieces 0: the sectors read back as written; a list 512 bytes short 7 (want 7)",
        "disk-client: refusals: past the end 3, outside guest RAM 4, unknown op 2 (want 3 4 2)",
        "hello from the guest",
    ] {
        assert!(has(line), "{line}:\n{text}\n{report:?}");
    }
    // Sectors 1 and 2 of the file hold what the client wrote.
    let bytes = std::fs::read(&client.img).unwrap();
    for i in 0..1024 {
        assert_eq!(bytes[512 + i], (i * 7 % 251) as u8, "byte {i} of sector 1");
    }
}
