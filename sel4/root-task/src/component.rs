//! The servers as components of their own (milestone 2 of issue 14): the
//! root task loads the `sel4-mmu-server` and `sel4-vmm-server` ELFs carried
//! in its payload, each into a VSpace of its own, builds each a CSpace
//! with the capabilities its manifest rights give it (`rights::plan`), in
//! the slots of its contract (the crates' libs), and starts its thread.
//!
//! A VSpace holds the ELF's segments (in fresh frames: code and read-only
//! data mapped read-only), the IPC buffer, a read-only page with the
//! arguments and, for the vmm-server, guest RAM; nothing of the root
//! task's. With the rights every image gives the two servers, the
//! vmm-server's CSpace holds four capabilities: the VCPU
//! (bound to its thread), two badged endpoint capabilities to the root
//! task, one to report its ending and one seL4 sends its faults to, and a
//! send capability to the mmu-server's endpoint for its EPT violations; it
//! gets no capability to a guest-RAM frame, the EPT, an I/O port or a page
//! table: what it may touch is mapped for it. The mmu-server's holds the
//! EPT objects and the guest-RAM frames, which it maps with `Page_MapEPT`
//! as EPT violations ask, the receive side of its endpoint and the same
//! two endpoint capabilities to the root task.

use ipc_proto::manifest::GuestRam;
use sel4_root_task::rights::Caps;
use sel4_sys::{c, invoke, CPtr};

use sel4_vmm_server::GUEST_WINDOW;

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

/// A component loaded and configured, not yet running.
pub struct Loaded {
    /// Its thread and its CNode (in the root task's CSpace).
    pub tcb: CPtr,
    cnode: CPtr,
    cnode_bits: u64,
    entry: u64,
    ipc_va: u64,
    args_va: u64,
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

/// Maps the page tables of the root task's scratch page (once, before the
/// first `load`).
pub fn map_scratch(alloc: &mut Allocator) {
    map_tables(
        alloc,
        c::CAP_INIT_THREAD_VSPACE,
        SCRATCH,
        SCRATCH + PAGE,
        true,
    );
}

/// Loads the component ELF `elf` into a VSpace of its own with its
/// arguments `args` (postcard) in a read-only page and `ram` (2 MiB
/// frames, from guest-physical 0) mapped at [`GUEST_WINDOW`] as
/// `ram_right` says, and configures its thread: an empty CNode of
/// 2^`cnode_bits` slots as its CSpace, `fault_slot` its fault endpoint.
/// [`grant`] fills the CNode, [`resume`] starts it.
pub fn load(
    alloc: &mut Allocator,
    elf: &[u8],
    args: &[u8],
    (ram, ram_right): (&[CPtr], GuestRam),
    cnode_bits: u64,
    fault_slot: CPtr,
) -> Result<Loaded, &'static str> {
    let (ram, ram_rights) = match ram_right {
        GuestRam::None => (&[][..], 0),
        GuestRam::ReadOnly => (ram, c::CAN_READ),
        GuestRam::ReadWrite => (ram, c::ALL_RIGHTS),
    };
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
    if args.len() + 8 > PAGE as usize {
        return Err("has arguments longer than a page");
    }

    // The VSpace: a PML4 with an ASID, tables for the image and for the
    // guest-RAM window.
    let pml4 = check("PML4", alloc.object(c::OBJ_X86_PML4, c::X86_PML4_BITS));
    kernel(
        "ASIDPool_Assign for a component",
        invoke(
            c::CAP_INIT_THREAD_ASID_POOL,
            c::X86_ASID_POOL_ASSIGN,
            &[pml4],
            &[],
        ),
    );
    map_tables(alloc, pml4, low, args_va + PAGE, true);

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
    let mut page = [0u8; PAGE as usize];
    page[..8].copy_from_slice(&(args.len() as u64).to_le_bytes());
    page[8..8 + args.len()].copy_from_slice(args);
    let args_frame = filled_frame(alloc, &page);
    map_page(args_frame, pml4, args_va, c::CAN_READ);
    if !ram.is_empty() {
        map_tables(alloc, pml4, GUEST_WINDOW, GUEST_WINDOW, false);
    }
    for (i, &frame) in ram.iter().enumerate() {
        let copy = check("a copy of a guest-RAM capability", alloc.copy(frame));
        map_page(copy, pml4, GUEST_WINDOW + i as u64 * LARGE_PAGE, ram_rights);
    }

