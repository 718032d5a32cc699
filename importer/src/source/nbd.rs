//! NBD source: one or more connections to an NBD server, `base:allocation` extents.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use ferry_cbt::{Extent, ExtentKind, ExtentMap};
use ferry_nbd::{Client, ConnectOptions, STATE_DIRTY, STATE_HOLE, STATE_ZERO, Uri};

use super::Source;
use crate::buf::Buf;
use crate::engine::BoxFuture;
use crate::error::Error;

/// Cap on block-status round trips for one extents() call, so a server that makes tiny
/// progress forever cannot spin us.
pub const MAX_BLOCK_STATUS_CALLS: usize = 1 << 20;
/// Meta context for allocation.
const BASE_ALLOCATION: &str = "base:allocation";
/// Prefix of qemu's dirty-bitmap meta contexts.
const DIRTY_BITMAP_PREFIX: &str = "qemu:dirty-bitmap:";

/// `base:allocation` flags → extent kind. HOLE without ZERO reads as undefined: copy it.
fn allocation_kind(flags: u64) -> Option<ExtentKind> {
    let (zero, hole) = (u64::from(STATE_ZERO), u64::from(STATE_HOLE));
    Some(if flags & zero != 0 && flags & hole != 0 {
        ExtentKind::Hole
    } else if flags & zero != 0 {
        ExtentKind::Zero
    } else {
        ExtentKind::Data
    })
}

/// `qemu:dirty-bitmap:` flags → Data for dirty (changed) ranges, nothing otherwise.
fn dirty_kind(flags: u64) -> Option<ExtentKind> {
    (flags & u64::from(STATE_DIRTY) != 0).then_some(ExtentKind::Data)
}

/// How to connect to an NBD source.
#[derive(Debug, Clone)]
pub struct NbdSourceOptions {
    /// Connections to open when the server allows multi-conn (1 otherwise).
    pub connections: usize,
    /// Bound on connect + handshake.
    pub connect_timeout: Duration,
    /// Bound on any one request.
    pub request_timeout: Duration,
    /// Ask for `base:allocation` and use it.
    pub extents: bool,
    /// Also select `qemu:dirty-bitmap:<name>` as the source of changed areas (deltas).
    pub dirty_bitmap: Option<String>,
    /// TLS settings from flags (`--tls-certificates`, …), for an `nbds` URI that does
    /// not set them itself; the URI's parameters win.
    pub tls: ferry_nbd::tls::TlsSettings,
}

/// `uri` with the TLS flags filling what its own parameters leave unset. Flags with a
/// plain `nbd://` URI are a usage error: TLS is chosen by the scheme.
pub fn with_tls_flags(uri: &Uri, flags: &ferry_nbd::tls::TlsSettings) -> Result<Uri, Error> {
    if *flags == ferry_nbd::tls::TlsSettings::default() {
        return Ok(uri.clone());
    }
    if !uri.tls {
        return Err(Error::Nbd(ferry_nbd::Error::Uri {
            uri: uri.to_string(),
            reason: "the --tls-* flags need an nbds:// or nbds+unix:// URI".into(),
        }));
    }
    let mut u = uri.clone();
    let s = &mut u.tls_settings;
    s.certificates = s.certificates.take().or_else(|| flags.certificates.clone());
    s.verify_peer = s.verify_peer.or(flags.verify_peer);
    s.hostname = s.hostname.take().or_else(|| flags.hostname.clone());
    Ok(u)
}

/// Connecting and negotiating waits at most this long, even with a longer request timeout.
pub const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

impl NbdSourceOptions {
    /// Options with one bound for any request, connecting bounded by the smaller of it and
    /// [`MAX_CONNECT_TIMEOUT`], and no dirty bitmap.
    pub fn new(connections: usize, timeout: Duration, extents: bool) -> Self {
        NbdSourceOptions {
            connections,
            connect_timeout: timeout.min(MAX_CONNECT_TIMEOUT),
            request_timeout: timeout,
            extents,
            dirty_bitmap: None,
            tls: Default::default(),
        }
    }
}

impl Default for NbdSourceOptions {
    fn default() -> Self {
        NbdSourceOptions::new(4, Duration::from_secs(120), true)
    }
}

/// An NBD export as a source.
#[derive(Debug)]
pub struct NbdSource {
    uri: String,
    clients: Vec<Client<Buf>>,
    next: AtomicUsize,
    context: Option<u32>,
    dirty_context: Option<u32>,
    extents_broken: AtomicBool,
}

