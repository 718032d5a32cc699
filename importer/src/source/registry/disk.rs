//! The disk inside an image's layers: the one regular file under `/disk/`
//! ([`ferry_convert::tar::container_entry`]), found and read without unpacking anything.
//!
//! - [`open`] reads it in place when every layer is an uncompressed tar the registry
//!   serves with ranges: each layer's headers are walked with ranged reads, the disk's
//!   layer becomes a [`Source`] of its own ([`LayerDisk`]) that the format layer reads
//!   through its map, and every layer's digest is checked when the copy finishes (the
//!   bytes not read for the disk are read then, once, in order).
//! - Otherwise it streams them ([`DiskStream`]): each layer in order, hashed as it
//!   arrives, decompressed and walked; the disk's bytes are the stream; after them the
//!   rest of its layer and the later layers are read and walked too, so a second disk
//!   or a refused entry after it, or a layer whose digest is wrong, fails the copy
//!   before it completes.

use std::io::Read;
use std::sync::{Arc, Mutex};

use ferry_convert::tar::{self, ContainerEntry, Entries, Member, Walker};

use super::manifest::{Compression, Descriptor};
use super::{Api, RegistryError, short};
use crate::checksum::{Checksum, ChecksumState, HashTee, HashingSource};
use crate::engine::BoxFuture;
use crate::error::{Error, Retry};
use crate::source::archive::{self, MemberSource};
use crate::source::http::Downloaded;
use crate::source::stream::{ReadStream, SourceReader};
use crate::source::{Input, Source};

/// Most members walked in one layer.
pub const MAX_LAYER_MEMBERS: usize = 1 << 20;

fn digest_state(api: &Api, d: &Descriptor, i: usize) -> Result<Arc<ChecksumState>, Error> {
    let c: Checksum = d
        .digest
        .parse()
        .map_err(|e: String| api.err(RegistryError::Manifest(format!("layer {i}: {e}"))))?;
    Ok(ChecksumState::new(
        c,
        format!("{}, layer {i} ({})", api.what(), short(&d.digest)),
    ))
}

/// Where the disk is: layer `layer`, member `member`.
#[derive(Debug, Clone)]
struct Found {
    layer: usize,
    member: Member,
}

fn describe_found(f: &[Found]) -> String {
    f.iter()
        .take(8)
        .map(|f| format!("{} (layer {})", f.member.name, f.layer))
        .collect::<Vec<_>>()
        .join(", ")
}

fn no_disk(api: &Api, layers: usize, seen: &[String]) -> Error {
    let listed = if seen.is_empty() {
        "no files".to_string()
    } else {
        seen.iter().take(16).cloned().collect::<Vec<_>>().join(", ")
    };
    api.err(RegistryError::Disk(format!(
        "no disk file under /disk/ in the image's {layers} layer(s) (they hold: {listed})"
    )))
}

fn several(api: &Api, found: &[Found]) -> Error {
    api.err(RegistryError::Disk(format!(
        "the image holds {} files under /disk/ ({}): a container disk holds exactly one",
        found.len(),
        describe_found(found)
    )))
}

/// The disk of the image whose layers are `layers`.
pub(crate) async fn open(
    api: Arc<Api>,
    layers: Vec<Descriptor>,
    downloaded: Downloaded,
) -> Result<Input, Error> {
    let total: u64 = layers.iter().map(|l| l.size).sum();
    downloaded.set_size(total);
    if layers
        .iter()
        .all(|l| Compression::of_layer(&l.media_type) == Some(Compression::None))
        && let Some(input) = in_place(&api, &layers, &downloaded, total).await?
    {
        return Ok(input);
    }
    let handle = tokio::runtime::Handle::current();
    let stream = tokio::task::spawn_blocking(move || {
        DiskStream::open(api, layers, downloaded, total, handle)
    })
    .await
    .map_err(|_| Error::Internal("the registry reading thread failed"))??;
    let what = stream.describe();
    let size = stream.found.member.size;
    Ok(Input::Stream(Box::new(ReadStream::new(
        what,
        Some(size),
        Box::new(stream),
        None,
    ))))
}

