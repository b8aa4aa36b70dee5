//! virtio-console's host side: output goes to a [`ConsoleOutput`] the
//! server provides (the host console), input is what the server read from
//! the host before a poll ([`InputBuffer`]).

use virtio::devices::console::ConsoleInput;
pub use virtio::devices::console::{Console, ConsoleOutput};

/// Host input read ahead, handed to the guest as the receive queue has
/// buffers. `pending` must answer without reading the host, so the server
/// fills the buffer ([`InputBuffer::fill`]) when the vmm-server polls.
#[derive(Clone, Copy, Debug)]
pub struct InputBuffer {
    bytes: [u8; 64],
    start: usize,
    end: usize,
}

impl Default for InputBuffer {
    fn default() -> Self {
        Self {
            bytes: [0; 64],
            start: 0,
            end: 0,
        }
    }
}

impl InputBuffer {
    /// Empty.
    pub fn new() -> Self {
        Self::default()
    }

    /// When empty, lets `read` fill it (returns how many bytes it put in
    /// the slice it was given; more than the slice counts as the slice).
    pub fn fill(&mut self, read: impl FnOnce(&mut [u8]) -> usize) {
        if self.start == self.end {
            self.start = 0;
            self.end = read(&mut self.bytes).min(self.bytes.len());
        }
    }
}

impl ConsoleInput for InputBuffer {
    fn pending(&self) -> bool {
        self.start < self.end
    }

    fn read(&mut self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(self.end - self.start);
        buf[..n].copy_from_slice(&self.bytes[self.start..self.start + n]);
        self.start += n;
        n
    }
}
