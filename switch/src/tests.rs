use super::*;
use proptest::prelude::*;

const A: [u8; 6] = [0x02, 0x53, 0x56, 0, 0, 1];
const B: [u8; 6] = [0x02, 0x53, 0x56, 0, 0, 2];
const GW: [u8; 6] = [0x52, 0x55, 10, 0, 2, 2];
const BCAST: [u8; 6] = [0xff; 6];

fn frame(dst: [u8; 6], src: [u8; 6], len: usize) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len).map(|i| i as u8).collect();
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f
}

/// Forwards and returns the ports it went out of.
fn send(sw: &mut Switch, src: usize, f: &[u8]) -> (Result<(), Drop>, Vec<usize>) {
    let mut out = Vec::new();
    let r = sw.forward(src, f, |p, _| {
        out.push(p);
        true
    });
    (r, out)
}

#[test]
fn without_an_uplink_nothing_goes_to_port_0() {
    let mut sw = Switch::new(3).without_uplink();
    assert_eq!(send(&mut sw, 1, &frame(BCAST, A, 342)), (Ok(()), vec![2]));
    assert_eq!(send(&mut sw, 2, &frame(A, B, 60)), (Ok(()), vec![1]));
    assert_eq!(send(&mut sw, 1, &frame(GW, A, 60)), (Ok(()), vec![2]));
    assert_eq!(sw.stats[UPLINK], PortStats::default());
}

#[test]
fn unknown_and_broadcast_flood_learned_unicast_goes_to_its_port() {
    let mut sw = Switch::new(3);
    // Nothing learned: flooded to every other port.
    assert_eq!(
        send(&mut sw, 1, &frame(BCAST, A, 342)),
        (Ok(()), vec![0, 2])
    );
    assert_eq!(send(&mut sw, 0, &frame(B, GW, 60)), (Ok(()), vec![1, 2]));
    // A is learned on 1, GW on 0.
    assert_eq!(send(&mut sw, 0, &frame(A, GW, 60)), (Ok(()), vec![1]));
    assert_eq!(send(&mut sw, 2, &frame(GW, B, 60)), (Ok(()), vec![0]));
    assert_eq!(send(&mut sw, 0, &frame(B, GW, 60)), (Ok(()), vec![2]));
    // A multicast destination floods even when its address was seen.
    assert_eq!(
        send(&mut sw, 1, &frame([0x01, 0, 0x5e, 0, 0, 1], A, 60)).1,
        vec![0, 2]
    );
    // A station that moves is learned on its new port.
    assert_eq!(send(&mut sw, 2, &frame(GW, A, 60)), (Ok(()), vec![0]));
    assert_eq!(sw.lookup(&A), Some(2));
    // A frame for a station on its own port is filtered.
    assert_eq!(
        send(&mut sw, 2, &frame(B, A, 60)),
        (Err(Drop::Filtered), vec![])
    );
    assert_eq!(sw.stats[2].filtered, 1);
    assert_eq!(sw.stats[1].out_frames, 2);
    assert_eq!(sw.stats[1].out_bytes, 60 + 60, "the two frames for A");
    assert_eq!(sw.stats[1].in_bytes, 342 + 60);
}

#[test]
fn malformed_frames_and_multicast_sources_are_dropped_and_counted() {
    let mut sw = Switch::new(2);
    for len in [0, 1, 13] {
        let f = vec![0u8; len];
        assert_eq!(send(&mut sw, 1, &f), (Err(Drop::Runt), vec![]));
    }
    assert_eq!(
        send(&mut sw, 1, &frame(GW, A, 1515)),
        (Err(Drop::Giant), vec![])
    );
    assert_eq!(
        send(&mut sw, 0, &frame(A, GW, 1518)),
        (Err(Drop::Giant), vec![])
    );
    assert_eq!(
        send(&mut sw, 1, &frame(GW, BCAST, 60)),
        (Err(Drop::SourceMulticast), vec![])
    );
    assert_eq!(
        send(&mut sw, 1, &frame(GW, [0x03, 0, 0, 0, 0, 1], 60)).0,
        Err(Drop::SourceMulticast)
    );
    // The boundaries pass.
    assert_eq!(send(&mut sw, 1, &frame(GW, A, 14)).0, Ok(()));
    assert_eq!(send(&mut sw, 1, &frame(GW, A, 1514)).0, Ok(()));
    assert_eq!(sw.lookup(&BCAST), None, "never learned");
    let s = sw.stats[1];
    assert_eq!(
        (s.runt, s.giant, s.src_multicast, s.in_frames),
        (3, 1, 2, 8)
    );
    assert_eq!(sw.stats[0].giant, 1);
    sw.refuse_length(1, 13);
    sw.refuse_length(1, u64::from(u32::MAX));
    assert_eq!((sw.stats[1].runt, sw.stats[1].giant), (4, 2));
    assert_eq!(
        send(&mut sw, 7, &frame(GW, A, 60)),
        (Ok(()), vec![]),
        "no such port"
    );
    let line = sw.stats[1].to_string();
    assert!(
        line.starts_with("in=10/") && line.contains(" runt=4 giant=2 srcmc=2 "),
        "{line}"
    );
}

#[test]
fn a_port_that_cannot_take_a_frame_counts_it_as_full() {
    let mut sw = Switch::new(3);
    let r = sw.forward(1, &frame(BCAST, A, 100), |p, _| p != 2);
    assert_eq!(r, Ok(()));
    assert_eq!((sw.stats[0].out_frames, sw.stats[2].full), (1, 1));
}

