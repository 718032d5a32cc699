//! The Prometheus registry of one import.
//!
//! CDI's series, exactly as its controller scrapes it:
//!
//! ```text
//! # HELP kubevirt_cdi_import_progress The import progress in percentage.
//! # TYPE kubevirt_cdi_import_progress counter
//! kubevirt_cdi_import_progress_total{ownerUID="<DataVolume uid>"} 42
//! ```
//!
//! A counter holding a whole percentage 0–100 with exactly one label, advanced by the
//! difference when the integer percent increases (never past 100, never back). The
//! controller matches it with
//! `(kubevirt_cdi_import_progress_total|kubevirt_cdi_clone_progress_total)\{ownerUID="<uid>"\} (\d{1,3}\.?\d*)`.
//!
//! Ferry's own series (prefix `ferry_import_`): bytes read / written / zeroed / skipped
//! and covered (counters), size, throughput and requests in flight (gauges), the engine
//! (`ferry_import_engine{engine="uring"} 1`) and the phase as a state set (one series per
//! phase, the current one 1, the others 0).

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::copy::CopyStats;
use crate::progress::ProgressSnapshot;

pub use super::server::{MetricsServer, serve_metrics};

pub use ferry_contract::metrics::{OWNER_UID_LABEL, PHASES, PROGRESS_METRIC, PROGRESS_SERIES};
/// The window the throughput gauge averages over.
pub const THROUGHPUT_WINDOW: Duration = Duration::from_secs(5);

