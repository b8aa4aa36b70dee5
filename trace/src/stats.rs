//! A trace in figures: exits per reason, the servers' latency per reason
//! (from the TSC stamps: an exit reaching the server to its resume
//! leaving it; the vmm-server's and the mmu-server's apart), the
//! mmu-server's install batches, exits over time; as text and as SVG
//! plots.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use vmm_server::trace::Event;

use crate::{ArchivedMmuEv, ArchivedTrace};

/// Time slices of the run in "exits over time".
pub const SLICES: usize = 50;

/// The figures of one trace.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// TSC ticks per second the stamps count (1 GHz assumed when unknown).
    pub tsc_hz: u64,
    /// Exits in the trace.
    pub exits: u64,
    /// Trace bytes as sent (before base64).
    pub wire_bytes: u64,
    /// Per exit reason: the server's latency of each exit, in ticks
    /// (exit stamp to the next resume stamp), sorted.
    pub latency: BTreeMap<String, Vec<u64>>,
    /// TSC of the first and last exit.
    pub span: (u64, u64),
    /// Exits in each of [`SLICES`] equal slices of the span.
    pub over_time: Vec<u64>,
    /// Events of each kind, and the guest-RAM bytes the reads carried.
    pub kinds: BTreeMap<&'static str, u64>,
    /// Guest-RAM bytes read.
    pub ram_read_bytes: u64,
    /// The shadow cache's hit rate between two samples of the
    /// mmu-server's counters (`Event::Sample`): the TSC of the later
    /// sample's exit, hits / (hits + misses) in that stretch; none
    /// where the stretch had neither.
    pub hit_rate: Vec<(u64, f64)>,
    /// The mmu-server's stream: exits it got and bytes it sent.
    pub mmu_exits: u64,
    /// Bytes of the mmu-server's stream as sent.
    pub mmu_wire_bytes: u64,
    /// Per exit reason, the mmu-server's latency (exit stamp to reply
    /// stamp, less its tracing time), sorted.
    pub mmu_latency: BTreeMap<String, Vec<u64>>,
    /// Entries in each install batch, sorted.
    pub batch_entries: Vec<u64>,
    /// Ticks of each install system call, sorted.
    pub install_ticks: Vec<u64>,
    /// Batches the stub refused (an entry) or failed.
    pub batches_refused: u64,
}

/// The mmu-server's part of [`Summary`].
fn summarize_mmu(trace: &ArchivedTrace, s: &mut Summary) {
    let mut pending: Option<(u64, String)> = None;
    let mut tracing = 0u64;
    for e in trace.mmu_events.iter() {
        match e {
            ArchivedMmuEv::Exit { tsc, rec } => {
                let rec: ipc_proto::ExitRecord = crate::read(rec);
                s.mmu_exits += 1;
                let name = ipc_proto::exit::exit_name(rec.arch, rec.exit_code).to_string();
                pending = Some((tsc.to_native(), name));
                tracing = 0;
            }
            ArchivedMmuEv::Flush(t) => tracing += t.to_native(),
            ArchivedMmuEv::Reply { tsc, .. } => {
                if let Some((at, name)) = pending.take() {
                    s.mmu_latency
                        .entry(name)
                        .or_default()
                        .push(tsc.to_native().saturating_sub(at).saturating_sub(tracing));
                }
                tracing = 0;
            }
            ArchivedMmuEv::Install {
                ticks,
                entries,
                result,
                ..
            } => {
                let n = entries.len() / core::mem::size_of::<ipc_proto::mmu::Install>();
                s.batch_entries.push(n as u64);
                s.install_ticks.push(ticks.to_native());
                if *result != 0 {
                    s.batches_refused += 1;
                }
            }
            ArchivedMmuEv::Refused(_) | ArchivedMmuEv::Limit => {}
        }
    }
    for v in s.mmu_latency.values_mut() {
        v.sort_unstable();
    }
    s.batch_entries.sort_unstable();
    s.install_ticks.sort_unstable();
    s.mmu_wire_bytes = trace.mmu_wire_bytes.to_native();
}

