//! The root task's main: the payload, the guest's RAM and EPT, the VCPU,
//! the vmm-server component, and the end of the run.

use ipc_proto::manifest::{
    Blob, Manifest, MmuMode, PayloadHeader, Rights, MANIFEST_MAX, MAX_TASKS, PAYLOAD_MAGIC,
};
use ipc_proto::ABI_VERSION;
use sel4_root_task::rights::{self, Plan};
use sel4_sys::{c, invoke, CPtr};
use sel4_vmm_server::GUEST_WINDOW;
use zerocopy::FromBytes;

use crate::boot::{Allocator, BootInfo};
use crate::component;
use crate::console::say;

/// What the root task writes to the debug-exit port at the end, as the
/// native stub does (QEMU's isa-debug-exit; Bochs ignores it): 0 stopped
/// (from the vmm-server's report), 1 failed, 2 cannot run.
pub const HOST_EXIT_FAILED: u8 = 1;
pub const HOST_EXIT_CANNOT_RUN: u8 = 2;

pub const LARGE_PAGE: u64 = 1 << 21;

/// The 40 bytes in front of the payload in the `.payload` segment:
/// `SPLTSEL4`, the payload's length, the flags and the lengths of the
/// vmm-server and mmu-server ELFs that follow the payload (written by
/// `splitvisor build --platform sel4`).
const SEGMENT_MAGIC: [u8; 8] = *b"SPLTSEL4";
const SEGMENT_HEAD: usize = 40;
/// Flag: the vmm-server component is to invoke a capability it was not
/// given (the hostile case of issue 14's tests).
const FLAG_HOSTILE_VMM: u64 = 1;

extern "C" {
    static __payload_start: u8;
}

#[used]
#[link_section = ".splitvisor_payload"]
static PLACEHOLDER: [u8; 4096] = [0; 4096];

/// The payload and the vmm-server and mmu-server ELFs.
type Payload = (&'static [u8], &'static [u8], &'static [u8]);

fn payload() -> Result<Payload, &'static str> {
    // SAFETY: the linker script puts the `.payload` segment at
    // `__payload_start`; seL4 loaded the whole segment, whose length the
    // build wrote in front of the payload; nothing writes to it.
    unsafe {
        let start = core::ptr::addr_of!(__payload_start);
        let head = core::slice::from_raw_parts(start, SEGMENT_HEAD);
        if head[..8] != SEGMENT_MAGIC {
            return Err("the root task carries no splitvisor payload (build the image with `splitvisor build --platform sel4`)");
        }
        let word = |i: usize| u64::from_le_bytes(head[i..i + 8].try_into().unwrap_or([0; 8]));
        let (len, vmm_len, mmu_len) = (word(8) as usize, word(24) as usize, word(32) as usize);
        let payload = core::slice::from_raw_parts(start.add(SEGMENT_HEAD), len);
        let vmm = core::slice::from_raw_parts(start.add(SEGMENT_HEAD + len), vmm_len);
        let mmu = core::slice::from_raw_parts(start.add(SEGMENT_HEAD + len + vmm_len), mmu_len);
        Ok((payload, vmm, mmu))
    }
}

fn hostile_flag() -> bool {
    // SAFETY: as for `payload`, which checked the magic before this runs.
    let flags = unsafe {
        core::ptr::addr_of!(__payload_start)
            .add(16)
            .cast::<u64>()
            .read_unaligned()
    };
    flags & FLAG_HOSTILE_VMM != 0
}

fn read_manifest(payload: &[u8]) -> Result<Manifest, &'static str> {
    let (header, rest) = PayloadHeader::read_from_prefix(payload)
        .map_err(|_| "the payload is shorter than its header")?;
    if header.magic != PAYLOAD_MAGIC {
        return Err("the image has no splitvisor payload (bad magic)");
    }
    if header.abi_version != ABI_VERSION {
        return Err("the image was built for another ABI version");
    }
    let len = header.manifest_len as usize;
    let bytes = rest
        .get(..len)
        .filter(|_| len <= MANIFEST_MAX)
        .ok_or("the manifest is truncated or too large")?;
    postcard::from_bytes(bytes).map_err(|_| "the manifest does not decode")
}

