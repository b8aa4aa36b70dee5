//! Interrupt messages: what the I/O APIC and MSI writes send to a local
//! APIC (SDM vol. 3, 11.6 and 11.11; the I/O APIC's redirection entries
//! carry the same fields).
//!
//! A message names a vector, a delivery mode, a destination and a
//! trigger; the local APIC ([`crate::devices::lapic`]) decides whether it
//! is addressed to it and where the vector goes (IRR, NMI, ExtINT).

/// How the message is delivered (ICR, redirection entry and MSI data bits
/// 10:8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryMode {
    /// The vector goes into IRR.
    Fixed,
    /// As fixed, to the lowest-priority processor of the destination (with
    /// one vCPU: that one).
    LowestPriority,
    /// System management interrupt: dropped (no SMM).
    Smi,
    /// Non-maskable interrupt (vector ignored).
    Nmi,
    /// INIT (vector ignored).
    Init,
    /// Start-up IPI (ICR only).
    StartUp,
    /// The 8259's vector is fetched by an interrupt acknowledge cycle.
    ExtInt,
}

impl DeliveryMode {
    /// Decodes bits 10:8; 3 is reserved and decodes to `None`.
    pub fn from_bits(bits: u32) -> Option<Self> {
        Some(match bits & 7 {
            0 => Self::Fixed,
            1 => Self::LowestPriority,
            2 => Self::Smi,
            4 => Self::Nmi,
            5 => Self::Init,
            6 => Self::StartUp,
            7 => Self::ExtInt,
            _ => return None,
        })
    }
}

/// Where a message goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination {
    /// An APIC ID (0xff in xAPIC mode, 0xffff_ffff in x2APIC mode: all).
    Physical(u32),
    /// A logical destination, matched against each APIC's LDR (and DFR
    /// in xAPIC mode).
    Logical(u32),
}

/// One interrupt message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterruptMessage {
    /// The vector (ignored for NMI, INIT and ExtINT).
    pub vector: u8,
    /// How it is delivered.
    pub delivery: DeliveryMode,
    /// Who it is for.
    pub destination: Destination,
    /// Level-triggered: the local APIC sets the vector's TMR bit, and its
    /// EOI is broadcast back to the I/O APIC.
    pub level_triggered: bool,
}
