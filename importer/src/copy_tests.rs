//! The pipeline without servers: an in-memory source (extents, per-offset latency,
//! failures at an offset, a read log) and an I/O engine that delays writes by offset
//! and counts what is in flight. `cargo test -p ferry --lib` runs them; nothing here
//! needs nbdkit, io_uring or root.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_cbt::{Extent, ExtentKind, ExtentMap};

use super::*;
use crate::engine::{BoxFuture, Fallocate, IoEngine, SyncEngine};
use crate::error::Retry;
use crate::retry::RetryPolicy;
use crate::sink::DirectMode;
use crate::test_support::rt;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// Buffers out of the pool right now (reading or writing), and the most ever.
#[derive(Debug, Default)]
struct InFlight {
    now: AtomicUsize,
    max: AtomicUsize,
}

impl InFlight {
    /// Count one buffer out until the guard drops (completed, or the future dropped).
    fn enter(self: &Arc<Self>) -> OutGuard {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(n, Ordering::SeqCst);
        OutGuard(self.clone())
    }
}

struct OutGuard(Arc<InFlight>);

impl Drop for OutGuard {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A failure the source returns at `offset`, `times` times.
#[derive(Debug, Clone)]
struct Fault {
    offset: u64,
    times: u32,
    retry: Retry,
}

#[derive(Debug)]
struct MemSource {
    data: Arc<Vec<u8>>,
    map: ExtentMap,
    /// Later offsets answer sooner, so completions come back out of order.
    reorder: bool,
    faults: Arc<Mutex<Vec<Fault>>>,
    reads: Arc<Mutex<Vec<(u64, usize)>>>,
    inflight: Arc<InFlight>,
    closed: AtomicBool,
}

impl MemSource {
    fn new(data: Vec<u8>, map: ExtentMap, inflight: Arc<InFlight>) -> MemSource {
        MemSource {
            data: Arc::new(data),
            map,
            reorder: true,
            faults: Arc::default(),
            reads: Arc::default(),
            inflight,
            closed: AtomicBool::new(false),
        }
    }

    fn fail_at(self, offset: u64, times: u32, retry: Retry) -> MemSource {
        self.faults.lock().unwrap().push(Fault {
            offset,
            times,
            retry,
        });
        self
    }

    fn reads_at(&self, offset: u64) -> Vec<usize> {
        let log = self.reads.lock().unwrap();
        log.iter()
            .filter(|(o, _)| *o == offset)
            .map(|(_, n)| *n)
            .collect()
    }
}

impl Source for MemSource {
    fn describe(&self) -> String {
        "memory".into()
    }
    fn size(&self) -> u64 {
        self.data.len() as u64
    }
    fn block_size(&self) -> u64 {
        512
    }
    fn max_read(&self) -> u64 {
        MIB
    }
    fn extent_window(&self) -> u64 {
        // Small windows: several planning rounds per copy.
        4 * MIB
    }
    fn extents(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<ExtentMap, Error>> {
        let m = self.map.clip(offset, offset + len);
        Box::pin(async move { Ok(m) })
    }
    fn read(&self, offset: u64, mut buf: Buf) -> BoxFuture<'static, Result<Buf, Error>> {
        let (data, faults, reads, inflight) = (
            self.data.clone(),
            self.faults.clone(),
            self.reads.clone(),
            self.inflight.clone(),
        );
        let size = self.data.len() as u64;
        let delay = if self.reorder {
            Duration::from_micros((size - offset) / (64 * KIB) * 200)
        } else {
            Duration::ZERO
        };
        Box::pin(async move {
            let out = inflight.enter();
            reads.lock().unwrap().push((offset, buf.len()));
            tokio::time::sleep(delay).await;
            let fault = {
                let mut f = faults.lock().unwrap();
                f.iter_mut()
                    .find(|f| f.offset == offset && f.times > 0)
                    .map(|f| {
                        f.times -= 1;
                        f.retry
                    })
            };
            drop(out);
            if let Some(retry) = fault {
                return Err(Error::Read {
                    offset,
                    message: "injected".into(),
                    retry,
                });
            }
            let at = crate::num::usize_of(offset);
            let n = buf.len();
            buf.as_mut_slice().copy_from_slice(&data[at..at + n]);
            Ok(buf)
        })
    }
    fn close(&self) -> BoxFuture<'_, ()> {
        self.closed.store(true, Ordering::SeqCst);
        Box::pin(async {})
    }
}

