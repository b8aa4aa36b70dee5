//! `splitvisor run --disk FILE[,ro]`: the user's disk image, checked and
//! locked before anything boots, and how each emulator is told about it.
//!
//! The image becomes the machine's own IDE disk, the primary channel's
//! master (QEMU `-drive ...,if=ide,index=0`; Bochs `ata0-master`), where
//! the unprivileged disk-driver server drives it by ATA PIO (crate `ata`).
//!
//! Before boot, [`Disk::open`] checks that the file exists, is a regular
//! file of a whole number of 512-byte sectors, can be read (and written,
//! unless `,ro`), and that no other process uses it: it takes an advisory
//! `flock` (`LOCK_EX`, or `LOCK_SH` for `,ro`, never waiting) held for the
//! whole run, so two `splitvisor run`s cannot share a writable image, and
//! it looks for the byte-range locks QEMU itself takes (open file
//! description locks on bytes 100-299, QEMU's `raw_apply_lock_bytes`), so
//! an image another QEMU has open is refused in one sentence too rather
//! than by QEMU's own message after the build; so is an image with Bochs's
//! lock file beside it (`FILE.lock`, [`bochs_lock_path`]). `flock` and QEMU's
//! `fcntl` locks are independent on Linux, so our lock never stops our own
//! QEMU (`apps/tests/disk_option.rs` checks that).

use std::ffi::OsString;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Bytes in a sector.
pub const SECTOR_SIZE: u64 = 512;

/// What `--disk FILE[,ro]` asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskSpec {
    /// The image file.
    pub path: PathBuf,
    /// `,ro`: the guest may read, not write.
    pub read_only: bool,
}

impl DiskSpec {
    /// Parses `FILE`, `FILE,ro` or `FILE,rw`: only the last suffix counts,
    /// so a file whose name itself ends in `,ro` is given as `NAME,ro,rw`
    /// (or `NAME,ro,ro`).
    pub fn parse(arg: &str) -> Result<Self, String> {
        let (path, read_only) = if let Some(p) = arg.strip_suffix(",ro") {
            (p, true)
        } else if let Some(p) = arg.strip_suffix(",rw") {
            (p, false)
        } else {
            (arg, false)
        };
        if path.is_empty() {
            return Err(format!(
                "--disk {arg}: give the image file: --disk FILE or --disk FILE,ro"
            ));
        }
        Ok(Self {
            path: PathBuf::from(path),
            read_only,
        })
    }
}

/// Why an image cannot be used; [`fmt::Display`] is the one sentence
/// `splitvisor run` prints.
#[derive(Debug)]
pub enum DiskError {
    /// No such file.
    Missing(PathBuf),
    /// A directory.
    Directory(PathBuf),
    /// Not a regular file (a device, a FIFO, a socket).
    NotRegular(PathBuf),
    /// Opening it failed (permissions), for reading or writing.
    Open {
        /// The file.
        path: PathBuf,
        /// It was opened for writing.
        write: bool,
        /// Why.
        source: io::Error,
    },
    /// Its size is not a whole number of sectors (or is zero).
    Size {
        /// The file.
        path: PathBuf,
        /// Its size in bytes.
        bytes: u64,
    },
    /// Another process holds a conflicting lock.
    Locked {
        /// The file.
        path: PathBuf,
        /// We wanted it read-only (so the other process writes to it).
        read_only: bool,
        /// The lock is QEMU's (a byte-range lock) rather than a `flock`.
        qemu: bool,
    },
    /// Bochs's lock file `FILE.lock` exists: a Bochs has the image open,
    /// or one was killed and left it.
    BochsLock {
        /// The file.
        path: PathBuf,
        /// The lock file.
        lock: PathBuf,
    },
    /// Something else went wrong reading its metadata or locking it.
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
}

