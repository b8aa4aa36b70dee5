//! The exit handler: one [`ExitRecord`] in, one [`Action`] out.
//!
//! On every exit the handler moves the virtual clock (see the crate README
//! for how it follows the host's time source), lets the devices catch up
//! with it, handles the exit (port I/O through the router, MMIO and string
//! I/O through the instruction emulator, CPUID and MSRs through their
//! policies, HLT by skipping to the next timer deadline), and then decides
//! what to inject: an event the exit interrupted, a fault the emulation
//! raised, or the PIC's interrupt when the guest can take it (RFLAGS.IF
//! set, no interrupt shadow) -- else it asks for an interrupt window.

use core::fmt;

use ipc_proto::vcpu::{svm_exit, EXITINTINFO_VALID};
use ipc_proto::{
    EventInjection, EventKind, ExitRecord, GuestRegs, Resume, ResumeFlags, Segment, VcpuArch,
};

use crate::board::{Board, Nanos, SECOND};
use crate::cpuid::{guest_cpuid_now, HostCpuid};
use crate::devices::pci::PciBus;
use crate::devices::pic;
use crate::devices::WriteOutcome;
use crate::emulate::{
    EmuError, Emulator, Expect, Fault, GuestMemory, IoBus, PageWalker, MAX_ITERATIONS,
};
use crate::exit::{exception_mnemonic, exit_name, Exit, IoAccess, IoDirection, IoSize, RFLAGS_IF};
use crate::history::{Answer, History};
use crate::irqchip::{InterruptController, IrqChip};
use crate::mmio::MmioRouter;
use crate::msr::{msr_name, MsrContext, MsrError, MsrState};
use crate::router::{Router, UnknownPortCounts};
use crate::vcpu::{VcpuState, RFLAGS_TF};

/// The host services the handler needs besides the exit record.
pub trait Host: HostCpuid {
    /// The host's time source now, in ticks (the TSC on the native stub,
    /// which ring 3 may read with RDTSC).
    fn now(&mut self) -> u64;

    /// Ticks per second of [`Host::now`] (`BootInfo::tsc_hz` on the native
    /// stub); 0 when unknown, in which case 1 GHz is assumed.
    fn ticks_per_second(&self) -> u64;

    /// Waits a little for input on the host console. Returns false when no
    /// input can ever arrive, so that a guest halted with nothing to wake
    /// it is reported instead of waited for. The default: no input.
    fn wait_for_input(&mut self) -> bool {
        false
    }

    /// Waits until [`Host::now`] reaches `t` (a halted guest waiting for
    /// its TSC deadline). The default returns at once.
    fn wait_until(&mut self, _t: u64) {}
}

/// A host with a clock that stands still, no CPU features and no input:
/// enough for guests that only do port I/O.
#[derive(Clone, Copy, Debug, Default)]
pub struct NullHost;

impl HostCpuid for NullHost {
    fn host_cpuid(&self, _leaf: u32, _subleaf: u32) -> [u32; 4] {
        [0; 4]
    }
}

impl Host for NullHost {
    fn now(&mut self) -> u64 {
        0
    }
    fn ticks_per_second(&self) -> u64 {
        SECOND
    }
}

/// What the server does after an exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Re-enter the guest with this resume.
    Resume(Resume),
    /// The guest ended cleanly with this status.
    Stop {
        /// Exit status, 0 for success.
        status: u8,
    },
    /// The guest reset the machine (keyboard controller command 0xFE).
    Reset,
    /// The VM cannot go on.
    Fail(FailReason),
}

/// Why the VM cannot go on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailKind {
    /// An exit the server does not handle.
    Unhandled,
    /// The guest triple-faulted.
    TripleFault,
    /// A hardware task switch, which is not emulated.
    TaskSwitch,
    /// The CPU refused to enter the guest.
    EntryFailed,
    /// HLT with interrupts enabled, with no timer armed and no input that
    /// could arrive: nothing will ever wake the guest.
    HaltedWithInterruptsEnabled,
    /// HLT with interrupts disabled (`cli; hlt`): the guest stopped for
    /// good without reporting a status on the debug-exit port, which is
    /// not a pass.
    HaltedWithInterruptsDisabled,
    /// The exit did not give the next instruction's address, and the
    /// instruction could not be decoded.
    NoNextRip,
    /// The record was written by a stub of another ABI version.
    AbiMismatch {
        /// The record's `abi_version`.
        record: u32,
    },
    /// The instruction behind an MMIO or string I/O exit could not be
    /// emulated.
    Emulation(EmuError),
    /// An MSR access needs the stub (the value lives in the VMCB).
    MsrNeedsStub {
        /// The MSR.
        index: u32,
        /// WRMSR rather than RDMSR.
        write: bool,
    },
    /// The guest takes the same exception at the same RIP again and again.
    FaultLoop {
        /// The exception.
        vector: u8,
        /// How many times in a row.
        count: u32,
    },
    /// A CR access or INVLPG reached the vmm-server: with shadow paging they
    /// are the mmu-server's, with nested paging the stub intercepts only
    /// MOV to CR4.
    NotForVmm,
    /// The guest executes outside RAM.
    MmioFetch,
    /// A nested page fault inside guest RAM, which is all mapped.
    NpfInRam,
    /// A nested page fault outside RAM while the CPU delivered an event
    /// (an IDT or stack in MMIO space).
    EventDeliveryFault,
    /// The guest halted with interrupts enabled this many times in a row
    /// while every interrupt that came was masked.
    IdleForever {
        /// How many HLT exits.
        halts: u64,
    },
}

/// A failure, with what is needed to explain it: the decoded exit, its raw
/// code and arch, and the guest RIP of the exiting instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailReason {
    /// What went wrong.
    pub kind: FailKind,
    /// The decoded exit.
    pub exit: Exit,
    /// The record's raw `arch`.
    pub arch: u32,
    /// The record's raw exit code.
    pub code: u64,
    /// The guest RIP at the exit.
    pub rip: u64,
}

impl FailReason {
    fn new(kind: FailKind, exit: Exit, rec: &ExitRecord) -> Self {
        Self {
            kind,
            exit,
            arch: rec.arch,
            code: rec.exit_code,
            rip: rec.regs.rip,
        }
    }
}

