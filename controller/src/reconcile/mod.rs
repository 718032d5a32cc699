//! The reconcilers: observe (stores, the API, vSphere, pods' `/metrics`), ask the
//! [`crate::planner`], act, write status. Nothing here decides.
//!
//! - [`disk`]: one DiskImport (its PVC, slots, pods, status).
//! - [`plan`]: one FerryPlan (its DiskImports, vSphere snapshots and power, status;
//!   a finalizer cleans up on deletion).
//! - [`slots`]: the per-host and per-vCenter limits as Lease slots.
//! - [`leader`]: one replica leads at a time (a Lease), the others wait.

pub mod disk;
pub mod leader;
pub mod plan;
pub mod scrape;
pub mod slots;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};

use crate::crd::{DiskImport, FerryPlan};
use crate::pod::{PodDefaults, labels};
use crate::vsphere::VsphereOps;

/// The finalizer on plans.
pub const FINALIZER: &str = "ferry.dev/cleanup";
/// Field manager of the controller's writes.
pub const MANAGER: &str = "ferry-controller";
/// Retry after an error.
pub const ERROR_BACKOFF: Duration = Duration::from_secs(5);

/// What went wrong in a reconcile (the runtime retries after [`ERROR_BACKOFF`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A pod or PVC could not be built.
    #[error(transparent)]
    Build(#[from] crate::pod::BuildError),
    /// The finalizer machinery.
    #[error("finalizer: {0}")]
    Finalizer(String),
    /// vSphere.
    #[error("vSphere: {0}")]
    Vsphere(String),
    /// An object without a name or namespace.
    #[error("the object has no {0}")]
    Metadata(&'static str),
    /// Cleanup is not finished yet (deletion waits for it).
    #[error("cleanup in progress: {0}")]
    CleanupPending(String),
}

/// Shared by every reconcile.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Every import pod (label `app.kubernetes.io/name=ferry-importer`).
    pub pods: Store<Pod>,
    /// Every DiskImport.
    pub disks: Store<DiskImport>,
    /// Pod defaults (image, verbosity).
    pub defaults: PodDefaults,
    /// Namespace of the slot Leases.
    pub lease_namespace: String,
    /// This replica's name (Lease holder).
    pub identity: String,
    /// Event recorder.
    pub recorder: Recorder,
    /// vSphere.
    pub vsphere: Arc<dyn VsphereOps>,
    /// `/metrics` clients.
    pub scraper: scrape::Scraper,
    /// The clock (tests may move it).
    pub now: fn() -> Timestamp,
    /// Statuses this controller wrote that its stores may not show yet.
    pub written: StatusCache,
}

/// The statuses last written, by object uid. This controller is the only writer of its
/// kinds' statuses, so until a store shows exactly the status written, the store is
/// behind the write (its watch event not seen yet; the reconcile was triggered by
/// another event, or the store holds a version older than the write, e.g. a spec
/// change made just before it) and the written status is the one to plan from. Without
/// this, a pod deleted after its round was recorded was created again (seen in the
/// 3 VMs × 2 disks scenario: a stale `Running` status with the pod gone reads as a
/// vanished pod).
#[derive(Debug, Default)]
pub struct StatusCache(std::sync::Mutex<std::collections::HashMap<String, serde_json::Value>>);

/// Most entries kept (the map is emptied past this; entries are only an optimisation
/// over the store, which catches up).
pub const MAX_WRITTEN: usize = 65_536;

impl StatusCache {
    /// The status to plan from for an object whose store copy has status `own`: the
    /// written one until the store shows it, then the store's own.
    pub fn current<S: serde::Serialize + serde::de::DeserializeOwned>(
        &self,
        uid: &str,
        own: Option<S>,
    ) -> Option<S> {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let Some(written) = m.get(uid) else {
            return own;
        };
        let own_value = own.as_ref().and_then(|o| serde_json::to_value(o).ok());
        if own_value.as_ref() == Some(written) {
            m.remove(uid);
            return own;
        }
        serde_json::from_value(written.clone()).ok().or(own)
    }

    /// Record a status written.
    pub fn wrote<S: serde::Serialize>(&self, uid: &str, status: &S) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= MAX_WRITTEN {
            m.clear();
        }
        if let Ok(v) = serde_json::to_value(status) {
            m.insert(uid.to_string(), v);
        }
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// Publish an event on `obj` (failures are logged, never fatal).
    pub async fn event<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        warning: bool,
        reason: &str,
        note: &str,
    ) {
        let ev = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: reason.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &obj.object_ref(&())).await {
            tracing::debug!(error = %e, reason, "cannot publish an event");
        }
    }
}

/// The reporter events are published as.
pub fn reporter(identity: &str) -> Reporter {
    Reporter {
        controller: MANAGER.into(),
        instance: Some(identity.into()),
    }
}

