//! The resume journal on disk (format: `ferry_cbt::journal`).
//!
//! The copy records how far it has durably got — the target is flushed first — by
//! replacing the journal atomically (write a temporary file, fsync it, rename it over
//! the journal, fsync the directory). On start, a journal that matches the copy resumes
//! it; one that does not (another source, size, plan or target), or that is corrupt or
//! truncated, is discarded with a log line. A finished copy removes its journal.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

pub use ferry_cbt::journal::{Journal, JournalIdentity};

use crate::error::Error;

/// A journal for one copy.
#[derive(Debug)]
pub struct JournalFile {
    path: PathBuf,
    identity: JournalIdentity,
}

fn dir_of(p: &Path) -> &Path {
    p.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

fn sync_dir(p: &Path) -> std::io::Result<()> {
    File::open(dir_of(p))?.sync_all()
}

impl JournalFile {
    /// Open the journal at `path` for the copy `identity`; returns it and the offset to
    /// resume from (0 when there is no journal, or it is not trusted).
    pub fn open(path: &Path, identity: JournalIdentity) -> (JournalFile, u64) {
        let resume = match std::fs::metadata(path) {
            Err(_) => 0,
            Ok(m) if m.len() > ferry_cbt::journal::MAX_JOURNAL_BYTES as u64 => {
                tracing::warn!(path = %path.display(), "discarding the resume journal: too large to be ours");
                0
            }
            Ok(_) => match std::fs::read(path)
                .map_err(|e| e.to_string())
                .and_then(|b| ferry_cbt::journal::decode(&b).map_err(|e| e.to_string()))
            {
                Err(why) => {
                    tracing::warn!(path = %path.display(), reason = %why, "discarding the resume journal: not trusted; copying from the start");
                    0
                }
                Ok(j) if j.identity != identity => {
                    tracing::warn!(
                        path = %path.display(), journal_source = %j.identity.source, journal_plan = %j.identity.plan,
                        journal_size = j.identity.size, journal_target = %j.identity.target,
                        "discarding the resume journal: it belongs to another copy; copying from the start"
                    );
                    0
                }
                Ok(j) => {
                    tracing::info!(path = %path.display(), watermark = j.watermark, size = identity.size, "resuming from the journal");
                    j.watermark
                }
            },
        };
        (
            JournalFile {
                path: path.to_owned(),
                identity,
            },
            resume,
        )
    }

    /// [`JournalFile::open`] when the copy has a journal path; `(None, 0)` otherwise. The
    /// identity is only built when needed.
    pub fn open_optional(
        path: Option<&Path>,
        identity: impl FnOnce() -> JournalIdentity,
    ) -> (Option<std::sync::Arc<JournalFile>>, u64) {
        match path {
            None => (None, 0),
            Some(p) => {
                let (j, start) = JournalFile::open(p, identity());
                (Some(std::sync::Arc::new(j)), start)
            }
        }
    }

    /// The journal's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Record that every byte below `watermark` is durably on the target (the caller
    /// flushed the target first).
    pub fn record(&self, watermark: u64) -> Result<(), Error> {
        let j = Journal {
            identity: self.identity.clone(),
            watermark,
        };
        let bytes = ferry_cbt::journal::encode(&j)
            .map_err(|e| Error::Usage(format!("resume journal: {e}")))?;
        let tmp = self.path.with_extension("tmp");
        let io = |op: &'static str, e: std::io::Error| Error::Write {
            op,
            offset: watermark,
            error: e,
        };
        let mut f = File::create(&tmp).map_err(|e| io("journal write", e))?;
        f.write_all(&bytes).map_err(|e| io("journal write", e))?;
        f.sync_all().map_err(|e| io("journal fsync", e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| io("journal rename", e))?;
        sync_dir(&self.path).map_err(|e| io("journal directory fsync", e))?;
        tracing::debug!(watermark, "journal recorded");
        Ok(())
    }

    /// The copy finished and was flushed: remove the journal.
    pub fn finish(&self) -> Result<(), Error> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(Error::Write {
                    op: "journal remove",
                    offset: 0,
                    error: e,
                });
            }
        }
        sync_dir(&self.path).map_err(|e| Error::Write {
            op: "journal directory fsync",
            offset: 0,
            error: e,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(size: u64) -> JournalIdentity {
        JournalIdentity {
            source: "nbd+unix:///?socket=/s".into(),
            size,
            plan: "full".into(),
            target: "/t".into(),
        }
    }

    #[test]
    fn a_recorded_journal_resumes_a_matching_copy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("j");
        let (j, start) = JournalFile::open(&p, id(1 << 30));
        assert_eq!(start, 0);
        j.record(1 << 20).expect("record");
        let (_, start) = JournalFile::open(&p, id(1 << 30));
        assert_eq!(start, 1 << 20);
    }

    #[test]
    fn a_foreign_journal_is_discarded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("j");
        let (j, _) = JournalFile::open(&p, id(1 << 30));
        j.record(1 << 20).expect("record");
        let (_, start) = JournalFile::open(&p, id(2 << 30));
        assert_eq!(start, 0);
    }

    #[test]
    fn a_corrupt_or_truncated_journal_is_discarded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("j");
        let (j, _) = JournalFile::open(&p, id(1 << 30));
        j.record(1 << 20).expect("record");
        let good = std::fs::read(&p).expect("read");
        std::fs::write(&p, &good[..good.len() - 3]).expect("truncate");
        assert_eq!(JournalFile::open(&p, id(1 << 30)).1, 0);
        let mut bad = good.clone();
        bad[40] ^= 0x10;
        std::fs::write(&p, &bad).expect("corrupt");
        assert_eq!(JournalFile::open(&p, id(1 << 30)).1, 0);
    }

    #[test]
    fn finish_removes_the_journal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("j");
        let (j, _) = JournalFile::open(&p, id(1 << 30));
        j.record(4096).expect("record");
        j.finish().expect("finish");
        assert!(!p.exists());
    }
}
