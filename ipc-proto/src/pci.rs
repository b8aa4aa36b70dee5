//! Messages on a PCI function's channel: the vmm-server forwards each
//! configuration-space access and each BAR access of a PCI function that
//! runs as a server of its own (a virtio device server), in the channel's
//! shared page. Every message is synchronous: the server does the work an
//! access asks for before it replies, and the reply carries the interrupts
//! that work raised.
//!
//! Doorbells are not messages: a function may name a range of one BAR as
//! doorbell registers ([`op::DOORBELL`]; a virtio function's queue
//! notification addresses). The proxy turns a write there into
//! `Signal(channel, doorbell_bit(i))` for doorbell `i` and the guest runs
//! on; the server does the work when it is scheduled, keeps the interrupts
//! it raised and `Signal`s the proxy's end with [`served_bit`] of its
//! channel; the proxy then sends a `POLL`, whose reply carries them.

use crate::vcpu::wire;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `PciMessage::op` values.
pub mod op {
    /// Read `size` (1, 2, 4) bytes of configuration space at `offset`;
    /// the reply's `value` holds them.
    pub const CONFIG_READ: u32 = 1;
    /// Write the low `size` bytes of `value` at `offset` of configuration
    /// space.
    pub const CONFIG_WRITE: u32 = 2;
    /// Read `size` (1, 2, 4, 8) bytes at `offset` of BAR `bar`.
    pub const BAR_READ: u32 = 3;
    /// Write the low `size` bytes of `value` at `offset` of BAR `bar`.
    pub const BAR_WRITE: u32 = 4;
    /// No access: let the device take host input (console input) and
    /// report its interrupts.
    pub const POLL: u32 = 5;
    /// No access: which writes are doorbells. Reply: `bar`, `offset` (the
    /// first doorbell's offset in the BAR), `value` (the range's length in
    /// bytes, 0: no doorbells) and `size` (bytes per doorbell, 1..=128).
    pub const DOORBELL: u32 = 6;
    /// No access: the proxy has replayed the guest's writes into a new
    /// instance of the server (it saw `instance` change); continue from
    /// the device's state in guest memory (a virtio function: each
    /// enabled queue from its used ring's `idx`, so requests in flight
    /// are processed again).
    pub const RESUME: u32 = 7;
    /// No access: the VM ends (the vmm-server is about to `VmStop`); a
    /// server with counters prints them. Servers without answer as for
    /// any unknown op.
    pub const END: u32 = 8;
}

/// Where in the channel page the proxy keeps the number of doorbells it
/// has rung so far (a `u64`), written before each `Signal`. The server
/// reads it when it takes its notification word, and answers a `POLL`
/// with the number it read last in `value`: while that is behind, the
/// proxy knows a doorbell is still to be processed (bits coalesce, so
/// the word cannot say).
pub const DOORBELL_COUNT_OFFSET: usize = 2048;

/// Doorbells that have a `Signal` bit of their own; doorbell
/// `DOORBELLS - 1` and every later one share the last bit.
pub const DOORBELLS: u32 = 16;

/// The `Signal` bit of doorbell `i` (see [`DOORBELLS`]).
pub const fn doorbell_bit(i: u64) -> u64 {
    if i >= DOORBELLS as u64 - 1 {
        1 << (DOORBELLS - 1)
    } else {
        1 << i
    }
}

/// The `Signal` bit a function's server sets in the proxy's word when it
/// has interrupts for it: channel `ch`'s number modulo 16 (a vmm-server has
/// fewer channels than that, so the bit names the function).
pub const fn served_bit(ch: u64) -> u64 {
    1 << (ch % 16)
}

