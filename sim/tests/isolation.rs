//! An mmu-server that tries to break out: every install that would map
//! memory outside the VM's RAM, or make a non-leaf point to anything but a
//! shadow table one level down, is refused; and whatever sequence of
//! allocations, frees, installs and loads it makes, the hardware never
//! reaches such an entry.

use ipc_proto::mmu::{Install, InstallError, TableFormat};
use ipc_proto::PagingState;
use mmu_server::walk::Access;
use mmu_server::{MmuPlatform, PlatformError};
use proptest::prelude::*;
use sim::hw::{cr4, HwAccess};
use sim::isolation::{
    base_efer, run, run_with, HostileEntry, HostileInstall, HostileOp, BASE_CR0, BASE_CR4,
};
use sim::{Sim, SimConfig};

fn ins(table: u32, level: u8, index: u16, entry: u64) -> Install {
    Install {
        table,
        index,
        level,
        reserved: 0,
        entry,
    }
}

fn refused(r: Result<(), PlatformError>) -> InstallError {
    match r {
        Err(PlatformError::Refused { error, .. }) => error,
        other => panic!("accepted: {other:?}"),
    }
}

#[test]
fn escapes_are_refused_every_time() {
    let mut s = Sim::new(SimConfig {
        ram_bytes: 15 << 20,
        ..SimConfig::default()
    });
    let l4 = s.alloc_table(4).unwrap();
    let l2 = s.alloc_table(2).unwrap();
    let l1 = s.alloc_table(1).unwrap();
    for _ in 0..3 {
        // Leaves outside the 15 MiB of RAM: just past it, far away, a
        // 2 MiB page straddling the end.
        assert_eq!(
            refused(s.install(&[ins(l1, 1, 0, (15 << 20) | 1)])),
            InstallError::OutsideGuestMemory
        );
        assert_eq!(
            refused(s.install(&[ins(l1, 1, 0, 0x000f_ffff_ffff_f001)])),
            InstallError::OutsideGuestMemory
        );
        assert_eq!(
            refused(s.install(&[ins(l2, 2, 0, (14 << 20) | 0x81)])),
            InstallError::OutsideGuestMemory
        );
        // Non-leaves to non-tables, to the wrong level, to itself.
        assert_eq!(
            refused(s.install(&[ins(l4, 4, 0, (999 << 12) | 1)])),
            InstallError::BadChild
        );
        assert_eq!(
            refused(s.install(&[ins(l4, 4, 0, (u64::from(l1) << 12) | 1)])),
            InstallError::BadChild
        );
        assert_eq!(
            refused(s.install(&[ins(l2, 2, 0, (u64::from(l2) << 12) | 1)])),
            InstallError::BadChild
        );
        assert_eq!(
            refused(s.install(&[ins(l4, 4, 0, 0x81)])),
            InstallError::BadPageSize
        );
        assert_eq!(
            refused(s.install(&[ins(l1, 2, 0, 0)])),
            InstallError::WrongLevel
        );
        assert_eq!(
            refused(s.install(&[ins(l1, 1, 512, 0)])),
            InstallError::BadIndex
        );
        assert_eq!(
            refused(s.install(&[ins(77, 1, 0, 0)])),
            InstallError::UnknownTable
        );
    }
    // A refused entry stops the batch: the ones before it are applied.
    let r = s.install(&[
        ins(l1, 1, 1, 0x5000 | 1),
        ins(l1, 1, 2, (15 << 20) | 1),
        ins(l1, 1, 3, 0x6000 | 1),
    ]);
    assert!(matches!(r, Err(PlatformError::Refused { index: 1, .. })));
    assert_eq!(s.counters.installs, 1);
    s.check_isolation().unwrap();
    // A freed table cannot be linked to.
    s.free_table(l1).unwrap();
    assert_eq!(
        refused(s.install(&[ins(l2, 2, 0, (u64::from(l1) << 12) | 1)])),
        InstallError::BadChild
    );
}

