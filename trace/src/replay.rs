//! Replay: the recorded inputs fed to the same exit handler on the host,
//! every decision compared with the recorded one.
//!
//! The handler is built as the vmm-server's ring-3 loop builds it
//! (`vmm-server/src/ring3.rs`: the board's devices, COM1 in the server,
//! the same configuration), so a change to either that makes them decide
//! differently shows as a divergence. Each call the handler makes to its
//! platform takes the next recorded event; a call of another kind, or a
//! decision (resume, guest-RAM write, console output, ending) that differs
//! from the recorded one, is the divergence.

use core::cell::RefCell;
use std::time::Instant;

use guest_walk::{GuestMemory, NotRam};
use ipc_proto::stats::MmuStats;
use ipc_proto::{ErrorCode, ExitRecord, Resume, Segment, Stats};
use vmm_server::board::Board;
use vmm_server::boards;
use vmm_server::cpuid::HostCpuid;
use vmm_server::devices::pci::PciBus;
use vmm_server::devices::uart16550::Uart16550;
use vmm_server::trace::{fnv1a, Event, Flag, Meta};
use vmm_server::vmm::{VmmConfig, VmmStats};
use vmm_server::{Ending, Host, HostConsole, HostWrite, Stub, Vmm};

use crate::{ArchivedEv, ArchivedTrace};

/// The RTC's time at boot, as the ring-3 vmm-server sets it.
pub const RTC_EPOCH: i64 = 1_767_225_600;

/// Builds the handler as the ring-3 vmm-server does for `meta` and runs
/// it over `stub` to its end: the ending and the handler's counters.
pub fn run_handler<S: Stub, W: HostWrite>(
    meta: &Meta,
    mem: &mut dyn GuestMemory,
    host: &mut dyn Host,
    out: W,
    stub: &mut S,
) -> Result<(Ending, VmmStats), String> {
    let console = RefCell::new(HostConsole::new(out, true));
    let board = Board::new();
    let kind = boards::kind_of(meta.board);
    let table = boards::table(kind);
    let com1_irq = boards::pin(&board, table, boards::Slot::Com1);
    let mut uart = Uart16550::new(&console).with_irq(com1_irq);
    let bus = PciBus::new();
    let mut devices =
        boards::Devices::new(&board, table, meta.guest_ram_bytes, RTC_EPOCH).with_pci_bus(&bus);
    let (router, mmio) = devices
        .routers(table, &mut uart)
        .map_err(|e| e.to_string())?;
    let config = VmmConfig {
        shadow_paging: meta.mmu_mode != 0,
        tsc_offsetting: true,
        ..Default::default()
    };
    let mut vmm = Vmm::new(router, &board, mem, host)
        .with_mmio(mmio)
        .with_irqchip(boards::irqchip(kind, &board))
        .with_pci_bus(&bus)
        .with_config(config);
    let ending = vmm_server::run(stub, &mut vmm, &console);
    Ok((ending, vmm.stats()))
}

/// The first decision or input that differs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Divergence {
    /// Exits replayed before it (it happened while handling the next).
    pub exit: u64,
    /// Its event's index in the trace.
    pub event: usize,
    /// The recorded event.
    pub expected: String,
    /// What the handler did or asked instead.
    pub got: String,
}

impl std::fmt::Display for Divergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (e, g) = first_difference(&self.expected, &self.got);
        write!(
            f,
            "diverged after exit {} (event {}):\n  recorded: {e}\n  replayed: {g}",
            self.exit, self.event
        )
    }
}

/// The two texts from a little before where they first differ, so that a
/// long record shows the field that differs.
fn first_difference(a: &str, b: &str) -> (String, String) {
    let at = a
        .char_indices()
        .zip(b.chars())
        .find(|((_, x), y)| x != y)
        .map_or(a.len().min(b.len()), |((i, _), _)| i);
    let from = a[..at].rfind(", ").map_or(0, |i| i + 2).min(at);
    let cut = |s: &str| -> String {
        let s = &s[from.min(s.len())..];
        let s: String = s.chars().take(120).collect();
        if from > 0 {
            format!("...{s}")
        } else {
            s
        }
    };
    (cut(a), cut(b))
}

/// How a replay ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every decision matched: the run's ending and counters too when the
    /// trace has them (`complete`), else the trace was a prefix.
    Identical {
        /// The trace had the run's end and it matched.
        complete: bool,
    },
    /// The first difference.
    Diverged(Divergence),
}

