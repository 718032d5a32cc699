//! A fake vCenter: an HTTPS vim25 SOAP server built from an [`Inventory`], answering the
//! calls `ferry-vsphere` makes, with the envelope shapes, element names and fault types of
//! a real vCenter.
//!
//! Calls served: `RetrieveServiceContent`, `Login`, `Logout`, `FindByUuid`,
//! `FindAllByUuid`, `RetrievePropertiesEx` (object sets with `Folder.childEntity`
//! and `Datacenter.vmFolder` traversal specs; `name`, `runtime.powerState`, `runtime.host`, `config.instanceUuid`,
//! `config.uuid`, `config.hardware.device`, `snapshot` on VMs; `name` on datacenters and
//! hosts; `config.hardware.device` on snapshots), `ContinueRetrievePropertiesEx` and
//! `QueryChangedDiskAreas` (CBT, on snapshot disks); and the calls of a warm migration:
//! `CreateSnapshot_Task`, `RemoveSnapshot_Task`, `PowerOnVM_Task`, `PowerOffVM_Task`,
//! `ShutdownGuest`, with `info`, `info.state`, `info.name`, `info.descriptionId` on tasks
//! and `recentTask`, `guest.toolsRunningStatus` on VMs.
//!
//! VMs change: a task is `queued` for `task_queue_ms`, `running` (with a rising
//! `progress`) for `task_run_ms`, then ends, all evaluated when a call comes in (nothing
//! runs in the background); with both 0 it is done before its call answers, as on
//! vcsim. Tasks are named as vCenter names them (`info.name`
//! `vim.VirtualMachine.createSnapshot`, `vim.vm.Snapshot.remove`,
//! `vim.VirtualMachine.powerOn`/`powerOff`; `descriptionId` `VirtualMachine.createSnapshot`
//! …), with the VM as `entity`, and listed in the VM's `recentTask`. A snapshot takes
//! the VM's current disks with a fresh change ID each (same CBT epoch, a new sequence
//! number; `previous_change_id` is the disk's change ID before; `changed_areas` what the
//! guest wrote since, as told by [`FakeVcenter::write`] or a [`FakeVcenter::on_snapshot`]
//! hook), the VM goes on in a new
//! delta (`-00000N.vmdk`) of each disk, and the snapshot becomes the current one, a child
//! of the previous current snapshot; its result is `snapshot-1001`, `snapshot-1002`, ….
//! Removing one reparents its children (or drops them with `removeChildren`); removing
//! one that is gone is `ManagedObjectNotFound` on the call (or in the task, if it went
//! while the task waited). Powering on what is on, or off what is off, ends the task in
//! `InvalidPowerState`. `ShutdownGuest` answers `InvalidPowerState` unless the VM is on,
//! `ToolsUnavailable` unless `tools_running`, and otherwise powers the VM off after
//! `guest_shutdown_ms`.
//!
//! Faults are injected per method with the inventory's `faults` (or
//! [`FakeVcenter::inject_fault`]): a `*_Task` method starts a task that ends in `error`
//! with the fault (or answers it at once with `immediate`), any other method answers the
//! SOAP fault; `times` limits how many calls get it. `task_info_quirk` serves every
//! `TaskInfo` malformed: without `state`, with state `done`, or with a result that is an
//! `xsd:string`. [`FakeVcenter::move_vm`] moves a VM to another host (DRS).
//!
//! `QueryChangedDiskAreas(_this=vm, snapshot, deviceKey, startOffset, changeId)` answers
//! from the snapshot disk's inventory: change ID `*` → `allocated_areas` (default: the
//! whole disk); the disk's `previous_change_id` (alias `changed_since`) →
//! `changed_areas`; any other change ID → `FileFault` "Error caused by file …" (as after a
//! CBT reset). A page holds at most `page_areas` areas (default 2000, like vCenter); its
//! `startOffset` is the requested start and its `length` reaches the end of its last area
//! when more areas follow, else the disk end. With `buggy_empty_pages` every call with a
//! non-zero start answers an empty, non-advancing page (the vcsim bug behind F1). Unknown
//! VM or snapshot (or a snapshot of another VM) → `ManagedObjectNotFound`; unknown
//! device key or a start past the disk end → `InvalidArgument`.
//!
//! Faults: `InvalidLogin` (bad credentials), `NotAuthenticated` (no or stale session
//! cookie, or a session past `session_ttl_calls`), `ManagedObjectNotFound` (unknown moref),
//! `InvalidArgument` (malformed request), `InvalidProperty` (unknown property path),
//! `FileFault` (unknown CBT change ID), `MethodNotFound` (any other method).
//!
//! Every call is logged to stderr and kept in memory ([`FakeVcenter::calls`]), and written
//! to the call-log file when one is given, one line per call:
//! `Login user=admin`, `FindByUuid uuid=… instance=true dc=datacenter-1`,
//! `RetrievePropertiesEx obj=vm-123 props=name,runtime.powerState`,
//! `QueryChangedDiskAreas vm=vm-123 snapshot=snapshot-7 key=2000 start=0 changeId=*`,
//! `CreateSnapshot_Task vm=vm-123 name=… memory=false quiesce=true`,
//! `RemoveSnapshot_Task snapshot=snapshot-1001 removeChildren=false consolidate=true`,
//! `PowerOffVM_Task vm=vm-123`, `PowerOnVM_Task vm=vm-123`, `ShutdownGuest vm=vm-123`,
//! `Logout`; a call answered with a fault gets ` fault=<Name>` appended.

#![forbid(unsafe_code)]

pub mod inventory;
mod vm;
mod xml;

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use inventory::{
    Area, DEFAULT_PAGE_AREAS, Datacenter, DiskSpec, FaultSpec, Inventory, SnapshotSpec,
    TaskInfoQuirk, VmSpec,
};
use vm::{FakeTask, Outcome, TaskOp, VmState};
use xml::{El, esc};

/// A fault type name that lives as long as the fake (injected faults are few).
fn intern(name: &str) -> &'static str {
    Box::leak(name.to_string().into_boxed_str())
}

/// Largest request body accepted.
const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;
/// Session cookie name, as vCenter sets it.
pub const SESSION_COOKIE: &str = "vmware_soap_session";

/// How the server misbehaves, for transport tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Behavior {
    /// Answer like vCenter.
    #[default]
    Normal,
    /// Accept TCP connections and never send a byte (no TLS handshake).
    HangOnAccept,
    /// Complete the TLS handshake, read requests, never answer.
    HangOnRequest,
    /// Answer every request with this HTTP status and body.
    Raw {
        /// HTTP status.
        status: u16,
        /// Body bytes.
        body: Vec<u8>,
    },
}

/// Start-up options.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Append one line per call to this file.
    pub call_log: Option<PathBuf>,
    /// Misbehaviour, if any.
    pub behavior: Behavior,
    /// Do not print calls to stderr.
    pub quiet: bool,
}

#[derive(Debug, Clone)]
struct Obj {
    kind: &'static str,
    /// property path → complete `<val …>…</val>` element.
    props: BTreeMap<String, String>,
    /// Valid (possibly unset) property paths.
    valid: &'static [&'static str],
    /// `childEntity` of a folder.
    children: Vec<String>,
}

const VM_PROPS: &[&str] = &[
    "name",
    "runtime.powerState",
    "runtime.host",
    "config.instanceUuid",
    "config.uuid",
    "config.hardware.device",
    "snapshot",
    "recentTask",
    "guest.toolsRunningStatus",
];

const TASK_PROPS: &[&str] = &["info", "info.state", "info.name", "info.descriptionId"];

