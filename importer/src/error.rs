//! The importer library's error type. Each variant is one class an operator can act on;
//! the binary turns it into one line on stderr and a non-zero exit.

/// Errors of a copy.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Bad command-line or environment input.
    #[error(transparent)]
    Usage(#[from] UsageError),
    /// The import environment (CDI's variables) is invalid.
    #[error(transparent)]
    Config(#[from] crate::import::config::ConfigError),
    /// NBD connection or protocol failure.
    #[error(transparent)]
    Nbd(ferry_nbd::Error),
    /// The source exists but cannot be used as it is.
    #[error(transparent)]
    SourceUnusable(#[from] SourceProblem),
    /// A local source file or device could not be opened or inspected.
    #[error("cannot {op} source {}: {error}", path.display())]
    SourceIo {
        /// What was being done: `open`, `inspect`.
        op: &'static str,
        /// The file or device.
        path: std::path::PathBuf,
        /// The OS error (shown in the message, so not also a `source`).
        error: std::io::Error,
    },
    /// An HTTP(S) source could not be reached or read.
    #[error("{url}: {error}")]
    Http {
        /// The URL (without credentials or query).
        url: String,
        /// What went wrong.
        error: ferry_http::Error,
    },
    /// An HTTP(S) server answered with a status that is not the disk.
    #[error("{url}: the server answered {status} {message}")]
    HttpStatus {
        /// The URL (without credentials or query).
        url: String,
        /// The status code.
        status: u16,
        /// What it means here.
        message: String,
    },
    /// A `docker://` source: the registry, its manifests, or the disk in its layers.
    #[error("{reference}: {error}")]
    Registry {
        /// The image reference.
        reference: String,
        /// What went wrong.
        error: crate::source::registry::RegistryError,
    },
    /// An image that must be read at any offset arrived as a stream (an HTTP server
    /// without Range support, standard input, a compressed image).
    #[error(
        "{what} holds a {format}, which is read through its map at any offset, but it arrives as a stream read once in order; a scratch copy would be needed: give --scratch DIR (room for the whole image), serve it from a server that answers Range requests, copy it from a local file, or store it uncompressed"
    )]
    NeedsRandomAccess {
        /// The source, with the layers peeled.
        what: String,
        /// What it holds.
        format: crate::source::format::Format,
    },
    /// `ferry inspect` found that a migration would fail: the first failing step's kind
    /// and what it says.
    #[error("{message}")]
    Preflight {
        /// The failing step's kind.
        kind: ErrorKind,
        /// Which step failed, and why.
        message: String,
    },
    /// Two disks differ (`ferry verify`, `--verify`): the first differing range.
    #[error("{0}")]
    Mismatch(String),
    /// A digest could not be built from the pieces given (a bug if it happens).
    #[error(transparent)]
    Digest(#[from] crate::digest::DigestError),
    /// The source's bytes do not have the checksum given, or it could not be computed.
    #[error("{what}: {message}")]
    Checksum {
        /// The source.
        what: String,
        /// Expected and calculated.
        message: String,
    },
    /// A disk image that is refused or corrupt.
    #[error("{what}: {error}")]
    Image {
        /// The source.
        what: String,
        /// What is wrong.
        error: ferry_convert::image::ImageError,
    },
    /// The scratch directory could not hold the staged image.
    #[error("scratch directory {}: {message}", dir.display())]
    Scratch {
        /// The directory.
        dir: std::path::PathBuf,
        /// What failed, with the OS error.
        message: String,
    },
    /// An archive (an OVA, a tar) that is corrupt, or whose disk cannot be chosen.
    #[error("{what}: {error}")]
    Archive {
        /// The source.
        what: String,
        /// What is wrong.
        error: ferry_convert::tar::TarError,
    },
    /// The source holds a format Ferry does not read (or one already peeled: a gzip in a
    /// gzip, a tar in a tar), not a disk.
    #[error("{what} holds a {format}, not a raw disk; Ferry reads raw disks and ISOs, gzip-, xz- and zstd-compressed files, tar archives (OVAs), and qcow2, VMDK, VHD, VHDX and VDI images: {}, or give --format raw to copy its bytes as they are", .format.how_to_read())]
    NotRaw {
        /// The source.
        what: String,
        /// What it holds.
        format: crate::source::format::Format,
    },
    /// Reading from the source failed.
    #[error("reading the source at offset {offset} failed: {message}")]
    Read {
        /// Offset of the failed read.
        offset: u64,
        /// Why.
        message: String,
        /// Whether another read may succeed ([`Retry::Read`]), only on a new connection
        /// ([`Retry::Reconnect`]), or not at all.
        retry: Retry,
    },
    /// The target exists but cannot be used as it is.
    #[error(transparent)]
    TargetUnusable(#[from] TargetProblem),
    /// Opening, creating, inspecting or sizing the target failed in the OS.
    #[error("cannot {op} target {}: {error}{}", path.display(), crate::sink::target_hint(error.raw_os_error()))]
    TargetOs {
        /// `open`, `create`, `inspect`, `size`, `resize`.
        op: &'static str,
        /// The target.
        path: std::path::PathBuf,
        /// The OS error (shown in the message, so not also a `source`).
        error: std::io::Error,
    },
    /// Writing, zeroing or flushing the target failed.
    #[error("{op} on the target at offset {offset} failed: {error}")]
    Write {
        /// write, zero, flush.
        op: &'static str,
        /// Offset.
        offset: u64,
        /// The OS error (shown in the message, so not also a `source`).
        error: std::io::Error,
    },
    /// Reading the target back to check the resume journal's samples failed.
    #[error("cannot read the target at offset {offset} to check the resume journal: {error}")]
    JournalCheck {
        /// The sample's offset.
        offset: u64,
        /// The OS error (shown in the message, so not also a `source`).
        error: std::io::Error,
    },
    /// The round marker could not be written.
    #[error("round marker {}: {reason}", path.display())]
    Marker {
        /// The marker's path.
        path: std::path::PathBuf,
        /// What failed.
        reason: String,
    },
    /// The resume journal cannot be used: its path is refused (it is the source, the
    /// target, or a file that is not a journal) or reading or writing it failed.
    #[error("resume journal {}: {message}", path.display())]
    Journal {
        /// The journal's path.
        path: std::path::PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A delta cannot be applied: the changes since the previous round are unknown, or
    /// the target does not hold that round. A full copy is needed.
    #[error("{subject}: {reason}; a full copy is needed")]
    NeedsFullCopy {
        /// The target, marker or source the problem is with.
        subject: String,
        /// What is wrong.
        reason: String,
    },
    /// VDDK failure (library, authentication, thumbprint, not found, NFC memory…).
    #[error(transparent)]
    Vddk(crate::source::vddk::VddkError),
    /// vSphere API failure (login, TLS, VM or disk lookup).
    #[error(transparent)]
    Vsphere(ferry_vsphere::Error),
    /// An extent map could not hold what a source reported (overlap, overflow, or more
    /// than [`ferry_cbt::MAX_EXTENTS`] areas): the copy stops rather than skip data.
    #[error("source extents: {0}")]
    Extents(#[from] ferry_cbt::ExtentError),
    /// No usable I/O engine.
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    /// The copy was cancelled by a signal.
    #[error("cancelled by {0}; the target is incomplete")]
    Cancelled(&'static str),
    /// The signal handlers could not be installed.
    #[error("cannot install the {signal} handler: {error}")]
    Signals {
        /// Which.
        signal: &'static str,
        /// The OS error.
        error: std::io::Error,
    },
    /// A broken invariant of the pipeline (a bug, reported rather than a panic).
    #[error("internal error: {0}")]
    Internal(&'static str),
}

/// Bad input: the command line, an environment value, a file named there.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UsageError {
    /// The buffer pool cannot fit the cgroup's memory limit even at its smallest.
    #[error(transparent)]
    Memory(#[from] crate::memory::PoolDoesNotFit),
    /// `--verify` with a target that keeps nothing (`null:`).
    #[error("--verify reads the target back: null: keeps nothing to read")]
    VerifyNullTarget,
    /// `IMPORTER_CONTENTTYPE=archive` onto a block device.
    #[error(
        "IMPORTER_CONTENTTYPE=archive unpacks files into a filesystem volume, not onto a block device"
    )]
    ArchiveNeedsFilesystem,
    /// The upload server's settings (flags or their environment variables).
    #[error("upload server: {message}")]
    Upload {
        /// What is wrong, naming the flag or variable.
        message: String,
    },
    /// `--scratch` is not a directory.
    #[error("--scratch {}: not a directory", dir.display())]
    ScratchNotADirectory {
        /// What was given.
        dir: std::path::PathBuf,
    },
    /// No transport claims the source string.
    #[error("unsupported source {spec:?}: give {transports}")]
    UnsupportedSource {
        /// The string.
        spec: String,
        /// What may be given.
        transports: String,
    },
    /// A `vddk://` source without its options.
    #[error("a vddk:// source needs its VDDK options")]
    NeedsVddkOptions,
    /// An HTTP(S) source flag or variable that cannot be used.
    #[error("{what}: {message}")]
    Http {
        /// The flag or variable, with its value.
        what: String,
        /// Why.
        message: String,
    },
    /// A delta asked of a source that tracks no changes.
    #[error("{source_name}: this source cannot report changed areas")]
    NoChangeTracking {
        /// The source.
        source_name: String,
    },
    /// A delta from an NBD source without `--dirty-bitmap`.
    #[error("{uri}: no dirty bitmap was selected (--dirty-bitmap NAME)")]
    NoDirtyBitmap {
        /// The NBD source.
        uri: String,
    },
    /// Something a source read in order, once, cannot do.
    #[error(
        "{what} can only be read in order, once: {needs} needs a source that can be read at any offset"
    )]
    StreamOnly {
        /// The source.
        what: String,
        /// What was asked: "a delta", "a resume journal", "opening it again".
        needs: &'static str,
    },
    /// The `--changed-extents` file cannot be used.
    #[error("--changed-extents {}: {reason}", path.display())]
    ChangedExtents {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A delta import whose source is not VDDK.
    #[error(
        "{}: delta copies need {}=vddk",
        ferry_contract::env::IMPORTER_PREVIOUS_CHECKPOINT,
        ferry_contract::env::IMPORTER_SOURCE
    )]
    DeltaNeedsVddk,
    /// A source's minimum block size larger than a pool buffer.
    #[error(
        "{source_name}: minimum block size {block_size} does not fit buffers of {buf_size} bytes"
    )]
    BlockSizeTooLarge {
        /// The source.
        source_name: String,
        /// Its minimum block size.
        block_size: u64,
        /// The pool's buffer size.
        buf_size: usize,
    },
    /// The pool asked for is larger than the limit.
    #[error(
        "buffer pool of {mib} MiB (--buf-size-in-64k × 64 KiB × --buf-count) exceeds the {limit_mib} MiB limit"
    )]
    PoolTooLarge {
        /// Asked, MiB.
        mib: u64,
        /// The limit, MiB.
        limit_mib: u64,
    },
    /// `--metrics-addr` / `FERRY_METRICS_ADDR` is not an address.
    #[error("FERRY_METRICS_ADDR (--metrics-addr): invalid address {addr:?}")]
    MetricsAddr {
        /// What was given.
        addr: String,
    },
    /// `--changed-since` is neither a change ID, `*` nor a snapshot moref.
    #[error(
        "--changed-since {since:?}: expected a change ID (\"52 de … 63/81\"), * (all allocated areas) or a snapshot moref (snapshot-7)"
    )]
    ChangedSince {
        /// What was given.
        since: String,
    },
    /// `--changed-since` without `--snapshot`.
    #[error("--changed-since needs --snapshot (the snapshot being copied)")]
    ChangedSinceNeedsSnapshot,
    /// `--changed-since` with a source that is not VDDK.
    #[error("--changed-since needs a vddk:// source")]
    ChangedSinceNeedsVddk,
}

