//! The virtio-console ring-3 task: a virtio-pci console function (the
//! `virtio` crate's `VirtioPci<Console>`) as a server of its own.
//!
//! The vmm-server's proxy (`vmm_server::devices::remote_pci`) forwards each
//! configuration-space and BAR access of the function, and a poll after
//! exits, as an `ipc_proto::pci::PciMessage` on its channel to this task.
//! This task loops on `ReplyRecv`: it applies each message with
//! `virtio_servers::Server` and processes the queues whose doorbells the
//! proxy signalled (in guest RAM mapped into this task), writes the guest's output to the host
//! console (`ConsoleWrite`), reads host input (`ConsoleRead`) when polled,
//! and hands the proxy the interrupts raised (MSI-X messages, INTA#'s
//! level): in a reply, or after a `Signal` that makes it poll.
//! Rights: guest RAM read-write, the console, its channel.
#![cfg_attr(target_os = "none", no_std, no_main)]
#![warn(clippy::undocumented_unsafe_blocks)]

stub_abi::host_main!(
    "virtio-console is a ring-3 task of the splitvisor image; it runs under the stub only. \
     `splitvisor run --console hvc0` adds it."
);

#[cfg(target_os = "none")]
mod ring3 {

    use ipc_proto::inject::Injector;
    use ipc_proto::pci::{op, PciMessage};
    use stub_abi::layout::BootInfo;
    use stub_abi::sys;
    use virtio_servers::console::{Console, ConsoleOutput, InputBuffer};
    use virtio_servers::ring3::Hooks;
    use virtio_servers::{GuestWriteSink, Server};

    stub_abi::ring3_task!(server_main, "[virtio-console] ");

    // Faults injected on purpose (`--inject virtio-console:crash@N`), at the
    // N-th request: a queue notification (a doorbell).
    ipc_proto::inject_block!(INJECT);

    /// The guest's output: straight to the host console.
    struct HostOutput;

    impl ConsoleOutput for HostOutput {
        fn write(&mut self, data: &[u8]) {
            sys::console_write(data);
        }
    }

    type Device = Console<HostOutput, InputBuffer>;

    /// Host input read at each `POLL`, into the input buffer.
    struct ReadAtPoll;

    impl<W: GuestWriteSink> Hooks<Device, W> for ReadAtPoll {
        fn before(&mut self, server: &mut Server<Device>, request: &PciMessage) {
            if request.op == op::POLL {
                server.pci.device_mut().input_mut().fill(sys::console_read);
            }
        }
    }

    fn server_main(boot: BootInfo) -> ! {
        // SAFETY: the manifest grants this task guest RAM read-write;
        // nothing else in this task refers to it.
        let ram = unsafe { virtio_servers::ring3::guest_ram(&boot) };
        let server = Server::new(Console::new(HostOutput, InputBuffer::new()))
            .with_instance(sys::instance_id());
        let injector = Injector::from_block(&INJECT);
        virtio_servers::ring3::serve_forever(server, ram, injector, PREFIX, None, ReadAtPoll)
    }
}
