//! A task's notification word (`stub_abi::syscall`): `Signal` ORs bits in
//! from the other end of a channel, a host IRQ the task owns sets its
//! line's bit, and `ReplyRecv` reads and clears the whole word at once.
//! A VCPU task waiting in `VcpuRun` hears its word as a notification exit
//! ([`ExitGate`]).

use ipc_proto::ErrorCode;
use stub_abi::syscall::{irq_bit, RECV_NOTIFICATION, SIGNAL_BITS};

/// The pending notification bits of one task.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Notifications(u32);

impl Notifications {
    /// `Signal`'s bits; only [`SIGNAL_BITS`] may be set.
    pub fn signal(&mut self, bits: u64) -> Result<(), ErrorCode> {
        if bits & !SIGNAL_BITS != 0 {
            return Err(ErrorCode::BadArgument);
        }
        // Within SIGNAL_BITS: fits in 16 bits.
        self.0 |= u32::try_from(bits).map_err(|_| ErrorCode::BadArgument)?;
        Ok(())
    }

    /// Host IRQ line `line` fired.
    pub fn irq(&mut self, line: u8) {
        self.0 |= irq_bit(line);
    }

    /// Whether a `ReplyRecv` would return at once.
    pub fn pending(&self) -> bool {
        self.0 != 0
    }

    /// Whether a host IRQ's bit is among the pending ones.
    pub fn has_irq(&self) -> bool {
        u64::from(self.0) & !SIGNAL_BITS != 0
    }

    /// `ReplyRecv`'s result for the pending bits, which are cleared; `None`
    /// when there are none.
    pub fn take(&mut self) -> Option<u64> {
        self.take_word().map(|w| RECV_NOTIFICATION | u64::from(w))
    }

    /// The pending bits, cleared; `None` when there are none.
    pub fn take_word(&mut self) -> Option<u32> {
        let bits = core::mem::take(&mut self.0);
        (bits != 0).then_some(bits)
    }
}

/// TSC ticks to a timer's ticks, as a 32.32 fixed-point factor: the
/// exit deadline is armed on most exits, and a multiplication costs a few
/// instructions where a 128-bit division is a library call of about 100.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TicksPer(u128);

impl TicksPer {
    /// `hz` timer ticks per `tsc_hz` TSC ticks (`tsc_hz` 0: every
    /// conversion gives 0).
    #[allow(clippy::cast_lossless)] // u128::from is no const fn
    pub const fn new(hz: u64, tsc_hz: u64) -> Self {
        if tsc_hz == 0 {
            return Self(0);
        }
        Self(((hz as u128) << 32) / tsc_hz as u128)
    }

    /// The timer's ticks in `tsc` TSC ticks: never more than
    /// `tsc * hz / tsc_hz`, and less by at most 1 + `tsc` / 2^32.
    pub fn of(self, tsc: u64) -> u128 {
        u128::from(tsc).saturating_mul(self.0) >> 32
    }
}

/// A `ReplyRecv` timeout: the TSC value a waiting task is woken at
/// (`RECV_TIMEOUT`) when nothing else woke it first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WakeAt(u64);

impl WakeAt {
    /// `ticks` TSC ticks after `now` (0: never).
    pub fn after(now: u64, ticks: u64) -> Self {
        Self(if ticks == 0 {
            0
        } else {
            now.saturating_add(ticks).max(1)
        })
    }

    /// The TSC value, if any.
    pub fn at(self) -> Option<u64> {
        (self.0 != 0).then_some(self.0)
    }

    /// The deadline passed at `now`.
    pub fn due(self, now: u64) -> bool {
        self.at().is_some_and(|at| at <= now)
    }

    /// The earlier of two deadlines (`None` is never).
    pub fn earliest(a: Option<u64>, b: Option<u64>) -> Option<u64> {
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// A VCPU task's notification exits (`ipc_proto::exit::stub_exit`): when
/// the guest would be entered and the task waits for an exit with a
/// non-zero word, it gets the word as an exit instead -- at most once
/// between two guest entries, so that a server signalling it in a loop
/// delays the guest by one exit per entry and never starves it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitGate {
    /// It had its notification exit since the guest last ran.
    heard: bool,
}

impl ExitGate {
    /// The word for a notification exit (cleared in `notes`), if it has
    /// bits and the task had none since the last entry.
    pub fn take(&mut self, notes: &mut Notifications) -> Option<u32> {
        if self.heard {
            return None;
        }
        let word = notes.take_word()?;
        self.heard = true;
        Some(word)
    }

