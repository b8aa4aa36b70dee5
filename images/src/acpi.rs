//! The guest's ACPI tables, built once by the image builder and placed in
//! guest memory at [`ACPI_TABLES_GPA`] (0xE0000, in the BIOS area an OS
//! scans for the RSDP).
//!
//! The layouts follow the ACPI 6.5 specification (August 2022):
//!
//! | what | ACPI 6.5 section |
//! |---|---|
//! | RSDP, and finding it on IA-PC by scanning 16-byte boundaries of 0xE0000..0xFFFFF | 5.2.5, 5.2.5.1, 5.2.5.3 |
//! | the header every table starts with, and its checksum | 5.2.6 |
//! | RSDT (32-bit entries, for ACPI 1.0 and 32-bit kernels) and XSDT (64-bit) | 5.2.7, 5.2.8 |
//! | FADT, its fixed feature flags and IA-PC boot architecture flags | 5.2.9 (tables 5.9 to 5.11) |
//! | Generic Address Structure (the FADT's `X_` blocks, the reset register) | 5.2.3.2 |
//! | FACS | 5.2.10 |
//! | DSDT | 5.2.11.1 |
//! | MADT: processor local APIC, I/O APIC, interrupt source override, local APIC NMI | 5.2.12, 5.2.12.2, 5.2.12.3, 5.2.12.5, 5.2.12.7 |
//! | the fixed hardware the FADT points at: PM1 event and control blocks, PM timer | 4.8.3 |
//! | `\_S5` (soft off) and the `SLP_TYP` values it gives | 7.4.2 |
//! | the AML encoding of the DSDT (`crate::aml`) | 20.2 |
//! | the PCI root bridge: `_HID` PNP0A03, `_BBN`, `_CRS`, `_PRT` | 6.1.5, 6.5.5, 6.2.2, 6.2.13 |
//! | PCI interrupt links (PNP0C0F): `_PRS`, `_CRS`, `_SRS`; resource descriptors | 6.2.12, 6.2.13, 6.2.16, 6.4 |
//!
//! The platform described is the one the vmm-server emulates, with QEMU's
//! PC (`hw/i386/acpi-common.c`, PIIX4 PM) as the model for every choice the
//! spec leaves open: the local APIC at 0xFEE00000, one I/O APIC (ID 0, as
//! QEMU's `ACPI_BUILD_IOAPIC_ID`) at 0xFEC00000 with 24 pins from GSI 0,
//! ISA IRQ 0 on GSI 2, the SCI on ISA IRQ 9 (level, active high), the ACPI
//! PM block at I/O port 0x600, the reset register at port 0xCF9 and no SMI
//! command port (the platform is always in ACPI mode).
//!
//! Left out: HPET, MCFG (PCI Express ECAM), SRAT/SLIT (NUMA), SSDTs, a
//! processor or any device object but the PCI root bridge and its
//! interrupt links (no `PNP0501` for COM1 etc.: Linux probes the legacy
//! devices itself), `_S1`..`_S4` (no sleep state but soft off), GPE
//! blocks, a hardware-reduced profile, x2APIC entries (APIC IDs stay below
//! 255) and the FADT's `SLEEP_CONTROL_REG`/`SLEEP_STATUS_REG` (only for
//! hardware-reduced platforms).

use zerocopy::{Immutable, IntoBytes, KnownLayout};

/// Where the tables go in guest physical memory: the RSDP first, at this
/// 16-byte-aligned address in the IA-PC BIOS read-only area
/// 0xE0000..0xFFFFF that an OS (Linux among them) scans for it.
pub const ACPI_TABLES_GPA: u64 = 0xE0000;

/// The physical address of the RSDP (for boot protocols that pass it, such
/// as Linux's `boot_params.acpi_rsdp_addr`).
pub const RSDP_GPA: u64 = ACPI_TABLES_GPA;

/// The most bytes [`build`] may return: the tables stay in 0xE0000..0xF0000,
/// below 1 MiB, leaving 0xF0000..0xFFFFF to BIOS code.
pub const ACPI_TABLES_MAX: usize = 0x10000;

const _: () = assert!(ACPI_TABLES_GPA.is_multiple_of(16));
const _: () = assert!(ACPI_TABLES_GPA + ACPI_TABLES_MAX as u64 <= 0x10_0000);

/// The local APIC's physical address (the MADT's Local Interrupt Controller
/// Address).
pub const LOCAL_APIC_ADDRESS: u32 = 0xFEE0_0000;
/// The I/O APIC's physical address.
pub const IOAPIC_ADDRESS: u32 = 0xFEC0_0000;
/// The I/O APIC's ID in the MADT: 0, as QEMU's `ACPI_BUILD_IOAPIC_ID`
/// (whatever the number of CPUs). Its ID register should read the same.
pub const IOAPIC_ID: u8 = 0;
/// The I/O APIC's pins (GSIs [`IOAPIC_GSI_BASE`]..+24); the MADT does not
/// carry it, the I/O APIC's version register does.
pub const IOAPIC_PINS: u32 = 24;
/// The first GSI of the I/O APIC.
pub const IOAPIC_GSI_BASE: u32 = 0;

/// The base of the ACPI PM I/O block, as QEMU's PIIX4 PM.
pub const PM_BASE: u16 = 0x600;
/// PM1a_EVT_BLK: PM1 status (2 bytes) then PM1 enable (2 bytes).
pub const PM1A_EVT_BLK: u16 = PM_BASE;
/// PM1_EVT_LEN.
pub const PM1_EVT_LEN: u8 = 4;
/// PM1a_CNT_BLK: PM1 control (SCI_EN bit 0, SLP_TYP bits 10-12, SLP_EN bit 13).
pub const PM1A_CNT_BLK: u16 = PM_BASE + 4;
/// PM1_CNT_LEN.
pub const PM1_CNT_LEN: u8 = 2;
/// PM_TMR_BLK: the 3.579545 MHz ACPI PM timer, 24 bits wide (the FADT's
/// `TMR_VAL_EXT` is clear).
pub const PM_TMR_BLK: u16 = PM_BASE + 8;
/// PM_TMR_LEN.
pub const PM_TMR_LEN: u8 = 4;
/// The ISA IRQ (and, through the identity override, the GSI) of the SCI:
/// level-triggered, active high.
pub const SCI_IRQ: u8 = 9;
/// The FADT's reset register: I/O port 0xCF9 (the PCI reset control register).
pub const RESET_PORT: u16 = 0xCF9;
/// The value written to [`RESET_PORT`] to reset (hard reset, reset CPU).
pub const RESET_VALUE: u8 = 0x06;
/// The `SLP_TYP` value `\_S5` gives (both SLP_TYPa and SLP_TYPb): the PM
/// device powers off when PM1a_CNT is written with `SLP_EN` (bit 13) set and
/// this value in `SLP_TYP` (bits 10-12), as QEMU's PIIX4 does.
pub const S5_SLP_TYP: u8 = 0;

