//! The attempts, their oracles and the console protocol (see the crate
//! docs). Every oracle here is written from the ABI's documentation
//! (`ipc-proto`: `mmu.rs`, `vcpu.rs`, `syscall.rs`, `layout.rs`) and the
//! manuals, never from the stub's code: `Must::Refuse` where the ABI or
//! the hardware says the request would reach memory or state the server
//! does not own, `Must::Either` where accepting it only changes what the
//! guest sees, `Must::Accept` for the controls that show the attempt's
//! machinery works (refusing one is counted as `denied`, not as an escape).

use core::fmt::{self, Write};

use ipc_proto::mmu::{Install, InstallPage, INSTALL_BATCH_MAX, MAX_SHADOW_TABLES};
use ipc_proto::{
    EventInjection, ExitRecord, GuestControl, GuestRegs, PagingState, Resume, ResumeFlags,
    ABI_VERSION,
};
use stub_abi::layout::{
    BOOT_INFO_PAGE, GUEST_RAM_WINDOW, INSTALL_PAGE, PAGE_SIZE, SERVER_IMAGE_BASE, STACK_TOP,
    VCPU_PAGE,
};
use stub_abi::sys::{self, ConsoleLine};
use stub_abi::syscall::CONSOLE_WRITE_MAX;
use stub_abi::Syscall;

use crate::{Config, ATTACK_CONFIG, MAX_SKIPS, SERVER_MMU, SERVER_VMM};

/// Writes one console line.
macro_rules! line {
    ($($arg:tt)*) => {{
        let mut l = ConsoleLine::new();
        let _ = write!(l, $($arg)*);
        let _ = l.write_str("\n");
        l.flush();
    }};
}

/// This boot's configuration, as `splitvisor attack` patched it.
pub fn config() -> Config {
    // SAFETY: a static of this crate; volatile so that the patched bytes
    // are read, not the values the compiler saw.
    unsafe { core::ptr::read_volatile(&raw const ATTACK_CONFIG) }
}

/// splitmix64: spreads a small seed over all 64 bits (never 0 for xorshift).
fn splitmix(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) | 1
}

/// A system call with any number, unlike `stub_abi::sys::syscall3`.
///
/// # Safety
/// The stub may read or write what the arguments point to.
pub unsafe fn raw_syscall(nr: u64, a0: u64, a1: u64, a2: u64) -> u64 {
    let ret: u64;
    // SAFETY: `int 0x80` enters the stub, which preserves every register but rax.
    unsafe {
        core::arch::asm!("int 0x80", inlateout("rax") nr => ret, in("rdi") a0, in("rsi") a1, in("rdx") a2);
    }
    ret
}

/// Whether a return value is a refusal (negative).
fn ok(rax: u64) -> bool {
    rax.cast_signed() >= 0
}

/// Attack classes, as the table's rows.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Page-table installs.
    Installs,
    /// Resumes: paging state, RIP, RFLAGS, events, flags.
    Resumes,
    /// System calls with hostile numbers, pointers, lengths, channels, rights.
    Syscalls,
    /// Shadow-table handles and memory.
    Exhaustion,
    /// x87/SSE in a server.
    Fpu,
    /// IN/OUT on host ports the task was not granted; CLI, POPF and
    /// `int` on the host's IRQ vectors.
    PortIo,
    /// Resumes drawn from a seeded generator, near-legal: an accepted one
    /// must enter the guest.
    RandomResumes,
    /// Host addresses in what the stub hands a server.
    Leaks,
    /// The handles of an mmu-server that faulted, used by its next
    /// instance: every one must be refused, and the guest never entered
    /// on a freed table.
    Restart,
}

const CLASSES: [Class; 9] = [
    Class::Installs,
    Class::Resumes,
    Class::Syscalls,
    Class::Exhaustion,
    Class::Fpu,
    Class::PortIo,
    Class::RandomResumes,
    Class::Leaks,
    Class::Restart,
];

impl Class {
    fn name(self) -> &'static str {
        match self {
            Self::Installs => "installs",
            Self::Resumes => "resumes",
            Self::Syscalls => "syscalls",
            Self::Exhaustion => "exhaustion",
            Self::Fpu => "fpu",
            Self::PortIo => "portio",
            Self::RandomResumes => "random-resumes",
            Self::Leaks => "leaks",
            Self::Restart => "restart",
        }
    }
}

/// What the oracle says the stub must do.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Must {
    /// Accepting it is an escape.
    Refuse,
    /// Either is safe.
    Either,
    /// A control: refusing it is a denial of service, not an escape.
    Accept,
}

impl Must {
    fn name(self) -> &'static str {
        match self {
            Self::Refuse => "refuse",
            Self::Either => "either",
            Self::Accept => "accept",
        }
    }
}

#[derive(Clone, Copy, Default)]
struct Tally {
    attempts: u32,
    refused: u32,
    accepted_ok: u32,
    escapes: u32,
    denied: u32,
}

/// One server's campaign: numbering, skipping, counting and reporting.
pub struct Campaign {
    server: u32,
    cfg: Config,
    next: u32,
    tallies: [Tally; CLASSES.len()],
    rng: u64,
    /// The random class's generator, from the configured seed.
    draws: u64,
}

impl Campaign {
    /// The campaign of server `server` ([`SERVER_MMU`] or [`SERVER_VMM`]).
    pub fn new(server: u32) -> Self {
        let cfg = config();
        Self {
            server,
            cfg,
            next: 0,
            tallies: [Tally::default(); CLASSES.len()],
            rng: 0x9e37_79b9_7f4a_7c15 ^ u64::from(server),
            draws: splitmix(u64::from(cfg.seed) << 8 | u64::from(server)),
        }
    }

    /// The configured seed of the random class.
    pub fn seed(&self) -> u32 {
        self.cfg.seed
    }

    /// The random class's next number (xorshift64* from the seed).
    pub fn draw(&mut self) -> u64 {
        let mut x = self.draws;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.draws = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// True once in `n` draws.
    fn one_in(&mut self, n: u64) -> bool {
        self.draw().is_multiple_of(n)
    }

    /// A draw below `n`.
    fn below(&mut self, n: u64) -> u64 {
        self.draw() % n
    }

    /// [`crate::BOOT_MAIN`], [`crate::BOOT_DESTRUCTIVE`] or [`crate::BOOT_FPU`].
    pub fn boot(&self) -> u32 {
        self.cfg.boot
    }

    /// Fewer random attempts.
    pub fn short(&self) -> bool {
        self.cfg.short != 0
    }

    fn server_name(&self) -> &'static str {
        if self.server == SERVER_MMU {
            "mmu"
        } else {
            "vmm"
        }
    }

    fn skipped(&self, index: u32) -> bool {
        let n = (self.cfg.nskip as usize).min(MAX_SKIPS);
        self.cfg.skip[..n].contains(&(self.server << 24 | index))
    }

    /// A deterministic pseudo-random number (xorshift64*).
    pub fn random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Makes attempt `name`: `f` returns whether the stub accepted it.
    /// Returns `None` when the attempt is skipped this boot.
    pub fn attempt(
        &mut self,
        class: Class,
        must: Must,
        name: fmt::Arguments,
        f: impl FnOnce() -> bool,
    ) -> Option<bool> {
        let index = self.next;
        self.next += 1;
        if self.skipped(index) {
            return None;
        }
        let server = self.server_name();
        line!(
            "attack: try {server} {index} {} {} {name}",
            class.name(),
            must.name()
        );
        let accepted = f();
        let t = &mut self.tallies[CLASSES.iter().position(|c| *c == class).unwrap_or(0)];
        t.attempts += 1;
        match (accepted, must) {
            (false, Must::Accept) => {
                t.refused += 1;
                t.denied += 1;
                line!("attack: denied {server} {index} {} {name}", class.name());
            }
            (false, _) => t.refused += 1,
            (true, Must::Refuse) => {
                t.escapes += 1;
                line!("attack: escape {server} {index} {} {name}", class.name());
            }
            (true, _) => t.accepted_ok += 1,
        }
        Some(accepted)
    }

    /// Prints the per-class lines and `done`.
    pub fn finish(&self) {
        let server = self.server_name();
        for (class, t) in CLASSES.iter().zip(&self.tallies) {
            if t.attempts == 0 {
                continue;
            }
            line!(
                "attack: {server} {} attempts={} refused={} accepted_ok={} escapes={} denied={}",
                class.name(),
                t.attempts,
                t.refused,
                t.accepted_ok,
                t.escapes,
                t.denied
            );
        }
        line!("attack: done {server}");
        self.clear_resume();
    }

    /// The normal loop's first `VcpuRun` may leave the resume in the page
    /// as it is: leave one that asks for nothing.
    pub fn clear_resume(&self) {
        let page = sys::vcpu_page();
        // SAFETY: the stub maps the VCPU page read-write for exit handlers.
        unsafe { (&raw mut (*page).resume).write_volatile(base_resume(ResumeFlags::empty())) };
    }
}

// ---------------------------------------------------------------------
// Leaks (both servers)

/// The exit record a server got must not carry a host-physical address:
/// under shadow paging the hardware CR3 is the shadow root's, and the
/// stub hands every server the guest's own CR3 instead (the probe guest's
/// is 0, without paging; a host address lies beyond guest RAM).
pub fn leaks(c: &mut Campaign, exit: &ExitRecord, ram_bytes: u64) {
    c.attempt(
        Class::Leaks,
        Must::Refuse,
        format_args!(
            "exit-{}-cr3-{:#x}-outside-guest-ram",
            exit.sequence, exit.cr3
        ),
        || exit.cr3 >= ram_bytes,
    );
}

// ---------------------------------------------------------------------
// System calls (both servers)

