//! The link channel's server side (`ipc_proto::net`): SEND puts the
//! client's frame on the wire, RECEIVE takes the next frame off the
//! card's receive ring into the channel page, INFO names the card. With a
//! client the card stores every frame (promiscuous: the guest has a
//! station address of its own) and frames wait in the card's ring until
//! the client asks for them; without one the driver drains and drops
//! them as before.

use ipc_proto::net::{op, status, LinkMessage, RX_OFFSET, TX_OFFSET};
use ne2k::{regs::isr, Error, Ne2k, PortIo, MAX_FRAME, RX_START, RX_STOP};

/// A channel page's bytes.
pub type Page = [u8; ipc_proto::PAGE_SIZE as usize];

/// The link's state between requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Link {
    /// The client's channel, once it asked something.
    pub client: Option<u64>,
    /// Frames the card sent for the client.
    pub tx_frames: u64,
    /// Frames handed to the client.
    pub rx_frames: u64,
    /// Received frames dropped: bad status or length, ring resets, and
    /// frames drained while there was no client.
    pub rx_dropped: u64,
    /// SENDs refused (length) or failed (the card).
    pub tx_errors: u64,
}

/// What the card's interrupt asks of the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interrupt {
    /// Nothing for the client.
    Nothing,
    /// Frames wait: `Signal` the client with `ipc_proto::net::RX_BIT`.
    SignalClient(u64),
}

impl Link {
    /// Handles the card's pending events at its IRQ: an overflowed ring is
    /// reset (its frames dropped), the events acknowledged (so that the
    /// line drops before the IRQ is unmasked); then, with a client, frames
    /// wait for its RECEIVE; without one they are drained and dropped
    /// (at most one per ring page: the loop is bounded).
    pub fn interrupt<P: PortIo>(&mut self, nic: &mut Ne2k<P>) -> Interrupt {
        let pending = nic.interrupts();
        if pending & isr::OVW != 0 {
            nic.reset_ring();
            self.rx_dropped += 1;
        }
        nic.ack(pending & !isr::RDC);
        if let Some(ch) = self.client {
            return if pending & (isr::PRX | isr::RXE) != 0 {
                Interrupt::SignalClient(ch)
            } else {
                Interrupt::Nothing
            };
        }
        let mut buf = [0u8; MAX_FRAME];
        for _ in RX_START..RX_STOP {
            match nic.receive(&mut buf) {
                Ok(Some(_)) | Err(Error::BadFrame { .. }) => self.rx_dropped += 1,
                Ok(None) => break,
                Err(_) => {
                    self.rx_dropped += 1;
                    break;
                }
            }
        }
        Interrupt::Nothing
    }

    /// Answers the request on `page` from channel `ch`, in place.
    pub fn serve<P: PortIo>(&mut self, nic: Option<&mut Ne2k<P>>, ch: u64, page: &mut Page) {
        let (head, _) = page.split_at(core::mem::size_of::<LinkMessage>());
        let request = zerocopy::FromBytes::read_from_bytes(head).unwrap_or_default();
        let reply = self.answer(nic, ch, &request, page);
        // A message fits the page.
        let _ = zerocopy::IntoBytes::write_to_prefix(&reply, &mut page[..]);
    }

    fn answer<P: PortIo>(
        &mut self,
        nic: Option<&mut Ne2k<P>>,
        ch: u64,
        request: &LinkMessage,
        page: &mut Page,
    ) -> LinkMessage {
        let mut reply = LinkMessage {
            op: request.op,
            ..LinkMessage::default()
        };
        reply.status = match nic {
            None => status::NO_CARD,
            Some(nic) => {
                // Any request makes its sender the client: a restarted
                // nic-driver learns it again from the next SEND.
                if self.client.is_none() {
                    nic.set_promiscuous(true);
                }
                self.client = Some(ch);
                match request.op {
                    op::INFO => {
                        reply.mac[..6].copy_from_slice(&nic.mac());
                        status::OK
                    }
                    op::SEND => self.send(nic, request, page),
                    op::RECEIVE => self.receive(nic, page, &mut reply),
                    _ => status::UNSUPPORTED,
                }
            }
        };
        reply.tx_frames = self.tx_frames;
        reply.rx_frames = self.rx_frames;
        reply.rx_dropped = self.rx_dropped;
        reply.tx_errors = self.tx_errors;
        reply
    }

    fn send<P: PortIo>(&mut self, nic: &mut Ne2k<P>, request: &LinkMessage, page: &Page) -> u32 {
        let Some(len) = request.send_len() else {
            self.tx_errors += 1;
            return status::BAD_LENGTH;
        };
        match nic.transmit(&page[TX_OFFSET..TX_OFFSET + len]) {
            Ok(()) => {
                self.tx_frames += 1;
                status::OK
            }
            Err(_) => {
                self.tx_errors += 1;
                status::IO_ERROR
            }
        }
    }

