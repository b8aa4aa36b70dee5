//! Exit traces on the host (`splitvisor run --trace`, `replay`, `stats`).
//!
//! The vmm-server records its exit handler's inputs and decisions as
//! console lines ([`vmm_server::trace`]), the mmu-server its exits,
//! replies and install batches ([`mmu_server::trace`]) in lines of
//! another mark; [`Splitter`] takes both kinds of line out of the console
//! stream, [`Trace::from_streams`] decodes them, and [`Trace::to_bytes`]
//! writes an rkyv archive (after a [`header`] naming its format version)
//! that [`access`] reads back in place (checked, no copy). [`replay`]
//! feeds the vmm-server's events to the same exit handler on the host and
//! compares every decision; [`stats`] turns a trace into a text summary
//! and SVG plots.
#![deny(missing_docs)]

pub mod replay;
pub mod stats;

use std::io::{self, Write};

use ipc_proto::trace::{MMU_MARK, VMM_MARK};
use mmu_server::trace::InstallResult;
use vmm_server::trace::{base64_decode, Decoder, Event, Flag, Meta};
use vmm_server::vmm::VmmStats;
use vmm_server::Ending;
use zerocopy::IntoBytes;

/// The archive's types; rkyv derives their `Archived*` twins, whose
/// generated parts carry no documentation.
mod types {
    #![allow(missing_docs)]
    use rkyv::{Archive, Deserialize, Serialize};

    /// One recorded event, as the archive keeps it (records as their bytes).
    #[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq)]
    pub enum Ev {
        /// An exit record (`ipc_proto::ExitRecord`'s bytes) and the TSC when
        /// it reached the server.
        Exit {
            /// TSC stamp.
            tsc: u64,
            /// The record's bytes.
            rec: Vec<u8>,
        },
        /// A resume (`ipc_proto::Resume`'s bytes) and the TSC when it left.
        Resume {
            /// TSC stamp.
            tsc: u64,
            /// The resume's bytes.
            resume: Vec<u8>,
        },
        /// The first `VcpuRun` (no resume).
        FirstRun {
            /// TSC stamp.
            tsc: u64,
        },
        /// `VcpuRun` failed with this error number.
        VcpuError(u8),
        /// A clock reading.
        Now(u64),
        /// A CPUID answer: leaf, subleaf, EAX..EDX.
        Cpuid(u32, u32, [u32; 4]),
        /// A yes-or-no answer of the host (`vmm_server::trace::Flag` number).
        Flag(u8, bool),
        /// XCR0, if the host has XSAVE.
        Xcr0(Option<u64>),
        /// A guest-RAM read: address, length, the bytes (none: not RAM).
        MemRead(u64, u64, Option<Vec<u8>>),
        /// A guest-RAM write: address, length, reached RAM, FNV-1a of data.
        MemWrite(u64, u64, bool, u32),
        /// Console input: the room given and what came.
        ConsoleIn(u64, Vec<u8>),
        /// Console output: length and FNV-1a.
        ConsoleOut(u64, u32),
        /// The stub's counters (`ipc_proto::Stats`'s bytes), or an error number.
        Stats(Result<Vec<u8>, u8>),
        /// The mmu-server's counters (`ipc_proto::stats::MmuStats`'s bytes).
        MmuStats(Option<Vec<u8>>),
        /// Segment registers (six `ipc_proto::Segment`s' bytes).
        Segments(Option<Vec<u8>>),
        /// A wait until this TSC.
        WaitUntil(u64),
        /// The ending (0 stop, 1 reset, 2 fail), the stop status and the
        /// handler's counters (`VmmStats` in field order).
        End(u8, u8, [u64; 8]),
        /// Recording stopped here; the run went on.
        Limit,
        /// Ticks spent sending trace lines since the last stamp.
        Flush(u64),
        /// The stub's counters (`ipc_proto::Stats`'s bytes) and the
        /// mmu-server's, sampled every `SAMPLE_EXITS` exits.
        Sample(Vec<u8>, Option<Vec<u8>>),
    }

