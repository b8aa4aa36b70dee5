//! The switch server's logic, host-testable and platform-free: a learning
//! Ethernet switch whose ports are link channels (`ipc_proto::net`).
//! Port 0 is the uplink (the nic-driver), ports 1.. the VMs' virtio-net
//! servers.
//!
//! [`Switch::forward`] checks a frame (14..=1514 bytes, a unicast source
//! address: otherwise dropped and counted at its port), learns its source
//! address on its port, and hands it to a delivery function for the
//! learned port of a unicast destination, or for every other port when the
//! destination is broadcast, multicast or not learned yet. A frame is never
//! delivered back to the port it came from. Every port counts frames and
//! bytes in and out and its drops by reason ([`PortStats`]).
//!
//! Frames for a VM port wait in its [`FrameQueue`] until its server asks
//! for them (the switch serves that channel; it cannot push). The budget
//! that keeps a flooding port from taking the others' capacity: one source
//! port may hold at most [`SHARE`] of a queue's [`QUEUE_FRAMES`] slots, so
//! the rest stays free for the other ports' frames.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use core::fmt;

use ipc_proto::net::{MAX_SEND, MIN_FRAME};

/// The most ports a switch has: the uplink and three VMs (each VM port
/// has a queue of about 24 KiB in the server).
pub const MAX_PORTS: usize = 4;
/// The uplink's port number.
pub const UPLINK: usize = 0;
/// Frames a VM port's queue holds.
pub const QUEUE_FRAMES: usize = 16;
/// Frames one source port may hold in one queue: half, so that a port
/// that floods leaves the other half to the others.
pub const SHARE: usize = QUEUE_FRAMES / 2;
/// Station addresses the switch remembers (the oldest is forgotten).
pub const TABLE_ENTRIES: usize = 64;

/// The magic of the switch server's configuration block; the byte after
/// it is the uplink channel's number + 1 (0: none configured).
pub const CONFIG_MAGIC: [u8; 12] = *b"SVSWITCHCONF";

/// The uplink channel's number from the configuration byte, if one was set.
pub fn uplink_from_config(byte: u8) -> Option<u64> {
    byte.checked_sub(1).map(u64::from)
}

/// Why a frame was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drop {
    /// Shorter than an Ethernet header (14 bytes).
    Runt,
    /// Longer than 1514 bytes.
    Giant,
    /// Its source address is a group (multicast) address.
    SourceMulticast,
    /// Its destination was learned on the port it came from.
    Filtered,
    /// The destination port could not take it: its queue full, or this
    /// source's [`SHARE`] of it used, or the uplink's send failed.
    Full,
}

/// One port's counters. "In" is what the port sent into the switch,
/// "out" what the switch delivered to it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Frames that came in (dropped ones too).
    pub in_frames: u64,
    /// Their bytes.
    pub in_bytes: u64,
    /// Frames delivered out of this port.
    pub out_frames: u64,
    /// Their bytes.
    pub out_bytes: u64,
    /// Frames in shorter than 14 bytes.
    pub runt: u64,
    /// Frames in longer than 1514 bytes.
    pub giant: u64,
    /// Frames in with a multicast source address.
    pub src_multicast: u64,
    /// Frames in for a station on this same port.
    pub filtered: u64,
    /// Frames for this port it could not take (queue full, share used,
    /// the uplink's send failed).
    pub full: u64,
}

impl PortStats {
    /// Frames that came in and were dropped there, not forwarded.
    pub fn in_dropped(&self) -> u64 {
        self.runt + self.giant + self.src_multicast + self.filtered
    }
}

impl fmt::Display for PortStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "in={}/{}B out={}/{}B runt={} giant={} srcmc={} filtered={} full={}",
            self.in_frames,
            self.in_bytes,
            self.out_frames,
            self.out_bytes,
            self.runt,
            self.giant,
            self.src_multicast,
            self.filtered,
            self.full
        )
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Entry {
    mac: [u8; 6],
    port: u8,
    /// When it was last seen ([`Switch`]'s clock); 0: free.
    seen: u64,
}

