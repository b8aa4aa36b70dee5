//! The vmm-server as a component of its own (milestone 2 of issue 14): the
//! root task loads the `sel4-vmm-server` ELF carried in its payload into a
//! VSpace of its own, builds it a CSpace with exactly the capabilities of
//! `sel4_vmm_server`'s contract and starts its thread.
//!
//! Its VSpace holds the ELF's segments (in fresh frames: code and
//! read-only data mapped read-only), its IPC buffer, a read-only page with
//! its arguments and guest RAM; nothing of the root task's. Its CSpace
//! holds three capabilities: the VCPU (bound to its thread) and two badged
//! endpoint capabilities to the root task, one to report its ending and
//! one seL4 sends its faults to. It gets no capability to a guest-RAM
//! frame, the EPT, an I/O port or a page table: what it may touch is
//! mapped for it.

use sel4_sys::{c, invoke, CPtr};

use sel4_vmm_server::{
    Args, ARGS_MAX, BADGE_FAULT, BADGE_REPORT, CNODE_BITS, GUEST_WINDOW, SLOT_FAULT, SLOT_REPORT,
    SLOT_VCPU,
};

use crate::boot::Allocator;
use crate::vm::{check, kernel, LARGE_PAGE};

/// Below the root task's 255: the root task runs whenever it can.
const PRIORITY: u64 = 254;
const PAGE: u64 = 1 << 12;
/// Where the root task maps a frame of the component's to fill it: PML4
/// slot 2, away from its image and its guest-RAM window.
const SCRATCH: u64 = 0x100_0000_0000;

/// The component's segments must lie in the first GiB (one PDPT and one
/// page directory), above the null page.
const IMAGE_LOW: u64 = 0x1000;
const IMAGE_HIGH: u64 = 1 << 30;

/// One PT_LOAD segment of the component's ELF.
#[derive(Clone, Copy)]
struct Segment<'a> {
    vaddr: u64,
    mem_size: u64,
    data: &'a [u8],
    writable: bool,
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

/// The entry point and PT_LOAD segments of an ELF64 x86-64 executable,
/// every field checked: segments inside the file and inside
/// [`IMAGE_LOW`]..[`IMAGE_HIGH`], page-aligned starts (each page belongs
/// to one segment).
fn parse_elf(file: &[u8]) -> Result<(u64, heapless::Vec<Segment<'_>, 8>), &'static str> {
    if file.get(0..6) != Some(&[0x7f, b'E', b'L', b'F', 2, 1][..])
        || u16_at(file, 18) != Some(0x3e)
        || u16_at(file, 16) != Some(2)
    {
        return Err("is not an ELF64 x86-64 executable");
    }
    let bad = "has bad program headers";
    let entry = u64_at(file, 24).ok_or(bad)?;
    let phoff = u64_at(file, 32).ok_or(bad)? as usize;
    if u16_at(file, 54) != Some(56) {
        return Err(bad);
    }
    let phnum = usize::from(u16_at(file, 56).ok_or(bad)?);
    let mut segments = heapless::Vec::new();
    for i in 0..phnum {
        let h = phoff.checked_add(i * 56).ok_or(bad)?;
        if u32_at(file, h).ok_or(bad)? != 1 {
            continue;
        }
        let flags = u32_at(file, h + 4).ok_or(bad)?;
        let field = |o| u64_at(file, h + o).ok_or(bad);
        let (offset, vaddr, file_size, mem_size) = (field(8)?, field(16)?, field(32)?, field(40)?);
        let data = offset
            .checked_add(file_size)
            .filter(|_| file_size <= mem_size)
            .and_then(|end| file.get(offset as usize..end as usize))
            .ok_or("has a segment outside the file")?;
        let end = vaddr.checked_add(mem_size).ok_or(bad)?;
        if vaddr < IMAGE_LOW || end > IMAGE_HIGH || vaddr % PAGE != 0 {
            return Err("has a segment outside its window or not page-aligned");
        }
        segments
            .push(Segment {
                vaddr,
                mem_size,
                data,
                writable: flags & 2 != 0,
            })
            .map_err(|_| "has more than 8 segments")?;
    }
    if !segments
        .iter()
        .any(|s| s.vaddr <= entry && entry < s.vaddr + s.mem_size)
    {
        return Err("has its entry point outside its segments");
    }
    Ok((entry, segments))
}

/// A fresh 4 KiB frame holding `bytes` (zeros after them), filled through
/// the root task's scratch mapping.
fn filled_frame(alloc: &mut Allocator, bytes: &[u8]) -> CPtr {
    let frame = check("a frame", alloc.object(c::OBJ_X86_4K, c::PAGE_BITS));
    map_page(frame, c::CAP_INIT_THREAD_VSPACE, SCRATCH, c::ALL_RIGHTS);
    let n = bytes.len().min(PAGE as usize);
    // SAFETY: SCRATCH is the fresh frame just mapped read-write (new frames
    // are zeroed by seL4); `n` is at most its size; `bytes` is root-task
    // memory elsewhere.
    unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), SCRATCH as *mut u8, n) };
    kernel("Page_Unmap", invoke(frame, c::X86_PAGE_UNMAP, &[], &[]));
    frame
}

