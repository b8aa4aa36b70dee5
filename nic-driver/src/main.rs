//! The nic-driver ring-3 task: the machine's own NE2000 (QEMU's
//! `ne2k_isa` or Bochs's `ne2k:` at 0x300, IRQ 5: `nic_driver::IRQ`;
//! `splitvisor run --nic user`) driven with
//! `in`, `out`, `rep insw` and `rep outsw` on the 32 ports the stub grants
//! it (the manifest's `Rights::ports`), owning host IRQ 5, with no guest
//! RAM: the card moves frames by remote DMA through its data port only.
//!
//! At start it resets the card and prints `nic: NE2000 at 0x300 irq 5,
//! mac 52:54:00:12:34:56` (or `nic: no usable NE2000 at 0x300: REASON`),
//! then asks the network for an address: it sends a DHCPDISCOVER and
//! prints the first DHCPOFFER, `nic: dhcp offer 10.0.2.15 from 10.0.2.2`,
//! waiting for frames on IRQ 5's notification (`ReplyRecv` with a
//! timeout; the discover is sent again after each second without an
//! offer, four times in all), and how long after the first discover it
//! came. Then it serves its link channel (`splitvisor run --net user`):
//! the virtio-net server's frames go out through the card, and frames the
//! card receives wait in its ring until the virtio-net server, signalled,
//! asks for them (`nic_driver::link`); without a client it drops them.
#![cfg_attr(target_os = "none", no_std, no_main)]

stub_abi::host_main!(
    "nic-driver is a ring-3 task of the splitvisor image; it runs under the stub only. \
     `splitvisor run --nic user` adds it."
);

#[cfg(target_os = "none")]
mod ring3 {
    use ipc_proto::manifest::MAX_CHANNELS;
    use ipc_proto::net::RX_BIT;
    use ne2k::{regs::isr, Error, Ne2k, PortIo, MAX_FRAME, RX_START, RX_STOP};
    use nic_driver::link::{Interrupt, Link, Page};
    use nic_driver::{dhcp_discover, parse_offer, Mac, BASE, IRQ};
    use stub_abi::layout::BootInfo;
    use stub_abi::sys;
    use stub_abi::syscall::{irq_bit, NO_REPLY, RECV_NOTIFICATION, RECV_TIMEOUT};
    use stub_abi::Syscall;

    stub_abi::ring3_task!(server_main, "nic: ");

    /// Port I/O by the instructions themselves: the stub's I/O permission
    /// bitmap lets this task reach its granted ports from ring 3 and
    /// nothing else (any other port faults, and the stub ends the task).
    struct Ports;

    impl PortIo for Ports {
        stub_abi::port_io!(inb, outb, inw, outw, insw, outsw);
    }

    /// Handles the card's pending events: an overflowed ring is reset,
    /// the events are acknowledged (so that the line drops before IRQ 5
    /// is unmasked), then every frame in the ring is handed to `frame`
    /// (at most one per ring page: the loop is bounded).
    fn service(nic: &mut Ne2k<Ports>, buf: &mut [u8; MAX_FRAME], mut frame: impl FnMut(&[u8])) {
        let pending = nic.interrupts();
        if pending & isr::OVW != 0 {
            nic.reset_ring();
            say!("receive ring overflowed; reset");
        }
        nic.ack(pending & !isr::RDC);
        for _ in RX_START..RX_STOP {
            match nic.receive(buf) {
                Ok(Some(n)) => frame(&buf[..n]),
                Ok(None) => break,
                Err(e @ Error::BadFrame { .. }) => say!("{e}"),
                Err(e) => {
                    say!("{e}");
                    break;
                }
            }
        }
    }

    /// Waits up to `ticks` TSC ticks for the IRQ: true if it came. A call
    /// that comes meanwhile (the link's client starting) is kept in
    /// `call`, answered once the DHCP exchange is over.
    fn wait_irq(ticks: u64, call: &mut Option<u64>) -> bool {
        match sys::reply_recv(NO_REPLY, ticks) {
            Ok(RECV_TIMEOUT) => false,
            Ok(v) if v & RECV_NOTIFICATION == 0 => {
                *call = Some(v);
                false
            }
            Ok(v) => v & u64::from(irq_bit(IRQ)) != 0,
            Err(e) => {
                say!("ReplyRecv refused: {}", e.describe());
                sys::vm_fail();
            }
        }
    }

