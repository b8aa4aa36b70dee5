//! The stub's own console on COM1, the host's serial port. The guest never
//! touches it: guest UART output reaches it through the vmm-server's
//! `ConsoleWrite` calls.

use crate::cpu::{id, inb, outb, KernelCell, MAX_CPUS};
use core::fmt::{self, Write};

const COM1: u16 = 0x3f8;
const LSR_THRE: u8 = 1 << 5;

struct Console {
    /// Whether the last byte written ended a line, so that the stub's own
    /// messages always start at a line start.
    at_line_start: bool,
    /// An image of several VMs: the VM whose servers run now, on each
    /// CPU. Each line its servers write starts with `[vmN] `, the stub's
    /// own with `[stub] vmN: `: only the stub knows which VM a line comes from.
    vm: [Option<u8>; MAX_CPUS],
    /// The VM whose output the unfinished line holds (`None`: the stub's).
    line_vm: Option<u8>,
}

static CONSOLE: KernelCell<Console> = KernelCell::new(Console {
    at_line_start: true,
    vm: [None; MAX_CPUS],
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
    CONSOLE.with(|c| c.vm[id()] = vm);
}

/// Writes what a server of the running VM relays (guest output, its own
/// lines): with several VMs each line starts with the VM's prefix, and a
/// line another VM left unfinished is ended first, so no VM's text can
/// continue or forge another's line.
pub fn write_from_vm(bytes: &[u8]) {
    let vm = CONSOLE.with(|c| c.vm[id()]);
    write(bytes, vm);
}

fn write(bytes: &[u8], vm: Option<u8>) {
    CONSOLE.with(|c| write_locked(c, bytes, vm));
}

fn write_locked(c: &mut Console, bytes: &[u8], vm: Option<u8>) {
    for &b in bytes {
        if !c.at_line_start && c.line_vm != vm && b != b'\n' {
            put(b'\n');
            c.at_line_start = true;
        }
        if let (true, Some(n)) = (c.at_line_start, vm) {
            let [x, y, z] = name(n);
            [b'[', x, y, z, b']', b' '].into_iter().for_each(put);
        }
        put(b);
        c.at_line_start = b == b'\n';
        c.line_vm = vm;
    }
}

/// `vmN`, or `sys` for the tasks in no VM (`NO_VM`, after the VMs).
fn name(n: u8) -> [u8; 3] {
    if usize::from(n) == ipc_proto::manifest::MAX_VMS {
        *b"sys"
    } else {
        [b'v', b'm', b'0' + n]
    }
}

/// A line being formatted; what does not fit is cut.
struct Line(heapless::String<LINE_MAX>);
const LINE_MAX: usize = 1024;

impl Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for ch in s.chars() {
            self.0.push(ch).map_err(|_| fmt::Error)?;
        }
        Ok(())
    }
}

/// Prints one `[stub] ...` line, starting a new line first if needed:
/// formatted first, then written at once, so that another CPU's output
/// never lands inside it.
pub fn stub_line(args: fmt::Arguments) {
    let mut line = Line(heapless::String::new());
    let vm = CONSOLE.with(|c| c.vm[id()]);
    match vm {
        Some(n) => {
            let name = name(n);
            let name = core::str::from_utf8(&name).unwrap_or("vm?");
            write!(line, "[stub] {name}: {args}")
        }
        None => write!(line, "[stub] {args}"),
    }
    .ok();
    CONSOLE.with(|c| {
        if !c.at_line_start {
            write_locked(c, b"\n", None);
        }
        write_locked(c, line.0.as_bytes(), None);
        write_locked(c, b"\n", None);
    });
}

/// `println!` for the stub's own messages.
macro_rules! say {
    ($($arg:tt)*) => { $crate::console::stub_line(format_args!($($arg)*)) };
}
pub(crate) use say;
