//! The shadow-table cache.
//!
//! Every shadow table is keyed by a [`ShadowKey`]: the guest frame it
//! shadows (or, for a *direct* table, the first guest frame it maps) and a
//! [`Role`] that carries everything else that changes what the table must
//! contain. Tables survive CR3 loads and TLB flushes; a CR3 load only looks
//! up the root for the new CR3, and a fault only builds what is missing on
//! its path.
//!
//! Shadow formats (see `README.md`): long-mode guests get four-level shadow
//! tables that mirror theirs one to one. Every other guest runs on PAE
//! shadow tables (the hardware has CR4.PAE forced on):
//! - PAE guests: the shadow PDPT is built from the guest's PDPTE registers
//!   ([`TableKind::PaeRoot`]), then one shadow table per guest table;
//! - 32-bit guests: a synthetic PDPT ([`TableKind::Root32`]) whose four
//!   entries point to the four *quadrants* of the guest page directory
//!   (256 guest PDEs each, 2 shadow PDEs per guest PDE), and two shadow
//!   page tables (quadrants) per guest page table;
//! - paging off: an identity map built of direct tables (CR0.PG forced on:
//!   "paged real mode" on SVM).
//!
//! Guest large pages (2 MiB, 4 MiB, 1 GiB) are shadowed by direct tables of
//! 4 KiB entries, so that write protection and MMIO holes work at 4 KiB
//! granularity. Non-leaf shadow entries grant everything; the permissions
//! of the upper guest levels travel in the child's role (`access`) and
//! land in the shadow leaves, as in KVM.
//!
//! Coherence: every guest frame that some cached shadow table shadows is
//! write-protected in every shadow leaf that maps it. A guest write to
//! such a frame is emulated by the mmu-server, which then re-derives the
//! affected shadow entries ([`ShadowCache::guest_wrote`]), or, for a leaf
//! table written often enough between flushes, makes the frame unsync
//! ([`ShadowCache::try_unsync`]): writable, its shadow possibly stale
//! until the guest's next flush syncs it ([`ShadowCache::sync_all`]).
//!
//! Prefetch (see [`ShadowCache::set_prefetch`]): a fault that fills a leaf
//! also fills the neighbours a fault could fill — guest entries present,
//! accessed and valid, writable only when dirty — and an emulated write
//! that makes such an entry installs it at once; so the shadow still
//! equals the guest's tables, A/D bits included, with fewer faults.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;

use ipc_proto::mmu::{Install, TableHandle, INSTALL_BATCH_MAX, MAX_SHADOW_TABLES};

use crate::platform::{Flush, MmuPlatform, PlatformError, ShadowFormat};
use crate::regs::{CpuModel, GuestCtl, PagingMode};
use crate::stats::MmuStats;
use crate::walk::{
    acc, entry_access, is_leaf, leaf_base, pte, reserved_bits, table_base, Access, Translation,
};

/// What kind of table a shadow table is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TableKind {
    /// Shadows a guest page table (its frame is write-protected).
    Guest,
    /// Maps guest memory directly: a guest large page, or paging off.
    Direct,
    /// The PDPT of a PAE guest, built from its PDPTE registers.
    PaeRoot,
    /// The synthetic PDPT of a 32-bit guest.
    Root32,
}

/// What, besides the guest frame, decides a shadow table's contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Role {
    /// Shadow level, 1..=4.
    pub level: u8,
    /// The guest paging mode (the format of the guest table).
    pub mode: PagingMode,
    /// What the table shadows.
    pub kind: TableKind,
    /// 32-bit guests: which part of the guest table (0..=3 for a page
    /// directory, 0..=1 for a page table). PAE roots: which 32-byte PDPT
    /// of the frame (CR3 bits 11:5).
    pub quadrant: u8,
    /// Permissions granted by the guest levels above ([`acc`] bits); for
    /// direct tables, those of the whole walk down to the large page.
    pub access: u8,
    /// Direct tables: the large page's D bit (without it the shadow maps
    /// it read-only, so that the first write reaches the mmu-server).
    pub dirty: bool,
    /// Direct tables: the large page's G bit.
    pub global: bool,
    /// The guest's CR0.WP.
    pub wp: bool,
    /// NX enabled in the guest (EFER.NXE in PAE or long mode).
    pub nxe: bool,
    /// 32-bit guests: CR4.PSE.
    pub pse: bool,
}

/// The cache key of a shadow table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShadowKey {
    /// Guest frame number: the guest table (guest and 32-bit root kinds),
    /// the PDPT's frame (PAE roots), or the first frame mapped (direct).
    pub gfn: u64,
    /// The role.
    pub role: Role,
}

/// The hardware format of the tables shadowing a guest in `mode`.
pub fn format_for(mode: PagingMode) -> ShadowFormat {
    if mode == PagingMode::Long {
        ShadowFormat::FourLevel
    } else {
        ShadowFormat::Pae
    }
}

/// The key of the root table for the guest's current CR3 and mode.
pub fn root_key(ctl: &GuestCtl, cpu: &CpuModel) -> ShadowKey {
    let mode = ctl.mode();
    let role = Role {
        level: 3,
        mode,
        kind: TableKind::Guest,
        quadrant: 0,
        access: acc::ALL,
        dirty: false,
        global: false,
        wp: ctl.wp(),
        nxe: ctl.nx_enabled(),
        pse: mode == PagingMode::Bits32 && ctl.pse(),
    };
    match mode {
        PagingMode::Off => ShadowKey {
            gfn: 0,
            role: Role {
                kind: TableKind::Direct,
                dirty: true,
                wp: true,
                nxe: false,
                ..role
            },
        },
        PagingMode::Bits32 => ShadowKey {
            gfn: (ctl.cr3 & 0xffff_f000) >> 12,
            role: Role {
                kind: TableKind::Root32,
                ..role
            },
        },
        PagingMode::Pae => ShadowKey {
            gfn: (ctl.cr3 & 0xffff_f000) >> 12,
            role: Role {
                kind: TableKind::PaeRoot,
                quadrant: ((ctl.cr3 >> 5) & 0x7f) as u8,
                ..role
            },
        },
        PagingMode::Long => ShadowKey {
            gfn: (ctl.cr3 & cpu.frame_mask()) >> 12,
            role: Role { level: 4, ..role },
        },
    }
}

