//! The buffer pool inside a real cgroup memory limit: a child cgroup made by the test
//! (v1 `memory.limit_in_bytes` or v2 `memory.max`, whichever this machine has) holds
//! `ferry copy` with the seed's tuning row (512 × 64 KiB buffers, 32 of them: a 1 GiB
//! pool) under CDI's default 600M: it shrinks the pool, is not OOM-killed, and the
//! target equals the source. Under 100M even two buffers do not fit: one error line.

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// A child memory cgroup with a limit; removed on drop.
struct Cgroup {
    dir: PathBuf,
    v2: bool,
}

impl Cgroup {
    /// Under this process's own memory cgroup; `None` (with the reason) when one cannot
    /// be made here.
    fn new(limit: u64) -> Result<Cgroup, String> {
        let proc = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| e.to_string())?;
        let mount = Path::new("/sys/fs/cgroup");
        let mut found = None;
        for line in proc.lines() {
            let mut p = line.splitn(3, ':');
            let (id, ctl, path) = (p.next(), p.next(), p.next());
            let rel = path.unwrap_or("").trim_start_matches('/');
            if ctl.is_some_and(|c| c.split(',').any(|c| c == "memory")) {
                found = Some((mount.join("memory").join(rel), false));
                break;
            }
            if id == Some("0") && ctl == Some("") && found.is_none() {
                found = Some((mount.join(rel), true));
            }
        }
        let (parent, v2) = found.ok_or("no memory cgroup in /proc/self/cgroup")?;
        let dir = parent.join(format!(
            "ferry-test-{}-{}",
            std::process::id(),
            ferry_test_kit::next_id()
        ));
        std::fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let cg = Cgroup { dir, v2 };
        let file = if v2 {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        std::fs::write(cg.dir.join(file), limit.to_string()).map_err(|e| format!("{file}: {e}"))?;
        Ok(cg)
    }

    /// OOM kills in this cgroup.
    fn oom_kills(&self) -> u64 {
        let file = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        std::fs::read_to_string(self.dir.join(file))
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                l.strip_prefix("oom_kill ")
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// `ferry ARGS` run inside the cgroup.
    fn ferry(&self, args: &[&str]) -> std::process::Command {
        let mut c = std::process::Command::new("sh");
        c.arg("-c")
            .arg(r#"echo $$ > "$1/cgroup.procs" && shift && exec "$@""#)
            .arg("sh")
            .arg(&self.dir)
            .arg(env!("CARGO_BIN_EXE_ferry"))
            .args(args)
            .env_remove("FERRY_LOG")
            .env("NO_COLOR", "1");
        c
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

const SEED_ROW: [&str; 4] = ["--buf-size-in-64k", "512", "--buf-count", "32"];

#[test]
fn the_seeds_tuning_row_in_a_600m_cgroup_shrinks_its_pool_and_is_not_oom_killed() {
    if !require(&["nbdkit", "nbdcopy", "cmp"]) {
        return;
    }
    let cg = match Cgroup::new(600_000_000) {
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
    assert_eq!(cg.oom_kills(), 0, "OOM-killed\n{}", r.stderr);
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
    let cg = match Cgroup::new(100_000_000) {
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
    assert_eq!(cg.oom_kills(), 0);
}
