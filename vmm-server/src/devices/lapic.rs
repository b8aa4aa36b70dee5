//! The local APIC of one vCPU (Intel SDM vol. 3A, chapter 11).
//!
//! A plain state machine like the other devices: time comes from the
//! [`VirtualClock`], [`LocalApic::poll`] fires the timer and returns its
//! next expiry, and the exit handler asks [`LocalApic::pending_vector`] /
//! [`LocalApic::acknowledge`] what to inject. Interrupt messages from the
//! I/O APIC and MSI arrive through [`LocalApic::deliver`]; EOIs of
//! level-triggered vectors leave through [`LocalApic::take_eoi`] for the
//! I/O APIC.
//!
//! Modelled:
//! - IA32_APIC_BASE with the mode transitions of SDM 11.12.5 (disabled,
//!   xAPIC, x2APIC); a global disable resets the registers as hardware
//!   does.
//! - The xAPIC page ([`MmioDevice`]) and the x2APIC MSRs 0x800-0x8FF
//!   ([`LocalApic::msr_read`], [`LocalApic::msr_write`]) over one register
//!   file, with each interface's rules (SDM 11.4.1, 11.12.1).
//! - IRR/ISR/TMR, TPR/PPR priority (11.8.3.1), EOI with the level-triggered
//!   broadcast, spurious interrupts (11.9), ESR with its write-to-update
//!   semantics and the error interrupt (11.5.3).
//! - Destinations: physical, logical flat/cluster (xAPIC) and cluster
//!   (x2APIC) (11.6.2, 11.12.10).
//! - The ICR and x2APIC SELF_IPI: with one vCPU, what reaches us is
//!   delivered locally, what addresses an absent APIC is dropped.
//! - The timer: one-shot, periodic and TSC-deadline (11.5.4).
//!
//! Choices, where the SDM leaves room or this VM has one vCPU:
//! - Version register [`VERSION`] = 0x50014, as QEMU: version 0x14, max
//!   LVT entry 5 (six LVTs, no CMCI: that needs max LVT 6 and the machine
//!   check architecture, SDM 11.5.1), no EOI-broadcast suppression
//!   (bit 24 clear, so SVR bit 12 is reserved).
//! - Power-on leaves LINT0 unmasked in ExtINT mode (0x700), as QEMU does
//!   for the BSP, so that a guest that only programs the 8259 still gets
//!   its interrupts (the virtual wire, SDM 11.4.7.1 otherwise masks it).
//! - xAPIC page: an access at an offset that is not 16-byte aligned reads
//!   0 and writes nothing; a write narrower than 4 bytes is dropped (as
//!   QEMU); reading or writing a reserved register reads 0 and sets ESR
//!   bit 7 (illegal register address, as the Pentium 4 and later and
//!   QEMU); a write to a read-only register is silently dropped.
//! - An IPI to an APIC ID that does not exist sets ESR bit 2 (send accept
//!   error) in xAPIC mode. The SDM (11.5.3, table 11-6) lists that bit for
//!   P6 family and Pentium processors only; later processors just drop
//!   the message. We keep it as a diagnostic (a guest reading ESR sees why
//!   its IPI went nowhere) and never set it in x2APIC mode.
//! - [`LocalApic::acknowledge`] with nothing deliverable (the request went
//!   away, or the APIC is software-disabled) returns the SVR's spurious
//!   vector without touching ISR (SDM 11.9): the guest's handler for it
//!   must not EOI.
//! - A software-disabled APIC holds IRR (it is not offered to the CPU) and
//!   accepts only NMI, SMI, INIT and SIPI messages (SDM 11.4.7.2).
//! - In xAPIC mode a physical or logical destination is its low 8 bits
//!   (the width of the xAPIC destination field).
//!
//! Left out: LINT0/LINT1 level-triggered fixed delivery and remote IRR
//! (local interrupts are edges), the thermal, performance-counter and CMCI
//! sources (their LVTs are stored, nothing raises them), EOI-broadcast
//! suppression, APR and remote read (read 0), other vCPUs (INIT/SIPI).

use super::interrupt::{DeliveryMode, Destination, InterruptMessage};
use super::WriteOutcome;
use crate::board::{Nanos, VirtualClock, SECOND};
use crate::mmio::MmioDevice;

/// Where the xAPIC page sits after reset (IA32_APIC_BASE bits 12 and up).
pub const APIC_BASE_DEFAULT: u64 = 0xFEE0_0000;
/// IA32_APIC_BASE bit 8: this is the bootstrap processor (read-only).
pub const APIC_BASE_BSP: u64 = 1 << 8;
/// IA32_APIC_BASE bit 10: x2APIC mode (EXTD).
pub const APIC_BASE_EXTD: u64 = 1 << 10;
/// IA32_APIC_BASE bit 11: APIC global enable (EN).
pub const APIC_BASE_EN: u64 = 1 << 11;
/// Size of the xAPIC register page.
pub const MMIO_SIZE: u64 = 0x1000;
/// The x2APIC MSR range (SDM 11.12.1.2): MSR 0x800 + xAPIC offset / 16.
pub const X2APIC_MSR_FIRST: u32 = 0x800;
/// Last MSR of the x2APIC range.
pub const X2APIC_MSR_LAST: u32 = 0x8ff;
/// IA32_TSC_DEADLINE (SDM 11.5.4.1), handled by the caller through
/// [`LocalApic::write_tsc_deadline`] and [`LocalApic::tsc_deadline`].
pub const MSR_TSC_DEADLINE: u32 = 0x6e0;
/// The timer's input clock before the divider: 1 GHz, QEMU's APIC bus, so
/// that one tick at divide-by-1 is one virtual nanosecond.
pub const TIMER_HZ: u64 = 1_000_000_000;
/// Version register: version 0x14 (integrated APIC), max LVT entry 5
/// (bits 23:16), no EOI-broadcast suppression (bit 24).
pub const VERSION: u32 = 0x0005_0014;
/// The APIC ID hardware gives this (only, bootstrap) processor.
pub const INITIAL_ID: u32 = 0;

/// The guest's physical address width (CPUID 0x8000_0008 shows 48, see
/// `crate::cpuid`): base address bits at and above it are reserved.
const PHYS_BITS: u32 = 48;
/// Whether the CMCI LVT exists (max LVT entry >= 6, SDM 11.5.1).
const HAS_CMCI: bool = (VERSION >> 16) & 0xff >= 6;

/// xAPIC register offsets in the MMIO page (SDM table 11-1). The x2APIC
/// MSR of a register is `X2APIC_MSR_FIRST + offset / 16`.
pub mod reg {
    /// Local APIC ID.
    pub const ID: u64 = 0x20;
    /// Version (read-only).
    pub const VERSION: u64 = 0x30;
    /// Task priority.
    pub const TPR: u64 = 0x80;
    /// Arbitration priority (xAPIC only; reads 0 here).
    pub const APR: u64 = 0x90;
    /// Processor priority (read-only, computed).
    pub const PPR: u64 = 0xa0;
    /// End of interrupt (write-only).
    pub const EOI: u64 = 0xb0;
    /// Remote read (xAPIC only; reads 0).
    pub const RRD: u64 = 0xc0;
    /// Logical destination.
    pub const LDR: u64 = 0xd0;
    /// Destination format (xAPIC only).
    pub const DFR: u64 = 0xe0;
    /// Spurious interrupt vector.
    pub const SVR: u64 = 0xf0;
    /// In-service register, eight 32-bit words 16 bytes apart.
    pub const ISR: u64 = 0x100;
    /// Trigger mode register, as ISR.
    pub const TMR: u64 = 0x180;
    /// Interrupt request register, as ISR.
    pub const IRR: u64 = 0x200;
    /// Error status.
    pub const ESR: u64 = 0x280;
    /// LVT CMCI (absent here, see the module docs).
    pub const LVT_CMCI: u64 = 0x2f0;
    /// Interrupt command, low half (a write sends in xAPIC mode; the
    /// whole 64-bit ICR in x2APIC mode).
    pub const ICR_LOW: u64 = 0x300;
    /// Interrupt command, high half (xAPIC only).
    pub const ICR_HIGH: u64 = 0x310;
    /// LVT timer.
    pub const LVT_TIMER: u64 = 0x320;
    /// LVT thermal sensor.
    pub const LVT_THERMAL: u64 = 0x330;
    /// LVT performance monitoring counters.
    pub const LVT_PERF: u64 = 0x340;
    /// LVT LINT0.
    pub const LVT_LINT0: u64 = 0x350;
    /// LVT LINT1.
    pub const LVT_LINT1: u64 = 0x360;
    /// LVT error.
    pub const LVT_ERROR: u64 = 0x370;
    /// Timer initial count.
    pub const TIMER_INITIAL: u64 = 0x380;
    /// Timer current count (read-only).
    pub const TIMER_CURRENT: u64 = 0x390;
    /// Timer divide configuration.
    pub const TIMER_DIVIDE: u64 = 0x3e0;
    /// Self IPI (x2APIC only, write-only).
    pub const SELF_IPI: u64 = 0x3f0;
}

/// Error status register bits (SDM 11.5.3, table 11-6).
pub mod esr {
    /// Send accept error: an IPI nobody accepted (xAPIC mode, see the
    /// module docs).
    pub const SEND_ACCEPT: u32 = 1 << 2;
    /// Send illegal vector: an ICR or SELF_IPI write with a vector below 16.
    pub const SEND_ILLEGAL_VECTOR: u32 = 1 << 5;
    /// Receive illegal vector: an interrupt with a vector below 16 arrived
    /// (or an LVT named one); it is not put into IRR.
    pub const RECEIVE_ILLEGAL_VECTOR: u32 = 1 << 6;
    /// Illegal register address: a reserved offset of the xAPIC page.
    pub const ILLEGAL_REGISTER: u32 = 1 << 7;
}

