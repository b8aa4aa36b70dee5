//! `splitvisor`: build a system image, boot it in QEMU with emulated SVM or
//! in Bochs with emulated VMX or SVM, count the privileged code.

mod bench;
mod bench_boot;
mod bench_exits;
mod bench_io;
mod bench_smp;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use splitvisor::accel::{self, AccelChoice, AccelError};
use splitvisor::{loc, run, Arch, EmulatorKind, RunOptions, DEFAULT_EMULATOR, EXIT_CODES_HELP};

/// A hypervisor built like a microkernel: a small ring-0 stub enters the
/// guest, unprivileged servers handle its exits.
#[derive(Parser)]
#[command(name = "splitvisor", version, after_help = EXIT_CODES_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the bootable image for a guest and print its path.
    ///
    /// Builds kernel-stub and vmm-server (cargo, target x86_64-unknown-none,
    /// in target/image), assembles the guest (gcc, ld) and writes
    /// target/image/GUEST.img (GUEST-no-vmm.img with --no-vmm-server).
    Build(BuildArgs),
    /// Build the image and boot it in QEMU (TCG, emulated SVM; or KVM with
    /// the host's SVM or VMX, --accel kvm), or its GRUB ISO in Bochs
    /// (emulated VMX or SVM) with --emulator bochs.
    ///
    /// The serial console (stub, vmm-server and guest output) goes to stdout
    /// as it arrives; build progress and the verdict go to stderr. Keys go
    /// to the guest, Ctrl-C included; Ctrl-A X quits (see below).
    #[command(after_help = format!("{}\n\n{EXIT_CODES_HELP}", run::CONSOLE_HELP))]
    Run(RunArgs),
    /// Count the privileged code: Rust lines and unsafe blocks under
    /// kernel-stub/src.
    ///
    /// Lines are non-blank lines with something besides comments on them.
    Loc(LocArgs),
    /// Benchmarks: `bench mmu` (the shadow MMU's context-switch benchmark,
    /// cached against the 2006 baseline, in the simulator and on QEMU) and
    /// `bench boot` (Debian's kernel to init: plain QEMU against splitvisor
    /// with nested and with shadow paging) and `bench exits` (the cost of
    /// one exit of each kind against plain QEMU).
    Bench(bench::BenchArgs),
    /// The attack campaign: hostile servers and guests against the stub.
    ///
    /// Builds a hostile mmu-server and vmm-server (crate attack/, never in
    /// a normal image) that attack the stub with page-table installs,
    /// resumes, system calls with hostile pointers and lengths, shadow-table
    /// exhaustion and x87/SSE instructions, each attempt judged by an
    /// oracle written from the ABI documentation and the manuals, and then
    /// run the normal server logic so that the probe guest (hello) runs to
    /// its end. Boots them in QEMU with emulated SVM, nested
    /// (EPYC,+svm,+npt) and shadow (EPYC,+svm,-npt) paging, five boots per
    /// mode (main, destructive, FPU, random, and restart: the mmu-server
    /// faults on purpose and its next instance uses the freed handles) plus
    /// one more for each attempt that ends a run; with the real servers, also boots the guest-side attacks
    /// tssescape and efersvme when the image builder has them. Prints a
    /// table (class, attempts, refused, accepted as allowed, stub faults,
    /// escapes, denied controls) and lists every stub fault and escape.
    /// Exits 0 when there are no stub faults and no escapes, else 1.
    Attack(AttackArgs),
    /// Replay a trace (`run --trace FILE`) through the vmm-server's exit
    /// handler on this host and compare every decision it makes with the
    /// recorded one.
    ///
    /// Prints `N exits, identical` or where the first decision or input
    /// differs (the exit, the recorded event and what the handler did),
    /// then the replay speed in exits per second. Exits 0 when identical,
    /// 1 at a divergence, 2 when the file cannot be replayed (not a trace,
    /// or recorded with --uart-server or virtio devices, whose replies are
    /// not recorded yet).
    Replay(ReplayArgs),
    /// Sum up a trace (`run --trace FILE`): exits per reason, the
    /// vmm-server's latency per reason (percentiles, from the TSC stamps of
    /// each exit reaching it and its resume leaving it), exits over time;
    /// with --svg DIR also latency.svg and exits-over-time.svg.
    Stats(StatsArgs),
}

#[derive(Args)]
struct ReplayArgs {
    /// The trace archive.
    #[arg(value_name = "FILE")]
    file: PathBuf,
}

#[derive(Args)]
struct StatsArgs {
    /// The trace archive.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Write the plots as SVG files into this directory.
    #[arg(long, value_name = "DIR")]
    svg: Option<PathBuf>,
}

#[derive(Args)]
struct AttackArgs {
    /// Fewer random attempts (40 random installs instead of 400), as CI runs it.
    #[arg(long)]
    short: bool,
    /// The MMU mode to attack: npt, shadow or both.
    #[arg(long, value_name = "MODE", default_value = "both",
          value_parser = clap::builder::PossibleValuesParser::new(["npt", "shadow", "both"]))]
    mmu: String,
    /// Kill a boot's emulator after this many seconds (it counts as a stub hang).
    #[arg(long, value_name = "SECS", default_value_t = 180,
          value_parser = clap::value_parser!(u64).range(1..))]
    timeout: u64,
    /// Copy every boot's console to stderr.
    #[arg(long)]
    verbose: bool,
    /// The emulator: qemu (TCG, emulated SVM: EPYC,+svm,+npt and
    /// EPYC,+svm,-npt) or bochs (a GRUB ISO; corei7_skylake_x for VMX with
    /// EPT or shadow paging, ryzen for SVM; about 15 s a boot).
    #[arg(long, value_name = "EMULATOR", default_value = "qemu",
          value_parser = clap::builder::PossibleValuesParser::new(["qemu", "bochs"]))]
    emulator: String,
    /// With --emulator bochs: the extension, vmx, svm or both.
    #[arg(long, value_name = "ARCH", default_value = "both",
          value_parser = clap::builder::PossibleValuesParser::new(["vmx", "svm", "both"]))]
    arch: String,
    /// The seed of the random-resumes class (printed; default: from the clock).
    #[arg(long, value_name = "N")]
    seed: Option<u32>,
    /// Only these kinds of boot (comma-separated: main, destructive, fpu,
    /// random, restart); default: all.
    #[arg(long, value_name = "LIST", value_delimiter = ',',
          value_parser = clap::builder::PossibleValuesParser::new(["main", "destructive", "fpu", "random", "restart"]))]
    boots: Vec<String>,
    /// Skip the guest-side attacks (tssescape, efersvme, and the hostile
    /// virtio driver hostile-driver: the `virtio` row).
    #[arg(long)]
    no_guests: bool,
    /// Instead of the campaign: issue 13's isolation experiment. The
    /// `timer` guest runs alone, then as VM 1 beside the hostile servers'
    /// main campaign as VM 0 (QEMU, NPT, one CPU); prints how long its
    /// checks took each time and the ratio. Exit status 0 when VM 1 passed
    /// every check within 2.5x of its time alone and nothing escaped.
    #[arg(long, conflicts_with_all = ["mmu", "emulator", "arch", "boots", "no_guests"])]
    beside: bool,
}