impl NbdSource {
    /// Connect (several connections if the server advertises multi-conn).
    pub async fn connect(uri: &Uri, opts: &NbdSourceOptions) -> Result<NbdSource, Error> {
        let uri = &with_tls_flags(uri, &opts.tls)?;
        let dirty_name = opts
            .dirty_bitmap
            .as_ref()
            .map(|b| format!("{DIRTY_BITMAP_PREFIX}{b}"));
        let mut meta_contexts: Vec<String> = Vec::new();
        if opts.extents {
            meta_contexts.push(BASE_ALLOCATION.into());
        }
        meta_contexts.extend(dirty_name.clone());
        let copts = ConnectOptions {
            meta_contexts,
            connect_timeout: opts.connect_timeout,
            request_timeout: opts.request_timeout,
            extended_headers: true,
        };
        let first: Client<Buf> = Client::connect(uri, &copts).await.map_err(Error::Nbd)?;
        let info = first.info().clone();
        let want = if info.can_multi_conn() {
            opts.connections.max(1)
        } else {
            1
        };
        let mut clients = vec![first];
        for _ in 1..want {
            let c: Client<Buf> = Client::connect(uri, &copts).await.map_err(Error::Nbd)?;
            if c.info().size != info.size {
                return Err(crate::error::SourceProblem::SizeChanged {
                    what: uri.to_string(),
                    first: info.size,
                    then: c.info().size,
                }
                .into());
            }
            clients.push(c);
        }
        let context = info.context_id(BASE_ALLOCATION);
        let dirty_context = match &dirty_name {
            None => None,
            Some(name) => Some(info.context_id(name).ok_or_else(|| {
                Error::NeedsFullCopy {
                    subject: uri.to_string(),
                    reason: format!(
                        "the server does not export the dirty bitmap {name:?} (qemu-nbd needs -B/--bitmap {}), so the changes since the last round are unknown",
                        opts.dirty_bitmap.as_deref().unwrap_or_default()
                    ),
                }
            })?),
        };
        if opts.extents && context.is_none() {
            tracing::warn!(%uri, "server offers no base:allocation; every byte will be read");
        }
        tracing::info!(
            %uri, size = info.size, connections = clients.len(), multi_conn = info.can_multi_conn(),
            structured = info.structured, extended = info.extended,
            max_payload = info.max_payload(), min_block = info.block_size.minimum,
            "connected to NBD source"
        );
        Ok(NbdSource {
            uri: uri.to_string(),
            clients,
            next: AtomicUsize::new(0),
            context,
            extents_broken: AtomicBool::new(false),
            dirty_context,
        })
    }

    fn client(&self) -> &Client<Buf> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len();
        &self.clients[i]
    }

    /// Walk block status of one context over `[offset, offset+len)`; `kind` maps a
    /// descriptor's flags to an extent kind, or None to leave the range out.
    async fn extents_inner(
        &self,
        offset: u64,
        len: u64,
        ctx: u32,
        kind: fn(u64) -> Option<ExtentKind>,
    ) -> Result<ExtentMap, ferry_nbd::Error> {
        let end = offset + len;
        let mut map = ExtentMap::new();
        let mut at = offset;
        let mut calls = 0usize;
        while at < end {
            calls += 1;
            if calls > MAX_BLOCK_STATUS_CALLS {
                return Err(ferry_nbd::Error::Protocol(
                    ferry_nbd::ProtocolError::Invalid(
                        "block status makes no useful progress".into(),
                    ),
                ));
            }
            let descs = self.clients[0].block_status(at, end - at, ctx).await?;
            let before = at;
            for d in descs {
                let n = d.length.min(end - at);
                // Extents are consecutive from `at`, so push never overlaps; a server
                // that describes more areas than a map holds is refused, not truncated.
                if let Some(k) = kind(d.flags) {
                    map.push(Extent::new(at, n, k)).map_err(|e| {
                        ferry_nbd::Error::Protocol(ferry_nbd::ProtocolError::Invalid(format!(
                            "block status: {e}"
                        )))
                    })?;
                }
                at += n;
                if at >= end {
                    break;
                }
            }
            if at == before {
                return Err(ferry_nbd::Error::Protocol(
                    ferry_nbd::ProtocolError::Invalid("block status returned no progress".into()),
                ));
            }
        }
        Ok(map)
    }
}

impl Source for NbdSource {
    fn describe(&self) -> String {
        self.uri.clone()
    }

    fn size(&self) -> u64 {
        self.clients[0].size()
    }

    fn block_size(&self) -> u64 {
        u64::from(self.clients[0].info().block_size.minimum)
    }

    fn max_read(&self) -> u64 {
        self.clients[0].info().max_payload()
    }

    fn extents(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<ExtentMap, Error>> {
        Box::pin(async move {
            let all_data = || ExtentMap::single(offset, len, ExtentKind::Data);
            let Some(ctx) = self.context else {
                return Ok(all_data());
            };
            if self.extents_broken.load(Ordering::Relaxed) {
                return Ok(all_data());
            }
            match self.extents_inner(offset, len, ctx, allocation_kind).await {
                Ok(m) => Ok(m),
                Err(e @ ferry_nbd::Error::Request { .. }) => {
                    // A failing block status is not fatal: reading everything is always correct.
                    tracing::warn!(error = %e, "block status failed; reading all data from here on");
                    self.extents_broken.store(true, Ordering::Relaxed);
                    Ok(all_data())
                }
                Err(e) => Err(Error::Nbd(e)),
            }
        })
    }

    fn changes(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<ExtentMap, Error>> {
        Box::pin(async move {
            let ctx = self.dirty_context.ok_or_else(|| {
                Error::from(crate::error::UsageError::NoDirtyBitmap {
                    uri: self.uri.to_string(),
                })
            })?;
            self.extents_inner(offset, len, ctx, dirty_kind)
                .await
                .map_err(Error::Nbd)
        })
    }

    fn read(&self, offset: u64, buf: Buf) -> BoxFuture<'static, Result<Buf, Error>> {
        let c = self.client().clone();
        Box::pin(async move {
            c.read(offset, buf).await.map_err(|e| Error::Read {
                offset,
                message: e.to_string(),
                retry: crate::error::nbd_retry(&e),
            })
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            for c in &self.clients {
                c.disconnect().await;
            }
        })
    }
}
