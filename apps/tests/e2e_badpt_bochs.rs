//! The bad-page-table guests (`images/guests/badpt*.S`, see
//! `mmu-server/tests/e2e_badpt_qemu_svm.rs`) on Bochs, a second hardware
//! reference beside QEMU's SVM, with Intel VMX (`corei7_skylake_x`) and
//! with AMD SVM (`ryzen`): with nested paging (EPT or NPT: Bochs walks the
//! guest's tables) and with the mmu-server's shadow tables. Each run ends
//! with the guest's status 0 (every error code, CR2 and value as the
//! manuals say, checked by the guest itself), Bochs gives reserved-bit
//! faults with P (no QEMU erratum line), and the nested and shadow runs of
//! an arch print the same lines.
//!
//! Bochs 2.7's VMRUN does not load CR2 from the VMCB
//! (`SvmEnterLoadCheckGuestState` reads it and drops it); the stub writes
//! the VMCB's CR2 into CR2 before each VMRUN, without which every #PF a
//! hypervisor injects there would show a stale CR2.
//!
//! These need bochs and the ISO tools (`scripts/install-deps`).

mod common;

use common::Run;

/// Generous: the first run also builds the stub and the servers.
const TIMEOUT_SECS: u64 = 180;

fn bochs(arch: &str, guest: &str, mmu: &str) -> Run {
    common::splitvisor_run(
        &[
            "--emulator",
            "bochs",
            "--arch",
            arch,
            "--guest",
            guest,
            "--mmu",
            mmu,
        ],
        TIMEOUT_SECS,
    )
}

/// The guest's lines: the cases, the checksum and the summary.
fn guest_lines<'a>(r: &'a Run, guest: &str) -> Vec<&'a str> {
    let prefix = format!("{guest}: ");
    r.stdout
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter(|l| l.contains(" cr2=") || l.contains(" value=") || l.contains(" checksum "))
        .collect()
}

fn nested_and_shadow_agree(arch: &str, guest: &str, cases: usize) {
    let done = format!("{guest}: done, {cases} cases, 0 mismatches");
    let mut runs = Vec::new();
    for mmu in ["npt", "shadow"] {
        let r = bochs(arch, guest, mmu);
        assert_eq!(r.code, Some(0), "{guest} ({arch}, {mmu}):\n{r}");
        assert!(
            r.stdout.lines().any(|l| l == done),
            "{guest} ({arch}, {mmu}):\n{r}"
        );
        assert!(
            !r.stdout.contains("erratum"),
            "{guest} ({arch}, {mmu}):\n{r}"
        );
        runs.push(r);
    }
    assert_eq!(
        guest_lines(&runs[0], guest),
        guest_lines(&runs[1], guest),
        "{guest} ({arch}): nested and shadow paging differ\n--- npt:\n{}\n--- shadow:\n{}",
        runs[0],
        runs[1]
    );
}

#[test]
fn badpt64_on_bochs_vmx_ept_and_shadow_agree() {
    nested_and_shadow_agree("vmx", "badpt64", 48);
}

#[test]
fn badptpae_on_bochs_vmx_ept_and_shadow_agree() {
    nested_and_shadow_agree("vmx", "badptpae", 40);
}

#[test]
fn badpt32_on_bochs_vmx_ept_and_shadow_agree() {
    nested_and_shadow_agree("vmx", "badpt32", 25);
}

#[test]
fn badpt64_on_bochs_svm_npt_and_shadow_agree() {
    nested_and_shadow_agree("svm", "badpt64", 48);
}

#[test]
fn badptpae_on_bochs_svm_npt_and_shadow_agree() {
    nested_and_shadow_agree("svm", "badptpae", 40);
}

#[test]
fn badpt32_on_bochs_svm_npt_and_shadow_agree() {
    nested_and_shadow_agree("svm", "badpt32", 25);
}

/// CR3 beyond RAM: #PF, #DF, triple fault, with nested and with shadow
/// paging, on both arches.
#[test]
fn badcr3_on_bochs_triple_faults() {
    for arch in ["vmx", "svm"] {
        for (mmu, triple) in [
            ("npt", "[vmm] the guest triple-faulted"),
            (
                "shadow",
                "[mmu] page fault while delivering a double fault: triple fault",
            ),
        ] {
            let r = bochs(arch, "badcr3", mmu);
            assert_eq!(r.code, Some(101), "badcr3 ({arch}, {mmu}):\n{r}");
            assert!(
                r.stdout.contains(triple) && !r.stdout.contains("should not"),
                "badcr3 ({arch}, {mmu}):\n{r}"
            );
        }
    }
}
