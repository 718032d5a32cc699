#![doc = include_str!("../README.md")]
#![allow(unsafe_code, non_snake_case)]

mod backing;
mod calllog;
mod config;
mod disk;
mod engine;
mod errors;
mod extents;
mod state;

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vddk_sys::{
    Bool, VIXDISKLIB_ADAPTER_SCSI_LSILOGIC, VIXDISKLIB_CRED_SESSIONID, VIXDISKLIB_CRED_UID,
    VixDiskLibBlock, VixDiskLibBlockList, VixDiskLibCompletionCB, VixDiskLibConnectParams,
    VixDiskLibConnection, VixDiskLibGenericLogFunc, VixDiskLibGeometry, VixDiskLibHandle,
    VixDiskLibInfo, VixDiskLibSectorType, VixError,
};

use crate::backing::Backing;
use crate::calllog::{CallLog, violation};
use crate::config::Config;
use crate::disk::{Callback, Disk, Mode, RawBuf, lock};
use crate::engine::Job;
use crate::errors::*;
use crate::extents::{SECTOR, allocated_chunks, check_query};
use crate::state::{Lib, LogFns};

/// The library between InitEx and Exit.
static LIB: Mutex<Option<Arc<Lib>>> = Mutex::new(None);
/// The Open or Close running now, if any (they must not run concurrently).
static OPEN_CLOSE: Mutex<Option<&'static str>> = Mutex::new(None);
/// How long Open and Close hold the open/close mark, so that two threads calling them
/// at about the same time reliably collide.
const OPEN_CLOSE_WINDOW: Duration = Duration::from_millis(20);
/// Bytes AllocateConnectParams hands out: more than the 128 of the struct, to prove
/// callers take the library's allocation rather than assume its size.
const CONNECT_PARAMS_ALLOC: usize = 256;
/// What ListTransportModes and GetTransportMode say.
const TRANSPORT_MODES: &CStr = c"file:san:hotadd:nbdssl:nbd";
const TRANSPORT_MODE: &CStr = c"nbdssl";

/// Library allocations the caller has not freed yet (checked at Exit).
static LIVE_PARAMS: AtomicI64 = AtomicI64::new(0);
static LIVE_INFOS: AtomicI64 = AtomicI64::new(0);
static LIVE_BLOCK_LISTS: AtomicI64 = AtomicI64::new(0);
static LIVE_ERROR_TEXTS: AtomicI64 = AtomicI64::new(0);

/// Run an entry point's body; a panic becomes VIX_E_FAIL instead of crossing the ABI.
fn guard(call: &str, f: impl FnOnce() -> Result<VixError, VixError>) -> VixError {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) | Ok(Err(v)) => v,
        Err(_) => {
            eprintln!("fake-vddk: {call} panicked (a bug in the fake)");
            VIX_E_FAIL
        }
    }
}

/// The initialised library, or a before-init violation.
fn entry(call: &str) -> Result<Arc<Lib>, VixError> {
    let lib = lock(&LIB).clone();
    match lib {
        Some(l) => {
            l.check_process(call)?;
            Ok(l)
        }
        None => {
            violation(
                &CallLog::from_env(),
                "before-init",
                &format!("{call} called before InitEx (or after Exit)"),
            );
            Err(VIX_E_FAIL)
        }
    }
}

/// Clears the open/close mark.
struct OpenClose;

impl Drop for OpenClose {
    fn drop(&mut self) {
        *lock(&OPEN_CLOSE) = None;
    }
}

/// Mark an Open or Close as running; another one already running is a violation.
fn open_close(lib: &Lib, call: &'static str) -> Result<OpenClose, VixError> {
    let mut g = lock(&OPEN_CLOSE);
    if let Some(other) = *g {
        drop(g);
        lib.violation(
            "concurrent-open-close",
            &format!("{call} while {other} is running in another thread (Open and Close must not run concurrently)"),
        );
        return Err(VIX_E_FAIL);
    }
    *g = Some(call);
    drop(g);
    std::thread::sleep(OPEN_CLOSE_WINDOW);
    Ok(OpenClose)
}

