//! Progress counters shared by the pipeline and whoever reports them (the terminal bar
//! of `ferry copy`, metrics and log lines in [`crate::report`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Bytes received from a source's transport (an HTTP body: the compressed file, the
/// image file) and how many it has, when known. Shared by every reader of one job; the
/// source counts, [`Progress`] reports.
#[derive(Debug, Default, Clone)]
pub struct Downloaded {
    received: Arc<AtomicU64>,
    size: Arc<AtomicU64>,
}

impl Downloaded {
    /// Bytes received so far.
    pub fn get(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
    /// Count `n` bytes received.
    pub fn add(&self, n: u64) {
        self.received.fetch_add(n, Ordering::Relaxed);
    }
    /// The source's size in bytes (0: unknown).
    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }
    /// Record the source's size, once it is known.
    pub fn set_size(&self, n: u64) {
        self.size.store(n, Ordering::Relaxed);
    }
}

/// Live counters of one copy.
#[derive(Debug, Default)]
pub struct Progress {
    total: AtomicU64,
    data: AtomicU64,
    zero: AtomicU64,
    written: AtomicU64,
    zeroed: AtomicU64,
    skipped: AtomicU64,
    in_flight: AtomicU64,
    retries: AtomicU64,
    durable: AtomicU64,
    whole: AtomicU64,
    downloaded: Downloaded,
    phase: Mutex<&'static str>,
    engine: Mutex<&'static str>,
}

/// A point-in-time copy of every [`Progress`] counter (each read on its own, so the
/// fields may be a few requests apart).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProgressSnapshot {
    /// Total bytes to cover.
    pub total: u64,
    /// Bytes read from the source (data extents), written or not.
    pub data: u64,
    /// Bytes covered by zero/hole extents (zeroed or skipped).
    pub zero: u64,
    /// Bytes written to the target as data.
    pub written: u64,
    /// Bytes zeroed on the target (punch/unmap/write-zeroes).
    pub zeroed: u64,
    /// Bytes skipped because the target already reads as zeroes there.
    pub skipped: u64,
    /// Requests (reads+writes and zeroings) in flight.
    pub in_flight: u64,
    /// Retries so far (reads read again, connections opened again).
    pub retries: u64,
    /// The disk's size when `total` counts only the changed bytes of a delta; 0
    /// otherwise.
    pub whole: u64,
    /// Bytes received from the source's transport (HTTP), 0 for other sources.
    pub downloaded: u64,
    /// How many bytes the source's transport has (0: unknown or not HTTP).
    pub download_size: u64,
    /// Current phase name.
    pub phase: &'static str,
    /// I/O engine writing the target (`uring`, `sync`; empty until known).
    pub engine: &'static str,
}

impl ProgressSnapshot {
    /// What CDI's progress percentage divides by: the whole disk, also on a delta
    /// round (CDI's VDDK source: 100 × bytes written ÷ disk size, so a delta never
    /// reaches 100; Forklift multiplies it by the disk's capacity).
    pub fn cdi_denominator(&self) -> u64 {
        if self.whole > 0 {
            self.whole
        } else {
            self.total
        }
    }

    /// Bytes covered so far (data + zero).
    pub fn done(&self) -> u64 {
        self.data + self.zero
    }
}

impl Progress {
    /// New counters.
    pub fn new() -> Self {
        Progress {
            phase: Mutex::new("copying"),
            ..Default::default()
        }
    }
    /// A delta round: `total` is the changed bytes, `n` the whole disk.
    pub fn set_whole(&self, n: u64) {
        self.whole.store(n, Ordering::Relaxed);
    }
    /// Count one retry (a read again, or a reconnect).
    pub fn add_retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }
    /// The counter a source counts the bytes it receives in (a clone: give it to the
    /// source's options before opening it).
    pub fn downloaded_counter(&self) -> Downloaded {
        self.downloaded.clone()
    }
    /// Bytes received from the source's transport so far.
    pub fn downloaded(&self) -> u64 {
        self.downloaded.get()
    }
    /// Retries so far.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }
    /// Everything below this offset is durably on the target (set by the copy after a
    /// flush: at journal records and when an attempt fails).
    pub fn set_durable(&self, n: u64) {
        self.durable.store(n, Ordering::Relaxed);
    }
    /// See [`Progress::set_durable`].
    pub fn durable(&self) -> u64 {
        self.durable.load(Ordering::Relaxed)
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
    /// Bytes covered by zero/hole extents so far.
    pub fn zero(&self) -> u64 {
        self.zero.load(Ordering::Relaxed)
    }
    /// Count bytes written to the target as data (a subset of [`Progress::add_data`]).
    pub fn add_written(&self, n: u64) {
        self.written.fetch_add(n, Ordering::Relaxed);
    }
    /// Count bytes zeroed on the target.
    pub fn add_zeroed(&self, n: u64) {
        self.zeroed.fetch_add(n, Ordering::Relaxed);
    }
    /// Count bytes skipped because the target already reads as zeroes.
    pub fn add_skipped(&self, n: u64) {
        self.skipped.fetch_add(n, Ordering::Relaxed);
    }
    /// Bytes written as data so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
    /// Bytes zeroed so far.
    pub fn zeroed(&self) -> u64 {
        self.zeroed.load(Ordering::Relaxed)
    }
    /// Bytes skipped so far.
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }
    /// Set the number of requests in flight.
    pub fn set_in_flight(&self, n: u64) {
        self.in_flight.store(n, Ordering::Relaxed);
    }
    /// Requests in flight.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }
    /// Every counter at once.
    pub fn snapshot(&self) -> ProgressSnapshot {
        ProgressSnapshot {
            total: self.total(),
            data: self.data(),
            zero: self.zero(),
            written: self.written(),
            zeroed: self.zeroed(),
            skipped: self.skipped(),
            in_flight: self.in_flight(),
            retries: self.retries(),
            whole: self.whole.load(Ordering::Relaxed),
            downloaded: self.downloaded.get(),
            download_size: self.downloaded.size(),
            phase: self.phase(),
            engine: self.engine(),
        }
    }
    /// Current phase name.
    pub fn phase(&self) -> &'static str {
        *self.phase.lock().unwrap_or_else(|p| p.into_inner())
    }
    /// I/O engine name (empty until set).
    pub fn engine(&self) -> &'static str {
        *self.engine.lock().unwrap_or_else(|p| p.into_inner())
    }
    /// Name the I/O engine writing the target.
    pub fn set_engine(&self, e: &'static str) {
        *self.engine.lock().unwrap_or_else(|p| p.into_inner()) = e;
    }
    /// Set the phase name.
    pub fn set_phase(&self, p: &'static str) {
        *self.phase.lock().unwrap_or_else(|p| p.into_inner()) = p;
    }
}
