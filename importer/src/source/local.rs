//! Local source: a raw image file or a block device, extents from SEEK_DATA/SEEK_HOLE.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferry_cbt::{Extent, ExtentKind, ExtentMap};
use nix::errno::Errno;
use nix::unistd::{Whence, lseek};

use super::Source;
use crate::buf::Buf;
use crate::engine::{BoxFuture, IoEngine};
use crate::error::Error;

/// Largest read from a local source.
pub const LOCAL_MAX_READ: u64 = 64 * 1024 * 1024;

/// A raw file or block device.
#[derive(Debug)]
pub struct LocalSource {
    path: PathBuf,
    file: Arc<File>,
    size: u64,
    seekable_holes: bool,
    engine: Arc<dyn IoEngine>,
}

impl LocalSource {
    /// Open read-only.
    pub fn open(path: &Path, engine: Arc<dyn IoEngine>) -> Result<LocalSource, Error> {
        let ctx = |error: std::io::Error| Error::SourceIo {
            op: "open",
            path: path.to_owned(),
            error,
        };
        // O_NONBLOCK so that opening a FIFO cannot block before the type check below;
        // it has no effect on regular files and block devices.
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map_err(ctx)?;
        let meta = file.metadata().map_err(ctx)?;
        let ft = meta.file_type();
        if !(ft.is_file() || ft.is_block_device()) {
            return Err(crate::error::SourceProblem::NotFileOrDevice(path.to_owned()).into());
        }
        let size = file.seek(SeekFrom::End(0)).map_err(ctx)?;
        Ok(LocalSource {
            path: path.to_owned(),
            file: Arc::new(file),
            size,
            seekable_holes: ft.is_file(),
            engine,
        })
    }

    fn scan(&self, offset: u64, end: u64) -> Result<ExtentMap, Error> {
        let mut map = ExtentMap::new();
        let mut at = offset;
        let io = |e: Errno| Error::SourceIo {
            op: "seek data and holes in",
            path: self.path.clone(),
            error: e.into(),
        };
        while at < end {
            let pos = i64::try_from(at).map_err(|_| io(Errno::EOVERFLOW))?;
            let data = match lseek(&*self.file, pos, Whence::SeekData) {
                Ok(d) => u64::try_from(d).map_err(|_| io(Errno::EINVAL))?,
                Err(Errno::ENXIO) => end, // no data after `at`
                Err(Errno::EINVAL | Errno::EOPNOTSUPP) => {
                    map.push(Extent::new(at, end - at, ExtentKind::Data))?;
                    return Ok(map);
                }
                Err(e) => return Err(io(e)),
            };
            let data = data.min(end);
            if data > at {
                map.push(Extent::new(at, data - at, ExtentKind::Hole))?;
            }
            if data >= end {
                break;
            }
            let hole = match lseek(&*self.file, data as i64, Whence::SeekHole) {
                Ok(h) => u64::try_from(h).map_err(|_| io(Errno::EINVAL))?.min(end),
                Err(e) => return Err(io(e)),
            };
            let hole = hole.max(data + 1);
            map.push(Extent::new(data, hole - data, ExtentKind::Data))?;
            at = hole;
        }
        Ok(map)
    }
}

impl Source for LocalSource {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn local_path(&self) -> Option<&std::path::Path> {
        Some(&self.path)
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn block_size(&self) -> u64 {
        1
    }

    fn max_read(&self) -> u64 {
        LOCAL_MAX_READ
    }

    fn extents(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<ExtentMap, Error>> {
        Box::pin(async move {
            if !self.seekable_holes {
                return Ok(ExtentMap::single(offset, len, ExtentKind::Data));
            }
            // lseek on a local file is fast metadata work; no need for the blocking pool.
            self.scan(offset, offset + len)
        })
    }

    fn read(&self, offset: u64, buf: Buf) -> BoxFuture<'static, Result<Buf, Error>> {
        let fut = self.engine.read(self.file.clone(), buf, offset);
        Box::pin(async move {
            let (buf, r) = fut.await;
            r.map(|()| buf).map_err(|e| Error::Read {
                offset,
                message: e.to_string(),
                // A local disk's EIO may be a passing path failure; read it again.
                retry: crate::error::Retry::Read,
            })
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}
