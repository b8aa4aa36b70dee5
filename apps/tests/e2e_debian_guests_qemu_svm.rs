//! End-to-end: two of Debian's non-Linux kernels that QEMU's `-kernel`
//! and GRUB boot, under splitvisor in QEMU (TCG, emulated SVM, nested
//! paging), each read from the guest's own serial output:
//!
//! - GNU Mach (`gnumach-image-1.8-486:i386`): a multiboot ELF32 kernel
//!   whose entry point is the virtual 0xc1000000 inside a segment loaded
//!   at physical 0x1000000 (the loader translates it, as GRUB does). With
//!   no bootstrap module it ends in the panic it ends in under plain QEMU
//!   ([`GNUMACH_MARKER`]), then resets the machine, which stops the VM.
//! - memtest86+ (`memtest86+`, `memtest86+x64.bin`): a bzImage whose
//!   `syssize` rounds up 8 bytes past the file's end. With
//!   `console=ttyS0,115200` it draws its screen on COM1; the test waits
//!   until the screen has moved past test #0 ("Address test, walking
//!   ones") to a later test with `Errors: 0` and no other error count, then
//!   stops QEMU.
//! - A multiboot kernel linked at 0x8000 with a module, built here: its
//!   command line (the kernel's path first, then a value starting with
//!   `-`) and its module, as it prints them.
//!
//! The packages are fetched with `apt-get download` into
//! `.cache/debian-guests/` (about 0.9 MB; the i386 one needs `dpkg
//! --add-architecture i386`, which `scripts/install-deps` does). Run only
//! these (about 50 s in all) with
//!
//! ```sh
//! cargo test -p splitvisor --test e2e_debian_guests_qemu_svm -- --nocapture
//! ```

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use splitvisor::debian_guests::{
    prepare_gnumach, prepare_memtest, GNUMACH_CMDLINE, GNUMACH_MARKER, MEMTEST_CMDLINE,
};

/// Seconds one boot may take (both take far less).
const TIMEOUT_SECS: u64 = 180;

/// The two boots share the cache folder and the two cores: one at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// GNU Mach through `splitvisor run --guest PATH`, as a user would: it
/// prints its banner and memory map, probes its drivers and panics for
/// want of a bootstrap module; the panic resets the machine and the VM
/// stops with status 0. About 30 s on a 2.6 GHz EPYC host with QEMU 7.2
/// TCG (36 s beside another boot), most of it GNU Mach probing ISA SCSI
/// and other drivers' ports, each access a VM exit.
#[test]
fn gnu_mach_reaches_its_no_bootstrap_panic() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let kernel = prepare_gnumach().unwrap_or_else(|e| panic!("{e}"));
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_splitvisor"))
        .arg("run")
        .arg("--guest")
        .arg(&kernel)
        .args(["--ram", "64", "--cmdline", GNUMACH_CMDLINE])
        .args(["--timeout", &TIMEOUT_SECS.to_string()])
        .stdin(Stdio::null())
        .output()
        .expect("the splitvisor binary starts");
    eprintln!("GNU Mach: {:.1} s", start.elapsed().as_secs_f64());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let all = format!(
        "{stdout}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.lines().any(|l| l.starts_with("GNU Mach 1.8")),
        "no GNU Mach banner:\n{all}"
    );
    assert!(
        stdout.lines().any(|l| l.trim() == GNUMACH_MARKER),
        "no bootstrap panic:\n{all}"
    );
    assert_eq!(out.status.code(), Some(0), "{all}");
}

/// memtest86+ with a 64 MiB guest: the serial screen reaches a test after
/// #0 with no errors counted. About 11 s on a 2.6 GHz EPYC host with QEMU
/// 7.2 TCG; QEMU is stopped as soon as the screen shows it.
#[test]
fn memtest86plus_passes_its_first_test() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let kernel = prepare_memtest().unwrap_or_else(|e| panic!("{e}"));
    let system = images::SystemSpec {
        cmdline: MEMTEST_CMDLINE.to_string(),
        ram_mib: 64,
        ..images::SystemSpec::new(&kernel.to_string_lossy())
    };
    let opts = splitvisor::e2e::options(system, splitvisor::DEFAULT_CPU);
    let image = images::build_system_spec(&opts.system).unwrap_or_else(|e| panic!("{e}"));
    let mut qemu = Command::new(splitvisor::DEFAULT_EMULATOR)
        .args(splitvisor::run::qemu_args(&opts, &image))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("QEMU starts (scripts/install-deps installs it)");
    let start = Instant::now();
    let stdout = qemu.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut stdout = stdout;
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = stdout.read(&mut buf) {
            if tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut console = Vec::new();
    let mut verdict = MemtestScreen::default();
    let deadline = start + Duration::from_secs(TIMEOUT_SECS);
    while !verdict.first_test_passed() && verdict.errors.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(chunk) => {
                console.extend_from_slice(&chunk);
                verdict = MemtestScreen::read(&console);
            }
            Err(_) => break,
        }
    }
    // QEMU is this test's own child: stop it by its handle.
    let _ = qemu.kill();
    let _ = qemu.wait();
    eprintln!("memtest86+: {:.1} s", start.elapsed().as_secs_f64());
    let text = strip_escapes(&console);
    assert_eq!(verdict.errors, None, "memtest86+ counted errors:\n{text}");
    assert!(
        verdict.first_test_passed(),
        "memtest86+ did not get past its first test in {TIMEOUT_SECS} s:\n{text}"
    );
}

