//! The inventory a fake vCenter serves, read from JSON.

use serde::{Deserialize, Serialize};

/// The whole inventory.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Inventory {
    /// The one accepted user name.
    pub user: String,
    /// Its password.
    pub password: String,
    /// Datacenters, each with its VMs.
    #[serde(default)]
    pub datacenters: Vec<Datacenter>,
    /// After this many authenticated calls a session expires: the next call gets
    /// `NotAuthenticated` (to test re-login). `null` = never.
    #[serde(default)]
    pub session_ttl_calls: Option<u64>,
    /// `about.apiVersion` (default `8.0.3.0`).
    #[serde(default)]
    pub api_version: Option<String>,
    /// Return at most this many objects per `RetrievePropertiesEx` page (paging with
    /// `token` / `ContinueRetrievePropertiesEx`). `null` = one page.
    #[serde(default)]
    pub page_size: Option<usize>,
}

/// A datacenter.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Datacenter {
    /// Its name.
    pub name: String,
    /// Its moref (default `datacenter-<index+1>`).
    #[serde(default)]
    pub moref: Option<String>,
    /// Its VMs.
    #[serde(default)]
    pub vms: Vec<VmSpec>,
}

/// A virtual machine.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VmSpec {
    /// e.g. `vm-123`.
    pub moref: String,
    /// Display name.
    pub name: String,
    /// `config.instanceUuid`.
    #[serde(default)]
    pub instance_uuid: String,
    /// `config.uuid` (the BIOS UUID).
    #[serde(default)]
    pub bios_uuid: String,
    /// `runtime.powerState` (default `poweredOn`).
    #[serde(default = "powered_on")]
    pub power_state: String,
    /// The ESX host name (`runtime.host` → a `HostSystem` with this `name`).
    #[serde(default)]
    pub host: Option<String>,
    /// Current disks.
    #[serde(default)]
    pub disks: Vec<DiskSpec>,
    /// Root snapshots.
    #[serde(default)]
    pub snapshots: Vec<SnapshotSpec>,
}

fn powered_on() -> String {
    "poweredOn".into()
}

/// A virtual disk.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DiskSpec {
    /// Device key, e.g. 2000.
    pub key: i32,
    /// `backing.fileName`.
    pub file_name: String,
    /// `capacityInBytes`.
    #[serde(default)]
    pub capacity_bytes: u64,
    /// `backing.changeId`.
    #[serde(default)]
    pub change_id: Option<String>,
    /// `backing.parent.fileName`, `backing.parent.parent.fileName`, …
    #[serde(default)]
    pub parents: Vec<String>,
}

/// A snapshot and its children.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SnapshotSpec {
    /// e.g. `snapshot-7`.
    pub moref: String,
    /// Its name.
    #[serde(default)]
    pub name: String,
    /// The disks in the snapshot's `config.hardware.device`.
    #[serde(default)]
    pub disks: Vec<DiskSpec>,
    /// Child snapshots.
    #[serde(default)]
    pub children: Vec<SnapshotSpec>,
}
