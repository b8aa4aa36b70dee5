//! Where the guest's serial output and the server's own messages go.
//!
//! Guest bytes arrive one at a time through [`ConsoleSink`]. The server's
//! host console ([`HostConsole`]) buffers them and sends them on a newline,
//! when the buffer is full and before any message of its own; every message
//! of the server is one line that begins with `[vmm] ` and starts at a line
//! start.

use core::cell::RefCell;
use core::fmt;

/// Receives the bytes a device transmits (the 16550's THR) and supplies
/// the bytes typed on the host console (its RBR).
pub trait ConsoleSink {
    /// One byte the guest sent.
    fn write_byte(&mut self, byte: u8);

    /// One byte typed on the host, if one is waiting. The default: none ever.
    fn read_byte(&mut self) -> Option<u8> {
        None
    }
}

impl<S: ConsoleSink + ?Sized> ConsoleSink for &mut S {
    fn write_byte(&mut self, byte: u8) {
        (**self).write_byte(byte);
    }

    fn read_byte(&mut self) -> Option<u8> {
        (**self).read_byte()
    }
}

/// A sink shared with its owner: the device borrows it for one byte at a
/// time, so the owner can still flush it between exits. A sink the owner
/// holds borrowed drops the byte (and reads nothing) instead of panicking.
impl<S: ConsoleSink + ?Sized> ConsoleSink for &RefCell<S> {
    fn write_byte(&mut self, byte: u8) {
        if let Ok(mut s) = self.try_borrow_mut() {
            s.write_byte(byte);
        }
    }

    fn read_byte(&mut self) -> Option<u8> {
        self.try_borrow_mut().ok()?.read_byte()
    }
}

/// Collects the bytes; for tests and for hosts with an allocator.
#[cfg(test)]
impl ConsoleSink for std::vec::Vec<u8> {
    fn write_byte(&mut self, byte: u8) {
        self.push(byte);
    }
}

/// The platform's console: the `ConsoleWrite` and `ConsoleRead` system
/// calls on the stub.
pub trait HostWrite {
    /// Writes `bytes` (at most [`HOST_BUFFER`] at a time) to the host console.
    fn write_host(&mut self, bytes: &[u8]);

    /// Copies bytes typed on the host console into `buf` without waiting;
    /// returns how many. The default: no input.
    fn read_host(&mut self, buf: &mut [u8]) -> usize {
        let _ = buf;
        0
    }
}

/// Bytes of host input read ahead.
pub const INPUT_BUFFER: usize = 256;

/// What `splitvisor run` types when it is about to kill the emulator (a
/// timeout, Ctrl-A X): the server loop answers by ending the VM with a
/// report, so that a run that did not end still says what it knows.
pub use ipc_proto::CONSOLE_REPORT_REQUEST as REPORT_REQUEST;

/// Bytes of guest output buffered before they are sent.
pub const HOST_BUFFER: usize = 256;

/// The prefix of every message of the server.
pub const PREFIX: &str = "[vmm] ";

/// Line-buffered host console shared by the guest's UART and the server.
pub struct HostConsole<W: HostWrite> {
    out: W,
    buf: [u8; HOST_BUFFER],
    len: usize,
    at_line_start: bool,
    input: [u8; INPUT_BUFFER],
    input_at: usize,
    input_len: usize,
    /// How much of [`REPORT_REQUEST`] the input has matched so far.
    request_matched: usize,
    report_requested: bool,
}

impl<W: HostWrite> HostConsole<W> {
    /// A console writing to `out`; `at_line_start` says whether the last
    /// byte already on the host console was a newline (or nothing was written).
    pub const fn new(out: W, at_line_start: bool) -> Self {
        Self {
            out,
            buf: [0; HOST_BUFFER],
            len: 0,
            at_line_start,
            input: [0; INPUT_BUFFER],
            input_at: 0,
            input_len: 0,
            request_matched: 0,
            report_requested: false,
        }
    }

