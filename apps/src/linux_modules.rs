//! The kernel modules the Linux initramfs carries: the virtio-pci
//! transport, virtio-blk, virtio-console, virtio-rng and ext4, with what
//! they depend on, taken from the unpacked `linux-image-*` package.
//!
//! Debian's kernel (6.1) builds all of them as modules
//! (`CONFIG_VIRTIO_PCI=m`, `VIRTIO_BLK=m`, `VIRTIO_CONSOLE=m`,
//! `HW_RANDOM_VIRTIO=m`, `EXT4_FS=m`). Its package ships no `modules.dep`
//! (the package's `postinst` runs `depmod`), so the dependencies come from
//! each module's own `.modinfo` section: `depends=` (what `modpost` found
//! the module needs; what `depmod` writes to `modules.dep`). They are read
//! only for the modules in the closure, found by name under
//! `lib/modules/VERSION/kernel/` (a module's name is its file's stem with
//! `-` as `_`: `virtio-rng.ko` is `virtio_rng`). Debian 12 ships plain
//! `.ko` files; a `.ko.xz` or `.ko.zst` is decompressed on the host (`xz`,
//! `zstd`) and carried as `.ko`, so that busybox `insmod` reads it as it is.
//!
//! `ext4` (and `jbd2`) have only a soft dependency on the crc32c hash
//! (`softdep=pre: crypto-crc32c`), which `mkfs.ext4`'s default
//! `metadata_csum` needs at mount time: [`WANTED`] names
//! `crc32c_generic`, the portable implementation, itself.
//!
//! [`load_order`] (the closure, dependencies first) is a pure function;
//! `/init` loads the modules with busybox `insmod` in that order, listed in
//! `lib/modules/VERSION/`[`LOAD_LIST`]; [`modules_dep`] writes a
//! `modules.dep` beside them for busybox `modprobe` at the shell.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The modules the initramfs carries, by name, before their dependencies:
/// the virtio-pci transport, the block, console, entropy and network devices, the
/// crc32c hash ext4's checksums need (a soft dependency: see the module
/// documentation), and ext4.
pub const WANTED: [&str; 7] = [
    "virtio_pci",
    "virtio_blk",
    "virtio_console",
    "virtio_rng",
    "virtio_net",
    "crc32c_generic",
    "ext4",
];

/// The file under `lib/modules/VERSION/` that lists the modules' paths
/// (relative to that directory), one a line, in the order `/init` loads
/// them.
pub const LOAD_LIST: &str = "splitvisor.modules";

/// A module's name from its file name: the stem before `.ko`, with `-` as
/// `_` (what the kernel and `modprobe` call it).
pub fn module_name(file_name: &str) -> Option<String> {
    let stem = file_name
        .strip_suffix(".ko")
        .or_else(|| file_name.strip_suffix(".ko.xz"))
        .or_else(|| file_name.strip_suffix(".ko.zst"))
        .or_else(|| file_name.strip_suffix(".ko.gz"))?;
    Some(stem.replace('-', "_"))
}

/// The closure of `wanted` under `depends`, each module after everything
/// it depends on (the order `insmod` needs), each once; `wanted`'s order is
/// kept where the dependencies allow. An unknown module or a dependency
/// cycle is an error naming it.
pub fn load_order<F>(wanted: &[&str], mut depends: F) -> Result<Vec<String>, String>
where
    F: FnMut(&str) -> Result<Vec<String>, String>,
{
    #[derive(PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    fn visit<F>(
        name: &str,
        depends: &mut F,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
        out: &mut Vec<String>,
    ) -> Result<(), String>
    where
        F: FnMut(&str) -> Result<Vec<String>, String>,
    {
        match marks.get(name) {
            Some(Mark::Done) => return Ok(()),
            Some(Mark::Visiting) => {
                path.push(name.to_string());
                return Err(format!("module dependency cycle: {}", path.join(" -> ")));
            }
            None => {}
        }
        marks.insert(name.to_string(), Mark::Visiting);
        path.push(name.to_string());
        for d in depends(name)? {
            visit(&d, depends, marks, path, out)?;
        }
        path.pop();
        marks.insert(name.to_string(), Mark::Done);
        out.push(name.to_string());
        Ok(())
    }
    let mut marks = BTreeMap::new();
    let mut out = Vec::new();
    for w in wanted {
        visit(w, &mut depends, &mut marks, &mut Vec::new(), &mut out)?;
    }
    Ok(out)
}

