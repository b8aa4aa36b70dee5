//! The server loop: start the MMU from the boot information, name the
//! first root, then answer the exits the stub routes to this server, for
//! ever.
//!
//! The loop sees the stub only through [`MmuPlatform`] and [`MmuStub`], so
//! the same code runs as the ring-3 task (`src/ring3.rs`: system calls and
//! the VCPU page), and can run in `sim` or under seL4 with their own
//! platform. A variant of the server (the attack campaign's hostile one)
//! adds its own steps through [`Hooks`].

use core::fmt;

use ipc_proto::exit::{svm_exit, vmx_exit};
use ipc_proto::manifest;
use ipc_proto::{
    ErrorCode, ExitKind, ExitRecord, GuestControl, PagingState, Resume, ResumeFlags, VcpuArch,
    ABI_VERSION,
};
use stub_abi::layout::BootInfo;

use crate::mmu::{Action, Failure, Mmu, MmuConfig, MmuMode};
use crate::nested::NestedFormat;
use crate::platform::MmuPlatform;
use crate::regs::{cr4, CpuModel, GuestCtl};
use crate::stats::MmuStats;

/// What the server hands the stub after an exit.
// One at a time, on the stack: the size difference does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `VcpuRun`: resume the guest.
    Run(Resume),
    /// `VcpuForward`: the exit was an access to device memory; the
    /// vmm-server gets `exit` (rewritten as the nested page fault or EPT
    /// violation it emulates) and resumes the guest itself, with this
    /// resume's paging.
    Forward {
        /// The exit for the vmm-server.
        exit: ExitRecord,
        /// The paging state to pass on.
        resume: Resume,
    },
}

impl Reply {
    /// The resume the reply carries.
    pub fn resume_mut(&mut self) -> &mut Resume {
        match self {
            Self::Run(r) | Self::Forward { resume: r, .. } => r,
        }
    }
}

/// The stub's calls the loop makes, besides [`MmuPlatform`]'s.
pub trait MmuStub {
    /// Publishes what the stub shows of this server (the guest's own
    /// control registers, the statistics), hands the stub `reply` and
    /// returns the next exit routed to this server.
    fn reply(
        &mut self,
        reply: &Reply,
        control: &GuestControl,
        stats: &MmuStats,
    ) -> Result<ExitRecord, ErrorCode>;

    /// A notification exit brought `word`: for each guest-writes channel
    /// whose bit it has (`ipc_proto::guest_writes`), reads and clears the
    /// frames its writer recorded, calling `frame` with each guest frame
    /// number; returns whether a page overflowed (all guest RAM counts as
    /// written). The default: no such channels.
    fn take_guest_writes(&mut self, word: u32, frame: &mut dyn FnMut(u64)) -> bool {
        let _ = (word, frame);
        false
    }

    /// The guest's control registers the stub kept from this server's last
    /// instance (it restarted after a fault), or `None` at the first start.
    /// Untrusted: [`restored_ctl`] checks them before the MMU uses them.
    fn restored_control(&mut self) -> Option<GuestControl> {
        None
    }
}

/// The paging state a restarted server goes on from: `c`, the guest's
/// control registers its last instance published (shadow paging), checked
/// as a `MOV CR`/`WRMSR` of the guest would be: only bits the MMU
/// virtualizes, paging only with protection, long mode only with PAE, LMA
/// only as LME and PG make it.
pub fn restored_ctl(c: &GuestControl, cfg: &MmuConfig) -> Result<GuestCtl, Failure> {
    use crate::regs::{cr0, efer};
    let bad = c.cr0 & !cr0::DEFINED != 0
        || c.cr4 & !cfg.cpu.cr4_supported != 0
        || c.efer & !cfg.cpu.efer_supported != 0
        || (c.cr0 & cr0::PG != 0 && c.cr0 & cr0::PE == 0)
        || (c.cr0 & cr0::PG != 0 && c.efer & efer::LME != 0 && c.cr4 & cr4::PAE == 0)
        || (c.efer & efer::LMA != 0) != (c.cr0 & cr0::PG != 0 && c.efer & efer::LME != 0);
    if bad {
        return Err(Failure::BadInitialState);
    }
    Ok(GuestCtl {
        cr0: c.cr0,
        cr3: c.cr3,
        cr4: c.cr4,
        efer: c.efer,
        pdptes: [0; 4],
    })
}

