//! Messages on a device channel: the vmm-server forwards a port access to a
//! device that runs as a server of its own, in the channel's shared page.

use crate::vcpu::wire;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `PortMessage::op` values.
pub mod op {
    /// Read `size` bytes at `port`; the reply's `value` holds them.
    pub const READ: u32 = 1;
    /// Write `value` (`size` bytes) to `port`.
    pub const WRITE: u32 = 2;
    /// No access: let the device catch up (poll its input, its timers) and
    /// report its interrupt line.
    pub const POLL: u32 = 3;
    /// No access: send the output the device has buffered to the host
    /// console now and end an open line there (the client is about to
    /// write a line of its own); report the interrupt line.
    pub const FLUSH: u32 = 4;
}

wire! {
    /// One port access and its answer, in the channel page. The client fills
    /// `op`, `port`, `size` and (for writes) `value`, then calls; the server
    /// answers in the same page.
    pub struct PortMessage {
        /// [`op`].
        pub op: u32,
        /// The port.
        pub port: u16,
        /// 1, 2 or 4.
        pub size: u8,
        /// Reply: 1 when the device's interrupt line is raised.
        pub irq_level: u8,
        /// Write: the value; reply to a read: the value read.
        pub value: u32,
        /// Reply: 0, or 0x100 | status when the device asks to end the VM
        /// with that status (a debug-exit device, a reset).
        pub stop: u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn port_message_layout_is_pinned() {
        assert_eq!(size_of::<PortMessage>(), 16);
        assert_eq!(offset_of!(PortMessage, op), 0);
        assert_eq!(offset_of!(PortMessage, port), 4);
        assert_eq!(offset_of!(PortMessage, size), 6);
        assert_eq!(offset_of!(PortMessage, irq_level), 7);
        assert_eq!(offset_of!(PortMessage, value), 8);
        assert_eq!(offset_of!(PortMessage, stop), 12);
    }
}
