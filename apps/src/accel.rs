//! `splitvisor run --accel kvm|tcg|auto`: which QEMU accelerator boots the
//! image, and whether KVM can run it here.
//!
//! Under **TCG** (the default) QEMU emulates the whole CPU, SVM with nested
//! paging included (`-cpu EPYC,+svm,+npt`), with its instruction clock
//! ([`crate::run::QEMU_ICOUNT`]) so the guest's time does not follow a
//! loaded host. Under **KVM** QEMU runs the stub on the host's CPU
//! (`-accel kvm -cpu host`, no `-icount`: that exists only under TCG), and
//! the stub's VMRUN or VMLAUNCH is the host's own SVM or VMX, which the
//! host's KVM gives its guests only with *nested virtualization* on
//! (`kvm_amd nested=1` or `kvm_intel nested=1`).
//!
//! Detection ([`probe`]) therefore asks two things, and `auto` picks KVM
//! only when both hold:
//!
//! 1. `/dev/kvm` opens read-write (it exists and this user may use it);
//! 2. `/sys/module/kvm_amd/parameters/nested` or
//!    `/sys/module/kvm_intel/parameters/nested` reads `1` or `Y`.
//!
//! The second check is what keeps `auto` off a `/dev/kvm` that cannot run
//! the stub: some cloud machines (this project's CI among them) have a
//! paravirtual `/dev/kvm` (module `kvm_pvm`, no `kvm_amd` or `kvm_intel`)
//! on which QEMU's `-cpu host` fails at start with an error about MSR
//! 0x10a; there `auto` says `tcg` and why.
//!
//! **Why the default is `tcg`, not `auto`.** On the CI machine `auto` would
//! pick TCG too, but the end-to-end tests run `splitvisor run` without
//! `--accel` and are written for QEMU's TCG with emulated SVM (the
//! instruction clock, an EPYC CPU, `--cpu qemu64,-svm` meaning "no SVM",
//! `--unsafe-shadow` for TCG's missing task-switch intercept). With `auto`
//! as the default the same tests would boot under KVM with the host's CPU
//! (VMX on an Intel host) on a developer's machine with nested KVM on, and
//! test something else than on CI. So KVM is asked for: `--accel kvm`
//! (an error when it cannot work) or `--accel auto` (KVM when it can, with
//! one line on stderr saying which and why).

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::run::EmulatorKind;

/// What `--accel` asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccelChoice {
    /// KVM, or an error saying what is missing.
    Kvm,
    /// QEMU's TCG (the default).
    Tcg,
    /// KVM when [`probe`] says it can run the stub, else TCG.
    Auto,
}

impl AccelChoice {
    /// The `--accel` values.
    pub const NAMES: [&'static str; 3] = ["tcg", "kvm", "auto"];

    /// The choice for `kvm`, `tcg` or `auto`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "kvm" => Some(AccelChoice::Kvm),
            "tcg" => Some(AccelChoice::Tcg),
            "auto" => Some(AccelChoice::Auto),
            _ => None,
        }
    }
}

/// The accelerator QEMU gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Accel {
    /// `-accel tcg -icount ...`: the emulated CPU with its instruction clock.
    #[default]
    Tcg,
    /// `-accel kvm`: the host's CPU, through the host's nested KVM.
    Kvm,
}

impl Accel {
    /// `tcg` or `kvm`.
    pub fn name(self) -> &'static str {
        match self {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
        }
    }

    /// QEMU's accelerator arguments: `-accel tcg -icount QEMU_ICOUNT`, or
    /// `-accel kvm` alone (`-icount` exists only under TCG).
    pub fn qemu_args(self) -> Vec<&'static str> {
        match self {
            Accel::Tcg => vec!["-accel", "tcg", "-icount", crate::run::QEMU_ICOUNT],
            Accel::Kvm => vec!["-accel", "kvm"],
        }
    }

    /// The `-cpu` when the user gave no `--cpu`: the emulator's default
    /// under TCG, `host` under KVM (the host's CPU with its SVM or VMX).
    pub fn default_cpu(self, emulator: EmulatorKind, arch: Option<crate::Arch>) -> String {
        match self {
            Accel::Kvm => "host".to_string(),
            Accel::Tcg => emulator.default_cpu(arch).to_string(),
        }
    }
}

