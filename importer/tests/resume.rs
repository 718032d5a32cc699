//! Resume after `kill -9`: a copy with `--journal` is killed at several points, then
//! restarted with the same journal; it finishes byte-identical, reads only what the
//! journal had not recorded as durable, and removes the journal. A journal that belongs
//! to another copy is discarded and the copy starts over.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

const MIB: u64 = 1 << 20;
/// 256 MiB at 4 × 1 MiB in flight with 40 ms per read: about 2.6 s per full copy.
const SIZE: &str = "256M";
const SIZE_BYTES: u64 = 256 * MIB;
const SLOW: [&str; 2] = ["--buf-count", "4"];

fn slow_server(sock: &Path) -> Server {
    Server::nbdkit_at(
        sock,
        &[
            "--filter=delay",
            "pattern",
            &format!("size={SIZE}"),
            "rdelay=40ms",
        ],
    )
}

fn watermark(journal: &Path) -> u64 {
    journal_watermark(journal).unwrap_or_else(|| {
        panic!(
            "no watermark in the journal after kill -9:\n{:?}",
            std::fs::read_to_string(journal)
        )
    })
}

/// Kill a slow copy after `after`, then restart it with the same journal.
fn kill_and_resume(engine: &str, after: Duration) {
    let dir = tempfile::tempdir().unwrap();
    let reference = {
        let fast = Server::nbdkit(dir.path(), &["pattern", &format!("size={SIZE}")]);
        nbdcopy_reference(&fast.uri(), dir.path())
    };
    let target = dir.path().join("t.img");
    let journal = dir.path().join("t.journal");
    let j = journal.to_str().unwrap();
    let sock = dir.path().join("disk.sock");
    let server = slow_server(&sock);
    let mut extra = vec!["--io-engine", engine, "--journal", j];
    extra.extend(SLOW);
    let running = spawn(copy_cmd(&server.uri(), &target, &extra));
    std::thread::sleep(after);
    running.signal("KILL");
    let killed = running.wait(Duration::from_secs(10));
    assert!(!killed.status.success(), "the first run was not killed");
    drop(server); // nbdkit 1.32 may abort when its client dies mid-reply: start afresh
    let mark = watermark(&journal);
    assert!(
        mark > 0,
        "{engine} after {after:?}: nothing was recorded as durable"
    );
    assert!(
        mark < SIZE_BYTES,
        "{engine}: the first run finished before the kill"
    );
    let server = Server::nbdkit_at(&sock, &["pattern", &format!("size={SIZE}")]);
    let r = copy(&server.uri(), &target, engine, &["--journal", j]);
    let stats = r.success(&format!("{engine} resume after {after:?}"));
    assert!(
        r.stderr.contains("resuming from the journal"),
        "no resume line:\n{}",
        r.stderr
    );
    assert_eq!(
        num(&stats, "bytes_read"),
        SIZE_BYTES - mark,
        "the restart must read exactly what was not durable"
    );
    assert!(!journal.exists(), "a finished copy removes its journal");
    assert_identical(
        &target,
        &reference,
        &format!("{engine} kill -9 after {after:?}"),
    );
    eprintln!(
        "{engine}: killed after {after:?}, journal at {:.0}%, restart read {:.0}% of the disk",
        100.0 * mark as f64 / SIZE_BYTES as f64,
        100.0 * (SIZE_BYTES - mark) as f64 / SIZE_BYTES as f64
    );
}

#[test]
fn kill_9_at_several_points_then_resume_is_identical() {
    if !require(&["nbdkit", "nbdcopy"]) {
        return;
    }
    // Deterministic "random" points (seeds 1..=3), within the first copy's ~2.6 s.
    for (seed, engine) in [(1u64, "uring"), (2, "sync"), (3, "uring")] {
        let ms = 1200 + (seed * 7919 % 1000);
        kill_and_resume(engine, Duration::from_millis(ms));
    }
}