#[test]
fn a_flooding_source_gets_half_a_queue_and_the_others_the_rest() {
    let mut q = FrameQueue::default();
    let mut taken = 0;
    for i in 0..100 {
        taken += usize::from(q.push(0, &frame(A, GW, 60 + i)));
    }
    assert_eq!(taken, SHARE);
    assert!(!q.has_room_for(0) && q.has_room_for(2));
    for _ in 0..100 {
        q.push(2, &frame(A, B, 70));
    }
    assert_eq!(q.len(), QUEUE_FRAMES, "the other half is the rest's");
    assert!(!q.has_room_for(3), "but the queue is full");
    assert_eq!(q.front().map(<[u8]>::len), Some(60), "in order");
    q.pop();
    assert_eq!(q.front().map(<[u8]>::len), Some(61));
    assert!(q.has_room_for(0) && !q.has_room_for(2));
    while !q.is_empty() {
        q.pop();
    }
    q.pop();
    assert!(q.front().is_none());
    assert!(!q.push(0, &[0; 1515]) && !q.push(MAX_PORTS, &[0; 60]));
}

#[test]
fn the_table_forgets_the_oldest_station_when_full() {
    let mut sw = Switch::new(2);
    let mac = |i: usize| [0x02, 0, 0, 0, (i >> 8) as u8, i as u8];
    for i in 0..=TABLE_ENTRIES {
        assert_eq!(send(&mut sw, 1, &frame(BCAST, mac(i), 60)).0, Ok(()));
    }
    assert_eq!(sw.lookup(&mac(0)), None);
    assert_eq!(sw.lookup(&mac(1)), Some(1));
    assert_eq!(sw.lookup(&mac(TABLE_ENTRIES)), Some(1));
}

fn any_frame() -> impl Strategy<Value = (usize, Vec<u8>)> {
    // Few addresses, so that they are learned and met again; any length
    // around the limits; any source port, some of them no port at all.
    let mac = prop_oneof![
        Just(A),
        Just(B),
        Just(GW),
        Just(BCAST),
        Just([0x01, 0, 0x5e, 0, 0, 1]),
        any::<[u8; 6]>(),
    ];
    let len = prop_oneof![0usize..20, 20usize..200, 1500usize..1530];
    (0usize..5, mac.clone(), mac, len).prop_map(|(p, d, s, len)| {
        let mut f = vec![0xa5u8; len];
        for (i, b) in d.iter().chain(s.iter()).enumerate().take(len) {
            f[i] = *b;
        }
        (p, f)
    })
}

proptest! {
    #[test]
    fn no_frame_goes_back_to_its_port_and_the_counters_add_up(
        frames in proptest::collection::vec(any_frame(), 0..200),
        refuse in any::<u8>(),
    ) {
        let ports = 4;
        let mut sw = Switch::new(ports);
        let mut delivered = 0u64;
        let mut offered = 0u64;
        let mut bytes_out = 0u64;
        for (src, f) in &frames {
            let r = sw.forward(*src, f, |p, g| {
                assert_ne!(p, *src, "delivered back to its own port");
                assert!(p < ports);
                assert_eq!(g, &f[..]);
                assert!((14..=1514).contains(&g.len()));
                offered += 1;
                // Some ports refuse some frames, as a full queue does.
                let ok = (refuse >> p) & 1 == 0 || g.len() % 2 == 0;
                if ok {
                    delivered += 1;
                    bytes_out += g.len() as u64;
                }
                ok
            });
            if r.is_err() {
                prop_assert!(*src < ports);
            }
        }
        let s = &sw.stats[..ports];
        let sum = |f: fn(&PortStats) -> u64| s.iter().map(f).sum::<u64>();
        let valid = frames.iter().filter(|(p, _)| *p < ports).count() as u64;
        prop_assert_eq!(sum(|p| p.in_frames), valid);
        prop_assert_eq!(sw.total_in(), valid);
        prop_assert_eq!(
            sum(|p| p.in_bytes),
            frames.iter().filter(|(p, _)| *p < ports).map(|(_, f)| f.len() as u64).sum::<u64>()
        );
        prop_assert_eq!(sum(|p| p.out_frames), delivered);
        prop_assert_eq!(sum(|p| p.out_bytes), bytes_out);
        prop_assert_eq!(sum(|p| p.full), offered - delivered);
        // Every frame in was dropped at the door or went out of at least
        // one port (or was refused there).
        let forwarded = sum(|p| p.in_frames) - sum(PortStats::in_dropped);
        prop_assert!(forwarded <= offered);
        prop_assert!(offered <= forwarded * (ports as u64 - 1));
    }

    #[test]
    fn a_queue_keeps_its_bounds_and_order(ops in proptest::collection::vec((0usize..MAX_PORTS + 1, 0usize..1520, any::<bool>()), 0..300)) {
        let mut q = FrameQueue::default();
        let mut model: std::collections::VecDeque<(usize, usize)> = Default::default();
        for (src, len, pop) in ops {
            if pop {
                prop_assert_eq!(q.front().map(<[u8]>::len), model.front().map(|m| m.1));
                q.pop();
                model.pop_front();
            } else {
                let held = model.iter().filter(|m| m.0 == src).count();
                let room = src < MAX_PORTS && model.len() < QUEUE_FRAMES && held < SHARE && len <= 1514;
                prop_assert_eq!(q.push(src, &vec![len as u8; len]), room);
                if room {
                    model.push_back((src, len));
                }
            }
            prop_assert_eq!(q.len(), model.len());
        }
    }
}

#[test]
fn the_uplink_channel_comes_from_the_configuration_byte() {
    assert_eq!(uplink_from_config(0), None);
    assert_eq!(uplink_from_config(3), Some(2));
}