impl fmt::Display for FailReason {
    /// One sentence, e.g. `unhandled exit cpuid (code 0x72) at rip=0x100023`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = exit_name(self.arch, self.code);
        let (code, rip) = (self.code, self.rip);
        let at = format_args!("({name}, code {code:#x}) at rip={rip:#x}");
        match self.kind {
            FailKind::Unhandled => {
                write!(f, "unhandled exit {name} (code {code:#x}) at rip={rip:#x}")?;
                match self.exit {
                    Exit::Msr { write } => {
                        f.write_str(if write { ": wrmsr" } else { ": rdmsr" })
                    }
                    Exit::NestedPageFault { gpa, error_code } => {
                        write!(f, ": gpa={gpa:#x} error_code={error_code:#x}")
                    }
                    _ => Ok(()),
                }
            }
            FailKind::TripleFault => write!(f, "the guest triple-faulted {at}"),
            FailKind::TaskSwitch => write!(
                f,
                "the guest made a hardware task switch {at}, which splitvisor does not emulate"
            ),
            FailKind::EntryFailed => write!(
                f,
                "the CPU refused to enter the guest: its state fails the consistency checks {at}"
            ),
            FailKind::HaltedWithInterruptsEnabled => write!(
                f,
                "guest halted waiting for an interrupt, and nothing can raise one: no timer is armed and no input can arrive {at}"
            ),
            FailKind::HaltedWithInterruptsDisabled => write!(
                f,
                "the guest halted with interrupts disabled (cli; hlt) without writing a status to port 0xf4: it can never run again, and a stop is a pass only when the guest says so {at}"
            ),
            FailKind::NoNextRip => write!(
                f,
                "the exit does not give the next instruction's address and the instruction cannot be decoded {at}"
            ),
            FailKind::AbiMismatch { record } => write!(
                f,
                "the exit record is from ABI version {record}, this server speaks version {} {at}",
                ipc_proto::ABI_VERSION
            ),
            FailKind::Emulation(e) => {
                write!(f, "{e} {at}")?;
                if let Exit::Mmio { gpa, .. } = self.exit {
                    write!(f, ": gpa={gpa:#x}")?;
                }
                Ok(())
            }
            FailKind::MsrNeedsStub { index, write } => write!(
                f,
                "{} of {} needs the stub: the value lives in the VMCB {at}",
                if write { "wrmsr" } else { "rdmsr" },
                msr_name(index)
            ),
            FailKind::FaultLoop { vector, count } => write!(
                f,
                "the guest loops on {} ({count} times in a row) {at}",
                exception_mnemonic(vector)
            ),
            FailKind::NotForVmm => write!(
                f,
                "a {name} exit reached the vmm-server: it belongs to the mmu-server with shadow paging, and the stub does not intercept it with nested paging {at}"
            ),
            FailKind::MmioFetch | FailKind::EventDeliveryFault => {
                let what = match self.kind {
                    FailKind::MmioFetch => "the guest executes outside RAM",
                    _ => "the CPU touched memory outside RAM while delivering an event",
                };
                write!(f, "{what} {at}")?;
                if let Exit::Mmio { gpa, .. } = self.exit {
                    write!(f, ": gpa={gpa:#x}")?;
                }
                Ok(())
            }
            FailKind::NpfInRam => {
                write!(f, "nested page fault inside guest RAM {at}")?;
                if let Exit::NestedPageFault { gpa, error_code } = self.exit {
                    write!(f, ": gpa={gpa:#x} error_code={error_code:#x}")?;
                }
                Ok(())
            }
            FailKind::IdleForever { halts } => write!(
                f,
                "the guest halted with interrupts enabled {halts} times in a row and no interrupt could reach it (masked in the PIC?) {at}"
            ),
        }
    }
}

/// Counters the handler keeps, printed after the stub's statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmmStats {
    /// Instructions emulated (MMIO and string I/O).
    pub emulated: u64,
    /// External interrupts injected.
    pub irqs: u64,
    /// Exceptions injected.
    pub exceptions: u64,
    /// Interrupt windows asked for.
    pub windows: u64,
    /// Times HLT moved the virtual clock to the next deadline.
    pub warps: u64,
    /// Notification exits (the guest did not run).
    pub notifications: u64,
    /// HLT exits that let the guest halt again because a device server
    /// was busy for it.
    pub busy_halts: u64,
    /// Exits while a device server was busy for the guest: the guest ran
    /// while the server worked (or waited for its disk).
    pub busy_exits: u64,
}

impl fmt::Display for VmmStats {
    /// ` emulated=N irqs=N exceptions=N windows=N warps=N
    /// notifications=N busy_halts=N busy_exits=N` (with the leading space).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            " emulated={} irqs={} exceptions={} windows={} warps={} notifications={} busy_halts={} busy_exits={}",
            self.emulated,
            self.irqs,
            self.exceptions,
            self.windows,
            self.warps,
            self.notifications,
            self.busy_halts,
            self.busy_exits
        )
    }
}

/// Limits of the handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmmConfig {
    /// Most iterations of a REP string instruction per exit.
    pub max_string_iterations: u64,
    /// The same exception injected at the same RIP this many times in a
    /// row ends the VM.
    pub fault_loop_limit: u32,
    /// HLT exits in a row with interrupts enabled but nothing delivered
    /// before the VM is declared stuck.
    pub idle_limit: u64,
    /// Timer deadlines one HLT exit may skip to before it lets the guest
    /// run (and halt) again.
    pub max_warps_per_exit: u32,
    /// The mmu-server shadows the guest's page tables: CPUID hides the
    /// paging features its walker does not model ([`crate::cpuid::SHADOW_HIDDEN_LEAF7_EBX`]),
    /// since it refuses their CR4 bits with #GP.
    pub shadow_paging: bool,
    /// The platform offsets the guest's TSC (`ResumeFlags::SET_TSC_OFFSET`):
    /// the guest's TSC then follows the virtual clock, leaving out the time
    /// spent handling exits, as the board's other clocks do. Without it the
    /// guest's TSC is the host's.
    pub tsc_offsetting: bool,
    /// Poll the port devices at every poll of the handler, also when none
    /// was accessed and the clock has not moved since the last (whose
    /// answer a poll then only repeats). For tests that check the skip.
    pub poll_always: bool,
}

impl Default for VmmConfig {
    fn default() -> Self {
        Self {
            max_string_iterations: MAX_ITERATIONS,
            fault_loop_limit: 64,
            idle_limit: 1_000_000,
            max_warps_per_exit: 16,
            shadow_paging: false,
            tsc_offsetting: false,
            poll_always: false,
        }
    }
}

/// The PIC's ports (as offsets from 0x20), if `port` is one.
fn pic_offset(port: u16) -> Option<u16> {
    pic::RANGES
        .iter()
        .any(|&(b, l)| port >= b && port - b < l)
        .then(|| port - pic::BASE)
}