/// Nested tables, in both formats: a leaf outside the VM's RAM, or a
/// non-leaf to anything but a table one level down, is refused. In EPT an
/// entry is present when any of bits 0-2 is set, so one with bit 0 clear
/// and write or execute set is checked too.
#[test]
fn nested_escapes_are_refused_in_npt_and_ept_format() {
    for format in [TableFormat::X86, TableFormat::Ept] {
        let mut s = Sim::new(SimConfig {
            ram_bytes: 16 << 20,
            format,
            ..SimConfig::default()
        });
        let l4 = s.alloc_table(4).unwrap();
        let l3 = s.alloc_table(3).unwrap();
        let l2 = s.alloc_table(2).unwrap();
        let l1 = s.alloc_table(1).unwrap();
        let rights: &[u64] = match format {
            TableFormat::X86 => &[0x7],
            TableFormat::Ept => &[0x7, 0x1, 0x2, 0x4, 0x6],
        };
        for &r in rights {
            let what = format!("{format:?} rights {r:#x}");
            // Write without read is an EPT misconfiguration: refused first.
            let misconfigured = format == TableFormat::Ept && r & 3 == 2;
            let or_misconfigured = |e| {
                if misconfigured {
                    InstallError::ReservedBits
                } else {
                    e
                }
            };
            assert_eq!(
                refused(s.install(&[ins(l1, 1, 0, (16 << 20) | r)])),
                or_misconfigured(InstallError::OutsideGuestMemory),
                "{what}"
            );
            assert_eq!(
                refused(s.install(&[ins(l2, 2, 0, (16 << 20) | 0x80 | r)])),
                or_misconfigured(InstallError::OutsideGuestMemory),
                "{what}"
            );
            assert_eq!(
                refused(s.install(&[ins(l3, 3, 0, 0x80 | r)])),
                or_misconfigured(InstallError::OutsideGuestMemory),
                "{what}: 1 GiB > 16 MiB"
            );
            assert_eq!(
                refused(s.install(&[ins(l4, 4, 0, (999 << 12) | r)])),
                or_misconfigured(InstallError::BadChild),
                "{what}"
            );
            assert_eq!(
                refused(s.install(&[ins(l4, 4, 0, (u64::from(l2) << 12) | r)])),
                or_misconfigured(InstallError::BadChild),
                "{what}"
            );
            assert_eq!(
                refused(s.install(&[ins(l4, 4, 0, 0x80 | r)])),
                InstallError::BadPageSize,
                "{what}"
            );
        }
        // A correct map is accepted and walks to guest RAM.
        s.install(&[
            ins(l4, 4, 0, (u64::from(l3) << 12) | 7),
            ins(l3, 3, 0, (u64::from(l2) << 12) | 7),
            ins(l2, 2, 0, (u64::from(l1) << 12) | 7),
            ins(l2, 2, 1, 0x20_0000 | 0x80 | 7),
            ins(l1, 1, 5, 0x5000 | 7),
        ])
        .unwrap();
        s.load_nested(l2);
        assert!(
            s.translate_nested(0x5123, true).is_err(),
            "a level-2 root is refused"
        );
        s.load_nested(l4);
        assert_eq!(s.translate_nested(0x5123, true), Ok(0x5123));
        assert_eq!(s.translate_nested(0x20_0042, false), Ok(0x20_0042));
        assert!(s.translate_nested(0x6000, false).is_err());
        s.check_isolation().unwrap();
        assert!(s.violation.is_none());
    }
}

fn entry() -> impl Strategy<Value = HostileEntry> {
    prop_oneof![
        any::<u64>().prop_map(HostileEntry::Raw),
        (any::<u32>(), any::<u16>()).prop_map(|(handle, flags)| HostileEntry::Pointer {
            handle: handle % 70,
            flags
        }),
        // Leaves around the end of the 4 MiB of RAM, and anywhere.
        (0u64..0x60_0000, any::<u16>()).prop_map(|(gpa, flags)| HostileEntry::Leaf { gpa, flags }),
        (any::<u64>(), any::<u16>()).prop_map(|(gpa, flags)| HostileEntry::Leaf { gpa, flags }),
    ]
}

/// A control-register word: the usual one with one or a few bits flipped
/// (one of the low 32, where the defined bits are, or any of the 64), or
/// any value at all.
fn control(base: u64) -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => (0u32..32).prop_map(move |b| base ^ 1 << b),
        2 => proptest::collection::vec(0u32..64, 1..4)
            .prop_map(move |flips| flips.iter().fold(base, |v, b| v ^ 1 << b)),
        1 => any::<u64>(),
    ]
}

