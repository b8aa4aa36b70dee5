//! The VMCS: field encodings (Intel SDM vol. 3D, appendix B), VMREAD and
//! VMWRITE on the current VMCS, and the capability MSRs (appendix A).

use core::arch::asm;

// 16-bit guest and host selectors. Guest segment fields are
// `base + 2 * index` in the order ES, CS, SS, DS, FS, GS, LDTR, TR.
pub const GUEST_SELECTOR: u32 = 0x0800;
pub const GUEST_LIMIT: u32 = 0x4800;
pub const GUEST_AR: u32 = 0x4814;
pub const GUEST_BASE: u32 = 0x6806;
pub const ES: u32 = 0;
pub const CS: u32 = 1;
pub const SS: u32 = 2;
pub const DS: u32 = 3;
pub const FS: u32 = 4;
pub const GS: u32 = 5;
pub const LDTR: u32 = 6;
pub const TR: u32 = 7;
pub const HOST_ES_SELECTOR: u32 = 0x0c00;
pub const HOST_CS_SELECTOR: u32 = 0x0c02;
pub const HOST_SS_SELECTOR: u32 = 0x0c04;
pub const HOST_DS_SELECTOR: u32 = 0x0c06;
pub const HOST_FS_SELECTOR: u32 = 0x0c08;
pub const HOST_GS_SELECTOR: u32 = 0x0c0a;
pub const HOST_TR_SELECTOR: u32 = 0x0c0c;

// 64-bit fields.
pub const EPT_POINTER: u32 = 0x201a;
pub const MSR_BITMAP: u32 = 0x2004;
pub const TSC_OFFSET: u32 = 0x2010;
pub const GUEST_PHYSICAL_ADDRESS: u32 = 0x2400;
pub const VMCS_LINK_POINTER: u32 = 0x2800;
pub const GUEST_IA32_EFER: u32 = 0x2806;
pub const HOST_IA32_EFER: u32 = 0x2c02;

// 32-bit control fields.
pub const PIN_CONTROLS: u32 = 0x4000;
pub const PROC_CONTROLS: u32 = 0x4002;
pub const EXCEPTION_BITMAP: u32 = 0x4004;
pub const CR3_TARGET_COUNT: u32 = 0x400a;
pub const EXIT_CONTROLS: u32 = 0x400c;
pub const ENTRY_CONTROLS: u32 = 0x4012;
pub const ENTRY_INTERRUPTION_INFO: u32 = 0x4016;
pub const ENTRY_EXCEPTION_ERROR_CODE: u32 = 0x4018;
pub const ENTRY_INSTRUCTION_LENGTH: u32 = 0x401a;
pub const PROC2_CONTROLS: u32 = 0x401e;

// 32-bit read-only data fields.
pub const VM_INSTRUCTION_ERROR: u32 = 0x4400;
pub const EXIT_REASON: u32 = 0x4402;
pub const EXIT_INTERRUPTION_INFO: u32 = 0x4404;
pub const EXIT_INTERRUPTION_ERROR_CODE: u32 = 0x4406;
pub const IDT_VECTORING_INFO: u32 = 0x4408;
pub const IDT_VECTORING_ERROR_CODE: u32 = 0x440a;
pub const EXIT_INSTRUCTION_LENGTH: u32 = 0x440c;

// 32-bit guest fields.
pub const GUEST_GDTR_LIMIT: u32 = 0x4810;
pub const GUEST_IDTR_LIMIT: u32 = 0x4812;
pub const GUEST_INTERRUPTIBILITY: u32 = 0x4824;
pub const GUEST_ACTIVITY_STATE: u32 = 0x4826;