/// Ports and MMIO as the emulator and the port-I/O path see them: the
/// interrupt controllers (the handler's own: the PIC's ports, the APICs'
/// pages), then the port and MMIO routers.
struct Bus<'a, 'd> {
    irq: &'a mut IrqChip<'d>,
    router: &'a mut Router<'d>,
    mmio: &'a mut MmioRouter<'d>,
}

impl IoBus for Bus<'_, '_> {
    fn port_read(&mut self, port: u16, size: IoSize) -> u32 {
        match pic_offset(port) {
            Some(o) => crate::devices::PortDevice::read(self.irq.pic_mut(), o, size) & size.mask(),
            None => self.router.read(port, size),
        }
    }

    fn port_write(&mut self, port: u16, size: IoSize, value: u32) -> WriteOutcome {
        match pic_offset(port) {
            Some(o) => {
                crate::devices::PortDevice::write(self.irq.pic_mut(), o, size, value & size.mask())
            }
            None => self.router.write(port, size, value),
        }
    }

    fn mmio_read(&mut self, gpa: u64, size: u8) -> u64 {
        match self.irq.mmio(gpa) {
            Some((d, offset)) => d.read(offset, size) & crate::emulate::alu::mask(size),
            None => {
                // A device may be behind both routers (a PCI function).
                self.router.touch();
                self.mmio.read(gpa, size)
            }
        }
    }

    fn mmio_write(&mut self, gpa: u64, size: u8, value: u64) -> WriteOutcome {
        match self.irq.mmio(gpa) {
            Some((d, offset)) => d.write(offset, size, value & crate::emulate::alu::mask(size)),
            None => {
                self.router.touch();
                self.mmio.write(gpa, size, value)
            }
        }
    }
}

/// How an exit was handled, before the injection decision.
enum Step {
    /// Resume the guest with the updated state; `completed`: an instruction
    /// finished (RIP moved past it), which ends an interrupt shadow.
    Resume {
        completed: bool,
        fault: Option<Fault>,
    },
    /// Resume with this exception in place of the event whose delivery
    /// the exit interrupted (a fault during delivery that merges with it).
    Replace(Fault),
    Stop(u8),
    Reset,
    Fail(FailKind),
}

const RESUME: Step = Step::Resume {
    completed: true,
    fault: None,
};

/// The CPU walked a guest page table outside RAM while it delivered the
/// event `info` (EXITINTINFO): the table reads as not present, so the
/// delivery takes a #PF. During a #PF's delivery that is a #DF, during a
/// #DF's a shutdown (SDM vol. 3, table 6-5), as the mmu-server does under
/// shadow paging. During any other event's the #PF needs the linear
/// address the delivery touched, which the exit does not carry: the VM
/// ends.
fn table_fault_in_delivery(info: u64) -> Step {
    let exception = (info >> 8) & 7 == EventKind::Exception as u64;
    match (exception, info as u8) {
        (true, 14) => Step::Replace(Fault {
            vector: 8,
            error_code: Some(0),
            cr2: None,
        }),
        (true, 8) => Step::Fail(FailKind::TripleFault),
        _ => Step::Fail(FailKind::EventDeliveryFault),
    }
}

/// The exit handler: decodes exits, emulates, drives the devices' time and
/// injects their interrupts.
pub struct Vmm<'d> {
    router: Router<'d>,
    mmio: MmioRouter<'d>,
    board: &'d Board,
    mem: &'d mut dyn GuestMemory,
    host: &'d mut dyn Host,
    walker: PageWalker,
    irq: IrqChip<'d>,
    msrs: MsrState,
    config: VmmConfig,
    history: History,
    stats: VmmStats,
    last_host: Option<u64>,
    /// The host time this exit arrived at.
    exit_host: u64,
    /// Host time this exit spent waiting for a halted guest's TSC deadline
    /// or input: the guest's idle time, which its clock keeps.
    waited: u64,
    next_deadline: Option<Nanos>,
    /// Whether the devices were polled at the clock's present reading and
    /// nothing reached them since: the last exit's final poll, which the
    /// next exit's first poll would only repeat.
    polled: bool,
    /// The exit deadline the stub has (host ticks, 0: none).
    told_deadline: u64,
    /// Added to the host's TSC, the guest's (`VmmConfig::tsc_offsetting`).
    tsc_offset: u64,
    /// The host's ticks the handler spent on exits, which the guest's
    /// clock (and TSC) leave out: `bench exits` adds them back.
    handling_ticks: u64,
    told_tsc_offset: u64,
    /// The guest's XCR0 as its last XSETBV set it (reset: x87 only).
    xcr0: u64,
    /// An XSETBV completed: the next resume loads `xcr0`.
    load_xcr0: bool,
    fault_streak: (u64, u8, u32),
    idle_halts: u64,
    /// This exit's emulated REP string instruction did an iteration but
    /// did not complete (single-stepped: one iteration per exit).
    partial_step: bool,
    /// The PCI functions served elsewhere: told of notifications, asked
    /// whether they are busy.
    pci: Option<&'d PciBus<'d>>,
    /// The interrupt part of the last resume, for a notification exit.
    last_delivery: Delivery,
}

/// What the last resume asked of the next guest entry about interrupts,
/// and whether the guest could take one then.
#[derive(Clone, Copy, Debug, Default)]
struct Delivery {
    event: Option<EventInjection>,
    window: bool,
    /// RFLAGS.IF set and no interrupt shadow.
    open: bool,
}

impl<'d> Vmm<'d> {
    /// A handler around a router with its devices registered, the board
    /// they share, guest RAM and the host.
    pub fn new(
        router: Router<'d>,
        board: &'d Board,
        mem: &'d mut dyn GuestMemory,
        host: &'d mut dyn Host,
    ) -> Self {
        Self {
            router,
            mmio: MmioRouter::new(),
            board,
            mem,
            host,
            walker: PageWalker,
            irq: IrqChip::isa(),
            msrs: MsrState::new(),
            config: VmmConfig::default(),
            history: History::new(),
            stats: VmmStats::default(),
            last_host: None,
            exit_host: 0,
            waited: 0,
            next_deadline: None,
            polled: false,
            told_deadline: 0,
            tsc_offset: 0,
            handling_ticks: 0,
            told_tsc_offset: 0,
            xcr0: ipc_proto::x86::xcr0::X87,
            load_xcr0: false,
            fault_streak: (0, 0, 0),
            idle_halts: 0,
            partial_step: false,
            pci: None,
            last_delivery: Delivery::default(),
        }
    }

    /// The same handler telling `bus`'s functions of notification exits
    /// and not skipping time on a HLT while one of them is busy.
    pub fn with_pci_bus(mut self, bus: &'d PciBus<'d>) -> Self {
        self.pci = Some(bus);
        self
    }