/// One VM of a `--config` file, as options.
#[derive(Parser)]
struct VmOptions {
    #[command(flatten)]
    guest: GuestArgs,
}

#[derive(Args)]
struct GuestArgs {
    /// The guest: a built-in one by name (sources in images/guests/), or
    /// the path of a multiboot v1 kernel (what QEMU's -kernel accepts) or of
    /// a raw boot sector (loaded at 0x7c00 in real mode, no BIOS).
    #[arg(long, value_name = "NAME|PATH", long_help = guest_help(),
          required_unless_present_any = ["kernel", "linux", "config"],
          conflicts_with_all = ["kernel", "linux"])]
    guest: Option<String>,
    /// Several VMs: N copies of this guest (with these options), each with
    /// its own servers, in one image, on one CPU unless --cpus says more. Each VM's console lines
    /// start with `[vmN] `; the run ends when all have ended (README,
    /// "Several VMs").
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..=4),
          conflicts_with = "config")]
    vms: Option<u8>,
    /// Several VMs described in a TOML file: one `[[vm]]` table each, with
    /// the keys guest, mmu, ram, board, append and uart_server (as the
    /// options of those names) and cpu (the host CPU it runs on, 0 by
    /// default; README, "Several VMs"). The other guest options are ignored.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Host CPUs to run the image with (QEMU's -smp, Bochs's `cpu:
    /// count=`): the stub starts them all, and each runs only the VMs
    /// placed on it. With --vms, VM i runs on CPU i mod N; with --config,
    /// on its `cpu` key's CPU (the default N is one more than the highest).
    /// A VM that owns a host IRQ line (--disk, --nic) must be on CPU 0.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..=4))]
    cpus: Option<u8>,
    /// A `--config` VM's `cpu` key.
    #[arg(long, hide = true, value_name = "N", value_parser = clap::value_parser!(u8).range(0..=3))]
    vm_cpu: Option<u8>,
    /// A Linux bzImage to boot (the 32-bit boot protocol: boot_params,
    /// e820 map, command line, initrd; entered in flat 32-bit mode).
    #[arg(long, value_name = "BZIMAGE", conflicts_with = "linux")]
    kernel: Option<PathBuf>,
    /// The initrd (initramfs) for --kernel.
    #[arg(long, value_name = "FILE", requires = "kernel")]
    initrd: Option<PathBuf>,
    /// Boot one of Debian's stock kernels with a busybox initramfs:
    /// linux-image-amd64 (the default), linux-image-686 (i386, non-PAE
    /// paging) or linux-image-686-pae (i386, PAE paging), fetched with
    /// apt-get download into .cache/linux/. The shell has /bin/workload
    /// (fork+exec, pipe ping-pong, mmap/munmap); `--append
    /// splitvisor.workload` runs it at boot, `--append splitvisor.exit` ends
    /// the VM after /init's first lines instead of starting the shell.
    /// SPLITVISOR_KERNEL_PACKAGE=linux-image-NAME[=VERSION] boots that
    /// Debian kernel package instead of the one the metapackage depends on.
    #[arg(long, value_name = "FLAVOUR", num_args = 0..=1,
          default_missing_value = "amd64", require_equals = false)]
    linux: Option<splitvisor::linux::Flavour>,
    /// The kernel command line (for --kernel and --linux; --linux puts
    /// `console=ttyS0 earlyprintk=serial,ttyS0,115200 panic=-1 tsc=reliable
    /// tsc_early_khz=HOST`
    /// before it on the ISA board, `console=ttyS0` alone on the PC board;
    /// `console=hvc0` in place of `console=ttyS0` with --console hvc0).
    #[arg(long, value_name = "TEXT", allow_hyphen_values = true)]
    append: Option<String>,
    /// The multiboot command line, for multiboot kernels. A kernel given by
    /// path gets `PATH TEXT`, its path first, as QEMU's -kernel and GRUB
    /// pass it. May start with `-` (`--cmdline -s` or `--cmdline=-s`).
    #[arg(
        long,
        value_name = "TEXT",
        default_value = "",
        allow_hyphen_values = true
    )]
    cmdline: String,
    /// A multiboot module, `FILE [ARGS]` (QEMU's -initrd, GRUB's `module`):
    /// placed page-aligned after the kernel, with the whole string as its
    /// command line. Repeat for more, in order.
    #[arg(long = "module", value_name = "FILE [ARGS]", allow_hyphen_values = true,
          conflicts_with_all = ["kernel", "linux"])]
    modules: Vec<String>,
    /// Guest RAM in MiB (even, 2 to 512); default 16, or 256 for Linux.
    #[arg(long, value_name = "MIB",
          value_parser = clap::value_parser!(u32).range(2..=512))]
    ram: Option<u32>,
    /// How guest memory is virtualized: npt (nested paging), shadow (shadow
    /// page tables built by the mmu-server, cached across CR3 loads) or
    /// baseline (shadow paging that drops every table on every CR3 load, as
    /// the first KVM did; for comparison).
    #[arg(long, value_name = "MODE", default_value = "npt",
          value_parser = clap::builder::PossibleValuesParser::new(["npt", "shadow", "baseline"]))]
    mmu: String,
    /// The machine around the guest: pc (the default: 8259 pair, 8254,
    /// RTC, 16550, i8042, plus a local APIC with x2APIC and TSC-deadline, an
    /// I/O APIC, ACPI tables with the PM timer and S5 power off, and QEMU's
    /// fw_cfg) or isa (the first KVM's PC: those ISA devices alone).
    #[arg(long, value_name = "BOARD", default_value = "pc",
          value_parser = clap::builder::PossibleValuesParser::new(["isa", "pc"]))]
    board: String,
    /// Leave the vmm-server out of the image: the stub then has no server for
    /// the first exit and reports `vm failed`.
    #[arg(long)]
    no_vmm_server: bool,
    /// Run COM1's 16550 as a ring-3 server of its own (the uart-server),
    /// reached from the vmm-server over a channel, instead of inside the
    /// vmm-server.
    #[arg(long)]
    uart_server: bool,
    /// The guest's console: ttyS0 (COM1's 16550, the default) or hvc0 (a
    /// virtio-pci console at PCI 00:03.0, PC board only, run as a ring-3
    /// server of its own, the virtio-console task, which writes the
    /// guest's output to the host console and takes host input). With
    /// --linux, hvc0 also puts `console=hvc0` on the kernel command line in
    /// place of `console=ttyS0` (Linux finds the function through the
    /// DSDT's PCI root bridge).
    #[arg(long, value_name = "CONSOLE", default_value = "ttyS0",
          value_parser = clap::builder::PossibleValuesParser::new(["ttyS0", "hvc0"]))]
    console: String,
    /// Give the guest a virtio-rng entropy device (PC board only): a
    /// virtio-pci function at the next free slot after --console hvc0's
    /// and --disk's (00:03.0 alone), run as a ring-3 server of its own, the
    /// virtio-rng task (guest RAM read-write and its channel; no console,
    /// no ports). Its bytes come from the CPU's RDRAND; on a CPU without
    /// RDRAND from a xorshift64* generator seeded from the TSC, which is
    /// NOT cryptographic (QEMU 7.2 TCG's EPYC model has RDRAND). Linux
    /// sees it as /dev/hwrng (`virtio_rng.0`); with --linux,
    /// `splitvisor.rng` on the command line makes /init read it and print
    /// `splitvisor-linux: rng: virtio_rng.0 N bytes, md5 ...`.
    #[arg(long)]
    rng: bool,
    /// Give the guest a network (PC board only): `user`, QEMU's user-mode
    /// network restricted to the machine (`restrict=on`: DHCP from
    /// 10.0.2.2, no route off the machine), reached through the machine's
    /// NE2000 as with --nic user, which this implies. The guest sees a
    /// virtio-net function (`eth0` in Linux, station address
    /// 02:53:56:00:00:01) at the next free slot after --console hvc0's,
    /// --disk's and --rng's, run as the virtio-net task (guest RAM
    /// read-write, the console, its channel from the vmm-server and a link
    /// channel to the switch task, a learning switch with the console as
    /// its only right, whose uplink is its link channel to the
    /// nic-driver, which sends and receives the frames).
    /// Forward rules to the host's loopback may follow, QEMU's syntax,
    /// the host side always 127.0.0.1:
    /// `user,guestfwd=tcp:10.0.2.100:80-tcp:127.0.0.1:8080` (a connection
    /// from the guest to 10.0.2.100:80 reaches 127.0.0.1:8080),
    /// `user,hostfwd=tcp:127.0.0.1:2222-:22`. QEMU only for rules; not with
    /// --platform sel4. With --linux, `splitvisor.net` on the command line
    /// makes /init bring eth0 up by DHCP (and `splitvisor.net.url=URL`
    /// fetch URL and print it; `.oversize` and `.bench=URL`: see the
    /// README). The virtio-net server prints the frames it drops (a
    /// header asking for an offload, shorter than 14 or longer than 1514
    /// bytes) at 1, 2, 4, ... drops; the switch prints each port's
    /// counters (frames and bytes in and out, drops by reason) when the
    /// frames into it reach 1, 2, 4, ...
    /// With several VMs (--vms N, --config) every VM gets its own
    /// virtio-net server (station address 02:53:56:00:00:0N for VM N-1),
    /// each a port on one switch in no VM (no guest RAM, VCPU, ports or
    /// IRQs); with `user` its uplink is VM 0's nic-driver; `switch`
    /// joins the VMs to each other only (no card, no uplink).
    #[arg(long, value_name = "user[,RULE...]|switch", value_parser = splitvisor::nic::NetSpec::parse)]
    net: Option<splitvisor::nic::NetSpec>,
    /// Inject a fault on purpose, for the isolation experiments:
    /// `SERVER:crash@N` (the task named SERVER, e.g. mmu-server,
    /// uart-server, vmm-server, disk-driver, virtio-blk, virtio-console,
    /// virtio-rng, virtio-net, switch, executes ud2 at its N-th exit or
    /// request; for the virtio servers a request is a queue notification,
    /// for the switch a VM port's call),
    /// `SERVER:corrupt@N` (writes garbage over the shared state its restart
    /// reads, then ud2), `SERVER:hang@N` (spins without blocking: the
    /// stub's watchdog restarts it after 8 s of its TSC, or stops the VM
    /// for the vmm-server); `@everyN` repeats every N within an
    /// instance. Patched into the server's ELF; repeat for more servers.
    #[arg(long, value_name = "SERVER:FAULT@N")]
    inject: Vec<String>,
    /// The platform: native (the splitvisor stub) or sel4 (seL4 16.0.0
    /// with a root task, booted from a GRUB ISO in Bochs; see sel4/README.md).
    #[arg(long, value_name = "PLATFORM", default_value = "native",
          value_parser = clap::builder::PossibleValuesParser::new(["native", "sel4"]))]
    platform: String,
}

