//! One FerryPlan: its DiskImports (from the store), the vSphere tasks its VMs wait on;
//! plan; act (vSphere calls, DiskImport creates and patches); write status. Deleting a
//! plan cancels what still runs, removes the snapshots it took and restores power
//! before the finalizer lets it go.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Api, Resource, ResourceExt};

use super::{Context, ERROR_BACKOFF, Error, FINALIZER};
use crate::crd::{Checkpoint, DiskImport, FerryPlan, FerryPlanSpec};
use crate::planner::build::disk_import_spec;
use crate::planner::plan::{DiskView, Outcome, PlanAction, PlanInput, TaskView, plan_plan, record};
use crate::vsphere::{Call, Endpoint};

/// The plan's DiskImports.
pub fn disks_of(ctx: &Context, plan: &FerryPlan) -> Vec<Arc<DiskImport>> {
    let uid = plan.uid().unwrap_or_default();
    ctx.disks.state_filter(|d| {
        d.labels().get(crate::pod::labels::PLAN_UID) == Some(&uid)
            || d.metadata
                .owner_references
                .as_ref()
                .is_some_and(|o| o.iter().any(|r| r.uid == uid))
    })
}

/// The plan a DiskImport belongs to (for the plan controller's watch).
pub fn plan_of(d: DiskImport) -> Option<kube::runtime::reflector::ObjectRef<FerryPlan>> {
    let ns = d
        .labels()
        .get(crate::pod::labels::PLAN_NAMESPACE)
        .cloned()
        .or_else(|| d.namespace())?;
    (!d.spec.plan.is_empty())
        .then(|| kube::runtime::reflector::ObjectRef::new(&d.spec.plan).within(&ns))
}

fn view(d: &DiskImport) -> DiskView {
    let s = d.status.clone().unwrap_or_default();
    DiskView {
        name: d.name_any(),
        vm: d.spec.vm.clone(),
        phase: s.phase,
        checkpoints: d
            .spec
            .checkpoints
            .iter()
            .map(|c| c.current.clone())
            .collect(),
        final_checkpoint: d.spec.final_checkpoint,
        copied: s.checkpoints_copied,
        cancel: d.spec.cancel,
        retain: d.spec.pod.importer.retain_pods,
        bytes_done: s.bytes_done,
        bytes_total: s.bytes_total,
        message: s.message,
    }
}