#[test]
fn a_journal_for_another_copy_is_discarded() {
    if !require(&["nbdkit"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::nbdkit(dir.path(), &["pattern", "size=8M"]);
    let target = dir.path().join("t.img");
    let journal = dir.path().join("t.journal");
    // A journal for a different source size and target: it must not be trusted.
    std::fs::write(&journal, "ferry-journal 1\nsource elsewhere\nsize 1\nplan full\ntarget /x\nwatermark 1\ncrc 00000000\n").unwrap();
    let r = copy(
        &server.uri(),
        &target,
        "sync",
        &["--journal", journal.to_str().unwrap()],
    );
    let stats = r.success("foreign journal");
    assert!(
        r.stderr.contains("discarding the resume journal"),
        "no discard line:\n{}",
        r.stderr
    );
    assert_eq!(
        num(&stats, "bytes_read"),
        8 * MIB,
        "a discarded journal means a full copy"
    );
    assert!(!journal.exists());
}

#[test]
fn kill_9_during_a_delta_then_resume_is_identical() {
    if !require(&["nbdkit", "nbdcopy"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let reference = {
        let fast = Server::nbdkit(dir.path(), &["pattern", &format!("size={SIZE}")]);
        nbdcopy_reference(&fast.uri(), dir.path())
    };
    // The previous round: the target holds garbage in the changed areas only (as if the
    // source had changed there), the right bytes everywhere else.
    let target = dir.path().join("t.img");
    std::fs::copy(&reference, &target).unwrap();
    let areas: Vec<(u64, u64)> = (0..64).map(|i| (i * 4 * MIB, MIB)).collect();
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&target)
            .unwrap();
        for (o, l) in &areas {
            f.write_all_at(&vec![0xee; *l as usize], *o).unwrap();
        }
    }
    let list: Vec<String> = areas
        .iter()
        .map(|(o, l)| format!("{{\"offset\":{o},\"length\":{l}}}"))
        .collect();
    let extents = dir.path().join("changed.json");
    std::fs::write(&extents, format!("[{}]", list.join(","))).unwrap();
    let journal = dir.path().join("t.journal");
    let (j, e) = (journal.to_str().unwrap(), extents.to_str().unwrap());
    let sock = dir.path().join("disk.sock");
    // 64 MiB of changes at 4 × 1 MiB per 150 ms: about 2.4 s.
    let server = Server::nbdkit_at(
        &sock,
        &[
            "--filter=delay",
            "pattern",
            &format!("size={SIZE}"),
            "rdelay=150ms",
        ],
    );
    let mut extra = vec![
        "--io-engine",
        "uring",
        "--journal",
        j,
        "--changed-extents",
        e,
    ];
    extra.extend(SLOW);
    let running = spawn(copy_cmd(&server.uri(), &target, &extra));
    std::thread::sleep(Duration::from_millis(1500));
    running.signal("KILL");
    let _ = running.wait(Duration::from_secs(10));
    drop(server);
    let mark = watermark(&journal);
    assert!(
        mark > 0 && mark < SIZE_BYTES,
        "watermark {mark} after the kill"
    );
    let server = Server::nbdkit_at(&sock, &["pattern", &format!("size={SIZE}")]);
    let r = copy(
        &server.uri(),
        &target,
        "sync",
        &["--journal", j, "--changed-extents", e],
    );
    let stats = r.success("delta resume");
    assert!(
        r.stderr.contains("resuming from the journal"),
        "no resume line:\n{}",
        r.stderr
    );
    let left: u64 = areas
        .iter()
        .filter(|(o, _)| *o >= mark)
        .map(|(_, l)| l)
        .sum();
    assert_eq!(
        num(&stats, "bytes_read"),
        left,
        "the restart reads only the changed areas past the watermark"
    );
    assert!(!journal.exists());
    assert_identical(&target, &reference, "delta killed and resumed");
}

#[test]
fn a_dropped_connection_is_opened_again_and_the_copy_goes_on() {
    // The NBD server dies mid-copy and comes back on the same socket (a restarted
    // nbdkit in front of VDDK): no container restart, the copy reconnects, goes on from
    // the durable watermark and ends identical.
    if !require(&["nbdkit", "nbdcopy", "cmp"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let reference = {
        let fast = Server::nbdkit(dir.path(), &["pattern", &format!("size={SIZE}")]);
        nbdcopy_reference(&fast.uri(), dir.path())
    };
    for engine in ["uring", "sync"] {
        let sock = dir.path().join(format!("drop-{engine}.sock"));
        let target = dir.path().join(format!("t-{engine}.img"));
        let server = slow_server(&sock);
        let mut extra = vec!["--io-engine", engine];
        extra.extend(SLOW);
        let running = spawn(copy_cmd(&server.uri(), &target, &extra));
        std::thread::sleep(Duration::from_millis(1200));
        drop(server);
        std::thread::sleep(Duration::from_millis(300));
        let _back = Server::nbdkit_at(&sock, &["pattern", &format!("size={SIZE}")]);
        let r = running.wait(Duration::from_secs(60));
        let v = r.success(&format!("{engine}: dropped connection"));
        assert!(
            r.stderr
                .contains("opening it again and going on from the durable watermark"),
            "{}",
            r.stderr
        );
        assert!(num(&v, "retries") >= 1, "{v}");
        assert!(
            num(&v, "bytes_read") < 2 * SIZE_BYTES,
            "went on from the watermark rather than from zero: {v}"
        );
        assert_identical(
            &target,
            &reference,
            &format!("{engine}: dropped connection"),
        );
    }
}

#[test]
fn a_source_that_stays_away_fails_after_bounded_retries() {
    if !require(&["nbdkit"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("gone.sock");
    let target = dir.path().join("t.img");
    let server = slow_server(&sock);
    let mut extra = vec!["--retries", "2"];
    extra.extend(SLOW);
    let running = spawn(copy_cmd(&server.uri(), &target, &extra));
    std::thread::sleep(Duration::from_millis(800));
    drop(server);
    let r = running.wait(Duration::from_secs(30));
    r.failure("source gone", &["NBD"]);
    let retries = r.stderr.matches("opening it again").count();
    assert_eq!(retries, 2, "exactly --retries attempts:\n{}", r.stderr);
}
