//! The round marker beside a target ([`ferry_contract::round::Round`]): what the last
//! completed round left there. A delta checks it names the round it starts from; every
//! round removes it before the target changes (until the round completes the target
//! holds no round) and the job runner writes the new one once the copy is durable.

use std::path::Path;

use ferry_contract::round::{MAX_ROUND_MARKER_BYTES, Round};

use crate::error::Error;

/// The round a delta starts from.
#[derive(Debug, Clone)]
pub struct Previous {
    /// The disk (its backing file).
    pub backing_file: String,
    /// The previous checkpoint: a snapshot moref or a change ID.
    pub checkpoint: String,
    /// The change ID the delta's changed areas are counted from.
    pub change_id: String,
}

/// A delta must start from the round the target holds: the marker left by the last
/// completed round must name the same disk and the previous checkpoint (snapshot or
/// change ID). A missing marker (a previous round written by another importer) is only
/// warned about; an unreadable or mismatching one needs a full copy.
pub fn check_previous(marker: &Path, p: &Previous, size: u64) -> Result<(), Error> {
    let (backing, prev) = (p.backing_file.as_str(), p.checkpoint.as_str());
    let full = |reason: String| Error::NeedsFullCopy {
        subject: format!("round marker {}", marker.display()),
        reason,
    };
    let bytes = match std::fs::metadata(marker) {
        Err(_) => {
            tracing::warn!(marker = %marker.display(), "no record of the previous round on this target; trusting it holds checkpoint {prev}");
            return Ok(());
        }
        Ok(m) if m.len() > MAX_ROUND_MARKER_BYTES => {
            return Err(full("too large to be a round marker".into()));
        }
        Ok(_) => std::fs::read(marker).map_err(|e| full(format!("cannot be read: {e}")))?,
    };
    let r = Round::decode(&bytes).map_err(|e| full(format!("corrupt ({e})")))?;
    let same_checkpoint =
        r.snapshot.as_deref() == Some(prev) || r.change_id.as_deref() == Some(&p.change_id);
    if r.backing_file != backing || r.size != size || !same_checkpoint {
        return Err(full(format!(
            "the target holds {} at {} ({} bytes), not the previous checkpoint {prev} of {backing}",
            r.backing_file,
            r.snapshot
                .as_deref()
                .or(r.change_id.as_deref())
                .unwrap_or("a full copy"),
            r.size
        )));
    }
    Ok(())
}

/// The target is about to change: remove its marker, durably (the directory synced).
pub fn clear(marker: &Path) -> Result<(), Error> {
    let failed = |error| Error::Write {
        op: "round marker",
        offset: 0,
        error,
    };
    match std::fs::remove_file(marker) {
        Ok(()) => {
            let dir = marker.parent().unwrap_or(Path::new("."));
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(failed)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(failed(e)),
    }
}

/// Write `round` to `marker` atomically.
pub fn write(marker: &Path, round: &Round) -> Result<(), Error> {
    crate::journal::atomic_replace(marker, &round.encode()).map_err(|reason| Error::Marker {
        path: marker.to_owned(),
        reason,
    })?;
    Ok(())
}