/// Run both controllers until `shutdown` resolves. `namespace` limits the watch
/// (`None`: every namespace).
pub async fn run(
    client: Client,
    namespace: Option<String>,
    defaults: PodDefaults,
    lease_namespace: String,
    identity: String,
    vsphere: Arc<dyn VsphereOps>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let api = |c: &Client| -> (Api<DiskImport>, Api<FerryPlan>, Api<Pod>) {
        match &namespace {
            Some(ns) => (
                Api::namespaced(c.clone(), ns),
                Api::namespaced(c.clone(), ns),
                Api::namespaced(c.clone(), ns),
            ),
            None => (
                Api::all(c.clone()),
                Api::all(c.clone()),
                Api::all(c.clone()),
            ),
        }
    };
    let (disks_api, plans_api, pods_api) = api(&client);
    let pod_cfg = watcher::Config::default()
        .labels(&format!("{}={}", labels::NAME.0, labels::NAME.1))
        .any_semantic();

    // The pods, kept in a store the reconcilers read (the controllers' own watches only
    // trigger them).
    let (pods, writer) = reflector::store();
    let pod_reflector = watcher(pods_api.clone(), pod_cfg.clone())
        .default_backoff()
        .reflect(writer)
        .for_each(|_| futures::future::ready(()));

    let disk_controller =
        Controller::new(disks_api.clone(), watcher::Config::default().any_semantic())
            .owns(pods_api, pod_cfg)
            .with_config(kube::runtime::controller::Config::default().concurrency(16));
    let disks = disk_controller.store();
    let (shutdown_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter(&identity)),
        client: client.clone(),
        pods,
        disks,
        defaults,
        lease_namespace,
        identity,
        vsphere,
        scraper: scrape::Scraper::default(),
        now: Timestamp::now,
        written: StatusCache::default(),
    });
    let renew = slots::renew_forever(ctx.clone());
    let mut rx1 = shutdown_tx.subscribe();
    let mut rx2 = shutdown_tx.subscribe();
    let disk_run = disk_controller
        .graceful_shutdown_on(async move {
            let _ = rx1.recv().await;
        })
        .run(disk::reconcile, disk::error_policy, ctx.clone())
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "disk reconcile");
            }
        });
    let plan_run = Controller::new(plans_api, watcher::Config::default().any_semantic())
        // DiskImports in the plan's namespace are owned by it; in another (the target)
        // namespace an owner reference cannot point at it, so they are found by labels.
        .watches(
            disks_api,
            watcher::Config::default().any_semantic(),
            plan::plan_of,
        )
        .with_config(kube::runtime::controller::Config::default().concurrency(8))
        .graceful_shutdown_on(async move {
            let _ = rx2.recv().await;
        })
        .run(plan::reconcile, plan::error_policy, ctx.clone())
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "plan reconcile");
            }
        });
    let work = async {
        tokio::select! {
            () = pod_reflector => {}
            () = renew => {}
            ((), ()) = futures::future::join(disk_run, plan_run) => {}
        }
    };
    tokio::pin!(work);
    tokio::select! {
        () = &mut work => {}
        () = shutdown => {
            let _ = shutdown_tx.send(());
            // Let both controllers finish the reconciles in flight.
            let _ = tokio::time::timeout(Duration::from_secs(10), work).await;
        }
    }
}

/// `namespace/name` of an object.
pub fn id_of<K: Resource>(obj: &K) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

/// A JSON patch that sets `/status` whole.
pub fn status_patch<S: serde::Serialize>(
    status: &S,
) -> Result<kube::api::Patch<serde_json::Value>, Error> {
    let value = serde_json::to_value(status)
        .map_err(|e| Error::Finalizer(format!("status does not serialise: {e}")))?;
    let patch: json_patch::Patch = serde_json::from_value(
        serde_json::json!([{ "op": "add", "path": "/status", "value": value }]),
    )
    .map_err(|e| Error::Finalizer(format!("status patch: {e}")))?;
    Ok(kube::api::Patch::Json(patch))
}

#[cfg(test)]
mod tests {
    use super::StatusCache;

    #[test]
    fn a_written_status_stands_until_the_store_shows_it() {
        let c = StatusCache::default();
        c.wrote("u", &"Succeeded".to_string());
        // A store behind the write (any older status) plans from the written one...
        assert_eq!(
            c.current("u", Some("Running".to_string())).as_deref(),
            Some("Succeeded")
        );
        assert_eq!(c.current("u", None::<String>).as_deref(), Some("Succeeded"));
        // ... until it shows it; then the store is trusted again.
        assert_eq!(
            c.current("u", Some("Succeeded".to_string())).as_deref(),
            Some("Succeeded")
        );
        assert_eq!(
            c.current("u", Some("Running".to_string())).as_deref(),
            Some("Running")
        );
        assert_eq!(
            c.current("other", Some("Pending".to_string())).as_deref(),
            Some("Pending")
        );
    }
}