/// `modules.dep` for `order` (a [`load_order`]): one line per module, its
/// path (relative to `lib/modules/VERSION/`), a colon and the paths of all
/// it depends on, directly or not, the last to be loaded first, as `depmod`
/// writes them. `path` and `depends` give each module's path and direct
/// dependencies.
pub fn modules_dep(
    order: &[String],
    path: &dyn Fn(&str) -> String,
    depends: &dyn Fn(&str) -> Vec<String>,
) -> String {
    let mut s = String::new();
    for m in order {
        // The module's own closure, dependencies first; the line lists it
        // reversed without the module itself.
        let closure = load_order(&[m.as_str()], |n| Ok(depends(n))).unwrap_or_default();
        s.push_str(&path(m));
        s.push(':');
        for d in closure.iter().rev().filter(|d| *d != m) {
            s.push(' ');
            s.push_str(&path(d));
        }
        s.push('\n');
    }
    s
}

/// The strings of an ELF file's `.modinfo` section (`key=value`), ELF32 or
/// ELF64, little-endian.
pub fn modinfo(elf: &[u8]) -> Result<Vec<String>, String> {
    let bad = |what: &str| format!("not a kernel module ({what})");
    if elf.len() < 0x34 || &elf[..4] != b"\x7fELF" {
        return Err(bad("no ELF header"));
    }
    if elf[5] != 1 {
        return Err(bad("not little-endian"));
    }
    let u16_at = |o: usize| -> Result<usize, String> {
        elf.get(o..o + 2)
            .map(|b| usize::from(u16::from_le_bytes([b[0], b[1]])))
            .ok_or_else(|| bad("truncated"))
    };
    let u32_at = |o: usize| -> Result<usize, String> {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or_else(|| bad("truncated"))
    };
    let u64_at = |o: usize| -> Result<usize, String> {
        elf.get(o..o + 8)
            .and_then(|b| usize::try_from(u64::from_le_bytes(b.try_into().ok()?)).ok())
            .ok_or_else(|| bad("truncated"))
    };
    let is64 = match elf[4] {
        1 => false,
        2 => true,
        _ => return Err(bad("unknown ELF class")),
    };
    // (section header table offset, entry size, count, names' section)
    let (shoff, shentsize, shnum, shstrndx) = if is64 {
        (u64_at(0x28)?, u16_at(0x3a)?, u16_at(0x3c)?, u16_at(0x3e)?)
    } else {
        (u32_at(0x20)?, u16_at(0x2e)?, u16_at(0x30)?, u16_at(0x32)?)
    };
    // A section's (name offset, file offset, size).
    let section = |i: usize| -> Result<(usize, usize, usize), String> {
        let h = shoff + i * shentsize;
        if is64 {
            Ok((u32_at(h)?, u64_at(h + 0x18)?, u64_at(h + 0x20)?))
        } else {
            Ok((u32_at(h)?, u32_at(h + 0x10)?, u32_at(h + 0x14)?))
        }
    };
    let bytes = |off: usize, size: usize| -> Result<&[u8], String> {
        off.checked_add(size)
            .and_then(|end| elf.get(off..end))
            .ok_or_else(|| bad("a section lies outside the file"))
    };
    let (_, stroff, strsize) = section(shstrndx)?;
    let names = bytes(stroff, strsize)?;
    for i in 0..shnum {
        let (name, off, size) = section(i)?;
        let n = names.get(name..).unwrap_or_default();
        let n = &n[..n.iter().position(|&b| b == 0).unwrap_or(n.len())];
        if n == b".modinfo" {
            return Ok(bytes(off, size)?
                .split(|&b| b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect());
        }
    }
    Err(bad("no .modinfo section"))
}

/// The modules a `.modinfo` says this one depends on (`depends=a,b`).
pub fn depends_of(info: &[String]) -> Vec<String> {
    info.iter()
        .find_map(|kv| kv.strip_prefix("depends="))
        .map(|d| {
            d.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// The modules an initramfs carries.
#[derive(Clone, Debug, Default)]
pub struct Modules {
    /// The kernel's release (`uname -r`): the directory under `lib/modules`.
    pub version: String,
    /// Each module's path under `lib/modules/VERSION/` (always `.ko`) and
    /// contents, in load order.
    pub files: Vec<(String, Vec<u8>)>,
    /// `modules.dep` for them.
    pub modules_dep: String,
}

impl Modules {
    /// The [`LOAD_LIST`] file: the paths in load order.
    pub fn load_list(&self) -> String {
        self.files.iter().map(|(p, _)| format!("{p}\n")).collect()
    }

    /// The modules' total size in bytes.
    pub fn bytes(&self) -> usize {
        self.files.iter().map(|(_, d)| d.len()).sum()
    }
}

fn walk(dir: &Path, out: &mut BTreeMap<String, PathBuf>) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut entries: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out)?;
        } else if let Some(name) = p.file_name().and_then(|n| n.to_str()).and_then(module_name) {
            out.entry(name).or_insert(p);
        }
    }
    Ok(())
}

