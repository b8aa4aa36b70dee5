//! A device server for the stub's own tests (never in a normal image):
//! it shows that the rights the manifest grants a device server work. It
//! is granted the CMOS/RTC ports 0x70-0x71 and host IRQ 8 (the RTC, on
//! the second 8259: the cascade path), turns on the RTC's periodic
//! interrupt, waits in `ReplyRecv(NO_REPLY)` for the notification bit of
//! IRQ 8, acknowledges the RTC (register C) and the line (`IrqAck`) three
//! times, then turns the interrupt off and says so:
//! `probe-device: 3 interrupts on IRQ 8 (ports and notifications work)`.
//! It also checks that what it was not granted is refused. Then it
//! faults on purpose (UD2): the stub must restart it from its image, and
//! its second life (it leaves a mark in CMOS bytes 0x7e-0x7f) checks that
//! its data segment is the image's again:
//! `probe-device: restarted with fresh data`.
//!
//! A second instance of the same ELF, without the IRQ (its `IrqAck` is
//! refused: that is how it knows), is the client of channel 0 to the
//! first: it calls, the first never replies and faults, and the call must
//! come back with `ServerRestarted`, never hang:
//! `probe-client: the call came back with ServerRestarted`.
//! Given the `vcpu` right (and no exit classes), the client is a VCPU task
//! blocked in a `Call`, so the guest cannot run while it waits: the stub
//! idles until the server's IRQ or timeout (`apps/tests/e2e_device_server.rs`);
//! afterwards it waits in `VcpuRun` for exits it never gets, which lets
//! the guest run again.
//!
//! The template for a real device server (the disk driver): give it a
//! name, its ports, its IRQ lines and guest RAM in the image builder
//! (`images::SystemSpec::device_servers`), loop on `ReplyRecv`.
#![cfg_attr(target_os = "none", no_std, no_main)]
#![warn(clippy::undocumented_unsafe_blocks)]

stub_abi::host_main!(
    "probe-device is a ring-3 task of the stub's tests; it runs under the stub only."
);

#[cfg(target_os = "none")]
mod ring3 {
    use core::fmt::Write;

    use ipc_proto::ErrorCode;
    use stub_abi::sys::{self, ConsoleLine};
    use stub_abi::syscall::{irq_bit, NO_REPLY, RECV_NOTIFICATION, RECV_TIMEOUT};
    use stub_abi::Syscall;

    stub_abi::server_entry!(server_main);

    /// In .data: 7 in the image; the first life changes it before it faults.
    static mut LIFE_MARK: u32 = 7;

    /// The RTC's IRQ line, and how many interrupts to take.
    const IRQ: u8 = 8;
    const WANTED: u32 = 3;

    macro_rules! say {
        ($($arg:tt)*) => {
            stub_abi::sys::say_line("probe-device: ", format_args!($($arg)*))
        };
    }