#[derive(Debug)]
struct State {
    inv: Inventory,
    objects: HashMap<String, Obj>,
    /// (vm moref, instance uuid, bios uuid, datacenter moref)
    vms: Vec<(String, String, String, String)>,
    /// snapshot moref → (vm moref, the snapshot's disks)
    snapshot_disks: HashMap<String, (String, Vec<DiskSpec>)>,
    /// The VMs' mutable state, by moref.
    vm_state: HashMap<String, VmState>,
    /// ESX host name → moref.
    hosts: BTreeMap<String, String>,
    /// Every task, oldest first.
    tasks: Vec<FakeTask>,
    next_task: u64,
    next_snapshot: u64,
    /// Sequence number of the change IDs the fake hands out.
    change_seq: u64,
    /// (when, VM moref): guests shutting down after `ShutdownGuest`.
    shutdowns: Vec<(Instant, String)>,
    /// Injected faults, with their type names interned.
    faults: Vec<(&'static str, FaultSpec)>,
    sessions: HashMap<String, u64>,
    next_session: u64,
    pages: HashMap<String, Vec<String>>,
    next_token: u64,
    calls: Vec<String>,
    call_log: Option<std::fs::File>,
    quiet: bool,
    /// (VM moref, disk key) → areas the guest wrote since the disk's last snapshot
    /// ([`FakeVcenter::write`]): the next snapshot's `changed_areas`, as CBT tracks them.
    written: HashMap<(String, i32), Vec<Area>>,
    /// Called after each snapshot is taken ([`FakeVcenter::on_snapshot`]).
    snapshot_hook: Option<SnapshotHook>,
}

/// A test's view of a snapshot being taken: `(vm moref, snapshot moref)` → the areas
/// the guest writes right after it, per disk key (recorded as by [`FakeVcenter::write`]).
type SnapshotHookFn = dyn FnMut(&str, &str) -> Vec<(i32, Vec<Area>)> + Send;

struct SnapshotHook(Box<SnapshotHookFn>);

impl std::fmt::Debug for SnapshotHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SnapshotHook")
    }
}

fn disk_xml(d: &DiskSpec) -> String {
    fn backing(kind: &str, file: &str, change_id: Option<&str>, parents: &[String]) -> String {
        let parent = match parents.split_first() {
            Some((p, rest)) => format!(
                "<parent xsi:type=\"{kind}\">{}</parent>",
                backing(kind, p, None, rest)
            ),
            None => String::new(),
        };
        // VirtualDiskRawDiskVer2BackingInfo names its file descriptorFileName.
        let file_el = if kind == "VirtualDiskRawDiskVer2BackingInfo" {
            "descriptorFileName"
        } else {
            "fileName"
        };
        format!(
            concat!(
                "<{fe}>{}</{fe}><datastore type=\"Datastore\">datastore-11</datastore>",
                "<backingObjectId></backingObjectId><diskMode>persistent</diskMode>",
                "<split>false</split><writeThrough>false</writeThrough>",
                "<thinProvisioned>true</thinProvisioned>",
                "<uuid>6000C29d-0000-0000-0000-000000000000</uuid>{}{}",
                "<digestEnabled>false</digestEnabled><sharing>sharingNone</sharing>"
            ),
            esc(file),
            change_id
                .map(|c| format!("<changeId>{}</changeId>", esc(c)))
                .unwrap_or_default(),
            parent,
            fe = file_el,
        )
    }
    let kind = d
        .backing
        .as_deref()
        .unwrap_or("VirtualDiskFlatVer2BackingInfo");
    format!(
        concat!(
            "<VirtualDevice xsi:type=\"VirtualDisk\"><key>{key}</key>",
            "<deviceInfo><label>Hard disk {n}</label><summary>{kb} KB</summary></deviceInfo>",
            "<backing xsi:type=\"{kind}\">{backing}</backing>",
            "<controllerKey>1000</controllerKey><unitNumber>{n}</unitNumber>",
            "<capacityInKB>{kb}</capacityInKB><capacityInBytes>{bytes}</capacityInBytes>",
            "<shares><shares>1000</shares><level>normal</level></shares>",
            "<storageIOAllocation><limit>-1</limit></storageIOAllocation>",
            "<diskObjectId>1-{key}</diskObjectId><nativeUnmanagedLinkedClone>false</nativeUnmanagedLinkedClone>",
            "</VirtualDevice>"
        ),
        key = d.key,
        n = d.key.rem_euclid(1000),
        kb = d.capacity_bytes / 1024,
        bytes = d.capacity_bytes,
        kind = esc(kind),
        backing = backing(kind, &d.file_name, d.change_id.as_deref(), &d.parents),
    )
}

fn devices_xml(disks: &[DiskSpec]) -> String {
    let mut s = String::from("<val xsi:type=\"ArrayOfVirtualDevice\">");
    s.push_str(concat!(
        "<VirtualDevice xsi:type=\"VirtualIDEController\"><key>200</key><deviceInfo>",
        "<label>IDE 0</label><summary>IDE 0</summary></deviceInfo><busNumber>0</busNumber>",
        "</VirtualDevice>",
        "<VirtualDevice xsi:type=\"ParaVirtualSCSIController\"><key>1000</key><deviceInfo>",
        "<label>SCSI controller 0</label><summary>VMware paravirtual SCSI</summary></deviceInfo>",
        "<busNumber>0</busNumber><device>2000</device><hotAddRemove>true</hotAddRemove>",
        "<sharedBus>noSharing</sharedBus><scsiCtlrUnitNumber>7</scsiCtlrUnitNumber></VirtualDevice>"
    ));
    for d in disks {
        s.push_str(&disk_xml(d));
    }
    s.push_str("</val>");
    s
}

fn snapshot_node_xml(vm: &str, s: &SnapshotSpec, id: &mut u32) -> String {
    *id += 1;
    let mut out = format!(
        concat!(
            "<snapshot type=\"VirtualMachineSnapshot\">{}</snapshot>",
            "<vm type=\"VirtualMachine\">{}</vm><name>{}</name><description>{}</description>",
            "<id>{}</id><createTime>2026-01-01T00:00:00.000Z</createTime>",
            "<state>poweredOff</state><quiesced>{}</quiesced>"
        ),
        esc(&s.moref),
        esc(vm),
        esc(&s.name),
        esc(&s.description),
        id,
        s.quiesced
    );
    for c in &s.children {
        out.push_str(&format!(
            "<childSnapshotList>{}</childSnapshotList>",
            snapshot_node_xml(vm, c, id)
        ));
    }
    out.push_str("<replaySupported>false</replaySupported>");
    out
}

fn last_snapshot(s: &[SnapshotSpec]) -> Option<&SnapshotSpec> {
    let last = s.last()?;
    Some(last_snapshot(&last.children).unwrap_or(last))
}

fn string_val(kind: &str, v: &str) -> String {
    format!("<val xsi:type=\"{kind}\">{}</val>", esc(v))
}