/// A caller's C string (lossy UTF-8).
///
/// # Safety
/// `p` is null or a valid NUL-terminated string.
unsafe fn cstr(p: *const c_char) -> Option<String> {
    // SAFETY: the caller's contract.
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

fn show(s: &Option<String>) -> &str {
    s.as_deref().unwrap_or("<null>")
}

fn bad_args(lib: &Lib, call: &str, what: &str) -> VixError {
    lib.violation("bad-args", &format!("{call}: {what}"));
    VIX_E_INVALID_ARG
}

fn sleep_until(at: Instant) {
    let now = Instant::now();
    if at > now {
        std::thread::sleep(at - now);
    }
}

/// Whether read number `n` completes before ReadAsync returns (a fixed, well-spread
/// choice of `percent` out of every hundred reads).
fn completes_synchronously(n: u64, percent: u64) -> bool {
    (n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) % 100 < percent
}

/// A stable VMware-style UUID for a disk path.
fn uuid_for(path: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    path.hash(&mut h);
    let a = h.finish();
    a.hash(&mut h);
    let b = h.finish();
    format!(
        "6000c29{:01x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 60,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    )
}

// ---------------------------------------------------------------- library lifetime

/// Initialise the library: read the `FAKE_VDDK_*` environment and the config file,
/// start the background and I/O threads, greet through the log callbacks.
///
/// # Safety
/// `libDir` and `configFile` are null or NUL-terminated strings; the callbacks are null
/// or functions taking a printf format and a `va_list`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VixDiskLib_InitEx(
    major: u32,
    minor: u32,
    log: VixDiskLibGenericLogFunc,
    warn: VixDiskLibGenericLogFunc,
    _panic: VixDiskLibGenericLogFunc,
    libDir: *const c_char,
    configFile: *const c_char,
) -> VixError {
    guard("InitEx", || {
        // SAFETY: the caller's contract: null or NUL-terminated.
        let (libdir, config) = unsafe { (cstr(libDir), cstr(configFile)) };
        let line = format!(
            "InitEx {major}.{minor} libDir={} configFile={}",
            show(&libdir),
            show(&config)
        );
        let mut g = lock(&LIB);
        if let Some(l) = g.as_ref() {
            l.log.line(&line);
            l.violation(
                "init-twice",
                "InitEx called again before Exit (call it once per process)",
            );
            return Err(VIX_E_FAIL);
        }
        let cfg = Config::from_env().map_err(|e| {
            eprintln!("fake-vddk: InitEx: {e}");
            VIX_E_INVALID_ARG
        })?;
        let clog = CallLog::open(cfg.log.as_deref()).map_err(|e| {
            eprintln!("fake-vddk: InitEx: cannot open FAKE_VDDK_LOG: {e}");
            VIX_E_FILE_ERROR
        })?;
        clog.line(&line);
        if let Some(cf) = &config {
            match std::fs::read_to_string(cf) {
                Ok(text) => {
                    for l in text.lines().map(str::trim) {
                        if l.is_empty() || l.starts_with('#') {
                            continue;
                        }
                        match l.split_once('=') {
                            Some((k, v)) => {
                                clog.line(&format!("Config {} = {}", k.trim(), v.trim()))
                            }
                            None => clog.line(&format!("Config {l}")),
                        }
                    }
                }
                Err(e) => clog.line(&format!("Config <unreadable: {e}>")),
            }
        }
        let lib = Lib::start(cfg, clog, LogFns { log, warn }).map_err(|e| {
            eprintln!("fake-vddk: InitEx: {e}");
            VIX_E_FAIL
        })?;
        let fns = lib.fns;
        *g = Some(Arc::new(lib));
        drop(g);
        let dir = CString::new(show(&libdir)).unwrap_or_default();
        let (ma, mi) = (major as c_int, minor as c_int);
        Lib::say(
            fns.log,
            c"fake VDDK %d.%d initialised, libdir %s\n",
            ma,
            mi,
            &dir,
        );
        Lib::say(
            fns.warn,
            c"fake VDDK %d.%d: %s\n",
            ma,
            mi,
            c"this is a test double, not VMware's libvixDiskLib",
        );
        Ok(VIX_OK)
    })
}

/// Shut the library down: stop its threads, complete any async read still queued.
#[unsafe(no_mangle)]
pub extern "C" fn VixDiskLib_Exit() {
    guard("Exit", || {
        let Some(lib) = lock(&LIB).take() else {
            violation(
                &CallLog::from_env(),
                "before-init",
                "Exit called before InitEx (or twice)",
            );
            return Err(VIX_E_FAIL);
        };
        lib.log.line("Exit");
        let n = lib.open_conns();
        if n > 0 {
            lib.violation(
                "exit-open-connections",
                &format!("Exit with {n} connection(s) still open (Disconnect them first)"),
            );
        }
        let leaks = [
            ("connectParams", LIVE_PARAMS.load(Ordering::Relaxed)),
            ("info", LIVE_INFOS.load(Ordering::Relaxed)),
            ("blockLists", LIVE_BLOCK_LISTS.load(Ordering::Relaxed)),
            ("errorTexts", LIVE_ERROR_TEXTS.load(Ordering::Relaxed)),
        ];
        if leaks.iter().any(|(_, n)| *n != 0) {
            let what: Vec<String> = leaks.iter().map(|(k, n)| format!("{k}={n}")).collect();
            lib.violation(
                "leak",
                &format!("library allocations not freed at Exit: {}", what.join(" ")),
            );
        }
        lib.shutdown();
        Ok(VIX_OK)
    });
}

/// The transports this library could use.
#[unsafe(no_mangle)]
pub extern "C" fn VixDiskLib_ListTransportModes() -> *const c_char {
    match entry("ListTransportModes") {
        Ok(lib) => {
            lib.log.line("ListTransportModes");
            TRANSPORT_MODES.as_ptr()
        }
        Err(_) => std::ptr::null(),
    }
}

/// The text for an error code (free it with FreeErrorText). Not logged: a pure helper
/// that callers also use from completion callbacks, whose order is not the session's.
///
/// # Safety
/// `locale` is ignored (may be anything).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VixDiskLib_GetErrorText(
    err: VixError,
    _locale: *const c_char,
) -> *mut c_char {
    LIVE_ERROR_TEXTS.fetch_add(1, Ordering::Relaxed);
    CString::new(errors::text(err))
        .unwrap_or_default()
        .into_raw()
}

