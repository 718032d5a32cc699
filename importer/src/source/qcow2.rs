//! A qcow2 image read through its own map ([`ferry_convert::qcow2`]) on top of any
//! random-access source (a local file, an NBD export, next an HTTP URL with Range): the
//! disk it describes is the [`Source`]. Its allocation comes from the L2 tables (so
//! holes and zero clusters are never read), data clusters are read from their host
//! offsets, compressed clusters are read and decompressed one by one. Nothing the image
//! names is ever opened (a backing or data file is refused by the header check).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use ferry_cbt::{Extent, ExtentKind, ExtentMap};
use ferry_convert::qcow2::{Cluster, Header, Mapping};

use super::Source;
use crate::buf::{BUF_ALIGN, Buf};
use crate::engine::BoxFuture;
use crate::error::Error;

/// Most bytes of L2 tables kept in memory (the copy walks the disk in order, so a few
/// tables are enough; each is one cluster).
pub const MAX_L2_CACHE_BYTES: u64 = 32 << 20;
/// Largest guest read asked of this source.
pub const QCOW2_MAX_READ: u64 = 8 << 20;
/// Largest single read from the image underneath.
pub const QCOW2_INNER_READ: u64 = 8 << 20;

/// A qcow2 image's disk.
#[derive(Debug, Clone)]
pub struct Qcow2Source {
    s: Arc<State>,
}

#[derive(Debug)]
struct State {
    inner: Arc<dyn Source>,
    h: Header,
    /// The image's size.
    len: u64,
    l1: Vec<u64>,
    l2: Mutex<L2Cache>,
}

#[derive(Debug, Default)]
struct L2Cache {
    tables: HashMap<u64, Arc<Vec<u64>>>,
    order: VecDeque<u64>,
}

impl Qcow2Source {
    /// Read and check the header and the L1 table of the qcow2 image `inner` holds.
    pub async fn open(inner: Arc<dyn Source>) -> Result<Qcow2Source, Error> {
        let len = inner.size();
        let fixed = read_bytes(inner.as_ref(), 0, 4096.min(len)).await?;
        // The whole first cluster holds the header extensions.
        let cluster_bits = fixed
            .get(20..24)
            .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]).min(21));
        let first = (1u64 << cluster_bits).clamp(4096, 2 << 20).min(len);
        let head = if first > fixed.len() as u64 {
            read_bytes(inner.as_ref(), 0, first).await?
        } else {
            fixed
        };
        let h = Header::parse(&head, Some(len)).map_err(|e| image_err(inner.as_ref(), e))?;
        if h.corrupt {
            tracing::warn!(source = %inner.describe(), "the qcow2 image is marked corrupt; reading it as qemu does");
        }
        if h.snapshots > 0 {
            tracing::info!(
                snapshots = h.snapshots,
                "the qcow2 image's internal snapshots are ignored: the active state is copied"
            );
        }
        let raw = read_bytes(inner.as_ref(), h.l1_offset, h.l1_bytes()).await?;
        let l1 = raw
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap_or_default()))
            .collect();
        tracing::info!(source = %inner.describe(), size = h.size, cluster = h.cluster_size(), version = h.version, extended_l2 = h.extended_l2, "qcow2 image");
        Ok(Qcow2Source {
            s: Arc::new(State {
                inner,
                h,
                len,
                l1,
                l2: Mutex::new(L2Cache::default()),
            }),
        })
    }
}

