//! The reporting side of the importer pod: what CDI's controller, Forklift and an
//! operator read while and after Ferry copies.
//!
//! - [`metrics`]: the Prometheus registry — CDI's
//!   `kubevirt_cdi_import_progress_total{ownerUID=…}` percentage counter plus Ferry's
//!   byte counters, throughput, requests in flight, engine and phase.
//! - [`server`]: the HTTPS `/metrics` endpoint (self-signed certificate made at start-up,
//!   `:8443` in a pod).
//! - [`progress_log`]: CDI's `Transferred n/size bytes (p%) …` line at every whole percent.
//! - [`logging`]: JSON log lines when stderr is not a terminal, text on a terminal.
//! - [`termination`]: the one-line termination message (`/dev/termination-log`).
//!
//! [`spawn_samplers`] ties the metrics and the progress log to a [`Progress`]: one task
//! samples the counters every [`SAMPLE_INTERVAL`], updates the metrics and logs the
//! percent lines.

pub mod logging;
pub mod metrics;
pub mod progress_log;
pub mod server;
pub mod termination;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::progress::{Progress, ProgressSnapshot};

pub use metrics::{Metrics, RateWindow};
pub use progress_log::{PercentTracker, ProgressLine};
pub use server::{DEFAULT_METRICS_PORT, MetricsServer, serve_metrics};
pub use termination::{
    DEFAULT_TERMINATION_LOG, TERMINATION_MESSAGE_MAX, TerminationMessage, VddkInfo, write_failure,
    write_success,
};

/// How often the samplers sample the [`Progress`] counters.
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(200);

/// Errors of the reporting side. Each message already names the OS or library error,
/// so none is also given as a `source` (the binary prints the whole chain).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReportError {
    /// The self-signed certificate could not be made.
    #[error("cannot generate the metrics endpoint's certificate: {0}")]
    Certificate(rcgen::Error),
    /// The TLS configuration was refused.
    #[error("cannot set up TLS for the metrics endpoint: {0}")]
    Tls(rustls::Error),
    /// The metrics address could not be bound.
    #[error("cannot listen for metrics on {addr}: {error}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        error: std::io::Error,
    },
    /// The termination message could not be written.
    #[error("cannot write the termination message to {}: {error}", path.display())]
    Termination {
        /// The file.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// A global log subscriber was already installed.
    #[error("cannot set up logging: {0}")]
    Logging(tracing_subscriber::util::TryInitError),
}

/// The pure part of the samplers: fed a snapshot and the time, it updates the metrics
/// and returns the progress line to log, if a new whole percent was reached.
#[derive(Debug)]
pub struct Sampler {
    metrics: Option<Metrics>,
    tracker: Option<PercentTracker>,
    rate: RateWindow,
}

impl Sampler {
    /// A sampler starting at `start`; `log_progress` enables the percent lines.
    pub fn new(metrics: Option<Metrics>, log_progress: bool, start: Instant) -> Self {
        Sampler {
            metrics,
            tracker: log_progress.then(|| PercentTracker::new(start)),
            rate: RateWindow::new(metrics::THROUGHPUT_WINDOW),
        }
    }

    /// Take one sample.
    pub fn sample(&mut self, snap: &ProgressSnapshot, now: Instant) -> Option<ProgressLine> {
        let rate = self.rate.push(now, snap.done());
        if let Some(m) = &self.metrics {
            m.update(snap);
            m.set_throughput(rate);
        }
        self.tracker
            .as_mut()
            .and_then(|t| t.feed(snap.done(), snap.total, now))
    }
}

/// Options of [`spawn_samplers_with`].
#[derive(Debug, Clone)]
pub struct SamplerOptions {
    /// Sampling period.
    pub interval: Duration,
    /// Log CDI's progress line at every whole percent.
    pub log_progress: bool,
}

impl Default for SamplerOptions {
    fn default() -> Self {
        SamplerOptions {
            interval: SAMPLE_INTERVAL,
            log_progress: true,
        }
    }
}

/// The running sampler task. Dropping it stops the task without a last sample; call
/// [`Samplers::finish`] after the copy to report the final state (the 100% line, or the
/// `failed` phase).
#[derive(Debug)]
pub struct Samplers {
    state: Arc<Mutex<Sampler>>,
    task: JoinHandle<()>,
}

