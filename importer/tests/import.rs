//! Acceptance tests of `ferry import`, the importer pod's entrypoint, driven the way
//! KubeVirt CDI drives its VDDK importer (reference/cdi-contract.md §b, §d): a CLEARED
//! environment holding only CDI's variables, plus the few Ferry-only ones that point the
//! pod's fixed paths (`/data`, `/dev/cdi-block-volume`, `/dev/termination-log`, `:8443`,
//! `/opt/vmware-vix-disklib-distrib`) at temporary places.
//!
//! The vSphere side is real processes: the fake vCenter (`tests/fake-vcenter`, HTTPS SOAP,
//! its own self-signed certificate and thumbprint, a call log) and the fake
//! libvixDiskLib (`tests/fake-vddk`, installed into a temporary libdir, serving an nbdkit
//! disk and checking the identity, VM moref, disk file and snapshot it is handed).
//!
//! Every test checks what CDI and Forklift read: the bytes on the volume (against an
//! independent `nbdcopy` reference), the termination message, the progress metric
//! scraped over HTTPS with CDI's own regex, the log lines, the exit code — and, for
//! failures, that nothing was contacted that should not have been.
//!
//! Build the fakes first, next to this test executable:
//! `cargo build -p fake-vddk -p fake-vcenter` (`scripts/test.sh` does it).

mod common;
#[path = "../../vsphere/tests/support/proxy_peers.rs"]
mod proxy_peers;
#[path = "support/registry.rs"]
mod registry;
#[path = "../../vsphere/tests/support/vcsim.rs"]
mod vcsim;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

const MIB: u64 = 1024 * 1024;

const USER: &str = "admin";
const PASSWORD: &str = "secret";
const VM_MOREF: &str = "vm-123";
const VM_UUID: &str = "42125a6b-7f0c-4c6e-9a3e-3f2d1c0b9a8e";
const ESX_HOST: &str = "esx12.example";
const DISK: &str = "[ds1] vm1/vm1.vmdk";
const SNAPSHOT: &str = "snapshot-7";
const SNAPSHOT_DISK: &str = "[ds1] vm1/vm1-000001.vmdk";
const OWNER_UID: &str = "dv-uid-1";
/// A well-formed thumbprint that is not the fake vCenter's.
const OTHER_TP: &str = "11:22:33:44:55:66:77:88:99:00:AA:BB:CC:DD:EE:FF:11:22:33:44";
/// A CBT change ID in CDI's format.
const CHANGE_ID: &str = "52 de c0 3e 7b 4f 19 d6-a1 b2 c3 d4 e5 f6 07 18/81";

/// CDI's controller regex (`pkg/controller/common/util.go`), for our owner UID.
const CDI_PROGRESS_RE: &str = r#"(kubevirt_cdi_import_progress_total|kubevirt_cdi_clone_progress_total)\{ownerUID="dv-uid-1"\} (\d{1,3}\.?\d*)"#;

/// How long the fake vCenter may take to write its ready file.
const VCENTER_WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------
// Built artifacts

/// `target/<profile>/NAME`, two directories above this test executable
/// (`target/<profile>/deps/import-…`). Panics when it was not built.
fn built(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let p = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join(name))
        .expect("test executable has no grandparent directory");
    assert!(
        p.is_file(),
        "{} is missing: build it first: cargo build -p fake-vddk -p fake-vcenter",
        p.display()
    );
    p
}

/// Install the fake libvixDiskLib as `<libdir>/lib64/libvixDiskLib.so.8`.
fn install_fake_vddk(libdir: &Path) {
    let lib64 = libdir.join("lib64");
    std::fs::create_dir_all(&lib64).expect("mkdir lib64");
    std::fs::copy(built("libvixDiskLib.so"), lib64.join("libvixDiskLib.so.8"))
        .expect("install the fake VDDK");
}

// ---------------------------------------------------------------------------------------
// The fake vCenter

/// The inventory: one VM with one disk, and a snapshot whose disk 2000 is the delta file.
fn inventory(capacity: u64) -> Value {
    json!({
        "user": USER,
        "password": PASSWORD,
        "datacenters": [{"name": "dc1", "vms": [{
            "moref": VM_MOREF,
            "name": "vm1",
            "instance_uuid": VM_UUID,
            "bios_uuid": "4212bbbb-0000-0000-0000-000000000001",
            "power_state": "poweredOff",
            "host": ESX_HOST,
            "disks": [{"key": 2000, "file_name": DISK, "capacity_bytes": capacity}],
            "snapshots": [{
                "moref": SNAPSHOT,
                "name": "forklift-precopy",
                "disks": [{"key": 2000, "file_name": SNAPSHOT_DISK, "capacity_bytes": capacity,
                           "parents": [DISK]}],
                "children": []
            }]
        }]}]
    })
}

/// A VM as a warm migration sees it: the precopy snapshot `snapshot-7` holds disk 2000 as
/// `vm1-000001.vmdk` (parent: the base disk), and the VM now runs on `vm1-000002.vmdk`
/// on top of it. Forklift passes the *base* disk as IMPORTER_BACKING_FILE.
fn warm_inventory(capacity: u64) -> Value {
    let mut inv = inventory(capacity);
    inv["datacenters"][0]["vms"][0]["disks"] = json!([{
        "key": 2000,
        "file_name": "[ds1] vm1/vm1-000002.vmdk",
        "capacity_bytes": capacity,
        "parents": [SNAPSHOT_DISK, DISK]
    }]);
    inv["datacenters"][0]["vms"][0]["power_state"] = json!("poweredOn");
    inv
}

/// A running `fake-vcenter`; killed on drop.
struct VCenter {
    child: Option<Child>,
    /// The host name or address clients use.
    host: String,
    port: u16,
    thumbprint: String,
    call_log: PathBuf,
    stderr: PathBuf,
}

impl VCenter {
    /// Start it on 127.0.0.1 in `dir` (inventory, ready file, certificate, call log go
    /// there).
    fn start(dir: &Path, inv: &Value) -> VCenter {
        VCenter::start_on(dir, inv, "127.0.0.1", "127.0.0.1")
    }