/// The disk read in place, when every layer is served with ranges (None when one is
/// not: the layers are then streamed).
async fn in_place(
    api: &Arc<Api>,
    layers: &[Descriptor],
    downloaded: &Downloaded,
    total: u64,
) -> Result<Option<Input>, Error> {
    let mut srcs: Vec<Arc<dyn Source>> = Vec::new();
    let close_all = |srcs: Vec<Arc<dyn Source>>| async move {
        for s in srcs {
            s.close().await;
        }
    };
    for (i, l) in layers.iter().enumerate() {
        match api.open_layer(l, downloaded, total).await {
            Ok(Input::Disk(s)) => {
                let state = match digest_state(api, l, i) {
                    Ok(s) => s,
                    Err(e) => {
                        close_all(srcs).await;
                        return Err(e);
                    }
                };
                srcs.push(Arc::new(HashingSource::new(s, state)));
            }
            Ok(Input::Stream(mut s)) => {
                s.close().await;
                close_all(srcs).await;
                tracing::info!(image = %api.what(), "the registry does not answer Range requests: layers streamed");
                return Ok(None);
            }
            Err(e) => {
                close_all(srcs).await;
                return Err(e);
            }
        }
    }
    let mut found = Vec::new();
    let mut seen = Vec::new();
    for (i, s) in srcs.iter().enumerate() {
        let members = match archive::members(s.as_ref()).await {
            Ok(m) => m,
            Err(e) => {
                close_all(srcs).await;
                return Err(e);
            }
        };
        for m in members {
            match tar::container_entry(&m) {
                ContainerEntry::Disk => found.push(Found {
                    layer: i,
                    member: m,
                }),
                ContainerEntry::Refused(why) => {
                    close_all(srcs).await;
                    return Err(api.err(RegistryError::Disk(format!(
                        "layer {i}: {why}, which Ferry refuses under /disk/"
                    ))));
                }
                ContainerEntry::Other => seen.push(m.name),
            }
        }
    }
    let f = match &found[..] {
        [one] => one.clone(),
        [] => {
            close_all(srcs).await;
            return Err(no_disk(api, layers.len(), &seen));
        }
        _ => {
            close_all(srcs).await;
            return Err(several(api, &found));
        }
    };
    tracing::info!(image = %api.what(), layer = f.layer, disk = %f.member.name, size = f.member.size, "disk read in place (uncompressed layer, ranged reads)");
    let disk = MemberSource::new(srcs[f.layer].clone(), f.member.clone());
    Ok(Some(Input::Disk(Arc::new(LayerDisk {
        what: format!("{}, {}", api.what(), f.member.name),
        disk,
        layers: srcs,
        disk_layer: f.layer,
    }))))
}

/// The disk file of a layer read in place; finishing it checks every layer's digest.
#[derive(Debug)]
pub struct LayerDisk {
    what: String,
    disk: MemberSource,
    /// Every layer (hashed as read).
    layers: Vec<Arc<dyn Source>>,
    disk_layer: usize,
}

impl Source for LayerDisk {
    fn describe(&self) -> String {
        self.what.clone()
    }
    fn size(&self) -> u64 {
        self.disk.size()
    }
    fn block_size(&self) -> u64 {
        self.disk.block_size()
    }
    fn max_read(&self) -> u64 {
        self.disk.max_read()
    }
    fn extents(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<ferry_cbt::ExtentMap, Error>> {
        self.disk.extents(offset, len)
    }
    fn read(
        &self,
        offset: u64,
        buf: crate::buf::Buf,
    ) -> BoxFuture<'static, Result<crate::buf::Buf, Error>> {
        self.disk.read(offset, buf)
    }
    fn finish(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            // The disk's layer first (mostly hashed already), then the others.
            self.layers[self.disk_layer].finish().await?;
            for (i, l) in self.layers.iter().enumerate() {
                if i != self.disk_layer {
                    l.finish().await?;
                }
            }
            Ok(())
        })
    }
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            for l in &self.layers {
                l.close().await;
            }
        })
    }
}

/// A layer's compressed bytes, shared between the decoder reading them and the walk
/// that reads them to their end when the tar inside has ended.
#[derive(Clone)]
struct Shared(Arc<Mutex<Box<dyn Read + Send>>>);

