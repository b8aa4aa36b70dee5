//! `splitvisor run --emulator bochs`: boot the system image in Bochs,
//! headless, with Bochs's emulated VMX (`corei7_*` models) or SVM (`ryzen`).
//!
//! Bochs has no `-kernel`: the image goes into a GRUB ISO
//! ([`images::iso::build_iso`], with `arch=svm|vmx` on the stub's command
//! line for `--arch`) that Bochs boots from its CD-ROM drive. Each run gets a
//! folder `target/image/bochs/run-PID-N/` with:
//!
//! - `bochsrc`: the machine (CPU model, memory, the CD, COM1 into a file,
//!   `port_e9_hack`, `display_library: term`, `sound: driver=dummy`);
//! - `rc`: the commands for Bochs's built-in debugger: `c` (continue), so
//!   that Bochs never stops at its prompt (it is started with `-q -f bochsrc
//!   -rc rc` and standard input closed), and a few more `c` for the CPU
//!   panics it stops at (below);
//! - `com1.txt`: the stub's console, which the runner follows as Bochs
//!   writes it, dropping GRUB's terminal escapes, and copies to stdout;
//! - `bochs.log`: Bochs's own log.
//!
//! Debian's Bochs 2.7 has no `nogui` display; `term` (package bochs-term)
//! draws the VGA screen on a pseudo-terminal of its own when the debugger is
//! compiled in, so nothing reaches ours. The stub's final line ends the run:
//! the stub then writes `Shutdown` to port 0x8900 and Bochs exits (with
//! status 1); if it has not within the grace period, it is killed. The
//! folder is removed after a run that reached the stub's final line, and
//! kept (and named) otherwise.
//!
//! A guest's triple fault under SVM: Bochs 2.7 checks the SHUTDOWN
//! intercept only after it has panicked ("3rd exception with no
//! resolution"), so with `panic: action=fatal` it exits instead of giving
//! the stub `#VMEXIT(SHUTDOWN)` as the AMD APM (vol. 2, 15.12) and QEMU do.
//! The bochsrc therefore only reports the CPU's panics (`cpu0=report`) and
//! the debugger continues past them; VMX (exit reason 2) needs none of this.
//! The cost: a triple fault of the stub itself leaves Bochs in the shutdown
//! state until `--timeout`.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::run::{conclude, run_command, Arch, Console, RunOptions, EXIT_EMULATOR};

/// The default `--cpu` under Bochs for VMX: Skylake-X has VMX with EPT and
/// unrestricted guest.
pub const DEFAULT_CPU_VMX: &str = "corei7_skylake_x";
/// The default `--cpu` under Bochs for SVM: Ryzen has SVM with nested paging.
pub const DEFAULT_CPU_SVM: &str = "ryzen";

/// Instructions per emulated second (`cpu: ips=`); Bochs's TSC counts at
/// this rate.
pub const IPS: u64 = 100_000_000;

/// The guest's TSC rate under Bochs, in kHz.
pub const TSC_KHZ: u64 = IPS / 1000;

/// What to install for Bochs, as the end of a sentence.
pub const PACKAGES_SENTENCE: &str = "install the Debian packages bochs, bochsbios, vgabios and \
     bochs-term (apt-get install bochs bochsbios vgabios bochs-term)";

/// What the debugger runs: continue, and continue after each of the first
/// few CPU panics (see the module documentation).
pub const DEBUGGER_COMMANDS: &str = "c\nc\nc\nc\n";

/// The files a Bochs run needs besides the `bochs` program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BochsFiles {
    /// The system BIOS (package bochsbios).
    pub bios: PathBuf,
    /// The VGA BIOS (package vgabios).
    pub vga_bios: PathBuf,
}

/// Where Bochs's BIOS images are: `$BXSHARE`, else `/usr/share/bochs`.
pub fn bochs_files() -> BochsFiles {
    let share = std::env::var_os("BXSHARE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/share/bochs"));
    BochsFiles {
        bios: share.join("BIOS-bochs-latest"),
        vga_bios: share.join("VGABIOS-lgpl-latest"),
    }
}

/// One sentence naming what is missing, if anything is.
pub fn missing_files(files: &BochsFiles) -> Option<String> {
    let missing: Vec<String> = [&files.bios, &files.vga_bios]
        .into_iter()
        .filter(|p| !p.is_file())
        .map(|p| p.display().to_string())
        .collect();
    (!missing.is_empty())
        .then(|| format!("{} not found: {PACKAGES_SENTENCE}", missing.join(" and ")))
}

/// The paths one run uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunFiles {
    /// The ISO to boot.
    pub iso: PathBuf,
    /// COM1's output.
    pub com1: PathBuf,
    /// Bochs's log.
    pub log: PathBuf,
}