    /// Start it listening on `ip`, reached by clients as `host`.
    fn start_on(dir: &Path, inv: &Value, host: &str, ip: &str) -> VCenter {
        std::fs::create_dir_all(dir).expect("mkdir vcenter dir");
        let inv_path = dir.join("inventory.json");
        std::fs::write(&inv_path, inv.to_string()).expect("write inventory");
        let ready = dir.join("ready.json");
        let call_log = dir.join("vcenter-calls.log");
        let stderr = dir.join("vcenter.stderr");
        let child = Command::new(built("fake-vcenter"))
            .arg("--inventory")
            .arg(&inv_path)
            .arg("--listen")
            .arg(std::net::SocketAddr::new(ip.parse().expect("an IP"), 0).to_string())
            .arg("--ready-file")
            .arg(&ready)
            .arg("--call-log")
            .arg(&call_log)
            .arg("--quiet")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&stderr).expect("create vcenter stderr"))
            .spawn()
            .expect("start fake-vcenter");
        let mut vc = VCenter {
            child: Some(child),
            host: host.to_string(),
            port: 0,
            thumbprint: String::new(),
            call_log,
            stderr,
        };
        let t0 = Instant::now();
        while !ready.exists() {
            if let Some(st) = vc.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!(
                    "fake-vcenter exited ({st}) before it was ready:\n{}",
                    std::fs::read_to_string(&vc.stderr).unwrap_or_default()
                );
            }
            assert!(
                t0.elapsed() < VCENTER_WAIT,
                "fake-vcenter did not write {} within {VCENTER_WAIT:?}",
                ready.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let line = std::fs::read_to_string(&ready).expect("read ready file");
        let v: Value = serde_json::from_str(line.trim()).expect("ready file is JSON");
        vc.port = v["port"].as_u64().expect("port") as u16;
        vc.thumbprint = v["thumbprint"].as_str().expect("thumbprint").to_string();
        vc
    }

    fn endpoint(&self) -> String {
        format!("https://{}:{}/sdk", self.host, self.port)
    }

    /// The calls it answered so far, one per line.
    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(&self.call_log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for VCenter {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------
// One importer pod

/// A pod's worth of temp places and its environment: `data/` (the filesystem volume),
/// `termination-log`, the VDDK libdir with the fake, the fake's call log.
struct Pod {
    dir: tempfile::TempDir,
    data: PathBuf,
    term: PathBuf,
    vddk_log: PathBuf,
    metrics_addr: String,
    env: BTreeMap<String, String>,
}

impl Pod {
    /// Only the Ferry-only plumbing, no CDI variable yet.
    fn bare() -> Pod {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).expect("mkdir data");
        let libdir = dir.path().join("vddk");
        install_fake_vddk(&libdir);
        let term = dir.path().join("termination-log");
        let vddk_log = dir.path().join("vddk-calls.log");
        let metrics_addr = format!("127.0.0.1:{}", free_port());
        let mut p = Pod {
            data,
            term,
            vddk_log,
            metrics_addr,
            env: BTreeMap::new(),
            dir,
        };
        let (data, term, vlog, libdir, nodev) = (
            p.data.display().to_string(),
            p.term.display().to_string(),
            p.vddk_log.display().to_string(),
            libdir.display().to_string(),
            p.dir.path().join("no-block-device").display().to_string(),
        );
        let addr = p.metrics_addr.clone();
        // No scratch volume unless a test makes this directory.
        let scratch = p.dir.path().join("scratch").display().to_string();
        p.set("FERRY_SCRATCH_DIR", &scratch);
        p.set("FERRY_DATA_DIR", &data)
            .set("FERRY_BLOCK_DEVICE", &nodev)
            .set("FERRY_METRICS_ADDR", &addr)
            .set("TERMINATION_LOG", &term)
            .set("VDDK_LIBDIR", &libdir)
            .set("FAKE_VDDK_LOG", &vlog);
        p
    }

    /// CDI's full VDDK environment (as `makeImportEnv` sets it, the unused variables
    /// present and empty) for the fake vCenter `vc`, and the fake VDDK serving `backing`
    /// (an NBD URI) as the VM's disk, checking every identity it is handed.
    fn vddk(vc: &VCenter, backing: &str) -> Pod {
        let mut p = Pod::bare();
        p.set("IMPORTER_SOURCE", "vddk")
            .set("IMPORTER_ENDPOINT", &vc.endpoint())
            .set("IMPORTER_CONTENTTYPE", "kubevirt")
            .set("IMPORTER_IMAGE_SIZE", "")
            .set("OWNER_UID", OWNER_UID)
            .set("FILESYSTEM_OVERHEAD", "0")
            .set("INSECURE_TLS", "false")
            .set("IMPORTER_DISK_ID", "")
            .set("IMPORTER_UUID", VM_UUID)
            .set("IMPORTER_PULL_METHOD", "")
            .set("IMPORTER_READY_FILE", "")
            .set("IMPORTER_DONE_FILE", "")
            .set("IMPORTER_BACKING_FILE", DISK)
            .set("IMPORTER_THUMBPRINT", &vc.thumbprint)
            .set("IMPORTER_CURRENT_CHECKPOINT", "")
            .set("IMPORTER_PREVIOUS_CHECKPOINT", "")
            .set("IMPORTER_FINAL_CHECKPOINT", "false")
            .set("PREALLOCATION", "false")
            .set("CACHE_MODE", "")
            .set("IMPORTER_ACCESS_KEY_ID", USER)
            .set("IMPORTER_SECRET_KEY", PASSWORD)
            // The fake VDDK: what it serves and what it insists on being asked for.
            .set("FAKE_VDDK_BACKING", backing)
            .set("FAKE_VDDK_THUMBPRINT", &vc.thumbprint)
            .set("FAKE_VDDK_SERVER", "127.0.0.1")
            .set("FAKE_VDDK_USER", USER)
            .set("FAKE_VDDK_PASSWORD", PASSWORD)
            .set("FAKE_VDDK_VM", &format!("moref={VM_MOREF}"))
            .set("FAKE_VDDK_DISK", DISK);
        p
    }

    fn set(&mut self, k: &str, v: &str) -> &mut Pod {
        self.env.insert(k.to_owned(), v.to_owned());
        self
    }

    fn unset(&mut self, k: &str) -> &mut Pod {
        self.env.remove(k);
        self
    }

    fn disk_img(&self) -> PathBuf {
        self.data.join("disk.img")
    }

    /// `ferry import -v=1` — the image's entrypoint with the argument CDI's controller
    /// always appends (`"-v="+verbosity`, default 1) — with a cleared environment: PATH
    /// and this pod's variables only.
    /// The termination message and the fake VDDK's call log of an earlier run are
    /// removed first.
    fn command(&self) -> Command {
        let _ = std::fs::remove_file(&self.term);
        let _ = std::fs::remove_file(&self.vddk_log);
        let mut c = Command::new(FERRY);
        c.args(["import", "-v=1"])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(&self.env);
        c
    }

    fn run(&self) -> Run {
        run(self.command(), RUN_LIMIT)
    }

    /// The termination message as written (no trailing newline expected, but tolerated).
    fn termination(&self) -> String {
        std::fs::read_to_string(&self.term)
            .unwrap_or_else(|e| panic!("no termination message at {}: {e}", self.term.display()))
    }

    /// The fake VDDK's call log (empty when the library was never initialised).
    fn vddk_calls(&self) -> Vec<String> {
        std::fs::read_to_string(&self.vddk_log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// An nbdkit `sparse-random` disk: ~`percent`% data in 50 000-byte runs.
fn sparse_random(dir: &Path, size: &str, percent: u32, seed: u32) -> Server {
    Server::nbdkit(
        dir,
        &[
            "sparse-random",
            &format!("size={size}"),
            &format!("percent={percent}"),
            &format!("seed={seed}"),
            "runlength=50000",
        ],
    )
}

// ---------------------------------------------------------------------------------------
// Checks

/// The import succeeded: exit 0, nothing on stdout, no error line, no panic.
fn assert_success(r: &Run, ctx: &str) {
    let c = format!(
        "[{ctx}] {}\nexit: {:?}\nstdout:\n{}\nstderr:\n{}",
        r.what, r.status, r.stdout, r.stderr
    );
    assert_eq!(r.status.code(), Some(0), "expected exit 0\n{c}");
    assert!(r.stdout.trim().is_empty(), "stdout must stay empty\n{c}");
    assert!(!r.stderr.contains("ferry: error:"), "error line\n{c}");
    assert!(!r.stderr.contains("panicked"), "panic\n{c}");
    assert!(!r.stderr.contains("VIOLATION"), "VDDK rule broken\n{c}");
}

/// The failure contract of the pod: exit code 1 (CDI's), the single `ferry: error:`
/// line last on stderr containing `phrases`, and the same error as a one-line,
/// plain-text termination message `Unable to process data: …`. Returns the error line.
fn assert_pod_failure(pod: &Pod, r: &Run, ctx: &str, phrases: &[&str]) -> String {
    let line = r.failure(ctx, phrases);
    assert_eq!(
        r.status.code(),
        Some(1),
        "[{ctx}] CDI's failure exit code is 1\nstderr:\n{}",
        r.stderr
    );
    let msg = pod.termination();
    assert!(
        msg.starts_with("Unable to process data: "),
        "[{ctx}] termination message is not CDI's plain-text failure: {msg:?}"
    );
    assert!(
        !msg.trim_end_matches('\n').contains('\n'),
        "[{ctx}] termination message is not one line: {msg:?}"
    );
    assert!(
        serde_json::from_str::<Value>(&msg).is_err(),
        "[{ctx}] a failure's termination message must not be JSON: {msg:?}"
    );
    assert!(msg.len() <= 4096, "[{ctx}] {} bytes", msg.len());
    let err = line.trim_start_matches("ferry: error: ");
    assert!(
        msg.contains(err),
        "[{ctx}] termination message {msg:?} does not carry the error {err:?}"
    );
    for p in phrases {
        assert!(
            msg.contains(p),
            "[{ctx}] termination message lacks {p:?}: {msg:?}"
        );
    }
    line
}

/// The success termination message: exactly one line of JSON, at most 4096 bytes,
/// parsed and equal to `want`.
fn assert_termination_json(pod: &Pod, want: &Value, ctx: &str) {
    let msg = pod.termination();
    assert!(msg.len() <= 4096, "[{ctx}] {} bytes: {msg}", msg.len());
    assert!(
        !msg.trim_end_matches('\n').contains('\n'),
        "[{ctx}] termination message is not one line: {msg:?}"
    );
    let v: Value = serde_json::from_str(msg.trim_end())
        .unwrap_or_else(|e| panic!("[{ctx}] termination message is not JSON ({e}): {msg:?}"));
    assert_eq!(&v, want, "[{ctx}] termination message {msg}");
}

/// CDI's success message for a VDDK import by the fake (`libvixDiskLib.so.8`).
fn vddk_complete(preallocation: bool) -> Value {
    json!({
        "scratchSpaceRequired": false,
        "preallocationApplied": preallocation,
        "vddkInfo": {"Version": "8", "Host": ESX_HOST},
        "message": "Import Complete"
    })
}

/// The VDDK session was torn down by the rules: Close, Disconnect and Exit (in that
/// order, Exit last), no VIOLATION.
fn assert_vddk_closed(pod: &Pod, ctx: &str) {
    let lines = pod.vddk_calls();
    let show = || {
        lines
            .iter()
            .filter(|l| !l.starts_with("ReadAsync"))
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        !lines.iter().any(|l| l.contains("VIOLATION")),
        "[{ctx}] VDDK rule broken:\n{}",
        show()
    );
    let pos = |name: &str| {
        lines
            .iter()
            .position(|l| l.split_whitespace().next() == Some(name))
    };
    let (close, disc, exit) = (pos("Close"), pos("Disconnect"), pos("Exit"));
    assert!(
        close.is_some() && disc.is_some() && exit.is_some(),
        "[{ctx}] Close, Disconnect and Exit expected:\n{}",
        show()
    );
    assert!(close < disc && disc < exit, "[{ctx}] order:\n{}", show());
    assert_eq!(
        lines.last().map(String::as_str),
        Some("Exit"),
        "[{ctx}] Exit last:\n{}",
        show()
    );
}

/// The bytes of `path` from `offset` on are all zero.
fn assert_zero_tail(path: &Path, offset: u64, ctx: &str) {
    let len = file_size(path) - offset;
    assert_filled(path, offset, len, 0, ctx);
}

// ---------------------------------------------------------------------------------------
// 1. Filesystem mode exactly as CDI runs it: progress metric, logs, bytes, message

#[test]
fn cdi_filesystem_import_reports_progress_and_completes() {
    if !require(&["nbdkit", "nbdcopy", "cmp", "curl"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // 256 MiB, ~15% data in 50 000-byte runs; 15 ms per read makes the copy last ~3 s.
    let src = sparse_random(dir.path(), "256M", 15, 11);
    let size = 256 * MIB;
    let vc = VCenter::start(&dir.path().join("vc"), &inventory(size));
    let mut pod = Pod::vddk(&vc, &src.uri());
    pod.set("FAKE_VDDK_LATENCY_MS", "15");

    let re = regex::Regex::new(CDI_PROGRESS_RE).unwrap();
    let url = format!("https://{}/metrics", pod.metrics_addr);
    let mut ferry = spawn(pod.command());
    let mut values: Vec<f64> = Vec::new();
    let mut bodies = 0;
    let t0 = Instant::now();
    while !ferry.has_exited() && t0.elapsed() < RUN_LIMIT {
        // As CDI's controller scrapes: HTTPS, certificate not verified, 2 s timeout.
        let o = Command::new("curl")
            .args(["-sk", "--max-time", "2", &url])
            .output()
            .expect("run curl");
        if o.status.success() {
            let body = String::from_utf8_lossy(&o.stdout).into_owned();
            let caps: Vec<_> = re.captures_iter(&body).collect();
            assert_eq!(
                caps.len(),
                1,
                "one progress series for ownerUID={OWNER_UID} expected in:\n{body}"
            );
            let v: f64 = caps[0][2].parse().expect("a number");
            values.push(v);
            bodies += 1;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = ferry.wait(RUN_LIMIT);
    assert_success(&r, "cdi filesystem import");
    assert!(
        bodies >= 3,
        "only {bodies} scrapes during the copy ({:?}); values {values:?}",
        r.elapsed
    );
    assert!(
        values.windows(2).all(|w| w[0] <= w[1]),
        "progress went backwards: {values:?}"
    );
    assert!(
        values.iter().all(|v| (0.0..=100.0).contains(v)),
        "progress outside 0–100: {values:?}"
    );
    assert!(
        values.iter().any(|v| *v > 0.0 && *v < 100.0),
        "no scrape saw the copy in progress: {values:?}"
    );

    // The bytes: identical to an independent copy of the same disk.
    let reference = nbdcopy_reference(&src.uri(), dir.path());
    assert_identical(&pod.disk_img(), &reference, "cdi filesystem import");

    assert_termination_json(&pod, &vddk_complete(false), "cdi filesystem import");

    // stderr is not a terminal: every line is a JSON object; CDI's progress wording is
    // there, percentages rise, and the last one is 100% of the whole disk.
    let line_re = regex::Regex::new(
        r"^Transferred (\d+)/(\d+) bytes \((\d+)%\)( at \d+ bytes/second overall)?",
    )
    .unwrap();
    let mut percents = Vec::new();
    let mut with_rate = 0;
    let mut last = (0, 0);
    for l in r.stderr.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(l)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {l}\n{}", r.stderr));
        for k in ["timestamp", "level", "message"] {
            assert!(v.get(k).is_some(), "log line lacks {k}: {l}");
        }
        let m = v["message"].as_str().unwrap_or_default();
        if let Some(c) = line_re.captures(m) {
            percents.push(c[3].parse::<u64>().unwrap());
            with_rate += usize::from(c.get(4).is_some());
            last = (c[1].parse::<u64>().unwrap(), c[2].parse::<u64>().unwrap());
        }
    }
    assert!(
        with_rate >= 1,
        "no CDI progress line with a rate:\n{}",
        r.stderr
    );
    assert!(
        percents.windows(2).all(|w| w[0] < w[1]),
        "progress lines not rising: {percents:?}"
    );
    assert_eq!(
        percents.last(),
        Some(&100),
        "last progress line: {percents:?}"
    );
    assert_eq!(last, (size, size), "the 100% line covers the whole disk");
    assert_vddk_closed(&pod, "cdi filesystem import");
    // The vCenter session was closed too.
    assert_eq!(
        vc.calls().last().map(String::as_str),
        Some("Logout"),
        "{:?}",
        vc.calls()
    );
}

// ---------------------------------------------------------------------------------------
// 2. Block mode

#[test]
fn block_mode_writes_the_device_and_leaves_the_rest_untouched() {
    if !require_root(&["nbdkit", "nbdcopy", "cmp"], true) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let size = 64 * MIB;
    let src = sparse_random(dir.path(), "64M", 25, 12);
    let vc = VCenter::start(&dir.path().join("vc"), &inventory(size));
    let dev = Loop::with_garbage(dir.path(), size + 16 * MIB, 0xA5, false);
    let mut pod = Pod::vddk(&vc, &src.uri());
    pod.set("FERRY_BLOCK_DEVICE", dev.dev.to_str().unwrap());
    let r = pod.run();
    assert_success(&r, "block mode");
    let reference = nbdcopy_reference(&src.uri(), dir.path());
    assert_prefix_identical(&dev.dev, &reference, size, "block mode");
    assert_filled(&dev.dev, size, 16 * MIB, 0xA5, "block mode");
    assert!(
        !pod.disk_img().exists(),
        "block mode must not write disk.img"
    );
    assert_termination_json(&pod, &vddk_complete(false), "block mode");
    assert_vddk_closed(&pod, "block mode");
}

#[test]
fn block_device_smaller_than_the_disk_is_refused_untouched() {
    if !require_root(&["nbdkit"], true) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = sparse_random(dir.path(), "64M", 25, 21);
    let vc = VCenter::start(&dir.path().join("vc"), &inventory(64 * MIB));
    let dev = Loop::with_garbage(dir.path(), 48 * MIB, 0xA5, false);
    let mut pod = Pod::vddk(&vc, &src.uri());
    pod.set("FERRY_BLOCK_DEVICE", dev.dev.to_str().unwrap());
    let r = pod.run();
    assert_pod_failure(&pod, &r, "block device too small", &["too small"]);
    assert_filled(&dev.dev, 0, 48 * MIB, 0xA5, "block device too small");
    assert_vddk_closed(&pod, "block device too small");
}

// ---------------------------------------------------------------------------------------
// 3. A checkpoint: the snapshot's disk file and moref reach VDDK

#[test]
fn current_checkpoint_reads_the_snapshot_disk() {
    if !require(&["nbdkit", "nbdcopy", "cmp"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = sparse_random(dir.path(), "32M", 30, 13);
    let vc = VCenter::start(&dir.path().join("vc"), &warm_inventory(32 * MIB));
    let mut pod = Pod::vddk(&vc, &src.uri());
    // The fake refuses any other disk file (FILE_NOT_FOUND) or snapshot (SNAPSHOT_NOTFOUND).
    pod.set("FAKE_VDDK_DISK", SNAPSHOT_DISK)
        .set("FAKE_VDDK_SNAPSHOT", SNAPSHOT);

    // Control: without the checkpoint the base disk is asked for, and refused.
    let r = pod.run();
    assert_pod_failure(&pod, &r, "no checkpoint (control)", &["snapshot"]);

    pod.set("IMPORTER_CURRENT_CHECKPOINT", SNAPSHOT)
        .set("IMPORTER_FINAL_CHECKPOINT", "true");
    let r = pod.run();
    assert_success(&r, "checkpoint");
    let reference = nbdcopy_reference(&src.uri(), dir.path());
    assert_identical(&pod.disk_img(), &reference, "checkpoint");
    assert_termination_json(&pod, &vddk_complete(false), "checkpoint");
    let calls = pod.vddk_calls();
    assert!(
        calls.iter().any(|l| l.starts_with("ConnectEx ")
            && l.contains(&format!("vmxSpec=moref={VM_MOREF}"))
            && l.contains(&format!("snapshot={SNAPSHOT}"))),
        "{calls:?}"
    );
    assert!(
        calls
            .iter()
            .any(|l| l == &format!("Open path={SNAPSHOT_DISK} flags=4")
                || l.starts_with(&format!("Open path={SNAPSHOT_DISK} "))),
        "{calls:?}"
    );
    assert_vddk_closed(&pod, "checkpoint");

    // By name, as govmomi's FindSnapshot (CDI) resolves it.
    pod.set("IMPORTER_CURRENT_CHECKPOINT", "forklift-precopy");
    let r = pod.run();
    assert_success(&r, "checkpoint by name");
    assert_identical(&pod.disk_img(), &reference, "checkpoint by name");
    assert!(
        pod.vddk_calls()
            .iter()
            .any(|l| l.starts_with("ConnectEx ") && l.contains(&format!("snapshot={SNAPSHOT}"))),
        "{:?}",
        pod.vddk_calls()
    );

    // Two snapshots of that name: an error naming both.
    let mut inv = warm_inventory(32 * MIB);
    inv["datacenters"][0]["vms"][0]["snapshots"][0]["children"] = json!([{
        "moref": "snapshot-8",
        "name": "forklift-precopy",
        "disks": [{"key": 2000, "file_name": SNAPSHOT_DISK, "capacity_bytes": 32 * MIB,
                   "parents": [DISK]}],
        "children": []
    }]);
    let vc2 = VCenter::start(&dir.path().join("vc2"), &inv);
    let mut pod = Pod::vddk(&vc2, &src.uri());
    pod.set("IMPORTER_CURRENT_CHECKPOINT", "forklift-precopy");
    let r = pod.run();
    assert_pod_failure(
        &pod,
        &r,
        "ambiguous snapshot name",
        &["ambiguous", SNAPSHOT, "snapshot-8"],
    );
}

#[test]
fn endpoint_uuid_and_thumbprint_forms_cdi_passes() {
    // CDI replaces the endpoint's path with /sdk (the fake vCenter answers only there);
    // Forklift may pass a BIOS UUID (instance UUID first, then BIOS UUID); a thumbprint
    // in lower case is the same thumbprint.
    if !require(&["nbdkit", "nbdcopy", "cmp"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = sparse_random(dir.path(), "8M", 30, 20);
    let vc = VCenter::start(&dir.path().join("vc"), &inventory(8 * MIB));
    let reference = nbdcopy_reference(&src.uri(), dir.path());
    let base = format!("https://127.0.0.1:{}", vc.port);
    let cases: Vec<(String, &str, String)> = vec![
        (base.clone(), VM_UUID, vc.thumbprint.clone()),
        (format!("{base}/"), VM_UUID, vc.thumbprint.clone()),
        (
            format!("{base}/some/other/path"),
            VM_UUID,
            vc.thumbprint.clone(),
        ),
        (
            vc.endpoint(),
            "4212bbbb-0000-0000-0000-000000000001",
            vc.thumbprint.clone(),
        ),
        (vc.endpoint(), VM_UUID, vc.thumbprint.to_ascii_lowercase()),
    ];
    for (endpoint, uuid, tp) in cases {
        let ctx = format!("endpoint {endpoint}, uuid {uuid}, thumbprint {tp}");
        let mut pod = Pod::vddk(&vc, &src.uri());
        pod.set("IMPORTER_ENDPOINT", &endpoint)
            .set("IMPORTER_UUID", uuid)
            .set("IMPORTER_THUMBPRINT", &tp);
        let r = pod.run();
        assert_success(&r, &ctx);
        assert_identical(&pod.disk_img(), &reference, &ctx);
        assert_termination_json(&pod, &vddk_complete(false), &ctx);
    }
}

// ---------------------------------------------------------------------------------------
// 4. Filesystem details: image size, preallocation, a volume too small

#[test]
fn image_size_grows_disk_img_with_a_zero_tail() {
    if !require(&["nbdkit", "nbdcopy", "cmp"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let size = 32 * MIB;
    let src = sparse_random(dir.path(), "32M", 30, 14);
    let vc = VCenter::start(&dir.path().join("vc"), &inventory(size));
    let mut pod = Pod::vddk(&vc, &src.uri());
    pod.set("IMPORTER_IMAGE_SIZE", "48Mi");
    let r = pod.run();
    assert_success(&r, "image size");
    let img = pod.disk_img();
    assert_eq!(
        file_size(&img),
        48 * MIB,
        "disk.img grows to IMPORTER_IMAGE_SIZE"
    );
    let reference = nbdcopy_reference(&src.uri(), dir.path());
    assert_prefix_identical(&img, &reference, size, "image size");
    assert_zero_tail(&img, size, "image size");
    assert_termination_json(&pod, &vddk_complete(false), "image size");
}

#[test]
fn image_size_is_capped_by_the_usable_space_of_the_volume() {
    if !require_root(&["nbdkit", "nbdcopy", "cmp"], false) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let size = 32 * MIB;
    let src = sparse_random(dir.path(), "32M", 30, 15);
    let vc = VCenter::start(&dir.path().join("vc"), &inventory(size));
    let mut pod = Pod::vddk(&vc, &src.uri());
    let mnt = Mount::tmpfs(&pod.data, "size=48M");
    pod.set("IMPORTER_IMAGE_SIZE", "10Gi")
        .set("FILESYSTEM_OVERHEAD", "0.1");
    let r = pod.run();
    assert_success(&r, "image size capped");
    let img = pod.disk_img();
    let usable = (48.0 * MIB as f64 * 0.9) as u64;
    let len = file_size(&img);
    assert!(
        len > size && len <= usable,
        "disk.img is {len} bytes: expected more than the source ({size}) and at most the usable {usable}"
    );
    let reference = nbdcopy_reference(&src.uri(), dir.path());
    assert_prefix_identical(&img, &reference, size, "image size capped");
    assert_zero_tail(&img, size, "image size capped");
    drop(mnt);
}

#[test]
fn preallocation_allocates_the_whole_image() {
    if !require(&["nbdkit", "nbdcopy", "cmp"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let size = 32 * MIB;
    // 10% data: without preallocation most of disk.img would be holes.
    let src = sparse_random(dir.path(), "32M", 10, 16);
    let vc = VCenter::start(&dir.path().join("vc"), &inventory(size));

    // Control: no preallocation leaves the holes unallocated.
    let pod = Pod::vddk(&vc, &src.uri());
    assert_success(&pod.run(), "no preallocation");
    assert!(
        allocated(&pod.disk_img()) < size / 2,
        "a sparse import without preallocation allocated {} bytes",
        allocated(&pod.disk_img())
    );

    let mut pod = Pod::vddk(&vc, &src.uri());
    pod.set("PREALLOCATION", "true")
        .set("IMPORTER_IMAGE_SIZE", "40Mi");
    let r = pod.run();
    assert_success(&r, "preallocation");
    let img = pod.disk_img();
    assert_eq!(file_size(&img), 40 * MIB);
    assert!(
        allocated(&img) >= 40 * MIB,
        "preallocated disk.img has only {} of {} bytes allocated",
        allocated(&img),
        40 * MIB
    );
    let reference = nbdcopy_reference(&src.uri(), dir.path());
    assert_prefix_identical(&img, &reference, size, "preallocation");
    assert_zero_tail(&img, size, "preallocation");
    assert_termination_json(&pod, &vddk_complete(true), "preallocation");
}

#[test]
fn a_volume_too_small_for_the_disk_is_refused() {
    if !require_root(&["nbdkit"], false) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = sparse_random(dir.path(), "128M", 5, 17);
    let vc = VCenter::start(&dir.path().join("vc"), &inventory(128 * MIB));
    let pod = Pod::vddk(&vc, &src.uri());
    let mnt = Mount::tmpfs(&pod.data, "size=64M");
    let r = pod.run();
    assert_pod_failure(
        &pod,
        &r,
        "volume too small",
        &["is larger than the reported available storage"],
    );
    assert!(
        !pod.disk_img().exists(),
        "nothing may be written to a volume that cannot hold the disk"
    );
    assert_vddk_closed(&pod, "volume too small");
    drop(mnt);
}

#[test]
fn filesystem_overhead_counts_against_the_volume() {
    // 62 MiB of disk on a 64 MiB volume: fits with no overhead, not with CDI's 5.5%.
    if !require_root(&["nbdkit", "nbdcopy", "cmp"], false) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = sparse_random(dir.path(), "62M", 5, 22);
    let vc = VCenter::start(&dir.path().join("vc"), &inventory(62 * MIB));
    let mut pod = Pod::vddk(&vc, &src.uri());
    let mnt = Mount::tmpfs(&pod.data, "size=64M");
    pod.set("FILESYSTEM_OVERHEAD", "0.055");
    let r = pod.run();
    assert_pod_failure(
        &pod,
        &r,
        "overhead 0.055",
        &["is larger than the reported available storage"],
    );
    pod.set("FILESYSTEM_OVERHEAD", "0");
    let r = pod.run();
    assert_success(&r, "overhead 0");
    let reference = nbdcopy_reference(&src.uri(), dir.path());
    assert_identical(&pod.disk_img(), &reference, "overhead 0");
    drop(mnt);
}

#[test]
fn disk_img_is_group_writable_like_cdis() {
    // pkg/importer/data-processor.go `resize`: `os.Chmod(dp.dataFile, 0660)` after every
    // full (VDDK) import, with or without IMPORTER_IMAGE_SIZE.
    use std::os::unix::fs::PermissionsExt;
    if !require(&["nbdkit"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = sparse_random(dir.path(), "8M", 30, 23);
    let vc = VCenter::start(&dir.path().join("vc"), &inventory(8 * MIB));
    let pod = Pod::vddk(&vc, &src.uri());
    let r = pod.run();
    assert_success(&r, "mode");
    let mode = std::fs::metadata(pod.disk_img())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o660, "disk.img mode is {mode:o}, CDI leaves 660");
}

#[test]
fn the_vddk_config_files_aio_sizes_size_vddk_and_the_pool() {
    // Forklift writes the NFC AIO sizes into the ConfigMap mounted at
    // /vddk-args/vddk-config-file; with no flags, Ferry adopts them for VDDK and its pool.
    if !require(&["nbdkit"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = sparse_random(dir.path(), "8M", 30, 29);
    let vc = VCenter::start(&dir.path().join("vc"), &inventory(8 * MIB));
    let conf = dir.path().join("vddk-config-file");
    std::fs::write(
        &conf,
        "VixDiskLib.nfcAio.Session.BufSizeIn64KB=8\nVixDiskLib.nfcAio.Session.BufCount=2\n",
    )
    .unwrap();
    let mut pod = Pod::vddk(&vc, &src.uri());
    pod.set("VDDK_CONFIG_FILE", conf.to_str().unwrap());
    let r = pod.run();
    assert_success(&r, "vddk config");
    let calls = pod.vddk_calls();
    let config: Vec<&String> = calls.iter().filter(|l| l.starts_with("Config ")).collect();
    assert!(
        config
            .iter()
            .any(|l| l.contains("BufSizeIn64KB") && l.contains('8'))
            && config
                .iter()
                .any(|l| l.contains("BufCount") && l.contains('2')),
        "{config:?}"
    );
    // Reads are at most 8 × 64 KiB = 1024 sectors: the pool follows the config file.
    for l in calls.iter().filter(|l| l.starts_with("ReadAsync ")) {
        let count: u64 = l.rsplit("count=").next().unwrap().trim().parse().unwrap();
        assert!(count <= 1024, "{l}");
    }
    assert!(
        !r.stderr.contains("using 16"),
        "no override warning expected:\n{}",
        r.stderr
    );
}

#[test]
fn a_restarted_pod_overwrites_a_stale_disk_img() {
    // CDI restarts a failed importer pod on the same volume: the disk.img of the earlier
    // attempt (here: garbage, and longer than the disk) is there.
    if !require(&["nbdkit", "nbdcopy", "cmp"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let size = 32 * MIB;
    let src = sparse_random(dir.path(), "32M", 20, 18);
    let vc = VCenter::start(&dir.path().join("vc"), &inventory(size));
    let pod = Pod::vddk(&vc, &src.uri());
    fill(&pod.disk_img(), 0x5A, size + 8 * MIB);
    let r = pod.run();
    assert_success(&r, "stale disk.img");
    let reference = nbdcopy_reference(&src.uri(), dir.path());
    assert_identical(&pod.disk_img(), &reference, "stale disk.img");
}

// ---------------------------------------------------------------------------------------
// 5. Invalid variables: one line naming the variable, nothing contacted

/// (what, variables to set — `None` removes —, phrases the error must hold)
type Case<'a> = (&'a str, &'a [(&'a str, Option<&'a str>)], &'a [&'a str]);

#[test]
fn each_invalid_variable_is_named_before_any_connection() {
    let dir = tempfile::tempdir().unwrap();
    let vc = VCenter::start(&dir.path().join("vc"), &inventory(MIB));
    // Never contacted; any NBD URI will do.
    let backing = format!(
        "nbd+unix:///?socket={}",
        dir.path().join("none.sock").display()
    );
    let cases: &[Case] = &[
        (
            "archive content type",
            &[("IMPORTER_CONTENTTYPE", Some("archive"))],
            &["IMPORTER_CONTENTTYPE", "archive", "not supported"],
        ),
        (
            "blank archive",
            &[
                ("IMPORTER_SOURCE", Some("none")),
                ("IMPORTER_CONTENTTYPE", Some("archive")),
            ],
            &["Cannot create empty disk with content type archive"],
        ),
        (
            "PREALLOCATION=maybe",
            &[("PREALLOCATION", Some("maybe"))],
            &["PREALLOCATION", "maybe"],
        ),
        (
            "previous checkpoint without current",
            &[("IMPORTER_PREVIOUS_CHECKPOINT", Some("snapshot-6"))],
            &[
                "IMPORTER_PREVIOUS_CHECKPOINT",
                "IMPORTER_CURRENT_CHECKPOINT",
            ],
        ),
        (
            "malformed thumbprint",
            &[("IMPORTER_THUMBPRINT", Some("AA:BB:CC"))],
            &["IMPORTER_THUMBPRINT", "AA:BB:CC"],
        ),
        (
            "malformed change ID",
            &[
                ("IMPORTER_CURRENT_CHECKPOINT", Some(SNAPSHOT)),
                ("IMPORTER_PREVIOUS_CHECKPOINT", Some("52 de zz-77 aa/81")),
            ],
            &["IMPORTER_PREVIOUS_CHECKPOINT", "52 de zz-77 aa/81"],
        ),
        (
            "UUID not a UUID",
            &[("IMPORTER_UUID", Some("vm1"))],
            &["IMPORTER_UUID", "vm1"],
        ),
        (
            "FILESYSTEM_OVERHEAD=abc",
            &[("FILESYSTEM_OVERHEAD", Some("abc"))],
            &["FILESYSTEM_OVERHEAD", "abc"],
        ),
        (
            "IMPORTER_IMAGE_SIZE=big",
            &[("IMPORTER_IMAGE_SIZE", Some("big"))],
            &["IMPORTER_IMAGE_SIZE", "big"],
        ),
        (
            "IMPORTER_SOURCE=s3",
            &[("IMPORTER_SOURCE", Some("s3"))],
            &["IMPORTER_SOURCE", "s3"],
        ),
        (
            "IMPORTER_ENDPOINT missing",
            &[("IMPORTER_ENDPOINT", None)],
            &["IMPORTER_ENDPOINT"],
        ),
        (
            "IMPORTER_ENDPOINT empty (as CDI leaves unused variables)",
            &[("IMPORTER_ENDPOINT", Some(""))],
            &["IMPORTER_ENDPOINT"],
        ),
        (
            "IMPORTER_CURRENT_CHECKPOINT not a snapshot reference",
            &[("IMPORTER_CURRENT_CHECKPOINT", Some("warm\n1"))],
            &["IMPORTER_CURRENT_CHECKPOINT", "warm\\n1"],
        ),
        (
            "INSECURE_TLS=maybe",
            &[("INSECURE_TLS", Some("maybe"))],
            &["INSECURE_TLS"],
        ),
        (
            "IMPORTER_SECRET_KEY missing",
            &[("IMPORTER_SECRET_KEY", Some(""))],
            &["IMPORTER_SECRET_KEY"],
        ),
    ];
    for (ctx, vars, phrases) in cases {
        let mut pod = Pod::vddk(&vc, &backing);
        for (k, v) in *vars {
            match v {
                Some(v) => pod.set(k, v),
                None => pod.unset(k),
            };
        }
        let r = pod.run();
        let line = assert_pod_failure(&pod, &r, ctx, phrases);
        assert!(
            !line.contains(PASSWORD),
            "[{ctx}] the password leaked: {line}"
        );
        assert!(
            vc.calls().is_empty(),
            "[{ctx}] the vCenter was contacted: {:?}",
            vc.calls()
        );
        assert!(
            pod.vddk_calls().is_empty(),
            "[{ctx}] VDDK was loaded: {:?}",
            pod.vddk_calls()
        );
    }
}

#[test]
fn warm_delta_rounds_copy_only_the_changed_areas() {
    // Round 1 copies snapshot-7 whole; round 2 copies only what vCenter's
    // QueryChangedDiskAreas says changed between snapshot-7 and snapshot-8 (previous
    // checkpoint as a snapshot moref, then as a change ID): data rewritten, data zeroed,
    // data written into a former hole. The result equals snapshot-8's disk each time.
    const SIZE: u64 = 16 * MIB;
    const CID7: &str = "52 aa bb cc dd ee ff 00-11 22 33 44 55 66 77 88/7";
    const SNAP8: &str = "snapshot-8";
    const SNAP8_DISK: &str = "[ds1] vm1/vm1-000002.vmdk";
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("round1.raw"), dir.path().join("round2.raw"));
    let mut img = vec![0u8; SIZE as usize];
    for (i, x) in img[..4 * MIB as usize].iter_mut().enumerate() {
        *x = (i % 251) as u8 + 1;
    }
    for x in &mut img[8 * MIB as usize..10 * MIB as usize] {
        *x = 0x5a;
    }
    std::fs::write(&a, &img).unwrap();
    // snapshot-8: 1 MiB..1.5 MiB rewritten, 8..9 MiB zeroed, 12..12.25 MiB written.
    img[MIB as usize..MIB as usize + 512 * 1024].fill(0xc3);
    img[8 * MIB as usize..9 * MIB as usize].fill(0);
    img[12 * MIB as usize..12 * MIB as usize + 256 * 1024].fill(0x77);
    std::fs::write(&b, &img).unwrap();
    // The zeroed area is a hole in snapshot-8 (unallocated), as a discard leaves it.
    let st = std::process::Command::new("fallocate")
        .args([
            "--punch-hole",
            "--offset",
            &(8 * MIB).to_string(),
            "--length",
            &MIB.to_string(),
        ])
        .arg(&b)
        .status()
        .expect("fallocate");
    assert!(st.success(), "fallocate --punch-hole failed");
    let mut inv = inventory(SIZE);
    inv["datacenters"][0]["vms"][0]["snapshots"][0]["disks"][0]["change_id"] = json!(CID7);
    inv["datacenters"][0]["vms"][0]["snapshots"][0]["children"] = json!([{
        "moref": SNAP8,
        "name": "forklift-precopy-2",
        "disks": [{"key": 2000, "file_name": SNAP8_DISK, "capacity_bytes": SIZE,
                   "parents": [SNAPSHOT_DISK, DISK], "previous_change_id": CID7,
                   "changed_areas": [
                       {"start": MIB, "length": 512 * 1024},
                       {"start": 8 * MIB, "length": MIB},
                       {"start": 12 * MIB, "length": 256 * 1024}]}],
        "children": []
    }]);
    let vc = VCenter::start(&dir.path().join("vc"), &inv);
    let mut pod = Pod::vddk(&vc, a.to_str().unwrap());
    pod.set("IMPORTER_CURRENT_CHECKPOINT", SNAPSHOT)
        .set("FAKE_VDDK_SNAPSHOT", SNAPSHOT)
        .set("FAKE_VDDK_DISK", SNAPSHOT_DISK);
    assert_success(&pod.run(), "round 1 (full)");
    assert_identical(&pod.disk_img(), &a, "round 1");
    let round1_marker =
        std::fs::read(pod.data.join("disk.img.ferry-round")).expect("round 1 marker");
    for previous in [SNAPSHOT, CID7] {
        // Each form starts from round 1's target (a retried round 2).
        std::fs::copy(&a, pod.disk_img()).unwrap();
        std::fs::write(pod.data.join("disk.img.ferry-round"), &round1_marker).unwrap();
        pod.set("FAKE_VDDK_BACKING", b.to_str().unwrap())
            .set("IMPORTER_CURRENT_CHECKPOINT", SNAP8)
            .set("IMPORTER_PREVIOUS_CHECKPOINT", previous)
            .set("FAKE_VDDK_SNAPSHOT", SNAP8)
            .set("FAKE_VDDK_DISK", SNAP8_DISK);
        let r = pod.run();
        let ctx = format!("delta from {previous:?}");
        assert_success(&r, &ctx);
        assert_identical(&pod.disk_img(), &b, &ctx);
        // Only changed areas were read: [1 MiB, 1.5 MiB) and [12 MiB, 12.25 MiB) hold
        // data in snapshot-8; [8, 9) MiB is a hole there and is zeroed, not read.
        let calls = pod.vddk_calls();
        let this_run = calls
            .iter()
            .rposition(|l| l.starts_with("InitEx"))
            .unwrap_or(0);
        let read: u64 = calls[this_run..]
            .iter()
            .filter_map(|l| l.strip_prefix("ReadAsync "))
            .map(|l| {
                let start: u64 = l
                    .split("start=")
                    .nth(1)
                    .and_then(|x| x.split(' ').next())
                    .unwrap()
                    .parse()
                    .unwrap();
                let count: u64 = l.split("count=").nth(1).unwrap().trim().parse().unwrap();
                assert!(
                    (2048..3072).contains(&start) || (24576..25088).contains(&start),
                    "[{ctx}] read outside the changed data: {l}"
                );
                count * 512
            })
            .sum();
        assert_eq!(read, 512 * 1024 + 256 * 1024, "[{ctx}] bytes read");
        assert!(
            vc.calls()
                .iter()
                .any(|c| c.starts_with("QueryChangedDiskAreas")),
            "[{ctx}] no CBT query"
        );
    }
    // The same delta through `ferry copy --changed-since` (a vddk:// source; the changed
    // areas come from vCenter's CBT), onto another copy of the previous round.
    let copy_target = dir.path().join("copy.img");
    std::fs::copy(&a, &copy_target).unwrap();
    let pw = dir.path().join("password");
    std::fs::write(&pw, PASSWORD).unwrap();
    let uri = format!(
        "vddk://{USER}@127.0.0.1:{}/?vm={VM_MOREF}&file={SNAP8_DISK}&thumbprint={}&snapshot={SNAP8}",
        vc.port, vc.thumbprint
    );
    let out = Command::new(FERRY)
        .args(["copy", &uri])
        .arg(&copy_target)
        .args([
            "--vddk-libdir",
            &pod.env["VDDK_LIBDIR"],
            "--changed-since",
            SNAPSHOT,
            "--json",
            "--no-progress",
        ])
        .arg("--password-file")
        .arg(&pw)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(pod.env.iter().filter(|(k, _)| k.starts_with("FAKE_VDDK_")))
        .output()
        .expect("run ferry copy");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "ferry copy --changed-since failed:\n{stderr}"
    );
    let stats: Value = serde_json::from_slice(&out.stdout).expect("json summary");
    assert_eq!(
        stats["bytes_read"],
        json!(512 * 1024 + 256 * 1024),
        "copy --changed-since bytes read"
    );
    assert_identical(&copy_target, &b, "copy --changed-since");
    // `*` asks for every allocated area: onto a zeroed target of the disk's size, the
    // result is the whole snapshot.
    let star_target = dir.path().join("star.img");
    std::fs::File::create(&star_target)
        .unwrap()
        .set_len(SIZE)
        .unwrap();
    let out = Command::new(FERRY)
        .args(["copy", &uri])
        .arg(&star_target)
        .args([
            "--vddk-libdir",
            &pod.env["VDDK_LIBDIR"],
            "--changed-since",
            "*",
            "--json",
            "--no-progress",
        ])
        .arg("--password-file")
        .arg(&pw)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(pod.env.iter().filter(|(k, _)| k.starts_with("FAKE_VDDK_")))
        .output()
        .expect("run ferry copy");
    assert!(
        out.status.success(),
        "ferry copy --changed-since '*' failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_identical(&star_target, &b, "copy --changed-since '*'");

    // The round marker beside disk.img names snapshot-8 now: a delta that claims to start
    // from snapshot-7 (which the target no longer holds) is refused.
    let marker = pod.data.join("disk.img.ferry-round");
    let round: Value =
        serde_json::from_slice(&std::fs::read(&marker).expect("round marker")).unwrap();
    assert_eq!(round["snapshot"], json!(SNAP8), "{round}");
    pod.set("IMPORTER_PREVIOUS_CHECKPOINT", SNAPSHOT);
    let r = pod.run();
    assert_pod_failure(
        &pod,
        &r,
        "delta from a checkpoint the target does not hold",
        &["full copy"],
    );
    std::fs::write(&marker, serde_json::to_vec(&round).unwrap()).unwrap();

    // A change ID vCenter no longer knows (CBT reset): a full copy is needed.
    pod.set("IMPORTER_PREVIOUS_CHECKPOINT", CHANGE_ID);
    let r = pod.run();
    assert_pod_failure(&pod, &r, "CBT reset", &["full copy"]);
    // A target that does not match the disk's size any more: a full copy is needed.
    pod.set("IMPORTER_PREVIOUS_CHECKPOINT", SNAPSHOT);
    std::fs::OpenOptions::new()
        .write(true)
        .open(pod.disk_img())
        .unwrap()
        .set_len(SIZE / 2)
        .unwrap();
    let r = pod.run();
    assert_pod_failure(&pod, &r, "resized target", &["changed size", "full copy"]);
}

// ---------------------------------------------------------------------------------------
// 6. vCenter errors: one line each

/// A failed vSphere lookup: the error line, and VDDK loaded (at start-up) but never
/// asked to connect, and shut down cleanly.
fn assert_lookup_failure(pod: &Pod, r: &Run, ctx: &str, phrases: &[&str]) -> String {
    let line = assert_pod_failure(pod, r, ctx, phrases);
    assert!(
        !r.stderr.contains(PASSWORD),
        "[{ctx}] the password leaked:\n{}",
        r.stderr
    );
    let calls = pod.vddk_calls();
    assert!(
        !calls
            .iter()
            .any(|l| l.starts_with("ConnectEx") || l.contains("VIOLATION")),
        "[{ctx}] VDDK connected or broke a rule: {calls:?}"
    );
    assert!(
        calls.is_empty() || calls.last().map(String::as_str) == Some("Exit"),
        "[{ctx}] VDDK not shut down: {calls:?}"
    );
    line
}

#[test]
fn vcenter_errors_each_give_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let vc = VCenter::start(&dir.path().join("vc"), &inventory(MIB));
    let backing = format!(
        "nbd+unix:///?socket={}",
        dir.path().join("none.sock").display()
    );

    let mut pod = Pod::vddk(&vc, &backing);
    pod.set("IMPORTER_SECRET_KEY", "not-the-password");
    let r = pod.run();
    let line = assert_lookup_failure(&pod, &r, "wrong password", &["login failed", "admin"]);
    assert!(
        line.contains("incorrect user name or password") || line.contains("authenticat"),
        "[wrong password] says nothing about authentication: {line}"
    );
    assert!(!r.stderr.contains("not-the-password"), "password leaked");
    assert!(
        vc.calls().iter().any(|l| l.contains("fault=InvalidLogin")),
        "{:?}",
        vc.calls()
    );

    let before = vc.calls().len();
    let mut pod = Pod::vddk(&vc, &backing);
    pod.set("IMPORTER_THUMBPRINT", OTHER_TP);
    let r = pod.run();
    assert_lookup_failure(
        &pod,
        &r,
        "wrong thumbprint",
        &["thumbprint mismatch", &vc.thumbprint, OTHER_TP],
    );
    assert_eq!(
        vc.calls().len(),
        before,
        "a pinned TLS mismatch must stop before any SOAP call"
    );

    let unknown = "00000000-1111-2222-3333-444444444444";
    let mut pod = Pod::vddk(&vc, &backing);
    pod.set("IMPORTER_UUID", unknown);
    let r = pod.run();
    assert_lookup_failure(&pod, &r, "unknown UUID", &["not found", unknown]);

    let mut pod = Pod::vddk(&vc, &backing);
    pod.set("IMPORTER_BACKING_FILE", "[ds1] vm1/other.vmdk");
    let r = pod.run();
    assert_lookup_failure(
        &pod,
        &r,
        "unknown backing file",
        &["not found", "[ds1] vm1/other.vmdk"],
    );

    let mut pod = Pod::vddk(&vc, &backing);
    pod.set("IMPORTER_CURRENT_CHECKPOINT", "snapshot-99");
    let r = pod.run();
    assert_lookup_failure(&pod, &r, "unknown snapshot", &["not found", "snapshot-99"]);

    // Every session that logged in logged out again.
    let calls = vc.calls();
    let logins = calls
        .iter()
        .filter(|l| l.starts_with("Login ") && !l.contains("fault="))
        .count();
    let logouts = calls.iter().filter(|l| l.starts_with("Logout")).count();
    assert_eq!(logins, logouts, "sessions left open: {calls:?}");

    let port = free_port();
    let mut pod = Pod::vddk(&vc, &backing);
    pod.set(
        "IMPORTER_ENDPOINT",
        &format!("https://127.0.0.1:{port}/sdk"),
    );
    let r = pod.run();
    assert_lookup_failure(
        &pod,
        &r,
        "vCenter not listening",
        &["Connection refused", &format!("127.0.0.1:{port}")],
    );
}

/// CDI's pods exit 1 for every failure; ferry-controller's (`FERRY_EXIT_CODES=kinds`)
/// exit with the failure's kind, so a disk that cannot be found fails at once instead
/// of restarting.
#[test]
fn ferry_controller_pods_exit_with_the_failures_kind() {
    let dir = tempfile::tempdir().unwrap();
    let vc = VCenter::start(&dir.path().join("vc"), &inventory(MIB));
    let backing = format!(
        "nbd+unix:///?socket={}",
        dir.path().join("none.sock").display()
    );
    let mut pod = Pod::vddk(&vc, &backing);
    pod.set("IMPORTER_BACKING_FILE", "[ds1] vm1/missing.vmdk");
    let r = pod.run();
    r.failure("CDI's pod", &["not found"]);
    assert_eq!(
        r.status.code(),
        Some(1),
        "CDI's contract: 1 for every failure"
    );
    pod.set("FERRY_EXIT_CODES", "kinds");
    let r = pod.run();
    r.failure("ferry-controller's pod", &["not found"]);
    assert_eq!(
        r.status.code(),
        Some(i32::from(
            ferry_contract::exit::ErrorKind::NotFound.exit_code()
        )),
        "stderr:\n{}",
        r.stderr
    );
}

#[test]
fn failure_messages_stay_one_line_within_the_kubelet_limit() {
    let dir = tempfile::tempdir().unwrap();
    let vc = VCenter::start(&dir.path().join("vc"), &inventory(MIB));
    let backing = format!(
        "nbd+unix:///?socket={}",
        dir.path().join("none.sock").display()
    );

    // A 6000-byte backing file (valid: under the 8 KiB cap) that is not found: the error
    // names it, so the message must be cut to the kubelet's 4096 bytes.
    let long = format!("[ds1] vm1/{}.vmdk", "x".repeat(6000));
    let mut pod = Pod::vddk(&vc, &backing);
    pod.set("IMPORTER_BACKING_FILE", &long);
    let r = pod.run();
    r.failure("long backing file", &["not found"]);
    assert_eq!(r.status.code(), Some(1));
    let msg = pod.termination();
    assert!(
        msg.len() <= 4096,
        "termination message of {} bytes",
        msg.len()
    );
    assert!(
        msg.starts_with("Unable to process data: not found"),
        "{msg:.200}"
    );
    assert!(!msg.contains('\n'), "{msg:.200}");

    // A newline inside a value: still one line everywhere.
    let mut pod = Pod::vddk(&vc, &backing);
    pod.set("IMPORTER_BACKING_FILE", "[ds1] vm1/a\nb.vmdk");
    let r = pod.run();
    r.failure("newline in the backing file", &["not found"]);
    let msg = pod.termination();
    assert!(msg.starts_with("Unable to process data: "), "{msg:?}");
    assert!(!msg.contains('\n'), "{msg:?}");
}

// ---------------------------------------------------------------------------------------
// 7. SIGTERM mid-copy

#[test]
fn sigterm_mid_copy_cancels_cleanly() {
    if !require(&["nbdkit", "kill"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = sparse_random(dir.path(), "256M", 30, 19);
    let vc = VCenter::start(&dir.path().join("vc"), &inventory(256 * MIB));
    let mut pod = Pod::vddk(&vc, &src.uri());
    // ~1.5 MiB/s: the copy would take about a minute.
    pod.set("FAKE_VDDK_LATENCY_MS", "200");
    let mut ferry = spawn(pod.command());
    let t0 = Instant::now();
    while !pod.vddk_calls().iter().any(|l| l.starts_with("ReadAsync")) {
        assert!(!ferry.has_exited(), "ferry ended before copying");
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no read within 20 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(!ferry.has_exited(), "the copy ended before the signal");
    ferry.signal("TERM");
    let signalled = Instant::now();
    let r = ferry.wait(t0.elapsed() + Duration::from_secs(10));
    let took = signalled.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "took {took:?} after SIGTERM"
    );
    let line = r.failure("SIGTERM", &["cancelled"]);
    assert_ne!(r.status.code(), Some(0));
    assert!(r.stdout.is_empty(), "stdout: {:?}", r.stdout);
    let msg = pod.termination();
    assert!(
        msg.starts_with("Unable to process data: ") && msg.contains("cancelled"),
        "termination message: {msg:?} (error line {line})"
    );
    assert!(!msg.trim_end().contains('\n'), "{msg:?}");
    assert!(serde_json::from_str::<Value>(&msg).is_err(), "{msg:?}");
    assert_vddk_closed(&pod, "SIGTERM");
}

#[test]
fn sigterm_with_a_read_stuck_in_vddk_still_ends_promptly() {
    // A read that VDDK never completes: the disk cannot be closed (Close with a read
    // pending breaks the library's rules), so the pod must give up on it and still end
    // within the bound, saying it was cancelled.
    if !require(&["nbdkit", "kill"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = sparse_random(dir.path(), "64M", 30, 24);
    let vc = VCenter::start(&dir.path().join("vc"), &inventory(64 * MIB));
    let mut pod = Pod::vddk(&vc, &src.uri());
    pod.set("FAKE_VDDK_HANG_READ", "3")
        .set("FAKE_VDDK_HANG_MS", "600000");
    let mut ferry = spawn(pod.command());
    let t0 = Instant::now();
    while pod
        .vddk_calls()
        .iter()
        .filter(|l| l.starts_with("ReadAsync"))
        .count()
        < 3
    {
        assert!(!ferry.has_exited(), "ferry ended before the stuck read");
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no read within 20 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(!ferry.has_exited(), "the copy ended despite the stuck read");
    ferry.signal("TERM");
    let signalled = Instant::now();
    let r = ferry.wait(t0.elapsed() + Duration::from_secs(10));
    let took = signalled.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "took {took:?} after SIGTERM"
    );
    r.failure("SIGTERM, stuck read", &["cancelled"]);
    let msg = pod.termination();
    assert!(
        msg.starts_with("Unable to process data: ") && msg.contains("cancelled"),
        "{msg:?}"
    );
    let calls = pod.vddk_calls();
    assert!(
        !calls.iter().any(|l| l.contains("VIOLATION")),
        "VDDK rule broken: {:?}",
        calls
            .iter()
            .filter(|l| !l.starts_with("ReadAsync"))
            .collect::<Vec<_>>()
    );
}

#[test]
fn a_vddk_read_error_mid_copy_is_one_line_and_the_disk_is_closed() {
    if !require(&["nbdkit"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = sparse_random(dir.path(), "64M", 30, 25);
    let vc = VCenter::start(&dir.path().join("vc"), &inventory(64 * MIB));
    let mut pod = Pod::vddk(&vc, &src.uri());
    pod.set("FAKE_VDDK_FAIL_READ", "5");
    let r = pod.run();
    assert_pod_failure(
        &pod,
        &r,
        "read error",
        &["VDDK ReadAsync", "VIX 2", "NFC server out of memory"],
    );
    assert_vddk_closed(&pod, "read error");
}

// ---------------------------------------------------------------------------------------
// 8. An NBD source

#[test]
fn nbd_source_into_filesystem_mode() {
    if !require(&["nbdkit", "nbdcopy", "cmp"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = Server::nbdkit(dir.path(), &["pattern", "size=33M"]);
    let mut pod = Pod::bare();
    pod.set("IMPORTER_SOURCE", "nbd")
        .set("IMPORTER_ENDPOINT", &src.uri())
        .set("OWNER_UID", OWNER_UID)
        .set("PREALLOCATION", "false");
    let r = pod.run();
    assert_success(&r, "nbd source");
    let reference = nbdcopy_reference(&src.uri(), dir.path());
    assert_identical(&pod.disk_img(), &reference, "nbd source");
    assert_termination_json(
        &pod,
        &json!({
            "scratchSpaceRequired": false,
            "preallocationApplied": false,
            "message": "Import Complete"
        }),
        "nbd source",
    );
    assert!(
        pod.vddk_calls().is_empty(),
        "VDDK was loaded for an NBD source"
    );
}

// ---------------------------------------------------------------------------------------
// Resume journals under `ferry import` (issue 8)

/// Start the pod, wait until its journal records at least `min` durable bytes, kill -9.
fn kill_import_after_progress(pod: &Pod, journal: &Path, min: u64) -> u64 {
    kill_after_progress(pod.command(), journal, min, Duration::from_secs(20))
}

#[test]
fn a_restarted_import_never_resumes_onto_a_replaced_disk_img() {
    if !require(&["nbdkit", "nbdcopy", "cmp"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("disk.sock");
    let reference = {
        let fast = Server::nbdkit_at(&sock, &["pattern", "256M"]);
        nbdcopy_reference(&fast.uri(), dir.path())
    };
    // 32 reads of 1 MiB in flight, 200 ms each: about 1.6 s for the whole disk.
    let slow = ["--filter=delay", "pattern", "256M", "rdelay=200ms"];
    let mut pod = Pod::bare();
    let uri = format!("nbd+unix:///?socket={}", sock.display());
    pod.set("IMPORTER_SOURCE", "nbd")
        .set("IMPORTER_ENDPOINT", &uri)
        .set("OWNER_UID", OWNER_UID)
        .set("PREALLOCATION", "false");
    // 1. The default journal beside disk.img; disk.img deleted between the runs (a
    //    volume wiped and handed back): a full copy, identical.
    let beside = pod.data.join("disk.img.ferry-journal");
    let server = Server::nbdkit_at(&sock, &slow);
    let mark = kill_import_after_progress(&pod, &beside, 40 * MIB);
    drop(server);
    assert!(mark > 0);
    std::fs::remove_file(pod.disk_img()).unwrap();
    let server = Server::nbdkit_at(&sock, &["pattern", "256M"]);
    let r = pod.run();
    assert_success(&r, "disk.img deleted");
    assert!(
        r.stderr.contains("discarding the resume journal"),
        "{}",
        r.stderr
    );
    assert!(
        !r.stderr.contains("resuming from the journal"),
        "{}",
        r.stderr
    );
    assert_identical(&pod.disk_img(), &reference, "disk.img deleted");
    assert!(!beside.exists());
    drop(server);

    // 2. FERRY_JOURNAL outside the volume; disk.img replaced by another file of the
    //    same size under the same name: a full copy, identical.
    let outside = pod.dir.path().join("journals/disk.journal");
    std::fs::create_dir_all(outside.parent().unwrap()).unwrap();
    pod.set("FERRY_JOURNAL", outside.to_str().unwrap());
    std::fs::remove_file(pod.disk_img()).unwrap();
    let server = Server::nbdkit_at(&sock, &slow);
    kill_import_after_progress(&pod, &outside, 40 * MIB);
    drop(server);
    std::fs::remove_file(pod.disk_img()).unwrap();
    fill(&pod.disk_img(), 0, 256 * MIB);
    let server = Server::nbdkit_at(&sock, &["pattern", "256M"]);
    let r = pod.run();
    assert_success(&r, "disk.img replaced");
    assert!(
        !r.stderr.contains("resuming from the journal"),
        "{}",
        r.stderr
    );
    assert_identical(&pod.disk_img(), &reference, "disk.img replaced");
    drop(server);

    // 3. The same disk.img kept: the restart resumes, identical.
    let server = Server::nbdkit_at(&sock, &slow);
    std::fs::remove_file(pod.disk_img()).unwrap();
    kill_import_after_progress(&pod, &outside, 40 * MIB);
    drop(server);
    let server = Server::nbdkit_at(&sock, &["pattern", "256M"]);
    let r = pod.run();
    assert_success(&r, "disk.img kept");
    assert!(
        r.stderr.contains("resuming from the journal"),
        "{}",
        r.stderr
    );
    assert_identical(&pod.disk_img(), &reference, "disk.img kept");
    assert!(!outside.exists());

    // 4. FERRY_JOURNAL naming disk.img itself is refused before anything is written.
    std::fs::remove_file(pod.disk_img()).unwrap();
    fill(&pod.disk_img(), 0x11, MIB);
    pod.set("FERRY_JOURNAL", pod.disk_img().to_str().unwrap());
    let r = pod.run();
    assert_pod_failure(
        &pod,
        &r,
        "journal = disk.img",
        &["resume journal", "is the target"],
    );
    assert_eq!(file_size(&pod.disk_img()), MIB, "disk.img was touched");
    assert_filled(&pod.disk_img(), 0, MIB, 0x11, "disk.img was touched");
    drop(server);
}

// ---------------------------------------------------------------------------------------
// CDI's filesystem arithmetic and blank images (issue 9)

/// The PVC size CDI asks for a disk of `size` bytes on a filesystem volume with
/// `overhead` (`InflateSizeWithOverhead`: ceil(size × (1 + overhead))), which it also
/// passes as IMPORTER_IMAGE_SIZE.
fn inflated(size: u64, overhead: f64) -> u64 {
    (size as f64 * (1.0 + overhead)).ceil() as u64
}

#[test]
fn a_volume_exactly_as_large_as_cdis_inflated_request_fits() {
    if !require_root(&["nbdkit", "nbdcopy", "cmp"], false) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let size = 100 * MIB;
    let request = inflated(size, 0.055);
    assert_eq!(request % 4096, 0, "tmpfs rounds sizes to pages");
    let src = sparse_random(dir.path(), "100M", 10, 31);
    let mut pod = Pod::bare();
    pod.set("IMPORTER_SOURCE", "nbd")
        .set("IMPORTER_ENDPOINT", &src.uri())
        .set("OWNER_UID", OWNER_UID)
        .set("FILESYSTEM_OVERHEAD", "0.055")
        .set("IMPORTER_IMAGE_SIZE", &request.to_string());
    let mnt = Mount::tmpfs(&pod.data, &format!("size={request}"));
    let r = pod.run();
    assert_success(&r, "exact-size volume");
    let reference = nbdcopy_reference(&src.uri(), dir.path());
    // usable = round_down(ceil(request / 1.055), 1 MiB) = the disk: no growth.
    assert_identical(&pod.disk_img(), &reference, "exact-size volume");
    drop(mnt);
}

#[test]
fn disk_img_grows_to_cdis_usable_size_not_the_request() {
    if !require_root(&["nbdkit", "nbdcopy", "cmp"], false) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = sparse_random(dir.path(), "40M", 10, 32);
    let mut pod = Pod::bare();
    // A 64 MiB disk requested (inflated by CDI) on a volume of exactly that size.
    let request = inflated(64 * MIB, 0.055);
    pod.set("IMPORTER_SOURCE", "nbd")
        .set("IMPORTER_ENDPOINT", &src.uri())
        .set("OWNER_UID", OWNER_UID)
        .set("FILESYSTEM_OVERHEAD", "0.055")
        .set("IMPORTER_IMAGE_SIZE", &request.to_string());
    let mnt = Mount::tmpfs(&pod.data, &format!("size={request}"));
    let r = pod.run();
    assert_success(&r, "growth");
    let want = ((request as f64 / 1.055).ceil() as u64) / MIB * MIB;
    assert_eq!(want, 64 * MIB);
    assert_eq!(file_size(&pod.disk_img()), want, "grown to the usable size");
    let reference = nbdcopy_reference(&src.uri(), dir.path());
    assert_prefix_identical(&pod.disk_img(), &reference, 40 * MIB, "growth");
    assert_zero_tail(&pod.disk_img(), 40 * MIB, "growth");
    drop(mnt);
}

#[test]
fn a_blank_filesystem_image_is_sparse_at_cdis_usable_size() {
    if !require_root(&[], false) {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let request = inflated(256 * MIB, 0.055);
    for prealloc in [false, true] {
        let mut pod = Pod::bare();
        pod.set("IMPORTER_SOURCE", "none")
            .set("IMPORTER_ENDPOINT", "")
            .set("OWNER_UID", OWNER_UID)
            .set("FILESYSTEM_OVERHEAD", "0.055")
            .set("IMPORTER_IMAGE_SIZE", &request.to_string())
            .set("PREALLOCATION", if prealloc { "true" } else { "false" });
        let mnt = Mount::tmpfs(&pod.data, &format!("size={request}"));
        // An earlier attempt's disk.img is replaced.
        fill(&pod.disk_img(), 0x3c, MIB);
        let r = pod.run();
        assert_success(&r, "blank");
        let img = pod.disk_img();
        assert_eq!(file_size(&img), 256 * MIB);
        let used = allocated(&img);
        if prealloc {
            assert!(used >= 256 * MIB, "preallocated: {used} bytes allocated");
        } else {
            assert_eq!(used, 0, "blank image is sparse");
        }
        assert_zero_tail(&img, 0, "blank");
        let mode = std::fs::metadata(&img).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        assert_termination_json(
            &pod,
            &json!({
                "scratchSpaceRequired": false,
                "preallocationApplied": prealloc,
                "message": "Import Complete"
            }),
            "blank",
        );
        drop(mnt);
    }
}

#[test]
fn a_blank_block_volume_is_left_as_it_is_unless_preallocated() {
    if !require_root(&["cmp"], true) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let dev = Loop::with_garbage(dir.path(), 32 * MIB, 0xA5, false);
    let mut pod = Pod::bare();
    pod.set("IMPORTER_SOURCE", "none")
        .set("OWNER_UID", OWNER_UID)
        .set("FERRY_BLOCK_DEVICE", dev.dev.to_str().unwrap());
    let r = pod.run();
    assert_success(&r, "blank block");
    assert_filled(&dev.dev, 0, 32 * MIB, 0xA5, "blank block left as it is");
    assert!(!pod.disk_img().exists());
    pod.set("PREALLOCATION", "true");
    let r = pod.run();
    assert_success(&r, "blank block preallocated");
    assert_filled(&dev.dev, 0, 32 * MIB, 0, "blank block zeroed");
    assert_termination_json(
        &pod,
        &json!({
            "scratchSpaceRequired": false,
            "preallocationApplied": true,
            "message": "Import Complete"
        }),
        "blank block",
    );
}

// ---------------------------------------------------------------------------------------
// Transient source failures inside the pod (issue 9)

#[test]
fn with_retries_off_a_dropped_connection_fails_the_pod() {
    // The retried cases run in the CDI form below
    // (`cdi_pod_transient_failures_end_identical_with_the_retries_counted`).
    if !require(&["nbdkit"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = sparse_random(dir.path(), "64M", 40, 41);
    let vc = VCenter::start(&dir.path().join("vc"), &inventory(64 * MIB));
    let mut pod = Pod::vddk(&vc, &src.uri());
    pod.set("FAKE_VDDK_FAIL_READ", "3")
        .set("FAKE_VDDK_FAIL_CODE", "14011")
        .set("FERRY_RETRIES", "0");
    let r = pod.run();
    assert_pod_failure(&pod, &r, "retries off", &["connection"]);
}

#[test]
fn block_mode_keeps_its_journal_in_the_vddk_emptydir_and_resumes() {
    if !require_root(&["nbdkit", "nbdcopy", "cmp"], true) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let size = 256 * MIB;
    // A fixed socket: nbdkit 1.32 may abort when its client is killed mid-reply, so it
    // is started afresh for the second run.
    let sock = dir.path().join("backing.sock");
    let src = Server::nbdkit_at(&sock, &["pattern", "size=256M"]);
    let reference = nbdcopy_reference(&src.uri(), dir.path());
    let vc = VCenter::start(&dir.path().join("vc"), &inventory(size));
    let dev = Loop::with_garbage(dir.path(), size, 0xA5, false);
    let mut pod = Pod::vddk(&vc, &src.uri());
    pod.set("FERRY_BLOCK_DEVICE", dev.dev.to_str().unwrap())
        .set("FAKE_VDDK_LATENCY_MS", "40");
    // VDDK_LIBDIR is <pod>/vddk, so CDI's emptyDir stand-in is <pod>.
    let journal = pod.dir.path().join("ferry-state/block.ferry-journal");
    let mark = kill_import_after_progress(&pod, &journal, 20 * MIB);
    assert!(mark > 0);
    drop(src);
    let _src = Server::nbdkit_at(&sock, &["pattern", "size=256M"]);
    pod.unset("FAKE_VDDK_LATENCY_MS");
    let r = pod.run();
    assert_success(&r, "block resume");
    assert!(
        r.stderr.contains("resuming from the journal"),
        "{}",
        r.stderr
    );
    assert_prefix_identical(&dev.dev, &reference, size, "block resume");
    assert!(!journal.exists(), "a finished copy removes its journal");
    assert!(
        journal.with_file_name("block.ferry-journal.round").exists(),
        "the round marker sits beside the journal"
    );
}

// ---------------------------------------------------------------------------------------
// The importer container exactly as CDI's controller builds it (issue 9, item 12)

/// What CDI's controller knows about one importer pod: the PVC's annotations and the
/// CDIConfig values that `createImportEnvVar` reads (pkg/controller/import-controller.go,
/// CDI c07cdb6), for the two sources Forklift uses, `vddk` and `none`.
struct CdiPvc<'a> {
    /// `vddk` or `none` (annotation `storage.import.source`).
    source: &'a str,
    /// The vCenter (annotations endpoint, thumbprint, secret name); `None` for `none`.
    vc: Option<&'a VCenter>,
    /// The PVC's storage request: `IMPORTER_IMAGE_SIZE` is its `Quantity.String()`.
    request: u64,
    /// Block mode: the PVC is this device, attached as `/dev/cdi-block-volume`.
    block: Option<&'a Path>,
    /// CDIConfig `status.filesystemOverhead` for the storage class (filesystem mode;
    /// `GetFilesystemOverhead` gives "0" in block mode).
    overhead: &'a str,
    /// Annotations `storage.checkpoint.current`, `.previous`, `.final`.
    checkpoints: (&'a str, &'a str, &'a str),
    /// Annotation `AnnPreallocationRequested`.
    preallocation: bool,
    /// CDIConfig `status.importProxy`: HTTPProxy, HTTPSProxy, NoProxy.
    proxy: (&'a str, &'a str, &'a str),
    /// CDIConfig `importProxy.trustedCAProxy`'s `ca.crt`, mounted at `/proxycerts/`.
    proxy_ca: Option<&'a str>,
}

impl Default for CdiPvc<'_> {
    fn default() -> Self {
        CdiPvc {
            source: "vddk",
            vc: None,
            request: 0,
            block: None,
            overhead: CDI_DEFAULT_OVERHEAD,
            checkpoints: ("", "", ""),
            preallocation: false,
            proxy: ("", "", ""),
            proxy_ca: None,
        }
    }
}

/// CDI's global default filesystem overhead (`common.DefaultGlobalOverhead`).
const CDI_DEFAULT_OVERHEAD: &str = "0.06";

/// A byte count as Kubernetes prints a binary-suffix `Quantity` (`10Gi`, `142270792`).
fn quantity(bytes: u64) -> String {
    for (unit, suffix) in [
        (1u64 << 40, "Ti"),
        (1 << 30, "Gi"),
        (1 << 20, "Mi"),
        (1 << 10, "Ki"),
    ] {
        if bytes >= unit && bytes.is_multiple_of(unit) {
            return format!("{}{suffix}", bytes / unit);
        }
    }
    bytes.to_string()
}

/// The PVC request CDI makes for a disk of `size` on a filesystem volume
/// (`GetRequiredSpace`: round up to 1 MiB, then × (1 + overhead), rounded up).
fn cdi_request(size: u64, overhead: f64) -> u64 {
    let aligned = size.div_ceil(MIB) * MIB;
    (aligned as f64 * (1.0 + overhead)).ceil() as u64
}

impl Pod {
    /// The importer container as `makeImporterPodSpec` builds it: no command (the
    /// image's entrypoint), args `["-v=1"]` (`Pod::command`), the environment of
    /// `makeImportEnv` with every variable present (empty when unset) and CDI's
    /// conditional ones, and the mounts relocated under the pod's temp dir. The only
    /// Ferry variables are the ones that relocate a path CDI hard-codes:
    ///
    /// | CDI | here | relocated by |
    /// |---|---|---|
    /// | `/data` (filesystem PVC) | `<pod>/data` | `FERRY_DATA_DIR` |
    /// | `/dev/cdi-block-volume` (block PVC, volumeDevice) | a loop device | `FERRY_BLOCK_DEVICE` |
    /// | `/opt` emptyDir, filled by the `vddk-side-car` init container | `<pod>/opt` | `VDDK_LIBDIR=<pod>/opt/vmware-vix-disklib-distrib` |
    /// | `/vddk-args` ConfigMap | not mounted (no extra-args annotation) | — |
    /// | `/proxycerts/` ConfigMap | `<pod>/proxycerts/` | `IMPORTER_PROXY_CERT_DIR` (CDI sets it too) |
    /// | `/dev/termination-log` | `<pod>/termination-log` | `TERMINATION_LOG` |
    /// | port 8443, all addresses | `[::]:<free port>` | `FERRY_METRICS_ADDR` |
    fn cdi(pvc: &CdiPvc) -> Pod {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).expect("mkdir data");
        let opt = dir.path().join("opt");
        let libdir = opt.join("vmware-vix-disklib-distrib");
        if pvc.source == "vddk" {
            install_fake_vddk(&libdir);
        }
        let term = dir.path().join("termination-log");
        let vddk_log = dir.path().join("vddk-calls.log");
        let port = free_port();
        let mut p = Pod {
            data,
            term,
            vddk_log,
            metrics_addr: format!("[::1]:{port}"),
            env: BTreeMap::new(),
            dir,
        };
        let path = |x: &Path| x.display().to_string();
        let block = pvc
            .block
            .map_or_else(|| path(&p.dir.path().join("no-block-device")), path);
        let (data, term, vlog) = (path(&p.data), path(&p.term), path(&p.vddk_log));
        let fs_mode = pvc.block.is_none();
        let vddk = pvc.source == "vddk";
        let vc = pvc.vc.filter(|_| vddk);
        let or_empty = |v: &str| if vddk { v.to_string() } else { String::new() };
        let (current, previous, final_) = pvc.checkpoints;
        p.set("FERRY_DATA_DIR", &data)
            .set("FERRY_BLOCK_DEVICE", &block)
            .set("FERRY_METRICS_ADDR", &format!("[::]:{port}"))
            .set("TERMINATION_LOG", &term)
            .set("VDDK_LIBDIR", &path(&libdir));
        // makeImportEnv, in its order.
        p.set("IMPORTER_SOURCE", pvc.source)
            .set(
                "IMPORTER_ENDPOINT",
                &vc.map(VCenter::endpoint).unwrap_or_default(),
            )
            .set("IMPORTER_CONTENTTYPE", "kubevirt")
            .set("IMPORTER_IMAGE_SIZE", &quantity(pvc.request))
            .set("OWNER_UID", OWNER_UID)
            .set(
                "FILESYSTEM_OVERHEAD",
                if fs_mode { pvc.overhead } else { "0" },
            )
            .set("INSECURE_TLS", "false")
            .set("IMPORTER_DISK_ID", "")
            .set("IMPORTER_UUID", &or_empty(VM_UUID))
            .set("IMPORTER_PULL_METHOD", "")
            .set("IMPORTER_READY_FILE", "")
            .set("IMPORTER_DONE_FILE", "")
            .set("IMPORTER_BACKING_FILE", &or_empty(DISK))
            .set(
                "IMPORTER_THUMBPRINT",
                &vc.map(|v| v.thumbprint.clone()).unwrap_or_default(),
            )
            .set("http_proxy", &or_empty(pvc.proxy.0))
            .set("https_proxy", &or_empty(pvc.proxy.1))
            .set("no_proxy", &or_empty(pvc.proxy.2))
            .set("IMPORTER_CURRENT_CHECKPOINT", &or_empty(current))
            .set("IMPORTER_PREVIOUS_CHECKPOINT", &or_empty(previous))
            .set("IMPORTER_FINAL_CHECKPOINT", &or_empty(final_))
            .set(
                "PREALLOCATION",
                if pvc.preallocation { "true" } else { "false" },
            )
            .set("CACHE_MODE", "")
            .set("IMPORTER_REGISTRY_IMAGE_ARCHITECTURE", "")
            .set("IMPORTER_CHECKSUM", "");
        // The conditional ones: the secret (Forklift always names one for VDDK) and the
        // proxy CA ConfigMap.
        if vc.is_some() {
            p.set("IMPORTER_ACCESS_KEY_ID", USER)
                .set("IMPORTER_SECRET_KEY", PASSWORD);
        }
        if let (Some(pem), true) = (pvc.proxy_ca, vddk) {
            let certs = p.dir.path().join("proxycerts");
            std::fs::create_dir_all(&certs).unwrap();
            std::fs::write(certs.join("ca.crt"), pem).unwrap();
            let dir = format!("{}/", path(&certs));
            p.set("IMPORTER_PROXY_CERT_DIR", &dir);
        }
        if let Some(vc) = vc {
            // The fake VDDK's own dials: what it insists on being asked for.
            p.set("FAKE_VDDK_LOG", &vlog)
                .set("FAKE_VDDK_THUMBPRINT", &vc.thumbprint)
                .set("FAKE_VDDK_SERVER", "127.0.0.1")
                .set("FAKE_VDDK_USER", USER)
                .set("FAKE_VDDK_PASSWORD", PASSWORD)
                .set("FAKE_VDDK_VM", &format!("moref={VM_MOREF}"))
                .set("FAKE_VDDK_DISK", DISK);
        }
        p
    }

    /// Run while scraping `/metrics` as CDI's controller does (HTTPS, certificate not
    /// verified, 2 s timeout) every 100 ms; the bodies seen while it ran.
    fn run_scraping(&self) -> (Run, Vec<String>) {
        let url = format!("https://{}/metrics", self.metrics_addr);
        let mut ferry = spawn(self.command());
        let mut bodies = Vec::new();
        let t0 = Instant::now();
        while !ferry.has_exited() && t0.elapsed() < RUN_LIMIT {
            let o = Command::new("curl")
                .args(["-sk", "--max-time", "2", &url])
                .output()
                .expect("run curl");
            if o.status.success() {
                bodies.push(String::from_utf8_lossy(&o.stdout).into_owned());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        (ferry.wait(RUN_LIMIT), bodies)
    }
}

/// The `retries` field of the final "Import Complete" log line.
fn retries_logged(r: &Run) -> u64 {
    r.stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["message"] == "Import Complete")
        .and_then(|v| v["retries"].as_u64())
        .unwrap_or_else(|| panic!("no Import Complete line with retries:\n{}", r.stderr))
}

/// The progress values of CDI's series in scraped bodies.
fn progress_values(bodies: &[String]) -> Vec<f64> {
    let re = regex::Regex::new(CDI_PROGRESS_RE).unwrap();
    bodies
        .iter()
        .filter_map(|b| re.captures(b).map(|c| c[2].parse::<f64>().unwrap()))
        .collect()
}

#[test]
fn cdi_pod_cold_vddk_to_an_exact_size_filesystem_volume_scraped_over_ipv6() {
    if !require_root(&["nbdkit", "nbdcopy", "cmp", "curl"], false) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let size = 128 * MIB;
    let src = sparse_random(dir.path(), "128M", 15, 51);
    let reference = nbdcopy_reference(&src.uri(), dir.path());
    let vc = VCenter::start(&dir.path().join("vc"), &inventory(size));
    let request = cdi_request(size, 0.06);
    let mut pod = Pod::cdi(&CdiPvc {
        vc: Some(&vc),
        request,
        ..Default::default()
    });
    pod.set("FAKE_VDDK_BACKING", &src.uri())
        .set("FAKE_VDDK_LATENCY_MS", "10");
    // The volume is exactly CDI's inflated request (tmpfs rounds it up to a page).
    let mnt = Mount::tmpfs(&pod.data, &format!("size={request}"));
    let (r, bodies) = pod.run_scraping();
    assert_success(&r, "cdi pod, filesystem");
    assert_identical(&pod.disk_img(), &reference, "cdi pod, filesystem");
    assert_termination_json(&pod, &vddk_complete(false), "cdi pod, filesystem");
    let values = progress_values(&bodies);
    assert!(
        values.iter().any(|v| *v > 0.0 && *v < 100.0),
        "no scrape over [::1] saw the copy in progress: {values:?} ({} bodies)",
        bodies.len()
    );
    assert!(values.windows(2).all(|w| w[0] <= w[1]), "{values:?}");
    assert!(
        bodies
            .iter()
            .any(|b| b.contains("ferry_import_retries_total 0")),
        "Ferry's retry counter is served"
    );
    assert_vddk_closed(&pod, "cdi pod, filesystem");
    drop(mnt);
}

#[test]
fn cdi_pod_cold_vddk_to_a_block_volume() {
    if !require_root(&["nbdkit", "nbdcopy", "cmp"], true) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let size = 64 * MIB;
    let src = sparse_random(dir.path(), "64M", 20, 52);
    let reference = nbdcopy_reference(&src.uri(), dir.path());
    let vc = VCenter::start(&dir.path().join("vc"), &inventory(size));
    let dev = Loop::with_garbage(dir.path(), size, 0xA5, false);
    let mut pod = Pod::cdi(&CdiPvc {
        vc: Some(&vc),
        request: size,
        block: Some(&dev.dev),
        ..Default::default()
    });
    pod.set("FAKE_VDDK_BACKING", &src.uri());
    let r = pod.run();
    assert_success(&r, "cdi pod, block");
    assert_prefix_identical(&dev.dev, &reference, size, "cdi pod, block");
    assert_termination_json(&pod, &vddk_complete(false), "cdi pod, block");
    // The journal lived in the /opt emptyDir and is gone; the round marker stays there.
    let state = pod.dir.path().join("opt/ferry-state");
    assert!(!state.join("block.ferry-journal").exists());
    assert!(state.join("block.ferry-journal.round").exists());
    assert!(
        !pod.disk_img().exists(),
        "nothing written to /data in block mode"
    );
}

/// Three images of a 16 MiB disk: each stage rewrites, zeroes and adds some areas.
/// Returns the files and, for stages 2 and 3, the areas that changed.
fn three_stages(dir: &Path) -> (Vec<PathBuf>, Vec<Vec<(u64, u64)>>) {
    const SIZE: usize = 16 * MIB as usize;
    let mut img = vec![0u8; SIZE];
    for (i, x) in img[..6 * MIB as usize].iter_mut().enumerate() {
        *x = (i % 253) as u8 + 1;
    }
    let mut files = Vec::new();
    let mut changes = Vec::new();
    let stages: [&[(u64, u64, u8)]; 3] = [
        &[],
        &[
            (MIB, 512 * 1024, 0xc3),
            (4 * MIB, MIB, 0),
            (10 * MIB, 256 * 1024, 0x77),
        ],
        &[
            (2 * MIB, 64 * 1024, 0x19),
            (10 * MIB, 128 * 1024, 0),
            (15 * MIB, MIB, 0xee),
        ],
    ];
    for (n, edits) in stages.iter().enumerate() {
        for (start, len, byte) in edits.iter() {
            img[*start as usize..(*start + *len) as usize].fill(*byte);
        }
        let f = dir.join(format!("stage{}.raw", n + 1));
        std::fs::write(&f, &img).unwrap();
        files.push(f);
        if n > 0 {
            changes.push(edits.iter().map(|(s, l, _)| (*s, *l)).collect());
        }
    }
    (files, changes)
}

#[test]
fn cdi_pod_warm_migration_in_three_stages() {
    // Forklift's warm plan: stage 1 copies snapshot-7 whole (no previous checkpoint);
    // stage 2 copies what changed since snapshot-7's change ID; the final stage,
    // at cutover, what changed between snapshot-8 and snapshot-9. Each stage is a new
    // pod on the same PVC, built as CDI builds it.
    if !require(&["cmp"]) {
        return;
    }
    const SIZE: u64 = 16 * MIB;
    let dir = tempfile::tempdir().unwrap();
    let (files, changes) = three_stages(dir.path());
    let cid = |n: u32| format!("52 aa bb cc dd ee ff 00-11 22 33 44 55 66 77 88/{n}");
    let areas = |c: &[(u64, u64)]| {
        c.iter()
            .map(|(s, l)| json!({"start": s, "length": l}))
            .collect::<Vec<_>>()
    };
    let snap_disk = |n: u32| format!("[ds1] vm1/vm1-00000{n}.vmdk");
    let mut inv = inventory(SIZE);
    inv["datacenters"][0]["vms"][0]["snapshots"] = json!([{
        "moref": "snapshot-7", "name": "forklift-precopy-1",
        "disks": [{"key": 2000, "file_name": snap_disk(1), "capacity_bytes": SIZE,
                   "parents": [DISK], "change_id": cid(7)}],
        "children": [{
            "moref": "snapshot-8", "name": "forklift-precopy-2",
            "disks": [{"key": 2000, "file_name": snap_disk(2), "capacity_bytes": SIZE,
                       "parents": [snap_disk(1), DISK], "change_id": cid(8),
                       "previous_change_id": cid(7), "changed_areas": areas(&changes[0])}],
            "children": [{
                "moref": "snapshot-9", "name": "forklift-cutover",
                "disks": [{"key": 2000, "file_name": snap_disk(3), "capacity_bytes": SIZE,
                           "parents": [snap_disk(2), snap_disk(1), DISK],
                           "previous_change_id": cid(8), "changed_areas": areas(&changes[1])}],
                "children": []
            }]
        }]
    }]);
    let vc = VCenter::start(&dir.path().join("vc"), &inv);
    let request = cdi_request(SIZE, 0.06);
    // Forklift's checkpoints: the current precopy's snapshot moref, and the previous
    // precopy's change ID (fk: adapter/vsphere/client.go).
    let (cid7, cid8) = (cid(7), cid(8));
    let stages = [
        ("snapshot-7", "", "false"),
        ("snapshot-8", cid7.as_str(), "false"),
        ("snapshot-9", cid8.as_str(), "true"),
    ];
    // One PVC: the data directory outlives each stage's pod.
    let data = tempfile::tempdir().unwrap();
    for (n, (current, previous, final_)) in stages.into_iter().enumerate() {
        let ctx = format!("stage {} ({current})", n + 1);
        let mut pod = Pod::cdi(&CdiPvc {
            vc: Some(&vc),
            request,
            checkpoints: (current, previous, final_),
            ..Default::default()
        });
        pod.data = data.path().to_path_buf();
        pod.set("FERRY_DATA_DIR", data.path().to_str().unwrap())
            .set("FAKE_VDDK_BACKING", files[n].to_str().unwrap())
            .set("FAKE_VDDK_SNAPSHOT", current)
            .set("FAKE_VDDK_DISK", &snap_disk(n as u32 + 1));
        let r = pod.run();
        assert_success(&r, &ctx);
        assert_identical(&pod.disk_img(), &files[n], &ctx);
        // A delta reads only inside the changed areas.
        let calls = pod.vddk_calls();
        let read: u64 = calls
            .iter()
            .filter_map(|l| l.strip_prefix("ReadAsync "))
            .filter_map(|l| {
                l.split("count=")
                    .nth(1)?
                    .split(' ')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum::<u64>()
            * 512;
        if n == 0 {
            assert!(read > 0, "[{ctx}] the full stage read the disk");
        } else {
            let changed: u64 = changes[n - 1].iter().map(|(_, l)| l).sum();
            assert!(
                read <= changed,
                "[{ctx}] read {read} bytes, more than the {changed} changed\n{}",
                calls.join("\n")
            );
        }
        // Same messages as CDI: a delta reports no preallocation.
        assert_termination_json(&pod, &vddk_complete(false), &ctx);
        assert_vddk_closed(&pod, &ctx);
    }
}

#[test]
fn cdi_pod_blank_images_in_both_modes() {
    if !require_root(&["cmp"], true) {
        return;
    }
    let size = 48 * MIB;
    let request = cdi_request(size, 0.06);
    let mut pod = Pod::cdi(&CdiPvc {
        source: "none",
        request,
        ..Default::default()
    });
    let mnt = Mount::tmpfs(&pod.data, &format!("size={request}"));
    let r = pod.run();
    assert_success(&r, "cdi blank, filesystem");
    assert_eq!(file_size(&pod.disk_img()), size, "CDI's usable size");
    assert_eq!(allocated(&pod.disk_img()), 0, "sparse");
    assert_termination_json(
        &pod,
        &json!({"scratchSpaceRequired": false, "preallocationApplied": false,
                "message": "Import Complete"}),
        "cdi blank, filesystem",
    );
    drop(mnt);
    let dir = tempfile::tempdir().unwrap();
    let dev = Loop::with_garbage(dir.path(), size, 0x5A, false);
    for prealloc in [false, true] {
        pod = Pod::cdi(&CdiPvc {
            source: "none",
            request: size,
            block: Some(&dev.dev),
            preallocation: prealloc,
            ..Default::default()
        });
        let r = pod.run();
        assert_success(&r, "cdi blank, block");
        let byte = if prealloc { 0 } else { 0x5A };
        assert_filled(&dev.dev, 0, size, byte, "cdi blank, block");
        // CDI writes no termination message for a blank block volume without
        // preallocation; Ferry writes "Import Complete" (a deliberate difference: the
        // controller reads it only on exit 0 and takes either as success).
        assert_termination_json(
            &pod,
            &json!({"scratchSpaceRequired": false, "preallocationApplied": prealloc,
                    "message": "Import Complete"}),
            "cdi blank, block",
        );
    }
}

#[test]
fn cdi_pod_transient_failures_end_identical_with_the_retries_counted() {
    if !require(&["nbdkit", "nbdcopy", "cmp"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let size = 64 * MIB;
    let vc = VCenter::start(&dir.path().join("vc"), &inventory(size));
    let new_pod = |backing: &str| {
        let mut pod = Pod::cdi(&CdiPvc {
            vc: Some(&vc),
            request: cdi_request(size, 0.06),
            ..Default::default()
        });
        pod.set("FAKE_VDDK_BACKING", backing);
        pod
    };
    // nbdkit's error filter fails 5% of the reads the fake VDDK makes of its backing:
    // each is a VIX error on a good connection, read again in place. The import makes
    // about 225 reads: at 2% a run saw no failure about once in a hundred (e^-4.5, and
    // CI met it); at 5% that is e^-11.
    let sock = dir.path().join("flaky.sock");
    let args = [
        "sparse-random",
        "size=64M",
        "percent=30",
        "seed=53",
        "runlength=50000",
    ];
    let clean = Server::nbdkit_at(&dir.path().join("clean.sock"), &args);
    let reference = nbdcopy_reference(&clean.uri(), dir.path());
    let mut flaky_args = vec!["--filter=error"];
    flaky_args.extend_from_slice(&args);
    flaky_args.extend_from_slice(&["error=EIO", "error-pread-rate=5%"]);
    let flaky = Server::nbdkit_at(&sock, &flaky_args);
    let pod = new_pod(&flaky.uri());
    let r = pod.run();
    assert_success(&r, "nbdkit error filter");
    assert_identical(&pod.disk_img(), &reference, "nbdkit error filter");
    let retried = r.stderr.matches("read failed; reading again").count() as u64;
    assert!(
        retried > 0,
        "5% of reads failed, none retried?\n{}",
        r.stderr
    );
    assert_eq!(retries_logged(&r), retried, "every retry is counted");
    assert_termination_json(&pod, &vddk_complete(false), "nbdkit error filter");
    // The fake VDDK fails reads 3 and 4, then drops the connection once at read 5.
    for (what, code, read, count, phrase) in [
        ("failing reads", "1", "3", "2", "read failed; reading again"),
        ("dropped connection", "14011", "5", "1", "opening it again"),
    ] {
        let mut pod = new_pod(&clean.uri());
        pod.set("FAKE_VDDK_FAIL_READ", read)
            .set("FAKE_VDDK_FAIL_COUNT", count)
            .set("FAKE_VDDK_FAIL_CODE", code);
        let r = pod.run();
        assert_success(&r, what);
        assert!(r.stderr.contains(phrase), "[{what}] {}", r.stderr);
        assert_identical(&pod.disk_img(), &reference, what);
        assert_eq!(
            retries_logged(&r),
            count.parse::<u64>().unwrap(),
            "[{what}]"
        );
        assert_termination_json(&pod, &vddk_complete(false), what);
        assert_vddk_closed(&pod, what);
    }
}

#[test]
fn cdi_pod_out_of_space_reads_as_datavolume_too_small() {
    // A volume that runs out of space (here: of inodes, a real ENOSPC from the kernel)
    // fails with Go's wording of the error, which CDI's controller rewrites to
    // "DataVolume too small to contain image".
    if !require_root(&["nbdkit"], false) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let size = 16 * MIB;
    let src = sparse_random(dir.path(), "16M", 20, 54);
    let vc = VCenter::start(&dir.path().join("vc"), &inventory(size));
    let request = cdi_request(size, 0.06);
    let mut pod = Pod::cdi(&CdiPvc {
        vc: Some(&vc),
        request,
        ..Default::default()
    });
    pod.set("FAKE_VDDK_BACKING", &src.uri());
    let mnt = Mount::tmpfs(&pod.data, &format!("size={request},nr_inodes=2"));
    let r = pod.run();
    let msg = assert_pod_failure(&pod, &r, "out of space", &["no space left on device"]);
    assert!(
        ferry::import::messages::cdi_simplifies_to_too_small(&msg),
        "CDI would not rewrite {msg:?}"
    );
    drop(mnt);
}

#[test]
fn cdi_pod_reaches_vcenter_through_an_https_proxy() {
    // CDIConfig's importProxy as the controller passes it: lower-case https_proxy and
    // no_proxy, and the trusted CA mounted at /proxycerts/. The proxy is tinyproxy
    // behind socat's TLS listener. The vCenter is reached by this machine's host name
    // (a loopback address would never be proxied, in Go or in Ferry).
    if !require(&["nbdkit", "nbdcopy", "cmp", "tinyproxy", "socat", "openssl"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let size = 32 * MIB;
    let src = sparse_random(dir.path(), "32M", 20, 55);
    let reference = nbdcopy_reference(&src.uri(), dir.path());
    let (host, ip) = proxy_peers::machine_host();
    let vc = VCenter::start_on(
        &dir.path().join("vc"),
        &inventory(size),
        &host,
        &ip.to_string(),
    );
    let pdir = dir.path().join("proxy");
    std::fs::create_dir_all(&pdir).unwrap();
    let (_tinyproxy, upstream) = proxy_peers::tinyproxy(&pdir, "");
    let (ca, cert, key) = proxy_peers::ca_and_server_cert(&pdir);
    let (_tls, port) = proxy_peers::socat_tls(&pdir, &cert, &key, upstream);
    let ca_pem = std::fs::read_to_string(&ca).unwrap();
    let https_proxy = format!("https://127.0.0.1:{port}");
    let mut pod = Pod::cdi(&CdiPvc {
        vc: Some(&vc),
        request: cdi_request(size, 0.06),
        proxy: ("", &https_proxy, "example.com,.svc"),
        proxy_ca: Some(&ca_pem),
        ..Default::default()
    });
    pod.set("FAKE_VDDK_BACKING", &src.uri())
        .set("FAKE_VDDK_SERVER", &host);
    let r = pod.run();
    assert_success(&r, "through the proxy");
    assert_identical(&pod.disk_img(), &reference, "through the proxy");
    let seen = proxy_peers::connects_logged(&pdir);
    let target = format!("{host}:{}", vc.port);
    assert!(
        seen.iter().any(|l| l.contains(&target)),
        "tinyproxy saw no CONNECT {target}: {seen:#?}"
    );
    // Without the proxy's CA the pod fails, naming the proxy, before any VDDK call.
    pod.unset("IMPORTER_PROXY_CERT_DIR");
    let _ = std::fs::remove_file(pod.disk_img());
    let r = pod.run();
    assert_pod_failure(
        &pod,
        &r,
        "untrusted proxy",
        &["TLS to the proxy", &https_proxy[8..]],
    );
    assert!(!pod.vddk_calls().iter().any(|l| l.starts_with("ConnectEx")));
}

#[test]
fn cdi_pod_against_govmomis_vcenter_simulator() {
    // The vCenter is govmomi's simulator (vcsim 0.24, from Debian), not our fake: the
    // lookups CDI's VDDK source makes (FindByUuid, the disk by backing file, the
    // checkpoint by name as FindSnapshot resolves it) run against an implementation
    // nobody here wrote. The disk's bytes still come from the fake VDDK.
    if !require(&["nbdkit", "nbdcopy", "cmp"]) || !vcsim::available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sim = vcsim::Vcsim::start(dir.path(), false);
    let size = sim.info["capacity"].as_u64().unwrap();
    assert_eq!(size, 32 * MIB);
    let src = sparse_random(dir.path(), "32M", 25, 56);
    let reference = nbdcopy_reference(&src.uri(), dir.path());
    let (user, password) = ("administrator@vsphere.local", "s3cr&t<pw>");
    for (what, uuid, checkpoint) in [
        (
            "cold, instance UUID",
            sim.get("instance_uuid"),
            String::new(),
        ),
        ("cold, BIOS UUID", sim.get("bios_uuid"), String::new()),
        (
            "checkpoint by name",
            sim.get("instance_uuid"),
            sim.get("snapshot_name"),
        ),
    ] {
        let final_ = if checkpoint.is_empty() { "" } else { "false" };
        let mut pod = Pod::cdi(&CdiPvc {
            request: cdi_request(size, 0.06),
            checkpoints: (&checkpoint, "", final_),
            ..Default::default()
        });
        let (disk, snapshot) = if checkpoint.is_empty() {
            (sim.get("disk"), None)
        } else {
            (sim.get("snapshot_disk"), Some(sim.get("snapshot")))
        };
        let thumbprint = sim.get("thumbprint");
        let vlog = pod.vddk_log.display().to_string();
        pod.set("IMPORTER_ENDPOINT", &sim.get("url"))
            .set("IMPORTER_UUID", &uuid)
            .set("IMPORTER_BACKING_FILE", &sim.get("disk"))
            .set("IMPORTER_THUMBPRINT", &thumbprint)
            .set("IMPORTER_ACCESS_KEY_ID", user)
            .set("IMPORTER_SECRET_KEY", password)
            .set("FAKE_VDDK_LOG", &vlog)
            .set("FAKE_VDDK_BACKING", &src.uri())
            .set("FAKE_VDDK_THUMBPRINT", &thumbprint)
            .set("FAKE_VDDK_SERVER", "127.0.0.1")
            .set("FAKE_VDDK_USER", user)
            .set("FAKE_VDDK_PASSWORD", password)
            .set("FAKE_VDDK_VM", &format!("moref={}", sim.get("vm")))
            .set("FAKE_VDDK_DISK", &disk);
        if let Some(s) = &snapshot {
            pod.set("FAKE_VDDK_SNAPSHOT", s);
        }
        let r = pod.run();
        assert_success(&r, what);
        assert_identical(&pod.disk_img(), &reference, what);
        let mut want = vddk_complete(false);
        want["vddkInfo"]["Host"] = json!(sim.get("host"));
        assert_termination_json(&pod, &want, what);
        assert_vddk_closed(&pod, what);
    }
}

// ---------------------------------------------------------------------------------------
// CDI's http source (issue 11)

/// A zstd-compressed qcow2 and a gzip-compressed raw disk served by nginx over HTTP and
/// HTTPS (a test CA), one location requiring an extra header; the images' references.
struct Site {
    _nginx: proxy_peers::Peer,
    http: u16,
    https: u16,
    cas: PathBuf,
    qcow2: PathBuf,
    reference: PathBuf,
}

fn http_site(dir: &Path) -> Site {
    let root = dir.join("www");
    std::fs::create_dir_all(root.join("private")).unwrap();
    let raw = dir.join("disk.raw");
    std::fs::write(&raw, ferry_test_kit::mixed_disk(3 << 20, 2 << 20, 9 << 20)).unwrap();
    let qcow2 = root.join("disk.qcow2");
    ferry_test_kit::sh(
        "qemu-img",
        &[
            "convert",
            "-q",
            "-c",
            "-O",
            "qcow2",
            "-o",
            "compression_type=zstd",
            raw.to_str().unwrap(),
            qcow2.to_str().unwrap(),
        ],
    );
    std::fs::copy(&qcow2, root.join("private/disk.qcow2")).unwrap();
    std::fs::create_dir_all(root.join("norange")).unwrap();
    std::fs::copy(&qcow2, root.join("norange/disk.qcow2")).unwrap();
    let reference = dir.join("disk.ref");
    ferry_test_kit::sh(
        "qemu-img",
        &[
            "convert",
            "-q",
            "-O",
            "raw",
            qcow2.to_str().unwrap(),
            reference.to_str().unwrap(),
        ],
    );
    let (ca, cert, key) = proxy_peers::ca_and_server_cert(dir);
    let cas = dir.join("cas");
    std::fs::create_dir_all(&cas).unwrap();
    std::fs::copy(&ca, cas.join("ca.crt")).unwrap();
    let (nginx, http, https) = proxy_peers::nginx(
        dir,
        &root,
        &cert,
        &key,
        "location /private/ { if ($http_x_token != \"s3cret\") { return 403; } } \
         location /norange/ { max_ranges 0; }",
    );
    Site {
        _nginx: nginx,
        http,
        https,
        cas,
        qcow2,
        reference,
    }
}

/// A pod for one of CDI's image sources (`http`, `registry`) reading `endpoint`.
fn image_pod(source: &str, endpoint: &str) -> Pod {
    let mut pod = Pod::bare();
    pod.set("IMPORTER_SOURCE", source)
        .set("IMPORTER_ENDPOINT", endpoint)
        .set("IMPORTER_CONTENTTYPE", "kubevirt")
        .set("OWNER_UID", OWNER_UID)
        .set("PREALLOCATION", "false")
        .set("INSECURE_TLS", "false");
    pod
}

fn http_pod(url: &str) -> Pod {
    image_pod("http", url)
}

#[test]
fn cdi_http_imports_stream_an_image_into_the_volume_and_check_its_checksum() {
    if !require(&["nginx", "qemu-img", "openssl", "sha256sum", "cmp"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = http_site(dir.path());
    let size = file_size(&s.reference);
    let sum = ferry_test_kit::sh("sha256sum", &[s.qcow2.to_str().unwrap()]);
    let sum = format!("sha256:{}", sum.split_whitespace().next().unwrap());
    // Plain HTTP, with CDI's checksum and a requested size larger than the disk.
    let mut pod = http_pod(&format!("http://127.0.0.1:{}/disk.qcow2", s.http));
    pod.set("IMPORTER_CHECKSUM", &sum)
        .set("IMPORTER_IMAGE_SIZE", "16Mi");
    let r = pod.run();
    assert_success(&r, "http qcow2");
    let img = pod.disk_img();
    assert_eq!(file_size(&img), 16 * MIB, "grown to IMPORTER_IMAGE_SIZE");
    assert_prefix_identical(&img, &s.reference, size, "http qcow2");
    assert_zero_tail(&img, size, "http qcow2");
    assert_termination_json(
        &pod,
        &json!({
            "scratchSpaceRequired": false,
            "preallocationApplied": false,
            "message": "Import Complete"
        }),
        "http qcow2",
    );
    // A wrong checksum: CDI's failure, no disk reported complete.
    let mut pod = http_pod(&format!("http://127.0.0.1:{}/disk.qcow2", s.http));
    pod.set("IMPORTER_CHECKSUM", &format!("sha256:{}", "ab".repeat(32)));
    let r = pod.run();
    assert_pod_failure(&pod, &r, "checksum mismatch", &["checksum mismatch"]);
    // An invalid checksum is named before any connection.
    let mut pod = http_pod(&format!("http://127.0.0.1:{}/disk.qcow2", s.http));
    pod.set("IMPORTER_CHECKSUM", "sha256:12");
    let r = pod.run();
    assert_pod_failure(
        &pod,
        &r,
        "invalid checksum",
        &["IMPORTER_CHECKSUM", "expected 64 hex characters"],
    );
    // HTTPS with IMPORTER_CERT_DIR (the test CA), and a header CDI passes as
    // IMPORTER_EXTRA_HEADER_<n>.
    let url = format!("https://127.0.0.1:{}/private/disk.qcow2", s.https);
    let mut pod = http_pod(&url);
    pod.set("IMPORTER_CERT_DIR", s.cas.to_str().unwrap())
        .set("IMPORTER_EXTRA_HEADER_0", "X-Token: s3cret");
    let r = pod.run();
    assert_success(&r, "https, cert dir, extra header");
    assert_identical(
        &pod.disk_img(),
        &s.reference,
        "https, cert dir, extra header",
    );
    // Without the header: 403, an authentication failure.
    let mut pod = http_pod(&url);
    pod.set("IMPORTER_CERT_DIR", s.cas.to_str().unwrap());
    let r = pod.run();
    assert_pod_failure(&pod, &r, "403", &["403"]);
    // Without the CA the system roots do not know the test server.
    let pod = http_pod(&url);
    let r = pod.run();
    assert_pod_failure(&pod, &r, "unknown CA", &["TLS"]);
    // archive content is not a disk image.
    let mut pod = http_pod(&format!("http://127.0.0.1:{}/disk.qcow2", s.http));
    pod.set("IMPORTER_CONTENTTYPE", "archive");
    let r = pod.run();
    assert_pod_failure(&pod, &r, "archive", &["IMPORTER_CONTENTTYPE"]);
}

#[test]
fn cdi_http_without_ranges_asks_for_scratch_space_and_stages_a_qcow2_there() {
    if !require(&["nginx", "qemu-img", "openssl", "cmp"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = http_site(dir.path());
    let url = format!("http://127.0.0.1:{}/norange/disk.qcow2", s.http);
    // No scratch volume: CDI's contract, exit 0 with scratchSpaceRequired (its
    // controller then restarts the pod with one); nothing written.
    let pod = http_pod(&url);
    let r = pod.run();
    assert_success(&r, "scratch required");
    assert_termination_json(
        &pod,
        &json!({
            "scratchSpaceRequired": true,
            "preallocationApplied": false,
            "message": "Import Complete"
        }),
        "scratch required",
    );
    assert!(
        !pod.disk_img().exists() || allocated(&pod.disk_img()) == 0,
        "nothing written without scratch"
    );
    // With the scratch volume mounted: staged there, read through its map, and the
    // scratch file gone afterwards.
    let pod = http_pod(&url);
    let scratch = pod.dir.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let r = pod.run();
    assert_success(&r, "staged");
    assert_identical(&pod.disk_img(), &s.reference, "staged");
    assert_eq!(
        std::fs::read_dir(&scratch).unwrap().count(),
        0,
        "scratch left empty"
    );
    assert_termination_json(
        &pod,
        &json!({
            "scratchSpaceRequired": false,
            "preallocationApplied": false,
            "message": "Import Complete"
        }),
        "staged",
    );
}

#[test]
fn cdi_archive_content_is_unpacked_into_the_volume() {
    if !require(&[
        "nginx", "qemu-img", "openssl", "tar", "gzip", "diff", "python3",
    ]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = http_site(dir.path());
    // A tree of files: text, random bytes, an empty file, a nested directory, modes.
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("sub/deeper")).unwrap();
    std::fs::write(tree.join("a.txt"), "hello\n".repeat(1000)).unwrap();
    std::fs::write(
        tree.join("sub/blob.bin"),
        ferry_test_kit::mixed_disk(1 << 20, 1 << 20, 3 << 20),
    )
    .unwrap();
    std::fs::write(tree.join("sub/deeper/empty"), b"").unwrap();
    std::fs::write(tree.join("run.sh"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(
        tree.join("run.sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let www = dir.path().join("www");
    let tar = |name: &str, extra: &[&str]| {
        let mut c = std::process::Command::new("tar");
        c.args(extra)
            .arg("-cf")
            .arg(www.join(name))
            .arg("-C")
            .arg(&tree)
            .arg(".");
        assert!(c.status().unwrap().success(), "tar {name}");
    };
    tar("files.tar", &[]);
    tar("files.tar.gz", &["-z"]);
    for name in ["files.tar", "files.tar.gz"] {
        let mut pod = http_pod(&format!("http://127.0.0.1:{}/{name}", s.http));
        pod.set("IMPORTER_CONTENTTYPE", "archive");
        let r = pod.run();
        assert_success(&r, name);
        let data = pod.dir.path().join("data");
        let st = std::process::Command::new("diff")
            .arg("-r")
            .arg(&tree)
            .arg(&data)
            .status()
            .unwrap();
        assert!(st.success(), "{name}: the volume holds the tree");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(data.join("run.sh"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o755, "{name}: modes kept");
        assert_termination_json(
            &pod,
            &json!({
                "scratchSpaceRequired": false,
                "preallocationApplied": false,
                "message": "Import Complete"
            }),
            name,
        );
    }
    // A member that climbs out of the volume, and a symbolic link: refused by name,
    // nothing written outside.
    let evil = dir.path().join("evil");
    std::fs::create_dir_all(evil.join("d")).unwrap();
    std::fs::write(evil.join("x"), b"x").unwrap();
    // (GNU tar strips a leading ../ when it writes; python's tarfile keeps it.)
    ferry_test_kit::sh(
        "python3",
        &[
            "-c",
            "import io, sys, tarfile\n\
             with tarfile.open(sys.argv[1], 'w', format=tarfile.USTAR_FORMAT) as t:\n\
             \x20   i = tarfile.TarInfo('d/../../x'); i.size = 1\n\
             \x20   t.addfile(i, io.BytesIO(b'x'))",
            www.join("climb.tar").to_str().unwrap(),
        ],
    );
    std::os::unix::fs::symlink("/etc/hostname", evil.join("link")).unwrap();
    let st = std::process::Command::new("tar")
        .arg("-cf")
        .arg(www.join("link.tar"))
        .arg("-C")
        .arg(&evil)
        .arg("link")
        .status()
        .unwrap();
    assert!(st.success());
    for (name, phrase) in [
        ("climb.tar", "outside the volume"),
        ("link.tar", "not a regular file or a directory"),
    ] {
        let mut pod = http_pod(&format!("http://127.0.0.1:{}/{name}", s.http));
        pod.set("IMPORTER_CONTENTTYPE", "archive");
        let r = pod.run();
        assert_pod_failure(&pod, &r, name, &[phrase]);
        assert!(
            !pod.dir.path().join("x").exists(),
            "{name}: nothing outside the volume"
        );
    }
}

// ---------------------------------------------------------------------------------------
// CDI's registry source (issue 12)

fn registry_pod(reference: &str) -> Pod {
    let mut pod = image_pod("registry", reference);
    pod.set("IMPORTER_PULL_METHOD", "pod")
        .set("IMPORTER_REGISTRY_IMAGE_ARCHITECTURE", "");
    pod
}

#[test]
fn cdi_registry_imports_a_container_disk_with_its_credentials_and_cert_dir() {
    if !require(&["docker-registry", "skopeo", "qemu-img", "openssl", "cmp"]) {
        return;
    }
    let Some(reg) = registry::Registry::start(registry::Options {
        tls: true,
        auth: registry::Auth::Token,
    }) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    std::fs::write(&raw, ferry_test_kit::mixed_disk(1 << 20, 2 << 20, 6 << 20)).unwrap();
    let qcow2 = qcow2_of(&raw);
    let image = |c: registry::Compression| {
        registry::Image::new()
            .env("PATH=/usr/bin")
            .env("INSTANCETYPE_KUBEVIRT_IO_DEFAULT_INSTANCETYPE=u1.small")
            .layer(
                registry::Layer::new(c)
                    .owner(107, 107)
                    .dir("disk/", 0o555)
                    .file("disk/disk.qcow2", &qcow2, 0o440),
            )
    };
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::copy(reg.ca_pem().unwrap(), certs.join("tls.crt")).unwrap();
    let (user, password) = reg.credentials().unwrap();
    // An uncompressed layer: read in place, no scratch; the secret's keys are the
    // registry's user and password, the cert ConfigMap its CA.
    let plain = reg.push(&image(registry::Compression::None), "vms/cirros:plain");
    let mut pod = registry_pod(&plain.reference());
    pod.set("IMPORTER_ACCESS_KEY_ID", user)
        .set("IMPORTER_SECRET_KEY", password)
        .set("IMPORTER_CERT_DIR", certs.to_str().unwrap())
        .set("IMPORTER_IMAGE_SIZE", "8Mi");
    let r = pod.run();
    assert_success(&r, "registry, plain layer");
    assert_prefix_identical(
        &pod.disk_img(),
        &raw,
        file_size(&raw),
        "registry, plain layer",
    );
    assert_termination_json(
        &pod,
        &json!({
            "scratchSpaceRequired": false,
            "preallocationApplied": false,
            "labels": {"instancetype.kubevirt.io/default-instancetype": "u1.small"},
            "message": "Import Complete"
        }),
        "registry, plain layer",
    );
    // A gzip layer holding a qcow2 needs scratch: without it CDI's contract (exit 0,
    // scratchSpaceRequired), with it staged there.
    let gz = reg.push(&image(registry::Compression::Gzip), "vms/cirros:gzip");
    let mut pod = registry_pod(&gz.reference());
    pod.set("IMPORTER_ACCESS_KEY_ID", user)
        .set("IMPORTER_SECRET_KEY", password)
        .set("IMPORTER_CERT_DIR", certs.to_str().unwrap());
    let r = pod.run();
    assert_success(&r, "registry, gzip layer, no scratch");
    assert_termination_json(
        &pod,
        &json!({"scratchSpaceRequired": true, "preallocationApplied": false, "message": "Import Complete"}),
        "registry, gzip layer, no scratch",
    );
    let mut pod = registry_pod(&gz.digest_reference());
    pod.set("IMPORTER_ACCESS_KEY_ID", user)
        .set("IMPORTER_SECRET_KEY", password)
        .set("IMPORTER_CERT_DIR", certs.to_str().unwrap());
    std::fs::create_dir_all(pod.dir.path().join("scratch")).unwrap();
    let r = pod.run();
    assert_success(&r, "registry, gzip layer, scratch");
    assert_prefix_identical(
        &pod.disk_img(),
        &raw,
        file_size(&raw),
        "registry, gzip layer, scratch",
    );
    // Wrong credentials: an authentication failure, nothing written.
    let mut pod = registry_pod(&plain.reference());
    pod.set("IMPORTER_ACCESS_KEY_ID", user)
        .set("IMPORTER_SECRET_KEY", "wrong")
        .set("IMPORTER_CERT_DIR", certs.to_str().unwrap());
    let r = pod.run();
    assert_pod_failure(
        &pod,
        &r,
        "wrong registry password",
        &["authentication failed"],
    );
    // INSECURE_TLS (CDI's insecureRegistries): no CA needed.
    let mut pod = registry_pod(&plain.reference());
    pod.set("IMPORTER_ACCESS_KEY_ID", user)
        .set("IMPORTER_SECRET_KEY", password)
        .set("INSECURE_TLS", "true");
    assert_success(&pod.run(), "insecure registry");
    assert_prefix_identical(&pod.disk_img(), &raw, file_size(&raw), "insecure registry");
    // The architecture CDI passes must be the image's.
    let mut pod = registry_pod(&plain.reference());
    pod.set("IMPORTER_ACCESS_KEY_ID", user)
        .set("IMPORTER_SECRET_KEY", password)
        .set("INSECURE_TLS", "true")
        .set("IMPORTER_REGISTRY_IMAGE_ARCHITECTURE", "arm64");
    let r = pod.run();
    assert_pod_failure(&pod, &r, "architecture", &["not the \"arm64\" asked for"]);
    // Only kubevirt content, as CDI; and the endpoint must be docker://.
    let mut pod = registry_pod(&plain.reference());
    pod.set("IMPORTER_CONTENTTYPE", "archive");
    let r = pod.run();
    assert_pod_failure(&pod, &r, "archive", &["IMPORTER_CONTENTTYPE"]);
    let mut pod = registry_pod("https://example.com/disk.img");
    let r = pod.run();
    assert_pod_failure(
        &pod,
        &r,
        "not docker://",
        &["IMPORTER_ENDPOINT", "docker://"],
    );
    let _ = &mut pod;
}

/// `FERRY_VERIFY=digest` puts the digest of the disk as read into the termination
/// message; `verify` also reads the target back (over the disk's size: this disk.img is
/// grown past it) and says "verified". Both equal `ferry verify`'s digest of the source.
#[test]
fn ferry_verify_puts_the_digest_in_the_termination_message() {
    if !require(&["nbdkit", "nbdcopy", "cmp"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let size = 32 * MIB;
    let src = sparse_random(dir.path(), "32M", 30, 21);
    let reference = nbdcopy_reference(&src.uri(), dir.path());
    let want = {
        let mut c = Command::new(FERRY);
        c.args(["verify", &src.uri(), reference.to_str().unwrap(), "--json"]);
        let r = run(c, RUN_LIMIT);
        let v: Value = serde_json::from_str(r.stdout.trim()).expect("verify --json");
        v["digest"].as_str().expect("digest").to_string()
    };
    let vc = VCenter::start(&dir.path().join("vc"), &inventory(size));
    for (mode, word) in [("digest", "digest"), ("verify", "verified")] {
        let mut pod = Pod::vddk(&vc, &src.uri());
        pod.set("IMPORTER_IMAGE_SIZE", "48Mi")
            .set("FERRY_VERIFY", mode);
        let r = pod.run();
        assert_success(&r, mode);
        assert_prefix_identical(&pod.disk_img(), &reference, size, mode);
        let mut want_json = vddk_complete(false);
        want_json["message"] = Value::from(format!("Import Complete; {word} {want}"));
        assert_termination_json(&pod, &want_json, mode);
    }
}

/// `ferry inspect` with the pod's environment: the fake VDDK distribution, the fake
/// vCenter and the disk through VDDK pass; each broken piece fails its own step with its
/// kind's exit status and nothing is written.
#[test]
fn inspect_checks_the_import_a_pod_would_run() {
    if !require(&["nbdkit"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let size = 64 * MIB;
    let src = sparse_random(dir.path(), "64M", 30, 4);
    let vc = VCenter::start(&dir.path().join("vc"), &inventory(size));
    let inspect = |pod: &Pod, extra: &[&str]| {
        let mut c = Command::new(FERRY);
        c.arg("inspect")
            .args(extra)
            .args(["--json", "--seconds", "1"])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(&pod.env);
        let r = run(c, RUN_LIMIT);
        assert!(!r.stderr.contains("panicked"), "{r:?}");
        let v: Value =
            serde_json::from_str(r.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {r:?}"));
        let status = |name: &str| {
            v["checks"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["name"] == name)
                .map(|c| c["status"].as_str().unwrap().to_string())
                .unwrap_or_else(|| panic!("no {name} step: {v}"))
        };
        let steps: BTreeMap<String, String> = [
            "vddk-library",
            "vddk-links",
            "vddk-deps",
            "vddk-load",
            "nfc-aio",
            "reachable",
            "thumbprint",
            "credentials",
            "vm",
            "disk",
            "cbt",
            "checkpoint",
            "vddk-open",
        ]
        .iter()
        .map(|n| (n.to_string(), status(n)))
        .collect();
        (r, v, steps)
    };
    let good = Pod::vddk(&vc, &src.uri());
    let (r, v, steps) = inspect(&good, &[]);
    assert_eq!(r.status.code(), Some(0), "{r:?}");
    assert_eq!(v["ready"], true, "{v}");
    for (name, want) in [
        ("vddk-library", "ok"),
        ("vddk-load", "ok"),
        ("reachable", "ok"),
        ("thumbprint", "ok"),
        ("credentials", "ok"),
        ("vm", "ok"),
        ("disk", "ok"),
        ("cbt", "warn"),
        ("vddk-open", "ok"),
    ] {
        assert_eq!(steps[name], want, "{name}: {v}");
    }
    assert_eq!(v["size"], size, "{v}");
    assert!(v["allocation_ratio"].as_f64().unwrap() > 0.1, "{v}");
    assert!(v["read_bytes_per_second"].as_f64().unwrap() > 0.0, "{v}");
    assert!(
        v["nfc_aio"].as_str().unwrap().contains("NFC AIO defaults"),
        "{v}"
    );
    assert!(!good.disk_img().exists(), "inspect wrote the target");

    // Each broken piece: the step, and the exit status of its kind.
    let cases: [(&str, &str, &str, i32); 4] = [
        (
            "IMPORTER_THUMBPRINT",
            "00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33",
            "thumbprint",
            4,
        ),
        ("IMPORTER_SECRET_KEY", "wrong", "credentials", 4),
        (
            "IMPORTER_UUID",
            "4212ffff-0000-0000-0000-00000000dead",
            "vm",
            5,
        ),
        ("IMPORTER_BACKING_FILE", "[ds1] vm1/other.vmdk", "disk", 5),
    ];
    for (var, value, step, code) in cases {
        let mut bad = Pod::vddk(&vc, &src.uri());
        bad.set(var, value);
        let (r, v, steps) = inspect(&bad, &[]);
        assert_eq!(r.status.code(), Some(code), "{var}: {r:?}");
        assert_eq!(v["ready"], false, "{v}");
        assert_eq!(steps[step], "fail", "{var}: {v}");
        assert_eq!(steps["vddk-open"], "skipped", "{var}: {v}");
        let last = r.stderr.lines().rfind(|l| !l.trim().is_empty()).unwrap();
        assert!(
            last.starts_with(&format!(
                "ferry: error: inspect: a migration would fail: {step}:"
            )),
            "{last}"
        );
    }
    // A warm migration needs CBT, which this disk has off.
    let (r, _, steps) = inspect(&good, &["--warm"]);
    assert_eq!(r.status.code(), Some(9), "{r:?}");
    assert_eq!(steps["cbt"], "fail");
    // No VDDK at the libdir.
    let mut none = Pod::vddk(&vc, &src.uri());
    none.set("VDDK_LIBDIR", dir.path().join("empty").to_str().unwrap());
    let (r, _, steps) = inspect(&none, &[]);
    assert_eq!(r.status.code(), Some(2), "{r:?}");
    assert_eq!(steps["vddk-library"], "fail");
    assert_eq!(steps["vddk-open"], "fail");
}
