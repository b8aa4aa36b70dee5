//! The vmm-server's platform on seL4: guest RAM as the component maps it
//! and the host's clock and CPUID.

use vmm_server::cpuid::HostCpuid;
use vmm_server::emulate::{GuestMemory, NotRam};
use vmm_server::Host;

use sel4_vmm_server::GUEST_WINDOW;

/// Guest RAM as the root task mapped it: `len` bytes at [`GUEST_WINDOW`].
pub struct GuestRam {
    pub len: u64,
}

impl GuestRam {
    fn check(&self, gpa: u64, n: usize) -> Result<*mut u8, NotRam> {
        let end = gpa.checked_add(n as u64).ok_or(NotRam)?;
        if end > self.len {
            return Err(NotRam);
        }
        Ok((GUEST_WINDOW + gpa) as *mut u8)
    }
}

impl GuestMemory for GuestRam {
    fn ram_bytes(&self) -> u64 {
        self.len
    }

    fn read_phys(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), NotRam> {
        let src = self.check(gpa, buf.len())?;
        // SAFETY: `check` keeps the range inside the window, which the root
        // task mapped read-write; the guest does not run while we do.
        unsafe { core::ptr::copy_nonoverlapping(src, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    fn write_phys(&mut self, gpa: u64, data: &[u8]) -> Result<(), NotRam> {
        let dst = self.check(gpa, data.len())?;
        // SAFETY: as for `read_phys`.
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len()) };
        Ok(())
    }
}

/// The host: the TSC (seL4 leaves RDTSC to user level) and the CPU's CPUID.
pub struct Sel4Host {
    pub tsc_hz: u64,
}

pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no memory effects; seL4 leaves CR4.TSD clear.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// XSAVE stays hidden (`offers_xsave` is the default no): XCR0 is seL4's
/// own, which a component cannot load for the guest.
impl HostCpuid for Sel4Host {
    fn host_cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
        let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
        [r.eax, r.ebx, r.ecx, r.edx]
    }
}

impl Host for Sel4Host {
    fn now(&mut self) -> u64 {
        rdtsc()
    }
    /// seL4's measurement, from the root task's boot information.
    fn ticks_per_second(&self) -> u64 {
        self.tsc_hz
    }

    /// Spins until the TSC reaches `t`, a millisecond at a time at most
    /// (the caller polls the devices and waits again), as the native
    /// vmm-server does.
    fn wait_until(&mut self, t: u64) {
        let most = (self.tsc_hz / 1000).max(1);
        let start = rdtsc();
        while rdtsc() < t && rdtsc().wrapping_sub(start) < most {
            core::hint::spin_loop();
        }
    }
}