/// A learning switch of `ports` ports (at most [`MAX_PORTS`]).
#[derive(Clone, Debug)]
pub struct Switch {
    ports: usize,
    /// Port 0 has a card behind it (`--net user`); without one (VMs
    /// joined to each other only) nothing is flooded to it.
    uplink: bool,
    table: [Entry; TABLE_ENTRIES],
    clock: u64,
    /// Each port's counters.
    pub stats: [PortStats; MAX_PORTS],
}

/// A frame's source and destination addresses, if it has a header.
fn addresses(frame: &[u8]) -> Option<([u8; 6], [u8; 6])> {
    let dst = frame.get(0..6)?.try_into().ok()?;
    let src = frame.get(6..12)?.try_into().ok()?;
    Some((dst, src))
}

/// Whether `mac` is a group address (the I/G bit, bit 0 of its first byte:
/// broadcast is one too).
fn is_group(mac: &[u8; 6]) -> bool {
    mac[0] & 1 != 0
}

impl Switch {
    /// A switch of `ports` ports (clamped to 1..=[`MAX_PORTS`]), nothing
    /// learned.
    pub fn new(ports: usize) -> Self {
        Self {
            ports: ports.clamp(1, MAX_PORTS),
            uplink: true,
            table: [Entry::default(); TABLE_ENTRIES],
            clock: 0,
            stats: [PortStats::default(); MAX_PORTS],
        }
    }

    /// The same switch with no card on port 0: it joins the VM ports only.
    pub fn without_uplink(self) -> Self {
        Self {
            uplink: false,
            ..self
        }
    }

    /// The number of ports.
    pub fn ports(&self) -> usize {
        self.ports
    }

    /// The port `mac` was learned on.
    pub fn lookup(&self, mac: &[u8; 6]) -> Option<usize> {
        self.table
            .iter()
            .find(|e| e.seen != 0 && e.mac == *mac)
            .map(|e| usize::from(e.port))
    }

    fn learn(&mut self, mac: [u8; 6], port: usize) {
        self.clock += 1;
        let slot = match self.table.iter().position(|e| e.seen != 0 && e.mac == mac) {
            Some(i) => i,
            // A free entry has `seen` 0, the oldest of all.
            None => self
                .table
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.seen)
                .map_or(0, |(i, _)| i),
        };
        self.table[slot] = Entry {
            mac,
            // Below MAX_PORTS.
            port: port as u8,
            seen: self.clock,
        };
    }

    /// Counts a frame of `len` bytes that came in at `port` and could not
    /// even be read (a SEND whose length is outside the link's range):
    /// dropped as a runt or a giant.
    pub fn refuse_length(&mut self, port: usize, len: u64) {
        let Some(s) = self.stats.get_mut(port) else {
            return;
        };
        s.in_frames += 1;
        s.in_bytes += len;
        if len < MIN_FRAME as u64 {
            s.runt += 1;
        } else {
            s.giant += 1;
        }
    }

    /// Switches `frame`, which came in at port `src`: `deliver(port,
    /// frame)` is called for each port it goes out of and says whether
    /// that port took it. Returns why it was dropped at the door, if it
    /// was (a port that could not take it is counted at that port, as
    /// [`Drop::Full`]). A `src` that is no port is ignored.
    pub fn forward(
        &mut self,
        src: usize,
        frame: &[u8],
        mut deliver: impl FnMut(usize, &[u8]) -> bool,
    ) -> Result<(), Drop> {
        if src >= self.ports {
            return Ok(());
        }
        let s = &mut self.stats[src];
        s.in_frames += 1;
        s.in_bytes += frame.len() as u64;
        let verdict = if frame.len() > MAX_SEND {
            Err(Drop::Giant)
        } else if frame.len() < MIN_FRAME {
            Err(Drop::Runt)
        } else {
            match addresses(frame) {
                None => Err(Drop::Runt),
                Some((_, source)) if is_group(&source) => Err(Drop::SourceMulticast),
                Some(a) => Ok(a),
            }
        };
        let (dst, source) = verdict.inspect_err(|&d| self.count_in_drop(src, d))?;
        self.learn(source, src);
        let to = if is_group(&dst) {
            None
        } else {
            self.lookup(&dst)
        };
        match to {
            Some(UPLINK) if !self.uplink => Ok(()),
            Some(p) if p == src => {
                self.count_in_drop(src, Drop::Filtered);
                Err(Drop::Filtered)
            }
            Some(p) => {
                self.deliver_one(p, frame, &mut deliver);
                Ok(())
            }
            None => {
                let uplink = self.uplink;
                for p in (0..self.ports).filter(|&p| p != src && (p != UPLINK || uplink)) {
                    self.deliver_one(p, frame, &mut deliver);
                }
                Ok(())
            }
        }
    }

    fn deliver_one(
        &mut self,
        port: usize,
        frame: &[u8],
        deliver: &mut impl FnMut(usize, &[u8]) -> bool,
    ) {
        let s = &mut self.stats[port];
        if deliver(port, frame) {
            s.out_frames += 1;
            s.out_bytes += frame.len() as u64;
        } else {
            s.full += 1;
        }
    }

    fn count_in_drop(&mut self, port: usize, d: Drop) {
        let s = &mut self.stats[port];
        match d {
            Drop::Runt => s.runt += 1,
            Drop::Giant => s.giant += 1,
            Drop::SourceMulticast => s.src_multicast += 1,
            Drop::Filtered => s.filtered += 1,
            Drop::Full => s.full += 1,
        }
    }

    /// Frames that came in at every port, together.
    pub fn total_in(&self) -> u64 {
        self.stats.iter().map(|s| s.in_frames).sum()
    }
}

