//! The one copy pipeline: Source → Plan → buffer pool → Sink.
//!
//! ```text
//!  extents task ──(window maps, 2 ahead)──► plan queue ──► dispatch
//!                                                            │  Data: take a free buffer,
//!                                                            │        read into it, write it
//!                                                            │  Zero/Hole: sink.zero()
//!                                                            ▼
//!                         completions ──► buffer back to the free list, counters
//! ```
//!
//! The pool holds `buf_count` buffers of `buf_size` bytes, allocated once. A Data
//! request needs a free buffer, so at most `buf_count` reads+writes are in flight and
//! the copy never holds more disk data than the pool. Plans are built one window at a
//! time (allocation queried ahead of the copy, never per request), aligned so O_DIRECT
//! writes stay 4 KiB aligned. The copy is reported done only after every completion
//! was checked and the sink's flush returned.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use ferry_cbt::{Extent, ExtentKind, ExtentMap};
use futures::stream::{FuturesUnordered, StreamExt};

use crate::buf::{BUF_ALIGN, Buf};
use crate::error::Error;
use crate::progress::Progress;
use crate::sink::{Sink, TargetKind, ZeroOutcome};
use crate::source::Source;

/// Largest single zeroing request.
pub const MAX_ZERO_REQUEST: u64 = 1 << 30;
/// Zeroing requests in flight at once (they hold no buffer).
pub const MAX_ZERO_IN_FLIGHT: usize = 8;

/// The changed areas of a delta copy.
#[derive(Debug, Clone)]
pub enum Changes {
    /// Ask the source (`Source::changes`, e.g. an NBD dirty bitmap).
    FromSource,
    /// A map given up front (Data extents = changed areas).
    Map(Arc<ExtentMap>),
}

async fn window_changes(
    src: &Arc<dyn Source>,
    c: &Changes,
    at: u64,
    len: u64,
) -> Result<ExtentMap, Error> {
    match c {
        Changes::FromSource => src.changes(at, len).await,
        Changes::Map(m) => Ok(m.clip(at, at + len)),
    }
}

/// Total changed bytes (a counting pass, window by window: bounded memory).
async fn changed_bytes(
    src: &Arc<dyn Source>,
    c: &Changes,
    size: u64,
    window: u64,
) -> Result<u64, Error> {
    let mut total = 0;
    let mut at = 0;
    while at < size {
        let len = window.min(size - at);
        total += window_changes(src, c, at, len).await?.covered_bytes();
        at += len;
    }
    Ok(total)
}

/// Tunables of one copy.
#[derive(Debug, Clone)]
pub struct CopyOptions {
    /// Bytes per pool buffer (a multiple of 64 KiB).
    pub buf_size: usize,
    /// Number of pool buffers.
    pub buf_count: usize,
    /// Use the source's allocation; otherwise read everything.
    pub use_extents: bool,
    /// Skip writing all-zero buffers where the target already reads as zeroes.
    pub detect_zeroes: bool,
    /// Copy only these changed areas onto a target that holds the previous round.
    pub changes: Option<Changes>,
    /// Start here: everything below is already durably on the target (resume; the
    /// journal's samples are checked first, and a mismatch starts from zero).
    pub start_at: u64,
    /// Record progress here, so a restarted copy resumes instead of starting over
    /// (opened and begun by the caller: `JournalFile::open`, then `begin`).
    pub journal: Option<Arc<crate::journal::JournalFile>>,
    /// How a failed read is retried in place (a lost connection is the caller's:
    /// [`crate::retry::copy_retrying`]).
    pub retry: crate::retry::RetryPolicy,
}

/// The journal is brought up to date (the target flushed first) whenever the durable
/// prefix grew by this much…
pub const JOURNAL_BYTES: u64 = 256 * 1024 * 1024;
/// …or this much time passed, whichever comes first. A restart re-reads at most about
/// JOURNAL_BYTES plus what was in flight.
pub const JOURNAL_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
/// The first progress record of a run lands sooner (this much data or
/// [`JOURNAL_FIRST_INTERVAL`]), so a kill early in a long copy keeps what is durable.
pub const JOURNAL_FIRST_BYTES: u64 = 32 * 1024 * 1024;
/// See [`JOURNAL_FIRST_BYTES`].
pub const JOURNAL_FIRST_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);

