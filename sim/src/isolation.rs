//! A hostile mmu-server: random allocations, frees, install batches and
//! paging loads with arbitrary CR0, CR4 and EFER (every bit, reserved ones
//! and LA57 included) against the simulated stub. Whatever it does, the
//! tables the hardware can reach must map only this VM's RAM and point
//! only to shadow frames one level down ([`Sim::check_isolation`]), and
//! the hardware walker, which walks in whatever mode the accepted state
//! selects, must never read a table at a level other than the one it was
//! checked at, nor reach memory outside guest RAM. The same holds for
//! nested tables, in the x86 (NPT) and the EPT format ([`run_with`]).

use ipc_proto::mmu::{Install, TableFormat, TableHandle};
use ipc_proto::{PagingState, ResumeFlags};
use mmu_server::MmuPlatform;

use crate::hw::{cr0, cr4, efer, HwAccess};
use crate::platform::{Sim, SimConfig, Violation};

/// One step of a hostile server.
#[derive(Clone, Debug)]
pub enum HostileOp {
    /// Allocate a table at this level (also bad levels).
    Alloc(u8),
    /// Free the n-th handle seen (mod their number), or a raw handle.
    Free(u32),
    /// Install one batch.
    Install(Vec<HostileInstall>),
    /// Load the n-th handle as the root with these control registers
    /// (`SET_PAGING`; see [`HostileOp::load`] for the usual ones).
    Load {
        /// Which handle.
        root: u32,
        /// CR0.
        cr0: u64,
        /// CR4.
        cr4: u64,
        /// EFER.
        efer: u64,
        /// The flags word of the paging state.
        flags: u32,
        /// With `FLUSH_NON_GLOBAL`.
        non_global: bool,
    },
    /// Let the hardware translate a linear address.
    Probe {
        /// The address.
        la: u64,
        /// The access (user or supervisor, read, write or fetch, implicit,
        /// RFLAGS.AC).
        access: HwAccess,
    },
    /// The guest writes PKRU (WRPKRU does not exit) and IA32_PKRS.
    SetKeys {
        /// PKRU.
        pkru: u32,
        /// IA32_PKRS.
        pkrs: u32,
    },
    /// Name the n-th handle as the nested root (`SET_NESTED_ROOT`).
    LoadNested(u32),
    /// Let the hardware translate a guest-physical address through the
    /// nested tables.
    ProbeNested {
        /// The address.
        gpa: u64,
        /// A write access.
        write: bool,
    },
}

/// One install of a hostile batch.
#[derive(Clone, Debug)]
pub struct HostileInstall {
    /// Which handle (the n-th seen, mod their number; raw when none).
    pub table: u32,
    /// Entry index (also out of range).
    pub index: u16,
    /// Claimed level.
    pub level: u8,
    /// Reserved byte.
    pub reserved: u8,
    /// What the entry is made of.
    pub entry: HostileEntry,
}

/// How a hostile entry is built.
#[derive(Clone, Copy, Debug)]
pub enum HostileEntry {
    /// Any 64 bits.
    Raw(u64),
    /// A non-leaf naming the n-th handle seen, or a raw number.
    Pointer {
        /// Which handle.
        handle: u32,
        /// Low flag bits (P forced on).
        flags: u16,
    },
    /// A leaf at this guest-physical address (often near or past the end of RAM).
    Leaf {
        /// Guest-physical address.
        gpa: u64,
        /// Flag bits (P forced on, PS sometimes).
        flags: u16,
    },
}

/// CR0 of a protected-mode guest with paging and WP.
pub const BASE_CR0: u64 = cr0::PG | cr0::WP | cr0::ET | cr0::PE;
/// CR4 with PAE.
pub const BASE_CR4: u64 = cr4::PAE;

/// EFER of a long-mode (else PAE) guest, with NXE.
pub fn base_efer(long: bool) -> u64 {
    efer::NXE | if long { efer::LME | efer::LMA } else { 0 }
}

impl HostileOp {
    /// The paging state a correct server loads: four-level or PAE.
    pub fn load(root: u32, long: bool) -> Self {
        HostileOp::Load {
            root,
            cr0: BASE_CR0,
            cr4: BASE_CR4,
            efer: base_efer(long),
            flags: 0,
            non_global: false,
        }
    }

