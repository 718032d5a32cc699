//! One HTTP(S) client for Ferry, on hyper, hyper-util and rustls (ring), with no
//! hand-written framing:
//!
//! - [`Endpoint`]: the one parser for server URLs, proxy URLs and `host:port` forms.
//! - [`ProxyConfig`]: the proxy Go's `http.ProxyFromEnvironment` would pick (see
//!   [`proxy`]), used through a `CONNECT` tunnel for `https://` servers, over TLS for an
//!   `https://` proxy (trusting the system roots and [`ClientOptions::proxy_ca_dirs`]).
//! - [`TlsPolicy`]: a pinned SHA-1 thumbprint, or a CA directory with host name
//!   verification, or an explicitly insecure mode that logs a warning; otherwise the
//!   client refuses to connect. A server key the TLS stack cannot use is named by type and
//!   size (see [`tls`]).
//! - [`Client`]: one kept-alive HTTP/1.1 connection, every connection bounded by
//!   [`CONNECT_TIMEOUT`] and every request by [`CALL_TIMEOUT`], bodies capped
//!   ([`DEFAULT_MAX_BODY_BYTES`]), `GET` with a byte `Range`.
//!
//! `ferry-vsphere` posts its SOAP envelopes through it; HTTP image sources use it for
//! ranged reads.

#![forbid(unsafe_code)]
// Every narrowing or sign-dropping `as` in library code is a finding; unit tests build
// their fixtures with plain casts.
#![warn(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
#![cfg_attr(test, allow(clippy::cast_possible_truncation, clippy::cast_sign_loss))]

pub mod client;
pub mod endpoint;
pub mod error;
pub mod proxy;
pub mod tls;

pub use client::{
    BodyStream, CALL_TIMEOUT, CONNECT_TIMEOUT, Client, ClientOptions, DEFAULT_MAX_BODY_BYTES,
    RangeRead, Response, basic_auth,
};
pub use endpoint::{Endpoint, Scheme};
pub use error::Error;
pub use proxy::{Proxy, ProxyConfig, ProxyScheme};
pub use tls::{TlsPolicy, normalize_thumbprint, thumbprint_of};

// Re-exported for callers building requests.
pub use bytes::Bytes;
pub use http_body_util::Full;
pub use hyper::{HeaderMap, Request, StatusCode, header};
