//! The disk-driver ring-3 task: the machine's IDE disk (the primary
//! channel's master, `splitvisor run --disk FILE`) driven by ATA PIO with
//! `in`, `out`, `rep insd`/`rep outsd` (or `insw`/`outsw`) on the ports the stub grants it
//! (0x1f0-0x1f7, 0x3f6: the manifest's `Rights::ports`, an I/O permission
//! bitmap), owning host IRQ 14, with guest RAM mapped read-write.
//!
//! At start it identifies the disk (IDENTIFY DEVICE), sets the largest
//! DRQ block of READ/WRITE MULTIPLE the disk offers (SET MULTIPLE MODE)
//! and prints `disk: QEMU HARDDISK, 2048 sectors (1 MiB), write cache
//! flush supported` (or `disk: no usable disk: REASON`) and `disk: PIO
//! 32-bit, 16 sectors per interrupt` (`rep insd`/`rep outsd` when IDENTIFY
//! word 48 offers 32-bit data, else `rep insw`/`rep outsw`).
//!
//! It waits for the disk by polling the status with a deadline in TSC
//! ticks (nIEN set), so a disk that never answers ends a request with a
//! timeout instead of blocking the task.
//!
//! With the self-test bit in its configuration (`splitvisor run --disk`
//! with `SPLITVISOR_DISK_SELF_TEST=1`, for the end-to-end tests only) it
//! then reads sector 0 and writes, flushes and reads back the last
//! sector through guest RAM (`disk_driver::self_test`).
//!
//! Then it serves block requests (`ipc_proto::block`) on every channel it
//! is the server of (`images::SystemSpec::device_channels`), in
//! `ReplyRecv`, moving sectors straight between the disk and guest RAM.
//! Its client in an image is the virtio-blk server (crate `virtio-blk`,
//! `splitvisor run --disk` on the PC board).
#![cfg_attr(target_os = "none", no_std, no_main)]

stub_abi::host_main!(
    "disk-driver is a ring-3 task of the splitvisor image; it runs under the stub only. \
     `splitvisor run --disk FILE` adds it."
);

#[cfg(target_os = "none")]
mod ring3 {

    use ata::{Ata, Drive, PortIo, Wait, PRIMARY};
    use disk_driver::RequestPage;
    use disk_driver::{
        DiskServer, GuestMemory, Ram, Transport, CONFIG_MAGIC, CONFIG_READ_ONLY, CONFIG_SELF_TEST,
    };
    use ipc_proto::block::{op, BlockReply, BlockRequest, ListRequest, Segment, MAX_SEGMENTS};
    use ipc_proto::manifest::MAX_CHANNELS;
    use ipc_proto::PAGE_SIZE;
    use stub_abi::inject::{self, Fault, Injector, GARBAGE};
    use stub_abi::layout::BootInfo;
    use stub_abi::sys::{self, ConsoleLine};
    use stub_abi::syscall::{irq_bit, NO_REPLY, RECV_NOTIFICATION, RECV_TIMEOUT};
    use stub_abi::Syscall;

    stub_abi::ring3_task!(server_main, "disk: ");

    /// The configuration block the image builder patches: the magic, then
    /// the flags ([`CONFIG_READ_ONLY`]).
    #[used]
    static CONFIG: [u8; 16] = sys::config_block(&CONFIG_MAGIC);

    /// Port I/O by the instructions themselves: the stub's I/O permission
    /// bitmap lets this task reach its granted ports from ring 3 and
    /// nothing else (any other port faults, and the stub ends the task).
    struct Ports;

    impl PortIo for Ports {
        stub_abi::port_io!(inb, outb, inw, outw, insw, outsw, inl, outl, insl, outsl);
    }

    /// Waits for the disk by polling the status until a TSC deadline
    /// (ATA/ATAPI-6 allows a reset 31 s; each wait here gets `ms`
    /// milliseconds), nIEN set; with `irq`, nIEN clear and each interrupt
    /// the protocol promises awaited first by blocking in `ReplyRecv` for
    /// IRQ 14's notification. `ReplyRecv` has no timeout, so a disk that
    /// never interrupts would block the task for good: the interrupt is
    /// only used by the self-test until the stub offers a wait with a
    /// deadline.
    struct TaskWait {
        ticks: u64,
        deadline: u64,
        irq: bool,
        notifications: u32,
        /// A channel whose call arrived while `wait_irq` waited.
        deferred: Option<u64>,
    }

    impl TaskWait {
        fn new(tsc_hz: u64, ms: u64) -> Self {
            // Without a measured TSC, a guess of 1 GHz (QEMU's TCG rate).
            let hz = if tsc_hz == 0 { 1_000_000_000 } else { tsc_hz };
            Self {
                ticks: hz / 1000 * ms,
                deadline: 0,
                irq: false,
                notifications: 0,
                deferred: None,
            }
        }
    }