impl fmt::Display for DiskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiskError::Missing(p) => write!(f, "the disk image {} does not exist", p.display()),
            DiskError::Directory(p) => write!(
                f,
                "the disk image {} is a directory; give an image file (create one with \
                 `truncate -s 1M disk.img`)",
                p.display()
            ),
            DiskError::NotRegular(p) => write!(
                f,
                "the disk image {} is not a regular file (a device, a FIFO or a socket); give \
                 an image file",
                p.display()
            ),
            DiskError::Open {
                path,
                write: false,
                source,
            } => write!(
                f,
                "the disk image {} cannot be read: {source}",
                path.display()
            ),
            DiskError::Open {
                path,
                write: true,
                source,
            } => write!(
                f,
                "the disk image {} cannot be opened for writing ({source}); give it as \
                 --disk {},ro to attach it read-only",
                path.display(),
                path.display()
            ),
            DiskError::Size { path, bytes: 0 } => write!(
                f,
                "the disk image {} is empty; give it a size, e.g. `truncate -s 1M {}`",
                path.display(),
                path.display()
            ),
            DiskError::Size { path, bytes } => write!(
                f,
                "the disk image {} is {bytes} bytes, not a whole number of 512-byte sectors; \
                 round it up with `truncate -s %512 {}`",
                path.display(),
                path.display()
            ),
            DiskError::Locked {
                path,
                read_only,
                qemu,
            } => {
                let who = if *qemu {
                    "a QEMU process"
                } else {
                    "another process"
                };
                let how = if *read_only { "for writing " } else { "" };
                write!(
                    f,
                    "the disk image {} is locked {how}by {who}; stop it or attach a copy",
                    path.display()
                )
            }
            DiskError::BochsLock { path, lock } => write!(
                f,
                "the disk image {} is locked by Bochs ({} exists); stop that Bochs, or delete \
                 the lock file if no Bochs runs",
                path.display(),
                lock.display()
            ),
            DiskError::Io { path, source } => {
                write!(
                    f,
                    "the disk image {} cannot be used: {source}",
                    path.display()
                )
            }
        }
    }
}

impl std::error::Error for DiskError {}

/// A checked image, locked until dropped.
#[derive(Debug)]
pub struct Disk {
    spec: DiskSpec,
    bytes: u64,
    /// Holds the `flock`.
    _file: File,
}

/// QEMU's lock bytes (`block/file-posix.c`): 100 + permission bit for the
/// permissions a user holds, 200 + bit for those it does not share. QEMU
/// 7.2 with the image read-write holds 100, 101 and 201; with
/// `snapshot=on` 100, 201 and 203 (checked with `F_OFD_GETLK`).
const QEMU_LOCK_FIRST: i64 = 100;
const QEMU_LOCK_LAST: i64 = 299;
/// QEMU's `BLK_PERM_WRITE` is bit 1: a QEMU that writes the image holds a
/// shared lock on byte 101.
const QEMU_WRITER_BYTE: i64 = 101;

