//! Staging to scratch, only when the user gives a directory for it (`ferry copy
//! --scratch DIR`, or the `/scratch` volume CDI mounts): an image that needs random
//! access (a qcow2, a VMDK that is not a stream) but arrives as a stream (a server
//! without Range support, a compressed image) is written to an unnamed file there as it
//! arrives, zero runs left as holes, and then read through its own map like a local
//! image. The file is unlinked as soon as it is open, so nothing is left behind when
//! the copy ends, fails or is killed.

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Arc;

use super::Source;
use super::local::LocalSource;
use super::stream::fill;
use crate::buf::Buf;
use crate::engine::IoEngine;
use crate::error::{Error, Retry};

use ferry_convert::wrappers::Bytes;

/// Bytes read from the stream and written to the scratch file at once.
pub const SCRATCH_CHUNK: usize = 4 << 20;

/// Where scratch files go, and how the staged file is read.
#[derive(Debug, Clone)]
pub struct Scratch<'a> {
    /// The directory (a volume with room for the whole image).
    pub dir: &'a Path,
    /// The engine the staged file is read with.
    pub engine: Arc<dyn IoEngine>,
}

fn scratch_err(dir: &Path, what: &str, error: std::io::Error) -> Error {
    Error::Scratch {
        dir: dir.to_path_buf(),
        message: format!("{what}: {error}"),
    }
}

/// Write the stream `reader` (`what`) to a scratch file in `dir` (on a blocking thread:
/// the stream's reads block), and open it as a local source. Returns it and the bytes
/// staged.
pub async fn stage(
    what: &str,
    reader: Bytes,
    scratch: &Scratch<'_>,
) -> Result<(Arc<dyn Source>, u64), Error> {
    let dir = scratch.dir.to_path_buf();
    let w = what.to_string();
    let (file, len) = tokio::task::spawn_blocking(move || stage_blocking(&w, reader, &dir))
        .await
        .map_err(|_| Error::Internal("the scratch thread failed"))??;
    let src = LocalSource::open(file.path(), scratch.engine.clone());
    // Unlinked now: the open descriptor keeps the bytes until the copy ends.
    drop(file);
    let src = src?;
    tracing::info!(source = %what, dir = %scratch.dir.display(), bytes = len, "staged to scratch");
    Ok((Arc::new(src), len))
}

fn stage_blocking(
    what: &str,
    mut reader: Bytes,
    dir: &Path,
) -> Result<(tempfile::NamedTempFile, u64), Error> {
    let mut file = tempfile::Builder::new()
        .prefix(".ferry-scratch-")
        .tempfile_in(dir)
        .map_err(|e| scratch_err(dir, "cannot create a scratch file", e))?;
    let mut buf = Buf::new(SCRATCH_CHUNK);
    let mut at = 0u64;
    loop {
        let n = fill(reader.as_mut(), &mut buf).map_err(|e| Error::Read {
            offset: at,
            message: format!("{what}: {e}"),
            retry: Retry::Never,
        })?;
        if n == 0 {
            break;
        }
        buf.set_len(n);
        let f = file.as_file_mut();
        if buf.is_zero() {
            f.seek(SeekFrom::Current(n as i64))
        } else {
            f.write_all(buf.as_slice()).map(|()| 0)
        }
        .map_err(|e| scratch_err(dir, "writing the scratch file failed", e))?;
        at += n as u64;
    }
    file.as_file()
        .set_len(at)
        .map_err(|e| scratch_err(dir, "writing the scratch file failed", e))?;
    Ok((file, at))
}
