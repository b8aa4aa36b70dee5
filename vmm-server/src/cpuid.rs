//! The CPU the guest sees through CPUID: the host's identity (vendor,
//! family, model, brand, caches), with only the features the VM really
//! offers, and a hypervisor leaf.
//!
//! - No SVM or VMX, no SMX: the guest cannot nest.
//! - CPUID.1:ECX bit 31 (hypervisor present) set, and leaf 0x40000000
//!   answers with the maximum hypervisor leaf in EAX and the signature
//!   `"splitvisor\0\0"` in EBX, ECX, EDX (as KVM's `"KVMKVMKVM\0\0\0"`).
//!   Leaf 0x40000001 (features) is zero: no paravirtual interfaces.
//! - One logical processor, APIC ID 0, no HTT, zero cores in the topology
//!   leaves.
//! - On the ISA board, no local APIC, x2APIC or TSC-deadline timer (there
//!   is none: interrupts come from the 8259 pair); on the PC board all
//!   three, with the x2APIC topology leaf ([`with_local_apic`]). No
//!   machine-check architecture, no MONITOR/MWAIT, no performance
//!   counters, no thermal or power leaves.
//! - XSAVE (CPUID.1:ECX bit 26) where the host has it and the platform
//!   lets the guest own XCR0 ([`HostCpuid::offers_xsave`]): VMRUN and VM
//!   entry do not switch XCR0 and neither the stub nor a server uses
//!   extended state, so the guest's XCR0 stays in the hardware; XSETBV
//!   exits, the vmm-server checks it and the stub loads it (`SET_XCR0`).
//!   OSXSAVE (bit 27) reads as the guest's CR4.OSXSAVE. XCR0 offers x87,
//!   SSE and, where the host has AVX, AVX (CPUID.1:ECX bit 28, shown with
//!   it); no MPX, AVX-512, PKRU, AMX; no XSAVES (IA32_XSS is not the
//!   guest's). FMA, F16C and AVX2 stay hidden.
//! - RDTSCP (CPUID.80000001h:EDX bit 27) where the host has it and the
//!   platform gives the guest RDTSCP and TSC_AUX
//!   ([`HostCpuid::offers_rdtscp`]): the native stub lets RDTSCP run
//!   natively (no SVM intercept; VMX "enable RDTSCP") and passes TSC_AUX
//!   (MSR 0xC0000103) through, so the guest owns it; neither the stub nor
//!   a server uses it (see `kernel-stub/INTERCEPTS.md`). Where it is
//!   hidden, RDTSCP is #UD and TSC_AUX #GP. No RDPID (leaf 7 ECX bit 22:
//!   leaf 7 ECX is zero), no PCID/INVPCID, no speculation-control MSRs.
//!
//! Everything else comes from an allowlist of the host's bits, so a new
//! host feature stays hidden until someone decides the VM offers it.

/// Where the hypervisor leaves start.
pub const HYPERVISOR_BASE: u32 = 0x4000_0000;
/// The highest hypervisor leaf.
pub const HYPERVISOR_MAX: u32 = 0x4000_0001;
/// The signature in EBX, ECX, EDX of leaf 0x40000000.
pub const SIGNATURE: [u8; 12] = *b"splitvisor\0\0";
/// The highest basic leaf offered.
pub const BASIC_MAX: u32 = 0x0d;
/// The highest extended leaf offered.
pub const EXTENDED_MAX: u32 = 0x8000_0008;

/// CPUID.1:ECX bit 31: a hypervisor is present.
pub const HYPERVISOR_BIT: u32 = 1 << 31;

/// Leaf 1 ECX bits passed through: SSE3, PCLMULQDQ, SSSE3, CX16, SSE4.1,
/// SSE4.2, MOVBE, POPCNT, AES, RDRAND.
const LEAF1_ECX: u32 =
    1 << 0 | 1 << 1 | 1 << 9 | 1 << 13 | 1 << 19 | 1 << 20 | 1 << 22 | 1 << 23 | 1 << 25 | 1 << 30;
