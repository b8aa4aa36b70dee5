//! The native ring-3 tasks' view of `ipc_proto::inject`: its wire part
//! (the configuration block, [`Injector`], [`Fault`]) and the faults
//! themselves, which are ring-3 instructions and system calls of the
//! native stub.

pub use ipc_proto::inject::*;

/// `ud2`: the fault a `crash` injects.
#[cfg(target_arch = "x86_64")]
pub fn crash() -> ! {
    // SAFETY: UD2 raises #UD; in ring 3 the stub restarts this task or
    // stops the VM. Nothing after it runs.
    unsafe { core::arch::asm!("ud2", options(noreturn)) }
}

/// Spins for ever: the fault a `hang` injects. Every 2^20 turns it makes a
/// system call that returns at once (a `Signal` on no channel, refused),
/// as a server stuck in a loop around `Signal` or `StatsRead` would: the
/// watchdog counts from the server's last *blocking* call, so these do not
/// save it. No PAUSE in the loop: QEMU's TCG leaves its translated code at
/// every PAUSE, so under `-icount` (the emulated clock counts instructions)
/// a PAUSE loop moves the clock, and with it the watchdog, a hundred times
/// slower than a plain jump.
pub fn hang() -> ! {
    loop {
        for _ in 0..1u32 << 20 {
            core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
        }
        #[cfg(target_os = "none")]
        let _ = crate::sys::signal(u64::MAX, 0);
    }
}
