//! The two kinds: [`FerryPlan`] (what an operator writes: VMs, where they go, cold or
//! warm, when to cut over) and [`DiskImport`] (one per disk, CDI's multi-stage
//! DataVolume contract without the PVC annotations: a checkpoint list and a final flag
//! in spec, what was copied in status).
//!
//! Both are namespaced, in group [`GROUP`] version [`VERSION`]. The CRDs in
//! `deploy/controller/crds.yaml` are generated from these types
//! (`ferry-controller manifests`); a test fails when they are stale.

// kube-derive's repeated `printcolumn(type_ = …)` look like duplicated attributes to clippy.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of both kinds.
pub const GROUP: &str = "ferry.dev";
/// Their version.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` of both kinds.
pub const API_VERSION: &str = "ferry.dev/v1alpha1";

/// Volume mode of a target PVC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
pub enum VolumeMode {
    /// A raw block device (`/dev/cdi-block-volume` in the pod).
    #[default]
    Block,
    /// A filesystem holding `disk.img` (`/data/disk.img` in the pod).
    Filesystem,
}

impl VolumeMode {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            VolumeMode::Block => "Block",
            VolumeMode::Filesystem => "Filesystem",
        }
    }
}

/// A checkpoint of a warm import (CDI's `DataVolumeCheckpoint`): copy snapshot
/// `current`, and only what changed since `previous` (a snapshot moref or a CBT change
/// ID; empty for the first, full round).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct Checkpoint {
    /// Change ID or snapshot the delta is relative to; empty for a full copy.
    #[serde(default)]
    pub previous: String,
    /// Snapshot moref to copy (`snapshot-123`).
    pub current: String,
}

// --- FerryPlan ---------------------------------------------------------------------------

/// A migration plan: which VMs, from where, into which namespace and storage, cold or
/// warm, when to cut over. The controller turns it into one [`DiskImport`] per disk and
/// one import pod per disk and round.
#[derive(CustomResource, Debug, Clone, Serialize, Deserialize, JsonSchema, Default)]
#[kube(
    group = "ferry.dev",
    version = "v1alpha1",
    kind = "FerryPlan",
    plural = "ferryplans",
    singular = "ferryplan",
    shortname = "fp",
    category = "ferry",
    namespaced,
    status = "FerryPlanStatus",
    doc = "A migration plan: VMs to copy into PVCs, cold or warm, with cutover, cancel and archive",
    printcolumn(name = "Source", type_ = "string", json_path = ".status.source"),
    printcolumn(
        name = "Target",
        type_ = "string",
        json_path = ".status.targetNamespace"
    ),
    printcolumn(name = "VMs", type_ = "string", json_path = ".status.vmsSummary"),
    printcolumn(name = "Ready", type_ = "boolean", json_path = ".status.ready"),
    printcolumn(name = "Status", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Progress", type_ = "string", json_path = ".status.progress"),
    printcolumn(name = "Cutover", type_ = "string", json_path = ".status.cutover"),
    printcolumn(name = "Archived", type_ = "boolean", json_path = ".status.archived"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct FerryPlanSpec {
    /// Where the disks come from.
    pub source: PlanSource,
    /// Namespace of the PVCs, DiskImports and pods (default: the plan's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_namespace: Option<String>,
    /// The VMs to migrate.
    pub vms: Vec<PlanVm>,
    /// Datastore → storage class, volume mode and access mode.
    #[serde(default)]
    pub storage: StorageMapping,
    /// Name of each disk's PVC, a Go-style template over `.PlanName`, `.VmName`,
    /// `.DiskIndex` and `.Shared` (e.g. `{{.VmName}}-disk-{{.DiskIndex}}`); default
    /// `{{.PlanName}}-{{.VmName}}-disk-{{.DiskIndex}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc_name_template: Option<String>,
    /// Warm migration: pre-copy rounds while the VM runs, then a final round at cutover.
    #[serde(default)]
    pub warm: bool,
    /// Time between the end of one pre-copy round and the start of the next (Go
    /// duration: `60m`, `1h30m`, `90s`); default 60m, as Forklift's PRECOPY_INTERVAL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precopy_interval: Option<String>,
    /// Start the plan (the seed's `start plan`). Until then it stays `Created`.
    #[serde(default)]
    pub start: bool,
    /// Cutover time for every VM of a warm plan (the seed's `cutover plan --cutover`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cutover: Option<Time>,
    /// Power the source VM off (guest shutdown) before the final snapshot at cutover,
    /// and before a cold copy; default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_off_source: Option<bool>,
    /// VMs (by id or name) to cancel: their pods are deleted, their slots released,
    /// their power state restored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cancel: Vec<String>,
    /// Delete a canceled VM's PVCs too (default: keep them).
    #[serde(default)]
    pub delete_volumes_on_cancel: bool,
    /// Archive a finished plan: retained pods are deleted, status is kept.
    #[serde(default)]
    pub archived: bool,
    /// A Multus NetworkAttachmentDefinition the import pods use for the copy traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_network: Option<TransferNetwork>,
    /// Where import pods run.
    #[serde(default)]
    pub placement: Placement,
    /// Disks in flight per ESXi host and per vCenter.
    #[serde(default)]
    pub limits: Limits,
    /// The import pods' image, buffers and restart budget.
    #[serde(default)]
    pub importer: ImporterSettings,
}

/// Exactly one of `vsphere` and `nbd`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct PlanSource {
    /// A vCenter or ESXi endpoint read through VDDK.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsphere: Option<VsphereSource>,
    /// NBD servers, one URI per disk (`vms[].disks[].nbdUri`); cold plans only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbd: Option<NbdSource>,
}

/// A vSphere endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct VsphereSource {
    /// `https://vcenter.example.com/sdk` (or an ESXi host).
    pub url: String,
    /// Secret with keys `accessKeyId` (user) and `secretKey` (password), as CDI's. The
    /// controller reads it in the plan's namespace, the import pods in the target
    /// namespace: with a `targetNamespace`, it must exist in both.
    pub secret_ref: String,
    /// SHA-1 thumbprint of the endpoint's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbprint: Option<String>,
    /// ConfigMap of CA certificates (mounted at `/certs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_config_map: Option<String>,
    /// The operator's VDDK image: its entrypoint copies `vmware-vix-disklib-distrib`
    /// into `/opt` (the init container runs it with no command).
    pub vddk_image: String,
    /// ConfigMap holding `vddk-config-file` (VDDK's extra configuration), mounted at
    /// `/vddk-args`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vddk_config_map: Option<String>,
    /// Who takes the warm snapshots: `Managed` (the controller, through vCenter; the
    /// default) or `External` (the caller appends checkpoints to each DiskImport, as
    /// Forklift does with DataVolumes; the controller only sequences pods).
    #[serde(default)]
    pub snapshots: SnapshotMode,
    /// Whether `url` is a vCenter, whose 52-connection NFC limit is then counted
    /// (default: what the endpoint says of itself at login, `about.apiType`; true when
    /// the controller does not log in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_vcenter: Option<bool>,
}

