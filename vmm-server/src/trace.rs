//! A recording of what the exit handler takes in and what it decides, for
//! `splitvisor run --trace FILE` and `splitvisor replay FILE`.
//!
//! Replay must make the same decisions from the same inputs, so the
//! record sits at the handler's boundary: [`Traced`] wraps each of the
//! traits the ring-3 loop hands to [`crate::Vmm`] and [`crate::run`]
//! ([`Stub`], [`Host`], [`GuestMemory`], [`HostWrite`]) and writes an
//! [`Event`] for every call: the inputs (exit records, clock readings,
//! CPUID answers, guest-RAM reads, console input, the stub's counters)
//! and the decisions (resumes, guest-RAM writes, console output, the
//! ending), with TSC stamps around each `VcpuRun`. A [`Traced`] without
//! a recorder only forwards.
//!
//! The events go out as a byte stream cut into console lines (see
//! [`Recorder`]); [`Decoder`] reads the stream back. An exit record or a
//! resume is sent as the words that changed since the previous one (a
//! bitmap, then those words XORed with the old ones, as LEB128), clock readings as the ticks since the last
//! stamp, other numbers as LEB128. The line writing and those encodings
//! are shared with the mmu-server's record (`ipc_proto::trace`'s
//! [`Writer`] and [`Reader`]).

use core::cell::RefCell;

use guest_walk::{GuestMemory, NotRam};
use ipc_proto::stats::MmuStats;
use ipc_proto::trace::{Reader, Writer};
use ipc_proto::{ErrorCode, ExitRecord, Resume, Segment, Stats};
use zerocopy::IntoBytes;

pub use ipc_proto::trace::{DecodeError, Sink, LINE_BYTES};

use crate::console::HostWrite;
use crate::cpuid::HostCpuid;
use crate::server::{Ending, Stub};
use crate::vmm::{Host, VmmStats};

/// Starts each console line that carries this server's trace bytes
/// (`ipc_proto::trace::VMM_MARK`).
pub const LINE_MARK: u8 = ipc_proto::trace::VMM_MARK;
/// The version of the event stream, in [`Event::Meta`].
pub const VERSION: u8 = 2;

/// Event tags on the wire.
mod tag {
    pub const META: u8 = 1;
    pub const EXIT: u8 = 2;
    pub const RESUME: u8 = 3;
    pub const FIRST_RUN: u8 = 4;
    pub const VCPU_ERROR: u8 = 5;
    pub const NOW: u8 = 6;
    pub const CPUID: u8 = 7;
    pub const FLAG: u8 = 8;
    pub const XCR0: u8 = 9;
    pub const MEM_READ: u8 = 10;
    pub const MEM_WRITE: u8 = 11;
    pub const CONSOLE_IN: u8 = 12;
    pub const CONSOLE_OUT: u8 = 13;
    pub const STATS: u8 = 14;
    pub const MMU_STATS: u8 = 15;
    pub const SEGMENTS: u8 = 16;
    pub const WAIT_UNTIL: u8 = 17;
    pub const END: u8 = 18;
    pub const LIMIT: u8 = 19;
    pub const FLUSH: u8 = ipc_proto::trace::FLUSH_TAG;
    pub const SAMPLE: u8 = 21;
}

/// Exits between two samples of the stub's and the mmu-server's counters
/// ([`Event::Sample`]).
pub const SAMPLE_EXITS: u32 = 1000;

/// A yes-or-no answer of the host ([`Event::Flag`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Flag {
    /// [`HostCpuid::offers_rdtscp`].
    Rdtscp = 1,
    /// [`HostCpuid::offers_xsave`].
    Xsave = 2,
    /// [`Host::wait_for_input`].
    WaitForInput = 3,
}

impl Flag {
    fn from_u8(v: u8) -> Option<Self> {
        [Self::Rdtscp, Self::Xsave, Self::WaitForInput]
            .into_iter()
            .find(|f| *f as u8 == v)
    }
}

/// How the VM is set up: what replay needs to build the same handler.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    /// [`VERSION`] of the stream.
    pub version: u8,
    /// `BootInfo::board`.
    pub board: u64,
    /// `BootInfo::mmu_mode` (0: nested paging).
    pub mmu_mode: u64,
    /// `BootInfo::uart_channel` (0: COM1 is the vmm-server's own).
    pub uart_channel: u64,
    /// PCI functions served by servers of their own.
    pub pci_functions: u8,
    /// `BootInfo::tsc_hz`.
    pub tsc_hz: u64,
    /// `BootInfo::guest_ram_bytes`.
    pub guest_ram_bytes: u64,
}

