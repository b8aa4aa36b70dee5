//! The virtio-blk device server as a library: virtio's
//! [`Block`](virtio::devices::blk::Block) device on a [`ChannelBackend`],
//! which turns a guest request's buffers into block requests
//! ([`ipc_proto::block`]) to the disk-driver server over a channel: one
//! request of one buffer, or one scatter list of all of them (up to 254
//! buffers and 1 MiB a call; buffers may split a sector).
//!
//! Zero copy: a request names the guest's own buffer by its guest-physical
//! address, and the disk-driver (guest RAM mapped read-write) moves the
//! sectors between the disk and that buffer in place; this server never
//! touches the data.
//!
//! Everything the guest can get wrong ends in VIRTIO_BLK_S_IOERR for that
//! request, never a hang or a panic: data that is not whole sectors,
//! sectors past the end (the device checks), a disk-driver that answers an
//! error, a refused call, or a disk-driver that faulted and was restarted
//! during the call more than [`RESTART_RETRIES`] times in a row.
//!
//! A disk-driver restart is transient: the new instance identifies the
//! disk again at its start and serves the next call, so a call that ended
//! in `ServerRestarted` is sent again, at most [`RESTART_RETRIES`] times
//! (a driver that dies on every call gives IOERR, not a loop). Sending a
//! block request again is safe: a READ or WRITE names whole sectors and
//! the guest's own buffer, which the guest does not touch while the
//! request is in flight, so a repeat moves the same bytes to the same
//! place; a FLUSH is idempotent.
//!
//! Nothing here touches the machine: the ring-3 binary supplies the
//! channel ([`DiskChannel`]); the tests supply a disk-driver in memory.
//!
//! ```
//! use ipc_proto::block::{flags, op, status, BlockReply, BlockRequest, ListRequest, Segment};
//! use virtio::devices::blk::Block;
//! use virtio_blk::{ChannelBackend, ChannelError, DiskChannel};
//!
//! /// A disk-driver with 8 sectors of nothing.
//! struct Empty;
//! impl DiskChannel for Empty {
//!     fn call(&mut self, r: BlockRequest) -> Result<BlockReply, ChannelError> {
//!         Ok(match r.op {
//!             op::INFO => BlockReply { capacity: 8, flags: flags::FLUSH, ..BlockReply::default() },
//!             _ => BlockReply { sectors: r.sectors, ..BlockReply::default() },
//!         })
//!     }
//!     fn call_list(&mut self, r: ListRequest, _: &[Segment]) -> Result<BlockReply, ChannelError> {
//!         Ok(BlockReply { sectors: r.sectors, ..BlockReply::default() })
//!     }
//! }
//!
//! let Ok(backend) = ChannelBackend::connect(Empty) else { panic!("no disk") };
//! let read_only = backend.read_only();
//! let device = Block::new(backend, read_only);
//! assert_eq!(device.backend().info().capacity, 8);
//! ```
#![no_std]
#![deny(missing_docs)]

#[cfg(test)]
extern crate std;

use core::fmt;

use ipc_proto::block::{
    self, op, BlockReply, BlockRequest, ListRequest, Segment, MAX_SECTORS, MAX_SEGMENTS,
    SECTOR_SIZE,
};
use ipc_proto::ErrorCode;
use virtio::devices::blk::{BlockBackend, BlockError, GuestRange};
use virtio::GuestMemory;

/// The start of the configuration block in the server's executable, which
/// the image builder finds and patches: the byte after it is the disk
/// channel's number + 1 (0: not configured, the server says so and ends
/// the VM).
pub const CONFIG_MAGIC: [u8; 12] = *b"SVVBLKCONFIG";

/// The disk channel's number from the configuration byte after
/// [`CONFIG_MAGIC`], if one was set.
pub fn disk_channel_from_config(byte: u8) -> Option<u64> {
    byte.checked_sub(1).map(u64::from)
}

/// How many times one block request is sent again after the disk-driver
/// was restarted during it: one restart is a fault; three in a row for the
/// same request is a driver that cannot serve it.
pub const RESTART_RETRIES: u32 = 2;

/// Why a call on the disk channel brought no reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelError {
    /// The disk-driver faulted during the call and was restarted: the
    /// request was lost.
    ServerRestarted,
    /// The stub refused the call.
    Refused(ErrorCode),
}

impl From<ErrorCode> for ChannelError {
    fn from(e: ErrorCode) -> Self {
        match e {
            ErrorCode::ServerRestarted => Self::ServerRestarted,
            e => Self::Refused(e),
        }
    }
}

impl fmt::Display for ChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ServerRestarted => write!(
                f,
                "the disk-driver faulted and was restarted during the request"
            ),
            Self::Refused(e) => write!(
                f,
                "the call to the disk-driver was refused: {}",
                e.describe()
            ),
        }
    }
}