/// Unknown numbers, hostile pointers and lengths, channels the server
/// does not hold, calls it has no right to.
pub fn syscalls(c: &mut Campaign, ram_bytes: u64) {
    let cl = Class::Syscalls;
    let server = c.server;
    // Unknown numbers; bit 32 and up must not be dropped (2 is ConsoleWrite).
    for nr in [
        0u64,
        16,
        17,
        0x7f,
        0x80,
        0xff,
        1 << 32 | 2,
        1 << 63 | 2,
        u64::MAX,
    ] {
        c.attempt(
            cl,
            Must::Refuse,
            format_args!("unknown-number {nr:#x}"),
            || {
                // SAFETY: a refused call touches nothing; ConsoleWrite of 0 bytes neither.
                ok(unsafe { raw_syscall(nr, 0, 0, 0) })
            },
        );
    }
    // ConsoleWrite: `[ptr, ptr+len)` must be readable by the caller in ring 3.
    // The stub identity-maps host 0..1 GiB supervisor-only in every space.
    let image = SERVER_IMAGE_BASE;
    let writes: [(u64, u64, Must, &str); 17] = [
        (0, 1, Must::Refuse, "null"),
        (0, 0, Must::Either, "len-0-at-null"),
        (0x1000, 16, Must::Refuse, "host-low-memory"),
        (0x10_0000, 16, Must::Refuse, "stub-image"),
        (
            0x3fff_f000,
            16,
            Must::Refuse,
            "last-page-of-the-stub-identity-map",
        ),
        (
            1 << 60 | image,
            16,
            Must::Refuse,
            "non-canonical-(1<<60)|image",
        ),
        (
            1 << 63 | image,
            16,
            Must::Refuse,
            "non-canonical-(1<<63)|image",
        ),
        (
            1 << 47 | image,
            16,
            Must::Refuse,
            "non-canonical-(1<<47)|image",
        ),
        (
            0xffff_8000_0000_0000 | image,
            16,
            Must::Refuse,
            "high-half-image-alias",
        ),
        (u64::MAX - 7, 16, Must::Refuse, "wrapping-ptr+len"),
        (image, u64::MAX, Must::Refuse, "len-u64-max"),
        (image, 1 << 63, Must::Refuse, "len-1<<63"),
        (
            image,
            CONSOLE_WRITE_MAX + 1,
            Must::Refuse,
            "len-above-CONSOLE_WRITE_MAX",
        ),
        (STACK_TOP - 8, 16, Must::Refuse, "straddles-the-stack-top"),
        (
            GUEST_RAM_WINDOW + ram_bytes - 8,
            16,
            Must::Refuse,
            "straddles-the-end-of-guest-RAM",
        ),
        (
            GUEST_RAM_WINDOW + ram_bytes,
            16,
            Must::Refuse,
            "past-guest-RAM",
        ),
        (0x5000_0000, 16, Must::Refuse, "server-window-end"),
    ];
    for (ptr, len, must, what) in writes {
        c.attempt(
            cl,
            must,
            format_args!("console-write {what} ptr={ptr:#x} len={len:#x}"),
            || {
                // SAFETY: hostile on purpose; the stub must check the range.
                ok(unsafe { raw_syscall(Syscall::ConsoleWrite as u64, ptr, len, 0) })
            },
        );
    }
    // ConsoleRead writes: the range must be writable by the caller.
    let mut buf = [0u8; 16];
    let stack = buf.as_mut_ptr() as u64;
    let reads: [(u64, u64, Must, &str); 11] = [
        (stack, 16, Must::Accept, "own-stack-buffer"),
        (0, 16, Must::Refuse, "null"),
        (0x10_0000, 16, Must::Refuse, "stub-image"),
        (image, 16, Must::Refuse, "own-text-read-only"),
        (BOOT_INFO_PAGE, 16, Must::Refuse, "boot-info-read-only"),
        (
            VCPU_PAGE + PAGE_SIZE - 8,
            16,
            Must::Refuse,
            "vcpu-page-into-boot-info",
        ),
        (
            1 << 60 | VCPU_PAGE,
            16,
            Must::Refuse,
            "non-canonical-(1<<60)|vcpu-page",
        ),
        (
            1 << 63 | stack,
            16,
            Must::Refuse,
            "non-canonical-(1<<63)|stack",
        ),
        (u64::MAX - 7, 16, Must::Refuse, "wrapping-ptr+len"),
        (stack, u64::MAX, Must::Refuse, "len-u64-max"),
        (
            stack,
            CONSOLE_WRITE_MAX + 1,
            Must::Refuse,
            "len-above-CONSOLE_WRITE_MAX",
        ),
    ];
    for (ptr, len, must, what) in reads {
        c.attempt(
            cl,
            must,
            format_args!("console-read {what} ptr={ptr:#x} len={len:#x}"),
            || {
                // SAFETY: hostile on purpose; no input is pending, and the only
                // valid target is `buf`, live here.
                ok(unsafe { raw_syscall(Syscall::ConsoleRead as u64, ptr, len, 0) })
            },
        );
    }
    core::hint::black_box(&mut buf);
    // Channels: these images have none but, under shadow paging, the
    // vmm-server's guest-writes channel to the mmu-server
    // (`ipc_proto::guest_writes`), which both hold: it is skipped, and so
    // is `NO_REPLY` (u64::MAX), a legal wait for a task on a channel.
    let held = sys::boot_info().guest_write_channels;
    let unheld = |ch: &u64| {
        let on_one = *ch < 16 && held & (1 << *ch) != 0;
        !(on_one || held != 0 && *ch == u64::MAX)
    };
    for ch in [0u64, 1, 15, 16, 1 << 32, u64::MAX]
        .into_iter()
        .filter(unheld)
    {
        c.attempt(
            cl,
            Must::Refuse,
            format_args!("call-unheld-channel {ch:#x}"),
            || {
                // SAFETY: Call takes no pointer.
                ok(unsafe { raw_syscall(Syscall::Call as u64, ch, 0, 0) })
            },
        );
        c.attempt(
            cl,
            Must::Refuse,
            format_args!("reply-recv-unheld-channel {ch:#x}"),
            || {
                // SAFETY: ReplyRecv takes no pointer.
                ok(unsafe { raw_syscall(Syscall::ReplyRecv as u64, ch, 0, 0) })
            },
        );
    }
    // Notifications: these servers are on no channel and own no IRQ line
    // (`manifest::Rights`), so every Signal, IrqAck and ReplyRecv must be
    // refused: a channel the caller is not on, a line it does not own,
    // ReplyRecv(NO_REPLY) with nothing that could ever wake it.
    for ch in [0u64, 1, 15, 16, 1 << 32, u64::MAX]
        .into_iter()
        .filter(unheld)
    {
        c.attempt(
            cl,
            Must::Refuse,
            format_args!("signal-unheld-channel {ch:#x}"),
            || {
                // SAFETY: Signal takes no pointer.
                ok(unsafe { raw_syscall(Syscall::Signal as u64, ch, 1, 0) })
            },
        );
    }
    for line in [0u64, 1, 2, 4, 14, 15, 16, 1 << 32, u64::MAX] {
        c.attempt(
            cl,
            Must::Refuse,
            format_args!("irq-ack-unowned-line {line:#x}"),
            || {
                // SAFETY: IrqAck takes no pointer.
                ok(unsafe { raw_syscall(Syscall::IrqAck as u64, line, 0, 0) })
            },
        );
    }
    // Random arguments to the three.
    let calls = [Syscall::Signal, Syscall::IrqAck, Syscall::ReplyRecv];
    for _ in 0..24 {
        let r = c.random();
        let nr = calls[(r % 3) as usize];
        let (a0, a1) = (c.random() >> (r >> 8 & 63), c.random());
        let a0 = if unheld(&a0) { a0 } else { 16 };
        c.attempt(
            cl,
            Must::Refuse,
            format_args!("random {nr:?} {a0:#x} {a1:#x}"),
            || {
                // SAFETY: none of the three takes a pointer.
                ok(unsafe { raw_syscall(nr as u64, a0, a1, 0) })
            },
        );
    }
    // Rights: the shadow-table calls are the mmu-server's.
    if server == SERVER_VMM {
        let calls: [(Syscall, u64, &str); 6] = [
            (Syscall::ShadowAlloc, 1, "shadow-alloc"),
            (Syscall::ShadowAlloc, 4, "shadow-alloc-level-4"),
            (Syscall::ShadowFree, 0, "shadow-free"),
            (Syscall::MmuInstall, 0, "mmu-install"),
            (Syscall::MmuFlush, 0, "mmu-flush"),
            (Syscall::VcpuForward, 0, "vcpu-forward"),
        ];
        for (nr, a0, what) in calls {
            c.attempt(
                cl,
                Must::Refuse,
                format_args!("without-the-right {what}"),
                || {
                    // SAFETY: none of these takes a pointer from the caller.
                    ok(unsafe { raw_syscall(nr as u64, a0, 0, 0) })
                },
            );
        }
    }
}

// ---------------------------------------------------------------------
// Shadow tables: a tracker the oracles use

#[derive(Clone, Copy)]
struct Table {
    handle: u32,
    level: u8,
    live: bool,
}

struct Tables {
    t: [Table; 16],
    n: usize,
}

impl Tables {
    fn new() -> Self {
        Self {
            t: [Table {
                handle: 0,
                level: 0,
                live: false,
            }; 16],
            n: 0,
        }
    }

    fn alloc(&mut self, level: u8) -> Option<u32> {
        let h = shadow_alloc(u64::from(level))?;
        if self.n < self.t.len() {
            self.t[self.n] = Table {
                handle: h,
                level,
                live: true,
            };
            self.n += 1;
        }
        Some(h)
    }

    fn free(&mut self, h: u32) {
        // SAFETY: ShadowFree takes no pointer.
        let _ = unsafe { raw_syscall(Syscall::ShadowFree as u64, u64::from(h), 0, 0) };
        for t in &mut self.t[..self.n] {
            if t.handle == h {
                t.live = false;
            }
        }
    }

    fn live_level(&self, h: u64) -> Option<u8> {
        self.t[..self.n]
            .iter()
            .find(|t| t.live && u64::from(t.handle) == h)
            .map(|t| t.level)
    }

    fn free_all(&mut self) {
        for i in 0..self.n {
            if self.t[i].live {
                self.free(self.t[i].handle);
            }
        }
    }
}

fn shadow_alloc(level: u64) -> Option<u32> {
    // SAFETY: ShadowAlloc takes no pointer.
    let r = unsafe { raw_syscall(Syscall::ShadowAlloc as u64, level, 0, 0) };
    ok(r).then_some(r as u32)
}

const PRESENT: u64 = 1;
const PS: u64 = 1 << 7;
const ADDR: u64 = 0x000f_ffff_ffff_f000;