/// A `SET_PAGING` with arbitrary CR0, CR4 and EFER: every bit may be set,
/// LA57 and the reserved ones included. Mostly one register differs from
/// a correct state, as a server probing the check one bit at a time.
fn load() -> impl Strategy<Value = HostileOp> {
    (
        any::<u32>(),
        any::<bool>(),
        any::<bool>(),
        prop_oneof![18 => Just(0u32), 1 => Just(PagingState::INTERCEPT_INVLPG), 1 => any::<u32>()],
    )
        .prop_flat_map(|(root, long, non_global, flags)| {
            let e = base_efer(long);
            let regs = prop_oneof![
                1 => Just((BASE_CR0, BASE_CR4, e)),
                2 => control(BASE_CR0).prop_map(move |c| (c, BASE_CR4, e)),
                4 => control(BASE_CR4).prop_map(move |c| (BASE_CR0, c, e)),
                2 => control(e).prop_map(move |c| (BASE_CR0, BASE_CR4, c)),
                1 => (control(BASE_CR0), control(BASE_CR4), control(e)),
            ];
            regs.prop_map(move |(cr0, cr4, efer)| HostileOp::Load {
                root,
                cr0,
                cr4,
                efer,
                flags,
                non_global,
            })
        })
}

/// Linear addresses: low ones (where the tables map), 48- and 57-bit
/// canonical ones, anything.
fn linear() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..0x100_0000,
        (0u64..1 << 47).prop_map(|a| if a & 1 << 46 != 0 {
            a | 0xffff_8000_0000_0000
        } else {
            a
        }),
        (0u64..1 << 56).prop_map(|a| if a & 1 << 55 != 0 {
            a | 0xff00_0000_0000_0000
        } else {
            a
        }),
        any::<u64>(),
    ]
}

fn probe() -> impl Strategy<Value = HostileOp> {
    (linear(), any::<[bool; 5]>()).prop_map(|(la, [write, fetch, user, implicit, ac])| {
        HostileOp::Probe {
            la,
            access: HwAccess {
                write,
                fetch: fetch && !write,
                user: user && !implicit,
                implicit,
                ac,
            },
        }
    })
}

fn op() -> impl Strategy<Value = HostileOp> {
    prop_oneof![
        2 => (0u8..6).prop_map(HostileOp::Alloc),
        1 => any::<u32>().prop_map(HostileOp::Free),
        6 => proptest::collection::vec(
            (any::<u32>(), 0u16..520, 0u8..6, prop_oneof![9 => Just(0u8), 1 => any::<u8>()], entry()).prop_map(
                |(table, index, level, reserved, entry)| HostileInstall { table, index, level, reserved, entry }
            ),
            1..8,
        )
        .prop_map(HostileOp::Install),
        2 => load(),
        3 => probe(),
        1 => (any::<u32>(), any::<u32>()).prop_map(|(pkru, pkrs)| HostileOp::SetKeys { pkru, pkrs }),
        1 => any::<u32>().prop_map(HostileOp::LoadNested),
        2 => (0u64..0x60_0000, any::<bool>()).prop_map(|(gpa, write)| HostileOp::ProbeNested { gpa, write }),
    ]
}

proptest! {
    // 1024 cases: with the LA57 hole open (a validator that accepts
    // CR4.LA57) this finds it in ~250 cases on average (10 seeds: 83-450).
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    /// Whatever a hostile server does, with any CR0/CR4/EFER, the
    /// hardware never reads a table at a level it was not checked at nor
    /// reaches memory outside this VM's RAM.
    #[test]
    fn a_hostile_server_never_gets_out(ops in proptest::collection::vec(op(), 1..150)) {
        let report = run(&ops);
        prop_assert!(report.is_ok(), "{:?}", report);
    }

}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// The same hostile server against nested tables in the EPT format (a
    /// VMX guest under nested paging): what the stub accepts never maps
    /// outside the VM's RAM nor links to anything but a table one level
    /// down, with EPT's notion of present.
    #[test]
    fn a_hostile_server_never_gets_out_of_ept_tables(ops in proptest::collection::vec(op(), 1..150)) {
        let report = run_with(TableFormat::Ept, &ops);
        prop_assert!(report.is_ok(), "{:?}", report);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Every paging state the stub accepts is one VM entry accepts: no
    /// reserved or unimplemented CR0, CR4 or EFER bit, no inconsistent
    /// LME/LMA/PG/PAE/PCIDE (the guest would not run, and the stub says a
    /// resume it accepts never makes the entry fail).
    #[test]
    fn accepted_paging_states_always_enter(ops in proptest::collection::vec(op(), 1..150)) {
        let report = run(&ops);
        prop_assert!(report.is_ok(), "{:?}", report);
        let report = report.unwrap();
        prop_assert_eq!(report.entry_failures, 0, "{:?}", report);
    }
}

