//! Statistics the stub keeps; part of the ABI so that experiments read them
//! the same way on every platform.

use crate::vcpu::wire;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

wire! {
    /// Counters kept by the stub since boot.
    pub struct Stats {
        /// Every VM exit.
        pub exits_total: u64,
        /// Port I/O exits.
        pub exits_ioio: u64,
        /// HLT exits.
        pub exits_hlt: u64,
        /// CPUID exits.
        pub exits_cpuid: u64,
        /// RDMSR/WRMSR exits.
        pub exits_msr: u64,
        /// Nested page faults.
        pub exits_npf: u64,
        /// Intercepted exceptions.
        pub exits_exception: u64,
        /// Shutdown (triple fault).
        pub exits_shutdown: u64,
        /// Failed VM entries.
        pub exits_invalid: u64,
        /// Every other exit.
        pub exits_other: u64,
        /// Syscalls made by all servers.
        pub syscalls: u64,
        /// Resumes the stub refused.
        pub resumes_refused: u64,
        /// Page-table entries installed for the mmu-server.
        pub installs: u64,
        /// Installs refused.
        pub installs_refused: u64,
        /// Calls made on each channel.
        pub channel_calls: [u64; crate::manifest::MAX_CHANNELS],
        /// Exits for a host interrupt: the exit deadline's timer
        /// (`ResumeFlags::SET_EXIT_DEADLINE`). Not in `exits_other`.
        pub exits_host_interrupt: u64,
        /// Servers restarted from their image after a fault (the
        /// mmu-server's and the device servers').
        pub restarts: u64,
    }
}

impl core::fmt::Display for Stats {
    /// The statistics line: `exits: total=23 ioio=22 hlt=1 ...`.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "exits: total={} ioio={} hlt={} cpuid={} msr={} npf={} exception={} shutdown={} invalid={} intr={} other={} syscalls={} resumes_refused={}",
            self.exits_total,
            self.exits_ioio,
            self.exits_hlt,
            self.exits_cpuid,
            self.exits_msr,
            self.exits_npf,
            self.exits_exception,
            self.exits_shutdown,
            self.exits_invalid,
            self.exits_host_interrupt,
            self.exits_other,
            self.syscalls,
            self.resumes_refused,
        )?;
        if self.installs + self.installs_refused != 0 {
            write!(
                f,
                " installs={} installs_refused={}",
                self.installs, self.installs_refused
            )?;
        }
        if self.restarts != 0 {
            write!(f, " restarts={}", self.restarts)?;
        }
        for (n, calls) in self
            .channel_calls
            .iter()
            .enumerate()
            .filter(|(_, c)| **c != 0)
        {
            write!(f, " channel{n}_calls={calls}")?;
        }
        Ok(())
    }
}

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
    /// Shadow leaves filled ahead of a fault on them (PTE prefetch).
    pub prefetched: u64,
    /// Leaf page tables made writable (unsync) by a guest write instead
    /// of having the write emulated.
    pub unsyncs: u64,
    /// Unsync page tables resynchronized and write-protected again (at a
    /// CR3 load, a flushing CR0/CR4 write, or before a non-leaf use).
    pub syncs: u64,
}

impl core::fmt::Display for MmuStats {
    /// The statistics line: `mmu: faults=… guest_faults=… …`.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "mmu: faults={} guest_faults={} mmio={} spurious={} hits={} misses={} live={} evictions={} wp_faults={} emulated={} unprotects={} resyncs={} cr3_loads={} root_hits={} invlpg={} cr={} installs={} batches={} flushes={} npf={} prefetched={} unsyncs={} syncs={}",
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
            self.prefetched,
            self.unsyncs,
            self.syncs,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn mmu_stats_are_plain_u64s() {
        assert_eq!(size_of::<MmuStats>(), 23 * 8);
        assert_eq!(offset_of!(MmuStats, shadow_faults), 0);
        assert_eq!(offset_of!(MmuStats, hits), 32);
        assert_eq!(offset_of!(MmuStats, npf), 152);
        assert_eq!(offset_of!(MmuStats, prefetched), 160);
        assert_eq!(offset_of!(MmuStats, syncs), 176);
    }

    #[test]
    fn stats_layout_is_pinned() {
        assert_eq!(size_of::<Stats>(), 32 * 8);
        assert_eq!(offset_of!(Stats, exits_host_interrupt), 30 * 8);
        assert_eq!(offset_of!(Stats, restarts), 31 * 8);
        assert_eq!(offset_of!(Stats, installs), 96);
        assert_eq!(offset_of!(Stats, installs_refused), 104);
        assert_eq!(offset_of!(Stats, channel_calls), 112);
        assert_eq!(offset_of!(Stats, exits_total), 0);
        assert_eq!(offset_of!(Stats, exits_ioio), 8);
        assert_eq!(offset_of!(Stats, exits_hlt), 16);
        assert_eq!(offset_of!(Stats, exits_other), 72);
        assert_eq!(offset_of!(Stats, syscalls), 80);
        assert_eq!(offset_of!(Stats, resumes_refused), 88);
    }

    #[test]
    fn stats_line_starts_with_the_exit_counts() {
        extern crate std;
        use std::string::ToString;
        let s = Stats {
            exits_total: 23,
            exits_ioio: 22,
            exits_hlt: 1,
            ..Default::default()
        };
        assert!(
            s.to_string()
                .starts_with("exits: total=23 ioio=22 hlt=1 cpuid=0 "),
            "{s}"
        );
    }
}
