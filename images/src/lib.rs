//! The splitvisor image builder.
//!
//! A system image is one flat file that a multiboot v1 loader (QEMU's
//! `-kernel`, GRUB) loads at physical 0x100000: the ring-0 stub, then a
//! payload holding the boot manifest, the server ELF executables and the
//! guest. [`image`] lays out the bytes; [`build_system`] builds everything
//! from source (the stub and the servers with cargo, the test guests with
//! gcc and ld) and writes `target/image/<guest>.img`. [`iso::build_iso`]
//! wraps an image into a BIOS-bootable GRUB ISO, for Bochs and for real
//! hardware.
//!
//! ```no_run
//! let path = images::build_system("hello", true)?;
//! println!("{}", path.display());
//! # Ok::<(), images::BuildError>(())
//! ```
#![deny(missing_docs)]

pub mod acpi;
pub mod aml;
pub mod elf;
pub mod guests;
pub mod image;
pub mod iso;
pub mod linux;
pub mod loaders;
pub mod rights;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

use ipc_proto::manifest::{Board, Channel, EntryMode, GuestRam, Link, MmuMode, Rights, FAR_END};

pub use guests::{GUESTS, GUEST_LOAD_GPA, GUEST_RAM_MIB};
pub use image::{build_image, GuestInput, ImageError, TaskInput};

/// The target triple of the stub and the servers.
pub const TARGET: &str = "x86_64-unknown-none";

/// Why a system image could not be built.
#[derive(Debug)]
pub enum BuildError {
    /// Cargo could not be started.
    CargoMissing {
        /// The program tried.
        program: String,
        /// Why it did not start.
        source: io::Error,
    },
    /// `cargo build` of the target crates failed.
    CargoFailed(String),
    /// Cargo succeeded but an expected executable is not there.
    OutputMissing(PathBuf),
    /// gcc or ld is not installed.
    ToolMissing(&'static str),
    /// gcc or ld failed.
    ToolFailed {
        /// Which tool.
        tool: &'static str,
        /// Its exit status and messages.
        detail: String,
    },
    /// A guest linked into something the builder cannot use.
    BadGuest(String, String),
    /// No built-in guest has this name.
    UnknownGuest(String),
    /// The parts do not make an image.
    Image(ImageError),
    /// A file could not be read or written.
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: io::Error,
    },
    /// `--inject` names a task the image lacks, or one that takes no
    /// injected faults.
    Inject(String),
}

impl BuildError {
    fn io(path: &Path, source: io::Error) -> Self {
        BuildError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::CargoMissing { program, source } => write!(
                f,
                "could not start cargo (`{program}`): {source}; install Rust with rustup \
                 (https://rustup.rs) or set CARGO to the cargo program"
            ),
            BuildError::CargoFailed(status) => write!(
                f,
                "building kernel-stub and vmm-server for {TARGET} failed ({status}): see \
                 cargo's messages above"
            ),
            BuildError::OutputMissing(p) => write!(
                f,
                "cargo reported success but {} does not exist",
                p.display()
            ),
            BuildError::ToolMissing(tool) => write!(
                f,
                "{tool} not found: install the Debian packages gcc and binutils \
                 (apt-get install gcc binutils)"
            ),
            BuildError::ToolFailed { tool, detail } => {
                write!(f, "{tool} failed on a test guest: {detail}")
            }
            BuildError::BadGuest(name, reason) => {
                write!(f, "guest `{name}` cannot be loaded: {reason}")
            }
            BuildError::UnknownGuest(name) => write!(
                f,
                "no guest named `{name}`: the built-in guests are {}",
                GUESTS.join(", ")
            ),
            BuildError::Image(e) => write!(f, "{e}"),
            BuildError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            BuildError::Inject(why) => write!(f, "--inject: {why}"),
        }
    }
}

impl std::error::Error for BuildError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BuildError::CargoMissing { source, .. } | BuildError::Io { source, .. } => Some(source),
            BuildError::Image(e) => Some(e),
            _ => None,
        }
    }
}

impl From<ImageError> for BuildError {
    fn from(e: ImageError) -> Self {
        BuildError::Image(e)
    }
}

/// The workspace root (the parent of this crate's folder, fixed at compile
/// time).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// Where images and everything built for them go: `<root>/target/image`.
pub fn image_dir() -> PathBuf {
    workspace_root().join("target").join("image")
}

/// A fresh temporary name beside `path`, unique to this process and call.
pub(crate) fn temp_path(path: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.{n}.tmp", std::process::id()))
}

/// Writes `bytes` to `path` through a temporary file and a rename, so that a
/// reader (or a concurrent writer) never sees a half-written file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), BuildError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| BuildError::io(dir, e))?;
    }
    let tmp = temp_path(path);
    let result = std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| BuildError::io(path, e));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The two target executables [`build_target_crates`] produces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetElfs {
    /// The ring-0 stub.
    pub kernel_stub: PathBuf,
    /// The VM-exit server.
    pub vmm_server: PathBuf,
    /// The shadow-paging server.
    pub mmu_server: PathBuf,
    /// COM1 as a server of its own (a binary of the vmm-server package).
    pub uart_server: PathBuf,
}

/// Builds `kernel-stub`, `vmm-server` (with its `uart-server` binary) and
/// `mmu-server` for [`TARGET`] in release mode,
/// with `CARGO_TARGET_DIR=<root>/target/image` (a target folder of its own,
/// so this works while an outer `cargo test` holds `target/`).
///
/// Runs `$CARGO` if set, else `cargo`, in the workspace root so that
/// `rust-toolchain.toml` and `.cargo/config.toml` apply. `RUSTFLAGS` and
/// `CARGO_ENCODED_RUSTFLAGS` are removed from its environment: they would
/// replace the target's rustflags from `.cargo/config.toml`. Cargo's
/// progress goes to stderr; stdout stays clean.
pub fn build_target_crates() -> Result<TargetElfs, BuildError> {
    let [kernel_stub, vmm_server, mmu_server, uart_server] = build_for_target(
        &["kernel-stub", "vmm-server", "mmu-server"],
        ["kernel-stub", "vmm-server", "mmu-server", "uart-server"],
    )?;
    Ok(TargetElfs {
        kernel_stub,
        vmm_server,
        mmu_server,
        uart_server,
    })
}

