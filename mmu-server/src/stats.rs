//! The mmu-server's figures: `ipc_proto::stats::MmuStats`, part of the
//! ABI, so that the stub can carry them in the statistics the vmm-server
//! prints.

pub use ipc_proto::stats::MmuStats;
