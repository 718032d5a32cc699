//! The vSphere calls a plan's itinerary makes, behind a trait so that the reconciler
//! runs the same against vCenter (through `ferry-vsphere`) and against a test double.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use crate::planner::plan::{FoundDisk, Outcome, TaskView};

/// A boxed future (the trait is used as `dyn`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where and as whom to call vSphere.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `https://vc.example.com/sdk`.
    pub url: String,
    /// User (the Secret's `accessKeyId`).
    pub user: String,
    /// Password (the Secret's `secretKey`).
    pub password: String,
    /// Pinned SHA-1 thumbprint.
    pub thumbprint: Option<String>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &self.url)
            .field("user", &self.user)
            .field("thumbprint", &self.thumbprint)
            .finish_non_exhaustive()
    }
}

/// One call about one VM (by instance UUID, or by name when no UUID is known).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// Find the VM: name, host, power state, disks (→ [`Outcome::Found`]).
    FindVm,
    /// Its power state (→ [`Outcome::PowerState`]).
    PowerState,
    /// Shut the guest down (hard power-off without tools) (→ maybe a task).
    PowerOff,
    /// Power on (→ a task).
    PowerOn,
    /// Take a snapshot (→ a task).
    CreateSnapshot(String),
    /// Remove a snapshot (→ a task).
    RemoveSnapshot(String),
    /// Change IDs of every disk in a snapshot (→ [`Outcome::ChangeIds`]).
    ChangeIds(String),
}

/// What the vSphere side of the controller can do.
pub trait VsphereOps: Send + Sync {
    /// Make `call` about VM `vm` (a UUID or a name). `Ok(None)`: done, nothing to record.
    fn call<'a>(
        &'a self,
        at: &'a Endpoint,
        vm: &'a str,
        call: Call,
    ) -> BoxFuture<'a, Result<Option<Outcome>, String>>;
    /// Read a task's state.
    fn task<'a>(
        &'a self,
        at: &'a Endpoint,
        task: &'a str,
    ) -> BoxFuture<'a, Result<TaskView, String>>;
}

pub use ferry_vsphere::base_disk_name;

/// Disks as the planner wants them: base names, in device order.
pub fn found_disks(disks: impl IntoIterator<Item = (String, u64)>) -> Vec<FoundDisk> {
    disks
        .into_iter()
        .map(|(f, c)| FoundDisk {
            source: base_disk_name(&f),
            capacity: c,
        })
        .collect()
}

/// Change IDs keyed by base disk name.
pub fn change_ids(ids: impl IntoIterator<Item = (String, String)>) -> BTreeMap<String, String> {
    ids.into_iter()
        .map(|(f, c)| (base_disk_name(&f), c))
        .collect()
}

/// Description of the snapshots the controller takes.
pub const SNAPSHOT_DESCRIPTION: &str = "Ferry warm migration precopy";

/// The real thing: vCenter (or ESXi) through `ferry-vsphere`, one logged-in session per
/// endpoint and user, kept until a call fails.
#[derive(Default)]
pub struct Vcenter {
    sessions: tokio::sync::Mutex<
        std::collections::HashMap<(String, String), std::sync::Arc<ferry_vsphere::Client>>,
    >,
}

impl std::fmt::Debug for Vcenter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vcenter").finish_non_exhaustive()
    }
}

impl Vcenter {
    async fn session(
        &self,
        at: &Endpoint,
    ) -> Result<std::sync::Arc<ferry_vsphere::Client>, String> {
        let key = (at.url.clone(), at.user.clone());
        if let Some(c) = self.sessions.lock().await.get(&key) {
            return Ok(c.clone());
        }
        // A pinned thumbprint (as VDDK is given), else the system's trust.
        let tls = match &at.thumbprint {
            Some(t) => ferry_vsphere::TlsPolicy {
                thumbprint: Some(t.clone()),
                ..Default::default()
            },
            None => ferry_vsphere::TlsPolicy {
                system_roots: true,
                ..Default::default()
            },
        };
        let c = ferry_vsphere::Client::login(&at.url, &at.user, &at.password, &tls)
            .await
            .map_err(|e| e.to_string())?;
        let c = std::sync::Arc::new(c);
        self.sessions.lock().await.insert(key, c.clone());
        Ok(c)
    }

