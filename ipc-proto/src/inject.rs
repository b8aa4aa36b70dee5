//! Faults injected on purpose, for the isolation experiments (`splitvisor
//! run --inject SERVER:crash@N|hang@N|corrupt@N`, with `@everyN` to repeat).
//!
//! A server that takes part declares the configuration block with
//! [`inject_block!`] and ticks an [`Injector`] at each exit or request it
//! handles; the image builder patches the block in the server's ELF
//! ([`patch`]) after the [`MAGIC`], as `splitvisor attack` configures its
//! hostile servers, so no separate build is needed. The block is all zero
//! (no fault) unless patched.
//!
//! The count is per instance: a restarted server starts again from its
//! image, so `crash@N` fires at the N-th exit of each instance that lives
//! that long, and `every` also after each further N within an instance
//! (`hang` and `corrupt`, which need not restart the server, are where
//! `every` matters). What each fault does:
//! - `crash`: `ud2` (#UD in ring 3);
//! - `hang`: spins, with only system calls that return at once; the stub's watchdog
//!   (`kernel_stub::watchdog`) takes the CPU back after its budget and
//!   handles the server like one that faulted.
//! - `corrupt`: the server scribbles [`GARBAGE`] over the shared state a
//!   restart reads (the mmu-server: the guest's control registers in its
//!   VCPU page; a device server: its channel pages), then executes `ud2`,
//!   so its next instance meets the garbage.
//!
//! The faults themselves (`crash`, `hang`) are the native ring-3 tasks':
//! `stub_abi::inject`.

/// The bytes in front of the configuration in a server's ELF.
pub const MAGIC: [u8; 16] = *b"SVINJECT-CONFIG1";

/// The configuration block: [`MAGIC`], then the fault (one byte, 0: none),
/// `every` (one byte), two zero bytes, N (`u32`, little-endian).
pub const BLOCK_LEN: usize = 24;

/// The pattern a `corrupt` writes.
pub const GARBAGE: u64 = 0xdead_beef_dead_beef;

/// What a server does at its N-th exit or request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Fault {
    /// `ud2`: the stub restarts the server (or stops the VM for the
    /// vmm-server).
    Crash = 1,
    /// Spin for ever (until the stub's watchdog ends it).
    Hang = 2,
    /// Write [`GARBAGE`] over the shared state a restart reads, then `ud2`.
    Corrupt = 3,
}

impl Fault {
    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Crash => "crash",
            Self::Hang => "hang",
            Self::Corrupt => "corrupt",
        }
    }
}

/// One fault to inject: which, at which exit or request, and whether again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Injection {
    /// What happens.
    pub fault: Fault,
    /// At the N-th exit or request (N >= 1).
    pub at: u32,
    /// Again every N after that.
    pub every: bool,
}

impl Injection {
    /// Parses `SERVER:FAULT@N` or `SERVER:FAULT@everyN` into the server's
    /// task name and the injection.
    pub fn parse(arg: &str) -> Result<(&str, Injection), &'static str> {
        let (server, rest) = arg
            .split_once(':')
            .ok_or("--inject wants SERVER:crash@N, SERVER:hang@N or SERVER:corrupt@N")?;
        let (fault, at) = rest
            .split_once('@')
            .ok_or("--inject wants FAULT@N or FAULT@everyN after the server's name")?;
        let fault = match fault {
            "crash" => Fault::Crash,
            "hang" => Fault::Hang,
            "corrupt" => Fault::Corrupt,
            _ => return Err("--inject knows the faults crash, hang and corrupt"),
        };
        let (every, n) = match at.strip_prefix("every") {
            Some(n) => (true, n),
            None => (false, at),
        };
        let at = n
            .parse::<u32>()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or("--inject wants N, a whole number from 1, after @ (or @every)")?;
        if server.is_empty() {
            return Err("--inject wants a server's task name before the colon");
        }
        Ok((server, Injection { fault, at, every }))
    }

    /// The block's bytes after the magic.
    pub fn encode(&self) -> [u8; BLOCK_LEN - MAGIC.len()] {
        let mut b = [0u8; BLOCK_LEN - MAGIC.len()];
        b[0] = self.fault as u8;
        b[1] = u8::from(self.every);
        b[4..8].copy_from_slice(&self.at.to_le_bytes());
        b
    }

    /// The injection in a block's bytes after the magic, if any.
    pub fn decode(b: &[u8]) -> Option<Self> {
        let fault = match *b.first()? {
            1 => Fault::Crash,
            2 => Fault::Hang,
            3 => Fault::Corrupt,
            _ => return None,
        };
        let at = u32::from_le_bytes(b.get(4..8)?.try_into().ok()?);
        (at >= 1).then_some(Self {
            fault,
            at,
            every: *b.get(1)? != 0,
        })
    }
}

