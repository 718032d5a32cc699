//! The test API server behaves as the real one does where the controller depends on
//! it, checked through kube-rs: optimistic concurrency, the status subresource,
//! finalizers, owner-reference cascade, watches from a resourceVersion.

use std::time::Duration;

use fake_apiserver::Server;
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

async fn client(server: &Server) -> Client {
    Client::try_from(kube::Config::new(server.url().parse().unwrap())).unwrap()
}

fn cm(name: &str) -> ConfigMap {
    serde_json::from_value(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"a": "1"}})).unwrap()
}

fn code(e: kube::Error) -> u16 {
    match e {
        kube::Error::Api(s) => s.code,
        other => panic!("not an API error: {other}"),
    }
}

#[tokio::test]
async fn a_stale_replace_and_a_second_create_are_conflicts() {
    let server = Server::start().await;
    let api: Api<ConfigMap> = Api::namespaced(client(&server).await, "ns");
    let a = api.create(&PostParams::default(), &cm("a")).await.unwrap();
    assert_eq!(
        code(
            api.create(&PostParams::default(), &cm("a"))
                .await
                .unwrap_err()
        ),
        409
    );
    let mut b = a.clone();
    b.data = Some([("a".to_string(), "2".to_string())].into());
    let b = api.replace("a", &PostParams::default(), &b).await.unwrap();
    assert_ne!(a.resource_version(), b.resource_version());
    // Replacing from the first version again loses the race.
    assert_eq!(
        code(
            api.replace("a", &PostParams::default(), &a)
                .await
                .unwrap_err()
        ),
        409
    );
    assert_eq!(code(api.get("missing").await.unwrap_err()), 404);
}

#[tokio::test]
async fn finalizers_hold_a_delete_and_owned_objects_go_with_their_owner() {
    let server = Server::start().await;
    let api: Api<ConfigMap> = Api::namespaced(client(&server).await, "ns");
    let mut owner = cm("owner");
    owner.metadata.finalizers = Some(vec!["test/hold".into()]);
    let owner = api.create(&PostParams::default(), &owner).await.unwrap();
    let mut child = cm("child");
    child.metadata.owner_references = Some(vec![
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            name: "owner".into(),
            uid: owner.uid().unwrap(),
            ..Default::default()
        },
    ]);
    api.create(&PostParams::default(), &child).await.unwrap();
    api.delete("owner", &DeleteParams::default()).await.unwrap();
    let held = api.get("owner").await.unwrap();
    assert!(
        held.metadata.deletion_timestamp.is_some(),
        "held by its finalizer"
    );
    assert!(api.get("child").await.is_ok(), "the owner is not gone yet");
    // Removing the finalizer (kube-runtime's JSON patch shape) lets it go, and its child.
    let p: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/finalizers/0", "value": "test/hold"},
        {"op": "remove", "path": "/metadata/finalizers/0"}
    ]))
    .unwrap();
    api.patch("owner", &PatchParams::default(), &Patch::Json::<()>(p))
        .await
        .unwrap();
    assert_eq!(code(api.get("owner").await.unwrap_err()), 404);
    assert_eq!(code(api.get("child").await.unwrap_err()), 404);
    // A failing `test` is refused whole.
    api.create(&PostParams::default(), &cm("c")).await.unwrap();
    let bad: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/data/a", "value": "nope"},
        {"op": "replace", "path": "/data/a", "value": "3"}
    ]))
    .unwrap();
    assert_eq!(
        code(
            api.patch("c", &PatchParams::default(), &Patch::Json::<()>(bad))
                .await
                .unwrap_err()
        ),
        422
    );
    assert_eq!(api.get("c").await.unwrap().data.unwrap()["a"], "1");
}

