//! VDDK failures, mapped to classes an operator can act on, each with the VIX code and
//! the library's own text.

use std::time::Duration;

/// A VDDK failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VddkError {
    /// The library is missing, too old, or unusable (names the paths searched).
    #[error(transparent)]
    Library(#[from] vddk_sys::LoadError),
    /// A `vddk://` URI that cannot be read.
    #[error("invalid vddk:// URI: {reason}")]
    Uri {
        /// What is wrong with it.
        reason: String,
    },
    /// A thumbprint that is not 20 hex pairs.
    #[error(
        "invalid thumbprint {given:?}: expected the server certificate's SHA-1 as 20 hex pairs separated by ':' (AA:BB:…)"
    )]
    BadThumbprint {
        /// What was given (its first 80 characters).
        given: String,
    },
    /// A password file that cannot be read.
    #[error("cannot read password file {}: {error}", path.display())]
    PasswordFile {
        /// The file.
        path: std::path::PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// A password longer than the cap.
    #[error("{from} is longer than {} bytes", super::options::MAX_PASSWORD_LEN)]
    PasswordTooLong {
        /// Where it came from: "password file PATH" or "$VAR".
        from: String,
    },
    /// No password given.
    #[error(
        "no password: give --password-file FILE or set ${}",
        super::options::PASSWORD_ENV
    )]
    NoPassword,
    /// The operator's VDDK config file cannot be read.
    #[error("cannot read VDDK config {}: {error}", path.display())]
    ConfigRead {
        /// The file.
        path: std::path::PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// The operator's VDDK config file is refused.
    #[error("VDDK config {}: {error}", path.display())]
    Config {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        error: super::config::ConfigError,
    },
    /// The VDDK config file handed to the library cannot be written.
    #[error("cannot write the VDDK config file: {0}")]
    ConfigWrite(std::io::Error),
    /// The thread that owns the VDDK handles cannot be started.
    #[error("cannot start the VDDK worker thread: {0}")]
    WorkerThread(std::io::Error),
    /// A VDDK source without one of its required settings.
    #[error("a VDDK source needs {flag} (or its vddk:// URI part)")]
    Missing {
        /// The flag.
        flag: &'static str,
    },
    /// `--transports` names an unknown transport.
    #[error("invalid --transports {given:?}: use a ':' list of file, san, hotadd, nbdssl, nbd")]
    Transports {
        /// What was given.
        given: String,
    },
    /// Wrong user or password.
    #[error("VDDK authentication failed for user {user:?} on {server} (VIX {code}: {text})")]
    Authentication {
        /// User.
        user: String,
        /// Server.
        server: String,
        /// VIX code.
        code: u64,
        /// Library text.
        text: String,
    },
    /// The server's certificate does not match the thumbprint given.
    #[error(
        "VDDK {call} failed (VIX {code}: {text}): the server's certificate does not match thumbprint {thumbprint} — check --thumbprint against vCenter's SHA-1 fingerprint"
    )]
    Thumbprint {
        /// The call.
        call: &'static str,
        /// VIX code.
        code: u64,
        /// Library text.
        text: String,
        /// The thumbprint given.
        thumbprint: String,
    },
    /// The VM, disk file or snapshot does not exist.
    #[error("VDDK {call}: {what} not found (VIX {code}: {text})")]
    NotFound {
        /// The call.
        call: &'static str,
        /// What was looked for.
        what: String,
        /// VIX code.
        code: u64,
        /// Library text.
        text: String,
    },
    /// The ESXi/vCenter NFC server ran out of memory.
    #[error(
        "VDDK {call}: the NFC server is out of memory (VIX {code}: {text}); use smaller requests (--buf-size-in-64k, or vixDiskLib.nfcAio.Session.BufSizeIn64KB in the VDDK config file; 16 or less), fewer in flight (--buf-count / …BufCount) or fewer parallel imports per host"
    )]
    OutOfMemory {
        /// The call.
        call: &'static str,
        /// VIX code.
        code: u64,
        /// Library text.
        text: String,
    },
    /// The host stopped answering or the connection dropped.
    #[error("VDDK {call}: connection to the host lost or timed out (VIX {code}: {text})")]
    ConnectionLost {
        /// The call.
        call: &'static str,
        /// VIX code.
        code: u64,
        /// Library text.
        text: String,
    },
    /// A read did not complete within the timeout.
    #[error("VDDK read at sector {sector} did not complete within {after:?}")]
    Timeout {
        /// Start sector.
        sector: u64,
        /// The bound.
        after: Duration,
    },
    /// Any other failure of a call.
    #[error("VDDK {call} failed (VIX {code}: {text})")]
    Call {
        /// The call.
        call: &'static str,
        /// VIX code.
        code: u64,
        /// Library text.
        text: String,
    },
    /// The VDDK worker thread is gone.
    #[error("the VDDK worker stopped")]
    WorkerGone,
}