impl core::fmt::Display for Injection {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let every = if self.every { "every" } else { "" };
        write!(f, "{}@{every}{}", self.fault.name(), self.at)
    }
}

/// Sets the block in `elf` (a server's executable) to `inj`.
pub fn patch(elf: &mut [u8], inj: &Injection) -> Result<(), &'static str> {
    crate::config_block::patch(
        elf,
        &MAGIC,
        &inj.encode(),
        "this server takes no injected faults (no configuration block in its ELF)",
    )
}

/// Counts a server's exits or requests and says when to fail.
#[derive(Clone, Copy, Debug, Default)]
pub struct Injector {
    inj: Option<Injection>,
    count: u32,
}

impl Injector {
    /// From the configuration block (read once, volatile, by the caller).
    pub fn new(block: &[u8; BLOCK_LEN]) -> Self {
        Self {
            inj: Injection::decode(&block[MAGIC.len()..]),
            count: 0,
        }
    }

    /// From the block [`inject_block!`] declared, as the image builder
    /// patched it ([`read_block`]).
    pub fn from_block(block: &[u8; BLOCK_LEN]) -> Self {
        Self::new(&read_block(block))
    }

    /// The injection configured, if any.
    pub fn injection(&self) -> Option<Injection> {
        self.inj
    }

    /// No more faults (a one-shot fault already fired in an earlier instance).
    pub fn disarm(&mut self) {
        self.inj = None;
    }

    /// One more exit or request: the fault to inject now, if any.
    pub fn tick(&mut self) -> Option<Fault> {
        let inj = self.inj?;
        self.count = self.count.saturating_add(1);
        let now = if inj.every {
            self.count.is_multiple_of(inj.at)
        } else {
            self.count == inj.at
        };
        now.then_some(inj.fault)
    }
}

/// Declares a server's configuration block, `static $name: [u8;
/// BLOCK_LEN]`: the magic and zeros, patched by the image builder. Read it
/// with `read_volatile` (the compiler would fold the zeros).
#[macro_export]
macro_rules! inject_block {
    ($name:ident) => {
        $crate::__config_block!($name, $crate::inject::BLOCK_LEN, $crate::inject::MAGIC);
    };
}

pub use crate::config_block::read as read_block;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_parse() {
        let (s, i) = Injection::parse("mmu-server:crash@every2000").unwrap();
        assert_eq!(s, "mmu-server");
        assert_eq!(
            i,
            Injection {
                fault: Fault::Crash,
                at: 2000,
                every: true
            }
        );
        let (s, i) = Injection::parse("uart-server:corrupt@3").unwrap();
        assert_eq!(
            (s, i.fault, i.at, i.every),
            ("uart-server", Fault::Corrupt, 3, false)
        );
        assert!(Injection::parse("mmu-server:crash@0").is_err());
        assert!(Injection::parse("mmu-server:explode@1").is_err());
        assert!(Injection::parse("crash@1").is_err());
        assert!(Injection::parse(":crash@1").is_err());
    }

    #[test]
    fn a_patched_block_decodes_and_ticks() {
        let mut block = [0u8; BLOCK_LEN];
        block[..MAGIC.len()].copy_from_slice(&MAGIC);
        assert!(Injector::new(&block).injection().is_none());
        let inj = Injection {
            fault: Fault::Hang,
            at: 3,
            every: true,
        };
        let mut elf = [0u8; 40];
        elf[5..5 + BLOCK_LEN].copy_from_slice(&block);
        patch(&mut elf, &inj).unwrap();
        let mut patched = [0u8; BLOCK_LEN];
        patched.copy_from_slice(&elf[5..5 + BLOCK_LEN]);
        let mut i = Injector::new(&patched);
        let fired: [_; 7] = core::array::from_fn(|_| i.tick());
        assert_eq!(
            fired,
            [
                None,
                None,
                Some(Fault::Hang),
                None,
                None,
                Some(Fault::Hang),
                None
            ]
        );
        let mut once = Injector::new(&patched);
        once.inj = Some(Injection {
            every: false,
            ..inj
        });
        let n = (0..10).filter(|_| once.tick().is_some()).count();
        assert_eq!(n, 1);
    }
}
