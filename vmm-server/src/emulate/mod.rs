//! Instruction emulation for the exits that come without a decoded
//! instruction: MMIO accesses (a nested page fault on a device range) and
//! string port I/O (INS/OUTS, with or without REP).
//!
//! The instruction is fetched from guest memory at CS.base + RIP through
//! the guest's own paging (QEMU's TCG gives no SVM decode assists; when the
//! hardware did fetch the bytes, they are used instead), decoded with
//! `iced-x86`, and executed against [`GuestMemory`] for RAM and an
//! [`IoBus`] for device registers: a guest-physical address outside RAM is
//! MMIO. Segmentation (bases, limits, expand-down, type checks, null
//! segments, canonical addresses in 64-bit mode), address-size and
//! operand-size prefixes, the direction flag, REP counts and the flags of
//! the arithmetic forms follow the AMD and Intel manuals; a violation
//! becomes the fault the CPU would raise (#GP, #SS, #PF, #UD), with the
//! registers of a string instruction showing the iterations done.
//!
//! Emulated: MOV (all forms with a memory operand, MOVNTI), MOVZX, MOVSX,
//! MOVSXD, ADD, ADC, SUB, SBB, CMP, AND, OR, XOR, TEST, INC, DEC, NEG,
//! NOT, XCHG, CMPXCHG, CMPXCHG8B, CMPXCHG16B, BT, BTS, BTR, BTC, and the
//! string instructions STOS, LODS, MOVS, INS, OUTS with REP, and CMPS and
//! SCAS with REPE/REPNE (either CMPS operand may be MMIO; the flags are
//! CMP's, the repeat ends on the count or on ZF). A failed
//! CMPXCHG does not write its memory operand back (the manuals write the
//! old value again; for a device register that write is not harmless), but
//! it does check that the operand is writable.
//!
//! Anything else with a memory operand is reported as unsupported: the
//! caller ends the VM with the instruction's bytes rather than guess.

pub mod alu;
pub mod memory;

use core::fmt;

use iced_x86::{Decoder, DecoderError, DecoderOptions, Instruction, Mnemonic, OpKind, Register};

use crate::devices::WriteOutcome;
use crate::exit::IoSize;
use crate::vcpu::{attr, SegReg, VcpuState};
use alu::{AluOp, BitOp};
pub use memory::{
    Access, GuestMemory, NotRam, PageFault, PageWalker, Paging, Ram, Translate, TranslateError,
};

/// The devices an emulated instruction reaches.
pub trait IoBus {
    /// A port read of `size` bytes.
    fn port_read(&mut self, port: u16, size: IoSize) -> u32;
    /// A port write of the low `size` bytes of `value`.
    fn port_write(&mut self, port: u16, size: IoSize, value: u32) -> WriteOutcome;
    /// A read of `size` bytes (1, 2, 4 or 8) at guest-physical `gpa`
    /// outside RAM.
    fn mmio_read(&mut self, gpa: u64, size: u8) -> u64;
    /// A write of the low `size` bytes (1, 2, 4 or 8) of `value` at
    /// guest-physical `gpa` outside RAM.
    fn mmio_write(&mut self, gpa: u64, size: u8, value: u64) -> WriteOutcome;
}

/// An exception the guest takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fault {
    /// The vector.
    pub vector: u8,
    /// The error code it pushes, if any.
    pub error_code: Option<u32>,
    /// CR2 for a #PF.
    pub cr2: Option<u64>,
}

impl Fault {
    /// #UD.
    pub const fn ud() -> Self {
        Self {
            vector: 6,
            error_code: None,
            cr2: None,
        }
    }

    /// #GP(code).
    pub const fn gp(code: u32) -> Self {
        Self {
            vector: 13,
            error_code: Some(code),
            cr2: None,
        }
    }

    /// #SS(code).
    pub const fn ss(code: u32) -> Self {
        Self {
            vector: 12,
            error_code: Some(code),
            cr2: None,
        }
    }

    /// #PF from a failed translation.
    pub const fn page(f: PageFault) -> Self {
        Self {
            vector: 14,
            error_code: Some(f.error_code),
            cr2: Some(f.address),
        }
    }

    /// The fault a segment violation raises: #SS(0) on SS, else #GP(0).
    fn segment(seg: SegReg) -> Self {
        if seg == SegReg::Ss {
            Self::ss(0)
        } else {
            Self::gp(0)
        }
    }
}

/// Up to 15 instruction bytes, for reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct InsnBytes {
    /// The bytes.
    pub bytes: [u8; 15],
    /// How many are valid.
    pub len: u8,
}

