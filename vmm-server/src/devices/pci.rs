//! PCI configuration mechanism #1 (ports 0xCF8-0xCFF): a host bridge at
//! 00:00.0 (the i440FX's IDs, as QEMU's `pc` machine shows them), so that
//! an operating system finds a working PCI bus, and the functions of a
//! [`PciBus`] at the slots it names (virtio functions at 00:03.0, 00:04.0,
//! ...), with their memory BARs in the PCI MMIO window ([`PciHole`]).
//! Linux accepts mechanism #1 only after a "sanity check" finds a host
//! bridge (class 0x0600) on bus 0; without one it says `PCI: Fatal: No
//! config space access function found`.
//!
//! - 0xCF8, 32-bit: CONFIG_ADDRESS (enable bit 31, bus, device, function,
//!   register), read back as written. Narrower accesses to 0xCF8-0xCFB
//!   read all ones and are ignored (so the mechanism #2 probe fails, and
//!   the reset-control byte at 0xCF9 does nothing).
//! - 0xCFC-0xCFF: CONFIG_DATA, any size: the host bridge's configuration
//!   space (read-only) when the address is enabled and names 00:00.0, a
//!   bus function's when it names that function; all ones (no device)
//!   otherwise.
//!
//! There is no firmware: [`PciBus::assign`] does at board reset what
//! SeaBIOS would, through each function's own configuration space (it
//! sizes every BAR, places the memory BARs in the window
//! [`MMIO_WINDOW_BASE`]..+[`MMIO_WINDOW_LEN`], naturally aligned, turns on
//! memory decoding and bus mastering, and writes the interrupt line
//! register). Linux finds the bus through the DSDT's root bridge
//! (`\_SB.PCI0`, `images/src/acpi.rs`, whose `_CRS` gives this window) and
//! keeps assigned BARs that conflict with nothing
//! (`pcibios_resource_survey`); the e820 map names RAM only below the
//! guest's RAM size, so the window is free. The guest may move a BAR:
//! the bus watches every configuration write that touches the command
//! register or a BAR and re-reads them, and [`PciHole`], which the board
//! routes the whole window to, decodes an access by the BARs as they are
//! now.

use core::cell::RefCell;

use super::{IoSize, PortDevice, WriteOutcome};
use crate::board::Nanos;
use crate::mmio::MmioDevice;

/// The first port.
pub const BASE: u16 = 0xcf8;
/// Ports decoded.
pub const LEN: u16 = 8;

/// Where the PCI MMIO window starts: below the scratch page, the I/O APIC
/// and the local APIC, above any RAM this VMM gives a guest (RAM ends
/// below 3 GiB).
pub const MMIO_WINDOW_BASE: u64 = 0xfe00_0000;
/// Bytes in the window (up to the scratch page at 0xFEB00000).
pub const MMIO_WINDOW_LEN: u64 = 0xb0_0000;
/// Most functions on the bus.
pub const MAX_FUNCTIONS: usize = 4;

const ENABLE: u32 = 1 << 31;
/// The command register's memory space enable and bus master bits.
const COMMAND_MEMORY: u16 = 1 << 1;
const COMMAND_BUS_MASTER: u16 = 1 << 2;
/// Configuration registers.
const COMMAND: u16 = 0x04;
const BAR0: u16 = 0x10;
const INTERRUPT_LINE: u16 = 0x3c;

/// A PCI function behind the bus: its configuration space and its BARs.
/// Offsets count from the start of configuration space or of the BAR.
pub trait PciFunction {
    /// Reads `size` (1, 2, 4) bytes of configuration space at `offset`.
    fn config_read(&mut self, offset: u16, size: u8) -> u32;
    /// Writes the low `size` bytes of `value` at `offset` of configuration
    /// space.
    fn config_write(&mut self, offset: u16, size: u8, value: u32);
    /// Reads `size` (1, 2, 4, 8) bytes at `offset` of BAR `bar`.
    fn bar_read(&mut self, bar: u8, offset: u64, size: u8) -> u64;
    /// Writes the low `size` bytes of `value` at `offset` of BAR `bar`.
    fn bar_write(&mut self, bar: u8, offset: u64, size: u8, value: u64);
    /// Lets the function catch up (take host input); the exit handler
    /// calls it after exits.
    fn poll(&mut self) {}
    /// The vmm-server's notification word: a function whose server
    /// signalled fetches what it has (its interrupts).
    fn notified(&mut self, _word: u32) {}
    /// Whether the function works on something the guest asked for and
    /// will notify when done (the guest's HLT should not skip time then).
    fn busy(&self) -> bool {
        false
    }
}