/// Builds `packages` for [`TARGET`] in release mode, as
/// [`build_target_crates`] says, and returns the paths of the executables
/// named `bins`, each checked to exist.
pub fn build_for_target<const N: usize>(
    packages: &[&str],
    bins: [&str; N],
) -> Result<[PathBuf; N], BuildError> {
    cargo_build(packages, bins, None, &image_dir())
}

/// The stub built with its `bench-inline-exits` feature, which answers
/// the `exitbench` guest's exits in ring 0: `splitvisor bench exits`'s
/// lower bound, never a shipped stub. Built as [`build_target_crates`]
/// says, in a target folder of its own (`target/image/bench-inline`), so
/// the two stubs never replace each other.
pub fn build_bench_inline_stub() -> Result<PathBuf, BuildError> {
    build_bench_stub(true, false)
}

/// A stub for `splitvisor bench exits` only: with `bench-inline-exits`
/// (`inline`) and/or `bench-exit-parts` (`parts`: it sums the ticks spent
/// in the guest, the stub and ring 3), each combination in a target
/// folder of its own (`target/image/bench-inline`, `bench-parts`,
/// `bench-inline-parts`).
pub fn build_bench_stub(inline: bool, parts: bool) -> Result<PathBuf, BuildError> {
    let chosen = [
        (inline, "inline", "kernel-stub/bench-inline-exits"),
        (parts, "parts", "kernel-stub/bench-exit-parts"),
    ]
    .into_iter()
    .filter(|c| c.0);
    let (names, features): (Vec<&str>, Vec<&str>) = chosen.map(|c| (c.1, c.2)).unzip();
    let dir = format!("bench-{}", names.join("-"));
    let [stub] = cargo_build(
        &["kernel-stub"],
        ["kernel-stub"],
        Some(&features.join(",")),
        &image_dir().join(dir),
    )?;
    Ok(stub)
}

fn cargo_build<const N: usize>(
    packages: &[&str],
    bins: [&str; N],
    features: Option<&str>,
    target_dir: &Path,
) -> Result<[PathBuf; N], BuildError> {
    let root = workspace_root();
    let program = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(&program)
        .args(["build", "--release", "--target", TARGET])
        .args(packages.iter().flat_map(|p| ["-p", p]))
        .args(features.iter().flat_map(|f| ["--features", f]))
        .current_dir(&root)
        .env("CARGO_TARGET_DIR", target_dir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .stdin(Stdio::null())
        .stdout(Stdio::from(io::stderr()))
        .status()
        .map_err(|source| BuildError::CargoMissing {
            program: program.to_string_lossy().into_owned(),
            source,
        })?;
    if !status.success() {
        return Err(BuildError::CargoFailed(status.to_string()));
    }
    let out = target_dir.join(TARGET).join("release");
    let paths = bins.map(|b| out.join(b));
    if let Some(missing) = paths.iter().find(|p| !p.is_file()) {
        return Err(BuildError::OutputMissing(missing.clone()));
    }
    Ok(paths)
}

/// What goes into a system image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SystemSpec {
    /// A built-in guest's name, or the path of a multiboot kernel or a boot sector.
    pub guest: String,
    /// Whether the image has a vmm-server (an image without one tests the stub).
    pub with_vmm_server: bool,
    /// Nested or shadow paging.
    pub mmu: MmuMode,
    /// The devices around the guest.
    pub board: Board,
    /// The command line (multiboot and Linux kernels). A multiboot kernel
    /// given by path gets `<path> <cmdline>`, the kernel's path first, as
    /// QEMU's `-kernel` and GRUB pass it (see [`multiboot_cmdline`]); a
    /// built-in guest gets `cmdline` alone.
    pub cmdline: String,
    /// Multiboot modules, each `<path> [args]` (QEMU's `-initrd`, GRUB's
    /// `module`): the file at the path, with the whole string as the
    /// module's command line.
    pub modules: Vec<String>,
    /// Guest RAM in MiB (even, at most 512; the stub's limit).
    pub ram_mib: u32,
    /// An initrd (initramfs) for a Linux bzImage guest.
    pub initrd: Option<PathBuf>,
    /// COM1 runs as a uart-server task, reached from the vmm-server over
    /// channel 0, instead of inside the vmm-server.
    pub uart_server: bool,
    /// Replacement executables for the vmm-server and the mmu-server:
    /// `splitvisor attack`'s hostile servers, and nothing else. `None` (the
    /// default, and every image but the attack campaign's) packs the real
    /// servers.
    pub hostile_servers: Option<HostileServers>,
    /// More servers, after the vmm-server, mmu-server and uart-server:
    /// device servers with the rights their driver needs (ports, IRQ
    /// lines, guest RAM). Empty by default.
    pub device_servers: Vec<DeviceServer>,
    /// Channels to or between device servers, as (client, server) task
    /// names ("vmm-server" and the device servers' names); numbered after
    /// the uart-server's channel, in this order. Either end may `Signal`
    /// the other.
    pub device_channels: Vec<(String, String)>,
    /// Device servers that are PCI functions on the PC board, by name, in
    /// slot order (00:03.0, 00:04.0, ...: `vmm_server::boards::PC_PCI_SLOTS`);
    /// each needs a channel from the vmm-server in `device_channels`. The
    /// image builder writes their channels into the vmm-server's PCI
    /// function table (`ipc_proto::pci::FUNCTIONS_MAGIC`). Empty by default.
    pub pci_functions: Vec<String>,
    /// A PCI function's server reads host console input (a virtio
    /// console): the vmm-server's COM1 then gets none.
    pub pci_takes_host_input: bool,
    /// Faults injected on purpose (`splitvisor run --inject`): a task's
    /// name and what it does at its N-th exit or request, patched into the
    /// configuration block of that task's ELF (`ipc_proto::inject`).
    /// Empty by default.
    pub inject: Vec<(String, ipc_proto::inject::Injection)>,
    /// The vmm-server and the mmu-server record a trace (`splitvisor run
    /// --trace`), patched into their trace blocks (`ipc_proto::trace`).
    /// None by default.
    pub trace: Option<ipc_proto::trace::TraceConfig>,
    /// The stub built with `bench-inline-exits` ([`build_bench_inline_stub`]):
    /// `splitvisor bench exits`'s in-stub handler. False by default.
    pub bench_inline_stub: bool,
    /// The stub built with `bench-exit-parts` ([`build_bench_stub`]):
    /// `splitvisor bench exits --parts`. False by default.
    pub bench_parts_stub: bool,
    /// Forward rules of the machine's user-mode network (`--net
    /// user,guestfwd=...`): for the emulator's command line, not part of
    /// the image. Empty by default.
    pub net_forwards: Vec<String>,
    /// The image's other VMs (`run --vms`, `run --config`), each with its
    /// own servers and guest; this spec is VM 0. Empty by default.
    pub more_vms: Vec<SystemSpec>,
    /// VM 0's spec only: the tasks in no VM (a switch shared by the VMs),
    /// which a VM's `device_channels` name as `sys:NAME` ([`IN_NO_VM`]).
    /// Empty by default.
    pub no_vm_servers: Vec<DeviceServer>,
    /// The host CPU this VM runs on (0: the boot CPU; `run --cpus`, `cpu`
    /// in `--config`). 0 by default.
    pub cpu: u8,
    /// Host CPUs the emulator runs the image with (QEMU's `-smp`, Bochs's
    /// `cpu: count=`): for its command line, not part of the image; VM 0's
    /// counts. 1 by default.
    pub host_cpus: u8,
}