impl fmt::Display for InsnBytes {
    /// `0f b6 07`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.bytes[..usize::from(self.len).min(15)]
            .iter()
            .enumerate()
        {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Why an instruction was not emulated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EmuError {
    /// The guest takes this exception (the registers show the work done).
    Fault(Fault),
    /// The bytes do not decode to an instruction (the CPU raises #UD).
    Undecodable(InsnBytes),
    /// A real instruction the emulator does not handle.
    Unsupported {
        /// Its bytes.
        bytes: InsnBytes,
        /// Its mnemonic.
        mnemonic: Mnemonic,
    },
    /// The instruction does not fit the exit (no memory operand on an MMIO
    /// exit, not INS/OUTS on a string I/O exit): the guest changed its code
    /// under the exit, or the exit was forged.
    Mismatch {
        /// Its bytes.
        bytes: InsnBytes,
        /// Its mnemonic.
        mnemonic: Mnemonic,
    },
    /// The instruction uses a segment register whose base the exit record
    /// does not carry (FS or GS).
    SegmentUnknown {
        /// The segment.
        seg: SegReg,
        /// The instruction's bytes.
        bytes: InsnBytes,
    },
    /// The guest executes code outside RAM (in MMIO space).
    FetchOutsideRam {
        /// The guest-physical address of the instruction.
        gpa: u64,
    },
}

impl fmt::Display for EmuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Fault(x) => write!(
                f,
                "the instruction raises {}",
                crate::exit::exception_mnemonic(x.vector)
            ),
            Self::Undecodable(b) => write!(f, "the bytes [{b}] are not an instruction"),
            Self::Unsupported { bytes, mnemonic } => {
                write!(f, "cannot emulate {} [{bytes}]", MnemonicName(mnemonic))
            }
            Self::Mismatch { bytes, mnemonic } => write!(
                f,
                "the instruction {} [{bytes}] does not match the exit",
                MnemonicName(mnemonic)
            ),
            Self::SegmentUnknown { seg, bytes } => write!(
                f,
                "the instruction [{bytes}] uses {}, whose base the exit record does not carry",
                seg.name()
            ),
            Self::FetchOutsideRam { gpa } => {
                write!(f, "the guest executes outside RAM at gpa={gpa:#x}")
            }
        }
    }
}

/// Displays a mnemonic in lower case (`cmpsb`).
#[derive(Clone, Copy, Debug)]
pub struct MnemonicName(pub Mnemonic);

impl fmt::Display for MnemonicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Lower<'a, 'b>(&'a mut fmt::Formatter<'b>);
        impl fmt::Write for Lower<'_, '_> {
            fn write_str(&mut self, s: &str) -> fmt::Result {
                for c in s.chars() {
                    fmt::Write::write_char(self.0, c.to_ascii_lowercase())?;
                }
                Ok(())
            }
        }
        fmt::write(&mut Lower(f), format_args!("{:?}", self.0))
    }
}

/// What the exit expects of the instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// An access to memory (an MMIO or protected-page exit).
    Memory,
    /// INS or OUTS (a string I/O exit).
    StringIo,
}

/// A successfully emulated instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Done {
    /// The instruction finished and RIP moved past it; false when a REP
    /// string instruction stopped after [`Emulator::max_iterations`] and
    /// resumes at the same RIP with the registers showing its progress.
    pub completed: bool,
    /// What the last device write asked for.
    pub outcome: WriteOutcome,
    /// The instruction.
    pub mnemonic: Mnemonic,
}

/// Most iterations of a REP string instruction per exit, by default.
pub const MAX_ITERATIONS: u64 = 4096;

/// One emulation: the processor state, memory, translation and devices.
pub struct Emulator<'a> {
    /// The guest's state; updated in place.
    pub cpu: &'a mut VcpuState,
    /// Guest RAM.
    pub mem: &'a mut dyn GuestMemory,
    /// Linear-to-physical translation.
    pub mmu: &'a mut dyn Translate,
    /// Ports and MMIO.
    pub io: &'a mut dyn IoBus,
    /// Most iterations of a REP string instruction in one call.
    pub max_iterations: u64,
}

/// A GPR operand: encoding number, size in bytes, and whether it is one of
/// AH, CH, DH, BH.
fn gpr(r: Register) -> Option<(usize, u8, bool)> {
    let v = r as u32;
    let (n, size, high) = match v {
        1..=4 => (v - 1, 1, false),
        5..=8 => (v - 5, 1, true),
        9..=20 => (v - 9 + 4, 1, false),
        21..=36 => (v - 21, 2, false),
        37..=52 => (v - 37, 4, false),
        53..=68 => (v - 53, 8, false),
        _ => return None,
    };
    Some((n as usize, size, high))
}

fn seg_of(r: Register) -> Option<SegReg> {
    Some(match r {
        Register::ES => SegReg::Es,
        Register::CS => SegReg::Cs,
        Register::SS => SegReg::Ss,
        Register::DS => SegReg::Ds,
        Register::FS => SegReg::Fs,
        Register::GS => SegReg::Gs,
        _ => return None,
    })
}

fn addr_mask(asz: u8) -> u64 {
    alu::mask(asz)
}