fn blob(payload: &[u8], b: Blob) -> Option<&[u8]> {
    payload.get(b.offset as usize..(b.offset as usize).checked_add(b.len as usize)?)
}

/// Ends the run: the debug-exit byte, Bochs's `Shutdown` string on port
/// 0x8900 (through an I/O port capability), then the thread stops.
pub fn end(code: u8) -> ! {
    let ports = [(0xf4u64, 0xf4u64), (0x8900, 0x8900)];
    let mut slots = [0u64; 2];
    // Slots far above what the allocator hands out: `end` may run from a
    // panic, with the allocator out of reach.
    for (i, (first, last)) in ports.iter().enumerate() {
        let slot = END_SLOTS.load(core::sync::atomic::Ordering::Relaxed) + i as u64;
        let ok = invoke(
            c::CAP_IOPORT_CONTROL,
            c::X86_IOPORT_CONTROL_ISSUE,
            &[c::CAP_INIT_THREAD_CNODE],
            &[*first, *last, slot, c::WORD_BITS],
        );
        slots[i] = if ok.is_ok() { slot } else { 0 };
    }
    // Bochs stops at once: give COM1 time to send the last line (the
    // kernel owns the UART, so its line status cannot be read here).
    let t = rdtsc();
    while rdtsc().wrapping_sub(t) < 20_000_000 {
        core::hint::spin_loop();
    }
    if slots[0] != 0 {
        let _ = invoke(slots[0], c::X86_IOPORT_OUT8, &[], &[0xf4, u64::from(code)]);
    }
    if slots[1] != 0 {
        for b in *b"Shutdown" {
            let _ = invoke(slots[1], c::X86_IOPORT_OUT8, &[], &[0x8900, u64::from(b)]);
        }
    }
    loop {
        core::hint::spin_loop();
    }
}

/// The first of two slots `end` uses for its I/O port capabilities.
static END_SLOTS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

pub fn cannot_run(why: core::fmt::Arguments) -> ! {
    say!("cannot run: {why}");
    end(HOST_EXIT_CANNOT_RUN)
}

/// Each component's capabilities, from its manifest task's rights
/// (`sel4_root_task::rights`); refuses the run when a right, a task or a
/// channel has no counterpart here.
fn capabilities(m: &Manifest) -> Plan {
    let tasks: heapless::Vec<(&str, &Rights), MAX_TASKS> = m
        .tasks
        .iter()
        .map(|t| (t.name.as_str(), &t.rights))
        .collect();
    let mmu = m.guest.as_ref().map_or(MmuMode::Nested, |g| g.mmu);
    rights::plan(&tasks, &m.channels, mmu).unwrap_or_else(|why| cannot_run(format_args!("{why}")))
}

/// Guest RAM as the root task maps it: `len` bytes at [`GUEST_WINDOW`].
struct GuestRam {
    len: u64,
}

impl GuestRam {
    /// Copies `data` to guest-physical `gpa`; `None` if it does not fit.
    fn write_phys(&mut self, gpa: u64, data: &[u8]) -> Option<()> {
        let end = gpa.checked_add(data.len() as u64)?;
        if end > self.len {
            return None;
        }
        // SAFETY: the range lies inside the window, which `build_ram`
        // mapped read-write; the guest does not run yet.
        unsafe {
            core::ptr::copy_nonoverlapping(
                data.as_ptr(),
                (GUEST_WINDOW + gpa) as *mut u8,
                data.len(),
            )
        };
        Some(())
    }
}

pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no memory effects; seL4 leaves CR4.TSD clear.
    unsafe { core::arch::x86_64::_rdtsc() }
}

