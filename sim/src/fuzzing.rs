//! The bodies of the `sim/fuzz` targets, here so that a crash input
//! becomes a regression test in the normal test suite. Each panics when a
//! documented invariant breaks; each must never panic otherwise.
//!
//! - [`resume_bytes`]: `kernel_stub::resume::validate` (and through it
//!   `validate_paging`) on arbitrary bytes as a `Resume`, a guest mode, a
//!   CPU's features and a table-level map; an accepted resume must be
//!   one VM entry runs, and an accepted paging state one the hardware
//!   walks from the root at the level the root was checked at
//!   ([`crate::hw::entry_mode`]).
//! - [`mmu_exit_bytes`]: the mmu-server's exit handling
//!   (`Mmu::handle_exit`) on arbitrary exit records over guest tables
//!   from the input, its resumes checked by the stub and applied to the
//!   simulated hardware, whose walks must stay isolated; and its pure
//!   instruction decoders (`mmu_server::insn`) on the records' bytes.

use ipc_proto::{
    EventKind, ExitRecord, GuestRegs, PagingState, Resume, ResumeFlags, VcpuArch, ABI_VERSION,
};
use mmu_server::walk::GuestMemory;
use mmu_server::{insn, Action, GuestCtl, Mmu, MmuConfig, MmuPlatform};
use zerocopy::FromBytes;

use crate::hw::{self, efer, entry_mode, SimCpu};
use crate::platform::{Sim, SimConfig};
use crate::stub::{self, GuestMode};

/// `data[at..at + N]`, zero-padded.
fn bytes<const N: usize>(data: &[u8], at: usize) -> [u8; N] {
    let mut b = [0u8; N];
    if at < data.len() {
        let k = N.min(data.len() - at);
        b[..k].copy_from_slice(&data[at..at + k]);
    }
    b
}

fn u64_at(data: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes::<8>(data, at))
}

fn canonical48(a: u64) -> bool {
    let top = a >> 47;
    top == 0 || top == (1 << 17) - 1
}

fn pushes_error_code(v: u8) -> bool {
    matches!(v, 8 | 10..=14 | 17 | 21 | 29 | 30)
}