impl Read for Shared {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .read(buf)
    }
}

/// One layer being streamed.
struct Layer {
    index: usize,
    digest: String,
    entries: Entries<Box<dyn Read + Send>>,
    raw: Shared,
    check: Arc<ChecksumState>,
    under: Option<Arc<dyn Source>>,
}

/// The layers, streamed in order; reads give the disk's bytes ([`open`]).
pub struct DiskStream {
    api: Arc<Api>,
    layers: Vec<Descriptor>,
    downloaded: Downloaded,
    total: u64,
    handle: tokio::runtime::Handle,
    cur: Option<Layer>,
    found: Found,
    /// Past the disk: the rest has been read and checked.
    done: bool,
}

impl std::fmt::Debug for DiskStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskStream")
            .field("image", &self.api.reference)
            .field("found", &self.found)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

fn io_err(e: Error) -> std::io::Error {
    e.into_io()
}

/// Open layer `i` of `layers` for streaming (on a blocking thread).
fn open_layer(
    api: &Api,
    layers: &[Descriptor],
    i: usize,
    downloaded: &Downloaded,
    total: u64,
    handle: &tokio::runtime::Handle,
) -> Result<Layer, Error> {
    let d = &layers[i];
    let input = handle.block_on(api.open_layer(d, downloaded, total))?;
    let (reader, under): (Box<dyn Read + Send>, Option<Arc<dyn Source>>) = match input {
        Input::Disk(s) => {
            let _g = handle.enter();
            (Box::new(SourceReader::new(s.clone())), Some(s))
        }
        Input::Stream(s) => match s.into_bytes() {
            Ok((_, r, under, _)) => (r, under),
            Err(mut s) => {
                handle.block_on(s.close());
                return Err(Error::Internal("a fresh blob stream was already read"));
            }
        },
    };
    let check = digest_state(api, d, i)?;
    let raw = Shared(Arc::new(Mutex::new(Box::new(HashTee::new(
        reader,
        check.clone(),
    )))));
    let compression = Compression::of_layer(&d.media_type).unwrap_or(Compression::None);
    let inner = layer_decoder(compression, raw.clone())?;
    tracing::info!(layer = i, digest = %short(&d.digest), size = d.size, media_type = %d.media_type, "streaming layer");
    Ok(Layer {
        index: i,
        digest: d.digest.clone(),
        entries: Entries::new(inner, Walker::with_max_members(MAX_LAYER_MEMBERS)),
        raw,
        check,
        under,
    })
}

/// `raw` decompressed as the layer's media type says (as it is for a plain tar).
fn layer_decoder(c: Compression, raw: Shared) -> Result<Box<dyn Read + Send>, Error> {
    let format = match c {
        Compression::None => return Ok(Box::new(raw)),
        Compression::Gzip => ferry_convert::detect::Format::Gzip,
        Compression::Zstd => ferry_convert::detect::Format::Zstd,
    };
    match ferry_convert::wrappers::decoder(format, Box::new(raw)) {
        Some(Ok(d)) => Ok(d),
        Some(Err(e)) => Err(Error::Read {
            offset: 0,
            message: format!("a layer decoder could not start: {e}"),
            retry: Retry::Never,
        }),
        None => Err(Error::Internal("no decoder for a layer compression")),
    }
}

impl DiskStream {
    fn open(
        api: Arc<Api>,
        layers: Vec<Descriptor>,
        downloaded: Downloaded,
        total: u64,
        handle: tokio::runtime::Handle,
    ) -> Result<DiskStream, Error> {
        let mut seen = Vec::new();
        for i in 0..layers.len() {
            let mut layer = open_layer(&api, &layers, i, &downloaded, total, &handle)?;
            loop {
                let next = match layer.entries.next_member() {
                    Ok(n) => n,
                    Err(e) => {
                        close_layer(&mut layer, &handle);
                        return Err(tar_err(&api, i, e));
                    }
                };
                let Some(m) = next else {
                    finish_layer(&api, &mut layer, &handle)?;
                    break;
                };
                match tar::container_entry(&m) {
                    ContainerEntry::Disk => {
                        tracing::info!(image = %api.what(), layer = i, disk = %m.name, size = m.size, "disk found; streaming it");
                        return Ok(DiskStream {
                            api,
                            layers,
                            downloaded,
                            total,
                            handle,
                            cur: Some(layer),
                            found: Found {
                                layer: i,
                                member: m,
                            },
                            done: false,
                        });
                    }
                    ContainerEntry::Refused(why) => {
                        close_layer(&mut layer, &handle);
                        return Err(refused(&api, i, &why));
                    }
                    ContainerEntry::Other => {
                        if seen.len() < 16 {
                            seen.push(m.name);
                        }
                    }
                }
            }
        }
        Err(no_disk(&api, layers.len(), &seen))
    }

