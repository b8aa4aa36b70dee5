//! virtio-blk (VIRTIO 1.2, 5.2), type 2: one request queue; requests
//! VIRTIO_BLK_T_IN, OUT, FLUSH and GET_ID; the others are answered
//! UNSUPP.
//!
//! A request is a chain: a 16-byte device-readable header (`type: le32,
//! reserved: le32, sector: le64`), the data (device-readable for OUT,
//! device-writable for IN and GET_ID), and a device-writable status byte
//! at the very end. The data moves between the [`BlockBackend`] and the
//! guest's buffers in place: the device hands the backend a request's
//! buffers together ([`BlockBackend::read_ranges`]), each a guest-physical
//! range (checked inside guest RAM), with guest memory, and the backend
//! either reads into and writes from that memory
//! itself ([`MemDisk`]) or passes the range on to whoever moves the data
//! (a disk server with guest RAM mapped, which writes the guest's buffers
//! in place: no copy in this device).
//!
//! A chain without room for the status byte, or with a header shorter
//! than 16 bytes, cannot be answered: DEVICE_NEEDS_RESET (as QEMU does).
//! Everything else gets a status: IOERR for data that is not a whole
//! number of sectors, sectors past the end, a backend error, or a write
//! to a read-only disk.

use core::fmt;

use crate::device::{read_config_bytes, DeviceError, VirtioDevice};
use crate::memory::{GuestMemory, MemoryError};
use crate::queue::{DescriptorChain, Queue};

/// Sector size of the virtio-blk protocol.
pub const SECTOR_SIZE: u64 = 512;
/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Bytes of the id GET_ID returns.
pub const ID_BYTES: usize = 20;

/// Feature bits (5.2.3).
pub mod features {
    /// `seg_max` in the configuration says how many data buffers a request
    /// may have (without it Linux sends one per request).
    pub const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
    /// The device is read-only.
    pub const VIRTIO_BLK_F_RO: u64 = 1 << 5;
    /// Cache flush command support.
    pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
}

/// Request types (5.2.6).
pub mod request {
    /// Read.
    pub const IN: u32 = 0;
    /// Write.
    pub const OUT: u32 = 1;
    /// Flush.
    pub const FLUSH: u32 = 4;
    /// Device id string.
    pub const GET_ID: u32 = 8;
}

/// Status byte values (5.2.6).
pub mod status {
    /// Success.
    pub const OK: u8 = 0;
    /// Device or driver error.
    pub const IOERR: u8 = 1;
    /// Request unsupported.
    pub const UNSUPP: u8 = 2;
}

/// A backend failure; the guest sees VIRTIO_BLK_S_IOERR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockError;

impl fmt::Display for BlockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "block backend I/O error")
    }
}

/// One guest buffer of a request: `len` bytes of guest RAM at `gpa`.
/// The device passes only ranges inside guest RAM ([`GuestMemory::check`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestRange {
    /// Guest-physical address of the first byte.
    pub gpa: u64,
    /// Bytes (the request's data is whole sectors; one buffer of it need
    /// not be).
    pub len: u64,
}

/// The disk behind the device. Offsets are in bytes from the start of
/// the disk; the device checks every request against
/// [`BlockBackend::capacity`] first, so `offset + range.len` never passes
/// the end. Buffers are guest-physical ranges, so a backend that does not
/// touch guest RAM itself (it asks a server that has it mapped) moves no
/// byte through this device.
pub trait BlockBackend {
    /// Size in 512-byte sectors.
    fn capacity(&self) -> u64;
    /// Reads the disk at `offset` into the guest buffer `range` of `mem`.
    fn read<M: GuestMemory + ?Sized>(
        &mut self,
        offset: u64,
        mem: &mut M,
        range: GuestRange,
    ) -> Result<(), BlockError>;
    /// Writes the guest buffer `range` of `mem` to the disk at `offset`.
    fn write<M: GuestMemory + ?Sized>(
        &mut self,
        offset: u64,
        mem: &M,
        range: GuestRange,
    ) -> Result<(), BlockError>;
    /// Makes the writes so far durable.
    fn flush(&mut self) -> Result<(), BlockError>;
    /// Reads the disk at `offset` into the guest buffers `ranges`, one
    /// after another: all the data buffers of a request (up to
    /// [`SEG_MAX`] at a time), for a backend that moves them in one go.
    /// The default reads each with [`BlockBackend::read`].
    fn read_ranges<M: GuestMemory + ?Sized>(
        &mut self,
        offset: u64,
        mem: &mut M,
        ranges: &[GuestRange],
    ) -> Result<(), BlockError> {
        let mut at = offset;
        for &r in ranges {
            self.read(at, mem, r)?;
            at += r.len;
        }
        Ok(())
    }
    /// Writes the guest buffers `ranges`, one after another, to the disk
    /// at `offset`, as [`BlockBackend::read_ranges`].
    fn write_ranges<M: GuestMemory + ?Sized>(
        &mut self,
        offset: u64,
        mem: &M,
        ranges: &[GuestRange],
    ) -> Result<(), BlockError> {
        let mut at = offset;
        for &r in ranges {
            self.write(at, mem, r)?;
            at += r.len;
        }
        Ok(())
    }
}

