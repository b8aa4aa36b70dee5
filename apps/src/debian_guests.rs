//! Two of Debian's non-Linux kernels that QEMU's `-kernel` boots, fetched
//! like the Linux ones ([`crate::linux`]) with `apt-get download` into
//! `<root>/.cache/debian-guests/` (git-ignored; reused once there):
//!
//! - **GNU Mach** (`gnumach-image-1.8-486:i386`, `boot/gnumach-1.8-486.gz`,
//!   unpacked with `gzip -dc`): a multiboot ELF32 kernel linked at virtual
//!   0xc1000000 and loaded at physical 0x1000000, its entry point given
//!   virtually. Without a bootstrap module it ends in [`GNUMACH_MARKER`].
//!   Its i386 architecture needs `dpkg --add-architecture i386`, which
//!   `scripts/install-deps` does.
//! - **memtest86+** (`memtest86+`, amd64, `boot/memtest86+x64.bin`): a
//!   bzImage whose `syssize` rounds up past the file's end; with
//!   [`MEMTEST_CMDLINE`] it draws its screen on COM1 as well.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::linux::{fetch_deb, unpack};

/// The line GNU Mach prints when no bootstrap module (the Hurd's servers)
/// was loaded with it: its end under QEMU's `-kernel` without modules.
pub const GNUMACH_MARKER: &str =
    "panic ../kern/bootstrap.c:181: bootstrap_create: No bootstrap code loaded with the kernel!";

/// GNU Mach's command line: its console on COM1 (`console=com0`).
pub const GNUMACH_CMDLINE: &str = "console=com0";

/// memtest86+'s command line: its screen on COM1 at 115200 baud.
pub const MEMTEST_CMDLINE: &str = "console=ttyS0,115200";

/// `<root>/.cache/debian-guests`.
pub fn cache_dir() -> PathBuf {
    images::workspace_root()
        .join(".cache")
        .join("debian-guests")
}

fn fetch_and_unpack(package: &str, arch: &str) -> Result<PathBuf, String> {
    let dir = cache_dir();
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let deb = fetch_deb(&dir, package, arch)?;
    let stem = deb
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let into = dir.join(stem);
    unpack(&deb, &into)?;
    Ok(into)
}

/// GNU Mach's kernel (uncompressed), downloading and unpacking it if needed.
pub fn prepare_gnumach() -> Result<PathBuf, String> {
    let root = fetch_and_unpack("gnumach-image-1.8-486", "i386")?;
    let gz = root.join("boot").join("gnumach-1.8-486.gz");
    let kernel = root.join("boot").join("gnumach-1.8-486");
    if !kernel.is_file() {
        let bytes = gunzip(&gz)?;
        images::write_atomic(&kernel, &bytes).map_err(|e| e.to_string())?;
    }
    Ok(kernel)
}

fn gunzip(gz: &Path) -> Result<Vec<u8>, String> {
    let out = Command::new("gzip")
        .arg("-dc")
        .arg(gz)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("could not run gzip: {e} (is it installed?)"))?;
    if !out.status.success() {
        return Err(format!("gzip -dc {} failed ({})", gz.display(), out.status));
    }
    Ok(out.stdout)
}

/// memtest86+'s 64-bit bzImage, downloading and unpacking it if needed.
pub fn prepare_memtest() -> Result<PathBuf, String> {
    let root = fetch_and_unpack("memtest86+", "amd64")?;
    let kernel = root.join("boot").join("memtest86+x64.bin");
    if !kernel.is_file() {
        return Err(format!(
            "the memtest86+ package has no {}",
            kernel.display()
        ));
    }
    Ok(kernel)
}