    /// One event of the mmu-server's stream (`mmu_server::trace::Event`).
    #[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq)]
    pub enum MmuEv {
        /// An exit the stub handed the mmu-server (`ExitRecord`'s bytes)
        /// and the TSC when it arrived.
        Exit {
            /// TSC stamp.
            tsc: u64,
            /// The record's bytes.
            rec: Vec<u8>,
        },
        /// A reply (`Resume`'s bytes; for a forward to the vmm-server the
        /// exit handed on too) and the TSC when it left.
        Reply {
            /// TSC stamp.
            tsc: u64,
            /// The forwarded exit's bytes, if forwarded.
            forward: Option<Vec<u8>>,
            /// The resume's bytes.
            resume: Vec<u8>,
        },
        /// The stub refused a reply with this error number.
        Refused(u8),
        /// An install batch: the TSC of the call, the ticks it took, the
        /// entries (`ipc_proto::mmu::Install`s' bytes) and the answer (0
        /// applied, 1 refused at `index` for `error`, 2 failed).
        Install {
            /// TSC stamp.
            tsc: u64,
            /// Ticks of the system call.
            ticks: u64,
            /// The entries' bytes, 16 each.
            entries: Vec<u8>,
            /// 0 applied, 1 refused, 2 failed.
            result: u8,
            /// The refused entry.
            index: u32,
            /// The `InstallError` number.
            error: u32,
        },
        /// Recording stopped here; the run went on.
        Limit,
        /// Ticks spent sending trace lines since the last stamp.
        Flush(u64),
    }

    /// A recorded run.
    #[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq)]
    pub struct Trace {
        /// `vmm_server::trace::VERSION` of the stream.
        pub version: u8,
        /// `BootInfo::board`.
        pub board: u64,
        /// `BootInfo::mmu_mode`.
        pub mmu_mode: u64,
        /// `BootInfo::uart_channel`.
        pub uart_channel: u64,
        /// PCI functions served by servers of their own.
        pub pci_functions: u8,
        /// `BootInfo::tsc_hz`.
        pub tsc_hz: u64,
        /// Guest RAM in bytes.
        pub guest_ram_bytes: u64,
        /// Bytes of the stream as the vmm-server sent it (before base64).
        pub wire_bytes: u64,
        /// The events in order.
        pub events: Vec<Ev>,
        /// `mmu_server::trace::VERSION` of the mmu-server's stream (0:
        /// none came).
        pub mmu_version: u8,
        /// Bytes of the mmu-server's stream as sent (before base64).
        pub mmu_wire_bytes: u64,
        /// The mmu-server's events in order.
        pub mmu_events: Vec<MmuEv>,
    }
}
pub use types::*;

/// The archive's format version, in its [`header`]: 3 since the archive
/// holds the mmu-server's events too (archives before had no header).
pub const ARCHIVE_VERSION: u32 = 3;
/// The bytes in front of the rkyv archive in a trace file: a magic and
/// [`ARCHIVE_VERSION`] (`u32`, little-endian); 16 bytes, so that the
/// archive after it stays as aligned as the whole.
pub const HEADER_LEN: usize = 16;
const MAGIC: &[u8; 12] = b"SVTRACE-ARCH";

/// The header of an archive of this version.
pub fn header() -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..12].copy_from_slice(MAGIC);
    h[12..].copy_from_slice(&ARCHIVE_VERSION.to_le_bytes());
    h
}

impl Trace {
    /// Decodes the vmm-server's stream alone (no mmu-server lines).
    pub fn from_stream(stream: &[u8]) -> Result<Self, String> {
        Self::from_streams(stream, &[])
    }

