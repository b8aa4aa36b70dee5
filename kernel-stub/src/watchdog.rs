//! The watchdog: a server that keeps the CPU for [`BUDGET_MS`] without
//! blocking is treated like one that faulted (restarted from its image,
//! or the VM stops for the vmm-server).
//!
//! Servers run with RFLAGS.IF set, so the host timer (the exit deadline's
//! PIT, `deadline.rs`) interrupts them; the stub arms it whenever it hands
//! the CPU to a server and nothing else keeps it counting, and at each tick
//! taken from ring 3 asks [`Watchdog::expired`]. The clock is the TSC from
//! the moment the stub last handed the CPU to the server after it blocked
//! (a `Call`, `VcpuRun` or `ReplyRecv` that waited), a restart or its
//! start: what the guest or other tasks did in between is not charged to
//! the server. A call that returns at once (`Signal`, `StatsRead`, a
//! `ReplyRecv` with bits pending) does not reset it, so a server that
//! loops on such calls starves the guest no longer than one that spins.
//!
//! The budget is TSC time. Under QEMU (`-icount`) and Bochs (`ips`) the
//! TSC counts instructions, so a loaded host cannot make a healthy server
//! look slow; on hardware it is real time. It is far above the longest
//! healthy run measured (README "Isolation experiments": 7.4 ms, the
//! vmm-server loading the guest, up to 22 ms, the mmu-server under shadow
//! paging) and above the disk-driver's own 5 s wait for a disk that does
//! not answer, which ends in a status timeout, not a watchdog restart.

/// The budget of one server run without blocking, in milliseconds.
pub const BUDGET_MS: u64 = 8000;

/// The TSC since the stub last handed the CPU to a server, and the longest
/// run it saw end in a system call (a figure for the statistics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Watchdog {
    /// [`BUDGET_MS`] in TSC ticks; 0: no watchdog (the TSC was not measured).
    budget: u64,
    /// When the running server got the CPU.
    since: u64,
    /// The longest run that ended in a system call, in TSC ticks.
    longest: u64,
    /// Which task ran it (an index into the task table).
    longest_task: usize,
}

impl Watchdog {
    /// A watchdog for a TSC running at `tsc_hz` (0: none).
    pub const fn new(tsc_hz: u64) -> Self {
        Self {
            budget: tsc_hz.saturating_mul(BUDGET_MS) / 1000,
            since: 0,
            longest: 0,
            longest_task: 0,
        }
    }

    /// The stub hands the CPU to a server at `now`.
    pub fn ran(&mut self, now: u64) {
        self.since = now;
    }

    /// Task `task` entered the stub with a system call at `now`.
    pub fn ended(&mut self, task: usize, now: u64) {
        let ran = now.saturating_sub(self.since);
        if ran > self.longest {
            (self.longest, self.longest_task) = (ran, task);
        }
    }

    /// When the running server's budget is spent, if there is a watchdog.
    pub fn at(&self) -> Option<u64> {
        (self.budget != 0).then(|| self.since.saturating_add(self.budget).max(1))
    }

    /// At a timer tick taken from ring 3 at `now`: the milliseconds the
    /// server ran, when that is its budget or more.
    pub fn expired(&self, now: u64, tsc_hz: u64) -> Option<u64> {
        let ran = now.saturating_sub(self.since);
        (self.budget != 0 && ran >= self.budget).then(|| ran / (tsc_hz / 1000).max(1))
    }

    /// The longest run that ended in a system call: TSC ticks and task.
    pub fn longest(&self) -> (u64, usize) {
        (self.longest, self.longest_task)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HZ: u64 = 2_000_000_000;

    #[test]
    fn bites_at_the_budget_and_not_before() {
        let mut w = Watchdog::new(HZ);
        w.ran(1000);
        let budget = HZ / 1000 * BUDGET_MS;
        assert_eq!(w.at(), Some(1000 + budget));
        assert_eq!(w.expired(1000 + budget - 1, HZ), None);
        assert_eq!(w.expired(1000 + budget, HZ), Some(BUDGET_MS));
        // A system call gives the next run a whole budget again.
        w.ended(3, 1000 + budget / 2);
        w.ran(1000 + budget / 2);
        assert_eq!(w.expired(1000 + budget, HZ), None);
        assert_eq!(w.longest(), (budget / 2, 3));
    }

    #[test]
    fn no_tsc_no_watchdog() {
        let mut w = Watchdog::new(0);
        w.ran(5);
        assert_eq!(w.at(), None);
        assert_eq!(w.expired(u64::MAX, 0), None);
    }

    proptest! {
        /// Whatever the TSC does (a clock read before `ran`'s included),
        /// the watchdog bites exactly when the run reached the budget, and
        /// the longest run is the largest that ended.
        #[test]
        fn bites_exactly_at_the_budget(
            hz in 0u64..10_000_000_000,
            since in any::<u64>(),
            runs in proptest::collection::vec((any::<u64>(), 0usize..16), 0..8),
            now in any::<u64>(),
        ) {
            let mut w = Watchdog::new(hz);
            let mut longest = (0, 0);
            for (len, task) in runs {
                w.ran(since);
                let end = since.saturating_add(len);
                w.ended(task, end);
                if end - since > longest.0 {
                    longest = (end - since, task);
                }
            }
            w.ran(since);
            let budget = hz.saturating_mul(BUDGET_MS) / 1000;
            let bitten = w.expired(now, hz).is_some();
            prop_assert_eq!(bitten, budget != 0 && now.saturating_sub(since) >= budget);
            prop_assert_eq!(w.longest(), longest);
            // The timer armed for `at` finds the budget spent there, and
            // not a tick before (unless the sum saturated).
            prop_assert_eq!(w.at().is_some(), budget != 0);
            if let Some(at) = w.at() {
                prop_assert!(w.expired(at, hz).is_some() || at == u64::MAX);
                if at > since.saturating_add(1) && at != u64::MAX {
                    prop_assert!(w.expired(at - 1, hz).is_none());
                }
            }
        }
    }
}