impl State {
    fn new(inv: Inventory, opts: &Options) -> std::io::Result<State> {
        let mut objects = HashMap::new();
        let mut vms = Vec::new();
        let mut vm_state = HashMap::new();
        let mut dc_morefs = Vec::new();
        for (i, dc) in inv.datacenters.iter().enumerate() {
            let dcm = dc
                .moref
                .clone()
                .unwrap_or_else(|| format!("datacenter-{}", i + 1));
            dc_morefs.push(dcm.clone());
            let mut props = BTreeMap::new();
            props.insert("name".into(), string_val("xsd:string", &dc.name));
            // The datacenter's VM folder (`vmFolder`), holding its VMs.
            let vm_folder = format!("group-v{}", i + 1);
            props.insert(
                "vmFolder".into(),
                format!(
                    "<val type=\"Folder\" xsi:type=\"ManagedObjectReference\">{vm_folder}</val>"
                ),
            );
            objects.insert(
                dcm.clone(),
                Obj {
                    kind: "Datacenter",
                    props,
                    valid: &["name", "vmFolder"],
                    children: vec![vm_folder.clone()],
                },
            );
            let mut props = BTreeMap::new();
            props.insert("name".into(), string_val("xsd:string", "vm"));
            objects.insert(
                vm_folder,
                Obj {
                    kind: "Folder",
                    props,
                    valid: &["name", "childEntity"],
                    children: dc.vms.iter().map(|v| v.moref.clone()).collect(),
                },
            );
            for vm in &dc.vms {
                vms.push((
                    vm.moref.clone(),
                    vm.instance_uuid.clone(),
                    vm.bios_uuid.clone(),
                    dcm.clone(),
                ));
                vm_state.insert(
                    vm.moref.clone(),
                    VmState {
                        spec: vm.clone(),
                        current: last_snapshot(&vm.snapshots).map(|s| s.moref.clone()),
                        recent_tasks: Vec::new(),
                    },
                );
            }
        }
        let mut props = BTreeMap::new();
        props.insert("name".into(), string_val("xsd:string", "Datacenters"));
        objects.insert(
            "group-d1".into(),
            Obj {
                kind: "Folder",
                props,
                valid: &["name", "childEntity"],
                children: dc_morefs,
            },
        );
        let call_log = match &opts.call_log {
            Some(p) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            ),
            None => None,
        };
        let faults = inv
            .faults
            .iter()
            .map(|f| (intern(&f.fault), f.clone()))
            .collect();
        let mut st = State {
            inv,
            objects,
            vms,
            snapshot_disks: HashMap::new(),
            vm_state,
            hosts: BTreeMap::new(),
            tasks: Vec::new(),
            next_task: 1,
            next_snapshot: 1001,
            change_seq: 100,
            shutdowns: Vec::new(),
            faults,
            sessions: HashMap::new(),
            written: HashMap::new(),
            snapshot_hook: None,
            next_session: 1,
            pages: HashMap::new(),
            next_token: 1,
            calls: Vec::new(),
            call_log,
            quiet: opts.quiet,
        };
        // Hosts in the order the inventory names them.
        let names: Vec<String> = st
            .vms
            .iter()
            .filter_map(|(m, ..)| st.vm_state[m].spec.host.clone())
            .collect();
        for h in names {
            st.host_moref(&h);
        }
        let morefs: Vec<String> = st.vms.iter().map(|(m, ..)| m.clone()).collect();
        for m in morefs {
            st.refresh_vm(&m);
        }
        Ok(st)
    }

    /// The moref of the host with this name, creating its `HostSystem` on first use.
    fn host_moref(&mut self, name: &str) -> String {
        if let Some(m) = self.hosts.get(name) {
            return m.clone();
        }
        let m = format!("host-{}", self.hosts.len() + 1);
        self.hosts.insert(name.to_string(), m.clone());
        let mut props = BTreeMap::new();
        props.insert("name".into(), string_val("xsd:string", name));
        self.objects.insert(
            m.clone(),
            Obj {
                kind: "HostSystem",
                props,
                valid: &["name"],
                children: vec![],
            },
        );
        m
    }

    /// Render a VM's properties and its snapshots' objects from its state.
    fn refresh_vm(&mut self, moref: &str) {
        let Some(vm) = self.vm_state.get(moref).cloned() else {
            return;
        };
        let spec = &vm.spec;
        let mut props = BTreeMap::new();
        props.insert("name".into(), string_val("xsd:string", &spec.name));
        props.insert(
            "runtime.powerState".into(),
            string_val("VirtualMachinePowerState", &spec.power_state),
        );
        props.insert(
            "config.instanceUuid".into(),
            string_val("xsd:string", &spec.instance_uuid),
        );
        props.insert(
            "config.uuid".into(),
            string_val("xsd:string", &spec.bios_uuid),
        );
        props.insert("config.hardware.device".into(), devices_xml(&spec.disks));
        props.insert(
            "guest.toolsRunningStatus".into(),
            string_val(
                "xsd:string",
                if spec.tools_running && spec.power_state == "poweredOn" {
                    "guestToolsRunning"
                } else {
                    "guestToolsNotRunning"
                },
            ),
        );
        if let Some(h) = &spec.host {
            let hm = self.host_moref(h);
            props.insert(
                "runtime.host".into(),
                format!("<val type=\"HostSystem\" xsi:type=\"ManagedObjectReference\">{hm}</val>"),
            );
        }
        if !vm.recent_tasks.is_empty() {
            let mut v = String::from("<val xsi:type=\"ArrayOfManagedObjectReference\">");
            for t in &vm.recent_tasks {
                v.push_str(&format!(
                    "<ManagedObjectReference type=\"Task\" xsi:type=\"ManagedObjectReference\">{}</ManagedObjectReference>",
                    esc(t)
                ));
            }
            v.push_str("</val>");
            props.insert("recentTask".into(), v);
        }
        if !spec.snapshots.is_empty() {
            let mut id = 0;
            let mut s = String::from("<val xsi:type=\"VirtualMachineSnapshotInfo\">");
            if let Some(cur) = &vm.current {
                s.push_str(&format!(
                    "<currentSnapshot type=\"VirtualMachineSnapshot\">{}</currentSnapshot>",
                    esc(cur)
                ));
            }
            for r in &spec.snapshots {
                s.push_str(&format!(
                    "<rootSnapshotList>{}</rootSnapshotList>",
                    snapshot_node_xml(moref, r, &mut id)
                ));
            }
            s.push_str("</val>");
            props.insert("snapshot".into(), s);
        }
        self.objects.insert(
            moref.to_string(),
            Obj {
                kind: "VirtualMachine",
                props,
                valid: VM_PROPS,
                children: vec![],
            },
        );
        // The snapshots: drop the old objects of this VM, add the tree's.
        let old: Vec<String> = self
            .snapshot_disks
            .iter()
            .filter(|(_, (owner, _))| owner == moref)
            .map(|(s, _)| s.clone())
            .collect();
        for s in old {
            self.snapshot_disks.remove(&s);
            self.objects.remove(&s);
        }
        let mut stack: Vec<&SnapshotSpec> = spec.snapshots.iter().collect();
        while let Some(s) = stack.pop() {
            self.snapshot_disks
                .insert(s.moref.clone(), (moref.to_string(), s.disks.clone()));
            let mut props = BTreeMap::new();
            props.insert("config.hardware.device".into(), devices_xml(&s.disks));
            self.objects.insert(
                s.moref.clone(),
                Obj {
                    kind: "VirtualMachineSnapshot",
                    props,
                    valid: &["config.hardware.device"],
                    children: vec![],
                },
            );
            stack.extend(s.children.iter());
        }
    }

    /// End every task and guest shutdown whose time has come, apply their effects, and
    /// render every task's `info` as of now.
    fn advance(&mut self) {
        let now = Instant::now();
        let due: Vec<(Instant, String)> = self
            .shutdowns
            .iter()
            .filter(|(at, _)| *at <= now)
            .cloned()
            .collect();
        self.shutdowns.retain(|(at, _)| *at > now);
        for (_, vm) in due {
            if let Some(v) = self.vm_state.get_mut(&vm) {
                v.spec.power_state = "poweredOff".into();
            }
            self.refresh_vm(&vm);
        }
        for i in 0..self.tasks.len() {
            if !self.tasks[i].due(now) {
                continue;
            }
            let outcome = self.execute(i);
            self.tasks[i].outcome = Some(outcome);
            let vm = self.tasks[i].vm.clone();
            self.refresh_vm(&vm);
        }
        let quirk = self.inv.task_info_quirk;
        for t in &self.tasks {
            let info = t.info_xml(now, quirk);
            let (name, did) = t.op.names();
            let state = if info.contains("<state>") {
                info.split("<state>")
                    .nth(1)
                    .and_then(|r| r.split("</state>").next())
                    .unwrap_or_default()
                    .to_string()
            } else {
                String::new()
            };
            let mut props = BTreeMap::new();
            props.insert("info".into(), info);
            if !state.is_empty() {
                props.insert("info.state".into(), string_val("TaskInfoState", &state));
            }
            props.insert("info.name".into(), string_val("xsd:string", name));
            props.insert("info.descriptionId".into(), string_val("xsd:string", did));
            self.objects.insert(
                t.moref.clone(),
                Obj {
                    kind: "Task",
                    props,
                    valid: TASK_PROPS,
                    children: vec![],
                },
            );
        }
    }

    /// Carry out task `i` now: its effect, or its injected fault.
    fn execute(&mut self, i: usize) -> Outcome {
        let t = self.tasks[i].clone();
        if let Some((name, message)) = t.fault {
            return Outcome::Error(name, message, String::new());
        }
        let Some(vm) = self.vm_state.get_mut(&t.vm) else {
            return Outcome::Error(
                "ManagedObjectNotFound".into(),
                format!(
                    "The object 'vim.VirtualMachine:{}' has already been deleted",
                    t.vm
                ),
                format!("<obj type=\"VirtualMachine\">{}</obj>", esc(&t.vm)),
            );
        };
        let invalid_power = |vm: &VmState, requested: &str| {
            Outcome::Error(
                "InvalidPowerState".into(),
                format!(
                    "The attempted operation cannot be performed in the current state ({}).",
                    vm.spec.power_state
                ),
                format!(
                    "<requestedState>{requested}</requestedState><existingState>{}</existingState>",
                    esc(&vm.spec.power_state)
                ),
            )
        };
        match &t.op {
            TaskOp::CreateSnapshot {
                name,
                description,
                quiesce,
            } => {
                let mut n = self.next_snapshot;
                let moref = loop {
                    let m = format!("snapshot-{n}");
                    n += 1;
                    if !self.snapshot_disks.contains_key(&m) && !self.objects.contains_key(&m) {
                        break m;
                    }
                };
                self.next_snapshot = n;
                let vm_moref = t.vm.clone();
                let written = &mut self.written;
                let changed =
                    |key: i32| written.remove(&(vm_moref.clone(), key)).unwrap_or_default();
                vm.take_snapshot(
                    &moref,
                    name,
                    description,
                    *quiesce,
                    &mut self.change_seq,
                    changed,
                );
                if let Some(hook) = self.snapshot_hook.as_mut() {
                    for (key, areas) in (hook.0)(&t.vm, &moref) {
                        self.written
                            .entry((t.vm.clone(), key))
                            .or_default()
                            .extend(areas);
                    }
                }
                Outcome::Success(Some(("VirtualMachineSnapshot", moref)))
            }
            TaskOp::RemoveSnapshot {
                snapshot,
                remove_children,
            } => {
                if vm.remove_snapshot(snapshot, *remove_children).is_empty() {
                    let f = not_found("VirtualMachineSnapshot", snapshot);
                    return Outcome::Error(f.0.into(), f.1, f.2);
                }
                Outcome::Success(None)
            }
            TaskOp::PowerOn => {
                if vm.spec.power_state == "poweredOn" {
                    return invalid_power(vm, "poweredOn");
                }
                vm.spec.power_state = "poweredOn".into();
                Outcome::Success(None)
            }
            TaskOp::PowerOff => {
                if vm.spec.power_state == "poweredOff" {
                    return invalid_power(vm, "poweredOff");
                }
                vm.spec.power_state = "poweredOff".into();
                Outcome::Success(None)
            }
        }
    }

    /// The injected fault for `method`, if one applies to this call (counting it).
    fn take_fault(&mut self, method: &str) -> Option<(&'static str, FaultSpec)> {
        let i = self
            .faults
            .iter()
            .position(|(_, f)| f.method == method && f.times != Some(0))?;
        let (name, f) = &mut self.faults[i];
        if let Some(n) = &mut f.times {
            *n -= 1;
        }
        Some((*name, f.clone()))
    }

    /// Start a task on `vm`.
    fn start_task(&mut self, vm: &str, op: TaskOp, fault: Option<(String, String)>) -> String {
        let moref = format!("task-{}", self.next_task);
        self.next_task += 1;
        let vm_name = self
            .vm_state
            .get(vm)
            .map(|v| v.spec.name.clone())
            .unwrap_or_default();
        self.tasks.push(FakeTask {
            moref: moref.clone(),
            vm: vm.to_string(),
            vm_name,
            op,
            queued_at: Instant::now(),
            queued_wall: SystemTime::now(),
            queue: Duration::from_millis(self.inv.task_queue_ms),
            run: Duration::from_millis(self.inv.task_run_ms),
            fault,
            outcome: None,
            event_chain: 4000 + self.next_task,
        });
        if let Some(v) = self.vm_state.get_mut(vm) {
            v.recent_tasks.push(moref.clone());
            if v.recent_tasks.len() > vm::MAX_RECENT {
                v.recent_tasks.remove(0);
            }
        }
        self.refresh_vm(vm);
        self.advance();
        moref
    }

    fn log(&mut self, line: String) {
        if !self.quiet {
            eprintln!("fake-vcenter: {line}");
        }
        if let Some(f) = &mut self.call_log {
            let _ = writeln!(f, "{line}");
        }
        self.calls.push(line);
    }
}

