//! `ferry`: the data plane that moves virtual disks into Kubernetes volumes.
//!
//! One flow (see DESIGN.md): a [`source::Source`] describes and reads the disk, the
//! [`copy`] pipeline plans extents and streams them through one pool of [`buf::Buf`]s,
//! and a [`sink::Sink`] writes them with an [`engine::IoEngine`] (io_uring or plain
//! syscalls). Unsafe code lives only in the io_uring engine.
#![deny(unsafe_code)]
// Every narrowing or sign-dropping `as` in library code is a finding; unit tests build
// their fixtures with plain casts.
#![warn(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
#![cfg_attr(test, allow(clippy::cast_possible_truncation, clippy::cast_sign_loss))]

pub mod buf;
pub mod cgroup;
pub mod checksum;
pub mod copy;
pub mod cpu;
pub mod delta;
pub mod digest;
#[allow(unsafe_code)]
pub mod engine;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod http_server;
pub mod import;
pub mod inspect;
pub mod job;
pub mod journal;
pub mod memory;
pub mod num;
pub mod progress;
pub mod report;
pub mod retry;
pub mod round;
pub mod sink;
pub mod source;
#[cfg(test)]
mod test_support;
pub mod upload;

pub use error::Error;
