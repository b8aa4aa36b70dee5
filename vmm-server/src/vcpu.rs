//! The guest's processor state as the server sees it at one exit: the
//! registers, the segment registers, the control registers and the
//! privilege level, with the accessors the emulator needs.

use ipc_proto::{ExitRecord, GuestRegs, Segment};

/// CR0.PE: protected mode.
pub const CR0_PE: u64 = 1 << 0;
/// CR0.WP: supervisor writes honour read-only pages.
pub const CR0_WP: u64 = 1 << 16;
/// CR0.PG: paging.
pub const CR0_PG: u64 = 1 << 31;
/// CR4.PSE: 4 MiB pages with 32-bit paging.
pub const CR4_PSE: u64 = 1 << 4;
/// CR4.PAE.
pub const CR4_PAE: u64 = 1 << 5;
/// CR4.LA57: five-level paging.
pub const CR4_LA57: u64 = 1 << 12;
/// CR4.OSXSAVE.
pub const CR4_OSXSAVE: u64 = 1 << 18;
/// CR4.SMEP.
pub const CR4_SMEP: u64 = 1 << 20;
/// CR4.SMAP.
pub const CR4_SMAP: u64 = 1 << 21;
/// EFER.LME.
pub const EFER_LME: u64 = 1 << 8;
/// EFER.LMA: long mode active.
pub const EFER_LMA: u64 = 1 << 10;
/// EFER.NXE.
pub const EFER_NXE: u64 = 1 << 11;
/// RFLAGS.TF.
pub const RFLAGS_TF: u64 = 1 << 8;
/// RFLAGS.VM: virtual-8086 mode.
pub const RFLAGS_VM: u64 = 1 << 17;
/// RFLAGS.AC.
pub const RFLAGS_AC: u64 = 1 << 18;

/// A segment register, numbered as in instruction encodings and in SVM's
/// IOIO EXITINFO1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum SegReg {
    /// ES.
    Es = 0,
    /// CS.
    Cs = 1,
    /// SS.
    Ss = 2,
    /// DS.
    Ds = 3,
    /// FS.
    Fs = 4,
    /// GS.
    Gs = 5,
}

impl SegReg {
    /// The register for its number.
    pub fn from_index(i: u8) -> Option<Self> {
        Some(match i {
            0 => Self::Es,
            1 => Self::Cs,
            2 => Self::Ss,
            3 => Self::Ds,
            4 => Self::Fs,
            5 => Self::Gs,
            _ => return None,
        })
    }

    /// Its name, for messages.
    pub fn name(self) -> &'static str {
        ["es", "cs", "ss", "ds", "fs", "gs"][self as usize]
    }
}

/// Segment attribute bits in the SVM VMCB format (APM vol. 2, 15.5.1).
pub mod attr {
    /// Type bit 0: accessed.
    pub const ACCESSED: u16 = 1 << 0;
    /// Type bit 1: writable (data) or readable (code).
    pub const WRITABLE_READABLE: u16 = 1 << 1;
    /// Type bit 2: expand-down (data) or conforming (code).
    pub const EXPAND_DOWN: u16 = 1 << 2;
    /// Type bit 3: code segment.
    pub const CODE: u16 = 1 << 3;
    /// S: a code or data segment (not a system segment).
    pub const S: u16 = 1 << 4;
    /// P: present.
    pub const P: u16 = 1 << 7;
    /// L: 64-bit code.
    pub const L: u16 = 1 << 9;
    /// D/B: 32-bit.
    pub const DB: u16 = 1 << 10;
}

