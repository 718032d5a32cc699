//! The call log (FAKE_VDDK_LOG): one line per call, each written with a single
//! `write(2)` on an `O_APPEND` file so lines from several threads never interleave.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

/// Where call lines go (nowhere when FAKE_VDDK_LOG is unset).
#[derive(Debug)]
pub(crate) struct CallLog {
    file: Option<File>,
}

impl CallLog {
    /// Open (create, append) the log file.
    pub fn open(path: Option<&Path>) -> std::io::Result<CallLog> {
        let file = path
            .map(|p| OpenOptions::new().create(true).append(true).open(p))
            .transpose()?;
        Ok(CallLog { file })
    }

    /// A log for a violation found before InitEx read the configuration.
    pub fn from_env() -> CallLog {
        let path = std::env::var_os("FAKE_VDDK_LOG").filter(|p| !p.is_empty());
        CallLog::open(path.as_deref().map(Path::new)).unwrap_or(CallLog { file: None })
    }

    /// Append one line (newlines inside it are escaped so it stays one line).
    pub fn line(&self, s: &str) {
        let Some(f) = &self.file else { return };
        let mut b = s.replace('\n', "\\n").into_bytes();
        b.push(b'\n');
        // One write per line: with O_APPEND the kernel places it atomically at the end.
        let _ = (&*f).write(&b);
    }
}

/// Log a broken rule of the real library: to the call log and to stderr.
pub(crate) fn violation(log: &CallLog, rule: &str, detail: &str) {
    let line = format!("VIOLATION {rule}: {detail}");
    log.line(&line);
    let _ = writeln!(std::io::stderr(), "fake-vddk: {line}");
}