/// What a variant of this server adds to its loop: the attack campaign's
/// hostile mmu-server (`attack/`) runs its attempts from these; the
/// mmu-server itself adds nothing ([`Plain`]).
pub trait Hooks {
    /// After the boot information, before the MMU starts; `shadow`: the
    /// guest runs on shadow tables.
    fn start(&mut self, _boot: &BootInfo, _shadow: bool) {}
    /// Each exit the stub hands over, before the MMU handles it (`first`:
    /// the paging state of the first resume).
    fn exit(&mut self, _first: &PagingState, exit: ExitRecord) -> ExitRecord {
        exit
    }
    /// Each resume before it goes to the stub.
    fn resume(&mut self, _resume: &mut Resume) {}
}

/// No additions: the mmu-server as it is.
pub struct Plain;

impl Hooks for Plain {}

/// Why the loop ended; the caller says it and fails the VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// The stub speaks another ABI version.
    AbiVersion(u32),
    /// The MMU could not start.
    Start(Failure),
    /// Neither a shadow nor a nested root after start.
    NoRoot,
    /// Restarted, with guest control registers in the VCPU page that no
    /// guest could have set ([`restored_ctl`]).
    BadRestore(GuestControl),
    /// The stub refused a reply.
    Refused(ErrorCode),
    /// The MMU could not handle an exit.
    Exit {
        /// Why.
        failure: Failure,
        /// The exit's raw code.
        code: u64,
        /// The guest's RIP at the exit.
        rip: u64,
    },
}

impl fmt::Display for Stopped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AbiVersion(v) => write!(
                f,
                "the stub speaks ABI version {v}, this server was built for {ABI_VERSION}"
            ),
            Self::Start(why) => why.fmt(f),
            Self::NoRoot => f.write_str("no shadow or nested root after start"),
            Self::BadRestore(c) => write!(
                f,
                "restarted with guest registers no guest can set (cr0={:#x} cr3={:#x} cr4={:#x} efer={:#x})",
                c.cr0, c.cr3, c.cr4, c.efer
            ),
            Self::Refused(e) => write!(f, "the stub refused the resume: {}", e.describe()),
            Self::Exit { failure, code, rip } => {
                write!(f, "{failure} (exit code {code:#x}, rip={rip:#x})")
            }
        }
    }
}

/// The configuration the boot information asks for. `decode_assists`:
/// the CPU's SVM decode assists; `extra_cr4`: CR4 bits the guest may set
/// beyond [`cr4::SUPPORTED`] (OSXSAVE where the vmm-server's CPUID offers
/// XSAVE).
pub fn config(boot: &BootInfo, decode_assists: bool, extra_cr4: u64) -> MmuConfig {
    let mode = match boot.mmu_mode {
        m if m == manifest::MmuMode::ShadowBaseline as u64 => MmuMode::Baseline,
        m if m == manifest::MmuMode::Shadow as u64 => MmuMode::Shadow,
        _ => MmuMode::Nested,
    };
    let nested = if boot.arch == VcpuArch::Vmx as u32 {
        NestedFormat::Ept {
            large_pages: boot.nested_large_pages != 0,
        }
    } else {
        NestedFormat::Npt
    };
    // An AMD CPU walking a nested-paging guest's tables reads its PAE
    // PDPTEs on each walk (no PDPTE registers); shadow paging and VMX
    // keep the registers (see `CpuModel::pdptes_on_walk`).
    let cpu = CpuModel {
        pdptes_on_walk: mode == MmuMode::Nested && nested == NestedFormat::Npt,
        cr4_supported: cr4::SUPPORTED | extra_cr4,
        ..CpuModel::default()
    };
    // Built with SPLITVISOR_MMU_UNSYNC=0 every write to a protected page
    // table is emulated, as before unsync; with =N the Nth write between
    // flushes makes a leaf table unsync (before/after figures from one
    // tree).
    let d = MmuConfig::default();
    let (unsync, unsync_after) = match option_env!("SPLITVISOR_MMU_UNSYNC") {
        Some(v) => match v.parse::<u32>() {
            Ok(0) => (false, d.unsync_after),
            Ok(n) => (true, n),
            Err(_) => (d.unsync, d.unsync_after),
        },
        None => (d.unsync, d.unsync_after),
    };
    MmuConfig {
        decode_assists,
        mode,
        nested,
        cpu,
        unsync,
        unsync_after,
        ..d
    }
}

