//! The mmu-server's behaviours one at a time, on the simulated platform.

use ipc_proto::exit::svm_exit;
use ipc_proto::{ExitRecord, ResumeFlags, Segment, VcpuArch};
use mmu_server::regs::{cr0, cr4, efer};
use mmu_server::walk::{pf, pte, Access};
use mmu_server::{Action, Failure, GuestCtl, MmuConfig, MmuMode, PagingMode};
use sim::guest::GuestTables;
use sim::{Machine, Outcome, SimConfig};

const URW: u64 = pte::P | pte::RW | pte::US;
const SRW: u64 = pte::P | pte::RW;
const KERNEL: u64 = 0xffff_8000_0000_0000;

fn long_ctl(cr3: u64) -> GuestCtl {
    GuestCtl {
        cr0: cr0::PE | cr0::PG | cr0::WP | cr0::ET,
        cr3,
        cr4: cr4::PAE,
        efer: efer::LME | efer::LMA | efer::NXE,
        pdptes: [0; 4],
    }
}

/// A long-mode guest: `n` address spaces mapping user page i of space s
/// at 0x40_0000 + i * 4096 to its own frame, and a shared kernel direct
/// map of the first 8 MiB at `KERNEL` (2 MiB pages).
fn long_world(mmu: MmuConfig, n: usize, pages: u64) -> (Machine, GuestTables, Vec<u64>) {
    let mut m = Machine::new(SimConfig::default(), mmu);
    let mut gt = GuestTables::new(PagingMode::Long, 0x10_0000, 0x20_0000);
    let mut cr3s = Vec::new();
    let mut frame = 0x40_0000;
    for s in 0..n {
        let cr3 = gt.new_space(&mut m.sim);
        if s == 0 {
            for a in (0..8u64 << 20).step_by(2 << 20) {
                gt.map(
                    &mut m.sim,
                    cr3,
                    KERNEL + a,
                    2,
                    a,
                    SRW | pte::D | pte::A,
                    SRW,
                );
            }
        } else {
            let mut e = [0u8; 8];
            use mmu_server::GuestMemory;
            m.sim.read_phys(cr3s[0] + 256 * 8, &mut e).unwrap();
            m.sim.write_phys(cr3 + 256 * 8, &e).unwrap();
        }
        for i in 0..pages {
            gt.map(&mut m.sim, cr3, 0x40_0000 + i * 4096, 1, frame, URW, URW);
            frame += 4096;
        }
        cr3s.push(cr3);
    }
    m.start(long_ctl(cr3s[0])).unwrap();
    (m, gt, cr3s)
}

/// Shadow paging with every write to a protected table emulated (the
/// scenarios below check the emulation and the shadow being current
/// without a flush); [`unsync`] turns unsync leaf tables on.
fn shadow() -> MmuConfig {
    MmuConfig {
        decode_assists: true,
        unsync: false,
        ..MmuConfig::default()
    }
}

/// Unsync on, from the first protected write to a leaf table.
fn unsync() -> MmuConfig {
    MmuConfig {
        unsync: true,
        unsync_after: 1,
        ..shadow()
    }
}

fn invlpg_exits(m: &Machine) -> bool {
    m.sim
        .paging()
        .is_some_and(|p| p.flags & ipc_proto::PagingState::INTERCEPT_INVLPG != 0)
}

#[test]
fn a_written_leaf_table_goes_unsync_until_invlpg_or_a_cr3_load() {
    let (mut m, mut gt, cr3s) = long_world(unsync(), 1, 2);
    let la = 0x40_0000;
    assert_eq!(m.access(la, Access::read(true)), Outcome::Ok(0x40_0000));
    assert_eq!(
        m.access(la + 0x1000, Access::read(true)),
        Outcome::Ok(0x40_1000)
    );
    assert!(!invlpg_exits(&m));
    let pte_gpa = gt.entry(&mut m.sim, cr3s[0], la, 1, None).unwrap().gpa;
    let pte2_gpa = pte_gpa + 8;
    let pt = pte_gpa >> 12;
    // The first write to the PT faults once: no emulation, the table goes
    // unsync, the guest's store runs natively, INVLPG starts to exit.
    assert_eq!(
        m.store(KERNEL + pte_gpa, 0x70_0000 | URW | pte::A, 8, false),
        Outcome::Stored
    );
    let s = m.mmu.stats();
    assert_eq!((s.wp_faults, s.emulated_writes, s.unsyncs), (1, 0, 1));
    assert!(m.mmu.cache().is_unsync(pt) && !m.mmu.cache().is_protected(pt));
    assert!(invlpg_exits(&m));
    // More writes to it cost nothing.
    assert_eq!(
        m.store(KERNEL + pte2_gpa, 0x71_0000 | URW | pte::A, 8, false),
        Outcome::Stored
    );
    assert_eq!(m.mmu.stats().wp_faults, 1);
    // Not flushed yet: the old translations may still be used, as a TLB
    // would; INVLPG (it exits now) syncs the table and write-protects it
    // again, and INVLPG runs natively again.
    assert_eq!(m.access(la, Access::read(true)), Outcome::Ok(0x40_0000));
    assert_eq!(m.invlpg(la), Outcome::Done);
    let s = m.mmu.stats();
    assert_eq!((s.invlpg, s.syncs), (1, 1));
    assert!(!m.mmu.cache().is_unsync(pt) && m.mmu.cache().is_protected(pt));
    assert!(!invlpg_exits(&m));
    assert_eq!(m.access(la, Access::read(true)), Outcome::Ok(0x70_0000));
    assert_eq!(
        m.access(la + 0x1000, Access::read(true)),
        Outcome::Ok(0x71_0000)
    );
    assert_eq!(m.invlpg(la), Outcome::Done);
    assert_eq!(m.mmu.stats().invlpg, 1);
    // A write goes unsync again, and a CR3 load syncs it too.
    assert_eq!(m.store(KERNEL + pte_gpa, 0, 8, false), Outcome::Stored);
    assert!(m.mmu.cache().is_unsync(pt) && invlpg_exits(&m));
    assert_eq!(m.mov_to_cr(3, cr3s[0]), Outcome::Done);
    let s = m.mmu.stats();
    assert_eq!((s.unsyncs, s.syncs), (2, 2));
    assert!(!m.mmu.cache().is_unsync(pt) && m.mmu.cache().is_protected(pt));
    assert!(!invlpg_exits(&m));
    assert_eq!(
        m.access(la, Access::read(true)),
        Outcome::PageFault {
            error_code: 4,
            cr2: la
        }
    );
    m.mmu.cache().check_invariants().unwrap();
}

