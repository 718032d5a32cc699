//! VDDK source: a vSphere disk read through libvixDiskLib, loaded at run time.
//!
//! ```text
//!  main thread:  init() — load the library, write the NFC AIO config, InitEx once
//!  per disk:     one worker thread owns the connection and the handle and makes every
//!                VDDK call for them, in order:
//!                  [open/close lock] ConnectEx → Open [unlock] → GetInfo
//!                  ReadAsync × buf_count in flight (completions on VDDK threads hand
//!                  the pool buffer back through a oneshot)
//!                  Wait → QueryAllocatedBlocks (never overlapping async reads)
//!                  Wait → [open/close lock] Close → Disconnect [unlock]
//!  at exit:      shutdown() — Exit once, after every session closed
//! ```
//!
//! The library's rules hold by construction: InitEx once; Open/Close never concurrent
//! (one process-wide lock); no overlapping calls on a handle (one thread per handle);
//! async and sync reads never mixed on a handle (async when the library has it, else
//! sync only); Close/Disconnect on every path — errors, drop, and signals (the source is
//! dropped when the copy is cancelled) — so a disk is never left locked.

pub mod config;
pub mod error;
pub mod options;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use ferry_cbt::{Extent, ExtentKind, ExtentMap};
use tokio::sync::oneshot;
use vddk_sys::{ConnectSpec, Library, LogLevel};

pub use self::error::VddkError;
use self::error::{CallContext, classify};
pub use self::options::{Compression, Secret, VddkOptions};
use super::Source;
use crate::buf::Buf;
use crate::engine::BoxFuture;

/// Sector size.
pub const SECTOR: u64 = 512;
/// QueryAllocatedBlocks chunk: VIXDISKLIB_MIN_CHUNK_SIZE sectors (64 KiB).
pub const CHUNK_SECTORS: u64 = vddk_sys::VIXDISKLIB_MIN_CHUNK_SIZE as u64;
/// Bytes per chunk.
pub const CHUNK_BYTES: u64 = CHUNK_SECTORS * SECTOR;
/// Largest range one QueryAllocatedBlocks call may cover (32 GiB at 64 KiB chunks).
pub const MAX_QUERY_BYTES: u64 = vddk_sys::VIXDISKLIB_MAX_CHUNK_NUMBER as u64 * CHUNK_BYTES;
/// Largest single read (ESXi refuses much larger NFC requests).
pub const MAX_VDDK_READ: u64 = 16 * 1024 * 1024;
/// Bound on tearing a disk down (Wait, Close, Disconnect) after a failure or a signal.
/// A read stuck inside the library can hold Wait forever; past this bound Ferry leaves
/// without Exit and the host drops the NFC session when the process ends.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(4);
/// The VDDK API version Ferry is written against (ReadAsync, QueryAllocatedBlocks).
const API_VERSION: (u32, u32) = (6, 7);

/// The process-wide library state.
#[derive(Debug)]
pub struct VddkRuntime {
    lib: Library,
    libdir: PathBuf,
    /// Serializes ConnectEx+Open and Close+Disconnect across all disks.
    open_close: Mutex<()>,
    sessions: AtomicUsize,
    /// The config file handed to InitEx (deleted when the runtime goes).
    _config: tempfile::NamedTempFile,
}

impl VddkRuntime {
    /// The loaded library's path.
    pub fn library_path(&self) -> &Path {
        self.lib.path()
    }
    /// The loaded library's major version.
    pub fn major(&self) -> u32 {
        self.lib.major()
    }
}

static RUNTIME: Mutex<Option<Arc<VddkRuntime>>> = Mutex::new(None);

fn log_sink(level: LogLevel, line: &str) {
    match level {
        LogLevel::Info => tracing::debug!(target: "vddk", "{line}"),
        LogLevel::Warning => tracing::warn!(target: "vddk", "{line}"),
        LogLevel::Panic => tracing::error!(target: "vddk", "VDDK panic: {line}"),
    }
}

