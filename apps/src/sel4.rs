//! `--platform sel4`: splitvisor on seL4 (issue 14), booted in Bochs.
//!
//! - **The kernel**: seL4 16.0.0 for pc99/x86_64 with VT-x, built with
//!   cmake and ninja from `SEL4_SRC` (a source folder or the `git archive`
//!   tarball) or `../shared/sel4/seL4-16.0.0.tar.gz` beside the workspace,
//!   and cached under `target/sel4/kernel-HASH/` by a hash of the sources'
//!   identity and the configuration ([`KERNEL_CONFIG`]). The Python
//!   packages its build needs come from the venv `.cache/sel4/venv` when it
//!   exists (`scripts/install-deps` makes it), else from `python3`.
//! - **The root task** (`sel4/root-task`, `x86_64-unknown-none`), built
//!   against the installed kernel (`SEL4_PREFIX`: `sel4/sys` generates its
//!   constants from that kernel's headers) in `target/sel4/cargo/`.
//! - **The image**: the same system image the native stub boots is built;
//!   its payload (header, manifest, blobs) is appended to a copy of the
//!   root task as the last PT_LOAD segment ([`attach_payload`]), because
//!   seL4 on x86 loads only its first boot module.
//! - **The ISO**: GRUB with `multiboot /boot/sel4-kernel.elf` and `module
//!   /boot/roottask`, serial console, in `target/image/iso/NAME-sel4.iso`;
//!   booted like the native ISO in Bochs (`corei7_skylake_x`).

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::bochs::{bochs_args, bochs_files, bochsrc, missing_files, RunFiles, DEBUGGER_COMMANDS};
use crate::run::{conclude, run_command, Console, RunOptions, EXIT_CANNOT_RUN, EXIT_EMULATOR};

/// The seL4 release the build expects.
pub const SEL4_TARBALL: &str = "seL4-16.0.0.tar.gz";

/// The kernel's cmake configuration: pc99, x86_64, VT-x with 64-bit
/// guests, debug printing (`KernelVerificationBuild` defaults to ON and
/// silently turns printing off), one CPU, no IOMMU, no PCID (Bochs), a
/// root CNode of 2^16 slots.
pub const KERNEL_CONFIG: &[&str] = &[
    "-DKernelPlatform=pc99",
    "-DKernelSel4Arch=x86_64",
    "-DKernelVerificationBuild=OFF",
    "-DKernelVTX=ON",
    "-DKernelX86_64VTX64BitGuests=ON",
    "-DKernelSupportPCID=OFF",
    "-DKernelMaxNumNodes=1",
    "-DKernelIOMMU=OFF",
    "-DKernelDebugBuild=ON",
    "-DKernelPrinting=ON",
    // One slot per 4 KiB frame of the root task's image, whose payload
    // carries the guest (a Linux kernel and initramfs: some 6,000 frames).
    "-DKernelRootCNodeSizeBits=16",
];

/// One sentence on what shadow paging is on seL4.
pub const NO_SHADOW: &str = "seL4 has no counterpart of shadow paging: its VCPUs always run \
     on EPT (use --mmu npt, the default)";

/// Why the root task would refuse `spec`, if it would, said before Bochs
/// starts: shadow paging ([`NO_SHADOW`]), or a task, right or channel it
/// cannot give a component (its own check, `sel4_root_task::rights`, on
/// the manifest's tasks).
pub fn refusal(spec: &images::SystemSpec) -> Option<String> {
    if spec.mmu.is_shadow() {
        return Some(NO_SHADOW.to_string());
    }
    let (tasks, channels) = images::system_tasks(spec);
    let tasks: Vec<_> = tasks.iter().map(|(n, r)| (*n, r)).collect();
    sel4_root_task::rights::plan(&tasks, &channels, spec.mmu)
        .err()
        .map(|why| format!("cannot run: {why}"))
}

/// Where the seL4 sources are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sources {
    /// An unpacked source tree.
    Dir(PathBuf),
    /// The `git archive` tarball.
    Tarball(PathBuf),
}

