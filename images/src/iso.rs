//! A bootable GRUB ISO of a system image: the CD or USB-stick image a user
//! writes for real hardware, and what Bochs boots (it has no `-kernel`).
//!
//! GRUB's `multiboot` command loads the image (a multiboot v1 kernel with
//! the a.out kludge) and passes the stub its command line, where `arch=svm`
//! or `arch=vmx` forces a virtualization extension. GRUB's menu and
//! messages go to the first serial port, which is also the stub's console.
//!
//! ```no_run
//! let image = images::build_system("hello", true)?;
//! let iso = image.with_extension("iso");
//! images::iso::build_iso(&image, &iso, "arch=vmx")?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The Debian packages that `build_iso` needs.
pub const ISO_PACKAGES: [&str; 3] = ["grub-pc-bin", "xorriso", "mtools"];

/// Where grub-pc-bin puts GRUB's BIOS modules; grub-mkrescue needs them for
/// an ISO that boots from a BIOS (Bochs, QEMU without UEFI, most PCs).
const GRUB_BIOS_MODULES: &str = "/usr/lib/grub/i386-pc";

/// The image's path inside the ISO.
pub const IMAGE_PATH_IN_ISO: &str = "/boot/splitvisor.img";

/// Why an ISO could not be made.
#[derive(Debug)]
pub enum IsoError {
    /// grub-mkrescue, GRUB's BIOS modules or xorriso are missing.
    ToolsMissing(Vec<&'static str>),
    /// The stub's command line has characters GRUB's configuration would
    /// take for syntax.
    BadCmdline(String),
    /// grub-mkrescue failed.
    Failed(String),
    /// A file could not be read or written.
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: io::Error,
    },
}

impl fmt::Display for IsoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ToolsMissing(what) => write!(
                f,
                "{} not found: install the Debian packages grub-pc-bin, xorriso and mtools \
                 (apt-get install grub-pc-bin xorriso mtools)",
                what.join(", ")
            ),
            Self::BadCmdline(c) => write!(
                f,
                "the stub's command line {c:?} may hold only letters, digits, spaces and =,._/:+-"
            ),
            Self::Failed(detail) => write!(f, "grub-mkrescue failed: {detail}"),
            Self::Io { path, source } => write!(f, "{}: {source}", path.display()),
        }
    }
}

impl std::error::Error for IsoError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> IsoError + '_ {
    move |source| IsoError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What of the ISO tooling is missing here (empty when nothing is).
pub fn missing_tools() -> Vec<&'static str> {
    let mut missing = Vec::new();
    if !on_path("grub-mkrescue") {
        missing.push("grub-mkrescue");
    }
    if !Path::new(GRUB_BIOS_MODULES).join("multiboot.mod").is_file() {
        missing.push("GRUB's BIOS modules (grub-pc-bin)");
    }
    if !on_path("xorriso") {
        missing.push("xorriso");
    }
    missing
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// GRUB's configuration: serial console, no menu delay, the image loaded
/// with `multiboot` and the stub's command line after it.
pub fn grub_cfg(stub_cmdline: &str) -> Result<String, IsoError> {
    let ok = stub_cmdline
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || " =,._/:+-".contains(c));
    if !ok {
        return Err(IsoError::BadCmdline(stub_cmdline.to_string()));
    }
    let args = if stub_cmdline.trim().is_empty() {
        String::new()
    } else {
        format!(" {}", stub_cmdline.trim())
    };
    Ok(format!(
        "# Made by splitvisor's image builder.\n\
         serial --unit=0 --speed=115200\n\
         terminal_input serial console\n\
         terminal_output serial console\n\
         set timeout=0\n\
         set default=0\n\
         menuentry \"splitvisor\" {{\n\
         \x20   multiboot {IMAGE_PATH_IN_ISO}{args}\n\
         \x20   boot\n\
         }}\n"
    ))
}

