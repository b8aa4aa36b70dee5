//! [`Machine`]: a guest CPU reduced to what the MMU sees. Each operation
//! (an access, a store, a MOV to or from a CR, INVLPG, WRMSR to EFER) runs
//! on the simulated hardware; whatever exits goes to the mmu-server as the
//! stub would route it, and the resume it answers is checked with the
//! stub's own `kernel_stub::resume::validate` and applied.

use ipc_proto::exit::svm_exit;
use ipc_proto::{ExitRecord, GuestRegs, PagingState, Resume, ResumeFlags, Segment, VcpuArch};
use mmu_server::regs::{cr0, efer};
use mmu_server::walk::{Access, GuestMemory, NotRam, WalkError};
use mmu_server::{ctl, Action, Flush, GuestCtl, Mmu, MmuConfig, MmuMode, MmuPlatform, PagingMode};

use crate::platform::{HwFault, Sim, SimConfig};

/// What an operation ended with, as the guest sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The access reached guest-physical address.
    Ok(u64),
    /// The store completed.
    Stored,
    /// The instruction completed (MOV to CR, INVLPG, WRMSR).
    Done,
    /// MOV from CR returned this value.
    Value(u64),
    /// #PF with this error code and CR2.
    PageFault {
        /// Error code.
        error_code: u32,
        /// CR2.
        cr2: u64,
    },
    /// #GP(0).
    GeneralProtection,
    /// #DF.
    DoubleFault,
    /// The access went to guest-physical memory outside RAM.
    Mmio(u64),
    /// The fetched bytes are not the instruction the operation runs (the
    /// guest remapped or overwrote its code page); nothing was executed.
    StrayCode,
    /// The mmu-server, the stub's checks or the hardware model failed.
    Failed(String),
}

/// Offsets of the instructions [`Machine::place_code`] writes.
pub mod code {
    /// `mov [rdi], rax` (64-bit).
    pub const STORE64: u64 = 0x00;
    /// `mov [edi], eax` / `mov [rdi], eax` (32/64-bit).
    pub const STORE32: u64 = 0x08;
    /// `mov [edi], eax` in 16-bit code.
    pub const STORE32_16: u64 = 0x10;
    /// `mov crN, rax` for N = 0, 3, 4 at `MOV_TO_CR + 4 * slot`.
    pub const MOV_TO_CR: u64 = 0x18;
    /// `mov rax, crN` for N = 0, 3, 4.
    pub const MOV_FROM_CR: u64 = 0x24;
    /// `invlpg [rdi]` (32/64-bit).
    pub const INVLPG: u64 = 0x30;
    /// `invlpg [edi]` in 16-bit code.
    pub const INVLPG_16: u64 = 0x34;
    /// `wrmsr`.
    pub const WRMSR: u64 = 0x38;
    /// The bytes, by offset.
    pub const BYTES: &[(u64, &[u8])] = &[
        (STORE64, &[0x48, 0x89, 0x07]),
        (STORE32, &[0x89, 0x07]),
        (STORE32_16, &[0x66, 0x67, 0x89, 0x07]),
        (MOV_TO_CR, &[0x0f, 0x22, 0xc0]),
        (MOV_TO_CR + 4, &[0x0f, 0x22, 0xd8]),
        (MOV_TO_CR + 8, &[0x0f, 0x22, 0xe0]),
        (MOV_FROM_CR, &[0x0f, 0x20, 0xc0]),
        (MOV_FROM_CR + 4, &[0x0f, 0x20, 0xd8]),
        (MOV_FROM_CR + 8, &[0x0f, 0x20, 0xe0]),
        (INVLPG, &[0x0f, 0x01, 0x3f]),
        (INVLPG_16, &[0x67, 0x0f, 0x01, 0x3f]),
        (WRMSR, &[0x0f, 0x30]),
    ];

    /// The bytes at `offset`.
    pub fn at(offset: u64) -> &'static [u8] {
        BYTES
            .iter()
            .find(|(o, _)| *o == offset)
            .map(|(_, b)| *b)
            .expect("known instruction offset")
    }

    /// Slot of CR `n` in the MOV tables.
    pub fn cr_slot(n: u8) -> u64 {
        match n {
            0 => 0,
            3 => 4,
            _ => 8,
        }
    }
}

/// RFLAGS.AC: explicit supervisor accesses to user pages pass SMAP.
const RFLAGS_AC: u64 = 1 << 18;

/// Exits one operation may take before the machine calls it a livelock.
const MAX_EXITS: usize = 32;