pub fn check<T, E: core::fmt::Display>(what: &str, r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| cannot_run(format_args!("{what}: {e}")))
}

pub fn kernel<T>(what: &str, r: Result<T, sel4_sys::Error>) -> T {
    r.unwrap_or_else(|e| cannot_run(format_args!("seL4 refused {what}: error {}", e.code)))
}

/// Guest-RAM frames (up to a GiB of 2 MiB frames).
type Frames = heapless::Vec<CPtr, 512>;

/// Builds guest RAM: 2 MiB frames, each mapped (a copy of the
/// capability) into the root task's window, and the EPT's objects, empty:
/// its PML4 (with an ASID), one PDPT and one page directory, which the
/// mmu-server component puts together and fills. Returns the EPT objects,
/// the frames and the root task's mapped copies.
fn build_ram(alloc: &mut Allocator, ram: u64) -> ([CPtr; 3], Frames, Frames) {
    if ram > 1 << 30 {
        cannot_run(format_args!(
            "guest RAM above 1 GiB is not built yet on seL4"
        ));
    }
    let ept = check(
        "EPT PML4",
        alloc.object(c::OBJ_X86_EPT_PML4, c::X86_EPT_PML4_BITS),
    );
    kernel(
        "ASIDPool_Assign for the EPT",
        invoke(
            c::CAP_INIT_THREAD_ASID_POOL,
            c::X86_ASID_POOL_ASSIGN,
            &[ept],
            &[],
        ),
    );
    let pdpt = check(
        "EPT PDPT",
        alloc.object(c::OBJ_X86_EPT_PDPT, c::X86_EPT_PDPT_BITS),
    );
    let pd = check(
        "EPT PD",
        alloc.object(c::OBJ_X86_EPT_PD, c::X86_EPT_PD_BITS),
    );
    // The root task's window: a PDPT in PML4 slot 1 and a PD for its first GiB.
    let vspace = c::CAP_INIT_THREAD_VSPACE;
    let host_pdpt = check("PDPT", alloc.object(c::OBJ_X86_PDPT, c::X86_PDPT_BITS));
    kernel(
        "PDPT_Map",
        invoke(
            host_pdpt,
            c::X86_PDPT_MAP,
            &[vspace],
            &[GUEST_WINDOW, c::X86_DEFAULT_VM_ATTRIBUTES],
        ),
    );
    let host_pd = check(
        "page directory",
        alloc.object(c::OBJ_X86_PAGE_DIRECTORY, c::X86_PAGE_DIRECTORY_BITS),
    );
    kernel(
        "PageDirectory_Map",
        invoke(
            host_pd,
            c::X86_PAGE_DIRECTORY_MAP,
            &[vspace],
            &[GUEST_WINDOW, c::X86_DEFAULT_VM_ATTRIBUTES],
        ),
    );
    let (mut frames, mut copies) = (Frames::new(), Frames::new());
    let mut gpa = 0;
    while gpa < ram {
        let frame = check(
            "guest RAM",
            alloc.object(c::OBJ_X86_LARGE_PAGE, c::LARGE_PAGE_BITS),
        );
        let mine = check("a copy of a guest-RAM capability", alloc.copy(frame));
        kernel(
            "Page_Map",
            invoke(
                mine,
                c::X86_PAGE_MAP,
                &[vspace],
                &[
                    GUEST_WINDOW + gpa,
                    c::ALL_RIGHTS,
                    c::X86_DEFAULT_VM_ATTRIBUTES,
                ],
            ),
        );
        let _ = frames.push(frame);
        let _ = copies.push(mine);
        gpa += LARGE_PAGE;
    }
    ([ept, pdpt, pd], frames, copies)
}