/// A fault reply: (vim25 fault type, fault string, extra detail XML).
struct Fault(&'static str, String, String);

fn envelope(body: &str) -> String {
    format!(
        concat!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n",
            "<soapenv:Envelope xmlns:soapenc=\"http://schemas.xmlsoap.org/soap/encoding/\"\n",
            " xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\"\n",
            " xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\"\n",
            " xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\">\n",
            "<soapenv:Body>\n{}\n</soapenv:Body>\n</soapenv:Envelope>"
        ),
        body
    )
}

fn fault_body(f: &Fault) -> String {
    envelope(&format!(
        concat!(
            "<soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>{msg}</faultstring>",
            "<detail><{n}Fault xmlns=\"urn:vim25\" xsi:type=\"{n}\">{extra}</{n}Fault></detail>",
            "</soapenv:Fault>"
        ),
        n = f.0,
        msg = esc(&f.1),
        extra = f.2
    ))
}

fn not_found(kind: &str, moref: &str) -> Fault {
    Fault(
        "ManagedObjectNotFound",
        format!(
            "The object 'vim.{kind}:{moref}' has already been deleted or has not been completely created"
        ),
        format!("<obj type=\"{}\">{}</obj>", esc(kind), esc(moref)),
    )
}

fn invalid_argument(what: &str) -> Fault {
    Fault(
        "InvalidArgument",
        format!("A specified parameter was not correct: {what}"),
        format!("<invalidProperty>{}</invalidProperty>", esc(what)),
    )
}

struct Reply {
    body: String,
    cookie: Option<String>,
}

fn ok(method: &str, inner: &str) -> Reply {
    Reply {
        body: envelope(&format!(
            "<{method}Response xmlns=\"urn:vim25\">{inner}</{method}Response>"
        )),
        cookie: None,
    }
}

fn session_from(headers: &hyper::HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v.trim_matches('"').to_string())
}

fn this_ok(req: &El, expected: &str) -> Result<(), Fault> {
    let this = req
        .child("_this")
        .ok_or_else(|| invalid_argument("_this"))?;
    if this.text.trim() != expected {
        return Err(not_found(
            this.attr("type").unwrap_or("ManagedObject"),
            this.text.trim(),
        ));
    }
    Ok(())
}

/// Collect the objects an ObjectSpec selects, following TraversalSpecs.
fn select(st: &State, os: &El) -> Result<Vec<String>, Fault> {
    let obj = os
        .child("obj")
        .ok_or_else(|| invalid_argument("objectSet.obj"))?;
    let moref = obj.text.trim().to_string();
    let kind = obj.attr("type").unwrap_or("ManagedObject");
    let o = st
        .objects
        .get(&moref)
        .ok_or_else(|| not_found(kind, &moref))?;
    if o.kind != kind {
        return Err(not_found(kind, &moref));
    }
    // Gather every named TraversalSpec in this ObjectSpec.
    let mut named: HashMap<String, El> = HashMap::new();
    let mut todo: Vec<&El> = os.all("selectSet").collect();
    while let Some(s) = todo.pop() {
        if s.child("type").is_some()
            && let Some(n) = s.text_of("name")
        {
            named.insert(n, s.clone());
        }
        todo.extend(s.all("selectSet"));
    }
    let skip = os.text_of("skip").as_deref() == Some("true");
    let mut out = Vec::new();
    if !skip {
        out.push(moref.clone());
    }
    let resolve = |s: &El| -> Option<El> {
        if s.child("type").is_some() {
            Some(s.clone())
        } else {
            s.text_of("name").and_then(|n| named.get(&n).cloned())
        }
    };
    let mut work: Vec<(String, El)> = os
        .all("selectSet")
        .filter_map(|s| resolve(s).map(|t| (moref.clone(), t)))
        .collect();
    let mut guard = 0;
    while let Some((m, spec)) = work.pop() {
        guard += 1;
        if guard > 100_000 {
            break;
        }
        let Some(o) = st.objects.get(&m) else {
            continue;
        };
        if spec.text_of("type").as_deref() != Some(o.kind) {
            continue;
        }
        // Folder.childEntity, and Datacenter.vmFolder (a datacenter's one child here).
        let path = spec.text_of("path");
        if !matches!(
            (o.kind, path.as_deref()),
            ("Folder", Some("childEntity")) | ("Datacenter", Some("vmFolder"))
        ) {
            continue;
        }
        for c in &o.children {
            if spec.text_of("skip").as_deref() != Some("true") && !out.contains(c) {
                out.push(c.clone());
            }
            for sub in spec.all("selectSet") {
                if let Some(t) = resolve(sub) {
                    work.push((c.clone(), t));
                }
            }
        }
    }
    Ok(out)
}