/// Leaf 1 EDX bits passed through: FPU, VME, DE, PSE, TSC, MSR, PAE, CX8,
/// SEP, MTRR, PGE, CMOV, PAT, PSE-36, CLFSH, MMX, FXSR, SSE, SSE2.
const LEAF1_EDX: u32 = 1 << 0
    | 1 << 1
    | 1 << 2
    | 1 << 3
    | 1 << 4
    | 1 << 5
    | 1 << 6
    | 1 << 8
    | 1 << 11
    | 1 << 12
    | 1 << 13
    | 1 << 15
    | 1 << 16
    | 1 << 17
    | 1 << 19
    | 1 << 23
    | 1 << 24
    | 1 << 25
    | 1 << 26;
/// Leaf 7.0 EBX bits passed through: FSGSBASE, BMI1, SMEP, BMI2, ERMS,
/// ADX, SMAP, CLFLUSHOPT, CLWB, SHA.
const LEAF7_EBX: u32 =
    1 << 0 | 1 << 3 | 1 << 7 | 1 << 8 | 1 << 9 | 1 << 19 | 1 << 20 | 1 << 23 | 1 << 24 | 1 << 29;
/// Leaf 7.0 EBX bits hidden under shadow paging: SMEP and SMAP, which the
/// mmu-server's walker does not model (it answers their CR4 bits with #GP;
/// Linux sets SMEP as soon as CPUID shows it).
pub const SHADOW_HIDDEN_LEAF7_EBX: u32 = 1 << 7 | 1 << 20;
/// Leaf 0x80000001 ECX bits passed through: LAHF/SAHF, ABM (LZCNT),
/// SSE4A, misaligned SSE, 3DNow! prefetch.
const EXT1_ECX: u32 = 1 << 0 | 1 << 5 | 1 << 6 | 1 << 7 | 1 << 8;
/// Leaf 0x80000001 EDX bits passed through: the leaf-1 bits AMD mirrors
/// here, SYSCALL, NX, MMX extensions, 1 GiB pages, long mode.
const EXT1_EDX: u32 = (LEAF1_EDX & 0x0183_f3ff) | 1 << 11 | 1 << 20 | 1 << 22 | 1 << 26 | 1 << 29;

/// The host's CPUID, as the policy's source of identity.
pub trait HostCpuid {
    /// EAX, EBX, ECX, EDX of `leaf`/`subleaf` on the host.
    fn host_cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4];
    /// Whether the platform runs RDTSCP natively and lets the guest own
    /// TSC_AUX wherever the host's CPUID shows RDTSCP (the native stub
    /// does); only then does the guest's CPUID show it. Default: no.
    fn offers_rdtscp(&self) -> bool {
        false
    }
    /// Whether the platform lets the guest own XCR0 (loaded by the stub on
    /// a checked `SET_XCR0`, never switched) wherever the host has XSAVE;
    /// only then does the guest's CPUID show XSAVE. Default: no.
    fn offers_xsave(&self) -> bool {
        false
    }
    /// The XCR0 the hardware holds now (the guest's), where the platform
    /// can read it: the vmm-server's own record misses XSETBVs an
    /// emulator runs without an exit (QEMU 7.2 TCG ignores the SVM
    /// intercept). Default: unknown.
    fn current_xcr0(&self) -> Option<u64> {
        None
    }
}

/// CPUID.80000001h:EDX bit 27: RDTSCP and TSC_AUX.
pub const EXT1_EDX_RDTSCP: u32 = 1 << 27;
/// CPUID.1:ECX bit 26: XSAVE, XRSTOR, XSETBV, XGETBV and XCR0.
pub const LEAF1_ECX_XSAVE: u32 = 1 << 26;
/// CPUID.1:ECX bit 27: CR4.OSXSAVE is set.
pub const LEAF1_ECX_OSXSAVE: u32 = 1 << 27;
/// CPUID.1:ECX bit 28: AVX.
pub const LEAF1_ECX_AVX: u32 = 1 << 28;
/// CPUID.0Dh.1:EAX bits offered: XSAVEOPT, XSAVEC, XGETBV with ECX = 1.
/// Not XSAVES (bit 3): IA32_XSS is not the guest's.
const LEAF_D1_EAX: u32 = 1 << 0 | 1 << 1 | 1 << 2;
/// Size of the legacy XSAVE area and the XSAVE header.
const XSAVE_LEGACY_AND_HEADER: u32 = 576;