/// Reads the figures out of `trace`.
pub fn summarize(trace: &ArchivedTrace) -> Summary {
    let tsc_hz = match trace.tsc_hz.to_native() {
        0 => 1_000_000_000,
        hz => hz,
    };
    let mut latency: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut stamps = Vec::new();
    let mut pending: Option<(u64, String)> = None;
    // Ticks the vmm-server spent sending trace lines since the last stamp.
    let mut tracing = 0u64;
    let mut kinds: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut ram_read_bytes = 0;
    let mut hit_rate = Vec::new();
    let mut last_mmu: Option<(u64, u64)> = None;
    for e in trace.events.iter() {
        let ev = e.event();
        *kinds.entry(kind(&ev)).or_default() += 1;
        if let Event::MemRead { len, .. } = ev {
            ram_read_bytes += len;
        }
        match ev {
            Event::Exit { tsc, rec } => {
                stamps.push(tsc);
                let name = ipc_proto::exit::exit_name(rec.arch, rec.exit_code).to_string();
                pending = Some((tsc, name));
                tracing = 0;
            }
            Event::Flush(t) => tracing += t,
            Event::Sample { mmu: Some(m), .. } => {
                let (h0, m0) = last_mmu.unwrap_or((0, 0));
                let (dh, dm) = (m.hits.saturating_sub(h0), m.misses.saturating_sub(m0));
                if dh + dm > 0 {
                    let at = stamps.last().copied().unwrap_or(0);
                    hit_rate.push((at, dh as f64 / (dh + dm) as f64));
                }
                last_mmu = Some((m.hits, m.misses));
            }
            Event::Resume { tsc, .. } => {
                if let Some((at, name)) = pending.take() {
                    latency
                        .entry(name)
                        .or_default()
                        .push(tsc.saturating_sub(at).saturating_sub(tracing));
                }
                tracing = 0;
            }
            _ => {}
        }
    }
    for v in latency.values_mut() {
        v.sort_unstable();
    }
    let span = (
        stamps.first().copied().unwrap_or(0),
        stamps.last().copied().unwrap_or(0),
    );
    let width = (span.1 - span.0).max(1);
    let mut over_time = vec![0u64; SLICES];
    for t in &stamps {
        let i = (u128::from(t - span.0) * SLICES as u128 / (u128::from(width) + 1)) as usize;
        over_time[i.min(SLICES - 1)] += 1;
    }
    let mut s = Summary {
        tsc_hz,
        exits: stamps.len() as u64,
        wire_bytes: trace.wire_bytes.to_native(),
        latency,
        span,
        over_time,
        kinds,
        ram_read_bytes,
        hit_rate,
        ..Default::default()
    };
    summarize_mmu(trace, &mut s);
    s
}

/// An event's kind, for the counts.
fn kind(e: &Event<'_>) -> &'static str {
    match e {
        Event::Meta(_) => "meta",
        Event::Exit { .. } => "exit",
        Event::Resume { .. } | Event::FirstRun { .. } => "resume",
        Event::VcpuError(_) => "vcpu-error",
        Event::Now(_) => "clock",
        Event::Cpuid(..) | Event::Flag(..) | Event::Xcr0(_) => "cpu",
        Event::MemRead { .. } => "ram-read",
        Event::MemWrite { .. } => "ram-write",
        Event::ConsoleIn { .. } => "console-in",
        Event::ConsoleOut { .. } => "console-out",
        Event::Stats(_) | Event::MmuStats(_) | Event::Segments(_) => "stub",
        Event::WaitUntil(_) => "wait",
        Event::End { .. } | Event::Limit => "end",
        Event::Flush(_) => "flush",
        Event::Sample { .. } => "sample",
    }
}

/// The value at `per_mille` thousandths of `sorted` (nearest rank).
pub fn percentile(sorted: &[u64], per_mille: usize) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() - 1) * per_mille + 500) / 1000;
    sorted[i.min(sorted.len() - 1)]
}

impl Summary {
    fn us(&self, ticks: u64) -> f64 {
        ticks as f64 * 1e6 / self.tsc_hz as f64
    }