/// Wraps the system image at `image` into a BIOS-bootable GRUB ISO at
/// `iso` whose `multiboot` line passes `stub_cmdline` (for example
/// `arch=vmx`, or nothing). The ISO is written through a temporary name.
pub fn build_iso(image: &Path, iso: &Path, stub_cmdline: &str) -> Result<(), IsoError> {
    let missing = missing_tools();
    if !missing.is_empty() {
        return Err(IsoError::ToolsMissing(missing));
    }
    let cfg = grub_cfg(stub_cmdline)?;
    let staging = crate::temp_path(&iso.with_extension("d"));
    let result = (|| {
        let grub_dir = staging.join("boot").join("grub");
        std::fs::create_dir_all(&grub_dir).map_err(io_error(&grub_dir))?;
        let cfg_path = grub_dir.join("grub.cfg");
        std::fs::write(&cfg_path, cfg).map_err(io_error(&cfg_path))?;
        let img = staging.join(IMAGE_PATH_IN_ISO.trim_start_matches('/'));
        std::fs::copy(image, &img).map_err(io_error(image))?;
        let tmp_iso = crate::temp_path(iso);
        let out = Command::new("grub-mkrescue")
            .args(["--fonts=", "--locales=", "--themes=", "-o"])
            .arg(&tmp_iso)
            .arg(&staging)
            .stdin(Stdio::null())
            .output()
            .map_err(io_error(Path::new("grub-mkrescue")))?;
        if !out.status.success() {
            let _ = std::fs::remove_file(&tmp_iso);
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(IsoError::Failed(format!(
                "{} ({})",
                tail.join(" / "),
                out.status
            )));
        }
        std::fs::rename(&tmp_iso, iso).map_err(io_error(iso))
    })();
    let _ = std::fs::remove_dir_all(&staging);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grub_cfg_loads_the_image_with_the_stub_command_line() {
        let cfg = grub_cfg("arch=vmx").unwrap();
        assert!(cfg.contains("\n    multiboot /boot/splitvisor.img arch=vmx\n    boot\n"));
        assert!(cfg.contains("set timeout=0\n"));
        assert!(cfg.contains("serial --unit=0 --speed=115200\n"));
        assert!(cfg.contains("terminal_output serial"));
        let cfg = grub_cfg("").unwrap();
        assert!(cfg.contains("\n    multiboot /boot/splitvisor.img\n"));
    }

    #[test]
    fn grub_syntax_in_the_command_line_is_refused() {
        for bad in ["arch=vmx; reboot", "a\nb", "$x", "\"q\"", "{", "a\\b"] {
            assert!(
                matches!(grub_cfg(bad), Err(IsoError::BadCmdline(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn missing_tools_are_named_with_their_packages() {
        let e = IsoError::ToolsMissing(vec!["xorriso"]);
        assert_eq!(
            e.to_string(),
            "xorriso not found: install the Debian packages grub-pc-bin, xorriso and mtools \
             (apt-get install grub-pc-bin xorriso mtools)"
        );
    }

    /// Makes a real ISO from a stand-in image with the installed GRUB, and
    /// finds the configuration and the image in it.
    #[test]
    fn an_iso_is_made_with_grub_mkrescue() {
        let dir = crate::image_dir().join("test-iso");
        std::fs::create_dir_all(&dir).unwrap();
        let image = dir.join(format!("stand-in-{}.img", std::process::id()));
        std::fs::write(&image, b"splitvisor stand-in image").unwrap();
        let iso = image.with_extension("iso");
        if let Err(e) = build_iso(&image, &iso, "arch=svm") {
            panic!("{e}");
        }
        let bytes = std::fs::read(&iso).unwrap();
        // An El Torito boot record and the files, uncompressed in the ISO 9660 tree.
        assert!(bytes.windows(11).any(|w| w == b"EL TORITO S"));
        assert!(bytes
            .windows(38)
            .any(|w| w == b"multiboot /boot/splitvisor.img arch=sv"));
        assert!(bytes.windows(25).any(|w| w == b"splitvisor stand-in image"));
        std::fs::remove_file(&iso).unwrap();
        std::fs::remove_file(&image).unwrap();
    }
}
