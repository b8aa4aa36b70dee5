//! What the Intel SDM says about VMX values, as plain functions with no
//! hardware access, so that they are tested on the host: control settings
//! from the capability MSRs, the fixed CR0/CR4 bits, access rights, event
//! formats, and the checks behind a failed VM entry, which name the field
//! that was wrong. The stub's `arch::vmx` applies them to the real VMCS.

use core::fmt;

/// The allowed settings of one control field, from its capability MSR
/// (SDM vol. 3D, A.3-A.5): bits 31:0 are the allowed-0 settings (a 1
/// there must be 1), bits 63:32 the allowed-1 settings (a 0 there must be 0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Allowed {
    /// Bits that must be 1.
    pub must_be_one: u32,
    /// Bits that may be 1.
    pub may_be_one: u32,
}

impl Allowed {
    /// Decodes a capability MSR.
    #[allow(clippy::cast_possible_truncation, reason = "the MSR's two halves")]
    pub fn from_msr(msr: u64) -> Self {
        Self {
            must_be_one: msr as u32,
            may_be_one: (msr >> 32) as u32,
        }
    }

    /// The value to program when `wanted` is what the stub would like:
    /// forced bits added, impossible bits dropped.
    pub fn adjust(self, wanted: u32) -> u32 {
        (wanted | self.must_be_one) & self.may_be_one
    }

    /// Whether every bit of `bits` may be 1.
    pub fn allows(self, bits: u32) -> bool {
        bits & !self.may_be_one == 0
    }

    /// The bits of `value` that break the rules (0 when it is allowed).
    pub fn violations(self, value: u32) -> u32 {
        (self.must_be_one & !value) | (value & !self.may_be_one)
    }
}

/// The bits of a CR0 or CR4 value that break IA32_VMX_CRn_FIXED0/1 (SDM
/// vol. 3D, A.7, A.8): bits set in FIXED0 must be 1, bits clear in FIXED1 must be 0.
pub fn fixed_violations(value: u64, fixed0: u64, fixed1: u64) -> u64 {
    (fixed0 & !value) | (value & !fixed1)
}

pub const CR0_PE: u64 = 1 << 0;
pub const CR0_PG: u64 = 1 << 31;
pub const CR4_PAE: u64 = 1 << 5;
pub const CR4_VMXE: u64 = 1 << 13;
pub const EFER_LME: u64 = 1 << 8;
pub const EFER_LMA: u64 = 1 << 10;
pub const RFLAGS_IF: u64 = 1 << 9;
pub const RFLAGS_VM: u64 = 1 << 17;

// Control bits (SDM vol. 3C, 24.6-24.8).
pub const PIN_EXTERNAL_INTERRUPT_EXITING: u32 = 1 << 0;
pub const PIN_NMI_EXITING: u32 = 1 << 3;
pub const PROC_INTERRUPT_WINDOW_EXITING: u32 = 1 << 2;
pub const PROC_USE_TSC_OFFSETTING: u32 = 1 << 3;
pub const PROC_HLT_EXITING: u32 = 1 << 7;
pub const PROC_INVLPG_EXITING: u32 = 1 << 9;
pub const PROC_MWAIT_EXITING: u32 = 1 << 10;
pub const PROC_RDPMC_EXITING: u32 = 1 << 11;
pub const PROC_CR3_LOAD_EXITING: u32 = 1 << 15;
pub const PROC_CR3_STORE_EXITING: u32 = 1 << 16;
pub const PROC_UNCONDITIONAL_IO_EXITING: u32 = 1 << 24;
pub const PROC_USE_IO_BITMAPS: u32 = 1 << 25;
pub const PROC_USE_MSR_BITMAPS: u32 = 1 << 28;
pub const PROC_MONITOR_EXITING: u32 = 1 << 29;
pub const PROC_PAUSE_EXITING: u32 = 1 << 30;
pub const PROC_SECONDARY_CONTROLS: u32 = 1 << 31;
pub const PROC2_ENABLE_EPT: u32 = 1 << 1;
pub const PROC2_UNRESTRICTED_GUEST: u32 = 1 << 7;
pub const PROC2_ENABLE_RDTSCP: u32 = 1 << 3;

/// The primary and secondary control bits that give the guest RDTSCP
/// (its TSC_AUX is its own): where the host has it and both bits may be
/// 1; else none, and RDTSCP is #UD (SDM 25.3).
pub fn rdtscp_controls(host_rdtscp: bool, caps: &Caps) -> (u32, u32) {
    let ok = caps.proc.allows(PROC_SECONDARY_CONTROLS) && caps.proc2.allows(PROC2_ENABLE_RDTSCP);
    match host_rdtscp && ok {
        true => (PROC_SECONDARY_CONTROLS, PROC2_ENABLE_RDTSCP),
        false => (0, 0),
    }
}
pub const EXIT_HOST_ADDRESS_SPACE_SIZE: u32 = 1 << 9;
pub const EXIT_SAVE_EFER: u32 = 1 << 20;
pub const EXIT_LOAD_EFER: u32 = 1 << 21;
pub const ENTRY_IA32E_MODE_GUEST: u32 = 1 << 9;
pub const ENTRY_LOAD_EFER: u32 = 1 << 15;

