//! The one job runner: every entry point (`ferry copy`, `ferry import`, `ferry bench`)
//! hands it an opened source, a target path and what to do, and it
//!
//! 1. checks the target (a delta goes only onto the previous round's target, whose round
//!    marker names the round it starts from), removes the round marker (until this round
//!    completes the target holds none), checks the journal path (never the target, the
//!    source or the round marker),
//! 2. opens the target (creating a sparse file, or an existing device), preallocates if
//!    asked, begins the journal (resume only onto the same target and source),
//! 3. copies, retrying in place and reconnecting from the durable watermark
//!    ([`crate::retry::copy_retrying`]); the copy flushes and finishes the journal,
//! 4. grows the image to the volume's usable size if asked (flushed again),
//! 5. writes the round marker, sets the image's mode,
//!
//! and only then reports done. The source is closed on every path: by the copy on
//! success, by the retry loop after each failed attempt, here after a stream's copy.
//! A stream ([`Input::Stream`]) is copied by [`crate::copy::copy_stream`]: no resume,
//! no delta, and its size is where it ends.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::copy::{Changes, CopyOptions, CopyStats};
use crate::engine::IoEngine;
use crate::error::Error;
use crate::progress::Progress;
use crate::retry::{Reopen, RetryPolicy};
use crate::sink::{DirectMode, Sink};
use crate::source::Input;

/// What to copy: everything, or only the changed areas onto the previous round.
#[derive(Debug, Clone)]
pub struct Plan {
    /// `None`: a full copy.
    pub changes: Option<Changes>,
    /// How the journal names this plan (`full`, `delta:<change ID>`, …): a journal
    /// of another plan is never resumed.
    pub label: String,
    /// A delta's start, for messages ("delta from change ID …").
    pub delta_from: String,
    /// The round a delta starts from, checked against the target's round marker.
    pub previous: Option<crate::round::Previous>,
}

impl Plan {
    /// A full copy.
    pub fn full() -> Plan {
        Plan {
            changes: None,
            label: "full".into(),
            delta_from: String::new(),
            previous: None,
        }
    }
}

/// What the pipeline is given.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// Bytes per pool buffer.
    pub buf_size: usize,
    /// Pool buffers.
    pub buf_count: usize,
    /// Use the source's allocation.
    pub use_extents: bool,
    /// Skip all-zero buffers where the target already reads as zeroes.
    pub detect_zeroes: bool,
    /// O_DIRECT on the target.
    pub direct: DirectMode,
    /// Retries of failed reads and lost connections.
    pub retry: RetryPolicy,
    /// Compute the disk's digest as read.
    pub digest: bool,
}

/// After the copy: what the import flow leaves on a filesystem volume.
#[derive(Debug, Clone, Default)]
pub struct Finish {
    /// Grow the image to this size when larger (CDI's `ResizeImage`), preallocating
    /// the growth when the job preallocates.
    pub grow_to: Option<u64>,
    /// Write this round marker here (atomically) once the copy is durable.
    pub round_marker: Option<(PathBuf, ferry_contract::round::Round)>,
    /// Set the image's mode (CDI leaves disk.img 0660).
    pub mode: Option<u32>,
}

/// One job.
pub struct Job<'a> {
    /// The opened source: a disk read at any offset, or a stream read in order.
    pub source: Input,
    /// Opens the source again after a lost connection (none: a lost connection fails).
    pub reopen: Option<Reopen<'a>>,
    /// The file or block device to write.
    pub target: &'a Path,
    /// Full or delta.
    pub plan: Plan,
    /// A delta onto an image an earlier round grew past the disk's size: keep its length.
    pub keep_larger: bool,
    /// The resume journal, if any.
    pub journal: Option<&'a Path>,
    /// Other paths the journal may not be (the round marker).
    pub protected: Vec<(&'a Path, &'static str)>,
    /// Allocate the whole target first.
    pub preallocate: bool,
    /// The pipeline's settings.
    pub tuning: Tuning,
    /// The I/O engine for the target.
    pub engine: Arc<dyn IoEngine>,
    /// What follows the copy.
    pub finish: Finish,
}

impl std::fmt::Debug for Job<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("source", &self.source)
            .field("target", &self.target)
            .field("plan", &self.plan)
            .field("journal", &self.journal)
            .finish_non_exhaustive()
    }
}

/// What a job did.
#[derive(Debug)]
pub struct Outcome {
    /// The copy's statistics.
    pub stats: CopyStats,
    /// Whether the target was preallocated.
    pub preallocation_applied: bool,
}