    /// Decodes the streams the console lines carried: the vmm-server's
    /// and the mmu-server's (empty when it sent none).
    pub fn from_streams(stream: &[u8], mmu_stream: &[u8]) -> Result<Self, String> {
        let mut d = Decoder::new(stream);
        let meta = match d.next() {
            Some(Ok(Event::Meta(m))) => m,
            Some(Err(e)) => return Err(e.to_string()),
            _ => return Err("the trace does not start with its set-up".into()),
        };
        if meta.version != vmm_server::trace::VERSION {
            return Err(format!(
                "trace version {} (this splitvisor reads version {})",
                meta.version,
                vmm_server::trace::VERSION
            ));
        }
        let mut events = Vec::new();
        for e in d {
            match e.map_err(|e| e.to_string())? {
                Event::Meta(_) => return Err("a second set-up in the trace".into()),
                e => events.push(Ev::from_event(&e)),
            }
        }
        let (mmu_version, mmu_events) = mmu_events(mmu_stream)?;
        Ok(Self {
            version: meta.version,
            board: meta.board,
            mmu_mode: meta.mmu_mode,
            uart_channel: meta.uart_channel,
            pci_functions: meta.pci_functions,
            tsc_hz: meta.tsc_hz,
            guest_ram_bytes: meta.guest_ram_bytes,
            wire_bytes: stream.len() as u64,
            events,
            mmu_version,
            mmu_wire_bytes: mmu_stream.len() as u64,
            mmu_events,
        })
    }

    /// The archive's bytes, after the [`header`].
    pub fn to_bytes(&self) -> Vec<u8> {
        let archive = rkyv::to_bytes::<rkyv::rancor::Error>(self)
            .expect("an in-memory trace always serializes");
        let mut b = header().to_vec();
        b.extend_from_slice(&archive);
        b
    }

    /// Writes the archive to `path`.
    pub fn save(&self, path: &std::path::Path) -> io::Result<()> {
        std::fs::write(path, self.to_bytes())
    }

    /// An owned copy of an archived trace (to edit it: tests that corrupt
    /// a decision).
    pub fn from_archive(a: &ArchivedTrace) -> Self {
        rkyv::deserialize::<Self, rkyv::rancor::Error>(a).expect("a checked archive deserializes")
    }
}

/// The mmu-server's stream decoded: its version and events.
fn mmu_events(stream: &[u8]) -> Result<(u8, Vec<MmuEv>), String> {
    use mmu_server::trace::{Decoder, Event};
    if stream.is_empty() {
        return Ok((0, Vec::new()));
    }
    let mut d = Decoder::new(stream);
    let meta = match d.next() {
        Some(Ok(Event::Meta(m))) => m,
        Some(Err(e)) => return Err(format!("the mmu-server's stream: {e}")),
        _ => return Err("the mmu-server's stream does not start with its set-up".into()),
    };
    if meta.version != mmu_server::trace::VERSION {
        return Err(format!(
            "the mmu-server's trace version {} (this splitvisor reads version {})",
            meta.version,
            mmu_server::trace::VERSION
        ));
    }
    let mut events = Vec::new();
    for e in d {
        let e = e.map_err(|e| format!("the mmu-server's stream: {e}"))?;
        events.push(match e {
            Event::Meta(_) => return Err("a second set-up in the mmu-server's stream".into()),
            Event::Exit { tsc, rec } => MmuEv::Exit {
                tsc,
                rec: rec.as_bytes().to_vec(),
            },
            Event::Reply {
                tsc,
                forward,
                resume,
            } => MmuEv::Reply {
                tsc,
                forward: forward.map(|f| f.as_bytes().to_vec()),
                resume: resume.as_bytes().to_vec(),
            },
            Event::Refused(e) => MmuEv::Refused(e),
            Event::Install {
                tsc,
                ticks,
                entries,
                result,
            } => {
                let (result, index, error) = match result {
                    InstallResult::Ok => (0, 0, 0),
                    InstallResult::Refused { index, error } => (1, index, error),
                    InstallResult::Failed => (2, 0, 0),
                };
                MmuEv::Install {
                    tsc,
                    ticks,
                    entries: entries.as_bytes().to_vec(),
                    result,
                    index,
                    error,
                }
            }
            Event::Limit => MmuEv::Limit,
            Event::Flush(t) => MmuEv::Flush(t),
        });
    }
    Ok((meta.version, events))
}