/// The resume-validation target. Layout: a `Resume` (zero-padded), then
/// a mode byte (LMA, CS.L, CS.D, interrupt shadow, shadow paging, force
/// the right ABI version), RFLAGS (8 bytes), 4 bytes of CR4 features
/// the CPU lacks, 1 byte of EFER features it lacks, 8 bytes of table
/// levels for handles 0..8.
pub fn resume_bytes(data: &[u8]) {
    let n = core::mem::size_of::<Resume>();
    let head = {
        let mut v = data[..n.min(data.len())].to_vec();
        v.resize(n, 0);
        v
    };
    let Ok(mut r) = Resume::read_from_bytes(&head) else {
        return;
    };
    let t = &data[n.min(data.len())..];
    let m = bytes::<1>(t, 0)[0];
    if m & 32 != 0 {
        r.abi_version = ABI_VERSION;
    }
    let mode = GuestMode {
        lma: m & 1 != 0,
        cs_l: m & 2 != 0,
        cs_d: m & 4 != 0,
        interrupt_shadow: m & 8 != 0,
        shadow: m & 16 != 0,
        rflags: u64_at(t, 1),
    };
    let lacks_cr4 = u64::from(u32::from_le_bytes(bytes::<4>(t, 9)));
    let lacks_efer = bytes::<1>(t, 13)[0];
    let mut cpu = SimCpu::ALL;
    // TSD and PCE have no CPUID bit: every CPU has them. PAE stays.
    cpu.cr4 &= !lacks_cr4 | hw::cr4::PAE | hw::cr4::TSD | hw::cr4::PCE;
    if lacks_efer & 1 != 0 {
        cpu.efer &= !efer::NXE;
    }
    if lacks_efer & 2 != 0 {
        cpu.efer &= !(efer::LME | efer::LMA);
    }
    cpu.gb_pages = lacks_efer & 4 == 0;
    if lacks_efer & 8 != 0 {
        cpu.xcr0 &= !4; // no AVX
    }
    let levels = bytes::<8>(t, 14);
    let root_level = |h: u32| -> Option<u8> {
        let l = *levels.get(h as usize)? % 6;
        (l != 0).then_some(l)
    };
    let rules = stub::rules(&cpu);
    let Ok(flags) = stub::validate(&r, &mode, &rules, root_level) else {
        return;
    };
    assert_eq!(r.abi_version, ABI_VERSION);
    assert_eq!(
        ResumeFlags::from_bits(r.flags),
        Some(flags),
        "unknown flags accepted"
    );
    let set_paging = flags.contains(ResumeFlags::SET_PAGING);
    let p = &r.paging;
    if set_paging && !mode.shadow {
        // Nested paging: only the guest's CR4 is loaded, within the
        // allowlist (with PSE) and this CPU's features; PAE in long mode.
        assert_eq!(
            p.cr4 & !(rules.cr4 | hw::cr4::PSE),
            0,
            "nested CR4 {:#x} outside the allowlist",
            p.cr4
        );
        assert!(
            !mode.lma || p.cr4 & hw::cr4::PAE != 0,
            "PAE cleared in long mode"
        );
    }
    if set_paging && mode.shadow {
        assert_eq!(p.flags & !PagingState::INTERCEPT_INVLPG, 0);
        let hw = entry_mode(&cpu, p).unwrap_or_else(|e| {
            panic!("accepted paging state {p:x?} fails VM entry on {cpu:x?}: {e}")
        });
        let want = hw.root_level();
        assert!(
            hw.wide() && want.is_some() && root_level(p.root) == want,
            "accepted paging state {p:x?}: the hardware walks in {hw:?} from the root at level {want:?}, the root was checked at level {:?}",
            root_level(p.root)
        );
        let lme = p.efer & efer::LME != 0;
        assert!(
            !(lme && mode.cs_l && mode.cs_d),
            "CS.L and CS.D with long mode"
        );
    }
    if flags.contains(ResumeFlags::SET_XCR0) {
        // XSETBV's rules on this CPU (SDM vol. 2C), and only x87, SSE, AVX.
        let v = r.xcr0;
        assert!(
            cpu.cr4 & hw::cr4::OSXSAVE != 0
                && v & !cpu.xcr0 == 0
                && v & !7 == 0
                && v & 1 != 0
                && (v & 4 == 0 || v & 2 != 0),
            "XCR0 {v:#x} accepted on {cpu:x?}"
        );
    }
    if flags.contains(ResumeFlags::SET_NESTED_ROOT) {
        assert!(
            !mode.shadow,
            "SET_NESTED_ROOT accepted for a shadowed guest"
        );
        assert_eq!(root_level(p.root), Some(4));
        assert_eq!(p.flags, 0);
    }
    let lma = if set_paging && mode.shadow {
        p.efer & efer::LMA != 0
    } else {
        mode.lma
    };
    if flags.contains(ResumeFlags::SET_RIP) {
        let rip = r.regs.rip;
        if lma && mode.cs_l {
            assert!(canonical48(rip), "non-canonical RIP {rip:#x} accepted");
        } else {
            assert!(
                rip >> 32 == 0,
                "RIP {rip:#x} above 4 GiB accepted outside 64-bit code"
            );
        }
    }
    let rflags = if flags.contains(ResumeFlags::SET_RFLAGS) {
        let f = r.regs.rflags;
        assert!(
            f & 2 != 0 && f >> 22 == 0 && f & (1 << 3 | 1 << 5 | 1 << 15) == 0,
            "RFLAGS {f:#x}"
        );
        f
    } else {
        mode.rflags
    };
    if flags.contains(ResumeFlags::INJECT_EVENT) {
        let e = &r.event;
        let kind = EventKind::from_raw(e.kind).expect("accepted event kind");
        match kind {
            EventKind::Exception => assert!(e.vector < 32 && e.vector != 2, "{e:?}"),
            EventKind::Nmi => assert_eq!(e.vector, 2),
            _ => {}
        }
        assert!(e.has_error_code <= 1 && e.reserved == 0, "{e:?}");
        if e.has_error_code == 1 {
            assert!(
                kind == EventKind::Exception && pushes_error_code(e.vector),
                "{e:?}"
            );
        }
        if kind == EventKind::ExternalInterrupt {
            assert!(
                rflags & (1 << 9) != 0,
                "external interrupt injected with IF clear: {e:?}"
            );
        }
    }
}

/// A guest's paging state from one byte: paging off, 32-bit, PAE, long.
fn guest_ctl(b: u8) -> GuestCtl {
    use mmu_server::regs::{cr0, cr4, efer};
    let pg = cr0::PG | cr0::PE | cr0::ET;
    let mut c = match b % 4 {
        0 => GuestCtl {
            cr0: cr0::PE | cr0::ET,
            ..GuestCtl::RESET
        },
        1 => GuestCtl {
            cr0: pg,
            cr4: if b & 4 != 0 { cr4::PSE } else { 0 },
            ..GuestCtl::RESET
        },
        2 => GuestCtl {
            cr0: pg,
            cr4: cr4::PAE,
            efer: efer::NXE,
            ..GuestCtl::RESET
        },
        _ => GuestCtl {
            cr0: pg,
            cr4: cr4::PAE,
            efer: efer::LME | efer::NXE,
            ..GuestCtl::RESET
        },
    };
    if b & 8 != 0 {
        c.cr0 |= cr0::WP;
    }
    if b & 16 != 0 {
        c.cr4 |= cr4::PGE;
    }
    c.cr3 = 0x1000;
    c
}

/// Bytes of guest memory (from gpa 0x1000) the mmu-exit target takes
/// from its input: the guest's tables.
pub const MMU_TABLE_BYTES: usize = 0x4000;

