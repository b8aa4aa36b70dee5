//! What the disk tests share: a scratch folder, e2fsprogs on the host
//! (`debugfs`, `e2fsck`) to look into an image file, digests of files,
//! and the disk check's lines in a guest's console.

use std::path::{Path, PathBuf};
use std::process::Command;

use splitvisor::linux::{DISK_CONTENT_BEGIN, DISK_CONTENT_END};

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

    /// `name` in the folder.
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
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