/// Index of the shadow entry that translates `la` in a table with `key`.
pub fn shadow_index(key: &ShadowKey, la: u64) -> usize {
    let l = u32::from(key.role.level);
    ((la >> (12 + 9 * (l - 1))) & 0x1ff) as usize
}

/// The shadow entries of a table with `key` that derive from guest entry
/// `gi` of the guest table (none, one, or two for a 32-bit PDE).
fn shadow_indices(key: &ShadowKey, gi: usize) -> ([usize; 2], usize) {
    let q = usize::from(key.role.quadrant);
    match (key.role.mode, key.role.level) {
        (PagingMode::Bits32, 2) if gi / 256 == q => {
            let j = 2 * (gi % 256);
            ([j, j + 1], 2)
        }
        (PagingMode::Bits32, 1) if gi / 512 == q => ([gi % 512, 0], 1),
        (PagingMode::Bits32, _) => ([0, 0], 0),
        _ if gi < 512 => ([gi, 0], 1),
        _ => ([0, 0], 0),
    }
}

/// What a shadow entry should be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Want {
    /// Not present.
    Absent,
    /// A pointer to the table with this key.
    Child(ShadowKey),
    /// A 4 KiB leaf.
    Leaf {
        frame: u64,
        access: u8,
        dirty: bool,
        global: bool,
    },
}

struct Table {
    key: ShadowKey,
    /// The entries as installed (ABI form: handles in non-leaves,
    /// guest-physical addresses in leaves).
    entries: Box<[u64; 512]>,
    /// Entries of other tables that point to this one.
    parents: Vec<(TableHandle, u16)>,
    last_used: u64,
    /// PAE roots: the PDPTE registers the entries derive from.
    pdptes: [u64; 4],
}

#[derive(Default)]
struct Frame {
    /// Guest-kind tables shadowing this frame: while there is one, the
    /// frame is write-protected.
    tables: Vec<TableHandle>,
    /// Emulated writes since a walk last used the frame as a table.
    writes: u32,
    /// Unsync: not write-protected, the guest writes it directly and its
    /// tables' shadow entries may be stale until [`ShadowCache::sync`].
    unsync: bool,
    /// Protected writes to the frame since the last flush (`epoch`).
    flush_writes: u32,
    /// The [`ShadowCache`] epoch `flush_writes` counts in.
    epoch: u64,
}

/// Why the cache could not do what was asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheError {
    /// The platform refused.
    Platform(PlatformError),
    /// Every table is in use by the current walk: the budget is too small.
    BudgetTooSmall,
    /// The platform handed out a handle beyond `MAX_SHADOW_TABLES`.
    BadHandle,
    /// The shadow and the guest walk disagree (a bug).
    Inconsistent,
}

impl From<PlatformError> for CacheError {
    fn from(e: PlatformError) -> Self {
        Self::Platform(e)
    }
}

/// The shadow tables of one VM.
pub struct ShadowCache {
    tables: Vec<Option<Table>>,
    by_key: BTreeMap<ShadowKey, TableHandle>,
    frames: BTreeMap<u64, Frame>,
    /// Leaf entries by the guest frame they map.
    rmap: BTreeMap<u64, Vec<(TableHandle, u16)>>,
    live: u32,
    clock: u64,
    batch: Vec<Install>,
    flush_all: bool,
    root: Option<TableHandle>,
    root_changed: bool,
    pins: Vec<TableHandle>,
    budget: u32,
    ram_frames: u64,
    global_pages: bool,
    flood_threshold: u32,
    /// Whether leaf page tables may go unsync ([`ShadowCache::try_unsync`]).
    allow_unsync: bool,
    /// The protected write to a frame, counted since the last flush,
    /// that makes it unsync (1: the first).
    unsync_after: u32,
    /// Flushes by the guest so far ([`ShadowCache::sync_all`] calls).
    epoch: u64,
    /// The unsync frames.
    unsync: BTreeSet<u64>,
    /// Leaves filled per fault: the aligned group of this many entries
    /// around the faulting one (0 or 1: the faulting entry only).
    prefetch: usize,
    cpu: CpuModel,
    /// The figures.
    pub stats: MmuStats,
}

impl ShadowCache {
    /// An empty cache of at most `budget` tables.
    pub fn new(
        budget: u32,
        ram_bytes: u64,
        cpu: CpuModel,
        global_pages: bool,
        flood_threshold: u32,
    ) -> Self {
        Self {
            tables: Vec::new(),
            by_key: BTreeMap::new(),
            frames: BTreeMap::new(),
            rmap: BTreeMap::new(),
            live: 0,
            clock: 0,
            batch: Vec::new(),
            flush_all: false,
            root: None,
            root_changed: false,
            pins: Vec::new(),
            budget: budget.clamp(4, MAX_SHADOW_TABLES),
            ram_frames: ram_bytes >> 12,
            global_pages,
            flood_threshold: flood_threshold.max(1),
            allow_unsync: false,
            unsync_after: 1,
            epoch: 0,
            unsync: BTreeSet::new(),
            prefetch: 0,
            cpu,
            stats: MmuStats::default(),
        }
    }

    /// Sets the prefetch group: a fault that reaches a shadow leaf also
    /// fills the not-present entries of the aligned group of `n` entries
    /// around it (rounded down to a power of two, at most 512) whose
    /// guest entries allow it (see [`Self::fill`]). 0 or 1 turns it off.
    pub fn set_prefetch(&mut self, n: usize) {
        self.prefetch = if n <= 1 {
            0
        } else {
            1 << (usize::BITS - 1 - n.min(512).leading_zeros())
        };
    }

    fn t(&self, h: TableHandle) -> &Table {
        self.tables[h as usize].as_ref().expect("live table")
    }

