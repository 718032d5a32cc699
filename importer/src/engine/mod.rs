//! I/O engines: how the sink (and the local source) issue positional reads, writes,
//! zeroing and flushes.
//!
//! ```text
//!             IoEngine (trait, async, owned buffers)
//!              ├── UringEngine  one ring on a dedicated thread, many ops in flight
//!              └── SyncEngine   pread/pwrite/fallocate/fdatasync on blocking threads
//! ```
//!
//! The engine is chosen once at start-up by [`select`]: `auto` probes io_uring (the
//! syscalls and every opcode we use) and falls back to the sync engine when it is
//! refused — EPERM under containerd/Docker's default seccomp profile, ENOSYS under
//! CRI-O/Podman's, or a kernel with `io_uring_disabled`. The log says which was taken
//! and why. Callers never see `cfg`s or engine types, only `Arc<dyn IoEngine>`.

mod sync;
mod uring;

use std::fs::File;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;

pub use sync::SyncEngine;
pub use uring::UringEngine;

use crate::buf::Buf;

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// fallocate modes the sink uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallocate {
    /// Deallocate; the range reads back as zeroes (files: a hole; block devices: an
    /// unmap that guarantees zeroes, or EOPNOTSUPP).
    PunchHole,
    /// Zero the range, keeping it allocated (block devices: BLKZEROOUT semantics).
    ZeroRange,
    /// Allocate the range (preallocation); contents unchanged, unwritten blocks read as
    /// zeroes.
    Allocate,
}

impl Fallocate {
    /// The libc mode bits (always with KEEP_SIZE).
    pub fn mode(self) -> i32 {
        match self {
            Fallocate::PunchHole => libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            Fallocate::ZeroRange => libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
            Fallocate::Allocate => libc::FALLOC_FL_KEEP_SIZE,
        }
    }
}

/// Positional I/O with owned buffers. Every method completes the whole request or fails:
/// short transfers are continued internally, and a transfer that makes no progress is
/// an error (`WriteZero` / `UnexpectedEof`).
pub trait IoEngine: Send + Sync + std::fmt::Debug {
    /// "uring" or "sync".
    fn name(&self) -> &'static str;
    /// Write `buf.as_slice()` at `offset`; the buffer comes back either way.
    fn write(
        &self,
        file: Arc<File>,
        buf: Buf,
        offset: u64,
    ) -> BoxFuture<'static, (Buf, io::Result<()>)>;
    /// Fill `buf.as_mut_slice()` from `offset`.
    fn read(
        &self,
        file: Arc<File>,
        buf: Buf,
        offset: u64,
    ) -> BoxFuture<'static, (Buf, io::Result<()>)>;
    /// fallocate with KEEP_SIZE.
    fn fallocate(
        &self,
        file: Arc<File>,
        mode: Fallocate,
        offset: u64,
        len: u64,
    ) -> BoxFuture<'static, io::Result<()>>;
    /// fdatasync.
    fn fdatasync(&self, file: Arc<File>) -> BoxFuture<'static, io::Result<()>>;
    /// Register `windows` (address and length of each pool buffer, [`Buf::window`]) for
    /// requests that name them by index: io_uring's fixed buffers, whose pages are pinned
    /// once instead of on every O_DIRECT request. Resolves to the registration's number,
    /// which the caller records in each buffer ([`Buf::set_fixed`], index = position);
    /// an error when the engine has no such thing (the sync engine), the kernel refuses
    /// (RLIMIT_MEMLOCK without CAP_IPC_LOCK: ENOMEM) or another registration is active.
    /// Requests from buffers that are not registered work as before.
    fn register_buffers(
        &self,
        windows: Vec<(usize, usize)>,
    ) -> BoxFuture<'static, io::Result<u64>> {
        let _ = windows;
        Box::pin(async { Err(io::Error::from(io::ErrorKind::Unsupported)) })
    }
    /// End registration `registration`: requests already submitted finish, later ones
    /// from its buffers are plain requests.
    fn unregister_buffers(&self, registration: u64) {
        let _ = registration;
    }
    /// Requests submitted with a registered buffer so far.
    fn fixed_requests(&self) -> u64 {
        0
    }
}

/// Which engine the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineChoice {
    /// io_uring when the probe succeeds, else sync.
    Auto,
    /// io_uring or fail.
    Uring,
    /// Plain syscalls.
    Sync,
}

/// Errors choosing an engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// io_uring was required but is not usable.
    #[error("io_uring was requested but is not usable here: {why}")]
    UringUnavailable {
        /// What the probe found (the setup call and its errno, or the missing opcode).
        why: String,
    },
}

