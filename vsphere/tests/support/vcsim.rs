//! govmomi's vCenter simulator as a test peer: `tests/vcsim/main.go` built against the
//! Debian package `golang-github-vmware-govmomi-dev` (GOPATH mode, no network) and
//! started on a loopback port. Shared by `vsphere/tests/vcsim.rs` and
//! `importer/tests/import.rs` (included there with `#[path]`).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian installs govmomi's source.
pub const GOPATH: &str = "/usr/share/gocode";

/// The repository root (two levels above this crate or the importer's).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

/// False, after a loud skip (or a failure under `FERRY_REQUIRE_TOOLS=1`, which
/// `scripts/test.sh` sets after installing everything), when Go or govmomi is missing.
pub fn available() -> bool {
    let go = Command::new("go")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    let govmomi = Path::new(GOPATH)
        .join("src/github.com/vmware/govmomi/simulator")
        .is_dir();
    if go && govmomi {
        return true;
    }
    let reason = "needs go and golang-github-vmware-govmomi-dev (scripts/setup.sh installs them)";
    if ferry_test_kit::tools_required() {
        panic!("{reason}");
    }
    ferry_test_kit::skip_in("ferry-vsphere", reason);
    false
}

/// Build `tests/vcsim` once per test process into `target/vcsim/vcsim-ready`.
fn binary() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let out = repo().join("target/vcsim");
            std::fs::create_dir_all(&out).expect("mkdir target/vcsim");
            let bin = out.join("vcsim-ready");
            let o = Command::new("go")
                .args(["build", "-o"])
                .arg(&bin)
                .arg(".")
                .current_dir(repo().join("tests/vcsim"))
                .env("GOPATH", GOPATH)
                .env("GO111MODULE", "off")
                .env("GOFLAGS", "")
                .env("GOCACHE", out.join("cache"))
                .output()
                .expect("run go build");
            assert!(
                o.status.success(),
                "go build tests/vcsim: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            bin
        })
        .clone()
}

/// A running simulator; killed on drop.
pub struct Vcsim {
    child: Child,
    /// The ready line: url, thumbprint, vm, vm_name, instance_uuid, bios_uuid, disk,
    /// capacity, snapshot, snapshot_name, snapshot_disk, host.
    pub info: serde_json::Value,
}

impl Vcsim {
    /// Start it; `weak_key` keeps the simulator's own RSA 1024 certificate.
    pub fn start(dir: &Path, weak_key: bool) -> Vcsim {
        let ready = dir.join("vcsim-ready.json");
        let mut cmd = Command::new(binary());
        cmd.arg("-ready").arg(&ready);
        if weak_key {
            cmd.arg("-weak-key");
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("vcsim.stderr")).expect("vcsim stderr"))
            .spawn()
            .expect("start vcsim-ready");
        let mut v = Vcsim {
            child,
            info: serde_json::Value::Null,
        };
        let t0 = Instant::now();
        while !ready.exists() {
            if let Some(st) = v.child.try_wait().expect("wait") {
                panic!(
                    "vcsim exited ({st}): {}",
                    std::fs::read_to_string(dir.join("vcsim.stderr")).unwrap_or_default()
                );
            }
            assert!(t0.elapsed() < Duration::from_secs(60), "vcsim not ready");
            std::thread::sleep(Duration::from_millis(20));
        }
        let text = std::fs::read_to_string(&ready).expect("read the ready file");
        v.info = serde_json::from_str(text.trim()).expect("ready line is JSON");
        v
    }

    /// A field of the ready line.
    pub fn get(&self, key: &str) -> String {
        self.info[key]
            .as_str()
            .unwrap_or_else(|| panic!("no {key} in {}", self.info))
            .to_string()
    }
}

impl Drop for Vcsim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