/// What a replay found.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Exits fed to the handler.
    pub exits: u64,
    /// Events consumed.
    pub events: usize,
    /// The verdict.
    pub verdict: Verdict,
    /// Wall-clock seconds the replay took.
    pub seconds: f64,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.verdict {
            Verdict::Identical { complete } => write!(
                f,
                "{} exits, identical{}",
                self.exits,
                if *complete {
                    " (ending and counters too)"
                } else {
                    " (the trace is a prefix of the run)"
                }
            ),
            Verdict::Diverged(d) => write!(f, "{d}"),
        }
    }
}

enum Stop {
    Diverged(Divergence),
    /// The recording stopped (`Limit`) or the trace ran out.
    TraceEnds,
}

struct Cursor<'a> {
    events: &'a [ArchivedEv],
    at: usize,
    exits: u64,
    stop: Option<Stop>,
}

impl<'a> Cursor<'a> {
    /// The next event, if `want` takes it; else the divergence is noted
    /// (`got` says what the handler did) and nothing more is taken.
    fn next<T>(
        &mut self,
        got: impl FnOnce(&Event<'a>) -> String,
        want: impl FnOnce(Event<'a>) -> Option<T>,
    ) -> Option<T> {
        if self.stop.is_some() {
            return None;
        }
        // The cost of tracing and the recorder's samples are no inputs of
        // the handler's.
        while matches!(
            self.events.get(self.at),
            Some(ArchivedEv::Flush(_) | ArchivedEv::Sample(..))
        ) {
            self.at += 1;
        }
        let Some(ev) = self.events.get(self.at) else {
            self.stop = Some(Stop::TraceEnds);
            return None;
        };
        let ev = ev.event();
        if ev == Event::Limit {
            self.stop = Some(Stop::TraceEnds);
            return None;
        }
        self.at += 1;
        let r = want(ev);
        if r.is_none() {
            self.stop = Some(Stop::Diverged(Divergence {
                exit: self.exits,
                event: self.at - 1,
                expected: format!("{ev:?}"),
                got: got(&ev),
            }));
        }
        r
    }
}

type Shared<'c, 'a> = &'c RefCell<Cursor<'a>>;

struct ReplayStub<'c, 'a>(Shared<'c, 'a>);
struct ReplayHost<'c, 'a>(Shared<'c, 'a>, u64);
struct ReplayMem<'c, 'a>(Shared<'c, 'a>, u64);
struct ReplayConsole<'c, 'a>(Shared<'c, 'a>);

impl Stub for ReplayStub<'_, '_> {
    fn vcpu_run(&mut self, resume: Option<&Resume>) -> Result<ExitRecord, ErrorCode> {
        let mut c = self.0.borrow_mut();
        let sent = match resume {
            None => c.next(
                |_| "the first VcpuRun".into(),
                |e| matches!(e, Event::FirstRun { .. }).then_some(()),
            ),
            Some(r) => c.next(
                |e| match *e {
                    Event::Resume { tsc, .. } => format!("{:?}", Event::Resume { tsc, resume: *r }),
                    _ => format!("Resume {{ resume: {r:?} }}"),
                },
                |e| matches!(e, Event::Resume { resume, .. } if resume == *r).then_some(()),
            ),
        };
        sent.ok_or(ErrorCode::NotReady)?;
        let got = c.next(
            |_| "an exit".into(),
            |e| match e {
                Event::Exit { rec, .. } => Some(Ok(rec)),
                Event::VcpuError(n) => Some(Err(ErrorCode::ALL
                    .into_iter()
                    .find(|c| *c as u8 == n)
                    .unwrap_or(ErrorCode::NotReady))),
                _ => None,
            },
        );
        if matches!(got, Some(Ok(_))) {
            c.exits += 1;
        }
        got.unwrap_or(Err(ErrorCode::NotReady))
    }

    fn stats_read(&mut self) -> Result<Stats, ErrorCode> {
        self.0
            .borrow_mut()
            .next(
                |_| "StatsRead".into(),
                |e| match e {
                    Event::Stats(s) => Some(s),
                    _ => None,
                },
            )
            .and_then(Result::ok)
            .ok_or(ErrorCode::NotReady)
    }

    fn mmu_stats(&mut self) -> Option<MmuStats> {
        self.0
            .borrow_mut()
            .next(
                |_| "the mmu-server's counters".into(),
                |e| match e {
                    Event::MmuStats(m) => Some(m),
                    _ => None,
                },
            )
            .flatten()
    }

    fn segments(&mut self) -> Option<[Segment; 6]> {
        self.0
            .borrow_mut()
            .next(
                |_| "the segment registers".into(),
                |e| match e {
                    Event::Segments(s) => Some(s),
                    _ => None,
                },
            )
            .flatten()
    }
}

impl ReplayHost<'_, '_> {
    fn flag(&self, which: Flag) -> bool {
        self.0
            .borrow_mut()
            .next(
                |_| format!("{which:?}"),
                |e| match e {
                    Event::Flag(f, v) if f == which => Some(v),
                    _ => None,
                },
            )
            .unwrap_or(false)
    }
}

impl HostCpuid for ReplayHost<'_, '_> {
    fn host_cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
        self.0
            .borrow_mut()
            .next(
                |_| format!("Cpuid({leaf:#x}, {subleaf:#x})"),
                |e| match e {
                    Event::Cpuid(l, s, r) if (l, s) == (leaf, subleaf) => Some(r),
                    _ => None,
                },
            )
            .unwrap_or_default()
    }

    fn offers_rdtscp(&self) -> bool {
        self.flag(Flag::Rdtscp)
    }

    fn offers_xsave(&self) -> bool {
        self.flag(Flag::Xsave)
    }

    fn current_xcr0(&self) -> Option<u64> {
        self.0
            .borrow_mut()
            .next(
                |_| "Xcr0".into(),
                |e| match e {
                    Event::Xcr0(x) => Some(x),
                    _ => None,
                },
            )
            .flatten()
    }
}

impl Host for ReplayHost<'_, '_> {
    fn now(&mut self) -> u64 {
        self.0
            .borrow_mut()
            .next(
                |_| "Now".into(),
                |e| match e {
                    Event::Now(t) => Some(t),
                    _ => None,
                },
            )
            .unwrap_or(0)
    }

