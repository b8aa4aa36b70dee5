//! The mmu-server's part of a trace (`splitvisor run --trace FILE`): each
//! exit the stub hands it, each reply (run the guest, or forward the exit
//! to the vmm-server) and each install batch with the time its system
//! call took, with TSC stamps.
//!
//! The stream is written as the vmm-server's is (`ipc_proto::trace`'s
//! [`Writer`]: console lines, LEB128, exit records and resumes as the
//! words that changed), in lines of its own mark ([`MMU_MARK`]) since
//! the two servers' lines interleave on the console. The mmu-server
//! cannot tell when the run ends (the vmm-server stops the VM while this
//! server waits for its next exit), so [`Recorder::reply`] sends what is
//! buffered with each reply: nothing is left unsent at the end.
//!
//! Recorded, not replayed yet (TODO: replay through [`crate::server`]'s
//! loop on a platform that takes the recorded exits and compares the
//! replies and installs; it needs the table allocations recorded too).

use alloc::vec::Vec;

use ipc_proto::mmu::{Install, InstallError};
use ipc_proto::trace::{Reader, Writer, MMU_MARK};
use ipc_proto::{ErrorCode, ExitRecord, Resume};
use zerocopy::IntoBytes;

pub use ipc_proto::trace::{DecodeError, Sink};

use crate::platform::PlatformError;
use crate::server::Reply;

/// The version of the mmu-server's stream, in [`Meta`].
pub const VERSION: u8 = 1;

/// Event tags on the wire.
mod tag {
    pub const META: u8 = 1;
    pub const EXIT: u8 = 2;
    pub const RUN: u8 = 3;
    pub const FORWARD: u8 = 4;
    pub const REFUSED: u8 = 5;
    pub const INSTALL: u8 = 6;
    pub const LIMIT: u8 = 7;
    pub const FLUSH: u8 = ipc_proto::trace::FLUSH_TAG;
}

/// The set-up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    /// [`VERSION`] of the stream.
    pub version: u8,
    /// `BootInfo::mmu_mode` (0: nested paging).
    pub mmu_mode: u64,
    /// `BootInfo::tsc_hz`.
    pub tsc_hz: u64,
}

/// How the stub answered an install batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstallResult {
    /// All entries applied.
    Ok,
    /// Entry `index` refused with this `InstallError` number (the ones
    /// before it were applied).
    Refused {
        /// Index in the batch.
        index: u32,
        /// `InstallError as u32`.
        error: u32,
    },
    /// Another platform error.
    Failed,
}

impl InstallResult {
    /// The result of [`crate::MmuPlatform::install`].
    pub fn of(got: &Result<(), PlatformError>) -> Self {
        match got {
            Ok(()) => Self::Ok,
            Err(PlatformError::Refused { index, error }) => Self::Refused {
                index: *index as u32,
                error: *error as u32,
            },
            Err(_) => Self::Failed,
        }
    }
}

/// One event of the mmu-server's stream.
// Decoded one at a time on the host: the size difference does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The set-up, first in the stream.
    Meta(Meta),
    /// The stub handed over this exit at TSC `tsc`.
    Exit {
        /// The TSC when the exit reached the server.
        tsc: u64,
        /// The record.
        rec: ExitRecord,
    },
    /// The reply left at TSC `tsc`: `VcpuRun` with `resume`, or
    /// `VcpuForward` of `forward` to the vmm-server.
    Reply {
        /// The TSC of the call.
        tsc: u64,
        /// The exit handed to the vmm-server, for a forward.
        forward: Option<ExitRecord>,
        /// The resume.
        resume: Resume,
    },
    /// The stub refused the reply with this error code number.
    Refused(u8),
    /// An install batch: its entries, the stub's answer, the TSC when the
    /// call was made and the ticks it took.
    Install {
        /// The TSC before the call.
        tsc: u64,
        /// Ticks the install system call took.
        ticks: u64,
        /// The entries, as the stub got them.
        entries: Vec<Install>,
        /// The stub's answer.
        result: InstallResult,
    },
    /// The recording stopped here (`--trace-exits`): the run went on.
    Limit,
    /// TSC ticks spent sending trace lines since the last stamp.
    Flush(u64),
}