/// The plain-syscall engine, with writes delayed (later offsets sooner, so they
/// complete out of order), counted as buffers out, and, when a journal is named,
/// checked against it before every write and flush ([`JournalBooks::check`]).
#[derive(Debug)]
struct TestEngine {
    inner: SyncEngine,
    inflight: Arc<InFlight>,
    /// Microseconds of delay for a write at offset 0, less 7 per 64 KiB further on.
    delay_us: u64,
    journal: Option<(std::path::PathBuf, Arc<Mutex<JournalBooks>>)>,
}

impl TestEngine {
    fn new(inflight: Arc<InFlight>) -> TestEngine {
        TestEngine {
            inner: SyncEngine::new(),
            inflight,
            delay_us: 3000,
            journal: None,
        }
    }

    fn check_journal(&self) {
        if let Some((path, books)) = &self.journal {
            JournalBooks::check(path, books);
        }
    }
}

impl IoEngine for TestEngine {
    fn name(&self) -> &'static str {
        "test"
    }
    fn write(
        &self,
        file: Arc<std::fs::File>,
        buf: Buf,
        offset: u64,
    ) -> BoxFuture<'static, (Buf, std::io::Result<()>)> {
        self.check_journal();
        let books = self.journal.as_ref().map(|(_, b)| b.clone());
        if let Some(b) = &books {
            b.lock().unwrap().issued.push((offset, buf.len() as u64));
        }
        let inflight = self.inflight.clone();
        let w = self.inner.write(file, buf, offset);
        let delay = Duration::from_micros(self.delay_us.saturating_sub(offset / (64 * KIB) * 7));
        Box::pin(async move {
            let _out = inflight.enter();
            tokio::time::sleep(delay).await;
            let r = w.await;
            if let Some(b) = books {
                b.lock().unwrap().completed.insert(offset);
            }
            r
        })
    }
    fn read(
        &self,
        file: Arc<std::fs::File>,
        buf: Buf,
        offset: u64,
    ) -> BoxFuture<'static, (Buf, std::io::Result<()>)> {
        self.inner.read(file, buf, offset)
    }
    fn fallocate(
        &self,
        file: Arc<std::fs::File>,
        mode: Fallocate,
        offset: u64,
        len: u64,
    ) -> BoxFuture<'static, std::io::Result<()>> {
        self.inner.fallocate(file, mode, offset, len)
    }
    fn fdatasync(&self, file: Arc<std::fs::File>) -> BoxFuture<'static, std::io::Result<()>> {
        self.check_journal();
        // What completed before the flush was asked for is durable once it returns.
        if let Some((_, books)) = &self.journal {
            let mut b = books.lock().unwrap();
            b.flushed = b.completed.clone();
        }
        self.inner.fdatasync(file)
    }
}

/// 24 MiB: data in odd-sized runs, holes and zero extents between them.
fn disk() -> (Vec<u8>, ExtentMap) {
    let size = 24 * MIB;
    let mut data = vec![0u8; crate::num::usize_of(size)];
    let mut map = ExtentMap::new();
    let mut at = 0;
    let mut i = 0u64;
    while at < size {
        let len = ((i * 7919) % 9 + 1) * 192 * KIB;
        let len = len.min(size - at);
        let kind = match i % 4 {
            0 | 1 => ExtentKind::Data,
            2 => ExtentKind::Hole,
            _ => ExtentKind::Zero,
        };
        if kind == ExtentKind::Data {
            for (j, b) in data[crate::num::usize_of(at)..crate::num::usize_of(at + len)]
                .iter_mut()
                .enumerate()
            {
                *b = ((at + j as u64) % 251) as u8 | 1;
            }
        }
        map.push(Extent::new(at, len, kind)).unwrap();
        at += len;
        i += 1;
    }
    (data, map)
}

