//! The contract between splitvisor's seL4 root task and the mmu-server
//! component it starts: the component's CSpace (which slot holds what),
//! the badges and label of its messages to the root task, and its
//! arguments (postcard, in a read-only page).
#![no_std]

use serde::{Deserialize, Serialize};

/// The component's CSpace: one CNode of 2^10 slots (a guard of zeros
/// makes every larger capability address fail to resolve).
pub const CNODE_BITS: u64 = 10;
/// An endpoint to the root task (badge [`BADGE_REPORT`]): the report.
pub const SLOT_REPORT: u64 = 1;
/// The same endpoint (badge [`BADGE_FAULT`]): seL4 sends the component's
/// faults there.
pub const SLOT_FAULT: u64 = 2;
/// The EPT: its PML4 (with an ASID), one PDPT and one page directory.
pub const SLOT_EPT_PML4: u64 = 3;
pub const SLOT_EPT_PDPT: u64 = 4;
pub const SLOT_EPT_PD: u64 = 5;
/// Guest RAM: 2 MiB frames, frame `i` at guest-physical `i` * 2 MiB.
pub const SLOT_FRAMES: u64 = 16;
// A GiB of guest RAM (512 frames, the most the root task builds) fits.
const _: () = assert!(SLOT_FRAMES + 512 <= 1 << CNODE_BITS);
/// Distinct from the vmm-server's badges (same root-task endpoint).
pub const BADGE_REPORT: u64 = 3;
pub const BADGE_FAULT: u64 = 4;
/// The label of the report: MR0 the frames mapped (all of them, or the
/// report is a failure), MR1 seL4's error for the first refused map.
pub const REPORT_LABEL: u64 = 0x4d50;

/// What the root task tells the component.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Args {
    /// Guest-RAM frames in the CSpace from [`SLOT_FRAMES`] on.
    pub frames: u64,
}

/// The largest encoded [`Args`].
pub const ARGS_MAX: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_fit_and_decode() {
        let a = Args { frames: u64::MAX };
        let mut buf = [0u8; ARGS_MAX];
        let used = postcard::to_slice(&a, &mut buf).unwrap().len();
        assert_eq!(postcard::from_bytes::<Args>(&buf[..used]).unwrap(), a);
    }
}