/// Whether a process other than us holds a lock on `len` bytes at
/// `start` that conflicts with a write lock (`F_OFD_GETLK`, which sees
/// both OFD and POSIX record locks).
fn byte_range_locked(file: &File, start: i64, len: i64) -> io::Result<bool> {
    // SAFETY: an all-zero flock is a valid value of the plain C struct.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = start;
    fl.l_len = len;
    // SAFETY: the descriptor is open for the call, and `fl` is a live
    // flock that F_OFD_GETLK reads and writes.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

impl Disk {
    /// Checks the image and locks it (see the module documentation), or
    /// says in one sentence what is wrong.
    pub fn open(spec: &DiskSpec) -> Result<Self, DiskError> {
        let path = &spec.path;
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(DiskError::Missing(path.clone()))
            }
            Err(e) => {
                return Err(DiskError::Io {
                    path: path.clone(),
                    source: e,
                })
            }
        };
        let kind = meta.file_type();
        if kind.is_dir() {
            return Err(DiskError::Directory(path.clone()));
        }
        if !kind.is_file() {
            return Err(DiskError::NotRegular(path.clone()));
        }
        // Readable at all first, so that an unreadable image is not
        // reported as unwritable.
        File::open(path).map_err(|e| DiskError::Open {
            path: path.clone(),
            write: false,
            source: e,
        })?;
        let file = OpenOptions::new()
            .read(true)
            .write(!spec.read_only)
            .open(path)
            .map_err(|e| DiskError::Open {
                path: path.clone(),
                write: !spec.read_only,
                source: e,
            })?;
        let bytes = meta.len();
        if bytes == 0 || !bytes.is_multiple_of(SECTOR_SIZE) {
            return Err(DiskError::Size {
                path: path.clone(),
                bytes,
            });
        }
        let op = if spec.read_only {
            libc::LOCK_SH
        } else {
            libc::LOCK_EX
        };
        // SAFETY: the descriptor is open; flock only takes an advisory lock
        // on its open file description.
        if unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(DiskError::Locked {
                    path: path.clone(),
                    read_only: spec.read_only,
                    qemu: false,
                });
            }
            return Err(DiskError::Io {
                path: path.clone(),
                source: e,
            });
        }
        // Bochs marks an image it has open with FILE.lock (and refuses an
        // image that has one: "could not open hard drive image file").
        let lock = bochs_lock_path(path);
        if lock.exists() {
            return Err(DiskError::BochsLock {
                path: path.clone(),
                lock,
            });
        }
        // A QEMU that has the image open holds shared locks among bytes
        // 100-299; one that writes it holds byte 101. Our flock does not see
        // them.
        let (start, len) = if spec.read_only {
            (QEMU_WRITER_BYTE, 1)
        } else {
            (QEMU_LOCK_FIRST, QEMU_LOCK_LAST - QEMU_LOCK_FIRST + 1)
        };
        match byte_range_locked(&file, start, len) {
            Ok(true) => {
                return Err(DiskError::Locked {
                    path: path.clone(),
                    read_only: spec.read_only,
                    qemu: true,
                })
            }
            Ok(false) => {}
            // A file system without OFD locks: QEMU will say it itself.
            Err(_) => {}
        }
        Ok(Self {
            spec: spec.clone(),
            bytes,
            _file: file,
        })
    }

    /// What was asked for.
    pub fn spec(&self) -> &DiskSpec {
        &self.spec
    }

    /// The image's size in sectors.
    pub fn sectors(&self) -> u64 {
        self.bytes / SECTOR_SIZE
    }

    /// QEMU's arguments: the image as the primary IDE channel's master,
    /// raw, read-only with `,ro`.
    pub fn qemu_args(&self) -> Vec<OsString> {
        qemu_drive_args(&self.spec)
    }
}

/// The disk-driver server's rights: the primary IDE channel's ports
/// (0x1f0-0x1f7 and 0x3f6), its IRQ line 14, guest RAM read-write (it
/// moves sectors straight into and out of guest buffers) and the console
/// (its start line).
pub fn disk_driver_rights() -> ipc_proto::manifest::Rights {
    ipc_proto::manifest::Rights {
        ports: images::rights::ports(&[(0x1f0, 0x1f7), (0x3f6, 0x3f6)]),
        irqs: 1 << 14,
        guest_ram: ipc_proto::manifest::GuestRam::ReadWrite,
        console: true,
        ..ipc_proto::manifest::Rights::default()
    }
}

/// The environment variable that turns on the disk-driver's self-test.
pub const SELF_TEST_ENV: &str = "SPLITVISOR_DISK_SELF_TEST";

