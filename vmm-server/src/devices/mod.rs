//! Device models behind port I/O.
//!
//! Each model is a plain state machine behind [`PortDevice`]; the
//! [`crate::router::Router`] maps port ranges to them. A model knows nothing
//! of VM exits, the stub or where its output goes.

pub mod debug_exit;
pub mod uart16550;

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
}

/// A device reached through port I/O.
///
/// `offset` counts from the base of the range the device is registered at;
/// an access may be wider than one register (the device decides what that
/// means). Values are in the low `size` bytes; the router masks both ways.
pub trait PortDevice {
    /// The guest reads `size` bytes at `offset`. Reads may change state
    /// (reading a receive buffer or an interrupt identification register).
    fn read(&mut self, offset: u16, size: IoSize) -> u32;

    /// The guest writes the low `size` bytes of `value` at `offset`.
    fn write(&mut self, offset: u16, size: IoSize, value: u32) -> WriteOutcome;
}

impl<D: PortDevice + ?Sized> PortDevice for &mut D {
    fn read(&mut self, offset: u16, size: IoSize) -> u32 {
        (**self).read(offset, size)
    }

    fn write(&mut self, offset: u16, size: IoSize, value: u32) -> WriteOutcome {
        (**self).write(offset, size, value)
    }
}