/// The channel to the disk-driver: one synchronous call per request (the
/// request and the reply share the channel page).
pub trait DiskChannel {
    /// Sends `request` and waits for the disk-driver's reply.
    fn call(&mut self, request: BlockRequest) -> Result<BlockReply, ChannelError>;
    /// Sends a scatter list (`request.segments` of `segments`, at most
    /// [`MAX_SEGMENTS`], written after it on the page) and waits for the
    /// reply.
    fn call_list(
        &mut self,
        request: ListRequest,
        segments: &[Segment],
    ) -> Result<BlockReply, ChannelError>;
}

/// What the disk-driver says about its disk ([`op::INFO`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskInfo {
    /// Size in 512-byte sectors.
    pub capacity: u64,
    /// [`block::flags`].
    pub flags: u32,
}

/// Why [`ChannelBackend::connect`] found no disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectError {
    /// The INFO call brought no reply.
    Channel(ChannelError),
    /// The disk-driver answered INFO with this [`block::status`] (e.g.
    /// [`block::status::NO_DISK`]).
    Status(u32),
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Channel(e) => write!(f, "{e}"),
            Self::Status(s) => write!(f, "the disk-driver answered INFO with status {s}"),
        }
    }
}

/// Counters of what went to the disk-driver, for the server's log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Calls made (INFO included).
    pub calls: u64,
    /// Requests the guest saw fail because of the disk-driver or the
    /// channel (not the device's own range checks).
    pub errors: u64,
    /// Calls that ended with `ServerRestarted`.
    pub restarts: u64,
    /// Requests sent again after a `ServerRestarted` (each counted in
    /// `calls` too).
    pub retries: u64,
}

/// A [`BlockBackend`] that asks the disk-driver over a channel to move
/// the sectors between the disk and the guest's buffers.
#[derive(Debug)]
pub struct ChannelBackend<C: DiskChannel> {
    channel: C,
    info: DiskInfo,
    counters: Counters,
}

impl<C: DiskChannel> ChannelBackend<C> {
    /// Asks the disk-driver for its disk (INFO; sent again after a
    /// restart, as every call). On failure the channel comes back with the
    /// reason, for [`ChannelBackend::absent`].
    pub fn connect(mut channel: C) -> Result<Self, (C, ConnectError)> {
        let request = BlockRequest {
            op: op::INFO,
            ..BlockRequest::default()
        };
        let mut retries = 0;
        let reply = loop {
            match channel.call(request) {
                Err(ChannelError::ServerRestarted) if retries < RESTART_RETRIES => retries += 1,
                r => break r,
            }
        };
        match reply {
            Ok(r) if r.status == block::status::OK => Ok(Self {
                channel,
                info: DiskInfo {
                    capacity: r.capacity,
                    flags: r.flags,
                },
                counters: Counters {
                    calls: 1 + u64::from(retries),
                    restarts: u64::from(retries),
                    retries: u64::from(retries),
                    ..Counters::default()
                },
            }),
            Ok(r) => Err((channel, ConnectError::Status(r.status))),
            Err(e) => Err((channel, ConnectError::Channel(e))),
        }
    }

    /// A backend for a disk-driver without a disk: capacity 0, so every
    /// read and write is IOERR (the guest still sees a device and can say
    /// so).
    pub fn absent(channel: C) -> Self {
        Self {
            channel,
            info: DiskInfo::default(),
            counters: Counters::default(),
        }
    }

    /// The disk as INFO described it.
    pub fn info(&self) -> DiskInfo {
        self.info
    }

    /// Whether the disk is attached read-only (offer VIRTIO_BLK_F_RO).
    pub fn read_only(&self) -> bool {
        self.info.flags & block::flags::READ_ONLY != 0
    }

    /// What went to the disk-driver so far.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// The channel.
    pub fn channel_mut(&mut self) -> &mut C {
        &mut self.channel
    }

    /// One call, sent again after a disk-driver restart (at most
    /// [`RESTART_RETRIES`] times); any failure is a [`BlockError`] (IOERR
    /// to the guest).
    fn call(&mut self, request: BlockRequest) -> Result<BlockReply, BlockError> {
        self.call_with(|c| c.call(request))
    }

    /// One call made by `f`, counted and checked as [`Self::call`]; `f` is
    /// called again after a disk-driver restart (it rewrites the request
    /// page each time).
    fn call_with(
        &mut self,
        mut f: impl FnMut(&mut C) -> Result<BlockReply, ChannelError>,
    ) -> Result<BlockReply, BlockError> {
        let mut attempt = 0;
        let reply = loop {
            self.counters.calls += 1;
            match f(&mut self.channel) {
                Ok(r) => break r,
                Err(ChannelError::ServerRestarted) if attempt < RESTART_RETRIES => {
                    self.counters.restarts += 1;
                    self.counters.retries += 1;
                    attempt += 1;
                }
                Err(e) => {
                    if e == ChannelError::ServerRestarted {
                        self.counters.restarts += 1;
                    }
                    self.counters.errors += 1;
                    return Err(BlockError);
                }
            }
        };
        if reply.status != block::status::OK {
            self.counters.errors += 1;
            return Err(BlockError);
        }
        Ok(reply)
    }

