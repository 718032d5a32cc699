//! The termination message: one line the kubelet copies into the container status
//! (`terminationMessagePath`, normally `/dev/termination-log`), where CDI's controller and
//! Forklift read it.
//!
//! - Success: CDI's `common.TerminationMessage` as one line of JSON,
//!   `{"scratchSpaceRequired":false,"preallocationApplied":false,"vddkInfo":{"Version":"8.0.2","Host":"esx12.example"},"message":"Import Complete"}`.
//! - Failure: plain text (`Unable to process data: …`), on one line.
//!
//! Both are at most [`TERMINATION_MESSAGE_MAX`] bytes (the kubelet cuts there, and cut
//! JSON would no longer parse): optional fields are shortened first, then the message.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use serde::Serialize;

use super::ReportError;

/// Largest termination message the kubelet keeps.
pub const TERMINATION_MESSAGE_MAX: usize = 4096;
/// Where the kubelet reads it by default.
pub const DEFAULT_TERMINATION_LOG: &str = "/dev/termination-log";
/// CDI's success message.
pub const IMPORT_COMPLETE: &str = "Import Complete";

/// VDDK version and the ESXi host that served the disk (CDI copies them to the PVC
/// annotations `cdi.kubevirt.io/storage.pod.vddk.version` and `.vddk.host`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VddkInfo {
    /// VDDK library version, e.g. `8.0.2`.
    #[serde(rename = "Version")]
    pub version: String,
    /// Host that served the disk.
    #[serde(rename = "Host")]
    pub host: String,
}

/// CDI's `common.TerminationMessage` (the fields Ferry fills), in CDI's field order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TerminationMessage {
    /// Always false: Ferry never needs scratch space.
    pub scratch_space_required: bool,
    /// Whether preallocation really happened (not merely whether it was asked for).
    pub preallocation_applied: bool,
    /// Warm migration: the checkpoint deadline passed (omitted when `None`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline_passed: Option<bool>,
    /// VDDK sources only (omitted when `None`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vddk_info: Option<VddkInfo>,
    /// `Import Complete`.
    pub message: String,
}

impl Default for TerminationMessage {
    fn default() -> Self {
        TerminationMessage {
            scratch_space_required: false,
            preallocation_applied: false,
            deadline_passed: None,
            vddk_info: None,
            message: IMPORT_COMPLETE.to_string(),
        }
    }
}

/// Cut `s` to at most `max` bytes at a char boundary.
fn truncate_at_char(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
}

impl TerminationMessage {
    /// `Import Complete`, no preallocation, no VDDK info.
    pub fn import_complete() -> Self {
        Self::default()
    }