#[test]
fn a_lone_pte_write_between_flushes_is_emulated() {
    let cfg = MmuConfig {
        unsync_after: 2,
        ..unsync()
    };
    let (mut m, mut gt, cr3s) = long_world(cfg, 1, 2);
    let la = 0x40_0000;
    assert_eq!(m.access(la, Access::read(true)), Outcome::Ok(0x40_0000));
    let pte_gpa = gt.entry(&mut m.sim, cr3s[0], la, 1, None).unwrap().gpa;
    for round in 0..2u64 {
        let before = m.mmu.stats();
        let new = (0x70_0000 + round * 0x1000) | URW | pte::A;
        // The first write since the last flush is emulated: the shadow
        // follows at once and INVLPG keeps running natively.
        assert_eq!(m.store(KERNEL + pte_gpa, new, 8, false), Outcome::Stored);
        let s = m.mmu.stats();
        assert_eq!(s.emulated_writes - before.emulated_writes, 1);
        assert_eq!(s.unsyncs, before.unsyncs);
        assert!(!invlpg_exits(&m));
        assert_eq!(
            m.access(la, Access::read(true)),
            Outcome::Ok(0x70_0000 + round * 0x1000)
        );
        // The second makes the table unsync.
        assert_eq!(m.store(KERNEL + pte_gpa + 8, 0, 8, false), Outcome::Stored);
        assert_eq!(m.mmu.stats().unsyncs, before.unsyncs + 1);
        assert!(invlpg_exits(&m));
        // A CR3 load syncs it and starts counting again.
        assert_eq!(m.mov_to_cr(3, cr3s[0]), Outcome::Done);
        assert!(!invlpg_exits(&m));
    }
}

#[test]
fn non_leaf_tables_never_go_unsync() {
    let (mut m, mut gt, cr3s) = long_world(unsync(), 1, 2);
    let la = 0x40_0000;
    assert_eq!(m.access(la, Access::read(true)), Outcome::Ok(0x40_0000));
    // A PDE next to the one in use: the page directory stays protected
    // and the write is emulated.
    let pde_gpa = gt.entry(&mut m.sim, cr3s[0], la, 2, None).unwrap().gpa;
    assert_eq!(m.store(KERNEL + pde_gpa + 8, 0, 8, false), Outcome::Stored);
    let s = m.mmu.stats();
    assert_eq!((s.wp_faults, s.emulated_writes, s.unsyncs), (1, 1, 0));
    assert!(!invlpg_exits(&m));
}

#[test]
fn shadow_tables_survive_cr3_switches() {
    let (mut m, _, cr3s) = long_world(shadow(), 4, 8);
    for round in 0..3 {
        let before = m.mmu.stats();
        for &cr3 in &cr3s {
            assert_eq!(m.mov_to_cr(3, cr3), Outcome::Done);
            for i in 0..8 {
                assert!(matches!(
                    m.access(0x40_0000 + i * 4096, Access::read(true)),
                    Outcome::Ok(_)
                ));
            }
        }
        let after = m.mmu.stats();
        if round > 0 {
            assert_eq!(
                after.shadow_faults, before.shadow_faults,
                "round {round}: no faults once warm"
            );
            assert_eq!(
                after.misses, before.misses,
                "round {round}: nothing rebuilt"
            );
            assert_eq!(after.root_hits - before.root_hits, 4);
        }
    }
}

#[test]
fn baseline_drops_every_table_on_every_cr3_write() {
    let cfg = MmuConfig {
        mode: MmuMode::Baseline,
        ..shadow()
    };
    let (mut m, _, cr3s) = long_world(cfg, 2, 8);
    for _ in 0..3 {
        for &cr3 in &cr3s {
            let before = m.mmu.stats();
            assert_eq!(m.mov_to_cr(3, cr3), Outcome::Done);
            assert_eq!(m.mmu.cache().live(), 1, "only the new root");
            for i in 0..8 {
                assert!(matches!(
                    m.access(0x40_0000 + i * 4096, Access::read(true)),
                    Outcome::Ok(_)
                ));
            }
            assert_eq!(m.mmu.stats().shadow_faults - before.shadow_faults, 8);
        }
    }
}

#[test]
fn guest_pte_writes_are_emulated_and_the_shadow_follows_at_once() {
    let (mut m, mut gt, cr3s) = long_world(shadow(), 1, 2);
    let la = 0x40_0000;
    assert_eq!(m.access(la, Access::read(true)), Outcome::Ok(0x40_0000));
    let pte_gpa = gt.entry(&mut m.sim, cr3s[0], la, 1, None).unwrap().gpa;
    // The kernel rewrites the PTE through its direct map.
    let before = m.mmu.stats();
    assert_eq!(
        m.store(KERNEL + pte_gpa, 0x70_0000 | URW, 8, false),
        Outcome::Stored
    );
    let after = m.mmu.stats();
    assert_eq!(after.wp_faults - before.wp_faults, 1);
    assert_eq!(after.emulated_writes - before.emulated_writes, 1);
    // Without any INVLPG the next access sees the new mapping (the
    // architecture allows either; the shadow is always current).
    assert_eq!(m.access(la, Access::read(true)), Outcome::Ok(0x70_0000));
    // The guest saw A set by the walk, then its own value, then A again.
    use mmu_server::GuestMemory;
    let mut b = [0u8; 8];
    m.sim.read_phys(pte_gpa, &mut b).unwrap();
    assert_eq!(u64::from_le_bytes(b), 0x70_0000 | URW | pte::A);
    // A write to a clean page faults once in the shadow to set D.
    assert_eq!(m.store(la, 7, 8, true), Outcome::Stored);
    m.sim.read_phys(pte_gpa, &mut b).unwrap();
    assert_eq!(u64::from_le_bytes(b), 0x70_0000 | URW | pte::A | pte::D);
}

#[test]
fn a_frame_written_like_data_loses_its_protection() {
    let cfg = MmuConfig {
        flood_threshold: 3,
        ..shadow()
    };
    let (mut m, mut gt, cr3s) = long_world(cfg, 1, 2);
    let la = 0x40_0000;
    assert!(matches!(m.access(la, Access::read(true)), Outcome::Ok(_)));
    let pt = gt.entry(&mut m.sim, cr3s[0], la, 1, None).unwrap().gpa & !0xfff;
    // Write the unused half of the page table as if it were data.
    for i in 0..10u64 {
        assert_eq!(
            m.store(KERNEL + pt + 0x800 + i * 8, i, 8, false),
            Outcome::Stored
        );
    }
    let s = m.mmu.stats();
    assert_eq!(
        s.emulated_writes, 3,
        "three emulated writes, then unprotected"
    );
    assert_eq!(s.unprotects, 1);
    // Using it as a page table again protects it again.
    assert!(matches!(m.access(la, Access::read(true)), Outcome::Ok(_)));
    assert_eq!(m.store(KERNEL + pt + 0x900, 1, 8, false), Outcome::Stored);
    assert_eq!(m.mmu.stats().emulated_writes, 4);
}

fn pf_record(m: &Machine, la: u64, ec: u32, insn: &[u8]) -> ExitRecord {
    let mut rec = ExitRecord {
        abi_version: ipc_proto::ABI_VERSION,
        arch: VcpuArch::Svm as u32,
        exit_code: svm_exit::EXCP_BASE + 14,
        exit_info1: u64::from(ec),
        exit_info2: la,
        cs: Segment {
            attrib: Segment::ATTR_L | 0x9b,
            ..Default::default()
        },
        regs: m.regs,
        ..Default::default()
    };
    rec.regs.rip = 0x7000;
    rec.insn_len = insn.len() as u8;
    rec.insn_bytes[..insn.len()].copy_from_slice(insn);
    rec
}