/// Free a GetErrorText result.
///
/// # Safety
/// `errMsg` is null or a pointer GetErrorText returned, not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VixDiskLib_FreeErrorText(errMsg: *mut c_char) {
    if errMsg.is_null() {
        return;
    }
    LIVE_ERROR_TEXTS.fetch_sub(1, Ordering::Relaxed);
    // SAFETY: the caller's contract: made by CString::into_raw in GetErrorText.
    drop(unsafe { CString::from_raw(errMsg) });
}

// ---------------------------------------------------------------- connections

/// A zeroed VixDiskLibConnectParams (bigger than the struct; free with
/// FreeConnectParams).
#[unsafe(no_mangle)]
pub extern "C" fn VixDiskLib_AllocateConnectParams() -> *mut VixDiskLibConnectParams {
    let Ok(lib) = entry("AllocateConnectParams") else {
        return std::ptr::null_mut();
    };
    lib.log.line("AllocateConnectParams");
    // SAFETY: calloc of a non-zero size; the result is checked for null by callers
    // (all-zero is a valid ConnectParams).
    let p = unsafe { libc::calloc(1, CONNECT_PARAMS_ALLOC) };
    if !p.is_null() {
        LIVE_PARAMS.fetch_add(1, Ordering::Relaxed);
    }
    p.cast()
}

/// Free an AllocateConnectParams result.
///
/// # Safety
/// `params` is null or from AllocateConnectParams, not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VixDiskLib_FreeConnectParams(params: *mut VixDiskLibConnectParams) {
    if let Ok(lib) = entry("FreeConnectParams") {
        lib.log.line("FreeConnectParams");
    }
    if params.is_null() {
        return;
    }
    LIVE_PARAMS.fetch_sub(1, Ordering::Relaxed);
    // SAFETY: the caller's contract: calloc'ed by AllocateConnectParams.
    unsafe { libc::free(params.cast()) };
}

