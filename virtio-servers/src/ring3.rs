//! The loop every virtio device server's ring-3 task runs (console, rng,
//! blk): `ReplyRecv` on the channel from the vmm-server's proxy, each
//! configuration or BAR access applied with [`Server::message`] and
//! answered, each doorbell `Signal` processed with [`Server::notified`]
//! and answered with a `Signal` back (the proxy then fetches the
//! interrupts with a `POLL`), and `--inject` ticked at each request.

use ipc_proto::inject::Injector;
use ipc_proto::manifest::MAX_CHANNELS;
use ipc_proto::pci::{PciMessage, DOORBELL_COUNT_OFFSET};
use ipc_proto::sys;
use ipc_proto::syscall::{NO_REPLY, RECV_NOTIFICATION};
use ipc_proto::Syscall;
use virtio::VirtioDevice;

use crate::{inject_at_request, GuestWriteSink, RamWindow, Server};

/// Serves the proxy for ever. `client_of` is a channel this task calls
/// (virtio-blk's to the disk-driver): never served here, and scribbled
/// too by an injected `corrupt`. `before` sees each message before it is
/// applied (the console fills its input buffer at a `POLL`). `prefix`
/// starts this loop's own lines.
pub fn serve_forever<D: VirtioDevice, W: GuestWriteSink>(
    mut server: Server<D>,
    mut ram: RamWindow<W>,
    mut injector: Injector,
    prefix: &str,
    client_of: Option<u64>,
    mut before: impl FnMut(&mut Server<D>, &PciMessage),
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
        before(&mut server, &request);
        let reply = server.message(v, &mut ram, &request);
        // SAFETY: as above; the reply fits the page.
        unsafe { page.write_volatile(reply) };
        reply_to = v;
    }
}