/// The files detection reads, relative to a root: the real `/`, or a test's
/// fake one.
pub trait HostFs {
    /// Opens `path` (absolute, e.g. `/dev/kvm`) for reading and writing,
    /// and closes it again.
    fn open_rw(&self, path: &str) -> io::Result<()>;
    /// Reads `path` as text.
    fn read_to_string(&self, path: &str) -> io::Result<String>;
    /// The names in the directory `path`.
    fn list_dir(&self, path: &str) -> io::Result<Vec<String>>;
}

/// The host's files under `root` (`/` for the real host).
#[derive(Clone, Debug)]
pub struct RootFs {
    /// Where `/` is.
    pub root: PathBuf,
}

impl RootFs {
    /// The real host: `/`.
    pub fn host() -> Self {
        RootFs { root: "/".into() }
    }

    fn at(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }
}

impl HostFs for RootFs {
    fn open_rw(&self, path: &str) -> io::Result<()> {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.at(path))
            .map(drop)
    }
    fn read_to_string(&self, path: &str) -> io::Result<String> {
        std::fs::read_to_string(self.at(path))
    }
    fn list_dir(&self, path: &str) -> io::Result<Vec<String>> {
        let mut names: Vec<String> = std::fs::read_dir(self.at(path))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        Ok(names)
    }
}

/// The device QEMU's KVM opens.
pub const DEV_KVM: &str = "/dev/kvm";
/// The KVM vendor modules and the extension each gives a nested guest.
pub const KVM_MODULES: [(&str, &str); 2] = [("kvm_amd", "SVM"), ("kvm_intel", "VMX")];

/// The `nested` parameter file of a KVM vendor module.
pub fn nested_param_path(module: &str) -> String {
    format!("/sys/module/{module}/parameters/nested")
}

/// What [`probe`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvmStatus {
    /// `/dev/kvm` opens and `module`'s `nested` reads `value` (`1` or `Y`).
    Usable {
        /// `kvm_amd` or `kvm_intel`.
        module: &'static str,
        /// What its `nested` parameter reads.
        value: String,
    },
    /// KVM cannot run the stub here.
    Unusable(KvmMissing),
}

/// Why KVM cannot run the stub here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvmMissing {
    /// There is no `/dev/kvm`.
    NoDevice,
    /// `/dev/kvm` exists but this user may not open it.
    PermissionDenied,
    /// `/dev/kvm` does not open for another reason.
    DeviceError(String),
    /// Neither `kvm_amd` nor `kvm_intel` is loaded (a paravirtual
    /// `/dev/kvm`); `loaded` lists the `kvm*` modules that are.
    NoVendorModule {
        /// The loaded modules whose name starts with `kvm`.
        loaded: Vec<String>,
    },
    /// The vendor module is loaded with nested virtualization off.
    NestedOff {
        /// `kvm_amd` or `kvm_intel`.
        module: &'static str,
        /// What its `nested` parameter reads.
        value: String,
    },
}

impl fmt::Display for KvmMissing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvmMissing::NoDevice => write!(
                f,
                "there is no {DEV_KVM} (load KVM: `modprobe kvm_amd nested=1` on AMD, \
                 `modprobe kvm_intel nested=1` on Intel; the CPU needs SVM or VMX enabled \
                 in the firmware)"
            ),
            KvmMissing::PermissionDenied => write!(
                f,
                "{DEV_KVM}: permission denied (add the user to group kvm: `sudo usermod -aG kvm \
                 $USER`, then log in again)"
            ),
            KvmMissing::DeviceError(e) => write!(f, "{DEV_KVM} does not open: {e}"),
            KvmMissing::NoVendorModule { loaded } => {
                write!(
                    f,
                    "{DEV_KVM} opens but neither kvm_amd nor kvm_intel is loaded"
                )?;
                if !loaded.is_empty() {
                    write!(f, " (loaded: {})", loaded.join(", "))?;
                }
                write!(
                    f,
                    ": no nested SVM or VMX for the stub (QEMU's -cpu host fails on a \
                     paravirtual KVM such as kvm_pvm)"
                )
            }
            KvmMissing::NestedOff { module, value } => write!(
                f,
                "{} is {value}: KVM does not give its guests {} (with no VM running: \
                 `modprobe -r {module}; modprobe {module} nested=1`)",
                nested_param_path(module),
                if *module == "kvm_amd" { "SVM" } else { "VMX" }
            ),
        }
    }
}