/// Sample `progress` every [`SAMPLE_INTERVAL`]: update `metrics` and log CDI's progress
/// lines (through `tracing`, target `ferry::report::progress_log`). Needs a Tokio
/// runtime.
pub fn spawn_samplers(progress: Arc<Progress>, metrics: Metrics) -> Samplers {
    spawn_samplers_with(progress, Some(metrics), SamplerOptions::default())
}

/// [`spawn_samplers`] with options, and metrics optional.
pub fn spawn_samplers_with(
    progress: Arc<Progress>,
    metrics: Option<Metrics>,
    opts: SamplerOptions,
) -> Samplers {
    let state = Arc::new(Mutex::new(Sampler::new(
        metrics,
        opts.log_progress,
        Instant::now(),
    )));
    let interval = opts.interval.max(Duration::from_millis(10));
    let task = tokio::spawn({
        let state = state.clone();
        async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                sample_and_log(&state, &progress);
            }
        }
    });
    Samplers { state, task }
}

fn sample_and_log(state: &Mutex<Sampler>, progress: &Progress) {
    let line = state
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .sample(&progress.snapshot(), Instant::now());
    if let Some(line) = line {
        progress_log::log_line(&line);
    }
}

impl Samplers {
    /// Stop sampling and take a last sample of `progress` (the one given to
    /// [`spawn_samplers`]), so the final percent is logged and exported. With `ok`
    /// false the phase becomes `failed` first (on `progress` too).
    pub fn finish(self, progress: &Progress, ok: bool) {
        self.task.abort();
        if !ok {
            progress.set_phase("failed");
        }
        sample_and_log(&self.state, progress);
    }
}

impl Drop for Samplers {
    fn drop(&mut self) {
        self.task.abort();
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

    #[test]
    fn sampler_updates_metrics_and_yields_lines() {
        let t0 = Instant::now();
        let m = Metrics::new("uid-1");
        let mut s = Sampler::new(Some(m.clone()), true, t0);
        assert!(s.sample(&snap(1000, 0, 0), t0).is_none());
        let line = s
            .sample(&snap(1000, 300, 200), t0 + Duration::from_secs(1))
            .expect("50% line");
        assert_eq!(line.percent, 50);
        assert_eq!(m.progress_percent(), 50);
        assert!((m.throughput() - 500.0).abs() < 1e-6);
        assert!(
            s.sample(&snap(1000, 300, 200), t0 + Duration::from_secs(2))
                .is_none()
        );
        let line = s
            .sample(&snap(1000, 800, 200), t0 + Duration::from_secs(3))
            .expect("100% line");
        assert_eq!(line.percent, 100);
        assert_eq!(m.progress_percent(), 100);
    }

    #[test]
    fn sampler_without_log_or_metrics() {
        let t0 = Instant::now();
        let mut s = Sampler::new(None, false, t0);
        assert!(s.sample(&snap(10, 10, 0), t0).is_none());
    }

    #[tokio::test]
    async fn finish_takes_a_last_sample() {
        let p = Arc::new(Progress::new());
        let m = Metrics::new("uid-2");
        let s = spawn_samplers_with(
            p.clone(),
            Some(m.clone()),
            SamplerOptions {
                interval: Duration::from_secs(3600),
                log_progress: true,
            },
        );
        // The first tick fires at once; let it run, then complete the copy.
        tokio::time::sleep(Duration::from_millis(20)).await;
        p.set_total(4096);
        p.add_data(4096);
        p.set_phase("done");
        s.finish(&p, true);
        assert_eq!(m.progress_percent(), 100);
        assert!(
            m.encode()
                .contains("ferry_import_phase{phase=\"done\"} 1\n")
        );
    }

    #[tokio::test]
    async fn finish_after_failure_sets_the_failed_phase() {
        let p = Arc::new(Progress::new());
        let m = Metrics::new("uid-3");
        let s = spawn_samplers(p.clone(), m.clone());
        p.set_total(4096);
        p.add_data(1024);
        s.finish(&p, false);
        assert_eq!(p.phase(), "failed");
        assert_eq!(m.progress_percent(), 25);
        assert!(
            m.encode()
                .contains("ferry_import_phase{phase=\"failed\"} 1\n")
        );
    }
}
