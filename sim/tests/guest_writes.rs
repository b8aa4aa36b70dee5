//! Shadow coherence when something other than the guest's CPU writes a
//! guest page table: the vmm-server's emulated `rep insb` (or a device
//! server's READ) writes guest RAM through its window, past the shadow
//! MMU's write protection. The writer records the frames in its
//! guest-writes channel page (`ipc_proto::guest_writes`, the code the
//! ring-3 servers run) and signals; the mmu-server, at its notification
//! exit, resyncs them (`mmu_server::server::resync`), so the guest sees
//! the new mapping after it flushes its TLB.

use ipc_proto::guest_writes::GuestWritesPage;
use ipc_proto::{Resume, ResumeFlags, ABI_VERSION};
use mmu_server::regs::{cr0, cr4, efer};
use mmu_server::server::{resync, Reply};
use mmu_server::walk::{pte, Access};
use mmu_server::{GuestCtl, GuestMemory, MmuConfig, PagingMode};
use sim::guest::GuestTables;
use sim::{Machine, Outcome, SimConfig};

const URW: u64 = pte::P | pte::RW | pte::US;

/// A long-mode guest mapping 0x40_0000 to frame 0x40_0000; the shadow
/// holds the translation once it was used. Returns the machine, the PTE's
/// guest-physical address and CR3.
fn world() -> (Machine, u64, u64) {
    let mut m = Machine::new(
        SimConfig::default(),
        MmuConfig {
            decode_assists: true,
            ..MmuConfig::default()
        },
    );
    let mut gt = GuestTables::new(PagingMode::Long, 0x10_0000, 0x20_0000);
    let cr3 = gt.new_space(&mut m.sim);
    gt.map(&mut m.sim, cr3, 0x40_0000, 1, 0x40_0000, URW, URW);
    m.start(GuestCtl {
        cr0: cr0::PE | cr0::PG | cr0::WP | cr0::ET,
        cr3,
        cr4: cr4::PAE,
        efer: efer::LME | efer::LMA | efer::NXE,
        pdptes: [0; 4],
    })
    .unwrap();
    assert_eq!(
        m.access(0x40_0000, Access::read(true)),
        Outcome::Ok(0x40_0000)
    );
    let pte = gt.entry(&mut m.sim, cr3, 0x40_0000, 1, None).unwrap().gpa;
    (m, pte, cr3)
}

/// The vmm-server's `rep insb` of 8 bytes from a port onto the live PTE:
/// the bytes land in guest RAM through the server's window (not through
/// the guest's CPU, so no write-protection fault), and the window
/// records the frame in the channel page.
fn rep_insb_onto_the_pte(m: &mut Machine, pte: u64, page: &mut GuestWritesPage) {
    let bytes = (0x70_0000 | URW).to_le_bytes();
    for (i, b) in bytes.iter().enumerate() {
        m.sim.write_phys(pte + i as u64, &[*b]).unwrap();
        page.record(pte + i as u64, 1);
    }
}

#[test]
fn an_emulated_rep_insb_onto_a_live_pte_is_seen_after_the_resync() {
    let (mut m, pte, cr3) = world();
    let mut page = GuestWritesPage::default();
    rep_insb_onto_the_pte(&mut m, pte, &mut page);
    assert_eq!(page.count, 1, "one frame, recorded once");
    // The mmu-server's notification exit: drain the page, resync.
    let mut frames = Vec::new();
    let all = page.drain(|f| frames.push(f));
    assert!(!all && page.is_empty());
    let before = Resume {
        abi_version: ABI_VERSION,
        ..Default::default()
    };
    let reply = resync(&mut m.mmu, &mut m.sim, &frames, all, before).unwrap();
    let Reply::Run(r) = reply else {
        panic!("a notification reruns the guest: {reply:?}")
    };
    assert_eq!(
        r.flags & !(ResumeFlags::SET_PAGING | ResumeFlags::FLUSH_NON_GLOBAL).bits(),
        0,
        "only paging is added to the resume"
    );
    // The guest reloads CR3 (a full TLB flush) and uses the address.
    assert_eq!(m.mov_to_cr(3, cr3), Outcome::Done);
    assert_eq!(
        m.access(0x40_0000, Access::read(true)),
        Outcome::Ok(0x70_0000)
    );
}

/// Without the notification the shadow, a cache that survives CR3
/// loads, keeps the old translation: what the fix is for.
#[test]
fn without_the_resync_the_shadow_is_stale() {
    let (mut m, pte, cr3) = world();
    let mut page = GuestWritesPage::default();
    rep_insb_onto_the_pte(&mut m, pte, &mut page);
    assert_eq!(m.mov_to_cr(3, cr3), Outcome::Done);
    assert_eq!(
        m.access(0x40_0000, Access::read(true)),
        Outcome::Ok(0x40_0000),
        "stale: the guest's PTE says 0x70_0000"
    );
}

#[test]
fn an_overflowed_page_resyncs_all_of_ram() {
    let (mut m, pte, cr3) = world();
    let mut page = GuestWritesPage::default();
    rep_insb_onto_the_pte(&mut m, pte, &mut page);
    page.overflow = 1;
    page.count = 0;
    let mut frames = Vec::new();
    let all = page.drain(|f| frames.push(f));
    assert!(all && frames.is_empty());
    resync(&mut m.mmu, &mut m.sim, &frames, all, Resume::default()).unwrap();
    assert_eq!(m.mov_to_cr(3, cr3), Outcome::Done);
    assert_eq!(
        m.access(0x40_0000, Access::read(true)),
        Outcome::Ok(0x70_0000)
    );
}
