//! The uart-server ring-3 task: COM1's 16550 as a server of its own.
//!
//! The vmm-server forwards every access to ports 0x3f8..0x3ff, and a poll
//! after each exit, as an `ipc_proto::device::PortMessage` on the channel
//! whose number + 1 the boot-info page holds in `uart_channel`. This task
//! loops on `ReplyRecv`: it applies each message to the vmm-server
//! library's `Uart16550`, whose transmitter goes to the host console
//! (`ConsoleWrite`, buffered per line) and whose receiver reads
//! `ConsoleRead`, and answers with IRQ 4's level in the same page.
#![cfg_attr(target_os = "none", no_std, no_main)]
#![warn(clippy::undocumented_unsafe_blocks)]

stub_abi::host_main!(
    "uart-server is a ring-3 task of the splitvisor image; it runs under the stub only. \
     Build the image with `splitvisor build --uart-server`."
);

#[cfg(target_os = "none")]
mod ring3 {

    use ipc_proto::device::{op, PortMessage};
    use stub_abi::inject::{self, Fault, Injector, GARBAGE};
    use stub_abi::layout::BootInfo;
    use stub_abi::layout::{CHANNEL_PAGE_BASE, PAGE_SIZE};
    use stub_abi::sys;
    use stub_abi::Syscall;
    use vmm_server::console::{HostConsole, HostWrite};
    use vmm_server::devices::remote;
    use vmm_server::devices::uart16550::{self, Uart16550};

    stub_abi::ring3_task!(server_main, "[uart] ");
    ipc_proto::inject_block!(INJECT);

    /// `ConsoleWrite` and `ConsoleRead`.
    struct Console;

    impl HostWrite for Console {
        fn write_host(&mut self, bytes: &[u8]) {
            sys::console_write(bytes);
        }

        fn read_host(&mut self, buf: &mut [u8]) -> usize {
            sys::console_read(buf)
        }
    }

    fn server_main(boot: BootInfo) -> ! {
        let Some(ch) = boot.uart_channel.checked_sub(1) else {
            say!("the image has no channel from the vmm-server to this server");
            sys::vm_fail();
        };
        let page = (CHANNEL_PAGE_BASE + ch * PAGE_SIZE) as *mut PortMessage;
        let mut uart = Uart16550::new(HostConsole::new(Console, true));
        // Faults injected on purpose (`--inject uart-server:crash@N`), at
        // the N-th request.
        let mut injector = Injector::from_block(&INJECT);
        loop {
            // Replies to the call before (none the first time) and waits
            // for the next one.
            if let Err(e) = sys::call(Syscall::ReplyRecv, ch) {
                say!("ReplyRecv on channel {ch} refused: {}", e.describe());
                sys::vm_fail();
            }
            // SAFETY: the stub maps channel `ch`'s page read-write at this
            // address in both ends; the client waits while we run, and
            // every bit pattern is a valid PortMessage.
            let request = unsafe { page.read_volatile() };
            match injector.tick() {
                None => {}
                Some(Fault::Crash) => inject::crash(),
                Some(Fault::Hang) => inject::hang(),
                Some(Fault::Corrupt) => {
                    // The channel page, the state shared with the
                    // vmm-server, filled with garbage.
                    let words = (PAGE_SIZE / 8) as usize;
                    for i in 0..words {
                        // SAFETY: as above; the page is PAGE_SIZE bytes.
                        unsafe { page.cast::<u64>().add(i).write_volatile(GARBAGE) };
                    }
                    inject::crash()
                }
            }
            let reply = remote::serve(
                &mut uart,
                uart16550::COM1_BASE,
                uart16550::LEN,
                &request,
                |u| u.irq_line(),
            );
            if request.op == op::FLUSH {
                let c = uart.sink_mut();
                c.flush();
                if !c.at_line_start() {
                    c.guest_byte(b'\n');
                }
            }
            // SAFETY: as above.
            unsafe { page.write_volatile(reply) };
        }
    }

    /// Nothing here allocates, but the library's decoder links `alloc`:
    /// an allocator that has nothing to give.
    struct NoHeap;

    // SAFETY: it never hands out memory, so it can hand out nothing wrong.
    unsafe impl core::alloc::GlobalAlloc for NoHeap {
        unsafe fn alloc(&self, _layout: core::alloc::Layout) -> *mut u8 {
            core::ptr::null_mut()
        }

        unsafe fn dealloc(&self, _ptr: *mut u8, _layout: core::alloc::Layout) {}
    }

    #[global_allocator]
    static ALLOCATOR: NoHeap = NoHeap;
}
