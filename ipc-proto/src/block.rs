//! Block requests on a disk channel: a client (the virtio-blk server,
//! crate `virtio-blk`) asks the disk-driver server to move whole sectors between the
//! disk and guest RAM, or to flush the disk's write cache.
//!
//! The client writes a [`BlockRequest`] at the start of the channel page
//! and calls; the server moves the data by PIO straight between the disk
//! and guest RAM (it has guest RAM mapped read-write; no bounce buffer)
//! and answers with a [`BlockReply`] at the start of the same page, over
//! the request.
//!
//! A request may name its buffer as a scatter list ([`op::READ_LIST`],
//! [`op::WRITE_LIST`]): a [`ListRequest`] and then up to [`MAX_SEGMENTS`]
//! [`Segment`]s, each any number of bytes anywhere in guest RAM, so that a
//! virtio request of many buffers (even ones that split a sector) is one
//! call. [`Request::parse`] reads either form from the page's bytes and
//! checks everything a client can get wrong.

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
    /// READ into a scatter list: a [`super::ListRequest`] whose
    /// `segments` [`super::Segment`]s follow it on the page.
    pub const READ_LIST: u32 = 5;
    /// WRITE from a scatter list, as [`READ_LIST`].
    pub const WRITE_LIST: u32 = 6;
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
    /// A malformed scatter list: no segments or more than
    /// [`super::MAX_SEGMENTS`], a segment of 0 bytes or one that wraps
    /// the address space, lengths that do not add up to `sectors` x 512,
    /// or reserved fields that are not 0.
    pub const BAD_LIST: u32 = 7;
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

wire! {
    /// A scatter-list request ([`op::READ_LIST`], [`op::WRITE_LIST`]) at
    /// the start of the page: the same first 16 bytes as a
    /// [`BlockRequest`], then how many [`Segment`]s follow at
    /// [`SEGMENTS_OFFSET`].
    pub struct ListRequest {
        /// [`op::READ_LIST`] or [`op::WRITE_LIST`].
        pub op: u32,
        /// How many sectors (1..=[`MAX_SECTORS`]): the segments' lengths
        /// add up to `sectors` x 512.
        pub sectors: u32,
        /// The first sector.
        pub lba: u64,
        /// How many segments (1..=[`MAX_SEGMENTS`]).
        pub segments: u32,
        /// Zero.
        pub reserved: u32,
    }
}

wire! {
    /// One piece of a scatter list: `len` bytes of guest RAM from `gpa`,
    /// any alignment and length (a sector may span segments). The data
    /// fills the segments in order.
    pub struct Segment {
        /// The guest-physical address of the first byte.
        pub gpa: u64,
        /// Bytes (at least 1).
        pub len: u32,
        /// Zero.
        pub reserved: u32,
    }
}

/// Where the segments of a [`ListRequest`] begin on the page.
pub const SEGMENTS_OFFSET: usize = core::mem::size_of::<ListRequest>();

/// Most segments one request may carry: as many as fit the page after the
/// [`ListRequest`] (254, the virtio-blk device's `seg_max` for its
/// 256-entry queue).
pub const MAX_SEGMENTS: usize =
    (crate::PAGE_SIZE as usize - SEGMENTS_OFFSET) / core::mem::size_of::<Segment>();

/// A READ or WRITE as the server serves it, whichever form it came in:
/// the sectors and the guest buffers they fill or come from, checked
/// ([`Request::parse`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// [`op::READ`] or [`op::WRITE`] (a list request's op is turned into
    /// these).
    pub op: u32,
    /// The first sector.
    pub lba: u64,
    /// How many sectors (1..=[`MAX_SECTORS`]).
    pub sectors: u32,
    segments: [Segment; MAX_SEGMENTS],
    count: usize,
}

/// What a page holds: a transfer, or one of the other operations (its
/// [`BlockRequest`], which the server serves as before).
#[derive(Clone, Debug, PartialEq, Eq)]
// No allocator to box the 4 KiB list with; one lives on the stack per
// request.
#[allow(clippy::large_enum_variant)]
pub enum Parsed {
    /// READ, WRITE, READ_LIST, WRITE_LIST, checked.
    Transfer(Request),
    /// Any other op (FLUSH, INFO, unknown ones).
    Other(BlockRequest),
}

impl Request {
    /// A READ or WRITE of one buffer of `sectors` x 512 bytes at `gpa`.
    pub fn single(op: u32, lba: u64, sectors: u32, gpa: u64) -> Self {
        let mut segments = [Segment::default(); MAX_SEGMENTS];
        segments[0] = Segment {
            gpa,
            len: sectors.saturating_mul(SECTOR_SIZE as u32),
            reserved: 0,
        };
        Self {
            op,
            lba,
            sectors,
            segments,
            count: 1,
        }
    }

    /// The segments, in order.
    pub fn segments(&self) -> &[Segment] {
        &self.segments[..self.count]
    }