    fn ticks_per_second(&self) -> u64 {
        self.1
    }

    fn wait_for_input(&mut self) -> bool {
        self.flag(Flag::WaitForInput)
    }

    fn wait_until(&mut self, t: u64) {
        self.0.borrow_mut().next(
            |_| format!("WaitUntil({t})"),
            |e| (e == Event::WaitUntil(t)).then_some(()),
        );
    }
}

impl GuestMemory for ReplayMem<'_, '_> {
    fn ram_bytes(&self) -> u64 {
        self.1
    }

    fn read_phys(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), NotRam> {
        let len = buf.len() as u64;
        let got = self.0.borrow_mut().next(
            |_| format!("MemRead {{ gpa: {gpa}, len: {len} }}"),
            |e| match e {
                Event::MemRead {
                    gpa: g,
                    len: l,
                    bytes,
                } if (g, l) == (gpa, len) => Some(bytes),
                _ => None,
            },
        );
        match got {
            Some(Some(b)) => {
                buf.copy_from_slice(b);
                Ok(())
            }
            _ => Err(NotRam),
        }
    }

    fn write_phys(&mut self, gpa: u64, data: &[u8]) -> Result<(), NotRam> {
        let (len, hash) = (data.len() as u64, fnv1a(data));
        let ok = self.0.borrow_mut().next(
            |_| format!("MemWrite {{ gpa: {gpa}, len: {len}, hash: {hash} }}"),
            |e| match e {
                Event::MemWrite {
                    gpa: g,
                    len: l,
                    ok,
                    hash: h,
                } if (g, l, h) == (gpa, len, hash) => Some(ok),
                _ => None,
            },
        );
        ok.filter(|&ok| ok).map(|_| ()).ok_or(NotRam)
    }
}

impl HostWrite for ReplayConsole<'_, '_> {
    fn write_host(&mut self, bytes: &[u8]) {
        let (len, hash) = (bytes.len() as u64, fnv1a(bytes));
        self.0.borrow_mut().next(
            |_| {
                format!(
                    "ConsoleOut {{ len: {len}, hash: {hash} }} ({:?})",
                    String::from_utf8_lossy(bytes)
                )
            },
            |e| (e == Event::ConsoleOut { len, hash }).then_some(()),
        );
    }

