//! The termination message: one line the kubelet copies into the container status
//! (`terminationMessagePath`), where CDI's controller and Forklift read it.
//!
//! - Success: CDI's `common.TerminationMessage` as one line of JSON,
//!   `{"scratchSpaceRequired":false,"preallocationApplied":false,"vddkInfo":{"Version":"8.0.2","Host":"esx12.example"},"message":"Import Complete"}`.
//! - Failure: plain text (`Unable to process data: …`), on one line.
//!
//! Both are at most [`TERMINATION_MESSAGE_MAX`] bytes (the kubelet cuts there, and cut
//! JSON would no longer parse): optional fields are shortened first, then the message.
//! [`TerminationMessage::parse`] reads a success line back, as a controller does.

use serde::{Deserialize, Serialize};

/// Largest termination message the kubelet keeps.
pub const TERMINATION_MESSAGE_MAX: usize = 4096;
/// Where the kubelet reads it by default.
pub const DEFAULT_TERMINATION_LOG: &str = "/dev/termination-log";
/// CDI's success message.
pub const IMPORT_COMPLETE: &str = "Import Complete";

/// VDDK version and the ESXi host that served the disk (CDI copies them to the PVC
/// annotations `cdi.kubevirt.io/storage.pod.vddk.version` and `.vddk.host`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VddkInfo {
    /// VDDK library version, e.g. `8.0.2`.
    #[serde(rename = "Version")]
    pub version: String,
    /// Host that served the disk.
    #[serde(rename = "Host")]
    pub host: String,
}

/// CDI's `common.TerminationMessage` (the fields Ferry fills), in CDI's field order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TerminationMessage {
    /// True only when an image that needs random access arrived as a stream and no
    /// scratch volume is mounted: CDI then starts the pod again with one.
    #[serde(default)]
    pub scratch_space_required: bool,
    /// Whether preallocation really happened (not merely whether it was asked for).
    #[serde(default)]
    pub preallocation_applied: bool,
    /// Warm migration: the checkpoint deadline passed (omitted when `None`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline_passed: Option<bool>,
    /// VDDK sources only (omitted when `None`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vddk_info: Option<VddkInfo>,
    /// Registry sources: labels from the image's `*KUBEVIRT_IO_*` environment (CDI's
    /// `envsToLabels`), which CDI's controller copies onto the volume (omitted when
    /// empty).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
    /// `Import Complete`.
    #[serde(default)]
    pub message: String,
}

impl Default for TerminationMessage {
    fn default() -> Self {
        TerminationMessage {
            scratch_space_required: false,
            preallocation_applied: false,
            deadline_passed: None,
            vddk_info: None,
            labels: std::collections::BTreeMap::new(),
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
    /// [`TERMINATION_MESSAGE_MAX`] bytes: if longer, the labels are dropped (the last
    /// first), then the longer of the VDDK host and version is shortened, then the
    /// other, then the message.
    pub fn to_line(&self) -> String {
        let mut m = self.clone();
        loop {
            let line = m.encode();
            let excess = line.len().saturating_sub(TERMINATION_MESSAGE_MAX);
            if excess == 0 {
                return line;
            }
            if m.labels.pop_last().is_some() {
                continue;
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

impl TerminationMessage {
    /// Read a success line back (CDI's controller does this only for exit code 0).
    pub fn parse(line: &str) -> Result<TerminationMessage, serde_json::Error> {
        serde_json::from_str(line.trim_end_matches('\n'))
    }
}

/// The prefix of every failure message (CDI's importer: `ProcessData` failed).
pub const FAILURE_PREFIX: &str = "Unable to process data: ";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdis_success_line_reads_back() {
        let cdi = r#"{"scratchSpaceRequired":false,"preallocationApplied":true,"vddkInfo":{"Version":"8.0.1","Host":"esx1.example"},"message":"Import Complete"}"#;
        let m = TerminationMessage::parse(cdi).unwrap();
        assert!(m.preallocation_applied);
        assert_eq!(m.vddk_info.as_ref().unwrap().host, "esx1.example");
        assert_eq!(m.to_line(), cdi, "Ferry writes the same line");
        // CDI omits what it does not set; a blank import has no vddkInfo.
        let blank = TerminationMessage::parse(
            r#"{"preallocationApplied":false,"message":"Import Complete"}"#,
        )
        .unwrap();
        assert_eq!(blank, TerminationMessage::import_complete());
        assert!(TerminationMessage::parse("Unable to process data: x").is_err());
    }

    #[test]
    fn long_fields_are_cut_to_the_kubelet_limit() {
        let m = TerminationMessage {
            vddk_info: Some(VddkInfo {
                version: "8".into(),
                host: "h".repeat(10_000),
            }),
            ..TerminationMessage::import_complete()
        };
        let line = m.to_line();
        assert!(line.len() <= TERMINATION_MESSAGE_MAX);
        assert!(TerminationMessage::parse(&line).is_ok());
        assert!(failure_line(&"é".repeat(5000)).len() <= TERMINATION_MESSAGE_MAX);
        let mut m = TerminationMessage::import_complete();
        for i in 0..100 {
            m.labels
                .insert(format!("instancetype.kubevirt.io/l{i:03}"), "v".repeat(60));
        }
        let line = m.to_line();
        assert!(line.len() <= TERMINATION_MESSAGE_MAX);
        let back = TerminationMessage::parse(&line).unwrap();
        assert!(!back.labels.is_empty() && back.labels.len() < 100);
        assert!(
            back.labels.contains_key("instancetype.kubevirt.io/l000"),
            "the first kept"
        );
        assert_eq!(back.message, IMPORT_COMPLETE);
    }
}