/// Load the library from `libdir`, write the InitEx config file (the operator's file,
/// with the NFC AIO buffer keys `nfc` sets) and call InitEx — once per process; later
/// calls return the same runtime.
pub fn init(
    libdir: &Path,
    nfc: config::NfcAio,
    operator_config: Option<&Path>,
) -> Result<Arc<VddkRuntime>, VddkError> {
    let mut slot = RUNTIME.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(rt) = slot.as_ref() {
        if rt.libdir != libdir {
            tracing::warn!(loaded = %rt.libdir.display(), asked = %libdir.display(), "VDDK is already loaded from another libdir; using it");
        }
        return Ok(rt.clone());
    }
    let operator = match operator_config {
        None => Vec::new(),
        Some(p) => {
            let unreadable = |error| VddkError::ConfigRead {
                path: p.to_owned(),
                error,
            };
            let refused = |error| VddkError::Config {
                path: p.to_owned(),
                error,
            };
            let meta = std::fs::metadata(p).map_err(unreadable)?;
            if meta.len() > config::MAX_CONFIG_BYTES as u64 {
                return Err(refused(config::ConfigError::TooLarge(
                    crate::num::usize_of(meta.len()),
                )));
            }
            let text = std::fs::read_to_string(p).map_err(unreadable)?;
            config::parse(&text).map_err(refused)?
        }
    };
    let rendered = config::render(&operator, nfc);
    for w in &rendered.warnings {
        tracing::warn!("{w}");
    }
    let mut file = tempfile::Builder::new()
        .prefix("ferry-vddk-")
        .suffix(".conf")
        .tempfile()
        .map_err(VddkError::ConfigWrite)?;
    std::io::Write::write_all(&mut file, rendered.text.as_bytes())
        .map_err(VddkError::ConfigWrite)?;
    let lib = Library::load(libdir)?;
    lib.init_ex(
        API_VERSION.0,
        API_VERSION.1,
        libdir,
        Some(file.path()),
        log_sink,
    )
    .map_err(|e| {
        let code = vddk_sys::error_code(e);
        classify("InitEx", code, lib.error_text(e), &CallContext::default())
    })?;
    tracing::info!(
        library = %lib.path().display(), major = lib.major(), transports = %lib.list_transport_modes(),
        async_reads = lib.has_async(), allocated_blocks = lib.has_query_allocated_blocks(),
        nfc_aio_buf_size_in_64k = %rendered.nfc.buf_size_in_64k.map_or("VDDK's default".into(), |n| n.to_string()),
        nfc_aio_buf_count = %rendered.nfc.buf_count.map_or("VDDK's default".into(), |n| n.to_string()),
        "VDDK initialised"
    );
    let rt = Arc::new(VddkRuntime {
        lib,
        libdir: libdir.to_owned(),
        open_close: Mutex::new(()),
        sessions: AtomicUsize::new(0),
        _config: file,
    });
    *slot = Some(rt.clone());
    Ok(rt)
}

/// Call VixDiskLib_Exit if the library was initialised and every disk is closed. Call
/// once at the end of the process, on every path.
pub fn shutdown() {
    let taken = RUNTIME.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(rt) = taken {
        let open = rt.sessions.load(Ordering::SeqCst);
        if open == 0 {
            rt.lib.exit();
            tracing::debug!("VDDK exited");
        } else {
            tracing::error!(open, "VDDK sessions still open at exit; not calling Exit");
        }
    }
}

enum Cmd {
    Read {
        sector: u64,
        buf: Buf,
        reply: oneshot::Sender<Result<Buf, u64>>,
    },
    Query {
        start: u64,
        sectors: u64,
        reply: oneshot::Sender<Result<Vec<(u64, u64)>, u64>>,
    },
    Close,
}

/// What the worker found after opening.
#[derive(Debug)]
struct Opened {
    size: u64,
    transport: String,
    async_reads: bool,
    query: bool,
}

