//! The few vSphere (vim25 SOAP) calls a data plane needs.
//!
//! # Calls
//!
//! Every call is an HTTPS `POST` of a hand-written SOAP 1.1 envelope to
//! `https://HOST[:PORT]/sdk` with `SOAPAction: urn:vim25/<version>`:
//!
//! | step | vim25 method | used by |
//! | --- | --- | --- |
//! | service content (morefs of the managers, `about.apiVersion`) | `ServiceInstance.RetrieveServiceContent` | [`Client::login`] (sent with `urn:vim25/6.7`; later calls use the server's `apiVersion`) |
//! | log in; keep the `vmware_soap_session` cookie | `SessionManager.Login` | [`Client::login`], re-login |
//! | list datacenters (through nested folders) | `PropertyCollector.RetrievePropertiesEx` (+ `ContinueRetrievePropertiesEx`) from `rootFolder` over `Folder.childEntity` | [`Client::find_vm`] |
//! | instance UUID in each datacenter | `SearchIndex.FindByUuid` (`vmSearch=true`, `instanceUuid=true`) | [`Client::find_vm`] |
//! | BIOS UUID in each datacenter, all matches | `SearchIndex.FindAllByUuid` (`vmSearch=true`, `instanceUuid=false`) | [`Client::find_vm`] |
//! | `name`, `runtime.powerState`, `runtime.host`; the host's `name` | `RetrievePropertiesEx` | [`Client::find_vm`] |
//! | `config.hardware.device`, `snapshot` of the VM; `config.hardware.device` of its snapshots | `RetrievePropertiesEx` | [`Client::find_disk`], [`Client::snapshot_disk`] |
//! | changed areas (CBT) of a snapshot disk, one page | `VirtualMachine.QueryChangedDiskAreas` | [`Client::query_changed_disk_areas`], [`for_each_changed_area_page`] |
//! | change ID of a disk in a snapshot (`backing.changeId`) | `RetrievePropertiesEx` | [`Client::snapshot_change_id`] |
//! | take a snapshot (Forklift: `memory=false`, `quiesce=true`) | `VirtualMachine.CreateSnapshot_Task` | [`Client::create_snapshot`] |
//! | a createSnapshot / removeSnapshot task still queued or running, to reuse after a restart | `RetrievePropertiesEx` of `recentTask`, then `info.name`, `info.descriptionId`, `info.state` of those tasks | [`Client::running_task`] |
//! | a task's state, progress, result moref, fault | `RetrievePropertiesEx` of `Task.info` | [`Client::task_info`], [`Client::wait_task`], [`Client::wait_snapshot_created`] |
//! | remove a snapshot (Forklift: `removeChildren=false`, `consolidate=true`) | `VirtualMachineSnapshot.RemoveSnapshot_Task` | [`Client::remove_snapshot`] |
//! | change ID of every disk of a snapshot, by base disk (StoreSnapshotDeltas) | `RetrievePropertiesEx` of `snapshot`, then the snapshot's `config.hardware.device` | [`Client::snapshot_change_ids`] |
//! | power state, re-read | `RetrievePropertiesEx` of `runtime.powerState` | [`Client::power_state`], [`Client::wait_power_state`] |
//! | guest OS shutdown (needs VMware Tools) | `VirtualMachine.ShutdownGuest` | [`Client::shutdown_guest`], [`Client::power_off_for_cutover`] |
//! | hard power off / power on | `VirtualMachine.PowerOffVM_Task` / `PowerOnVM_Task` | [`Client::power_off`], [`Client::power_on`], [`Client::power_off_for_cutover`] (fallback) |
//! | the VM's host now (DRS may move it) | `RetrievePropertiesEx` of `runtime.host`, then the host's `name` | [`Client::current_host`] |
//! | the VM's disks now | `RetrievePropertiesEx` of `config.hardware.device` | [`Client::vm_disks`] |
//! | end the session | `SessionManager.Logout` | [`Client::logout`] |
//!
//! # Tasks
//!
//! `*_Task` methods return a `Task` moref ([`TaskRef`]) at once; the work is done when
//! its `info.state` is `success` (then `info.result` is the new snapshot for
//! `CreateSnapshot_Task`) or `error` (then `info.error` names the fault, returned by
//! [`Client::wait_task`] as [`Error::TaskFailed`]). Tasks are polled with
//! `RetrievePropertiesEx`, not `WaitForUpdatesEx` (as govmomi's `task.Wait` does), so no
//! property filter is left on the server by a controller that stops. vCenter names a
//! task by its vmodl method in `info.name` (`vim.VirtualMachine.createSnapshot`, which
//! Forklift compares) and `info.descriptionId` (`VirtualMachine.createSnapshot`);
//! [`TaskKind::matches`] accepts both and vcsim's names. A `TaskInfo` without a state or
//! with another state, a `result` that is not a moref, a `progress` outside 0–100, or the
//! `error` state without a fault is refused ([`Error::Protocol`]).
//!
//! Forklift's cutover (`PowerOffSource`) calls `ShutdownGuest` only; without VMware
//! Tools the step fails and the VM stays on. [`Client::power_off_for_cutover`] does the
//! same with [`CutoverPowerOff::GuestOnly`] and falls back to a hard `PowerOffVM_Task`
//! with [`CutoverPowerOff::GuestThenHard`].
//!
//! # Faults
//!
//! A SOAP fault (HTTP 500 with `soapenv:Fault`) is read by its vim25 type (the `xsi:type`
//! of the `detail` element):
//! - `InvalidLogin` during login → [`Error::Authentication`];
//! - `NotAuthenticated` on any call after login (the session expired, F8) → the client logs
//!   in again **once** with the stored credentials and repeats the call once; a second
//!   `NotAuthenticated` is returned as [`Error::Fault`];
//! - `ManagedObjectNotFound` when reading a VM or a snapshot → [`Error::NotFound`];
//! - `ManagedObjectNotFound` on the `_this` of a snapshot, power or task call (the VM,
//!   snapshot or task is gone) → [`Error::NotFound`];
//! - a task that ends in `error` → [`Error::TaskFailed`] with the fault's type and message
//!   ([`Error::fault_name`] reads it from either);
//! - `FileFault`, or `InvalidArgument` about `changeId`, from `QueryChangedDiskAreas` (CBT
//!   was reset, or the change ID is from another epoch) → [`Error::ChangeIdInvalid`]: a
//!   full copy is needed;
//! - anything else → [`Error::Fault`] with its name and message.
//!
//! # Bounds
//!
//! Opening a connection is bounded by [`CONNECT_TIMEOUT`], each call by [`CALL_TIMEOUT`]
//! (both adjustable through [`ClientOptions`]); bodies larger than [`MAX_RESPONSE_BYTES`]
//! are refused ([`Error::Protocol`]), as are documents nested deeper than
//! [`xml::MAX_XML_DEPTH`]; lists are capped ([`MAX_DATACENTERS`], [`MAX_DEVICES`],
//! [`MAX_SNAPSHOTS`], [`MAX_PARENT_CHAIN`], [`MAX_RETRIEVE_OBJECTS`], [`MAX_RECENT_TASKS`],
//! [`cbt::MAX_AREAS_PER_PAGE`], [`cbt::MAX_CHANGED_AREA_PAGES`]). Changed-area pages are
//! checked before use and never collected: see [`cbt`]. Waiting for a task or a power
//! state is bounded by the caller's timeout, polling no faster than
//! [`MIN_POLL_INTERVAL`].
//!
//! # TLS and proxies
//!
//! See [`TlsPolicy`]: a pinned SHA-1 thumbprint, or a CA directory with host name
//! verification, or an explicitly insecure mode that logs a warning; otherwise the client
//! refuses to connect. Connections, proxies and trust are `ferry-http`'s (re-exported
//! here as [`proxy`], [`tls`] and [`ClientOptions`]): the proxy is chosen from the
//! environment as Go's `http.ProxyFromEnvironment` chooses it and used through a `CONNECT`
//! tunnel, over TLS for an `https://` proxy; a server certificate whose key the TLS stack
//! cannot use is named by key type and size.