/// Builds the disk-driver server (crate `disk-driver`) for the bare
/// target and returns it as a device server for the image, told with its
/// configuration byte (`disk_driver::CONFIG_MAGIC`) whether the disk is
/// read-only: `disk-driver`, or `disk-driver-ro` (a patched copy beside
/// it).
///
/// With `SPLITVISOR_DISK_SELF_TEST=1` in the environment (the end-to-end
/// tests), the server also runs its self-test at start, which **writes the
/// image's last sector** (`disk_driver::self_test`): `disk-driver-t`,
/// `disk-driver-ro-t` (task names have at most 16 bytes).
pub fn disk_driver_server(read_only: bool) -> Result<images::DeviceServer, String> {
    let [elf] = images::build_for_target(&["disk-driver"], ["disk-driver"])
        .map_err(|e| format!("building the disk-driver server failed: {e}"))?;
    let self_test = std::env::var_os(SELF_TEST_ENV).is_some_and(|v| v == "1");
    let mut config = 0;
    let mut name = String::from("disk-driver");
    if read_only {
        config |= disk_driver::CONFIG_READ_ONLY;
        name.push_str("-ro");
    }
    if self_test {
        config |= disk_driver::CONFIG_SELF_TEST;
        name.push_str("-t");
    }
    let elf = if config == 0 {
        elf
    } else {
        patch_config(&elf, &disk_driver::CONFIG_MAGIC, config, &name)?
    };
    Ok(images::DeviceServer {
        name,
        elf,
        rights: disk_driver_rights(),
    })
}

/// A copy of the server `elf` named `name-cCONFIG` beside it, with the byte after
/// its configuration block's `magic` set to `config`.
pub(crate) fn patch_config(
    elf: &Path,
    magic: &[u8],
    config: u8,
    name: &str,
) -> Result<PathBuf, String> {
    patch_config_bytes(elf, magic, &[config], name)
}

/// As [`patch_config`], with the bytes after `magic` set to `config`
/// (named `name-cA-B-...` after them).
pub(crate) fn patch_config_bytes(
    elf: &Path,
    magic: &[u8],
    config: &[u8],
    name: &str,
) -> Result<PathBuf, String> {
    let mut bytes =
        std::fs::read(elf).map_err(|e| format!("cannot read {}: {e}", elf.display()))?;
    let at = bytes
        .windows(magic.len())
        .position(|w| w == magic)
        .ok_or_else(|| format!("the server {} has no configuration block", elf.display()))?;
    let block = bytes
        .get_mut(at + magic.len()..at + magic.len() + config.len())
        .ok_or_else(|| {
            format!(
                "the server {} has a short configuration block",
                elf.display()
            )
        })?;
    block.copy_from_slice(config);
    let config: Vec<String> = config.iter().map(u8::to_string).collect();
    let config = config.join("-");
    // Written aside and renamed: runs in parallel (the tests) read a
    // whole file, never one being written. One file per configuration:
    // parallel runs whose channels are numbered differently must not
    // take each other's.
    let patched = elf.with_file_name(format!("{name}-c{config}"));
    let aside = elf.with_file_name(format!("{name}.{}.tmp", std::process::id()));
    std::fs::write(&aside, bytes)
        .and_then(|()| std::fs::rename(&aside, &patched))
        .map_err(|e| format!("cannot write {}: {e}", patched.display()))?;
    Ok(patched)
}

/// The virtio-blk server's rights: guest RAM read-write (the virtqueues
/// are there; the data it never touches) and the console (its start
/// line). Its two channels come from the image's channel list; no ports,
/// no IRQs.
pub fn virtio_blk_rights() -> ipc_proto::manifest::Rights {
    ipc_proto::manifest::Rights {
        guest_ram: ipc_proto::manifest::GuestRam::ReadWrite,
        console: true,
        ..ipc_proto::manifest::Rights::default()
    }
}

/// The virtio-blk server's task name.
pub const VIRTIO_BLK: &str = "virtio-blk";

/// Builds the virtio-blk device server (crate `virtio-blk`) for the bare
/// target, told the number of its channel to the disk-driver.
pub fn virtio_blk_server(disk_channel: u8) -> Result<images::DeviceServer, String> {
    let [elf] = images::build_for_target(&["virtio-blk"], ["virtio-blk"])
        .map_err(|e| format!("building the virtio-blk server failed: {e}"))?;
    let config = disk_channel
        .checked_add(1)
        .ok_or("the disk channel's number is too large")?;
    let elf = patch_config(
        &elf,
        &virtio_blk::CONFIG_MAGIC,
        config,
        "virtio-blk-patched",
    )?;
    Ok(images::DeviceServer {
        name: VIRTIO_BLK.into(),
        elf,
        rights: virtio_blk_rights(),
    })
}