/// A disk held in memory (a whole number of sectors; a partial last
/// sector is not part of it).
#[derive(Debug)]
pub struct MemDisk<'a> {
    data: &'a mut [u8],
}

impl<'a> MemDisk<'a> {
    /// The disk is `data`.
    pub fn new(data: &'a mut [u8]) -> Self {
        Self { data }
    }

    /// Its bytes.
    pub fn data(&self) -> &[u8] {
        self.data
    }

    fn range(&self, offset: u64, len: usize) -> Result<core::ops::Range<usize>, BlockError> {
        let size = self.capacity() * SECTOR_SIZE;
        crate::memory::check_range(size, offset, len as u64).map_err(|_| BlockError)
    }
}

impl BlockBackend for MemDisk<'_> {
    fn capacity(&self) -> u64 {
        self.data.len() as u64 / SECTOR_SIZE
    }

    fn read<M: GuestMemory + ?Sized>(
        &mut self,
        offset: u64,
        mem: &mut M,
        range: GuestRange,
    ) -> Result<(), BlockError> {
        let buf = mem
            .slice_mut(range.gpa, range.len)
            .map_err(|_| BlockError)?;
        let r = self.range(offset, buf.len())?;
        buf.copy_from_slice(&self.data[r]);
        Ok(())
    }

    fn write<M: GuestMemory + ?Sized>(
        &mut self,
        offset: u64,
        mem: &M,
        range: GuestRange,
    ) -> Result<(), BlockError> {
        let data = mem.slice(range.gpa, range.len).map_err(|_| BlockError)?;
        let r = self.range(offset, data.len())?;
        self.data[r].copy_from_slice(data);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), BlockError> {
        Ok(())
    }
}

/// A virtio block device on backend `B`.
#[derive(Debug)]
pub struct Block<B: BlockBackend> {
    backend: B,
    read_only: bool,
    id: [u8; ID_BYTES],
}

/// Data buffers per request: the queue size less the header and status
/// (for direct chains; indirect tables are bounded by their own length).
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;

/// Bytes of configuration modelled: capacity through num_queues (5.2.4).
const CONFIG_LEN: usize = 36;

impl<B: BlockBackend> Block<B> {
    /// A device on `backend`; `read_only` offers VIRTIO_BLK_F_RO and fails
    /// writes with IOERR.
    pub fn new(backend: B, read_only: bool) -> Self {
        let mut id = [0u8; ID_BYTES];
        id[..9].copy_from_slice(b"splitvisr");
        Self {
            backend,
            read_only,
            id,
        }
    }