/// EPT capabilities (IA32_VMX_EPT_VPID_CAP, SDM vol. 3D, A.10).
pub const EPT_CAP_WALK_LENGTH_4: u64 = 1 << 6;
pub const EPT_CAP_MEMORY_TYPE_UC: u64 = 1 << 8;
pub const EPT_CAP_MEMORY_TYPE_WB: u64 = 1 << 14;
pub const EPT_CAP_2MB_PAGES: u64 = 1 << 16;
pub const EPT_CAP_INVEPT: u64 = 1 << 20;
pub const EPT_CAP_INVEPT_SINGLE: u64 = 1 << 25;
pub const EPT_CAP_INVEPT_ALL: u64 = 1 << 26;
/// IA32_VMX_MISC bit 30: a VM-entry instruction length of 0 is allowed
/// when injecting a software interrupt or exception.
pub const MISC_ZERO_LENGTH_INJECTION: u64 = 1 << 30;

const MEMORY_TYPE_UC: u64 = 0;
const MEMORY_TYPE_WB: u64 = 6;

/// The EPT pointer for a 4-level EPT at `pml4` (SDM vol. 3C, 24.6.11):
/// write-back if the CPU allows it, else uncacheable; walk length 4 - 1;
/// accessed/dirty flags off.
pub fn eptp(pml4: u64, ept_cap: u64) -> u64 {
    let memory_type = if ept_cap & EPT_CAP_MEMORY_TYPE_WB != 0 {
        MEMORY_TYPE_WB
    } else {
        MEMORY_TYPE_UC
    };
    pml4 | (3 << 3) | memory_type
}

/// EPT entry bits (SDM vol. 3C, 29.3.2): read, write, execute; a leaf's
/// memory type (bits 5:3) and "ignore PAT" (bit 6); bit 7 a 2 MiB leaf.
pub const EPT_RWX: u64 = 0b111;
pub const EPT_LEAF_WB: u64 = (MEMORY_TYPE_WB << 3) | (1 << 6);
pub const EPT_LARGE: u64 = 1 << 7;

/// VMX segment access rights (SDM vol. 3C, table 24-2) to the packed SVM
/// attribute of `ipc_proto::Segment`: type, S, DPL and P stay in bits 7:0;
/// AVL, L, D/B and G move from bits 15:12 to 11:8. An unusable segment
/// (bit 16) becomes a not-present one.
pub fn ar_to_attrib(ar: u32) -> u16 {
    if ar & AR_UNUSABLE != 0 {
        return 0;
    }
    #[allow(clippy::cast_possible_truncation, reason = "masked to 12 bits")]
    let attrib = ((ar & 0xff) | ((ar >> 4) & 0xf00)) as u16;
    attrib
}

/// The reverse of [`ar_to_attrib`]; a not-present attribute becomes unusable.
pub fn attrib_to_ar(attrib: u16) -> u32 {
    let a = u32::from(attrib);
    if a & AR_PRESENT == 0 {
        return AR_UNUSABLE;
    }
    (a & 0xff) | ((a & 0xf00) << 4)
}

pub const AR_PRESENT: u32 = 1 << 7;
pub const AR_L: u32 = 1 << 13;
pub const AR_UNUSABLE: u32 = 1 << 16;

/// The descriptor privilege level in access rights.
pub fn ar_dpl(ar: u32) -> u8 {
    ((ar >> 5) & 3) as u8
}

/// The IDT-vectoring information of an exit (SDM vol. 3C, 24.9.3) in the
/// SVM EXITINTINFO format of `ExitRecord::exit_int_info`: vector, type,
/// error-code-valid and valid bits sit at the same places; VMX's software
/// exceptions (type 6, INT3/INTO) and privileged software exceptions
/// (type 5, INT1) are SVM exceptions (type 3); the error code goes to
/// bits 63:32. 0 when nothing was being delivered.
pub fn exit_int_info(idt_vectoring: u32, error_code: u32) -> u64 {
    if idt_vectoring & (1 << 31) == 0 {
        return 0;
    }
    let kind = match (idt_vectoring >> 8) & 7 {
        5 | 6 => 3,
        k => k,
    };
    let ev = idt_vectoring & (1 << 11);
    let ec = if ev != 0 {
        u64::from(error_code) << 32
    } else {
        0
    };
    u64::from(idt_vectoring & 0xff) | u64::from(kind << 8) | u64::from(ev) | (1 << 31) | ec
}

