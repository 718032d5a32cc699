//! `ferry-nbd`: Ferry's NBD client.
//!
//! Two layers, as in rustls: [`codec`] is sans-IO (pure encode/decode over byte slices,
//! every peer-supplied length capped by a named constant), and [`client`] is a thin tokio
//! driver that keeps many requests in flight on one connection, matched by cookie.
//! [`uri`] parses NBD URIs. The crate knows nothing of files, VDDK or Kubernetes.
#![forbid(unsafe_code)]
// Every narrowing or sign-dropping `as` in library code is a finding; unit tests build
// their fixtures with plain casts.
#![warn(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
#![cfg_attr(test, allow(clippy::cast_possible_truncation, clippy::cast_sign_loss))]

pub mod client;
pub mod codec;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod tls;
pub mod uri;

pub use client::{Client, ConnectOptions, ExportInfo, ReadBuf};
pub use codec::{BlockDescriptor, BlockSize, STATE_DIRTY, STATE_HOLE, STATE_ZERO};
pub use error::{Error, ProtocolError, Result};
pub use uri::{Address, Uri};
