//! virtio-rng's host side: where the guest's random bytes come from.
//!
//! [`Entropy::from_cpu`] takes RDRAND when the CPU has it (CPUID.01H:ECX
//! bit 30; Intel SDM vol. 1 §7.3.17 and vol. 2 "RDRAND"; AMD APM vol. 3
//! "RDRAND"), else a xorshift64* generator seeded from the TSC
//! ([`Xorshift64Star`]), which is **not cryptographic**: a guest (or anyone
//! who saw a few outputs) can predict the rest.

pub use virtio::devices::rng::{EntropySource, Rng};

/// How often RDRAND is retried when it reports no data (CF clear), as
/// Intel's DRNG guide recommends ("retry up to 10 times").
pub const RDRAND_RETRIES: u32 = 10;

/// The CPU's RDRAND, or the labelled fallback.
#[derive(Clone, Copy, Debug)]
pub enum Entropy {
    /// RDRAND, 8 bytes at a time.
    Rdrand,
    /// No RDRAND: a pseudo-random generator, not cryptographic.
    Xorshift(Xorshift64Star),
}

impl Entropy {
    /// RDRAND if CPUID says the CPU has it, else [`Xorshift64Star`]
    /// seeded from the TSC.
    pub fn from_cpu() -> Self {
        if has_rdrand() {
            Self::Rdrand
        } else {
            Self::Xorshift(Xorshift64Star::new(tsc()))
        }
    }

    /// Which source this is, in words.
    pub fn describe(&self) -> &'static str {
        match self {
            Self::Rdrand => "RDRAND",
            Self::Xorshift(_) => {
                "xorshift64* seeded from the TSC: NOT cryptographic (the CPU has no RDRAND)"
            }
        }
    }
}

impl EntropySource for Entropy {
    /// # Panics
    ///
    /// If RDRAND reports no data [`RDRAND_RETRIES`] times in a row (a
    /// broken generator: the server stops rather than hand out anything
    /// else).
    fn fill(&mut self, buf: &mut [u8]) {
        match self {
            Self::Xorshift(x) => x.fill(buf),
            Self::Rdrand => {
                for chunk in buf.chunks_mut(8) {
                    let r = rdrand().expect("RDRAND gave no data 10 times in a row");
                    chunk.copy_from_slice(&r.to_le_bytes()[..chunk.len()]);
                }
            }
        }
    }
}

/// Marsaglia's xorshift64 with Vigna's multiplicative output (xorshift64*,
/// "An experimental exploration of Marsaglia's xorshift generators",
/// 2016), its state started by splitmix64 of the seed so that any seed
/// (0 too) gives a non-zero state. Fast and statistically decent; NOT
/// cryptographic.
#[derive(Clone, Copy, Debug)]
pub struct Xorshift64Star {
    state: u64,
}

impl Xorshift64Star {
    /// A generator started from `seed`.
    pub fn new(seed: u64) -> Self {
        // splitmix64's finaliser; a zero result (never, for 2^64 - 1 of the
        // seeds) would stick xorshift at zero, so it is replaced.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        Self {
            state: if z == 0 { 1 } else { z },
        }
    }

    /// The next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

impl EntropySource for Xorshift64Star {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let r = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
    }
}

/// CPUID.01H:ECX bit 30.
fn has_rdrand() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        core::arch::x86_64::__cpuid(1).ecx & (1 << 30) != 0
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The time-stamp counter (0 where there is none).
fn tsc() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: RDTSC reads a counter; it touches no memory. (Ring 3
        // may run it: the stub leaves CR4.TSD clear.)
        unsafe { core::arch::x86_64::_rdtsc() }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        0
    }
}

/// 64 bits from RDRAND, retried [`RDRAND_RETRIES`] times; `None` if it
/// never had data, or the CPU has no RDRAND.
fn rdrand() -> Option<u64> {
    #[cfg(target_arch = "x86_64")]
    {
        if !has_rdrand() {
            return None;
        }
        let mut v = 0u64;
        for _ in 0..RDRAND_RETRIES {
            // SAFETY: CPUID just said the CPU has RDRAND (the one thing the
            // target feature needs); `v` is a live local.
            if unsafe { core::arch::x86_64::_rdrand64_step(&mut v) } == 1 {
                return Some(v);
            }
        }
        None
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xorshift_fills_odd_lengths_and_differs_by_seed() {
        let mut a = Xorshift64Star::new(1);
        let mut b = Xorshift64Star::new(2);
        let (mut x, mut y) = ([0u8; 13], [0u8; 13]);
        a.fill(&mut x);
        b.fill(&mut y);
        assert_ne!(x, y);
        assert_ne!(x, [0; 13]);
        // The same seed gives the same stream (it is a PRNG).
        let mut c = Xorshift64Star::new(1);
        let mut z = [0u8; 13];
        c.fill(&mut z);
        assert_eq!(x, z);
    }

    #[test]
    fn a_zero_seed_does_not_stick_at_zero() {
        let mut g = Xorshift64Star::new(0);
        assert_ne!(g.next_u64(), 0);
        assert_ne!(g.next_u64(), g.next_u64());
    }

    #[test]
    fn the_host_cpus_source_fills_and_says_what_it_is() {
        let mut e = Entropy::from_cpu();
        match e {
            Entropy::Rdrand => assert_eq!(e.describe(), "RDRAND"),
            Entropy::Xorshift(_) => assert!(e.describe().contains("NOT cryptographic")),
        }
        let (mut a, mut b) = ([0u8; 64], [0u8; 64]);
        e.fill(&mut a);
        e.fill(&mut b);
        assert_ne!(a, b, "two reads of 64 bytes were the same");
    }
}
