//! The driver's tests against [`crate::model`].
extern crate std;

use std::vec;
use std::vec::Vec;

use proptest::prelude::*;

use crate::model::{Card, BASE, QEMU_MAC};
use crate::*;

fn started() -> Ne2k<Card> {
    let mut nic = Ne2k::new(Card::new(QEMU_MAC), BASE).with_max_polls(1000);
    assert_eq!(nic.reset().unwrap(), QEMU_MAC);
    nic
}

/// A frame to the card of `len` bytes with a pattern from `seed`.
fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect();
    f[..6].copy_from_slice(&QEMU_MAC);
    f
}

fn receive(nic: &mut Ne2k<Card>) -> Result<Option<Vec<u8>>, Error> {
    let mut buf = [0u8; MAX_FRAME];
    nic.receive(&mut buf).map(|r| r.map(|n| buf[..n].to_vec()))
}

#[test]
fn reset_reads_the_station_address_and_starts_the_card() {
    let nic = started();
    let card = nic.io();
    assert_eq!(card.phys, QEMU_MAC);
    assert_eq!(card.start, u32::from(RX_START) << 8);
    assert_eq!(card.stop, u32::from(RX_STOP) << 8);
    assert_eq!(card.curpag, RX_START + 1);
    assert_eq!(card.boundary, RX_START);
    assert_eq!(card.cmd & regs::cr::STA, regs::cr::STA);
    assert_eq!(card.dcfg, regs::DCR_WORD);
    assert_eq!(card.imr, IMR);
    assert!(!card.irq());
}

#[test]
fn a_floating_bus_is_no_card() {
    struct Floating;
    impl PortIo for Floating {
        fn inb(&mut self, _: u16) -> u8 {
            0xff
        }
        fn outb(&mut self, _: u16, _: u8) {}
        fn inw(&mut self, _: u16) -> u16 {
            0xffff
        }
        fn outw(&mut self, _: u16, _: u16) {}
    }
    let mut nic = Ne2k::new(Floating, BASE);
    assert_eq!(nic.reset(), Err(Error::NoCard { cr: 0xff }));
}

#[test]
fn nothing_at_another_base_is_no_card() {
    let mut nic = Ne2k::new(Card::new(QEMU_MAC), 0x240).with_max_polls(10);
    // Nothing at 0x240 (the model sits at 0x300): the CR reads 0xff.
    assert!(matches!(nic.reset(), Err(Error::NoCard { .. })));
}

#[test]
fn transmit_sends_the_frame_padded_to_60_bytes() {
    let mut nic = started();
    nic.transmit(&[1, 2, 3]).unwrap();
    let long = frame(MAX_TX_FRAME, 9);
    nic.transmit(&long).unwrap();
    let sent = &nic.io().sent;
    assert_eq!(sent.len(), 2);
    let mut short = vec![0u8; MIN_FRAME];
    short[..3].copy_from_slice(&[1, 2, 3]);
    assert_eq!(sent[0], short);
    assert_eq!(sent[1], long);
    assert_eq!(
        nic.transmit(&frame(MAX_TX_FRAME + 1, 0)),
        Err(Error::FrameTooLong {
            len: MAX_TX_FRAME + 1
        })
    );
    // TX done acknowledged: no interrupt left.
    assert!(!nic.io().irq());
}

#[test]
fn an_odd_length_frame_goes_out_whole() {
    let mut nic = started();
    let f = frame(101, 3);
    nic.transmit(&f).unwrap();
    assert_eq!(nic.io().sent[0], f);
}

#[test]
fn received_frames_come_back_in_order_and_the_irq_follows_isr() {
    let mut nic = started();
    assert_eq!(receive(&mut nic).unwrap(), None);
    let a = frame(60, 1);
    let b = frame(333, 2);
    assert!(nic.io_mut().deliver(&a));
    assert!(nic.io_mut().deliver(&b));
    assert!(nic.io().irq());
    let isr = nic.interrupts();
    assert_eq!(isr & regs::isr::PRX, regs::isr::PRX);
    nic.ack(isr);
    assert!(!nic.io().irq());
    assert_eq!(receive(&mut nic).unwrap(), Some(a));
    assert_eq!(receive(&mut nic).unwrap(), Some(b));
    assert_eq!(receive(&mut nic).unwrap(), None);
}

#[test]
fn short_frames_arrive_padded_and_broadcasts_are_taken() {
    let mut nic = started();
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x52, 0x55, 0, 0, 0, 2, 0x08, 0x00, 0xab]);
    assert!(nic.io_mut().deliver(&f));
    let got = receive(&mut nic).unwrap().unwrap();
    assert_eq!(got.len(), MIN_FRAME);
    assert_eq!(got[..f.len()], f[..]);
    // Another station's unicast is filtered by the card.
    let mut other = frame(64, 0);
    other[5] ^= 1;
    assert!(nic.io_mut().deliver(&other));
    assert_eq!(receive(&mut nic).unwrap(), None);
}

