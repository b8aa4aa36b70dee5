//! The arithmetic and logic the emulator applies to a memory operand, with
//! the flags the manuals define (AMD APM vol. 3, chapter 3; Intel SDM vol.
//! 2): results and RFLAGS for ADD, ADC, SUB, SBB, CMP, AND, OR, XOR, TEST,
//! INC, DEC, NEG, NOT, the bit tests BT, BTS, BTR, BTC, and CMPXCHG.
//!
//! Flags the manuals leave undefined get fixed values here (AF is cleared
//! by the logical operations; the bit tests leave every flag but CF
//! alone); [`defined_flags`] says which bits a caller may compare with
//! hardware. `tests/alu_host.rs` runs the same operations on the host CPU
//! and compares.

/// Carry flag.
pub const CF: u64 = 1 << 0;
/// Parity flag.
pub const PF: u64 = 1 << 2;
/// Auxiliary carry flag.
pub const AF: u64 = 1 << 4;
/// Zero flag.
pub const ZF: u64 = 1 << 6;
/// Sign flag.
pub const SF: u64 = 1 << 7;
/// Direction flag.
pub const DF: u64 = 1 << 10;
/// Overflow flag.
pub const OF: u64 = 1 << 11;
/// The six status flags.
pub const STATUS: u64 = CF | PF | AF | ZF | SF | OF;

/// A two-operand (or one-operand) arithmetic or logical operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AluOp {
    /// dst + src.
    Add,
    /// dst + src + CF.
    Adc,
    /// dst - src.
    Sub,
    /// dst - src - CF.
    Sbb,
    /// dst - src, flags only.
    Cmp,
    /// dst & src.
    And,
    /// dst | src.
    Or,
    /// dst ^ src.
    Xor,
    /// dst & src, flags only.
    Test,
    /// dst + 1, CF unchanged.
    Inc,
    /// dst - 1, CF unchanged.
    Dec,
    /// 0 - dst.
    Neg,
    /// !dst, no flags.
    Not,
}

impl AluOp {
    /// All operations, for tests.
    pub const ALL: [AluOp; 13] = [
        Self::Add,
        Self::Adc,
        Self::Sub,
        Self::Sbb,
        Self::Cmp,
        Self::And,
        Self::Or,
        Self::Xor,
        Self::Test,
        Self::Inc,
        Self::Dec,
        Self::Neg,
        Self::Not,
    ];

    /// Whether the result is written back (CMP and TEST only set flags).
    pub const fn writes_result(self) -> bool {
        !matches!(self, Self::Cmp | Self::Test)
    }
}

/// The flags an operation defines, the ones a comparison with hardware may
/// look at.
pub const fn defined_flags(op: AluOp) -> u64 {
    match op {
        AluOp::And | AluOp::Or | AluOp::Xor | AluOp::Test => STATUS & !AF,
        AluOp::Inc | AluOp::Dec => STATUS & !CF,
        AluOp::Not => 0,
        _ => STATUS,
    }
}

/// All ones in an operand of `size` bytes (1, 2, 4 or 8).
pub const fn mask(size: u8) -> u64 {
    match size {
        1 => 0xff,
        2 => 0xffff,
        4 => 0xffff_ffff,
        _ => u64::MAX,
    }
}

const fn sign(size: u8) -> u64 {
    1 << (size as u32 * 8 - 1)
}

/// PF: set when the low byte of the result has an even number of ones.
pub const fn parity(v: u64) -> bool {
    (v as u8).count_ones().is_multiple_of(2)
}

fn szp(r: u64, size: u8) -> u64 {
    let mut f = 0;
    if r & mask(size) == 0 {
        f |= ZF;
    }
    if r & sign(size) != 0 {
        f |= SF;
    }
    if parity(r) {
        f |= PF;
    }
    f
}

