//! Port 0x92, System Control Port A (the PS/2 "fast A20 and reset" port of
//! every PC chipset since the PS/2; QEMU's `port92`).
//!
//! - Bit 0, fast reset: writing it as 1 when it was 0 resets the machine,
//!   which ends the VM as [`WriteOutcome::Reset`] (as the i8042's pulse of
//!   its reset line does). It reads back as 0: the reset never leaves the
//!   bit set in a running machine.
//! - Bit 1, A20 gate: kept and read back. Guest memory never wraps at
//!   1 MiB here (A20 is always on in effect), so it starts set, as a BIOS
//!   leaves it, and clearing it changes nothing but what reads back.
//! - The other bits (security lock, watchdog and LED on old chipsets) are
//!   kept and read back, as QEMU does.

use super::{IoSize, PortDevice, WriteOutcome};

/// The port.
pub const PORT: u16 = 0x92;
/// Ports decoded.
pub const LEN: u16 = 1;
/// Bit 0: fast reset.
pub const FAST_RESET: u8 = 1 << 0;
/// Bit 1: the A20 gate.
pub const A20: u8 = 1 << 1;

/// System Control Port A.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SystemControlA {
    value: u8,
}

impl Default for SystemControlA {
    fn default() -> Self {
        Self::new()
    }
}

impl SystemControlA {
    /// After reset: A20 on, nothing else.
    pub const fn new() -> Self {
        Self { value: A20 }
    }

    /// Whether the guest's A20 gate is on.
    pub fn a20(&self) -> bool {
        self.value & A20 != 0
    }
}

impl PortDevice for SystemControlA {
    /// The register in the low byte; a wider read sees nothing above it.
    fn read(&mut self, offset: u16, _size: IoSize) -> u32 {
        if offset == 0 {
            u32::from(self.value)
        } else {
            0xff
        }
    }

    /// Keeps the low byte; bit 0 going from 0 to 1 resets the machine.
    fn write(&mut self, offset: u16, _size: IoSize, value: u32) -> WriteOutcome {
        if offset != 0 {
            return WriteOutcome::Continue;
        }
        let v = value as u8;
        let reset = v & FAST_RESET != 0 && self.value & FAST_RESET == 0;
        self.value = v & !FAST_RESET;
        if reset {
            WriteOutcome::Reset
        } else {
            WriteOutcome::Continue
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a20_starts_on_and_reads_back() {
        let mut p = SystemControlA::new();
        assert_eq!(p.read(0, IoSize::Byte), 0x02);
        assert!(p.a20());
        assert_eq!(p.write(0, IoSize::Byte, 0x00), WriteOutcome::Continue);
        assert_eq!(p.read(0, IoSize::Byte), 0x00);
        assert!(!p.a20());
        assert_eq!(p.write(0, IoSize::Byte, 0x02), WriteOutcome::Continue);
        assert_eq!(p.read(0, IoSize::Byte), 0x02);
        assert_eq!(p.write(0, IoSize::Byte, 0xf0), WriteOutcome::Continue);
        assert_eq!(p.read(0, IoSize::Byte), 0xf0, "the other bits are kept");
    }

    #[test]
    fn bit_0_is_a_fast_reset() {
        let mut p = SystemControlA::new();
        assert_eq!(p.write(0, IoSize::Byte, 0x03), WriteOutcome::Reset);
        assert_eq!(p.read(0, IoSize::Byte), 0x02, "A20 kept, reset bit reads 0");
        assert_eq!(p.write(0, IoSize::Byte, 0x01), WriteOutcome::Reset);
    }

    #[test]
    fn any_value_any_size_never_panics() {
        let mut p = SystemControlA::new();
        for v in 0..=0x1ffu32 {
            for size in [IoSize::Byte, IoSize::Word, IoSize::Dword] {
                let r = p.write(0, size, v);
                assert_eq!(r == WriteOutcome::Reset, v & 1 != 0, "{v:#x}");
                assert_eq!(p.read(0, size), v & 0xfe);
            }
        }
    }
}
