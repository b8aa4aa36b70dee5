//! Guest writes that bypass the shadow MMU's write protection.
//!
//! Under shadow paging the mmu-server write-protects the guest's page
//! tables, so that it sees every write the guest's CPU makes to them. A
//! server that writes guest RAM through its window (the vmm-server
//! emulating `INS` or an MMIO store, a device server filling a read buffer
//! in place) bypasses that protection. Each such writer has a channel to
//! the mmu-server (the mmu-server is its server; `manifest::Manifest::
//! guest_write_channels` and `stub_abi::layout::BootInfo::guest_write_channels` name
//! those channels): it records the guest frames it wrote in the channel
//! page ([`GuestWritesPage`]) and, before the guest can run again,
//! `Signal`s the mmu-server with [`signal_bit`] of the channel. The
//! mmu-server then gets a notification exit before the next guest entry
//! (the stub's scheduling rule), reads and clears the page, and resyncs
//! the shadows of any page table among those frames.
//!
//! A writer finds its channel among the mask's with `Signal(ch, 0)`,
//! which succeeds only on a channel the caller is an end of and sets no
//! bit. The page is the writer's to fill and the mmu-server's to read:
//! the mmu-server trusts nothing in it (a count past the array is
//! clamped, a frame outside guest RAM is skipped).

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Frames one page records; more set [`GuestWritesPage::overflow`].
pub const GUEST_WRITE_FRAMES: usize = 510;

/// The channel page of a guest-writes channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct GuestWritesPage {
    /// Valid entries of `frames`.
    pub count: u32,
    /// Not zero: more frames were written than `frames` holds; the reader
    /// treats all guest RAM as written.
    pub overflow: u32,
    /// Guest frame numbers (guest-physical address >> 12) written.
    pub frames: [u64; GUEST_WRITE_FRAMES],
}

impl Default for GuestWritesPage {
    fn default() -> Self {
        Self {
            count: 0,
            overflow: 0,
            frames: [0; GUEST_WRITE_FRAMES],
        }
    }
}

/// The `Signal` bit a writer sends on guest-writes channel `channel`
/// (0..16: one bit per channel, within [`crate::SIGNAL_BITS`]).
pub const fn signal_bit(channel: usize) -> u64 {
    1 << (channel & 15)
}

impl GuestWritesPage {
    /// Records that `len` bytes at guest-physical `gpa` were written (each
    /// frame once while it is the last recorded). Returns true when the
    /// page went from empty to not empty: the writer must `Signal`.
    pub fn record(&mut self, gpa: u64, len: u64) -> bool {
        let was_empty = self.is_empty();
        if len == 0 {
            return false;
        }
        let first = gpa >> 12;
        let last = gpa.saturating_add(len - 1) >> 12;
        for gfn in first..=last {
            if self.overflow != 0 {
                break;
            }
            let n = (self.count as usize).min(GUEST_WRITE_FRAMES);
            if self.frames[..n].contains(&gfn) {
                continue;
            }
            if n == GUEST_WRITE_FRAMES {
                self.overflow = 1;
            } else {
                self.frames[n] = gfn;
                self.count = n as u32 + 1;
            }
        }
        was_empty && !self.is_empty()
    }

    /// Nothing recorded.
    pub fn is_empty(&self) -> bool {
        self.count == 0 && self.overflow == 0
    }

    /// The reader: calls `frame` for each recorded frame (at most
    /// [`GUEST_WRITE_FRAMES`], whatever `count` says) and clears the page;
    /// returns whether it overflowed.
    pub fn drain(&mut self, mut frame: impl FnMut(u64)) -> bool {
        let n = (self.count as usize).min(GUEST_WRITE_FRAMES);
        self.frames[..n].iter().for_each(|f| frame(*f));
        let overflow = self.overflow != 0;
        self.count = 0;
        self.overflow = 0;
        overflow
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn the_page_fits_a_page() {
        assert!(size_of::<GuestWritesPage>() <= 4096);
        assert_eq!(signal_bit(0), 1);
        assert_eq!(signal_bit(15), 1 << 15);
        assert_eq!(signal_bit(15) & !crate::SIGNAL_BITS, 0);
    }

    #[test]
    fn frames_are_recorded_once_and_drained() {
        let mut p = GuestWritesPage::default();
        assert!(p.record(0x1ffe, 4), "first write: signal");
        assert!(!p.record(0x2000, 1), "already signalled");
        assert!(!p.record(0x5000, 0));
        let mut got = [0u64; 4];
        let mut n = 0;
        assert!(!p.drain(|f| {
            got[n] = f;
            n += 1;
        }));
        assert_eq!(&got[..n], &[1, 2]);
        assert!(p.is_empty());
        assert!(p.record(0x3000, 1), "empty again: signal again");
    }

    #[test]
    fn too_many_frames_overflow_and_a_hostile_count_is_clamped() {
        let mut p = GuestWritesPage::default();
        p.record(0, (GUEST_WRITE_FRAMES as u64 + 3) << 12);
        p.record(0, u64::MAX); // stops at the overflow
        assert_eq!(p.count as usize, GUEST_WRITE_FRAMES);
        assert_eq!(p.overflow, 1);
        let mut p = GuestWritesPage {
            count: u32::MAX,
            ..Default::default()
        };
        let mut n = 0;
        p.drain(|_| n += 1);
        assert_eq!(n, GUEST_WRITE_FRAMES);
        assert!(!p.record(0, 1) || p.count == 1);
    }
}