fn is_imm(k: OpKind) -> bool {
    matches!(
        k,
        OpKind::Immediate8
            | OpKind::Immediate16
            | OpKind::Immediate32
            | OpKind::Immediate64
            | OpKind::Immediate8to16
            | OpKind::Immediate8to32
            | OpKind::Immediate8to64
            | OpKind::Immediate32to64
    )
}

fn sign_extend(v: u64, size: u8) -> u64 {
    match size {
        1 => i64::from((v as u8).cast_signed()).cast_unsigned(),
        2 => i64::from((v as u16).cast_signed()).cast_unsigned(),
        4 => i64::from((v as u32).cast_signed()).cast_unsigned(),
        _ => v,
    }
}

/// The physical pieces of one access (it may cross a page boundary).
#[derive(Clone, Copy, Default)]
struct Pieces {
    parts: [(u64, usize); 2],
    count: usize,
}

/// A memory operand: segment, offset and address size.
#[derive(Clone, Copy, Debug)]
struct MemRef {
    seg: SegReg,
    offset: u64,
    asz: u8,
}

enum StrKind {
    Stos,
    Lods,
    Movs,
    Ins,
    Outs,
    Cmps,
    Scas,
}

impl<'a> Emulator<'a> {
    /// An emulator with the default iteration limit.
    pub fn new(
        cpu: &'a mut VcpuState,
        mem: &'a mut dyn GuestMemory,
        mmu: &'a mut dyn Translate,
        io: &'a mut dyn IoBus,
    ) -> Self {
        Self {
            cpu,
            mem,
            mmu,
            io,
            max_iterations: MAX_ITERATIONS,
        }
    }

    fn paging(&self) -> Paging {
        Paging {
            cr0: self.cpu.cr0,
            cr3: self.cpu.cr3,
            cr4: self.cpu.cr4,
            efer: self.cpu.efer,
            rflags: self.cpu.regs.rflags,
        }
    }

    fn translate(&mut self, linear: u64, acc: Access) -> Result<u64, EmuError> {
        let p = self.paging();
        self.mmu
            .translate(self.mem, &p, linear, acc)
            .map_err(|e| match e {
                TranslateError::Fault(f) => EmuError::Fault(Fault::page(f)),
                TranslateError::NonCanonical => EmuError::Fault(Fault::gp(0)),
            })
    }

    /// The instruction at CS:RIP: `hint` holds bytes the hardware fetched
    /// (SVM decode assists), else they are read from guest memory.
    pub fn decode(&mut self, hint: Option<&[u8]>) -> Result<(Instruction, InsnBytes), EmuError> {
        let mut b = InsnBytes::default();
        let mut later_fault = None;
        match hint.filter(|h| !h.is_empty()) {
            Some(h) => {
                let n = h.len().min(15);
                b.bytes[..n].copy_from_slice(&h[..n]);
                b.len = n as u8;
            }
            None => later_fault = self.fetch(&mut b)?,
        }
        let rip = self.cpu.regs.rip & self.cpu.ip_mask();
        let mut d = Decoder::with_ip(
            self.cpu.bitness(),
            &b.bytes[..usize::from(b.len)],
            rip,
            DecoderOptions::NONE,
        );
        let insn = d.decode();
        if insn.is_invalid() {
            if let (DecoderError::NoMoreBytes, Some(e)) = (d.last_error(), later_fault) {
                return Err(e);
            }
            return Err(EmuError::Undecodable(b));
        }
        b.len = insn.len() as u8;
        Ok((insn, b))
    }

    /// Reads up to 15 bytes at CS:RIP. A fault on the first byte is the
    /// result; a fault further on is returned for the decoder to raise if
    /// it needs those bytes.
    fn fetch(&mut self, b: &mut InsnBytes) -> Result<Option<EmuError>, EmuError> {
        let rip = self.cpu.regs.rip & self.cpu.ip_mask();
        let cs = *self.cpu.seg(SegReg::Cs);
        let mut want = 15u64;
        let linear = if self.cpu.mode64() {
            rip
        } else {
            if rip > u64::from(cs.limit) {
                return Err(EmuError::Fault(Fault::gp(0)));
            }
            want = want.min(u64::from(cs.limit) - rip + 1);
            (cs.base.wrapping_add(rip)) & 0xffff_ffff
        };
        let acc = Access {
            fetch: true,
            user: self.cpu.cpl == 3,
            write: false,
        };
        let mut got = 0u64;
        while got < want {
            let lin = linear.wrapping_add(got);
            let lin = if self.cpu.long_mode() {
                lin
            } else {
                lin & 0xffff_ffff
            };
            let chunk = (4096 - (lin & 0xfff)).min(want - got);
            let gpa = match self.translate(lin, acc) {
                Ok(g) => g,
                Err(e) if got == 0 => return Err(e),
                Err(e) => return Ok(Some(e)),
            };
            let dst = &mut b.bytes[got as usize..(got + chunk) as usize];
            if self.mem.read_phys(gpa, dst).is_err() {
                if got == 0 {
                    return Err(EmuError::FetchOutsideRam { gpa });
                }
                return Ok(Some(EmuError::FetchOutsideRam { gpa }));
            }
            got += chunk;
            b.len = got as u8;
        }
        if want < 15 && !self.cpu.mode64() {
            // The code segment ends here: reading further is a #GP.
            return Ok(Some(EmuError::Fault(Fault::gp(0))));
        }
        Ok(None)
    }