/// The mmu-server exit target. Layout: a config byte (guest mode, WP,
/// PGE, decode assists), [`MMU_TABLE_BYTES`] of guest memory at gpa
/// 0x1000, then exit records, each XORed into a plausible SVM record (so
/// that zeros are a #PF at address 0).
pub fn mmu_exit_bytes(data: &[u8]) {
    let cfg_byte = bytes::<1>(data, 0)[0];
    let mut sim = Sim::new(SimConfig {
        ram_bytes: 2 << 20,
        max_tables: 256,
        ..SimConfig::default()
    });
    let mem_end = (1 + MMU_TABLE_BYTES).min(data.len());
    if mem_end > 1 {
        let _ = sim.write_phys(0x1000, &data[1..mem_end]);
    }
    let mut mmu = Mmu::new(
        MmuConfig {
            decode_assists: cfg_byte & 32 != 0,
            max_tables: 200,
            ..MmuConfig::default()
        },
        sim.guest_ram_bytes(),
    );
    if mmu.start(&mut sim, guest_ctl(cfg_byte)).is_err() {
        return;
    }
    if let Some((ps, flags)) = mmu.take_paging_flags() {
        if let Err(e) = sim.load_paging_flags(&ps, flags) {
            panic!("the mmu-server's first paging state was refused: {e}");
        }
    }
    let n = core::mem::size_of::<ExitRecord>();
    let mut at = 1 + MMU_TABLE_BYTES;
    let mut regs = GuestRegs {
        rflags: 2,
        ..Default::default()
    };
    let mut seq = 0;
    while at < data.len() {
        let raw = {
            let mut v = data[at..(at + n).min(data.len())].to_vec();
            v.resize(n, 0);
            v
        };
        at += n;
        let Ok(x) = ExitRecord::read_from_bytes(&raw) else {
            return;
        };
        seq += 1;
        let ps = sim.paging().unwrap_or_default();
        let mut rec = x;
        rec.abi_version ^= ABI_VERSION;
        rec.arch ^= VcpuArch::Svm as u32;
        rec.sequence = seq;
        rec.exit_code ^= ipc_proto::exit::svm_exit::EXCP_BASE + 14;
        rec.regs = GuestRegs {
            rip: regs.rip ^ x.regs.rip,
            rflags: regs.rflags ^ x.regs.rflags,
            ..x.regs
        };
        rec.cr0 ^= ps.cr0;
        rec.cr3 ^= u64::from(ps.root);
        rec.cr4 ^= ps.cr4;
        rec.efer ^= ps.efer;
        rec.insn_len %= 17;
        exercise_decoders(&rec);
        let action = mmu.handle_exit(&mut sim, &rec);
        let resume = match action {
            Action::Resume(r) => Some(r),
            Action::Mmio { .. } | Action::Fail(_) => None,
        };
        if let Some(r) = resume {
            let hw_efer = sim.paging().map_or(0, |p| p.efer);
            let mode = GuestMode {
                lma: hw_efer & efer::LMA != 0,
                cs_l: rec.cs.attrib & ipc_proto::Segment::ATTR_L != 0,
                cs_d: rec.cs.attrib & ipc_proto::Segment::ATTR_DB != 0,
                rflags: rec.regs.rflags,
                interrupt_shadow: false,
                shadow: true,
            };
            let rules = *sim.rules();
            let checked = {
                let s = &sim;
                stub::validate(&r, &mode, &rules, |h| s.table_level(h))
            };
            if let Ok(flags) = checked {
                if flags.contains(ResumeFlags::SET_PAGING) {
                    let _ = sim.load_paging_flags(&r.paging, flags);
                }
                if flags.contains(ResumeFlags::SET_RIP) {
                    regs.rip = r.regs.rip;
                }
            }
        }
        if let Some((ps, flags)) = mmu.take_paging_flags() {
            let _ = sim.load_paging_flags(&ps, flags);
        }
        // The hardware walks what the server built, for the faulting
        // address and its own page.
        for la in [rec.exit_info2, 0, 0x1000] {
            let _ = sim.translate_hw(
                la,
                hw::HwAccess {
                    write: rec.exit_info1 & 2 != 0,
                    user: rec.exit_info1 & 4 != 0,
                    ..Default::default()
                },
            );
        }
        if let Err(v) = sim.check_isolation() {
            panic!("isolation breached: {}", v.0);
        }
        if let Some(v) = sim.violation.take() {
            panic!("isolation breached: {}", v.0);
        }
    }
}

/// The mmu-server's pure decoders on a record's instruction bytes.
fn exercise_decoders(rec: &ExitRecord) {
    let bytes = &rec.insn_bytes[..usize::from(rec.insn_len)];
    for bitness in [16, 32, 64] {
        let Some(i) = insn::decode(bytes, bitness, rec.regs.rip) else {
            continue;
        };
        let _ = insn::cr_insn(&i);
        let _ = insn::memory_address(&i, &rec.regs, &rec.cs, bitness, rec.cpl & 1 != 0);
        if insn::store_size(&i).is_some() {
            let mut regs = rec.regs;
            let _ = insn::execute_store(&i, &mut regs, rec.exit_info2);
        }
    }
    let _ = insn::bitness(rec.efer & efer::LMA != 0, &rec.cs);
}
