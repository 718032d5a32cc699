//! Block-device targets (loop devices, as root): copies onto garbage, size checks,
//! devices in use, and target-side I/O errors injected through nbdfuse + loop.

mod common;

use std::path::Path;

use common::*;

const MIB: u64 = 1024 * 1024;
const GARBAGE: u8 = 0xAA;
/// Not a multiple of 512: the device keeps bytes past the source's end.
const ODD_SIZE: u64 = 10 * MIB + 513;

/// Copy `uri` onto a fresh garbage-filled loop device of `dev_size` bytes with each
/// engine; the first `size` bytes must equal the nbdcopy reference and the rest of the
/// device must still be garbage.
fn onto_garbage_device(uri: &str, dev_size: u64, loop_opts: &[&str], extra: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let reference = nbdcopy_reference(uri, dir.path());
    let size = file_size(&reference);
    for_each_engine(|engine| {
        let backing = dir.path().join(format!("dev-{engine}.img"));
        fill(&backing, GARBAGE, dev_size);
        let dev = Loop::new(&backing, loop_opts);
        let ctx = format!(
            "{uri} onto {} {loop_opts:?}, engine {engine}",
            dev.dev.display()
        );
        let v = copy(uri, &dev.dev, engine, extra).success(&ctx);
        assert_eq!(num(&v, "size"), size, "[{ctx}] {v}");
        assert_eq!(
            num(&v, "bytes_skipped"),
            0,
            "[{ctx}] a device is never skipped: {v}"
        );
        assert_prefix_identical(&dev.dev, &reference, size, &ctx);
        assert_filled(&dev.dev, size, dev_size - size, GARBAGE, &ctx);
    });
}

#[test]
fn sparse_random_onto_garbage_direct_io_loop_device_is_identical() {
    if !require_root(&["nbdkit", "nbdcopy", "cmp"], true) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::nbdkit(
        dir.path(),
        &["sparse-random", "size=96M", "percent=15", "seed=99"],
    );
    onto_garbage_device(&server.uri(), 128 * MIB, &["--direct-io=on"], &[]);
}

#[test]
fn sparse_random_onto_garbage_buffered_loop_device_is_identical() {
    if !require_root(&["nbdkit", "nbdcopy", "cmp"], true) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::nbdkit(
        dir.path(),
        &["sparse-random", "size=64M", "percent=15", "seed=98"],
    );
    onto_garbage_device(&server.uri(), 64 * MIB, &[], &[]);
}

#[test]
fn unaligned_pattern_onto_larger_loop_device_leaves_the_rest_untouched() {
    if !require_root(&["nbdkit", "nbdcopy", "cmp"], true) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let size = format!("size={ODD_SIZE}");
    let server = Server::nbdkit(dir.path(), &["pattern", &size]);
    onto_garbage_device(&server.uri(), 16 * MIB, &["--direct-io=on"], &[]);
}

#[test]
fn unaligned_zero_tail_onto_4k_sector_loop_device_is_identical() {
    // 4Kn device; the source ends in a zero range whose last 513 bytes are not a whole
    // sector: they must be written as zeroes, and the device's bytes after them kept.
    if !require_root(&["nbdkit", "nbdcopy", "cmp"], true) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let size = format!("size={ODD_SIZE}");
    let server = Server::nbdkit(
        dir.path(),
        &["data", "data=1 2 3 @0x200000 4 5 @0x9ffffe 9 9 9", &size],
    );
    onto_garbage_device(
        &server.uri(),
        16 * MIB,
        &["--direct-io=on", "--sector-size", "4096"],
        &[],
    );
}

#[test]
fn unaligned_data_tail_onto_4k_sector_loop_device_is_identical() {
    // The last data request ends mid-sector on a 4Kn device: it goes through the
    // buffered descriptor, and the rest of that sector must keep the device's bytes.
    if !require_root(&["nbdkit", "nbdcopy", "cmp"], true) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let size = format!("size={ODD_SIZE}");
    let server = Server::nbdkit(dir.path(), &["pattern", &size]);
    onto_garbage_device(
        &server.uri(),
        16 * MIB,
        &["--direct-io=on", "--sector-size", "4096"],
        &[],
    );
}

#[test]
fn loop_device_of_exactly_the_source_size_is_identical() {
    if !require_root(&["nbdkit", "nbdcopy", "cmp"], true) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::nbdkit(
        dir.path(),
        &["sparse-random", "size=32M", "percent=25", "seed=3"],
    );
    onto_garbage_device(
        &server.uri(),
        32 * MIB,
        &["--direct-io=on"],
        &["--no-extents"],
    );
}