    fn irq_ack() {
        let _ = sys::call(Syscall::IrqAck, u64::from(IRQ));
    }

    fn server_main(boot: BootInfo) -> ! {
        let mut nic = Ne2k::new(Ports, BASE);
        let mut call = None;
        let mac = match nic.reset() {
            Ok(m) => m,
            Err(e) => {
                say!("no usable NE2000 at {BASE:#x}: {e}");
                serve_link(None, call)
            }
        };
        say!("NE2000 at {BASE:#x} irq {IRQ}, mac {}", Mac(mac));
        // Without a measured TSC, a guess of 1 GHz (QEMU's TCG rate).
        let second = if boot.tsc_hz == 0 {
            1_000_000_000
        } else {
            boot.tsc_hz
        };
        let xid = 0x5356_0000 | (sys::rdtsc() & 0xffff) as u32;
        let discover = dhcp_discover(mac, xid);
        let mut buf = [0u8; MAX_FRAME];
        let mut offered = false;
        let start = sys::rdtsc();
        for tries in 1..=4 {
            if let Err(e) = nic.transmit(&discover) {
                say!("sending the DHCPDISCOVER failed: {e}");
                break;
            }
            let until = sys::rdtsc().saturating_add(second);
            while !offered {
                let left = until.saturating_sub(sys::rdtsc());
                if left == 0 || !wait_irq(left, &mut call) {
                    break;
                }
                service(&mut nic, &mut buf, |f| {
                    if let Some(o) = parse_offer(f, mac, xid) {
                        if !offered {
                            say!("{o}");
                        }
                        offered = true;
                    }
                });
                irq_ack();
            }
            if offered {
                // A figure for the README, in the machine's own time.
                let us = sys::rdtsc().saturating_sub(start).saturating_mul(1_000_000) / second;
                say!("the offer came {us} us after the first discover ({tries} sent)");
                break;
            }
        }
        if !offered {
            say!("no DHCP offer after 4 tries");
        }
        serve_link(Some(nic), call)
    }

    /// Serves the link channel's client (the virtio-net server) for ever:
    /// its SEND, RECEIVE and INFO requests (`nic_driver::link`, starting
    /// with `call` if one came during the DHCP exchange), and the card's
    /// IRQ: frames wait in the card's ring and the client is signalled.
    fn serve_link(mut nic: Option<Ne2k<Ports>>, call: Option<u64>) -> ! {
        let mut link = Link::default();
        let mut dropped_said = 0;
        let mut next = call;
        let mut reply_to = NO_REPLY;
        loop {
            let v = match next.take() {
                Some(ch) => ch,
                None => match sys::reply_recv(reply_to, 0) {
                    Ok(v) => v,
                    Err(e) => {
                        say!("ReplyRecv refused: {}", e.describe());
                        sys::vm_fail();
                    }
                },
            };
            reply_to = NO_REPLY;
            if v & RECV_NOTIFICATION != 0 {
                if v & u64::from(irq_bit(IRQ)) != 0 {
                    if let Some(nic) = nic.as_mut() {
                        if let Interrupt::SignalClient(ch) = link.interrupt(nic) {
                            let _ = sys::signal(ch, RX_BIT);
                        }
                    }
                    irq_ack();
                }
            } else if v < MAX_CHANNELS as u64 {
                let page = sys::channel_page(v).cast::<Page>();
                // SAFETY: `v` is a channel this task serves (ReplyRecv
                // returns only those); its page is mapped read-write here
                // for good, and the client waits in `Call` while this task
                // uses it. Every bit pattern is a valid byte array.
                let page = unsafe { &mut *page };
                link.serve(nic.as_mut(), v, page);
                reply_to = v;
            }
            // Drops said at 1, 2, 4, 8, ...: visible, never a flood.
            if link.rx_dropped > dropped_said && link.rx_dropped.is_power_of_two() {
                dropped_said = link.rx_dropped;
                say!(
                    "{} received frames dropped (bad, overflowed or no client)",
                    link.rx_dropped
                );
            }
        }
    }
}