/// A path Bochs's configuration parser takes as one value: no spaces,
/// commas, quotes or `#`.
fn config_path(p: &Path) -> Result<String, String> {
    let s = p.to_string_lossy().into_owned();
    if s.is_empty() || s.contains([' ', '\t', ',', '"', '\'', '#', '\n']) {
        return Err(format!(
            "Bochs cannot be given the path {s:?}: its configuration takes no spaces, commas, \
             quotes or '#' in file names; move the workspace to a plainer path"
        ));
    }
    Ok(s)
}

/// The bochsrc for one run.
pub fn bochsrc(
    cpu: &str,
    memory_mib: u32,
    files: &BochsFiles,
    run: &RunFiles,
) -> Result<String, String> {
    bochsrc_with_disk(cpu, memory_mib, files, run, None)
}

/// The ATA lines: the CD alone as `ata0-master`; with a disk image (`--disk`),
/// the image as `ata0-master`, where the disk-driver server looks for it
/// (ports 0x1f0-0x1f7, 0x3f6, IRQ 14), and the CD on the second channel.
fn ata_lines(iso: &str, disk: Option<(&crate::disk::Disk, &Path)>) -> Result<String, String> {
    let ata0 = "ata0: enabled=1, ioaddr1=0x1f0, ioaddr2=0x3f0, irq=14\n";
    let Some((disk, journal)) = disk else {
        return Ok(format!(
            "{ata0}ata0-master: type=cdrom, path={iso}, status=inserted\n"
        ));
    };
    let master = crate::disk::bochs_ata0_master(
        &config_path(&disk.spec().path)?,
        disk.sectors(),
        disk.spec().read_only,
        &config_path(journal)?,
    )?;
    Ok(format!(
        "{ata0}{master}ata1: enabled=1, ioaddr1=0x170, ioaddr2=0x370, irq=15\n\
         ata1-master: type=cdrom, path={iso}, status=inserted\n"
    ))
}

/// [`bochsrc`] with the disk image of `--disk`, if any, and the journal
/// Bochs keeps a read-only image's writes in.
pub fn bochsrc_with_disk(
    cpu: &str,
    memory_mib: u32,
    files: &BochsFiles,
    run: &RunFiles,
    disk: Option<(&crate::disk::Disk, &Path)>,
) -> Result<String, String> {
    if cpu.is_empty() || !cpu.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!(
            "`{cpu}` is not a Bochs CPU model (`bochs -help cpu` lists them)"
        ));
    }
    Ok(format!(
        "# Made by `splitvisor run --emulator bochs` for one run.\n\
         megs: {memory_mib}\n\
         cpu: model={cpu}, count=1, ips={IPS}, reset_on_triple_fault=0\n\
         romimage: file={bios}\n\
         vgaromimage: file={vga}\n\
         {ata}\
         boot: cdrom\n\
         com1: enabled=1, mode=file, dev={com1}\n\
         port_e9_hack: enabled=1\n\
         display_library: term\n\
         sound: driver=dummy\n\
         speaker: enabled=0\n\
         mouse: enabled=0\n\
         clock: sync=none, time0=utc\n\
         log: {log}\n\
         panic: action=fatal, cpu0=report\n\
         error: action=report\n\
         info: action=report\n\
         debug: action=ignore\n",
        bios = config_path(&files.bios)?,
        vga = config_path(&files.vga_bios)?,
        ata = ata_lines(&config_path(&run.iso)?, disk)?,
        com1 = config_path(&run.com1)?,
        log = config_path(&run.log)?,
    ))
}

/// Bochs's arguments: quiet, this configuration, the debugger's commands
/// from `rc` (continue).
pub fn bochs_args(bochsrc: &Path, rc: &Path) -> Vec<std::ffi::OsString> {
    vec![
        "-q".into(),
        "-f".into(),
        bochsrc.as_os_str().to_owned(),
        "-rc".into(),
        rc.as_os_str().to_owned(),
    ]
}

