//! The virtio-rng ring-3 task: a virtio-pci entropy function (the
//! `virtio` crate's `VirtioPci<Rng>`) as a server of its own.
//!
//! The vmm-server's proxy (`vmm_server::devices::remote_pci`) forwards each
//! configuration-space and BAR access of the function, and a poll after
//! exits, as an `ipc_proto::pci::PciMessage` on its channel to this task.
//! This task loops on `ReplyRecv`: it applies each message with
//! `virtio_servers::Server` and fills the guest's buffers of the queues
//! whose doorbells the proxy signalled (in guest RAM mapped into this
//! task), and hands the proxy the interrupts raised (MSI-X messages,
//! INTA#'s level): in a reply, or after a `Signal` that makes it poll.
//! `--inject virtio-rng:crash@N|corrupt@N` counts doorbells. The bytes come from
//! RDRAND, or, on a CPU without it, from a PRNG seeded from the TSC that is
//! not cryptographic (`virtio_servers::rng`).
//! Rights: guest RAM read-write, its channel (no console: its `say!` lines,
//! a refused `ReplyRecv` or a panic, are dropped, and the stub reports the
//! VM's failure).
#![cfg_attr(target_os = "none", no_std, no_main)]
#![warn(clippy::undocumented_unsafe_blocks)]

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "virtio-rng is a ring-3 task of the splitvisor image; it runs under the stub only. \
         `splitvisor run --rng` adds it."
    );
    std::process::exit(2);
}

#[cfg(target_os = "none")]
mod ring3 {

    use ipc_proto::inject::{self, Injector};
    use ipc_proto::sys;
    use ipc_proto::ABI_VERSION;
    use virtio_servers::rng::{Entropy, Rng};
    use virtio_servers::{RamWindow, Server};

    ipc_proto::server_entry!(server_main);

    // Faults injected on purpose (`--inject virtio-rng:crash@N`), at the
    // N-th request: a queue notification (a doorbell).
    ipc_proto::inject_block!(INJECT);

    macro_rules! say {
        ($($arg:tt)*) => {
            ipc_proto::sys::say_line("[virtio-rng] ", format_args!($($arg)*))
        };
    }

    extern "C" fn server_main() -> ! {
        let boot = sys::boot_info();
        if boot.abi_version != ABI_VERSION {
            say!(
                "the stub speaks ABI version {}, this server was built for version {ABI_VERSION}",
                boot.abi_version
            );
            sys::vm_fail();
        }
        // SAFETY: the manifest grants this task guest RAM read-write, which
        // the stub maps at `guest_ram_window` for `guest_ram_bytes`; nothing
        // else in this task refers to it.
        let ram = unsafe { RamWindow::new(boot.guest_ram_window as *mut u8, boot.guest_ram_bytes) }
            .with_guest_writes(sys::GuestWrites::find());
        // No console right to say which: `--help` and the README do.
        let server = Server::new(Rng::new(Entropy::from_cpu())).with_instance(sys::instance_id());
        let injector = Injector::new(&inject::read_block(&INJECT));
        virtio_servers::ring3::serve_forever(
            server,
            ram,
            injector,
            "[virtio-rng] ",
            None,
            |_, _| {},
        )
    }

    #[panic_handler]
    fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
        match info.location() {
            Some(l) => say!("panic: {} at {}:{}", info.message(), l.file(), l.line()),
            None => say!("panic: {}", info.message()),
        }
        sys::vm_fail()
    }
}