fn guest_help() -> String {
    format!(
        "The guest: a built-in one by name ({}; sources in images/guests/), or the path of a \
         multiboot v1 kernel (what QEMU's -kernel accepts) or of a raw boot sector (loaded at \
         0x7c00 and entered in real mode with DL=0x80; there is no BIOS)",
        images::GUESTS.join(", ")
    )
}

impl GuestArgs {
    /// `--net`, else the `net` key of `--config`.
    fn net(&self) -> Result<Option<splitvisor::nic::NetSpec>, String> {
        if self.net.is_some() {
            return Ok(self.net.clone());
        }
        let Some(path) = &self.config else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let net =
            splitvisor::vms::config_net(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        net.map(|n| splitvisor::nic::NetSpec::parse(&n))
            .transpose()
            .map_err(|e| format!("{}: net: {e}", path.display()))
    }

    fn board(&self) -> ipc_proto::manifest::Board {
        match self.board.as_str() {
            "pc" => ipc_proto::manifest::Board::Pc,
            _ => ipc_proto::manifest::Board::Isa,
        }
    }

    /// The system to build; for `--linux`, fetches and prepares the guest.
    /// `guest_tsc_khz`: the guest's TSC rate when it is not the host's
    /// (Bochs, QEMU's TCG), for Linux's `tsc_early_khz` on the ISA board.
    /// The image's spec: one VM, N copies of it (`--vms`), or the VMs of
    /// `--config`.
    fn spec(&self, guest_tsc_khz: Option<u64>) -> Result<images::SystemSpec, String> {
        let Some(path) = &self.config else {
            let one = self.one_spec(guest_tsc_khz)?;
            let cpus = self.cpus.unwrap_or(1);
            let more = (1..self.vms.unwrap_or(1)).map(|i| images::SystemSpec {
                cpu: i % cpus,
                ..one.clone()
            });
            return Ok(images::SystemSpec {
                more_vms: more.collect(),
                host_cpus: cpus,
                ..one
            });
        };
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let args =
            splitvisor::vms::config_args(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut specs = Vec::new();
        for (i, a) in args.into_iter().enumerate() {
            let vm = VmOptions::try_parse_from(std::iter::once("vm".to_string()).chain(a))
                .map_err(|e| format!("{}: VM {i}: {e}", path.display()))?;
            specs.push(images::SystemSpec {
                cpu: vm.guest.vm_cpu.unwrap_or(0),
                ..vm.guest.one_spec(guest_tsc_khz)?
            });
        }
        let highest = specs.iter().map(|s| s.cpu).max().unwrap_or(0);
        let cpus = self.cpus.unwrap_or(highest + 1);
        if highest >= cpus {
            return Err(format!(
                "{}: a VM is placed on cpu {highest}, but the run has {cpus} CPU(s) (--cpus)",
                path.display()
            ));
        }
        let first = specs.remove(0);
        Ok(images::SystemSpec {
            more_vms: specs,
            host_cpus: cpus,
            ..first
        })
    }

    fn one_spec(&self, guest_tsc_khz: Option<u64>) -> Result<images::SystemSpec, String> {
        let (guest, initrd, cmdline, default_ram) = if let Some(flavour) = self.linux {
            let g = splitvisor::linux::prepare_debian_linux(flavour)?;
            eprintln!("splitvisor: Debian's kernel: {}", g.packages);
            let mut cmdline = splitvisor::linux::default_append(
                self.append.as_deref(),
                guest_tsc_khz,
                self.board(),
            );
            if self.guest_console() == splitvisor::virtio::GuestConsole::Hvc0 {
                cmdline = splitvisor::linux::with_console(&cmdline, "console=hvc0");
            }
            (
                g.kernel,
                Some(g.initrd),
                cmdline,
                splitvisor::linux::LINUX_RAM_MIB,
            )
        } else if let Some(k) = &self.kernel {
            (
                k.clone(),
                self.initrd.clone(),
                self.append.clone().unwrap_or_default(),
                splitvisor::linux::LINUX_RAM_MIB,
            )
        } else {
            let g = self.guest.clone().unwrap_or_default();
            (
                PathBuf::from(g),
                None,
                self.cmdline.clone(),
                images::GUEST_RAM_MIB,
            )
        };
        let ram_mib = self.ram.unwrap_or(default_ram);
        if !ram_mib.is_multiple_of(2) {
            return Err(format!(
                "--ram {ram_mib}: guest RAM must be an even number of MiB"
            ));
        }
        if self.kernel.is_some() || self.linux.is_some() {
            if !guest.is_file() {
                return Err(format!("the kernel {} does not exist", guest.display()));
            }
            let bytes = std::fs::read(&guest).map_err(|e| format!("{}: {e}", guest.display()))?;
            if !images::linux::looks_like_bzimage(&bytes) {
                images::linux::parse_bzimage(&bytes)
                    .map_err(|e| format!("{}: {e}", guest.display()))?;
            }
        }
        let mut spec = images::SystemSpec {
            ram_mib,
            initrd,
            cmdline,
            with_vmm_server: !self.no_vmm_server,
            mmu: match self.mmu.as_str() {
                "shadow" => ipc_proto::manifest::MmuMode::Shadow,
                "baseline" => ipc_proto::manifest::MmuMode::ShadowBaseline,
                _ => ipc_proto::manifest::MmuMode::Nested,
            },
            board: self.board(),
            uart_server: self.uart_server,
            modules: self.modules.clone(),
            inject: self
                .inject
                .iter()
                .map(|a| {
                    ipc_proto::inject::Injection::parse(a)
                        .map(|(task, inj)| (task.to_string(), inj))
                        .map_err(|e| format!("--inject {a}: {e}"))
                })
                .collect::<Result<_, _>>()?,
            ..images::SystemSpec::new(&guest.to_string_lossy())
        };
        if self.guest_console() == splitvisor::virtio::GuestConsole::Hvc0 {
            splitvisor::virtio::add_virtio_console(&mut spec)?;
        }
        Ok(spec)
    }

    fn guest_console(&self) -> splitvisor::virtio::GuestConsole {
        splitvisor::virtio::GuestConsole::from_name(&self.console).unwrap_or_default()
    }
}

#[derive(Args)]
struct BuildArgs {
    #[command(flatten)]
    guest: GuestArgs,
    /// Also print, on stderr, a table of who may do what in this image:
    /// each task's rights from the boot manifest (runs the VCPU, which exit
    /// classes it receives, installs page tables, guest RAM none/ro/rw,
    /// console, host I/O ports, host IRQ lines) and the channels between
    /// tasks. The stub checks each right at every system call.
    #[arg(long)]
    show_rights: bool,
    /// Build the image `run --disk FILE[,ro]` boots: with the disk-driver,
    /// the virtio-blk server and their channels (the file itself is not
    /// opened; `,ro` makes the disk-driver read-only).
    #[arg(long, value_name = "FILE[,ro]", value_parser = splitvisor::disk::DiskSpec::parse)]
    disk: Option<splitvisor::disk::DiskSpec>,
    /// Build the image `run --nic user` boots: with the nic-driver server.
    #[arg(long, value_name = "NET", value_parser = splitvisor::nic::NicSpec::parse)]
    nic: Option<splitvisor::nic::NicSpec>,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    guest: GuestArgs,
    /// The CPU model: QEMU's -cpu (default EPYC,+svm,+npt under TCG, host
    /// under --accel kvm; drop +npt to run without nested paging), or Bochs's `cpu: model=` (default
    /// corei7_skylake_x for VMX, ryzen for SVM; `bochs -help cpu` lists them).
    #[arg(long, value_name = "MODEL")]
    cpu: Option<String>,
    /// Make the stub use SVM or VMX (its `arch=` boot option) instead of
    /// what CPUID offers; it says `cannot run` where the CPU lacks it.
    #[arg(long, value_name = "ARCH",
          value_parser = clap::builder::PossibleValuesParser::new(["svm", "vmx"]))]
    arch: Option<String>,
    /// Run shadow paging even on a CPU that ignores the SVM task-switch
    /// intercept (QEMU's TCG does): there a guest can load any host-physical
    /// page table and escape, so the stub refuses (`cannot run`) unless this
    /// is given. Only for guests you trust, on QEMU.
    #[arg(long)]
    unsafe_shadow: bool,
    /// With --platform sel4: the vmm-server component invokes a capability
    /// of the root task's that it was not given (issue 14's hostile case);
    /// seL4 refuses it and the root task says so (`vm failed`). For tests.
    #[arg(long, hide = true)]
    sel4_hostile_vmm: bool,
    /// The emulator: a program on PATH or a path to one; a name starting
    /// with `bochs` boots a GRUB ISO in Bochs, anything else is QEMU.
    #[arg(long, value_name = "PROGRAM", default_value = DEFAULT_EMULATOR)]
    emulator: String,
    /// QEMU's accelerator: tcg (the default: QEMU emulates the CPU, SVM
    /// included, with its instruction clock -icount, so the guest's time
    /// does not follow a loaded host), kvm (-accel kvm -cpu host unless
    /// --cpu is given, no -icount: the stub uses the host's own SVM or VMX
    /// through the host KVM's nested virtualization) or auto (kvm when it
    /// can work here, else tcg, with one line on stderr saying which and
    /// why).
    ///
    /// KVM needs /dev/kvm to open read-write (else add the user to group
    /// kvm) and nested virtualization on: /sys/module/kvm_amd/parameters/nested
    /// or /sys/module/kvm_intel/parameters/nested reading 1 or Y (else
    /// `modprobe -r kvm_amd; modprobe kvm_amd nested=1`, or kvm_intel). A
    /// /dev/kvm without kvm_amd or kvm_intel (a paravirtual one, such as
    /// kvm_pvm's, where QEMU's -cpu host fails) does not count. --accel kvm
    /// where that is missing stops before QEMU starts (status 103) and says
    /// what is missing. tcg stays the default so that a run means the same
    /// on every host; auto is opt-in. Bochs has no KVM acceleration: with
    /// --emulator bochs only tcg and auto (both Bochs's own emulation) are
    /// accepted.
    #[arg(long, value_name = "ACCEL", default_value = "tcg",
          value_parser = clap::builder::PossibleValuesParser::new(AccelChoice::NAMES))]
    accel: String,
    /// Kill the emulator after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..))]
    timeout: u64,
    /// Memory of the emulated machine in MiB (QEMU -m, Bochs megs), at least
    /// 32; the guest gets --ram MiB of it. Default: 256, or 4 x --ram when
    /// that is more.
    #[arg(long, value_name = "MIB",
          value_parser = clap::value_parser!(u32).range(32..))]
    memory: Option<u32>,
    /// A disk image, FILE or FILE,ro: a raw image of whole 512-byte
    /// sectors, attached as the machine's primary IDE master (QEMU -drive
    /// ...,if=ide,index=0; Bochs ata0-master), for the disk-driver server
    /// to drive by ATA PIO. With ,ro the file is opened read-only and
    /// never written: QEMU gets snapshot=on (its IDE disk cannot be
    /// read-only) and Bochs mode=volatile, both keeping the machine's
    /// writes in a temporary overlay dropped at exit. Before anything is
    /// built, the file must exist, be a regular file of a non-zero whole
    /// number of sectors, be readable (and writable unless ,ro), and not be
    /// in use: run takes an advisory lock on it for the whole run
    /// (exclusive; shared with ,ro) and refuses an image another process
    /// has locked, a QEMU included; otherwise it says what is wrong in one
    /// sentence and exits 2.
    ///
    /// The guest sees the disk as a virtio-blk disk (`/dev/vda` in Linux;
    /// read-only, VIRTIO_BLK_F_RO, with ,ro) on the PC board's PCI bus
    /// (00:03.0, or 00:04.0 with --console hvc0; not on the ISA board),
    /// which Linux finds through the DSDT's PCI root bridge.
    /// The image gets the disk-driver server (ports 0x1f0-0x1f7 and 0x3f6,
    /// IRQ 14, guest RAM read-write), which identifies the disk at start
    /// and prints `disk: MODEL, N sectors (SIZE), ...`, and the virtio-blk
    /// server (guest RAM read-write, no ports), which asks the disk-driver
    /// to move each request's sectors straight between the disk and the
    /// guest's buffers. Not with --platform sel4.
    #[arg(long, value_name = "FILE[,ro]", value_parser = splitvisor::disk::DiskSpec::parse)]
    disk: Option<splitvisor::disk::DiskSpec>,
    /// A network card for the machine itself (not for the guest, which
    /// does not see it): `user`, a user-mode network restricted to the
    /// machine behind an NE2000 ISA card at port 0x300, IRQ 5 (QEMU:
    /// -netdev user,id=n0,restrict=on -device
    /// ne2k_isa,netdev=n0,iobase=0x300,irq=5; Bochs: an `ne2k:` line with
    /// its slirp, `restricted = 1`). The image gets the nic-driver server
    /// (ports 0x300-0x31f, IRQ 5, no guest RAM), which prints `nic: NE2000
    /// at 0x300 irq 5, mac ...` and asks for an address by DHCP (`nic: dhcp
    /// offer 10.0.2.15 from 10.0.2.2`). Not with --platform sel4 yet.
    /// --net user gives the guest a network through this card.
    #[arg(long, value_name = "NET", value_parser = splitvisor::nic::NicSpec::parse)]
    nic: Option<splitvisor::nic::NicSpec>,
    /// Record every input and decision of the vmm-server's exit handler
    /// (each exit record and resume with TSC stamps, clock readings, CPUID
    /// answers, guest-RAM reads, console input; hashes of guest-RAM writes
    /// and console output; the ending), and the mmu-server's exits, replies
    /// and install batches, into FILE, an rkyv archive for `splitvisor
    /// replay` and `splitvisor stats`. The servers send the records as
    /// console lines starting with byte 0x1e (vmm-server) or 0x1d
    /// (mmu-server), which are taken out of what is shown; a line on stderr
    /// gives each stream's size per exit. QEMU only.
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
    /// With --trace: record the first N exits only, each server its own
    /// (the run goes on, untraced).
    #[arg(long, value_name = "N", requires = "trace",
          value_parser = clap::value_parser!(u32).range(1..))]
    trace_exits: Option<u32>,
    /// Also write each VM's console lines into DIR/vmN.log (without the
    /// `[vmN] ` prefix; the stub's `[stub] vmN: ` lines as they are) and
    /// the lines of no VM (the stub's start, the end table) into
    /// DIR/stub.log; stdout still shows everything. With one VM every
    /// line goes to vm0.log. The files are made anew for each run.
    #[arg(long, value_name = "DIR")]
    log_dir: Option<PathBuf>,
}