/// What the root task learns from starting the component.
pub struct Started {
    /// The endpoint the component reports and faults to.
    pub endpoint: CPtr,
    /// Pages of its image: read-only, writable.
    pub read_only_pages: u64,
    pub writable_pages: u64,
}

fn map_tables(alloc: &mut Allocator, vspace: CPtr, va: u64, end: u64, leaf: bool) {
    let pdpt = check("PDPT", alloc.object(c::OBJ_X86_PDPT, c::X86_PDPT_BITS));
    kernel(
        "PDPT_Map",
        invoke(
            pdpt,
            c::X86_PDPT_MAP,
            &[vspace],
            &[va, c::X86_DEFAULT_VM_ATTRIBUTES],
        ),
    );
    let pd = check(
        "page directory",
        alloc.object(c::OBJ_X86_PAGE_DIRECTORY, c::X86_PAGE_DIRECTORY_BITS),
    );
    kernel(
        "PageDirectory_Map",
        invoke(
            pd,
            c::X86_PAGE_DIRECTORY_MAP,
            &[vspace],
            &[va, c::X86_DEFAULT_VM_ATTRIBUTES],
        ),
    );
    if !leaf {
        return;
    }
    let mut at = va & !(LARGE_PAGE - 1);
    while at < end {
        let pt = check(
            "page table",
            alloc.object(c::OBJ_X86_PAGE_TABLE, c::X86_PAGE_TABLE_BITS),
        );
        kernel(
            "PageTable_Map",
            invoke(
                pt,
                c::X86_PAGE_TABLE_MAP,
                &[vspace],
                &[at, c::X86_DEFAULT_VM_ATTRIBUTES],
            ),
        );
        at += LARGE_PAGE;
    }
}

fn map_page(frame: CPtr, vspace: CPtr, va: u64, rights: u64) {
    kernel(
        "Page_Map",
        invoke(
            frame,
            c::X86_PAGE_MAP,
            &[vspace],
            &[va, rights, c::X86_DEFAULT_VM_ATTRIBUTES],
        ),
    );
}