/// Finds the seL4 sources: `SEL4_SRC`, else `../shared/sel4/` beside the
/// workspace; the error is one sentence saying what is missing.
pub fn find_sources() -> Result<Sources, String> {
    if let Some(s) = std::env::var_os("SEL4_SRC") {
        let p = PathBuf::from(s);
        if p.is_dir() {
            if p.join("gcc.cmake").is_file() {
                return Ok(Sources::Dir(p));
            }
            return Err(format!(
                "SEL4_SRC={} is a folder without seL4's gcc.cmake: point it at the seL4 16.0.0 \
                 sources (a checkout of tag 16.0.0) or at {SEL4_TARBALL}",
                p.display()
            ));
        }
        if p.is_file() {
            return Ok(Sources::Tarball(p));
        }
        return Err(format!("SEL4_SRC={} does not exist", p.display()));
    }
    let shared = images::workspace_root()
        .join("..")
        .join("shared")
        .join("sel4")
        .join(SEL4_TARBALL);
    if shared.is_file() {
        return Ok(Sources::Tarball(shared));
    }
    Err(format!(
        "the seL4 sources are missing: set SEL4_SRC to a checkout of seL4 tag 16.0.0 (or its \
         {SEL4_TARBALL}), or put the tarball at {}",
        shared.display()
    ))
}

/// FNV-1a, 64 bits: the cache key (stable across Rust versions).
fn fnv1a(bytes: &[u8], mut h: u64) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// The cache key of a kernel build: the sources' identity (a tarball's
/// bytes, a folder's path) and the configuration.
pub fn config_hash(sources: &Sources) -> io::Result<u64> {
    let mut h = 0xcbf2_9ce4_8422_2325;
    match sources {
        Sources::Tarball(p) => h = fnv1a(&std::fs::read(p)?, h),
        Sources::Dir(p) => h = fnv1a(p.canonicalize()?.to_string_lossy().as_bytes(), h),
    }
    for opt in KERNEL_CONFIG {
        h = fnv1a(opt.as_bytes(), h);
        h = fnv1a(b"\0", h);
    }
    Ok(h)
}

