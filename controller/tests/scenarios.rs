//! The end-to-end scenarios: the whole controller against the test API server
//! (`tests/fake-apiserver`), with a kubelet that runs every import pod as a real
//! `ferry import` process (`common::ProcessKubelet`), reading nbdkit disks or the fake
//! VDDK library behind the fake vCenter. Every target is compared byte for byte.
//!
//! nbdkit 1.32 (Debian 12) aborts (`raw_send_socket: Assertion 'sock >= 0' failed`)
//! when a client drops while its `delay` or `rate` filter sleeps, so the scenarios that
//! need a slow source (a kill, a cancel, a cap that must fill) read the fake VDDK with
//! its bandwidth cap instead.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use fake_apiserver::Server;
use fake_vcenter::{Area, FakeVcenter, Inventory, Options};
use ferry_controller::crd::{
    FerryPlan, FerryPlanSpec, Limits, NbdSource, PlanDisk, PlanSource, PlanVm, VolumeMode,
    VsphereSource,
};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const MIB: u64 = 1 << 20;
const USER: &str = "administrator@vsphere.local";
const PASSWORD: &str = "pw";

/// Plan `name` in namespace `vms`.
fn new_plan(name: &str, spec: FerryPlanSpec) -> FerryPlan {
    let mut p = FerryPlan::new(name, spec);
    p.metadata.namespace = Some("vms".into());
    p
}

async fn create(client: &kube::Client, p: &FerryPlan) {
    let plans: Api<FerryPlan> = Api::namespaced(client.clone(), "vms");
    plans.create(&PostParams::default(), p).await.unwrap();
}

async fn patch_plan(client: &kube::Client, name: &str, patch: Value) {
    let plans: Api<FerryPlan> = Api::namespaced(client.clone(), "vms");
    plans
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
}

/// What the tests need and may lack: the tools, the built `ferry`, and (for block PVCs)
/// loop devices.
fn ready(block: bool) -> Option<PathBuf> {
    if !ferry_test_kit::require_in("controller", &["nbdkit", "nbdcopy", "cmp", "losetup"]) {
        return None;
    }
    if block && !ferry_test_kit::have_loop_devices() {
        ferry_test_kit::skip_in(
            "controller",
            "no loop devices (root and /dev/loop-control needed) for block PVCs",
        );
        return None;
    }
    ferry_binary()
}