/// Loads the vmm-server ELF `elf` as a component around `vcpu` and `ept`
/// and starts it. `ram` are the guest-RAM frames (2 MiB each, from
/// guest-physical 0); the component gets a mapping of each, not the
/// capabilities.
pub fn start_vmm(
    alloc: &mut Allocator,
    elf: &[u8],
    args: &Args,
    ept: CPtr,
    vcpu: CPtr,
    ram: &[CPtr],
) -> Result<Started, &'static str> {
    let (entry, segments) = parse_elf(elf)?;
    let low = segments.iter().map(|s| s.vaddr).min().unwrap_or(IMAGE_LOW);
    let high = segments
        .iter()
        .map(|s| (s.vaddr + s.mem_size).next_multiple_of(PAGE))
        .max()
        .unwrap_or(IMAGE_LOW);
    // The IPC buffer and the argument page follow the last segment.
    let (ipc_va, args_va) = (high, high + PAGE);
    if args_va + PAGE > IMAGE_HIGH {
        return Err("leaves no room for its IPC buffer");
    }

    // The VSpace: a PML4 with an ASID, tables for the image and for the
    // guest-RAM window.
    let pml4 = check("PML4", alloc.object(c::OBJ_X86_PML4, c::X86_PML4_BITS));
    kernel(
        "ASIDPool_Assign for the vmm-server",
        invoke(
            c::CAP_INIT_THREAD_ASID_POOL,
            c::X86_ASID_POOL_ASSIGN,
            &[pml4],
            &[],
        ),
    );
    map_tables(alloc, pml4, low, args_va + PAGE, true);
    map_tables(alloc, pml4, GUEST_WINDOW, GUEST_WINDOW, false);
    map_tables(
        alloc,
        c::CAP_INIT_THREAD_VSPACE,
        SCRATCH,
        SCRATCH + PAGE,
        true,
    );

    // The segments, page by page into fresh frames.
    let (mut read_only_pages, mut writable_pages) = (0, 0);
    for s in &segments {
        let mut off = 0;
        while off < s.mem_size {
            let bytes = s.data.get(off as usize..).unwrap_or(&[]);
            let frame = filled_frame(alloc, bytes);
            let rights = if s.writable {
                writable_pages += 1;
                c::ALL_RIGHTS
            } else {
                read_only_pages += 1;
                c::CAN_READ
            };
            map_page(frame, pml4, s.vaddr + off, rights);
            off += PAGE;
        }
    }
    let ipc_frame = filled_frame(alloc, &[]);
    map_page(ipc_frame, pml4, ipc_va, c::ALL_RIGHTS);
    let mut page = [0u8; 8 + ARGS_MAX];
    let len = postcard::to_slice(args, &mut page[8..])
        .map_err(|_| "arguments do not encode")?
        .len();
    page[..8].copy_from_slice(&(len as u64).to_le_bytes());
    let args_frame = filled_frame(alloc, &page);
    map_page(args_frame, pml4, args_va, c::CAN_READ);
    for (i, &frame) in ram.iter().enumerate() {
        let copy = check("a copy of a guest-RAM capability", alloc.copy(frame));
        map_page(
            copy,
            pml4,
            GUEST_WINDOW + i as u64 * LARGE_PAGE,
            c::ALL_RIGHTS,
        );
    }
    // The CSpace: the VCPU and the two endpoint capabilities.
    let cnode = check(
        "CNode",
        alloc.object_sized(c::OBJ_CNODE, CNODE_BITS, CNODE_BITS + c::SLOT_BITS),
    );
    let endpoint = check("endpoint", alloc.object(c::OBJ_ENDPOINT, c::ENDPOINT_BITS));
    // seL4_CNode_Copy(dest cnode, index, depth, src root, src, depth, rights)
    kernel(
        "CNode_Copy of the VCPU",
        invoke(
            cnode,
            c::CNODE_COPY,
            &[c::CAP_INIT_THREAD_CNODE],
            &[SLOT_VCPU, CNODE_BITS, vcpu, c::WORD_BITS, c::ALL_RIGHTS],
        ),
    );
    for (slot, badge) in [(SLOT_REPORT, BADGE_REPORT), (SLOT_FAULT, BADGE_FAULT)] {
        // Send and be replied to (a fault needs the reply right), not receive.
        kernel(
            "CNode_Mint of an endpoint",
            invoke(
                cnode,
                c::CNODE_MINT,
                &[c::CAP_INIT_THREAD_CNODE],
                &[
                    slot,
                    CNODE_BITS,
                    endpoint,
                    c::WORD_BITS,
                    c::CAN_WRITE_GRANT_REPLY,
                    badge,
                ],
            ),
        );
    }

    // The thread: its fault endpoint is a slot of its own CSpace; the
    // CNode's guard (64 - 4 bits of zeros, seL4_CNode_CapData's guard
    // size in bits 5:0) makes a capability address resolve in one level.
    let tcb = check("TCB", alloc.object(c::OBJ_TCB, c::TCB_BITS));
    let guard = c::WORD_BITS - CNODE_BITS;
    kernel(
        "TCB_Configure",
        invoke(
            tcb,
            c::TCB_CONFIGURE,
            &[cnode, pml4, ipc_frame],
            &[SLOT_FAULT, guard, 0, ipc_va],
        ),
    );
    kernel(
        "TCB_SetPriority",
        invoke(
            tcb,
            c::TCB_SET_PRIORITY,
            &[c::CAP_INIT_THREAD_TCB],
            &[PRIORITY],
        ),
    );
    kernel(
        "TCB_SetEPTRoot",
        invoke(tcb, c::TCB_SET_EPT_ROOT, &[ept], &[]),
    );
    kernel(
        "VCPU_SetTCB",
        invoke(vcpu, c::X86_VCPU_SET_TCB, &[tcb], &[]),
    );
    // seL4_TCB_WriteRegisters(resume, flags, count 9: RIP, RSP, RFLAGS,
    // RAX, RBX, RCX, RDX, RSI, RDI): the component sets its own stack.
    kernel(
        "TCB_WriteRegisters",
        invoke(
            tcb,
            c::TCB_WRITE_REGISTERS,
            &[],
            &[1, 9, entry, 0, 0, 0, 0, 0, 0, ipc_va, args_va],
        ),
    );
    Ok(Started {
        endpoint,
        read_only_pages,
        writable_pages,
    })
}
