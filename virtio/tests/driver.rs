//! End to end in memory: a tiny driver, set up the way Linux's
//! virtio_pci_modern does it (find the capabilities, assign the BARs,
//! program MSI-X, negotiate features, set up and enable each queue, then
//! DRIVER_OK), drives the console and block devices through
//! `config_read`/`config_write` and `bar_read`/`bar_write` only.

use std::collections::VecDeque;
use std::vec::Vec;

use virtio::devices::blk::{self, Block, MemDisk};
use virtio::devices::console::{Console, ConsoleInput, ConsoleOutput};
use virtio::devices::net;
use virtio::devices::rng::{EntropySource, Rng};
use virtio::features::*;
use virtio::pci::{common, BarWriteOutcome, TransportError, NO_VECTOR};
use virtio::queue::desc_flags::*;
use virtio::status::*;
use virtio::{DeviceError, InterruptSink, SliceMemory, VirtioDevice, VirtioPci};

const RAM: usize = 1 << 20;
const BAR0_BASE: u32 = 0xfebf_0000;
const BAR1_BASE: u32 = 0xfebe_0000;
const MSI_ADDR: u64 = 0xfee0_0000;

#[derive(Default, Debug)]
struct Irqs {
    msis: Vec<(u64, u32)>,
    intx: bool,
}

impl InterruptSink for Irqs {
    fn send_msi(&mut self, address: u64, data: u32) {
        self.msis.push((address, data));
    }
    fn set_intx(&mut self, asserted: bool) {
        self.intx = asserted;
    }
}

#[derive(Default, Debug)]
struct Out(Vec<u8>);
impl ConsoleOutput for Out {
    fn write(&mut self, data: &[u8]) {
        self.0.extend_from_slice(data);
    }
}

#[derive(Default, Debug)]
struct In(VecDeque<u8>);
impl ConsoleInput for In {
    fn pending(&self) -> bool {
        !self.0.is_empty()
    }
    fn read(&mut self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(self.0.len());
        for b in &mut buf[..n] {
            *b = self.0.pop_front().unwrap();
        }
        n
    }
}

/// Where the driver found each structure: (bar, offset in the BAR).
#[derive(Debug, Default)]
struct Layout {
    common: u64,
    notify: u64,
    notify_mult: u32,
    isr: u64,
    device: Option<u64>,
    msix_table: u64,
    msix_vectors: u16,
}

/// One driver-side split virtqueue.
#[derive(Debug)]
struct DriverQueue {
    index: u16,
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    avail_idx: u16,
    last_used: u16,
    notify_off: u16,
    free: u16,
}

struct Driver<D: VirtioDevice> {
    pci: VirtioPci<D, Irqs>,
    ram: Vec<u8>,
    layout: Layout,
    queues: Vec<DriverQueue>,
    /// Next free byte of the driver's allocator.
    brk: u64,
    features: u64,
    use_msix: bool,
}

fn rd(ram: &[u8], at: u64, n: usize) -> u64 {
    let at = at as usize;
    let mut b = [0u8; 8];
    b[..n].copy_from_slice(&ram[at..at + n]);
    u64::from_le_bytes(b)
}

fn wr(ram: &mut [u8], at: u64, n: usize, v: u64) {
    let at = at as usize;
    ram[at..at + n].copy_from_slice(&v.to_le_bytes()[..n]);
}

impl<D: VirtioDevice> Driver<D> {
    fn new(device: D) -> Self {
        Self {
            pci: VirtioPci::new(device, Irqs::default()),
            ram: vec![0; RAM],
            layout: Layout::default(),
            queues: Vec::new(),
            brk: 0x10000,
            features: 0,
            use_msix: true,
        }
    }

    fn alloc(&mut self, len: u64, align: u64) -> u64 {
        let at = self.brk.next_multiple_of(align);
        self.brk = at + len;
        at
    }

    // MMIO as the guest does it: by address.
    fn mmio_read(&mut self, gpa: u64, size: u8) -> u64 {
        let (bar, off) = self.pci.decode(gpa).expect("address in a BAR");
        self.pci.bar_read(bar, off, size)
    }

    fn mmio_write(&mut self, gpa: u64, size: u8, v: u64) -> BarWriteOutcome {
        let (bar, off) = self.pci.decode(gpa).expect("address in a BAR");
        let r = self.pci.bar_write(bar, off, size, v);
        if let BarWriteOutcome::QueueNotify(q) = r {
            // What the vmm-server router does with a notification.
            self.pci
                .process_queue(q, &mut SliceMemory::new(&mut self.ram));
        }
        r
    }

    fn bar_base(&self, bar: u8) -> u64 {
        self.pci.bar_address(bar).unwrap()
    }

