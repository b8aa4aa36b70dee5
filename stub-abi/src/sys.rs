//! Calling the stub from ring 3: the `int 0x80` convention of
//! [`crate::syscall`] and safe wrappers for the calls every server makes.
//! Compiled for the bare target only.

use crate::layout::{BootInfo, BOOT_INFO_PAGE, CHANNEL_PAGE_BASE, PAGE_SIZE, VCPU_PAGE};
use crate::syscall::{ReturnValue, CONSOLE_WRITE_MAX};
use crate::Syscall;
use ipc_proto::{ErrorCode, VcpuPage};

/// Defines a server's `_start`, which the stub enters in ring 3 with
/// `rsp = STACK_TOP` and every other register zero: it realigns rsp, clears
/// the frame pointer and calls `$main` (which never returns). `call` pushes
/// the return address, leaving rsp = 8 (mod 16) at `$main`'s entry as the
/// SysV ABI wants.
#[macro_export]
macro_rules! server_entry {
    ($main:path) => {
        const _: () = assert!($crate::layout::STACK_TOP.is_multiple_of(16));

        core::arch::global_asm!(
            ".section .text._start, \"ax\"",
            ".global _start",
            "_start:",
            "    and rsp, -16",
            "    xor ebp, ebp",
            "    call {main}",
            "    ud2",
            main = sym $main,
        );
    };
}

/// A ring-3 task's start-up and its last words, the same in every
/// server: `_start` ([`server_entry!`]) checks the stub's ABI version
/// ([`checked_boot_info`]) and calls `$main(boot)`; `say!` prints a line
/// starting with `$prefix` ([`say_line`]); the panic handler says the
/// panic and ends the VM ([`say_panic`]). `PREFIX` is `$prefix`.
#[macro_export]
macro_rules! ring3_task {
    ($main:path, $prefix:expr) => {
        $crate::__ring3_task!($main, $prefix, $);
    };
}

/// [`ring3_task!`]'s body; `$d` is a `$` for the `say!` it defines.
#[doc(hidden)]
#[macro_export]
macro_rules! __ring3_task {
    ($main:path, $prefix:expr, $d:tt) => {
        /// Starts each line this task prints.
        const PREFIX: &str = $prefix;

        extern "C" fn ring3_start() -> ! {
            $main($crate::sys::checked_boot_info(PREFIX))
        }
        $crate::server_entry!(ring3_start);

        /// Prints a line on the host console, after [`PREFIX`].
        #[allow(unused_macros)]
        macro_rules! say {
                                    ($d($d arg:tt)*) => {
                                        $crate::sys::say_line(PREFIX, format_args!($d($d arg)*))
                                    };
                                }

        #[panic_handler]
        fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
            $crate::sys::say_panic(PREFIX, info)
        }
    };
}

/// Makes one system call.
///
/// # Safety
/// Pointer arguments must be valid for what call `nr` reads or writes.
pub unsafe fn syscall3(nr: Syscall, a0: u64, a1: u64, a2: u64) -> u64 {
    let ret: u64;
    // SAFETY: `int 0x80` enters the stub, which preserves every register
    // but rax; the caller vouches for the arguments. The stub may read or
    // write this task's memory, so the asm is not `nomem`.
    unsafe {
        core::arch::asm!("int 0x80", inlateout("rax") nr as u64 => ret, in("rdi") a0, in("rsi") a1, in("rdx") a2);
    }
    ret
}

/// A call's result: a negative value the ABI does not define is a refusal too.
pub fn result(rax: u64) -> Result<u64, ErrorCode> {
    match ErrorCode::from_return_value(rax) {
        Some(e) => Err(e),
        None if rax.cast_signed() < 0 => Err(ErrorCode::UnknownSyscall),
        None => Ok(rax),
    }
}

/// A call that takes no pointer.
pub fn call(nr: Syscall, a0: u64) -> Result<u64, ErrorCode> {
    // SAFETY: the callers below pass calls whose arguments are numbers.
    result(unsafe { syscall3(nr, a0, 0, 0) })
}

/// Writes to the host console, in chunks the stub accepts.
pub fn console_write(bytes: &[u8]) {
    for chunk in bytes.chunks(CONSOLE_WRITE_MAX as usize) {
        // SAFETY: a live slice of this task's memory, no longer than the limit.
        let _ = unsafe {
            syscall3(
                Syscall::ConsoleWrite,
                chunk.as_ptr() as u64,
                chunk.len() as u64,
                0,
            )
        };
    }
}