/// A disk opened through VDDK.
#[derive(Debug)]
pub struct VddkSource {
    rt: Arc<VddkRuntime>,
    tx: Mutex<Option<mpsc::Sender<Cmd>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Signalled (or disconnected) when the worker has closed and ended.
    done: Mutex<mpsc::Receiver<()>>,
    close_deadline: Mutex<Option<Instant>>,
    opened: Opened,
    describe: String,
    ctx: CallContext,
    read_timeout: Duration,
    query_broken: AtomicBool,
}

impl VddkSource {
    /// Initialise VDDK if needed, connect and open the disk read-only.
    pub async fn open(opts: &VddkOptions) -> Result<VddkSource, VddkError> {
        let rt = init(&opts.libdir, opts.nfc, opts.config_file.as_deref())?;
        let ctx = CallContext {
            user: opts.user.clone(),
            server: opts.server.clone(),
            thumbprint: Some(opts.thumbprint.clone()),
            object: opts.disk.clone(),
        };
        let (ready_tx, ready_rx) = oneshot::channel();
        let (tx, rx) = mpsc::channel();
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let worker_rt = rt.clone();
        let worker_opts = opts.clone();
        let worker_ctx = ctx.clone();
        let thread = std::thread::Builder::new()
            .name("ferry-vddk".into())
            .spawn(move || {
                worker(worker_rt, worker_opts, worker_ctx, ready_tx, rx);
                let _ = done_tx.send(());
            })
            .map_err(VddkError::WorkerThread)?;
        let opened = match ready_rx.await {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => return Err(VddkError::WorkerGone),
        };
        let describe = format!(
            "vddk://{}@{}/ {} (vm {})",
            opts.user, opts.server, opts.disk, opts.vm_moref
        );
        tracing::info!(
            disk = %opts.disk, server = %opts.server, size = opened.size, transport = %opened.transport,
            snapshot = opts.snapshot.as_deref().unwrap_or("-"), async_reads = opened.async_reads,
            "VDDK disk opened"
        );
        Ok(VddkSource {
            rt,
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            done: Mutex::new(done_rx),
            close_deadline: Mutex::new(None),
            opened,
            describe,
            ctx,
            read_timeout: opts.read_timeout,
            query_broken: AtomicBool::new(false),
        })
    }

    /// The loaded library's file (its name carries the version).
    pub fn library_path(&self) -> &Path {
        self.rt.library_path()
    }

    /// The transport VDDK chose (`nbdssl`, `file`, …).
    pub fn transport(&self) -> &str {
        &self.opened.transport
    }

    fn send(&self, cmd: Cmd) -> Result<(), VddkError> {
        let guard = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        guard
            .as_ref()
            .ok_or(VddkError::WorkerGone)?
            .send(cmd)
            .map_err(|_| VddkError::WorkerGone)
    }

    fn error(&self, call: &'static str, e: u64) -> VddkError {
        classify(
            call,
            vddk_sys::error_code(e),
            self.rt.lib.error_text(e),
            &self.ctx,
        )
    }

    async fn query(&self, start: u64, end: u64) -> Result<Vec<(u64, u64)>, VddkError> {
        let mut out = Vec::new();
        let mut at = start;
        while at < end {
            let n = (end - at).min(MAX_QUERY_BYTES);
            let (reply, rx) = oneshot::channel();
            self.send(Cmd::Query {
                start: at / SECTOR,
                sectors: n / SECTOR,
                reply,
            })?;
            let blocks = rx
                .await
                .map_err(|_| VddkError::WorkerGone)?
                .map_err(|e| self.error("QueryAllocatedBlocks", e))?;
            out.extend(
                blocks
                    .into_iter()
                    .map(|(o, l)| (o.saturating_mul(SECTOR), l.saturating_mul(SECTOR))),
            );
            at += n;
        }
        Ok(out)
    }

