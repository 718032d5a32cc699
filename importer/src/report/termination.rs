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

use super::ReportError;

pub use ferry_contract::termination::{
    DEFAULT_TERMINATION_LOG, IMPORT_COMPLETE, TERMINATION_MESSAGE_MAX, TerminationMessage,
    VddkInfo, failure_line,
};

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
