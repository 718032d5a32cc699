//! The plain-syscall engine: each operation runs on tokio's blocking pool, so the copy
//! still keeps `buf_count` requests in flight without io_uring.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use nix::fcntl::{FallocateFlags, fallocate};

use super::{BoxFuture, Fallocate, IoEngine};
use crate::buf::Buf;

/// pread/pwrite/fallocate/fdatasync on blocking threads.
#[derive(Debug, Default)]
pub struct SyncEngine;

impl SyncEngine {
    /// A new sync engine.
    pub fn new() -> Self {
        SyncEngine
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        // The closures below never panic; a join error means the runtime is shutting down.
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

impl IoEngine for SyncEngine {
    fn name(&self) -> &'static str {
        "sync"
    }

    fn write(
        &self,
        file: Arc<File>,
        buf: Buf,
        offset: u64,
    ) -> BoxFuture<'static, (Buf, io::Result<()>)> {
        Box::pin(blocking(move || {
            let r = file.write_all_at(buf.as_slice(), offset);
            (buf, r)
        }))
    }

    fn read(
        &self,
        file: Arc<File>,
        mut buf: Buf,
        offset: u64,
    ) -> BoxFuture<'static, (Buf, io::Result<()>)> {
        Box::pin(blocking(move || {
            let r = file.read_exact_at(buf.as_mut_slice(), offset);
            (buf, r)
        }))
    }

    fn fallocate(
        &self,
        file: Arc<File>,
        mode: Fallocate,
        offset: u64,
        len: u64,
    ) -> BoxFuture<'static, io::Result<()>> {
        Box::pin(blocking(move || {
            let flags = FallocateFlags::from_bits_truncate(mode.mode());
            let off =
                i64::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
            let l = i64::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
            fallocate(&*file, flags, off, l).map_err(io::Error::from)
        }))
    }

    fn fdatasync(&self, file: Arc<File>) -> BoxFuture<'static, io::Result<()>> {
        Box::pin(blocking(move || file.sync_data()))
    }
}