/// The root task's entry (from `_start`, RDI = the boot information).
pub extern "C" fn root_main(bootinfo: *const u8) -> ! {
    // SAFETY: seL4 passes the boot information's address in RDI.
    let bi = unsafe { BootInfo::new(bootinfo) };
    sel4_sys::set_ipc_buffer(bi.ipc_buffer());
    let (_, end_slot) = bi.empty();
    END_SLOTS.store(end_slot - 2, core::sync::atomic::Ordering::Relaxed);
    let t0 = rdtsc();
    let (payload, vmm_elf, mmu_elf) =
        payload().unwrap_or_else(|why| cannot_run(format_args!("{why}")));
    let manifest = read_manifest(payload).unwrap_or_else(|why| cannot_run(format_args!("{why}")));
    let Some(guest) = &manifest.guest else {
        cannot_run(format_args!(
            "the image's first manifest has no guest (tasks in no VM are not available on seL4)"
        ))
    };
    let plan = capabilities(&manifest);
    let mut alloc = Allocator::new(&bi);
    // Keep the two slots `end` uses out of the allocator's reach.
    alloc.reserve_top(2);
    let ram = u64::from(guest.ram_mib) << 20;
    say!(
        "seL4 root task: guest RAM {} MiB in 2 MiB frames, {} MiB of untyped RAM, TSC {} MHz",
        guest.ram_mib,
        alloc.ram_bytes >> 20,
        bi.tsc_hz() / 1_000_000
    );
    let (ept, frames, copies) = build_ram(&mut alloc, ram);
    let mut mem = GuestRam { len: ram };
    let image = blob(payload, guest.image)
        .unwrap_or_else(|| cannot_run(format_args!("the guest image is outside the payload")));
    if mem.write_phys(guest.load_gpa, image).is_none() {
        cannot_run(format_args!("the guest image does not fit guest RAM"));
    }
    for s in &guest.segments {
        let bytes = blob(payload, s.blob)
            .unwrap_or_else(|| cannot_run(format_args!("a guest segment is outside the payload")));
        if mem.write_phys(s.gpa, bytes).is_none() {
            cannot_run(format_args!("a guest segment does not fit guest RAM"));
        }
    }
    // The image is in place: the root task drops its mapped copies of the
    // frames (deleting a frame capability unmaps it).
    for &copy in &copies {
        kernel(
            "CNode_Delete of a guest-RAM copy",
            invoke(
                c::CAP_INIT_THREAD_CNODE,
                c::CNODE_DELETE,
                &[],
                &[copy, c::WORD_BITS],
            ),
        );
    }
    let vcpu = check("VCPU", alloc.object(c::OBJ_X86_VCPU, c::X86_VCPU_BITS));
    let hostile = hostile_flag();
    let args = sel4_vmm_server::Args {
        entry_mode: guest.entry_mode,
        entry_rip: guest.entry_rip,
        entry_regs: [guest.entry_rax, guest.entry_rbx, guest.entry_rsi],
        board: guest.board,
        ram,
        tsc_hz: bi.tsc_hz(),
        hostile_target: if hostile { ept[0] } else { 0 },
    };
    let endpoint = check("endpoint", alloc.object(c::OBJ_ENDPOINT, c::ENDPOINT_BITS));
    // The mmu-server's: the vmm-server's EPT violations come on it.
    let exits = check("endpoint", alloc.object(c::OBJ_ENDPOINT, c::ENDPOINT_BITS));
    component::map_scratch(&mut alloc);
    // The vmm-server first (its guest-RAM mappings are copies of the frame
    // capabilities, its EPT root is bound to the PML4, its endpoint
    // capability to the mmu-server is minted; the originals then move to
    // the mmu-server); it runs once the mmu-server has the EPT's tables in
    // place.
    let vmm = component::start_vmm(
        &mut alloc,
        vmm_elf,
        &args,
        &plan.vmm,
        [endpoint, exits],
        ept[0],
        vcpu,
        &frames,
    )
    .unwrap_or_else(|why| cannot_run(format_args!("the vmm-server ELF {why}")));
    let mmu = component::start_mmu(
        &mut alloc,
        mmu_elf,
        &plan.mmu,
        [endpoint, exits],
        ept,
        &frames,
    )
    .unwrap_or_else(|why| cannot_run(format_args!("the mmu-server ELF {why}")));
    let served = wait(endpoint, Waiting::Mmu);
    if served != frames.len() as u64 {
        say!(
            "vm failed: the mmu-server could not set up the EPT for {} guest-RAM frames (see its line above)",
            frames.len()
        );
        end(HOST_EXIT_FAILED);
    }
    say!(
        "EPT handed to the mmu-server component ({} pages read-only, {} writable; {} capabilities); \
         vmm-server component loaded in {} Mcycles ({} pages read-only, {} writable; {} capabilities); \
         entering the guest at {:#x}",
        mmu.read_only_pages,
        mmu.writable_pages,
        plan.mmu.count(frames.len() as u64),
        (rdtsc() - t0) / 1_000_000,
        vmm.read_only_pages,
        vmm.writable_pages,
        plan.vmm.count(frames.len() as u64),
        guest.entry_rip
    );
    component::resume(&vmm);
    wait(endpoint, Waiting::Vmm);
    end(HOST_EXIT_FAILED)
}

