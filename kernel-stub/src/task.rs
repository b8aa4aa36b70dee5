//! Ring-3 servers: each gets its own address space built from its ELF file
//! and the fixed layout of `stub_abi::layout`.

use crate::memory::{
    self, OutOfMemory, PAGE, PTE_LARGE, PTE_NX, PTE_PRESENT, PTE_USER, PTE_WRITABLE,
};
use kernel_stub::elf::{Elf, ElfError};
use stub_abi::layout::{
    BOOT_INFO_PAGE, CHANNEL_PAGE_BASE, GUEST_RAM_WINDOW, INSTALL_PAGE, STACK_SIZE, STACK_TOP,
    VCPU_PAGE,
};

/// A loaded server's address space and entry point.
pub struct Task {
    /// Root of its page tables.
    pub root: u64,
    pub entry: u64,
}

pub enum LoadError {
    Elf(ElfError),
    OutOfMemory,
    SharedPage(u64),
    /// A page of the image or the stack is not mapped (a restart).
    Missing(u64),
}

impl From<OutOfMemory> for LoadError {
    fn from(_: OutOfMemory) -> Self {
        Self::OutOfMemory
    }
}

impl core::fmt::Display for LoadError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Elf(e) => f.write_str(e.describe()),
            Self::OutOfMemory => f.write_str("out of memory while loading it"),
            Self::SharedPage(va) => write!(f, "two segments share the page at {va:#x}"),
            Self::Missing(va) => write!(f, "its page at {va:#x} is not mapped"),
        }
    }
}

/// The shared pages a task gets besides its own image and stack, by
/// physical address; what a task gets follows from its rights.
pub struct SharedMaps<'a> {
    pub boot_info: u64,
    pub vcpu_page: Option<u64>,
    pub install_page: Option<u64>,
    /// Guest RAM (physical base, bytes, writable), mapped at `GUEST_RAM_WINDOW`.
    pub guest_ram: Option<(u64, u64, bool)>,
    /// (channel number, page) for every channel the task is an end of.
    pub channels: &'a [(usize, u64)],
}

const USER_TABLE: u64 = PTE_PRESENT | PTE_WRITABLE | PTE_USER;

/// Writes the bytes of `seg` that fall into the page at `page` into
/// `frame`; the rest of the frame is zero. `frame` must be a frame of the
/// stub's (identity-mapped) that no one else uses now.
fn fill_page(seg: &kernel_stub::elf::Segment, page: u64, frame: u64) {
    // SAFETY: per the contract, `frame` is a whole identity-mapped frame.
    unsafe { core::ptr::write_bytes(frame as *mut u8, 0, kernel_stub::usize_from(PAGE)) };
    // The part of the file bytes that falls into this page.
    let from = page.max(seg.vaddr);
    let to = (page + PAGE).min(seg.vaddr + seg.data.len() as u64);
    if from < to {
        let src = &seg.data
            [kernel_stub::usize_from(from - seg.vaddr)..kernel_stub::usize_from(to - seg.vaddr)];
        // SAFETY: as above; the copy stays inside the frame because
        // `from..to` lies inside `page..page+PAGE`.
        unsafe {
            core::ptr::copy_nonoverlapping(
                src.as_ptr(),
                (frame + (from - page)) as *mut u8,
                src.len(),
            )
        };
    }
}

/// Restarts a server in its own address space `root` (built by [`load`]
/// from the same `file`): its writable segments copied again from the
/// file into their frames, the rest of them and the stack zeroed. The
/// shared pages stay as they are. Returns its entry point.
pub fn reload(file: &[u8], root: u64) -> Result<u64, LoadError> {
    let elf = Elf::parse(file).map_err(LoadError::Elf)?;
    let frame_of = |va| memory::lookup(root, va).map(|pte| pte & memory::PTE_ADDR);
    for seg in elf.segments().filter(|s| s.writable) {
        let first = seg.vaddr & !(PAGE - 1);
        for page in (first..seg.vaddr + seg.mem_size).step_by(kernel_stub::usize_from(PAGE)) {
            let frame = frame_of(page).ok_or(LoadError::Missing(page))?;
            fill_page(&seg, page, frame);
        }
    }
    for page in (STACK_TOP - STACK_SIZE..STACK_TOP).step_by(kernel_stub::usize_from(PAGE)) {
        let frame = frame_of(page).ok_or(LoadError::Missing(page))?;
        // SAFETY: a stack frame of this task's, identity-mapped; the task
        // does not run.
        unsafe { core::ptr::write_bytes(frame as *mut u8, 0, kernel_stub::usize_from(PAGE)) };
    }
    Ok(elf.entry)
}

/// Builds a server's address space: its ELF segments, a stack, and the
/// shared pages of `maps` at the addresses of `stub_abi::layout`.
pub fn load(file: &[u8], maps: &SharedMaps) -> Result<Task, LoadError> {
    let elf = Elf::parse(file).map_err(LoadError::Elf)?;
    let root = memory::new_address_space()?;
    let nx = if crate::cpu::nx_enabled() { PTE_NX } else { 0 };
    let map = |va, pa, flags| memory::map(root, va, pa, flags, USER_TABLE);

    for seg in elf.segments() {
        let first = seg.vaddr & !(PAGE - 1);
        let end = seg.vaddr + seg.mem_size; // checked against the window by `Elf::parse`
        let mut flags = PTE_PRESENT | PTE_USER;
        if seg.writable {
            flags |= PTE_WRITABLE;
        }
        if !seg.executable {
            flags |= nx;
        }
        for page in (first..end).step_by(kernel_stub::usize_from(PAGE)) {
            if memory::lookup(root, page).is_some() {
                return Err(LoadError::SharedPage(page));
            }
            let frame = memory::alloc_frame()?;
            fill_page(&seg, page, frame);
            map(page, frame, flags)?;
        }
    }

    let data = PTE_PRESENT | PTE_USER | PTE_WRITABLE | nx;
    for page in (STACK_TOP - STACK_SIZE..STACK_TOP).step_by(kernel_stub::usize_from(PAGE)) {
        map(page, memory::alloc_frame()?, data)?;
    }
    map(BOOT_INFO_PAGE, maps.boot_info, PTE_PRESENT | PTE_USER | nx)?;
    if let Some(pa) = maps.vcpu_page {
        map(VCPU_PAGE, pa, data)?;
    }
    if let Some(pa) = maps.install_page {
        map(INSTALL_PAGE, pa, data)?;
    }
    for &(n, pa) in maps.channels {
        map(CHANNEL_PAGE_BASE + n as u64 * PAGE, pa, data)?;
    }
    if let Some((base, bytes, writable)) = maps.guest_ram {
        let flags = if writable { data } else { data & !PTE_WRITABLE };
        for off in (0..bytes).step_by(kernel_stub::usize_from(memory::LARGE_PAGE)) {
            map(GUEST_RAM_WINDOW + off, base + off, flags | PTE_LARGE)?;
        }
    }
    Ok(Task {
        root,
        entry: elf.entry,
    })
}
