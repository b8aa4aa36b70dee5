//! The virtio-net ring-3 task: a virtio-pci network function (the
//! `virtio` crate's `VirtioPci<Net>`) as a server of its own, whose
//! uplink is its channel to the nic-driver (`splitvisor run --net user`).
//!
//! Like the other virtio servers it serves the vmm-server's proxy on one
//! channel (configuration and BAR accesses, doorbells by `Signal`), and it
//! is the client of a link channel to the nic-driver
//! (`ipc_proto::net`): each frame the guest sends is gathered from its
//! buffers into that channel's page and sent with one call; when the
//! nic-driver signals `RX_BIT` this task asks for the waiting frames and
//! writes them into the guest's receive buffers, then signals the proxy
//! to fetch the interrupt. Frames the guest gets wrong (a header asking
//! for an offload, too short, longer than 1514 bytes) are dropped and
//! counted; the counts are printed at 1, 2, 4, 8, ... drops.
//! Rights: guest RAM read-write, the console, its two channels.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "virtio-net is a ring-3 task of the splitvisor image; it runs under the stub only. \
         `splitvisor run --net user` adds it."
    );
    std::process::exit(2);
}

#[cfg(target_os = "none")]
mod ring3 {
    use ipc_proto::inject::Injector;
    use ipc_proto::manifest::MAX_CHANNELS;
    use ipc_proto::net::RX_BIT;
    use ipc_proto::pci::PciMessage;
    use stub_abi::{sys, Syscall};
    use virtio::devices::net::{Net, NetStats};
    use virtio_servers::net::{
        guest_mac, link_channel_from_config, LinkChannel, LinkError, Page, Uplink, CONFIG_MAGIC,
    };
    use virtio_servers::ring3::{serve_forever, Hooks};
    use virtio_servers::{GuestWriteSink, RamWindow, Server};

    stub_abi::server_entry!(server_main);

    #[used]
    static CONFIG: [u8; 16] = sys::config_block(&CONFIG_MAGIC);

    // Faults injected on purpose (`--inject virtio-net:crash@N`), at the
    // N-th request: a queue notification (a doorbell).
    ipc_proto::inject_block!(INJECT);

    macro_rules! say {
        ($($arg:tt)*) => {
            stub_abi::sys::say_line("virtio-net: ", format_args!($($arg)*))
        };
    }

    /// The link channel to the nic-driver.
    struct Link {
        ch: u64,
        page: &'static mut Page,
    }

    impl LinkChannel for Link {
        fn page(&mut self) -> &mut Page {
            self.page
        }

        fn call(&mut self) -> Result<(), LinkError> {
            sys::call(Syscall::Call, self.ch)
                .map(|_| ())
                .map_err(LinkError)
        }
    }

    /// Says what was dropped when a count reaches a power of two.
    fn report(now: &NetStats, said: &mut NetStats) {
        let news = |n: u64, said: &mut u64, what: &str| {
            if n > *said && n.is_power_of_two() {
                *said = n;
                say!("{n} {what} dropped");
            }
        };
        news(
            now.tx_malformed,
            &mut said.tx_malformed,
            "malformed frames from the guest",
        );
        news(
            now.tx_oversized,
            &mut said.tx_oversized,
            "oversized frames from the guest (longer than 1514 bytes)",
        );
        news(
            now.rx_dropped,
            &mut said.rx_dropped,
            "frames for the guest (too long for its buffer)",
        );
    }

    extern "C" fn server_main() -> ! {
        let boot = sys::checked_boot_info("virtio-net: ");
        // SAFETY: the image builder patches this byte; read once, volatile
        // so the compiler does not fold the zero it was built with.
        let byte = unsafe { core::ptr::read_volatile(&CONFIG[CONFIG_MAGIC.len()]) };
        let Some(ch) = link_channel_from_config(byte).filter(|&c| c < MAX_CHANNELS as u64) else {
            say!("no link channel configured (the image builder sets it)");
            sys::vm_fail();
        };
        // SAFETY: this task is the client of channel `ch` (the manifest
        // says so), whose page the stub maps read-write here for good; the
        // nic-driver touches it only while this task waits in `Call`, and
        // nothing else in this task refers to it.
        let page = unsafe { &mut *sys::channel_page(ch).cast::<Page>() };
        // SAFETY: like the byte above, the next one, patched by the
        // image builder (the guest's address), read once.
        let mac = guest_mac(unsafe { core::ptr::read_volatile(&CONFIG[CONFIG_MAGIC.len() + 1]) });
        let mut uplink = Uplink::new(Link { ch, page });
        match uplink.info() {
            Ok(r) if r.status == ipc_proto::net::status::OK => {
                let m = r.mac;
                say!(
                    "mac {}, uplink on channel {ch}: the nic-driver's card {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                    mac_text(mac),
                    m[0], m[1], m[2], m[3], m[4], m[5]
                );
            }
            Ok(r) => say!(
                "mac {}, link on channel {ch}: no card behind it (status {}): frames reach the switch's other ports only",
                mac_text(mac),
                r.status
            ),
            Err(e) => say!("{e}: frames go nowhere"),
        }
        let server = Server::new(Net::new(mac, uplink)).with_instance(sys::instance_id());
        // SAFETY: the manifest grants this task guest RAM read-write, which
        // the stub maps at `guest_ram_window` for `guest_ram_bytes`; nothing
        // else in this task refers to it.
        let ram = unsafe { RamWindow::new(boot.guest_ram_window as *mut u8, boot.guest_ram_bytes) }
            .with_guest_writes(sys::GuestWrites::find());
        let injector = Injector::from_block(&INJECT);
        serve_forever(
            server,
            ram,
            injector,
            "virtio-net: ",
            Some(ch),
            LinkHooks::default(),
        )
    }

    /// A station address as the usual text.
    fn mac_text(m: [u8; 6]) -> impl core::fmt::Display {
        struct Mac([u8; 6]);
        impl core::fmt::Display for Mac {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                let m = self.0;
                write!(
                    f,
                    "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                    m[0], m[1], m[2], m[3], m[4], m[5]
                )
            }
        }
        Mac(m)
    }

    /// The link's signal besides the doorbells: received frames are
    /// moved into the guest's buffers at once, not at the proxy's next
    /// poll; and the drops said as they grow.
    #[derive(Default)]
    struct LinkHooks {
        said: NetStats,
    }

    impl<W: GuestWriteSink> Hooks<Net<Uplink<Link>>, W> for LinkHooks {
        fn bits(&self) -> u64 {
            RX_BIT
        }

        fn notified(
            &mut self,
            server: &mut Server<Net<Uplink<Link>>>,
            ram: &mut RamWindow<W>,
            _bits: u64,
        ) {
            server.pci.device_mut().backend_mut().frames_arrived();
            server.pci.poll(ram);
        }

        fn before(&mut self, server: &mut Server<Net<Uplink<Link>>>, request: &PciMessage) {
            if request.op == ipc_proto::pci::op::END {
                // The VM ends: the switch prints its counters.
                let _ = server.pci.device_mut().backend_mut().stats();
            }
        }

        fn after(&mut self, server: &Server<Net<Uplink<Link>>>) {
            report(&server.pci.device().stats(), &mut self.said);
        }
    }

    #[panic_handler]
    fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
        say!("panic: {}", info.message());
        sys::vm_fail()
    }
}
