//! The console: `seL4_DebugPutChar`, which writes to the kernel's serial
//! port (COM1 on pc99), as the native stub's own console does.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, Ordering};

/// Whether the last byte written was '\n'.
static AT_LINE_START: AtomicBool = AtomicBool::new(true);

/// Writes bytes to the console.
pub fn write_bytes(bytes: &[u8]) {
    for &b in bytes {
        sel4_sys::debug_put_char(b);
    }
    if let Some(&last) = bytes.last() {
        AT_LINE_START.store(last == b'\n', Ordering::Relaxed);
    }
}

struct Out;

impl Write for Out {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_bytes(s.as_bytes());
        Ok(())
    }
}

/// One line at a line start, `[stub] ...`: the root task speaks as the stub
/// does, so that `splitvisor run` reads the same final lines.
pub fn stub_line(args: fmt::Arguments) {
    if !AT_LINE_START.load(Ordering::Relaxed) {
        write_bytes(b"\n");
    }
    let _ = Out.write_str("[stub] ");
    let _ = Out.write_fmt(args);
    write_bytes(b"\n");
}

macro_rules! say {
    ($($arg:tt)*) => { $crate::console::stub_line(format_args!($($arg)*)) };
}
pub(crate) use say;

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    match info.location() {
        Some(l) => say!(
            "vm failed: root task panic: {} at {}:{}",
            info.message(),
            l.file(),
            l.line()
        ),
        None => say!("vm failed: root task panic: {}", info.message()),
    }
    crate::vm::end(crate::vm::HOST_EXIT_FAILED)
}
