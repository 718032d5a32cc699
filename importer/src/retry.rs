//! Transient source failures are retried inside the process, so that a hiccup of the
//! NFC server or an NBD server costs a few seconds, not a container restart (under CDI
//! each restart counts against Forklift's `IMPORTER_RETRY` budget of 3).
//!
//! * A read that failed on a connection that is still good ([`Retry::Read`]: an NBD
//!   error reply, a VIX error on the read, a local EIO) is read again in place, with
//!   backoff, by [`read`].
//! * A connection that is gone or stuck ([`Retry::Reconnect`]) fails the attempt; the
//!   copy flushes and marks its completed prefix durable, and [`copy_retrying`] opens
//!   the source again and goes on from there.
//! * Anything else ([`Retry::Never`]: authentication, thumbprint, not found, too small,
//!   usage, the target, a protocol violation) fails at once.
//!
//! Both are bounded: [`RetryPolicy::retries`] attempts in a row without progress, and
//! [`MAX_RETRY_TIME`] in all; each retry is logged and counted
//! (`Progress::retries`, the `ferry_retries_total` metric).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::buf::Buf;
use crate::copy::{CopyOptions, CopyStats};
use crate::error::{Error, Retry};
use crate::progress::Progress;
use crate::sink::Sink;
use crate::source::Source;

/// Retries by default: attempts in a row without progress before giving up.
pub const DEFAULT_RETRIES: u32 = 5;
/// Largest `--retries`.
pub const MAX_RETRIES: u32 = 100;
/// First backoff; it doubles with each retry in a row…
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// …up to this.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Time spent on retries of one copy, at most.
pub const MAX_RETRY_TIME: Duration = Duration::from_secs(15 * 60);
/// Bound on closing a failed source before opening it again.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// How failures are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in a row without progress (0: no retries).
    pub retries: u32,
    /// First backoff (doubling, capped at [`MAX_BACKOFF`]).
    pub first_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retries: DEFAULT_RETRIES,
            first_backoff: FIRST_BACKOFF,
        }
    }
}

impl RetryPolicy {
    /// No retries.
    pub fn off() -> Self {
        RetryPolicy {
            retries: 0,
            ..Default::default()
        }
    }

    /// The wait before retry number `n` (1-based) of a row.
    pub fn backoff(&self, n: u32) -> Duration {
        let factor = 1u32 << n.saturating_sub(1).min(16);
        self.first_backoff.saturating_mul(factor).min(MAX_BACKOFF)
    }
}

