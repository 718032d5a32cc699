//! A disk image read through its own map ([`ferry_convert::image`]) on top of any
//! random-access source (a local file, an NBD export, an HTTP URL with Range): the disk
//! it describes is the [`Source`]. The format's [`Opener`] asks for the header and
//! directories it needs; its [`ImageMap`] then says what each guest unit holds, so holes
//! and zero units are never read, data is read from its input offsets (host-contiguous
//! units in one read), and compressed units are read and decompressed one by one on the
//! blocking pool. Tables too large to keep whole (qcow2 L2 tables, VMDK grain tables)
//! are read when first needed and kept in a bounded cache. Nothing an image names is
//! ever opened: the format readers refuse backing files, data files and extents
//! elsewhere.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use ferry_cbt::{Extent, ExtentKind, ExtentMap};
use ferry_convert::image::{
    ImageError, ImageMap, MAX_OPEN_READ, MAX_OPEN_STEPS, MAX_TABLE_BYTES, Mapping, Step, Table,
    Unit,
};

use super::Source;
use super::format::Format;
use crate::buf::{BUF_ALIGN, Buf};
use crate::engine::BoxFuture;
use crate::error::Error;

/// Most bytes of tables kept in memory (the copy walks the disk in order, so a few
/// tables are enough).
pub const MAX_TABLE_CACHE_BYTES: u64 = 32 << 20;
/// Largest guest read asked of this source.
pub const IMAGE_MAX_READ: u64 = 8 << 20;
/// Largest single read from the image underneath.
pub const IMAGE_INNER_READ: u64 = 8 << 20;

/// An image's disk.
#[derive(Debug, Clone)]
pub struct ImageSource {
    s: Arc<State>,
}

#[derive(Debug)]
struct State {
    inner: Arc<dyn Source>,
    map: Box<dyn ImageMap>,
    /// The image's size.
    len: u64,
    tables: Mutex<TableCache>,
}

#[derive(Debug, Default)]
struct TableCache {
    tables: HashMap<Table, Arc<Vec<u8>>>,
    order: VecDeque<Table>,
    bytes: u64,
}

impl ImageSource {
    /// Open the `format` image `inner` holds: its header and directories read and
    /// checked.
    pub async fn open(inner: Arc<dyn Source>, format: Format) -> Result<ImageSource, Error> {
        let len = inner.size();
        let err = |e: ImageError| image_err(inner.as_ref(), e);
        let mut opener = ferry_convert::image::opener(format, len).ok_or(Error::Internal(
            "an image layer for a format without an opener",
        ))?;
        let mut got = Vec::new();
        for _ in 0..MAX_OPEN_STEPS {
            match opener.next(&got).map_err(err)? {
                Step::Read { offset, len } => {
                    if len > MAX_OPEN_READ {
                        return Err(err(ImageError::OpenTooLarge("image")));
                    }
                    got = read_bytes(inner.as_ref(), offset, len).await?;
                }
                Step::Ready(map) => {
                    tracing::info!(source = %inner.describe(), format = %map.name(), size = map.size(), "image");
                    return Ok(ImageSource {
                        s: Arc::new(State {
                            inner,
                            map,
                            len,
                            tables: Mutex::new(TableCache::default()),
                        }),
                    });
                }
            }
        }
        Err(err(ImageError::OpenTooLarge("image")))
    }
}

/// `[offset, offset+len)` of `src`, in reads aligned as it needs.
pub(crate) async fn read_bytes(src: &dyn Source, offset: u64, len: u64) -> Result<Vec<u8>, Error> {
    let align = src.block_size().max(BUF_ALIGN as u64);
    let size = src.size();
    let end = offset.saturating_add(len).min(size);
    let mut out = Vec::with_capacity(crate::num::usize_of(end.saturating_sub(offset)));
    let mut at = offset / align * align;
    let chunk = (src.max_read().min(IMAGE_INNER_READ) / align * align).max(align);
    while at < end {
        let n = chunk.min(end.div_ceil(align) * align - at).min(size - at);
        let mut buf = Buf::new(crate::num::usize_of(n.div_ceil(align) * align));
        buf.set_len(crate::num::usize_of(n));
        let buf = src.read(at, buf).await?;
        let from = crate::num::usize_of(offset.saturating_sub(at));
        let to = crate::num::usize_of((end - at).min(n));
        out.extend_from_slice(&buf.as_slice()[from.min(to)..to]);
        at += n;
    }
    Ok(out)
}

