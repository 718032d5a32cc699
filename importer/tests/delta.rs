//! Delta (warm-migration) copies: `--dirty-bitmap NAME` (qemu-nbd's
//! `qemu:dirty-bitmap:NAME` context) and `--changed-extents FILE`.
//!
//! Most cases build a qcow2 image with `qemu-img`/`qemu-io`, make a full copy, change
//! the image, and apply the delta onto the same target. Checks are independent of
//! ferry: the reference is `qemu-img convert -O raw` of the image, compared with `cmp`;
//! "untouched" is proved by garbage planted in the target outside the changed areas
//! that must survive the delta byte for byte.

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
/// Size of the test disks.
const DISK: u64 = 64 * MIB;
/// Garbage planted in the target where the delta must not write.
const GARBAGE: u8 = 0xee;

/// Tools every case here needs.
fn tools() -> bool {
    require(&["qemu-img", "qemu-io", "qemu-nbd", "cmp", "sha256sum"])
}

/// A qcow2 image changed between rounds.
struct Image {
    path: PathBuf,
    dir: PathBuf,
    size: u64,
}

impl Image {
    /// A new, empty qcow2 image of `size` bytes in `dir`.
    fn new(dir: &Path, size: u64) -> Image {
        let path = dir.join("disk.qcow2");
        sh(
            "qemu-img",
            &["create", "-q", "-f", "qcow2", s(&path), &size.to_string()],
        );
        Image {
            path,
            dir: dir.into(),
            size,
        }
    }