/// One event of the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// The set-up, first in the stream.
    Meta(Meta),
    /// `VcpuRun` returned this exit, at TSC `tsc`.
    Exit {
        /// The TSC when the exit reached the server.
        tsc: u64,
        /// The record.
        rec: ExitRecord,
    },
    /// `VcpuRun` was called with this resume, at TSC `tsc`.
    Resume {
        /// The TSC when the resume left the server.
        tsc: u64,
        /// The resume.
        resume: Resume,
    },
    /// The first `VcpuRun`, which carries no resume.
    FirstRun {
        /// The TSC of the call.
        tsc: u64,
    },
    /// `VcpuRun` failed with this error code (as `ErrorCode` numbers it).
    VcpuError(u8),
    /// [`Host::now`] read this.
    Now(u64),
    /// [`HostCpuid::host_cpuid`] of (leaf, subleaf) answered this.
    Cpuid(u32, u32, [u32; 4]),
    /// A yes-or-no answer of the host.
    Flag(Flag, bool),
    /// [`HostCpuid::current_xcr0`] answered this.
    Xcr0(Option<u64>),
    /// A guest-RAM read of `len` bytes at `gpa`: the bytes, or `None` for
    /// [`NotRam`].
    MemRead {
        /// Guest-physical address.
        gpa: u64,
        /// Bytes asked for.
        len: u64,
        /// What was read.
        bytes: Option<&'a [u8]>,
    },
    /// A guest-RAM write: where, how long, whether it was RAM and an
    /// FNV-1a hash of the data (a decision; the data itself is not kept).
    MemWrite {
        /// Guest-physical address.
        gpa: u64,
        /// Bytes written.
        len: u64,
        /// The write reached RAM.
        ok: bool,
        /// [`fnv1a`] of the data.
        hash: u32,
    },
    /// Console input: `asked` bytes of room, these bytes came.
    ConsoleIn {
        /// The room the caller gave.
        asked: u64,
        /// What came.
        bytes: &'a [u8],
    },
    /// Console output: its length and [`fnv1a`] hash.
    ConsoleOut {
        /// Bytes written.
        len: u64,
        /// [`fnv1a`] of them.
        hash: u32,
    },
    /// `StatsRead` answered this (or failed with this error number).
    Stats(Result<Stats, u8>),
    /// The mmu-server's counters.
    MmuStats(Option<MmuStats>),
    /// The platform's segment registers at the exit.
    Segments(Option<[Segment; 6]>),
    /// [`Host::wait_until`] was asked to wait until this TSC.
    WaitUntil(u64),
    /// How the run ended, with the handler's counters.
    End {
        /// The ending.
        ending: Ending,
        /// The handler's counters at the end.
        stats: VmmStats,
    },
    /// The recording stopped here (`--trace-exits`): the run went on.
    Limit,
    /// TSC ticks spent sending trace lines since the last stamp: the
    /// cost of tracing, which `splitvisor stats` takes out of latencies.
    Flush(u64),
    /// The stub's and the mmu-server's counters, read by the recorder
    /// every [`SAMPLE_EXITS`] exits (for figures over time: the shadow
    /// cache's hit rate); no input of the handler's.
    Sample {
        /// The stub's counters.
        stats: Stats,
        /// The mmu-server's, if it keeps any.
        mmu: Option<MmuStats>,
    },
}

/// FNV-1a, 32 bits: a cheap check that written bytes are the same.
pub fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |h: u32, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// Collects events into console lines of [`LINE_BYTES`] trace bytes.
pub struct Recorder<S: Sink> {
    /// The lines and the encodings.
    pub w: Writer<S>,
    on: bool,
    prev_exit: ExitRecord,
    prev_resume: Resume,
    exits: u32,
    max_exits: u32,
}

impl<S: Sink> Recorder<S> {
    /// A recorder that stops after `max_exits` exits (0: never).
    pub fn new(sink: S, max_exits: u32, meta: Meta) -> Self {
        let mut r = Self {
            w: Writer::new(sink, LINE_MARK),
            on: true,
            prev_exit: ExitRecord::default(),
            prev_resume: Resume::default(),
            exits: 0,
            max_exits,
        };
        r.w.put(&[tag::META, VERSION, meta.pci_functions]);
        r.w.varint(meta.board);
        r.w.varint(meta.mmu_mode);
        r.w.varint(meta.uart_channel);
        r.w.put(&meta.tsc_hz.to_le_bytes());
        r.w.put(&meta.guest_ram_bytes.to_le_bytes());
        r
    }

