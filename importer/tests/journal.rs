//! The resume journal never trusts a journal that does not describe this very target,
//! and never writes over or removes a file that is not its own journal (issue 8).
//!
//! Each reproduction of the issue is here as it was written, plus block-device and
//! `ferry import` variants (in import.rs), and a property test: random sequences of
//! kill -9, delete, recreate, swap-target, journal damage and resume, where every run
//! that exits 0 leaves a target identical to the source (by `cmp` against nbdcopy's
//! copy) and no file but the target and the journal is ever modified.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

const MIB: u64 = 1 << 20;

fn journal_text(j: &Path) -> Option<String> {
    std::fs::read_to_string(j).ok()
}

fn sha(p: &Path) -> String {
    let o = std::process::Command::new("sha256sum")
        .arg(p)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

// ---------------------------------------------------------------------------------------
// Reproduction 1: a journal trusted for a different target

#[test]
fn a_journal_is_not_trusted_for_a_deleted_and_recreated_target() {
    if !require(&["nbdkit", "nbdcopy", "cmp"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("disk.sock");
    let reference = {
        let fast = Server::nbdkit_at(&sock, &["pattern", "1G"]);
        nbdcopy_reference(&fast.uri(), dir.path())
    };
    let t = dir.path().join("t.img");
    let j = dir.path().join("j");
    let js = j.to_str().unwrap();
    for (round, replace) in ["rm", "recreate with zeroes"].iter().enumerate() {
        let server = Server::nbdkit_at(&sock, &["--filter=rate", "pattern", "1G", "rate=2G"]);
        let mark = kill_after_progress(
            copy_cmd(&server.uri(), &t, &["--journal", js]),
            &j,
            64 * MIB,
            Duration::from_secs(20),
        );
        drop(server);
        assert!(mark >= 64 * MIB, "round {round}: nothing durable recorded");
        std::fs::remove_file(&t).unwrap();
        if *replace != "rm" {
            std::fs::write(&t, vec![0u8; 1 << 30]).unwrap();
        }
        let server = Server::nbdkit_at(&sock, &["pattern", "1G"]);
        let r = copy(&server.uri(), &t, "uring", &["--journal", js]);
        let stats = r.success(replace);
        assert!(
            !r.stderr.contains("resuming from the journal"),
            "{replace}: resumed onto another target:\n{}",
            r.stderr
        );
        assert!(
            r.stderr.contains("discarding the resume journal"),
            "{}",
            r.stderr
        );
        assert_eq!(num(&stats, "bytes_read"), 1 << 30, "{replace}: a full copy");
        assert_identical(&t, &reference, replace);
        assert!(!j.exists());
    }
}

#[test]
fn a_resumed_copy_checks_its_samples_against_target_and_source() {
    if !require(&["nbdkit", "nbdcopy", "cmp"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("disk.sock");
    let size = "256M";
    let reference = {
        let fast = Server::nbdkit_at(&sock, &["pattern", size]);
        nbdcopy_reference(&fast.uri(), dir.path())
    };
    let t = dir.path().join("t.img");
    let j = dir.path().join("t.journal");
    let js = j.to_str().unwrap();
    let slow = ["--filter=delay", "pattern", size, "rdelay=40ms"];
    let kill = |server: &Server| {
        kill_after_progress(
            copy_cmd(&server.uri(), &t, &["--journal", js, "--buf-count", "4"]),
            &j,
            40 * MIB,
            Duration::from_secs(20),
        )
    };
    // The same file, its bytes changed in place (same inode, same birth time): the
    // samples catch it.
    let server = Server::nbdkit_at(&sock, &slow);
    let mark = kill(&server);
    drop(server);
    let text = journal_text(&j).unwrap();
    let samples = samples_of(&j);
    assert!(!samples.is_empty(), "no samples in the journal:\n{text}");
    assert!(samples.iter().all(|(o, l)| o + l <= mark), "{text}");
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&t).unwrap();
        for (o, l) in &samples {
            f.write_all_at(&vec![0x5a; *l as usize], *o).unwrap();
        }
    }
    let server = Server::nbdkit_at(&sock, &["pattern", size]);
    let r = copy(&server.uri(), &t, "sync", &["--journal", js]);
    let stats = r.success("scribbled target");
    assert!(
        r.stderr.contains("are not what this copy wrote there"),
        "{}",
        r.stderr
    );
    assert_eq!(num(&stats, "bytes_read"), 256 * MIB);
    assert_identical(&t, &reference, "scribbled target");
    drop(server);

    // The source changed under a kept target (same URI, same size): the samples catch
    // that too. nbdkit's file plugin serves a disk whose bytes we then change.
    std::fs::remove_file(&t).unwrap();
    let disk = dir.path().join("source.img");
    std::fs::copy(&reference, &disk).unwrap();
    let d = disk.to_str().unwrap();
    let server = Server::nbdkit_at(&sock, &["--filter=delay", "file", d, "rdelay=40ms"]);
    kill(&server);
    drop(server);
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
        for (o, l) in samples_of(&j) {
            f.write_all_at(&vec![0xa5; l as usize], o).unwrap();
        }
    }
    let server = Server::nbdkit_at(&sock, &["file", d]);
    let r = copy(&server.uri(), &t, "uring", &["--journal", js]);
    r.success("changed source");
    assert!(
        r.stderr.contains("changed since they were copied"),
        "{}",
        r.stderr
    );
    assert_identical(&t, &disk, "changed source");
}

/// The (offset, length) of each sample line of a journal.
fn samples_of(j: &Path) -> Vec<(u64, u64)> {
    journal_text(j)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("sample "))
        .map(|l| {
            let v: Vec<u64> = l.split(' ').take(2).map(|x| x.parse().unwrap()).collect();
            (v[0], v[1])
        })
        .collect()
}

#[test]
fn a_re_provisioned_block_device_under_the_same_path_does_not_resume() {
    if !require_root(&["nbdkit", "nbdcopy", "cmp"], true) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("disk.sock");
    let size = 256 * MIB;
    let reference = {
        let fast = Server::nbdkit_at(&sock, &["pattern", "256M"]);
        nbdcopy_reference(&fast.uri(), dir.path())
    };
    // The target's stable name is a link, as /dev/disk/by-id/… is; re-provisioning
    // puts a new device (a new backing file at the same path) behind it.
    let backing = dir.path().join("volume.img");
    let link = dir.path().join("disk");
    let j = dir.path().join("disk.journal");
    let js = j.to_str().unwrap();
    fill(&backing, 0xc3, size);
    let dev = Loop::new(&backing, &[]);
    std::os::unix::fs::symlink(&dev.dev, &link).unwrap();
    let server = Server::nbdkit_at(&sock, &["--filter=delay", "pattern", "256M", "rdelay=40ms"]);
    let mark = kill_after_progress(
        copy_cmd(&server.uri(), &link, &["--journal", js, "--buf-count", "4"]),
        &j,
        40 * MIB,
        Duration::from_secs(20),
    );
    drop(server);
    assert!(mark > 0);
    drop(dev);
    std::fs::remove_file(&backing).unwrap();
    fill(&backing, 0xc3, size);
    let dev = Loop::new(&backing, &[]);
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(&dev.dev, &link).unwrap();
    let server = Server::nbdkit_at(&sock, &["pattern", "256M"]);
    let r = copy(&server.uri(), &link, "uring", &["--journal", js]);
    let stats = r.success("re-provisioned device");
    assert!(
        !r.stderr.contains("resuming from the journal"),
        "resumed onto a new device:\n{}",
        r.stderr
    );
    assert_eq!(num(&stats, "bytes_read"), size);
    assert_prefix_identical(&dev.dev, &reference, size, "re-provisioned device");
    // And the same device kept: a resume, identical.
    let server2 = Server::nbdkit_at(
        &dir.path().join("slow.sock"),
        &["--filter=delay", "pattern", "256M", "rdelay=40ms"],
    );
    let mark = kill_after_progress(
        copy_cmd(
            &server2.uri(),
            &link,
            &["--journal", js, "--buf-count", "4"],
        ),
        &j,
        40 * MIB,
        Duration::from_secs(20),
    );
    drop(server2);
    let server2 = Server::nbdkit_at(&dir.path().join("slow.sock"), &["pattern", "256M"]);
    let r = copy(&server2.uri(), &link, "sync", &["--journal", js]);
    let stats = r.success("same device");
    assert!(
        r.stderr.contains("resuming from the journal"),
        "{}",
        r.stderr
    );
    assert_eq!(num(&stats, "bytes_read"), size - mark);
    assert_prefix_identical(&dev.dev, &reference, size, "same device");
    drop(server);
}

// ---------------------------------------------------------------------------------------
// Reproduction 2: the journal's temporary file can be the target

#[test]
fn a_target_named_like_the_journals_old_temporary_survives() {
    if !require(&["nbdkit", "nbdcopy", "cmp"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::nbdkit(dir.path(), &["pattern", "64M"]);
    let reference = nbdcopy_reference(&server.uri(), dir.path());
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let t = work.join("disk.tmp");
    let j = work.join("disk.journal");
    let r = copy(
        &server.uri(),
        &t,
        "uring",
        &["--journal", j.to_str().unwrap()],
    );
    r.success("disk.tmp");
    assert_identical(&t, &reference, "disk.tmp");
    let left: Vec<String> = std::fs::read_dir(&work)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        left,
        vec!["disk.tmp".to_string()],
        "only the target is left"
    );
}

// ---------------------------------------------------------------------------------------
// Reproduction 3: --journal naming a file that is not a journal

#[test]
fn a_journal_path_that_is_the_target_the_source_or_any_other_file_is_refused() {
    if !require(&["nbdkit", "qemu-img"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::nbdkit(dir.path(), &["pattern", "8M"]);
    // The target itself, existing and not yet existing.
    let t = dir.path().join("t.img");
    let r = copy(
        &server.uri(),
        &t,
        "sync",
        &["--journal", t.to_str().unwrap()],
    );
    r.failure("journal = new target", &["resume journal", "is the target"]);
    assert!(!t.exists(), "the refused copy created the target");
    fill(&t, 0x77, 8 * MIB);
    let before = sha(&t);
    let r = copy(
        &server.uri(),
        &t,
        "uring",
        &["--journal", t.to_str().unwrap()],
    );
    r.failure("journal = target", &["resume journal", "is the target"]);
    assert_eq!(sha(&t), before, "the target was touched");
    // The same target by another name (a hard link).
    let other = dir.path().join("other-name.img");
    std::fs::hard_link(&t, &other).unwrap();
    let r = copy(
        &server.uri(),
        &t,
        "uring",
        &["--journal", other.to_str().unwrap()],
    );
    r.failure("journal = target's hard link", &["is the target"]);
    assert_eq!(sha(&t), before);

    // A local source disk.
    let src = dir.path().join("srcdisk.raw");
    fill(&src, 0x42, 4 * MIB);
    let src_sum = sha(&src);
    let t2 = dir.path().join("t2.img");
    let r = copy(
        src.to_str().unwrap(),
        &t2,
        "sync",
        &["--journal", src.to_str().unwrap()],
    );
    r.failure("journal = source", &["resume journal", "is the source"]);
    assert_eq!(sha(&src), src_sum, "the source disk was touched");
    assert!(!t2.exists());

    // Any other file that is not a Ferry journal: a qcow2 image, a text file, an empty
    // file, a directory.
    let q = dir.path().join("image.qcow2");
    sh(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", q.to_str().unwrap(), "1G"],
    );
    let empty = dir.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    let notes = dir.path().join("notes.txt");
    std::fs::write(&notes, b"ferry journal? no\n").unwrap();
    for p in [&q, &empty, &notes] {
        let sum = sha(p);
        let r = copy(
            &server.uri(),
            &t2,
            "sync",
            &["--journal", p.to_str().unwrap()],
        );
        r.failure(
            "not a journal",
            &["is not a Ferry journal", "refusing to overwrite it"],
        );
        assert_eq!(sha(p), sum, "{} was touched", p.display());
        assert!(!t2.exists());
    }
    let r = copy(
        &server.uri(),
        &t2,
        "sync",
        &["--journal", dir.path().to_str().unwrap()],
    );
    r.failure(
        "journal = directory",
        &["resume journal", "not a regular file"],
    );
}

// ---------------------------------------------------------------------------------------
// Reproduction 4: a journal in a missing directory

#[test]
fn a_journal_in_a_missing_directory_fails_before_the_copy() {
    if !require(&["nbdkit"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::nbdkit(dir.path(), &["pattern", "300M"]);
    let t = dir.path().join("t.img");
    let j = dir.path().join("missing/j");
    let r = copy(
        &server.uri(),
        &t,
        "uring",
        &["--journal", j.to_str().unwrap()],
    );
    let line = r.failure(
        "missing directory",
        &["resume journal", "missing/j", "directory"],
    );
    assert!(!line.contains("on the target"), "{line}");
    assert!(
        !t.exists(),
        "the target was created before the journal was checked"
    );
    // A directory that refuses writes (read-only bind of this one is not possible
    // unprivileged; a file where the directory should be does it too).
    std::fs::write(dir.path().join("missing"), b"").unwrap();
    let r = copy(
        &server.uri(),
        &t,
        "uring",
        &["--journal", j.to_str().unwrap()],
    );
    r.failure("file as directory", &["resume journal", "missing/j"]);
    assert!(!t.exists());
}

// ---------------------------------------------------------------------------------------
// The first record lands early

#[test]
fn the_first_record_lands_within_the_first_32_mib() {
    if !require(&["nbdkit"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::nbdkit(
        dir.path(),
        &["--filter=delay", "pattern", "1G", "rdelay=20ms"],
    );
    let t = dir.path().join("t.img");
    let j = dir.path().join("t.journal");
    let mut running = spawn(copy_cmd(
        &server.uri(),
        &t,
        &["--journal", j.to_str().unwrap(), "--buf-count", "4"],
    ));
    // The journal is written before the first byte is copied…
    let t0 = Instant::now();
    let mut first_zero = false;
    let mut first = None;
    while first.is_none() && t0.elapsed() < Duration::from_secs(30) && !running.has_exited() {
        match journal_watermark(&j) {
            Some(0) => first_zero = true,
            Some(w) => first = Some(w),
            None => {}
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    running.signal("KILL");
    let _ = running.wait(Duration::from_secs(10));
    assert!(first_zero, "no journal before the copy started");
    // …and the first progress record within 32 MiB plus what was in flight.
    let first = first.expect("no progress record");
    assert!(first <= 32 * MIB + 4 * MIB, "first record at {first} bytes");
}

// ---------------------------------------------------------------------------------------
// The property: whatever happens between runs, exit 0 means identical, and nothing but
// the target and the journal is ever modified

/// xorshift64*: deterministic, so a failing sequence can be replayed from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Debug, Clone, Copy)]
enum Step {
    Kill(u64),
    Delete,
    Recreate(u8, u64),
    SwapGarbage,
    SwapCopy,
    DamageJournal(u64),
    Resume,
}

fn random_step(rng: &mut Rng) -> Step {
    match rng.below(20) {
        0..=8 => Step::Kill(50 + rng.below(700)),
        9 | 10 => Step::Delete,
        11 => Step::Recreate(rng.below(256) as u8, rng.below(3)),
        12 => Step::SwapGarbage,
        13 => Step::SwapCopy,
        14 => Step::DamageJournal(rng.next()),
        _ => Step::Resume,
    }
}

#[test]
fn random_kill_delete_recreate_swap_sequences_never_report_success_over_a_wrong_target() {
    if !require(&["nbdkit", "nbdcopy", "cmp", "sha256sum"]) {
        return;
    }
    const SIZE: u64 = 128 * MIB;
    let dir = tempfile::tempdir().unwrap();
    let socks = tempfile::tempdir().unwrap();
    let sock = socks.path().join("disk.sock");
    let reference = {
        let fast = Server::nbdkit_at(&sock, &["pattern", "128M"]);
        nbdcopy_reference(&fast.uri(), socks.path())
    };
    let work = dir.path();
    let t = work.join("t.img");
    let j = work.join("t.journal");
    // Neighbours that must never change: names the old code could have hit (the
    // journal's extension-replaced temporary, the target's), and a spare disk.
    let mut sentinels: BTreeMap<PathBuf, String> = BTreeMap::new();
    for (name, byte) in [("t.tmp", 1u8), ("t.img.tmp", 2), ("neighbour.img", 3)] {
        let p = work.join(name);
        fill(&p, byte, MIB);
        sentinels.insert(p.clone(), sha(&p));
    }
    let spare = socks.path().join("spare.img");
    let mut runs = 0;
    let mut successes = 0;
    let mut resumed = 0;
    for seed in [
        0x9e37_79b9_7f4a_7c15u64,
        0xd1b5_4a32_d192_ed03,
        0x94d0_49bb_1331_11eb,
        0xbf58_476d_1ce4_e5b9,
    ] {
        let mut rng = Rng(seed);
        let _ = std::fs::remove_file(&t);
        let _ = std::fs::remove_file(&j);
        let mut history = Vec::new();
        for _ in 0..16 {
            let step = random_step(&mut rng);
            history.push(step);
            let ctx = format!("seed {seed:#x}, steps {history:?}");
            let engine = if rng.below(2) == 0 { "uring" } else { "sync" };
            let args = [
                "--journal",
                j.to_str().unwrap(),
                "--io-engine",
                engine,
                "--buf-count",
                "4",
            ];
            match step {
                Step::Kill(ms) => {
                    let server = Server::nbdkit_at(
                        &sock,
                        &["--filter=delay", "pattern", "128M", "rdelay=20ms"],
                    );
                    let running = spawn(copy_cmd(&server.uri(), &t, &args));
                    std::thread::sleep(Duration::from_millis(ms));
                    running.signal("KILL");
                    let r = running.wait(Duration::from_secs(20));
                    runs += 1;
                    if r.status.success() {
                        successes += 1;
                        assert_identical(&t, &reference, &ctx);
                        assert!(!j.exists(), "{ctx}: a finished copy left its journal");
                    }
                }
                Step::Delete => {
                    let _ = std::fs::remove_file(&t);
                }
                Step::Recreate(byte, size) => {
                    let _ = std::fs::remove_file(&t);
                    fill(&t, byte, [SIZE, SIZE / 2, SIZE + MIB][size as usize]);
                }
                Step::SwapGarbage => {
                    fill(&spare, 0xee, SIZE);
                    std::fs::rename(&spare, &t).unwrap();
                }
                Step::SwapCopy => {
                    if t.exists() {
                        std::fs::copy(&t, &spare).unwrap();
                        std::fs::rename(&spare, &t).unwrap();
                    }
                }
                Step::DamageJournal(at) => {
                    if let Ok(mut b) = std::fs::read(&j)
                        && !b.is_empty()
                    {
                        let i = (at % b.len() as u64) as usize;
                        b[i] ^= 0x20;
                        std::fs::write(&j, b).unwrap();
                    }
                }
                Step::Resume => {
                    let server = Server::nbdkit_at(&sock, &["pattern", "128M"]);
                    let r = run(copy_cmd(&server.uri(), &t, &args), Duration::from_secs(60));
                    runs += 1;
                    // A damaged journal may be refused (it no longer looks like a
                    // journal); that is an error, never a wrong success.
                    if r.status.success() {
                        successes += 1;
                        resumed += usize::from(r.stderr.contains("resuming from the journal"));
                        r.success(&ctx);
                        assert_identical(&t, &reference, &ctx);
                        assert!(!j.exists(), "{ctx}");
                    } else {
                        r.failure(&ctx, &["resume journal"]);
                        std::fs::remove_file(&j).unwrap();
                    }
                }
            }
            for (p, sum) in &sentinels {
                assert_eq!(&sha(p), sum, "{ctx}: {} was modified", p.display());
            }
            let mut names: Vec<String> = std::fs::read_dir(work)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| !sentinels.contains_key(&work.join(n)))
                .filter(|n| n != "t.img" && n != "t.journal")
                .collect();
            // A kill between creating a temporary and renaming it may leave one; the
            // next run removes it.
            names.retain(|n| !(n.starts_with(".t.journal.") && n.ends_with(".ferry-tmp")));
            assert!(names.is_empty(), "{ctx}: stray files {names:?}");
        }
        // Finally, a resume to the end: identical.
        let server = Server::nbdkit_at(&sock, &["pattern", "128M"]);
        let r = copy(
            &server.uri(),
            &t,
            "uring",
            &["--journal", j.to_str().unwrap()],
        );
        runs += 1;
        if !r.status.success() {
            r.failure("final", &["resume journal"]);
            std::fs::remove_file(&j).unwrap();
            let r = copy(
                &server.uri(),
                &t,
                "uring",
                &["--journal", j.to_str().unwrap()],
            );
            r.success("final after removing a damaged journal");
        }
        successes += 1;
        assert_identical(
            &t,
            &reference,
            &format!("seed {seed:#x}: final {history:?}"),
        );
    }
    eprintln!(
        "{runs} runs, {successes} ended with exit 0 and an identical target, {resumed} of them resumed"
    );
}
