//! Disks that arrive in order: a raw disk on standard input (a file or a pipe), and raw disks
//! compressed by the real gzip, xz and zstd tools (and pigz-style multi-member gzip),
//! decompressed as they stream through the pool. Every copy is checked with `cmp`
//! against the uncompressed original; failures by kind and message.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const MIB: u64 = 1024 * 1024;

/// A 24 MiB + 513 byte raw disk: random data, a zero run in the middle (a hole in the
/// copy), random data again, an odd tail.
fn disk(dir: &Path) -> PathBuf {
    let p = dir.join("disk.raw");
    sh(
        "sh",
        &[
            "-c",
            &format!(
                "head -c {a} /dev/urandom > {p} && head -c {z} /dev/zero >> {p} && head -c {b} /dev/urandom >> {p}",
                a = 9 * MIB,
                z = 8 * MIB,
                b = 7 * MIB + 513,
                p = p.display()
            ),
        ],
    );
    p
}

/// `tool ARGS < raw > raw.EXT`.
fn compress(raw: &Path, tool: &str, args: &[&str], ext: &str) -> PathBuf {
    let out = raw.with_extension(format!("raw.{ext}"));
    let o = Command::new(tool)
        .args(args)
        .stdin(std::fs::File::open(raw).unwrap())
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    assert!(o.status.success(), "{tool} failed");
    std::fs::write(&out, o.stdout).unwrap();
    out
}

