//! The exit deadline: a host timer that bounds each guest entry, so that the
//! vmm-server gets an exit at its next timer deadline even when the guest
//! makes none of its own (a kernel spinning on `jiffies`).
//!
//! The timer is the host's PIT channel 0 in mode 0 (one-shot: OUT rises at
//! terminal count) on IRQ 0 of the host's 8259, the one line left unmasked.
//! While the guest runs, that interrupt is a VM exit (SVM INTR intercept
//! with the host's IF set at VMRUN, APM vol. 2 15.21; VMX external-interrupt
//! exiting, SDM vol. 3 25.2). The stub itself never takes it through its
//! IDT (in ring 0 IF or GIF is clear): after an exit it acknowledges it
//! with the 8259's poll command (OCW3 P=1, which is an INTA by port I/O)
//! and an EOI. Only a server (ring 3, IF set) is interrupted by it: the
//! watchdog's tick (below).
//! The PIT counts at 1.193182 MHz, 16 bits: one arming covers at most 55 ms;
//! a deadline further away takes several.
//!
//! The 8259 lines that the manifest grants to device servers
//! (`Rights::irqs`) are unmasked too (with the cascade, line 2, for lines
//! 8-15): their interrupts also end the guest's run, and the same poll
//! finds them. The stub masks such a line, and `vm` sets its bit in the
//! owner's notification word; the owner's `IrqAck` unmasks it again.
//! After each host interrupt both IMRs are written back unchanged
//! ([`settle`]): Bochs's 8259 lowers its INT output only when it looks
//! again, and a device line that fell while the guest was out would keep
//! every later entry exiting at once.
//!
//! The stub's idle loop (`vm`, when the guest cannot run) polls the
//! request registers ([`asking`]) instead of taking interrupts.
//!
//! Servers run with RFLAGS.IF set (the watchdog, `kernel_stub::watchdog`):
//! an interrupt that comes while one runs is taken through the stub's IDT
//! at [`IRQ_VECTOR_BASE`] + line ([`init`] moves the 8259s' vectors above
//! the exceptions), ended with [`end_of_interrupt`], and then handled as
//! after a guest exit ([`ExitDeadline::fired`]).

use crate::cpu::{inb, outb};
use kernel_stub::notify::TicksPer;

const PIT_HZ: u64 = 1_193_182;
const PIT_CH0: u16 = 0x40;
const PIT_CMD: u16 = 0x43;
const PIC1_CMD: u16 = 0x20;
const PIC1_DATA: u16 = 0x21;
const PIC2_CMD: u16 = 0xa0;
const PIC2_DATA: u16 = 0xa1;
/// The master's line the slave 8259 cascades into.
const CASCADE: u8 = 2;

/// The vector of host IRQ line 0 when it interrupts a server; lines 1-15
/// follow. The firmware's bases (8 and 0x70) put the master's lines on
/// exception vectors.
pub const IRQ_VECTOR_BASE: u8 = 0x20;

/// Programs both 8259s again (vectors from [`IRQ_VECTOR_BASE`]), masks
/// every host IRQ but the PIT's and clears what the firmware left pending.
/// The PIT waits in mode 0 for its first count.
pub fn init() {
    // ICW1 (edge-triggered, cascaded, ICW4 follows), ICW2 (vector base),
    // ICW3 (the slave on line 2), ICW4 (8086 mode, normal EOI); 8259A
    // datasheet, "Initialization command words".
    outb(PIC1_CMD, 0x11);
    outb(PIC2_CMD, 0x11);
    outb(PIC1_DATA, IRQ_VECTOR_BASE);
    outb(PIC2_DATA, IRQ_VECTOR_BASE + 8);
    outb(PIC1_DATA, 1 << CASCADE);
    outb(PIC2_DATA, CASCADE);
    outb(PIC1_DATA, 0x01);
    outb(PIC2_DATA, 0x01);
    outb(PIC1_DATA, 0xfe);
    outb(PIC2_DATA, 0xff);
    outb(PIT_CMD, 0x30); // channel 0, lobyte/hibyte, mode 0, binary: OUT low
    for _ in 0..8 {
        if !acknowledge() {
            break;
        }
    }
}

/// Takes a pending interrupt off the 8259 (poll command, then EOI); false
/// when none was pending.
pub fn acknowledge() -> bool {
    take_line().is_some()
}

