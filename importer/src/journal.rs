//! The resume journal on disk (format: `ferry_cbt::journal`).
//!
//! A journal is trusted only when it describes this very copy onto this very target:
//!
//! 1. [`JournalFile::open`] (before the target is opened) checks the path: its directory
//!    exists; it is not the source, the target or another protected file (compared by
//!    device and inode, or by path when one does not exist yet); and if something is
//!    there, it is a regular file that begins like a Ferry journal. Anything else is
//!    refused with one line before a byte is copied, so a journal path can never
//!    overwrite or remove a file that is not a journal.
//! 2. [`JournalFile::begin`] (after the target is opened) compares the recorded identity
//!    — source, size, plan, target path, and the target's identity (device and inode and
//!    birth time of a file, or a block device's number, size and serial) as the copy left
//!    it — with what is there now. A target this copy just created never resumes. Then it
//!    writes a first record at once, so a journal that cannot be written fails now,
//!    naming the journal.
//! 3. [`JournalFile::verify`] (in the copy, before planning) reads each recorded sample
//!    back from the target and from the source: a recreated or re-provisioned target, or
//!    a source whose bytes changed, cannot match. Any mismatch discards the journal with
//!    a log line and the copy starts from zero.
//!
//! A copy that builds the disk's digest keeps its finished group hashes (32 bytes per
//! 64 MiB) in the digest file beside the journal (`JOURNAL.digest`: a magic line, then
//! the hashes in order), written at their place and fdatasynced before the journal names
//! how many there are and their BLAKE3 (`digest GROUPS HASH`). A resume takes up exactly
//! the groups named, only if they hash to it, and lowers its start to their end: so a
//! resumed copy still has the whole disk's digest, having re-read at most 64 MiB more.
//! The digest file is checked like the journal (never the source or the target, never a
//! file that does not begin with the magic line) and removed with it.
//!
//! Progress is recorded by atomic replace (a uniquely named temporary file created with
//! O_EXCL beside the journal, fsynced, renamed over the journal, the directory fsynced),
//! after the target was flushed. A finished copy removes the journal only after proving
//! it is the file this copy last wrote.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use ferry_cbt::journal::DigestMark;
pub use ferry_cbt::journal::{Journal, JournalIdentity, MAX_JOURNAL_SAMPLES, Sample};

use crate::digest::{Digester, GROUP, Hash};

use crate::buf::Buf;
use crate::error::Error;
use crate::sink::Sink;
use crate::source::Source;

/// Completed writes kept as sample candidates between two records (the ones just below
/// the durable prefix are picked; older ones are dropped first).
pub const MAX_SAMPLE_CANDIDATES: usize = 256;
/// Bytes of a written request that one sample covers (at least the copy's alignment).
pub const SAMPLE_BYTES: u64 = 4096;
/// Attempts at a unique temporary name before giving up.
const MAX_TEMP_ATTEMPTS: u32 = 64;
/// Suffix of the temporary files an atomic replace writes beside its file.
const TEMP_SUFFIX: &str = ".ferry-tmp";
/// The digest file's name is the journal's with this appended.
pub const DIGEST_FILE_SUFFIX: &str = ".digest";
/// What a digest file begins with.
pub const DIGEST_FILE_MAGIC: &[u8] = b"ferry-digest-groups 1\n";
/// Bytes per kept group hash.
const GROUP_HASH_BYTES: u64 = 32;

