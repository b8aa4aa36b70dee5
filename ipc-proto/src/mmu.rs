//! The install path: how the mmu-server asks the stub to write entries into
//! the shadow (or nested) page tables the hardware walks.
//!
//! The server never sees a host-physical address. It refers to shadow
//! tables by [`TableHandle`]s the stub handed out, and to guest memory by
//! guest-physical addresses; the stub checks every entry and rewrites its
//! address field before the hardware can see it:
//!
//! - a **non-leaf** entry's address field (bits 12..=51) holds the child's
//!   handle; the child must exist and be one level below the table;
//! - a **leaf** entry's address field holds a guest-physical address; the
//!   whole page it maps (4 KiB, 2 MiB or 1 GiB) must lie in this VM's RAM;
//! - a non-present entry is always accepted, as it is.
//!
//! Entries use the 64-bit format shared by PAE and four-level paging
//! ([`TableFormat::X86`]: present = bit 0; also AMD's nested tables),
//! except the nested tables of a VMX guest, which are EPT tables
//! ([`TableFormat::Ept`]: present = any of read, write, execute, bits 0-2;
//! bit 7 a 2 MiB or 1 GiB leaf at levels 2 and 3, reserved at level 4, as
//! PS is; a leaf's memory type in bits 3-5, see [`ept`]). A VM's tables all
//! have one format, fixed by the stub at boot from the VM's MMU mode and
//! virtualization extension, so that no table can be read in a format
//! other than the one its entries were checked in.

use crate::vcpu::wire;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// A shadow (or nested) page table the stub allocated for this VM.
pub type TableHandle = u32;

/// Most shadow tables a VM can hold at once (16 MiB of tables).
pub const MAX_SHADOW_TABLES: u32 = 4096;

/// Present bit of an entry.
pub const PTE_PRESENT: u64 = 1 << 0;
/// Page-size bit: a leaf at level 2 (2 MiB) or 3 (1 GiB).
pub const PTE_PS: u64 = 1 << 7;
/// The address field of an entry (bits 12..=51).
pub const PTE_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// How the hardware reads the entries of a VM's tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableFormat {
    /// PAE / four-level paging entries (shadow tables, AMD NPT).
    X86,
    /// Intel EPT entries (the nested tables of a VMX guest).
    Ept,
}

impl TableFormat {
    /// Whether the hardware takes `entry` as present.
    pub fn present(self, entry: u64) -> bool {
        match self {
            Self::X86 => entry & PTE_PRESENT != 0,
            Self::Ept => entry & ept::PRESENT_MASK != 0,
        }
    }
}

/// EPT entry bits (Intel SDM vol. 3C, 29.3.2).
pub mod ept {
    /// Reads allowed.
    pub const READ: u64 = 1 << 0;
    /// Writes allowed.
    pub const WRITE: u64 = 1 << 1;
    /// Instruction fetches allowed.
    pub const EXEC: u64 = 1 << 2;
    /// Any of these makes an entry present.
    pub const PRESENT_MASK: u64 = READ | WRITE | EXEC;
    /// Memory type write-back (6) in a leaf's bits 3-5.
    pub const MEMORY_TYPE_WB: u64 = 6 << 3;
    /// Ignore the guest's PAT in a leaf.
    pub const IGNORE_PAT: u64 = 1 << 6;
    /// A 2 MiB (level 2) or 1 GiB (level 3) leaf.
    pub const LARGE: u64 = 1 << 7;
    /// The leaf's memory type, bits 3-5.
    pub const MEMORY_TYPE: u64 = 7 << 3;
    /// Accessed (with A/D flags in the EPTP; ignored otherwise).
    pub const ACCESSED: u64 = 1 << 8;
    /// Dirty, in a leaf (as for `ACCESSED`).
    pub const DIRTY: u64 = 1 << 9;
}

wire! {
    /// One entry to write.
    pub struct Install {
        /// The table to write into.
        pub table: TableHandle,
        /// Entry index, 0..512.
        pub index: u16,
        /// The table's level: 1 (page table) to 4 (PML4); must match the
        /// level the table was allocated with.
        pub level: u8,
        /// Reserved, zero.
        pub reserved: u8,
        /// The entry, with the address field as described in the module docs.
        pub entry: u64,
    }
}

