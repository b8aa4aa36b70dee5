//! What the disk tests share: a scratch folder, e2fsprogs on the host
//! (`debugfs`, `e2fsck`) to look into an image file, digests of files,
//! the disk check's lines in a guest's console, and the disk-driver with
//! its test client in QEMU.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ipc_proto::manifest::{GuestRam, Rights};
use splitvisor::disk::{disk_driver_server, Disk, DiskSpec};
use splitvisor::linux::{DISK_CONTENT_BEGIN, DISK_CONTENT_END};
use splitvisor::linux_virtio::make_ext4_image_holding;
use splitvisor::run::{qemu_args, run_emulator, Capture, RunReport, DEFAULT_EMULATOR};

/// A scratch folder, `splitvisor-e2e-TAG-PID` in the temporary folder,
/// removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("splitvisor-e2e-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A scratch folder holding the image file `disk.img`: `content`, then
/// zeros (a hole) up to `len` bytes; the folder and the image's path.
pub fn scratch_image(tag: &str, content: &[u8], len: u64) -> (Scratch, String) {
    let dir = Scratch::new(tag);
    let img = dir.join("disk.img");
    std::fs::write(&img, content).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    f.set_len(len.max(content.len() as u64)).unwrap();
    (dir, img.to_string_lossy().into_owned())
}

/// A 64 MiB ext4 image `disk.img` in `dir` made on the host (`mkfs.ext4
/// -d`) holding the files the disk check reads:
/// `splitvisor-disk-check.txt` (`text` and a newline) and
/// `splitvisor-disk-check.bin` (`bytes`); the image and the MD5 of `bytes`.
pub fn image_with_check_files(dir: &Scratch, text: &str, bytes: &[u8]) -> (PathBuf, String) {
    let files = dir.join("files");
    std::fs::create_dir(&files).unwrap();
    std::fs::write(files.join("splitvisor-disk-check.txt"), format!("{text}\n")).unwrap();
    let bin = files.join("splitvisor-disk-check.bin");
    std::fs::write(&bin, bytes).unwrap();
    let img = dir.join("disk.img");
    make_ext4_image_holding(&img, 64, &files).unwrap_or_else(|e| panic!("{e}"));
    (img, md5(&bin))
}

/// An e2fsprogs tool (in /sbin, often not on a user's PATH).
pub fn sbin(tool: &str) -> PathBuf {
    ["/sbin", "/usr/sbin"]
        .iter()
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(tool))
}

/// `debugfs -R REQUEST img` (read-only), its standard output.
fn debugfs(img: &Path, request: &str) -> String {
    let out = Command::new(sbin("debugfs"))
        .arg("-R")
        .arg(request)
        .arg(img)
        .output()
        .expect("debugfs runs (e2fsprogs)");
    assert!(out.status.success(), "debugfs -R '{request}': {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `debugfs -R 'cat /NAME' img`: the text file as the image holds it.
pub fn cat_in_image(img: &Path, name: &str) -> String {
    debugfs(img, &format!("cat /{name}"))
}

/// `debugfs -R 'dump /NAME OUT' img`, then OUT's bytes.
pub fn file_in_image(img: &Path, name: &str, out: &Path) -> Vec<u8> {
    debugfs(img, &format!("dump /{name} {}", out.display()));
    std::fs::read(out).unwrap_or_else(|e| panic!("{name} not dumped: {e}"))
}

/// `e2fsck -fn img` finds the file system clean.
pub fn assert_fsck_clean(img: &Path) {
    let fsck = Command::new(sbin("e2fsck"))
        .arg("-fn")
        .arg(img)
        .output()
        .expect("e2fsck runs (e2fsprogs)");
    assert!(
        fsck.status.success(),
        "e2fsck -fn found problems ({}):\n{}{}",
        fsck.status,
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
}

/// The hex digest `tool` (`md5sum`, `sha256sum`) prints for `path`.
fn digest(tool: &str, path: &Path) -> String {
    let out = Command::new(tool).arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

pub fn md5(path: &Path) -> String {
    digest("md5sum", path)
}

pub fn sha256(path: &Path) -> String {
    digest("sha256sum", path)
}

/// The value after `prefix` on the first line starting with it.
pub fn after<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .map(str::trim)
}

/// The lines `/init` printed between `DISK_CONTENT_BEGIN` and
/// `DISK_CONTENT_END`: the text file it read from the disk.
pub fn disk_content(console: &str) -> Vec<&str> {
    console
        .lines()
        .skip_while(|l| *l != DISK_CONTENT_BEGIN)
        .skip(1)
        .take_while(|l| *l != DISK_CONTENT_END)
        .collect()
}

/// The disk-driver beside its test client (`disk-driver/src/bin/disk-client.rs`,
/// never in a normal image; channel 0 is the client's, no uart-server) and
/// the `hello` guest, on a 1 MiB image of zeros.
pub struct DiskClient {
    /// The image file, `disk.img` in the scratch folder.
    pub img: PathBuf,
    /// The image, opened and locked as `--disk` does.
    pub disk: Disk,
    /// The system: a test changes its `mmu` or `inject`.
    pub system: images::SystemSpec,
    /// The disk-driver's task name.
    pub driver: String,
}

impl DiskClient {
    pub fn new(dir: &Scratch) -> Self {
        let img = dir.join("disk.img");
        std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
        let disk = Disk::open(&DiskSpec::parse(&img.to_string_lossy()).unwrap()).unwrap();
        let server = disk_driver_server(false).expect("the disk-driver builds");
        let driver = server.name.clone();
        let [client] = images::build_for_target(&["disk-driver"], ["disk-client"])
            .expect("the disk client builds");
        let system = images::SystemSpec {
            device_servers: vec![
                server,
                images::DeviceServer {
                    name: "disk-client".into(),
                    elf: client,
                    rights: Rights {
                        guest_ram: GuestRam::ReadWrite,
                        console: true,
                        ..Rights::default()
                    },
                },
            ],
            device_channels: vec![("disk-client".into(), driver.clone())],
            ..images::SystemSpec::new("hello")
        };
        Self {
            img,
            disk,
            system,
            driver,
        }
    }

    /// Boots the system in QEMU on `cpu` with the image as its IDE disk
    /// for `timeout` at most: the console and QEMU's report.
    pub fn run(&self, cpu: &str, timeout: Duration) -> (String, RunReport) {
        let opts = splitvisor::e2e::options(self.system.clone(), cpu);
        let image = images::build_system_spec(&opts.system).expect("the image builds");
        let mut args = qemu_args(&opts, &image);
        args.extend(self.disk.qemu_args());
        let console = Capture::default();
        let report = run_emulator(DEFAULT_EMULATOR, &args, timeout, Box::new(console.clone()))
            .expect("QEMU starts (scripts/install-deps installs it)");
        let text = String::from_utf8_lossy(&console.0.lock().unwrap()).into_owned();
        (text, report)
    }
}