/// The simulator panicked when a server freed the table loaded as the
/// root and the hardware then walked (cargo-fuzz, after ~98k runs: alloc
/// a root, load it, free it, probe). The hardware holds a frame in CR3,
/// not a handle: it keeps walking the freed table, whose entries were
/// checked at its level, and a frame is only ever reused at that level.
#[test]
fn freeing_the_loaded_root_is_walked_as_the_hardware_does() {
    for long in [true, false] {
        let level = if long { 4 } else { 3 };
        let mut s = Sim::new(SimConfig::default());
        let root = s.alloc_table(level).unwrap();
        let l2 = s.alloc_table(2).unwrap();
        if long {
            let l3 = s.alloc_table(3).unwrap();
            s.install(&[
                ins(root, 4, 0, (u64::from(l3) << 12) | 7),
                ins(l3, 3, 0, (u64::from(l2) << 12) | 7),
            ])
            .unwrap();
        } else {
            s.install(&[ins(root, 3, 0, (u64::from(l2) << 12) | 1)])
                .unwrap();
        }
        s.install(&[ins(l2, 2, 0, 0x81 | 6)]).unwrap();
        s.load_paging(&PagingState {
            cr0: BASE_CR0,
            cr4: BASE_CR4,
            efer: base_efer(long),
            root,
            flags: 0,
        })
        .unwrap();
        s.free_table(root).unwrap();
        s.flush_all();
        assert_eq!(s.translate(0x1234, Access::read(false)), Ok(0x1234));
        // Reused, at the same level, by another table: walked as that one.
        let again = s.alloc_table(level).unwrap();
        assert_eq!(again, root);
        s.flush_all();
        let r = s.translate(0x1234, Access::read(false));
        if long {
            assert!(r.is_err(), "the zeroed new table maps nothing: {r:?}");
        } else {
            assert_eq!(r, Ok(0x1234), "PAE: the PDPTE registers keep the old entry");
        }
        assert!(s.violation.is_none(), "{:?}", s.violation);
        s.check_isolation().unwrap();
    }
    // The same through the hostile server, as the fuzzer found it.
    let ops = [
        HostileOp::Alloc(4),
        HostileOp::load(0, true),
        HostileOp::Free(0),
        HostileOp::probe(0, false),
        HostileOp::probe(0x7fff_ffff_f000, true),
    ];
    run(&ops).unwrap();
}

/// CR4.LA57 makes the hardware read the level-4 root as a PML5, every
/// table one level higher than it was checked at: a level-1 leaf read as
/// a page-directory entry points into guest RAM as a table. The stub must
/// refuse the state; the walker says so if it does not.
#[test]
fn la57_is_refused_or_the_walker_finds_the_breach() {
    let ops = [
        HostileOp::Alloc(4),
        HostileOp::Alloc(3),
        HostileOp::Alloc(2),
        HostileOp::Alloc(1),
        HostileOp::Install(vec![
            HostileInstall {
                table: 0,
                index: 0,
                level: 4,
                reserved: 0,
                entry: HostileEntry::Pointer {
                    handle: 1,
                    flags: 7,
                },
            },
            HostileInstall {
                table: 1,
                index: 0,
                level: 3,
                reserved: 0,
                entry: HostileEntry::Pointer {
                    handle: 2,
                    flags: 7,
                },
            },
            HostileInstall {
                table: 2,
                index: 0,
                level: 2,
                reserved: 0,
                entry: HostileEntry::Pointer {
                    handle: 3,
                    flags: 7,
                },
            },
            HostileInstall {
                table: 3,
                index: 0,
                level: 1,
                reserved: 0,
                entry: HostileEntry::Leaf {
                    gpa: 0x5000,
                    flags: 7,
                },
            },
        ]),
        HostileOp::Load {
            root: 0,
            cr0: BASE_CR0,
            cr4: BASE_CR4 | cr4::LA57,
            efer: base_efer(true),
            flags: 0,
            non_global: false,
        },
        HostileOp::probe(0x10, false),
    ];
    let r = run(&ops);
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(r.unwrap().loads, 0, "the LA57 state was loaded");
}

#[test]
fn fuzz_entry_point_survives_arbitrary_bytes() {
    // What `sim/fuzz` feeds it, on a few fixed inputs.
    let mut x = 0x1234_5678_9abc_def0u64;
    for len in [0usize, 11, 12, 120, 1200, 4800] {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        sim::isolation::fuzz_bytes(&bytes);
    }
}
