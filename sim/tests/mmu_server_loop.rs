//! The mmu-server's library loop on the simulated platform: an access
//! outside guest RAM becomes the exit the vmm-server emulates (an SVM
//! nested page fault or a VMX EPT violation), with the paging to pass on.

use ipc_proto::exit::{svm_exit, vmx_exit};
use ipc_proto::{ExitRecord, VcpuArch, ABI_VERSION};
use mmu_server::server::{answer, Reply};
use mmu_server::{GuestCtl, Mmu, MmuConfig, MmuMode};
use sim::{Sim, SimConfig};

fn nested(arch: VcpuArch, code: u64, info1: u64) -> Option<Reply> {
    let mut sim = Sim::new(SimConfig::default());
    let cfg = MmuConfig {
        mode: MmuMode::Nested,
        ..MmuConfig::default()
    };
    let mut mmu = Mmu::new(cfg, SimConfig::default().ram_bytes);
    mmu.start(&mut sim, GuestCtl::RESET).unwrap();
    assert!(mmu.nested_root().is_some(), "the first resume names it");
    let rec = ExitRecord {
        abi_version: ABI_VERSION,
        arch: arch as u32,
        exit_code: code,
        exit_info1: info1,
        exit_info2: 0xfee0_0030,
        ..Default::default()
    };
    answer(&mut mmu, &mut sim, &rec).ok()
}

#[test]
fn a_device_access_is_forwarded_as_the_vmm_servers_exit() {
    // SVM NPF, a write (error code W).
    match nested(VcpuArch::Svm, svm_exit::NPF, 1 << 1 | 1 << 32) {
        Some(Reply::Forward { exit, resume }) => {
            assert_eq!(
                (exit.exit_code, exit.exit_info1, exit.exit_info2),
                (svm_exit::NPF, 2, 0xfee0_0030)
            );
            assert_eq!(resume.abi_version, ABI_VERSION);
        }
        other => panic!("{other:?}"),
    }
    // VMX EPT violation, a read: qualification bit 0.
    match nested(VcpuArch::Vmx, vmx_exit::EPT_VIOLATION, 1) {
        Some(Reply::Forward { exit, .. }) => {
            assert_eq!(
                (exit.exit_code, exit.exit_info1),
                (vmx_exit::EPT_VIOLATION, 1)
            );
        }
        other => panic!("{other:?}"),
    }
}