impl<F: PciFunction + ?Sized> PciFunction for &mut F {
    fn config_read(&mut self, offset: u16, size: u8) -> u32 {
        (**self).config_read(offset, size)
    }
    fn config_write(&mut self, offset: u16, size: u8, value: u32) {
        (**self).config_write(offset, size, value)
    }
    fn bar_read(&mut self, bar: u8, offset: u64, size: u8) -> u64 {
        (**self).bar_read(bar, offset, size)
    }
    fn bar_write(&mut self, bar: u8, offset: u64, size: u8, value: u64) {
        (**self).bar_write(bar, offset, size, value)
    }
    fn poll(&mut self) {
        (**self).poll()
    }
    fn notified(&mut self, word: u32) {
        (**self).notified(word)
    }
    fn busy(&self) -> bool {
        (**self).busy()
    }
}

/// One memory BAR as the bus knows it: the size found at assignment, the
/// base the function's register holds now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct MemBar {
    size: u64,
    base: u64,
    wide: bool,
}

/// The functions, packed at the front.
struct Slots<'f> {
    s: [Option<Slot<'f>>; MAX_FUNCTIONS],
    len: usize,
}

impl<'f> Slots<'f> {
    fn iter<'a>(&'a self) -> impl Iterator<Item = &'a Slot<'f>> + 'a {
        self.s[..self.len].iter().flatten()
    }

    fn iter_mut<'a>(&'a mut self) -> impl Iterator<Item = &'a mut Slot<'f>> + 'a {
        self.s[..self.len].iter_mut().flatten()
    }

    fn push(&mut self, slot: Slot<'f>) -> Result<(), BusError> {
        match self.s.get_mut(self.len) {
            Some(free) => {
                *free = Some(slot);
                self.len += 1;
                Ok(())
            }
            None => Err(BusError::Full),
        }
    }
}

struct Slot<'f> {
    device: u8,
    function: u8,
    irq: u8,
    f: &'f mut dyn PciFunction,
    bars: [MemBar; 6],
    memory: bool,
    /// The board's assignment is done (or given up: the window is full).
    assigned: bool,
}

impl Slot<'_> {
    /// Re-reads the command register and the memory BARs' bases.
    fn refresh(&mut self) {
        self.memory = self.f.config_read(COMMAND, 2) as u16 & COMMAND_MEMORY != 0;
        for i in 0..6u8 {
            let b = self.bars[usize::from(i)];
            if b.size == 0 {
                continue;
            }
            let reg = BAR0 + 4 * u16::from(i);
            let low = u64::from(self.f.config_read(reg, 4) & !0xf);
            let high = if b.wide {
                u64::from(self.f.config_read(reg + 4, 4)) << 32
            } else {
                0
            };
            self.bars[usize::from(i)].base = high | low;
        }
    }

    fn decode(&self, gpa: u64) -> Option<(u8, u64)> {
        if !self.memory {
            return None;
        }
        self.bars.iter().enumerate().find_map(|(i, b)| {
            let off = gpa.checked_sub(b.base)?;
            (b.size != 0 && b.base != 0 && off < b.size).then_some((i as u8, off))
        })
    }
}

/// Why a function could not join the bus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BusError {
    /// The bus holds [`MAX_FUNCTIONS`] already.
    Full,
    /// 00:00.0 (the host bridge), a device above 31 or a function above
    /// 7, or a slot taken.
    BadSlot,
    /// The memory BARs do not fit the window.
    WindowFull,
}