#[test]
fn instructions_it_does_not_emulate_unprotect_the_frame_and_retry() {
    let (mut m, mut gt, cr3s) = long_world(shadow(), 1, 2);
    let la = 0x40_0000;
    assert!(matches!(m.access(la, Access::read(true)), Outcome::Ok(_)));
    let pt = gt.entry(&mut m.sim, cr3s[0], la, 1, None).unwrap().gpa & !0xfff;
    // Make the kernel's direct-map page of the PT present in the shadow (read).
    assert!(matches!(
        m.access(KERNEL + pt, Access::read(false)),
        Outcome::Ok(_)
    ));
    assert!(m.mmu.cache().is_protected(pt >> 12));
    // rep stosq into the page table: not emulated.
    let rec = pf_record(&m, KERNEL + pt + 0x800, pf::P | pf::W, &[0xf3, 0x48, 0xab]);
    match m.mmu.handle_exit(&mut m.sim, &rec) {
        Action::Resume(r) => {
            assert!(!ResumeFlags::from_bits_truncate(r.flags).contains(ResumeFlags::SET_RIP));
        }
        other => panic!("{other:?}"),
    }
    assert!(!m.mmu.cache().is_protected(pt >> 12));
    // The retried instruction now writes without exiting.
    assert_eq!(
        m.sim
            .translate(KERNEL + pt + 0x800, Access::write(false))
            .map(|g| g >> 12),
        Ok(pt >> 12)
    );
}