/// LVT bit 16: masked.
pub const LVT_MASKED: u32 = 1 << 16;
/// LVT delivery mode ExtINT (bits 10:8 = 111).
const LVT_EXTINT: u32 = 7 << 8;
/// LVT delivery status (read-only, bit 12).
const LVT_STATUS: u32 = 1 << 12;
/// LVT remote IRR (LINT0/1, read-only, bit 14).
const LVT_REMOTE_IRR: u32 = 1 << 14;
/// SVR bit 8: APIC software enable.
const SVR_ENABLE: u32 = 1 << 8;
/// SVR bits the guest may set: vector, enable, focus-processor check
/// (bit 9, kept but meaningless with one vCPU). Bit 12 (EOI-broadcast
/// suppression) is not supported.
const SVR_WRITABLE: u32 = 0x3ff;
/// ICR low bits that are stored: vector, delivery mode, destination mode,
/// level, trigger mode, shorthand. Delivery status (12) always reads idle.
const ICR_LOW_WRITABLE: u32 = 0x000c_cfff;
/// x2APIC ICR bits that must be zero on WRMSR (SDM 11.12.9, as KVM):
/// 31:20, 17:16 and 13. Bit 12 (delivery status) is ignored.
const X2APIC_ICR_RESERVED: u64 = 0xfff0_0000 | 0x3_0000 | 1 << 13;
/// xAPIC DFR bits 27:0 read as ones.
const DFR_ONES: u32 = 0x0fff_ffff;
/// The divide configuration register's bits (0, 1 and 3).
const DIVIDE_WRITABLE: u32 = 0xb;

/// Indices into the LVT array, in register order (CMCI sits apart at
/// 0x2F0, the rest at 0x320-0x370).
const LVT_CMCI: usize = 0;
const LVT_TIMER: usize = 1;
const LVT_LINT0: usize = 4;
const LVT_LINT1: usize = 5;
const LVT_ERROR: usize = 6;
/// Number of LVT registers stored.
const LVT_COUNT: usize = 7;
/// The bits of each LVT that are stored (SDM figure 11-8): vector, delivery
/// mode where the entry has one, polarity and trigger for LINT0/1, mask,
/// timer mode.
const LVT_WRITABLE: [u32; LVT_COUNT] = [
    0x1_07ff, // CMCI
    0x7_00ff, // timer: vector, mask, mode 18:17
    0x1_07ff, // thermal
    0x1_07ff, // performance counters
    0x1_a7ff, // LINT0: vector, mode, polarity, trigger, mask
    0x1_a7ff, // LINT1
    0x1_00ff, // error
];

/// Why an access faults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApicError {
    /// The access raises #GP(0) in the guest.
    Gp,
}

/// The APIC's operating mode, from IA32_APIC_BASE EN and EXTD.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApicMode {
    /// Globally disabled (EN = 0): LINT0 and LINT1 are the CPU's INTR and
    /// NMI pins.
    Disabled,
    /// xAPIC: registers in the MMIO page.
    XApic,
    /// x2APIC: registers in MSRs 0x800-0x8FF.
    X2Apic,
}

/// LVT timer mode (bits 18:17, SDM 11.5.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TimerMode {
    /// 00, and the reserved 11 (counted as one-shot).
    OneShot,
    /// 01.
    Periodic,
    /// 10.
    TscDeadline,
}

/// Why a register write did not happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WriteFault {
    /// No such register in this mode.
    Absent,
    /// The register is read-only.
    ReadOnly,
    /// x2APIC: a reserved bit is set.
    Reserved,
}

/// The APIC timer. The count is never stepped: it is computed from the
/// virtual time since an anchor, in timer ticks (bus clocks / divisor).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Timer {
    /// Initial count register.
    initial: u32,
    /// Divide configuration register (bits 0, 1, 3).
    divide: u32,
    /// Virtual time of the anchor while counting (one-shot or periodic);
    /// `None` when stopped.
    anchor: Option<Nanos>,
    /// Ticks counted since the initial-count write at `anchor` (nonzero
    /// when the divider changed while counting).
    anchor_ticks: u64,
    /// Expiries already fired since the initial-count write.
    fired: u64,
    /// Periodic expiries that merged with an earlier one still unfired.
    lost: u64,
    /// IA32_TSC_DEADLINE, 0 when disarmed.
    tsc_deadline: u64,
}

impl Timer {
    const fn new() -> Self {
        Self {
            initial: 0,
            divide: 0,
            anchor: None,
            anchor_ticks: 0,
            fired: 0,
            lost: 0,
            tsc_deadline: 0,
        }
    }

    /// Bus clocks per tick (SDM figure 11-10): bits 3,1,0 = 111 divide by
    /// 1, else by 2 << (bit 3 : bits 1:0).
    fn divisor(&self) -> u64 {
        let i = ((self.divide >> 1) & 4) | (self.divide & 3);
        if i == 7 {
            1
        } else {
            2 << i
        }
    }

    /// Nanoseconds per tick (the bus runs at [`TIMER_HZ`]).
    fn tick_ns(&self) -> u64 {
        (self.divisor() * (SECOND / TIMER_HZ)).max(1)
    }

    /// Ticks since the initial-count write, at `now`.
    fn ticks(&self, now: Nanos) -> u64 {
        let Some(anchor) = self.anchor else {
            return 0;
        };
        self.anchor_ticks
            .saturating_add(now.saturating_sub(anchor) / self.tick_ns())
    }

    /// The virtual time at which tick `t` is reached.
    fn time_of_tick(&self, t: u64) -> Nanos {
        let anchor = self.anchor.unwrap_or(0);
        anchor.saturating_add(
            t.saturating_sub(self.anchor_ticks)
                .saturating_mul(self.tick_ns()),
        )
    }

    fn stop(&mut self) {
        self.anchor = None;
        self.anchor_ticks = 0;
        self.fired = 0;
    }
}

/// Highest set bit of a 256-bit register.
fn highest(bits: &[u32; 8]) -> Option<u8> {
    bits.iter()
        .enumerate()
        .rev()
        .find(|(_, w)| **w != 0)
        .map(|(i, w)| (i as u32 * 32 + 31 - w.leading_zeros()) as u8)
}

/// Lowest set bit of a 256-bit register.
fn lowest(bits: &[u32; 8]) -> Option<u8> {
    bits.iter()
        .enumerate()
        .find(|(_, w)| **w != 0)
        .map(|(i, w)| (i as u32 * 32 + w.trailing_zeros()) as u8)
}

fn test_bit(bits: &[u32; 8], v: u8) -> bool {
    bits.get(usize::from(v >> 5))
        .is_some_and(|w| w & (1 << (v & 31)) != 0)
}

fn set_bit(bits: &mut [u32; 8], v: u8, on: bool) {
    if let Some(w) = bits.get_mut(usize::from(v >> 5)) {
        if on {
            *w |= 1 << (v & 31);
        } else {
            *w &= !(1 << (v & 31));
        }
    }
}

/// The x2APIC logical ID of `id` (SDM 11.12.10.2): cluster in bits 31:16,
/// one bit of 16 in bits 15:0.
fn x2apic_ldr(id: u32) -> u32 {
    ((id >> 4) << 16) | (1 << (id & 0xf))
}

/// The local APIC of one vCPU (the bootstrap processor).
#[derive(Debug)]
pub struct LocalApic<'b> {
    clock: &'b VirtualClock,
    apic_base: u64,
    /// APIC ID: 8 bits in xAPIC mode (register bits 31:24), 32 in x2APIC.
    id: u32,
    tpr: u8,
    /// LDR as the register reads (xAPIC: bits 31:24).
    ldr: u32,
    dfr: u32,
    svr: u32,
    isr: [u32; 8],
    tmr: [u32; 8],
    irr: [u32; 8],
    /// ESR as the guest reads it (updated by an ESR write).
    esr: u32,
    /// Errors collected since the last ESR write.
    esr_pending: u32,
    lvt: [u32; LVT_COUNT],
    icr_low: u32,
    /// ICR destination: bits 31:24 in xAPIC mode, 32 bits in x2APIC mode.
    icr_high: u32,
    timer: Timer,
    nmi: bool,
    extint: bool,
    /// Level-triggered vectors EOIed and not yet taken by the I/O APIC.
    eoi_out: [u32; 8],
}

impl<'b> LocalApic<'b> {
    /// A local APIC in its power-on state (see [`LocalApic::reset`]),
    /// counting `clock`'s time.
    pub fn new(clock: &'b VirtualClock) -> Self {
        let mut a = Self {
            clock,
            apic_base: 0,
            id: INITIAL_ID,
            tpr: 0,
            ldr: 0,
            dfr: u32::MAX,
            svr: 0xff,
            isr: [0; 8],
            tmr: [0; 8],
            irr: [0; 8],
            esr: 0,
            esr_pending: 0,
            lvt: [LVT_MASKED; LVT_COUNT],
            icr_low: 0,
            icr_high: 0,
            timer: Timer::new(),
            nmi: false,
            extint: false,
            eoi_out: [0; 8],
        };
        a.reset();
        a
    }

    /// Power-on / RESET (SDM 11.4.7.1): xAPIC mode at
    /// [`APIC_BASE_DEFAULT`], BSP, ID [`INITIAL_ID`], software-disabled
    /// (SVR 0xFF), every LVT masked except LINT0 in ExtINT mode (the
    /// virtual wire, see the module docs), timer stopped, nothing pending.
    pub fn reset(&mut self) {
        self.apic_base = APIC_BASE_DEFAULT | APIC_BASE_BSP | APIC_BASE_EN;
        self.reset_registers();
        if let Some(l) = self.lvt.get_mut(LVT_LINT0) {
            *l = LVT_EXTINT;
        }
        self.eoi_out = [0; 8];
        self.timer.lost = 0;
    }

    /// The register state after RESET or a global disable: everything 0
    /// but DFR (all ones), SVR (0xFF) and the LVTs (masked).
    fn reset_registers(&mut self) {
        self.id = INITIAL_ID;
        self.tpr = 0;
        self.ldr = 0;
        self.dfr = u32::MAX;
        self.svr = 0xff;
        self.isr = [0; 8];
        self.tmr = [0; 8];
        self.irr = [0; 8];
        self.esr = 0;
        self.esr_pending = 0;
        self.lvt = [LVT_MASKED; LVT_COUNT];
        self.icr_low = 0;
        self.icr_high = 0;
        let lost = self.timer.lost;
        self.timer = Timer::new();
        self.timer.lost = lost;
        self.nmi = false;
        self.extint = false;
    }

    // ---- IA32_APIC_BASE (SDM 11.4.4, 11.12.5) ----

    /// IA32_APIC_BASE (MSR 0x1B).
    pub fn apic_base(&self) -> u64 {
        self.apic_base
    }

    /// The mode IA32_APIC_BASE selects.
    pub fn mode(&self) -> ApicMode {
        match (
            self.apic_base & APIC_BASE_EN != 0,
            self.apic_base & APIC_BASE_EXTD != 0,
        ) {
            (false, _) => ApicMode::Disabled,
            (true, false) => ApicMode::XApic,
            (true, true) => ApicMode::X2Apic,
        }
    }

