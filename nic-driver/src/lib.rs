//! The nic-driver server's logic, host-testable: the card's start line,
//! the link channel's requests ([`link`]: frames sent and received for a
//! client, the virtio-net server), and a DHCPDISCOVER built and a
//! DHCPOFFER parsed by hand (RFC 2131 /
//! RFC 2132 over UDP over IPv4 over Ethernet), every length checked: a
//! frame from the network is input from outside, and a short or odd one
//! is ignored, never a panic.
#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use core::fmt;

/// The card's I/O base: QEMU's `ne2k_isa` default (`iobase=0x300`), also
/// Bochs's usual `ne2k: ioaddr=0x300`.
pub const BASE: u16 = 0x300;
/// The card's IRQ line. Not QEMU's `ne2k_isa` default, 9: on QEMU's `pc`
/// machine IRQ 9 is also the host's ACPI SCI, and Bochs's BIOS routes
/// PCI interrupts to it (Bochs then refuses the card: "IRQ 9 conflict,
/// NE2000 ethernet NIC with PIIX3 IRQ routing"). IRQ 5, one an NE2000
/// can be jumpered to, is free on both (no sound card, no LPT2), and
/// neither the stub (0, 2) nor the disk-driver (14) uses it.
pub const IRQ: u8 = 5;

/// A station address written the usual way, `52:54:00:12:34:56`.
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// An IPv4 address written as dotted quad.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4(pub [u8; 4]);

impl fmt::Display for Ipv4 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let a = self.0;
        write!(f, "{}.{}.{}.{}", a[0], a[1], a[2], a[3])
    }
}

const ETH_HDR: usize = 14;
const IP_HDR: usize = 20;
const UDP_HDR: usize = 8;
/// BOOTP's fixed part: op .. file (RFC 2131, figure 1).
const BOOTP_FIXED: usize = 236;
const MAGIC: [u8; 4] = [99, 130, 83, 99];
const CLIENT_PORT: u16 = 68;
const SERVER_PORT: u16 = 67;
/// BOOTP messages are at least 300 bytes (RFC 1542, 2.1).
const BOOTP_MIN: usize = 300;
/// A DHCPDISCOVER's frame length.
pub const DISCOVER_LEN: usize = ETH_HDR + IP_HDR + UDP_HDR + BOOTP_MIN;

/// DHCP message types (RFC 2132, 9.6).
const DHCPDISCOVER: u8 = 1;
const DHCPOFFER: u8 = 2;
const OPT_MSG_TYPE: u8 = 53;
const OPT_SERVER_ID: u8 = 54;
const OPT_PARAMS: u8 = 55;
const OPT_END: u8 = 255;
const OPT_PAD: u8 = 0;

/// The Internet checksum (RFC 1071) of `bytes`.
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for pair in bytes.chunks(2) {
        let hi = pair[0];
        let lo = pair.get(1).copied().unwrap_or(0);
        sum += u32::from(u16::from_be_bytes([hi, lo]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A DHCPDISCOVER from `mac` with transaction id `xid`, broadcast from
/// 0.0.0.0:68 to 255.255.255.255:67, asking for subnet mask, router and
/// DNS server.
pub fn dhcp_discover(mac: [u8; 6], xid: u32) -> [u8; DISCOVER_LEN] {
    let mut f = [0u8; DISCOVER_LEN];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[ETH_HDR..ETH_HDR + IP_HDR];
    ip[0] = 0x45;
    let total = (IP_HDR + UDP_HDR + BOOTP_MIN) as u16;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[8] = 64; // TTL
    ip[9] = 17; // UDP
    ip[16..20].copy_from_slice(&[255; 4]);
    let sum = checksum(ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let udp = &mut f[ETH_HDR + IP_HDR..ETH_HDR + IP_HDR + UDP_HDR];
    udp[0..2].copy_from_slice(&CLIENT_PORT.to_be_bytes());
    udp[2..4].copy_from_slice(&SERVER_PORT.to_be_bytes());
    udp[4..6].copy_from_slice(&((UDP_HDR + BOOTP_MIN) as u16).to_be_bytes());
    // Checksum 0: none (allowed for UDP over IPv4).
    let b = &mut f[ETH_HDR + IP_HDR + UDP_HDR..];
    b[0] = 1; // BOOTREQUEST
    b[1] = 1; // Ethernet
    b[2] = 6; // address length
    b[4..8].copy_from_slice(&xid.to_be_bytes());
    b[10] = 0x80; // broadcast flag: the client has no address yet
    b[28..34].copy_from_slice(&mac);
    b[BOOTP_FIXED..BOOTP_FIXED + 4].copy_from_slice(&MAGIC);
    let opts = [
        OPT_MSG_TYPE,
        1,
        DHCPDISCOVER,
        OPT_PARAMS,
        3,
        1,
        3,
        6,
        OPT_END,
    ];
    b[BOOTP_FIXED + 4..BOOTP_FIXED + 4 + opts.len()].copy_from_slice(&opts);
    f
}

/// What a DHCPOFFER offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offer {
    /// The address offered to the client (`yiaddr`).
    pub address: Ipv4,
    /// The server that offers it (option 54, else the IP source).
    pub server: Ipv4,
}

impl fmt::Display for Offer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "dhcp offer {} from {}", self.address, self.server)
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn quad(b: &[u8], at: usize) -> Option<Ipv4> {
    Some(Ipv4(b.get(at..at + 4)?.try_into().ok()?))
}

/// The offer in `frame` if it is a DHCPOFFER for `mac`'s transaction
/// `xid`; `None` for any other frame, a malformed one included.
pub fn parse_offer(frame: &[u8], mac: [u8; 6], xid: u32) -> Option<Offer> {
    if be16(frame, 12)? != 0x0800 {
        return None;
    }
    let ip = frame.get(ETH_HDR..)?;
    let ihl = usize::from(*ip.first()? & 0x0f) * 4;
    if *ip.first()? >> 4 != 4 || ihl < IP_HDR || *ip.get(9)? != 17 {
        return None;
    }
    let ip_len = usize::from(be16(ip, 2)?);
    let ip = ip.get(..ip_len)?;
    let udp = ip.get(ihl..)?;
    if be16(udp, 0)? != SERVER_PORT || be16(udp, 2)? != CLIENT_PORT {
        return None;
    }
    let udp_len = usize::from(be16(udp, 4)?);
    let bootp = udp.get(UDP_HDR..udp_len)?;
    if *bootp.first()? != 2
        || bootp.get(4..8)? != xid.to_be_bytes()
        || bootp.get(28..34)? != mac
        || bootp.get(BOOTP_FIXED..BOOTP_FIXED + 4)? != MAGIC
    {
        return None;
    }
    let address = quad(bootp, 16)?;
    let mut server = quad(ip, 12)?;
    let mut msg_type = None;
    let mut opts = bootp.get(BOOTP_FIXED + 4..)?;
    // Each option takes at least a byte: the loop ends.
    while let Some((&code, rest)) = opts.split_first() {
        match code {
            OPT_PAD => {
                opts = rest;
                continue;
            }
            OPT_END => break,
            _ => {}
        }
        let (&len, rest) = rest.split_first()?;
        let value = rest.get(..usize::from(len))?;
        match (code, value) {
            (OPT_MSG_TYPE, [t]) => msg_type = Some(*t),
            (OPT_SERVER_ID, v) if v.len() == 4 => server = quad(v, 0)?,
            _ => {}
        }
        opts = &rest[usize::from(len)..];
    }
    (msg_type == Some(DHCPOFFER)).then_some(Offer { address, server })
}

pub mod link;

#[cfg(test)]
mod tests;
