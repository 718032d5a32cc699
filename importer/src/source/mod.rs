//! Sources: where disk bytes come from.
//!
//! A [`Source`] knows its size, can describe its allocation as a [`ExtentMap`] over any
//! range, and reads into pool buffers with many reads in flight. Adding a source (VDDK,
//! HTTP) is one new implementation, never a new copy loop.
//!
//! A source string is opened by the first of [`TRANSPORTS`] that claims it (an NBD or
//! VDDK URI, `-`, a path), giving an [`Input`]: a [`Source`] or, for what can only be
//! read in order (standard input), a [`StreamSource`]. The format layer ([`layers`]) then looks
//! at the first bytes and decodes what it can (a compressed raw disk) or refuses.

mod local;
mod nbd;
mod synthetic;
pub mod vddk;

use std::sync::Arc;

use ferry_cbt::ExtentMap;

/// What a source's bytes hold ([`ferry_convert::detect`]).
pub use ferry_convert::detect as format;
pub mod archive;
pub mod http;
pub mod image;
pub mod layers;
pub mod registry;
pub mod scratch;
pub mod stream;
pub use local::LocalSource;
pub use nbd::{NbdSource, NbdSourceOptions};
pub use stream::{Piece, StreamSource};
pub use synthetic::{SyntheticSource, SyntheticSpec};
pub use vddk::{VddkOptions, VddkSource};

use crate::buf::Buf;
use crate::engine::BoxFuture;
use crate::error::{Error, UsageError};

/// Size of the windows the allocation is queried in, unless a source says otherwise
/// ([`Source::extent_window`]).
pub const EXTENT_WINDOW: u64 = 1 << 30;

/// A disk to copy from.
pub trait Source: Send + Sync + std::fmt::Debug {
    /// For logs and errors.
    fn describe(&self) -> String;
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Reads must start and (except at the end of the disk) end on multiples of this.
    fn block_size(&self) -> u64;
    /// Largest single read.
    fn max_read(&self) -> u64;
    /// How much of the disk to ask `extents` about at once (sources whose allocation
    /// queries are slow answer large windows).
    fn extent_window(&self) -> u64 {
        EXTENT_WINDOW
    }
    /// Allocation of `[offset, offset+len)`: the returned map covers exactly that range.
    /// Sources that cannot tell return one Data extent.
    fn extents(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<ExtentMap, Error>>;
    /// The areas of `[offset, offset+len)` that changed since the previous round, as Data
    /// extents (gaps are unchanged), for sources that track changes.
    fn changes(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<ExtentMap, Error>> {
        let _ = (offset, len);
        Box::pin(async move {
            Err(crate::error::UsageError::NoChangeTracking {
                source_name: self.describe(),
            }
            .into())
        })
    }
    /// Fill `buf` (its current length) from `offset`.
    fn read(&self, offset: u64, buf: Buf) -> BoxFuture<'static, Result<Buf, Error>>;
    /// Called once when every byte of the copy is durable, before it is reported
    /// complete: a source that checks its input (a checksum) fails here.
    fn finish(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }
    /// The local file or device this source reads, if it is one (so no other file of
    /// the copy, e.g. its journal, can be it).
    fn local_path(&self) -> Option<&std::path::Path> {
        None
    }
    /// Release connections; called once after the copy.
    fn close(&self) -> BoxFuture<'_, ()>;
}

/// What a job reads: a disk readable at any offset, or one that arrives in order.
#[derive(Debug)]
pub enum Input {
    /// Random access ([`Source`]): windows of allocation, many reads in flight, resume.
    Disk(Arc<dyn Source>),
    /// Front to back, once ([`StreamSource`]).
    Stream(Box<dyn StreamSource>),
}

impl Input {
    /// For logs and errors.
    pub fn describe(&self) -> String {
        match self {
            Input::Disk(s) => s.describe(),
            Input::Stream(s) => s.describe(),
        }
    }
    /// The disk's size, when known before the copy (a stream may say nothing).
    pub fn size(&self) -> Option<u64> {
        match self {
            Input::Disk(s) => Some(s.size()),
            Input::Stream(s) => s.size(),
        }
    }
    /// The local file or device read, if any ([`Source::local_path`]).
    pub fn local_path(&self) -> Option<&std::path::Path> {
        match self {
            Input::Disk(s) => s.local_path(),
            Input::Stream(_) => None,
        }
    }
    /// Release what it reads from.
    pub async fn close(&mut self) {
        match self {
            Input::Disk(s) => s.close().await,
            Input::Stream(s) => s.close().await,
        }
    }
}

/// What opening a source may need besides its string.
#[derive(Clone, Debug)]
pub struct Reach<'a> {
    /// NBD connection options.
    pub nbd: &'a NbdSourceOptions,
    /// VDDK options (a `vddk://` source needs them).
    pub vddk: Option<&'a VddkOptions>,
    /// The I/O engine local files are read with.
    pub engine: Arc<dyn crate::engine::IoEngine>,
    /// HTTP(S) options (defaults when None: the system roots, the environment's proxy).
    pub http: Option<&'a http::HttpOptions>,
    /// Registry options for `docker://` sources (None: anonymous, over HTTPS, with
    /// [`Reach::http`]'s TLS and proxy settings).
    pub registry: Option<&'a registry::RegistryOptions>,
    /// The checksum of the source's bytes, checked before the copy completes.
    pub checksum: Option<Arc<crate::checksum::ChecksumState>>,
    /// Which member of an archive is the disk, and where an image that arrives as a
    /// stream but needs random access may be staged.
    pub layering: layers::Layering<'a>,
}

type OpenFn = for<'a> fn(&'a str, &'a Reach<'a>) -> BoxFuture<'a, Result<Input, Error>>;