    /// Where the xAPIC page is, in xAPIC mode only (the page is gone when
    /// the APIC is disabled or in x2APIC mode, SDM 11.12.1).
    pub fn mmio_base(&self) -> Option<u64> {
        (self.mode() == ApicMode::XApic).then_some(self.apic_base & !0xfff & Self::phys_mask())
    }

    fn phys_mask() -> u64 {
        (1u64 << PHYS_BITS) - 1
    }

    /// WRMSR to IA32_APIC_BASE. #GP on reserved bits (0-7, 9, at and above
    /// the physical address width, EXTD when `x2apic_supported` is false),
    /// on EN = 0 with EXTD = 1, and on the transitions SDM 11.12.5 forbids:
    /// x2APIC to xAPIC, and disabled to x2APIC. The BSP bit is read-only
    /// (set whatever is written). A transition to disabled resets the
    /// registers; xAPIC to x2APIC loads the x2APIC ID and its LDR.
    pub fn set_apic_base(&mut self, v: u64, x2apic_supported: bool) -> Result<(), ApicError> {
        let mut valid = (Self::phys_mask() & !0xfff) | APIC_BASE_BSP | APIC_BASE_EN;
        if x2apic_supported {
            valid |= APIC_BASE_EXTD;
        }
        if v & !valid != 0 {
            return Err(ApicError::Gp);
        }
        let new = match (v & APIC_BASE_EN != 0, v & APIC_BASE_EXTD != 0) {
            (false, false) => ApicMode::Disabled,
            (true, false) => ApicMode::XApic,
            (true, true) => ApicMode::X2Apic,
            (false, true) => return Err(ApicError::Gp),
        };
        let old = self.mode();
        match (old, new) {
            (ApicMode::X2Apic, ApicMode::XApic) | (ApicMode::Disabled, ApicMode::X2Apic) => {
                return Err(ApicError::Gp)
            }
            _ => {}
        }
        self.apic_base = v | APIC_BASE_BSP;
        match (old, new) {
            (ApicMode::XApic | ApicMode::X2Apic, ApicMode::Disabled) => self.reset_registers(),
            (ApicMode::XApic, ApicMode::X2Apic) => {
                self.id = INITIAL_ID;
                self.ldr = x2apic_ldr(self.id);
                // The xAPIC-format destination is meaningless now.
                self.icr_high = 0;
            }
            _ => {}
        }
        Ok(())
    }

    fn hw_enabled(&self) -> bool {
        self.apic_base & APIC_BASE_EN != 0
    }

    fn sw_enabled(&self) -> bool {
        self.svr & SVR_ENABLE != 0
    }

    fn x2apic(&self) -> bool {
        self.mode() == ApicMode::X2Apic
    }

    // ---- Priorities, acknowledge and EOI (SDM 11.8) ----

    /// The task priority register (CR8 is TPR bits 7:4 in 64-bit mode).
    pub fn tpr(&self) -> u8 {
        self.tpr
    }

    /// Sets TPR (a MOV to CR8 sets it to CR8 bits 3:0 shifted left by 4).
    pub fn set_tpr(&mut self, v: u8) {
        self.tpr = v;
    }

    /// The processor priority (SDM 11.8.3.1): TPR when its class is at
    /// least the highest in-service vector's class, else that class.
    pub fn ppr(&self) -> u8 {
        let isrv = highest(&self.isr).unwrap_or(0);
        if self.tpr >> 4 >= isrv >> 4 {
            self.tpr
        } else {
            isrv & 0xf0
        }
    }

    /// The vector the APIC would present to the CPU now: the highest IRR
    /// vector whose priority class is above PPR's (SDM 11.8.3.1). None
    /// while the APIC is disabled, globally or by software (IRR is held).
    pub fn pending_vector(&self) -> Option<u8> {
        if !self.hw_enabled() || !self.sw_enabled() {
            return None;
        }
        let v = highest(&self.irr)?;
        (v >> 4 > self.ppr() >> 4).then_some(v)
    }

    /// The CPU's interrupt acknowledge: moves [`Self::pending_vector`] from
    /// IRR to ISR and returns it. With nothing deliverable (a race: it
    /// was masked by TPR or withdrawn since the caller looked) returns the
    /// spurious vector from SVR, which sets no ISR bit and takes no EOI
    /// (SDM 11.9). None only when the APIC is globally disabled.
    pub fn acknowledge(&mut self) -> Option<u8> {
        if !self.hw_enabled() {
            return None;
        }
        match self.pending_vector() {
            Some(v) => {
                set_bit(&mut self.irr, v, false);
                set_bit(&mut self.isr, v, true);
                Some(v)
            }
            None => Some(self.svr as u8),
        }
    }

    /// An EOI: clears the highest ISR bit; if its TMR bit is set, queues
    /// the vector for [`Self::take_eoi`] (SDM 11.8.5; no broadcast
    /// suppression).
    fn eoi(&mut self) {
        if let Some(v) = highest(&self.isr) {
            set_bit(&mut self.isr, v, false);
            if test_bit(&self.tmr, v) {
                set_bit(&mut self.eoi_out, v, true);
            }
        }
    }

    /// Takes one level-triggered vector EOIed since, for the caller to
    /// broadcast to the I/O APIC (lowest vector first).
    pub fn take_eoi(&mut self) -> Option<u8> {
        let v = lowest(&self.eoi_out)?;
        set_bit(&mut self.eoi_out, v, false);
        Some(v)
    }

    /// Takes a pending NMI (from a message, an IPI or LINT1).
    pub fn take_nmi(&mut self) -> bool {
        core::mem::take(&mut self.nmi)
    }

    /// Takes a pending ExtINT message: the caller then runs the 8259's
    /// interrupt acknowledge for the vector.
    pub fn take_extint(&mut self) -> bool {
        core::mem::take(&mut self.extint)
    }

    // ---- Interrupt acceptance (SDM 11.6.2, 11.12.10) ----

    /// Whether destination `d` addresses this APIC.
    fn addressed(&self, d: Destination) -> bool {
        let x2 = self.x2apic();
        match d {
            Destination::Physical(id) if x2 => id == u32::MAX || id == self.id,
            Destination::Physical(id) => {
                let id = id & 0xff;
                id == 0xff || id == self.id & 0xff
            }
            Destination::Logical(mda) if x2 => {
                mda == u32::MAX || (mda >> 16 == self.ldr >> 16 && mda & self.ldr & 0xffff != 0)
            }
            Destination::Logical(mda) => {
                let mda = mda & 0xff;
                let ldr = self.ldr >> 24;
                if mda == 0xff {
                    return true;
                }
                match self.dfr >> 28 {
                    // Flat: any common bit.
                    0xf => mda & ldr != 0,
                    // Cluster: same cluster (bits 7:4), a common member bit.
                    0x0 => mda >> 4 == ldr >> 4 && mda & ldr & 0xf != 0,
                    _ => false,
                }
            }
        }
    }

    /// Delivers a message from the I/O APIC, an MSI or an IPI. Returns
    /// whether it was addressed to this APIC (a globally disabled APIC
    /// receives nothing). Fixed and lowest-priority messages set IRR and
    /// TMR (level) or clear TMR (edge); NMI and ExtINT raise their flags;
    /// INIT, SIPI and SMI are ignored (the BSP is running, no SMM).
    pub fn deliver(&mut self, m: &InterruptMessage) -> bool {
        if !self.hw_enabled() || !self.addressed(m.destination) {
            return false;
        }
        self.accept(m.vector, m.delivery, m.level_triggered);
        true
    }

    /// Accepts an interrupt addressed to us. A software-disabled APIC
    /// takes only NMI, SMI, INIT and SIPI (SDM 11.4.7.2).
    fn accept(&mut self, vector: u8, mode: DeliveryMode, level: bool) {
        match mode {
            DeliveryMode::Fixed | DeliveryMode::LowestPriority => {
                if !self.sw_enabled() {
                    return;
                }
                if vector < 16 {
                    self.record_error(esr::RECEIVE_ILLEGAL_VECTOR);
                    return;
                }
                set_bit(&mut self.irr, vector, true);
                set_bit(&mut self.tmr, vector, level);
            }
            DeliveryMode::Nmi => self.nmi = true,
            DeliveryMode::ExtInt => {
                if self.sw_enabled() {
                    self.extint = true;
                }
            }
            DeliveryMode::Smi | DeliveryMode::Init | DeliveryMode::StartUp => {}
        }
    }

    /// A local interrupt through LVT entry `i` (edge-triggered; the timer
    /// and error entries have no delivery mode and are fixed).
    fn local_interrupt(&mut self, i: usize) {
        let Some(&lvt) = self.lvt.get(i) else {
            return;
        };
        if lvt & LVT_MASKED != 0 {
            return;
        }
        let mode = if i == LVT_TIMER || i == LVT_ERROR {
            DeliveryMode::Fixed
        } else {
            match DeliveryMode::from_bits(lvt >> 8) {
                Some(m) => m,
                None => return,
            }
        };
        self.accept(lvt as u8, mode, false);
    }

    /// Whether the 8259's INTR reaches the CPU through LINT0: the APIC is
    /// globally disabled (LINT0 is the INTR pin, SDM 11.4.3), or LINT0 is
    /// unmasked in ExtINT mode (as QEMU's `apic_accept_pic_intr`).
    pub fn lint0_accepts_pic(&self) -> bool {
        let lint0 = self.lvt.get(LVT_LINT0).copied().unwrap_or(LVT_MASKED);
        !self.hw_enabled() || (lint0 & LVT_MASKED == 0 && lint0 & (7 << 8) == LVT_EXTINT)
    }

    /// An edge on LINT1 (the NMI pin): delivered as LINT1's LVT says
    /// (normally NMI), or as an NMI when the APIC is globally disabled.
    pub fn lint1_nmi(&mut self) {
        if self.hw_enabled() {
            self.local_interrupt(LVT_LINT1);
        } else {
            self.nmi = true;
        }
    }

    // ---- Errors (SDM 11.5.3) ----

    /// Collects `bits` into the ESR (visible after the next ESR write) and
    /// raises the error interrupt if LVT error is unmasked. An illegal
    /// vector in LVT error is recorded but not signalled again.
    fn record_error(&mut self, bits: u32) {
        self.esr_pending |= bits;
        let lvt = self.lvt.get(LVT_ERROR).copied().unwrap_or(LVT_MASKED);
        if lvt & LVT_MASKED != 0 || !self.sw_enabled() {
            return;
        }
        let v = lvt as u8;
        if v < 16 {
            self.esr_pending |= esr::RECEIVE_ILLEGAL_VECTOR;
        } else {
            set_bit(&mut self.irr, v, true);
            set_bit(&mut self.tmr, v, false);
        }
    }

