//! The disk behind a handle: a raw file (pread, SEEK_DATA/SEEK_HOLE) or an NBD export
//! (ferry-nbd on the fake's own tokio runtime, `base:allocation` for extents).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use ferry_nbd::{Client, ConnectOptions, STATE_HOLE, STATE_ZERO, Uri};
use tokio::runtime::Handle as RtHandle;
use vddk_sys::VixError;

use crate::errors::*;

/// Longest block-status request sent at once.
const NBD_STATUS_STEP: u64 = 1 << 30;

/// Where a handle's bytes come from.
pub(crate) enum Backing {
    Raw {
        file: File,
    },
    Nbd {
        client: Client,
        context: Option<u32>,
        rt: RtHandle,
    },
}

impl std::fmt::Debug for Backing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backing::Raw { .. } => f.write_str("Backing::Raw"),
            Backing::Nbd { .. } => f.write_str("Backing::Nbd"),
        }
    }
}

/// Whether FAKE_VDDK_BACKING names an NBD server rather than a file.
pub(crate) fn is_nbd(spec: &str) -> bool {
    Uri::is_nbd_uri(spec)
}

/// Run a future on the fake's runtime from any thread (even one inside another tokio
/// runtime, where `block_on` would panic) and wait for its output.
fn on_runtime<T: Send + 'static>(
    rt: &RtHandle,
    fut: impl std::future::Future<Output = T> + Send + 'static,
) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    rt.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv().ok()
}

impl Backing {
    /// Open the backing; returns it with its size in bytes.
    pub fn open(spec: &str, rt: Option<&RtHandle>) -> Result<(Backing, u64), (VixError, String)> {
        if is_nbd(spec) {
            let rt = rt
                .ok_or((VIX_E_FAIL, "no runtime for the NBD backing".to_string()))?
                .clone();
            let uri: Uri = spec
                .parse()
                .map_err(|e| (VIX_E_INVALID_ARG, format!("FAKE_VDDK_BACKING: {e}")))?;
            let client = on_runtime(&rt, async move {
                Client::<Vec<u8>>::connect(&uri, &ConnectOptions::default()).await
            })
            .ok_or((VIX_E_FAIL, "the fake's runtime is shut down".to_string()))?
            .map_err(|e| {
                (
                    VIX_E_HOST_NETWORK_CONN_REFUSED,
                    format!("NBD backing {spec}: {e}"),
                )
            })?;
            let size = client.size();
            let context = client.info().context_id("base:allocation");
            Ok((
                Backing::Nbd {
                    client,
                    context,
                    rt,
                },
                size,
            ))
        } else {
            let file = File::open(spec)
                .map_err(|e| (VIX_E_FILE_NOT_FOUND, format!("backing file {spec}: {e}")))?;
            let size = file
                .metadata()
                .map_err(|e| (VIX_E_FILE_ERROR, format!("backing file {spec}: {e}")))?
                .len();
            Ok((Backing::Raw { file }, size))
        }
    }

    /// Fill `buf` from byte `offset`; bytes past `size` (the last partial sector) read
    /// as zeroes.
    pub fn read(&self, offset: u64, buf: &mut [u8], size: u64) -> Result<(), VixError> {
        let avail = size.saturating_sub(offset).min(buf.len() as u64) as usize;
        let (data, tail) = buf.split_at_mut(avail);
        tail.fill(0);
        match self {
            Backing::Raw { file } => {
                let mut done = 0;
                while done < data.len() {
                    match file.read_at(&mut data[done..], offset + done as u64) {
                        Ok(0) => {
                            // The file shrank under us: the rest reads as zeroes.
                            data[done..].fill(0);
                            break;
                        }
                        Ok(n) => done += n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => return Err(VIX_E_FILE_ERROR),
                    }
                }
                Ok(())
            }
            Backing::Nbd { client, rt, .. } => {
                let step = client.info().max_payload().max(4096) as usize;
                let mut done = 0;
                while done < data.len() {
                    let n = step.min(data.len() - done);
                    let c = client.clone();
                    let off = offset + done as u64;
                    // An error reply (nbdkit's error filter, a failing disk) is a
                    // failed read on a good connection, as VDDK reports a failed NFC
                    // read; anything else is the connection gone.
                    let got = on_runtime(rt, async move { c.read(off, vec![0u8; n]).await })
                        .ok_or(VIX_E_HOST_CONNECTION_LOST)?
                        .map_err(|e| match e {
                            ferry_nbd::Error::Request { .. } => VIX_E_FAIL,
                            _ => VIX_E_HOST_CONNECTION_LOST,
                        })?;
                    data[done..done + n].copy_from_slice(&got);
                    done += n;
                }
                Ok(())
            }
        }
    }

    /// Data extents `(offset, length)` in bytes overlapping `[offset, offset+len)` (they
    /// may run past it; callers clip).
    pub fn data_extents(&self, offset: u64, len: u64) -> Result<Vec<(u64, u64)>, VixError> {
        let end = offset.saturating_add(len);
        let mut out = Vec::new();
        match self {
            Backing::Raw { file } => {
                let fd = file.as_raw_fd();
                let mut pos = offset;
                while pos < end {
                    let Some(data) = seek(fd, pos, libc::SEEK_DATA)? else {
                        break; // no data at or after pos
                    };
                    if data >= end {
                        break;
                    }
                    let hole = seek(fd, data, libc::SEEK_HOLE)?.unwrap_or(end);
                    out.push((data, hole.saturating_sub(data)));
                    pos = hole.max(data + 1);
                }
            }
            Backing::Nbd {
                client,
                context,
                rt,
            } => {
                let Some(ctx) = *context else {
                    // No base:allocation: everything is data.
                    return Ok(vec![(offset, len)]);
                };
                let end = end.min(client.size());
                let mut pos = offset;
                while pos < end {
                    let c = client.clone();
                    let n = (end - pos).min(NBD_STATUS_STEP);
                    let descs = on_runtime(rt, async move { c.block_status(pos, n, ctx).await })
                        .ok_or(VIX_E_HOST_CONNECTION_LOST)?
                        .map_err(|_| VIX_E_HOST_CONNECTION_LOST)?;
                    if descs.is_empty() {
                        return Err(VIX_E_HOST_CONNECTION_LOST);
                    }
                    for d in descs {
                        let both = STATE_HOLE | STATE_ZERO;
                        if d.flags & u64::from(both) != u64::from(both) {
                            out.push((pos, d.length));
                        }
                        pos = pos.saturating_add(d.length);
                        if pos >= end {
                            break;
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

/// lseek(SEEK_DATA/SEEK_HOLE); `None` for ENXIO (nothing of that kind at or after pos).
fn seek(fd: i32, pos: u64, whence: i32) -> Result<Option<u64>, VixError> {
    let off = i64::try_from(pos).map_err(|_| VIX_E_INVALID_ARG)?;
    // SAFETY: lseek only moves the file offset of a descriptor we own (File stays
    // open for the call); the offset is not used by our positional reads.
    let r = unsafe { libc::lseek(fd, off, whence) };
    if r >= 0 {
        return Ok(Some(r as u64));
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::ENXIO) => Ok(None),
        // A filesystem without SEEK_DATA/SEEK_HOLE: the whole rest is data.
        Some(libc::EINVAL) if whence == libc::SEEK_DATA => Ok(Some(pos)),
        Some(libc::EINVAL) => Ok(None),
        _ => Err(VIX_E_FILE_ERROR),
    }
}
