//! The heap: `iced-x86` builds its decoder tables (about 370 KiB) on the
//! first decode and never frees them; nothing else allocates. A bump
//! allocator over a static arena, as the native vmm-server has.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicUsize, Ordering};

const ARENA_SIZE: usize = 1 << 20;

#[repr(C, align(4096))]
struct Arena(UnsafeCell<[u8; ARENA_SIZE]>);

// SAFETY: handed out only in disjoint pieces by `Bump`, whose cursor is atomic.
unsafe impl Sync for Arena {}

static ARENA: Arena = Arena(UnsafeCell::new([0; ARENA_SIZE]));
static USED: AtomicUsize = AtomicUsize::new(0);

struct Bump;

// SAFETY: every block lies inside the arena, aligned as asked, and never
// overlaps another (the cursor only moves forward, by compare-and-swap).
unsafe impl GlobalAlloc for Bump {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let base = ARENA.0.get() as usize;
        let mut used = USED.load(Ordering::Relaxed);
        loop {
            let start = (base + used).next_multiple_of(layout.align()) - base;
            let Some(end) = start
                .checked_add(layout.size())
                .filter(|&e| e <= ARENA_SIZE)
            else {
                return core::ptr::null_mut();
            };
            match USED.compare_exchange(used, end, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return (base + start) as *mut u8,
                Err(now) => used = now,
            }
        }
    }

    unsafe fn dealloc(&self, _ptr: *mut u8, _layout: Layout) {}
}

#[global_allocator]
static ALLOCATOR: Bump = Bump;
