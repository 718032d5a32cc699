//! `ferry bench --cpu-limit`: Ferry and nbdcopy each run alone in a child cgroup with
//! the limit (made per run by the bench, read for throttling, removed after), as a pod
//! under CDI's default 750m would run them; a quantity Kubernetes would not write is one
//! usage line.

mod common;

use common::*;

/// Child cgroups the bench (process `pid`) left in this process's cpu cgroup.
fn leftover_cgroups(pid: u32) -> Vec<String> {
    let Ok((dir, _)) = own_cgroup("cpu") else {
        return Vec::new();
    };
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with(&format!("ferry-cpu-limit-{pid}-")))
                .collect()
        })
        .unwrap_or_default()
}

/// `ferry bench` of a half-sparse nbdkit disk of `size` into `dir`/t.img against nbdcopy,
/// one run under 750m, with `extra` arguments: its JSON and the bench's pid.
fn bench_json(dir: &std::path::Path, size: &str, extra: &[&str]) -> (serde_json::Value, u32) {
    let src = ferry_test_kit::Server::nbdkit(
        dir,
        &[
            "sparse-random",
            &format!("size={size}"),
            "percent=50",
            "runlength=1048576",
            "seed=3",
        ],
    );
    let mut c = ferry(&["bench", &src.uri()]);
    c.arg(dir.join("t.img"))
        .args([
            "--compare",
            "nbdcopy",
            "--runs",
            "1",
            "--cpu-limit",
            "750m",
            "--json",
        ])
        .args(extra);
    let r = spawn(c);
    let pid = r.pid();
    let r = r.wait(RUN_LIMIT * 2);
    assert!(r.status.success(), "{}\n{}", r.stdout, r.stderr);
    let v = serde_json::from_str(r.stdout.trim())
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", r.stdout, r.stderr));
    (v, pid)
}

#[test]
fn under_a_cpu_limit_ferry_and_nbdcopy_each_run_alone_in_a_throttled_cgroup() {
    if !require_root(&["nbdkit", "nbdcopy"], false) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("t.img");
    let (v, pid) = bench_json(dir.path(), "256M", &[]);
    assert_eq!(v["cpu_limit_millis"], 750, "{v}");
    let runs = v["runs"].as_array().expect("runs");
    let tools: Vec<&str> = runs.iter().filter_map(|s| s["tool"].as_str()).collect();
    assert_eq!(tools, ["ferry", "nbdcopy"], "{v}");
    for s in runs {
        let stat = &s["cpu_stat"];
        assert!(
            stat["periods"].as_u64().unwrap_or(0) > 0,
            "{} ran outside its cgroup: {v}",
            s["tool"]
        );
        assert_eq!(s["code"], 0, "{v}");
    }
    // Each tool's CPU is under the limit's share of its wall time (a little slack for
    // the kernel's accounting at period edges).
    for s in runs {
        let (cpu, wall) = (
            s["cpu_seconds"].as_f64().unwrap(),
            s["seconds"].as_f64().unwrap(),
        );
        assert!(
            cpu <= 0.75 * wall + 0.15,
            "{}: {cpu} CPU s in {wall} s",
            s["tool"]
        );
    }
    assert!(!target.exists(), "the bench's target is removed after it");
    assert_eq!(leftover_cgroups(pid), Vec::<String>::new());

    // A quantity Kubernetes would not write.
    let r = run(
        ferry(&[
            "bench",
            "nbd+unix:///?socket=/nonexistent",
            "null:",
            "--cpu-limit",
            "5m",
        ]),
        RUN_LIMIT,
    );
    assert_eq!(r.status.code(), Some(2), "{}", r.stderr);
    r.failure("--cpu-limit 5m", &["not a CPU quantity", "750m"]);
}

#[test]
fn concurrent_copies_run_at_once_each_in_its_own_cgroup_into_its_own_target() {
    if !require_root(&["nbdkit", "nbdcopy"], false) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (v, pid) = bench_json(dir.path(), "128M", &["--concurrent", "3"]);
    let conc = &v["concurrent"];
    assert_eq!(conc["copies"], 3, "{v}");
    let rounds = conc["rounds"].as_array().expect("rounds");
    let tools: Vec<&str> = rounds.iter().filter_map(|r| r["tool"].as_str()).collect();
    assert_eq!(tools, ["ferry", "nbdcopy"], "{v}");
    for round in rounds {
        let copies = round["copies"].as_array().expect("copies");
        assert_eq!(copies.len(), 3, "{round}");
        let makespan = round["makespan_seconds"].as_f64().unwrap();
        for c in copies {
            assert_eq!(c["code"], 0, "{round}");
            assert!(
                c["cpu_stat"]["periods"].as_u64().unwrap_or(0) > 0,
                "a copy ran outside its own cgroup: {round}"
            );
            // At once: none outlasts the round, and they overlap rather than queue.
            let secs = c["seconds"].as_f64().unwrap();
            assert!(secs <= makespan + 0.05, "{round}");
        }
        let sum: f64 = copies.iter().map(|c| c["seconds"].as_f64().unwrap()).sum();
        assert!(makespan < sum, "the copies ran one after another: {round}");
    }
    for tool in ["ferry", "nbdcopy"] {
        let s = conc[tool]["aggregate_over_one"].as_f64().unwrap_or(0.0);
        assert!(s > 0.0, "{tool}: {v}");
    }
    for i in 1..=3 {
        let t = dir.path().join(format!("t.img.{i}"));
        assert!(!t.exists(), "{} is removed after the bench", t.display());
    }
    assert_eq!(leftover_cgroups(pid), Vec::<String>::new());

    // The built-in synthetic disk is copied in process: nothing to run N of.
    let r = run(ferry(&["bench", "--concurrent", "2"]), RUN_LIMIT);
    assert!(!r.status.success());
    r.failure(
        "--concurrent without SRC",
        &["--concurrent needs SRC and DST"],
    );
}