/// `--nic` and `--net`: the nic-driver (and for `--net` the virtio-net
/// server) in `system`, or the sentence saying why not.
fn add_nic(
    nic: Option<splitvisor::nic::NicSpec>,
    net: Option<&splitvisor::nic::NetSpec>,
    system: &mut images::SystemSpec,
) -> Result<(), String> {
    if let Some(splitvisor::nic::NicSpec::User) = nic {
        splitvisor::nic::add_nic_server(system)?;
    }
    match net {
        Some(n) => splitvisor::nic::add_net_servers(system, n),
        None => Ok(()),
    }
}

/// `--disk`: the checked and locked image, held until the run ends; or
/// the one sentence saying why it cannot be used (exit status 2).
fn open_disk(
    spec: Option<&splitvisor::disk::DiskSpec>,
) -> Result<Option<splitvisor::disk::Disk>, ExitCode> {
    let Some(spec) = spec else {
        return Ok(None);
    };
    splitvisor::disk::Disk::open(spec).map(Some).map_err(|e| {
        eprintln!("splitvisor: {e}");
        ExitCode::from(2)
    })
}

#[derive(Args)]
struct LocArgs {
    /// Also print the counts of each file.
    #[arg(long)]
    per_file: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Build(a) => build(&a),
        Command::Run(a) if a.guest.platform == "sel4" => run_sel4(a),
        Command::Run(a) => {
            if a.sel4_hostile_vmm {
                eprintln!("splitvisor: --sel4-hostile-vmm needs --platform sel4");
                return ExitCode::from(2);
            }
            let disk = match open_disk(a.disk.as_ref()) {
                Ok(d) => d,
                Err(code) => return code,
            };
            let kind = EmulatorKind::of(&a.emulator);
            let choice = AccelChoice::from_name(&a.accel).unwrap_or(AccelChoice::Tcg);
            let accel = match accel::resolve(choice, kind, &accel::RootFs::host()) {
                Ok(r) => {
                    if let Some(line) = r.message {
                        eprintln!("{line}");
                    }
                    r.accel
                }
                Err(e) => {
                    eprintln!("splitvisor: {e}");
                    let code = match e {
                        AccelError::Bochs => 2,
                        AccelError::Kvm(_) => splitvisor::EXIT_EMULATOR,
                    };
                    return ExitCode::from(u8::try_from(code).unwrap_or(1));
                }
            };
            let bochs = kind == EmulatorKind::Bochs;
            // The guest's TSC rate, for the ISA board's `tsc_early_khz`:
            // Bochs's own, TCG's instruction clock, or (KVM) the host's.
            let tsc_khz = if bochs {
                Some(splitvisor::bochs::TSC_KHZ)
            } else if accel == accel::Accel::Kvm {
                None
            } else {
                Some(splitvisor::run::QEMU_TSC_KHZ)
            };
            let mut system = match a.guest.spec(tsc_khz) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("splitvisor: {e}");
                    return ExitCode::from(splitvisor::EXIT_EMULATOR as u8);
                }
            };
            if let Some(d) = &disk {
                if let Err(e) = splitvisor::disk::add_disk_servers(&mut system, d.spec().read_only)
                {
                    eprintln!("splitvisor: {e}");
                    return ExitCode::from(splitvisor::EXIT_EMULATOR as u8);
                }
            }
            if a.guest.rng {
                if let Err(e) = splitvisor::virtio::add_virtio_rng(&mut system) {
                    eprintln!("splitvisor: {e}");
                    return ExitCode::from(splitvisor::EXIT_EMULATOR as u8);
                }
            }
            let net = match a.guest.net() {
                Ok(n) => n,
                Err(e) => {
                    eprintln!("splitvisor: {e}");
                    return ExitCode::from(splitvisor::EXIT_EMULATOR as u8);
                }
            };
            if let Err(e) = add_nic(a.nic, net.as_ref(), &mut system) {
                eprintln!("splitvisor: {e}");
                return ExitCode::from(splitvisor::EXIT_EMULATOR as u8);
            }
            let memory_mib = a
                .memory
                .unwrap_or_else(|| splitvisor::run::default_memory_mib(system.all_ram_mib()));
            let arch = a.arch.as_deref().and_then(Arch::from_name);
            let cpu = a.cpu.unwrap_or_else(|| accel.default_cpu(kind, arch));
            if a.trace.is_some() {
                if bochs {
                    eprintln!("splitvisor: --trace needs QEMU");
                    return ExitCode::from(2);
                }
                system.trace = Some(ipc_proto::trace::TraceConfig {
                    max_exits: a.trace_exits.unwrap_or(0),
                });
            }
            let opts = RunOptions {
                system,
                cpu,
                arch,
                emulator: a.emulator,
                timeout: Duration::from_secs(a.timeout),
                memory_mib,
                unsafe_shadow: a.unsafe_shadow,
            };
            let mut out: Box<dyn std::io::Write + Send> = Box::new(std::io::stdout());
            let logs = match &a.log_dir {
                None => None,
                Some(dir) => {
                    let vms = 1 + opts.system.more_vms.len();
                    match splitvisor::vm_logs::VmLogs::create(dir, vms, out) {
                        Ok(l) => {
                            out = Box::new(l.clone());
                            Some(l)
                        }
                        Err(e) => {
                            eprintln!("splitvisor: --log-dir: {e}");
                            return ExitCode::from(2);
                        }
                    }
                }
            };
            let trace = match &a.trace {
                None => None,
                Some(path) => {
                    let t = splitvisor::tracing::TraceOut::new(out);
                    out = Box::new(t.clone());
                    Some((path, t))
                }
            };
            let code = run::run_with_disk_to(&opts, accel, disk.as_ref(), out);
            if let Some((path, t)) = &trace {
                match t.finish(path) {
                    Ok(line) => eprintln!("{line}"),
                    Err(e) => eprintln!("splitvisor: --trace {}: {e}", path.display()),
                }
            }
            if let Some(l) = logs {
                if let Err(e) = l.finish() {
                    eprintln!("splitvisor: --log-dir: {e}");
                }
            }
            code
        }
        Command::Replay(a) => splitvisor::tracing::replay(&a.file),
        Command::Stats(a) => splitvisor::tracing::stats(&a.file, a.svg.as_deref()),
        Command::Loc(a) => count_loc(&a),
        Command::Bench(a) => bench::bench(&a),
        Command::Attack(a) if a.beside => {
            splitvisor::attack::beside_cli(&splitvisor::attack::AttackOptions {
                short: a.short,
                timeout: Duration::from_secs(a.timeout),
                verbose: a.verbose,
                seed: a.seed.unwrap_or_else(splitvisor::attack::fresh_seed),
                ..splitvisor::attack::AttackOptions::default()
            })
        }
        Command::Attack(a) => splitvisor::attack::run_cli(&splitvisor::attack::AttackOptions {
            short: a.short,
            modes: match a.mmu.as_str() {
                "npt" => vec![ipc_proto::manifest::MmuMode::Nested],
                "shadow" => vec![ipc_proto::manifest::MmuMode::Shadow],
                _ => vec![
                    ipc_proto::manifest::MmuMode::Nested,
                    ipc_proto::manifest::MmuMode::Shadow,
                ],
            },
            timeout: Duration::from_secs(a.timeout),
            verbose: a.verbose,
            emulator: if a.emulator == "bochs" {
                splitvisor::attack::Emulator::Bochs
            } else {
                splitvisor::attack::Emulator::Qemu
            },
            arches: match a.arch.as_str() {
                "vmx" => vec![splitvisor::run::Arch::Vmx],
                "svm" => vec![splitvisor::run::Arch::Svm],
                _ => vec![splitvisor::run::Arch::Vmx, splitvisor::run::Arch::Svm],
            },
            seed: a.seed.unwrap_or_else(splitvisor::attack::fresh_seed),
            boots: a.boots,
            guests: !a.no_guests,
        }),
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// The device servers of `--disk` (read-only or not), `--rng`, `--nic`
/// and `--net`, with their channels, into `spec`.
fn add_device_servers(
    disk_read_only: Option<bool>,
    rng: bool,
    nic: Option<splitvisor::nic::NicSpec>,
    net: Option<&splitvisor::nic::NetSpec>,
    spec: &mut images::SystemSpec,
) -> Result<(), String> {
    if let Some(read_only) = disk_read_only {
        splitvisor::disk::add_disk_servers(spec, read_only)?;
    }
    if rng {
        splitvisor::virtio::add_virtio_rng(spec)?;
    }
    add_nic(nic, net, spec)
}