    fn read_host(&mut self, buf: &mut [u8]) -> usize {
        let asked = buf.len() as u64;
        self.0
            .borrow_mut()
            .next(
                |_| format!("ConsoleIn {{ asked: {asked} }}"),
                |e| match e {
                    Event::ConsoleIn { asked: a, bytes }
                        if a == asked && bytes.len() <= buf.len() =>
                    {
                        buf[..bytes.len()].copy_from_slice(bytes);
                        Some(bytes.len())
                    }
                    _ => None,
                },
            )
            .unwrap_or(0)
    }
}

/// Replays `trace` through the handler and compares every decision.
pub fn replay(trace: &ArchivedTrace) -> Result<Outcome, String> {
    let meta = trace.meta();
    if meta.uart_channel != 0 || meta.pci_functions != 0 {
        return Err(
            "replay covers a vmm-server with COM1 of its own and no PCI function servers; \
             this trace was recorded with --uart-server or virtio devices (their replies are not recorded yet)"
                .into(),
        );
    }
    let start = Instant::now();
    let cursor = RefCell::new(Cursor {
        events: trace.events.as_slice(),
        at: 0,
        exits: 0,
        stop: None,
    });
    let mut stub = ReplayStub(&cursor);
    let mut host = ReplayHost(&cursor, meta.tsc_hz);
    let mut mem = ReplayMem(&cursor, meta.guest_ram_bytes);
    let (ending, stats) = run_handler(
        &meta,
        &mut mem,
        &mut host,
        ReplayConsole(&cursor),
        &mut stub,
    )?;
    let mut c = cursor.borrow_mut();
    if c.stop.is_none() {
        c.next(
            |_| format!("End {{ ending: {ending:?}, stats: {stats:?} }}"),
            |e| (e == Event::End { ending, stats }).then_some(()),
        );
    }
    let seconds = start.elapsed().as_secs_f64();
    let verdict = match c.stop.take() {
        Some(Stop::Diverged(d)) => Verdict::Diverged(d),
        Some(Stop::TraceEnds) => Verdict::Identical { complete: false },
        None if c.at < c.events.len() => Verdict::Diverged(Divergence {
            exit: c.exits,
            event: c.at,
            expected: format!("{:?}", c.events[c.at].event()),
            got: "the end of the run".into(),
        }),
        None => Verdict::Identical { complete: true },
    };
    Ok(Outcome {
        exits: c.exits,
        events: c.at,
        verdict,
        seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Trace;
    use ipc_proto::vcpu::svm_exit;
    use ipc_proto::vcpu::svm_ioio::{PORT_SHIFT, SZ8};
    use ipc_proto::{VcpuArch, ABI_VERSION};
    use std::collections::VecDeque;
    use std::rc::Rc;
    use vmm_server::trace::{base64_decode, Recorder, Sink, Traced};

    /// The lines' bytes, decoded as `splitvisor` would; a TSC that moves.
    struct Lines(Rc<RefCell<Vec<u8>>>, u64);

    impl Sink for Lines {
        fn line(&mut self, bytes: &[u8]) {
            base64_decode(&bytes[1..bytes.len() - 1], &mut self.0.borrow_mut()).unwrap();
        }
        fn tsc(&mut self) -> u64 {
            self.1 += 1234;
            self.1
        }
    }

    struct Script(VecDeque<ExitRecord>);

    impl Stub for Script {
        fn vcpu_run(&mut self, _: Option<&Resume>) -> Result<ExitRecord, ErrorCode> {
            self.0.pop_front().ok_or(ErrorCode::NotReady)
        }
        fn stats_read(&mut self) -> Result<Stats, ErrorCode> {
            Ok(Stats::default())
        }
    }

    /// A host whose clock runs and whose CPU has a vendor string.
    struct Clock(u64);

    impl HostCpuid for Clock {
        fn host_cpuid(&self, leaf: u32, _: u32) -> [u32; 4] {
            [leaf, 0x6874_7541, 0x444d_4163, 0x6974_6e65]
        }
    }

    impl Host for Clock {
        fn now(&mut self) -> u64 {
            self.0 += 977;
            self.0
        }
        fn ticks_per_second(&self) -> u64 {
            1_000_000_000
        }
    }

    struct Discard;

    impl HostWrite for Discard {
        fn write_host(&mut self, _: &[u8]) {}
    }

    fn exit(code: u64, info1: u64, rip: u64, rax: u64) -> ExitRecord {
        let mut r = ExitRecord {
            abi_version: ABI_VERSION,
            arch: VcpuArch::Svm as u32,
            exit_code: code,
            exit_info1: info1,
            exit_info2: rip + 1,
            next_rip: rip + 1,
            ..Default::default()
        };
        r.regs.rip = rip;
        r.regs.rax = rax;
        r.regs.rflags = 2;
        r
    }

    /// A guest that prints, asks CPUID and ends through the debug-exit
    /// port, run through the recording wrappers: the archive's bytes.
    fn recorded_run() -> Trace {
        let mut exits: VecDeque<ExitRecord> = b"hi\n"
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                exit(
                    svm_exit::IOIO,
                    0x3f8 << PORT_SHIFT | SZ8,
                    0x1000 + i as u64,
                    u64::from(c),
                )
            })
            .collect();
        let mut cpuid = exit(svm_exit::CPUID, 0, 0x2000, 0);
        cpuid.next_rip = 0x2002;
        exits.push_back(cpuid);
        exits.push_back(exit(svm_exit::IOIO, 0xf4 << PORT_SHIFT | SZ8, 0x3000, 0));
        for (i, e) in exits.iter_mut().enumerate() {
            e.sequence = i as u64 + 1;
        }
        let meta = Meta {
            version: vmm_server::trace::VERSION,
            tsc_hz: 1_000_000_000,
            guest_ram_bytes: 1 << 20,
            ..Default::default()
        };
        let stream = Rc::new(RefCell::new(Vec::new()));
        let rec = RefCell::new(Recorder::new(Lines(stream.clone(), 0), 0, meta));
        let mut stub = Traced::new(Script(exits), Some(&rec));
        let mut bytes = vec![0u8; 1 << 20];
        let mut mem = Traced::new(guest_walk::Ram::new(&mut bytes), Some(&rec));
        let mut host = Traced::new(Clock(0), Some(&rec));
        let (ending, stats) = run_handler(
            &meta,
            &mut mem,
            &mut host,
            Traced::new(Discard, Some(&rec)),
            &mut stub,
        )
        .unwrap();
        assert_eq!(ending, Ending::Stop { status: 0 });
        rec.borrow_mut().end(ending, stats);
        let s = stream.borrow();
        Trace::from_stream(&s).unwrap()
    }

    fn replay_of(t: &Trace) -> Outcome {
        let mut bytes = crate::Bytes::new();
        bytes.extend_from_slice(&t.to_bytes());
        replay(crate::access(&bytes).unwrap()).unwrap()
    }

    #[test]
    fn a_recorded_run_replays_identically() {
        let t = recorded_run();
        let o = replay_of(&t);
        assert_eq!(o.verdict, Verdict::Identical { complete: true }, "{o}");
        assert_eq!(o.exits, 5);
        assert_eq!(o.events, t.events.len());
        assert!(o.to_string().starts_with("5 exits, identical"), "{o}");
    }

    #[test]
    fn a_corrupted_resume_makes_replay_diverge_at_its_exit() {
        let mut t = recorded_run();
        // The resume after the second exit (the `i`): another RIP.
        let resume = t
            .events
            .iter_mut()
            .filter_map(|e| match e {
                crate::Ev::Resume { resume, .. } => Some(resume),
                _ => None,
            })
            .nth(1)
            .unwrap();
        let rip =
            std::mem::offset_of!(Resume, regs) + std::mem::offset_of!(ipc_proto::GuestRegs, rip);
        resume[rip] ^= 0x40;
        let o = replay_of(&t);
        let Verdict::Diverged(d) = &o.verdict else {
            panic!("replay of a corrupted trace: {o}");
        };
        assert_eq!(d.exit, 2, "{d}");
        assert!(d.to_string().contains("rip"), "{d}");
    }

    #[test]
    fn a_trace_cut_short_replays_as_a_prefix_and_a_changed_input_diverges() {
        let mut t = recorded_run();
        let cut = t
            .events
            .iter()
            .position(|e| matches!(e, crate::Ev::Exit { .. }))
            .unwrap();
        let mut prefix = t.clone();
        prefix.events.truncate(cut + 3);
        let o = replay_of(&prefix);
        assert_eq!(o.verdict, Verdict::Identical { complete: false }, "{o}");
        // A different character on the console: the recorded output's
        // hash no longer matches what the handler writes.
        for e in &mut t.events {
            if let crate::Ev::Exit { rec, .. } = e {
                let rax = std::mem::offset_of!(ExitRecord, regs)
                    + std::mem::offset_of!(ipc_proto::GuestRegs, rax);
                if rec[rax] == b'i' {
                    rec[rax] = b'o';
                }
            }
        }
        assert!(matches!(replay_of(&t).verdict, Verdict::Diverged(_)));
    }
}
