//! Instructions the mmu-server decodes itself (with `iced-x86`): the
//! control-register accesses and INVLPG that exit without decode assists
//! (QEMU's TCG gives neither decode assists nor a next RIP), and the
//! writes to write-protected guest page tables it emulates.
//!
//! Emulated writes: MOV (register or immediate source), XCHG, CMPXCHG,
//! CMPXCHG8B, AND/OR/XOR, BTS/BTR/BTC with an immediate bit offset —
//! what kernels use to write page-table entries. Anything else is left to
//! the caller's fallback.

use iced_x86::{Code, Decoder, DecoderOptions, Instruction, OpKind, Register};

use ipc_proto::{GuestRegs, Segment};

/// RFLAGS bits.
pub mod rflags {
    /// Carry.
    pub const CF: u64 = 1 << 0;
    /// Parity.
    pub const PF: u64 = 1 << 2;
    /// Auxiliary carry.
    pub const AF: u64 = 1 << 4;
    /// Zero.
    pub const ZF: u64 = 1 << 6;
    /// Sign.
    pub const SF: u64 = 1 << 7;
    /// Overflow.
    pub const OF: u64 = 1 << 11;
    /// The arithmetic flags.
    pub const ARITH: u64 = CF | PF | AF | ZF | SF | OF;
}

/// The code size of the current code segment: 16, 32 or 64.
pub fn bitness(long_mode: bool, cs: &Segment) -> u32 {
    if long_mode && cs.attrib & Segment::ATTR_L != 0 {
        64
    } else if cs.attrib & Segment::ATTR_DB != 0 {
        32
    } else {
        16
    }
}

/// Decodes one instruction; `None` when the bytes do not hold a whole one.
pub fn decode(bytes: &[u8], bitness: u32, rip: u64) -> Option<Instruction> {
    let mut d = Decoder::with_ip(bitness, bytes, rip, DecoderOptions::NONE);
    let i = d.decode();
    if i.is_invalid() {
        None
    } else {
        Some(i)
    }
}

/// The 64-bit register `r` lives in, with its width in bytes and the bit
/// offset of its low end (8 for AH/CH/DH/BH).
fn reg_slot(r: Register) -> Option<(Register, u32, u32)> {
    let high8 = matches!(r, Register::AH | Register::CH | Register::DH | Register::BH);
    let full = match r {
        Register::AH => Register::RAX,
        Register::CH => Register::RCX,
        Register::DH => Register::RDX,
        Register::BH => Register::RBX,
        _ => r.full_register(),
    };
    if !full.is_gpr64() {
        return None;
    }
    Some((full, r.size() as u32, if high8 { 8 } else { 0 }))
}

fn gpr(regs: &mut GuestRegs, full: Register) -> &mut u64 {
    match full {
        Register::RAX => &mut regs.rax,
        Register::RCX => &mut regs.rcx,
        Register::RDX => &mut regs.rdx,
        Register::RBX => &mut regs.rbx,
        Register::RSP => &mut regs.rsp,
        Register::RBP => &mut regs.rbp,
        Register::RSI => &mut regs.rsi,
        Register::RDI => &mut regs.rdi,
        Register::R8 => &mut regs.r8,
        Register::R9 => &mut regs.r9,
        Register::R10 => &mut regs.r10,
        Register::R11 => &mut regs.r11,
        Register::R12 => &mut regs.r12,
        Register::R13 => &mut regs.r13,
        Register::R14 => &mut regs.r14,
        _ => &mut regs.r15,
    }
}

/// The GPR with the x86 encoding number `n` (0 = RAX … 15 = R15), as SVM
/// decode assists report it.
pub fn gpr_by_number(n: u64) -> Register {
    const R: [Register; 16] = [
        Register::RAX,
        Register::RCX,
        Register::RDX,
        Register::RBX,
        Register::RSP,
        Register::RBP,
        Register::RSI,
        Register::RDI,
        Register::R8,
        Register::R9,
        Register::R10,
        Register::R11,
        Register::R12,
        Register::R13,
        Register::R14,
        Register::R15,
    ];
    R[(n & 15) as usize]
}

