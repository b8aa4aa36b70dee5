//! The server against `ata::model`'s disk and a `Vec` for guest RAM.
extern crate std;

use std::string::{String, ToString};
use std::vec;
use std::vec::Vec;

use ata::model::{Attached, Device};
use ata::{Drive, Spin, PRIMARY};

use super::*;
use ipc_proto::block::{ListRequest, MAX_SECTORS, MAX_SEGMENTS};

type Server = DiskServer<Device, Spin>;

fn server(dev: Device, read_only: bool) -> Server {
    DiskServer::start(
        Ata::new(dev, Spin::new(100), PRIMARY, Drive::Master).with_max_polls(1000),
        read_only,
    )
}

fn req(op: u32, lba: u64, sectors: u32, gpa: u64) -> BlockRequest {
    BlockRequest {
        op,
        sectors,
        lba,
        gpa,
    }
}

#[test]
fn the_console_line_says_what_the_disk_is() {
    let s = server(Device::disk(2048), false);
    assert_eq!(
        s.console_line().to_string(),
        "disk: QEMU HARDDISK, 2048 sectors (1 MiB), write cache flush supported"
    );
    let s = server(Device::disk(4096), true);
    assert_eq!(
        s.console_line().to_string(),
        "disk: QEMU HARDDISK, 4096 sectors (2 MiB), write cache flush supported, read-only"
    );
    let s = server(Device::new(Attached::FloatingBus, 0, false), false);
    assert!(
        s.console_line()
            .to_string()
            .starts_with("disk: no usable disk: no ATA device answers"),
        "{}",
        s.console_line()
    );
}

#[test]
fn info_gives_capacity_and_flags() {
    let mut ram = vec![0u8; 4096];
    let mut s = server(Device::disk(2048), false);
    let r = s.handle(&req(op::INFO, 0, 0, 0), &mut Ram(&mut ram));
    assert_eq!(
        (r.status, r.capacity, r.flags),
        (status::OK, 2048, flags::FLUSH)
    );
    let mut s = server(Device::disk(2048), true);
    let r = s.handle(&req(op::INFO, 0, 0, 0), &mut Ram(&mut ram));
    assert_eq!(r.flags, flags::FLUSH | flags::READ_ONLY);
}

#[test]
fn sectors_move_straight_between_the_disk_and_guest_ram() {
    let mut ram = vec![0u8; 64 * 1024];
    for (i, b) in ram[0x1001..0x1001 + 3 * 512].iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    let mut s = server(Device::disk(2048), false);
    // An odd guest-physical address: PIO needs no alignment.
    let w = s.handle(&req(op::WRITE, 40, 3, 0x1001), &mut Ram(&mut ram));
    assert_eq!((w.status, w.sectors), (status::OK, 3));
    assert_eq!(s.ata().io().sector(41)[..], ram[0x1201..0x1401]);
    let before = ram.clone();
    let r = s.handle(&req(op::READ, 40, 3, 0x8000), &mut Ram(&mut ram));
    assert_eq!((r.status, r.sectors), (status::OK, 3));
    assert_eq!(ram[0x8000..0x8000 + 1536], before[0x1001..0x1001 + 1536]);
    // Nothing outside the buffer changed.
    assert_eq!(ram[..0x8000], before[..0x8000]);
    assert_eq!(ram[0x8000 + 1536..], before[0x8000 + 1536..]);
    let f = s.handle(&req(op::FLUSH, 0, 0, 0), &mut Ram(&mut ram));
    assert_eq!(f.status, status::OK);
    assert_eq!(s.ata().io().flushes, 1);
}

#[test]
fn bad_requests_are_refused_before_the_disk_sees_them() {
    let mut ram = vec![0u8; 8192];
    let mut s = server(Device::disk(100), false);
    for (r, want) in [
        (req(op::READ, 99, 2, 0), status::OUT_OF_RANGE),
        (req(op::READ, u64::MAX, 1, 0), status::OUT_OF_RANGE),
        (req(op::READ, 0, 0, 0), status::OUT_OF_RANGE),
        (req(op::WRITE, 0, MAX_SECTORS + 1, 0), status::OUT_OF_RANGE),
        (req(op::READ, 0, 1, 8192 - 511), status::BAD_BUFFER),
        (req(op::WRITE, 0, 1, u64::MAX - 10), status::BAD_BUFFER),
        (req(op::READ, 0, 17, 0), status::BAD_BUFFER),
        (req(0, 0, 1, 0), status::UNSUPPORTED),
        (req(99, 0, 1, 0), status::UNSUPPORTED),
    ] {
        assert_eq!(s.handle(&r, &mut Ram(&mut ram)).status, want, "{r:?}");
    }
    assert_eq!(
        s.ata().io().commands,
        [
            ata::regs::command::IDENTIFY_DEVICE,
            ata::regs::command::SET_MULTIPLE_MODE
        ]
    );
}

