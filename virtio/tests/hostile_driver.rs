//! A hostile driver: arbitrary configuration space and BAR accesses,
//! notifications and polls against the block and console devices, with
//! rings and descriptors near an arbitrary guest RAM. Nothing panics; a
//! refused guest-memory access always ends in DEVICE_NEEDS_RESET; the disk
//! changes only through a write request the device accepted.
//! (The same as `fuzz/fuzz_targets/transport.rs`, in every test run.)

use core::cell::Cell;

use proptest::prelude::*;
use virtio::devices::blk::{Block, MemDisk};
use virtio::devices::console::{Console, ConsoleInput, ConsoleOutput};
use virtio::features::VIRTIO_F_VERSION_1;
use virtio::memory::{GuestMemory, MemoryError, SliceMemory};
use virtio::pci::{common, BarWriteOutcome, NoInterrupts, NOTIFY_OFFSET};
use virtio::status::DEVICE_NEEDS_RESET;
use virtio::{InterruptSink, VirtioDevice, VirtioPci};

struct Watched<'a> {
    inner: SliceMemory<'a>,
    refused: Cell<u32>,
}

impl GuestMemory for Watched<'_> {
    fn ram_size(&self) -> u64 {
        self.inner.ram_size()
    }
    fn slice(&self, gpa: u64, len: u64) -> Result<&[u8], MemoryError> {
        self.inner
            .slice(gpa, len)
            .inspect_err(|_| self.refused.set(self.refused.get() + 1))
    }
    fn slice_mut(&mut self, gpa: u64, len: u64) -> Result<&mut [u8], MemoryError> {
        if self.inner.check(gpa, len).is_err() {
            self.refused.set(self.refused.get() + 1);
        }
        self.inner.slice_mut(gpa, len)
    }
}

#[derive(Clone, Debug)]
enum Op {
    ConfigWrite(u16, u8, u32),
    ConfigRead(u16, u8),
    BarWrite(u8, u64, u8, u64),
    BarRead(u8, u64, u8),
    Init(u64),
    Notify(u16),
    Poll,
}

fn op() -> impl Strategy<Value = Op> {
    let size = prop::sample::select(vec![1u8, 2, 4, 8]);
    prop_oneof![
        (0u16..256, 1u8..=4, any::<u32>()).prop_map(|(o, s, v)| Op::ConfigWrite(o, s, v)),
        (0u16..300, 1u8..=4).prop_map(|(o, s)| Op::ConfigRead(o, s)),
        (0u8..3, 0u64..0x4100, size.clone(), any::<u64>())
            .prop_map(|(b, o, s, v)| Op::BarWrite(b, o, s, v)),
        (0u8..3, 0u64..0x4100, size).prop_map(|(b, o, s)| Op::BarRead(b, o, s)),
        any::<u64>().prop_map(Op::Init),
        (0u16..3).prop_map(Op::Notify),
        Just(Op::Poll),
    ]
}

/// virtio_pci_modern's order, with features, queue 0's size and ring
/// addresses (in the first 4 KiB) from `v`.
fn init<D: VirtioDevice, I: InterruptSink>(pci: &mut VirtioPci<D, I>, v: u64) {
    let mut w = |reg: u64, size: u8, val: u64| {
        pci.bar_write(0, reg, size, val);
    };
    w(common::DEVICE_STATUS, 1, 0);
    w(common::DEVICE_STATUS, 1, 3);
    let features = VIRTIO_F_VERSION_1 | (v & 3) << 28 | (v >> 2 & 1) << 9 | (v >> 3 & 1) << 5;
    w(common::DRIVER_FEATURE_SELECT, 4, 0);
    w(common::DRIVER_FEATURE, 4, features & 0xffff_ffff);
    w(common::DRIVER_FEATURE_SELECT, 4, 1);
    w(common::DRIVER_FEATURE, 4, features >> 32);
    w(common::DEVICE_STATUS, 1, 0xb);
    for q in 0..2 {
        w(common::QUEUE_SELECT, 2, q);
        w(common::QUEUE_SIZE, 2, 1 << (v >> 4 & 7));
        w(common::QUEUE_DESC, 8, (v >> 8 & 0xff) << 4);
        w(common::QUEUE_DRIVER, 8, (v >> 16 & 0xfff) << 1);
        w(common::QUEUE_DEVICE, 8, (v >> 28 & 0x3ff) << 2);
        w(common::QUEUE_ENABLE, 2, 1);
    }
    w(common::DEVICE_STATUS, 1, 0xf);
}

fn drive<D: VirtioDevice>(
    pci: &mut VirtioPci<D, NoInterrupts>,
    m: &mut Watched<'_>,
    ops: &[Op],
) -> Result<(), TestCaseError> {
    for op in ops {
        let before = m.refused.get();
        let outcome = match *op {
            Op::ConfigWrite(o, s, v) => pci.config_write(o, s, v),
            Op::ConfigRead(o, s) => {
                pci.config_read(o, s);
                BarWriteOutcome::Done
            }
            Op::BarWrite(b, o, s, v) => pci.bar_write(b, o, s, v),
            Op::BarRead(b, o, s) => {
                pci.bar_read(b, o, s);
                BarWriteOutcome::Done
            }
            Op::Init(v) => {
                init(pci, v);
                BarWriteOutcome::Done
            }
            Op::Notify(q) => pci.bar_write(0, NOTIFY_OFFSET + 4 * u64::from(q), 2, u64::from(q)),
            Op::Poll => {
                pci.poll(m);
                BarWriteOutcome::Done
            }
        };
        if let BarWriteOutcome::QueueNotify(q) = outcome {
            pci.process_queue(q, m);
        }
        if m.refused.get() != before {
            prop_assert_ne!(
                pci.status() & DEVICE_NEEDS_RESET,
                0,
                "{:?}",
                pci.last_error()
            );
        }
    }
    Ok(())
}

struct Sink;
impl ConsoleOutput for Sink {
    fn write(&mut self, _data: &[u8]) {}
}
struct Endless;
impl ConsoleInput for Endless {
    fn pending(&self) -> bool {
        true
    }
    fn read(&mut self, buf: &mut [u8]) -> usize {
        buf.fill(b'x');
        buf.len()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn a_hostile_driver_never_breaks_the_block_device(
        ram_prefix in prop::collection::vec(any::<u8>(), 0..4096),
        ops in prop::collection::vec(op(), 1..48),
        read_only: bool,
    ) {
        let mut ram = vec![0u8; 64 << 10];
        ram[..ram_prefix.len()].copy_from_slice(&ram_prefix);
        let mut disk = vec![0x5au8; 8 * 512];
        let mut pci = VirtioPci::new(Block::new(MemDisk::new(&mut disk), read_only), NoInterrupts);
        let mut m = Watched { inner: SliceMemory::new(&mut ram), refused: Cell::new(0) };
        drive(&mut pci, &mut m, &ops)?;
        if read_only {
            prop_assert!(disk.iter().all(|&b| b == 0x5a), "a read-only disk was written");
        }
    }

    #[test]
    fn a_hostile_driver_never_breaks_the_console(
        ram_prefix in prop::collection::vec(any::<u8>(), 0..4096),
        ops in prop::collection::vec(op(), 1..48),
    ) {
        let mut ram = vec![0u8; 64 << 10];
        ram[..ram_prefix.len()].copy_from_slice(&ram_prefix);
        let mut pci = VirtioPci::new(Console::new(Sink, Endless), NoInterrupts);
        let mut m = Watched { inner: SliceMemory::new(&mut ram), refused: Cell::new(0) };
        drive(&mut pci, &mut m, &ops)?;
    }
}