#[test]
fn frames_wrap_around_the_end_of_the_ring() {
    let mut nic = started();
    // 58 pages; frames of 6 pages each go round the ring several times.
    for i in 0..40u8 {
        let f = frame(1500, i);
        assert!(nic.io_mut().deliver(&f), "frame {i}");
        assert_eq!(receive(&mut nic).unwrap(), Some(f), "frame {i}");
    }
    assert_eq!(nic.ring_resets(), 0);
}

#[test]
fn a_full_ring_refuses_frames_until_the_driver_reads() {
    let mut nic = started();
    let mut taken = 0;
    for i in 0..20u8 {
        if nic.io_mut().deliver(&frame(1500, i)) {
            taken += 1;
        }
    }
    assert!((8..20).contains(&taken), "{taken}");
    for i in 0..taken {
        assert_eq!(receive(&mut nic).unwrap(), Some(frame(1500, i)));
    }
    assert_eq!(receive(&mut nic).unwrap(), None);
    assert!(nic.io_mut().deliver(&frame(1500, 99)));
}

#[test]
fn a_next_page_outside_the_ring_resets_the_ring() {
    let mut nic = started();
    assert!(nic.io_mut().deliver(&frame(100, 1)));
    let at = usize::from(RX_START + 1) << 8;
    nic.io_mut().mem[at + 1] = 0x20;
    assert_eq!(
        receive(&mut nic),
        Err(Error::RingReset {
            page: RX_START + 1,
            next: 0x20
        })
    );
    assert_eq!(nic.ring_resets(), 1);
    assert_eq!(receive(&mut nic).unwrap(), None);
    // The ring works again.
    let f = frame(200, 5);
    assert!(nic.io_mut().deliver(&f));
    assert_eq!(receive(&mut nic).unwrap(), Some(f));
}

#[test]
fn a_next_page_that_disagrees_with_the_length_resets_the_ring() {
    let mut nic = started();
    assert!(nic.io_mut().deliver(&frame(100, 1)));
    let at = usize::from(RX_START + 1) << 8;
    nic.io_mut().mem[at + 1] = RX_START + 9;
    assert!(matches!(receive(&mut nic), Err(Error::RingReset { .. })));
}

#[test]
fn a_header_that_goes_nowhere_or_past_curr_resets_the_ring() {
    // A next page equal to its own page (length 0: no progress, the
    // driver would read the same header for ever).
    let mut nic = started();
    assert!(nic.io_mut().deliver(&frame(100, 1)));
    let at = usize::from(RX_START + 1) << 8;
    nic.io_mut().mem[at + 1] = RX_START + 1;
    nic.io_mut().mem[at + 2] = 0;
    nic.io_mut().mem[at + 3] = 0;
    assert!(matches!(
        receive(&mut nic),
        Err(Error::RingReset { next, .. }) if next == RX_START + 1
    ));
    // A frame that agrees with its next page but runs past CURR (the
    // card wrote one page; the header claims six).
    let mut nic = started();
    assert!(nic.io_mut().deliver(&frame(100, 1)));
    nic.io_mut().mem[at + 1] = RX_START + 7;
    nic.io_mut().mem[at + 2] = 0xf0;
    nic.io_mut().mem[at + 3] = 0x05;
    assert!(matches!(receive(&mut nic), Err(Error::RingReset { .. })));
    assert_eq!(receive(&mut nic).unwrap(), None);
}

#[test]
fn a_bad_length_or_status_skips_the_frame_only() {
    let mut nic = started();
    assert!(nic.io_mut().deliver(&frame(100, 1)));
    let good = frame(120, 2);
    assert!(nic.io_mut().deliver(&good));
    let at = usize::from(RX_START + 1) << 8;
    // Status without PRX.
    nic.io_mut().mem[at] = 0x02;
    assert!(matches!(
        receive(&mut nic),
        Err(Error::BadFrame { status: 0x02, .. })
    ));
    assert_eq!(receive(&mut nic).unwrap(), Some(good));
    // A length below the header's 4 bytes.
    assert!(nic.io_mut().deliver(&frame(100, 3)));
    let page = usize::from(RX_START + 3) << 8;
    nic.io_mut().mem[page + 2] = 2;
    nic.io_mut().mem[page + 3] = 0;
    assert!(matches!(
        receive(&mut nic),
        Err(Error::BadFrame { len: 2, .. })
    ));
    assert_eq!(nic.ring_resets(), 0);
}

#[test]
fn an_overflow_recovery_empties_the_ring_and_receiving_goes_on() {
    let mut nic = started();
    for i in 0..5u8 {
        assert!(nic.io_mut().deliver(&frame(700, i)));
    }
    nic.reset_ring();
    assert_eq!(nic.ring_resets(), 1);
    let card = nic.io();
    assert_eq!((card.boundary, card.curpag), (RX_START, RX_START + 1));
    // Started again, normal transmit configuration, OVW acknowledged.
    assert_eq!(card.cmd & (regs::cr::STA | regs::cr::STP), regs::cr::STA);
    assert_eq!(card.isr & regs::isr::OVW, 0);
    assert_eq!(receive(&mut nic).unwrap(), None);
    let f = frame(900, 42);
    assert!(nic.io_mut().deliver(&f));
    assert_eq!(receive(&mut nic).unwrap(), Some(f));
}