#[test]
fn a_read_only_disk_refuses_writes_and_has_nothing_to_flush() {
    let mut ram = vec![0u8; 4096];
    let mut s = server(Device::disk(100), true);
    let r = s.handle(&req(op::WRITE, 0, 1, 0), &mut Ram(&mut ram));
    assert_eq!(r.status, status::READ_ONLY);
    assert_eq!(
        s.handle(&req(op::FLUSH, 0, 0, 0), &mut Ram(&mut ram))
            .status,
        status::OK
    );
    assert_eq!(
        s.handle(&req(op::READ, 0, 1, 0), &mut Ram(&mut ram)).status,
        status::OK
    );
    assert_eq!(s.ata().io().flushes, 0);
}

#[test]
fn a_bad_sector_is_an_io_error_with_the_registers_and_the_sectors_moved() {
    let mut dev = Device::disk(100);
    dev.bad_sector = Some(12);
    // DRQ blocks of 2: sectors 10 and 11 arrive, the block of 12 fails.
    dev.max_multiple = 2;
    let mut s = server(dev, false);
    let mut ram = vec![0u8; 8192];
    let r = s.handle(&req(op::READ, 10, 4, 0), &mut Ram(&mut ram));
    assert_eq!(r.status, status::IO_ERROR);
    assert_eq!(r.sectors, 2);
    assert_eq!(
        r.ata_status & ata::regs::status::ERR,
        ata::regs::status::ERR
    );
    assert_eq!(r.ata_error, ata::regs::error::UNC);
}

#[test]
fn a_stuck_disk_times_out_is_reset_and_serves_again() {
    let mut s = server(Device::disk(100), false);
    let mut ram = vec![0u8; 4096];
    s.ata().io_mut().stuck = true;
    let r = s.handle(&req(op::READ, 0, 1, 0), &mut Ram(&mut ram));
    assert_eq!((r.status, r.ata_status), (status::IO_ERROR, 0x80));
    // The reset cleared the model's stuck state, as SRST would a real disk's.
    let r = s.handle(&req(op::READ, 0, 1, 0), &mut Ram(&mut ram));
    assert_eq!(r.status, status::OK);
}

#[test]
fn without_a_disk_every_request_says_so() {
    let mut s = server(Device::new(Attached::Atapi, 0, false), false);
    let mut ram = vec![0u8; 4096];
    for o in [op::INFO, op::READ, op::WRITE, op::FLUSH, 77] {
        assert_eq!(
            s.handle(&req(o, 0, 1, 0), &mut Ram(&mut ram)).status,
            status::NO_DISK
        );
    }
    assert!(s.console_line().to_string().contains("ATAPI"));
}

/// Requests from a list; the replies kept.
struct Script {
    requests: Vec<BlockRequest>,
    replies: Vec<BlockReply>,
}

impl Transport for Script {
    fn reply_recv(&mut self, reply: Option<&BlockReply>) -> Option<RequestPage> {
        if let Some(r) = reply {
            self.replies.push(*r);
        }
        if self.requests.is_empty() {
            None
        } else {
            Some(request_page(&self.requests.remove(0)))
        }
    }
}

#[test]
fn the_loop_answers_each_request_in_turn() {
    let mut s = server(Device::disk(100), false);
    let mut ram = vec![0u8; 4096];
    let mut t = Script {
        requests: vec![
            req(op::INFO, 0, 0, 0),
            req(op::WRITE, 1, 1, 0),
            req(op::FLUSH, 0, 0, 0),
            req(op::READ, 100, 1, 0),
        ],
        replies: Vec::new(),
    };
    s.serve(&mut t, &mut Ram(&mut ram));
    let st: Vec<u32> = t.replies.iter().map(|r| r.status).collect();
    assert_eq!(
        st,
        [status::OK, status::OK, status::OK, status::OUT_OF_RANGE]
    );
}

#[test]
fn a_reply_owed_from_before_the_loop_goes_out_first() {
    let mut s = server(Device::disk(100), false);
    let mut ram = vec![0u8; 4096];
    let mut t = Script {
        requests: vec![req(op::INFO, 0, 0, 0)],
        replies: Vec::new(),
    };
    let owed = BlockReply {
        status: status::NO_DISK,
        ..BlockReply::default()
    };
    s.serve_after(&mut t, &mut Ram(&mut ram), Some(owed));
    let st: Vec<u32> = t.replies.iter().map(|r| r.status).collect();
    assert_eq!(st, [status::NO_DISK, status::OK]);
}

