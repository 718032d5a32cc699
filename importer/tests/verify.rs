//! `ferry verify SRC DST`: the same disk through different paths (an nbdkit export, the
//! file nbdcopy wrote from it, a qcow2 qemu-img made of it, a gzip stream of it) has one
//! digest; a flipped byte is named by the 64 KiB leaf holding it; a longer disk differs
//! at its tail.

mod common;

use std::process::Command;

use common::*;

fn verify(a: &str, b: &str) -> Run {
    let mut c = ferry(&["verify", a, b, "--json"]);
    c.env("FERRY_LOG", "warn");
    run(c, RUN_LIMIT)
}

fn json(r: &Run) -> serde_json::Value {
    serde_json::from_str(r.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {r:?}"))
}

/// A difference: exit 6 (source data), the JSON result on stdout, one error line last
/// on stderr holding `phrase`; the JSON and that line.
fn differ(r: &Run, phrase: &str) -> (serde_json::Value, String) {
    assert_eq!(r.status.code(), Some(6), "{r:?}");
    assert!(!r.stderr.contains("panicked"), "{r:?}");
    let last = r
        .stderr
        .lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or("");
    assert!(
        last.starts_with("ferry: error: ") && last.contains(phrase),
        "{r:?}"
    );
    let v = json(r);
    assert_eq!(v["identical"], false, "{v}");
    (v, last.to_string())
}

#[test]
fn one_disk_read_four_ways_has_one_digest_and_a_flipped_byte_is_found() {
    if !require(&["nbdkit", "nbdcopy", "qemu-img", "gzip"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = ferry_test_kit::Server::nbdkit(
        dir.path(),
        &[
            "sparse-random",
            "size=200M",
            "percent=30",
            "runlength=262144",
            "seed=5",
        ],
    );
    let raw = nbdcopy_reference(&src.uri(), dir.path());
    let qcow2 = dir.path().join("d.qcow2");
    ferry_test_kit::run_ok(
        Command::new("qemu-img")
            .args(["convert", "-O", "qcow2"])
            .arg(&raw)
            .arg(&qcow2),
    );
    let gz = dir.path().join("d.raw.gz");
    let out = Command::new("gzip").arg("-c").arg(&raw).output().unwrap();
    std::fs::write(&gz, out.stdout).unwrap();
    let raw_s = raw.to_str().unwrap();

    let mut digests = Vec::new();
    for other in [
        src.uri(),
        qcow2.display().to_string(),
        gz.display().to_string(),
    ] {
        let r = verify(raw_s, &other);
        assert!(r.status.success(), "{other}: {r:?}");
        let v = json(&r);
        assert_eq!(v["identical"], true, "{v}");
        assert_eq!(v["size"], 200 << 20);
        digests.push(v["digest"].as_str().unwrap().to_string());
    }
    assert!(digests.iter().all(|d| d == &digests[0]), "{digests:?}");
    assert!(digests[0].starts_with("blake3-64k:"));

    // A stream copy builds the same digest in the stream's order, and --verify needs no
    // second read of the stream.
    let out = dir.path().join("from-gz.img");
    let r = copy(gz.to_str().unwrap(), &out, "auto", &["--verify"]);
    assert!(!r.stderr.contains("reading it again"), "{r:?}");
    let v = r.success("stream --verify");
    assert_eq!(v["digest"], digests[0].as_str(), "{v}");
    assert_identical(&out, &raw, "gzip stream");

    // One byte flipped: the first differing leaf names it.
    let flipped = dir.path().join("flipped.raw");
    let mut bytes = std::fs::read(&raw).unwrap();
    let at = 123_456_789usize;
    bytes[at] ^= 0x40;
    std::fs::write(&flipped, &bytes).unwrap();
    let r = verify(&src.uri(), flipped.to_str().unwrap());
    let (v, line) = differ(&r, "the disks differ: first difference in bytes");
    let off = v["first_difference"]["offset"].as_u64().unwrap();
    let len = v["first_difference"]["length"].as_u64().unwrap();
    assert_eq!(len, 64 * 1024, "{v}");
    assert!(off <= at as u64 && (at as u64) < off + len, "{v}");
    assert!(line.contains(&format!("{off}..{}", off + len)), "{line}");
    assert_eq!(v["src"]["digest"], digests[0].as_str());

    // A disk one zero byte longer is another disk; it differs at the shorter one's end.
    bytes[at] ^= 0x40;
    bytes.push(0);
    let longer = dir.path().join("longer.raw");
    std::fs::write(&longer, &bytes).unwrap();
    let r = verify(raw_s, longer.to_str().unwrap());
    let (v, _) = differ(&r, "the disks differ");
    assert_eq!(v["first_difference"]["offset"], 200 << 20, "{v}");
    assert_eq!(v["first_difference"]["length"], 1, "{v}");

    // --verify onto null: has nothing to read back: refused before copying.
    let r = copy(
        &src.uri(),
        std::path::Path::new("null:"),
        "auto",
        &["--verify"],
    );
    r.failure("--verify onto null:", &["null: keeps nothing to read"]);
    assert_eq!(r.status.code(), Some(2), "usage");
}

#[test]
fn a_copy_with_verify_reads_the_target_back_onto_files_and_larger_block_devices() {
    if !require_root(&["nbdkit", "nbdcopy"], true) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = ferry_test_kit::Server::nbdkit(
        dir.path(),
        &[
            "sparse-random",
            "size=96M",
            "percent=30",
            "runlength=262144",
            "seed=8",
        ],
    );
    let raw = nbdcopy_reference(&src.uri(), dir.path());
    let r = verify(&src.uri(), raw.to_str().unwrap());
    let want = json(&r)["digest"].as_str().unwrap().to_string();

    // --digest: the digest of the disk as read, as `ferry verify` computes it.
    let out = dir.path().join("a.img");
    let v = copy(&src.uri(), &out, "auto", &["--digest"]).success("--digest");
    assert_eq!(v["digest"], want.as_str(), "{v}");
    assert_identical(&out, &raw, "--digest");

    // --verify onto a new file, and onto a block device larger than the disk (compared
    // over the disk's size), on both engines.
    for_each_engine(|engine| {
        let out = dir.path().join(format!("b-{engine}.img"));
        let v = copy(&src.uri(), &out, engine, &["--verify"]).success("--verify file");
        assert_eq!(v["digest"], want.as_str(), "{v}");
        let backing = dir.path().join(format!("dev-{engine}.img"));
        fill(&backing, 0xee, 128 << 20);
        let dev = Loop::new(&backing, &[]);
        let v = copy(&src.uri(), &dev.dev, engine, &["--verify"]).success("--verify device");
        assert_eq!(v["digest"], want.as_str(), "{v}");
    });

    // A delta round has no whole-disk digest of its own: --verify reads the source again.
    let prev = dir.path().join("prev.img");
    std::fs::copy(&raw, &prev).unwrap();
    let extents = dir.path().join("changed.json");
    std::fs::write(&extents, r#"[{"offset":0,"length":1048576}]"#).unwrap();
    let v = copy(
        &src.uri(),
        &prev,
        "auto",
        &["--verify", "--changed-extents", extents.to_str().unwrap()],
    )
    .success("--verify after a delta");
    assert_eq!(v["digest"], want.as_str(), "{v}");
}

/// A copy with `--digest` killed mid-way keeps its finished 64 MiB group hashes beside
/// the journal; the resumed copy takes them up, starts again at their end (not at the
/// watermark, at most 64 MiB earlier), and has the whole disk's digest without reading
/// the source again for `--verify`. A byte changed on the target below the watermark,
/// where no journal sample looks, is then caught by `--verify` and named by its leaf.
#[test]
fn a_resumed_copy_keeps_its_digest_and_verify_catches_a_corrupted_prefix() {
    if !require(&["nbdkit", "nbdcopy"]) {
        return;
    }
    const MIB: u64 = 1 << 20;
    const SIZE: u64 = 256 * MIB;
    const GROUP: u64 = 64 * MIB;
    let dir = tempfile::tempdir().unwrap();
    let plain = ["pattern", "size=256M"];
    let (want, reference) = {
        let s = ferry_test_kit::Server::nbdkit(dir.path(), &plain);
        let reference = nbdcopy_reference(&s.uri(), dir.path());
        let r = verify(&s.uri(), reference.to_str().unwrap());
        (json(&r)["digest"].as_str().unwrap().to_string(), reference)
    };
    let sock = dir.path().join("slow.sock");
    // One killed run per case: (a) resumed as it was, (b) resumed after a byte below the
    // watermark was changed on the target.
    for corrupt in [false, true] {
        let target = dir.path().join(format!("t-{corrupt}.img"));
        let journal = dir.path().join(format!("t-{corrupt}.journal"));
        let j = journal.to_str().unwrap();
        let digest_file = dir.path().join(format!("t-{corrupt}.journal.digest"));
        let mark = {
            let slow = ferry_test_kit::Server::nbdkit_at(
                &sock,
                &["--filter=delay", "pattern", "size=256M", "rdelay=40ms"],
            );
            let cmd = copy_cmd(
                &slow.uri(),
                &target,
                &["--digest", "--journal", j, "--buf-count", "4"],
            );
            kill_after_progress(
                cmd,
                &journal,
                2 * GROUP + MIB,
                std::time::Duration::from_secs(30),
            )
        };
        assert!(mark > 2 * GROUP && mark < SIZE, "watermark {mark}");
        let text = std::fs::read_to_string(&journal).unwrap();
        let groups: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("digest "))
            .and_then(|v| v.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no digest line in the journal:\n{text}"));
        assert!(
            groups >= 2 && groups * GROUP <= mark,
            "{groups} groups at {mark}:\n{text}"
        );
        let kept = std::fs::read(&digest_file).unwrap();
        assert!(kept.starts_with(b"ferry-digest-groups 1\n"));
        assert!(
            kept.len() as u64 >= 22 + 32 * groups,
            "{} bytes",
            kept.len()
        );
        if corrupt {
            // Inside the second request, past the 4 KiB a journal sample covers.
            flip_byte(&target, 5 * MIB + 100_000);
        }
        let s = ferry_test_kit::Server::nbdkit_at(&sock, &plain);
        let r = copy(&s.uri(), &target, "auto", &["--journal", j, "--verify"]);
        assert!(r.stderr.contains("resuming from the journal"), "{r:?}");
        assert!(
            !r.stderr.contains("reading it again for --verify"),
            "the kept digest was not used: {r:?}"
        );
        if corrupt {
            assert_eq!(r.status.code(), Some(6), "{r:?}");
            let last = r.stderr.lines().rfind(|l| !l.trim().is_empty()).unwrap();
            let leaf = (5 * MIB + 100_000) / 65536 * 65536;
            assert!(
                last.starts_with("ferry: error: ")
                    && last.contains(&format!(
                        "first difference in bytes {leaf}..{}",
                        leaf + 65536
                    )),
                "{last}"
            );
            continue;
        }
        let v = r.success("resumed with --verify");
        assert_eq!(v["digest"], want.as_str(), "{v}");
        assert_eq!(
            num(&v, "bytes_read"),
            SIZE - groups * GROUP,
            "the resumed copy starts again at the end of the kept groups"
        );
        assert!(!journal.exists() && !digest_file.exists());
        assert_identical(&target, &reference, "resumed with a kept digest");
    }
}

fn flip_byte(path: &std::path::Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= 0x5a;
    f.write_all_at(&b, offset).unwrap();
    f.sync_all().unwrap();
}
