//! Nested paging (AMD NPT): the mmu-server owns the guest-physical map and
//! installs it once, as four-level nested tables mapping guest RAM one to
//! one (2 MiB pages where a whole 2 MiB fits, 4 KiB pages for the rest).
//! The guest's own tables are walked by the hardware; nothing is shadowed.
//! NPT treats every nested access as a user access, so leaves carry U/S.

use alloc::vec::Vec;

use ipc_proto::mmu::{Install, TableHandle, INSTALL_BATCH_MAX};

use crate::platform::{MmuPlatform, PlatformError};
use crate::stats::MmuStats;
use crate::walk::pte;

const NON_LEAF: u64 = pte::P | pte::RW | pte::US | pte::A;
const LEAF: u64 = pte::P | pte::RW | pte::US | pte::A | pte::D;

/// The nested tables of one VM.
pub struct NestedMap {
    /// The level-4 root.
    pub root: TableHandle,
    tables: Vec<TableHandle>,
}

impl NestedMap {
    /// Builds the map of `[0, ram_bytes)` and installs it.
    pub fn build<P: MmuPlatform + ?Sized>(
        p: &mut P,
        ram_bytes: u64,
        stats: &mut MmuStats,
    ) -> Result<Self, PlatformError> {
        let mut batch: Vec<Install> = Vec::new();
        let mut tables = Vec::new();
        let mut alloc = |p: &mut P, level: u8| -> Result<TableHandle, PlatformError> {
            let h = p.alloc_table(level)?;
            tables.push(h);
            Ok(h)
        };
        let ins = |table, level, index: u64, entry| Install {
            table,
            index: index as u16,
            level,
            reserved: 0,
            entry,
        };
        let root = alloc(p, 4)?;
        let mut pdpt = None;
        let mut gb = 0u64;
        while gb << 30 < ram_bytes {
            if gb.is_multiple_of(512) {
                let t = alloc(p, 3)?;
                batch.push(ins(root, 4, gb / 512, (u64::from(t) << 12) | NON_LEAF));
                pdpt = Some(t);
            }
            let pd = alloc(p, 2)?;
            let pdpt_h = pdpt.expect("a PDPT for this GiB");
            batch.push(ins(pdpt_h, 3, gb % 512, (u64::from(pd) << 12) | NON_LEAF));
            for c in 0..512u64 {
                let base = (gb << 30) + (c << 21);
                if base >= ram_bytes {
                    break;
                }
                if base + (1 << 21) <= ram_bytes {
                    batch.push(ins(pd, 2, c, base | LEAF | pte::PS));
                } else {
                    let pt = alloc(p, 1)?;
                    batch.push(ins(pd, 2, c, (u64::from(pt) << 12) | NON_LEAF));
                    for i in 0..512u64 {
                        let a = base + (i << 12);
                        if a >= ram_bytes {
                            break;
                        }
                        batch.push(ins(pt, 1, i, a | LEAF));
                    }
                }
            }
            gb += 1;
        }
        for chunk in batch.chunks(INSTALL_BATCH_MAX) {
            stats.installs += chunk.len() as u64;
            stats.install_batches += 1;
            p.install(chunk)?;
        }
        stats.tables_live = tables.len() as u64;
        stats.misses = tables.len() as u64;
        Ok(Self { root, tables })
    }

    /// Number of nested tables.
    pub fn tables(&self) -> usize {
        self.tables.len()
    }
}