/// Reads host console input into `buf` without waiting: the bytes read
/// (0 when there are none or the task has no console right).
pub fn console_read(buf: &mut [u8]) -> usize {
    // SAFETY: `buf` is a live, writable slice of this task's memory.
    let r = unsafe {
        syscall3(
            Syscall::ConsoleRead,
            buf.as_mut_ptr() as u64,
            buf.len() as u64,
            0,
        )
    };
    result(r).map_or(0, |n| (n as usize).min(buf.len()))
}

/// Ends the VM because it cannot go on; the reason was printed before.
pub fn vm_fail() -> ! {
    let _ = call(Syscall::VmFail, 0);
    loop {
        core::hint::spin_loop();
    }
}

/// The boot-info page.
pub fn boot_info() -> BootInfo {
    // SAFETY: the stub maps it read-only at BOOT_INFO_PAGE in every server;
    // every bit pattern is a valid BootInfo.
    unsafe { (BOOT_INFO_PAGE as *const BootInfo).read_volatile() }
}

/// This task's VCPU page (exit handlers only).
pub fn vcpu_page() -> *mut VcpuPage {
    VCPU_PAGE as *mut VcpuPage
}

/// A `core::fmt::Write` that formats into a line buffer and sends it to
/// the console.
pub struct ConsoleLine {
    buf: [u8; 256],
    len: usize,
}

impl ConsoleLine {
    /// An empty line.
    pub const fn new() -> Self {
        Self {
            buf: [0; 256],
            len: 0,
        }
    }

    /// Sends what was formatted.
    pub fn flush(&mut self) {
        console_write(&self.buf[..self.len]);
        self.len = 0;
    }
}

impl Default for ConsoleLine {
    fn default() -> Self {
        Self::new()
    }
}

impl core::fmt::Write for ConsoleLine {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for &b in s.as_bytes() {
            if self.len == self.buf.len() {
                self.flush();
            }
            self.buf[self.len] = b;
            self.len += 1;
        }
        Ok(())
    }
}

/// Prints one line on the host console: a newline (so that the line never
/// continues the guest's output), `prefix`, the arguments, a newline.
/// What each server's `say!` macro expands to.
pub fn say_line(prefix: &str, args: core::fmt::Arguments) {
    use core::fmt::Write;
    let mut line = ConsoleLine::new();
    let _ = line.write_str("\n");
    let _ = line.write_str(prefix);
    let _ = line.write_fmt(args);
    let _ = line.write_str("\n");
    line.flush();
}

/// The boot-info page, or the VM's end (said after `prefix`) when the
/// stub speaks another ABI version than this server was built for.
pub fn checked_boot_info(prefix: &str) -> BootInfo {
    let boot = boot_info();
    if boot.abi_version != ipc_proto::ABI_VERSION {
        say_line(
            prefix,
            format_args!(
                "the stub speaks ABI version {}, this server was built for version {}",
                boot.abi_version,
                ipc_proto::ABI_VERSION
            ),
        );
        vm_fail();
    }
    boot
}

/// A server's panic: `panic: MESSAGE at FILE:LINE` after `prefix`, then
/// the VM's end.
pub fn say_panic(prefix: &str, info: &core::panic::PanicInfo<'_>) -> ! {
    match info.location() {
        Some(l) => say_line(
            prefix,
            format_args!("panic: {} at {}:{}", info.message(), l.file(), l.line()),
        ),
        None => say_line(prefix, format_args!("panic: {}", info.message())),
    }
    vm_fail()
}

/// Channel `ch`'s shared page in this task (`layout::CHANNEL_PAGE_BASE`).
pub fn channel_page(ch: u64) -> *mut u8 {
    (CHANNEL_PAGE_BASE + ch * PAGE_SIZE) as *mut u8
}

/// `inject::GARBAGE` over channel `ch`'s page (an injected `corrupt`).
pub fn scribble_channel_page(ch: u64) {
    let page = channel_page(ch).cast::<u64>();
    for i in 0..(PAGE_SIZE / 8) as usize {
        // SAFETY: the page of a channel this task is an end of is mapped
        // read-write here, PAGE_SIZE bytes.
        unsafe { page.add(i).write_volatile(ipc_proto::inject::GARBAGE) };
    }
}

/// The time-stamp counter (ring 3 may read it: CR4.TSD is clear;
/// `BootInfo::tsc_hz` is its rate).
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC reads a counter and touches no memory.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// This server instance's id: the TSC's low bits at its start, so a
/// restarted instance answers with another (`pci::PciMessage::instance`).
pub fn instance_id() -> u32 {
    rdtsc() as u32
}

/// A server's configuration block, which the image builder finds by its
/// `magic` and patches: the magic, then zeros (nothing configured).
pub const fn config_block<const N: usize>(magic: &[u8]) -> [u8; N] {
    let mut c = [0u8; N];
    let mut i = 0;
    while i < magic.len() && i < N {
        c[i] = magic[i];
        i += 1;
    }
    c
}

