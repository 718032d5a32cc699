//! Byte-identical copies into files, with both I/O engines, checked by independent
//! tools (`nbdcopy` for the reference, `cmp` / `qemu-img compare` for the check).

mod common;

use common::*;

const MIB: u64 = 1024 * 1024;
/// Not a multiple of 512 or 4096: exercises the unaligned tail.
const ODD_SIZE: u64 = 10 * MIB + 513;

/// Copy the export at `uri` into a new file with each engine and compare it with
/// nbdcopy's copy. Returns the summaries, one per engine.
fn copy_new_file_matches_nbdcopy(uri: &str, extra: &[&str]) -> Vec<serde_json::Value> {
    let dir = tempfile::tempdir().unwrap();
    let reference = nbdcopy_reference(uri, dir.path());
    let mut out = Vec::new();
    for_each_engine(|engine| {
        let target = dir.path().join(format!("target-{engine}.img"));
        let ctx = format!("{uri} {extra:?}, engine {engine}");
        let v = copy(uri, &target, engine, extra).success(&ctx);
        assert_eq!(v["engine"], engine, "[{ctx}] engine in summary");
        assert_eq!(num(&v, "size"), file_size(&reference), "[{ctx}] size");
        assert_identical(&target, &reference, &ctx);
        out.push(v);
    });
    out
}

