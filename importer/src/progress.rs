//! Progress counters shared by the pipeline and whoever reports them (a terminal bar
//! now; metrics and log lines later).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters of one copy.
#[derive(Debug, Default)]
pub struct Progress {
    total: AtomicU64,
    data: AtomicU64,
    zero: AtomicU64,
    phase: Mutex<&'static str>,
}

impl Progress {
    /// New counters.
    pub fn new() -> Self {
        Progress {
            phase: Mutex::new("copying"),
            ..Default::default()
        }
    }
    /// Set the total bytes to cover.
    pub fn set_total(&self, n: u64) {
        self.total.store(n, Ordering::Relaxed);
    }
    /// Count data bytes copied.
    pub fn add_data(&self, n: u64) {
        self.data.fetch_add(n, Ordering::Relaxed);
    }
    /// Count bytes zeroed or skipped.
    pub fn add_zero(&self, n: u64) {
        self.zero.fetch_add(n, Ordering::Relaxed);
    }
    /// Bytes covered so far (data + zero).
    pub fn done(&self) -> u64 {
        self.data.load(Ordering::Relaxed) + self.zero.load(Ordering::Relaxed)
    }
    /// Data bytes copied so far.
    pub fn data(&self) -> u64 {
        self.data.load(Ordering::Relaxed)
    }
    /// Total bytes.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
    /// Current phase name.
    pub fn phase(&self) -> &'static str {
        *self.phase.lock().unwrap_or_else(|p| p.into_inner())
    }
    /// Set the phase name.
    pub fn set_phase(&self, p: &'static str) {
        *self.phase.lock().unwrap_or_else(|p| p.into_inner()) = p;
    }
}
