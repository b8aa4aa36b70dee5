//! The emulator's ALU against the host CPU: every operation the emulator
//! applies to a memory operand runs here on the host with inline assembly,
//! on random operands, sizes and incoming flags, and the result and the
//! defined flags must agree.
#![cfg(target_arch = "x86_64")]

use core::arch::asm;

use proptest::prelude::*;
use vmm_server::emulate::alu::{self, AluOp, BitOp};

/// The incoming flags the tests vary: the six status flags only (setting
/// TF, DF or AC on the host would trap or change other instructions).
const IN_MASK: u64 = alu::STATUS;

/// Runs `$insn` with `{d}` and `{s}` as operands of the width selected by
/// `$m` (`l`, `x`, `e`, `r`), with RFLAGS = `$f` before, and returns the
/// destination and RFLAGS after.
macro_rules! host2 {
    ($insn:literal, $m:literal, $d:expr, $s:expr, $f:expr) => {{
        let mut d: u64 = $d;
        let mut f: u64 = $f;
        let s: u64 = $s;
        // SAFETY: the asm pushes and pops one word each (no `nostack`, so
        // the compiler keeps the stack usable) and changes only the named
        // registers and the status flags, which `popfq` restores in part
        // from `f`; the incoming flags are limited to the status flags.
        unsafe {
            asm!(
                "push {f}",
                "popfq",
                concat!($insn, " {d:", $m, "}, {s:", $m, "}"),
                "pushfq",
                "pop {f}",
                d = inout(reg) d,
                s = in(reg) s,
                f = inout(reg) f,
            );
        }
        (d, f)
    }};
}

/// Like `host2!` for one-operand instructions.
macro_rules! host1 {
    ($insn:literal, $m:literal, $d:expr, $f:expr) => {{
        let mut d: u64 = $d;
        let mut f: u64 = $f;
        // SAFETY: as in `host2!`.
        unsafe {
            asm!(
                "push {f}",
                "popfq",
                concat!($insn, " {d:", $m, "}"),
                "pushfq",
                "pop {f}",
                d = inout(reg) d,
                f = inout(reg) f,
            );
        }
        (d, f)
    }};
}

/// Dispatches an instruction over the four operand sizes.
macro_rules! sized2 {
    ($insn:literal, $size:expr, $d:expr, $s:expr, $f:expr) => {
        match $size {
            1 => host2!($insn, "l", $d, $s, $f),
            2 => host2!($insn, "x", $d, $s, $f),
            4 => host2!($insn, "e", $d, $s, $f),
            _ => host2!($insn, "r", $d, $s, $f),
        }
    };
}

/// Like `sized2!` without the 8-bit form (the bit tests have none).
macro_rules! sized2_wide {
    ($insn:literal, $size:expr, $d:expr, $s:expr, $f:expr) => {
        match $size {
            2 => host2!($insn, "x", $d, $s, $f),
            4 => host2!($insn, "e", $d, $s, $f),
            _ => host2!($insn, "r", $d, $s, $f),
        }
    };
}

macro_rules! sized1 {
    ($insn:literal, $size:expr, $d:expr, $f:expr) => {
        match $size {
            1 => host1!($insn, "l", $d, $f),
            2 => host1!($insn, "x", $d, $f),
            4 => host1!($insn, "e", $d, $f),
            _ => host1!($insn, "r", $d, $f),
        }
    };
}

/// The host's result and flags for `op`.
fn host_alu(op: AluOp, size: u8, d: u64, s: u64, f: u64) -> (u64, u64) {
    let f = (f & IN_MASK) | 2;
    let (r, flags) = match op {
        AluOp::Add => sized2!("add", size, d, s, f),
        AluOp::Adc => sized2!("adc", size, d, s, f),
        AluOp::Sub => sized2!("sub", size, d, s, f),
        AluOp::Sbb => sized2!("sbb", size, d, s, f),
        AluOp::Cmp => sized2!("cmp", size, d, s, f),
        AluOp::And => sized2!("and", size, d, s, f),
        AluOp::Or => sized2!("or", size, d, s, f),
        AluOp::Xor => sized2!("xor", size, d, s, f),
        AluOp::Test => sized2!("test", size, d, s, f),
        AluOp::Inc => sized1!("inc", size, d, f),
        AluOp::Dec => sized1!("dec", size, d, f),
        AluOp::Neg => sized1!("neg", size, d, f),
        AluOp::Not => sized1!("not", size, d, f),
    };
    (r & alu::mask(size), flags)
}

/// The host's result and flags for a bit test (register form: the bit
/// offset is taken modulo the operand size, as for the emulator's
/// immediate form).
fn host_bit(op: BitOp, size: u8, d: u64, bit: u64, f: u64) -> (u64, u64) {
    let f = (f & IN_MASK) | 2;
    // There is no 8-bit form; the emulator uses sizes 2, 4 and 8 for it.
    let (r, flags) = match op {
        BitOp::Test => sized2_wide!("bt", size, d, bit, f),
        BitOp::Set => sized2_wide!("bts", size, d, bit, f),
        BitOp::Reset => sized2_wide!("btr", size, d, bit, f),
        BitOp::Complement => sized2_wide!("btc", size, d, bit, f),
    };
    (r & alu::mask(size), flags)
}