fn build(a: &BuildArgs) -> i32 {
    let mut spec = match a.guest.spec(None) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("splitvisor: {e}");
            return 1;
        }
    };
    let read_only = a.disk.as_ref().map(|d| d.read_only);
    let net = match a.guest.net() {
        Ok(n) => n,
        Err(e) => {
            eprintln!("splitvisor: {e}");
            return 1;
        }
    };
    if let Err(e) = add_device_servers(read_only, a.guest.rng, a.nic, net.as_ref(), &mut spec) {
        eprintln!("splitvisor: {e}");
        return 1;
    }
    if a.guest.platform == "sel4" {
        return splitvisor::sel4::build_cli(&spec);
    }
    if a.show_rights {
        eprint!("{}", images::rights_table(&spec));
    }
    match images::build_system_spec(&spec) {
        Ok(path) => {
            println!("{}", path.display());
            0
        }
        Err(e) => {
            eprintln!("splitvisor: could not build the image: {e}");
            1
        }
    }
}

/// `run --platform sel4`: seL4 in Bochs (VMX with EPT: `corei7_skylake_x`).
fn run_sel4(a: RunArgs) -> i32 {
    if a.arch.as_deref() == Some("svm") {
        eprintln!("splitvisor: seL4 supports Intel VT-x only (no AMD SVM): drop --arch svm");
        return splitvisor::EXIT_CANNOT_RUN;
    }
    if a.guest.vms.is_some_and(|n| n > 1) || a.guest.config.is_some() {
        eprintln!(
            "splitvisor: several VMs (--vms, --config) are not available with --platform sel4 yet"
        );
        return 2;
    }
    let mut system = match a.guest.spec(Some(splitvisor::bochs::TSC_KHZ)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("splitvisor: {e}");
            return splitvisor::EXIT_EMULATOR;
        }
    };
    // The device servers go into the image as on the native platform; the
    // root task's rights check (`sel4::run`) refuses the tasks it cannot
    // place, naming them, before Bochs starts.
    let read_only = a.disk.as_ref().map(|d| d.read_only);
    if let Err(e) = add_device_servers(
        read_only,
        a.guest.rng,
        a.nic,
        a.guest.net.as_ref(),
        &mut system,
    ) {
        eprintln!("splitvisor: {e}");
        return splitvisor::EXIT_EMULATOR;
    }
    let emulator = if EmulatorKind::of(&a.emulator) == EmulatorKind::Bochs {
        a.emulator
    } else {
        "bochs".to_string()
    };
    splitvisor::sel4::run(
        &RunOptions {
            memory_mib: a
                .memory
                .unwrap_or_else(|| splitvisor::run::default_memory_mib(system.ram_mib)),
            system,
            cpu: a
                .cpu
                .unwrap_or_else(|| splitvisor::bochs::DEFAULT_CPU_VMX.to_string()),
            arch: Some(Arch::Vmx),
            emulator,
            timeout: Duration::from_secs(a.timeout),
            unsafe_shadow: false,
        },
        splitvisor::sel4::Flags {
            hostile_vmm: a.sel4_hostile_vmm,
        },
    )
}

