//! What `ferry`'s exit status means, for a controller deciding whether to let the pod
//! restart. CDI's controller reads the termination message only on exit 0; Kubernetes
//! restarts the container on any other status (`RestartPolicy: OnFailure`).

/// The copy completed and is durable (flushed, round marker written).
pub const SUCCESS: u8 = 0;
/// The job failed; the termination message says why (CDI's importer exits 1 too).
pub const FAILURE: u8 = 1;
/// The command line could not be parsed (a bad flag, not a bad variable): a restart
/// cannot help.
pub const USAGE: u8 = 2;
/// Stopped by SIGINT (128 + 2); the target is incomplete.
pub const CANCELLED_SIGINT: u8 = 130;
/// Stopped by SIGTERM (128 + 15), e.g. the pod being deleted; the target is incomplete.
pub const CANCELLED_SIGTERM: u8 = 143;

/// What kind of failure ended a job: the one word a controller (or an operator's
/// script) acts on. `ferry copy` exits with [`ErrorKind::exit_code`]; `ferry import`
/// exits 1 for every failure, as CDI's importer does and CDI's controller expects, and
/// logs the kind on its error line (`"kind":"…"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A bad flag, variable or combination of them: fix the input.
    Usage,
    /// The source could not be reached or was lost (connect, timeout, connection drop):
    /// a later attempt may succeed.
    SourceUnreachable,
    /// Login refused, or the server's identity did not check out (thumbprint, TLS).
    Authentication,
    /// The VM, disk, snapshot or export does not exist.
    NotFound,
    /// The source answered, but with an error or bytes that break its protocol.
    SourceData,
    /// The target cannot be used: missing, the wrong kind, too small, not writable.
    Target,
    /// Writing or flushing the target failed (EIO, ENOSPC).
    TargetIo,
    /// A delta cannot be applied (CBT was reset, the target holds another round): run
    /// a full copy.
    NeedsFullCopy,
    /// Stopped by a signal; the target is incomplete.
    Cancelled,
    /// Anything else (a bug, the host refusing resources).
    Internal,
}

impl ErrorKind {
    /// Every kind, in the order of their exit codes.
    pub const ALL: [ErrorKind; 10] = [
        ErrorKind::Internal,
        ErrorKind::Usage,
        ErrorKind::SourceUnreachable,
        ErrorKind::Authentication,
        ErrorKind::NotFound,
        ErrorKind::SourceData,
        ErrorKind::Target,
        ErrorKind::TargetIo,
        ErrorKind::NeedsFullCopy,
        ErrorKind::Cancelled,
    ];

    /// The name logged and documented (`source_unreachable`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Usage => "usage",
            ErrorKind::SourceUnreachable => "source_unreachable",
            ErrorKind::Authentication => "authentication",
            ErrorKind::NotFound => "not_found",
            ErrorKind::SourceData => "source_data",
            ErrorKind::Target => "target",
            ErrorKind::TargetIo => "target_io",
            ErrorKind::NeedsFullCopy => "needs_full_copy",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Internal => "internal",
        }
    }

    /// `ferry copy`'s exit status for this kind (cancellations use the signal's,
    /// [`CANCELLED_SIGINT`] or [`CANCELLED_SIGTERM`]).
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorKind::Internal => FAILURE,
            ErrorKind::Usage => USAGE,
            ErrorKind::SourceUnreachable => 3,
            ErrorKind::Authentication => 4,
            ErrorKind::NotFound => 5,
            ErrorKind::SourceData => 6,
            ErrorKind::Target => 7,
            ErrorKind::TargetIo => 8,
            ErrorKind::NeedsFullCopy => 9,
            ErrorKind::Cancelled => CANCELLED_SIGTERM,
        }
    }

    /// The kind a `ferry copy` exit status (or `ferry import`'s under
    /// [`crate::env::FERRY_EXIT_CODES`]) stands for; `None` for 0, the signal statuses
    /// and anything else.
    pub fn from_exit_code(code: i64) -> Option<ErrorKind> {
        if code == i64::from(FAILURE) {
            return Some(ErrorKind::Internal);
        }
        ErrorKind::ALL
            .into_iter()
            .filter(|k| *k != ErrorKind::Cancelled)
            .find(|k| i64::from(k.exit_code()) == code)
    }

    /// Whether letting the pod restart (trying again later, unchanged) can help.
    /// Fatal kinds need an operator or a different plan (a full copy).
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            ErrorKind::SourceUnreachable | ErrorKind::SourceData | ErrorKind::Internal
        )
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_distinct_and_documented_names_stable() {
        let codes: std::collections::HashSet<u8> =
            ErrorKind::ALL.iter().map(|k| k.exit_code()).collect();
        assert_eq!(codes.len(), ErrorKind::ALL.len());
        assert_eq!(ErrorKind::NeedsFullCopy.as_str(), "needs_full_copy");
        assert!(ErrorKind::SourceUnreachable.is_transient());
        assert!(!ErrorKind::Authentication.is_transient());
        for k in ErrorKind::ALL {
            if k != ErrorKind::Cancelled {
                assert_eq!(ErrorKind::from_exit_code(i64::from(k.exit_code())), Some(k));
            }
        }
        assert_eq!(ErrorKind::from_exit_code(0), None);
        assert_eq!(ErrorKind::from_exit_code(143), None);
        assert_eq!(ErrorKind::from_exit_code(-1), None);
    }
}