/// Assert the plan completed; the pods' logs when it did not.
fn assert_done(done: bool, p: &Value, k: &ProcessKubelet) {
    assert!(
        done,
        "the plan did not complete: {:#}\nlogs:\n{}",
        p["status"],
        k.logs().join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// A vSphere world: the fake vCenter, each disk a raw file the fake VDDK serves, and a
// copy of each disk per snapshot.

struct World {
    vc: FakeVcenter,
    /// backing file name → (VM moref, disk key, the live disk).
    disks: BTreeMap<String, (String, i32, PathBuf)>,
    snaps: PathBuf,
}

/// One VM: name, host, and its disks' sizes.
struct VmDef<'a> {
    name: &'a str,
    host: &'a str,
    disks: &'a [u64],
}

fn uuid_of(i: usize) -> String {
    format!("5012aaaa-0000-0000-0000-{i:012}")
}

/// Disk content: text, random bytes, zeroes (a hole), then a pattern, different per
/// `seed`.
fn disk_bytes(size: u64, seed: u64) -> Vec<u8> {
    let mut d = vec![0u8; size as usize];
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ seed.wrapping_mul(0x1000_0001);
    let quarter = d.len() / 4;
    for (i, b) in d[..quarter].iter_mut().enumerate() {
        *b = b"ferry moves virtual disks "[(i + seed as usize) % 26];
    }
    for b in &mut d[quarter..2 * quarter] {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    for (i, b) in d[3 * quarter..].iter_mut().enumerate() {
        *b = (i as u64 * 31 + seed) as u8 | 1;
    }
    d
}

impl World {
    async fn start(root: &Path, vms: &[VmDef<'_>]) -> World {
        let live = root.join("live");
        let snaps = root.join("snaps");
        std::fs::create_dir_all(&live).unwrap();
        std::fs::create_dir_all(&snaps).unwrap();
        let mut disks = BTreeMap::new();
        let mut inv_vms = Vec::new();
        for (i, vm) in vms.iter().enumerate() {
            let moref = format!("vm-{}", 100 + i);
            let mut inv_disks = Vec::new();
            for (j, size) in vm.disks.iter().enumerate() {
                let key = 2000 + j as i32;
                let file = format!("[ds1] {0}/{0}_{j}.vmdk", vm.name);
                let path = live.join(format!("{moref}-{key}.raw"));
                std::fs::write(&path, disk_bytes(*size, (i * 10 + j) as u64)).unwrap();
                inv_disks.push(json!({"key": key, "file_name": file, "capacity_bytes": size}));
                disks.insert(file, (moref.clone(), key, path));
            }
            inv_vms.push(
                json!({"moref": moref, "name": vm.name, "instance_uuid": uuid_of(i),
                "power_state": "poweredOn", "host": vm.host, "disks": inv_disks}),
            );
        }
        let inv: Inventory = serde_json::from_value(json!({
            "user": USER, "password": PASSWORD,
            "datacenters": [{"name": "dc1", "vms": inv_vms}]
        }))
        .unwrap();
        let vc = FakeVcenter::start(
            inv,
            "127.0.0.1:0",
            Options {
                quiet: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        // Each snapshot: keep each disk of the VM as it is now, then let the guest
        // write (a block of new data, a block zeroed) before the next one; CBT records it.
        let by_vm: BTreeMap<String, Vec<(i32, PathBuf)>> =
            disks
                .values()
                .fold(BTreeMap::new(), |mut m, (vm, key, path)| {
                    m.entry(vm.clone())
                        .or_insert_with(Vec::new)
                        .push((*key, path.clone()));
                    m
                });
        let snap_dir = snaps.clone();
        let mut generation = 0u64;
        vc.on_snapshot(move |vm, snapshot| {
            generation += 1;
            let mut written = Vec::new();
            for (key, path) in by_vm.get(vm).into_iter().flatten() {
                std::fs::copy(path, snap_dir.join(format!("{snapshot}-{key}.raw"))).unwrap();
                let mut d = std::fs::read(path).unwrap();
                let size = d.len() as u64;
                let data_at = (generation * 3 * MIB + u64::from(*key as u16) * 64 * 1024)
                    % (size - 512 * 1024)
                    / 4096
                    * 4096;
                let zero_at = (data_at + size / 2) % (size - 256 * 1024) / 4096 * 4096;
                d[data_at as usize..(data_at + 512 * 1024) as usize]
                    .fill((generation * 37 + 1) as u8);
                d[zero_at as usize..(zero_at + 256 * 1024) as usize].fill(0);
                std::fs::write(path, &d).unwrap();
                written.push((
                    *key,
                    vec![
                        Area {
                            start: data_at,
                            length: 512 * 1024,
                        },
                        Area {
                            start: zero_at,
                            length: 256 * 1024,
                        },
                    ],
                ));
            }
            written
        });
        World { vc, disks, snaps }
    }

    /// The Secret the plan names (in `vms`), as the API serves it (base64 data).
    fn put_secret(&self, server: &Server) {
        server.put(
            CORE,
            "secrets",
            json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "vc", "namespace": "vms"},
            "data": {"accessKeyId": "YWRtaW5pc3RyYXRvckB2c3BoZXJlLmxvY2Fs", "secretKey": "cHc="}}),
        );
    }

    fn source(&self) -> PlanSource {
        PlanSource {
            vsphere: Some(VsphereSource {
                url: self.vc.endpoint(),
                secret_ref: "vc".into(),
                thumbprint: Some(self.vc.thumbprint().to_string()),
                vddk_image: "vddk:8".into(),
                ..Default::default()
            }),
            nbd: None,
        }
    }

    /// The fake VDDK's environment for a pod: the disk (live, or as it was at the
    /// pod's checkpoint), the credentials it must be given (so the Secret reference
    /// is proven resolved), and a bandwidth cap when the test wants slow copies.
    fn vddk_env(self: &Arc<Self>, bandwidth: Option<&'static str>) -> Arc<ExtraEnv> {
        let w = self.clone();
        Arc::new(move |env: &BTreeMap<String, String>| {
            let mut out = vec![
                ("FAKE_VDDK_USER".to_string(), USER.to_string()),
                ("FAKE_VDDK_PASSWORD".to_string(), PASSWORD.to_string()),
            ];
            let Some((_, key, live)) = env
                .get("IMPORTER_BACKING_FILE")
                .and_then(|f| w.disks.get(f))
            else {
                return out;
            };
            match env
                .get("IMPORTER_CURRENT_CHECKPOINT")
                .filter(|c| !c.is_empty())
            {
                Some(cp) => {
                    let snap = w.snaps.join(format!("{cp}-{key}.raw"));
                    out.push(("FAKE_VDDK_BACKING".into(), snap.display().to_string()));
                    out.push(("FAKE_VDDK_SNAPSHOT".into(), cp.clone()));
                }
                None => out.push(("FAKE_VDDK_BACKING".into(), live.display().to_string())),
            }
            if let Some(b) = bandwidth {
                out.push(("FAKE_VDDK_BANDWIDTH".into(), b.into()));
            }
            out
        })
    }

    /// Run plan `p` in it: a test API server holding the plan's Secret, the plan
    /// created, a process kubelet (the fake VDDK capped at `bandwidth`, the first
    /// container killed after `kill`) and the controller with a real vSphere client.
    async fn run(
        self: &Arc<Self>,
        p: FerryPlan,
        bandwidth: Option<&'static str>,
        kill: Option<Duration>,
        ferry: PathBuf,
        root: &Path,
    ) -> (
        Server,
        kube::Client,
        Arc<ProcessKubelet>,
        (
            tokio::sync::oneshot::Sender<()>,
            tokio::task::JoinHandle<()>,
        ),
    ) {
        let server = Server::start().await;
        self.put_secret(&server);
        let client = client(&server);
        create(&client, &p).await;
        let mut k = kubelet(&server, ferry, root, Some(self));
        k.extra_env = self.vddk_env(bandwidth);
        k.kill_first_after = kill;
        let k = Arc::new(k);
        k.spawn();
        let controller = start_controller(
            client.clone(),
            Arc::new(ferry_controller::vsphere::Vcenter::default()),
        );
        (server, client, k, controller)
    }

    /// The PVC of `vm`'s disk `index`, by the default template.
    fn pvc(plan: &str, vm: &str, index: usize) -> String {
        format!("{plan}-{vm}-disk-{index}")
    }
}

fn kubelet(
    server: &Server,
    ferry: PathBuf,
    root: &Path,
    world: Option<&Arc<World>>,
) -> ProcessKubelet {
    let mut k = ProcessKubelet::new(server, ferry, root);
    if let Some(w) = world {
        k.vddk_lib = built("libvixDiskLib.so");
        assert!(
            k.vddk_lib.is_some(),
            "target/<profile>/libvixDiskLib.so is missing: cargo build -p fake-vddk"
        );
        k.extra_env = w.vddk_env(None);
    }
    k
}

// ---------------------------------------------------------------------------------------

/// A cold NBD plan of 3 VMs × 2 disks served by nbdkit: each VM's first disk a block
/// PVC (a loop device), its second a filesystem PVC (`disk.img`); every target equal to
/// what nbdcopy reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_plan_of_three_vms_with_two_disks_each_fills_block_and_filesystem_volumes() {
    let Some(ferry) = ready(true) else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut sources = Vec::new();
    for vm in 0..3 {
        sources.push(ferry_test_kit::Server::nbdkit(
            dir.path(),
            &[
                "sparse-random",
                "size=24M",
                "percent=30",
                "runlength=262144",
                &format!("seed={vm}"),
            ],
        ));
        sources.push(ferry_test_kit::Server::nbdkit(
            dir.path(),
            &["pattern", &format!("size={}M", 16 + 4 * vm)],
        ));
    }
    let server = Server::start().await;
    let client = client(&server);
    let vms = (0..3)
        .map(|vm| PlanVm {
            name: Some(format!("vm{vm}")),
            host: Some("esx1".into()),
            disks: (0..2)
                .map(|d| PlanDisk {
                    nbd_uri: Some(sources[vm * 2 + d].uri()),
                    capacity: Some(format!("{}Mi", if d == 0 { 24 } else { 16 + 4 * vm })),
                    volume_mode: Some(if d == 0 {
                        VolumeMode::Block
                    } else {
                        VolumeMode::Filesystem
                    }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
        .collect();
    let p = new_plan(
        "cold",
        FerryPlanSpec {
            source: PlanSource {
                vsphere: None,
                nbd: Some(NbdSource {}),
            },
            vms,
            start: true,
            ..Default::default()
        },
    );
    create(&client, &p).await;
    let k = Arc::new(kubelet(&server, ferry, dir.path(), None));
    k.spawn();
    let controller = start_controller(client.clone(), Arc::new(NoVsphere));
    let (done, p) = wait_completed(&server, "cold", Duration::from_secs(180)).await;
    assert_done(done, &p, &k);
    assert_eq!(p["status"]["vms"].as_array().unwrap().len(), 3);
    for vm in 0..3 {
        for d in 0..2 {
            let src = &sources[vm * 2 + d];
            let want = dir.path().join(format!("want-{vm}-{d}.raw"));
            ferry_test_kit::nbdcopy(&src.uri(), &want);
            let len = std::fs::metadata(&want).unwrap().len();
            let claim = format!("cold-vm{vm}-disk-{d}");
            let got = if d == 0 {
                k.devices
                    .of(&claim)
                    .expect("a loop device for the block PVC")
            } else {
                k.target(&claim)
            };
            same_bytes(&want, &got, len).unwrap();
            if d == 1 {
                assert_eq!(std::fs::metadata(&got).unwrap().len(), len, "{claim}");
            }
        }
    }
    for di in server.list(FERRY, "diskimports") {
        assert_eq!(di["status"]["phase"], "Succeeded", "{di:#}");
        assert_eq!(di["status"]["restarts"].as_u64().unwrap_or(0), 0, "{di:#}");
    }
    let pods: Vec<String> = server
        .history()
        .iter()
        .filter(|c| c.collection.plural == "pods")
        .map(|c| {
            format!(
                "{} {} {} {}",
                c.kind,
                c.object["metadata"]["name"].as_str().unwrap_or(""),
                c.object["metadata"]["uid"].as_str().unwrap_or(""),
                c.object["status"]["phase"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(
        pods_created(&server).len(),
        6,
        "one pod per disk: {pods:#?}"
    );
    assert_eq!(most_pods_per_pvc(&server), 1, "never two writers on a PVC");
    stop_controller(controller).await;
}

/// A warm vSphere plan: three pre-copy rounds while the guest writes (the fake vCenter
/// records the writes as CBT changes, the fake VDDK serves each snapshot's disk), then
/// a cutover: guest shutdown, the final snapshot, the final round. Each target equals
/// the disk at the final snapshot; every snapshot is gone afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_plan_copies_three_rounds_then_cuts_over_to_the_final_snapshot() {
    let Some(ferry) = ready(false) else { return };
    let dir = tempfile::tempdir().unwrap();
    let world = Arc::new(
        World::start(
            dir.path(),
            &[VmDef {
                name: "web01",
                host: "esx1.example",
                disks: &[16 * MIB, 12 * MIB],
            }],
        )
        .await,
    );
    let (server, client, k, controller) = world
        .run(
            new_plan(
                "warm",
                FerryPlanSpec {
                    source: world.source(),
                    vms: vec![PlanVm {
                        id: Some(uuid_of(0)),
                        ..Default::default()
                    }],
                    warm: true,
                    precopy_interval: Some("1s".into()),
                    start: true,
                    ..Default::default()
                },
            ),
            None,
            None,
            ferry,
            dir.path(),
        )
        .await;
    // Cut over once every disk has copied three rounds.
    let three = server
        .wait_for(Duration::from_secs(180), |s| {
            let dis = s.list(FERRY, "diskimports");
            dis.len() == 2
                && dis.iter().all(|d| {
                    d["status"]["checkpointsCopied"]
                        .as_array()
                        .is_some_and(|c| c.len() >= 3)
                })
        })
        .await;
    assert!(
        three,
        "three rounds were not copied: {:#}\nlogs:\n{}",
        json!(server.list(FERRY, "diskimports")),
        k.logs().join("\n")
    );
    patch_plan(
        &client,
        "warm",
        json!({"spec": {"cutover": jiff::Timestamp::now().to_string()}}),
    )
    .await;
    let (done, p) = wait_completed(&server, "warm", Duration::from_secs(180)).await;
    assert_done(done, &p, &k);
    assert_eq!(
        world.vc.power_state("vm-100").as_deref(),
        Some("poweredOff")
    );
    assert!(
        world.vc.snapshot_tree("vm-100").is_empty(),
        "snapshots left: {:?}",
        world.vc.snapshot_tree("vm-100")
    );
    for (index, key) in [(0, 2000), (1, 2001)] {
        let claim = World::pvc("warm", "web01", index);
        let di = server.get(FERRY, "diskimports", "vms", &claim).unwrap();
        let cps = di["spec"]["checkpoints"].as_array().unwrap();
        assert!(cps.len() >= 4, "3 pre-copy rounds and the final: {cps:?}");
        assert_eq!(di["spec"]["finalCheckpoint"], true);
        assert_eq!(di["status"]["phase"], "Succeeded", "{di:#}");
        let last = cps.last().unwrap()["current"].as_str().unwrap();
        let want = world.snaps.join(format!("{last}-{key}.raw"));
        let got = k.target(&claim);
        let len = std::fs::metadata(&want).unwrap().len();
        same_bytes(&want, &got, len).unwrap();
        // Every delta round copied only what changed: the fake vCenter's CBT answers.
        let deltas = cps.iter().filter(|c| c["previous"] != "").count();
        assert_eq!(deltas, cps.len() - 1, "{cps:?}");
    }
    let rounds: usize = server
        .list(FERRY, "diskimports")
        .iter()
        .map(|d| d["spec"]["checkpoints"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(
        pods_created(&server).len(),
        rounds,
        "one pod per disk and round"
    );
    let calls = world.vc.calls();
    assert!(
        calls
            .iter()
            .filter(|c| c.starts_with("QueryChangedDiskAreas") && !c.contains("changeId=*"))
            .count()
            >= 6,
        "delta rounds ask CBT: {calls:#?}"
    );
    assert!(
        calls.iter().any(|c| c.starts_with("ShutdownGuest")),
        "{calls:#?}"
    );
    assert_eq!(most_pods_per_pvc(&server), 1, "never two writers on a PVC");
    stop_controller(controller).await;
}

/// Two VMs copying (one named by name, one by UUID); one is canceled mid-round: its pod
/// is deleted (the process stopped), its slot released, its power restored, its PVC
/// kept; the other completes byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canceling_one_vm_mid_round_stops_its_pod_and_restores_it_while_the_other_completes() {
    let Some(ferry) = ready(false) else { return };
    let dir = tempfile::tempdir().unwrap();
    let world = Arc::new(
        World::start(
            dir.path(),
            &[
                VmDef {
                    name: "keep",
                    host: "esx1.example",
                    disks: &[24 * MIB],
                },
                VmDef {
                    name: "drop",
                    host: "esx1.example",
                    disks: &[64 * MIB],
                },
            ],
        )
        .await,
    );
    // 8 MiB/s: the 64 MiB disk takes 8 s, long enough to be canceled mid-copy.
    let (server, client, k, controller) = world
        .run(
            new_plan(
                "wave",
                FerryPlanSpec {
                    source: world.source(),
                    vms: vec![
                        // One VM by name (looked up in vCenter's inventory), one by UUID.
                        PlanVm {
                            name: Some("keep".into()),
                            ..Default::default()
                        },
                        PlanVm {
                            id: Some(uuid_of(1)),
                            ..Default::default()
                        },
                    ],
                    start: true,
                    ..Default::default()
                },
            ),
            Some("8M"),
            None,
            ferry,
            dir.path(),
        )
        .await;
    let drop_pvc = World::pvc("wave", "drop", 0);
    let copying = server
        .wait_for(Duration::from_secs(60), |s| {
            s.list(CORE, "pods")
                .iter()
                .any(|p| claim_of(p) == drop_pvc && p["status"]["phase"] == "Running")
        })
        .await;
    assert!(copying, "drop's pod never ran:\n{}", k.logs().join("\n"));
    // Progress mid-copy comes from the pod's /metrics (the termination message only
    // comes at the end): some bytes done, not all.
    let scraped = server
        .wait_for(Duration::from_secs(30), |s| {
            s.get(FERRY, "diskimports", "vms", &drop_pvc)
                .is_some_and(|d| {
                    let done = d["status"]["bytesDone"].as_u64().unwrap_or(0);
                    done > 0 && done < 64 * MIB && d["status"]["bytesTotal"] == 64 * MIB
                })
        })
        .await;
    assert!(
        scraped,
        "no progress scraped mid-copy: {:#}",
        server.get(FERRY, "diskimports", "vms", &drop_pvc).unwrap()["status"]
    );
    patch_plan(&client, "wave", json!({"spec": {"cancel": [uuid_of(1)]}})).await;
    let (done, p) = wait_completed(&server, "wave", Duration::from_secs(120)).await;
    assert_done(done, &p, &k);
    let vms = p["status"]["vms"].as_array().unwrap();
    let phase = |name: &str| {
        vms.iter()
            .find(|v| v["name"] == name)
            .map(|v| v["phase"].clone())
    };
    assert_eq!(phase("drop"), Some(json!("Canceled")), "{vms:#?}");
    assert_eq!(phase("keep"), Some(json!("Completed")), "{vms:#?}");
    // The canceled disk: no pod left, no slot held, its PVC kept, the copy unfinished.
    assert!(
        !server
            .list(CORE, "pods")
            .iter()
            .any(|p| claim_of(p) == drop_pvc),
        "the canceled VM's pod is still there"
    );
    let di = server.get(FERRY, "diskimports", "vms", &drop_pvc).unwrap();
    assert_eq!(di["status"]["phase"], "Canceled", "{di:#}");
    assert!(
        di["status"]["slots"]
            .as_array()
            .is_none_or(|s| s.is_empty()),
        "{di:#}"
    );
    let leases = server.list("/apis/coordination.k8s.io/v1", "leases");
    assert!(
        leases.iter().all(|l| !l["metadata"]["name"]
            .as_str()
            .unwrap_or("")
            .contains("slot")),
        "slot Leases left: {leases:#?}"
    );
    assert!(
        server
            .get(CORE, "persistentvolumeclaims", "vms", &drop_pvc)
            .is_some(),
        "the PVC is kept (deleteVolumesOnCancel is false)"
    );
    let partial = k.target(&drop_pvc);
    let drop_live = &world
        .disks
        .values()
        .find(|(vm, ..)| vm == "vm-101")
        .unwrap()
        .2;
    assert!(
        same_bytes(drop_live, &partial, 64 * MIB).is_err(),
        "the canceled copy cannot have finished at 8 MiB/s"
    );
    // The plan shut both VMs down for the cold copy; the canceled one is powered on again.
    assert_eq!(world.vc.power_state("vm-101").as_deref(), Some("poweredOn"));
    assert_eq!(
        world.vc.power_state("vm-100").as_deref(),
        Some("poweredOff")
    );
    // The other VM's disk is whole.
    let keep_live = &world
        .disks
        .values()
        .find(|(vm, ..)| vm == "vm-100")
        .unwrap()
        .2;
    same_bytes(
        keep_live,
        &k.target(&World::pvc("wave", "keep", 0)),
        24 * MIB,
    )
    .unwrap();
    // The canceled pod's process was stopped (SIGTERM, as the kubelet does when its pod
    // is deleted): no container runs any more.
    assert!(
        server
            .wait_for(Duration::from_secs(20), |_| k.running() == 0)
            .await,
        "a container still runs after the cancel"
    );
    stop_controller(controller).await;
}

/// A pod killed (SIGKILL) mid-copy: the kubelet restarts the container, `ferry import`
/// resumes from its journal, the restart is counted in the DiskImport's status, and the
/// target is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_killed_mid_copy_resumes_and_its_restart_is_counted() {
    let Some(ferry) = ready(false) else { return };
    let dir = tempfile::tempdir().unwrap();
    let world = Arc::new(
        World::start(
            dir.path(),
            &[VmDef {
                name: "db01",
                host: "esx1.example",
                disks: &[48 * MIB],
            }],
        )
        .await,
    );
    // 12 MiB/s: 4 s for the disk; killed after 2 s.
    let (server, _, k, controller) = world
        .run(
            new_plan(
                "crash",
                FerryPlanSpec {
                    source: world.source(),
                    vms: vec![PlanVm {
                        id: Some(uuid_of(0)),
                        ..Default::default()
                    }],
                    start: true,
                    ..Default::default()
                },
            ),
            Some("12M"),
            Some(Duration::from_secs(2)),
            ferry,
            dir.path(),
        )
        .await;
    let (done, p) = wait_completed(&server, "crash", Duration::from_secs(120)).await;
    assert_done(done, &p, &k);
    let claim = World::pvc("crash", "db01", 0);
    let di = server.get(FERRY, "diskimports", "vms", &claim).unwrap();
    assert_eq!(di["status"]["phase"], "Succeeded", "{di:#}");
    assert_eq!(di["status"]["restarts"], 1, "{di:#}");
    assert_eq!(
        pods_created(&server).len(),
        1,
        "restarted in place, not replaced"
    );
    let logs = k.logs().join("\n");
    assert!(
        logs.contains("resuming from the journal"),
        "the restarted container did not resume:\n{logs}"
    );
    let live = &world.disks.values().next().unwrap().2;
    same_bytes(live, &k.target(&claim), 48 * MIB).unwrap();
    stop_controller(controller).await;
}

/// 12 VMs on one ESXi host with a per-host cap of 4: never more than 4 import pods
/// running, the cap filled, every disk whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twelve_disks_on_one_host_with_a_cap_of_four_never_run_more_than_four() {
    let Some(ferry) = ready(false) else { return };
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..12).map(|i| format!("app{i:02}")).collect();
    let defs: Vec<VmDef> = names
        .iter()
        .map(|n| VmDef {
            name: n,
            host: "esx7.example",
            disks: &[6 * MIB],
        })
        .collect();
    let world = Arc::new(World::start(dir.path(), &defs).await);
    // 3 MiB/s: each disk takes about 2 s, so four run side by side.
    let (server, _, k, controller) = world
        .run(
            new_plan(
                "fleet",
                FerryPlanSpec {
                    source: world.source(),
                    vms: (0..12)
                        .map(|i| PlanVm {
                            id: Some(uuid_of(i)),
                            ..Default::default()
                        })
                        .collect(),
                    start: true,
                    limits: Limits {
                        per_host_disks: Some(4),
                        per_vcenter_disks: None,
                    },
                    ..Default::default()
                },
            ),
            Some("3M"),
            None,
            ferry,
            dir.path(),
        )
        .await;
    let (done, p) = wait_completed(&server, "fleet", Duration::from_secs(240)).await;
    assert_done(done, &p, &k);
    let most = most_running(&server);
    assert_eq!(most, 4, "at most 4 running, and the cap filled");
    for (file, (_, _, live)) in &world.disks {
        let vm = file.split(' ').nth(1).unwrap().split('/').next().unwrap();
        same_bytes(live, &k.target(&World::pvc("fleet", vm, 0)), 6 * MIB).unwrap();
    }
    assert_eq!(pods_created(&server).len(), 12);
    stop_controller(controller).await;
}

/// Two `ferry-controller run` processes with leader election: one leads, the other
/// waits; the leader is killed (SIGKILL) mid-plan, the other takes the lead once the
/// Lease expires and finishes the plan; never two pods on a PVC, never more than the
/// cap running, every disk whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_controller_replicas_hand_over_when_the_leader_dies() {
    let Some(ferry) = ready(false) else { return };
    let dir = tempfile::tempdir().unwrap();
    let sources: Vec<_> = (0..4)
        .map(|i| {
            ferry_test_kit::Server::nbdkit(
                dir.path(),
                &[
                    "sparse-random",
                    "size=16M",
                    "percent=30",
                    "runlength=262144",
                    &format!("seed={}", 40 + i),
                ],
            )
        })
        .collect();
    let server = Server::start().await;
    let client = client(&server);
    let p = new_plan(
        "ha",
        FerryPlanSpec {
            source: PlanSource {
                vsphere: None,
                nbd: Some(NbdSource {}),
            },
            vms: vec![PlanVm {
                name: Some("vm".into()),
                host: Some("esx1".into()),
                disks: sources
                    .iter()
                    .map(|s| PlanDisk {
                        nbd_uri: Some(s.uri()),
                        capacity: Some("16Mi".into()),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            start: true,
            limits: Limits {
                per_host_disks: Some(1),
                per_vcenter_disks: None,
            },
            ..Default::default()
        },
    );
    create(&client, &p).await;
    let k = Arc::new(kubelet(&server, ferry, dir.path(), None));
    k.spawn();
    let replica = |name: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ferry-controller"))
            .args(["run", "--server", &server.url(), "--http", "127.0.0.1:0"])
            .args(["--identity", name, "--importer-image", "ferry:test"])
            .env("FERRY_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join(format!("{name}.log"))).unwrap())
            .spawn()
            .unwrap()
    };
    let mut a = replica("replica-a");
    let holder = |s: &Server| {
        s.get(
            "/apis/coordination.k8s.io/v1",
            "leases",
            "ferry-system",
            "ferry-controller-leader",
        )
        .map(|l| l["spec"]["holderIdentity"].clone())
        .unwrap_or(Value::Null)
    };
    assert!(
        server
            .wait_for(Duration::from_secs(30), |s| holder(s) == "replica-a")
            .await,
        "replica a did not lead"
    );
    let mut b = replica("replica-b");
    // The leader works until the first disk is done, then dies.
    let first = server
        .wait_for(Duration::from_secs(60), |s| {
            s.list(FERRY, "diskimports")
                .iter()
                .any(|d| d["status"]["phase"] == "Succeeded")
        })
        .await;
    assert!(first, "no disk finished under replica a");
    assert_eq!(
        holder(&server),
        "replica-a",
        "b must not lead while a renews"
    );
    a.kill().unwrap();
    a.wait().unwrap();
    let (done, p) = wait_completed(&server, "ha", Duration::from_secs(120)).await;
    let log = |n: &str| std::fs::read_to_string(dir.path().join(format!("{n}.log"))).unwrap();
    assert!(
        done,
        "the plan did not complete after the hand-over: {:#}\nb's log:\n{}",
        p["status"],
        log("replica-b")
    );
    assert_eq!(holder(&server), "replica-b");
    assert!(log("replica-b").contains("leading"), "{}", log("replica-b"));
    assert!(
        most_running(&server) <= 1,
        "the cap held across the hand-over"
    );
    assert_eq!(most_pods_per_pvc(&server), 1, "never two writers on a PVC");
    assert_eq!(
        pods_created(&server).len(),
        4,
        "one pod per disk, none twice"
    );
    for (i, src) in sources.iter().enumerate() {
        let want = dir.path().join(format!("want{i}.raw"));
        ferry_test_kit::nbdcopy(&src.uri(), &want);
        same_bytes(&want, &k.target(&format!("ha-vm-disk-{i}")), 16 * MIB).unwrap();
    }
    let _ = b.kill();
    let _ = b.wait();
}