    fn describe(&self) -> String {
        format!("{}, {}", self.api.what(), self.found.member.name)
    }

    /// After the disk: walk the rest of its layer and every later one, refusing a
    /// second disk or a refused entry, and check every digest.
    fn finish(&mut self) -> Result<(), Error> {
        let first = self.found.layer;
        for i in first..self.layers.len() {
            let mut layer = match self.cur.take() {
                Some(l) if l.index == i => l,
                _ => open_layer(
                    &self.api,
                    &self.layers,
                    i,
                    &self.downloaded,
                    self.total,
                    &self.handle,
                )?,
            };
            loop {
                let next = layer
                    .entries
                    .next_member()
                    .map_err(|e| tar_err(&self.api, i, e));
                let next = match next {
                    Ok(n) => n,
                    Err(e) => {
                        close_layer(&mut layer, &self.handle);
                        return Err(e);
                    }
                };
                let Some(m) = next else { break };
                match tar::container_entry(&m) {
                    ContainerEntry::Disk => {
                        close_layer(&mut layer, &self.handle);
                        return Err(several(
                            &self.api,
                            &[
                                self.found.clone(),
                                Found {
                                    layer: i,
                                    member: m,
                                },
                            ],
                        ));
                    }
                    ContainerEntry::Refused(why) => {
                        close_layer(&mut layer, &self.handle);
                        return Err(refused(&self.api, i, &why));
                    }
                    ContainerEntry::Other => {}
                }
            }
            finish_layer(&self.api, &mut layer, &self.handle)?;
        }
        Ok(())
    }
}

fn refused(api: &Api, i: usize, why: &str) -> Error {
    api.err(RegistryError::Disk(format!(
        "layer {i}: {why}, which Ferry refuses under /disk/"
    )))
}

fn tar_err(api: &Api, i: usize, e: tar::OpenError) -> Error {
    match e {
        tar::OpenError::Tar(t) => Error::Archive {
            what: format!("{}, layer {i}", api.what()),
            error: t,
        },
        tar::OpenError::Io(e) => Error::Read {
            offset: 0,
            message: format!("{}, layer {i}: {e}", api.what()),
            retry: Retry::Never,
        },
    }
}

/// The layer's tar has ended: read its compressed bytes to their end and check them.
fn finish_layer(
    api: &Api,
    layer: &mut Layer,
    handle: &tokio::runtime::Handle,
) -> Result<(), Error> {
    let drained = std::io::copy(&mut layer.raw, &mut std::io::sink());
    close_layer(layer, handle);
    drained.map_err(|e| Error::Read {
        offset: 0,
        message: format!("{}, layer {}: {e}", api.what(), layer.index),
        retry: Retry::Never,
    })?;
    layer.check.check().map_err(|e| match e {
        Error::Checksum { message, .. } if message.contains("calculated ") => {
            api.err(RegistryError::Digest {
                what: format!("layer {}", layer.index),
                want: layer.digest.clone(),
                got: message
                    .rsplit("calculated ")
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            })
        }
        other => other,
    })
}

fn close_layer(layer: &mut Layer, handle: &tokio::runtime::Handle) {
    if let Some(u) = layer.under.take() {
        handle.block_on(u.close());
    }
}

impl Read for DiskStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        let Some(layer) = self.cur.as_mut() else {
            return Ok(0);
        };
        let n = layer.entries.read(buf)?;
        if n > 0 {
            return Ok(n);
        }
        self.finish().map_err(io_err)?;
        self.done = true;
        Ok(0)
    }
}
