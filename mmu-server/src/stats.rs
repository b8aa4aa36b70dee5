//! The mmu-server's figures. Laid out like `ipc_proto::Stats` (`repr(C)`,
//! all `u64`, no padding) so that the stub's statistics page can carry it
//! as it is.

use core::fmt;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Counters kept by the mmu-server since start.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct MmuStats {
    /// #PF exits handled (shadow mode).
    pub shadow_faults: u64,
    /// #PF injected into the guest (the guest's own tables fault).
    pub guest_faults: u64,
    /// Accesses outside guest RAM handed to the vmm-server.
    pub mmio: u64,
    /// Faults that needed only a TLB flush.
    pub spurious: u64,
    /// Shadow tables found in the cache when a walk or a CR3 load needed them.
    pub hits: u64,
    /// Shadow tables that had to be built.
    pub misses: u64,
    /// Shadow tables alive now.
    pub tables_live: u64,
    /// Shadow tables evicted to stay within the budget.
    pub evictions: u64,
    /// Writes to write-protected guest page tables.
    pub wp_faults: u64,
    /// Such writes emulated by the mmu-server.
    pub emulated_writes: u64,
    /// Frames whose write protection was dropped (write flooding, or a
    /// write by an instruction the mmu-server does not emulate).
    pub unprotects: u64,
    /// Shadow entries re-derived from guest entries after guest writes or
    /// PDPTE reloads.
    pub resyncs: u64,
    /// CR3 loads (MOV to CR3, and mode changes that select a new root).
    pub cr3_loads: u64,
    /// CR3 loads that found their root in the cache.
    pub root_hits: u64,
    /// INVLPG exits.
    pub invlpg: u64,
    /// Other CR accesses (reads, CR0/CR4 writes, CLTS, LMSW, SMSW).
    pub cr_accesses: u64,
    /// Entries sent to the stub.
    pub installs: u64,
    /// Install calls.
    pub install_batches: u64,
    /// Full TLB flushes requested.
    pub tlb_flushes: u64,
    /// Nested page faults (nested mode).
    pub npf: u64,
}

impl fmt::Display for MmuStats {
    /// The statistics line: `mmu: faults=… guest_faults=… …`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "mmu: faults={} guest_faults={} mmio={} spurious={} hits={} misses={} live={} evictions={} wp_faults={} emulated={} unprotects={} resyncs={} cr3_loads={} root_hits={} invlpg={} cr={} installs={} batches={} flushes={} npf={}",
            self.shadow_faults,
            self.guest_faults,
            self.mmio,
            self.spurious,
            self.hits,
            self.misses,
            self.tables_live,
            self.evictions,
            self.wp_faults,
            self.emulated_writes,
            self.unprotects,
            self.resyncs,
            self.cr3_loads,
            self.root_hits,
            self.invlpg,
            self.cr_accesses,
            self.installs,
            self.install_batches,
            self.tlb_flushes,
            self.npf,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_plain_u64s() {
        assert_eq!(core::mem::size_of::<MmuStats>(), 20 * 8);
    }
}