    fn common_read(&mut self, reg: u64, size: u8) -> u64 {
        let at = self.bar_base(0) + self.layout.common + reg;
        self.mmio_read(at, size)
    }

    fn common_write(&mut self, reg: u64, size: u8, v: u64) {
        let at = self.bar_base(0) + self.layout.common + reg;
        self.mmio_write(at, size, v);
    }

    fn status(&mut self) -> u8 {
        self.common_read(common::DEVICE_STATUS, 1) as u8
    }

    /// PCI enumeration: IDs, BAR sizing and assignment, the capability
    /// list (vp_modern_probe, virtio_pci_find_capability).
    fn probe(&mut self) {
        let id = self.pci.config_read(0, 4);
        assert_eq!(id & 0xffff, 0x1af4);
        assert_eq!(
            id >> 16,
            0x1040 + u32::from(self.pci.device().device_type())
        );
        assert!(self.pci.config_read(8, 1) >= 1, "revision 1: modern");
        for (reg, base) in [(0x10u16, BAR0_BASE), (0x14, BAR1_BASE)] {
            self.pci.config_write(reg, 4, u32::MAX);
            let mask = self.pci.config_read(reg, 4);
            let size = !(mask & !0xf) + 1;
            assert!(size.is_power_of_two() && size >= 0x1000);
            assert_eq!(base % size, 0);
            self.pci.config_write(reg, 4, base);
        }
        assert_eq!(self.pci.bar_address(0), None, "memory decoding off");
        // Memory space + bus master.
        self.pci.config_write(4, 2, 0x6);
        assert!(self.pci.config_read(6, 2) & 0x10 != 0, "capability list");
        let mut at = self.pci.config_read(0x34, 1) as u16;
        let mut seen = 0;
        while at != 0 {
            seen += 1;
            assert!(seen < 48, "capability loop");
            let id = self.pci.config_read(at, 1);
            let next = self.pci.config_read(at + 1, 1) as u16;
            match id {
                0x11 => {
                    let ctrl = self.pci.config_read(at + 2, 2) as u16;
                    self.layout.msix_vectors = (ctrl & 0x7ff) + 1;
                    let table = self.pci.config_read(at + 4, 4);
                    assert_eq!(table & 7, 1, "table in BAR 1");
                    self.layout.msix_table = u64::from(table & !7);
                }
                0x09 => {
                    let cfg_type = self.pci.config_read(at + 3, 1);
                    let bar = self.pci.config_read(at + 4, 1);
                    let offset = u64::from(self.pci.config_read(at + 8, 4));
                    let length = self.pci.config_read(at + 12, 4);
                    if cfg_type != 5 {
                        assert_eq!(bar, 0);
                        assert!(length > 0);
                    }
                    match cfg_type {
                        1 => self.layout.common = offset,
                        2 => {
                            self.layout.notify = offset;
                            self.layout.notify_mult = self.pci.config_read(at + 16, 4);
                        }
                        3 => self.layout.isr = offset,
                        4 => self.layout.device = Some(offset),
                        _ => {}
                    }
                }
                _ => panic!("unexpected capability {id:#x}"),
            }
            at = next;
        }
        assert!(self.layout.msix_vectors >= 2);
    }

    /// MSI-X: vector n → data 0x40 + n; enable.
    fn setup_msix(&mut self) {
        for v in 0..u64::from(self.layout.msix_vectors) {
            let e = self.bar_base(1) + self.layout.msix_table + 16 * v;
            self.mmio_write(e, 4, MSI_ADDR);
            self.mmio_write(e + 4, 4, 0);
            self.mmio_write(e + 8, 4, 0x40 + v);
            self.mmio_write(e + 12, 4, 0); // unmask
        }
        let ctrl = self.pci.config_read(0x42, 2);
        self.pci.config_write(0x42, 2, ctrl | 0x8000);
    }

