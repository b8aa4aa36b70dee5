//! virtio-console (VIRTIO 1.2, 5.3), type 3: one port, no multiport.
//! Queue 0 (receiveq) carries input to the guest, queue 1 (transmitq)
//! output from it.
//!
//! Output goes to a [`ConsoleOutput`] straight from the guest's buffers;
//! input comes from a [`ConsoleInput`] straight into them, whenever the
//! driver has buffers on the receive queue and the input has bytes
//! ([`crate::VirtioPci::poll`] when input arrives, and after each
//! notification of either queue).

use crate::device::{read_config_bytes, DeviceError, VirtioDevice};
use crate::memory::GuestMemory;
use crate::queue::Queue;

/// The receive queue.
pub const RECEIVEQ: u16 = 0;
/// The transmit queue.
pub const TRANSMITQ: u16 = 1;
/// Size of both queues.
pub const QUEUE_SIZE: u16 = 256;

/// Where the guest's output goes.
pub trait ConsoleOutput {
    /// The guest wrote `data`.
    fn write(&mut self, data: &[u8]);
}

/// Where the guest's input comes from.
pub trait ConsoleInput {
    /// Whether [`ConsoleInput::read`] would return something.
    fn pending(&self) -> bool;
    /// Fills `buf` with what input there is, without waiting; returns how
    /// many bytes (0: none now).
    fn read(&mut self, buf: &mut [u8]) -> usize;
}

/// An input that never has anything.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoInput;

impl ConsoleInput for NoInput {
    fn pending(&self) -> bool {
        false
    }
    fn read(&mut self, _buf: &mut [u8]) -> usize {
        0
    }
}

/// A virtio console writing to `O` and reading from `In`.
#[derive(Debug)]
pub struct Console<O: ConsoleOutput, In: ConsoleInput> {
    output: O,
    input: In,
    /// Columns and rows in the configuration (informative; VIRTIO_CONSOLE_F_SIZE
    /// is not offered).
    cols: u16,
    rows: u16,
}

impl<O: ConsoleOutput, In: ConsoleInput> Console<O, In> {
    /// A console of 80 × 25.
    pub fn new(output: O, input: In) -> Self {
        Self {
            output,
            input,
            cols: 80,
            rows: 25,
        }
    }

    /// The output.
    pub fn output(&self) -> &O {
        &self.output
    }

    /// The output, mutably.
    pub fn output_mut(&mut self) -> &mut O {
        &mut self.output
    }

    /// The input, mutably (to feed it).
    pub fn input_mut(&mut self) -> &mut In {
        &mut self.input
    }

    fn config(&self) -> [u8; 12] {
        let mut c = [0u8; 12];
        c[0..2].copy_from_slice(&self.cols.to_le_bytes());
        c[2..4].copy_from_slice(&self.rows.to_le_bytes());
        // max_nr_ports (only with MULTIPORT) and emerg_wr: 0.
        c
    }

    fn transmit<M: GuestMemory + ?Sized>(
        &mut self,
        q: &mut Queue,
        mem: &mut M,
    ) -> Result<(), DeviceError> {
        while let Some(chain) = q.pop(mem)? {
            let out = &mut self.output;
            chain.for_each_segment(mem, false, 0, chain.readable_len(), |m, b| {
                out.write(m.slice(b.gpa, u64::from(b.len))?);
                Ok::<(), DeviceError>(())
            })?;
            q.add_used(mem, chain.head(), 0)?;
        }
        Ok(())
    }

    fn receive<M: GuestMemory + ?Sized>(
        &mut self,
        q: &mut Queue,
        mem: &mut M,
    ) -> Result<(), DeviceError> {
        // A buffer is taken only when there is input for it.
        while q.ready() && self.input.pending() {
            let Some(chain) = q.pop(mem)? else {
                return Ok(());
            };
            let input = &mut self.input;
            let mut filled = 0u64;
            let mut dry = false;
            chain.for_each_segment(mem, true, 0, chain.writable_len(), |m, b| {
                if dry {
                    return Ok(());
                }
                let dst = m.slice_mut(b.gpa, u64::from(b.len))?;
                let n = input.read(dst);
                filled += n as u64;
                dry = n < dst.len();
                Ok::<(), DeviceError>(())
            })?;
            q.add_used(mem, chain.head(), u32::try_from(filled).unwrap_or(u32::MAX))?;
        }
        Ok(())
    }
}

impl<O: ConsoleOutput, In: ConsoleInput> VirtioDevice for Console<O, In> {
    fn device_type(&self) -> u16 {
        crate::device::device_type::CONSOLE
    }

    fn pci_class(&self) -> u32 {
        0x07_8000 // communication controller, other
    }

    fn features(&self) -> u64 {
        0
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn config_len(&self) -> u64 {
        12
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config(), offset, data);
    }

    fn process_queue<M: GuestMemory + ?Sized>(
        &mut self,
        index: u16,
        queues: &mut [Queue],
        mem: &mut M,
    ) -> Result<(), DeviceError> {
        if index == TRANSMITQ {
            if let Some(q) = queues.get_mut(usize::from(TRANSMITQ)) {
                self.transmit(q, mem)?;
            }
        }
        // New receive buffers, or input that waited for them.
        self.poll(queues, mem)
    }

    fn poll<M: GuestMemory + ?Sized>(
        &mut self,
        queues: &mut [Queue],
        mem: &mut M,
    ) -> Result<(), DeviceError> {
        match queues.get_mut(usize::from(RECEIVEQ)) {
            Some(q) => self.receive(q, mem),
            None => Ok(()),
        }
    }
}
