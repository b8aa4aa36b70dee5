//! The boards as tables: which devices a board has, the port or MMIO
//! ranges each decodes and the ISA line it drives. The routers are built
//! from the table ([`Devices::routers`]), the devices take their lines from
//! it, and the interrupt controllers follow the board ([`irqchip`]); the
//! native vmm-server and the seL4 root task build the same machine from it.
//!
//! A new device is one [`Slot`], one field of [`Devices`] and one row per
//! board that has it. The interrupt controllers' own ranges are not in the
//! tables: the exit handler gives the 8259s' ports
//! ([`crate::devices::pic::RANGES`]) and the APICs' pages to
//! [`IrqChip`] itself.

use ipc_proto::manifest::Board as Kind;

use crate::board::{Board, IrqPin};
use crate::devices::acpi_pm::{self, AcpiPm, ResetControl};
use crate::devices::debug_exit::{self, DebugExit};
use crate::devices::fw_cfg::{self, FwCfg};
use crate::devices::i8042::{self, I8042};
use crate::devices::ioapic::IoApic;
use crate::devices::lapic::LocalApic;
use crate::devices::pci::{self, PciBus, PciHole, PciHost};
use crate::devices::pit::{self, Pit};
use crate::devices::port92::{self, SystemControlA};
use crate::devices::post::{self, PostCode};
use crate::devices::rtc::{self, Rtc};
use crate::devices::uart16550;
use crate::devices::PortDevice;
use crate::irqchip::IrqChip;
use crate::mmio::{MmioDevice, MmioError, MmioRouter, ScratchRegisters};
use crate::router::{Router, RouterError};

/// Where the page of scratch registers sits (the `mmio` test guest's
/// target): a hole in the PC's MMIO map, below the I/O APIC.
pub const SCRATCH_BASE: u64 = 0xfeb0_0000;

/// A port device of the PC family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    /// COM1, a 16550 (local, or the uart-server's: the caller's choice).
    Com1,
    /// The 8254 timer and port B.
    Pit,
    /// The CMOS RTC.
    Rtc,
    /// The i8042 keyboard controller.
    I8042,
    /// The POST code port.
    Post,
    /// System control port A (fast reset, A20).
    Port92,
    /// The debug-exit port the test guests end with.
    DebugExit,
    /// PCI configuration mechanism #1 and the host bridge.
    PciHost,
    /// The ACPI PM registers (PM timer, SCI, S5).
    AcpiPm,
    /// The reset control register at 0xCF9.
    ResetControl,
    /// QEMU's firmware configuration interface.
    FwCfg,
    /// A page of scratch registers (MMIO), which the `mmio` test guest
    /// reads and writes.
    Scratch,
    /// The PCI MMIO window, where the PCI functions' BARs are
    /// ([`pci::PciHole`]).
    PciHole,
}

/// What a device decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decode {
    /// These `(base, len)` port ranges; the device sees offsets from the
    /// first range's base.
    Ports(&'static [(u16, u16)]),
    /// `[base, base + len)` of guest-physical memory outside RAM.
    Mmio {
        /// The first address.
        base: u64,
        /// Bytes.
        len: u64,
    },
}

/// One row of a board's table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Row {
    /// The device.
    pub slot: Slot,
    /// The ranges it decodes.
    pub decode: Decode,
    /// The ISA line it drives, if any.
    pub irq: Option<u8>,
}

const fn row(slot: Slot, ports: &'static [(u16, u16)], irq: Option<u8>) -> Row {
    Row {
        slot,
        decode: Decode::Ports(ports),
        irq,
    }
}

const SCRATCH: Row = Row {
    slot: Slot::Scratch,
    decode: Decode::Mmio {
        base: SCRATCH_BASE,
        len: 0x1000,
    },
    irq: None,
};

/// The ISA board of the first KVM: 8254, RTC, 16550, i8042 and the PCI
/// configuration ports (an empty bus behind a host bridge).
pub const ISA: &[Row] = &[
    row(
        Slot::Com1,
        &[(uart16550::COM1_BASE, uart16550::LEN)],
        Some(4),
    ),
    row(Slot::Pit, &pit::RANGES, Some(0)),
    row(Slot::Rtc, &[(rtc::BASE, rtc::LEN)], Some(8)),
    row(Slot::I8042, &i8042::RANGES, Some(1)),
    row(Slot::Post, &[(post::PORT, post::LEN)], None),
    row(Slot::Port92, &[(port92::PORT, port92::LEN)], None),
    row(
        Slot::DebugExit,
        &[(debug_exit::PORT, debug_exit::LEN)],
        None,
    ),
    row(Slot::PciHost, &[(pci::BASE, pci::LEN)], None),
    SCRATCH,
];

