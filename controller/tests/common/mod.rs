//! What the controller's end-to-end tests share: the controller started against the test
//! API server, waits on a plan's phase, the history's most pods running at once, and a
//! kubelet that runs each import pod as a real `ferry import` process.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fake_apiserver::Server;
use ferry_controller::planner::plan::{Outcome, TaskView};
use ferry_controller::pod::PodDefaults;
use ferry_controller::vsphere::{BoxFuture, Call, Endpoint, VsphereOps};
use serde_json::{Value, json};

pub const CORE: &str = "/api/v1";
pub const FERRY: &str = "/apis/ferry.dev/v1alpha1";

/// The vSphere calls of a plan that must make none.
pub struct NoVsphere;
impl VsphereOps for NoVsphere {
    fn call<'a>(
        &'a self,
        _: &'a Endpoint,
        _: &'a str,
        c: Call,
    ) -> BoxFuture<'a, Result<Option<Outcome>, String>> {
        Box::pin(async move { Err(format!("an NBD plan makes no vSphere call ({c:?})")) })
    }
    fn task<'a>(&'a self, _: &'a Endpoint, _: &'a str) -> BoxFuture<'a, Result<TaskView, String>> {
        Box::pin(async { Err("an NBD plan has no vSphere tasks".to_string()) })
    }
}

/// A client of the test API server.
pub fn client(server: &Server) -> kube::Client {
    kube::Client::try_from(kube::Config::new(server.url().parse().unwrap())).unwrap()
}

/// Run the whole controller (no leader election: `reconcile::run`) against `client`
/// until the returned sender is used.
pub fn start_controller(
    client: kube::Client,
    vsphere: Arc<dyn VsphereOps>,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(ferry_controller::reconcile::run(
        client,
        None,
        PodDefaults {
            image: "ferry:test".into(),
            verbosity: 1,
            pull_policy: "IfNotPresent".into(),
        },
        "ferry-system".into(),
        "test-replica".into(),
        vsphere,
        async move {
            let _ = stop_rx.await;
        },
    ));
    (stop_tx, handle)
}

/// Stop a controller started by [`start_controller`].
pub async fn stop_controller(
    (stop_tx, handle): (
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ),
) {
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(15), handle).await;
}

/// Plan `vms/name` as the server holds it (null when gone).
pub fn plan_object(server: &Server, name: &str) -> Value {
    server
        .get(FERRY, "ferryplans", "vms", name)
        .unwrap_or(Value::Null)
}

/// Wait until plan `vms/name` reads `phase`; whether it did, and the plan.
pub async fn wait_phase(
    server: &Server,
    name: &str,
    phase: &str,
    timeout: Duration,
) -> (bool, Value) {
    let done = server
        .wait_for(timeout, |s| {
            plan_object(s, name)["status"]["phase"] == phase
        })
        .await;
    (done, plan_object(server, name))
}

/// Wait until plan `vms/name` reads `Completed`; whether it did, and the plan.
pub async fn wait_completed(server: &Server, name: &str, timeout: Duration) -> (bool, Value) {
    wait_phase(server, name, "Completed", timeout).await
}

