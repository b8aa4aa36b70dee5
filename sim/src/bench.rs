//! The context-switch workload of the benchmark: N address spaces of M
//! touched pages each, switched round-robin, in the cached shadow mode and
//! in the 2006 baseline (every CR3 load drops every shadow table).

use std::fmt::Write as _;
use std::time::Instant;

use mmu_server::regs::{cr0, cr4, efer};
use mmu_server::walk::{pte, Access};
use mmu_server::{GuestCtl, MmuConfig, MmuMode, MmuStats, PagingMode};

use crate::guest::GuestTables;
use crate::machine::{Machine, Outcome};
use crate::platform::SimConfig;

/// One benchmark run.
#[derive(Clone, Copy, Debug)]
pub struct BenchConfig {
    /// Guest paging mode (not `Off`).
    pub mode: PagingMode,
    /// Address spaces (N).
    pub spaces: usize,
    /// Pages touched in each (M).
    pub pages: usize,
    /// Measured rounds (each switches to every space once).
    pub rounds: usize,
    /// Rounds before measuring.
    pub warmup: usize,
    /// Cached shadow, baseline shadow, or nested.
    pub mmu: MmuMode,
    /// The shadow-table budget.
    pub max_tables: u32,
}

impl BenchConfig {
    /// N = 8, M = 64 in long mode, 2 warm-up and 10 measured rounds.
    pub fn standard(mode: PagingMode, mmu: MmuMode) -> Self {
        Self {
            mode,
            spaces: 8,
            pages: 64,
            rounds: 10,
            warmup: 2,
            mmu,
            max_tables: 1024,
        }
    }
}

/// What one run measured, per context switch after warm-up.
#[derive(Clone, Copy, Debug)]
pub struct BenchReport {
    /// The run.
    pub config: BenchConfig,
    /// Switches measured.
    pub switches: u64,
    /// Shadow page faults (#PF exits) per switch.
    pub faults_per_switch: f64,
    /// Shadow tables built per switch.
    pub tables_per_switch: f64,
    /// Entries installed per switch.
    pub installs_per_switch: f64,
    /// Shadow-table lookups that hit the cache.
    pub hit_rate: f64,
    /// Host time per switch (the switch and its M accesses), nanoseconds.
    pub ns_per_switch: f64,
    /// The mmu-server's figures at the end.
    pub stats: MmuStats,
}

fn delta(a: &MmuStats, b: &MmuStats) -> (u64, u64, u64, u64) {
    (
        b.shadow_faults - a.shadow_faults,
        b.misses - a.misses,
        b.installs - a.installs,
        b.hits - a.hits,
    )
}

