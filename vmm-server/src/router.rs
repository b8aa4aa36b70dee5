//! The port I/O router: port ranges `[base, base + len)` mapped to devices.
//!
//! A device may decode several ranges (the PIT and port 0x61, the keyboard
//! controller's 0x60 and 0x64); it sees offsets from the base of its first
//! range. A port no device claims behaves like an empty ISA bus: a read
//! returns all ones for the access size and a write is dropped. Both are
//! counted, so a run can report the ports a guest probed that nothing
//! emulates.

use core::fmt;

use crate::board::Nanos;
use crate::devices::{PortDevice, WriteOutcome};
use crate::exit::IoSize;

/// Most ranges one router holds.
pub const MAX_RANGES: usize = 16;
/// Most devices one router holds.
pub const MAX_DEVICES: usize = 16;

/// Why a range could not be registered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouterError {
    /// The range is empty or runs past port 0xffff.
    BadRange {
        /// First port.
        base: u16,
        /// Number of ports.
        len: u16,
    },
    /// The range overlaps one already registered.
    Overlap {
        /// First port of the new range.
        base: u16,
        /// Number of ports of the new range.
        len: u16,
        /// First port of the range it overlaps.
        existing_base: u16,
        /// Number of ports of the range it overlaps.
        existing_len: u16,
    },
    /// The router already holds [`MAX_RANGES`] ranges or [`MAX_DEVICES`]
    /// devices.
    Full,
}

impl fmt::Display for RouterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::BadRange { base, len } => write!(
                f,
                "port range {base:#x}+{len:#x} is empty or runs past port 0xffff"
            ),
            Self::Overlap {
                base,
                len,
                existing_base,
                existing_len,
            } => write!(
                f,
                "port range {base:#x}+{len:#x} overlaps the registered range {existing_base:#x}+{existing_len:#x}"
            ),
            Self::Full => write!(
                f,
                "the port router holds {MAX_RANGES} ranges or {MAX_DEVICES} devices already"
            ),
        }
    }
}

/// How many accesses hit no device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnknownPortCounts {
    /// Reads of unclaimed ports.
    pub reads: u64,
    /// Writes to unclaimed ports.
    pub writes: u64,
}

impl fmt::Display for UnknownPortCounts {
    /// The suffix of the statistics line:
    /// ` unknown_port_reads=N unknown_port_writes=N` (with the leading space).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            " unknown_port_reads={} unknown_port_writes={}",
            self.reads, self.writes
        )
    }
}

#[derive(Clone, Copy)]
struct Range {
    base: u16,
    len: u16,
    device: usize,
    /// The base of the device's first range: offsets count from it.
    offset_base: u16,
}

impl Range {
    fn end(&self) -> u32 {
        u32::from(self.base) + u32::from(self.len)
    }

    fn contains(&self, port: u16) -> bool {
        port >= self.base && u32::from(port) < self.end()
    }
}

/// Maps port ranges to the devices that borrow them for `'d`.
#[derive(Default)]
pub struct Router<'d> {
    ranges: heapless::Vec<Range, MAX_RANGES>,
    devices: heapless::Vec<&'d mut dyn PortDevice, MAX_DEVICES>,
    unknown: UnknownPortCounts,
    /// Bit `i`: device `i` was accessed since its last poll (or
    /// [`Self::touch`]ed, or never polled): its poll may answer
    /// differently now.
    touched: u32,
    /// The clock's reading at the last [`Self::poll_changed`].
    polled_at: Option<Nanos>,
    /// Each device's next deadline as its last poll gave it.
    deadlines: [Option<Nanos>; MAX_DEVICES],
    /// The earliest of `deadlines`.
    earliest: Option<Nanos>,
}

const _: () = assert!(MAX_DEVICES <= u32::BITS as usize);

impl<'d> Router<'d> {
    /// An empty router.
    pub fn new() -> Self {
        Self::default()
    }

    /// Routes ports `[base, base + len)` to `device`; the device sees
    /// offsets from `base`.
    pub fn register(
        &mut self,
        base: u16,
        len: u16,
        device: &'d mut dyn PortDevice,
    ) -> Result<(), RouterError> {
        self.register_ranges(&[(base, len)], device)
    }