    /// Reads a request from the first bytes of a channel page (a copy the
    /// client can no longer change). Never panics; a transfer comes back
    /// only if it is well formed: 1..=[`MAX_SECTORS`] sectors, and for a
    /// list 1..=[`MAX_SEGMENTS`] segments of at least one byte each, none
    /// wrapping past 2^64, adding up to exactly `sectors` x 512, reserved
    /// fields 0. The error is the [`status`] to answer. Whether the
    /// buffers are guest RAM and the sectors on the disk is the server's
    /// to check.
    pub fn parse(page: &[u8]) -> Result<Parsed, u32> {
        let Ok((head, _)) = BlockRequest::read_from_prefix(page) else {
            return Err(status::BAD_LIST);
        };
        let op = match head.op {
            op::READ | op::WRITE => {
                if head.sectors == 0 || head.sectors > MAX_SECTORS {
                    return Err(status::OUT_OF_RANGE);
                }
                let len = u64::from(head.sectors) * SECTOR_SIZE;
                if head.gpa.checked_add(len).is_none() {
                    return Err(status::BAD_BUFFER);
                }
                return Ok(Parsed::Transfer(Self::single(
                    head.op,
                    head.lba,
                    head.sectors,
                    head.gpa,
                )));
            }
            op::READ_LIST => op::READ,
            op::WRITE_LIST => op::WRITE,
            _ => return Ok(Parsed::Other(head)),
        };
        let Ok((list, _)) = ListRequest::read_from_prefix(page) else {
            return Err(status::BAD_LIST);
        };
        if list.sectors == 0 || list.sectors > MAX_SECTORS {
            return Err(status::OUT_OF_RANGE);
        }
        let count = list.segments as usize;
        if list.reserved != 0 || count == 0 || count > MAX_SEGMENTS {
            return Err(status::BAD_LIST);
        }
        let mut segments = [Segment::default(); MAX_SEGMENTS];
        let mut total = 0u64;
        for (i, to) in segments.iter_mut().take(count).enumerate() {
            // Copied out one by one: the page need not be 8-aligned.
            let at = SEGMENTS_OFFSET + i * core::mem::size_of::<Segment>();
            let Ok((seg, _)) = Segment::read_from_prefix(page.get(at..).unwrap_or(&[])) else {
                return Err(status::BAD_LIST);
            };
            if seg.len == 0 || seg.reserved != 0 {
                return Err(status::BAD_LIST);
            }
            if seg.gpa.checked_add(u64::from(seg.len)).is_none() {
                return Err(status::BAD_BUFFER);
            }
            // At most 254 lengths below 2^32: no overflow in a u64.
            total += u64::from(seg.len);
            *to = seg;
        }
        if total != u64::from(list.sectors) * SECTOR_SIZE {
            return Err(status::BAD_LIST);
        }
        Ok(Parsed::Transfer(Self {
            op,
            lba: list.lba,
            sectors: list.sectors,
            segments,
            count,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn list_request_and_segment_layouts_are_pinned() {
        assert_eq!(size_of::<ListRequest>(), 24);
        assert_eq!(offset_of!(ListRequest, op), 0);
        assert_eq!(offset_of!(ListRequest, sectors), 4);
        assert_eq!(offset_of!(ListRequest, lba), 8);
        assert_eq!(offset_of!(ListRequest, segments), 16);
        assert_eq!(offset_of!(ListRequest, reserved), 20);
        assert_eq!(size_of::<Segment>(), 16);
        assert_eq!(offset_of!(Segment, len), 8);
        assert_eq!(SEGMENTS_OFFSET, 24);
        assert_eq!(MAX_SEGMENTS, 254);
        assert!(SEGMENTS_OFFSET + MAX_SEGMENTS * 16 <= crate::PAGE_SIZE as usize);
    }

    /// A page holding `list` and `segs`.
    fn page(list: ListRequest, segs: &[Segment]) -> [u8; 4096] {
        let mut p = [0u8; 4096];
        p[..24].copy_from_slice(list.as_bytes());
        for (i, s) in segs.iter().enumerate() {
            p[24 + 16 * i..][..16].copy_from_slice(s.as_bytes());
        }
        p
    }

    fn seg(gpa: u64, len: u32) -> Segment {
        Segment {
            gpa,
            len,
            reserved: 0,
        }
    }

    fn list(op: u32, sectors: u32, segments: u32) -> ListRequest {
        ListRequest {
            op,
            sectors,
            lba: 7,
            segments,
            reserved: 0,
        }
    }

    #[test]
    fn a_list_parses_into_its_segments() {
        let segs = [seg(0x1000, 100), seg(0x9000, 412), seg(0x2000, 512)];
        let p = page(list(op::READ_LIST, 2, 3), &segs);
        let Ok(Parsed::Transfer(r)) = Request::parse(&p) else {
            panic!("{:?}", Request::parse(&p));
        };
        assert_eq!((r.op, r.lba, r.sectors), (op::READ, 7, 2));
        assert_eq!(r.segments(), &segs);
        let p = page(list(op::WRITE_LIST, 2, 3), &segs);
        assert!(matches!(
            Request::parse(&p),
            Ok(Parsed::Transfer(Request { op: op::WRITE, .. }))
        ));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// Any bytes: no panic, and a transfer that parses keeps every
        /// promise of `Request::parse`.
        #[test]
        fn any_page_parses_or_is_refused(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
            op_byte in 0u8..8,
            count in 0u32..40,
            sectors in 0u32..4,
            shift in 0usize..9,
        ) {
            let mut bytes = bytes;
            // Steer toward lists that might pass: a known op, small counts.
            if bytes.len() >= 24 {
                bytes[0..4].copy_from_slice(&u32::from(op_byte).to_le_bytes());
                bytes[4..8].copy_from_slice(&sectors.to_le_bytes());
                bytes[16..20].copy_from_slice(&count.to_le_bytes());
                bytes[20..24].fill(0);
            }
            // Misaligned copies too.
            let page = &bytes[shift.min(bytes.len())..];
            if let Ok(Parsed::Transfer(r)) = Request::parse(page) {
                proptest::prop_assert!(r.op == op::READ || r.op == op::WRITE);
                proptest::prop_assert!((1..=MAX_SECTORS).contains(&r.sectors));
                proptest::prop_assert!((1..=MAX_SEGMENTS).contains(&r.segments().len()));
                let mut total = 0u64;
                for s in r.segments() {
                    proptest::prop_assert!(s.len > 0);
                    proptest::prop_assert!(s.gpa.checked_add(u64::from(s.len)).is_some());
                    total += u64::from(s.len);
                }
                proptest::prop_assert_eq!(total, u64::from(r.sectors) * SECTOR_SIZE);
            }
        }
    }

    #[test]
    fn a_single_request_is_a_list_of_one() {
        let b = BlockRequest {
            op: op::WRITE,
            sectors: 3,
            lba: 9,
            gpa: 0x4000,
        };
        let Ok(Parsed::Transfer(r)) = Request::parse(b.as_bytes()) else {
            panic!()
        };
        assert_eq!(r.segments(), &[seg(0x4000, 1536)]);
        let other = BlockRequest {
            op: op::FLUSH,
            ..BlockRequest::default()
        };
        assert_eq!(Request::parse(other.as_bytes()), Ok(Parsed::Other(other)));
    }

    #[test]
    fn malformed_lists_are_refused_with_a_reason() {
        let ok = [seg(0, 512)];
        let cases: [(ListRequest, &[Segment], u32); 9] = [
            (list(op::READ_LIST, 0, 1), &ok, status::OUT_OF_RANGE),
            (
                list(op::READ_LIST, MAX_SECTORS + 1, 1),
                &ok,
                status::OUT_OF_RANGE,
            ),
            (list(op::READ_LIST, 1, 0), &ok, status::BAD_LIST),
            (
                list(op::READ_LIST, 1, MAX_SEGMENTS as u32 + 1),
                &ok,
                status::BAD_LIST,
            ),
            (list(op::READ_LIST, 2, 1), &ok, status::BAD_LIST),
            (
                list(op::READ_LIST, 1, 2),
                &[seg(0, 512), seg(0, 0)],
                status::BAD_LIST,
            ),
            (
                list(op::READ_LIST, 1, 1),
                &[seg(u64::MAX - 100, 512)],
                status::BAD_BUFFER,
            ),
            (
                list(op::READ_LIST, 1, 2),
                &[seg(0, 511), seg(0, 2)],
                status::BAD_LIST,
            ),
            (
                ListRequest {
                    reserved: 1,
                    ..list(op::READ_LIST, 1, 1)
                },
                &ok,
                status::BAD_LIST,
            ),
        ];
        for (l, segs, want) in cases {
            assert_eq!(Request::parse(&page(l, segs)), Err(want), "{l:?} {segs:?}");
        }
        // A page too short for its segments, or for a request at all.
        let p = page(list(op::READ_LIST, 1, 2), &[seg(0, 256), seg(0, 256)]);
        assert_eq!(Request::parse(&p[..40]), Err(status::BAD_LIST));
        assert_eq!(Request::parse(&p[..10]), Err(status::BAD_LIST));
        // A 255th segment does not fit the page.
        let full = page(list(op::READ_LIST, 1, 254), &[]);
        assert_eq!(Request::parse(&full), Err(status::BAD_LIST));
    }

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
        assert!(size_of::<BlockRequest>() <= crate::PAGE_SIZE as usize);
        assert!(size_of::<BlockReply>() <= crate::PAGE_SIZE as usize);
    }
}
