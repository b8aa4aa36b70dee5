//! `ipc_proto::block::Request::parse` on arbitrary channel-page bytes:
//! panics if parsing panics, or if a transfer it accepts breaks one of its
//! promises (1..=MAX_SECTORS sectors, 1..=MAX_SEGMENTS segments of at
//! least one byte, none wrapping past 2^64, lengths adding up to exactly
//! sectors x 512, op READ or WRITE).
#![no_main]

use ipc_proto::block::{op, Parsed, Request, MAX_SECTORS, MAX_SEGMENTS, SECTOR_SIZE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|page: &[u8]| {
    if let Ok(Parsed::Transfer(r)) = Request::parse(page) {
        assert!(r.op == op::READ || r.op == op::WRITE);
        assert!((1..=MAX_SECTORS).contains(&r.sectors));
        assert!((1..=MAX_SEGMENTS).contains(&r.segments().len()));
        let mut total = 0u64;
        for s in r.segments() {
            assert!(s.len > 0);
            assert!(s.gpa.checked_add(u64::from(s.len)).is_some());
            total += u64::from(s.len);
        }
        assert_eq!(total, u64::from(r.sectors) * SECTOR_SIZE);
    }
});
