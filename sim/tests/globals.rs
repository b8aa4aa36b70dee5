//! Global pages: a CR3 load keeps global translations in the TLB (the
//! guest promised they are the same in every address space), INVLPG and a
//! CR4.PGE toggle drop them, and without CR4.PGE the G bit means nothing.
//! Observed by giving two address spaces *different* global mappings of
//! one address, which the architecture allows to go stale.

use mmu_server::regs::{cr0, cr4, efer};
use mmu_server::walk::{pte, Access};
use mmu_server::{GuestCtl, MmuConfig, PagingMode};
use sim::guest::GuestTables;
use sim::{Machine, Outcome, SimConfig};

const LA: u64 = 0x40_0000;

fn two_spaces(pge: bool, global_pages: bool) -> (Machine, u64, u64) {
    let mut m = Machine::new(
        SimConfig::default(),
        MmuConfig {
            decode_assists: true,
            global_pages,
            ..MmuConfig::default()
        },
    );
    let mut gt = GuestTables::new(PagingMode::Long, 0x10_0000, 0x20_0000);
    let a = gt.new_space(&mut m.sim);
    let b = gt.new_space(&mut m.sim);
    let f = pte::P | pte::RW | pte::A | pte::D | pte::G;
    gt.map(&mut m.sim, a, LA, 1, 0x50_0000, f, pte::P | pte::RW);
    gt.map(&mut m.sim, b, LA, 1, 0x60_0000, f, pte::P | pte::RW);
    let ctl = GuestCtl {
        cr0: cr0::PE | cr0::PG | cr0::WP | cr0::ET,
        cr3: a,
        cr4: cr4::PAE | if pge { cr4::PGE } else { 0 },
        efer: efer::LME | efer::LMA,
        pdptes: [0; 4],
    };
    m.start(ctl).unwrap();
    (m, a, b)
}

#[test]
fn global_translations_survive_cr3_loads_until_invlpg() {
    let (mut m, _, b) = two_spaces(true, true);
    assert_eq!(m.access(LA, Access::read(false)), Outcome::Ok(0x50_0000));
    assert_eq!(m.mov_to_cr(3, b), Outcome::Done);
    assert_eq!(
        m.access(LA, Access::read(false)),
        Outcome::Ok(0x50_0000),
        "still the global translation"
    );
    assert_eq!(m.invlpg(LA), Outcome::Done);
    assert_eq!(m.access(LA, Access::read(false)), Outcome::Ok(0x60_0000));
}

#[test]
fn toggling_pge_drops_global_translations() {
    let (mut m, _, b) = two_spaces(true, true);
    assert_eq!(m.access(LA, Access::read(false)), Outcome::Ok(0x50_0000));
    assert_eq!(m.mov_to_cr(3, b), Outcome::Done);
    assert_eq!(m.mov_to_cr(4, cr4::PAE), Outcome::Done);
    assert_eq!(m.mov_to_cr(4, cr4::PAE | cr4::PGE), Outcome::Done);
    assert_eq!(m.access(LA, Access::read(false)), Outcome::Ok(0x60_0000));
}

#[test]
fn without_pge_or_with_global_pages_off_a_cr3_load_flushes_everything() {
    for (pge, global_pages) in [(false, true), (true, false)] {
        let (mut m, _, b) = two_spaces(pge, global_pages);
        assert_eq!(m.access(LA, Access::read(false)), Outcome::Ok(0x50_0000));
        assert_eq!(m.mov_to_cr(3, b), Outcome::Done);
        assert_eq!(
            m.access(LA, Access::read(false)),
            Outcome::Ok(0x60_0000),
            "pge {pge} global_pages {global_pages}"
        );
    }
}

/// The mmu-server asks the stub to keep global translations
/// (`FLUSH_NON_GLOBAL`) only when the shadow root switches for a guest
/// MOV to CR3 alone: a CR4.PGE or CR0.WP change flushes everything.
#[test]
fn only_a_cr3_load_keeps_global_translations() {
    let (mut m, a, b) = two_spaces(true, true);
    let before = m.sim.counters;
    assert_eq!(m.mov_to_cr(3, b), Outcome::Done);
    assert_eq!(m.sim.counters.non_global_loads, before.non_global_loads + 1);
    let before = m.sim.counters;
    assert_eq!(m.mov_to_cr(4, cr4::PAE), Outcome::Done);
    assert_eq!(m.mov_to_cr(4, cr4::PAE | cr4::PGE), Outcome::Done);
    assert_eq!(m.mov_to_cr(0, cr0::PE | cr0::PG | cr0::ET), Outcome::Done);
    assert!(m.sim.counters.loads > before.loads);
    assert_eq!(m.sim.counters.non_global_loads, before.non_global_loads);
    assert_eq!(m.mov_to_cr(3, a), Outcome::Done);
    assert_eq!(m.sim.counters.non_global_loads, before.non_global_loads + 1);
}

/// Without global pages in the shadow tables there is nothing to keep:
/// every load flushes everything.
#[test]
fn without_global_pages_every_load_flushes_everything() {
    let (mut m, _, b) = two_spaces(true, false);
    assert_eq!(m.mov_to_cr(3, b), Outcome::Done);
    assert_eq!(m.sim.counters.non_global_loads, 0);
}
