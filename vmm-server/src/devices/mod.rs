//! Device models behind port I/O.
//!
//! Each model is a plain state machine behind [`PortDevice`]; the
//! [`crate::router::Router`] maps port ranges to them. A model knows nothing
//! of VM exits, the stub or where its output goes: time comes from the
//! [`crate::board::VirtualClock`] and interrupts leave through an
//! [`crate::board::IrqPin`].

pub mod acpi_pm;
pub mod debug_exit;
pub mod fw_cfg;
pub mod i8042;
pub mod interrupt;
pub mod ioapic;
pub mod lapic;
pub mod pci;
pub mod pic;
pub mod pit;
pub mod port92;
pub mod post;
pub mod remote;
pub mod remote_pci;
pub mod rtc;
pub mod uart16550;

use crate::board::Nanos;
pub use crate::exit::IoSize;

/// What a port write asks of the VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Carry on with the guest.
    Continue,
    /// End the VM with this status (0 is a clean end).
    Stop {
        /// The guest's exit status.
        status: u8,
    },
    /// The guest reset the machine (the keyboard controller's pulse of the
    /// reset line, command 0xFE; port 0x92's fast reset).
    Reset,
}

/// A device reached through port I/O.
///
/// `offset` counts from the base of the first range the device is
/// registered at; an access may be wider than one register (the device
/// decides what that means). Values are in the low `size` bytes; the router
/// masks both ways.
pub trait PortDevice {
    /// The guest reads `size` bytes at `offset`. Reads may change state
    /// (reading a receive buffer or an interrupt identification register).
    fn read(&mut self, offset: u16, size: IoSize) -> u32;

    /// The guest writes the low `size` bytes of `value` at `offset`.
    fn write(&mut self, offset: u16, size: IoSize, value: u32) -> WriteOutcome;

    /// Brings the device up to the current virtual time (raising the
    /// interrupts that came due, taking host input) and returns the next
    /// virtual time at which it will do something on its own, if any.
    /// The exit handler calls it after every exit.
    fn poll(&mut self) -> Option<Nanos> {
        None
    }
}

impl<D: PortDevice + ?Sized> PortDevice for &mut D {
    fn read(&mut self, offset: u16, size: IoSize) -> u32 {
        (**self).read(offset, size)
    }

    fn write(&mut self, offset: u16, size: IoSize, value: u32) -> WriteOutcome {
        (**self).write(offset, size, value)
    }

    fn poll(&mut self) -> Option<Nanos> {
        (**self).poll()
    }
}

/// Reads a byte-register device with a wide access: consecutive registers,
/// low byte first.
pub(crate) fn read_bytes(offset: u16, size: IoSize, mut reg: impl FnMut(u16) -> u8) -> u32 {
    let mut v = 0;
    for i in 0..size.bytes() {
        let byte = offset.checked_add(u16::from(i)).map_or(0xff, &mut reg);
        v |= u32::from(byte) << (8 * i);
    }
    v
}
