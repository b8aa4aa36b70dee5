//! Architectural bits of the control registers and EFER, named once for
//! the stub's allowlists, the mmu-server's model of the guest's registers
//! and the simulator (AMD APM vol. 2, 3.1 "System-Control Registers";
//! Intel SDM vol. 3, 2.5 "Control Registers").

/// CR0 bits.
pub mod cr0 {
    /// Protection enable.
    pub const PE: u64 = 1 << 0;
    /// Monitor coprocessor.
    pub const MP: u64 = 1 << 1;
    /// Emulation.
    pub const EM: u64 = 1 << 2;
    /// Task switched.
    pub const TS: u64 = 1 << 3;
    /// Extension type (reads as one).
    pub const ET: u64 = 1 << 4;
    /// Numeric error.
    pub const NE: u64 = 1 << 5;
    /// Write protect: supervisor writes honour R/W.
    pub const WP: u64 = 1 << 16;
    /// Alignment mask.
    pub const AM: u64 = 1 << 18;
    /// Not write-through.
    pub const NW: u64 = 1 << 29;
    /// Cache disable.
    pub const CD: u64 = 1 << 30;
    /// Paging.
    pub const PG: u64 = 1 << 31;
    /// Every bit a MOV to CR0 may change; the others of 31..0 are ignored.
    pub const DEFINED: u64 = PE | MP | EM | TS | ET | NE | WP | AM | NW | CD | PG;
}

/// CR4 bits.
pub mod cr4 {
    /// Virtual-8086 mode extensions.
    pub const VME: u64 = 1 << 0;
    /// Protected-mode virtual interrupts.
    pub const PVI: u64 = 1 << 1;
    /// Time-stamp disable.
    pub const TSD: u64 = 1 << 2;
    /// Debugging extensions.
    pub const DE: u64 = 1 << 3;
    /// Page-size extensions: 4 MiB pages in 32-bit paging.
    pub const PSE: u64 = 1 << 4;
    /// Physical-address extension.
    pub const PAE: u64 = 1 << 5;
    /// Machine-check enable.
    pub const MCE: u64 = 1 << 6;
    /// Page-global enable.
    pub const PGE: u64 = 1 << 7;
    /// Performance-counter enable.
    pub const PCE: u64 = 1 << 8;
    /// FXSAVE/FXRSTOR support.
    pub const OSFXSR: u64 = 1 << 9;
    /// Unmasked SIMD exceptions.
    pub const OSXMMEXCPT: u64 = 1 << 10;
    /// User-mode instruction prevention.
    pub const UMIP: u64 = 1 << 11;
    /// Five-level paging.
    pub const LA57: u64 = 1 << 12;
    /// VMX enable.
    pub const VMXE: u64 = 1 << 13;
    /// SMX enable.
    pub const SMXE: u64 = 1 << 14;
    /// RDFSBASE and friends.
    pub const FSGSBASE: u64 = 1 << 16;
    /// Process-context identifiers.
    pub const PCIDE: u64 = 1 << 17;
    /// XSAVE.
    pub const OSXSAVE: u64 = 1 << 18;
    /// Key locker.
    pub const KL: u64 = 1 << 19;
    /// Supervisor-mode execution prevention.
    pub const SMEP: u64 = 1 << 20;
    /// Supervisor-mode access prevention.
    pub const SMAP: u64 = 1 << 21;
    /// Protection keys.
    pub const PKE: u64 = 1 << 22;
    /// Control-flow enforcement.
    pub const CET: u64 = 1 << 23;
    /// Protection keys for supervisor pages.
    pub const PKS: u64 = 1 << 24;
    /// User interrupts.
    pub const UINTR: u64 = 1 << 25;
    /// Linear-address masking for supervisor pointers.
    pub const LAM_SUP: u64 = 1 << 28;
    /// The bits a nested-paging guest owns outright: those every x86-64
    /// CPU has, but MCE (the VM's CPUID hides machine checks). On VMX a MOV
    /// to CR4 that changes only these does not exit (the stub's CR4
    /// guest/host mask covers every other bit); on SVM every MOV to CR4
    /// exits. The vmm-server answers the exit with #GP(0) for a bit the
    /// VM's CPUID does not offer, or applies the value with `SET_PAGING`.
    pub const NESTED_GUEST_OWNED: u64 =
        VME | PVI | TSD | DE | PSE | PAE | PGE | PCE | OSFXSR | OSXMMEXCPT;
}

/// EFER (MSR `0xC000_0080`) bits.
pub mod efer {
    /// The MSR number.
    pub const MSR: u32 = 0xC000_0080;
    /// SYSCALL enable.
    pub const SCE: u64 = 1 << 0;
    /// Long mode enable.
    pub const LME: u64 = 1 << 8;
    /// Long mode active (read-only: LME and CR0.PG).
    pub const LMA: u64 = 1 << 10;
    /// No-execute enable.
    pub const NXE: u64 = 1 << 11;
    /// Secure virtual machine enable (not offered to guests).
    pub const SVME: u64 = 1 << 12;
    /// Long-mode segment limit enable.
    pub const LMSLE: u64 = 1 << 13;
    /// Fast FXSAVE/FXRSTOR.
    pub const FFXSR: u64 = 1 << 14;
    /// Translation-cache extension.
    pub const TCE: u64 = 1 << 15;
}

/// XCR0 bits (Intel SDM vol. 1, 13.3; AMD APM vol. 2, 11.5.2).
pub mod xcr0 {
    /// x87 state: always set (XSETBV #GP otherwise).
    pub const X87: u64 = 1 << 0;
    /// SSE state (XMM registers, MXCSR).
    pub const SSE: u64 = 1 << 1;
    /// AVX state (the upper halves of the YMM registers); needs SSE.
    pub const AVX: u64 = 1 << 2;
    /// The bits a guest may ever hold: no MPX, AVX-512, PKRU, AMX or
    /// later state, which the stub has not reviewed.
    pub const ALLOWED: u64 = X87 | SSE | AVX;
}