    /// Fetches, decodes and executes one instruction.
    pub fn step(&mut self, hint: Option<&[u8]>, expect: Expect) -> Result<Done, EmuError> {
        let (insn, bytes) = self.decode(hint)?;
        let string = matches!(
            insn.mnemonic(),
            Mnemonic::Insb
                | Mnemonic::Insw
                | Mnemonic::Insd
                | Mnemonic::Outsb
                | Mnemonic::Outsw
                | Mnemonic::Outsd
        );
        if expect == Expect::StringIo && !string {
            return Err(EmuError::Mismatch {
                bytes,
                mnemonic: insn.mnemonic(),
            });
        }
        let done = self.execute(&insn, bytes)?;
        if done.completed {
            self.cpu.regs.rip = insn.next_ip() & self.cpu.ip_mask();
            // RF is cleared when an instruction completes.
            self.cpu.regs.rflags &= !(1 << 16);
        }
        Ok(done)
    }

    fn read_reg(&self, r: Register) -> Option<u64> {
        let (n, size, high) = gpr(r)?;
        let v = self.cpu.gpr(n);
        Some(if high {
            (v >> 8) & 0xff
        } else {
            v & alu::mask(size)
        })
    }

    fn write_reg(&mut self, r: Register, v: u64) {
        if let Some((n, size, high)) = gpr(r) {
            if high {
                let old = self.cpu.gpr(n);
                self.cpu.set_gpr(n, (old & !0xff00) | ((v & 0xff) << 8));
            } else {
                self.cpu.write_gpr_sized(n, size, v);
            }
        }
    }

    fn mem_ref(&self, insn: &Instruction) -> MemRef {
        let size = |r: Register| gpr(r).map(|(_, s, _)| s);
        let base = insn.memory_base();
        let index = insn.memory_index();
        let asz = match base {
            Register::RIP => 8,
            Register::EIP => 4,
            _ => size(base)
                .or(size(index))
                .unwrap_or(match insn.memory_displ_size() {
                    2 => 2,
                    4 => 4,
                    8 => 8,
                    _ => (self.cpu.bitness() / 8) as u8,
                }),
        };
        let mut ea = insn.memory_displacement64();
        if !matches!(base, Register::RIP | Register::EIP) {
            if let Some((n, _, _)) = gpr(base) {
                ea = ea.wrapping_add(self.cpu.gpr(n));
            }
            if let Some((n, _, _)) = gpr(index) {
                ea = ea.wrapping_add(
                    self.cpu
                        .gpr(n)
                        .wrapping_mul(u64::from(insn.memory_index_scale())),
                );
            }
        }
        MemRef {
            seg: seg_of(insn.memory_segment()).unwrap_or(SegReg::Ds),
            offset: ea & addr_mask(asz),
            asz,
        }
    }

    /// The linear address of `size` bytes at `seg:offset`, after the
    /// segmentation checks.
    fn linear(
        &self,
        seg: SegReg,
        offset: u64,
        size: u64,
        write: bool,
        bytes: InsnBytes,
    ) -> Result<u64, EmuError> {
        let s = self.cpu.seg(seg);
        let fault = Err(EmuError::Fault(Fault::segment(seg)));
        if !self.cpu.segments_known && matches!(seg, SegReg::Fs | SegReg::Gs) {
            return Err(EmuError::SegmentUnknown { seg, bytes });
        }
        if self.cpu.mode64() {
            let base = if matches!(seg, SegReg::Fs | SegReg::Gs) {
                s.base
            } else {
                0
            };
            let lin = base.wrapping_add(offset);
            let last = lin.wrapping_add(size - 1);
            let canonical = |a: u64| (a.cast_signed() << 16 >> 16).cast_unsigned() == a;
            if !canonical(lin) || !canonical(last) {
                return fault;
            }
            return Ok(lin);
        }
        let last = offset.wrapping_add(size - 1);
        if self.cpu.protected() && !self.cpu.v86() {
            let a = s.attrib;
            if a & attr::P == 0 || a & attr::S == 0 {
                return fault;
            }
            let code = a & attr::CODE != 0;
            if write && (code || a & attr::WRITABLE_READABLE == 0) {
                return fault;
            }
            if !write && code && a & attr::WRITABLE_READABLE == 0 {
                return fault;
            }
            if !code && a & attr::EXPAND_DOWN != 0 {
                let upper = if a & attr::DB != 0 {
                    0xffff_ffff
                } else {
                    0xffff
                };
                if offset <= u64::from(s.limit) || last > upper || last < offset {
                    return fault;
                }
            } else if last > u64::from(s.limit) || last < offset {
                return fault;
            }
        } else if last > u64::from(s.limit) || last < offset {
            return fault;
        }
        Ok(s.base.wrapping_add(offset) & 0xffff_ffff)
    }

