//! The disk-driver ring-3 task: the machine's IDE disk (the primary
//! channel's master, `splitvisor run --disk FILE`) served over a channel
//! by the library's [`disk_driver::DiskServer`], with port I/O by `in`,
//! `out`, `rep insw` and `rep outsw` on ports the stub grants it.
//!
//! TODO(issue 12): not in any image yet. It waits for the stub's
//! `stub-rights` work to land on main: the manifest's `Rights::ports`
//! made real (an I/O permission bitmap granting 0x1f0-0x1f7 and 0x3f6 to
//! this task while it runs), `Rights::irqs` with `Syscall::IrqAck` and
//! `ReplyRecv` returning `RECV_NOTIFICATION` | `irq_bit(14)` (for an
//! interrupt-driven `ata::Wait`; polling needs only the ports),
//! `Rights::guest_ram = ReadWrite` (guest RAM at `GUEST_RAM_WINDOW`), and
//! a way for the task to find its channel; then the image builder adds
//! this task when `--disk` is given. Until then `server_main` below is the
//! whole task but for those calls, and the host build only says where it
//! belongs.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "disk-driver is a ring-3 task of the splitvisor image; it runs under the stub only \
         (and is not in an image yet: see the TODO in disk-driver/src/main.rs)."
    );
    std::process::exit(2);
}

#[cfg(target_os = "none")]
mod ring3 {
    use core::fmt::Write;

    use ata::{Ata, Drive, PortIo, Spin, PRIMARY};
    use disk_driver::DiskServer;
    use ipc_proto::sys::{self, ConsoleLine};
    use ipc_proto::ABI_VERSION;

    ipc_proto::server_entry!(server_main);

    macro_rules! say {
        ($($arg:tt)*) => {{
            let mut line = ConsoleLine::new();
            let _ = write!(line, $($arg)*);
            let _ = line.write_str("\n");
            line.flush();
        }};
    }

    /// Port I/O by the instructions themselves: the stub's I/O permission
    /// bitmap lets this task reach its granted ports from ring 3 and
    /// nothing else (any other port faults, and the stub ends the task).
    struct Ports;

    impl PortIo for Ports {
        fn inb(&mut self, port: u16) -> u8 {
            let v: u8;
            // SAFETY: a port read touches no memory of this task.
            unsafe {
                core::arch::asm!("in al, dx", out("al") v, in("dx") port, options(nomem, nostack, preserves_flags))
            };
            v
        }

        fn outb(&mut self, port: u16, value: u8) {
            // SAFETY: a port write touches no memory of this task.
            unsafe {
                core::arch::asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
            };
        }

        fn inw(&mut self, port: u16) -> u16 {
            let v: u16;
            // SAFETY: a port read touches no memory of this task.
            unsafe {
                core::arch::asm!("in ax, dx", out("ax") v, in("dx") port, options(nomem, nostack, preserves_flags))
            };
            v
        }

        fn outw(&mut self, port: u16, value: u16) {
            // SAFETY: a port write touches no memory of this task.
            unsafe {
                core::arch::asm!("out dx, ax", in("dx") port, in("ax") value, options(nomem, nostack, preserves_flags))
            };
        }

        fn insw(&mut self, port: u16, buf: &mut [u8]) {
            // SAFETY: `rep insw` writes exactly 2 x rcx = buf.len() (even,
            // as the trait requires; the odd byte, if any, is left) bytes
            // from rdi upwards (DF is clear under the SysV ABI), all inside
            // the live, writable `buf`.
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

        fn outsw(&mut self, port: u16, buf: &[u8]) {
            // SAFETY: `rep outsw` reads exactly 2 x rcx bytes of the live
            // `buf` from rsi upwards (DF clear) and writes none.
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
    }

    extern "C" fn server_main() -> ! {
        let boot = sys::boot_info();
        if boot.abi_version != ABI_VERSION {
            say!(
                "disk: the stub speaks ABI version {}, this server was built for version {ABI_VERSION}",
                boot.abi_version
            );
            sys::vm_fail();
        }
        // Polling until the IRQ notification is wired: ~10^6 status reads
        // per wait, each an exit-free port read here (the task owns them).
        let ata = Ata::new(Ports, Spin::new(1 << 20), PRIMARY, Drive::Master);
        let server = DiskServer::start(ata, false);
        say!("{}", server.console_line());
        // TODO(issue 12): serve the channel with `server.serve(&mut
        // transport, &mut Ram(guest RAM at GUEST_RAM_WINDOW))` once the
        // task can find its channel and has guest RAM mapped (see the
        // module documentation).
        sys::vm_fail();
    }

    #[panic_handler]
    fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
        say!("disk: panic: {}", info.message());
        sys::vm_fail()
    }
}
