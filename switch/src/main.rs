//! The switch ring-3 task (`splitvisor run --net user`): a learning
//! Ethernet switch (`switch::Switch`) between the VMs' virtio-net servers
//! and the nic-driver, with no guest RAM, no ports and no IRQs: its rights
//! are the console and its channels.
//!
//! Its ports are link channels (`ipc_proto::net`). Port 0, the uplink,
//! is its channel to the nic-driver, which it calls (the channel's number
//! is in its configuration block, patched by the image builder; none: the
//! switch joins the VMs to each other only, `--vms N --net switch`); the VM
//! ports are the channels it serves, numbered 1, 2, ... in the order their
//! clients first call. To a virtio-net server the switch looks like the
//! nic-driver: SEND switches the frame (to the uplink by a SEND call, to a
//! VM port into its queue and a `Signal` with `RX_BIT`), RECEIVE hands out
//! the port's next queued frame, INFO answers the uplink card's address.
//! When the nic-driver signals `RX_BIT` the switch RECEIVEs the frames
//! waiting in the card while every VM port has room for them (the card's
//! ring holds the rest, as it did for virtio-net). The counters are
//! printed (`switch: port 0 uplink in=... out=...`, one line a port) when
//! the frames in reach 1, 2, 4, 8, ..., and at STATS, which virtio-net
//! sends when the vmm-server tells it that the VM ends (`switch: at the
//! VM's end: port 0 uplink ...`).
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "switch is a ring-3 task of the splitvisor image; it runs under the stub only. \
         `splitvisor run --net user` adds it."
    );
    std::process::exit(2);
}

#[cfg(target_os = "none")]
mod ring3 {
    use ipc_proto::manifest::MAX_CHANNELS;
    use ipc_proto::net::{op, status, LinkMessage, MAX_SEND, RX_BIT, RX_OFFSET, TX_OFFSET};
    use stub_abi::inject::{crash, hang, Fault, Injector};
    use stub_abi::syscall::{NO_REPLY, RECV_NOTIFICATION};
    use stub_abi::{sys, Syscall};
    use switch::{FrameQueue, Switch, MAX_PORTS, UPLINK};
    use zerocopy::{FromBytes, IntoBytes};

    stub_abi::server_entry!(server_main);

    #[used]
    static CONFIG: [u8; 16] = sys::config_block(&switch::CONFIG_MAGIC);

    // Faults injected on purpose (`--inject switch:crash@N`), at the N-th
    // call of a VM port.
    ipc_proto::inject_block!(INJECT);

    /// Ticks `injector` at a VM port's call on channel `ch`; a `corrupt`
    /// scribbles over that channel's page before it crashes.
    fn inject_at_call(injector: &mut Injector, ch: u64) {
        match injector.tick() {
            None => {}
            Some(Fault::Crash) => crash(),
            Some(Fault::Hang) => hang(),
            Some(Fault::Corrupt) => {
                sys::scribble_channel_page(ch);
                crash()
            }
        }
    }

    /// The VM ports' queues, too large for the stack (about 24 KiB each).
    static mut QUEUES: [Option<FrameQueue>; MAX_PORTS] = [const { None }; MAX_PORTS];

    macro_rules! say {
        ($($arg:tt)*) => {
            stub_abi::sys::say_line("switch: ", format_args!($($arg)*))
        };
    }

    /// A channel page's bytes.
    type Page = [u8; ipc_proto::PAGE_SIZE as usize];