/// Reads a general-purpose register of any width.
pub fn read_reg(regs: &GuestRegs, r: Register) -> Option<u64> {
    let (full, size, shift) = reg_slot(r)?;
    let mut copy = *regs;
    let v = *gpr(&mut copy, full) >> shift;
    Some(if size >= 8 {
        v
    } else {
        v & ((1 << (size * 8)) - 1)
    })
}

/// Writes a general-purpose register with x86 semantics: 32-bit writes
/// zero the upper half, 8- and 16-bit writes merge.
pub fn write_reg(regs: &mut GuestRegs, r: Register, value: u64) -> Option<()> {
    let (full, size, shift) = reg_slot(r)?;
    let slot = gpr(regs, full);
    *slot = match size {
        8 => value,
        4 => value & 0xffff_ffff,
        _ => {
            let mask = ((1u64 << (size * 8)) - 1) << shift;
            (*slot & !mask) | ((value << shift) & mask)
        }
    };
    Some(())
}

fn mask(size: u32) -> u64 {
    if size >= 8 {
        u64::MAX
    } else {
        (1 << (size * 8)) - 1
    }
}

fn parity(v: u64) -> bool {
    (v as u8).count_ones().is_multiple_of(2)
}

/// SF, ZF and PF of a result.
fn szp(res: u64, size: u32) -> u64 {
    let res = res & mask(size);
    let mut f = 0;
    if res == 0 {
        f |= rflags::ZF;
    }
    if res >> (size * 8 - 1) & 1 != 0 {
        f |= rflags::SF;
    }
    if parity(res) {
        f |= rflags::PF;
    }
    f
}

/// The flags of `CMP a, b`.
fn cmp_flags(a: u64, b: u64, size: u32) -> u64 {
    let m = mask(size);
    let (a, b) = (a & m, b & m);
    let res = a.wrapping_sub(b) & m;
    let mut f = szp(res, size);
    if a < b {
        f |= rflags::CF;
    }
    if ((a ^ b) & (a ^ res)) >> (size * 8 - 1) & 1 != 0 {
        f |= rflags::OF;
    }
    if (a ^ b ^ res) & 0x10 != 0 {
        f |= rflags::AF;
    }
    f
}

/// A write the mmu-server can emulate.
pub struct Store {
    /// Bytes written (1, 2, 4 or 8).
    pub size: u32,
}

/// The memory write `insn` makes, if it is one the mmu-server emulates.
pub fn store_size(insn: &Instruction) -> Option<Store> {
    let size = insn.memory_size().size() as u32;
    if !matches!(size, 1 | 2 | 4 | 8) || insn.op0_kind() != OpKind::Memory {
        return None;
    }
    if insn.has_rep_prefix() || insn.has_repne_prefix() {
        return None;
    }
    use Code::*;
    let ok = matches!(
        insn.code(),
        Mov_rm8_r8
            | Mov_rm16_r16
            | Mov_rm32_r32
            | Mov_rm64_r64
            | Mov_rm8_imm8
            | Mov_rm16_imm16
            | Mov_rm32_imm32
            | Mov_rm64_imm32
            | Mov_moffs8_AL
            | Mov_moffs16_AX
            | Mov_moffs32_EAX
            | Mov_moffs64_RAX
            | Xchg_rm8_r8
            | Xchg_rm16_r16
            | Xchg_rm32_r32
            | Xchg_rm64_r64
            | Cmpxchg_rm8_r8
            | Cmpxchg_rm16_r16
            | Cmpxchg_rm32_r32
            | Cmpxchg_rm64_r64
            | Cmpxchg8b_m64
            | And_rm8_r8
            | And_rm16_r16
            | And_rm32_r32
            | And_rm64_r64
            | And_rm8_imm8
            | And_rm16_imm16
            | And_rm32_imm32
            | And_rm64_imm32
            | And_rm16_imm8
            | And_rm32_imm8
            | And_rm64_imm8
            | Or_rm8_r8
            | Or_rm16_r16
            | Or_rm32_r32
            | Or_rm64_r64
            | Or_rm8_imm8
            | Or_rm16_imm16
            | Or_rm32_imm32
            | Or_rm64_imm32
            | Or_rm16_imm8
            | Or_rm32_imm8
            | Or_rm64_imm8
            | Xor_rm8_r8
            | Xor_rm16_r16
            | Xor_rm32_r32
            | Xor_rm64_r64
            | Xor_rm8_imm8
            | Xor_rm16_imm16
            | Xor_rm32_imm32
            | Xor_rm64_imm32
            | Xor_rm16_imm8
            | Xor_rm32_imm8
            | Xor_rm64_imm8
            | Bts_rm16_imm8
            | Bts_rm32_imm8
            | Bts_rm64_imm8
            | Btr_rm16_imm8
            | Btr_rm32_imm8
            | Btr_rm64_imm8
            | Btc_rm16_imm8
            | Btc_rm32_imm8
            | Btc_rm64_imm8
    );
    ok.then_some(Store { size })
}

