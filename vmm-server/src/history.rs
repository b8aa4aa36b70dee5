//! The last few exits, for the report when a VM fails.

use core::fmt;

use ipc_proto::ExitRecord;

use crate::exit::exit_name;

/// How many exits the history keeps.
pub const HISTORY_LEN: usize = 8;

/// What the server answered to an exit, as far as the report cares.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Answer {
    /// Not answered yet (the exit that ended the VM).
    #[default]
    Pending,
    /// Resumed without an event.
    Resumed,
    /// Resumed with this event injected (SVM EVENTINJ type and vector).
    Injected {
        /// Event type (0 external interrupt, 2 NMI, 3 exception, 4 INTn).
        kind: u8,
        /// Vector.
        vector: u8,
        /// Error code, when pushed.
        error_code: Option<u32>,
    },
}

/// What the report shows of one exit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitSummary {
    /// The record's sequence number.
    pub sequence: u64,
    /// The record's raw arch.
    pub arch: u32,
    /// The raw exit code.
    pub code: u64,
    /// The guest RIP.
    pub rip: u64,
    /// EXITINFO1 / qualification.
    pub info1: u64,
    /// EXITINFO2.
    pub info2: u64,
    /// What the server answered.
    pub answer: Answer,
}

impl ExitSummary {
    /// The summary of `rec`.
    pub fn of(rec: &ExitRecord) -> Self {
        Self {
            sequence: rec.sequence,
            arch: rec.arch,
            code: rec.exit_code,
            rip: rec.regs.rip,
            info1: rec.exit_info1,
            info2: rec.exit_info2,
            answer: Answer::Pending,
        }
    }
}

impl fmt::Display for ExitSummary {
    /// `#12 ioio (code 0x7b) rip=0x100020 info1=0x3f80010 info2=0x100021`,
    /// then what was injected: ` -> #PF(0x2)`, ` -> irq vector 0x20`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "#{} {} (code {:#x}) rip={:#x} info1={:#x} info2={:#x}",
            self.sequence,
            exit_name(self.arch, self.code),
            self.code,
            self.rip,
            self.info1,
            self.info2
        )?;
        match self.answer {
            Answer::Injected {
                kind: 3,
                vector,
                error_code,
            } => {
                write!(f, " -> {}", crate::exit::exception_mnemonic(vector))?;
                match error_code {
                    Some(c) => write!(f, "({c:#x})"),
                    None => Ok(()),
                }
            }
            Answer::Injected { kind, vector, .. } => {
                write!(f, " -> event type {kind} vector {vector:#x}")
            }
            Answer::Resumed | Answer::Pending => Ok(()),
        }
    }
}

/// A ring of the last [`HISTORY_LEN`] exits.
#[derive(Clone, Debug, Default)]
pub struct History {
    entries: [ExitSummary; HISTORY_LEN],
    next: usize,
    len: usize,
}

impl History {
    /// Empty.
    pub const fn new() -> Self {
        Self {
            entries: [ExitSummary {
                sequence: 0,
                arch: 0,
                code: 0,
                rip: 0,
                info1: 0,
                info2: 0,
                answer: Answer::Pending,
            }; HISTORY_LEN],
            next: 0,
            len: 0,
        }
    }

    /// Remembers `rec`, forgetting the oldest.
    pub fn push(&mut self, rec: &ExitRecord) {
        self.entries[self.next] = ExitSummary::of(rec);
        self.next = (self.next + 1) % HISTORY_LEN;
        self.len = (self.len + 1).min(HISTORY_LEN);
    }

    /// Records the answer to the newest exit.
    pub fn answer(&mut self, answer: Answer) {
        if self.len > 0 {
            let last = (self.next + HISTORY_LEN - 1) % HISTORY_LEN;
            self.entries[last].answer = answer;
        }
    }

    /// The remembered exits, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &ExitSummary> {
        let start = (self.next + HISTORY_LEN - self.len) % HISTORY_LEN;
        (0..self.len).map(move |i| &self.entries[(start + i) % HISTORY_LEN])
    }

    /// Number of remembered exits.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;
    use std::vec::Vec;

    #[test]
    fn keeps_the_last_eight_oldest_first() {
        let mut h = History::new();
        assert!(h.is_empty());
        for i in 1..=11u64 {
            let rec = ExitRecord {
                sequence: i,
                arch: 1,
                exit_code: 0x7b,
                ..Default::default()
            };
            h.push(&rec);
        }
        let seqs: Vec<u64> = h.iter().map(|e| e.sequence).collect();
        assert_eq!(seqs, [4, 5, 6, 7, 8, 9, 10, 11]);
        assert_eq!(
            h.iter().next().unwrap().to_string(),
            "#4 ioio (code 0x7b) rip=0x0 info1=0x0 info2=0x0"
        );
    }
}
