//! Errors of the NBD client.
//!
//! [`ProtocolError`] is what the sans-IO codec reports about bytes it was given;
//! [`Error`] is what the client reports to its caller. Every variant says who is
//! likely at fault: the server (protocol, refusal, request errors), the network
//! (connect, disconnect, timeout), or the caller (URI, invalid request).

use std::io;
use std::time::Duration;

/// A violation of the NBD protocol found in bytes from the server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A magic number was wrong: the peer is not an NBD server, or the stream is out of step.
    #[error("invalid {what} magic 0x{got:x}")]
    BadMagic {
        /// Which message.
        what: &'static str,
        /// The value received.
        got: u64,
    },
    /// A message was shorter than its fields.
    #[error("truncated message")]
    Truncated,
    /// A length exceeded the client's cap.
    #[error("{what} of {len} bytes exceeds the limit of {max}")]
    TooLong {
        /// Which length.
        what: &'static str,
        /// Announced length.
        len: u64,
        /// The cap.
        max: u64,
    },
    /// The server uses a protocol feature this client does not implement.
    #[error("{0} not supported")]
    Unsupported(&'static str),
    /// Any other malformed message.
    #[error("{0}")]
    Invalid(String),
}

/// An error from the NBD client.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The URI could not be parsed (caller's fault).
    #[error("invalid NBD URI {uri:?}: {reason}")]
    Uri {
        /// The URI as given.
        uri: String,
        /// What is wrong.
        reason: String,
    },
    /// Could not reach the server.
    #[error("cannot connect to NBD server at {target}: {message}")]
    Connect {
        /// Address or socket path.
        target: String,
        /// The OS error.
        message: String,
        /// The OS error kind.
        kind: io::ErrorKind,
    },
    /// The server broke the protocol.
    #[error("NBD protocol error from server: {0}")]
    Protocol(ProtocolError),
    /// The server refused an option during negotiation.
    #[error("NBD server refused {option}: {reason}{message}")]
    Refused {
        /// Option name.
        option: &'static str,
        /// Reply error name.
        reason: &'static str,
        /// Server's message, with a leading ": " when present.
        message: String,
    },
    /// A feature the server or client lacks.
    #[error("{0}")]
    Unsupported(String),
    /// The server answered a request with an error.
    #[error("NBD server failed {command} at offset {offset}: {errno}{message}")]
    Request {
        /// Command name.
        command: &'static str,
        /// Request offset.
        offset: u64,
        /// Error name (EIO, ...).
        errno: &'static str,
        /// Server's message, with a leading ": " when present.
        message: String,
    },
    /// The connection ended.
    #[error("NBD server closed the connection{0}")]
    Disconnected(String),
    /// A bounded wait expired.
    #[error("NBD {what} timed out after {after:?}")]
    Timeout {
        /// What was waited for.
        what: &'static str,
        /// How long.
        after: Duration,
    },
    /// An I/O error on the connection.
    #[error("I/O error on NBD connection: {message}")]
    Io {
        /// The OS error kind.
        kind: io::ErrorKind,
        /// The OS error text.
        message: String,
    },
    /// TLS could not be set up or the server's certificate was refused (`nbds://`), or
    /// the server requires TLS on a plain `nbd://` URI.
    #[error("NBD over TLS to {target}: {message}")]
    Tls {
        /// Address or socket path.
        target: String,
        /// What went wrong, and what to change.
        message: String,
    },
    /// A plain `nbd://` connection to a server that requires TLS.
    #[error(
        "the NBD server requires TLS: connect with nbds:// (or nbds+unix://) and tls-certificates=DIR"
    )]
    TlsRequired,
    /// The caller asked for something the export does not allow.
    #[error("invalid NBD request: {0}")]
    InvalidRequest(String),
}

impl From<ProtocolError> for Error {
    fn from(e: ProtocolError) -> Self {
        Error::Protocol(e)
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::UnexpectedEof => Error::Disconnected(" unexpectedly".into()),
            io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted => Error::Disconnected(format!(" ({e})")),
            _ => Error::Io {
                kind: e.kind(),
                message: e.to_string(),
            },
        }
    }
}

/// Result alias for the client.
pub type Result<T, E = Error> = std::result::Result<T, E>;
