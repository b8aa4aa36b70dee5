//! Choosing SVM or VMX at boot: what the CPU has, unless the boot command
//! line forces one with `arch=svm` or `arch=vmx`.

/// A virtualization extension the stub can enter guests with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// AMD SVM.
    Svm,
    /// Intel VMX.
    Vmx,
}

impl Arch {
    /// The record's `arch` for this extension.
    pub fn vcpu_arch(self) -> ipc_proto::VcpuArch {
        match self {
            Self::Svm => ipc_proto::VcpuArch::Svm,
            Self::Vmx => ipc_proto::VcpuArch::Vmx,
        }
    }

    /// `svm` or `vmx`, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Svm => "svm",
            Self::Vmx => "vmx",
        }
    }
}

/// What the boot command line asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// No `arch=` word: use what the CPU has.
    Auto,
    /// `arch=svm` or `arch=vmx`.
    Force(Arch),
    /// `arch=` with anything else.
    Invalid,
}

/// Finds `arch=...` among the space-separated words of a command line (the
/// loader's first word is the image's path); the last one counts.
pub fn parse_request(cmdline: &[u8]) -> Request {
    let mut request = Request::Auto;
    for word in cmdline.split(|&b| b == b' ' || b == b'\t') {
        if let Some(value) = word.strip_prefix(b"arch=") {
            request = match value {
                b"svm" => Request::Force(Arch::Svm),
                b"vmx" => Request::Force(Arch::Vmx),
                _ => Request::Invalid,
            };
        }
    }
    request
}

/// The extension to use, given the request and the CPUID feature bits
/// (SVM: CPUID 8000_0001h ECX bit 2; VMX: CPUID 1 ECX bit 5). A forced one
/// is taken even if the CPU lacks it: its support check then says why it
/// cannot run.
/// The boot option that lets shadow paging run on a CPU that does not exit
/// on task switches (QEMU 7.2's TCG ignores the SVM task-switch intercept),
/// where a guest can load any host-physical page table: for tests only.
pub const UNSAFE_SHADOW: &[u8] = b"unsafe_shadow";

/// Whether the command line has [`UNSAFE_SHADOW`] as a word.
pub fn allows_unsafe_shadow(cmdline: &[u8]) -> bool {
    cmdline
        .split(|&b| b == b' ' || b == b'\t')
        .any(|word| word == UNSAFE_SHADOW)
}

pub fn choose(request: Request, has_svm: bool, has_vmx: bool) -> Result<Arch, &'static str> {
    match request {
        Request::Force(arch) => Ok(arch),
        Request::Invalid => Err("the boot command line says arch= with neither svm nor vmx"),
        Request::Auto if has_svm => Ok(Arch::Svm),
        Request::Auto if has_vmx => Ok(Arch::Vmx),
        Request::Auto => Err("SVM not available on this CPU (nor VMX)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_words_are_found() {
        assert_eq!(parse_request(b""), Request::Auto);
        assert_eq!(parse_request(b"/boot/splitvisor.img"), Request::Auto);
        assert_eq!(
            parse_request(b"/boot/splitvisor.img arch=vmx"),
            Request::Force(Arch::Vmx)
        );
        assert_eq!(
            parse_request(b"x arch=vmx  arch=svm"),
            Request::Force(Arch::Svm)
        );
        assert_eq!(parse_request(b"arch=VMX"), Request::Invalid);
        assert_eq!(parse_request(b"arch="), Request::Invalid);
        assert_eq!(parse_request(b"march=vmx"), Request::Auto);
    }

    #[test]
    fn unsafe_shadow_is_a_whole_word() {
        assert!(allows_unsafe_shadow(b"arch=svm unsafe_shadow"));
        assert!(!allows_unsafe_shadow(b"arch=svm"));
        assert!(!allows_unsafe_shadow(b"unsafe_shadow=0"));
        assert!(!allows_unsafe_shadow(b"xunsafe_shadow"));
    }

    #[test]
    fn the_cpu_decides_unless_forced() {
        assert_eq!(choose(Request::Auto, true, false), Ok(Arch::Svm));
        assert_eq!(choose(Request::Auto, false, true), Ok(Arch::Vmx));
        assert!(choose(Request::Auto, false, false).is_err());
        assert_eq!(
            choose(Request::Force(Arch::Vmx), true, false),
            Ok(Arch::Vmx)
        );
        assert!(choose(Request::Invalid, true, true).is_err());
        assert_eq!(Arch::Vmx.vcpu_arch(), ipc_proto::VcpuArch::Vmx);
    }
}