/// A device server to pack into the image: its name, its ELF (built for
/// the bare target, linked with `stub-abi/server.ld`) and its rights.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceServer {
    /// Its name in the manifest (at most 16 bytes), for messages and
    /// `--show-rights`.
    pub name: String,
    /// Its executable.
    pub elf: PathBuf,
    /// What the stub lets it do.
    pub rights: Rights,
}

/// The hostile servers of `splitvisor attack` (crate `attack/`), packed in
/// place of the real ones under the same task kinds. Only the attack
/// campaign sets [`SystemSpec::hostile_servers`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostileServers {
    /// Packed as the vmm-server.
    pub vmm_server: PathBuf,
    /// Packed as the mmu-server.
    pub mmu_server: PathBuf,
    /// Added to the image's file name (`<guest>-attack-<tag>.img`), so that
    /// the campaign's images never replace an ordinary one.
    pub tag: String,
}

impl SystemSpec {
    /// A guest with a vmm-server, nested paging and an empty command line.
    pub fn new(guest: &str) -> Self {
        Self {
            guest: guest.to_string(),
            with_vmm_server: true,
            mmu: MmuMode::Nested,
            board: Board::default(),
            cmdline: String::new(),
            ram_mib: GUEST_RAM_MIB,
            initrd: None,
            modules: Vec::new(),
            uart_server: false,
            hostile_servers: None,
            device_servers: Vec::new(),
            device_channels: Vec::new(),
            pci_functions: Vec::new(),
            pci_takes_host_input: false,
            inject: Vec::new(),
            trace: None,
            bench_inline_stub: false,
            bench_parts_stub: false,
            net_forwards: Vec::new(),
            more_vms: Vec::new(),
            no_vm_servers: Vec::new(),
            cpu: 0,
            host_cpus: 1,
        }
    }

    /// The guest RAM of every VM of the image, in MiB.
    pub fn all_ram_mib(&self) -> u32 {
        self.more_vms.iter().map(|s| s.ram_mib).sum::<u32>() + self.ram_mib
    }

    /// The number of the channel from `client` to `server` in the image
    /// (the uart-server's channel first, then [`SystemSpec::device_channels`]
    /// in order), as the stub numbers them: what a device server is told
    /// to `Call`.
    pub fn channel_number(&self, client: &str, server: &str) -> Option<u8> {
        let first = usize::from(self.uart_server && self.with_vmm_server);
        let at = self
            .device_channels
            .iter()
            .position(|(c, s)| c == client && s == server)?;
        u8::try_from(first + at).ok()
    }

    /// The image's file name: the guest's name (or file stem) and what differs from the default.
    pub fn image_file_name(&self) -> String {
        let stem = Path::new(&self.guest)
            .file_stem()
            .map_or("guest".into(), |s| s.to_string_lossy().into_owned());
        let mut name = stem;
        if !self.with_vmm_server {
            name.push_str("-no-vmm");
        }
        if self.mmu == MmuMode::ShadowBaseline {
            name.push_str("-baseline");
        } else if self.mmu == MmuMode::Shadow {
            name.push_str("-shadow");
        }
        if self.uart_server {
            name.push_str("-uart");
        }
        if self.board != Board::default() {
            name.push_str(match self.board {
                Board::Isa => "-isa",
                Board::Pc => "-pc",
            });
        }
        if let Some(h) = &self.hostile_servers {
            name.push_str("-attack-");
            name.push_str(&h.tag);
        }
        for d in &self.device_servers {
            name.push('-');
            name.push_str(&d.name);
        }
        for (task, inj) in &self.inject {
            name.push_str(&format!("-{task}-{inj}").replace('@', "-"));
        }
        if self.bench_inline_stub {
            name.push_str("-bench-inline");
        }
        if self.bench_parts_stub {
            name.push_str("-bench-parts");
        }
        if self.trace.is_some() {
            name.push_str("-trace");
        }
        name + ".img"
    }
}

