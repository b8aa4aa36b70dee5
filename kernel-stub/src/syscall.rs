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
        Some(Syscall::ConsoleWrite) => console_write(frame.rdi, frame.rsi),
        Some(Syscall::ConsoleRead) => console_read(frame.rdi, frame.rsi),
        Some(Syscall::StatsRead) => vm::stats_read(),
        Some(Syscall::ShadowAlloc) => vm::shadow_alloc(frame.rdi),
        Some(Syscall::ShadowFree) => vm::shadow_free(frame.rdi),
        Some(Syscall::MmuInstall) => vm::mmu_install(),
        Some(Syscall::MmuFlush) => vm::mmu_flush(),
        Some(Syscall::VmStop) => vm::stop_by_server(frame.rdi),
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

/// Checks that ring 3 may access `[ptr, ptr + len)` in the caller's space.
fn user_buffer(ptr: u64, len: u64, write: bool) -> Result<(), ErrorCode> {
    if len > CONSOLE_WRITE_MAX {
        return Err(ErrorCode::TooLong);
    }
    if !crate::memory::user_range_ok(vm::current_root(), ptr, len, write) {
        return Err(ErrorCode::BadPointer);
    }
    Ok(())
}

fn console_write(ptr: u64, len: u64) -> Result<u64, ErrorCode> {
    user_buffer(ptr, len, false)?;
    // SAFETY: the range is mapped readable for ring 3 in the current
    // address space (checked just above), and the server is not running.
    let bytes = unsafe { core::slice::from_raw_parts(ptr as *const u8, len as usize) };
    crate::console::write_bytes(bytes);
    Ok(len)
}

fn console_read(ptr: u64, len: u64) -> Result<u64, ErrorCode> {
    user_buffer(ptr, len, true)?;
    const COM1_DATA: u16 = 0x3f8;
    const COM1_LSR: u16 = 0x3fd;
    let mut n = 0;
    while n < len && inb(COM1_LSR) & 1 != 0 {
        // SAFETY: the range is mapped writable for ring 3 in the current
        // address space (checked above) and `n` < `len`.
        unsafe { ((ptr + n) as *mut u8).write(inb(COM1_DATA)) };
        n += 1;
    }
    Ok(n)
}