/// MOV to CR4 under nested paging (the stub intercepts it; the vmm-server
/// decides): the new CR4, or `None` for #GP(0). `offered` holds the bits
/// the VM's CPUID offers ([`crate::cpuid::offered_cr4`]); a bit outside it
/// is one the VM does not have or a reserved one. PAE cannot be cleared in
/// long mode, and PCIDE can be set only in long mode with CR3[11:0] = 0
/// (SDM vol. 3A, 4.10.1; APM vol. 2, 3.1.3).
pub fn mov_to_cr4(old: &VcpuState, value: u64, offered: u64) -> Option<u64> {
    use ipc_proto::x86::cr4::PCIDE;
    let long = old.efer & EFER_LMA != 0;
    let refused = value & !offered != 0
        || long && value & CR4_PAE == 0
        || value & !old.cr4 & PCIDE != 0 && (!long || old.cr3 & 0xfff != 0);
    (!refused).then_some(value)
}

/// The processor state at one exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VcpuState {
    /// General-purpose registers, RIP and RFLAGS.
    pub regs: GuestRegs,
    /// ES, CS, SS, DS, FS, GS (index by [`SegReg`]).
    pub segs: [Segment; 6],
    /// Whether `segs` came from the stub. When false, only CS did; the
    /// others are assumed to be flat data segments as at the guest's entry
    /// (base 0, CS's limit and size): right for flat protected- and
    /// long-mode guests and for real-mode code that keeps DS = ES = SS = 0.
    pub segments_known: bool,
    /// CR0.
    pub cr0: u64,
    /// CR2.
    pub cr2: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// EFER.
    pub efer: u64,
    /// Current privilege level.
    pub cpl: u8,
}

impl VcpuState {
    /// The state in `rec`; segments other than CS as [`VcpuState::segments_known`]
    /// describes.
    pub fn from_record(rec: &ExitRecord) -> Self {
        let cs = rec.cs;
        let data = if rec.cr0 & CR0_PE == 0 {
            Segment {
                selector: 0,
                attrib: attr::P | attr::S | attr::WRITABLE_READABLE | attr::ACCESSED,
                limit: cs.limit,
                base: 0,
            }
        } else {
            Segment {
                selector: 0x10,
                attrib: (cs.attrib & (attr::DB | 1 << 11))
                    | attr::P
                    | attr::S
                    | attr::WRITABLE_READABLE
                    | attr::ACCESSED,
                limit: if cs.attrib & attr::L != 0 {
                    u32::MAX
                } else {
                    cs.limit
                },
                base: 0,
            }
        };
        let mut segs = [data; 6];
        segs[SegReg::Cs as usize] = cs;
        Self {
            regs: rec.regs,
            segs,
            segments_known: false,
            cr0: rec.cr0,
            cr2: rec.cr2,
            cr3: rec.cr3,
            cr4: rec.cr4,
            efer: rec.efer,
            cpl: rec.cpl,
        }
    }

    /// The state in `rec` with all six segment registers given.
    pub fn with_segments(rec: &ExitRecord, segs: [Segment; 6]) -> Self {
        Self {
            segs,
            segments_known: true,
            ..Self::from_record(rec)
        }
    }

    /// A segment register.
    pub fn seg(&self, s: SegReg) -> &Segment {
        &self.segs[s as usize]
    }

    /// Protected mode (CR0.PE).
    pub fn protected(&self) -> bool {
        self.cr0 & CR0_PE != 0
    }

    /// Virtual-8086 mode.
    pub fn v86(&self) -> bool {
        self.protected() && self.regs.rflags & RFLAGS_VM != 0 && !self.long_mode()
    }

    /// Long mode active (EFER.LMA).
    pub fn long_mode(&self) -> bool {
        self.efer & EFER_LMA != 0
    }

    /// 64-bit mode: long mode with a 64-bit code segment.
    pub fn mode64(&self) -> bool {
        self.long_mode() && self.seg(SegReg::Cs).attrib & attr::L != 0
    }

    /// The code size: 16, 32 or 64.
    pub fn bitness(&self) -> u32 {
        if self.mode64() {
            64
        } else if self.protected() && !self.v86() && self.seg(SegReg::Cs).attrib & attr::DB != 0 {
            32
        } else {
            16
        }
    }

    /// RIP masked to the code size.
    pub fn ip_mask(&self) -> u64 {
        match self.bitness() {
            64 => u64::MAX,
            32 => 0xffff_ffff,
            _ => 0xffff,
        }
    }