/// Collects the mmu-server's events into console lines.
pub struct Recorder<S: Sink> {
    /// The lines and the encodings.
    pub w: Writer<S>,
    on: bool,
    prev_exit: ExitRecord,
    prev_resume: Resume,
    prev_install: Install,
    exits: u32,
    max_exits: u32,
}

impl<S: Sink> Recorder<S> {
    /// A recorder that stops after `max_exits` exits (0: never).
    pub fn new(sink: S, max_exits: u32, meta: Meta) -> Self {
        let mut r = Self {
            w: Writer::new(sink, MMU_MARK),
            on: true,
            prev_exit: ExitRecord::default(),
            prev_resume: Resume::default(),
            prev_install: Install::default(),
            exits: 0,
            max_exits,
        };
        r.w.put(&[tag::META, VERSION]);
        r.w.varint(meta.mmu_mode);
        r.w.put(&meta.tsc_hz.to_le_bytes());
        r
    }

    /// Whether events are still recorded.
    pub fn is_on(&self) -> bool {
        self.on
    }

    /// The TSC now, from the sink.
    pub fn tsc(&mut self) -> u64 {
        self.w.sink.tsc()
    }

    /// A reply leaving at `tsc`; sends the buffered lines (see the module
    /// docs), and stops after the last exit to record.
    pub fn reply(&mut self, tsc: u64, reply: &Reply) {
        if !self.on {
            return;
        }
        self.w.flushes();
        let resume = match reply {
            Reply::Run(r) => {
                self.w.put(&[tag::RUN]);
                self.w.tsc_value(tsc);
                r
            }
            Reply::Forward { exit, resume } => {
                self.w.put(&[tag::FORWARD]);
                self.w.tsc_value(tsc);
                // Against the exit it answers: a few words differ.
                let old = self.prev_exit;
                self.w.delta(old.as_bytes(), exit.as_bytes());
                resume
            }
        };
        let old = self.prev_resume;
        self.w.delta(old.as_bytes(), resume.as_bytes());
        self.prev_resume = *resume;
        if self.max_exits != 0 && self.exits >= self.max_exits {
            self.w.put(&[tag::LIMIT]);
            self.on = false;
        }
        self.w.flush();
    }

    /// What the reply brought back at `tsc`: the next exit, or the stub's
    /// refusal.
    pub fn exit(&mut self, tsc: u64, got: &Result<ExitRecord, ErrorCode>) {
        if !self.on {
            return;
        }
        self.w.flushes();
        match got {
            Ok(rec) => {
                self.exits += 1;
                self.w.put(&[tag::EXIT]);
                self.w.tsc_value(tsc);
                let old = self.prev_exit;
                self.w.delta(old.as_bytes(), rec.as_bytes());
                self.prev_exit = *rec;
            }
            Err(e) => {
                self.w.put(&[tag::REFUSED, *e as u8]);
                self.w.flush();
            }
        }
    }

    /// An install batch called at `tsc` that took `ticks`.
    pub fn install(&mut self, tsc: u64, ticks: u64, batch: &[Install], result: InstallResult) {
        if !self.on {
            return;
        }
        self.w.put(&[tag::INSTALL]);
        self.w.tsc_value(tsc);
        self.w.varint(ticks);
        self.w.varint(batch.len() as u64);
        // Each entry XORed with the one before in the stream: the entries
        // prefetched around a fault are neighbours in one table, mapping
        // neighbouring frames (a byte or two each instead of eight).
        for e in batch {
            let p = self.prev_install;
            self.w.varint(u64::from(e.table ^ p.table));
            self.w.varint(u64::from(e.index ^ p.index));
            self.w
                .varint(u64::from(e.level) | u64::from(e.reserved) << 8);
            self.w.varint(e.entry ^ p.entry);
            self.prev_install = *e;
        }
        match result {
            InstallResult::Ok => self.w.put(&[0]),
            InstallResult::Refused { index, error } => {
                self.w.put(&[1]);
                self.w.varint(u64::from(index));
                self.w.varint(u64::from(error));
            }
            InstallResult::Failed => self.w.put(&[2]),
        }
    }
}

