//! The mmu-server's entry point: [`Mmu`] takes the exits the stub routes
//! to it and says what to do next ([`Action`]).

use core::fmt;

use iced_x86::Code;
use ipc_proto::{
    EventInjection, EventKind, ExitKind, ExitRecord, GuestRegs, PagingState, Resume, ResumeFlags,
    VcpuArch,
};

use crate::ctl::{self, GeneralProtection};
use crate::insn::{self, CrInsn};
use crate::nested::{NestedFormat, NestedMap};
use crate::platform::{Flush, MmuPlatform, PlatformError};
use crate::regs::{cr0, cr4, efer, CpuModel, GuestCtl, PagingMode};
use crate::shadow::{root_key, CacheError, ShadowCache, TableKind};
use crate::stats::MmuStats;
use crate::walk::{self, pf, Access, Translation, WalkError};
use ipc_proto::mmu::TableHandle;
use ipc_proto::vcpu::EXITINTINFO_VALID;

/// What an exit asks of the mmu-server, decoded from either extension's record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MmuExit {
    /// #PF with its error code and address.
    PageFault { error_code: u64, address: u64 },
    /// A CR access; `op` when the exit names the instruction and register
    /// (SVM decode assists, always on VMX), else it is decoded.
    Cr {
        write: bool,
        cr: u8,
        op: Option<CrOp>,
    },
    /// INVLPG; the address when the exit carries it.
    Invlpg { address: Option<u64> },
    /// RDMSR or WRMSR of EFER.
    Efer { write: bool },
    /// Nested page fault or EPT violation.
    Npf { gpa: u64, write: bool },
    /// Anything else.
    Other,
}

/// A CR access as the exit describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CrOp {
    /// MOV to or from CR `cr` with the register numbered `gpr`.
    Mov(u64),
    /// CLTS (VMX).
    Clts,
    /// LMSW with this source value (VMX gives the value, not the operand).
    Lmsw(u16),
}

impl MmuExit {
    /// What `rec` asks of the mmu-server: [`ExitKind`] says which exit it
    /// is, the arch's fields give the operands (AMD APM vol. 2, appendix C
    /// and 15.33 for decode assists; Intel SDM vol. 3C, 28.2.1).
    fn decode(rec: &ExitRecord, decode_assists: bool) -> Self {
        let vmx = VcpuArch::from_raw(rec.arch) == Some(VcpuArch::Vmx);
        let (info1, info2) = (rec.exit_info1, rec.exit_info2);
        // SVM gives decoded operands only with decode assists, and only
        // for an instruction it stopped at.
        let assisted = decode_assists && rec.next_rip != 0;
        match ExitKind::of(rec) {
            // SVM: EXITINFO1 = error code, EXITINFO2 = address. VMX: the
            // error code in EXITINFO2 bits 63:32, the address is the
            // qualification.
            ExitKind::Exception { vector: Some(14) } => match vmx {
                true => Self::PageFault {
                    error_code: info2 >> 32,
                    address: info1,
                },
                false => Self::PageFault {
                    error_code: info1,
                    address: info2,
                },
            },
            ExitKind::CrAccess { cr, write } => {
                let op = if vmx {
                    // Bits 5:4 type (0 MOV to CR, 1 MOV from CR, 2 CLTS, 3
                    // LMSW), 11:8 GPR, 31:16 LMSW source data.
                    Some(match (info1 >> 4) & 3 {
                        0 | 1 => CrOp::Mov((info1 >> 8) & 0xf),
                        2 => CrOp::Clts,
                        _ => CrOp::Lmsw((info1 >> 16) as u16),
                    })
                } else {
                    // A MOV with its GPR in bits 3:0 when bit 63 is set.
                    (assisted && info1 >> 63 == 1).then_some(CrOp::Mov(info1 & 0xf))
                };
                Self::Cr { write, cr, op }
            }
            ExitKind::Invlpg => Self::Invlpg {
                address: (vmx || assisted).then_some(info1),
            },
            ExitKind::Msr { write } if rec.regs.rcx as u32 == efer::MSR => Self::Efer { write },
            // Bit 1 is W in both SVM's #PF-style error code and VMX's
            // qualification.
            ExitKind::NestedPageFault => Self::Npf {
                gpa: info2,
                write: info1 & u64::from(pf::W) != 0,
            },
            _ => Self::Other,
        }
    }
}

/// Which MMU the server runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmuMode {
    /// Shadow paging with the cache: shadow tables survive CR3 loads.
    Shadow,
    /// Shadow paging as in 2006: every CR3 load drops every shadow table.
    Baseline,
    /// Nested paging (NPT, EPT): one guest-physical map, no shadowing.
    Nested,
}

/// How the mmu-server is set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmuConfig {
    /// The MMU mode.
    pub mode: MmuMode,
    /// The entry format of the nested tables (nested mode).
    pub nested: NestedFormat,
    /// Most shadow tables alive at once (the cache's memory budget, 4 KiB
    /// each in the stub and about 4 KiB each in the server).
    pub max_tables: u32,
    /// The CPU the guest sees.
    pub cpu: CpuModel,
    /// The CPU has SVM decode assists: CR exits carry the GPR in
    /// EXITINFO1 (bit 63 set) and INVLPG exits the address.
    pub decode_assists: bool,
    /// Outside 64-bit mode, take DS/ES/SS bases as zero when computing an
    /// INVLPG operand (the exit record carries only CS).
    pub flat_segments: bool,
    /// Copy guest G bits into shadow leaves and run the hardware with the
    /// guest's CR4.PGE, so global translations survive CR3 loads.
    pub global_pages: bool,
    /// Emulated writes to a page-table frame, with no walk through it in
    /// between, after which its shadows are dropped.
    pub flood_threshold: u32,
    /// PTE prefetch (shadow mode; the baseline never prefetches, as in
    /// 2006): a fault that fills a shadow leaf also fills the
    /// not-present entries of the aligned group of this many (a power of
    /// two, at most 512) whose guest entries are present, accessed and
    /// valid — writable only if the guest entry is writable and dirty.
    /// 0 or 1 turns it off.
    pub prefetch: usize,
    /// Unsync leaf page tables (shadow mode; see the README): a write to a
    /// protected guest PT makes it writable instead of being emulated,
    /// and its shadow is resynced at the next CR3 load, flushing CR0/CR4
    /// write or INVLPG of an address it maps. The platform must make the
    /// guest's INVLPG exit while the paging state asks for it
    /// (`PagingState::INTERCEPT_INVLPG`).
    pub unsync: bool,
    /// Unsync: the protected write to a leaf table since the guest's last
    /// flush (CR3 load, flushing CR0/CR4 write) that makes it unsync; the
    /// earlier ones are emulated. 1: the first write.
    pub unsync_after: u32,
}