/// The durable-prefix tracker: requests complete out of order; the watermark is the end
/// of the longest prefix of dispatched requests that have all completed.
#[derive(Debug)]
struct Watermark {
    base: u64,
    order: VecDeque<(u64, bool)>,
    mark: u64,
}

impl Watermark {
    fn new(start: u64) -> Self {
        Watermark {
            base: 0,
            order: VecDeque::new(),
            mark: start,
        }
    }
    fn dispatch(&mut self, end: u64) -> u64 {
        self.order.push_back((end, false));
        self.base + self.order.len() as u64 - 1
    }
    fn complete(&mut self, idx: u64) {
        if let Some(slot) = idx
            .checked_sub(self.base)
            .and_then(|i| self.order.get_mut(crate::num::usize_of(i)))
        {
            slot.1 = true;
        }
        while let Some(&(end, true)) = self.order.front() {
            self.mark = end;
            self.order.pop_front();
            self.base += 1;
        }
    }
}

/// What a copy did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CopyStats {
    /// Source size.
    pub size: u64,
    /// Bytes read from the source.
    pub bytes_read: u64,
    /// Bytes written to the target as data.
    pub bytes_written: u64,
    /// Bytes zeroed on the target by punch/unmap/write-zeroes.
    pub bytes_zeroed: u64,
    /// Bytes skipped because the target already reads as zeroes there (zero ranges of
    /// the source, and data buffers that turned out to be all zeroes).
    pub bytes_skipped: u64,
    /// Wall-clock seconds, including the final flush.
    pub seconds: f64,
    /// I/O engine used.
    pub engine: String,
    /// Whether O_DIRECT was used for the target.
    pub direct: bool,
    /// Pool buffer size.
    pub buf_size: usize,
    /// Pool buffer count.
    pub buf_count: usize,
    /// Reads read again and reconnects, over every attempt.
    pub retries: u64,
    /// A delta: only changed areas were copied.
    pub delta: bool,
}

enum Done {
    Data {
        buf: Buf,
        offset: u64,
        len: u64,
        written: bool,
    },
    Zero {
        len: u64,
        outcome: ZeroOutcome,
    },
}