    /// Translates `size` bytes at `linear` into at most two physical pieces.
    fn pieces(&mut self, linear: u64, size: usize, write: bool) -> Result<Pieces, EmuError> {
        let acc = Access {
            write,
            fetch: false,
            user: self.cpu.cpl == 3,
        };
        let wrap = if self.cpu.long_mode() {
            u64::MAX
        } else {
            0xffff_ffff
        };
        let first = ((4096 - (linear & 0xfff)) as usize).min(size);
        let mut p = Pieces::default();
        p.parts[0] = (self.translate(linear, acc)?, first);
        p.count = 1;
        if first < size {
            let next = linear.wrapping_add(first as u64) & wrap;
            p.parts[1] = (self.translate(next, acc)?, size - first);
            p.count = 2;
        }
        Ok(p)
    }

    fn read_pieces(&mut self, p: &Pieces, buf: &mut [u8]) {
        let mut at = 0;
        for &(gpa, len) in &p.parts[..p.count] {
            let dst = &mut buf[at..at + len];
            if self.mem.read_phys(gpa, dst).is_err() {
                let mut done = 0;
                while done < len {
                    let n = mmio_chunk(gpa + done as u64, len - done);
                    let v = self.io.mmio_read(gpa + done as u64, n as u8);
                    dst[done..done + n].copy_from_slice(&v.to_le_bytes()[..n]);
                    done += n;
                }
            }
            at += len;
        }
    }

    fn write_pieces(&mut self, p: &Pieces, data: &[u8]) -> WriteOutcome {
        let mut at = 0;
        let mut outcome = WriteOutcome::Continue;
        for &(gpa, len) in &p.parts[..p.count] {
            let src = &data[at..at + len];
            if self.mem.write_phys(gpa, src).is_err() {
                let mut done = 0;
                while done < len {
                    let n = mmio_chunk(gpa + done as u64, len - done);
                    let mut v = [0u8; 8];
                    v[..n].copy_from_slice(&src[done..done + n]);
                    let r = self
                        .io
                        .mmio_write(gpa + done as u64, n as u8, u64::from_le_bytes(v));
                    if r != WriteOutcome::Continue {
                        outcome = r;
                    }
                    done += n;
                }
            }
            at += len;
        }
        outcome
    }

    /// Checks and translates an operand of `size` bytes at `m`.
    fn prepare(
        &mut self,
        m: MemRef,
        size: u8,
        write: bool,
        bytes: InsnBytes,
    ) -> Result<Pieces, EmuError> {
        let lin = self.linear(m.seg, m.offset, u64::from(size), write, bytes)?;
        self.pieces(lin, usize::from(size), write)
    }

    fn load(&mut self, p: &Pieces, size: u8) -> u64 {
        let mut b = [0u8; 8];
        self.read_pieces(p, &mut b[..usize::from(size).min(8)]);
        u64::from_le_bytes(b)
    }

    fn store(&mut self, p: &Pieces, size: u8, v: u64) -> WriteOutcome {
        self.write_pieces(p, &v.to_le_bytes()[..usize::from(size).min(8)])
    }

