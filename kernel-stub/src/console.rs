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
    /// An image of several VMs: the VM whose servers run now. Each line
    /// its servers write starts with `[vmN] `, the stub's own with
    /// `[stub] vmN: `: only the stub knows which VM a line comes from.
    vm: Option<u8>,
    /// The VM whose output the unfinished line holds (`None`: the stub's).
    line_vm: Option<u8>,
}

static CONSOLE: KernelCell<Console> = KernelCell::new(Console {
    at_line_start: true,
    vm: None,
    line_vm: None,
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

/// Several VMs: the VM whose servers (and stub lines) come next; `None`
/// with one VM (no prefixes) and for the run's final lines.
pub fn set_vm(vm: Option<u8>) {
    CONSOLE.with(|c| c.vm = vm);
}

/// Writes bytes as they are (the stub's own text).
pub fn write_bytes(bytes: &[u8]) {
    write(bytes, None);
}

/// Writes what a server of the running VM relays (guest output, its own
/// lines): with several VMs each line starts with the VM's prefix, and a
/// line another VM left unfinished is ended first, so no VM's text can
/// continue or forge another's line.
pub fn write_from_vm(bytes: &[u8]) {
    let vm = CONSOLE.with(|c| c.vm);
    write(bytes, vm);
}

fn write(bytes: &[u8], vm: Option<u8>) {
    CONSOLE.with(|c| {
        for &b in bytes {
            if !c.at_line_start && c.line_vm != vm && b != b'\n' {
                put(b'\n');
                c.at_line_start = true;
            }
            if let (true, Some(n)) = (c.at_line_start, vm) {
                let [a, b, c] = name(n);
                [b'[', a, b, c, b']', b' '].into_iter().for_each(put);
            }
            put(b);
            c.at_line_start = b == b'\n';
            c.line_vm = vm;
        }
    });
}

/// `vmN`, or `sys` for the tasks in no VM (`NO_VM`, after the VMs).
fn name(n: u8) -> [u8; 3] {
    if usize::from(n) == ipc_proto::manifest::MAX_VMS {
        *b"sys"
    } else {
        [b'v', b'm', b'0' + n]
    }
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
    match CONSOLE.with(|c| c.vm) {
        Some(n) => {
            let name = name(n);
            let name = core::str::from_utf8(&name).unwrap_or("vm?");
            writeln!(LineWriter, "[stub] {name}: {args}")
        }
        None => writeln!(LineWriter, "[stub] {args}"),
    }
    .ok();
}

/// `println!` for the stub's own messages.
macro_rules! say {
    ($($arg:tt)*) => { $crate::console::stub_line(format_args!($($arg)*)) };
}
pub(crate) use say;