/// A fresh folder for one run under `target/image/bochs`.
fn run_dir() -> io::Result<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = images::image_dir()
        .join("bochs")
        .join(format!("run-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The ISO of `image` for `arch`: `target/image/iso/IMAGE-STEM[-ARCH].iso`.
pub fn iso_path(image: &Path, arch: Option<Arch>) -> PathBuf {
    let stem = image
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "splitvisor".into());
    let name = match arch {
        Some(a) => format!("{stem}-{}.iso", a.name()),
        None => format!("{stem}.iso"),
    };
    images::image_dir().join("iso").join(name)
}

/// `splitvisor run` with Bochs at `program`: build the image and its ISO,
/// write the run's files, boot, follow COM1, conclude.
pub fn run(opts: &RunOptions, program: &Path) -> i32 {
    run_with_disk(opts, program, None, Box::new(io::stdout()))
}

/// [`run`] with the checked and locked image of `--disk` as `ata0-master`,
/// the console going to `out`.
pub fn run_with_disk(
    opts: &RunOptions,
    program: &Path,
    disk: Option<&crate::disk::Disk>,
    out: Box<dyn Write + Send>,
) -> i32 {
    let files = bochs_files();
    if let Some(m) = missing_files(&files) {
        eprintln!("splitvisor: {m}");
        return EXIT_EMULATOR;
    }
    if let Some(missing) = Some(images::iso::missing_tools()).filter(|m| !m.is_empty()) {
        eprintln!(
            "splitvisor: {}",
            images::iso::IsoError::ToolsMissing(missing)
        );
        return EXIT_EMULATOR;
    }
    let image = match images::build_system_spec(&opts.system) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("splitvisor: could not build the image: {e}");
            return EXIT_EMULATOR;
        }
    };
    let iso = iso_path(&image, opts.arch);
    if let Some(dir) = iso.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Err(e) = images::iso::build_iso(
        &image,
        &iso,
        &Arch::stub_cmdline(opts.arch, opts.unsafe_shadow),
    ) {
        eprintln!("splitvisor: could not build the ISO: {e}");
        return EXIT_EMULATOR;
    }
    let dir = match run_dir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("splitvisor: cannot make a folder for the Bochs run: {e}");
            return EXIT_EMULATOR;
        }
    };
    let run_files = RunFiles {
        iso: iso.clone(),
        com1: dir.join("com1.txt"),
        log: dir.join("bochs.log"),
    };
    let journal = dir.join("disk.redolog");
    let rc_text = match bochsrc_with_disk(
        &opts.cpu,
        opts.memory_mib,
        &files,
        &run_files,
        disk.map(|d| (d, journal.as_path())),
    ) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("splitvisor: {e}");
            return EXIT_EMULATOR;
        }
    };
    // Bochs's CPUs (`run --cpus`): Debian's Bochs is built with SMP.
    let rc_text = rc_text.replace(
        "count=1,",
        &format!("count={},", opts.system.host_cpus.max(1)),
    );
    let slirp_conf = match crate::nic::bochs_slirp_conf(&opts.system.net_forwards) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("splitvisor: --net {e}");
            return EXIT_EMULATOR;
        }
    };
    // The card exactly when the image has its driver (`--nic`).
    let rc_text = if crate::nic::wants_nic(&opts.system) {
        let conf = dir.join("slirp.conf");
        let line = config_path(&conf).map(|c| crate::nic::bochs_line(&c));
        match line.and_then(|l| {
            std::fs::write(&conf, &slirp_conf)
                .map(|()| rc_text + &l)
                .map_err(|e| format!("cannot write {}: {e}", conf.display()))
        }) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("splitvisor: {e}");
                return EXIT_EMULATOR;
            }
        }
    } else {
        rc_text
    };
    let (rc_path, cmds_path) = (dir.join("bochsrc"), dir.join("rc"));
    let written = std::fs::write(&rc_path, rc_text)
        .and_then(|()| std::fs::write(&cmds_path, DEBUGGER_COMMANDS));
    if let Err(e) = written {
        eprintln!("splitvisor: cannot write {}: {e}", dir.display());
        return EXIT_EMULATOR;
    }
    eprintln!(
        "splitvisor: booting {} in bochs, cpu {}{}",
        iso.display(),
        opts.cpu,
        opts.arch
            .map(|a| format!(", arch={}", a.name()))
            .unwrap_or_default()
    );
    let mut cmd = Command::new(program);
    cmd.args(bochs_args(&rc_path, &cmds_path))
        .current_dir(&dir)
        // The term display needs a terminal type; it draws on its own pty.
        .env("TERM", "vt100");
    let program_name = program.to_string_lossy().into_owned();
    let report = match run_command(
        cmd,
        &program_name,
        opts.timeout,
        Console::File(run_files.com1.clone()),
        out,
    ) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("splitvisor: {e}");
            return EXIT_EMULATOR;
        }
    };
    // Bochs leaves its lock file beside the image when it is killed (a
    // timeout): Disk::open found none before the run and the image is
    // ours (flock) until the caller drops it, so any lock file now is this
    // Bochs's.
    if let Some(d) = disk {
        let _ = std::fs::remove_file(crate::disk::bochs_lock_path(&d.spec().path));
    }
    let mut verdict = conclude(&report, opts);
    if report
        .stderr
        .contains("display library 'term' not available")
    {
        verdict.messages.push(format!(
            "splitvisor: Bochs has no terminal display: {PACKAGES_SENTENCE}"
        ));
    }
    if report.final_line.is_some() && !report.timed_out {
        let _ = std::fs::remove_dir_all(&dir);
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

    fn files() -> (BochsFiles, RunFiles) {
        (
            BochsFiles {
                bios: "/usr/share/bochs/BIOS-bochs-latest".into(),
                vga_bios: "/usr/share/bochs/VGABIOS-lgpl-latest".into(),
            },
            RunFiles {
                iso: "/w/target/image/iso/hello-vmx.iso".into(),
                com1: "/w/run/com1.txt".into(),
                log: "/w/run/bochs.log".into(),
            },
        )
    }

    #[test]
    fn bochsrc_boots_the_iso_headless_with_com1_in_a_file() {
        let (f, r) = files();
        let rc = bochsrc("corei7_skylake_x", 256, &f, &r).unwrap();
        for line in [
            "megs: 256\n",
            "cpu: model=corei7_skylake_x, count=1, ips=100000000, reset_on_triple_fault=0\n",
            "romimage: file=/usr/share/bochs/BIOS-bochs-latest\n",
            "ata0-master: type=cdrom, path=/w/target/image/iso/hello-vmx.iso, status=inserted\n",
            "boot: cdrom\n",
            "com1: enabled=1, mode=file, dev=/w/run/com1.txt\n",
            "port_e9_hack: enabled=1\n",
            "display_library: term\n",
            "sound: driver=dummy\n",
            "panic: action=fatal, cpu0=report\n",
        ] {
            assert!(rc.contains(line), "{line}");
        }
    }

    #[test]
    fn a_disk_image_becomes_ata0_master_and_the_cd_moves_to_ata1() {
        let (f, r) = files();
        let dir = std::env::temp_dir().join(format!("sv-bochs-disk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let img = dir.join("d.img");
        std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
        let disk =
            crate::disk::Disk::open(&crate::disk::DiskSpec::parse(&img.to_string_lossy()).unwrap())
                .unwrap();
        let rc = bochsrc_with_disk(
            "corei7_skylake_x",
            256,
            &f,
            &r,
            Some((&disk, Path::new("/w/run/j"))),
        )
        .unwrap();
        for line in [
            "ata0: enabled=1, ioaddr1=0x1f0, ioaddr2=0x3f0, irq=14\n",
            &format!(
                "ata0-master: type=disk, path={}, mode=flat, cylinders=4, heads=16, spt=32\n",
                img.display()
            ),
            "ata1: enabled=1, ioaddr1=0x170, ioaddr2=0x370, irq=15\n",
            "ata1-master: type=cdrom, path=/w/target/image/iso/hello-vmx.iso, status=inserted\n",
            "boot: cdrom\n",
        ] {
            assert!(rc.contains(line), "{line}\n{rc}");
        }
        assert!(!rc.contains("ata0-master: type=cdrom"));
        drop(disk);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bochsrc_refuses_what_its_parser_would_split() {
        let (f, mut r) = files();
        assert!(bochsrc("corei7_skylake_x, count=2", 256, &f, &r).is_err());
        assert!(bochsrc("", 256, &f, &r).is_err());
        r.iso = "/my disk/hello.iso".into();
        let e = bochsrc("ryzen", 256, &f, &r).unwrap_err();
        assert!(e.contains("no spaces"), "{e}");
    }

    #[test]
    fn bochs_is_told_to_continue_without_a_prompt() {
        let args = bochs_args(Path::new("/r/bochsrc"), Path::new("/r/rc"));
        let args: Vec<_> = args.iter().map(|a| a.to_string_lossy()).collect();
        assert_eq!(args.join(" "), "-q -f /r/bochsrc -rc /r/rc");
    }

    #[test]
    fn isos_are_named_after_the_image_and_arch() {
        let img = Path::new("/x/hello.img");
        assert!(iso_path(img, Some(Arch::Vmx)).ends_with("iso/hello-vmx.iso"));
        assert!(iso_path(img, None).ends_with("iso/hello.iso"));
    }

    #[test]
    fn missing_bios_files_name_the_packages() {
        let f = BochsFiles {
            bios: "/no/such/BIOS-bochs-latest".into(),
            vga_bios: "/no/such/VGABIOS-lgpl-latest".into(),
        };
        let m = missing_files(&f).unwrap();
        assert!(
            m.contains("/no/such/BIOS-bochs-latest and /no/such/VGABIOS"),
            "{m}"
        );
        assert!(m.contains("apt-get install bochs bochsbios vgabios bochs-term"));
    }
}
