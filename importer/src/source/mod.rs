//! Sources: where disk bytes come from.
//!
//! A [`Source`] knows its size, can describe its allocation as a [`ExtentMap`] over any
//! range, and reads into pool buffers with many reads in flight. Adding a source (VDDK,
//! HTTP) is one new implementation, never a new copy loop.

mod local;
mod nbd;
mod synthetic;
pub mod vddk;

use std::sync::Arc;

use ferry_cbt::ExtentMap;

pub mod format;
pub use local::LocalSource;
pub use nbd::{NbdSource, NbdSourceOptions};
pub use synthetic::{SyntheticSource, SyntheticSpec};
pub use vddk::{VddkOptions, VddkSource};

use crate::buf::Buf;
use crate::engine::BoxFuture;
use crate::error::Error;

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
            Err(Error::Usage(format!(
                "{}: this source cannot report changed areas",
                self.describe()
            )))
        })
    }
    /// Fill `buf` (its current length) from `offset`.
    fn read(&self, offset: u64, buf: Buf) -> BoxFuture<'static, Result<Buf, Error>>;
    /// The local file or device this source reads, if it is one (so no other file of
    /// the copy, e.g. its journal, can be it).
    fn local_path(&self) -> Option<&std::path::Path> {
        None
    }
    /// Release connections; called once after the copy.
    fn close(&self) -> BoxFuture<'_, ()>;
}

/// Open a source from a command-line string: an NBD URI or a local path.
pub async fn open(
    spec: &str,
    nbd_opts: &NbdSourceOptions,
    vddk_opts: Option<&VddkOptions>,
    engine: Arc<dyn crate::engine::IoEngine>,
) -> Result<Arc<dyn Source>, Error> {
    if vddk::options::is_vddk_uri(spec) {
        let opts = vddk_opts
            .ok_or_else(|| Error::Usage("a vddk:// source needs its VDDK options".into()))?;
        Ok(Arc::new(VddkSource::open(opts).await.map_err(Error::Vddk)?))
    } else if ferry_nbd::Uri::is_nbd_uri(spec) {
        let uri: ferry_nbd::Uri = spec.parse().map_err(Error::Nbd)?;
        Ok(Arc::new(NbdSource::connect(&uri, nbd_opts).await?))
    } else if spec.contains("://") {
        Err(Error::Usage(format!(
            "unsupported source {spec:?}: give an NBD URI (nbd://, nbd+unix://), a vddk:// URI or a path"
        )))
    } else {
        Ok(Arc::new(LocalSource::open(
            std::path::Path::new(spec),
            engine,
        )?))
    }
}

/// Refuse a source whose bytes are an image or archive format rather than a disk (see
/// [`format::detect`]): copying a qcow2 file "as raw" would give the VM its container
/// bytes. Reads the head and, past it, the last sector; what cannot be read is left to
/// the copy.
pub async fn check_raw(src: &dyn Source) -> Result<(), Error> {
    let size = src.size();
    let align = src.block_size().max(crate::buf::BUF_ALIGN as u64);
    // Reads start aligned and end aligned or at the end of the disk (a server's
    // minimum block size may be larger than the head).
    let head_len = (format::HEAD_BYTES as u64)
        .div_ceil(align)
        .saturating_mul(align)
        .min(size);
    if head_len == 0 {
        return Ok(());
    }
    // A failed read leaves the question open: the copy reads the same bytes with its
    // retries and reports a failure by its own rules.
    let Ok(head) = read_unless_hole(src, 0, head_len, align).await else {
        tracing::debug!("could not read the source's head to check its format");
        return Ok(());
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
    match format::detect(head, tail) {
        format::Format::Raw => Ok(()),
        found => Err(Error::NotRaw {
            what: src.describe(),
            format: found,
        }),
    }
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