/// The oracle for one install, from `ipc_proto::mmu`'s documentation: the
/// table must be a live table of the stub's at that level, the index below
/// 512 and `reserved` zero; a present leaf must map a page (4 KiB, 2 MiB,
/// 1 GiB) wholly inside guest RAM; a present non-leaf must name a live
/// table one level down; PS is reserved at level 4. A non-present entry
/// maps nothing.
fn install_oracle(tables: &Tables, ins: &Install, ram: u64) -> Must {
    let Some(level) = tables.live_level(u64::from(ins.table)) else {
        return Must::Refuse;
    };
    if ins.level != level || ins.index >= 512 || ins.reserved != 0 {
        return Must::Refuse;
    }
    let e = ins.entry;
    if e & PRESENT == 0 {
        return Must::Either;
    }
    if level == 4 && e & PS != 0 {
        return Must::Refuse;
    }
    let addr = e & ADDR;
    if level == 1 || e & PS != 0 {
        let size = 1u64 << (12 + 9 * (u32::from(level) - 1));
        let base = addr & !(size - 1);
        if base + size > ram {
            Must::Refuse
        } else {
            Must::Either
        }
    } else if tables.live_level(addr >> 12) == Some(level - 1) {
        Must::Either
    } else {
        Must::Refuse
    }
}

/// Writes `entries` (or claims `count` of them) into the install page and
/// calls `MmuInstall`; whether the stub accepted.
fn install(entries: &[Install], count: Option<u32>) -> bool {
    let page = INSTALL_PAGE as *mut InstallPage;
    // SAFETY: the stub maps the install page read-write for the mmu-server.
    unsafe {
        for (i, e) in entries.iter().take(INSTALL_BATCH_MAX).enumerate() {
            (&raw mut (*page).entries[i]).write_volatile(*e);
        }
        (&raw mut (*page).reserved).write_volatile(0);
        (&raw mut (*page).count).write_volatile(count.unwrap_or(entries.len() as u32));
    }
    // SAFETY: MmuInstall takes no pointer.
    ok(unsafe { raw_syscall(Syscall::MmuInstall as u64, 0, 0, 0) })
}

fn ins(table: u32, level: u8, index: u16, entry: u64) -> Install {
    Install {
        table,
        index,
        level,
        reserved: 0,
        entry,
    }
}

/// Installs: leaves outside RAM, large leaves past its end, bad children,
/// bad tables, levels, indices, batch counts, every bit of an entry, and
/// random entries judged by [`install_oracle`].
pub fn installs(c: &mut Campaign, ram: u64) {
    let cl = Class::Installs;
    let mut t = Tables::new();
    let (Some(l4), Some(l3), Some(l2), Some(l1), Some(dead)) =
        (t.alloc(4), t.alloc(3), t.alloc(2), t.alloc(1), t.alloc(1))
    else {
        line!("attack: installs: the stub refused the campaign's own tables");
        t.free_all();
        return;
    };
    t.free(dead);
    let one = |c: &mut Campaign, t: &Tables, i: Install, why: &str| {
        let must = install_oracle(t, &i, ram);
        let must = if must == Must::Either && why.starts_with("control") {
            Must::Accept
        } else {
            must
        };
        c.attempt(
            cl,
            must,
            format_args!(
                "{why} table={} level={} index={} reserved={} entry={:#x}",
                i.table, i.level, i.index, i.reserved, i.entry
            ),
            || install(&[i], None),
        );
    };
    let child = |h: u32| u64::from(h) << 12 | 7;
    // Leaves.
    one(c, &t, ins(l1, 1, 0, PRESENT | 2), "control-leaf-gpa-0");
    one(
        c,
        &t,
        ins(l1, 1, 1, (ram - 0x1000) | 3),
        "control-leaf-last-page",
    );
    for (gpa, why) in [
        (ram, "leaf-at-end-of-ram"),
        (ram + 0x1000, "leaf-past-ram"),
        (1 << 32, "leaf-4g"),
        (0x000f_ffff_ffff_f000, "leaf-max-address"),
        (0x10_0000_0000, "leaf-64g"),
    ] {
        one(c, &t, ins(l1, 1, 2, gpa | 3), why);
    }
    one(c, &t, ins(l2, 2, 0, PS | 3), "control-2m-leaf-0");
    one(
        c,
        &t,
        ins(l2, 2, 1, (ram - (2 << 20)) | PS | 3),
        "control-2m-leaf-last",
    );
    one(c, &t, ins(l2, 2, 2, ram | PS | 3), "2m-leaf-at-end-of-ram");
    one(
        c,
        &t,
        ins(l2, 2, 3, (ram - 0x1000) | PS | 3),
        "2m-leaf-low-bits-crossing-end",
    );
    one(
        c,
        &t,
        ins(l2, 2, 4, 0xffe0_0000 | PS | 3),
        "2m-leaf-below-4g",
    );
    one(c, &t, ins(l3, 3, 0, PS | 3), "1g-leaf-0-crosses-end-of-ram");
    one(c, &t, ins(l3, 3, 1, (1 << 30) | PS | 3), "1g-leaf-1g");
    one(
        c,
        &t,
        ins(l3, 3, 2, (ram - 0x1000) | PS | 3),
        "1g-leaf-low-bits",
    );
    one(c, &t, ins(l4, 4, 0, PS | 3), "ps-at-level-4");
    one(
        c,
        &t,
        ins(l4, 4, 1, child(l3) | PS),
        "ps-at-level-4-with-child",
    );
    // Non-leaves.
    one(c, &t, ins(l4, 4, 2, child(l3)), "control-non-leaf-l4-to-l3");
    one(c, &t, ins(l3, 3, 3, child(l2)), "control-non-leaf-l3-to-l2");
    one(c, &t, ins(l2, 2, 5, child(l1)), "control-non-leaf-l2-to-l1");
    for (table, level, h, why) in [
        (l4, 4, u64::from(l2), "non-leaf-wrong-level-l4-to-l2"),
        (l4, 4, u64::from(l1), "non-leaf-wrong-level-l4-to-l1"),
        (l4, 4, u64::from(l4), "non-leaf-to-itself"),
        (l3, 3, u64::from(l1), "non-leaf-wrong-level-l3-to-l1"),
        (l2, 2, u64::from(l2), "non-leaf-l2-to-itself"),
        (l2, 2, u64::from(dead), "non-leaf-to-freed-table"),
        (
            l2,
            2,
            u64::from(MAX_SHADOW_TABLES - 1),
            "non-leaf-to-unallocated-handle",
        ),
        (
            l2,
            2,
            u64::from(MAX_SHADOW_TABLES),
            "non-leaf-to-handle-max",
        ),
        (l2, 2, 0x100, "non-leaf-to-raw-host-1m"),
        (l2, 2, 0xb8, "non-leaf-to-raw-host-vga"),
        (l2, 2, 0x1_0000, "non-leaf-to-raw-host-256m"),
        (l2, 2, 1 << 32, "non-leaf-handle-bit-32"),
        (l2, 2, 0xff_ffff_ffff, "non-leaf-max-address"),
        (
            l4,
            4,
            (u64::from(l3)) | 1 << 32,
            "non-leaf-handle-alias-bit-32",
        ),
    ] {
        one(c, &t, ins(table, level, 6, h << 12 | 7), why);
    }
    // Tables, levels, indices, reserved.
    for (table, level, index, reserved, why) in [
        (dead, 1u8, 0u16, 0u8, "into-freed-table"),
        (u32::MAX, 1, 0, 0, "into-handle-u32-max"),
        (MAX_SHADOW_TABLES, 1, 0, 0, "into-handle-max"),
        (MAX_SHADOW_TABLES - 1, 1, 0, 0, "into-unallocated-handle"),
        (l1, 0, 0, 0, "level-0"),
        (l1, 2, 0, 0, "level-mismatch"),
        (l1, 5, 0, 0, "level-5"),
        (l1, 255, 0, 0, "level-255"),
        (l4, 1, 0, 0, "level-1-on-l4"),
        (l1, 1, 512, 0, "index-512"),
        (l1, 1, 0xffff, 0, "index-ffff"),
        (l1, 1, 0, 1, "reserved-1"),
        (l1, 1, 0, 0x80, "reserved-80"),
    ] {
        let i = Install {
            table,
            index,
            level,
            reserved,
            entry: 0x1000 | 3,
        };
        one(c, &t, i, why);
    }
    // Batch counts.
    let full = [ins(l1, 1, 7, 0x2000 | 3); INSTALL_BATCH_MAX];
    c.attempt(
        cl,
        Must::Accept,
        format_args!("control-batch-of-max"),
        || install(&full, None),
    );
    for n in [INSTALL_BATCH_MAX as u32 + 1, 4096, 0x8000_0000, u32::MAX] {
        c.attempt(cl, Must::Refuse, format_args!("batch-count {n:#x}"), || {
            install(&full, Some(n))
        });
    }
    // A bad entry in the middle of a batch: the batch stops there.
    let mut mixed = [ins(l1, 1, 8, 0x3000 | 3); 3];
    mixed[1].entry = ram | 3;
    c.attempt(
        cl,
        Must::Refuse,
        format_args!("batch-with-bad-entry-in-the-middle"),
        || install(&mixed, None),
    );
    // Every bit of an entry, alone, in a leaf, a non-leaf and a level-4 entry.
    for b in 0..64u32 {
        let bit = 1u64 << b;
        one(c, &t, ins(l1, 1, 10, PRESENT | bit), "leaf-bit");
        one(c, &t, ins(l2, 2, 10, child(l1) | bit), "l2-non-leaf-bit");
        one(c, &t, ins(l4, 4, 10, child(l3) | bit), "l4-non-leaf-bit");
    }
    // Random entries.
    let n = if c.short() { 40 } else { 400 };
    let handles = [l4, l3, l2, l1, dead, u32::MAX, 7, MAX_SHADOW_TABLES];
    let levels = [4u8, 3, 2, 1, 1, 0, 5, 1];
    for _ in 0..n {
        let r = c.random();
        let k = (r & 7) as usize;
        let (table, mut level) = (handles[k], levels[k]);
        if r >> 3 & 15 == 0 {
            level = (r >> 7 & 7) as u8;
        }
        let index = if r >> 10 & 15 == 0 {
            (r >> 14) as u16
        } else {
            (r >> 14 & 511) as u16
        };
        let reserved = if r >> 30 & 31 == 0 { 1 } else { 0 };
        let x = c.random();
        let addr = match x & 7 {
            0 | 1 => (x >> 8) % ram,
            2 => ram + ((x >> 8) & 0xff_ffff),
            3 => u64::from(handles[(x >> 8 & 7) as usize]) << 12,
            4 => u64::from(l1) << 12 | u64::from(l3) << 12,
            _ => x >> 8,
        };
        let flags = c.random() & !ADDR;
        let entry = (addr & ADDR) | flags | if x >> 60 == 0 { 0 } else { PRESENT };
        one(
            c,
            &t,
            Install {
                table,
                index,
                level,
                reserved,
                entry,
            },
            "random",
        );
    }
    t.free_all();
}