/// The host's CMPXCHG: (destination, accumulator, flags).
fn host_cmpxchg(size: u8, d: u64, s: u64, acc: u64, f: u64) -> (u64, u64, u64) {
    let mut d = d;
    let mut a = acc;
    let mut f = (f & IN_MASK) | 2;
    macro_rules! go {
        ($m:literal) => {
            // SAFETY: as in `host2!`; RAX is the accumulator, named as such.
            unsafe {
                asm!(
                    "push {f}",
                    "popfq",
                    concat!("cmpxchg {d:", $m, "}, {s:", $m, "}"),
                    "pushfq",
                    "pop {f}",
                    d = inout(reg) d,
                    s = in(reg) s,
                    f = inout(reg) f,
                    inout("rax") a,
                );
            }
        };
    }
    match size {
        1 => go!("l"),
        2 => go!("x"),
        4 => go!("e"),
        _ => go!("r"),
    }
    (d & alu::mask(size), a, f)
}

fn sizes() -> impl Strategy<Value = u8> {
    prop_oneof![Just(1u8), Just(2u8), Just(4u8), Just(8u8)]
}

/// Operands that hit the edges often: zero, all ones, the sign bit.
fn operand() -> impl Strategy<Value = u64> {
    prop_oneof![
        any::<u64>(),
        Just(0u64),
        Just(u64::MAX),
        Just(0x80),
        Just(0x7f),
        Just(0x8000),
        Just(0x8000_0000),
        Just(1 << 63),
        0u64..4,
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    #[test]
    fn alu_matches_the_host(
        op in proptest::sample::select(AluOp::ALL.to_vec()),
        size in sizes(),
        d in operand(),
        s in operand(),
        f in any::<u64>(),
    ) {
        let f = (f & IN_MASK) | 2;
        let (hr, hf) = host_alu(op, size, d, s, f);
        let (er, ef) = alu::alu(op, size, d, s, f);
        let defined = alu::defined_flags(op);
        let want_r = if op.writes_result() { hr } else { d & alu::mask(size) };
        let got_r = if op.writes_result() { er } else { d & alu::mask(size) };
        prop_assert_eq!(got_r, want_r, "{:?} size {} d={:#x} s={:#x}", op, size, d, s);
        prop_assert_eq!(ef & defined, hf & defined,
            "{:?} size {} d={:#x} s={:#x} flags in {:#x}", op, size, d, s, f);
        // Flags an operation does not write at all stay as they were.
        let untouched = alu::STATUS & !defined & !(alu::AF);
        prop_assert_eq!(ef & untouched, f & untouched);
    }

    #[test]
    fn bit_tests_match_the_host(
        op in proptest::sample::select(BitOp::ALL.to_vec()),
        size in prop_oneof![Just(2u8), Just(4u8), Just(8u8)],
        d in operand(),
        bit in 0u64..64,
        f in any::<u64>(),
    ) {
        let f = (f & IN_MASK) | 2;
        let bit = bit % (u64::from(size) * 8);
        let (hr, hf) = host_bit(op, size, d, bit, f);
        let (er, ef) = alu::bit_op(op, size, d & alu::mask(size), bit, f);
        prop_assert_eq!(er, hr);
        prop_assert_eq!(ef & alu::CF, hf & alu::CF);
    }

    #[test]
    fn cmpxchg_matches_the_host(
        size in sizes(),
        d in operand(),
        s in operand(),
        acc in prop_oneof![operand(), Just(0u64)],
        equal in any::<bool>(),
        f in any::<u64>(),
    ) {
        let f = (f & IN_MASK) | 2;
        // Make the equal case common.
        let acc = if equal { (acc & !alu::mask(size)) | (d & alu::mask(size)) } else { acc };
        let (hd, ha, hf) = host_cmpxchg(size, d, s, acc, f);
        let (ed, ea, ef) = alu::cmpxchg(size, d, s, acc & alu::mask(size), f);
        prop_assert_eq!(ed, hd);
        prop_assert_eq!(ef & alu::STATUS, hf & alu::STATUS);
        // On failure the host writes the accumulator (sized: 32-bit
        // zero-extends RAX, 8 and 16 bits merge).
        let mut want_acc = acc;
        if let Some(v) = ea {
            want_acc = match size {
                1 => (acc & !0xff) | v,
                2 => (acc & !0xffff) | v,
                _ => v,
            };
        }
        if size == 4 && ea.is_none() {
            // A successful 32-bit CMPXCHG leaves RAX alone on AMD and
            // Intel alike; nothing to adjust.
        }
        prop_assert_eq!(want_acc, ha, "size {} d={:#x} s={:#x} acc={:#x}", size, d, s, acc);
    }
}