/// The vCenter endpoint of a plan, with the credentials from its Secret.
async fn endpoint(
    ctx: &Context,
    ns: &str,
    spec: &FerryPlanSpec,
) -> Result<Option<Endpoint>, Error> {
    let Some(v) = &spec.source.vsphere else {
        return Ok(None);
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let secret = secrets.get(&v.secret_ref).await?;
    let field = |k: &str| -> Result<String, Error> {
        let from_data = secret
            .data
            .as_ref()
            .and_then(|d| d.get(k))
            .map(|b| String::from_utf8_lossy(&b.0).into_owned());
        let from_string = secret.string_data.as_ref().and_then(|d| d.get(k)).cloned();
        from_data
            .or(from_string)
            .ok_or_else(|| Error::Vsphere(format!("Secret {} has no key {k}", v.secret_ref)))
    };
    Ok(Some(Endpoint {
        url: v.url.clone(),
        user: field("accessKeyId")?,
        password: field("secretKey")?,
        thumbprint: v.thumbprint.clone(),
    }))
}

/// Reconcile one plan (through the finalizer).
pub async fn reconcile(plan: Arc<FerryPlan>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = plan.namespace().ok_or(Error::Metadata("namespace"))?;
    let api: Api<FerryPlan> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, plan, |event| async {
        match event {
            Finalizer::Apply(p) => apply(&ctx, &p, false).await,
            Finalizer::Cleanup(p) => {
                let a = apply(&ctx, &p, true).await?;
                let done = p.status.as_ref().is_some_and(|s| {
                    s.vms.iter().all(|v| {
                        let step = crate::planner::plan::Step::parse(&v.step);
                        step.is_terminal() || step == crate::planner::plan::Step::Pending
                    })
                });
                if !done {
                    return Err(Error::CleanupPending(format!("{a:?}")));
                }
                // DiskImports outside the plan's namespace have no owner reference: the
                // garbage collector would not delete them.
                let plan_ns = p.namespace().unwrap_or_default();
                for d in disks_of(&ctx, &p)
                    .into_iter()
                    .filter(|d| d.namespace().as_deref() != Some(plan_ns.as_str()))
                {
                    let api: Api<DiskImport> =
                        Api::namespaced(ctx.client.clone(), &d.namespace().unwrap_or_default());
                    match api.delete(&d.name_any(), &DeleteParams::default()).await {
                        Ok(_) => {}
                        Err(kube::Error::Api(e)) if e.code == 404 => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                Ok(Action::await_change())
            }
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(other.to_string()),
    })
}

/// One pass over a plan; `deleting` cancels every VM still under way.
async fn apply(ctx: &Context, plan: &FerryPlan, deleting: bool) -> Result<Action, Error> {
    let ns = plan.namespace().ok_or(Error::Metadata("namespace"))?;
    let name = plan.name_any();
    let now = (ctx.now)();
    let mut spec = plan.spec.clone();
    if deleting {
        for v in &spec.vms {
            spec.cancel.push(crate::planner::plan::vm_key(v));
        }
    }
    let uid = plan.uid().unwrap_or_default();
    let status = ctx
        .written
        .current(&uid, plan.status.clone())
        .unwrap_or_default();
    let disks = disks_of(ctx, plan);
    let views: Vec<DiskView> = disks.iter().map(|d| view(d)).collect();
    let at = if crate::planner::plan::manages_vsphere(&spec) {
        endpoint(ctx, &ns, &spec).await?
    } else {
        None
    };

    let mut tasks = BTreeMap::new();
    if let Some(at) = &at {
        for t in status.vms.iter().filter_map(|v| v.task.as_ref()) {
            let state = ctx
                .vsphere
                .task(at, t)
                .await
                .unwrap_or_else(TaskView::Error);
            tasks.insert(t.clone(), state);
        }
    }
    let decision = plan_plan(&PlanInput {
        name: &name,
        spec: &spec,
        status: &status,
        disks: &views,
        tasks: &tasks,
        now,
    });
    let mut new_status = decision.status.clone();
    let target_ns = spec.target_namespace.clone().unwrap_or_else(|| ns.clone());
    // The planner knows no namespaces; the listing's TARGET shows where the PVCs go.
    new_status.target_namespace = target_ns.clone();
    let di_api: Api<DiskImport> = Api::namespaced(ctx.client.clone(), &target_ns);

    for action in &decision.actions {
        let vsphere_call = |vm: &str, call: Call| (vm.to_string(), call);
        let call = match action {
            PlanAction::FindVm { vm } => Some(vsphere_call(vm, Call::FindVm)),
            PlanAction::ReadPowerState { vm } => Some(vsphere_call(vm, Call::PowerState)),
            PlanAction::PowerOff { vm } => Some(vsphere_call(vm, Call::PowerOff)),
            PlanAction::PowerOn { vm } => Some(vsphere_call(vm, Call::PowerOn)),
            PlanAction::CreateSnapshot { vm, name } => {
                Some(vsphere_call(vm, Call::CreateSnapshot(name.clone())))
            }
            PlanAction::RemoveSnapshot { vm, snapshot } => {
                Some(vsphere_call(vm, Call::RemoveSnapshot(snapshot.clone())))
            }
            PlanAction::ReadChangeIds { vm, snapshot } => {
                Some(vsphere_call(vm, Call::ChangeIds(snapshot.clone())))
            }
            PlanAction::SetCheckpoints {
                vm,
                checkpoints,
                last,
            } => {
                set_checkpoints(
                    ctx,
                    plan,
                    &spec,
                    &new_status,
                    (&di_api, &target_ns),
                    vm,
                    checkpoints,
                    *last,
                )
                .await?;
                None
            }
            PlanAction::CancelDisk(d) => {
                let p = serde_json::json!({ "spec": { "cancel": true } });
                patch_disk(&di_api, d, &p).await?;
                None
            }
            PlanAction::ReleasePods(d) => {
                let p = serde_json::json!({ "spec": { "pod": { "retainPods": false } } });
                patch_disk(&di_api, d, &p).await?;
                None
            }
            PlanAction::DeletePvc(pvc) => {
                let pvcs: Api<PersistentVolumeClaim> =
                    Api::namespaced(ctx.client.clone(), &target_ns);
                match pvcs.delete(pvc, &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
                None
            }
            PlanAction::Event {
                warning,
                reason,
                note,
            } => {
                ctx.event(plan, *warning, reason, note).await;
                None
            }
        };
        if let Some((vm, call)) = call {
            let Some(at) = &at else { continue };
            let target = new_status
                .vms
                .iter()
                .find(|v| v.id == vm)
                .and_then(|v| v.uuid.clone())
                .unwrap_or_else(|| vm.clone());
            let outcome = match ctx.vsphere.call(at, &target, call.clone()).await {
                Ok(o) => o,
                Err(e)
                    if matches!(
                        call,
                        Call::FindVm | Call::CreateSnapshot(_) | Call::ChangeIds(_)
                    ) =>
                {
                    Some(Outcome::Failed(e))
                }
                Err(e) => {
                    // Removing a snapshot or restoring power failed: say so, go on.
                    ctx.event(
                        plan,
                        true,
                        "VsphereCallFailed",
                        &format!("VM {vm}: {call:?}: {e}"),
                    )
                    .await;
                    None
                }
            };
            if let Some(o) = outcome {
                record(&name, &spec, &mut new_status, &vm, o, now);
            }
        }
    }
    if new_status != status {
        let api: Api<FerryPlan> = Api::namespaced(ctx.client.clone(), &ns);
        api.patch_status(
            &name,
            &PatchParams::default(),
            &super::status_patch(&new_status)?,
        )
        .await?;
        ctx.written.wrote(&uid, &new_status);
    }
    Ok(decision
        .requeue
        .map_or_else(Action::await_change, Action::requeue))
}

async fn patch_disk(
    api: &Api<DiskImport>,
    name: &str,
    patch: &serde_json::Value,
) -> Result<(), Error> {
    match api
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Create the VM's missing DiskImports and give each its checkpoint.
#[allow(clippy::too_many_arguments)]
async fn set_checkpoints(
    ctx: &Context,
    plan: &FerryPlan,
    spec: &FerryPlanSpec,
    status: &crate::crd::FerryPlanStatus,
    (api, ns): (&Api<DiskImport>, &str),
    vm: &str,
    checkpoints: &BTreeMap<String, Option<Checkpoint>>,
    last: bool,
) -> Result<(), Error> {
    let Some(v) = status.vms.iter().find(|v| v.id == vm) else {
        return Ok(());
    };
    let plan_name = plan.name_any();
    for (index, disk) in v.disks.iter().enumerate() {
        let Some(cp) = checkpoints.get(&disk.disk_import) else {
            continue;
        };
        let existing = ctx
            .disks
            .state()
            .into_iter()
            .find(|d| d.name_any() == disk.disk_import && d.namespace().as_deref() == Some(ns));
        match existing {
            None => {
                let mut di_spec =
                    disk_import_spec(&plan_name, spec, v, index).map_err(Error::Vsphere)?;
                di_spec.checkpoints = cp.iter().cloned().collect();
                di_spec.final_checkpoint = last;
                let mut di = DiskImport::new(&disk.disk_import, di_spec);
                let plan_ns = plan.namespace().unwrap_or_default();
                if plan_ns == ns {
                    di.metadata.owner_references = Some(vec![
                        plan.controller_owner_ref(&())
                            .ok_or(Error::Metadata("uid"))?,
                    ]);
                }
                di.metadata.labels = Some(
                    [
                        (
                            crate::pod::labels::PLAN.to_string(),
                            crate::names::label_value(&plan_name),
                        ),
                        (crate::pod::labels::PLAN_NAMESPACE.to_string(), plan_ns),
                        (
                            crate::pod::labels::PLAN_UID.to_string(),
                            plan.uid().unwrap_or_default(),
                        ),
                    ]
                    .into(),
                );
                match api.create(&PostParams::default(), &di).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 409 => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Some(d) => {
                let mut list = d.spec.checkpoints.clone();
                if let Some(c) = cp
                    && !list.iter().any(|x| x.current == c.current)
                {
                    list.push(c.clone());
                }
                if list != d.spec.checkpoints || d.spec.final_checkpoint != last {
                    let p = serde_json::json!({ "spec": { "checkpoints": list, "finalCheckpoint": last } });
                    patch_disk(api, &disk.disk_import, &p).await?;
                }
            }
        }
    }
    Ok(())
}

/// Retry a failed reconcile.
pub fn error_policy(plan: Arc<FerryPlan>, err: &Error, _ctx: Arc<Context>) -> Action {
    match err {
        Error::CleanupPending(_) => Action::requeue(std::time::Duration::from_secs(2)),
        _ => {
            tracing::warn!(plan = %super::id_of(plan.as_ref()), error = %err, "reconcile failed; retrying");
            Action::requeue(ERROR_BACKOFF)
        }
    }
}