/// Why a source that exists cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceProblem {
    /// A local source that is neither a regular file nor a block device (nor a pipe).
    #[error("source {} is neither a regular file nor a block device", .0.display())]
    NotFileOrDevice(std::path::PathBuf),
    /// An NBD export whose size differs between connections.
    #[error("{what}: export size changed between connections ({first} then {then})")]
    SizeChanged {
        /// The export.
        what: String,
        /// On the first connection.
        first: u64,
        /// On a later one.
        then: u64,
    },
}

pub use ferry_contract::exit::ErrorKind;

/// Why a target that exists cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TargetProblem {
    /// A symbolic link to something other than a block device.
    #[error("target {} is a symbolic link; give the file's real path", .0.display())]
    Symlink(std::path::PathBuf),
    /// A block device smaller than the source.
    #[error("target {} is too small: {size} bytes, the source has {needed}", path.display())]
    TooSmall {
        /// The device.
        path: std::path::PathBuf,
        /// Its size.
        size: u64,
        /// The source's size.
        needed: u64,
    },
    /// Neither a regular file nor a block device.
    #[error("target {} is not a regular file or block device ({file_type:?})", path.display())]
    NotFileOrDevice {
        /// The path.
        path: std::path::PathBuf,
        /// What it is.
        file_type: std::fs::FileType,
    },
    /// A block device that a disk arriving as a stream (its size unknown until its end)
    /// outgrew.
    #[error("target {} is too small: {size} bytes, and the source holds more", path.display())]
    StreamTooLarge {
        /// The device.
        path: std::path::PathBuf,
        /// Its size.
        size: u64,
    },
    /// A filesystem volume whose usable space is smaller than the image (CDI's words
    /// first, which CDI's controller matches).
    #[error("{} ({}{})", crate::import::messages::too_small(*.needed, *.usable), dir.display(), match overhead { Some(o) => format!(" after FILESYSTEM_OVERHEAD={o}"), None => " has no usable space".into() })]
    VolumeTooSmall {
        /// The image's size.
        needed: u64,
        /// The volume's usable bytes.
        usable: u64,
        /// The volume.
        dir: std::path::PathBuf,
        /// The filesystem overhead taken off (None: the volume has no usable space).
        overhead: Option<f64>,
    },
    /// `--direct on`, and the target refuses O_DIRECT.
    #[error("O_DIRECT was required but {} refuses it: {error}", path.display())]
    DirectRefused {
        /// The target.
        path: std::path::PathBuf,
        /// The open error.
        error: std::io::Error,
    },
}

