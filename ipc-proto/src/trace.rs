//! Whether the vmm-server and the mmu-server record a trace (`splitvisor
//! run --trace FILE`): a configuration block in their ELFs that the image
//! builder patches, as [`crate::inject`] does for injected faults, so that
//! tracing needs no separate build and a run without `--trace` pays
//! nothing but one byte read at start.
//!
//! Also the part of the record both servers share ([`Writer`], [`Reader`]):
//! a byte stream cut into console lines (a mark byte, base64, newline),
//! numbers as LEB128, TSC values as the ticks since the last one, records
//! as the 8-byte words that changed, and the time spent sending lines.
//! The events themselves are `vmm_server::trace`'s and
//! `mmu_server::trace`'s.

/// The bytes in front of the configuration in the servers' ELFs.
pub const MAGIC: [u8; 16] = *b"SVTRACE-CONFIG01";
/// The block: [`MAGIC`], then 1 when tracing (one byte), three zero
/// bytes, and the most exits to record (`u32`, little-endian, 0: all).
pub const BLOCK_LEN: usize = 24;

/// What to record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceConfig {
    /// Stop recording after this many exits (0: record the whole run);
    /// the run itself goes on untraced.
    pub max_exits: u32,
}

impl TraceConfig {
    /// The block's bytes after the magic.
    pub fn encode(&self) -> [u8; BLOCK_LEN - MAGIC.len()] {
        let mut b = [0u8; BLOCK_LEN - MAGIC.len()];
        b[0] = 1;
        b[4..8].copy_from_slice(&self.max_exits.to_le_bytes());
        b
    }

    /// The configuration in a whole block, if tracing is on.
    pub fn decode(block: &[u8; BLOCK_LEN]) -> Option<Self> {
        let b = &block[MAGIC.len()..];
        (b[0] == 1).then(|| Self {
            max_exits: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        })
    }
}

/// Sets the block in `elf` (the vmm-server's or the mmu-server's
/// executable) to `config`.
pub fn patch(elf: &mut [u8], config: &TraceConfig) -> Result<(), &'static str> {
    crate::config_block::patch(
        elf,
        &MAGIC,
        &config.encode(),
        "this server records no traces (no trace block in its ELF)",
    )
}

/// Declares the block, `static $name: [u8; BLOCK_LEN]`: the magic and
/// zeros (no tracing) until patched. Read it with [`read_block`].
#[macro_export]
macro_rules! trace_block {
    ($name:ident) => {
        $crate::__config_block!($name, $crate::trace::BLOCK_LEN, $crate::trace::MAGIC);
    };
}

pub use crate::config_block::read as read_block;

/// Starts each console line of the vmm-server's trace; the bytes follow
/// in base64 up to the line's end. The host takes these lines out of what
/// it shows (a guest that prints this byte itself garbles its trace).
pub const VMM_MARK: u8 = 0x1e;
/// Starts each console line of the mmu-server's trace: the two servers'
/// lines interleave on the one console.
pub const MMU_MARK: u8 = 0x1d;
/// Trace bytes per console line: 3069 bytes are 4092 in base64, so a
/// line fits one `ConsoleWrite` (4096 bytes).
pub const LINE_BYTES: usize = 3069;
/// The tag of the [`Writer::flushes`] event in both servers' streams.
pub const FLUSH_TAG: u8 = 20;

/// Where a recorder's lines go and where its TSC stamps come from.
pub trait Sink {
    /// Writes one console line (mark, base64, newline).
    fn line(&mut self, bytes: &[u8]);
    /// The TSC now.
    fn tsc(&mut self) -> u64;
}

/// Collects a server's trace bytes into console lines of [`LINE_BYTES`]
/// bytes each, with the encodings both servers use.
pub struct Writer<S: Sink> {
    /// Where the lines go.
    pub sink: S,
    mark: u8,
    chunk: [u8; LINE_BYTES],
    used: usize,
    line: [u8; 4 + LINE_BYTES / 3 * 4],
    /// The last TSC value in the stream (stamps and clock readings are
    /// sent as differences from it).
    last_tsc: u64,
    /// Ticks spent in [`Sink::line`] not yet in the stream.
    flush_ticks: u64,
    /// Trace bytes sent so far (before base64).
    pub bytes: u64,
}

impl<S: Sink> Writer<S> {
    /// A writer whose lines start with `mark`.
    pub fn new(sink: S, mark: u8) -> Self {
        Self {
            sink,
            mark,
            chunk: [0; LINE_BYTES],
            used: 0,
            line: [0; 4 + LINE_BYTES / 3 * 4],
            last_tsc: 0,
            flush_ticks: 0,
            bytes: 0,
        }
    }

    /// Appends bytes to the stream.
    pub fn put(&mut self, mut bytes: &[u8]) {
        self.bytes += bytes.len() as u64;
        while !bytes.is_empty() {
            let n = bytes.len().min(LINE_BYTES - self.used);
            self.chunk[self.used..self.used + n].copy_from_slice(&bytes[..n]);
            self.used += n;
            bytes = &bytes[n..];
            if self.used == LINE_BYTES {
                self.flush();
            }
        }
    }