    /// Ask the worker to close (idempotent) and return the teardown deadline.
    fn request_close(&self) -> Instant {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(tx) = tx {
            let _ = tx.send(Cmd::Close);
        }
        *self
            .close_deadline
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(|| Instant::now() + CLOSE_TIMEOUT)
    }

    /// Whether the worker has finished (closed, disconnected, thread ended); joins it.
    fn try_reap(&self, wait: Duration) -> bool {
        let done = {
            let rx = self.done.lock().unwrap_or_else(|p| p.into_inner());
            match rx.recv_timeout(wait) {
                Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => true,
                Err(mpsc::RecvTimeoutError::Timeout) => false,
            }
        };
        if done && let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
        done
    }

    /// Close the disk and the connection, waiting at most until the teardown deadline.
    fn finish(&self) {
        let deadline = self.request_close();
        if self
            .thread
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
        {
            return;
        }
        if !self.try_reap(deadline.saturating_duration_since(Instant::now())) {
            tracing::error!(
                after = ?CLOSE_TIMEOUT,
                "VDDK did not finish closing the disk (a read is stuck in the library); leaving it — the host drops the NFC session when this process exits"
            );
        }
    }
}

impl Drop for VddkSource {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Turn allocated byte ranges into an extent map over `[offset, end)`: allocated runs
/// are Data, gaps are Hole, and anything past `queried_end` (the tail VDDK cannot
/// query) is Data. More areas than a map holds is an error, never a truncated map.
pub fn blocks_to_map(
    offset: u64,
    end: u64,
    queried_end: u64,
    blocks: &[(u64, u64)],
) -> Result<ExtentMap, ferry_cbt::ExtentError> {
    let mut map = ExtentMap::new();
    let mut at = offset;
    let mut sorted: Vec<(u64, u64)> = blocks.to_vec();
    sorted.sort_unstable();
    for (o, l) in sorted {
        let s = o.max(at);
        let e = o.saturating_add(l).min(end).min(queried_end.max(offset));
        if e <= s {
            continue;
        }
        if s > at {
            map.push(Extent::new(at, s - at, ExtentKind::Hole))?;
        }
        map.push(Extent::new(s, e - s, ExtentKind::Data))?;
        at = e;
    }
    let holes_end = queried_end.clamp(offset, end);
    if holes_end > at {
        map.push(Extent::new(at, holes_end - at, ExtentKind::Hole))?;
        at = holes_end;
    }
    if end > at {
        map.push(Extent::new(at, end - at, ExtentKind::Data))?;
    }
    Ok(map)
}

impl Source for VddkSource {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn size(&self) -> u64 {
        self.opened.size
    }

    fn block_size(&self) -> u64 {
        SECTOR
    }

    fn max_read(&self) -> u64 {
        MAX_VDDK_READ
    }

    fn extent_window(&self) -> u64 {
        MAX_QUERY_BYTES
    }

    fn extents(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<ExtentMap, crate::Error>> {
        Box::pin(async move {
            let end = offset + len;
            let data = || ExtentMap::single(offset, len, ExtentKind::Data);
            if !self.opened.query || self.query_broken.load(Ordering::Relaxed) {
                return Ok(data());
            }
            // Only whole 64 KiB chunks can be queried; the ragged tail is allocated.
            let queried_end = (self.opened.size / CHUNK_BYTES * CHUNK_BYTES)
                .min(end.div_ceil(CHUNK_BYTES) * CHUNK_BYTES);
            let start = offset / CHUNK_BYTES * CHUNK_BYTES;
            if queried_end <= start {
                return Ok(data());
            }
            match self.query(start, queried_end).await {
                Ok(blocks) => Ok(blocks_to_map(offset, end, queried_end.min(end), &blocks)?),
                Err(e @ (VddkError::ConnectionLost { .. } | VddkError::WorkerGone)) => {
                    Err(crate::Error::Vddk(e))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "QueryAllocatedBlocks failed; reading every sector from here on");
                    self.query_broken.store(true, Ordering::Relaxed);
                    Ok(data())
                }
            }
        })
    }

