//! Thin seL4 bindings for splitvisor's root task (x86_64, seL4 16.0.0).
//!
//! The syscall ABI (libsel4 `sel4_arch/syscalls_syscall.h`) in inline asm,
//! one generic invocation ([`invoke`]) that takes a label, extra
//! capabilities and message registers, `seL4_VMEnter`, and the constants
//! of [`c`], generated at build time from the installed kernel's libsel4
//! headers by `gen_consts.c` (see `build.rs`): invocation labels, object
//! types and the boot information's layout move with the kernel
//! configuration and are never written down here.
//!
//! Only for the bare target: on the host this crate is empty, so that
//! `cargo test --workspace` builds it without a kernel.
#![no_std]
#![cfg(target_os = "none")]

use core::arch::asm;
use core::sync::atomic::{AtomicPtr, Ordering};

/// Constants generated from the installed libsel4 headers.
#[allow(missing_docs)]
pub mod c {
    include!(concat!(env!("OUT_DIR"), "/consts.rs"));
}

/// A capability address in the root task's CSpace.
pub type CPtr = u64;

/// The IPC buffer of the calling thread (the root task's one thread).
static IPC_BUFFER: AtomicPtr<u8> = AtomicPtr::new(core::ptr::null_mut());

/// Sets the IPC buffer: `seL4_BootInfo::ipcBuffer` for the root task.
pub fn set_ipc_buffer(buffer: *mut u8) {
    IPC_BUFFER.store(buffer, Ordering::Relaxed);
}

fn ipc_word(offset: u64) -> *mut u64 {
    // The buffer is the kernel's page for this thread, mapped read-write.
    IPC_BUFFER
        .load(Ordering::Relaxed)
        .wrapping_add(offset as usize) as *mut u64
}

/// Message register `i` (`i` >= 4 lives in the IPC buffer).
pub fn get_mr(i: usize) -> u64 {
    assert!((i as u64) < c::MSG_MAX_LENGTH);
    // SAFETY: the IPC buffer is mapped for this thread and `msg` has
    // MSG_MAX_LENGTH words; the index is checked above.
    unsafe { ipc_word(c::IPC_MSG + 8 * i as u64).read_volatile() }
}

/// Sets message register `i` in the IPC buffer.
pub fn set_mr(i: usize, v: u64) {
    assert!((i as u64) < c::MSG_MAX_LENGTH);
    // SAFETY: as for `get_mr`.
    unsafe { ipc_word(c::IPC_MSG + 8 * i as u64).write_volatile(v) }
}

fn set_cap(i: usize, cptr: CPtr) {
    assert!(i < 3);
    // SAFETY: `caps_or_badges` has three words in the mapped IPC buffer.
    unsafe { ipc_word(c::IPC_CAPS_OR_BADGES + 8 * i as u64).write_volatile(cptr) }
}

/// One `syscall`: RDX the number, RDI capability/badge, RSI message info,
/// MR0-3 in R10, R8, R9, R15. The kernel does not restore RSP; R12 keeps it.
/// Returns (badge, message info, MR0-3).
///
/// # Safety
/// The kernel may write the IPC buffer and, for VMEnter, run the guest.
#[inline(always)]
pub unsafe fn syscall(sys: i64, dest: u64, info: u64, mrs: [u64; 4]) -> (u64, u64, [u64; 4]) {
    let (badge, out_info);
    let [mut m0, mut m1, mut m2, mut m3] = mrs;
    // SAFETY: the caller's contract; the asm keeps RSP in R12 across the
    // syscall and declares every register the kernel clobbers.
    unsafe {
        asm!(
            "mov r12, rsp",
            "syscall",
            "mov rsp, r12",
            inout("rdx") sys => _,
            inout("rdi") dest => badge,
            inout("rsi") info => out_info,
            inout("r10") m0,
            inout("r8") m1,
            inout("r9") m2,
            inout("r15") m3,
            out("rcx") _,
            out("r11") _,
            out("r12") _,
        );
    }
    (badge, out_info, [m0, m1, m2, m3])
}

/// `seL4_DebugPutChar`: one byte on the kernel's serial console.
pub fn debug_put_char(ch: u8) {
    // SAFETY: DebugPutChar reads only RDI.
    unsafe { syscall(c::SYS_DEBUG_PUT_CHAR, u64::from(ch), 0, [0; 4]) };
}

/// A message info word.
pub fn message_info(label: u64, extra_caps: u64, length: u64) -> u64 {
    label << 12 | extra_caps << 7 | length
}

