//! A client of the disk-driver server for the end-to-end tests (never in
//! a normal image): the block requests the virtio-blk device will make,
//! over channel 0 (the only channel of its test image), with buffers in
//! guest RAM (the last 8 KiB, which the test guests do not use). It asks
//! INFO, WRITEs two sectors from an odd guest address, FLUSHes, READs
//! them back elsewhere and compares, then sends requests the server must
//! refuse, and says what it got in lines starting `disk-client: `.
#![cfg_attr(target_os = "none", no_std, no_main)]

stub_abi::host_main!(
    "disk-client is a ring-3 task of the disk-driver's tests; it runs under the stub only."
);

#[cfg(target_os = "none")]
mod ring3 {

    use ipc_proto::block::{
        op, status, BlockReply, BlockRequest, ListRequest, Segment, SEGMENTS_OFFSET,
    };
    use stub_abi::layout::CHANNEL_PAGE_BASE;
    use stub_abi::sys;
    use stub_abi::syscall::NO_REPLY;
    use stub_abi::Syscall;

    stub_abi::server_entry!(client_main);

    macro_rules! say {
        ($($arg:tt)*) => {
            stub_abi::sys::say_line("disk-client: ", format_args!($($arg)*))
        };
    }

    /// Channel 0: sends `req`, returns the server's reply. A server that
    /// was restarted during the call (a fault, the stub's watchdog) is
    /// asked once more, as a client of a restarted server does on purpose.
    fn call(req: BlockRequest) -> BlockReply {
        let page = CHANNEL_PAGE_BASE as *mut u8;
        let mut retried = false;
        loop {
            // SAFETY: the stub maps channel 0's page read-write in both
            // ends; the server reads it only while this task waits in `Call`.
            unsafe { page.cast::<BlockRequest>().write_volatile(req) };
            match sys::call(Syscall::Call, 0) {
                Ok(_) => break,
                Err(ipc_proto::ErrorCode::ServerRestarted) if !retried => {
                    say!("the disk-driver was restarted: asking again");
                    retried = true;
                }
                Err(e) => {
                    say!("Call refused: {}", e.describe());
                    sys::vm_fail();
                }
            }
        }
        // SAFETY: as above; every bit pattern is a valid BlockReply.
        unsafe { page.cast::<BlockReply>().read_volatile() }
    }

    /// Channel 0: sends a scatter list, returns the server's reply.
    fn call_list(req: ListRequest, segments: &[Segment]) -> BlockReply {
        let page = CHANNEL_PAGE_BASE as *mut u8;
        // SAFETY: as in `call`; the request and the few segments after it
        // (at 8-aligned offsets from 24 on) fit the page.
        unsafe {
            page.cast::<ListRequest>().write_volatile(req);
            let table = page.add(SEGMENTS_OFFSET).cast::<Segment>();
            for (i, s) in segments.iter().enumerate() {
                table.add(i).write_volatile(*s);
            }
        }
        if let Err(e) = sys::call(Syscall::Call, 0) {
            say!("Call refused: {}", e.describe());
            sys::vm_fail();
        }
        // SAFETY: as in `call`.
        unsafe { page.cast::<BlockReply>().read_volatile() }
    }

    extern "C" fn client_main() -> ! {
        let boot = sys::boot_info();
        let Ok(len) = usize::try_from(boot.guest_ram_bytes) else {
            sys::vm_fail();
        };
        // SAFETY: the test image grants this task guest RAM read-write at
        // `guest_ram_window`; the guest does not run while it does.
        let ram = unsafe { core::slice::from_raw_parts_mut(boot.guest_ram_window as *mut u8, len) };
        let base = len - 8192;
        let info = call(BlockRequest {
            op: op::INFO,
            ..BlockRequest::default()
        });
        say!(
            "INFO: status {}, {} sectors, flags {:#x}",
            info.status,
            info.capacity,
            info.flags
        );
        // Two sectors from an odd address, each byte its offset's.
        let out = base + 1;
        for (i, b) in ram[out..out + 1024].iter_mut().enumerate() {
            *b = (i * 7 % 251) as u8;
        }
        let w = call(BlockRequest {
            op: op::WRITE,
            sectors: 2,
            lba: 1,
            gpa: out as u64,
        });
        let f = call(BlockRequest {
            op: op::FLUSH,
            ..BlockRequest::default()
        });
        let back = base + 4096;
        ram[back..back + 1024].fill(0);
        let r = call(BlockRequest {
            op: op::READ,
            sectors: 2,
            lba: 1,
            gpa: back as u64,
        });
        let same = ram[back..back + 1024] == ram[out..out + 1024];
        say!(
            "WRITE {}, FLUSH {}, READ {}: {}",
            w.status,
            f.status,
            r.status,
            if same {
                "the sectors read back as written"
            } else {
                "the sectors read back WRONG"
            }
        );
        // The same two sectors into three pieces that split both sectors,
        // at odd addresses: one READ_LIST.
        let pieces = [(base + 2001, 100u32), (base + 2203, 900), (base + 3301, 24)];
        for &(at, n) in &pieces {
            ram[at..at + n as usize].fill(0);
        }
        let segments = pieces.map(|(at, len)| Segment {
            gpa: at as u64,
            len,
            reserved: 0,
        });
        let list = ListRequest {
            op: op::READ_LIST,
            sectors: 2,
            lba: 1,
            segments: 3,
            reserved: 0,
        };
        let l = call_list(list, &segments);
        let mut same = true;
        let mut k = 0;
        for &(at, n) in &pieces {
            for i in 0..n as usize {
                same &= ram[at + i] == ram[out + k];
                k += 1;
            }
        }
        // Lengths that do not add up to the sectors asked for.
        let short = call_list(ListRequest { sectors: 3, ..list }, &segments);
        say!(
            "READ_LIST of 3 pieces {}: {}; a list 512 bytes short {} (want {})",
            l.status,
            if same {
                "the sectors read back as written"
            } else {
                "the sectors read back WRONG"
            },
            short.status,
            status::BAD_LIST
        );
        let past_end = call(BlockRequest {
            op: op::READ,
            sectors: 1,
            lba: info.capacity,
            gpa: back as u64,
        });
        let outside = call(BlockRequest {
            op: op::WRITE,
            sectors: 1,
            lba: 0,
            gpa: boot.guest_ram_bytes - 100,
        });
        let unknown = call(BlockRequest {
            op: 77,
            ..BlockRequest::default()
        });
        say!(
            "refusals: past the end {}, outside guest RAM {}, unknown op {} (want {} {} {})",
            past_end.status,
            outside.status,
            unknown.status,
            status::OUT_OF_RANGE,
            status::BAD_BUFFER,
            status::UNSUPPORTED
        );
        loop {
            // Nothing left to do: wait for good (a Signal nobody sends).
            let _ = sys::call(Syscall::ReplyRecv, NO_REPLY);
        }
    }

    #[panic_handler]
    fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
        say!("panic: {}", info.message());
        sys::vm_fail()
    }
}