impl core::fmt::Display for BusError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Full => write!(f, "the PCI bus holds {MAX_FUNCTIONS} functions already"),
            Self::BadSlot => write!(f, "that PCI slot is taken or does not exist"),
            Self::WindowFull => write!(f, "the PCI functions' BARs do not fit the MMIO window"),
        }
    }
}

/// The functions on bus 0 besides the host bridge, shared by the
/// configuration ports ([`PciHost`]) and the MMIO window ([`PciHole`]).
/// (Plain arrays, no drop glue: the board borrows the bus for as long as
/// the functions it holds live.)
pub struct PciBus<'f> {
    slots: RefCell<Slots<'f>>,
    /// The next free address of the window.
    next: core::cell::Cell<u64>,
}

impl Default for PciBus<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'f> PciBus<'f> {
    /// No functions.
    pub fn new() -> Self {
        Self {
            slots: RefCell::new(Slots {
                s: [const { None }; MAX_FUNCTIONS],
                len: 0,
            }),
            next: core::cell::Cell::new(MMIO_WINDOW_BASE),
        }
    }

    /// Puts `f` at 00:`device`.`function`, its INTx on line `irq`, and
    /// assigns its BARs ([`Self::assign`]'s work for this function).
    pub fn add(
        &self,
        device: u8,
        function: u8,
        irq: u8,
        f: &'f mut dyn PciFunction,
    ) -> Result<(), BusError> {
        let mut slots = self.slots.borrow_mut();
        if device == 0
            || device > 31
            || function > 7
            || slots
                .iter()
                .any(|s| (s.device, s.function) == (device, function))
        {
            return Err(BusError::BadSlot);
        }
        let mut slot = Slot {
            device,
            function,
            irq,
            f,
            bars: [MemBar::default(); 6],
            memory: false,
            assigned: false,
        };
        if slots.len == MAX_FUNCTIONS {
            return Err(BusError::Full);
        }
        self.assign(&mut slot)?;
        slots.push(slot)
    }

    /// Assigns the functions whose server did not answer before (a
    /// device server that had not reached its loop when the board was
    /// made): before any access reaches them.
    fn settle(&self, slots: &mut Slots<'f>) {
        for s in slots.iter_mut().filter(|s| !s.assigned) {
            if self.assign(s).is_err() {
                s.assigned = true;
            }
        }
    }

    /// What firmware does for one function: sizes each BAR (all ones
    /// written, the read-back's writable bits), places the memory BARs in
    /// the window, naturally aligned (I/O BARs stay unassigned), enables
    /// memory decoding and bus mastering, writes the interrupt line.
    ///
    /// A function whose vendor ID reads all ones (its server is not
    /// answering yet) is left for later ([`Self::settle`]).
    fn assign(&self, s: &mut Slot<'_>) -> Result<(), BusError> {
        if s.f.config_read(0, 2) & 0xffff == 0xffff {
            return Ok(());
        }
        s.assigned = true;
        let mut i = 0u16;
        while i < 6 {
            let reg = BAR0 + 4 * i;
            let old = s.f.config_read(reg, 4);
            s.f.config_write(reg, 4, u32::MAX);
            let probe = s.f.config_read(reg, 4);
            s.f.config_write(reg, 4, old);
            let wide = probe & 1 == 0 && (probe >> 1) & 3 == 2;
            if probe == 0 || probe & 1 != 0 {
                i += 1;
                continue;
            }
            let mut mask = u64::from(probe & !0xf) | 0xffff_ffff_0000_0000;
            if wide && i < 5 {
                let old_high = s.f.config_read(reg + 4, 4);
                s.f.config_write(reg + 4, 4, u32::MAX);
                let high = s.f.config_read(reg + 4, 4);
                s.f.config_write(reg + 4, 4, old_high);
                mask = (u64::from(high) << 32) | u64::from(probe & !0xf);
            }
            let size = (!mask).wrapping_add(1);
            if size == 0 || !size.is_power_of_two() {
                i += if wide { 2 } else { 1 };
                continue;
            }
            // The sizes come from a server: checked arithmetic only.
            let base = self
                .next
                .get()
                .checked_next_multiple_of(size)
                .filter(|b| {
                    b.checked_add(size)
                        .is_some_and(|end| end <= MMIO_WINDOW_BASE + MMIO_WINDOW_LEN)
                })
                .ok_or(BusError::WindowFull)?;
            self.next.set(base + size);
            s.f.config_write(reg, 4, base as u32);
            if wide && i < 5 {
                s.f.config_write(reg + 4, 4, (base >> 32) as u32);
            }
            s.bars[usize::from(i)] = MemBar { size, base, wide };
            i += if wide { 2 } else { 1 };
        }
        let command = s.f.config_read(COMMAND, 2) as u16;
        s.f.config_write(
            COMMAND,
            2,
            u32::from(command | COMMAND_MEMORY | COMMAND_BUS_MASTER),
        );
        s.f.config_write(INTERRUPT_LINE, 1, u32::from(s.irq));
        s.refresh();
        Ok(())
    }

