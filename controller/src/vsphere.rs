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

/// Forklift's `trimBackingFileName`: the base disk's name of a delta disk
/// (`[ds] vm/vm-000002.vmdk` → `[ds] vm/vm.vmdk`).
pub fn base_disk_name(file: &str) -> String {
    if let Some(stem) = file.strip_suffix(".vmdk")
        && let Some((head, tail)) = stem.rsplit_once('-')
        && tail.len() == 6
        && tail.bytes().all(|b| b.is_ascii_digit())
    {
        return format!("{head}.vmdk");
    }
    file.to_string()
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_disk_names_map_to_their_base_as_forklift_trims_them() {
        assert_eq!(
            base_disk_name("[ds1] web/web-000002.vmdk"),
            "[ds1] web/web.vmdk"
        );
        assert_eq!(base_disk_name("[ds1] web/web.vmdk"), "[ds1] web/web.vmdk");
        assert_eq!(
            base_disk_name("[ds1] web/web-2.vmdk"),
            "[ds1] web/web-2.vmdk"
        );
        assert_eq!(
            base_disk_name("[ds1] a-b/web_1-000123.vmdk"),
            "[ds1] a-b/web_1.vmdk"
        );
    }
}