/// The OEM ID in the RSDP and every table header.
pub const OEM_ID: [u8; 6] = *b"SPLTVR";
/// The OEM table ID in every table header.
pub const OEM_TABLE_ID: [u8; 8] = *b"SPLITVSR";
/// The OEM revision in every table header.
pub const OEM_REVISION: u32 = 1;
/// The creator ID (the "ASL compiler ID") in every table header.
pub const CREATOR_ID: [u8; 4] = *b"SPLT";
/// The creator revision in every table header.
pub const CREATOR_REVISION: u32 = 1;

/// What the tables describe. Small for now; it grows with the platform.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcpiConfig {
    /// Number of CPUs (1 to 254): processor UIDs and local APIC IDs 0..cpus.
    pub cpus: u8,
}

impl Default for AcpiConfig {
    fn default() -> Self {
        Self { cpus: 1 }
    }
}

/// The Root System Description Pointer, ACPI 2.0+ form (ACPI 6.5 §5.2.5.3).
#[derive(Clone, Copy, Debug, IntoBytes, Immutable, KnownLayout)]
#[repr(C, packed)]
pub struct Rsdp {
    /// `"RSD PTR "`.
    pub signature: [u8; 8],
    /// Makes the first 20 bytes sum to 0.
    pub checksum: u8,
    /// OEM ID.
    pub oem_id: [u8; 6],
    /// 2 for ACPI 2.0 and later.
    pub revision: u8,
    /// Physical address of the RSDT.
    pub rsdt_address: u32,
    /// Length of this structure: 36.
    pub length: u32,
    /// Physical address of the XSDT.
    pub xsdt_address: u64,
    /// Makes all 36 bytes sum to 0.
    pub extended_checksum: u8,
    /// Zero.
    pub reserved: [u8; 3],
}

/// The System Description Table Header every table but the FACS starts
/// with (ACPI 6.5 §5.2.6).
#[derive(Clone, Copy, Debug, IntoBytes, Immutable, KnownLayout)]
#[repr(C, packed)]
pub struct SdtHeader {
    /// The table's signature, such as `"APIC"`.
    pub signature: [u8; 4],
    /// The table's length in bytes, header included.
    pub length: u32,
    /// The table's revision.
    pub revision: u8,
    /// Makes the whole table sum to 0.
    pub checksum: u8,
    /// OEM ID.
    pub oem_id: [u8; 6],
    /// OEM table ID.
    pub oem_table_id: [u8; 8],
    /// OEM revision.
    pub oem_revision: u32,
    /// Vendor ID of the tool that made the table.
    pub creator_id: [u8; 4],
    /// Revision of that tool.
    pub creator_revision: u32,
}

/// A Generic Address Structure (ACPI 6.5 §5.2.3.2).
#[derive(Clone, Copy, Debug, Default, IntoBytes, Immutable, KnownLayout)]
#[repr(C, packed)]
pub struct Gas {
    /// 0 system memory, 1 system I/O.
    pub space_id: u8,
    /// Width of the register in bits.
    pub bit_width: u8,
    /// Offset of the register in bits.
    pub bit_offset: u8,
    /// 0 undefined, 1 byte, 2 word, 3 dword, 4 qword.
    pub access_size: u8,
    /// The register's address in its space.
    pub address: u64,
}

/// GAS address space: system I/O.
const GAS_SYSTEM_IO: u8 = 1;
/// GAS access sizes.
const GAS_BYTE: u8 = 1;
const GAS_WORD: u8 = 2;
const GAS_DWORD: u8 = 3;

impl Gas {
    /// An I/O-port register of `len` bytes accessed `access_size` at a time.
    const fn io(port: u16, len: u8, access_size: u8) -> Self {
        Self {
            space_id: GAS_SYSTEM_IO,
            bit_width: len * 8,
            bit_offset: 0,
            access_size,
            address: port as u64,
        }
    }
}

/// The Fixed ACPI Description Table, revision 6 minor 5: ACPI 6.5's 276
/// bytes (§5.2.9, table 5.9).
#[derive(Clone, Copy, Debug, IntoBytes, Immutable, KnownLayout)]
#[repr(C, packed)]
pub struct Fadt {
    /// Signature `"FACP"`.
    pub header: SdtHeader,
    /// FIRMWARE_CTRL: 32-bit physical address of the FACS.
    pub firmware_ctrl: u32,
    /// DSDT: 32-bit physical address of the DSDT.
    pub dsdt: u32,
    /// Reserved (ACPI 1.0's INT_MODEL).
    pub reserved0: u8,
    /// Preferred_PM_Profile: 0 unspecified.
    pub preferred_pm_profile: u8,
    /// SCI_INT: the SCI's ISA IRQ.
    pub sci_int: u16,
    /// SMI_CMD: 0, no SMI command port (always in ACPI mode).
    pub smi_cmd: u32,
    /// ACPI_ENABLE.
    pub acpi_enable: u8,
    /// ACPI_DISABLE.
    pub acpi_disable: u8,
    /// S4BIOS_REQ.
    pub s4bios_req: u8,
    /// PSTATE_CNT.
    pub pstate_cnt: u8,
    /// PM1a_EVT_BLK port.
    pub pm1a_evt_blk: u32,
    /// PM1b_EVT_BLK port (0: none).
    pub pm1b_evt_blk: u32,
    /// PM1a_CNT_BLK port.
    pub pm1a_cnt_blk: u32,
    /// PM1b_CNT_BLK port (0: none).
    pub pm1b_cnt_blk: u32,
    /// PM2_CNT_BLK port (0: none).
    pub pm2_cnt_blk: u32,
    /// PM_TMR_BLK port.
    pub pm_tmr_blk: u32,
    /// GPE0_BLK port (0: none).
    pub gpe0_blk: u32,
    /// GPE1_BLK port (0: none).
    pub gpe1_blk: u32,
    /// PM1_EVT_LEN.
    pub pm1_evt_len: u8,
    /// PM1_CNT_LEN.
    pub pm1_cnt_len: u8,
    /// PM2_CNT_LEN.
    pub pm2_cnt_len: u8,
    /// PM_TMR_LEN (4, or 0 for no PM timer).
    pub pm_tmr_len: u8,
    /// GPE0_BLK_LEN.
    pub gpe0_blk_len: u8,
    /// GPE1_BLK_LEN.
    pub gpe1_blk_len: u8,
    /// GPE1_BASE.
    pub gpe1_base: u8,
    /// CST_CNT.
    pub cst_cnt: u8,
    /// P_LVL2_LAT (over 100: no C2).
    pub p_lvl2_lat: u16,
    /// P_LVL3_LAT (over 1000: no C3).
    pub p_lvl3_lat: u16,
    /// FLUSH_SIZE.
    pub flush_size: u16,
    /// FLUSH_STRIDE.
    pub flush_stride: u16,
    /// DUTY_OFFSET.
    pub duty_offset: u8,
    /// DUTY_WIDTH.
    pub duty_width: u8,
    /// DAY_ALRM: CMOS index of the day-of-month alarm (0: none).
    pub day_alrm: u8,
    /// MON_ALRM: CMOS index of the month alarm (0: none).
    pub mon_alrm: u8,
    /// CENTURY: CMOS index of the century byte.
    pub century: u8,
    /// IAPC_BOOT_ARCH flags (table 5.11).
    pub iapc_boot_arch: u16,
    /// Reserved.
    pub reserved1: u8,
    /// Fixed feature flags (table 5.10).
    pub flags: u32,
    /// RESET_REG.
    pub reset_reg: Gas,
    /// RESET_VALUE.
    pub reset_value: u8,
    /// ARM_BOOT_ARCH.
    pub arm_boot_arch: u16,
    /// FADT Minor Version.
    pub minor_version: u8,
    /// X_FIRMWARE_CTRL: 64-bit FACS address; zero when FIRMWARE_CTRL is set.
    pub x_firmware_ctrl: u64,
    /// X_DSDT: 64-bit DSDT address.
    pub x_dsdt: u64,
    /// X_PM1a_EVT_BLK.
    pub x_pm1a_evt_blk: Gas,
    /// X_PM1b_EVT_BLK.
    pub x_pm1b_evt_blk: Gas,
    /// X_PM1a_CNT_BLK.
    pub x_pm1a_cnt_blk: Gas,
    /// X_PM1b_CNT_BLK.
    pub x_pm1b_cnt_blk: Gas,
    /// X_PM2_CNT_BLK.
    pub x_pm2_cnt_blk: Gas,
    /// X_PM_TMR_BLK.
    pub x_pm_tmr_blk: Gas,
    /// X_GPE0_BLK.
    pub x_gpe0_blk: Gas,
    /// X_GPE1_BLK.
    pub x_gpe1_blk: Gas,
    /// SLEEP_CONTROL_REG (hardware-reduced platforms only).
    pub sleep_control_reg: Gas,
    /// SLEEP_STATUS_REG (hardware-reduced platforms only).
    pub sleep_status_reg: Gas,
    /// Hypervisor Vendor Identity.
    pub hypervisor_vendor_id: u64,
}