    /// Whether events are still recorded.
    pub fn is_on(&self) -> bool {
        self.on
    }

    /// Sends what is buffered as one line.
    pub fn flush(&mut self) {
        self.w.flush();
    }

    fn event(&mut self, f: impl FnOnce(&mut Self)) {
        if self.on {
            f(self);
        }
    }

    fn resume(&mut self, resume: Option<&Resume>) {
        let tsc = self.w.sink.tsc();
        self.w.flushes();
        self.event(|r| match resume {
            Some(res) => {
                r.w.put(&[tag::RESUME]);
                r.w.tsc_value(tsc);
                let old = r.prev_resume;
                r.w.delta(old.as_bytes(), res.as_bytes());
                r.prev_resume = *res;
            }
            None => {
                r.w.put(&[tag::FIRST_RUN]);
                r.w.tsc_value(tsc);
            }
        });
        if self.on && self.max_exits != 0 && self.exits >= self.max_exits {
            self.w.put(&[tag::LIMIT]);
            self.flush();
            self.on = false;
        }
    }

    fn exit(&mut self, got: &Result<ExitRecord, ErrorCode>) {
        let tsc = self.w.sink.tsc();
        self.w.flushes();
        self.event(|r| match got {
            Ok(rec) => {
                r.exits += 1;
                r.w.put(&[tag::EXIT]);
                r.w.tsc_value(tsc);
                let old = r.prev_exit;
                r.w.delta(old.as_bytes(), rec.as_bytes());
                r.prev_exit = *rec;
            }
            Err(e) => r.w.put(&[tag::VCPU_ERROR, *e as u8]),
        });
    }

    /// Records how the run ended and sends what is buffered.
    pub fn end(&mut self, ending: Ending, stats: VmmStats) {
        self.event(|r| {
            let (kind, status) = match ending {
                Ending::Stop { status } => (0, status),
                Ending::Reset => (1, 0),
                Ending::Fail => (2, 0),
            };
            r.w.put(&[tag::END, kind, status]);
            for v in vmm_stats_words(&stats) {
                r.w.varint(v);
            }
        });
        self.flush();
        self.on = false;
    }
}

fn vmm_stats_words(s: &VmmStats) -> [u64; 8] {
    [
        s.emulated,
        s.irqs,
        s.exceptions,
        s.windows,
        s.warps,
        s.notifications,
        s.busy_halts,
        s.busy_exits,
    ]
}

#[cold]
#[inline(never)]
fn record_into<S: Sink>(r: &RefCell<Recorder<S>>, f: impl FnOnce(&mut Recorder<S>)) {
    let mut r = r.borrow_mut();
    if r.on {
        f(&mut r);
    }
}

/// Every [`SAMPLE_EXITS`] recorded exits, the counters of the stub and
/// the mmu-server (an extra `StatsRead`, in traced runs only).
#[cold]
#[inline(never)]
fn sample<S: Sink>(rec: &RefCell<Recorder<S>>, stub: &mut impl Stub) {
    let due = {
        let r = rec.borrow();
        r.on && r.exits.is_multiple_of(SAMPLE_EXITS)
    };
    if !due {
        return;
    }
    let Ok(stats) = stub.stats_read() else {
        return;
    };
    let mmu = stub.mmu_stats();
    let mut r = rec.borrow_mut();
    r.w.put(&[tag::SAMPLE]);
    r.w.put(stats.as_bytes());
    r.w.put(&[u8::from(mmu.is_some())]);
    if let Some(m) = &mmu {
        r.w.put(m.as_bytes());
    }
}

/// The recorder a [`Traced`] writes to, if any.
pub type Rec<'r, S> = Option<&'r RefCell<Recorder<S>>>;

/// `inner` with every call through it recorded into `rec` (when there is
/// one).
pub struct Traced<'r, T, S: Sink> {
    /// The wrapped platform piece.
    pub inner: T,
    rec: Rec<'r, S>,
}

impl<'r, T, S: Sink> Traced<'r, T, S> {
    /// `inner`, recorded into `rec`.
    pub fn new(inner: T, rec: Rec<'r, S>) -> Self {
        Self { inner, rec }
    }

