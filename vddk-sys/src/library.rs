//! One method per VixDiskLib call, each doing only what memory safety requires.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::bindings::*;

/// Cap on the entries of one QueryAllocatedBlocks result we accept (a call covers at most
/// VIXDISKLIB_MAX_CHUNK_NUMBER chunks, so more entries than that is a broken library).
pub const MAX_BLOCK_LIST_ENTRIES: u32 = VIXDISKLIB_MAX_CHUNK_NUMBER;
/// Longest log line forwarded from the library (longer ones are cut).
const MAX_LOG_LINE: usize = 4096;
/// `VIX_E_INVALID_ARG`, returned for requests this wrapper refuses before calling.
const VIX_E_INVALID_ARG: VixError = 3;

/// Severity of a library log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// The `log` callback.
    Info,
    /// The `warn` callback.
    Warning,
    /// The `panic` callback (the library is about to fail).
    Panic,
}

/// Where library log lines go. Set once, by the first `init_ex`.
pub type LogSink = fn(LogLevel, &str);

static LOG_SINK: OnceLock<LogSink> = OnceLock::new();

unsafe extern "C" {
    // va_list is `__va_list_tag *` on x86-64 SysV; the callback's argument is passed on
    // unchanged and consumed exactly once.
    fn vsnprintf(s: *mut c_char, n: usize, fmt: *const c_char, ap: *mut __va_list_tag) -> c_int;
}

/// # Safety
/// `fmt` and `args` must be the pair the library passed to a log callback.
unsafe fn forward(level: LogLevel, fmt: *const c_char, args: *mut __va_list_tag) {
    if fmt.is_null() {
        return;
    }
    let mut buf = [0u8; MAX_LOG_LINE];
    // SAFETY: buf is writable for its whole length and vsnprintf NUL-terminates within
    // it; fmt/args are the library's printf pair (caller's contract).
    let n = unsafe { vsnprintf(buf.as_mut_ptr().cast(), buf.len(), fmt, args) };
    let Ok(n) = usize::try_from(n) else {
        return; // negative: an encoding error
    };
    let len = n.min(buf.len() - 1);
    let line = String::from_utf8_lossy(&buf[..len]);
    if let Some(sink) = LOG_SINK.get() {
        sink(level, line.trim_end());
    }
}

unsafe extern "C" fn log_info(fmt: *const c_char, args: *mut __va_list_tag) {
    // SAFETY: called by the library as its log callback.
    unsafe { forward(LogLevel::Info, fmt, args) }
}

unsafe extern "C" fn log_warn(fmt: *const c_char, args: *mut __va_list_tag) {
    // SAFETY: called by the library as its warn callback.
    unsafe { forward(LogLevel::Warning, fmt, args) }
}

unsafe extern "C" fn log_panic(fmt: *const c_char, args: *mut __va_list_tag) {
    // SAFETY: called by the library as its panic callback.
    unsafe { forward(LogLevel::Panic, fmt, args) }
}

/// A loaded libvixDiskLib.
pub struct Library {
    api: VixDiskLibApi,
    path: PathBuf,
    major: u32,
}

impl std::fmt::Debug for Library {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Library")
            .field("path", &self.path)
            .field("major", &self.major)
            .finish()
    }
}

/// What to connect to. Strings are copied into C strings owned by the [`Connection`].
#[derive(Clone, Default)]
pub struct ConnectSpec {
    /// `moref=vm-123` (None for local files).
    pub vmx_spec: Option<String>,
    /// vCenter or ESXi host.
    pub server: Option<String>,
    /// SHA-1 thumbprint `xx:xx:…`.
    pub thumbprint: Option<String>,
    /// User name.
    pub user: Option<String>,
    /// Password (wiped from memory when the connection is dropped).
    pub password: Option<String>,
    /// HTTPS port (0 = 443).
    pub port: u32,
}