    fn t_mut(&mut self, h: TableHandle) -> &mut Table {
        self.tables[h as usize].as_mut().expect("live table")
    }

    /// The current root, if any.
    pub fn root(&self) -> Option<TableHandle> {
        self.root
    }

    /// Key of a live table.
    pub fn key_of(&self, h: TableHandle) -> Option<ShadowKey> {
        self.tables
            .get(h as usize)
            .and_then(|t| t.as_ref())
            .map(|t| t.key)
    }

    /// Number of live tables.
    pub fn live(&self) -> u32 {
        self.live
    }

    /// Whether guest frame `gfn` is write-protected (some cached table
    /// shadows it and it is not unsync).
    pub fn is_protected(&self, gfn: u64) -> bool {
        self.frames
            .get(&gfn)
            .is_some_and(|f| !f.tables.is_empty() && !f.unsync)
    }

    /// Lets leaf page tables go unsync ([`Self::try_unsync`]). Only for a
    /// platform where the guest's INVLPG exits while [`Self::has_unsync`]
    /// (see `PagingState::INTERCEPT_INVLPG`): an unsync table's shadow
    /// may be stale, and INVLPG must resync it ([`Self::invlpg`]).
    /// `after`: the protected write to a frame between two guest flushes
    /// that makes it unsync (the earlier ones are emulated).
    pub fn set_unsync(&mut self, on: bool, after: u32) {
        self.allow_unsync = on;
        self.unsync_after = after.max(1);
    }

    /// Whether some frame is unsync (INVLPG must then exit).
    pub fn has_unsync(&self) -> bool {
        !self.unsync.is_empty()
    }

    /// Whether guest frame `gfn` is unsync.
    pub fn is_unsync(&self, gfn: u64) -> bool {
        self.unsync.contains(&gfn)
    }

    /// The guest wrote (or is about to write) write-protected frame
    /// `gfn`: when every table that shadows it is a guest *leaf* table
    /// (level 1: a PT, or a 32-bit PT's quadrants), the frame goes unsync
    /// instead of the write being emulated: its protection is lifted (the
    /// leaves that map it become what a fault would make them: writable
    /// where the guest entry is writable and dirty) and the guest writes
    /// it natively from now on. Its shadow entries are brought up to date
    /// at the next [`Self::sync_all`] (CR3 load, flushing CR0/CR4 write),
    /// at [`Self::invlpg`] of an address they map, or before the frame is
    /// shadowed as a non-leaf table. A frame used as a non-leaf (or at
    /// two levels) stays protected: a stale non-leaf shadow entry would
    /// point to a whole wrong table, and the architecture lets a guest
    /// rely on upper-level writes without the flushes that would resync
    /// them. Only the `unsync_after`th protected write to the frame since
    /// the guest's last flush makes it unsync ([`Self::set_unsync`]): a
    /// lone PTE write (a COW fault, then its INVLPG) is cheaper emulated
    /// than paid for with INVLPG exits until the next CR3 load. False
    /// when the frame does not go unsync.
    pub fn try_unsync<P: MmuPlatform + ?Sized>(&mut self, p: &mut P, gfn: u64) -> bool {
        if !self.allow_unsync {
            return false;
        }
        let Some(f) = self.frames.get(&gfn) else {
            return false;
        };
        let leaf_only = !f.tables.is_empty()
            && f.tables.iter().all(|&h| {
                let r = self.t(h).key.role;
                r.level == 1 && r.kind == TableKind::Guest
            });
        let (epoch, after) = (self.epoch, self.unsync_after);
        let f = self.frames.get_mut(&gfn).expect("frame");
        if f.epoch != epoch {
            f.epoch = epoch;
            f.flush_writes = 0;
        }
        f.flush_writes += 1;
        if f.flush_writes < after || f.unsync || !leaf_only {
            return false;
        }
        f.unsync = true;
        self.unsync.insert(gfn);
        self.stats.unsyncs += 1;
        self.writable_again(p, gfn);
        true
    }

    /// Resyncs every unsync frame and write-protects it again (a CR3
    /// load or a full TLB flush: every stale translation must go).
    /// Global translations are resynced too, although a CR3 load would
    /// keep them in a real TLB: more than the architecture asks, never
    /// less.
    pub fn sync_all<P: MmuPlatform + ?Sized>(&mut self, p: &mut P) {
        self.epoch += 1;
        while let Some(gfn) = self.unsync.pop_first() {
            self.sync(p, gfn);
        }
    }

    /// Brings the shadow entries of every table of unsync frame `gfn` up
    /// to date with the guest's entries and write-protects the frame
    /// again (as KVM's `mmu_sync_children`: protect, then sync, so no
    /// write can slip in between). Not-present shadow entries stay so: a
    /// fault on one walks the guest tables anyway.
    pub fn sync<P: MmuPlatform + ?Sized>(&mut self, p: &mut P, gfn: u64) {
        self.unsync.remove(&gfn);
        let Some(f) = self.frames.get_mut(&gfn) else {
            return;
        };
        if !f.unsync {
            return;
        }
        f.unsync = false;
        f.writes = 0;
        let handles = f.tables.clone();
        self.stats.syncs += 1;
        self.write_protect(gfn);
        let mut page = [0u8; 4096];
        if p.read_phys(gfn << 12, &mut page).is_err() {
            page = [0; 4096];
        }
        for h in handles {
            let key = self.t(h).key;
            for idx in 0..512 {
                if self.t(h).entries[idx] & pte::P == 0 {
                    continue;
                }
                let ge = guest_entry_in(&page, &key, idx);
                self.resync_entry(h, idx, ge);
            }
        }
    }

    /// The guest's INVLPG (it exits only while some frame is unsync):
    /// syncs every unsync frame, not only the one that maps the address
    /// (more than INVLPG asks, which is allowed). Guests flush in runs
    /// after a run of PTE writes (munmap, mprotect: INVLPG per page), so
    /// the first INVLPG of a run ends the episode and the interception
    /// with it, and the rest of the run executes natively.
    pub fn invlpg<P: MmuPlatform + ?Sized>(&mut self, p: &mut P) {
        self.sync_all(p);
    }