    /// A run without a recorder pays this test only: the recording is
    /// out of line.
    #[inline(always)]
    fn record(&self, f: impl FnOnce(&mut Recorder<S>)) {
        if let Some(r) = self.rec {
            record_into(r, f);
        }
    }
}

impl<T: Stub, S: Sink> Stub for Traced<'_, T, S> {
    fn vcpu_run(&mut self, resume: Option<&Resume>) -> Result<ExitRecord, ErrorCode> {
        self.record(|r| r.resume(resume));
        let got = self.inner.vcpu_run(resume);
        self.record(|r| r.exit(&got));
        if let (Some(rec), Ok(_)) = (self.rec, &got) {
            sample(rec, &mut self.inner);
        }
        got
    }

    fn stats_read(&mut self) -> Result<Stats, ErrorCode> {
        let got = self.inner.stats_read();
        self.record(|r| match &got {
            Ok(s) => {
                r.w.put(&[tag::STATS, 0]);
                r.w.put(s.as_bytes());
            }
            Err(e) => r.w.put(&[tag::STATS, *e as u8]),
        });
        got
    }

    fn mmu_stats(&mut self) -> Option<MmuStats> {
        let got = self.inner.mmu_stats();
        self.record(|r| {
            r.w.put(&[tag::MMU_STATS, u8::from(got.is_some())]);
            if let Some(m) = &got {
                r.w.put(m.as_bytes());
            }
        });
        got
    }

    fn segments(&mut self) -> Option<[Segment; 6]> {
        let got = self.inner.segments();
        self.record(|r| {
            r.w.put(&[tag::SEGMENTS, u8::from(got.is_some())]);
            if let Some(s) = &got {
                r.w.put(s.as_bytes());
            }
        });
        got
    }
}

impl<T: HostCpuid, S: Sink> HostCpuid for Traced<'_, T, S> {
    fn host_cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
        let got = self.inner.host_cpuid(leaf, subleaf);
        self.record(|r| {
            r.w.put(&[tag::CPUID]);
            r.w.put(&leaf.to_le_bytes());
            r.w.put(&subleaf.to_le_bytes());
            r.w.put(got.as_bytes());
        });
        got
    }

    fn offers_rdtscp(&self) -> bool {
        let got = self.inner.offers_rdtscp();
        self.record(|r| r.w.put(&[tag::FLAG, Flag::Rdtscp as u8, u8::from(got)]));
        got
    }

    fn offers_xsave(&self) -> bool {
        let got = self.inner.offers_xsave();
        self.record(|r| r.w.put(&[tag::FLAG, Flag::Xsave as u8, u8::from(got)]));
        got
    }

    fn current_xcr0(&self) -> Option<u64> {
        let got = self.inner.current_xcr0();
        self.record(|r| {
            r.w.put(&[tag::XCR0, u8::from(got.is_some())]);
            r.w.put(&got.unwrap_or(0).to_le_bytes());
        });
        got
    }
}

impl<T: Host, S: Sink> Host for Traced<'_, T, S> {
    fn now(&mut self) -> u64 {
        let got = self.inner.now();
        self.record(|r| {
            r.w.put(&[tag::NOW]);
            r.w.tsc_value(got);
        });
        got
    }

    fn ticks_per_second(&self) -> u64 {
        self.inner.ticks_per_second()
    }

    fn wait_for_input(&mut self) -> bool {
        let got = self.inner.wait_for_input();
        self.record(|r| {
            r.w.put(&[tag::FLAG, Flag::WaitForInput as u8, u8::from(got)])
        });
        got
    }

    fn wait_until(&mut self, t: u64) {
        self.record(|r| {
            r.w.put(&[tag::WAIT_UNTIL]);
            r.w.varint(t);
        });
        self.inner.wait_until(t);
    }
}

impl<T: GuestMemory, S: Sink> GuestMemory for Traced<'_, T, S> {
    fn ram_bytes(&self) -> u64 {
        self.inner.ram_bytes()
    }

    fn read_phys(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), NotRam> {
        let got = self.inner.read_phys(gpa, buf);
        self.record(|r| {
            r.w.put(&[tag::MEM_READ]);
            r.w.varint(gpa);
            r.w.varint(buf.len() as u64);
            r.w.put(&[u8::from(got.is_ok())]);
            if got.is_ok() {
                r.w.put(buf);
            }
        });
        got
    }

    fn write_phys(&mut self, gpa: u64, data: &[u8]) -> Result<(), NotRam> {
        let got = self.inner.write_phys(gpa, data);
        self.record(|r| {
            r.w.put(&[tag::MEM_WRITE]);
            r.w.varint(gpa);
            r.w.varint(data.len() as u64);
            r.w.put(&[u8::from(got.is_ok())]);
            r.w.put(&fnv1a(data).to_le_bytes());
        });
        got
    }
}