/// The file name of a system image.
pub fn image_file_name(guest: &str, with_vmm_server: bool) -> String {
    SystemSpec {
        with_vmm_server,
        ..SystemSpec::new(guest)
    }
    .image_file_name()
}

/// Builds everything and writes the system image for a built-in guest to
/// `<root>/target/image/<guest>.img` (`<guest>-no-vmm.img` without the
/// vmm-server); returns its path.
pub fn build_system(guest_name: &str, with_vmm_server: bool) -> Result<PathBuf, BuildError> {
    build_system_spec(&SystemSpec {
        with_vmm_server,
        ..SystemSpec::new(guest_name)
    })
}

/// Loads a guest: a built-in one by name (a multiboot kernel if its linked
/// ELF has a multiboot header, a boot sector if it links at 0x7c00, flat
/// 32-bit code otherwise), or a file by path.
fn load_guest(spec: &SystemSpec, dir: &Path) -> Result<loaders::LoadedGuest, BuildError> {
    let bad = |reason: String| BuildError::BadGuest(spec.guest.clone(), reason);
    if GUESTS.contains(&spec.guest.as_str()) {
        let g = guests::build_guest(&workspace_root(), &spec.guest, &dir.join("guests"))?;
        let elf = std::fs::read(&g.elf_path).map_err(|e| BuildError::io(&g.elf_path, e))?;
        if loaders::find_multiboot_header(&elf).is_some() {
            let modules = read_modules(&spec.modules)?;
            return loaders::load_multiboot(&elf, spec.ram_mib, &spec.cmdline, &modules.borrowed())
                .map_err(bad);
        }
        if g.load_gpa == loaders::BOOT_SECTOR_GPA {
            return loaders::load_boot_sector(&g.flat).map_err(bad);
        }
        return Ok(loaders::LoadedGuest {
            flat: g.flat,
            load_gpa: g.load_gpa,
            entry: g.entry,
            entry_mode: EntryMode::Flat32,
            entry_regs: [0; 3],
            segments: Vec::new(),
        });
    }
    let path = Path::new(&spec.guest);
    if !path.exists() {
        return Err(BuildError::UnknownGuest(spec.guest.clone()));
    }
    let bytes = std::fs::read(path).map_err(|e| BuildError::io(path, e))?;
    let multiboot = loaders::find_multiboot_header(&bytes).is_some();
    if !spec.modules.is_empty() && (!multiboot || linux::looks_like_bzimage(&bytes)) {
        return Err(bad(
            "modules are for multiboot kernels; this is not one (a Linux kernel takes an initrd)"
                .into(),
        ));
    }
    if linux::looks_like_bzimage(&bytes) || spec.initrd.is_some() {
        let initrd = match &spec.initrd {
            Some(p) => Some(std::fs::read(p).map_err(|e| BuildError::io(p, e))?),
            None => None,
        };
        linux::load_linux(&bytes, initrd.as_deref(), &spec.cmdline, spec.ram_mib).map_err(bad)
    } else if multiboot {
        let modules = read_modules(&spec.modules)?;
        let cmdline = multiboot_cmdline(&spec.guest, &spec.cmdline);
        loaders::load_multiboot(&bytes, spec.ram_mib, &cmdline, &modules.borrowed()).map_err(bad)
    } else {
        loaders::load_boot_sector(&bytes).map_err(|e| {
            bad(format!(
                "neither a multiboot kernel (no multiboot header) nor a boot sector ({e})"
            ))
        })
    }
}

/// The multiboot command line of a kernel at `path`: `<path> <args>`, as
/// QEMU's `-kernel` builds it (`"%s %s"`, so an empty `args` leaves a
/// trailing space) and GRUB's `multiboot` passes it; GNU Mach and other
/// kernels skip the first word.
pub fn multiboot_cmdline(path: &str, args: &str) -> String {
    format!("{path} {args}")
}

/// Files and strings of multiboot modules.
struct Modules(Vec<(Vec<u8>, String)>);

impl Modules {
    fn borrowed(&self) -> Vec<loaders::MultibootModule<'_>> {
        self.0
            .iter()
            .map(|(bytes, cmdline)| loaders::MultibootModule { bytes, cmdline })
            .collect()
    }
}

/// Reads each module's file: the first word of `<path> [args]`.
fn read_modules(specs: &[String]) -> Result<Modules, BuildError> {
    let mut out = Vec::new();
    for m in specs {
        let path = Path::new(m.split_whitespace().next().unwrap_or(""));
        let bytes = std::fs::read(path).map_err(|e| BuildError::io(path, e))?;
        out.push((bytes, m.clone()));
    }
    Ok(Modules(out))
}

/// How a VM's `device_channels` name a task in no VM: `sys:switch`.
pub const IN_NO_VM: &str = "sys:";