/// Reads the mmu-server's stream back into [`Event`]s.
pub struct Decoder<'a> {
    r: Reader<'a>,
    prev_exit: ExitRecord,
    prev_resume: Resume,
    prev_install: Install,
}

impl<'a> Decoder<'a> {
    /// A decoder over the whole stream (the lines' bytes, in order).
    pub fn new(bytes: &'a [u8]) -> Self {
        Self {
            r: Reader::new(bytes),
            prev_exit: ExitRecord::default(),
            prev_resume: Resume::default(),
            prev_install: Install::default(),
        }
    }

    fn resume(&mut self) -> Result<Resume, DecodeError> {
        let mut resume = self.prev_resume;
        self.r.delta(resume.as_mut_bytes())?;
        self.prev_resume = resume;
        Ok(resume)
    }

    fn next_event(&mut self) -> Result<Event, DecodeError> {
        let r = &mut self.r;
        Ok(match r.u8()? {
            tag::META => Event::Meta(Meta {
                version: r.u8()?,
                mmu_mode: r.varint()?,
                tsc_hz: r.u64()?,
            }),
            tag::EXIT => {
                let tsc = r.tsc_value()?;
                let mut rec = self.prev_exit;
                r.delta(rec.as_mut_bytes())?;
                self.prev_exit = rec;
                Event::Exit { tsc, rec }
            }
            tag::RUN => {
                let tsc = r.tsc_value()?;
                Event::Reply {
                    tsc,
                    forward: None,
                    resume: self.resume()?,
                }
            }
            tag::FORWARD => {
                let tsc = r.tsc_value()?;
                let mut exit = self.prev_exit;
                r.delta(exit.as_mut_bytes())?;
                Event::Reply {
                    tsc,
                    forward: Some(exit),
                    resume: self.resume()?,
                }
            }
            tag::REFUSED => Event::Refused(r.u8()?),
            tag::INSTALL => {
                let tsc = r.tsc_value()?;
                let ticks = r.varint()?;
                let n = r.varint()?;
                if n > ipc_proto::mmu::INSTALL_BATCH_MAX as u64 {
                    return Err(r.err("an install batch larger than the stub takes"));
                }
                let mut entries = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    let p = self.prev_install;
                    let table = u32::try_from(r.varint()?)
                        .map_err(|_| r.err("a table handle too large"))?;
                    let index =
                        u16::try_from(r.varint()?).map_err(|_| r.err("an index too large"))?;
                    let lr = u16::try_from(r.varint()?).map_err(|_| r.err("a level too large"))?;
                    let [level, reserved] = lr.to_le_bytes();
                    let e = Install {
                        table: table ^ p.table,
                        index: index ^ p.index,
                        level,
                        reserved,
                        entry: r.varint()? ^ p.entry,
                    };
                    entries.push(e);
                    self.prev_install = e;
                }
                let result = match r.u8()? {
                    0 => InstallResult::Ok,
                    1 => InstallResult::Refused {
                        index: u32::try_from(r.varint()?).map_err(|_| r.err("a bad index"))?,
                        error: u32::try_from(r.varint()?).map_err(|_| r.err("a bad error"))?,
                    },
                    2 => InstallResult::Failed,
                    _ => return Err(r.err("an unknown install result")),
                };
                Event::Install {
                    tsc,
                    ticks,
                    entries,
                    result,
                }
            }
            tag::LIMIT => Event::Limit,
            tag::FLUSH => Event::Flush(r.varint()?),
            _ => {
                r.at -= 1;
                return Err(r.err("an unknown event tag"));
            }
        })
    }
}

impl Iterator for Decoder<'_> {
    type Item = Result<Event, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.r.done() {
            return None;
        }
        let e = self.next_event();
        if e.is_err() {
            // Nothing after a bad event can be trusted.
            self.r.stop();
        }
        Some(e)
    }
}

