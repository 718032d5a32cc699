//! One DiskImport: observe its pods (store), PVC, slots and progress; plan; act; write
//! status (progress at most every few seconds).

use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{DeleteParams, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};

use super::{Context, ERROR_BACKOFF, Error, scrape};
use crate::crd::{DiskImport, DiskImportStatus, DiskPhase};
use crate::planner::disk::{DiskAction, DiskInput, Next, next_round, plan_disk, status_to_write};
use crate::planner::observe::PodView;
use crate::planner::slots::{Demand, admit, limits_of};
use crate::pod::{import_pod, import_pvc};

/// The import pods of a DiskImport (from the store).
pub fn pods_of(ctx: &Context, di: &DiskImport) -> Vec<Arc<Pod>> {
    let uid = di.uid().unwrap_or_default();
    let ns = di.namespace();
    ctx.pods.state_filter(|p| {
        p.namespace() == ns
            && p.metadata
                .owner_references
                .as_ref()
                .is_some_and(|o| o.iter().any(|r| r.uid == uid))
    })
}

/// Every disk's claim on the limits, for [`admit`].
pub fn demands(ctx: &Context, now: Timestamp) -> Vec<Demand> {
    ctx.disks
        .state()
        .iter()
        .map(|d| {
            let status = d.status.clone().unwrap_or_default();
            let holding = !status.slots.is_empty();
            let wants = !d.spec.cancel
                && !status.phase.is_terminal()
                && matches!(next_round(&d.spec, &status), Next::Copy(_));
            Demand {
                id: super::id_of(d.as_ref()),
                limits: limits_of(&d.spec),
                holding,
                waiting: wants && !holding,
                queued_at: status
                    .queued_at
                    .map(|t| t.0)
                    .or_else(|| d.metadata.creation_timestamp.as_ref().map(|t| t.0))
                    .unwrap_or(now),
                bytes: d.spec.capacity,
            }
        })
        .collect()
}

/// Reconcile one DiskImport.
pub async fn reconcile(di: Arc<DiskImport>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = di.namespace().ok_or(Error::Metadata("namespace"))?;
    let now = (ctx.now)();
    let uid = di.uid().unwrap_or_default();
    let status = ctx
        .written
        .current(&uid, di.status.clone())
        .unwrap_or_default();
    let pods = pods_of(&ctx, &di);
    let views: Vec<PodView> = pods.iter().map(|p| PodView::of(p)).collect();

    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let pvc_exists = pvcs.get_opt(&di.spec.pvc.name).await?.is_some();

    // Progress from the current round's pod, while it runs.
    let current = status
        .pod_name
        .as_deref()
        .and_then(|n| pods.iter().find(|p| p.name_any() == n));
    let mut scrape = None;
    if let Some(p) = current {
        let view = PodView::of(p);
        if view.running
            && let Some(addr) = scrape::metrics_address(p)
        {
            scrape = ctx.scraper.scrape(&addr).await;
        }
    }
    let mut me = demands(&ctx, now);
    // This disk as it is now (the store may lag a write).
    let id = super::id_of(di.as_ref());
    if let Some(d) = me.iter_mut().find(|d| d.id == id) {
        d.holding = !status.slots.is_empty();
        d.waiting = !d.holding;
    }
    let admission = admit(&me, &id);
    let decision = plan_disk(&DiskInput {
        spec: &di.spec,
        status: &status,
        pods: &views,
        pvc_exists,
        admission,
        scrape,
        now,
    });

    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let mut new_status = decision.status.clone();
    let mut requeue = decision.requeue;
    for action in &decision.actions {
        match action {
            DiskAction::CreatePvc => {
                let pvc = import_pvc(&di)?;
                match pvcs.create(&PostParams::default(), &pvc).await {
                    Ok(_) => {
                        ctx.event(
                            di.as_ref(),
                            false,
                            "VolumeCreated",
                            &format!("PVC {} created", di.spec.pvc.name),
                        )
                        .await
                    }
                    Err(kube::Error::Api(e)) if e.code == 409 => {}
                    Err(e) => return Err(e.into()),
                }
            }
            DiskAction::AcquireSlots => {
                match super::slots::acquire(&ctx, &di, &limits_of(&di.spec)).await? {
                    Ok(names) => new_status.slots = names,
                    Err(key) => {
                        // Another controller took the last slot: wait in line, create nothing.
                        let mut waiting = status.clone();
                        waiting.phase = DiskPhase::Waiting;
                        waiting.message = format!("{key}: every slot is taken");
                        waiting.queued_at.get_or_insert(
                            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now),
                        );
                        new_status = waiting;
                        requeue = Some(crate::planner::disk::SLOT_POLL);
                        break;
                    }
                }
            }
            DiskAction::CreatePod(round) => {
                let pod = import_pod(&di, round, &ctx.defaults)?;
                match pods_api.create(&PostParams::default(), &pod).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 409 => {}
                    Err(e) => {
                        // Give the slots back: no pod holds them.
                        let _ = super::slots::release(&ctx, &new_status.slots).await;
                        return Err(e.into());
                    }
                }
            }
            DiskAction::DeletePod(pod) => {
                if let Some(p) = pods.iter().find(|p| &p.name_any() == pod)
                    && let Some(addr) = scrape::metrics_address(p)
                {
                    ctx.scraper.forget(&addr);
                }
                match pods_api.delete(pod, &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
            }
            DiskAction::ReleaseSlots => super::slots::release(&ctx, &status.slots).await?,
            DiskAction::Event {
                warning,
                reason,
                note,
            } => ctx.event(di.as_ref(), *warning, reason, note).await,
        }
    }
    if let Some(write) = status_to_write(&status, &new_status, now) {
        write_status(&ctx, &di, &write).await?;
    }
    Ok(requeue.map_or_else(Action::await_change, Action::requeue))
}

/// Replace a DiskImport's status whole on the subresource (a JSON patch `add` of
/// `/status`: fields that became empty go too, which a merge patch would keep).
pub async fn write_status(
    ctx: &Context,
    di: &DiskImport,
    status: &DiskImportStatus,
) -> Result<(), Error> {
    let ns = di.namespace().ok_or(Error::Metadata("namespace"))?;
    let api: Api<DiskImport> = Api::namespaced(ctx.client.clone(), &ns);
    api.patch_status(
        &di.name_any(),
        &PatchParams::default(),
        &super::status_patch(status)?,
    )
    .await?;
    ctx.written.wrote(&di.uid().unwrap_or_default(), status);
    Ok(())
}

/// Retry a failed reconcile.
pub fn error_policy(di: Arc<DiskImport>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(disk = %super::id_of(di.as_ref()), error = %err, "reconcile failed; retrying");
    Action::requeue(ERROR_BACKOFF)
}
