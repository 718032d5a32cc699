//! I/O engines: how the sink (and the local source) issue positional reads, writes,
//! zeroing and flushes.
//!
//! ```text
//!             IoEngine (trait, async, owned buffers)
//!              ├── UringEngine  one ring on a dedicated thread, many ops in flight
//!              └── SyncEngine   pread/pwrite/fallocate/fdatasync on blocking threads
//! ```
//!
//! The engine is chosen once at start-up by [`select`]: `auto` probes io_uring (the
//! syscalls and every opcode we use) and falls back to the sync engine when it is
//! refused — EPERM under containerd/Docker's default seccomp profile, ENOSYS under
//! CRI-O/Podman's, or a kernel with `io_uring_disabled`. The log says which was taken
//! and why. Callers never see `cfg`s or engine types, only `Arc<dyn IoEngine>`.

mod sync;
mod uring;

use std::fs::File;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;

pub use sync::SyncEngine;
pub use uring::UringEngine;

use crate::buf::Buf;

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// fallocate modes the sink uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallocate {
    /// Deallocate; the range reads back as zeroes (files: a hole; block devices: an
    /// unmap that guarantees zeroes, or EOPNOTSUPP).
    PunchHole,
    /// Zero the range, keeping it allocated (block devices: BLKZEROOUT semantics).
    ZeroRange,
}

impl Fallocate {
    /// The libc mode bits (always with KEEP_SIZE).
    pub fn mode(self) -> i32 {
        match self {
            Fallocate::PunchHole => libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            Fallocate::ZeroRange => libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
        }
    }
}

/// Positional I/O with owned buffers. Every method completes the whole request or fails:
/// short transfers are continued internally, and a transfer that makes no progress is
/// an error (`WriteZero` / `UnexpectedEof`).
pub trait IoEngine: Send + Sync + std::fmt::Debug {
    /// "uring" or "sync".
    fn name(&self) -> &'static str;
    /// Write `buf.as_slice()` at `offset`; the buffer comes back either way.
    fn write(
        &self,
        file: Arc<File>,
        buf: Buf,
        offset: u64,
    ) -> BoxFuture<'static, (Buf, io::Result<()>)>;
    /// Fill `buf.as_mut_slice()` from `offset`.
    fn read(
        &self,
        file: Arc<File>,
        buf: Buf,
        offset: u64,
    ) -> BoxFuture<'static, (Buf, io::Result<()>)>;
    /// fallocate with KEEP_SIZE.
    fn fallocate(
        &self,
        file: Arc<File>,
        mode: Fallocate,
        offset: u64,
        len: u64,
    ) -> BoxFuture<'static, io::Result<()>>;
    /// fdatasync.
    fn fdatasync(&self, file: Arc<File>) -> BoxFuture<'static, io::Result<()>>;
}

/// Which engine the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineChoice {
    /// io_uring when the probe succeeds, else sync.
    Auto,
    /// io_uring or fail.
    Uring,
    /// Plain syscalls.
    Sync,
}

/// Errors choosing an engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// io_uring was required but is not usable.
    #[error("io_uring was requested but is not usable here: {0}")]
    UringUnavailable(String),
}

/// Pick the engine. `queue_depth` sizes the ring.
pub fn select(choice: EngineChoice, queue_depth: u32) -> Result<Arc<dyn IoEngine>, EngineError> {
    if choice == EngineChoice::Sync {
        tracing::info!(
            engine = "sync",
            reason = "requested with --io-engine sync",
            "I/O engine selected"
        );
        return Ok(Arc::new(SyncEngine::new()));
    }
    match UringEngine::new(queue_depth) {
        Ok(e) => {
            tracing::info!(
                engine = "uring",
                reason = "io_uring probe succeeded",
                "I/O engine selected"
            );
            Ok(Arc::new(e))
        }
        Err(why) if choice == EngineChoice::Auto => {
            tracing::info!(engine = "sync", reason = %format!("io_uring unavailable: {why}"), "I/O engine selected");
            Ok(Arc::new(SyncEngine::new()))
        }
        Err(why) => Err(EngineError::UringUnavailable(why)),
    }
}
