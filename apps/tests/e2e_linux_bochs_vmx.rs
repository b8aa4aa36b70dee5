//! End-to-end: Debian's stock x86-64 kernel with the busybox initramfs
//! under splitvisor on Bochs with emulated Intel VMX (`corei7_skylake_x`,
//! EPT and unrestricted guest), on the default PC board (`console=ttyS0`
//! alone; the kernel powers off through ACPI S5), through `splitvisor run
//! --linux --emulator bochs --arch vmx`: boot, the MMU workload (see
//! `e2e_linux_qemu_svm.rs`), status 0. About two minutes on a 2.6 GHz EPYC host (Bochs 2.7 at its
//! default 100 M instructions per emulated second); the 686-pae kernel with
//! shadow paging on VMX is an `--ignored` test (about 3 minutes). Run only
//! these with
//!
//! ```sh
//! cargo test -p splitvisor --test e2e_linux_bochs_vmx -- --nocapture
//! ```

mod common;

use splitvisor::linux::Flavour;

/// Linux also takes the XSAVE the VM offers (x87, SSE, AVX; XSAVEC, so the
/// compacted format): CPUID 0xD's sizes agree with its own sums, or it
/// warns "XSAVE consistency problem" and falls back to FXSAVE.
#[test]
fn debian_amd64_runs_the_workload_on_bochs_vmx_with_ept() {
    let run = common::boot_linux(
        Flavour::Amd64,
        "npt",
        &["--emulator", "bochs", "--arch", "vmx"],
        1500,
    );
    let xstate = "x86/fpu: Enabled xstate features 0x7, context size is 832 bytes, using 'compacted' format.";
    assert!(run.stdout.contains(xstate), "no `{xstate}`\n{run}");
    assert!(!run.stdout.contains("XSAVE consistency problem"), "{run}");
}

/// Shadow paging on VMX with a 32-bit PAE kernel: about 3 minutes, so not
/// in CI's run; run it with `cargo test -p splitvisor --test
/// e2e_linux_bochs_vmx -- --ignored`.
#[test]
#[ignore = "about 3 minutes; run with --ignored"]
fn debian_686_pae_runs_the_workload_on_bochs_vmx_with_shadow_paging() {
    common::boot_linux(
        Flavour::I686Pae,
        "shadow",
        &["--emulator", "bochs", "--arch", "vmx"],
        3000,
    );
}
