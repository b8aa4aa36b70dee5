//! The virtio-blk device server, a ring-3 task: a virtio-pci block
//! function the vmm-server's PCI proxy (`vmm_server::devices::remote_pci`)
//! forwards every configuration and BAR access of to this task
//! (`ipc_proto::pci::PciMessage` on its channel from the vmm-server), and
//! whose sectors the disk-driver server moves straight between the disk
//! and the guest's buffers (block requests on this task's channel to the
//! disk-driver, `virtio_blk::ChannelBackend`: zero copy).
//!
//! Rights: guest RAM read-write (the virtqueues live there), the console
//! (its start line), the channel from the vmm-server and the channel to
//! the disk-driver; no ports, no IRQs. The image builder patches the
//! disk channel's number into [`CONFIG`] (`splitvisor run --disk`).
//!
//! At start it asks the disk-driver for its disk (INFO) and prints
//! `virtio-blk: N sectors (SIZE) on channel C[, read-only]` (or the reason
//! there is no disk: the guest then sees a disk of 0 sectors). Then it
//! serves the vmm-server in `ReplyRecv`: configuration and BAR accesses
//! as calls; a queue notification as a `Signal` from the vmm-server's
//! proxy (the guest runs on, also while this task waits for the
//! disk-driver), processed with one disk-driver call per guest request (a
//! scatter list of its buffers), after which this task `Signal`s the
//! proxy, whose `POLL` fetches the MSI-X messages raised.
#![cfg_attr(target_os = "none", no_std, no_main)]

stub_abi::host_main!(
    "virtio-blk is a ring-3 task of the splitvisor image; it runs under the stub only. \
     `splitvisor run --disk FILE` adds it."
);

#[cfg(target_os = "none")]
mod ring3 {

    use ipc_proto::block::{
        BlockReply, BlockRequest, ListRequest, Segment, MAX_SEGMENTS, SEGMENTS_OFFSET,
    };

    use ipc_proto::inject::Injector;
    use ipc_proto::manifest::MAX_CHANNELS;
    use stub_abi::layout::BootInfo;
    use stub_abi::sys;
    use stub_abi::Syscall;
    use virtio::devices::blk::Block;
    use virtio_blk::{
        disk_channel_from_config, ChannelBackend, ChannelError, DiskChannel, CONFIG_MAGIC,
    };
    use virtio_servers::Server;

    stub_abi::ring3_task!(server_main, "virtio-blk: ");

    // Faults injected on purpose (`--inject virtio-blk:crash@N`), at the N-th
    // request: a queue notification (a doorbell).
    ipc_proto::inject_block!(INJECT);

    /// The configuration block the image builder patches: the magic, then
    /// the disk channel's number + 1.
    #[used]
    static CONFIG: [u8; 16] = sys::config_block(&CONFIG_MAGIC);

    /// The channel to the disk-driver: this task is its client.
    struct Disk(u64);

    impl DiskChannel for Disk {
        fn call(&mut self, request: BlockRequest) -> Result<BlockReply, ChannelError> {
            let page = sys::channel_page(self.0);
            // SAFETY: the stub maps the page of a channel this task is the
            // client of read-write in both ends; the disk-driver reads it
            // only while this task waits in `Call`.
            unsafe { page.cast::<BlockRequest>().write_volatile(request) };
            sys::call(Syscall::Call, self.0)?;
            // SAFETY: as above; every bit pattern is a valid BlockReply,
            // read once.
            Ok(unsafe { page.cast::<BlockReply>().read_volatile() })
        }

        fn call_list(
            &mut self,
            request: ListRequest,
            segments: &[Segment],
        ) -> Result<BlockReply, ChannelError> {
            let page = sys::channel_page(self.0);
            // SAFETY: as in `call`; the request and at most MAX_SEGMENTS
            // segments after it fit the page (`block::MAX_SEGMENTS`), and
            // SEGMENTS_OFFSET (24) keeps each segment 8-aligned.
            unsafe {
                page.cast::<ListRequest>().write_volatile(request);
                let table = page.cast::<u8>().add(SEGMENTS_OFFSET).cast::<Segment>();
                for (i, s) in segments.iter().take(MAX_SEGMENTS).enumerate() {
                    table.add(i).write_volatile(*s);
                }
            }
            sys::call(Syscall::Call, self.0)?;
            // SAFETY: as in `call`.
            Ok(unsafe { page.cast::<BlockReply>().read_volatile() })
        }
    }

    fn server_main(boot: BootInfo) -> ! {
        let byte = sys::config_byte(&CONFIG, CONFIG_MAGIC.len());
        let Some(disk) = disk_channel_from_config(byte).filter(|&c| c < MAX_CHANNELS as u64) else {
            say!("no disk channel configured (the image builder sets it)");
            sys::vm_fail();
        };
        let backend = match ChannelBackend::connect(Disk(disk)) {
            Ok(b) => {
                let info = b.info();
                say!(
                    "{} sectors ({} MiB) on channel {disk}{}",
                    info.capacity,
                    info.capacity / 2048,
                    if b.read_only() { ", read-only" } else { "" }
                );
                b
            }
            Err((channel, e)) => {
                say!("no disk: {e}; the guest sees 0 sectors");
                ChannelBackend::absent(channel)
            }
        };
        let read_only = backend.read_only();
        let server = Server::new(Block::new(backend, read_only)).with_instance(sys::instance_id());
        // SAFETY: the manifest grants this task guest RAM read-write;
        // nothing else in this task refers to it (the guest runs while
        // this task waits for the disk-driver; see `RamWindow`).
        let ram = unsafe { virtio_servers::ring3::guest_ram(&boot) };
        let injector = Injector::from_block(&INJECT);
        virtio_servers::ring3::serve_forever(server, ram, injector, PREFIX, Some(disk), ())
    }
}