    /// Functions on the bus.
    pub fn len(&self) -> usize {
        self.slots.borrow().len
    }

    /// Whether the bus has no function.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn config_read(&self, device: u8, function: u8, offset: u16, size: u8) -> Option<u32> {
        let mut slots = self.slots.try_borrow_mut().ok()?;
        self.settle(&mut slots);
        let s = slots
            .iter_mut()
            .find(|s| (s.device, s.function) == (device, function))?;
        Some(s.f.config_read(offset, size))
    }

    fn config_write(&self, device: u8, function: u8, offset: u16, size: u8, value: u32) {
        let Ok(mut slots) = self.slots.try_borrow_mut() else {
            return;
        };
        self.settle(&mut slots);
        let found = slots
            .iter_mut()
            .find(|s| (s.device, s.function) == (device, function));
        if let Some(s) = found {
            s.f.config_write(offset, size, value);
            let end = offset + u16::from(size);
            // The command register or a BAR: where the function decodes
            // may have changed.
            if offset < BAR0 + 24 && end > COMMAND {
                s.refresh();
            }
        }
    }

    /// The function and BAR that decode `gpa` now, and the offset in it.
    fn with_bar<R>(
        &self,
        gpa: u64,
        f: impl FnOnce(&mut dyn PciFunction, u8, u64) -> R,
    ) -> Option<R> {
        let mut slots = self.slots.try_borrow_mut().ok()?;
        let (s, (bar, off)) = slots
            .iter_mut()
            .find_map(|s| s.decode(gpa).map(|d| (s, d)))?;
        Some(f(&mut *s.f, bar, off))
    }

    /// Whether a function's BAR decodes `gpa` now.
    pub fn decodes(&self, gpa: u64) -> bool {
        self.with_bar(gpa, |_, _, _| ()).is_some()
    }

    /// Where BAR `bar` of 00:`device`.`function` is now, if assigned.
    pub fn bar_base(&self, device: u8, function: u8, bar: u8) -> Option<u64> {
        let slots = self.slots.borrow();
        let s = slots
            .iter()
            .find(|s| (s.device, s.function) == (device, function))?;
        let b = s.bars.get(usize::from(bar))?;
        (b.size != 0).then_some(b.base)
    }

    /// Polls every function.
    pub fn poll(&self) {
        if let Ok(mut slots) = self.slots.try_borrow_mut() {
            for s in slots.iter_mut() {
                s.f.poll();
            }
        }
    }

    /// Hands every function the vmm-server's notification word.
    pub fn notified(&self, word: u32) {
        if let Ok(mut slots) = self.slots.try_borrow_mut() {
            for s in slots.iter_mut() {
                s.f.notified(word);
            }
        }
    }

    /// Whether a function is busy ([`PciFunction::busy`]).
    pub fn busy(&self) -> bool {
        self.slots
            .try_borrow()
            .is_ok_and(|slots| slots.iter().any(|s| s.f.busy()))
    }
}