impl ArchivedMmuEv {
    /// The event in the mmu-server's own vocabulary (records copied out).
    pub fn event(&self) -> mmu_server::trace::Event {
        use mmu_server::trace::Event;
        match self {
            ArchivedMmuEv::Exit { tsc, rec } => Event::Exit {
                tsc: tsc.to_native(),
                rec: read(rec),
            },
            ArchivedMmuEv::Reply {
                tsc,
                forward,
                resume,
            } => Event::Reply {
                tsc: tsc.to_native(),
                forward: forward.as_ref().map(|f| read(f)),
                resume: read(resume),
            },
            ArchivedMmuEv::Refused(e) => Event::Refused(*e),
            ArchivedMmuEv::Install {
                tsc,
                ticks,
                entries,
                result,
                index,
                error,
            } => Event::Install {
                tsc: tsc.to_native(),
                ticks: ticks.to_native(),
                entries: entries
                    .chunks_exact(core::mem::size_of::<ipc_proto::mmu::Install>())
                    .map(read)
                    .collect(),
                result: match result {
                    0 => InstallResult::Ok,
                    1 => InstallResult::Refused {
                        index: index.to_native(),
                        error: error.to_native(),
                    },
                    _ => InstallResult::Failed,
                },
            },
            ArchivedMmuEv::Limit => Event::Limit,
            ArchivedMmuEv::Flush(t) => Event::Flush(t.to_native()),
        }
    }
}

impl Ev {
    fn from_event(e: &Event<'_>) -> Self {
        match *e {
            // Kept in the trace's own fields (`from_stream`).
            Event::Meta(_) => Ev::Limit,
            Event::Exit { tsc, rec } => Ev::Exit {
                tsc,
                rec: rec.as_bytes().to_vec(),
            },
            Event::Resume { tsc, resume } => Ev::Resume {
                tsc,
                resume: resume.as_bytes().to_vec(),
            },
            Event::FirstRun { tsc } => Ev::FirstRun { tsc },
            Event::VcpuError(e) => Ev::VcpuError(e),
            Event::Now(t) => Ev::Now(t),
            Event::Cpuid(l, s, r) => Ev::Cpuid(l, s, r),
            Event::Flag(f, v) => Ev::Flag(f as u8, v),
            Event::Xcr0(x) => Ev::Xcr0(x),
            Event::MemRead { gpa, len, bytes } => Ev::MemRead(gpa, len, bytes.map(<[u8]>::to_vec)),
            Event::MemWrite { gpa, len, ok, hash } => Ev::MemWrite(gpa, len, ok, hash),
            Event::ConsoleIn { asked, bytes } => Ev::ConsoleIn(asked, bytes.to_vec()),
            Event::ConsoleOut { len, hash } => Ev::ConsoleOut(len, hash),
            Event::Stats(s) => Ev::Stats(s.map(|s| s.as_bytes().to_vec())),
            Event::MmuStats(m) => Ev::MmuStats(m.map(|m| m.as_bytes().to_vec())),
            Event::Segments(s) => Ev::Segments(s.map(|s| s.as_bytes().to_vec())),
            Event::WaitUntil(t) => Ev::WaitUntil(t),
            Event::End { ending, stats } => {
                let (kind, status) = match ending {
                    Ending::Stop { status } => (0, status),
                    Ending::Reset => (1, 0),
                    Ending::Fail => (2, 0),
                };
                Ev::End(
                    kind,
                    status,
                    [
                        stats.emulated,
                        stats.irqs,
                        stats.exceptions,
                        stats.windows,
                        stats.warps,
                        stats.notifications,
                        stats.busy_halts,
                        stats.busy_exits,
                    ],
                )
            }
            Event::Limit => Ev::Limit,
            Event::Flush(t) => Ev::Flush(t),
            Event::Sample { stats, mmu } => Ev::Sample(
                stats.as_bytes().to_vec(),
                mmu.map(|m| m.as_bytes().to_vec()),
            ),
        }
    }
}

fn read<T: zerocopy::FromBytes>(b: &[u8]) -> T {
    T::read_from_bytes(b).unwrap_or_else(|_| T::new_zeroed())
}