/// An invocation the kernel refused: its error (`seL4_Error`) and the
/// first message registers of the reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Error {
    /// The `seL4_Error` number.
    pub code: u64,
    /// The reply's MR0-3 (what the error names: a slot, a bit count).
    pub mrs: [u64; 4],
}

/// `seL4_Call` on `service` with `label`, up to three extra capabilities
/// and any number of message registers. Returns the reply's MR0-3.
pub fn invoke(service: CPtr, label: u64, caps: &[CPtr], mrs: &[u64]) -> Result<[u64; 4], Error> {
    for (i, &cap) in caps.iter().enumerate() {
        set_cap(i, cap);
    }
    let mut regs = [0u64; 4];
    for (i, &v) in mrs.iter().enumerate() {
        if i < 4 {
            regs[i] = v;
        } else {
            set_mr(i, v);
        }
    }
    let info = message_info(label, caps.len() as u64, mrs.len() as u64);
    // SAFETY: an ordinary invocation; the kernel writes only the IPC buffer.
    let (_, out, reply) = unsafe { syscall(c::SYS_CALL, service, info, regs) };
    match out >> 12 {
        0 => Ok(reply),
        code => Err(Error { code, mrs: reply }),
    }
}

/// What `seL4_VMEnter` returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmEnter {
    /// The guest exited: the exit's message registers (`c::VMENTER_*`).
    Exit([u64; 25]),
    /// A notification arrived on the bound notification (its badge).
    Notification(u64),
}

/// `seL4_VMEnter` on the calling thread's VCPU: MR0 the guest RIP, MR1
/// the primary processor-based controls, MR2 the VM-entry interruption
/// information.
pub fn vm_enter(rip: u64, controls: u64, entry_info: u64) -> VmEnter {
    // SAFETY: runs the guest bound to this thread; the kernel writes the
    // exit's message registers into R10, R8, R9, R15 and the IPC buffer.
    let (badge, info, r) =
        unsafe { syscall(c::SYS_VM_ENTER, 0, 0, [rip, controls, entry_info, 0]) };
    if info != c::VMENTER_RESULT_FAULT {
        return VmEnter::Notification(badge);
    }
    let mut mrs = [0u64; 25];
    let n = (c::VMENTER_NUM_FAULT_MSGS as usize).min(25);
    for (i, m) in mrs.iter_mut().enumerate().take(n) {
        *m = if i < 4 { r[i] } else { get_mr(i) };
    }
    VmEnter::Exit(mrs)
}

/// What `seL4_Recv` returned: the sender's badge, the message's label and
/// its MR0-3.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    /// The badge of the capability the sender used.
    pub badge: u64,
    /// The message label (a fault's type for fault messages).
    pub label: u64,
    /// MR0-3.
    pub mrs: [u64; 4],
}

/// `seL4_Recv` on the endpoint `ep`: blocks until a message (or a fault
/// message) arrives.
pub fn recv(ep: CPtr) -> Received {
    // SAFETY: a receive; the kernel writes R10, R8, R9, R15 and the IPC
    // buffer.
    let (badge, info, mrs) = unsafe { syscall(c::SYS_RECV, ep, 0, [0; 4]) };
    Received {
        badge,
        label: info >> 12,
        mrs,
    }
}

/// `seL4_Send` on the endpoint `ep` with `label` and up to four message
/// registers: blocks until a receiver takes the message, expects no reply.
pub fn send(ep: CPtr, label: u64, mrs: &[u64]) {
    let mut regs = [0u64; 4];
    let n = mrs.len().min(4);
    regs[..n].copy_from_slice(&mrs[..n]);
    let info = message_info(label, 0, n as u64);
    // SAFETY: a send; the kernel reads the registers and writes none of
    // this thread's memory.
    unsafe { syscall(c::SYS_SEND, ep, info, regs) };
}

/// `seL4_ReplyRecv` (non-MCS): replies to the thread this one last
/// received a call from (`label`, up to four message registers), then
/// waits on `ep` for the next message.
pub fn reply_recv(ep: CPtr, label: u64, mrs: &[u64]) -> Received {
    let mut regs = [0u64; 4];
    let n = mrs.len().min(4);
    regs[..n].copy_from_slice(&mrs[..n]);
    let info = message_info(label, 0, n as u64);
    // SAFETY: a reply and a receive; the kernel writes R10, R8, R9, R15
    // and the IPC buffer.
    let (badge, info, mrs) = unsafe { syscall(c::SYS_REPLY_RECV, ep, info, regs) };
    Received {
        badge,
        label: info >> 12,
        mrs,
    }
}