fn opts(buf_count: usize) -> CopyOptions {
    CopyOptions {
        buf_size: 256 * KIB as usize,
        buf_count,
        use_extents: true,
        detect_zeroes: true,
        changes: None,
        start_at: 0,
        journal: None,
        retry: RetryPolicy {
            retries: 3,
            first_backoff: Duration::from_millis(1),
        },
        // Every copy test also builds the digest: pieces completing out of order,
        // retried reads and zero ranges must still cover the disk exactly once.
        digest: true,
    }
}

struct Rig {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    sink: Arc<Sink>,
    inflight: Arc<InFlight>,
}

fn rig(size: u64) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("target.img");
    let inflight = Arc::new(InFlight::default());
    let engine = Arc::new(TestEngine::new(inflight.clone()));
    let sink = Arc::new(Sink::open(&path, size, DirectMode::Off, engine).unwrap());
    Rig {
        _dir: dir,
        path,
        sink,
        inflight,
    }
}

#[test]
fn out_of_order_completions_copy_exactly_and_within_the_pool() {
    let (data, map) = disk();
    for buf_count in [1, 3, 16] {
        let r = rig(data.len() as u64);
        let src = Arc::new(MemSource::new(
            data.clone(),
            map.clone(),
            r.inflight.clone(),
        ));
        let progress = Arc::new(Progress::new());
        let stats = rt()
            .block_on(copy(
                src.clone(),
                r.sink.clone(),
                &opts(buf_count),
                progress.clone(),
            ))
            .unwrap();
        assert_eq!(std::fs::read(&r.path).unwrap(), data, "{buf_count} buffers");
        let max = r.inflight.max.load(Ordering::SeqCst);
        assert!(
            max <= buf_count,
            "{max} buffers out of a pool of {buf_count}"
        );
        if buf_count > 1 {
            assert!(max > 1, "reads and writes overlapped (max {max})");
        }
        assert_eq!(
            stats.bytes_read,
            map.iter()
                .filter(|e| e.kind == ExtentKind::Data)
                .map(|e| e.length)
                .sum::<u64>()
        );
        assert_eq!(
            progress.durable(),
            data.len() as u64,
            "the whole disk is durable"
        );
    }
}

#[test]
fn a_failed_read_is_read_again_in_place_over_exactly_its_range() {
    let (data, map) = disk();
    let r = rig(data.len() as u64);
    // The first data request: read once, failed twice, then read.
    let first = map
        .iter()
        .find(|e| e.kind == ExtentKind::Data)
        .unwrap()
        .offset;
    let src = Arc::new(
        MemSource::new(data.clone(), map, r.inflight.clone()).fail_at(first, 2, Retry::Read),
    );
    let progress = Arc::new(Progress::new());
    let stats = rt()
        .block_on(copy(
            src.clone(),
            r.sink.clone(),
            &opts(4),
            progress.clone(),
        ))
        .unwrap();
    assert_eq!(std::fs::read(&r.path).unwrap(), data);
    let lens = src.reads_at(first);
    assert_eq!(lens.len(), 3, "read, failed twice, read again: {lens:?}");
    assert!(
        lens.iter().all(|n| *n == lens[0]),
        "the same range each time: {lens:?}"
    );
    assert_eq!(progress.retries(), 2);
    let _ = stats;
}

