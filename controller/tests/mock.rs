//! The reconcilers' API calls, against a scripted API server (`tower-test`): a given
//! state produces exactly these requests, in this order.

use std::sync::Arc;

mod common;
use common::NoVsphere;

use ferry_controller::crd::{
    DiskImport, DiskImportSpec, DiskImportStatus, DiskPhase, DiskSource, FerryPlan, PvcTarget,
};
use ferry_controller::pod::PodDefaults;
use ferry_controller::reconcile::{Context, disk, plan, reporter, scrape::Scraper};
use http::{Method, Request, Response};
use jiff::Timestamp;
use kube::client::Body;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::{Client, Resource};
use serde_json::{Value, json};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

fn now() -> Timestamp {
    Timestamp::from_second(1_800_000_000).unwrap()
}

fn disk_import() -> DiskImport {
    let mut d = DiskImport::new(
        "web-disk-0",
        DiskImportSpec {
            source: DiskSource {
                vddk: None,
                nbd: Some("nbd://10.0.0.5:10809/a".into()),
            },
            source_key: "10.0.0.5:10809".into(),
            per_host_limit: Some(1),
            pvc: PvcTarget {
                name: "web-disk-0".into(),
                ..Default::default()
            },
            capacity: 1 << 30,
            ..Default::default()
        },
    );
    d.metadata.namespace = Some("vms".into());
    d.metadata.uid = Some("uid-di".into());
    d.metadata.resource_version = Some("7".into());
    d
}

fn context(client: Client, disks: Vec<DiskImport>) -> Arc<Context> {
    let (pods, _pw) = reflector::store();
    let (store, mut writer): (Store<DiskImport>, _) = reflector::store();
    for d in disks {
        writer.apply_watcher_event(&watcher::Event::Apply(d));
    }
    std::mem::forget(writer);
    std::mem::forget(_pw);
    Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter("test")),
        client,
        pods,
        disks: store,
        defaults: PodDefaults {
            image: "ferry:test".into(),
            verbosity: 1,
            pull_policy: "IfNotPresent".into(),
        },
        lease_namespace: "ferry-system".into(),
        identity: "test".into(),
        vsphere: Arc::new(NoVsphere),
        scraper: Scraper::default(),
        now,
        written: Default::default(),
    })
}

async fn expect(
    handle: &mut Handle,
    method: Method,
    path: &str,
    status: u16,
    reply: Value,
) -> Value {
    let (req, send) = handle.next_request().await.expect("a request");
    assert_eq!(
        (req.method(), req.uri().path()),
        (&method, path),
        "{} {}",
        req.method(),
        req.uri()
    );
    let body = req.into_body().collect_bytes().await.unwrap();
    send.send_response(
        Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(&reply).unwrap()))
            .unwrap(),
    );
    if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).unwrap()
    }
}

fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"})
}

fn conflict() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "AlreadyExists", "code": 409, "message": "exists"})
}