fn count_loc(a: &LocArgs) -> i32 {
    let root = images::workspace_root();
    let dir = root.join("kernel-stub").join("src");
    match loc::count_tree(&dir) {
        Ok((total, each)) => {
            if a.per_file {
                for (path, c) in &each {
                    let shown = path.strip_prefix(&root).unwrap_or(path);
                    println!(
                        "{:>6} lines {:>4} unsafe blocks  {}",
                        c.code_lines,
                        c.unsafe_blocks,
                        shown.display()
                    );
                }
            }
            println!(
                "kernel-stub/src: {} lines of Rust (non-blank, non-comment) in {} files, {} \
                 unsafe blocks, {} unsafe fn/impl/trait/extern items",
                total.code_lines, total.files, total.unsafe_blocks, total.unsafe_items
            );
            0
        }
        Err(e) => {
            eprintln!("splitvisor: {e}");
            1
        }
    }
}

#[cfg(test)]
mod guest_args_tests {
    use super::*;

    fn run_args(args: &[&str]) -> GuestArgs {
        let cli = Cli::try_parse_from([&["splitvisor", "build"][..], args].concat())
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        match cli.command {
            Command::Build(b) => b.guest,
            _ => unreachable!(),
        }
    }

    #[test]
    fn a_cmdline_may_start_with_a_dash() {
        assert_eq!(run_args(&["--guest", "k", "--cmdline", "-s"]).cmdline, "-s");
        assert_eq!(
            run_args(&["--guest", "k", "--cmdline=-s x"]).cmdline,
            "-s x"
        );
        assert_eq!(
            run_args(&["--kernel", "b", "--append", "-v"])
                .append
                .as_deref(),
            Some("-v")
        );
    }