const _: () = assert!(size_of::<Fadt>() == 276);

/// FADT fixed feature flags (ACPI 6.5 table 5.10).
pub mod fadt_flags {
    /// WBINVD works (required on IA-PC).
    pub const WBINVD: u32 = 1 << 0;
    /// C1 is supported on all processors.
    pub const PROC_C1: u32 = 1 << 2;
    /// No fixed-feature power button (none at all here).
    pub const PWR_BUTTON: u32 = 1 << 4;
    /// No fixed-feature sleep button (none at all here).
    pub const SLP_BUTTON: u32 = 1 << 5;
    /// RTC wake status is not in the PM1 fixed registers.
    pub const FIX_RTC: u32 = 1 << 6;
    /// The PM timer is 32 bits wide (clear here: 24 bits).
    pub const TMR_VAL_EXT: u32 = 1 << 8;
    /// RESET_REG is supported.
    pub const RESET_REG_SUP: u32 = 1 << 10;
}

/// IA-PC boot architecture flags (ACPI 6.5 table 5.11).
pub mod iapc_boot_arch {
    /// Legacy ISA devices (the RTC, PIC, PIT, serial ports...) are there.
    pub const LEGACY_DEVICES: u16 = 1 << 0;
    /// An 8042 keyboard controller is there.
    pub const I8042: u16 = 1 << 1;
}

/// The Firmware ACPI Control Structure (ACPI 6.5 §5.2.10): 64 bytes,
/// 64-byte aligned, no checksum.
#[derive(Clone, Copy, Debug, IntoBytes, Immutable, KnownLayout)]
#[repr(C, packed)]
pub struct Facs {
    /// `"FACS"`.
    pub signature: [u8; 4],
    /// 64.
    pub length: u32,
    /// Hardware signature (changes when the hardware does).
    pub hardware_signature: u32,
    /// Real-mode waking vector (no S3 here: 0).
    pub firmware_waking_vector: u32,
    /// The global lock.
    pub global_lock: u32,
    /// Flags (no S4BIOS, no 64-bit wake).
    pub flags: u32,
    /// 64-bit waking vector.
    pub x_firmware_waking_vector: u64,
    /// Version: 2.
    pub version: u8,
    /// Reserved.
    pub reserved0: [u8; 3],
    /// OSPM-enabled firmware control structure flags.
    pub ospm_flags: u32,
    /// Reserved.
    pub reserved1: [u8; 24],
}

const _: () = assert!(size_of::<Facs>() == 64);

/// The MADT's fixed part (ACPI 6.5 §5.2.12), before its entries.
#[derive(Clone, Copy, Debug, IntoBytes, Immutable, KnownLayout)]
#[repr(C, packed)]
pub struct MadtHeader {
    /// Signature `"APIC"`.
    pub header: SdtHeader,
    /// Physical address of every processor's local APIC.
    pub local_apic_address: u32,
    /// Bit 0 PCAT_COMPAT: dual 8259s are also there.
    pub flags: u32,
}

/// MADT flag: the PC-AT dual 8259 PICs are there too.
pub const MADT_PCAT_COMPAT: u32 = 1;

/// MADT entry type 0, Processor Local APIC (§5.2.12.2).
#[derive(Clone, Copy, Debug, IntoBytes, Immutable, KnownLayout)]
#[repr(C, packed)]
pub struct MadtLocalApic {
    /// 0.
    pub entry_type: u8,
    /// 8.
    pub length: u8,
    /// The processor's ACPI UID.
    pub processor_uid: u8,
    /// Its local APIC ID.
    pub apic_id: u8,
    /// Bit 0 Enabled, bit 1 Online Capable.
    pub flags: u32,
}

/// MADT entry type 1, I/O APIC (§5.2.12.3).
#[derive(Clone, Copy, Debug, IntoBytes, Immutable, KnownLayout)]
#[repr(C, packed)]
pub struct MadtIoApic {
    /// 1.
    pub entry_type: u8,
    /// 12.
    pub length: u8,
    /// The I/O APIC's ID.
    pub io_apic_id: u8,
    /// 0.
    pub reserved: u8,
    /// Its physical address.
    pub address: u32,
    /// The GSI of its first pin.
    pub gsi_base: u32,
}

/// MADT entry type 2, Interrupt Source Override (§5.2.12.5).
#[derive(Clone, Copy, Debug, IntoBytes, Immutable, KnownLayout)]
#[repr(C, packed)]
pub struct MadtInterruptOverride {
    /// 2.
    pub entry_type: u8,
    /// 10.
    pub length: u8,
    /// 0: ISA.
    pub bus: u8,
    /// The ISA IRQ.
    pub source: u8,
    /// The GSI it is wired to.
    pub gsi: u32,
    /// MPS INTI flags: polarity bits 0-1, trigger mode bits 2-3.
    pub flags: u16,
}

