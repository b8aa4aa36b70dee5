//! The system calls servers make (`ipc_proto::syscall`).

use crate::cpu::TrapFrame;
use crate::vm;
use ipc_proto::syscall::CONSOLE_WRITE_MAX;
use ipc_proto::{ErrorCode, Syscall};

pub fn dispatch(frame: &mut TrapFrame) {
    vm::count_syscall();
    let result = match Syscall::from_raw(frame.rax) {
        Some(Syscall::VcpuRun) => vm::vcpu_run(),
        Some(Syscall::ConsoleWrite) => console_write(frame.rdi, frame.rsi),
        Some(Syscall::StatsRead) => vm::stats_read(),
        Some(Syscall::VmStop) => vm::stop_by_server(frame.rdi),
        Some(Syscall::VmFail) => {
            vm::fail(format_args!("the vmm-server gave up (its reason is above)"))
        }
        None => Err(ErrorCode::UnknownSyscall),
    };
    frame.rax = match result {
        Ok(v) => v,
        Err(e) => e.to_return_value(),
    };
}

fn console_write(ptr: u64, len: u64) -> Result<u64, ErrorCode> {
    if len > CONSOLE_WRITE_MAX {
        return Err(ErrorCode::TooLong);
    }
    if !crate::memory::user_range_ok(vm::current_root(), ptr, len, false) {
        return Err(ErrorCode::BadPointer);
    }
    // SAFETY: the range is mapped readable for ring 3 in the current
    // address space (checked just above), and the server is not running.
    let bytes = unsafe { core::slice::from_raw_parts(ptr as *const u8, len as usize) };
    crate::console::write_bytes(bytes);
    Ok(len)
}