/// Executes the write of `insn` (accepted by [`store_size`]) on the old
/// memory value `old`: returns the value to store (or `None` when the
/// instruction writes nothing new) and updates `regs` (GPRs and RFLAGS).
pub fn execute_store(insn: &Instruction, regs: &mut GuestRegs, old: u64) -> Option<u64> {
    use Code::*;
    let size = insn.memory_size().size() as u32;
    let m = mask(size);
    let old = old & m;
    let src = || -> Option<u64> {
        match insn.op1_kind() {
            OpKind::Register => read_reg(regs, insn.op1_register()),
            OpKind::Immediate8
            | OpKind::Immediate16
            | OpKind::Immediate32
            | OpKind::Immediate8to16
            | OpKind::Immediate8to32
            | OpKind::Immediate8to64
            | OpKind::Immediate32to64 => Some(insn.immediate(1)),
            _ => None,
        }
    };
    let set_flags = |regs: &mut GuestRegs, f: u64, which: u64| {
        regs.rflags = (regs.rflags & !which) | (f & which);
    };
    match insn.code() {
        Mov_rm8_r8 | Mov_rm16_r16 | Mov_rm32_r32 | Mov_rm64_r64 | Mov_rm8_imm8 | Mov_rm16_imm16
        | Mov_rm32_imm32 | Mov_rm64_imm32 | Mov_moffs8_AL | Mov_moffs16_AX | Mov_moffs32_EAX
        | Mov_moffs64_RAX => Some(src()? & m),
        Xchg_rm8_r8 | Xchg_rm16_r16 | Xchg_rm32_r32 | Xchg_rm64_r64 => {
            let v = src()? & m;
            write_reg(regs, insn.op1_register(), old)?;
            Some(v)
        }
        Cmpxchg_rm8_r8 | Cmpxchg_rm16_r16 | Cmpxchg_rm32_r32 | Cmpxchg_rm64_r64 => {
            let accum = match size {
                1 => Register::AL,
                2 => Register::AX,
                4 => Register::EAX,
                _ => Register::RAX,
            };
            let a = read_reg(regs, accum)?;
            let new = src()? & m;
            set_flags(regs, cmp_flags(a, old, size), rflags::ARITH);
            if a == old {
                Some(new)
            } else {
                write_reg(regs, accum, old)?;
                None
            }
        }
        Cmpxchg8b_m64 => {
            let expect = (regs.rdx & 0xffff_ffff) << 32 | (regs.rax & 0xffff_ffff);
            if expect == old {
                regs.rflags |= rflags::ZF;
                Some((regs.rcx & 0xffff_ffff) << 32 | (regs.rbx & 0xffff_ffff))
            } else {
                regs.rflags &= !rflags::ZF;
                regs.rax = old & 0xffff_ffff;
                regs.rdx = old >> 32;
                None
            }
        }
        And_rm8_r8 | And_rm16_r16 | And_rm32_r32 | And_rm64_r64 | And_rm8_imm8 | And_rm16_imm16
        | And_rm32_imm32 | And_rm64_imm32 | And_rm16_imm8 | And_rm32_imm8 | And_rm64_imm8 => {
            let r = old & src()? & m;
            set_flags(regs, szp(r, size), rflags::ARITH);
            Some(r)
        }
        Or_rm8_r8 | Or_rm16_r16 | Or_rm32_r32 | Or_rm64_r64 | Or_rm8_imm8 | Or_rm16_imm16
        | Or_rm32_imm32 | Or_rm64_imm32 | Or_rm16_imm8 | Or_rm32_imm8 | Or_rm64_imm8 => {
            let r = (old | src()?) & m;
            set_flags(regs, szp(r, size), rflags::ARITH);
            Some(r)
        }
        Xor_rm8_r8 | Xor_rm16_r16 | Xor_rm32_r32 | Xor_rm64_r64 | Xor_rm8_imm8 | Xor_rm16_imm16
        | Xor_rm32_imm32 | Xor_rm64_imm32 | Xor_rm16_imm8 | Xor_rm32_imm8 | Xor_rm64_imm8 => {
            let r = (old ^ src()?) & m;
            set_flags(regs, szp(r, size), rflags::ARITH);
            Some(r)
        }
        Bts_rm16_imm8 | Bts_rm32_imm8 | Bts_rm64_imm8 | Btr_rm16_imm8 | Btr_rm32_imm8
        | Btr_rm64_imm8 | Btc_rm16_imm8 | Btc_rm32_imm8 | Btc_rm64_imm8 => {
            let bit = insn.immediate(1) % u64::from(size * 8);
            let was = old >> bit & 1;
            set_flags(regs, was * rflags::CF, rflags::CF);
            let b = 1u64 << bit;
            Some(match insn.code() {
                Bts_rm16_imm8 | Bts_rm32_imm8 | Bts_rm64_imm8 => old | b,
                Btr_rm16_imm8 | Btr_rm32_imm8 | Btr_rm64_imm8 => old & !b,
                _ => old ^ b,
            })
        }
        _ => None,
    }
}

