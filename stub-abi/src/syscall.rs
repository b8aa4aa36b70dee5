//! System calls from ring-3 servers to the stub.
//!
//! Convention: `int 0x80` with the number in `rax` and arguments in `rdi`,
//! `rsi`, `rdx`. The result comes back in `rax`: 0 or a positive value on
//! success, `-(ErrorCode as i64)` on failure. All other registers are
//! preserved.

/// The interrupt vector servers use to call the stub.
pub const SYSCALL_VECTOR: u8 = 0x80;

/// System call numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum Syscall {
    /// Apply the `Resume` in the VCPU page (ignored on the very first call),
    /// run the guest until its next exit, and return with the `ExitRecord` in
    /// the VCPU page. Only the vmm-server may call it.
    VcpuRun = 1,
    /// Write `rsi` bytes at user address `rdi` to the host console.
    ConsoleWrite = 2,
    /// Copy the stub's counters into the VCPU page's `stats`.
    StatsRead = 3,
    /// Stop the VM: the guest ended with status `rdi` (0 is a clean exit).
    /// Does not return.
    VmStop = 4,
    /// Stop the VM because it cannot go on (the server has printed why).
    /// Does not return.
    VmFail = 5,
    /// Send the request in channel `rdi`'s page to the channel's server and
    /// wait for its reply (in the same page). Returns 0, or
    /// `ServerRestarted` if the server faulted (and was restarted) before
    /// it replied.
    Call = 6,
    /// Serve channel `rdi`: reply to the pending call on it (if any; `rdi`
    /// = [`NO_REPLY`] replies to nobody), then wait for the next call on
    /// any channel it serves or for a notification. Returns the channel
    /// number of the new call (below 2^32), or [`RECV_NOTIFICATION`] | the
    /// task's notification word, which the stub reads and clears at once
    /// (pending bits are returned at once, without waiting). A task that
    /// serves no channel, is on none and owns no IRQ cannot be woken:
    /// `NotPermitted`. `rsi` is a timeout in TSC ticks from now (0: none):
    /// when it passes with no call and no notification, the call returns
    /// [`RECV_TIMEOUT`] (ABI 13).
    ReplyRecv = 7,
    /// Allocate a zeroed shadow (or nested) page table of level `rdi`
    /// (1..=4); returns its `TableHandle`. mmu-server only.
    ShadowAlloc = 8,
    /// Free shadow table `rdi`. mmu-server only.
    ShadowFree = 9,
    /// Check and write the batch in the install page; returns the number of
    /// entries written. On `InstallRefused`, the page's `count` holds the
    /// index of the refused entry and `reserved` the `InstallError`.
    MmuInstall = 10,
    /// Flush the guest's TLB before the next entry (its cached nested
    /// translations too: INVEPT on VMX once a nested root is set).
    /// mmu-server only.
    MmuFlush = 11,
    /// Copy up to `rsi` bytes of host-console input to user address `rdi`
    /// without waiting; returns the number of bytes (0 when none).
    ConsoleRead = 12,
    /// mmu-server only: apply the resume in its VCPU page (its paging
    /// state), hand the exit record in its VCPU page to the vmm-server (an
    /// access outside guest RAM, rewritten as a nested page fault at the
    /// guest-physical address), and wait for the next exit, like `VcpuRun`.
    VcpuForward = 13,
    /// OR `rsi` (bits within [`SIGNAL_BITS`]) into the notification word
    /// of the other end of channel `rdi`, of which the caller must be an
    /// end; wakes that task if it waits in `ReplyRecv` (it runs before the
    /// guest is entered again). Returns 0.
    Signal = 14,
    /// Unmask host IRQ line `rdi`, which the caller must own
    /// (`manifest::Rights::irqs`): the stub masked it when it set the
    /// line's bit ([`irq_bit`]) in the caller's notification word.
    /// Returns 0.
    IrqAck = 15,
}

/// `ReplyRecv`'s channel argument that replies to nobody: only wait.
pub const NO_REPLY: u64 = u64::MAX;

/// Set in `ReplyRecv`'s result when it returns notification bits (in the
/// low 32 bits) instead of a call's channel number.
pub const RECV_NOTIFICATION: u64 = 1 << 32;