/// Bytes of a source read by [`read_span`]: a slice of the one aligned buffer they were
/// read into, or (a span longer than one read) the reads joined.
pub(crate) enum Span {
    /// `buf[from..to]`.
    One {
        /// The buffer read.
        buf: Buf,
        /// Where the wanted bytes start in it.
        from: usize,
        /// Where they end.
        to: usize,
    },
    /// Several reads, joined.
    Joined(Vec<u8>),
}

impl std::ops::Deref for Span {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Span::One { buf, from, to } => &buf.as_slice()[*from..*to],
            Span::Joined(v) => v,
        }
    }
}

/// `[offset, offset+len)` of `src` (fewer bytes at its end) without a second copy when
/// one aligned read covers it: the hot path of data and compressed units.
pub(crate) async fn read_span(src: &dyn Source, offset: u64, len: u64) -> Result<Span, Error> {
    let align = src.block_size().max(BUF_ALIGN as u64);
    let size = src.size();
    let end = offset.saturating_add(len).min(size);
    let at = offset / align * align;
    let chunk = (src.max_read().min(IMAGE_INNER_READ) / align * align).max(align);
    let n = (end.div_ceil(align) * align).min(size).saturating_sub(at);
    if end <= offset || n > chunk {
        return read_bytes(src, offset, len).await.map(Span::Joined);
    }
    let mut buf = Buf::new(crate::num::usize_of(n.div_ceil(align) * align));
    buf.set_len(crate::num::usize_of(n));
    let buf = src.read(at, buf).await?;
    let from = crate::num::usize_of(offset - at);
    let to = crate::num::usize_of(end - at).min(buf.len()).max(from);
    Ok(Span::One { buf, from, to })
}

impl State {
    /// The table `t`, from the cache or the image.
    async fn table(&self, t: Table) -> Result<Arc<Vec<u8>>, Error> {
        if let Some(b) = self.lock().tables.get(&t) {
            return Ok(b.clone());
        }
        if t.len > MAX_TABLE_BYTES {
            return Err(self.err(ImageError::OpenTooLarge("image")));
        }
        let raw = read_bytes(self.inner.as_ref(), t.offset, t.len).await?;
        if (raw.len() as u64) < t.len {
            return Err(self.err(ImageError::PastEnd {
                format: "image",
                what: "table",
                offset: t.offset,
                end: self.len,
            }));
        }
        let b = Arc::new(raw);
        let mut c = self.lock();
        while c.bytes + t.len > MAX_TABLE_CACHE_BYTES {
            let Some(old) = c.order.pop_front() else {
                break;
            };
            c.tables.remove(&old);
            c.bytes -= old.len;
        }
        if c.tables.insert(t, b.clone()).is_none() {
            c.order.push_back(t);
            c.bytes += t.len;
        }
        Ok(b)
    }

