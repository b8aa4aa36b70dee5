//! The vmm-server as a component of its own: a thread with its own VSpace
//! and CSpace, built and started by the root task.
//!
//! Milestone 2, first stage (issue 14): the component runs this same
//! image (its `vmm::vmm_main`), not yet the vmm-server ELF of the payload.
//! Its VSpace holds the image's code and read-only data (the root task's
//! frames, mapped read-only), a private copy of the writable data
//! (`.data`, `.bss`: the heap, the stack and the arguments the root task
//! left in [`crate::vmm::ARGS`]), its IPC buffer and guest RAM; not the
//! payload, the boot information or anything else of the root task's.
//! Its CSpace holds exactly three capabilities: the VCPU (bound to its
//! thread) and two badged endpoint capabilities to the root task, one to
//! report its ending and one seL4 sends its faults to.

use sel4_sys::{c, invoke, CPtr};

use crate::boot::{Allocator, BootInfo};
use crate::vm::{check, kernel, GUEST_WINDOW, LARGE_PAGE};

/// The component's CSpace: one CNode of 2^4 slots, with a guard that
/// makes every other 64-bit capability address fail to resolve.
pub const CNODE_BITS: u64 = 4;
pub const SLOT_VCPU: CPtr = 1;
pub const SLOT_REPORT: CPtr = 2;
pub const SLOT_FAULT: CPtr = 3;
/// The badges the root task tells the two endpoint capabilities apart by.
pub const BADGE_REPORT: u64 = 1;
pub const BADGE_FAULT: u64 = 2;
/// The label of the component's ending report (MR0: the debug-exit code);
/// fault labels are seL4's small fault numbers.
pub const REPORT_LABEL: u64 = 0x5650;
/// Below the root task's 255: the root task runs whenever it can.
const PRIORITY: u64 = 254;
const PAGE: u64 = 1 << 12;
/// Where the root task maps a frame of the component's to fill it: PML4
/// slot 2, away from its image and its guest-RAM window.
const SCRATCH: u64 = 0x100_0000_0000;

extern "C" {
    static __image_start: u8;
    static __data_start: u8;
    static __data_end: u8;
    static __stack_top: u8;
}

core::arch::global_asm!(
    ".section .text._vmm_start, \"ax\"",
    ".global _vmm_start",
    "_vmm_start:",
    "    and rsp, -16",
    "    call {main}",
    "    ud2",
    main = sym crate::vmm::vmm_main,
);

extern "C" {
    fn _vmm_start() -> !;
}

fn addr(s: &u8) -> u64 {
    s as *const u8 as u64
}

/// The component's IPC buffer: the page after its writable data (where
/// the root task has its payload, which the component does not see).
pub fn ipc_buffer_va() -> u64 {
    // SAFETY: only the symbol's address is taken.
    addr(unsafe { &__data_end })
}

/// What the root task learns from starting the component.
pub struct Started {
    /// The endpoint the component reports and faults to.
    pub endpoint: CPtr,
    /// Pages of its image: shared read-only, copied.
    pub shared_pages: u64,
    pub copied_pages: u64,
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

/// Builds the vmm-server component around `vcpu` and `ept` and starts it
/// at `vmm::vmm_main`. `ram` are the guest-RAM frames (2 MiB each, from
/// guest-physical 0); the component gets a mapping of each, not the
/// capabilities.
pub fn start_vmm(
    alloc: &mut Allocator,
    bi: &BootInfo,
    ept: CPtr,
    vcpu: CPtr,
    ram: &[CPtr],
) -> Started {
    // SAFETY: only the symbols' addresses are taken.
    let (image, data, data_end, stack_top) = unsafe {
        (
            addr(&__image_start),
            addr(&__data_start),
            addr(&__data_end),
            addr(&__stack_top),
        )
    };
    let ipc_va = data_end;

    // The VSpace: a PML4 with an ASID, tables for the image and its IPC
    // buffer, and for the guest-RAM window.
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
    map_tables(alloc, pml4, image, ipc_va + PAGE, true);
    map_tables(alloc, pml4, GUEST_WINDOW, GUEST_WINDOW, false);

    // Code and read-only data: the root task's own frames, read-only.
    let (frames, _) = bi.user_image_frames();
    let mut shared_pages = 0;
    let mut va = image;
    while va < data {
        let mine = frames + (va - image) / PAGE;
        let copy = check("a copy of an image frame", alloc.copy(mine));
        map_page(copy, pml4, va, c::CAN_READ);
        shared_pages += 1;
        va += PAGE;
    }
    // Writable data: fresh frames, filled through a scratch mapping with
    // what the root task's data holds now.
    map_tables(
        alloc,
        c::CAP_INIT_THREAD_VSPACE,
        SCRATCH,
        SCRATCH + PAGE,
        true,
    );
    let mut copied_pages = 0;
    while va < data_end {
        let frame = check("a data frame", alloc.object(c::OBJ_X86_4K, c::PAGE_BITS));
        map_page(frame, c::CAP_INIT_THREAD_VSPACE, SCRATCH, c::ALL_RIGHTS);
        // SAFETY: `va` is a page of the root task's mapped .data/.bss
        // (between the linker's `__data_start` and `__data_end`) and
        // SCRATCH the fresh frame just mapped; they do not overlap.
        unsafe {
            core::ptr::copy_nonoverlapping(va as *const u8, SCRATCH as *mut u8, PAGE as usize)
        };
        kernel("Page_Unmap", invoke(frame, c::X86_PAGE_UNMAP, &[], &[]));
        map_page(frame, pml4, va, c::ALL_RIGHTS);
        copied_pages += 1;
        va += PAGE;
    }
    let ipc_frame = check("IPC buffer", alloc.object(c::OBJ_X86_4K, c::PAGE_BITS));
    map_page(ipc_frame, pml4, ipc_va, c::ALL_RIGHTS);
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
    // seL4_TCB_WriteRegisters(resume, flags, count 3: RIP, RSP, RFLAGS).
    let entry = _vmm_start as *const () as u64;
    kernel(
        "TCB_WriteRegisters",
        invoke(
            tcb,
            c::TCB_WRITE_REGISTERS,
            &[],
            &[1, 3, entry, stack_top, 0],
        ),
    );
    Started {
        endpoint,
        shared_pages,
        copied_pages,
    }
}
