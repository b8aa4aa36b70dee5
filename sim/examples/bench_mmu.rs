//! `cargo run --release -p sim --example bench_mmu [N M]`: the
//! context-switch benchmark in the simulator, cached shadow tables against
//! the 2006 baseline (and nested paging), side by side.

use mmu_server::{MmuMode, PagingMode};
use sim::bench::{context_switch, table, BenchConfig};

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (n, m) = (
        args.first().copied().unwrap_or(8),
        args.get(1).copied().unwrap_or(64),
    );
    let mut reports = Vec::new();
    for mode in [PagingMode::Long, PagingMode::Pae, PagingMode::Bits32] {
        for mmu in [MmuMode::Shadow, MmuMode::Baseline, MmuMode::Nested] {
            let cfg = BenchConfig {
                spaces: n,
                pages: m,
                ..BenchConfig::standard(mode, mmu)
            };
            match context_switch(cfg) {
                Ok(r) => reports.push(r),
                Err(e) => {
                    eprintln!("{mode:?} {mmu:?}: {e}");
                    std::process::exit(1);
                }
            }
        }
    }
    print!("{}", table(&reports));
}
