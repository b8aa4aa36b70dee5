//! virtio-rng, the entropy device (VIRTIO 1.2, 5.4), type 4: one queue
//! (requestq) of device-writable buffers the device fills from an
//! [`EntropySource`].

use crate::device::{DeviceError, VirtioDevice};
use crate::memory::GuestMemory;
use crate::queue::Queue;

/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 64;

/// Where the random bytes come from.
pub trait EntropySource {
    /// Fills `buf` entirely.
    fn fill(&mut self, buf: &mut [u8]);
}

/// An entropy device drawing from `E`.
#[derive(Debug)]
pub struct Rng<E: EntropySource> {
    source: E,
}

impl<E: EntropySource> Rng<E> {
    /// An entropy device drawing from `source`.
    pub fn new(source: E) -> Self {
        Self { source }
    }
}

impl<E: EntropySource> VirtioDevice for Rng<E> {
    fn device_type(&self) -> u16 {
        crate::device::device_type::ENTROPY
    }

    fn features(&self) -> u64 {
        0
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn config_len(&self) -> u64 {
        0
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn process_queue<M: GuestMemory + ?Sized>(
        &mut self,
        _index: u16,
        queues: &mut [Queue],
        mem: &mut M,
    ) -> Result<(), DeviceError> {
        let Some(q) = queues.first_mut() else {
            return Ok(());
        };
        while let Some(chain) = q.pop(mem)? {
            let source = &mut self.source;
            let n = chain.for_each_segment(mem, true, 0, chain.writable_len(), |m, b| {
                source.fill(m.slice_mut(b.gpa, u64::from(b.len))?);
                Ok::<(), DeviceError>(())
            })?;
            q.add_used(mem, chain.head(), u32::try_from(n).unwrap_or(u32::MAX))?;
        }
        Ok(())
    }
}
