//! A hostile port of the shared switch (never in a normal image): a task
//! of VM 0 whose one channel is a link across VMs to the switch in no VM
//! (`splitvisor::attack::hostile_link_beside_a_vm`). It waits 100 ms of
//! the TSC (the other VM's servers call the switch meanwhile), then:
//!
//! - names what is not its own: `Call` on every other channel number and
//!   on numbers far out of range, `ReplyRecv` on its link (it is the
//!   client), a `Signal` bit above the 16 a channel carries; each must be
//!   refused: `hostile-link: 21 of 21 calls naming what is not its own
//!   refused`;
//! - sends the switch a runt (10 bytes), a giant (4000 bytes), a frame
//!   with a multicast source address, then floods 100 broadcast frames of
//!   1514 bytes: `hostile-link: sent a runt, a giant, a multicast source
//!   and 100 broadcast frames (status ...)`;
//! - asks for the switch's counters (`STATS`) and waits for ever.
//!
//! The switch must drop and count the bad frames at this port, and give
//! the flood at most its share of every other port's queue.
#![cfg_attr(target_os = "none", no_std, no_main)]
#![warn(clippy::undocumented_unsafe_blocks)]

stub_abi::host_main!(
    "hostile-link is a ring-3 task of the stub's tests; it runs under the stub only."
);

/// The magic of its configuration block; the byte after it is its link
/// channel's number + 1.
pub const CONFIG_MAGIC: [u8; 12] = *b"SVHOSTILELNK";

#[cfg(target_os = "none")]
mod ring3 {
    use ipc_proto::manifest::MAX_CHANNELS;
    use ipc_proto::net::{op, LinkMessage, TX_OFFSET};
    use stub_abi::syscall::NO_REPLY;
    use stub_abi::{sys, Syscall};

    /// The crate's dependencies (the mmu-server's logic) want an
    /// allocator; this task allocates nothing.
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

    stub_abi::server_entry!(server_main);

    #[used]
    static CONFIG: [u8; 16] = sys::config_block(&super::CONFIG_MAGIC);

    macro_rules! say {
        ($($arg:tt)*) => {
            stub_abi::sys::say_line("hostile-link: ", format_args!($($arg)*))
        };
    }

    /// Asks the switch `op` with the `len`-byte `frame` at TX_OFFSET; its
    /// reply's status, or u32::MAX when the call failed.
    fn ask(ch: u64, op: u32, frame: &[u8], len: u32) -> u32 {
        let page = sys::channel_page(ch);
        let m = LinkMessage {
            op,
            len,
            ..LinkMessage::default()
        };
        // SAFETY: the client end of channel `ch`, a page mapped read-write
        // for good (page aligned); the switch reads it only while this task
        // waits in `Call`. `frame` is at most 1514 bytes: it fits.
        unsafe {
            core::ptr::copy_nonoverlapping(frame.as_ptr(), page.add(TX_OFFSET), frame.len());
            core::ptr::write_volatile(page.cast::<LinkMessage>(), m);
        }
        if sys::call(Syscall::Call, ch).is_err() {
            return u32::MAX;
        }
        // SAFETY: as above; the switch wrote its reply there during the call.
        unsafe { core::ptr::read_volatile(page.cast::<LinkMessage>()) }.status
    }

    extern "C" fn server_main() -> ! {
        let boot = sys::checked_boot_info("hostile-link: ");
        // SAFETY: the image builder patches this byte; read once.
        let byte = unsafe { core::ptr::read_volatile(&CONFIG[super::CONFIG_MAGIC.len()]) };
        let Some(ch) = byte
            .checked_sub(1)
            .map(u64::from)
            .filter(|&c| c < MAX_CHANNELS as u64)
        else {
            say!("no link channel configured");
            sys::vm_fail();
        };
        // Let the other VM's servers take their ports first.
        let _ = sys::reply_recv(NO_REPLY, boot.tsc_hz / 10);
        let mut tried = 0;
        let mut refused = 0;
        let others = (0..MAX_CHANNELS as u64).filter(|&n| n != ch);
        for n in others.chain([MAX_CHANNELS as u64, 255, 1 << 32, u64::MAX]) {
            tried += 1;
            refused += u32::from(sys::call(Syscall::Call, n).is_err());
        }
        tried += 2;
        refused += u32::from(sys::reply_recv(ch, 1).is_err());
        refused += u32::from(sys::signal(ch, 1 << 20).is_err());
        say!("{refused} of {tried} calls naming what is not its own refused");
        let mut frame = [0u8; 1514];
        frame[..6].copy_from_slice(&[0xff; 6]);
        frame[6..12].copy_from_slice(&[0x02, 0x53, 0x56, 0x00, 0x00, 0x66]);
        let runt = ask(ch, op::SEND, &frame[..10], 10);
        let giant = ask(ch, op::SEND, &[], 4000);
        let mut mc = frame;
        mc[6] = 0x03;
        let srcmc = ask(ch, op::SEND, &mc[..60], 60);
        let mut flood = 0;
        for _ in 0..100 {
            flood += u32::from(ask(ch, op::SEND, &frame, 1514) == 0);
        }
        say!("sent a runt, a giant, a multicast source and 100 broadcast frames (status {runt}, {giant}, {srcmc}; {flood} taken)");
        let _ = ask(ch, op::STATS, &[], 0);
        loop {
            let _ = sys::reply_recv(NO_REPLY, 0);
        }
    }

    #[panic_handler]
    fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
        say!("panic: {}", info.message());
        sys::vm_fail()
    }
}
