//! The device on a disk-driver in memory, fed chains through a split
//! queue the tests write themselves. The fake disk-driver answers at once
//! and moves the data afterwards ([`Fake::replay`]): the device never
//! touches the data, so the outcome is the same, and a test sees that it
//! did not.

use std::vec;
use std::vec::Vec;

use ipc_proto::block::{
    flags, op, status as bstatus, BlockReply, BlockRequest, ListRequest, Segment, MAX_SECTORS,
    MAX_SEGMENTS,
};
use virtio::devices::blk::{features, request, status, Block};
use virtio::queue::Queue;
use virtio::{SliceMemory, VirtioDevice};

use super::*;

const SECTOR: usize = 512;
const DESC: u64 = 0;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
const HEADER: u64 = 0x3000;
const STATUS: u64 = 0x3100;
const DATA: u64 = 0x4000;
const QSIZE: u16 = 16;
/// Enough for a 1 MiB + 1 sector buffer after DATA.
const RAM: usize = 0x6000 + (1 << 20) + 4 * SECTOR;

/// What the fake disk-driver does with the next call.
#[derive(Clone, Copy, Debug)]
enum Next {
    Serve,
    Answer(u32),
    Fail(ChannelError),
    Short,
}

struct Fake {
    disk: Vec<u8>,
    flags: u32,
    log: Vec<BlockRequest>,
    /// Scatter lists served: (READ or WRITE, first sector, segments).
    lists: Vec<(u32, u64, Vec<Segment>)>,
    script: Vec<Next>,
}

impl Fake {
    fn new(sectors: usize, flags: u32) -> Self {
        Self {
            disk: (0..sectors * SECTOR).map(|i| (i / SECTOR) as u8).collect(),
            flags,
            log: Vec::new(),
            lists: Vec::new(),
            script: Vec::new(),
        }
    }

    /// Moves the data of the READs and WRITEs served, in order, as the
    /// real disk-driver does during each call.
    fn replay(&mut self, ram: &mut [u8]) {
        for r in self.log.drain(..) {
            let d = usize::try_from(r.lba).unwrap() * SECTOR;
            let g = usize::try_from(r.gpa).unwrap();
            let n = r.sectors as usize * SECTOR;
            match r.op {
                op::READ => ram[g..g + n].copy_from_slice(&self.disk[d..d + n]),
                op::WRITE => self.disk[d..d + n].copy_from_slice(&ram[g..g + n]),
                _ => {}
            }
        }
        for (op, lba, segs) in self.lists.drain(..) {
            let mut d = usize::try_from(lba).unwrap() * SECTOR;
            for s in segs {
                let (g, n) = (usize::try_from(s.gpa).unwrap(), s.len as usize);
                if op == op::READ {
                    ram[g..g + n].copy_from_slice(&self.disk[d..d + n]);
                } else {
                    self.disk[d..d + n].copy_from_slice(&ram[g..g + n]);
                }
                d += n;
            }
        }
    }

    /// The next scripted answer, if any.
    fn scripted(&mut self, sectors: u32) -> Option<Result<BlockReply, ChannelError>> {
        let next = if self.script.is_empty() {
            Next::Serve
        } else {
            self.script.remove(0)
        };
        match next {
            Next::Fail(e) => Some(Err(e)),
            Next::Answer(s) => Some(Ok(BlockReply {
                status: s,
                ..BlockReply::default()
            })),
            Next::Short => Some(Ok(BlockReply {
                sectors: sectors - 1,
                ..BlockReply::default()
            })),
            Next::Serve => None,
        }
    }
}