    fn page(ch: u64) -> &'static mut Page {
        // SAFETY: `ch` is one of this task's channels (the uplink, which it
        // calls, or one it serves, which ReplyRecv returned); the stub maps
        // each channel's page read-write here for good, and the other end
        // touches it only while this task waits in its `Call` or that end
        // waits in its own. The caller holds one such reference at a time.
        unsafe { &mut *sys::channel_page(ch).cast::<Page>() }
    }

    /// Asks the uplink `request`; its reply, or None if the call failed
    /// or there is none.
    fn ask(uplink: Option<u64>, request: LinkMessage) -> Option<LinkMessage> {
        let uplink = uplink?;
        let p = page(uplink);
        let _ = request.write_to_prefix(&mut p[..]);
        sys::call(Syscall::Call, uplink).ok()?;
        LinkMessage::read_from_prefix(&p[..]).ok().map(|(m, _)| m)
    }

    struct State {
        sw: Switch,
        uplink: Option<u64>,
        /// The uplink card's address, asked at the first INFO (not at
        /// start: the nic-driver answers calls only after its DHCP
        /// exchange, and a virtio-net server calling meanwhile would find
        /// this task waiting in its own call, not ready).
        mac: Option<[u8; 6]>,
        /// The VM ports' channels: `vms[i]` is port i + 1.
        vms: [Option<u64>; MAX_PORTS - 1],
        queues: &'static mut [Option<FrameQueue>; MAX_PORTS],
        /// The nic-driver signalled and its card's ring may hold frames.
        uplink_waiting: bool,
        /// VM ports that got frames since they were last signalled.
        to_signal: u32,
        said: u64,
    }

    impl State {
        fn port_of(&mut self, ch: u64) -> Option<usize> {
            if let Some(i) = self.vms.iter().position(|&c| c == Some(ch)) {
                return Some(i + 1);
            }
            let i = self.vms.iter().position(Option::is_none)?;
            self.vms[i] = Some(ch);
            self.queues[i + 1] = Some(FrameQueue::default());
            say!("port {} is channel {ch}", i + 1);
            Some(i + 1)
        }

        /// Switches `frame` from port `src` (the frame is on a channel
        /// page other than the uplink's when `src` is a VM port).
        fn switch(&mut self, src: usize, frame: &[u8]) {
            let (uplink, queues, to_signal) = (self.uplink, &mut *self.queues, &mut self.to_signal);
            let _ = self.sw.forward(src, frame, |dst, f| {
                if let (UPLINK, Some(uplink)) = (dst, uplink) {
                    let p = page(uplink);
                    p[TX_OFFSET..TX_OFFSET + f.len()].copy_from_slice(f);
                    let r = ask(
                        Some(uplink),
                        LinkMessage {
                            op: op::SEND,
                            // At most MAX_SEND.
                            len: f.len() as u32,
                            ..LinkMessage::default()
                        },
                    );
                    return r.is_some_and(|r| r.status == status::OK);
                }
                let took = queues[dst].as_mut().is_some_and(|q| q.push(src, f));
                if took {
                    *to_signal |= 1 << dst;
                }
                took
            });
        }

        /// RECEIVEs the frames waiting at the uplink while every VM port
        /// has room for one from it (at most a card ring's worth a round).
        fn pull_uplink(&mut self) {
            let mut buf = [0u8; MAX_SEND + 4];
            for _ in 0..64 {
                let room = self.queues.iter().flatten().all(|q| q.has_room_for(UPLINK));
                if !self.uplink_waiting || !room {
                    return;
                }
                let request = LinkMessage {
                    op: op::RECEIVE,
                    ..LinkMessage::default()
                };
                let (Some(uplink), Some(n)) = (
                    self.uplink,
                    ask(self.uplink, request).and_then(|r| r.received_len()),
                ) else {
                    self.uplink_waiting = false;
                    return;
                };
                // Copied off the uplink's page: `switch` may not read it
                // while a frame could be sent through it.
                let n = n.min(buf.len());
                buf[..n].copy_from_slice(&page(uplink)[RX_OFFSET..RX_OFFSET + n]);
                self.switch(UPLINK, &buf[..n]);
            }
        }

        /// Answers the request on VM port `port`'s channel `ch`, in place.
        fn serve(&mut self, port: Option<usize>, ch: u64) {
            let p = page(ch);
            let request = LinkMessage::read_from_prefix(&p[..])
                .map(|(m, _)| m)
                .unwrap_or_default();
            let mut reply = LinkMessage {
                op: request.op,
                ..LinkMessage::default()
            };
            reply.status = match (port, request.op) {
                (None, _) => status::NO_CARD,
                (Some(_), op::INFO) => {
                    if self.mac.is_none() {
                        let info = LinkMessage {
                            op: op::INFO,
                            ..LinkMessage::default()
                        };
                        self.mac = ask(self.uplink, info)
                            .filter(|r| r.status == status::OK)
                            .map(|r| [r.mac[0], r.mac[1], r.mac[2], r.mac[3], r.mac[4], r.mac[5]]);
                    }
                    match self.mac {
                        Some(m) => {
                            reply.mac[..6].copy_from_slice(&m);
                            status::OK
                        }
                        None => status::NO_CARD,
                    }
                }
                (Some(port), op::SEND) => match request.send_len() {
                    Some(n) => {
                        // Straight from the port's page (never the
                        // uplink's, which `switch` writes).
                        self.switch(port, &p[TX_OFFSET..TX_OFFSET + n]);
                        status::OK
                    }
                    None => {
                        self.sw.refuse_length(port, u64::from(request.len));
                        status::BAD_LENGTH
                    }
                },
                (Some(_), op::STATS) => {
                    self.said = u64::MAX;
                    self.print("at the VM's end: ");
                    status::OK
                }
                (Some(port), op::RECEIVE) => match self.queues[port].as_mut() {
                    Some(q) => match q.front() {
                        Some(f) => {
                            p[RX_OFFSET..RX_OFFSET + f.len()].copy_from_slice(f);
                            // At most MAX_SEND.
                            reply.len = f.len() as u32;
                            q.pop();
                            status::OK
                        }
                        None => status::EMPTY,
                    },
                    None => status::EMPTY,
                },
                _ => status::UNSUPPORTED,
            };
            if let Some(s) = port.and_then(|i| self.sw.stats.get(i)) {
                // The port's counters, as the nic-driver gives its own.
                reply.tx_frames = s.in_frames - s.in_dropped();
                reply.rx_frames = s.out_frames;
                reply.rx_dropped = s.full;
                reply.tx_errors = s.in_dropped();
            }
            let _ = reply.write_to_prefix(&mut p[..]);
        }

        /// Signals the VM ports that got frames.
        fn signal(&mut self) {
            for (i, ch) in self.vms.iter().enumerate() {
                if self.to_signal & (1 << (i + 1)) != 0 {
                    if let Some(ch) = ch {
                        let _ = sys::signal(*ch, RX_BIT);
                    }
                }
            }
            self.to_signal = 0;
        }

        /// The counters, one line a port, when the frames in reach a power
        /// of two.
        fn report(&mut self) {
            let n = self.sw.total_in();
            if n <= self.said || !n.is_power_of_two() {
                return;
            }
            self.said = n;
            self.print("");
        }

        /// One line a port, each starting `at`.
        fn print(&self, at: &str) {
            if self.uplink.is_some() {
                say!("{at}port 0 uplink {}", self.sw.stats[UPLINK]);
            }
            for (i, ch) in self.vms.iter().enumerate() {
                if let Some(ch) = ch {
                    say!("{at}port {} vm ch {ch} {}", i + 1, self.sw.stats[i + 1]);
                }
            }
        }
    }

    extern "C" fn server_main() -> ! {
        sys::checked_boot_info("switch: ");
        // SAFETY: the image builder patches this byte; read once, volatile
        // so the compiler does not fold the zero it was built with.
        let byte = unsafe { core::ptr::read_volatile(&CONFIG[switch::CONFIG_MAGIC.len()]) };
        let uplink = switch::uplink_from_config(byte);
        if uplink.is_some_and(|c| c >= MAX_CHANNELS as u64) {
            say!("the uplink channel configured is not a channel");
            sys::vm_fail();
        }
        match uplink {
            Some(c) => say!("{} ports at most, uplink on channel {c}, a source may fill {} of a VM port's {} queued frames", MAX_PORTS, switch::SHARE, switch::QUEUE_FRAMES),
            None => say!("{} ports at most, no uplink (the VMs' ports only), a source may fill {} of a VM port's {} queued frames", MAX_PORTS, switch::SHARE, switch::QUEUE_FRAMES),
        }
        // SAFETY: the only reference to QUEUES, taken once here; this task
        // has one thread.
        let queues = unsafe { &mut *core::ptr::addr_of_mut!(QUEUES) };
        let sw = Switch::new(MAX_PORTS);
        let mut st = State {
            sw: if uplink.is_some() {
                sw
            } else {
                sw.without_uplink()
            },
            uplink,
            mac: None,
            vms: [None; MAX_PORTS - 1],
            queues,
            // Frames may wait already: asked after the first request.
            uplink_waiting: uplink.is_some(),
            to_signal: 0,
            said: 0,
        };
        let mut injector = Injector::from_block(&INJECT);
        let mut reply_to = NO_REPLY;
        loop {
            let v = match sys::reply_recv(reply_to, 0) {
                Ok(v) => v,
                Err(e) => {
                    say!("ReplyRecv refused: {}", e.describe());
                    sys::vm_fail();
                }
            };
            reply_to = NO_REPLY;
            if v & RECV_NOTIFICATION != 0 {
                if v & RX_BIT != 0 {
                    st.uplink_waiting = true;
                }
            } else if v < MAX_CHANNELS as u64 && Some(v) != uplink {
                inject_at_call(&mut injector, v);
                let port = st.port_of(v);
                st.serve(port, v);
                reply_to = v;
            }
            // A RECEIVE made room, or the uplink signalled. Not before a VM
            // port called: the nic-driver is busy with DHCP until then.
            if st.vms[0].is_some() {
                st.pull_uplink();
            }
            st.signal();
            st.report();
        }
    }

    #[panic_handler]
    fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
        say!("panic: {}", info.message());
        sys::vm_fail()
    }
}