#![forbid(unsafe_code)]
// Every narrowing or sign-dropping `as` in library code is a finding; unit tests build
// their fixtures with plain casts.
#![warn(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
#![cfg_attr(test, allow(clippy::cast_possible_truncation, clippy::cast_sign_loss))]

pub mod cbt;
pub mod changed_areas;
pub mod client;
pub mod error;
pub mod fuzzing;
pub mod soap;
pub mod task;
pub mod transport;
pub mod xml;

pub use cbt::{ChangedArea, ChangedAreasPage};
pub use changed_areas::{for_each_changed_area_page, for_each_changed_area_page_from};
pub use client::{Client, Disk, Vm};
pub use error::Error;
pub use ferry_http::{Proxy, ProxyConfig, ProxyScheme, proxy, tls};
pub use task::{
    CutoverPowerOff, DiskChangeId, PowerOffStarted, PowerState, TaskFault, TaskInfo, TaskKind,
    TaskRef, TaskState, base_disk_name, datastore_of,
};
pub use tls::{TlsPolicy, normalize_thumbprint, thumbprint_of};
pub use transport::{CALL_TIMEOUT, CONNECT_TIMEOUT, ClientOptions, Endpoint};

/// Largest SOAP response body accepted.
pub const MAX_RESPONSE_BYTES: usize = ferry_http::DEFAULT_MAX_BODY_BYTES;
/// Most datacenters walked by [`Client::find_vm`].
pub const MAX_DATACENTERS: usize = 10_000;
/// Most devices read from one `config.hardware.device`.
pub const MAX_DEVICES: usize = 1024;
/// Most snapshots read from one snapshot tree.
pub const MAX_SNAPSHOTS: usize = 1024;
/// Most parents followed along one disk's backing chain.
pub const MAX_PARENT_CHAIN: usize = 25;
/// Most objects accepted from one (paged) `RetrievePropertiesEx`.
pub const MAX_RETRIEVE_OBJECTS: usize = 10_000;
/// Most tasks read from one VM's `recentTask` (vCenter keeps about 200 in all).
pub const MAX_RECENT_TASKS: usize = 1000;
/// The shortest poll interval [`Client::wait_task`] and [`Client::wait_power_state`]
/// use (a smaller one is raised to it).
pub const MIN_POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);
/// Name of the session cookie set by `Login`.
pub const SESSION_COOKIE: &str = "vmware_soap_session";
