//! Building guest page tables in guest memory, in every paging mode: what
//! a guest kernel would do, for tests and workloads.

use mmu_server::walk::{pte, GuestMemory};
use mmu_server::PagingMode;

/// Allocates table frames from a range and writes entries in the format of
/// one paging mode.
pub struct GuestTables {
    /// The paging mode the tables are for.
    pub mode: PagingMode,
    next: u64,
    end: u64,
    /// Every frame (guest-physical address) handed out as a table.
    pub frames: Vec<u64>,
}

/// Where an entry lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryRef {
    /// Guest-physical address of the entry.
    pub gpa: u64,
    /// Its size in bytes (4 in 32-bit paging, else 8).
    pub size: u64,
    /// Its level.
    pub level: u8,
}

impl GuestTables {
    /// Tables taken from guest-physical `[start, end)` (page aligned).
    pub fn new(mode: PagingMode, start: u64, end: u64) -> Self {
        Self {
            mode,
            next: start,
            end,
            frames: Vec::new(),
        }
    }

    /// A zeroed frame for a table.
    pub fn alloc<M: GuestMemory + ?Sized>(&mut self, mem: &mut M) -> u64 {
        assert!(self.next < self.end, "out of table frames");
        let f = self.next;
        self.next += 4096;
        assert!(mem.write_phys(f, &[0u8; 4096]).is_ok());
        self.frames.push(f);
        f
    }

    /// A new, empty address space: its CR3 value. (PAE: the PDPT fills the
    /// first 32 bytes of a fresh frame.)
    pub fn new_space<M: GuestMemory + ?Sized>(&mut self, mem: &mut M) -> u64 {
        self.alloc(mem)
    }

    /// Entry size in bytes.
    pub fn entry_size(&self) -> u64 {
        if self.mode == PagingMode::Bits32 {
            4
        } else {
            8
        }
    }

    /// The top level of the mode.
    pub fn top(&self) -> u8 {
        match self.mode {
            PagingMode::Long => 4,
            PagingMode::Pae => 3,
            _ => 2,
        }
    }

    fn index(&self, la: u64, level: u8) -> u64 {
        match (self.mode, level) {
            (PagingMode::Bits32, l) => (la >> (12 + 10 * (u32::from(l) - 1))) & 0x3ff,
            (PagingMode::Pae, 3) => (la >> 30) & 3,
            (_, l) => (la >> (12 + 9 * (u32::from(l) - 1))) & 0x1ff,
        }
    }

    fn table_of(&self, cr3: u64) -> u64 {
        match self.mode {
            PagingMode::Pae => cr3 & 0xffff_ffe0,
            _ => cr3 & !0xfff,
        }
    }

    fn read<M: GuestMemory + ?Sized>(&self, mem: &mut M, gpa: u64) -> u64 {
        let mut b = [0u8; 8];
        assert!(mem
            .read_phys(gpa, &mut b[..self.entry_size() as usize])
            .is_ok());
        u64::from_le_bytes(b)
    }

    /// Writes an entry.
    pub fn write<M: GuestMemory + ?Sized>(&self, mem: &mut M, gpa: u64, e: u64) {
        assert!(mem
            .write_phys(gpa, &e.to_le_bytes()[..self.entry_size() as usize])
            .is_ok());
    }

    /// A non-leaf entry pointing to `table` with `flags` (PAE PDPTEs keep
    /// only P, PWT and PCD).
    pub fn non_leaf(&self, level: u8, table: u64, flags: u64) -> u64 {
        if self.mode == PagingMode::Pae && level == 3 {
            table | (flags & (pte::P | pte::PWT | pte::PCD)) | pte::P
        } else {
            table | flags | pte::P
        }
    }

    /// A leaf entry at `level` mapping guest-physical `gpa` (PS is added
    /// above level 1; 4 MiB pages carry PSE-36 bits).
    pub fn leaf(&self, level: u8, gpa: u64, flags: u64) -> u64 {
        match (self.mode, level) {
            (_, 1) => (gpa & !0xfff) | flags,
            (PagingMode::Bits32, _) => {
                (gpa & 0xffc0_0000) | (((gpa >> 32) & 0xff) << 13) | flags | pte::PS
            }
            (_, l) => (gpa & !((1u64 << (12 + 9 * (u32::from(l) - 1))) - 1)) | flags | pte::PS,
        }
    }

    /// The entry at `level` on the path of `la`, following present
    /// non-leaf entries; with `create`, missing tables are made with
    /// `non_leaf_flags`. `None` when the path stops above `level`.
    pub fn entry<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &mut M,
        cr3: u64,
        la: u64,
        level: u8,
        create: Option<u64>,
    ) -> Option<EntryRef> {
        let mut table = self.table_of(cr3);
        let mut l = self.top();
        loop {
            let gpa = table + self.index(la, l) * self.entry_size();
            if l == level {
                return Some(EntryRef {
                    gpa,
                    size: self.entry_size(),
                    level,
                });
            }
            let e = self.read(mem, gpa);
            let large = e & pte::PS != 0
                && matches!(
                    (self.mode, l),
                    (PagingMode::Long, 3)
                        | (PagingMode::Long | PagingMode::Pae | PagingMode::Bits32, 2)
                );
            if e & pte::P == 0 || large {
                let flags = create?;
                let t = self.alloc(mem);
                self.write(mem, gpa, self.non_leaf(l, t, flags));
                table = t;
            } else {
                table = match self.mode {
                    PagingMode::Bits32 => e & 0xffff_f000,
                    // MAXPHYADDR 40: higher bits are reserved, not address.
                    _ => e & 0x0000_00ff_ffff_f000,
                };
            }
            l -= 1;
        }
    }

    /// Maps `la` with a leaf at `level` (1 = 4 KiB) to `gpa`, making the
    /// tables above with `non_leaf_flags`.
    #[allow(clippy::too_many_arguments)] // the entry's parts, as a page-table writer names them
    pub fn map<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &mut M,
        cr3: u64,
        la: u64,
        level: u8,
        gpa: u64,
        flags: u64,
        non_leaf_flags: u64,
    ) {
        let r = self
            .entry(mem, cr3, la, level, Some(non_leaf_flags))
            .expect("created");
        let e = self.leaf(level, gpa, flags);
        self.write(mem, r.gpa, e);
    }

    /// Points the entry at `level` for `la` to an existing table.
    pub fn link<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &mut M,
        cr3: u64,
        la: u64,
        level: u8,
        table: u64,
        flags: u64,
    ) {
        let r = self
            .entry(mem, cr3, la, level, Some(flags))
            .expect("created");
        let e = self.non_leaf(level, table, flags);
        self.write(mem, r.gpa, e);
    }
}