    fn encode(&self) -> String {
        // Only strings and booleans: serialising cannot fail.
        serde_json::to_string(self).unwrap_or_else(|_| {
            format!(r#"{{"scratchSpaceRequired":false,"message":"{IMPORT_COMPLETE}"}}"#)
        })
    }

    /// One line of JSON (no newline in it or after it), at most
    /// [`TERMINATION_MESSAGE_MAX`] bytes: if longer, the longer of the VDDK host and
    /// version is shortened first, then the other, then the message.
    pub fn to_line(&self) -> String {
        let mut m = self.clone();
        loop {
            let line = m.encode();
            let excess = line.len().saturating_sub(TERMINATION_MESSAGE_MAX);
            if excess == 0 {
                return line;
            }
            // Removing `excess` raw bytes removes at least `excess` encoded bytes (JSON
            // escapes only lengthen), so each pass either fits or empties one field.
            let field = match m.vddk_info.as_mut() {
                Some(v) if !v.host.is_empty() || !v.version.is_empty() => {
                    if v.host.len() >= v.version.len() {
                        &mut v.host
                    } else {
                        &mut v.version
                    }
                }
                _ if !m.message.is_empty() => &mut m.message,
                // Nothing left to cut (cannot happen: the fixed part is ~150 bytes).
                _ => return Self::default().encode(),
            };
            let keep = field.len().saturating_sub(excess);
            truncate_at_char(field, keep);
        }
    }
}

/// A failure message as the kubelet should keep it: the lines of `error_text` joined by
/// spaces (each trimmed, blank ones dropped), at most [`TERMINATION_MESSAGE_MAX`] bytes
/// cut at a char boundary.
pub fn failure_line(error_text: &str) -> String {
    let mut line = error_text
        .split(['\n', '\r'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    truncate_at_char(&mut line, TERMINATION_MESSAGE_MAX);
    line
}

/// Write the success message (see [`TerminationMessage::to_line`]) to `path`.
pub fn write_success(path: &Path, msg: &TerminationMessage) -> Result<(), ReportError> {
    write_file(path, msg.to_line().as_bytes())
}

/// Write a failure message (plain text, see [`failure_line`]) to `path`.
pub fn write_failure(path: &Path, error_text: &str) -> Result<(), ReportError> {
    write_file(path, failure_line(error_text).as_bytes())
}

/// Replace the file's contents and sync them (the file, and its directory, are created
/// when missing, as outside a pod).
fn write_file(path: &Path, bytes: &[u8]) -> Result<(), ReportError> {
    let err = |error| ReportError::Termination {
        path: path.to_path_buf(),
        error,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typical() -> TerminationMessage {
        TerminationMessage {
            vddk_info: Some(VddkInfo {
                version: "8.0.2".into(),
                host: "esx12.example".into(),
            }),
            ..TerminationMessage::import_complete()
        }
    }

    #[test]
    fn typical_success_is_cdis_json() {
        assert_eq!(
            typical().to_line(),
            r#"{"scratchSpaceRequired":false,"preallocationApplied":false,"vddkInfo":{"Version":"8.0.2","Host":"esx12.example"},"message":"Import Complete"}"#
        );
        let m = TerminationMessage {
            preallocation_applied: true,
            deadline_passed: Some(true),
            ..TerminationMessage::import_complete()
        };
        assert_eq!(
            m.to_line(),
            r#"{"scratchSpaceRequired":false,"preallocationApplied":true,"deadlinePassed":true,"message":"Import Complete"}"#
        );
    }

    fn parse(line: &str) -> serde_json::Value {
        assert!(
            line.len() <= TERMINATION_MESSAGE_MAX,
            "{} bytes",
            line.len()
        );
        assert!(!line.contains('\n'));
        serde_json::from_str(line).expect("valid JSON")
    }

    #[test]
    fn capped_at_4096_shortening_optional_fields_first() {
        let mut m = typical();
        m.vddk_info = Some(VddkInfo {
            version: "8.0.2".into(),
            host: "h".repeat(10_000),
        });
        let v = parse(&m.to_line());
        assert_eq!(v["vddkInfo"]["Version"], "8.0.2");
        assert_eq!(v["message"], "Import Complete");
        assert!(v["vddkInfo"]["Host"].as_str().unwrap().len() > 3000);
        assert_eq!(m.to_line().len(), TERMINATION_MESSAGE_MAX);

        // Everything huge, with characters JSON must escape and multi-byte ones.
        m.vddk_info = Some(VddkInfo {
            version: "\"\u{1}é".repeat(3000),
            host: "ü\\\n".repeat(3000),
        });
        m.message = "Import Complete ✓ ".repeat(1000);
        let line = m.to_line();
        let v = parse(&line);
        assert_eq!(v["vddkInfo"]["Host"], "");
        assert_eq!(v["vddkInfo"]["Version"], "");
        assert!(
            v["message"]
                .as_str()
                .unwrap()
                .starts_with("Import Complete ✓")
        );
        assert!(line.len() > TERMINATION_MESSAGE_MAX - 8);
    }

    #[test]
    fn failure_is_one_line() {
        assert_eq!(
            failure_line(
                "Unable to process data: reading the source failed\n  caused by: NFC error 5\r\n\nretry"
            ),
            "Unable to process data: reading the source failed caused by: NFC error 5 retry"
        );
        assert_eq!(failure_line("plain"), "plain");
    }

    #[test]
    fn failure_cut_at_a_char_boundary() {
        // 'é' is 2 bytes: 4095 bytes of 'a' then 'é' would end mid-character.
        let text = format!("{}é and more", "a".repeat(4095));
        let line = failure_line(&text);
        assert_eq!(line.len(), 4095);
        assert!(line.chars().all(|c| c == 'a'));
        let text = "€".repeat(2000); // 3 bytes each
        let line = failure_line(&text);
        assert_eq!(line.len(), 4095);
        assert_eq!(line.chars().count(), 1365);
    }

    #[test]
    fn writes_replace_the_file_and_create_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/termination-log");
        write_failure(&path, "first attempt failed\nwith details").unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "first attempt failed with details"
        );
        write_success(&path, &typical()).unwrap();
        let written = std::fs::read_to_string(&path).unwrap();
        assert_eq!(written, typical().to_line());
        parse(&written);
    }

    #[test]
    fn write_error_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        // A directory cannot be opened for writing.
        let err = write_failure(dir.path(), "x").unwrap_err();
        assert!(err.to_string().contains(&dir.path().display().to_string()));
    }
}