/// Connect: check the identity against the `FAKE_VDDK_*` expectations.
///
/// # Safety
/// `params` points to a whole VixDiskLibConnectParams whose strings are null or
/// NUL-terminated; `snapshotRef`/`transportModes` are null or NUL-terminated;
/// `connection` is null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VixDiskLib_ConnectEx(
    params: *const VixDiskLibConnectParams,
    readOnly: Bool,
    snapshotRef: *const c_char,
    transportModes: *const c_char,
    connection: *mut VixDiskLibConnection,
) -> VixError {
    guard("ConnectEx", || {
        let lib = entry("ConnectEx")?;
        if params.is_null() || connection.is_null() {
            lib.log
                .line("ConnectEx <null params or connection pointer>");
            return Err(bad_args(
                &lib,
                "ConnectEx",
                "null params or connection pointer",
            ));
        }
        // SAFETY: the caller's contract: a whole ConnectParams (we read only the
        // documented prefix) whose strings are null or NUL-terminated; the union is
        // read as the member credType selects.
        let (vmx, server, thumb, cred, user, password, port) = unsafe {
            let p = &*params;
            let (user, password) = match p.credType {
                VIXDISKLIB_CRED_UID => (cstr(p.creds.uid.userName), cstr(p.creds.uid.password)),
                VIXDISKLIB_CRED_SESSIONID => (cstr(p.creds.sessionId.userName), None),
                _ => (None, None),
            };
            (
                cstr(p.vmxSpec),
                cstr(p.serverName),
                cstr(p.thumbPrint),
                p.credType,
                user,
                password,
                p.port,
            )
        };
        // SAFETY: the caller's contract: null or NUL-terminated.
        let (snapshot, transports) = unsafe { (cstr(snapshotRef), cstr(transportModes)) };
        lib.log.line(&format!(
            "ConnectEx server={} user={} password={} thumbprint={} vmxSpec={} readOnly={} snapshot={} transports={} credType={cred} port={port}",
            show(&server),
            show(&user),
            if password.is_some() { "<set>" } else { "<null>" },
            show(&thumb),
            show(&vmx),
            readOnly,
            show(&snapshot),
            show(&transports),
        ));
        let c = &lib.cfg;
        let differs = |want: &Option<String>, got: &Option<String>| {
            want.as_ref().is_some_and(|w| got.as_ref() != Some(w))
        };
        if differs(&c.server, &server) {
            eprintln!(
                "fake-vddk: ConnectEx: cannot connect to {} (FAKE_VDDK_SERVER is {})",
                show(&server),
                show(&c.server)
            );
            return Err(VIX_E_CANNOT_CONNECT_TO_HOST);
        }
        if let Some(want) = &c.thumbprint
            && !thumb.as_ref().is_some_and(|t| t.eq_ignore_ascii_case(want))
        {
            eprintln!(
                "fake-vddk: ConnectEx: Failed to verify SSL certificate: actual thumbprint={want} expected={}",
                show(&thumb)
            );
            return Err(VIX_E_FAIL);
        }
        if differs(&c.user, &user) || differs(&c.password, &password) {
            eprintln!("fake-vddk: ConnectEx: wrong user name or password");
            return Err(VIX_E_AUTHENTICATION_FAIL);
        }
        if differs(&c.vm, &vmx) {
            eprintln!("fake-vddk: ConnectEx: VM {} not found", show(&vmx));
            return Err(VIX_E_VM_NOT_FOUND);
        }
        if differs(&c.snapshot, &snapshot) {
            eprintln!(
                "fake-vddk: ConnectEx: snapshot {} not found",
                show(&snapshot)
            );
            return Err(VIX_E_SNAPSHOT_NOTFOUND);
        }
        let conn = lib.add_conn();
        // SAFETY: checked non-null; the caller's contract makes it writable.
        unsafe { connection.write(conn) };
        Ok(VIX_OK)
    })
}

/// Disconnect; every handle opened through the connection must be closed first.
#[unsafe(no_mangle)]
pub extern "C" fn VixDiskLib_Disconnect(connection: VixDiskLibConnection) -> VixError {
    guard("Disconnect", || {
        let lib = entry("Disconnect")?;
        lib.log.line("Disconnect");
        let conn = lib.conn(connection, "Disconnect")?;
        let n = lib.disks_of(conn.id);
        if n > 0 {
            lib.violation(
                "disconnect-open-handles",
                &format!("Disconnect with {n} handle(s) still open on it (Close them first)"),
            );
            return Err(VIX_E_FAIL);
        }
        lib.remove_conn(conn.id);
        Ok(VIX_OK)
    })
}

/// Nothing to clean up: reports zero.
///
/// # Safety
/// `numCleanedUp`/`numRemaining` are null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VixDiskLib_Cleanup(
    _params: *const VixDiskLibConnectParams,
    numCleanedUp: *mut u32,
    numRemaining: *mut u32,
) -> VixError {
    guard("Cleanup", || {
        let lib = entry("Cleanup")?;
        lib.log.line("Cleanup");
        for p in [numCleanedUp, numRemaining] {
            if !p.is_null() {
                // SAFETY: non-null and writable by the caller's contract.
                unsafe { p.write(0) };
            }
        }
        Ok(VIX_OK)
    })
}

/// Accepted and logged.
///
/// # Safety
/// `identity` is null or NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VixDiskLib_PrepareForAccess(
    _params: *const VixDiskLibConnectParams,
    identity: *const c_char,
) -> VixError {
    guard("PrepareForAccess", || {
        let lib = entry("PrepareForAccess")?;
        // SAFETY: the caller's contract.
        let id = unsafe { cstr(identity) };
        lib.log
            .line(&format!("PrepareForAccess identity={}", show(&id)));
        Ok(VIX_OK)
    })
}