impl DiskChannel for &mut Fake {
    fn call(&mut self, r: BlockRequest) -> Result<BlockReply, ChannelError> {
        if let Some(answer) = self.scripted(r.sectors) {
            return answer;
        }
        let capacity = (self.disk.len() / SECTOR) as u64;
        let answer = |status| BlockReply {
            status,
            ..BlockReply::default()
        };
        Ok(match r.op {
            op::INFO => BlockReply {
                capacity,
                flags: self.flags,
                ..BlockReply::default()
            },
            op::FLUSH => {
                self.log.push(r);
                answer(bstatus::OK)
            }
            op::READ | op::WRITE => {
                if r.sectors == 0
                    || r.sectors > MAX_SECTORS
                    || r.lba + u64::from(r.sectors) > capacity
                {
                    return Ok(answer(bstatus::OUT_OF_RANGE));
                }
                if r.gpa + u64::from(r.sectors) * 512 > RAM as u64 {
                    return Ok(answer(bstatus::BAD_BUFFER));
                }
                if r.op == op::WRITE && self.flags & flags::READ_ONLY != 0 {
                    return Ok(answer(bstatus::READ_ONLY));
                }
                self.log.push(r);
                BlockReply {
                    sectors: r.sectors,
                    ..BlockReply::default()
                }
            }
            _ => answer(bstatus::UNSUPPORTED),
        })
    }

    fn call_list(
        &mut self,
        r: ListRequest,
        segments: &[Segment],
    ) -> Result<BlockReply, ChannelError> {
        if let Some(answer) = self.scripted(r.sectors) {
            return answer;
        }
        // What `block::Request::parse` and the disk-driver check.
        let total: u64 = segments.iter().map(|s| u64::from(s.len)).sum();
        assert_eq!(segments.len(), r.segments as usize);
        assert!((2..=MAX_SEGMENTS).contains(&segments.len()));
        assert!((1..=MAX_SECTORS).contains(&r.sectors));
        assert_eq!(total, u64::from(r.sectors) * 512, "{r:?} {segments:?}");
        assert!(segments.iter().all(|s| s.len > 0));
        let op = match r.op {
            op::READ_LIST => op::READ,
            op::WRITE_LIST => op::WRITE,
            other => panic!("list op {other}"),
        };
        self.lists.push((op, r.lba, segments.to_vec()));
        Ok(BlockReply {
            sectors: r.sectors,
            ..BlockReply::default()
        })
    }
}

/// A device with its one queue, and guest RAM.
struct Rig<'f> {
    dev: Block<ChannelBackend<&'f mut Fake>>,
    queue: Queue,
    ram: Vec<u8>,
    next: u16,
}

impl<'f> Rig<'f> {
    fn new(fake: &'f mut Fake) -> Self {
        let backend = ChannelBackend::connect(fake).map_err(|(_, e)| e).unwrap();
        let ro = backend.read_only();
        let mut queue = Queue::new(QSIZE);
        queue.set_desc_table(DESC);
        queue.set_avail_ring(AVAIL);
        queue.set_used_ring(USED);
        queue.enable().unwrap();
        Self {
            dev: Block::new(backend, ro),
            queue,
            ram: vec![0; RAM],
            next: 0,
        }
    }

    fn fake(&mut self) -> &mut Fake {
        self.dev.backend_mut().channel_mut()
    }

    /// Sends one request (`data`: guest buffers, device-writable for IN)
    /// and returns its status byte; the fake then moves the data.
    fn request(&mut self, kind: u32, sector: u64, data: &[(u64, u32)]) -> u8 {
        self.ram[HEADER as usize..HEADER as usize + 4].copy_from_slice(&kind.to_le_bytes());
        self.ram[HEADER as usize + 8..HEADER as usize + 16].copy_from_slice(&sector.to_le_bytes());
        self.ram[STATUS as usize] = 0xff;
        let writable = kind == request::IN;
        let mut bufs = vec![(HEADER, 16u32, false)];
        bufs.extend(data.iter().map(|&(g, l)| (g, l, writable)));
        bufs.push((STATUS, 1, true));
        for (i, &(gpa, len, w)) in bufs.iter().enumerate() {
            let d = DESC as usize + i * 16;
            let last = i + 1 == bufs.len();
            let flags: u16 = if last { 0 } else { 1 } | if w { 2 } else { 0 };
            self.ram[d..d + 8].copy_from_slice(&gpa.to_le_bytes());
            self.ram[d + 8..d + 12].copy_from_slice(&len.to_le_bytes());
            self.ram[d + 12..d + 14].copy_from_slice(&flags.to_le_bytes());
            self.ram[d + 14..d + 16].copy_from_slice(&((i + 1) as u16).to_le_bytes());
        }
        let slot = AVAIL as usize + 4 + usize::from(self.next % QSIZE) * 2;
        self.ram[slot..slot + 2].copy_from_slice(&0u16.to_le_bytes());
        self.next = self.next.wrapping_add(1);
        let idx = AVAIL as usize + 2;
        self.ram[idx..idx + 2].copy_from_slice(&self.next.to_le_bytes());
        let mut mem = SliceMemory::new(&mut self.ram);
        self.dev
            .process_queue(0, core::slice::from_mut(&mut self.queue), &mut mem)
            .expect("the device stays live");
        let used = USED as usize + 2;
        assert_eq!(
            u16::from_le_bytes([self.ram[used], self.ram[used + 1]]),
            self.next,
            "the request was completed"
        );
        let Self { dev, ram, .. } = self;
        dev.backend_mut().channel_mut().replay(ram);
        self.ram[STATUS as usize]
    }
}