/// Starts the MMU from the boot information and runs the server until the
/// stub refuses a reply or the MMU fails.
pub fn run<P: MmuPlatform + MmuStub + ?Sized>(
    platform: &mut P,
    boot: &BootInfo,
    cfg: MmuConfig,
    hooks: &mut dyn Hooks,
) -> Stopped {
    if boot.abi_version != ABI_VERSION {
        return Stopped::AbiVersion(boot.abi_version);
    }
    hooks.start(boot, cfg.mode != MmuMode::Nested);
    let restored = platform
        .restored_control()
        .filter(|_| cfg.mode != MmuMode::Nested);
    let ctl = match restored {
        None => GuestCtl {
            cr0: boot.guest_cr0,
            ..GuestCtl::RESET
        },
        Some(c) => match restored_ctl(&c, &cfg) {
            Ok(ctl) => ctl,
            Err(_) => return Stopped::BadRestore(c),
        },
    };
    let mut mmu = Mmu::new(cfg, boot.guest_ram_bytes);
    if let Err(f) = mmu.start(platform, ctl) {
        return Stopped::Start(f);
    }
    let (flags, paging) = match (mmu.take_paging(), mmu.nested_root()) {
        (Some(paging), _) => (ResumeFlags::SET_PAGING, paging),
        (None, Some(root)) => (
            ResumeFlags::SET_NESTED_ROOT,
            PagingState {
                root,
                ..Default::default()
            },
        ),
        (None, None) => return Stopped::NoRoot,
    };
    let first_paging = paging;
    let mut reply = Reply::Run(Resume {
        abi_version: ABI_VERSION,
        flags: flags.bits(),
        paging,
        ..Default::default()
    });
    loop {
        let c = mmu.ctl();
        let control = GuestControl {
            cr0: c.cr0,
            cr3: c.cr3,
            cr4: c.cr4,
            efer: c.efer,
        };
        hooks.resume(reply.resume_mut());
        let exit = match platform.reply(&reply, &control, &mmu.stats()) {
            Ok(exit) => hooks.exit(&first_paging, exit),
            Err(e) => return Stopped::Refused(e),
        };
        if ExitKind::of(&exit) == ExitKind::Notification {
            // The guest did not run: resync what other servers wrote, then
            // rerun with an empty resume (the last one was applied; the
            // stub applies an empty one as nothing) plus any paging.
            let resume = Resume {
                abi_version: ABI_VERSION,
                ..Default::default()
            };
            reply = match guest_writes(&mut mmu, platform, &exit, resume) {
                Ok(r) => r,
                Err(failure) => {
                    return Stopped::Exit {
                        failure,
                        code: exit.exit_code,
                        rip: exit.regs.rip,
                    }
                }
            };
            continue;
        }
        reply = match answer(&mut mmu, platform, &exit) {
            Ok(r) => r,
            Err(failure) => {
                return Stopped::Exit {
                    failure,
                    code: exit.exit_code,
                    rip: exit.regs.rip,
                }
            }
        };
    }
}

/// Most frames one notification resyncs one by one; more count as all
/// guest RAM.
const WRITES_MAX: usize = 2 * ipc_proto::guest_writes::GUEST_WRITE_FRAMES;

/// A notification exit: the frames the guest-writes channels in its word
/// recorded are resynced ([`Mmu::notify_guest_write`]: a page table among
/// them loses its stale shadows); the reply reruns `resume` with the
/// paging state the resync queued, if any.
pub fn guest_writes<P: MmuPlatform + MmuStub + ?Sized>(
    mmu: &mut Mmu,
    platform: &mut P,
    exit: &ExitRecord,
    resume: Resume,
) -> Result<Reply, Failure> {
    let word = (exit.exit_info1 & 0xffff_ffff) as u32;
    let mut frames = heapless::Vec::<u64, WRITES_MAX>::new();
    let all = platform.take_guest_writes(word, &mut |f| {
        if !frames.contains(&f) && frames.push(f).is_err() {
            // Counted in `resync` as all of RAM (the vector is full).
        }
    });
    let all = all || frames.is_full();
    resync(mmu, platform, &frames, all, resume)
}