/// Runs the workload.
pub fn context_switch(cfg: BenchConfig) -> Result<BenchReport, String> {
    let ram = 16u64 << 20;
    let user_base = 0x40_0000u64;
    let mut gt = GuestTables::new(cfg.mode, 0x10_0000, 0x40_0000);
    let mut ctl = match cfg.mode {
        PagingMode::Long => GuestCtl {
            cr0: cr0::PE | cr0::PG | cr0::WP | cr0::ET,
            cr4: cr4::PAE,
            efer: efer::LME | efer::LMA | efer::NXE,
            ..Default::default()
        },
        PagingMode::Pae => GuestCtl {
            cr0: cr0::PE | cr0::PG | cr0::WP | cr0::ET,
            cr4: cr4::PAE,
            efer: efer::NXE,
            ..Default::default()
        },
        _ => GuestCtl {
            cr0: cr0::PE | cr0::PG | cr0::WP | cr0::ET,
            cr4: cr4::PSE,
            ..Default::default()
        },
    };
    let mut m = Machine::new(
        SimConfig {
            ram_bytes: ram,
            ..SimConfig::default()
        },
        MmuConfig {
            mode: cfg.mmu,
            max_tables: cfg.max_tables,
            decode_assists: true,
            ..MmuConfig::default()
        },
    );
    let mut cr3s = Vec::new();
    let mut data = 0x40_0000u64;
    for _ in 0..cfg.spaces {
        let cr3 = gt.new_space(&mut m.sim);
        for p in 0..cfg.pages as u64 {
            let flags = pte::P | pte::RW | pte::US;
            gt.map(&mut m.sim, cr3, user_base + p * 4096, 1, data, flags, flags);
            data += 4096;
            if data >= ram {
                return Err("not enough guest RAM for the workload".into());
            }
        }
        cr3s.push(cr3);
    }
    ctl.cr3 = cr3s[0];
    m.start(ctl)?;
    let run_round = |m: &mut Machine| -> Result<(), String> {
        for &cr3 in &cr3s {
            if m.mov_to_cr3(cr3) != Outcome::Done {
                return Err("MOV to CR3 failed".into());
            }
            for p in 0..cfg.pages as u64 {
                let la = user_base + p * 4096;
                let a = if p % 4 == 0 {
                    Access::write(true)
                } else {
                    Access::read(true)
                };
                match m.access(la, a) {
                    Outcome::Ok(_) => {}
                    o => return Err(format!("access to {la:#x}: {o:?}")),
                }
            }
        }
        Ok(())
    };
    for _ in 0..cfg.warmup {
        run_round(&mut m)?;
    }
    let before = m.mmu.stats();
    let t0 = Instant::now();
    for _ in 0..cfg.rounds {
        run_round(&mut m)?;
    }
    let elapsed = t0.elapsed();
    let after = m.mmu.stats();
    let switches = (cfg.rounds * cfg.spaces) as u64;
    let (faults, built, installs, hits) = delta(&before, &after);
    let lookups = hits + built;
    let per = |x: u64| x as f64 / switches as f64;
    Ok(BenchReport {
        config: cfg,
        switches,
        faults_per_switch: per(faults),
        tables_per_switch: per(built),
        installs_per_switch: per(installs),
        hit_rate: if lookups == 0 {
            1.0
        } else {
            hits as f64 / lookups as f64
        },
        ns_per_switch: elapsed.as_nanos() as f64 / switches as f64,
        stats: after,
    })
}

impl Machine {
    /// `mov cr3, value`.
    pub fn mov_to_cr3(&mut self, value: u64) -> Outcome {
        self.mov_to_cr(3, value)
    }
}

/// The side-by-side table the benchmark prints.
pub fn table(reports: &[BenchReport]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<7} {:<9} {:>3} {:>4} {:>9} {:>13} {:>12} {:>10} {:>9} {:>10}",
        "mode",
        "mmu",
        "N",
        "M",
        "switches",
        "faults/switch",
        "built/switch",
        "installs/sw",
        "hit rate",
        "us/switch"
    );
    for r in reports {
        let _ = writeln!(
            s,
            "{:<7} {:<9} {:>3} {:>4} {:>9} {:>13.2} {:>12.2} {:>10.2} {:>8.1}% {:>10.2}",
            format!("{:?}", r.config.mode),
            format!("{:?}", r.config.mmu),
            r.config.spaces,
            r.config.pages,
            r.switches,
            r.faults_per_switch,
            r.tables_per_switch,
            r.installs_per_switch,
            r.hit_rate * 100.0,
            r.ns_per_switch / 1000.0,
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_mode_takes_at_least_20_times_fewer_faults_per_switch() {
        for mode in [PagingMode::Long, PagingMode::Pae, PagingMode::Bits32] {
            let small = |mmu| BenchConfig {
                rounds: 3,
                ..BenchConfig::standard(mode, mmu)
            };
            let cached = context_switch(small(MmuMode::Shadow)).unwrap();
            let base = context_switch(small(MmuMode::Baseline)).unwrap();
            assert!(
                base.faults_per_switch >= 64.0,
                "{mode:?}: baseline refaults every page: {base:?}"
            );
            assert!(
                cached.faults_per_switch * 20.0 <= base.faults_per_switch,
                "{mode:?}: cached {} vs baseline {}",
                cached.faults_per_switch,
                base.faults_per_switch
            );
        }
    }
}