impl std::fmt::Debug for ConnectSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectSpec")
            .field("vmx_spec", &self.vmx_spec)
            .field("server", &self.server)
            .field("thumbprint", &self.thumbprint)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("port", &self.port)
            .finish()
    }
}

/// Connect parameters and the strings they point to, alive until disconnect.
struct Params {
    ptr: *mut VixDiskLibConnectParams,
    /// Allocated by the library (AllocateConnectParams) rather than by us.
    library_owned: bool,
    /// Never read: held so the pointers written into the parameters stay valid.
    _strings: Vec<CString>,
    secret: Option<CString>,
}

/// An open connection (VixDiskLibConnection plus its parameters).
#[derive(Debug)]
pub struct Connection {
    raw: VixDiskLibConnection,
    params: Params,
}

impl std::fmt::Debug for Params {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnectParams")
    }
}

// SAFETY: a VDDK connection is an opaque pointer not bound to the thread that made it;
// the importer serializes every call that uses it.
unsafe impl Send for Connection {}

/// An open disk handle.
#[derive(Debug)]
pub struct Handle(VixDiskLibHandle);

// SAFETY: VDDK handles are not bound to a thread (VMware's threading rules); the
// importer never makes concurrent calls on one handle.
unsafe impl Send for Handle {}

/// Facts from GetInfo, copied out of the library's struct.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskInfo {
    /// Virtual size in 512-byte sectors.
    pub capacity_sectors: u64,
    /// Links in the chain (base + redo logs).
    pub num_links: i32,
    /// Adapter type enum value.
    pub adapter_type: u32,
    /// Disk UUID, if any.
    pub uuid: Option<String>,
    /// Sector sizes (VDDK 7.0 and later only).
    pub sector_sizes: Option<(u32, u32)>,
}

/// A buffer an async read can fill: owned by the read until its completion.
pub trait AsyncBuf: Send + 'static {
    /// The bytes to fill (a multiple of 512).
    fn bytes_mut(&mut self) -> &mut [u8];
}

impl AsyncBuf for Vec<u8> {
    fn bytes_mut(&mut self) -> &mut [u8] {
        self
    }
}

/// Completion of an async read: the buffer back, and VIX_OK or the error.
pub type Completion<B> = Box<dyn FnOnce(B, Result<(), VixError>) + Send>;

struct AsyncOp<B> {
    buf: B,
    done: Completion<B>,
}

unsafe extern "C" fn async_done<B: AsyncBuf>(data: *mut c_void, result: VixError) {
    // SAFETY: `data` is the Box<AsyncOp<B>> leaked by `read_async` for exactly this
    // completion, which the library calls once.
    let op = unsafe { Box::from_raw(data.cast::<AsyncOp<B>>()) };
    let r = if result == VIX_OK as VixError {
        Ok(())
    } else {
        Err(result)
    };
    (op.done)(op.buf, r);
}

fn cstring(s: &str) -> Result<CString, VixError> {
    CString::new(s).map_err(|_| VIX_E_INVALID_ARG)
}

fn opt_ptr(s: &Option<CString>) -> *const c_char {
    s.as_ref().map_or(std::ptr::null(), |c| c.as_ptr())
}

fn result(e: VixError) -> Result<(), VixError> {
    if e == VIX_OK as VixError {
        Ok(())
    } else {
        Err(e)
    }
}