impl ArchivedEv {
    /// The event in the handler's own vocabulary (bytes borrowed from the
    /// archive; exit records and resumes copied out, 280 and 224 bytes).
    pub fn event(&self) -> Event<'_> {
        match self {
            ArchivedEv::Exit { tsc, rec } => Event::Exit {
                tsc: tsc.to_native(),
                rec: read(rec),
            },
            ArchivedEv::Resume { tsc, resume } => Event::Resume {
                tsc: tsc.to_native(),
                resume: read(resume),
            },
            ArchivedEv::FirstRun { tsc } => Event::FirstRun {
                tsc: tsc.to_native(),
            },
            ArchivedEv::VcpuError(e) => Event::VcpuError(*e),
            ArchivedEv::Now(t) => Event::Now(t.to_native()),
            ArchivedEv::Cpuid(l, s, r) => Event::Cpuid(
                l.to_native(),
                s.to_native(),
                [
                    r[0].to_native(),
                    r[1].to_native(),
                    r[2].to_native(),
                    r[3].to_native(),
                ],
            ),
            ArchivedEv::Flag(f, v) => Event::Flag(
                match f {
                    1 => Flag::Rdtscp,
                    2 => Flag::Xsave,
                    _ => Flag::WaitForInput,
                },
                *v,
            ),
            ArchivedEv::Xcr0(x) => Event::Xcr0(x.as_ref().map(|x| x.to_native())),
            ArchivedEv::MemRead(gpa, len, bytes) => Event::MemRead {
                gpa: gpa.to_native(),
                len: len.to_native(),
                bytes: bytes.as_ref().map(|b| b.as_slice()),
            },
            ArchivedEv::MemWrite(gpa, len, ok, hash) => Event::MemWrite {
                gpa: gpa.to_native(),
                len: len.to_native(),
                ok: *ok,
                hash: hash.to_native(),
            },
            ArchivedEv::ConsoleIn(asked, bytes) => Event::ConsoleIn {
                asked: asked.to_native(),
                bytes: bytes.as_slice(),
            },
            ArchivedEv::ConsoleOut(len, hash) => Event::ConsoleOut {
                len: len.to_native(),
                hash: hash.to_native(),
            },
            ArchivedEv::Stats(s) => Event::Stats(match s {
                rkyv::result::ArchivedResult::Ok(b) => Ok(read(b)),
                rkyv::result::ArchivedResult::Err(e) => Err(*e),
            }),
            ArchivedEv::MmuStats(m) => Event::MmuStats(m.as_ref().map(|b| read(b))),
            ArchivedEv::Segments(s) => Event::Segments(s.as_ref().map(|b| read(b))),
            ArchivedEv::WaitUntil(t) => Event::WaitUntil(t.to_native()),
            ArchivedEv::End(kind, status, w) => Event::End {
                ending: match kind {
                    0 => Ending::Stop { status: *status },
                    1 => Ending::Reset,
                    _ => Ending::Fail,
                },
                stats: VmmStats {
                    emulated: w[0].to_native(),
                    irqs: w[1].to_native(),
                    exceptions: w[2].to_native(),
                    windows: w[3].to_native(),
                    warps: w[4].to_native(),
                    notifications: w[5].to_native(),
                    busy_halts: w[6].to_native(),
                    busy_exits: w[7].to_native(),
                },
            },
            ArchivedEv::Limit => Event::Limit,
            ArchivedEv::Flush(t) => Event::Flush(t.to_native()),
            ArchivedEv::Sample(s, m) => Event::Sample {
                stats: read(s),
                mmu: m.as_ref().map(|b| read(b)),
            },
        }
    }
}

impl ArchivedTrace {
    /// The set-up the trace was recorded with.
    pub fn meta(&self) -> Meta {
        Meta {
            version: self.version,
            board: self.board.to_native(),
            mmu_mode: self.mmu_mode.to_native(),
            uart_channel: self.uart_channel.to_native(),
            pci_functions: self.pci_functions,
            tsc_hz: self.tsc_hz.to_native(),
            guest_ram_bytes: self.guest_ram_bytes.to_native(),
        }
    }