#[test]
fn writes_and_reads_go_to_the_disk_driver_by_guest_address() {
    let mut fake = Fake::new(4096, flags::FLUSH);
    let mut rig = Rig::new(&mut fake);
    assert_eq!(rig.dev.backend().info().capacity, 4096);
    // Write sectors 10-12 from two guest buffers.
    for (i, b) in rig.ram[DATA as usize..DATA as usize + 3 * SECTOR]
        .iter_mut()
        .enumerate()
    {
        *b = (i % 251) as u8;
    }
    let st = rig.request(request::OUT, 10, &[(DATA, 1024), (DATA + 1024, 512)]);
    assert_eq!(st, status::OK);
    // Read them back elsewhere, in one buffer.
    let back = DATA + 0x10000;
    let st = rig.request(request::IN, 10, &[(back, 1536)]);
    assert_eq!(st, status::OK);
    let (a, b) = (DATA as usize, back as usize);
    assert_eq!(rig.ram[a..a + 1536], rig.ram[b..b + 1536]);
    // Sector 13 was not written.
    let st = rig.request(request::IN, 13, &[(back, 512)]);
    assert_eq!(st, status::OK);
    assert!(rig.ram[b..b + 512].iter().all(|&x| x == 13));
    assert_eq!(rig.dev.backend().counters().errors, 0);
}

#[test]
fn a_request_is_one_call_and_big_ones_are_split() {
    let mut fake = Fake::new(4096, flags::FLUSH);
    let mut rig = Rig::new(&mut fake);
    let big = (MAX_SECTORS as usize + 1) * SECTOR;
    let st = rig.request(request::IN, 7, &[(DATA, 512), (DATA + 4096, big as u32)]);
    assert_eq!(st, status::OK);
    let b = DATA as usize + 4096;
    assert!(rig.ram[DATA as usize..DATA as usize + 512]
        .iter()
        .all(|&x| x == 7));
    assert!(rig.ram[b..b + 512].iter().all(|&x| x == 8));
    let last = b + big - 512;
    assert_eq!(rig.ram[last], (8 + MAX_SECTORS) as u8);
    // 2049 + 1 sectors: a list of both buffers up to 1 MiB, then the rest
    // of the big one as one buffer.
    assert_eq!(
        rig.dev.backend().counters().calls,
        1 + 2,
        "INFO, a list, one"
    );
    // Three buffers of one sector: one list.
    let st = rig.request(
        request::OUT,
        20,
        &[(DATA, 512), (DATA + 8192, 512), (DATA + 1024, 512)],
    );
    assert_eq!(st, status::OK);
    assert_eq!(rig.dev.backend().counters().calls, 1 + 2 + 1);
}

