//! Split virtqueues processed in place (VIRTIO 1.2, 2.7).
//!
//! A [`Queue`] holds what the driver configured through the transport
//! (size, the three ring addresses) and the device's own indices. The
//! driver controls every byte of the rings and descriptor tables, so every
//! value read from guest memory is checked before it is used, and a
//! violation is a typed [`QueueError`]; the transport turns it into
//! DEVICE_NEEDS_RESET (2.1.2). Nothing here panics on guest data, and every
//! access goes through [`GuestMemory`], which refuses anything outside RAM.
//!
//! Layout (2.7.2, 2.7.6, 2.7.8), all little-endian:
//!
//! | area | alignment | bytes |
//! |---|---|---|
//! | descriptor table | 16 | 16 × size: `addr: u64, len: u32, flags: u16, next: u16` |
//! | available ring (driver area) | 2 | `flags: u16, idx: u16, ring: [u16; size], used_event: u16` |
//! | used ring (device area) | 4 | `flags: u16, idx: u16, ring: [{id: u32, len: u32}; size], avail_event: u16` |

use core::fmt;
use core::sync::atomic::{fence, Ordering};

use crate::memory::{GuestMemory, MemoryError};

/// Largest queue size of a split virtqueue (2.7: 32768).
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// Descriptor flags (2.7.5).
pub mod desc_flags {
    /// The chain continues at `next`.
    pub const NEXT: u16 = 1;
    /// The buffer is device-writable (else device-readable).
    pub const WRITE: u16 = 2;
    /// The buffer holds a table of indirect descriptors (2.7.5.3).
    pub const INDIRECT: u16 = 4;
}

/// Available ring flag: the driver asks not to be interrupted (2.7.7;
/// ignored with VIRTIO_F_EVENT_IDX).
pub const VIRTQ_AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Used ring flag: the device asks not to be notified (2.7.10).
pub const VIRTQ_USED_F_NO_NOTIFY: u16 = 1;

/// Bytes of one descriptor.
pub const DESCRIPTOR_SIZE: u64 = 16;

/// `vring_need_event` (2.7.10): with VIRTIO_F_EVENT_IDX, whether moving an
/// index from `old` to `new` crosses `event` — the other side asked to be
/// told once the index passes `event`.
pub const fn vring_need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// The ring areas named in errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Area {
    /// The descriptor table (`queue_desc`).
    DescriptorTable,
    /// The available ring (`queue_driver`).
    AvailableRing,
    /// The used ring (`queue_device`).
    UsedRing,
}

/// A violation of the split virtqueue rules by the driver (or a misuse by
/// the device, [`QueueError::UsedHeadOutOfRange`]). The transport answers
/// every one with DEVICE_NEEDS_RESET.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueError {
    /// The queue is not enabled.
    NotReady,
    /// The driver's queue size is 0, not a power of two, or above the
    /// device's maximum (2.7: power of two up to 32768).
    BadSize {
        /// Size the driver wrote.
        size: u16,
        /// The device's maximum.
        max: u16,
    },
    /// A ring area is not aligned as 2.7 requires (16, 2, 4).
    Misaligned {
        /// Which area.
        area: Area,
        /// Its address.
        gpa: u64,
    },
    /// A ring area, descriptor or indirect table is not in guest RAM.
    Ring {
        /// Which area (an indirect table counts as a descriptor table).
        area: Area,
        /// What the memory said.
        error: MemoryError,
    },
    /// The available index moved by more than the queue size since the
    /// device last looked (2.7.13.3: a driver cannot have more than `size`
    /// buffers outstanding).
    AvailIdxJump {
        /// The device's next available index.
        next_avail: u16,
        /// The index the driver published.
        avail_idx: u16,
        /// The queue size.
        size: u16,
    },
    /// A head index in the available ring is not below the queue size.
    HeadOutOfRange {
        /// The head read.
        head: u16,
        /// The queue size.
        size: u16,
    },
    /// A descriptor's `next` is outside its table.
    NextOutOfRange {
        /// The index read.
        next: u16,
        /// Entries in the table (queue size, or indirect table length).
        table_len: u32,
    },
    /// The chain visits more descriptors than its table holds: a loop
    /// (2.7.5.2: a chain is not longer than the queue size; an indirect
    /// chain is not longer than its table).
    ChainTooLong {
        /// Head of the chain.
        head: u16,
        /// Descriptors allowed.
        limit: u32,
    },
    /// A buffer's `addr + len` wraps, or it is not in guest RAM.
    Buffer(MemoryError),
    /// An indirect descriptor, but VIRTIO_F_INDIRECT_DESC was not
    /// negotiated (2.7.5.3.1).
    IndirectNotNegotiated,
    /// An indirect descriptor inside an indirect table (2.7.5.3.1).
    NestedIndirect,
    /// An indirect descriptor with NEXT set (2.7.5.3.1).
    IndirectWithNext,
    /// An indirect table whose length is 0, not a multiple of 16, or more
    /// than 32768 descriptors.
    IndirectTableLength {
        /// Its `len`.
        len: u32,
    },
    /// A device-readable buffer after a device-writable one (2.7.4.2).
    ReadableAfterWritable,
    /// The device returned a head that is not a descriptor index.
    UsedHeadOutOfRange {
        /// The head.
        head: u16,
        /// The queue size.
        size: u16,
    },
}

