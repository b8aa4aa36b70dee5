//! The VMCB: one 4 KiB page, a control area at 0x000 and the guest's state
//! save area at 0x400 (AMD APM vol. 2, appendix B, tables B-1 and B-2).
//! Fields are read and written at their manual offsets.

use ipc_proto::Segment;

// Control area.
pub const INTERCEPT_CR: usize = 0x000;
pub const INTERCEPT_EXCEPTIONS: usize = 0x008;
pub const INTERCEPT_MISC1: usize = 0x00c;
pub const INTERCEPT_MISC2: usize = 0x010;
pub const IOPM_BASE_PA: usize = 0x040;
pub const MSRPM_BASE_PA: usize = 0x048;
pub const GUEST_ASID: usize = 0x058;
pub const TLB_CONTROL: usize = 0x05c;
pub const TSC_OFFSET: usize = 0x050;
pub const V_INTR: usize = 0x060;
pub const INTERRUPT_SHADOW: usize = 0x068;
pub const EXITCODE: usize = 0x070;
pub const EXITINFO1: usize = 0x078;
pub const EXITINFO2: usize = 0x080;
pub const EXITINTINFO: usize = 0x088;
pub const NP_ENABLE: usize = 0x090;
pub const EVENTINJ: usize = 0x0a8;
pub const N_CR3: usize = 0x0b0;
pub const NRIP: usize = 0x0c8;
pub const INSN_LEN: usize = 0x0d0;
pub const INSN_BYTES: usize = 0x0d1;

// The intercept bits are in `kernel_stub::svm_intercepts`.
/// TLB_CONTROL: flush this guest's (ASID's) entries.
pub const TLB_FLUSH_GUEST: u8 = 3;
/// TLB_CONTROL: flush this guest's non-global entries.
pub const TLB_FLUSH_GUEST_NON_GLOBAL: u8 = 7;
// Virtual interrupt control (offset 0x060).
pub const V_IRQ: u64 = 1 << 8;
pub const V_INTR_PRIO_MAX: u64 = 0xf << 16;
pub const V_IGN_TPR: u64 = 1 << 20;
pub const V_INTR_MASKING: u64 = 1 << 24;
/// V_INTR_VECTOR, bits 39:32.
pub const V_INTR_VECTOR_SHIFT: u32 = 32;
/// EXITINTINFO/EVENTINJ valid bit; type 0 is an external interrupt.
pub const EVENT_VALID: u64 = 1 << 31;

// State save area: segments (selector, attrib, limit, base; 16 bytes each).
pub const ES: usize = 0x400;
pub const CS: usize = 0x410;
pub const SS: usize = 0x420;
pub const DS: usize = 0x430;
pub const FS: usize = 0x440;
pub const GS: usize = 0x450;
pub const GDTR: usize = 0x460;
pub const LDTR: usize = 0x470;
pub const IDTR: usize = 0x480;
pub const TR: usize = 0x490;
pub const CPL: usize = 0x4cb;
pub const EFER: usize = 0x4d0;
pub const CR4: usize = 0x548;
pub const CR3: usize = 0x550;
pub const CR0: usize = 0x558;
pub const DR7: usize = 0x560;
pub const DR6: usize = 0x568;
pub const RFLAGS: usize = 0x570;
pub const RIP: usize = 0x578;
pub const RSP: usize = 0x5d8;
pub const RAX: usize = 0x5f8;
pub const CR2: usize = 0x640;
pub const G_PAT: usize = 0x668;

/// A VMCB page owned by one VCPU.
pub struct Vmcb {
    pa: u64,
}

macro_rules! accessors {
    ($($read:ident $write:ident $t:ty),*) => {$(
        pub fn $read(&self, off: usize) -> $t {
            debug_assert!(off + core::mem::size_of::<$t>() <= 4096);
            // SAFETY: `pa` is a page this VMCB owns, identity-mapped; the
            // offsets are the constants above, inside the page.
            unsafe { core::ptr::read_volatile((kernel_stub::usize_from(self.pa) + off) as *const $t) }
        }
        pub fn $write(&mut self, off: usize, v: $t) {
            debug_assert!(off + core::mem::size_of::<$t>() <= 4096);
            // SAFETY: as for reads.
            unsafe { core::ptr::write_volatile((kernel_stub::usize_from(self.pa) + off) as *mut $t, v) }
        }
    )*};
}

impl Vmcb {
    /// Wraps a zeroed page.
    pub fn new(pa: u64) -> Self {
        Self { pa }
    }

    pub fn pa(&self) -> u64 {
        self.pa
    }

    accessors!(read8 write8 u8, read16 write16 u16, read32 write32 u32, read64 write64 u64);

    pub fn read_segment(&self, off: usize) -> Segment {
        Segment {
            selector: self.read16(off),
            attrib: self.read16(off + 2),
            limit: self.read32(off + 4),
            base: self.read64(off + 8),
        }
    }

    pub fn write_segment(&mut self, off: usize, s: Segment) {
        self.write16(off, s.selector);
        self.write16(off + 2, s.attrib);
        self.write32(off + 4, s.limit);
        self.write64(off + 8, s.base);
    }
}