#[test]
fn a_permanent_failure_mid_copy_fails_closes_the_source_and_is_not_done() {
    let (data, map) = disk();
    let r = rig(data.len() as u64);
    let mid = map
        .iter()
        .filter(|e| e.kind == ExtentKind::Data && e.offset > 8 * MIB)
        .map(|e| e.offset)
        .next()
        .unwrap();
    let src = Arc::new(MemSource::new(data, map, r.inflight.clone()).fail_at(mid, 1, Retry::Never));
    let progress = Arc::new(Progress::new());
    let reopen: crate::retry::Reopen<'_> =
        Box::new(|| Box::pin(async { panic!("a permanent failure is not reopened") }));
    let err = rt()
        .block_on(crate::retry::copy_retrying(
            src.clone(),
            Some(reopen),
            r.sink.clone(),
            &opts(4),
            progress.clone(),
        ))
        .unwrap_err();
    assert!(
        matches!(err, Error::Read { offset, .. } if offset == mid),
        "{err:?}"
    );
    assert!(
        src.closed.load(Ordering::SeqCst),
        "the failed source was closed"
    );
    assert_ne!(progress.phase(), "done");
    assert!(
        progress.durable() <= mid,
        "nothing past the failure is durable"
    );
    // What was in flight when the failure came is abandoned with its futures: no
    // buffer stays counted out.
    assert_eq!(
        r.inflight.now.load(Ordering::SeqCst),
        0,
        "nothing counted out"
    );
}

#[test]
fn a_lost_connection_reopens_and_goes_on_from_the_durable_watermark() {
    let (data, map) = disk();
    let r = rig(data.len() as u64);
    let mid = map
        .iter()
        .filter(|e| e.kind == ExtentKind::Data && e.offset > 12 * MIB)
        .map(|e| e.offset)
        .next()
        .unwrap();
    let first = Arc::new(
        MemSource::new(data.clone(), map.clone(), r.inflight.clone()).fail_at(
            mid,
            1,
            Retry::Reconnect,
        ),
    );
    let second = Arc::new(MemSource::new(data.clone(), map, r.inflight.clone()));
    let progress = Arc::new(Progress::new());
    let again = second.clone();
    let reopen: crate::retry::Reopen<'_> = Box::new(move || {
        let s = again.clone();
        Box::pin(async move { Ok(s as Arc<dyn Source>) })
    });
    rt().block_on(crate::retry::copy_retrying(
        first.clone(),
        Some(reopen),
        r.sink.clone(),
        &opts(4),
        progress.clone(),
    ))
    .unwrap();
    assert_eq!(std::fs::read(&r.path).unwrap(), data);
    assert!(first.closed.load(Ordering::SeqCst));
    // The second connection started at the watermark: it read nothing below it that
    // the first had already made durable, and it read the failed request.
    let reads = second.reads.lock().unwrap().clone();
    let lowest = reads.iter().map(|(o, _)| *o).min().unwrap();
    assert!(
        lowest > 0 && lowest <= mid,
        "resumed at {lowest}, failure at {mid}"
    );
    assert!(reads.iter().any(|(o, _)| *o == mid));
}

mod watermark {
    use proptest::prelude::*;

    use super::super::Watermark;

    proptest! {
        /// Requests complete in any order; the mark is always the end of the longest
        /// fully completed prefix, never past a gap.
        #[test]
        fn never_passes_a_gap(lens in proptest::collection::vec(1u64..1000, 1..60), seed in any::<u64>()) {
            let mut w = Watermark::new(0);
            let mut ends = Vec::new();
            let mut at = 0;
            for l in &lens {
                at += l;
                ends.push((w.dispatch(at), at));
            }
            // A deterministic shuffle of the completion order.
            let mut order: Vec<usize> = (0..ends.len()).collect();
            let mut s = seed | 1;
            for i in (1..order.len()).rev() {
                s ^= s << 13; s ^= s >> 7; s ^= s << 17;
                order.swap(i, (s % (i as u64 + 1)) as usize);
            }
            let mut done = vec![false; ends.len()];
            for &i in &order {
                w.complete(ends[i].0);
                done[i] = true;
                let prefix = done.iter().take_while(|d| **d).count();
                let want = if prefix == 0 { 0 } else { ends[prefix - 1].1 };
                prop_assert_eq!(w.mark, want);
            }
            prop_assert_eq!(w.mark, at);
        }
    }
}