/// The PCI MMIO window: every access goes to the function whose BAR
/// decodes it now; an access no BAR decodes reads all ones and is dropped.
/// Registered at [`MMIO_WINDOW_BASE`]; offsets count from there.
/// Without a bus it decodes nothing.
#[derive(Clone, Copy, Default)]
pub struct PciHole<'p, 'f> {
    bus: Option<&'p PciBus<'f>>,
}

impl<'p, 'f> PciHole<'p, 'f> {
    /// The window of `bus`.
    pub fn new(bus: &'p PciBus<'f>) -> Self {
        Self { bus: Some(bus) }
    }
}

impl MmioDevice for PciHole<'_, '_> {
    fn read(&mut self, offset: u64, size: u8) -> u64 {
        let gpa = MMIO_WINDOW_BASE.wrapping_add(offset);
        self.bus
            .and_then(|b| b.with_bar(gpa, |f, bar, off| f.bar_read(bar, off, size)))
            .unwrap_or(u64::MAX)
    }

    fn write(&mut self, offset: u64, size: u8, value: u64) -> WriteOutcome {
        let gpa = MMIO_WINDOW_BASE.wrapping_add(offset);
        if let Some(b) = self.bus {
            let _ = b.with_bar(gpa, |f, bar, off| f.bar_write(bar, off, size, value));
        }
        WriteOutcome::Continue
    }
}
/// Vendor 0x8086, device 0x1237 (82441FX PMC, the i440FX host bridge).
const ID: u32 = 0x1237_8086;
/// Class 06 (bridge), subclass 00 (host), interface 00; revision 2.
const CLASS_REV: u32 = 0x0600_0002;

/// The configuration ports, the host bridge, and the bus's functions.
#[derive(Clone, Copy, Default)]
pub struct PciHost<'p, 'f> {
    address: u32,
    bus: Option<&'p PciBus<'f>>,
}

impl core::fmt::Debug for PciHost<'_, '_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PciHost")
            .field("address", &self.address)
            .field("functions", &self.bus.map_or(0, PciBus::len))
            .finish()
    }
}

impl<'p, 'f> PciHost<'p, 'f> {
    /// CONFIG_ADDRESS zero (disabled); only the host bridge.
    pub const fn new() -> Self {
        Self {
            address: 0,
            bus: None,
        }
    }

    /// The same ports with the functions of `bus` behind them.
    pub fn with_bus(mut self, bus: &'p PciBus<'f>) -> Self {
        self.bus = Some(bus);
        self
    }

    /// The enabled address's bus 0 device and function, or `None`.
    fn target(&self) -> Option<(u8, u8)> {
        if self.address & ENABLE == 0 || (self.address >> 16) & 0xff != 0 {
            return None;
        }
        Some((
            ((self.address >> 11) & 0x1f) as u8,
            ((self.address >> 8) & 7) as u8,
        ))
    }

    /// The host bridge's dword at `register`.
    fn bridge(register: u32) -> u32 {
        match register {
            0x00 => ID,
            0x08 => CLASS_REV,
            _ => 0,
        }
    }
}

impl PortDevice for PciHost<'_, '_> {
    fn read(&mut self, offset: u16, size: IoSize) -> u32 {
        match (offset, size) {
            (0, IoSize::Dword) => self.address,
            (0..=3, _) => size.mask(),
            _ => {
                let byte = u32::from(offset & 3);
                match self.target() {
                    Some((0, 0)) => (Self::bridge(self.address & 0xfc) >> (8 * byte)) & size.mask(),
                    Some((d, f)) => {
                        // An access that runs past the dword is cut at it.
                        let bytes = size.bytes().min((4 - byte) as u8);
                        let register = (self.address & 0xfc) as u16 + byte as u16;
                        self.bus
                            .and_then(|b| b.config_read(d, f, register, bytes))
                            .unwrap_or(u32::MAX)
                            & size.mask()
                    }
                    None => size.mask(),
                }
            }
        }
    }