#[test]
fn compressed_raw_files_are_decompressed_as_they_stream() {
    if !require(&["gzip", "xz", "zstd", "cmp"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = disk(dir.path());
    let size = file_size(&raw);
    let gz = compress(&raw, "gzip", &["-c", "-1"], "gz");
    let xz = compress(&raw, "xz", &["-c", "-1", "-T2"], "xz");
    let zst = compress(&raw, "zstd", &["-c", "-1"], "zst");
    // Two gzip members, as pigz and bgzip write them.
    let multi = dir.path().join("multi.raw.gz");
    let mut m = Vec::new();
    let half = dir.path().join("half");
    std::fs::write(&half, &std::fs::read(&raw).unwrap()[..(10 * MIB) as usize]).unwrap();
    let rest = dir.path().join("rest");
    std::fs::write(&rest, &std::fs::read(&raw).unwrap()[(10 * MIB) as usize..]).unwrap();
    for part in [&half, &rest] {
        m.extend(std::fs::read(compress(part, "gzip", &["-c", "-1"], "gz")).unwrap());
    }
    std::fs::write(&multi, m).unwrap();
    for src in [&gz, &xz, &zst, &multi] {
        for_each_engine(|engine| {
            let ctx = format!("{}, engine {engine}", src.display());
            let t = dir.path().join(format!("t-{engine}.img"));
            let _ = std::fs::remove_file(&t);
            let v = copy(src.to_str().unwrap(), &t, engine, &[]).success(&ctx);
            assert_eq!(
                num(&v, "size"),
                size,
                "[{ctx}] the disk's size is where it ends"
            );
            assert_identical(&t, &raw, &ctx);
            // The zero run was skipped, not written: the copy stays sparse.
            assert!(
                num(&v, "bytes_skipped") >= 8 * MIB - 1,
                "[{ctx}] zero run skipped: {v}"
            );
            assert!(
                allocated(&t) <= size - 7 * MIB,
                "[{ctx}] sparse: {}",
                allocated(&t)
            );
        });
    }
    // Onto an existing, longer file full of other bytes: cut to the disk and exact.
    let t = dir.path().join("existing.img");
    fill(&t, 0xee, 40 * MIB);
    copy(zst.to_str().unwrap(), &t, "uring", &[]).success("existing file");
    assert_identical(&t, &raw, "existing file");
}

#[test]
fn a_raw_disk_on_standard_input_is_copied_exactly() {
    if !require(&["gzip", "cmp", "mkfifo"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = disk(dir.path());
    for_each_engine(|engine| {
        let ctx = format!("stdin, engine {engine}");
        let t = dir.path().join(format!("stdin-{engine}.img"));
        let v = copy_stdin(&raw, &t, engine, &[]).success(&ctx);
        assert_eq!(num(&v, "size"), file_size(&raw), "[{ctx}] size");
        assert_identical(&t, &raw, &ctx);
    });
    // Compressed on standard input: decompressed too.
    let gz = compress(&raw, "gzip", &["-c"], "gz");
    let t = dir.path().join("stdin-gz.img");
    copy_stdin(&gz, &t, "sync", &[]).success("gzip on stdin");
    assert_identical(&t, &raw, "gzip on stdin");
    // A named pipe is read through standard input (given as a path it is refused, so
    // a FIFO planted in a volume can never hang the copy: errors.rs).
    let fifo = dir.path().join("fifo");
    sh("mkfifo", &[fifo.to_str().unwrap()]);
    let writer = {
        let (fifo, raw) = (fifo.clone(), raw.clone());
        std::thread::spawn(move || {
            let mut w = std::fs::OpenOptions::new().write(true).open(fifo).unwrap();
            std::io::copy(&mut std::fs::File::open(raw).unwrap(), &mut w).unwrap();
        })
    };
    let t = dir.path().join("fifo.img");
    copy_stdin(&fifo, &t, "uring", &[]).success("fifo on stdin");
    writer.join().unwrap();
    assert_identical(&t, &raw, "fifo");
    // An empty stream is an empty disk.
    let empty = dir.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    let t = dir.path().join("empty.img");
    let v = copy_stdin(&empty, &t, "sync", &[]).success("empty");
    assert_eq!(num(&v, "size"), 0);
    assert_eq!(file_size(&t), 0);
}

#[test]
fn a_truncated_or_corrupt_compressed_file_fails_and_says_where() {
    if !require(&["gzip", "xz", "zstd"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = disk(dir.path());
    for (tool, args, ext, phrase) in [
        ("gzip", &["-c"][..], "gz", "gzip-decompressed"),
        ("xz", &["-c"][..], "xz", "xz-decompressed"),
        ("zstd", &["-c"][..], "zst", "zstd-decompressed"),
    ] {
        let full = std::fs::read(compress(&raw, tool, args, ext)).unwrap();
        let cut = dir.path().join(format!("cut.{ext}"));
        std::fs::write(&cut, &full[..full.len() / 2]).unwrap();
        let t = dir.path().join(format!("cut-{ext}.img"));
        let r = copy(cut.to_str().unwrap(), &t, "sync", &[]);
        r.failure(ext, &["reading the source at offset", phrase]);
        assert_eq!(
            r.status.code(),
            Some(6),
            "[{ext}] source data: {}",
            r.stderr
        );
        assert!(
            r.stderr.contains("kind=source_data"),
            "[{ext}] {}",
            r.stderr
        );
    }
}

#[test]
fn a_stream_cannot_resume_or_be_a_delta() {
    let dir = tempfile::tempdir().unwrap();
    let raw = disk(dir.path());
    let t = dir.path().join("t.img");
    let journal = dir.path().join("j");
    let j = format!("--journal {}", journal.display());
    let r = copy_stdin(&raw, &t, "sync", &[&j]);
    r.failure(
        "journal",
        &["standard input can only be read in order", "resume journal"],
    );
    assert_eq!(r.status.code(), Some(2), "{}", r.stderr);
    assert!(!t.exists(), "the target was not created");
    let ex = dir.path().join("changed.json");
    std::fs::write(&ex, "[]").unwrap();
    let c = format!("--changed-extents {}", ex.display());
    copy_stdin(&raw, &t, "sync", &[&c]).failure("delta", &["a delta needs a source"]);
}

#[test]
fn a_stream_larger_than_its_block_device_fails_without_reporting_done() {
    if !require_root(&["cmp"], true) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = disk(dir.path());
    let backing = dir.path().join("dev.img");
    fill(&backing, 0, 16 * MIB);
    let dev = Loop::new(&backing, &[]);
    let r = copy_stdin(&raw, &dev.dev, "uring", &[]);
    r.failure(
        "small device",
        &["is too small: 16777216 bytes, and the source holds more"],
    );
    assert_eq!(r.status.code(), Some(7), "target: {}", r.stderr);
    // A device that holds it: exact over the disk's bytes, the rest untouched.
    let backing = dir.path().join("dev2.img");
    fill(&backing, 0xab, 32 * MIB);
    let dev = Loop::new(&backing, &[]);
    copy_stdin(&raw, &dev.dev, "uring", &[]).success("device");
    let n = file_size(&raw);
    let st = Command::new("cmp")
        .args(["-n", &n.to_string()])
        .arg(&raw)
        .arg(&dev.dev)
        .status()
        .unwrap();
    assert!(st.success(), "the disk's bytes are on the device");
    drop(dev);
    assert_filled(&backing, n, 32 * MIB - n, 0xab, "past the disk");
}