    /// Whether the root's entries changed while it was loaded (a PAE
    /// root must then be loaded again).
    pub fn take_root_changed(&mut self) -> bool {
        core::mem::take(&mut self.root_changed)
    }

    fn touch(&mut self, h: TableHandle) {
        self.clock += 1;
        let c = self.clock;
        self.t_mut(h).last_used = c;
    }

    fn push(&mut self, h: TableHandle, index: usize, entry: u64) {
        let level = self.t(h).key.role.level;
        self.batch.push(Install {
            table: h,
            index: index as u16,
            level,
            reserved: 0,
            entry,
        });
    }

    /// Sends the pending installs to the stub.
    pub fn flush_installs<P: MmuPlatform + ?Sized>(&mut self, p: &mut P) -> Result<(), CacheError> {
        for chunk in self.batch.chunks(INSTALL_BATCH_MAX) {
            self.stats.installs += chunk.len() as u64;
            self.stats.install_batches += 1;
            p.install(chunk)?;
        }
        self.batch.clear();
        Ok(())
    }

    /// Sends the pending installs and the pending full TLB flush.
    pub fn finish<P: MmuPlatform + ?Sized>(&mut self, p: &mut P) -> Result<(), CacheError> {
        self.flush_installs(p)?;
        if core::mem::take(&mut self.flush_all) {
            self.stats.tlb_flushes += 1;
            p.flush_tlb(Flush::All);
        }
        self.stats.tables_live = u64::from(self.live);
        Ok(())
    }

    /// Asks for a full TLB flush at [`Self::finish`].
    pub fn request_flush(&mut self) {
        self.flush_all = true;
    }

    fn non_leaf_entry(&self, parent: &ShadowKey, child: TableHandle) -> u64 {
        let addr = u64::from(child) << 12;
        if format_for(parent.role.mode) == ShadowFormat::Pae && parent.role.level == 3 {
            // PAE PDPTEs: R/W, U/S, A are reserved.
            addr | pte::P
        } else {
            addr | pte::P | pte::RW | pte::US | pte::A
        }
    }

    fn note_root_change(&mut self, h: TableHandle) {
        if Some(h) == self.root {
            self.root_changed = true;
        }
    }

    /// Makes entry `idx` of `h` point to `child`.
    fn link(&mut self, h: TableHandle, idx: usize, child: TableHandle) {
        let key = self.t(h).key;
        let e = self.non_leaf_entry(&key, child);
        let old = self.t(h).entries[idx];
        if old == e {
            return;
        }
        if old & pte::P != 0 {
            self.unlink_child(old, h, idx);
            self.flush_all = true;
        }
        self.t_mut(h).entries[idx] = e;
        self.t_mut(child).parents.push((h, idx as u16));
        self.push(h, idx, e);
        self.note_root_change(h);
    }

    fn unlink_child(&mut self, old_entry: u64, h: TableHandle, idx: usize) {
        let c = (old_entry >> 12) as TableHandle;
        if let Some(Some(ct)) = self.tables.get_mut(c as usize) {
            ct.parents.retain(|&pi| pi != (h, idx as u16));
        }
    }

    fn rmap_remove(&mut self, entry: u64, h: TableHandle, idx: usize) {
        let gfn = (entry & pte_addr()) >> 12;
        if let Some(v) = self.rmap.get_mut(&gfn) {
            v.retain(|&x| x != (h, idx as u16));
            if v.is_empty() {
                self.rmap.remove(&gfn);
            }
        }
    }

    /// Writes leaf entry `idx` of level-1 table `h`.
    fn set_leaf(&mut self, h: TableHandle, idx: usize, e: u64) {
        let old = self.t(h).entries[idx];
        if old == e {
            return;
        }
        if old & pte::P != 0 {
            self.rmap_remove(old, h, idx);
            self.flush_all = true;
        }
        self.t_mut(h).entries[idx] = e;
        if e & pte::P != 0 {
            self.rmap
                .entry((e & pte_addr()) >> 12)
                .or_default()
                .push((h, idx as u16));
        }
        self.push(h, idx, e);
    }

    /// Makes entry `idx` of `h` not present.
    fn clear_entry(&mut self, h: TableHandle, idx: usize) {
        let old = self.t(h).entries[idx];
        if old & pte::P == 0 {
            return;
        }
        if self.t(h).key.role.level >= 2 {
            self.unlink_child(old, h, idx);
        } else {
            self.rmap_remove(old, h, idx);
        }
        self.t_mut(h).entries[idx] = 0;
        self.push(h, idx, 0);
        self.flush_all = true;
        self.note_root_change(h);
    }

    /// The table with `key`, from the cache or newly built (evicting to
    /// stay within the budget).
    fn get_or_create<P: MmuPlatform + ?Sized>(
        &mut self,
        p: &mut P,
        key: ShadowKey,
    ) -> Result<TableHandle, CacheError> {
        if let Some(&h) = self.by_key.get(&key) {
            self.stats.hits += 1;
            self.touch(h);
            return Ok(h);
        }
        self.stats.misses += 1;
        while self.live >= self.budget {
            if !self.evict_one(p)? {
                return Err(CacheError::BudgetTooSmall);
            }
        }
        let h = loop {
            match p.alloc_table(key.role.level) {
                Ok(h) => break h,
                Err(PlatformError::OutOfTables) => {
                    if !self.evict_one(p)? {
                        return Err(CacheError::Platform(PlatformError::OutOfTables));
                    }
                }
                Err(e) => return Err(e.into()),
            }
        };
        if h >= MAX_SHADOW_TABLES {
            return Err(CacheError::BadHandle);
        }
        if self.tables.len() <= h as usize {
            self.tables.resize_with(h as usize + 1, || None);
        }
        if self.tables[h as usize].is_some() {
            return Err(CacheError::BadHandle);
        }
        self.tables[h as usize] = Some(Table {
            key,
            entries: Box::new([0; 512]),
            parents: Vec::new(),
            last_used: 0,
            pdptes: [0; 4],
        });
        self.touch(h);
        self.by_key.insert(key, h);
        self.live += 1;
        if key.role.kind == TableKind::Guest {
            if key.role.level > 1 && self.is_unsync(key.gfn) {
                // Non-leaf tables are never unsync (see `try_unsync`).
                self.sync(p, key.gfn);
            }
            self.protect(key.gfn, h);
        }
        Ok(h)
    }