/// The name of an `InstallError` number, for text.
pub fn install_error_name(error: u32) -> &'static str {
    match InstallError::from_raw(error) {
        Some(e) => e.describe(),
        None => "an unknown install error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipc_proto::trace::base64_decode;
    use proptest::prelude::*;

    /// Lines kept in memory; a clock that ticks 100 per reading.
    #[derive(Default)]
    struct Lines {
        lines: Vec<Vec<u8>>,
        t: u64,
    }

    impl Sink for Lines {
        fn line(&mut self, bytes: &[u8]) {
            self.lines.push(bytes.to_vec());
        }
        fn tsc(&mut self) -> u64 {
            self.t += 100;
            self.t
        }
    }

    fn stream(lines: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for l in lines {
            assert_eq!(l[0], MMU_MARK);
            assert_eq!(*l.last().unwrap(), b'\n');
            assert!(l.len() <= 4096);
            base64_decode(&l[1..l.len() - 1], |b| out.extend_from_slice(b)).unwrap();
        }
        out
    }

    fn meta() -> Meta {
        Meta {
            version: VERSION,
            mmu_mode: 1,
            tsc_hz: 2_000_000_000,
        }
    }

    /// Writes `events` (the set-up left out) and decodes them back.
    fn round_trip(events: &[Event], max_exits: u32) -> (Vec<Event>, Recorder<Lines>) {
        let mut rec = Recorder::new(Lines::default(), max_exits, meta());
        for e in events {
            match e {
                Event::Exit { tsc, rec: r } => rec.exit(*tsc, &Ok(*r)),
                Event::Refused(e) => {
                    // The tests refuse with this code only.
                    assert_eq!(*e, ErrorCode::NotReady as u8);
                    rec.exit(0, &Err(ErrorCode::NotReady));
                }
                Event::Reply {
                    tsc,
                    forward,
                    resume,
                } => {
                    let reply = match forward {
                        None => Reply::Run(*resume),
                        Some(exit) => Reply::Forward {
                            exit: *exit,
                            resume: *resume,
                        },
                    };
                    rec.reply(*tsc, &reply);
                }
                Event::Install {
                    tsc,
                    ticks,
                    entries,
                    result,
                } => rec.install(*tsc, *ticks, entries, *result),
                Event::Meta(_) | Event::Limit | Event::Flush(_) => unreachable!(),
            }
        }
        // Installs after the last reply (the server always replies after).
        rec.w.flush();
        let s = stream(&rec.w.sink.lines);
        assert_eq!(s.len() as u64, rec.w.bytes);
        let got: Vec<Event> = Decoder::new(&s).map(Result::unwrap).collect();
        assert_eq!(got[0], Event::Meta(meta()));
        (got, rec)
    }

    fn without_flushes(events: &[Event]) -> Vec<Event> {
        events
            .iter()
            .filter(|e| !matches!(e, Event::Flush(_) | Event::Meta(_)))
            .cloned()
            .collect()
    }

    fn exit(code: u64, rip: u64) -> ExitRecord {
        let mut r = ExitRecord {
            exit_code: code,
            exit_info2: rip ^ 0xdead,
            ..Default::default()
        };
        r.regs.rip = rip;
        r
    }

    #[test]
    fn exits_replies_and_installs_decode_back_and_each_reply_is_sent() {
        let install = Install {
            table: 7,
            index: 511,
            level: 1,
            reserved: 0,
            entry: 0x8000_0000_1234_5067,
        };
        let events = [
            Event::Install {
                tsc: 50,
                ticks: 30,
                entries: alloc::vec![install; 3],
                result: InstallResult::Ok,
            },
            Event::Reply {
                tsc: 90,
                forward: None,
                resume: Resume {
                    flags: 4,
                    ..Default::default()
                },
            },
            Event::Exit {
                tsc: 1_000,
                rec: exit(0x4e, 0x40_1000),
            },
            Event::Install {
                tsc: 1_100,
                ticks: 20,
                entries: alloc::vec![install],
                result: InstallResult::Refused { index: 0, error: 6 },
            },
            Event::Reply {
                tsc: 1_300,
                forward: Some(exit(0x400, 0x40_1000)),
                resume: Resume::default(),
            },
            Event::Exit {
                tsc: 2_000,
                rec: exit(0x4e, 0x40_1004),
            },
            Event::Refused(ErrorCode::NotReady as u8),
        ];
        let (got, rec) = round_trip(&events, 0);
        assert_eq!(without_flushes(&got), events);
        // Meta and the first install in the first line, then a line per
        // reply and one for the refusal.
        assert_eq!(rec.w.sink.lines.len(), 3);
        // The lines' time is in the stream, before the next stamp.
        assert!(matches!(got[3], Event::Flush(t) if t > 0), "{got:?}");
        assert_eq!(
            install_error_name(6),
            InstallError::OutsideGuestMemory.describe()
        );
    }

    #[test]
    fn the_recording_stops_after_the_last_exit_to_record() {
        let mut events = Vec::new();
        for i in 0..5u64 {
            events.push(Event::Exit {
                tsc: i * 10,
                rec: exit(0x4e, i),
            });
            events.push(Event::Reply {
                tsc: i * 10 + 5,
                forward: None,
                resume: Resume::default(),
            });
        }
        let (got, rec) = round_trip(&events, 2);
        let got = without_flushes(&got);
        assert_eq!(got[..4], events[..4]);
        assert_eq!(got[4], Event::Limit);
        assert_eq!(got.len(), 5);
        assert!(!rec.is_on());
    }

    #[test]
    fn a_cut_or_garbled_stream_is_an_error_not_a_panic() {
        let mut rec = Recorder::new(Lines::default(), 0, meta());
        rec.install(
            1,
            2,
            &[Install {
                table: 1,
                index: 2,
                level: 3,
                reserved: 0,
                entry: 4,
            }],
            InstallResult::Ok,
        );
        rec.reply(5, &Reply::Run(Resume::default()));
        let s = stream(&rec.w.sink.lines);
        for cut in 0..s.len() {
            let _ = Decoder::new(&s[..cut]).count();
        }
        let mut bad = s.clone();
        bad.push(0xee);
        assert!(Decoder::new(&bad).last().unwrap().is_err());
    }

    fn arb_exit() -> impl Strategy<Value = ExitRecord> {
        (any::<u64>(), any::<u64>(), any::<u64>(), any::<u32>()).prop_map(
            |(code, i2, rip, arch)| {
                let mut r = ExitRecord {
                    exit_code: code % 0x500,
                    exit_info2: i2,
                    arch: arch % 3,
                    ..Default::default()
                };
                r.regs.rip = rip;
                r
            },
        )
    }

    fn arb_event() -> impl Strategy<Value = Event> {
        // Any bytes, as a hostile server's batch may hold.
        let install = (
            any::<u32>(),
            any::<u16>(),
            any::<u8>(),
            any::<u8>(),
            any::<u64>(),
        )
            .prop_map(|(table, index, level, reserved, entry)| Install {
                table,
                index,
                level,
                reserved,
                entry,
            });
        let result = prop_oneof![
            Just(InstallResult::Ok),
            Just(InstallResult::Failed),
            (0u32..255, 1u32..9).prop_map(|(index, error)| InstallResult::Refused { index, error }),
        ];
        prop_oneof![
            (any::<u64>(), arb_exit()).prop_map(|(tsc, rec)| Event::Exit { tsc, rec }),
            (
                any::<u64>(),
                proptest::option::of(arb_exit()),
                any::<u64>(),
                any::<u32>()
            )
                .prop_map(|(tsc, forward, cr2, flags)| Event::Reply {
                    tsc,
                    forward,
                    resume: Resume {
                        flags,
                        cr2,
                        ..Default::default()
                    },
                }),
            (
                any::<u64>(),
                any::<u64>(),
                proptest::collection::vec(install, 0..20),
                result
            )
                .prop_map(|(tsc, ticks, entries, result)| Event::Install {
                    tsc,
                    ticks,
                    entries,
                    result,
                }),
        ]
    }

    proptest! {
        /// Any sequence of exits, replies and installs decodes back as
        /// recorded (TSC stamps of any order: they are differences).
        #[test]
        fn any_events_round_trip(events in proptest::collection::vec(arb_event(), 0..40)) {
            let (got, _) = round_trip(&events, 0);
            prop_assert_eq!(without_flushes(&got), events);
        }
    }
}