/// The channels of the tasks in no VM and their links, from every VM's
/// channels that name one (`sys:NAME`, [`IN_NO_VM`]): numbered VM by VM,
/// each VM's in its own order. `no_vm` are their names.
pub fn no_vm_channels(
    specs: &[SystemSpec],
    no_vm: &[&str],
) -> Result<Vec<(Channel, Link)>, String> {
    let mut out = Vec::new();
    for (vm, spec) in specs.iter().enumerate() {
        for (client, server) in &spec.device_channels {
            let index = |name: &str| -> Result<Option<u8>, String> {
                let Some(name) = name.strip_prefix(IN_NO_VM) else {
                    return Ok(None);
                };
                let i = no_vm
                    .iter()
                    .position(|t| *t == name)
                    .ok_or_else(|| format!("no task in no VM is called {name}"))?;
                Ok(Some(i as u8))
            };
            let (c, s) = (index(client)?, index(server)?);
            if c.is_none() && s.is_none() {
                continue;
            }
            let channel = u8::try_from(out.len()).map_err(|_| "too many channels".to_string())?;
            let vm_channel = spec
                .channel_number(client, server)
                .ok_or("a channel has no number")?;
            out.push((
                Channel {
                    client: c.unwrap_or(FAR_END),
                    server: s.unwrap_or(FAR_END),
                },
                Link {
                    channel,
                    vm: u8::try_from(vm).map_err(|_| "too many VMs".to_string())?,
                    vm_channel,
                },
            ));
        }
    }
    Ok(out)
}

/// The tasks of the image `spec` asks for, by name with their rights, and
/// the channels between them (by task index).
pub fn system_tasks(spec: &SystemSpec) -> (Vec<(&str, Rights)>, Vec<Channel>) {
    let mut tasks = Vec::new();
    let mut channels = Vec::new();
    if spec.with_vmm_server {
        tasks.push(("vmm-server", rights::vmm_server()));
    }
    // Every image has the mmu-server: it builds the shadow tables, or the
    // nested tables (NPT, EPT) under nested paging.
    tasks.push(("mmu-server", rights::mmu_server()));
    if spec.uart_server {
        tasks.push(("uart-server", rights::uart_server()));
        if spec.with_vmm_server {
            channels.push(Channel {
                client: 0,
                server: (tasks.len() - 1) as u8,
            });
        }
    }
    for d in &spec.device_servers {
        tasks.push((d.name.as_str(), d.rights.clone()));
    }
    for (client, server) in &spec.device_channels {
        let index = |name: &str| tasks.iter().position(|(n, _)| *n == name);
        // A name that is not a task: the channel names task 255, which
        // the manifest check refuses with its reason. A task in no VM is
        // the far end, joined by a link (`no_vm_channels`).
        let end = |name: &str| match index(name) {
            Some(i) => i as u8,
            None if name.starts_with(IN_NO_VM) => FAR_END,
            None => u8::MAX,
        };
        channels.push(Channel {
            client: end(client),
            server: end(server),
        });
    }
    // Shadow paging: every task that writes guest RAM in place (the
    // vmm-server, device servers granted it read-write) tells the
    // mmu-server which frames it wrote over a channel of its own
    // (`ipc_proto::guest_writes`), numbered after all the others.
    let shadow = matches!(spec.mmu, MmuMode::Shadow | MmuMode::ShadowBaseline);
    if let (true, Some(mmu)) = (shadow, tasks.iter().position(|(n, _)| *n == "mmu-server")) {
        for (i, (_, r)) in tasks.iter().enumerate() {
            let writes = r.guest_ram == GuestRam::ReadWrite;
            if writes && i != mmu {
                channels.push(Channel {
                    client: i as u8,
                    server: mmu as u8,
                });
            }
        }
    }
    (tasks, channels)
}

/// The vmm-server `vmm` with its PCI function table filled from
/// `spec.pci_functions` (unchanged when there are none).
pub fn patch_pci_functions(spec: &SystemSpec, mut vmm: Vec<u8>) -> Result<Vec<u8>, BuildError> {
    use ipc_proto::pci::{FUNCTIONS_MAGIC, FUNCTION_SLOTS, TAKES_HOST_INPUT};
    if spec.pci_functions.is_empty() {
        return Ok(vmm);
    }
    let bad = |why: String| BuildError::BadGuest(spec.guest.clone(), why);
    if spec.board != Board::Pc {
        return Err(bad(
            "PCI functions (virtio devices) need the PC board".into()
        ));
    }
    if spec.pci_functions.len() > FUNCTION_SLOTS {
        return Err(bad(format!(
            "{} PCI functions; the board has {FUNCTION_SLOTS} slots",
            spec.pci_functions.len()
        )));
    }
    let (tasks, channels) = system_tasks(spec);
    let name = |i: u8| tasks.get(usize::from(i)).map(|t| t.0);
    let at = vmm
        .windows(FUNCTIONS_MAGIC.len())
        .position(|w| w == FUNCTIONS_MAGIC)
        .ok_or_else(|| bad("the vmm-server has no PCI function table".into()))?
        + FUNCTIONS_MAGIC.len();
    for (slot, f) in spec.pci_functions.iter().enumerate() {
        let ch = channels
            .iter()
            .position(|c| name(c.client) == Some("vmm-server") && name(c.server) == Some(f))
            .ok_or_else(|| bad(format!("no channel from the vmm-server to {f}")))?;
        vmm[at + slot] = u8::try_from(ch + 1).map_err(|_| bad("too many channels".into()))?;
    }
    vmm[at + FUNCTION_SLOTS] = if spec.pci_takes_host_input {
        TAKES_HOST_INPUT
    } else {
        0
    };
    Ok(vmm)
}

/// `splitvisor build --show-rights`: who may do what in the image `spec`
/// asks for.
pub fn rights_table(spec: &SystemSpec) -> String {
    let (tasks, channels) = system_tasks(spec);
    let named: Vec<(&str, &Rights)> = tasks.iter().map(|(n, r)| (*n, r)).collect();
    let mut table = rights::table(&named, &channels);
    if !spec.no_vm_servers.is_empty() {
        table.push_str("tasks in no VM:\n");
        let named: Vec<(&str, &Rights)> = spec
            .no_vm_servers
            .iter()
            .map(|d| (d.name.as_str(), &d.rights))
            .collect();
        table.push_str(&rights::table(&named, &[]));
    }
    table
}

