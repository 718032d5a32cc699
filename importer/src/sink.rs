//! Sinks: a block device or a regular file, written through the I/O engine.
//!
//! * Data writes go through an O_DIRECT descriptor when the target accepts it and the
//!   request is 4 KiB aligned (pool buffers always are); the unaligned tail of a disk
//!   goes through a buffered descriptor of the same file.
//! * Zeroes are never written as bytes when the target can do better: a file this copy
//!   created is already all holes, so zero ranges are skipped; an existing file gets
//!   holes punched; a block device gets an unmap that guarantees zeroes
//!   (fallocate PUNCH_HOLE, the kernel's BLKZEROOUT with NOFALLBACK) or else a
//!   write-zeroes (fallocate ZERO_RANGE, which is BLKZEROOUT). Only when the target
//!   refuses both are zero buffers written, each write checked.
//! * `flush` is fdatasync on the target, plus fsync of the directory of a new file. A
//!   copy is done only after it returns.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use crate::buf::{BUF_ALIGN, Buf};
use crate::engine::{Fallocate, IoEngine};
use crate::error::{Error, TargetProblem};

/// Largest zero-buffer write in the write-zeroes fallback.
pub const ZERO_WRITE_CHUNK: usize = 1024 * 1024;

/// What the target is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    /// A block device.
    BlockDevice,
    /// A regular file that existed before the copy.
    ExistingFile,
    /// A regular file this copy created (all holes to start with).
    NewFile,
    /// `null:` — data is discarded as it arrives and nothing is kept (benchmarks of the
    /// read side, like nbdcopy's `null:`).
    Null,
}

/// The target name that discards everything.
pub const NULL_TARGET: &str = "null:";

/// O_DIRECT policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DirectMode {
    /// Use O_DIRECT where the target accepts it.
    Auto,
    /// Require O_DIRECT.
    On,
    /// Never use O_DIRECT.
    Off,
}

/// How zero ranges end up on the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZeroOutcome {
    /// Nothing to do: the target already reads as zeroes there.
    Skipped,
    /// Zeroed by the target (punch hole, unmap, write-zeroes, or zero writes).
    Zeroed,
}

const Z_PUNCH: u8 = 0;
const Z_ZERO_RANGE: u8 = 1;
const Z_WRITE: u8 = 2;

/// An open target.
#[derive(Debug)]
pub struct Sink {
    path: PathBuf,
    kind: TargetKind,
    buffered: Arc<File>,
    direct: Option<Arc<File>>,
    /// The size this copy writes (a stream's is known only at its end).
    size: AtomicU64,
    /// A block device's size (files grow).
    capacity: Option<u64>,
    engine: Arc<dyn IoEngine>,
    zero_strategy: AtomicU8,
    /// The target's identity as found before this copy touched it (None: created now).
    found_id: Option<String>,
    /// The target's identity as this copy leaves it.
    id: String,
}

/// A copy's pool registered with the sink's engine, for as long as this lives
/// ([`Sink::register_pool`]).
#[derive(Debug)]
pub struct PoolRegistration {
    engine: Arc<dyn IoEngine>,
    registration: Option<u64>,
    /// Buffers registered (0: none; requests pin their pages as before).
    pub buffers: usize,
}

impl Drop for PoolRegistration {
    fn drop(&mut self) {
        if let Some(g) = self.registration {
            self.engine.unregister_buffers(g);
        }
    }
}

/// Cap on one sysfs attribute read for a block device's identity.
pub const MAX_SYSFS_ATTR: usize = 256;

/// A file's identity: device, inode and birth time (a file recreated under the same
/// name, even on a reused inode, has another), and its length.
fn file_id(m: &std::fs::Metadata, len: u64) -> String {
    use std::os::unix::fs::MetadataExt;
    let btime = m
        .created()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or_else(
            || "unknown".to_string(),
            |d| format!("{}.{:09}", d.as_secs(), d.subsec_nanos()),
        );
    format!(
        "file dev={} ino={} btime={btime} len={len}",
        m.dev(),
        m.ino()
    )
}

