//! A hostile mmu-server: random allocations, frees, install batches and
//! paging loads against the simulated stub. Whatever it does, the tables
//! the hardware can reach must map only this VM's RAM and point only to
//! shadow frames one level down ([`Sim::check_isolation`]), and the
//! hardware walker must never find otherwise. The same holds for nested
//! tables, in the x86 (NPT) and the EPT format ([`run_with`]).

use ipc_proto::mmu::{Install, TableFormat, TableHandle};
use ipc_proto::PagingState;
use mmu_server::walk::Access;
use mmu_server::MmuPlatform;

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
    /// Load the n-th handle as the root, four-level or PAE.
    Load {
        /// Which handle.
        root: u32,
        /// Four-level (else PAE).
        long: bool,
    },
    /// Let the hardware translate a linear address.
    Probe {
        /// The address.
        la: u64,
        /// A write access at CPL 3.
        write: bool,
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

/// What a hostile run did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostileReport {
    /// Entries the stub accepted.
    pub accepted: u64,
    /// Entries the stub refused.
    pub refused: u64,
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
            HostileOp::Load { root, long } if shadow_ok => {
                let lme = if *long { (1 << 8) | (1 << 10) } else { 0 };
                let _ = sim.load_paging(&PagingState {
                    cr0: 0x8001_0001,
                    cr4: 1 << 5,
                    efer: lme | (1 << 11),
                    root: pick(&handles, *root),
                    reserved: 0,
                });
            }
            HostileOp::Probe { la, write } if shadow_ok => {
                let a = if *write {
                    Access::write(true)
                } else {
                    Access::read(false)
                };
                let _ = sim.translate(*la, a);
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

/// Decodes fuzzer bytes into hostile steps and runs them; panics on a
/// breach (the `sim/fuzz` target).
pub fn fuzz_bytes(data: &[u8]) {
    let mut ops = Vec::new();
    let mut c = data.chunks_exact(12);
    for ch in &mut c {
        let w = u64::from_le_bytes(ch[4..12].try_into().expect("8 bytes"));
        let n = u32::from(ch[1]) | u32::from(ch[2]) << 8;
        ops.push(match ch[0] % 8 {
            0 => HostileOp::Alloc(ch[1] % 6),
            1 => HostileOp::Free(n),
            2 | 3 => HostileOp::Install(vec![HostileInstall {
                table: u32::from(ch[1]),
                index: u16::from(ch[2]) | u16::from(ch[3] & 3) << 8,
                level: ch[3] >> 2 & 7,
                reserved: u8::from(ch[3] >> 5 == 7),
                entry: match ch[0] >> 3 & 3 {
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
            4 => HostileOp::Load {
                root: n,
                long: ch[3] & 1 != 0,
            },
            5 => HostileOp::Probe {
                la: w,
                write: ch[3] & 1 != 0,
            },
            6 => HostileOp::LoadNested(n),
            _ => HostileOp::ProbeNested {
                gpa: w & 0x7fff_ffff,
                write: ch[3] & 1 != 0,
            },
        });
    }
    for format in [TableFormat::X86, TableFormat::Ept] {
        if let Err(v) = run_with(format, &ops) {
            panic!("isolation breached ({format:?} tables): {}", v.0);
        }
    }
}