#[test]
fn loop_device_smaller_than_the_source_is_refused_before_any_write() {
    if !require_root(&["nbdkit"], true) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::nbdkit(dir.path(), &["pattern", "size=48M"]);
    for_each_engine(|engine| {
        let dev = Loop::with_garbage(dir.path(), 32 * MIB, GARBAGE, true);
        let ctx = format!("48M source onto 32M device, engine {engine}");
        copy(&server.uri(), &dev.dev, engine, &[]).failure(&ctx, &["too small"]);
        assert_filled(&dev.dev, 0, 32 * MIB, GARBAGE, &ctx);
    });
}

#[test]
fn mounted_block_device_is_refused() {
    // reliability.md 4.7: a device that is in use (mounted) is refused (O_EXCL: EBUSY).
    if !require_root(&["mkfs.ext4"], true) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let dev = Loop::with_garbage(dir.path(), 32 * MIB, 0, false);
    sh("mkfs.ext4", &["-q", dev.dev.to_str().unwrap()]);
    let _mnt = Mount::device(&dev.dev, &dir.path().join("mnt"));
    let source = dir.path().join("src.raw");
    fill(&source, 0x42, MIB);
    for_each_engine(|engine| {
        let ctx = format!("mounted device, engine {engine}");
        copy(source.to_str().unwrap(), &dev.dev, engine, &[]).failure(&ctx, &["in use"]);
    });
}

#[test]
fn loop_device_as_a_local_source_is_identical() {
    if !require_root(&["cmp"], true) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("source-dev.img");
    fill(&backing, 0x37, 12 * MIB);
    let dev = Loop::new(&backing, &[]);
    for_each_engine(|engine| {
        let target = dir.path().join(format!("from-dev-{engine}.img"));
        let ctx = format!("loop device as source, engine {engine}");
        let v = copy(dev.dev.to_str().unwrap(), &target, engine, &[]).success(&ctx);
        assert_eq!(num(&v, "bytes_read"), 12 * MIB, "[{ctx}] {v}");
        assert_identical(&target, &backing, &ctx);
    });
}

// -- target-side faults -------------------------------------------------------------------

fn require_fuse() -> bool {
    if !Path::new("/dev/fuse").exists() {
        skip("/dev/fuse is missing");
        return false;
    }
    require_root(&["nbdfuse", "nbdkit"], true)
}

#[test]
fn write_errors_on_a_block_target_fail_the_copy() {
    if !require_fuse() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = FuseDisk::new(
        dir.path(),
        &["--filter=error", "memory", "64M", "error-pwrite-rate=100%"],
    );
    for_each_engine(|engine| {
        // A fresh server each time: nbdkit 1.32 can abort when a client hangs up with
        // replies in flight, which is what a failing copy does.
        let server = Server::nbdkit(dir.path(), &["pattern", "size=8M"]);
        let ctx = format!("EIO on every target write, engine {engine}");
        copy(&server.uri(), disk.path(), engine, &[])
            .failure(&ctx, &["write on the target", "Input/output error"]);
    });
}

#[test]
fn zeroing_errors_on_a_block_target_fail_the_copy() {
    if !require_fuse() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = FuseDisk::new(
        dir.path(),
        &[
            "--filter=error",
            "memory",
            "64M",
            "error-trim-rate=100%",
            "error-zero-rate=100%",
        ],
    );
    for_each_engine(|engine| {
        let server = Server::nbdkit(dir.path(), &["data", "data=1 2 3 @0x300000 4 5", "size=8M"]);
        let ctx = format!("EIO on every target trim/zero, engine {engine}");
        copy(&server.uri(), disk.path(), engine, &[])
            .failure(&ctx, &["zero on the target", "Input/output error"]);
    });
}

#[test]
fn flush_errors_on_a_block_target_fail_the_copy() {
    // reliability.md 1.4 item 6: an error at flush must change the exit code. Writes
    // succeed (into a backing file via dd); only flush fails.
    if !require_fuse() || !require(&["dd"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let back = dir.path().join("flush-backing.img");
    std::fs::File::create(&back)
        .unwrap()
        .set_len(8 * MIB)
        .unwrap();
    let b = back.display();
    let pread =
        format!("pread=dd if={b} skip=$4 count=$3 iflag=skip_bytes,count_bytes status=none");
    let pwrite = format!("pwrite=dd of={b} seek=$4 oflag=seek_bytes conv=notrunc status=none");
    let disk = FuseDisk::new(
        dir.path(),
        &[
            "eval",
            "get_size=echo 8388608",
            "can_write=exit 0",
            "can_flush=exit 0",
            &pread,
            &pwrite,
            "flush=echo 'EIO injected flush failure' >&2; exit 1",
        ],
    );
    for_each_engine(|engine| {
        let server = Server::nbdkit(dir.path(), &["pattern", "size=2M"]);
        let ctx = format!("EIO on target flush, engine {engine}");
        copy(&server.uri(), disk.path(), engine, &[])
            .failure(&ctx, &["flush", "Input/output error"]);
    });
}
