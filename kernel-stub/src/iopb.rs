//! The I/O permission bitmap of the TSS (Intel SDM vol. 1, 19.5.2; AMD APM
//! vol. 2, 13.2.4): one bit per port, 0 lets ring 3 use the port with
//! IN/OUT, 1 makes it #GP. The stub keeps every bit set but those of the
//! running task's granted ranges: on a task switch it sets the previous
//! task's bits and clears the next one's (a few bytes, not 8 KiB).

use ipc_proto::manifest::PortRange;

/// Bytes of the bitmap: one bit for each of the 65536 ports. The TSS
/// holds one more byte after it, all ones (the CPU reads two bytes for a
/// port near the end).
pub const IOPB_BYTES: usize = 8192;

/// Sets the bits of `r` to allowed (`allow`: 0) or denied (1).
pub fn set_range(bitmap: &mut [u8; IOPB_BYTES], r: &PortRange, allow: bool) {
    if r.first > r.last {
        return;
    }
    let (first, last) = (usize::from(r.first), usize::from(r.last));
    let (first_byte, last_byte) = (first / 8, last / 8);
    let bytes = bitmap[first_byte..=last_byte].iter_mut();
    for (byte, b) in (first_byte..).zip(bytes) {
        let lo = if byte == first_byte { first % 8 } else { 0 };
        let hi = if byte == last_byte { last % 8 } else { 7 };
        // Bits lo..=hi of this byte.
        let mask = (0xffu8 >> (7 - hi)) & (0xffu8 << lo);
        if allow {
            *b &= !mask;
        } else {
            *b |= mask;
        }
    }
}

/// A task switch: `prev`'s ports denied again, then `next`'s allowed.
pub fn switch(bitmap: &mut [u8; IOPB_BYTES], prev: &[PortRange], next: &[PortRange]) {
    for r in prev {
        set_range(bitmap, r, false);
    }
    for r in next {
        set_range(bitmap, r, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn allowed(bitmap: &[u8; IOPB_BYTES], port: u16) -> bool {
        bitmap[usize::from(port) / 8] & (1 << (port % 8)) == 0
    }

    #[test]
    fn one_range_opens_exactly_its_ports() {
        let mut b = [0xff; IOPB_BYTES];
        set_range(
            &mut b,
            &PortRange {
                first: 0x1f0,
                last: 0x1f7,
            },
            true,
        );
        assert_eq!(b[0x1f0 / 8], 0x00);
        assert!(b
            .iter()
            .enumerate()
            .all(|(i, &v)| i == 0x1f0 / 8 || v == 0xff));
        set_range(
            &mut b,
            &PortRange {
                first: 0x3f6,
                last: 0x3f6,
            },
            true,
        );
        assert_eq!(b[0x3f6 / 8], !(1 << 6));
        set_range(
            &mut b,
            &PortRange {
                first: 0xfffe,
                last: 0xffff,
            },
            true,
        );
        assert!(allowed(&b, 0xffff) && allowed(&b, 0xfffe) && !allowed(&b, 0xfffd));
    }

    fn range() -> impl Strategy<Value = PortRange> {
        (any::<u16>(), 0u16..300).prop_map(|(first, n)| PortRange {
            first,
            last: first.saturating_add(n),
        })
    }

    proptest! {
        /// After a switch from `prev` to `next`, a port is allowed exactly
        /// when `next` grants it, whatever `prev` was; switching back to
        /// nothing restores the all-ones bitmap.
        #[test]
        fn a_switch_allows_exactly_the_next_tasks_ports(
            prev in proptest::collection::vec(range(), 0..4),
            next in proptest::collection::vec(range(), 0..4),
            probes in proptest::collection::vec(any::<u16>(), 64),
        ) {
            let mut b = [0xff; IOPB_BYTES];
            switch(&mut b, &[], &prev);
            switch(&mut b, &prev, &next);
            let granted = |p: u16| next.iter().any(|r| r.first <= p && p <= r.last);
            for p in probes.into_iter().chain(next.iter().flat_map(|r| [r.first, r.last, r.first.wrapping_sub(1), r.last.wrapping_add(1)])) {
                prop_assert_eq!(allowed(&b, p), granted(p), "port {:#x}", p);
            }
            switch(&mut b, &next, &[]);
            prop_assert!(b.iter().all(|&v| v == 0xff));
        }
    }
}