    fn write(&mut self, offset: u16, size: IoSize, value: u32) -> WriteOutcome {
        match (offset, size) {
            // Bits 30:24 are reserved and read as zero; bits 1:0 too.
            (0, IoSize::Dword) => self.address = value & 0x80ff_fffc,
            (0..=3, _) => {}
            _ => {
                let byte = offset & 3;
                if let (Some((d, f)), Some(bus)) = (self.target(), self.bus) {
                    if (d, f) != (0, 0) {
                        let size = size.bytes().min((4 - byte) as u8);
                        let register = (self.address & 0xfc) as u16 + byte;
                        bus.config_write(d, f, register, size, value);
                    }
                }
            }
        }
        WriteOutcome::Continue
    }

    /// Polls the bus's functions.
    fn poll(&mut self) -> Option<Nanos> {
        if let Some(bus) = self.bus {
            bus.poll();
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;
    use virtio::devices::console::{Console, NoInput};
    use virtio::pci::{NoInterrupts, VirtioPci};

    #[derive(Default)]
    struct Out(Vec<u8>);
    impl virtio::devices::console::ConsoleOutput for Out {
        fn write(&mut self, data: &[u8]) {
            self.0.extend_from_slice(data);
        }
    }

    /// A virtio console in the same process, without queues' memory.
    struct Local(VirtioPci<Console<Out, NoInput>, NoInterrupts>);

    impl Local {
        fn new() -> Self {
            Self(VirtioPci::new(
                Console::new(Out::default(), NoInput),
                NoInterrupts,
            ))
        }
    }

    impl PciFunction for Local {
        fn config_read(&mut self, offset: u16, size: u8) -> u32 {
            self.0.config_read(offset, size)
        }
        fn config_write(&mut self, offset: u16, size: u8, value: u32) {
            let _ = self.0.config_write(offset, size, value);
        }
        fn bar_read(&mut self, bar: u8, offset: u64, size: u8) -> u64 {
            self.0.bar_read(bar, offset, size)
        }
        fn bar_write(&mut self, bar: u8, offset: u64, size: u8, value: u64) {
            let _ = self.0.bar_write(bar, offset, size, value);
        }
    }

    /// CONFIG_ADDRESS of 00:`dev`.0, register `reg`.
    fn addr(dev: u32, reg: u32) -> u32 {
        0x8000_0000 | dev << 11 | reg
    }

    #[test]
    fn functions_are_enumerated_at_their_slots() {
        let (mut a, mut b, mut c) = (Local::new(), Local::new(), Local::new());
        let bus = PciBus::new();
        bus.add(3, 0, 10, &mut a).unwrap();
        bus.add(4, 0, 11, &mut b).unwrap();
        assert_eq!(bus.add(3, 0, 10, &mut c), Err(BusError::BadSlot));
        let mut p = PciHost::new().with_bus(&bus);
        let mut found = Vec::new();
        for dev in 0..32 {
            p.write(0, IoSize::Dword, addr(dev, 0));
            let id = p.read(4, IoSize::Dword);
            if id != u32::MAX {
                found.push((dev, id));
            }
        }
        assert_eq!(found, [(0, ID), (3, 0x1043_1af4), (4, 0x1043_1af4)]);
        // Byte and word reads at offsets inside the dword.
        p.write(0, IoSize::Dword, addr(3, 0));
        assert_eq!(p.read(6, IoSize::Word), 0x1043);
        assert_eq!(p.read(5, IoSize::Byte), 0x1a);
        // The interrupt line the board wrote, the header type, bus 1.
        p.write(0, IoSize::Dword, addr(4, 0x3c));
        assert_eq!(p.read(4, IoSize::Byte), 11);
        p.write(0, IoSize::Dword, 0x8001_0000 | 3 << 11);
        assert_eq!(p.read(4, IoSize::Dword), u32::MAX);
        // Function 1 of a present device: nothing.
        p.write(0, IoSize::Dword, addr(3, 0) | 1 << 8);
        assert_eq!(p.read(4, IoSize::Word), 0xffff);
    }

    #[test]
    fn bars_are_assigned_in_the_window_and_sized_like_firmware_does() {
        let (mut a, mut b) = (Local::new(), Local::new());
        let bus = PciBus::new();
        bus.add(3, 0, 10, &mut a).unwrap();
        bus.add(4, 0, 11, &mut b).unwrap();
        let b0 = bus.bar_base(3, 0, 0).unwrap();
        let b1 = bus.bar_base(3, 0, 1).unwrap();
        let c0 = bus.bar_base(4, 0, 0).unwrap();
        assert_eq!(b0, MMIO_WINDOW_BASE);
        assert_eq!(b1, MMIO_WINDOW_BASE + 0x4000, "4 KiB after the 16 KiB BAR");
        assert_eq!(c0, MMIO_WINDOW_BASE + 0x8000, "aligned to its size");
        let mut p = PciHost::new().with_bus(&bus);
        // Command: memory and bus master on.
        p.write(0, IoSize::Dword, addr(3, 4));
        assert_eq!(p.read(4, IoSize::Word) & 6, 6);
        // The guest sizes BAR 0 as Linux does: all ones, read, restore.
        p.write(0, IoSize::Dword, addr(3, 0x10));
        p.write(4, IoSize::Dword, u32::MAX);
        assert_eq!(p.read(4, IoSize::Dword), !(0x4000 - 1));
        p.write(4, IoSize::Dword, b0 as u32);
        assert_eq!(p.read(4, IoSize::Dword), b0 as u32);
        let mut hole = PciHole::new(&bus);
        // BAR 0 + 0x14: device_status of the common configuration.
        assert_eq!(hole.read(b0 - MMIO_WINDOW_BASE + 0x14, 1), 0);
        hole.write(b0 - MMIO_WINDOW_BASE + 0x14, 1, 1);
        assert_eq!(hole.read(b0 - MMIO_WINDOW_BASE + 0x14, 1), 1);
        assert!(bus.decodes(b1) && bus.decodes(c0) && !bus.decodes(c0 + 0x4000 + 0x1000));
        // Outside every BAR: an empty bus.
        assert_eq!(hole.read(0xa0_0000, 4), u64::MAX);
    }

    /// A function whose server is not answering until `up` is set.
    struct Late<'a>(Local, &'a core::cell::Cell<bool>);

    impl PciFunction for Late<'_> {
        fn config_read(&mut self, offset: u16, size: u8) -> u32 {
            if self.1.get() {
                self.0.config_read(offset, size)
            } else {
                u32::MAX
            }
        }
        fn config_write(&mut self, offset: u16, size: u8, value: u32) {
            if self.1.get() {
                self.0.config_write(offset, size, value);
            }
        }
        fn bar_read(&mut self, bar: u8, offset: u64, size: u8) -> u64 {
            self.0.bar_read(bar, offset, size)
        }
        fn bar_write(&mut self, bar: u8, offset: u64, size: u8, value: u64) {
            self.0.bar_write(bar, offset, size, value)
        }
    }

