//! The contract between splitvisor's seL4 root task and the vmm-server
//! component it starts: the component's CSpace (which slot holds what),
//! the badges and label of its messages to the root task, and the
//! arguments the root task hands it (postcard, in a read-only page).
#![no_std]

use ipc_proto::manifest::{Board, EntryMode};
use serde::{Deserialize, Serialize};

/// The component's CSpace: one CNode of 2^4 slots, with a guard that makes
/// every other 64-bit capability address fail to resolve.
pub const CNODE_BITS: u64 = 4;
/// The VCPU, bound to the component's thread.
pub const SLOT_VCPU: u64 = 1;
/// An endpoint to the root task (badge [`BADGE_REPORT`]): the ending.
pub const SLOT_REPORT: u64 = 2;
/// The same endpoint (badge [`BADGE_FAULT`]): seL4 sends the component's
/// faults there.
pub const SLOT_FAULT: u64 = 3;
/// A send capability to the mmu-server component's endpoint (its badge
/// `sel4_mmu_server::BADGE_VMM`): the EPT violations on guest RAM go there.
pub const SLOT_MMU: u64 = 4;
/// How many capabilities the CSpace holds.
pub const CAPABILITIES: u64 = 4;
pub const BADGE_REPORT: u64 = 1;
pub const BADGE_FAULT: u64 = 2;
/// The label of the ending report (MR0: the debug-exit code); fault labels
/// are seL4's small fault numbers.
pub const REPORT_LABEL: u64 = 0x5650;

/// Where guest RAM is mapped in the component's VSpace (and the root
/// task's): PML4 slot 1.
pub const GUEST_WINDOW: u64 = 0x80_0000_0000;

/// What the root task tells the component.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Args {
    pub entry_mode: EntryMode,
    pub entry_rip: u64,
    /// RAX, RBX, RSI at entry.
    pub entry_regs: [u64; 3],
    pub board: Board,
    /// Guest RAM in bytes, mapped at [`GUEST_WINDOW`].
    pub ram: u64,
    pub tsc_hz: u64,
    /// The hostile case (`run --sel4-hostile-vmm`): a capability address of
    /// the root task's (where it held the EPT before handing it to the
    /// mmu-server) that the component invokes although it was not given
    /// it; 0 normally.
    pub hostile_target: u64,
}

/// The largest encoded [`Args`] (the page holds it with its length).
pub const ARGS_MAX: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_fit_their_page_and_decode() {
        let a = Args {
            entry_mode: EntryMode::Real16,
            entry_rip: u64::MAX,
            entry_regs: [u64::MAX; 3],
            board: Board::Pc,
            ram: u64::MAX,
            tsc_hz: u64::MAX,
            hostile_target: u64::MAX,
        };
        let mut buf = [0u8; ARGS_MAX];
        let used = postcard::to_slice(&a, &mut buf).unwrap().len();
        assert!(used <= ARGS_MAX);
        assert_eq!(postcard::from_bytes::<Args>(&buf[..used]).unwrap(), a);
    }
}
