//! Exit traces on the host (`splitvisor run --trace`, `replay`, `stats`).
//!
//! The vmm-server records its exit handler's inputs and decisions as
//! console lines ([`vmm_server::trace`]); [`Splitter`] takes those lines
//! out of the console stream, [`Trace::from_stream`] decodes them, and
//! [`Trace::to_bytes`] writes an rkyv archive that [`access`] reads back
//! in place (checked, no copy). [`replay`] feeds a trace to the same
//! exit handler on the host and compares every decision; [`stats`] turns
//! it into a text summary and SVG plots.
#![deny(missing_docs)]

pub mod replay;
pub mod stats;

use std::io::{self, Write};

use vmm_server::trace::{base64_decode, Decoder, Event, Flag, Meta, LINE_MARK};
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
    }
}
pub use types::*;

impl Trace {
    /// Decodes the stream the console lines carried.
    pub fn from_stream(stream: &[u8]) -> Result<Self, String> {
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
        })
    }

    /// The archive's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        rkyv::to_bytes::<rkyv::rancor::Error>(self)
            .expect("an in-memory trace always serializes")
            .to_vec()
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

/// The trace in an archive's bytes, checked, read in place.
pub fn access(bytes: &[u8]) -> Result<&ArchivedTrace, String> {
    rkyv::access::<ArchivedTrace, rkyv::rancor::Error>(bytes)
        .map_err(|e| format!("not a splitvisor trace archive: {e}"))
}

/// A console stream writer that takes the trace lines out: every other
/// byte goes to `inner` as it comes, the lines' bytes are kept.
pub struct Splitter<W> {
    inner: W,
    in_line: bool,
    text: Vec<u8>,
    /// The trace stream so far.
    pub stream: Vec<u8>,
    /// Lines that were not base64 (cut or garbled).
    pub bad_lines: u64,
}

impl<W: Write> Splitter<W> {
    /// Passes the console through to `inner`.
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            in_line: false,
            text: Vec::new(),
            stream: Vec::new(),
            bad_lines: 0,
        }
    }

    fn end_line(&mut self) {
        if base64_decode(&self.text, &mut self.stream).is_none() {
            self.bad_lines += 1;
        }
        self.text.clear();
        self.in_line = false;
    }
}

impl<W: Write> Write for Splitter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut rest = buf;
        while !rest.is_empty() {
            if self.in_line {
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
                    .position(|&b| b == LINE_MARK)
                    .unwrap_or(rest.len());
                self.inner.write_all(&rest[..i])?;
                if i < rest.len() {
                    self.in_line = true;
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
        assert_eq!(s.inner, b"hello\nworld ");
        assert_eq!(s.stream, b"abc");
        assert_eq!(s.bad_lines, 1);
    }
}
