//! `splitvisor run --trace FILE`, `splitvisor replay FILE` and
//! `splitvisor stats FILE`: the console's trace lines into an rkyv archive,
//! and the archive replayed or summed up (crate `trace`).

use std::io::{self, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use trace::Splitter;

/// The console writer of a traced run: the trace lines are kept, the
/// rest goes to the wrapped writer (stdout). Clones share the state.
#[derive(Clone)]
pub struct TraceOut(pub Arc<Mutex<Splitter<Box<dyn Write + Send>>>>);

impl TraceOut {
    /// Passes the console on to `inner`.
    pub fn new(inner: Box<dyn Write + Send>) -> Self {
        Self(Arc::new(Mutex::new(Splitter::new(inner))))
    }

    /// Decodes what the lines carried and writes the archive to `path`;
    /// the line saying what was recorded.
    pub fn finish(&self, path: &Path) -> Result<String, String> {
        let s = self.0.lock().map_err(|_| "the console thread panicked")?;
        if s.stream.is_empty() {
            return Err("the run sent no trace (did the vmm-server start?)".into());
        }
        let t = trace::Trace::from_streams(&s.stream, &s.mmu_stream)?;
        let bytes = t.to_bytes();
        std::fs::write(path, &bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        let n = t
            .events
            .iter()
            .filter(|e| matches!(e, trace::Ev::Exit { .. }))
            .count();
        let exits = n.max(1) as f64;
        let prefix = if matches!(t.events.last(), Some(trace::Ev::Limit)) {
            " (a prefix: --trace-exits)"
        } else {
            ""
        };
        let bad = if s.bad_lines > 0 {
            format!(", {} garbled lines skipped", s.bad_lines)
        } else {
            String::new()
        };
        let (mmu_exits, batches) = t.mmu_events.iter().fold((0u32, 0u32), |(x, b), e| match e {
            trace::MmuEv::Exit { .. } => (x + 1, b),
            trace::MmuEv::Install { .. } => (x, b + 1),
            _ => (x, b),
        });
        let mmu_prefix = if matches!(t.mmu_events.last(), Some(trace::MmuEv::Limit)) {
            " (a prefix)"
        } else {
            ""
        };
        Ok(format!(
            "splitvisor: trace: {} exits{prefix}, {} events; {} bytes sent ({:.1} per exit); \
             mmu-server: {mmu_exits} exits{mmu_prefix}, {batches} install batches, {} events, {} bytes sent ({:.1} per exit); \
             archive {} bytes ({:.1} per vmm-server exit){bad} -> {}",
            n,
            t.events.len(),
            t.wire_bytes,
            t.wire_bytes as f64 / exits,
            t.mmu_events.len(),
            t.mmu_wire_bytes,
            t.mmu_wire_bytes as f64 / f64::from(mmu_exits.max(1)),
            bytes.len(),
            bytes.len() as f64 / exits,
            path.display()
        ))
    }
}

impl Write for TraceOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| io::Error::other("poisoned"))?
            .write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0
            .lock()
            .map_err(|_| io::Error::other("poisoned"))?
            .flush()
    }
}

/// `f` of the trace archived at `path`, or 2 when it cannot be read.
fn with_trace(path: &Path, f: impl FnOnce(&trace::ArchivedTrace) -> i32) -> i32 {
    match trace::load(path).and_then(|bytes| {
        trace::access(&bytes)
            .map(f)
            .map_err(|e| format!("{}: {e}", path.display()))
    }) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("splitvisor: {e}");
            2
        }
    }
}

/// `splitvisor replay FILE`: 0 when identical, 1 at a divergence, 2 when
/// the file cannot be replayed.
pub fn replay(path: &Path) -> i32 {
    with_trace(path, |t| replay_trace(path, t))
}

fn replay_trace(path: &Path, t: &trace::ArchivedTrace) -> i32 {
    match trace::replay::replay(t) {
        Ok(o) => {
            println!("{o}");
            println!(
                "replayed {} events in {:.3} s: {:.0} exits/s",
                o.events,
                o.seconds,
                o.exits as f64 / o.seconds.max(1e-9)
            );
            let (mmu_exits, batches) = t.mmu_counts();
            if !t.mmu_events.is_empty() {
                // TODO: replay them through the mmu-server's loop (the
                // table allocations need recording first).
                println!(
                    "the mmu-server's stream ({mmu_exits} exits, {batches} install batches) is recorded but not replayed (TODO)"
                );
            }
            match o.verdict {
                trace::replay::Verdict::Identical { .. } => 0,
                trace::replay::Verdict::Diverged(_) => 1,
            }
        }
        Err(e) => {
            eprintln!("splitvisor: {}: {e}", path.display());
            2
        }
    }
}

/// `splitvisor stats FILE [--svg DIR]`.
pub fn stats(path: &Path, svg: Option<&Path>) -> i32 {
    with_trace(path, |t| stats_of(t, svg))
}

fn stats_of(t: &trace::ArchivedTrace, svg: Option<&Path>) -> i32 {
    let s = trace::stats::summarize(t);
    print!("{}", s.text());
    if let Some(dir) = svg {
        match s.plot(dir) {
            Ok(files) => {
                for f in files {
                    println!("plot: {}", f.display());
                }
            }
            Err(e) => {
                eprintln!("splitvisor: plots: {e}");
                return 2;
            }
        }
    }
    0
}
