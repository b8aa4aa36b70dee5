//! The vmm-server ring-3 task: a thin loop around the `vmm_server` library.
//!
//! The stub starts it at `_start` in ring 3 with interrupts off,
//! `rsp = ipc_proto::layout::STACK_TOP` and every other register zero. It
//! talks to the stub with `int 0x80` system calls ([`ipc_proto::syscall`])
//! and through the VCPU page ([`ipc_proto::layout::VCPU_PAGE`]).
#![cfg_attr(target_os = "none", no_std, no_main)]
#![warn(clippy::undocumented_unsafe_blocks)]

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "vmm-server is a ring-3 task of the splitvisor image; it runs under the stub only. \
         Build the bootable image with `splitvisor build`."
    );
    std::process::exit(2);
}

#[cfg(target_os = "none")]
mod ring3 {
    use core::cell::RefCell;
    use core::ptr::{addr_of, addr_of_mut};
    use core::sync::atomic::{AtomicBool, Ordering};

    use ipc_proto::layout::{BootInfo, BOOT_INFO_PAGE, STACK_TOP, VCPU_PAGE};
    use ipc_proto::syscall::CONSOLE_WRITE_MAX;
    use ipc_proto::{ErrorCode, ExitRecord, Resume, Stats, Syscall, VcpuPage, ABI_VERSION};
    use vmm_server::devices::debug_exit::{self, DebugExit};
    use vmm_server::devices::uart16550::{self, Uart16550};
    use vmm_server::{Ending, HostConsole, HostWrite, Router, Stub, Vmm};

    // `_start` realigns rsp anyway; `call` then pushes the return address,
    // leaving rsp = 8 (mod 16) at `server_main`'s entry as the SysV ABI wants.
    const _: () = assert!(STACK_TOP.is_multiple_of(16));

    core::arch::global_asm!(
        ".section .text._start, \"ax\"",
        ".global _start",
        "_start:",
        "    and rsp, -16",
        "    xor ebp, ebp",
        "    call {main}",
        "    ud2",
        main = sym server_main,
    );

    /// Makes one system call.
    ///
    /// # Safety
    /// The arguments must be valid for `nr`: pointers must point to memory
    /// of this task that the call may read (or write) for the given length.
    unsafe fn syscall3(nr: Syscall, a0: u64, a1: u64, a2: u64) -> u64 {
        let ret: u64;
        // SAFETY: `int 0x80` enters the stub, which preserves every register
        // but rax and returns to the next instruction; the caller vouches
        // for the arguments. Memory may be read or written by the stub (the
        // VCPU page, console buffers), so no `nomem`/`readonly` option.
        unsafe {
            core::arch::asm!(
                "int 0x80",
                inlateout("rax") nr as u64 => ret,
                in("rdi") a0,
                in("rsi") a1,
                in("rdx") a2,
            );
        }
        ret
    }

    fn result(rax: u64) -> Result<u64, ErrorCode> {
        match ErrorCode::from_return_value(rax) {
            Some(e) => Err(e),
            // A negative value the ABI does not define: treat it as a
            // refusal rather than as success.
            None if (rax as i64) < 0 => Err(ErrorCode::UnknownSyscall),
            None => Ok(rax),
        }
    }

    /// Whether the last byte sent to the host console was '\n'; the panic
    /// handler reads it because it cannot reach the shared console.
    static AT_LINE_START: AtomicBool = AtomicBool::new(true);

    fn console_write(bytes: &[u8]) {
        for chunk in bytes.chunks(CONSOLE_WRITE_MAX as usize) {
            // SAFETY: the chunk is a live slice of our own memory, read-only
            // for the stub, and no longer than CONSOLE_WRITE_MAX.
            let _ = unsafe {
                syscall3(
                    Syscall::ConsoleWrite,
                    chunk.as_ptr() as u64,
                    chunk.len() as u64,
                    0,
                )
            };
        }
        if let Some(&last) = bytes.last() {
            AT_LINE_START.store(last == b'\n', Ordering::Relaxed);
        }
    }

