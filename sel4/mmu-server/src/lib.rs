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
/// All three are moved here: the root task keeps none (the vmm-server's
/// thread holds the PML4 as its EPT root, bound before the move).
pub const SLOT_EPT_PML4: u64 = 3;
pub const SLOT_EPT_PDPT: u64 = 4;
pub const SLOT_EPT_PD: u64 = 5;
/// The endpoint the vmm-server component's EPT violations arrive on (the
/// receive right; the vmm-server holds a send capability with badge
/// [`BADGE_VMM`]).
pub const SLOT_EXITS: u64 = 6;
/// Guest RAM: 2 MiB frames, frame `i` at guest-physical `i` * 2 MiB.
pub const SLOT_FRAMES: u64 = 16;
// A GiB of guest RAM (512 frames, the most the root task builds) fits.
const _: () = assert!(SLOT_FRAMES + 512 <= 1 << CNODE_BITS);
/// Distinct from the vmm-server's badges (same root-task endpoint).
pub const BADGE_REPORT: u64 = 3;
pub const BADGE_FAULT: u64 = 4;
/// The label of the report (an `seL4_Send`, once the EPT's tables are in
/// place): MR0 the frames it serves (all of them, or the report is a
/// failure), MR1 seL4's error for a refused table map.
pub const REPORT_LABEL: u64 = 0x4d50;

/// The vmm-server's capability to [`SLOT_EXITS`] carries this badge.
pub const BADGE_VMM: u64 = 1;
/// An EPT violation (an `seL4_Call`): MR0 the guest-physical address,
/// MR1 the exit qualification.
pub const EPT_VIOLATION_LABEL: u64 = 0x4550;
/// The reply: MR0 one of these, MR1 the 2 MiB pages mapped so far, MR2
/// seL4's error for [`REPLY_REFUSED`].
pub const REPLY_MAPPED: u64 = 0;
/// The address is not guest RAM: nothing is mapped (the vmm-server
/// handles it as MMIO or reports it).
pub const REPLY_NOT_RAM: u64 = 1;
/// seL4 refused `Page_MapEPT` (the frame is mapped already, say).
pub const REPLY_REFUSED: u64 = 2;
/// Not an EPT violation message, or not from the vmm-server.
pub const REPLY_BAD_MESSAGE: u64 = 3;

/// The 2 MiB page of guest RAM that holds `gpa`, with `frames` frames
/// (frame `i` at `i` * 2 MiB): its frame index and its guest-physical
/// base; `None` outside guest RAM.
pub fn frame_for(gpa: u64, frames: u64) -> Option<(u64, u64)> {
    let i = gpa >> LARGE_PAGE_BITS;
    (i < frames).then_some((i, i << LARGE_PAGE_BITS))
}

const LARGE_PAGE_BITS: u32 = 21;

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

    #[test]
    fn a_fault_maps_the_2_mib_page_that_holds_it_and_nothing_outside_ram() {
        assert_eq!(frame_for(0, 8), Some((0, 0)));
        assert_eq!(frame_for(0x7c00, 8), Some((0, 0)));
        assert_eq!(frame_for(0x20_0000, 8), Some((1, 0x20_0000)));
        assert_eq!(frame_for(0xff_ffff, 8), Some((7, 0xe0_0000)));
        // 16 MiB of RAM: its end, the local APIC, the top of the address space.
        assert_eq!(frame_for(0x100_0000, 8), None);
        assert_eq!(frame_for(0xfee0_0000, 8), None);
        assert_eq!(frame_for(u64::MAX, 8), None);
        assert_eq!(frame_for(0, 0), None);
    }
}