/// A control-register instruction, as decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrInsn {
    /// MOV CRn, reg.
    MovToCr {
        /// CR number.
        cr: u8,
        /// Source register (64-bit name).
        gpr: Register,
    },
    /// MOV reg, CRn.
    MovFromCr {
        /// CR number.
        cr: u8,
        /// Destination register (64-bit name).
        gpr: Register,
    },
    /// CLTS.
    Clts,
    /// LMSW reg16.
    Lmsw {
        /// Source register.
        gpr: Register,
    },
    /// SMSW reg.
    Smsw {
        /// Destination register, at the width the instruction writes.
        gpr: Register,
    },
    /// INVLPG m.
    Invlpg,
}

fn cr_number(r: Register) -> Option<u8> {
    let n = (r as u32).checked_sub(Register::CR0 as u32)?;
    (n < 16).then_some(n as u8)
}

/// Classifies a decoded instruction as one of the CR/INVLPG instructions.
pub fn cr_insn(insn: &Instruction) -> Option<CrInsn> {
    use Code::*;
    Some(match insn.code() {
        Mov_cr_r32 | Mov_cr_r64 => CrInsn::MovToCr {
            cr: cr_number(insn.op0_register())?,
            gpr: insn.op1_register().full_register(),
        },
        Mov_r32_cr | Mov_r64_cr => CrInsn::MovFromCr {
            cr: cr_number(insn.op1_register())?,
            gpr: insn.op0_register().full_register(),
        },
        Clts => CrInsn::Clts,
        Lmsw_rm16 | Lmsw_r32m16 | Lmsw_r64m16 if insn.op0_kind() == OpKind::Register => {
            CrInsn::Lmsw {
                gpr: insn.op0_register(),
            }
        }
        Smsw_rm16 | Smsw_r32m16 | Smsw_r64m16 if insn.op0_kind() == OpKind::Register => {
            CrInsn::Smsw {
                gpr: insn.op0_register(),
            }
        }
        Invlpg_m => CrInsn::Invlpg,
        _ => return None,
    })
}