    /// Moves the disk bytes from `offset` on to or from the guest buffers
    /// `ranges`, in order, with `op` (READ or WRITE): whole sectors in
    /// all, in as few calls as the limits allow ([`MAX_SECTORS`] and
    /// [`MAX_SEGMENTS`] a call; a call of one buffer is a plain
    /// [`BlockRequest`], of more a scatter list). A buffer may split a
    /// sector; the buffers are handed over by address (the device checked
    /// they are guest RAM, and the sectors inside the disk).
    fn transfer(&mut self, op: u32, offset: u64, ranges: &[GuestRange]) -> Result<(), BlockError> {
        let total = ranges
            .iter()
            .try_fold(0u64, |t, r| t.checked_add(r.len))
            .ok_or(BlockError)?;
        let end = offset.checked_add(total).ok_or(BlockError)?;
        if !offset.is_multiple_of(SECTOR_SIZE)
            || !total.is_multiple_of(SECTOR_SIZE)
            || end > self.info.capacity.saturating_mul(SECTOR_SIZE)
        {
            self.counters.errors += 1;
            return Err(BlockError);
        }
        let limit = u64::from(MAX_SECTORS) * SECTOR_SIZE;
        let mut pos = 0u64;
        while pos < total {
            // The next call: segments from stream position `pos` on.
            let mut segs = [Segment::default(); MAX_SEGMENTS];
            let mut n = 0;
            let mut bytes = 0u64;
            let mut base = 0u64;
            for r in ranges {
                let (lo, hi) = (base, base + r.len);
                base = hi;
                if hi <= pos + bytes {
                    continue;
                }
                let off = pos + bytes - lo;
                let take = (r.len - off).min(limit - bytes);
                segs[n] = Segment {
                    gpa: r.gpa.checked_add(off).ok_or(BlockError)?,
                    // take <= limit (1 MiB): a u32.
                    len: u32::try_from(take).map_err(|_| BlockError)?,
                    reserved: 0,
                };
                n += 1;
                bytes += take;
                if n == MAX_SEGMENTS || bytes == limit {
                    break;
                }
            }
            // A call ends on a sector boundary: give back the bytes past
            // the last one (the next call starts with them).
            let mut trim = bytes % SECTOR_SIZE;
            bytes -= trim;
            while trim > 0 && n > 0 {
                let last = &mut segs[n - 1];
                if u64::from(last.len) > trim {
                    last.len -= trim as u32;
                    trim = 0;
                } else {
                    trim -= u64::from(last.len);
                    n -= 1;
                }
            }
            // Only 254 buffers of under a sector each make no progress.
            if bytes == 0 {
                self.counters.errors += 1;
                return Err(BlockError);
            }
            // bytes <= limit: at most MAX_SECTORS sectors.
            let sectors = (bytes / SECTOR_SIZE) as u32;
            let lba = (offset + pos) / SECTOR_SIZE;
            let reply = if n == 1 {
                self.call(BlockRequest {
                    op,
                    sectors,
                    lba,
                    gpa: segs[0].gpa,
                })?
            } else {
                let request = ListRequest {
                    op: if op == op::READ {
                        op::READ_LIST
                    } else {
                        op::WRITE_LIST
                    },
                    sectors,
                    lba,
                    segments: n as u32,
                    reserved: 0,
                };
                self.call_with(|c| c.call_list(request, &segs[..n]))?
            };
            if reply.sectors != sectors {
                self.counters.errors += 1;
                return Err(BlockError);
            }
            pos += bytes;
        }
        Ok(())
    }
}

impl<C: DiskChannel> BlockBackend for ChannelBackend<C> {
    fn capacity(&self) -> u64 {
        self.info.capacity
    }

    fn read<M: GuestMemory + ?Sized>(
        &mut self,
        offset: u64,
        _mem: &mut M,
        range: GuestRange,
    ) -> Result<(), BlockError> {
        self.transfer(op::READ, offset, &[range])
    }

    fn read_ranges<M: GuestMemory + ?Sized>(
        &mut self,
        offset: u64,
        _mem: &mut M,
        ranges: &[GuestRange],
    ) -> Result<(), BlockError> {
        self.transfer(op::READ, offset, ranges)
    }

    fn write_ranges<M: GuestMemory + ?Sized>(
        &mut self,
        offset: u64,
        _mem: &M,
        ranges: &[GuestRange],
    ) -> Result<(), BlockError> {
        if self.read_only() {
            self.counters.errors += 1;
            return Err(BlockError);
        }
        self.transfer(op::WRITE, offset, ranges)
    }

    fn write<M: GuestMemory + ?Sized>(
        &mut self,
        offset: u64,
        _mem: &M,
        range: GuestRange,
    ) -> Result<(), BlockError> {
        if self.read_only() {
            self.counters.errors += 1;
            return Err(BlockError);
        }
        self.transfer(op::WRITE, offset, &[range])
    }

    fn flush(&mut self) -> Result<(), BlockError> {
        // A disk without FLUSH CACHE has no write cache to flush.
        if self.info.flags & block::flags::FLUSH == 0 {
            return Ok(());
        }
        self.call(BlockRequest {
            op: op::FLUSH,
            ..BlockRequest::default()
        })
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests;
