//! `splitvisor`: build a system image, boot it in QEMU with emulated SVM or
//! in Bochs with emulated VMX or SVM, count the privileged code.

mod bench;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
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
    /// Build the image and boot it in QEMU (TCG, emulated SVM), or its GRUB
    /// ISO in Bochs (emulated VMX or SVM) with --emulator bochs.
    ///
    /// The serial console (stub, vmm-server and guest output) goes to stdout
    /// as it arrives; build progress and the verdict go to stderr.
    #[command(after_help = EXIT_CODES_HELP)]
    Run(RunArgs),
    /// Count the privileged code: Rust lines and unsafe blocks under
    /// kernel-stub/src.
    ///
    /// Lines are non-blank lines with something besides comments on them.
    Loc(LocArgs),
    /// Benchmarks: `bench mmu` (the shadow MMU's context-switch benchmark,
    /// cached against the 2006 baseline, in the simulator and on QEMU).
    Bench(bench::BenchArgs),
}

#[derive(Args)]
struct GuestArgs {
    /// The guest: a built-in one by name (sources in images/guests/), or
    /// the path of a multiboot v1 kernel (what QEMU's -kernel accepts) or of
    /// a raw boot sector (loaded at 0x7c00 in real mode, no BIOS).
    #[arg(long, value_name = "NAME|PATH", long_help = guest_help())]
    guest: String,
    /// The multiboot command line, for multiboot kernels.
    #[arg(long, value_name = "TEXT", default_value = "")]
    cmdline: String,
    /// How guest memory is virtualized: npt (nested paging), shadow (shadow
    /// page tables built by the mmu-server, cached across CR3 loads) or
    /// baseline (shadow paging that drops every table on every CR3 load, as
    /// the first KVM did; for comparison).
    #[arg(long, value_name = "MODE", default_value = "npt",
          value_parser = clap::builder::PossibleValuesParser::new(["npt", "shadow", "baseline"]))]
    mmu: String,
    /// Leave the vmm-server out of the image: the stub then has no server for
    /// the first exit and reports `vm failed`.
    #[arg(long)]
    no_vmm_server: bool,
    /// Run COM1's 16550 as a ring-3 server of its own (the uart-server),
    /// reached from the vmm-server over a channel, instead of inside the
    /// vmm-server.
    #[arg(long)]
    uart_server: bool,
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
    fn spec(&self) -> images::SystemSpec {
        images::SystemSpec {
            with_vmm_server: !self.no_vmm_server,
            mmu: match self.mmu.as_str() {
                "shadow" => ipc_proto::manifest::MmuMode::Shadow,
                "baseline" => ipc_proto::manifest::MmuMode::ShadowBaseline,
                _ => ipc_proto::manifest::MmuMode::Nested,
            },
            cmdline: self.cmdline.clone(),
            uart_server: self.uart_server,
            ..images::SystemSpec::new(&self.guest)
        }
    }
}

#[derive(Args)]
struct BuildArgs {
    #[command(flatten)]
    guest: GuestArgs,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    guest: GuestArgs,
    /// The CPU model: QEMU's -cpu (default EPYC,+svm,+npt; drop +npt to run
    /// without nested paging), or Bochs's `cpu: model=` (default
    /// corei7_skylake_x for VMX, ryzen for SVM; `bochs -help cpu` lists them).
    #[arg(long, value_name = "MODEL")]
    cpu: Option<String>,
    /// Make the stub use SVM or VMX (its `arch=` boot option) instead of
    /// what CPUID offers; it says `cannot run` where the CPU lacks it.
    #[arg(long, value_name = "ARCH",
          value_parser = clap::builder::PossibleValuesParser::new(["svm", "vmx"]))]
    arch: Option<String>,
    /// The emulator: a program on PATH or a path to one; a name starting
    /// with `bochs` boots a GRUB ISO in Bochs, anything else is QEMU.
    #[arg(long, value_name = "PROGRAM", default_value = DEFAULT_EMULATOR)]
    emulator: String,
    /// Kill the emulator after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..))]
    timeout: u64,
    /// Memory of the emulated machine in MiB (QEMU -m, Bochs megs), at least
    /// 32; the guest itself gets 16 MiB of it.
    #[arg(long, value_name = "MIB", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(32..))]
    memory: u32,
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
        Command::Run(a) => {
            let arch = a.arch.as_deref().and_then(Arch::from_name);
            let cpu = a
                .cpu
                .unwrap_or_else(|| EmulatorKind::of(&a.emulator).default_cpu(arch).to_string());
            run::run(&RunOptions {
                system: a.guest.spec(),
                cpu,
                arch,
                emulator: a.emulator,
                timeout: Duration::from_secs(a.timeout),
                memory_mib: a.memory,
            })
        }
        Command::Loc(a) => count_loc(&a),
        Command::Bench(a) => bench::bench(&a),
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn build(a: &BuildArgs) -> i32 {
    match images::build_system_spec(&a.guest.spec()) {
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