/// Most installs in one batch.
pub const INSTALL_BATCH_MAX: usize = 255;

/// The install page shared by the mmu-server and the stub: the server
/// fills `entries[..count]` and makes one `MmuInstall` call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct InstallPage {
    /// Number of valid entries.
    pub count: u32,
    /// Reserved, zero.
    pub reserved: u32,
    /// The batch.
    pub entries: [Install; INSTALL_BATCH_MAX],
}

/// Why the stub refused an install. The batch is applied up to the first
/// refused entry, whose index the call returns with the error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum InstallError {
    /// `count` is larger than [`INSTALL_BATCH_MAX`].
    BatchTooLarge = 1,
    /// The table handle is not a live shadow table of this VM.
    UnknownTable = 2,
    /// `level` is not the table's level, or not 1..=4.
    WrongLevel = 3,
    /// `index` is 512 or more, or `reserved` is not zero.
    BadIndex = 4,
    /// A non-leaf names a handle that is not a live table one level down.
    BadChild = 5,
    /// A leaf maps memory outside this VM's RAM.
    OutsideGuestMemory = 6,
    /// PS (bit 7) set at level 4, where it is reserved.
    BadPageSize = 7,
    /// A present entry 0-3 of the PAE root the hardware walks from sets a
    /// bit reserved in PAE PDPTEs (1, 2, 5-8, 52-63): the next entry would
    /// fail, as VM entry and VMRUN load the PDPTEs and check them.
    ReservedPdpteBits = 8,
    /// The entry sets a bit outside the allowlist of its format and kind
    /// (leaf or not, level), or is an EPT misconfiguration (write without
    /// read, a reserved memory type).
    ReservedBits = 9,
}

impl InstallError {
    /// The error for a raw code, if known.
    pub fn from_raw(raw: u32) -> Option<Self> {
        [
            Self::BatchTooLarge,
            Self::UnknownTable,
            Self::WrongLevel,
            Self::BadIndex,
            Self::BadChild,
            Self::OutsideGuestMemory,
            Self::BadPageSize,
            Self::ReservedPdpteBits,
            Self::ReservedBits,
        ]
        .into_iter()
        .find(|e| *e as u32 == raw)
    }

    /// A sentence a user can act on.
    pub fn describe(self) -> &'static str {
        match self {
            Self::BatchTooLarge => "install batch larger than INSTALL_BATCH_MAX",
            Self::UnknownTable => "install into a table the stub did not hand out",
            Self::WrongLevel => "install level differs from the table's level",
            Self::BadIndex => "install index out of range or reserved bits set",
            Self::BadChild => "non-leaf entry does not point to a shadow table one level down",
            Self::OutsideGuestMemory => "leaf entry maps memory outside the VM's RAM",
            Self::BadPageSize => "page-size bit set in a level-4 entry",
            Self::ReservedPdpteBits => "PAE PDPTE of the live root with reserved bits set",
            Self::ReservedBits => "entry sets a bit outside its format's allowlist",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn install_layout_is_pinned() {
        assert_eq!(size_of::<Install>(), 16);
        assert_eq!(offset_of!(Install, table), 0);
        assert_eq!(offset_of!(Install, index), 4);
        assert_eq!(offset_of!(Install, level), 6);
        assert_eq!(offset_of!(Install, reserved), 7);
        assert_eq!(offset_of!(Install, entry), 8);
    }

    #[test]
    fn install_errors_round_trip() {
        for raw in 1..=9 {
            assert_eq!(InstallError::from_raw(raw).map(|e| e as u32), Some(raw));
        }
        assert_eq!(InstallError::from_raw(0), None);
    }

    #[test]
    fn install_page_fits_a_page() {
        assert_eq!(offset_of!(InstallPage, count), 0);
        assert_eq!(offset_of!(InstallPage, entries), 8);
        assert_eq!(size_of::<InstallPage>(), 8 + 16 * INSTALL_BATCH_MAX);
        assert!(size_of::<InstallPage>() <= crate::PAGE_SIZE as usize);
    }
}