    /// Reads what the host typed into the free end of the read-ahead
    /// buffer, looking for [`REPORT_REQUEST`] in it. The exit loop calls
    /// it after every exit, so the request is seen even while the guest
    /// reads no input (until the buffer is full).
    pub fn poll_input(&mut self) {
        if self.input_at == self.input_len {
            self.input_at = 0;
            self.input_len = 0;
        } else if self.input_at > 0 {
            self.input.copy_within(self.input_at..self.input_len, 0);
            self.input_len -= self.input_at;
            self.input_at = 0;
        }
        let start = self.input_len.min(INPUT_BUFFER);
        let n = self.out.read_host(&mut self.input[start..]);
        self.input_len = (start + n).min(INPUT_BUFFER);
        for i in start..self.input_len {
            let b = self.input[i];
            self.request_matched = match REPORT_REQUEST.get(self.request_matched) {
                Some(&want) if want == b => self.request_matched + 1,
                _ => usize::from(b == REPORT_REQUEST[0]),
            };
            if self.request_matched == REPORT_REQUEST.len() {
                self.report_requested = true;
                self.request_matched = 0;
            }
        }
    }

    /// Whether the host asked for a report ([`REPORT_REQUEST`]).
    pub fn report_requested(&self) -> bool {
        self.report_requested
    }

    /// One byte typed on the host, read ahead [`INPUT_BUFFER`] at a time.
    pub fn input_byte(&mut self) -> Option<u8> {
        if self.input_at == self.input_len {
            self.poll_input();
        }
        if self.input_at < self.input_len {
            self.input_at += 1;
            Some(self.input[self.input_at - 1])
        } else {
            None
        }
    }

    /// Sends the buffered guest bytes.
    pub fn flush(&mut self) {
        if self.len > 0 {
            let len = core::mem::take(&mut self.len);
            Self::emit(&mut self.out, &mut self.at_line_start, &self.buf[..len]);
        }
    }

    /// Buffers one guest byte; sends the buffer on '\n' or when it is full.
    pub fn guest_byte(&mut self, byte: u8) {
        self.buf[self.len] = byte;
        self.len += 1;
        if byte == b'\n' || self.len == HOST_BUFFER {
            self.flush();
        }
    }

    /// Writes one server message as its own line: flushes the guest's
    /// output, starts a new line if the guest left one open, then writes
    /// `[vmm] <message>\n`.
    pub fn server_line(&mut self, message: fmt::Arguments<'_>) {
        self.flush();
        if !self.at_line_start {
            Self::emit(&mut self.out, &mut self.at_line_start, b"\n");
        }
        let mut w = Staging { console: self };
        // Staging never fails; a failing Display impl only shortens the line.
        let _ = fmt::Write::write_str(&mut w, PREFIX);
        let _ = fmt::Write::write_fmt(&mut w, message);
        let _ = fmt::Write::write_str(&mut w, "\n");
        self.flush();
    }

    /// True when the host console is at the start of a line (guest bytes
    /// still in the buffer count as written).
    pub fn at_line_start(&self) -> bool {
        if self.len > 0 {
            self.buf[self.len - 1] == b'\n'
        } else {
            self.at_line_start
        }
    }

    /// The writer.
    pub fn out(&self) -> &W {
        &self.out
    }

    /// The writer, mutably.
    pub fn out_mut(&mut self) -> &mut W {
        &mut self.out
    }

    fn emit(out: &mut W, at_line_start: &mut bool, bytes: &[u8]) {
        if let Some(&last) = bytes.last() {
            out.write_host(bytes);
            *at_line_start = last == b'\n';
        }
    }
}

impl<W: HostWrite> ConsoleSink for HostConsole<W> {
    fn write_byte(&mut self, byte: u8) {
        self.guest_byte(byte);
    }

    fn read_byte(&mut self) -> Option<u8> {
        self.input_byte()
    }
}

/// Formats a server line into the (flushed, hence empty) buffer, sending it
/// whenever it fills up.
struct Staging<'c, W: HostWrite> {
    console: &'c mut HostConsole<W>,
}