/// The guest's CPUID for `leaf`/`subleaf` with CR4.OSXSAVE clear and XCR0
/// at its reset value (x87 only); see [`guest_cpuid_now`].
pub fn guest_cpuid(host: &dyn HostCpuid, leaf: u32, subleaf: u32) -> [u32; 4] {
    guest_cpuid_now(host, leaf, subleaf, 0, ipc_proto::x86::xcr0::X87)
}

/// The XCR0 bits the VM offers: none without XSAVE; else x87, SSE and,
/// where AVX is offered, AVX, within the host's CPUID 0xD.0.
pub fn offered_xcr0(host: &dyn HostCpuid) -> u64 {
    use ipc_proto::x86::xcr0::*;
    if !xsave_offered(host) {
        return 0;
    }
    let avx = if host.host_cpuid(1, 0)[2] & LEAF1_ECX_AVX != 0 {
        AVX
    } else {
        0
    };
    u64::from(host.host_cpuid(0xd, 0)[0]) & (X87 | SSE | avx)
}

/// Whether the guest sees XSAVE: the platform offers it, the host has it
/// and its leaf 0xD.
fn xsave_offered(host: &dyn HostCpuid) -> bool {
    host.offers_xsave()
        && host.host_cpuid(0, 0)[0] >= 0xd
        && host.host_cpuid(1, 0)[2] & LEAF1_ECX_XSAVE != 0
        && host.host_cpuid(0xd, 0)[0] & 3 == 3
}

/// Whether XSETBV may load `value` into XCR0 for a VM offering `offered`
/// (SDM vol. 2C, XSETBV: #GP(0) for x87 clear, AVX without SSE, or a bit
/// not supported; here "supported" is what the VM offers).
pub fn xcr0_valid(value: u64, offered: u64) -> bool {
    use ipc_proto::x86::xcr0::*;
    value & !offered == 0 && value & X87 != 0 && (value & AVX == 0 || value & SSE != 0)
}

/// The XSAVE area's size for the components in `xcr0`: the legacy area
/// and header, and each enabled component's offset plus size (CPUID
/// 0xD.i, i >= 2).
fn xsave_size(host: &dyn HostCpuid, xcr0: u64) -> u32 {
    (2..63u32)
        .filter(|i| xcr0 >> i & 1 != 0)
        .map(|i| {
            let [size, offset, _, _] = host.host_cpuid(0xd, i);
            size.saturating_add(offset)
        })
        .fold(XSAVE_LEGACY_AND_HEADER, u32::max)
}

/// The compacted XSAVE area's size (XSAVEC) for the components in `xcr0`:
/// after the legacy area and header, each enabled component in order,
/// 64-byte aligned where CPUID 0xD.i ECX bit 1 says so (SDM vol. 1,
/// 13.4.3). Linux sizes its buffers from it where XSAVEC is shown.
fn xsave_compacted_size(host: &dyn HostCpuid, xcr0: u64) -> u32 {
    (2..63u32)
        .filter(|i| xcr0 >> i & 1 != 0)
        .fold(XSAVE_LEGACY_AND_HEADER, |at, i| {
            let [size, _, ecx, _] = host.host_cpuid(0xd, i);
            let at = if ecx & 2 != 0 {
                at.saturating_add(63) & !63
            } else {
                at
            };
            at.saturating_add(size)
        })
}