    impl Wait for TaskWait {
        fn uses_irq(&self) -> bool {
            self.irq
        }

        fn start(&mut self) {
            self.deadline = sys::rdtsc().saturating_add(self.ticks);
        }

        fn wait_irq(&mut self) {
            // Blocks until IRQ 14's notification (one latched earlier
            // returns at once), or for one wait's budget: a disk that
            // never interrupts ends in the status polls' timeout instead
            // of blocking this server for good.
            let until = sys::rdtsc().saturating_add(self.ticks);
            loop {
                let left = until.saturating_sub(sys::rdtsc());
                if left == 0 {
                    return;
                }
                match sys::reply_recv(NO_REPLY, left) {
                    Ok(RECV_TIMEOUT) => return,
                    Ok(v) if v & RECV_NOTIFICATION != 0 && v & u64::from(irq_bit(IRQ)) != 0 => {
                        self.notifications += 1;
                        // The line is edge-triggered: unmasking it before
                        // the driver reads Status (which lowers INTRQ)
                        // loses no interrupt.
                        let _ = sys::call(Syscall::IrqAck, u64::from(IRQ));
                        return;
                    }
                    // A call: served after the self-test.
                    Ok(v) if v & RECV_NOTIFICATION == 0 => self.deferred = Some(v),
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        }

        fn pause(&mut self) -> bool {
            core::hint::spin_loop();
            sys::rdtsc() < self.deadline
        }
    }

    /// The configuration byte, read as the image builder left it.
    fn config() -> u8 {
        sys::config_byte(&CONFIG, CONFIG_MAGIC.len())
    }

    const IRQ: u8 = 14;

    /// The channels this task serves, through `ReplyRecv`: a call's
    /// request is read from its channel's page and the reply written over
    /// it (`ipc_proto::block`). IRQ 14 notifications in between (the disk
    /// should raise none: nIEN is set outside the self-test) are
    /// acknowledged.
    struct Channels {
        /// The channel whose call is being served.
        pending: Option<u64>,
        /// Faults injected on purpose (`--inject disk-driver:crash@N`), at
        /// the N-th request.
        injector: Injector,
    }

    ipc_proto::inject_block!(INJECT);

    impl Transport for Channels {
        fn reply_recv(&mut self, reply: Option<&BlockReply>) -> Option<RequestPage> {
            let mut arg = NO_REPLY;
            if let (Some(ch), Some(r)) = (self.pending.take(), reply) {
                // SAFETY: the stub maps the page of a channel this task
                // serves read-write in both ends, and the client waits in
                // `Call` while its call is served; a BlockReply fits the page.
                unsafe {
                    sys::channel_page(ch)
                        .cast::<BlockReply>()
                        .write_volatile(*r)
                };
                arg = ch;
            }
            loop {
                let v = match sys::call(Syscall::ReplyRecv, arg) {
                    Ok(v) => v,
                    Err(e) => {
                        say!("ReplyRecv refused: {}", e.describe());
                        sys::vm_fail();
                    }
                };
                arg = NO_REPLY;
                if v & RECV_NOTIFICATION != 0 {
                    if v & u64::from(irq_bit(IRQ)) != 0 {
                        let _ = Ports.inb(PRIMARY.base + ata::regs::STATUS);
                        let _ = sys::call(Syscall::IrqAck, u64::from(IRQ));
                    }
                    continue;
                }
                if v >= MAX_CHANNELS as u64 {
                    continue;
                }
                self.pending = Some(v);
                match self.injector.tick() {
                    None => {}
                    Some(Fault::Crash) => inject::crash(),
                    Some(Fault::Hang) => inject::hang(),
                    Some(Fault::Corrupt) => {
                        for i in 0..(PAGE_SIZE / 8) as usize {
                            // SAFETY: as above; the page is PAGE_SIZE bytes.
                            unsafe {
                                sys::channel_page(v)
                                    .cast::<u64>()
                                    .add(i)
                                    .write_volatile(GARBAGE)
                            };
                        }
                        inject::crash()
                    }
                }
                return Some(copy_request(v));
            }
        }
    }

    /// The request on channel `ch`'s page, copied once (volatile) so that
    /// the client cannot change it while it is served: the request, and
    /// for a scatter list as many segments as it names (at most
    /// `MAX_SEGMENTS`; `block::Request::parse` checks the count).
    fn copy_request(ch: u64) -> RequestPage {
        let mut page = [0u8; PAGE_SIZE as usize];
        let base = sys::channel_page(ch).cast::<u64>();
        // SAFETY: the stub maps the page of a channel this task serves
        // read-write in both ends; every bit pattern is a valid
        // ListRequest, read once.
        let head = unsafe { base.cast::<ListRequest>().read_volatile() };
        let segments = if matches!(head.op, op::READ_LIST | op::WRITE_LIST) {
            (head.segments as usize).min(MAX_SEGMENTS)
        } else {
            0
        };
        let bytes =
            core::mem::size_of::<ListRequest>() + segments * core::mem::size_of::<Segment>();
        for (i, word) in page.chunks_exact_mut(8).take(bytes / 8).enumerate() {
            // SAFETY: as above; `bytes` is at most the page's 4096
            // (24 + 254 x 16), so word `i` lies inside it.
            let w = unsafe { base.add(i).read_volatile() };
            word.copy_from_slice(&w.to_le_bytes());
        }
        page
    }

    fn server_main(boot: BootInfo) -> ! {
        let read_only = config() & CONFIG_READ_ONLY != 0;
        let wait = TaskWait::new(boot.tsc_hz, 5000);
        let ata = Ata::new(Ports, wait, PRIMARY, Drive::Master);
        let mut server = DiskServer::start(ata, read_only);
        // The line starts `disk: ` itself (`DiskServer::console_line`).
        sys::say_line("", format_args!("{}", server.console_line()));
        if server.info().is_some() {
            // How the data moves: `ata::DataWidth`, SET MULTIPLE MODE.
            let ata = server.ata();
            say!(
                "PIO {}-bit, {} sectors per interrupt",
                ata.data_width().bytes() * 8,
                ata.sectors_per_block()
            );
        }
        let Ok(len) = usize::try_from(boot.guest_ram_bytes) else {
            sys::vm_fail();
        };
        // SAFETY: the manifest grants this task guest RAM read-write, which
        // the stub maps at `guest_ram_window` for `guest_ram_bytes`; the
        // guest does not run while this task does (one CPU), and nothing
        // else in this task refers to it. (A hostile guest's buffers are
        // still only guest RAM: the server checks every request's range.)
        let ram = unsafe { core::slice::from_raw_parts_mut(boot.guest_ram_window as *mut u8, len) };
        let mut ram = Recorded {
            ram: Ram(ram),
            writes: sys::GuestWrites::find(),
        };
        let mut channels = Channels {
            pending: None,
            injector: Injector::from_block(&INJECT),
        };
        let mut first = None;
        if config() & CONFIG_SELF_TEST != 0 && boot.guest_ram_bytes >= 4096 {
            let mut text = ConsoleLine::new();
            // The last 4 KiB of guest RAM: the test guests do not use it.
            let gpa = boot.guest_ram_bytes - 4096;
            let _ = disk_driver::self_test(&mut server, &mut ram, gpa, &mut text);
            text.flush();
            // The same read once more, waiting for IRQ 14's notifications.
            server.ata().wait_mut().irq = true;
            let read = BlockRequest {
                op: op::READ,
                sectors: 4,
                lba: 0,
                gpa,
            };
            let r = server.handle(&read, &mut ram);
            let w = server.ata().wait_mut();
            // A disk that finished before each look at its status was not
            // waited for; its interrupts are latched as a notification
            // (QEMU's 8259 keeps an edge until it is acknowledged): take it.
            if w.notifications == 0 {
                w.wait_irq();
            }
            w.irq = false;
            // Back to polling at once: nIEN set and any INTRQ the disk
            // still asserts dropped (Status), so that the line stays quiet
            // while nobody waits for it.
            Ports.outb(PRIMARY.control, ata::regs::control::NIEN);
            let _ = Ports.inb(PRIMARY.base + ata::regs::STATUS);
            say!(
                "self-test: read 4 sectors waiting for IRQ 14: status {}, {} notifications",
                r.status,
                w.notifications
            );
            // A call that came while it waited for the interrupt: served
            // now, its reply the first the loop sends.
            if let Some(ch) = w.deferred.take() {
                channels.pending = Some(ch);
                first = Some(server.handle_page(&copy_request(ch), &mut ram));
            }
        }
        loop {
            server.serve_after(&mut channels, &mut ram, first.take());
        }
    }

    /// Guest RAM whose writes the shadow MMU hears of.
    struct Recorded<'a> {
        ram: Ram<'a>,
        writes: Option<sys::GuestWrites>,
    }

    impl GuestMemory for Recorded<'_> {
        fn bytes_mut(&mut self, gpa: u64, len: usize) -> Option<&mut [u8]> {
            self.ram.bytes_mut(gpa, len)
        }

        fn wrote(&mut self, gpa: u64, len: u64) {
            if let Some(w) = &self.writes {
                w.wrote(gpa, len);
            }
        }
    }
}
