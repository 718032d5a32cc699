//! An open disk handle: its backing, the per-handle rules (one call at a time, no mixing
//! of sync and async reads) and its count of outstanding async reads.

use std::ffi::c_void;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use vddk_sys::VixError;

use crate::backing::Backing;
use crate::calllog::{CallLog, violation};
use crate::errors::*;
use crate::extents::SECTOR;

/// Lock, ignoring poisoning (a panicking caller thread must not wedge the fake).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Which kind of read a handle has seen first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Sync,
    Async,
}

/// One open disk.
#[derive(Debug)]
pub(crate) struct Disk {
    pub id: usize,
    pub conn: usize,
    pub path: String,
    pub backing: Backing,
    /// Backing size in bytes.
    pub size: u64,
    /// The call running on this handle, if any.
    busy: Mutex<Option<&'static str>>,
    mode: Mutex<Option<Mode>>,
    /// Async reads queued and not yet completed.
    pending: Mutex<u64>,
    idle: Condvar,
}

/// Clears the handle's busy mark when the call returns.
#[derive(Debug)]
pub(crate) struct Busy<'a>(&'a Disk);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        *lock(&self.0.busy) = None;
    }
}

impl Disk {
    pub fn new(id: usize, conn: usize, path: String, backing: Backing, size: u64) -> Disk {
        Disk {
            id,
            conn,
            path,
            backing,
            size,
            busy: Mutex::new(None),
            mode: Mutex::new(None),
            pending: Mutex::new(0),
            idle: Condvar::new(),
        }
    }

    /// Capacity in sectors (the size rounded up).
    pub fn capacity(&self) -> u64 {
        self.size.div_ceil(SECTOR)
    }

    /// Mark the handle busy for `call`; a call already running is a violation.
    pub fn enter(&self, log: &CallLog, call: &'static str) -> Result<Busy<'_>, VixError> {
        let mut b = lock(&self.busy);
        if let Some(other) = *b {
            drop(b);
            violation(
                log,
                "handle-busy",
                &format!(
                    "{call} on handle {} while {other} is still running on it (calls on one handle must be serialized)",
                    self.id
                ),
            );
            return Err(VIX_E_FAIL);
        }
        *b = Some(call);
        Ok(Busy(self))
    }

    /// Record the read mode; a handle that saw the other mode is a violation.
    pub fn use_mode(&self, log: &CallLog, call: &str, m: Mode) -> Result<(), VixError> {
        let mut mode = lock(&self.mode);
        match *mode {
            Some(prev) if prev != m => {
                drop(mode);
                violation(
                    log,
                    "mixed-mode",
                    &format!(
                        "{call} on handle {} which already did {} reads (sync and async I/O must not be mixed on one handle)",
                        self.id,
                        if prev == Mode::Sync { "sync" } else { "async" }
                    ),
                );
                Err(VIX_E_ASYNC_MIXEDMODE_UNSUPPORTED)
            }
            _ => {
                *mode = Some(m);
                Ok(())
            }
        }
    }

    /// Reads past the end are a violation.
    pub fn check_range(
        &self,
        log: &CallLog,
        call: &str,
        start: u64,
        count: u64,
    ) -> Result<(), VixError> {
        let cap = self.capacity();
        if start.checked_add(count).is_none_or(|end| end > cap) {
            violation(
                log,
                "out-of-range",
                &format!(
                    "{call} start={start} count={count} on handle {} runs past the disk's capacity {cap}",
                    self.id
                ),
            );
            return Err(VIX_E_DISK_OUTOFRANGE);
        }
        Ok(())
    }

    /// Read whole sectors into `buf` from sector `start`.
    pub fn read_into(&self, start: u64, buf: &mut [u8]) -> VixError {
        match self.backing.read(start * SECTOR, buf, self.size) {
            Ok(()) => VIX_OK,
            Err(e) => e,
        }
    }

    /// One more async read outstanding; blocks while `max` are (VDDK's bounded AIO
    /// buffers).
    pub fn op_start(&self, max: Option<u64>) {
        let mut p = lock(&self.pending);
        while max.is_some_and(|m| *p >= m) {
            p = self.idle.wait(p).unwrap_or_else(PoisonError::into_inner);
        }
        *p += 1;
    }

    /// An async read completed (its callback has returned).
    pub fn op_done(&self) {
        let mut p = lock(&self.pending);
        *p = p.saturating_sub(1);
        self.idle.notify_all();
    }

    /// Async reads outstanding.
    pub fn pending(&self) -> u64 {
        *lock(&self.pending)
    }

    /// Block until no async read is outstanding.
    pub fn wait_idle(&self) {
        let mut p = lock(&self.pending);
        while *p > 0 {
            p = self.idle.wait(p).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// The caller's completion callback and its data.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Callback {
    pub f: unsafe extern "C" fn(*mut c_void, VixError),
    pub data: *mut c_void,
}

// SAFETY: the callback is a C function the caller gave ReadAsync to be run on a library
// thread (VDDK's contract); `data` is the caller's opaque pointer, passed back untouched.
unsafe impl Send for Callback {}

impl Callback {
    /// Run the callback, then count the read as done on `disk` (in that order, so Wait
    /// returns only after every callback has returned).
    pub fn complete(self, disk: &Disk, result: VixError) {
        // SAFETY: called exactly once per queued read, with the caller's own pointer, as
        // ReadAsync's contract promises.
        unsafe { (self.f)(self.data, result) };
        disk.op_done();
    }
}

/// The caller's read buffer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawBuf {
    pub ptr: *mut u8,
    pub len: usize,
}

// SAFETY: ReadAsync's contract: the buffer stays valid and untouched by the caller until
// the completion callback runs, so the fake's threads may fill it.
unsafe impl Send for RawBuf {}

impl RawBuf {
    /// # Safety
    /// `ptr` is valid for writes of `len` bytes and not otherwise accessed until the
    /// read's completion.
    pub unsafe fn as_mut_slice<'a>(self) -> &'a mut [u8] {
        // SAFETY: the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}