    /// A probe as before: a user write or a supervisor read.
    pub fn probe(la: u64, write: bool) -> Self {
        HostileOp::Probe {
            la,
            access: HwAccess {
                write,
                user: write,
                ..HwAccess::default()
            },
        }
    }
}

/// What a hostile run did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostileReport {
    /// Entries the stub accepted.
    pub accepted: u64,
    /// Entries the stub refused.
    pub refused: u64,
    /// Paging states the stub accepted and the hardware loaded.
    pub loads: u64,
    /// Paging states the stub refused.
    pub loads_refused: u64,
    /// Paging states the stub accepted that VM entry refuses on their
    /// control registers (the guest cannot run: not a breach of
    /// isolation, but a state the stub says it never lets through).
    pub entry_failures: u64,
    /// Probes the hardware translated.
    pub translated: u64,
}

fn pick(handles: &[TableHandle], n: u32) -> TableHandle {
    if handles.is_empty() {
        n
    } else {
        handles[n as usize % handles.len()]
    }
}

/// Runs the hostile steps on x86-format tables; `Err` on the first
/// breach of isolation.
pub fn run(ops: &[HostileOp]) -> Result<HostileReport, Violation> {
    run_with(TableFormat::X86, ops)
}

/// Runs the hostile steps on tables of `format`. In the EPT format (a
/// nested-paging VMX guest) the stub refuses shadow paging states, so
/// `Load` and `Probe` are skipped.
pub fn run_with(format: TableFormat, ops: &[HostileOp]) -> Result<HostileReport, Violation> {
    let mut sim = Sim::new(SimConfig {
        ram_bytes: 4 << 20,
        max_tables: 64,
        format,
        ..SimConfig::default()
    });
    let shadow_ok = format == TableFormat::X86;
    let mut handles: Vec<TableHandle> = Vec::new();
    let mut report = HostileReport::default();
    for op in ops {
        match op {
            HostileOp::Alloc(level) => {
                if let Ok(h) = sim.alloc_table(*level) {
                    handles.push(h);
                }
            }
            HostileOp::Free(n) => {
                let _ = sim.free_table(pick(&handles, *n));
            }
            HostileOp::Install(batch) => {
                let ins: Vec<Install> = batch
                    .iter()
                    .map(|i| Install {
                        table: pick(&handles, i.table),
                        index: i.index,
                        level: i.level,
                        reserved: i.reserved,
                        entry: match i.entry {
                            HostileEntry::Raw(e) => e,
                            HostileEntry::Pointer { handle, flags } => {
                                (u64::from(pick(&handles, handle)) << 12) | u64::from(flags) | 1
                            }
                            HostileEntry::Leaf { gpa, flags } => {
                                (gpa & 0x000f_ffff_ffff_f000) | u64::from(flags) | 1
                            }
                        },
                    })
                    .collect();
                let before = sim.counters;
                let _ = sim.install(&ins);
                report.accepted += sim.counters.installs - before.installs;
                report.refused += sim.counters.refused - before.refused;
            }
            HostileOp::Load {
                root,
                cr0,
                cr4,
                efer,
                flags,
                non_global,
            } if shadow_ok => {
                let before = sim.counters;
                let load_flags = if *non_global {
                    ResumeFlags::SET_PAGING | ResumeFlags::FLUSH_NON_GLOBAL
                } else {
                    ResumeFlags::SET_PAGING
                };
                let _ = sim.load_paging_flags(
                    &PagingState {
                        cr0: *cr0,
                        cr4: *cr4,
                        efer: *efer,
                        root: pick(&handles, *root),
                        flags: *flags,
                    },
                    load_flags,
                );
                report.loads += sim.counters.loads - before.loads;
                report.loads_refused += sim.counters.paging_refused - before.paging_refused;
                report.entry_failures += sim.counters.entry_failures - before.entry_failures;
            }
            HostileOp::Probe { la, access } if shadow_ok => {
                if sim.translate_hw(*la, *access).is_ok() {
                    report.translated += 1;
                }
            }
            HostileOp::SetKeys { pkru, pkrs } => {
                sim.pkru = *pkru;
                sim.pkrs = *pkrs;
            }
            HostileOp::Load { .. } | HostileOp::Probe { .. } => {}
            HostileOp::LoadNested(root) => sim.load_nested(pick(&handles, *root)),
            HostileOp::ProbeNested { gpa, write } => {
                let _ = sim.translate_nested(*gpa, *write);
            }
        }
        sim.check_isolation()?;
        if let Some(v) = sim.violation.take() {
            return Err(v);
        }
    }
    Ok(report)
}