/// One way of reaching a disk: which source strings it claims and how it opens them.
struct Transport {
    /// What it reads, for messages.
    name: &'static str,
    claims: fn(&str) -> bool,
    open: OpenFn,
}

/// The transports, tried in order: the first that claims a source string opens it. A
/// new transport (HTTP, a registry) is one row and its file.
const TRANSPORTS: &[Transport] = &[
    Transport {
        name: "vddk:// (VMware VDDK)",
        claims: vddk::options::is_vddk_uri,
        open: |spec, r| {
            Box::pin(async move {
                let _ = spec;
                let opts = r.vddk.ok_or(UsageError::NeedsVddkOptions)?;
                let s = VddkSource::open(opts).await.map_err(Error::Vddk)?;
                Ok(Input::Disk(Arc::new(s)))
            })
        },
    },
    Transport {
        name: "nbd://, nbd+unix:// (NBD)",
        claims: ferry_nbd::Uri::is_nbd_uri,
        open: |spec, r| {
            Box::pin(async move {
                let uri: ferry_nbd::Uri = spec.parse().map_err(Error::Nbd)?;
                Ok(Input::Disk(Arc::new(
                    NbdSource::connect(&uri, r.nbd).await?,
                )))
            })
        },
    },
    Transport {
        name: "http://, https:// (a URL)",
        claims: http::is_http_url,
        open: |spec, r| {
            Box::pin(async move {
                match r.http {
                    Some(o) => http::open(spec, o).await,
                    None => http::open(spec, &http::HttpOptions::default()).await,
                }
            })
        },
    },
    Transport {
        name: "docker:// (a container image's /disk/ file)",
        claims: registry::is_registry_ref,
        open: |spec, r| {
            Box::pin(async move {
                match r.registry {
                    Some(o) => registry::open(spec, o).await,
                    None => {
                        let o = registry::RegistryOptions {
                            http: r.http.cloned().unwrap_or_default(),
                            ..Default::default()
                        };
                        registry::open(spec, &o).await
                    }
                }
            })
        },
    },
    Transport {
        name: "- (standard input)",
        claims: |spec| spec == "-",
        open: |_, _| {
            Box::pin(async move {
                Ok(Input::Stream(Box::new(stream::ReadStream::new(
                    "standard input".into(),
                    None,
                    Box::new(std::io::stdin()),
                    None,
                ))))
            })
        },
    },
    Transport {
        name: "a path (file or block device)",
        claims: |spec| !spec.contains("://"),
        open: |spec, r| {
            Box::pin(async move {
                let s = LocalSource::open(std::path::Path::new(spec), r.engine.clone())?;
                Ok(Input::Disk(Arc::new(s)))
            })
        },
    },
];