/// `[offset, offset+len)` of `src`, in reads aligned as it needs.
async fn read_bytes(src: &dyn Source, offset: u64, len: u64) -> Result<Vec<u8>, Error> {
    let align = src.block_size().max(BUF_ALIGN as u64);
    let size = src.size();
    let end = offset.saturating_add(len).min(size);
    let mut out = Vec::with_capacity(crate::num::usize_of(end.saturating_sub(offset)));
    let mut at = offset / align * align;
    let chunk = (src.max_read().min(QCOW2_INNER_READ) / align * align).max(align);
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

impl State {
    /// The L2 table of L1 slot `i` (None: unallocated), from the cache or the image.
    async fn l2(&self, i: usize) -> Result<Option<Arc<Vec<u64>>>, Error> {
        let entry = self.l1.get(i).copied().unwrap_or(0);
        let Some(off) = self
            .h
            .l1_entry(entry, Some(self.len))
            .map_err(|e| self.err(e))?
        else {
            return Ok(None);
        };
        if let Some(t) = self.lock().tables.get(&off) {
            return Ok(Some(t.clone()));
        }
        let raw = read_bytes(self.inner.as_ref(), off, self.h.l2_bytes()).await?;
        let t: Arc<Vec<u64>> = Arc::new(
            raw.chunks_exact(8)
                .map(|c| u64::from_be_bytes(c.try_into().unwrap_or_default()))
                .collect(),
        );
        let mut c = self.lock();
        let keep = crate::num::usize_of((MAX_L2_CACHE_BYTES / self.h.l2_bytes()).max(2));
        while c.order.len() >= keep {
            if let Some(old) = c.order.pop_front() {
                c.tables.remove(&old);
            }
        }
        c.tables.insert(off, t.clone());
        c.order.push_back(off);
        Ok(Some(t))
    }

    fn err(&self, e: ferry_convert::qcow2::Qcow2Error) -> Error {
        image_err(self.inner.as_ref(), e)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, L2Cache> {
        self.l2
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What the guest cluster at `guest` (cluster-aligned) holds.
    async fn cluster(&self, guest: u64) -> Result<Cluster, Error> {
        let idx = guest / self.h.cluster_size();
        let (i, j) = (idx / self.h.l2_entries(), idx % self.h.l2_entries());
        let Some(t) = self.l2(crate::num::usize_of(i)).await? else {
            return Ok(Cluster::Whole(Mapping::Unallocated));
        };
        let step = if self.h.extended_l2 { 2 } else { 1 };
        let at = crate::num::usize_of(j) * step;
        let entry = t.get(at).copied().unwrap_or(0);
        let bitmap = if self.h.extended_l2 {
            t.get(at + 1).copied().unwrap_or(0)
        } else {
            0
        };
        self.h
            .l2_entry(entry, bitmap, Some(self.len))
            .map_err(|e| self.err(e))
    }

    /// Each run of `[offset, end)` with one mapping: (guest offset, length, mapping,
    /// offset of the run inside its mapping's unit).
    async fn runs(&self, offset: u64, end: u64) -> Result<Vec<(u64, u64, Mapping, u64)>, Error> {
        let cs = self.h.cluster_size();
        let mut out: Vec<(u64, u64, Mapping, u64)> = Vec::new();
        // Runs that continue each other (host-contiguous data, or the same zero kind)
        // are one run: one read of the image for many clusters.
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
            let base = at / cs * cs;
            match self.cluster(base).await? {
                Cluster::Whole(m) => {
                    let n = (base + cs).min(end) - at;
                    push((at, n, m, at - base));
                    at += n;
                }
                Cluster::Sub(subs) => {
                    let sub = cs / ferry_convert::qcow2::SUBCLUSTERS as u64;
                    while at < end && at < base + cs {
                        let k = crate::num::usize_of((at - base) / sub);
                        let s0 = base + k as u64 * sub;
                        let n = (s0 + sub).min(end) - at;
                        push((at, n, subs[k], at - s0));
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

impl Source for Qcow2Source {
    fn describe(&self) -> String {
        format!("{} (qcow2)", self.s.inner.describe())
    }

    fn size(&self) -> u64 {
        self.s.h.size
    }

    fn block_size(&self) -> u64 {
        512
    }

    fn max_read(&self) -> u64 {
        QCOW2_MAX_READ
    }

    fn extents(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<ExtentMap, Error>> {
        Box::pin(async move {
            let end = offset.saturating_add(len).min(self.s.h.size);
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
            let cs = s.h.cluster_size();
            for (at, n, m, within) in s.runs(offset, end).await? {
                let to = crate::num::usize_of(at - offset);
                let dst = &mut buf.as_mut_slice()[to..to + crate::num::usize_of(n)];
                match m {
                    Mapping::Unallocated | Mapping::Zero => dst.fill(0),
                    Mapping::Data { host } => {
                        let bytes = read_bytes(s.inner.as_ref(), host + within, n).await?;
                        if bytes.len() as u64 != n {
                            return Err(past_end(&s, host + within));
                        }
                        dst.copy_from_slice(&bytes);
                    }
                    Mapping::Compressed { host, len } => {
                        let input = read_bytes(s.inner.as_ref(), host, len).await?;
                        // CPU work: on the blocking pool, off the threads that drive I/O.
                        let compression = s.h.compression;
                        let cluster = tokio::task::spawn_blocking(move || {
                            let mut cluster = vec![0u8; crate::num::usize_of(cs)];
                            ferry_convert::qcow2::decompress_cluster(
                                compression,
                                host,
                                &input,
                                &mut cluster,
                            )
                            .map(|()| cluster)
                        })
                        .await
                        .map_err(|_| Error::Internal("a decompression thread failed"))?
                        .map_err(|e| s.err(e))?;
                        let w = crate::num::usize_of(within);
                        dst.copy_from_slice(&cluster[w..w + crate::num::usize_of(n)]);
                    }
                }
            }
            Ok(buf)
        })
    }

    fn local_path(&self) -> Option<&std::path::Path> {
        self.s.inner.local_path()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        self.s.inner.close()
    }
}

fn past_end(s: &State, offset: u64) -> Error {
    s.err(ferry_convert::qcow2::Qcow2Error::PastEnd {
        what: "data cluster",
        offset,
        end: s.len,
    })
}

fn image_err(inner: &dyn Source, error: ferry_convert::qcow2::Qcow2Error) -> Error {
    Error::Image {
        what: inner.describe(),
        error,
    }
}