/// MPS INTI flags: conforms to the bus (ISA: edge, active high).
pub const INTI_CONFORMS: u16 = 0;
/// MPS INTI flags: level-triggered (0b11 << 2), active high (0b01).
pub const INTI_LEVEL_ACTIVE_HIGH: u16 = 0x000D;

/// MADT entry type 4, Local APIC NMI (§5.2.12.7).
#[derive(Clone, Copy, Debug, IntoBytes, Immutable, KnownLayout)]
#[repr(C, packed)]
pub struct MadtLocalApicNmi {
    /// 4.
    pub entry_type: u8,
    /// 6.
    pub length: u8,
    /// The processor's ACPI UID, 0xFF for all.
    pub processor_uid: u8,
    /// MPS INTI flags.
    pub flags: u16,
    /// The LINT pin the NMI is on.
    pub lint: u8,
}

/// `Name (_S5, Package () { 0, 0, 0, 0 })` in the root scope, hand-encoded
/// (ACPI 6.5 §20.2):
///
/// ```text
/// 08                DefName := NameOp (0x08) NameString DataRefObject
/// 5F 53 35 5F       NameString: NameSeg "_S5_" (a 3-char name padded with '_')
/// 12                DefPackage := PackageOp (0x12) PkgLength NumElements PackageElementList
/// 06                PkgLength: one-byte form (bits 7-6 = 0), 6 bytes =
///                   itself (1) + NumElements (1) + four elements (4)
/// 04                NumElements: 4
/// 00 00 00 00       PackageElementList: ZeroOp x 4 (SLP_TYPa, SLP_TYPb, reserved, reserved)
/// ```
///
/// So `\_S5` gives SLP_TYPa = SLP_TYPb = [`S5_SLP_TYP`] (0), as QEMU's
/// DSDT does (ACPICA and Linux read the first two elements).
pub const S5_AML: [u8; 12] = [
    0x08, b'_', b'S', b'5', b'_', 0x12, 0x06, 0x04, 0x00, 0x00, 0x00, 0x00,
];

const _: () = assert!(S5_SLP_TYP == 0, "S5_AML encodes SLP_TYP as ZeroOp");

/// PCI configuration mechanism #1's ports (CONFIG_ADDRESS, CONFIG_DATA),
/// which `\_SB.PCI0` consumes.
pub const PCI_CONFIG_PORTS: (u16, u8) = (0xcf8, 8);
/// The PCI MMIO window the board routes to the functions' BARs
/// (`vmm_server::devices::pci::MMIO_WINDOW_BASE` and `_LEN`), which
/// `\_SB.PCI0` produces.
pub const PCI_MMIO_WINDOW: (u32, u32) = (0xfe00_0000, 0xb0_0000);
/// The PCI slots of the board, device number on bus 0 and the ISA line
/// (= GSI, through the MADT's identity mapping) its INTA# drives, as
/// `vmm_server::boards::PC_PCI_SLOTS`. The functions are single-function
/// and use INTA# only (their Interrupt Pin register reads 1), so INTB#-INTD#
/// are not routed.
pub const PCI_SLOTS: &[(u8, u8)] = &[(3, 10), (4, 11), (5, 5)];

/// The DSDT's AML: `\_S5` ([`S5_AML`]) and the PCI host bridge with the
/// interrupt links of its slots:
///
/// ```text
/// Scope (\_SB) {
///   Device (LNK3) {                      // one per slot, named by its device number
///     Name (_HID, EisaId ("PNP0C0F"))    // PCI interrupt link
///     Name (_UID, 3)
///     Name (_PRS, ResourceTemplate () { Interrupt (ResourceConsumer, Level, ActiveHigh, Exclusive) { 10 } })
///     Name (_CRS, <the same>)
///     Method (_SRS, 1) { }              // the line is wired: nothing to set
///   }
///   ...
///   Device (PCI0) {
///     Name (_HID, EisaId ("PNP0A03"))    // PCI host bridge, mechanism #1 (no MCFG, no PNP0A08)
///     Name (_ADR, 0)
///     Name (_BBN, 0)
///     Name (_UID, 0)
///     Name (_CRS, ResourceTemplate () {
///       WordBusNumber (ResourceProducer, MinFixed, MaxFixed, PosDecode, 0, 0, 0, 0, 1)
///       IO (Decode16, 0x0CF8, 0x0CF8, 1, 8)
///       DWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable, ReadWrite,
///                    0, 0xFE000000, 0xFEAFFFFF, 0, 0x00B00000)
///     })
///     Name (_PRT, Package () { Package () { 0x0003FFFF, 0, LNK3, 0 }, ... })
///   }
/// }
/// ```
///
/// Links rather than GSIs in `_PRT`: a GSI there means level-triggered,
/// active low (ACPI 6.5 §6.2.13), while the board drives a PCI line high
/// when asserted, as QEMU's does; a link's `Interrupt` descriptor says so
/// (QEMU's PIIX DSDT does the same with LNKA-LNKD). The bus range is bus 0
/// alone (the board has no bridges); there is no I/O window (the board
/// assigns no I/O BARs and routes no ports to the functions).
pub fn dsdt_aml() -> Vec<u8> {
    use crate::aml::{
        device, dword_memory, eisa_id, integer, interrupt_level_high, io, method, name, package,
        resource_template, scope, word_bus_number,
    };
    let link_name = |dev: u8| {
        [
            b'L',
            b'N',
            b'K',
            b"0123456789ABCDEFGHIJKLMNOPQRSTUV"[usize::from(dev)],
        ]
    };
    let mut sb = Vec::new();
    for &(dev, gsi) in PCI_SLOTS {
        let irq = resource_template(&[interrupt_level_high(u32::from(gsi))]);
        sb.extend(device(
            &link_name(dev),
            &[
                name(b"_HID", &integer(u64::from(eisa_id(b"PNP0C0F")))),
                name(b"_UID", &integer(u64::from(dev))),
                name(b"_PRS", &irq),
                name(b"_CRS", &irq),
                method(b"_SRS", 1, &[]),
            ]
            .concat(),
        ));
    }
    let (io_base, io_len) = PCI_CONFIG_PORTS;
    let (mem_base, mem_len) = PCI_MMIO_WINDOW;
    let prt: Vec<Vec<u8>> = PCI_SLOTS
        .iter()
        .map(|&(dev, _)| {
            package(&[
                // _ADR form: device in the high word, 0xFFFF = any function.
                integer((u64::from(dev) << 16) | 0xffff),
                integer(0), // INTA#
                link_name(dev).to_vec(),
                integer(0),
            ])
        })
        .collect();
    sb.extend(device(
        b"PCI0",
        &[
            name(b"_HID", &integer(u64::from(eisa_id(b"PNP0A03")))),
            name(b"_ADR", &integer(0)),
            name(b"_BBN", &integer(0)),
            name(b"_UID", &integer(0)),
            name(
                b"_CRS",
                &resource_template(&[
                    word_bus_number(0, 0),
                    io(io_base, io_len),
                    dword_memory(mem_base, mem_len),
                ]),
            ),
            name(b"_PRT", &package(&prt)),
        ]
        .concat(),
    ));
    [S5_AML.to_vec(), scope(b"\\_SB_", &sb)].concat()
}

