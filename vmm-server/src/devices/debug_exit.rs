//! The debug-exit port: a guest ends the VM by writing its status.
//!
//! Like QEMU's `isa-debug-exit`, but the status is the value itself (QEMU
//! exits with `(value << 1) | 1`): a test guest writes 0 to port 0xF4 to
//! pass.

use super::{IoSize, PortDevice, WriteOutcome};

/// The port the device sits at.
pub const PORT: u16 = 0xf4;
/// Ports the device decodes.
pub const LEN: u16 = 1;

/// The debug-exit device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DebugExit;

impl DebugExit {
    /// A new device.
    pub const fn new() -> Self {
        Self
    }
}

impl PortDevice for DebugExit {
    /// Nothing to read: all ones, like an empty bus.
    fn read(&mut self, _offset: u16, size: IoSize) -> u32 {
        size.mask()
    }

    /// Any write stops the VM with status `value & 0xff`.
    fn write(&mut self, _offset: u16, _size: IoSize, value: u32) -> WriteOutcome {
        WriteOutcome::Stop {
            status: (value & 0xff) as u8,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_stops_with_the_low_byte() {
        let mut d = DebugExit::new();
        assert_eq!(
            d.write(0, IoSize::Byte, 0),
            WriteOutcome::Stop { status: 0 }
        );
        assert_eq!(
            d.write(0, IoSize::Dword, 0x1_2342),
            WriteOutcome::Stop { status: 0x42 }
        );
        assert_eq!(d.read(0, IoSize::Word), 0xffff);
    }
}