/// A frame waiting in a [`FrameQueue`].
#[derive(Clone, Copy)]
struct Slot {
    len: u16,
    src: u8,
    bytes: [u8; MAX_SEND],
}

/// The frames waiting for one VM port: at most [`QUEUE_FRAMES`], at most
/// [`SHARE`] of them from any one source port.
#[derive(Clone)]
pub struct FrameQueue {
    slots: [Slot; QUEUE_FRAMES],
    head: usize,
    len: usize,
    from: [u8; MAX_PORTS],
}

impl Default for FrameQueue {
    fn default() -> Self {
        Self {
            slots: [Slot {
                len: 0,
                src: 0,
                bytes: [0; MAX_SEND],
            }; QUEUE_FRAMES],
            head: 0,
            len: 0,
            from: [0; MAX_PORTS],
        }
    }
}

impl FrameQueue {
    /// Whether a frame from port `src` would be taken.
    pub fn has_room_for(&self, src: usize) -> bool {
        self.len < QUEUE_FRAMES && self.from.get(src).is_some_and(|&n| usize::from(n) < SHARE)
    }

    /// Queues `frame` from port `src`; false if there is no room for it
    /// (or it is longer than 1514 bytes).
    pub fn push(&mut self, src: usize, frame: &[u8]) -> bool {
        if !self.has_room_for(src) || frame.len() > MAX_SEND {
            return false;
        }
        let slot = &mut self.slots[(self.head + self.len) % QUEUE_FRAMES];
        slot.bytes[..frame.len()].copy_from_slice(frame);
        // At most 1514 and below MAX_PORTS.
        slot.len = frame.len() as u16;
        slot.src = src as u8;
        self.from[src] += 1;
        self.len += 1;
        true
    }

    /// The oldest frame.
    pub fn front(&self) -> Option<&[u8]> {
        (self.len > 0).then(|| {
            let s = &self.slots[self.head];
            &s.bytes[..usize::from(s.len)]
        })
    }

    /// Drops the oldest frame (after it was handed out).
    pub fn pop(&mut self) {
        if self.len == 0 {
            return;
        }
        let src = usize::from(self.slots[self.head].src);
        self.from[src] -= 1;
        self.head = (self.head + 1) % QUEUE_FRAMES;
        self.len -= 1;
    }

    /// The frames waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests;