    async fn forget(&self, at: &Endpoint) {
        self.sessions
            .lock()
            .await
            .remove(&(at.url.clone(), at.user.clone()));
    }

    async fn run(&self, at: &Endpoint, key: &str, call: Call) -> Result<Option<Outcome>, String> {
        let c = self.session(at).await?;
        let e = |e: ferry_vsphere::Error| e.to_string();
        // A VM is named by its instance UUID, or (the seed's plans) by its name, looked
        // up once: the plan then keeps the UUID it found for every later call.
        let (vm, uuid) = if ferry_contract::env::is_uuid(key) {
            (c.find_vm(key).await.map_err(e)?, key.to_string())
        } else {
            c.find_vm_by_name(key).await.map_err(e)?
        };
        let uuid = uuid.as_str();
        Ok(match call {
            Call::FindVm => {
                let disks = c.vm_disks(&vm).await.map_err(e)?;
                Some(Outcome::Found {
                    uuid: Some(uuid.to_string()),
                    name: vm.name.clone(),
                    host: vm.host.clone(),
                    power_state: vm.power_state.clone(),
                    disks: found_disks(disks.into_iter().map(|d| (d.file_name, d.capacity_bytes))),
                })
            }
            Call::PowerState => Some(Outcome::PowerState(
                c.power_state(&vm).await.map_err(e)?.as_str().to_string(),
            )),
            Call::PowerOff => {
                // Forklift's cutover: ask the guest to shut down (VMware Tools); the
                // itinerary then waits for poweredOff.
                c.power_off_for_cutover(&vm, ferry_vsphere::CutoverPowerOff::GuestOnly)
                    .await
                    .map_err(e)?;
                None
            }
            Call::PowerOn => {
                c.power_on(&vm).await.map_err(e)?;
                None
            }
            Call::CreateSnapshot(name) => {
                // A snapshot task still running (the controller restarted) is reused,
                // as Forklift does: never two snapshots for one round.
                let task = match c
                    .running_task(&vm, ferry_vsphere::TaskKind::CreateSnapshot)
                    .await
                    .map_err(e)?
                {
                    Some(t) => t,
                    None => c
                        .create_snapshot(&vm, &name, SNAPSHOT_DESCRIPTION, false, true)
                        .await
                        .map_err(e)?,
                };
                Some(Outcome::TaskStarted(task.moref))
            }
            Call::RemoveSnapshot(s) => Some(Outcome::TaskStarted(
                c.remove_snapshot(&s, false, true).await.map_err(e)?.moref,
            )),
            Call::ChangeIds(s) => {
                let ids = c.snapshot_change_ids(&vm, &s).await.map_err(e)?;
                let mut out = Vec::new();
                for d in ids {
                    match d.change_id {
                        Some(id) => out.push((d.backing_file, id)),
                        None => {
                            return Err(format!(
                                "disk {} has no change ID in {s}: enable changed block tracking (ctkEnabled) for a warm migration",
                                d.backing_file
                            ));
                        }
                    }
                }
                Some(Outcome::ChangeIds(change_ids(out)))
            }
        })
    }
}

impl VsphereOps for Vcenter {
    fn call<'a>(
        &'a self,
        at: &'a Endpoint,
        vm: &'a str,
        call: Call,
    ) -> BoxFuture<'a, Result<Option<Outcome>, String>> {
        Box::pin(async move {
            let r = self.run(at, vm, call).await;
            if r.is_err() {
                self.forget(at).await;
            }
            r
        })
    }

    fn task<'a>(
        &'a self,
        at: &'a Endpoint,
        task: &'a str,
    ) -> BoxFuture<'a, Result<TaskView, String>> {
        Box::pin(async move {
            let c = self.session(at).await?;
            let info = match c.task_info(&ferry_vsphere::TaskRef::new(task)).await {
                Ok(i) => i,
                Err(e) => {
                    self.forget(at).await;
                    return Err(e.to_string());
                }
            };
            Ok(match info.state {
                ferry_vsphere::TaskState::Queued | ferry_vsphere::TaskState::Running => {
                    TaskView::Running
                }
                ferry_vsphere::TaskState::Success => {
                    TaskView::Success(info.result.map(|r| r.value))
                }
                ferry_vsphere::TaskState::Error => TaskView::Error(info.error.map_or_else(
                    || "the task failed".to_string(),
                    |f| format!("{}: {}", f.name, f.message),
                )),
            })
        })
    }
}