/// Whether a `nested` parameter says on (`1`, or `Y` as kvm_intel writes it).
pub fn nested_is_on(value: &str) -> bool {
    matches!(value.trim(), "1" | "Y" | "y")
}

/// Whether KVM can run the stub on the host whose files `fs` reads: see the
/// module documentation.
pub fn probe(fs: &dyn HostFs) -> KvmStatus {
    if let Err(e) = fs.open_rw(DEV_KVM) {
        return KvmStatus::Unusable(match e.kind() {
            io::ErrorKind::NotFound => KvmMissing::NoDevice,
            io::ErrorKind::PermissionDenied => KvmMissing::PermissionDenied,
            _ => KvmMissing::DeviceError(e.to_string()),
        });
    }
    let mut off = None;
    for (module, _) in KVM_MODULES {
        if let Ok(text) = fs.read_to_string(&nested_param_path(module)) {
            let value = text.trim().to_string();
            if nested_is_on(&value) {
                return KvmStatus::Usable { module, value };
            }
            off.get_or_insert(KvmMissing::NestedOff { module, value });
        }
    }
    KvmStatus::Unusable(off.unwrap_or_else(|| {
        KvmMissing::NoVendorModule {
            loaded: fs
                .list_dir("/sys/module")
                .unwrap_or_default()
                .into_iter()
                .filter(|m| m.starts_with("kvm"))
                .collect(),
        }
    }))
}

/// `--accel` resolved: what QEMU gets, and the line `auto` prints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The accelerator.
    pub accel: Accel,
    /// For `auto`: the one line saying which it picked and why.
    pub message: Option<String>,
}

/// Why `--accel` cannot be honoured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccelError {
    /// `--accel kvm` with Bochs.
    Bochs,
    /// `--accel kvm` where KVM cannot run the stub.
    Kvm(KvmMissing),
}

impl fmt::Display for AccelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AccelError::Bochs => write!(
                f,
                "--accel kvm: Bochs has no KVM acceleration (it emulates every instruction); \
                 use QEMU (the default --emulator) for KVM"
            ),
            AccelError::Kvm(m) => write!(f, "--accel kvm cannot work here: {m}"),
        }
    }
}

/// Resolves `choice` for `emulator`, probing the host through `fs` for
/// `kvm` and `auto` (Bochs: `tcg` and `auto` mean Bochs's own emulation,
/// with no line; `kvm` is an error).
pub fn resolve(
    choice: AccelChoice,
    emulator: EmulatorKind,
    fs: &dyn HostFs,
) -> Result<Resolved, AccelError> {
    let plain = |accel| Resolved {
        accel,
        message: None,
    };
    match (choice, emulator) {
        (AccelChoice::Tcg, _) | (AccelChoice::Auto, EmulatorKind::Bochs) => Ok(plain(Accel::Tcg)),
        (AccelChoice::Kvm, EmulatorKind::Bochs) => Err(AccelError::Bochs),
        (AccelChoice::Kvm, EmulatorKind::Qemu) => match probe(fs) {
            KvmStatus::Usable { .. } => Ok(plain(Accel::Kvm)),
            KvmStatus::Unusable(m) => Err(AccelError::Kvm(m)),
        },
        (AccelChoice::Auto, EmulatorKind::Qemu) => Ok(match probe(fs) {
            KvmStatus::Usable { module, value } => Resolved {
                accel: Accel::Kvm,
                message: Some(format!(
                    "splitvisor: accel auto: kvm ({DEV_KVM} opens, {module} nested={value})"
                )),
            },
            KvmStatus::Unusable(m) => Resolved {
                accel: Accel::Tcg,
                message: Some(format!("splitvisor: accel auto: tcg ({m})")),
            },
        }),
    }
}

