//! The buffer pool inside a real cgroup memory limit: a child cgroup made by the test
//! (v1 `memory.limit_in_bytes` or v2 `memory.max`, whichever this machine has) holds
//! `ferry copy` with the seed's tuning row (512 × 64 KiB buffers, 32 of them: a 1 GiB
//! pool) under CDI's default 600M: it shrinks the pool, is not OOM-killed, and the
//! target equals the source. Under 100M even two buffers do not fit: one error line.

mod common;

use common::*;

/// A child memory cgroup with `limit`.
fn memory_cgroup(limit: u64) -> Result<Cgroup, String> {
    let l = limit.to_string();
    Cgroup::new(
        "memory",
        &[("memory.limit_in_bytes", l.as_str())],
        &[("memory.max", l.as_str())],
    )
}

/// OOM kills in the cgroup.
fn oom_kills(cg: &Cgroup) -> u64 {
    let file = if cg.v2 {
        "memory.events"
    } else {
        "memory.oom_control"
    };
    cg.read(file)
        .lines()
        .find_map(|l| {
            l.strip_prefix("oom_kill ")
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

const SEED_ROW: [&str; 4] = ["--buf-size-in-64k", "512", "--buf-count", "32"];

#[test]
fn the_seeds_tuning_row_in_a_600m_cgroup_shrinks_its_pool_and_is_not_oom_killed() {
    if !require(&["nbdkit", "nbdcopy", "cmp"]) {
        return;
    }
    let cg = match memory_cgroup(600_000_000) {
        Ok(c) => c,
        Err(why) => {
            skip(&format!("cannot make a memory cgroup: {why}"));
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let src = ferry_test_kit::Server::nbdkit(dir.path(), &["pattern", "size=1G"]);
    let out = dir.path().join("disk.img");
    let mut c = cg.ferry(&["copy", &src.uri()]);
    c.arg(&out).args(["--json", "--no-progress"]).args(SEED_ROW);
    let r = run(c, RUN_LIMIT);
    let v = r.success("seed's row under 600M");
    assert_eq!(oom_kills(&cg), 0, "OOM-killed\n{}", r.stderr);
    // (600 MB − 10% − 64 MiB) / 32 MiB = 14 buffers.
    assert_eq!(v["buf_count"], 14, "{v}");
    assert_eq!(v["buf_size"], 32 << 20, "the buffer size is kept");
    assert!(
        r.stderr.contains("fewer buffers") && r.stderr.contains("limit_mib=572"),
        "the decision is logged:\n{}",
        r.stderr
    );
    let reference = nbdcopy_reference(&src.uri(), dir.path());
    assert_identical(&out, &reference, "under 600M");
}

#[test]
fn a_limit_that_cannot_hold_two_buffers_is_refused_in_one_line() {
    if !require(&["nbdkit"]) {
        return;
    }
    let cg = match memory_cgroup(100_000_000) {
        Ok(c) => c,
        Err(why) => {
            skip(&format!("cannot make a memory cgroup: {why}"));
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let src = ferry_test_kit::Server::nbdkit(dir.path(), &["pattern", "size=64M"]);
    let out = dir.path().join("disk.img");
    let mut c = cg.ferry(&["copy", &src.uri()]);
    c.arg(&out).args(["--json", "--no-progress"]).args(SEED_ROW);
    let r = run(c, RUN_LIMIT);
    r.failure(
        "100M",
        &[
            "the memory limit of 95 MiB cannot hold the buffer pool",
            "2 buffers of 32 MiB",
            "--buf-size-in-64k",
        ],
    );
    assert!(!out.exists(), "nothing was written");
    assert_eq!(oom_kills(&cg), 0);
}