    /// Records that `h` shadows `gfn`; the first such table write-protects
    /// the frame in every leaf that maps it.
    fn protect(&mut self, gfn: u64, h: TableHandle) {
        let f = self.frames.entry(gfn).or_default();
        f.tables.push(h);
        if f.tables.len() > 1 {
            return;
        }
        f.writes = 0;
        self.write_protect(gfn);
    }

    /// Makes every leaf that maps `gfn` read-only.
    fn write_protect(&mut self, gfn: u64) {
        let leaves = self.rmap.get(&gfn).cloned().unwrap_or_default();
        for (t, idx) in leaves {
            let e = self.t(t).entries[usize::from(idx)];
            if e & pte::RW != 0 {
                self.set_leaf(t, usize::from(idx), e & !(pte::RW | pte::D));
            }
        }
    }

    /// Evicts the least recently used table that is neither the root nor
    /// on the path being built. False when there is none.
    fn evict_one<P: MmuPlatform + ?Sized>(&mut self, p: &mut P) -> Result<bool, CacheError> {
        let victim = self
            .tables
            .iter()
            .enumerate()
            .filter_map(|(h, t)| t.as_ref().map(|t| (h as TableHandle, t.last_used)))
            .filter(|(h, _)| Some(*h) != self.root && !self.pins.contains(h))
            .min_by_key(|&(_, used)| used)
            .map(|(h, _)| h);
        let Some(v) = victim else {
            return Ok(false);
        };
        self.zap(p, v)?;
        self.stats.evictions += 1;
        Ok(true)
    }

    /// Drops one table: the entries pointing to it become not present,
    /// its children lose a parent (and stay cached), and it goes back to
    /// the stub.
    fn zap<P: MmuPlatform + ?Sized>(
        &mut self,
        p: &mut P,
        h: TableHandle,
    ) -> Result<(), CacheError> {
        let parents = core::mem::take(&mut self.t_mut(h).parents);
        for (ph, idx) in parents {
            if let Some(Some(pt)) = self.tables.get_mut(ph as usize) {
                pt.entries[usize::from(idx)] = 0;
                self.push(ph, usize::from(idx), 0);
                self.note_root_change(ph);
            }
        }
        let key = self.t(h).key;
        for idx in 0..512 {
            let e = self.t(h).entries[idx];
            if e & pte::P == 0 {
                continue;
            }
            if key.role.level >= 2 {
                self.unlink_child(e, h, idx);
            } else {
                self.rmap_remove(e, h, idx);
            }
        }
        self.by_key.remove(&key);
        if key.role.kind == TableKind::Guest {
            if let Some(f) = self.frames.get_mut(&key.gfn) {
                f.tables.retain(|&x| x != h);
                if f.tables.is_empty() {
                    self.frames.remove(&key.gfn);
                    self.unsync.remove(&key.gfn);
                }
            }
        }
        self.tables[h as usize] = None;
        self.live -= 1;
        self.flush_all = true;
        if self.root == Some(h) {
            self.root = None;
        }
        // Pending installs may still name `h`; they must reach the stub
        // before it takes the table back.
        self.batch.retain(|i| i.table != h);
        self.flush_installs(p)?;
        p.free_table(h)?;
        Ok(())
    }

    /// Drops every table (the 2006 behaviour, on every CR3 load in
    /// baseline mode).
    pub fn zap_all<P: MmuPlatform + ?Sized>(&mut self, p: &mut P) -> Result<(), CacheError> {
        self.batch.clear();
        for h in 0..self.tables.len() {
            if self.tables[h].take().is_some() {
                p.free_table(h as TableHandle)?;
            }
        }
        self.by_key.clear();
        self.frames.clear();
        self.unsync.clear();
        self.rmap.clear();
        self.live = 0;
        self.root = None;
        self.flush_all = true;
        Ok(())
    }

    fn leaf_entry(
        &self,
        role: &Role,
        frame: u64,
        access: u8,
        dirty: bool,
        global: bool,
        fault: Access,
    ) -> u64 {
        let mut w = access & acc::W != 0;
        let mut u = access & acc::U != 0;
        if !role.wp && fault.write && !fault.user && !w {
            // CR0.WP = 0: a supervisor write to a read-only page succeeds.
            // The hardware runs with WP = 1, so map it writable and
            // supervisor-only; a user access faults and flips it back.
            w = true;
            u = false;
        }
        let mut e = pte::P | pte::A | (frame << 12);
        if w && dirty && !self.is_protected(frame) {
            e |= pte::RW | pte::D;
        }
        if u {
            e |= pte::US;
        }
        if access & acc::X == 0 && role.nxe {
            e |= pte::NX;
        }
        if global && self.global_pages {
            e |= pte::G;
        }
        e
    }