/// Takes the highest-priority pending interrupt off the 8259 pair with the
/// poll command (OCW3 P=1, an INTA by port I/O) and EOIs it: its line
/// (0-15), or `None` when nothing was pending.
fn take_line() -> Option<u8> {
    outb(PIC1_CMD, 0x0c); // OCW3: poll
    let v = inb(PIC1_CMD);
    if v & 0x80 == 0 {
        return None;
    }
    let mut line = v & 7;
    if line == CASCADE {
        outb(PIC2_CMD, 0x0c);
        let v2 = inb(PIC2_CMD);
        if v2 & 0x80 != 0 {
            line = 8 + (v2 & 7);
            outb(PIC2_CMD, 0x20); // non-specific EOI
        }
    }
    outb(PIC1_CMD, 0x20); // non-specific EOI
    Some(line)
}

/// Ends line `line`'s interrupt that the CPU took through the IDT (its
/// INTA set the in-service bit): a specific EOI (OCW2), to the master's
/// cascade line too for a slave line. A spurious 7 or 15 has no in-service
/// bit of its own, and the specific EOI clears nothing there.
pub fn end_of_interrupt(line: u8) {
    if line >= 8 {
        outb(PIC2_CMD, 0x60 | (line & 7));
        outb(PIC1_CMD, 0x60 | CASCADE);
    } else {
        outb(PIC1_CMD, 0x60 | (line & 7));
    }
}

/// The unmasked lines whose request bit (IRR, OCW3 read-register
/// command) is set, bit n for line n.
fn requests() -> u16 {
    outb(PIC1_CMD, 0x0a);
    outb(PIC2_CMD, 0x0a);
    let irr = u16::from_le_bytes([inb(PIC1_CMD), inb(PIC2_CMD)]);
    let imr = u16::from_le_bytes([inb(PIC1_DATA), inb(PIC2_DATA)]);
    irr & !imr
}

/// Makes both 8259s look at their requests again: each IMR is written
/// back unchanged, the slave's first. Bochs's 8259 drops its INT output
/// only when it looks (an IMR write, an EOI, its own poll; not when a line
/// falls): a disk that raised IRQ 14 while the guest did not run and whose
/// line fell at its driver's status read leaves the slave's INT, the
/// master's cascade request and the CPU's INTR up, and every entry would
/// exit at once, for ever (the poll never reaches the slave: Bochs's
/// master answers it without the "pending" bit). Real 8259s and QEMU's
/// follow their lines and ignore the rewrite.
fn settle() {
    outb(PIC2_DATA, inb(PIC2_DATA));
    outb(PIC1_DATA, inb(PIC1_DATA));
}

/// Which of `lines` ask now (unmasked, request bit set): the stub's idle
/// loop polls this instead of taking interrupts through its IDT.
pub fn asking(lines: u16) -> u16 {
    requests() & lines
}

/// Which of `lines` are unmasked (could interrupt).
pub fn unmasked(lines: u16) -> u16 {
    !u16::from_le_bytes([inb(PIC1_DATA), inb(PIC2_DATA)]) & lines
}

/// Masks (`mask`) or unmasks 8259 line `line` (0-15); unmasking a slave
/// line unmasks the cascade too.
pub fn set_masked(line: u8, mask: bool) {
    let (port, bit) = if line < 8 {
        (PIC1_DATA, line)
    } else {
        (PIC2_DATA, line & 7)
    };
    let imr = inb(port);
    outb(
        port,
        if mask {
            imr | 1 << bit
        } else {
            imr & !(1 << bit)
        },
    );
    if line >= 8 && !mask {
        outb(PIC1_DATA, inb(PIC1_DATA) & !(1 << CASCADE));
    }
}

/// The deadline's state between entries.
pub struct ExitDeadline {
    /// The host TSC value the guest must exit by; 0 when there is none.
    pub at: u64,
    /// The deadline the timer counts towards now, until it fires.
    armed: Option<u64>,
    tsc_hz: u64,
    /// TSC ticks to the timer's (the PIT's or the local APIC timer's).
    per_tsc: TicksPer,
    /// Another CPU than the boot CPU: the PIT and the 8259s are the boot
    /// CPU's, so the timer is this CPU's local APIC timer (one-shot, on
    /// `smp::TIMER_VECTOR`), counting this many ticks a second.
    lapic_hz: Option<u64>,
}

impl ExitDeadline {
    /// No deadline; `tsc_hz` converts TSC ticks to PIT ticks (0: the timer
    /// is never armed).
    pub const fn new(tsc_hz: u64) -> Self {
        Self {
            at: 0,
            armed: None,
            tsc_hz,
            per_tsc: TicksPer::new(PIT_HZ, tsc_hz),
            lapic_hz: None,
        }
    }