/// Copy the whole source onto the sink.
pub async fn copy(
    source: Arc<dyn Source>,
    sink: Arc<Sink>,
    opts: &CopyOptions,
    progress: Arc<Progress>,
) -> Result<CopyStats, Error> {
    let start = Instant::now();
    let size = source.size();
    // Requests are aligned for O_DIRECT and for the source's minimum block size (both
    // powers of two, so the larger is a multiple of the smaller).
    let align = source.block_size().max(BUF_ALIGN as u64);
    if !align.is_power_of_two() || align > opts.buf_size as u64 {
        return Err(Error::Source(format!(
            "{}: minimum block size {align} does not fit buffers of {} bytes",
            source.describe(),
            opts.buf_size
        )));
    }
    let max_read = source.max_read().max(align);
    let buf_size = crate::num::usize_of((opts.buf_size as u64).min(max_read / align * align));
    let mut free: Vec<Buf> = (0..opts.buf_count.max(1))
        .map(|_| Buf::new(buf_size))
        .collect();
    progress.set_total(size);
    progress.set_engine(sink.engine_name());
    // A resume is trusted only once the journal's samples read back the same from the
    // target and the source.
    let mut start_at = opts.start_at.min(size);
    if let (Some(j), true) = (&opts.journal, start_at > 0) {
        let buf = free.pop().unwrap_or_else(|| Buf::new(buf_size));
        let (buf, trusted) = j.verify(source.as_ref(), &sink, buf).await?;
        free.push(buf);
        if !trusted {
            start_at = 0;
        }
    }

    // Allocation windows, fetched ahead of the copy by their own task.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<ExtentMap, Error>>(2);
    let src = source.clone();
    let use_extents = opts.use_extents;
    let window = source.extent_window().max(align);
    let changes = opts.changes.clone();
    if let Some(c) = &changes {
        // A delta's progress counts changed bytes, not the whole disk (CDI's percentage
        // still divides by the whole disk).
        progress.set_whole(size);
        progress.set_total(changed_bytes(&source, c, size, window).await?);
    }
    if start_at > 0 {
        tracing::info!(
            start_at,
            size,
            "resuming: everything below start_at is already on the target"
        );
        // What is already there counts as done (once: a retry in this process has
        // counted it already).
        if changes.is_none() && progress.done() < start_at {
            progress.add_zero(start_at - progress.done());
        }
    }
    progress.set_durable(start_at);
    let mut marks = Watermark::new(start_at);
    let attempt: Result<CopyStats, Error> = async {
        let planner = tokio::spawn(async move {
            let mut at = start_at;
            while at < size {
                let len = window.min(size - at);
                let alloc = if use_extents {
                    src.extents(at, len)
                        .await
                        .map(|m| m.fill_gaps(at, at + len, ExtentKind::Data))
                } else {
                    Ok(ExtentMap::single(at, len, ExtentKind::Data))
                };
                let map = match (&changes, alloc) {
                    (None, alloc) => alloc,
                    (Some(_), Err(e)) => Err(e),
                    (Some(c), Ok(alloc)) => window_changes(&src, c, at, len)
                        .await
                        .map(|changed| crate::delta::plan_window(&alloc, &changed)),
                };
                let failed = map.is_err();
                if tx.send(map).await.is_err() || failed {
                    return;
                }
                at += len;
            }
        });
        let _abort_planner = AbortOnDrop(planner);

        let mut stats = CopyStats {
            size,
            delta: opts.changes.is_some(),
            engine: sink.engine_name().into(),
            direct: sink.is_direct(),
            buf_size,
            buf_count: free.len(),
            ..Default::default()
        };
        let mut plan: VecDeque<Extent> = VecDeque::new();
        let mut plan_done = false;
        let mut in_flight = FuturesUnordered::new();
        let mut zeros_in_flight = 0usize;
        let mut recorded = start_at;
        // Samples cover the first bytes of a written request (at least one aligned block).
        let sample_len = crate::journal::SAMPLE_BYTES.max(align);
    let ctx = Settle {
        progress: &progress,
        journal: opts.journal.as_deref(),
        sample_len,
    };
        let mut last_record = Instant::now();

        loop {
            // Next piece of work, refilling the plan while completions keep being handled.
            let item = loop {
                if let Some(e) = plan.pop_front() {
                    break Some(e);
                }
                if plan_done {
                    break None;
                }
                tokio::select! {
                    w = rx.recv() => match w {
                        Some(Ok(map)) => {
                            let map = map.align_data(align, size);
                            plan.extend(map.split(buf_size as u64, MAX_ZERO_REQUEST));
                        }
                        Some(Err(e)) => return Err(e),
                        None => plan_done = true,
                    },
                    Some((idx, d)) = in_flight.next(), if !in_flight.is_empty() => {
                        settle(d, idx, &mut marks, &mut free, &mut zeros_in_flight, &mut stats, &ctx)?;
                    }
                }
            };
            let Some(item) = item else { break };
            // Wait for capacity for this item.
            loop {
                let ready = match item.kind {
                    ExtentKind::Data => !free.is_empty(),
                    _ => zeros_in_flight < MAX_ZERO_IN_FLIGHT,
                };
                if ready {
                    break;
                }
                let (idx, d) = in_flight
                    .next()
                    .await
                    .ok_or_else(|| Error::Source("copy pipeline stalled".into()))?;
                settle(
                    d,
                    idx,
                    &mut marks,
                    &mut free,
                    &mut zeros_in_flight,
                    &mut stats,
                    &ctx,
                )?;
            }
            let idx = marks.dispatch(item.offset + item.length);
            let work: std::pin::Pin<Box<dyn std::future::Future<Output = Result<Done, Error>> + Send>> =
                match item.kind {
                    ExtentKind::Data => {
                        let Some(mut buf) = free.pop() else {
                            unreachable!("capacity checked above")
                        };
                        buf.set_len(crate::num::usize_of(item.length));
                        let (src, snk) = (source.clone(), sink.clone());
                        let detect = opts.detect_zeroes && sink.kind() == TargetKind::NewFile;
                        let (retry, progress) = (opts.retry, progress.clone());
                        Box::pin(async move {
                            let buf = crate::retry::read(
                                src.as_ref(),
                                item.offset,
                                buf,
                                retry,
                                &progress,
                            )
                            .await?;
                            // A new file already reads as zeroes: an all-zero buffer (allocated
                            // but zero on the source, common on thick disks) needs no write.
                            // The scan stops at the first non-zero byte, so data costs ~nothing.
                            if detect && buf.is_zero() {
                                return Ok(Done::Data {
                                    buf,
                                    offset: item.offset,
                                    len: item.length,
                                    written: false,
                                });
                            }
                            let (buf, r) = snk.write(buf, item.offset).await;
                            r?;
                            Ok(Done::Data {
                                buf,
                                offset: item.offset,
                                len: item.length,
                                written: true,
                            })
                        })
                    }
                    _ => {
                        zeros_in_flight += 1;
                        let snk = sink.clone();
                        Box::pin(async move {
                            let outcome = snk.zero(item.offset, item.length).await?;
                            Ok(Done::Zero {
                                len: item.length,
                                outcome,
                            })
                        })
                    }
                };
            in_flight.push(Box::pin(async move { (idx, work.await) }));
            let (due_bytes, due_time) = if recorded == start_at {
                (JOURNAL_FIRST_BYTES, JOURNAL_FIRST_INTERVAL)
            } else {
                (JOURNAL_BYTES, JOURNAL_INTERVAL)
            };
            if let Some(j) = &opts.journal
                && marks.mark > recorded
                && (marks.mark - recorded >= due_bytes || last_record.elapsed() >= due_time)
            {
                // Data before journal: the target is flushed, then the watermark recorded.
                let mark = marks.mark;
                sink.flush().await?;
                j.record(mark)?;
                progress.set_durable(mark);
                recorded = mark;
                last_record = Instant::now();
            }
            progress.set_in_flight(in_flight.len() as u64);
        }
        while let Some((idx, d)) = in_flight.next().await {
            settle(
                d,
                idx,
                &mut marks,
                &mut free,
                &mut zeros_in_flight,
                &mut stats,
                &ctx,
            )?;
            progress.set_in_flight(in_flight.len() as u64);
        }
        progress.set_phase("flushing");
        sink.flush().await?;
        if let Some(j) = &opts.journal {
            j.finish()?;
        }
        source.close().await;
        stats.seconds = start.elapsed().as_secs_f64();
        // Not "done" yet: the caller still writes what follows the copy (a grown image,
        // the round marker) and says "done" after that.
        Ok(stats)
    }
    .await;
    if attempt.is_err() && marks.mark > start_at {
        // Keep what is done: flush, and the completed prefix is durable for a retry in
        // this process (and, recorded in the journal, for a restarted one).
        if sink.flush().await.is_ok() {
            progress.set_durable(marks.mark);
            if let Some(j) = &opts.journal
                && let Err(e) = j.record(marks.mark)
            {
                tracing::warn!(error = %e, "cannot record the durable watermark after the failure");
            }
        }
    }
    if attempt.is_ok() {
        progress.set_durable(size);
    }
    attempt
}