    /// 3.1.1 and vp_modern: reset, ACKNOWLEDGE, DRIVER, features,
    /// FEATURES_OK, queues, DRIVER_OK. Returns whether FEATURES_OK stuck.
    fn init(&mut self, want: u64) -> bool {
        self.common_write(common::DEVICE_STATUS, 1, 0);
        assert_eq!(self.status(), 0);
        self.common_write(common::DEVICE_STATUS, 1, u64::from(ACKNOWLEDGE));
        self.common_write(common::DEVICE_STATUS, 1, u64::from(ACKNOWLEDGE | DRIVER));
        self.common_write(common::DEVICE_FEATURE_SELECT, 4, 0);
        let lo = self.common_read(common::DEVICE_FEATURE, 4);
        self.common_write(common::DEVICE_FEATURE_SELECT, 4, 1);
        let hi = self.common_read(common::DEVICE_FEATURE, 4);
        let offered = hi << 32 | lo;
        assert!(offered & VIRTIO_F_VERSION_1 != 0);
        self.features = offered & want;
        for sel in 0..2 {
            self.common_write(common::DRIVER_FEATURE_SELECT, 4, sel);
            self.common_write(
                common::DRIVER_FEATURE,
                4,
                (self.features >> (32 * sel)) & 0xffff_ffff,
            );
        }
        let s = ACKNOWLEDGE | DRIVER | FEATURES_OK;
        self.common_write(common::DEVICE_STATUS, 1, u64::from(s));
        if self.status() & FEATURES_OK == 0 {
            self.common_write(common::DEVICE_STATUS, 1, u64::from(s | FAILED));
            return false;
        }
        if self.use_msix {
            self.common_write(common::CONFIG_MSIX_VECTOR, 2, 0);
            assert_eq!(self.common_read(common::CONFIG_MSIX_VECTOR, 2), 0);
        }
        let n = self.common_read(common::NUM_QUEUES, 2) as u16;
        self.queues.clear();
        for index in 0..n {
            self.common_write(common::QUEUE_SELECT, 2, u64::from(index));
            let size = self.common_read(common::QUEUE_SIZE, 2) as u16;
            assert!(size.is_power_of_two());
            let size = size.min(16);
            self.common_write(common::QUEUE_SIZE, 2, u64::from(size));
            let n = u64::from(size);
            let desc = self.alloc(16 * n, 16);
            let avail = self.alloc(6 + 2 * n, 2);
            let used = self.alloc(6 + 8 * n, 4);
            // 64-bit registers written as two halves (vp_iowrite64_twopart).
            for (reg, v) in [
                (common::QUEUE_DESC, desc),
                (common::QUEUE_DRIVER, avail),
                (common::QUEUE_DEVICE, used),
            ] {
                self.common_write(reg, 4, v & 0xffff_ffff);
                self.common_write(reg + 4, 4, v >> 32);
                assert_eq!(self.common_read(reg, 8), v);
            }
            if self.use_msix {
                self.common_write(common::QUEUE_MSIX_VECTOR, 2, u64::from(index) + 1);
                assert_eq!(
                    self.common_read(common::QUEUE_MSIX_VECTOR, 2),
                    u64::from(index) + 1
                );
            }
            let notify_off = self.common_read(common::QUEUE_NOTIFY_OFF, 2) as u16;
            self.common_write(common::QUEUE_ENABLE, 2, 1);
            assert_eq!(self.common_read(common::QUEUE_ENABLE, 2), 1);
            self.queues.push(DriverQueue {
                index,
                size,
                desc,
                avail,
                used,
                avail_idx: 0,
                last_used: 0,
                notify_off,
                free: 0,
            });
        }
        self.common_write(common::DEVICE_STATUS, 1, u64::from(s | DRIVER_OK));
        assert_eq!(self.status(), s | DRIVER_OK);
        true
    }

    /// Puts a chain of `bufs` (gpa, len, writable) on queue `q`, through an
    /// indirect table if `indirect`; kicks if the device wants it (event
    /// index rule, or NO_NOTIFY). Returns the head.
    fn add(&mut self, q: usize, bufs: &[(u64, u32, bool)], indirect: bool) -> u16 {
        let dq = &self.queues[q];
        let (size, desc, avail) = (dq.size, dq.desc, dq.avail);
        let head = dq.free;
        let write_desc =
            |ram: &mut [u8], table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16| {
                let at = table + 16 * u64::from(i);
                wr(ram, at, 8, addr);
                wr(ram, at + 8, 4, u64::from(len));
                wr(ram, at + 12, 2, u64::from(flags));
                wr(ram, at + 14, 2, u64::from(next));
            };
        let used_slots = if indirect {
            let table = self.alloc(16 * bufs.len() as u64, 16);
            for (i, &(addr, len, w)) in bufs.iter().enumerate() {
                let last = i + 1 == bufs.len();
                let flags = if w { WRITE } else { 0 } | if last { 0 } else { NEXT };
                write_desc(
                    &mut self.ram,
                    table,
                    i as u16,
                    addr,
                    len,
                    flags,
                    i as u16 + 1,
                );
            }
            write_desc(
                &mut self.ram,
                desc,
                head,
                table,
                16 * bufs.len() as u32,
                INDIRECT,
                0,
            );
            1
        } else {
            for (i, &(addr, len, w)) in bufs.iter().enumerate() {
                let idx = (head + i as u16) % size;
                let last = i + 1 == bufs.len();
                let flags = if w { WRITE } else { 0 } | if last { 0 } else { NEXT };
                write_desc(&mut self.ram, desc, idx, addr, len, flags, (idx + 1) % size);
            }
            bufs.len() as u16
        };
        let dq = &mut self.queues[q];
        dq.free = (dq.free + used_slots) % size;
        let old = dq.avail_idx;
        wr(
            &mut self.ram,
            avail + 4 + 2 * u64::from(old % size),
            2,
            u64::from(head),
        );
        dq.avail_idx = old.wrapping_add(1);
        wr(&mut self.ram, avail + 2, 2, u64::from(dq.avail_idx));
        // virtqueue_kick_prepare_split.
        let (used, new) = (dq.used, dq.avail_idx);
        let kick = if self.features & VIRTIO_F_EVENT_IDX != 0 {
            let avail_event = rd(&self.ram, used + 4 + 8 * u64::from(size), 2) as u16;
            virtio::queue::vring_need_event(avail_event, new, old)
        } else {
            rd(&self.ram, used, 2) & 1 == 0
        };
        if kick {
            self.kick(q);
        }
        head
    }