/// The VM-entry interruption information, error code and instruction
/// length for an event of an SVM-numbered `kind` (0 external interrupt,
/// 2 NMI, 3 exception, 4 software interrupt; SDM vol. 3C, 24.8.3).
///
/// VMX requires an error code exactly for a hardware exception with vector
/// 8, 10-14 or 17 in protected mode (SDM 26.2.1.3), so the stub delivers
/// one exactly then, `error_code` or 0, with bits 31:16 dropped (VMX requires them
/// zero; every error code these exceptions define fits in 16 bits). A
/// software interrupt pushes RIP + the instruction length: with length 0
/// (`zero_length_ok`, IA32_VMX_MISC bit 30) it pushes RIP as SVM does;
/// otherwise the caller enters with RIP - 1 and length 1 (`rip_back` = 1).
pub fn entry_event(
    vector: u8,
    kind: u8,
    error_code: u32,
    protected_mode: bool,
    zero_length_ok: bool,
) -> EntryEvent {
    let deliver = kind == 3 && protected_mode && matches!(vector, 8 | 10..=14 | 17);
    let length = u32::from(kind == 4 && !zero_length_ok);
    EntryEvent {
        info: u32::from(vector) | u32::from(kind & 7) << 8 | u32::from(deliver) << 11 | 1 << 31,
        error_code: if deliver { error_code & 0xffff } else { 0 },
        length,
        rip_back: u64::from(length),
    }
}

/// An event ready for the VM-entry fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryEvent {
    /// VM-entry interruption-information field.
    pub info: u32,
    /// VM-entry exception error code.
    pub error_code: u32,
    /// VM-entry instruction length.
    pub length: u32,
    /// How far to move the guest's RIP back so the pushed return address is RIP.
    pub rip_back: u64,
}

/// Basic exit reasons caused by an instruction, for which the VM-exit
/// instruction length is valid (SDM vol. 3C, 28.2.4), as a bit mask of
/// reasons 0..=63: CPUID, GETSEC, HLT, INVD, INVLPG, RDPMC, RDTSC, RSM, the
/// VMX instructions, CR and DR moves, I/O, RDMSR, WRMSR, MWAIT, MONITOR,
/// PAUSE, descriptor-table accesses, INVEPT, RDTSCP, INVVPID, WBINVD,
/// XSETBV, RDRAND, INVPCID, VMFUNC, ENCLS, RDSEED, XSAVES.
const INSTRUCTION_EXITS: u64 = ((1 << 33) - (1 << 10))
    | (1 << 36)
    | (1 << 39)
    | (1 << 40)
    | (0b11 << 46)
    | (0b11 << 50)
    | (0b111 << 53)
    | (0b11_1110 << 56)
    | (1 << 63);

/// Whether the exit's instruction length is meaningful.
pub fn exit_has_instruction_length(basic_reason: u16) -> bool {
    basic_reason < 64 && INSTRUCTION_EXITS & (1 << basic_reason) != 0
}

/// The SDM's text for a VM-instruction error number (vol. 3C, 30.4).
pub fn instruction_error(n: u64) -> &'static str {
    match n {
        1 => "VMCALL executed in VMX root operation",
        2 => "VMCLEAR with invalid physical address",
        3 => "VMCLEAR with VMXON pointer",
        4 => "VMLAUNCH with non-clear VMCS",
        5 => "VMRESUME with non-launched VMCS",
        6 => "VMRESUME after VMXOFF",
        7 => "VM entry with invalid control field(s)",
        8 => "VM entry with invalid host-state field(s)",
        9 => "VMPTRLD with invalid physical address",
        10 => "VMPTRLD with VMXON pointer",
        11 => "VMPTRLD with incorrect VMCS revision identifier",
        12 => "VMREAD/VMWRITE from/to unsupported VMCS component",
        13 => "VMWRITE to read-only VMCS component",
        15 => "VMXON executed in VMX root operation",
        26 => "VM entry with events blocked by MOV SS",
        28 => "invalid operand to INVEPT/INVVPID",
        _ => "an error this stub does not name",
    }
}

/// A VMCS field whose value broke a rule of VM entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Culprit {
    /// The field, named as in the SDM.
    pub field: &'static str,
    /// Its value.
    pub value: u64,
    /// The rule, or the offending bits.
    pub rule: &'static str,
}

impl fmt::Display for Culprit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} = {:#x}: {}", self.field, self.value, self.rule)
    }
}

const fn culprit(field: &'static str, value: u64, rule: &'static str) -> Option<Culprit> {
    Some(Culprit { field, value, rule })
}

/// The capability MSRs that VM entry checks against.
#[derive(Clone, Copy, Debug, Default)]
pub struct Caps {
    pub pin: Allowed,
    pub proc: Allowed,
    pub proc2: Allowed,
    pub exit: Allowed,
    pub entry: Allowed,
    pub cr0_fixed0: u64,
    pub cr0_fixed1: u64,
    pub cr4_fixed0: u64,
    pub cr4_fixed1: u64,
    pub ept: u64,
    pub misc: u64,
}