#[tokio::test]
async fn the_status_subresource_and_the_main_endpoint_write_their_own_parts() {
    let server = Server::start().await;
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client(&server).await, "ns");
    let pod = serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"x": "1"}},
        "spec": {"containers": [{"name": "c", "image": "i"}]}, "status": {"phase": "Running"}}),
    )
    .unwrap();
    let p = pods.create(&PostParams::default(), &pod).await.unwrap();
    assert!(p.status.is_none(), "a create never writes .status");
    let merge = |v| Patch::Merge(v);
    pods.patch_status(
        "p",
        &PatchParams::default(),
        &merge(json!({"status": {"phase": "Succeeded"}, "metadata": {"labels": {"x": "2"}}})),
    )
    .await
    .unwrap();
    let p = pods.get("p").await.unwrap();
    assert_eq!(p.status.unwrap().phase.as_deref(), Some("Succeeded"));
    assert_eq!(
        p.metadata.labels.unwrap()["x"],
        "1",
        "/status writes only .status"
    );
    pods.patch(
        "p",
        &PatchParams::default(),
        &merge(json!({"status": {"phase": "Failed"}})),
    )
    .await
    .unwrap();
    assert_eq!(
        pods.get("p")
            .await
            .unwrap()
            .status
            .unwrap()
            .phase
            .as_deref(),
        Some("Succeeded"),
        "the main endpoint never writes .status"
    );
    // Label selectors.
    let l = pods
        .list(&kube::api::ListParams::default().labels("x=1"))
        .await
        .unwrap();
    assert_eq!(l.items.len(), 1);
    assert!(
        pods.list(&kube::api::ListParams::default().labels("x!=1"))
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn a_watch_from_a_version_sees_only_later_changes_in_order() {
    let server = Server::start().await;
    let api: Api<ConfigMap> = Api::namespaced(client(&server).await, "ns");
    api.create(&PostParams::default(), &cm("before"))
        .await
        .unwrap();
    let list = api.list(&Default::default()).await.unwrap();
    let rv = list.metadata.resource_version.unwrap();
    let mut w = api
        .watch(&WatchParams::default().timeout(5), &rv)
        .await
        .unwrap()
        .boxed();
    api.create(&PostParams::default(), &cm("after"))
        .await
        .unwrap();
    api.delete("before", &DeleteParams::default())
        .await
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(5), w.next())
            .await
            .expect("an event")
            .expect("open")
            .unwrap()
        {
            WatchEvent::Added(o) => seen.push(format!("added {}", o.name_any())),
            WatchEvent::Deleted(o) => seen.push(format!("deleted {}", o.name_any())),
            WatchEvent::Bookmark(_) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(seen, ["added after", "deleted before"]);
}

#[tokio::test]
async fn leader_election_follows_renews_takes_over_when_expired_and_hands_over_on_release() {
    use ferry_controller::reconcile::leader::{LEASE_SECONDS, Leadership, release, try_lead};
    let server = Server::start().await;
    let c = client(&server).await;
    let t0 = jiff::Timestamp::now();
    let at = |s: i64| t0 + jiff::SignedDuration::from_secs(s);
    assert_eq!(
        try_lead(&c, "sys", "a", at(0)).await.unwrap(),
        Leadership::Leading
    );
    assert_eq!(
        try_lead(&c, "sys", "b", at(1)).await.unwrap(),
        Leadership::Following
    );
    assert_eq!(
        try_lead(&c, "sys", "a", at(5)).await.unwrap(),
        Leadership::Leading,
        "renewed"
    );
    let expiry = i64::from(LEASE_SECONDS);
    assert_eq!(
        try_lead(&c, "sys", "b", at(5 + expiry - 1)).await.unwrap(),
        Leadership::Following,
        "not expired yet"
    );
    assert_eq!(
        try_lead(&c, "sys", "b", at(5 + expiry + 1)).await.unwrap(),
        Leadership::Leading,
        "taken over once expired"
    );
    // a, back, follows; b releases on a clean stop and a takes over at its next try.
    assert_eq!(
        try_lead(&c, "sys", "a", at(5 + expiry + 2)).await.unwrap(),
        Leadership::Following
    );
    release(&c, "sys", "a").await.unwrap();
    assert_eq!(
        try_lead(&c, "sys", "a", at(5 + expiry + 3)).await.unwrap(),
        Leadership::Following,
        "releasing what another holds does nothing"
    );
    release(&c, "sys", "b").await.unwrap();
    let lease = server
        .get(
            "/apis/coordination.k8s.io/v1",
            "leases",
            "sys",
            "ferry-controller-leader",
        )
        .unwrap();
    assert!(lease["spec"]["holderIdentity"].is_null(), "{lease:#}");
    assert_eq!(lease["spec"]["leaseTransitions"], 1, "{lease:#}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        try_lead(
            &c,
            "sys",
            "a",
            jiff::Timestamp::now() + jiff::SignedDuration::from_secs(1)
        )
        .await
        .unwrap(),
        Leadership::Leading,
        "a released Lease is free after a second"
    );
}