    fn kick(&mut self, q: usize) {
        let dq = &self.queues[q];
        let at = self.bar_base(0)
            + self.layout.notify
            + u64::from(dq.notify_off) * u64::from(self.layout.notify_mult);
        let index = dq.index;
        assert_eq!(
            self.mmio_write(at, 2, u64::from(index)),
            BarWriteOutcome::QueueNotify(index)
        );
    }

    /// The used elements since last time: (id, len).
    fn used(&mut self, q: usize) -> Vec<(u32, u32)> {
        let dq = &mut self.queues[q];
        let idx = rd(&self.ram, dq.used + 2, 2) as u16;
        let mut out = Vec::new();
        while dq.last_used != idx {
            let at = dq.used + 4 + 8 * u64::from(dq.last_used % dq.size);
            out.push((rd(&self.ram, at, 4) as u32, rd(&self.ram, at + 4, 4) as u32));
            dq.last_used = dq.last_used.wrapping_add(1);
        }
        // With EVENT_IDX: interrupt me at the next one.
        if self.features & VIRTIO_F_EVENT_IDX != 0 {
            wr(
                &mut self.ram,
                dq.avail + 4 + 2 * u64::from(dq.size),
                2,
                u64::from(dq.last_used),
            );
        }
        out
    }

    fn msis(&mut self) -> Vec<(u64, u32)> {
        std::mem::take(&mut self.pci.interrupt_sink_mut().msis)
    }

    fn poll(&mut self) {
        self.pci.poll(&mut SliceMemory::new(&mut self.ram));
    }
}

fn console_driver(features: u64) -> Driver<Console<Out, In>> {
    let mut d = Driver::new(Console::new(Out::default(), In::default()));
    d.probe();
    d.setup_msix();
    assert!(d.init(features));
    d
}

const ALL: u64 = VIRTIO_F_VERSION_1 | VIRTIO_F_EVENT_IDX | VIRTIO_F_INDIRECT_DESC;

#[test]
fn console_output_and_input_with_msix() {
    for features in [ALL, VIRTIO_F_VERSION_1] {
        let mut d = console_driver(features);
        assert_eq!(d.pci.negotiated_features(), features);
        assert!(d.layout.device.is_some());
        // Config: 80 columns, 25 rows.
        let cfg = d.bar_base(0) + d.layout.device.unwrap();
        assert_eq!(d.mmio_read(cfg, 4), 25 << 16 | 80);

        // Output, split across two buffers.
        let buf = d.alloc(64, 8);
        d.ram[buf as usize..buf as usize + 12].copy_from_slice(b"hello, world");
        d.add(1, &[(buf, 7, false), (buf + 7, 5, false)], false);
        assert_eq!(d.pci.device().output().0, b"hello, world");
        assert_eq!(d.used(1), [(0, 0)]);
        assert_eq!(d.msis(), [(MSI_ADDR, 0x42)], "transmitq's vector 2");

        // Input: two receive buffers of 4 bytes; 6 bytes typed.
        let rx = d.alloc(8, 8);
        d.add(0, &[(rx, 4, true)], false);
        d.add(0, &[(rx + 4, 4, true)], false);
        assert!(d.used(0).is_empty(), "no input yet");
        d.pci.device_mut().input_mut().0.extend(b"abcdef");
        d.poll();
        assert_eq!(d.used(0), [(0, 4), (1, 2)]);
        assert_eq!(&d.ram[rx as usize..rx as usize + 6], b"abcdef");
        let m = d.msis();
        assert!(
            !m.is_empty() && m.iter().all(|&x| x == (MSI_ADDR, 0x41)),
            "{m:?}"
        );
        assert_eq!(d.pci.status() & DEVICE_NEEDS_RESET, 0);
    }
}

