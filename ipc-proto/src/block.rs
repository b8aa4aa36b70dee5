//! Block requests on a disk channel: a client (the virtio-blk server,
//! crate `virtio-blk`) asks the disk-driver server to move whole sectors between the
//! disk and guest RAM, or to flush the disk's write cache.
//!
//! The client writes a [`BlockRequest`] at the start of the channel page
//! and calls; the server moves the data by PIO straight between the disk
//! and guest RAM (it has guest RAM mapped read-write; no bounce buffer)
//! and answers with a [`BlockReply`] at the start of the same page, over
//! the request.

use crate::vcpu::wire;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Bytes in a sector.
pub const SECTOR_SIZE: u64 = 512;

/// Most sectors one request may move (1 MiB): a bound on how long one
/// call keeps the server busy.
pub const MAX_SECTORS: u32 = 2048;

/// [`BlockRequest::op`] values.
pub mod op {
    /// Read `sectors` sectors from `lba` into guest RAM at `gpa`.
    pub const READ: u32 = 1;
    /// Write `sectors` sectors from guest RAM at `gpa` to the disk at `lba`.
    pub const WRITE: u32 = 2;
    /// Return when everything written so far is on the medium (FLUSH
    /// CACHE (EXT)); `lba`, `sectors`, `gpa` are ignored.
    pub const FLUSH: u32 = 3;
    /// Describe the disk: the reply's `capacity` and `flags`.
    pub const INFO: u32 = 4;
}

/// [`BlockReply::status`] values. 0-2 are virtio-blk's own
/// (`VIRTIO_BLK_S_OK`, `_IOERR`, `_UNSUPP`), so a virtio-blk device can
/// pass them on; a client maps the others to `VIRTIO_BLK_S_IOERR`.
pub mod status {
    /// Done.
    pub const OK: u32 = 0;
    /// The disk reported an error (the reply's `ata_status` and
    /// `ata_error` say which) or did not answer in time.
    pub const IO_ERROR: u32 = 1;
    /// An unknown `op`, or FLUSH on a disk without a flush command.
    pub const UNSUPPORTED: u32 = 2;
    /// `lba` + `sectors` runs past the end of the disk, or `sectors` is 0
    /// or above [`super::MAX_SECTORS`].
    pub const OUT_OF_RANGE: u32 = 3;
    /// The buffer `gpa`..`gpa` + `sectors` x 512 is not inside guest RAM.
    pub const BAD_BUFFER: u32 = 4;
    /// WRITE to a disk attached read-only.
    pub const READ_ONLY: u32 = 5;
    /// The server has no usable disk (IDENTIFY DEVICE failed at start).
    pub const NO_DISK: u32 = 6;
}

/// [`BlockReply::flags`] bits, for [`op::INFO`].
pub mod flags {
    /// FLUSH is honoured (the disk has FLUSH CACHE or FLUSH CACHE EXT).
    pub const FLUSH: u32 = 1 << 0;
    /// The disk is attached read-only: WRITE answers
    /// [`super::status::READ_ONLY`].
    pub const READ_ONLY: u32 = 1 << 1;
}

wire! {
    /// A request, at the start of the disk channel's page.
    pub struct BlockRequest {
        /// [`op`].
        pub op: u32,
        /// How many sectors (1..=[`MAX_SECTORS`]) for READ and WRITE.
        pub sectors: u32,
        /// The first sector.
        pub lba: u64,
        /// The guest-physical address of the buffer: `sectors` x 512
        /// contiguous bytes of guest RAM (any alignment).
        pub gpa: u64,
    }
}

wire! {
    /// The answer, written over the request.
    pub struct BlockReply {
        /// [`status`].
        pub status: u32,
        /// With [`status::IO_ERROR`]: the ATA Status register at the error
        /// (0 when the disk did not answer in time).
        pub ata_status: u8,
        /// With [`status::IO_ERROR`]: the ATA Error register.
        pub ata_error: u8,
        /// Zero.
        pub reserved: u16,
        /// READ, WRITE: the sectors moved before the reply (all of them
        /// with [`status::OK`]; the failing sector is `lba` + `sectors`
        /// otherwise).
        pub sectors: u32,
        /// INFO: [`flags`].
        pub flags: u32,
        /// INFO: the disk's size in sectors.
        pub capacity: u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn block_request_layout_is_pinned() {
        assert_eq!(size_of::<BlockRequest>(), 24);
        assert_eq!(offset_of!(BlockRequest, op), 0);
        assert_eq!(offset_of!(BlockRequest, sectors), 4);
        assert_eq!(offset_of!(BlockRequest, lba), 8);
        assert_eq!(offset_of!(BlockRequest, gpa), 16);
    }

    #[test]
    fn block_reply_layout_is_pinned() {
        assert_eq!(size_of::<BlockReply>(), 24);
        assert_eq!(offset_of!(BlockReply, status), 0);
        assert_eq!(offset_of!(BlockReply, ata_status), 4);
        assert_eq!(offset_of!(BlockReply, ata_error), 5);
        assert_eq!(offset_of!(BlockReply, reserved), 6);
        assert_eq!(offset_of!(BlockReply, sectors), 8);
        assert_eq!(offset_of!(BlockReply, flags), 12);
        assert_eq!(offset_of!(BlockReply, capacity), 16);
    }

    #[test]
    fn the_first_statuses_are_virtio_blks() {
        // VIRTIO_BLK_S_OK, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP (virtio
        // 1.2, 5.2.6).
        assert_eq!(
            (status::OK, status::IO_ERROR, status::UNSUPPORTED),
            (0, 1, 2)
        );
    }

    #[test]
    fn both_fit_one_page_and_share_its_start() {
        assert!(size_of::<BlockRequest>() <= crate::layout::PAGE_SIZE as usize);
        assert!(size_of::<BlockReply>() <= crate::layout::PAGE_SIZE as usize);
    }
}
