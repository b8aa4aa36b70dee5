//! The virtio-net server's uplink: `virtio::devices::net::NetBackend`
//! over a link channel to the nic-driver (`ipc_proto::net`). A frame the
//! guest sends is gathered straight into the channel page's transmit
//! area and sent with one SEND call; a frame from the network is fetched
//! with a RECEIVE call into the page's receive area only when the server
//! said frames wait ([`Uplink::frames_arrived`]), and stays there until
//! the device has a receive buffer for it.

use core::fmt;

use ipc_proto::net::{op, LinkMessage, MAX_SEND, RX_OFFSET, TX_OFFSET};
use virtio::devices::net::{NetBackend, MAX_FRAME_LEN};
use zerocopy::{FromBytes, IntoBytes};

/// The guest's station address: locally administered (bit 1 of the
/// first byte), unicast, "SV"; not the card's (QEMU's 52:54:00:12:34:56),
/// so the card runs promiscuous for it, as it will for several VMs.
pub const GUEST_MAC: [u8; 6] = [0x02, 0x53, 0x56, 0x00, 0x00, 0x01];

/// The magic of the virtio-net server's configuration block; the byte
/// after it is the link channel's number + 1 (0: none configured), the
/// next the last byte of the guest's address ([`guest_mac`]).
pub const CONFIG_MAGIC: [u8; 12] = *b"SVVNETCONFIG";

/// The guest's station address: [`GUEST_MAC`] with the configuration's
/// last byte, if set (each VM on one switch has its own: VM n gets n + 1).
pub fn guest_mac(byte: u8) -> [u8; 6] {
    let mut mac = GUEST_MAC;
    if byte != 0 {
        mac[5] = byte;
    }
    mac
}

/// The link channel's number from the configuration byte, if one was set.
pub fn link_channel_from_config(byte: u8) -> Option<u64> {
    byte.checked_sub(1).map(u64::from)
}

/// A channel page's bytes.
pub type Page = [u8; ipc_proto::PAGE_SIZE as usize];

/// Why a call on the link failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkError(pub ipc_proto::ErrorCode);

impl fmt::Display for LinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the link call failed: {}", self.0.describe())
    }
}

/// The link channel as the client sees it: its page and a call.
pub trait LinkChannel {
    /// The channel's page.
    fn page(&mut self) -> &mut Page;
    /// Calls the server with the request on the page; its reply is there
    /// when this returns `Ok`.
    fn call(&mut self) -> Result<(), LinkError>;
}

/// The uplink: a [`NetBackend`] over a [`LinkChannel`].
pub struct Uplink<L: LinkChannel> {
    link: L,
    /// Bytes of the received frame held at `RX_OFFSET`.
    held: Option<usize>,
    /// Frames may wait at the server: it signalled, or the last RECEIVE
    /// found one.
    maybe_more: bool,
    /// Calls that failed (a restarted nic-driver, ...): the frame is lost.
    pub failed_calls: u64,
    /// SENDs the server refused or the card failed.
    pub send_errors: u64,
    /// The server's counters in its last reply.
    pub last_reply: LinkMessage,
}

impl<L: LinkChannel> Uplink<L> {
    /// An uplink over `link`; frames may already wait.
    pub fn new(link: L) -> Self {
        Self {
            link,
            held: None,
            maybe_more: true,
            failed_calls: 0,
            send_errors: 0,
            last_reply: LinkMessage::default(),
        }
    }

    /// The link.
    pub fn link_mut(&mut self) -> &mut L {
        &mut self.link
    }

    /// Asks the server for its card's station address.
    pub fn info(&mut self) -> Result<LinkMessage, LinkError> {
        self.ask(LinkMessage {
            op: op::INFO,
            ..LinkMessage::default()
        })
    }

    /// Tells the server that the VM ends: the switch prints its counters.
    pub fn stats(&mut self) -> Result<LinkMessage, LinkError> {
        self.ask(LinkMessage {
            op: op::STATS,
            ..LinkMessage::default()
        })
    }

    /// The server signalled that frames arrived.
    pub fn frames_arrived(&mut self) {
        self.maybe_more = true;
    }

    /// Whether a frame is held or may wait at the server.
    pub fn rx_pending(&self) -> bool {
        self.held.is_some() || self.maybe_more
    }

    fn ask(&mut self, request: LinkMessage) -> Result<LinkMessage, LinkError> {
        // The page is larger than a message.
        let _ = request.write_to_prefix(&mut self.link.page()[..]);
        if let Err(e) = self.link.call() {
            self.failed_calls += 1;
            return Err(e);
        }
        let reply = LinkMessage::read_from_prefix(&self.link.page()[..])
            .map(|(m, _)| m)
            .unwrap_or_default();
        self.last_reply = reply;
        Ok(reply)
    }
}