impl fmt::Display for QueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::NotReady => write!(f, "the queue is not enabled"),
            Self::BadSize { size, max } => write!(
                f,
                "queue size {size} is not a power of two between 1 and {max}"
            ),
            Self::Misaligned { area, gpa } => write!(f, "{area:?} at {gpa:#x} is misaligned"),
            Self::Ring { area, error } => write!(f, "{area:?}: {error}"),
            Self::AvailIdxJump { next_avail, avail_idx, size } => write!(
                f,
                "available index jumped from {next_avail} to {avail_idx}, more than the queue size {size}"
            ),
            Self::HeadOutOfRange { head, size } => {
                write!(f, "available ring names head {head}, queue size is {size}")
            }
            Self::NextOutOfRange { next, table_len } => {
                write!(f, "descriptor next {next} is outside a table of {table_len}")
            }
            Self::ChainTooLong { head, limit } => write!(
                f,
                "the chain at head {head} is longer than {limit} descriptors (a loop)"
            ),
            Self::Buffer(e) => write!(f, "buffer: {e}"),
            Self::IndirectNotNegotiated => write!(
                f,
                "indirect descriptor without VIRTIO_F_INDIRECT_DESC negotiated"
            ),
            Self::NestedIndirect => write!(f, "indirect descriptor inside an indirect table"),
            Self::IndirectWithNext => write!(f, "indirect descriptor with NEXT set"),
            Self::IndirectTableLength { len } => write!(
                f,
                "indirect table of {len} bytes (must be a nonzero multiple of 16, at most 32768 entries)"
            ),
            Self::ReadableAfterWritable => {
                write!(f, "a device-readable buffer follows a device-writable one")
            }
            Self::UsedHeadOutOfRange { head, size } => {
                write!(f, "device returned head {head} for a queue of {size}")
            }
        }
    }
}

/// One buffer of a chain, in guest RAM (checked when it was read).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buffer {
    /// Guest-physical address.
    pub gpa: u64,
    /// Length in bytes.
    pub len: u32,
    /// Device-writable (else device-readable).
    pub writable: bool,
}

#[derive(Clone, Copy, Debug)]
struct Descriptor {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

fn read_descriptor<M: GuestMemory + ?Sized>(
    mem: &M,
    table: u64,
    index: u16,
) -> Result<Descriptor, QueueError> {
    let mut b = [0u8; 16];
    // `index` is below the table length, whose bytes were checked to fit
    // in a u64 (direct: 16 × 32768; indirect: `len`), so this cannot wrap;
    // the memory checks the sum anyway.
    let gpa = table.wrapping_add(u64::from(index) * DESCRIPTOR_SIZE);
    mem.read(gpa, &mut b).map_err(|error| QueueError::Ring {
        area: Area::DescriptorTable,
        error,
    })?;
    let [a0, a1, a2, a3, a4, a5, a6, a7, l0, l1, l2, l3, f0, f1, n0, n1] = b;
    Ok(Descriptor {
        addr: u64::from_le_bytes([a0, a1, a2, a3, a4, a5, a6, a7]),
        len: u32::from_le_bytes([l0, l1, l2, l3]),
        flags: u16::from_le_bytes([f0, f1]),
        next: u16::from_le_bytes([n0, n1]),
    })
}

/// A descriptor chain the device took from the available ring: its head,
/// and its byte counts as they were when it was checked. The buffers are
/// read again, and checked again, by [`DescriptorChain::walk`] (the
/// driver may have changed them meanwhile; then it only hurts itself).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DescriptorChain {
    head: u16,
    desc_table: u64,
    queue_size: u16,
    indirect_allowed: bool,
    readable_len: u64,
    writable_len: u64,
    buffers: u32,
}

impl DescriptorChain {
    /// The head index, to give back with [`Queue::add_used`].
    pub fn head(&self) -> u16 {
        self.head
    }

    /// Device-readable bytes in the chain.
    pub fn readable_len(&self) -> u64 {
        self.readable_len
    }

    /// Device-writable bytes in the chain.
    pub fn writable_len(&self) -> u64 {
        self.writable_len
    }

    /// Buffers in the chain (indirect tables not counted).
    pub fn buffer_count(&self) -> u32 {
        self.buffers
    }

    /// A fresh walk over the buffers.
    pub fn walk(&self) -> ChainWalk {
        ChainWalk {
            head: self.head,
            table: self.desc_table,
            table_len: u32::from(self.queue_size),
            next: Some(self.head),
            steps: 0,
            in_indirect: false,
            indirect_allowed: self.indirect_allowed,
            seen_writable: false,
            done: false,
        }
    }

    /// An iterator over the buffers, each checked.
    pub fn buffers<'m, M: GuestMemory + ?Sized>(&self, mem: &'m M) -> Buffers<'m, M> {
        Buffers {
            mem,
            walk: self.walk(),
        }
    }

    /// Calls `f` for each piece of the chain's readable (or writable) byte
    /// stream inside `[offset, offset + len)`, in order, as in-RAM buffers
    /// (split where the chain's buffers split). Returns the bytes visited
    /// (less than `len` when the stream is shorter).
    pub fn for_each_segment<M, E, F>(
        &self,
        mem: &mut M,
        writable: bool,
        offset: u64,
        len: u64,
        mut f: F,
    ) -> Result<u64, E>
    where
        M: GuestMemory + ?Sized,
        E: From<QueueError>,
        F: FnMut(&mut M, Buffer) -> Result<(), E>,
    {
        let mut walk = self.walk();
        let mut pos = 0u64; // position in the stream
        let end = offset.saturating_add(len);
        let mut done = 0u64;
        while let Some(b) = walk.next_buffer(mem) {
            let b = b?;
            if b.writable != writable {
                continue;
            }
            let (start, stop) = (pos, pos + u64::from(b.len));
            pos = stop;
            let lo = start.max(offset);
            let hi = stop.min(end);
            if lo < hi {
                let piece = Buffer {
                    gpa: b.gpa + (lo - start),
                    // hi - lo <= b.len, a u32.
                    len: u32::try_from(hi - lo).unwrap_or(b.len),
                    writable,
                };
                f(mem, piece)?;
                done += hi - lo;
            }
            if pos >= end {
                break;
            }
        }
        Ok(done)
    }

    /// Copies readable bytes from `offset` of the stream into `buf`;
    /// returns how many there were.
    pub fn read_at<M: GuestMemory + ?Sized>(
        &self,
        mem: &mut M,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize, QueueError> {
        let mut at = 0usize;
        self.for_each_segment(mem, false, offset, buf.len() as u64, |m, b| {
            let n = b.len as usize;
            let dst = &mut buf[at..at + n];
            m.read(b.gpa, dst).map_err(QueueError::Buffer)?;
            at += n;
            Ok::<(), QueueError>(())
        })?;
        Ok(at)
    }

    /// Copies `data` into the writable bytes from `offset` of the stream;
    /// returns how many fitted.
    pub fn write_at<M: GuestMemory + ?Sized>(
        &self,
        mem: &mut M,
        offset: u64,
        data: &[u8],
    ) -> Result<usize, QueueError> {
        let mut at = 0usize;
        self.for_each_segment(mem, true, offset, data.len() as u64, |m, b| {
            let n = b.len as usize;
            m.write(b.gpa, &data[at..at + n])
                .map_err(QueueError::Buffer)?;
            at += n;
            Ok::<(), QueueError>(())
        })?;
        Ok(at)
    }
}