/// The VM-execution, exit and entry control fields (SDM 26.2.1).
#[derive(Clone, Copy, Debug, Default)]
pub struct Controls {
    pub pin: u32,
    pub proc: u32,
    pub proc2: u32,
    pub exit: u32,
    pub entry: u32,
    pub eptp: u64,
    pub cr3_targets: u32,
    pub entry_info: u32,
    pub entry_error_code: u32,
    pub entry_length: u32,
}

/// Which control field breaks SDM 26.2.1, if the stub can tell.
pub fn control_culprit(c: &Controls, caps: &Caps) -> Option<Culprit> {
    let ctl = |field, value: u32, allowed: Allowed| {
        (allowed.violations(value) != 0).then_some(Culprit {
            field,
            value: u64::from(value),
            rule: "breaks the allowed-0/allowed-1 settings of its capability MSR",
        })
    };
    let secondary = c.proc & PROC_SECONDARY_CONTROLS != 0;
    ctl("pin-based controls", c.pin, caps.pin)
        .or_else(|| ctl("primary processor-based controls", c.proc, caps.proc))
        .or_else(|| {
            secondary
                .then(|| ctl("secondary processor-based controls", c.proc2, caps.proc2))
                .flatten()
        })
        .or_else(|| ctl("VM-exit controls", c.exit, caps.exit))
        .or_else(|| ctl("VM-entry controls", c.entry, caps.entry))
        .or_else(|| {
            let limit = (caps.misc >> 16) & 0x1ff;
            if u64::from(c.cr3_targets) > limit {
                return culprit(
                    "CR3-target count",
                    c.cr3_targets.into(),
                    "exceeds IA32_VMX_MISC[24:16]",
                );
            }
            let proc2 = if secondary { c.proc2 } else { 0 };
            if proc2 & PROC2_UNRESTRICTED_GUEST != 0 && proc2 & PROC2_ENABLE_EPT == 0 {
                return culprit(
                    "secondary processor-based controls",
                    proc2.into(),
                    "unrestricted guest needs EPT",
                );
            }
            if proc2 & PROC2_ENABLE_EPT != 0 {
                let e = c.eptp;
                let type_ok = match e & 7 {
                    0 => caps.ept & EPT_CAP_MEMORY_TYPE_UC != 0,
                    6 => caps.ept & EPT_CAP_MEMORY_TYPE_WB != 0,
                    _ => false,
                };
                if !type_ok || (e >> 3) & 7 != 3 || caps.ept & EPT_CAP_WALK_LENGTH_4 == 0 {
                    return culprit(
                        "EPT pointer",
                        e,
                        "memory type or walk length not supported (IA32_VMX_EPT_VPID_CAP)",
                    );
                }
                if e & 0xf80 != 0 || e & (1 << 6) != 0 {
                    return culprit(
                        "EPT pointer",
                        e,
                        "reserved bits or accessed/dirty flags set",
                    );
                }
            }
            event_culprit(c, caps)
        })
}

/// SDM 26.2.1.3: the event to inject.
fn event_culprit(c: &Controls, caps: &Caps) -> Option<Culprit> {
    let info = c.entry_info;
    if info & (1 << 31) == 0 {
        return None;
    }
    let field = "VM-entry interruption-information field";
    let (kind, vector) = ((info >> 8) & 7, info & 0xff);
    let bad = match kind {
        1 => Some("reserved interruption type 1"),
        2 if vector != 2 => Some("an NMI must have vector 2"),
        3 if vector > 31 => Some("a hardware exception must have a vector below 32"),
        _ if info & 0x7fff_f000 != 0 => Some("reserved bits 30:12 set"),
        4..=6 if c.entry_length > 15 => Some("instruction length above 15"),
        4..=6 if c.entry_length == 0 && caps.misc & MISC_ZERO_LENGTH_INJECTION == 0 => {
            Some("instruction length 0, which IA32_VMX_MISC[30] does not allow")
        }
        _ if info & (1 << 11) != 0 && c.entry_error_code >> 16 != 0 => {
            Some("error code bits 31:16 set")
        }
        _ => None,
    };
    bad.map(|rule| Culprit {
        field,
        value: info.into(),
        rule,
    })
}

/// Host-state fields that VM entry checks (SDM 26.2.2, 26.2.3).
#[derive(Clone, Copy, Debug, Default)]
pub struct HostState {
    pub cr0: u64,
    pub cr4: u64,
    pub efer: u64,
    /// CS, SS, DS, ES, FS, GS, TR selectors.
    pub selectors: [u16; 7],
}