/// The tools the kernel build needs that are missing, as one sentence.
fn missing_build_tools(python: &Path) -> Option<String> {
    let mut missing = Vec::new();
    for (prog, pkg) in [
        ("cmake", "cmake"),
        ("ninja", "ninja-build"),
        ("xmllint", "libxml2-utils"),
        ("gcc", "gcc"),
    ] {
        if crate::run::find_program(prog).is_none() {
            missing.push(pkg);
        }
    }
    let mut sentence = String::new();
    if !missing.is_empty() {
        sentence = format!(
            "the seL4 kernel build needs {} (apt-get install {})",
            missing.join(", "),
            missing.join(" ")
        );
    }
    let py_ok = Command::new(python)
        .args(["-c", "import yaml, jinja2, ply, lxml"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !py_ok {
        if !sentence.is_empty() {
            sentence.push_str(", and ");
        } else {
            sentence.push_str("the seL4 kernel build needs ");
        }
        sentence.push_str(
            "the Python packages pyyaml, jinja2, ply and lxml (scripts/install-deps puts them in \
             the venv .cache/sel4/venv)",
        );
    }
    (!sentence.is_empty()).then_some(sentence)
}

/// The venv's `bin` folder, when `scripts/install-deps` made it.
fn venv_bin() -> Option<PathBuf> {
    let bin = images::workspace_root()
        .join(".cache")
        .join("sel4")
        .join("venv")
        .join("bin");
    bin.join("python3").is_file().then_some(bin)
}

/// An installed kernel: `bin/kernel.elf` and `libsel4/include`.
#[derive(Clone, Debug, PartialEq)]
pub struct Kernel {
    /// The install prefix (`SEL4_PREFIX` of the root task's build).
    pub prefix: PathBuf,
    /// Whether this call built it (false: from the cache).
    pub built: bool,
    /// Seconds the build took.
    pub seconds: f64,
}

impl Kernel {
    /// The kernel ELF.
    pub fn elf(&self) -> PathBuf {
        self.prefix.join("bin").join("kernel.elf")
    }
}

/// Builds (or finds in the cache) the seL4 kernel.
pub fn build_kernel() -> Result<Kernel, String> {
    let sources = find_sources()?;
    let hash = config_hash(&sources).map_err(|e| format!("reading the seL4 sources: {e}"))?;
    let final_dir = images::workspace_root()
        .join("target")
        .join("sel4")
        .join(format!("kernel-{hash:016x}"));
    let installed = |dir: &Path| {
        let prefix = dir.join("install");
        let ok = prefix.join("bin").join("kernel.elf").is_file()
            && prefix
                .join("libsel4")
                .join("include")
                .join("interfaces")
                .join("sel4_client.h")
                .is_file();
        ok.then_some(prefix)
    };
    if let Some(prefix) = installed(&final_dir) {
        return Ok(Kernel {
            prefix,
            built: false,
            seconds: 0.0,
        });
    }
    // Built in a folder of this process's own and renamed into place, so
    // that runs started together (the e2e tests) do not share a build.
    let dir = final_dir.with_extension(format!("partial-{}", std::process::id()));
    let prefix = dir.join("install");
    let done = prefix.join("bin").join("kernel.elf");
    let venv = venv_bin();
    let python = venv
        .as_ref()
        .map_or_else(|| PathBuf::from("python3"), |b| b.join("python3"));
    if let Some(m) = missing_build_tools(&python) {
        return Err(m);
    }
    let start = Instant::now();
    eprintln!(
        "splitvisor: building the seL4 kernel once (tar, cmake, ninja; their logs in {})",
        dir.display()
    );
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let src = match &sources {
        Sources::Dir(p) => p.clone(),
        Sources::Tarball(t) => {
            let unpack = dir.join("src");
            std::fs::create_dir_all(&unpack).map_err(|e| format!("{}: {e}", unpack.display()))?;
            let mut tar = Command::new("tar");
            tar.arg("xzf").arg(t).arg("-C").arg(&unpack);
            crate::progress::run_logged(tar, &dir.join("tar.log"), "tar")?;
            // The archive holds one top folder (seL4-16.0.0/).
            let top = std::fs::read_dir(&unpack)
                .map_err(|e| format!("{}: {e}", unpack.display()))?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .find(|p| p.join("gcc.cmake").is_file())
                .ok_or_else(|| format!("{} holds no seL4 source tree", t.display()))?;
            top
        }
    };
    let src = src
        .canonicalize()
        .map_err(|e| format!("{}: {e}", src.display()))?;
    let build = dir.join("build");
    let path = match &venv {
        Some(b) => {
            let old = std::env::var_os("PATH").unwrap_or_default();
            let mut parts = vec![b.clone()];
            parts.extend(std::env::split_paths(&old));
            std::env::join_paths(parts).map_err(|e| e.to_string())?
        }
        None => std::env::var_os("PATH").unwrap_or_default(),
    };
    let mut cmake = Command::new("cmake");
    cmake
        .args(["-G", "Ninja", "-S"])
        .arg(&src)
        .arg("-B")
        .arg(&build)
        .arg(format!(
            "-DCMAKE_TOOLCHAIN_FILE={}",
            src.join("gcc.cmake").display()
        ))
        .arg("-DCROSS_COMPILER_PREFIX=")
        .arg(format!("-DCMAKE_INSTALL_PREFIX={}", prefix.display()))
        .args(KERNEL_CONFIG)
        .env("PATH", &path);
    crate::progress::run_logged(cmake, &dir.join("cmake.log"), "cmake (seL4 configuration)")?;
    let mut ninja = Command::new("ninja");
    ninja
        .arg("-C")
        .arg(&build)
        .arg("install")
        .env("PATH", &path);
    crate::progress::run_logged(ninja, &dir.join("ninja.log"), "ninja (seL4 build)")?;
    if !done.is_file() {
        return Err(format!("the seL4 build made no {}", done.display()));
    }
    let seconds = start.elapsed().as_secs_f64();
    if std::fs::rename(&dir, &final_dir).is_err() {
        if installed(&final_dir).is_none() {
            // A broken leftover: replace it.
            let _ = std::fs::remove_dir_all(&final_dir);
            let _ = std::fs::rename(&dir, &final_dir);
        }
        // Else another run got there first: use its kernel, drop ours.
        let _ = std::fs::remove_dir_all(&dir);
    }
    let prefix = installed(&final_dir)
        .ok_or_else(|| format!("the seL4 build did not land in {}", final_dir.display()))?;
    Ok(Kernel {
        prefix,
        built: true,
        seconds,
    })
}

/// The ELFs of the seL4 image: the root task and the two components.
pub struct Elfs {
    /// The root task (before the payload is attached).
    pub root_task: PathBuf,
    /// The vmm-server component.
    pub vmm_server: PathBuf,
    /// The mmu-server component.
    pub mmu_server: PathBuf,
}

/// Builds the root task and the vmm-server and mmu-server components
/// against `kernel`; returns their ELFs.
pub fn build_root_task(kernel: &Kernel) -> Result<Elfs, String> {
    let root = images::workspace_root();
    let target_dir = root.join("target").join("sel4").join("cargo");
    let program = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(&program)
        .args([
            "build",
            "--release",
            "--target",
            images::TARGET,
            "-p",
            "sel4-root-task",
            "-p",
            "sel4-vmm-server",
            "-p",
            "sel4-mmu-server",
        ])
        .current_dir(&root)
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("SEL4_PREFIX", &kernel.prefix)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .stdin(Stdio::null())
        .stdout(Stdio::from(io::stderr()))
        .status()
        .map_err(|e| format!("could not start cargo: {e}"))?;
    if !status.success() {
        return Err(format!("building the seL4 root task failed ({status})"));
    }
    let dir = target_dir.join(images::TARGET).join("release");
    let elfs = Elfs {
        root_task: dir.join("sel4-root-task"),
        vmm_server: dir.join("sel4-vmm-server"),
        mmu_server: dir.join("sel4-mmu-server"),
    };
    for f in [&elfs.root_task, &elfs.vmm_server, &elfs.mmu_server] {
        if !f.is_file() {
            return Err(format!("cargo made no {}", f.display()));
        }
    }
    Ok(elfs)
}

/// The payload of a native system image: from the first page boundary
/// that starts with the payload header to the end.
pub fn extract_payload(image: &[u8]) -> Option<&[u8]> {
    use ipc_proto::manifest::{MANIFEST_MAX, PAYLOAD_MAGIC};
    (0..image.len()).step_by(4096).find_map(|off| {
        let p = &image[off..];
        let ok = p.len() >= 16
            && p[..8] == PAYLOAD_MAGIC
            && u32::from_le_bytes(p[8..12].try_into().ok()?) == ipc_proto::ABI_VERSION
            && (u32::from_le_bytes(p[12..16].try_into().ok()?) as usize) <= MANIFEST_MAX;
        ok.then_some(p)
    })
}

/// Where [`sel4_payload`] puts the guest's bytes: after the header and
/// the longest manifest, so the offsets do not depend on its length.
const SEL4_BLOBS_AT: usize = (16 + ipc_proto::manifest::MANIFEST_MAX).next_multiple_of(4096);

/// The native image's `payload` without what the seL4 root task never
/// reads: the tasks' ELFs (the root task loads its own components, which
/// ride after the payload). The manifest keeps every task with its name
/// and rights, each with an empty ELF blob; the guest's image and
/// segments are copied after it and their blobs moved with them.
pub fn sel4_payload(payload: &[u8]) -> Result<Vec<u8>, String> {
    use ipc_proto::manifest::{Blob, Manifest, PayloadHeader, MANIFEST_MAX};
    use zerocopy::{FromBytes, IntoBytes};
    let bad = |why: &str| format!("the image's payload {why}");
    let (header, rest) =
        PayloadHeader::read_from_prefix(payload).map_err(|_| bad("has no header"))?;
    let encoded = rest
        .get(..header.manifest_len as usize)
        .ok_or_else(|| bad("has a truncated manifest"))?;
    let mut m: Manifest = postcard::from_bytes(encoded).map_err(|_| bad("has a bad manifest"))?;
    let mut blobs = Vec::new();
    let mut take = |b: Blob| -> Result<Blob, String> {
        let bytes = payload
            .get(b.offset as usize..b.offset as usize + b.len as usize)
            .ok_or_else(|| bad("has a blob outside it"))?;
        let offset = u32::try_from(SEL4_BLOBS_AT + blobs.len()).map_err(|_| bad("is too large"))?;
        blobs.extend_from_slice(bytes);
        Ok(Blob { offset, len: b.len })
    };
    let guest = m.guest.as_mut().ok_or_else(|| bad("has no guest"))?;
    guest.image = take(guest.image)?;
    for s in &mut guest.segments {
        s.blob = take(s.blob)?;
    }
    for t in &mut m.tasks {
        t.elf = Blob::default();
    }
    let manifest = postcard::to_allocvec(&m).map_err(|_| bad("manifest does not encode"))?;
    if manifest.len() > MANIFEST_MAX {
        return Err(bad("manifest grew too large"));
    }
    let header = PayloadHeader {
        manifest_len: manifest.len() as u32,
        ..header
    };
    let mut out = header.as_bytes().to_vec();
    out.extend_from_slice(&manifest);
    out.resize(SEL4_BLOBS_AT, 0);
    out.extend_from_slice(&blobs);
    Ok(out)
}

/// The 40 bytes in front of the payload in the root task's `.payload`
/// segment: `SPLTSEL4`, the payload's length, [`Flags`] and the lengths of
/// the vmm-server and mmu-server components' ELFs, which follow the
/// payload in that order (little endian).
pub const SEGMENT_MAGIC: &[u8; 8] = b"SPLTSEL4";

/// What the root task is told besides the payload (the segment's flags
/// word).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flags {
    /// The hostile case of issue 14: the vmm-server component invokes a
    /// capability of the root task's that it was not given (for tests).
    pub hostile_vmm: bool,
}

impl Flags {
    fn word(self) -> u64 {
        u64::from(self.hostile_vmm)
    }
}

/// A copy of the root task ELF with `payload` as its last PT_LOAD segment:
/// the segment the linker script reserves (`.payload`, one page) is
/// pointed at `SPLTSEL4`, the lengths, the flags, the payload and the
/// components' ELFs (`components`: the vmm-server's, the mmu-server's),
/// appended to the file at an offset congruent to its address, and widened
/// over them.
pub fn attach_payload(
    elf: &[u8],
    payload: &[u8],
    flags: Flags,
    components: [&[u8]; 2],
) -> Result<Vec<u8>, String> {
    let bad = |why: &str| format!("the root task ELF {why}");
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]);
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap_or([0; 8]));
    if elf.len() < 64 || elf[..4] != *b"\x7fELF" || elf[4] != 2 || elf[5] != 1 {
        return Err(bad("is not a little-endian ELF64 file"));
    }
    let phoff = u64_at(32) as usize;
    let phentsize = usize::from(u16_at(54));
    let phnum = usize::from(u16_at(56));
    if phentsize < 56 || phoff + phnum * phentsize > elf.len() {
        return Err(bad("has truncated program headers"));
    }
    // The PT_LOAD with the highest address is the payload's.
    let last = (0..phnum)
        .map(|i| phoff + i * phentsize)
        .filter(|&h| u32::from_le_bytes(elf[h..h + 4].try_into().unwrap_or([0; 4])) == 1)
        .max_by_key(|&h| u64_at(h + 16))
        .ok_or_else(|| bad("has no PT_LOAD segment"))?;
    let vaddr = u64_at(last + 16);
    let align = u64_at(last + 48).max(1);
    let mut out = elf.to_vec();
    let mut offset = out.len() as u64;
    // p_offset must be congruent to p_vaddr modulo the alignment.
    let want = vaddr % align;
    offset += (want + align - offset % align) % align;
    out.resize(offset as usize, 0);
    out.extend_from_slice(SEGMENT_MAGIC);
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&flags.word().to_le_bytes());
    for c in components {
        out.extend_from_slice(&(c.len() as u64).to_le_bytes());
    }
    out.extend_from_slice(payload);
    for c in components {
        out.extend_from_slice(c);
    }
    let size = (40 + payload.len() + components.iter().map(|c| c.len()).sum::<usize>()) as u64;
    out[last + 8..last + 16].copy_from_slice(&offset.to_le_bytes());
    out[last + 32..last + 40].copy_from_slice(&size.to_le_bytes());
    out[last + 40..last + 48].copy_from_slice(&size.to_le_bytes());
    Ok(out)
}