/// The byte that makes `bytes` sum to 0 (mod 256) when added to them.
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b)))
}

/// A table header with length and checksum left at 0 for [`seal`].
fn header(signature: &[u8; 4], revision: u8) -> SdtHeader {
    SdtHeader {
        signature: *signature,
        length: 0,
        revision,
        checksum: 0,
        oem_id: OEM_ID,
        oem_table_id: OEM_TABLE_ID,
        oem_revision: OEM_REVISION,
        creator_id: CREATOR_ID,
        creator_revision: CREATOR_REVISION,
    }
}

/// Offsets of the header's length and checksum fields.
const LENGTH_AT: usize = 4;
const CHECKSUM_AT: usize = 9;

/// Fills in a table's length and checksum.
fn seal(mut table: Vec<u8>) -> Vec<u8> {
    let len = u32::try_from(table.len()).expect("a table under 4 GiB");
    table[LENGTH_AT..LENGTH_AT + 4].copy_from_slice(&len.to_le_bytes());
    table[CHECKSUM_AT] = 0;
    table[CHECKSUM_AT] = checksum(&table);
    table
}

fn madt(config: &AcpiConfig) -> Vec<u8> {
    let mut t = MadtHeader {
        header: header(b"APIC", 1),
        local_apic_address: LOCAL_APIC_ADDRESS,
        flags: MADT_PCAT_COMPAT,
    }
    .as_bytes()
    .to_vec();
    for cpu in 0..config.cpus {
        let lapic = MadtLocalApic {
            entry_type: 0,
            length: 8,
            processor_uid: cpu,
            apic_id: cpu,
            flags: 1, // Enabled
        };
        t.extend_from_slice(lapic.as_bytes());
    }
    let ioapic = MadtIoApic {
        entry_type: 1,
        length: 12,
        io_apic_id: IOAPIC_ID,
        reserved: 0,
        address: IOAPIC_ADDRESS,
        gsi_base: IOAPIC_GSI_BASE,
    };
    t.extend_from_slice(ioapic.as_bytes());
    let overrides = [
        (0, 2, INTI_CONFORMS),
        (SCI_IRQ, u32::from(SCI_IRQ), INTI_LEVEL_ACTIVE_HIGH),
    ];
    for (source, gsi, flags) in overrides {
        let iso = MadtInterruptOverride {
            entry_type: 2,
            length: 10,
            bus: 0,
            source,
            gsi,
            flags,
        };
        t.extend_from_slice(iso.as_bytes());
    }
    let nmi = MadtLocalApicNmi {
        entry_type: 4,
        length: 6,
        processor_uid: 0xFF,
        flags: INTI_CONFORMS,
        lint: 1,
    };
    t.extend_from_slice(nmi.as_bytes());
    seal(t)
}

fn fadt(facs: u64, dsdt: u64) -> Vec<u8> {
    let u32_of = |a: u64| u32::try_from(a).expect("tables below 4 GiB");
    let pm1a_evt = Gas::io(PM1A_EVT_BLK, PM1_EVT_LEN, GAS_WORD);
    let pm1a_cnt = Gas::io(PM1A_CNT_BLK, PM1_CNT_LEN, GAS_WORD);
    let pm_tmr = Gas::io(PM_TMR_BLK, PM_TMR_LEN, GAS_DWORD);
    let f = Fadt {
        header: header(b"FACP", 6),
        firmware_ctrl: u32_of(facs),
        dsdt: u32_of(dsdt),
        reserved0: 0,
        preferred_pm_profile: 0,
        sci_int: u16::from(SCI_IRQ),
        smi_cmd: 0,
        acpi_enable: 0,
        acpi_disable: 0,
        s4bios_req: 0,
        pstate_cnt: 0,
        pm1a_evt_blk: u32::from(PM1A_EVT_BLK),
        pm1b_evt_blk: 0,
        pm1a_cnt_blk: u32::from(PM1A_CNT_BLK),
        pm1b_cnt_blk: 0,
        pm2_cnt_blk: 0,
        pm_tmr_blk: u32::from(PM_TMR_BLK),
        gpe0_blk: 0,
        gpe1_blk: 0,
        pm1_evt_len: PM1_EVT_LEN,
        pm1_cnt_len: PM1_CNT_LEN,
        pm2_cnt_len: 0,
        pm_tmr_len: PM_TMR_LEN,
        gpe0_blk_len: 0,
        gpe1_blk_len: 0,
        gpe1_base: 0,
        cst_cnt: 0,
        p_lvl2_lat: 0x0FFF,
        p_lvl3_lat: 0x0FFF,
        flush_size: 0,
        flush_stride: 0,
        duty_offset: 0,
        duty_width: 0,
        day_alrm: 0,
        mon_alrm: 0,
        century: 0x32,
        iapc_boot_arch: iapc_boot_arch::LEGACY_DEVICES | iapc_boot_arch::I8042,
        reserved1: 0,
        flags: fadt_flags::WBINVD
            | fadt_flags::PROC_C1
            | fadt_flags::PWR_BUTTON
            | fadt_flags::SLP_BUTTON
            | fadt_flags::FIX_RTC
            | fadt_flags::RESET_REG_SUP,
        reset_reg: Gas::io(RESET_PORT, 1, GAS_BYTE),
        reset_value: RESET_VALUE,
        arm_boot_arch: 0,
        minor_version: 5,
        // §5.2.9: X_FIRMWARE_CTRL must be zero when FIRMWARE_CTRL is set.
        x_firmware_ctrl: 0,
        x_dsdt: dsdt,
        x_pm1a_evt_blk: pm1a_evt,
        x_pm1b_evt_blk: Gas::default(),
        x_pm1a_cnt_blk: pm1a_cnt,
        x_pm1b_cnt_blk: Gas::default(),
        x_pm2_cnt_blk: Gas::default(),
        x_pm_tmr_blk: pm_tmr,
        x_gpe0_blk: Gas::default(),
        x_gpe1_blk: Gas::default(),
        sleep_control_reg: Gas::default(),
        sleep_status_reg: Gas::default(),
        hypervisor_vendor_id: 0,
    };
    seal(f.as_bytes().to_vec())
}

fn facs() -> Facs {
    Facs {
        signature: *b"FACS",
        length: 64,
        hardware_signature: 0,
        firmware_waking_vector: 0,
        global_lock: 0,
        flags: 0,
        x_firmware_waking_vector: 0,
        version: 2,
        reserved0: [0; 3],
        ospm_flags: 0,
        reserved1: [0; 24],
    }
}

fn align_up(x: usize, align: usize) -> usize {
    x.next_multiple_of(align)
}

/// Where each structure sits, as offsets from [`ACPI_TABLES_GPA`].
#[derive(Clone, Copy, Debug)]
struct Layout {
    facs: usize,
    dsdt: usize,
    fadt: usize,
    madt: usize,
    rsdt: usize,
    xsdt: usize,
    end: usize,
}

