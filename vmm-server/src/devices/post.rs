//! Port 0x80, the POST-code port: firmware and kernels write progress codes
//! (or use it as an I/O delay, as Linux does). The device keeps the last
//! code and counts the writes; reads return the last code, as on the many
//! chipsets that latch it.

use super::{IoSize, PortDevice, WriteOutcome};

/// The port.
pub const PORT: u16 = 0x80;
/// Ports decoded.
pub const LEN: u16 = 1;

/// The POST-code port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PostCode {
    last: u8,
    writes: u64,
}

impl PostCode {
    /// No code written yet.
    pub const fn new() -> Self {
        Self { last: 0, writes: 0 }
    }

    /// The last code written.
    pub fn last(&self) -> u8 {
        self.last
    }

    /// Writes so far.
    pub fn writes(&self) -> u64 {
        self.writes
    }
}

impl PortDevice for PostCode {
    fn read(&mut self, _offset: u16, size: IoSize) -> u32 {
        u32::from(self.last) * (size.mask() / 0xff)
    }

    /// Keeps the low byte; the VM carries on.
    fn write(&mut self, _offset: u16, _size: IoSize, value: u32) -> WriteOutcome {
        self.last = value as u8;
        self.writes += 1;
        WriteOutcome::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_code() {
        let mut p = PostCode::new();
        assert_eq!(p.write(0, IoSize::Byte, 0x1234), WriteOutcome::Continue);
        p.write(0, IoSize::Byte, 0x55);
        assert_eq!((p.last(), p.writes()), (0x55, 2));
        assert_eq!(p.read(0, IoSize::Byte), 0x55);
        assert_eq!(p.read(0, IoSize::Word), 0x5555);
    }
}