#[test]
fn console_over_intx_when_msix_is_off() {
    let mut d = Driver::new(Console::new(Out::default(), In::default()));
    d.probe();
    d.use_msix = false;
    assert!(d.init(ALL));
    let buf = d.alloc(8, 8);
    d.ram[buf as usize] = b'!';
    d.add(1, &[(buf, 1, false)], true);
    assert_eq!(d.pci.device().output().0, b"!");
    assert!(d.pci.interrupt_sink().intx);
    assert!(d.pci.config_read(6, 2) & 0x8 != 0, "PCI status: interrupt");
    let isr = d.bar_base(0) + d.layout.isr;
    assert_eq!(d.mmio_read(isr, 1), 1, "queue interrupt");
    assert!(!d.pci.interrupt_sink().intx, "reading ISR deasserts");
    assert_eq!(d.mmio_read(isr, 1), 0);
    assert_eq!(d.used(1).len(), 1, "and asks for the next one (used_event)");
    // Interrupt disable in the command register holds the line low.
    d.pci.config_write(4, 2, 0x406);
    d.add(1, &[(buf, 1, false)], false);
    assert!(!d.pci.interrupt_sink().intx);
    d.pci.config_write(4, 2, 0x6);
    assert!(d.pci.interrupt_sink().intx);
    assert!(d.msis().is_empty());
}

#[test]
fn a_driver_without_version_1_is_refused_and_subsets_are_accepted() {
    let mut d = Driver::new(Console::new(Out::default(), In::default()));
    d.probe();
    assert!(!d.init(VIRTIO_F_EVENT_IDX | VIRTIO_F_INDIRECT_DESC));
    assert_eq!(d.status() & FEATURES_OK, 0);
    assert!(d.init(VIRTIO_F_VERSION_1 | VIRTIO_F_INDIRECT_DESC));
    // Without EVENT_IDX the driver kicks every time (NO_NOTIFY never set).
    let buf = d.alloc(8, 8);
    d.add(1, &[(buf, 1, false)], true);
    d.add(1, &[(buf, 1, false)], true);
    assert_eq!(d.used(1).len(), 2);
}

fn blk_driver(disk: &mut [u8], ro: bool) -> Driver<Block<MemDisk<'_>>> {
    let mut d = Driver::new(Block::new(MemDisk::new(disk), ro).with_id(b"disk-0"));
    d.probe();
    d.setup_msix();
    assert!(d.init(ALL | blk::features::VIRTIO_BLK_F_FLUSH | blk::features::VIRTIO_BLK_F_RO));
    d
}

/// Header + data + status; returns (status byte, used len).
fn blk_request(
    d: &mut Driver<Block<MemDisk<'_>>>,
    kind: u32,
    sector: u64,
    data: &[(u64, u32, bool)],
    indirect: bool,
) -> (u8, u32) {
    let hdr = d.alloc(16, 16);
    wr(&mut d.ram, hdr, 4, u64::from(kind));
    wr(&mut d.ram, hdr + 8, 8, sector);
    let st = d.alloc(1, 1);
    d.ram[st as usize] = 0xff;
    let mut bufs = vec![(hdr, 16, false)];
    bufs.extend_from_slice(data);
    bufs.push((st, 1, true));
    d.add(0, &bufs, indirect);
    let used = d.used(0);
    assert_eq!(used.len(), 1, "one request completed");
    (d.ram[st as usize], used[0].1)
}