/// Builds everything `spec` asks for and writes the image to
/// `<root>/target/image/`; returns its path.
pub fn build_system_spec(spec: &SystemSpec) -> Result<PathBuf, BuildError> {
    let first = SystemSpec {
        more_vms: Vec::new(),
        ..spec.clone()
    };
    let specs: Vec<SystemSpec> = [first].into_iter().chain(spec.more_vms.clone()).collect();
    build_system_specs(&specs)
}

/// Builds an image of one VM per spec (VM n from `specs[n]`, each with its
/// own servers; the stub is the first spec's) and writes it to
/// `<root>/target/image/`; returns its path.
pub fn build_system_specs(specs: &[SystemSpec]) -> Result<PathBuf, BuildError> {
    let first = specs
        .first()
        .ok_or(BuildError::Image(image::ImageError::TooManyVms(0)))?;
    let dir = image_dir();
    let elfs = build_target_crates()?;
    let read = |p: &Path| std::fs::read(p).map_err(|e| BuildError::io(p, e));
    let stub = if first.bench_inline_stub || first.bench_parts_stub {
        read(&build_bench_stub(
            first.bench_inline_stub,
            first.bench_parts_stub,
        )?)?
    } else {
        read(&elfs.kernel_stub)?
    };
    let mut payloads = specs
        .iter()
        .map(|spec| vm_payload(spec, &elfs, &dir))
        .collect::<Result<Vec<_>, _>>()?;
    if !first.no_vm_servers.is_empty() {
        payloads.push(no_vm_payload(specs)?);
    }
    let (payload, name) = match payloads.as_slice() {
        [one] => (one.clone(), first.image_file_name()),
        _ => {
            let names: Vec<String> = specs.iter().map(SystemSpec::image_file_name).collect();
            let name = format!("vms-{}", names.join("+").replace(".img", ""));
            (image::join_payloads(&payloads)?, format!("{name}.img"))
        }
    };
    let image = image::image_with_payload(&stub, &payload)?;
    let path = dir.join(name);
    write_atomic(&path, &image)?;
    Ok(path)
}

/// The payload of the tasks in no VM of the first spec, after the VMs'.
fn no_vm_payload(specs: &[SystemSpec]) -> Result<Vec<u8>, BuildError> {
    let servers = specs.first().map_or(&[][..], |s| &s.no_vm_servers[..]);
    let names: Vec<&str> = servers.iter().map(|d| d.name.as_str()).collect();
    let bad = |why: String| BuildError::Image(image::ImageError::BadRights(why));
    let (channels, links): (Vec<Channel>, Vec<Link>) = no_vm_channels(specs, &names)
        .map_err(bad)?
        .into_iter()
        .unzip();
    let mut elfs = servers
        .iter()
        .map(|d| std::fs::read(&d.elf).map_err(|e| BuildError::io(&d.elf, e)))
        .collect::<Result<Vec<_>, _>>()?;
    let inject = specs.first().map_or(&[][..], |s| &s.inject[..]);
    for (task, inj) in inject {
        if let Some(i) = names.iter().position(|n| n == task) {
            ipc_proto::inject::patch(&mut elfs[i], inj)
                .map_err(|e| BuildError::Inject(format!("{task}: {e}")))?;
        }
    }
    let tasks: Vec<TaskInput> = servers
        .iter()
        .zip(&elfs)
        .map(|(d, elf)| TaskInput {
            name: &d.name,
            rights: d.rights.clone(),
            elf,
        })
        .collect();
    Ok(image::build_no_vm_payload(&tasks, &channels, &links)?)
}

