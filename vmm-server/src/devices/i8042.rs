//! The PS/2 keyboard controller (Intel 8042 and its chipset successors) at
//! ports 0x60 (data) and 0x64 (status and command), with no keyboard and no
//! mouse attached.
//!
//! What is there: the controller's own commands (read and write the command
//! byte, self-test 0xAA answering 0x55, interface tests, enable and disable
//! the ports, read and write the output port, the pulse-output-lines
//! commands 0xF0-0xFF), its output buffer with OBF and IRQ 1, and the reset
//! line: command 0xFE (or clearing output-port bit 0, or a pulse of bit 0)
//! resets the machine, which ends the VM as [`WriteOutcome::Reset`].
//!
//! What is not: bytes sent to the keyboard or the auxiliary device get no
//! answer, as from an empty PS/2 port, so a guest's keyboard probe times
//! out and it carries on without one (Linux: "atkbd: ... no response").

use super::{read_bytes, IoSize, PortDevice, WriteOutcome};
use crate::board::IrqPin;

/// The ports: data at 0x60, status/command at 0x64. Offsets count from 0x60.
pub const RANGES: [(u16, u16); 2] = [(0x60, 1), (0x64, 1)];
/// Offset of the data port.
pub const DATA: u16 = 0;
/// Offset of the status (read) and command (write) port.
pub const COMMAND: u16 = 4;

/// Status register bits.
pub mod status {
    /// Output buffer full: a byte waits at port 0x60.
    pub const OBF: u8 = 1 << 0;
    /// Input buffer full (never: commands complete at once).
    pub const IBF: u8 = 1 << 1;
    /// System flag: set by a passed self-test.
    pub const SYS: u8 = 1 << 2;
    /// The last write was to the command port.
    pub const CMD_DATA: u8 = 1 << 3;
    /// Keyboard not inhibited (no keylock).
    pub const UNLOCKED: u8 = 1 << 4;
    /// The byte in the output buffer is from the auxiliary device.
    pub const AUX_OBF: u8 = 1 << 5;
}

/// Command byte bits.
pub mod ctr {
    /// Keyboard interrupt (IRQ 1) enable.
    pub const KBD_INT: u8 = 1 << 0;
    /// Aux interrupt (IRQ 12) enable.
    pub const AUX_INT: u8 = 1 << 1;
    /// System flag.
    pub const SYS: u8 = 1 << 2;
    /// Keyboard clock disabled.
    pub const KBD_DISABLE: u8 = 1 << 4;
    /// Aux clock disabled.
    pub const AUX_DISABLE: u8 = 1 << 5;
    /// Scan-code translation.
    pub const XLATE: u8 = 1 << 6;
}

/// Output port bits.
mod outport {
    /// The CPU reset line; 0 resets.
    pub const RESET: u8 = 1 << 0;
    /// The A20 gate.
    pub const A20: u8 = 1 << 1;
}

/// What a data-port write means, after a command that takes a parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pending {
    None,
    WriteCommandByte,
    WriteOutputPort,
    WriteKeyboardOutput,
    WriteAuxOutput,
    WriteAux,
}

/// The keyboard controller.
#[derive(Debug)]
pub struct I8042<'b> {
    irq1: Option<IrqPin<'b>>,
    command_byte: u8,
    output_port: u8,
    status: u8,
    /// The byte in the output buffer, when OBF.
    output: u8,
    pending: Pending,
    /// Bytes written to the keyboard or aux device (which never answer).
    dropped: u64,
}

impl<'b> I8042<'b> {
    /// A controller after power-on, raising `irq1` when its output buffer
    /// fills with interrupts enabled.
    pub fn new(irq1: Option<IrqPin<'b>>) -> Self {
        Self {
            irq1,
            command_byte: ctr::KBD_INT | ctr::SYS | ctr::XLATE,
            output_port: outport::RESET | outport::A20,
            status: status::UNLOCKED,
            output: 0,
            pending: Pending::None,
            dropped: 0,
        }
    }

    /// Bytes the guest sent to the absent keyboard or mouse.
    pub fn dropped_bytes(&self) -> u64 {
        self.dropped
    }

