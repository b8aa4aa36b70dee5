extern crate std;

use std::string::ToString;
use std::vec::Vec;

use proptest::prelude::*;

use super::*;

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const XID: u32 = 0x5356_0001;

/// What QEMU's user-mode network (libslirp's bootp.c) answers: an offer
/// of 10.0.2.15 from 10.0.2.2, to the broadcast address.
fn slirp_offer(xid: u32, msg_type: u8) -> Vec<u8> {
    let mut bootp = std::vec![0u8; BOOTP_FIXED];
    bootp[0] = 2;
    bootp[1] = 1;
    bootp[2] = 6;
    bootp[4..8].copy_from_slice(&xid.to_be_bytes());
    bootp[16..20].copy_from_slice(&[10, 0, 2, 15]);
    bootp[20..24].copy_from_slice(&[10, 0, 2, 2]);
    bootp[28..34].copy_from_slice(&MAC);
    bootp.extend_from_slice(&MAGIC);
    bootp.extend_from_slice(&[
        53, 1, msg_type, 0, 54, 4, 10, 0, 2, 2, 1, 4, 255, 255, 255, 0,
    ]);
    bootp.extend_from_slice(&[51, 4, 0, 1, 0x51, 0x80, 255]);
    bootp.resize(BOOTP_MIN, 0);
    let mut udp = Vec::new();
    udp.extend_from_slice(&67u16.to_be_bytes());
    udp.extend_from_slice(&68u16.to_be_bytes());
    udp.extend_from_slice(&((UDP_HDR + bootp.len()) as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(&bootp);
    let mut ip = std::vec![0x45, 0x10];
    ip.extend_from_slice(&((IP_HDR + udp.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 2, 2, 255, 255, 255, 255]);
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    ip.extend_from_slice(&udp);
    let mut f = std::vec![0xff; 6];
    f.extend_from_slice(&[0x52, 0x55, 10, 0, 2, 2, 0x08, 0x00]);
    f.extend_from_slice(&ip);
    f
}

#[test]
fn the_discover_is_a_well_formed_broadcast() {
    let f = dhcp_discover(MAC, XID);
    assert_eq!(f[..6], [0xff; 6]);
    assert_eq!(f[6..12], MAC);
    // The IPv4 header sums to zero with its checksum.
    assert_eq!(checksum(&f[14..34]), 0);
    assert_eq!(be16(&f, 14 + 2), Some((f.len() - 14) as u16));
    assert_eq!(be16(&f, 34 + 4), Some((f.len() - 34) as u16));
    let b = &f[42..];
    assert_eq!(b[..3], [1, 1, 6]);
    assert_eq!(b[4..8], XID.to_be_bytes());
    assert_eq!(b[236..240], MAGIC);
    assert_eq!(b[240..243], [53, 1, 1]);
    assert_eq!(b.len(), 300);
}

#[test]
fn an_offer_is_read_and_printed_as_the_server_line_says() {
    let o = parse_offer(&slirp_offer(XID, 2), MAC, XID).unwrap();
    assert_eq!(o.to_string(), "dhcp offer 10.0.2.15 from 10.0.2.2");
    assert_eq!(Mac(MAC).to_string(), "52:54:00:12:34:56");
}

#[test]
fn other_messages_and_transactions_are_not_offers() {
    assert_eq!(parse_offer(&slirp_offer(XID, 5), MAC, XID), None);
    assert_eq!(parse_offer(&slirp_offer(XID + 1, 2), MAC, XID), None);
    let mut other = MAC;
    other[5] = 0;
    assert_eq!(parse_offer(&slirp_offer(XID, 2), other, XID), None);
    assert_eq!(parse_offer(&dhcp_discover(MAC, XID), MAC, XID), None);
}

#[test]
fn the_discover_goes_out_through_the_card_model() {
    use ne2k::model::{Card, BASE as MODEL_BASE};
    let mut nic = ne2k::Ne2k::new(Card::new(MAC), MODEL_BASE);
    let mac = nic.reset().unwrap();
    nic.transmit(&dhcp_discover(mac, XID)).unwrap();
    assert_eq!(nic.io().sent[0][..], dhcp_discover(MAC, XID)[..]);
    assert!(nic.io_mut().deliver(&slirp_offer(XID, 2)));
    let mut buf = [0u8; ne2k::MAX_FRAME];
    let n = nic.receive(&mut buf).unwrap().unwrap();
    let o = parse_offer(&buf[..n], mac, XID).unwrap();
    assert_eq!(o.address, Ipv4([10, 0, 2, 15]));
}

proptest! {
    /// Any prefix of an offer, and any bytes changed in it, parse without
    /// a panic.
    #[test]
    fn damaged_offers_never_panic(cut in 0usize..400, flips in proptest::collection::vec((0usize..400, any::<u8>()), 0..8)) {
        let mut f = slirp_offer(XID, 2);
        for (at, v) in flips {
            if let Some(b) = f.get_mut(at) {
                *b = v;
            }
        }
        f.truncate(cut);
        let _ = parse_offer(&f, MAC, XID);
    }

    #[test]
    fn random_frames_never_panic(f in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = parse_offer(&f, MAC, XID);
    }
}