/// GRUB's configuration: serial console, the kernel and the root task.
pub fn grub_cfg() -> String {
    "# Made by `splitvisor build --platform sel4`.\n\
     serial --unit=0 --speed=115200\n\
     terminal_input serial console\n\
     terminal_output serial console\n\
     set timeout=0\n\
     set default=0\n\
     menuentry \"splitvisor on seL4\" {\n\
     \x20   multiboot /boot/sel4-kernel.elf\n\
     \x20   module /boot/roottask\n\
     \x20   boot\n\
     }\n"
    .to_string()
}

/// What `build` made.
#[derive(Clone, Debug)]
pub struct Built {
    /// The ISO.
    pub iso: PathBuf,
    /// The root task with the payload.
    pub root_task: PathBuf,
    /// The kernel.
    pub kernel: Kernel,
}

/// Builds the kernel (cached), the root task, the system image and the
/// GRUB ISO for `spec`.
pub fn build(spec: &images::SystemSpec, flags: Flags) -> Result<Built, String> {
    if let Some(why) = refusal(spec) {
        return Err(why);
    }
    let kernel = build_kernel()?;
    if kernel.built {
        eprintln!(
            "splitvisor: built the seL4 kernel in {:.1} s ({})",
            kernel.seconds,
            kernel.prefix.display()
        );
    }
    let elfs = build_root_task(&kernel)?;
    let root_task = elfs.root_task;
    let image = images::build_system_spec(spec).map_err(|e| e.to_string())?;
    let image_bytes = std::fs::read(&image).map_err(|e| format!("{}: {e}", image.display()))?;
    let payload = extract_payload(&image_bytes)
        .ok_or_else(|| format!("{} has no splitvisor payload", image.display()))?;
    let payload = sel4_payload(payload)?;
    let elf = std::fs::read(&root_task).map_err(|e| format!("{}: {e}", root_task.display()))?;
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let (vmm, mmu) = (read(&elfs.vmm_server)?, read(&elfs.mmu_server)?);
    let combined = attach_payload(&elf, &payload, flags, [&vmm, &mmu])?;
    let mut stem = image
        .file_stem()
        .map_or("guest".into(), |s| s.to_string_lossy().into_owned());
    if flags.hostile_vmm {
        stem.push_str("-hostile-vmm");
    }
    let out_dir = images::image_dir().join("sel4");
    std::fs::create_dir_all(&out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    let task_path = out_dir.join(format!("{stem}-roottask.elf"));
    images::write_atomic(&task_path, &combined).map_err(|e| e.to_string())?;
    let iso = images::image_dir()
        .join("iso")
        .join(format!("{stem}-sel4.iso"));
    make_iso(&kernel.elf(), &task_path, &iso)?;
    Ok(Built {
        iso,
        root_task: task_path,
        kernel,
    })
}

fn make_iso(kernel: &Path, root_task: &Path, iso: &Path) -> Result<(), String> {
    let missing = images::iso::missing_tools();
    if !missing.is_empty() {
        return Err(images::iso::IsoError::ToolsMissing(missing).to_string());
    }
    let staging = iso.with_extension(format!("d{}", std::process::id()));
    let result = (|| {
        let grub = staging.join("boot").join("grub");
        std::fs::create_dir_all(&grub).map_err(|e| format!("{}: {e}", grub.display()))?;
        std::fs::write(grub.join("grub.cfg"), grub_cfg()).map_err(|e| e.to_string())?;
        std::fs::copy(kernel, staging.join("boot").join("sel4-kernel.elf"))
            .map_err(|e| format!("{}: {e}", kernel.display()))?;
        std::fs::copy(root_task, staging.join("boot").join("roottask"))
            .map_err(|e| format!("{}: {e}", root_task.display()))?;
        if let Some(d) = iso.parent() {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        let tmp = iso.with_extension(format!("iso.tmp{}", std::process::id()));
        let out = Command::new("grub-mkrescue")
            .args(["--fonts=", "--locales=", "--themes=", "-o"])
            .arg(&tmp)
            .arg(&staging)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("could not start grub-mkrescue: {e}"))?;
        if !out.status.success() {
            let _ = std::fs::remove_file(&tmp);
            return Err(format!(
                "grub-mkrescue failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        std::fs::rename(&tmp, iso).map_err(|e| format!("{}: {e}", iso.display()))
    })();
    let _ = std::fs::remove_dir_all(&staging);
    result
}

/// `splitvisor build --platform sel4`: prints the ISO's path.
pub fn build_cli(spec: &images::SystemSpec) -> i32 {
    match build(spec, Flags::default()) {
        Ok(b) => {
            println!("{}", b.iso.display());
            0
        }
        Err(e) => {
            eprintln!("splitvisor: {e}");
            1
        }
    }
}

/// `splitvisor run --platform sel4`: builds, boots the ISO in Bochs, streams
/// COM1 (seL4's and the root task's console) and concludes as the native
/// platform does.
pub fn run(opts: &RunOptions, flags: Flags) -> i32 {
    if let Some(why) = refusal(&opts.system) {
        eprintln!("splitvisor: {why}");
        return EXIT_CANNOT_RUN;
    }
    let files = bochs_files();
    if let Some(m) = missing_files(&files) {
        eprintln!("splitvisor: {m}");
        return EXIT_EMULATOR;
    }
    let built = match build(&opts.system, flags) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("splitvisor: could not build the seL4 image: {e}");
            return EXIT_EMULATOR;
        }
    };
    let dir = images::image_dir()
        .join("bochs")
        .join(format!("sel4-run-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("splitvisor: cannot make {}: {e}", dir.display());
        return EXIT_EMULATOR;
    }
    let run_files = RunFiles {
        iso: built.iso.clone(),
        com1: dir.join("com1.txt"),
        log: dir.join("bochs.log"),
    };
    let text = match bochsrc(&opts.cpu, opts.memory_mib, &files, &run_files) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("splitvisor: {e}");
            return EXIT_EMULATOR;
        }
    };
    let (rc_path, cmds_path) = (dir.join("bochsrc"), dir.join("rc"));
    if let Err(e) =
        std::fs::write(&rc_path, text).and_then(|()| std::fs::write(&cmds_path, DEBUGGER_COMMANDS))
    {
        eprintln!("splitvisor: cannot write {}: {e}", dir.display());
        return EXIT_EMULATOR;
    }
    eprintln!(
        "splitvisor: booting {} (seL4) in bochs, cpu {}",
        built.iso.display(),
        opts.cpu
    );
    let program =
        crate::run::find_program(&opts.emulator).unwrap_or_else(|| PathBuf::from(&opts.emulator));
    let mut cmd = Command::new(&program);
    cmd.args(bochs_args(&rc_path, &cmds_path))
        .current_dir(&dir)
        .env("TERM", "vt100");
    let started = Instant::now();
    let report = match run_command(
        cmd,
        &program.to_string_lossy(),
        opts.timeout,
        Console::File(run_files.com1.clone()),
        Box::new(io::stdout()),
    ) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("splitvisor: {e}");
            return EXIT_EMULATOR;
        }
    };
    let mut verdict = conclude(&report, opts);
    if report.final_line.is_some() && !report.timed_out {
        let _ = std::fs::remove_dir_all(&dir);
        eprintln!(
            "splitvisor: seL4 run took {:.1} s in Bochs",
            started.elapsed().as_secs_f64()
        );
    } else {
        verdict.messages.push(format!(
            "splitvisor: Bochs's configuration, log and COM1 output are in {}",
            dir.display()
        ));
    }
    for m in &verdict.messages {
        eprintln!("{m}");
    }
    verdict.code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_payload_becomes_the_last_segment() {
        // A minimal ELF64 with two PT_LOAD headers; the second (higher
        // address) is the placeholder.
        let mut elf = vec![0u8; 64 + 2 * 56];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[32..40].copy_from_slice(&64u64.to_le_bytes());
        elf[54..56].copy_from_slice(&56u16.to_le_bytes());
        elf[56..58].copy_from_slice(&2u16.to_le_bytes());
        for (i, vaddr) in [0x40_0000u64, 0x59_4000].into_iter().enumerate() {
            let h = 64 + i * 56;
            elf[h..h + 4].copy_from_slice(&1u32.to_le_bytes());
            elf[h + 16..h + 24].copy_from_slice(&vaddr.to_le_bytes());
            elf[h + 48..h + 56].copy_from_slice(&0x1000u64.to_le_bytes());
        }
        let flags = Flags { hostile_vmm: true };
        let out = attach_payload(&elf, b"payload", flags, [b"vmm", b"mmu!"]).unwrap();
        let h = 64 + 56;
        let off = u64::from_le_bytes(out[h + 8..h + 16].try_into().unwrap()) as usize;
        assert_eq!(off % 0x1000, 0x59_4000 % 0x1000);
        assert_eq!(&out[off..off + 8], SEGMENT_MAGIC);
        assert_eq!(&out[off + 8..off + 16], &7u64.to_le_bytes());
        assert_eq!(&out[off + 16..off + 24], &1u64.to_le_bytes());
        assert_eq!(&out[off + 24..off + 32], &3u64.to_le_bytes());
        assert_eq!(&out[off + 32..off + 40], &4u64.to_le_bytes());
        assert_eq!(&out[off + 40..], b"payloadvmmmmu!");
        let filesz = u64::from_le_bytes(out[h + 32..h + 40].try_into().unwrap());
        assert_eq!(filesz, 40 + 7 + 3 + 4);
    }

    #[test]
    fn the_payload_is_found_at_a_page_boundary() {
        let mut image = vec![0u8; 8192];
        image[4096..4104].copy_from_slice(&ipc_proto::manifest::PAYLOAD_MAGIC);
        image[4104..4108].copy_from_slice(&ipc_proto::ABI_VERSION.to_le_bytes());
        assert_eq!(extract_payload(&image).map(<[u8]>::len), Some(4096));
        assert!(extract_payload(&image[..4096]).is_none());
    }

    #[test]
    fn the_sel4_payload_keeps_the_manifest_and_the_guest_but_no_task_elf() {
        use ipc_proto::manifest::{
            Blob, Guest, Manifest, PayloadHeader, Rights, Task, PAYLOAD_MAGIC,
        };
        use zerocopy::{FromBytes, IntoBytes};
        // A task ELF of 64 KiB at 4096, the guest's image at 69632.
        let elf = Blob {
            offset: 4096,
            len: 65536,
        };
        let image = Blob {
            offset: 69632,
            len: 300,
        };
        let m = Manifest {
            tasks: heapless::Vec::from_slice(&[Task {
                name: "vmm-server".try_into().unwrap(),
                elf,
                rights: Rights {
                    console: true,
                    ..Rights::default()
                },
            }])
            .unwrap(),
            guest: Some(Guest::flat32(16, image, 0x10_0000, 0x10_0000)),
            channels: heapless::Vec::new(),
            uart_channel: 0,
            guest_write_channels: 0,
            links: heapless::Vec::new(),
        };
        let encoded = postcard::to_allocvec(&m).unwrap();
        let header = PayloadHeader {
            magic: PAYLOAD_MAGIC,
            abi_version: ipc_proto::ABI_VERSION,
            manifest_len: encoded.len() as u32,
        };
        let mut payload = header.as_bytes().to_vec();
        payload.extend_from_slice(&encoded);
        payload.resize(69632, 0xee);
        payload.extend((0..300u32).map(|i| i as u8));
        let small = sel4_payload(&payload).unwrap();
        assert!(small.len() < payload.len() - 60_000, "{}", small.len());
        let (h, rest) = PayloadHeader::read_from_prefix(&small).unwrap();
        let got: Manifest = postcard::from_bytes(&rest[..h.manifest_len as usize]).unwrap();
        assert_eq!(got.tasks[0].elf, Blob::default());
        assert_eq!(got.tasks[0].rights, m.tasks[0].rights);
        let g = got.guest.as_ref().unwrap().image;
        assert_eq!(g.len, 300);
        let bytes = &small[g.offset as usize..(g.offset + g.len) as usize];
        assert!(bytes.iter().enumerate().all(|(i, &b)| b == i as u8));
        assert!(sel4_payload(&payload[..100]).is_err());
    }

    #[test]
    fn the_cache_key_follows_the_sources() {
        let a = config_hash(&Sources::Dir(PathBuf::from("."))).unwrap();
        let b = config_hash(&Sources::Dir(PathBuf::from(".."))).unwrap();
        assert_ne!(a, b);
    }
}
