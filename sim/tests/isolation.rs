//! An mmu-server that tries to break out: every install that would map
//! memory outside the VM's RAM, or make a non-leaf point to anything but a
//! shadow table one level down, is refused; and whatever sequence of
//! allocations, frees, installs and loads it makes, the hardware never
//! reaches such an entry.

use ipc_proto::mmu::{Install, InstallError, TableFormat};
use mmu_server::{MmuPlatform, PlatformError};
use proptest::prelude::*;
use sim::isolation::{run, run_with, HostileEntry, HostileInstall, HostileOp};
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
            assert_eq!(
                refused(s.install(&[ins(l1, 1, 0, (16 << 20) | r)])),
                InstallError::OutsideGuestMemory,
                "{what}"
            );
            assert_eq!(
                refused(s.install(&[ins(l2, 2, 0, (16 << 20) | 0x80 | r)])),
                InstallError::OutsideGuestMemory,
                "{what}"
            );
            assert_eq!(
                refused(s.install(&[ins(l3, 3, 0, 0x80 | r)])),
                InstallError::OutsideGuestMemory,
                "{what}: 1 GiB > 16 MiB"
            );
            assert_eq!(
                refused(s.install(&[ins(l4, 4, 0, (999 << 12) | r)])),
                InstallError::BadChild,
                "{what}"
            );
            assert_eq!(
                refused(s.install(&[ins(l4, 4, 0, (u64::from(l2) << 12) | r)])),
                InstallError::BadChild,
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
        1 => (any::<u32>(), any::<bool>()).prop_map(|(root, long)| HostileOp::Load { root, long }),
        2 => (any::<u64>(), any::<bool>()).prop_map(|(la, write)| HostileOp::Probe { la, write }),
        1 => any::<u32>().prop_map(HostileOp::LoadNested),
        2 => (0u64..0x60_0000, any::<bool>()).prop_map(|(gpa, write)| HostileOp::ProbeNested { gpa, write }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn a_hostile_server_never_gets_out(ops in proptest::collection::vec(op(), 1..150)) {
        let report = run(&ops);
        prop_assert!(report.is_ok(), "{:?}", report);
    }

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