    /// Appends `v` as LEB128.
    pub fn varint(&mut self, mut v: u64) {
        let mut b = [0u8; 10];
        let mut n = 0;
        loop {
            let low = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                b[n] = low;
                n += 1;
                break;
            }
            b[n] = low | 0x80;
            n += 1;
        }
        self.put(&b[..n]);
    }

    /// A TSC value as the ticks since the last one in the stream.
    pub fn tsc_value(&mut self, t: u64) {
        self.varint(t.wrapping_sub(self.last_tsc));
        self.last_tsc = t;
    }

    /// The words of `new` that differ from `old`: a bitmap, then each
    /// as the LEB128 of its XOR with the old word (a counter or an
    /// address that moved a little takes a byte or two, not eight).
    /// Records of at most 512 bytes.
    pub fn delta(&mut self, old: &[u8], new: &[u8]) {
        let words = new.len() / 8;
        let mut map = [0u8; 8];
        for w in 0..words {
            if old[w * 8..w * 8 + 8] != new[w * 8..w * 8 + 8] {
                map[w / 8] |= 1 << (w % 8);
            }
        }
        self.put(&map[..words.div_ceil(8)]);
        for w in 0..words {
            if map[w / 8] & (1 << (w % 8)) != 0 {
                self.varint(word(old, w) ^ word(new, w));
            }
        }
    }

    /// Sends what is buffered as one line.
    pub fn flush(&mut self) {
        if self.used == 0 {
            return;
        }
        // The encoding counts too: tracing's time is all of this.
        let start = self.sink.tsc();
        self.line[0] = self.mark;
        let n = base64_encode(&self.chunk[..self.used], &mut self.line[1..]);
        self.line[1 + n] = b'\n';
        self.sink.line(&self.line[..n + 2]);
        self.flush_ticks += self.sink.tsc().wrapping_sub(start);
        self.used = 0;
    }

    /// The ticks lines took since the last stamp ([`FLUSH_TAG`], LEB128),
    /// put before the next stamp's event, so that the time between two
    /// stamps can be told apart from the time tracing took.
    pub fn flushes(&mut self) {
        if self.flush_ticks != 0 {
            let t = core::mem::take(&mut self.flush_ticks);
            self.put(&[FLUSH_TAG]);
            self.varint(t);
        }
    }
}

/// Word `w` of `bytes`, little-endian.
fn word(bytes: &[u8], w: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[w * 8..w * 8 + 8]);
    u64::from_le_bytes(b)
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding into `out`; returns the bytes written.
/// Written here rather than taken from a crate: 15 lines in `no_std`
/// tasks that have no allocator to spare.
pub fn base64_encode(data: &[u8], out: &mut [u8]) -> usize {
    let mut n = 0;
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let v = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            out[n + i] = if i <= c.len() {
                BASE64[(v >> (18 - 6 * i) & 63) as usize]
            } else {
                b'='
            };
        }
        n += 4;
    }
    n
}

/// Decodes standard base64 (with padding), handing each group's bytes to
/// `out`; `None` for a byte outside the alphabet or a cut-off group.
pub fn base64_decode(text: &[u8], mut out: impl FnMut(&[u8])) -> Option<()> {
    let value = |c: u8| BASE64.iter().position(|&x| x == c).map(|v| v as u32);
    if !text.len().is_multiple_of(4) {
        return None;
    }
    for g in text.chunks(4) {
        let pad = g.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 {
            return None;
        }
        let mut v = 0u32;
        for &c in &g[..4 - pad] {
            v = v << 6 | value(c)?;
        }
        v <<= 6 * pad as u32;
        let b = v.to_be_bytes();
        out(&b[1..4 - pad]);
    }
    Some(())
}

/// Why a stream could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeError {
    /// Where in the stream (bytes).
    pub at: usize,
    /// What was wrong.
    pub what: &'static str,
}

impl core::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "trace byte {}: {}", self.at, self.what)
    }
}

/// Reads back what a [`Writer`] wrote: the decoders' shared part.
pub struct Reader<'a> {
    bytes: &'a [u8],
    /// Where the next read starts.
    pub at: usize,
    last_tsc: u64,
}

