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

/// Base of the MSI address window (SDM vol. 3, 11.11.1: address bits
/// 31:20 are 0xFEE).
pub const MSI_ADDRESS_BASE: u64 = 0xFEE0_0000;

/// MSI address bit 3: redirection hint (SDM 11.11.1).
const MSI_ADDR_RH: u64 = 1 << 3;
/// MSI address bit 2: destination mode, 1 logical (SDM 11.11.1).
const MSI_ADDR_DM: u64 = 1 << 2;
/// MSI data bit 15: trigger mode, 1 level (SDM 11.11.2).
const MSI_DATA_LEVEL: u32 = 1 << 15;

/// Decodes a message-signalled interrupt: the `data` dword a device wrote
/// at `address` (SDM vol. 3, 11.11.1 message address, 11.11.2 message
/// data).
///
/// - `address` bits 63:20 must be 0xFEE (the local APICs' window, see
///   [`MSI_ADDRESS_BASE`]; a nonzero upper dword is not in it), else
///   `None`.
/// - Destination ID: bits 19:12; destination mode: bit 2 (1 logical).
///   The mode is taken from DM whatever RH says, as QEMU and KVM do (Linux
///   programs RH = 0 with DM = 1 in logical mode).
/// - Redirection hint, bit 3: a fixed message with RH set is delivered
///   as lowest priority (KVM's reading of SDM 11.11.1).
/// - Data bits 7:0 vector, 10:8 delivery mode (the reserved 011 and 110
///   give `None`), bit 15 trigger mode (1 level). Bit 14 (level assert)
///   is not looked at: a level message is taken as an assertion.
pub fn decode_msi(address: u64, data: u32) -> Option<InterruptMessage> {
    if address >> 20 != MSI_ADDRESS_BASE >> 20 {
        return None;
    }
    let delivery = match DeliveryMode::from_bits(data >> 8)? {
        DeliveryMode::StartUp => return None,
        DeliveryMode::Fixed if address & MSI_ADDR_RH != 0 => DeliveryMode::LowestPriority,
        d => d,
    };
    let dest = ((address >> 12) & 0xff) as u32;
    let destination = if address & MSI_ADDR_DM != 0 {
        Destination::Logical(dest)
    } else {
        Destination::Physical(dest)
    };
    Some(InterruptMessage {
        vector: data as u8,
        delivery,
        destination,
        level_triggered: data & MSI_DATA_LEVEL != 0,
    })
}

#[cfg(test)]
mod msi_tests {
    use super::*;

    #[test]
    fn decodes_a_linux_style_physical_msi() {
        // Destination APIC 3, physical, fixed, edge, vector 0x41.
        let m = decode_msi(0xfee0_3000, 0x0041).unwrap();
        assert_eq!(
            m,
            InterruptMessage {
                vector: 0x41,
                delivery: DeliveryMode::Fixed,
                destination: Destination::Physical(3),
                level_triggered: false,
            }
        );
    }

    #[test]
    fn logical_level_nmi_and_lowest_priority() {
        let m = decode_msi(MSI_ADDRESS_BASE | 0x0f << 12 | 1 << 2, 0x8000 | 4 << 8).unwrap();
        assert_eq!(m.destination, Destination::Logical(0x0f));
        assert_eq!(m.delivery, DeliveryMode::Nmi);
        assert!(m.level_triggered);
        let m = decode_msi(MSI_ADDRESS_BASE | 1 << 8, 1 << 8 | 0x30).unwrap();
        assert_eq!(m.delivery, DeliveryMode::LowestPriority);
        // A redirection hint turns fixed into lowest priority.
        let m = decode_msi(MSI_ADDRESS_BASE | 1 << 3, 0x30).unwrap();
        assert_eq!(m.delivery, DeliveryMode::LowestPriority);
        assert_eq!(m.destination, Destination::Physical(0));
        let m = decode_msi(MSI_ADDRESS_BASE | 0xff << 12, 7 << 8).unwrap();
        assert_eq!(m.delivery, DeliveryMode::ExtInt);
        assert_eq!(m.destination, Destination::Physical(0xff));
    }

    #[test]
    fn outside_the_window_and_reserved_modes_are_refused() {
        assert_eq!(decode_msi(0xfed0_0000, 0x30), None);
        assert_eq!(decode_msi(0xfef0_0000, 0x30), None);
        assert_eq!(decode_msi(0x1_fee0_0000, 0x30), None);
        assert_eq!(decode_msi(MSI_ADDRESS_BASE, 3 << 8 | 0x30), None);
        assert_eq!(decode_msi(MSI_ADDRESS_BASE, 6 << 8 | 0x30), None);
        assert!(decode_msi(MSI_ADDRESS_BASE | 0xf_ffff, u32::MAX).is_some());
    }
}