    /// The text summary.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let secs = (self.span.1 - self.span.0) as f64 / self.tsc_hz as f64;
        let _ = writeln!(
            s,
            "{} exits over {secs:.3} s of the TSC ({} Hz); trace {} bytes, {:.1} bytes per exit",
            self.exits,
            self.tsc_hz,
            self.wire_bytes,
            self.wire_bytes as f64 / self.exits.max(1) as f64
        );
        let _ = writeln!(
            s,
            "events: {} (guest-RAM reads carried {} bytes)",
            self.kinds
                .iter()
                .map(|(k, n)| format!("{k}={n}"))
                .collect::<Vec<_>>()
                .join(" "),
            self.ram_read_bytes
        );
        let _ = writeln!(
            s,
            "server latency (exit reaching the vmm-server to its resume, less the time tracing took), microseconds:"
        );
        self.latency_table(&mut s, &self.latency);
        let _ = writeln!(
            s,
            "exits over time ({SLICES} slices of {:.1} ms): {}",
            secs * 1e3 / SLICES as f64,
            self.over_time
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        );
        if !self.hit_rate.is_empty() {
            let _ = writeln!(
                s,
                "shadow cache hit rate per {} exits (where it built or found tables), %: {}",
                vmm_server::trace::SAMPLE_EXITS,
                self.hit_rate
                    .iter()
                    .map(|(_, r)| format!("{:.0}", r * 100.0))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
        self.mmu_text(&mut s);
        s
    }

    /// Rows of exits, p50, p90, p99 and max per reason, most exits first.
    fn latency_table(&self, s: &mut String, latency: &BTreeMap<String, Vec<u64>>) {
        let _ = writeln!(
            s,
            "  {:<24} {:>8} {:>9} {:>9} {:>9} {:>9}",
            "reason", "exits", "p50", "p90", "p99", "max"
        );
        let mut rows: Vec<_> = latency.iter().collect();
        rows.sort_by_key(|(_, v)| std::cmp::Reverse(v.len()));
        for (name, v) in rows {
            let _ = writeln!(
                s,
                "  {name:<24} {:>8} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
                v.len(),
                self.us(percentile(v, 500)),
                self.us(percentile(v, 900)),
                self.us(percentile(v, 990)),
                self.us(*v.last().unwrap_or(&0)),
            );
        }
    }

    /// The mmu-server's lines: its exits, latency and install batches.
    fn mmu_text(&self, s: &mut String) {
        if self.mmu_wire_bytes == 0 {
            let _ = writeln!(s, "mmu-server: no trace");
            return;
        }
        let _ = writeln!(
            s,
            "mmu-server: {} exits; trace {} bytes, {:.1} bytes per exit",
            self.mmu_exits,
            self.mmu_wire_bytes,
            self.mmu_wire_bytes as f64 / self.mmu_exits.max(1) as f64
        );
        if !self.mmu_latency.is_empty() {
            let _ = writeln!(
                s,
                "mmu-server latency (exit reaching the mmu-server to its reply, less the time tracing took), microseconds:"
            );
            self.latency_table(s, &self.mmu_latency);
        }
        let b = &self.batch_entries;
        let t = &self.install_ticks;
        let _ = writeln!(
            s,
            "install batches: {} ({} entries; {} refused), entries per batch p50 {} max {}; \
             install call p50 {:.1} p90 {:.1} p99 {:.1} max {:.1} microseconds",
            b.len(),
            b.iter().sum::<u64>(),
            self.batches_refused,
            percentile(b, 500),
            b.last().copied().unwrap_or(0),
            self.us(percentile(t, 500)),
            self.us(percentile(t, 900)),
            self.us(percentile(t, 990)),
            self.us(t.last().copied().unwrap_or(0)),
        );
    }

    /// Writes `latency.svg` (a histogram of the vmm-server's latency per
    /// reason, log2 buckets of microseconds), `exits-over-time.svg`, and
    /// where the trace has them `mmu-latency.svg` (the mmu-server's) and
    /// `shadow-hit-rate.svg` into `dir`; returns their paths.
    pub fn plot(&self, dir: &Path) -> Result<Vec<PathBuf>, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let lat = dir.join("latency.svg");
        let time = dir.join("exits-over-time.svg");
        self.plot_latency(&lat, &self.latency, "vmm-server")
            .map_err(|e| e.to_string())?;
        self.plot_over_time(&time).map_err(|e| e.to_string())?;
        let mut files = vec![lat, time];
        if !self.mmu_latency.is_empty() {
            let mmu = dir.join("mmu-latency.svg");
            self.plot_latency(&mmu, &self.mmu_latency, "mmu-server")
                .map_err(|e| e.to_string())?;
            files.push(mmu);
        }
        if !self.hit_rate.is_empty() {
            let hits = dir.join("shadow-hit-rate.svg");
            self.plot_hit_rate(&hits).map_err(|e| e.to_string())?;
            files.push(hits);
        }
        Ok(files)
    }

    /// Buckets: [2^i, 2^(i+1)) microseconds, i from -3.
    fn buckets(&self, v: &[u64]) -> Vec<u64> {
        let mut b = vec![0u64; 24];
        for &t in v {
            // Eighths of a microsecond, so that bucket 0 starts at 2^-3.
            let eighths = (u128::from(t) * 8_000_000 / u128::from(self.tsc_hz)) as u64;
            let i = 63 - eighths.max(1).leading_zeros() as usize;
            b[i.min(23)] += 1;
        }
        b
    }

