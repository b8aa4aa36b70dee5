//! Nested paging (NPT): the mmu-server installs the guest-physical map
//! once and shadows nothing; the simulated hardware walks the guest's own
//! tables through the nested tables. Every access ends as on the
//! reference CPU, and guest memory (A/D bits included) ends the same.

mod common;

use common::*;
use mmu_server::regs::{cr0, cr4, efer};
use mmu_server::walk::Access;
use mmu_server::{MmuConfig, MmuMode};
use proptest::prelude::*;
use sim::{Machine, Outcome, SimConfig};

#[derive(Clone, Debug)]
enum NOp {
    Read(u16, u16, bool),
    Fetch(u16, u16, bool),
    Write(u16, u16, bool, u64),
    Edit(u16, Mutation),
    Switch(u8),
    ToggleWp,
    TogglePge,
}

fn nop() -> impl Strategy<Value = NOp> {
    prop_oneof![
        (any::<u16>(), any::<u16>(), any::<bool>()).prop_map(|(a, b, u)| NOp::Read(a, b, u)),
        (any::<u16>(), any::<u16>(), any::<bool>()).prop_map(|(a, b, u)| NOp::Fetch(a, b, u)),
        (any::<u16>(), any::<u16>(), any::<bool>(), any::<u64>())
            .prop_map(|(a, b, u, v)| NOp::Write(a, b, u, v)),
        (
            any::<u16>(),
            prop_oneof![
                any::<u8>().prop_map(Mutation::Flip),
                any::<u16>().prop_map(Mutation::Repoint)
            ]
        )
            .prop_map(|(e, m)| NOp::Edit(e, m)),
        any::<u8>().prop_map(NOp::Switch),
        Just(NOp::ToggleWp),
        Just(NOp::TogglePge),
    ]
}

/// The world of `start` and `seed` in a machine with nested paging, started,
/// and the reference CPU beside it on a copy of its memory. `on_walk`: the
/// CPU reads PAE PDPTEs on each walk (AMD with nested paging) instead of
/// holding them in registers loaded by MOV CR3.
fn start_nested(
    start: Start,
    seed: u64,
    on_walk: bool,
) -> Result<(World, Machine, Reference), String> {
    let mut w = build_with(start, seed, false);
    w.cpu.pdptes_on_walk = on_walk;
    let mut m = Machine::new(
        SimConfig {
            ram_bytes: RAM,
            ..SimConfig::default()
        },
        MmuConfig {
            mode: MmuMode::Nested,
            cpu: w.cpu,
            ..MmuConfig::default()
        },
    );
    m.sim.ram.copy_from_slice(&w.mem);
    m.start(w.ctl)?;
    let reference = Reference {
        mem: Ram(w.mem.clone()),
        ctl: m.ctl(),
        cpu: w.cpu,
        code: None,
    };
    Ok((w, m, reference))
}

