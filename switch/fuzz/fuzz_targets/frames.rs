//! The switch's frame path under arbitrary frames from arbitrary ports:
//! the input is a sequence of records, each a byte (bits 0-2: the source
//! port, some of them no port; bit 3: the destination VM port pops a
//! frame first), two bytes of length (little-endian, up to 2047) and that
//! many bytes of frame (fewer if the input ends). Each frame goes through
//! `Switch::forward` into three VM ports' `FrameQueue`s (the uplink takes
//! every frame). Panics on any panic, on a frame delivered back to its
//! own port or outside 14..=1514 bytes, and when the counters do not add
//! up at the end.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switch::{FrameQueue, Switch, MAX_PORTS, UPLINK};

fuzz_target!(|data: &[u8]| {
    let mut sw = Switch::new(MAX_PORTS);
    let mut queues: Vec<FrameQueue> = (0..MAX_PORTS).map(|_| FrameQueue::default()).collect();
    let (mut offered, mut taken, mut popped) = (0u64, 0u64, 0u64);
    let mut rest = data;
    while let [head, lo, hi, tail @ ..] = rest {
        let src = usize::from(head & 7);
        let len = usize::from(u16::from_le_bytes([*lo, *hi]) & 0x7ff).min(tail.len());
        let (frame, next) = tail.split_at(len);
        rest = next;
        if head & 8 != 0 {
            let q = &mut queues[src % MAX_PORTS];
            if let Some(f) = q.front() {
                assert!((14..=1514).contains(&f.len()));
                popped += 1;
            }
            q.pop();
        }
        let _ = sw.forward(src, frame, |dst, f| {
            assert_ne!(dst, src, "a frame went back to its own port");
            assert!((14..=1514).contains(&f.len()));
            offered += 1;
            let ok = dst == UPLINK || queues[dst].push(src, f);
            taken += u64::from(ok);
            ok
        });
    }
    let s = &sw.stats;
    let sum = |f: fn(&switch::PortStats) -> u64| s.iter().map(f).sum::<u64>();
    assert_eq!(sum(|p| p.out_frames), taken);
    assert_eq!(sum(|p| p.full), offered - taken);
    let waiting: usize = queues.iter().map(FrameQueue::len).sum();
    let to_vms: u64 = s[1..].iter().map(|p| p.out_frames).sum();
    assert_eq!(to_vms, waiting as u64 + popped);
});