    #[test]
    fn a_function_whose_server_starts_late_is_assigned_at_the_first_access() {
        let up = core::cell::Cell::new(false);
        let mut f = Late(Local::new(), &up);
        let bus = PciBus::new();
        bus.add(3, 0, 10, &mut f).unwrap();
        assert_eq!(bus.bar_base(3, 0, 0), None, "not sized yet");
        up.set(true);
        let mut p = PciHost::new().with_bus(&bus);
        p.write(0, IoSize::Dword, addr(3, 0x10));
        assert_eq!(p.read(4, IoSize::Dword), MMIO_WINDOW_BASE as u32);
        assert_eq!(bus.bar_base(3, 0, 0), Some(MMIO_WINDOW_BASE));
        p.write(0, IoSize::Dword, addr(3, 0x3c));
        assert_eq!(p.read(4, IoSize::Byte), 10);
    }

    /// A function whose BAR 0 claims 2^63 bytes (a hostile server).
    struct Huge;

    impl PciFunction for Huge {
        fn config_read(&mut self, offset: u16, _size: u8) -> u32 {
            match offset {
                0 => 0x1234_5678,
                0x10 => 0x4, // 64-bit memory BAR, all address bits fixed low
                0x14 => 0x8000_0000,
                _ => 0,
            }
        }
        fn config_write(&mut self, _: u16, _: u8, _: u32) {}
        fn bar_read(&mut self, _: u8, _: u64, _: u8) -> u64 {
            0
        }
        fn bar_write(&mut self, _: u8, _: u64, _: u8, _: u64) {}
    }