#[test]
fn blk_reads_writes_flushes_and_identifies() {
    let mut disk: Vec<u8> = (0..16 * 512u32).map(|i| (i / 512) as u8).collect();
    let mut d = blk_driver(&mut disk, false);
    let cfg = d.bar_base(0) + d.layout.device.unwrap();
    assert_eq!(d.mmio_read(cfg, 8), 16, "capacity in sectors");
    assert_eq!(
        d.pci.negotiated_features() & blk::features::VIRTIO_BLK_F_RO,
        0,
        "not offered"
    );

    // Read sectors 2-3 into two buffers, through an indirect table.
    let buf = d.alloc(1024, 512);
    let (st, len) = blk_request(
        &mut d,
        blk::request::IN,
        2,
        &[(buf, 300, true), (buf + 300, 724, true)],
        true,
    );
    assert_eq!((st, len), (blk::status::OK, 1025));
    assert!(d.ram[buf as usize..buf as usize + 512]
        .iter()
        .all(|&b| b == 2));
    assert!(d.ram[buf as usize + 512..buf as usize + 1024]
        .iter()
        .all(|&b| b == 3));
    assert_eq!(d.msis(), [(MSI_ADDR, 0x41)]);

    // Write sector 15, direct chain.
    let src = d.alloc(512, 512);
    d.ram[src as usize..src as usize + 512].fill(0xab);
    assert_eq!(
        blk_request(&mut d, blk::request::OUT, 15, &[(src, 512, false)], false),
        (0, 1)
    );
    // Read it back.
    assert_eq!(
        blk_request(&mut d, blk::request::IN, 15, &[(buf, 512, true)], false),
        (0, 513)
    );
    assert!(d.ram[buf as usize..buf as usize + 512]
        .iter()
        .all(|&b| b == 0xab));

    assert_eq!(
        blk_request(&mut d, blk::request::FLUSH, 0, &[], false),
        (0, 1)
    );
    let id = d.alloc(20, 1);
    assert_eq!(
        blk_request(&mut d, blk::request::GET_ID, 0, &[(id, 20, true)], true),
        (0, 21)
    );
    assert_eq!(&d.ram[id as usize..id as usize + 7], b"disk-0\0");

    // Past the end, partial sectors, unknown requests.
    assert_eq!(
        blk_request(&mut d, blk::request::IN, 16, &[(buf, 512, true)], false).0,
        blk::status::IOERR
    );
    assert_eq!(
        blk_request(&mut d, blk::request::IN, 15, &[(buf, 1024, true)], false).0,
        blk::status::IOERR
    );
    assert_eq!(
        blk_request(
            &mut d,
            blk::request::IN,
            u64::MAX,
            &[(buf, 512, true)],
            false
        )
        .0,
        blk::status::IOERR
    );
    assert_eq!(
        blk_request(&mut d, blk::request::OUT, 0, &[(src, 100, false)], false).0,
        blk::status::IOERR
    );
    assert_eq!(
        blk_request(&mut d, 11, 0, &[], false).0,
        blk::status::UNSUPP
    );
    assert_eq!(d.pci.status() & DEVICE_NEEDS_RESET, 0);
    drop(d);
    assert!(disk[15 * 512..].iter().all(|&b| b == 0xab));
    assert!(disk[..15 * 512]
        .iter()
        .enumerate()
        .all(|(i, &b)| b == (i / 512) as u8));
}

#[test]
fn read_only_blk_refuses_writes() {
    let mut disk = vec![7u8; 4 * 512];
    let mut d = blk_driver(&mut disk, true);
    assert_ne!(
        d.pci.negotiated_features() & blk::features::VIRTIO_BLK_F_RO,
        0
    );
    let src = d.alloc(512, 512);
    assert_eq!(
        blk_request(&mut d, blk::request::OUT, 0, &[(src, 512, false)], false).0,
        blk::status::IOERR
    );
    let buf = d.alloc(512, 512);
    assert_eq!(
        blk_request(&mut d, blk::request::IN, 0, &[(buf, 512, true)], false).0,
        blk::status::OK
    );
    drop(d);
    assert!(disk.iter().all(|&b| b == 7));
}

#[test]
fn a_broken_chain_needs_reset_and_reset_recovers() {
    let mut disk = vec![0u8; 4 * 512];
    let mut d = blk_driver(&mut disk, false);
    // A loop: descriptor 0 → 1 → 0.
    let dq = &d.queues[0];
    let (desc, avail) = (dq.desc, dq.avail);
    for (i, next) in [(0u64, 1u64), (1, 0)] {
        wr(&mut d.ram, desc + 16 * i, 8, 0x1000);
        wr(&mut d.ram, desc + 16 * i + 8, 4, 16);
        wr(&mut d.ram, desc + 16 * i + 12, 2, u64::from(NEXT));
        wr(&mut d.ram, desc + 16 * i + 14, 2, next);
    }
    wr(&mut d.ram, avail + 4, 2, 0);
    wr(&mut d.ram, avail + 2, 2, 1);
    d.kick(0);
    assert_ne!(d.status() & DEVICE_NEEDS_RESET, 0);
    assert!(matches!(
        d.pci.last_error(),
        Some(TransportError::Device(DeviceError::Queue(
            virtio::QueueError::ChainTooLong { .. }
        )))
    ));
    assert_eq!(
        d.msis(),
        [(MSI_ADDR, 0x40)],
        "a configuration change on vector 0"
    );
    let isr = d.bar_base(0) + d.layout.isr;
    assert_eq!(d.mmio_read(isr, 1), 2, "ISR: configuration change");
    // Nothing is processed until the driver resets.
    d.kick(0);
    assert!(d.used(0).is_empty());
    // Reset and start again: a request works.
    d.brk = 0x80000;
    assert!(d.init(ALL));
    assert_eq!(d.pci.last_error(), None);
    let buf = d.alloc(512, 512);
    assert_eq!(
        blk_request(&mut d, blk::request::IN, 0, &[(buf, 512, true)], false),
        (0, 513)
    );
}