/// `on_walk`: the CPU reads PAE PDPTEs on each walk (AMD with nested
/// paging) instead of holding them in registers loaded by MOV CR3.
fn run(start: Start, seed: u64, ops: &[NOp], on_walk: bool) -> Result<(), String> {
    let (w, mut m, mut reference) = start_nested(start, seed, on_walk)?;
    for (step, op) in ops.iter().enumerate() {
        let la = |a: u16, b: u16| {
            if a.is_multiple_of(3) {
                w.kernel_la(w.tables[a as usize % w.tables.len()]) + u64::from(b) % 4096
            } else {
                w.user[a as usize % w.user.len()] + u64::from(b) % 4096
            }
        };
        let size = if reference.ctl.efer & efer::LMA != 0 {
            8
        } else {
            4
        };
        let (got, want) = match *op {
            NOp::Read(a, b, u) => (
                m.access(la(a, b), Access::read(u)),
                reference.access(la(a, b), Access::read(u)),
            ),
            NOp::Fetch(a, b, u) => (
                m.access(la(a, b), Access::fetch(u)),
                reference.access(la(a, b), Access::fetch(u)),
            ),
            NOp::Write(a, b, u, v) => {
                let x = la(a, b) & !(size - 1);
                (m.store(x, v, size, u), reference.store(x, v, size, u))
            }
            NOp::Edit(e, mu) => {
                let (gpa, new) = edit_target(&w, &reference.mem.0, e, mu);
                let x = w.kernel_la(gpa);
                let es = w.entry_size();
                let new = if es == 8 && size == 4 {
                    new & 0xffff_ffff
                } else {
                    new
                };
                (
                    m.store(x, new, es.min(size), false),
                    reference.store(x, new, es.min(size), false),
                )
            }
            NOp::Switch(i) => {
                let cr3 = w.cr3s[i as usize % w.cr3s.len()];
                (m.mov_to_cr(3, cr3), reference.mov_to_cr(3, cr3))
            }
            NOp::ToggleWp => {
                let v = reference.ctl.cr0 ^ cr0::WP;
                (m.mov_to_cr(0, v), reference.mov_to_cr(0, v))
            }
            NOp::TogglePge => {
                let v = reference.ctl.cr4 ^ cr4::PGE;
                (m.mov_to_cr(4, v), reference.mov_to_cr(4, v))
            }
        };
        if got != want {
            return Err(format!(
                "{start:?} seed {seed:#x} step {step} {op:?}: nested {got:?}, reference {want:?}"
            ));
        }
        if let Outcome::Failed(e) = got {
            return Err(e);
        }
    }
    if m.sim.ram != reference.mem.0 {
        return Err(format!("{start:?} seed {seed:#x}: guest memory differs"));
    }
    let s = m.mmu.stats();
    if s.shadow_faults != 0 || s.tables_live == 0 {
        return Err(format!("nested mode shadowed something: {s}"));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn nested_paging_matches_the_reference(
        start in 0usize..6,
        seed in any::<u64>(),
        ops in proptest::collection::vec(nop(), 1..80),
    ) {
        if let Err(e) = run(Start::ALL[start], seed, &ops, false) {
            prop_assert!(false, "{}", e);
        }
    }

    /// The same with the PDPTEs read on each walk (AMD NPT): edits of a
    /// PDPT take effect at once, reserved bits fault on the access.
    #[test]
    fn nested_paging_without_pdpte_registers_matches_the_reference(
        start in prop_oneof![Just(Start::Pae), Just(Start::PaeOff)],
        seed in any::<u64>(),
        ops in proptest::collection::vec(nop(), 1..80),
    ) {
        if let Err(e) = run(start, seed, &ops, true) {
            prop_assert!(false, "{}", e);
        }
    }
}

/// Regression: a reserved bit in a present PAE PDPTE under AMD nested
/// paging is no #GP at MOV CR3 but a #PF with P and RSVD on the access
/// (APM vol. 2, 15.25: the guest's PDPEs are read on demand by the walk);
/// with PDPTE registers (Intel; shadow paging) the MOV CR3 takes #GP.
#[test]
fn pae_pdpte_with_a_reserved_bit_under_npt_faults_on_the_access() {
    let (w, mut m, mut reference) = start_nested(Start::Pae, 7, true).unwrap();
    let pdpt = w.ctl.cr3 & 0xffff_ffe0;
    let kernel_quarter = (w.kernel_la(pdpt) >> 30) & 3;
    let user = *w
        .user
        .iter()
        .find(|la| (*la >> 30) & 3 != kernel_quarter)
        .expect("a user page outside the kernel's gigabyte");
    let gpa = pdpt + 8 * ((user >> 30) & 3);
    let old = u64::from_le_bytes(w.mem[gpa as usize..gpa as usize + 8].try_into().unwrap());
    assert!(old & 1 != 0, "the user page's PDPTE is present");
    let bad = (old | 1 << 1) & 0xffff_ffff;
    let x = w.kernel_la(gpa);
    assert_eq!(m.store(x, bad, 4, false), Outcome::Stored);
    assert_eq!(reference.store(x, bad, 4, false), Outcome::Stored);
    let want = Outcome::PageFault {
        error_code: mmu_server::walk::pf::P | mmu_server::walk::pf::RSVD,
        cr2: user,
    };
    assert_eq!(m.access(user, Access::read(false)), want);
    assert_eq!(reference.access(user, Access::read(false)), want);
    assert_eq!(m.mov_to_cr(3, w.ctl.cr3), Outcome::Done);
    assert_eq!(reference.mov_to_cr(3, w.ctl.cr3), Outcome::Done);
    assert_eq!(m.access(user, Access::read(false)), want);
    // With PDPTE registers the same MOV CR3 is a #GP.
    reference.cpu.pdptes_on_walk = false;
    assert_eq!(
        reference.mov_to_cr(3, w.ctl.cr3),
        Outcome::GeneralProtection
    );
}
