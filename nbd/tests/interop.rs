//! Interoperability with real NBD servers (nbdkit, qemu-nbd) on Unix sockets.
//!
//! Every byte the client reads is checked against known content (`nbdkit pattern`,
//! `nbdkit data`) or against the same export read by an independent tool (`nbdcopy`),
//! and every expected failure is asserted by error variant and message.

mod common;

use std::time::{Duration, Instant};

use common::{
    Server, check_extent_rules, check_pattern, clamp_extents, nbdcopy, opts, qemu_image, tools,
};
use ferry_nbd::{BlockDescriptor, Client, ConnectOptions, Error, STATE_HOLE, STATE_ZERO, Uri};
use tokio::task::JoinSet;

const MIB: u64 = 1024 * 1024;
const HOLE_ZERO: u64 = (STATE_HOLE | STATE_ZERO) as u64;

async fn connect(uri: &Uri, o: &ConnectOptions) -> Client {
    Client::<Vec<u8>>::connect(uri, o)
        .await
        .unwrap_or_else(|e| panic!("connect {uri}: {e}"))
}

/// Block status over `[offset, offset+len)`, re-asking from the first uncovered offset
/// as the spec requires, clamped to the range: (absolute start, length, flags).
async fn map(client: &Client, ctx: u32, offset: u64, len: u64) -> Vec<(u64, u64, u64)> {
    let mut out: Vec<(u64, u64, u64)> = Vec::new();
    let mut at = offset;
    let end = offset + len;
    for _ in 0..10_000 {
        if at >= end {
            return out;
        }
        let d = client
            .block_status(at, end - at, ctx)
            .await
            .expect("block status");
        check_extent_rules(&d, end - at);
        for (s, n, f) in clamp_extents(&d, end - at) {
            match out.last_mut() {
                Some(last) if last.2 == f && last.0 + last.1 == at + s => last.1 += n,
                _ => out.push((at + s, n, f)),
            }
        }
        at += d.iter().map(|e| e.length).sum::<u64>().min(end - at);
    }
    panic!("block status made no progress at {at}");
}

