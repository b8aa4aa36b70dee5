//! `bench-exit-parts`: where the CPU's time goes on the exit path, for
//! `splitvisor bench exits --parts` only. Never in a shipped image: the
//! feature builds a separate stub (`images::build_bench_parts_stub`), and
//! without it this module is not compiled into the stub at all.
//!
//! The stub stamps the TSC at each change of place (VMRUN, #VMEXIT, a trap
//! from ring 3, the return to ring 3, the idle loop) and adds the ticks
//! since the last stamp to the place it left; its final lines give the
//! sums (`[stub] parts: guest=.. exit=.. server=.. call=.. idle=..`). Under
//! QEMU's `-icount` the TSC counts the emulated machine's instructions, so
//! these are instructions per place, and they add up to the whole run's.
//! One exit through the servers is then: `exit` (from the #VMEXIT to the
//! server's first instruction: the record, the switch), `server` (ring 3:
//! the servers' work), `call` (from the server's system call to the
//! VMRUN: the resume's checks, the switch back); in-stub handled exits
//! are all `exit`.

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

/// Where the CPU is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// In the guest: from VMRUN to the #VMEXIT.
    Guest = 0,
    /// In the stub after an exit, until ring 3 or the guest.
    Exit = 1,
    /// In ring 3: the servers.
    Server = 2,
    /// In the stub after a trap from ring 3 (a system call, an IRQ),
    /// until ring 3 or the guest.
    Call = 3,
    /// In the stub's idle loop: nothing can run until an IRQ or a timeout.
    Idle = 4,
}

const PLACES: usize = 5;
const NAMES: [&str; PLACES] = ["guest", "exit", "server", "call", "idle"];
const ALL: [Place; PLACES] = [
    Place::Guest,
    Place::Exit,
    Place::Server,
    Place::Call,
    Place::Idle,
];

/// The ticks spent in each place. Atomics only so that a `static` needs
/// no `unsafe`: `bench exits` boots one host CPU (with several, their
/// stamps would mix; TODO per-CPU sums if the bench ever needs them).
pub struct Parts {
    place: AtomicUsize,
    /// The last stamp; 0 before the first.
    since: AtomicU64,
    ticks: [AtomicU64; PLACES],
}

/// The stub's figures.
pub static PARTS: Parts = Parts::new();

impl Parts {
    #[allow(
        clippy::declare_interior_mutable_const,
        reason = "only to fill the array"
    )]
    const ZERO: AtomicU64 = AtomicU64::new(0);

    pub const fn new() -> Self {
        Self {
            place: AtomicUsize::new(Place::Exit as usize),
            since: AtomicU64::new(0),
            ticks: [Self::ZERO; PLACES],
        }
    }

    /// The CPU moves to `to` at TSC `now`: the ticks since the last stamp
    /// go to the place it leaves, which is returned.
    pub fn go(&self, to: Place, now: u64) -> Place {
        let from = ALL[self.place.load(Relaxed) % PLACES];
        let since = self.since.swap(now, Relaxed);
        if since != 0 {
            self.ticks[from as usize].fetch_add(now.saturating_sub(since), Relaxed);
        }
        self.place.store(to as usize, Relaxed);
        from
    }

    /// The ticks spent in `place` so far.
    pub fn ticks(&self, place: Place) -> u64 {
        self.ticks[place as usize].load(Relaxed)
    }
}

impl Default for Parts {
    fn default() -> Self {
        Self::new()
    }
}

impl core::fmt::Display for Parts {
    /// `guest=N exit=N server=N call=N idle=N`, in TSC ticks.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for (i, (name, place)) in NAMES.iter().zip(ALL).enumerate() {
            let sep = if i == 0 { "" } else { " " };
            write!(f, "{sep}{name}={}", self.ticks(place))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_go_to_the_place_left() {
        let p = Parts::new();
        // The first stamp only starts the clock.
        assert_eq!(p.go(Place::Guest, 100), Place::Exit);
        assert_eq!(p.go(Place::Exit, 130), Place::Guest);
        assert_eq!(p.go(Place::Server, 150), Place::Exit);
        assert_eq!(p.go(Place::Call, 200), Place::Server);
        assert_eq!(p.go(Place::Idle, 210), Place::Call);
        assert_eq!(p.go(Place::Call, 300), Place::Idle);
        p.go(Place::Guest, 305);
        assert_eq!(p.to_string(), "guest=30 exit=20 server=50 call=15 idle=90");
    }

    #[test]
    fn the_sum_is_the_time_between_the_first_and_last_stamps() {
        let p = Parts::new();
        let places = [
            Place::Guest,
            Place::Exit,
            Place::Server,
            Place::Call,
            Place::Idle,
        ];
        let mut now = 1000;
        for i in 0..100usize {
            now += i as u64 % 7 + 1;
            p.go(places[(i * 3) % PLACES], now);
        }
        let sum: u64 = ALL.iter().map(|&pl| p.ticks(pl)).sum();
        assert_eq!(sum, now - 1001);
    }
}