/// How an NBD failure may be retried: an error reply leaves the connection usable; a
/// dropped, refused, stuck or broken connection needs a new one; a protocol violation
/// or a refused option is the server's answer, not a hiccup.
pub fn nbd_retry(e: &ferry_nbd::Error) -> Retry {
    match e {
        ferry_nbd::Error::Request { .. } => Retry::Read,
        ferry_nbd::Error::Connect { .. }
        | ferry_nbd::Error::Disconnected(_)
        | ferry_nbd::Error::Timeout { .. }
        | ferry_nbd::Error::Io { .. } => Retry::Reconnect,
        _ => Retry::Never,
    }
}

/// What a failure allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// The read failed but the connection is fine: read again.
    Read,
    /// The connection is gone or stuck: open the source again and go on from the
    /// durable watermark.
    Reconnect,
    /// Retrying cannot help (authentication, thumbprint, not found, too small, usage,
    /// the target, a protocol violation): fail now.
    Never,
}

/// A typed [`Error`] carried through a blocking reader's `std::io::Error` (a source read
/// by a decoder), so its kind survives to the copy's end.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
struct Carried(Error);

impl Error {
    /// This error as an I/O error a [`std::io::Read`] can return; [`Error::from_io`]
    /// gets it back.
    pub fn into_io(self) -> std::io::Error {
        std::io::Error::other(Carried(self))
    }