/// Accepted and logged.
///
/// # Safety
/// `identity` is null or NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VixDiskLib_EndAccess(
    _params: *const VixDiskLibConnectParams,
    identity: *const c_char,
) -> VixError {
    guard("EndAccess", || {
        let lib = entry("EndAccess")?;
        // SAFETY: the caller's contract.
        let id = unsafe { cstr(identity) };
        lib.log.line(&format!("EndAccess identity={}", show(&id)));
        Ok(VIX_OK)
    })
}

// ---------------------------------------------------------------- disks

/// Open the disk: `path` must be FAKE_VDDK_DISK (when set); serves FAKE_VDDK_BACKING.
///
/// # Safety
/// `path` is null or NUL-terminated; `handle` is null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VixDiskLib_Open(
    connection: VixDiskLibConnection,
    path: *const c_char,
    flags: u32,
    handle: *mut VixDiskLibHandle,
) -> VixError {
    guard("Open", || {
        let lib = entry("Open")?;
        // SAFETY: the caller's contract.
        let path = unsafe { cstr(path) };
        lib.log
            .line(&format!("Open path={} flags={flags}", show(&path)));
        let _oc = open_close(&lib, "Open")?;
        if !lib.background_alive() {
            lib.violation(
                "background-thread",
                "Open after the library's background thread died",
            );
            return Err(VIX_E_FAIL);
        }
        let conn = lib.conn(connection, "Open")?;
        let (Some(path), false) = (path, handle.is_null()) else {
            return Err(bad_args(&lib, "Open", "null path or handle pointer"));
        };
        if let Some(want) = &lib.cfg.disk
            && *want != path
        {
            eprintln!("fake-vddk: Open: {path} is not the disk {want} (FAKE_VDDK_DISK)");
            return Err(VIX_E_FILE_NOT_FOUND);
        }
        let Some(spec) = lib.cfg.backing.clone() else {
            eprintln!("fake-vddk: Open: FAKE_VDDK_BACKING is not set");
            return Err(VIX_E_FILE_NOT_FOUND);
        };
        let (backing, size) = Backing::open(&spec, lib.runtime()).map_err(|(e, msg)| {
            eprintln!("fake-vddk: Open: {msg}");
            e
        })?;
        let h = lib.add_disk(|id| Disk::new(id, conn.id, path, backing, size));
        // SAFETY: checked non-null; writable by the caller's contract.
        unsafe { handle.write(h) };
        Ok(VIX_OK)
    })
}

/// Close; no async read may be pending (call Wait first).
#[unsafe(no_mangle)]
pub extern "C" fn VixDiskLib_Close(handle: VixDiskLibHandle) -> VixError {
    guard("Close", || {
        let lib = entry("Close")?;
        lib.log.line("Close");
        let _oc = open_close(&lib, "Close")?;
        let disk = lib.disk(handle, "Close")?;
        let _busy = disk.enter(&lib.log, "Close")?;
        let n = disk.pending();
        if n > 0 {
            lib.violation(
                "close-pending",
                &format!(
                    "Close on handle {} with {n} async read(s) pending (call Wait first)",
                    disk.id
                ),
            );
            return Err(VIX_E_FAIL);
        }
        lib.remove_disk(disk.id);
        Ok(VIX_OK)
    })
}

/// Always "nbdssl".
#[unsafe(no_mangle)]
pub extern "C" fn VixDiskLib_GetTransportMode(handle: VixDiskLibHandle) -> *const c_char {
    let r = guard("GetTransportMode", || {
        let lib = entry("GetTransportMode")?;
        lib.log.line("GetTransportMode");
        let disk = lib.disk(handle, "GetTransportMode")?;
        let _busy = disk.enter(&lib.log, "GetTransportMode")?;
        Ok(VIX_OK)
    });
    if r == VIX_OK {
        TRANSPORT_MODE.as_ptr()
    } else {
        std::ptr::null()
    }
}