    /// What entry `idx` of a table with `key` should be, given the guest
    /// entry it derives from (`guest_entry`, for guest tables) or the
    /// table's PDPTEs (PAE roots).
    fn want(&self, key: &ShadowKey, pdptes: &[u64; 4], idx: usize, guest_entry: u64) -> Want {
        let r = key.role;
        match r.kind {
            TableKind::Direct => {
                if r.level == 1 {
                    let frame = key.gfn + idx as u64;
                    if frame >= self.ram_frames {
                        return Want::Absent;
                    }
                    Want::Leaf {
                        frame,
                        access: r.access,
                        dirty: r.dirty,
                        global: r.global,
                    }
                } else {
                    let span = 1u64 << (9 * (u32::from(r.level) - 1));
                    Want::Child(ShadowKey {
                        gfn: key.gfn + idx as u64 * span,
                        role: Role {
                            level: r.level - 1,
                            ..r
                        },
                    })
                }
            }
            TableKind::PaeRoot => {
                let e = pdptes.get(idx).copied().unwrap_or(0);
                if e & pte::P == 0 {
                    return Want::Absent;
                }
                Want::Child(ShadowKey {
                    gfn: (e & self.cpu.frame_mask()) >> 12,
                    role: Role {
                        level: 2,
                        kind: TableKind::Guest,
                        quadrant: 0,
                        access: acc::ALL,
                        dirty: false,
                        global: false,
                        ..r
                    },
                })
            }
            TableKind::Root32 => Want::Child(ShadowKey {
                gfn: key.gfn,
                role: Role {
                    level: 2,
                    kind: TableKind::Guest,
                    quadrant: idx as u8,
                    access: acc::ALL,
                    ..r
                },
            }),
            TableKind::Guest => {
                let ge = guest_entry;
                let mode = r.mode;
                if ge & pte::P == 0 || ge & pte::A == 0 {
                    return Want::Absent;
                }
                let ps = ge & pte::PS != 0;
                if ge & reserved_bits(mode, r.level, ps, r.nxe, &self.cpu) != 0 {
                    return Want::Absent;
                }
                let access = r.access & entry_access(ge, r.nxe);
                if r.level == 1 {
                    let frame = leaf_base(mode, 1, ge, &self.cpu) >> 12;
                    if frame >= self.ram_frames {
                        return Want::Absent;
                    }
                    return Want::Leaf {
                        frame,
                        access,
                        dirty: ge & pte::D != 0,
                        global: ge & pte::G != 0,
                    };
                }
                if is_leaf(mode, r.level, ge, r.pse) {
                    let base = leaf_base(mode, r.level, ge, &self.cpu) >> 12;
                    let gfn = if mode == PagingMode::Bits32 {
                        base + (idx as u64 & 1) * 512
                    } else {
                        base
                    };
                    Want::Child(ShadowKey {
                        gfn,
                        role: Role {
                            level: r.level - 1,
                            kind: TableKind::Direct,
                            quadrant: 0,
                            access,
                            dirty: ge & pte::D != 0,
                            global: ge & pte::G != 0,
                            ..r
                        },
                    })
                } else {
                    Want::Child(ShadowKey {
                        gfn: table_base(mode, ge, &self.cpu) >> 12,
                        role: Role {
                            level: r.level - 1,
                            kind: TableKind::Guest,
                            quadrant: if mode == PagingMode::Bits32 {
                                (idx & 1) as u8
                            } else {
                                0
                            },
                            access,
                            dirty: false,
                            global: false,
                            ..r
                        },
                    })
                }
            }
        }
    }

    /// Looks up (or builds) the root for `ctl` and makes it current. For a
    /// PAE root, entries whose PDPTE changed since it was last loaded are
    /// dropped.
    pub fn switch_root<P: MmuPlatform + ?Sized>(
        &mut self,
        p: &mut P,
        ctl: &GuestCtl,
    ) -> Result<TableHandle, CacheError> {
        let key = root_key(ctl, &self.cpu);
        let before = self.stats.hits;
        self.pins.clear();
        let h = self.get_or_create(p, key)?;
        self.stats.cr3_loads += 1;
        if self.stats.hits > before {
            self.stats.root_hits += 1;
        } else {
            self.t_mut(h).pdptes = ctl.pdptes;
        }
        if key.role.kind == TableKind::PaeRoot {
            for i in 0..4 {
                if self.t(h).pdptes[i] != ctl.pdptes[i] {
                    self.clear_entry(h, i);
                    self.stats.resyncs += 1;
                }
            }
            self.t_mut(h).pdptes = ctl.pdptes;
        }
        self.root = Some(h);
        self.root_changed = false;
        Ok(h)
    }

    /// Builds the shadow path for `la` from a successful guest walk `t`
    /// made for `fault`. Returns whether any shadow entry changed (if
    /// not, the fault came from a stale TLB entry).
    pub fn fill<P: MmuPlatform + ?Sized>(
        &mut self,
        p: &mut P,
        la: u64,
        t: &Translation,
        fault: Access,
    ) -> Result<bool, CacheError> {
        let Some(mut h) = self.root else {
            return Err(CacheError::Inconsistent);
        };
        for gfn in t.table_frames() {
            if let Some(f) = self.frames.get_mut(&gfn) {
                f.writes = 0;
            }
        }
        self.pins.clear();
        self.pins.push(h);
        let mut changed = false;
        loop {
            let (key, pdptes) = {
                let tb = self.t(h);
                (tb.key, tb.pdptes)
            };
            let idx = shadow_index(&key, la);
            let ge = if key.role.kind == TableKind::Guest {
                match t.step(key.role.level) {
                    Some(s) => s.entry,
                    None => return Err(CacheError::Inconsistent),
                }
            } else {
                0
            };
            match self.want(&key, &pdptes, idx, ge) {
                Want::Absent => return Err(CacheError::Inconsistent),
                Want::Child(ck) => {
                    let cur = self.t(h).entries[idx];
                    if cur & pte::P != 0 {
                        let c = (cur >> 12) as TableHandle;
                        if self.key_of(c) == Some(ck) {
                            self.touch(c);
                            self.pins.push(c);
                            h = c;
                            continue;
                        }
                    }
                    let c = self.get_or_create(p, ck)?;
                    self.pins.push(c);
                    self.link(h, idx, c);
                    changed = true;
                    h = c;
                }
                Want::Leaf {
                    frame,
                    access,
                    dirty,
                    global,
                } => {
                    let e = self.leaf_entry(&key.role, frame, access, dirty, global, fault);
                    if self.t(h).entries[idx] != e {
                        self.set_leaf(h, idx, e);
                        changed = true;
                    }
                    self.prefetch(p, h, idx);
                    self.pins.clear();
                    return Ok(changed);
                }
            }
        }
    }