type Label = [(&'static str, String); 1];

/// The registry and every series of one import. A cheap handle: clones share the
/// series.
#[derive(Debug, Clone)]
pub struct Metrics(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    registry: Registry,
    progress: Counter,
    read: Counter,
    written: Counter,
    zeroed: Counter,
    skipped: Counter,
    covered: Counter,
    retries: Counter,
    downloaded: Counter,
    download_size: Gauge,
    size: Gauge,
    throughput: Gauge<f64, AtomicU64>,
    in_flight: Gauge,
    engine: Family<Label, Gauge>,
    phase: Family<Label, Gauge>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    engine: Option<String>,
    phase: Option<String>,
}

/// Advance a counter to `to` (counters never go back).
fn advance(c: &Counter, to: u64) {
    let now = c.get();
    if to > now {
        c.inc_by(to - now);
    }
}

/// Whole percent of `done` over `total`, floored like CDI, at most 100; `None` while the
/// total is unknown (0).
pub fn percent(done: u64, total: u64) -> Option<u64> {
    if total == 0 {
        return None;
    }
    Some(crate::num::u64_saturating(u128::from(done) * 100 / u128::from(total)).min(100))
}

impl Metrics {
    /// All series, with CDI's progress labelled `ownerUID=owner_uid` (the DataVolume's
    /// uid, env `OWNER_UID`).
    pub fn new(owner_uid: &str) -> Self {
        let mut registry = Registry::default();
        let family = Family::<Label, Counter>::default();
        let progress = family
            .get_or_create(&[(OWNER_UID_LABEL, owner_uid.to_string())])
            .clone();
        registry.register(PROGRESS_METRIC, "The import progress in percentage", family);

        let counter = |registry: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        let read = counter(
            &mut registry,
            ferry_contract::metrics::FERRY_READ_BYTES,
            "Bytes read from the source",
        );
        let written = counter(
            &mut registry,
            ferry_contract::metrics::FERRY_WRITTEN_BYTES,
            "Bytes written to the target as data",
        );
        let zeroed = counter(
            &mut registry,
            ferry_contract::metrics::FERRY_ZEROED_BYTES,
            "Bytes zeroed on the target (punch, unmap, write-zeroes)",
        );
        let skipped = counter(
            &mut registry,
            ferry_contract::metrics::FERRY_SKIPPED_BYTES,
            "Bytes skipped because the target already reads as zeroes there",
        );
        let covered = counter(
            &mut registry,
            ferry_contract::metrics::FERRY_COVERED_BYTES,
            "Bytes of the disk covered so far (data and zero ranges)",
        );
        let retries = counter(
            &mut registry,
            ferry_contract::metrics::FERRY_RETRIES,
            "Transient source failures retried (reads read again, connections opened again)",
        );
        let downloaded = counter(
            &mut registry,
            ferry_contract::metrics::FERRY_DOWNLOADED_BYTES,
            "Bytes received from an HTTP source (the file as downloaded)",
        );
        let download_size = Gauge::default();
        registry.register(
            ferry_contract::metrics::FERRY_DOWNLOAD_SIZE_BYTES,
            "Bytes the HTTP source has as downloaded (0 while unknown)",
            download_size.clone(),
        );
        let size = Gauge::default();
        registry.register(
            ferry_contract::metrics::FERRY_SIZE_BYTES,
            "Bytes the import covers (the disk size, or the changed bytes of a delta)",
            size.clone(),
        );
        let throughput = Gauge::<f64, AtomicU64>::default();
        registry.register(
            ferry_contract::metrics::FERRY_THROUGHPUT_BYTES_PER_SECOND,
            "Bytes covered per second over the last 5 seconds",
            throughput.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            ferry_contract::metrics::FERRY_REQUESTS_IN_FLIGHT,
            "Read/write and zeroing requests in flight",
            in_flight.clone(),
        );
        let engine = Family::<Label, Gauge>::default();
        registry.register(
            ferry_contract::metrics::FERRY_ENGINE,
            "I/O engine writing the target (1 for the one in use)",
            engine.clone(),
        );
        let phase = Family::<Label, Gauge>::default();
        for p in PHASES {
            let _ = phase.get_or_create(&[("phase", p.to_string())]);
        }
        registry.register(
            ferry_contract::metrics::FERRY_PHASE,
            "Phase of the import (1 for the current one)",
            phase.clone(),
        );
        Metrics(Arc::new(Inner {
            registry,
            progress,
            read,
            written,
            zeroed,
            skipped,
            covered,
            retries,
            downloaded,
            download_size,
            size,
            throughput,
            in_flight,
            engine,
            phase,
            state: Mutex::new(State::default()),
        }))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bring every series up to a snapshot of the counters. Counters only advance.
    pub fn update(&self, s: &ProgressSnapshot) {
        advance(&self.0.read, s.data);
        advance(&self.0.written, s.written);
        advance(&self.0.zeroed, s.zeroed);
        advance(&self.0.skipped, s.skipped);
        advance(&self.0.covered, s.done());
        advance(&self.0.retries, s.retries);
        advance(&self.0.downloaded, s.downloaded);
        self.0
            .download_size
            .set(i64::try_from(s.download_size).unwrap_or(i64::MAX));
        self.0.size.set(i64::try_from(s.total).unwrap_or(i64::MAX));
        self.0
            .in_flight
            .set(i64::try_from(s.in_flight).unwrap_or(i64::MAX));
        if let Some(p) = percent(s.done(), s.cdi_denominator()) {
            self.set_progress_percent(p);
        }
        self.set_phase(s.phase);
        if !s.engine.is_empty() {
            self.set_engine(s.engine);
        }
    }

    /// The final, exact counters of a finished copy: the byte counters, the engine, the
    /// phase `done` and 100%.
    pub fn finish(&self, stats: &CopyStats) {
        advance(&self.0.read, stats.bytes_read);
        advance(&self.0.written, stats.bytes_written);
        advance(&self.0.zeroed, stats.bytes_zeroed);
        advance(&self.0.skipped, stats.bytes_skipped);
        advance(&self.0.covered, stats.size);
        advance(&self.0.retries, stats.retries);
        advance(&self.0.downloaded, stats.bytes_downloaded);
        self.0.in_flight.set(0);
        if !stats.engine.is_empty() {
            self.set_engine(&stats.engine);
        }
        // CDI's delta rounds end at the changed share of the disk, not 100.
        let covered = stats.bytes_read + stats.bytes_zeroed + stats.bytes_skipped;
        let pct = if stats.delta {
            percent(covered, stats.size).unwrap_or(100)
        } else {
            100
        };
        self.set_progress_percent(pct);
        self.set_phase("done");
    }

    /// Raise CDI's progress counter to `pct` (capped at 100; never lowered).
    pub fn set_progress_percent(&self, pct: u64) {
        advance(&self.0.progress, pct.min(100));
    }

    /// CDI's progress counter.
    pub fn progress_percent(&self) -> u64 {
        self.0.progress.get()
    }

    /// Set the throughput gauge (bytes/s).
    pub fn set_throughput(&self, bytes_per_second: f64) {
        let v = if bytes_per_second.is_finite() && bytes_per_second > 0.0 {
            bytes_per_second
        } else {
            0.0
        };
        self.0.throughput.set(v);
    }

    /// The throughput gauge.
    pub fn throughput(&self) -> f64 {
        self.0.throughput.get()
    }

    /// Name the I/O engine in use (`uring` or `sync`).
    pub fn set_engine(&self, engine: &str) {
        let mut st = self.state();
        if st.engine.as_deref() == Some(engine) {
            return;
        }
        if let Some(old) = st.engine.take() {
            self.0.engine.get_or_create(&[("engine", old)]).set(0);
        }
        self.0
            .engine
            .get_or_create(&[("engine", engine.to_string())])
            .set(1);
        st.engine = Some(engine.to_string());
    }

    /// Set the current phase (`connecting`, `copying`, `flushing`, `done`, `failed`;
    /// another name gets its own series).
    pub fn set_phase(&self, phase: &str) {
        let mut st = self.state();
        if st.phase.as_deref() == Some(phase) {
            return;
        }
        if let Some(old) = st.phase.take() {
            self.0.phase.get_or_create(&[("phase", old)]).set(0);
        }
        self.0
            .phase
            .get_or_create(&[("phase", phase.to_string())])
            .set(1);
        st.phase = Some(phase.to_string());
    }

    /// The whole exposition in the OpenMetrics text format (ends with `# EOF`).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.0.registry);
        out
    }
}

/// Rate of a growing count over a sliding time window.
#[derive(Debug, Clone)]
pub struct RateWindow {
    window: Duration,
    samples: std::collections::VecDeque<(Instant, u64)>,
}

/// Most samples a window keeps, whatever the sampling period.
const MAX_RATE_SAMPLES: usize = 256;

impl RateWindow {
    /// A window of `window`.
    pub fn new(window: Duration) -> Self {
        RateWindow {
            window,
            samples: Default::default(),
        }
    }

    /// Add a sample and return the rate (units/s) over the window: from the oldest
    /// sample still inside it (or the last one just before it) to this one.
    pub fn push(&mut self, now: Instant, value: u64) -> f64 {
        if let Some(&(t, v)) = self.samples.back()
            && (now < t || value < v)
        {
            // Clock or counter went back (a new total, a restart): start over.
            self.samples.clear();
        }
        self.samples.push_back((now, value));
        while self.samples.len() > 2
            && (now.duration_since(self.samples[1].0) >= self.window
                || self.samples.len() > MAX_RATE_SAMPLES)
        {
            self.samples.pop_front();
        }
        let (t0, v0) = self.samples[0];
        let dt = now.duration_since(t0).as_secs_f64();
        if dt <= 0.0 {
            return 0.0;
        }
        (value - v0) as f64 / dt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(total: u64, data: u64, zero: u64) -> ProgressSnapshot {
        ProgressSnapshot {
            total,
            data,
            zero,
            phase: "copying",
            ..Default::default()
        }
    }

    fn cdi_value(body: &str, uid: &str) -> Option<f64> {
        let re = regex::Regex::new(&format!(
            r#"(kubevirt_cdi_import_progress_total|kubevirt_cdi_clone_progress_total)\{{ownerUID="{}"\}} (\d{{1,3}}\.?\d*)"#,
            regex::escape(uid)
        ))
        .unwrap();
        re.captures(body).map(|c| c[2].parse().unwrap())
    }

    #[test]
    fn a_delta_rounds_cdi_progress_divides_by_the_whole_disk() {
        // 8 MiB changed of a 100 MiB disk, all copied: CDI's series says 8, Ferry's own
        // series count the changed bytes.
        let m = Metrics::new("u");
        let mib = 1 << 20;
        m.update(&ProgressSnapshot {
            total: 8 * mib,
            data: 6 * mib,
            zero: 2 * mib,
            whole: 100 * mib,
            phase: "copying",
            ..Default::default()
        });
        assert_eq!(m.progress_percent(), 8);
        assert!(
            m.encode()
                .contains("ferry_import_covered_bytes_total 8388608\n")
        );
        m.finish(&CopyStats {
            size: 100 * mib,
            bytes_read: 6 * mib,
            bytes_zeroed: 2 * mib,
            delta: true,
            ..Default::default()
        });
        assert_eq!(m.progress_percent(), 8, "a delta does not end at 100");
        let full = Metrics::new("u");
        full.finish(&CopyStats {
            size: 100 * mib,
            bytes_read: 100 * mib,
            ..Default::default()
        });
        assert_eq!(full.progress_percent(), 100);
    }

    #[test]
    fn an_http_sources_download_is_counted_and_its_size_is_a_gauge() {
        let m = Metrics::new("u");
        m.update(&ProgressSnapshot {
            total: 1 << 30,
            downloaded: 5000,
            download_size: 300_000,
            phase: "copying",
            ..Default::default()
        });
        let body = m.encode();
        assert!(
            body.contains("ferry_import_downloaded_bytes_total 5000\n"),
            "{body}"
        );
        assert!(
            body.contains("ferry_import_download_size_bytes 300000\n"),
            "{body}"
        );
        m.finish(&CopyStats {
            size: 1 << 30,
            bytes_downloaded: 300_000,
            ..Default::default()
        });
        assert!(
            m.encode()
                .contains("ferry_import_downloaded_bytes_total 300000\n")
        );
    }

    #[test]
    fn percent_floors_and_caps() {
        assert_eq!(percent(0, 0), None);
        assert_eq!(percent(0, 10), Some(0));
        assert_eq!(percent(999, 1000), Some(99));
        assert_eq!(percent(1000, 1000), Some(100));
        assert_eq!(percent(2000, 1000), Some(100));
        assert_eq!(percent(u64::MAX, u64::MAX), Some(100));
    }

    #[test]
    fn progress_series_is_cdi_shaped() {
        let m = Metrics::new("5e2c1f0a-9c1b-4e0e-8a58-1b2f3c4d5e6f");
        let body = m.encode();
        assert!(body.contains(
            "# TYPE kubevirt_cdi_import_progress counter\n\
             kubevirt_cdi_import_progress_total{ownerUID=\"5e2c1f0a-9c1b-4e0e-8a58-1b2f3c4d5e6f\"} 0\n"
        ));
        assert_eq!(
            cdi_value(&body, "5e2c1f0a-9c1b-4e0e-8a58-1b2f3c4d5e6f"),
            Some(0.0)
        );
        // Exactly one series, exactly one label.
        let lines: Vec<&str> = body
            .lines()
            .filter(|l| l.starts_with(PROGRESS_SERIES))
            .collect();
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].matches('=').count(), 1);
        assert!(body.ends_with("# EOF\n"));
    }

    #[test]
    fn progress_only_advances_and_caps_at_100() {
        let m = Metrics::new("u");
        m.update(&snap(1000, 420, 0));
        assert_eq!(m.progress_percent(), 42);
        assert_eq!(cdi_value(&m.encode(), "u"), Some(42.0));
        // A lower percent (a new, larger total) does not lower the counter.
        m.update(&snap(10_000, 420, 0));
        assert_eq!(m.progress_percent(), 42);
        m.set_progress_percent(250);
        assert_eq!(m.progress_percent(), 100);
        assert_eq!(cdi_value(&m.encode(), "u"), Some(100.0));
        // Total unknown: no change.
        m.update(&snap(0, 0, 0));
        assert_eq!(m.progress_percent(), 100);
    }

    #[test]
    fn ferry_series() {
        let m = Metrics::new("u");
        m.update(&ProgressSnapshot {
            total: 1 << 20,
            data: 4096,
            zero: 8192,
            written: 4096,
            zeroed: 4096,
            skipped: 4096,
            in_flight: 7,
            retries: 3,
            whole: 0,
            downloaded: 0,
            download_size: 0,
            phase: "copying",
            engine: "uring",
        });
        m.set_throughput(1234.5);
        let body = m.encode();
        for want in [
            "ferry_import_read_bytes_total 4096\n",
            "ferry_import_written_bytes_total 4096\n",
            "ferry_import_zeroed_bytes_total 4096\n",
            "ferry_import_skipped_bytes_total 4096\n",
            "ferry_import_covered_bytes_total 12288\n",
            "ferry_import_retries_total 3\n",
            "ferry_import_size_bytes 1048576\n",
            "ferry_import_requests_in_flight 7\n",
            "ferry_import_throughput_bytes_per_second 1234.5\n",
            "ferry_import_engine{engine=\"uring\"} 1\n",
            "ferry_import_phase{phase=\"copying\"} 1\n",
            "ferry_import_phase{phase=\"connecting\"} 0\n",
            "ferry_import_phase{phase=\"failed\"} 0\n",
        ] {
            assert!(body.contains(want), "missing {want:?} in\n{body}");
        }
        m.set_phase("failed");
        m.set_engine("sync");
        let body = m.encode();
        assert!(body.contains("ferry_import_phase{phase=\"copying\"} 0\n"));
        assert!(body.contains("ferry_import_phase{phase=\"failed\"} 1\n"));
        assert!(body.contains("ferry_import_engine{engine=\"uring\"} 0\n"));
        assert!(body.contains("ferry_import_engine{engine=\"sync\"} 1\n"));
    }

    #[test]
    fn finish_sets_exact_counters() {
        let m = Metrics::new("u");
        m.update(&snap(100, 50, 0));
        m.finish(&CopyStats {
            size: 100,
            bytes_read: 60,
            bytes_written: 50,
            bytes_zeroed: 30,
            bytes_skipped: 20,
            engine: "sync".into(),
            ..Default::default()
        });
        let body = m.encode();
        assert_eq!(m.progress_percent(), 100);
        assert!(body.contains("ferry_import_read_bytes_total 60\n"));
        assert!(body.contains("ferry_import_written_bytes_total 50\n"));
        assert!(body.contains("ferry_import_zeroed_bytes_total 30\n"));
        assert!(body.contains("ferry_import_skipped_bytes_total 20\n"));
        assert!(body.contains("ferry_import_covered_bytes_total 100\n"));
        assert!(body.contains("ferry_import_engine{engine=\"sync\"} 1\n"));
        assert!(body.contains("ferry_import_phase{phase=\"done\"} 1\n"));
    }

    #[test]
    fn negative_or_nan_throughput_reads_zero() {
        let m = Metrics::new("u");
        m.set_throughput(f64::NAN);
        assert_eq!(m.throughput(), 0.0);
        m.set_throughput(-5.0);
        assert_eq!(m.throughput(), 0.0);
    }

    #[test]
    fn rate_window() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut w = RateWindow::new(s(5));
        assert_eq!(w.push(t0, 0), 0.0);
        assert_eq!(w.push(t0 + s(1), 100), 100.0);
        assert_eq!(w.push(t0 + s(2), 400), 200.0);
        // Samples older than the window drop out: 10 s in, rate over the last ~5 s.
        for i in 3..=10 {
            w.push(t0 + s(i), 400 + (i - 2) * 1000);
        }
        assert_eq!(w.push(t0 + s(11), 9400), 1000.0);
        // Stalled: the rate decays to zero once the window has passed.
        assert!(w.push(t0 + s(14), 9400) < 1000.0);
        assert_eq!(w.push(t0 + s(30), 9400), 0.0);
        // Counter went back: start over.
        assert_eq!(w.push(t0 + s(31), 5), 0.0);
        assert_eq!(w.push(t0 + s(32), 15), 10.0);
    }
}
