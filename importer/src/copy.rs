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
    /// Compute the disk's digest as read ([`crate::digest`]): a full copy from the start,
    /// or a resumed one whose journal kept the digest's groups, has one; a delta does not.
    pub digest: bool,
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
    /// Pool buffers registered with the engine (io_uring fixed buffers; 0: none).
    pub fixed_buffers: usize,
    /// Reads read again and reconnects, over every attempt.
    pub retries: u64,
    /// A delta: only changed areas were copied.
    pub delta: bool,
    /// Bytes received from an HTTP source (the file as downloaded; 0 for others).
    pub bytes_downloaded: u64,
    /// The disk's digest as read (`blake3-64k:…`), when asked for and the copy read the
    /// whole disk (not a delta; resumed only with the journal's kept digest groups).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The same, with its group hashes (to name a first difference).
    #[serde(skip)]
    pub digest_full: Option<std::sync::Arc<crate::digest::Digest>>,
}

impl CopyStats {
    /// The statistics of a copy about to start onto `sink` with this pool.
    fn start(sink: &Sink, buf_size: usize, buf_count: usize) -> CopyStats {
        CopyStats {
            engine: sink.engine_name().into(),
            direct: sink.is_direct(),
            buf_size,
            buf_count,
            ..Default::default()
        }
    }
}

