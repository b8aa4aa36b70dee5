//! The hostile servers of `splitvisor attack`: what they share.
//!
//! `hostile-mmu` (the mmu-server's task kind: installs, shadow tables,
//! paging roots) and `hostile-vmm` (the vmm-server's: resumes, channels)
//! first attack the stub with everything the threat model of
//! `/work/shared/DESIGN.md` lets a server send, each attempt judged by an
//! ORACLE written from the ABI documentation (`ipc-proto`) and the manuals
//! (AMD APM vol. 2, Intel SDM vol. 3), not from the stub's code; then they
//! run the normal server logic so that a probe guest shows the stub still
//! works. They are built only by `splitvisor attack` and never go into a
//! normal image (`images::SystemSpec::hostile_servers`).
//!
//! # Console protocol (read by `apps/src/attack.rs`)
//!
//! - `attack: try SERVER INDEX CLASS MUST NAME...` before each attempt
//!   (MUST: `refuse`, `either`, `accept`): if the run ends before the server
//!   says `done`, the last `try` of a server that is not done is the attempt
//!   that ended it, and the next boot skips it (the [`Config`] skip list).
//! - `attack: escape SERVER INDEX CLASS NAME...`: the stub accepted an
//!   attempt its oracle says it must refuse.
//! - `attack: SERVER CLASS attempts=N refused=N accepted_ok=N escapes=N denied=N`
//!   once per class at the end, then `attack: done SERVER`.
#![no_std]
#![deny(missing_docs)]

#[cfg(target_os = "none")]
pub mod campaign;

/// Marks the configuration block in the server ELF; `splitvisor attack`
/// finds it there and patches the fields after it before it packs the image.
pub const CONFIG_MAGIC: [u8; 16] = *b"SPLTVSR-ATTACK-1";

/// Most attempts a boot can be told to skip.
pub const MAX_SKIPS: usize = 128;

/// The ordinary boot: every class that leaves the probe guest able to run.
pub const BOOT_MAIN: u32 = 0;
/// Attempts that may leave the VM unable to run the probe even when the
/// stub refuses them properly (resource exhaustion, freeing the live root,
/// an interrupt the guest cannot take).
pub const BOOT_DESTRUCTIVE: u32 = 1;
/// The servers execute x87/SSE instructions: the stub must make them fault.
pub const BOOT_FPU: u32 = 2;
/// The `random-resumes` class: at their first exit each server draws
/// resumes from [`Config::seed`] (the mmu-server paging states under shadow
/// paging, the vmm-server RFLAGS, RIP, events and interrupt windows) and
/// makes each; an accepted one must enter the guest. Destructive: the
/// vmm-server writes a GDT, an IDT and a handler at guest-physical 0.
pub const BOOT_RANDOM: u32 = 3;
/// The `restart` class: the mmu-server faults on purpose at a point drawn
/// from [`Config::seed`] (at start with tables of its own, or at one of
/// its first resumes), up to three times; each next instance first uses
/// the old instance's handles, which the stub must refuse, and must never
/// enter the guest on a freed table. The probe guest then runs to its end.
pub const BOOT_RESTART: u32 = 4;

/// Server number of the hostile mmu-server in skip entries.
pub const SERVER_MMU: u32 = 0;
/// Server number of the hostile vmm-server in skip entries.
pub const SERVER_VMM: u32 = 1;

/// What `splitvisor attack` tells a boot's servers: patched into the ELF
/// at the [`CONFIG_MAGIC`] (all fields little-endian `u32` after the magic).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Config {
    /// [`CONFIG_MAGIC`].
    pub magic: [u8; 16],
    /// [`BOOT_MAIN`], [`BOOT_DESTRUCTIVE`], [`BOOT_FPU`] or [`BOOT_RANDOM`].
    pub boot: u32,
    /// 1: fewer random attempts (CI).
    pub short: u32,
    /// Valid entries of `skip`.
    pub nskip: u32,
    /// The seed of the random draws ([`BOOT_RANDOM`]); each server mixes
    /// in its own number.
    pub seed: u32,
    /// Attempts not to make: `server << 24 | index`.
    pub skip: [u32; MAX_SKIPS],
}

/// The block `splitvisor attack` patches. Read only with volatile loads.
#[used]
#[no_mangle]
pub static ATTACK_CONFIG: Config = Config {
    magic: CONFIG_MAGIC,
    boot: BOOT_MAIN,
    short: 0,
    nskip: 0,
    seed: 0,
    skip: [0; MAX_SKIPS],
};