    // ---- Interprocessor interrupts (SDM 11.6) ----

    /// Sends the IPI the ICR describes. Only this vCPU exists: what
    /// addresses it is accepted here, what addresses anyone else is
    /// dropped (ESR send accept error in xAPIC mode for a destination that
    /// matches nobody; not for the all-excluding-self shorthand).
    fn send_ipi(&mut self) {
        let lo = self.icr_low;
        let vector = lo as u8;
        let Some(mode) = DeliveryMode::from_bits(lo >> 8) else {
            return;
        };
        let level = lo & (1 << 15) != 0;
        if matches!(mode, DeliveryMode::Fixed | DeliveryMode::LowestPriority) && vector < 16 {
            self.record_error(esr::SEND_ILLEGAL_VECTOR);
            return;
        }
        // INIT level de-assert (level clear, trigger level) goes nowhere.
        if mode == DeliveryMode::Init && lo & (1 << 14) == 0 && level {
            return;
        }
        let to_self = match (lo >> 18) & 3 {
            // Self, all including self.
            1 | 2 => true,
            // All excluding self: nobody.
            3 => false,
            _ => {
                let d = if lo & (1 << 11) != 0 {
                    Destination::Logical(self.icr_high)
                } else {
                    Destination::Physical(self.icr_high)
                };
                let d = match (self.x2apic(), d) {
                    (true, d) => d,
                    (false, Destination::Logical(x)) => Destination::Logical(x >> 24),
                    (false, Destination::Physical(x)) => Destination::Physical(x >> 24),
                };
                let hit = self.addressed(d);
                if !hit && !self.x2apic() {
                    self.record_error(esr::SEND_ACCEPT);
                }
                hit
            }
        };
        if to_self {
            self.accept(vector, mode, level);
        }
    }

    /// x2APIC SELF_IPI: a fixed, edge-triggered vector to ourselves.
    fn self_ipi(&mut self, vector: u8) {
        if vector < 16 {
            self.record_error(esr::SEND_ILLEGAL_VECTOR);
        } else {
            self.accept(vector, DeliveryMode::Fixed, false);
        }
    }

    // ---- Timer (SDM 11.5.4) ----

    fn timer_mode(&self) -> TimerMode {
        match (self.lvt.get(LVT_TIMER).copied().unwrap_or(0) >> 17) & 3 {
            1 => TimerMode::Periodic,
            2 => TimerMode::TscDeadline,
            _ => TimerMode::OneShot,
        }
    }

    /// The current-count register: counts down from the initial count
    /// (reloading in periodic mode); 0 when stopped, after a one-shot
    /// expiry and in TSC-deadline mode.
    fn current_count(&self) -> u32 {
        let n = u64::from(self.timer.initial);
        if self.timer.anchor.is_none() || n == 0 {
            return 0;
        }
        let t = self.timer.ticks(self.clock.now());
        let c = match self.timer_mode() {
            TimerMode::Periodic => n - t % n,
            TimerMode::OneShot => n.saturating_sub(t),
            TimerMode::TscDeadline => 0,
        };
        c as u32
    }

    /// Initial-count write: starts counting (0 stops); ignored in
    /// TSC-deadline mode.
    fn write_initial_count(&mut self, v: u32) {
        if self.timer_mode() == TimerMode::TscDeadline {
            return;
        }
        self.timer.initial = v;
        self.timer.stop();
        if v != 0 {
            self.timer.anchor = Some(self.clock.now());
        }
    }

    /// Divide-configuration write: a running count carries on at the new
    /// rate from where it is.
    fn write_divide(&mut self, v: u32) {
        if self.timer.anchor.is_some() {
            let now = self.clock.now();
            self.timer.anchor_ticks = self.timer.ticks(now);
            self.timer.anchor = Some(now);
        }
        self.timer.divide = v & DIVIDE_WRITABLE;
    }

    /// Catches the timer up with the virtual clock: fires once if it
    /// expired since the last poll (periodic expiries in between merge
    /// into that one, as IRR would merge them; see
    /// [`Self::timer_ticks_lost`]) and returns the virtual time of the next
    /// expiry. A masked timer counts but sets nothing in IRR and returns
    /// None (it has nothing to wake the caller for). The
    /// TSC-deadline timer runs on another clock: see [`Self::poll_tsc`].
    pub fn poll(&mut self) -> Option<Nanos> {
        self.timer.anchor?;
        let n = u64::from(self.timer.initial);
        let mode = self.timer_mode();
        if n == 0 || mode == TimerMode::TscDeadline {
            self.timer.stop();
            return None;
        }
        let t = self.timer.ticks(self.clock.now());
        let due = match mode {
            TimerMode::Periodic => t / n,
            _ => u64::from(t >= n),
        };
        if due > self.timer.fired {
            self.timer.lost = self.timer.lost.saturating_add(due - self.timer.fired - 1);
            self.timer.fired = due;
            self.local_interrupt(LVT_TIMER);
            if mode != TimerMode::Periodic {
                self.timer.stop();
                return None;
            }
        }
        if self.lvt.get(LVT_TIMER).is_none_or(|l| l & LVT_MASKED != 0) {
            // Nothing to wake up for; the count is settled on the next
            // poll or LVT timer write.
            return None;
        }
        Some(
            self.timer
                .time_of_tick(self.timer.fired.saturating_add(1).saturating_mul(n)),
        )
    }

    /// Periodic timer expiries that merged with an earlier one because
    /// nobody polled in between.
    pub fn timer_ticks_lost(&self) -> u64 {
        self.timer.lost
    }

    /// WRMSR IA32_TSC_DEADLINE at host TSC `now_tsc`: arms the deadline
    /// (0 disarms; one already passed fires at once). Ignored unless the
    /// timer is in TSC-deadline mode (SDM 11.5.4.1).
    pub fn write_tsc_deadline(&mut self, tsc: u64, now_tsc: u64) {
        if !self.hw_enabled() || self.timer_mode() != TimerMode::TscDeadline {
            return;
        }
        self.timer.tsc_deadline = tsc;
        self.poll_tsc(now_tsc);
    }

    /// RDMSR IA32_TSC_DEADLINE: the armed deadline, 0 when disarmed, fired
    /// or not in TSC-deadline mode.
    pub fn tsc_deadline(&self) -> u64 {
        self.armed_tsc_deadline().unwrap_or(0)
    }

    /// The armed TSC deadline, for the caller to watch the host's TSC.
    pub fn armed_tsc_deadline(&self) -> Option<u64> {
        (self.timer_mode() == TimerMode::TscDeadline && self.timer.tsc_deadline != 0)
            .then_some(self.timer.tsc_deadline)
    }

    /// Fires the TSC-deadline timer if `now_tsc` reached the deadline
    /// (which then reads 0).
    pub fn poll_tsc(&mut self, now_tsc: u64) {
        if let Some(d) = self.armed_tsc_deadline() {
            if now_tsc >= d {
                self.timer.tsc_deadline = 0;
                self.local_interrupt(LVT_TIMER);
            }
        }
    }

    // ---- The register file, shared by both interfaces ----

    /// Reads register `r` (xAPIC offset / 16, x2APIC MSR - 0x800); None
    /// when it does not exist or cannot be read in this mode. The 64-bit
    /// x2APIC ICR is read by [`Self::msr_read`].
    fn read_reg(&self, r: u32, x2: bool) -> Option<u32> {
        let word = |bits: &[u32; 8], base: u32| bits.get(r.wrapping_sub(base) as usize).copied();
        Some(match r {
            0x02 if x2 => self.id,
            0x02 => self.id << 24,
            0x03 => VERSION,
            0x08 => u32::from(self.tpr),
            // APR, EOI (write-only) and RRD read 0 in xAPIC mode and do
            // not exist (EOI: write-only) in x2APIC mode.
            0x09 | 0x0b | 0x0c if !x2 => 0,
            0x0a => u32::from(self.ppr()),
            0x0d => self.ldr,
            0x0e if !x2 => self.dfr,
            0x0f => self.svr,
            0x10..=0x17 => word(&self.isr, 0x10)?,
            0x18..=0x1f => word(&self.tmr, 0x18)?,
            0x20..=0x27 => word(&self.irr, 0x20)?,
            0x28 => self.esr,
            0x2f if HAS_CMCI => self.lvt.get(LVT_CMCI).copied()?,
            0x30 => self.icr_low,
            0x31 if !x2 => self.icr_high,
            0x32..=0x37 => self.lvt.get(r as usize - 0x31).copied()?,
            0x38 => self.timer.initial,
            0x39 => self.current_count(),
            0x3e => self.timer.divide,
            _ => return None,
        })
    }

    /// Writes register `r`. xAPIC writes keep the writable bits and drop
    /// the rest; x2APIC writes with a reserved bit set fault (SDM
    /// 11.12.1.3). The 64-bit x2APIC ICR is written by [`Self::msr_write`].
    fn write_reg(&mut self, r: u32, v: u32, x2: bool) -> Result<(), WriteFault> {
        // x2APIC: #GP when bits outside `ok` are set.
        let check = |ok: u32| {
            if x2 && v & !ok != 0 {
                Err(WriteFault::Reserved)
            } else {
                Ok(())
            }
        };
        match r {
            0x02 if !x2 => self.id = v >> 24,
            0x08 => {
                check(0xff)?;
                self.tpr = v as u8;
            }
            0x0b => {
                check(0)?;
                self.eoi();
            }
            0x0d if !x2 => self.ldr = v & 0xff00_0000,
            0x0e if !x2 => self.dfr = v | DFR_ONES,
            0x0f => {
                check(SVR_WRITABLE)?;
                self.svr = v & SVR_WRITABLE;
                if !self.sw_enabled() {
                    // SDM 11.4.7.2: software disable masks every LVT.
                    for l in &mut self.lvt {
                        *l |= LVT_MASKED;
                    }
                }
            }
            0x28 => {
                check(0)?;
                self.esr = core::mem::take(&mut self.esr_pending);
            }
            0x2f if HAS_CMCI => self.write_lvt(LVT_CMCI, v, x2)?,
            0x30 if !x2 => {
                self.icr_low = v & ICR_LOW_WRITABLE;
                self.send_ipi();
            }
            0x31 if !x2 => self.icr_high = v & 0xff00_0000,
            0x32..=0x37 => self.write_lvt(r as usize - 0x31, v, x2)?,
            0x38 => self.write_initial_count(v),
            0x3e => {
                check(DIVIDE_WRITABLE)?;
                self.write_divide(v);
            }
            0x3f if x2 => {
                check(0xff)?;
                self.self_ipi(v as u8);
            }
            // Read-only registers.
            0x02 | 0x03 | 0x0a | 0x0d | 0x10..=0x27 | 0x39 => return Err(WriteFault::ReadOnly),
            0x09 | 0x0c if !x2 => return Err(WriteFault::ReadOnly),
            _ => return Err(WriteFault::Absent),
        }
        Ok(())
    }