/// The PC board: the ISA board's devices, with the byte at 0xCF9 the
/// reset control register (as on the PIIX; 32-bit CONFIG_ADDRESS at 0xCF8
/// still reaches the PCI host), plus ACPI and fw_cfg.
pub const PC: &[Row] = &[
    row(
        Slot::Com1,
        &[(uart16550::COM1_BASE, uart16550::LEN)],
        Some(4),
    ),
    row(Slot::Pit, &pit::RANGES, Some(0)),
    row(Slot::Rtc, &[(rtc::BASE, rtc::LEN)], Some(8)),
    row(Slot::I8042, &i8042::RANGES, Some(1)),
    row(Slot::Post, &[(post::PORT, post::LEN)], None),
    row(Slot::Port92, &[(port92::PORT, port92::LEN)], None),
    row(
        Slot::DebugExit,
        &[(debug_exit::PORT, debug_exit::LEN)],
        None,
    ),
    row(
        Slot::PciHost,
        &[(pci::BASE, 1), (pci::BASE + 2, pci::LEN - 2)],
        None,
    ),
    row(
        Slot::AcpiPm,
        &[(acpi_pm::PM_BASE, acpi_pm::LEN)],
        Some(acpi_pm::SCI_IRQ),
    ),
    row(
        Slot::ResetControl,
        &[(acpi_pm::RESET_PORT, acpi_pm::RESET_LEN)],
        None,
    ),
    row(Slot::FwCfg, &[(fw_cfg::BASE, fw_cfg::LEN)], None),
    SCRATCH,
    PCI_HOLE,
];

const PCI_HOLE: Row = Row {
    slot: Slot::PciHole,
    decode: Decode::Mmio {
        base: pci::MMIO_WINDOW_BASE,
        len: pci::MMIO_WINDOW_LEN,
    },
    irq: None,
};

/// The PC board's PCI functions besides the host bridge: device number
/// (on bus 0, function 0) and INTx line of each, in the order the
/// vmm-server puts them on the bus (lines 10, 11 and 5: free ISA lines, as
/// QEMU's PIIX interrupt links use). The ISA board has none. The DSDT's
/// `_PRT` routes each slot's INTA# to its line (`images::acpi::PCI_SLOTS`).
pub const PC_PCI_SLOTS: &[(u8, u8)] = &[(3, 10), (4, 11), (5, 5)];

/// The table of `kind`.
pub fn table(kind: Kind) -> &'static [Row] {
    match kind {
        Kind::Isa => ISA,
        Kind::Pc => PC,
    }
}

/// The board of a `BootInfo::board` value: the PC board for 1, else ISA.
pub fn kind_of(raw: u64) -> Kind {
    if raw == Kind::Pc as u64 {
        Kind::Pc
    } else {
        Kind::Isa
    }
}

/// The interrupt controllers of `kind`.
pub fn irqchip(kind: Kind, board: &Board) -> IrqChip<'_> {
    match kind {
        Kind::Isa => IrqChip::isa(),
        Kind::Pc => IrqChip::pc(LocalApic::new(&board.clock), IoApic::new()),
    }
}

/// The pin of `slot`'s line in `table` (a pin that does nothing when the
/// row names none or the board has no such device).
pub fn pin<'b>(board: &'b Board, table: &[Row], slot: Slot) -> IrqPin<'b> {
    let irq = table.iter().find(|r| r.slot == slot).and_then(|r| r.irq);
    board.irq.pin(irq.unwrap_or(u8::MAX))
}

/// Why the routers could not be built from a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WiringError {
    /// A port range (or a device named twice, or an MMIO device on ports:
    /// `RouterError::Full`).
    Ports(RouterError),
    /// An MMIO range (or a port device on MMIO: `MmioError::Full`).
    Mmio(MmioError),
}

impl From<RouterError> for WiringError {
    fn from(e: RouterError) -> Self {
        Self::Ports(e)
    }
}