/// Copy a library-owned C string.
///
/// # Safety
/// `p` is null or a valid NUL-terminated string.
unsafe fn copy_str(p: *const c_char) -> Option<String> {
    // SAFETY: caller's contract.
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

impl Library {
    pub(crate) fn new(api: VixDiskLibApi, path: PathBuf, major: u32) -> Library {
        Library { api, path, major }
    }

    /// The file loaded.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The soname's major version (6–9).
    pub fn major(&self) -> u32 {
        self.major
    }

    /// Whether a symbol resolved.
    pub fn has_symbol(&self, name: &str) -> bool {
        let a = &self.api;
        match name {
            "VixDiskLib_InitEx" => a.VixDiskLib_InitEx.is_ok(),
            "VixDiskLib_Exit" => a.VixDiskLib_Exit.is_ok(),
            "VixDiskLib_ListTransportModes" => a.VixDiskLib_ListTransportModes.is_ok(),
            "VixDiskLib_AllocateConnectParams" => a.VixDiskLib_AllocateConnectParams.is_ok(),
            "VixDiskLib_FreeConnectParams" => a.VixDiskLib_FreeConnectParams.is_ok(),
            "VixDiskLib_ConnectEx" => a.VixDiskLib_ConnectEx.is_ok(),
            "VixDiskLib_Disconnect" => a.VixDiskLib_Disconnect.is_ok(),
            "VixDiskLib_Cleanup" => a.VixDiskLib_Cleanup.is_ok(),
            "VixDiskLib_PrepareForAccess" => a.VixDiskLib_PrepareForAccess.is_ok(),
            "VixDiskLib_EndAccess" => a.VixDiskLib_EndAccess.is_ok(),
            "VixDiskLib_Open" => a.VixDiskLib_Open.is_ok(),
            "VixDiskLib_Close" => a.VixDiskLib_Close.is_ok(),
            "VixDiskLib_GetTransportMode" => a.VixDiskLib_GetTransportMode.is_ok(),
            "VixDiskLib_GetInfo" => a.VixDiskLib_GetInfo.is_ok(),
            "VixDiskLib_FreeInfo" => a.VixDiskLib_FreeInfo.is_ok(),
            "VixDiskLib_Read" => a.VixDiskLib_Read.is_ok(),
            "VixDiskLib_ReadAsync" => a.VixDiskLib_ReadAsync.is_ok(),
            "VixDiskLib_Wait" => a.VixDiskLib_Wait.is_ok(),
            "VixDiskLib_Flush" => a.VixDiskLib_Flush.is_ok(),
            "VixDiskLib_QueryAllocatedBlocks" => a.VixDiskLib_QueryAllocatedBlocks.is_ok(),
            "VixDiskLib_FreeBlockList" => a.VixDiskLib_FreeBlockList.is_ok(),
            "VixDiskLib_GetErrorText" => a.VixDiskLib_GetErrorText.is_ok(),
            "VixDiskLib_FreeErrorText" => a.VixDiskLib_FreeErrorText.is_ok(),
            _ => false,
        }
    }

    /// ReadAsync and Wait are both there (VDDK 6.7+).
    pub fn has_async(&self) -> bool {
        self.has_symbol("VixDiskLib_ReadAsync") && self.has_symbol("VixDiskLib_Wait")
    }

    /// QueryAllocatedBlocks and FreeBlockList are both there (VDDK 6.7+).
    pub fn has_query_allocated_blocks(&self) -> bool {
        self.has_symbol("VixDiskLib_QueryAllocatedBlocks")
            && self.has_symbol("VixDiskLib_FreeBlockList")
    }

    /// VixDiskLib_InitEx with our thread-safe log callbacks routed to `sink`.
    pub fn init_ex(
        &self,
        major: u32,
        minor: u32,
        libdir: &Path,
        config: Option<&Path>,
        sink: LogSink,
    ) -> Result<(), VixError> {
        let _ = LOG_SINK.set(sink);
        let libdir = cstring(&libdir.to_string_lossy())?;
        let config = config.map(|c| cstring(&c.to_string_lossy())).transpose()?;
        // SAFETY: required symbol (checked at load); the strings outlive the call; the
        // callbacks are 'static functions that only format and forward a line.
        let e = unsafe {
            self.api.VixDiskLib_InitEx(
                major,
                minor,
                Some(log_info),
                Some(log_warn),
                Some(log_panic),
                libdir.as_ptr(),
                opt_ptr(&config),
            )
        };
        result(e)
    }

    /// VixDiskLib_Exit.
    pub fn exit(&self) {
        // SAFETY: required symbol; takes no arguments.
        unsafe { self.api.VixDiskLib_Exit() }
    }

    /// The library's default transport list.
    pub fn list_transport_modes(&self) -> String {
        // SAFETY: required symbol; returns a static string or null.
        unsafe { copy_str(self.api.VixDiskLib_ListTransportModes()) }.unwrap_or_default()
    }

    /// The library's text for an error.
    pub fn error_text(&self, e: VixError) -> String {
        // SAFETY: required symbols; the returned string is copied, then freed with the
        // matching FreeErrorText.
        unsafe {
            let p = self.api.VixDiskLib_GetErrorText(e, std::ptr::null());
            let s = copy_str(p);
            if !p.is_null() {
                self.api.VixDiskLib_FreeErrorText(p);
            }
            s.unwrap_or_else(|| format!("VixError {e}"))
        }
    }

    fn alloc_params(&self) -> (*mut VixDiskLibConnectParams, bool) {
        if self.has_symbol("VixDiskLib_AllocateConnectParams")
            && self.has_symbol("VixDiskLib_FreeConnectParams")
        {
            // SAFETY: optional symbol checked just above; returns library-owned memory
            // freed in `free_params` with FreeConnectParams.
            let p = unsafe { self.api.VixDiskLib_AllocateConnectParams() };
            if !p.is_null() {
                return (p, true);
            }
        }
        // SAFETY: every field is a pointer, integer or C enum, for which all-zero is a
        // valid value (null / 0), as calloc would give.
        let b: Box<VixDiskLibConnectParams> = Box::new(unsafe { std::mem::zeroed() });
        (Box::into_raw(b), false)
    }

    fn free_params(&self, p: Params) {
        if p.library_owned {
            // SAFETY: allocated by AllocateConnectParams (symbol checked then).
            unsafe { self.api.VixDiskLib_FreeConnectParams(p.ptr) };
        } else {
            // SAFETY: made by Box::into_raw in alloc_params.
            drop(unsafe { Box::from_raw(p.ptr) });
        }
        if let Some(secret) = p.secret {
            wipe(secret);
        }
    }

    /// VixDiskLib_ConnectEx (read-only when asked). The parameters and strings stay
    /// alive inside the returned connection until [`Library::disconnect`].
    pub fn connect(
        &self,
        spec: &ConnectSpec,
        read_only: bool,
        snapshot: Option<&str>,
        transports: Option<&str>,
    ) -> Result<Connection, VixError> {
        let mut strings = Vec::new();
        let mut keep = |s: &Option<String>| -> Result<*mut c_char, VixError> {
            match s {
                None => Ok(std::ptr::null_mut()),
                Some(s) => {
                    let c = cstring(s)?;
                    let p = c.as_ptr().cast_mut();
                    strings.push(c);
                    Ok(p)
                }
            }
        };
        let vmx = keep(&spec.vmx_spec)?;
        let server = keep(&spec.server)?;
        let thumb = keep(&spec.thumbprint)?;
        let user = keep(&spec.user)?;
        let snapshot = keep(&snapshot.map(str::to_owned))?;
        let transports = keep(&transports.map(str::to_owned))?;
        let secret = spec.password.as_deref().map(cstring).transpose()?;
        let (ptr, library_owned) = self.alloc_params();
        let params = Params {
            ptr,
            library_owned,
            _strings: strings,
            secret,
        };
        // SAFETY: ptr points to a whole VixDiskLibConnectParams (library- or
        // Box-allocated); we write only the documented prefix. The strings are owned by
        // `params`, which lives in the Connection until disconnect.
        unsafe {
            let p = &mut *ptr;
            p.vmxSpec = vmx;
            p.serverName = server;
            p.thumbPrint = thumb;
            p.specType = VIXDISKLIB_SPEC_VMX;
            p.port = spec.port;
            if !user.is_null() || params.secret.is_some() {
                p.credType = VIXDISKLIB_CRED_UID;
                p.creds.uid.userName = user;
                p.creds.uid.password = opt_ptr(&params.secret).cast_mut();
            }
        }
        let mut conn: VixDiskLibConnection = std::ptr::null_mut();
        // SAFETY: required symbol; params and strings are alive; `conn` is a valid out
        // pointer.
        let e = unsafe {
            self.api.VixDiskLib_ConnectEx(
                ptr,
                c_char::from(read_only),
                snapshot,
                transports,
                &mut conn,
            )
        };
        if let Err(e) = result(e) {
            self.free_params(params);
            return Err(e);
        }
        Ok(Connection { raw: conn, params })
    }

    /// VixDiskLib_Disconnect; frees the parameters and wipes the password.
    pub fn disconnect(&self, c: Connection) -> Result<(), VixError> {
        // SAFETY: required symbol; `c.raw` came from ConnectEx and is consumed here.
        let e = unsafe { self.api.VixDiskLib_Disconnect(c.raw) };
        self.free_params(c.params);
        result(e)
    }

    /// VixDiskLib_Open.
    pub fn open(&self, c: &Connection, path: &str, flags: u32) -> Result<Handle, VixError> {
        let path = cstring(path)?;
        let mut h: VixDiskLibHandle = std::ptr::null_mut();
        // SAFETY: required symbol; live connection; valid string and out pointer.
        let e = unsafe {
            self.api
                .VixDiskLib_Open(c.raw, path.as_ptr(), flags, &mut h)
        };
        result(e).map(|()| Handle(h))
    }

    /// VixDiskLib_Close.
    pub fn close(&self, h: Handle) -> Result<(), VixError> {
        // SAFETY: required symbol; `h` came from Open and is consumed here.
        result(unsafe { self.api.VixDiskLib_Close(h.0) })
    }

    /// The transport the handle uses (`nbdssl`, `file`, …).
    pub fn transport_mode(&self, h: &Handle) -> String {
        // SAFETY: required symbol; returns a static string or null.
        unsafe { copy_str(self.api.VixDiskLib_GetTransportMode(h.0)) }.unwrap_or_default()
    }

    /// VixDiskLib_GetInfo, copied and freed.
    pub fn info(&self, h: &Handle) -> Result<DiskInfo, VixError> {
        let mut p: *mut VixDiskLibInfo = std::ptr::null_mut();
        // SAFETY: required symbol; valid out pointer.
        result(unsafe { self.api.VixDiskLib_GetInfo(h.0, &mut p) })?;
        if p.is_null() {
            return Err(VIX_E_INVALID_ARG);
        }
        // SAFETY: GetInfo succeeded, so p points to a VixDiskLibInfo; the sector-size
        // fields exist only from VDDK 7.0 and are read only then. Freed with FreeInfo.
        unsafe {
            let i = &*p;
            let info = DiskInfo {
                capacity_sectors: i.capacity,
                num_links: i.numLinks,
                adapter_type: i.adapterType,
                uuid: copy_str(i.uuid),
                sector_sizes: (self.major >= 7)
                    .then_some((i.logicalSectorSize, i.physicalSectorSize)),
            };
            self.api.VixDiskLib_FreeInfo(p);
            Ok(info)
        }
    }

    /// Synchronous VixDiskLib_Read of `buf.len() / 512` sectors.
    pub fn read(&self, h: &Handle, start_sector: u64, buf: &mut [u8]) -> Result<(), VixError> {
        if !buf.len().is_multiple_of(VIXDISKLIB_SECTOR_SIZE as usize) {
            return Err(VIX_E_INVALID_ARG);
        }
        let n = (buf.len() / VIXDISKLIB_SECTOR_SIZE as usize) as u64;
        // SAFETY: required symbol; buf is writable for n sectors for the whole call.
        result(unsafe {
            self.api
                .VixDiskLib_Read(h.0, start_sector, n, buf.as_mut_ptr())
        })
    }

    /// VixDiskLib_ReadAsync. The buffer is owned by the read until `done` runs, exactly
    /// once: on a library thread when the read completes (possibly before this returns),
    /// or right here with the error when the read could not be queued (then this also
    /// returns that error).
    pub fn read_async<B: AsyncBuf>(
        &self,
        h: &Handle,
        start_sector: u64,
        mut buf: B,
        done: Completion<B>,
    ) -> Result<(), VixError> {
        let len = buf.bytes_mut().len();
        if !self.has_async() || !len.is_multiple_of(VIXDISKLIB_SECTOR_SIZE as usize) {
            done(buf, Err(VIX_E_INVALID_ARG));
            return Err(VIX_E_INVALID_ARG);
        }
        let mut op = Box::new(AsyncOp { buf, done });
        let ptr = op.buf.bytes_mut().as_mut_ptr();
        let data = Box::into_raw(op);
        // SAFETY: optional symbol checked above. The buffer lives inside the leaked
        // AsyncOp, which only `async_done` (the completion) reclaims; its bytes are on
        // the heap and do not move. On a submission error the library does not call the
        // completion, so we reclaim the op ourselves below.
        let e = unsafe {
            self.api.VixDiskLib_ReadAsync(
                h.0,
                start_sector,
                (len / VIXDISKLIB_SECTOR_SIZE as usize) as u64,
                ptr,
                Some(async_done::<B>),
                data.cast(),
            )
        };
        if e == VIX_ASYNC as VixError {
            return Ok(());
        }
        // SAFETY: not queued, so the completion will not run; `data` is still ours.
        let op = unsafe { Box::from_raw(data) };
        let e = if e == VIX_OK as VixError {
            VIX_E_INVALID_ARG
        } else {
            e
        };
        (op.done)(op.buf, Err(e));
        Err(e)
    }

    /// VixDiskLib_Wait: until every async op on the handle completed.
    pub fn wait(&self, h: &Handle) -> Result<(), VixError> {
        if !self.has_symbol("VixDiskLib_Wait") {
            return Ok(());
        }
        // SAFETY: optional symbol checked above.
        result(unsafe { self.api.VixDiskLib_Wait(h.0) })
    }

    /// VixDiskLib_QueryAllocatedBlocks: allocated runs as (start sector, sectors).
    pub fn query_allocated_blocks(
        &self,
        h: &Handle,
        start_sector: u64,
        sectors: u64,
        chunk: u64,
    ) -> Result<Vec<(u64, u64)>, VixError> {
        if !self.has_query_allocated_blocks() {
            return Err(VIX_E_INVALID_ARG);
        }
        let mut list: *mut VixDiskLibBlockList = std::ptr::null_mut();
        // SAFETY: optional symbols checked above; valid out pointer.
        result(unsafe {
            self.api
                .VixDiskLib_QueryAllocatedBlocks(h.0, start_sector, sectors, chunk, &mut list)
        })?;
        if list.is_null() {
            return Ok(Vec::new());
        }
        // SAFETY: on success `list` is a library-allocated block list whose flexible
        // array holds numBlocks entries; the count is capped before reading; the list
        // is freed with FreeBlockList right after copying.
        unsafe {
            let n = (*list).numBlocks;
            let out = if n > MAX_BLOCK_LIST_ENTRIES {
                Err(VIX_E_INVALID_ARG)
            } else {
                Ok((*list)
                    .blocks
                    .as_slice(n as usize)
                    .iter()
                    .map(|b| (b.offset, b.length))
                    .collect())
            };
            self.api.VixDiskLib_FreeBlockList(list);
            out
        }
    }
}

/// Overwrite a secret's bytes before freeing them.
fn wipe(s: CString) {
    let mut bytes = s.into_bytes_with_nul();
    for b in bytes.iter_mut() {
        // SAFETY: b is a valid &mut u8; volatile keeps the wipe from being optimised out.
        unsafe { std::ptr::write_volatile(b, 0) };
    }
}