    /// Writes LVT entry `i`. The read-only delivery status and remote IRR
    /// bits are accepted and dropped; while the APIC is software-disabled
    /// the mask stays set (SDM 11.4.7.2). Changing the timer mode disarms
    /// the timer (initial count and TSC deadline to 0, as KVM).
    fn write_lvt(&mut self, i: usize, v: u32, x2: bool) -> Result<(), WriteFault> {
        let writable = LVT_WRITABLE.get(i).copied().unwrap_or(0);
        if x2 {
            if v & !(writable | LVT_STATUS | LVT_REMOTE_IRR) != 0 {
                return Err(WriteFault::Reserved);
            }
            if i == LVT_TIMER && (v >> 17) & 3 == 3 {
                return Err(WriteFault::Reserved);
            }
        }
        let mut v = v & writable;
        if !self.sw_enabled() {
            v |= LVT_MASKED;
        }
        if i == LVT_TIMER {
            // Settle expiries under the old entry first: one that came
            // while masked must not fire once unmasked.
            self.poll();
        }
        let old_mode = self.timer_mode();
        if let Some(l) = self.lvt.get_mut(i) {
            *l = v;
        }
        if i == LVT_TIMER && self.timer_mode() != old_mode {
            self.timer.initial = 0;
            self.timer.stop();
            self.timer.tsc_deadline = 0;
        }
        Ok(())
    }

    // ---- x2APIC MSRs (SDM 11.12.1) ----

    /// RDMSR of an x2APIC register (0x800-0x8FF). #GP unless in x2APIC
    /// mode, for registers that do not exist (APR, RRD, DFR, ICR high,
    /// CMCI here, reserved numbers) and for the write-only EOI and
    /// SELF_IPI. ICR (0x830) reads as one 64-bit register.
    pub fn msr_read(&mut self, msr: u32) -> Result<u64, ApicError> {
        let r = self.x2apic_reg(msr)?;
        if r == 0x30 {
            return Ok(u64::from(self.icr_low) | u64::from(self.icr_high) << 32);
        }
        self.read_reg(r, true).map(u64::from).ok_or(ApicError::Gp)
    }

    /// WRMSR of an x2APIC register. #GP unless in x2APIC mode, for
    /// registers that do not exist, for read-only ones (ID, version, PPR,
    /// LDR, ISR/TMR/IRR, current count), for a nonzero EOI or ESR write
    /// and for any reserved bit (bits 63:32 of every register but ICR).
    /// ICR (0x830) takes the destination in bits 63:32 and sends.
    pub fn msr_write(&mut self, msr: u32, v: u64) -> Result<(), ApicError> {
        let r = self.x2apic_reg(msr)?;
        if r == 0x30 {
            if v & X2APIC_ICR_RESERVED != 0 {
                return Err(ApicError::Gp);
            }
            self.icr_low = v as u32 & ICR_LOW_WRITABLE;
            self.icr_high = (v >> 32) as u32;
            self.send_ipi();
            return Ok(());
        }
        if v >> 32 != 0 {
            return Err(ApicError::Gp);
        }
        self.write_reg(r, v as u32, true).map_err(|_| ApicError::Gp)
    }

    /// The register number of x2APIC MSR `msr`, if in x2APIC mode.
    fn x2apic_reg(&self, msr: u32) -> Result<u32, ApicError> {
        if !self.x2apic() || !(X2APIC_MSR_FIRST..=X2APIC_MSR_LAST).contains(&msr) {
            return Err(ApicError::Gp);
        }
        Ok(msr - X2APIC_MSR_FIRST)
    }
}

