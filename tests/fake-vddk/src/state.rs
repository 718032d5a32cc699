//! The library's process-global state between InitEx and Exit.

use std::collections::HashMap;
use std::ffi::{c_char, c_int};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vddk_sys::{VixDiskLibConnection, VixDiskLibGenericLogFunc, VixDiskLibHandle, VixError};

use crate::calllog::{CallLog, violation};
use crate::config::Config;
use crate::disk::{Disk, lock};
use crate::engine::Engine;
use crate::errors::*;

/// Opaque values handed out as connections and handles (ids, never dereferenced).
const CONN_BASE: usize = 0x0c00_0000_0000;
const DISK_BASE: usize = 0x0d00_0000_0000;
/// How often the background thread wakes (it does nothing but exist, like VDDK's).
const BACKGROUND_TICK: Duration = Duration::from_millis(500);

/// An open connection.
#[derive(Debug)]
pub(crate) struct Conn {
    pub id: usize,
}

/// The thread InitEx starts and Exit stops.
#[derive(Debug)]
struct Background {
    stop: Arc<(Mutex<bool>, Condvar)>,
    join: JoinHandle<()>,
}

/// The caller's log callbacks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LogFns {
    pub log: VixDiskLibGenericLogFunc,
    pub warn: VixDiskLibGenericLogFunc,
}

unsafe extern "C" {
    /// src/shim.c: `f(fmt, va_list of the variadic arguments)`.
    fn fake_call_log(f: VixDiskLibGenericLogFunc, fmt: *const c_char, ...);
}

/// The initialised library.
#[derive(Debug)]
pub(crate) struct Lib {
    pub cfg: Config,
    pub log: CallLog,
    pub fns: LogFns,
    pid: u32,
    pub engine: Engine,
    rt: Mutex<Option<tokio::runtime::Runtime>>,
    rt_handle: Option<tokio::runtime::Handle>,
    bg: Mutex<Option<Background>>,
    conns: Mutex<HashMap<usize, Arc<Conn>>>,
    disks: Mutex<HashMap<usize, Arc<Disk>>>,
    next_id: AtomicUsize,
    reads: AtomicU64,
    /// End of the bandwidth timeline shared by all reads.
    timeline: Mutex<Instant>,
}

