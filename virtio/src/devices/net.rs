//! virtio-net (VIRTIO 1.2, 5.1), type 1: one receive queue (receiveq1,
//! queue 0) and one transmit queue (transmitq1, queue 1), no control
//! queue; VIRTIO_NET_F_MAC is the only device feature offered, so no
//! offload is ever negotiated and every frame carries a plain 12-byte
//! `virtio_net_hdr` (5.1.6: with VIRTIO_F_VERSION_1 the header always has
//! `num_buffers`).
//!
//! Frames move between the guest's buffers and a [`NetBackend`]: a
//! transmitted frame is gathered from its chain into the backend's
//! transmit buffer ([`NetBackend::tx_buffer`]) and sent; a received frame
//! the backend holds ([`NetBackend::peek`]) is written into the next
//! receive chain behind its header, and only then released
//! ([`NetBackend::consume`]), so a frame waits in the backend, not here,
//! while the driver has no receive buffer.
//!
//! What the guest puts in a frame is data, not a virtqueue rule: a
//! transmit chain whose header asks for an offload that was not
//! negotiated, one with device-writable buffers, one too short for an
//! Ethernet header, or a frame longer than [`MAX_FRAME_LEN`] is dropped
//! and counted ([`NetStats`]), and the chain returned; so is a received
//! frame that does not fit the receive chain. A chain that breaks a
//! virtqueue rule (a loop, a buffer outside RAM, ...) is
//! DEVICE_NEEDS_RESET as for every device.

use crate::device::{read_config_bytes, DeviceError, VirtioDevice};
use crate::memory::GuestMemory;
use crate::queue::{DescriptorChain, Queue};

/// The receive queue, receiveq1.
pub const RECEIVEQ: u16 = 0;
/// The transmit queue, transmitq1.
pub const TRANSMITQ: u16 = 1;
/// Size of both queues.
pub const QUEUE_SIZE: u16 = 256;
/// Bytes of `virtio_net_hdr` with VIRTIO_F_VERSION_1 (5.1.6): flags,
/// gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers.
pub const HDR_LEN: usize = 12;
/// An Ethernet header: destination, source, type.
pub const ETH_HEADER_LEN: usize = 14;
/// The longest frame sent (destination to payload, no FCS): a 1500-byte
/// MTU, what the uplink's NE2000 sends at most. VIRTIO_NET_F_MTU is not
/// offered, so Linux lets a user raise its MTU: such frames are dropped.
pub const MAX_FRAME_LEN: usize = 1514;
/// The longest frame received: 1514 and a VLAN tag (the NE2000 accepts
/// 1518); it must fit the receive chain behind its header.
pub const MAX_RX_FRAME_LEN: usize = 1518;

/// Feature bits (5.1.3).
pub mod features {
    /// The device has a MAC address in its configuration.
    pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
}

/// `virtio_net_hdr.gso_type`: no segmentation offload (5.1.6).
pub const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;

/// Where frames go and come from: the uplink.
pub trait NetBackend {
    /// A buffer of at least [`MAX_FRAME_LEN`] bytes that the next frame to
    /// send is gathered into.
    fn tx_buffer(&mut self) -> &mut [u8];
    /// Sends the first `len` bytes of [`NetBackend::tx_buffer`] (at least
    /// [`ETH_HEADER_LEN`], at most [`MAX_FRAME_LEN`]).
    fn transmit(&mut self, len: usize);
    /// The next frame from the network, held until
    /// [`NetBackend::consume`]; `None` when there is none now.
    fn peek(&mut self) -> Option<&[u8]>;
    /// Releases the frame [`NetBackend::peek`] returned.
    fn consume(&mut self);
}

/// Why a frame was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// A transmit header or chain the device cannot send as asked.
    Malformed(&'static str),
    /// A frame longer than [`MAX_FRAME_LEN`].
    Oversized {
        /// Its length without the header.
        len: u64,
    },
}

impl core::fmt::Display for FrameError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Malformed(why) => write!(f, "malformed frame: {why}"),
            Self::Oversized { len } => {
                write!(f, "a frame of {len} bytes is longer than {MAX_FRAME_LEN}")
            }
        }
    }
}

