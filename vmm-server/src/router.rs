//! The port I/O router: port ranges `[base, base + len)` mapped to devices.
//!
//! A port no device claims behaves like an empty ISA bus: a read returns all
//! ones for the access size and a write is dropped. Both are counted, so a
//! run can report the ports a guest probed that nothing emulates.

use core::fmt;

use crate::devices::{PortDevice, WriteOutcome};
use crate::exit::IoSize;

/// Most ranges one router holds.
pub const MAX_RANGES: usize = 16;

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
    /// The router already holds [`MAX_RANGES`] ranges.
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
            Self::Full => write!(f, "the port router holds {MAX_RANGES} ranges already"),
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

struct Range<'d> {
    base: u16,
    len: u16,
    device: &'d mut dyn PortDevice,
}

impl Range<'_> {
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
    ranges: heapless::Vec<Range<'d>, MAX_RANGES>,
    unknown: UnknownPortCounts,
}

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
        let new = Range { base, len, device };
        if len == 0 || new.end() > 0x1_0000 {
            return Err(RouterError::BadRange { base, len });
        }
        if let Some(r) = self
            .ranges
            .iter()
            .find(|r| u32::from(base) < r.end() && u32::from(r.base) < new.end())
        {
            return Err(RouterError::Overlap {
                base,
                len,
                existing_base: r.base,
                existing_len: r.len,
            });
        }
        self.ranges.push(new).map_err(|_| RouterError::Full)
    }

    fn find(&mut self, port: u16) -> Option<&mut Range<'d>> {
        self.ranges.iter_mut().find(|r| r.contains(port))
    }

    /// True when a device claims `port`.
    pub fn claims(&self, port: u16) -> bool {
        self.ranges.iter().any(|r| r.contains(port))
    }

    /// A guest read of `size` bytes at `port`, masked to the size; all ones
    /// (counted) when no device claims the port.
    pub fn read(&mut self, port: u16, size: IoSize) -> u32 {
        match self.find(port) {
            Some(r) => r.device.read(port - r.base, size) & size.mask(),
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
            Some(r) => r.device.write(port - r.base, size, value & size.mask()),
            None => {
                self.unknown.writes += 1;
                WriteOutcome::Continue
            }
        }
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