/// [`probe`] of the real host.
pub fn probe_host() -> KvmStatus {
    probe(&RootFs::host())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A host made of a few files; a missing path is `NotFound`.
    #[derive(Default)]
    struct FakeFs {
        files: HashMap<&'static str, Result<&'static str, io::ErrorKind>>,
        modules: Vec<&'static str>,
    }

    impl FakeFs {
        fn with(mut self, path: &'static str, r: Result<&'static str, io::ErrorKind>) -> Self {
            self.files.insert(path, r);
            self
        }
        fn kvm_ok() -> Self {
            FakeFs::default().with(DEV_KVM, Ok(""))
        }
    }

    impl HostFs for FakeFs {
        fn open_rw(&self, path: &str) -> io::Result<()> {
            self.read_to_string(path).map(drop)
        }
        fn read_to_string(&self, path: &str) -> io::Result<String> {
            match self.files.get(path) {
                Some(Ok(s)) => Ok(s.to_string()),
                Some(Err(k)) => Err(io::Error::from(*k)),
                None => Err(io::ErrorKind::NotFound.into()),
            }
        }
        fn list_dir(&self, _path: &str) -> io::Result<Vec<String>> {
            Ok(self.modules.iter().map(|m| m.to_string()).collect())
        }
    }

    const AMD: &str = "/sys/module/kvm_amd/parameters/nested";
    const INTEL: &str = "/sys/module/kvm_intel/parameters/nested";

    fn auto(fs: &FakeFs) -> Resolved {
        resolve(AccelChoice::Auto, EmulatorKind::Qemu, fs).unwrap()
    }

    #[test]
    fn tcg_gets_the_instruction_clock_and_kvm_does_not() {
        let tcg = Accel::Tcg.qemu_args();
        assert_eq!(tcg, ["-accel", "tcg", "-icount", crate::run::QEMU_ICOUNT]);
        let kvm = Accel::Kvm.qemu_args();
        assert_eq!(kvm, ["-accel", "kvm"]);
        assert!(!kvm.contains(&"-icount"));
    }

    #[test]
    fn kvm_defaults_to_the_host_cpu() {
        assert_eq!(Accel::Kvm.default_cpu(EmulatorKind::Qemu, None), "host");
        assert_eq!(
            Accel::Tcg.default_cpu(EmulatorKind::Qemu, None),
            crate::DEFAULT_CPU
        );
        assert_eq!(
            Accel::Tcg.default_cpu(EmulatorKind::Bochs, Some(crate::Arch::Svm)),
            crate::bochs::DEFAULT_CPU_SVM
        );
    }

    #[test]
    fn names_parse() {
        for n in AccelChoice::NAMES {
            assert!(AccelChoice::from_name(n).is_some(), "{n}");
        }
        assert_eq!(AccelChoice::from_name("hvf"), None);
    }

    #[test]
    fn nested_on_amd_or_intel_picks_kvm() {
        let amd = FakeFs::kvm_ok().with(AMD, Ok("1\n"));
        assert_eq!(
            probe(&amd),
            KvmStatus::Usable {
                module: "kvm_amd",
                value: "1".into()
            }
        );
        let r = auto(&amd);
        assert_eq!(r.accel, Accel::Kvm);
        assert_eq!(
            r.message.as_deref(),
            Some("splitvisor: accel auto: kvm (/dev/kvm opens, kvm_amd nested=1)")
        );
        let intel = FakeFs::kvm_ok().with(INTEL, Ok("Y\n"));
        let r = auto(&intel);
        assert_eq!(r.accel, Accel::Kvm);
        assert_eq!(
            r.message.as_deref(),
            Some("splitvisor: accel auto: kvm (/dev/kvm opens, kvm_intel nested=Y)")
        );
        let forced = resolve(AccelChoice::Kvm, EmulatorKind::Qemu, &intel).unwrap();
        assert_eq!(
            forced,
            Resolved {
                accel: Accel::Kvm,
                message: None
            }
        );
    }

    #[test]
    fn nested_off_falls_back_to_tcg_and_says_how_to_turn_it_on() {
        let fs = FakeFs::kvm_ok().with(AMD, Ok("0\n"));
        let r = auto(&fs);
        assert_eq!(r.accel, Accel::Tcg);
        let m = r.message.unwrap();
        assert!(
            m.starts_with(
                "splitvisor: accel auto: tcg (/sys/module/kvm_amd/parameters/nested is 0"
            ),
            "{m}"
        );
        assert!(m.contains("modprobe kvm_amd nested=1"), "{m}");
        let e = resolve(AccelChoice::Kvm, EmulatorKind::Qemu, &fs).unwrap_err();
        assert!(
            e.to_string().starts_with("--accel kvm cannot work here: "),
            "{e}"
        );
        assert!(e.to_string().contains("modprobe kvm_amd nested=1"), "{e}");
        let intel = FakeFs::kvm_ok().with(INTEL, Ok("N\n"));
        assert_eq!(
            probe(&intel),
            KvmStatus::Unusable(KvmMissing::NestedOff {
                module: "kvm_intel",
                value: "N".into()
            })
        );
    }

    #[test]
    fn a_paravirtual_dev_kvm_without_vendor_module_is_not_used() {
        // The CI machine: /dev/kvm opens, modules kvm and kvm_pvm, no
        // kvm_amd or kvm_intel; QEMU's -cpu host fails there.
        let fs = FakeFs {
            modules: vec!["ext4", "kvm", "kvm_pvm"],
            ..FakeFs::kvm_ok()
        };
        let r = auto(&fs);
        assert_eq!(r.accel, Accel::Tcg);
        let m = r.message.unwrap();
        assert!(m.contains("neither kvm_amd nor kvm_intel is loaded"), "{m}");
        assert!(m.contains("loaded: kvm, kvm_pvm"), "{m}");
        assert!(resolve(AccelChoice::Kvm, EmulatorKind::Qemu, &fs).is_err());
    }

    #[test]
    fn dev_kvm_missing_or_forbidden_is_named() {
        let none = FakeFs::default().with(AMD, Ok("1"));
        assert_eq!(probe(&none), KvmStatus::Unusable(KvmMissing::NoDevice));
        let e = resolve(AccelChoice::Kvm, EmulatorKind::Qemu, &none).unwrap_err();
        assert!(e.to_string().contains("there is no /dev/kvm"), "{e}");
        let denied = FakeFs::default()
            .with(DEV_KVM, Err(io::ErrorKind::PermissionDenied))
            .with(AMD, Ok("1"));
        let e = resolve(AccelChoice::Kvm, EmulatorKind::Qemu, &denied).unwrap_err();
        assert!(e.to_string().contains("permission denied"), "{e}");
        assert!(e.to_string().contains("group kvm"), "{e}");
        let r = auto(&denied);
        assert_eq!(r.accel, Accel::Tcg);
        assert!(r.message.unwrap().contains("/dev/kvm: permission denied"));
    }

    #[test]
    fn tcg_never_probes_and_bochs_has_no_kvm() {
        // A host where KVM would work.
        let fs = FakeFs::kvm_ok().with(AMD, Ok("1"));
        let tcg = resolve(AccelChoice::Tcg, EmulatorKind::Qemu, &fs).unwrap();
        assert_eq!(
            tcg,
            Resolved {
                accel: Accel::Tcg,
                message: None
            }
        );
        let e = resolve(AccelChoice::Kvm, EmulatorKind::Bochs, &fs).unwrap_err();
        assert_eq!(e, AccelError::Bochs);
        assert!(e.to_string().contains("Bochs has no KVM acceleration"));
        for c in [AccelChoice::Tcg, AccelChoice::Auto] {
            assert_eq!(
                resolve(c, EmulatorKind::Bochs, &fs).unwrap().accel,
                Accel::Tcg
            );
        }
    }

    #[test]
    fn a_fake_root_directory_is_read_like_the_host() {
        let root = std::env::temp_dir().join(format!("splitvisor-accel-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let fs = RootFs { root: root.clone() };
        std::fs::create_dir_all(root.join("sys/module/kvm_intel/parameters")).unwrap();
        assert_eq!(probe(&fs), KvmStatus::Unusable(KvmMissing::NoDevice));
        std::fs::create_dir_all(root.join("dev")).unwrap();
        std::fs::write(root.join("dev/kvm"), b"").unwrap();
        assert_eq!(
            probe(&fs),
            KvmStatus::Unusable(KvmMissing::NoVendorModule {
                loaded: vec!["kvm_intel".into()]
            })
        );
        std::fs::write(root.join("sys/module/kvm_intel/parameters/nested"), b"Y\n").unwrap();
        assert_eq!(
            probe(&fs),
            KvmStatus::Usable {
                module: "kvm_intel",
                value: "Y".into()
            }
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