enum Done {
    Data {
        buf: Buf,
        offset: u64,
        len: u64,
        written: bool,
    },
    Zero {
        offset: u64,
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
    let (align, buf_size, mut free) = pool(source.as_ref(), opts)?;
    // Unregistered when the copy ends (on every path: a guard).
    let registration = sink.register_pool(&mut free).await;
    let window = source.extent_window().max(align);
    let (start_at, digest) = prepare(&source, &sink, opts, &progress, &mut free, window).await?;
    let mut marks = Watermark::new(start_at);
    let attempt: Result<CopyStats, Error> = async {
        // Allocation windows, fetched ahead of the copy by their own task.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<ExtentMap, Error>>(2);
        let spec = PlanSpec {
            start_at,
            size,
            window,
            use_extents: opts.use_extents,
            changes: opts.changes.clone(),
        };
        let _abort_planner = AbortOnDrop(tokio::spawn(plan_windows(source.clone(), spec, tx)));
        let stats = CopyStats {
            size,
            delta: opts.changes.is_some(),
            fixed_buffers: registration.buffers,
            ..CopyStats::start(&sink, buf_size, free.len())
        };
        let mut d = Dispatcher {
            source: &source,
            sink: &sink,
            opts,
            progress: &progress,
            free,
            marks: &mut marks,
            in_flight: FuturesUnordered::new(),
            zeros: 0,
            stats,
            // Samples cover the first bytes of a written request (at least one block).
            settle: Settle {
                progress: &progress,
                journal: opts.journal.as_deref(),
                sample_len: crate::journal::SAMPLE_BYTES.max(align),
            },
            digest,
        };
        d.run(rx, align, size, buf_size, start_at).await?;
        let mut stats = d.stats;
        if let Some(g) = d.digest {
            let full = std::sync::Arc::new(g.finish()?);
            stats.digest = Some(full.text());
            stats.digest_full = Some(full);
        }
        progress.set_phase("flushing");
        sink.flush().await?;
        // A source that checks its input (a checksum) says so before the copy is done.
        source.finish().await?;
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
    match &attempt {
        Ok(_) => progress.set_durable(size),
        Err(_) if marks.mark > start_at => keep_durable(&sink, opts, &progress, marks.mark).await,
        Err(_) => {}
    }
    attempt
}

/// After a failed attempt, keep what is done: flush, and the completed prefix is durable
/// for a retry in this process (and, recorded in the journal, for a restarted one).
async fn keep_durable(sink: &Sink, opts: &CopyOptions, progress: &Progress, mark: u64) {
    if sink.flush().await.is_ok() {
        progress.set_durable(mark);
        if let Some(j) = &opts.journal
            && let Err(e) = j.record(mark, None)
        {
            tracing::warn!(error = %e, "cannot record the durable watermark after the failure");
        }
    }
}

/// A dispatched request, with its watermark index.
type InFlight = std::pin::Pin<Box<dyn Future<Output = (u64, Result<Done, Error>)> + Send>>;

/// The dispatcher of one attempt: takes planned extents in order, waits for capacity
/// (a free buffer for data, a zeroing slot otherwise), starts each request and settles
/// completions as they come, in any order.
struct Dispatcher<'a> {
    source: &'a Arc<dyn Source>,
    sink: &'a Arc<Sink>,
    opts: &'a CopyOptions,
    progress: &'a Arc<Progress>,
    free: Vec<Buf>,
    marks: &'a mut Watermark,
    in_flight: FuturesUnordered<InFlight>,
    zeros: usize,
    stats: CopyStats,
    settle: Settle<'a>,
    /// The digest being built, when asked for and the copy covers the whole disk.
    digest: Option<crate::digest::Digester>,
}

impl Dispatcher<'_> {
    /// Dispatch every window `rx` brings, then wait for the last completion.
    async fn run(
        &mut self,
        mut rx: tokio::sync::mpsc::Receiver<Result<ExtentMap, Error>>,
        align: u64,
        size: u64,
        buf_size: usize,
        start_at: u64,
    ) -> Result<(), Error> {
        let mut plan: VecDeque<Extent> = VecDeque::new();
        let mut plan_done = false;
        let mut records = Records {
            first: start_at,
            recorded: start_at,
            at: Instant::now(),
        };
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
                    Some((idx, d)) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                        self.settle_one(idx, d)?;
                    }
                }
            };
            let Some(item) = item else { break };
            self.wait_for_capacity(item.kind).await?;
            self.start(item);
            if let Some(j) = &self.opts.journal {
                let step = JournalStep {
                    mark: self.marks.mark,
                    digest: self.digest.as_ref(),
                };
                journal_step(j, self.sink, self.progress, step, &mut records).await?;
            }
            self.progress.set_in_flight(self.in_flight.len() as u64);
        }
        while let Some((idx, d)) = self.in_flight.next().await {
            self.settle_one(idx, d)?;
            self.progress.set_in_flight(self.in_flight.len() as u64);
        }
        Ok(())
    }

    fn settle_one(&mut self, idx: u64, d: Result<Done, Error>) -> Result<(), Error> {
        if let (Some(g), Ok(done)) = (self.digest.as_mut(), &d) {
            match done {
                Done::Data {
                    buf, offset, len, ..
                } => g.data(*offset, &buf.as_slice()[..crate::num::usize_of(*len)])?,
                Done::Zero { offset, len, .. } => g.zero(*offset, *len)?,
            }
        }
        settle(
            d,
            idx,
            self.marks,
            &mut self.free,
            &mut self.zeros,
            &mut self.stats,
            &self.settle,
        )
    }

    /// Settle completions until an extent of `kind` can start.
    async fn wait_for_capacity(&mut self, kind: ExtentKind) -> Result<(), Error> {
        loop {
            let ready = match kind {
                ExtentKind::Data => !self.free.is_empty(),
                _ => self.zeros < MAX_ZERO_IN_FLIGHT,
            };
            if ready {
                return Ok(());
            }
            let (idx, d) = self
                .in_flight
                .next()
                .await
                .ok_or(Error::Internal("copy pipeline stalled"))?;
            self.settle_one(idx, d)?;
        }
    }

    /// Start `item`'s request (capacity was waited for).
    fn start(&mut self, item: Extent) {
        let idx = self.marks.dispatch(item.offset + item.length);
        let buf = match item.kind {
            ExtentKind::Data => {
                let Some(mut buf) = self.free.pop() else {
                    unreachable!("capacity was waited for")
                };
                buf.set_len(crate::num::usize_of(item.length));
                Some(buf)
            }
            _ => {
                self.zeros += 1;
                None
            }
        };
        let work = request(item, buf, self.source, self.sink, self.opts, self.progress);
        self.in_flight
            .push(Box::pin(async move { (idx, work.await) }));
    }
}