    /// The error [`Error::into_io`] carried in `e`, or `e` as it was.
    pub fn from_io(e: std::io::Error) -> Result<Error, std::io::Error> {
        if !e.get_ref().is_some_and(|i| i.is::<Carried>()) {
            return Err(e);
        }
        let kind = e.kind();
        match e.into_inner().map(|i| i.downcast::<Carried>()) {
            Some(Ok(c)) => Ok(c.0),
            Some(Err(other)) => Err(std::io::Error::new(kind, other)),
            None => Err(std::io::Error::from(kind)),
        }
    }
}

impl Error {
    /// Whether and how this failure may be retried.
    pub fn retry(&self) -> Retry {
        use crate::source::vddk::VddkError as V;
        match self {
            Error::Read { retry, .. } => *retry,
            Error::Nbd(e) => nbd_retry(e),
            Error::Http { error, .. } if error.is_transient() => Retry::Read,
            Error::HttpStatus {
                status: 408 | 429 | 500..=599,
                ..
            } => Retry::Read,
            Error::Vddk(e) => match e {
                V::Call { .. } => Retry::Read,
                V::ConnectionLost { .. } | V::Timeout { .. } | V::WorkerGone => Retry::Reconnect,
                _ => Retry::Never,
            },
            _ => Retry::Never,
        }
    }
}