impl<L: LinkChannel> NetBackend for Uplink<L> {
    fn tx_buffer(&mut self) -> &mut [u8] {
        const { assert!(MAX_FRAME_LEN <= MAX_SEND) };
        &mut self.link.page()[TX_OFFSET..TX_OFFSET + MAX_FRAME_LEN]
    }

    fn transmit(&mut self, len: usize) {
        let request = LinkMessage {
            op: op::SEND,
            // At most MAX_FRAME_LEN.
            len: len as u32,
            ..LinkMessage::default()
        };
        if let Ok(r) = self.ask(request) {
            if r.status != ipc_proto::net::status::OK {
                self.send_errors += 1;
            }
        }
    }

    fn peek(&mut self) -> Option<&[u8]> {
        if self.held.is_none() && self.maybe_more {
            let request = LinkMessage {
                op: op::RECEIVE,
                ..LinkMessage::default()
            };
            match self.ask(request).ok().and_then(|r| r.received_len()) {
                Some(n) => self.held = Some(n),
                // Empty, or a failed call: wait for the next signal.
                None => self.maybe_more = false,
            }
        }
        let n = self.held?;
        let page: &Page = self.link.page();
        page.get(RX_OFFSET..RX_OFFSET + n)
    }

    fn consume(&mut self) {
        self.held = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipc_proto::net::status;
    use std::collections::VecDeque;

    /// A nic-driver in memory.
    struct Fake {
        page: Box<Page>,
        sent: Vec<Vec<u8>>,
        waiting: VecDeque<Vec<u8>>,
        calls: u32,
    }

    impl LinkChannel for Fake {
        fn page(&mut self) -> &mut Page {
            &mut self.page
        }
        fn call(&mut self) -> Result<(), LinkError> {
            self.calls += 1;
            let (req, _) = LinkMessage::read_from_prefix(&self.page[..]).unwrap();
            let mut reply = LinkMessage {
                op: req.op,
                ..LinkMessage::default()
            };
            match req.op {
                op::SEND => {
                    let n = req.send_len().unwrap();
                    self.sent.push(self.page[TX_OFFSET..TX_OFFSET + n].to_vec());
                }
                op::RECEIVE => match self.waiting.pop_front() {
                    Some(f) => {
                        self.page[RX_OFFSET..RX_OFFSET + f.len()].copy_from_slice(&f);
                        reply.len = f.len() as u32;
                    }
                    None => reply.status = status::EMPTY,
                },
                _ => reply.status = status::UNSUPPORTED,
            }
            reply.write_to_prefix(&mut self.page[..]).unwrap();
            Ok(())
        }
    }

    fn uplink() -> Uplink<Fake> {
        Uplink::new(Fake {
            page: Box::new([0; 4096]),
            sent: Vec::new(),
            waiting: VecDeque::new(),
            calls: 0,
        })
    }

    #[test]
    fn frames_go_out_from_the_page_and_a_received_one_survives_a_send() {
        let mut u = uplink();
        assert_eq!(u.peek(), None, "nothing waits");
        assert!(!u.rx_pending());
        let calls = u.link.calls;
        assert_eq!(u.peek(), None);
        assert_eq!(u.link.calls, calls, "no call until the server signals");
        u.link.waiting.push_back(vec![7; 60]);
        u.link.waiting.push_back(vec![8; 1514]);
        u.frames_arrived();
        assert_eq!(u.peek(), Some(&[7u8; 60][..]));
        // A send in between keeps the held frame.
        u.tx_buffer()[..20].copy_from_slice(&[9; 20]);
        u.transmit(20);
        assert_eq!(u.link.sent, [vec![9u8; 20]]);
        assert_eq!(u.peek(), Some(&[7u8; 60][..]), "still held");
        u.consume();
        assert_eq!(u.peek().map(<[u8]>::len), Some(1514));
        u.consume();
        assert_eq!(u.peek(), None);
        assert_eq!(u.send_errors + u.failed_calls, 0);
        assert_eq!(link_channel_from_config(0), None);
        assert_eq!(guest_mac(0), GUEST_MAC);
        assert_eq!(guest_mac(2)[..5], GUEST_MAC[..5]);
        assert_eq!(guest_mac(2)[5], 2);
        assert_eq!(link_channel_from_config(4), Some(3));
    }
}