impl<T: HostWrite, S: Sink> HostWrite for Traced<'_, T, S> {
    fn write_host(&mut self, bytes: &[u8]) {
        self.record(|r| {
            r.w.put(&[tag::CONSOLE_OUT]);
            r.w.varint(bytes.len() as u64);
            r.w.put(&fnv1a(bytes).to_le_bytes());
        });
        self.inner.write_host(bytes);
    }

    fn read_host(&mut self, buf: &mut [u8]) -> usize {
        let n = self.inner.read_host(buf).min(buf.len());
        self.record(|r| {
            r.w.put(&[tag::CONSOLE_IN]);
            r.w.varint(buf.len() as u64);
            r.w.varint(n as u64);
            r.w.put(&buf[..n]);
        });
        n
    }
}

/// Decodes standard base64 (with padding) and appends it to `out`;
/// `None` for a byte outside the alphabet or a cut-off group.
pub fn base64_decode(text: &[u8], out: &mut alloc::vec::Vec<u8>) -> Option<()> {
    ipc_proto::trace::base64_decode(text, |b| out.extend_from_slice(b))
}

/// Reads a stream back into [`Event`]s.
pub struct Decoder<'a> {
    r: Reader<'a>,
    prev_exit: ExitRecord,
    prev_resume: Resume,
}

impl<'a> Decoder<'a> {
    /// A decoder over the whole stream (the lines' bytes, in order).
    pub fn new(bytes: &'a [u8]) -> Self {
        Self {
            r: Reader::new(bytes),
            prev_exit: ExitRecord::default(),
            prev_resume: Resume::default(),
        }
    }