    fn read(&self, offset: u64, buf: Buf) -> BoxFuture<'static, Result<Buf, crate::Error>> {
        let (reply, rx) = oneshot::channel();
        let sector = offset / SECTOR;
        let sent = self.send(Cmd::Read { sector, buf, reply });
        let after = self.read_timeout;
        let rt = self.rt.clone();
        let ctx = self.ctx.clone();
        Box::pin(async move {
            sent.map_err(crate::Error::Vddk)?;
            match tokio::time::timeout(after, rx).await {
                Err(_) => Err(crate::Error::Vddk(VddkError::Timeout { sector, after })),
                Ok(Err(_)) => Err(crate::Error::Vddk(VddkError::WorkerGone)),
                Ok(Ok(Ok(buf))) => Ok(buf),
                Ok(Ok(Err(e))) => {
                    let call = "ReadAsync";
                    Err(crate::Error::Vddk(classify(
                        call,
                        vddk_sys::error_code(e),
                        rt.lib.error_text(e),
                        &ctx,
                    )))
                }
            }
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let deadline = self.request_close();
            // Poll without blocking the runtime; Drop finishes (bounded) if this is cut short.
            while Instant::now() < deadline {
                if self
                    .thread
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .is_none()
                    || self.try_reap(Duration::ZERO)
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            self.finish();
        })
    }
}

fn open_flags(opts: &VddkOptions) -> u32 {
    let mut f = vddk_sys::VIXDISKLIB_FLAG_OPEN_READ_ONLY;
    if opts.unbuffered {
        f |= vddk_sys::VIXDISKLIB_FLAG_OPEN_UNBUFFERED;
    }
    f | match opts.compression {
        Compression::None => 0,
        Compression::Zlib => vddk_sys::VIXDISKLIB_FLAG_OPEN_COMPRESSION_ZLIB,
        Compression::Fastlz => vddk_sys::VIXDISKLIB_FLAG_OPEN_COMPRESSION_FASTLZ,
        Compression::Skipz => vddk_sys::VIXDISKLIB_FLAG_OPEN_COMPRESSION_SKIPZ,
    }
}

/// The worker thread: every VDDK call for one connection and handle.
fn worker(
    rt: Arc<VddkRuntime>,
    opts: VddkOptions,
    ctx: CallContext,
    ready: oneshot::Sender<Result<Opened, VddkError>>,
    rx: mpsc::Receiver<Cmd>,
) {
    let lib = &rt.lib;
    let fail = |call: &'static str, e: u64| {
        classify(call, vddk_sys::error_code(e), lib.error_text(e), &ctx)
    };
    let spec = ConnectSpec {
        vmx_spec: Some(options::vmx_spec(&opts.vm_moref)),
        server: Some(opts.server.clone()),
        thumbprint: Some(opts.thumbprint.clone()),
        user: Some(opts.user.clone()),
        password: Some(opts.password.expose().to_string()),
        port: opts.port,
    };
    let lock = rt.open_close.lock().unwrap_or_else(|p| p.into_inner());
    let conn = match lib.connect(
        &spec,
        true,
        opts.snapshot.as_deref(),
        Some(&opts.transports),
    ) {
        Ok(c) => c,
        Err(e) => {
            drop(lock);
            let _ = ready.send(Err(fail("ConnectEx", e)));
            return;
        }
    };
    drop(spec);
    let handle = match lib.open(&conn, &opts.disk, open_flags(&opts)) {
        Ok(h) => h,
        Err(e) => {
            let err = fail("Open", e);
            if let Err(d) = lib.disconnect(conn) {
                tracing::warn!(error = %fail("Disconnect", d), "VDDK disconnect after a failed open");
            }
            drop(lock);
            let _ = ready.send(Err(err));
            return;
        }
    };
    drop(lock);
    rt.sessions.fetch_add(1, Ordering::SeqCst);
    let close = |handle, conn| {
        let _lock = rt.open_close.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = lib.close(handle) {
            tracing::error!(error = %fail("Close", e), "VDDK close failed");
        }
        if let Err(e) = lib.disconnect(conn) {
            tracing::error!(error = %fail("Disconnect", e), "VDDK disconnect failed");
        }
        rt.sessions.fetch_sub(1, Ordering::SeqCst);
        tracing::debug!("VDDK disk closed and disconnected");
    };
    let info = match lib.info(&handle) {
        Ok(i) => i,
        Err(e) => {
            let err = fail("GetInfo", e);
            close(handle, conn);
            let _ = ready.send(Err(err));
            return;
        }
    };
    let async_reads = lib.has_async();
    let opened = Opened {
        size: info.capacity_sectors.saturating_mul(SECTOR),
        transport: lib.transport_mode(&handle),
        async_reads,
        query: lib.has_query_allocated_blocks(),
    };
    if ready.send(Ok(opened)).is_err() {
        close(handle, conn);
        return;
    }
    let pending = Arc::new(AtomicUsize::new(0));
    // Wait for outstanding async reads: before a query (sync and async calls never
    // overlap on a handle) only when some are pending, and always before Close.
    let drain = |handle: &vddk_sys::Handle, always: bool| {
        let busy = pending.load(Ordering::SeqCst) > 0;
        if async_reads
            && (busy || always)
            && let Err(e) = lib.wait(handle)
        {
            tracing::warn!(error = %fail("Wait", e), "VDDK wait failed");
        }
    };
    loop {
        match rx.recv() {
            Ok(Cmd::Read {
                sector,
                mut buf,
                reply,
            }) if !async_reads => {
                let r = lib.read(&handle, sector, buf.as_mut_slice());
                let _ = reply.send(r.map(|()| buf));
            }
            Ok(Cmd::Read { sector, buf, reply }) => {
                pending.fetch_add(1, Ordering::SeqCst);
                let p = pending.clone();
                let done = Box::new(move |buf: Buf, r: Result<(), u64>| {
                    p.fetch_sub(1, Ordering::SeqCst);
                    let _ = reply.send(r.map(|()| buf));
                });
                // A refused read has already been completed with its error (the
                // reply reached the reader); only log it here.
                if let Err(e) = lib.read_async(&handle, sector, buf, done) {
                    tracing::debug!(error = %fail("ReadAsync", e), sector, "VDDK refused a read");
                }
            }
            Ok(Cmd::Query {
                start,
                sectors,
                reply,
            }) => {
                drain(&handle, false);
                let _ =
                    reply.send(lib.query_allocated_blocks(&handle, start, sectors, CHUNK_SECTORS));
            }
            Ok(Cmd::Close) => {
                drain(&handle, true);
                close(handle, conn);
                return;
            }
            Err(_) => {
                drain(&handle, true);
                close(handle, conn);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_become_data_gaps_holes_and_the_unqueryable_tail_data() {
        let m = blocks_to_map(0, 300_000, 262_144, &[(65536, 65536)]).unwrap();
        let v: Vec<(u64, u64, ExtentKind)> =
            m.iter().map(|e| (e.offset, e.length, e.kind)).collect();
        assert_eq!(
            v,
            vec![
                (0, 65536, ExtentKind::Hole),
                (65536, 65536, ExtentKind::Data),
                (131072, 131072, ExtentKind::Hole),
                (262144, 300_000 - 262_144, ExtentKind::Data),
            ]
        );
    }

    #[test]
    fn blocks_outside_the_window_are_clipped() {
        let m = blocks_to_map(65536, 131072, 131072, &[(0, 196608)]).unwrap();
        assert_eq!(m.as_slice(), &[Extent::new(65536, 65536, ExtentKind::Data)]);
    }
}
