//! The system calls servers make (`ipc_proto::syscall`).

use crate::cpu::{inb, TrapFrame};
use crate::vm;
use ipc_proto::syscall::CONSOLE_WRITE_MAX;
use ipc_proto::{ErrorCode, Syscall};

pub fn dispatch(frame: &mut TrapFrame) {
    vm::count_syscall();
    let result = match Syscall::from_raw(frame.rax) {
        // These may block: they set the result of whichever task runs next.
        Some(Syscall::VcpuRun) => return vm::vcpu_run(frame),
        Some(Syscall::VcpuForward) => return vm::vcpu_forward(frame),
        Some(Syscall::Call) => return vm::call(frame),
        Some(Syscall::ReplyRecv) => return vm::reply_recv(frame),
        Some(Syscall::ConsoleWrite) => {
            vm::require(|r| r.console).and_then(|()| console_write(frame.rdi, frame.rsi))
        }
        Some(Syscall::ConsoleRead) => {
            vm::require(|r| r.console).and_then(|()| console_read(frame.rdi, frame.rsi))
        }
        Some(Syscall::StatsRead) => vm::stats_read(),
        Some(Syscall::ShadowAlloc) => vm::shadow_alloc(frame.rdi),
        Some(Syscall::ShadowFree) => vm::shadow_free(frame.rdi),
        Some(Syscall::MmuInstall) => vm::mmu_install(),
        Some(Syscall::MmuFlush) => vm::mmu_flush(),
        Some(Syscall::VmStop) => {
            vm::require(|r| r.vcpu).and_then(|()| vm::stop_by_server(frame.rdi))
        }
        Some(Syscall::VmFail) => vm::fail(format_args!(
            "the {} gave up (its reason is above)",
            vm::current_task_name()
        )),
        None => Err(ErrorCode::UnknownSyscall),
    };
    frame.rax = match result {
        Ok(v) => v,
        Err(e) => e.to_return_value(),
    };
}

/// Checks that ring 3 may access `[ptr, ptr + len)` in the caller's space;
/// `None` for an empty range.
fn user_buffer(ptr: u64, len: u64, write: bool) -> Result<Option<(u64, usize)>, ErrorCode> {
    let Some((start, end)) = kernel_stub::user_range::check(ptr, len, CONSOLE_WRITE_MAX)? else {
        return Ok(None);
    };
    if !crate::memory::user_range_ok(vm::current_root(), start, end - start, write) {
        return Err(ErrorCode::BadPointer);
    }
    Ok(Some((start, kernel_stub::usize_from(end - start))))
}

fn console_write(ptr: u64, len: u64) -> Result<u64, ErrorCode> {
    let Some((ptr, len)) = user_buffer(ptr, len, false)? else {
        return Ok(0);
    };
    crate::cpu::with_user_access(|| {
        // SAFETY: the range is canonical and mapped readable for ring 3 in
        // the current address space (checked just above), and the server
        // is not running.
        let bytes = unsafe { core::slice::from_raw_parts(ptr as *const u8, len) };
        crate::console::write_bytes(bytes);
    });
    Ok(len as u64)
}

fn console_read(ptr: u64, len: u64) -> Result<u64, ErrorCode> {
    let Some((ptr, len)) = user_buffer(ptr, len, true)? else {
        return Ok(0);
    };
    const COM1_DATA: u16 = 0x3f8;
    const COM1_LSR: u16 = 0x3fd;
    let mut n = 0;
    while n < len && inb(COM1_LSR) & 1 != 0 {
        let byte = inb(COM1_DATA);
        // SAFETY: the range is mapped writable for ring 3 in the current
        // address space (checked above) and `n` < `len`.
        crate::cpu::with_user_access(|| unsafe { ((ptr + n as u64) as *mut u8).write(byte) });
        n += 1;
    }
    Ok(n as u64)
}