/// Who creates warm snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
pub enum SnapshotMode {
    /// The controller creates and removes them.
    #[default]
    Managed,
    /// The caller appends checkpoints to the DiskImports.
    External,
}

/// NBD sources.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct NbdSource {}

/// One VM of a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct PlanVm {
    /// Instance UUID (vSphere) or any unique id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Name (shown, used in PVC names; looked up when there is no id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// This VM's cutover time, overriding the plan's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cutover: Option<Time>,
    /// ESXi host serving the VM, when the controller does not look it up (External
    /// snapshots, NBD); used for the per-host limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The disks, or overrides of the disks found in vCenter (matched by backing file,
    /// else by index).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<PlanDisk>,
}

/// A disk of a VM, or an override of one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct PlanDisk {
    /// Datastore path of the base disk, `[datastore1] vm/vm.vmdk`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backing_file: Option<String>,
    /// Capacity in bytes, or a quantity (`20Gi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<String>,
    /// NBD URI of this disk (NBD sources).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbd_uri: Option<String>,
    /// PVC name, overriding the template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc_name: Option<String>,
    /// Storage class, overriding the mapping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<String>,
    /// Volume mode, overriding the mapping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_mode: Option<VolumeMode>,
    /// Access mode, overriding the mapping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_mode: Option<String>,
    /// A disk shared between VMs (the template's `.Shared`).
    #[serde(default)]
    pub shared: bool,
}

/// Datastore → storage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct StorageMapping {
    /// What a datastore not listed maps to.
    #[serde(default)]
    pub default: StorageTarget,
    /// Per datastore.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub datastores: Vec<DatastoreMapping>,
    /// Filesystem volumes are made this much larger than the disk (CDI's
    /// filesystemOverhead, default `0.055`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystem_overhead: Option<String>,
}

/// One datastore's mapping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct DatastoreMapping {
    /// Datastore name (`datastore1`, from `[datastore1] …`).
    pub datastore: String,
    /// Where its disks go.
    #[serde(flatten)]
    pub target: StorageTarget,
}