    /// Fills the not-present neighbours of leaf `idx` of level-1 table
    /// `h`: the aligned group of `self.prefetch` entries around it (as
    /// KVM's `pte_prefetch`). Each entry is what a fault on it would
    /// install, with two rules that keep the guest's A/D bits exact:
    /// * a guest leaf with A clear is left alone (hardware would set A on
    ///   the first access; only a fault through the mmu-server's walk
    ///   does that here) — [`Self::want`] already says `Absent` for it;
    /// * a leaf is writable only if the guest entry is writable *and*
    ///   dirty ([`Self::leaf_entry`] without a fault: no CR0.WP = 0
    ///   supervisor-write upgrade), so the first write still faults and
    ///   sets D.
    ///
    /// The upper guest levels need nothing: every shadow path to `h` was
    /// built by a walk that set their A bits, and a guest write clearing
    /// one unlinks the path. Present entries are not touched (no TLB
    /// flush needed: only not-present entries become present), no table
    /// is built (the budget is not involved), and the group never makes
    /// the pending batch outgrow one install call. Write-protected frames
    /// stay read-only and frames outside RAM (MMIO) are not mapped, as in
    /// a fault's fill; later guest writes resync the entries like any
    /// other, since the guest table is write-protected.
    fn prefetch<P: MmuPlatform + ?Sized>(&mut self, p: &mut P, h: TableHandle, idx: usize) {
        let n = self.prefetch;
        if n <= 1 {
            return;
        }
        let (key, pdptes) = {
            let t = self.t(h);
            (t.key, t.pdptes)
        };
        if key.role.level != 1 {
            return;
        }
        let first = idx & !(n - 1);
        for j in first..first + n {
            if j == idx || self.t(h).entries[j] & pte::P != 0 {
                continue;
            }
            if self.batch.len() >= INSTALL_BATCH_MAX {
                break;
            }
            let Some(ge) = self.guest_entry(p, &key, j) else {
                break;
            };
            if let Some(e) = self.prefetch_leaf(&key, &pdptes, j, ge) {
                self.set_leaf(h, j, e);
                self.stats.prefetched += 1;
            }
        }
    }

    /// The guest wrote `len` bytes at `gpa` (already in guest memory):
    /// re-derives every shadow entry of every table that shadows the
    /// frame from the new guest entries. Counts the write toward write
    /// flooding and, past the threshold, drops the frame's shadows (the
    /// frame is no longer used as a page table) unless `keep_gfn` is it.
    pub fn guest_wrote<P: MmuPlatform + ?Sized>(
        &mut self,
        p: &mut P,
        gpa: u64,
        len: u64,
        keep_gfn: Option<u64>,
    ) -> Result<(), CacheError> {
        let gfn = gpa >> 12;
        let Some(f) = self.frames.get(&gfn) else {
            return Ok(());
        };
        let handles = f.tables.clone();
        let off = gpa & 0xfff;
        let end = (off + len.max(1)).min(4096);
        for h in handles {
            if self
                .tables
                .get(h as usize)
                .and_then(|t| t.as_ref())
                .is_none()
            {
                continue;
            }
            let key = self.t(h).key;
            let es: u64 = if key.role.mode == PagingMode::Bits32 {
                4
            } else {
                8
            };
            for gi in (off / es)..end.div_ceil(es) {
                let mut b = [0u8; 8];
                let ge = if p
                    .read_phys((gfn << 12) + gi * es, &mut b[..es as usize])
                    .is_ok()
                {
                    u64::from_le_bytes(b)
                } else {
                    0
                };
                let (idxs, n) = shadow_indices(&key, gi as usize);
                for &idx in &idxs[..n] {
                    self.resync_entry(h, idx, ge);
                }
            }
        }
        let f = self.frames.get_mut(&gfn).expect("frame still shadowed");
        f.writes += 1;
        if f.writes >= self.flood_threshold && keep_gfn != Some(gfn) {
            self.unprotect(p, gfn)?;
        }
        Ok(())
    }

    fn resync_entry(&mut self, h: TableHandle, idx: usize, ge: u64) {
        let cur = self.t(h).entries[idx];
        if cur & pte::P == 0 {
            self.prefetch_written(h, idx, ge);
            return;
        }
        self.stats.resyncs += 1;
        let (key, pdptes) = {
            let t = self.t(h);
            (t.key, t.pdptes)
        };
        match self.want(&key, &pdptes, idx, ge) {
            Want::Absent => self.clear_entry(h, idx),
            Want::Child(ck) => {
                if self.key_of((cur >> 12) as TableHandle) != Some(ck) {
                    self.clear_entry(h, idx);
                }
            }
            Want::Leaf {
                frame,
                access,
                dirty,
                global,
            } => {
                let e = self.leaf_entry(&key.role, frame, access, dirty, global, Access::default());
                self.set_leaf(h, idx, e);
            }
        }
    }

    /// Prefetch on write (as KVM's `update_pte`): the guest wrote a leaf
    /// entry whose shadow entry is not present, typically making a page
    /// present (demand paging, fault-around); when the new guest entry is
    /// one prefetch could fill (present, accessed, valid, in RAM), the
    /// shadow leaf is installed now instead of on the fault that would
    /// follow, with the same rules as [`Self::prefetch`].
    fn prefetch_written(&mut self, h: TableHandle, idx: usize, ge: u64) {
        let (key, pdptes) = {
            let t = self.t(h);
            (t.key, t.pdptes)
        };
        if self.prefetch <= 1
            || key.role.level != 1
            || key.role.kind != TableKind::Guest
            || self.batch.len() >= INSTALL_BATCH_MAX
        {
            return;
        }
        if let Some(e) = self.prefetch_leaf(&key, &pdptes, idx, ge) {
            self.set_leaf(h, idx, e);
            self.stats.prefetched += 1;
        }
    }