    /// The same device answering GET_ID with `id` (NUL-padded; not
    /// NUL-terminated when it has 20 bytes).
    pub fn with_id(mut self, id: &[u8]) -> Self {
        self.id = [0; ID_BYTES];
        let n = id.len().min(ID_BYTES);
        self.id[..n].copy_from_slice(&id[..n]);
        self
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend, mutably.
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    fn config(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        c[..8].copy_from_slice(&self.backend.capacity().to_le_bytes());
        c[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        // blk_size (offered only with VIRTIO_BLK_F_BLK_SIZE, which is not)
        // still reads as 512 for the curious.
        c[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
        c[34..36].copy_from_slice(&1u16.to_le_bytes());
        c
    }

    /// Whether `[sector, sector + len bytes)` is inside the disk and `len`
    /// is whole sectors; the byte offset if so.
    fn data_range(&self, sector: u64, len: u64) -> Option<u64> {
        if !len.is_multiple_of(SECTOR_SIZE) {
            return None;
        }
        let offset = sector.checked_mul(SECTOR_SIZE)?;
        let end = offset.checked_add(len)?;
        (end <= self.backend.capacity().checked_mul(SECTOR_SIZE)?).then_some(offset)
    }

    /// Serves one request: returns the status and the bytes written into
    /// the data part of the chain.
    fn serve<M: GuestMemory + ?Sized>(
        &mut self,
        chain: &DescriptorChain,
        mem: &mut M,
    ) -> Result<(u8, u64), DeviceError> {
        let mut header = [0u8; 16];
        if chain.read_at(mem, 0, &mut header)? < header.len() {
            return Err(DeviceError::BadRequest(
                "virtio-blk header shorter than 16 bytes",
            ));
        }
        let [t0, t1, t2, t3, _, _, _, _, s0, s1, s2, s3, s4, s5, s6, s7] = header;
        let kind = u32::from_le_bytes([t0, t1, t2, t3]);
        let sector = u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]);
        // The status byte is the last writable byte; the data before it.
        let writable_data = chain.writable_len().saturating_sub(1);
        let backend = &mut self.backend;
        Ok(match kind {
            request::IN => {
                let Some(mut offset) = self.data_range(sector, writable_data) else {
                    return Ok((status::IOERR, 0));
                };
                let backend = &mut self.backend;
                let mut failed = false;
                // The buffers go to the backend together (SEG_MAX at most
                // at a time: more only from a chain longer than the queue).
                let mut ranges = [GuestRange::default(); SEG_MAX as usize];
                let mut held = 0;
                let n = chain.for_each_segment(mem, true, 0, writable_data, |m, b| {
                    if !failed {
                        ranges[held] = guest_range(m, b.gpa, b.len)?;
                        held += 1;
                        if held == ranges.len() {
                            failed = backend.read_ranges(offset, m, &ranges).is_err();
                            offset += ranges.iter().map(|r| r.len).sum::<u64>();
                            held = 0;
                        }
                    }
                    Ok::<(), DeviceError>(())
                })?;
                if !failed && held > 0 {
                    failed = backend.read_ranges(offset, mem, &ranges[..held]).is_err();
                }
                if failed {
                    (status::IOERR, 0)
                } else {
                    (status::OK, n)
                }
            }
            request::OUT => {
                let data_len = chain.readable_len().saturating_sub(16);
                if self.read_only {
                    return Ok((status::IOERR, 0));
                }
                let Some(mut offset) = self.data_range(sector, data_len) else {
                    return Ok((status::IOERR, 0));
                };
                let backend = &mut self.backend;
                let mut failed = false;
                let mut ranges = [GuestRange::default(); SEG_MAX as usize];
                let mut held = 0;
                chain.for_each_segment(mem, false, 16, data_len, |m, b| {
                    if !failed {
                        ranges[held] = guest_range(m, b.gpa, b.len)?;
                        held += 1;
                        if held == ranges.len() {
                            failed = backend.write_ranges(offset, m, &ranges).is_err();
                            offset += ranges.iter().map(|r| r.len).sum::<u64>();
                            held = 0;
                        }
                    }
                    Ok::<(), DeviceError>(())
                })?;
                if !failed && held > 0 {
                    failed = backend.write_ranges(offset, mem, &ranges[..held]).is_err();
                }
                (if failed { status::IOERR } else { status::OK }, 0)
            }
            request::FLUSH => match backend.flush() {
                Ok(()) => (status::OK, 0),
                Err(_) => (status::IOERR, 0),
            },
            request::GET_ID => {
                let n = writable_data.min(ID_BYTES as u64) as usize;
                let id = self.id;
                let n = chain.write_at(mem, 0, &id[..n])?;
                (status::OK, n as u64)
            }
            _ => (status::UNSUPP, 0),
        })
    }
}

/// A chain's buffer as a [`GuestRange`], once it is known to be inside
/// guest RAM (the queue checks its buffers too; a backend that passes the
/// range on relies on this).
fn guest_range<M: GuestMemory + ?Sized>(
    mem: &M,
    gpa: u64,
    len: u32,
) -> Result<GuestRange, MemoryError> {
    let len = u64::from(len);
    mem.check(gpa, len)?;
    Ok(GuestRange { gpa, len })
}

impl<B: BlockBackend> VirtioDevice for Block<B> {
    fn device_type(&self) -> u16 {
        crate::device::device_type::BLOCK
    }

