//! A task's notification word (`ipc_proto::syscall`): `Signal` ORs bits in
//! from the other end of a channel, a host IRQ the task owns sets its
//! line's bit, and `ReplyRecv` reads and clears the whole word at once.

use ipc_proto::syscall::{irq_bit, RECV_NOTIFICATION, SIGNAL_BITS};
use ipc_proto::ErrorCode;

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

    /// `ReplyRecv`'s result for the pending bits, which are cleared; `None`
    /// when there are none.
    pub fn take(&mut self) -> Option<u64> {
        let bits = core::mem::take(&mut self.0);
        (bits != 0).then_some(RECV_NOTIFICATION | u64::from(bits))
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
        n.irq(14);
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

    proptest! {
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