/// Applies `op` to the `size`-byte operands `dst` and `src` (`src` is
/// ignored by the one-operand forms); returns the result (masked to `size`)
/// and RFLAGS with the flags the operation writes replaced.
pub fn alu(op: AluOp, size: u8, dst: u64, src: u64, rflags: u64) -> (u64, u64) {
    let m = mask(size);
    let (d, s) = (dst & m, src & m);
    let carry_in = rflags & CF;
    let add = |d: u64, s: u64, c: u64| {
        let wide = u128::from(d) + u128::from(s) + u128::from(c);
        let r = wide as u64 & m;
        let mut f = szp(r, size);
        if wide > u128::from(m) {
            f |= CF;
        }
        if (d ^ r) & (s ^ r) & sign(size) != 0 {
            f |= OF;
        }
        if (d ^ s ^ r) & 0x10 != 0 {
            f |= AF;
        }
        (r, f)
    };
    let sub = |d: u64, s: u64, b: u64| {
        let r = d.wrapping_sub(s).wrapping_sub(b) & m;
        let mut f = szp(r, size);
        if u128::from(d) < u128::from(s) + u128::from(b) {
            f |= CF;
        }
        if (d ^ s) & (d ^ r) & sign(size) != 0 {
            f |= OF;
        }
        if (d ^ s ^ r) & 0x10 != 0 {
            f |= AF;
        }
        (r, f)
    };
    let logic = |r: u64| (r, szp(r, size));
    let (r, f, written) = match op {
        AluOp::Add => {
            let (r, f) = add(d, s, 0);
            (r, f, STATUS)
        }
        AluOp::Adc => {
            let (r, f) = add(d, s, carry_in);
            (r, f, STATUS)
        }
        AluOp::Sub | AluOp::Cmp => {
            let (r, f) = sub(d, s, 0);
            (r, f, STATUS)
        }
        AluOp::Sbb => {
            let (r, f) = sub(d, s, carry_in);
            (r, f, STATUS)
        }
        AluOp::And | AluOp::Test => {
            let (r, f) = logic(d & s);
            (r, f, STATUS)
        }
        AluOp::Or => {
            let (r, f) = logic(d | s);
            (r, f, STATUS)
        }
        AluOp::Xor => {
            let (r, f) = logic(d ^ s);
            (r, f, STATUS)
        }
        AluOp::Inc => {
            let (r, f) = add(d, 1, 0);
            (r, f, STATUS & !CF)
        }
        AluOp::Dec => {
            let (r, f) = sub(d, 1, 0);
            (r, f, STATUS & !CF)
        }
        AluOp::Neg => {
            // CF = (dst != 0), which `0 - dst` gives.
            let (r, f) = sub(0, d, 0);
            (r, f, STATUS)
        }
        AluOp::Not => (!d & m, 0, 0),
    };
    (r, (rflags & !written) | (f & written))
}

/// A bit test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BitOp {
    /// BT: CF = the bit.
    Test,
    /// BTS: CF = the bit, then set it.
    Set,
    /// BTR: CF = the bit, then clear it.
    Reset,
    /// BTC: CF = the bit, then flip it.
    Complement,
}

impl BitOp {
    /// All of them, for tests.
    pub const ALL: [BitOp; 4] = [Self::Test, Self::Set, Self::Reset, Self::Complement];

    /// Whether the operand is written back.
    pub const fn writes_result(self) -> bool {
        !matches!(self, Self::Test)
    }
}

/// Applies a bit test to bit `bit % (8 * size)` of `value`; returns the
/// new value and RFLAGS with CF set to the bit's old value. The other
/// status flags are undefined by the manuals and left as they were.
pub fn bit_op(op: BitOp, size: u8, value: u64, bit: u64, rflags: u64) -> (u64, u64) {
    let b = 1u64 << (bit % (u64::from(size) * 8));
    let old = value & b != 0;
    let v = match op {
        BitOp::Test => value,
        BitOp::Set => value | b,
        BitOp::Reset => value & !b,
        BitOp::Complement => value ^ b,
    } & mask(size);
    (v, if old { rflags | CF } else { rflags & !CF })
}

