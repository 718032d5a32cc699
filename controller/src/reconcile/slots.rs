//! The per-host and per-vCenter limits made real: one Lease per slot
//! (`ferry-slot-host-esx1-example-com-3`), created by the disk that takes it. Creating
//! is atomic, so two controllers (or two replicas during a leader change) racing for the
//! last slot cannot both get it. A slot is free when its Lease is missing, expired, or
//! held by a DiskImport this controller sees that no longer lists it. The leader renews the Leases of every
//! disk it knows holds slots.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, ResourceExt};

use super::{Context, Error};
use crate::crd::DiskImport;
use crate::names::{label_value, slot_lease};
use crate::planner::slots::Limit;

/// How long a slot Lease lasts without renewal. Long, because the pod keeps its NFC
/// connection while no controller runs: another controller may only take the slot
/// once this has passed.
pub const LEASE_SECONDS: i32 = 300;
/// How often held Leases are renewed.
pub const RENEW_EVERY: Duration = Duration::from_secs(60);
/// Label naming a slot's limit key.
pub const SLOT_KEY_LABEL: &str = "ferry.dev/slot-key";

fn expired(l: &Lease, now: Timestamp) -> bool {
    let Some(spec) = &l.spec else { return true };
    let (Some(renew), Some(secs)) = (&spec.renew_time, spec.lease_duration_seconds) else {
        return true;
    };
    renew
        .0
        .checked_add(jiff::SignedDuration::from_secs(i64::from(secs)))
        .is_ok_and(|end| end < now)
}

fn lease(name: &str, key: &str, holder: &str, now: Timestamp) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some([(SLOT_KEY_LABEL.to_string(), label_value(key))].into()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(LEASE_SECONDS),
            acquire_time: Some(MicroTime(now)),
            renew_time: Some(MicroTime(now)),
            ..Default::default()
        }),
    }
}

/// The holder's identity: the DiskImport's `namespace/name/uid`.
pub fn holder_of(di: &DiskImport) -> String {
    format!("{}/{}", super::id_of(di), di.uid().unwrap_or_default())
}

/// How long a new slot is its holder's even before its status names it (the status
/// write follows the Lease's creation).
pub const CLAIM_GRACE_SECONDS: i64 = 60;

/// Whether the Lease was left behind: its holder is a DiskImport this controller sees
/// that no longer lists the slot, and the claim is older than [`CLAIM_GRACE_SECONDS`].
/// A holder this controller does not see (another controller's disk, or a deleted
/// one) is waited out until the Lease expires.
fn abandoned(ctx: &Context, l: &Lease, now: Timestamp) -> bool {
    let Some(spec) = &l.spec else { return true };
    let Some(holder) = spec.holder_identity.as_deref() else {
        return true;
    };
    let settled = spec
        .acquire_time
        .as_ref()
        .is_none_or(|t| now.duration_since(t.0).as_secs() >= CLAIM_GRACE_SECONDS);
    let name = l.name_any();
    settled
        && ctx.disks.state().iter().any(|d| {
            holder_of(d) == holder && !d.status.as_ref().is_some_and(|s| s.slots.contains(&name))
        })
}

/// Take one slot of `limit` for `di`: the first Lease that can be created, or taken
/// over from an expired or dead holder. `None`: every slot is in use.
async fn take_one(
    ctx: &Context,
    api: &Api<Lease>,
    di: &DiskImport,
    limit: &Limit,
) -> Result<Option<String>, Error> {
    let now = (ctx.now)();
    let holder = holder_of(di);
    for n in 0..limit.cap {
        let name = slot_lease(&limit.key, n);
        match api
            .create(
                &PostParams::default(),
                &lease(&name, &limit.key, &holder, now),
            )
            .await
        {
            Ok(_) => return Ok(Some(name)),
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        let Some(existing) = api.get_opt(&name).await? else {
            continue;
        };
        let mine = existing
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref())
            == Some(holder.as_str());
        if mine || expired(&existing, now) || abandoned(ctx, &existing, now) {
            // Take it over; the resourceVersion makes a race with another taker a 409.
            let mut l = lease(&name, &limit.key, &holder, now);
            l.metadata.resource_version = existing.metadata.resource_version.clone();
            match api.replace(&name, &PostParams::default(), &l).await {
                Ok(_) => return Ok(Some(name)),
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(None)
}

/// Take a slot of every limit, or none: `Ok(names)`, or `Err(key)` naming the full one.
pub async fn acquire(
    ctx: &Context,
    di: &DiskImport,
    limits: &[Limit],
) -> Result<Result<Vec<String>, String>, Error> {
    let api: Api<Lease> = Api::namespaced(ctx.client.clone(), &ctx.lease_namespace);
    let mut taken = Vec::new();
    for l in limits {
        match take_one(ctx, &api, di, l).await {
            Ok(Some(name)) => taken.push(name),
            Ok(None) => {
                release(ctx, &taken).await?;
                return Ok(Err(l.key.clone()));
            }
            Err(e) => {
                let _ = release(ctx, &taken).await;
                return Err(e);
            }
        }
    }
    Ok(Ok(taken))
}

/// Give slots back.
pub async fn release(ctx: &Context, names: &[String]) -> Result<(), Error> {
    let api: Api<Lease> = Api::namespaced(ctx.client.clone(), &ctx.lease_namespace);
    for n in names {
        match api.delete(n, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Renew the Leases of every disk that holds slots, every [`RENEW_EVERY`].
pub async fn renew_forever(ctx: Arc<Context>) {
    let api: Api<Lease> = Api::namespaced(ctx.client.clone(), &ctx.lease_namespace);
    let mut tick = tokio::time::interval(RENEW_EVERY);
    loop {
        tick.tick().await;
        let now = (ctx.now)();
        for d in ctx.disks.state() {
            let holder = holder_of(&d);
            for name in d
                .status
                .as_ref()
                .map(|s| s.slots.clone())
                .unwrap_or_default()
            {
                let Ok(Some(mut l)) = api.get_opt(&name).await else {
                    continue;
                };
                if l.spec.as_ref().and_then(|s| s.holder_identity.as_deref())
                    != Some(holder.as_str())
                {
                    continue;
                }
                if let Some(s) = l.spec.as_mut() {
                    s.renew_time = Some(MicroTime(now));
                }
                if let Err(e) = api.replace(&name, &PostParams::default(), &l).await {
                    tracing::debug!(lease = name, error = %e, "cannot renew a slot");
                }
            }
        }
    }
}