    /// The shadow leaf a fault would install for entry `idx` of a table
    /// with `key` from guest entry `ge`, with no access of its own (so
    /// writable only if the guest entry is writable and dirty); `None`
    /// where the entry would not be a leaf.
    fn prefetch_leaf(
        &self,
        key: &ShadowKey,
        pdptes: &[u64; 4],
        idx: usize,
        ge: u64,
    ) -> Option<u64> {
        match self.want(key, pdptes, idx, ge) {
            Want::Leaf {
                frame,
                access,
                dirty,
                global,
            } => Some(self.leaf_entry(&key.role, frame, access, dirty, global, Access::default())),
            _ => None,
        }
    }

    /// Drops every table that shadows `gfn`: the frame is no longer
    /// write-protected (its leaves stay read-only until the next write
    /// fault finds it unprotected).
    pub fn unprotect<P: MmuPlatform + ?Sized>(
        &mut self,
        p: &mut P,
        gfn: u64,
    ) -> Result<(), CacheError> {
        let Some(f) = self.frames.get(&gfn) else {
            return Ok(());
        };
        for h in f.tables.clone() {
            self.zap(p, h)?;
        }
        self.stats.unprotects += 1;
        self.writable_again(p, gfn);
        Ok(())
    }

    /// The leaves that map `gfn` read-only only because it was protected
    /// become what a write fault would make them now.
    fn writable_again<P: MmuPlatform + ?Sized>(&mut self, p: &mut P, gfn: u64) {
        let leaves = self.rmap.get(&gfn).cloned().unwrap_or_default();
        for (h, idx) in leaves {
            let idx = usize::from(idx);
            let cur = self.t(h).entries[idx];
            if cur & pte::RW != 0 || self.batch.len() >= INSTALL_BATCH_MAX {
                continue;
            }
            let (key, pdptes) = {
                let t = self.t(h);
                (t.key, t.pdptes)
            };
            let Some(ge) = self.guest_entry(p, &key, idx) else {
                continue;
            };
            if let Some(e) = self.prefetch_leaf(&key, &pdptes, idx, ge) {
                if e == cur | pte::RW | pte::D {
                    self.set_leaf(h, idx, e);
                }
            }
        }
    }

    /// The guest entry that shadow entry `idx` of a table with `key`
    /// derives from (0 for tables that do not shadow a guest table);
    /// `None` if it cannot be read.
    fn guest_entry<P: MmuPlatform + ?Sized>(
        &self,
        p: &mut P,
        key: &ShadowKey,
        idx: usize,
    ) -> Option<u64> {
        if key.role.kind != TableKind::Guest {
            return Some(0);
        }
        let (es, gi) = guest_index(key, idx);
        let mut b = [0u8; 8];
        p.read_phys((key.gfn << 12) + gi as u64 * es, &mut b[..es as usize])
            .is_ok()
            .then(|| u64::from_le_bytes(b))
    }

    /// Checks the cache's own invariants (for tests): every present
    /// non-leaf names a live child that lists it as a parent; every leaf
    /// is in the reverse map; no leaf maps a protected frame writable.
    pub fn check_invariants(&self) -> Result<(), &'static str> {
        let mut n = 0;
        for (h, t) in self.tables.iter().enumerate() {
            let Some(t) = t else { continue };
            n += 1;
            if self.by_key.get(&t.key) != Some(&(h as TableHandle)) {
                return Err("table missing from the key index");
            }
            for (idx, &e) in t.entries.iter().enumerate() {
                if e & pte::P == 0 {
                    continue;
                }
                if t.key.role.level >= 2 {
                    let c = (e >> 12) as TableHandle;
                    let Some(ct) = self.tables.get(c as usize).and_then(|x| x.as_ref()) else {
                        return Err("non-leaf names a dead table");
                    };
                    if ct.key.role.level + 1 != t.key.role.level {
                        return Err("non-leaf names a table at the wrong level");
                    }
                    if !ct.parents.contains(&(h as TableHandle, idx as u16)) {
                        return Err("child does not list its parent");
                    }
                } else {
                    let gfn = (e & pte_addr()) >> 12;
                    if !self
                        .rmap
                        .get(&gfn)
                        .is_some_and(|v| v.contains(&(h as TableHandle, idx as u16)))
                    {
                        return Err("leaf missing from the reverse map");
                    }
                    if e & pte::RW != 0 && self.is_protected(gfn) {
                        return Err("a shadowed guest page table is mapped writable");
                    }
                }
            }
            for &(ph, pi) in &t.parents {
                let Some(pt) = self.tables.get(ph as usize).and_then(|x| x.as_ref()) else {
                    return Err("parent is dead");
                };
                if pt.entries[usize::from(pi)] >> 12 != h as u64
                    || pt.entries[usize::from(pi)] & pte::P == 0
                {
                    return Err("parent does not point here");
                }
            }
        }
        if n != self.live {
            return Err("live count is off");
        }
        if self.live > self.budget {
            return Err("over budget");
        }
        Ok(())
    }
}

/// The size and index of the guest entry that shadow entry `idx` of a
/// guest table with `key` derives from: 32-bit guests' tables are split
/// in quadrants of 512 four-byte entries (page tables) or 256 entries,
/// two shadow PDEs each.
fn guest_index(key: &ShadowKey, idx: usize) -> (u64, usize) {
    match (key.role.mode, key.role.level) {
        (PagingMode::Bits32, 1) => (4, usize::from(key.role.quadrant) * 512 + idx),
        (PagingMode::Bits32, _) => (4, usize::from(key.role.quadrant) * 256 + idx / 2),
        _ => (8, idx),
    }
}

/// [`ShadowCache::guest_entry`] from a copy of the guest table's page.
fn guest_entry_in(page: &[u8; 4096], key: &ShadowKey, idx: usize) -> u64 {
    let (es, gi) = guest_index(key, idx);
    let at = gi * es as usize;
    let mut b = [0u8; 8];
    b[..es as usize].copy_from_slice(&page[at..at + es as usize]);
    u64::from_le_bytes(b)
}

const fn pte_addr() -> u64 {
    ipc_proto::mmu::PTE_ADDR_MASK
}