/// The guest's CPUID for `leaf`/`subleaf` when its CR4 is `cr4` and its
/// XCR0 `xcr0` (CPUID.1:ECX.OSXSAVE and CPUID.0Dh.0:EBX depend on them).
pub fn guest_cpuid_now(
    host: &dyn HostCpuid,
    leaf: u32,
    subleaf: u32,
    cr4: u64,
    xcr0: u64,
) -> [u32; 4] {
    let mut r = guest_cpuid_base(host, leaf, subleaf);
    let offered = offered_xcr0(host);
    if offered == 0 {
        return r;
    }
    match (leaf, subleaf) {
        (1, _) => {
            r[2] |= LEAF1_ECX_XSAVE;
            if offered & ipc_proto::x86::xcr0::AVX != 0 {
                r[2] |= LEAF1_ECX_AVX;
            }
            if cr4 & ipc_proto::x86::cr4::OSXSAVE != 0 {
                r[2] |= LEAF1_ECX_OSXSAVE;
            }
        }
        (0xd, 0) => {
            let size = xsave_size(host, xcr0 & offered);
            r = [offered as u32, size, xsave_size(host, offered), 0];
        }
        // EBX: the compacted size for XCR0 (IA32_XSS is 0 for the guest).
        (0xd, 1) => {
            let size = xsave_compacted_size(host, xcr0 & offered);
            r = [host.host_cpuid(0xd, 1)[0] & LEAF_D1_EAX, size, 0, 0];
        }
        (0xd, i) if i < 64 && offered >> i & 1 != 0 => {
            let [a, b, c, _] = host.host_cpuid(0xd, i);
            // ECX bit 0 (supervisor state) is clear for user components.
            r = [a, b, c & 2, 0];
        }
        _ => {}
    }
    r
}

fn guest_cpuid_base(host: &dyn HostCpuid, leaf: u32, subleaf: u32) -> [u32; 4] {
    let h = |l, s| host.host_cpuid(l, s);
    let basic_max = h(0, 0)[0].min(BASIC_MAX);
    let ext_max = h(0x8000_0000, 0)[0].min(EXTENDED_MAX);
    match leaf {
        0 => {
            let [_, b, c, d] = h(0, 0);
            [basic_max, b, c, d]
        }
        l if l <= basic_max => basic(host, l, subleaf),
        HYPERVISOR_BASE => {
            let w = |i: usize| {
                u32::from_le_bytes([
                    SIGNATURE[i],
                    SIGNATURE[i + 1],
                    SIGNATURE[i + 2],
                    SIGNATURE[i + 3],
                ])
            };
            [HYPERVISOR_MAX, w(0), w(4), w(8)]
        }
        0x8000_0000 => {
            let [_, b, c, d] = h(0x8000_0000, 0);
            [ext_max, b, c, d]
        }
        l if (0x8000_0001..=ext_max).contains(&l) => extended(host, l),
        // Unknown leaves read as zero (AMD behaviour; Intel repeats the
        // highest basic leaf).
        _ => [0; 4],
    }
}

fn basic(host: &dyn HostCpuid, leaf: u32, subleaf: u32) -> [u32; 4] {
    let [a, b, c, d] = host.host_cpuid(leaf, subleaf);
    match leaf {
        1 => {
            // EBX: brand index and CLFLUSH size kept; one logical
            // processor; initial APIC ID 0.
            let ebx = (b & 0xffff) | 1 << 16;
            [a, ebx, (c & LEAF1_ECX) | HYPERVISOR_BIT, d & LEAF1_EDX]
        }
        // Cache descriptors (Intel).
        2 => [a, b, c, d],
        // Deterministic cache parameters: one core, one thread per cache.
        4 => [a & 0x3fff, b, c, d],
        7 if subleaf == 0 => [0, b & LEAF7_EBX, 0, 0],
        _ => [0; 4],
    }
}

