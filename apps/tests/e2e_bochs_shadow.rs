//! End-to-end under Bochs: shadow paging on Intel VMX (`corei7_skylake_x`,
//! no EPT): the mmu-server's shadow tables in CR3, the guest's #PF, CR and
//! INVLPG exits and its EFER accesses decoded from VMX records by the
//! mmu-server. Booted through `splitvisor run --emulator bochs --arch vmx
//! --mmu shadow`, as a user would. Needs what `e2e_bochs.rs` needs
//! (`scripts/install-deps`); each run takes a few seconds.

mod common;

use common::Run;

/// Generous: the first run also builds the image, and several of these may
/// run at once on two cores.
const TIMEOUT_SECS: u64 = 180;

fn bochs_vmx_shadow(guest: &str) -> Run {
    common::splitvisor_run(
        &[
            "--emulator",
            "bochs",
            "--arch",
            "vmx",
            "--mmu",
            "shadow",
            "--guest",
            guest,
        ],
        TIMEOUT_SECS,
    )
}

/// The guest passes its own checks under VMX shadow paging, and the
/// mmu-server built shadow tables (misses) and took page faults.
fn assert_passes(guest: &str) {
    let r = bochs_vmx_shadow(guest);
    assert_eq!(r.code, Some(0), "{r}");
    assert!(
        r.stdout
            .lines()
            .any(|l| l.starts_with("[stub] vmx: shadow paging, guest RAM 16 MiB,")),
        "no VMX shadow-paging banner\n{r}"
    );
    let passed = format!("{guest}: all checks passed");
    assert!(r.stdout.lines().any(|l| l == passed), "no `{passed}`\n{r}");
    let mmu = r
        .stdout
        .lines()
        .find(|l| l.starts_with("[vmm] mmu: faults="))
        .unwrap_or_else(|| panic!("no mmu statistics line\n{r}"));
    assert!(
        !mmu.starts_with("[vmm] mmu: faults=0 "),
        "no #PF exits: {mmu}"
    );
    assert!(!mmu.contains(" misses=0 "), "no shadow table built: {mmu}");
    assert!(
        r.stdout
            .lines()
            .any(|l| l == "[stub] vm stopped: guest status 0"),
        "{r}"
    );
    assert!(
        r.stderr.contains("splitvisor: guest exited with status 0"),
        "{r}"
    );
}

#[test]
fn paging32_guest_on_bochs_vmx_with_shadow_paging_passes() {
    assert_passes("paging32");
}

#[test]
fn pae_guest_on_bochs_vmx_with_shadow_paging_passes() {
    assert_passes("pae");
}

/// EFER.LME through WRMSR to the mmu-server, then the IA-32e mode entry control.
#[test]
fn longmode_guest_on_bochs_vmx_with_shadow_paging_passes() {
    assert_passes("longmode");
}

/// CR3 loads (exits on VMX) switch between cached shadow roots.
#[test]
fn cr3switch64_guest_on_bochs_vmx_with_shadow_paging_passes() {
    assert_passes("cr3switch64");
}

/// Without EPT there is no unrestricted guest: VMX cannot run real mode,
/// and the stub says so before the guest starts.
#[test]
fn realmode_guest_on_bochs_vmx_with_shadow_paging_is_refused_clearly() {
    let r = bochs_vmx_shadow("realmode");
    assert_eq!(r.code, Some(102), "{r}");
    assert!(
        r.stdout
            .contains("[stub] cannot run: real mode under shadow paging needs SVM"),
        "{r}"
    );
}