fn object_xml(
    st: &State,
    moref: &str,
    prop_sets: &[(String, Vec<String>)],
) -> Result<Option<String>, Fault> {
    let o = &st.objects[moref];
    let mut props = String::new();
    let mut matched = false;
    for (kind, paths) in prop_sets {
        if kind != o.kind {
            continue;
        }
        matched = true;
        for p in paths {
            if !o.valid.contains(&p.as_str()) {
                return Err(Fault(
                    "InvalidProperty",
                    format!("A specified parameter was not correct: {p}"),
                    format!("<name>{}</name>", esc(p)),
                ));
            }
            if p == "childEntity" {
                let mut v = String::from("<val xsi:type=\"ArrayOfManagedObjectReference\">");
                for c in &o.children {
                    let k = st.objects.get(c).map(|o| o.kind).unwrap_or("ManagedEntity");
                    v.push_str(&format!(
                        "<ManagedObjectReference type=\"{k}\" xsi:type=\"ManagedObjectReference\">{c}</ManagedObjectReference>"
                    ));
                }
                v.push_str("</val>");
                props.push_str(&format!("<propSet><name>childEntity</name>{v}</propSet>"));
            } else if let Some(v) = o.props.get(p) {
                props.push_str(&format!("<propSet><name>{}</name>{v}</propSet>", esc(p)));
            }
        }
    }
    if !matched {
        return Ok(None);
    }
    Ok(Some(format!(
        "<objects><obj type=\"{}\">{}</obj>{props}</objects>",
        o.kind,
        esc(moref)
    )))
}

fn page(st: &mut State, mut objs: Vec<String>) -> String {
    let mut token = None;
    if let Some(n) = st.inv.page_size.filter(|n| *n > 0 && objs.len() > *n) {
        let rest = objs.split_off(n);
        let t = format!("token-{}", st.next_token);
        st.next_token += 1;
        st.pages.insert(t.clone(), rest);
        token = Some(t);
    }
    if objs.is_empty() && token.is_none() {
        return String::new();
    }
    let mut s = String::from("<returnval>");
    if let Some(t) = token {
        s.push_str(&format!("<token>{t}</token>"));
    }
    for o in objs {
        s.push_str(&o);
    }
    s.push_str("</returnval>");
    s
}

/// Sort, clip to `[start, capacity)` and drop empty areas.
fn areas_from(areas: &[Area], start: u64, capacity: u64) -> Vec<Area> {
    let mut v: Vec<Area> = areas
        .iter()
        .filter_map(|a| {
            let end = a.start.saturating_add(a.length).min(capacity);
            let s = a.start.max(start);
            (end > s).then(|| Area {
                start: s,
                length: end - s,
            })
        })
        .collect();
    v.sort_by_key(|a| a.start);
    v
}

/// `VirtualMachine.QueryChangedDiskAreas`: one page of a `DiskChangeInfo`.
fn query_changed_disk_areas(st: &State, req: &El) -> Result<String, Fault> {
    let this = req
        .child("_this")
        .ok_or_else(|| invalid_argument("_this"))?;
    let vm = this.text.trim().to_string();
    if !st.vms.iter().any(|(m, ..)| *m == vm) {
        return Err(not_found("VirtualMachine", &vm));
    }
    let snap = req
        .text_of("snapshot")
        .ok_or_else(|| invalid_argument("snapshot"))?;
    let disks = match st.snapshot_disks.get(&snap) {
        Some((owner, disks)) if *owner == vm => disks,
        _ => return Err(not_found("VirtualMachineSnapshot", &snap)),
    };
    let key: i32 = req
        .text_of("deviceKey")
        .and_then(|k| k.parse().ok())
        .ok_or_else(|| invalid_argument("deviceKey"))?;
    let disk = disks
        .iter()
        .find(|d| d.key == key)
        .ok_or_else(|| invalid_argument("deviceKey"))?;
    let start: u64 = req
        .text_of("startOffset")
        .and_then(|k| k.parse().ok())
        .filter(|s| *s <= disk.capacity_bytes)
        .ok_or_else(|| invalid_argument("startOffset"))?;
    let change_id = req
        .text_of("changeId")
        .filter(|c| !c.is_empty())
        .ok_or_else(|| invalid_argument("changeId"))?;
    let whole = [Area {
        start: 0,
        length: disk.capacity_bytes,
    }];
    let source: &[Area] = if change_id == "*" {
        disk.allocated_areas.as_deref().unwrap_or(&whole)
    } else if disk.previous_change_id.as_deref() == Some(change_id.as_str()) {
        &disk.changed_areas
    } else {
        // What vCenter answers when CBT was reset or the change ID is from another epoch.
        return Err(Fault(
            "FileFault",
            format!("Error caused by file {}", disk.file_name),
            format!("<file>{}</file>", esc(&disk.file_name)),
        ));
    };
    let (length, areas) = if st.inv.buggy_empty_pages && start > 0 {
        (0, Vec::new())
    } else {
        let mut areas = areas_from(source, start, disk.capacity_bytes);
        let max = st.inv.page_areas.unwrap_or(DEFAULT_PAGE_AREAS).max(1);
        if areas.len() > max {
            areas.truncate(max);
            let last = areas[max - 1];
            (last.start + last.length - start, areas)
        } else {
            (disk.capacity_bytes - start, areas)
        }
    };
    let mut s = format!("<returnval><startOffset>{start}</startOffset><length>{length}</length>");
    for a in areas {
        s.push_str(&format!(
            "<changedArea><start>{}</start><length>{}</length></changedArea>",
            a.start, a.length
        ));
    }
    s.push_str("</returnval>");
    Ok(s)
}

fn handle_call(
    st: &mut State,
    method: &str,
    req: &El,
    cookie: Option<String>,
) -> (String, Result<Reply, Fault>) {
    let api = st
        .inv
        .api_version
        .clone()
        .unwrap_or_else(|| "8.0.3.0".into());
    match method {
        "RetrieveServiceContent" => {
            let r = this_ok(req, "ServiceInstance").map(|_| {
                ok(method, &format!(
                    concat!(
                        "<returnval><rootFolder type=\"Folder\">group-d1</rootFolder>",
                        "<propertyCollector type=\"PropertyCollector\">propertyCollector</propertyCollector>",
                        "<viewManager type=\"ViewManager\">ViewManager</viewManager>",
                        "<about><name>VMware vCenter Server</name><fullName>VMware vCenter Server {v} build-0 (fake)</fullName>",
                        "<vendor>VMware, Inc.</vendor><version>{v}</version><build>0</build>",
                        "<localeVersion>INTL</localeVersion><localeBuild>000</localeBuild>",
                        "<osType>linux-x64</osType><productLineId>vpx</productLineId>",
                        "<apiType>VirtualCenter</apiType><apiVersion>{v}</apiVersion>",
                        "<instanceUuid>00000000-0000-0000-0000-00000000fake</instanceUuid>",
                        "<licenseProductName>VMware VirtualCenter Server</licenseProductName>",
                        "<licenseProductVersion>8.0</licenseProductVersion></about>",
                        "<setting type=\"OptionManager\">VpxSettings</setting>",
                        "<userDirectory type=\"UserDirectory\">UserDirectory</userDirectory>",
                        "<sessionManager type=\"SessionManager\">SessionManager</sessionManager>",
                        "<searchIndex type=\"SearchIndex\">SearchIndex</searchIndex>",
                        "</returnval>"
                    ),
                    v = esc(&api)
                ))
            });
            ("RetrieveServiceContent".into(), r)
        }
        "Login" => {
            let user = req.text_of("userName").unwrap_or_default();
            let pw = req
                .child("password")
                .map(|p| p.text.clone())
                .unwrap_or_default();
            let line = format!("Login user={user}");
            if let Err(f) = this_ok(req, "SessionManager") {
                return (line, Err(f));
            }
            if user != st.inv.user || pw != st.inv.password {
                return (
                    line,
                    Err(Fault(
                        "InvalidLogin",
                        "Cannot complete login due to an incorrect user name or password.".into(),
                        String::new(),
                    )),
                );
            }
            let id = format!(
                "52{:014x}fake{:016x}",
                st.next_session,
                st.next_session * 7919
            );
            st.next_session += 1;
            st.sessions.insert(id.clone(), 0);
            let mut r = ok(
                method,
                &format!(
                    concat!(
                        "<returnval><key>{id}</key><userName>{u}</userName><fullName>{u}</fullName>",
                        "<loginTime>2026-01-01T00:00:00.000Z</loginTime>",
                        "<lastActiveTime>2026-01-01T00:00:00.000Z</lastActiveTime>",
                        "<locale>en</locale><messageLocale>en</messageLocale>",
                        "<extensionSession>false</extensionSession><ipAddress>127.0.0.1</ipAddress>",
                        "<userAgent>fake</userAgent><callCount>0</callCount></returnval>"
                    ),
                    id = &id[..8],
                    u = esc(&user)
                ),
            );
            r.cookie = Some(id);
            (line, Ok(r))
        }
        _ => {
            let line = describe(method, req);
            // Every other call needs a live session.
            let live = cookie
                .as_ref()
                .and_then(|c| st.sessions.get_mut(c).map(|n| (c.clone(), n)));
            let Some((sid, count)) = live else {
                return (line, Err(not_authenticated()));
            };
            *count += 1;
            if let Some(ttl) = st.inv.session_ttl_calls
                && *count > ttl
            {
                st.sessions.remove(&sid);
                return (line, Err(not_authenticated()));
            }
            (line, authenticated_call(st, method, req, &sid))
        }
    }
}

