//! The whole controller (`reconcile::run`: kube-runtime's controllers, the stores, the
//! finalizer, Lease slots, events) against the test API server (`tests/fake-apiserver`),
//! with a minimal kubelet that runs no process: it binds each import pod, reports it
//! running, then terminated with exit 0 and CDI's termination message. What this proves
//! is the loop: plan → DiskImports → PVCs → pods one at a time within the per-host cap →
//! status → Completed, and deletion through the finalizer. `scenarios.rs` runs real
//! `ferry import` processes.

use std::sync::Arc;
use std::time::Duration;

use fake_apiserver::Server;
use ferry_controller::crd::{
    FerryPlan, FerryPlanSpec, Limits, NbdSource, PlanDisk, PlanSource, PlanVm, VolumeMode,
};
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use serde_json::{Value, json};

mod common;
use common::*;

/// Bind pending pods, run them for a moment, end them with exit 0.
async fn kubelet(server: Server) {
    loop {
        for mut pod in server.list(CORE, "pods") {
            let phase = pod["status"]["phase"].as_str().map(str::to_string);
            match phase.as_deref() {
                None => {
                    pod["spec"]["nodeName"] = json!("node-1");
                    pod["status"] = json!({"phase": "Running", "containerStatuses": [
                        {"name": "importer", "ready": true, "restartCount": 0, "image": "ferry:test", "imageID": "", "state": {"running": {"startedAt": "2026-12-03T00:00:00Z"}}}]});
                    server.put(CORE, "pods", pod);
                }
                Some("Running") => {
                    let msg = r#"{"scratchSpaceRequired":false,"preallocationApplied":false,"message":"Import Complete"}"#;
                    pod["status"] = json!({"phase": "Succeeded", "containerStatuses": [
                        {"name": "importer", "ready": false, "restartCount": 0, "image": "ferry:test", "imageID": "",
                         "state": {"terminated": {"exitCode": 0, "reason": "Completed", "message": msg}}}]});
                    server.put(CORE, "pods", pod);
                }
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

fn plan() -> FerryPlan {
    let disk = |uri: &str, mode| PlanDisk {
        nbd_uri: Some(uri.into()),
        capacity: Some("1Gi".into()),
        volume_mode: Some(mode),
        ..Default::default()
    };
    let mut p = FerryPlan::new(
        "lab",
        FerryPlanSpec {
            source: PlanSource {
                vsphere: None,
                nbd: Some(NbdSource {}),
            },
            vms: vec![PlanVm {
                name: Some("lab01".into()),
                disks: vec![
                    disk("nbd://10.0.0.5:10809/root", VolumeMode::Block),
                    disk("nbd://10.0.0.5:10809/data", VolumeMode::Filesystem),
                ],
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
    p.metadata.namespace = Some("vms".into());
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_nbd_plan_runs_to_completed_one_pod_at_a_time_and_deletes_through_its_finalizer() {
    let server = Server::start().await;
    let config = kube::Config::new(server.url().parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    let plans: Api<FerryPlan> = Api::namespaced(client.clone(), "vms");
    plans.create(&PostParams::default(), &plan()).await.unwrap();

    tokio::spawn(kubelet(server.clone()));
    let (stop_tx, controller) = start_controller(client.clone(), Arc::new(NoVsphere));

    let (done, p) = wait_completed(&server, "lab", Duration::from_secs(60)).await;
    assert!(done, "the plan did not complete: {:#}", p["status"]);
    assert_eq!(p["status"]["vmsSummary"], "1/1 (S:1/F:0/C:0)");
    assert_eq!(p["status"]["progress"], "100.0% (2/2 GB)");
    assert_eq!(p["metadata"]["finalizers"], json!(["ferry.dev/cleanup"]));

    // Two DiskImports, owned by the plan, both Succeeded; their PVCs made with the
    // right modes and sizes (CDI's filesystem overhead on the second).
    let dis = server.list(FERRY, "diskimports");
    assert_eq!(dis.len(), 2);
    for d in &dis {
        assert_eq!(d["status"]["phase"], "Succeeded", "{d:#}");
        assert_eq!(d["metadata"]["ownerReferences"][0]["kind"], "FerryPlan");
    }
    let pvc = |n: &str| {
        server
            .get(CORE, "persistentvolumeclaims", "vms", n)
            .unwrap_or_else(|| panic!("no PVC {n}"))
    };
    assert_eq!(pvc("lab-lab01-disk-0")["spec"]["volumeMode"], "Block");
    assert_eq!(
        pvc("lab-lab01-disk-0")["spec"]["resources"]["requests"]["storage"],
        json!((1u64 << 30).to_string())
    );
    assert_eq!(pvc("lab-lab01-disk-1")["spec"]["volumeMode"], "Filesystem");
    assert_eq!(
        pvc("lab-lab01-disk-1")["spec"]["resources"]["requests"]["storage"],
        json!((1084u64 << 20).to_string())
    );

    // Both disks are on one NBD server with a cap of 1: never two pods at once.
    let created: Vec<String> = server
        .history()
        .iter()
        .filter(|c| c.collection.plural == "pods" && c.kind == "ADDED")
        .map(|c| {
            c.object["metadata"]["name"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(created.len(), 2, "{created:?}");
    assert_eq!(most_running(&server), 1);
    let pod_env = server
        .history()
        .iter()
        .find(|c| c.collection.plural == "pods" && c.kind == "ADDED")
        .map(|c| c.object["spec"]["containers"][0]["env"].clone())
        .unwrap();
    assert!(
        pod_env
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "IMPORTER_SOURCE" && e["value"] == "nbd")
    );
    // Slots were taken and given back.
    assert!(
        server
            .history()
            .iter()
            .any(|c| c.collection.plural == "leases" && c.kind == "ADDED")
    );
    assert!(
        server
            .list("/apis/coordination.k8s.io/v1", "leases")
            .is_empty(),
        "slots left: {:?}",
        server.list("/apis/coordination.k8s.io/v1", "leases")
    );
    // Finished pods are deleted (not retained).
    assert!(
        server
            .wait_for(Duration::from_secs(10), |s| s.list(CORE, "pods").is_empty())
            .await,
        "pods left: {:?}",
        server.list(CORE, "pods")
    );

    // Deleting the plan runs the finalizer; the DiskImports go with it, the PVCs stay.
    plans.delete("lab", &DeleteParams::default()).await.unwrap();
    let gone = server
        .wait_for(Duration::from_secs(30), |s| {
            s.get(FERRY, "ferryplans", "vms", "lab").is_none()
                && s.list(FERRY, "diskimports").is_empty()
        })
        .await;
    assert!(
        gone,
        "plan: {:?}",
        server.get(FERRY, "ferryplans", "vms", "lab")
    );
    assert_eq!(
        server.list(CORE, "persistentvolumeclaims").len(),
        2,
        "volumes outlive the plan"
    );
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(15), controller).await;
}

/// A warm plan against the fake vCenter, through the real controller: the first round
/// full, then (the cutover being due) the guest shut down, the final snapshot, a delta
/// round chained by change ID, every snapshot removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_vsphere_plan_snapshots_cuts_over_and_completes() {
    use fake_vcenter::{FakeVcenter, Inventory, Options};
    use ferry_controller::crd::VsphereSource;
    const UUID: &str = "5012aaaa-0000-0000-0000-000000000001";
    let inv: Inventory = serde_json::from_value(json!({
        "user": "administrator@vsphere.local", "password": "pw",
        "datacenters": [{"name": "dc1", "vms": [
            {"moref": "vm-123", "name": "web01", "instance_uuid": UUID, "power_state": "poweredOn", "host": "esx12.example",
             "disks": [
                 {"key": 2000, "file_name": "[ds1] web01/web01.vmdk", "capacity_bytes": 1073741824u64, "change_id": "52 de-66 77/81"},
                 {"key": 2001, "file_name": "[ds2] web01/data.vmdk", "capacity_bytes": 1073741824u64, "change_id": "52 df-66 78/9"}
             ]}]}]
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
    let server = Server::start().await;
    // The credentials, as the plan's Secret (base64 data, as the API serves it).
    server.put(
        CORE,
        "secrets",
        json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "vc", "namespace": "vms"},
        "data": {"accessKeyId": "YWRtaW5pc3RyYXRvckB2c3BoZXJlLmxvY2Fs", "secretKey": "cHc="}}),
    );
    let client = kube::Client::try_from(kube::Config::new(server.url().parse().unwrap())).unwrap();
    let plans: Api<FerryPlan> = Api::namespaced(client.clone(), "vms");
    let mut p = FerryPlan::new(
        "wave1",
        FerryPlanSpec {
            source: PlanSource {
                vsphere: Some(VsphereSource {
                    url: vc.endpoint(),
                    secret_ref: "vc".into(),
                    thumbprint: Some(vc.thumbprint().to_string()),
                    vddk_image: "vddk:8".into(),
                    ..Default::default()
                }),
                nbd: None,
            },
            vms: vec![PlanVm {
                id: Some(UUID.into()),
                ..Default::default()
            }],
            warm: true,
            start: true,
            // Due already: the cutover follows the first (full) round.
            cutover: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                jiff::Timestamp::now(),
            )),
            ..Default::default()
        },
    );
    p.metadata.namespace = Some("vms".into());
    plans.create(&PostParams::default(), &p).await.unwrap();
    tokio::spawn(kubelet(server.clone()));
    let (stop_tx, controller) = start_controller(
        client.clone(),
        Arc::new(ferry_controller::vsphere::Vcenter::default()),
    );
    let (done, p) = wait_completed(&server, "wave1", Duration::from_secs(120)).await;
    assert!(
        done,
        "the plan did not complete: {:#}\nvCenter calls: {:?}",
        p["status"],
        vc.calls()
    );
    let vm = &p["status"]["vms"][0];
    assert_eq!(vm["round"], 2, "{vm:#}");
    assert_eq!(
        vc.power_state("vm-123").as_deref(),
        Some("poweredOff"),
        "shut down at cutover"
    );
    assert!(
        vc.snapshot_tree("vm-123").is_empty(),
        "snapshots left: {:?}",
        vc.snapshot_tree("vm-123")
    );
    // Each disk: round 1 a full copy of the first snapshot, round 2 (final) a delta from
    // that snapshot's change ID; one pod per round, VDDK's environment.
    for d in server.list(FERRY, "diskimports") {
        let cps = d["spec"]["checkpoints"].as_array().unwrap().clone();
        assert_eq!(cps.len(), 2, "{d:#}");
        assert_eq!(cps[0]["previous"], "");
        assert!(
            cps[1]["previous"].as_str().is_some_and(|c| c.contains('/')),
            "a change ID: {cps:?}"
        );
        assert_eq!(d["spec"]["finalCheckpoint"], true);
        assert_eq!(
            d["status"]["phase"], "Succeeded",
            "{d:#}\nplan: {:#}",
            p["status"]
        );
        assert_eq!(
            d["status"]["checkpointsCopied"].as_array().unwrap().len(),
            2
        );
    }
    let pods: Vec<Value> = server
        .history()
        .iter()
        .filter(|c| c.collection.plural == "pods" && c.kind == "ADDED")
        .map(|c| c.object.clone())
        .collect();
    assert_eq!(pods.len(), 4, "two rounds of two disks");
    let env = |pod: &Value, name: &str| {
        pod["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .map(|e| e["value"].clone())
    };
    let last = pods
        .iter()
        .find(|p| env(p, "IMPORTER_FINAL_CHECKPOINT") == Some(json!("true")))
        .expect("a final-round pod");
    assert_eq!(env(last, "IMPORTER_SOURCE"), Some(json!("vddk")));
    assert_eq!(env(last, "IMPORTER_UUID"), Some(json!(UUID)));
    assert_eq!(last["spec"]["initContainers"][0]["image"], "vddk:8");
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(15), controller).await;
}
