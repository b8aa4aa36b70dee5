//! Nested paging (AMD NPT, Intel EPT): the mmu-server owns the
//! guest-physical map. At start it allocates the nested tables from the
//! stub, installs them through the checked install path, mapping guest RAM
//! one to one, **eagerly and whole** (2 MiB leaves where the format has
//! them, 4 KiB leaves otherwise), and names the root to the stub
//! ([`crate::MmuPlatform::load_nested`]; natively the resume flag
//! `SET_NESTED_ROOT`). The guest's own tables are walked by the hardware;
//! nothing is shadowed, and no nested page fault on RAM is expected: a
//! nested fault outside RAM is MMIO, which the stub hands to the
//! vmm-server.
//!
//! The two formats: NPT entries are x86 entries (NPT treats every nested
//! access as a user access, so every level carries U/S); EPT entries allow
//! read, write and execute, and leaves are write-back memory that ignores
//! the guest's PAT.

use alloc::vec::Vec;

use ipc_proto::mmu::{ept, Install, TableHandle, INSTALL_BATCH_MAX};

use crate::platform::{MmuPlatform, PlatformError};
use crate::stats::MmuStats;
use crate::walk::pte;

/// The entry format of the nested tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NestedFormat {
    /// AMD NPT: four-level x86 entries, 2 MiB leaves.
    Npt,
    /// Intel EPT, with 2 MiB leaves when the CPU has them.
    Ept {
        /// The CPU's EPT has 2 MiB pages.
        large_pages: bool,
    },
}

impl NestedFormat {
    /// A non-leaf entry's flags.
    fn non_leaf(self) -> u64 {
        match self {
            Self::Npt => pte::P | pte::RW | pte::US | pte::A,
            Self::Ept { .. } => ept::READ | ept::WRITE | ept::EXEC,
        }
    }

    /// A leaf entry's flags (`large`: a 2 MiB leaf).
    fn leaf(self, large: bool) -> u64 {
        match self {
            Self::Npt => {
                pte::P | pte::RW | pte::US | pte::A | pte::D | if large { pte::PS } else { 0 }
            }
            Self::Ept { .. } => {
                ept::READ
                    | ept::WRITE
                    | ept::EXEC
                    | ept::MEMORY_TYPE_WB
                    | ept::IGNORE_PAT
                    | if large { ept::LARGE } else { 0 }
            }
        }
    }

    fn large_pages(self) -> bool {
        match self {
            Self::Npt => true,
            Self::Ept { large_pages } => large_pages,
        }
    }
}

/// The nested tables of one VM.
pub struct NestedMap {
    /// The level-4 root.
    pub root: TableHandle,
    tables: Vec<TableHandle>,
}

impl NestedMap {
    /// Builds the map of `[0, ram_bytes)` in `format` and installs it.
    pub fn build<P: MmuPlatform + ?Sized>(
        p: &mut P,
        ram_bytes: u64,
        format: NestedFormat,
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
        let non_leaf = |h: TableHandle| (u64::from(h) << 12) | format.non_leaf();
        let root = alloc(p, 4)?;
        let mut pdpt = None;
        let mut gb = 0u64;
        while gb << 30 < ram_bytes {
            if gb.is_multiple_of(512) {
                let t = alloc(p, 3)?;
                batch.push(ins(root, 4, gb / 512, non_leaf(t)));
                pdpt = Some(t);
            }
            let pd = alloc(p, 2)?;
            let pdpt_h = pdpt.expect("a PDPT for this GiB");
            batch.push(ins(pdpt_h, 3, gb % 512, non_leaf(pd)));
            for c in 0..512u64 {
                let base = (gb << 30) + (c << 21);
                if base >= ram_bytes {
                    break;
                }
                if format.large_pages() && base + (1 << 21) <= ram_bytes {
                    batch.push(ins(pd, 2, c, base | format.leaf(true)));
                } else {
                    let pt = alloc(p, 1)?;
                    batch.push(ins(pd, 2, c, non_leaf(pt)));
                    for i in 0..512u64 {
                        let a = base + (i << 12);
                        if a >= ram_bytes {
                            break;
                        }
                        batch.push(ins(pt, 1, i, a | format.leaf(false)));
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
