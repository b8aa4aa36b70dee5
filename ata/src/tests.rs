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
    assert_eq!(d.io().commands, [cmd::IDENTIFY_DEVICE]);
    // Polling: nIEN was set, so the device never interrupted.
    assert!(!d.io().irq_pending);
}

#[test]
fn writes_read_back_through_48_bit_commands() {
    let mut d = identified(Device::disk(4096));
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
    let mut d = identified(Device::new(Attached::Disk, 1000, false));
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
    let mut d = identified(Device::new(Attached::Disk, 1000, false));
    let mut buf = std::vec![0u8; 256 * SECTOR_SIZE];
    d.read(0, &mut buf).unwrap();
    assert_eq!(d.io().commands.len(), 2);
    let mut d = identified(Device::disk(70000));
    let mut buf = std::vec![0u8; 65537 * SECTOR_SIZE];
    d.read(1, &mut buf).unwrap();
    assert_eq!(&d.io().commands[1..], [cmd::READ_SECTORS_EXT; 2]);
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
    let mut dev = Device::disk(64);
    dev.latency = 5;
    let mut d = Ata::new(dev, IrqWait(0, 0), PRIMARY, Drive::Master);
    d.identify().unwrap();
    let data = pattern(4, 1);
    d.write(8, &data).unwrap();
    let mut back = std::vec![0u8; data.len()];
    d.read(8, &mut back).unwrap();
    assert_eq!(back, data);
    d.flush().unwrap();
    // One interrupt awaited per promise: IDENTIFY's block, 4 written
    // blocks, 4 read blocks, the flush's end.
    assert_eq!(d.wait_mut().1, 1 + 4 + 4 + 1);
    assert_eq!(d.io().control & control::NIEN, 0);
    // Every interrupt was acknowledged by a read of Status.
    assert!(!d.io().irq_pending);
}

#[test]
fn flush_uses_flush_cache_ext_and_the_disk_counts_it() {
    let mut d = identified(Device::disk(64));
    d.flush().unwrap();
    assert_eq!(d.io().flushes, 1);
    assert_eq!(d.io().commands[1], cmd::FLUSH_CACHE_EXT);
    let mut d = identified(Device::new(Attached::Disk, 64, false));
    d.flush().unwrap();
    assert_eq!(d.io().commands[1], cmd::FLUSH_CACHE);
}

#[test]
fn a_disk_without_flush_commands_says_so_before_sending_anything() {
    let mut dev = Device::disk(64);
    dev.flush_bits = false;
    let mut d = identified(dev);
    assert_eq!(d.flush(), Err(Error::FlushUnsupported));
    assert_eq!(d.io().commands, [cmd::IDENTIFY_DEVICE]);
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
    let mut dev = Device::disk(64);
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
}

#[test]
fn a_device_fault_is_reported() {
    let mut d = identified(Device::disk(64));
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
    assert_eq!(d.io().commands, [cmd::IDENTIFY_DEVICE]);
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
    assert_eq!(d.io().error, 1);
    assert_eq!(d.io().control & control::SRST, 0);
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
}