    /// As [`ExitDeadline::new`], on another CPU: its local APIC timer,
    /// `lapic_hz` ticks a second (0: never armed).
    pub const fn local(tsc_hz: u64, lapic_hz: u64) -> Self {
        Self {
            at: 0,
            armed: None,
            tsc_hz: if lapic_hz == 0 { 0 } else { tsc_hz },
            per_tsc: TicksPer::new(lapic_hz, tsc_hz),
            lapic_hz: Some(lapic_hz),
        }
    }

    /// Stops the count (a new PIT mode word; a zero APIC initial count).
    fn stop(&self) {
        match self.lapic_hz {
            None => outb(PIT_CMD, 0x30),
            Some(_) => crate::smp::timer_start(0),
        }
    }

    /// Ends the interrupt of `line` that the CPU took through the IDT: the
    /// 8259's; the local APIC's timer was ended at its trap already.
    pub fn end_of_interrupt(&self, line: u8) {
        if self.lapic_hz.is_none() {
            end_of_interrupt(line);
        }
    }

    /// Whether the 8259s' lines are this CPU's to poll (the boot CPU's).
    pub fn has_lines(&self) -> bool {
        self.lapic_hz.is_none()
    }

    /// Before an entry: starts the PIT towards the deadline, or towards
    /// `task`'s (the earliest `ReplyRecv` timeout) when that is earlier,
    /// unless it already counts towards it. With neither, a count the
    /// watchdog started is stopped (it would only end the guest's run).
    pub fn arm(&mut self, now_tsc: u64, task: Option<u64>) {
        let own = (self.at != 0).then_some(self.at);
        let Some(at) = kernel_stub::notify::WakeAt::earliest(own, task) else {
            if self.armed.take().is_some() {
                self.stop();
            }
            return;
        };
        self.arm_at(now_tsc, at);
    }

    /// Before the stub hands the CPU to a server: starts the PIT towards
    /// the watchdog's bite (`watchdog`), unless it counts already (it then
    /// interrupts within 55 ms, and the tick arms it again). Only the
    /// watchdog: the exit deadline and the `ReplyRecv` timeouts matter
    /// when the guest would run or a task could, not while a server runs
    /// (no preemption), and one already past would interrupt the server
    /// at every PIT tick.
    pub fn arm_for_server(&mut self, now_tsc: u64, watchdog: Option<u64>) {
        if let (None, Some(at)) = (self.armed, watchdog) {
            self.arm_at(now_tsc, at);
        }
    }

    fn arm_at(&mut self, now_tsc: u64, at: u64) {
        if self.tsc_hz == 0 || self.armed == Some(at) {
            return;
        }
        let left = at.saturating_sub(now_tsc);
        if self.lapic_hz.is_some() {
            let ticks = self.per_tsc.of(left);
            crate::smp::timer_start(u32::try_from(ticks).unwrap_or(u32::MAX).max(1));
            self.armed = Some(at);
            return;
        }
        let ticks = self.per_tsc.of(left).clamp(1, 0xffff) as u16;
        outb(PIT_CMD, 0x30);
        let [lo, hi] = ticks.to_le_bytes();
        outb(PIT_CH0, lo);
        outb(PIT_CH0, hi);
        self.armed = Some(at);
    }

    /// After an exit for a host interrupt: the PIT has fired (at the
    /// deadline, or on the way to one more than 55 ms off), or a device
    /// server's line (`granted`: bit n for line n). Takes every pending
    /// interrupt; returns the lines other than the PIT's that fired, each
    /// now masked. The PIT is re-armed at the next entry either way.
    pub fn fired(&mut self, granted: u16) -> u16 {
        if self.lapic_hz.is_some() {
            // The APIC timer's interrupt is still pending (exits do not
            // acknowledge it): taken and ended through the IDT now.
            self.armed = None;
            crate::smp::take_pending_interrupt();
            return 0;
        }
        // OUT low again (a mode 0 control word) before the acknowledge:
        // Bochs's 8259 keeps asking for IRQ 0 while the line stays high,
        // and with no new deadline to arm, every entry would exit at once.
        outb(PIT_CMD, 0x30);
        self.armed = None;
        let mut lines = 0u16;
        for _ in 0..16 {
            match take_line() {
                None => break,
                // The PIT, or the cascade with nothing behind it.
                Some(0 | CASCADE) => {}
                Some(line) => lines |= 1 << line,
            }
        }
        // Bochs's poll is no INTA and returns no "pending" bit (its 8259
        // drops a request when the line falls, not at an acknowledge):
        // the request registers say which granted lines ask. Masking the
        // line stops the exits until the owner quiets its device.
        lines |= requests() & granted;
        for line in (0..16).filter(|l| lines & (1 << l) != 0) {
            set_masked(line, true);
        }
        settle();
        lines
    }
}