    fn push(&mut self, byte: u8, aux: bool) {
        self.output = byte;
        self.status |= status::OBF;
        if aux {
            self.status |= status::AUX_OBF;
        } else {
            self.status &= !status::AUX_OBF;
        }
        self.update_irq();
    }

    fn update_irq(&self) {
        if let Some(p) = &self.irq1 {
            let kbd_byte = self.status & (status::OBF | status::AUX_OBF) == status::OBF;
            p.set_level(kbd_byte && self.command_byte & ctr::KBD_INT != 0);
        }
    }

    fn command(&mut self, cmd: u8) -> WriteOutcome {
        self.status |= status::CMD_DATA;
        self.pending = Pending::None;
        match cmd {
            // Read "RAM" byte 0: the command byte.
            0x20 => self.push(self.command_byte, false),
            0x60 => self.pending = Pending::WriteCommandByte,
            0xa7 => self.command_byte |= ctr::AUX_DISABLE,
            0xa8 => self.command_byte &= !ctr::AUX_DISABLE,
            // Aux interface test: 0 = no error (the wire is fine, nothing on it).
            0xa9 => self.push(0x00, false),
            // Controller self-test passed.
            0xaa => {
                self.status |= status::SYS;
                self.command_byte |= ctr::SYS;
                self.push(0x55, false);
            }
            // Keyboard interface test: no error.
            0xab => self.push(0x00, false),
            0xad => self.command_byte |= ctr::KBD_DISABLE,
            0xae => self.command_byte &= !ctr::KBD_DISABLE,
            // Read input port: keyboard not locked.
            0xc0 => self.push(0x80, false),
            0xd0 => self.push(self.output_port, false),
            0xd1 => self.pending = Pending::WriteOutputPort,
            0xd2 => self.pending = Pending::WriteKeyboardOutput,
            0xd3 => self.pending = Pending::WriteAuxOutput,
            0xd4 => self.pending = Pending::WriteAux,
            // Pulse output lines: a clear bit 0 pulses the reset line.
            0xf0..=0xff if cmd & 1 == 0 => return WriteOutcome::Reset,
            _ => {}
        }
        self.update_irq();
        WriteOutcome::Continue
    }

    fn data(&mut self, v: u8) -> WriteOutcome {
        self.status &= !status::CMD_DATA;
        match core::mem::replace(&mut self.pending, Pending::None) {
            Pending::WriteCommandByte => {
                self.command_byte = v;
                self.update_irq();
            }
            Pending::WriteOutputPort => {
                // A20 is always enabled here; only the reset line matters.
                self.output_port = v | outport::A20;
                if v & outport::RESET == 0 {
                    return WriteOutcome::Reset;
                }
            }
            Pending::WriteKeyboardOutput => self.push(v, false),
            Pending::WriteAuxOutput => self.push(v, true),
            // To the keyboard (no pending command) or the mouse: nobody answers.
            Pending::WriteAux | Pending::None => self.dropped += 1,
        }
        WriteOutcome::Continue
    }

    fn read_data(&mut self) -> u8 {
        self.status &= !(status::OBF | status::AUX_OBF);
        self.update_irq();
        self.output
    }
}