    /// General-purpose register `n` in encoding order (0 = RAX, 1 = RCX,
    /// 2 = RDX, 3 = RBX, 4 = RSP, 5 = RBP, 6 = RSI, 7 = RDI, 8-15 = R8-R15).
    pub fn gpr(&self, n: usize) -> u64 {
        let r = &self.regs;
        [
            r.rax, r.rcx, r.rdx, r.rbx, r.rsp, r.rbp, r.rsi, r.rdi, r.r8, r.r9, r.r10, r.r11,
            r.r12, r.r13, r.r14, r.r15,
        ][n & 15]
    }

    /// Sets general-purpose register `n` (encoding order) to `v`.
    pub fn set_gpr(&mut self, n: usize, v: u64) {
        let r = &mut self.regs;
        let slot = match n & 15 {
            0 => &mut r.rax,
            1 => &mut r.rcx,
            2 => &mut r.rdx,
            3 => &mut r.rbx,
            4 => &mut r.rsp,
            5 => &mut r.rbp,
            6 => &mut r.rsi,
            7 => &mut r.rdi,
            8 => &mut r.r8,
            9 => &mut r.r9,
            10 => &mut r.r10,
            11 => &mut r.r11,
            12 => &mut r.r12,
            13 => &mut r.r13,
            14 => &mut r.r14,
            _ => &mut r.r15,
        };
        *slot = v;
    }

    /// Writes the low `size` bytes of register `n` as an instruction does:
    /// 1 and 2 bytes merge, 4 bytes zero-extend, 8 bytes replace.
    pub fn write_gpr_sized(&mut self, n: usize, size: u8, v: u64) {
        let old = self.gpr(n);
        let new = match size {
            1 => (old & !0xff) | (v & 0xff),
            2 => (old & !0xffff) | (v & 0xffff),
            4 => v & 0xffff_ffff,
            _ => v,
        };
        self.set_gpr(n, new);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gprs_in_encoding_order() {
        let mut s = VcpuState::from_record(&ExitRecord::default());
        for n in 0..16 {
            s.set_gpr(n, n as u64 * 0x11);
        }
        assert_eq!(s.regs.rcx, 0x11);
        assert_eq!(s.regs.rsp, 0x44);
        assert_eq!(s.regs.rdi, 0x77);
        assert_eq!(s.regs.r15, 0xff);
        s.set_gpr(0, u64::MAX);
        s.write_gpr_sized(0, 1, 0x12);
        assert_eq!(s.regs.rax, 0xffff_ffff_ffff_ff12);
        s.write_gpr_sized(0, 2, 0x1234);
        assert_eq!(s.regs.rax, 0xffff_ffff_ffff_1234);
        s.write_gpr_sized(0, 4, 0x1234_5678);
        assert_eq!(s.regs.rax, 0x1234_5678);
    }

    #[test]
    fn modes_and_assumed_segments() {
        let mut rec = ExitRecord {
            cs: Segment {
                selector: 0,
                attrib: 0x9b,
                limit: 0xffff,
                base: 0,
            },
            ..Default::default()
        };
        let s = VcpuState::from_record(&rec);
        assert_eq!(s.bitness(), 16);
        assert_eq!(s.seg(SegReg::Ds).limit, 0xffff);
        assert!(!s.segments_known);
        rec.cr0 = CR0_PE;
        rec.cs.attrib = 0xc9b;
        rec.cs.limit = u32::MAX;
        let s = VcpuState::from_record(&rec);
        assert_eq!(s.bitness(), 32);
        assert_eq!(s.seg(SegReg::Ss).attrib & attr::DB, attr::DB);
        rec.efer = EFER_LMA | EFER_LME;
        rec.cs.attrib = 0xa9b;
        let s = VcpuState::from_record(&rec);
        assert_eq!(s.bitness(), 64);
        assert_eq!(s.ip_mask(), u64::MAX);
    }
}
