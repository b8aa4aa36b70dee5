//! The server loop: run the VCPU, handle its exit, resume, until the VM
//! stops or fails.
//!
//! The loop sees the stub only through [`Stub`], so the same code runs as
//! the ring-3 task (system calls), in `sim` and in the tests below (a
//! scripted VCPU).

use core::cell::RefCell;

use ipc_proto::{ErrorCode, ExitRecord, Resume, Segment, Stats};

use crate::console::{HostConsole, HostWrite};
use crate::vmm::{Action, Vmm};

/// The stub's VCPU and statistics calls.
pub trait Stub {
    /// `VcpuRun`: apply `resume` (`None` on the very first call, whose
    /// resume the stub ignores), run the guest to its next exit and return
    /// the exit's record.
    fn vcpu_run(&mut self, resume: Option<&Resume>) -> Result<ExitRecord, ErrorCode>;

    /// `StatsRead`: the stub's counters.
    fn stats_read(&mut self) -> Result<Stats, ErrorCode>;
    /// The mmu-server's counters, as the last `StatsRead` brought them
    /// (none without shadow paging).
    fn mmu_stats(&mut self) -> Option<ipc_proto::stats::MmuStats> {
        None
    }

    /// ES, CS, SS, DS, FS, GS at the last exit, when the platform gives
    /// them (the exit record carries only CS). The default: not given.
    fn segments(&mut self) -> Option<[Segment; 6]> {
        None
    }
}

/// How the VM ended; the caller makes the matching system call
/// (`VmStop(status)` or `VmFail`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// The guest ended cleanly with this status.
    Stop {
        /// Exit status, 0 for success.
        status: u8,
    },
    /// The guest reset the machine; it has been said on the console.
    Reset,
    /// The VM could not go on; the reason has been printed.
    Fail,
}

/// Runs the VM until it stops or fails.
///
/// The console is shared with the guest's UART (which holds `&console`
/// inside `vmm`); it is only borrowed here between exits. Before returning,
/// the guest's buffered output is flushed; a failure prints its reason as
/// `[vmm] <reason>` and the last exits as `[vmm]   #<seq> <exit> ...` lines;
/// a reset says `[vmm] the guest reset the machine`; then comes the
/// statistics line `[vmm] <Stats> unknown_port_reads=N
/// unknown_port_writes=N emulated=N irqs=N exceptions=N windows=N warps=N notifications=N busy_halts=N busy_exits=N
/// handling_ticks=N`.
pub fn run<S: Stub, W: HostWrite>(
    stub: &mut S,
    vmm: &mut Vmm<'_>,
    console: &RefCell<HostConsole<W>>,
) -> Ending {
    let mut resume: Option<Resume> = None;
    loop {
        let rec = match stub.vcpu_run(resume.as_ref()) {
            Ok(rec) => rec,
            Err(e) => {
                let what = if resume.is_some() {
                    "the stub refused the resume"
                } else {
                    "the stub refused to run the VCPU"
                };
                console
                    .borrow_mut()
                    .server_line(format_args!("{what}: {}", e.describe()));
                statistics_line(stub, vmm, console);
                return Ending::Fail;
            }
        };
        if let crate::exit::Exit::Notification { word, guest_ran } = crate::exit::Exit::decode(&rec)
        {
            // The guest was not entered for it, and the last resume was
            // applied (perhaps before the guest ran for exits of the
            // mmu-server's): rerun with the interrupts the notification
            // brought (and the last resume's, which the stub would
            // otherwise withdraw, unless the guest ran since).
            resume = Some(vmm.notified(word, guest_ran));
            continue;
        }
        let segments = stub.segments();
        let action = vmm.handle_with(&rec, segments);
        {
            let mut c = console.borrow_mut();
            c.poll_input();
            if c.report_requested() && matches!(action, Action::Resume(_)) {
                c.flush();
                c.server_line(format_args!(
                    "the host asked for a report before killing the VM (a timeout, or Ctrl-A X): the guest is at rip={:#x}",
                    rec.regs.rip
                ));
                last_exits(vmm, &mut c);
                drop(c);
                statistics_line(stub, vmm, console);
                return Ending::Fail;
            }
        }
        match action {
            Action::Resume(r) => resume = Some(r),
            Action::Stop { status } => {
                console.borrow_mut().flush();
                statistics_line(stub, vmm, console);
                return Ending::Stop { status };
            }
            Action::Reset => {
                console
                    .borrow_mut()
                    .server_line(format_args!("the guest reset the machine"));
                statistics_line(stub, vmm, console);
                return Ending::Reset;
            }
            Action::Fail(why) => {
                {
                    let mut c = console.borrow_mut();
                    c.server_line(format_args!("{why}"));
                    last_exits(vmm, &mut c);
                }
                statistics_line(stub, vmm, console);
                return Ending::Fail;
            }
        }
    }
}