/// VIX codes used for classification (reference/vddk.md §1.4).
pub mod vix {
    /// Unknown error (also a thumbprint mismatch).
    pub const E_FAIL: u64 = 1;
    /// Out of memory (also ESXi NFC memory exhaustion).
    pub const E_OUT_OF_MEMORY: u64 = 2;
    /// File not found.
    pub const E_FILE_NOT_FOUND: u64 = 4;
    /// Authentication failed.
    pub const E_AUTHENTICATION_FAIL: u64 = 35;
    /// Host connection lost.
    pub const E_HOST_CONNECTION_LOST: u64 = 36;
    /// Insufficient permissions on the host.
    pub const E_HOST_USER_PERMISSIONS: u64 = 3014;
    /// VM not found.
    pub const E_VM_NOT_FOUND: u64 = 4000;
    /// Snapshot not found.
    pub const E_SNAPSHOT_NOTFOUND: u64 = 13003;
    /// TCP socket error.
    pub const E_HOST_TCP_SOCKET_ERROR: u64 = 14010;
    /// TCP connection lost.
    pub const E_HOST_TCP_CONN_LOST: u64 = 14011;
    /// Cannot connect to host.
    pub const E_CANNOT_CONNECT_TO_HOST: u64 = 18000;
    /// Network connection refused.
    pub const E_HOST_NETWORK_CONN_REFUSED: u64 = 14009;
}

/// What the failing call was about, for classification.
#[derive(Debug, Clone, Default)]
pub struct CallContext {
    /// User name.
    pub user: String,
    /// Server.
    pub server: String,
    /// Thumbprint given, if any.
    pub thumbprint: Option<String>,
    /// What was being opened (VM, disk, snapshot) for not-found messages.
    pub object: String,
}

/// Classify a failed call.
pub fn classify(call: &'static str, code: u64, text: String, ctx: &CallContext) -> VddkError {
    let lower = text.to_ascii_lowercase();
    match code {
        vix::E_AUTHENTICATION_FAIL | vix::E_HOST_USER_PERMISSIONS => VddkError::Authentication {
            user: ctx.user.clone(),
            server: ctx.server.clone(),
            code,
            text,
        },
        // A thumbprint mismatch surfaces as VIX_E_FAIL ("Unknown error") at connect or
        // open; say so when a thumbprint was given and the call was a connect/open.
        // On any other call (a read) it is just a failure, and may pass.
        vix::E_FAIL
            if ctx.thumbprint.is_some()
                && (call == "ConnectEx"
                    || call == "Open"
                    || (lower.contains("thumbprint") && !call.starts_with("Read"))) =>
        {
            VddkError::Thumbprint {
                call,
                code,
                text,
                thumbprint: ctx.thumbprint.clone().unwrap_or_default(),
            }
        }
        vix::E_FILE_NOT_FOUND | vix::E_VM_NOT_FOUND | vix::E_SNAPSHOT_NOTFOUND => {
            VddkError::NotFound {
                call,
                what: match code {
                    vix::E_VM_NOT_FOUND => "the VM".to_string(),
                    vix::E_SNAPSHOT_NOTFOUND => "the snapshot".to_string(),
                    _ => format!("the disk {}", ctx.object),
                },
                code,
                text,
            }
        }
        vix::E_OUT_OF_MEMORY => VddkError::OutOfMemory { call, code, text },
        vix::E_HOST_CONNECTION_LOST
        | vix::E_HOST_TCP_SOCKET_ERROR
        | vix::E_HOST_TCP_CONN_LOST
        | vix::E_CANNOT_CONNECT_TO_HOST
        | vix::E_HOST_NETWORK_CONN_REFUSED => VddkError::ConnectionLost { call, code, text },
        _ => VddkError::Call { call, code, text },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> CallContext {
        CallContext {
            user: "u".into(),
            server: "vc".into(),
            thumbprint: Some("AA:BB".into()),
            object: "[ds] a.vmdk".into(),
        }
    }

    #[test]
    fn code_35_is_authentication() {
        let e = classify("ConnectEx", 35, "Authentication failed".into(), &ctx());
        assert!(matches!(e, VddkError::Authentication { .. }), "{e}");
    }

    #[test]
    fn code_1_at_connect_with_thumbprint_is_a_thumbprint_mismatch() {
        let e = classify("ConnectEx", 1, "Unknown error".into(), &ctx());
        assert!(
            e.to_string().contains("does not match thumbprint AA:BB"),
            "{e}"
        );
    }

    #[test]
    fn code_1_during_a_read_is_a_plain_failure() {
        let e = classify("ReadAsync", 1, "Unknown error".into(), &ctx());
        assert!(matches!(e, VddkError::Call { .. }), "{e}");
    }

    #[test]
    fn code_4_names_the_disk() {
        let e = classify("Open", 4, "not found".into(), &ctx());
        assert!(
            e.to_string().contains("the disk [ds] a.vmdk not found"),
            "{e}"
        );
    }

    #[test]
    fn code_2_suggests_smaller_requests() {
        let e = classify("ReadAsync", 2, "NFC server out of memory".into(), &ctx());
        assert!(e.to_string().contains("--buf-size-in-64k"), "{e}");
    }

    #[test]
    fn network_codes_are_connection_lost() {
        for code in [36, 14009, 14010, 14011, 18000] {
            let e = classify("Open", code, "x".into(), &ctx());
            assert!(matches!(e, VddkError::ConnectionLost { .. }), "{code}: {e}");
        }
    }
}