#[test]
fn pattern_64m_into_new_file_is_identical() {
    if !require(&["nbdkit", "nbdcopy", "cmp"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::nbdkit(dir.path(), &["pattern", "size=64M"]);
    for v in copy_new_file_matches_nbdcopy(&server.uri(), &[]) {
        assert_eq!(num(&v, "bytes_written"), 64 * MIB, "all data: {v}");
    }
}

#[test]
fn pattern_with_unaligned_size_into_new_file_is_identical() {
    if !require(&["nbdkit", "nbdcopy", "cmp"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let size = format!("size={ODD_SIZE}");
    let server = Server::nbdkit(dir.path(), &["pattern", &size]);
    copy_new_file_matches_nbdcopy(&server.uri(), &[]);
}

#[test]
fn tiny_and_ragged_exports_are_identical() {
    if !require(&["nbdkit", "nbdcopy", "cmp"]) {
        return;
    }
    for size in [0u64, 1, 511, 512, 4095, 4097, 65537] {
        let dir = tempfile::tempdir().unwrap();
        let arg = format!("size={size}");
        let server = Server::nbdkit(dir.path(), &["pattern", &arg]);
        for v in copy_new_file_matches_nbdcopy(&server.uri(), &[]) {
            assert_eq!(num(&v, "size"), size, "{v}");
        }
    }
}

#[test]
fn sparse_random_into_new_file_is_identical_and_stays_sparse() {
    if !require(&["nbdkit", "nbdcopy", "cmp"]) {
        return;
    }
    const SIZE: u64 = 512 * MIB;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::nbdkit(
        dir.path(),
        &["sparse-random", "size=512M", "percent=10", "seed=4242"],
    );
    let reference = nbdcopy_reference(&server.uri(), dir.path());
    for_each_engine(|engine| {
        let target = dir.path().join(format!("sparse-{engine}.img"));
        let ctx = format!("sparse-random, engine {engine}");
        let v = copy(&server.uri(), &target, engine, &[]).success(&ctx);
        assert_identical(&target, &reference, &ctx);
        assert!(num(&v, "bytes_skipped") > 0, "[{ctx}] nothing skipped: {v}");
        assert_eq!(
            num(&v, "bytes_written") + num(&v, "bytes_skipped") + num(&v, "bytes_zeroed"),
            SIZE,
            "[{ctx}] the summary must account for every byte: {v}"
        );
        let used = allocated(&target);
        assert!(
            used < SIZE * 3 / 10,
            "[{ctx}] target not sparse: {used} of {SIZE} bytes allocated"
        );
    });
}

#[test]
fn sparse_source_larger_than_one_extent_window_is_identical() {
    // 2.5 GB: the allocation is fetched in 1 GiB windows; extents cross their edges.
    if !require(&["nbdkit", "nbdcopy", "qemu-img"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::nbdkit(
        dir.path(),
        &["sparse-random", "size=2600000007", "percent=1", "seed=7"],
    );
    copy_new_file_matches_nbdcopy(&server.uri(), &[]);
}

/// `data` plugin: a few bytes at scattered, partly unaligned offsets; zeroes between.
fn data_server(dir: &std::path::Path) -> Server {
    Server::nbdkit(
        dir,
        &[
            "data",
            "data=1 2 3 @0x100000 4 5 6 @0x3ff001 7 @0x5a0000 8 9 10 @0x7ffffe 11 12",
            "size=8M",
        ],
    )
}

/// An existing target full of 0xAA garbage of `garbage_len` bytes.
fn existing_garbage_target_becomes_identical(garbage_len: u64) {
    if !require(&["nbdkit", "nbdcopy", "cmp"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = data_server(dir.path());
    let reference = nbdcopy_reference(&server.uri(), dir.path());
    for_each_engine(|engine| {
        let target = dir.path().join(format!("existing-{engine}.img"));
        fill(&target, 0xAA, garbage_len);
        let ctx = format!("existing {garbage_len}-byte garbage file, engine {engine}");
        let v = copy(&server.uri(), &target, engine, &[]).success(&ctx);
        assert_identical(&target, &reference, &ctx);
        assert!(
            num(&v, "bytes_zeroed") > 0,
            "[{ctx}] zero ranges of an existing file must be zeroed: {v}"
        );
        assert_eq!(num(&v, "bytes_skipped"), 0, "[{ctx}] {v}");
    });
}

#[test]
fn existing_larger_garbage_file_is_truncated_and_identical() {
    existing_garbage_target_becomes_identical(16 * MIB + 4097);
}

#[test]
fn existing_smaller_garbage_file_is_extended_and_identical() {
    existing_garbage_target_becomes_identical(3 * MIB + 1);
}

#[test]
fn existing_file_with_unaligned_source_size_gets_no_stale_tail() {
    // The source ends with a zero range that is not 4 KiB aligned: the ragged tail
    // must be zeroed too, not left as garbage.
    if !require(&["nbdkit", "nbdcopy", "cmp"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let size = format!("size={ODD_SIZE}");
    let server = Server::nbdkit(dir.path(), &["data", "data=1 2 3 @0x200000 4 5", &size]);
    let reference = nbdcopy_reference(&server.uri(), dir.path());
    for_each_engine(|engine| {
        let target = dir.path().join(format!("ragged-{engine}.img"));
        fill(&target, 0xAA, 2 * ODD_SIZE);
        let ctx = format!("ragged zero tail, engine {engine}");
        copy(&server.uri(), &target, engine, &[]).success(&ctx);
        assert_identical(&target, &reference, &ctx);
    });
}

#[test]
fn qcow2_served_by_qemu_nbd_is_identical() {
    // qemu-nbd 10 negotiates extended headers: this is the extended-header path.
    if !require(&["qemu-img", "qemu-io", "qemu-nbd"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let qcow2 = dir.path().join("source.qcow2");
    let q = qcow2.to_str().unwrap();
    qemu_image(
        &qcow2,
        "qcow2",
        "16M",
        &[
            "write -P 0x5a 1M 3M",
            "write -z 8M 1M",
            "write -P 0x11 12M 4k",
            "write -P 0x22 15M 513",
        ],
    );
    let server = Server::qemu_nbd(dir.path(), "disk", &["-f", "qcow2", "-r", q]);
    for_each_engine(|engine| {
        let target = dir.path().join(format!("from-qcow2-{engine}.img"));
        let ctx = format!("qemu-nbd qcow2, engine {engine}");
        let v = copy(&server.uri(), &target, engine, &["-v"]).success(&ctx);
        assert_eq!(num(&v, "size"), 16 * MIB, "[{ctx}] {v}");
        assert!(num(&v, "bytes_skipped") > 0, "[{ctx}] holes skipped: {v}");
        // Not `-s`: strict mode also compares allocation, which legitimately differs
        // between a sparse raw file and qcow2 clusters. Sizes are checked above.
        let t = target.to_str().unwrap();
        let o = std::process::Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "qcow2", t, q])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "[{ctx}] qemu-img compare: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    });
}

#[test]
fn local_sparse_raw_file_source_is_identical_and_sparse() {
    if !require(&["cmp"]) {
        return;
    }
    use std::os::unix::fs::FileExt;
    const SIZE: u64 = 64 * MIB + 1000;
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.raw");
    let f = std::fs::File::create(&source).unwrap();
    f.set_len(SIZE).unwrap();
    for (i, at) in [0u64, 4096 * 3 + 17, 5 * MIB, 33 * MIB - 100, SIZE - 10]
        .into_iter()
        .enumerate()
    {
        let chunk: Vec<u8> = (0..(64 * 1024).min(SIZE - at))
            .map(|j| ((j as u8).wrapping_mul(7) ^ i as u8) | 1)
            .collect();
        f.write_all_at(&chunk, at).unwrap();
    }
    f.sync_all().unwrap();
    drop(f);
    for_each_engine(|engine| {
        let target = dir.path().join(format!("copy-{engine}.img"));
        let ctx = format!("local sparse source, engine {engine}");
        let v = copy(source.to_str().unwrap(), &target, engine, &[]).success(&ctx);
        assert_identical(&target, &source, &ctx);
        assert!(num(&v, "bytes_skipped") > 0, "[{ctx}] {v}");
        assert!(
            allocated(&target) < 4 * MIB,
            "[{ctx}] target not sparse: {} bytes allocated",
            allocated(&target)
        );
    });
}

#[test]
fn local_file_source_with_only_holes_gives_an_all_zero_file() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("empty.raw");
    std::fs::File::create(&source)
        .unwrap()
        .set_len(8 * MIB + 3)
        .unwrap();
    for_each_engine(|engine| {
        let target = dir.path().join(format!("zeros-{engine}.img"));
        fill(&target, 0xAA, MIB);
        let ctx = format!("all-hole local source onto garbage, engine {engine}");
        copy(source.to_str().unwrap(), &target, engine, &[]).success(&ctx);
        assert_eq!(file_size(&target), 8 * MIB + 3, "[{ctx}]");
        assert_filled(&target, 0, 8 * MIB + 3, 0, &ctx);
    });
}

#[test]
fn no_extents_gives_the_same_bytes() {
    if !require(&["nbdkit", "nbdcopy", "cmp"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::nbdkit(
        dir.path(),
        &["sparse-random", "size=64M", "percent=20", "seed=11"],
    );
    for v in copy_new_file_matches_nbdcopy(&server.uri(), &["--no-extents"]) {
        assert_eq!(num(&v, "bytes_read"), 64 * MIB, "reads everything: {v}");
        // All-zero buffers are not written into a new file.
        assert!(num(&v, "bytes_skipped") > 0, "zero buffers skipped: {v}");
    }
}

#[test]
fn no_zero_detect_gives_the_same_bytes_and_writes_everything() {
    if !require(&["nbdkit", "nbdcopy", "cmp"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::nbdkit(
        dir.path(),
        &["sparse-random", "size=32M", "percent=20", "seed=14"],
    );
    let extra = ["--no-extents", "--no-zero-detect"];
    for v in copy_new_file_matches_nbdcopy(&server.uri(), &extra) {
        assert_eq!(num(&v, "bytes_written"), 32 * MIB, "writes everything: {v}");
        assert_eq!(num(&v, "bytes_skipped"), 0, "{v}");
    }
}

#[test]
fn one_request_in_flight_gives_the_same_bytes() {
    if !require(&["nbdkit", "nbdcopy", "cmp"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::nbdkit(
        dir.path(),
        &["sparse-random", "size=32M", "percent=30", "seed=12"],
    );
    let extra = ["--buf-size-in-64k", "1", "--buf-count", "1"];
    for v in copy_new_file_matches_nbdcopy(&server.uri(), &extra) {
        assert_eq!(num(&v, "buf_size"), 65536, "{v}");
        assert_eq!(num(&v, "buf_count"), 1, "{v}");
    }
}

#[test]
fn four_connections_give_the_same_bytes() {
    if !require(&["nbdkit", "nbdcopy", "cmp"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::nbdkit(
        dir.path(),
        &["sparse-random", "size=64M", "percent=30", "seed=13"],
    );
    copy_new_file_matches_nbdcopy(&server.uri(), &["--connections", "4"]);
}

#[test]
fn buffered_target_writes_give_the_same_bytes() {
    if !require(&["nbdkit", "nbdcopy", "cmp"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let size = format!("size={ODD_SIZE}");
    let server = Server::nbdkit(dir.path(), &["pattern", &size]);
    for v in copy_new_file_matches_nbdcopy(&server.uri(), &["--direct", "off"]) {
        assert_eq!(v["direct"], false, "{v}");
    }
}

#[test]
fn buffers_larger_than_the_server_maximum_are_clamped() {
    // The server accepts at most 1 MiB per request; 64 MiB buffers must not be sent.
    if !require(&["nbdkit", "nbdcopy", "cmp"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::nbdkit(
        dir.path(),
        &[
            "--filter=blocksize-policy",
            "pattern",
            "size=24M",
            "blocksize-maximum=1M",
            "blocksize-error-policy=error",
        ],
    );
    let extra = ["--buf-size-in-64k", "1024", "--buf-count", "2"];
    for v in copy_new_file_matches_nbdcopy(&server.uri(), &extra) {
        assert!(num(&v, "buf_size") <= MIB, "buffers not clamped: {v}");
    }
}

#[test]
fn server_minimum_block_size_larger_than_4k_is_respected() {
    // Spec: the minimum block size may be up to 64 KiB; extents may be finer than
    // that (reliability.md 5.1 row 14: round, never fail). nbdcopy copies this fine.
    if !require(&["nbdkit", "nbdcopy", "cmp"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::nbdkit(
        dir.path(),
        &[
            "--filter=blocksize-policy",
            "data",
            "data=1 @0x10000 2 @0x30000 3",
            "size=1M",
            "blocksize-minimum=65536",
            "blocksize-preferred=65536",
            "blocksize-maximum=1M",
            "blocksize-error-policy=error",
        ],
    );
    copy_new_file_matches_nbdcopy(&server.uri(), &[]);
}

#[test]
fn block_status_errors_fall_back_to_reading_everything() {
    if !require(&["nbdkit", "nbdcopy", "cmp"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The reference comes from a server without the filter (nbdcopy would fall back
    // too, but keep the oracle independent of the fault).
    let clean = Server::nbdkit(
        dir.path(),
        &["sparse-random", "size=64M", "percent=20", "seed=21"],
    );
    let reference = nbdcopy_reference(&clean.uri(), dir.path());
    let faulty = Server::nbdkit(
        dir.path(),
        &[
            "--filter=error",
            "sparse-random",
            "size=64M",
            "percent=20",
            "seed=21",
            "error-extents-rate=100%",
        ],
    );
    for_each_engine(|engine| {
        let target = dir.path().join(format!("no-extents-{engine}.img"));
        let ctx = format!("error-extents-rate=100%, engine {engine}");
        let r = copy(&faulty.uri(), &target, engine, &[]);
        let v = r.success(&ctx);
        assert_eq!(num(&v, "bytes_read"), 64 * MIB, "[{ctx}] reads all: {v}");
        assert!(
            r.stderr.contains("block status failed"),
            "[{ctx}] the fallback is logged: {}",
            r.stderr
        );
        assert_identical(&target, &reference, &ctx);
    });
}

#[test]
fn server_without_structured_replies_is_identical() {
    // nbdkit --no-sr: simple replies only, hence no block status; every byte is read.
    if !require(&["nbdkit", "nbdcopy", "cmp"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::nbdkit(
        dir.path(),
        &[
            "--no-sr",
            "sparse-random",
            "size=32M",
            "percent=20",
            "seed=5",
        ],
    );
    for v in copy_new_file_matches_nbdcopy(&server.uri(), &[]) {
        assert_eq!(num(&v, "bytes_read"), 32 * MIB, "{v}");
    }
}

#[test]
fn tcp_uri_is_identical() {
    if !require(&["nbdkit", "nbdcopy", "cmp"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_server, port) = Server::nbdkit_tcp(
        dir.path(),
        &["sparse-random", "size=32M", "percent=30", "seed=15"],
    );
    let uri = format!("nbd://127.0.0.1:{port}/");
    copy_new_file_matches_nbdcopy(&uri, &["--connections", "3"]);
}

#[test]
fn fake_server_with_simple_replies_is_copied_correctly() {
    // Sanity check of the fake server used by protocol.rs, and simple-reply interop.
    if !require(&["cmp"]) {
        return;
    }
    const SIZE: u64 = 3 * MIB + 777;
    let dir = tempfile::tempdir().unwrap();
    let fake = fake_nbd::FakeNbd::start(dir.path(), SIZE, fake_nbd::Fault::None);
    let expected = dir.path().join("expected.img");
    let bytes: Vec<u8> = (0..SIZE).map(fake_nbd::byte_at).collect();
    std::fs::write(&expected, bytes).unwrap();
    for_each_engine(|engine| {
        let target = dir.path().join(format!("fake-{engine}.img"));
        let ctx = format!("fake server, engine {engine}");
        copy(&fake.uri(), &target, engine, &[]).success(&ctx);
        assert_identical(&target, &expected, &ctx);
    });
}

/// The pool is registered with io_uring (fixed buffers: O_DIRECT writes without pinning
/// pages per request) and says so in `--json`; where the kernel refuses (RLIMIT_MEMLOCK
/// of 64 KiB, CAP_IPC_LOCK dropped, as in a pod) and with the sync engine, nothing is
/// registered and the log says why; the bytes are nbdcopy's every time.
#[test]
fn the_pool_is_registered_with_io_uring_unless_memlock_refuses() {
    if !require(&["nbdkit", "nbdcopy", "cmp", "setpriv", "prlimit"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = ferry_test_kit::Server::nbdkit(
        dir.path(),
        &[
            "sparse-random",
            "size=64M",
            "percent=50",
            "runlength=1048576",
            "seed=21",
        ],
    );
    let reference = nbdcopy_reference(&src.uri(), dir.path());
    let out = dir.path().join("a.img");
    let v = copy(&src.uri(), &out, "uring", &[]).success("uring");
    assert_eq!(num(&v, "fixed_buffers"), num(&v, "buf_count"), "{v}");
    assert_identical(&out, &reference, "registered");

    std::fs::remove_file(&out).unwrap();
    let mut c = std::process::Command::new("setpriv");
    c.args([
        "--bounding-set=-ipc_lock",
        "--",
        "prlimit",
        "--memlock=65536:65536",
        FERRY,
    ])
    .args(["copy", &src.uri()])
    .arg(&out)
    .args(["--json", "--no-progress", "--io-engine", "uring"])
    .env_remove("FERRY_LOG")
    .env("NO_COLOR", "1");
    let r = run(c, RUN_LIMIT);
    let v = r.success("memlock 64 KiB");
    assert_eq!(num(&v, "fixed_buffers"), 0, "{v}");
    assert!(
        r.stderr
            .contains("RLIMIT_MEMLOCK (64 KiB) is below the pool (32 MiB)"),
        "{}",
        r.stderr
    );
    assert_identical(&out, &reference, "memlock 64 KiB");

    std::fs::remove_file(&out).unwrap();
    let v = copy(&src.uri(), &out, "sync", &[]).success("sync");
    assert_eq!(num(&v, "fixed_buffers"), 0, "{v}");
    assert_identical(&out, &reference, "sync");
}
