//! Physical frames and the page tables the stub builds: each server's own
//! address space (the guest's tables, shadow or nested, are the
//! mmu-server's, written through `install`).
//!
//! The stub identity-maps the first GiB (supervisor-only) in every address
//! space, so it reaches every frame it owns by its physical address.

use crate::cpu::KernelCell;

pub const PAGE: u64 = 4096;
pub const LARGE_PAGE: u64 = 2 << 20;
/// Frames are handed out below this line: the identity map ends here.
pub const IDENTITY_MAP_END: u64 = 1 << 30;

pub const PTE_PRESENT: u64 = 1 << 0;
pub const PTE_WRITABLE: u64 = 1 << 1;
pub const PTE_USER: u64 = 1 << 2;
pub const PTE_LARGE: u64 = 1 << 7;
pub const PTE_NX: u64 = 1 << 63;
pub const PTE_ADDR: u64 = 0x000f_ffff_ffff_f000;

/// A bump allocator: the stub's memory is static, nothing is ever freed.
struct Frames {
    next: u64,
    end: u64,
}

static FRAMES: KernelCell<Frames> = KernelCell::new(Frames { next: 0, end: 0 });

/// Out of physical memory: reported, never a panic.
#[derive(Debug)]
pub struct OutOfMemory;

/// Hands out `[start, end)` from now on.
pub fn init(start: u64, end: u64) {
    FRAMES.with(|f| {
        f.next = start.next_multiple_of(PAGE);
        f.end = end.min(IDENTITY_MAP_END);
    });
}

/// `count` contiguous zeroed frames aligned to `align` bytes.
pub fn alloc(count: u64, align: u64) -> Result<u64, OutOfMemory> {
    let addr = FRAMES.with(|f| {
        let start = f.next.next_multiple_of(align);
        let end = start
            .checked_add(count * PAGE)
            .filter(|&e| e <= f.end)
            .ok_or(OutOfMemory)?;
        f.next = end;
        Ok(start)
    })?;
    // SAFETY: the range is free RAM inside the identity map that nothing else uses.
    unsafe { core::ptr::write_bytes(addr as *mut u8, 0, kernel_stub::usize_from(count * PAGE)) };
    Ok(addr)
}

pub fn alloc_frame() -> Result<u64, OutOfMemory> {
    alloc(1, PAGE)
}

/// A page table, reached through the identity map.
fn table(phys: u64) -> &'static mut [u64; 512] {
    // SAFETY: `phys` is a frame the stub allocated for a page table (below
    // IDENTITY_MAP_END, page-aligned), used by no one else.
    unsafe { &mut *(phys as *mut [u64; 512]) }
}

/// The entry for `va` at the level whose index starts at bit `shift`,
/// creating the next table down when `create` is set.
fn next_table(parent: u64, va: u64, shift: u32, intermediate: u64) -> Result<u64, OutOfMemory> {
    let e = &mut table(parent)[((va >> shift) & 511) as usize];
    if *e & PTE_PRESENT == 0 {
        *e = alloc_frame()? | intermediate;
    }
    Ok(*e & PTE_ADDR)
}

/// Maps `va` to `pa` in the four-level table at `root`: a 4 KiB page, or a
/// 2 MiB page when `flags` has `PTE_LARGE`. Intermediate entries get
/// `intermediate`; the leaf decides the access rights.
pub fn map(root: u64, va: u64, pa: u64, flags: u64, intermediate: u64) -> Result<(), OutOfMemory> {
    let pdpt = next_table(root, va, 39, intermediate)?;
    let pd = next_table(pdpt, va, 30, intermediate)?;
    if flags & PTE_LARGE != 0 {
        table(pd)[((va >> 21) & 511) as usize] = pa | flags;
        return Ok(());
    }
    let pt = next_table(pd, va, 21, intermediate)?;
    table(pt)[((va >> 12) & 511) as usize] = pa | flags;
    Ok(())
}