impl<'a> Reader<'a> {
    /// A reader over the whole stream (the lines' bytes, in order).
    pub fn new(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            at: 0,
            last_tsc: 0,
        }
    }

    /// Whether the whole stream was read.
    pub fn done(&self) -> bool {
        self.at >= self.bytes.len()
    }

    /// Gives up on the rest (nothing after a bad event can be trusted).
    pub fn stop(&mut self) {
        self.at = self.bytes.len();
    }

    /// An error at the current place.
    pub fn err(&self, what: &'static str) -> DecodeError {
        DecodeError { at: self.at, what }
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or(self.err("the stream is cut off"))?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    /// A byte.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    /// A little-endian `u32`.
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A little-endian `u64`.
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        let mut w = [0u8; 8];
        w.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(w))
    }

    /// A LEB128 number.
    pub fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v = 0u64;
        for shift in (0..70).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f).checked_shl(shift).unwrap_or(0);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.err("a number longer than 10 bytes"))
    }

    /// A TSC value ([`Writer::tsc_value`]).
    pub fn tsc_value(&mut self) -> Result<u64, DecodeError> {
        self.last_tsc = self.last_tsc.wrapping_add(self.varint()?);
        Ok(self.last_tsc)
    }

    /// Applies a [`Writer::delta`] to `into` (the previous record).
    pub fn delta(&mut self, into: &mut [u8]) -> Result<(), DecodeError> {
        let words = into.len() / 8;
        let map = self.take(words.div_ceil(8))?;
        for w in 0..words {
            if map[w / 8] & (1 << (w % 8)) != 0 {
                let v = word(into, w) ^ self.varint()?;
                into[w * 8..w * 8 + 8].copy_from_slice(&v.to_le_bytes());
            }
        }
        Ok(())
    }

    /// A whole record as its bytes.
    pub fn read<T: zerocopy::FromBytes>(&mut self) -> Result<T, DecodeError> {
        let n = core::mem::size_of::<T>();
        T::read_from_bytes(self.take(n)?).map_err(|_| self.err("a record of the wrong size"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_patched_block_reads_back_and_an_unpatched_one_is_off() {
        let mut elf = [0u8; 64];
        elf[8..8 + MAGIC.len()].copy_from_slice(&MAGIC);
        let mut block = [0u8; BLOCK_LEN];
        block.copy_from_slice(&elf[8..8 + BLOCK_LEN]);
        assert_eq!(TraceConfig::decode(&block), None);
        patch(&mut elf, &TraceConfig { max_exits: 5000 }).unwrap();
        block.copy_from_slice(&elf[8..8 + BLOCK_LEN]);
        assert_eq!(
            TraceConfig::decode(&block),
            Some(TraceConfig { max_exits: 5000 })
        );
        assert!(patch(&mut [0u8; 8], &TraceConfig::default()).is_err());
    }

    extern crate std;
    use std::vec::Vec;

    /// Lines kept in memory; a clock that ticks 10 per reading.
    #[derive(Default)]
    struct Lines {
        lines: Vec<Vec<u8>>,
        t: u64,
    }

    impl Sink for Lines {
        fn line(&mut self, bytes: &[u8]) {
            self.lines.push(bytes.to_vec());
        }
        fn tsc(&mut self) -> u64 {
            self.t += 10;
            self.t
        }
    }

    fn stream(lines: &[Vec<u8>], mark: u8) -> Vec<u8> {
        let mut out = Vec::new();
        for l in lines {
            assert_eq!(l[0], mark);
            assert_eq!(*l.last().unwrap(), b'\n');
            assert!(l.len() <= 4096);
            base64_decode(&l[1..l.len() - 1], |b| out.extend_from_slice(b)).unwrap();
        }
        out
    }

    #[test]
    fn base64_refuses_what_is_not_base64() {
        for bad in [&b"===="[..], b"A===", b"ab", b"ab!d"] {
            assert_eq!(base64_decode(bad, |_| {}), None, "{bad:?}");
        }
    }

    proptest::proptest! {
        /// Numbers, TSC values and record deltas read back as written,
        /// over as many lines as they take, each line within one write.
        #[test]
        fn what_a_writer_writes_a_reader_reads(
            nums in proptest::collection::vec(proptest::num::u64::ANY, 0..200),
            recs in proptest::collection::vec(proptest::collection::vec(0u8..4, 64), 1..60),
        ) {
            let mut w = Writer::new(Lines::default(), MMU_MARK);
            for &n in &nums {
                w.varint(n);
                w.tsc_value(n);
            }
            let mut prev = [0u8; 64];
            for r in &recs {
                w.delta(&prev, r);
                prev.copy_from_slice(r);
            }
            w.flush();
            let s = stream(&w.sink.lines, MMU_MARK);
            proptest::prop_assert_eq!(s.len() as u64, w.bytes);
            let mut r = Reader::new(&s);
            for &n in &nums {
                proptest::prop_assert_eq!(r.varint().unwrap(), n);
                proptest::prop_assert_eq!(r.tsc_value().unwrap(), n);
            }
            let mut rec = [0u8; 64];
            for want in &recs {
                r.delta(&mut rec).unwrap();
                proptest::prop_assert_eq!(&rec[..], &want[..]);
            }
            proptest::prop_assert!(r.done());
            for cut in 0..s.len().min(64) {
                let mut r = Reader::new(&s[..cut]);
                while !r.done() && r.varint().is_ok() {}
            }
        }
    }

    #[test]
    fn flushing_counts_the_lines_time_once() {
        let mut w = Writer::new(Lines::default(), VMM_MARK);
        w.put(&[9; LINE_BYTES + 1]);
        // One line went out: 10 ticks of encoding and writing.
        assert_eq!(w.sink.lines.len(), 1);
        w.flushes();
        w.flushes();
        w.flush();
        let s = stream(&w.sink.lines, VMM_MARK);
        let mut r = Reader::new(&s[LINE_BYTES + 1..]);
        assert_eq!(r.u8(), Ok(FLUSH_TAG));
        assert_eq!(r.varint(), Ok(10));
        assert!(r.done());
    }
}