/// A block device's identity: its number and size, and what sysfs says of the device
/// behind it (WWID and serial of a disk, a device-mapper UUID, a loop device's backing
/// file), where present.
fn block_id(rdev: u64, len: u64) -> String {
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    let mut id = format!("block rdev={major}:{minor} len={len}");
    let base = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    for (key, attr) in [
        ("wwid", "device/wwid"),
        ("wwid", "wwid"),
        ("serial", "device/serial"),
        ("serial", "serial"),
        ("dm", "dm/uuid"),
        ("loop", "loop/backing_file"),
    ] {
        if let Some(v) = sysfs_attr(&base.join(attr)) {
            id.push_str(&format!(" {key}={v}"));
        }
    }
    id
}

/// One sysfs attribute, at most [`MAX_SYSFS_ATTR`] bytes, as one printable word.
fn sysfs_attr(p: &Path) -> Option<String> {
    use std::io::Read;
    let mut b = Vec::new();
    File::open(p)
        .ok()?
        .take(MAX_SYSFS_ATTR as u64)
        .read_to_end(&mut b)
        .ok()?;
    let v: String = String::from_utf8_lossy(&b)
        .trim()
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .collect();
    (!v.is_empty()).then_some(v)
}

fn target_err(path: &Path, op: &'static str, error: io::Error) -> Error {
    Error::TargetOs {
        op,
        path: path.to_owned(),
        error,
    }
}

/// What an operator should know about an OS error on the target, beyond its text.
pub fn target_hint(errno: Option<i32>) -> &'static str {
    match errno {
        Some(libc::EACCES) | Some(libc::EPERM) => " (target is not writable by this user)",
        Some(libc::EROFS) => " (read-only filesystem)",
        Some(libc::EBUSY) => " (device is in use, e.g. mounted)",
        _ => "",
    }
}

impl Sink {
    /// Open (or create, sparse, at `size`) the target at `path`. An existing file is
    /// resized to `size`.
    pub fn open(
        path: &Path,
        size: u64,
        direct: DirectMode,
        engine: Arc<dyn IoEngine>,
    ) -> Result<Sink, Error> {
        Sink::open_with(path, size, direct, engine, false)
    }

    /// [`Sink::open`]; with `keep_larger`, an existing file longer than `size` keeps its
    /// length (a delta round onto an image an earlier round grew to the volume's size:
    /// only `[0, size)` is written).
    pub fn open_with(
        path: &Path,
        size: u64,
        direct: DirectMode,
        engine: Arc<dyn IoEngine>,
        keep_larger: bool,
    ) -> Result<Sink, Error> {
        if path.as_os_str() == NULL_TARGET {
            let f = OpenOptions::new()
                .write(true)
                .open("/dev/null")
                .map_err(|e| target_err(path, "open", e))?;
            tracing::info!("target is null: data is read and discarded");
            let opened = Opened {
                kind: TargetKind::Null,
                file: f,
                found_id: None,
                id: "null".into(),
                capacity: None,
            };
            return Ok(Sink::from_opened(path, opened, None, size, engine));
        }
        let opened = match inspect(path)? {
            None => open_new_file(path, size)?,
            Some(m) if m.file_type().is_block_device() => open_block_device(path, size)?,
            Some(m) if m.file_type().is_file() => open_existing_file(path, &m, size, keep_larger)?,
            Some(m) => {
                return Err(TargetProblem::NotFileOrDevice {
                    path: path.to_owned(),
                    file_type: m.file_type(),
                }
                .into());
            }
        };
        let direct_fd = match direct {
            DirectMode::Off => None,
            mode => match open_direct(path, size) {
                Ok(f) => Some(Arc::new(f)),
                Err(e) if mode == DirectMode::On => {
                    return Err(TargetProblem::DirectRefused {
                        path: path.to_owned(),
                        error: e,
                    }
                    .into());
                }
                Err(e) => {
                    tracing::info!(path = %path.display(), error = %e, "O_DIRECT not available; using buffered writes");
                    None
                }
            },
        };
        tracing::info!(path = %path.display(), kind = ?opened.kind, direct = direct_fd.is_some(), "target opened");
        Ok(Sink::from_opened(path, opened, direct_fd, size, engine))
    }

