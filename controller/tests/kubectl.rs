//! The README's lifecycle with the real `kubectl` against the test API server: the CRDs
//! applied from `deploy/controller/crds.yaml`, a plan applied, started with
//! `kubectl patch`, copied by real `ferry import` pods, and `kubectl get fp` / `get di`
//! reading like the seed's `get plans` (the columns come from the CRDs' printer columns,
//! printed by the server as a real one does).

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use fake_apiserver::Server;

/// `kubectl ARGS` against `server`; its stdout, or a panic with its stderr.
fn kubectl(home: &Path, server: &Server, args: &[&str]) -> String {
    let config = home.join("kubeconfig");
    if !config.exists() {
        std::fs::write(
            &config,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n\
                 users:\n- name: test\n  user: {{}}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n\
                 current-context: test\n",
                server.url()
            ),
        )
        .unwrap();
    }
    let out = Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", &config)
        .env("HOME", home)
        .output()
        .expect("run kubectl");
    assert!(
        out.status.success(),
        "kubectl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The words of each line of a `kubectl get` table.
fn rows(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

/// The cells of a table's first row (columns are set apart by at least three spaces).
fn cells(table: &str) -> Vec<String> {
    table
        .lines()
        .nth(1)
        .unwrap_or("")
        .split("   ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_applies_starts_and_lists_a_plan_as_the_readme_shows() {
    if !ferry_test_kit::require_in("controller", &["kubectl", "nbdkit", "nbdcopy", "cmp"]) {
        return;
    }
    let Some(ferry) = ferry_binary() else { return };
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let a = ferry_test_kit::Server::nbdkit(dir.path(), &["pattern", "size=40M"]);
    let b = ferry_test_kit::Server::nbdkit(
        dir.path(),
        &[
            "sparse-random",
            "size=24M",
            "percent=30",
            "runlength=262144",
            "seed=3",
        ],
    );
    let server = Server::start().await;
    let crds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/controller/crds.yaml");
    let applied = kubectl(
        &home,
        &server,
        &["apply", "--validate=false", "-f", crds.to_str().unwrap()],
    );
    assert!(
        applied.contains("ferryplans.ferry.dev created"),
        "{applied}"
    );
    let plan = dir.path().join("plan.yaml");
    let yaml = [
        "apiVersion: ferry.dev/v1alpha1",
        "kind: FerryPlan",
        "metadata:",
        "  name: lab",
        "  namespace: vms",
        "spec:",
        "  source:",
        "    nbd: {}",
        "  storage:",
        "    default:",
        "      volumeMode: Filesystem",
        "  vms:",
        "    - name: lab01",
        "      host: esx1",
        "      disks:",
        &format!("        - {{nbdUri: \"{}\", capacity: 40Mi}}", a.uri()),
        &format!("        - {{nbdUri: \"{}\", capacity: 24Mi}}", b.uri()),
    ];
    std::fs::write(&plan, yaml.join("\n") + "\n").unwrap();
    let out = kubectl(
        &home,
        &server,
        &["apply", "--validate=false", "-f", plan.to_str().unwrap()],
    );
    assert!(out.contains("ferryplan.ferry.dev/lab created"), "{out}");

    let k = Arc::new(ProcessKubelet::new(&server, ferry, dir.path()));
    k.spawn();
    let controller = start_controller(client(&server), Arc::new(NoVsphere));
    let (created, p) = wait_phase(&server, "lab", "Created", Duration::from_secs(30)).await;
    assert!(created, "{:#}", p["status"]);
    let before = kubectl(&home, &server, &["-n", "vms", "get", "fp"]);
    println!("$ kubectl -n vms get fp\n{before}");
    assert_eq!(
        rows(&before)[0],
        [
            "NAME", "SOURCE", "TARGET", "VMS", "READY", "STATUS", "PROGRESS", "CUTOVER",
            "ARCHIVED", "AGE"
        ]
    );
    assert_eq!(
        cells(&before),
        [
            "lab",
            "nbd",
            "vms",
            "1",
            "true",
            "Created",
            "-",
            "cold",
            "false",
            &cells(&before)[9]
        ],
        "{before}"
    );

    let patched = kubectl(
        &home,
        &server,
        &[
            "-n",
            "vms",
            "patch",
            "fp",
            "lab",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"start":true}}"#,
        ],
    );
    assert!(
        patched.contains("ferryplan.ferry.dev/lab patched"),
        "{patched}"
    );
    let (done, p) = wait_completed(&server, "lab", Duration::from_secs(120)).await;
    assert!(done, "{:#}\n{}", p["status"], k.logs().join("\n"));
    // The status is written at most every few seconds: wait for the final one.
    let settled = server
        .wait_for(Duration::from_secs(20), |s| {
            plan_object(s, "lab")["status"]["progress"]
                .as_str()
                .is_some_and(|p| p.starts_with("100.0%"))
        })
        .await;
    assert!(settled, "{:#}", plan_object(&server, "lab")["status"]);
    let after = kubectl(&home, &server, &["-n", "vms", "get", "fp"]);
    println!("$ kubectl -n vms get fp\n{after}");
    assert_eq!(
        cells(&after),
        [
            "lab",
            "nbd",
            "vms",
            "1/1 (S:1/F:0/C:0)",
            "true",
            "Completed",
            "100.0% (0/0 GB)",
            "cold",
            "false",
            &cells(&after)[9]
        ],
        "{after}"
    );
    let dis = kubectl(&home, &server, &["-n", "vms", "get", "di", "-o", "wide"]);
    println!("$ kubectl -n vms get di -o wide\n{dis}");
    let r = rows(&dis);
    assert_eq!(r.len(), 3, "{dis}");
    assert_eq!(r[1][0], "lab-lab01-disk-0");
    assert!(dis.contains("Succeeded"), "{dis}");
    for (i, src) in [&a, &b].iter().enumerate() {
        let want = dir.path().join(format!("want{i}.raw"));
        ferry_test_kit::nbdcopy(&src.uri(), &want);
        let len = std::fs::metadata(&want).unwrap().len();
        same_bytes(&want, &k.target(&format!("lab-lab01-disk-{i}")), len).unwrap();
    }
    // `kubectl delete` goes through the plan's finalizer.
    let deleted = kubectl(&home, &server, &["-n", "vms", "delete", "fp", "lab"]);
    assert!(deleted.contains("deleted"), "{deleted}");
    stop_controller(controller).await;
}