/// Byte `at` of a configuration block ([`config_block`]) as the image
/// builder patched it (0 past its end).
pub fn config_byte<const N: usize>(block: &[u8; N], at: usize) -> u8 {
    block.get(at).map_or(0, |b| {
        // SAFETY: a reference to a live static is valid for a read; the
        // volatile read keeps the compiler from folding the value it was
        // built with.
        unsafe { core::ptr::read_volatile(b) }
    })
}

/// `Signal(channel, bits)`.
pub fn signal(channel: u64, bits: u64) -> Result<u64, ErrorCode> {
    // SAFETY: Signal takes no pointer.
    result(unsafe { syscall3(Syscall::Signal, channel, bits, 0) })
}

/// A writer's end of its guest-writes channel to the mmu-server
/// ([`ipc_proto::guest_writes`]): records the guest frames this task writes
/// in place and signals the mmu-server, so that it resyncs the shadows of
/// any page table among them before the guest runs again.
#[derive(Clone, Copy, Debug)]
pub struct GuestWrites {
    channel: u64,
}

impl GuestWrites {
    /// This task's guest-writes channel, if the image gives it one: the
    /// first of `BootInfo::guest_write_channels` that `Signal(ch, 0)`
    /// accepts (it sets no bit; only an end of the channel may call it).
    pub fn find() -> Option<Self> {
        let mask = boot_info().guest_write_channels;
        (0..16u64)
            .filter(|ch| mask & (1 << ch) != 0)
            .find(|ch| signal(*ch, 0).is_ok())
            .map(|channel| Self { channel })
    }

    /// The channel's number.
    pub fn channel(&self) -> u64 {
        self.channel
    }

    /// `len` bytes at guest-physical `gpa` were written: records their
    /// frames and, when the page was empty, signals the mmu-server (it
    /// hears it before the guest is entered again).
    pub fn wrote(&self, gpa: u64, len: u64) {
        let page = (crate::layout::CHANNEL_PAGE_BASE + self.channel * crate::layout::PAGE_SIZE)
            as *mut ipc_proto::guest_writes::GuestWritesPage;
        // SAFETY: the stub maps this channel's page read-write at that
        // address in both ends; the mmu-server only reads it while this
        // task is blocked (one CPU, no preemption).
        let signal_now = unsafe { (*page).record(gpa, len) };
        if signal_now {
            let _ = signal(
                self.channel,
                ipc_proto::guest_writes::signal_bit(self.channel as usize),
            );
        }
    }
}

/// `ReplyRecv(channel)` with a timeout of `ticks` TSC ticks (0: none):
/// a channel number, `RECV_NOTIFICATION | word`, or `RECV_TIMEOUT`.
pub fn reply_recv(channel: u64, ticks: u64) -> Result<u64, ErrorCode> {
    // SAFETY: ReplyRecv takes no pointer.
    result(unsafe { syscall3(Syscall::ReplyRecv, channel, ticks, 0) })
}

/// The methods of a driver crate's `PortIo` trait (`ata`'s and `ne2k`'s
/// have the same names and signatures) by the instructions themselves
/// ([`port`]), for a task the stub's I/O permission bitmap lets reach its
/// granted ports from ring 3: `impl PortIo for Ports { stub_abi::port_io!(inb, outb); }`.
#[macro_export]
macro_rules! port_io {
    ($($name:ident),* $(,)?) => {
        $($crate::port_io!(@ $name);)*
    };
    (@inb) => {
        fn inb(&mut self, port: u16) -> u8 {
            $crate::sys::port::inb(port)
        }
    };
    (@outb) => {
        fn outb(&mut self, port: u16, value: u8) {
            $crate::sys::port::outb(port, value);
        }
    };
    (@inw) => {
        fn inw(&mut self, port: u16) -> u16 {
            $crate::sys::port::inw(port)
        }
    };
    (@outw) => {
        fn outw(&mut self, port: u16, value: u16) {
            $crate::sys::port::outw(port, value);
        }
    };
    (@inl) => {
        fn inl(&mut self, port: u16) -> u32 {
            $crate::sys::port::inl(port)
        }
    };
    (@outl) => {
        fn outl(&mut self, port: u16, value: u32) {
            $crate::sys::port::outl(port, value);
        }
    };
    (@insw) => {
        fn insw(&mut self, port: u16, buf: &mut [u8]) {
            $crate::sys::port::insw(port, buf);
        }
    };
    (@outsw) => {
        fn outsw(&mut self, port: u16, buf: &[u8]) {
            $crate::sys::port::outsw(port, buf);
        }
    };
    (@insl) => {
        fn insl(&mut self, port: u16, buf: &mut [u8]) {
            $crate::sys::port::insl(port, buf);
        }
    };
    (@outsl) => {
        fn outsl(&mut self, port: u16, buf: &[u8]) {
            $crate::sys::port::outsl(port, buf);
        }
    };
}