fn not_authenticated() -> Fault {
    Fault(
        "NotAuthenticated",
        "The session is not authenticated.".into(),
        "<object type=\"Folder\">group-d1</object><privilegeId>System.View</privilegeId>".into(),
    )
}

fn describe(method: &str, req: &El) -> String {
    match method {
        "FindByUuid" | "FindAllByUuid" => format!(
            "{method} uuid={} instance={} dc={}",
            req.text_of("uuid").unwrap_or_default(),
            req.text_of("instanceUuid")
                .unwrap_or_else(|| "false".into()),
            req.text_of("datacenter").unwrap_or_else(|| "-".into())
        ),
        "RetrievePropertiesEx" | "RetrieveProperties" => {
            let mut objs = Vec::new();
            let mut props = Vec::new();
            for ss in req.all("specSet") {
                for os in ss.all("objectSet") {
                    objs.push(os.text_of("obj").unwrap_or_default());
                }
                for ps in ss.all("propSet") {
                    props.extend(ps.all("pathSet").map(|p| p.text.trim().to_string()));
                }
            }
            format!("{method} obj={} props={}", objs.join(","), props.join(","))
        }
        "QueryChangedDiskAreas" => format!(
            "{method} vm={} snapshot={} key={} start={} changeId={}",
            req.text_of("_this").unwrap_or_default(),
            req.text_of("snapshot").unwrap_or_else(|| "-".into()),
            req.text_of("deviceKey").unwrap_or_default(),
            req.text_of("startOffset").unwrap_or_default(),
            req.text_of("changeId").unwrap_or_default()
        ),
        "ContinueRetrievePropertiesEx" => {
            format!(
                "{method} token={}",
                req.text_of("token").unwrap_or_default()
            )
        }
        "CreateSnapshot_Task" => format!(
            "{method} vm={} name={} memory={} quiesce={}",
            req.text_of("_this").unwrap_or_default(),
            req.text_of("name").unwrap_or_default(),
            req.text_of("memory").unwrap_or_default(),
            req.text_of("quiesce").unwrap_or_default()
        ),
        "RemoveSnapshot_Task" => format!(
            "{method} snapshot={} removeChildren={} consolidate={}",
            req.text_of("_this").unwrap_or_default(),
            req.text_of("removeChildren").unwrap_or_default(),
            req.text_of("consolidate").unwrap_or_else(|| "-".into())
        ),
        "PowerOnVM_Task" | "PowerOffVM_Task" | "ShutdownGuest" => {
            format!("{method} vm={}", req.text_of("_this").unwrap_or_default())
        }
        other => other.to_string(),
    }
}

/// The `_this` of a VM method: a VM the fake has, else `ManagedObjectNotFound`.
fn this_vm(st: &State, req: &El) -> Result<String, Fault> {
    let this = req
        .child("_this")
        .ok_or_else(|| invalid_argument("_this"))?;
    let m = this.text.trim().to_string();
    if !st.vm_state.contains_key(&m) {
        return Err(not_found("VirtualMachine", &m));
    }
    Ok(m)
}

fn task_reply(method: &str, task: &str) -> Reply {
    ok(
        method,
        &format!("<returnval type=\"Task\">{}</returnval>", esc(task)),
    )
}

/// The message of an injected fault.
fn fault_message(f: &FaultSpec) -> String {
    f.message
        .clone()
        .unwrap_or_else(|| format!("{} injected by the fake into {}", f.fault, f.method))
}