#[test]
fn an_event_frame_pushed_on_a_protected_table_is_not_taken_for_the_instruction() {
    // Regression: an external interrupt injected at a store instruction
    // faulted pushing its frame on a stack page that was also a guest page
    // table. The mmu-server emulated the store at RIP instead: the value
    // went to the frame's address, RIP moved on and the interrupt was lost
    // (Debian's 686-pae kernel then deadlocked at i8042 probing).
    let (mut m, mut gt, cr3s) = long_world(shadow(), 1, 2);
    let la = 0x40_0000;
    assert!(matches!(m.access(la, Access::read(true)), Outcome::Ok(_)));
    let pt = gt.entry(&mut m.sim, cr3s[0], la, 1, None).unwrap().gpa & !0xfff;
    assert!(matches!(
        m.access(KERNEL + pt, Access::read(false)),
        Outcome::Ok(_)
    ));
    assert!(m.mmu.cache().is_protected(pt >> 12));
    use mmu_server::GuestMemory;
    let mut before = [0u8; 8];
    m.sim.read_phys(pt + 0xff8, &mut before).unwrap();
    // mov [rax], rbx: a store the emulator knows, at RIP.
    let mut rec = pf_record(&m, KERNEL + pt + 0xff8, pf::P | pf::W, &[0x48, 0x89, 0x18]);
    rec.regs.rax = KERNEL + pt + 0x800;
    rec.regs.rbx = 0xdead_beef;
    rec.exit_int_info = (1 << 31) | 0x30;
    let emulated = m.mmu.stats().emulated_writes;
    match m.mmu.handle_exit(&mut m.sim, &rec) {
        Action::Resume(r) => {
            let flags = ResumeFlags::from_bits_truncate(r.flags);
            assert!(
                !flags.contains(ResumeFlags::SET_RIP),
                "the instruction has not run"
            );
            assert!(
                flags.contains(ResumeFlags::INJECT_EVENT),
                "the interrupt is delivered again"
            );
            assert_eq!((r.event.vector, r.event.kind), (0x30, 0));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(m.mmu.stats().emulated_writes, emulated);
    let mut after = [0u8; 8];
    m.sim.read_phys(pt + 0xff8, &mut after).unwrap();
    assert_eq!(after, before, "nothing was stored in the frame's place");
    // The frame lost its protection, so the delivery now pushes natively.
    assert!(!m.mmu.cache().is_protected(pt >> 12));
}

#[test]
fn an_unemulated_write_to_a_table_on_its_own_path_fails_clearly() {
    let (mut m, _, cr3s) = long_world(shadow(), 1, 1);
    // The PML4 is on every walk; rep stosq into it cannot be retried.
    let pml4 = cr3s[0];
    assert!(matches!(
        m.access(KERNEL + pml4, Access::read(false)),
        Outcome::Ok(_)
    ));
    let rec = pf_record(&m, KERNEL + pml4 + 8, pf::P | pf::W, &[0xf3, 0x48, 0xab]);
    match m.mmu.handle_exit(&mut m.sim, &rec) {
        Action::Fail(f @ Failure::UnsupportedPageTableWrite { .. }) => {
            assert!(f.to_string().contains("Stos"), "{f}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn rep_stos_into_a_table_on_its_own_path_is_emulated_page_by_page() {
    use mmu_server::walk::GuestMemory;
    let (mut m, _, cr3s) = long_world(shadow(), 1, 1);
    // Linux's reset_early_page_tables: `rep stosl` over its live PML4
    // (every entry but the last), a table its own translation uses.
    let pml4 = cr3s[0];
    assert!(matches!(
        m.access(KERNEL + pml4, Access::read(false)),
        Outcome::Ok(_)
    ));
    // A plain STOSD (no REP) into entry 0 moves RDI only and steps over
    // the instruction.
    let mut rec = pf_record(&m, KERNEL + pml4, pf::P | pf::W, &[0xab]);
    rec.regs.rdi = KERNEL + pml4;
    rec.regs.rcx = 7;
    match m.mmu.handle_exit(&mut m.sim, &rec) {
        Action::Resume(r) => {
            assert!(
                ResumeFlags::from_bits_truncate(r.flags).contains(ResumeFlags::SET_RIP),
                "{r:?} protected={}",
                m.mmu.cache().is_protected(pml4 >> 12)
            );
            assert_eq!(
                (r.regs.rip, r.regs.rdi, r.regs.rcx),
                (0x7001, KERNEL + pml4 + 4, 7)
            );
        }
        other => panic!("{other:?}"),
    }
    // Then REP STOSD from entry 256 (the kernel's map, cleared by it).
    let la = KERNEL + pml4 + 0x800;
    let mut rec = pf_record(&m, la, pf::P | pf::W, &[0xf3, 0xab]);
    rec.regs.rdi = la;
    rec.regs.rcx = 0x400; // 0x1000 bytes: 0x800 in this page, 0x800 beyond
    rec.regs.rax = 0;
    let before = m.mmu.stats().emulated_writes;
    let r = match m.mmu.handle_exit(&mut m.sim, &rec) {
        Action::Resume(r) => r,
        other => panic!("{other:?}"),
    };
    assert!(!ResumeFlags::from_bits_truncate(r.flags).contains(ResumeFlags::SET_RIP));
    assert_eq!((r.regs.rdi, r.regs.rcx), (la + 0x800, 0x200));
    assert_eq!(m.mmu.stats().emulated_writes, before + 1);
    let mut b = [0xffu8; 8];
    assert!(m.sim.read_phys(pml4 + 0xff8, &mut b).is_ok());
    assert_eq!(b, [0; 8], "the page's last entry was cleared");
    assert!(m.mmu.cache().is_protected(pml4 >> 12), "still a table");
}

#[test]
fn eviction_keeps_the_cache_within_budget_and_correct() {
    let cfg = MmuConfig {
        max_tables: 8,
        ..shadow()
    };
    let (mut m, _, cr3s) = long_world(cfg, 6, 4);
    for _ in 0..3 {
        for &cr3 in &cr3s {
            assert_eq!(m.mov_to_cr(3, cr3), Outcome::Done);
            for i in 0..4 {
                assert!(matches!(
                    m.access(0x40_0000 + i * 4096, Access::read(true)),
                    Outcome::Ok(_)
                ));
            }
            assert!(m.mmu.cache().live() <= 8);
            m.mmu.cache().check_invariants().unwrap();
        }
    }
    assert!(m.mmu.stats().evictions > 10);
    assert!(m.sim.live_tables() <= 8);
}

#[test]
fn the_stub_running_out_of_tables_is_survived() {
    let sim_cfg = SimConfig {
        max_tables: 10,
        ..SimConfig::default()
    };
    let mut m = Machine::new(
        sim_cfg,
        MmuConfig {
            max_tables: 1000,
            ..shadow()
        },
    );
    let mut gt = GuestTables::new(PagingMode::Long, 0x10_0000, 0x20_0000);
    let cr3 = gt.new_space(&mut m.sim);
    for i in 0..64u64 {
        gt.map(&mut m.sim, cr3, i << 21, 1, 0x40_0000 + i * 4096, URW, URW);
    }
    m.start(long_ctl(cr3)).unwrap();
    for i in 0..64u64 {
        assert_eq!(
            m.access(i << 21, Access::read(true)),
            Outcome::Ok(0x40_0000 + i * 4096)
        );
    }
    assert!(m.mmu.stats().evictions > 0);
}

#[test]
fn from_real_mode_to_long_mode() {
    let mut m = Machine::new(SimConfig::default(), shadow());
    let mut gt = GuestTables::new(PagingMode::Long, 0x10_0000, 0x20_0000);
    let cr3 = gt.new_space(&mut m.sim);
    // Identity-map the first 2 MiB, and 0x4000_0000 → 0x30_0000.
    gt.map(&mut m.sim, cr3, 0, 2, 0, SRW | pte::A | pte::D, SRW);
    gt.map(&mut m.sim, cr3, 0x4000_0000, 1, 0x30_0000, SRW, SRW);
    m.start(GuestCtl::RESET).unwrap();
    assert_eq!(m.mode(), PagingMode::Off);
    assert_eq!(
        m.sim.paging().unwrap().cr0 & cr0::PG,
        cr0::PG,
        "paged real mode"
    );
    assert_eq!(m.access(0x1234, Access::write(false)), Outcome::Ok(0x1234));
    assert_eq!(
        m.access(0x90_0000, Access::read(false)),
        Outcome::Mmio(0x90_0000)
    );
    assert_eq!(m.mov_to_cr(0, cr0::PE | cr0::ET), Outcome::Done);
    assert_eq!(m.mov_to_cr(4, cr4::PAE), Outcome::Done);
    assert_eq!(m.mov_to_cr(3, cr3), Outcome::Done);
    assert_eq!(m.write_efer(efer::LME), Outcome::Done);
    assert_eq!(m.mov_to_cr(0, cr0::PE | cr0::PG | cr0::ET), Outcome::Done);
    assert_eq!(m.mode(), PagingMode::Long);
    let ps = m.sim.paging().unwrap();
    assert_eq!(ps.efer & (efer::LME | efer::LMA), efer::LME | efer::LMA);
    assert_eq!(
        m.access(0x4000_0010, Access::read(false)),
        Outcome::Ok(0x30_0010)
    );
    assert_eq!(m.read_cr(0), Outcome::Value(cr0::PE | cr0::PG | cr0::ET));
    assert_eq!(m.read_cr(3), Outcome::Value(cr3));
    // CR0.WP is clear for the guest, forced on for the hardware.
    assert_eq!(m.sim.paging().unwrap().cr0 & cr0::WP, cr0::WP);
    assert_eq!(m.store(0x4000_0000, 1, 8, false), Outcome::Stored);
}

#[test]
fn bad_control_register_writes_inject_gp() {
    let (mut m, _, _) = long_world(shadow(), 1, 1);
    assert_eq!(
        m.mov_to_cr(4, cr4::PAE | (1 << 20)),
        Outcome::GeneralProtection,
        "SMEP"
    );
    assert_eq!(
        m.mov_to_cr(4, 0),
        Outcome::GeneralProtection,
        "PAE off in long mode"
    );
    assert_eq!(
        m.mov_to_cr(3, 1 << 50),
        Outcome::GeneralProtection,
        "beyond MAXPHYADDR"
    );
    assert_eq!(
        m.mov_to_cr(0, cr0::PE),
        Outcome::GeneralProtection,
        "paging off from 64-bit code"
    );
    assert_eq!(
        m.write_efer(efer::NXE),
        Outcome::GeneralProtection,
        "LME with paging on"
    );
    assert_eq!(
        m.write_efer(efer::LME | efer::SVME),
        Outcome::GeneralProtection,
        "no nested SVM"
    );
}

#[test]
fn pae_mov_cr3_checks_pdptes_and_only_reloads_on_cr3_load() {
    let mut m = Machine::new(SimConfig::default(), shadow());
    let mut gt = GuestTables::new(PagingMode::Pae, 0x10_0000, 0x20_0000);
    let cr3 = gt.new_space(&mut m.sim);
    gt.map(&mut m.sim, cr3, 0x40_0000, 1, 0x50_0000, URW, URW);
    let ctl = GuestCtl {
        cr0: cr0::PE | cr0::PG | cr0::WP | cr0::ET,
        cr3,
        cr4: cr4::PAE,
        ..Default::default()
    };
    m.start(ctl).unwrap();
    assert_eq!(
        m.access(0x40_0000, Access::read(true)),
        Outcome::Ok(0x50_0000)
    );
    // Clear PDPTE 0 in memory: the registers still hold it.
    use mmu_server::GuestMemory;
    m.sim.write_phys(cr3, &[0u8; 8]).unwrap();
    assert_eq!(
        m.access(0x40_1000, Access::read(true)),
        Outcome::PageFault {
            error_code: pf::U,
            cr2: 0x40_1000
        }
    );
    assert_eq!(
        m.access(0x40_0000, Access::read(true)),
        Outcome::Ok(0x50_0000)
    );
    assert_eq!(m.mov_to_cr(3, cr3), Outcome::Done);
    assert_eq!(
        m.access(0x40_0000, Access::read(true)),
        Outcome::PageFault {
            error_code: pf::U,
            cr2: 0x40_0000
        }
    );
    // A PDPTE with a reserved bit (R/W) makes MOV CR3 fault and keeps the old CR3.
    m.sim
        .write_phys(cr3 + 8, &(0x20_0000u64 | 3).to_le_bytes())
        .unwrap();
    assert_eq!(m.mov_to_cr(3, cr3), Outcome::GeneralProtection);
}

#[test]
fn a_page_fault_while_delivering_a_page_fault_is_a_double_fault() {
    let (mut m, _, _) = long_world(shadow(), 1, 1);
    let mut rec = pf_record(&m, 0x1234_5000, 0, &[]);
    rec.exit_int_info = (1 << 31) | (1 << 11) | (3 << 8) | 14;
    match m.mmu.handle_exit(&mut m.sim, &rec) {
        Action::Resume(r) => {
            assert_eq!(
                (r.event.vector, r.event.kind, r.event.error_code),
                (8, 3, 0)
            );
        }
        other => panic!("{other:?}"),
    }
    rec.exit_int_info = (1 << 31) | (1 << 11) | (3 << 8) | 8;
    assert_eq!(
        m.mmu.handle_exit(&mut m.sim, &rec),
        Action::Fail(Failure::TripleFault)
    );
}

#[test]
fn a_fixed_fault_reinjects_the_interrupted_event() {
    let (mut m, _, _) = long_world(shadow(), 1, 1);
    // An external interrupt (vector 0x30) was being delivered when the
    // shadow fault hit (the IDT page, say).
    let mut rec = pf_record(&m, KERNEL + 0x2000, 0, &[]);
    rec.exit_int_info = (1 << 31) | 0x30;
    match m.mmu.handle_exit(&mut m.sim, &rec) {
        Action::Resume(r) => {
            assert!(ResumeFlags::from_bits_truncate(r.flags).contains(ResumeFlags::INJECT_EVENT));
            assert_eq!((r.event.vector, r.event.kind), (0x30, 0));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn accesses_outside_guest_ram_go_to_the_vmm_server() {
    let mut m = Machine::new(SimConfig::default(), shadow());
    let mut gt = GuestTables::new(PagingMode::Long, 0x10_0000, 0x20_0000);
    let cr3 = gt.new_space(&mut m.sim);
    gt.map(&mut m.sim, cr3, 0x40_0000, 1, 0xfee0_0000, SRW, SRW);
    m.start(long_ctl(cr3)).unwrap();
    assert_eq!(
        m.access(0x40_0020, Access::write(false)),
        Outcome::Mmio(0xfee0_0020)
    );
    assert_eq!(m.mmu.stats().mmio, 1);
}

#[test]
fn garbage_tables_fault_and_never_hang() {
    let mut m = Machine::new(SimConfig::default(), shadow());
    use mmu_server::GuestMemory;
    let pml4 = 0x10_0000u64;
    // PML4[0] points to itself (a loop), PML4[1] to a table outside RAM,
    // and PML4[2] has a reserved bit.
    m.sim.write_phys(pml4, &(pml4 | URW).to_le_bytes()).unwrap();
    m.sim
        .write_phys(pml4 + 8, &(0x80_0000_0000u64 | URW).to_le_bytes())
        .unwrap();
    m.sim
        .write_phys(pml4 + 16, &(0x20_0000 | URW | (1 << 45)).to_le_bytes())
        .unwrap();
    m.start(long_ctl(pml4)).unwrap();
    // The self-map: la 0 walks PML4 four times and lands on the PML4 itself.
    assert_eq!(m.access(0x10, Access::read(true)), Outcome::Ok(pml4 + 0x10));
    // Writing it through the loop is a page-table write: emulated.
    assert_eq!(m.store(0x18, 0x30_0000 | URW, 8, true), Outcome::Stored);
    assert_eq!(m.mmu.stats().emulated_writes, 1);
    assert_eq!(
        m.access(1 << 39, Access::read(true)),
        Outcome::PageFault {
            error_code: pf::U,
            cr2: 1 << 39
        }
    );
    assert_eq!(
        m.access(2 << 39, Access::write(false)),
        Outcome::PageFault {
            error_code: pf::P | pf::RSVD | pf::W,
            cr2: 2 << 39
        }
    );
    assert!(m.sim.violation.is_none());
}

#[test]
fn cr0_wp_clear_lets_the_kernel_write_read_only_pages() {
    let mut m = Machine::new(SimConfig::default(), shadow());
    let mut gt = GuestTables::new(PagingMode::Long, 0x10_0000, 0x20_0000);
    let cr3 = gt.new_space(&mut m.sim);
    gt.map(
        &mut m.sim,
        cr3,
        0x40_0000,
        1,
        0x50_0000,
        pte::P | pte::US,
        URW,
    );
    let mut ctl = long_ctl(cr3);
    ctl.cr0 &= !cr0::WP;
    m.start(ctl).unwrap();
    assert_eq!(
        m.store(0x40_0000, 5, 8, false),
        Outcome::Stored,
        "supervisor write, WP = 0"
    );
    assert_eq!(
        m.access(0x40_0000, Access::read(true)),
        Outcome::Ok(0x50_0000),
        "user read"
    );
    assert_eq!(
        m.store(0x40_0008, 5, 8, true),
        Outcome::PageFault {
            error_code: pf::P | pf::W | pf::U,
            cr2: 0x40_0008
        },
        "user write"
    );
    assert_eq!(
        m.store(0x40_0010, 6, 8, false),
        Outcome::Stored,
        "supervisor again"
    );
    assert_eq!(
        m.sim.paging().unwrap().cr0 & cr0::WP,
        cr0::WP,
        "hardware keeps WP"
    );
}

#[test]
fn thirty_two_bit_tables_are_shadowed_by_quadrants() {
    let mut m = Machine::new(SimConfig::default(), shadow());
    let mut gt = GuestTables::new(PagingMode::Bits32, 0x10_0000, 0x20_0000);
    let cr3 = gt.new_space(&mut m.sim);
    // One guest page table (4 MiB) whose two halves land in two shadow PTs,
    // and a 4 MiB page split into two direct tables.
    gt.map(&mut m.sim, cr3, 0x40_0000, 1, 0x50_0000, URW, URW);
    gt.map(&mut m.sim, cr3, 0x60_0000, 1, 0x51_0000, URW, URW);
    gt.map(&mut m.sim, cr3, 0xc040_0000, 2, 0x40_0000, SRW, SRW);
    let ctl = GuestCtl {
        cr0: cr0::PE | cr0::PG | cr0::WP | cr0::ET,
        cr3,
        cr4: cr4::PSE,
        ..Default::default()
    };
    m.start(ctl).unwrap();
    assert_eq!(
        m.access(0x40_0000, Access::read(true)),
        Outcome::Ok(0x50_0000)
    );
    assert_eq!(
        m.access(0x60_0000, Access::read(true)),
        Outcome::Ok(0x51_0000)
    );
    assert_eq!(
        m.access(0xc060_0004, Access::read(false)),
        Outcome::Ok(0x60_0004)
    );
    let keys: Vec<_> = (0..64)
        .filter_map(|h| m.mmu.cache().key_of(h))
        .map(|k| (k.role.kind, k.role.level, k.role.quadrant, k.gfn))
        .collect();
    use mmu_server::TableKind::*;
    assert!(keys.contains(&(Guest, 1, 0, 0x101)), "{keys:x?}");
    assert!(keys.contains(&(Guest, 1, 1, 0x101)), "{keys:x?}");
    assert!(keys.contains(&(Guest, 2, 0, 0x100)), "{keys:x?}");
    assert!(keys.contains(&(Guest, 2, 3, 0x100)), "{keys:x?}");
    assert!(keys.contains(&(Direct, 1, 0, 0x600)), "{keys:x?}");
    assert_eq!(m.sim.paging().unwrap().cr4 & cr4::PAE, cr4::PAE);
}

#[test]
fn exits_of_other_kinds_and_arches_are_refused() {
    let (mut m, _, _) = long_world(shadow(), 1, 1);
    let mut rec = pf_record(&m, 0, 0, &[]);
    rec.exit_code = svm_exit::HLT;
    assert_eq!(
        m.mmu.handle_exit(&mut m.sim, &rec),
        Action::Fail(Failure::NotAnMmuExit(svm_exit::HLT))
    );
    rec.arch = VcpuArch::Vmx as u32;
    rec.exit_code = 12; // VMX HLT
    assert_eq!(
        m.mmu.handle_exit(&mut m.sim, &rec),
        Action::Fail(Failure::NotAnMmuExit(12))
    );
    rec.arch = 99;
    assert_eq!(
        m.mmu.handle_exit(&mut m.sim, &rec),
        Action::Fail(Failure::UnsupportedArch(99))
    );
}

#[test]
fn atomic_pte_updates_are_emulated_with_their_register_effects() {
    let (mut m, mut gt, cr3s) = long_world(shadow(), 1, 1);
    let la = 0x40_0000;
    assert_eq!(m.access(la, Access::read(true)), Outcome::Ok(0x40_0000));
    let pte_gpa = gt.entry(&mut m.sim, cr3s[0], la, 1, None).unwrap().gpa;
    let old = 0x40_0000 | URW | pte::A;
    // lock cmpxchg [rdi], rbx with rax = the current PTE.
    m.regs.rax = old;
    m.regs.rbx = 0x70_0000 | URW;
    m.regs.rdi = KERNEL + pte_gpa;
    let rec = pf_record(
        &m,
        KERNEL + pte_gpa,
        pf::P | pf::W,
        &[0xf0, 0x48, 0x0f, 0xb1, 0x1f],
    );
    let Action::Resume(r) = m.mmu.handle_exit(&mut m.sim, &rec) else {
        panic!("not emulated")
    };
    assert_eq!(r.regs.rip, 0x7005);
    assert_ne!(r.regs.rflags & (1 << 6), 0, "ZF: exchanged");
    assert_eq!(m.access(la, Access::read(true)), Outcome::Ok(0x70_0000));
    // xchg [rdi], rbx: the old entry comes back in RBX, the page goes away.
    m.regs.rbx = 0;
    let rec = pf_record(&m, KERNEL + pte_gpa, pf::P | pf::W, &[0x48, 0x87, 0x1f]);
    let Action::Resume(r) = m.mmu.handle_exit(&mut m.sim, &rec) else {
        panic!("not emulated")
    };
    assert_eq!(r.regs.rbx & !0xfff, 0x70_0000);
    assert_eq!(
        m.access(la, Access::read(true)),
        Outcome::PageFault {
            error_code: pf::U,
            cr2: la
        }
    );
    // lock btr qword [rdi], 1 on a fresh PTE clears R/W; CF = the old bit.
    use mmu_server::GuestMemory;
    m.sim
        .write_phys(pte_gpa, &(0x40_0000 | URW | pte::A).to_le_bytes())
        .unwrap();
    assert!(matches!(m.store(la, 1, 8, true), Outcome::Stored));
    let rec = pf_record(
        &m,
        KERNEL + pte_gpa,
        pf::P | pf::W,
        &[0xf0, 0x48, 0x0f, 0xba, 0x37, 0x01],
    );
    let Action::Resume(r) = m.mmu.handle_exit(&mut m.sim, &rec) else {
        panic!("not emulated")
    };
    assert_eq!(r.regs.rflags & 1, 1);
    assert_eq!(
        m.store(la, 2, 8, true),
        Outcome::PageFault {
            error_code: pf::P | pf::W | pf::U,
            cr2: la
        },
        "the shadow dropped write access at once"
    );
}

#[test]
fn efer_msr_exits_are_handled() {
    let mut m = Machine::new(SimConfig::default(), shadow());
    m.start(GuestCtl {
        cr0: cr0::PE | cr0::ET,
        ..GuestCtl::RESET
    })
    .unwrap();
    use mmu_server::GuestMemory;
    // wrmsr; rdmsr at 0x7000 (fetched through the identity shadow).
    m.sim.write_phys(0x7000, &[0x0f, 0x30, 0x0f, 0x32]).unwrap();
    let mut rec = pf_record(&m, 0, 0, &[]);
    rec.cs = Segment {
        attrib: Segment::ATTR_DB | 0x9b,
        ..Default::default()
    };
    rec.exit_code = svm_exit::MSR;
    rec.exit_info1 = 1;
    rec.regs.rcx = 0xc000_0080;
    rec.regs.rax = efer::LME | efer::NXE;
    let Action::Resume(r) = m.mmu.handle_exit(&mut m.sim, &rec) else {
        panic!()
    };
    assert_eq!(r.regs.rip, 0x7002);
    assert_eq!(m.mmu.read_efer(), efer::LME | efer::NXE);
    assert_eq!(
        r.paging.efer & efer::LME,
        0,
        "no long mode in hardware before paging"
    );
    rec.exit_info1 = 0;
    rec.regs.rip = 0x7002;
    rec.regs.rax = 0;
    let Action::Resume(r) = m.mmu.handle_exit(&mut m.sim, &rec) else {
        panic!()
    };
    assert_eq!((r.regs.rax, r.regs.rip), (efer::LME | efer::NXE, 0x7004));
    rec.exit_info1 = 1;
    rec.regs.rip = 0x7000;
    rec.regs.rax = efer::SVME;
    let Action::Resume(r) = m.mmu.handle_exit(&mut m.sim, &rec) else {
        panic!()
    };
    assert_eq!(r.event.vector, 13);
    rec.regs.rcx = 0x10;
    assert_eq!(
        m.mmu.handle_exit(&mut m.sim, &rec),
        Action::Fail(Failure::NotAnMmuExit(svm_exit::MSR))
    );
}

/// A VMX record (exit reason, qualification, interruption information)
/// asks the mmu-server for exactly what the SVM record of the same event does.
#[test]
fn vmx_records_mean_what_svm_records_mean() {
    let mov_rax_cr3 = [0x0f, 0x20, 0xd8];
    for la in [0x40_0000u64, 0x7fff_0000] {
        let (mut a, _, _) = long_world(shadow(), 1, 1);
        let (mut b, _, _) = long_world(shadow(), 1, 1);
        let svm = pf_record(&a, la, 0, &[]);
        let mut vmx = pf_record(&b, la, 0, &[]);
        vmx.arch = VcpuArch::Vmx as u32;
        vmx.exit_code = 0;
        vmx.exit_info1 = la;
        vmx.exit_info2 = 0x8000_0b0e; // valid, hardware exception, error code, #PF; error code 0
        let (sa, va) = (
            a.mmu.handle_exit(&mut a.sim, &svm),
            b.mmu.handle_exit(&mut b.sim, &vmx),
        );
        assert_eq!(sa, va, "#PF at {la:#x}");
        // MOV RAX, CR3: SVM code 0x03 (decoded), VMX reason 28 with qualification.
        let mut svm = pf_record(&a, 0, 0, &mov_rax_cr3);
        svm.exit_code = 0x03;
        let mut vmx = pf_record(&b, 0, 0, &[]);
        vmx.arch = VcpuArch::Vmx as u32;
        vmx.exit_code = 28;
        vmx.exit_info1 = 3 | 1 << 4; // CR3, MOV from CR, RAX
        vmx.exit_info2 = 0;
        vmx.next_rip = 0x7003;
        assert_eq!(
            a.mmu.handle_exit(&mut a.sim, &svm),
            b.mmu.handle_exit(&mut b.sim, &vmx),
            "MOV RAX, CR3"
        );
    }
}

/// PTE prefetch: one fault on a page table's entry 0 fills the other
/// entries of its aligned group of 16 that a fault could fill — present,
/// accessed, valid, in RAM — and nothing else; each then behaves as the
/// architecture says: A clear faults (the walk sets A), A set and D clear
/// is read-only until the first write (which faults and sets D), A and D
/// set needs no fault, permissions and page-table frames as in a fill.
#[test]
fn prefetch_fills_accessed_neighbours_and_keeps_a_d_exact() {
    use mmu_server::GuestMemory;
    let cfg = MmuConfig {
        prefetch: 16,
        ..shadow()
    };
    let (mut m, mut gt, cr3s) = long_world(cfg, 1, 1);
    let base = 0x40_0000u64;
    let pt = gt.entry(&mut m.sim, cr3s[0], base, 1, None).unwrap().gpa & !0xfff;
    let a = pte::A;
    let d = pte::D;
    let frame = |i: u64| 0x60_0000 + i * 4096;
    // (flags, frame) of entries 0..16.
    let entries: [(u64, u64); 16] = [
        (URW | a, frame(0)),                  // 0: the faulting one
        (URW, frame(1)),                      // 1: A clear
        (URW | a, frame(2)),                  // 2: A set, D clear
        (URW | a | d, frame(3)),              // 3: A and D set
        (pte::P | pte::US | a | d, frame(4)), // 4: read-only
        (SRW | a | d, frame(5)),              // 5: supervisor
        (URW | a | d | pte::NX, frame(6)),    // 6: not executable
        (URW | a | d, pt),                    // 7: the page table itself
        (URW | a | d, 16 << 20),              // 8: beyond RAM (MMIO)
        (0, frame(9)),                        // 9: not present
        (URW | a | d | 1 << 45, frame(10)),   // 10: reserved bit
        (URW | a | d, frame(11)),
        (URW | a | d, frame(12)),
        (URW | a | d, frame(13)),
        (URW | a | d, frame(14)),
        (URW | a | d, frame(15)),
    ];
    for (i, &(flags, gpa)) in entries.iter().enumerate() {
        gt.write(&mut m.sim, pt + i as u64 * 8, gpa | flags);
    }
    let entry = |m: &mut Machine, i: u64| {
        let mut b = [0u8; 8];
        assert!(m.sim.read_phys(pt + i * 8, &mut b).is_ok());
        u64::from_le_bytes(b)
    };
    let la = |i: u64| base + i * 4096;
    let faults = |m: &Machine| m.mmu.stats().shadow_faults;

    assert_eq!(m.access(la(0), Access::read(true)), Outcome::Ok(frame(0)));
    let s = m.mmu.stats();
    assert_eq!(s.shadow_faults, 1);
    assert_eq!(s.prefetched, 11, "entries 2-7 and 11-15");
    m.mmu.cache().check_invariants().unwrap();

    // A and D set: reads and writes without a fault, the entry untouched.
    for i in [3, 11, 12, 13, 14, 15] {
        let f = faults(&m);
        assert_eq!(m.store(la(i), i, 8, true), Outcome::Stored);
        assert_eq!(m.access(la(i), Access::read(true)), Outcome::Ok(frame(i)));
        assert_eq!(faults(&m), f, "entry {i}");
        assert_eq!(entry(&mut m, i), frame(i) | URW | a | d);
    }
    // A set, D clear: read without a fault, the first write faults and
    // sets D, the next does not.
    let f = faults(&m);
    assert_eq!(m.access(la(2), Access::read(true)), Outcome::Ok(frame(2)));
    assert_eq!(faults(&m), f);
    assert_eq!(entry(&mut m, 2), frame(2) | URW | a);
    assert_eq!(m.store(la(2), 2, 8, true), Outcome::Stored);
    assert_eq!(faults(&m), f + 1);
    assert_eq!(entry(&mut m, 2), frame(2) | URW | a | d);
    assert_eq!(m.store(la(2), 2, 8, true), Outcome::Stored);
    assert_eq!(faults(&m), f + 1);
    // A clear: not prefetched; the access faults and the walk sets A.
    let f = faults(&m);
    assert_eq!(m.access(la(1), Access::read(true)), Outcome::Ok(frame(1)));
    assert_eq!(faults(&m), f + 1);
    assert_eq!(entry(&mut m, 1), frame(1) | URW | a);
    // Permissions as in a fill.
    let u = pf::U;
    assert_eq!(m.access(la(4), Access::read(true)), Outcome::Ok(frame(4)));
    assert!(matches!(
        m.store(la(4), 4, 8, true),
        Outcome::PageFault { error_code, .. } if error_code == pf::P | pf::W | u
    ));
    assert!(matches!(
        m.access(la(5), Access::read(true)),
        Outcome::PageFault { error_code, .. } if error_code == pf::P | u
    ));
    assert_eq!(m.access(la(5), Access::read(false)), Outcome::Ok(frame(5)));
    assert!(matches!(
        m.access(la(6), Access::fetch(true)),
        Outcome::PageFault { error_code, .. } if error_code == pf::P | u | pf::ID
    ));
    // The page table mapped by one of its own entries: read-only, and a
    // write is a write-protection fault, emulated.
    let f = faults(&m);
    assert_eq!(m.access(la(7), Access::read(true)), Outcome::Ok(pt));
    assert_eq!(faults(&m), f);
    let wp = m.mmu.stats().wp_faults;
    let e15 = entry(&mut m, 15);
    assert_eq!(m.store(la(7) + 15 * 8, e15, 8, true), Outcome::Stored);
    assert_eq!(m.mmu.stats().wp_faults, wp + 1);
    // Not prefetched: MMIO, not present, reserved bit.
    assert_eq!(m.access(la(8), Access::read(true)), Outcome::Mmio(16 << 20));
    assert!(matches!(
        m.access(la(9), Access::read(true)),
        Outcome::PageFault { error_code, .. } if error_code == u
    ));
    assert!(matches!(
        m.access(la(10), Access::read(true)),
        Outcome::PageFault { error_code, .. } if error_code == pf::P | u | pf::RSVD
    ));
    // The guest's A/D bits are exactly what the accesses made them.
    let want_ad = [
        a,
        a,
        a | d,
        a | d,
        a | d,
        a | d,
        a | d,
        a | d,
        a | d,
        0,
        a | d,
    ];
    for (i, &ad) in want_ad.iter().enumerate() {
        let (flags, gpa) = entries[i];
        let want = gpa | (flags & !(a | d)) | if flags & pte::P != 0 { ad } else { 0 };
        assert_eq!(entry(&mut m, i as u64), want, "entry {i}");
    }
    m.mmu.cache().check_invariants().unwrap();
}

/// The baseline is the 2006 MMU: no prefetch, whatever the config says.
#[test]
fn baseline_never_prefetches() {
    let cfg = MmuConfig {
        mode: MmuMode::Baseline,
        prefetch: 16,
        ..shadow()
    };
    let (mut m, _, _) = long_world(cfg, 1, 16);
    for i in 0..16 {
        assert!(matches!(
            m.access(0x40_0000 + i * 4096, Access::read(true)),
            Outcome::Ok(_)
        ));
    }
    assert_eq!(m.mmu.stats().prefetched, 0);
    assert_eq!(m.mmu.stats().shadow_faults, 16);
}

/// Prefetch on write: an emulated write that makes a guest PTE present
/// and accessed fills its shadow leaf at once (no fault on the next
/// access); one without A still faults so that the walk sets A. When
/// write flooding drops a frame's protection, the leaves that mapped it
/// read-only because of it become writable at once (no fault on the
/// next write).
#[test]
fn emulated_pte_writes_fill_the_shadow_and_unprotected_frames_are_writable_again() {
    use mmu_server::GuestMemory;
    let cfg = MmuConfig {
        flood_threshold: 3,
        prefetch: 16,
        ..shadow()
    };
    let (mut m, mut gt, cr3s) = long_world(cfg, 1, 1);
    let base = 0x40_0000u64;
    let pt = gt.entry(&mut m.sim, cr3s[0], base, 1, None).unwrap().gpa & !0xfff;
    // A second page table, for 0x60_0000; pages 7 and 8 map it,
    // writable, clean and dirty: prefetched read-only, since the frame
    // is protected.
    let other = 0x60_0000u64;
    gt.map(&mut m.sim, cr3s[0], other, 1, 0x70_0000, URW | pte::A, URW);
    let pt2 = gt.entry(&mut m.sim, cr3s[0], other, 1, None).unwrap().gpa & !0xfff;
    assert_ne!(pt, pt2);
    gt.write(&mut m.sim, pt + 7 * 8, pt2 | URW | pte::A);
    gt.write(&mut m.sim, pt + 8 * 8, pt2 | URW | pte::A | pte::D);
    assert!(matches!(
        m.access(other, Access::read(true)),
        Outcome::Ok(_)
    ));
    assert!(matches!(m.access(base, Access::read(true)), Outcome::Ok(_)));
    let faults = |m: &Machine| m.mmu.stats().shadow_faults;
    assert_eq!(m.mmu.stats().prefetched, 2);

    // The kernel's direct-map leaf for the table (read-only: protected).
    assert_eq!(m.access(KERNEL + pt, Access::read(false)), Outcome::Ok(pt));
    // A new, accessed entry: installed by the emulated write.
    let s = m.mmu.stats();
    assert_eq!(
        m.store(KERNEL + pt + 5 * 8, 0x65_0000 | URW | pte::A, 8, false),
        Outcome::Stored
    );
    let after = m.mmu.stats();
    assert_eq!(after.emulated_writes - s.emulated_writes, 1);
    assert_eq!(after.prefetched - s.prefetched, 1);
    let f = faults(&m);
    assert_eq!(
        m.access(base + 5 * 4096, Access::read(true)),
        Outcome::Ok(0x65_0000)
    );
    assert_eq!(faults(&m), f, "no fault: the write filled the leaf");
    // Not accessed: left to the fault, whose walk sets A.
    assert_eq!(
        m.store(KERNEL + pt + 6 * 8, 0x66_0000 | URW, 8, false),
        Outcome::Stored
    );
    let f = faults(&m);
    assert_eq!(
        m.access(base + 6 * 4096, Access::read(true)),
        Outcome::Ok(0x66_0000)
    );
    assert_eq!(faults(&m), f + 1);
    let mut b = [0u8; 8];
    assert!(m.sim.read_phys(pt + 6 * 8, &mut b).is_ok());
    assert_eq!(u64::from_le_bytes(b), 0x66_0000 | URW | pte::A);

    // Three writes to the frame as data: unprotected; the kernel's
    // direct-map leaf for it is writable again at once.
    for i in 0..3u64 {
        assert_eq!(
            m.store(KERNEL + pt2 + 0x800 + i * 8, i, 8, false),
            Outcome::Stored
        );
    }
    assert_eq!(m.mmu.stats().unprotects, 1);
    assert!(!m.mmu.cache().is_protected(pt2 >> 12));
    assert_eq!(
        m.access(KERNEL + pt2, Access::read(false)),
        Outcome::Ok(pt2)
    );
    let f = faults(&m);
    assert_eq!(m.store(KERNEL + pt2 + 0x900, 9, 8, false), Outcome::Stored);
    assert_eq!(faults(&m), f, "no fault: the leaf is writable again");
    // Page 8 (dirty) too; page 7 (clean) stays read-only: its first write
    // faults and the walk sets D.
    assert_eq!(
        m.store(base + 8 * 4096 + 0xa00, 8, 8, true),
        Outcome::Stored
    );
    assert_eq!(faults(&m), f, "no fault: dirty and unprotected");
    assert_eq!(
        m.store(base + 7 * 4096 + 0xa08, 7, 8, true),
        Outcome::Stored
    );
    assert_eq!(faults(&m), f + 1);
    assert!(m.sim.read_phys(pt + 7 * 8, &mut b).is_ok());
    assert_eq!(u64::from_le_bytes(b), pt2 | URW | pte::A | pte::D);
    m.mmu.cache().check_invariants().unwrap();
}