/// Checks a transmit chain's shape and header: its device-readable bytes
/// (header and frame), its device-writable bytes (none allowed: 5.1.6.2),
/// and the header's first [`HDR_LEN`] bytes. Returns the frame's length.
pub fn check_tx(readable: u64, writable: u64, hdr: &[u8; HDR_LEN]) -> Result<usize, FrameError> {
    if writable != 0 {
        return Err(FrameError::Malformed(
            "device-writable buffer in a transmit chain",
        ));
    }
    let Some(len) = readable.checked_sub(HDR_LEN as u64) else {
        return Err(FrameError::Malformed("shorter than virtio_net_hdr"));
    };
    // No offload was negotiated: the driver must not ask for one (5.1.6.2).
    // (NEEDS_CSUM needs VIRTIO_NET_F_CSUM; the other bits are reserved.)
    if hdr[0] != 0 {
        return Err(FrameError::Malformed(
            "header flags set without an offload negotiated",
        ));
    }
    if hdr[1] != VIRTIO_NET_HDR_GSO_NONE {
        return Err(FrameError::Malformed(
            "gso_type set without an offload negotiated",
        ));
    }
    if len < ETH_HEADER_LEN as u64 {
        return Err(FrameError::Malformed("shorter than an Ethernet header"));
    }
    if len > MAX_FRAME_LEN as u64 {
        return Err(FrameError::Oversized { len });
    }
    // At most MAX_FRAME_LEN: fits.
    Ok(len as usize)
}

/// The header of a received frame: no flags, no GSO, one buffer
/// (`num_buffers` = 1: VIRTIO_NET_F_MRG_RXBUF is not offered).
pub const RX_HDR: [u8; HDR_LEN] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0];

/// What went through the device, and what was dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames sent for the guest.
    pub tx_frames: u64,
    /// Their bytes (without headers).
    pub tx_bytes: u64,
    /// Transmit chains dropped as malformed.
    pub tx_malformed: u64,
    /// Frames dropped for their length.
    pub tx_oversized: u64,
    /// Frames written into the guest's receive buffers.
    pub rx_frames: u64,
    /// Their bytes (without headers).
    pub rx_bytes: u64,
    /// Frames from the network dropped: outside 14..=1518 bytes, or
    /// larger than the receive chain the guest offered.
    pub rx_dropped: u64,
}

/// A virtio network device with the station address `mac`, over `B`.
#[derive(Debug)]
pub struct Net<B: NetBackend> {
    mac: [u8; 6],
    backend: B,
    stats: NetStats,
}

impl<B: NetBackend> Net<B> {
    /// A device with station address `mac` over `backend`.
    pub fn new(mac: [u8; 6], backend: B) -> Self {
        Self {
            mac,
            backend,
            stats: NetStats::default(),
        }
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend, mutably.
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// The counters.
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// The station address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    fn config(&self) -> [u8; 8] {
        let mut c = [0u8; 8];
        c[..6].copy_from_slice(&self.mac);
        // `status` (only with VIRTIO_NET_F_STATUS, not offered): link up.
        c[6] = 1;
        c
    }

    /// Sends one transmit chain, or drops and counts it.
    fn send_chain<M: GuestMemory + ?Sized>(
        &mut self,
        chain: &DescriptorChain,
        mem: &mut M,
    ) -> Result<(), DeviceError> {
        let mut hdr = [0u8; HDR_LEN];
        // A short chain reads fewer bytes: check_tx refuses it by length.
        chain.read_at(mem, 0, &mut hdr)?;
        let len = match check_tx(chain.readable_len(), chain.writable_len(), &hdr) {
            Ok(len) => len,
            Err(FrameError::Oversized { .. }) => {
                self.stats.tx_oversized += 1;
                return Ok(());
            }
            Err(FrameError::Malformed(_)) => {
                self.stats.tx_malformed += 1;
                return Ok(());
            }
        };
        let buf = self.backend.tx_buffer();
        let Some(buf) = buf.get_mut(..len) else {
            self.stats.tx_oversized += 1;
            return Ok(());
        };
        // The chain is walked again: a driver that shortened it meanwhile
        // gets a malformed frame, not someone else's bytes.
        if chain.read_at(mem, HDR_LEN as u64, buf)? != len {
            self.stats.tx_malformed += 1;
            return Ok(());
        }
        self.backend.transmit(len);
        self.stats.tx_frames += 1;
        self.stats.tx_bytes += len as u64;
        Ok(())
    }

    fn transmit<M: GuestMemory + ?Sized>(
        &mut self,
        q: &mut Queue,
        mem: &mut M,
    ) -> Result<(), DeviceError> {
        while let Some(chain) = q.pop(mem)? {
            self.send_chain(&chain, mem)?;
            q.add_used(mem, chain.head(), 0)?;
        }
        Ok(())
    }