    fn pci_class(&self) -> u32 {
        0x01_0000 // mass storage, SCSI (what QEMU shows)
    }

    fn features(&self) -> u64 {
        let ro = if self.read_only {
            features::VIRTIO_BLK_F_RO
        } else {
            0
        };
        features::VIRTIO_BLK_F_FLUSH | features::VIRTIO_BLK_F_SEG_MAX | ro
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn config_len(&self) -> u64 {
        CONFIG_LEN as u64
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config(), offset, data);
    }

    fn process_queue<M: GuestMemory + ?Sized>(
        &mut self,
        _index: u16,
        queues: &mut [Queue],
        mem: &mut M,
    ) -> Result<(), DeviceError> {
        let Some(q) = queues.first_mut() else {
            return Ok(());
        };
        while let Some(chain) = q.pop(mem)? {
            if chain.writable_len() == 0 {
                return Err(DeviceError::BadRequest(
                    "virtio-blk request without a status byte",
                ));
            }
            let (st, n) = self.serve(&chain, mem)?;
            // The chain is read again: if the driver shrank it meanwhile,
            // the status byte may be gone.
            if chain.write_at(mem, chain.writable_len() - 1, &[st])? != 1 {
                return Err(DeviceError::BadRequest("virtio-blk status byte vanished"));
            }
            q.add_used(mem, chain.head(), u32::try_from(n + 1).unwrap_or(u32::MAX))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;

    #[test]
    fn mem_disk_bounds() {
        let mut data = vec![0u8; 1000];
        let mut d = MemDisk::new(&mut data);
        assert_eq!(d.capacity(), 1, "a partial sector is not part of the disk");
        let mut ram = [1u8; 1024];
        let mut mem = crate::SliceMemory::new(&mut ram);
        let sector = GuestRange { gpa: 0, len: 512 };
        d.write(0, &mem, sector).unwrap();
        assert_eq!(d.write(1, &mem, sector), Err(BlockError));
        assert_eq!(d.read(u64::MAX, &mut mem, sector), Err(BlockError));
        let outside = GuestRange { gpa: 768, len: 512 };
        assert_eq!(d.write(0, &mem, outside), Err(BlockError));
        d.read(256, &mut mem, GuestRange { gpa: 512, len: 256 })
            .unwrap();
        assert_eq!(mem.as_slice()[512..768], [1u8; 256]);
        d.flush().unwrap();
    }

    #[test]
    fn configuration_features_and_ranges() {
        let mut data = vec![0u8; 4 * 512];
        let b = Block::new(MemDisk::new(&mut data), false);
        let mut c = [0u8; 16];
        b.read_config(0, &mut c);
        assert_eq!(u64::from_le_bytes(c[..8].try_into().unwrap()), 4);
        assert_eq!(u32::from_le_bytes(c[12..16].try_into().unwrap()), SEG_MAX);
        let mut past = [9u8; 4];
        b.read_config(CONFIG_LEN as u64, &mut past);
        assert_eq!(past, [0; 4]);
        assert_eq!(b.features() & features::VIRTIO_BLK_F_RO, 0);
        assert_eq!(b.data_range(3, 512), Some(3 * 512));
        assert_eq!(b.data_range(3, 1024), None, "past the end");
        assert_eq!(b.data_range(0, 100), None, "not whole sectors");
        assert_eq!(
            b.data_range(u64::MAX / 256, 512),
            None,
            "sector * 512 overflows"
        );
        assert_eq!(b.data_range(4, 0), Some(4 * 512), "empty at the end");
        let mut one = [0u8; 512];
        let ro = Block::new(MemDisk::new(&mut one), true).with_id(&[b'x'; 30]);
        assert_ne!(ro.features() & features::VIRTIO_BLK_F_RO, 0);
        assert_eq!(ro.id, [b'x'; ID_BYTES], "ids are cut at 20 bytes");
    }
}