#[test]
fn a_curr_outside_the_ring_resets_the_ring() {
    let mut nic = started();
    nic.io_mut().curpag = 0x10;
    assert!(matches!(
        receive(&mut nic),
        Err(Error::RingReset { next: 0x10, .. })
    ));
    assert_eq!(nic.io().curpag, RX_START + 1);
}

/// A card whose every read answers the next of a list of random bytes.
struct Random {
    answers: Vec<u8>,
    at: usize,
    reads: usize,
}

impl Random {
    fn next(&mut self) -> u8 {
        self.reads += 1;
        let v = self.answers.get(self.at).copied().unwrap_or(0);
        self.at = (self.at + 1) % self.answers.len().max(1);
        v
    }
}

impl PortIo for Random {
    fn inb(&mut self, _: u16) -> u8 {
        self.next()
    }
    fn outb(&mut self, _: u16, _: u8) {}
    fn inw(&mut self, _: u16) -> u16 {
        u16::from_le_bytes([self.next(), self.next()])
    }
    fn outw(&mut self, _: u16, _: u16) {}
}

proptest! {
    /// Whatever the card answers, the driver neither panics nor loops
    /// without bound, and any frame it returns fits the buffer.
    #[test]
    fn random_answers_never_panic(answers in proptest::collection::vec(any::<u8>(), 1..512)) {
        let mut nic = Ne2k::new(Random { answers, at: 0, reads: 0 }, BASE).with_max_polls(50);
        let _ = nic.reset();
        let mut buf = [0u8; MAX_FRAME];
        for _ in 0..(RX_STOP - RX_START) {
            if let Ok(Some(n)) = nic.receive(&mut buf) {
                prop_assert!((MIN_FRAME..=MAX_FRAME).contains(&n));
            }
        }
        let _ = nic.transmit(&[0u8; 100]);
        nic.reset_ring();
        // Each call polls at most 50 times per wait and reads a frame once.
        prop_assert!(nic.io().reads < 100_000);
    }

    /// A card whose ring memory holds garbage (any header, any pointer)
    /// costs the driver at most one ring reset per call and never a
    /// panic; it returns only whole frames of a possible length, and the
    /// ring works again afterwards.
    #[test]
    fn a_corrupted_ring_never_panics(
        writes in proptest::collection::vec((0usize..0x3a00, any::<u8>()), 1..200),
        curr in any::<u8>(),
    ) {
        let mut nic = started();
        for i in 0..4u8 {
            prop_assert!(nic.io_mut().deliver(&frame(300 + 200 * usize::from(i), i)));
        }
        let ring = usize::from(RX_START) << 8;
        for (at, v) in writes {
            nic.io_mut().mem[ring + at] = v;
        }
        nic.io_mut().curpag = curr;
        let mut buf = [0u8; MAX_FRAME];
        let mut emptied = false;
        for _ in RX_START..RX_STOP {
            match nic.receive(&mut buf) {
                Ok(Some(n)) => prop_assert!((MIN_FRAME..=MAX_FRAME).contains(&n)),
                Ok(None) => {
                    emptied = true;
                    break;
                }
                Err(Error::BadFrame { .. }) => {}
                Err(Error::RingReset { .. }) => {}
                Err(e) => prop_assert!(false, "{e}"),
            }
        }
        // Every call took the driver at least a page closer to CURR, or
        // reset the ring: a drain of RX_STOP - RX_START calls ends empty.
        prop_assert!(emptied);
        let f = frame(500, 77);
        prop_assert!(nic.io_mut().deliver(&f));
        let mut got = None;
        for _ in RX_START..RX_STOP {
            match nic.receive(&mut buf) {
                Ok(Some(n)) if buf[..n] == f[..] => {
                    got = Some(n);
                    break;
                }
                Ok(None) => break,
                _ => {}
            }
        }
        prop_assert_eq!(got, Some(f.len()));
    }

    /// Any sequence of frames of any length goes through the model's ring
    /// and comes back unchanged, the ring wrapping as it fills.
    #[test]
    fn frames_come_back_unchanged(lens in proptest::collection::vec(60usize..=1514, 1..60), batch in 1usize..6) {
        let mut nic = started();
        let mut pending = std::collections::VecDeque::new();
        for (i, len) in lens.iter().enumerate() {
            let f = frame(*len, i as u8);
            if nic.io_mut().deliver(&f) {
                pending.push_back(f);
            }
            if pending.len() >= batch {
                while let Some(want) = pending.pop_front() {
                    prop_assert_eq!(receive(&mut nic).unwrap(), Some(want));
                }
            }
        }
        while let Some(want) = pending.pop_front() {
            prop_assert_eq!(receive(&mut nic).unwrap(), Some(want));
        }
        prop_assert_eq!(receive(&mut nic).unwrap(), None);
        prop_assert_eq!(nic.ring_resets(), 0);
    }
}