    #[test]
    fn a_bar_larger_than_the_window_is_refused_without_overflow() {
        let bus = PciBus::new();
        let mut f = Huge;
        assert_eq!(bus.add(3, 0, 10, &mut f), Err(BusError::WindowFull));
    }

    #[test]
    fn moved_bars_decode_where_they_are_now() {
        let mut a = Local::new();
        let bus = PciBus::new();
        bus.add(3, 0, 10, &mut a).unwrap();
        let mut p = PciHost::new().with_bus(&bus);
        let mut hole = PciHole::new(&bus);
        let old = bus.bar_base(3, 0, 0).unwrap();
        let new = MMIO_WINDOW_BASE + 0x10_0000;
        p.write(0, IoSize::Dword, addr(3, 0x10));
        p.write(4, IoSize::Dword, new as u32);
        assert_eq!(bus.bar_base(3, 0, 0), Some(new));
        hole.write(new - MMIO_WINDOW_BASE + 0x14, 1, 1);
        assert_eq!(hole.read(new - MMIO_WINDOW_BASE + 0x14, 1), 1);
        assert!(!bus.decodes(old));
        assert_eq!(hole.read(old - MMIO_WINDOW_BASE + 0x14, 1), u64::MAX);
        // Memory decoding off (a byte write to the command register):
        // nothing decodes.
        p.write(0, IoSize::Dword, addr(3, 4));
        p.write(4, IoSize::Byte, 0);
        assert!(!bus.decodes(new));
        p.write(4, IoSize::Byte, 2);
        assert!(bus.decodes(new));
    }

    #[test]
    fn linux_finds_type1_and_the_host_bridge() {
        let mut p = PciHost::new();
        // pci_check_type2: byte writes, then 0xCF8 and 0xCFA must not read 0.
        p.write(3, IoSize::Byte, 0);
        p.write(0, IoSize::Byte, 0);
        p.write(2, IoSize::Byte, 0);
        assert_ne!(p.read(0, IoSize::Byte), 0);
        // pci_check_type1: the address register reads back.
        p.write(0, IoSize::Dword, 0x8000_0000);
        assert_eq!(p.read(0, IoSize::Dword), 0x8000_0000);
        // 00:00.0: vendor, device, class.
        assert_eq!(p.read(4, IoSize::Word), 0x8086);
        assert_eq!(p.read(6, IoSize::Word), 0x1237);
        p.write(0, IoSize::Dword, 0x8000_0008);
        assert_eq!(p.read(6, IoSize::Word), 0x0600);
        assert_eq!(p.read(4, IoSize::Byte), 2);
        // 00:01.0 and bus 1: nothing.
        p.write(0, IoSize::Dword, 0x8000_0800);
        assert_eq!(p.read(4, IoSize::Dword), u32::MAX);
        p.write(0, IoSize::Dword, 0x8001_0000);
        assert_eq!(p.read(4, IoSize::Word), 0xffff);
        // Disabled: nothing; writes to the data port change nothing.
        p.write(0, IoSize::Dword, 0);
        assert_eq!(p.read(4, IoSize::Dword), u32::MAX);
        p.write(0, IoSize::Dword, 0x8000_0000);
        p.write(4, IoSize::Dword, 0);
        assert_eq!(p.read(4, IoSize::Dword), ID);
    }
}