/// A storage class, volume mode and access mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct StorageTarget {
    /// Storage class (default: the cluster's default class).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<String>,
    /// Volume mode (default Block).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_mode: Option<VolumeMode>,
    /// Access mode (default ReadWriteOnce).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_mode: Option<String>,
}

/// A Multus network for the copy traffic (Forklift's `transferNetwork`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct TransferNetwork {
    /// NetworkAttachmentDefinition name.
    pub name: String,
    /// Its namespace (default: the target namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Forklift's `forklift.konveyor.io/route` value: a gateway IP makes the network
    /// the pod's default route; `none` attaches it with no default route. Absent: the
    /// network replaces the pod's default network (`v1.multus-cni.io/default-network`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
}

/// Where import pods run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    /// Node labels the pods need.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Affinity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Tolerations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Priority class of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
}

/// Concurrency caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// Disks copied at once per ESXi host, across every plan on this source (default
    /// 10, at most 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_host_disks: Option<u32>,
    /// Disks copied at once through one vCenter (default 48 of its 52 NFC
    /// connections, at most 52).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_vcenter_disks: Option<u32>,
}

/// The import pods.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ImporterSettings {
    /// Image with `ferry` (default: the controller's `--importer-image`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Buffer size in 64 KiB units (also VDDK's NFC AIO buffer size); default 16.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buf_size_in_64k: Option<u32>,
    /// Buffers in flight (also VDDK's NFC AIO buffer count); default 4 for VDDK, 32 for
    /// NBD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buf_count: Option<u32>,
    /// Container restarts allowed without progress before a disk fails (default 3,
    /// Forklift's IMPORTER_RETRY); progress resets the count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_budget: Option<u32>,
    /// Keep each round's finished pod (for its logs) until the plan is archived.
    #[serde(default)]
    pub retain_pods: bool,
    /// CPU request and limit of each pod (default `750m`, CDI's limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    /// What each import proves of what it wrote (`FERRY_VERIFY`): `off` (the default),
    /// `digest` (the disk's digest as read, kept in the DiskImport's status), or `verify`
    /// (the digest, and the volume read back and compared after each round).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifyMode>,
}

/// See [`ImporterSettings::verify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum VerifyMode {
    /// Neither digest nor read-back (CDI's importer).
    #[default]
    Off,
    /// The digest of the disk as read.
    Digest,
    /// The digest, and the target read back and compared.
    Verify,
}

impl VerifyMode {
    /// The `FERRY_VERIFY` value.
    pub fn as_str(self) -> &'static str {
        match self {
            VerifyMode::Off => "off",
            VerifyMode::Digest => "digest",
            VerifyMode::Verify => "verify",
        }
    }
}

/// What the controller reports about a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct FerryPlanStatus {
    /// The seed's plan status: `Created`, `Started`, `Warm Running`, `Cutover
    /// Scheduled`, `Completed`, `Failed`, `Canceled`.
    #[serde(default)]
    pub phase: String,
    /// The source as listed (`vcenter.example.com`, `nbd`).
    #[serde(default)]
    pub source: String,
    /// Namespace of the PVCs.
    #[serde(default)]
    pub target_namespace: String,
    /// The plan is archived (its retained pods released).
    #[serde(default)]
    pub archived: bool,
    /// `done/total (S:x/F:y/C:z)` once started, else the number of VMs.
    #[serde(default)]
    pub vms_summary: String,
    /// The spec was understood (every VM resolvable, one source).
    #[serde(default)]
    pub ready: bool,
    /// `%.1f%% (done/total GB)` over every disk's current round, as the seed's `get
    /// plans` prints it (whole GiB); `-` before the plan starts.
    #[serde(default)]
    pub progress: String,
    /// `cold`, `warm`, or the cutover time (RFC 3339) once one is set.
    #[serde(default)]
    pub cutover: String,
    /// Bytes done over every disk's current round.
    #[serde(default)]
    pub bytes_done: u64,
    /// Bytes to do over every disk's current round.
    #[serde(default)]
    pub bytes_total: u64,
    /// When the plan was started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When every VM reached an end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,
    /// Per VM.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vms: Vec<VmStatus>,
    /// `Ready`, `Succeeded`, `Failed`, `Canceled`, `Archived`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::condition_list")]
    pub conditions: Vec<Condition>,
    /// The spec generation this status answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// One VM's place in its itinerary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct VmStatus {
    /// The VM's key: its id, else its name.
    pub id: String,
    /// Its name.
    #[serde(default)]
    pub name: String,
    /// Its instance UUID (given as the id, or found by name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// Itinerary step (see [`crate::planner::plan::Step`]).
    #[serde(default)]
    pub step: String,
    /// Shown phase: `Pending`, `Copying (round N)`, `Paused`, `Cutover`, `Completed`,
    /// `Failed`, `Canceled`.
    #[serde(default)]
    pub phase: String,
    /// ESXi host serving the VM at the last look.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Power state before the plan touched it (`poweredOn`, …), restored on cancel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_state: Option<String>,
    /// The plan shut the VM down (at cutover, or for a cold copy): a cancel powers it
    /// on again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub powered_off_at: Option<Time>,
    /// When the cutover began (the next snapshot is the final one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cutover_at: Option<Time>,
    /// Rounds copied (1 = the full copy).
    #[serde(default)]
    pub round: u32,
    /// Next pre-copy round at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_precopy_at: Option<Time>,
    /// Snapshots taken, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub precopies: Vec<Precopy>,
    /// The vSphere task in progress (`task-123`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// The VM's disks, as found (the DiskImports are named after them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<VmDisk>,
    /// Bytes done in the current round.
    #[serde(default)]
    pub bytes_done: u64,
    /// Bytes in the current round.
    #[serde(default)]
    pub bytes_total: u64,
    /// Why it failed, or what it waits for.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// When its itinerary started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When it reached an end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,
}

