//! The boot information seL4 hands the root task, and the allocation of
//! kernel objects from its untyped memory into its empty CSpace slots.

use sel4_sys::{c, invoke, CPtr, Error};

/// The parts of `seL4_BootInfo` the root task uses (offsets generated from
/// the installed headers).
pub struct BootInfo {
    base: *const u8,
}

impl BootInfo {
    /// # Safety
    /// `base` is the boot information seL4 passed in RDI.
    pub unsafe fn new(base: *const u8) -> Self {
        Self { base }
    }

    fn word(&self, offset: u64) -> u64 {
        // SAFETY: seL4 maps the boot information frame read-only for the
        // root task; the offsets come from the kernel's own headers.
        unsafe { (self.base.add(offset as usize) as *const u64).read_volatile() }
    }

    fn byte(&self, offset: u64) -> u8 {
        // SAFETY: as for `word`.
        unsafe { self.base.add(offset as usize).read_volatile() }
    }

    /// `ipcBuffer`.
    pub fn ipc_buffer(&self) -> *mut u8 {
        self.word(c::BI_IPC_BUFFER) as *mut u8
    }

    /// The TSC rate in Hz from the extra boot information
    /// (`SEL4_BOOTINFO_HEADER_X86_TSC_FREQ`, in MHz), 0 if absent.
    pub fn tsc_hz(&self) -> u64 {
        let extra = c::BOOTINFO_FRAME_SIZE;
        let end = extra + self.word(c::BI_EXTRA_LEN);
        let mut at = extra;
        while at + c::BOOTINFO_HEADER_SIZE <= end {
            let id = self.word(at + c::BOOTINFO_HEADER_ID);
            let len = self.word(at + c::BOOTINFO_HEADER_LEN);
            if id == c::BOOTINFO_HEADER_X86_TSC_FREQ && len >= c::BOOTINFO_HEADER_SIZE + 4 {
                // SAFETY: inside the extra boot information seL4 mapped
                // after the frame (`extraLen` bytes).
                let mhz = unsafe {
                    (self.base.add((at + c::BOOTINFO_HEADER_SIZE) as usize) as *const u32)
                        .read_unaligned()
                };
                return u64::from(mhz) * 1_000_000;
            }
            if len == 0 {
                break;
            }
            at += len;
        }
        0
    }

    /// `empty`: the free slots of the root CNode.
    pub fn empty(&self) -> (u64, u64) {
        (
            self.word(c::BI_EMPTY + c::SLOT_REGION_START),
            self.word(c::BI_EMPTY + c::SLOT_REGION_END),
        )
    }

    /// `untyped` and `untypedList`: (cap, physical address, size bits, device).
    pub fn untypeds(&self) -> impl Iterator<Item = (CPtr, u64, u8, bool)> + '_ {
        let start = self.word(c::BI_UNTYPED + c::SLOT_REGION_START);
        let end = self.word(c::BI_UNTYPED + c::SLOT_REGION_END);
        (start..end).map(move |cap| {
            let d = c::BI_UNTYPED_LIST + (cap - start) * c::UNTYPED_DESC_SIZE;
            (
                cap,
                self.word(d + c::UNTYPED_DESC_PADDR),
                self.byte(d + c::UNTYPED_DESC_SIZE_BITS),
                self.byte(d + c::UNTYPED_DESC_IS_DEVICE) != 0,
            )
        })
    }
}

/// Most untyped capabilities tracked.
const MAX_UNTYPED: usize = 256;

/// Hands out objects from RAM untypeds, tracking each untyped's watermark
/// as the kernel does (an object starts at the watermark rounded up to its
/// size), and CSpace slots from the empty region.
pub struct Allocator {
    untyped: heapless::Vec<(CPtr, u8, u64), MAX_UNTYPED>,
    next_slot: u64,
    end_slot: u64,
    /// Bytes of RAM untypeds at boot.
    pub ram_bytes: u64,
}