/// Disk facts: capacity = backing size / 512 rounded up, one link, LSI Logic.
///
/// # Safety
/// `info` is null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VixDiskLib_GetInfo(
    handle: VixDiskLibHandle,
    info: *mut *mut VixDiskLibInfo,
) -> VixError {
    guard("GetInfo", || {
        let lib = entry("GetInfo")?;
        lib.log.line("GetInfo");
        let disk = lib.disk(handle, "GetInfo")?;
        let _busy = disk.enter(&lib.log, "GetInfo")?;
        if info.is_null() {
            return Err(bad_args(&lib, "GetInfo", "null info pointer"));
        }
        let cap = disk.capacity();
        let geo = VixDiskLibGeometry {
            cylinders: u32::try_from(cap / (255 * 63)).unwrap_or(u32::MAX),
            heads: 255,
            sectors: 63,
        };
        let uuid = CString::new(uuid_for(&disk.path))
            .unwrap_or_default()
            .into_raw();
        let b = Box::new(VixDiskLibInfo {
            biosGeo: geo,
            physGeo: geo,
            capacity: cap,
            adapterType: VIXDISKLIB_ADAPTER_SCSI_LSILOGIC,
            numLinks: 1,
            parentFileNameHint: std::ptr::null_mut(),
            uuid,
            logicalSectorSize: 512,
            physicalSectorSize: 512,
        });
        LIVE_INFOS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: checked non-null; writable by the caller's contract.
        unsafe { info.write(Box::into_raw(b)) };
        Ok(VIX_OK)
    })
}

/// Free a GetInfo result.
///
/// # Safety
/// `info` is null or from GetInfo, not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VixDiskLib_FreeInfo(info: *mut VixDiskLibInfo) {
    if let Ok(lib) = entry("FreeInfo") {
        lib.log.line("FreeInfo");
    }
    if info.is_null() {
        return;
    }
    LIVE_INFOS.fetch_sub(1, Ordering::Relaxed);
    // SAFETY: the caller's contract: made by Box::into_raw in GetInfo, whose uuid came
    // from CString::into_raw.
    unsafe {
        let b = Box::from_raw(info);
        if !b.uuid.is_null() {
            drop(CString::from_raw(b.uuid));
        }
    }
}

// ---------------------------------------------------------------- I/O

/// Synchronous read of whole sectors.
///
/// # Safety
/// `readBuffer` is null or writable for `numSectors * 512` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VixDiskLib_Read(
    handle: VixDiskLibHandle,
    startSector: VixDiskLibSectorType,
    numSectors: VixDiskLibSectorType,
    readBuffer: *mut u8,
) -> VixError {
    guard("Read", || {
        let lib = entry("Read")?;
        lib.log
            .line(&format!("Read start={startSector} count={numSectors}"));
        let disk = lib.disk(handle, "Read")?;
        let _busy = disk.enter(&lib.log, "Read")?;
        disk.use_mode(&lib.log, "Read", Mode::Sync)?;
        if readBuffer.is_null() && numSectors > 0 {
            return Err(bad_args(&lib, "Read", "null buffer"));
        }
        disk.check_range(&lib.log, "Read", startSector, numSectors)?;
        let len = numSectors * SECTOR;
        let n = lib.next_read();
        if lib.cfg.fails(n) {
            return Err(lib.cfg.fail_code);
        }
        let mut at = lib.deadline(len);
        if lib.cfg.hang_read == Some(n) {
            at = at.max(Instant::now() + lib.cfg.hang);
        }
        let buf = RawBuf {
            ptr: readBuffer,
            len: len as usize,
        };
        // SAFETY: the caller's contract: writable for numSectors sectors during the call.
        let r = disk.read_into(startSector, unsafe { buf.as_mut_slice() });
        sleep_until(at);
        if r == VIX_OK { Ok(VIX_OK) } else { Err(r) }
    })
}

/// Queue a read; the callback runs on a fake thread (or, for some reads, before this
/// returns). Returns VIX_ASYNC when queued.
///
/// # Safety
/// `readBuffer` is writable for `numSectors * 512` bytes and untouched until the
/// callback; `callback` is callable with `cbData`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VixDiskLib_ReadAsync(
    handle: VixDiskLibHandle,
    startSector: VixDiskLibSectorType,
    numSectors: VixDiskLibSectorType,
    readBuffer: *mut u8,
    callback: VixDiskLibCompletionCB,
    cbData: *mut c_void,
) -> VixError {
    guard("ReadAsync", || {
        let lib = entry("ReadAsync")?;
        lib.log
            .line(&format!("ReadAsync start={startSector} count={numSectors}"));
        let disk = lib.disk(handle, "ReadAsync")?;
        let _busy = disk.enter(&lib.log, "ReadAsync")?;
        let Some(f) = callback else {
            return Err(bad_args(&lib, "ReadAsync", "null callback"));
        };
        if readBuffer.is_null() && numSectors > 0 {
            return Err(bad_args(&lib, "ReadAsync", "null buffer"));
        }
        disk.use_mode(&lib.log, "ReadAsync", Mode::Async)?;
        disk.check_range(&lib.log, "ReadAsync", startSector, numSectors)?;
        let len = numSectors * SECTOR;
        disk.op_start(lib.cfg.max_in_flight);
        let n = lib.next_read();
        let forced = lib.cfg.fails(n).then_some(lib.cfg.fail_code);
        let hang = lib.cfg.hang_read == Some(n);
        let mut at = lib.deadline(len);
        if hang {
            at = at.max(Instant::now() + lib.cfg.hang);
        }
        let cb = Callback { f, data: cbData };
        let buf = RawBuf {
            ptr: readBuffer,
            len: len as usize,
        };
        if !hang && completes_synchronously(n, lib.cfg.sync_complete_percent) {
            let r = match forced {
                Some(e) => e,
                // SAFETY: the caller's contract: the buffer is ours until the callback.
                None => disk.read_into(startSector, unsafe { buf.as_mut_slice() }),
            };
            sleep_until(at);
            cb.complete(&disk, r);
        } else {
            lib.engine.submit(Job {
                disk: disk.clone(),
                start: startSector,
                buf,
                cb,
                at,
                forced,
            });
        }
        Ok(VIX_ASYNC)
    })
}

