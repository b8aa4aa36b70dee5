//! PCI configuration mechanism #1 (ports 0xCF8-0xCFF) with one device: a
//! host bridge at 00:00.0 (the i440FX's IDs, as QEMU's `pc` machine shows
//! them), so that an operating system finds a working, empty PCI bus.
//! Linux accepts mechanism #1 only after a "sanity check" finds a host
//! bridge (class 0x0600) on bus 0; without one it says `PCI: Fatal: No
//! config space access function found`.
//!
//! - 0xCF8, 32-bit: CONFIG_ADDRESS (enable bit 31, bus, device, function,
//!   register), read back as written. Narrower accesses to 0xCF8-0xCFB
//!   read all ones and are ignored (so the mechanism #2 probe fails, and
//!   the reset-control byte at 0xCF9 does nothing).
//! - 0xCFC-0xCFF: CONFIG_DATA, any size: the host bridge's configuration
//!   space (read-only) when the address is enabled and names 00:00.0; all
//!   ones (no device) otherwise.

use super::{IoSize, PortDevice, WriteOutcome};

/// The first port.
pub const BASE: u16 = 0xcf8;
/// Ports decoded.
pub const LEN: u16 = 8;

const ENABLE: u32 = 1 << 31;
/// Vendor 0x8086, device 0x1237 (82441FX PMC, the i440FX host bridge).
const ID: u32 = 0x1237_8086;
/// Class 06 (bridge), subclass 00 (host), interface 00; revision 2.
const CLASS_REV: u32 = 0x0600_0002;

/// The configuration ports and the host bridge behind them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PciHost {
    address: u32,
}

impl PciHost {
    /// CONFIG_ADDRESS zero (disabled).
    pub const fn new() -> Self {
        Self { address: 0 }
    }

    /// The dword of configuration space the address selects; all ones
    /// without a device.
    fn data(&self) -> u32 {
        let bus_dev_fn = (self.address >> 8) & 0xffff;
        if self.address & ENABLE == 0 || bus_dev_fn != 0 {
            return u32::MAX;
        }
        match self.address & 0xfc {
            0x00 => ID,
            0x08 => CLASS_REV,
            _ => 0,
        }
    }
}

impl PortDevice for PciHost {
    fn read(&mut self, offset: u16, size: IoSize) -> u32 {
        match (offset, size) {
            (0, IoSize::Dword) => self.address,
            (0..=3, _) => size.mask(),
            _ => {
                let shift = 8 * u32::from(offset & 3);
                (self.data() >> shift) & size.mask()
            }
        }
    }

    fn write(&mut self, offset: u16, size: IoSize, value: u32) -> WriteOutcome {
        if (offset, size) == (0, IoSize::Dword) {
            // Bits 30:24 are reserved and read as zero; bits 1:0 too.
            self.address = value & 0x80ff_fffc;
        }
        WriteOutcome::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_finds_type1_and_the_host_bridge() {
        let mut p = PciHost::new();
        // pci_check_type2: byte writes, then 0xCF8 and 0xCFA must not read 0.
        p.write(3, IoSize::Byte, 0);
        p.write(0, IoSize::Byte, 0);
        p.write(2, IoSize::Byte, 0);
        assert_ne!(p.read(0, IoSize::Byte), 0);
        // pci_check_type1: the address register reads back.
        p.write(0, IoSize::Dword, 0x8000_0000);
        assert_eq!(p.read(0, IoSize::Dword), 0x8000_0000);
        // 00:00.0: vendor, device, class.
        assert_eq!(p.read(4, IoSize::Word), 0x8086);
        assert_eq!(p.read(6, IoSize::Word), 0x1237);
        p.write(0, IoSize::Dword, 0x8000_0008);
        assert_eq!(p.read(6, IoSize::Word), 0x0600);
        assert_eq!(p.read(4, IoSize::Byte), 2);
        // 00:01.0 and bus 1: nothing.
        p.write(0, IoSize::Dword, 0x8000_0800);
        assert_eq!(p.read(4, IoSize::Dword), u32::MAX);
        p.write(0, IoSize::Dword, 0x8001_0000);
        assert_eq!(p.read(4, IoSize::Word), 0xffff);
        // Disabled: nothing; writes to the data port change nothing.
        p.write(0, IoSize::Dword, 0);
        assert_eq!(p.read(4, IoSize::Dword), u32::MAX);
        p.write(0, IoSize::Dword, 0x8000_0000);
        p.write(4, IoSize::Dword, 0);
        assert_eq!(p.read(4, IoSize::Dword), ID);
    }
}
