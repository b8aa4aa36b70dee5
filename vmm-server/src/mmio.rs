//! The MMIO router: guest-physical ranges outside RAM mapped to devices.
//!
//! An access nothing claims behaves like an empty bus: reads return all
//! ones, writes are dropped, and both are counted.

use core::fmt;

use crate::devices::WriteOutcome;

/// A device reached through memory-mapped registers.
pub trait MmioDevice {
    /// The guest reads `size` bytes (1, 2, 4 or 8) at `offset` from the
    /// device's base.
    fn read(&mut self, offset: u64, size: u8) -> u64;
    /// The guest writes the low `size` bytes of `value` at `offset`.
    fn write(&mut self, offset: u64, size: u8, value: u64) -> WriteOutcome;
}

/// Most ranges one MMIO router holds.
pub const MAX_MMIO_RANGES: usize = 8;

/// Why a range could not be registered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmioError {
    /// Empty, or past the end of the address space.
    BadRange {
        /// Base.
        base: u64,
        /// Length.
        len: u64,
    },
    /// Overlaps a registered range.
    Overlap {
        /// Base of the new range.
        base: u64,
    },
    /// No room for another range.
    Full,
}

impl fmt::Display for MmioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::BadRange { base, len } => {
                write!(f, "MMIO range {base:#x}+{len:#x} is empty or wraps")
            }
            Self::Overlap { base } => {
                write!(f, "MMIO range at {base:#x} overlaps a registered one")
            }
            Self::Full => write!(f, "the MMIO router holds {MAX_MMIO_RANGES} ranges already"),
        }
    }
}

/// Accesses that hit no device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnknownMmioCounts {
    /// Reads.
    pub reads: u64,
    /// Writes.
    pub writes: u64,
}

struct Range<'d> {
    base: u64,
    len: u64,
    device: &'d mut dyn MmioDevice,
}

/// Maps MMIO ranges to the devices that borrow them for `'d`.
#[derive(Default)]
pub struct MmioRouter<'d> {
    ranges: heapless::Vec<Range<'d>, MAX_MMIO_RANGES>,
    unknown: UnknownMmioCounts,
}

impl<'d> MmioRouter<'d> {
    /// No ranges.
    pub fn new() -> Self {
        Self::default()
    }

    /// Routes `[base, base + len)` to `device`, which sees offsets from `base`.
    pub fn register(
        &mut self,
        base: u64,
        len: u64,
        device: &'d mut dyn MmioDevice,
    ) -> Result<(), MmioError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(MmioError::BadRange { base, len })?;
        if self
            .ranges
            .iter()
            .any(|r| base < r.base + r.len && r.base < end)
        {
            return Err(MmioError::Overlap { base });
        }
        self.ranges
            .push(Range { base, len, device })
            .map_err(|_| MmioError::Full)
    }

    fn find(&mut self, gpa: u64) -> Option<&mut Range<'d>> {
        self.ranges
            .iter_mut()
            .find(|r| gpa >= r.base && gpa - r.base < r.len)
    }

    /// A read; all ones (counted) when nothing claims `gpa`.
    pub fn read(&mut self, gpa: u64, size: u8) -> u64 {
        let mask = crate::emulate::alu::mask(size);
        match self.find(gpa) {
            Some(r) => r.device.read(gpa - r.base, size) & mask,
            None => {
                self.unknown.reads += 1;
                mask
            }
        }
    }

    /// A write; dropped (counted) when nothing claims `gpa`.
    pub fn write(&mut self, gpa: u64, size: u8, value: u64) -> WriteOutcome {
        let mask = crate::emulate::alu::mask(size);
        match self.find(gpa) {
            Some(r) => r.device.write(gpa - r.base, size, value & mask),
            None => {
                self.unknown.writes += 1;
                WriteOutcome::Continue
            }
        }
    }

    /// Accesses that hit nothing so far.
    pub fn unknown(&self) -> UnknownMmioCounts {
        self.unknown
    }
}

/// A page of plain registers: what is written reads back. A test device
/// (the `mmio` test guest's target) and a stand-in for devices to come.
#[derive(Clone, Debug)]
pub struct ScratchRegisters {
    bytes: [u8; 4096],
}

impl Default for ScratchRegisters {
    fn default() -> Self {
        Self { bytes: [0; 4096] }
    }
}

impl MmioDevice for ScratchRegisters {
    fn read(&mut self, offset: u64, size: u8) -> u64 {
        (0..u64::from(size)).fold(0, |v, i| {
            let b = usize::try_from(offset + i)
                .ok()
                .and_then(|o| self.bytes.get(o))
                .copied()
                .unwrap_or(0xff);
            v | u64::from(b) << (8 * i)
        })
    }

    fn write(&mut self, offset: u64, size: u8, value: u64) -> WriteOutcome {
        for i in 0..u64::from(size) {
            if let Some(b) = usize::try_from(offset + i)
                .ok()
                .and_then(|o| self.bytes.get_mut(o))
            {
                *b = (value >> (8 * i)) as u8;
            }
        }
        WriteOutcome::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_counts_the_rest() {
        let mut s = ScratchRegisters::default();
        let mut r = MmioRouter::new();
        r.register(0xfeb0_0000, 0x1000, &mut s).unwrap();
        assert_eq!(
            r.write(0xfeb0_0010, 4, 0x1_2345_6789),
            WriteOutcome::Continue
        );
        assert_eq!(r.read(0xfeb0_0010, 8), 0x2345_6789);
        assert_eq!(
            r.read(0xfeb0_0ffe, 4),
            0xffff_0000,
            "bytes past the page read as ones"
        );
        assert_eq!(r.read(0xfec0_0000, 2), 0xffff);
        r.write(0xfec0_0000, 1, 0);
        assert_eq!(
            r.unknown(),
            UnknownMmioCounts {
                reads: 1,
                writes: 1
            }
        );
    }

    #[test]
    fn bad_and_overlapping_ranges() {
        let mut a = ScratchRegisters::default();
        let mut b = ScratchRegisters::default();
        let mut c = ScratchRegisters::default();
        let mut r = MmioRouter::new();
        assert!(r.register(u64::MAX, 2, &mut a).is_err());
        r.register(0x1000, 0x1000, &mut b).unwrap();
        assert_eq!(
            r.register(0x1fff, 1, &mut c).unwrap_err(),
            MmioError::Overlap { base: 0x1fff }
        );
    }
}