/// Decodes fuzzer bytes into hostile steps: 12 bytes a step, and a
/// `Load` takes 24 more, XORed into the usual state's CR0, CR4 and EFER
/// (so zeros are a correct load and every bit can be flipped).
pub fn decode_ops(data: &[u8]) -> Vec<HostileOp> {
    let mut ops = Vec::new();
    let mut rest = data;
    let mut take = |n: usize| -> Option<Vec<u8>> {
        if rest.is_empty() {
            return None;
        }
        let k = n.min(rest.len());
        let mut v = rest[..k].to_vec();
        v.resize(n, 0);
        rest = &rest[k..];
        Some(v)
    };
    while let Some(ch) = take(12) {
        let w = u64::from_le_bytes(ch[4..12].try_into().expect("8 bytes"));
        let n = u32::from(ch[1]) | u32::from(ch[2]) << 8;
        ops.push(match ch[0] % 9 {
            0 => HostileOp::Alloc(ch[1] % 6),
            1 => HostileOp::Free(n),
            2 | 3 => HostileOp::Install(vec![HostileInstall {
                table: u32::from(ch[1]),
                index: u16::from(ch[2]) | u16::from(ch[3] & 3) << 8,
                level: ch[3] >> 2 & 7,
                reserved: u8::from(ch[3] >> 5 == 7),
                entry: match ch[0] >> 4 & 3 {
                    0 => HostileEntry::Raw(w),
                    1 => HostileEntry::Pointer {
                        handle: w as u32,
                        flags: (w >> 32) as u16,
                    },
                    _ => HostileEntry::Leaf {
                        gpa: w & 0x7fff_ffff,
                        flags: (w >> 48) as u16,
                    },
                },
            }]),
            4 => {
                let x = take(24).unwrap_or_else(|| vec![0; 24]);
                let word = |i: usize| u64::from_le_bytes(x[i..i + 8].try_into().expect("8 bytes"));
                let long = ch[3] & 1 != 0;
                HostileOp::Load {
                    root: n,
                    cr0: BASE_CR0 ^ word(0),
                    cr4: BASE_CR4 ^ word(8),
                    efer: base_efer(long) ^ word(16),
                    // INTERCEPT_INVLPG, or a bit that is still reserved.
                    flags: u32::from(ch[3] >> 2) & 3,
                    non_global: ch[3] & 2 != 0,
                }
            }
            5 => HostileOp::Probe {
                la: w,
                access: HwAccess {
                    write: ch[3] & 1 != 0,
                    fetch: ch[3] & 2 != 0,
                    user: ch[3] & 4 != 0,
                    implicit: ch[3] & 8 != 0,
                    ac: ch[3] & 16 != 0,
                },
            },
            6 => HostileOp::LoadNested(n),
            7 => HostileOp::ProbeNested {
                gpa: w & 0x7fff_ffff,
                write: ch[3] & 1 != 0,
            },
            _ => HostileOp::SetKeys {
                pkru: w as u32,
                pkrs: (w >> 32) as u32,
            },
        });
    }
    ops
}

/// Decodes fuzzer bytes into hostile steps ([`decode_ops`]) and runs
/// them; panics on a breach (the `sim/fuzz` target).
pub fn fuzz_bytes(data: &[u8]) {
    let ops = decode_ops(data);
    for format in [TableFormat::X86, TableFormat::Ept] {
        if let Err(v) = run_with(format, &ops) {
            panic!("isolation breached ({format:?} tables): {}", v.0);
        }
    }
}