/// The buffer pool: `buf_count` buffers of `buf_size` (capped by the source's largest
/// read), every request aligned for O_DIRECT and the source's block size (both powers
/// of two, so the larger is a multiple of the smaller). Returns the alignment, the
/// buffer size and the buffers.
fn pool(source: &dyn Source, opts: &CopyOptions) -> Result<(u64, usize, Vec<Buf>), Error> {
    let align = source.block_size().max(BUF_ALIGN as u64);
    if !align.is_power_of_two() || align > opts.buf_size as u64 {
        return Err(crate::error::UsageError::BlockSizeTooLarge {
            source_name: source.describe(),
            block_size: align,
            buf_size: opts.buf_size,
        }
        .into());
    }
    Ok(pool_of(align, source.max_read().max(align), opts))
}

/// `buf_count` buffers of `buf_size` capped by `max_read` and aligned to `align`.
fn pool_of(align: u64, max_read: u64, opts: &CopyOptions) -> (u64, usize, Vec<Buf>) {
    let buf_size = crate::num::usize_of((opts.buf_size as u64).min(max_read / align * align));
    let free = (0..opts.buf_count.max(1))
        .map(|_| Buf::new(buf_size))
        .collect();
    (align, buf_size, free)
}

/// Set the progress totals and decide where this attempt starts: at `opts.start_at`
/// only if the journal's samples read back the same from the target and the source.
/// With a digest asked for, also the digest to build: from the start, or — resuming — from
/// the digest groups the journal keeps, the start lowered to their end (a resume whose
/// journal keeps none has no digest).
async fn prepare(
    source: &Arc<dyn Source>,
    sink: &Sink,
    opts: &CopyOptions,
    progress: &Progress,
    free: &mut Vec<Buf>,
    window: u64,
) -> Result<(u64, Option<crate::digest::Digester>), Error> {
    let size = source.size();
    progress.set_total(size);
    progress.set_engine(sink.engine_name());
    let mut start_at = opts.start_at.min(size);
    if let Some(j) = opts.journal.as_ref().filter(|_| start_at > 0)
        && let Some(buf) = free.pop()
    {
        let (buf, trusted) = j.verify(source.as_ref(), sink, buf).await?;
        free.push(buf);
        if !trusted {
            start_at = 0;
        }
    }
    let mut digest = None;
    if opts.digest && opts.changes.is_none() {
        let kept = opts
            .journal
            .as_ref()
            .filter(|_| start_at > 0)
            .map(|j| j.digest_groups())
            .unwrap_or_default();
        if start_at == 0 {
            digest = Some(crate::digest::Digester::new(size));
        } else if !kept.is_empty() {
            let end = (kept.len() as u64 * crate::digest::GROUP).min(size);
            if end < start_at {
                if let Some(j) = &opts.journal {
                    j.rewind_to(end);
                }
                tracing::info!(
                    from = end,
                    to = start_at,
                    "copying again from the end of the digest groups the journal keeps"
                );
            }
            start_at = start_at.min(end);
            digest = Some(crate::digest::Digester::resumed(size, &kept));
        }
    }
    if let Some(c) = &opts.changes {
        // A delta's progress counts changed bytes, not the whole disk (CDI's percentage
        // still divides by the whole disk).
        progress.set_whole(size);
        progress.set_total(changed_bytes(source, c, size, window).await?);
    }
    if start_at > 0 {
        tracing::info!(
            start_at,
            size,
            "resuming: everything below start_at is already on the target"
        );
        // What is already there counts as done (once: a retry in this process has
        // counted it already).
        if opts.changes.is_none() && progress.done() < start_at {
            progress.add_zero(start_at - progress.done());
        }
    }
    progress.set_durable(start_at);
    Ok((start_at, digest))
}

/// What the planner task plans over.
struct PlanSpec {
    start_at: u64,
    size: u64,
    window: u64,
    use_extents: bool,
    changes: Option<Changes>,
}

