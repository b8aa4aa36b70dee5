//! The stub's own console on COM1, the host's serial port. The guest never
//! touches it: guest UART output reaches it through the vmm-server's
//! `ConsoleWrite` calls.

use crate::cpu::{inb, outb, KernelCell};
use core::fmt::{self, Write};

const COM1: u16 = 0x3f8;
const LSR_THRE: u8 = 1 << 5;

struct Console {
    /// Whether the last byte written ended a line, so that the stub's own
    /// messages always start at a line start.
    at_line_start: bool,
}

static CONSOLE: KernelCell<Console> = KernelCell::new(Console {
    at_line_start: true,
});

/// 115200 8N1, FIFOs on, interrupts off.
pub fn init() {
    for (reg, val) in [
        (1, 0x00),
        (3, 0x80),
        (0, 0x01),
        (1, 0x00),
        (3, 0x03),
        (2, 0xc7),
        (4, 0x0b),
    ] {
        outb(COM1 + reg, val);
    }
}

fn put(byte: u8) {
    while inb(COM1 + 5) & LSR_THRE == 0 {}
    outb(COM1, byte);
}

/// Writes bytes as they are (guest output relayed by a server).
pub fn write_bytes(bytes: &[u8]) {
    CONSOLE.with(|c| {
        for &b in bytes {
            put(b);
        }
        if let Some(&last) = bytes.last() {
            c.at_line_start = last == b'\n';
        }
    });
}

struct LineWriter;

impl Write for LineWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_bytes(s.as_bytes());
        Ok(())
    }
}

/// Prints one `[stub] ...` line, starting a new line first if needed.
pub fn stub_line(args: fmt::Arguments) {
    if !CONSOLE.with(|c| c.at_line_start) {
        write_bytes(b"\n");
    }
    let _ = writeln!(LineWriter, "[stub] {args}");
}

/// `println!` for the stub's own messages.
macro_rules! say {
    ($($arg:tt)*) => { $crate::console::stub_line(format_args!($($arg)*)) };
}
pub(crate) use say;