    fn receive<P: PortIo>(
        &mut self,
        nic: &mut Ne2k<P>,
        page: &mut Page,
        reply: &mut LinkMessage,
    ) -> u32 {
        let Ok(buf) = <&mut [u8; MAX_FRAME]>::try_from(&mut page[RX_OFFSET..RX_OFFSET + MAX_FRAME])
        else {
            return status::IO_ERROR;
        };
        // Bad frames are skipped: each takes a page, so this ends.
        for _ in RX_START..RX_STOP {
            match nic.receive(buf) {
                Ok(Some(n)) => {
                    self.rx_frames += 1;
                    // At most MAX_FRAME.
                    reply.len = n as u32;
                    return status::OK;
                }
                Ok(None) => return status::EMPTY,
                Err(Error::BadFrame { .. }) => self.rx_dropped += 1,
                Err(Error::RingReset { .. }) => {
                    self.rx_dropped += 1;
                    return status::EMPTY;
                }
                Err(_) => return status::IO_ERROR,
            }
        }
        status::EMPTY
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;
    use ne2k::model::{Card, BASE};

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    const GUEST: [u8; 6] = [0x02, 0x53, 0x56, 0, 0, 1];

    fn frame(dst: [u8; 6], len: usize) -> Vec<u8> {
        let mut f: Vec<u8> = (0..len).map(|i| i as u8).collect();
        f[..6].copy_from_slice(&dst);
        f[6..12].copy_from_slice(&[0x52, 0x55, 10, 0, 2, 2]);
        f
    }

    fn ask(
        link: &mut Link,
        nic: &mut Ne2k<Card>,
        req: LinkMessage,
        page: &mut Page,
    ) -> LinkMessage {
        zerocopy::IntoBytes::write_to_prefix(&req, &mut page[..]).unwrap();
        link.serve(Some(nic), 3, page);
        zerocopy::FromBytes::read_from_prefix(&page[..]).unwrap().0
    }

    fn op_only(op: u32) -> LinkMessage {
        LinkMessage {
            op,
            ..LinkMessage::default()
        }
    }

    #[test]
    fn a_client_sends_and_receives_frames_through_the_card() {
        let mut nic = Ne2k::new(Card::new(MAC), BASE);
        nic.reset().unwrap();
        let mut link = Link::default();
        let mut page: Page = [0; 4096];
        // Before a client, a frame to the guest's address is not even stored.
        assert!(nic.io_mut().deliver(&frame(GUEST, 100)));
        assert_eq!(link.interrupt(&mut nic), Interrupt::Nothing);
        let info = ask(&mut link, &mut nic, op_only(op::INFO), &mut page);
        assert_eq!((info.status, &info.mac[..6]), (status::OK, &MAC[..]));
        assert_eq!(link.client, Some(3));
        let r = ask(&mut link, &mut nic, op_only(op::RECEIVE), &mut page);
        assert_eq!(r.status, status::EMPTY, "the card was not promiscuous then");

        // Send: the frame at TX_OFFSET goes out unchanged.
        let out = frame([0xff; 6], 342);
        page[TX_OFFSET..TX_OFFSET + 342].copy_from_slice(&out);
        let send = LinkMessage {
            op: op::SEND,
            len: 342,
            ..LinkMessage::default()
        };
        let r = ask(&mut link, &mut nic, send, &mut page);
        assert_eq!((r.status, r.tx_frames), (status::OK, 1));
        assert_eq!(nic.io().sent.last().unwrap(), &out);
        for len in [0, 13, 1515, u32::MAX] {
            let r = ask(&mut link, &mut nic, LinkMessage { len, ..send }, &mut page);
            assert_eq!(r.status, status::BAD_LENGTH);
        }
        assert_eq!(link.tx_errors, 4);

        // Frames to the guest now wait in the ring; the IRQ says so.
        let a = frame(GUEST, 60);
        let b = frame(GUEST, 1514);
        assert!(nic.io_mut().deliver(&a) && nic.io_mut().deliver(&b));
        assert_eq!(link.interrupt(&mut nic), Interrupt::SignalClient(3));
        assert!(!nic.io().irq(), "acknowledged");
        for f in [&a, &b] {
            let r = ask(&mut link, &mut nic, op_only(op::RECEIVE), &mut page);
            assert_eq!(r.received_len(), Some(f.len()));
            assert_eq!(&page[RX_OFFSET..RX_OFFSET + f.len()], &f[..]);
        }
        let r = ask(&mut link, &mut nic, op_only(op::RECEIVE), &mut page);
        assert_eq!((r.status, r.rx_frames), (status::EMPTY, 2));
        assert_eq!(
            ask(&mut link, &mut nic, op_only(99), &mut page).status,
            status::UNSUPPORTED
        );
    }

    #[test]
    fn any_request_makes_the_client_known_as_after_a_restart() {
        let mut nic = Ne2k::new(Card::new(MAC), BASE);
        nic.reset().unwrap();
        let mut link = Link::default();
        let mut page: Page = [0; 4096];
        page[TX_OFFSET..TX_OFFSET + 60].copy_from_slice(&frame([0xff; 6], 60));
        let send = LinkMessage {
            op: op::SEND,
            len: 60,
            ..LinkMessage::default()
        };
        assert_eq!(ask(&mut link, &mut nic, send, &mut page).status, status::OK);
        assert_eq!(link.client, Some(3));
        assert!(nic.io_mut().deliver(&frame(GUEST, 80)));
        assert_eq!(link.interrupt(&mut nic), Interrupt::SignalClient(3));
        let r = ask(&mut link, &mut nic, op_only(op::RECEIVE), &mut page);
        assert_eq!(r.received_len(), Some(80), "promiscuous without an INFO");
    }

    #[test]
    fn without_a_client_frames_are_drained_and_counted() {
        let mut nic = Ne2k::new(Card::new(MAC), BASE);
        nic.reset().unwrap();
        let mut link = Link::default();
        for _ in 0..3 {
            assert!(nic.io_mut().deliver(&frame([0xff; 6], 300)));
        }
        assert_eq!(link.interrupt(&mut nic), Interrupt::Nothing);
        assert_eq!(link.rx_dropped, 3);
        let mut page: Page = [0; 4096];
        link.serve::<Card>(None, 1, &mut page);
        let r: LinkMessage = zerocopy::FromBytes::read_from_prefix(&page[..]).unwrap().0;
        assert_eq!(r.status, status::NO_CARD);
    }
}