/// A disk of a VM as the plan resolved it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct VmDisk {
    /// Base disk's datastore path (vSphere) or NBD URI.
    pub source: String,
    /// Capacity in bytes.
    pub capacity: u64,
    /// The DiskImport (and PVC) names.
    pub disk_import: String,
    /// PVC name.
    pub pvc: String,
}

/// One snapshot of a warm VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct Precopy {
    /// Snapshot moref.
    pub snapshot: String,
    /// Backing file → change ID in that snapshot.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub change_ids: BTreeMap<String, String>,
    /// Round started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<Time>,
    /// Round ended (every disk copied it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<Time>,
    /// The snapshot was removed.
    #[serde(default)]
    pub removed: bool,
    /// This is the final (cutover) snapshot.
    #[serde(default)]
    pub last: bool,
}

// --- DiskImport --------------------------------------------------------------------------

/// One disk's import: where from, into which PVC, and (warm) the checkpoints to copy.
/// Owned by its plan; owns its pods. Usable alone, as CDI's DataVolume is: append
/// checkpoints and set `finalCheckpoint`, and the controller runs one pod per
/// checkpoint.
#[derive(CustomResource, Debug, Clone, Serialize, Deserialize, JsonSchema, Default)]
#[kube(
    group = "ferry.dev",
    version = "v1alpha1",
    kind = "DiskImport",
    plural = "diskimports",
    singular = "diskimport",
    shortname = "di",
    category = "ferry",
    namespaced,
    status = "DiskImportStatus",
    doc = "One disk's import into a PVC: CDI's multi-stage checkpoints in spec, rounds in status",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Round", type_ = "integer", json_path = ".status.round"),
    printcolumn(name = "Progress", type_ = "string", json_path = ".status.progress"),
    printcolumn(name = "PVC", type_ = "string", json_path = ".spec.pvc.name"),
    printcolumn(
        name = "Host",
        type_ = "string",
        json_path = ".spec.sourceKey",
        priority = 1
    ),
    printcolumn(
        name = "Restarts",
        type_ = "integer",
        json_path = ".status.restarts",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    selectable = ".spec.sourceKey"
)]
#[serde(rename_all = "camelCase")]
pub struct DiskImportSpec {
    /// The plan it belongs to (empty when made by hand).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub plan: String,
    /// The VM's key in the plan.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub vm: String,
    /// The disk's index in the VM.
    #[serde(default)]
    pub disk_index: u32,
    /// Where the bytes come from.
    pub source: DiskSource,
    /// What the per-host limit counts: the ESXi host (`esx12.example.com`), or an NBD
    /// server's `host:port`.
    pub source_key: String,
    /// What the per-vCenter limit counts (the vCenter's host), when behind one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcenter_key: Option<String>,
    /// Per-host cap for `sourceKey` (default 10, at most 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_host_limit: Option<u32>,
    /// Per-vCenter cap (default 48, at most 52).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_vcenter_limit: Option<u32>,
    /// The target.
    pub pvc: PvcTarget,
    /// Disk size in bytes.
    pub capacity: u64,
    /// Warm rounds to copy, in order (CDI's `spec.checkpoints`). Empty: one full copy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checkpoints: Vec<Checkpoint>,
    /// The last checkpoint is the final one (CDI's `spec.finalCheckpoint`).
    #[serde(default)]
    pub final_checkpoint: bool,
    /// Stop: delete the pod, release the slot, end `Canceled`.
    #[serde(default)]
    pub cancel: bool,
    /// The pod's settings.
    #[serde(default)]
    pub pod: PodSettings,
}