fn authenticated_call(st: &mut State, method: &str, req: &El, sid: &str) -> Result<Reply, Fault> {
    if st.inv.missing_methods.iter().any(|m| m == method) {
        return Err(Fault(
            "MethodNotFound",
            format!("Method {method} not found"),
            format!("<method>{method}</method>"),
        ));
    }
    st.advance();
    let injected = st.take_fault(method);
    let task_fault = match injected {
        Some((name, f)) if method.ends_with("_Task") && !f.immediate => {
            Some((name.to_string(), fault_message(&f)))
        }
        Some((name, f)) => return Err(Fault(name, fault_message(&f), String::new())),
        None => None,
    };
    match method {
        "CreateSnapshot_Task" => {
            let vm = this_vm(st, req)?;
            let name = req
                .text_of("name")
                .ok_or_else(|| invalid_argument("name"))?;
            let description = req.text_of("description").unwrap_or_default();
            let quiesce = req.text_of("quiesce").as_deref() == Some("true");
            let t = st.start_task(
                &vm,
                TaskOp::CreateSnapshot {
                    name,
                    description,
                    quiesce,
                },
                task_fault,
            );
            Ok(task_reply(method, &t))
        }
        "RemoveSnapshot_Task" => {
            let this = req
                .child("_this")
                .ok_or_else(|| invalid_argument("_this"))?;
            let snap = this.text.trim().to_string();
            let Some((vm, _)) = st.snapshot_disks.get(&snap).cloned() else {
                return Err(not_found("VirtualMachineSnapshot", &snap));
            };
            let remove_children = match req.text_of("removeChildren").as_deref() {
                Some("true") => true,
                Some("false") => false,
                _ => return Err(invalid_argument("removeChildren")),
            };
            let t = st.start_task(
                &vm,
                TaskOp::RemoveSnapshot {
                    snapshot: snap,
                    remove_children,
                },
                task_fault,
            );
            Ok(task_reply(method, &t))
        }
        "PowerOnVM_Task" | "PowerOffVM_Task" => {
            let vm = this_vm(st, req)?;
            let op = if method == "PowerOnVM_Task" {
                TaskOp::PowerOn
            } else {
                TaskOp::PowerOff
            };
            let t = st.start_task(&vm, op, task_fault);
            Ok(task_reply(method, &t))
        }
        "ShutdownGuest" => {
            let vm = this_vm(st, req)?;
            let v = &st.vm_state[&vm];
            if v.spec.power_state != "poweredOn" {
                return Err(Fault(
                    "InvalidPowerState",
                    format!(
                        "The attempted operation cannot be performed in the current state ({}).",
                        v.spec.power_state
                    ),
                    format!(
                        "<requestedState>poweredOn</requestedState><existingState>{}</existingState>",
                        esc(&v.spec.power_state)
                    ),
                ));
            }
            if !v.spec.tools_running {
                return Err(Fault(
                    "ToolsUnavailable",
                    "Cannot complete operation because VMware Tools is not running in this virtual machine."
                        .into(),
                    String::new(),
                ));
            }
            let at = Instant::now() + Duration::from_millis(st.inv.guest_shutdown_ms);
            st.shutdowns.push((at, vm));
            Ok(ok(method, ""))
        }
        "Logout" => {
            this_ok(req, "SessionManager")?;
            st.sessions.remove(sid);
            Ok(ok(method, ""))
        }
        "FindByUuid" | "FindAllByUuid" => {
            this_ok(req, "SearchIndex")?;
            let uuid = req
                .text_of("uuid")
                .ok_or_else(|| invalid_argument("uuid"))?;
            let instance = req.text_of("instanceUuid").as_deref() == Some("true");
            if req.text_of("vmSearch").as_deref() != Some("true") {
                return Ok(ok(method, ""));
            }
            let dc = match req.child("datacenter") {
                Some(d) => {
                    let m = d.text.trim().to_string();
                    match st.objects.get(&m) {
                        Some(o) if o.kind == "Datacenter" => Some(m),
                        _ => return Err(not_found("Datacenter", &m)),
                    }
                }
                None => None,
            };
            let mut hits: Vec<&str> = st
                .vms
                .iter()
                .filter(|(_, inst, bios, d)| {
                    dc.as_deref().is_none_or(|x| x == d)
                        && if instance { inst } else { bios }.eq_ignore_ascii_case(&uuid)
                })
                .map(|(m, ..)| m.as_str())
                .collect();
            if method == "FindByUuid" {
                hits.truncate(1);
            }
            let inner: String = hits
                .iter()
                .map(|m| format!("<returnval type=\"VirtualMachine\">{}</returnval>", esc(m)))
                .collect();
            Ok(ok(method, &inner))
        }
        "RetrievePropertiesEx" => {
            this_ok(req, "propertyCollector")?;
            let mut specs = req.all("specSet").peekable();
            if specs.peek().is_none() {
                return Err(invalid_argument("specSet"));
            }
            let mut objs = Vec::new();
            for ss in specs {
                let prop_sets: Vec<(String, Vec<String>)> = ss
                    .all("propSet")
                    .map(|ps| {
                        (
                            ps.text_of("type").unwrap_or_default(),
                            ps.all("pathSet")
                                .map(|p| p.text.trim().to_string())
                                .collect(),
                        )
                    })
                    .collect();
                let mut selected: Vec<String> = Vec::new();
                for os in ss.all("objectSet") {
                    for m in select(st, os)? {
                        if !selected.contains(&m) {
                            selected.push(m);
                        }
                    }
                }
                for m in selected {
                    if let Some(x) = object_xml(st, &m, &prop_sets)? {
                        objs.push(x);
                    }
                }
            }
            let inner = page(st, objs);
            Ok(ok(method, &inner))
        }
        "ContinueRetrievePropertiesEx" => {
            this_ok(req, "propertyCollector")?;
            let t = req.text_of("token").unwrap_or_default();
            let rest = st
                .pages
                .remove(&t)
                .ok_or_else(|| invalid_argument("token"))?;
            let inner = page(st, rest);
            Ok(ok(method, &inner))
        }
        "QueryChangedDiskAreas" => {
            query_changed_disk_areas(st, req).map(|inner| ok(method, &inner))
        }
        _ => Err(Fault(
            "MethodNotFound",
            format!("Method {method} not implemented by the fake"),
            String::new(),
        )),
    }
}

/// Handle one SOAP request body; return (HTTP status, body, Set-Cookie value).
fn handle_soap(
    st: &Mutex<State>,
    body: &str,
    cookie: Option<String>,
) -> (u16, String, Option<String>) {
    let parsed = xml::parse(body).ok().and_then(|env| {
        let b = env.child("Body")?;
        b.children.first().cloned()
    });
    let mut st = st.lock().unwrap_or_else(|p| p.into_inner());
    let Some(req) = parsed else {
        st.log("<malformed request> fault=InvalidRequest".into());
        let f = Fault(
            "InvalidRequest",
            "Unable to parse the request".into(),
            String::new(),
        );
        return (500, fault_body(&f), None);
    };
    let method = req.name.clone();
    let (line, result) = handle_call(&mut st, &method, &req, cookie);
    match result {
        Ok(r) => {
            st.log(line);
            (200, r.body, r.cookie)
        }
        Err(f) => {
            st.log(format!("{line} fault={}", f.0));
            (500, fault_body(&f), None)
        }
    }
}

/// A running fake vCenter. Dropping it stops the listener.
#[derive(Debug)]
pub struct FakeVcenter {
    addr: SocketAddr,
    thumbprint: String,
    cert_pem: String,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl Drop for FakeVcenter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The SHA-1 thumbprint of a DER certificate, `AA:BB:…`.
pub fn thumbprint(der: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, der);
    d.as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl FakeVcenter {
    /// Generate a self-signed certificate for `localhost` and `127.0.0.1`, bind `listen`
    /// (e.g. `127.0.0.1:0`) and serve in the background on the current tokio runtime.
    pub async fn start(
        inv: Inventory,
        listen: &str,
        opts: Options,
    ) -> std::io::Result<FakeVcenter> {
        let other = |e: String| std::io::Error::other(e);
        let ck = rcgen::generate_simple_self_signed(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
        ])
        .map_err(|e| other(e.to_string()))?;
        let cert_der: CertificateDer<'static> = ck.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| other(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(vec![cert_der.clone()], key)
            .map_err(|e| other(e.to_string()))?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::new(inv, &opts)?));
        let behavior = opts.behavior.clone();
        let st = state.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                if behavior == Behavior::HangOnAccept {
                    held.push(tcp);
                    continue;
                }
                let acceptor = acceptor.clone();
                let st = st.clone();
                let behavior = behavior.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = service_fn(move |req| {
                        let st = st.clone();
                        let behavior = behavior.clone();
                        async move { serve(st, behavior, req).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Ok(FakeVcenter {
            addr,
            thumbprint: thumbprint(cert_der.as_ref()),
            cert_pem: ck.cert.pem(),
            state,
            task,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `127.0.0.1:PORT` style endpoint for a client.
    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    /// SHA-1 thumbprint of the server certificate, `AA:BB:…`.
    pub fn thumbprint(&self) -> &str {
        &self.thumbprint
    }

    /// The server certificate in PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Every call so far, one line each (same format as the call log).
    pub fn calls(&self) -> Vec<String> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .calls
            .clone()
    }

    /// Inject a fault into a method from now on (as the inventory's `faults`).
    pub fn inject_fault(&self, f: FaultSpec) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.faults.push((intern(&f.fault), f));
    }

    /// Move a VM to another ESX host (as DRS does), creating the host if it is new.
    pub fn move_vm(&self, vm: &str, host: &str) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = st.vm_state.get_mut(vm) {
            v.spec.host = Some(host.to_string());
        }
        st.refresh_vm(vm);
    }

    /// The guest of `vm` wrote `areas` of disk `key`: CBT records them, and the VM's next
    /// snapshot reports them as changed since the one before.
    pub fn write(&self, vm: &str, key: i32, areas: &[Area]) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.written
            .entry((vm.to_string(), key))
            .or_default()
            .extend_from_slice(areas);
    }

    /// Call `hook(vm, snapshot)` each time a snapshot has been taken (inside the call
    /// that completes the task; the hook must not call back into this fake). It returns
    /// the areas the guest writes right after the snapshot, per disk key, so a test can
    /// keep a disk's content per snapshot and the changes between them in step.
    pub fn on_snapshot(
        &self,
        hook: impl FnMut(&str, &str) -> Vec<(i32, Vec<Area>)> + Send + 'static,
    ) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.snapshot_hook = Some(SnapshotHook(Box::new(hook)));
    }

    /// Start or stop VMware Tools in a VM's guest.
    pub fn set_tools_running(&self, vm: &str, running: bool) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = st.vm_state.get_mut(vm) {
            v.spec.tools_running = running;
        }
        st.refresh_vm(vm);
    }

    /// A VM's snapshot tree now, depth-first: (moref, name, depth).
    pub fn snapshot_tree(&self, vm: &str) -> Vec<(String, String, usize)> {
        fn walk(s: &[SnapshotSpec], depth: usize, out: &mut Vec<(String, String, usize)>) {
            for n in s {
                out.push((n.moref.clone(), n.name.clone(), depth));
                walk(&n.children, depth + 1, out);
            }
        }
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.advance();
        let mut out = Vec::new();
        if let Some(v) = st.vm_state.get(vm) {
            walk(&v.spec.snapshots, 0, &mut out);
        }
        out
    }

    /// A VM's power state now.
    pub fn power_state(&self, vm: &str) -> Option<String> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.advance();
        st.vm_state.get(vm).map(|v| v.spec.power_state.clone())
    }

    /// Invalidate every session now (as if they had timed out on the server).
    pub fn expire_sessions(&self) {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sessions
            .clear();
    }
}

