//! The error type of every call.

use std::time::Duration;

/// Everything that can go wrong talking to vSphere.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The caller's input cannot be used: endpoint, thumbprint, CA directory, proxy.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The TLS handshake or the server identity check failed, or no way to check the
    /// server's identity was given (no thumbprint, no CA directory, not insecure).
    #[error("TLS: {message}")]
    Tls {
        /// What went wrong, e.g. "thumbprint mismatch: server presented AA:… expected BB:…".
        message: String,
    },
    /// The TCP connection (or the proxy tunnel) could not be made.
    #[error("cannot connect to {address}: {message}")]
    Connect {
        /// `host:port` that was dialled.
        address: String,
        /// The underlying reason.
        message: String,
    },
    /// An I/O error on an established connection (reset, closed early).
    #[error("connection to {address} failed during {operation}: {message}")]
    Transport {
        /// `host:port`.
        address: String,
        /// The SOAP method in flight.
        operation: String,
        /// The underlying reason.
        message: String,
    },
    /// A bound on time was reached.
    #[error("{operation} timed out after {after:?}")]
    Timeout {
        /// What was being waited for ("connect to vc:443", "RetrievePropertiesEx").
        operation: String,
        /// The bound that was reached.
        after: Duration,
    },
    /// The server refused the user name or password (`InvalidLogin` fault).
    #[error("vSphere login failed for user {user:?}: {message}")]
    Authentication {
        /// The user name (never the password).
        user: String,
        /// The server's fault string.
        message: String,
    },
    /// The VM, disk, snapshot or object does not exist.
    #[error("not found: {what}")]
    NotFound {
        /// What was looked for.
        what: String,
    },
    /// More than one object matches, so picking one could pick the wrong VM (F9).
    #[error("ambiguous: {what} matches {candidates:?}; {hint}")]
    Ambiguous {
        /// What was looked for.
        what: String,
        /// The morefs that match.
        candidates: Vec<String>,
        /// What to give instead.
        hint: &'static str,
    },
    /// vCenter refused a CBT change ID for `QueryChangedDiskAreas` (`FileFault`, or
    /// `InvalidArgument` about `changeId`): CBT was reset, or the change ID belongs to
    /// another CBT epoch. The changed areas cannot be known; a full copy is needed.
    #[error("CBT change ID {change_id:?} cannot be used: {message}")]
    ChangeIdInvalid {
        /// The change ID that was refused.
        change_id: String,
        /// The server's fault, and that a full copy is needed.
        message: String,
    },
    /// A vSphere task ended in the `error` state (`TaskInfo.error`): e.g. a
    /// `CreateSnapshot_Task` that failed with `FileFault`, a power task refused with
    /// `InvalidPowerState`.
    #[error("vSphere task {task} ({operation}) failed with {fault}: {message}")]
    TaskFailed {
        /// The task moref.
        task: String,
        /// The task's `info.name` (or `descriptionId`), e.g.
        /// `vim.VirtualMachine.createSnapshot`.
        operation: String,
        /// The fault type (`error.fault`'s `xsi:type`), e.g. `FileFault`.
        fault: String,
        /// `error.localizedMessage`.
        message: String,
    },
    /// Any other SOAP fault, by its vim25 type name (`NoPermission`, `InvalidArgument`, …).
    #[error("vSphere fault {name} during {operation}: {message}")]
    Fault {
        /// The fault type, e.g. `NotAuthenticated`.
        name: String,
        /// The fault string.
        message: String,
        /// The SOAP method that failed.
        operation: String,
    },
    /// The server answered with an HTTP status that carries no SOAP fault.
    #[error("HTTP status {status} from {operation}: {snippet}")]
    Http {
        /// The status code.
        status: u16,
        /// The SOAP method.
        operation: String,
        /// The start of the body, for the log.
        snippet: String,
    },
    /// A malformed, unexpected or oversized response.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl Error {
    /// True for the fault vSphere returns when the session cookie is no longer valid.
    pub fn is_not_authenticated(&self) -> bool {
        matches!(self, Error::Fault { name, .. } if name == "NotAuthenticated")
    }

    /// The vim25 fault type of a SOAP fault or a failed task, e.g. `FileFault`.
    pub fn fault_name(&self) -> Option<&str> {
        match self {
            Error::Fault { name, .. } => Some(name),
            Error::TaskFailed { fault, .. } => Some(fault),
            _ => None,
        }
    }

    /// True for errors that may go away if the same call is made again later
    /// (timeouts, connection failures, 5xx without a fault). Identity, authentication and
    /// lookup errors are not retryable.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Connect { .. } | Error::Transport { .. } | Error::Timeout { .. } => true,
            Error::Http { status, .. } => *status >= 500,
            _ => false,
        }
    }
}

impl From<ferry_http::Error> for Error {
    fn from(e: ferry_http::Error) -> Self {
        use ferry_http::Error as H;
        match e {
            H::Config(m) => Error::Config(m),
            H::Tls { message } => Error::Tls { message },
            H::Connect { address, message } => Error::Connect { address, message },
            H::Transport {
                address,
                operation,
                message,
            } => Error::Transport {
                address,
                operation,
                message,
            },
            H::Timeout { operation, after } => Error::Timeout { operation, after },
            e @ (H::TooLarge { .. } | H::Request { .. }) => Error::Protocol(e.to_string()),
            other => Error::Protocol(other.to_string()),
        }
    }
}

impl From<crate::soap::ParseError> for Error {
    fn from(e: crate::soap::ParseError) -> Self {
        Error::Protocol(e.to_string())
    }
}