#[test]
fn buffers_that_split_sectors_travel_as_one_list() {
    let mut fake = Fake::new(64, flags::FLUSH);
    let mut rig = Rig::new(&mut fake);
    for (i, b) in rig.ram[DATA as usize..DATA as usize + 2048]
        .iter_mut()
        .enumerate()
    {
        *b = (i % 253) as u8;
    }
    // 3 sectors from 300 + 1000 + 236 bytes.
    let bufs = [(DATA, 300), (DATA + 300, 1000), (DATA + 1300, 236)];
    assert_eq!(rig.request(request::OUT, 4, &bufs), status::OK);
    let back = DATA + 0x8000;
    // Back in 1 + 1534 + 1 bytes.
    let st = rig.request(
        request::IN,
        4,
        &[(back, 1), (back + 1, 1534), (back + 1535, 1)],
    );
    assert_eq!(st, status::OK);
    let (a, b) = (DATA as usize, back as usize);
    assert_eq!(rig.ram[a..a + 1536], rig.ram[b..b + 1536]);
    let written = rig.ram[a..a + 1536].to_vec();
    assert_eq!(rig.fake().disk[4 * 512..7 * 512], written[..]);
    assert_eq!(rig.dev.backend().counters().calls, 1 + 2);
}

#[test]
fn a_list_longer_than_a_call_is_cut_on_sector_boundaries() {
    let mut fake = Fake::new(4096, flags::FLUSH);
    let mut backend = ChannelBackend::connect(&mut fake)
        .map_err(|(_, e)| e)
        .unwrap();
    let mut ram = vec![0u8; RAM];
    let mut mem = SliceMemory::new(&mut ram);
    // 300 buffers of 341 bytes and one of 100 (more than MAX_SEGMENTS,
    // and the cut falls inside a sector): 200 sectors in all.
    let mut ranges: Vec<GuestRange> = (0..300)
        .map(|i| GuestRange {
            gpa: DATA + i * 400,
            len: 341,
        })
        .collect();
    ranges.push(GuestRange {
        gpa: DATA + 300 * 400,
        len: 100,
    });
    backend.read_ranges(512 * 3, &mut mem, &ranges).unwrap();
    let lists = core::mem::take(&mut backend.channel_mut().lists);
    assert_eq!(lists.len(), 2);
    let (_, lba0, first) = &lists[0];
    let (_, lba1, second) = &lists[1];
    assert_eq!(*lba0, 3);
    assert_eq!(first.len(), MAX_SEGMENTS);
    let first_bytes: u64 = first.iter().map(|s| u64::from(s.len)).sum();
    assert_eq!(first_bytes % 512, 0);
    assert_eq!(*lba1, 3 + first_bytes / 512);
    // The second call starts where the first stopped, mid-buffer.
    let cut = first.last().unwrap();
    assert_eq!(second[0].gpa, cut.gpa + u64::from(cut.len));
    let all: u64 = first_bytes + second.iter().map(|s| u64::from(s.len)).sum::<u64>();
    assert_eq!(all, 200 * 512);
}

#[test]
fn the_requests_name_the_guests_buffers() {
    let mut fake = Fake::new(4096, flags::FLUSH);
    let mut backend = ChannelBackend::connect(&mut fake)
        .map_err(|(_, e)| e)
        .unwrap();
    let mut ram = vec![0u8; RAM];
    let mut mem = SliceMemory::new(&mut ram);
    let range = GuestRange {
        gpa: DATA + 1,
        len: u64::from(MAX_SECTORS + 2) * 512,
    };
    backend.read(512 * 5, &mut mem, range).unwrap();
    let log = core::mem::take(&mut backend.channel_mut().log);
    let want = [
        BlockRequest {
            op: op::READ,
            sectors: MAX_SECTORS,
            lba: 5,
            gpa: DATA + 1,
        },
        BlockRequest {
            op: op::READ,
            sectors: 2,
            lba: 5 + u64::from(MAX_SECTORS),
            gpa: DATA + 1 + u64::from(MAX_SECTORS) * 512,
        },
    ];
    assert_eq!(log, want, "the guest's own buffer, by address, in pieces");
    assert!(ram.iter().all(|&b| b == 0), "the device moved no byte");
}

