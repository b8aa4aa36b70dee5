//! Ethernet frames on a link channel: a client (the virtio-net server)
//! sends and receives whole frames through the server that owns the
//! machine's network card (the nic-driver).
//!
//! The page: a [`LinkMessage`] at its start, the frame to send at
//! [`TX_OFFSET`], the frame received at [`RX_OFFSET`]. The client writes
//! the message (and for [`op::SEND`] the frame) and calls; the server
//! answers with a [`LinkMessage`] over it (and for [`op::RECEIVE`] the
//! frame at [`RX_OFFSET`]). The two frame areas are apart, so a frame
//! the client received and has not delivered yet survives its next
//! SEND.
//!
//! When frames arrive the server `Signal`s the client with [`RX_BIT`]:
//! the client then calls RECEIVE until it answers [`status::EMPTY`]
//! (frames wait in the card's own receive ring meanwhile).

use crate::vcpu::wire;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// [`LinkMessage::op`] values.
pub mod op {
    /// The card's station address and the server's counters.
    pub const INFO: u32 = 1;
    /// Send the `len`-byte frame at [`super::TX_OFFSET`].
    pub const SEND: u32 = 2;
    /// The next frame received, at [`super::RX_OFFSET`], `len` bytes.
    pub const RECEIVE: u32 = 3;
    /// The VM ends: the server prints its counters (the switch's
    /// statistics lines). The nic-driver answers [`super::status::UNSUPPORTED`].
    pub const STATS: u32 = 4;
}

/// [`LinkMessage::status`] values.
pub mod status {
    /// Done.
    pub const OK: u32 = 0;
    /// RECEIVE: no frame waits.
    pub const EMPTY: u32 = 1;
    /// SEND: `len` is outside [`super::MIN_FRAME`]..=[`super::MAX_SEND`].
    pub const BAD_LENGTH: u32 = 2;
    /// The card failed (a timeout, an aborted transmission).
    pub const IO_ERROR: u32 = 3;
    /// The server has no usable card.
    pub const NO_CARD: u32 = 4;
    /// An unknown `op`.
    pub const UNSUPPORTED: u32 = 5;
}

/// An Ethernet header: the shortest frame a client may send (the card
/// pads it to 60 bytes).
pub const MIN_FRAME: usize = 14;
/// The longest frame a client may send: 1500 bytes of payload.
pub const MAX_SEND: usize = 1514;
/// The longest frame RECEIVE returns (1514 and a VLAN tag).
pub const MAX_RECEIVE: usize = 1518;
/// Where the frame to send starts on the page.
pub const TX_OFFSET: usize = 64;
/// Where RECEIVE puts the frame.
pub const RX_OFFSET: usize = 2048;
/// The `Signal` bit the server sets in the client's word when frames
/// arrived (the last of the 16, apart from a virtio function's doorbell
/// bits 0 and 1).
pub const RX_BIT: u64 = 1 << 15;

wire! {
    /// A request, and the reply over it, at the start of the page.
    pub struct LinkMessage {
        /// [`op`].
        pub op: u32,
        /// Reply: [`status`].
        pub status: u32,
        /// SEND: the frame's length; RECEIVE reply: the frame's length.
        pub len: u32,
        /// Zero.
        pub reserved: u32,
        /// INFO reply: the card's station address (bytes 6-7 zero).
        pub mac: [u8; 8],
        /// Replies: frames the card sent.
        pub tx_frames: u64,
        /// Replies: frames handed to the client.
        pub rx_frames: u64,
        /// Replies: received frames the card or the server dropped (bad
        /// status or length, ring resets).
        pub rx_dropped: u64,
        /// Replies: SENDs refused or failed.
        pub tx_errors: u64,
    }
}

impl LinkMessage {
    /// The frame length of a SEND, if it is one the card can send.
    pub fn send_len(&self) -> Option<usize> {
        let len = usize::try_from(self.len).ok()?;
        (MIN_FRAME..=MAX_SEND).contains(&len).then_some(len)
    }

    /// The frame length of a RECEIVE reply, if it is a frame.
    pub fn received_len(&self) -> Option<usize> {
        let len = usize::try_from(self.len).ok()?;
        (self.status == status::OK && (MIN_FRAME..=MAX_RECEIVE).contains(&len)).then_some(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_holds_the_message_and_both_frames_apart() {
        assert_eq!(core::mem::size_of::<LinkMessage>(), 56);
        const {
            assert!(core::mem::size_of::<LinkMessage>() <= TX_OFFSET);
            assert!(TX_OFFSET + MAX_SEND <= RX_OFFSET);
            assert!(RX_OFFSET + MAX_RECEIVE <= crate::PAGE_SIZE as usize);
        }
    }

    #[test]
    fn lengths_are_checked() {
        let m = |len, status| LinkMessage {
            op: op::SEND,
            len,
            status,
            ..LinkMessage::default()
        };
        assert_eq!(m(14, 0).send_len(), Some(14));
        assert_eq!(m(1514, 0).send_len(), Some(1514));
        assert_eq!(m(13, 0).send_len(), None);
        assert_eq!(m(1515, 0).send_len(), None);
        assert_eq!(m(u32::MAX, 0).send_len(), None);
        assert_eq!(m(1518, status::OK).received_len(), Some(1518));
        assert_eq!(m(1519, status::OK).received_len(), None);
        assert_eq!(m(60, status::EMPTY).received_len(), None);
    }
}