    // The thread: its fault endpoint is a slot of its own CSpace; the
    // CNode's guard (zeros, 64 - cnode_bits of them: seL4_CNode_CapData's
    // guard size in bits 5:0) makes a capability address resolve in one
    // level and every larger one fail.
    let cnode = check(
        "CNode",
        alloc.object_sized(c::OBJ_CNODE, cnode_bits, cnode_bits + c::SLOT_BITS),
    );
    let tcb = check("TCB", alloc.object(c::OBJ_TCB, c::TCB_BITS));
    let guard = c::WORD_BITS - cnode_bits;
    kernel(
        "TCB_Configure",
        invoke(
            tcb,
            c::TCB_CONFIGURE,
            &[cnode, pml4, ipc_frame],
            &[fault_slot, guard, 0, ipc_va],
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
    Ok(Loaded {
        tcb,
        cnode,
        cnode_bits,
        entry,
        ipc_va,
        args_va,
        read_only_pages,
        writable_pages,
    })
}

/// How a capability goes into a component's CSpace.
#[derive(Clone, Copy)]
pub enum How {
    /// A copy with these rights.
    Copy(u64),
    /// A copy with these rights and this badge (endpoints).
    Mint(u64, u64),
    /// The capability itself: the root task keeps none.
    Move,
}

/// Puts the root task's capability `src` into `slot` of the component's
/// CSpace.
pub fn grant(l: &Loaded, slot: CPtr, src: CPtr, how: How) {
    let root = c::CAP_INIT_THREAD_CNODE;
    let depth = l.cnode_bits;
    // seL4_CNode_Copy/Mint/Move(dest cnode, index, depth, src root, src,
    // depth[, rights[, badge]])
    let r = match how {
        How::Copy(rights) => invoke(
            l.cnode,
            c::CNODE_COPY,
            &[root],
            &[slot, depth, src, c::WORD_BITS, rights],
        ),
        How::Mint(rights, badge) => invoke(
            l.cnode,
            c::CNODE_MINT,
            &[root],
            &[slot, depth, src, c::WORD_BITS, rights, badge],
        ),
        How::Move => invoke(
            l.cnode,
            c::CNODE_MOVE,
            &[root],
            &[slot, depth, src, c::WORD_BITS],
        ),
    };
    kernel("a capability for a component", r);
}

/// Starts the component: `TCB_WriteRegisters` (resume, count 9: RIP, RSP,
/// RFLAGS, RAX, RBX, RCX, RDX, RSI, RDI) with RIP its entry, RDI its
/// argument page and RSI its IPC buffer; it sets its own stack.
pub fn resume(l: &Loaded) {
    kernel(
        "TCB_WriteRegisters",
        invoke(
            l.tcb,
            c::TCB_WRITE_REGISTERS,
            &[],
            &[1, 9, l.entry, 0, 0, 0, 0, 0, 0, l.ipc_va, l.args_va],
        ),
    );
}

/// The vmm-server component (`sel4_vmm_server`'s contract): its ELF with
/// `args`, two badged capabilities to the root task's endpoint and what
/// `caps` (its rights) say: guest RAM mapped, the VCPU bound to its thread
/// with `ept` its EPT root, a send capability to the mmu-server's endpoint
/// (`endpoints`). Not started: [`resume`] it once the EPT's tables are in
/// place.
#[allow(clippy::too_many_arguments)]
pub fn start_vmm(
    alloc: &mut Allocator,
    elf: &[u8],
    args: &sel4_vmm_server::Args,
    caps: &Caps,
    [endpoint, exits]: [CPtr; 2],
    ept: CPtr,
    vcpu: CPtr,
    ram: &[CPtr],
) -> Result<Loaded, &'static str> {
    use sel4_vmm_server as v;
    let mut buf = [0u8; v::ARGS_MAX];
    let args = postcard::to_slice(args, &mut buf).map_err(|_| "arguments do not encode")?;
    let l = load(
        alloc,
        elf,
        args,
        (ram, caps.guest_ram),
        v::CNODE_BITS,
        v::SLOT_FAULT,
    )?;
    // Send and be replied to (a fault needs the reply right), not receive.
    let send = c::CAN_WRITE_GRANT_REPLY;
    grant(
        &l,
        v::SLOT_REPORT,
        endpoint,
        How::Mint(send, v::BADGE_REPORT),
    );
    grant(&l, v::SLOT_FAULT, endpoint, How::Mint(send, v::BADGE_FAULT));
    if caps.mmu_endpoint {
        grant(
            &l,
            v::SLOT_MMU,
            exits,
            How::Mint(send, sel4_mmu_server::BADGE_VMM),
        );
    }
    if caps.vcpu {
        grant(&l, v::SLOT_VCPU, vcpu, How::Copy(c::ALL_RIGHTS));
        // seL4 keeps a derived copy of the PML4 capability in the thread
        // (`performSetEPTRoot`), so the original can move to the mmu-server.
        kernel(
            "TCB_SetEPTRoot",
            invoke(l.tcb, c::TCB_SET_EPT_ROOT, &[ept], &[]),
        );
        kernel(
            "VCPU_SetTCB",
            invoke(vcpu, c::X86_VCPU_SET_TCB, &[l.tcb], &[]),
        );
    }
    Ok(l)
}

/// The mmu-server component (`sel4_mmu_server`'s contract): its ELF, two
/// badged capabilities to the root task's `endpoint` and what `caps` (its
/// rights) say: the EPT's PML4 (bound to the vmm-server's thread already),
/// PDPT and page directory and the guest-RAM frames, the endpoint the
/// vmm-server's EPT violations come on (`exits`), all moved: the root task
/// keeps none. Started: it puts the EPT's tables together, reports and
/// serves the EPT violations.
pub fn start_mmu(
    alloc: &mut Allocator,
    elf: &[u8],
    caps: &Caps,
    [endpoint, exits]: [CPtr; 2],
    ept: [CPtr; 3],
    ram: &[CPtr],
) -> Result<Loaded, &'static str> {
    use sel4_mmu_server as m;
    let args = m::Args {
        frames: if caps.ept { ram.len() as u64 } else { 0 },
    };
    let mut buf = [0u8; m::ARGS_MAX];
    let args = postcard::to_slice(&args, &mut buf).map_err(|_| "arguments do not encode")?;
    if ram.len() as u64 > (1 << m::CNODE_BITS) - m::SLOT_FRAMES {
        return Err("gets more frames than its CNode holds");
    }
    let l = load(
        alloc,
        elf,
        args,
        (ram, caps.guest_ram),
        m::CNODE_BITS,
        m::SLOT_FAULT,
    )?;
    let send = c::CAN_WRITE_GRANT_REPLY;
    grant(
        &l,
        m::SLOT_REPORT,
        endpoint,
        How::Mint(send, m::BADGE_REPORT),
    );
    grant(&l, m::SLOT_FAULT, endpoint, How::Mint(send, m::BADGE_FAULT));
    if caps.ept {
        grant(&l, m::SLOT_EPT_PML4, ept[0], How::Move);
        grant(&l, m::SLOT_EPT_PDPT, ept[1], How::Move);
        grant(&l, m::SLOT_EPT_PD, ept[2], How::Move);
        for (i, &frame) in ram.iter().enumerate() {
            grant(&l, m::SLOT_FRAMES + i as u64, frame, How::Move);
        }
    }
    if caps.exits_endpoint {
        grant(&l, m::SLOT_EXITS, exits, How::Move);
    }
    resume(&l);
    Ok(l)
}