/// Deterministic pseudo-random numbers (no extra dev-dependency needed).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pattern_64_concurrent_reads_match_the_pattern() {
    if !tools(&["nbdkit"]) {
        return;
    }
    let srv = Server::nbdkit_temp(&["pattern", "size=10M"]);
    // Parse the URI as a user would give it, to cover uri.rs on the way.
    let uri: Uri = srv.uri_for_export("").parse().expect("uri");
    let client = connect(&uri, &opts()).await;
    let info = client.info().clone();
    assert_eq!(info.size, 10 * MIB);
    assert!(info.structured, "nbdkit negotiates structured replies");
    assert!(!info.extended, "nbdkit 1.32 has no extended headers");
    assert!(info.read_only());
    assert!(info.context_id("base:allocation").is_some(), "{info:?}");

    let mut rng = Lcg(42);
    let mut set = JoinSet::new();
    let mut total = 0u64;
    for i in 0..64u64 {
        // Sizes from 1 byte to 2 MiB, some unaligned, plus the export's last bytes.
        let len = match i % 4 {
            0 => 1 + rng.next() % 4096,
            1 => 4096 * (1 + rng.next() % 64),
            2 => 1 + rng.next() % (2 * MIB),
            _ => 512,
        };
        let off = if i == 63 {
            info.size - len
        } else {
            rng.next() % (info.size - len)
        };
        total += len;
        let c = client.clone();
        set.spawn(async move {
            let buf = c.read(off, vec![0u8; len as usize]).await;
            (off, buf)
        });
    }
    let mut n = 0;
    while let Some(r) = set.join_next().await {
        let (off, buf) = r.expect("task");
        let buf = buf.unwrap_or_else(|e| panic!("read at {off}: {e}"));
        check_pattern(off, &buf);
        n += 1;
    }
    assert_eq!(n, 64);
    assert!(total > 10 * MIB, "the reads cover a lot of bytes ({total})");

    // One read at the maximum payload the client allows.
    let max = client.info().max_payload().min(8 * MIB);
    let buf = client
        .read(MIB, vec![0; max as usize])
        .await
        .expect("big read");
    check_pattern(MIB, &buf);
    client.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pattern_of_odd_size_matches_nbdcopy_and_rejects_reads_past_the_end() {
    if !tools(&["nbdkit", "nbdcopy"]) {
        return;
    }
    let srv = Server::nbdkit_temp(&["pattern", "size=1000000"]);
    let client = connect(&srv.nbd_uri(""), &opts()).await;
    let size = client.size();
    assert_eq!(size, 1_000_000);

    // Whole export in 64 KiB pieces, all in flight at once; the last piece is short.
    let mut set = JoinSet::new();
    let mut off = 0;
    while off < size {
        let len = (64 * 1024).min(size - off);
        let c = client.clone();
        set.spawn(async move { (off, c.read(off, vec![0; len as usize]).await) });
        off += len;
    }
    let mut whole = vec![0u8; size as usize];
    while let Some(r) = set.join_next().await {
        let (off, buf) = r.expect("task");
        let buf = buf.expect("read");
        whole[off as usize..off as usize + buf.len()].copy_from_slice(&buf);
    }
    check_pattern(0, &whole);
    let copy = srv.path("copy.img");
    nbdcopy(&srv.uri_for_export(""), &copy);
    assert!(
        std::fs::read(&copy).expect("copy") == whole,
        "nbdcopy saw other bytes"
    );

    // The last 7 bytes (a partial pattern word).
    let tail = client.read(size - 7, vec![0; 7]).await.expect("tail");
    check_pattern(size - 7, &tail);

    // Past the end, zero length and overflow are refused locally.
    for (off, len) in [(size - 7, 8u64), (size, 1), (0, 0)] {
        let e = client.read(off, vec![0; len as usize]).await.unwrap_err();
        assert!(matches!(e, Error::InvalidRequest(_)), "{e}");
        assert!(e.to_string().contains("outside the export"), "{e}");
    }
    // And the connection is still fine.
    let b = client
        .read(4096, vec![0; 4096])
        .await
        .expect("read after refusals");
    check_pattern(4096, &b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_plugin_block_status_reports_holes_as_hole_zero() {
    if !tools(&["nbdkit"]) {
        return;
    }
    // Three single bytes at 0, 1 MiB and 4 MiB of an 8 MiB export; the rest is sparse.
    let srv = Server::nbdkit_temp(&["data", "data=1 @1048576 2 @4194304 3", "size=8M"]);
    let client = connect(&srv.nbd_uri(""), &opts()).await;
    let size = client.size();
    assert_eq!(size, 8 * MIB);
    let ctx = client
        .info()
        .context_id("base:allocation")
        .expect("context");
    let data_at = [0, MIB, 4 * MIB];

    let ranges = map(&client, ctx, 0, size).await;
    assert_eq!(ranges.iter().map(|r| r.1).sum::<u64>(), size, "{ranges:?}");
    assert_eq!(ranges[0].0, 0);
    for w in ranges.windows(2) {
        assert_eq!(
            w[0].0 + w[0].1,
            w[1].0,
            "extents are consecutive: {ranges:?}"
        );
    }
    let mut holes = 0;
    for &(s, n, f) in &ranges {
        let has_data = data_at.iter().any(|d| (s..s + n).contains(d));
        if has_data {
            assert_eq!(f, 0, "data at [{s}, +{n}) reported as {f}");
        } else {
            assert_eq!(f, HOLE_ZERO, "hole at [{s}, +{n}) reported as {f}");
            holes += n;
        }
    }
    assert!(holes > 6 * MIB, "most of the export is a hole: {ranges:?}");

    // Everything reported ZERO reads as zero, and the data bytes are where they should be.
    let whole = client
        .read(0, vec![0xff; size as usize])
        .await
        .expect("read");
    for &(s, n, f) in &ranges {
        if f & u64::from(STATE_ZERO) != 0 {
            assert!(
                whole[s as usize..(s + n) as usize].iter().all(|b| *b == 0),
                "[{s}, +{n}) is reported zero but is not"
            );
        }
    }
    assert_eq!(
        (whole[0], whole[MIB as usize], whole[4 * MIB as usize]),
        (1, 2, 3)
    );
    assert_eq!(whole.iter().filter(|b| **b != 0).count(), 3);

    // A request starting inside a hole, and one capped to a short length.
    let d = client.block_status(2 * MIB, 4096, ctx).await.expect("bs");
    check_extent_rules(&d, 4096);
    assert_eq!(d[0].flags, HOLE_ZERO);
    let d = client.block_status(MIB, 1, ctx).await.expect("bs");
    check_extent_rules(&d, 1);
    assert_eq!(d[0].flags, 0);

    // An unselected context id is refused locally.
    let e = client.block_status(0, 4096, ctx + 1000).await.unwrap_err();
    assert!(e.to_string().contains("was not selected"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_writes_flush_and_zeroes_read_back_and_match_nbdcopy() {
    if !tools(&["nbdkit", "nbdcopy"]) {
        return;
    }
    let srv = Server::nbdkit_temp(&["memory", "size=8M"]);
    let client = connect(&srv.nbd_uri(""), &opts()).await;
    let size = client.size() as usize;
    assert!(!client.info().read_only());
    let ctx = client
        .info()
        .context_id("base:allocation")
        .expect("context");
    assert_eq!(
        map(&client, ctx, 0, size as u64).await,
        vec![(0, size as u64, HOLE_ZERO)]
    );

    let mut expect = vec![0u8; size];
    let mut set = JoinSet::new();
    // Many writes in flight: 64 KiB at each MiB, with distinct bytes.
    for i in 0..8u64 {
        let data = vec![0x10 + i as u8; 64 * 1024];
        let off = i * MIB;
        expect[off as usize..off as usize + data.len()].copy_from_slice(&data);
        let c = client.clone();
        set.spawn(async move { c.write(off, &data).await });
    }
    while let Some(r) = set.join_next().await {
        r.expect("task").expect("write");
    }
    // An unaligned write straddling a page boundary.
    let odd: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
    let odd_at = 3 * MIB as usize - 777;
    client.write(odd_at as u64, &odd).await.expect("odd write");
    expect[odd_at..odd_at + odd.len()].copy_from_slice(&odd);
    // Zero part of the first write (punching allowed) and part of the second (NO_HOLE).
    client
        .write_zeroes(16 * 1024, 16 * 1024, false)
        .await
        .expect("zero");
    expect[16 * 1024..32 * 1024].fill(0);
    client
        .write_zeroes(MIB + 100, 1000, true)
        .await
        .expect("zero no-hole");
    expect[MIB as usize + 100..MIB as usize + 1100].fill(0);
    client.flush().await.expect("flush");

    let back = client.read(0, vec![0xee; size]).await.expect("read back");
    assert!(back == expect, "read-back differs from what was written");

    // Written areas are data now; the untouched tail is still a hole.
    let ranges = map(&client, ctx, 0, size as u64).await;
    let at = |o: u64| {
        ranges
            .iter()
            .find(|r| (r.0..r.0 + r.1).contains(&o))
            .unwrap()
            .2
    };
    assert_eq!(at(2 * MIB), 0, "{ranges:?}");
    assert_eq!(at(2 * MIB + 512 * 1024), HOLE_ZERO, "{ranges:?}");

    let copy = srv.path("copy.img");
    nbdcopy(&srv.uri_for_export(""), &copy);
    assert!(
        std::fs::read(&copy).expect("copy") == expect,
        "nbdcopy sees other bytes"
    );
    client.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sparse_random_block_status_is_consistent_with_reads() {
    if !tools(&["nbdkit"]) {
        return;
    }
    let srv = Server::nbdkit_temp(&["sparse-random", "size=32M", "seed=7", "percent=30"]);
    let client = connect(&srv.nbd_uri(""), &opts()).await;
    let size = client.size();
    let ctx = client
        .info()
        .context_id("base:allocation")
        .expect("context");
    let ranges = map(&client, ctx, 0, size).await;
    assert_eq!(ranges.iter().map(|r| r.1).sum::<u64>(), size);
    let mut whole = vec![0xffu8; size as usize];
    let mut set = JoinSet::new();
    let piece = 8 * MIB;
    for i in 0..size / piece {
        let c = client.clone();
        set.spawn(async move { (i, c.read(i * piece, vec![0xff; piece as usize]).await) });
    }
    while let Some(r) = set.join_next().await {
        let (i, b) = r.expect("task");
        let s = (i * piece) as usize;
        whole[s..s + piece as usize].copy_from_slice(&b.expect("read"));
    }
    let (mut data, mut holes) = (0, 0);
    for &(s, n, f) in &ranges {
        let bytes = &whole[s as usize..(s + n) as usize];
        match f {
            0 => {
                data += n;
                assert!(
                    bytes.iter().any(|b| *b != 0),
                    "data extent [{s}, +{n}) is all zero"
                );
            }
            HOLE_ZERO => {
                holes += n;
                assert!(
                    bytes.iter().all(|b| *b == 0),
                    "hole [{s}, +{n}) is not zero"
                );
            }
            other => panic!("unexpected flags {other}"),
        }
    }
    assert!(
        data > 0 && holes > 0,
        "both kinds present: data {data}, holes {holes}"
    );
}

/// A qcow2 image of 4 MiB with 64 KiB of 0xab at 1 MiB, served by qemu-nbd as "disk".
fn qemu_qcow2() -> Option<Server> {
    if !tools(&["qemu-nbd", "qemu-img", "qemu-io"]) {
        return None;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("d.qcow2");
    qemu_image(&img, "qcow2", "4M", &["write -P 0xab 1M 64k"]);
    let img = img.to_str().expect("utf-8 path").to_string();
    Some(Server::qemu_nbd(dir.path(), "disk", &["-f", "qcow2", &img]).owning(dir))
}

async fn check_qcow2_export(client: &Client, srv: &Server) {
    let size = client.size();
    assert_eq!(size, 4 * MIB);
    let ctx = client
        .info()
        .context_id("base:allocation")
        .expect("context");
    // Holes come back as OFFSET_HOLE chunks: a buffer full of 0xff must be zero-filled.
    let whole = client
        .read(0, vec![0xff; size as usize])
        .await
        .expect("read");
    for (i, b) in whole.iter().enumerate() {
        let want = if (MIB..MIB + 65536).contains(&(i as u64)) {
            0xab
        } else {
            0
        };
        assert_eq!(*b, want, "byte {i}");
    }
    // Reads that straddle the data/hole boundaries.
    for (off, len) in [(MIB - 4096, 8192u64), (MIB + 65536 - 512, 1024), (0, 512)] {
        let b = client
            .read(off, vec![0xff; len as usize])
            .await
            .expect("read");
        assert!(b[..] == whole[off as usize..(off + len) as usize]);
    }
    let ranges = map(client, ctx, 0, size).await;
    assert_eq!(
        ranges,
        vec![
            (0, MIB, HOLE_ZERO),
            (MIB, 65536, 0),
            (MIB + 65536, 3 * MIB - 65536, HOLE_ZERO)
        ]
    );
    let copy = srv.path("copy.img");
    nbdcopy(&srv.uri_for_export("disk"), &copy);
    assert!(
        std::fs::read(&copy).expect("copy") == whole,
        "nbdcopy sees other bytes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_nbd_negotiates_extended_headers_and_reads_holes_as_zero() {
    let Some(srv) = qemu_qcow2() else { return };
    if !tools(&["nbdcopy"]) {
        return;
    }
    let client = connect(&srv.nbd_uri("disk"), &opts()).await;
    let info = client.info().clone();
    assert!(info.extended, "qemu 10 speaks extended headers: {info:?}");
    assert!(info.structured);
    assert!(info.block_size_advertised);
    check_qcow2_export(&client, &srv).await;
    client.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_nbd_without_extended_headers_uses_structured_replies() {
    let Some(srv) = qemu_qcow2() else { return };
    if !tools(&["nbdcopy"]) {
        return;
    }
    let o = ConnectOptions {
        extended_headers: false,
        ..opts()
    };
    let client = connect(&srv.nbd_uri("disk"), &o).await;
    assert!(!client.info().extended);
    assert!(client.info().structured);
    check_qcow2_export(&client, &srv).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_nbd_block_status_beyond_4g_in_one_extended_request() {
    if !tools(&["qemu-nbd", "qemu-img", "qemu-io"]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("big.qcow2");
    qemu_image(&img, "qcow2", "8G", &["write -P 0x5c 6G 64k"]);
    let img = img.to_str().expect("utf-8").to_string();
    let srv = Server::qemu_nbd(dir.path(), "big", &["-f", "qcow2", &img]).owning(dir);

    let client = connect(&srv.nbd_uri("big"), &opts()).await;
    assert!(client.info().extended);
    let ctx = client
        .info()
        .context_id("base:allocation")
        .expect("context");
    let g = 1024 * MIB;
    let d = client.block_status(0, 8 * g, ctx).await.expect("bs");
    check_extent_rules(&d, 8 * g);
    assert_eq!(
        d[0],
        BlockDescriptor {
            length: 6 * g,
            flags: HOLE_ZERO
        },
        "a 64-bit extent in one reply: {d:?}"
    );
    let ranges = map(&client, ctx, 0, 8 * g).await;
    assert_eq!(
        ranges,
        vec![
            (0, 6 * g, HOLE_ZERO),
            (6 * g, 65536, 0),
            (6 * g + 65536, 2 * g - 65536, HOLE_ZERO)
        ]
    );
    let b = client
        .read(6 * g - 512, vec![0xff; 1024])
        .await
        .expect("read");
    assert!(b[..512].iter().all(|x| *x == 0) && b[512..].iter().all(|x| *x == 0x5c));

    // Compact mode caps one request below 4 GiB; the map still comes out the same.
    let o = ConnectOptions {
        extended_headers: false,
        ..opts()
    };
    let compact = connect(&srv.nbd_uri("big"), &o).await;
    assert!(!compact.info().extended);
    let d = compact.block_status(0, 8 * g, ctx).await.expect("bs");
    assert!(d.iter().map(|e| e.length).sum::<u64>() <= 4 * g, "{d:?}");
    assert_eq!(map(&compact, ctx, 0, 8 * g).await, ranges);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_nbd_raw_writes_in_extended_mode_reach_the_file() {
    if !tools(&["qemu-nbd", "qemu-img"]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("w.raw");
    qemu_image(&img, "raw", "4M", &[]);
    let img_s = img.to_str().expect("utf-8").to_string();
    let mut srv =
        Server::qemu_nbd(dir.path(), "w", &["-f", "raw", "--cache=none", &img_s]).owning(dir);
    let client = connect(&srv.nbd_uri("w"), &opts()).await;
    assert!(client.info().extended);
    let mut expect = vec![0u8; 4 * MIB as usize];
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    client.write(512 * 1024, &data).await.expect("write");
    expect[512 * 1024..512 * 1024 + data.len()].copy_from_slice(&data);
    client
        .write_zeroes(600 * 1024, 8192, false)
        .await
        .expect("zeroes");
    expect[600 * 1024..600 * 1024 + 8192].fill(0);
    client.write(3 * MIB, &[0x77; 4096]).await.expect("write");
    expect[3 * MIB as usize..3 * MIB as usize + 4096].fill(0x77);
    client.flush().await.expect("flush");
    let back = client
        .read(0, vec![0xee; expect.len()])
        .await
        .expect("read");
    assert!(back == expect);
    client.disconnect().await;
    drop(client);
    srv.kill();
    assert!(
        std::fs::read(&img).expect("image") == expect,
        "the file holds other bytes"
    );
}

#[tokio::test]
async fn qemu_nbd_unknown_export_is_refused() {
    let Some(srv) = qemu_qcow2() else { return };
    let e = Client::<Vec<u8>>::connect(&srv.nbd_uri("other"), &opts())
        .await
        .unwrap_err();
    match &e {
        Error::Refused { option, reason, .. } => {
            assert!(option.contains("NBD_OPT_GO"), "{e}");
            assert_eq!(*reason, "unknown export", "{e}");
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    // The right name still works on the same server.
    let c = connect(&srv.nbd_uri("disk"), &opts()).await;
    assert_eq!(c.size(), 4 * MIB);
}

#[tokio::test]
async fn nbdkit_without_structured_replies_reads_via_simple_replies() {
    if !tools(&["nbdkit"]) {
        return;
    }
    let srv = Server::nbdkit_temp(&["--no-sr", "pattern", "size=1M"]);
    let client = connect(&srv.nbd_uri(""), &opts()).await;
    let info = client.info().clone();
    assert!(!info.structured && !info.extended, "{info:?}");
    assert!(
        info.contexts.is_empty(),
        "no contexts without structured replies"
    );
    let mut set = JoinSet::new();
    for i in 0..32u64 {
        let c = client.clone();
        let (off, len) = (i * 31_000, 1000 + i * 997);
        set.spawn(async move { (off, c.read(off, vec![0; len as usize]).await) });
    }
    while let Some(r) = set.join_next().await {
        let (off, b) = r.expect("task");
        check_pattern(off, &b.expect("read"));
    }
    let e = client.block_status(0, 4096, 0).await.unwrap_err();
    assert!(matches!(e, Error::InvalidRequest(_)), "{e}");
    assert!(e.to_string().contains("was not selected"), "{e}");
}

#[tokio::test]
async fn nbdkit_read_error_fails_the_read_and_keeps_the_connection() {
    if !tools(&["nbdkit"]) {
        return;
    }
    let srv = Server::nbdkit_temp(&[
        "--filter=error",
        "pattern",
        "size=1M",
        "error-pread=EIO",
        "error-pread-rate=100%",
    ]);
    let client = connect(&srv.nbd_uri(""), &opts()).await;
    let e = client.read(8192, vec![0; 4096]).await.unwrap_err();
    match &e {
        Error::Request {
            command,
            offset,
            errno,
            ..
        } => {
            assert_eq!((*command, *offset, *errno), ("read", 8192, "EIO"), "{e}");
        }
        other => panic!("expected Request error, got {other:?}"),
    }
    assert!(e.to_string().contains("EIO"), "{e}");
    // Still usable: block status works, and reads keep failing cleanly.
    let ctx = client
        .info()
        .context_id("base:allocation")
        .expect("context");
    let d = client
        .block_status(0, 1 << 20, ctx)
        .await
        .expect("bs after EIO");
    check_extent_rules(&d, 1 << 20);
    assert!(client.read(0, vec![0; 512]).await.is_err());
    assert!(client.block_status(0, 4096, ctx).await.is_ok());
}

#[tokio::test]
async fn connect_to_missing_socket_is_a_connect_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let uri = Uri {
        address: ferry_nbd::Address::Unix(dir.path().join("nope.sock")),
        export: String::new(),
        tls: false,
        tls_settings: Default::default(),
    };
    let e = Client::<Vec<u8>>::connect(&uri, &opts()).await.unwrap_err();
    match &e {
        Error::Connect { kind, target, .. } => {
            assert_eq!(*kind, std::io::ErrorKind::NotFound, "{e}");
            assert!(target.contains("nope.sock"), "{e}");
        }
        other => panic!("expected Connect, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_with_reads_in_flight_fails_every_read_without_hanging() {
    if !tools(&["nbdkit"]) {
        return;
    }
    let mut srv = Server::nbdkit_temp(&["--filter=delay", "pattern", "size=10M", "rdelay=2"]);
    let client = connect(&srv.nbd_uri(""), &opts()).await;
    let mut set = JoinSet::new();
    for i in 0..16u64 {
        let c = client.clone();
        set.spawn(async move { c.read(i * 65536, vec![0; 65536]).await });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed = Instant::now();
    srv.kill();
    let all = tokio::time::timeout(Duration::from_secs(5), async {
        let mut errs = Vec::new();
        while let Some(r) = set.join_next().await {
            errs.push(r.expect("task").expect_err("read must fail"));
        }
        errs
    })
    .await
    .expect("pending reads hung after the server died");
    assert_eq!(all.len(), 16);
    for e in &all {
        assert!(
            matches!(e, Error::Disconnected(_) | Error::Io { .. }),
            "unexpected error {e:?}"
        );
    }
    assert!(
        killed.elapsed() < Duration::from_secs(2),
        "took {:?}",
        killed.elapsed()
    );
    // Later requests fail at once too.
    let e = tokio::time::timeout(Duration::from_secs(2), client.read(0, vec![0; 512]))
        .await
        .expect("no hang")
        .unwrap_err();
    assert!(
        matches!(e, Error::Disconnected(_) | Error::Io { .. }),
        "{e:?}"
    );
}

#[tokio::test]
async fn request_timeout_fires_against_a_slow_server() {
    if !tools(&["nbdkit"]) {
        return;
    }
    let srv = Server::nbdkit_temp(&["--filter=delay", "pattern", "size=1M", "rdelay=5"]);
    let o = ConnectOptions {
        request_timeout: Duration::from_millis(500),
        ..opts()
    };
    let client = connect(&srv.nbd_uri(""), &o).await;
    let t = Instant::now();
    let e = client.read(0, vec![0; 4096]).await.unwrap_err();
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t.elapsed()
    );
    match &e {
        Error::Timeout { what, after } => {
            assert_eq!((*what, *after), ("read", Duration::from_millis(500)));
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(e.to_string().contains("timed out"), "{e}");
    // A server that stalls one request is not trusted with more: the connection is dead.
    let t = Instant::now();
    let e = client.read(0, vec![0; 4096]).await.unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e:?}");
    assert!(t.elapsed() < Duration::from_secs(1));
}