mod random_requests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Any request gets a reply with a defined status, and guest RAM
        /// changes only inside the request's buffer.
        #[test]
        fn any_request_is_answered_and_stays_in_its_buffer(
            op in prop_oneof![Just(op::READ), Just(op::WRITE), Just(op::FLUSH), Just(op::INFO), any::<u32>()],
            lba in prop_oneof![0u64..80, any::<u64>()],
            sectors in prop_oneof![0u32..24, any::<u32>()],
            gpa in prop_oneof![0u64..12288, any::<u64>()],
            bad in proptest::option::of(0u64..100),
            read_only in any::<bool>(),
        ) {
            let mut dev = Device::disk(100);
            for lba in 0..100u64 {
                dev.data.insert(lba, [lba as u8 ^ 0x5a; 512]);
            }
            dev.bad_sector = bad;
            let mut s = server(dev, read_only);
            let mut ram = vec![0x11u8; 12288];
            let r = s.handle(&req(op, lba, sectors, gpa), &mut Ram(&mut ram));
            prop_assert!(r.status <= status::NO_DISK, "{r:?}");
            let len = u64::from(sectors) * 512;
            for (i, b) in ram.iter().enumerate() {
                let i = i as u64;
                if *b != 0x11 {
                    prop_assert!(op == op::READ && i >= gpa && i - gpa < len, "byte {i} changed");
                }
            }
        }
    }
}

#[test]
fn the_self_test_reads_sector_0_and_writes_the_last_one() {
    let mut dev = Device::disk(64);
    dev.data.insert(0, [b'M'; 512]);
    let mut s = server(dev, false);
    let mut ram = vec![0u8; 8192];
    let mut out = String::new();
    self_test(&mut s, &mut Ram(&mut ram), 4096, &mut out).unwrap();
    assert_eq!(
        out,
        "disk: self-test: sector 0 begins \"MMMMMMMMMMMMMMMM\"\n\
         disk: self-test: wrote, flushed and read back sector 63\n"
    );
    assert_eq!(s.ata().io().sector(63)[..32], SELF_TEST_PATTERN[..]);
    assert_eq!(s.ata().io().flushes, 1);
    let mut ro = server(Device::disk(64), true);
    let mut out = String::new();
    self_test(&mut ro, &mut Ram(&mut ram), 4096, &mut out).unwrap();
    assert!(
        out.ends_with("disk: self-test: writing sector 63: status 5\n"),
        "{out}"
    );
}

/// The page of a scatter-list request.
fn list_page(op: u32, lba: u64, segs: &[(u64, u32)]) -> RequestPage {
    let total: u64 = segs.iter().map(|&(_, l)| u64::from(l)).sum();
    let head = ListRequest {
        op,
        sectors: (total / 512) as u32,
        lba,
        segments: segs.len() as u32,
        reserved: 0,
    };
    let mut page = [0u8; 4096];
    page[..24].copy_from_slice(head.as_bytes());
    for (i, &(gpa, len)) in segs.iter().enumerate() {
        let s = Segment {
            gpa,
            len,
            reserved: 0,
        };
        page[24 + 16 * i..][..16].copy_from_slice(s.as_bytes());
    }
    page
}