    fn next_event(&mut self) -> Result<Event<'a>, DecodeError> {
        Ok(match self.r.u8()? {
            tag::META => Event::Meta(Meta {
                version: self.r.u8()?,
                pci_functions: self.r.u8()?,
                board: self.r.varint()?,
                mmu_mode: self.r.varint()?,
                uart_channel: self.r.varint()?,
                tsc_hz: self.r.u64()?,
                guest_ram_bytes: self.r.u64()?,
            }),
            tag::EXIT => {
                let tsc = self.r.tsc_value()?;
                let mut rec = self.prev_exit;
                self.r.delta(rec.as_mut_bytes())?;
                self.prev_exit = rec;
                Event::Exit { tsc, rec }
            }
            tag::RESUME => {
                let tsc = self.r.tsc_value()?;
                let mut resume = self.prev_resume;
                self.r.delta(resume.as_mut_bytes())?;
                self.prev_resume = resume;
                Event::Resume { tsc, resume }
            }
            tag::FIRST_RUN => Event::FirstRun {
                tsc: self.r.tsc_value()?,
            },
            tag::VCPU_ERROR => Event::VcpuError(self.r.u8()?),
            tag::NOW => Event::Now(self.r.tsc_value()?),
            tag::CPUID => Event::Cpuid(
                self.r.u32()?,
                self.r.u32()?,
                [self.r.u32()?, self.r.u32()?, self.r.u32()?, self.r.u32()?],
            ),
            tag::FLAG => {
                let f = Flag::from_u8(self.r.u8()?).ok_or(self.r.err("an unknown flag"))?;
                Event::Flag(f, self.r.u8()? != 0)
            }
            tag::XCR0 => {
                let some = self.r.u8()? != 0;
                let v = self.r.u64()?;
                Event::Xcr0(some.then_some(v))
            }
            tag::MEM_READ => {
                let gpa = self.r.varint()?;
                let len = self.r.varint()?;
                let bytes = if self.r.u8()? != 0 {
                    let n = usize::try_from(len).map_err(|_| self.r.err("a read too long"))?;
                    Some(self.r.take(n)?)
                } else {
                    None
                };
                Event::MemRead { gpa, len, bytes }
            }
            tag::MEM_WRITE => Event::MemWrite {
                gpa: self.r.varint()?,
                len: self.r.varint()?,
                ok: self.r.u8()? != 0,
                hash: self.r.u32()?,
            },
            tag::CONSOLE_IN => {
                let asked = self.r.varint()?;
                let n =
                    usize::try_from(self.r.varint()?).map_err(|_| self.r.err("input too long"))?;
                Event::ConsoleIn {
                    asked,
                    bytes: self.r.take(n)?,
                }
            }
            tag::CONSOLE_OUT => Event::ConsoleOut {
                len: self.r.varint()?,
                hash: self.r.u32()?,
            },
            tag::STATS => match self.r.u8()? {
                0 => Event::Stats(Ok(self.r.read()?)),
                e => Event::Stats(Err(e)),
            },
            tag::MMU_STATS => match self.r.u8()? {
                0 => Event::MmuStats(None),
                _ => Event::MmuStats(Some(self.r.read()?)),
            },
            tag::SEGMENTS => match self.r.u8()? {
                0 => Event::Segments(None),
                _ => Event::Segments(Some(self.r.read()?)),
            },
            tag::WAIT_UNTIL => Event::WaitUntil(self.r.varint()?),
            tag::END => {
                let kind = self.r.u8()?;
                let status = self.r.u8()?;
                let ending = match kind {
                    0 => Ending::Stop { status },
                    1 => Ending::Reset,
                    2 => Ending::Fail,
                    _ => return Err(self.r.err("an unknown ending")),
                };
                let mut w = [0u64; 8];
                for v in &mut w {
                    *v = self.r.varint()?;
                }
                let [emulated, irqs, exceptions, windows, warps, notifications, busy_halts, busy_exits] =
                    w;
                Event::End {
                    ending,
                    stats: VmmStats {
                        emulated,
                        irqs,
                        exceptions,
                        windows,
                        warps,
                        notifications,
                        busy_halts,
                        busy_exits,
                    },
                }
            }
            tag::LIMIT => Event::Limit,
            tag::FLUSH => Event::Flush(self.r.varint()?),
            tag::SAMPLE => {
                let stats = self.r.read()?;
                let mmu = match self.r.u8()? {
                    0 => None,
                    _ => Some(self.r.read()?),
                };
                Event::Sample { stats, mmu }
            }
            _ => {
                self.r.at -= 1;
                return Err(self.r.err("an unknown event tag"));
            }
        })
    }
}

