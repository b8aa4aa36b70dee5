//! The loop every virtio device server's ring-3 task runs (console, rng,
//! blk, net): `ReplyRecv` on the channel from the vmm-server's proxy, each
//! configuration or BAR access applied with [`Server::message`] and
//! answered, each doorbell `Signal` processed with [`Server::notified`]
//! and answered with a `Signal` back (the proxy then fetches the
//! interrupts with a `POLL`), and `--inject` ticked at each request.

use ipc_proto::inject::Injector;
use ipc_proto::manifest::MAX_CHANNELS;
use ipc_proto::pci::{PciMessage, DOORBELL_COUNT_OFFSET};
use stub_abi::layout::BootInfo;
use stub_abi::sys;
use stub_abi::syscall::{NO_REPLY, RECV_NOTIFICATION};
use stub_abi::Syscall;
use virtio::VirtioDevice;

use crate::{inject_at_request, GuestWriteSink, RamWindow, Server};

/// The guest-RAM window of a task the manifest grants guest RAM
/// read-write (the stub maps it at `guest_ram_window` for
/// `guest_ram_bytes`), reporting its writes on the task's guest-writes
/// channel if it has one.
///
/// # Safety
///
/// The task has that right, and nothing else in it refers to the window
/// (the guest may run while the task waits for another server; see
/// [`RamWindow`]).
pub unsafe fn guest_ram(boot: &BootInfo) -> RamWindow<sys::GuestWrites> {
    // SAFETY: the caller vouches for the mapping and that it is unshared.
    unsafe { RamWindow::new(boot.guest_ram_window as *mut u8, boot.guest_ram_bytes) }
        .with_guest_writes(sys::GuestWrites::find())
}

/// What a server adds to [`serve_forever`]'s loop; each does nothing
/// unless the server says otherwise (`()` adds nothing).
pub trait Hooks<D: VirtioDevice, W: GuestWriteSink> {
    /// Notification bits of this task's own, not doorbells (virtio-net's
    /// link `RX_BIT`).
    fn bits(&self) -> u64 {
        0
    }

    /// Those of [`Hooks::bits`] that came, before the doorbells that came
    /// with them are processed (and the proxy signalled).
    fn notified(&mut self, _server: &mut Server<D>, _ram: &mut RamWindow<W>, _bits: u64) {}

    /// Sees each message before it is applied (the console fills its
    /// input buffer at a `POLL`).
    fn before(&mut self, _server: &mut Server<D>, _request: &PciMessage) {}

    /// After each message or notification (virtio-net says its drops).
    fn after(&mut self, _server: &Server<D>) {}
}

impl<D: VirtioDevice, W: GuestWriteSink> Hooks<D, W> for () {}

/// Serves the proxy for ever. `client_of` is a channel this task calls
/// (virtio-blk's to the disk-driver, virtio-net's link): never served
/// here, and scribbled too by an injected `corrupt`. `hooks` adds the
/// server's own steps. `prefix` starts this loop's own lines.
pub fn serve_forever<D: VirtioDevice, W: GuestWriteSink>(
    mut server: Server<D>,
    mut ram: RamWindow<W>,
    mut injector: Injector,
    prefix: &str,
    client_of: Option<u64>,
    mut hooks: impl Hooks<D, W>,
) -> ! {
    let scribble = |served: Option<u64>| {
        served
            .into_iter()
            .chain(client_of)
            .for_each(sys::scribble_channel_page);
    };
    let mut reply_to = NO_REPLY;
    loop {
        // Replies to the call before (none the first time) and waits for
        // the next one or for a doorbell.
        let v = match sys::call(Syscall::ReplyRecv, reply_to) {
            Ok(v) => v,
            Err(e) => {
                sys::say_line(prefix, format_args!("ReplyRecv refused: {}", e.describe()));
                sys::vm_fail();
            }
        };
        reply_to = NO_REPLY;
        if v & RECV_NOTIFICATION != 0 {
            let own = v & hooks.bits();
            if own != 0 {
                hooks.notified(&mut server, &mut ram, own);
            }
            let v = v & !own;
            if v & 0xffff != 0 {
                let served = server.client();
                inject_at_request(&mut injector, || scribble(served));
            }
            let count = server.client().map_or(0, |ch| {
                let at = sys::channel_page(ch).wrapping_add(DOORBELL_COUNT_OFFSET);
                // SAFETY: the page of the channel this task serves is
                // mapped read-write here; the proxy wrote the count before
                // its Signal and does not run while we do.
                unsafe { at.cast::<u64>().read_volatile() }
            });
            if let Some((ch, bits)) = server.notified(&mut ram, v, count) {
                // The proxy fetches the interrupts with a POLL.
                let _ = sys::signal(ch, bits);
            }
            hooks.after(&server);
            continue;
        }
        if v >= MAX_CHANNELS as u64 || Some(v) == client_of {
            continue;
        }
        let page = sys::channel_page(v).cast::<PciMessage>();
        // SAFETY: `v` is a channel this task serves (the stub returns only
        // those from ReplyRecv); its page is mapped read-write in both ends
        // and the proxy waits in `Call`. Every bit pattern is a valid
        // PciMessage (it fits the page), read once.
        let request = unsafe { page.read_volatile() };
        if server.is_doorbell(&request) {
            inject_at_request(&mut injector, || scribble(Some(v)));
        }
        hooks.before(&mut server, &request);
        let reply = server.message(v, &mut ram, &request);
        // SAFETY: as above; the reply fits the page.
        unsafe { page.write_volatile(reply) };
        hooks.after(&server);
        reply_to = v;
    }
}