/// Block until every async read on the handle has completed.
#[unsafe(no_mangle)]
pub extern "C" fn VixDiskLib_Wait(handle: VixDiskLibHandle) -> VixError {
    guard("Wait", || {
        let lib = entry("Wait")?;
        lib.log.line("Wait");
        let disk = lib.disk(handle, "Wait")?;
        let _busy = disk.enter(&lib.log, "Wait")?;
        disk.wait_idle();
        Ok(VIX_OK)
    })
}

/// Nothing to flush on a read-only fake.
#[unsafe(no_mangle)]
pub extern "C" fn VixDiskLib_Flush(handle: VixDiskLibHandle) -> VixError {
    guard("Flush", || {
        let lib = entry("Flush")?;
        lib.log.line("Flush");
        let disk = lib.disk(handle, "Flush")?;
        let _busy = disk.enter(&lib.log, "Flush")?;
        Ok(VIX_OK)
    })
}

/// Allocated chunks of `[startSector, startSector+numSectors)` from the backing's data
/// extents, with VDDK's argument rules.
///
/// # Safety
/// `blockList` is null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VixDiskLib_QueryAllocatedBlocks(
    handle: VixDiskLibHandle,
    startSector: VixDiskLibSectorType,
    numSectors: VixDiskLibSectorType,
    chunkSize: VixDiskLibSectorType,
    blockList: *mut *mut VixDiskLibBlockList,
) -> VixError {
    guard("QueryAllocatedBlocks", || {
        let lib = entry("QueryAllocatedBlocks")?;
        let head = format!(
            "QueryAllocatedBlocks start={startSector} count={numSectors} chunk={chunkSize}"
        );
        let fail = |e: VixError| {
            lib.log.line(&format!("{head} blocks=-"));
            e
        };
        let disk = lib.disk(handle, "QueryAllocatedBlocks").map_err(fail)?;
        let _busy = disk.enter(&lib.log, "QueryAllocatedBlocks").map_err(fail)?;
        if blockList.is_null() {
            let e = fail(VIX_E_INVALID_ARG);
            bad_args(&lib, "QueryAllocatedBlocks", "null blockList pointer");
            return Err(e);
        }
        if let Err(why) = check_query(startSector, numSectors, chunkSize, disk.capacity()) {
            let e = fail(VIX_E_INVALID_ARG);
            lib.violation("query-args", &format!("QueryAllocatedBlocks: {why}"));
            return Err(e);
        }
        let extents = disk
            .backing
            .data_extents(startSector * SECTOR, numSectors * SECTOR)
            .map_err(fail)?;
        let blocks = allocated_chunks(&extents, startSector, numSectors, chunkSize);
        let bytes = std::mem::size_of::<VixDiskLibBlockList>()
            + blocks.len() * std::mem::size_of::<VixDiskLibBlock>();
        // SAFETY: calloc of a non-zero size, checked for null below.
        let list: *mut VixDiskLibBlockList = unsafe { libc::calloc(1, bytes) }.cast();
        if list.is_null() {
            return Err(fail(VIX_E_OUT_OF_MEMORY));
        }
        // SAFETY: `list` has room for the header and blocks.len() entries of the
        // flexible array (which starts at offset 8, inside the calloc'ed bytes).
        unsafe {
            (*list).numBlocks = blocks.len() as u32;
            let arr = (*list).blocks.as_mut_ptr();
            for (i, (offset, length)) in blocks.iter().enumerate() {
                arr.add(i).write(VixDiskLibBlock {
                    offset: *offset,
                    length: *length,
                });
            }
            blockList.write(list);
        }
        LIVE_BLOCK_LISTS.fetch_add(1, Ordering::Relaxed);
        lib.log.line(&format!("{head} blocks={}", blocks.len()));
        Ok(VIX_OK)
    })
}