    /// The same handler with MMIO devices.
    pub fn with_mmio(mut self, mmio: MmioRouter<'d>) -> Self {
        self.mmio = mmio;
        self
    }

    /// The same handler with other interrupt controllers (the PC board's
    /// APICs; the default is the ISA board's 8259 pair).
    pub fn with_irqchip(mut self, irq: IrqChip<'d>) -> Self {
        self.irq = irq;
        self
    }

    /// The same handler with other limits.
    pub fn with_config(mut self, config: VmmConfig) -> Self {
        self.config = config;
        self
    }

    /// The port router.
    pub fn router(&self) -> &Router<'d> {
        &self.router
    }

    /// The port router, to register more devices.
    pub fn router_mut(&mut self) -> &mut Router<'d> {
        self.polled = false;
        self.router.touch();
        &mut self.router
    }

    /// The interrupt controllers.
    pub fn irqchip(&self) -> &IrqChip<'d> {
        &self.irq
    }

    /// The last exits, for reports.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// A notification exit with word `word` (the guest was not entered
    /// for it): the PCI functions whose servers signalled fetch their
    /// interrupts, and the answer is the resume to rerun with.
    ///
    /// The stub applies each resume's interrupt part afresh (an empty one
    /// withdraws a virtual interrupt offered before). When the guest has
    /// not run since the last resume (`guest_ran` clear: always under
    /// nested paging, where the guest runs for this server's exits only),
    /// the last resume's event and window request go again, and a new
    /// interrupt is injected when the guest could take one then (else a
    /// window is asked for). When it has run since (for the mmu-server's
    /// exits under shadow paging), that resume's interrupt part was used
    /// and the guest's state then is unknown here: only a window is asked
    /// for.
    pub fn notified(&mut self, word: u32, guest_ran: bool) -> Resume {
        self.stats.notifications += 1;
        self.polled = false;
        self.router.touch();
        if let Some(bus) = self.pci {
            bus.notified(word);
        }
        self.irq.sample(&self.board.irq);
        let mut flags = ResumeFlags::empty();
        let mut r = resume(flags, GuestRegs::default());
        let last = self.last_delivery;
        let repeat = !guest_ran;
        if let Some(e) = last.event.filter(|_| repeat) {
            r.event = e;
            flags |= ResumeFlags::INJECT_EVENT;
        }
        if last.window && repeat {
            flags |= ResumeFlags::REQUEST_INTERRUPT_WINDOW;
        }
        if self.irq.interrupt_pending() {
            if repeat && last.open && !flags.contains(ResumeFlags::INJECT_EVENT) {
                r.event = EventInjection {
                    vector: self.irq.acknowledge().0,
                    kind: EventKind::ExternalInterrupt as u8,
                    has_error_code: 0,
                    reserved: 0,
                    error_code: 0,
                };
                flags |= ResumeFlags::INJECT_EVENT;
                self.stats.irqs += 1;
                self.idle_halts = 0;
                self.last_delivery.event = Some(r.event);
            } else {
                flags |= ResumeFlags::REQUEST_INTERRUPT_WINDOW;
                self.stats.windows += 1;
                self.last_delivery.window = true;
            }
        }
        r.flags = flags.bits();
        r
    }

    /// The handler's counters.
    pub fn stats(&self) -> VmmStats {
        self.stats
    }

    /// The host's ticks spent handling exits that the guest's clock left
    /// out ([`Self::exclude_handling_time`]): under QEMU's `-icount`, the
    /// handler's instructions that the guest's TSC does not count.
    pub fn handling_ticks(&self) -> u64 {
        self.handling_ticks
    }

    /// Accesses to unclaimed ports so far; its `Display` is the statistics
    /// line's suffix ` unknown_port_reads=N unknown_port_writes=N`.
    pub fn unknown_ports(&self) -> UnknownPortCounts {
        self.router.unknown()
    }

    /// Handles one exit whose record carries CS only (see
    /// [`VcpuState::segments_known`]).
    pub fn handle(&mut self, rec: &ExitRecord) -> Action {
        self.handle_with(rec, None)
    }

    /// Handles one exit, with all six segment registers when the platform
    /// gives them.
    pub fn handle_with(&mut self, rec: &ExitRecord, segments: Option<[Segment; 6]>) -> Action {
        self.history.push(rec);
        if self.pci.is_some_and(|b| b.busy()) {
            self.stats.busy_exits += 1;
        }
        let exit = Exit::decode_in(rec, self.mem.ram_bytes());
        if rec.abi_version != ipc_proto::ABI_VERSION {
            let kind = FailKind::AbiMismatch {
                record: rec.abi_version,
            };
            return Action::Fail(FailReason::new(kind, exit, rec));
        }
        self.advance_time();
        self.partial_step = false;
        let mut cpu = match segments {
            Some(s) => VcpuState::with_segments(rec, s),
            None => VcpuState::from_record(rec),
        };
        let delivered;
        let (completed, fault, rec) = match self.dispatch(rec, exit, &mut cpu) {
            Step::Resume { completed, fault } => (completed, fault, rec),
            Step::Replace(f) => {
                delivered = ExitRecord {
                    exit_int_info: 0,
                    ..*rec
                };
                (false, Some(f), &delivered)
            }
            Step::Stop(status) => return Action::Stop { status },
            Step::Reset => return Action::Reset,
            Step::Fail(kind) => return Action::Fail(FailReason::new(kind, exit, rec)),
        };
        // The exit may have reprogrammed a device or raised a line.
        self.poll_devices();
        self.finish(rec, exit, &cpu, completed, fault)
    }

    /// Lets the devices and the local APIC's timer catch up with the
    /// virtual clock, notes the next deadline and feeds the interrupt
    /// lines into the interrupt controllers.
    fn poll_devices(&mut self) {
        // A port device's poll answers only from its state and the clock:
        // one not accessed since its last poll at this clock reading would
        // repeat it (at the second poll of most exits, all but the device
        // the exit accessed).
        let devices = if self.config.poll_always {
            self.router.poll()
        } else {
            self.router.poll_changed(self.board.clock.now())
        };
        self.irq.sample(&self.board.irq);
        let tsc = self.guest_tsc();
        let apic = self.irq.poll(tsc);
        self.next_deadline = match (devices, apic) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.polled = true;
    }

    /// Moves the virtual clock by the host time since the last exit, but
    /// never past the next device deadline: a slow exit cannot make the
    /// guest miss a timer tick (see the README).
    fn advance_time(&mut self) {
        // The deadline must be the devices' at the present clock reading.
        if !self.polled {
            self.poll_devices();
        }
        let now = self.host.now();
        if let Some(last) = self.last_host {
            let hz = match self.host.ticks_per_second() {
                0 => SECOND,
                hz => hz,
            };
            let ticks = now.saturating_sub(last);
            let ns = (u128::from(ticks) * u128::from(SECOND) / u128::from(hz))
                .min(u128::from(u64::MAX)) as u64;
            let v = self.board.clock.now();
            let mut target = v.saturating_add(ns);
            // A deadline at or before now is one a device has not caught
            // up with yet: it must not hold the clock still.
            if let Some(d) = self.next_deadline.filter(|&d| d > v) {
                target = target.min(d);
            }
            self.board.clock.advance_to(target);
        }
        self.last_host = Some(now);
        self.exit_host = now;
        self.waited = 0;
        self.poll_devices();
    }

    /// The server's own time on this exit is not the guest's: the next
    /// exit's clock advance counts from when the guest runs again (but
    /// keeps the time waited for a halted guest). Without it, every exit
    /// would age the guest by the cost of handling it, and a guest that
    /// measures time between its exits (a calibration loop) would see
    /// more time pass than its timers did.
    fn exclude_handling_time(&mut self) {
        let end = self.host.now();
        let spent = end
            .saturating_sub(self.exit_host)
            .saturating_sub(self.waited);
        self.last_host = self.last_host.map(|l| l.saturating_add(spent));
        self.handling_ticks = self.handling_ticks.wrapping_add(spent);
        // The guest's TSC leaves it out too: never backwards, since the
        // guest last read it at the exit, `spent` ago or earlier.
        if self.config.tsc_offsetting {
            self.tsc_offset = self.tsc_offset.wrapping_sub(spent);
        }
    }

    /// The guest's TSC now.
    fn guest_tsc(&mut self) -> u64 {
        self.host.now().wrapping_add(self.tsc_offset)
    }

    /// The host's TSC when the guest's reads `t`.
    fn host_tsc(&self, guest_tsc: u64) -> u64 {
        guest_tsc.wrapping_sub(self.tsc_offset)
    }

    /// The host time ([`Host::now`] ticks) by which the guest must exit so
    /// that the clock reaches the next device deadline: as far ahead in
    /// host time as the deadline is in virtual time. `None` without a
    /// deadline or a host clock rate.
    fn exit_deadline(&mut self) -> Option<u64> {
        let deadline = self.next_deadline?;
        self.last_host?;
        (self.host.ticks_per_second() != 0).then(|| self.virtual_to_tsc(deadline))
    }

    /// The host time ([`Host::now`] ticks) as far ahead of the last exit
    /// as virtual time `t` is ahead of the clock (1 GHz when the host's
    /// rate is unknown).
    fn virtual_to_tsc(&self, t: Nanos) -> u64 {
        let ahead = t.saturating_sub(self.board.clock.now());
        self.last_host
            .unwrap_or(0)
            .saturating_add(self.virtual_to_ticks(ahead))
            .max(1)
    }

    /// `ns` of virtual time in host TSC ticks (1 GHz when the rate is unknown).
    fn virtual_to_ticks(&self, ns: Nanos) -> u64 {
        let hz = match self.host.ticks_per_second() {
            0 => SECOND,
            hz => hz,
        };
        (u128::from(ns) * u128::from(hz) / u128::from(SECOND)).min(u128::from(u64::MAX)) as u64
    }

    /// The stub's exit deadline: the devices' next deadline, or the local
    /// APIC's TSC deadline (already in host ticks) if that comes first.
    fn stub_deadline(&mut self) -> Option<u64> {
        let devices = self.exit_deadline();
        let tsc_deadline = self.irq.tsc_deadline().map(|t| self.host_tsc(t));
        match (devices, tsc_deadline) {
            (Some(a), Some(b)) => Some(a.min(b.max(1))),
            (a, b) => a.or(b.map(|t| t.max(1))),
        }
    }

    fn bus(&mut self) -> Bus<'_, 'd> {
        Bus {
            irq: &mut self.irq,
            router: &mut self.router,
            mmio: &mut self.mmio,
        }
    }

    fn dispatch(&mut self, rec: &ExitRecord, exit: Exit, cpu: &mut VcpuState) -> Step {
        match exit {
            Exit::Io(io) if io.string => self.emulate(rec, cpu, Expect::StringIo),
            Exit::Io(io) => match self.next_ip(rec, cpu) {
                Some(rip) => self.port_io(cpu, io, rip),
                None => Step::Fail(FailKind::NoNextRip),
            },
            Exit::Mmio { access, .. } => {
                if rec.exit_int_info & EXITINTINFO_VALID != 0 {
                    if access.in_table_walk {
                        table_fault_in_delivery(rec.exit_int_info)
                    } else {
                        Step::Fail(FailKind::EventDeliveryFault)
                    }
                } else if access.in_table_walk {
                    // The CPU walked a guest page table that lies outside
                    // RAM. Such an entry reads as not present (as in the
                    // mmu-server's walker under shadow paging): the
                    // emulator's walk of the instruction's fetch or operand
                    // raises the #PF the guest takes.
                    self.emulate(rec, cpu, Expect::Memory)
                } else if access.fetch {
                    Step::Fail(FailKind::MmioFetch)
                } else {
                    self.emulate(rec, cpu, Expect::Memory)
                }
            }
            Exit::NestedPageFault { .. } => Step::Fail(FailKind::NpfInRam),
            Exit::Cpuid => {
                let (leaf, subleaf) = (cpu.regs.rax as u32, cpu.regs.rcx as u32);
                let xcr0 = self.host.current_xcr0().unwrap_or(self.xcr0);
                let mut r = guest_cpuid_now(&*self.host, leaf, subleaf, cpu.cr4, xcr0);
                if self.config.shadow_paging && leaf == 7 && subleaf == 0 {
                    r[1] &= !crate::cpuid::SHADOW_HIDDEN_LEAF7_EBX;
                }
                if self.irq.apics().is_some() {
                    r = crate::cpuid::with_local_apic(leaf, subleaf, r);
                }
                cpu.regs.rax = u64::from(r[0]);
                cpu.regs.rbx = u64::from(r[1]);
                cpu.regs.rcx = u64::from(r[2]);
                cpu.regs.rdx = u64::from(r[3]);
                self.complete(rec, cpu)
            }
            Exit::Msr { write } => self.msr(rec, cpu, write),
            Exit::Hlt {
                interrupts_enabled: false,
            } => Step::Fail(FailKind::HaltedWithInterruptsDisabled),
            Exit::Hlt {
                interrupts_enabled: true,
            } => self.halt(rec, cpu),
            Exit::InterruptWindow | Exit::ExternalInterrupt => Step::Resume {
                completed: false,
                fault: None,
            },
            // No hypercalls: VMMCALL raises #UD, as on a CPU without SVM.
            Exit::Vmmcall | Exit::Undefined => Step::Resume {
                completed: false,
                fault: Some(Fault::ud()),
            },
            Exit::Xsetbv => self.xsetbv(rec, cpu),
            Exit::Rdpmc => Step::Resume {
                completed: false,
                fault: Some(Fault::gp(0)),
            },
            Exit::CacheFlush => self.complete(rec, cpu),
            Exit::TaskSwitch => Step::Fail(FailKind::TaskSwitch),
            // An intercepted exception goes back to the guest.
            Exit::Exception {
                vector,
                error_code,
                address,
            } => Step::Resume {
                completed: false,
                fault: Some(Fault {
                    vector,
                    error_code,
                    cr2: address,
                }),
            },
            // Under nested paging the stub intercepts writes to CR4 only.
            Exit::CrAccess {
                cr: 4,
                write: true,
                gpr,
            } if !self.config.shadow_paging => self.mov_to_cr4(rec, cpu, gpr),
            Exit::CrAccess { .. } | Exit::Invlpg { .. } => Step::Fail(FailKind::NotForVmm),
            Exit::Shutdown => Step::Fail(FailKind::TripleFault),
            Exit::EntryFailed => Step::Fail(FailKind::EntryFailed),
            // `server::run` reruns with its previous resume and never
            // hands it here; alone, nothing happened in the guest.
            Exit::Notification { .. } => Step::Resume {
                completed: false,
                fault: None,
            },
            Exit::DrAccess { .. } | Exit::Other { .. } => Step::Fail(FailKind::Unhandled),
        }
    }

    /// XSETBV: #UD without XSAVE or with CR4.OSXSAVE clear; #GP(0) at
    /// CPL > 0, for an XCR other than 0 or a value XSETBV refuses on a CPU
    /// with what the VM offers (SDM vol. 2C, XSETBV); else the value,
    /// which [`Self::finish`] hands the stub with `SET_XCR0`.
    fn xsetbv(&mut self, rec: &ExitRecord, cpu: &mut VcpuState) -> Step {
        let offered = crate::cpuid::offered_xcr0(&*self.host);
        if offered == 0 || cpu.cr4 & crate::vcpu::CR4_OSXSAVE == 0 {
            return Step::Resume {
                completed: false,
                fault: Some(Fault::ud()),
            };
        }
        let value = (cpu.regs.rdx & 0xffff_ffff) << 32 | (cpu.regs.rax & 0xffff_ffff);
        let ok =
            rec.cpl == 0 && cpu.regs.rcx as u32 == 0 && crate::cpuid::xcr0_valid(value, offered);
        if !ok {
            return Step::Resume {
                completed: false,
                fault: Some(Fault::gp(0)),
            };
        }
        self.xcr0 = value;
        self.load_xcr0 = true;
        self.complete(rec, cpu)
    }

    /// MOV to CR4 under nested paging: #GP(0) for a bit the VM does not
    /// offer ([`crate::vcpu::mov_to_cr4`]), else the new value, which
    /// [`Self::finish`] hands the stub with `SET_PAGING`. The source
    /// register comes from the exit (SVM decode assists, the VMX
    /// qualification) or from decoding the instruction.
    fn mov_to_cr4(&mut self, rec: &ExitRecord, cpu: &mut VcpuState, gpr: Option<u8>) -> Step {
        let n = match gpr {
            Some(n) => Some(usize::from(n)),
            None => {
                let mut bus = Bus {
                    irq: &mut self.irq,
                    router: &mut self.router,
                    mmio: &mut self.mmio,
                };
                let mut e = Emulator::new(cpu, &mut *self.mem, &mut self.walker, &mut bus);
                e.decode(None).ok().and_then(|(i, _)| {
                    use iced_x86::{Code, Register};
                    let mov = matches!(i.code(), Code::Mov_cr_r32 | Code::Mov_cr_r64)
                        && i.op0_register() == Register::CR4;
                    mov.then(|| i.op1_register().full_register().number())
                })
            }
        };
        let Some(n) = n else {
            return Step::Fail(FailKind::NoNextRip);
        };
        let mut value = cpu.gpr(n);
        if !cpu.mode64() {
            value &= 0xffff_ffff;
        }
        let offered = crate::cpuid::offered_cr4(&*self.host);
        match crate::vcpu::mov_to_cr4(cpu, value, offered) {
            Some(cr4) => {
                cpu.cr4 = cr4;
                self.complete(rec, cpu)
            }
            None => Step::Resume {
                completed: false,
                fault: Some(Fault::gp(0)),
            },
        }
    }

    /// The address of the next instruction: the record's `next_rip`, for an
    /// SVM IOIO exit EXITINFO2 (APM vol. 2, 15.10.2), else the decoded
    /// instruction's length.
    fn next_ip(&mut self, rec: &ExitRecord, cpu: &mut VcpuState) -> Option<u64> {
        if rec.next_rip != 0 {
            return Some(rec.next_rip);
        }
        if VcpuArch::from_raw(rec.arch) == Some(VcpuArch::Svm)
            && rec.exit_code == svm_exit::IOIO
            && rec.exit_info2 != 0
        {
            return Some(rec.exit_info2);
        }
        let mask = cpu.ip_mask();
        let mut bus = Bus {
            irq: &mut self.irq,
            router: &mut self.router,
            mmio: &mut self.mmio,
        };
        let mut e = Emulator::new(cpu, &mut *self.mem, &mut self.walker, &mut bus);
        e.decode(None).ok().map(|(i, _)| i.next_ip() & mask)
    }

    fn complete(&mut self, rec: &ExitRecord, cpu: &mut VcpuState) -> Step {
        match self.next_ip(rec, cpu) {
            Some(rip) => {
                cpu.regs.rip = rip;
                RESUME
            }
            None => Step::Fail(FailKind::NoNextRip),
        }
    }

    fn port_io(&mut self, cpu: &mut VcpuState, io: IoAccess, next_rip: u64) -> Step {
        cpu.regs.rip = next_rip;
        match io.direction {
            IoDirection::Out => match self.bus().port_write(io.port, io.size, io.value) {
                WriteOutcome::Stop { status } => Step::Stop(status),
                WriteOutcome::Reset => Step::Reset,
                WriteOutcome::Continue => RESUME,
            },
            IoDirection::In => {
                let value = self.bus().port_read(io.port, io.size);
                cpu.regs.rax = merge_in(cpu.regs.rax, io.size, value);
                RESUME
            }
        }
    }

    fn emulate(&mut self, rec: &ExitRecord, cpu: &mut VcpuState, expect: Expect) -> Step {
        let n = usize::from(rec.insn_len).min(rec.insn_bytes.len());
        let hint = (n > 0).then_some(&rec.insn_bytes[..n]);
        let mut bus = Bus {
            irq: &mut self.irq,
            router: &mut self.router,
            mmio: &mut self.mmio,
        };
        let mut e = Emulator::new(cpu, &mut *self.mem, &mut self.walker, &mut bus);
        e.max_iterations = self.config.max_string_iterations;
        // Under RFLAGS.TF the CPU traps after each iteration of a REP
        // string instruction.
        if rec.regs.rflags & RFLAGS_TF != 0 {
            e.max_iterations = 1;
        }
        match e.step(hint, expect) {
            Ok(done) => {
                self.stats.emulated += 1;
                self.partial_step = !done.completed;
                match done.outcome {
                    WriteOutcome::Stop { status } => Step::Stop(status),
                    WriteOutcome::Reset => Step::Reset,
                    WriteOutcome::Continue => Step::Resume {
                        completed: done.completed,
                        fault: None,
                    },
                }
            }
            Err(EmuError::Fault(f)) => Step::Resume {
                completed: false,
                fault: Some(f),
            },
            // What the CPU does with bytes that are no instruction.
            Err(EmuError::Undecodable(_)) => Step::Resume {
                completed: false,
                fault: Some(Fault::ud()),
            },
            Err(e) => Step::Fail(FailKind::Emulation(e)),
        }
    }

    fn msr(&mut self, rec: &ExitRecord, cpu: &mut VcpuState, write: bool) -> Step {
        let index = cpu.regs.rcx as u32;
        let ctx = MsrContext {
            efer: rec.efer,
            tsc: self.guest_tsc(),
        };
        let r = if self.irq.owns_msr(index) {
            let r = if write {
                let v = (cpu.regs.rdx << 32) | (cpu.regs.rax & 0xffff_ffff);
                self.irq.write_msr(index, v, ctx.tsc)
            } else {
                self.irq.read_msr(index).map(|v| {
                    cpu.regs.rax = v & 0xffff_ffff;
                    cpu.regs.rdx = v >> 32;
                })
            };
            r.map_err(|_| MsrError::Gp)
        } else if write {
            let v = (cpu.regs.rdx << 32) | (cpu.regs.rax & 0xffff_ffff);
            self.msrs.write(index, v, &ctx)
        } else {
            self.msrs.read(index, &ctx).map(|v| {
                cpu.regs.rax = v & 0xffff_ffff;
                cpu.regs.rdx = v >> 32;
            })
        };
        match r {
            Ok(()) => self.complete(rec, cpu),
            Err(MsrError::Gp) => Step::Resume {
                completed: false,
                fault: Some(Fault::gp(0)),
            },
            Err(MsrError::NeedsStub) => Step::Fail(FailKind::MsrNeedsStub { index, write }),
        }
    }

    /// HLT with interrupts enabled: skip virtual time to the next deadline
    /// until an interrupt is pending, or wait for host input when no timer
    /// is armed.
    fn halt(&mut self, rec: &ExitRecord, cpu: &mut VcpuState) -> Step {
        let Some(next) = self.next_ip(rec, cpu) else {
            return Step::Fail(FailKind::NoNextRip);
        };
        for _ in 0..self.config.max_warps_per_exit.max(1) {
            if self.irq.interrupt_pending() {
                cpu.regs.rip = next;
                return RESUME;
            }
            // A device server works for the guest and will notify: let
            // the stub run it and the guest go on past the HLT (a wake-up
            // without an interrupt, as after an SMI; an idle loop halts
            // again), on the host's clock, rather than skip time or spin
            // here. Not back to the HLT itself: the interrupt that ends
            // the work would then be delivered before the HLT, and a
            // guest's `sti; hlt` after its last check would sleep through
            // it until its next timer tick.
            if self.pci.is_some_and(|b| b.busy()) {
                self.stats.busy_halts += 1;
                cpu.regs.rip = next;
                return RESUME;
            }
            match (self.next_deadline, self.irq.tsc_deadline()) {
                // The TSC deadline comes before any virtual one: it is the
                // host's TSC, which a warp of the virtual clock does not
                // move, so wait for it.
                (d, Some(tsc)) if d.is_none_or(|d| self.virtual_to_tsc(d) > self.host_tsc(tsc)) => {
                    let t = self.host.now();
                    self.host.wait_until(self.host_tsc(tsc));
                    self.waited += self.host.now().saturating_sub(t);
                }
                (Some(d), _) => {
                    let before = self.board.clock.now();
                    self.board.clock.advance_to(d);
                    self.stats.warps += 1;
                    // The guest's TSC skips ahead with the clock.
                    if self.config.tsc_offsetting {
                        let ns = self.board.clock.now().saturating_sub(before);
                        let ticks = self.virtual_to_ticks(ns);
                        self.tsc_offset = self.tsc_offset.wrapping_add(ticks);
                    }
                }
                (None, _) if self.waited_for_input() => {}
                (None, _) => return Step::Fail(FailKind::HaltedWithInterruptsEnabled),
            }
            self.poll_devices();
        }
        // Nothing could reach the guest yet: let it run the HLT again.
        self.idle_halts += 1;
        if self.idle_halts >= self.config.idle_limit {
            return Step::Fail(FailKind::IdleForever {
                halts: self.idle_halts,
            });
        }
        Step::Resume {
            completed: false,
            fault: None,
        }
    }

    /// [`Host::wait_for_input`], with the time waited kept.
    fn waited_for_input(&mut self) -> bool {
        let t = self.host.now();
        let more = self.host.wait_for_input();
        self.waited += self.host.now().saturating_sub(t);
        more
    }

    /// Builds the resume: the registers that changed, then at most one
    /// event, by priority: an event the exit interrupted (EXITINTINFO), a
    /// fault the exit raised, the PIC's interrupt if the guest can take it.
    fn finish(
        &mut self,
        rec: &ExitRecord,
        exit: Exit,
        cpu: &VcpuState,
        completed: bool,
        fault: Option<Fault>,
    ) -> Action {
        self.exclude_handling_time();
        let mut flags = ResumeFlags::empty();
        let (old, new) = (&rec.regs, &cpu.regs);
        if gprs_differ(old, new) {
            flags |= ResumeFlags::SET_GPRS;
        }
        if old.rip != new.rip {
            flags |= ResumeFlags::SET_RIP;
        }
        if old.rflags != new.rflags {
            flags |= ResumeFlags::SET_RFLAGS;
        }
        let mut r = resume(flags, cpu.regs);
        // A MOV to CR4 the vmm-server completed (nested paging only: under
        // shadow paging CR4 is the mmu-server's).
        if cpu.cr4 != rec.cr4 && !self.config.shadow_paging {
            r.paging.cr4 = cpu.cr4;
            flags |= ResumeFlags::SET_PAGING;
        }
        // An XSETBV the vmm-server completed.
        if core::mem::take(&mut self.load_xcr0) {
            r.xcr0 = self.xcr0;
            flags |= ResumeFlags::SET_XCR0;
        }
        if rec.exit_int_info & EXITINTINFO_VALID != 0 {
            if let Some(event) = rec
                .event_to_redeliver()
                .filter(|e| EventKind::from_raw(e.kind).is_some())
            {
                r.event = event;
                flags |= ResumeFlags::INJECT_EVENT;
            }
        } else if let Some(f) = fault {
            let key = (rec.regs.rip, f.vector);
            if (self.fault_streak.0, self.fault_streak.1) == key {
                self.fault_streak.2 += 1;
            } else {
                self.fault_streak = (key.0, key.1, 1);
            }
            if self.fault_streak.2 >= self.config.fault_loop_limit {
                let kind = FailKind::FaultLoop {
                    vector: f.vector,
                    count: self.fault_streak.2,
                };
                return Action::Fail(FailReason::new(kind, exit, rec));
            }
            // Real mode pushes no error codes.
            let error_code = f.error_code.filter(|_| cpu.protected());
            r.event = EventInjection {
                vector: f.vector,
                kind: EventKind::Exception as u8,
                has_error_code: u8::from(error_code.is_some()),
                reserved: 0,
                error_code: error_code.unwrap_or(0),
            };
            flags |= ResumeFlags::INJECT_EVENT;
            if let Some(cr2) = f.cr2 {
                r.cr2 = cr2;
                flags |= ResumeFlags::SET_CR2;
            }
            self.stats.exceptions += 1;
        }
        if fault.is_none() {
            self.fault_streak = (0, 0, 0);
        }
        // The guest ran with RFLAGS.TF and the server finished its
        // instruction (CPUID, IN/OUT, RDMSR/WRMSR, an emulated one, or an
        // iteration of a REP string one): the CPU would take the
        // single-step trap after it, before any external interrupt
        // (SDM vol. 3A, 6.9). DR6.BS is not set: the ABI cannot.
        if !flags.contains(ResumeFlags::INJECT_EVENT)
            && fault.is_none()
            && (completed || self.partial_step)
            && rec.regs.rflags & RFLAGS_TF != 0
        {
            r.event = EventInjection {
                vector: 1,
                kind: EventKind::Exception as u8,
                has_error_code: 0,
                reserved: 0,
                error_code: 0,
            };
            flags |= ResumeFlags::INJECT_EVENT;
            self.stats.exceptions += 1;
        }
        let shadow = rec.interrupt_shadow != 0 && !completed;
        if !flags.contains(ResumeFlags::INJECT_EVENT) && !shadow && self.irq.take_nmi() {
            r.event = EventInjection {
                vector: 2,
                kind: EventKind::Nmi as u8,
                has_error_code: 0,
                reserved: 0,
                error_code: 0,
            };
            flags |= ResumeFlags::INJECT_EVENT;
        }
        if self.irq.interrupt_pending() {
            if !flags.contains(ResumeFlags::INJECT_EVENT)
                && cpu.regs.rflags & RFLAGS_IF != 0
                && !shadow
            {
                r.event = EventInjection {
                    vector: self.irq.acknowledge().0,
                    kind: EventKind::ExternalInterrupt as u8,
                    has_error_code: 0,
                    reserved: 0,
                    error_code: 0,
                };
                flags |= ResumeFlags::INJECT_EVENT;
                self.stats.irqs += 1;
                self.idle_halts = 0;
            } else {
                flags |= ResumeFlags::REQUEST_INTERRUPT_WINDOW;
                self.stats.windows += 1;
            }
        }
        // The stub's timer ends a run without exits at the next deadline;
        // tell it when that moves.
        let deadline = self.stub_deadline().unwrap_or(0);
        if self.tsc_offset != self.told_tsc_offset {
            r.tsc_offset = self.tsc_offset;
            flags |= ResumeFlags::SET_TSC_OFFSET;
            self.told_tsc_offset = self.tsc_offset;
        }
        if deadline != self.told_deadline {
            r.exit_deadline = deadline;
            flags |= ResumeFlags::SET_EXIT_DEADLINE;
            self.told_deadline = deadline;
        }
        r.flags = flags.bits();
        self.last_delivery = Delivery {
            event: flags.contains(ResumeFlags::INJECT_EVENT).then_some(r.event),
            window: flags.contains(ResumeFlags::REQUEST_INTERRUPT_WINDOW),
            open: cpu.regs.rflags & RFLAGS_IF != 0 && !shadow,
        };
        self.history
            .answer(if flags.contains(ResumeFlags::INJECT_EVENT) {
                Answer::Injected {
                    kind: r.event.kind,
                    vector: r.event.vector,
                    error_code: (r.event.has_error_code != 0).then_some(r.event.error_code),
                }
            } else {
                Answer::Resumed
            });
        Action::Resume(r)
    }
}

fn gprs_differ(a: &GuestRegs, b: &GuestRegs) -> bool {
    let pick = |r: &GuestRegs| {
        [
            r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.rsp, r.r8, r.r9, r.r10, r.r11,
            r.r12, r.r13, r.r14, r.r15,
        ]
    };
    pick(a) != pick(b)
}

/// RAX after `IN`: size 1 replaces AL, size 2 AX, size 4 sets RAX to the
/// zero-extended value.
pub fn merge_in(rax: u64, size: IoSize, value: u32) -> u64 {
    let value = u64::from(value & size.mask());
    match size {
        IoSize::Byte => (rax & !0xff) | value,
        IoSize::Word => (rax & !0xffff) | value,
        IoSize::Dword => value,
    }
}

/// A resume of this ABI version applying `flags` with `regs`.
pub fn resume(flags: ResumeFlags, regs: GuestRegs) -> Resume {
    Resume {
        abi_version: ipc_proto::ABI_VERSION,
        flags: flags.bits(),
        regs,
        event: EventInjection::default(),
        paging: Default::default(),
        cr2: 0,
        exit_deadline: 0,
        xcr0: 0,
        tsc_offset: 0,
    }
}

#[cfg(test)]
mod tests;