    fn execute(&mut self, insn: &Instruction, bytes: InsnBytes) -> Result<Done, EmuError> {
        use Mnemonic as M;
        let mnemonic = insn.mnemonic();
        let unsupported = Err(EmuError::Unsupported { bytes, mnemonic });
        let k0 = insn.op0_kind();
        let k1 = if insn.op_count() > 1 {
            insn.op1_kind()
        } else {
            OpKind::Register
        };
        let string_op = matches!(
            k0,
            OpKind::MemorySegSI
                | OpKind::MemorySegESI
                | OpKind::MemorySegRSI
                | OpKind::MemoryESDI
                | OpKind::MemoryESEDI
                | OpKind::MemoryESRDI
        ) || matches!(
            k1,
            OpKind::MemorySegSI
                | OpKind::MemorySegESI
                | OpKind::MemorySegRSI
                | OpKind::MemoryESDI
                | OpKind::MemoryESEDI
                | OpKind::MemoryESRDI
        );
        if string_op {
            let kind = match mnemonic {
                M::Stosb | M::Stosw | M::Stosd | M::Stosq => StrKind::Stos,
                M::Lodsb | M::Lodsw | M::Lodsd | M::Lodsq => StrKind::Lods,
                M::Movsb | M::Movsw | M::Movsd | M::Movsq => StrKind::Movs,
                M::Insb | M::Insw | M::Insd => StrKind::Ins,
                M::Outsb | M::Outsw | M::Outsd => StrKind::Outs,
                M::Cmpsb | M::Cmpsw | M::Cmpsd | M::Cmpsq => StrKind::Cmps,
                M::Scasb | M::Scasw | M::Scasd | M::Scasq => StrKind::Scas,
                _ => return unsupported,
            };
            return self.string(insn, kind, bytes);
        }
        let mem0 = k0 == OpKind::Memory;
        let mem1 = k1 == OpKind::Memory;
        if !mem0 && !mem1 {
            return Err(EmuError::Mismatch { bytes, mnemonic });
        }
        let size = insn.memory_size().size() as u8;
        let done = |outcome| {
            Ok(Done {
                completed: true,
                outcome,
                mnemonic,
            })
        };
        let alu_op = match mnemonic {
            M::Add => Some(AluOp::Add),
            M::Adc => Some(AluOp::Adc),
            M::Sub => Some(AluOp::Sub),
            M::Sbb => Some(AluOp::Sbb),
            M::Cmp => Some(AluOp::Cmp),
            M::And => Some(AluOp::And),
            M::Or => Some(AluOp::Or),
            M::Xor => Some(AluOp::Xor),
            M::Test => Some(AluOp::Test),
            M::Inc => Some(AluOp::Inc),
            M::Dec => Some(AluOp::Dec),
            M::Neg => Some(AluOp::Neg),
            M::Not => Some(AluOp::Not),
            _ => None,
        };
        let bit_op = match mnemonic {
            M::Bt => Some(BitOp::Test),
            M::Bts => Some(BitOp::Set),
            M::Btr => Some(BitOp::Reset),
            M::Btc => Some(BitOp::Complement),
            _ => None,
        };
        if !matches!(size, 1 | 2 | 4 | 8) && !matches!(mnemonic, M::Cmpxchg16b) {
            return unsupported;
        }
        match mnemonic {
            M::Mov | M::Movnti => {
                if mem0 {
                    let v = if is_imm(k1) {
                        insn.immediate(1)
                    } else {
                        match self.read_reg(insn.op1_register()) {
                            Some(v) => v,
                            None => return unsupported,
                        }
                    };
                    let p = self.prepare(self.mem_ref(insn), size, true, bytes)?;
                    done(self.store(&p, size, v))
                } else {
                    let dst = insn.op0_register();
                    if gpr(dst).is_none() {
                        return unsupported;
                    }
                    let p = self.prepare(self.mem_ref(insn), size, false, bytes)?;
                    let v = self.load(&p, size);
                    self.write_reg(dst, v);
                    done(WriteOutcome::Continue)
                }
            }
            M::Movzx | M::Movsx | M::Movsxd if mem1 => {
                let dst = insn.op0_register();
                let Some((_, dsize, _)) = gpr(dst) else {
                    return unsupported;
                };
                let p = self.prepare(self.mem_ref(insn), size, false, bytes)?;
                let v = self.load(&p, size);
                let v = if mnemonic == M::Movzx {
                    v
                } else {
                    sign_extend(v, size)
                };
                self.write_reg(dst, v & alu::mask(dsize));
                done(WriteOutcome::Continue)
            }
            _ if alu_op.is_some() => {
                let op = alu_op.unwrap_or(AluOp::Add);
                let rflags = self.cpu.regs.rflags;
                if mem0 {
                    let src = if insn.op_count() < 2 {
                        0
                    } else if is_imm(k1) {
                        insn.immediate(1)
                    } else {
                        match self.read_reg(insn.op1_register()) {
                            Some(v) => v,
                            None => return unsupported,
                        }
                    };
                    let p = self.prepare(self.mem_ref(insn), size, op.writes_result(), bytes)?;
                    let d = self.load(&p, size);
                    let (r, f) = alu::alu(op, size, d, src, rflags);
                    self.cpu.regs.rflags = f;
                    let outcome = if op.writes_result() {
                        self.store(&p, size, r)
                    } else {
                        WriteOutcome::Continue
                    };
                    done(outcome)
                } else {
                    let dst = insn.op0_register();
                    let Some(d) = self.read_reg(dst) else {
                        return unsupported;
                    };
                    let p = self.prepare(self.mem_ref(insn), size, false, bytes)?;
                    let s = self.load(&p, size);
                    let (r, f) = alu::alu(op, size, d, s, rflags);
                    self.cpu.regs.rflags = f;
                    if op.writes_result() {
                        self.write_reg(dst, r);
                    }
                    done(WriteOutcome::Continue)
                }
            }
            _ if bit_op.is_some() && mem0 => {
                let op = bit_op.unwrap_or(BitOp::Test);
                let bits = u64::from(size) * 8;
                let mut m = self.mem_ref(insn);
                let bit = if is_imm(k1) {
                    insn.immediate(1) % bits
                } else {
                    let Some(v) = self.read_reg(insn.op1_register()) else {
                        return unsupported;
                    };
                    // A register bit offset is signed and may reach outside
                    // the operand: it selects an operand-sized unit first.
                    let off = sign_extend(v, size).cast_signed();
                    let unit = off.div_euclid(i64::from(size) * 8);
                    m.offset = m
                        .offset
                        .wrapping_add(unit.cast_unsigned().wrapping_mul(u64::from(size)))
                        & addr_mask(m.asz);
                    off.rem_euclid(i64::from(size) * 8).cast_unsigned()
                };
                let p = self.prepare(m, size, op.writes_result(), bytes)?;
                let v = self.load(&p, size);
                let (r, f) = alu::bit_op(op, size, v, bit, self.cpu.regs.rflags);
                self.cpu.regs.rflags = f;
                let outcome = if op.writes_result() {
                    self.store(&p, size, r)
                } else {
                    WriteOutcome::Continue
                };
                done(outcome)
            }
            M::Xchg => {
                let reg = if mem0 {
                    insn.op1_register()
                } else {
                    insn.op0_register()
                };
                let Some(rv) = self.read_reg(reg) else {
                    return unsupported;
                };
                let p = self.prepare(self.mem_ref(insn), size, true, bytes)?;
                let old = self.load(&p, size);
                let outcome = self.store(&p, size, rv);
                self.write_reg(reg, old);
                done(outcome)
            }
            M::Cmpxchg if mem0 => {
                let Some(src) = self.read_reg(insn.op1_register()) else {
                    return unsupported;
                };
                let acc = self.cpu.gpr(0) & alu::mask(size);
                let p = self.prepare(self.mem_ref(insn), size, true, bytes)?;
                let d = self.load(&p, size);
                let (nd, acc_write, f) = alu::cmpxchg(size, d, src, acc, self.cpu.regs.rflags);
                self.cpu.regs.rflags = f;
                let mut outcome = WriteOutcome::Continue;
                match acc_write {
                    None => outcome = self.store(&p, size, nd),
                    Some(v) => self.cpu.write_gpr_sized(0, size, v),
                }
                done(outcome)
            }
            M::Cmpxchg8b | M::Cmpxchg16b if mem0 => {
                let half = if mnemonic == M::Cmpxchg16b { 8u8 } else { 4 };
                let m = self.mem_ref(insn);
                let lin = self.linear(m.seg, m.offset, u64::from(half) * 2, true, bytes)?;
                if half == 8 && lin & 15 != 0 {
                    return Err(EmuError::Fault(Fault::gp(0)));
                }
                let p = self.pieces(lin, usize::from(half) * 2, true)?;
                let mut buf = [0u8; 16];
                let n = usize::from(half) * 2;
                self.read_pieces(&p, &mut buf[..n]);
                let hm = alu::mask(half);
                let lo = |b: &[u8]| {
                    let mut w = [0u8; 8];
                    w[..usize::from(half)].copy_from_slice(&b[..usize::from(half)]);
                    u64::from_le_bytes(w)
                };
                let (mem_lo, mem_hi) = (lo(&buf[..]), lo(&buf[usize::from(half)..]));
                let (rax, rdx) = (self.cpu.gpr(0) & hm, self.cpu.gpr(2) & hm);
                let mut outcome = WriteOutcome::Continue;
                if mem_lo == rax && mem_hi == rdx {
                    let (rbx, rcx) = (self.cpu.gpr(3) & hm, self.cpu.gpr(1) & hm);
                    buf[..usize::from(half)]
                        .copy_from_slice(&rbx.to_le_bytes()[..usize::from(half)]);
                    buf[usize::from(half)..n]
                        .copy_from_slice(&rcx.to_le_bytes()[..usize::from(half)]);
                    outcome = self.write_pieces(&p, &buf[..n]);
                    self.cpu.regs.rflags |= alu::ZF;
                } else {
                    self.cpu.write_gpr_sized(0, half, mem_lo);
                    self.cpu.write_gpr_sized(2, half, mem_hi);
                    self.cpu.regs.rflags &= !alu::ZF;
                }
                done(outcome)
            }
            _ => unsupported,
        }
    }