/// A walk over a chain's buffers that holds no borrow of guest memory,
/// so the device can write between steps. Fused: after an error or the
/// last buffer it returns `None`.
#[derive(Clone, Debug)]
pub struct ChainWalk {
    head: u16,
    table: u64,
    table_len: u32,
    next: Option<u16>,
    steps: u32,
    in_indirect: bool,
    indirect_allowed: bool,
    seen_writable: bool,
    done: bool,
}

/// Most descriptors in an indirect table (its `len` / 16).
pub const MAX_INDIRECT_DESCRIPTORS: u32 = 32768;

impl ChainWalk {
    /// The next buffer, checked: `None` at the end of the chain.
    pub fn next_buffer<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
    ) -> Option<Result<Buffer, QueueError>> {
        if self.done {
            return None;
        }
        let r = self.step(mem);
        if !matches!(r, Some(Ok(_))) {
            self.done = true;
        }
        r
    }

    fn step<M: GuestMemory + ?Sized>(&mut self, mem: &M) -> Option<Result<Buffer, QueueError>> {
        loop {
            let index = self.next?;
            if u32::from(index) >= self.table_len {
                return Some(Err(QueueError::NextOutOfRange {
                    next: index,
                    table_len: self.table_len,
                }));
            }
            self.steps += 1;
            if self.steps > self.table_len {
                return Some(Err(QueueError::ChainTooLong {
                    head: self.head,
                    limit: self.table_len,
                }));
            }
            let d = match read_descriptor(mem, self.table, index) {
                Ok(d) => d,
                Err(e) => return Some(Err(e)),
            };
            if d.flags & desc_flags::INDIRECT != 0 {
                if let Err(e) = self.enter_indirect(mem, d) {
                    return Some(Err(e));
                }
                continue;
            }
            if let Err(e) = mem.check(d.addr, u64::from(d.len)) {
                return Some(Err(QueueError::Buffer(e)));
            }
            let writable = d.flags & desc_flags::WRITE != 0;
            if !writable && self.seen_writable {
                return Some(Err(QueueError::ReadableAfterWritable));
            }
            self.seen_writable |= writable;
            self.next = (d.flags & desc_flags::NEXT != 0).then_some(d.next);
            return Some(Ok(Buffer {
                gpa: d.addr,
                len: d.len,
                writable,
            }));
        }
    }

    /// 2.7.5.3: the chain continues in the table the descriptor names.
    fn enter_indirect<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        d: Descriptor,
    ) -> Result<(), QueueError> {
        if !self.indirect_allowed {
            return Err(QueueError::IndirectNotNegotiated);
        }
        if self.in_indirect {
            return Err(QueueError::NestedIndirect);
        }
        if d.flags & desc_flags::NEXT != 0 {
            return Err(QueueError::IndirectWithNext);
        }
        let entries = d.len / 16;
        if d.len == 0 || !d.len.is_multiple_of(16) || entries > MAX_INDIRECT_DESCRIPTORS {
            return Err(QueueError::IndirectTableLength { len: d.len });
        }
        mem.check(d.addr, u64::from(d.len))
            .map_err(|error| QueueError::Ring {
                area: Area::DescriptorTable,
                error,
            })?;
        // The WRITE flag of the descriptor naming the table is ignored
        // (2.7.5.3.2).
        self.table = d.addr;
        self.table_len = entries;
        self.next = Some(0);
        self.steps = 0;
        self.in_indirect = true;
        Ok(())
    }
}

/// [`ChainWalk`] with the memory borrowed: an `Iterator`.
#[derive(Debug)]
pub struct Buffers<'m, M: GuestMemory + ?Sized> {
    mem: &'m M,
    walk: ChainWalk,
}

impl<M: GuestMemory + ?Sized> Iterator for Buffers<'_, M> {
    type Item = Result<Buffer, QueueError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.walk.next_buffer(self.mem)
    }
}

/// One split virtqueue, device side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Queue {
    max_size: u16,
    size: u16,
    ready: bool,
    desc_table: u64,
    avail_ring: u64,
    used_ring: u64,
    next_avail: u16,
    next_used: u16,
    event_idx: bool,
    indirect: bool,
    /// The used index when the driver was last notified; `None` after a
    /// reset (the first notification is always sent).
    signalled_used: Option<u16>,
}

impl Queue {
    /// A queue the device offers with at most `max_size` entries (a power
    /// of two up to [`MAX_QUEUE_SIZE`]; other values are rounded down to
    /// one, 0 to 1).
    pub const fn new(max_size: u16) -> Self {
        let max_size = if max_size == 0 {
            1
        } else if max_size > MAX_QUEUE_SIZE {
            MAX_QUEUE_SIZE
        } else {
            1 << (15 - max_size.leading_zeros())
        };
        Self {
            max_size,
            size: max_size,
            ready: false,
            desc_table: 0,
            avail_ring: 0,
            used_ring: 0,
            next_avail: 0,
            next_used: 0,
            event_idx: false,
            indirect: false,
            signalled_used: None,
        }
    }

    /// Back to the state after device reset (size = maximum, disabled,
    /// addresses 0).
    pub fn reset(&mut self) {
        *self = Self::new(self.max_size);
    }

