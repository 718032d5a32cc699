//! Leader election over a Lease (`coordination.k8s.io/v1`), as client-go's
//! leaderelection does it: the leader renews `renewTime` every [`RENEW_EVERY`]; another
//! replica takes the Lease over (a replace guarded by its resourceVersion) once it has
//! not been renewed for [`LEASE_SECONDS`]. Only the leader runs the controllers, which
//! keeps one writer per DiskImport; the slot Leases keep the limits even across two
//! leaders for a moment.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::{Api, Client};

/// The leader Lease's name.
pub const LEASE_NAME: &str = "ferry-controller-leader";
/// How long leadership lasts unrenewed.
pub const LEASE_SECONDS: i32 = 15;
/// How often the leader renews, and others retry.
pub const RENEW_EVERY: Duration = Duration::from_secs(5);

/// What one try found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leadership {
    /// This replica leads (it took or renewed the Lease).
    Leading,
    /// Another replica leads.
    Following,
}

fn spec(identity: &str, now: Timestamp, acquire: Option<MicroTime>, transitions: i32) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(identity.into()),
        lease_duration_seconds: Some(LEASE_SECONDS),
        acquire_time: Some(acquire.unwrap_or(MicroTime(now))),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..Default::default()
    }
}

/// Take or renew the Lease once.
pub async fn try_lead(
    client: &Client,
    namespace: &str,
    identity: &str,
    now: Timestamp,
) -> Result<Leadership, kube::Error> {
    let api: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let Some(l) = api.get_opt(LEASE_NAME).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(LEASE_NAME.into()),
                ..Default::default()
            },
            spec: Some(spec(identity, now, None, 0)),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(Leadership::Leading),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(Leadership::Following),
            Err(e) => Err(e),
        };
    };
    let s = l.spec.clone().unwrap_or_default();
    let holder = s.holder_identity.as_deref();
    let expired = s.renew_time.as_ref().is_none_or(|r| {
        let secs = i64::from(s.lease_duration_seconds.unwrap_or(LEASE_SECONDS));
        r.0.checked_add(jiff::SignedDuration::from_secs(secs))
            .is_ok_and(|end| end < now)
    });
    let mine = holder == Some(identity);
    if !mine && !expired {
        return Ok(Leadership::Following);
    }
    let transitions = s.lease_transitions.unwrap_or(0) + i32::from(!mine);
    let acquire = if mine { s.acquire_time.clone() } else { None };
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(LEASE_NAME.into()),
            resource_version: l.metadata.resource_version.clone(),
            ..Default::default()
        },
        spec: Some(spec(identity, now, acquire, transitions)),
    };
    match api
        .replace(LEASE_NAME, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => Ok(Leadership::Leading),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(Leadership::Following),
        Err(e) => Err(e),
    }
}

/// Wait until this replica leads.
pub async fn acquire(client: &Client, namespace: &str, identity: &str) {
    loop {
        match try_lead(client, namespace, identity, Timestamp::now()).await {
            Ok(Leadership::Leading) => {
                tracing::info!(identity, "leading");
                return;
            }
            Ok(Leadership::Following) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the leader Lease"),
        }
        tokio::time::sleep(RENEW_EVERY).await;
    }
}

/// Renew while leading; returns when leadership is lost (the caller then stops).
pub async fn hold(client: &Client, namespace: &str, identity: &str) {
    let mut last_ok = Timestamp::now();
    loop {
        tokio::time::sleep(RENEW_EVERY).await;
        let now = Timestamp::now();
        match try_lead(client, namespace, identity, now).await {
            Ok(Leadership::Leading) => last_ok = now,
            Ok(Leadership::Following) => {
                tracing::warn!(identity, "another replica took the lead");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew the leader Lease");
                if now.duration_since(last_ok).as_secs() >= i64::from(LEASE_SECONDS) {
                    tracing::warn!(identity, "leadership lapsed");
                    return;
                }
            }
        }
    }
}

/// Give the lead up on a clean stop (client-go's `ReleaseOnCancel`): when this replica
/// holds the Lease, it is left with no holder and a one-second duration, so a standby
/// takes over at its next try instead of waiting [`LEASE_SECONDS`].
pub async fn release(client: &Client, namespace: &str, identity: &str) -> Result<(), kube::Error> {
    let api: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let Some(mut l) = api.get_opt(LEASE_NAME).await? else {
        return Ok(());
    };
    let Some(s) = l.spec.as_mut() else {
        return Ok(());
    };
    if s.holder_identity.as_deref() != Some(identity) {
        return Ok(());
    }
    s.holder_identity = None;
    s.lease_duration_seconds = Some(1);
    s.renew_time = Some(MicroTime(Timestamp::now()));
    match api.replace(LEASE_NAME, &PostParams::default(), &l).await {
        Ok(_) => Ok(()),
        // Someone else took it meanwhile: nothing to give up.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}
