//! What the mmu-server needs from the platform it runs on: the stub's
//! install ABI (`ipc_proto::mmu`), TLB flushes and guest memory. The
//! native ring-3 server implements it with system calls (`ShadowAlloc`,
//! `ShadowFree`, `MmuInstall`, `MmuFlush`) and the guest-RAM window; `sim`
//! implements it in software.
//!
//! The hardware paging state of a shadowed guest (root and control
//! registers) is not set through this trait: it travels in the `Resume`
//! the mmu-server returns (`ResumeFlags::SET_PAGING`), so that it takes
//! effect exactly when the guest is entered again. The nested root is set
//! once, with [`MmuPlatform::load_nested`].

use core::fmt;

use ipc_proto::mmu::{Install, InstallError, TableHandle};

use crate::walk::GuestMemory;

/// The format of the tables the hardware walks in shadow mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShadowFormat {
    /// PAE: a level-3 root of four PDPTEs (which accept only P, PWT, PCD
    /// and the address; the hardware may load them when the root is
    /// loaded), then levels 2 and 1. For guests with paging off, 32-bit
    /// paging or PAE paging.
    Pae,
    /// Four-level long-mode tables, root at level 4. For long-mode guests.
    FourLevel,
}

/// A TLB flush.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flush {
    /// Every translation of this VM, global ones included.
    All,
    /// The translations of one linear address, global ones included
    /// (INVLPG semantics).
    Page(u64),
}

/// Why the platform refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlatformError {
    /// No table could be allocated (out of handles or frames).
    OutOfTables,
    /// The stub refused entry `index` of an install batch (the entries
    /// before it were applied).
    Refused {
        /// Index in the batch.
        index: usize,
        /// The stub's reason.
        error: InstallError,
    },
    /// Freeing a handle that is not a live table.
    UnknownTable,
}

impl fmt::Display for PlatformError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OutOfTables => f.write_str("the stub has no shadow table left to hand out"),
            Self::Refused { index, error } => write!(
                f,
                "the stub refused install {index} of a batch: {}",
                error.describe()
            ),
            Self::UnknownTable => f.write_str("freed a table the stub does not know"),
        }
    }
}

/// The platform: stub calls and guest memory.
pub trait MmuPlatform: GuestMemory {
    /// Bytes of guest RAM, from guest-physical 0.
    fn guest_ram_bytes(&self) -> u64;
    /// A new, zeroed table at `level` (1..=4).
    fn alloc_table(&mut self, level: u8) -> Result<TableHandle, PlatformError>;
    /// Gives a table back. No installed entry may point to it any more.
    fn free_table(&mut self, table: TableHandle) -> Result<(), PlatformError>;
    /// Writes a batch of entries (at most `ipc_proto::mmu::INSTALL_BATCH_MAX`),
    /// in order, after the stub's checks.
    fn install(&mut self, batch: &[Install]) -> Result<(), PlatformError>;
    /// Nested mode: loads the nested (NPT, EPT) root, a four-level table
    /// whose entries are installed. The native server passes it to the
    /// stub with the resume flag `SET_NESTED_ROOT` of its first entry; the
    /// guest does not run before.
    fn load_nested(&mut self, root: TableHandle);
    /// Flushes translations.
    fn flush_tlb(&mut self, what: Flush);
}