    fn err(&self, e: ImageError) -> Error {
        image_err(self.inner.as_ref(), e)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TableCache> {
        self.tables
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What guest unit `index` holds, and for how many units from it on (more than one
    /// only for a run of unallocated units: [`ImageMap::unallocated_run`]).
    async fn unit(&self, index: u64) -> Result<(Unit, u64), Error> {
        let table = match self.map.table(index).map_err(|e| self.err(e))? {
            Some(t) => Some(self.table(t).await?),
            None => None,
        };
        let unit = self
            .map
            .lookup(index, table.as_deref().map(Vec::as_slice))
            .map_err(|e| self.err(e))?;
        let run = match unit {
            Unit::Whole(Mapping::Unallocated) => self
                .map
                .unallocated_run(index, table.as_deref().map(Vec::as_slice))
                .max(1),
            _ => 1,
        };
        Ok((unit, run))
    }

    /// Each run of `[offset, end)` with one mapping: (guest offset, length, mapping,
    /// offset of the run inside its mapping's unit).
    async fn runs(&self, offset: u64, end: u64) -> Result<Vec<(u64, u64, Mapping, u64)>, Error> {
        let us = self.map.unit();
        let mut out: Vec<(u64, u64, Mapping, u64)> = Vec::new();
        // Runs that continue each other (host-contiguous data, or the same zero kind)
        // are one run: one read of the image for many units.
        let mut push = |r: (u64, u64, Mapping, u64)| {
            if let Some(last) = out.last_mut() {
                let joins = match (last.2, r.2) {
                    (Mapping::Data { host: a }, Mapping::Data { host: b }) => {
                        a + last.3 + last.1 == b + r.3
                    }
                    (Mapping::Zero, Mapping::Zero)
                    | (Mapping::Unallocated, Mapping::Unallocated) => true,
                    _ => false,
                };
                if joins && last.0 + last.1 == r.0 {
                    last.1 += r.1;
                    return;
                }
            }
            out.push(r);
        };
        let mut at = offset;
        while at < end {
            let base = at / us * us;
            match self.unit(at / us).await? {
                (Unit::Whole(m), run) => {
                    let n = base.saturating_add(run.saturating_mul(us)).min(end) - at;
                    push((at, n, m, at - base));
                    at += n;
                }
                (Unit::Parts(parts), _) => {
                    let part = us / (parts.len().max(1) as u64);
                    while at < end && at < base + us {
                        let k = crate::num::usize_of((at - base) / part);
                        let p0 = base + k as u64 * part;
                        let n = (p0 + part).min(end) - at;
                        let m = parts.get(k).copied().unwrap_or(Mapping::Unallocated);
                        if matches!(m, Mapping::Compressed { .. }) {
                            return Err(self
                                .err(ImageError::corrupt("image", "a compressed part of a unit")));
                        }
                        push((at, n, m, at - p0));
                        at += n;
                    }
                }
            }
        }
        Ok(out)
    }
}

fn kind(m: Mapping) -> ExtentKind {
    match m {
        Mapping::Data { .. } | Mapping::Compressed { .. } => ExtentKind::Data,
        Mapping::Zero => ExtentKind::Zero,
        Mapping::Unallocated => ExtentKind::Hole,
    }
}

impl Source for ImageSource {
    fn describe(&self) -> String {
        format!("{} ({})", self.s.inner.describe(), self.s.map.name())
    }

    fn size(&self) -> u64 {
        self.s.map.size()
    }

    fn block_size(&self) -> u64 {
        512
    }

    fn max_read(&self) -> u64 {
        IMAGE_MAX_READ
    }

    fn extents(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<ExtentMap, Error>> {
        Box::pin(async move {
            let end = offset.saturating_add(len).min(self.s.map.size());
            let mut map = ExtentMap::new();
            for (at, n, m, _) in self.s.runs(offset, end).await? {
                map.push(Extent::new(at, n, kind(m)))?;
            }
            Ok(map)
        })
    }

    fn read(&self, offset: u64, mut buf: Buf) -> BoxFuture<'static, Result<Buf, Error>> {
        let s = self.s.clone();
        Box::pin(async move {
            let end = offset + buf.len() as u64;
            let runs = s.runs(offset, end).await?;
            // One host-contiguous data run for the whole request: read straight into
            // the pool's buffer.
            if let [(at, n, Mapping::Data { host }, within)] = runs[..] {
                let (h, bs) = (host + within, s.inner.block_size().max(1));
                let h_end = h.saturating_add(n);
                if at == offset
                    && n == buf.len() as u64
                    && h.is_multiple_of(bs)
                    && (h_end.is_multiple_of(bs) || h_end == s.inner.size())
                    && h_end <= s.inner.size()
                    && n <= s.inner.max_read()
                {
                    return s.inner.read(h, buf).await;
                }
            }
            let mut i = 0;
            while i < runs.len() {
                let (at, n, m, within) = runs[i];
                let to = crate::num::usize_of(at - offset);
                match m {
                    Mapping::Unallocated | Mapping::Zero => {
                        buf.as_mut_slice()[to..to + crate::num::usize_of(n)].fill(0);
                        i += 1;
                    }
                    Mapping::Data { host } => {
                        let bytes = read_span(s.inner.as_ref(), host + within, n).await?;
                        if bytes.len() as u64 != n {
                            return Err(past_end(&s, "data", host + within));
                        }
                        buf.as_mut_slice()[to..to + crate::num::usize_of(n)]
                            .copy_from_slice(&bytes);
                        i += 1;
                    }
                    Mapping::Compressed { .. } => {
                        let j = compressed_group(&runs, i);
                        buf = decompress_group(&s, offset, runs[i..j].to_vec(), buf).await?;
                        i = j;
                    }
                }
            }
            Ok(buf)
        })
    }

    fn local_path(&self) -> Option<&std::path::Path> {
        self.s.inner.local_path()
    }

    fn finish(&self) -> BoxFuture<'_, Result<(), Error>> {
        self.s.inner.finish()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        self.s.inner.close()
    }
}

/// Compressed input read and not yet decompressed, at most, process-wide: enough for
/// every HTTP connection to have a read in flight and every CPU a unit to decompress.
pub const MAX_COMPRESSED_IN_FLIGHT: u64 = 8 << 20;
/// The budget's unit.
const INPUT_PERMIT_BYTES: u64 = 64 << 10;

fn input_budget() -> &'static tokio::sync::Semaphore {
    static BUDGET: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    BUDGET.get_or_init(|| {
        tokio::sync::Semaphore::new(crate::num::usize_of(
            MAX_COMPRESSED_IN_FLIGHT / INPUT_PERMIT_BYTES,
        ))
    })
}

/// Decompressions running at once, process-wide: one per CPU.
fn decompress_slots() -> &'static tokio::sync::Semaphore {
    static SLOTS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    SLOTS.get_or_init(|| {
        tokio::sync::Semaphore::new(
            std::thread::available_parallelism().map_or(2, std::num::NonZero::get),
        )
    })
}