#[test]
fn a_scatter_list_is_one_command_even_when_its_buffers_split_sectors() {
    let mut s = server(Device::disk(100), false);
    let mut ram = vec![0u8; 16384];
    // 3 sectors from five buffers: 100 + 700 + 3 + 333 + 400 bytes.
    let segs = [
        (8000, 100),
        (1000, 700),
        (5003, 3),
        (9001, 333),
        (12000, 400),
    ];
    let data: Vec<u8> = (0..1536u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut at = 0;
    for &(gpa, len) in &segs {
        ram[gpa as usize..][..len as usize].copy_from_slice(&data[at..at + len as usize]);
        at += len as usize;
    }
    let r = s.handle_page(&list_page(op::WRITE_LIST, 40, &segs), &mut Ram(&mut ram));
    assert_eq!((r.status, r.sectors), (status::OK, 3));
    for i in 0..3 {
        assert_eq!(
            s.ata().io().sector(40 + i)[..],
            data[i as usize * 512..][..512]
        );
    }
    // Read back into other buffers, also split.
    let back = [(100, 1), (2000, 1023), (15000, 512)];
    let r = s.handle_page(&list_page(op::READ_LIST, 40, &back), &mut Ram(&mut ram));
    assert_eq!((r.status, r.sectors), (status::OK, 3));
    let mut got = Vec::new();
    for &(gpa, len) in &back {
        got.extend_from_slice(&ram[gpa as usize..][..len as usize]);
    }
    assert_eq!(got, data);
    // One READ MULTIPLE EXT and one WRITE MULTIPLE EXT.
    assert_eq!(
        &s.ata().io().commands[2..],
        [
            ata::regs::command::WRITE_MULTIPLE_EXT,
            ata::regs::command::READ_MULTIPLE_EXT
        ]
    );
}

#[test]
fn bad_lists_are_refused_before_the_disk_sees_them() {
    let mut s = server(Device::disk(100), false);
    let mut ram = vec![0u8; 8192];
    let cases: [(RequestPage, u32); 5] = [
        // A segment past the end of guest RAM.
        (
            list_page(op::READ_LIST, 0, &[(0, 256), (8000, 256)]),
            status::BAD_BUFFER,
        ),
        // Lengths that do not make whole sectors.
        (
            list_page(op::READ_LIST, 0, &[(0, 256), (1000, 257)]),
            status::BAD_LIST,
        ),
        // Past the disk's end.
        (
            list_page(op::WRITE_LIST, 99, &[(0, 1024)]),
            status::OUT_OF_RANGE,
        ),
        // No segments at all.
        (list_page(op::READ_LIST, 0, &[]), status::OUT_OF_RANGE),
        // A zero-length segment.
        (
            list_page(op::READ_LIST, 0, &[(0, 512), (0, 0)]),
            status::BAD_LIST,
        ),
    ];
    for (page, want) in cases {
        assert_eq!(s.handle_page(&page, &mut Ram(&mut ram)).status, want);
    }
    let mut too_many = list_page(op::READ_LIST, 0, &[(0, 512)]);
    too_many[16..20].copy_from_slice(&(MAX_SEGMENTS as u32 + 1).to_le_bytes());
    assert_eq!(
        s.handle_page(&too_many, &mut Ram(&mut ram)).status,
        status::BAD_LIST
    );
    assert_eq!(
        s.ata().io().commands.len(),
        2,
        "only IDENTIFY, SET MULTIPLE"
    );
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Any split of a transfer into segments, any DRQ block size:
        /// what a list writes, a list reads back, and the disk holds it.
        #[test]
        fn any_split_round_trips(
            sectors in 1u32..20,
            cuts in proptest::collection::vec(1u32..2000, 0..30),
            max in prop::sample::select(vec![0u8, 2, 16]),
            word_only in any::<bool>(),
        ) {
            let mut dev = Device::disk(64);
            dev.max_multiple = max;
            let mut ata = Ata::new(dev, Spin::new(100), PRIMARY, Drive::Master).with_max_polls(1000);
            if word_only {
                ata = ata.with_word_io_only();
            }
            let mut s = DiskServer::start(ata, false);
            let total = sectors * 512;
            // Segment lengths from the cuts, in 64 KiB of RAM, 4 KiB apart... or less.
            let mut segs = Vec::new();
            let mut left = total;
            let mut gpa = 3u64;
            for c in cuts {
                if left == 0 { break; }
                let len = c.min(left);
                segs.push((gpa, len));
                gpa += u64::from(len) + 5;
                left -= len;
            }
            if left > 0 {
                segs.push((gpa, left));
            }
            let mut ram = vec![0u8; 1 << 17];
            let data: Vec<u8> = (0..total).map(|i| (i * 13 % 253) as u8).collect();
            let mut at = 0usize;
            for &(g, l) in &segs {
                ram[g as usize..][..l as usize].copy_from_slice(&data[at..at + l as usize]);
                at += l as usize;
            }
            let w = s.handle_page(&list_page(op::WRITE_LIST, 5, &segs), &mut Ram(&mut ram));
            prop_assert_eq!(w.status, status::OK);
            for &(g, l) in &segs {
                ram[g as usize..][..l as usize].fill(0);
            }
            let r = s.handle_page(&list_page(op::READ_LIST, 5, &segs), &mut Ram(&mut ram));
            prop_assert_eq!(r.status, status::OK);
            let mut got = Vec::new();
            for &(g, l) in &segs {
                got.extend_from_slice(&ram[g as usize..][..l as usize]);
            }
            prop_assert_eq!(&got, &data);
            for i in 0..sectors {
                prop_assert_eq!(&s.ata().io().sector(5 + u64::from(i))[..], &data[i as usize * 512..][..512]);
            }
        }
    }
}
