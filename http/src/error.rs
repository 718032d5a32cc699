//! The error type of the HTTP client.

use std::time::Duration;

/// Everything that can go wrong making an HTTP(S) request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The caller's input cannot be used: URL, thumbprint, CA directory, proxy.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The TLS handshake or the server identity check failed, or no way to check the
    /// server's identity was given (no thumbprint, no CA directory, not insecure).
    #[error("TLS: {message}")]
    Tls {
        /// What went wrong, e.g. "thumbprint mismatch: server presented AA:… expected BB:…".
        message: String,
    },
    /// The TCP connection, the proxy tunnel or the TLS session to the proxy could not be
    /// made.
    #[error("cannot connect to {address}: {message}")]
    Connect {
        /// `host:port` that was dialled, or `proxy host:port`.
        address: String,
        /// The underlying reason.
        message: String,
    },
    /// An I/O error on an established connection (reset, closed early).
    #[error("connection to {address} failed during {operation}: {message}")]
    Transport {
        /// `host:port`.
        address: String,
        /// The request in flight.
        operation: String,
        /// The underlying reason.
        message: String,
    },
    /// A bound on time was reached.
    #[error("{operation} timed out after {after:?}")]
    Timeout {
        /// What was being waited for ("connect to vc:443", "RetrievePropertiesEx on vc:443").
        operation: String,
        /// The bound that was reached.
        after: Duration,
    },
    /// A response body larger than the client's cap.
    #[error("{operation}: response {} the {limit}-byte limit", match .declared {
        Some(n) => format!("of {n} bytes exceeds"),
        None => "exceeds".to_string(),
    })]
    TooLarge {
        /// The request.
        operation: String,
        /// The cap ([`crate::ClientOptions::max_body_bytes`]).
        limit: usize,
        /// The `Content-Length` the server declared, when it did.
        declared: Option<u64>,
    },
    /// A request that could not be built.
    #[error("cannot build the {operation} request: {message}")]
    Request {
        /// The request.
        operation: String,
        /// Why.
        message: String,
    },
}

impl Error {
    /// True for errors that may go away if the same request is made again later:
    /// timeouts and connection failures. Identity and configuration errors are not.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Connect { .. } | Error::Transport { .. } | Error::Timeout { .. }
        )
    }
}