/// The linear address of `insn`'s memory operand. Segment bases: CS from
/// the exit record; in 64-bit mode ES/SS/DS are zero; elsewhere they are
/// taken as zero only with `flat` (the exit record does not carry them);
/// FS/GS are unknown. `None` when a base is unknown.
pub fn memory_address(
    insn: &Instruction,
    regs: &GuestRegs,
    cs: &Segment,
    bitness: u32,
    flat: bool,
) -> Option<u64> {
    let la = insn.virtual_address(0, 0, |r, _, _| match r {
        Register::CS => Some(cs.base),
        Register::ES | Register::SS | Register::DS if bitness == 64 || flat => Some(0),
        Register::ES | Register::SS | Register::DS | Register::FS | Register::GS => None,
        r => read_reg(regs, r),
    })?;
    Some(if bitness == 64 { la } else { la & 0xffff_ffff })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d64(bytes: &[u8]) -> Instruction {
        decode(bytes, 64, 0x1000).unwrap()
    }

    #[test]
    fn registers_of_every_width() {
        let mut r = GuestRegs {
            rax: 0x1122_3344_5566_7788,
            ..Default::default()
        };
        assert_eq!(read_reg(&r, Register::AH), Some(0x77));
        assert_eq!(read_reg(&r, Register::AX), Some(0x7788));
        write_reg(&mut r, Register::AH, 0xaa).unwrap();
        assert_eq!(r.rax, 0x1122_3344_5566_aa88);
        write_reg(&mut r, Register::EAX, 0xffff_ffff_1234_5678).unwrap();
        assert_eq!(r.rax, 0x1234_5678);
        write_reg(&mut r, Register::R9W, 0xbeef).unwrap();
        assert_eq!(r.r9, 0xbeef);
        assert_eq!(gpr_by_number(4), Register::RSP);
    }

    #[test]
    fn control_register_instructions() {
        // mov cr3, rax / mov rbx, cr0 / clts / lmsw ax / invlpg [rdi]
        assert_eq!(
            cr_insn(&d64(&[0x0f, 0x22, 0xd8])),
            Some(CrInsn::MovToCr {
                cr: 3,
                gpr: Register::RAX
            })
        );
        assert_eq!(
            cr_insn(&d64(&[0x0f, 0x20, 0xc3])),
            Some(CrInsn::MovFromCr {
                cr: 0,
                gpr: Register::RBX
            })
        );
        assert_eq!(cr_insn(&d64(&[0x0f, 0x06])), Some(CrInsn::Clts));
        assert_eq!(
            cr_insn(&d64(&[0x0f, 0x01, 0xf0])),
            Some(CrInsn::Lmsw { gpr: Register::EAX })
        );
        let i = d64(&[0x0f, 0x01, 0x3f]);
        assert_eq!(cr_insn(&i), Some(CrInsn::Invlpg));
        let regs = GuestRegs {
            rdi: 0xdead_b000,
            ..Default::default()
        };
        let cs = Segment::default();
        assert_eq!(memory_address(&i, &regs, &cs, 64, false), Some(0xdead_b000));
        // 32-bit: invlpg [eax+4]; DS is unknown unless flat.
        let i = decode(&[0x0f, 0x01, 0x78, 0x04], 32, 0).unwrap();
        let regs = GuestRegs {
            rax: 0xc000_0000,
            ..Default::default()
        };
        assert_eq!(memory_address(&i, &regs, &cs, 32, false), None);
        assert_eq!(memory_address(&i, &regs, &cs, 32, true), Some(0xc000_0004));
        // mov eax, cr3 in 32-bit code.
        let i = decode(&[0x0f, 0x20, 0xd8], 32, 0).unwrap();
        assert_eq!(
            cr_insn(&i),
            Some(CrInsn::MovFromCr {
                cr: 3,
                gpr: Register::RAX
            })
        );
    }

    #[test]
    fn emulated_stores() {
        let mut r = GuestRegs {
            rax: 0x1234,
            rbx: 0x5678,
            rflags: 2,
            ..Default::default()
        };
        // mov [rdi], rax
        let i = d64(&[0x48, 0x89, 0x07]);
        assert_eq!(store_size(&i).unwrap().size, 8);
        assert_eq!(execute_store(&i, &mut r, 0xffff), Some(0x1234));
        // xchg [rdi], rbx
        let i = d64(&[0x48, 0x87, 0x1f]);
        assert_eq!(execute_store(&i, &mut r, 0x9999), Some(0x5678));
        assert_eq!(r.rbx, 0x9999);
        // lock cmpxchg [rdi], rbx: equal, then not equal.
        let i = d64(&[0xf0, 0x48, 0x0f, 0xb1, 0x1f]);
        r.rax = 7;
        assert_eq!(execute_store(&i, &mut r, 7), Some(0x9999));
        assert_ne!(r.rflags & rflags::ZF, 0);
        assert_eq!(execute_store(&i, &mut r, 8), None);
        assert_eq!(r.rflags & rflags::ZF, 0);
        assert_eq!(r.rax, 8);
        // lock btr qword [rdi], 5 (clear Accessed)
        let i = d64(&[0xf0, 0x48, 0x0f, 0xba, 0x37, 0x05]);
        assert_eq!(execute_store(&i, &mut r, 0x63), Some(0x43));
        assert_ne!(r.rflags & rflags::CF, 0);
        // lock and byte [rdi], 0xfd (clear R/W)
        let i = d64(&[0xf0, 0x80, 0x27, 0xfd]);
        assert_eq!(store_size(&i).unwrap().size, 1);
        assert_eq!(execute_store(&i, &mut r, 0x67), Some(0x65));
        // mov [0x1000], eax in 32-bit code (the moffs form, A3)
        let i = decode(&[0xa3, 0, 0x10, 0, 0], 32, 0).unwrap();
        assert_eq!(store_size(&i).unwrap().size, 4);
        assert_eq!(execute_store(&i, &mut r, 0), Some(8));
        // mov dword [edi], 0x1003 in 32-bit code
        let i = decode(&[0xc7, 0x07, 0x03, 0x10, 0, 0], 32, 0).unwrap();
        assert_eq!(execute_store(&i, &mut r, 0), Some(0x1003));
        // cmpxchg8b [edi]
        let i = decode(&[0xf0, 0x0f, 0xc7, 0x0f], 32, 0).unwrap();
        assert_eq!(store_size(&i).unwrap().size, 8);
        r.rax = 1;
        r.rdx = 2;
        r.rbx = 3;
        r.rcx = 4;
        assert_eq!(execute_store(&i, &mut r, 2 << 32 | 1), Some(4 << 32 | 3));
        // rep stosq is not emulated.
        assert!(store_size(&d64(&[0xf3, 0x48, 0xab])).is_none());
    }

    #[test]
    fn cmp_flags_match_the_manual() {
        assert_eq!(cmp_flags(1, 2, 4) & rflags::CF, rflags::CF);
        assert_eq!(cmp_flags(0x8000_0000, 1, 4) & rflags::OF, rflags::OF);
        assert_eq!(
            cmp_flags(5, 5, 8) & (rflags::ZF | rflags::PF),
            rflags::ZF | rflags::PF
        );
    }
}