#[tokio::test]
async fn a_new_disk_takes_a_slot_creates_its_pod_and_writes_status() {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, "default");
    let di = disk_import();
    let ctx = context(client, vec![di.clone()]);
    let server = tokio::spawn(async move {
        expect(&mut handle, Method::GET, "/api/v1/namespaces/vms/persistentvolumeclaims/web-disk-0", 200, json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "web-disk-0"}})).await;
        let lease = expect(&mut handle, Method::POST, "/apis/coordination.k8s.io/v1/namespaces/ferry-system/leases", 201, json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "ferry-slot-host-10-0-0-5-10809-0"}})).await;
        assert_eq!(
            lease["metadata"]["name"],
            "ferry-slot-host-10-0-0-5-10809-0"
        );
        assert_eq!(lease["spec"]["holderIdentity"], "vms/web-disk-0/uid-di");
        let event = expect(&mut handle, Method::POST, "/apis/events.k8s.io/v1/namespaces/vms/events", 201, json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"}, "eventTime": null})).await;
        assert_eq!(event["reason"], "RoundStarted");
        let pod = expect(
            &mut handle,
            Method::POST,
            "/api/v1/namespaces/vms/pods",
            201,
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "importer-web-disk-0"}}),
        )
        .await;
        assert_eq!(pod["metadata"]["name"], "importer-web-disk-0");
        assert_eq!(pod["metadata"]["ownerReferences"][0]["uid"], "uid-di");
        let status = expect(
            &mut handle,
            Method::PATCH,
            "/apis/ferry.dev/v1alpha1/namespaces/vms/diskimports/web-disk-0/status",
            200,
            serde_json::to_value(disk_import()).unwrap(),
        )
        .await;
        assert_eq!(status[0]["op"], "add");
        assert_eq!(status[0]["path"], "/status");
        assert_eq!(status[0]["value"]["phase"], "Scheduled");
        assert_eq!(
            status[0]["value"]["slots"],
            json!(["ferry-slot-host-10-0-0-5-10809-0"])
        );
    });
    let action = disk::reconcile(Arc::new(di), ctx).await.unwrap();
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(std::time::Duration::from_secs(2))
    );
    server.await.unwrap();
}

#[tokio::test]
async fn a_slot_another_controller_holds_makes_the_disk_wait_without_a_pod() {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, "default");
    let di = disk_import();
    let ctx = context(client, vec![di.clone()]);
    let server = tokio::spawn(async move {
        expect(&mut handle, Method::GET, "/api/v1/namespaces/vms/persistentvolumeclaims/web-disk-0", 200, json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "web-disk-0"}})).await;
        expect(
            &mut handle,
            Method::POST,
            "/apis/coordination.k8s.io/v1/namespaces/ferry-system/leases",
            409,
            conflict(),
        )
        .await;
        // Held, unexpired, by a disk this controller does not see (another
        // controller's): it is waited out, never taken over.
        let held = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "ferry-slot-host-10-0-0-5-10809-0", "resourceVersion": "3"},
            "spec": {"holderIdentity": "other/disk/uid-x", "leaseDurationSeconds": 300,
                     "acquireTime": "2027-01-15T07:59:00.000000Z", "renewTime": "2027-01-15T08:00:00.000000Z"}});
        expect(&mut handle, Method::GET, "/apis/coordination.k8s.io/v1/namespaces/ferry-system/leases/ferry-slot-host-10-0-0-5-10809-0", 200, held).await;
        let status = expect(
            &mut handle,
            Method::PATCH,
            "/apis/ferry.dev/v1alpha1/namespaces/vms/diskimports/web-disk-0/status",
            200,
            serde_json::to_value(disk_import()).unwrap(),
        )
        .await;
        assert_eq!(status[0]["value"]["phase"], "Waiting");
        assert!(status[0]["value"].get("slots").is_none());
    });
    disk::reconcile(Arc::new(di), ctx).await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn a_new_plan_first_gets_its_finalizer_and_nothing_else() {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, "default");
    let mut p = FerryPlan::new("wave1", Default::default());
    p.metadata.namespace = Some("vms".into());
    p.metadata.uid = Some("uid-p".into());
    let ctx = context(client, vec![]);
    let server = tokio::spawn(async move {
        let patch = expect(
            &mut handle,
            Method::PATCH,
            "/apis/ferry.dev/v1alpha1/namespaces/vms/ferryplans/wave1",
            200,
            serde_json::to_value(FerryPlan::new("wave1", Default::default())).unwrap(),
        )
        .await;
        assert_eq!(patch[0]["op"], "test");
        assert_eq!(patch[1]["value"], json!(["ferry.dev/cleanup"]));
    });
    let action = plan::reconcile(Arc::new(p), ctx).await.unwrap();
    assert_eq!(action, kube::runtime::controller::Action::await_change());
    server.await.unwrap();
    let _ = (
        DiskPhase::Pending,
        DiskImportStatus::default(),
        not_found(),
        FerryPlan::api_version(&()),
    );
}