/// The planner: window by window from `start_at`, the source's allocation (or all Data)
/// restricted, for a delta, to the changed areas; sent ahead of the copy, stopping at
/// the first error (which is sent).
async fn plan_windows(
    src: Arc<dyn Source>,
    p: PlanSpec,
    tx: tokio::sync::mpsc::Sender<Result<ExtentMap, Error>>,
) {
    let mut at = p.start_at;
    while at < p.size {
        let len = p.window.min(p.size - at);
        let alloc = if p.use_extents {
            src.extents(at, len)
                .await
                .map(|m| m.fill_gaps(at, at + len, ExtentKind::Data))
        } else {
            Ok(ExtentMap::single(at, len, ExtentKind::Data))
        };
        let map = match (&p.changes, alloc) {
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
}

type Request = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Done, Error>> + Send>>;

/// One planned extent's work: a Data extent is read into `buf` (read again in place
/// after a failure that leaves the connection usable) and written, unless it is all
/// zeroes on a target that already reads as zeroes; a Zero or Hole extent is zeroed.
fn request(
    item: Extent,
    buf: Option<Buf>,
    source: &Arc<dyn Source>,
    sink: &Arc<Sink>,
    opts: &CopyOptions,
    progress: &Arc<Progress>,
) -> Request {
    let snk = sink.clone();
    let Some(buf) = buf else {
        return zero_request(item.offset, item.length, sink);
    };
    let src = source.clone();
    let detect = opts.detect_zeroes && sink.kind() == TargetKind::NewFile;
    let (retry, progress) = (opts.retry, progress.clone());
    Box::pin(async move {
        let buf = crate::retry::read(src.as_ref(), item.offset, buf, retry, &progress).await?;
        // A new file already reads as zeroes: an all-zero buffer (allocated but zero on
        // the source, common on thick disks) needs no write. The scan stops at the first
        // non-zero byte, so data costs ~nothing.
        let written = !(detect && buf.is_zero());
        let buf = if written {
            let (buf, r) = snk.write(buf, item.offset).await;
            r?;
            buf
        } else {
            buf
        };
        Ok(Done::Data {
            buf,
            offset: item.offset,
            len: item.length,
            written,
        })
    })
}

/// Make `[offset, offset+len)` of the target read as zeroes (no buffer held).
fn zero_request(offset: u64, len: u64, sink: &Arc<Sink>) -> Request {
    let snk = sink.clone();
    Box::pin(async move {
        let outcome = snk.zero(offset, len).await?;
        Ok(Done::Zero {
            offset,
            len,
            outcome,
        })
    })
}

/// What a journal record may say: the durable watermark, and the digest's groups below it.
struct JournalStep<'a> {
    mark: u64,
    digest: Option<&'a crate::digest::Digester>,
}

/// When the journal was last brought up to date.
struct Records {
    /// Where this run started (the first record comes sooner).
    first: u64,
    /// The watermark last recorded.
    recorded: u64,
    /// When.
    at: Instant,
}

/// Bring the journal up to date when the durable prefix grew enough or enough time
/// passed ([`JOURNAL_BYTES`], [`JOURNAL_INTERVAL`]; sooner for the first record). Data
/// before journal: the target is flushed, then the watermark recorded.
async fn journal_step(
    j: &crate::journal::JournalFile,
    sink: &Sink,
    progress: &Progress,
    step: JournalStep<'_>,
    r: &mut Records,
) -> Result<(), Error> {
    let mark = step.mark;
    let (due_bytes, due_time) = if r.recorded == r.first {
        (JOURNAL_FIRST_BYTES, JOURNAL_FIRST_INTERVAL)
    } else {
        (JOURNAL_BYTES, JOURNAL_INTERVAL)
    };
    if mark > r.recorded && (mark - r.recorded >= due_bytes || r.at.elapsed() >= due_time) {
        sink.flush().await?;
        j.record(mark, step.digest)?;
        progress.set_durable(mark);
        r.recorded = mark;
        r.at = Instant::now();
    }
    Ok(())
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
        Done::Zero { len, outcome, .. } => {
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

#[path = "copy_stream.rs"]
mod stream;
pub use stream::copy_stream;

#[cfg(test)]
#[path = "copy_tests.rs"]
mod tests;