/// Prints the last exits, oldest first (after a failure or on a report).
fn last_exits<W: HostWrite>(vmm: &Vmm<'_>, c: &mut HostConsole<W>) {
    c.server_line(format_args!("last exits, oldest first:"));
    for e in vmm.history().iter() {
        c.server_line(format_args!("  {e}"));
    }
}

/// Prints `[vmm] <Stats> unknown_port_reads=N unknown_port_writes=N
/// emulated=N irqs=N exceptions=N windows=N warps=N notifications=N busy_halts=N busy_exits=N
/// handling_ticks=N`.
pub fn statistics_line<S: Stub, W: HostWrite>(
    stub: &mut S,
    vmm: &Vmm<'_>,
    console: &RefCell<HostConsole<W>>,
) {
    let unknown = vmm.unknown_ports();
    let mine = vmm.stats();
    let hidden = HandlingTicks(vmm.handling_ticks());
    let mut c = console.borrow_mut();
    match stub.stats_read() {
        Ok(stats) => {
            c.server_line(format_args!("{stats}{unknown}{mine}{hidden}"));
            if let Some(mmu) = stub.mmu_stats() {
                c.server_line(format_args!("{mmu}"));
            }
        }
        Err(e) => c.server_line(format_args!(
            "statistics unavailable: {}{unknown}{mine}{hidden}",
            e.describe()
        )),
    }
}

/// The statistics line's last field, ` handling_ticks=N`: the host's
/// ticks the handler spent that the guest's TSC leaves out
/// (`Vmm::handling_ticks`), which `bench exits` adds to the guest's.
struct HandlingTicks(u64);

impl core::fmt::Display for HandlingTicks {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, " handling_ticks={}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::tests::Recorder;
    use crate::devices::debug_exit::{self, DebugExit};
    use crate::devices::uart16550::{self, Uart16550};
    use crate::exit::tests::{ioio, svm_record};
    use crate::router::Router;
    use ipc_proto::vcpu::{svm_exit, svm_ioio::*};
    use ipc_proto::ResumeFlags;
    use std::collections::VecDeque;
    use std::vec::Vec;

    /// A VCPU that replays exits and remembers the resumes it got.
    struct Script {
        exits: VecDeque<ExitRecord>,
        resumes: Vec<Option<Resume>>,
        refuse_resume_at: Option<usize>,
    }

    impl Script {
        fn new(exits: impl IntoIterator<Item = ExitRecord>) -> Self {
            Self {
                exits: exits.into_iter().collect(),
                resumes: Vec::new(),
                refuse_resume_at: None,
            }
        }
    }

    impl Stub for Script {
        fn vcpu_run(&mut self, resume: Option<&Resume>) -> Result<ExitRecord, ErrorCode> {
            self.resumes.push(resume.copied());
            if self.refuse_resume_at == Some(self.resumes.len() - 1) {
                return Err(ErrorCode::ResumeBadRip);
            }
            Ok(self.exits.pop_front().expect("the script ran out of exits"))
        }

        fn stats_read(&mut self) -> Result<Stats, ErrorCode> {
            Ok(Stats {
                exits_total: self.resumes.len() as u64,
                ..Default::default()
            })
        }
    }

    fn out(port: u16, byte: u8, rip: u64) -> ExitRecord {
        let mut rec = svm_record(svm_exit::IOIO, ioio(port, SZ8, false), rip + 1);
        rec.regs.rip = rip;
        rec.next_rip = rip + 1;
        rec.regs.rax = u64::from(byte);
        rec
    }

    fn guest_printing(text: &[u8], last: ExitRecord) -> Vec<ExitRecord> {
        let mut v: Vec<ExitRecord> = text
            .iter()
            .enumerate()
            .map(|(i, &b)| out(0x3f8, b, 0x1000 + i as u64))
            .collect();
        v.push(last);
        v
    }