    /// The guest is entered.
    pub fn entered(&mut self) {
        self.heard = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn signals_and_irqs_accumulate_until_taken() {
        let mut n = Notifications::default();
        assert!(!n.pending());
        assert_eq!(n.take(), None);
        n.signal(0b101).unwrap();
        n.signal(0b010).unwrap();
        assert!(!n.has_irq());
        n.irq(14);
        assert!(n.has_irq());
        assert!(n.pending());
        assert_eq!(n.take(), Some(RECV_NOTIFICATION | 0b111 | 1 << 30));
        assert_eq!(n.take(), None, "taking clears the word");
    }

    #[test]
    fn irq_bits_cannot_be_signalled() {
        let mut n = Notifications::default();
        assert_eq!(n.signal(1 << 16), Err(ErrorCode::BadArgument));
        assert_eq!(n.signal(u64::MAX), Err(ErrorCode::BadArgument));
        assert_eq!(n, Notifications::default(), "a refused signal sets nothing");
    }

    #[test]
    fn a_timer_rate_converts_like_the_division() {
        let pit = TicksPer::new(1_193_182, 2_000_000_000);
        assert_eq!(pit.of(2_000_000_000), 1_193_181);
        assert_eq!(pit.of(0), 0);
        assert_eq!(TicksPer::new(1_193_182, 0).of(u64::MAX), 0);
        assert_eq!(
            TicksPer::new(3, 1).of(u64::MAX >> 2),
            3 * u128::from(u64::MAX >> 2)
        );
    }

    #[test]
    fn timeouts_fall_due_and_the_earliest_wins() {
        assert_eq!(WakeAt::after(100, 0).at(), None, "0: no timeout");
        assert!(!WakeAt::after(100, 0).due(u64::MAX));
        let w = WakeAt::after(100, 50);
        assert_eq!(w.at(), Some(150));
        assert!(!w.due(149) && w.due(150) && w.due(151));
        assert_eq!(
            WakeAt::after(u64::MAX - 1, 5).at(),
            Some(u64::MAX),
            "saturates"
        );
        assert_eq!(WakeAt::earliest(Some(7), Some(3)), Some(3));
        assert_eq!(WakeAt::earliest(None, Some(3)), Some(3));
        assert_eq!(WakeAt::earliest(None, None), None);
    }

    #[test]
    fn a_notification_exit_at_most_once_between_entries() {
        let mut n = Notifications::default();
        let mut gate = ExitGate::default();
        assert_eq!(gate.take(&mut n), None, "no bits, no exit");
        n.signal(0b11).unwrap();
        n.irq(14);
        assert_eq!(gate.take(&mut n), Some(0b11 | 1 << 30), "the word, read");
        assert_eq!(n, Notifications::default(), "and cleared at once");
        // A hostile peer signals again at once: the guest runs first.
        n.signal(1).unwrap();
        assert_eq!(gate.take(&mut n), None);
        assert!(n.pending(), "the bits wait for the next turn");
        gate.entered();
        assert_eq!(gate.take(&mut n), Some(1));
    }

    proptest! {
        /// Whatever a peer signals, between two entries there is at most
        /// one notification exit, and no bit is lost.
        #[test]
        fn a_signalling_loop_never_starves_the_guest(
            rounds in proptest::collection::vec(proptest::collection::vec(1u64..=SIGNAL_BITS, 0..6), 1..8),
        ) {
            let mut n = Notifications::default();
            let mut gate = ExitGate::default();
            let (mut sent, mut heard) = (0u64, 0u64);
            for signals in &rounds {
                let mut exits = 0;
                for s in signals {
                    n.signal(*s).unwrap();
                    sent |= s;
                    if let Some(w) = gate.take(&mut n) {
                        exits += 1;
                        heard |= u64::from(w);
                    }
                }
                prop_assert!(exits <= 1);
                gate.entered();
            }
            if let Some(w) = gate.take(&mut n) {
                heard |= u64::from(w);
            }
            prop_assert_eq!(heard, sent);
        }

        #[test]
        fn a_timer_rate_is_at_most_a_tick_early(
            hz in 1u64..=1 << 31,
            tsc_hz in 1u64 << 20..=1 << 40,
            tsc: u64,
        ) {
            let exact = u128::from(tsc) * u128::from(hz) / u128::from(tsc_hz);
            let got = TicksPer::new(hz, tsc_hz).of(tsc);
            prop_assert!(got <= exact);
            prop_assert!(exact - got <= 1 + u128::from(tsc >> 32));
        }

        #[test]
        fn take_returns_the_or_of_everything_since_the_last_take(
            signals in proptest::collection::vec(any::<u64>(), 0..8),
            irqs in proptest::collection::vec(0u8..16, 0..4),
        ) {
            let mut n = Notifications::default();
            let mut want = 0u64;
            for s in &signals {
                if n.signal(*s).is_ok() {
                    prop_assert_eq!(s & !SIGNAL_BITS, 0);
                    want |= s;
                }
            }
            for l in &irqs {
                n.irq(*l);
                want |= 1 << (16 + l);
            }
            let got = n.take();
            prop_assert_eq!(got, (want != 0).then_some(RECV_NOTIFICATION | want));
            prop_assert_eq!(n.take(), None);
        }
    }
}
