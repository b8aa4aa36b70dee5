//! The built-in test guests: `images/guests/<name>.S`, assembled with gcc
//! and linked with `images/guests/guest.ld` into flat 32-bit code at
//! guest-physical [`GUEST_LOAD_GPA`].

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::elf::ElfImage;
use crate::{write_atomic, BuildError};

/// The guests this crate can build, by name.
pub const GUESTS: &[&str] = &[
    "hello",
    "status42",
    "triple-fault",
    "realmode",
    "pmode",
    "paging32",
    "pae",
    "longmode",
    "timer",
    "multiboot",
    "mmio",
    "uartin",
    "portstorm",
    "cr3switch32",
    "cr3switchpae",
    "cr3switch64",
    "cr3bench64",
    "badpt64",
    "badptpae",
    "badpt32",
    "badcr3",
    "tssescape",
    "efersvme",
    "qemupc",
    "clihlt",
    "apic",
    "ioapic",
    "acpi",
    "fwcfg",
    "pcstorm",
    "exitbench",
    "insbpte",
    "hostile-driver",
    "blkpte",
];

/// Where the test guests are loaded and linked.
pub const GUEST_LOAD_GPA: u64 = 0x10_0000;

/// Guest RAM given to the test guests, in MiB.
pub const GUEST_RAM_MIB: u32 = 16;

/// A built guest: flat bytes for guest-physical `load_gpa` onwards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestImage {
    /// The flat image (.bss included, zero-filled).
    pub flat: Vec<u8>,
    /// Guest-physical address of `flat[0]`.
    pub load_gpa: u64,
    /// `_start`.
    pub entry: u64,
    /// The linked ELF, kept for disassembly.
    pub elf_path: PathBuf,
}

/// Checks that `name` is a built-in guest.
pub fn check_guest_name(name: &str) -> Result<(), BuildError> {
    if GUESTS.contains(&name) {
        Ok(())
    } else {
        Err(BuildError::UnknownGuest(name.to_string()))
    }
}

/// Assembles and links guest `name`; outputs go to `out_dir`
/// (`<name>.elf`, `<name>.bin`), each written atomically.
pub fn build_guest(root: &Path, name: &str, out_dir: &Path) -> Result<GuestImage, BuildError> {
    check_guest_name(name)?;
    let src_dir = root.join("images").join("guests");
    let source = src_dir.join(format!("{name}.S"));
    std::fs::create_dir_all(out_dir).map_err(|e| BuildError::io(out_dir, e))?;

    let object = crate::temp_path(&out_dir.join(format!("{name}.o")));
    let linked = crate::temp_path(&out_dir.join(format!("{name}.elf")));
    let result = (|| {
        run_tool(
            Command::new("gcc")
                .args(["-c", "-m32", "-Wa,--fatal-warnings", "-I"])
                .arg(&src_dir)
                .arg("-o")
                .arg(&object)
                .arg(&source),
            "gcc",
        )?;
        // A guest with a linker script of its own (`<name>.ld`) is linked
        // with it; the others with `guest.ld` at 1 MiB.
        let own_script = src_dir.join(format!("{name}.ld"));
        let script = if own_script.is_file() {
            own_script
        } else {
            src_dir.join("guest.ld")
        };
        run_tool(
            Command::new("ld")
                .args(["-m", "elf_i386", "-T"])
                .arg(script)
                .arg("-o")
                .arg(&linked)
                .arg(&object),
            "ld",
        )?;
        let elf_bytes = std::fs::read(&linked).map_err(|e| BuildError::io(&linked, e))?;
        let load_gpa = ElfImage::parse(&elf_bytes)
            .ok()
            .and_then(|e| {
                e.segments
                    .iter()
                    .filter(|s| s.memsz > 0)
                    .map(|s| s.paddr)
                    .min()
            })
            .unwrap_or(GUEST_LOAD_GPA);
        let (flat, entry) = flatten_guest(&elf_bytes, load_gpa)
            .map_err(|reason| BuildError::BadGuest(name.to_string(), reason))?;
        let elf_path = out_dir.join(format!("{name}.elf"));
        std::fs::rename(&linked, &elf_path).map_err(|e| BuildError::io(&elf_path, e))?;
        write_atomic(&out_dir.join(format!("{name}.bin")), &flat)?;
        Ok(GuestImage {
            flat,
            load_gpa,
            entry,
            elf_path,
        })
    })();
    let _ = std::fs::remove_file(&object);
    let _ = std::fs::remove_file(&linked);
    result
}

/// Runs an external tool; a missing tool or a failure becomes an error that
/// carries the tool's own messages.
fn run_tool(cmd: &mut Command, tool: &'static str) -> Result<(), BuildError> {
    let output = cmd.output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            BuildError::ToolMissing(tool)
        } else {
            BuildError::ToolFailed {
                tool,
                detail: e.to_string(),
            }
        }
    })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(BuildError::ToolFailed {
            tool,
            detail: format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim_end()
            ),
        })
    }
}

/// The flat bytes of a linked guest from `load_gpa` to the end of its last
/// segment, and its entry point.
pub fn flatten_guest(elf: &[u8], load_gpa: u64) -> Result<(Vec<u8>, u64), String> {
    let elf = ElfImage::parse(elf).map_err(|e| e.0)?;
    let mut end = load_gpa;
    for seg in &elf.segments {
        if seg.memsz == 0 {
            continue;
        }
        if seg.paddr < load_gpa || seg.bytes.len() as u64 > seg.memsz {
            return Err(format!(
                "segment at {:#x} lies below the load address {load_gpa:#x} or is corrupt",
                seg.paddr
            ));
        }
        end = end.max(seg.paddr + seg.memsz);
    }
    if end - load_gpa > 64 << 20 {
        return Err(format!(
            "{} bytes is too large for a test guest",
            end - load_gpa
        ));
    }
    let mut flat = vec![0u8; (end - load_gpa) as usize];
    for seg in &elf.segments {
        let at = (seg.paddr - load_gpa) as usize;
        flat[at..at + seg.bytes.len()].copy_from_slice(seg.bytes);
    }
    if elf.entry < load_gpa || elf.entry >= end {
        return Err(format!(
            "entry point {:#x} lies outside the image",
            elf.entry
        ));
    }
    Ok((flat, elf.entry))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_guest_lists_the_known_ones() {
        let e = check_guest_name("nope").unwrap_err();
        let text = e.to_string();
        for g in GUESTS {
            assert!(text.contains(g), "{text}");
        }
    }

    #[test]
    fn flatten_guest_uses_physical_addresses() {
        use crate::image::tests::{synthetic_elf, Seg};
        let elf = synthetic_elf(
            &[
                Seg {
                    paddr: 0x10_0000,
                    bytes: vec![1, 2, 3],
                    memsz: 3,
                },
                Seg {
                    paddr: 0x10_1000,
                    bytes: vec![4],
                    memsz: 0x10,
                },
            ],
            &[],
        );
        let (flat, entry) = flatten_guest(&elf, 0x10_0000).unwrap();
        assert_eq!(entry, 0x10_0000);
        assert_eq!(flat.len(), 0x1010);
        assert_eq!(&flat[..3], &[1, 2, 3]);
        assert_eq!(flat[0x1000], 4);
        assert!(flatten_guest(&elf, 0x10_0800).is_err());
    }
}