impl Default for MmuConfig {
    fn default() -> Self {
        Self {
            mode: MmuMode::Shadow,
            nested: NestedFormat::Npt,
            max_tables: 1024,
            cpu: CpuModel::default(),
            decode_assists: false,
            flat_segments: true,
            global_pages: true,
            flood_threshold: 3,
            prefetch: 16,
            unsync: true,
            unsync_after: 4,
        }
    }
}

/// Why the mmu-server cannot go on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The exit record comes from another virtualization extension.
    UnsupportedArch(u32),
    /// An exit the mmu-server does not handle.
    NotAnMmuExit(u64),
    /// An exit that should not be intercepted in the current MMU mode.
    NotInThisMode(u64),
    /// The platform refused a request.
    Platform(PlatformError),
    /// The budget does not hold one walk's tables.
    BudgetTooSmall,
    /// The shadow tables disagree with the guest walk.
    Inconsistent,
    /// The hardware reported a reserved bit in a shadow entry.
    ShadowReservedBit {
        /// Faulting address.
        address: u64,
    },
    /// The instruction at RIP could not be read or decoded.
    Undecodable {
        /// Guest RIP.
        rip: u64,
    },
    /// The decoded instruction is not the one the exit says.
    ExitMismatch {
        /// Guest RIP.
        rip: u64,
        /// What was decoded.
        code: Code,
    },
    /// An instruction the mmu-server does not emulate wrote a page table
    /// that its own translation goes through.
    UnsupportedPageTableWrite {
        /// Guest RIP.
        rip: u64,
        /// The instruction, or `None` for the CPU's own write delivering
        /// an event.
        code: Option<Code>,
    },
    /// An operand's segment base is not known (see `flat_segments`).
    UnknownSegmentBase {
        /// Guest RIP.
        rip: u64,
    },
    /// A control register the mmu-server does not own (CR8, DR…).
    UnsupportedCr(u8),
    /// The same fault keeps coming back with nothing to fix.
    SpuriousFaultLoop {
        /// Faulting address.
        address: u64,
    },
    /// A #PF while delivering a #DF: the guest shuts down.
    TripleFault,
    /// The initial paging state is invalid (PDPTEs with reserved bits).
    BadInitialState,
}

impl From<CacheError> for Failure {
    fn from(e: CacheError) -> Self {
        match e {
            CacheError::Platform(p) => Self::Platform(p),
            CacheError::BudgetTooSmall => Self::BudgetTooSmall,
            CacheError::BadHandle => Self::Platform(PlatformError::UnknownTable),
            CacheError::Inconsistent => Self::Inconsistent,
        }
    }
}

impl From<PlatformError> for Failure {
    fn from(e: PlatformError) -> Self {
        Self::Platform(e)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnsupportedArch(a) => write!(f, "exit record of unknown arch {a}: only SVM and VMX are decoded"),
            Self::NotAnMmuExit(c) => write!(f, "exit code {c:#x} is not an mmu-server exit"),
            Self::NotInThisMode(c) => {
                write!(f, "exit code {c:#x} should not be intercepted in this MMU mode")
            }
            Self::Platform(e) => write!(f, "{e}"),
            Self::BudgetTooSmall => {
                f.write_str("the shadow-table budget cannot hold one walk: raise max_tables")
            }
            Self::Inconsistent => f.write_str("shadow tables disagree with the guest walk (bug)"),
            Self::ShadowReservedBit { address } => write!(
                f,
                "the hardware found a reserved bit in a shadow entry for {address:#x} (bug)"
            ),
            Self::Undecodable { rip } => write!(f, "cannot read or decode the instruction at {rip:#x}"),
            Self::ExitMismatch { rip, code } => write!(
                f,
                "the instruction at {rip:#x} ({code:?}) does not match the exit"
            ),
            Self::UnsupportedPageTableWrite { rip, code: Some(code) } => write!(
                f,
                "{code:?} at {rip:#x} writes a page table used to translate its own operand; only MOV, XCHG, CMPXCHG, AND/OR/XOR and BTS/BTR/BTC are emulated"
            ),
            Self::UnsupportedPageTableWrite { rip, code: None } => write!(
                f,
                "delivering an event at {rip:#x} writes a page table used to translate the event's own stack"
            ),
            Self::UnknownSegmentBase { rip } => write!(
                f,
                "the operand of the instruction at {rip:#x} uses a segment whose base the exit does not carry"
            ),
            Self::UnsupportedCr(n) => write!(f, "CR{n} is not virtualized by the mmu-server"),
            Self::SpuriousFaultLoop { address } => {
                write!(f, "page fault at {address:#x} repeats with nothing to fix")
            }
            Self::TripleFault => f.write_str("page fault while delivering a double fault: triple fault"),
            Self::BadInitialState => f.write_str("initial PDPTEs have reserved bits set"),
        }
    }
}