    /// Exits in the trace.
    pub fn exits(&self) -> usize {
        self.events
            .iter()
            .filter(|e| matches!(e, ArchivedEv::Exit { .. }))
            .count()
    }

    /// Exits the mmu-server got, and its install batches.
    pub fn mmu_counts(&self) -> (usize, usize) {
        self.mmu_events.iter().fold((0, 0), |(x, i), e| match e {
            ArchivedMmuEv::Exit { .. } => (x + 1, i),
            ArchivedMmuEv::Install { .. } => (x, i + 1),
            _ => (x, i),
        })
    }
}

/// An archive's bytes, aligned as [`access`] needs them.
pub type Bytes = rkyv::util::AlignedVec;

/// Reads the archive at `path` into aligned memory.
pub fn load(path: &std::path::Path) -> Result<Bytes, String> {
    let raw = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut b = Bytes::with_capacity(raw.len());
    b.extend_from_slice(&raw);
    Ok(b)
}

/// The trace in an archive's bytes (as [`load`] reads them: aligned),
/// checked, read in place; an archive of another format version is
/// refused by name.
pub fn access(bytes: &[u8]) -> Result<&ArchivedTrace, String> {
    if bytes.len() < HEADER_LEN || &bytes[..12] != MAGIC {
        return Err(format!(
            "not a trace archive of this splitvisor (format version {ARCHIVE_VERSION}): \
             no header; archives written before the mmu-server's events were added \
             (format version 2 and older) are not read, record the run again with run --trace"
        ));
    }
    let version = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
    if version != ARCHIVE_VERSION {
        return Err(format!(
            "trace archive format version {version}; this splitvisor reads version {ARCHIVE_VERSION} \
             (record the run again with run --trace)"
        ));
    }
    rkyv::access::<ArchivedTrace, rkyv::rancor::Error>(&bytes[HEADER_LEN..])
        .map_err(|e| format!("not a splitvisor trace archive: {e}"))
}

/// A console stream writer that takes the trace lines out: every other
/// byte goes to `inner` as it comes, the lines' bytes are kept, the
/// vmm-server's and the mmu-server's apart (by their marks).
pub struct Splitter<W> {
    inner: W,
    /// The mark of the line being read, if in one.
    in_line: Option<u8>,
    text: Vec<u8>,
    /// The vmm-server's trace stream so far.
    pub stream: Vec<u8>,
    /// The mmu-server's trace stream so far.
    pub mmu_stream: Vec<u8>,
    /// Lines that were not base64 (cut or garbled).
    pub bad_lines: u64,
}

impl<W: Write> Splitter<W> {
    /// Passes the console through to `inner`.
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            in_line: None,
            text: Vec::new(),
            stream: Vec::new(),
            mmu_stream: Vec::new(),
            bad_lines: 0,
        }
    }

    fn end_line(&mut self) {
        let out = match self.in_line {
            Some(MMU_MARK) => &mut self.mmu_stream,
            _ => &mut self.stream,
        };
        // A garbled line adds nothing: the stream stays whole up to it.
        let mut bytes = Vec::with_capacity(self.text.len() / 4 * 3);
        if base64_decode(&self.text, &mut bytes).is_some() {
            out.extend_from_slice(&bytes);
        } else {
            self.bad_lines += 1;
        }
        self.text.clear();
        self.in_line = None;
    }
}