    /// The device's maximum size.
    pub fn max_size(&self) -> u16 {
        self.max_size
    }

    /// The size the driver chose (the maximum until it writes one).
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Sets the size (checked by [`Queue::enable`]); ignored while the
    /// queue is enabled.
    pub fn set_size(&mut self, size: u16) {
        if !self.ready {
            self.size = size;
        }
    }

    /// Enabled by the driver.
    pub fn ready(&self) -> bool {
        self.ready
    }

    /// Descriptor table, available ring and used ring addresses.
    pub fn addresses(&self) -> (u64, u64, u64) {
        (self.desc_table, self.avail_ring, self.used_ring)
    }

    /// Sets the descriptor table address; ignored while the queue is
    /// enabled.
    pub fn set_desc_table(&mut self, gpa: u64) {
        if !self.ready {
            self.desc_table = gpa;
        }
    }

    /// Sets the available ring (driver area) address; ignored while the
    /// queue is enabled.
    pub fn set_avail_ring(&mut self, gpa: u64) {
        if !self.ready {
            self.avail_ring = gpa;
        }
    }

    /// Sets the used ring (device area) address; ignored while the queue
    /// is enabled.
    pub fn set_used_ring(&mut self, gpa: u64) {
        if !self.ready {
            self.used_ring = gpa;
        }
    }

    /// Which negotiated features the queue honours:
    /// VIRTIO_F_EVENT_IDX and VIRTIO_F_INDIRECT_DESC.
    pub fn set_features(&mut self, event_idx: bool, indirect: bool) {
        self.event_idx = event_idx;
        self.indirect = indirect;
    }

