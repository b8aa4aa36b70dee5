//! The driver's tests against [`crate::model`].
extern crate std;

use std::string::ToString;
use std::vec::Vec;

use crate::model::{Attached, Device, BASE, CTRL};
use crate::regs::{command as cmd, control, error as err, status};
use crate::*;

fn driver(dev: Device) -> Ata<Device, Spin> {
    Ata::new(dev, Spin::new(100), PRIMARY, Drive::Master).with_max_polls(1000)
}

fn identified(dev: Device) -> Ata<Device, Spin> {
    let mut d = driver(dev);
    d.identify().unwrap();
    d
}

/// A disk without the MULTIPLE commands (IDENTIFY word 47 reads 0): one
/// sector per DRQ block, READ/WRITE SECTORS (EXT).
fn one_sector(mut dev: Device) -> Device {
    dev.max_multiple = 0;
    dev
}

fn pattern(sectors: usize, seed: u8) -> Vec<u8> {
    (0..sectors * SECTOR_SIZE)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

#[test]
fn identify_finds_the_disk_as_qemu_describes_it() {
    let mut d = driver(Device::disk(2048));
    let info = d.identify().unwrap();
    assert_eq!(
        info.to_string(),
        "QEMU HARDDISK, 2048 sectors (1 MiB), write cache flush supported"
    );
    assert_eq!(d.info(), Some(&info));
    // The largest DRQ block word 47 offers, and 32-bit data (word 48).
    assert_eq!(
        d.io().commands,
        [cmd::IDENTIFY_DEVICE, cmd::SET_MULTIPLE_MODE]
    );
    assert_eq!((d.io().multiple, d.sectors_per_block()), (16, 16));
    assert_eq!(d.data_width(), DataWidth::Dword);
    // Polling: nIEN was set, so the device never interrupted.
    assert!(!d.io().irq_pending);
}

#[test]
fn writes_read_back_through_48_bit_commands() {
    let mut d = identified(one_sector(Device::disk(4096)));
    assert_eq!(d.sectors_per_block(), 1);
    let data = pattern(3, 7);
    d.write(100, &data).unwrap();
    let mut back = std::vec![0u8; data.len()];
    d.read(100, &mut back).unwrap();
    assert_eq!(back, data);
    assert_eq!(
        &d.io().commands[1..],
        [cmd::WRITE_SECTORS_EXT, cmd::READ_SECTORS_EXT]
    );
    assert_eq!(d.io().sector(101)[..], data[512..1024]);
}

#[test]
fn multiple_commands_move_blocks_of_the_set_size_with_one_interrupt_each() {
    let mut dev = Device::disk(4096);
    dev.max_multiple = 4;
    let mut d = identified(dev);
    // 10 sectors: DRQ blocks of 4, 4 and 2.
    let data = pattern(10, 5);
    d.write(200, &data).unwrap();
    let mut back = std::vec![0u8; data.len()];
    d.read(200, &mut back).unwrap();
    assert_eq!(back, data);
    assert_eq!(
        &d.io().commands[1..],
        [
            cmd::SET_MULTIPLE_MODE,
            cmd::WRITE_MULTIPLE_EXT,
            cmd::READ_MULTIPLE_EXT
        ]
    );
    for i in 0..10 {
        assert_eq!(d.io().sector(200 + i)[..], data[i as usize * 512..][..512]);
    }
    // 28-bit: READ/WRITE MULTIPLE.
    let mut dev = Device::new(Attached::Disk, 1000, false);
    dev.max_multiple = 8;
    let mut d = identified(dev);
    d.write(990, &data).unwrap();
    d.read(990, &mut back).unwrap();
    assert_eq!(back, data);
    assert_eq!(
        &d.io().commands[2..],
        [cmd::WRITE_MULTIPLE, cmd::READ_MULTIPLE]
    );
}

#[test]
fn interrupts_come_once_a_block() {
    // With nIEN clear the model counts the interrupts it raises.
    struct Irq;
    impl Wait for Irq {
        fn uses_irq(&self) -> bool {
            true
        }
        fn start(&mut self) {}
        fn pause(&mut self) -> bool {
            true
        }
    }
    let irqs = |dev: Device| {
        let mut d = Ata::new(dev, Irq, PRIMARY, Drive::Master).with_max_polls(1000);
        d.identify().unwrap();
        let before = d.io().irqs;
        let data = pattern(32, 1);
        d.write(0, &data).unwrap();
        let mut back = std::vec![0u8; data.len()];
        d.read(0, &mut back).unwrap();
        assert_eq!(back, data);
        d.io().irqs - before
    };
    // 32 sectors each way: 32 + 32 interrupts, or 2 + 2 in blocks of 16.
    assert_eq!(irqs(one_sector(Device::disk(64))), 64);
    assert_eq!(irqs(Device::disk(64)), 4);
}

#[test]
fn set_multiple_mode_follows_the_model_and_a_refusal_falls_back() {
    // Word 47 not a power of two: no SET MULTIPLE MODE at all.
    let mut dev = Device::disk(64);
    dev.max_multiple = 12;
    let d = identified(dev);
    assert_eq!(d.info().unwrap().max_multiple, 0);
    assert_eq!(d.io().commands, [cmd::IDENTIFY_DEVICE]);
    // A device that refuses SET MULTIPLE MODE (here: it sees a count of
    // 0): the driver keeps to READ/WRITE SECTORS.
    struct Refuses(Device);
    impl PortIo for Refuses {
        fn inb(&mut self, port: u16) -> u8 {
            self.0.inb(port)
        }
        fn outb(&mut self, port: u16, value: u8) {
            if port == BASE + regs::COMMAND && value == cmd::SET_MULTIPLE_MODE {
                self.0.outb(BASE + regs::SECTOR_COUNT, 0);
            }
            self.0.outb(port, value);
        }
        fn inw(&mut self, port: u16) -> u16 {
            self.0.inw(port)
        }
        fn outw(&mut self, port: u16, value: u16) {
            self.0.outw(port, value);
        }
    }
    let mut d = Ata::new(
        Refuses(Device::disk(64)),
        Spin::new(100),
        PRIMARY,
        Drive::Master,
    );
    d.identify().unwrap();
    assert_eq!(d.sectors_per_block(), 1);
    let data = pattern(2, 9);
    d.write(3, &data).unwrap();
    let mut back = std::vec![0u8; data.len()];
    d.read(3, &mut back).unwrap();
    assert_eq!(back, data);
    assert_eq!(
        &d.io().0.commands[1..],
        [
            cmd::SET_MULTIPLE_MODE,
            cmd::WRITE_SECTORS_EXT,
            cmd::READ_SECTORS_EXT
        ]
    );
    // The model itself: a MULTIPLE command before SET MULTIPLE MODE, a
    // size above word 47's, and 0 abort; the setting then stays.
    let mut dev = Device::disk(64);
    for (count, ok) in [(0u8, false), (32, false), (3, false), (8, true), (0, false)] {
        dev.outb(BASE + regs::SECTOR_COUNT, count);
        dev.outb(BASE + regs::COMMAND, cmd::SET_MULTIPLE_MODE);
        let st = dev.inb(BASE + regs::STATUS);
        assert_eq!(st & status::ERR == 0, ok, "count {count}");
        if !ok {
            assert_eq!(dev.error, err::ABRT);
        }
    }
    assert_eq!(dev.multiple, 8);
    let mut fresh = Device::disk(64);
    fresh.outb(BASE + regs::SECTOR_COUNT, 1);
    fresh.outb(BASE + regs::COMMAND, cmd::READ_MULTIPLE_EXT);
    assert_eq!(fresh.inb(BASE + regs::STATUS), status::DRDY | status::ERR);
    assert_eq!(fresh.error, err::ABRT);
    // Word 59 reports the setting.
    let mut d = identified(Device::disk(64));
    d.identify().unwrap();
    assert_eq!(d.sectors_per_block(), 16);
}

#[test]
fn data_moves_32_bits_at_a_time_only_when_word_48_says_so() {
    let mut d = identified(Device::disk(64));
    let data = pattern(2, 3);
    let before = d.io().port_ops;
    d.write(1, &data).unwrap();
    let mut back = std::vec![0u8; data.len()];
    d.read(1, &mut back).unwrap();
    assert_eq!(back, data);
    // 2 x 1024 bytes in doublewords.
    assert_eq!(d.io().dword_ops, 512);
    let dword_ops = d.io().port_ops - before;
    // A 16-bit-only device (its bus drives no high half): words, and
    // the data still arrive whole.
    let mut dev = Device::disk(64);
    dev.dword_io = false;
    let mut d = identified(dev);
    assert_eq!(d.data_width(), DataWidth::Word);
    let before = d.io().port_ops;
    d.write(1, &data).unwrap();
    d.read(1, &mut back).unwrap();
    assert_eq!(back, data);
    assert_eq!(d.io().dword_ops, 0);
    // 1024 words instead of 512 doublewords; everything else the same.
    assert_eq!(d.io().port_ops - before - dword_ops, 512);
    // The same when the caller forbids it.
    let mut d = driver(Device::disk(64)).with_word_io_only();
    d.identify().unwrap();
    assert_eq!(d.data_width(), DataWidth::Word);
    d.read(1, &mut back).unwrap();
    assert_eq!(d.io().dword_ops, 0);
}

#[test]
fn a_scatter_list_may_split_sectors_and_doublewords() {
    /// Buffers of the given lengths, one after another.
    struct Pieces(Vec<Vec<u8>>);
    impl Pieces {
        fn locate(&self, at: usize) -> Option<(usize, usize)> {
            let mut base = 0;
            for (i, p) in self.0.iter().enumerate() {
                if at < base + p.len() {
                    return Some((i, at - base));
                }
                base += p.len();
            }
            None
        }
    }
    impl Sink for Pieces {
        fn chunk_mut(&mut self, at: usize, max: usize) -> Option<&mut [u8]> {
            let (i, off) = self.locate(at)?;
            let p = &mut self.0[i][off..];
            let n = p.len().min(max);
            Some(&mut p[..n])
        }
    }
    impl Source for Pieces {
        fn chunk(&mut self, at: usize, max: usize) -> Option<&[u8]> {
            let (i, off) = self.locate(at)?;
            let p = &self.0[i][off..];
            Some(&p[..p.len().min(max)])
        }
    }
    for word_only in [false, true] {
        let mut d = driver(Device::disk(64));
        if word_only {
            d = d.with_word_io_only();
        }
        d.identify().unwrap();
        let data = pattern(3, 11);
        let lens = [1usize, 2, 3, 500, 7, 511, 1, 511];
        assert_eq!(lens.iter().sum::<usize>(), data.len());
        let mut pieces = Vec::new();
        let mut at = 0;
        for l in lens {
            pieces.push(data[at..at + l].to_vec());
            at += l;
        }
        d.write_from(4, data.len(), &mut Pieces(pieces)).unwrap();
        let mut back = Pieces(lens.iter().map(|&l| std::vec![0u8; l]).collect());
        d.read_into(4, data.len(), &mut back).unwrap();
        assert_eq!(back.0.concat(), data);
        // A list with a hole is refused before the device hears of it.
        let commands = d.io().commands.len();
        let mut short = Pieces(std::vec![std::vec![0u8; 100]]);
        assert_eq!(
            d.read_into(0, 512, &mut short),
            Err(Error::BadLength { len: 512 })
        );
        assert_eq!(d.io().commands.len(), commands);
    }
}

#[test]
fn high_order_bytes_reach_the_device_as_previous_content() {
    // Sector 2^40 + 3 needs LBA bytes 4 and 5, written first.
    let mut d = identified(Device::disk(1 << 41));
    let lba = (1u64 << 40) + (1 << 32) + (5 << 24) + 3;
    let data = pattern(1, 9);
    d.write(lba, &data).unwrap();
    assert_eq!(d.io().sector(lba)[..], data[..]);
    let mut back = std::vec![0u8; SECTOR_SIZE];
    d.read(lba, &mut back).unwrap();
    assert_eq!(back, data);
}

#[test]
fn a_disk_without_48_bit_addressing_gets_28_bit_commands_of_256_sectors() {
    let mut d = identified(one_sector(Device::new(Attached::Disk, 1000, false)));
    assert!(!d.info().unwrap().lba48);
    let data = pattern(300, 3);
    d.write(600, &data).unwrap();
    let mut back = std::vec![0u8; data.len()];
    d.read(600, &mut back).unwrap();
    assert_eq!(back, data);
    assert_eq!(
        &d.io().commands[1..],
        [
            cmd::WRITE_SECTORS,
            cmd::WRITE_SECTORS,
            cmd::READ_SECTORS,
            cmd::READ_SECTORS
        ]
    );
}

#[test]
fn a_command_of_exactly_256_or_65536_sectors_writes_a_count_of_zero() {
    let mut d = identified(one_sector(Device::new(Attached::Disk, 1000, false)));
    let mut buf = std::vec![0u8; 256 * SECTOR_SIZE];
    d.read(0, &mut buf).unwrap();
    assert_eq!(d.io().commands.len(), 2);
    let mut d = identified(Device::disk(70000));
    let mut buf = std::vec![0u8; 65537 * SECTOR_SIZE];
    d.read(1, &mut buf).unwrap();
    assert_eq!(&d.io().commands[2..], [cmd::READ_MULTIPLE_EXT; 2]);
}

#[test]
fn slow_devices_are_waited_for_and_irq_mode_leaves_nien_clear() {
    struct IrqWait(u32, u32);
    impl Wait for IrqWait {
        fn uses_irq(&self) -> bool {
            true
        }
        fn wait_irq(&mut self) {
            self.1 += 1;
        }
        fn start(&mut self) {
            self.0 = 50;
        }
        fn pause(&mut self) -> bool {
            self.0 = self.0.saturating_sub(1);
            self.0 > 0
        }
    }
    for (max, blocks) in [(0, 4), (2, 2)] {
        let mut dev = Device::disk(64);
        dev.latency = 5;
        dev.max_multiple = max;
        let mut d = Ata::new(dev, IrqWait(0, 0), PRIMARY, Drive::Master);
        d.identify().unwrap();
        let data = pattern(4, 1);
        d.write(8, &data).unwrap();
        let mut back = std::vec![0u8; data.len()];
        d.read(8, &mut back).unwrap();
        assert_eq!(back, data);
        d.flush().unwrap();
        // One interrupt awaited per promise: IDENTIFY's block, SET
        // MULTIPLE MODE's end (if sent), the written blocks, the read
        // blocks, the flush's end.
        let set = u32::from(max > 0);
        assert_eq!(d.wait_mut().1, 1 + set + blocks + blocks + 1);
        assert_eq!(d.io().control & control::NIEN, 0);
        // Every interrupt was acknowledged by a read of Status.
        assert!(!d.io().irq_pending);
    }
}

#[test]
fn flush_uses_flush_cache_ext_and_the_disk_counts_it() {
    let mut d = identified(Device::disk(64));
    d.flush().unwrap();
    assert_eq!(d.io().flushes, 1);
    assert_eq!(d.io().commands.last(), Some(&cmd::FLUSH_CACHE_EXT));
    let mut d = identified(Device::new(Attached::Disk, 64, false));
    d.flush().unwrap();
    assert_eq!(d.io().commands.last(), Some(&cmd::FLUSH_CACHE));
}

#[test]
fn a_disk_without_flush_commands_says_so_before_sending_anything() {
    let mut dev = Device::disk(64);
    dev.flush_bits = false;
    let mut d = identified(dev);
    assert_eq!(d.flush(), Err(Error::FlushUnsupported));
    assert_eq!(
        d.io().commands,
        [cmd::IDENTIFY_DEVICE, cmd::SET_MULTIPLE_MODE]
    );
    assert!(d
        .flush()
        .unwrap_err()
        .to_string()
        .contains("cannot be flushed"));
}

#[test]
fn an_aborted_flush_is_a_device_error() {
    let mut dev = Device::disk(64);
    dev.flush_aborts = true;
    let mut d = identified(dev);
    let e = d.flush().unwrap_err();
    assert!(
        matches!(
            e,
            Error::Device {
                command: Command::FlushCacheExt,
                error: err::ABRT,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "the disk ended FLUSH CACHE EXT with an error: command aborted (not supported, or a bad \
         parameter) (status 0x41, error 0x04)"
    );
}

#[test]
fn a_floating_bus_is_no_device() {
    let mut d = driver(Device::new(Attached::FloatingBus, 0, false));
    assert_eq!(d.identify(), Err(Error::NoDevice { status: 0xff }));
    assert_eq!(d.reset(), Err(Error::NoDevice { status: 0xff }));
    assert!(d.io().port_ops < 100);
}

#[test]
fn a_controller_without_a_disk_is_no_device() {
    let mut d = driver(Device::new(Attached::ControllerOnly, 0, false));
    let e = d.identify().unwrap_err();
    assert_eq!(e, Error::NoDevice { status: 0 });
    assert!(e.to_string().contains("the controller is there"), "{e}");
}

#[test]
fn a_missing_slave_is_no_device() {
    let mut d = Ata::new(Device::disk(64), Spin::new(100), PRIMARY, Drive::Slave);
    assert_eq!(d.identify(), Err(Error::NoDevice { status: 0 }));
}

#[test]
fn a_cd_rom_is_not_an_ata_disk() {
    let mut d = driver(Device::new(Attached::Atapi, 0, false));
    let e = d.identify().unwrap_err();
    assert_eq!(
        e,
        Error::NotAta {
            lba_mid: 0x14,
            lba_high: 0xeb
        }
    );
    assert!(
        e.to_string().contains("ATAPI device's, such as a CD-ROM"),
        "{e}"
    );
    assert_eq!(d.info(), None);
}

#[test]
fn a_stuck_device_times_out_with_its_status() {
    let mut d = identified(Device::disk(64));
    d.io_mut().stuck = true;
    let before = d.io().port_ops;
    let mut buf = [0u8; SECTOR_SIZE];
    let e = d.read(0, &mut buf).unwrap_err();
    assert!(matches!(e, Error::Timeout { status: 0x80, .. }), "{e:?}");
    assert!(e.to_string().contains("still busy"), "{e}");
    // Spin(100) bounds it; the poll limit would have at 1000.
    let ops = d.io().port_ops - before;
    assert!(ops < 150, "{ops}");
    // A reset brings it back.
    d.reset().unwrap();
    d.read(0, &mut buf).unwrap();
}

#[test]
fn the_poll_limit_bounds_a_wait_that_never_gives_up() {
    struct Forever;
    impl Wait for Forever {
        fn start(&mut self) {}
        fn pause(&mut self) -> bool {
            true
        }
    }
    let mut dev = Device::disk(64);
    dev.stuck = true;
    let mut d = Ata::new(dev, Forever, PRIMARY, Drive::Master).with_max_polls(500);
    assert!(matches!(d.identify(), Err(Error::Timeout { .. })));
    assert!(d.io().port_ops < 600);
}

#[test]
fn a_bad_sector_ends_the_read_with_its_address() {
    let mut dev = one_sector(Device::disk(64));
    dev.bad_sector = Some(12);
    let mut d = identified(dev);
    let mut buf = std::vec![0u8; 8 * SECTOR_SIZE];
    let e = d.read(10, &mut buf).unwrap_err();
    assert_eq!(
        e,
        Error::Device {
            command: Command::ReadSectorsExt,
            lba: 12,
            status: status::DRDY | status::ERR,
            error: err::UNC
        }
    );
    assert!(e.to_string().contains("at sector 12"), "{e}");
    assert!(e.to_string().contains("uncorrectable"), "{e}");
    let e = d.write(12, &buf[..SECTOR_SIZE]).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Device {
                lba: 12,
                error: err::UNC,
                ..
            }
        ),
        "{e:?}"
    );
    // The channel is usable afterwards.
    d.read(0, &mut buf).unwrap();
    // In DRQ blocks, the error names the block's first sector: the
    // sectors before it were moved, none of the block.
    let mut dev = Device::disk(64);
    dev.max_multiple = 4;
    dev.bad_sector = Some(12);
    let mut d = identified(dev);
    let e = d.read(6, &mut buf).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Device {
                command: Command::ReadMultipleExt,
                lba: 10,
                error: err::UNC,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn a_device_fault_is_reported() {
    let mut d = identified(one_sector(Device::disk(64)));
    d.io_mut().fault = true;
    let mut buf = [0u8; SECTOR_SIZE];
    let e = d.read(7, &mut buf).unwrap_err();
    assert_eq!(
        e,
        Error::Fault {
            command: Command::ReadSectorsExt,
            lba: 7,
            status: status::DRDY | status::DF
        }
    );
    let e = d.flush().unwrap_err();
    assert!(
        matches!(
            e,
            Error::Fault {
                command: Command::FlushCacheExt,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("device fault"), "{e}");
    // ERR and DF together: ERR, with the Error register, comes first.
    d.io_mut().bad_sector = Some(0);
    d.io_mut().fault = false;
    let e = d.read(0, &mut buf).unwrap_err();
    assert!(matches!(e, Error::Device { .. }), "{e:?}");
}

#[test]
fn transfers_past_the_end_or_of_odd_sizes_never_reach_the_device() {
    let mut d = identified(Device::disk(64));
    let mut buf = std::vec![0u8; 2 * SECTOR_SIZE];
    let e = d.read(63, &mut buf).unwrap_err();
    assert_eq!(
        e,
        Error::OutOfRange {
            lba: 63,
            count: 2,
            sectors: 64
        }
    );
    assert_eq!(
        e.to_string(),
        "sectors 63 to 64 lie past the end of the disk, which has 64 sectors"
    );
    assert!(matches!(
        d.read(u64::MAX, &mut buf),
        Err(Error::OutOfRange { .. })
    ));
    assert_eq!(d.write(0, &buf[..100]), Err(Error::BadLength { len: 100 }));
    assert_eq!(
        d.io().commands,
        [cmd::IDENTIFY_DEVICE, cmd::SET_MULTIPLE_MODE]
    );
    // Zero sectors is nothing to do.
    d.read(64, &mut []).unwrap();
    let mut fresh = driver(Device::disk(64));
    assert_eq!(fresh.read(0, &mut buf), Err(Error::NotIdentified));
}

#[test]
fn a_device_that_stops_asking_for_data_breaks_the_protocol() {
    // A device whose DRQ never shows: the data phase never begins.
    struct Lazy(Device);
    impl PortIo for Lazy {
        fn inb(&mut self, port: u16) -> u8 {
            let v = self.0.inb(port);
            if port == CTRL || port == BASE + regs::STATUS {
                v & !status::DRQ
            } else {
                v
            }
        }
        fn outb(&mut self, port: u16, value: u8) {
            self.0.outb(port, value);
        }
        fn inw(&mut self, port: u16) -> u16 {
            self.0.inw(port)
        }
        fn outw(&mut self, port: u16, value: u16) {
            self.0.outw(port, value);
        }
    }
    let mut lazy = Ata::new(
        Lazy(Device::disk(64)),
        Spin::new(10),
        PRIMARY,
        Drive::Master,
    );
    // IDENTIFY itself needs DRQ.
    let e = lazy.identify().unwrap_err();
    assert!(
        matches!(
            e,
            Error::Protocol {
                drq_expected: true,
                command: Command::IdentifyDevice,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("stopped asking for data"), "{e}");
}

#[test]
fn reset_pulses_srst_and_waits_for_the_device() {
    let mut dev = Device::disk(64);
    dev.latency = 3;
    let mut d = identified(dev);
    d.reset().unwrap();
    assert_eq!(d.io().control & control::SRST, 0);
    // The model forgets the DRQ block size in a reset; the driver sets it
    // again.
    assert_eq!(d.io().commands.last(), Some(&cmd::SET_MULTIPLE_MODE));
    assert_eq!(d.io().multiple, 16);
    assert!(d.info().is_some());
    let mut buf = [0u8; SECTOR_SIZE];
    d.read(5, &mut buf).unwrap();
}

#[test]
fn every_error_has_a_sentence() {
    let all = [
        Error::NoDevice { status: 0xff },
        Error::NoDevice { status: 0 },
        Error::NotAta {
            lba_mid: 0x3c,
            lba_high: 0xc3,
        },
        Error::NotAta {
            lba_mid: 1,
            lba_high: 2,
        },
        Error::NoLba,
        Error::Timeout {
            command: Command::WriteSectors,
            status: 0x48,
        },
        Error::Timeout {
            command: Command::SoftwareReset,
            status: 0x40,
        },
        Error::Device {
            command: Command::ReadSectors,
            lba: 3,
            status: 0x51,
            error: 0,
        },
        Error::Fault {
            command: Command::FlushCache,
            lba: 0,
            status: 0x60,
        },
        Error::Protocol {
            command: Command::WriteSectorsExt,
            lba: 9,
            status: 0x58,
            drq_expected: false,
        },
        Error::OutOfRange {
            lba: 0,
            count: 1,
            sectors: 0,
        },
        Error::BadLength { len: 1 },
        Error::NotIdentified,
        Error::FlushUnsupported,
    ];
    for e in all {
        let s = e.to_string();
        assert!(
            s.len() > 20 && !s.ends_with('.') && !s.contains('\n'),
            "{s}"
        );
    }
}

mod random_answers {
    //! Whatever the ports answer, the driver returns: no panic, no hang.
    use super::*;
    use proptest::prelude::*;

    /// Ports that answer from a script, cycling.
    struct Scripted {
        bytes: Vec<u8>,
        words: Vec<u16>,
        next_b: usize,
        next_w: usize,
        ops: u64,
    }

    impl PortIo for Scripted {
        fn inb(&mut self, _port: u16) -> u8 {
            self.ops += 1;
            let v = self.bytes[self.next_b % self.bytes.len()];
            self.next_b += 1;
            v
        }
        fn outb(&mut self, _port: u16, _value: u8) {
            self.ops += 1;
        }
        fn inw(&mut self, _port: u16) -> u16 {
            self.ops += 1;
            let v = self.words[self.next_w % self.words.len()];
            self.next_w += 1;
            v
        }
        fn outw(&mut self, _port: u16, _value: u16) {
            self.ops += 1;
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn any_answers_end_every_operation(
            bytes in proptest::collection::vec(any::<u8>(), 1..64),
            words in proptest::collection::vec(any::<u16>(), 1..300),
            lba in any::<u64>(),
            sectors in 0usize..4,
            irq in any::<bool>(),
        ) {
            struct W(Spin, bool);
            impl Wait for W {
                fn uses_irq(&self) -> bool { self.1 }
                fn start(&mut self) { self.0.start() }
                fn pause(&mut self) -> bool { self.0.pause() }
            }
            let io = Scripted { bytes, words, next_b: 0, next_w: 0, ops: 0 };
            let mut d = Ata::new(io, W(Spin::new(50), irq), PRIMARY, Drive::Master)
                .with_max_polls(200);
            let _ = d.identify().map(|i| i.to_string());
            let mut buf = std::vec![0u8; sectors * SECTOR_SIZE];
            let _ = d.read(lba % 4096, &mut buf).map_err(|e| e.to_string());
            let _ = d.write(lba, &buf).map_err(|e| e.to_string());
            let _ = d.flush().map_err(|e| e.to_string());
            let _ = d.reset().map_err(|e| e.to_string());
            // Bounded: a few waits of at most 51 polls per sector.
            prop_assert!(d.io().ops < 20_000, "{} port accesses", d.io().ops);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        /// Any DRQ block size, data width, 48- or 28-bit disk and run of
        /// transfers: the disk ends up holding what a plain array would.
        #[test]
        fn transfers_agree_with_an_array(
            max in prop::sample::select(std::vec![0u8, 1, 2, 4, 8, 16, 128]),
            lba48 in any::<bool>(),
            word_only in any::<bool>(),
            dword_io in any::<bool>(),
            ops in proptest::collection::vec((any::<bool>(), 0u64..300, 1usize..40, any::<u8>()), 1..8),
        ) {
            let mut dev = Device::new(Attached::Disk, 300, lba48);
            dev.max_multiple = max;
            dev.dword_io = dword_io;
            let mut d = driver(dev);
            if word_only {
                d = d.with_word_io_only();
            }
            d.identify().unwrap();
            let mut disk = std::vec![0u8; 300 * SECTOR_SIZE];
            for (write, lba, n, seed) in ops {
                let n = n.min(300 - lba as usize);
                let at = lba as usize * SECTOR_SIZE;
                let len = n * SECTOR_SIZE;
                if write {
                    let data = pattern(n, seed);
                    d.write(lba, &data).unwrap();
                    disk[at..at + len].copy_from_slice(&data);
                } else {
                    let mut back = std::vec![0u8; len];
                    d.read(lba, &mut back).unwrap();
                    prop_assert_eq!(&back[..], &disk[at..at + len]);
                }
            }
            let expect_multiple = if max > 1 { max } else { 1 };
            prop_assert_eq!(d.sectors_per_block(), expect_multiple);
        }
    }
}