#[test]
fn misaligned_or_out_of_range_requests_are_ioerr_without_a_call() {
    let mut fake = Fake::new(64, flags::FLUSH);
    let mut rig = Rig::new(&mut fake);
    let calls = rig.dev.backend().counters().calls;
    // Not whole sectors at all.
    assert_eq!(rig.request(request::OUT, 0, &[(DATA, 100)]), status::IOERR);
    // Past the end, and straddling it.
    assert_eq!(rig.request(request::IN, 64, &[(DATA, 512)]), status::IOERR);
    assert_eq!(rig.request(request::IN, 63, &[(DATA, 1024)]), status::IOERR);
    assert_eq!(
        rig.request(request::IN, u64::MAX / 2, &[(DATA, 512)]),
        status::IOERR
    );
    assert_eq!(rig.dev.backend().counters().calls, calls, "no call made");
    // The device still serves the next request; buffers that split a
    // sector are fine (the whole request is one sector).
    assert_eq!(rig.request(request::IN, 63, &[(DATA, 512)]), status::OK);
    assert_eq!(
        rig.request(request::IN, 0, &[(DATA, 300), (DATA + 512, 212)]),
        status::OK
    );
}

#[test]
fn disk_driver_errors_and_restarts_are_ioerr_and_the_device_goes_on() {
    let mut fake = Fake::new(64, flags::FLUSH);
    let mut rig = Rig::new(&mut fake);
    let restarted = Next::Fail(ChannelError::ServerRestarted);
    rig.fake().script = vec![
        Next::Answer(bstatus::IO_ERROR),
        // A driver that dies on every try of a request: IOERR after the
        // retries.
        restarted,
        restarted,
        restarted,
        Next::Fail(ChannelError::Refused(ErrorCode::NotReady)),
        Next::Answer(bstatus::BAD_BUFFER),
        Next::Short,
        restarted,
        restarted,
        restarted,
    ];
    assert_eq!(rig.request(request::IN, 1, &[(DATA, 512)]), status::IOERR);
    assert_eq!(rig.request(request::OUT, 1, &[(DATA, 512)]), status::IOERR);
    assert_eq!(rig.request(request::IN, 1, &[(DATA, 512)]), status::IOERR);
    assert_eq!(rig.request(request::OUT, 1, &[(DATA, 512)]), status::IOERR);
    assert_eq!(rig.request(request::IN, 1, &[(DATA, 1024)]), status::IOERR);
    assert_eq!(rig.request(request::FLUSH, 0, &[]), status::IOERR);
    let c = rig.dev.backend().counters();
    assert_eq!((c.errors, c.restarts, c.retries), (6, 6, 4));
    // A restarted disk-driver serves the next request.
    assert_eq!(rig.request(request::IN, 2, &[(DATA, 512)]), status::OK);
    assert_eq!(rig.ram[DATA as usize], 2);
}

#[test]
fn a_request_lost_in_a_disk_driver_restart_is_sent_again() {
    let mut fake = Fake::new(64, flags::FLUSH);
    let mut rig = Rig::new(&mut fake);
    let before = rig.dev.backend().counters();
    let restarted = Next::Fail(ChannelError::ServerRestarted);
    // A read lost once, a write lost twice in a row, a flush lost once:
    // each completes, as if nothing happened.
    rig.fake().script = vec![restarted];
    assert_eq!(rig.request(request::IN, 5, &[(DATA, 512)]), status::OK);
    assert_eq!(rig.ram[DATA as usize], 5);
    rig.ram[DATA as usize..DATA as usize + 512].fill(0xab);
    // The write (one scatter-list call for both buffers) is lost twice.
    rig.fake().script = vec![restarted, restarted];
    assert_eq!(
        rig.request(request::OUT, 8, &[(DATA, 512), (DATA, 512)]),
        status::OK
    );
    assert_eq!(
        rig.fake().disk[9 * SECTOR],
        0xab,
        "the retried write landed"
    );
    rig.fake().script = vec![restarted];
    assert_eq!(rig.request(request::FLUSH, 0, &[]), status::OK);
    let c = rig.dev.backend().counters();
    assert_eq!(c.errors, before.errors);
    assert_eq!((c.restarts, c.retries), (4, 4));
    // Read 1 + 1, write 1 + 2, flush 1 + 1.
    assert_eq!(c.calls - before.calls, 2 + 3 + 2);
}