/// What a [`TestEngine`] knows about the writes, to check a journal against: the
/// journal on disk may never claim a byte that was not flushed, that is, every write
/// below its watermark completed before the last fdatasync was asked for.
#[derive(Debug, Default)]
struct JournalBooks {
    issued: Vec<(u64, u64)>,
    completed: std::collections::HashSet<u64>,
    flushed: std::collections::HashSet<u64>,
    /// Journal watermarks seen, in order.
    seen: Vec<u64>,
}

impl JournalBooks {
    fn check(journal: &std::path::Path, books: &Mutex<JournalBooks>) {
        let Ok(bytes) = std::fs::read(journal) else {
            return;
        };
        let Ok(j) = ferry_cbt::journal::decode(&bytes) else {
            return; // a temporary being replaced
        };
        let mut b = books.lock().unwrap();
        for &(off, len) in &b.issued {
            assert!(
                off + len > j.watermark || b.flushed.contains(&off),
                "the journal says {} is durable, but the write at {off}+{len} was not flushed",
                j.watermark
            );
        }
        if b.seen.last() != Some(&j.watermark) {
            b.seen.push(j.watermark);
        }
    }
}

#[test]
fn the_journal_never_claims_what_was_not_flushed() {
    // A disk large enough for several records (the first within 32 MiB, then every
    // 256 MiB or second): 96 MiB of data and holes, read slowly enough to take time.
    let size = 96 * MIB;
    let mut data = vec![0u8; crate::num::usize_of(size)];
    let mut map = ExtentMap::new();
    for i in 0..(size / MIB) {
        let kind = if i % 3 == 2 {
            ExtentKind::Hole
        } else {
            ExtentKind::Data
        };
        if kind == ExtentKind::Data {
            let at = crate::num::usize_of(i * MIB);
            data[at..at + crate::num::usize_of(MIB)].fill((i % 200) as u8 + 1);
        }
        map.push(Extent::new(i * MIB, MIB, kind)).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("target.img");
    let journal_path = dir.path().join("copy.ferry-journal");
    let books = Arc::new(Mutex::new(JournalBooks::default()));
    let engine = Arc::new(TestEngine {
        delay_us: 2000,
        journal: Some((journal_path.clone(), books.clone())),
        ..TestEngine::new(Arc::default())
    });
    let sink = Arc::new(Sink::open(&path, size, DirectMode::Off, engine).unwrap());
    let src = Arc::new(MemSource::new(data.clone(), map, Arc::default()));
    let journal = Arc::new(
        crate::journal::JournalFile::open(&journal_path, &[(path.as_path(), "the target")])
            .unwrap(),
    );
    journal
        .begin(
            crate::journal::JournalIdentity {
                source: "memory".into(),
                size,
                plan: "full".into(),
                target: path.display().to_string(),
                target_id: sink.target_id().to_string(),
            },
            &sink,
        )
        .unwrap();
    let mut o = opts(8);
    o.journal = Some(journal);
    rt().block_on(copy(src, sink, &o, Arc::new(Progress::new())))
        .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), data);
    let seen = books.lock().unwrap().seen.clone();
    assert!(
        seen.iter().any(|w| *w > 0),
        "no progress record was seen during the copy: {seen:?}"
    );
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    assert!(
        !journal_path.exists(),
        "a finished copy removes its journal"
    );
}

/// A stream over `data` handing out pieces of `piece` bytes at most (short reads, as a
/// pipe gives them), failing at `fail_at` if set, and counting closes.
#[derive(Debug)]
struct MemStream {
    data: Vec<u8>,
    at: usize,
    piece: usize,
    fail_at: Option<usize>,
    declared: Option<u64>,
}