impl PortDevice for I8042<'_> {
    fn read(&mut self, offset: u16, size: IoSize) -> u32 {
        read_bytes(offset, size, |o| match o {
            DATA => self.read_data(),
            COMMAND => self.status,
            _ => 0xff,
        })
    }

    fn write(&mut self, offset: u16, size: IoSize, value: u32) -> WriteOutcome {
        let mut outcome = WriteOutcome::Continue;
        for i in 0..size.bytes() {
            let v = (value >> (8 * i)) as u8;
            let r = match offset.checked_add(u16::from(i)) {
                Some(DATA) => self.data(v),
                Some(COMMAND) => self.command(v),
                _ => WriteOutcome::Continue,
            };
            if r != WriteOutcome::Continue {
                outcome = r;
            }
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::board::Board;
    use proptest::prelude::*;

    fn cmd(k: &mut I8042<'_>, c: u8) -> WriteOutcome {
        k.write(COMMAND, IoSize::Byte, u32::from(c))
    }

    fn st(k: &mut I8042<'_>) -> u8 {
        k.read(COMMAND, IoSize::Byte) as u8
    }

    fn data(k: &mut I8042<'_>) -> u8 {
        k.read(DATA, IoSize::Byte) as u8
    }

    #[test]
    fn self_test_answers_0x55_and_sets_sys() {
        let mut k = I8042::new(None);
        assert_eq!(st(&mut k) & status::OBF, 0);
        cmd(&mut k, 0xaa);
        assert_eq!(
            st(&mut k) & (status::OBF | status::SYS),
            status::OBF | status::SYS
        );
        assert_eq!(data(&mut k), 0x55);
        assert_eq!(st(&mut k) & status::OBF, 0, "reading empties the buffer");
    }

    #[test]
    fn command_byte_round_trip_and_irq1() {
        let b = Board::new();
        let mut k = I8042::new(Some(b.irq.pin(1)));
        cmd(&mut k, 0x20);
        assert!(b.irq.pin(1).is_high(), "KBD_INT enabled at power-on");
        assert_eq!(data(&mut k), 0x45);
        assert!(!b.irq.pin(1).is_high());
        // Linux disables the interrupts while it probes.
        cmd(&mut k, 0x60);
        k.write(DATA, IoSize::Byte, 0x44);
        cmd(&mut k, 0x20);
        assert!(!b.irq.pin(1).is_high());
        assert_eq!(data(&mut k), 0x44);
        cmd(&mut k, 0xad);
        cmd(&mut k, 0x20);
        assert_eq!(data(&mut k), 0x54);
    }

    #[test]
    fn interface_tests_pass_and_the_keyboard_never_answers() {
        let mut k = I8042::new(None);
        cmd(&mut k, 0xab);
        assert_eq!(data(&mut k), 0);
        cmd(&mut k, 0xa9);
        assert_eq!(data(&mut k), 0);
        // atkbd's GETID to the keyboard: no byte ever arrives.
        k.write(DATA, IoSize::Byte, 0xf2);
        cmd(&mut k, 0xd4);
        k.write(DATA, IoSize::Byte, 0xff);
        assert_eq!(st(&mut k) & status::OBF, 0);
        assert_eq!(k.dropped_bytes(), 2);
    }

    #[test]
    fn aux_loopback_writes_come_back_as_aux_bytes() {
        let mut k = I8042::new(None);
        cmd(&mut k, 0xd3);
        k.write(DATA, IoSize::Byte, 0x5a);
        assert_eq!(
            st(&mut k) & (status::OBF | status::AUX_OBF),
            status::OBF | status::AUX_OBF
        );
        assert_eq!(data(&mut k), 0x5a);
        cmd(&mut k, 0xd2);
        k.write(DATA, IoSize::Byte, 0x1c);
        assert_eq!(st(&mut k) & status::AUX_OBF, 0);
        assert_eq!(data(&mut k), 0x1c);
    }

    #[test]
    fn reset_command_and_output_port_reset() {
        let mut k = I8042::new(None);
        assert_eq!(cmd(&mut k, 0xfe), WriteOutcome::Reset);
        assert_eq!(cmd(&mut k, 0xff), WriteOutcome::Continue, "pulses nothing");
        cmd(&mut k, 0xd0);
        assert_eq!(data(&mut k), 0x03);
        cmd(&mut k, 0xd1);
        assert_eq!(k.write(DATA, IoSize::Byte, 0xdf), WriteOutcome::Continue);
        cmd(&mut k, 0xd1);
        assert_eq!(k.write(DATA, IoSize::Byte, 0xde), WriteOutcome::Reset);
    }

    proptest! {
        #[test]
        fn nonsense_never_panics(ops in proptest::collection::vec((any::<bool>(), any::<u8>(), any::<bool>()), 0..300)) {
            let b = Board::new();
            let mut k = I8042::new(Some(b.irq.pin(1)));
            for (to_cmd, v, write) in ops {
                let off = if to_cmd { COMMAND } else { DATA };
                if write { k.write(off, IoSize::Byte, u32::from(v)); } else { k.read(off, IoSize::Byte); }
            }
        }
    }
}