#[test]
fn a_request_without_status_byte_needs_reset() {
    let mut disk = vec![0u8; 4 * 512];
    let mut d = blk_driver(&mut disk, false);
    let hdr = d.alloc(16, 16);
    d.add(0, &[(hdr, 16, false)], false);
    assert_ne!(d.status() & DEVICE_NEEDS_RESET, 0);
    assert_eq!(
        d.pci.last_error(),
        Some(TransportError::Device(DeviceError::BadRequest(
            "virtio-blk request without a status byte"
        )))
    );
}

struct Counter(u8);
impl EntropySource for Counter {
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            self.0 = self.0.wrapping_add(1);
            *b = self.0;
        }
    }
}

#[test]
fn rng_fills_buffers() {
    let mut d = Driver::new(Rng::new(Counter(0)));
    d.probe();
    assert_eq!(d.layout.device, None, "no device configuration");
    d.setup_msix();
    assert!(d.init(ALL));
    let buf = d.alloc(8, 8);
    d.add(0, &[(buf, 3, true), (buf + 3, 2, true)], true);
    assert_eq!(d.used(0), [(0, 5)]);
    assert_eq!(&d.ram[buf as usize..buf as usize + 5], &[1, 2, 3, 4, 5]);
    assert_eq!(d.msis(), [(MSI_ADDR, 0x41)]);
    // Unused vector: no message.
    d.common_write(common::CONFIG_MSIX_VECTOR, 2, 100);
    assert_eq!(
        d.common_read(common::CONFIG_MSIX_VECTOR, 2),
        u64::from(NO_VECTOR)
    );
}

/// An uplink in memory: frames sent, and frames waiting to be received.
#[derive(Default, Debug)]
struct Wire {
    tx: Vec<u8>,
    sent: Vec<Vec<u8>>,
    incoming: VecDeque<Vec<u8>>,
}

impl net::NetBackend for Wire {
    fn tx_buffer(&mut self) -> &mut [u8] {
        self.tx.resize(net::MAX_FRAME_LEN, 0);
        &mut self.tx
    }
    fn transmit(&mut self, len: usize) {
        self.sent.push(self.tx[..len].to_vec());
    }
    fn peek(&mut self) -> Option<&[u8]> {
        self.incoming.front().map(Vec::as_slice)
    }
    fn consume(&mut self) {
        self.incoming.pop_front();
    }
}

const MAC: [u8; 6] = [0x02, 0x53, 0x56, 0, 0, 1];

fn net_driver() -> Driver<net::Net<Wire>> {
    let mut d = Driver::new(net::Net::new(MAC, Wire::default()));
    d.probe();
    d.setup_msix();
    assert!(d.init(ALL | net::features::VIRTIO_NET_F_MAC | 1 << 0 | 1 << 11));
    d
}

/// A frame of `len` bytes: broadcast, from MAC, type 0x0800, a pattern.
fn frame(len: usize) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len).map(|i| i as u8).collect();
    f[..6].fill(0xff);
    f[6..12].copy_from_slice(&MAC);
    f[12..14].copy_from_slice(&[8, 0]);
    f
}

/// Puts `hdr` + `frame` on the transmit queue in `pieces` buffers (the
/// header in its own, as Linux does).
fn net_send(d: &mut Driver<net::Net<Wire>>, hdr: [u8; 12], frame: &[u8], pieces: usize) {
    let at = d.alloc(12 + frame.len() as u64, 16);
    d.ram[at as usize..at as usize + 12].copy_from_slice(&hdr);
    d.ram[at as usize + 12..at as usize + 12 + frame.len()].copy_from_slice(frame);
    let mut bufs = vec![(at, 12, false)];
    let step = frame.len().div_ceil(pieces).max(1);
    let mut off = 0;
    while off < frame.len() {
        let n = step.min(frame.len() - off);
        bufs.push((at + 12 + off as u64, n as u32, false));
        off += n;
    }
    d.add(1, &bufs, pieces > 2);
}