/// Port I/O from ring 3 by the instructions themselves: the stub's I/O
/// permission bitmap lets a task reach the ports its rights grant and
/// nothing else (any other port faults, and the stub ends the task). What
/// the drivers' `PortIo` implementations call (disk-driver, nic-driver).
pub mod port {
    /// `in al, dx`.
    pub fn inb(port: u16) -> u8 {
        let v: u8;
        // SAFETY: a port read touches no memory of this task.
        unsafe {
            core::arch::asm!("in al, dx", out("al") v, in("dx") port, options(nomem, nostack, preserves_flags));
        }
        v
    }

    /// `out dx, al`.
    pub fn outb(port: u16, value: u8) {
        // SAFETY: a port write touches no memory of this task.
        unsafe {
            core::arch::asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags));
        }
    }

    /// `in ax, dx`.
    pub fn inw(port: u16) -> u16 {
        let v: u16;
        // SAFETY: a port read touches no memory of this task.
        unsafe {
            core::arch::asm!("in ax, dx", out("ax") v, in("dx") port, options(nomem, nostack, preserves_flags));
        }
        v
    }

    /// `out dx, ax`.
    pub fn outw(port: u16, value: u16) {
        // SAFETY: a port write touches no memory of this task.
        unsafe {
            core::arch::asm!("out dx, ax", in("dx") port, in("ax") value, options(nomem, nostack, preserves_flags));
        }
    }

    /// `rep insw` into `buf` (its length rounded down to even).
    pub fn insw(port: u16, buf: &mut [u8]) {
        // SAFETY: `rep insw` writes exactly 2 x rcx bytes (buf.len()
        // rounded down to even) from rdi upwards (DF is clear under the
        // SysV ABI), all inside the live, writable `buf`.
        unsafe {
            core::arch::asm!(
                "rep insw",
                in("dx") port,
                inout("rdi") buf.as_mut_ptr() => _,
                inout("rcx") buf.len() / 2 => _,
                options(nostack, preserves_flags)
            );
        }
    }

    /// `rep outsw` from `buf` (its length rounded down to even).
    pub fn outsw(port: u16, buf: &[u8]) {
        // SAFETY: `rep outsw` reads exactly 2 x rcx bytes of the live
        // `buf` from rsi upwards (DF clear) and writes no memory.
        unsafe {
            core::arch::asm!(
                "rep outsw",
                in("dx") port,
                inout("rsi") buf.as_ptr() => _,
                inout("rcx") buf.len() / 2 => _,
                options(nostack, preserves_flags, readonly)
            );
        }
    }

    /// `in eax, dx`.
    pub fn inl(port: u16) -> u32 {
        let v: u32;
        // SAFETY: a port read touches no memory of this task.
        unsafe {
            core::arch::asm!("in eax, dx", out("eax") v, in("dx") port, options(nomem, nostack, preserves_flags));
        }
        v
    }

    /// `out dx, eax`.
    pub fn outl(port: u16, value: u32) {
        // SAFETY: a port write touches no memory of this task.
        unsafe {
            core::arch::asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags));
        }
    }

    /// `rep insd` into `buf` (its length rounded down to a multiple of 4).
    pub fn insl(port: u16, buf: &mut [u8]) {
        // SAFETY: `rep insd` writes exactly 4 x rcx bytes (buf.len()
        // rounded down to a multiple of 4) from rdi upwards (DF is
        // clear under the SysV ABI), all inside the live, writable `buf`.
        unsafe {
            core::arch::asm!(
                "rep insd",
                in("dx") port,
                inout("rdi") buf.as_mut_ptr() => _,
                inout("rcx") buf.len() / 4 => _,
                options(nostack, preserves_flags)
            );
        }
    }

    /// `rep outsd` from `buf` (its length rounded down to a multiple of 4).
    pub fn outsl(port: u16, buf: &[u8]) {
        // SAFETY: `rep outsd` reads exactly 4 x rcx bytes of the live
        // `buf` from rsi upwards (DF clear) and writes no memory.
        unsafe {
            core::arch::asm!(
                "rep outsd",
                in("dx") port,
                inout("rsi") buf.as_ptr() => _,
                inout("rcx") buf.len() / 4 => _,
                options(nostack, preserves_flags, readonly)
            );
        }
    }
}