/// Which host-state field breaks SDM 26.2.2-26.2.3, if the stub can tell.
pub fn host_culprit(h: &HostState, exit_controls: u32, caps: &Caps) -> Option<Culprit> {
    if fixed_violations(h.cr0, caps.cr0_fixed0, caps.cr0_fixed1) & 0xffff_ffff != 0 {
        return culprit("host CR0", h.cr0, "breaks IA32_VMX_CR0_FIXED0/1");
    }
    if fixed_violations(h.cr4, caps.cr4_fixed0, caps.cr4_fixed1) != 0 {
        return culprit("host CR4", h.cr4, "breaks IA32_VMX_CR4_FIXED0/1");
    }
    const NAMES: [&str; 7] = [
        "host CS", "host SS", "host DS", "host ES", "host FS", "host GS", "host TR",
    ];
    for (name, &sel) in NAMES.iter().zip(&h.selectors) {
        if sel & 7 != 0 {
            return culprit(name, sel.into(), "selector with RPL or TI set");
        }
    }
    if h.selectors[0] == 0 || h.selectors[6] == 0 {
        return culprit("host CS/TR selector", 0, "must not be null");
    }
    if exit_controls & EXIT_HOST_ADDRESS_SPACE_SIZE == 0 || h.cr4 & CR4_PAE == 0 {
        return culprit(
            "VM-exit controls",
            exit_controls.into(),
            "a 64-bit host needs host address-space size and CR4.PAE",
        );
    }
    if exit_controls & EXIT_LOAD_EFER != 0 && h.efer & (EFER_LMA | EFER_LME) != EFER_LMA | EFER_LME
    {
        return culprit(
            "host IA32_EFER",
            h.efer,
            "LMA and LME must match host address-space size",
        );
    }
    None
}

/// Guest-state fields that VM entry checks (SDM 26.3.1).
#[derive(Clone, Copy, Debug, Default)]
pub struct GuestState {
    pub cr0: u64,
    pub cr4: u64,
    pub efer: u64,
    pub rflags: u64,
    pub rip: u64,
    pub cs_ar: u32,
    pub ss_ar: u32,
    pub tr_ar: u32,
    pub ldtr_ar: u32,
    pub interruptibility: u32,
    pub activity: u32,
    pub link_pointer: u64,
}

/// Which guest-state field breaks SDM 26.3.1, if the stub can tell. A
/// failure it cannot pin down is reported with the exit reason alone.
pub fn guest_culprit(g: &GuestState, c: &Controls, caps: &Caps) -> Option<Culprit> {
    let ug = c.proc & PROC_SECONDARY_CONTROLS != 0 && c.proc2 & PROC2_UNRESTRICTED_GUEST != 0;
    let exempt = if ug { CR0_PE | CR0_PG } else { 0 };
    if fixed_violations(g.cr0, caps.cr0_fixed0 & !exempt, caps.cr0_fixed1) & 0xffff_ffff != 0 {
        return culprit("guest CR0", g.cr0, "breaks IA32_VMX_CR0_FIXED0/1");
    }
    if g.cr0 & CR0_PG != 0 && g.cr0 & CR0_PE == 0 {
        return culprit("guest CR0", g.cr0, "PG set without PE");
    }
    if fixed_violations(g.cr4, caps.cr4_fixed0, caps.cr4_fixed1) != 0 {
        return culprit("guest CR4", g.cr4, "breaks IA32_VMX_CR4_FIXED0/1");
    }
    let ia32e = c.entry & ENTRY_IA32E_MODE_GUEST != 0;
    if c.entry & ENTRY_LOAD_EFER != 0
        && ((g.efer & EFER_LMA != 0) != ia32e
            || (g.cr0 & CR0_PG != 0 && (g.efer & EFER_LME != 0) != ia32e))
    {
        return culprit(
            "guest IA32_EFER",
            g.efer,
            "LMA (and LME when paging) must equal the IA-32e mode guest control",
        );
    }
    if g.rflags & 2 == 0 || g.rflags & (0xffff_ffff_ffc0_0000 | 1 << 15 | 1 << 5 | 1 << 3) != 0 {
        return culprit("guest RFLAGS", g.rflags, "reserved bits");
    }
    if g.rflags & RFLAGS_VM != 0 && (ia32e || g.cr0 & CR0_PE == 0) {
        return culprit(
            "guest RFLAGS",
            g.rflags,
            "VM set in IA-32e mode or real mode",
        );
    }
    let event = c.entry_info & (1 << 31) != 0;
    let kind = (c.entry_info >> 8) & 7;
    if event && kind == 0 && g.rflags & RFLAGS_IF == 0 {
        return culprit(
            "guest RFLAGS",
            g.rflags,
            "IF clear while an external interrupt is injected",
        );
    }
    if !(ia32e && g.cs_ar & AR_L != 0) && g.rip >> 32 != 0 {
        return culprit("guest RIP", g.rip, "bits 63:32 set outside 64-bit code");
    }
    let i = g.interruptibility;
    if i & !0x1f != 0 || i & 3 == 3 {
        return culprit(
            "guest interruptibility state",
            i.into(),
            "reserved bits, or blocking by STI and by MOV SS together",
        );
    }
    if event && (kind == 0 || kind == 2) && i & 3 != 0 {
        return culprit(
            "guest interruptibility state",
            i.into(),
            "an interrupt shadow while an external interrupt or NMI is injected",
        );
    }
    if g.activity > 3 || (g.activity == 1 && ar_dpl(g.ss_ar) != 0) {
        return culprit(
            "guest activity state",
            g.activity.into(),
            "unknown state, or HLT with SS.DPL not 0",
        );
    }
    if g.link_pointer != u64::MAX {
        return culprit(
            "VMCS link pointer",
            g.link_pointer,
            "must be all ones without VMCS shadowing",
        );
    }
    segment_culprit(g, ia32e, ug)
}