/// `ReplyRecv`'s result when its timeout passed with no call and no
/// notification: neither a channel number, nor a notification, nor an
/// error.
pub const RECV_TIMEOUT: u64 = 1 << 33;

/// The notification bits `Signal` may set: the low 16. The high 16 are
/// the host IRQ lines' ([`irq_bit`]).
pub use ipc_proto::SIGNAL_BITS;

/// The notification bit the stub sets when host IRQ line `line` (0-15)
/// fires for the task that owns it.
pub const fn irq_bit(line: u8) -> u32 {
    1 << (16 + (line & 15))
}

impl Syscall {
    /// The call for a raw number, if known.
    pub fn from_raw(raw: u64) -> Option<Self> {
        match raw {
            1 => Some(Self::VcpuRun),
            2 => Some(Self::ConsoleWrite),
            3 => Some(Self::StatsRead),
            4 => Some(Self::VmStop),
            5 => Some(Self::VmFail),
            6 => Some(Self::Call),
            7 => Some(Self::ReplyRecv),
            8 => Some(Self::ShadowAlloc),
            9 => Some(Self::ShadowFree),
            10 => Some(Self::MmuInstall),
            11 => Some(Self::MmuFlush),
            12 => Some(Self::ConsoleRead),
            13 => Some(Self::VcpuForward),
            14 => Some(Self::Signal),
            15 => Some(Self::IrqAck),
            _ => None,
        }
    }
}

/// Longest write `ConsoleWrite` accepts in one call.
pub const CONSOLE_WRITE_MAX: u64 = 4096;

pub use ipc_proto::ErrorCode;

/// The native encoding of an [`ErrorCode`] in `rax`: `-(code as i64)`.
pub trait ReturnValue: Sized {
    /// The value a failed call returns in `rax`.
    fn to_return_value(self) -> u64;
    /// The error a raw `rax` carries, or `None` for success.
    fn from_return_value(rax: u64) -> Option<Self>;
}

impl ReturnValue for ErrorCode {
    fn to_return_value(self) -> u64 {
        (-(self as i64)).cast_unsigned()
    }

    fn from_return_value(rax: u64) -> Option<Self> {
        let v = rax.cast_signed();
        if v >= 0 {
            return None;
        }
        Self::ALL.into_iter().find(|c| -(*c as i64) == v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_pinned() {
        assert_eq!(SYSCALL_VECTOR, 0x80);
        assert_eq!(Syscall::VcpuRun as u64, 1);
        assert_eq!(Syscall::ConsoleWrite as u64, 2);
        assert_eq!(Syscall::StatsRead as u64, 3);
        assert_eq!(Syscall::VmStop as u64, 4);
        assert_eq!(Syscall::VmFail as u64, 5);
        for n in 1..=15 {
            assert_eq!(Syscall::from_raw(n).unwrap() as u64, n);
        }
        assert_eq!(Syscall::from_raw(0), None);
        assert_eq!(Syscall::from_raw(16), None);
    }

    #[test]
    fn notification_results_never_look_like_channels_or_errors() {
        let all = RECV_NOTIFICATION | u64::from(u32::MAX);
        assert!(all > ipc_proto::manifest::MAX_CHANNELS as u64);
        assert_eq!(ErrorCode::from_return_value(all), None);
        assert_eq!(irq_bit(0), 1 << 16);
        assert_eq!(irq_bit(15), 1 << 31);
        assert_eq!(u64::from(irq_bit(1)) & SIGNAL_BITS, 0);
        assert_eq!(RECV_TIMEOUT & (RECV_NOTIFICATION | u64::from(u32::MAX)), 0);
        assert_eq!(ErrorCode::from_return_value(RECV_TIMEOUT), None);
    }

    #[test]
    fn error_codes_round_trip_through_rax() {
        for (i, c) in ErrorCode::ALL.into_iter().enumerate() {
            assert_eq!(c as u32, i as u32 + 1);
            assert_eq!(ErrorCode::from_return_value(c.to_return_value()), Some(c));
        }
        assert_eq!(ErrorCode::from_return_value(0), None);
        assert_eq!(ErrorCode::from_return_value(7), None);
    }
}