#[test]
fn net_offers_only_its_mac_and_no_offloads() {
    let mut d = net_driver();
    assert_eq!(
        d.pci.negotiated_features(),
        ALL | net::features::VIRTIO_NET_F_MAC,
        "CSUM (0) and HOST_TSO4 (11) are not offered"
    );
    assert_eq!(d.pci.config_read(2, 2), 0x1041, "modern virtio-net");
    assert_eq!(d.pci.config_read(0xa, 2), 0x0200, "Ethernet controller");
    let cfg = d.bar_base(0) + d.layout.device.unwrap();
    let mac: Vec<u8> = (0..6).map(|i| d.mmio_read(cfg + i, 1) as u8).collect();
    assert_eq!(mac, MAC);
}

#[test]
fn net_sends_gathered_frames_and_receives_into_buffers() {
    let mut d = net_driver();
    let f = frame(342);
    net_send(&mut d, [0; 12], &f, 1);
    net_send(&mut d, [0; 12], &frame(1514), 3);
    assert_eq!(d.used(1).len(), 2);
    let wire = d.pci.device().backend();
    assert_eq!(wire.sent, [f.clone(), frame(1514)]);
    assert_eq!(d.msis(), [(MSI_ADDR, 0x42)], "transmitq's vector 2");

    // Two frames arrive before the driver has buffers: they wait.
    d.pci
        .device_mut()
        .backend_mut()
        .incoming
        .extend([frame(60), frame(1518)]);
    d.poll();
    assert!(d.msis().is_empty());
    let rx = d.alloc(2 * 1526, 16);
    d.add(0, &[(rx, 12, true), (rx + 12, 1514, true)], false);
    assert_eq!(d.used(0), [(0, 72)]);
    assert_eq!(&d.ram[rx as usize..rx as usize + 12], &net::RX_HDR);
    assert_eq!(&d.ram[rx as usize + 12..rx as usize + 72], &frame(60)[..]);
    assert_eq!(d.msis(), [(MSI_ADDR, 0x41)]);
    // The second waits for a buffer large enough, then comes.
    d.add(0, &[(rx + 1526, 1530, true)], true);
    assert_eq!(d.used(0), [(2, 1530)]);
    assert_eq!(
        &d.ram[rx as usize + 1538..rx as usize + 1538 + 1518],
        &frame(1518)[..]
    );
    let s = d.pci.device().stats();
    assert_eq!((s.tx_frames, s.tx_bytes), (2, 342 + 1514));
    assert_eq!((s.rx_frames, s.rx_bytes), (2, 60 + 1518));
    assert_eq!(s.tx_malformed + s.tx_oversized + s.rx_dropped, 0);
    assert_eq!(d.pci.status() & DEVICE_NEEDS_RESET, 0);
}

#[test]
fn net_drops_and_counts_bad_frames_and_goes_on() {
    let mut d = net_driver();
    net_send(&mut d, [0; 12], &frame(1515), 2);
    net_send(&mut d, [0; 12], &frame(9000), 4);
    net_send(&mut d, [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], &frame(100), 1);
    net_send(&mut d, [0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], &frame(100), 1);
    net_send(&mut d, [0; 12], &frame(100)[..13], 1);
    // A header alone, shorter than a header, and a writable buffer.
    let at = d.alloc(64, 16);
    d.add(1, &[(at, 12, false)], false);
    d.add(1, &[(at, 5, false)], false);
    d.add(
        1,
        &[(at, 12, false), (at + 12, 20, false), (at + 32, 8, true)],
        false,
    );
    assert_eq!(d.used(1).len(), 8, "every chain returned");
    let s = d.pci.device().stats();
    assert_eq!((s.tx_oversized, s.tx_malformed, s.tx_frames), (2, 6, 0));
    assert!(d.pci.device().backend().sent.is_empty());
    // A good frame still goes.
    net_send(&mut d, [0; 12], &frame(60), 1);
    assert_eq!(d.pci.device().backend().sent.len(), 1);

    // Received frames too short, too long or larger than the buffer.
    d.pci.device_mut().backend_mut().incoming.extend([
        frame(14)[..13].to_vec(),
        frame(2000),
        frame(200),
        frame(100),
    ]);
    let rx = d.alloc(4096, 16);
    d.add(0, &[(rx, 100, true)], false);
    d.add(0, &[(rx + 100, 1526, true)], false);
    assert_eq!(d.used(0), [(0, 0), (1, 112)]);
    let s = d.pci.device().stats();
    assert_eq!((s.rx_dropped, s.rx_frames), (3, 1));
    assert_eq!(d.pci.status() & DEVICE_NEEDS_RESET, 0);
}

#[test]
fn net_transmit_buffer_outside_ram_needs_reset() {
    let mut d = net_driver();
    d.add(1, &[(0, 12, false), (RAM as u64 - 8, 64, false)], false);
    assert_ne!(d.status() & DEVICE_NEEDS_RESET, 0);
    assert!(d.pci.device().backend().sent.is_empty());
}