    /// Moves held frames into receive chains while both last.
    fn receive<M: GuestMemory + ?Sized>(
        &mut self,
        q: &mut Queue,
        mem: &mut M,
    ) -> Result<(), DeviceError> {
        if !q.ready() {
            return Ok(());
        }
        loop {
            let Some(frame) = self.backend.peek() else {
                return Ok(());
            };
            if !(ETH_HEADER_LEN..=MAX_RX_FRAME_LEN).contains(&frame.len()) {
                self.stats.rx_dropped += 1;
                self.backend.consume();
                continue;
            }
            let Some(chain) = q.pop(mem)? else {
                // The frame waits in the backend for a buffer.
                return Ok(());
            };
            let len = HDR_LEN + frame.len();
            let used = if chain.writable_len() < len as u64 {
                // 5.1.6.3.1 asks for buffers of at least 1526 bytes; this
                // one is smaller: the frame is dropped, the buffer returned
                // empty (Linux counts a short packet).
                self.stats.rx_dropped += 1;
                0
            } else {
                chain.write_at(mem, 0, &RX_HDR)?;
                chain.write_at(mem, HDR_LEN as u64, frame)?;
                self.stats.rx_frames += 1;
                self.stats.rx_bytes += frame.len() as u64;
                // At most HDR_LEN + MAX_RX_FRAME_LEN: fits.
                len as u32
            };
            self.backend.consume();
            q.add_used(mem, chain.head(), used)?;
        }
    }
}

impl<B: NetBackend> VirtioDevice for Net<B> {
    fn device_type(&self) -> u16 {
        crate::device::device_type::NET
    }

    fn pci_class(&self) -> u32 {
        0x02_0000 // network controller, Ethernet
    }

    fn features(&self) -> u64 {
        features::VIRTIO_NET_F_MAC
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn config_len(&self) -> u64 {
        8
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config(), offset, data);
    }

    fn process_queue<M: GuestMemory + ?Sized>(
        &mut self,
        index: u16,
        queues: &mut [Queue],
        mem: &mut M,
    ) -> Result<(), DeviceError> {
        if index == TRANSMITQ {
            if let Some(q) = queues.get_mut(usize::from(TRANSMITQ)) {
                self.transmit(q, mem)?;
            }
        }
        // New receive buffers, or frames that came while sending.
        self.poll(queues, mem)
    }

    fn poll<M: GuestMemory + ?Sized>(
        &mut self,
        queues: &mut [Queue],
        mem: &mut M,
    ) -> Result<(), DeviceError> {
        match queues.get_mut(usize::from(RECEIVEQ)) {
            Some(q) => self.receive(q, mem),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(flags: u8, gso: u8) -> [u8; HDR_LEN] {
        let mut h = [0u8; HDR_LEN];
        h[0] = flags;
        h[1] = gso;
        h
    }

    #[test]
    fn transmit_checks_say_what_is_wrong() {
        let ok = hdr(0, 0);
        assert_eq!(check_tx(12 + 60, 0, &ok), Ok(60));
        assert_eq!(check_tx(12 + 14, 0, &ok), Ok(14));
        assert_eq!(check_tx(12 + 1514, 0, &ok), Ok(1514));
        assert_eq!(
            check_tx(12 + 1515, 0, &ok),
            Err(FrameError::Oversized { len: 1515 })
        );
        assert_eq!(
            check_tx(u64::MAX, 0, &ok),
            Err(FrameError::Oversized { len: u64::MAX - 12 })
        );
        assert!(matches!(
            check_tx(11, 0, &ok),
            Err(FrameError::Malformed(_))
        ));
        assert!(matches!(
            check_tx(12 + 13, 0, &ok),
            Err(FrameError::Malformed(_))
        ));
        assert!(matches!(
            check_tx(12 + 60, 1, &ok),
            Err(FrameError::Malformed(_))
        ));
        for flags in [1u8, 2, 4, 0x80] {
            assert!(matches!(
                check_tx(12 + 60, 0, &hdr(flags, 0)),
                Err(FrameError::Malformed(_))
            ));
        }
        for gso in [1u8, 3, 4, 5, 0x80] {
            assert!(matches!(
                check_tx(12 + 60, 0, &hdr(0, gso)),
                Err(FrameError::Malformed(_))
            ));
        }
        // The rest of the header is ignored without offloads.
        let mut h = ok;
        h[2..].fill(0xff);
        assert_eq!(check_tx(12 + 60, 0, &h), Ok(60));
    }

    #[test]
    fn the_configuration_is_the_mac_and_a_link_that_is_up() {
        struct None_;
        impl NetBackend for None_ {
            fn tx_buffer(&mut self) -> &mut [u8] {
                &mut []
            }
            fn transmit(&mut self, _len: usize) {}
            fn peek(&mut self) -> Option<&[u8]> {
                None
            }
            fn consume(&mut self) {}
        }
        let n = Net::new([2, 0x53, 0x56, 0, 0, 1], None_);
        let mut c = [0xaau8; 10];
        n.read_config(0, &mut c);
        assert_eq!(c, [2, 0x53, 0x56, 0, 0, 1, 1, 0, 0, 0]);
        assert_eq!(n.device_type(), 1);
        assert_eq!(n.features(), features::VIRTIO_NET_F_MAC);
        assert_eq!(n.queue_max_sizes().len(), 2);
    }
}