/// The most import pods that were Running at once, from the server's history.
pub fn most_running(server: &Server) -> usize {
    let mut running = std::collections::BTreeSet::new();
    let mut most = 0;
    for ch in server
        .history()
        .iter()
        .filter(|c| c.collection.plural == "pods")
    {
        let name = ch.object["metadata"]["name"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if ch.kind != "DELETED" && ch.object["status"]["phase"] == "Running" {
            running.insert(name);
        } else {
            running.remove(&name);
        }
        most = most.max(running.len());
    }
    most
}

/// The most pods that existed at once for one PVC, from the server's history (more
/// than 1 would be two writers).
pub fn most_pods_per_pvc(server: &Server) -> usize {
    let mut live: BTreeMap<String, String> = BTreeMap::new();
    let mut most = 0;
    for ch in server
        .history()
        .iter()
        .filter(|c| c.collection.plural == "pods")
    {
        let name = ch.object["metadata"]["name"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if ch.kind == "DELETED" {
            live.remove(&name);
        } else {
            live.insert(name, claim_of(&ch.object));
        }
        let mut per: BTreeMap<&str, usize> = BTreeMap::new();
        for c in live.values() {
            *per.entry(c).or_default() += 1;
        }
        most = most.max(per.values().copied().max().unwrap_or(0));
    }
    most
}

/// Every import pod the server ever created, in creation order.
pub fn pods_created(server: &Server) -> Vec<Value> {
    server
        .history()
        .iter()
        .filter(|c| c.collection.plural == "pods" && c.kind == "ADDED")
        .map(|c| c.object.clone())
        .collect()
}

/// The value of a pod's importer environment variable.
pub fn pod_env(pod: &Value, name: &str) -> Option<String> {
    pod["spec"]["containers"][0]["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str().map(str::to_string))
}

/// The PVC a pod writes.
pub fn claim_of(pod: &Value) -> String {
    pod["spec"]["volumes"]
        .as_array()
        .and_then(|v| {
            v.iter().find_map(|v| {
                v["persistentVolumeClaim"]["claimName"]
                    .as_str()
                    .map(str::to_string)
            })
        })
        .unwrap_or_default()
}

/// `target/<profile>/NAME` as cargo built it for the tests, when it is there.
pub fn built(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.parent()?.join(name);
    p.is_file().then_some(p)
}

/// `ferry`, or a printed skip: `cargo test --workspace` builds it, a lone
/// `-p ferry-controller` run may not.
pub fn ferry_binary() -> Option<PathBuf> {
    let p = built("ferry");
    if p.is_none() {
        ferry_test_kit::skip_in(
            "controller",
            "target/<profile>/ferry is not built (cargo build -p ferry)",
        );
    }
    p
}

/// `cmp -n len a b`: whether the first `len` bytes agree, and cmp's words when not.
pub fn same_bytes(a: &Path, b: &Path, len: u64) -> Result<(), String> {
    let out = Command::new("cmp")
        .arg("-n")
        .arg(len.to_string())
        .arg(a)
        .arg(b)
        .output()
        .map_err(|e| format!("cmp: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} and {} differ: {}{}",
            a.display(),
            b.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Extra environment for a container, chosen from its own environment (for example
/// the fake VDDK's backing file for the checkpoint the pod copies).
pub type ExtraEnv = dyn Fn(&BTreeMap<String, String>) -> Vec<(String, String)> + Send + Sync;

/// The loop devices the kubelet attached for block PVCs, by PVC; detached when the
/// last handle goes.
#[derive(Clone, Default)]
pub struct Devices(Arc<DeviceSet>);

#[derive(Default)]
struct DeviceSet(Mutex<BTreeMap<String, PathBuf>>);

impl Drop for DeviceSet {
    fn drop(&mut self) {
        for dev in self.0.lock().unwrap().values() {
            let _ = Command::new("losetup").arg("-d").arg(dev).status();
        }
    }
}

impl Devices {
    /// The device backing block PVC `claim`.
    pub fn of(&self, claim: &str) -> Option<PathBuf> {
        self.0.0.lock().unwrap().get(claim).cloned()
    }

    fn insert(&self, claim: &str, dev: PathBuf) {
        self.0.0.lock().unwrap().insert(claim.to_string(), dev);
    }
}

/// A kubelet that runs each import pod's container as a real `ferry import` process:
/// the container's args and environment (literal values and Secret references), its
/// mounts mapped onto host paths (`/data` → the PVC's directory, `/dev/cdi-block-volume`
/// → a loop device over a file of the PVC's size, `/opt` → a directory the
/// `vddk-side-car` init container fills with the fake VDDK, the termination log and
/// metrics port onto temp files and a free port), `restartPolicy: OnFailure` restarts
/// in place after a back-off, the process stopped (SIGTERM) when its pod is deleted, and
/// the container states, restart counts and termination messages reported back.
pub struct ProcessKubelet {
    pub server: Server,
    pub ferry: PathBuf,
    pub root: PathBuf,
    /// The fake `libvixDiskLib.so` the VDDK init container installs.
    pub vddk_lib: Option<PathBuf>,
    pub extra_env: Arc<ExtraEnv>,
    /// Kill (SIGKILL) the first container started this long after its start, as an
    /// OOM kill or a node failure would.
    pub kill_first_after: Option<Duration>,
    pub devices: Devices,
    /// Pod UID → the pid of its running container.
    pids: Arc<Mutex<HashMap<String, u32>>>,
}

impl ProcessKubelet {
    pub fn new(server: &Server, ferry: PathBuf, root: &Path) -> ProcessKubelet {
        ProcessKubelet {
            server: server.clone(),
            ferry,
            root: root.to_path_buf(),
            vddk_lib: None,
            extra_env: Arc::new(|_| Vec::new()),
            kill_first_after: None,
            devices: Devices::default(),
            pids: Arc::default(),
        }
    }

    /// The directory holding PVC `claim`'s files (`disk.img` for a filesystem PVC).
    pub fn pvc_dir(&self, claim: &str) -> PathBuf {
        self.root.join("pvc").join(claim)
    }

    /// What PVC `claim` holds the disk in: its loop device (block), or `disk.img`.
    pub fn target(&self, claim: &str) -> PathBuf {
        self.devices
            .of(claim)
            .unwrap_or_else(|| self.pvc_dir(claim).join("disk.img"))
    }

    /// How many containers run now.
    pub fn running(&self) -> usize {
        self.pids.lock().unwrap().len()
    }

    /// Every container's log, for failure messages.
    pub fn logs(&self) -> Vec<String> {
        std::fs::read_dir(self.root.join("pods"))
            .map(|d| {
                d.filter_map(|e| {
                    let e = e.ok()?;
                    let text = std::fs::read_to_string(e.path().join("log")).ok()?;
                    Some(format!("== {}\n{text}", e.file_name().to_string_lossy()))
                })
                .collect()
            })
            .unwrap_or_default()
    }

    /// Run until the test ends.
    pub fn spawn(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let k = self.clone();
        tokio::spawn(async move { k.run().await })
    }

    async fn run(self: Arc<Self>) {
        let mut started = std::collections::BTreeSet::new();
        let pids = self.pids.clone();
        let mut kill_next = self.kill_first_after;
        loop {
            let pods = self.server.list(CORE, "pods");
            // A deleted pod's container is stopped, as the kubelet does (SIGTERM).
            let live: std::collections::BTreeSet<String> = pods
                .iter()
                .filter_map(|p| p["metadata"]["uid"].as_str().map(str::to_string))
                .collect();
            for (uid, pid) in pids.lock().unwrap().iter() {
                if !live.contains(uid) {
                    let _ = Command::new("kill")
                        .arg("-TERM")
                        .arg(pid.to_string())
                        .status();
                }
            }
            for pod in pods {
                let uid = pod["metadata"]["uid"].as_str().unwrap_or("").to_string();
                let phase = pod["status"]["phase"].as_str().unwrap_or("");
                if !(phase.is_empty() || phase == "Pending") || started.contains(&uid) {
                    continue;
                }
                match self.prepare(&pod) {
                    Ok((cmd, term)) => {
                        started.insert(uid.clone());
                        let k = self.clone();
                        let kill = kill_next.take();
                        let pids = pids.clone();
                        std::thread::spawn(move || k.run_pod(pod, cmd, term, kill, uid, pids));
                    }
                    Err(e) => {
                        // What a kubelet reports for a pod it cannot start yet; it tries
                        // again (a missing Secret or PVC may appear).
                        eprintln!("kubelet: cannot start {}: {e}", pod["metadata"]["name"]);
                        let mut pod = pod;
                        pod["spec"]["nodeName"] = json!("node-1");
                        pod["status"] = json!({"phase": "Pending", "conditions": [
                            {"type": "PodScheduled", "status": "True"}],
                            "containerStatuses": [{"name": "importer", "ready": false, "restartCount": 0,
                            "image": "ferry", "imageID": "",
                            "state": {"waiting": {"reason": "CreateContainerConfigError", "message": e}}}]});
                        self.server.put(CORE, "pods", pod);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The container's command, with its mounts in place; and its termination log.
    fn prepare(&self, pod: &Value) -> Result<(Command, PathBuf), String> {
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or("");
        let name = pod["metadata"]["name"].as_str().unwrap_or("").to_string();
        let c = &pod["spec"]["containers"][0];
        let claim = claim_of(pod);
        let run = self.root.join("pods").join(&name);
        std::fs::create_dir_all(&run).map_err(|e| e.to_string())?;
        let term = run.join("termination-log");
        let port = ferry_test_kit::free_port();
        let mut cmd = Command::new(&self.ferry);
        cmd.arg("import");
        for a in c["args"].as_array().into_iter().flatten() {
            cmd.arg(a.as_str().unwrap_or(""));
        }
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default());
        let mut env = BTreeMap::new();
        for e in c["env"].as_array().into_iter().flatten() {
            let key = e["name"].as_str().unwrap_or("").to_string();
            let value = if let Some(v) = e["value"].as_str() {
                v.to_string()
            } else if let Some(r) = e["valueFrom"]["secretKeyRef"].as_object() {
                let secret = r["name"].as_str().unwrap_or("");
                let item = r["key"].as_str().unwrap_or("");
                let s = self
                    .server
                    .get(CORE, "secrets", ns, secret)
                    .ok_or_else(|| format!("secret \"{secret}\" not found"))?;
                let b64 = s["data"][item]
                    .as_str()
                    .ok_or_else(|| format!("couldn't find key {item} in Secret {ns}/{secret}"))?;
                String::from_utf8(base64_decode(b64)?).map_err(|e| e.to_string())?
            } else {
                String::new()
            };
            env.insert(key, value);
        }
        for (k, v) in (self.extra_env)(&env) {
            env.insert(k, v);
        }
        cmd.envs(&env);
        // Mounts.
        let block = c["volumeDevices"].as_array().is_some_and(|d| !d.is_empty());
        if block {
            let dev = self.block_device(ns, &claim)?;
            cmd.env(ferry_contract::env::FERRY_BLOCK_DEVICE, dev);
        } else {
            let data = self.pvc_dir(&claim);
            std::fs::create_dir_all(&data).map_err(|e| e.to_string())?;
            cmd.env(ferry_contract::env::FERRY_DATA_DIR, &data);
        }
        let opt = run.join("opt");
        std::fs::create_dir_all(&opt).map_err(|e| e.to_string())?;
        let vddk_init = pod["spec"]["initContainers"]
            .as_array()
            .is_some_and(|i| i.iter().any(|c| c["name"] == "vddk-side-car"));
        if vddk_init {
            // The VDDK image's entrypoint copies vmware-vix-disklib-distrib into /opt.
            let lib = self
                .vddk_lib
                .as_ref()
                .ok_or("the test gave the kubelet no VDDK library")?;
            let lib64 = opt.join("vmware-vix-disklib-distrib/lib64");
            std::fs::create_dir_all(&lib64).map_err(|e| e.to_string())?;
            std::fs::copy(lib, lib64.join("libvixDiskLib.so.8")).map_err(|e| e.to_string())?;
        }
        cmd.env(ferry_contract::env::TERMINATION_LOG, &term)
            .env(
                ferry_contract::env::FERRY_METRICS_ADDR,
                format!("127.0.0.1:{port}"),
            )
            .env(
                ferry_contract::env::VDDK_LIBDIR,
                opt.join("vmware-vix-disklib-distrib"),
            )
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(run.join("log"))
                    .map_err(|e| e.to_string())?,
            );
        let mut pod = pod.clone();
        pod["spec"]["nodeName"] = json!("node-1");
        pod["metadata"]["annotations"]["ferry.dev/metrics-address"] =
            json!(format!("127.0.0.1:{port}"));
        pod["status"] = running(0);
        self.server.put(CORE, "pods", pod);
        Ok((cmd, term))
    }

    /// A loop device over a file of PVC `claim`'s requested size (made once per PVC).
    fn block_device(&self, ns: &str, claim: &str) -> Result<PathBuf, String> {
        if let Some(d) = self.devices.of(claim) {
            return Ok(d);
        }
        let pvc = self
            .server
            .get(CORE, "persistentvolumeclaims", ns, claim)
            .ok_or_else(|| format!("persistentvolumeclaim \"{claim}\" not found"))?;
        let size = pvc["spec"]["resources"]["requests"]["storage"]
            .as_str()
            .and_then(|q| q.parse::<u64>().ok())
            .ok_or_else(|| format!("PVC {claim}: no byte size: {:#}", pvc["spec"]))?;
        let file = self.root.join("pvc").join(format!("{claim}.block"));
        std::fs::create_dir_all(self.root.join("pvc")).map_err(|e| e.to_string())?;
        std::fs::File::create(&file)
            .and_then(|f| f.set_len(size))
            .map_err(|e| e.to_string())?;
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&file)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "losetup: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let dev = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        self.devices.insert(claim, dev.clone());
        Ok(dev)
    }

    /// One pod's life: run, restart on failure (OnFailure), report.
    fn run_pod(
        &self,
        mut pod: Value,
        mut cmd: Command,
        term: PathBuf,
        mut kill: Option<Duration>,
        uid: String,
        pids: Arc<Mutex<HashMap<String, u32>>>,
    ) {
        let (ns, name) = (
            pod["metadata"]["namespace"]
                .as_str()
                .unwrap_or("")
                .to_string(),
            pod["metadata"]["name"].as_str().unwrap_or("").to_string(),
        );
        for restarts in 0u32..6 {
            let mut child = cmd.spawn().expect("run ferry import");
            pids.lock().unwrap().insert(uid.clone(), child.id());
            if let Some(after) = kill.take() {
                std::thread::sleep(after);
                let _ = child.kill();
            }
            let status = child.wait().expect("wait for ferry import");
            pids.lock().unwrap().remove(&uid);
            let message = std::fs::read_to_string(&term).unwrap_or_default();
            let code = status.code().unwrap_or(137);
            let terminated = json!({"exitCode": code, "reason": if code == 0 { "Completed" } else { "Error" }, "message": message});
            let Some(mut now) = self.server.get(CORE, "pods", &ns, &name) else {
                return;
            };
            if now["metadata"]["uid"] != pod["metadata"]["uid"] {
                return;
            }
            if code == 0 {
                now["status"] = json!({"phase": "Succeeded", "podIP": "127.0.0.1", "containerStatuses": [
                    {"name": "importer", "ready": false, "restartCount": restarts, "image": "ferry", "imageID": "", "state": {"terminated": terminated}}]});
                self.server.put(CORE, "pods", now);
                return;
            }
            // The kubelet's back-off before a restart (10 s doubling; shorter here).
            now["status"]["containerStatuses"][0]["state"] =
                json!({"waiting": {"reason": "CrashLoopBackOff"}});
            now["status"]["containerStatuses"][0]["lastState"] = json!({"terminated": terminated});
            self.server.put(CORE, "pods", now);
            std::thread::sleep(Duration::from_millis(500 << restarts));
            let Some(mut now) = self.server.get(CORE, "pods", &ns, &name) else {
                return;
            };
            if now["metadata"]["uid"] != pod["metadata"]["uid"] {
                return;
            }
            now["status"] = running(restarts + 1);
            now["status"]["containerStatuses"][0]["lastState"] = json!({"terminated": terminated});
            pod = self.server.put(CORE, "pods", now);
        }
    }
}

/// A running importer container's status.
fn running(restarts: u32) -> Value {
    json!({"phase": "Running", "podIP": "127.0.0.1", "containerStatuses": [
        {"name": "importer", "ready": true, "restartCount": restarts, "image": "ferry", "imageID": "",
         "state": {"running": {"startedAt": "2026-12-03T00:00:00Z"}}}]})
}

/// Standard base64 (a Secret's `data`).
fn base64_decode(s: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|c| !c.is_ascii_whitespace()) {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => return Err(format!("not base64: {s:?}")),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Ok(out)
}