/// What `--disk` adds to `system`: the disk-driver (read-only with
/// `read_only`) and, on the PC board, the virtio-blk server the guest sees
/// the disk through (the next free PCI slot: 00:03.0, or 00:04.0 after a
/// virtio console), the vmm-server's channel to it and its channel to the
/// disk-driver. The ISA board has no PCI bus: the disk-driver alone, which
/// the guest does not see.
pub fn add_disk_servers(system: &mut images::SystemSpec, read_only: bool) -> Result<(), String> {
    let driver = disk_driver_server(read_only)?;
    let driver_name = driver.name.clone();
    system.device_servers.push(driver);
    if system.board != ipc_proto::manifest::Board::Pc {
        return Ok(());
    }
    system.pci_functions.push(VIRTIO_BLK.into());
    system
        .device_channels
        .push(("vmm-server".into(), VIRTIO_BLK.into()));
    system
        .device_channels
        .push((VIRTIO_BLK.into(), driver_name.clone()));
    let disk_channel = system
        .channel_number(VIRTIO_BLK, &driver_name)
        .ok_or("the disk channel has no number")?;
    system.device_servers.push(virtio_blk_server(disk_channel)?);
    Ok(())
}

/// Bochs's lock file for a disk image: `FILE.lock`, which Bochs 2.7
/// creates beside an image it opens and removes when it exits cleanly (a
/// Bochs killed at a timeout leaves it, and every later Bochs refuses the
/// image).
pub fn bochs_lock_path(path: &std::path::Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

/// `-drive file=FILE,format=raw,if=ide,index=0,media=disk`, with the
/// commas of FILE doubled as QEMU's option syntax wants; for a read-only
/// image `snapshot=on`: QEMU 7.2's IDE disk (`ide-hd`) refuses a read-only
/// block node (`readonly=on` ends QEMU with "Block node is read-only"), so
/// QEMU opens the image read-only and keeps the machine's writes in a
/// temporary overlay it drops at exit.
pub fn qemu_drive_args(spec: &DiskSpec) -> Vec<OsString> {
    let mut drive = OsString::from("file=");
    drive.push(spec.path.to_string_lossy().replace(',', ",,"));
    drive.push(",format=raw,if=ide,index=0,media=disk");
    if spec.read_only {
        drive.push(",snapshot=on");
    }
    vec!["-drive".into(), drive]
}

/// A geometry Bochs accepts for `sectors`: Bochs 2.7 wants a flat image
/// of exactly cylinders x heads x spt x 512 bytes (its sample bochsrc),
/// heads 1-16, spt 1-63, cylinders 1-65535. The most heads and sectors per
/// track first, as bximage makes them.
pub fn bochs_geometry(sectors: u64) -> Option<(u64, u64, u64)> {
    (1..=63u64).rev().find_map(|spt| {
        (1..=16u64).rev().find_map(|heads| {
            let per_cylinder = spt * heads;
            (sectors.is_multiple_of(per_cylinder)
                && (1..=65535).contains(&(sectors / per_cylinder)))
            .then_some((sectors / per_cylinder, heads, spt))
        })
    })
}

/// Bochs's lines for the image as `ata0-master` (after Bochs 2.7's sample
/// bochsrc): `mode=flat` with the geometry of [`bochs_geometry`], or for a
/// read-only image `mode=volatile` (Bochs opens the image read-only and
/// keeps the guest's writes in `journal`, dropped at exit). `path` and
/// `journal` are as Bochs's parser takes them.
pub fn bochs_ata0_master(
    path: &str,
    sectors: u64,
    read_only: bool,
    journal: &str,
) -> Result<String, String> {
    let Some((c, h, s)) = bochs_geometry(sectors) else {
        return Err(format!(
            "Bochs cannot attach the disk image {path}: its {sectors} sectors are no \
             cylinders x heads (1-16) x sectors per track (1-63) with at most 65535 cylinders; \
             pad it to a multiple of 1008 sectors (504 KiB)"
        ));
    };
    let mode = if read_only {
        format!("mode=volatile, journal={journal}")
    } else {
        "mode=flat".to_string()
    };
    Ok(format!(
        "ata0-master: type=disk, path={path}, {mode}, cylinders={c}, heads={h}, spt={s}\n"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn the_virtio_blk_server_gets_ram_console_and_its_two_channels_only() {
        let r = virtio_blk_rights();
        assert!(!r.vcpu && !r.install && r.ports.is_empty() && r.irqs == 0);
        let mut spec = images::SystemSpec::new("hello");
        for (name, rights) in [
            ("disk-driver", disk_driver_rights()),
            (VIRTIO_BLK, virtio_blk_rights()),
        ] {
            spec.device_servers.push(images::DeviceServer {
                name: name.into(),
                elf: "unused".into(),
                rights,
            });
        }
        spec.device_channels = vec![
            ("vmm-server".into(), VIRTIO_BLK.into()),
            (VIRTIO_BLK.into(), "disk-driver".into()),
        ];
        let table = images::rights_table(&spec);
        let line = table
            .lines()
            .find(|l| l.contains(VIRTIO_BLK) && !l.starts_with("channel"))
            .expect("a line for the server");
        assert!(line.contains(" rw ") && line.contains("yes"), "{line}");
        assert!(table.contains("vmm-server calls virtio-blk"), "{table}");
        assert!(table.contains("virtio-blk calls disk-driver"), "{table}");
        assert_eq!(spec.channel_number(VIRTIO_BLK, "disk-driver"), Some(1));
    }

    #[test]
    fn specs_parse() {
        assert_eq!(
            DiskSpec::parse("d.img").unwrap(),
            DiskSpec {
                path: "d.img".into(),
                read_only: false
            }
        );
        assert!(DiskSpec::parse("d.img,ro").unwrap().read_only);
        assert!(!DiskSpec::parse("d.img,rw").unwrap().read_only);
        assert_eq!(
            DiskSpec::parse("a,b.img,ro").unwrap().path,
            Path::new("a,b.img")
        );
        assert!(DiskSpec::parse(",ro").is_err());
        assert!(DiskSpec::parse("").is_err());
    }

    #[test]
    fn bochs_gets_an_exact_geometry() {
        assert_eq!(bochs_geometry(2048), Some((4, 16, 32)));
        assert_eq!(bochs_geometry(16 * 63 * 100), Some((100, 16, 63)));
        assert_eq!(bochs_geometry(1), Some((1, 1, 1)));
        // A prime above 65535 has no geometry.
        assert_eq!(bochs_geometry(65537), None);
        let line = bochs_ata0_master("/d/x.img", 2048, false, "/r/j").unwrap();
        assert_eq!(
            line,
            "ata0-master: type=disk, path=/d/x.img, mode=flat, cylinders=4, heads=16, spt=32\n"
        );
        let ro = bochs_ata0_master("/d/x.img", 2048, true, "/r/j").unwrap();
        assert!(ro.contains("mode=volatile, journal=/r/j,"), "{ro}");
        let e = bochs_ata0_master("/d/x.img", 65537, false, "/r/j").unwrap_err();
        assert!(e.contains("multiple of 1008 sectors"), "{e}");
    }

    #[test]
    fn qemu_gets_the_primary_master_and_doubled_commas() {
        let args = |p: &str| {
            qemu_drive_args(&DiskSpec::parse(p).unwrap())
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(
            args("/d/x.img"),
            "-drive file=/d/x.img,format=raw,if=ide,index=0,media=disk"
        );
        assert_eq!(
            args("/d/a,b.img,ro"),
            "-drive file=/d/a,,b.img,format=raw,if=ide,index=0,media=disk,snapshot=on"
        );
    }
}
