//! CDI's `archive` content type (`IMPORTER_CONTENTTYPE=archive`, http sources): the
//! endpoint is a tar archive (gzip-, xz- or zstd-compressed or not) unpacked into the
//! filesystem volume as it streams, where CDI runs `tar -x --preserve-permissions
//! --no-same-owner`. Ferry's rules are stricter than tar's: only regular files and
//! directories are made (a link, device or FIFO member is refused by name); a name is a
//! relative path inside the volume (a leading `/` is dropped, as tar drops it; `..` is
//! refused); nothing in the volume is followed (an existing symbolic link on the way
//! is refused, files are opened with `O_NOFOLLOW`). Every file is synced, then the
//! directories, before the import is reported complete.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use ferry_convert::tar::{self, Kind, Member, OpenError, Walker};
use ferry_convert::wrappers::{self, Bytes};

use crate::copy::CopyStats;
use crate::error::{Error, Retry};
use crate::progress::Progress;
use crate::source::format::{self, Format};
use crate::source::stream::SourceReader;
use crate::source::{Input, Source};

/// Bytes of a member read and written at once.
pub const UNPACK_CHUNK: usize = 1 << 20;

/// The most members an archive unpacked into a volume may have.
pub const MAX_UNPACK_MEMBERS: usize = 1 << 20;

fn unpack_err(what: &str, message: impl std::fmt::Display) -> Error {
    Error::Read {
        offset: 0,
        message: format!("{what}: {message}"),
        retry: Retry::Never,
    }
}

/// Where member `name` goes under `dir`: its normal components (a leading `/` and `.`
/// dropped); `..` is refused. None: nothing to make (`./`).
fn place(dir: &Path, name: &str) -> Result<Option<PathBuf>, String> {
    let mut out = dir.to_path_buf();
    let mut any = false;
    for c in Path::new(name).components() {
        match c {
            Component::Normal(p) => {
                out.push(p);
                any = true;
            }
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(format!(
                    "member {name:?} names a path outside the volume (\"..\")"
                ));
            }
        }
    }
    Ok(any.then_some(out))
}

