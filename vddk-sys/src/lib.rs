//! `vddk-sys`: libvixDiskLib (VMware VDDK) loaded at run time.
//!
//! ```text
//!  include/vixDiskLib.h ──bindgen (scripts/bindgen.sh, offline)──► src/bindings.rs
//!                                                                   │ raw types and
//!  loader: find libvixDiskLib.so.{9..6} in the libdir, dlopen NOW, ◄┘ VixDiskLibApi
//!          check required symbols, note optional ones
//!  Library: one method per call, doing only what memory safety needs
//!           (C strings kept alive, library-allocated results copied and freed,
//!           async buffers owned until their completion) — no policy.
//! ```
//!
//! Policy — which thread calls what, serializing Open/Close, never mixing sync and
//! async I/O on a handle, retries, error classes — belongs to the importer. All of the
//! project's VDDK `unsafe` lives in this crate.

#![allow(unsafe_code)]
// Every narrowing or sign-dropping `as` in library code is a finding; unit tests build
// their fixtures with plain casts.
#![warn(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
#![cfg_attr(test, allow(clippy::cast_possible_truncation, clippy::cast_sign_loss))]

#[allow(
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    dead_code,
    missing_debug_implementations,
    clippy::all,
    clippy::undocumented_unsafe_blocks,
    unsafe_op_in_unsafe_fn
)]
mod bindings;

mod library;
mod loader;

pub use bindings::*;
pub use library::{
    AsyncBuf, ConnectSpec, Connection, DiskInfo, Handle, Library, LogLevel, LogSink,
    MAX_BLOCK_LIST_ENTRIES,
};
pub use loader::{LoadError, OPTIONAL_SYMBOLS, REQUIRED_SYMBOLS, SONAME_MAJORS, candidates};

/// The low 16 bits of a `VixError`: the error code.
pub fn error_code(e: VixError) -> u64 {
    e & u64::from(VIX_ERROR_CODE_MASK)
}