    fn outb(port: u16, v: u8) {
        // SAFETY: port I/O has no memory effects; the stub granted this
        // task ports 0x70-0x71 (anything else would #GP).
        unsafe {
            core::arch::asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack))
        };
    }

    fn inb(port: u16) -> u8 {
        let v: u8;
        // SAFETY: as for `outb`.
        unsafe {
            core::arch::asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack))
        };
        v
    }

    /// CMOS register `r` (NMI stays disabled: bit 7 of the index).
    fn cmos(r: u8) -> u8 {
        outb(0x70, 0x80 | r);
        inb(0x71)
    }

    fn set_cmos(r: u8, v: u8) {
        outb(0x70, 0x80 | r);
        outb(0x71, v);
    }

    /// Waits for good (its IRQ line is off now).
    fn idle() -> ! {
        loop {
            let _ = sys::call(Syscall::ReplyRecv, NO_REPLY);
        }
    }

    /// The client instance: one call that the server never answers.
    fn client() -> ! {
        match sys::call(Syscall::Call, 0) {
            Err(ErrorCode::ServerRestarted) => {
                let mut line = ConsoleLine::new();
                let _ = write!(
                    line,
                    "\nprobe-client: the call came back with ServerRestarted\n"
                );
                line.flush();
            }
            r => {
                let mut line = ConsoleLine::new();
                let _ = write!(line, "\nprobe-client: ESCAPE: the call returned {r:?}\n");
                line.flush();
                sys::vm_fail();
            }
        }
        // With the `vcpu` right: blocks for good (no exit class is its);
        // without it: refused at once.
        let _ = sys::call(Syscall::VcpuRun, 0);
        loop {
            let _ = sys::call(Syscall::ReplyRecv, NO_REPLY);
        }
    }

    extern "C" fn server_main() -> ! {
        if sys::call(Syscall::IrqAck, u64::from(IRQ)).is_err() {
            client();
        }
        if cmos(0x7e) == 0xa5 && cmos(0x7f) == 0x5a {
            // SAFETY: one thread; a volatile read of our own static.
            let mark = unsafe { core::ptr::read_volatile(&raw const LIFE_MARK) };
            if mark == 7 {
                say!("restarted with fresh data");
            } else {
                say!("ESCAPE: restarted with the old data ({mark})");
                sys::vm_fail();
            }
            idle();
        }
        // What was not granted must be refused.
        let refused = |r: Result<u64, ErrorCode>| r.is_err();
        let checks = [
            (
                "Signal on a channel it is not on",
                refused(sys::call(Syscall::Signal, 5)),
            ),
            (
                "IrqAck of line 4, not its own",
                refused(sys::call(Syscall::IrqAck, 4)),
            ),
            (
                "VcpuRun without a VCPU",
                refused(sys::call(Syscall::VcpuRun, 0)),
            ),
            (
                "MmuFlush without the install right",
                refused(sys::call(Syscall::MmuFlush, 0)),
            ),
        ];
        for (what, ok) in checks {
            if !ok {
                say!("ESCAPE: the stub accepted {what}");
                sys::vm_fail();
            }
        }
        // A ReplyRecv timeout (ABI 12): 10 ms, with nothing due to wake it
        // (a call from the client is never answered; a stale IRQ 8 is
        // acknowledged), comes back as RECV_TIMEOUT.
        let ticks = sys::boot_info().tsc_hz.max(1_000_000) / 100;
        loop {
            match sys::reply_recv(NO_REPLY, ticks) {
                Ok(RECV_TIMEOUT) => break,
                Ok(v) if v & RECV_NOTIFICATION != 0 => {
                    let _ = cmos(0x0c);
                    let _ = sys::call(Syscall::IrqAck, u64::from(IRQ));
                }
                Ok(_) => {}
                Err(e) => {
                    say!("ReplyRecv with a timeout failed: {e:?}");
                    sys::vm_fail();
                }
            }
        }
        say!("a ReplyRecv timeout of 10 ms came back as RECV_TIMEOUT");
        // Register A: rate 6 (1024 Hz); register B: periodic interrupt on.
        set_cmos(0x0a, (cmos(0x0a) & 0xf0) | 6);
        set_cmos(0x0b, cmos(0x0b) | 0x40);
        let _ = cmos(0x0c);
        say!("RTC periodic interrupt on, waiting for IRQ {IRQ}");
        let mut seen = 0;
        loop {
            let r = sys::call(Syscall::ReplyRecv, NO_REPLY);
            let Ok(v) = r else {
                say!("ReplyRecv failed: {r:?}");
                sys::vm_fail();
            };
            // A call (from the client instance) is never answered.
            if v & RECV_NOTIFICATION == 0 || v & u64::from(irq_bit(IRQ)) == 0 {
                continue;
            }
            let _ = cmos(0x0c); // the RTC's own acknowledge
            seen += 1;
            if seen == WANTED {
                set_cmos(0x0b, cmos(0x0b) & !0x40);
                say!("{WANTED} interrupts on IRQ {IRQ} (ports and notifications work)");
                // SAFETY: one thread; a volatile write of our own static.
                unsafe { core::ptr::write_volatile(&raw mut LIFE_MARK, 8) };
                set_cmos(0x7e, 0xa5);
                set_cmos(0x7f, 0x5a);
                say!("faulting on purpose (UD2)");
                // SAFETY: UD2 raises #UD, which the stub turns into a restart.
                unsafe { core::arch::asm!("ud2", options(nomem, nostack)) };
            }
            if let Err(e) = sys::call(Syscall::IrqAck, u64::from(IRQ)) {
                say!("IrqAck of its own line refused: {e:?}");
                sys::vm_fail();
            }
        }
    }

    /// The attack crate's library links `alloc`: an allocator with nothing to give.
    struct NoHeap;

    // SAFETY: `alloc` always fails (null), which the trait allows;
    // `dealloc` is never given a pointer `alloc` returned.
    unsafe impl core::alloc::GlobalAlloc for NoHeap {
        unsafe fn alloc(&self, _layout: core::alloc::Layout) -> *mut u8 {
            core::ptr::null_mut()
        }

        unsafe fn dealloc(&self, _ptr: *mut u8, _layout: core::alloc::Layout) {}
    }

    #[global_allocator]
    static HEAP: NoHeap = NoHeap;

    #[panic_handler]
    fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
        say!("panic: {}", info.message());
        sys::vm_fail()
    }
}
