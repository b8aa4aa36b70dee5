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

stub_abi::host_main!(
    "virtio-rng is a ring-3 task of the splitvisor image; it runs under the stub only. \
     `splitvisor run --rng` adds it."
);

#[cfg(target_os = "none")]
mod ring3 {

    use ipc_proto::inject::Injector;
    use stub_abi::layout::BootInfo;
    use stub_abi::sys;
    use virtio_servers::rng::{Entropy, Rng};
    use virtio_servers::Server;

    // No console right: its `say!` lines, a refused `ReplyRecv` or a
    // panic, are dropped.
    stub_abi::ring3_task!(server_main, "[virtio-rng] ");

    // Faults injected on purpose (`--inject virtio-rng:crash@N`), at the
    // N-th request: a queue notification (a doorbell).
    ipc_proto::inject_block!(INJECT);

    fn server_main(boot: BootInfo) -> ! {
        // SAFETY: the manifest grants this task guest RAM read-write;
        // nothing else in this task refers to it.
        let ram = unsafe { virtio_servers::ring3::guest_ram(&boot) };
        // No console right to say which: `--help` and the README do.
        let server = Server::new(Rng::new(Entropy::from_cpu())).with_instance(sys::instance_id());
        let injector = Injector::from_block(&INJECT);
        virtio_servers::ring3::serve_forever(server, ram, injector, PREFIX, None, ())
    }
}