/// What memtest86+'s serial screen has shown so far.
#[derive(Default, Debug)]
struct MemtestScreen {
    /// It ran test #0.
    saw_test_0: bool,
    /// It went on to a later test.
    saw_later_test: bool,
    /// `Errors: 0` was shown.
    saw_zero_errors: bool,
    /// A non-zero error count, if one was shown.
    errors: Option<String>,
}

impl MemtestScreen {
    fn read(console: &[u8]) -> Self {
        let text = strip_escapes(console);
        let mut s = MemtestScreen::default();
        for piece in text.lines().map(str::trim) {
            if let Some(rest) = piece.strip_prefix('#') {
                let n: String = rest.chars().take_while(char::is_ascii_digit).collect();
                if rest[n.len()..].trim_start().starts_with('[') {
                    match n.parse::<u32>() {
                        Ok(0) => s.saw_test_0 = true,
                        Ok(_) if s.saw_test_0 => s.saw_later_test = true,
                        _ => {}
                    }
                }
            }
            if let Some(i) = piece.find("Errors: ") {
                let count: String = piece[i + 8..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                match count.as_str() {
                    "0" => s.saw_zero_errors = true,
                    "" => {}
                    _ => s.errors = Some(count),
                }
            }
        }
        s
    }

    fn first_test_passed(&self) -> bool {
        self.saw_test_0 && self.saw_later_test && self.saw_zero_errors && self.errors.is_none()
    }
}

/// The console with each terminal escape (`ESC [ ... letter`) made a line
/// break: memtest86+ moves its cursor between the pieces it redraws.
fn strip_escapes(console: &[u8]) -> String {
    let text = String::from_utf8_lossy(console);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            out.push('\n');
        } else if c == '\r' {
            out.push('\n');
        } else {
            out.push(c);
        }
    }
    out
}

/// A multiboot kernel linked at 0x8000 (as some test kernels are), built
/// here with `as` and `ld` as a flat a.out-kludge binary, with one module:
/// it checks EAX, prints its command line (the kernel's path first, then
/// `-v`, a value starting with `-`), the module's bytes and the module's
/// string, and ends with status 0. The multiboot information then goes on
/// the page after the kernel instead of 0x8000. About 1 s (7 s when it
/// is the first to build the stub and the servers).
#[test]
fn a_kernel_at_0x8000_gets_its_path_first_and_its_module() {
    const LOW_KERNEL_S: &str = r#"
    .code32
    .globl _start
_start:
    jmp entry
    .align 4
mbh:
    .long 0x1BADB002, 0x00010000, -(0x1BADB002 + 0x00010000)
    .long mbh, _start, 0, 0, entry
entry:
    mov $0x7000, %esp
    mov %ebx, %esi
    cmp $0x2BADB002, %eax
    jne fail
    mov 16(%esi), %edi
    call puts
    cmpl $1, 20(%esi)
    jne fail
    mov 24(%esi), %ebp
    mov 0(%ebp), %edi
    call puts
    mov 8(%ebp), %edi
    call puts
    mov $0, %al
    out %al, $0xf4
    hlt
fail:
    mov $1, %al
    out %al, $0xf4
    hlt
puts:
    mov $0x3f8, %dx
1:  movb (%edi), %al
    test %al, %al
    jz 2f
    out %al, %dx
    inc %edi
    jmp 1b
2:  mov $10, %al
    out %al, %dx
    ret
"#;
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("low-kernel");
    std::fs::create_dir_all(&dir).unwrap();
    let (src, obj, bin, module) = (
        dir.join("low.S"),
        dir.join("low.o"),
        dir.join("low.bin"),
        dir.join("module"),
    );
    std::fs::write(&src, LOW_KERNEL_S).unwrap();
    std::fs::write(&module, b"module says hi\0").unwrap();
    let ok = |c: &mut Command| assert!(c.status().expect("binutils").success(), "{c:?}");
    ok(Command::new("as").arg("--32").arg("-o").arg(&obj).arg(&src));
    ok(Command::new("ld")
        .args([
            "-m",
            "elf_i386",
            "-Ttext",
            "0x8000",
            "--oformat",
            "binary",
            "-o",
        ])
        .arg(&bin)
        .arg(&obj));
    let (bin_s, mod_s) = (bin.to_string_lossy(), module.to_string_lossy());
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_splitvisor"))
        .args(["run", "--guest", &bin_s, "--cmdline", "-v"])
        .args(["--module", &format!("{mod_s} x=1"), "--timeout", "60"])
        .stdin(Stdio::null())
        .output()
        .expect("the splitvisor binary starts");
    eprintln!("low kernel: {:.1} s", start.elapsed().as_secs_f64());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let all = format!(
        "{stdout}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().map(str::trim).collect();
    assert!(lines.contains(&format!("{bin_s} -v").as_str()), "{all}");
    assert!(lines.contains(&"module says hi"), "{all}");
    assert!(lines.contains(&format!("{mod_s} x=1").as_str()), "{all}");
    assert_eq!(out.status.code(), Some(0), "{all}");
}