// Natural-width fields.
pub const CR0_GUEST_HOST_MASK: u32 = 0x6000;
pub const CR4_GUEST_HOST_MASK: u32 = 0x6002;
pub const CR0_READ_SHADOW: u32 = 0x6004;
pub const CR4_READ_SHADOW: u32 = 0x6006;
pub const EXIT_QUALIFICATION: u32 = 0x6400;
pub const GUEST_LINEAR_ADDRESS: u32 = 0x640a;
pub const GUEST_CR0: u32 = 0x6800;
pub const GUEST_CR3: u32 = 0x6802;
pub const GUEST_CR4: u32 = 0x6804;
pub const GUEST_GDTR_BASE: u32 = 0x6816;
pub const GUEST_IDTR_BASE: u32 = 0x6818;
pub const GUEST_DR7: u32 = 0x681a;
pub const GUEST_RSP: u32 = 0x681c;
pub const GUEST_RIP: u32 = 0x681e;
pub const GUEST_RFLAGS: u32 = 0x6820;
pub const HOST_CR0: u32 = 0x6c00;
pub const HOST_CR3: u32 = 0x6c02;
pub const HOST_CR4: u32 = 0x6c04;
pub const HOST_FS_BASE: u32 = 0x6c06;
pub const HOST_GS_BASE: u32 = 0x6c08;
pub const HOST_TR_BASE: u32 = 0x6c0a;
pub const HOST_GDTR_BASE: u32 = 0x6c0c;
pub const HOST_IDTR_BASE: u32 = 0x6c0e;
pub const HOST_RIP: u32 = 0x6c16;

// Capability MSRs (SDM vol. 3D, appendix A).
pub const IA32_FEATURE_CONTROL: u32 = 0x3a;
pub const IA32_VMX_BASIC: u32 = 0x480;
pub const IA32_VMX_PINBASED_CTLS: u32 = 0x481;
pub const IA32_VMX_PROCBASED_CTLS: u32 = 0x482;
pub const IA32_VMX_EXIT_CTLS: u32 = 0x483;
pub const IA32_VMX_ENTRY_CTLS: u32 = 0x484;
pub const IA32_VMX_MISC: u32 = 0x485;
pub const IA32_VMX_CR0_FIXED0: u32 = 0x486;
pub const IA32_VMX_CR0_FIXED1: u32 = 0x487;
pub const IA32_VMX_CR4_FIXED0: u32 = 0x488;
pub const IA32_VMX_CR4_FIXED1: u32 = 0x489;
pub const IA32_VMX_PROCBASED_CTLS2: u32 = 0x48b;
pub const IA32_VMX_EPT_VPID_CAP: u32 = 0x48c;
/// The TRUE_* controls are at `IA32_VMX_TRUE_PINBASED_CTLS + 0..=3` in the
/// order pin, proc, exit, entry.
pub const IA32_VMX_TRUE_PINBASED_CTLS: u32 = 0x48d;

/// VMREAD of a field of the current VMCS; `None` if the instruction failed
/// (no current VMCS, or a field this CPU does not have).
pub fn read(field: u32) -> Option<u64> {
    let value: u64;
    let ok: u8;
    // SAFETY: VMREAD only reads the current VMCS into a register; a bad
    // field or no current VMCS sets the flags, which `seta` turns into `ok`.
    unsafe {
        asm!(
            "vmread {v}, {f}",
            "seta {ok}",
            v = out(reg) value,
            f = in(reg) u64::from(field),
            ok = out(reg_byte) ok,
            options(nostack)
        )
    };
    (ok != 0).then_some(value)
}

/// VMWRITE to a field of the current VMCS; `false` if the instruction failed.
#[must_use]
pub fn write(field: u32, value: u64) -> bool {
    let ok: u8;
    // SAFETY: VMWRITE changes only the current VMCS, which this VCPU owns;
    // the guest state it describes takes effect at the next VM entry,
    // whose checks (or our exit path) handle any value.
    unsafe {
        asm!(
            "vmwrite {f}, {v}",
            "seta {ok}",
            f = in(reg) u64::from(field),
            v = in(reg) value,
            ok = out(reg_byte) ok,
            options(nostack)
        )
    };
    ok != 0
}