/// Resyncs the shadows of guest frames `frames` (all guest RAM when
/// `all`), which a server wrote in place, and reruns `resume` with the
/// paging state the resync queued, if any.
pub fn resync<P: MmuPlatform + ?Sized>(
    mmu: &mut Mmu,
    platform: &mut P,
    frames: &[u64],
    all: bool,
    resume: Resume,
) -> Result<Reply, Failure> {
    let ram = platform.guest_ram_bytes();
    if all {
        mmu.notify_guest_write(platform, 0, ram)?;
    } else {
        for f in frames.iter().filter(|f| **f < ram >> 12) {
            mmu.notify_guest_write(platform, f << 12, 0x1000)?;
        }
    }
    let mut resume = resume;
    if let Some((paging, flags)) = mmu.take_paging_flags() {
        resume.paging = paging;
        resume.flags |= flags.bits();
    }
    Ok(Reply::Run(resume))
}

/// The reply to one exit.
pub fn answer<P: MmuPlatform + ?Sized>(
    mmu: &mut Mmu,
    platform: &mut P,
    exit: &ExitRecord,
) -> Result<Reply, Failure> {
    match mmu.handle_exit(platform, exit) {
        Action::Resume(r) => Ok(Reply::Run(r)),
        Action::Mmio { gpa, write, .. } => {
            // Device memory: the vmm-server emulates the access as it
            // would a nested page fault (SVM NPF: EXITINFO1 bit 1 =
            // write) or an EPT violation (VMX: bit 0 read, bit 1 write);
            // EXITINFO2 = the guest-physical address.
            let (exit_code, access) = if exit.arch == VcpuArch::Vmx as u32 {
                (vmx_exit::EPT_VIOLATION, if write { 2 } else { 1 })
            } else {
                (svm_exit::NPF, if write { 2 } else { 0 })
            };
            let (paging, flags) = mmu
                .take_paging_flags()
                .unwrap_or((PagingState::default(), ResumeFlags::empty()));
            Ok(Reply::Forward {
                exit: ExitRecord {
                    exit_code,
                    exit_info1: access,
                    exit_info2: gpa,
                    ..*exit
                },
                resume: Resume {
                    abi_version: ABI_VERSION,
                    flags: flags.bits(),
                    paging,
                    ..Default::default()
                },
            })
        }
        Action::Fail(f) => Err(f),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::regs::{cr0, efer};

    fn cfg() -> MmuConfig {
        MmuConfig {
            mode: MmuMode::Shadow,
            ..MmuConfig::default()
        }
    }

    fn control(cr0: u64, cr4: u64, efer: u64) -> GuestControl {
        GuestControl {
            cr0,
            cr3: 0x1000,
            cr4,
            efer,
        }
    }

    /// What a restarted instance accepts from its VCPU page: the states a
    /// guest can reach, not garbage.
    #[test]
    fn restored_registers_are_checked() {
        let long = control(cr0::PG | cr0::PE | cr0::ET, cr4::PAE, efer::LME | efer::LMA);
        assert_eq!(restored_ctl(&long, &cfg()).map(|c| c.cr3), Ok(0x1000));
        assert!(restored_ctl(&control(cr0::PE | cr0::ET, 0, 0), &cfg()).is_ok());
        let garbage = 0xdead_beef_dead_beef;
        for bad in [
            control(garbage, garbage, garbage),
            control(cr0::PG | cr0::ET, 0, 0),
            control(cr0::PG | cr0::PE, 0, efer::LME | efer::LMA),
            control(cr0::PE, 0, efer::LMA),
            control(cr0::PE | 1 << 40, 0, 0),
            control(cr0::PE, 1 << 22, 0),
        ] {
            assert_eq!(
                restored_ctl(&bad, &cfg()),
                Err(Failure::BadInitialState),
                "{bad:?}"
            );
        }
    }
}