    #[test]
    fn accel_is_a_run_option_defaulting_to_tcg() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["splitvisor"][..], args].concat());
        let accel = |args: &[&str]| match parse(args).unwrap().command {
            Command::Run(r) => r.accel,
            _ => unreachable!(),
        };
        assert_eq!(accel(&["run", "--guest", "hello"]), "tcg");
        assert_eq!(accel(&["run", "--guest", "hello", "--accel", "kvm"]), "kvm");
        assert_eq!(
            accel(&["run", "--guest", "hello", "--accel", "auto"]),
            "auto"
        );
        assert!(parse(&["run", "--guest", "hello", "--accel", "hvf"]).is_err());
        assert!(parse(&["build", "--guest", "hello", "--accel", "kvm"]).is_err());
    }

    #[test]
    fn modules_repeat_in_order() {
        let g = run_args(&[
            "--guest",
            "k",
            "--module",
            "/m/one a=1",
            "--module",
            "/m/two",
        ]);
        assert_eq!(g.modules, ["/m/one a=1", "/m/two"]);
        assert_eq!(g.spec(None).unwrap().modules, ["/m/one a=1", "/m/two"]);
    }

    #[test]
    fn vms_spread_over_the_cpus_and_a_config_places_each() {
        let cpus = |s: &images::SystemSpec| {
            let more = s.more_vms.iter().map(|v| v.cpu);
            (
                std::iter::once(s.cpu).chain(more).collect::<Vec<_>>(),
                s.host_cpus,
            )
        };
        let spec = |args: &[&str]| run_args(args).spec(None);
        let g = spec(&["--guest", "k", "--vms", "3", "--cpus", "2"]).unwrap();
        assert_eq!(cpus(&g), (vec![0, 1, 0], 2));
        assert_eq!(
            cpus(&spec(&["--guest", "k", "--vms", "2"]).unwrap()),
            (vec![0, 0], 1)
        );
        let dir = std::env::temp_dir().join(format!("sv-cpus-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("vms.toml");
        std::fs::write(
            &config,
            "[[vm]]\nguest = \"k\"\ncpu = 2\n[[vm]]\nguest = \"k\"\n",
        )
        .unwrap();
        let path = config.to_str().unwrap();
        let placed = spec(&["--config", path]);
        let refused = spec(&["--config", path, "--cpus", "2"]);
        std::fs::remove_dir_all(&dir).ok();
        assert_eq!(cpus(&placed.unwrap()), (vec![2, 0], 3));
        assert!(refused
            .unwrap_err()
            .ends_with("a VM is placed on cpu 2, but the run has 2 CPU(s) (--cpus)"));
    }
}
