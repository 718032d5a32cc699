//! What a filesystem or block target carries besides the disk's bytes, and the names
//! of those files: the round marker (which warm round the target holds, so a delta
//! starts only from its own previous round), the resume journal's names, and the
//! sizes and modes CDI gives the image.

use serde::{Deserialize, Serialize};

/// The round marker's name beside disk.img.
pub const ROUND_MARKER_NAME: &str = "disk.img.ferry-round";
/// The resume journal's name beside disk.img.
pub const JOURNAL_NAME: &str = "disk.img.ferry-journal";
/// Directory for block mode's journal inside the VDDK library's parent directory (CDI's
/// emptyDir at /opt).
pub const BLOCK_STATE_DIR: &str = "ferry-state";
/// Block mode's journal name there (its round marker is this name + `.round`).
pub const BLOCK_JOURNAL_NAME: &str = "block.ferry-journal";
/// Mode of a finished disk.img (CDI chmods it to 0660).
pub const DISK_IMG_MODE: u32 = 0o660;
/// CDI aligns a filesystem volume's usable size down to this.
pub const USABLE_ALIGN: u64 = 1024 * 1024;
/// Cap on a round marker's size.
pub const MAX_ROUND_MARKER_BYTES: u64 = 16 * 1024;

/// What the last completed round wrote onto this target: a delta must start from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Round {
    /// IMPORTER_BACKING_FILE of the disk.
    pub backing_file: String,
    /// The snapshot copied (None for a plain cold import).
    pub snapshot: Option<String>,
    /// The disk's change ID in that snapshot, when CBT was on.
    pub change_id: Option<String>,
    /// Disk size.
    pub size: u64,
}

impl Round {
    /// The marker's bytes (one JSON object).
    pub fn encode(&self) -> Vec<u8> {
        // Strings, an optional string and a number: serialising cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Read a marker; more than [`MAX_ROUND_MARKER_BYTES`] is refused.
    pub fn decode(bytes: &[u8]) -> Result<Round, String> {
        if bytes.len() as u64 > MAX_ROUND_MARKER_BYTES {
            return Err(format!(
                "{} bytes, more than the {MAX_ROUND_MARKER_BYTES}-byte limit",
                bytes.len()
            ));
        }
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_round_trip_and_junk_is_refused() {
        let r = Round {
            backing_file: "[ds1] vm1/vm1.vmdk".into(),
            snapshot: Some("snapshot-7".into()),
            change_id: Some("52 aa-bb/7".into()),
            size: 1 << 30,
        };
        assert_eq!(Round::decode(&r.encode()).unwrap(), r);
        assert!(Round::decode(b"{}").is_err());
        assert!(Round::decode(&vec![b' '; 20_000]).is_err());
    }
}