    /// Routes every `(base, len)` range to `device`, which sees offsets from
    /// the first range's base (`port - ranges[0].0`). Nothing is registered
    /// unless every range is valid, free and fits.
    pub fn register_ranges(
        &mut self,
        ranges: &[(u16, u16)],
        device: &'d mut dyn PortDevice,
    ) -> Result<(), RouterError> {
        let Some(&(offset_base, _)) = ranges.first() else {
            return Err(RouterError::BadRange { base: 0, len: 0 });
        };
        let index = self.devices.len();
        let mut new: heapless::Vec<Range, MAX_RANGES> = heapless::Vec::new();
        for &(base, len) in ranges {
            let r = Range {
                base,
                len,
                device: index,
                offset_base,
            };
            if len == 0 || r.end() > 0x1_0000 {
                return Err(RouterError::BadRange { base, len });
            }
            if let Some(o) = self
                .ranges
                .iter()
                .chain(new.iter())
                .find(|o| u32::from(base) < o.end() && u32::from(o.base) < r.end())
            {
                return Err(RouterError::Overlap {
                    base,
                    len,
                    existing_base: o.base,
                    existing_len: o.len,
                });
            }
            new.push(r).map_err(|_| RouterError::Full)?;
        }
        if self.ranges.len() + new.len() > MAX_RANGES || self.devices.is_full() {
            return Err(RouterError::Full);
        }
        // Both fit: checked just above.
        let _ = self.devices.push(device);
        for r in new {
            let _ = self.ranges.push(r);
        }
        Ok(())
    }

    /// The device that claims `port` and the port's offset in it; the
    /// device counts as touched.
    fn find(&mut self, port: u16) -> Option<(&mut dyn PortDevice, u16)> {
        let r = *self.ranges.iter().find(|r| r.contains(port))?;
        let dev = self.devices.get_mut(r.device)?;
        self.touched |= 1 << r.device;
        Some((&mut **dev, port.wrapping_sub(r.offset_base)))
    }

    /// True when a device claims `port`.
    pub fn claims(&self, port: u16) -> bool {
        self.ranges.iter().any(|r| r.contains(port))
    }

    /// A guest read of `size` bytes at `port`, masked to the size; all ones
    /// (counted) when no device claims the port.
    pub fn read(&mut self, port: u16, size: IoSize) -> u32 {
        match self.find(port) {
            Some((d, offset)) => d.read(offset, size) & size.mask(),
            None => {
                self.unknown.reads += 1;
                size.mask()
            }
        }
    }

    /// A guest write of the low `size` bytes of `value` at `port`; dropped
    /// (counted) when no device claims the port.
    pub fn write(&mut self, port: u16, size: IoSize, value: u32) -> WriteOutcome {
        match self.find(port) {
            Some((d, offset)) => d.write(offset, size, value & size.mask()),
            None => {
                self.unknown.writes += 1;
                WriteOutcome::Continue
            }
        }
    }

    /// Polls every device ([`PortDevice::poll`]) and returns the earliest
    /// next deadline.
    pub fn poll(&mut self) -> Option<Nanos> {
        self.polled_at = None;
        self.poll_where(|_| true)
    }

    /// As [`Self::poll`] at clock reading `clock`, but a device that was
    /// not accessed since its last poll at this same reading is not polled
    /// again: its poll answers from its own state and the clock only, so
    /// it would repeat its last answer (which is used).
    pub fn poll_changed(&mut self, clock: Nanos) -> Option<Nanos> {
        if self.polled_at != Some(clock) {
            self.polled_at = Some(clock);
            return self.poll_where(|_| true);
        }
        if self.touched == 0 {
            return self.earliest;
        }
        let touched = self.touched;
        self.poll_where(|i| touched & (1 << i) != 0)
    }