async fn serve(
    st: Arc<Mutex<State>>,
    behavior: Behavior,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let plain = |status: StatusCode, body: &str| {
        let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
        *r.status_mut() = status;
        Ok(r)
    };
    match &behavior {
        Behavior::HangOnRequest => std::future::pending::<()>().await,
        Behavior::Raw { status, body } => {
            let mut r = Response::new(Full::new(Bytes::from(body.clone())));
            *r.status_mut() = StatusCode::from_u16(*status).unwrap_or(StatusCode::OK);
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/xml; charset=utf-8"),
            );
            return Ok(r);
        }
        _ => {}
    }
    if req.uri().path() != "/sdk" {
        return plain(StatusCode::NOT_FOUND, "not found");
    }
    if req.method() != hyper::Method::POST {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "POST only");
    }
    let cookie = session_from(req.headers());
    let body = match Limited::new(req.into_body(), MAX_REQUEST_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => return plain(StatusCode::PAYLOAD_TOO_LARGE, "too large"),
    };
    let body = String::from_utf8_lossy(&body);
    let (status, text, set_cookie) = handle_soap(&st, &body, cookie);
    let mut r = Response::new(Full::new(Bytes::from(text)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/xml; charset=utf-8"),
    );
    if let Some(c) = set_cookie
        && let Ok(v) = header::HeaderValue::from_str(&format!(
            "{SESSION_COOKIE}=\"{c}\"; Path=/; HttpOnly; Secure;"
        ))
    {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv() -> Inventory {
        serde_json::from_str(
            r#"{"user":"u","password":"p","datacenters":[{"name":"dc1","vms":[
              {"moref":"vm-1","name":"a","instance_uuid":"i-1","bios_uuid":"b-1","host":"esx1",
               "disks":[{"key":2000,"file_name":"[ds] a/a.vmdk","capacity_bytes":1048576}],
               "snapshots":[{"moref":"snapshot-1","name":"s","disks":[],"children":[]}]}]}]}"#,
        )
        .unwrap()
    }

    fn call(
        st: &Mutex<State>,
        body: &str,
        cookie: Option<String>,
    ) -> (u16, String, Option<String>) {
        handle_soap(
            st,
            &format!("<Envelope><Body>{body}</Body></Envelope>"),
            cookie,
        )
    }

    #[test]
    fn changed_disk_areas_paging() {
        let mut inv: Inventory = serde_json::from_str(
            r#"{"user":"u","password":"p","page_areas":2,"datacenters":[{"name":"dc1","vms":[
              {"moref":"vm-1","name":"a","disks":[],
               "snapshots":[{"moref":"snapshot-1","disks":[{"key":2000,"file_name":"[ds] a/a.vmdk",
                 "capacity_bytes":1000,"previous_change_id":"c1",
                 "changed_areas":[{"start":500,"length":10},{"start":0,"length":10},
                                  {"start":100,"length":50},{"start":990,"length":20}],
                 "allocated_areas":[{"start":0,"length":100}]}]}]}]}]}"#,
        )
        .unwrap();
        let q = |st: &State, start: u64, cid: &str, key: i32, snap: &str| {
            let req = xml::parse(&format!(
                concat!(
                    "<QueryChangedDiskAreas><_this type=\"VirtualMachine\">vm-1</_this>",
                    "<snapshot type=\"VirtualMachineSnapshot\">{}</snapshot><deviceKey>{}</deviceKey>",
                    "<startOffset>{}</startOffset><changeId>{}</changeId></QueryChangedDiskAreas>"
                ),
                snap, key, start, cid
            ))
            .unwrap();
            query_changed_disk_areas(st, &req).map_err(|f| f.0)
        };
        let opts = Options {
            quiet: true,
            ..Default::default()
        };
        let st = State::new(inv.clone(), &opts).unwrap();
        // Sorted, two per page; the last page runs to the disk end, clipped to capacity.
        let p1 = q(&st, 0, "c1", 2000, "snapshot-1").unwrap();
        assert!(p1.starts_with("<returnval><startOffset>0</startOffset><length>150</length><changedArea><start>0</start>"), "{p1}");
        assert_eq!(p1.matches("<changedArea>").count(), 2);
        let p2 = q(&st, 150, "c1", 2000, "snapshot-1").unwrap();
        assert!(
            p2.contains("<startOffset>150</startOffset><length>850</length>"),
            "{p2}"
        );
        assert!(p2.contains("<start>990</start><length>10</length>"), "{p2}");
        let all = q(&st, 0, "*", 2000, "snapshot-1").unwrap();
        assert!(all.contains("<length>1000</length><changedArea><start>0</start><length>100</length></changedArea></returnval>"), "{all}");
        assert_eq!(
            q(&st, 0, "c0", 2000, "snapshot-1").unwrap_err(),
            "FileFault"
        );
        assert_eq!(
            q(&st, 0, "c1", 2001, "snapshot-1").unwrap_err(),
            "InvalidArgument"
        );
        assert_eq!(
            q(&st, 1001, "c1", 2000, "snapshot-1").unwrap_err(),
            "InvalidArgument"
        );
        assert_eq!(
            q(&st, 0, "c1", 2000, "snapshot-9").unwrap_err(),
            "ManagedObjectNotFound"
        );
        // The F1 bug, on request only.
        inv.buggy_empty_pages = true;
        let st = State::new(inv, &opts).unwrap();
        let p = q(&st, 150, "c1", 2000, "snapshot-1").unwrap();
        assert_eq!(
            p,
            "<returnval><startOffset>150</startOffset><length>0</length></returnval>"
        );
    }

    #[test]
    fn login_session_and_faults() {
        let st = Mutex::new(
            State::new(
                inv(),
                &Options {
                    quiet: true,
                    ..Default::default()
                },
            )
            .unwrap(),
        );
        let (s, b, _) = call(
            &st,
            "<Login><_this type=\"SessionManager\">SessionManager</_this><userName>u</userName><password>x</password></Login>",
            None,
        );
        assert_eq!(s, 500);
        assert!(b.contains("xsi:type=\"InvalidLogin\""));
        let (s, _, c) = call(
            &st,
            "<Login><_this type=\"SessionManager\">SessionManager</_this><userName>u</userName><password>p</password></Login>",
            None,
        );
        assert_eq!(s, 200);
        let c = c.unwrap();
        let find = "<FindByUuid><_this type=\"SearchIndex\">SearchIndex</_this><uuid>i-1</uuid><vmSearch>true</vmSearch><instanceUuid>true</instanceUuid></FindByUuid>";
        let (s, b, _) = call(&st, find, None);
        assert_eq!(s, 500);
        assert!(b.contains("NotAuthenticated"));
        let (s, b, _) = call(&st, find, Some(c.clone()));
        assert_eq!(s, 200);
        assert!(b.contains(">vm-1</returnval>"), "{b}");
        let rp = "<RetrievePropertiesEx><_this type=\"PropertyCollector\">propertyCollector</_this><specSet><propSet><type>VirtualMachine</type><pathSet>bogus</pathSet></propSet><objectSet><obj type=\"VirtualMachine\">vm-9</obj></objectSet></specSet><options/></RetrievePropertiesEx>";
        let (_, b, _) = call(&st, rp, Some(c.clone()));
        assert!(b.contains("ManagedObjectNotFound"), "{b}");
        let calls = st.lock().unwrap().calls.clone();
        assert_eq!(calls[0], "Login user=u fault=InvalidLogin");
        assert_eq!(
            calls[2],
            "FindByUuid uuid=i-1 instance=true dc=- fault=NotAuthenticated"
        );
        assert_eq!(
            calls[4],
            "RetrievePropertiesEx obj=vm-9 props=bogus fault=ManagedObjectNotFound"
        );
    }
}