    fn from_opened(
        path: &Path,
        o: Opened,
        direct: Option<Arc<File>>,
        size: u64,
        engine: Arc<dyn IoEngine>,
    ) -> Sink {
        Sink {
            path: path.to_owned(),
            kind: o.kind,
            buffered: Arc::new(o.file),
            direct,
            size: AtomicU64::new(size),
            capacity: o.capacity,
            engine,
            zero_strategy: AtomicU8::new(Z_PUNCH),
            found_id: o.found_id,
            id: o.id,
        }
    }

    /// The target's identity as this copy leaves it (for the resume journal).
    pub fn target_id(&self) -> &str {
        &self.id
    }

    /// The target's identity as it was found before this copy opened it; `None` when
    /// this copy created it (or for `null:`).
    pub fn found_target_id(&self) -> Option<&str> {
        self.found_id.as_deref()
    }

    /// Read `len` bytes at `offset` back from the target (plain reads; a few small ones
    /// to check a resume journal's samples, never on the copy's path).
    pub fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut b = vec![0; len];
        std::os::unix::fs::FileExt::read_exact_at(&*self.buffered, &mut b, offset)?;
        Ok(b)
    }

    /// The target kind.
    pub fn kind(&self) -> TargetKind {
        self.kind
    }

    /// Whether writes use O_DIRECT.
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// The I/O engine's name.
    pub fn engine_name(&self) -> &'static str {
        self.engine.name()
    }

    /// Register the copy's pool with the engine (io_uring fixed buffers: the kernel pins
    /// the pages once, not on every O_DIRECT write) and tag each buffer with its index.
    /// Where the engine has none (sync) or the kernel refuses (RLIMIT_MEMLOCK below the
    /// pool, without CAP_IPC_LOCK, as in many pods) nothing changes but the CPU each
    /// write costs, and the log says why.
    pub async fn register_pool(&self, bufs: &mut [Buf]) -> PoolRegistration {
        let mut reg = PoolRegistration {
            engine: self.engine.clone(),
            registration: None,
            buffers: 0,
        };
        if self.kind == TargetKind::Null {
            return reg;
        }
        let windows: Vec<(usize, usize)> = bufs
            .iter()
            .map(|b| {
                let (p, l) = b.window();
                (p as usize, l)
            })
            .collect();
        let bytes: usize = windows.iter().map(|w| w.1).sum();
        match self.engine.register_buffers(windows).await {
            Ok(g) => {
                for (i, b) in bufs.iter_mut().enumerate() {
                    // The engine registers at most MAX_FIXED_BUFFERS (16384) of them, and
                    // the pool holds at most 1024 (--buf-count): the index fits.
                    let Ok(index) = u16::try_from(i) else { break };
                    b.set_fixed(Some(crate::buf::Fixed {
                        registration: g,
                        index,
                    }));
                }
                reg.registration = Some(g);
                reg.buffers = bufs.len();
                tracing::debug!(
                    buffers = bufs.len(),
                    pool_mib = bytes >> 20,
                    "the pool is registered with io_uring (fixed buffers)"
                );
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::Unsupported && self.engine.name() == "sync" => {}
            Err(e) => {
                let why = if e.raw_os_error() == Some(libc::ENOMEM) {
                    let memlock =
                        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_MEMLOCK)
                            .map_or_else(
                                |_| "unknown".to_string(),
                                |(soft, _)| match soft {
                                    nix::sys::resource::RLIM_INFINITY => "unlimited".to_string(),
                                    n => format!("{} KiB", n >> 10),
                                },
                            );
                    format!(
                        "RLIMIT_MEMLOCK ({memlock}) is below the pool ({} MiB) and the process \
                         lacks CAP_IPC_LOCK",
                        bytes >> 20
                    )
                } else {
                    e.to_string()
                };
                tracing::info!(
                    "the pool is not registered with io_uring ({why}): every O_DIRECT write \
                     pins its pages"
                );
            }
        }
        reg
    }

    /// Write `buf` (its current length) at `offset`. The buffer comes back either way so
    /// the pool stays whole.
    pub async fn write(&self, buf: Buf, offset: u64) -> (Buf, Result<(), Error>) {
        // `null:` discards the data as nbdcopy's does, without a syscall, so a read-side
        // benchmark measures the read side only.
        if self.kind == TargetKind::Null {
            return (buf, Ok(()));
        }
        let aligned =
            offset.is_multiple_of(BUF_ALIGN as u64) && buf.len().is_multiple_of(BUF_ALIGN);
        let file = match (&self.direct, aligned) {
            (Some(d), true) => d.clone(),
            _ => self.buffered.clone(),
        };
        let (buf, r) = self.engine.write(file, buf, offset).await;
        (
            buf,
            r.map_err(|error| Error::Write {
                op: "write",
                offset,
                error,
            }),
        )
    }

    /// Make `[offset, offset+len)` read back as zeroes.
    pub async fn zero(&self, offset: u64, len: u64) -> Result<ZeroOutcome, Error> {
        if matches!(self.kind, TargetKind::NewFile | TargetKind::Null) || len == 0 {
            return Ok(ZeroOutcome::Skipped);
        }
        let end = offset + len;
        // Block devices take only sector-aligned fallocate; the ragged edges (only ever
        // at the end of an odd-sized disk) are written as zero bytes.
        let a = align_up(offset, BUF_ALIGN as u64).min(end);
        let b = (end / BUF_ALIGN as u64 * BUF_ALIGN as u64).max(a);
        if a > offset {
            self.write_zeroes(offset, a - offset).await?;
        }
        if b > a {
            self.zero_aligned(a, b - a).await?;
        }
        if end > b {
            self.write_zeroes(b, end - b).await?;
        }
        Ok(ZeroOutcome::Zeroed)
    }

    async fn zero_aligned(&self, offset: u64, len: u64) -> Result<(), Error> {
        loop {
            let strategy = self.zero_strategy.load(Ordering::Relaxed);
            let mode = match strategy {
                Z_PUNCH => Fallocate::PunchHole,
                Z_ZERO_RANGE => Fallocate::ZeroRange,
                Z_WRITE.. => return self.write_zeroes(offset, len).await,
            };
            match self
                .engine
                .fallocate(self.buffered.clone(), mode, offset, len)
                .await
            {
                Ok(()) => return Ok(()),
                Err(e) if unsupported(&e) => {
                    let next = strategy + 1;
                    if self
                        .zero_strategy
                        .compare_exchange(strategy, next, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                    {
                        tracing::info!(path = %self.path.display(), ?mode, error = %e, "target refuses this zeroing method; trying the next");
                    }
                }
                Err(error) => {
                    return Err(Error::Write {
                        op: "zero",
                        offset,
                        error,
                    });
                }
            }
        }
    }

    /// Fallback: write zero buffers, every write checked.
    async fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), Error> {
        let mut at = offset;
        let end = offset + len;
        let mut buf = Buf::new(ZERO_WRITE_CHUNK.min(crate::num::usize_of(len)));
        while at < end {
            let n = crate::num::usize_of(end - at).min(buf.capacity());
            buf.set_len(n);
            let (b, r) = self.write(buf, at).await;
            r?;
            buf = b;
            at += n as u64;
        }
        Ok(())
    }

    /// Make everything written durable: fdatasync the target (and, for a file this copy
    /// created, fsync its directory so the name survives a crash too).
    pub async fn flush(&self) -> Result<(), Error> {
        if self.kind == TargetKind::Null {
            return Ok(());
        }
        self.engine
            .fdatasync(self.buffered.clone())
            .await
            .map_err(|error| Error::Write {
                op: "flush (fdatasync)",
                offset: 0,
                error,
            })?;
        if self.kind == TargetKind::NewFile {
            let dir = self
                .path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|error| Error::Write {
                    op: "flush (directory fsync)",
                    offset: 0,
                    error,
                })?;
        }
        Ok(())
    }

    /// The size the target holds for this copy.
    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }

    /// The target's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How much a block device holds (None for files, which grow, and the null target).
    pub fn capacity(&self) -> Option<u64> {
        self.capacity
    }

    /// A stream ended at `size` bytes: a file target is cut or grown to it (its zero
    /// tail was skipped, not written); a block device keeps its length.
    pub async fn set_stream_size(&self, size: u64) -> Result<(), Error> {
        if matches!(self.kind, TargetKind::NewFile | TargetKind::ExistingFile) {
            self.buffered.set_len(size).map_err(|error| Error::Write {
                op: "resize",
                offset: size,
                error,
            })?;
        }
        self.size.store(size, Ordering::Relaxed);
        Ok(())
    }

    /// Preallocate the target: a file gets every block allocated now, and zero ranges of
    /// any target are then zeroed in place (ZERO_RANGE) rather than unmapped or punched,
    /// so the space stays allocated. Returns whether preallocation really happened.
    pub async fn preallocate(&self) -> Result<bool, Error> {
        match self.kind {
            TargetKind::Null => Ok(false),
            TargetKind::BlockDevice => {
                self.zero_strategy.store(Z_ZERO_RANGE, Ordering::Relaxed);
                Ok(true)
            }
            TargetKind::NewFile | TargetKind::ExistingFile => {
                self.zero_strategy.store(Z_ZERO_RANGE, Ordering::Relaxed);
                // A new file's zero ranges are still skipped: once every block is
                // allocated they read as zeroes without being written.
                self.engine
                    .fallocate(self.buffered.clone(), Fallocate::Allocate, 0, self.size())
                    .await
                    .map_err(|error| Error::Write {
                        op: "preallocate",
                        offset: 0,
                        error,
                    })?;
                Ok(true)
            }
        }
    }

    /// Grow a file target to `len` bytes (the volume's requested size; the new tail reads
    /// as zeroes), allocating it too when `preallocate`. Block devices are left alone.
    pub async fn extend(&self, len: u64, preallocate: bool) -> Result<(), Error> {
        let size = self.size();
        if !matches!(self.kind, TargetKind::NewFile | TargetKind::ExistingFile) || len <= size {
            return Ok(());
        }
        self.buffered.set_len(len).map_err(|error| Error::Write {
            op: "extend",
            offset: size,
            error,
        })?;
        if preallocate {
            self.engine
                .fallocate(self.buffered.clone(), Fallocate::Allocate, size, len - size)
                .await
                .map_err(|error| Error::Write {
                    op: "preallocate",
                    offset: size,
                    error,
                })?;
        }
        Ok(())
    }
}

