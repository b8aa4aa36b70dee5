//! Guest memory as a device sees it: guest RAM is `[0, ram_size)` in
//! guest-physical addresses, mapped into the server (zero copy). Anything
//! else (MMIO, holes, past the end) is an error, never an access.
//!
//! The trait is deliberately minimal: bounds-checked copies plus checked
//! in-place slices for bulk data, so a block backend can read straight
//! into a guest buffer. An adapter to the servers' own guest-memory trait
//! can implement it in a few lines.
//!
//! A note for that adapter: while the guest runs on another CPU it may
//! write the same bytes the device reads. The queue code never trusts a
//! value twice (each is checked where it is used), so a racing guest only
//! hurts itself; but Rust references (`slice`, `slice_mut`) to memory
//! another agent writes concurrently are formally a data race. A live
//! mapping's adapter should make `read`/`write` volatile copies, and the
//! in-place slices are best replaced by a volatile slice type then (as
//! vm-memory's `VolatileSlice`) — a change of this trait, not of its
//! callers' logic.

use core::fmt;

/// Why a guest-physical range cannot be accessed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryError {
    /// `gpa + len` overflows a `u64` (or the host's `usize`).
    Wraps {
        /// Start of the range.
        gpa: u64,
        /// Its length in bytes.
        len: u64,
    },
    /// The range is not entirely inside guest RAM.
    OutOfRam {
        /// Start of the range.
        gpa: u64,
        /// Its length in bytes.
        len: u64,
        /// Guest RAM size: valid addresses are below it.
        ram_size: u64,
    },
}

impl fmt::Display for MemoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Wraps { gpa, len } => {
                write!(
                    f,
                    "guest range {gpa:#x}+{len:#x} wraps around the address space"
                )
            }
            Self::OutOfRam { gpa, len, ram_size } => write!(
                f,
                "guest range {gpa:#x}+{len:#x} is not inside guest RAM [0, {ram_size:#x})"
            ),
        }
    }
}

/// Checks that `[gpa, gpa + len)` lies in `[0, ram_size)` and returns it as
/// host offsets.
pub fn check_range(
    ram_size: u64,
    gpa: u64,
    len: u64,
) -> Result<core::ops::Range<usize>, MemoryError> {
    let end = gpa
        .checked_add(len)
        .ok_or(MemoryError::Wraps { gpa, len })?;
    if end > ram_size {
        return Err(MemoryError::OutOfRam { gpa, len, ram_size });
    }
    let start = usize::try_from(gpa).map_err(|_| MemoryError::Wraps { gpa, len })?;
    let end = usize::try_from(end).map_err(|_| MemoryError::Wraps { gpa, len })?;
    Ok(start..end)
}

/// Guest RAM `[0, ram_size)` as a device reads and writes it.
///
/// Every method checks the whole range first (with [`check_range`]) and
/// touches nothing when it fails.
pub trait GuestMemory {
    /// Bytes of guest RAM; guest-physical addresses below it are RAM.
    fn ram_size(&self) -> u64;

    /// The bytes at `[gpa, gpa + len)`, in place.
    fn slice(&self, gpa: u64, len: u64) -> Result<&[u8], MemoryError>;

    /// The bytes at `[gpa, gpa + len)`, in place, for writing.
    fn slice_mut(&mut self, gpa: u64, len: u64) -> Result<&mut [u8], MemoryError>;

    /// Copies `buf.len()` bytes from `gpa` into `buf`.
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        buf.copy_from_slice(self.slice(gpa, buf.len() as u64)?);
        Ok(())
    }

    /// Copies `data` to `gpa`.
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), MemoryError> {
        self.slice_mut(gpa, data.len() as u64)?
            .copy_from_slice(data);
        Ok(())
    }

    /// Checks `[gpa, gpa + len)` without touching it.
    fn check(&self, gpa: u64, len: u64) -> Result<(), MemoryError> {
        check_range(self.ram_size(), gpa, len).map(|_| ())
    }

    /// Reads a little-endian `u16`.
    fn read_u16(&self, gpa: u64) -> Result<u16, MemoryError> {
        let mut b = [0; 2];
        self.read(gpa, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    /// Reads a little-endian `u32`.
    fn read_u32(&self, gpa: u64) -> Result<u32, MemoryError> {
        let mut b = [0; 4];
        self.read(gpa, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Reads a little-endian `u64`.
    fn read_u64(&self, gpa: u64) -> Result<u64, MemoryError> {
        let mut b = [0; 8];
        self.read(gpa, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Writes a little-endian `u16`.
    fn write_u16(&mut self, gpa: u64, v: u16) -> Result<(), MemoryError> {
        self.write(gpa, &v.to_le_bytes())
    }

    /// Writes a little-endian `u32`.
    fn write_u32(&mut self, gpa: u64, v: u32) -> Result<(), MemoryError> {
        self.write(gpa, &v.to_le_bytes())
    }
}

/// Guest RAM that is one host slice (guest-physical 0 at index 0): what a
/// server has when guest RAM is mapped in one piece, and what tests use.
#[derive(Debug)]
pub struct SliceMemory<'a> {
    ram: &'a mut [u8],
}

impl<'a> SliceMemory<'a> {
    /// Guest RAM is `ram`.
    pub fn new(ram: &'a mut [u8]) -> Self {
        Self { ram }
    }

    /// The whole of guest RAM.
    pub fn as_slice(&self) -> &[u8] {
        self.ram
    }
}

impl GuestMemory for SliceMemory<'_> {
    fn ram_size(&self) -> u64 {
        self.ram.len() as u64
    }

    fn slice(&self, gpa: u64, len: u64) -> Result<&[u8], MemoryError> {
        let r = check_range(self.ram_size(), gpa, len)?;
        Ok(&self.ram[r])
    }

    fn slice_mut(&mut self, gpa: u64, len: u64) -> Result<&mut [u8], MemoryError> {
        let r = check_range(self.ram_size(), gpa, len)?;
        Ok(&mut self.ram[r])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_ram_accesses_work() {
        let mut ram = [0u8; 64];
        let mut m = SliceMemory::new(&mut ram);
        m.write_u32(60, 0xdead_beef).unwrap();
        assert_eq!(m.read_u32(60).unwrap(), 0xdead_beef);
        assert_eq!(m.read_u16(62).unwrap(), 0xdead);
        assert_eq!(m.slice(0, 64).unwrap().len(), 64);
        assert_eq!(
            m.slice(64, 0).unwrap().len(),
            0,
            "an empty range at the end is in RAM"
        );
        m.slice_mut(1, 2).unwrap().copy_from_slice(&[7, 8]);
        assert_eq!(m.read_u16(1).unwrap(), 0x0807);
    }

    #[test]
    fn out_of_ram_and_wrapping_ranges_are_refused() {
        let mut ram = [0u8; 64];
        let mut m = SliceMemory::new(&mut ram);
        assert_eq!(
            m.read_u32(61).unwrap_err(),
            MemoryError::OutOfRam {
                gpa: 61,
                len: 4,
                ram_size: 64
            }
        );
        assert_eq!(
            m.slice(u64::MAX, 2).unwrap_err(),
            MemoryError::Wraps {
                gpa: u64::MAX,
                len: 2
            }
        );
        assert!(m.write(0xfee0_0000, &[1]).is_err(), "MMIO is not RAM");
        assert!(m.slice_mut(65, 0).is_err());
        assert!(m.check(0, 65).is_err());
        assert_eq!(m.as_slice(), &[0u8; 64][..], "failed writes touch nothing");
    }
}