/// The leaf entry mapping `va`, if any (4 KiB or 2 MiB leaves).
pub fn lookup(root: u64, va: u64) -> Option<u64> {
    let mut t = root;
    for shift in [39, 30, 21, 12] {
        let e = table(t)[((va >> shift) & 511) as usize];
        if e & PTE_PRESENT == 0 {
            return None;
        }
        if shift == 12 || (shift == 21 && e & PTE_LARGE != 0) {
            return Some(e);
        }
        t = e & PTE_ADDR;
    }
    None
}

/// Whether ring 3 may access `[va, va + len)` (`write`: for writing) in the
/// address space `root`. Every level must allow it, as the CPU checks.
pub fn user_range_ok(root: u64, va: u64, len: u64, write: bool) -> bool {
    let Some(end) = va.checked_add(len) else {
        return false;
    };
    let mut page = va & !(PAGE - 1);
    while page < end {
        let mut t = root;
        let mut ok = false;
        for shift in [39, 30, 21, 12] {
            let e = table(t)[((page >> shift) & 511) as usize];
            if e & PTE_PRESENT == 0 || e & PTE_USER == 0 || (write && e & PTE_WRITABLE == 0) {
                break;
            }
            if shift == 12 || (shift == 21 && e & PTE_LARGE != 0) {
                ok = true;
                break;
            }
            t = e & PTE_ADDR;
        }
        if !ok {
            return false;
        }
        page += PAGE;
    }
    true
}

extern "C" {
    /// The boot page directory: 0..1 GiB identity, 2 MiB supervisor pages.
    static boot_pd: [u64; 512];
    /// The boot page-directory-pointer table (`boot.rs`).
    static mut boot_pdpt: [u64; 512];
}

/// The local APIC's registers, at their reset address (IA32_APIC_BASE).
pub const LAPIC: u64 = 0xfee0_0000;
/// The 1 GiB slot (3..4 GiB) whose page directory maps [`LAPIC`] in every
/// address space: no server's mapping reaches it.
const LAPIC_SLOT: usize = 3;
const _: () = assert!(
    stub_abi::layout::GUEST_RAM_WINDOW + (512 << 20) <= (LAPIC_SLOT as u64) << 30
        && LAPIC >> 30 == LAPIC_SLOT as u64
);
const PTE_PWT: u64 = 1 << 3;
const PTE_PCD: u64 = 1 << 4;

#[repr(C, align(4096))]
struct Table([u64; 512]);

/// One uncached supervisor 2 MiB page: [`LAPIC`]'s.
static mut LAPIC_PD: Table = Table([0; 512]);

/// Maps the local APIC's registers (supervisor-only, uncached) in the boot
/// page tables and, from now on, in every new address space.
pub fn map_lapic() {
    // SAFETY: called once, by the boot CPU before it starts the others and
    // before any address space exists: nothing else reads or writes these
    // tables now. The PDPT slot was not present, so no TLB holds it.
    unsafe {
        let pd = &raw mut LAPIC_PD;
        (*pd).0[kernel_stub::usize_from((LAPIC >> 21) & 511)] =
            LAPIC | PTE_PRESENT | PTE_WRITABLE | PTE_LARGE | PTE_PCD | PTE_PWT;
        let pdpt = &raw mut boot_pdpt;
        (*pdpt)[LAPIC_SLOT] = pd as u64 | PTE_PRESENT | PTE_WRITABLE;
    }
}

/// A new address space: the stub's identity map (supervisor-only) plus
/// whatever ring-3 mappings the caller adds above 1 GiB.
pub fn new_address_space() -> Result<u64, OutOfMemory> {
    let root = alloc_frame()?;
    let pdpt = alloc_frame()?;
    table(root)[0] = pdpt | PTE_PRESENT | PTE_WRITABLE | PTE_USER;
    let pd = (&raw const boot_pd) as u64;
    table(pdpt)[0] = pd | PTE_PRESENT | PTE_WRITABLE;
    table(pdpt)[LAPIC_SLOT] = (&raw const LAPIC_PD) as u64 | PTE_PRESENT | PTE_WRITABLE;
    Ok(root)
}