    fn vm_stop(status: u8) -> ! {
        // SAFETY: VmStop takes no pointer.
        unsafe { syscall3(Syscall::VmStop, u64::from(status), 0, 0) };
        halt()
    }

    fn vm_fail() -> ! {
        // SAFETY: VmFail takes no argument.
        unsafe { syscall3(Syscall::VmFail, 0, 0, 0) };
        halt()
    }

    /// VmStop and VmFail do not return; if a stub ever does, spin.
    fn halt() -> ! {
        loop {
            core::hint::spin_loop();
        }
    }

    /// `ConsoleWrite` as the library's host console.
    struct ConsoleSyscall;

    impl HostWrite for ConsoleSyscall {
        fn write_host(&mut self, bytes: &[u8]) {
            console_write(bytes);
        }
    }

    fn vcpu_page() -> *mut VcpuPage {
        VCPU_PAGE as *mut VcpuPage
    }

    /// The VCPU and statistics calls of the native stub.
    struct NativeStub;

    impl Stub for NativeStub {
        fn vcpu_run(&mut self, resume: Option<&Resume>) -> Result<ExitRecord, ErrorCode> {
            let page = vcpu_page();
            if let Some(r) = resume {
                // SAFETY: the stub maps the VCPU page read-write at VCPU_PAGE
                // for this task; `resume` is inside it and suitably aligned
                // (VcpuPage is repr(C), the page is page-aligned).
                unsafe { addr_of_mut!((*page).resume).write_volatile(*r) };
            }
            // SAFETY: VcpuRun takes no pointer; the asm's memory clobber
            // orders the volatile accesses around it.
            result(unsafe { syscall3(Syscall::VcpuRun, 0, 0, 0) })?;
            // SAFETY: as above; the stub wrote `exit` before returning, and
            // every bit pattern is a valid ExitRecord.
            Ok(unsafe { addr_of!((*page).exit).read_volatile() })
        }

        fn stats_read(&mut self) -> Result<Stats, ErrorCode> {
            // SAFETY: StatsRead takes no pointer.
            result(unsafe { syscall3(Syscall::StatsRead, 0, 0, 0) })?;
            // SAFETY: the VCPU page is mapped (see `vcpu_run`); every bit
            // pattern is a valid Stats.
            Ok(unsafe { addr_of!((*vcpu_page()).stats).read_volatile() })
        }
    }

    extern "C" fn server_main() -> ! {
        let console = RefCell::new(HostConsole::new(ConsoleSyscall, true));

        // SAFETY: the stub maps the boot-info page read-only at
        // BOOT_INFO_PAGE before starting the task; every bit pattern is a
        // valid BootInfo.
        let boot = unsafe { (BOOT_INFO_PAGE as *const BootInfo).read_volatile() };
        if boot.abi_version != ABI_VERSION {
            console.borrow_mut().server_line(format_args!(
                "the stub speaks ABI version {}, this server was built for version {ABI_VERSION}",
                boot.abi_version
            ));
            vm_fail();
        }

        let mut uart = Uart16550::new(&console);
        let mut debug_exit = DebugExit::new();
        let mut router = Router::new();
        let registered = router
            .register(uart16550::COM1_BASE, uart16550::LEN, &mut uart)
            .and_then(|()| router.register(debug_exit::PORT, debug_exit::LEN, &mut debug_exit));
        if let Err(e) = registered {
            console.borrow_mut().server_line(format_args!("{e}"));
            vm_fail();
        }
        let mut vmm = Vmm::new(router);

        match vmm_server::run(&mut NativeStub, &mut vmm, &console) {
            Ending::Stop { status } => vm_stop(status),
            Ending::Fail => vm_fail(),
        }
    }

    #[panic_handler]
    fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
        let mut c = HostConsole::new(ConsoleSyscall, AT_LINE_START.load(Ordering::Relaxed));
        match info.location() {
            Some(l) => c.server_line(format_args!(
                "panic: {} at {}:{}",
                info.message(),
                l.file(),
                l.line()
            )),
            None => c.server_line(format_args!("panic: {}", info.message())),
        }
        vm_fail()
    }
}