impl From<MmioError> for WiringError {
    fn from(e: MmioError) -> Self {
        Self::Mmio(e)
    }
}

impl core::fmt::Display for WiringError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Ports(e) => e.fmt(f),
            Self::Mmio(e) => e.fmt(f),
        }
    }
}

/// The board's devices but COM1, which the caller makes (a local 16550
/// or the uart-server's), with the lines the table gives them.
pub struct Devices<'b> {
    /// The 8254.
    pub pit: Pit<'b>,
    /// The CMOS RTC.
    pub rtc: Rtc<'b>,
    /// The keyboard controller.
    pub i8042: I8042<'b>,
    /// The POST code port.
    pub post: PostCode,
    /// Port 0x92.
    pub port92: SystemControlA,
    /// The debug-exit port.
    pub debug_exit: DebugExit,
    /// The PCI host bridge (and the bus behind it, [`Devices::with_pci_bus`]).
    pub pci: PciHost<'b, 'b>,
    /// The PCI MMIO window.
    pub pci_hole: PciHole<'b, 'b>,
    /// The ACPI PM registers.
    pub acpi: AcpiPm<'b>,
    /// The reset control register.
    pub reset: ResetControl,
    /// fw_cfg.
    pub fw_cfg: FwCfg,
    /// The scratch page.
    pub scratch: ScratchRegisters,
}

impl<'b> Devices<'b> {
    /// The devices of `table` on `board`, for a guest with `ram_bytes` of
    /// RAM whose RTC starts at `rtc_epoch` (Unix seconds).
    pub fn new(board: &'b Board, table: &[Row], ram_bytes: u64, rtc_epoch: i64) -> Self {
        let line = |slot| Some(pin(board, table, slot));
        let mut rtc = Rtc::new(&board.clock, line(Slot::Rtc), rtc_epoch);
        rtc.set_memory_size(ram_bytes);
        Self {
            pit: Pit::new(&board.clock, line(Slot::Pit)),
            rtc,
            i8042: I8042::new(line(Slot::I8042)),
            post: PostCode::new(),
            port92: SystemControlA::new(),
            debug_exit: DebugExit::new(),
            pci: PciHost::new(),
            pci_hole: PciHole::default(),
            acpi: AcpiPm::new(&board.clock, line(Slot::AcpiPm)),
            reset: ResetControl::new(),
            fw_cfg: FwCfg::new(ram_bytes, 1),
            scratch: ScratchRegisters::default(),
        }
    }

    /// The same devices with `bus`'s functions behind the PCI host and its
    /// window (on a board whose table has [`Slot::PciHole`]).
    pub fn with_pci_bus(mut self, bus: &'b PciBus<'b>) -> Self {
        self.pci = self.pci.with_bus(bus);
        self.pci_hole = PciHole::new(bus);
        self
    }

