//! The async runtime sized to a real CPU quota: a child cgroup made by the test (v1
//! `cpu.cfs_quota_us` / `cpu.cfs_period_us` or v2 `cpu.max`, whichever this machine has)
//! with CDI's default 750m holds `ferry copy`, which runs one worker thread (counted in
//! `/proc/PID/task` while it copies), says why in its log, runs under the kernel's
//! enforcement (`cpu.stat`), and writes the same bytes as nbdcopy. `--threads` overrides
//! the quota; a `FERRY_THREADS` out of range is one usage error.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// CDI's default importer limit: 750m.
fn cdi_default_cgroup() -> Result<Cgroup, String> {
    Cgroup::new(
        "cpu",
        &[
            ("cpu.cfs_period_us", "100000"),
            ("cpu.cfs_quota_us", "75000"),
        ],
        &[("cpu.max", "75000 100000")],
    )
}

/// Threads of `pid` named `ferry-worker` (the runtime's workers).
fn workers(pid: u32) -> usize {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|c| c.trim() == "ferry-worker")
        .count()
}

/// Run `cmd`, counting the most worker threads seen while it runs.
fn run_counting_workers(cmd: std::process::Command) -> (Run, usize) {
    let mut r = spawn(cmd);
    let (mut most, start) = (0, Instant::now());
    while !r.has_exited() && start.elapsed() < RUN_LIMIT {
        most = most.max(workers(r.pid()));
        std::thread::sleep(Duration::from_millis(10));
    }
    (r.wait(RUN_LIMIT), most)
}

/// `nr_periods` of the cgroup's `cpu.stat` (v1 and v2 both name it so): the quota's
/// periods in which the cgroup ran, counted only where a quota is enforced.
fn periods(cg: &Cgroup) -> u64 {
    cg.read("cpu.stat")
        .lines()
        .find_map(|l| l.strip_prefix("nr_periods ")?.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn under_cdis_750m_quota_a_copy_runs_one_worker_and_threads_overrides_it() {
    if !require(&["nbdkit", "nbdcopy", "cmp"]) {
        return;
    }
    let cg = match cdi_default_cgroup() {
        Ok(c) => c,
        Err(why) => {
            skip(&format!("cannot make a cpu cgroup: {why}"));
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let src = ferry_test_kit::Server::nbdkit(
        dir.path(),
        &[
            "sparse-random",
            "size=512M",
            "percent=50",
            "runlength=1048576",
            "seed=15",
        ],
    );
    let reference = nbdcopy_reference(&src.uri(), dir.path());

    let out = dir.path().join("a.img");
    // io_uring: the sync engine's blocking-pool threads carry the runtime's thread
    // name too, and would be counted.
    let mut c = cg.ferry(&["copy", &src.uri()]);
    c.arg(&out)
        .args(["--json", "--no-progress", "--io-engine", "uring"]);
    let (r, most) = run_counting_workers(c);
    r.success("under 750m");
    assert_identical(&out, &reference, "under 750m");
    assert_eq!(most, 1, "worker threads under 750m\n{}", r.stderr);
    let line = r
        .stderr
        .lines()
        .find(|l| l.contains("async runtime sized"))
        .unwrap_or_else(|| panic!("no sizing line:\n{}", r.stderr));
    assert!(line.contains("workers=1"), "{line}");
    assert!(line.contains("the cgroup's CPU quota of 750m"), "{line}");
    // The quota was real: the kernel enforced it on the copy's periods.
    assert!(periods(&cg) > 0, "cpu.stat: {}", cg.read("cpu.stat"));

    // --threads wins over the quota.
    let out2 = dir.path().join("b.img");
    let mut c = cg.ferry(&["copy", &src.uri()]);
    c.arg(&out2).args([
        "--json",
        "--no-progress",
        "--threads",
        "3",
        "--io-engine",
        "uring",
    ]);
    let (r, most) = run_counting_workers(c);
    r.success("--threads 3");
    assert_identical(&out2, &reference, "--threads 3");
    assert_eq!(most, 3, "worker threads with --threads 3\n{}", r.stderr);
    assert!(r.stderr.contains("asked with --threads"), "{}", r.stderr);

    // Out of range, from the environment: one usage line.
    let mut c = ferry(&["copy", &src.uri(), "null:"]);
    c.env("FERRY_THREADS", "0");
    let r = run(c, RUN_LIMIT);
    assert_eq!(r.status.code(), Some(2), "{}", r.stderr);
    r.failure("FERRY_THREADS=0", &["--threads", "0"]);
}