/// Free a QueryAllocatedBlocks result.
///
/// # Safety
/// `blockList` is null or from QueryAllocatedBlocks, not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VixDiskLib_FreeBlockList(blockList: *mut VixDiskLibBlockList) -> VixError {
    if let Ok(lib) = entry("FreeBlockList") {
        lib.log.line("FreeBlockList");
    }
    if !blockList.is_null() {
        LIVE_BLOCK_LISTS.fetch_sub(1, Ordering::Relaxed);
        // SAFETY: the caller's contract: calloc'ed by QueryAllocatedBlocks.
        unsafe { libc::free(blockList.cast()) };
    }
    VIX_OK
}

/// Compile-time proof that every export has exactly the signature of our header (as
/// bindgen rendered it into `vddk_sys::VixDiskLibApi`). Never called.
#[allow(dead_code)]
fn abi_matches_header(api: &vddk_sys::VixDiskLibApi) {
    fn same<T, E>(_: &Result<T, E>, _: T) {}
    same(&api.VixDiskLib_InitEx, VixDiskLib_InitEx);
    same(&api.VixDiskLib_Exit, VixDiskLib_Exit);
    same(
        &api.VixDiskLib_ListTransportModes,
        VixDiskLib_ListTransportModes,
    );
    same(
        &api.VixDiskLib_AllocateConnectParams,
        VixDiskLib_AllocateConnectParams,
    );
    same(
        &api.VixDiskLib_FreeConnectParams,
        VixDiskLib_FreeConnectParams,
    );
    same(&api.VixDiskLib_ConnectEx, VixDiskLib_ConnectEx);
    same(&api.VixDiskLib_Disconnect, VixDiskLib_Disconnect);
    same(&api.VixDiskLib_Cleanup, VixDiskLib_Cleanup);
    same(
        &api.VixDiskLib_PrepareForAccess,
        VixDiskLib_PrepareForAccess,
    );
    same(&api.VixDiskLib_EndAccess, VixDiskLib_EndAccess);
    same(&api.VixDiskLib_Open, VixDiskLib_Open);
    same(&api.VixDiskLib_Close, VixDiskLib_Close);
    same(
        &api.VixDiskLib_GetTransportMode,
        VixDiskLib_GetTransportMode,
    );
    same(&api.VixDiskLib_GetInfo, VixDiskLib_GetInfo);
    same(&api.VixDiskLib_FreeInfo, VixDiskLib_FreeInfo);
    same(&api.VixDiskLib_Read, VixDiskLib_Read);
    same(&api.VixDiskLib_ReadAsync, VixDiskLib_ReadAsync);
    same(&api.VixDiskLib_Wait, VixDiskLib_Wait);
    same(&api.VixDiskLib_Flush, VixDiskLib_Flush);
    same(
        &api.VixDiskLib_QueryAllocatedBlocks,
        VixDiskLib_QueryAllocatedBlocks,
    );
    same(&api.VixDiskLib_FreeBlockList, VixDiskLib_FreeBlockList);
    same(&api.VixDiskLib_GetErrorText, VixDiskLib_GetErrorText);
    same(&api.VixDiskLib_FreeErrorText, VixDiskLib_FreeErrorText);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_completion_share_is_about_right() {
        for pct in [0, 10, 50, 100] {
            let n = (1..=10_000)
                .filter(|&i| completes_synchronously(i, pct))
                .count() as u64;
            assert!(n.abs_diff(pct * 100) <= 300, "{pct}%: {n} of 10000");
        }
    }

    #[test]
    fn error_texts() {
        assert_eq!(errors::text(35), "Authentication failed");
        assert!(errors::text(1).contains("thumbprint"));
        assert_eq!(errors::text(2), "NFC server out of memory");
        assert_eq!(errors::text(4), "The file specified was not found");
        assert_eq!(errors::text(0xdead_0000_0000 | 35), "Authentication failed");
        assert_eq!(errors::text(12345), "Unknown error");
    }

    #[test]
    fn uuid_is_stable_and_shaped() {
        let u = uuid_for("[ds] vm/vm.vmdk");
        assert_eq!(u, uuid_for("[ds] vm/vm.vmdk"));
        assert_eq!(u.len(), 36, "{u}");
        assert_ne!(u, uuid_for("[ds] vm/other.vmdk"));
    }
}