    /// Polls the devices whose index passes `f`; the earliest deadline of
    /// all, the others' from their last poll.
    fn poll_where(&mut self, f: impl Fn(usize) -> bool) -> Option<Nanos> {
        let mut earliest: Option<Nanos> = None;
        for (i, (d, next)) in self.devices.iter_mut().zip(&mut self.deadlines).enumerate() {
            if f(i) {
                *next = d.poll();
            }
            earliest = match (earliest, *next) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        self.touched = 0;
        self.earliest = earliest;
        earliest
    }

    /// Something may have reached the devices other than through their
    /// ports (MMIO, a notification): each is polled at the next
    /// [`Self::poll_changed`].
    pub fn touch(&mut self) {
        self.touched = u32::MAX;
    }

    /// Accesses that hit no device so far.
    pub fn unknown(&self) -> UnknownPortCounts {
        self.unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::debug_exit::DebugExit;
    use std::string::ToString;
    use std::vec::Vec;

    /// Remembers the accesses it sees and answers with a fixed value.
    #[derive(Default)]
    struct Probe {
        seen: Vec<(u16, IoSize, Option<u32>)>,
    }

    impl PortDevice for Probe {
        fn read(&mut self, offset: u16, size: IoSize) -> u32 {
            self.seen.push((offset, size, None));
            0xdead_beef
        }
        fn write(&mut self, offset: u16, size: IoSize, value: u32) -> WriteOutcome {
            self.seen.push((offset, size, Some(value)));
            WriteOutcome::Continue
        }
    }

    #[test]
    fn unknown_ports_read_all_ones_by_size() {
        let mut r = Router::new();
        assert_eq!(r.read(0x80, IoSize::Byte), 0xff);
        assert_eq!(r.read(0x80, IoSize::Word), 0xffff);
        assert_eq!(r.read(0x80, IoSize::Dword), 0xffff_ffff);
        assert_eq!(
            r.unknown(),
            UnknownPortCounts {
                reads: 3,
                writes: 0
            }
        );
    }

    #[test]
    fn unknown_writes_are_dropped_and_counted() {
        let mut r = Router::new();
        assert_eq!(r.write(0x80, IoSize::Byte, 1), WriteOutcome::Continue);
        assert_eq!(r.write(0x61, IoSize::Word, 1), WriteOutcome::Continue);
        assert_eq!(
            r.unknown(),
            UnknownPortCounts {
                reads: 0,
                writes: 2
            }
        );
        assert_eq!(
            r.unknown().to_string(),
            " unknown_port_reads=0 unknown_port_writes=2"
        );
    }

    #[test]
    fn accesses_reach_the_device_at_their_offset_masked() {
        let mut p = Probe::default();
        {
            let mut r = Router::new();
            r.register(0x3f8, 8, &mut p).unwrap();
            assert_eq!(r.read(0x3fd, IoSize::Byte), 0xef);
            assert_eq!(r.read(0x3f8, IoSize::Word), 0xbeef);
            r.write(0x3ff, IoSize::Byte, 0x1234);
            assert_eq!(r.read(0x400, IoSize::Byte), 0xff, "just past the range");
            assert_eq!(r.read(0x3f7, IoSize::Byte), 0xff, "just before it");
            assert_eq!(r.unknown().reads, 2);
            assert!(r.claims(0x3f8) && r.claims(0x3ff) && !r.claims(0x400));
        }
        assert_eq!(
            p.seen,
            [
                (5, IoSize::Byte, None),
                (0, IoSize::Word, None),
                (7, IoSize::Byte, Some(0x34)),
            ]
        );
    }

    #[test]
    fn overlapping_ranges_are_rejected() {
        // A rejected device stays borrowed for the router's lifetime, so
        // every attempt uses its own device.
        let mut p: Vec<Probe> = (0..5).map(|_| Probe::default()).collect();
        let [a, b, c, d, e] = &mut p[..] else {
            unreachable!()
        };
        let mut r = Router::new();
        r.register(0x3f8, 8, a).unwrap();
        let err = r.register(0x3ff, 2, b).unwrap_err();
        assert_eq!(
            err,
            RouterError::Overlap {
                base: 0x3ff,
                len: 2,
                existing_base: 0x3f8,
                existing_len: 8
            }
        );
        assert!(err.to_string().contains("overlaps"));
        assert!(r.register(0x3f0, 9, c).is_err());
        // Adjacent on both sides is fine.
        r.register(0x3f0, 8, d).unwrap();
        r.register(0x400, 1, e).unwrap();
    }

    #[test]
    fn one_device_at_several_ranges_sees_offsets_from_the_first() {
        let mut p = Probe::default();
        {
            let mut r = Router::new();
            r.register_ranges(&[(0x40, 4), (0x61, 1)], &mut p).unwrap();
            r.read(0x43, IoSize::Byte);
            r.write(0x61, IoSize::Byte, 3);
            assert_eq!(r.read(0x60, IoSize::Byte), 0xff);
        }
        assert_eq!(
            p.seen,
            [(3, IoSize::Byte, None), (0x21, IoSize::Byte, Some(3))]
        );
    }

    #[test]
    fn a_refused_set_of_ranges_registers_nothing() {
        let mut p: Vec<Probe> = (0..3).map(|_| Probe::default()).collect();
        let [a, b, c] = &mut p[..] else {
            unreachable!()
        };
        let mut r = Router::new();
        r.register(0x61, 1, a).unwrap();
        assert!(matches!(
            r.register_ranges(&[(0x40, 4), (0x61, 1)], b),
            Err(RouterError::Overlap { .. })
        ));
        assert!(!r.claims(0x40), "the first range was not kept");
        assert!(matches!(
            r.register_ranges(&[(0x70, 2), (0x71, 1)], c),
            Err(RouterError::Overlap { .. })
        ));
    }

    #[test]
    fn no_ranges_is_an_error() {
        let mut p = Probe::default();
        let mut r = Router::new();
        assert!(r.register_ranges(&[], &mut p).is_err());
    }

    #[test]
    fn poll_returns_the_earliest_deadline() {
        struct Timer(Option<Nanos>, u32);
        impl PortDevice for Timer {
            fn read(&mut self, _: u16, _: IoSize) -> u32 {
                0
            }
            fn write(&mut self, _: u16, _: IoSize, _: u32) -> WriteOutcome {
                WriteOutcome::Continue
            }
            fn poll(&mut self) -> Option<Nanos> {
                self.1 += 1;
                self.0
            }
        }
        let (mut a, mut b, mut c) = (Timer(Some(50), 0), Timer(None, 0), Timer(Some(20), 0));
        {
            let mut r = Router::new();
            r.register(1, 1, &mut a).unwrap();
            r.register(2, 1, &mut b).unwrap();
            assert_eq!(r.poll(), Some(50));
            r.register(3, 1, &mut c).unwrap();
            assert_eq!(r.poll(), Some(20));
        }
        assert_eq!((a.1, b.1, c.1), (2, 2, 1), "every device is polled");
        // At one clock reading, only the devices accessed since are polled
        // again; the others' last deadlines stand.
        {
            let mut r = Router::new();
            r.register(1, 1, &mut a).unwrap();
            r.register(2, 1, &mut b).unwrap();
            r.register(3, 1, &mut c).unwrap();
            assert_eq!(r.poll_changed(100), Some(20));
            assert_eq!(r.poll_changed(100), Some(20));
            r.write(2, IoSize::Byte, 0);
            let _ = r.read(0x80, IoSize::Byte);
            assert_eq!(r.poll_changed(100), Some(20));
            r.touch();
            assert_eq!(r.poll_changed(100), Some(20));
            // A new clock reading polls every device.
            assert_eq!(r.poll_changed(101), Some(20));
        }
        assert_eq!((a.1, b.1, c.1), (5, 6, 4));
    }

    #[test]
    fn bad_ranges_and_a_full_router_are_errors() {
        let mut many: Vec<DebugExit> = (0..MAX_RANGES + 3).map(|_| DebugExit).collect();
        let mut it = many.iter_mut();
        let mut r = Router::new();
        assert!(matches!(
            r.register(0x10, 0, it.next().unwrap()),
            Err(RouterError::BadRange { .. })
        ));
        assert!(matches!(
            r.register(0xfff0, 0x11, it.next().unwrap()),
            Err(RouterError::BadRange { .. })
        ));
        r.register(0xfff0, 0x10, it.next().unwrap()).unwrap();
        for i in 0..MAX_RANGES - 1 {
            r.register(i as u16, 1, it.next().unwrap()).unwrap();
        }
        assert_eq!(
            r.register(0x100, 1, it.next().unwrap()),
            Err(RouterError::Full)
        );
    }
}