fn extended(host: &dyn HostCpuid, leaf: u32) -> [u32; 4] {
    let [a, b, c, d] = host.host_cpuid(leaf, 0);
    match leaf {
        0x8000_0001 => {
            let rdtscp = if host.offers_rdtscp() {
                EXT1_EDX_RDTSCP
            } else {
                0
            };
            [a, 0, c & EXT1_ECX, d & (EXT1_EDX | rdtscp)]
        }
        // Brand string, L1 and L2/L3 cache and TLB information.
        0x8000_0002..=0x8000_0006 => [a, b, c, d],
        // Power management: only the invariant TSC.
        0x8000_0007 => [0, 0, 0, d & (1 << 8)],
        // Address sizes kept; no extra features, one core.
        0x8000_0008 => [a & 0x00ff_ffff, 0, 0, 0],
        _ => [0; 4],
    }
}

/// The CR4 bits the VM offers: those whose feature the guest's CPUID
/// shows (the shape of the stub's `PagingRules::from_cpuid`, with PSE,
/// which nested paging lets the guest use). A MOV to CR4 that sets any
/// other bit raises #GP(0), as on a CPU without the feature: OSXSAVE
/// (XSAVE is hidden), PCIDE (PCID is hidden), MCE, LA57, PKE, VMXE...
pub fn offered_cr4(host: &dyn HostCpuid) -> u64 {
    use ipc_proto::x86::cr4::*;
    let guest = |leaf, subleaf| guest_cpuid(host, leaf, subleaf);
    let [_, _, ecx1, edx1] = guest(1, 0);
    let [_, ebx7, ecx7, _] = guest(7, 0);
    let has = |word: u32, bit: u32, feature: u64| if word >> bit & 1 != 0 { feature } else { 0 };
    TSD | PCE
        | has(edx1, 1, VME | PVI)
        | has(edx1, 2, DE)
        | has(edx1, 3, PSE)
        | has(edx1, 6, PAE)
        | has(edx1, 7, MCE)
        | has(edx1, 13, PGE)
        | has(edx1, 24, OSFXSR)
        | has(edx1, 25, OSXMMEXCPT)
        | has(ecx1, 17, PCIDE)
        | has(ecx1, 26, OSXSAVE)
        | has(ebx7, 0, FSGSBASE)
        | has(ebx7, 7, SMEP)
        | has(ebx7, 20, SMAP)
        | has(ecx7, 2, UMIP)
}

/// CPUID.1:EDX bit 9: an on-chip local APIC.
pub const LEAF1_EDX_APIC: u32 = 1 << 9;
/// CPUID.1:ECX bit 21: x2APIC.
pub const LEAF1_ECX_X2APIC: u32 = 1 << 21;
/// CPUID.1:ECX bit 24: the local APIC timer's TSC-deadline mode.
pub const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
/// CPUID.80000001h:EDX bit 9: the local APIC (AMD's copy of the bit).
pub const EXT1_EDX_APIC: u32 = 1 << 9;