/// What to do after an exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Re-enter the guest with this resume: a retry when it changes
    /// nothing, RIP past an emulated instruction, an injected exception
    /// (#PF with `SET_CR2`), and `SET_PAGING` whenever the hardware
    /// paging state changed.
    Resume(Resume),
    /// The guest accessed guest-physical memory outside RAM: the
    /// vmm-server emulates the access (the instruction is not done).
    Mmio {
        /// Guest-physical address.
        gpa: u64,
        /// Linear address, when known (shadow mode).
        linear: Option<u64>,
        /// The access was a write.
        write: bool,
    },
    /// The mmu-server cannot go on.
    Fail(Failure),
}

/// A WRMSR to EFER failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EferError {
    /// The guest gets #GP(0).
    GeneralProtection,
    /// The mmu-server cannot go on.
    Fail(Failure),
}

/// The mmu-server state of one VCPU's VM.
pub struct Mmu {
    cfg: MmuConfig,
    ctl: GuestCtl,
    cache: ShadowCache,
    nested: Option<NestedMap>,
    loaded: Option<PagingState>,
    pending: Option<PagingState>,
    /// The pending load only switches roots for a guest CR3 load: it may
    /// keep global translations (`ResumeFlags::FLUSH_NON_GLOBAL`).
    pending_non_global: bool,
    spurious: (u64, u32),
}

fn exception(vector: u8, error_code: Option<u32>) -> EventInjection {
    EventInjection {
        vector,
        kind: EventKind::Exception as u8,
        has_error_code: u8::from(error_code.is_some()),
        reserved: 0,
        error_code: error_code.unwrap_or(0),
    }
}