/// The vmm-server's PCI function table, a block in its executable that the
/// image builder patches (the stub knows nothing of PCI): this magic, then
/// [`FUNCTION_SLOTS`] bytes, the channel number + 1 of the server of each
/// of the board's PCI slots in order (0: the slot is empty), then a flags
/// byte ([`TAKES_HOST_INPUT`]) and three zero bytes.
pub const FUNCTIONS_MAGIC: [u8; 12] = *b"SVPCIFUNCS\0\0";
/// Slots in the function table.
pub const FUNCTION_SLOTS: usize = 4;
/// Flag: a function's server reads host console input (a virtio console);
/// the vmm-server then leaves it to that server.
pub const TAKES_HOST_INPUT: u8 = 1;
/// The whole block: the magic, the slots, the flags, padding.
pub const FUNCTIONS_BLOCK_LEN: usize = FUNCTIONS_MAGIC.len() + FUNCTION_SLOTS + 4;

/// Most MSI messages one reply carries.
pub const MAX_MSIS: usize = 8;

wire! {
    /// One message-signalled interrupt: write `data` at `address`.
    pub struct MsiMessage {
        /// The address (0xFEEx_xxxx for the local APICs).
        pub address: u64,
        /// The data.
        pub data: u32,
        /// Zero.
        pub reserved: u32,
    }
}

wire! {
    /// One access to a PCI function and its answer, in the channel page.
    /// The client fills `op`, `size`, `bar`, `offset` and (for writes)
    /// `value`, then calls; the server answers in the same page.
    pub struct PciMessage {
        /// [`op`].
        pub op: u32,
        /// 1, 2, 4 (or 8 for BAR accesses).
        pub size: u8,
        /// The BAR of a BAR access (0..6).
        pub bar: u8,
        /// Reply: 1 when the function's INTx line (INTA#) is asserted.
        pub intx: u8,
        /// Reply: how many of `msis` are valid (at most [`MAX_MSIS`]).
        pub msi_count: u8,
        /// The register (configuration space) or the offset in the BAR.
        pub offset: u64,
        /// Write: the value; reply to a read: the value read.
        pub value: u64,
        /// Reply: messages raised that did not fit in `msis` (lost).
        pub msis_dropped: u32,
        /// Reply: the server instance's id, non-zero and different in each
        /// instance (a restarted server's is new), so the proxy sees a
        /// restart; 0 from a server that does not say.
        pub instance: u32,
        /// Reply: the MSI/MSI-X messages the access raised, oldest first.
        pub msis: [MsiMessage; MAX_MSIS],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn pci_message_layout_is_pinned() {
        assert_eq!(size_of::<MsiMessage>(), 16);
        assert_eq!(offset_of!(MsiMessage, address), 0);
        assert_eq!(offset_of!(MsiMessage, data), 8);
        assert_eq!(size_of::<PciMessage>(), 32 + 16 * MAX_MSIS);
        assert_eq!(offset_of!(PciMessage, op), 0);
        assert_eq!(offset_of!(PciMessage, size), 4);
        assert_eq!(offset_of!(PciMessage, bar), 5);
        assert_eq!(offset_of!(PciMessage, intx), 6);
        assert_eq!(offset_of!(PciMessage, msi_count), 7);
        assert_eq!(offset_of!(PciMessage, offset), 8);
        assert_eq!(offset_of!(PciMessage, value), 16);
        assert_eq!(offset_of!(PciMessage, msis_dropped), 24);
        assert_eq!(offset_of!(PciMessage, instance), 28);
        assert_eq!(offset_of!(PciMessage, msis), 32);
        assert!(size_of::<PciMessage>() <= 4096, "fits the channel page");
        assert!(
            size_of::<PciMessage>() <= DOORBELL_COUNT_OFFSET,
            "apart from the count"
        );
    }

    #[test]
    fn doorbell_bits_stay_in_the_signal_bits() {
        assert_eq!(doorbell_bit(0), 1);
        assert_eq!(doorbell_bit(14), 1 << 14);
        assert_eq!(doorbell_bit(15), 1 << 15);
        assert_eq!(doorbell_bit(u64::MAX), 1 << 15);
        assert_eq!(served_bit(3), 1 << 3);
        assert_eq!(served_bit(19), 1 << 3);
    }
}