/// The leaves as the PC board changes them: its local APIC (xAPIC,
/// x2APIC and TSC-deadline, APIC ID 0) in leaves 1 and 0x80000001, and
/// the x2APIC topology leaf 0xB: one thread of one core, x2APIC ID 0
/// (SDM vol. 2A, CPUID leaf 0BH).
pub fn with_local_apic(leaf: u32, subleaf: u32, r: [u32; 4]) -> [u32; 4] {
    let [a, b, c, d] = r;
    match leaf {
        1 => [
            a,
            b & 0x00ff_ffff,
            c | LEAF1_ECX_X2APIC | LEAF1_ECX_TSC_DEADLINE,
            d | LEAF1_EDX_APIC,
        ],
        0xb => match subleaf {
            // Level 0: SMT, one logical processor; level 1: core, one.
            0 => [0, 1, 1 << 8, 0],
            1 => [0, 1, 2 << 8 | 1, 0],
            // Past the last level: type 0 (invalid), ECX[7:0] echoes.
            s => [0, 0, s & 0xff, 0],
        },
        0x8000_0001 => [a, b, c, d | EXT1_EDX_APIC],
        _ => r,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A host that says yes to everything, as AMD EPYC with SVM would.
    pub(crate) struct EveryFeature;

    impl HostCpuid for EveryFeature {
        fn host_cpuid(&self, leaf: u32, _subleaf: u32) -> [u32; 4] {
            match leaf {
                0 => [0x10, 0x6874_7541, 0x444d_4163, 0x6974_6e65], // "AuthenticAMD"
                1 => [0x0083_0f10, 0x0810_0800 | 0xff << 24, u32::MAX, u32::MAX],
                0x8000_0000 => [0x8000_0021, 0x6874_7541, 0x444d_4163, 0x6974_6e65],
                0x8000_0008 => [0x3030, u32::MAX, u32::MAX, u32::MAX],
                _ => [u32::MAX; 4],
            }
        }
    }

    #[test]
    fn no_virtualization_and_the_hypervisor_bit() {
        let h = EveryFeature;
        let [_, ebx, ecx, edx] = guest_cpuid(&h, 1, 0);
        assert_eq!(ecx & (1 << 5), 0, "no VMX");
        assert_eq!(ecx & (1 << 6), 0, "no SMX");
        assert_eq!(ecx & HYPERVISOR_BIT, HYPERVISOR_BIT);
        assert_eq!(
            ecx & (1 << 26 | 1 << 27 | 1 << 28),
            0,
            "no XSAVE, OSXSAVE, AVX"
        );
        assert_eq!(edx & (1 << 9), 0, "no APIC");
        assert_eq!(edx & (1 << 28), 0, "no HTT");
        assert_eq!(edx & (1 << 7 | 1 << 14), 0, "no MCE/MCA");
        assert_ne!(
            edx & (1 << 4 | 1 << 6 | 1 << 25 | 1 << 26),
            0,
            "TSC, PAE, SSE, SSE2"
        );
        assert_eq!(ebx >> 16, 1, "one logical processor, APIC ID 0");
        let [_, _, ecx, edx] = guest_cpuid(&h, 0x8000_0001, 0);
        assert_eq!(ecx & (1 << 2), 0, "no SVM");
        assert_ne!(edx & (1 << 29), 0, "long mode");
        assert_ne!(edx & (1 << 20), 0, "NX");
        assert_eq!(edx & (1 << 27), 0, "no RDTSCP");
        assert_eq!(guest_cpuid(&h, 0x8000_000a, 0), [0; 4], "no SVM leaf");
    }

    /// RDTSCP is shown only where the host has it and the platform
    /// offers it; RDPID stays hidden.
    #[test]
    fn rdtscp_where_the_host_has_it_and_the_platform_offers_it() {
        struct Offering(u32);
        impl HostCpuid for Offering {
            fn host_cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
                let [a, b, c, d] = EveryFeature.host_cpuid(leaf, subleaf);
                match leaf {
                    0x8000_0001 => [a, b, c, d & self.0],
                    _ => [a, b, c, d],
                }
            }
            fn offers_rdtscp(&self) -> bool {
                true
            }
        }
        let rdtscp = |h: &dyn HostCpuid| guest_cpuid(h, 0x8000_0001, 0)[3] & EXT1_EDX_RDTSCP;
        assert_eq!(rdtscp(&Offering(u32::MAX)), EXT1_EDX_RDTSCP);
        assert_eq!(rdtscp(&Offering(!EXT1_EDX_RDTSCP)), 0, "the host lacks it");
        assert_eq!(rdtscp(&EveryFeature), 0, "the platform does not offer it");
        let [_, _, ecx7, _] = guest_cpuid(&Offering(u32::MAX), 7, 0);
        assert_eq!(ecx7 & (1 << 22), 0, "no RDPID");
        // Nothing else in the leaf changes.
        let [a, b, c, d] = guest_cpuid(&Offering(u32::MAX), 0x8000_0001, 0);
        assert_eq!(
            [a, b, c, d & !EXT1_EDX_RDTSCP],
            guest_cpuid(&EveryFeature, 0x8000_0001, 0)
        );
    }

    /// A host with XSAVE that offers it: x87, SSE, AVX, MPX, AVX-512 and
    /// PKRU in its XCR0 (0x2e7 without MPX), XSAVEOPT, XSAVEC, XGETBV1,
    /// XSAVES; `avx` says whether leaf 1 shows AVX.
    pub(crate) struct XsaveHost {
        pub avx: bool,
    }

    impl HostCpuid for XsaveHost {
        fn host_cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
            match (leaf, subleaf) {
                (1, _) => {
                    let [a, b, c, d] = EveryFeature.host_cpuid(1, 0);
                    let c = if self.avx { c } else { c & !LEAF1_ECX_AVX };
                    [a, b, c, d]
                }
                (0xd, 0) => [0x2e7, 0x988, 0xa88, 0],
                (0xd, 1) => [0xf, 0x988, 0x1800, 0],
                (0xd, 2) => [256, 576, 0, 0],
                (0xd, 5) => [64, 1088, 0, 0],
                (0xd, 6) => [512, 1152, 0, 0],
                (0xd, 7) => [1024, 1664, 0, 0],
                (0xd, 9) => [8, 2688, 0, 0],
                (0xd, 11) => [16, 0, 1, 0],
                (0xd, _) => [0; 4],
                _ => EveryFeature.host_cpuid(leaf, subleaf),
            }
        }
        fn offers_xsave(&self) -> bool {
            true
        }
    }

    /// Issue 11, defect 7: XSAVE where the host has it and the platform
    /// offers it, with x87, SSE and AVX only; OSXSAVE follows CR4.OSXSAVE,
    /// 0xD.0 EBX the current XCR0; no XSAVES; hidden components read 0.
    #[test]
    fn xsave_where_the_host_has_it_and_the_platform_offers_it() {
        use ipc_proto::x86::cr4::OSXSAVE;
        let h = XsaveHost { avx: true };
        assert_eq!(offered_xcr0(&h), 7);
        let [_, _, ecx, _] = guest_cpuid_now(&h, 1, 0, 0, 1);
        assert_eq!(
            ecx & (LEAF1_ECX_XSAVE | LEAF1_ECX_OSXSAVE | LEAF1_ECX_AVX),
            LEAF1_ECX_XSAVE | LEAF1_ECX_AVX
        );
        let [_, _, ecx, _] = guest_cpuid_now(&h, 1, 0, OSXSAVE, 1);
        assert_ne!(ecx & LEAF1_ECX_OSXSAVE, 0);
        assert_eq!(guest_cpuid_now(&h, 0xd, 0, OSXSAVE, 1), [7, 576, 832, 0]);
        assert_eq!(guest_cpuid_now(&h, 0xd, 0, OSXSAVE, 3), [7, 576, 832, 0]);
        assert_eq!(guest_cpuid_now(&h, 0xd, 0, OSXSAVE, 7), [7, 832, 832, 0]);
        // An XCR0 the guest could not have set counts only what is offered.
        assert_eq!(guest_cpuid_now(&h, 0xd, 0, OSXSAVE, 0x2e7)[1], 832);
        assert_eq!(
            guest_cpuid_now(&h, 0xd, 1, 0, 1),
            [7, 576, 0, 0],
            "no XSAVES"
        );
        // EBX: the compacted (XSAVEC) size for the current XCR0 (Linux
        // checks it against its own sum where XSAVEC is shown).
        assert_eq!(guest_cpuid_now(&h, 0xd, 1, OSXSAVE, 7)[1], 832);
        assert_eq!(guest_cpuid_now(&h, 0xd, 2, 0, 1), [256, 576, 0, 0]);
        for hidden in [3, 4, 5, 6, 7, 9, 11, 17, 63, 64, 100] {
            assert_eq!(guest_cpuid_now(&h, 0xd, hidden, 0, 1), [0; 4], "{hidden}");
        }
        // Without AVX in leaf 1: x87 and SSE, no YMM.
        let h = XsaveHost { avx: false };
        assert_eq!(offered_xcr0(&h), 3);
        assert_eq!(guest_cpuid_now(&h, 1, 0, 0, 1)[2] & LEAF1_ECX_AVX, 0);
        assert_eq!(guest_cpuid_now(&h, 0xd, 0, 0, 1), [3, 576, 576, 0]);
        assert_eq!(guest_cpuid_now(&h, 0xd, 2, 0, 1), [0; 4]);
        // A platform that does not offer it (seL4): hidden, as before.
        assert_eq!(offered_xcr0(&EveryFeature), 0);
        assert_eq!(guest_cpuid_now(&EveryFeature, 0xd, 0, OSXSAVE, 7), [0; 4]);
        assert_eq!(offered_cr4(&XsaveHost { avx: true }) & OSXSAVE, OSXSAVE);
    }

    #[test]
    fn xcr0_values_follow_xsetbv() {
        for ok in [1, 3, 7] {
            assert!(xcr0_valid(ok, 7), "{ok}");
        }
        for bad in [0, 2, 4, 5, 6, 8, 0x203, 1 << 32 | 1] {
            assert!(!xcr0_valid(bad, 7), "{bad:#x}");
        }
        assert!(!xcr0_valid(7, 3));
    }

    /// Issue 11, defect 7: CPUID hides XSAVE and PCID, so CR4.OSXSAVE and
    /// CR4.PCIDE are not offered; nor is MCE (no machine checks). What is
    /// offered lies within the bits a nested guest owns outright and those
    /// the stub lets a server set.
    #[test]
    fn the_offered_cr4_follows_the_guests_cpuid() {
        use ipc_proto::x86::cr4::*;
        let offered = offered_cr4(&EveryFeature);
        assert_eq!(
            offered,
            NESTED_GUEST_OWNED | FSGSBASE | SMEP | SMAP,
            "{offered:#x}"
        );
        for hidden in [OSXSAVE, PCIDE, MCE, LA57, PKE, VMXE, SMXE, UMIP, CET] {
            assert_eq!(offered & hidden, 0, "{hidden:#x}");
        }
    }

    #[test]
    fn the_splitvisor_leaf() {
        let [max, b, c, d] = guest_cpuid(&EveryFeature, HYPERVISOR_BASE, 0);
        assert_eq!(max, HYPERVISOR_MAX);
        let mut sig = [0u8; 12];
        sig[..4].copy_from_slice(&b.to_le_bytes());
        sig[4..8].copy_from_slice(&c.to_le_bytes());
        sig[8..].copy_from_slice(&d.to_le_bytes());
        assert_eq!(&sig, b"splitvisor\0\0");
        assert_eq!(guest_cpuid(&EveryFeature, HYPERVISOR_BASE + 1, 0), [0; 4]);
    }

    #[test]
    fn limits_and_unknown_leaves() {
        let h = EveryFeature;
        let [max, vendor_b, ..] = guest_cpuid(&h, 0, 0);
        assert_eq!(max, BASIC_MAX);
        assert_eq!(vendor_b, 0x6874_7541, "the host's vendor");
        assert_eq!(guest_cpuid(&h, 0x8000_0000, 0)[0], EXTENDED_MAX);
        assert_eq!(guest_cpuid(&h, 0xe, 0), [0; 4], "above the basic maximum");
        assert_eq!(guest_cpuid(&h, 0x8000_0021, 0), [0; 4]);
        assert_eq!(guest_cpuid(&h, 7, 1), [0; 4]);
        assert_eq!(guest_cpuid(&h, 7, 0)[0], 0, "no further subleaves");
        assert_eq!(guest_cpuid(&h, 0xb, 0), [0; 4], "no topology");
        assert_eq!(guest_cpuid(&h, 0x8000_0008, 0), [0x3030, 0, 0, 0]);
    }
}