    fn string(
        &mut self,
        insn: &Instruction,
        kind: StrKind,
        bytes: InsnBytes,
    ) -> Result<Done, EmuError> {
        let mnemonic = insn.mnemonic();
        let size: u8 = match kind {
            StrKind::Ins | StrKind::Outs => match mnemonic {
                Mnemonic::Insb | Mnemonic::Outsb => 1,
                Mnemonic::Insw | Mnemonic::Outsw => 2,
                _ => 4,
            },
            _ => insn.memory_size().size() as u8,
        };
        if !matches!(size, 1 | 2 | 4 | 8) {
            return Err(EmuError::Unsupported { bytes, mnemonic });
        }
        let asz = (0..insn.op_count())
            .find_map(|i| match insn.op_kind(i) {
                OpKind::MemorySegSI | OpKind::MemoryESDI => Some(2u8),
                OpKind::MemorySegESI | OpKind::MemoryESEDI => Some(4),
                OpKind::MemorySegRSI | OpKind::MemoryESRDI => Some(8),
                _ => None,
            })
            .unwrap_or(2);
        let am = addr_mask(asz);
        let src_seg = seg_of(insn.memory_segment()).unwrap_or(SegReg::Ds);
        let rep = insn.has_rep_prefix() || insn.has_repne_prefix();
        let step = if self.cpu.regs.rflags & alu::DF != 0 {
            (u64::from(size)).wrapping_neg()
        } else {
            u64::from(size)
        };
        let port = self.cpu.gpr(2) as u16;
        let io_size = IoSize::from_bytes(size).unwrap_or(IoSize::Byte);
        let mut outcome = WriteOutcome::Continue;
        let mut iterations = 0;
        loop {
            let count = self.cpu.gpr(1) & am;
            if rep && count == 0 {
                break;
            }
            if iterations == self.max_iterations.max(1) {
                return Ok(Done {
                    completed: false,
                    outcome,
                    mnemonic,
                });
            }
            let si = MemRef {
                seg: src_seg,
                offset: self.cpu.gpr(6) & am,
                asz,
            };
            let di = MemRef {
                seg: SegReg::Es,
                offset: self.cpu.gpr(7) & am,
                asz,
            };
            let r = match kind {
                StrKind::Stos => {
                    let p = self.prepare(di, size, true, bytes)?;
                    let v = self.cpu.gpr(0);
                    self.store(&p, size, v)
                }
                StrKind::Lods => {
                    let p = self.prepare(si, size, false, bytes)?;
                    let v = self.load(&p, size);
                    self.cpu.write_gpr_sized(0, size, v);
                    WriteOutcome::Continue
                }
                StrKind::Movs => {
                    let src = self.prepare(si, size, false, bytes)?;
                    let dst = self.prepare(di, size, true, bytes)?;
                    let v = self.load(&src, size);
                    self.store(&dst, size, v)
                }
                StrKind::Ins => {
                    let dst = self.prepare(di, size, true, bytes)?;
                    let v = self.io.port_read(port, io_size);
                    self.store(&dst, size, u64::from(v))
                }
                StrKind::Outs => {
                    let src = self.prepare(si, size, false, bytes)?;
                    let v = self.load(&src, size);
                    self.io.port_write(port, io_size, v as u32)
                }
                // [rSI] - ES:[rDI], both checked before either is read.
                StrKind::Cmps => {
                    let a = self.prepare(si, size, false, bytes)?;
                    let b = self.prepare(di, size, false, bytes)?;
                    let x = self.load(&a, size);
                    let y = self.load(&b, size);
                    let (_, f) = alu::alu(AluOp::Cmp, size, x, y, self.cpu.regs.rflags);
                    self.cpu.regs.rflags = f;
                    WriteOutcome::Continue
                }
                // rAX - ES:[rDI].
                StrKind::Scas => {
                    let b = self.prepare(di, size, false, bytes)?;
                    let y = self.load(&b, size);
                    let x = self.cpu.gpr(0) & alu::mask(size);
                    let (_, f) = alu::alu(AluOp::Cmp, size, x, y, self.cpu.regs.rflags);
                    self.cpu.regs.rflags = f;
                    WriteOutcome::Continue
                }
            };
            if matches!(
                kind,
                StrKind::Lods | StrKind::Movs | StrKind::Outs | StrKind::Cmps
            ) {
                self.advance(6, step, asz);
            }
            if matches!(
                kind,
                StrKind::Stos | StrKind::Movs | StrKind::Ins | StrKind::Cmps | StrKind::Scas
            ) {
                self.advance(7, step, asz);
            }
            iterations += 1;
            if rep {
                self.cpu.write_gpr_sized(1, asz, count.wrapping_sub(1) & am);
            }
            // REPE ends when the operands differ, REPNE when they are
            // equal (after the count is decremented).
            if rep && matches!(kind, StrKind::Cmps | StrKind::Scas) {
                let zf = self.cpu.regs.rflags & alu::ZF != 0;
                if zf == insn.has_repne_prefix() {
                    break;
                }
            }
            if r != WriteOutcome::Continue {
                outcome = r;
                break;
            }
            if !rep {
                break;
            }
        }
        Ok(Done {
            completed: true,
            outcome,
            mnemonic,
        })
    }

    /// Adds `step` to register `n` as an `asz`-byte address register: SI
    /// with 16-bit addressing keeps the rest of RSI; ESI zero-extends.
    fn advance(&mut self, n: usize, step: u64, asz: u8) {
        let v = self.cpu.gpr(n).wrapping_add(step) & addr_mask(asz);
        self.cpu.write_gpr_sized(n, asz, v);
    }
}

/// The largest naturally sized MMIO access (1, 2, 4 or 8 bytes) that
/// starts at `gpa` and fits in `len`.
fn mmio_chunk(gpa: u64, len: usize) -> usize {
    [8usize, 4, 2, 1]
        .into_iter()
        .find(|&n| n <= len && gpa.is_multiple_of(n as u64))
        .unwrap_or(1)
}

#[cfg(test)]
mod tests;