/// A guest CPU on the simulated platform, with its mmu-server.
pub struct Machine {
    /// The platform.
    pub sim: Sim,
    /// The mmu-server.
    pub mmu: Mmu,
    /// General-purpose registers.
    pub regs: GuestRegs,
    /// The guest's CR2.
    pub cr2: u64,
    /// Linear address of the code page ([`Machine::place_code`]); when
    /// set, instructions are fetched through the MMU before they run and
    /// exits carry no instruction bytes unless `decode_assists`.
    pub code: Option<u64>,
    /// Exits carry the GPR (CR accesses), the address (INVLPG) and the
    /// instruction bytes (#PF), as SVM decode assists do.
    pub decode_assists: bool,
    /// INVLPG always exits to the mmu-server. The native stubs intercept
    /// it only while the loaded paging state asks for it
    /// (`PagingState::INTERCEPT_INVLPG`: some page table is unsync), and
    /// so does the machine unless this is set; otherwise the guest's
    /// INVLPG flushes the hardware TLB itself.
    pub intercept_invlpg: bool,
    nested_ctl: GuestCtl,
    sequence: u64,
}

enum Step {
    Resumed(Resume),
    End(Outcome),
}

impl Machine {
    /// A machine with zeroed guest memory: fill it through `sim`, then
    /// call [`Machine::start`].
    pub fn new(sim_cfg: SimConfig, mmu_cfg: MmuConfig) -> Self {
        Self {
            sim: Sim::new(sim_cfg),
            mmu: Mmu::new(mmu_cfg, sim_cfg.ram_bytes),
            regs: GuestRegs {
                rflags: 2,
                ..Default::default()
            },
            cr2: 0,
            code: None,
            decode_assists: mmu_cfg.decode_assists,
            intercept_invlpg: false,
            nested_ctl: GuestCtl::RESET,
            sequence: 0,
        }
    }

    /// Starts the MMU with the guest's initial paging state `ctl` and
    /// guest memory as it is now.
    pub fn start(&mut self, ctl: GuestCtl) -> Result<(), String> {
        self.mmu
            .start(&mut self.sim, ctl)
            .map_err(|f| f.to_string())?;
        self.nested_ctl = *self.mmu.ctl();
        if let Some(ps) = self.mmu.take_paging() {
            self.sim.load_paging(&ps)?;
        }
        Ok(())
    }

    fn nested(&self) -> bool {
        self.mmu.config().mode == MmuMode::Nested
    }

    /// The guest's paging controls.
    pub fn ctl(&self) -> GuestCtl {
        if self.nested() {
            self.nested_ctl
        } else {
            *self.mmu.ctl()
        }
    }

    /// The code segment for the guest's mode: 64-bit code in long mode,
    /// 32-bit code in protected mode, 16-bit in real mode (base 0).
    pub fn cs(&self) -> Segment {
        let c = self.ctl();
        let attrib = if c.efer & efer::LMA != 0 {
            Segment::ATTR_L
        } else if c.cr0 & cr0::PE != 0 {
            Segment::ATTR_DB
        } else {
            0
        };
        Segment {
            selector: 8,
            attrib: attrib | 0x9b,
            limit: u32::MAX,
            base: 0,
        }
    }

    fn bitness(&self) -> u32 {
        mmu_server::insn::bitness(self.ctl().efer & efer::LMA != 0, &self.cs())
    }

    /// Writes the instruction table of [`code`] at guest-physical `gpa`.
    pub fn place_code(&mut self, gpa: u64) {
        for (off, bytes) in code::BYTES {
            assert!(self.sim.write_phys(gpa + off, bytes).is_ok());
        }
    }

    fn rip_of(&self, offset: u64) -> u64 {
        self.code.unwrap_or(0x7000) + offset
    }

    fn record(
        &mut self,
        exit_code: u64,
        info1: u64,
        info2: u64,
        insn: Option<&[u8]>,
    ) -> ExitRecord {
        self.sequence += 1;
        let ps = self.sim.paging().unwrap_or_default();
        let mut rec = ExitRecord {
            abi_version: ipc_proto::ABI_VERSION,
            arch: VcpuArch::Svm as u32,
            sequence: self.sequence,
            exit_code,
            exit_info1: info1,
            exit_info2: info2,
            regs: self.regs,
            cr0: ps.cr0,
            cr2: self.cr2,
            cr3: u64::from(ps.root),
            cr4: ps.cr4,
            efer: ps.efer,
            cs: self.cs(),
            ..Default::default()
        };
        if let Some(b) = insn {
            rec.insn_len = b.len() as u8;
            rec.insn_bytes[..b.len()].copy_from_slice(b);
        }
        rec
    }