    /// Run qemu-io commands (`write -P 0x11 0 8M`, `write -z …`, `discard …`) on the
    /// image; every one must succeed. Only while no server has the image open.
    fn io(&self, cmds: &[&str]) {
        let mut c = Command::new("qemu-io");
        c.args(["-f", "qcow2"]);
        for cmd in cmds {
            c.args(["-c", cmd]);
        }
        let o = c.arg(&self.path).output().expect("run qemu-io");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            o.status.success() && err.trim().is_empty(),
            "qemu-io {cmds:?} failed ({}): {err}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout)
        );
    }

    /// `qemu-img bitmap OPS… IMAGE NAME`.
    fn bitmap(&self, ops: &[&str], name: &str) {
        let mut args = vec!["bitmap", "-f", "qcow2"];
        args.extend_from_slice(ops);
        args.extend_from_slice(&[s(&self.path), name]);
        sh("qemu-img", &args);
    }

    /// qemu-nbd exporting the image read-only as "disk", with `-B bitmap` if given.
    fn export(&self, bitmap: Option<&str>) -> Server {
        let mut args = vec!["-f", "qcow2", "-r"];
        if let Some(b) = bitmap {
            args.extend_from_slice(&["-B", b]);
        }
        args.push(s(&self.path));
        Server::qemu_nbd(&self.dir, "disk", &args)
    }

    /// The image's contents as a raw file, written by qemu-img (independent of ferry).
    fn reference(&self) -> PathBuf {
        let out = self.dir.join(format!(
            "ref-{}.raw",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        sh(
            "qemu-img",
            &[
                "convert",
                "-f",
                "qcow2",
                "-O",
                "raw",
                s(&self.path),
                s(&out),
            ],
        );
        out
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Write `len` bytes of `byte` at `offset` of an existing file or device.
fn poke(path: &Path, offset: u64, len: u64, byte: u8) {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    f.write_all_at(&vec![byte; len as usize], offset)
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    f.sync_all().expect("fsync");
}

/// sha256 of a file.
fn digest(path: &Path) -> String {
    sh("sha256sum", &[s(path)])
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Full copy of `img` (served without a bitmap) into `target`.
fn full_copy(img: &Image, target: &Path, engine: &str) {
    let server = img.export(None);
    let ctx = format!("full copy, engine {engine}");
    let v = copy(&server.uri(), target, engine, &[]).success(&ctx);
    assert_eq!(num(&v, "size"), img.size, "[{ctx}] {v}");
}

/// Apply the delta recorded in `bitmap` onto `target`; returns the summary.
fn delta_bitmap(img: &Image, target: &Path, engine: &str, bitmap: &str, ctx: &str) -> Value {
    let server = img.export(Some(bitmap));
    copy(&server.uri(), target, engine, &["--dirty-bitmap", bitmap]).success(ctx)
}

type Value = serde_json::Value;

/// The image of the recipe: data 0x11 at [0, 8M), 0x22 at [32M, 36M), rest unallocated.
fn base_image(dir: &Path) -> Image {
    let img = Image::new(dir, DISK);
    img.io(&["write -P 0x11 0 8M", "write -P 0x22 32M 4M"]);
    img
}

/// The recipe's changes after the full copy: 64 KiB of data, 1 MiB of zeroes over data,
/// 2 MiB of data over a hole. Returns (data bytes, zeroed bytes).
fn recipe_changes(img: &Image) -> (u64, u64) {
    img.io(&[
        "write -P 0x33 1M 64k",
        "write -z 33M 1M",
        "write -P 0x44 50M 2M",
    ]);
    (64 * KIB + 2 * MIB, MIB)
}

// ---------------------------------------------------------------------------------------
// 1. The recipe, both engines.

#[test]
fn dirty_bitmap_delta_copies_exactly_the_changes() {
    if !tools() {
        return;
    }
    for_each_engine(|engine| {
        let dir = tempfile::tempdir().unwrap();
        let img = base_image(dir.path());
        img.bitmap(&["--add", "--enable"], "b0");
        let target = dir.path().join("target.img");
        full_copy(&img, &target, engine);
        let (data, zeroes) = recipe_changes(&img);

        let ctx = format!("delta b0, engine {engine}");
        let v = delta_bitmap(&img, &target, engine, "b0", &ctx);
        assert_eq!(v["engine"], engine, "[{ctx}] {v}");
        assert_eq!(num(&v, "size"), DISK, "[{ctx}] size is the disk's: {v}");
        // The changed areas are 64 KiB-granular and aligned here: nothing else is read.
        assert_eq!(
            num(&v, "bytes_read"),
            data,
            "[{ctx}] only changed data: {v}"
        );
        assert_eq!(num(&v, "bytes_written"), data, "[{ctx}] {v}");
        assert_eq!(
            num(&v, "bytes_zeroed"),
            zeroes,
            "[{ctx}] changed zeroes: {v}"
        );
        assert_eq!(num(&v, "bytes_skipped"), 0, "[{ctx}] {v}");
        assert_identical(&target, &img.reference(), &ctx);
    });
}

/// Without allocation (`--no-extents`) every changed byte is read — zeroes included —
/// and the result is the same.
#[test]
fn dirty_bitmap_delta_without_allocation_reads_every_changed_byte() {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = base_image(dir.path());
    img.bitmap(&["--add", "--enable"], "b0");
    let target = dir.path().join("target.img");
    full_copy(&img, &target, "sync");
    let (data, zeroes) = recipe_changes(&img);
    let server = img.export(Some("b0"));
    let ctx = "delta b0 --no-extents";
    let v = copy(
        &server.uri(),
        &target,
        "uring",
        &["--dirty-bitmap", "b0", "--no-extents"],
    )
    .success(ctx);
    assert_eq!(num(&v, "bytes_read"), data + zeroes, "[{ctx}] {v}");
    assert_eq!(num(&v, "bytes_zeroed"), 0, "[{ctx}] {v}");
    assert_identical(&target, &img.reference(), ctx);
}

// ---------------------------------------------------------------------------------------
// 2. Several rounds onto the same target.

#[test]
fn several_rounds_of_deltas_stay_identical() {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = base_image(dir.path());
    img.bitmap(&["--add", "--enable"], "b0");
    let target = dir.path().join("target.img");
    full_copy(&img, &target, "uring");

    // Round 1 (b0): data over data, over a hole, and across a data/hole boundary.
    img.io(&[
        "write -P 0x31 2M 512k",
        "write -P 0x32 12M 1M",
        "write -P 0x33 7M 2M",
    ]);
    let v = delta_bitmap(&img, &target, "sync", "b0", "round 1 (b0)");
    assert_eq!(
        num(&v, "bytes_read"),
        (512 + 1024 + 2048) * KIB,
        "round 1: {v}"
    );
    assert_identical(&target, &img.reference(), "round 1");

    // Round 2 (new bitmap b1; b0 stops recording): zeroes over data, a discard, data.
    img.bitmap(&["--add", "--enable"], "b1");
    img.bitmap(&["--disable"], "b0");
    img.io(&["write -z 2M 1M", "discard 32M 1M", "write -P 0x41 60M 64k"]);
    let v = delta_bitmap(&img, &target, "uring", "b1", "round 2 (b1)");
    assert_eq!(num(&v, "bytes_read"), 64 * KIB, "round 2: {v}");
    assert_eq!(num(&v, "bytes_zeroed"), 2 * MIB, "round 2: {v}");
    assert_identical(&target, &img.reference(), "round 2");

    // Round 3 (b0 cleared and reused; b1 stops): discard, data into the discarded
    // range, a 4 KiB write inside a cluster, data at the very end of the disk.
    img.bitmap(&["--clear", "--enable"], "b0");
    img.bitmap(&["--disable"], "b1");
    img.io(&[
        "discard 0 1M",
        "write -P 0x51 32M 4k",
        "write -P 0x52 5M 4k",
        "write -P 0x53 63M 1M",
    ]);
    let v = delta_bitmap(&img, &target, "sync", "b0", "round 3 (b0 again)");
    // 64 KiB granules: [32M, +64K) and [5M, +64K) are read whole, plus [63M, 64M).
    assert_eq!(num(&v, "bytes_read"), 128 * KIB + MIB, "round 3: {v}");
    assert_eq!(num(&v, "bytes_zeroed"), MIB, "round 3: {v}");
    assert_identical(&target, &img.reference(), "round 3");

    // Round 4 (b2): nothing changed, so nothing is read or written.
    img.bitmap(&["--add", "--enable"], "b2");
    img.bitmap(&["--disable"], "b0");
    let before = digest(&target);
    let v = delta_bitmap(&img, &target, "uring", "b2", "round 4 (b2, empty)");
    for k in [
        "bytes_read",
        "bytes_written",
        "bytes_zeroed",
        "bytes_skipped",
    ] {
        assert_eq!(num(&v, k), 0, "round 4 {k}: {v}");
    }
    assert_eq!(digest(&target), before, "round 4: target changed");
    assert_identical(&target, &img.reference(), "round 4");
}

// ---------------------------------------------------------------------------------------
// 3. Nothing outside the changed areas is touched.

#[test]
fn delta_never_writes_outside_the_changed_areas() {
    if !tools() {
        return;
    }
    for_each_engine(|engine| {
        let dir = tempfile::tempdir().unwrap();
        let img = base_image(dir.path());
        // 4 KiB granularity: changed areas are smaller than qcow2's 64 KiB clusters, so
        // the rest of a cluster the guest wrote into is unchanged and must stay alone.
        img.bitmap(&["--add", "--enable", "-g", "4K"], "b0");
        let target = dir.path().join("target.img");
        full_copy(&img, &target, engine);

        img.io(&[
            "write -P 0x33 1M 4k",
            &format!("write -P 0x44 {} 4k", 20 * MIB + 8 * KIB),
            "discard 34M 64k",
            "write -z 40M 4k",
        ]);
        // Unchanged areas next to (and far from) the changed ones: garbage must survive.
        let untouched = [
            (MIB - 4 * KIB, 4 * KIB),
            (MIB + 4 * KIB, 60 * KIB),
            (20 * MIB, 8 * KIB),
            (20 * MIB + 12 * KIB, 52 * KIB),
            (34 * MIB - 4 * KIB, 4 * KIB),
            (34 * MIB + 64 * KIB, 64 * KIB),
            (40 * MIB + 4 * KIB, 4 * KIB),
            (60 * MIB, MIB),
        ];
        // Changed areas that are holes in the source now: garbage there must go.
        let zeroed = [(34 * MIB, 64 * KIB), (40 * MIB, 4 * KIB)];
        for (at, len) in untouched.iter().chain(&zeroed) {
            poke(&target, *at, *len, GARBAGE);
        }

        let ctx = format!("delta with garbage around the changes, engine {engine}");
        let v = delta_bitmap(&img, &target, engine, "b0", &ctx);
        assert_eq!(num(&v, "bytes_read"), 8 * KIB, "[{ctx}] {v}");
        assert_eq!(num(&v, "bytes_zeroed"), 68 * KIB, "[{ctx}] {v}");
        for (at, len) in untouched {
            assert_filled(&target, at, len, GARBAGE, &ctx);
        }
        for (at, len) in zeroed {
            assert_filled(&target, at, len, 0, &ctx);
        }
        // Everything else equals the image: the reference with the same garbage.
        let reference = img.reference();
        for (at, len) in untouched {
            poke(&reference, at, len, GARBAGE);
        }
        assert_identical(&target, &reference, &ctx);
    });
}

/// Bitmap granules of 512 bytes: a changed granule that is a hole in the source is
/// zeroed exactly (a ragged range, written as zero bytes), and a changed data granule
/// costs one 4 KiB block; the bytes next to them stay as they were.
#[test]
fn sub_block_granules_touch_only_their_block() {
    if !tools() {
        return;
    }
    for_each_engine(|engine| {
        let dir = tempfile::tempdir().unwrap();
        let img = Image::new(dir.path(), 16 * MIB);
        img.io(&["write -P 0x11 0 1M"]);
        img.bitmap(&["--add", "--enable", "-g", "512"], "b0");
        let target = dir.path().join("target.img");
        full_copy(&img, &target, engine);
        img.io(&["write -P 0x22 1536 512", "write -z 4M 512"]);
        // Garbage in the changed hole granule (must become zeroes) and right around it,
        // and in the 4 KiB block after the changed data granule's block (must stay).
        poke(&target, 4 * MIB - 4 * KIB, 12 * KIB, GARBAGE);
        poke(&target, 4 * KIB, 4 * KIB, GARBAGE);

        let ctx = format!("512-byte granules, engine {engine}");
        let v = delta_bitmap(&img, &target, engine, "b0", &ctx);
        assert_eq!(num(&v, "bytes_read"), 4 * KIB, "[{ctx}] {v}");
        assert_eq!(num(&v, "bytes_zeroed"), 512, "[{ctx}] {v}");
        assert_filled(&target, 4 * MIB - 4 * KIB, 4 * KIB, GARBAGE, &ctx);
        assert_filled(&target, 4 * MIB, 512, 0, &ctx);
        assert_filled(&target, 4 * MIB + 512, 8 * KIB - 512, GARBAGE, &ctx);
        assert_filled(&target, 4 * KIB, 4 * KIB, GARBAGE, &ctx);
        let reference = img.reference();
        poke(&reference, 4 * MIB - 4 * KIB, 4 * KIB, GARBAGE);
        poke(&reference, 4 * MIB + 512, 8 * KIB - 512, GARBAGE);
        poke(&reference, 4 * KIB, 4 * KIB, GARBAGE);
        assert_identical(&target, &reference, &ctx);
    });
}

// ---------------------------------------------------------------------------------------
// 4. A block-device target.

#[test]
fn delta_onto_a_loop_device() {
    if !tools() || !require_root(&[], true) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = base_image(dir.path());
    img.bitmap(&["--add", "--enable"], "b0");
    // A sparse backing file larger than the disk; the part past the disk holds garbage
    // that neither copy may touch.
    let backing = dir.path().join("backing.img");
    std::fs::File::create(&backing)
        .unwrap()
        .set_len(DISK + 16 * MIB)
        .unwrap();
    poke(&backing, DISK, 16 * MIB, GARBAGE);
    let dev = Loop::new(&backing, &[]);
    full_copy(&img, &dev.dev, "uring");
    let (data, zeroes) = recipe_changes(&img);

    let ctx = "delta onto a loop device";
    let v = delta_bitmap(&img, &dev.dev, "uring", "b0", ctx);
    assert_eq!(num(&v, "bytes_read"), data, "[{ctx}] {v}");
    assert_eq!(num(&v, "bytes_zeroed"), zeroes, "[{ctx}] {v}");
    assert_prefix_identical(&dev.dev, &img.reference(), DISK, ctx);
    assert_filled(&dev.dev, DISK, 16 * MIB, GARBAGE, ctx);
}

// ---------------------------------------------------------------------------------------
// 5. --changed-extents FILE.

#[test]
fn changed_extents_file_is_merged_aligned_and_applied() {
    if !tools() {
        return;
    }
    for_each_engine(|engine| {
        let dir = tempfile::tempdir().unwrap();
        let img = base_image(dir.path());
        let target = dir.path().join("target.img");
        full_copy(&img, &target, engine);
        img.io(&[
            &format!("write -P 0x55 {} 5000", 3 * MIB + 100),
            "write -P 0x66 10M 1M",
            "write -z 32M 512k",
            "discard 5M 1M",
        ]);
        // A listed area that is a hole in the source, where the target holds garbage:
        // it is zeroed. Garbage outside every area stays.
        poke(&target, 45 * MIB, MIB, GARBAGE);
        poke(&target, 20 * MIB, MIB, GARBAGE);
        // Unsorted and overlapping; merged: [3M, 3M+5100) data, [5M, 6M) hole,
        // [10M, 11M) data, [32M, 32M+512K) zero, [45M, 46M) hole.
        let areas = [
            (10 * MIB + 256 * KIB, 768 * KIB),
            (3 * MIB + 100, 5000),
            (5 * MIB, MIB),
            (10 * MIB, 512 * KIB),
            (32 * MIB, 512 * KIB),
            (3 * MIB, 4096),
            (45 * MIB, MIB),
            (32 * MIB + 256 * KIB, 100),
            (10 * MIB + 300 * KIB, 0),
        ];
        let list: Vec<String> = areas
            .iter()
            .map(|(o, l)| format!(r#"{{"offset":{o},"length":{l}}}"#))
            .collect();
        // The list form with one engine, the object form with the other.
        let doc = if engine == "uring" {
            format!("[{}]", list.join(","))
        } else {
            format!(r#"{{"extents":[{}]}}"#, list.join(","))
        };
        let file = dir.path().join("changed.json");
        std::fs::write(&file, doc).unwrap();

        let ctx = format!("--changed-extents, engine {engine}");
        let server = img.export(None);
        let v = copy(
            &server.uri(),
            &target,
            engine,
            &["--changed-extents", s(&file)],
        )
        .success(&ctx);
        // [3M, 3M+5100) grows to 4 KiB blocks: 8 KiB; plus [10M, 11M).
        assert_eq!(num(&v, "bytes_read"), 8 * KIB + MIB, "[{ctx}] {v}");
        assert_eq!(num(&v, "bytes_zeroed"), 2 * MIB + 512 * KIB, "[{ctx}] {v}");
        assert_filled(&target, 45 * MIB, MIB, 0, &ctx);
        assert_filled(&target, 20 * MIB, MIB, GARBAGE, &ctx);
        let reference = img.reference();
        poke(&reference, 20 * MIB, MIB, GARBAGE);
        assert_identical(&target, &reference, &ctx);
    });
}

/// `--changed-extents` needs no change tracking in the source: a local sparse raw file
/// (allocation from SEEK_DATA/SEEK_HOLE) works the same.
#[test]
fn changed_extents_with_a_local_file_source() {
    if !require(&["cmp", "fallocate"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.raw");
    let f = std::fs::File::create(&source).unwrap();
    f.set_len(16 * MIB).unwrap();
    f.write_all_at(&[0x11; 256 * 1024], 0).unwrap();
    f.sync_all().unwrap();
    let target = dir.path().join("target.img");
    copy(s(&source), &target, "uring", &[]).success("full copy of a local file");
    // Changes: data over a hole, a hole punched into data (a listed hole is zeroed).
    f.write_all_at(&[0x22; 3000], 5_000_000).unwrap();
    f.sync_all().unwrap();
    drop(f);
    sh(
        "fallocate",
        &["-p", "-o", "65536", "-l", "65536", s(&source)],
    );
    poke(&target, 8 * MIB, MIB, GARBAGE);
    let file = dir.path().join("changed.json");
    std::fs::write(
        &file,
        r#"[{"offset":5000000,"length":3000},{"offset":65536,"length":65536}]"#,
    )
    .unwrap();
    for_each_engine(|engine| {
        let ctx = format!("local source, --changed-extents, engine {engine}");
        let v = copy(
            s(&source),
            &target,
            engine,
            &["--changed-extents", s(&file)],
        )
        .success(&ctx);
        // [5000000, 5003000) spans two 4 KiB blocks.
        assert_eq!(num(&v, "bytes_read"), 8 * KIB, "[{ctx}] {v}");
        assert_eq!(num(&v, "bytes_zeroed"), 64 * KIB, "[{ctx}] {v}");
        assert_filled(&target, 8 * MIB, MIB, GARBAGE, &ctx);
    });
    poke(&source, 8 * MIB, MIB, GARBAGE);
    assert_identical(&target, &source, "local source, --changed-extents");
}

// ---------------------------------------------------------------------------------------
// 6. Errors: one error line, non-zero exit, target untouched.

/// A disk with bitmap b0 and a full copy of it (into `target.img`), then the recipe's
/// changes.
struct Prepared {
    dir: tempfile::TempDir,
    img: Image,
    target: PathBuf,
}

fn prepared() -> Prepared {
    let dir = tempfile::tempdir().unwrap();
    let img = base_image(dir.path());
    img.bitmap(&["--add", "--enable"], "b0");
    let target = dir.path().join("target.img");
    full_copy(&img, &target, "sync");
    recipe_changes(&img);
    Prepared { dir, img, target }
}

/// Run `ferry copy SRC TARGET EXTRA…` expecting failure with `phrases`; the target's
/// bytes and size are what they were.
fn fails_untouched(src: &str, target: &Path, extra: &[&str], ctx: &str, phrases: &[&str]) {
    let before = target.exists().then(|| (digest(target), file_size(target)));
    copy(src, target, "uring", extra).failure(ctx, phrases);
    let after = target.exists().then(|| (digest(target), file_size(target)));
    assert_eq!(after, before, "[{ctx}] target changed");
}

#[test]
fn a_bitmap_the_export_lacks_asks_for_a_full_copy() {
    if !tools() {
        return;
    }
    let p = prepared();
    let server = p.img.export(Some("b0"));
    fails_untouched(
        &server.uri(),
        &p.target,
        &["--dirty-bitmap", "nope"],
        "--dirty-bitmap nope",
        &["does not export the dirty bitmap", "nope", "full copy"],
    );
    // Exported without any bitmap: the same.
    drop(server);
    let server = p.img.export(None);
    fails_untouched(
        &server.uri(),
        &p.target,
        &["--dirty-bitmap", "b0"],
        "--dirty-bitmap b0, no -B",
        &["does not export the dirty bitmap", "full copy"],
    );
}

#[test]
fn a_delta_onto_a_missing_target_asks_for_a_full_copy() {
    if !tools() {
        return;
    }
    let p = prepared();
    let server = p.img.export(Some("b0"));
    let missing = p.dir.path().join("missing.img");
    fails_untouched(
        &server.uri(),
        &missing,
        &["--dirty-bitmap", "b0"],
        "delta onto a missing target",
        &["missing.img", "full copy"],
    );
    assert!(!missing.exists(), "a delta created {}", missing.display());
    // The same with a changed-extents file.
    let file = p.dir.path().join("changed.json");
    std::fs::write(&file, r#"[{"offset":0,"length":4096}]"#).unwrap();
    fails_untouched(
        &server.uri(),
        &missing,
        &["--changed-extents", s(&file)],
        "changed extents onto a missing target",
        &["full copy"],
    );
    assert!(!missing.exists(), "a delta created {}", missing.display());
    // A directory is no target for a delta either.
    let d = p.dir.path().join("a-directory");
    std::fs::create_dir(&d).unwrap();
    copy(&server.uri(), &d, "uring", &["--dirty-bitmap", "b0"])
        .failure("delta onto a directory", &["full copy"]);
}

#[test]
fn a_delta_onto_a_target_of_another_size_asks_for_a_full_copy() {
    if !tools() {
        return;
    }
    let p = prepared();
    let server = p.img.export(Some("b0"));
    for size in [DISK / 2, DISK + 4096] {
        let other = p.dir.path().join(format!("other-{size}.img"));
        fill(&other, 0xab, size);
        let ctx = format!("delta onto a {size}-byte target");
        fails_untouched(
            &server.uri(),
            &other,
            &["--dirty-bitmap", "b0"],
            &ctx,
            &["changed size", "full copy"],
        );
    }
}

#[test]
fn a_changed_extents_area_past_the_disk_is_refused() {
    if !tools() {
        return;
    }
    let p = prepared();
    let server = p.img.export(None);
    for (i, doc) in [
        format!(
            r#"[{{"offset":0,"length":4096}},{{"offset":{},"length":8192}}]"#,
            DISK - 4096
        ),
        format!(r#"[{{"offset":{DISK},"length":1}}]"#),
        r#"[{"offset":18446744073709551615,"length":2}]"#.to_string(),
    ]
    .iter()
    .enumerate()
    {
        let file = p.dir.path().join(format!("past-{i}.json"));
        std::fs::write(&file, doc).unwrap();
        fails_untouched(
            &server.uri(),
            &p.target,
            &["--changed-extents", s(&file)],
            &format!("area past the disk: {doc}"),
            &["--changed-extents", "outside the disk"],
        );
    }
}

#[test]
fn a_malformed_changed_extents_file_is_refused() {
    if !tools() {
        return;
    }
    let p = prepared();
    let server = p.img.export(None);
    for (i, doc) in [
        "",
        "not json",
        r#"[{"offset":0}]"#,
        r#"[{"offset":-1,"length":4096}]"#,
        r#"[{"offset":"0","length":4096}]"#,
        r#"{"areas":[]}"#,
        r#"[{"offset":0,"length":4096}"#,
    ]
    .iter()
    .enumerate()
    {
        let file = p.dir.path().join(format!("bad-{i}.json"));
        std::fs::write(&file, doc).unwrap();
        fails_untouched(
            &server.uri(),
            &p.target,
            &["--changed-extents", s(&file)],
            &format!("malformed changed extents {doc:?}"),
            &["--changed-extents", "bad-"],
        );
    }
    let missing = p.dir.path().join("no-such.json");
    fails_untouched(
        &server.uri(),
        &p.target,
        &["--changed-extents", s(&missing)],
        "missing changed-extents file",
        &["--changed-extents", "no-such.json"],
    );
}

#[test]
fn dirty_bitmap_and_changed_extents_together_is_a_usage_error() {
    if !tools() {
        return;
    }
    let p = prepared();
    let server = p.img.export(Some("b0"));
    let file = p.dir.path().join("changed.json");
    std::fs::write(&file, "[]").unwrap();
    let before = digest(&p.target);
    let r = copy(
        &server.uri(),
        &p.target,
        "uring",
        &["--dirty-bitmap", "b0", "--changed-extents", s(&file)],
    );
    r.failure("both delta flags", &["--dirty-bitmap", "--changed-extents"]);
    assert_eq!(r.status.code(), Some(2), "usage errors exit 2: {r:?}");
    assert_eq!(digest(&p.target), before, "target changed");
}

#[test]
fn dirty_bitmap_without_structured_replies_asks_for_a_full_copy() {
    if !tools() || !require(&["nbdkit"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::nbdkit(dir.path(), &["--no-sr", "memory", "64M"]);
    let target = dir.path().join("target.img");
    fill(&target, 0xab, DISK);
    fails_untouched(
        &server.uri(),
        &target,
        &["--dirty-bitmap", "b0"],
        "--dirty-bitmap on a server without structured replies",
        &["does not export the dirty bitmap", "full copy"],
    );
}

#[test]
fn dirty_bitmap_on_a_local_source_is_refused() {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.raw");
    fill(&source, 0x11, 8 * MIB);
    let target = dir.path().join("target.img");
    fill(&target, 0xab, 8 * MIB);
    fails_untouched(
        s(&source),
        &target,
        &["--dirty-bitmap", "b0"],
        "--dirty-bitmap with a local file source",
        &["cannot report changed areas"],
    );
}

// ---------------------------------------------------------------------------------------
// 7. A delta's work is the changed bytes, not the disk.

#[test]
fn delta_work_is_bounded_by_the_changed_bytes() {
    if !tools() {
        return;
    }
    const BIG: u64 = 1024 * MIB;
    let dir = tempfile::tempdir().unwrap();
    let img = Image::new(dir.path(), BIG);
    img.io(&["write -P 0x11 0 4M", "write -P 0x22 700M 4M"]);
    img.bitmap(&["--add", "--enable"], "b0");
    let target = dir.path().join("target.img");
    full_copy(&img, &target, "uring");
    img.io(&[
        "write -P 0x33 100M 64k",
        "write -z 701M 256k",
        "discard 0 1M",
        "write -P 0x44 1000M 128k",
    ]);
    // The bitmap's changed bytes (64 KiB granules, all aligned here).
    let changed = 64 * KIB + 256 * KIB + MIB + 128 * KIB;
    let ctx = "delta on a 1 GiB disk";
    let v = delta_bitmap(&img, &target, "sync", "b0", ctx);
    assert_eq!(num(&v, "size"), BIG, "[{ctx}] size is the disk's: {v}");
    let work = num(&v, "bytes_read") + num(&v, "bytes_zeroed") + num(&v, "bytes_skipped");
    assert!(
        work <= changed,
        "[{ctx}] {work} bytes of work > {changed} changed: {v}"
    );
    assert!(work > 0, "[{ctx}] nothing done: {v}");
    assert!(
        work * 500 < BIG,
        "[{ctx}] {work} bytes is not far below the disk: {v}"
    );
    assert_identical(&target, &img.reference(), ctx);
}