/// seL4's lookup failure types, in words.
fn lookup_failure(kind: u64) -> &'static str {
    match kind {
        c::LOOKUP_INVALID_ROOT => "invalid CSpace root",
        c::LOOKUP_MISSING_CAPABILITY => "missing capability",
        c::LOOKUP_DEPTH_MISMATCH => "depth mismatch",
        c::LOOKUP_GUARD_MISMATCH => "guard mismatch: the address is outside its CSpace",
        _ => "lookup failure",
    }
}

/// Which component's report the root task waits for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Waiting {
    Mmu,
    Vmm,
}

/// Waits on `endpoint` for the mmu-server's report (returns the frames it
/// mapped) or the vmm-server's ending (it printed the final line already;
/// ends the run), or a fault of either (seL4 sends it on the component's
/// fault endpoint: ends the run).
fn wait(endpoint: CPtr, waiting: Waiting) -> u64 {
    use sel4_mmu_server as m;
    use sel4_vmm_server as v;
    loop {
        let r = sel4_sys::recv(endpoint);
        let who = match r.badge {
            v::BADGE_FAULT => "vmm-server",
            m::BADGE_FAULT => "mmu-server",
            _ => "",
        };
        match (r.badge, r.label) {
            (v::BADGE_REPORT, v::REPORT_LABEL) if waiting == Waiting::Vmm => end(r.mrs[0] as u8),
            (m::BADGE_REPORT, m::REPORT_LABEL) if waiting == Waiting::Mmu => return r.mrs[0],
            (_, c::FAULT_CAP) if !who.is_empty() => {
                say!(
                    "vm failed: seL4 refused the {who}'s use of capability {:#x}, \
                     which it was not given (capability fault at rip {:#x}: {})",
                    r.mrs[c::CAP_FAULT_ADDR as usize],
                    r.mrs[c::CAP_FAULT_IP as usize],
                    lookup_failure(r.mrs[c::CAP_FAULT_LOOKUP_FAILURE_TYPE as usize])
                );
                end(HOST_EXIT_FAILED)
            }
            (_, c::FAULT_VM) if !who.is_empty() => {
                say!(
                    "vm failed: the {who} faulted: page fault at {:#x}, rip {:#x}",
                    r.mrs[c::VM_FAULT_ADDR as usize],
                    r.mrs[c::VM_FAULT_IP as usize]
                );
                end(HOST_EXIT_FAILED)
            }
            (_, label) if !who.is_empty() => {
                say!("vm failed: the {who} faulted (seL4 fault type {label})");
                end(HOST_EXIT_FAILED)
            }
            // Nothing else holds a capability to this endpoint, and each
            // component reports once.
            _ => {}
        }
    }
}