// ---------------------------------------------------------------------
// Resumes

/// Writes `r` into the VCPU page and calls `VcpuRun`: whether the stub
/// accepted it (and ran the guest to its next exit for this server).
fn resume(r: &Resume) -> bool {
    let page = sys::vcpu_page();
    // SAFETY: the stub maps the VCPU page read-write for exit handlers.
    unsafe { (&raw mut (*page).resume).write_volatile(*r) };
    // SAFETY: VcpuRun takes no pointer.
    ok(unsafe { raw_syscall(Syscall::VcpuRun as u64, 0, 0, 0) })
}

fn base_resume(flags: ResumeFlags) -> Resume {
    Resume {
        abi_version: ABI_VERSION,
        flags: flags.bits(),
        regs: GuestRegs {
            rflags: 2,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// CR0 bits the manuals define (APM vol. 2, 3.1.1): PE MP EM TS ET NE WP AM NW CD PG.
const CR0_DEFINED: u64 = 0x1f | 1 << 5 | 1 << 16 | 1 << 18 | 1 << 29 | 1 << 30 | 1 << 31;
/// CR4 bits the hardware may load for a guest without giving it more than
/// its own paging (VME PVI TSD DE PSE PAE MCE PGE PCE OSFXSR OSXMMEXCPT
/// FSGSBASE OSXSAVE, and SMEP SMAP: they only restrict the guest's
/// supervisor accesses to its own user pages, and a guest that turns them
/// on expects them). Not: LA57 (a five-level walk from a four-level root),
/// UMIP (not on every CPU: VMRUN refuses it where absent), VMXE/SMXE,
/// PCIDE (needs long mode, changes TLB tagging), PKE, CET, PKS
/// (keys and shadow stacks the shadow tables do not carry), nor anything
/// reserved.
const CR4_SAFE: u64 = 0x7ff | 1 << 16 | 1 << 18 | 1 << 20 | 1 << 21;
/// CR4 bits no server may give a nested-paging guest: the stub's
/// allowlist leaves them out (LA57, VMXE, PCIDE, PKE, a reserved bit).
const NESTED_CR4_REFUSED: [(u64, &str); 5] = [
    (1 << 12, "la57"),
    (1 << 13, "vmxe"),
    (1 << 17, "pcide"),
    (1 << 22, "pke"),
    (1 << 63, "bit-63"),
];
/// EFER bits beside LME/LMA that only change the guest's own behaviour:
/// SCE, NXE, SVME (forced on by the stub), LMSLE, FFXSR, TCE.
const EFER_SAFE: u64 = 1 | 1 << 11 | 1 << 12 | 1 << 13 | 1 << 14 | 1 << 15;

/// The mmu-server's resumes: paging states and roots.
pub fn mmu_resumes(c: &mut Campaign, shadow: bool) {
    let cl = Class::Resumes;
    let mut t = Tables::new();
    let (Some(l4), Some(l3), Some(l2), Some(l1), Some(dead)) =
        (t.alloc(4), t.alloc(3), t.alloc(2), t.alloc(1), t.alloc(3))
    else {
        line!("attack: resumes: the stub refused the campaign's own tables");
        t.free_all();
        return;
    };
    t.free(dead);
    let base = PagingState {
        cr0: 0x8000_0011,
        cr4: 0x20,
        efer: 0,
        root: l3,
        flags: 0,
    };
    let paging = |c: &mut Campaign, must: Must, p: PagingState, why: fmt::Arguments| {
        let mut r = base_resume(ResumeFlags::SET_PAGING);
        r.paging = p;
        let must = if shadow { must } else { Must::Refuse };
        c.attempt(
            cl,
            must,
            format_args!(
                "set-paging {why} cr0={:#x} cr4={:#x} efer={:#x} root={} flags={}",
                p.cr0, p.cr4, p.efer, p.root, p.flags
            ),
            || resume(&r),
        );
    };
    if shadow {
        paging(c, Must::Accept, base, format_args!("control-pae"));
    } else {
        // Under nested paging SET_PAGING loads only the guest's CR4 (the
        // answer to a MOV to CR4), through the allowlist.
        for (bit, why) in NESTED_CR4_REFUSED {
            let p = PagingState {
                cr4: base.cr4 | bit,
                ..base
            };
            paging(
                c,
                Must::Refuse,
                p,
                format_args!("under-nested-paging-cr4-{why}"),
            );
        }
    }
    if shadow {
        for b in 0..64u32 {
            let bit = 1u64 << b;
            if base.cr0 & bit == 0 {
                let must = if CR0_DEFINED & bit == 0 || b == 29 {
                    Must::Refuse
                } else {
                    Must::Either
                };
                paging(
                    c,
                    must,
                    PagingState {
                        cr0: base.cr0 | bit,
                        ..base
                    },
                    format_args!("cr0-bit-{b}"),
                );
            }
            if base.cr4 & bit == 0 {
                let must = if CR4_SAFE & bit == 0 {
                    Must::Refuse
                } else {
                    Must::Either
                };
                paging(
                    c,
                    must,
                    PagingState {
                        cr4: base.cr4 | bit,
                        ..base
                    },
                    format_args!("cr4-bit-{b}"),
                );
            }
            let must = if EFER_SAFE & bit == 0 {
                Must::Refuse
            } else {
                Must::Either
            };
            paging(
                c,
                must,
                PagingState { efer: bit, ..base },
                format_args!("efer-bit-{b}"),
            );
        }
        for (p, why) in [
            (PagingState { cr0: 0x11, ..base }, "cr0-pg-clear"),
            (
                PagingState {
                    cr0: 0x8000_0010,
                    cr4: 0,
                    ..base
                },
                "cr4-pae-clear",
            ),
            (PagingState { root: dead, ..base }, "root-freed-table"),
            (PagingState { root: l4, ..base }, "root-level-4-without-lme"),
            (PagingState { root: l2, ..base }, "root-level-2"),
            (PagingState { root: l1, ..base }, "root-level-1"),
            (
                PagingState {
                    root: u32::MAX,
                    ..base
                },
                "root-u32-max",
            ),
            (
                PagingState {
                    root: MAX_SHADOW_TABLES,
                    ..base
                },
                "root-handle-max",
            ),
            (
                // Bit 0 is INTERCEPT_INVLPG; bit 1 is reserved.
                PagingState { flags: 2, ..base },
                "reserved-flag-2",
            ),
            (
                PagingState {
                    efer: 0x500,
                    ..base
                },
                "long-mode-on-level-3-root",
            ),
            (
                PagingState {
                    efer: 0x100,
                    root: l4,
                    ..base
                },
                "lme-without-lma",
            ),
            (
                PagingState {
                    efer: 0x400,
                    root: l4,
                    ..base
                },
                "lma-without-lme",
            ),
            (
                PagingState {
                    cr0: base.cr0 | 1 << 29 | 1 << 30,
                    ..base
                },
                "control-cr0-cd-nw",
            ),
        ] {
            let must = if why.starts_with("control") {
                Must::Either
            } else {
                Must::Refuse
            };
            paging(c, must, p, format_args!("{why}"));
        }
    }
    // The nested root: a live level-4 table, under nested paging only.
    for (root, flags, why) in [
        (l3, 0u32, "level-3"),
        (l2, 0, "level-2"),
        (l1, 0, "level-1"),
        (dead, 0, "freed-table"),
        (u32::MAX, 0, "u32-max"),
        (MAX_SHADOW_TABLES, 0, "handle-max"),
        (l4, 1, "flags-1"),
    ] {
        let mut r = base_resume(ResumeFlags::SET_NESTED_ROOT);
        r.paging = PagingState {
            root,
            flags,
            ..Default::default()
        };
        c.attempt(
            cl,
            Must::Refuse,
            format_args!("set-nested-root {why} root={root}"),
            || resume(&r),
        );
    }
    if shadow {
        let mut r = base_resume(ResumeFlags::SET_NESTED_ROOT);
        r.paging.root = l4;
        c.attempt(
            cl,
            Must::Refuse,
            format_args!("set-nested-root under-shadow-paging"),
            || resume(&r),
        );
    }
    t.free_all();
}

/// The vmm-server's resumes: flags, RIP, RFLAGS, events, and the paging
/// flags that are the mmu-server's alone. The guest (the probe) is in
/// 32-bit protected mode with interrupts off.
pub fn vmm_resumes(c: &mut Campaign, shadow: bool) {
    let cl = Class::Resumes;
    let refuse = |c: &mut Campaign, r: Resume, why: fmt::Arguments| {
        c.attempt(cl, Must::Refuse, why, || resume(&r));
    };
    let mut r = base_resume(ResumeFlags::empty());
    r.abi_version = ABI_VERSION + 1;
    refuse(c, r, format_args!("abi-version+1"));
    for bit in [12u32, 16, 31] {
        let mut r = base_resume(ResumeFlags::empty());
        r.flags = 1 << bit;
        refuse(c, r, format_args!("unknown-flag-bit-{bit}"));
    }
    for rip in [
        1u64 << 32,
        (1 << 60) | 0x10_0000,
        0x0000_8000_0000_0000,
        u64::MAX,
    ] {
        let mut r = base_resume(ResumeFlags::SET_RIP);
        r.regs.rip = rip;
        refuse(c, r, format_args!("rip-in-32-bit-mode {rip:#x}"));
    }
    // RFLAGS: bit 1 reads as one; 3, 5, 15 and 22-63 are reserved (APM vol. 2, 3.1.6).
    let mut r = base_resume(ResumeFlags::SET_RFLAGS);
    r.regs.rflags = 0;
    refuse(c, r, format_args!("rflags-bit-1-clear"));
    for b in [3u32, 5, 15, 22, 31, 32, 63] {
        let mut r = base_resume(ResumeFlags::SET_RFLAGS);
        r.regs.rflags = 2 | 1 << b;
        refuse(c, r, format_args!("rflags-reserved-bit-{b}"));
    }
    // Events (APM vol. 2, 15.20): types 0 INTR, 2 NMI, 3 exception, 4 INTn.
    for (vector, kind, has_error_code, reserved, why) in [
        (0x20u8, 1u8, 0u8, 0u8, "reserved-type-1"),
        (0x20, 5, 0, 0, "reserved-type-5"),
        (0x20, 6, 0, 0, "reserved-type-6"),
        (0x20, 7, 0, 0, "reserved-type-7"),
        (0x20, 255, 0, 0, "type-255"),
        (32, 3, 0, 0, "exception-vector-32"),
        (255, 3, 0, 0, "exception-vector-255"),
        (2, 3, 0, 0, "exception-vector-2"),
        (3, 2, 0, 0, "nmi-vector-3"),
        (6, 3, 1, 0, "error-code-on-ud"),
        (3, 3, 1, 0, "error-code-on-bp"),
        (0, 3, 1, 0, "error-code-on-de"),
        (0x80, 4, 1, 0, "error-code-on-intn"),
        (0x20, 0, 1, 0, "error-code-on-interrupt"),
        (14, 3, 2, 0, "has-error-code-2"),
        (13, 3, 1, 1, "reserved-1"),
    ] {
        let mut r = base_resume(ResumeFlags::INJECT_EVENT);
        r.event = EventInjection {
            vector,
            kind,
            has_error_code,
            reserved,
            error_code: 0,
        };
        refuse(c, r, format_args!("event {why}"));
    }
    // XCR0 (SET_XCR0): x87 clear, AVX without SSE, state the stub has not
    // reviewed (MPX, AVX-512, PKRU), reserved bits; none without XSAVE.
    for (value, why) in [
        (0u64, "zero"),
        (2, "x87-clear"),
        (5, "avx-without-sse"),
        (1 << 3 | 1 << 4 | 3, "mpx"),
        (0xe7, "avx-512"),
        (1 << 9 | 3, "pkru"),
        (1 << 63 | 1, "bit-63"),
    ] {
        let mut r = base_resume(ResumeFlags::SET_XCR0);
        r.xcr0 = value;
        refuse(c, r, format_args!("xcr0-{why} {value:#x}"));
    }
    // The paging flags are the mmu-server's (under nested paging
    // SET_PAGING loads the guest's CR4, through the allowlist).
    for root in [0u32, 1, 2, 3] {
        let mut r = base_resume(ResumeFlags::SET_PAGING);
        let (bit, why) = NESTED_CR4_REFUSED[root as usize];
        r.paging = PagingState {
            cr0: 0x8000_0011,
            cr4: if shadow { 0x20 } else { 0x20 | bit },
            efer: 0,
            root,
            flags: 0,
        };
        refuse(
            c,
            r,
            format_args!("set-paging-from-the-vmm-server root={root} nested-cr4={why}"),
        );
        let mut r = base_resume(ResumeFlags::SET_NESTED_ROOT);
        r.paging.root = root;
        refuse(
            c,
            r,
            format_args!("set-nested-root-from-the-vmm-server root={root}"),
        );
    }
}

/// Destructive (its own boot): an external interrupt while the guest has
/// IF=0 (the probe starts with interrupts off): the hardware delivers an
/// injected event regardless of IF, so the stub must refuse it.
pub fn vmm_destructive(c: &mut Campaign) {
    let mut r = base_resume(ResumeFlags::INJECT_EVENT);
    r.event = EventInjection {
        vector: 0x20,
        kind: 0,
        has_error_code: 0,
        reserved: 0,
        error_code: 0,
    };
    c.attempt(
        Class::Resumes,
        Must::Refuse,
        format_args!("event external-interrupt-with-guest-if-0"),
        || resume(&r),
    );
}

// ---------------------------------------------------------------------
// Exhaustion

/// Bad levels and handles: harmless, in the main boot.
pub fn exhaustion_light(c: &mut Campaign) {
    let cl = Class::Exhaustion;
    for level in [0u64, 5, 255, 1 << 32 | 1, 1 << 8 | 1, u64::MAX] {
        c.attempt(
            cl,
            Must::Refuse,
            format_args!("shadow-alloc-level {level:#x}"),
            || {
                let h = shadow_alloc(level);
                if let Some(h) = h {
                    // SAFETY: ShadowFree takes no pointer.
                    let _ = unsafe { raw_syscall(Syscall::ShadowFree as u64, u64::from(h), 0, 0) };
                }
                h.is_some()
            },
        );
    }
    for h in [
        u64::from(MAX_SHADOW_TABLES),
        u64::from(u32::MAX),
        1 << 32,
        u64::MAX,
        4000,
    ] {
        c.attempt(
            cl,
            Must::Refuse,
            format_args!("shadow-free-unknown-handle {h:#x}"),
            || {
                // SAFETY: ShadowFree takes no pointer.
                ok(unsafe { raw_syscall(Syscall::ShadowFree as u64, h, 0, 0) })
            },
        );
    }
    let h = shadow_alloc(1);
    if let Some(h) = h {
        // SAFETY: ShadowFree takes no pointer.
        let _ = unsafe { raw_syscall(Syscall::ShadowFree as u64, u64::from(h), 0, 0) };
        c.attempt(
            cl,
            Must::Refuse,
            format_args!("shadow-free-twice {h}"),
            || {
                // SAFETY: ShadowFree takes no pointer.
                ok(unsafe { raw_syscall(Syscall::ShadowFree as u64, u64::from(h), 0, 0) })
            },
        );
    }
}

/// Destructive: allocate level-1 tables until the stub says no, free them
/// all, then every level must still be allocatable; and free the table the
/// hardware walks (`live_root`, shadow paging), which the ABI allows.
pub fn exhaustion(c: &mut Campaign, live_root: Option<u32>) {
    let cl = Class::Exhaustion;
    // Freeing the root the hardware walks: the ABI allows it (the 2006
    // baseline frees every table before it builds the next root); it stays
    // safe because a freed frame comes back only at its own level, so the
    // hardware never reads an entry checked for another level.
    if let Some(root) = live_root {
        c.attempt(
            cl,
            Must::Either,
            format_args!("shadow-free-of-the-live-root {root}"),
            || {
                // SAFETY: ShadowFree takes no pointer.
                ok(unsafe { raw_syscall(Syscall::ShadowFree as u64, u64::from(root), 0, 0) })
            },
        );
    }
    // Handles go 0..MAX_SHADOW_TABLES: a bitmap of what we hold.
    let mut held = [0u64; MAX_SHADOW_TABLES as usize / 64];
    let mut count = 0u32;
    c.attempt(
        cl,
        Must::Refuse,
        format_args!("shadow-alloc-level-1-beyond-{MAX_SHADOW_TABLES}-tables"),
        || {
            for _ in 0..MAX_SHADOW_TABLES + 64 {
                let Some(h) = shadow_alloc(1) else {
                    return false;
                };
                if h < MAX_SHADOW_TABLES {
                    held[h as usize / 64] |= 1 << (h % 64);
                }
                count += 1;
            }
            true
        },
    );
    line!("attack: exhaustion: held {count} level-1 tables");
    for (i, w) in held.iter().enumerate() {
        for b in 0..64 {
            if w & 1 << b != 0 {
                // SAFETY: ShadowFree takes no pointer.
                let _ =
                    unsafe { raw_syscall(Syscall::ShadowFree as u64, (i * 64 + b) as u64, 0, 0) };
            }
        }
    }
    for level in [2u64, 3, 4, 1] {
        c.attempt(
            cl,
            Must::Accept,
            format_args!("shadow-alloc-level-{level}-after-freeing-all"),
            || match shadow_alloc(level) {
                Some(h) => {
                    // SAFETY: ShadowFree takes no pointer.
                    let _ = unsafe { raw_syscall(Syscall::ShadowFree as u64, u64::from(h), 0, 0) };
                    true
                }
                None => false,
            },
        );
    }
}

// ---------------------------------------------------------------------
// FPU

/// The server executes x87 and SSE instructions: the stub must run servers
/// with CR0.TS|EM so that they fault instead of reading the guest's (or
/// another task's) FPU state. Each attempt that does not fault is an
/// escape; one that faults ends the VM (`the ... faulted`), which
/// `splitvisor attack` counts as refused.
pub fn fpu(c: &mut Campaign) {
    let cl = Class::Fpu;
    c.attempt(cl, Must::Refuse, format_args!("x87-fnstenv"), || {
        let mut env = [0u8; 28];
        // SAFETY: FNSTENV stores 28 bytes at rdi, our buffer. Encoded as
        // bytes: the target has no x87 feature for the assembler.
        unsafe {
            core::arch::asm!(".byte 0xd9, 0x37", in("rdi") env.as_mut_ptr(), options(nostack));
        }
        line!(
            "attack: fpu: x87 environment read: fcw={:#x}",
            u16::from_le_bytes([env[0], env[1]])
        );
        true
    });
    c.attempt(cl, Must::Refuse, format_args!("sse-movq-rax-xmm0"), || {
        let v: u64;
        // SAFETY: MOVQ rax, xmm0 (66 48 0F 7E C0) only reads xmm0.
        unsafe {
            core::arch::asm!(".byte 0x66, 0x48, 0x0f, 0x7e, 0xc0", out("rax") v, options(nostack, nomem));
        }
        line!("attack: fpu: xmm0 read: {v:#x}");
        true
    });
}

/// IN and OUT on host ports: the hostile servers are granted none (the
/// manifest's `Rights::ports`), so each must #GP through the TSS's I/O
/// permission bitmap (SDM vol. 1, 19.5.2) and the stub must stop the VM
/// with the fault, not let the access through. The ports are the stub's
/// own (console, PIC, PIT, debug-exit) and a disk controller's that some
/// other task could be granted. Part of the hostile vmm-server's FPU boot:
/// each ends the run.
pub fn port_io(c: &mut Campaign) {
    let cl = Class::PortIo;
    // IN from the stub's console, OUT to the 8259's mask, IN from an ATA
    // status port some disk server may own.
    for (port, out) in [(0x3fdu16, false), (0x21, true), (0x1f7, false)] {
        c.attempt(cl, Must::Refuse, format_args!("{}-{port:#x}", if out { "out" } else { "in" }), || {
            if out {
                // SAFETY: OUT has no memory effects; without the grant it
                // faults. 0xff would mask every host IRQ.
                unsafe {
                    core::arch::asm!("out dx, al", in("dx") port, in("al") 0xffu8, options(nomem, nostack))
                };
                line!("attack: portio: wrote port {port:#x}");
            } else {
                let v: u8;
                // SAFETY: IN has no memory effects; without the grant it faults.
                unsafe {
                    core::arch::asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack))
                };
                line!("attack: portio: read {v:#x} from port {port:#x}");
            }
            true
        });
    }
    interrupt_flag(c);
}

/// Servers run with interrupts on (the watchdog's tick): a server must not
/// turn them off or forge a host interrupt. `int 0x20` (the timer's vector
/// since the stub moved the 8259s) must #GP on the gate's DPL 0, CLI must
/// #GP at IOPL 0 (SDM vol. 1, 18.3); each ends the run. POPF with IF clear
/// leaves IF unchanged at CPL 3 > IOPL, without a fault: refused when IF
/// is still set afterwards.
fn interrupt_flag(c: &mut Campaign) {
    let cl = Class::PortIo;
    c.attempt(cl, Must::Refuse, format_args!("int-0x20"), || {
        // SAFETY: an interrupt gate the stub gives DPL 0; from ring 3 it
        // faults before anything runs.
        unsafe { core::arch::asm!("int 0x20", options(nomem, nostack)) };
        line!("attack: portio: int 0x20 reached the timer's handler");
        true
    });
    c.attempt(cl, Must::Refuse, format_args!("cli"), || {
        // SAFETY: CLI only changes IF; at CPL 3 > IOPL it faults.
        unsafe { core::arch::asm!("cli", options(nomem, nostack)) };
        line!("attack: portio: cli ran");
        true
    });
    c.attempt(cl, Must::Refuse, format_args!("popf-if-clear"), || {
        let flags: u64;
        // SAFETY: pushes and pops one word of the server's own stack; POPF
        // with IF clear changes only IF, and only where IOPL allows.
        unsafe {
            core::arch::asm!(
                "pushfq",
                "and qword ptr [rsp], ~0x200",
                "popfq",
                "pushfq",
                "pop {}",
                out(reg) flags,
            );
        }
        let cleared = flags & 0x200 == 0;
        if cleared {
            line!("attack: portio: popf cleared IF");
            // Back on, if the attempt worked: the run goes on.
            // SAFETY: STI only sets IF.
            unsafe { core::arch::asm!("sti", options(nomem, nostack)) };
        }
        cleared
    });
}

// ---------------------------------------------------------------------
// Random resumes (their own boot, `BOOT_RANDOM`)
//
// The oracle: a draw the ABI forbids (ipc-proto's `Resume` documentation
// and the manuals: reserved bits, a RIP the mode cannot hold, an event
// type or vector that does not exist, an interrupt the guest masks, a
// paging state off the allowlist) must be refused; any other may be
// refused or accepted, but an accepted one must ENTER the guest. A server
// that gets an exit back from `VcpuRun` knows the guest entered; when the
// entry fails the stub ends the run (`vm failed: VMRUN failed its
// consistency checks`, `... VM entry failed ...`), and `splitvisor attack`
// counts that as an escape of this class: the validator accepted a resume
// the CPU refuses. Every draw is made where the guest is pinned: at an
// exit whose instruction exits again when it is re-run (a #PF the server
// does not fix, an intercepted instruction), or at the harness's HLT.

/// Draws per server (`--short`: fewer).
fn random_draws(c: &Campaign) -> u32 {
    if c.short() {
        48
    } else {
        240
    }
}

const CR0_PE: u64 = 1;
const CR0_NW: u64 = 1 << 29;
const CR0_CD: u64 = 1 << 30;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// CR0 bits a paging draw toggles (MP EM TS ET NE WP AM, and CD with or
/// without NW below); PE and PG stay as the guest has them.
const CR0_TOGGLES: [u64; 7] = [1 << 1, 1 << 2, 1 << 3, 1 << 4, 1 << 5, 1 << 16, 1 << 18];
/// CR4 bits a paging draw toggles: VME PVI TSD DE PSE MCE PGE PCE OSFXSR
/// OSXMMEXCPT UMIP FSGSBASE OSXSAVE SMEP SMAP (PAE stays).
const CR4_TOGGLES: [u64; 15] = [
    1 << 0,
    1 << 1,
    1 << 2,
    1 << 3,
    1 << 4,
    1 << 6,
    1 << 7,
    1 << 8,
    1 << 9,
    1 << 10,
    1 << 11,
    1 << 16,
    1 << 18,
    1 << 20,
    1 << 21,
];
/// CR4 bits no shadowed guest may have: LA57 VMXE SMXE 15 PCIDE KL PKE
/// CET PKS (and 25..63, reserved).
const CR4_FORBIDDEN: [u32; 9] = [12, 13, 14, 15, 17, 19, 22, 23, 24];
/// EFER: SCE and NXE toggle.
const EFER_TOGGLES: [u64; 2] = [1, 1 << 11];

/// The CR4 bits this CPU has, from CPUID (SDM vol. 2A, CPUID; APM vol. 3,
/// E.3): VME/PVI, DE, MCE, PGE, OSFXSR, OSXMMEXCPT, OSXSAVE from leaf 1,
/// FSGSBASE, SMEP, SMAP, UMIP from leaf 7; TSD and PCE always. PSE is left
/// out: the shadow tables never need it.
fn cpu_cr4_features() -> u64 {
    let l1 = core::arch::x86_64::__cpuid(1);
    let max = core::arch::x86_64::__cpuid(0).eax;
    let l7 = if max >= 7 {
        core::arch::x86_64::__cpuid_count(7, 0)
    } else {
        core::arch::x86_64::CpuidResult {
            eax: 0,
            ebx: 0,
            ecx: 0,
            edx: 0,
        }
    };
    let has = |w: u32, bit: u32, f: u64| if w >> bit & 1 != 0 { f } else { 0 };
    (1 << 2 | 1 << 8)
        | has(l1.edx, 1, 1 | 1 << 1)
        | has(l1.edx, 2, 1 << 3)
        | has(l1.edx, 7, 1 << 6)
        | has(l1.edx, 13, 1 << 7)
        | has(l1.edx, 24, 1 << 9)
        | has(l1.edx, 25, 1 << 10)
        | has(l1.ecx, 26, 1 << 18)
        | has(l7.ebx, 0, 1 << 16)
        | has(l7.ebx, 7, 1 << 20)
        | has(l7.ebx, 20, 1 << 21)
        | has(l7.ecx, 2, 1 << 11)
}

/// The guest-physical page where the vmm-server's harness lives: the
/// stub's initial GDTR and IDTR both have base 0 (limit 0xffff), so a GDT
/// with flat code (0x08) and data (0x10) descriptors and an IDT whose
/// gates 0 and 3..=255 lead to `HARNESS_HANDLER` make every injected
/// event deliverable (1 and 2 overlap the descriptors: their delivery
/// raises #GP, which is deliverable).
pub const HARNESS_HANDLER: u64 = 0x800;

/// The harness bytes for guest-physical 0..0x803: GDT/IDT, then the
/// handler `hlt; jmp $-3` (HLT exits).
pub fn harness(write: &mut dyn FnMut(u64, &[u8])) {
    let gate = |v: u64| -> u64 {
        let off = HARNESS_HANDLER;
        let low = (0x08 << 16) | (off & 0xffff);
        let high = (off & 0xffff_0000) | 0xee00;
        let _ = v;
        low | high << 32
    };
    for v in 0..256u64 {
        let d = match v {
            1 => 0x00cf_9a00_0000_ffff,
            2 => 0x00cf_9200_0000_ffff,
            _ => gate(v),
        };
        write(v * 8, &d.to_le_bytes());
    }
    write(HARNESS_HANDLER, &[0xf4, 0xeb, 0xfd]);
}

/// The exit the stub wrote in this server's VCPU page.
fn latest_exit() -> ExitRecord {
    // SAFETY: the stub maps the VCPU page read-write for exit handlers
    // and wrote the exit before `VcpuRun` returned.
    unsafe { (&raw const (*sys::vcpu_page()).exit).read_volatile() }
}

/// The hostile mmu-server's draws, at its first exit under shadow
/// paging: `SET_PAGING` states on the root the guest runs on (`base`,
/// what the mmu-server last loaded), with allowlisted CR0/CR4/EFER bits
/// toggled and now and then a forbidden one, and PAE PDPTEs with random
/// flag bits in slot 3 of the root. Returns the latest exit (the guest
/// is pinned: the server installs nothing, so its access faults again).
pub fn mmu_random(c: &mut Campaign, base: PagingState, first: ExitRecord) -> ExitRecord {
    let cl = Class::RandomResumes;
    let n = random_draws(c);
    line!(
        "attack: random-resumes mmu seed={} draws={n} base cr0={:#x} cr4={:#x} efer={:#x} root={}",
        c.seed(),
        base.cr0,
        base.cr4,
        base.efer,
        base.root
    );
    let mut t = Tables::new();
    let pd = t.alloc(2);
    let dead = t.alloc(3);
    if let Some(d) = dead {
        t.free(d);
    }
    let pae = base.efer & EFER_LME == 0;
    let have_cr4 = cpu_cr4_features();
    let mut latest = first;
    for _ in 0..n {
        let mut p = base;
        let mut forbidden: Option<&str> = None;
        for b in CR0_TOGGLES {
            if c.one_in(4) {
                p.cr0 ^= b;
            }
        }
        match c.below(8) {
            0 => p.cr0 |= CR0_CD,
            1 => p.cr0 |= CR0_CD | CR0_NW,
            _ => {}
        }
        for b in CR4_TOGGLES {
            // Near-legal: a bit this CPU lacks (CPUID) is toggled rarely.
            let odds = if have_cr4 & b != 0 { 4 } else { 24 };
            if c.one_in(odds) {
                p.cr4 ^= b;
            }
        }
        for b in EFER_TOGGLES {
            if c.one_in(3) {
                p.efer ^= b;
            }
        }
        if c.one_in(6) {
            let what = c.below(10);
            let bit = c.below(64) as u32;
            match what {
                0 => {
                    // A CR0 bit no manual defines.
                    let b = [6u32, 7, 12, 15, 17, 19, 28, 32, 40, 63][(bit % 10) as usize];
                    p.cr0 |= 1 << b;
                    forbidden = Some("cr0-reserved");
                }
                1 => {
                    p.cr0 = (p.cr0 & !CR0_CD) | CR0_NW;
                    forbidden = Some("cr0-nw-without-cd");
                }
                2 | 3 => {
                    p.cr4 |= 1 << CR4_FORBIDDEN[(bit % 9) as usize];
                    forbidden = Some("cr4-off-the-allowlist");
                }
                4 => {
                    p.cr4 |= 1 << (25 + bit % 39);
                    forbidden = Some("cr4-reserved");
                }
                5 => {
                    let b = [1u32, 2, 3, 4, 5, 6, 7, 9, 16, 20, 31, 48, 63][(bit % 13) as usize];
                    p.efer |= 1 << b;
                    forbidden = Some("efer-reserved");
                }
                6 => {
                    p.cr0 &= !CR0_PG;
                    forbidden = Some("pg-clear");
                }
                7 => {
                    p.cr4 &= !CR4_PAE;
                    forbidden = Some("pae-clear");
                }
                8 => {
                    p.efer ^= if bit & 1 == 0 { EFER_LME } else { EFER_LMA };
                    forbidden = Some("lme-lma-disagree");
                }
                _ => {
                    p.root = match (bit % 3, pd, dead) {
                        (0, Some(h), _) => h,
                        (1, _, Some(h)) => h,
                        _ => u32::MAX,
                    };
                    forbidden = Some("root-not-the-mode's-level");
                }
            }
        }
        if c.one_in(40) {
            // A reserved flag (bit 0, INTERCEPT_INVLPG, is allowed).
            p.flags = 2 << c.below(30);
            forbidden = Some("paging-reserved");
        }
        // The oracle, from the ABI: PG and PAE set, PE with LME, LMA =
        // LME, NW only with CD, the root the mode's level (the root's own
        // handle is).
        if p.cr0 & CR0_PG == 0
            || p.cr4 & CR4_PAE == 0
            || (p.efer & EFER_LME != 0) != (p.efer & EFER_LMA != 0)
            || p.efer & EFER_LME != 0 && p.cr0 & CR0_PE == 0
            || p.cr0 & CR0_NW != 0 && p.cr0 & CR0_CD == 0
        {
            forbidden = forbidden.or(Some("paging-combination"));
        }
        let mut flags = ResumeFlags::SET_PAGING;
        let mut r = base_resume(ResumeFlags::empty());
        if c.one_in(2) {
            flags |= ResumeFlags::FLUSH_NON_GLOBAL;
        }
        if c.one_in(4) {
            flags |= ResumeFlags::SET_CR2;
            r.cr2 = c.draw();
        }
        r.flags = flags.bits();
        r.paging = p;
        // A PAE PDPTE with random flags in the root's slot 3 (3-4 GiB,
        // which the probe never touches): VM entry loads the four PDPTEs
        // without EPT and checks their reserved bits.
        let pdpte = match pd {
            Some(h) if pae && forbidden.is_none() && c.one_in(4) => {
                let mut e = u64::from(h) << 12 | 1;
                for b in [1u32, 2, 3, 4, 5, 6, 8, 9, 10, 11, 63] {
                    if c.one_in(4) {
                        e |= 1 << b;
                    }
                }
                if c.one_in(6) {
                    e |= 1 << (52 + c.below(11));
                }
                Some(e)
            }
            _ => None,
        };
        let must = if forbidden.is_some() {
            Must::Refuse
        } else {
            Must::Either
        };
        let mut entered = None;
        c.attempt(
            cl,
            must,
            format_args!(
                "set-paging cr0={:#x} cr4={:#x} efer={:#x} root={} paging-flags={:#x} flags={:#x} cr2={:#x} pdpte3={:#x} forbidden={}",
                p.cr0,
                p.cr4,
                p.efer,
                p.root,
                p.flags,
                r.flags,
                r.cr2,
                pdpte.unwrap_or(0),
                forbidden.unwrap_or("-")
            ),
            || {
                if let Some(e) = pdpte {
                    if !install(&[ins(base.root, 3, 3, e)], None) {
                        return false;
                    }
                }
                let ok = resume(&r);
                if ok {
                    entered = Some(latest_exit());
                }
                if pdpte.is_some() {
                    install(&[ins(base.root, 3, 3, 0)], None);
                }
                ok
            },
        );
        if let Some(e) = entered {
            latest = e;
        }
    }
    t.free_all();
    latest
}

const RFLAGS_TF: u64 = 1 << 8;
const RFLAGS_IF: u64 = 1 << 9;
const RFLAGS_VM: u64 = 1 << 17;
/// RFLAGS bits a draw may set: CF PF AF ZF SF TF IF DF OF IOPL NT RF AC
/// VIF VIP ID (bit 1 always; VM as the guest has it).
const RFLAGS_LEGAL: u64 = 1
    | 1 << 2
    | 1 << 4
    | 1 << 6
    | 1 << 7
    | 1 << 9
    | 1 << 10
    | 1 << 11
    | 3 << 12
    | 1 << 14
    | 1 << 16
    | 1 << 18
    | 1 << 19
    | 1 << 20
    | 1 << 21;

/// Whether an exit says the guest shut down (SVM SHUTDOWN, VMX triple fault).
fn shut_down(e: &ExitRecord) -> bool {
    if e.arch == ipc_proto::VcpuArch::Vmx as u32 {
        e.exit_code & 0xffff == 2
    } else {
        e.exit_code == ipc_proto::vcpu::svm_exit::SHUTDOWN
    }
}

/// The hostile vmm-server's draws, at its first exit (`first`, pinned: an
/// intercepted instruction it does not emulate): random `SET_RFLAGS`,
/// `SET_RIP`, `INJECT_EVENT`, `REQUEST_INTERRUPT_WINDOW` and `SET_GPRS`,
/// combined, each entry bounded by an exit deadline. The harness
/// ([`harness`], written by the caller) makes injected events land on a
/// HLT. Between draws the guest stays where its last exit left it, or a
/// draw puts it back at `first`. Returns the latest exit.
pub fn vmm_random(c: &mut Campaign, first: ExitRecord, tsc_hz: u64, shadow: bool) -> ExitRecord {
    let cl = Class::RandomResumes;
    let n = random_draws(c);
    line!(
        "attack: random-resumes vmm seed={} draws={n} at exit {:#x} rip={:#x} rflags={:#x}",
        c.seed(),
        first.exit_code,
        first.regs.rip,
        first.regs.rflags
    );
    let slice = if tsc_hz == 0 { 1_000_000 } else { tsc_hz / 100 };
    let mut cur = first;
    for _ in 0..n {
        let mut r = base_resume(ResumeFlags::empty());
        let mut flags = ResumeFlags::SET_EXIT_DEADLINE;
        r.regs = cur.regs;
        let mut forbidden: Option<&str> = None;
        let restore = c.one_in(3);
        if restore {
            flags |= ResumeFlags::SET_GPRS | ResumeFlags::SET_RIP | ResumeFlags::SET_RFLAGS;
            r.regs = first.regs;
        } else if c.one_in(6) {
            flags |= ResumeFlags::SET_GPRS;
            r.regs.rax = c.draw();
        }
        if c.one_in(2) {
            flags |= ResumeFlags::SET_RIP;
            let x = c.below(20);
            r.regs.rip = match x {
                0..=7 => first.regs.rip,
                8..=11 => HARNESS_HANDLER,
                12..=13 if first.next_rip != 0 => first.next_rip,
                14 => 0xffff_fff0,
                15 => first.regs.rip + 1,
                16 => {
                    forbidden = Some("rip-above-4g");
                    1 << 32 | first.regs.rip
                }
                17 => {
                    forbidden = Some("rip-non-canonical");
                    0x8000_0000_0000_0000 | first.regs.rip
                }
                18 => {
                    forbidden = Some("rip-high-half");
                    0xffff_ffff_8000_0000 | first.regs.rip
                }
                _ => first.regs.rip,
            };
        }
        if c.one_in(2) || restore {
            flags |= ResumeFlags::SET_RFLAGS;
            let mut f = 2 | c.draw() & RFLAGS_LEGAL | cur.regs.rflags & RFLAGS_VM;
            if !c.one_in(6) {
                f &= !RFLAGS_TF;
            }
            if c.one_in(12) {
                match c.below(4) {
                    0 => f &= !2,
                    1 => f |= 1 << [3u64, 5, 15][c.below(3) as usize],
                    2 => f ^= RFLAGS_VM,
                    _ => f |= 1 << (22 + c.below(42)),
                }
                forbidden = Some("rflags");
            }
            r.regs.rflags = f;
        }
        if c.one_in(3) {
            flags |= ResumeFlags::INJECT_EVENT;
            let kind = match c.below(20) {
                0..=4 => 0u8,
                5..=6 => 2,
                7..=15 => 3,
                16..=18 => 4,
                _ => [1u8, 5, 6, 7][c.below(4) as usize],
            };
            if kind == 0 && !c.one_in(4) {
                if !flags.contains(ResumeFlags::SET_RFLAGS) {
                    r.regs.rflags = cur.regs.rflags;
                    flags |= ResumeFlags::SET_RFLAGS;
                }
                r.regs.rflags |= RFLAGS_IF;
            }
            let vector = match kind {
                2 if !c.one_in(10) => 2,
                3 if c.one_in(10) => [2u8, 32, 255][c.below(3) as usize],
                3 => {
                    let v = c.below(31) as u8;
                    if v >= 2 {
                        v + 1
                    } else {
                        v
                    }
                }
                _ if c.one_in(8) => c.below(32) as u8,
                _ => 32 + c.below(224) as u8,
            };
            let with_code = matches!(vector, 8 | 10..=14 | 17 | 21 | 29 | 30) && kind == 3;
            let has_error_code = match c.below(24) {
                0 => 2,
                1..=2 => 1,
                _ if with_code && !c.one_in(4) => 1,
                _ => 0,
            };
            let reserved = u8::from(c.one_in(30));
            r.event = EventInjection {
                vector,
                kind,
                has_error_code,
                reserved,
                error_code: c.draw() as u32,
            };
            let final_if = if flags.contains(ResumeFlags::SET_RFLAGS) {
                r.regs.rflags
            } else {
                cur.regs.rflags
            } & RFLAGS_IF
                != 0;
            let in_interrupt_shadow =
                cur.interrupt_shadow != 0 && !flags.contains(ResumeFlags::SET_RIP);
            let bad = match kind {
                0 => (!final_if || in_interrupt_shadow).then_some("interrupt-the-guest-masks"),
                2 => (vector != 2 || in_interrupt_shadow).then_some("nmi"),
                3 => (vector >= 32 || vector == 2).then_some("exception-vector"),
                4 => None,
                _ => Some("event-type"),
            }
            .or((has_error_code > 1 || has_error_code == 1 && !with_code).then_some("error-code"))
            .or((reserved != 0).then_some("event-reserved"));
            forbidden = forbidden.or(bad);
        }
        // VM entry's interrupt-shadow rules (SDM vol. 3C, 27.3.1.5), as
        // the ABI documents them: TF and IF stay while the shadow lasts.
        let in_interrupt_shadow =
            cur.interrupt_shadow != 0 && !flags.contains(ResumeFlags::SET_RIP);
        if flags.contains(ResumeFlags::SET_RFLAGS)
            && in_interrupt_shadow
            && (r.regs.rflags ^ cur.regs.rflags) & (RFLAGS_TF | RFLAGS_IF) != 0
        {
            forbidden = forbidden.or(Some("tf-if-change-in-interrupt-shadow"));
        }
        if c.one_in(4) {
            flags |= ResumeFlags::REQUEST_INTERRUPT_WINDOW;
        }
        if c.one_in(10) {
            // XCR0: x87, SSE, AVX in every combination, or one other bit.
            flags |= ResumeFlags::SET_XCR0;
            r.xcr0 = match c.below(10) {
                0..=7 => c.below(8),
                _ => 1 << c.below(64) | 3,
            };
            if !xcr0_loadable(r.xcr0) {
                forbidden = forbidden.or(Some("xcr0"));
            }
        }
        if c.one_in(10) {
            // Any TSC offset: guest-visible time only, nothing to refuse.
            flags |= ResumeFlags::SET_TSC_OFFSET;
            r.tsc_offset = c.draw();
        }
        let mut bits = flags.bits();
        if c.one_in(40) {
            bits |= 1 << (12 + c.below(20));
            forbidden = Some("unknown-flag");
        } else if c.one_in(40) {
            bits |= ResumeFlags::SET_PAGING.bits();
            // Under nested paging only CR4 counts: one outside the allowlist.
            let (bit, _) = NESTED_CR4_REFUSED[c.below(5) as usize];
            r.paging = PagingState {
                cr0: 0x8000_0011,
                cr4: if shadow { 0x20 } else { 0x20 | bit },
                efer: 0,
                root: c.below(4) as u32,
                flags: 0,
            };
            forbidden = Some("set-paging-from-the-vmm-server");
        }
        r.flags = bits;
        r.exit_deadline = rdtsc().wrapping_add(slice);
        let must = if forbidden.is_some() {
            Must::Refuse
        } else {
            Must::Either
        };
        let e = r.event;
        let mut entered = None;
        c.attempt(
            cl,
            must,
            format_args!(
                "flags={:#x} rip={:#x} rflags={:#x} event=type:{},vector:{},has-ec:{},ec:{:#x},reserved:{} rax={:#x} guest-rflags={:#x} shadow={} forbidden={}",
                r.flags,
                r.regs.rip,
                r.regs.rflags,
                e.kind,
                e.vector,
                e.has_error_code,
                e.error_code,
                e.reserved,
                r.regs.rax,
                cur.regs.rflags,
                cur.interrupt_shadow,
                forbidden.unwrap_or("-")
            ),
            || {
                let ok = resume(&r);
                if ok {
                    entered = Some(latest_exit());
                }
                ok
            },
        );
        if let Some(e) = entered {
            if shut_down(&e) {
                line!(
                    "attack: random-resumes: the guest shut down (exit {:#x}, rip={:#x}) after an accepted draw: it entered; ending this boot",
                    e.exit_code,
                    e.regs.rip
                );
                sys::vm_fail();
            }
            cur = e;
        }
    }
    cur
}

/// Whether the stub must take `value` for XCR0: x87 set, AVX only with
/// SSE, every bit among x87, SSE and AVX and in this CPU's CPUID 0xD.0
/// (SDM vol. 2C, XSETBV); nothing without XSAVE.
fn xcr0_loadable(value: u64) -> bool {
    use core::arch::x86_64::__cpuid_count;
    let xsave = __cpuid_count(0, 0).eax >= 0xd && __cpuid_count(1, 0).ecx & (1 << 26) != 0;
    let supported = if xsave {
        u64::from(__cpuid_count(0xd, 0).eax) & 7
    } else {
        0
    };
    value & !supported == 0 && value & 1 != 0 && (value & 4 == 0 || value & 2 != 0)
}

fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no memory effects; the stub leaves CR4.TSD clear.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// The resume that puts the guest back at `first` (where the draws began)
/// under `answer`, the server's own resume for `first`: registers, RIP and
/// RFLAGS from `answer` where it sets them, from `first` otherwise, and no
/// exit deadline unless `answer` names one.
pub fn restore_after_draws(first: &ExitRecord, answer: &Resume) -> Resume {
    let f = ResumeFlags::from_bits_truncate(answer.flags);
    let mut r = *answer;
    if !f.contains(ResumeFlags::SET_GPRS) {
        r.regs = first.regs;
    }
    if !f.contains(ResumeFlags::SET_RIP) {
        r.regs.rip = first.regs.rip;
    }
    if !f.contains(ResumeFlags::SET_RFLAGS) {
        r.regs.rflags = first.regs.rflags;
    }
    if !f.contains(ResumeFlags::SET_EXIT_DEADLINE) {
        r.exit_deadline = 0;
    }
    r.flags = (f
        | ResumeFlags::SET_GPRS
        | ResumeFlags::SET_RIP
        | ResumeFlags::SET_RFLAGS
        | ResumeFlags::SET_EXIT_DEADLINE)
        .bits();
    r.abi_version = ABI_VERSION;
    r
}

// ---------------------------------------------------------------------
// Restart (the mmu-server)

/// Marks what a hostile mmu-server leaves for its next instance in the
/// statistics part of its VCPU page (which the stub keeps across a restart
/// and the next instance overwrites only with its first resume).
const RESTART_MARK: u64 = 0x5254_5352_5456_5353; // "SSVTRSTR"

/// Most handles a faulting instance hands on ([`restart_mark`]).
pub const RESTART_HANDLES: usize = 6;

/// What the last instance left: how many instances faulted before this
/// one, and the handles they held (their paging root first).
pub fn restart_mark() -> (u64, [u64; RESTART_HANDLES]) {
    let page = sys::vcpu_page();
    // SAFETY: only the address of a field of the mapped VCPU page is taken.
    let words = unsafe { &raw const (*page).mmu }.cast::<u64>();
    let read = |i: usize| {
        // SAFETY: the VCPU page is mapped read-write for this task; the
        // statistics part holds more than 2 + RESTART_HANDLES words.
        unsafe { words.add(i).read_volatile() }
    };
    if read(0) != RESTART_MARK {
        return (0, [u64::MAX; RESTART_HANDLES]);
    }
    (read(1), core::array::from_fn(|i| read(2 + i)))
}

/// Leaves `generation` and `handles` for the next instance, then faults
/// (UD2): the stub restarts this server.
pub fn fault_with_mark(generation: u64, handles: &[u64]) -> ! {
    let page = sys::vcpu_page();
    // SAFETY: as in `restart_mark`.
    let words = unsafe { &raw mut (*page).mmu }.cast::<u64>();
    let put = |i: usize, v: u64| {
        // SAFETY: as in `restart_mark`.
        unsafe { words.add(i).write_volatile(v) }
    };
    put(0, RESTART_MARK);
    put(1, generation);
    for i in 0..RESTART_HANDLES {
        put(2 + i, handles.get(i).copied().unwrap_or(u64::MAX));
    }
    line!("attack: mmu faults on purpose (instance {generation})");
    // SAFETY: UD2 raises #UD, which the stub turns into a restart.
    unsafe { core::arch::asm!("ud2", options(noreturn)) }
}

/// A few tables of its own, for [`fault_with_mark`] to hand on.
pub fn restart_tables() -> [u64; 3] {
    core::array::from_fn(|i| shadow_alloc(1 + i as u64).map_or(u64::MAX, u64::from))
}

/// The restarted instance, before it builds tables of its own: the old
/// instance's handles (`old`, its root first) and the first few handles
/// must all be dead -- an install into one, a free of one, a resume that
/// names one as the root are refused; `control`: the guest's registers
/// the stub kept, for a resume that would otherwise be accepted; `shadow`:
/// the root is a shadow root (`SET_PAGING`), else the nested one.
pub fn restart(c: &mut Campaign, old: &[u64], control: GuestControl, shadow: bool) {
    let cl = Class::Restart;
    let mut handles: [u64; 16 + RESTART_HANDLES] = [u64::MAX; 16 + RESTART_HANDLES];
    for (slot, h) in handles.iter_mut().zip(old.iter().copied().chain(0..16u64)) {
        *slot = h;
    }
    for (i, &h) in handles.iter().enumerate() {
        let Ok(table) = u32::try_from(h) else {
            continue;
        };
        if handles[..i].contains(&h) {
            continue;
        }
        c.attempt(
            cl,
            Must::Refuse,
            format_args!("install-into-freed-handle-{table}"),
            || install(&[ins(table, 1, 0, 0)], None),
        );
        c.attempt(
            cl,
            Must::Refuse,
            format_args!("free-freed-handle-{table}"),
            // SAFETY: ShadowFree takes no pointer.
            || ok(unsafe { raw_syscall(Syscall::ShadowFree as u64, h, 0, 0) }),
        );
    }
    if let Some(&root) = old.first().filter(|h| **h != u64::MAX) {
        let mut r = base_resume(if shadow {
            ResumeFlags::SET_PAGING
        } else {
            ResumeFlags::SET_NESTED_ROOT
        });
        r.paging = PagingState {
            cr0: control.cr0,
            cr4: control.cr4,
            efer: control.efer,
            root: u32::try_from(root).unwrap_or(u32::MAX),
            flags: 0,
        };
        c.attempt(
            cl,
            Must::Refuse,
            format_args!("enter-the-guest-on-the-freed-root-{root}"),
            || resume(&r),
        );
    }
}