/// The payload of one VM: its servers and guest.
fn vm_payload(spec: &SystemSpec, elfs: &TargetElfs, dir: &Path) -> Result<Vec<u8>, BuildError> {
    let guest = load_guest(spec, dir)?;
    let read = |p: &Path| std::fs::read(p).map_err(|e| BuildError::io(p, e));
    let (vmm, mmu) = match &spec.hostile_servers {
        Some(h) => (read(&h.vmm_server)?, read(&h.mmu_server)?),
        None => (read(&elfs.vmm_server)?, read(&elfs.mmu_server)?),
    };
    let mut vmm = patch_pci_functions(spec, vmm)?;
    let mut mmu = mmu;
    if let Some(t) = &spec.trace {
        // Both servers record: the same block in each ELF.
        for (name, elf) in [("vmm-server", &mut vmm), ("mmu-server", &mut mmu)] {
            ipc_proto::trace::patch(elf, t).map_err(|e| {
                BuildError::BadGuest(spec.guest.clone(), format!("--trace: {name}: {e}"))
            })?;
        }
    }
    let uart = read(&elfs.uart_server)?;
    let devices = spec
        .device_servers
        .iter()
        .map(|d| read(&d.elf))
        .collect::<Result<Vec<_>, _>>()?;
    let (named, channels) = system_tasks(spec);
    // Each injected fault patched into a copy of its task's ELF.
    let mut patched: Vec<(&str, Vec<u8>)> = Vec::new();
    // A fault for a task in no VM this VM links to is patched there.
    let in_no_vm = |task: &str| {
        let named = |n: &String| n.strip_prefix(IN_NO_VM) == Some(task);
        spec.device_channels
            .iter()
            .any(|(c, s)| named(c) || named(s))
    };
    for (task, inj) in spec.inject.iter().filter(|(t, _)| !in_no_vm(t)) {
        let (name, _) = named
            .iter()
            .find(|(n, _)| n == task)
            .ok_or_else(|| BuildError::Inject(format!("the image has no task {task}")))?;
        let mut elf = match *name {
            "vmm-server" => vmm.clone(),
            "mmu-server" => mmu.clone(),
            "uart-server" => uart.clone(),
            _ => spec
                .device_servers
                .iter()
                .position(|d| d.name == *name)
                .map_or_else(|| uart.clone(), |i| devices[i].clone()),
        };
        ipc_proto::inject::patch(&mut elf, inj)
            .map_err(|e| BuildError::Inject(format!("{task}: {e}")))?;
        patched.push((name, elf));
    }
    let tasks: Vec<TaskInput> = named
        .into_iter()
        .map(|(name, rights)| TaskInput {
            name,
            elf: match name {
                _ if patched.iter().any(|(n, _)| *n == name) => patched
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map_or(&uart, |(_, e)| e),
                "vmm-server" => &vmm,
                "mmu-server" => &mmu,
                "uart-server" => &uart,
                _ => spec
                    .device_servers
                    .iter()
                    .position(|d| d.name == name)
                    .map_or(&uart, |i| &devices[i]),
            },
            rights,
        })
        .collect();
    // The PC board's ACPI tables go where firmware puts them: the BIOS
    // area at 0xE0000, which every memory map here reserves.
    let mut segments = guest.segments.clone();
    if spec.board == Board::Pc {
        segments.push((
            acpi::ACPI_TABLES_GPA,
            acpi::build(&acpi::AcpiConfig::default()),
        ));
    }
    let input = GuestInput {
        entry_mode: guest.entry_mode,
        entry_regs: guest.entry_regs,
        segments: &segments,
        mmu: spec.mmu,
        board: spec.board,
        cpu: spec.cpu,
        ..GuestInput::flat32(&guest.flat, guest.load_gpa, guest.entry, spec.ram_mib)
    };
    Ok(image::build_payload(&tasks, &channels, &input)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pci_function_table_gets_each_slots_channel() {
        use ipc_proto::pci::{FUNCTIONS_MAGIC, FUNCTION_SLOTS, TAKES_HOST_INPUT};
        let mut vmm = vec![0xaa; 8];
        vmm.extend_from_slice(&FUNCTIONS_MAGIC);
        vmm.extend_from_slice(&[0; FUNCTION_SLOTS + 4]);
        let mut spec = SystemSpec {
            board: Board::Pc,
            uart_server: true,
            ..SystemSpec::new("hello")
        };
        assert_eq!(patch_pci_functions(&spec, vmm.clone()).unwrap(), vmm);
        spec.device_servers.push(DeviceServer {
            name: "virtio-console".into(),
            elf: "unused".into(),
            rights: Rights::default(),
        });
        spec.device_channels
            .push(("vmm-server".into(), "virtio-console".into()));
        spec.pci_functions.push("virtio-console".into());
        spec.pci_takes_host_input = true;
        let out = patch_pci_functions(&spec, vmm.clone()).unwrap();
        let at = 8 + FUNCTIONS_MAGIC.len();
        // Channel 0 is the uart-server's: the virtio console's is 1, + 1.
        assert_eq!(
            out[at..at + FUNCTION_SLOTS + 1],
            [2, 0, 0, 0, TAKES_HOST_INPUT]
        );
        spec.board = Board::Isa;
        assert!(
            patch_pci_functions(&spec, vmm.clone()).is_err(),
            "ISA has no PCI functions"
        );
        spec.board = Board::Pc;
        spec.device_channels.clear();
        assert!(patch_pci_functions(&spec, vmm).is_err(), "no channel");
    }

    #[test]
    fn channel_numbers_follow_the_manifests_channels() {
        let mut spec = SystemSpec::new("hello");
        spec.device_channels = vec![
            ("vmm-server".into(), "virtio-blk".into()),
            ("virtio-blk".into(), "disk-driver".into()),
        ];
        for d in ["disk-driver", "virtio-blk"] {
            spec.device_servers.push(DeviceServer {
                name: d.into(),
                elf: PathBuf::new(),
                rights: Rights::default(),
            });
        }
        for uart in [false, true] {
            spec.uart_server = uart;
            let (tasks, channels) = system_tasks(&spec);
            let n = spec.channel_number("virtio-blk", "disk-driver").unwrap();
            let c = channels[usize::from(n)];
            assert_eq!(tasks[usize::from(c.client)].0, "virtio-blk");
            assert_eq!(tasks[usize::from(c.server)].0, "disk-driver");
        }
        assert_eq!(spec.channel_number("disk-driver", "virtio-blk"), None);
    }

    #[test]
    fn workspace_root_holds_the_workspace_manifest() {
        let root = workspace_root();
        assert!(root.join("Cargo.toml").is_file());
        assert!(root
            .join("images")
            .join("guests")
            .join("guest.ld")
            .is_file());
    }

    #[test]
    fn image_names() {
        assert_eq!(image_file_name("hello", true), "hello.img");
        assert_eq!(image_file_name("hello", false), "hello-no-vmm.img");
        let spec = SystemSpec {
            uart_server: true,
            mmu: MmuMode::Shadow,
            ..SystemSpec::new("hello")
        };
        assert_eq!(spec.image_file_name(), "hello-shadow-uart.img");
        // The in-stub benchmark's image never takes a shipped image's name.
        let spec = SystemSpec {
            bench_inline_stub: true,
            ..SystemSpec::new("exitbench")
        };
        assert_eq!(spec.image_file_name(), "exitbench-bench-inline.img");
        let spec = SystemSpec {
            bench_parts_stub: true,
            ..spec
        };
        assert_eq!(
            spec.image_file_name(),
            "exitbench-bench-inline-bench-parts.img"
        );
    }

    #[test]
    fn write_atomic_replaces_the_file() {
        let dir = image_dir().join("test-write-atomic");
        let path = dir.join(format!("f{}", std::process::id()));
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn the_kernel_path_comes_first_on_a_multiboot_command_line() {
        assert_eq!(multiboot_cmdline("/boot/k", "-s a=b"), "/boot/k -s a=b");
        assert_eq!(multiboot_cmdline("/boot/k", ""), "/boot/k ");
    }

    #[test]
    fn a_kernel_by_path_gets_its_path_first_and_its_modules() {
        let dir = image_dir().join("test-modules");
        std::fs::create_dir_all(&dir).unwrap();
        let id = std::process::id();
        let kernel = dir.join(format!("kernel{id}"));
        let module = dir.join(format!("module{id}"));
        // An a.out-kludge kernel at 1 MiB: magic, flags, checksum, fields.
        let mut k = Vec::new();
        let flags = 1u32 << 16;
        for v in [
            0x1bad_b002u32,
            flags,
            0u32.wrapping_sub(0x1bad_b002 + flags),
        ] {
            k.extend_from_slice(&v.to_le_bytes());
        }
        for v in [0x10_0000u32, 0x10_0000, 0, 0, 0x10_0000] {
            k.extend_from_slice(&v.to_le_bytes());
        }
        std::fs::write(&kernel, &k).unwrap();
        std::fs::write(&module, b"module bytes").unwrap();
        let (kp, mp) = (kernel.to_string_lossy(), module.to_string_lossy());
        let spec = SystemSpec {
            cmdline: "-s".into(),
            modules: vec![format!("{mp} arg")],
            ..SystemSpec::new(&kp)
        };
        let g = load_guest(&spec, &dir).unwrap();
        let (gpa, info) = &g.segments[0];
        let text = String::from_utf8_lossy(info);
        assert!(text.contains(&format!("{kp} -s\0")), "{text:?}");
        assert!(text.contains(&format!("{mp} arg\0")));
        assert_eq!(g.segments[1].1, b"module bytes");
        assert!(g.segments[1].0 > *gpa);
        std::fs::remove_file(&kernel).unwrap();
        std::fs::remove_file(&module).unwrap();
    }

    #[test]
    fn modules_need_a_multiboot_kernel() {
        let dir = image_dir().join("test-modules");
        std::fs::create_dir_all(&dir).unwrap();
        let sector = dir.join(format!("sector{}", std::process::id()));
        let mut s = vec![0u8; 512];
        s[510] = 0x55;
        s[511] = 0xaa;
        std::fs::write(&sector, &s).unwrap();
        let spec = SystemSpec {
            modules: vec![sector.to_string_lossy().into_owned()],
            ..SystemSpec::new(&sector.to_string_lossy())
        };
        let e = load_guest(&spec, &dir).unwrap_err().to_string();
        assert!(e.contains("modules are for multiboot kernels"), "{e}");
        std::fs::remove_file(&sector).unwrap();
    }

    #[test]
    fn unknown_guest_fails_before_building_anything() {
        let e = build_system("no-such-guest", true).unwrap_err();
        assert!(matches!(e, BuildError::UnknownGuest(_)));
        assert!(e.to_string().contains("hello, status42, triple-fault"));
    }

    /// Builds every built-in guest with the real gcc and ld, concurrently
    /// (as parallel tests do), and checks the flat images.
    #[test]
    fn builtin_guests_assemble_and_link() {
        let root = workspace_root();
        let out = image_dir().join("guests");
        let handles: Vec<_> = GUESTS
            .iter()
            .chain(GUESTS)
            .map(|name| {
                let (root, out) = (root.clone(), out.clone());
                std::thread::spawn(move || build_guest_checked(&root, name, &out))
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    }

    fn build_guest_checked(root: &Path, name: &str, out: &Path) {
        let g = match guests::build_guest(root, name, out) {
            Ok(g) => g,
            Err(e) => panic!("{name}: {e}"),
        };
        if !matches!(name, "hello" | "status42" | "triple-fault" | "clihlt") {
            // The vmm-server's guests (issue 4): a boot sector at 0x7c00
            // ending with 0x55 0xAA, or 32-bit code at 1 MiB; each ends
            // through the debug-exit port (`out 0xF4, al`, E6 F4).
            if g.load_gpa == loaders::BOOT_SECTOR_GPA {
                assert_eq!(g.flat[510..512], [0x55, 0xaa], "{name}");
            } else {
                assert_eq!(g.load_gpa, GUEST_LOAD_GPA, "{name}");
            }
            assert!(g.flat.windows(2).any(|w| w == [0xE6, 0xF4]), "{name}");
            return;
        }
        assert_eq!(g.load_gpa, GUEST_LOAD_GPA);
        assert_eq!(g.entry, GUEST_LOAD_GPA, "_start comes first");
        assert_eq!(g.flat[0], 0xFA, "{name} starts with cli");
        let text = String::from_utf8_lossy(&g.flat);
        let expected = match name {
            "hello" => "hello from the guest\n",
            "status42" => "exiting with status 42\n",
            "clihlt" => "clihlt guest: cli; hlt with no status on port 0xf4\n",
            _ => "triple-fault guest",
        };
        assert!(text.contains(expected), "{name}");
        // `out 0xF4, al` (E6 F4) ends the two well-behaved guests.
        if name == "clihlt" {
            // cli; hlt, and no `out 0xF4, al`.
            assert!(g.flat.windows(2).any(|w| w == [0xFA, 0xF4]), "{name}");
            assert!(!g.flat.windows(2).any(|w| w == [0xE6, 0xF4]), "{name}");
        } else if name != "triple-fault" {
            assert!(g.flat.windows(2).any(|w| w == [0xE6, 0xF4]), "{name}");
        } else {
            assert!(g.flat.contains(&0xCC), "int3");
        }
        assert!(g.flat.len() <= 16 << 10);
    }
}
