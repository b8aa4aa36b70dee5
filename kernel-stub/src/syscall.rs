//! The console system calls (`stub_abi::syscall`); `vm` checks the
//! caller's rights and runs the others. Each takes its buffer as a
//! [`UserSlice`], which only a check against the caller's own address
//! space builds.

use crate::cpu::{inb, TrapFrame};
use ipc_proto::ErrorCode;
use kernel_stub::user_range::UserSlice;
use stub_abi::syscall::CONSOLE_WRITE_MAX;

/// Every `int 0x80` from ring 3.
pub fn dispatch(frame: &mut TrapFrame) {
    crate::vm::syscall(frame);
}

/// `[ptr, ptr + len)` checked against the address space `root`: at most
/// `CONSOLE_WRITE_MAX` bytes, canonical, mapped for ring 3 (and writable if
/// `write`); `None` for an empty range.
fn user_slice(root: u64, ptr: u64, len: u64, write: bool) -> Result<Option<UserSlice>, ErrorCode> {
    UserSlice::check(ptr, len, CONSOLE_WRITE_MAX, write, |start, len, write| {
        crate::memory::user_range_ok(root, start, len, write)
    })
}

pub fn console_write(root: u64, ptr: u64, len: u64) -> Result<u64, ErrorCode> {
    let Some(s) = user_slice(root, ptr, len, false)? else {
        return Ok(0);
    };
    crate::cpu::with_user_access(|| {
        // SAFETY: a `UserSlice` is canonical and mapped readable for ring 3
        // in the caller's address space, which is loaded (the caller made
        // this call), and the server is not running.
        let bytes = unsafe { core::slice::from_raw_parts(s.addr() as *const u8, s.len()) };
        crate::console::write_from_vm(bytes);
    });
    Ok(s.len() as u64)
}

pub fn console_read(root: u64, ptr: u64, len: u64) -> Result<u64, ErrorCode> {
    let Some(s) = user_slice(root, ptr, len, true)? else {
        return Ok(0);
    };
    const COM1_DATA: u16 = 0x3f8;
    const COM1_LSR: u16 = 0x3fd;
    let mut n = 0;
    while n < s.len() && inb(COM1_LSR) & 1 != 0 {
        let byte = inb(COM1_DATA);
        // SAFETY: a writable `UserSlice` of the caller's loaded address
        // space (see above), and `n` < its length.
        crate::cpu::with_user_access(|| unsafe { ((s.addr() + n as u64) as *mut u8).write(byte) });
        n += 1;
    }
    Ok(n as u64)
}