    fn run_script(script: &mut Script) -> (Ending, std::string::String) {
        let board = crate::board::Board::new();
        let mut bytes = std::vec![0u8; 1 << 20];
        let mut ram = crate::emulate::Ram::new(&mut bytes);
        let mut host = crate::vmm::NullHost;
        let console = RefCell::new(HostConsole::new(Recorder::default(), true));
        let mut uart = Uart16550::new(&console);
        let mut dbg = DebugExit::new();
        let mut r = Router::new();
        r.register(uart16550::COM1_BASE, uart16550::LEN, &mut uart)
            .unwrap();
        r.register(debug_exit::PORT, debug_exit::LEN, &mut dbg)
            .unwrap();
        let mut vmm = Vmm::new(r, &board, &mut ram, &mut host);
        let end = run(script, &mut vmm, &console);
        drop(vmm);
        let text = console.borrow().out().text();
        (end, text)
    }

    #[test]
    fn a_guest_prints_and_exits_through_the_debug_port() {
        let mut s = Script::new(guest_printing(b"hello\nbye", out(0xf4, 0, 0x2000)));
        let (end, text) = run_script(&mut s);
        assert_eq!(end, Ending::Stop { status: 0 });
        assert_eq!(
            text,
            "hello\nbye\n[vmm] exits: total=10 ioio=0 hlt=0 cpuid=0 msr=0 npf=0 exception=0 \
             shutdown=0 invalid=0 intr=0 other=0 syscalls=0 resumes_refused=0 \
             unknown_port_reads=0 unknown_port_writes=0 \
             emulated=0 irqs=0 exceptions=0 windows=0 warps=0 notifications=0 busy_halts=0 busy_exits=0 \
             handling_ticks=0\n"
        );
        assert_eq!(s.resumes[0], None, "the first run carries no resume");
        let second = s.resumes[1].unwrap();
        assert_eq!(second.regs.rip, 0x1001);
        assert_eq!(
            ResumeFlags::from_bits(second.flags),
            Some(ResumeFlags::SET_RIP)
        );
    }

    #[test]
    fn a_notification_exit_reruns_with_the_same_resume() {
        let mut exits = guest_printing(b"ab", out(0xf4, 0, 0x2000));
        exits.insert(1, ExitRecord::notification(1 << 30, false));
        exits.insert(2, ExitRecord::notification(1, false));
        let mut s = Script::new(exits);
        let (end, text) = run_script(&mut s);
        assert_eq!(end, Ending::Stop { status: 0 });
        assert!(text.starts_with("ab\n"), "{text}");
        assert!(text.contains("notifications=2"), "{text}");
        // The `a` exit's resume (skip the OUT), then empty ones, which
        // the stub applies as nothing after a notification exit.
        let after_a = s.resumes[1].unwrap();
        assert_eq!(after_a.regs.rip, 0x1001);
        for r in &s.resumes[2..4] {
            assert_eq!(r.unwrap().flags, 0);
            assert_eq!(r.unwrap().abi_version, ipc_proto::ABI_VERSION);
        }
        assert_eq!(s.resumes[4].unwrap().regs.rip, 0x1002);
    }

    #[test]
    fn a_failure_prints_its_reason_on_its_own_line() {
        let mut cpuid = svm_record(0x8e, 0, 0);
        cpuid.regs.rip = 0x10_0023;
        let mut exits = guest_printing(b"boot", out(0x80, 1, 0x3000));
        exits.push(cpuid);
        let mut s = Script::new(exits);
        let (end, text) = run_script(&mut s);
        assert_eq!(end, Ending::Fail);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "boot");
        assert_eq!(
            lines[1],
            "[vmm] unhandled exit rdpru (code 0x8e) at rip=0x100023"
        );
        assert_eq!(lines[2], "[vmm] last exits, oldest first:");
        assert!(
            lines[3].starts_with("[vmm]   #1 ioio (code 0x7b) rip=0x1000 "),
            "{}",
            lines[3]
        );
        assert!(
            lines[8].starts_with("[vmm]   #1 rdpru (code 0x8e) rip=0x100023"),
            "{}",
            lines[8]
        );
        let lines = &lines[7..];
        assert!(
            lines[2].starts_with("[vmm] exits: total=6 "),
            "{}",
            lines[2]
        );
        assert!(
            lines[2].contains(" unknown_port_reads=0 unknown_port_writes=1 "),
            "{}",
            lines[2]
        );
    }

    #[test]
    fn a_refused_resume_is_reported() {
        let mut s = Script::new(guest_printing(b"x", out(0xf4, 0, 0)));
        s.refuse_resume_at = Some(1);
        let (end, text) = run_script(&mut s);
        assert_eq!(end, Ending::Fail);
        assert!(text.starts_with(
            "x\n[vmm] the stub refused the resume: resume RIP is non-canonical or too wide for the guest's mode\n[vmm] exits:"
        ), "{text}");
    }
}