/// Read `buf` at `offset`, reading again after failures that leave the connection
/// usable. The failed read's buffer is gone with its future; a new one of the same
/// capacity takes its place, so the pool keeps its size.
pub async fn read(
    src: &dyn Source,
    offset: u64,
    buf: Buf,
    policy: RetryPolicy,
    progress: &Progress,
) -> Result<Buf, Error> {
    let (capacity, len) = (buf.capacity(), buf.len());
    let started = Instant::now();
    let mut buf = buf;
    let mut n = 0;
    loop {
        match src.read(offset, buf).await {
            Ok(b) => return Ok(b),
            Err(e)
                if e.retry() == Retry::Read
                    && n < policy.retries
                    && started.elapsed() < MAX_RETRY_TIME =>
            {
                n += 1;
                let wait = policy.backoff(n);
                tracing::warn!(offset, attempt = n, of = policy.retries, error = %e, wait_ms = crate::num::u64_saturating(wait.as_millis()), "read failed; reading again");
                progress.add_retry();
                tokio::time::sleep(wait).await;
                buf = Buf::new(capacity);
                buf.set_len(len);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Opens the source again after a lost connection.
pub type Reopen<'a> = Box<
    dyn FnMut() -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<Arc<dyn Source>, Error>> + Send + 'a>,
        > + Send
        + 'a,
>;

/// [`crate::copy::copy`] as a task of its own on the runtime's workers, aborted if this
/// future is dropped. Called from `block_on` (the binaries' main thread), the copy would
/// otherwise run apart from the tasks it waits for (the NBD readers, spawned on the
/// workers), and every reply's wake would cross threads: a futex call and a context
/// switch per request. On a worker, with one worker under a small CPU quota, they are
/// one thread's queue.
async fn on_a_worker(
    source: Arc<dyn Source>,
    sink: Arc<Sink>,
    opts: CopyOptions,
    progress: Arc<Progress>,
) -> Result<CopyStats, Error> {
    /// Aborts the task when the copy's caller goes away (a cancelled job, a timeout).
    struct AbortOnDrop(tokio::task::JoinHandle<Result<CopyStats, Error>>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let mut task = AbortOnDrop(tokio::spawn(async move {
        crate::copy::copy(source, sink, &opts, progress).await
    }));
    match (&mut task.0).await {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Only an abort ends it otherwise, and only dropping this future aborts it.
        Err(_) => Err(Error::Internal("the copy task was aborted")),
    }
}

/// [`crate::copy::copy`], attempt after attempt: when an attempt fails with a lost
/// connection, the source is closed, opened again with `reopen` (after a backoff; none:
/// the lost connection is the failure), and
/// the copy goes on from the durable watermark the failed attempt left. The returned
/// statistics add up every attempt; the progress counters run on (what was in flight
/// past the watermark when a connection dropped is counted again when read again).
pub async fn copy_retrying(
    first: Arc<dyn Source>,
    mut reopen: Option<Reopen<'_>>,
    sink: Arc<Sink>,
    opts: &CopyOptions,
    progress: Arc<Progress>,
) -> Result<CopyStats, Error> {
    let policy = opts.retry;
    let started = Instant::now();
    let mut opts = opts.clone();
    let mut source = first;
    let mut attempts = 1u32;
    let mut in_a_row = 0u32;
    let mut last_durable = opts.start_at;
    loop {
        let err =
            match on_a_worker(source.clone(), sink.clone(), opts.clone(), progress.clone()).await {
                Ok(mut stats) => {
                    if attempts > 1 {
                        // The counters ran on over every attempt (each byte as often as it
                        // was read or written).
                        stats.bytes_read = progress.data();
                        stats.bytes_written = progress.written();
                        stats.bytes_zeroed = progress.zeroed();
                        stats.bytes_skipped = progress.skipped();
                    }
                    stats.retries = progress.retries();
                    stats.bytes_downloaded = progress.downloaded();
                    stats.seconds = started.elapsed().as_secs_f64();
                    return Ok(stats);
                }
                Err(e) => {
                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, source.close()).await;
                    e
                }
            };
        let durable = progress.durable();
        if durable > last_durable {
            in_a_row = 0;
            last_durable = durable;
        }
        let Some(reopen) = reopen.as_mut() else {
            // Nothing can open it again: the lost connection is the failure.
            return Err(err);
        };
        if err.retry() != Retry::Reconnect
            || in_a_row >= policy.retries
            || started.elapsed() >= MAX_RETRY_TIME
        {
            return Err(err);
        }
        loop {
            in_a_row += 1;
            let wait = policy.backoff(in_a_row);
            tracing::warn!(attempt = in_a_row, of = policy.retries, error = %err, resume_at = durable, wait_ms = crate::num::u64_saturating(wait.as_millis()), "the source connection failed; opening it again and going on from the durable watermark");
            progress.add_retry();
            tokio::time::sleep(wait).await;
            match reopen().await {
                Ok(s) => {
                    source = s;
                    break;
                }
                Err(e)
                    if e.retry() != Retry::Never
                        && in_a_row < policy.retries
                        && started.elapsed() < MAX_RETRY_TIME =>
                {
                    tracing::warn!(error = %e, "opening the source again failed");
                }
                Err(e) => return Err(e),
            }
        }
        attempts += 1;
        opts.start_at = durable;
    }
}