/// Make the directories from `dir` down to `path`'s parent, refusing a symbolic link
/// (or anything not a directory) on the way.
fn make_parents(dir: &Path, path: &Path) -> std::io::Result<()> {
    let Some(parent) = path.parent() else {
        return Ok(());
    };
    let rel = parent.strip_prefix(dir).unwrap_or(Path::new(""));
    let mut at = dir.to_path_buf();
    for c in rel.components() {
        at.push(c);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(std::io::Error::other(format!(
                    "{} is in the way and is not a directory (links are never followed)",
                    at.display()
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir(&at)?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// What the unpacking did.
#[derive(Debug, Default)]
struct Unpacked {
    files: u64,
    dirs: u64,
    bytes: u64,
}

fn unpack_blocking(
    what: &str,
    reader: Bytes,
    dir: &Path,
    progress: &Progress,
) -> Result<Unpacked, Error> {
    let mut reader = reader;
    // A compression around the tar (peeled once), then the tar.
    let mut peeled = false;
    loop {
        let (head, whole) = crate::source::layers::head_of(what, reader)?;
        reader = whole;
        match format::detect(&head, None) {
            Format::Tar => break,
            found @ (Format::Gzip | Format::Xz | Format::Zstd) if !peeled => {
                reader = wrappers::decoder(found, reader)
                    .ok_or(Error::Internal("a decompressing layer without a decoder"))?
                    .map_err(|e| unpack_err(what, e))?;
                peeled = true;
            }
            other => {
                return Err(unpack_err(
                    what,
                    format!(
                        "IMPORTER_CONTENTTYPE=archive needs a tar archive (compressed or not); this holds a {other}"
                    ),
                ));
            }
        }
    }
    let mut done = Unpacked::default();
    let mut dirs: Vec<PathBuf> = vec![dir.to_path_buf()];
    let mut buf = vec![0u8; UNPACK_CHUNK];
    let each = |m: &Member, data: &mut dyn Read| -> std::io::Result<()> {
        let path = match place(dir, &m.name).map_err(std::io::Error::other)? {
            Some(p) => p,
            None => return Ok(()),
        };
        match m.kind {
            Kind::Directory => {
                make_parents(dir, &path)?;
                match std::fs::symlink_metadata(&path) {
                    Ok(md) if md.is_dir() => {}
                    Ok(_) => {
                        return Err(std::io::Error::other(format!(
                            "{} is in the way and is not a directory",
                            path.display()
                        )));
                    }
                    Err(_) => std::fs::create_dir(&path)?,
                }
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(m.mode | 0o700))?;
                dirs.push(path);
                done.dirs += 1;
            }
            Kind::File => {
                make_parents(dir, &path)?;
                let mut f: File = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                    .mode(m.mode)
                    .open(&path)?;
                loop {
                    let n = data.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    f.write_all(&buf[..n])?;
                    progress.add_data(n as u64);
                    progress.add_written(n as u64);
                    done.bytes += n as u64;
                }
                f.set_permissions(std::fs::Permissions::from_mode(m.mode))?;
                f.sync_all()?;
                done.files += 1;
            }
            Kind::Link | Kind::Other(_) => {
                return Err(std::io::Error::other(format!(
                    "member {:?} is not a regular file or a directory (links, devices and FIFOs are not unpacked)",
                    m.name
                )));
            }
        }
        Ok(())
    };
    tar::for_each_member(reader, Walker::with_max_members(MAX_UNPACK_MEMBERS), each).map_err(
        |e| match e {
            OpenError::Tar(error) => Error::Archive {
                what: what.to_string(),
                error,
            },
            OpenError::Io(e) => unpack_err(what, e),
        },
    )?;
    for d in dirs.iter().rev() {
        File::open(d)
            .and_then(|f| f.sync_all())
            .map_err(|e| unpack_err(what, format!("syncing {}: {e}", d.display())))?;
    }
    Ok(done)
}

/// Unpack the archive `input` holds into `dir`; returns the statistics for the
/// termination message and metrics.
pub async fn unpack(input: Input, dir: &Path, progress: Arc<Progress>) -> Result<CopyStats, Error> {
    let started = std::time::Instant::now();
    let what = input.describe();
    let (reader, under, check): (Bytes, Option<Arc<dyn Source>>, _) = match input {
        Input::Disk(src) => (Box::new(SourceReader::new(src.clone())), Some(src), None),
        Input::Stream(s) => match s.into_bytes() {
            Ok((_, reader, under, check)) => (reader, under, check),
            Err(mut s) => {
                s.close().await;
                return Err(Error::Internal("an archive stream without its bytes"));
            }
        },
    };
    progress.set_phase("copying");
    let (w, d, p) = (what.clone(), dir.to_path_buf(), progress.clone());
    let r = tokio::task::spawn_blocking(move || unpack_blocking(&w, reader, &d, &p))
        .await
        .map_err(|_| Error::Internal("the unpacking thread failed"))
        .and_then(|r| r);
    let r = match (r, &under) {
        (Ok(done), Some(u)) => u.finish().await.map(|()| done),
        (r, _) => r,
    };
    let r = match (r, check) {
        (Ok(done), Some(c)) => c.check().map(|()| done),
        (r, _) => r,
    };
    if let Some(u) = under {
        u.close().await;
    }
    let done = r?;
    tracing::info!(source = %what, files = done.files, dirs = done.dirs, bytes = done.bytes, "archive unpacked");
    progress.set_total(done.bytes);
    Ok(CopyStats {
        size: done.bytes,
        bytes_read: done.bytes,
        bytes_written: done.bytes,
        seconds: started.elapsed().as_secs_f64(),
        engine: "sync".into(),
        bytes_downloaded: progress.downloaded(),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::place;
    use std::path::Path;

    #[test]
    fn names_stay_inside_the_volume() {
        let d = Path::new("/data");
        assert_eq!(
            place(d, "a/b.txt").unwrap().unwrap(),
            Path::new("/data/a/b.txt")
        );
        assert_eq!(
            place(d, "/etc/passwd").unwrap().unwrap(),
            Path::new("/data/etc/passwd")
        );
        assert_eq!(place(d, "./").unwrap(), None);
        assert!(
            place(d, "a/../../x")
                .unwrap_err()
                .contains("outside the volume")
        );
    }
}