fn dir_of(p: &Path) -> &Path {
    p.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

fn sync_dir(p: &Path) -> std::io::Result<()> {
    File::open(dir_of(p))?.sync_all()
}

/// The path with its directory resolved (the file itself need not exist).
fn resolved(p: &Path) -> Option<PathBuf> {
    let dir = std::fs::canonicalize(dir_of(p)).ok()?;
    Some(dir.join(p.file_name()?))
}

/// Whether `a` and `b` name the same file: same device and inode when both exist,
/// otherwise the same resolved path.
pub fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        (Err(_), _) | (_, Err(_)) => resolved(a).is_some_and(|x| Some(x) == resolved(b)),
    }
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A temporary name beside `path` that no other file has: `.NAME.PID.N.ferry-tmp`,
/// created with O_EXCL (never derived by replacing an extension, so it can never be the
/// file itself or a neighbour).
fn create_temp(path: &Path) -> std::io::Result<(PathBuf, File)> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut last = None;
    for _ in 0..MAX_TEMP_ATTEMPTS {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir_of(path).join(format!(".{name}.{}.{n}{TEMP_SUFFIX}", std::process::id()));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .mode(0o600)
            .open(&tmp)
        {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no unique temporary name")))
}

/// Replace `path` atomically with `bytes`: a unique temporary file is written and
/// fsynced, renamed over `path`, and the directory fsynced. Returns the new file's
/// (device, inode). Used for the journal and the import's round marker.
pub fn atomic_replace(path: &Path, bytes: &[u8]) -> Result<(u64, u64), String> {
    let (tmp, mut f) =
        create_temp(path).map_err(|e| format!("cannot create a temporary file: {e}"))?;
    let written = (|| -> Result<(u64, u64), String> {
        f.write_all(bytes).map_err(|e| format!("write: {e}"))?;
        f.sync_all().map_err(|e| format!("fsync: {e}"))?;
        let m = f.metadata().map_err(|e| format!("stat: {e}"))?;
        std::fs::rename(&tmp, path).map_err(|e| format!("rename: {e}"))?;
        Ok((m.dev(), m.ino()))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    let id = written?;
    sync_dir(path).map_err(|e| format!("directory fsync: {e}"))?;
    Ok(id)
}

/// Remove temporary files an earlier atomic replace of `path` left behind when it was
/// killed between create and rename: only names of our pattern whose content is empty
/// or begins like `ours` (the file's own format).
pub fn remove_stale_temps(path: &Path, ours: impl Fn(&[u8]) -> bool) {
    let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return;
    };
    let prefix = format!(".{name}.");
    let Ok(entries) = std::fs::read_dir(dir_of(path)) else {
        return;
    };
    for e in entries.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if !n.starts_with(&prefix) || !n.ends_with(TEMP_SUFFIX) {
            continue;
        }
        let p = e.path();
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if !m.file_type().is_file() || m.len() > ferry_cbt::journal::MAX_JOURNAL_BYTES as u64 {
            continue;
        }
        if std::fs::read(&p).is_ok_and(|b| b.is_empty() || ours(&b)) {
            tracing::info!(path = %p.display(), "removing a temporary file left by a killed run");
            let _ = std::fs::remove_file(&p);
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// What this copy is (set by `begin`).
    identity: Option<JournalIdentity>,
    /// The samples the journal carries: the first ever taken, then the most recent.
    kept: Vec<Sample>,
    /// Completed writes not yet known to be below the durable prefix.
    candidates: VecDeque<Sample>,
    /// (device, inode) of the journal file this copy last wrote.
    written: Option<(u64, u64)>,
    /// The recorded samples a resume must prove (from the journal found at open).
    to_verify: Vec<Sample>,
    /// The digest groups in the digest file, in order, durably (what the journal names).
    groups: Vec<Hash>,
    /// BLAKE3 over `groups`' bytes.
    groups_hash: blake3::Hasher,
}

impl State {
    fn set_groups(&mut self, groups: Vec<Hash>) {
        self.groups_hash = blake3::Hasher::new();
        for g in &groups {
            self.groups_hash.update(g);
        }
        self.groups = groups;
    }

    fn digest_mark(&self) -> Option<DigestMark> {
        (!self.groups.is_empty()).then(|| DigestMark {
            groups: self.groups.len() as u64,
            hash: *self.groups_hash.finalize().as_bytes(),
        })
    }
}

/// A journal for one copy.
#[derive(Debug)]
pub struct JournalFile {
    path: PathBuf,
    /// The digest file beside it.
    digest_path: PathBuf,
    /// The journal found at open, if it decoded.
    found: Option<Journal>,
    /// The digest groups the found journal names, if the digest file holds them.
    found_groups: Vec<Hash>,
    state: Mutex<State>,
}

impl JournalFile {
    fn error(&self, message: impl std::fmt::Display) -> Error {
        journal_error(&self.path, message)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Check the journal path and read what is there (step 1 of the module docs).
    /// `protected` are the files the journal may never be, each with a name for the
    /// message ("the target", "the source").
    pub fn open(path: &Path, protected: &[(&Path, &str)]) -> Result<JournalFile, Error> {
        let err = |m: String| journal_error(path, m);
        if path.file_name().is_none() {
            return Err(err("is not a file name".into()));
        }
        let dir = dir_of(path);
        match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(err(format!("{} is not a directory", dir.display()))),
            Err(e) => return Err(err(format!("directory {}: {e}", dir.display()))),
        }
        let digest_path = digest_path_of(path);
        for (p, what) in protected {
            for (mine, name) in [
                (path, "journal"),
                (digest_path.as_path(), "journal's digest file"),
            ] {
                if same_file(mine, p) {
                    return Err(journal_error(
                        mine,
                        format!(
                            "is {what} ({}); give the {name} a path of its own",
                            p.display()
                        ),
                    ));
                }
            }
        }
        let refuse = |why: String| {
            err(format!(
                "{why}; refusing to overwrite it (give the journal a path of its own, or remove the file)"
            ))
        };
        let found = match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(err(format!("cannot inspect it: {e}"))),
            Ok(m) if m.file_type().is_symlink() => {
                return Err(refuse("is a symbolic link".into()));
            }
            Ok(m) if !m.file_type().is_file() => {
                return Err(refuse(format!(
                    "exists and is not a regular file ({:?})",
                    m.file_type()
                )));
            }
            Ok(m) if m.len() > ferry_cbt::journal::MAX_JOURNAL_BYTES as u64 => {
                return Err(refuse(format!(
                    "exists and is not a Ferry journal ({} bytes, larger than any journal)",
                    m.len()
                )));
            }
            Ok(_) => {
                let bytes = std::fs::read(path).map_err(|e| err(format!("cannot read it: {e}")))?;
                if !ferry_cbt::journal::looks_like_journal(&bytes) {
                    return Err(refuse(format!(
                        "exists and is not a Ferry journal ({} bytes)",
                        bytes.len()
                    )));
                }
                match ferry_cbt::journal::decode(&bytes) {
                    Ok(j) => Some(j),
                    Err(why) => {
                        tracing::warn!(path = %path.display(), reason = %why, "discarding the resume journal: not trusted; copying from the start");
                        None
                    }
                }
            }
        };
        remove_stale_temps(path, ferry_cbt::journal::looks_like_journal);
        let found_groups = read_digest_file(&digest_path, found.as_ref())?;
        Ok(JournalFile {
            path: path.to_owned(),
            digest_path,
            found,
            found_groups,
            state: Mutex::new(State::default()),
        })
    }

    /// [`JournalFile::open`] when the copy has a journal path.
    pub fn open_optional(
        path: Option<&Path>,
        protected: &[(&Path, &str)],
    ) -> Result<Option<std::sync::Arc<JournalFile>>, Error> {
        path.map(|p| JournalFile::open(p, protected).map(std::sync::Arc::new))
            .transpose()
    }

    /// The journal's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Decide whether the journal found at open describes this copy onto `sink` as it
    /// is now (step 2), then write the first record. `identity` is this copy's, its
    /// `target_id` the target as this copy leaves it. Returns the offset to resume from
    /// (0 for a copy from the start); a resume must still pass [`JournalFile::verify`].
    pub fn begin(&self, identity: JournalIdentity, sink: &Sink) -> Result<u64, Error> {
        let found = self.found.as_ref().and_then(|j| {
            let why = match sink.found_target_id() {
                None => Some("the target did not exist: this copy created it".to_string()),
                Some(id) if j.identity.target_id != id => Some(format!(
                    "the target is not the one recorded (recorded {:?}, found {id:?})",
                    j.identity.target_id
                )),
                Some(_) if j.identity.source != identity.source
                    || j.identity.size != identity.size
                    || j.identity.plan != identity.plan
                    || j.identity.target != identity.target =>
                {
                    Some(format!(
                        "it belongs to another copy (source {:?}, size {}, plan {:?}, target {:?})",
                        j.identity.source, j.identity.size, j.identity.plan, j.identity.target
                    ))
                }
                Some(_) => None,
            };
            match why {
                Some(why) => {
                    tracing::warn!(path = %self.path.display(), reason = %why, "discarding the resume journal; copying from the start");
                    None
                }
                None => Some(j),
            }
        });
        let resumes = found.is_some();
        let (watermark, samples) =
            found.map_or((0, Vec::new()), |j| (j.watermark, j.samples.clone()));
        {
            let mut st = self.state();
            st.identity = Some(identity);
            st.kept = samples.clone();
            st.to_verify = samples;
            st.set_groups(if resumes {
                self.found_groups.clone()
            } else {
                Vec::new()
            });
        }
        self.write(watermark)?;
        if watermark > 0 {
            tracing::info!(path = %self.path.display(), watermark, "journal matches this source and target; checking its samples");
        }
        Ok(watermark)
    }

    /// Prove a resume (step 3): every recorded sample must read back the same from the
    /// target and from the source. `buf` (a pool buffer) is lent for the source reads
    /// and comes back with the answer. On a mismatch the journal is reset to a copy from
    /// zero and the answer is `false`.
    pub async fn verify(
        &self,
        source: &dyn Source,
        sink: &Sink,
        mut buf: Buf,
    ) -> Result<(Buf, bool), Error> {
        let samples = std::mem::take(&mut self.state().to_verify);
        let mut mismatch = None;
        for s in &samples {
            let len = s.len as usize;
            if len > buf.capacity() {
                mismatch = Some(format!(
                    "the sample at {} is larger than a buffer",
                    s.offset
                ));
                break;
            }
            let on_target = sink
                .read_at(s.offset, len)
                .map_err(|error| Error::JournalCheck {
                    offset: s.offset,
                    error,
                })?;
            if crc32fast::hash(&on_target) != s.crc {
                mismatch = Some(format!(
                    "the target's {} bytes at offset {} are not what this copy wrote there",
                    s.len, s.offset
                ));
                break;
            }
            buf.set_len(len);
            buf = source.read(s.offset, buf).await?;
            if crc32fast::hash(buf.as_slice()) != s.crc {
                mismatch = Some(format!(
                    "the source's {} bytes at offset {} changed since they were copied",
                    s.len, s.offset
                ));
                break;
            }
        }
        if let Some(why) = mismatch {
            tracing::warn!(path = %self.path.display(), reason = %why, "discarding the resume journal; copying from the start");
            {
                let mut st = self.state();
                st.kept.clear();
                st.set_groups(Vec::new());
            }
            self.write(0)?;
            return Ok((buf, false));
        }
        let watermark = self.found.as_ref().map_or(0, |j| j.watermark);
        tracing::info!(path = %self.path.display(), watermark, samples = samples.len(), "resuming from the journal: the target and the source match its samples");
        Ok((buf, true))
    }

    /// A request of `bytes` (its data, as written) completed at `offset`: a candidate
    /// sample, kept until a record shows whether it is below the durable prefix.
    pub fn offer(&self, offset: u64, bytes: &[u8]) {
        let s = Sample::of(offset, bytes);
        let mut st = self.state();
        if st.candidates.len() == MAX_SAMPLE_CANDIDATES {
            // The lowest offset goes first: the prefix passes it soonest.
            if let Some(i) = (0..st.candidates.len()).min_by_key(|&i| st.candidates[i].offset) {
                st.candidates.remove(i);
            }
        }
        st.candidates.push_back(s);
    }

    /// A resume starts again below the recorded watermark, at `mark` (the end of the
    /// digest groups kept): only the samples below `mark` are kept as proof, so that the
    /// next records, from `mark` on, stay consistent.
    pub fn rewind_to(&self, mark: u64) {
        self.state().kept.retain(|s| s.end() <= mark);
    }

    /// The digest groups this journal keeps (the disk's first `len()` × 64 MiB, all
    /// below its watermark), for a copy resuming with a digest.
    pub fn digest_groups(&self) -> Vec<Hash> {
        self.state().groups.clone()
    }

    /// Record that every byte below `watermark` is durably on the target (the caller
    /// flushed the target first), with a sample just below it; with the copy's digest,
    /// also the group hashes it finished below `watermark` (into the digest file first).
    pub fn record(&self, watermark: u64, digest: Option<&Digester>) -> Result<(), Error> {
        {
            let mut st = self.state();
            if let Some(d) = digest {
                let new = d.groups_below(st.groups.len(), watermark);
                if !new.is_empty() {
                    self.append_groups(st.groups.len(), &new)?;
                    for g in new {
                        st.groups_hash.update(&g);
                        st.groups.push(g);
                    }
                }
            }
            let durable = || st.candidates.iter().filter(|s| s.end() <= watermark);
            let newest = durable().max_by_key(|s| s.end()).copied();
            // The first record also keeps the lowest: samples then span the prefix.
            let lowest = durable().min_by_key(|s| s.offset).copied();
            st.candidates.retain(|s| s.end() > watermark);
            if let (true, Some(s)) = (st.kept.is_empty(), lowest)
                && Some(s) != newest
            {
                st.kept.push(s);
            }
            if let Some(s) = newest {
                if st.kept.len() == MAX_JOURNAL_SAMPLES {
                    st.kept.remove(1);
                }
                st.kept.push(s);
            }
        }
        self.write(watermark)
    }

    fn write(&self, watermark: u64) -> Result<(), Error> {
        let mut st = self.state();
        let identity = st
            .identity
            .clone()
            .ok_or_else(|| self.error("written before begin"))?;
        let j = Journal {
            identity,
            samples: st.kept.clone(),
            watermark,
            digest: st.digest_mark(),
        };
        let bytes = ferry_cbt::journal::encode(&j).map_err(|e| self.error(e))?;
        st.written = Some(atomic_replace(&self.path, &bytes).map_err(|e| self.error(e))?);
        tracing::debug!(watermark, "journal recorded");
        Ok(())
    }

    /// Write `groups` into the digest file from group index `at` (a new file with its
    /// magic line when `at` is 0), and fdatasync it.
    fn append_groups(&self, at: usize, groups: &[Hash]) -> Result<(), Error> {
        use std::os::unix::fs::FileExt;
        let err = |m: String| journal_error(&self.digest_path, m);
        let mut o = OpenOptions::new();
        o.write(true)
            .create(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .mode(0o600);
        let f = o
            .open(&self.digest_path)
            .map_err(|e| err(format!("open: {e}")))?;
        if at == 0 {
            f.set_len(0).map_err(|e| err(format!("truncate: {e}")))?;
            f.write_all_at(DIGEST_FILE_MAGIC, 0)
                .map_err(|e| err(format!("write: {e}")))?;
        }
        let bytes: Vec<u8> = groups.iter().flatten().copied().collect();
        let offset = DIGEST_FILE_MAGIC.len() as u64 + at as u64 * GROUP_HASH_BYTES;
        f.write_all_at(&bytes, offset)
            .map_err(|e| err(format!("write: {e}")))?;
        f.sync_data().map_err(|e| err(format!("fdatasync: {e}")))?;
        if at == 0 {
            sync_dir(&self.digest_path).map_err(|e| err(format!("directory fsync: {e}")))?;
        }
        Ok(())
    }

    /// Remove the digest file if it is one.
    fn remove_digest_file(&self) -> Result<(), Error> {
        match digest_file_kind(&self.digest_path) {
            Ok(Some(true)) => std::fs::remove_file(&self.digest_path)
                .map_err(|e| journal_error(&self.digest_path, format!("remove: {e}"))),
            _ => Ok(()),
        }
    }

    /// The copy finished and was flushed: remove the journal — only the file this copy
    /// last wrote, still holding this copy's identity — and its digest file.
    pub fn finish(&self) -> Result<(), Error> {
        self.remove_digest_file()?;
        let st = self.state();
        let Some(written) = st.written else {
            return Ok(());
        };
        let m = match std::fs::symlink_metadata(&self.path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.error(format!("cannot inspect it: {e}"))),
        };
        let ours = m.file_type().is_file()
            && (m.dev(), m.ino()) == written
            && std::fs::read(&self.path)
                .ok()
                .and_then(|b| ferry_cbt::journal::decode(&b).ok())
                .is_some_and(|j| Some(&j.identity) == st.identity.as_ref());
        if !ours {
            tracing::warn!(path = %self.path.display(), "the resume journal was replaced by another file during the copy; leaving it");
            return Ok(());
        }
        std::fs::remove_file(&self.path).map_err(|e| self.error(format!("remove: {e}")))?;
        sync_dir(&self.path).map_err(|e| self.error(format!("directory fsync: {e}")))
    }
}

/// The digest file of the journal at `path`.
pub fn digest_path_of(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(DIGEST_FILE_SUFFIX);
    path.with_file_name(name)
}

/// What is at a digest file's path: nothing (`None`), a digest file (`Some(true)`), or a
/// regular file that is not one (`Some(false)`); an error for anything not a regular file.
fn digest_file_kind(path: &Path) -> Result<Option<bool>, String> {
    use std::io::Read;
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot inspect it: {e}")),
        Ok(m) if !m.file_type().is_file() => Err(format!(
            "exists and is not a regular file ({:?})",
            m.file_type()
        )),
        Ok(_) => {
            let mut head = vec![0u8; DIGEST_FILE_MAGIC.len()];
            let mut f = File::open(path).map_err(|e| format!("cannot read it: {e}"))?;
            let n = f
                .read(&mut head)
                .map_err(|e| format!("cannot read it: {e}"))?;
            Ok(Some(head[..n] == *DIGEST_FILE_MAGIC))
        }
    }
}

/// Check the digest file beside a journal (never a file that is not one), and read the
/// groups the found journal names if it holds them.
fn read_digest_file(path: &Path, found: Option<&Journal>) -> Result<Vec<Hash>, Error> {
    let refuse = |why: String| {
        journal_error(
            path,
            format!(
                "{why}; refusing to overwrite it (give the journal a path of its own, or remove the file)"
            ),
        )
    };
    match digest_file_kind(path).map_err(refuse)? {
        Some(false) => return Err(refuse("exists and is not a Ferry digest file".into())),
        None => return Ok(Vec::new()),
        Some(true) => {}
    }
    let Some((j, mark)) = found.and_then(|j| j.digest.map(|m| (j, m))) else {
        return Ok(Vec::new());
    };
    let discard = |why: &str| -> Result<Vec<Hash>, Error> {
        tracing::warn!(path = %path.display(), reason = why, "not taking up the digest file: a resumed copy has no digest of what it does not read again");
        Ok(Vec::new())
    };
    // The groups named lie below the watermark (all of them when the copy got to the end).
    let all = j.identity.size.div_ceil(GROUP);
    let below = if j.watermark >= j.identity.size {
        all
    } else {
        j.watermark / GROUP
    };
    if mark.groups > below {
        return discard("the journal names more groups than lie below its watermark");
    }
    let len = DIGEST_FILE_MAGIC.len() as u64 + mark.groups * GROUP_HASH_BYTES;
    let bytes = {
        use std::io::Read;
        let mut buf = Vec::new();
        match File::open(path).and_then(|f| f.take(len).read_to_end(&mut buf)) {
            Ok(_) => buf,
            Err(e) => return discard(&format!("cannot read it: {e}")),
        }
    };
    if (bytes.len() as u64) < len {
        return discard("it is shorter than the journal says");
    }
    let hashes = &bytes[DIGEST_FILE_MAGIC.len()..];
    if *blake3::hash(hashes).as_bytes() != mark.hash {
        return discard("its groups do not hash to what the journal recorded");
    }
    Ok(hashes
        .chunks_exact(crate::num::usize_of(GROUP_HASH_BYTES))
        .map(|c| {
            let mut h = [0u8; 32];
            h.copy_from_slice(c);
            h
        })
        .collect())
}

fn journal_error(path: &Path, message: impl std::fmt::Display) -> Error {
    Error::Journal {
        path: path.to_owned(),
        message: message.to_string(),
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::sink::DirectMode;
    use crate::test_support::{engine, rt};

    const SIZE: u64 = 1 << 20;

    fn sink(p: &Path) -> Sink {
        Sink::open(p, SIZE, DirectMode::Off, engine()).expect("sink")
    }

    fn id(sink: &Sink) -> JournalIdentity {
        JournalIdentity {
            source: "nbd+unix:///?socket=/s".into(),
            size: SIZE,
            plan: "full".into(),
            target: "/t".into(),
            target_id: sink.target_id().into(),
        }
    }

    fn refused(path: &Path, protected: &[(&Path, &str)], phrase: &str) {
        let e = JournalFile::open(path, protected).expect_err("must refuse");
        assert!(matches!(e, Error::Journal { .. }), "{e:?}");
        let line = e.to_string();
        assert!(line.contains(phrase), "{line:?} lacks {phrase:?}");
        assert!(line.contains(&path.display().to_string()), "{line:?}");
    }

    /// A journal recorded at `mark` for the target `t` (a file the "copy" created).
    fn recorded(dir: &Path, mark: u64) -> (PathBuf, PathBuf) {
        let t = dir.join("t.img");
        let j = dir.join("t.journal");
        let s = sink(&t);
        let jf = JournalFile::open(&j, &[(&t, "the target")]).expect("open");
        assert_eq!(jf.begin(id(&s), &s).expect("begin"), 0);
        jf.record(mark, None).expect("record");
        (t, j)
    }

    #[test]
    fn digest_groups_are_taken_up_only_as_the_journal_names_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = dir.path().join("t.img");
        let j = dir.path().join("t.journal");
        let df = digest_path_of(&j);
        let s = sink(&t);
        let jf = JournalFile::open(&j, &[(&t, "the target")]).expect("open");
        jf.begin(id(&s), &s).expect("begin");
        let mut d = Digester::new(SIZE);
        d.data(0, &[7u8; 65536]).expect("data");
        // Below the group's end nothing is kept.
        jf.record(65536, Some(&d)).expect("record");
        assert!(jf.digest_groups().is_empty() && !df.exists());
        d.zero(65536, SIZE - 65536).expect("zero");
        jf.record(SIZE, Some(&d)).expect("record");
        let want = d.groups_below(0, SIZE);
        assert_eq!(want.len(), 1);
        assert_eq!(jf.digest_groups(), want);
        let reopen = || {
            let s = sink(&t);
            let jf = JournalFile::open(&j, &[]).expect("open");
            assert_eq!(jf.begin(id(&s), &s).expect("begin"), SIZE);
            jf.digest_groups()
        };
        assert_eq!(reopen(), want);
        // A changed group hash does not hash to what the journal names: not taken up.
        let mut bytes = std::fs::read(&df).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&df, &bytes).expect("write");
        assert!(reopen().is_empty());
        // Not a digest file: refused, never overwritten.
        std::fs::write(&df, b"precious").expect("write");
        refused(&j, &[], "is not a Ferry digest file");
        assert_eq!(std::fs::read(&df).expect("read"), b"precious");
        // The digest file's path may not be the target's.
        let t2 = dir.path().join("u.journal.digest");
        let j2 = dir.path().join("u.journal");
        refused(&j2, &[(&t2, "the target")], "is the target");
    }

    #[test]
    fn a_journal_resumes_only_its_own_target() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (t, j) = recorded(dir.path(), 4096);
        // Same target, still there: resumes.
        let s = sink(&t);
        let jf = JournalFile::open(&j, &[]).expect("open");
        assert_eq!(jf.begin(id(&s), &s).expect("begin"), 4096);
        // The target deleted: the copy creates it, so it never resumes.
        std::fs::remove_file(&t).expect("rm");
        let s = sink(&t);
        let jf = JournalFile::open(&j, &[]).expect("open");
        assert_eq!(jf.begin(id(&s), &s).expect("begin"), 0);
    }

    #[test]
    fn a_recreated_target_under_the_same_name_does_not_resume() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (t, j) = recorded(dir.path(), 4096);
        std::fs::remove_file(&t).expect("rm");
        std::fs::write(&t, vec![0u8; SIZE as usize]).expect("recreate");
        let s = sink(&t);
        let jf = JournalFile::open(&j, &[]).expect("open");
        assert_eq!(jf.begin(id(&s), &s).expect("begin"), 0);
    }

    #[test]
    fn a_journal_for_another_copy_is_discarded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (t, j) = recorded(dir.path(), 4096);
        let s = sink(&t);
        let mut other = id(&s);
        other.plan = "changed-extents:1:4096".into();
        let jf = JournalFile::open(&j, &[]).expect("open");
        assert_eq!(jf.begin(other, &s).expect("begin"), 0);
    }

    #[test]
    fn the_journal_may_not_be_the_target_or_the_source() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = dir.path().join("t.img");
        // Not there yet: the same path is the same file.
        refused(&t, &[(&t, "the target")], "is the target");
        std::fs::write(&t, b"disk").expect("write");
        let link = dir.path().join("sub");
        std::fs::create_dir(&link).expect("mkdir");
        let other_name = dir.path().join("sub/../t.img");
        refused(&other_name, &[(&t, "the target")], "is the target");
        let hard = dir.path().join("hard.img");
        std::fs::hard_link(&t, &hard).expect("link");
        refused(&hard, &[(&t, "the source")], "is the source");
    }

    #[test]
    fn a_file_that_is_not_a_journal_is_never_written_over() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("data.raw");
        std::fs::write(&p, vec![0xaa; 8192]).expect("write");
        refused(&p, &[], "is not a Ferry journal (8192 bytes)");
        std::fs::write(&p, vec![0xaa; 1 << 20]).expect("write");
        refused(&p, &[], "larger than any journal");
        std::fs::write(&p, b"").expect("empty");
        refused(&p, &[], "is not a Ferry journal (0 bytes)");
        assert_eq!(std::fs::read(&p).expect("read"), b"", "left as it was");
        let l = dir.path().join("link");
        std::os::unix::fs::symlink(&p, &l).expect("symlink");
        refused(&l, &[], "is a symbolic link");
        refused(dir.path(), &[], "not a regular file");
    }

    #[test]
    fn a_journal_in_a_missing_directory_fails_at_open() {
        refused(
            Path::new("/nonexistent-ferry-dir/j"),
            &[],
            "directory /nonexistent-ferry-dir",
        );
    }

    #[test]
    fn corrupt_and_old_journals_are_journals_but_not_trusted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (t, j) = recorded(dir.path(), 4096);
        let good = std::fs::read(&j).expect("read");
        for bad in [
            good[..good.len() - 3].to_vec(),
            {
                let mut b = good.clone();
                b[40] ^= 0x10;
                b
            },
            b"ferry-journal 1\nsource s\nsize 1\nplan full\ntarget /t\nwatermark 1\ncrc 00000000\n"
                .to_vec(),
        ] {
            std::fs::write(&j, &bad).expect("write");
            let s = sink(&t);
            let jf = JournalFile::open(&j, &[]).expect("a damaged journal is still ours");
            assert_eq!(jf.begin(id(&s), &s).expect("begin"), 0);
        }
    }

    #[test]
    fn temporary_names_are_never_the_target() {
        // `disk.journal` with `with_extension("tmp")` would have been `disk.tmp`.
        let dir = tempfile::tempdir().expect("tempdir");
        let t = dir.path().join("disk.tmp");
        let j = dir.path().join("disk.journal");
        let s = sink(&t);
        let jf = JournalFile::open(&j, &[(&t, "the target")]).expect("open");
        jf.begin(id(&s), &s).expect("begin");
        jf.record(4096, None).expect("record");
        jf.finish().expect("finish");
        assert!(t.exists(), "the target survives");
        assert!(!j.exists(), "the journal is removed");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("disk.tmp")]);
    }

    #[test]
    fn finish_removes_only_the_journal_it_wrote() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = dir.path().join("t.img");
        let j = dir.path().join("t.journal");
        let s = sink(&t);
        let jf = JournalFile::open(&j, &[]).expect("open");
        jf.begin(id(&s), &s).expect("begin");
        // Someone puts another file at the journal's path during the copy.
        std::fs::remove_file(&j).expect("rm");
        std::fs::write(&j, b"precious").expect("write");
        jf.finish().expect("finish");
        assert_eq!(std::fs::read(&j).expect("read"), b"precious");
    }

    #[test]
    fn stale_temporary_files_of_a_killed_run_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().expect("tempdir");
        let j = dir.path().join("t.journal");
        let stale = dir.path().join(".t.journal.1.0.ferry-tmp");
        let empty = dir.path().join(".t.journal.1.1.ferry-tmp");
        let foreign = dir.path().join(".t.journal.1.2.ferry-tmp");
        std::fs::write(&stale, b"ferry-journal 2\nsource").expect("write");
        std::fs::write(&empty, b"").expect("write");
        std::fs::write(&foreign, b"not ours").expect("write");
        JournalFile::open(&j, &[]).expect("open");
        assert!(!stale.exists() && !empty.exists());
        assert!(foreign.exists(), "a file that is not ours is left alone");
    }

    #[test]
    fn samples_prove_the_target_and_the_source() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("src.raw");
        let data: Vec<u8> = (0..SIZE).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&src, &data).expect("source");
        let t = dir.path().join("t.img");
        std::fs::write(&t, &data[..65536]).expect("target prefix");
        let j = dir.path().join("t.journal");
        let source = crate::source::LocalSource::open(&src, engine()).expect("source");
        let begin = || {
            let s = sink(&t);
            let jf = JournalFile::open(&j, &[]).expect("open");
            let start = jf.begin(id(&s), &s).expect("begin");
            (s, jf, start)
        };
        let (s, jf, _) = begin();
        jf.offer(0, &data[..4096]);
        jf.offer(61440, &data[61440..65536]);
        jf.offer(65536, &data[65536..69632]); // past the watermark: not a sample
        jf.record(65536, None).expect("record");
        let text = std::fs::read_to_string(&j).expect("journal");
        assert_eq!(text.matches("\nsample ").count(), 2, "{text}");
        drop((s, jf));

        let verify = |s: &Sink, jf: &JournalFile| {
            rt().block_on(jf.verify(&source, s, Buf::new(1 << 16)))
                .expect("verify")
                .1
        };
        let (s, jf, start) = begin();
        assert_eq!(start, 65536);
        assert!(verify(&s, &jf), "the target holds what was written");
        drop((s, jf));
        // The target's bytes change under the journal: not trusted, journal reset.
        use std::os::unix::fs::FileExt;
        let f = OpenOptions::new().write(true).open(&t).expect("open");
        f.write_all_at(&[0xff; 16], 61440 + 100).expect("scribble");
        let (s, jf, start) = begin();
        assert_eq!(start, 65536);
        assert!(!verify(&s, &jf));
        assert!(
            std::fs::read_to_string(&j)
                .expect("journal")
                .contains("watermark 0\n")
        );
    }
}