    /// Gives an exit to the mmu-server and applies its answer.
    fn exit(&mut self, rec: &ExitRecord) -> Step {
        let action = self.mmu.handle_exit(&mut self.sim, rec);
        let step = match action {
            Action::Resume(r) => self.apply(&r),
            Action::Mmio { gpa, .. } => Step::End(Outcome::Mmio(gpa)),
            Action::Fail(f) => Step::End(Outcome::Failed(format!("mmu-server: {f}"))),
        };
        if let Some((ps, flags)) = self.mmu.take_paging_flags() {
            if let Err(e) = self.sim.load_paging_flags(&ps, flags) {
                return Step::End(Outcome::Failed(e));
            }
        }
        if let Some(v) = self.sim.violation.clone() {
            return Step::End(Outcome::Failed(v.0));
        }
        step
    }

    /// Applies a resume as the stub does, after its checks.
    fn apply(&mut self, r: &Resume) -> Step {
        let cs = self.cs();
        let hw_efer = self.sim.paging().map_or(self.ctl().efer, |p| p.efer);
        let mode = crate::stub::GuestMode {
            lma: hw_efer & efer::LMA != 0,
            cs_l: cs.attrib & Segment::ATTR_L != 0,
            cs_d: cs.attrib & Segment::ATTR_DB != 0,
            rflags: self.regs.rflags,
            interrupt_shadow: false,
            shadow: !self.nested(),
        };
        let rules = *self.sim.rules();
        let sim = &self.sim;
        let flags = match crate::stub::validate(r, &mode, &rules, |h| sim.table_level(h)) {
            Ok(f) => f,
            Err(e) => {
                return Step::End(Outcome::Failed(format!(
                    "the stub refused the resume: {}",
                    e.describe()
                )))
            }
        };
        if flags.contains(ResumeFlags::SET_PAGING) {
            if let Err(e) = self.sim.load_paging_flags(&r.paging, flags) {
                return Step::End(Outcome::Failed(e));
            }
        }
        if flags.contains(ResumeFlags::SET_CR2) {
            self.cr2 = r.cr2;
        }
        if flags.contains(ResumeFlags::SET_GPRS) {
            let rip = self.regs.rip;
            let rflags = self.regs.rflags;
            self.regs = r.regs;
            self.regs.rip = rip;
            self.regs.rflags = rflags;
        }
        if flags.contains(ResumeFlags::SET_RIP) {
            self.regs.rip = r.regs.rip;
        }
        if flags.contains(ResumeFlags::SET_RFLAGS) {
            self.regs.rflags = r.regs.rflags;
        }
        if flags.contains(ResumeFlags::INJECT_EVENT) {
            let e = r.event;
            return Step::End(match (e.kind, e.vector) {
                (3, 14) => Outcome::PageFault {
                    error_code: e.error_code,
                    cr2: self.cr2,
                },
                (3, 13) => Outcome::GeneralProtection,
                (3, 8) => Outcome::DoubleFault,
                _ => Outcome::Failed(format!("unexpected event {e:?}")),
            });
        }
        Step::Resumed(*r)
    }

    /// The hardware translation of one access, in either MMU mode.
    fn hw(&mut self, la: u64, access: Access) -> Result<u64, HwFault> {
        if !self.nested() {
            let mut a = crate::hw::HwAccess::from(access);
            a.ac = self.regs.rflags & RFLAGS_AC != 0;
            return self.sim.translate_hw(la, a);
        }
        let ctl = self.nested_ctl;
        let cpu = self.mmu.config().cpu;
        let mut mem = NestedMem {
            sim: &mut self.sim,
            fault: None,
        };
        let r = mmu_server::walk(&mut mem, &ctl, &cpu, la, access, true);
        if let Some(gpa) = mem.fault {
            return Err(HwFault::NestedFault { gpa, info: 1 << 33 });
        }
        match r {
            Ok(t) => {
                self.sim.translate_nested(t.gpa, access.write)?;
                Ok(t.gpa)
            }
            Err(WalkError::PageFault { error_code }) => Err(HwFault::PageFault(error_code)),
            Err(WalkError::NonCanonical) => Err(HwFault::GeneralProtection),
        }
    }