/// A module file's contents, decompressed on the host if it is `.ko.xz`,
/// `.ko.zst` or `.ko.gz`.
fn read_module(p: &Path) -> Result<Vec<u8>, String> {
    let name = p.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        Some("xz")
    } else if name.ends_with(".zst") {
        Some("zstd")
    } else if name.ends_with(".gz") {
        Some("gzip")
    } else {
        None
    };
    let Some(tool) = tool else {
        return std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    };
    let out = Command::new(tool)
        .arg("-dc")
        .arg(p)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("could not run {tool} to decompress {}: {e}", p.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{tool} -dc {} failed ({})",
            p.display(),
            out.status
        ));
    }
    Ok(out.stdout)
}

/// The modules of the unpacked kernel package at `root` (its single
/// `lib/modules/VERSION/`): [`WANTED`] and their dependencies.
pub fn collect(root: &Path) -> Result<Modules, String> {
    let base = root.join("lib").join("modules");
    let version = std::fs::read_dir(&base)
        .map_err(|e| {
            format!(
                "the kernel package has no lib/modules ({}: {e})",
                base.display()
            )
        })?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .next()
        .ok_or_else(|| format!("{} holds no kernel version", base.display()))?;
    let dir = base.join(&version);
    let mut found = BTreeMap::new();
    walk(&dir.join("kernel"), &mut found)?;
    let mut contents: BTreeMap<String, (String, Vec<u8>, Vec<String>)> = BTreeMap::new();
    let order = load_order(&WANTED, |name| {
        if let Some((_, _, deps)) = contents.get(name) {
            return Ok(deps.clone());
        }
        let p = found
            .get(name)
            .ok_or_else(|| format!("the kernel {version} has no module {name}"))?;
        let data = read_module(p)?;
        let deps = depends_of(&modinfo(&data).map_err(|e| format!("{}: {e}", p.display()))?);
        let rel = p
            .strip_prefix(&dir)
            .map_err(|e| e.to_string())?
            .to_string_lossy()
            .into_owned();
        let rel = match rel.find(".ko") {
            Some(i) => format!("{}.ko", &rel[..i]),
            None => rel,
        };
        contents.insert(name.to_string(), (rel, data, deps.clone()));
        Ok(deps)
    })?;
    let modules_dep = modules_dep(&order, &|m| contents[m].0.clone(), &|m| {
        contents[m].2.clone()
    });
    let files = order
        .iter()
        .map(|m| {
            let (rel, data, _) = contents.remove(m).unwrap_or_default();
            (rel, data)
        })
        .collect();
    Ok(Modules {
        version,
        files,
        modules_dep,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Debian 6.1's `depends=` of the modules [`WANTED`] reaches.
    fn debian_6_1(name: &str) -> Result<Vec<String>, String> {
        let d: &[&str] = match name {
            "virtio_pci" => &[
                "virtio_ring",
                "virtio_pci_modern_dev",
                "virtio_pci_legacy_dev",
                "virtio",
            ],
            "virtio_blk" | "virtio_console" | "virtio_rng" => &["virtio", "virtio_ring"],
            "virtio_net" => &["virtio_ring", "virtio", "net_failover"],
            "net_failover" => &["failover"],
            "virtio" => &["virtio_ring"],
            "ext4" => &["jbd2", "mbcache", "crc16"],
            "virtio_ring"
            | "virtio_pci_modern_dev"
            | "virtio_pci_legacy_dev"
            | "jbd2"
            | "mbcache"
            | "crc16"
            | "crc32c_generic"
            | "failover" => &[],
            _ => return Err(format!("no module {name}")),
        };
        Ok(d.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn dependencies_come_first_and_once() {
        let order = load_order(&WANTED, debian_6_1).unwrap();
        assert_eq!(
            order,
            [
                "virtio_ring",
                "virtio_pci_modern_dev",
                "virtio_pci_legacy_dev",
                "virtio",
                "virtio_pci",
                "virtio_blk",
                "virtio_console",
                "virtio_rng",
                "failover",
                "net_failover",
                "virtio_net",
                "crc32c_generic",
                "jbd2",
                "mbcache",
                "crc16",
                "ext4",
            ]
        );
        for (i, m) in order.iter().enumerate() {
            for d in debian_6_1(m).unwrap() {
                let j = order.iter().position(|x| *x == d).unwrap();
                assert!(j < i, "{d} after {m}");
            }
        }
    }

    #[test]
    fn an_unknown_module_or_a_cycle_is_named() {
        let e = load_order(&["ext4", "nosuch"], debian_6_1).unwrap_err();
        assert!(e.contains("nosuch"), "{e}");
        let cyclic = |n: &str| -> Result<Vec<String>, String> {
            Ok(match n {
                "a" => vec!["b".into()],
                "b" => vec!["c".into()],
                _ => vec!["a".into()],
            })
        };
        let e = load_order(&["a"], cyclic).unwrap_err();
        assert_eq!(e, "module dependency cycle: a -> b -> c -> a");
    }

    #[test]
    fn modules_dep_lists_every_indirect_dependency_last_loaded_first() {
        let order = load_order(&["virtio_blk"], debian_6_1).unwrap();
        let dep = modules_dep(&order, &|m| format!("kernel/{m}.ko"), &|m| {
            debian_6_1(m).unwrap()
        });
        assert_eq!(
            dep,
            "kernel/virtio_ring.ko:\n\
             kernel/virtio.ko: kernel/virtio_ring.ko\n\
             kernel/virtio_blk.ko: kernel/virtio.ko kernel/virtio_ring.ko\n"
        );
    }

    #[test]
    fn module_names_follow_the_kernel() {
        assert_eq!(module_name("virtio-rng.ko").as_deref(), Some("virtio_rng"));
        assert_eq!(module_name("ext4.ko.xz").as_deref(), Some("ext4"));
        assert_eq!(module_name("jbd2.ko.zst").as_deref(), Some("jbd2"));
        assert_eq!(module_name("modules.dep"), None);
    }

    /// A minimal ELF64 with a `.modinfo` section.
    fn elf64_with_modinfo(info: &[u8]) -> Vec<u8> {
        let shstr = b"\0.modinfo\0.shstrtab\0";
        let mut f = vec![0u8; 64];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        let info_off = f.len();
        f.extend_from_slice(info);
        let str_off = f.len();
        f.extend_from_slice(shstr);
        while !f.len().is_multiple_of(8) {
            f.push(0);
        }
        let shoff = f.len();
        let mut sh = |name: u32, off: usize, size: usize| {
            let mut h = [0u8; 64];
            h[..4].copy_from_slice(&name.to_le_bytes());
            h[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
            h[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            f.extend_from_slice(&h);
        };
        sh(0, 0, 0);
        sh(1, info_off, info.len());
        sh(10, str_off, shstr.len());
        f[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        f[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        f[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        f[0x3e..0x40].copy_from_slice(&2u16.to_le_bytes());
        f
    }

    #[test]
    fn modinfo_reads_depends() {
        let elf = elf64_with_modinfo(b"license=GPL\0depends=jbd2,mbcache,crc16\0name=ext4\0");
        let info = modinfo(&elf).unwrap();
        assert_eq!(
            info,
            ["license=GPL", "depends=jbd2,mbcache,crc16", "name=ext4"]
        );
        assert_eq!(depends_of(&info), ["jbd2", "mbcache", "crc16"]);
        let none = elf64_with_modinfo(b"depends=\0name=crc16\0");
        assert!(depends_of(&modinfo(&none).unwrap()).is_empty());
        assert!(modinfo(b"not an elf at all, but long enough to have a header....").is_err());
        let mut cut = elf64_with_modinfo(b"depends=\0");
        cut.truncate(80);
        assert!(modinfo(&cut).is_err());
    }
}
