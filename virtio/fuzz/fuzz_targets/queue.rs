//! The split virtqueue parser on arbitrary guest RAM: the first 16 bytes
//! choose the queue (size up to 32768, ring addresses near or far from
//! RAM, EVENT_IDX, INDIRECT_DESC), the rest is guest RAM. Panics when a
//! chain is accepted with a buffer outside RAM, when the second walk of an
//! accepted chain disagrees with the first (RAM did not change), or when
//! guest memory refused an access the queue did not report as an error.
#![no_main]

use core::cell::Cell;

use libfuzzer_sys::fuzz_target;
use virtio::memory::{GuestMemory, MemoryError, SliceMemory};
use virtio::Queue;

struct Watched<'a> {
    inner: SliceMemory<'a>,
    refused: Cell<u32>,
}

impl GuestMemory for Watched<'_> {
    fn ram_size(&self) -> u64 {
        self.inner.ram_size()
    }
    fn slice(&self, gpa: u64, len: u64) -> Result<&[u8], MemoryError> {
        self.inner
            .slice(gpa, len)
            .inspect_err(|_| self.refused.set(self.refused.get() + 1))
    }
    fn slice_mut(&mut self, gpa: u64, len: u64) -> Result<&mut [u8], MemoryError> {
        if self.inner.check(gpa, len).is_err() {
            self.refused.set(self.refused.get() + 1);
        }
        self.inner.slice_mut(gpa, len)
    }
}

/// An address: mostly near RAM (so rings fit or straddle its end), some
/// anywhere.
fn address(raw: u32, far: bool, ram: u64) -> u64 {
    if far {
        u64::from(raw) << 32 | u64::from(raw)
    } else {
        u64::from(raw) % (ram + 64)
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((hdr, ram)) = data.split_first_chunk::<16>() else {
        return;
    };
    let mut ram = ram.to_vec();
    let ram_len = ram.len() as u64;
    let mut m = Watched {
        inner: SliceMemory::new(&mut ram),
        refused: Cell::new(0),
    };
    let word = |i: usize| u32::from_le_bytes([hdr[i], hdr[i + 1], hdr[i + 2], hdr[i + 3]]);
    let flags = hdr[1];
    let mut q = Queue::new(1 << (hdr[0] % 16));
    q.set_desc_table(address(word(4), flags & 1 != 0, ram_len) & !15);
    q.set_avail_ring(address(word(8), flags & 2 != 0, ram_len) & !1);
    q.set_used_ring(address(word(12), flags & 4 != 0, ram_len) & !3);
    q.set_features(flags & 8 != 0, flags & 16 != 0);
    q.enable().expect("a power of two, aligned");
    let _ = q.check_areas(&m);
    for _ in 0..64 {
        let before = m.refused.get();
        let chain = match q.pop(&mut m) {
            Err(_) => return,
            Ok(None) => {
                assert_eq!(
                    m.refused.get(),
                    before,
                    "an empty ring after a refused access"
                );
                return;
            }
            Ok(Some(c)) => c,
        };
        assert_eq!(
            m.refused.get(),
            before,
            "a chain accepted after a refused access"
        );
        let mut total = 0u64;
        for b in chain.buffers(&m) {
            let b = b.expect("RAM did not change: the second walk agrees");
            assert!(m.check(b.gpa, u64::from(b.len)).is_ok());
            total += u64::from(b.len);
        }
        assert_eq!(total, chain.readable_len() + chain.writable_len());
        // Stream copies stay in the chain's buffers.
        let mut buf = [0u8; 64];
        let r = chain
            .read_at(&mut m, u64::from(flags) % 32, &mut buf)
            .unwrap();
        assert!(r as u64 <= chain.readable_len());
        let w = chain.write_at(&mut m, 0, &buf[..r]).unwrap();
        assert!(w as u64 <= chain.writable_len());
        let before = m.refused.get();
        if q.add_used(&mut m, chain.head(), w as u32).is_err() {
            assert!(m.refused.get() > before);
            return;
        }
        let _ = q.needs_notification(&m);
    }
});