/// SDM 26.3.1.2: the access rights of CS, SS, TR and LDTR.
fn segment_culprit(g: &GuestState, ia32e: bool, ug: bool) -> Option<Culprit> {
    let usable = |ar: u32| ar & AR_UNUSABLE == 0;
    let ty = |ar: u32| ar & 0xf;
    let reserved = |ar: u32| ar & 0xfffe_0f00 != 0;
    let cs = g.cs_ar;
    let cs_ok = (matches!(ty(cs), 9 | 11 | 13 | 15) || (ug && ty(cs) == 3))
        && cs & 0x10 != 0
        && cs & AR_PRESENT != 0
        && !reserved(cs)
        && !(ia32e && cs & AR_L != 0 && cs & (1 << 14) != 0);
    if !usable(cs) || !cs_ok {
        return culprit(
            "guest CS access rights",
            cs.into(),
            "not a present code segment (or L and D/B both set)",
        );
    }
    let ss = g.ss_ar;
    if usable(ss)
        && (!matches!(ty(ss), 3 | 7) || ss & 0x10 == 0 || ss & AR_PRESENT == 0 || reserved(ss))
    {
        return culprit(
            "guest SS access rights",
            ss.into(),
            "not a present writable data segment",
        );
    }
    if g.cr0 & CR0_PE == 0 && ar_dpl(ss) != 0 {
        return culprit(
            "guest SS access rights",
            ss.into(),
            "DPL must be 0 in real mode",
        );
    }
    let tr = g.tr_ar;
    let tr_type_ok = ty(tr) == 11 || (!ia32e && ty(tr) == 3);
    if !usable(tr) || !tr_type_ok || tr & 0x10 != 0 || tr & AR_PRESENT == 0 || reserved(tr) {
        return culprit(
            "guest TR access rights",
            tr.into(),
            "not a present busy TSS",
        );
    }
    let ldtr = g.ldtr_ar;
    if usable(ldtr)
        && (ty(ldtr) != 2 || ldtr & 0x10 != 0 || ldtr & AR_PRESENT == 0 || reserved(ldtr))
    {
        return culprit("guest LDTR access rights", ldtr.into(), "not a present LDT");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_adjusted_to_the_capability_msr() {
        // Bits 1, 2, 4 forced on (the default1 class), 0..=7 allowed.
        let a = Allowed::from_msr(0xff_0000_0016);
        assert_eq!(a.adjust(0x1), 0x17);
        assert_eq!(a.adjust(0x100), 0x16, "a bit the CPU lacks is dropped");
        assert!(a.allows(0x81) && !a.allows(0x100));
        assert_eq!(a.violations(0x17), 0);
        assert_eq!(a.violations(0x13), 0x4);
        assert_eq!(a.violations(0x117), 0x100);
    }

    #[test]
    fn fixed_bits() {
        // Typical: CR0 FIXED0 = PE|NE|PG, FIXED1 = all ones.
        let (f0, f1) = (0x8000_0021, 0xffff_ffff);
        assert_eq!(fixed_violations(0x8000_0031, f0, f1), 0);
        assert_eq!(fixed_violations(0x11, f0, f1), 0x8000_0020);
        assert_eq!(fixed_violations(0x1_8000_0021, f0, f1), 1 << 32);
    }

    #[test]
    fn access_rights_convert_to_svm_attributes_and_back() {
        // 32-bit flat code: type 0xb, S, P, D/B, G.
        assert_eq!(ar_to_attrib(0xc09b), 0xc9b);
        // 64-bit code: L set.
        assert_eq!(ar_to_attrib(0xa09b), 0xa9b);
        assert_eq!(
            ar_to_attrib(0xa09b) & ipc_proto::Segment::ATTR_L,
            ipc_proto::Segment::ATTR_L
        );
        assert_eq!(ar_to_attrib(0x1_0000), 0);
        for attrib in [0xc9bu16, 0xc93, 0x9b, 0x93, 0x8b, 0xa9b, 0xff] {
            assert_eq!(ar_to_attrib(attrib_to_ar(attrib)), attrib);
        }
        assert_eq!(attrib_to_ar(0), AR_UNUSABLE);
        assert_eq!(ar_dpl(0xf3), 3);
    }

    #[test]
    fn idt_vectoring_becomes_exitintinfo() {
        assert_eq!(exit_int_info(0, 0), 0);
        assert_eq!(exit_int_info(0x0000_0020, 0), 0, "not valid");
        // #PF with an error code, hardware exception (type 3).
        assert_eq!(exit_int_info(0x8000_0b0e, 6), 0x0000_0006_8000_0b0e);
        // INT3 (software exception, type 6) is an SVM exception (3).
        assert_eq!(exit_int_info(0x8000_0603, 0), 0x8000_0303);
        // External interrupt 0x30.
        assert_eq!(exit_int_info(0x8000_0030, 0), 0x8000_0030);
    }

    #[test]
    fn injected_events_follow_the_vmx_error_code_rule() {
        // #GP in protected mode: the error code is delivered.
        let e = entry_event(13, 3, 0x1_0018, true, true);
        assert_eq!(e.info, 0x8000_0b0d);
        assert_eq!(e.error_code, 0x18, "bits 31:16 dropped");
        // #GP in real mode: never an error code.
        assert_eq!(entry_event(13, 3, 5, false, true).info, 0x8000_030d);
        // #UD: no error code, whatever the server said.
        let e = entry_event(6, 3, 7, true, true);
        assert_eq!((e.info, e.error_code), (0x8000_0306, 0));
        // External interrupt and NMI.
        assert_eq!(entry_event(0x20, 0, 0, true, true).info, 0x8000_0020);
        assert_eq!(entry_event(2, 2, 0, true, true).info, 0x8000_0202);
        // INT 0x80: length 0 where allowed, else RIP - 1 and length 1.
        let e = entry_event(0x80, 4, 0, true, true);
        assert_eq!((e.info, e.length, e.rip_back), (0x8000_0480, 0, 0));
        let e = entry_event(0x80, 4, 0, true, false);
        assert_eq!((e.length, e.rip_back), (1, 1));
    }

    #[test]
    fn instruction_lengths_are_valid_for_instruction_exits_only() {
        for r in [
            10, 12, 14, 18, 27, 28, 29, 30, 31, 32, 36, 39, 40, 46, 47, 50, 51, 53, 54, 55, 57, 58,
            59, 60, 61, 63,
        ] {
            assert!(exit_has_instruction_length(r), "{r}");
        }
        for r in [
            0, 1, 2, 3, 7, 8, 9, 33, 34, 37, 41, 48, 49, 52, 56, 62, 64, 65535,
        ] {
            assert!(!exit_has_instruction_length(r), "{r}");
        }
    }

    #[test]
    fn eptp_prefers_write_back() {
        assert_eq!(
            eptp(0x5000, EPT_CAP_MEMORY_TYPE_WB | EPT_CAP_MEMORY_TYPE_UC),
            0x501e
        );
        assert_eq!(eptp(0x5000, EPT_CAP_MEMORY_TYPE_UC), 0x5018);
    }

    fn caps() -> Caps {
        let all = Allowed {
            must_be_one: 0,
            may_be_one: u32::MAX,
        };
        Caps {
            pin: Allowed::from_msr(0xff_0000_0016),
            proc: all,
            proc2: all,
            exit: all,
            entry: all,
            cr0_fixed0: 0x8000_0021,
            cr0_fixed1: 0xffff_ffff,
            cr4_fixed0: CR4_VMXE,
            cr4_fixed1: 0x3f_ffff,
            ept: EPT_CAP_WALK_LENGTH_4 | EPT_CAP_MEMORY_TYPE_WB,
            misc: 4 << 16 | MISC_ZERO_LENGTH_INJECTION,
        }
    }

    #[test]
    fn rdtscp_is_enabled_only_where_the_host_and_the_caps_allow() {
        let on = (PROC_SECONDARY_CONTROLS, PROC2_ENABLE_RDTSCP);
        assert_eq!(rdtscp_controls(true, &caps()), on);
        assert_eq!(rdtscp_controls(false, &caps()), (0, 0));
        let no = |bit: u32| Allowed {
            must_be_one: 0,
            may_be_one: !bit,
        };
        let c = Caps {
            proc2: no(PROC2_ENABLE_RDTSCP),
            ..caps()
        };
        assert_eq!(rdtscp_controls(true, &c), (0, 0));
        let c = Caps {
            proc: no(PROC_SECONDARY_CONTROLS),
            ..caps()
        };
        assert_eq!(rdtscp_controls(true, &c), (0, 0));
    }

    fn controls() -> Controls {
        Controls {
            pin: 0x17,
            proc: PROC_SECONDARY_CONTROLS,
            proc2: PROC2_ENABLE_EPT | PROC2_UNRESTRICTED_GUEST,
            exit: EXIT_HOST_ADDRESS_SPACE_SIZE,
            entry: ENTRY_LOAD_EFER,
            eptp: 0x501e,
            ..Controls::default()
        }
    }

    #[test]
    fn control_failures_name_the_field() {
        let caps = caps();
        assert_eq!(control_culprit(&controls(), &caps), None);
        let c = Controls {
            pin: 0x13,
            ..controls()
        };
        assert_eq!(
            control_culprit(&c, &caps).unwrap().field,
            "pin-based controls"
        );
        let c = Controls {
            eptp: 0x5018,
            ..controls()
        };
        assert_eq!(control_culprit(&c, &caps).unwrap().field, "EPT pointer");
        let c = Controls {
            eptp: 0x505e,
            ..controls()
        };
        assert!(control_culprit(&c, &caps)
            .unwrap()
            .rule
            .contains("accessed/dirty"));
        let c = Controls {
            proc2: PROC2_UNRESTRICTED_GUEST,
            ..controls()
        };
        assert!(control_culprit(&c, &caps)
            .unwrap()
            .rule
            .contains("needs EPT"));
        let c = Controls {
            entry_info: 0x8000_0102,
            ..controls()
        };
        assert!(control_culprit(&c, &caps).unwrap().rule.contains("type 1"));
        let c = Controls {
            cr3_targets: 5,
            ..controls()
        };
        assert_eq!(
            control_culprit(&c, &caps).unwrap().field,
            "CR3-target count"
        );
        let shown = control_culprit(
            &Controls {
                pin: 0x13,
                ..controls()
            },
            &caps,
        )
        .unwrap()
        .to_string();
        assert_eq!(shown, "pin-based controls = 0x13: breaks the allowed-0/allowed-1 settings of its capability MSR");
    }

    #[test]
    fn host_failures_name_the_field() {
        let caps = caps();
        let good = HostState {
            cr0: 0x8000_0031,
            cr4: CR4_PAE | CR4_VMXE,
            efer: EFER_LMA | EFER_LME,
            selectors: [0x08, 0x10, 0x10, 0x10, 0, 0, 0x28],
        };
        let exit = EXIT_HOST_ADDRESS_SPACE_SIZE | EXIT_LOAD_EFER;
        assert_eq!(host_culprit(&good, exit, &caps), None);
        let bad = HostState {
            selectors: [0x08, 0x10, 0x23, 0x10, 0, 0, 0x28],
            ..good
        };
        assert_eq!(host_culprit(&bad, exit, &caps).unwrap().field, "host DS");
        let bad = HostState {
            cr4: CR4_PAE,
            ..good
        };
        assert_eq!(host_culprit(&bad, exit, &caps).unwrap().field, "host CR4");
        assert!(host_culprit(&good, EXIT_LOAD_EFER, &caps).is_some());
    }

    fn flat32() -> GuestState {
        GuestState {
            cr0: 0x31,
            cr4: CR4_VMXE,
            efer: 0,
            rflags: 2,
            rip: 0x10_0000,
            cs_ar: 0xc09b,
            ss_ar: 0xc093,
            tr_ar: 0x8b,
            ldtr_ar: AR_UNUSABLE,
            interruptibility: 0,
            activity: 0,
            link_pointer: u64::MAX,
        }
    }

    #[test]
    fn guest_failures_name_the_field() {
        let (c, caps) = (controls(), caps());
        assert_eq!(guest_culprit(&flat32(), &c, &caps), None);
        // Real mode is fine with unrestricted guest ...
        let real = GuestState {
            cr0: 0x30,
            cs_ar: 0x9b,
            ss_ar: 0x93,
            ..flat32()
        };
        assert_eq!(guest_culprit(&real, &c, &caps), None);
        // ... and breaks CR0_FIXED0 without it.
        let no_ug = Controls {
            proc2: PROC2_ENABLE_EPT,
            ..c
        };
        assert_eq!(
            guest_culprit(&real, &no_ug, &caps).unwrap().field,
            "guest CR0"
        );
        let cases: [(GuestState, &str); 8] = [
            (
                GuestState {
                    cr0: 0x11,
                    ..flat32()
                },
                "guest CR0",
            ),
            (GuestState { cr4: 0, ..flat32() }, "guest CR4"),
            (
                GuestState {
                    rflags: 0,
                    ..flat32()
                },
                "guest RFLAGS",
            ),
            (
                GuestState {
                    rip: 1 << 32,
                    ..flat32()
                },
                "guest RIP",
            ),
            (
                GuestState {
                    interruptibility: 3,
                    ..flat32()
                },
                "guest interruptibility state",
            ),
            (
                GuestState {
                    link_pointer: 0,
                    ..flat32()
                },
                "VMCS link pointer",
            ),
            (
                GuestState {
                    cs_ar: 0xc091,
                    ..flat32()
                },
                "guest CS access rights",
            ),
            (
                GuestState {
                    tr_ar: 0x89,
                    ..flat32()
                },
                "guest TR access rights",
            ),
        ];
        for (g, field) in cases {
            assert_eq!(
                guest_culprit(&g, &c, &caps).map(|x| x.field),
                Some(field),
                "{g:?}"
            );
        }
        // An external interrupt injected while IF is clear.
        let inject = Controls {
            entry_info: 0x8000_0020,
            ..c
        };
        assert!(guest_culprit(&flat32(), &inject, &caps)
            .unwrap()
            .rule
            .contains("IF clear"));
        let efer = GuestState {
            efer: EFER_LMA,
            ..flat32()
        };
        assert_eq!(
            guest_culprit(&efer, &c, &caps).unwrap().field,
            "guest IA32_EFER"
        );
    }
}
