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
