//! Local source: a raw image file or a block device, extents from SEEK_DATA/SEEK_HOLE.
//!
//! Reads whose offset and length are multiples of [`DIRECT_ALIGN`] go through a second,
//! O_DIRECT descriptor of the same file when its filesystem accepts one: the bytes come
//! from the disk without a page-cache copy (on our VM, 4 GiB read buffered costs 4.2 s of
//! system time, with O_DIRECT 0.4 s), and reading a target back for `--verify` reads
//! what the disk holds, not what the cache kept. Other reads (image metadata, a file's
//! unaligned tail) go through the buffered descriptor; both see the same bytes, as
//! nothing writes the source while it is read.

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
/// Offset and length alignment of reads through the O_DIRECT descriptor: a multiple of
/// every logical block size in use (512 and 4096), and the pool buffers' alignment.
pub const DIRECT_ALIGN: u64 = crate::buf::BUF_ALIGN as u64;

/// A raw file or block device.
#[derive(Debug)]
pub struct LocalSource {
    path: PathBuf,
    file: Arc<File>,
    /// The same file opened O_DIRECT, where its filesystem allows.
    direct: Option<Arc<File>>,
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
        let direct = match open_direct(path, &meta, size) {
            Ok(d) => Some(Arc::new(d)),
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "source read buffered: no O_DIRECT");
                None
            }
        };
        Ok(LocalSource {
            path: path.to_owned(),
            file: Arc::new(file),
            direct,
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

/// The file at `path` opened again with O_DIRECT — refused unless it is the same file
/// (device and inode) as `meta`, so a name replaced meanwhile is never read — and proven
/// with one aligned read.
fn open_direct(path: &Path, meta: &std::fs::Metadata, size: u64) -> std::io::Result<File> {
    use std::os::unix::fs::MetadataExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)?;
    let m = f.metadata()?;
    if (m.dev(), m.ino(), m.rdev()) != (meta.dev(), meta.ino(), meta.rdev()) {
        return Err(std::io::Error::other("the path names another file now"));
    }
    if size >= DIRECT_ALIGN {
        let mut b = Buf::new(crate::num::usize_of(DIRECT_ALIGN));
        std::os::unix::fs::FileExt::read_exact_at(&f, b.as_mut_slice(), 0)?;
    }
    Ok(f)
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
        let aligned =
            offset.is_multiple_of(DIRECT_ALIGN) && (buf.len() as u64).is_multiple_of(DIRECT_ALIGN);
        let (engine, buffered) = (self.engine.clone(), self.file.clone());
        let direct = self.direct.clone().filter(|_| aligned);
        Box::pin(async move {
            let (buf, r) = match direct {
                Some(d) => match engine.read(d, buf, offset).await {
                    // A device or file system that takes O_DIRECT at open but refuses
                    // this read's alignment: read it through the cache instead.
                    (buf, Err(e)) if e.raw_os_error() == Some(libc::EINVAL) => {
                        engine.read(buffered, buf, offset).await
                    }
                    done => done,
                },
                None => engine.read(buffered, buf, offset).await,
            };
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use super::*;
    use crate::test_support::{engine, rt};

    /// Bytes no two offsets of which repeat within a few MiB (a misplaced read shows).
    fn pattern(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes()[7])
            .collect()
    }

    fn read(s: &LocalSource, offset: u64, len: usize) -> Vec<u8> {
        let mut b = Buf::new(len.next_multiple_of(crate::buf::BUF_ALIGN));
        b.set_len(len);
        rt().block_on(s.read(offset, b))
            .expect("read")
            .as_slice()
            .to_vec()
    }

    #[test]
    fn aligned_reads_go_direct_and_every_read_returns_the_files_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("disk.raw");
        // An unaligned size: the tail can only be read through the cache.
        let len = (1 << 20) + 1000;
        let bytes = pattern(len);
        std::fs::write(&p, &bytes).expect("write");
        let s = LocalSource::open(&p, engine()).expect("open");
        let probe = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(&p)
            .and_then(|f| {
                let mut b = Buf::new(4096);
                f.read_exact_at(b.as_mut_slice(), 0)
            });
        match probe {
            Ok(()) => assert!(s.direct.is_some(), "O_DIRECT works here but was not used"),
            Err(e) => eprintln!(
                "skipped the O_DIRECT half: {} refuses it ({e})",
                p.display()
            ),
        }
        for (offset, n) in [
            (0u64, 65536usize),              // aligned: O_DIRECT
            (4096, 1 << 19),                 // aligned: O_DIRECT
            (7, 100),                        // unaligned: buffered
            (1 << 20, 1000),                 // the unaligned tail
            ((1 << 20) - 4096, 4096 + 1000), // aligned start, unaligned end
        ] {
            let start = usize::try_from(offset).expect("offset");
            assert_eq!(
                read(&s, offset, n),
                &bytes[start..start + n],
                "{n} bytes at {offset}"
            );
        }
    }

    #[test]
    fn a_path_replaced_after_the_open_is_not_read_direct() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, vec![1u8; 8192]).expect("a");
        std::fs::write(&b, vec![2u8; 8192]).expect("b");
        let meta = std::fs::metadata(&a).expect("meta");
        std::fs::rename(&b, &a).expect("replace");
        let e = open_direct(&a, &meta, 8192).expect_err("another file");
        assert!(e.to_string().contains("another file"), "{e}");
    }
}