impl Mmu {
    /// A server for a VM with `ram_bytes` of RAM.
    pub fn new(cfg: MmuConfig, ram_bytes: u64) -> Self {
        let mut cache = ShadowCache::new(
            cfg.max_tables,
            ram_bytes,
            cfg.cpu,
            cfg.global_pages,
            cfg.flood_threshold,
        );
        if cfg.mode == MmuMode::Shadow {
            cache.set_prefetch(cfg.prefetch);
            cache.set_unsync(cfg.unsync, cfg.unsync_after);
        }
        Self {
            cache,
            cfg,
            ctl: GuestCtl::RESET,
            nested: None,
            loaded: None,
            pending: None,
            pending_non_global: false,
            spurious: (0, 0),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &MmuConfig {
        &self.cfg
    }

    /// The guest's paging controls as the mmu-server holds them.
    pub fn ctl(&self) -> &GuestCtl {
        &self.ctl
    }

    /// The figures.
    pub fn stats(&self) -> MmuStats {
        let mut s = self.cache.stats;
        if let Some(n) = &self.nested {
            s.tables_live = n.tables() as u64;
        }
        s
    }

    /// The shadow cache (for tests and experiments).
    pub fn cache(&self) -> &ShadowCache {
        &self.cache
    }

    fn shadowing(&self) -> bool {
        self.cfg.mode != MmuMode::Nested
    }

    /// Starts (or restarts) the MMU with the guest's initial paging state
    /// (LMA and the PDPTEs are recomputed from it and guest memory).
    pub fn start<P: MmuPlatform + ?Sized>(
        &mut self,
        p: &mut P,
        ctl: GuestCtl,
    ) -> Result<(), Failure> {
        let mut c = ctl;
        c.efer &= !efer::LMA;
        if c.cr0 & cr0::PG != 0 && c.efer & efer::LME != 0 {
            c.efer |= efer::LMA;
        }
        c.pdptes = if c.mode() == PagingMode::Pae {
            ctl::load_pdptes(p, c.cr3, &self.cfg.cpu).map_err(|_| Failure::BadInitialState)?
        } else {
            [0; 4]
        };
        self.ctl = c;
        if !self.shadowing() {
            let ram = p.guest_ram_bytes();
            let map = NestedMap::build(p, ram, self.cfg.nested, &mut self.cache.stats)?;
            p.load_nested(map.root);
            self.nested = Some(map);
            return Ok(());
        }
        self.cache.zap_all(p)?;
        self.cache.switch_root(p, &self.ctl)?;
        self.cache.flush_installs(p)?;
        self.load_hw(true, false);
        self.cache.take_root_changed();
        self.cache.finish(p)?;
        Ok(())
    }

    /// The root of the nested tables, once [`Self::start`] built them
    /// (nested mode).
    pub fn nested_root(&self) -> Option<TableHandle> {
        self.nested.as_ref().map(|n| n.root)
    }

    /// The hardware paging state for the current root and guest controls:
    /// the guest's CR0 with PG and WP forced on (PE stays the guest's:
    /// "paged real mode"), its CR4 with PAE forced on, PSE off and PGE
    /// kept only with global pages, its EFER with LME/LMA exactly in
    /// long mode.
    pub fn paging_state(&self) -> Option<PagingState> {
        let root = self.cache.root()?;
        let c = &self.ctl;
        let long = c.mode() == PagingMode::Long;
        let pge = if c.pge() && self.cfg.global_pages {
            cr4::PGE
        } else {
            0
        };
        Some(PagingState {
            cr0: (c.cr0 | cr0::PG | cr0::WP | cr0::ET) & 0xffff_ffff,
            cr4: (c.cr4 & !(cr4::PSE | cr4::PGE)) | cr4::PAE | pge,
            efer: (c.efer & !(efer::LME | efer::LMA))
                | if long { efer::LME | efer::LMA } else { 0 },
            root,
            flags: if self.cache.has_unsync() {
                PagingState::INTERCEPT_INVLPG
            } else {
                0
            },
        })
    }

    /// Takes the hardware paging state that changed since the last resume
    /// the mmu-server returned: whoever resumes the guest next must pass
    /// it with `SET_PAGING` (after [`Self::start`], or after an
    /// [`Action::Mmio`] or [`Self::write_efer`]).
    pub fn take_paging(&mut self) -> Option<PagingState> {
        self.take_paging_flags().map(|(ps, _)| ps)
    }

    /// [`Self::take_paging`] with the resume flags to pass it with:
    /// `SET_PAGING`, and `FLUSH_NON_GLOBAL` when the load only switches
    /// roots for the guest's MOV to CR3 (global translations survive it,
    /// as on the real CPU; a CR0, CR4 or EFER change flushes everything).
    pub fn take_paging_flags(&mut self) -> Option<(PagingState, ResumeFlags)> {
        let non_global = core::mem::take(&mut self.pending_non_global);
        let ps = self.pending.take()?;
        let flags = if non_global && self.cfg.global_pages {
            ResumeFlags::SET_PAGING | ResumeFlags::FLUSH_NON_GLOBAL
        } else {
            ResumeFlags::SET_PAGING
        };
        Some((ps, flags))
    }

    /// Queues the hardware paging state for the next resume; `always`
    /// reloads even an unchanged state (a MOV to CR3 flushes the TLB and
    /// reloads PAE PDPTEs). `non_global`: the load is for a guest CR3 load
    /// alone; a load queued for any other reason before the resume makes
    /// it a full flush.
    fn load_hw(&mut self, always: bool, non_global: bool) {
        if let Some(ps) = self.paging_state() {
            if always || self.loaded != Some(ps) {
                self.pending_non_global =
                    non_global && (self.pending.is_none() || self.pending_non_global);
                self.pending = Some(ps);
                self.loaded = Some(ps);
            }
        }
    }

    /// Ends an operation: a lost root is rebuilt, a changed root reloaded,
    /// installs and the TLB flush sent.
    fn finish<P: MmuPlatform + ?Sized>(&mut self, p: &mut P) -> Result<(), Failure> {
        if self.shadowing() {
            let mut reload = self.cache.take_root_changed();
            if self.cache.root().is_none() {
                self.cache.switch_root(p, &self.ctl)?;
                reload = true;
            }
            if reload {
                self.cache.flush_installs(p)?;
                self.load_hw(true, false);
                self.cache.take_root_changed();
            } else {
                // INVLPG interception follows whether any table is unsync.
                self.load_hw(false, false);
            }
        }
        self.cache.finish(p)?;
        Ok(())
    }

    /// Handles one exit the stub routed to the mmu-server.
    pub fn handle_exit<P: MmuPlatform + ?Sized>(&mut self, p: &mut P, rec: &ExitRecord) -> Action {
        let action = self.dispatch(p, rec);
        let action = match action {
            Ok(a) => a,
            Err(f) => return Action::Fail(f),
        };
        if let Err(f) = self.finish(p) {
            return Action::Fail(f);
        }
        match action {
            Action::Resume(mut r) => {
                if let Some((ps, flags)) = self.take_paging_flags() {
                    r.flags |= flags.bits();
                    r.paging = ps;
                }
                Action::Resume(r)
            }
            other => other,
        }
    }

    fn dispatch<P: MmuPlatform + ?Sized>(
        &mut self,
        p: &mut P,
        rec: &ExitRecord,
    ) -> Result<Action, Failure> {
        if VcpuArch::from_raw(rec.arch).is_none() {
            return Err(Failure::UnsupportedArch(rec.arch));
        }
        let exit = MmuExit::decode(rec, self.cfg.decode_assists);
        let code = rec.exit_code;
        if !self.shadowing() {
            return match exit {
                MmuExit::Npf { gpa, write } => self.nested_fault(p, rec, gpa, write),
                _ => Err(Failure::NotInThisMode(code)),
            };
        }
        match exit {
            MmuExit::PageFault {
                error_code,
                address,
            } => self.page_fault(p, rec, error_code, address),
            MmuExit::Cr { write, cr, op } => self.cr_access(p, rec, write, cr, op),
            MmuExit::Invlpg { address } => self.invlpg(p, rec, address),
            MmuExit::Efer { write } => self.efer_access(p, rec, write),
            MmuExit::Npf { .. } => Err(Failure::NotInThisMode(code)),
            MmuExit::Other => Err(Failure::NotAnMmuExit(code)),
        }
    }

    /// A resume that changes nothing (the faulting instruction runs again)
    /// and re-injects the event whose delivery the exit interrupted.
    fn retry(rec: &ExitRecord) -> Resume {
        let mut r = Resume {
            abi_version: ipc_proto::ABI_VERSION,
            flags: 0,
            regs: rec.regs,
            ..Default::default()
        };
        if let Some(event) = rec.event_to_redeliver() {
            r.flags = ResumeFlags::INJECT_EVENT.bits();
            r.event = event;
        }
        r
    }

    fn bitness(&self, rec: &ExitRecord) -> u32 {
        insn::bitness(self.ctl.efer & efer::LMA != 0, &rec.cs)
    }

    /// Continue after the instruction (`len` bytes), with `regs`.
    fn advance(&self, rec: &ExitRecord, len: u64, regs: GuestRegs, flags: ResumeFlags) -> Resume {
        let bits = self.bitness(rec);
        let next = if rec.next_rip != 0 {
            rec.next_rip
        } else {
            rec.regs.rip.wrapping_add(len)
        };
        let rip = match bits {
            64 => next,
            32 => next & 0xffff_ffff,
            _ => next & 0xffff,
        };
        Resume {
            abi_version: ipc_proto::ABI_VERSION,
            flags: (flags | ResumeFlags::SET_RIP).bits(),
            regs: GuestRegs { rip, ..regs },
            ..Default::default()
        }
    }

    fn inject(rec: &ExitRecord, event: EventInjection) -> Resume {
        Resume {
            abi_version: ipc_proto::ABI_VERSION,
            flags: ResumeFlags::INJECT_EVENT.bits(),
            regs: rec.regs,
            event,
            ..Default::default()
        }
    }

    fn inject_page_fault(
        &mut self,
        rec: &ExitRecord,
        error_code: u32,
        cr2: u64,
    ) -> Result<Action, Failure> {
        self.cache.stats.guest_faults += 1;
        let info = rec.exit_int_info;
        if info & EXITINTINFO_VALID != 0 && (info >> 8) & 7 == EventKind::Exception as u64 {
            // Intel SDM vol. 3, table 6-5: #PF during #PF delivery is a #DF;
            // during #DF delivery, a shutdown.
            match info as u8 {
                14 => return Ok(Action::Resume(Self::inject(rec, exception(8, Some(0))))),
                8 => return Err(Failure::TripleFault),
                _ => {}
            }
        }
        let mut r = Self::inject(rec, exception(14, Some(error_code)));
        r.flags |= ResumeFlags::SET_CR2.bits();
        r.cr2 = cr2;
        Ok(Action::Resume(r))
    }

    fn linear(&self, la: u64) -> u64 {
        if self.ctl.mode() == PagingMode::Long {
            la
        } else {
            la & 0xffff_ffff
        }
    }

    fn page_fault<P: MmuPlatform + ?Sized>(
        &mut self,
        p: &mut P,
        rec: &ExitRecord,
        ec: u64,
        address: u64,
    ) -> Result<Action, Failure> {
        self.cache.stats.shadow_faults += 1;
        let la = self.linear(address);
        if ec & u64::from(pf::RSVD) != 0 {
            return Err(Failure::ShadowReservedBit { address: la });
        }
        let fault = Access::from_error_code(ec);
        let t = match walk::walk(p, &self.ctl, &self.cfg.cpu, la, fault, true) {
            Ok(t) => t,
            Err(WalkError::PageFault { error_code }) => {
                return self.inject_page_fault(rec, error_code, la);
            }
            Err(WalkError::NonCanonical) => {
                return Ok(Action::Resume(Self::inject(rec, exception(13, Some(0)))));
            }
        };
        if t.gpa >= p.guest_ram_bytes() {
            self.cache.stats.mmio += 1;
            return Ok(Action::Mmio {
                gpa: t.gpa,
                linear: Some(la),
                write: fault.write,
            });
        }
        let gfn = t.gpa >> 12;
        let protected_write = fault.write && self.cache.is_protected(gfn);
        if protected_write && self.cache.try_unsync(p, gfn) {
            // The write runs natively once the leaf is writable.
            self.cache.stats.wp_faults += 1;
            self.spurious = (0, 0);
            self.cache.fill(p, la, &t, fault)?;
            return Ok(Action::Resume(Self::retry(rec)));
        }
        let changed = self.cache.fill(p, la, &t, fault)?;
        if protected_write {
            self.cache.stats.wp_faults += 1;
            self.spurious = (0, 0);
            if rec.exit_int_info & EXITINTINFO_VALID != 0 {
                // The CPU itself wrote, pushing an event's frame on a stack
                // that shares a frame with a guest page table: the
                // instruction at RIP has not run, so there is nothing to
                // emulate (emulating it stored its value in the frame's
                // place and lost the event; Debian's i386 kernel then took
                // an interrupt with IF clear and deadlocked on a spinlock).
                return self.unprotect_and_retry(p, rec, la, &t, ec, None);
            }
            return self.emulate_pt_write(p, rec, la, &t, ec);
        }
        if changed {
            self.spurious = (0, 0);
        } else {
            self.cache.stats.spurious += 1;
            if self.spurious.0 == la {
                self.spurious.1 += 1;
                if self.spurious.1 >= 8 {
                    return Err(Failure::SpuriousFaultLoop { address: la });
                }
            } else {
                self.spurious = (la, 1);
            }
            p.flush_tlb(Flush::Page(la));
            self.cache.flush_installs(p)?;
            self.load_hw(true, false);
        }
        Ok(Action::Resume(Self::retry(rec)))
    }

    /// The bytes of the instruction at the exit: from the record (decode
    /// assists) or read through the guest's tables.
    fn fetch_insn<P: MmuPlatform + ?Sized>(
        &mut self,
        p: &mut P,
        rec: &ExitRecord,
    ) -> ([u8; 16], usize) {
        let mut buf = [0u8; 16];
        let n = usize::from(rec.insn_len).min(15);
        if n > 0 {
            buf[..n].copy_from_slice(&rec.insn_bytes[..n]);
            return (buf, n);
        }
        let bits = self.bitness(rec);
        let ip = if bits == 16 {
            rec.regs.rip & 0xffff
        } else {
            rec.regs.rip
        };
        let mut la = rec.cs.base.wrapping_add(ip);
        if bits != 64 {
            la &= 0xffff_ffff;
        }
        let user = rec.cpl == 3;
        let mut got = 0;
        while got < 15 {
            let Ok(t) = walk::walk(p, &self.ctl, &self.cfg.cpu, la, Access::fetch(user), false)
            else {
                break;
            };
            let take = (0x1000 - (la & 0xfff)).min(15 - got as u64) as usize;
            if p.read_phys(t.gpa, &mut buf[got..got + take]).is_err() {
                break;
            }
            got += take;
            la = self.linear(la.wrapping_add(take as u64));
        }
        (buf, got)
    }

    fn decode<P: MmuPlatform + ?Sized>(
        &mut self,
        p: &mut P,
        rec: &ExitRecord,
    ) -> Result<iced_x86::Instruction, Failure> {
        let (bytes, n) = self.fetch_insn(p, rec);
        insn::decode(&bytes[..n], self.bitness(rec), rec.regs.rip)
            .ok_or(Failure::Undecodable { rip: rec.regs.rip })
    }

    /// A write to a write-protected guest page table: emulated when the
    /// instruction is one of the usual PTE writes, else the frame's
    /// shadows are dropped and the instruction runs again natively.
    fn emulate_pt_write<P: MmuPlatform + ?Sized>(
        &mut self,
        p: &mut P,
        rec: &ExitRecord,
        la: u64,
        t: &Translation,
        ec: u64,
    ) -> Result<Action, Failure> {
        let i = self.decode(p, rec)?;
        if let Some(store) = insn::store_size(&i) {
            let size = u64::from(store.size);
            if la.is_multiple_of(size) {
                let mut old = [0u8; 8];
                if p.read_phys(t.gpa, &mut old[..size as usize]).is_err() {
                    return Err(Failure::Inconsistent);
                }
                let mut regs = rec.regs;
                let new = insn::execute_store(&i, &mut regs, u64::from_le_bytes(old));
                if let Some(v) = new {
                    if p.write_phys(t.gpa, &v.to_le_bytes()[..size as usize])
                        .is_err()
                    {
                        return Err(Failure::Inconsistent);
                    }
                    let keep = self.root_gfn();
                    self.cache.stats.emulated_writes += 1;
                    self.cache.guest_wrote(p, t.gpa, size, keep)?;
                }
                let flags = ResumeFlags::SET_GPRS | ResumeFlags::SET_RFLAGS;
                return Ok(Action::Resume(self.advance(
                    rec,
                    i.len() as u64,
                    regs,
                    flags,
                )));
            }
        }
        if let Some(action) = self.emulate_stos_pt_write(p, rec, la, t, &i)? {
            return Ok(action);
        }
        self.unprotect_and_retry(p, rec, la, t, ec, Some(i.code()))
    }

    /// Drops the shadows of the written frame so that the write (by the
    /// instruction, `code`, or by an event's delivery) runs again
    /// natively; a frame on the write's own translation path cannot be.
    fn unprotect_and_retry<P: MmuPlatform + ?Sized>(
        &mut self,
        p: &mut P,
        rec: &ExitRecord,
        la: u64,
        t: &Translation,
        ec: u64,
        code: Option<iced_x86::Code>,
    ) -> Result<Action, Failure> {
        let gfn = t.gpa >> 12;
        if t.table_frames().any(|f| f == gfn) {
            return Err(Failure::UnsupportedPageTableWrite {
                rip: rec.regs.rip,
                code,
            });
        }
        self.cache.unprotect(p, gfn)?;
        let fault = Access::write(ec & u64::from(pf::U) != 0);
        self.cache.fill(p, la, t, fault)?;
        Ok(Action::Resume(Self::retry(rec)))
    }

    /// STOS (REP or not, DF clear) into a protected page table: the
    /// elements up to the end of the faulting page are stored and the
    /// shadows told; RDI and RCX move on, and with a count left the guest
    /// resumes at the same instruction (the next page faults on its own).
    /// Linux clears its live top-level table this way (`memset` of
    /// `early_top_pgt` in `reset_early_page_tables`), a table its own
    /// translation goes through, so unprotecting the frame is no answer.
    fn emulate_stos_pt_write<P: MmuPlatform + ?Sized>(
        &mut self,
        p: &mut P,
        rec: &ExitRecord,
        la: u64,
        t: &Translation,
        i: &iced_x86::Instruction,
    ) -> Result<Option<Action>, Failure> {
        use iced_x86::{Code, OpKind};
        let size: u64 = match i.code() {
            Code::Stosb_m8_AL => 1,
            Code::Stosw_m16_AX => 2,
            Code::Stosd_m32_EAX => 4,
            Code::Stosq_m64_RAX => 8,
            _ => return Ok(None),
        };
        const DF: u64 = 1 << 10;
        let addr_mask = match i.op0_kind() {
            OpKind::MemoryESRDI => u64::MAX,
            OpKind::MemoryESEDI => 0xffff_ffff,
            _ => return Ok(None),
        };
        if rec.regs.rflags & DF != 0 || i.has_repne_prefix() || !la.is_multiple_of(size) {
            return Ok(None);
        }
        let rep = i.has_rep_prefix();
        let mut regs = rec.regs;
        let count = if rep { regs.rcx & addr_mask } else { 1 };
        let room = (4096 - (la & 0xfff)) / size;
        let n = count.min(room);
        if n == 0 {
            return Ok(None);
        }
        let value = regs.rax.to_le_bytes();
        for k in 0..n {
            if p.write_phys(t.gpa + k * size, &value[..size as usize])
                .is_err()
            {
                return Err(Failure::Inconsistent);
            }
        }
        let keep = self.root_gfn();
        self.cache.stats.emulated_writes += 1;
        self.cache.guest_wrote(p, t.gpa, n * size, keep)?;
        let rdi = regs.rdi.wrapping_add(n * size) & addr_mask;
        regs.rdi = (regs.rdi & !addr_mask) | rdi;
        let flags = ResumeFlags::SET_GPRS;
        if rep {
            let rcx = (count - n) & addr_mask;
            regs.rcx = (regs.rcx & !addr_mask) | rcx;
            if rcx != 0 {
                let mut r = Self::retry(rec);
                r.regs = regs;
                r.flags |= flags.bits();
                return Ok(Some(Action::Resume(r)));
            }
        }
        Ok(Some(Action::Resume(self.advance(
            rec,
            i.len() as u64,
            regs,
            flags,
        ))))
    }

    /// The guest frame of the current root when the root shadows one.
    fn root_gfn(&self) -> Option<u64> {
        let key = self.cache.key_of(self.cache.root()?)?;
        matches!(key.role.kind, TableKind::Guest | TableKind::Root32).then_some(key.gfn)
    }

    fn cr_access<P: MmuPlatform + ?Sized>(
        &mut self,
        p: &mut P,
        rec: &ExitRecord,
        write: bool,
        n: u8,
        given: Option<CrOp>,
    ) -> Result<Action, Failure> {
        let bits = self.bitness(rec);
        let (op, len) = match given {
            Some(CrOp::Mov(gpr)) => {
                let gpr = insn::gpr_by_number(gpr);
                let op = if write {
                    CrInsn::MovToCr { cr: n, gpr }
                } else {
                    CrInsn::MovFromCr { cr: n, gpr }
                };
                (op, 0)
            }
            Some(CrOp::Clts) => (CrInsn::Clts, 0),
            Some(CrOp::Lmsw(value)) => {
                self.cache.stats.cr_accesses += 1;
                let new = ctl::lmsw(&self.ctl, value);
                self.apply_ctl(p, new, false)?;
                return Ok(Action::Resume(self.advance(
                    rec,
                    0,
                    rec.regs,
                    ResumeFlags::empty(),
                )));
            }
            None => {
                let i = self.decode(p, rec)?;
                let mismatch = Failure::ExitMismatch {
                    rip: rec.regs.rip,
                    code: i.code(),
                };
                let op = insn::cr_insn(&i).ok_or(mismatch)?;
                let fits = match op {
                    CrInsn::MovToCr { cr, .. } => write && cr == n,
                    CrInsn::MovFromCr { cr, .. } => !write && cr == n,
                    CrInsn::Clts | CrInsn::Lmsw { .. } => write && n == 0,
                    CrInsn::Smsw { .. } => !write && n == 0,
                    CrInsn::Invlpg => false,
                };
                if !fits {
                    return Err(mismatch);
                }
                (op, i.len() as u64)
            }
        };
        self.cache.stats.cr_accesses += 1;
        let mut regs = rec.regs;
        let code64 = bits == 64;
        let new = match op {
            CrInsn::MovFromCr { cr, gpr } => {
                let v = match cr {
                    0 => self.ctl.cr0,
                    2 => rec.cr2,
                    3 => self.ctl.cr3,
                    4 => self.ctl.cr4,
                    _ => return Err(Failure::UnsupportedCr(cr)),
                };
                let v = if code64 { v } else { v & 0xffff_ffff };
                insn::write_reg(&mut regs, gpr, v).ok_or(Failure::Inconsistent)?;
                return Ok(Action::Resume(self.advance(
                    rec,
                    len,
                    regs,
                    ResumeFlags::SET_GPRS,
                )));
            }
            CrInsn::Smsw { gpr } => {
                insn::write_reg(&mut regs, gpr, self.ctl.cr0).ok_or(Failure::Inconsistent)?;
                return Ok(Action::Resume(self.advance(
                    rec,
                    len,
                    regs,
                    ResumeFlags::SET_GPRS,
                )));
            }
            CrInsn::MovToCr { cr, gpr } => {
                let v = insn::read_reg(&regs, gpr).ok_or(Failure::Inconsistent)?;
                let v = if code64 { v } else { v & 0xffff_ffff };
                let cpu = self.cfg.cpu;
                match cr {
                    0 => ctl::mov_to_cr0(p, &self.ctl, &cpu, v, code64),
                    3 => ctl::mov_to_cr3(p, &self.ctl, &cpu, v),
                    4 => ctl::mov_to_cr4(p, &self.ctl, &cpu, v),
                    _ => return Err(Failure::UnsupportedCr(cr)),
                }
            }
            CrInsn::Clts => Ok(ctl::clts(&self.ctl)),
            CrInsn::Lmsw { gpr } => {
                let v = insn::read_reg(&regs, gpr).ok_or(Failure::Inconsistent)?;
                Ok(ctl::lmsw(&self.ctl, v as u16))
            }
            CrInsn::Invlpg => return Err(Failure::Inconsistent),
        };
        match new {
            Err(GeneralProtection) => Ok(Action::Resume(Self::inject(rec, exception(13, Some(0))))),
            Ok(new) => {
                let cr3_write = matches!(op, CrInsn::MovToCr { cr: 3, .. });
                self.apply_ctl(p, new, cr3_write)?;
                Ok(Action::Resume(self.advance(
                    rec,
                    len,
                    regs,
                    ResumeFlags::empty(),
                )))
            }
        }
    }

    /// Takes new paging controls: switches the root when the root key
    /// changes (or on any CR3 load), flushes what the hardware would.
    fn apply_ctl<P: MmuPlatform + ?Sized>(
        &mut self,
        p: &mut P,
        new: GuestCtl,
        cr3_load: bool,
    ) -> Result<(), Failure> {
        let old = self.ctl;
        self.ctl = new;
        if !self.shadowing() {
            return Ok(());
        }
        let cpu = self.cfg.cpu;
        let rebuild =
            cr3_load || root_key(&old, &cpu) != root_key(&new, &cpu) || old.pdptes != new.pdptes;
        let flush_all = (old.cr4 ^ new.cr4) & (cr4::PGE | cr4::PAE | cr4::PSE) != 0
            || (old.cr0 ^ new.cr0) & (cr0::PG | cr0::WP) != 0
            || (old.efer ^ new.efer) & (efer::NXE | efer::LMA) != 0;
        if rebuild || flush_all {
            // The guest flushes its TLB: no stale translation may stay.
            self.cache.sync_all(p);
        }
        if rebuild && self.cfg.mode == MmuMode::Baseline {
            self.cache.zap_all(p)?;
        }
        if rebuild || self.cache.root().is_none() {
            self.cache.switch_root(p, &new)?;
        }
        if flush_all {
            self.cache.request_flush();
        }
        self.cache.flush_installs(p)?;
        // A MOV to CR3 alone keeps global translations, as on the CPU.
        self.load_hw(rebuild, cr3_load && !flush_all);
        self.cache.take_root_changed();
        Ok(())
    }

    fn invlpg<P: MmuPlatform + ?Sized>(
        &mut self,
        p: &mut P,
        rec: &ExitRecord,
        address: Option<u64>,
    ) -> Result<Action, Failure> {
        let (la, len) = if let Some(la) = address {
            (la, 0)
        } else {
            let i = self.decode(p, rec)?;
            if insn::cr_insn(&i) != Some(CrInsn::Invlpg) {
                return Err(Failure::ExitMismatch {
                    rip: rec.regs.rip,
                    code: i.code(),
                });
            }
            let la = insn::memory_address(
                &i,
                &rec.regs,
                &rec.cs,
                self.bitness(rec),
                self.cfg.flat_segments,
            )
            .ok_or(Failure::UnknownSegmentBase { rip: rec.regs.rip })?;
            (la, i.len() as u64)
        };
        self.cache.stats.invlpg += 1;
        let la = self.linear(la);
        self.cache.invlpg(p);
        p.flush_tlb(Flush::Page(la));
        Ok(Action::Resume(self.advance(
            rec,
            len,
            rec.regs,
            ResumeFlags::empty(),
        )))
    }

    fn nested_fault<P: MmuPlatform + ?Sized>(
        &mut self,
        p: &mut P,
        rec: &ExitRecord,
        gpa: u64,
        write: bool,
    ) -> Result<Action, Failure> {
        self.cache.stats.npf += 1;
        if gpa < p.guest_ram_bytes() {
            // Guest RAM is always mapped: only a stale TLB can fault here.
            self.cache.stats.spurious += 1;
            if self.spurious.0 == gpa {
                self.spurious.1 += 1;
                if self.spurious.1 >= 8 {
                    return Err(Failure::SpuriousFaultLoop { address: gpa });
                }
            } else {
                self.spurious = (gpa, 1);
            }
            p.flush_tlb(Flush::All);
            return Ok(Action::Resume(Self::retry(rec)));
        }
        self.cache.stats.mmio += 1;
        Ok(Action::Mmio {
            gpa,
            linear: None,
            write,
        })
    }

    /// RDMSR/WRMSR of EFER (ECX = 0xC000_0080).
    fn efer_access<P: MmuPlatform + ?Sized>(
        &mut self,
        p: &mut P,
        rec: &ExitRecord,
        write: bool,
    ) -> Result<Action, Failure> {
        let len = if rec.next_rip != 0 {
            0
        } else {
            let i = self.decode(p, rec)?;
            let ok = match i.code() {
                Code::Wrmsr => write,
                Code::Rdmsr => !write,
                _ => false,
            };
            if !ok {
                return Err(Failure::ExitMismatch {
                    rip: rec.regs.rip,
                    code: i.code(),
                });
            }
            i.len() as u64
        };
        self.cache.stats.cr_accesses += 1;
        let mut regs = rec.regs;
        if write {
            let value = (rec.regs.rdx << 32) | (rec.regs.rax & 0xffff_ffff);
            let Ok(new) = ctl::write_efer(&self.ctl, &self.cfg.cpu, value) else {
                return Ok(Action::Resume(Self::inject(rec, exception(13, Some(0)))));
            };
            self.apply_ctl(p, new, false)?;
            Ok(Action::Resume(self.advance(
                rec,
                len,
                regs,
                ResumeFlags::empty(),
            )))
        } else {
            regs.rax = self.ctl.efer & 0xffff_ffff;
            regs.rdx = self.ctl.efer >> 32;
            Ok(Action::Resume(self.advance(
                rec,
                len,
                regs,
                ResumeFlags::SET_GPRS,
            )))
        }
    }

    /// WRMSR to EFER, for a caller that decoded the exit itself (the
    /// vmm-server, if it takes MSR exits).
    pub fn write_efer<P: MmuPlatform + ?Sized>(
        &mut self,
        p: &mut P,
        value: u64,
    ) -> Result<(), EferError> {
        let new = ctl::write_efer(&self.ctl, &self.cfg.cpu, value)
            .map_err(|_| EferError::GeneralProtection)?;
        self.apply_ctl(p, new, false).map_err(EferError::Fail)?;
        self.finish(p).map_err(EferError::Fail)
    }

    /// RDMSR of EFER: the guest's value.
    pub fn read_efer(&self) -> u64 {
        self.ctl.efer
    }

    /// Translates a guest linear address as the hardware would (setting
    /// A/D), for an instruction emulator that needs guest memory.
    pub fn translate<P: MmuPlatform + ?Sized>(
        &mut self,
        p: &mut P,
        la: u64,
        access: Access,
    ) -> Result<Translation, WalkError> {
        walk::walk(p, &self.ctl, &self.cfg.cpu, la, access, true)
    }

    /// Someone other than the guest's CPU (a device model's DMA, the
    /// vmm-server's emulator) wrote `len` bytes of guest memory at `gpa`:
    /// keeps the shadows of a page table there coherent.
    pub fn notify_guest_write<P: MmuPlatform + ?Sized>(
        &mut self,
        p: &mut P,
        gpa: u64,
        len: u64,
    ) -> Result<(), Failure> {
        if !self.shadowing() {
            return Ok(());
        }
        let keep = self.root_gfn();
        let mut a = gpa;
        let end = gpa.saturating_add(len);
        while a < end {
            let chunk = (0x1000 - (a & 0xfff)).min(end - a);
            self.cache.guest_wrote(p, a, chunk, keep)?;
            a += chunk;
        }
        self.finish(p)
    }
}