/// Open a source from a command-line string through [`TRANSPORTS`], its bytes taken as
/// they are (see [`layers::layer`] for what they hold).
pub async fn open_input(spec: &str, reach: &Reach<'_>) -> Result<Input, Error> {
    match TRANSPORTS.iter().find(|t| (t.claims)(spec)) {
        Some(t) => {
            let input = (t.open)(spec, reach).await?;
            Ok(match &reach.checksum {
                Some(c) => checksummed(input, c.clone()),
                None => input,
            })
        }
        None => Err(UsageError::UnsupportedSource {
            spec: spec.to_string(),
            transports: TRANSPORTS
                .iter()
                .map(|t| t.name)
                .collect::<Vec<_>>()
                .join(", "),
        }
        .into()),
    }
}

/// `input` with its bytes hashed into `state` as they are read (under every format
/// layer: the checksum is of what was downloaded).
fn checksummed(input: Input, state: Arc<crate::checksum::ChecksumState>) -> Input {
    match input {
        Input::Disk(s) => Input::Disk(Arc::new(crate::checksum::HashingSource::new(s, state))),
        Input::Stream(s) => match s.into_bytes() {
            Ok((what, reader, under, _)) => {
                let size = None;
                let tee = crate::checksum::HashTee::new(reader, state.clone());
                Input::Stream(Box::new(
                    stream::ReadStream::new(what, size, Box::new(tee), under).checked(state),
                ))
            }
            Err(s) => Input::Stream(s),
        },
    }
}

/// Open a source that can be read at any offset (the one a lost connection is
/// reopened with), through the format layer when `layered` (so a reopened qcow2 file is
/// the disk it holds again, never its bytes).
pub async fn open(spec: &str, reach: &Reach<'_>, layered: bool) -> Result<Arc<dyn Source>, Error> {
    let input = open_input(spec, reach).await?;
    let input = if layered {
        layers::layer(input, &reach.layering).await?
    } else {
        input
    };
    match input {
        Input::Disk(s) => Ok(s),
        Input::Stream(mut s) => {
            s.close().await;
            Err(UsageError::StreamOnly {
                what: s.describe(),
                needs: "opening it again",
            }
            .into())
        }
    }
}

/// What a disk source's bytes are (see [`format::detect`]): reads the head and, past
/// it, the last sector. A head that cannot be read is left to the copy (it reads the
/// same bytes with its retries and reports a failure by its own rules): Raw.
pub async fn sniff_disk(src: &dyn Source) -> Result<format::Format, Error> {
    let size = src.size();
    let align = src.block_size().max(crate::buf::BUF_ALIGN as u64);
    // Reads start aligned and end aligned or at the end of the disk (a server's
    // minimum block size may be larger than the head).
    let head_len = (format::HEAD_BYTES as u64)
        .div_ceil(align)
        .saturating_mul(align)
        .min(size);
    if head_len == 0 {
        return Ok(format::Format::Raw);
    }
    let Ok(head) = read_unless_hole(src, 0, head_len, align).await else {
        tracing::debug!("could not read the source's head to check its format");
        return Ok(format::Format::Raw);
    };
    let tail_at = size.saturating_sub(format::TAIL_BYTES as u64) / align * align;
    let tail = if tail_at >= head_len {
        read_unless_hole(src, tail_at, size - tail_at, align)
            .await
            .ok()
    } else {
        None
    };
    let head = &head[..head.len().min(format::HEAD_BYTES)];
    let tail = tail
        .as_deref()
        .map(|t| &t[t.len().saturating_sub(format::TAIL_BYTES)..]);
    Ok(format::detect(head, tail))
}

/// `[offset, offset+len)` of `src`, as zeroes without a read when the source says it
/// holds no data there (holes are never read, even to sniff them).
async fn read_unless_hole(
    src: &dyn Source,
    offset: u64,
    len: u64,
    align: u64,
) -> Result<Vec<u8>, Error> {
    let data = match src.extents(offset, len).await {
        Ok(m) => m.iter().any(|e| e.kind == ferry_cbt::ExtentKind::Data),
        Err(_) => true,
    };
    if !data {
        return Ok(vec![0; crate::num::usize_of(len)]);
    }
    let mut buf = Buf::new(crate::num::usize_of(len.div_ceil(align) * align));
    buf.set_len(crate::num::usize_of(len));
    Ok(src.read(offset, buf).await?.as_slice().to_vec())
}