impl<'a> Iterator for Decoder<'a> {
    type Item = Result<Event<'a>, DecodeError>;

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

#[cfg(test)]
mod tests {
    use super::*;
    use ipc_proto::trace::base64_encode;
    use std::vec::Vec;

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
            assert_eq!(l[0], LINE_MARK);
            assert_eq!(*l.last().unwrap(), b'\n');
            assert!(l.len() <= 4096);
            base64_decode(&l[1..l.len() - 1], &mut out).unwrap();
        }
        out
    }

    struct Fixed(Vec<ExitRecord>);

    impl Stub for Fixed {
        fn vcpu_run(&mut self, _: Option<&Resume>) -> Result<ExitRecord, ErrorCode> {
            self.0.pop().ok_or(ErrorCode::NotReady)
        }
        fn stats_read(&mut self) -> Result<Stats, ErrorCode> {
            Ok(Stats {
                exits_total: 7,
                ..Default::default()
            })
        }
    }

    #[test]
    fn base64_round_trips_every_length() {
        for n in 0..10u8 {
            let data: Vec<u8> = (0..n)
                .map(|i: u8| i.wrapping_mul(37).wrapping_add(5))
                .collect();
            let mut text = [0u8; 16];
            let len = base64_encode(&data, &mut text);
            let mut back = Vec::new();
            base64_decode(&text[..len], &mut back).unwrap();
            assert_eq!(back, data);
        }
        let mut text = [0u8; 8];
        let n = base64_encode(b"Man", &mut text);
        assert_eq!(&text[..n], b"TWFu");
    }

    #[test]
    fn what_a_traced_stub_and_memory_see_decodes_back() {
        let mut a = ExitRecord {
            exit_code: 0x7b,
            sequence: 1,
            ..Default::default()
        };
        a.regs.rip = 0x1000;
        let mut b = a;
        b.sequence = 2;
        b.regs.rax = u64::MAX;
        let meta = Meta {
            version: VERSION,
            tsc_hz: 1_000_000_000,
            guest_ram_bytes: 1 << 20,
            ..Default::default()
        };
        let rec = RefCell::new(Recorder::new(Lines::default(), 0, meta));
        let mut stub = Traced::new(Fixed(std::vec![b, a]), Some(&rec));
        let mut bytes = std::vec![7u8; 64];
        let mut mem = Traced::new(guest_walk::Ram::new(&mut bytes), Some(&rec));
        let resume = Resume {
            flags: 1,
            ..Default::default()
        };
        assert_eq!(stub.vcpu_run(None), Ok(a));
        let mut buf = [0u8; 4];
        mem.read_phys(8, &mut buf).unwrap();
        assert!(mem.read_phys(1 << 30, &mut buf).is_err());
        mem.write_phys(0, b"hi").unwrap();
        assert_eq!(stub.vcpu_run(Some(&resume)), Ok(b));
        stub.stats_read().unwrap();
        rec.borrow_mut()
            .end(Ending::Stop { status: 3 }, VmmStats::default());
        let lines = std::mem::take(&mut rec.borrow_mut().w.sink.lines);
        let s = stream(&lines);
        assert_eq!(s.len() as u64, rec.borrow().w.bytes);
        let events: Vec<Event> = Decoder::new(&s).map(Result::unwrap).collect();
        assert_eq!(events[0], Event::Meta(meta));
        assert_eq!(events[1], Event::FirstRun { tsc: 100 });
        assert_eq!(events[2], Event::Exit { tsc: 200, rec: a });
        assert_eq!(
            events[3],
            Event::MemRead {
                gpa: 8,
                len: 4,
                bytes: Some(&[7, 7, 7, 7])
            }
        );
        assert_eq!(
            events[4],
            Event::MemRead {
                gpa: 1 << 30,
                len: 4,
                bytes: None
            }
        );
        assert_eq!(
            events[5],
            Event::MemWrite {
                gpa: 0,
                len: 2,
                ok: true,
                hash: fnv1a(b"hi")
            }
        );
        assert_eq!(events[6], Event::Resume { tsc: 300, resume });
        assert_eq!(events[7], Event::Exit { tsc: 400, rec: b });
        assert!(matches!(events[8], Event::Stats(Ok(s)) if s.exits_total == 7));
        assert!(matches!(
            events[9],
            Event::End {
                ending: Ending::Stop { status: 3 },
                ..
            }
        ));
        assert_eq!(events.len(), 10);
    }

    #[test]
    fn a_stream_longer_than_a_line_spans_lines_and_stops_at_the_limit() {
        let exits: Vec<ExitRecord> = (0..100u64)
            .map(|i| {
                let mut r = ExitRecord {
                    sequence: i,
                    ..Default::default()
                };
                // Every word changes: the longest delta.
                r.as_mut_bytes().fill(i as u8 + 1);
                r
            })
            .collect();
        let rec = RefCell::new(Recorder::new(Lines::default(), 40, Meta::default()));
        let mut stub = Traced::new(Fixed(exits), Some(&rec));
        let mut resume = None;
        for _ in 0..60 {
            stub.vcpu_run(resume.as_ref()).unwrap();
            resume = Some(Resume::default());
        }
        assert!(!rec.borrow().is_on());
        let lines = std::mem::take(&mut rec.borrow_mut().w.sink.lines);
        assert!(lines.len() > 2, "{} lines", lines.len());
        let s = stream(&lines);
        let events: Vec<Event> = Decoder::new(&s).map(Result::unwrap).collect();
        let exits = events
            .iter()
            .filter(|e| matches!(e, Event::Exit { .. }))
            .count();
        assert_eq!(exits, 40);
        assert_eq!(events.last(), Some(&Event::Limit));
    }

    #[test]
    fn a_cut_stream_is_an_error_not_a_panic() {
        let rec = RefCell::new(Recorder::new(Lines::default(), 0, Meta::default()));
        let mut stub = Traced::new(
            Fixed(std::vec![ExitRecord {
                exit_code: 5,
                ..Default::default()
            }]),
            Some(&rec),
        );
        stub.vcpu_run(None).unwrap();
        rec.borrow_mut().flush();
        let s = stream(&rec.borrow().w.sink.lines);
        for cut in 0..s.len() {
            let _ = Decoder::new(&s[..cut]).count();
        }
        let mut bad = s.clone();
        bad.push(0xee);
        assert!(Decoder::new(&bad).last().unwrap().is_err());
    }
}