/// Steps 1 and 2: check, open the target, begin the journal. Returns the sink, the copy
/// options and whether preallocation happened.
async fn open(job: &mut Job<'_>) -> Result<(Arc<Sink>, CopyOptions, bool), Error> {
    let size = job.source.size();
    if let Input::Stream(s) = &job.source {
        refuse_for_stream(job, &s.describe())?;
    }
    let marker = job.finish.round_marker.as_ref().map(|(m, _)| m.as_path());
    if job.plan.changes.is_some() {
        let size = size.unwrap_or_default();
        crate::delta::check_target(job.target, size, job.keep_larger, &job.plan.delta_from)?;
        if let (Some(m), Some(prev)) = (marker, &job.plan.previous) {
            crate::round::check_previous(m, prev, size)?;
        }
    }
    if let Some(m) = marker {
        // The target is about to change: until this round completes it holds no round.
        crate::round::clear(m)?;
    }
    // Checked before the target is touched (see `JournalFile::open`).
    let mut protected = vec![(job.target, "the target")];
    protected.extend(job.protected.iter().copied());
    if let Some(p) = job.source.local_path() {
        protected.push((p, "the source"));
    }
    let journal = crate::journal::JournalFile::open_optional(job.journal, &protected)?;
    // A stream of unknown size starts the target empty and sets its length at the end.
    let sink = Arc::new(Sink::open_with(
        job.target,
        size.unwrap_or(0),
        job.tuning.direct,
        job.engine.clone(),
        job.keep_larger,
    )?);
    let preallocated = if job.preallocate && size.is_some() {
        sink.preallocate().await?
    } else {
        false
    };
    let start_at = match &journal {
        None => 0,
        Some(j) => j.begin(
            crate::journal::JournalIdentity {
                source: job.source.describe(),
                size: size.unwrap_or_default(),
                plan: job.plan.label.clone(),
                target: job.target.display().to_string(),
                target_id: sink.target_id().to_string(),
            },
            &sink,
        )?,
    };
    let t = &job.tuning;
    let opts = CopyOptions {
        buf_size: t.buf_size,
        buf_count: t.buf_count,
        use_extents: t.use_extents,
        detect_zeroes: t.detect_zeroes,
        changes: job.plan.changes.clone(),
        start_at,
        journal,
        retry: t.retry,
        digest: t.digest,
    };
    Ok((sink, opts, preallocated))
}

/// A stream is read once from its start: it cannot resume from a journal, and it has no
/// changed areas to copy alone.
fn refuse_for_stream(job: &Job<'_>, what: &str) -> Result<(), Error> {
    let needs = if job.plan.changes.is_some() {
        "a delta"
    } else if job.journal.is_some() {
        "a resume journal"
    } else {
        return Ok(());
    };
    Err(crate::error::UsageError::StreamOnly {
        what: what.to_string(),
        needs,
    }
    .into())
}

/// Steps 4 and 5: grow, mark, chmod.
async fn finish(job: &Job<'_>, sink: &Sink) -> Result<(), Error> {
    let size = sink.size();
    if let Some(to) = job.finish.grow_to
        && to > size
    {
        tracing::info!(
            from = size,
            to,
            "growing the image to the volume's usable size"
        );
        sink.extend(to, job.preallocate).await?;
        sink.flush().await?;
    }
    if let Some((path, round)) = &job.finish.round_marker {
        crate::round::write(path, round)?;
    }
    if let Some(mode) = job.finish.mode {
        set_mode(job.target, mode)?;
    }
    Ok(())
}

/// Set a finished image's mode (CDI leaves disk.img 0660).
pub fn set_mode(path: &Path, mode: u32) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|error| {
        Error::TargetOs {
            op: "set the mode of",
            path: path.to_owned(),
            error,
        }
    })
}

/// Run `job`; `progress` says "done" only when everything above is on the target.
pub async fn run(mut job: Job<'_>, progress: Arc<Progress>) -> Result<Outcome, Error> {
    let (sink, opts, preallocation_applied) = match open(&mut job).await {
        Ok(x) => x,
        Err(e) => {
            job.source.close().await;
            return Err(e);
        }
    };
    progress.set_phase("copying");
    let stats = match &mut job.source {
        Input::Disk(src) => {
            let reopen = job.reopen.take();
            crate::retry::copy_retrying(src.clone(), reopen, sink.clone(), &opts, progress.clone())
                .await?
        }
        Input::Stream(s) => {
            let r =
                crate::copy::copy_stream(s.as_mut(), sink.clone(), &opts, progress.clone()).await;
            s.close().await;
            r?
        }
    };
    finish(&job, &sink).await?;
    progress.set_phase("done");
    Ok(Outcome {
        stats,
        preallocation_applied,
    })
}
