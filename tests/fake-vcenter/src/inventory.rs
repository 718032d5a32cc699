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
    /// Most changed areas per `QueryChangedDiskAreas` page (default
    /// [`DEFAULT_PAGE_AREAS`], about what real vCenters return).
    #[serde(default)]
    pub page_areas: Option<usize>,
    /// Reproduce the vcsim bug behind F1: every `QueryChangedDiskAreas` call with a
    /// non-zero `startOffset` answers an empty page of length 0 that does not advance.
    #[serde(default)]
    pub buggy_empty_pages: bool,
    /// Methods this server does not have (as older vCenter/ESXi lack `FindAllByUuid`):
    /// each call answers the `MethodNotFound` fault.
    #[serde(default)]
    pub missing_methods: Vec<String>,
    /// How long a new task stays `queued` (milliseconds, default 0).
    #[serde(default)]
    pub task_queue_ms: u64,
    /// How long a task then stays `running`, its `progress` rising (milliseconds,
    /// default 0: done at the next call).
    #[serde(default)]
    pub task_run_ms: u64,
    /// How long a guest takes to power off after `ShutdownGuest` (milliseconds,
    /// default 0: off at the next call).
    #[serde(default)]
    pub guest_shutdown_ms: u64,
    /// Faults to answer, per method (see [`FaultSpec`]).
    #[serde(default)]
    pub faults: Vec<FaultSpec>,
    /// Serve every `TaskInfo` malformed in this way (to test the client's refusals).
    #[serde(default)]
    pub task_info_quirk: Option<TaskInfoQuirk>,
}

/// A fault injected into one method.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FaultSpec {
    /// The SOAP method, e.g. `CreateSnapshot_Task`, `ShutdownGuest`.
    pub method: String,
    /// The vim25 fault type, e.g. `FileFault`.
    pub fault: String,
    /// The fault's message (default: a message naming the fault).
    #[serde(default)]
    pub message: Option<String>,
    /// For `*_Task` methods: answer the call itself with the SOAP fault instead of
    /// starting a task that ends in `error` with it (the default). Other methods always
    /// answer the fault.
    #[serde(default)]
    pub immediate: bool,
    /// How many calls get the fault (`null` = every call).
    #[serde(default)]
    pub times: Option<u32>,
}

/// A way in which the fake serves a malformed `TaskInfo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskInfoQuirk {
    /// No `state` element.
    MissingState,
    /// `state` is `done`.
    UnknownState,
    /// A successful task's `result` is an `xsd:string`, not a moref.
    ResultNotMoref,
}

/// Changed areas per `QueryChangedDiskAreas` page when `page_areas` is not set.
pub const DEFAULT_PAGE_AREAS: usize = 2000;

/// A byte range of a disk (`DiskChangeExtent`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Area {
    /// First byte.
    pub start: u64,
    /// Length in bytes.
    pub length: u64,
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
    /// VMware Tools runs in the guest (`ShutdownGuest` answers `ToolsUnavailable`
    /// otherwise). Default true.
    #[serde(default = "yes")]
    pub tools_running: bool,
}

fn powered_on() -> String {
    "poweredOn".into()
}

fn yes() -> bool {
    true
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
    /// The backing's type (default `VirtualDiskFlatVer2BackingInfo`);
    /// `VirtualDiskRawDiskVer2BackingInfo` names its file `descriptorFileName`.
    #[serde(default)]
    pub backing: Option<String>,
    /// Snapshot disks only: the change ID that `changed_areas` are relative to.
    /// `QueryChangedDiskAreas` with this change ID returns `changed_areas`; with `*`,
    /// `allocated_areas`; with any other change ID, a `FileFault` (as after a CBT reset).
    #[serde(default, alias = "changed_since")]
    pub previous_change_id: Option<String>,
    /// Snapshot disks only: areas changed since `previous_change_id` (any order; sorted
    /// by the fake).
    #[serde(default)]
    pub changed_areas: Vec<Area>,
    /// Snapshot disks only: allocated areas, answered for change ID `*`
    /// (`null` = the whole disk).
    #[serde(default)]
    pub allocated_areas: Option<Vec<Area>>,
}

/// A snapshot and its children.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SnapshotSpec {
    /// e.g. `snapshot-7`.
    pub moref: String,
    /// Its name.
    #[serde(default)]
    pub name: String,
    /// Its description.
    #[serde(default)]
    pub description: String,
    /// Taken with `quiesce=true`.
    #[serde(default)]
    pub quiesced: bool,
    /// The disks in the snapshot's `config.hardware.device`.
    #[serde(default)]
    pub disks: Vec<DiskSpec>,
    /// Child snapshots.
    #[serde(default)]
    pub children: Vec<SnapshotSpec>,
}