impl Lib {
    /// Start the library's threads (and runtime, for an NBD backing).
    pub fn start(cfg: Config, log: CallLog, fns: LogFns) -> Result<Lib, String> {
        let rt = match &cfg.backing {
            Some(b) if crate::backing::is_nbd(b) => Some(
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("fake-vddk-nbd")
                    .enable_all()
                    .build()
                    .map_err(|e| format!("tokio runtime: {e}"))?,
            ),
            _ => None,
        };
        let rt_handle = rt.as_ref().map(|r| r.handle().clone());
        let engine = Engine::start(cfg.workers).map_err(|e| format!("I/O threads: {e}"))?;
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let s = stop.clone();
        let join = std::thread::Builder::new()
            .name("fake-vddk-bg".into())
            .spawn(move || {
                let (m, cv) = &*s;
                let mut stopped = lock(m);
                while !*stopped {
                    stopped = cv
                        .wait_timeout(stopped, BACKGROUND_TICK)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            })
            .map_err(|e| format!("background thread: {e}"))?;
        Ok(Lib {
            cfg,
            log,
            fns,
            pid: std::process::id(),
            engine,
            rt: Mutex::new(rt),
            rt_handle,
            bg: Mutex::new(Some(Background { stop, join })),
            conns: Mutex::new(HashMap::new()),
            disks: Mutex::new(HashMap::new()),
            next_id: AtomicUsize::new(1),
            reads: AtomicU64::new(0),
            timeline: Mutex::new(Instant::now()),
        })
    }

    /// Call the caller's `log` or `warn` callback with a printf format and arguments
    /// (up to three: an int pair and a string, as the InitEx message uses).
    pub fn say(
        f: VixDiskLibGenericLogFunc,
        fmt: &std::ffi::CStr,
        a: c_int,
        b: c_int,
        s: &std::ffi::CStr,
    ) {
        if f.is_none() {
            return;
        }
        // SAFETY: f is the caller's log callback (non-null, checked), which takes a
        // printf format and a va_list; the shim builds the va_list from the arguments,
        // which match the format's %d %d %s (callers pass formats of that shape).
        unsafe { fake_call_log(f, fmt.as_ptr(), a, b, s.as_ptr()) };
    }

    pub fn violation(&self, rule: &str, detail: &str) {
        violation(&self.log, rule, detail);
    }

    /// Checks every entry point makes: same process as InitEx.
    pub fn check_process(&self, call: &str) -> Result<(), VixError> {
        if std::process::id() != self.pid {
            self.violation(
                "fork-after-init",
                &format!(
                    "{call} in a child forked after InitEx (VDDK's threads do not survive fork)"
                ),
            );
            return Err(VIX_E_FAIL);
        }
        Ok(())
    }

    /// Whether the background thread is still there.
    pub fn background_alive(&self) -> bool {
        lock(&self.bg)
            .as_ref()
            .is_some_and(|b| !b.join.is_finished())
    }

    pub fn runtime(&self) -> Option<&tokio::runtime::Handle> {
        self.rt_handle.as_ref()
    }

    fn next_id(&self) -> usize {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The 1-based number of the next read (sync or async, over all handles).
    pub fn next_read(&self) -> u64 {
        self.reads.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// When a read of `len` bytes submitted now may complete: after its share of the
    /// bandwidth timeline, plus the latency (which overlaps between requests).
    pub fn deadline(&self, len: u64) -> Instant {
        let now = Instant::now();
        let mut t = now;
        if let Some(bw) = self.cfg.bandwidth {
            let mut end = lock(&self.timeline);
            let start = (*end).max(now);
            *end = start + Duration::from_secs_f64(len as f64 / bw as f64);
            t = *end;
        }
        t + self.cfg.latency
    }

    pub fn add_conn(&self) -> VixDiskLibConnection {
        let id = self.next_id();
        lock(&self.conns).insert(id, Arc::new(Conn { id }));
        std::ptr::without_provenance_mut(CONN_BASE + id * 16)
    }

    pub fn conn(&self, c: VixDiskLibConnection, call: &str) -> Result<Arc<Conn>, VixError> {
        let id = c.addr().wrapping_sub(CONN_BASE) / 16;
        let found = (c.addr() >= CONN_BASE && c.addr().is_multiple_of(16))
            .then(|| lock(&self.conns).get(&id).cloned())
            .flatten();
        found.ok_or_else(|| {
            self.violation(
                "bad-handle",
                &format!("{call} with connection {c:p}, which is not open"),
            );
            VIX_E_INVALID_HANDLE
        })
    }

    pub fn remove_conn(&self, id: usize) {
        lock(&self.conns).remove(&id);
    }

    pub fn open_conns(&self) -> usize {
        lock(&self.conns).len()
    }

    pub fn add_disk(&self, make: impl FnOnce(usize) -> Disk) -> VixDiskLibHandle {
        let id = self.next_id();
        lock(&self.disks).insert(id, Arc::new(make(id)));
        std::ptr::without_provenance_mut(DISK_BASE + id * 16)
    }

    pub fn disk(&self, h: VixDiskLibHandle, call: &str) -> Result<Arc<Disk>, VixError> {
        let id = h.addr().wrapping_sub(DISK_BASE) / 16;
        let found = (h.addr() >= DISK_BASE && h.addr().is_multiple_of(16))
            .then(|| lock(&self.disks).get(&id).cloned())
            .flatten();
        found.ok_or_else(|| {
            self.violation(
                "bad-handle",
                &format!("{call} with handle {h:p}, which is not open"),
            );
            VIX_E_INVALID_HANDLE
        })
    }

    pub fn remove_disk(&self, id: usize) {
        lock(&self.disks).remove(&id);
    }

    /// Handles open on a connection.
    pub fn disks_of(&self, conn: usize) -> usize {
        lock(&self.disks)
            .values()
            .filter(|d| d.conn == conn)
            .count()
    }

    /// Exit: stop the background thread, finish async work, drop handles, stop the
    /// runtime.
    pub fn shutdown(&self) {
        if let Some(bg) = lock(&self.bg).take() {
            *lock(&bg.stop.0) = true;
            bg.stop.1.notify_all();
            let _ = bg.join.join();
        }
        self.engine.shutdown();
        lock(&self.disks).clear();
        lock(&self.conns).clear();
        if let Some(rt) = lock(&self.rt).take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                rt.shutdown_background();
            } else {
                rt.shutdown_timeout(Duration::from_secs(2));
            }
        }
    }
}
