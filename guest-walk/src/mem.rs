//! Guest-physical memory: on the native stub a window onto the VM's RAM
//! mapped zero-copy into the server, in tests and `sim` a byte vector.
//! An address outside RAM is not an error of the guest: it is MMIO (or
//! nothing), which the caller decides what to do with.

/// The address is not guest RAM (it is MMIO, or nothing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotRam;

/// Guest-physical memory.
pub trait GuestMemory {
    /// Bytes of RAM from guest-physical 0.
    fn ram_bytes(&self) -> u64;

    /// Reads `buf.len()` bytes at `gpa`; [`NotRam`] when any byte lies
    /// outside RAM (`buf` is unspecified then).
    fn read_phys(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), NotRam>;

    /// Writes `data` at `gpa`; [`NotRam`] when any byte lies outside RAM
    /// (nothing is written then).
    fn write_phys(&mut self, gpa: u64, data: &[u8]) -> Result<(), NotRam>;
}

/// Guest RAM in one byte slice: guest-physical `gpa` is `bytes[gpa]`.
#[derive(Debug)]
pub struct Ram<'a> {
    bytes: &'a mut [u8],
}

impl<'a> Ram<'a> {
    /// RAM over `bytes`.
    pub fn new(bytes: &'a mut [u8]) -> Self {
        Self { bytes }
    }

    fn range(&self, gpa: u64, len: usize) -> Option<core::ops::Range<usize>> {
        let start = usize::try_from(gpa).ok()?;
        let end = start.checked_add(len)?;
        (end <= self.bytes.len()).then_some(start..end)
    }
}

impl GuestMemory for Ram<'_> {
    fn ram_bytes(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn read_phys(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), NotRam> {
        let r = self.range(gpa, buf.len()).ok_or(NotRam)?;
        buf.copy_from_slice(&self.bytes[r]);
        Ok(())
    }

    fn write_phys(&mut self, gpa: u64, data: &[u8]) -> Result<(), NotRam> {
        let r = self.range(gpa, data.len()).ok_or(NotRam)?;
        self.bytes[r].copy_from_slice(data);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_bounds() {
        let mut bytes = [0u8; 16];
        let mut r = Ram::new(&mut bytes);
        let mut b = [0u8; 4];
        assert!(r.read_phys(12, &mut b).is_ok());
        assert_eq!(r.read_phys(13, &mut b), Err(NotRam));
        assert_eq!(r.write_phys(u64::MAX, &[1]), Err(NotRam));
        assert_eq!(r.ram_bytes(), 16);
    }
}