#[test]
fn info_lost_in_a_restart_is_asked_again_but_not_forever() {
    let restarted = Next::Fail(ChannelError::ServerRestarted);
    let mut fake = Fake::new(64, flags::FLUSH);
    fake.script = vec![restarted, restarted];
    let backend = ChannelBackend::connect(&mut fake)
        .map_err(|(_, e)| e)
        .unwrap();
    assert_eq!(backend.info().capacity, 64);
    let c = backend.counters();
    assert_eq!((c.calls, c.restarts, c.retries), (3, 2, 2));
    fake.script = vec![restarted; 3];
    let Err((_, e)) = ChannelBackend::connect(&mut fake) else {
        panic!("a disk-driver that dies at every INFO is no disk");
    };
    assert_eq!(e, ConnectError::Channel(ChannelError::ServerRestarted));
}

#[test]
fn flush_reaches_the_disk_driver_when_the_disk_has_a_cache() {
    let mut fake = Fake::new(64, flags::FLUSH);
    let mut rig = Rig::new(&mut fake);
    let before = rig.dev.backend().counters().calls;
    assert_eq!(rig.request(request::FLUSH, 0, &[]), status::OK);
    assert_eq!(rig.dev.backend().counters().calls, before + 1);
    assert_ne!(rig.dev.features() & features::VIRTIO_BLK_F_FLUSH, 0);

    let mut plain = Fake::new(64, 0);
    let mut rig = Rig::new(&mut plain);
    let before = rig.dev.backend().counters().calls;
    assert_eq!(rig.request(request::FLUSH, 0, &[]), status::OK);
    assert_eq!(
        rig.dev.backend().counters().calls,
        before,
        "no cache, nothing to ask"
    );
}

#[test]
fn a_read_only_disk_offers_ro_and_fails_writes_without_a_call() {
    let mut fake = Fake::new(64, flags::FLUSH | flags::READ_ONLY);
    let mut rig = Rig::new(&mut fake);
    assert!(rig.dev.backend().read_only());
    assert_ne!(rig.dev.features() & features::VIRTIO_BLK_F_RO, 0);
    let before = rig.dev.backend().counters().calls;
    assert_eq!(rig.request(request::OUT, 0, &[(DATA, 512)]), status::IOERR);
    assert_eq!(rig.dev.backend().counters().calls, before);
    assert_eq!(rig.request(request::IN, 5, &[(DATA, 512)]), status::OK);
    assert_eq!(rig.ram[DATA as usize], 5);
    assert_eq!(rig.fake().disk[0], 0, "unchanged");
}

#[test]
fn no_disk_is_a_connect_error_and_an_absent_disk_fails_every_request() {
    let mut fake = Fake::new(64, 0);
    fake.script = vec![Next::Answer(bstatus::NO_DISK)];
    let (ch, e) = ChannelBackend::connect(&mut fake).map(|_| ()).unwrap_err();
    assert_eq!(e, ConnectError::Status(bstatus::NO_DISK));
    let mut backend = ChannelBackend::absent(ch);
    assert_eq!(backend.capacity(), 0);
    let mut ram = vec![0u8; 4096];
    let mut mem = SliceMemory::new(&mut ram);
    let one = GuestRange { gpa: 0, len: 512 };
    assert_eq!(backend.read(0, &mut mem, one), Err(BlockError));
    assert_eq!(backend.write(0, &mem, one), Err(BlockError));

    // A disk-driver that dies at every try (the first and the retries).
    let mut gone = Fake::new(64, 0);
    gone.script = vec![Next::Fail(ChannelError::ServerRestarted); 3];
    let e = ChannelBackend::connect(&mut gone)
        .map(|_| ())
        .unwrap_err()
        .1;
    assert_eq!(e, ConnectError::Channel(ChannelError::ServerRestarted));
    assert_eq!(
        ChannelError::from(ErrorCode::NotReady),
        ChannelError::Refused(ErrorCode::NotReady)
    );
}