    /// The port and MMIO routers of `table`: each row's ranges to its
    /// device, in the table's order; `com1` is COM1.
    pub fn routers<'r>(
        &'r mut self,
        table: &[Row],
        com1: &'r mut dyn PortDevice,
    ) -> Result<(Router<'r>, MmioRouter<'r>), WiringError> {
        let Self {
            pit,
            rtc,
            i8042,
            post,
            port92,
            debug_exit,
            pci,
            pci_hole,
            acpi,
            reset,
            fw_cfg,
            scratch,
        } = self;
        // Each device can be lent once: a second row of it finds `None`.
        let mut com1 = Some(com1);
        let mut pit = Some(pit);
        let mut rtc = Some(rtc);
        let mut i8042 = Some(i8042);
        let mut post = Some(post);
        let mut port92 = Some(port92);
        let mut debug_exit = Some(debug_exit);
        let mut pci = Some(pci);
        let mut acpi = Some(acpi);
        let mut reset = Some(reset);
        let mut fw_cfg = Some(fw_cfg);
        let mut scratch = Some(scratch);
        let mut pci_hole = Some(pci_hole);
        let mut ports = Router::new();
        let mut mmio = MmioRouter::new();
        for r in table {
            match r.decode {
                Decode::Ports(ranges) => {
                    let device: Option<&'r mut dyn PortDevice> = match r.slot {
                        Slot::Com1 => com1.take(),
                        Slot::Pit => pit.take().map(|d| d as _),
                        Slot::Rtc => rtc.take().map(|d| d as _),
                        Slot::I8042 => i8042.take().map(|d| d as _),
                        Slot::Post => post.take().map(|d| d as _),
                        Slot::Port92 => port92.take().map(|d| d as _),
                        Slot::DebugExit => debug_exit.take().map(|d| d as _),
                        Slot::PciHost => pci.take().map(|d| d as _),
                        Slot::AcpiPm => acpi.take().map(|d| d as _),
                        Slot::ResetControl => reset.take().map(|d| d as _),
                        Slot::FwCfg => fw_cfg.take().map(|d| d as _),
                        Slot::Scratch | Slot::PciHole => None,
                    };
                    ports.register_ranges(ranges, device.ok_or(RouterError::Full)?)?;
                }
                Decode::Mmio { base, len } => {
                    let device: Option<&'r mut dyn MmioDevice> = match r.slot {
                        Slot::Scratch => scratch.take().map(|d| d as _),
                        Slot::PciHole => pci_hole.take().map(|d| d as _),
                        _ => None,
                    };
                    mmio.register(base, len, device.ok_or(MmioError::Full)?)?;
                }
            }
        }
        Ok((ports, mmio))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::IoSize;

    struct Nothing;
    impl PortDevice for Nothing {
        fn read(&mut self, _offset: u16, _size: IoSize) -> u32 {
            0x55
        }
        fn write(&mut self, _: u16, _: IoSize, _: u32) -> crate::WriteOutcome {
            crate::WriteOutcome::Continue
        }
    }

    #[test]
    fn each_board_builds_its_router() {
        for (kind, acpi) in [(Kind::Isa, false), (Kind::Pc, true)] {
            let board = Board::new();
            let t = table(kind);
            let mut devices = Devices::new(&board, t, 1 << 20, 0);
            let mut com1 = Nothing;
            let (router, mut mmio) = devices.routers(t, &mut com1).unwrap();
            mmio.write(SCRATCH_BASE + 8, 1, 0x5a);
            assert_eq!(mmio.read(SCRATCH_BASE + 8, 1), 0x5a, "the scratch page");
            assert!(router.claims(uart16550::COM1_BASE));
            assert!(router.claims(0x40) && router.claims(0x61) && router.claims(0xcf8));
            assert_eq!(router.claims(acpi_pm::PM_BASE), acpi, "{kind:?}");
            assert_eq!(router.claims(fw_cfg::BASE), acpi, "{kind:?}");
            // 0xCF9: the reset control on the PC board, the PCI host's on ISA.
            assert!(router.claims(acpi_pm::RESET_PORT));
        }
    }

    #[test]
    fn lines_come_from_the_table() {
        let board = Board::new();
        assert_eq!(pin(&board, PC, Slot::AcpiPm).irq(), acpi_pm::SCI_IRQ);
        assert_eq!(pin(&board, PC, Slot::Com1).irq(), 4);
        assert_eq!(
            pin(&board, ISA, Slot::AcpiPm).irq(),
            u8::MAX,
            "no such device"
        );
    }

    /// The DSDT (built by the image builder) describes this board's PCI
    /// slots, their lines and the MMIO window as they are here.
    #[test]
    fn the_dsdt_describes_the_pc_boards_pci_slots_and_window() {
        assert_eq!(images::acpi::PCI_SLOTS, PC_PCI_SLOTS);
        let (base, len) = images::acpi::PCI_MMIO_WINDOW;
        assert_eq!(u64::from(base), pci::MMIO_WINDOW_BASE);
        assert_eq!(u64::from(len), pci::MMIO_WINDOW_LEN);
        assert_eq!(images::acpi::PCI_CONFIG_PORTS, (pci::BASE, pci::LEN as u8));
        assert!(PC.iter().any(|r| r.decode
            == Decode::Mmio {
                base: pci::MMIO_WINDOW_BASE,
                len: pci::MMIO_WINDOW_LEN
            }));
    }

    #[test]
    fn a_device_named_twice_is_refused() {
        let board = Board::new();
        let twice = [ISA[1], row(Slot::Pit, &[(0x1000, 1)], None)];
        let mut devices = Devices::new(&board, &twice, 1 << 20, 0);
        let mut com1 = Nothing;
        assert!(matches!(
            devices.routers(&twice, &mut com1),
            Err(WiringError::Ports(RouterError::Full))
        ));
    }
}