/// CMPXCHG of a `size`-byte operand: compares the accumulator with `dst`.
/// Returns `(new dst, accumulator write, rflags)`: when equal, ZF is set,
/// `dst` becomes `src` and the accumulator is not written; otherwise ZF is
/// clear, `dst` keeps its value and the accumulator receives it. The flags
/// are those of `CMP accumulator, dst`.
pub fn cmpxchg(size: u8, dst: u64, src: u64, acc: u64, rflags: u64) -> (u64, Option<u64>, u64) {
    let (_, f) = alu(AluOp::Cmp, size, acc, dst, rflags);
    let m = mask(size);
    if f & ZF != 0 {
        (src & m, None, f)
    } else {
        (dst & m, Some(dst & m), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_and_sub_flags_at_the_edges() {
        assert_eq!(alu(AluOp::Add, 1, 0xff, 1, 0), (0, CF | ZF | PF | AF));
        assert_eq!(alu(AluOp::Add, 1, 0x7f, 1, 0), (0x80, OF | SF | AF));
        assert_eq!(
            alu(AluOp::Sub, 4, 0, 1, 0),
            (0xffff_ffff, CF | SF | PF | AF)
        );
        assert_eq!(alu(AluOp::Cmp, 2, 0x8000, 1, 0), (0x7fff, OF | PF | AF));
        assert_eq!(alu(AluOp::Adc, 8, u64::MAX, 0, CF), (0, CF | ZF | PF | AF));
        assert_eq!(alu(AluOp::Sbb, 1, 0, 0, CF), (0xff, CF | SF | PF | AF));
    }

    #[test]
    fn inc_dec_keep_cf_and_logic_clears_cf_of() {
        assert_eq!(alu(AluOp::Inc, 1, 0xff, 0, CF), (0, CF | ZF | PF | AF));
        assert_eq!(alu(AluOp::Dec, 1, 0, 0, 0), (0xff, SF | PF | AF));
        assert_eq!(alu(AluOp::Or, 4, 0, 0, CF | OF), (0, ZF | PF));
        assert_eq!(alu(AluOp::Xor, 2, 0xffff, 0x00ff, 0), (0xff00, SF | PF));
        assert_eq!(alu(AluOp::Not, 1, 0x0f, 0, CF | ZF), (0xf0, CF | ZF));
    }

    #[test]
    fn neg_sets_cf_unless_zero() {
        assert_eq!(alu(AluOp::Neg, 4, 0, 0, CF), (0, ZF | PF));
        assert_eq!(alu(AluOp::Neg, 1, 0x80, 0, 0), (0x80, CF | OF | SF));
        assert_eq!(alu(AluOp::Neg, 2, 1, 0, 0).0, 0xffff);
    }

    #[test]
    fn bit_ops() {
        assert_eq!(bit_op(BitOp::Set, 4, 0, 33, 0), (2, 0));
        assert_eq!(bit_op(BitOp::Reset, 1, 0xff, 7, 0), (0x7f, CF));
        assert_eq!(bit_op(BitOp::Complement, 2, 0x10, 4, ZF), (0, CF | ZF));
        assert_eq!(bit_op(BitOp::Test, 8, 1 << 63, 63, 0), (1 << 63, CF));
    }

    #[test]
    fn cmpxchg_both_ways() {
        let (d, a, f) = cmpxchg(4, 5, 9, 5, 0);
        assert_eq!((d, a), (9, None));
        assert_ne!(f & ZF, 0);
        let (d, a, f) = cmpxchg(1, 0x12, 9, 0x1234, 0);
        assert_eq!((d, a), (0x12, Some(0x12)));
        assert_eq!(f & ZF, 0);
        let (d, a, f) = cmpxchg(1, 0x34, 9, 0x1234, 0);
        assert_eq!((d, a), (9, None), "only AL is compared");
        assert_ne!(f & ZF, 0);
    }
}