impl Error {
    /// The kind of failure, for exit statuses and for a controller
    /// ([`ferry_contract::exit::ErrorKind`]).
    pub fn kind(&self) -> ErrorKind {
        use crate::source::vddk::VddkError as V;
        use ferry_nbd::Error as N;
        use ferry_vsphere::Error as S;
        match self {
            Error::Usage(_)
            | Error::Config(_)
            | Error::NotRaw { .. }
            | Error::NeedsRandomAccess { .. } => ErrorKind::Usage,
            Error::Http { error, .. } => match error {
                ferry_http::Error::Config(_) | ferry_http::Error::Request { .. } => {
                    ErrorKind::Usage
                }
                ferry_http::Error::Tls { .. } => ErrorKind::Authentication,
                e if e.is_transient() => ErrorKind::SourceUnreachable,
                _ => ErrorKind::SourceData,
            },
            Error::HttpStatus { status, .. } => match status {
                401 | 403 | 407 => ErrorKind::Authentication,
                404 | 410 => ErrorKind::NotFound,
                408 | 429 | 500..=599 => ErrorKind::SourceUnreachable,
                _ => ErrorKind::SourceData,
            },
            Error::Checksum { .. } | Error::Mismatch(_) => ErrorKind::SourceData,
            Error::Preflight { kind, .. } => *kind,
            Error::Digest(_) => ErrorKind::Internal,
            Error::Registry { error, .. } => error.kind(),
            Error::Image { error, .. } if error.is_refusal() => ErrorKind::Usage,
            Error::Image { .. } => ErrorKind::SourceData,
            Error::Archive { error, .. } if error.is_refusal() => ErrorKind::Usage,
            Error::Archive { .. } => ErrorKind::SourceData,
            Error::Scratch { .. } => ErrorKind::TargetIo,
            Error::Nbd(e) => match e {
                N::Uri { .. } | N::InvalidRequest(_) => ErrorKind::Usage,
                N::Tls { .. } | N::TlsRequired => ErrorKind::Authentication,
                N::Refused { reason, .. } if *reason == "unknown export" => ErrorKind::NotFound,
                N::Connect { .. } | N::Disconnected(_) | N::Timeout { .. } | N::Io { .. } => {
                    ErrorKind::SourceUnreachable
                }
                _ => ErrorKind::SourceData,
            },
            Error::SourceIo { error, .. } if error.kind() == std::io::ErrorKind::NotFound => {
                ErrorKind::NotFound
            }
            Error::SourceUnusable(_) | Error::SourceIo { .. } | Error::Extents(_) => {
                ErrorKind::SourceData
            }
            Error::Read { retry, .. } => match retry {
                Retry::Reconnect => ErrorKind::SourceUnreachable,
                _ => ErrorKind::SourceData,
            },
            Error::TargetUnusable(_) | Error::Marker { .. } => ErrorKind::Target,
            Error::TargetOs { error, .. }
                if matches!(
                    error.raw_os_error(),
                    Some(libc::ENOSPC | libc::EDQUOT | libc::EIO)
                ) =>
            {
                ErrorKind::TargetIo
            }
            Error::TargetOs { .. } => ErrorKind::Target,
            Error::Write { .. } | Error::Journal { .. } | Error::JournalCheck { .. } => {
                ErrorKind::TargetIo
            }
            Error::NeedsFullCopy { .. } => ErrorKind::NeedsFullCopy,
            Error::Vddk(e) => match e {
                V::Library(_)
                | V::Uri { .. }
                | V::BadThumbprint { .. }
                | V::PasswordFile { .. }
                | V::PasswordTooLong { .. }
                | V::NoPassword
                | V::ConfigRead { .. }
                | V::Config { .. }
                | V::Missing { .. }
                | V::Transports { .. } => ErrorKind::Usage,
                V::Authentication { .. } | V::Thumbprint { .. } => ErrorKind::Authentication,
                V::NotFound { .. } => ErrorKind::NotFound,
                V::ConnectionLost { .. } | V::Timeout { .. } | V::WorkerGone => {
                    ErrorKind::SourceUnreachable
                }
                V::Call { .. } => ErrorKind::SourceData,
                _ => ErrorKind::Internal,
            },
            Error::Vsphere(e) => match e {
                S::Config(_) | S::Ambiguous { .. } => ErrorKind::Usage,
                S::Tls { .. } | S::Authentication { .. } => ErrorKind::Authentication,
                S::NotFound { .. } => ErrorKind::NotFound,
                S::ChangeIdInvalid { .. } => ErrorKind::NeedsFullCopy,
                e if e.is_transient() => ErrorKind::SourceUnreachable,
                _ => ErrorKind::SourceData,
            },
            Error::Engine(_) | Error::Signals { .. } | Error::Internal(_) => ErrorKind::Internal,
            Error::Cancelled(_) => ErrorKind::Cancelled,
        }
    }
}