impl<W: Write> Write for Splitter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut rest = buf;
        while !rest.is_empty() {
            if self.in_line.is_some() {
                match rest.iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        self.text.extend_from_slice(&rest[..i]);
                        self.end_line();
                        rest = &rest[i + 1..];
                    }
                    None => {
                        self.text.extend_from_slice(rest);
                        rest = &[];
                    }
                }
            } else {
                let i = rest
                    .iter()
                    .position(|&b| b == VMM_MARK || b == MMU_MARK)
                    .unwrap_or(rest.len());
                self.inner.write_all(&rest[..i])?;
                if i < rest.len() {
                    self.in_line = Some(rest[i]);
                    rest = &rest[i + 1..];
                } else {
                    rest = &[];
                }
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_splitter_keeps_trace_lines_and_passes_the_rest() {
        let mut s = Splitter::new(Vec::new());
        // "abc" in base64 is YWJj; the line is cut across two writes.
        s.write_all(b"hello\n\x1eYW").unwrap();
        s.write_all(b"Jj\nworld").unwrap();
        s.write_all(b" \x1e!!\n").unwrap();
        // The mmu-server's line ("xyz") between two of the vmm-server's.
        s.write_all(b"\x1deHl6\n\x1eZGVm\nend").unwrap();
        assert_eq!(s.inner, b"hello\nworld end");
        assert_eq!(s.stream, b"abcdef");
        assert_eq!(s.mmu_stream, b"xyz");
        assert_eq!(s.bad_lines, 1);
    }

    #[test]
    fn both_streams_go_into_the_archive_and_an_old_archive_is_refused_by_name() {
        use mmu_server::trace::{Event as MmuEvent, Meta as MmuMeta, Recorder, Sink};
        struct Lines(Vec<u8>);
        impl Sink for Lines {
            fn line(&mut self, bytes: &[u8]) {
                base64_decode(&bytes[1..bytes.len() - 1], &mut self.0).unwrap();
            }
            fn tsc(&mut self) -> u64 {
                0
            }
        }
        let meta = MmuMeta {
            version: mmu_server::trace::VERSION,
            mmu_mode: 1,
            tsc_hz: 1,
        };
        let mut rec = Recorder::new(Lines(Vec::new()), 0, meta);
        let install = ipc_proto::mmu::Install {
            table: 3,
            index: 4,
            level: 1,
            reserved: 0,
            entry: 0x1067,
        };
        rec.install(10, 5, &[install, install], InstallResult::Ok);
        let exit = ipc_proto::ExitRecord {
            exit_code: 0x4e,
            ..Default::default()
        };
        rec.exit(20, &Ok(exit));
        rec.reply(30, &mmu_server::Reply::Run(ipc_proto::Resume::default()));
        let mmu = std::mem::take(&mut rec.w.sink.0);

        let mut vmm = vmm_server::trace::Recorder::new(
            VmmLines(Vec::new()),
            0,
            Meta {
                version: vmm_server::trace::VERSION,
                ..Default::default()
            },
        );
        vmm.end(Ending::Stop { status: 0 }, VmmStats::default());
        let t = Trace::from_streams(&std::mem::take(&mut vmm.w.sink.0), &mmu).unwrap();
        assert_eq!(t.mmu_wire_bytes, mmu.len() as u64);
        let mut bytes = Bytes::new();
        bytes.extend_from_slice(&t.to_bytes());
        let a = access(&bytes).unwrap();
        assert_eq!(a.mmu_counts(), (1, 1));
        let got: Vec<MmuEvent> = a.mmu_events.iter().map(|e| e.event()).collect();
        assert_eq!(
            got,
            vec![
                MmuEvent::Install {
                    tsc: 10,
                    ticks: 5,
                    entries: vec![install, install],
                    result: InstallResult::Ok
                },
                MmuEvent::Exit { tsc: 20, rec: exit },
                MmuEvent::Reply {
                    tsc: 30,
                    forward: None,
                    resume: ipc_proto::Resume::default()
                },
            ]
        );
        // An archive as version 2 wrote it: no header.
        let mut old = Bytes::new();
        old.extend_from_slice(&bytes[HEADER_LEN..]);
        let e = access(&old).err().unwrap();
        assert!(e.contains("format version 2 and older"), "{e}");
        let mut newer = bytes.clone();
        newer[12] = 9;
        let e = access(&newer).err().unwrap();
        assert!(e.contains("format version 9"), "{e}");
    }

    struct VmmLines(Vec<u8>);
    impl vmm_server::trace::Sink for VmmLines {
        fn line(&mut self, bytes: &[u8]) {
            base64_decode(&bytes[1..bytes.len() - 1], &mut self.0).unwrap();
        }
        fn tsc(&mut self) -> u64 {
            0
        }
    }
}