/// Why an allocation failed.
#[derive(Clone, Copy, Debug)]
pub enum AllocError {
    /// No untyped has room for an object of this many bits.
    NoMemory(u64),
    /// The root CNode has no empty slot left.
    NoSlot,
    /// The kernel refused the retype.
    Kernel(Error),
}

impl core::fmt::Display for AllocError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoMemory(bits) => {
                write!(f, "no untyped memory left for a 2^{bits}-byte object")
            }
            Self::NoSlot => f.write_str("the root CNode has no empty slot left"),
            Self::Kernel(e) => write!(f, "seL4 refused Untyped_Retype: error {}", e.code),
        }
    }
}

impl Allocator {
    /// From the boot information: every non-device untyped, smallest first
    /// (so that small objects do not split the large blocks).
    pub fn new(bi: &BootInfo) -> Self {
        let mut untyped = heapless::Vec::new();
        let mut ram_bytes = 0;
        for (cap, _paddr, bits, device) in bi.untypeds() {
            if !device {
                ram_bytes += 1u64 << bits;
                let _ = untyped.push((cap, bits, 0u64));
            }
        }
        untyped.sort_unstable_by_key(|&(_, bits, _)| bits);
        let (next_slot, end_slot) = bi.empty();
        Self {
            untyped,
            next_slot,
            end_slot,
            ram_bytes,
        }
    }

    /// Keeps the last `n` empty slots out of the allocator's reach.
    pub fn reserve_top(&mut self, n: u64) {
        self.end_slot = self.end_slot.saturating_sub(n).max(self.next_slot);
    }

    /// A free slot.
    pub fn slot(&mut self) -> Result<CPtr, AllocError> {
        if self.next_slot >= self.end_slot {
            return Err(AllocError::NoSlot);
        }
        self.next_slot += 1;
        Ok(self.next_slot - 1)
    }

    /// Retypes one object of `object_type`, `bits` bytes large (log2), into
    /// a fresh slot.
    pub fn object(&mut self, object_type: u64, bits: u64) -> Result<CPtr, AllocError> {
        self.object_sized(object_type, 0, bits)
    }

    /// Retypes one object whose size the type leaves open (a CNode:
    /// `size_arg` its radix bits), `bits` bytes large (log2).
    pub fn object_sized(
        &mut self,
        object_type: u64,
        size_arg: u64,
        bits: u64,
    ) -> Result<CPtr, AllocError> {
        let slot = self.slot()?;
        let size = 1u64 << bits;
        for (cap, ut_bits, used) in self.untyped.iter_mut() {
            if u64::from(*ut_bits) < bits {
                continue;
            }
            let start = used.next_multiple_of(size);
            if start + size > 1u64 << *ut_bits {
                continue;
            }
            // seL4_Untyped_Retype(ut, type, size_bits, root, index, depth, offset, n)
            invoke(
                *cap,
                c::UNTYPED_RETYPE,
                &[c::CAP_INIT_THREAD_CNODE],
                &[object_type, size_arg, 0, 0, slot, 1],
            )
            .map_err(AllocError::Kernel)?;
            *used = start + size;
            return Ok(slot);
        }
        Err(AllocError::NoMemory(bits))
    }

    /// A copy of the capability in `src` (all rights) in a fresh slot.
    pub fn copy(&mut self, src: CPtr) -> Result<CPtr, AllocError> {
        let dest = self.slot()?;
        // seL4_CNode_Copy(root, dest, depth, src_root, src, depth, rights)
        invoke(
            c::CAP_INIT_THREAD_CNODE,
            c::CNODE_COPY,
            &[c::CAP_INIT_THREAD_CNODE],
            &[dest, c::WORD_BITS, src, c::WORD_BITS, c::ALL_RIGHTS],
        )
        .map_err(AllocError::Kernel)?;
        Ok(dest)
    }
}