    /// Continues an enabled queue from its used ring's `idx` in guest
    /// memory, as a device that restarted without its own indices does:
    /// buffers the driver made available past it (requests in flight when
    /// the device stopped) are processed again. Returns the index.
    pub fn resume_from_used<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
    ) -> Result<u16, MemoryError> {
        let idx = mem.read_u16(self.used_ring.wrapping_add(2))?;
        self.next_avail = idx;
        self.next_used = idx;
        self.signalled_used = None;
        Ok(idx)
    }

    /// The device's next available and used indices.
    pub fn indices(&self) -> (u16, u16) {
        (self.next_avail, self.next_used)
    }

    /// Checks the size and alignments (2.7) and enables the queue. On an
    /// error the queue stays disabled.
    pub fn enable(&mut self) -> Result<(), QueueError> {
        if self.size == 0 || !self.size.is_power_of_two() || self.size > self.max_size {
            return Err(QueueError::BadSize {
                size: self.size,
                max: self.max_size,
            });
        }
        for (area, gpa, align) in [
            (Area::DescriptorTable, self.desc_table, 16),
            (Area::AvailableRing, self.avail_ring, 2),
            (Area::UsedRing, self.used_ring, 4),
        ] {
            if gpa % align != 0 {
                return Err(QueueError::Misaligned { area, gpa });
            }
        }
        self.ready = true;
        Ok(())
    }

    /// Checks that the three areas lie in guest RAM.
    pub fn check_areas<M: GuestMemory + ?Sized>(&self, mem: &M) -> Result<(), QueueError> {
        let n = u64::from(self.size);
        for (area, gpa, len) in [
            (Area::DescriptorTable, self.desc_table, 16 * n),
            (Area::AvailableRing, self.avail_ring, 6 + 2 * n),
            (Area::UsedRing, self.used_ring, 6 + 8 * n),
        ] {
            mem.check(gpa, len)
                .map_err(|error| QueueError::Ring { area, error })?;
        }
        Ok(())
    }

    fn ring_read<M: GuestMemory + ?Sized>(
        mem: &M,
        area: Area,
        gpa: u64,
    ) -> Result<u16, QueueError> {
        mem.read_u16(gpa)
            .map_err(|error| QueueError::Ring { area, error })
    }

    fn avail_idx<M: GuestMemory + ?Sized>(&self, mem: &M) -> Result<u16, QueueError> {
        let idx = Self::ring_read(mem, Area::AvailableRing, self.avail_ring.wrapping_add(2))?;
        // Reads of the ring entries happen after the index (2.7.13).
        fence(Ordering::Acquire);
        Ok(idx)
    }

    /// Takes the next available chain, checked, or `None` when the driver
    /// has made none available. With VIRTIO_F_EVENT_IDX, finding the ring
    /// empty also sets `avail_event` to the next index, so the driver
    /// notifies the next buffer (2.7.10), and looks once more for a buffer
    /// that came meanwhile.
    pub fn pop<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &mut M,
    ) -> Result<Option<DescriptorChain>, QueueError> {
        if !self.ready {
            return Err(QueueError::NotReady);
        }
        let mut avail_idx = self.avail_idx(mem)?;
        if avail_idx == self.next_avail && self.event_idx {
            let at = self.used_ring.wrapping_add(4 + 8 * u64::from(self.size));
            mem.write_u16(at, self.next_avail)
                .map_err(|error| QueueError::Ring {
                    area: Area::UsedRing,
                    error,
                })?;
            fence(Ordering::SeqCst);
            avail_idx = self.avail_idx(mem)?;
        }
        let pending = avail_idx.wrapping_sub(self.next_avail);
        if pending == 0 {
            return Ok(None);
        }
        if pending > self.size {
            return Err(QueueError::AvailIdxJump {
                next_avail: self.next_avail,
                avail_idx,
                size: self.size,
            });
        }
        let slot = u64::from(self.next_avail % self.size);
        let head = Self::ring_read(
            mem,
            Area::AvailableRing,
            self.avail_ring.wrapping_add(4 + 2 * slot),
        )?;
        if head >= self.size {
            return Err(QueueError::HeadOutOfRange {
                head,
                size: self.size,
            });
        }
        let mut chain = DescriptorChain {
            head,
            desc_table: self.desc_table,
            queue_size: self.size,
            indirect_allowed: self.indirect,
            readable_len: 0,
            writable_len: 0,
            buffers: 0,
        };
        let mut walk = chain.walk();
        while let Some(b) = walk.next_buffer(mem) {
            let b = b?;
            if b.writable {
                chain.writable_len += u64::from(b.len);
            } else {
                chain.readable_len += u64::from(b.len);
            }
            chain.buffers += 1;
        }
        self.next_avail = self.next_avail.wrapping_add(1);
        Ok(Some(chain))
    }

    /// Returns the chain at `head` to the driver with `len` bytes written.
    pub fn add_used<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &mut M,
        head: u16,
        len: u32,
    ) -> Result<(), QueueError> {
        if !self.ready {
            return Err(QueueError::NotReady);
        }
        if head >= self.size {
            return Err(QueueError::UsedHeadOutOfRange {
                head,
                size: self.size,
            });
        }
        let slot = u64::from(self.next_used % self.size);
        let mut elem = [0u8; 8];
        elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        elem[4..].copy_from_slice(&len.to_le_bytes());
        let ring_err = |error| QueueError::Ring {
            area: Area::UsedRing,
            error,
        };
        mem.write(self.used_ring.wrapping_add(4 + 8 * slot), &elem)
            .map_err(ring_err)?;
        self.next_used = self.next_used.wrapping_add(1);
        // The element is visible before the index (2.7.14).
        fence(Ordering::Release);
        mem.write_u16(self.used_ring.wrapping_add(2), self.next_used)
            .map_err(ring_err)
    }

    /// Whether the driver wants an interrupt for the used buffers added
    /// since the last time this said yes (2.7.10): with
    /// VIRTIO_F_EVENT_IDX, `vring_need_event(used_event, ...)`; without,
    /// unless the available ring's NO_INTERRUPT flag is set.
    pub fn needs_notification<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
    ) -> Result<bool, QueueError> {
        // The used index is published before the driver's suppression is
        // read (the driver does the opposite).
        fence(Ordering::SeqCst);
        let new = self.next_used;
        let notify = if self.event_idx {
            let used_event = Self::ring_read(
                mem,
                Area::AvailableRing,
                self.avail_ring.wrapping_add(4 + 2 * u64::from(self.size)),
            )?;
            match self.signalled_used {
                None => true,
                Some(old) => vring_need_event(used_event, new, old),
            }
        } else {
            let flags = Self::ring_read(mem, Area::AvailableRing, self.avail_ring)?;
            self.signalled_used != Some(new) && flags & VIRTQ_AVAIL_F_NO_INTERRUPT == 0
        };
        if notify || self.event_idx {
            self.signalled_used = Some(new);
        }
        Ok(notify)
    }

    /// Asks the driver to notify when it makes more buffers available
    /// (`avail_event` = the next index with VIRTIO_F_EVENT_IDX, else
    /// clears NO_NOTIFY), then returns whether buffers arrived meanwhile
    /// (the device must then pop again).
    pub fn enable_notification<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &mut M,
    ) -> Result<bool, QueueError> {
        if !self.ready {
            return Err(QueueError::NotReady);
        }
        let ring_err = |error| QueueError::Ring {
            area: Area::UsedRing,
            error,
        };
        if self.event_idx {
            let at = self.used_ring.wrapping_add(4 + 8 * u64::from(self.size));
            mem.write_u16(at, self.next_avail).map_err(ring_err)?;
        } else {
            mem.write_u16(self.used_ring, 0).map_err(ring_err)?;
        }
        fence(Ordering::SeqCst);
        Ok(self.avail_idx(mem)? != self.next_avail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::SliceMemory;
    use std::vec;
    use std::vec::Vec;

    const DESC: u64 = 0x0;
    const AVAIL: u64 = 0x400;
    const USED: u64 = 0x800;
    const RAM: usize = 0x4000;

    fn desc(
        mem: &mut SliceMemory<'_>,
        table: u64,
        i: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let at = table + 16 * u64::from(i);
        mem.write(at, &addr.to_le_bytes()).unwrap();
        mem.write(at + 8, &len.to_le_bytes()).unwrap();
        mem.write(at + 12, &flags.to_le_bytes()).unwrap();
        mem.write(at + 14, &next.to_le_bytes()).unwrap();
    }

    /// Publishes `head` in the next slot of the available ring.
    fn publish(mem: &mut SliceMemory<'_>, size: u16, head: u16) {
        let idx = mem.read_u16(AVAIL + 2).unwrap();
        mem.write_u16(AVAIL + 4 + 2 * u64::from(idx % size), head)
            .unwrap();
        mem.write_u16(AVAIL + 2, idx.wrapping_add(1)).unwrap();
    }

    fn queue(size: u16) -> Queue {
        queue_at(size, DESC, AVAIL, USED)
    }

    fn queue_at(size: u16, desc: u64, avail: u64, used: u64) -> Queue {
        let mut q = Queue::new(size);
        q.set_desc_table(desc);
        q.set_avail_ring(avail);
        q.set_used_ring(used);
        q.set_features(false, true);
        q.enable().unwrap();
        q
    }

    fn collect(c: &DescriptorChain, m: &SliceMemory<'_>) -> Result<Vec<Buffer>, QueueError> {
        c.buffers(m).collect()
    }

    #[test]
    fn sizes_are_rounded_and_checked() {
        assert_eq!(Queue::new(0).max_size(), 1);
        assert_eq!(Queue::new(100).max_size(), 64);
        assert_eq!(Queue::new(u16::MAX).max_size(), MAX_QUEUE_SIZE);
        let mut q = Queue::new(256);
        for bad in [0, 3, 512] {
            q.set_size(bad);
            assert_eq!(
                q.enable(),
                Err(QueueError::BadSize {
                    size: bad,
                    max: 256
                })
            );
            assert!(!q.ready());
        }
        q.set_size(16);
        q.set_desc_table(8);
        assert_eq!(
            q.enable(),
            Err(QueueError::Misaligned {
                area: Area::DescriptorTable,
                gpa: 8
            })
        );
        q.set_desc_table(16);
        q.set_avail_ring(1);
        assert!(matches!(
            q.enable(),
            Err(QueueError::Misaligned {
                area: Area::AvailableRing,
                ..
            })
        ));
        q.set_avail_ring(2);
        q.set_used_ring(2);
        assert!(matches!(
            q.enable(),
            Err(QueueError::Misaligned {
                area: Area::UsedRing,
                ..
            })
        ));
        q.set_used_ring(4);
        q.enable().unwrap();
        q.set_size(0);
        q.set_desc_table(1);
        q.set_avail_ring(1);
        q.set_used_ring(1);
        assert_eq!(
            (q.size(), q.addresses()),
            (16, (16, 2, 4)),
            "frozen while enabled"
        );
        q.reset();
        assert!(!q.ready());
        assert_eq!(q.size(), 256);
        assert_eq!(
            q.pop(&mut SliceMemory::new(&mut [])),
            Err(QueueError::NotReady)
        );
    }

    #[test]
    fn need_event_rule() {
        // 2.7.10: notify when new has passed event since old.
        assert!(vring_need_event(0, 1, 0));
        assert!(!vring_need_event(1, 1, 0));
        assert!(vring_need_event(5, 10, 3));
        assert!(!vring_need_event(10, 10, 3));
        assert!(vring_need_event(0xffff, 0, 0xfffe), "wraps");
    }

    #[test]
    fn a_chain_of_readable_then_writable_buffers() {
        let mut ram = vec![0u8; RAM];
        let mut m = SliceMemory::new(&mut ram);
        let mut q = queue(8);
        desc(&mut m, DESC, 3, 0x1000, 16, desc_flags::NEXT, 5);
        desc(
            &mut m,
            DESC,
            5,
            0x1100,
            100,
            desc_flags::NEXT | desc_flags::WRITE,
            0,
        );
        desc(&mut m, DESC, 0, 0x1200, 1, desc_flags::WRITE, 0);
        publish(&mut m, 8, 3);
        let c = q.pop(&mut m).unwrap().unwrap();
        assert_eq!(c.head(), 3);
        assert_eq!(
            (c.readable_len(), c.writable_len(), c.buffer_count()),
            (16, 101, 3)
        );
        assert_eq!(
            collect(&c, &m).unwrap(),
            [
                Buffer {
                    gpa: 0x1000,
                    len: 16,
                    writable: false
                },
                Buffer {
                    gpa: 0x1100,
                    len: 100,
                    writable: true
                },
                Buffer {
                    gpa: 0x1200,
                    len: 1,
                    writable: true
                },
            ]
        );
        assert_eq!(q.pop(&mut m).unwrap(), None);
        // Streams across buffers.
        m.write(0x1000, b"0123456789abcdef").unwrap();
        let mut b = [0; 4];
        assert_eq!(c.read_at(&mut m, 14, &mut b).unwrap(), 2);
        assert_eq!(&b[..2], b"ef");
        assert_eq!(c.write_at(&mut m, 99, b"xy").unwrap(), 2);
        assert_eq!(m.slice(0x1100 + 99, 1).unwrap(), b"x");
        assert_eq!(m.slice(0x1200, 1).unwrap(), b"y");
        // Used ring: element and index.
        q.add_used(&mut m, 3, 101).unwrap();
        assert_eq!(m.read_u32(USED + 4).unwrap(), 3);
        assert_eq!(m.read_u32(USED + 8).unwrap(), 101);
        assert_eq!(m.read_u16(USED + 2).unwrap(), 1);
        assert_eq!(q.indices(), (1, 1));
        assert_eq!(
            q.add_used(&mut m, 8, 0),
            Err(QueueError::UsedHeadOutOfRange { head: 8, size: 8 })
        );
    }

    #[test]
    fn indirect_table() {
        let mut ram = vec![0u8; RAM];
        let mut m = SliceMemory::new(&mut ram);
        let mut q = queue(4);
        desc(
            &mut m,
            DESC,
            0,
            0x2000,
            48,
            desc_flags::INDIRECT | desc_flags::WRITE,
            0,
        );
        desc(&mut m, 0x2000, 0, 0x3000, 16, desc_flags::NEXT, 2);
        desc(
            &mut m,
            0x2000,
            2,
            0x3100,
            512,
            desc_flags::NEXT | desc_flags::WRITE,
            1,
        );
        desc(&mut m, 0x2000, 1, 0x3400, 1, desc_flags::WRITE, 0);
        publish(&mut m, 4, 0);
        let c = q.pop(&mut m).unwrap().unwrap();
        assert_eq!(
            (c.readable_len(), c.writable_len(), c.buffer_count()),
            (16, 513, 3)
        );
        // A direct descriptor may precede the indirect one (without NEXT on it).
        desc(&mut m, DESC, 1, 0x3000, 8, desc_flags::NEXT, 2);
        desc(&mut m, DESC, 2, 0x2000, 48, desc_flags::INDIRECT, 0);
        publish(&mut m, 4, 1);
        assert_eq!(q.pop(&mut m).unwrap().unwrap().buffer_count(), 4);
    }

    /// Runs one chain at head 0 built by `build` and returns pop's answer.
    fn pop_one(
        size: u16,
        indirect: bool,
        build: impl FnOnce(&mut SliceMemory<'_>),
    ) -> Result<Option<DescriptorChain>, QueueError> {
        let mut ram = vec![0u8; RAM];
        let mut m = SliceMemory::new(&mut ram);
        let mut q = queue(size);
        q.set_features(false, indirect);
        build(&mut m);
        publish(&mut m, size, 0);
        q.pop(&mut m)
    }

    #[test]
    fn each_chain_violation_is_its_own_error() {
        use desc_flags::*;
        let e = |r: Result<Option<DescriptorChain>, QueueError>| r.unwrap_err();
        // A loop in the direct table.
        assert_eq!(
            e(pop_one(4, true, |m| {
                desc(m, DESC, 0, 0x1000, 1, NEXT, 1);
                desc(m, DESC, 1, 0x1000, 1, NEXT, 0);
            })),
            QueueError::ChainTooLong { head: 0, limit: 4 }
        );
        // A self-loop in an indirect table: bounded by the table's length.
        assert_eq!(
            e(pop_one(4, true, |m| {
                desc(m, DESC, 0, 0x2000, 32, INDIRECT, 0);
                desc(m, 0x2000, 1, 0x1000, 1, NEXT, 1);
                desc(m, 0x2000, 0, 0x1000, 1, NEXT, 1);
            })),
            QueueError::ChainTooLong { head: 0, limit: 2 }
        );
        assert_eq!(
            e(pop_one(4, true, |m| desc(m, DESC, 0, 0x1000, 1, NEXT, 4))),
            QueueError::NextOutOfRange {
                next: 4,
                table_len: 4
            }
        );
        assert_eq!(
            e(pop_one(4, true, |m| {
                desc(m, DESC, 0, 0x2000, 16, INDIRECT, 0);
                desc(m, 0x2000, 0, 0x1000, 1, NEXT, 1);
            })),
            QueueError::NextOutOfRange {
                next: 1,
                table_len: 1
            }
        );
        // Lengths that wrap, buffers beyond RAM, MMIO.
        assert_eq!(
            e(pop_one(4, true, |m| desc(
                m,
                DESC,
                0,
                u64::MAX - 4,
                16,
                0,
                0
            ))),
            QueueError::Buffer(MemoryError::Wraps {
                gpa: u64::MAX - 4,
                len: 16
            })
        );
        assert_eq!(
            e(pop_one(4, true, |m| desc(
                m,
                DESC,
                0,
                RAM as u64 - 4,
                5,
                WRITE,
                0
            ))),
            QueueError::Buffer(MemoryError::OutOfRam {
                gpa: RAM as u64 - 4,
                len: 5,
                ram_size: RAM as u64
            })
        );
        assert!(matches!(
            e(pop_one(4, true, |m| desc(m, DESC, 0, 0xfee0_0000, 4, 0, 0))),
            QueueError::Buffer(MemoryError::OutOfRam { .. })
        ));
        // Indirect rules.
        assert_eq!(
            e(pop_one(4, false, |m| desc(
                m, DESC, 0, 0x2000, 16, INDIRECT, 0
            ))),
            QueueError::IndirectNotNegotiated
        );
        assert_eq!(
            e(pop_one(4, true, |m| {
                desc(m, DESC, 0, 0x2000, 16, INDIRECT, 0);
                desc(m, 0x2000, 0, 0x2000, 16, INDIRECT, 0);
            })),
            QueueError::NestedIndirect
        );
        assert_eq!(
            e(pop_one(4, true, |m| desc(
                m,
                DESC,
                0,
                0x2000,
                16,
                INDIRECT | NEXT,
                1
            ))),
            QueueError::IndirectWithNext
        );
        for len in [0, 15, 17] {
            assert_eq!(
                e(pop_one(4, true, |m| desc(
                    m, DESC, 0, 0x2000, len, INDIRECT, 0
                ))),
                QueueError::IndirectTableLength { len }
            );
        }
        assert_eq!(
            e(pop_one(4, true, |m| desc(
                m,
                DESC,
                0,
                0x2000,
                16 * 32769,
                INDIRECT,
                0
            ))),
            QueueError::IndirectTableLength { len: 16 * 32769 }
        );
        assert!(matches!(
            e(pop_one(4, true, |m| desc(
                m,
                DESC,
                0,
                RAM as u64 - 16,
                32,
                INDIRECT,
                0
            ))),
            QueueError::Ring {
                area: Area::DescriptorTable,
                error: MemoryError::OutOfRam { .. }
            }
        ));
        assert_eq!(
            e(pop_one(4, true, |m| {
                desc(m, DESC, 0, 0x1000, 1, WRITE | NEXT, 1);
                desc(m, DESC, 1, 0x1000, 1, 0, 0);
            })),
            QueueError::ReadableAfterWritable
        );
    }

    #[test]
    fn ring_violations() {
        let mut ram = vec![0u8; RAM];
        let mut m = SliceMemory::new(&mut ram);
        let mut q = queue(4);
        m.write_u16(AVAIL + 2, 5).unwrap();
        assert_eq!(
            q.pop(&mut m),
            Err(QueueError::AvailIdxJump {
                next_avail: 0,
                avail_idx: 5,
                size: 4
            })
        );
        m.write_u16(AVAIL + 2, 1).unwrap();
        m.write_u16(AVAIL + 4, 4).unwrap();
        assert_eq!(
            q.pop(&mut m),
            Err(QueueError::HeadOutOfRange { head: 4, size: 4 })
        );
        // Rings outside RAM.
        let mut q = queue_at(4, DESC, RAM as u64, USED);
        assert!(matches!(
            q.pop(&mut m),
            Err(QueueError::Ring {
                area: Area::AvailableRing,
                ..
            })
        ));
        assert!(q.check_areas(&m).is_err());
        let mut q = queue_at(4, DESC, AVAIL, RAM as u64 - 4);
        assert!(matches!(
            q.add_used(&mut m, 0, 0),
            Err(QueueError::Ring {
                area: Area::UsedRing,
                ..
            })
        ));
        let mut q = queue_at(4, RAM as u64 - 16, AVAIL, USED);
        desc(&mut m, DESC, 0, 0, 0, 0, 0);
        m.write_u16(AVAIL + 4, 1).unwrap();
        assert!(matches!(
            q.pop(&mut m),
            Err(QueueError::Ring {
                area: Area::DescriptorTable,
                ..
            })
        ));
        assert!(queue(4).check_areas(&m).is_ok());
    }

    #[test]
    fn notification_suppression_without_and_with_event_idx() {
        let mut ram = vec![0u8; RAM];
        let mut m = SliceMemory::new(&mut ram);
        let mut q = queue(4);
        for i in 0..4 {
            desc(&mut m, DESC, i, 0x1000, 1, 0, 0);
        }
        // Without EVENT_IDX: the NO_INTERRUPT flag.
        publish(&mut m, 4, 0);
        let c = q.pop(&mut m).unwrap().unwrap();
        q.add_used(&mut m, c.head(), 0).unwrap();
        assert!(q.needs_notification(&m).unwrap());
        assert!(!q.needs_notification(&m).unwrap(), "nothing new");
        m.write_u16(AVAIL, VIRTQ_AVAIL_F_NO_INTERRUPT).unwrap();
        q.add_used(&mut m, 1, 0).unwrap();
        assert!(!q.needs_notification(&m).unwrap());
        assert!(!q.enable_notification(&mut m).unwrap());
        assert_eq!(m.read_u16(USED).unwrap(), 0);

        // With EVENT_IDX: used_event and avail_event.
        let mut ram = vec![0u8; RAM];
        let mut m = SliceMemory::new(&mut ram);
        let mut q = queue(4);
        q.set_features(true, false);
        for i in 0..4 {
            desc(&mut m, DESC, i, 0x1000, 1, 0, 0);
        }
        let used_event = AVAIL + 4 + 2 * 4;
        m.write_u16(used_event, 1).unwrap(); // interrupt once used idx passes 1
        for h in 0..3 {
            publish(&mut m, 4, h);
        }
        let mut got = Vec::new();
        while let Some(c) = q.pop(&mut m).unwrap() {
            q.add_used(&mut m, c.head(), 0).unwrap();
            got.push(q.needs_notification(&m).unwrap());
        }
        assert_eq!(
            got,
            [true, true, false],
            "first always, then idx 2 crosses 1, then not"
        );
        assert!(!q.enable_notification(&mut m).unwrap());
        assert_eq!(
            m.read_u16(USED + 4 + 8 * 4).unwrap(),
            3,
            "avail_event = next avail"
        );
        publish(&mut m, 4, 3);
        assert!(
            q.enable_notification(&mut m).unwrap(),
            "a buffer arrived meanwhile"
        );
    }

    mod prop {
        use super::*;
        use core::cell::Cell;
        use proptest::prelude::*;

        /// Guest memory that counts the accesses it refused: each one must
        /// surface as an error of the queue.
        struct Watched<'a> {
            inner: SliceMemory<'a>,
            refused: Cell<u32>,
        }

        impl GuestMemory for Watched<'_> {
            fn ram_size(&self) -> u64 {
                self.inner.ram_size()
            }
            fn slice(&self, gpa: u64, len: u64) -> Result<&[u8], MemoryError> {
                self.inner
                    .slice(gpa, len)
                    .inspect_err(|_| self.refused.set(self.refused.get() + 1))
            }
            fn slice_mut(&mut self, gpa: u64, len: u64) -> Result<&mut [u8], MemoryError> {
                if self.inner.check(gpa, len).is_err() {
                    self.refused.set(self.refused.get() + 1);
                }
                self.inner.slice_mut(gpa, len)
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]
            #[test]
            fn the_parser_never_escapes_ram(
                mut ram in proptest::collection::vec(any::<u8>(), 1024..=1024),
                size_log in 0u32..5,
                desc_at in 0u64..1100,
                avail_at in 0u64..1100,
                used_at in 0u64..1100,
                event_idx: bool,
                indirect: bool,
                descs in proptest::collection::vec((0u64..1100, 0u32..300, 0u16..8, 0u16..20), 16),
                heads in proptest::collection::vec(0u16..20, 16),
                avail_idx in 0u16..24,
                structured: bool,
            ) {
                let mut m = Watched { inner: SliceMemory::new(&mut ram), refused: Cell::new(0) };
                if structured {
                    // Descriptors near RAM and small indices reach deeper
                    // than random bytes (whose addresses are mostly far
                    // outside RAM); writes that do not fit are skipped.
                    let (d, a) = (desc_at & !15, avail_at & !1);
                    for (i, (addr, len, flags, next)) in (0u64..).zip(descs) {
                        let mut b = [0u8; 16];
                        b[..8].copy_from_slice(&addr.to_le_bytes());
                        b[8..12].copy_from_slice(&len.to_le_bytes());
                        b[12..14].copy_from_slice(&flags.to_le_bytes());
                        b[14..].copy_from_slice(&next.to_le_bytes());
                        let _ = m.inner.write(d + 16 * i, &b);
                    }
                    for (i, h) in (0u64..).zip(heads) {
                        let _ = m.inner.write_u16(a + 4 + 2 * i, h);
                    }
                    let _ = m.inner.write_u16(a + 2, avail_idx);
                }
                let mut q = Queue::new(1 << size_log);
                q.set_desc_table(desc_at & !15);
                q.set_avail_ring(avail_at & !1);
                q.set_used_ring(used_at & !3);
                q.set_features(event_idx, indirect);
                q.enable().unwrap();
                for _ in 0..40 {
                    let before = m.refused.get();
                    match q.pop(&mut m) {
                        Err(_) => break,
                        Ok(None) => {
                            prop_assert_eq!(m.refused.get(), before);
                            break;
                        }
                        Ok(Some(c)) => {
                            prop_assert_eq!(m.refused.get(), before, "a refused access went unreported");
                            let mut total = 0u64;
                            let mut failed = false;
                            for b in c.buffers(&m) {
                                match b {
                                    Ok(b) => {
                                        prop_assert!(m.check(b.gpa, u64::from(b.len)).is_ok());
                                        total += u64::from(b.len);
                                    }
                                    Err(_) => failed = true,
                                }
                            }
                            // The memory did not change: the second walk agrees.
                            prop_assert!(!failed);
                            prop_assert_eq!(total, c.readable_len() + c.writable_len());
                            let n = u32::try_from(c.writable_len().min(8)).unwrap();
                            let before = m.refused.get();
                            let r = q.add_used(&mut m, c.head(), n);
                            prop_assert!(r.is_ok() || m.refused.get() > before);
                            if r.is_err() { break; }
                            let _ = q.needs_notification(&m);
                        }
                    }
                }
            }
        }
    }
}