impl<W: HostWrite> fmt::Write for Staging<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            let c = &mut *self.console;
            c.buf[c.len] = b;
            c.len += 1;
            if c.len == HOST_BUFFER {
                c.flush();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::string::String;
    use std::vec::Vec;

    /// Records every `write_host` call; `typed` is what the host user types.
    #[derive(Default)]
    pub(crate) struct Recorder {
        pub(crate) calls: Vec<Vec<u8>>,
        pub(crate) typed: std::collections::VecDeque<u8>,
    }

    impl Recorder {
        pub(crate) fn text(&self) -> String {
            String::from_utf8(self.calls.concat()).unwrap()
        }
    }

    impl HostWrite for Recorder {
        fn write_host(&mut self, bytes: &[u8]) {
            assert!(bytes.len() <= HOST_BUFFER);
            self.calls.push(bytes.to_vec());
        }

        fn read_host(&mut self, buf: &mut [u8]) -> usize {
            let n = buf.len().min(self.typed.len()).min(3);
            for b in buf.iter_mut().take(n) {
                *b = self.typed.pop_front().unwrap();
            }
            n
        }
    }

    #[test]
    fn the_report_request_is_seen_in_pieces_while_the_guest_reads_nothing() {
        let mut c = HostConsole::new(Recorder::default(), true);
        c.out_mut().typed.extend(b"ls\n\0\0");
        c.out_mut().typed.extend(REPORT_REQUEST);
        for _ in 0..5 {
            c.poll_input(); // three bytes a call: the request spans calls
        }
        assert!(c.report_requested());
        // What was typed before it is still there for the guest, in order.
        assert_eq!(c.input_byte(), Some(b'l'));
        assert_eq!(c.input_byte(), Some(b's'));
        let mut other = HostConsole::new(Recorder::default(), true);
        other.out_mut().typed.extend(b"\0\x1bSVRE\0P\0");
        for _ in 0..5 {
            other.poll_input();
        }
        assert!(!other.report_requested(), "not the whole request in a row");
    }

    #[test]
    fn host_input_is_read_ahead_in_chunks() {
        let mut c = HostConsole::new(Recorder::default(), true);
        assert_eq!(c.read_byte(), None);
        c.out_mut().typed.extend(b"hello");
        let got: Vec<u8> = std::iter::from_fn(|| c.read_byte()).collect();
        assert_eq!(got, b"hello");
        let cell = RefCell::new(c);
        cell.borrow_mut().out_mut().typed.extend(b"x");
        let mut sink = &cell;
        let held = cell.borrow();
        assert_eq!(
            sink.read_byte(),
            None,
            "a held console reads nothing, no panic"
        );
        drop(held);
        assert_eq!(sink.read_byte(), Some(b'x'));
    }

    #[test]
    fn guest_bytes_are_sent_per_line() {
        let mut c = HostConsole::new(Recorder::default(), true);
        for &b in b"hello\nwor" {
            c.write_byte(b);
        }
        assert_eq!(c.out().calls, [b"hello\n".to_vec()]);
        assert!(!c.at_line_start());
        c.flush();
        assert_eq!(c.out().text(), "hello\nwor");
    }

    #[test]
    fn a_full_buffer_is_sent() {
        let mut c = HostConsole::new(Recorder::default(), true);
        for _ in 0..HOST_BUFFER + 3 {
            c.write_byte(b'x');
        }
        assert_eq!(c.out().calls.len(), 1);
        assert_eq!(c.out().calls[0].len(), HOST_BUFFER);
    }

    #[test]
    fn server_lines_start_at_a_line_start() {
        let mut c = HostConsole::new(Recorder::default(), true);
        c.server_line(format_args!("first {}", 1));
        for &b in b"guest" {
            c.write_byte(b);
        }
        c.server_line(format_args!("second"));
        for &b in b"ok\n" {
            c.write_byte(b);
        }
        c.server_line(format_args!("third"));
        assert_eq!(
            c.out().text(),
            "[vmm] first 1\nguest\n[vmm] second\nok\n[vmm] third\n"
        );
        assert!(c.at_line_start());
    }

    #[test]
    fn a_console_that_starts_mid_line_breaks_it_first() {
        let mut c = HostConsole::new(Recorder::default(), false);
        c.server_line(format_args!("panic"));
        assert_eq!(c.out().text(), "\n[vmm] panic\n");
    }

    #[test]
    fn long_server_lines_are_chunked() {
        let mut c = HostConsole::new(Recorder::default(), true);
        let long = "y".repeat(3 * HOST_BUFFER);
        c.server_line(format_args!("{long}"));
        assert_eq!(c.out().text(), std::format!("[vmm] {long}\n"));
        assert!(c.out().calls.len() >= 3);
    }

    #[test]
    fn a_refcell_sink_lets_the_owner_flush() {
        let shared = RefCell::new(HostConsole::new(Recorder::default(), true));
        let mut sink = &shared;
        sink.write_byte(b'a');
        shared.borrow_mut().flush();
        assert_eq!(shared.borrow().out().text(), "a");
    }
}