    /// Turns a hardware fault into an exit (or, in nested mode, a #PF the
    /// guest takes directly).
    fn fault(&mut self, f: HwFault, la: u64, insn: Option<&[u8]>) -> Step {
        match f {
            HwFault::GeneralProtection => Step::End(Outcome::GeneralProtection),
            HwFault::PageFault(ec) if self.nested() => {
                self.cr2 = la;
                Step::End(Outcome::PageFault {
                    error_code: ec,
                    cr2: la,
                })
            }
            HwFault::PageFault(ec) => {
                let rec = self.record(svm_exit::EXCP_BASE + 14, u64::from(ec), la, insn);
                self.exit(&rec)
            }
            HwFault::NestedFault { gpa, info } => {
                let rec = self.record(svm_exit::NPF, info, gpa, insn);
                self.exit(&rec)
            }
        }
    }

    /// A read or fetch (or a write that only checks the translation) of
    /// linear address `la`.
    pub fn access(&mut self, la: u64, access: Access) -> Outcome {
        for _ in 0..MAX_EXITS {
            match self.hw(la, access) {
                Ok(gpa) => return Outcome::Ok(gpa),
                Err(f) => match self.fault(f, la, None) {
                    Step::End(o) => return o,
                    Step::Resumed(_) => {}
                },
            }
        }
        Outcome::Failed(format!("access to {la:#x} keeps exiting"))
    }

    /// Fetches the instruction at `offset` of the code page, when there
    /// is one; the bytes found must be that instruction.
    fn fetch(&mut self, offset: u64) -> Option<Outcome> {
        let la = self.code? + offset;
        match self.access(la, Access::fetch(false)) {
            Outcome::Ok(gpa) => {
                let want = code::at(offset);
                let mut got = [0u8; 4];
                let ok = self.sim.read_phys(gpa, &mut got[..want.len()]).is_ok()
                    && &got[..want.len()] == want;
                (!ok).then_some(Outcome::StrayCode)
            }
            other => Some(other),
        }
    }