/// A target opened, before O_DIRECT is tried.
struct Opened {
    kind: TargetKind,
    file: File,
    /// Its identity as found (None: created now).
    found_id: Option<String>,
    /// Its identity as this copy leaves it.
    id: String,
    /// A block device's size.
    capacity: Option<u64>,
}

/// What is at `path` (None: nothing). A symlink to a block device (/dev/disk/by-id/…) is
/// the normal way to name one; a symlink to anything else is refused, so a link planted
/// in a volume can never redirect the copy onto another file.
fn inspect(path: &Path) -> Result<Option<std::fs::Metadata>, Error> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => match std::fs::metadata(path) {
            Ok(t) if t.file_type().is_block_device() => Ok(Some(t)),
            _ => Err(TargetProblem::Symlink(path.to_owned()).into()),
        },
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(target_err(path, "inspect", e)),
    }
}

fn stat(path: &Path, f: &File) -> Result<std::fs::Metadata, Error> {
    f.metadata().map_err(|e| target_err(path, "inspect", e))
}

/// Create the file, sparse, at `size` (never following a link planted meanwhile).
fn open_new_file(path: &Path, size: u64) -> Result<Opened, Error> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| target_err(path, "create", e))?;
    f.set_len(size).map_err(|e| target_err(path, "size", e))?;
    let id = file_id(&stat(path, &f)?, size);
    Ok(Opened {
        kind: TargetKind::NewFile,
        file: f,
        found_id: None,
        id,
        capacity: None,
    })
}