/// The xAPIC page: 32-bit registers at 16-byte aligned offsets (SDM
/// 11.4.1). Outside xAPIC mode the page is not there: reads return all
/// ones and writes are dropped, as on an empty bus.
impl MmioDevice for LocalApic<'_> {
    fn read(&mut self, offset: u64, _size: u8) -> u64 {
        if self.mode() != ApicMode::XApic {
            return u64::MAX;
        }
        if offset & 0xf != 0 || offset >= MMIO_SIZE {
            return 0;
        }
        match self.read_reg((offset >> 4) as u32, false) {
            Some(v) => u64::from(v),
            None => {
                self.record_error(esr::ILLEGAL_REGISTER);
                0
            }
        }
    }

    fn write(&mut self, offset: u64, size: u8, value: u64) -> WriteOutcome {
        if self.mode() == ApicMode::XApic && offset & 0xf == 0 && offset < MMIO_SIZE && size >= 4 {
            if let Err(WriteFault::Absent) =
                self.write_reg((offset >> 4) as u32, value as u32, false)
            {
                self.record_error(esr::ILLEGAL_REGISTER);
            }
        }
        WriteOutcome::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::board::Board;
    use proptest::prelude::*;

    fn rd(a: &mut LocalApic<'_>, off: u64) -> u32 {
        MmioDevice::read(a, off, 4) as u32
    }

    fn wr(a: &mut LocalApic<'_>, off: u64, v: u32) {
        MmioDevice::write(a, off, 4, u64::from(v));
    }

    fn msr(off: u64) -> u32 {
        X2APIC_MSR_FIRST + (off >> 4) as u32
    }

    /// An xAPIC, software-enabled with spurious vector 0xFF.
    fn enabled(b: &Board) -> LocalApic<'_> {
        let mut a = LocalApic::new(&b.clock);
        wr(&mut a, reg::SVR, 0x1ff);
        a
    }

    fn fixed(vector: u8, level: bool) -> InterruptMessage {
        InterruptMessage {
            vector,
            delivery: DeliveryMode::Fixed,
            destination: Destination::Physical(0),
            level_triggered: level,
        }
    }

    fn x2(b: &Board) -> LocalApic<'_> {
        let mut a = enabled(b);
        a.set_apic_base(APIC_BASE_DEFAULT | APIC_BASE_EN | APIC_BASE_EXTD, true)
            .unwrap();
        a
    }

    #[test]
    fn reset_state() {
        let b = Board::new();
        let mut a = LocalApic::new(&b.clock);
        assert_eq!(a.apic_base(), 0xfee0_0900);
        assert_eq!(a.mode(), ApicMode::XApic);
        assert_eq!(a.mmio_base(), Some(APIC_BASE_DEFAULT));
        assert_eq!(rd(&mut a, reg::ID), 0);
        assert_eq!(rd(&mut a, reg::VERSION), 0x50014);
        assert_eq!(rd(&mut a, reg::SVR), 0xff);
        assert_eq!(rd(&mut a, reg::DFR), u32::MAX);
        assert_eq!(rd(&mut a, reg::LVT_LINT0), 0x700, "the virtual wire");
        for off in [
            reg::LVT_TIMER,
            reg::LVT_THERMAL,
            reg::LVT_PERF,
            reg::LVT_LINT1,
            reg::LVT_ERROR,
        ] {
            assert_eq!(rd(&mut a, off), LVT_MASKED, "{off:#x}");
        }
        assert!(a.lint0_accepts_pic());
        assert_eq!(a.pending_vector(), None);
        assert_eq!(a.poll(), None);
        assert_eq!(a.tsc_deadline(), 0);
        // reset() after changes gives the same.
        wr(&mut a, reg::SVR, 0x1ff);
        wr(&mut a, reg::TPR, 0x20);
        a.deliver(&fixed(0x40, true));
        a.reset();
        assert_eq!(
            (rd(&mut a, reg::SVR), a.tpr(), a.pending_vector()),
            (0xff, 0, None)
        );
        assert_eq!(rd(&mut a, reg::IRR + 0x20), 0);
    }

    #[test]
    fn apic_base_transitions() {
        use ApicMode::*;
        let bits = |m: ApicMode| match m {
            Disabled => 0,
            XApic => APIC_BASE_EN,
            X2Apic => APIC_BASE_EN | APIC_BASE_EXTD,
        };
        // (from, to, allowed) per SDM 11.12.5 figure 11-27.
        let table = [
            (Disabled, Disabled, true),
            (Disabled, XApic, true),
            (Disabled, X2Apic, false),
            (XApic, Disabled, true),
            (XApic, XApic, true),
            (XApic, X2Apic, true),
            (X2Apic, Disabled, true),
            (X2Apic, XApic, false),
            (X2Apic, X2Apic, true),
        ];
        let b = Board::new();
        for (from, to, ok) in table {
            let mut a = LocalApic::new(&b.clock);
            // Reach `from` by allowed steps.
            if from == Disabled {
                a.set_apic_base(APIC_BASE_DEFAULT, true).unwrap();
            }
            if from == X2Apic {
                a.set_apic_base(APIC_BASE_DEFAULT | bits(X2Apic), true)
                    .unwrap();
            }
            assert_eq!(a.mode(), from);
            let r = a.set_apic_base(APIC_BASE_DEFAULT | bits(to), true);
            assert_eq!(r.is_ok(), ok, "{from:?} -> {to:?}");
            assert_eq!(a.mode(), if ok { to } else { from });
            // EN = 0 with EXTD = 1 is never valid.
            assert_eq!(
                a.set_apic_base(APIC_BASE_DEFAULT | APIC_BASE_EXTD, true),
                Err(ApicError::Gp)
            );
        }
        let mut a = LocalApic::new(&b.clock);
        // Reserved bits, and EXTD when x2APIC is not offered.
        for v in [1u64 << 9, 1, 1 << 48, 1 << 63] {
            assert_eq!(
                a.set_apic_base(APIC_BASE_DEFAULT | APIC_BASE_EN | v, true),
                Err(ApicError::Gp),
                "{v:#x}"
            );
        }
        assert_eq!(
            a.set_apic_base(APIC_BASE_DEFAULT | bits(X2Apic), false),
            Err(ApicError::Gp)
        );
        // BSP is read-only; the base moves the page.
        a.set_apic_base(0xfed0_0000 | APIC_BASE_EN, false).unwrap();
        assert_eq!(a.apic_base(), 0xfed0_0900);
        assert_eq!(a.mmio_base(), Some(0xfed0_0000));
        a.set_apic_base(0xfed0_0000 | bits(X2Apic), true).unwrap();
        assert_eq!(a.mmio_base(), None);
    }

    #[test]
    fn global_disable_resets_and_passes_the_pins_through() {
        let b = Board::new();
        let mut a = enabled(&b);
        wr(&mut a, reg::TPR, 0x30);
        wr(&mut a, reg::LVT_LINT0, 0x10700);
        a.deliver(&fixed(0x80, false));
        assert!(!a.lint0_accepts_pic(), "LINT0 masked");
        a.set_apic_base(APIC_BASE_DEFAULT, true).unwrap();
        assert_eq!(a.mmio_base(), None);
        assert!(a.lint0_accepts_pic(), "LINT0 is INTR when disabled");
        assert!(!a.deliver(&fixed(0x80, false)), "receives nothing");
        assert_eq!(a.acknowledge(), None);
        a.lint1_nmi();
        assert!(a.take_nmi(), "LINT1 is the NMI pin");
        a.set_apic_base(APIC_BASE_DEFAULT | APIC_BASE_EN, true)
            .unwrap();
        assert_eq!((a.tpr(), rd(&mut a, reg::SVR)), (0, 0xff));
        assert_eq!(rd(&mut a, reg::LVT_LINT0), LVT_MASKED);
        assert_eq!(rd(&mut a, reg::IRR + 0x40), 0);
        assert!(!a.lint0_accepts_pic());
    }

    #[test]
    fn xapic_register_access() {
        let b = Board::new();
        let mut a = enabled(&b);
        // ID is writable in xAPIC mode (bits 31:24), version is not.
        wr(&mut a, reg::ID, 0x0512_3456);
        assert_eq!(rd(&mut a, reg::ID), 0x0500_0000);
        wr(&mut a, reg::VERSION, 0);
        assert_eq!(rd(&mut a, reg::VERSION), VERSION);
        wr(&mut a, reg::LDR, 0x0302_0100);
        assert_eq!(rd(&mut a, reg::LDR), 0x0300_0000);
        wr(&mut a, reg::DFR, 0);
        assert_eq!(rd(&mut a, reg::DFR), 0x0fff_ffff);
        wr(&mut a, reg::TPR, 0x1234);
        assert_eq!(rd(&mut a, reg::TPR), 0x34);
        assert_eq!(rd(&mut a, reg::PPR), 0x34);
        assert_eq!(
            (
                rd(&mut a, reg::APR),
                rd(&mut a, reg::RRD),
                rd(&mut a, reg::EOI)
            ),
            (0, 0, 0)
        );
        wr(&mut a, reg::ICR_HIGH, 0xffff_ffff);
        assert_eq!(rd(&mut a, reg::ICR_HIGH), 0xff00_0000);
        // Unaligned and narrow accesses.
        assert_eq!(MmioDevice::read(&mut a, reg::TPR + 1, 1), 0);
        MmioDevice::write(&mut a, reg::TPR, 1, 0);
        assert_eq!(rd(&mut a, reg::TPR), 0x34, "narrow write dropped");
        assert_eq!(MmioDevice::read(&mut a, reg::TPR, 1), 0x34);
        // A reserved offset reads 0 and sets ESR bit 7 (seen after the
        // ESR write); a read-only register does not.
        wr(&mut a, reg::ESR, 0);
        wr(&mut a, reg::PPR, 0xff);
        wr(&mut a, reg::ESR, 0);
        assert_eq!(rd(&mut a, reg::ESR), 0);
        assert_eq!(rd(&mut a, 0x40), 0);
        assert_eq!(rd(&mut a, reg::ESR), 0, "not before the ESR write");
        wr(&mut a, reg::ESR, 0);
        assert_eq!(rd(&mut a, reg::ESR), esr::ILLEGAL_REGISTER);
        wr(&mut a, reg::ESR, 0);
        assert_eq!(rd(&mut a, reg::ESR), 0, "back-to-back writes clear");
        wr(&mut a, reg::SELF_IPI, 0x40);
        assert_eq!(a.pending_vector(), None, "no SELF_IPI in xAPIC mode");
        assert_eq!(a.msr_read(msr(reg::TPR)), Err(ApicError::Gp));
        // Outside xAPIC mode the page is gone.
        a.set_apic_base(APIC_BASE_DEFAULT | APIC_BASE_EN | APIC_BASE_EXTD, true)
            .unwrap();
        assert_eq!(MmioDevice::read(&mut a, reg::TPR, 4), u64::MAX);
    }

    #[test]
    fn x2apic_msr_rules() {
        let b = Board::new();
        let mut a = enabled(&b);
        wr(&mut a, reg::ID, 0x0700_0000);
        a.set_apic_base(APIC_BASE_DEFAULT | APIC_BASE_EN | APIC_BASE_EXTD, true)
            .unwrap();
        let gp = Err(ApicError::Gp);
        assert_eq!(
            a.msr_read(msr(reg::ID)),
            Ok(0),
            "the x2APIC ID is the initial ID"
        );
        assert_eq!(a.msr_read(msr(reg::LDR)), Ok(1), "cluster 0, bit 0");
        assert_eq!(a.msr_read(msr(reg::VERSION)), Ok(u64::from(VERSION)));
        assert_eq!(a.msr_read(msr(reg::SVR)), Ok(0x1ff));
        for absent in [
            reg::APR,
            reg::RRD,
            reg::DFR,
            reg::ICR_HIGH,
            reg::LVT_CMCI,
            0x40,
            0x3a0,
        ] {
            assert_eq!(a.msr_read(msr(absent)), gp, "read {absent:#x}");
            assert_eq!(
                a.msr_write(msr(absent), 0),
                Err(ApicError::Gp),
                "write {absent:#x}"
            );
        }
        assert_eq!(a.msr_read(msr(reg::EOI)), gp);
        assert_eq!(a.msr_read(msr(reg::SELF_IPI)), gp);
        for ro in [
            reg::ID,
            reg::VERSION,
            reg::PPR,
            reg::LDR,
            reg::ISR,
            reg::IRR + 0x70,
            reg::TIMER_CURRENT,
        ] {
            assert_eq!(a.msr_write(msr(ro), 0), Err(ApicError::Gp), "write {ro:#x}");
        }
        assert_eq!(a.msr_write(msr(reg::EOI), 1), Err(ApicError::Gp));
        assert_eq!(a.msr_write(msr(reg::EOI), 0), Ok(()));
        assert_eq!(a.msr_write(msr(reg::ESR), 1), Err(ApicError::Gp));
        assert_eq!(a.msr_write(msr(reg::ESR), 0), Ok(()));
        // Reserved bits.
        assert_eq!(a.msr_write(msr(reg::TPR), 0x100), Err(ApicError::Gp));
        assert_eq!(a.msr_write(msr(reg::TPR), 1 << 32), Err(ApicError::Gp));
        assert_eq!(a.msr_write(msr(reg::TPR), 0x20), Ok(()));
        assert_eq!(a.msr_read(msr(reg::TPR)), Ok(0x20));
        assert_eq!(
            a.msr_write(msr(reg::SVR), 0x1000 | 0x1ff),
            Err(ApicError::Gp),
            "no EOI suppression"
        );
        assert_eq!(a.msr_write(msr(reg::LVT_ERROR), 0x700), Err(ApicError::Gp));
        assert_eq!(
            a.msr_write(msr(reg::LVT_TIMER), 3 << 17),
            Err(ApicError::Gp)
        );
        assert_eq!(a.msr_write(msr(reg::TIMER_DIVIDE), 4), Err(ApicError::Gp));
        assert_eq!(a.msr_write(msr(reg::SELF_IPI), 0x100), Err(ApicError::Gp));
        assert_eq!(
            a.msr_write(msr(reg::ICR_LOW), 1 << 13 | 0x40),
            Err(ApicError::Gp)
        );
        assert_eq!(
            a.msr_write(msr(reg::ICR_LOW), 1 << 20 | 0x40),
            Err(ApicError::Gp)
        );
        // The read-only status bits of an LVT are accepted and dropped.
        assert_eq!(a.msr_write(msr(reg::LVT_LINT0), 0x1_5700), Ok(()));
        assert_eq!(a.msr_read(msr(reg::LVT_LINT0)), Ok(0x1_0700));
        // ICR is one 64-bit register.
        assert_eq!(
            a.msr_write(msr(reg::ICR_LOW), 0x1234_5678_0000_0040),
            Ok(())
        );
        assert_eq!(a.msr_read(msr(reg::ICR_LOW)), Ok(0x1234_5678_0000_0040));
        // Not an x2APIC MSR.
        assert_eq!(a.msr_read(0x7ff), gp);
        assert_eq!(a.msr_read(0x900), gp);
    }

    #[test]
    fn tpr_holds_a_lower_class_back() {
        let b = Board::new();
        let mut a = enabled(&b);
        wr(&mut a, reg::TPR, 0x50);
        assert!(a.deliver(&fixed(0x51, false)));
        assert!(a.deliver(&fixed(0x45, false)));
        assert_eq!(a.pending_vector(), None, "class 5 is not above TPR class 5");
        assert_eq!(a.acknowledge(), Some(0xff), "spurious");
        wr(&mut a, reg::TPR, 0x4f);
        assert_eq!(a.pending_vector(), Some(0x51));
        assert_eq!(a.acknowledge(), Some(0x51));
        assert_eq!(rd(&mut a, reg::PPR), 0x50);
        assert_eq!(a.pending_vector(), None, "0x45 waits for the EOI");
        wr(&mut a, reg::EOI, 0);
        assert_eq!(rd(&mut a, reg::PPR), 0x4f);
        assert_eq!(a.pending_vector(), None, "and for TPR");
        wr(&mut a, reg::TPR, 0x30);
        assert_eq!(a.acknowledge(), Some(0x45));
    }

    #[test]
    fn nested_in_service_and_eoi_order() {
        let b = Board::new();
        let mut a = enabled(&b);
        a.deliver(&fixed(0x40, false));
        assert_eq!(a.acknowledge(), Some(0x40));
        a.deliver(&fixed(0x41, false));
        assert_eq!(a.pending_vector(), None, "same class as in service");
        a.deliver(&fixed(0x90, false));
        assert_eq!(a.acknowledge(), Some(0x90), "a higher class nests");
        assert_eq!(rd(&mut a, reg::ISR + 0x40), 1 << 16);
        assert_eq!(rd(&mut a, reg::ISR + 0x20), 1);
        assert_eq!(rd(&mut a, reg::PPR), 0x90);
        wr(&mut a, reg::EOI, 0);
        assert_eq!(rd(&mut a, reg::ISR + 0x40), 0, "EOI ends the highest first");
        assert_eq!(rd(&mut a, reg::PPR), 0x40);
        wr(&mut a, reg::EOI, 0);
        assert_eq!(a.acknowledge(), Some(0x41));
        wr(&mut a, reg::EOI, 0);
        wr(&mut a, reg::EOI, 0);
        assert_eq!(a.take_eoi(), None, "edge vectors are not broadcast");
        assert_eq!(rd(&mut a, reg::PPR), 0);
    }

    #[test]
    fn level_triggered_eoi_is_reported() {
        let b = Board::new();
        let mut a = enabled(&b);
        a.deliver(&fixed(0x61, true));
        a.deliver(&fixed(0x30, false));
        assert_eq!(rd(&mut a, reg::TMR + 0x30), 2);
        assert_eq!(rd(&mut a, reg::IRR + 0x30), 2);
        assert_eq!(a.acknowledge(), Some(0x61));
        assert_eq!(a.take_eoi(), None);
        wr(&mut a, reg::EOI, 0);
        assert_eq!(a.take_eoi(), Some(0x61));
        assert_eq!(a.take_eoi(), None);
        assert_eq!(a.acknowledge(), Some(0x30));
        wr(&mut a, reg::EOI, 0);
        assert_eq!(a.take_eoi(), None);
        // An edge message clears the TMR bit again.
        a.deliver(&fixed(0x61, false));
        assert_eq!(rd(&mut a, reg::TMR + 0x30), 0);
    }

    #[test]
    fn nmi_extint_and_init_messages() {
        let b = Board::new();
        let mut a = LocalApic::new(&b.clock);
        let m = |delivery| InterruptMessage {
            vector: 0,
            delivery,
            destination: Destination::Physical(0xff),
            level_triggered: false,
        };
        // Software-disabled: NMI yes, fixed and ExtINT no.
        assert!(a.deliver(&m(DeliveryMode::Nmi)));
        assert!(a.take_nmi());
        assert!(!a.take_nmi());
        assert!(a.deliver(&fixed(0x40, false)));
        assert!(a.deliver(&m(DeliveryMode::ExtInt)));
        assert!(!a.take_extint());
        wr(&mut a, reg::SVR, 0x1ff);
        assert_eq!(a.pending_vector(), None);
        a.deliver(&m(DeliveryMode::ExtInt));
        assert!(a.take_extint());
        for d in [DeliveryMode::Init, DeliveryMode::StartUp, DeliveryMode::Smi] {
            assert!(a.deliver(&m(d)));
        }
        assert!(!a.take_nmi() && !a.take_extint() && a.pending_vector().is_none());
        assert!(!a.deliver(&InterruptMessage {
            destination: Destination::Physical(3),
            ..fixed(0x40, false)
        }));
        // LINT1 as NMI.
        wr(&mut a, reg::LVT_LINT1, 0x400);
        a.lint1_nmi();
        assert!(a.take_nmi());
    }

    #[test]
    fn logical_destinations() {
        let b = Board::new();
        let mut a = enabled(&b);
        let to = |d| InterruptMessage {
            destination: Destination::Logical(d),
            ..fixed(0x40, false)
        };
        wr(&mut a, reg::LDR, 0x0400_0000);
        // Flat.
        assert!(a.deliver(&to(0x06)));
        assert!(!a.deliver(&to(0x03)));
        assert!(a.deliver(&to(0xff)));
        // Cluster: cluster 0, member bit 2.
        wr(&mut a, reg::DFR, 0x0fff_ffff);
        assert!(a.deliver(&to(0x04)));
        assert!(!a.deliver(&to(0x14)));
        wr(&mut a, reg::LDR, 0x2100_0000);
        assert!(a.deliver(&to(0x23)));
        assert!(!a.deliver(&to(0x22)));
        // x2APIC cluster: LDR 0x0000_0001 for ID 0.
        a.set_apic_base(APIC_BASE_DEFAULT | APIC_BASE_EN | APIC_BASE_EXTD, true)
            .unwrap();
        assert!(a.deliver(&to(0x0000_0003)));
        assert!(!a.deliver(&to(0x0001_0001)));
        assert!(!a.deliver(&to(0x0000_0002)));
        assert!(a.deliver(&to(u32::MAX)));
        let phys = |d| InterruptMessage {
            destination: Destination::Physical(d),
            ..fixed(0x40, false)
        };
        assert!(a.deliver(&phys(0)));
        assert!(a.deliver(&phys(u32::MAX)));
        assert!(!a.deliver(&phys(0x100)));
    }

    #[test]
    fn self_ipis() {
        let b = Board::new();
        let mut a = enabled(&b);
        // Shorthand self.
        wr(&mut a, reg::ICR_LOW, 1 << 18 | 0x50);
        assert_eq!(
            rd(&mut a, reg::ICR_LOW),
            1 << 18 | 0x50,
            "delivery status idle"
        );
        assert_eq!(a.acknowledge(), Some(0x50));
        wr(&mut a, reg::EOI, 0);
        // Physical destination 0 is us; all-including-self too.
        wr(&mut a, reg::ICR_HIGH, 0);
        wr(&mut a, reg::ICR_LOW, 0x51);
        wr(&mut a, reg::ICR_LOW, 2 << 18 | 0x52);
        // All-excluding-self reaches nobody, without an error.
        wr(&mut a, reg::ICR_LOW, 3 << 18 | 0x53);
        assert_eq!(rd(&mut a, reg::IRR + 0x20), 0b11 << 17);
        // NMI to self; INIT and SIPI to self are ignored.
        wr(&mut a, reg::ICR_LOW, 1 << 18 | 4 << 8);
        assert!(a.take_nmi());
        wr(&mut a, reg::ICR_LOW, 1 << 18 | 5 << 8 | 1 << 14);
        wr(&mut a, reg::ICR_LOW, 1 << 18 | 6 << 8 | 0x10);
        wr(&mut a, reg::ESR, 0);
        assert_eq!(rd(&mut a, reg::ESR), 0);
        // x2APIC: SELF_IPI and the 64-bit ICR.
        let mut a = x2(&b);
        a.msr_write(msr(reg::SELF_IPI), 0x61).unwrap();
        a.msr_write(msr(reg::ICR_LOW), 0x62).unwrap();
        a.msr_write(msr(reg::ICR_LOW), 5 << 32 | 0x63).unwrap();
        assert_eq!(a.msr_read(msr(reg::IRR + 0x30)), Ok(0b110));
        a.msr_write(msr(reg::ESR), 0).unwrap();
        assert_eq!(
            a.msr_read(msr(reg::ESR)),
            Ok(0),
            "no send accept error in x2APIC mode"
        );
    }

    #[test]
    fn ipi_to_an_absent_apic_and_illegal_vectors() {
        let b = Board::new();
        let mut a = enabled(&b);
        wr(&mut a, reg::ICR_HIGH, 0x0100_0000);
        wr(&mut a, reg::ICR_LOW, 0x40);
        assert_eq!(a.pending_vector(), None, "dropped");
        assert_eq!(rd(&mut a, reg::ESR), 0, "not before the ESR write");
        wr(&mut a, reg::ESR, 0);
        assert_eq!(rd(&mut a, reg::ESR), esr::SEND_ACCEPT);
        // Sending vector 3 fails before it goes anywhere.
        wr(&mut a, reg::ICR_LOW, 1 << 18 | 3);
        // Receiving vector 5 is refused.
        a.deliver(&fixed(5, false));
        wr(&mut a, reg::ESR, 0);
        assert_eq!(
            rd(&mut a, reg::ESR),
            esr::SEND_ILLEGAL_VECTOR | esr::RECEIVE_ILLEGAL_VECTOR
        );
        assert_eq!(rd(&mut a, reg::IRR), 0);
        // With LVT error unmasked, an error raises its vector.
        wr(&mut a, reg::LVT_ERROR, 0xfe);
        wr(&mut a, reg::ICR_LOW, 0x40);
        assert_eq!(a.acknowledge(), Some(0xfe));
        // x2APIC SELF_IPI with an illegal vector.
        let mut a = x2(&b);
        a.msr_write(msr(reg::SELF_IPI), 0x0f).unwrap();
        a.msr_write(msr(reg::ESR), 0).unwrap();
        assert_eq!(
            a.msr_read(msr(reg::ESR)),
            Ok(u64::from(esr::SEND_ILLEGAL_VECTOR))
        );
    }

    #[test]
    fn one_shot_timer_with_divide() {
        let b = Board::new();
        let mut a = enabled(&b);
        wr(&mut a, reg::TIMER_DIVIDE, 0b0001); // divide by 4
        wr(&mut a, reg::LVT_TIMER, 0x30);
        b.clock.advance_to(1_000);
        wr(&mut a, reg::TIMER_INITIAL, 100);
        assert_eq!(rd(&mut a, reg::TIMER_CURRENT), 100);
        assert_eq!(a.poll(), Some(1_400));
        b.clock.advance_to(1_041);
        assert_eq!(rd(&mut a, reg::TIMER_CURRENT), 90);
        // Divide by 1 from here on: 90 ticks of 1 ns.
        wr(&mut a, reg::TIMER_DIVIDE, 0b1011);
        assert_eq!(a.poll(), Some(1_131));
        b.clock.advance_to(1_130);
        assert_eq!(a.poll(), Some(1_131));
        assert_eq!(a.pending_vector(), None);
        b.clock.advance_to(5_000);
        assert_eq!(a.poll(), None, "one-shot: done");
        assert_eq!(a.acknowledge(), Some(0x30));
        assert_eq!(rd(&mut a, reg::TIMER_CURRENT), 0);
        assert_eq!(rd(&mut a, reg::TIMER_INITIAL), 100);
        b.clock.advance_to(50_000);
        assert_eq!(a.poll(), None);
        assert_eq!(a.pending_vector(), None, "fires once");
        // Initial count 0 stops; divide by 128.
        wr(&mut a, reg::TIMER_DIVIDE, 0b1010);
        wr(&mut a, reg::TIMER_INITIAL, 2);
        assert_eq!(a.poll(), Some(50_256));
        wr(&mut a, reg::TIMER_INITIAL, 0);
        assert_eq!(a.poll(), None);
        // A masked timer counts but does not interrupt.
        wr(&mut a, reg::LVT_TIMER, LVT_MASKED | 0x30);
        wr(&mut a, reg::TIMER_INITIAL, 1);
        b.clock.advance_to(60_000);
        assert_eq!(a.poll(), None);
        assert_eq!(a.pending_vector(), None);
    }

    #[test]
    fn periodic_timer_catches_up() {
        let b = Board::new();
        let mut a = enabled(&b);
        wr(&mut a, reg::TIMER_DIVIDE, 0); // divide by 2
        wr(&mut a, reg::LVT_TIMER, 1 << 17 | 0x31);
        wr(&mut a, reg::TIMER_INITIAL, 50); // 100 ns period
        assert_eq!(a.poll(), Some(100));
        b.clock.advance_to(130);
        assert_eq!(rd(&mut a, reg::TIMER_CURRENT), 35);
        assert_eq!(a.poll(), Some(200));
        assert_eq!(a.acknowledge(), Some(0x31));
        wr(&mut a, reg::EOI, 0);
        b.clock.advance_to(555);
        assert_eq!(
            a.poll(),
            Some(600),
            "four expiries coalesce into one interrupt"
        );
        assert_eq!(a.timer_ticks_lost(), 3, "expiries at 200, 300, 400, 500");
        assert_eq!(a.acknowledge(), Some(0x31));
        assert_eq!(a.pending_vector(), None);
        assert_eq!(rd(&mut a, reg::TIMER_CURRENT), 23);
        // Masked: counts, wakes nobody; an expiry while masked is not
        // delivered on unmasking.
        wr(&mut a, reg::LVT_TIMER, LVT_MASKED | 1 << 17 | 0x31);
        b.clock.advance_to(650);
        assert_eq!(a.poll(), None);
        assert_eq!(rd(&mut a, reg::TIMER_CURRENT), 25);
        b.clock.advance_to(720);
        wr(&mut a, reg::LVT_TIMER, 1 << 17 | 0x31);
        assert_eq!(a.poll(), Some(800));
        assert_eq!(rd(&mut a, reg::IRR + 0x10), 0, "700 went by masked");
        b.clock.advance_to(800);
        assert_eq!(a.poll(), Some(900));
        assert_eq!(rd(&mut a, reg::IRR + 0x10), 1 << 17);
        // Switching modes disarms.
        wr(&mut a, reg::LVT_TIMER, 0x31);
        assert_eq!(rd(&mut a, reg::TIMER_INITIAL), 0);
        assert_eq!(a.poll(), None);
    }

    #[test]
    fn tsc_deadline_timer() {
        let b = Board::new();
        let mut a = enabled(&b);
        // Not in TSC-deadline mode: the MSR reads 0 and ignores writes.
        a.write_tsc_deadline(1_000, 0);
        assert_eq!((a.tsc_deadline(), a.armed_tsc_deadline()), (0, None));
        wr(&mut a, reg::LVT_TIMER, 2 << 17 | 0x32);
        wr(&mut a, reg::TIMER_INITIAL, 100);
        assert_eq!(
            rd(&mut a, reg::TIMER_INITIAL),
            0,
            "ignored in TSC-deadline mode"
        );
        assert_eq!(rd(&mut a, reg::TIMER_CURRENT), 0);
        assert_eq!(a.poll(), None);
        a.write_tsc_deadline(1_000, 10);
        assert_eq!(
            (a.tsc_deadline(), a.armed_tsc_deadline()),
            (1_000, Some(1_000))
        );
        a.poll_tsc(999);
        assert_eq!(a.pending_vector(), None);
        a.poll_tsc(1_000);
        assert_eq!(a.tsc_deadline(), 0, "reads 0 once fired");
        assert_eq!(a.acknowledge(), Some(0x32));
        wr(&mut a, reg::EOI, 0);
        // A deadline already passed fires at once; 0 disarms.
        a.write_tsc_deadline(5, 10);
        assert_eq!((a.tsc_deadline(), a.pending_vector()), (0, Some(0x32)));
        a.write_tsc_deadline(2_000, 10);
        a.write_tsc_deadline(0, 10);
        assert_eq!(a.armed_tsc_deadline(), None);
        // Switching modes disarms.
        a.write_tsc_deadline(2_000, 10);
        wr(&mut a, reg::LVT_TIMER, 0x32);
        wr(&mut a, reg::LVT_TIMER, 2 << 17 | 0x32);
        assert_eq!(a.armed_tsc_deadline(), None);
    }

    #[test]
    fn spurious_and_software_disable() {
        let b = Board::new();
        let mut a = enabled(&b);
        wr(&mut a, reg::SVR, 0x1e7);
        assert_eq!(a.acknowledge(), Some(0xe7), "nothing pending: spurious");
        assert_eq!(rd(&mut a, reg::ISR + 0x70), 0, "no ISR bit for it");
        wr(&mut a, reg::LVT_TIMER, 0x40);
        wr(&mut a, reg::LVT_LINT0, 0x700);
        a.deliver(&fixed(0x80, false));
        // Software disable: LVTs masked and stay masked; IRR is held.
        wr(&mut a, reg::SVR, 0xe7);
        assert_eq!(rd(&mut a, reg::LVT_TIMER), LVT_MASKED | 0x40);
        assert!(!a.lint0_accepts_pic());
        wr(&mut a, reg::LVT_TIMER, 0x40);
        assert_eq!(rd(&mut a, reg::LVT_TIMER), LVT_MASKED | 0x40);
        assert_eq!(a.pending_vector(), None);
        assert_eq!(a.acknowledge(), Some(0xe7));
        wr(&mut a, reg::SVR, 0x1e7);
        assert_eq!(a.acknowledge(), Some(0x80), "held, then delivered");
    }

    #[derive(Clone, Debug)]
    enum Op {
        MmioRead(u64, u8),
        MmioWrite(u64, u8, u32),
        MsrRead(u32),
        MsrWrite(u32, u64),
        Base(u64, bool),
        Deliver(u8, u32, bool, u32, bool),
        Ack,
        Eoi,
        Time(u64),
        Tsc(u64, u64),
        Lint1,
    }

    fn op() -> impl Strategy<Value = Op> {
        let off = prop_oneof![(0u64..0x40).prop_map(|r| r << 4), 0u64..0x1100];
        let size = prop_oneof![Just(4u8), Just(1), Just(2), Just(8)];
        let base_bits = prop_oneof![
            (0u64..4).prop_map(|m| APIC_BASE_DEFAULT | (m & 1) << 11 | (m >> 1) << 10),
            any::<u64>(),
        ];
        prop_oneof![
            (off.clone(), size.clone()).prop_map(|(o, s)| Op::MmioRead(o, s)),
            (off, size, any::<u32>()).prop_map(|(o, s, v)| Op::MmioWrite(o, s, v)),
            (0x7f0u32..0x910).prop_map(Op::MsrRead),
            (
                0x800u32..0x840,
                prop_oneof![any::<u32>().prop_map(u64::from), any::<u64>()]
            )
                .prop_map(|(m, v)| Op::MsrWrite(m, v)),
            (base_bits, any::<bool>()).prop_map(|(v, x)| Op::Base(v, x)),
            (
                any::<u8>(),
                0u32..8,
                any::<bool>(),
                any::<u32>(),
                any::<bool>()
            )
                .prop_map(|(v, m, l, d, p)| Op::Deliver(v, m, l, d, p)),
            Just(Op::Ack),
            Just(Op::Eoi),
            (0u64..100_000).prop_map(Op::Time),
            (any::<u64>(), any::<u64>()).prop_map(|(d, n)| Op::Tsc(d, n)),
            Just(Op::Lint1),
        ]
    }

    fn check_invariants(a: &LocalApic<'_>) {
        assert_eq!(a.irr[0] & 0xffff, 0, "no IRR bit below 16");
        assert_eq!(a.isr[0] & 0xffff, 0, "no ISR bit below 16");
        let ppr = a.ppr();
        assert!(ppr >> 4 >= a.tpr() >> 4);
        if let Some(isrv) = highest(&a.isr) {
            assert!(ppr >> 4 >= isrv >> 4);
        }
        if let Some(v) = a.pending_vector() {
            assert!(test_bit(&a.irr, v));
            assert!(v >> 4 > ppr >> 4);
        }
        assert_ne!(a.apic_base() & APIC_BASE_BSP, 0);
        assert_eq!(a.apic_base() & (0xff | 1 << 9 | !LocalApic::phys_mask()), 0);
        assert_eq!(a.mmio_base().is_some(), a.mode() == ApicMode::XApic);
        if a.armed_tsc_deadline().is_some() {
            assert_eq!(a.timer_mode(), TimerMode::TscDeadline);
        }
        assert!(a.current_count() <= a.timer.initial);
        if a.mode() == ApicMode::Disabled {
            assert_eq!(a.irr, [0; 8]);
            assert_eq!(a.isr, [0; 8]);
        }
    }

    proptest! {
        #[test]
        fn random_accesses_never_panic(ops in proptest::collection::vec(op(), 0..200)) {
            let b = Board::new();
            let mut a = LocalApic::new(&b.clock);
            let mut t = 0u64;
            for o in ops {
                match o {
                    Op::MmioRead(off, s) => { MmioDevice::read(&mut a, off, s); }
                    Op::MmioWrite(off, s, v) => { MmioDevice::write(&mut a, off, s, u64::from(v)); }
                    Op::MsrRead(m) => {
                        let r = a.msr_read(m);
                        prop_assert!(a.mode() == ApicMode::X2Apic || r.is_err());
                    }
                    Op::MsrWrite(m, v) => {
                        let r = a.msr_write(m, v);
                        prop_assert!(a.mode() == ApicMode::X2Apic || r.is_err());
                    }
                    Op::Base(v, x) => { let _ = a.set_apic_base(v, x); }
                    Op::Deliver(vector, mode, level, dest, physical) => {
                        if let Some(delivery) = DeliveryMode::from_bits(mode) {
                            let destination = if physical {
                                Destination::Physical(dest)
                            } else {
                                Destination::Logical(dest)
                            };
                            a.deliver(&InterruptMessage { vector, delivery, destination, level_triggered: level });
                        }
                    }
                    Op::Ack => {
                        let pending = a.pending_vector();
                        let got = a.acknowledge();
                        if let Some(v) = pending {
                            prop_assert_eq!(got, Some(v));
                            prop_assert!(test_bit(&a.isr, v));
                        }
                    }
                    Op::Eoi => {
                        a.eoi();
                        while a.take_eoi().is_some() {}
                    }
                    Op::Time(d) => {
                        t = t.saturating_add(d);
                        b.clock.advance_to(t);
                        if let Some(next) = a.poll() {
                            prop_assert!(next > b.clock.now());
                        }
                    }
                    Op::Tsc(d, n) => {
                        a.write_tsc_deadline(d, n);
                        a.poll_tsc(n);
                    }
                    Op::Lint1 => a.lint1_nmi(),
                }
                check_invariants(&a);
            }
        }
    }
}