    /// Instruction bytes an exit carries: with decode assists, or when
    /// there is no code page to fetch them from.
    fn insn_for_exit(&self, offset: u64, user: bool) -> Option<&'static [u8]> {
        (self.decode_assists || self.code.is_none() || user).then(|| code::at(offset))
    }

    /// `mov [la], value` of `size` (4 or 8) bytes at CPL 0, or at CPL 3
    /// with `user` (then the instruction bytes always come with the exit).
    pub fn store(&mut self, la: u64, value: u64, size: u64, user: bool) -> Outcome {
        let offset = match (self.bitness(), size) {
            (64, 8) => code::STORE64,
            (16, _) => code::STORE32_16,
            (_, 4) => code::STORE32,
            _ => return Outcome::Failed(format!("no {size}-byte store in this mode")),
        };
        if !user {
            if let Some(o) = self.fetch(offset) {
                return o;
            }
        }
        let access = Access::write(user);
        self.regs.rax = value;
        self.regs.rdi = la;
        self.regs.rip = self.rip_of(offset);
        let rip = self.regs.rip;
        for _ in 0..MAX_EXITS {
            match self.hw(la, access) {
                Ok(gpa) => {
                    let bytes = value.to_le_bytes();
                    if self.sim.write_phys(gpa, &bytes[..size as usize]).is_err() {
                        return Outcome::Failed(format!("store to {gpa:#x} outside RAM"));
                    }
                    return Outcome::Stored;
                }
                Err(f) => match self.fault(f, la, self.insn_for_exit(offset, user)) {
                    Step::End(o) => return o,
                    Step::Resumed(_) if self.regs.rip != rip => {
                        let len = code::at(offset).len() as u64;
                        if self.regs.rip != rip + len {
                            return Outcome::Failed(format!(
                                "emulated store resumed at {:#x}, not {:#x}",
                                self.regs.rip,
                                rip + len
                            ));
                        }
                        return Outcome::Stored;
                    }
                    _ => {}
                },
            }
        }
        Outcome::Failed(format!("store to {la:#x} keeps exiting"))
    }

    /// Runs an intercepted instruction (CR access, INVLPG) at `offset`.
    fn intercepted(&mut self, offset: u64, exit: u64, info1: u64) -> Outcome {
        if let Some(o) = self.fetch(offset) {
            return o;
        }
        self.regs.rip = self.rip_of(offset);
        let bytes = code::at(offset);
        let mut rec = self.record(exit, info1, 0, self.insn_for_exit(offset, false));
        if self.decode_assists {
            rec.next_rip = rec.regs.rip + bytes.len() as u64;
        }
        match self.exit(&rec) {
            Step::End(o) => o,
            Step::Resumed(r)
                if ResumeFlags::from_bits_truncate(r.flags).contains(ResumeFlags::SET_RIP) =>
            {
                Outcome::Done
            }
            _ => Outcome::Failed("intercepted instruction did not complete".into()),
        }
    }

    /// `mov crN, value` (N = 0, 3, 4).
    pub fn mov_to_cr(&mut self, n: u8, value: u64) -> Outcome {
        self.regs.rax = value;
        if self.nested() {
            let old = self.nested_ctl;
            let cpu = self.mmu.config().cpu;
            let code64 = self.bitness() == 64;
            let v = if code64 { value } else { value & 0xffff_ffff };
            let r = match n {
                0 => ctl::mov_to_cr0(&mut self.sim, &old, &cpu, v, code64),
                3 => ctl::mov_to_cr3(&mut self.sim, &old, &cpu, v),
                _ => ctl::mov_to_cr4(&mut self.sim, &old, &cpu, v),
            };
            return match r {
                Ok(c) => {
                    self.nested_ctl = c;
                    Outcome::Done
                }
                Err(_) => Outcome::GeneralProtection,
            };
        }
        let info1 = if self.decode_assists { 1 << 63 } else { 0 };
        self.intercepted(
            code::MOV_TO_CR + code::cr_slot(n),
            svm_exit::CR_WRITE_BASE + u64::from(n),
            info1,
        )
    }

    /// `mov rax, crN` (N = 0, 3, 4).
    pub fn read_cr(&mut self, n: u8) -> Outcome {
        if self.nested() {
            let c = self.nested_ctl;
            return Outcome::Value(match n {
                0 => c.cr0,
                3 => c.cr3,
                _ => c.cr4,
            });
        }
        let info1 = if self.decode_assists { 1 << 63 } else { 0 };
        match self.intercepted(
            code::MOV_FROM_CR + code::cr_slot(n),
            svm_exit::CR_READ_BASE + u64::from(n),
            info1,
        ) {
            Outcome::Done => Outcome::Value(self.regs.rax),
            o => o,
        }
    }

    /// `invlpg [la]`.
    pub fn invlpg(&mut self, la: u64) -> Outcome {
        if self.nested() {
            return Outcome::Done;
        }
        self.regs.rdi = la;
        let offset = if self.bitness() == 16 {
            code::INVLPG_16
        } else {
            code::INVLPG
        };
        let asked = self
            .sim
            .paging()
            .is_some_and(|ps| ps.flags & PagingState::INTERCEPT_INVLPG != 0);
        if !self.intercept_invlpg && !asked {
            if let Some(o) = self.fetch(offset) {
                return o;
            }
            let la = if self.bitness() == 64 {
                la
            } else {
                la & 0xffff_ffff
            };
            self.sim.flush_tlb(Flush::Page(la));
            return Outcome::Done;
        }
        let info1 = if self.decode_assists { la } else { 0 };
        self.intercepted(offset, svm_exit::INVLPG, info1)
    }

    /// `wrmsr` to EFER (an MSR exit the stub routes to the mmu-server).
    pub fn write_efer(&mut self, value: u64) -> Outcome {
        if self.nested() {
            return match ctl::write_efer(&self.nested_ctl, &self.mmu.config().cpu, value) {
                Ok(c) => {
                    self.nested_ctl = c;
                    Outcome::Done
                }
                Err(_) => Outcome::GeneralProtection,
            };
        }
        self.regs.rcx = u64::from(efer::MSR);
        self.regs.rax = value & 0xffff_ffff;
        self.regs.rdx = value >> 32;
        self.intercepted(code::WRMSR, svm_exit::MSR, 1)
    }

    /// The guest's paging mode.
    pub fn mode(&self) -> PagingMode {
        self.ctl().mode()
    }
}

/// Guest memory as the hardware reads it during a nested-mode guest walk:
/// every table access goes through the nested tables.
struct NestedMem<'a> {
    sim: &'a mut Sim,
    fault: Option<u64>,
}

impl GuestMemory for NestedMem<'_> {
    fn ram_bytes(&self) -> u64 {
        self.sim.ram_bytes()
    }

    fn read_phys(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), NotRam> {
        if self.fault.is_some() {
            return Err(NotRam);
        }
        match self.sim.translate_nested(gpa, false) {
            Ok(g) => self.sim.read_phys(g, buf),
            Err(_) => {
                self.fault = Some(gpa);
                Err(NotRam)
            }
        }
    }

    fn write_phys(&mut self, gpa: u64, data: &[u8]) -> Result<(), NotRam> {
        match self.sim.translate_nested(gpa, true) {
            Ok(g) => self.sim.write_phys(g, data),
            Err(_) => {
                self.fault = Some(gpa);
                Err(NotRam)
            }
        }
    }
}