/// Where one disk's bytes come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct DiskSource {
    /// VDDK (CDI's `spec.source.vddk`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vddk: Option<VddkDisk>,
    /// An NBD URI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbd: Option<String>,
}

/// CDI's `DataVolumeSourceVDDK`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct VddkDisk {
    /// vCenter or ESXi URL.
    pub url: String,
    /// VM UUID.
    pub uuid: String,
    /// Base disk's datastore path.
    pub backing_file: String,
    /// Certificate thumbprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbprint: Option<String>,
    /// Secret with `accessKeyId` and `secretKey`.
    pub secret_ref: String,
    /// ConfigMap of CA certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_config_map: Option<String>,
    /// The VDDK image for the init container.
    pub init_image_url: String,
    /// ConfigMap with `vddk-config-file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_args: Option<String>,
}

/// The target PVC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct PvcTarget {
    /// Its name.
    pub name: String,
    /// Block or Filesystem.
    #[serde(default)]
    pub volume_mode: VolumeMode,
    /// Create it if missing, with this class (and size from the capacity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<String>,
    /// Its access mode when created (default ReadWriteOnce).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_mode: Option<String>,
    /// The size requested when created (bytes); default from the capacity and the
    /// filesystem overhead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// The overhead of a filesystem volume (`0.055`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystem_overhead: Option<String>,
}

/// What each import pod of a disk gets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct PodSettings {
    /// Image, buffers, restart budget, retention, CPU (the plan's `importer`).
    #[serde(flatten)]
    pub importer: ImporterSettings,
    /// Placement.
    #[serde(default)]
    pub placement: Placement,
    /// Transfer network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_network: Option<TransferNetwork>,
}

/// A disk's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
pub enum DiskPhase {
    /// Nothing to copy yet (no checkpoint, or the PVC is not there).
    #[default]
    Pending,
    /// Waiting for a slot on its host or vCenter.
    Waiting,
    /// Its pod is created, not yet running.
    Scheduled,
    /// Its pod is copying.
    Running,
    /// A warm round is done and no next checkpoint is given yet.
    Paused,
    /// The final (or only) round is copied.
    Succeeded,
    /// The restart budget ran out, or the import failed in a way a restart cannot mend.
    Failed,
    /// Canceled.
    Canceled,
}

impl DiskPhase {
    /// No more pods will run.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            DiskPhase::Succeeded | DiskPhase::Failed | DiskPhase::Canceled
        )
    }
}

/// What the controller reports about a disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct DiskImportStatus {
    /// Phase.
    #[serde(default)]
    pub phase: DiskPhase,
    /// Rounds copied, or being copied (1 = the first).
    #[serde(default)]
    pub round: u32,
    /// The current round's pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// Container restarts of the current round's pod.
    #[serde(default)]
    pub restarts: u32,
    /// The restart count when progress was last seen (the budget counts from here).
    #[serde(default)]
    pub restarts_at_progress: u32,
    /// Restarts spent by pods of this round that ended for good (evicted, node lost)
    /// since progress was last seen: their in-place restarts, and one for each.
    #[serde(default)]
    pub pods_failed: u32,
    /// Bytes done in the current round.
    #[serde(default)]
    pub bytes_done: u64,
    /// Bytes in the current round (the disk, or a delta's changed bytes).
    #[serde(default)]
    pub bytes_total: u64,
    /// `NN.N%`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub progress: String,
    /// Checkpoints copied (`current` of each), in order; `""` stands for a cold copy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checkpoints_copied: Vec<String>,
    /// Pod UIDs whose success was recorded (a pod is never counted twice).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub copied_by: Vec<String>,
    /// The Lease slots held (host, vCenter).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slots: Vec<String>,
    /// When this disk started waiting for a slot (FIFO order per host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_at: Option<Time>,
    /// VDDK version and host of the last round.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vddk: Option<VddkStatus>,
    /// The last round's digest of the disk as read (`blake3-64k:…`), from its pod's
    /// termination message, when the plan asks for one; `verified` when the volume read
    /// back the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The last round's volume was read back and matched `digest`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub verified: bool,
    /// What failed, or what it waits for.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Last progress write (status writes are rate-limited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_updated_at: Option<Time>,
    /// `Bound`, `Running`, `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::condition_list")]
    pub conditions: Vec<Condition>,
}

/// VDDK version and host (CDI's `vddkInfo`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct VddkStatus {
    /// Library version.
    pub version: String,
    /// Host that served the disk.
    pub host: String,
}