/// What settling a completion needs besides the copy's books.
struct Settle<'a> {
    progress: &'a Progress,
    journal: Option<&'a crate::journal::JournalFile>,
    /// Bytes of a written request a journal sample covers.
    sample_len: u64,
}

/// A request completed: a failure ends the attempt (and never joins the durable
/// prefix); a success joins it, returns its buffer and is counted.
fn settle(
    r: Result<Done, Error>,
    idx: u64,
    marks: &mut Watermark,
    free: &mut Vec<Buf>,
    zeros: &mut usize,
    stats: &mut CopyStats,
    ctx: &Settle<'_>,
) -> Result<(), Error> {
    let d = r?;
    marks.complete(idx);
    let (progress, journal, sample_len) = (ctx.progress, ctx.journal, ctx.sample_len);
    match d {
        Done::Data {
            buf,
            offset,
            len,
            written,
        } => {
            if let (Some(j), true) = (journal, written) {
                // What was written here is a sample the journal may carry as proof.
                j.offer(
                    offset,
                    &buf.as_slice()[..crate::num::usize_of(sample_len.min(len))],
                );
            }
            free.push(buf);
            stats.bytes_read += len;
            if written {
                stats.bytes_written += len;
                progress.add_written(len);
            } else {
                stats.bytes_skipped += len;
                progress.add_skipped(len);
            }
            progress.add_data(len);
        }
        Done::Zero { len, outcome } => {
            *zeros -= 1;
            match outcome {
                ZeroOutcome::Skipped => {
                    stats.bytes_skipped += len;
                    progress.add_skipped(len);
                }
                ZeroOutcome::Zeroed => {
                    stats.bytes_zeroed += len;
                    progress.add_zeroed(len);
                }
            }
            progress.add_zero(len);
        }
    }
    Ok(())
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
#[path = "copy_tests.rs"]
mod tests;