impl crate::source::StreamSource for MemStream {
    fn describe(&self) -> String {
        "memory stream".into()
    }
    fn size(&self) -> Option<u64> {
        self.declared
    }
    fn next(&mut self, mut buf: Buf) -> BoxFuture<'_, Result<crate::source::Piece, Error>> {
        Box::pin(async move {
            if self.fail_at.is_some_and(|f| self.at >= f) {
                return Err(Error::Read {
                    offset: self.at as u64,
                    message: "corrupt stream".into(),
                    retry: Retry::Never,
                });
            }
            let n = buf
                .capacity()
                .min(self.piece)
                .min(self.data.len() - self.at);
            if n == 0 {
                return Ok(crate::source::Piece::End(buf));
            }
            buf.set_len(n);
            buf.as_mut_slice()
                .copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(crate::source::Piece::Data(buf))
        })
    }
    fn close(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
    fn into_bytes(
        self: Box<Self>,
    ) -> Result<crate::source::stream::ByteParts, Box<dyn crate::source::StreamSource>> {
        Err(self)
    }
}

fn mem_stream(data: &[u8], piece: usize) -> MemStream {
    MemStream {
        data: data.to_vec(),
        at: 0,
        piece,
        fail_at: None,
        declared: None,
    }
}

#[test]
fn a_stream_is_copied_exactly_within_the_pool_and_its_zeroes_are_skipped() {
    let (mut data, _) = disk();
    data.truncate(data.len() - 333); // an odd end
    for (buf_count, piece) in [(1, usize::MAX), (4, usize::MAX), (16, 100_000)] {
        let r = rig(0);
        let mut s = mem_stream(&data, piece);
        let progress = Arc::new(Progress::new());
        let stats = rt()
            .block_on(copy_stream(
                &mut s,
                r.sink.clone(),
                &opts(buf_count),
                progress.clone(),
            ))
            .unwrap();
        let ctx = format!("{buf_count} buffers, pieces of {piece}");
        assert_eq!(std::fs::read(&r.path).unwrap(), data, "[{ctx}]");
        assert_eq!(stats.size, data.len() as u64, "[{ctx}]");
        let max = r.inflight.max.load(Ordering::SeqCst);
        assert!(max <= buf_count, "[{ctx}] {max} buffers out");
        if buf_count > 1 && piece == usize::MAX {
            assert!(max > 1, "[{ctx}] writes overlapped the next read");
        }
        assert!(
            stats.bytes_skipped > 0,
            "[{ctx}] zero pieces skipped: {stats:?}"
        );
        assert_eq!(
            stats.bytes_written + stats.bytes_skipped,
            data.len() as u64,
            "[{ctx}] every byte written or skipped"
        );
        assert_eq!(progress.durable(), data.len() as u64, "[{ctx}]");
    }
}

#[test]
fn a_stream_failing_midway_fails_the_job_and_is_never_done() {
    let (data, _) = disk();
    let r = rig(0);
    let mut s = mem_stream(&data, usize::MAX);
    s.fail_at = Some(5 * MIB as usize);
    let progress = Arc::new(Progress::new());
    let e = rt()
        .block_on(copy_stream(
            &mut s,
            r.sink.clone(),
            &opts(4),
            progress.clone(),
        ))
        .expect_err("fails");
    assert!(matches!(e, Error::Read { .. }), "{e:?}");
    assert_ne!(progress.phase(), "done");
}

#[test]
fn a_stream_that_ends_short_of_or_past_its_declared_size_fails() {
    let data = vec![7u8; 3 * MIB as usize];
    for declared in [2 * MIB, 4 * MIB] {
        let r = rig(0);
        let mut s = mem_stream(&data, usize::MAX);
        s.declared = Some(declared);
        let e = rt()
            .block_on(copy_stream(
                &mut s,
                r.sink.clone(),
                &opts(2),
                Arc::new(Progress::new()),
            ))
            .expect_err("size mismatch");
        assert!(e.to_string().contains("bytes"), "{declared}: {e}");
    }
}