/// Pick the engine. `queue_depth` sizes the ring.
pub fn select(choice: EngineChoice, queue_depth: u32) -> Result<Arc<dyn IoEngine>, EngineError> {
    if choice == EngineChoice::Sync {
        tracing::info!(
            engine = "sync",
            reason = "requested with --io-engine sync",
            "I/O engine selected"
        );
        return Ok(Arc::new(SyncEngine::new()));
    }
    match UringEngine::new(queue_depth) {
        Ok(e) => {
            tracing::info!(
                engine = "uring",
                reason = "io_uring probe succeeded",
                "I/O engine selected"
            );
            Ok(Arc::new(e))
        }
        Err(why) if choice == EngineChoice::Auto => {
            tracing::info!(engine = "sync", reason = %format!("io_uring unavailable: {why}"), "I/O engine selected");
            Ok(Arc::new(SyncEngine::new()))
        }
        Err(why) => Err(EngineError::UringUnavailable { why }),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Seek, SeekFrom, Write};
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};

    use super::*;
    use crate::test_support::rt;

    /// Both engines, or only sync where io_uring is refused (printed, and recorded in
    /// FERRY_SKIP_LOG so the test script counts it).
    fn engines() -> Vec<Arc<dyn IoEngine>> {
        let mut v: Vec<Arc<dyn IoEngine>> = vec![Arc::new(SyncEngine::new())];
        match UringEngine::new(16) {
            Ok(u) => v.push(Arc::new(u)),
            Err(why) => {
                eprintln!("SKIP: io_uring engine cases: {why}");
                if let Ok(p) = std::env::var("FERRY_SKIP_LOG") {
                    let line = format!("engine::tests io_uring: {why}\n");
                    let _ = std::fs::OpenOptions::new()
                        .append(true)
                        .create(true)
                        .open(p)
                        .and_then(|mut f| f.write_all(line.as_bytes()));
                }
            }
        }
        v
    }

    fn pattern(len: usize, seed: u8) -> Buf {
        let mut b = Buf::new(len);
        for (i, x) in b.as_mut_slice().iter_mut().enumerate() {
            *x = (i as u8).wrapping_mul(31).wrapping_add(seed);
        }
        b
    }

    /// Registered buffers go as fixed requests while their registration is in force,
    /// and as plain ones after it ended; the bytes are the same either way; one
    /// registration at a time; the sync engine has none.
    #[test]
    fn registered_buffers_are_used_while_registered_and_not_after() {
        for e in engines() {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("fixed.img");
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .custom_flags(libc::O_DIRECT)
                .open(&path)
                .or_else(|_| File::options().read(true).write(true).open(&path))
                .expect("open");
            let file = Arc::new(f);
            let mut bufs = vec![pattern(64 * 1024, 3), pattern(64 * 1024, 9)];
            let windows = bufs
                .iter()
                .map(|b| (b.window().0 as usize, b.window().1))
                .collect();
            let g = match rt().block_on(e.register_buffers(windows)) {
                Ok(g) => g,
                Err(err) => {
                    assert_eq!(e.name(), "sync", "{err}");
                    assert_eq!(err.kind(), io::ErrorKind::Unsupported);
                    continue;
                }
            };
            for (i, b) in bufs.iter_mut().enumerate() {
                b.set_fixed(Some(crate::buf::Fixed {
                    registration: g,
                    index: u16::try_from(i).unwrap(),
                }));
            }
            let again =
                rt().block_on(e.register_buffers(vec![(bufs[0].window().0 as usize, 4096)]));
            assert!(
                again
                    .unwrap_err()
                    .to_string()
                    .contains("another registration")
            );
            let b1 = bufs.pop().unwrap();
            let b0 = bufs.pop().unwrap();
            let (b0, r) = rt().block_on(e.write(file.clone(), b0, 0));
            r.expect("fixed write");
            let (b1, r) = rt().block_on(e.write(file.clone(), b1, 64 * 1024));
            r.expect("fixed write");
            assert_eq!(e.fixed_requests(), 2);
            // Read back into the registered buffers (fixed reads), after zeroing them.
            let mut got = Vec::new();
            for (mut b, at) in [(b0, 0u64), (b1, 64 * 1024)] {
                b.as_mut_slice().fill(0);
                let (b, r) = rt().block_on(e.read(file.clone(), b, at));
                r.expect("fixed read");
                got.push(b);
            }
            assert_eq!(e.fixed_requests(), 4);
            assert_eq!(got[0].as_slice(), pattern(64 * 1024, 3).as_slice());
            assert_eq!(got[1].as_slice(), pattern(64 * 1024, 9).as_slice());
            // Ended: the same buffers go plain, and a new registration is taken.
            e.unregister_buffers(g);
            let (b, r) = rt().block_on(e.write(file.clone(), got.pop().unwrap(), 0));
            r.expect("plain write");
            assert_eq!(e.fixed_requests(), 4);
            let mut plain = vec![0u8; 64 * 1024];
            let mut ff = File::open(&path).unwrap();
            ff.read_exact(&mut plain).unwrap();
            assert_eq!(plain, pattern(64 * 1024, 9).as_slice());
            let g2 = rt()
                .block_on(e.register_buffers(vec![(b.window().0 as usize, b.window().1)]))
                .expect("a new registration");
            assert!(g2 > g);
            e.unregister_buffers(g2);
        }
    }

    #[test]
    fn write_then_read_round_trips_on_every_engine() {
        for e in engines() {
            let mut f = tempfile::tempfile().expect("tempfile");
            f.set_len(1 << 20).expect("set_len");
            let file = Arc::new(f.try_clone().expect("clone"));
            let data = pattern(256 * 1024, 7);
            let expect = data.as_slice().to_vec();
            let (_, r) = rt().block_on(e.write(file.clone(), data, 65536));
            r.expect("write");
            let (back, r) = rt().block_on(e.read(file.clone(), Buf::new(256 * 1024), 65536));
            r.expect("read");
            assert_eq!(back.as_slice(), &expect[..], "engine {}", e.name());
            let mut raw = vec![0u8; 256 * 1024];
            f.seek(SeekFrom::Start(65536)).expect("seek");
            f.read_exact(&mut raw).expect("read back with std");
            assert_eq!(raw, expect, "engine {} (std read)", e.name());
        }
    }

    #[test]
    fn punch_hole_zeroes_and_deallocates_on_every_engine() {
        for e in engines() {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("t.img");
            let mut f = File::create_new(&path).expect("create");
            f.write_all(&vec![0xaa; 4 << 20]).expect("fill");
            f.sync_all().expect("sync");
            let file = Arc::new(
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .expect("open"),
            );
            let before = file.metadata().expect("meta").blocks();
            rt().block_on(e.fallocate(file.clone(), Fallocate::PunchHole, 1 << 20, 2 << 20))
                .expect("punch");
            rt().block_on(e.fdatasync(file.clone())).expect("fdatasync");
            let after = file.metadata().expect("meta").blocks();
            let content = std::fs::read(&path).expect("read");
            assert!(
                content[..1 << 20].iter().all(|b| *b == 0xaa),
                "engine {}",
                e.name()
            );
            assert!(
                content[1 << 20..3 << 20].iter().all(|b| *b == 0),
                "engine {}",
                e.name()
            );
            assert!(
                content[3 << 20..].iter().all(|b| *b == 0xaa),
                "engine {}",
                e.name()
            );
            assert!(
                after < before,
                "engine {}: {after} blocks not below {before}",
                e.name()
            );
        }
    }

    #[test]
    fn zero_range_zeroes_on_every_engine() {
        for e in engines() {
            let mut f = tempfile::tempfile().expect("tempfile");
            f.write_all(&vec![0x55; 1 << 20]).expect("fill");
            let file = Arc::new(f.try_clone().expect("clone"));
            rt().block_on(e.fallocate(file.clone(), Fallocate::ZeroRange, 4096, 8192))
                .expect("zero range");
            let mut content = Vec::new();
            f.seek(SeekFrom::Start(0)).expect("seek");
            f.read_to_end(&mut content).expect("read");
            assert!(
                content[4096..12288].iter().all(|b| *b == 0),
                "engine {}",
                e.name()
            );
            assert_eq!(content[4095], 0x55, "engine {}", e.name());
            assert_eq!(content[12288], 0x55, "engine {}", e.name());
        }
    }

    #[test]
    fn read_past_end_of_file_is_unexpected_eof_on_every_engine() {
        for e in engines() {
            let f = tempfile::tempfile().expect("tempfile");
            f.set_len(4096).expect("set_len");
            let (_, r) = rt().block_on(e.read(Arc::new(f), Buf::new(8192), 0));
            let err = r.expect_err("short read must fail");
            assert_eq!(
                err.kind(),
                io::ErrorKind::UnexpectedEof,
                "engine {}",
                e.name()
            );
        }
    }

    #[test]
    fn write_to_read_only_descriptor_reports_ebadf_on_every_engine() {
        for e in engines() {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("ro.img");
            std::fs::write(&path, [0u8; 4096]).expect("create");
            let ro = Arc::new(File::open(&path).expect("open ro"));
            let (buf, r) = rt().block_on(e.write(ro, pattern(4096, 1), 0));
            assert_eq!(
                r.expect_err("write must fail").raw_os_error(),
                Some(libc::EBADF),
                "engine {}",
                e.name()
            );
            assert_eq!(
                buf.len(),
                4096,
                "engine {}: buffer must come back",
                e.name()
            );
        }
    }

    #[test]
    fn many_writes_in_flight_complete_on_every_engine() {
        for e in engines() {
            let f = tempfile::tempfile().expect("tempfile");
            let file = Arc::new(f);
            let r = rt().block_on(async {
                let futs: Vec<_> = (0..64u64)
                    .map(|i| e.write(file.clone(), pattern(65536, i as u8), i * 65536))
                    .collect();
                futures::future::join_all(futs).await
            });
            for (i, (_, res)) in r.into_iter().enumerate() {
                res.unwrap_or_else(|err| panic!("engine {} write {i}: {err}", e.name()));
            }
            for i in 0..64u64 {
                let (b, res) = rt().block_on(e.read(file.clone(), Buf::new(65536), i * 65536));
                res.expect("read");
                assert_eq!(
                    b.as_slice(),
                    pattern(65536, i as u8).as_slice(),
                    "engine {} block {i}",
                    e.name()
                );
            }
        }
    }
}