/// The end of the group of compressed runs starting at `runs[i]` whose input lies in
/// one span of at most [`IMAGE_INNER_READ`] bytes (compressed clusters are packed one
/// after the other: a group is one read of the image).
fn compressed_group(runs: &[(u64, u64, Mapping, u64)], i: usize) -> usize {
    let Some((_, _, Mapping::Compressed { host, len }, _)) = runs.get(i) else {
        return i + 1;
    };
    let (lo, mut hi) = (*host, host.saturating_add(*len));
    let mut j = i + 1;
    while let Some((_, _, Mapping::Compressed { host, len }, _)) = runs.get(j) {
        let h = host.saturating_add(*len);
        if *host < lo || h.max(hi) - lo > IMAGE_INNER_READ {
            break;
        }
        hi = hi.max(h);
        j += 1;
    }
    j
}

/// Read the input of a group of compressed runs at once and decompress them on the
/// blocking pool (CPU work, off the threads that drive I/O), each straight into `buf`
/// (which holds guest bytes from `offset`) when it covers a whole unit.
async fn decompress_group(
    s: &Arc<State>,
    offset: u64,
    group: Vec<(u64, u64, Mapping, u64)>,
    buf: Buf,
) -> Result<Buf, Error> {
    let span = |r: &(u64, u64, Mapping, u64)| match r.2 {
        Mapping::Compressed { host, len } => (host, host.saturating_add(len)),
        _ => (0, 0),
    };
    let lo = group.iter().map(|r| span(r).0).min().unwrap_or(0);
    let hi = group.iter().map(|r| span(r).1).max().unwrap_or(0);
    // Compressed input is held within a process-wide budget while it is read and
    // decompressed (reads waiting for a connection hold their buffers too).
    let want = (hi - lo)
        .div_ceil(INPUT_PERMIT_BYTES)
        .clamp(1, MAX_COMPRESSED_IN_FLIGHT / INPUT_PERMIT_BYTES);
    let _budget = input_budget()
        .acquire_many(u32::try_from(want).unwrap_or(u32::MAX))
        .await
        .map_err(|_| Error::Internal("the compressed input budget closed"))?;
    let input = read_span(s.inner.as_ref(), lo, hi - lo).await?;
    let st = s.clone();
    // As many decompressing threads as CPUs: more only add threads and contexts.
    let _slot = decompress_slots()
        .acquire()
        .await
        .map_err(|_| Error::Internal("the decompression slots closed"))?;
    tokio::task::spawn_blocking(move || {
        let mut buf = buf;
        let us = st.map.unit();
        let mut unit = Vec::new();
        for (at, n, m, within) in group {
            let Mapping::Compressed { host, len } = m else {
                continue;
            };
            let from = crate::num::usize_of(host - lo);
            if from >= input.len() {
                return Err(past_end(&st, "compressed data", host));
            }
            let to = input.len().min(from + crate::num::usize_of(len));
            let dst_at = crate::num::usize_of(at - offset);
            let dst = &mut buf.as_mut_slice()[dst_at..dst_at + crate::num::usize_of(n)];
            if within == 0 && n == us {
                st.map
                    .decompress(host, &input[from..to], dst)
                    .map_err(|e| st.err(e))?;
            } else {
                unit.resize(crate::num::usize_of(us), 0);
                st.map
                    .decompress(host, &input[from..to], &mut unit)
                    .map_err(|e| st.err(e))?;
                let w = crate::num::usize_of(within);
                dst.copy_from_slice(&unit[w..w + crate::num::usize_of(n)]);
            }
        }
        Ok(buf)
    })
    .await
    .map_err(|_| Error::Internal("a decompression thread failed"))?
}

fn past_end(s: &State, what: &'static str, offset: u64) -> Error {
    s.err(ImageError::PastEnd {
        format: "image",
        what,
        offset,
        end: s.len,
    })
}

fn image_err(inner: &dyn Source, error: ImageError) -> Error {
    Error::Image {
        what: inner.describe(),
        error,
    }
}