/// The two tables the RSDT and XSDT list (the DSDT and FACS hang off the FADT).
const ROOT_ENTRIES: usize = 2;
const SDT_HEADER_LEN: usize = size_of::<SdtHeader>();

fn layout(dsdt_len: usize, madt_len: usize) -> Layout {
    let mut end = size_of::<Rsdp>();
    let mut place = |len: usize, align: usize| {
        let at = align_up(end, align);
        end = at + len;
        at
    };
    let facs = place(size_of::<Facs>(), 64);
    let dsdt = place(SDT_HEADER_LEN + dsdt_len, 16);
    let fadt = place(size_of::<Fadt>(), 16);
    let madt = place(madt_len, 16);
    let rsdt = place(SDT_HEADER_LEN + 4 * ROOT_ENTRIES, 16);
    let xsdt = place(SDT_HEADER_LEN + 8 * ROOT_ENTRIES, 16);
    Layout {
        facs,
        dsdt,
        fadt,
        madt,
        rsdt,
        xsdt,
        end,
    }
}

/// Builds the RSDP and the tables: the bytes to place at
/// [`ACPI_TABLES_GPA`], the RSDP at offset 0, every address inside them
/// the guest-physical one of that placement. At most [`ACPI_TABLES_MAX`]
/// bytes (0x414 for one CPU, 8 more for each further CPU).
///
/// Layout: RSDP (0x00), FACS (0x40, 64-byte aligned), DSDT, FADT, MADT,
/// RSDT, XSDT, each 16-byte aligned. The RSDT and XSDT list the FADT and
/// the MADT; the FADT points at the FACS and the DSDT.
///
/// # Panics
///
/// If `config.cpus` is 0 or above 254 (local APIC ID 255 is the broadcast
/// ID; more CPUs need x2APIC entries).
pub fn build(config: &AcpiConfig) -> Vec<u8> {
    assert!(
        (1..=254).contains(&config.cpus),
        "ACPI tables for {} CPUs: 1 to 254 are supported",
        config.cpus
    );
    let madt = madt(config);
    let aml = dsdt_aml();
    let at = layout(aml.len(), madt.len());
    assert!(at.end <= ACPI_TABLES_MAX, "ACPI tables too big");
    let gpa = |offset: usize| ACPI_TABLES_GPA + offset as u64;

    let mut dsdt = header(b"DSDT", 2).as_bytes().to_vec();
    dsdt.extend_from_slice(&aml);
    let dsdt = seal(dsdt);
    let fadt = fadt(gpa(at.facs), gpa(at.dsdt));
    let listed = [gpa(at.fadt), gpa(at.madt)];
    let mut rsdt = header(b"RSDT", 1).as_bytes().to_vec();
    let mut xsdt = header(b"XSDT", 1).as_bytes().to_vec();
    for a in listed {
        let a32 = u32::try_from(a).expect("tables below 4 GiB");
        rsdt.extend_from_slice(&a32.to_le_bytes());
        xsdt.extend_from_slice(&a.to_le_bytes());
    }
    let (rsdt, xsdt) = (seal(rsdt), seal(xsdt));

    let mut rsdp = Rsdp {
        signature: *b"RSD PTR ",
        checksum: 0,
        oem_id: OEM_ID,
        revision: 2,
        rsdt_address: u32::try_from(gpa(at.rsdt)).expect("tables below 4 GiB"),
        length: size_of::<Rsdp>() as u32,
        xsdt_address: gpa(at.xsdt),
        extended_checksum: 0,
        reserved: [0; 3],
    };
    rsdp.checksum = checksum(&rsdp.as_bytes()[..20]);
    rsdp.extended_checksum = checksum(rsdp.as_bytes());

    let mut blob = vec![0u8; at.end];
    let mut put = |offset: usize, bytes: &[u8]| {
        blob[offset..offset + bytes.len()].copy_from_slice(bytes);
    };
    put(0, rsdp.as_bytes());
    put(at.facs, facs().as_bytes());
    put(at.dsdt, &dsdt);
    put(at.fadt, &fadt);
    put(at.madt, &madt);
    put(at.rsdt, &rsdt);
    put(at.xsdt, &xsdt);
    blob
}

#[cfg(test)]
mod tests {
    use super::*;
    use acpi::fadt::Fadt as ParsedFadt;
    use acpi::madt::{Madt, MadtEntry};
    use acpi::{AcpiHandler, AcpiTables, PhysicalMapping};
    use std::ptr::NonNull;
    use std::rc::Rc;

    /// Maps guest-physical addresses into the blob, as if it sat at
    /// ACPI_TABLES_GPA; anything outside it is a test failure.
    #[derive(Clone)]
    struct Blob(Rc<Vec<u8>>);

    impl AcpiHandler for Blob {
        unsafe fn map_physical_region<T>(
            &self,
            phys: usize,
            size: usize,
        ) -> PhysicalMapping<Self, T> {
            let base = ACPI_TABLES_GPA as usize;
            assert!(
                phys >= base && phys + size <= base + self.0.len(),
                "mapping {phys:#x}+{size:#x} outside the tables"
            );
            let ptr = self.0[phys - base..].as_ptr().cast::<T>().cast_mut();
            // SAFETY: the range is inside the blob, which the Rc keeps alive
            // and nobody writes; the acpi crate's table types are packed.
            unsafe {
                PhysicalMapping::new(phys, NonNull::new(ptr).unwrap(), size, size, self.clone())
            }
        }

        fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}
    }

    fn one_cpu() -> Vec<u8> {
        build(&AcpiConfig { cpus: 1 })
    }

    /// Finds the RSDP as an OS does: "RSD PTR " on a 16-byte boundary.
    fn scan_for_rsdp(blob: &[u8]) -> Option<usize> {
        (0..blob.len())
            .step_by(16)
            .find(|&o| blob[o..].starts_with(b"RSD PTR "))
    }

    fn tables(blob: &[u8]) -> AcpiTables<Blob> {
        let at = scan_for_rsdp(blob).expect("RSDP on a 16-byte boundary");
        let handler = Blob(Rc::new(blob.to_vec()));
        // SAFETY: the handler maps only the blob, and checks the ranges.
        unsafe { AcpiTables::from_rsdp(handler, ACPI_TABLES_GPA as usize + at) }.unwrap()
    }

    fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
    }

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |s, x| s.wrapping_add(*x))
    }

    /// The table at `gpa` in the blob, by its header's length.
    fn table_at(blob: &[u8], gpa: u64) -> &[u8] {
        let o = (gpa - ACPI_TABLES_GPA) as usize;
        let len = u32_at(blob, o + 4) as usize;
        &blob[o..o + len]
    }

    #[test]
    fn the_rsdp_is_found_by_scanning_and_both_checksums_hold() {
        let blob = one_cpu();
        assert_eq!(scan_for_rsdp(&blob), Some(0));
        assert!(blob.len() <= ACPI_TABLES_MAX);
        assert!(ACPI_TABLES_GPA + blob.len() as u64 <= 0x10_0000);
        assert_eq!(sum(&blob[..20]), 0);
        assert_eq!(sum(&blob[..36]), 0);
        assert_eq!(blob[15], 2, "revision 2");
        assert_eq!(&blob[9..15], b"SPLTVR");
        assert_eq!(u32_at(&blob, 20), 36);
        assert_eq!(tables(&blob).revision(), 2);
    }

    #[test]
    fn every_table_sums_to_zero_and_the_rsdt_and_xsdt_agree() {
        let blob = one_cpu();
        let rsdt = table_at(&blob, u64::from(u32_at(&blob, 16)));
        let xsdt = table_at(&blob, u64_at(&blob, 24));
        assert_eq!(&rsdt[..4], b"RSDT");
        assert_eq!(&xsdt[..4], b"XSDT");
        let rsdt_entries: Vec<u64> = rsdt[36..]
            .chunks(4)
            .map(|c| u64::from(u32_at(c, 0)))
            .collect();
        let xsdt_entries: Vec<u64> = xsdt[36..].chunks(8).map(|c| u64_at(c, 0)).collect();
        assert_eq!(rsdt_entries, xsdt_entries);
        let mut seen = Vec::new();
        for t in [rsdt, xsdt]
            .into_iter()
            .chain(xsdt_entries.iter().map(|&a| table_at(&blob, a)))
        {
            assert_eq!(sum(t), 0, "{}", String::from_utf8_lossy(&t[..4]));
            assert_eq!(&t[10..16], b"SPLTVR");
            seen.push(t[..4].to_vec());
        }
        assert_eq!(seen, [b"RSDT", b"XSDT", b"FACP", b"APIC"]);
        let fadt = table_at(&blob, xsdt_entries[0]);
        assert_eq!(fadt.len(), 276);
        assert_eq!(fadt[8], 6, "FADT revision");
        assert_eq!(fadt[131], 5, "FADT minor version");
        let dsdt_gpa = u64::from(u32_at(fadt, 40));
        assert_eq!(u64_at(fadt, 140), dsdt_gpa, "DSDT and X_DSDT agree");
        let dsdt = table_at(&blob, dsdt_gpa);
        assert_eq!(&dsdt[..4], b"DSDT");
        assert_eq!(sum(dsdt), 0);
        // The FACS: 64 bytes, 64-byte aligned, no checksum.
        let facs_gpa = u64::from(u32_at(fadt, 36));
        assert_eq!(facs_gpa % 64, 0);
        assert_eq!(
            u64_at(fadt, 132),
            0,
            "X_FIRMWARE_CTRL zero beside FIRMWARE_CTRL"
        );
        let facs = &blob[(facs_gpa - ACPI_TABLES_GPA) as usize..][..64];
        assert_eq!(&facs[..4], b"FACS");
        assert_eq!(u32_at(facs, 4), 64);
    }

    #[test]
    fn the_madt_describes_one_cpu_the_ioapic_and_the_overrides() {
        let blob = one_cpu();
        let tables = tables(&blob);
        let madt = tables.find_table::<Madt>().unwrap();
        assert_eq!({ madt.get().local_apic_address }, LOCAL_APIC_ADDRESS);
        assert!(madt.get().supports_8259());
        let (mut cpus, mut ioapics, mut overrides, mut nmis) = (vec![], vec![], vec![], vec![]);
        for entry in madt.get().entries() {
            match entry {
                MadtEntry::LocalApic(e) => cpus.push((e.processor_id, e.apic_id, { e.flags })),
                MadtEntry::IoApic(e) => ioapics.push((e.io_apic_id, { e.io_apic_address }, {
                    e.global_system_interrupt_base
                })),
                MadtEntry::InterruptSourceOverride(e) => {
                    overrides.push((e.bus, e.irq, { e.global_system_interrupt }, { e.flags }))
                }
                MadtEntry::LocalApicNmi(e) => nmis.push((e.processor_id, { e.flags }, e.nmi_line)),
                other => panic!("unexpected MADT entry {other:?}"),
            }
        }
        assert_eq!(cpus, [(0, 0, 1)], "one enabled processor, APIC ID 0");
        assert_eq!(ioapics, [(IOAPIC_ID, 0xFEC0_0000, 0)]);
        assert_eq!(overrides, [(0, 0, 2, 0), (0, 9, 9, 0x000D)]);
        // 0x000D: trigger mode bits 3-2 = 0b11 level, polarity bits 1-0 = 0b01 high.
        assert_eq!(overrides[1].3 >> 2 & 3, 3, "IRQ 9 level-triggered");
        assert_eq!(overrides[1].3 & 3, 1, "IRQ 9 active high");
        assert_eq!(nmis, [(0xFF, 0, 1)], "NMI on LINT1 of every processor");
    }

    #[test]
    fn more_cpus_get_one_local_apic_entry_each() {
        let blob = build(&AcpiConfig { cpus: 4 });
        let tables = tables(&blob);
        let madt = tables.find_table::<Madt>().unwrap();
        let ids: Vec<u8> = madt
            .get()
            .entries()
            .filter_map(|e| match e {
                MadtEntry::LocalApic(e) => Some(e.apic_id),
                _ => None,
            })
            .collect();
        assert_eq!(ids, [0, 1, 2, 3]);
    }

    #[test]
    fn the_fadt_gives_the_pm_block_the_sci_and_the_reset_register() {
        use acpi::address::AddressSpace;
        let blob = one_cpu();
        let tables = tables(&blob);
        let fadt = tables.find_table::<ParsedFadt>().unwrap();
        let timer = fadt.pm_timer_block().unwrap().expect("a PM timer");
        assert_eq!(timer.address_space, AddressSpace::SystemIo);
        assert_eq!(timer.address, 0x608);
        assert_eq!(timer.bit_width, 32);
        assert!(
            !{ fadt.flags }.pm_timer_is_32_bit(),
            "24-bit timer: TMR_VAL_EXT clear"
        );
        let evt = fadt.pm1a_event_block().unwrap();
        assert_eq!((evt.address, evt.bit_width), (0x600, 32));
        assert_eq!(evt.address_space, AddressSpace::SystemIo);
        let cnt = fadt.pm1a_control_block().unwrap();
        assert_eq!((cnt.address, cnt.bit_width), (0x604, 16));
        assert!(fadt.pm1b_event_block().unwrap().is_none());
        assert!(fadt.pm1b_control_block().unwrap().is_none());
        assert!(fadt.gpe0_block().unwrap().is_none());
        assert_eq!({ fadt.sci_interrupt }, 9);
        assert_eq!({ fadt.smi_cmd_port }, 0, "no SMI_CMD: always in ACPI mode");
        assert!({ fadt.flags }.supports_system_reset_via_fadt());
        let reset = fadt.reset_register().unwrap();
        assert_eq!(reset.address_space, AddressSpace::SystemIo);
        assert_eq!((reset.address, reset.bit_width), (0xCF9, 8));
        assert_eq!(fadt.reset_value, 0x06);
        assert!(!{ fadt.flags }.system_is_hw_reduced_acpi());
        assert!({ fadt.flags }.power_button_is_control_method());
        assert!({ fadt.iapc_boot_arch }.legacy_devices_are_accessible());
        assert!({ fadt.iapc_boot_arch }.motherboard_implements_8042());
        let facs = fadt.facs_address().unwrap();
        assert_eq!(facs, ACPI_TABLES_GPA as usize + 0x40);
        assert_eq!(facs % 64, 0);
    }

    fn dsdt_of(blob: &[u8]) -> &[u8] {
        let d = tables(blob).dsdt().unwrap();
        let o = d.address - ACPI_TABLES_GPA as usize;
        &blob[o..o + d.length as usize]
    }

    #[test]
    fn the_dsdt_holds_s5() {
        let blob = one_cpu();
        let aml = dsdt_of(&blob);
        assert_eq!(aml, dsdt_aml());
        assert!(aml.windows(4).any(|w| w == b"_S5_"));
        // Name(_S5_, Package, 4 elements, the first (SLP_TYPa) Zero.
        assert_eq!(aml[..S5_AML.len()], S5_AML);
        assert_eq!(aml[0], 0x08);
        assert_eq!(aml[5], 0x12);
        assert_eq!(
            aml[6] as usize,
            S5_AML.len() - 6,
            "PkgLength covers the package"
        );
        assert_eq!(aml[8], S5_SLP_TYP, "ZeroOp is the value 0");
    }

    #[test]
    fn the_dsdt_has_a_pci_root_bridge_with_its_windows_and_links() {
        let aml = dsdt_aml();
        let scope = &aml[S5_AML.len()..];
        assert_eq!(scope[0], 0x10, "ScopeOp");
        // Two-byte PkgLength (the scope is over 63 bytes) covering the rest.
        assert_eq!(scope[1] >> 6, 1);
        let len = usize::from(scope[1] & 0xf) | usize::from(scope[2]) << 4;
        assert_eq!(len, scope.len() - 1, "the scope's PkgLength");
        assert_eq!(&scope[3..8], b"\\_SB_");
        let has = |b: &[u8]| aml.windows(b.len()).any(|w| w == b);
        // Device(PCI0) with _HID EisaId("PNP0A03") as a DWordConst.
        assert!(has(&[0x5b, 0x82]));
        assert!(has(b"PCI0"));
        assert!(has(&[b'_', b'H', b'I', b'D', 0x0c, 0x41, 0xd0, 0x0a, 0x03]));
        // The MMIO window: min 0xFE000000, max 0xFEAFFFFF, length 0xB00000.
        let mut window = 0xfe00_0000u32.to_le_bytes().to_vec();
        window.extend(0xfeaf_ffffu32.to_le_bytes());
        window.extend(0u32.to_le_bytes());
        window.extend(0xb0_0000u32.to_le_bytes());
        assert!(has(&window));
        // Bus 0 only: min 0, max 0, translation 0, length 1.
        assert!(has(&[
            0x88, 13, 0, 2, 0x0c, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0
        ]));
        for &(dev, gsi) in PCI_SLOTS {
            // _PRT entry: Package(4) { 0x00ddFFFF, Zero, LNKd, Zero }.
            let link = [b'L', b'N', b'K', b'0' + dev];
            let entry = [&[0x12, 13, 4, 0x0c, 0xff, 0xff, dev, 0, 0][..], &link, &[0]].concat();
            assert!(has(&entry), "the _PRT entry of slot {dev}");
            // The link's Interrupt descriptor: consumer, level, active high.
            assert!(has(&[0x89, 6, 0, 1, 1, gsi, 0, 0, 0]));
        }
    }

    /// iasl (acpica-tools, `scripts/install-deps`) disassembles the DSDT
    /// without errors and finds what the AML should say.
    #[test]
    fn iasl_disassembles_the_dsdt() {
        let dir = std::env::temp_dir().join(format!("splitvisor-dsdt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let blob = one_cpu();
        // The whole table, header and all: iasl checks the signature.
        let body = tables(&blob).dsdt().unwrap();
        let dsdt = table_at(&blob, (body.address - SDT_HEADER_LEN) as u64);
        std::fs::write(dir.join("dsdt.dat"), dsdt).unwrap();
        let out = match std::process::Command::new("iasl")
            .args(["-d", "dsdt.dat"])
            .current_dir(&dir)
            .output()
        {
            Ok(out) => out,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                eprintln!("iasl is not installed (acpica-tools): not disassembling");
                return;
            }
            Err(e) => panic!("iasl: {e}"),
        };
        let log = String::from_utf8_lossy(&[out.stdout, out.stderr].concat()).into_owned();
        let dsl = std::fs::read_to_string(dir.join("dsdt.dsl")).unwrap_or_default();
        std::fs::remove_dir_all(&dir).ok();
        assert!(out.status.success(), "iasl -d failed:\n{log}");
        assert!(!log.contains("Error"), "{log}");
        for want in [
            "Name (_S5, Package (0x04)",
            "Device (PCI0)",
            "Name (_HID, EisaId (\"PNP0A03\")",
            "WordBusNumber (ResourceProducer, MinFixed, MaxFixed, PosDecode,",
            "IO (Decode16,",
            "0xFEAFFFFF,",
            "Package (0x04)",
            "LNK3,",
            "Device (LNK4)",
            "Name (_HID, EisaId (\"PNP0C0F\")",
            "Interrupt (ResourceConsumer, Level, ActiveHigh, Exclusive, ,, )",
            "Method (_SRS, 1, NotSerialized)",
        ] {
            assert!(dsl.contains(want), "no {want:?} in\n{dsl}");
        }
    }

    #[test]
    fn the_rsdt_serves_acpi_1_readers() {
        let blob = one_cpu();
        let rsdt = u32_at(&blob, 16) as usize;
        let handler = Blob(Rc::new(blob));
        // SAFETY: the handler maps only the blob, and checks the ranges.
        let tables = unsafe { AcpiTables::from_rsdt(handler, 0, rsdt) }.unwrap();
        let madt = tables.find_table::<Madt>().unwrap();
        assert_eq!(madt.get().entries().count(), 5);
        let fadt = tables.find_table::<ParsedFadt>().unwrap();
        assert_eq!(fadt.pm_timer_block().unwrap().unwrap().address, 0x608);
        assert_eq!(tables.headers().count(), 2);
    }

    #[test]
    fn the_blob_is_small_and_stays_below_one_mib_for_every_cpu_count() {
        assert_eq!(one_cpu().len(), 0x414);
        for cpus in [1, 2, 254] {
            let blob = build(&AcpiConfig { cpus });
            assert!(blob.len() <= ACPI_TABLES_MAX);
            assert_eq!(scan_for_rsdp(&blob), Some(0));
        }
    }

    #[test]
    #[should_panic(expected = "1 to 254")]
    fn no_cpus_is_refused() {
        build(&AcpiConfig { cpus: 0 });
    }
}