/// Open a block device exclusively (a mounted one is refused) that holds `size` bytes.
fn open_block_device(path: &Path, size: u64) -> Result<Opened, Error> {
    use std::os::unix::fs::MetadataExt;
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_EXCL | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| target_err(path, "open", e))?;
    let dev = f
        .seek(SeekFrom::End(0))
        .map_err(|e| target_err(path, "size", e))?;
    if dev < size {
        return Err(TargetProblem::TooSmall {
            path: path.to_owned(),
            size: dev,
            needed: size,
        }
        .into());
    }
    let id = block_id(stat(path, &f)?.rdev(), dev);
    Ok(Opened {
        kind: TargetKind::BlockDevice,
        file: f,
        found_id: Some(id.clone()),
        id,
        capacity: Some(dev),
    })
}

/// Open an existing file and resize it to `size` (with `keep_larger`, a longer file
/// keeps its length).
fn open_existing_file(
    path: &Path,
    m: &std::fs::Metadata,
    size: u64,
    keep_larger: bool,
) -> Result<Opened, Error> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| target_err(path, "open", e))?;
    let found = stat(path, &f)?;
    let found_id = file_id(&found, found.len());
    let len = if keep_larger {
        found.len().max(size)
    } else {
        size
    };
    if found.len() != len {
        tracing::info!(path = %path.display(), from = m.len(), to = len, "resizing existing target file to the source size");
        f.set_len(len).map_err(|e| target_err(path, "resize", e))?;
    }
    let id = file_id(&found, len);
    Ok(Opened {
        kind: TargetKind::ExistingFile,
        file: f,
        found_id: Some(found_id),
        id,
        capacity: None,
    })
}

fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP)
            | Some(libc::ENOTTY)
            | Some(libc::ENODEV)
            | Some(libc::ENOSYS)
            | Some(libc::EINVAL)
    )
}

/// Open a second descriptor with O_DIRECT and prove it works with one aligned read.
fn open_direct(path: &Path, size: u64) -> io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT | libc::O_CLOEXEC)
        .open(path)?;
    if size >= BUF_ALIGN as u64 {
        let mut b = Buf::new(BUF_ALIGN);
        std::os::unix::fs::FileExt::read_exact_at(&f, b.as_mut_slice(), 0)?;
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::test_support::{engine, rt};

    fn garbage_file(dir: &Path, len: usize) -> PathBuf {
        let p = dir.join("old.img");
        let mut f = File::create_new(&p).expect("create");
        f.write_all(&vec![0xaa; len]).expect("fill");
        p
    }

    #[test]
    fn missing_target_is_created_sparse_at_source_size() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("new.img");
        let s = Sink::open(&p, 10 << 20, DirectMode::Off, engine()).expect("open");
        assert_eq!(s.kind(), TargetKind::NewFile);
        let m = std::fs::metadata(&p).expect("meta");
        assert_eq!(m.len(), 10 << 20);
        assert_eq!(m.blocks(), 0);
    }

    #[test]
    fn zero_on_new_file_is_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Sink::open(
            &dir.path().join("n.img"),
            1 << 20,
            DirectMode::Off,
            engine(),
        )
        .expect("open");
        assert_eq!(
            rt().block_on(s.zero(0, 1 << 20)).expect("zero"),
            ZeroOutcome::Skipped
        );
    }

    #[test]
    fn existing_file_is_resized_to_source_size() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = garbage_file(dir.path(), 3 << 20);
        let s = Sink::open(&p, 1 << 20, DirectMode::Off, engine()).expect("open");
        assert_eq!(s.kind(), TargetKind::ExistingFile);
        assert_eq!(std::fs::metadata(&p).expect("meta").len(), 1 << 20);
    }

    #[test]
    fn zero_on_existing_file_punches_holes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = garbage_file(dir.path(), 4 << 20);
        let s = Sink::open(&p, 4 << 20, DirectMode::Off, engine()).expect("open");
        rt().block_on(s.zero(1 << 20, 2 << 20)).expect("zero");
        rt().block_on(s.flush()).expect("flush");
        let c = std::fs::read(&p).expect("read");
        assert!(c[1 << 20..3 << 20].iter().all(|b| *b == 0));
        assert!(c[..1 << 20].iter().chain(&c[3 << 20..]).all(|b| *b == 0xaa));
        assert!(std::fs::metadata(&p).expect("meta").blocks() * 512 <= (2 << 20) + 65536);
    }

    #[test]
    fn zero_write_fallback_advances_over_ragged_range() {
        let dir = tempfile::tempdir().expect("tempdir");
        let size = (3 << 20) + 777;
        let p = garbage_file(dir.path(), size as usize);
        let s = Sink::open(&p, size, DirectMode::Off, engine()).expect("open");
        s.zero_strategy.store(Z_WRITE, Ordering::Relaxed);
        let (from, len) = (100, size - 200);
        rt().block_on(s.zero(from, len)).expect("zero");
        let c = std::fs::read(&p).expect("read");
        assert!(c[..100].iter().all(|b| *b == 0xaa));
        assert!(c[100..(size - 100) as usize].iter().all(|b| *b == 0));
        assert!(c[(size - 100) as usize..].iter().all(|b| *b == 0xaa));
    }

    #[test]
    fn directory_target_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = Sink::open(dir.path(), 4096, DirectMode::Off, engine()).expect_err("must refuse");
        assert!(
            e.to_string().contains("not a regular file or block device"),
            "{e}"
        );
    }

    #[test]
    fn target_in_missing_directory_names_the_path() {
        let e = Sink::open(
            Path::new("/nonexistent-dir/x.img"),
            4096,
            DirectMode::Off,
            engine(),
        )
        .expect_err("must fail");
        assert!(e.to_string().contains("/nonexistent-dir/x.img"), "{e}");
    }

    #[test]
    fn unaligned_write_goes_through_the_buffered_descriptor() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("t.img");
        let s = Sink::open(&p, 8192 + 100, DirectMode::Auto, engine()).expect("open");
        let mut b = Buf::new(4096);
        b.set_len(100);
        b.as_mut_slice().fill(7);
        let (_, r) = rt().block_on(s.write(b, 8192));
        r.expect("tail write");
        rt().block_on(s.flush()).expect("flush");
        let c = std::fs::read(&p).expect("read");
        assert!(c[8192..].iter().all(|b| *b == 7));
    }

    #[test]
    fn preallocate_allocates_a_new_file_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("pre.img");
        let s = Sink::open(&p, 8 << 20, DirectMode::Off, engine()).expect("open");
        assert!(rt().block_on(s.preallocate()).expect("preallocate"));
        let m = std::fs::metadata(&p).expect("meta");
        assert_eq!(m.len(), 8 << 20);
        assert!(m.blocks() * 512 >= 8 << 20, "{} blocks", m.blocks());
        assert!(std::fs::read(&p).expect("read").iter().all(|b| *b == 0));
    }

    #[test]
    fn extend_grows_a_file_with_a_zero_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = garbage_file(dir.path(), 1 << 20);
        let s = Sink::open(&p, 1 << 20, DirectMode::Off, engine()).expect("open");
        rt().block_on(s.extend(3 << 20, false)).expect("extend");
        let c = std::fs::read(&p).expect("read");
        assert_eq!(c.len(), 3 << 20);
        assert!(c[..1 << 20].iter().all(|b| *b == 0xaa));
        assert!(c[1 << 20..].iter().all(|b| *b == 0));
    }

    #[test]
    fn zero_after_preallocation_keeps_blocks_allocated() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = garbage_file(dir.path(), 4 << 20);
        let s = Sink::open(&p, 4 << 20, DirectMode::Off, engine()).expect("open");
        rt().block_on(s.preallocate()).expect("preallocate");
        rt().block_on(s.zero(0, 4 << 20)).expect("zero");
        rt().block_on(s.flush()).expect("flush");
        let m = std::fs::metadata(&p).expect("meta");
        assert!(m.blocks() * 512 >= 4 << 20, "{} blocks", m.blocks());
        assert!(std::fs::read(&p).expect("read").iter().all(|b| *b == 0));
    }
}