    fn plot_latency(
        &self,
        path: &Path,
        latency: &BTreeMap<String, Vec<u64>>,
        server: &str,
    ) -> Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut rows: Vec<_> = latency.iter().collect();
        rows.sort_by_key(|(_, v)| std::cmp::Reverse(v.len()));
        rows.truncate(8);
        let series: Vec<_> = rows
            .iter()
            .map(|(n, v)| (n.as_str(), self.buckets(v)))
            .collect();
        let top = series
            .iter()
            .flat_map(|(_, b)| b.iter().copied())
            .max()
            .unwrap_or(1)
            .max(1);
        // The buckets that hold any exit, one more on each side.
        let used = |b: &Vec<u64>| b.iter().position(|&c| c > 0);
        let first = series
            .iter()
            .filter_map(|(_, b)| used(b))
            .min()
            .unwrap_or(0);
        let last = series
            .iter()
            .filter_map(|(_, b)| b.iter().rposition(|&c| c > 0))
            .max()
            .unwrap_or(23);
        let x = first.saturating_sub(1) as f64 - 3.0..(last + 2).min(24) as f64 - 3.0;
        // Counts on a log scale: the common reasons would flatten the rare.
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("{server} latency per exit reason"),
                ("sans-serif", 20),
            )
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(x, (0.5f64..top as f64 * 2.0).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("log2(microseconds)")
            .y_desc("exits (log scale; 0 drawn at 0.5)")
            .draw()?;
        for (i, (name, b)) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(
                    b.iter()
                        .enumerate()
                        .map(|(k, &c)| (k as f64 - 3.0 + 0.5, (c as f64).max(0.5))),
                    color,
                ))?
                .label(*name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    }

    fn plot_hit_rate(&self, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::new(path, (900, 400)).into_drawing_area();
        root.fill(&WHITE)?;
        let secs = |t: u64| t.saturating_sub(self.span.0) as f64 / self.tsc_hz as f64;
        let end = secs(self.span.1).max(1e-9);
        let mut chart = ChartBuilder::on(&root)
            .caption("shadow cache hit rate over time", ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..end, 0f64..100f64)?;
        chart
            .configure_mesh()
            .x_desc("seconds of the TSC")
            .y_desc(format!(
                "% hits per {} exits",
                vmm_server::trace::SAMPLE_EXITS
            ))
            .draw()?;
        chart.draw_series(LineSeries::new(
            self.hit_rate.iter().map(|&(t, r)| (secs(t), r * 100.0)),
            BLUE,
        ))?;
        root.present()?;
        Ok(())
    }

    fn plot_over_time(&self, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::new(path, (900, 400)).into_drawing_area();
        root.fill(&WHITE)?;
        let secs = (self.span.1 - self.span.0) as f64 / self.tsc_hz as f64;
        let slice = secs / SLICES as f64;
        let top = self.over_time.iter().copied().max().unwrap_or(1).max(1);
        let mut chart = ChartBuilder::on(&root)
            .caption("exits over time", ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..secs.max(1e-9), 0u64..top + top / 10 + 1)?;
        chart
            .configure_mesh()
            .x_desc("seconds of the TSC")
            .y_desc(format!("exits per {:.1} ms", slice * 1e3))
            .draw()?;
        chart.draw_series(LineSeries::new(
            self.over_time
                .iter()
                .enumerate()
                .map(|(i, &c)| ((i as f64 + 0.5) * slice, c)),
            BLUE,
        ))?;
        root.present()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Ev, Trace};
    use ipc_proto::vcpu::svm_exit;
    use ipc_proto::{ExitRecord, VcpuArch};
    use zerocopy::IntoBytes;

    fn exit(tsc: u64, code: u64) -> Ev {
        let rec = ExitRecord {
            arch: VcpuArch::Svm as u32,
            exit_code: code,
            ..Default::default()
        };
        Ev::Exit {
            tsc,
            rec: rec.as_bytes().to_vec(),
        }
    }

    fn sample(hits: u64, misses: u64) -> Ev {
        let mmu = ipc_proto::stats::MmuStats {
            hits,
            misses,
            ..Default::default()
        };
        Ev::Sample(
            ipc_proto::Stats::default().as_bytes().to_vec(),
            Some(mmu.as_bytes().to_vec()),
        )
    }

    fn mmu_exit(tsc: u64, code: u64) -> crate::MmuEv {
        let rec = ExitRecord {
            arch: VcpuArch::Svm as u32,
            exit_code: code,
            ..Default::default()
        };
        crate::MmuEv::Exit {
            tsc,
            rec: rec.as_bytes().to_vec(),
        }
    }

    fn install(entries: usize, ticks: u64) -> crate::MmuEv {
        crate::MmuEv::Install {
            tsc: 0,
            ticks,
            entries: vec![0; entries * 16],
            result: 0,
            index: 0,
            error: 0,
        }
    }

    fn resume(tsc: u64) -> Ev {
        Ev::Resume {
            tsc,
            resume: vec![0; 224],
        }
    }

    #[test]
    fn latencies_leave_out_the_time_tracing_took() {
        let t = Trace {
            version: vmm_server::trace::VERSION,
            board: 0,
            mmu_mode: 0,
            uart_channel: 0,
            pci_functions: 0,
            tsc_hz: 1_000_000_000,
            guest_ram_bytes: 1 << 20,
            wire_bytes: 900,
            events: vec![
                Ev::FirstRun { tsc: 0 },
                exit(1_000, svm_exit::IOIO),
                sample(3, 1),
                Ev::Now(1_100),
                Ev::Flush(300),
                resume(2_000),
                exit(3_000, svm_exit::IOIO),
                // Nothing built or found since: no point.
                sample(3, 1),
                resume(6_000),
                // A flush before the exit's stamp is the guest's time.
                Ev::Flush(5_000),
                exit(10_000, svm_exit::CPUID),
                sample(5, 3),
                resume(10_500),
            ],
            mmu_version: mmu_server::trace::VERSION,
            mmu_wire_bytes: 90,
            mmu_events: vec![
                install(2, 40),
                crate::MmuEv::Reply {
                    tsc: 100,
                    forward: None,
                    resume: vec![0; 224],
                },
                // The line sent with the reply before: the guest's time.
                crate::MmuEv::Flush(700),
                mmu_exit(2_000, svm_exit::EXCP_BASE + 14),
                install(1, 60),
                install(3, 20),
                crate::MmuEv::Flush(100),
                crate::MmuEv::Reply {
                    tsc: 2_500,
                    forward: None,
                    resume: vec![0; 224],
                },
            ],
        };
        let mut bytes = crate::Bytes::new();
        bytes.extend_from_slice(&t.to_bytes());
        let s = summarize(crate::access(&bytes).unwrap());
        assert_eq!(s.exits, 3);
        assert_eq!(s.latency["ioio"], vec![700, 3_000]);
        assert_eq!(s.latency["cpuid"], vec![500]);
        assert_eq!(s.span, (1_000, 10_000));
        assert_eq!(s.over_time.iter().sum::<u64>(), 3);
        assert_eq!(s.over_time[0], 1);
        assert_eq!(s.over_time[SLICES - 1], 1);
        assert_eq!(s.hit_rate, vec![(1_000, 0.75), (10_000, 0.5)]);
        assert_eq!(percentile(&s.latency["ioio"], 500), 3_000);
        assert_eq!(percentile(&s.latency["ioio"], 0), 700);
        let text = s.text();
        assert!(text.starts_with("3 exits over 0.000 s"), "{text}");
        assert!(text.contains("300.0 bytes per exit"), "{text}");
        let dir = std::env::temp_dir().join(format!("trace-stats-{}", std::process::id()));
        let files = s.plot(&dir).unwrap();
        for f in &files {
            let svg = std::fs::read_to_string(f).unwrap();
            assert!(svg.starts_with("<svg"), "{}", f.display());
        }
        assert!(std::fs::read_to_string(&files[0]).unwrap().contains("ioio"));
        assert!(files[2].ends_with("mmu-latency.svg"));
        assert!(files[3].ends_with("shadow-hit-rate.svg"));
        // The mmu-server's #PF: 500 ticks less the 100 sent during it
        // (the flush before its exit is the guest's time).
        assert_eq!(s.mmu_exits, 1);
        assert_eq!(s.mmu_latency.values().collect::<Vec<_>>(), vec![&vec![400]]);
        assert_eq!(s.batch_entries, vec![1, 2, 3]);
        assert_eq!(s.install_ticks, vec![20, 40, 60]);
        assert!(
            text.contains("mmu-server: 1 exits; trace 90 bytes, 90.0 bytes per exit"),
            "{text}"
        );
        assert!(
            text.contains("install batches: 3 (6 entries; 0 refused), entries per batch p50 2 max 3; install call p50 0.0 p90 0.1 p99 0.1 max 0.1"),
            "{text}"
        );
        assert!(
            text.contains("hit rate per 1000 exits (where it built or found tables), %: 75 50"),
            "{text}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
