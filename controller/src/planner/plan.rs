//! A plan's VMs through their itinerary, and the plan's status.
//!
//! Warm, with snapshots the controller manages (Forklift's `warmItinerary`):
//!
//! ```text
//! Pending → Inventory → CreateSnapshot → WaitSnapshot → StoreDeltas → AddCheckpoint → CopyDisks
//!   → Paused ─(precopy interval)→ RemovePrevious → WaitRemove → CreateSnapshot → …
//!   → Paused ─(cutover time)→ PowerOff → WaitPowerOff → RemovePrevious → WaitRemove
//!            → CreateSnapshot (final) → … → AddCheckpoint (final) → CopyDisks
//!   → RemoveFinal → WaitRemove → Completed
//! ```
//!
//! Cold: `Pending → Inventory → PowerOff → WaitPowerOff → AddCheckpoint (none) → CopyDisks →
//! Completed`. With snapshots taken by the caller (or NBD disks), the plan only creates
//! the DiskImports (`Inventory` reads the disks from the spec) and follows them.
//!
//! Cancel (and failure) goes through `Canceling`: the VM's DiskImports are canceled, the
//! snapshots the plan took are removed, the VM's power state is restored, then
//! `Canceled` (or `Failed`).
//!
//! Every step is one decision; steps that call vSphere return an action whose outcome
//! the reconciler records with [`record`], then plans again.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::crd::{
    Checkpoint, DiskPhase, FerryPlanSpec, FerryPlanStatus, Precopy, SnapshotMode, VmDisk, VmStatus,
};

/// Default time between pre-copy rounds (Forklift's PRECOPY_INTERVAL).
pub const DEFAULT_PRECOPY_INTERVAL: Duration = Duration::from_secs(60 * 60);
/// Shortest pre-copy interval accepted.
pub const MIN_PRECOPY_INTERVAL: Duration = Duration::from_secs(10);
/// How often a vSphere task or a power state is looked at (Forklift's
/// SNAPSHOT_STATUS_CHECK_RATE).
pub const TASK_POLL: Duration = Duration::from_secs(10);
/// How long a guest may take to shut down before the cutover fails.
pub const POWER_OFF_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// Name of the snapshots the controller takes.
pub const SNAPSHOT_NAME: &str = "ferry-migration-precopy";
/// Longest Go duration string accepted.
pub const MAX_DURATION_LEN: usize = 32;

/// A VM's itinerary step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Not started.
    Pending,
    /// Find the VM, its host, power state and disks.
    Inventory,
    /// Shut the guest down (cold copy, or cutover).
    PowerOff,
    /// Wait for `poweredOff`.
    WaitPowerOff,
    /// Remove the previous round's snapshot (its change IDs are kept).
    RemovePrevious,
    /// Take a snapshot.
    CreateSnapshot,
    /// Wait for the snapshot task.
    WaitSnapshot,
    /// Read each disk's change ID in the new snapshot.
    StoreDeltas,
    /// Give each DiskImport its next checkpoint (creating the DiskImports first).
    AddCheckpoint,
    /// Wait for every disk to copy the round.
    CopyDisks,
    /// Between pre-copy rounds.
    Paused,
    /// Remove the final snapshot.
    RemoveFinal,
    /// Wait for a snapshot removal task.
    WaitRemove,
    /// Stop the disks, clean up, restore power.
    Canceling,
    /// Every disk copied.
    Completed,
    /// Gave up.
    Failed,
    /// Canceled.
    Canceled,
}

impl Step {
    /// Its name in status.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Pending => "Pending",
            Step::Inventory => "Inventory",
            Step::PowerOff => "PowerOff",
            Step::WaitPowerOff => "WaitPowerOff",
            Step::RemovePrevious => "RemovePrevious",
            Step::CreateSnapshot => "CreateSnapshot",
            Step::WaitSnapshot => "WaitSnapshot",
            Step::StoreDeltas => "StoreDeltas",
            Step::AddCheckpoint => "AddCheckpoint",
            Step::CopyDisks => "CopyDisks",
            Step::Paused => "Paused",
            Step::RemoveFinal => "RemoveFinal",
            Step::WaitRemove => "WaitRemove",
            Step::Canceling => "Canceling",
            Step::Completed => "Completed",
            Step::Failed => "Failed",
            Step::Canceled => "Canceled",
        }
    }

    /// Read it back (unknown names start over at `Pending`).
    pub fn parse(s: &str) -> Step {
        [
            Step::Inventory,
            Step::PowerOff,
            Step::WaitPowerOff,
            Step::RemovePrevious,
            Step::CreateSnapshot,
            Step::WaitSnapshot,
            Step::StoreDeltas,
            Step::AddCheckpoint,
            Step::CopyDisks,
            Step::Paused,
            Step::RemoveFinal,
            Step::WaitRemove,
            Step::Canceling,
            Step::Completed,
            Step::Failed,
            Step::Canceled,
        ]
        .into_iter()
        .find(|x| x.as_str() == s)
        .unwrap_or(Step::Pending)
    }

    /// The VM is done with, one way or another.
    pub fn is_terminal(self) -> bool {
        matches!(self, Step::Completed | Step::Failed | Step::Canceled)
    }
}

/// A disk of the plan as the planner sees its DiskImport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskView {
    /// DiskImport name.
    pub name: String,
    /// The VM key.
    pub vm: String,
    /// Phase.
    pub phase: DiskPhase,
    /// Its checkpoints' `current`s.
    pub checkpoints: Vec<String>,
    /// `finalCheckpoint`.
    pub final_checkpoint: bool,
    /// Copied rounds.
    pub copied: Vec<String>,
    /// `cancel`.
    pub cancel: bool,
    /// Pods are retained.
    pub retain: bool,
    /// Bytes of the current round.
    pub bytes_done: u64,
    /// Bytes of the current round.
    pub bytes_total: u64,
    /// Why it failed.
    pub message: String,
}

/// A vSphere task as last read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskView {
    /// Queued or running.
    Running,
    /// Done; the result's moref (a snapshot) if any.
    Success(Option<String>),
    /// Failed: fault and message.
    Error(String),
}

/// A disk of a VM as found in vCenter (or given in the spec).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundDisk {
    /// Base disk's datastore path, or the NBD URI.
    pub source: String,
    /// Capacity in bytes.
    pub capacity: u64,
}

/// What the reconciler learned by doing an action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The VM was found.
    Found {
        /// Its instance UUID (when looked up by name).
        uuid: Option<String>,
        /// Its name.
        name: String,
        /// The ESXi host running it.
        host: Option<String>,
        /// `poweredOn`, `poweredOff`, `suspended`.
        power_state: String,
        /// Its disks, in device order.
        disks: Vec<FoundDisk>,
    },
    /// Its power state now.
    PowerState(String),
    /// A task was started.
    TaskStarted(String),
    /// The change IDs of the disks in a snapshot (backing file → change ID).
    ChangeIds(BTreeMap<String, String>),
    /// The VM could not be found or used.
    Failed(String),
}

/// What to do for a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanAction {
    /// Look the VM up in vCenter (→ [`Outcome::Found`]).
    FindVm {
        /// VM key.
        vm: String,
    },
    /// Read the VM's power state (→ [`Outcome::PowerState`]).
    ReadPowerState {
        /// VM key.
        vm: String,
    },
    /// Shut the guest down, or power it off when it has no tools (→ maybe
    /// [`Outcome::TaskStarted`]).
    PowerOff {
        /// VM key.
        vm: String,
    },
    /// Power the VM on (restoring it after a cancel).
    PowerOn {
        /// VM key.
        vm: String,
    },
    /// Start a snapshot task (→ [`Outcome::TaskStarted`]).
    CreateSnapshot {
        /// VM key.
        vm: String,
        /// Snapshot name.
        name: String,
    },
    /// Start a snapshot removal task (→ [`Outcome::TaskStarted`]).
    RemoveSnapshot {
        /// VM key.
        vm: String,
        /// Snapshot moref.
        snapshot: String,
    },
    /// Read every disk's change ID in a snapshot (→ [`Outcome::ChangeIds`]).
    ReadChangeIds {
        /// VM key.
        vm: String,
        /// Snapshot moref.
        snapshot: String,
    },
    /// Create the VM's DiskImports that are missing, and give every one this
    /// checkpoint (`None` for a cold copy), final or not.
    SetCheckpoints {
        /// VM key.
        vm: String,
        /// The checkpoint for each disk (by DiskImport name).
        checkpoints: BTreeMap<String, Option<Checkpoint>>,
        /// Final round.
        last: bool,
    },
    /// Set `cancel` on a DiskImport.
    CancelDisk(String),
    /// Stop retaining a DiskImport's pods (archive).
    ReleasePods(String),
    /// Delete a PVC (cancel with `deleteVolumesOnCancel`).
    DeletePvc(String),
    /// Record an event on the plan.
    Event {
        /// `Warning` or `Normal`.
        warning: bool,
        /// CamelCase reason.
        reason: &'static str,
        /// One line.
        note: String,
    },
}

/// Everything one decision about a plan needs.
#[derive(Debug, Clone)]
pub struct PlanInput<'a> {
    /// The plan's name (PVC names).
    pub name: &'a str,
    /// Its spec.
    pub spec: &'a FerryPlanSpec,
    /// Its status as last written.
    pub status: &'a FerryPlanStatus,
    /// Its DiskImports.
    pub disks: &'a [DiskView],
    /// Tasks of the VMs' `task` fields, as last read.
    pub tasks: &'a BTreeMap<String, TaskView>,
    /// Now.
    pub now: Timestamp,
}

/// A decision.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanDecision {
    /// The new status.
    pub status: FerryPlanStatus,
    /// Actions, each tagged with nothing: outcomes are recorded per VM with [`record`].
    pub actions: Vec<PlanAction>,
    /// Look again after this long.
    pub requeue: Option<Duration>,
}

/// Parse a Go duration (`90s`, `60m`, `1h30m`, `1.5h`).
pub fn parse_duration(s: &str) -> Option<Duration> {
    if s.is_empty() || s.len() > MAX_DURATION_LEN {
        return None;
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let n = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        if n == 0 {
            return None;
        }
        let value: f64 = rest[..n].parse().ok()?;
        rest = &rest[n..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            _ => return None,
        };
        total += value * unit;
        rest = &rest[unit_len..];
    }
    (total.is_finite() && total < 1e9).then(|| Duration::from_secs_f64(total))
}

/// The key a VM goes by (its id, else its name).
pub fn vm_key(vm: &crate::crd::PlanVm) -> String {
    vm.id
        .clone()
        .or_else(|| vm.name.clone())
        .unwrap_or_default()
}

fn add(t: Timestamp, d: Duration) -> Timestamp {
    t.checked_add(SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX))
        .unwrap_or(t)
}

/// Whether the plan manages snapshots and power through vCenter.
pub fn manages_vsphere(spec: &FerryPlanSpec) -> bool {
    spec.source
        .vsphere
        .as_ref()
        .is_some_and(|v| v.snapshots == SnapshotMode::Managed)
}

/// Record what an action for VM `vm` of plan `plan` found.
pub fn record(
    plan: &str,
    spec: &FerryPlanSpec,
    status: &mut FerryPlanStatus,
    vm: &str,
    outcome: Outcome,
    now: Timestamp,
) {
    let Some(v) = status.vms.iter_mut().find(|v| v.id == vm) else {
        return;
    };
    match outcome {
        Outcome::Found {
            uuid,
            name,
            host,
            power_state,
            disks,
        } => {
            if v.name.is_empty() {
                v.name = name;
            }
            if uuid.is_some() {
                v.uuid = uuid;
            }
            v.host = host;
            if v.power_state.is_none() {
                v.power_state = Some(power_state);
            }
            match super::build::resolve_disks(plan, spec, v, &disks) {
                Ok(d) => v.disks = d,
                Err(e) => fail_vm(v, e, now),
            }
        }
        Outcome::PowerState(p) => {
            v.message = format!("power state {p}");
            if p == "poweredOff" && Step::parse(&v.step) == Step::WaitPowerOff {
                v.message.clear();
                v.step = next_after_power_off(v).as_str().into();
            }
        }
        Outcome::TaskStarted(t) => {
            v.task = Some(t);
            v.step = match Step::parse(&v.step) {
                Step::CreateSnapshot => Step::WaitSnapshot,
                Step::RemovePrevious | Step::RemoveFinal | Step::Canceling => Step::WaitRemove,
                Step::PowerOff => Step::WaitPowerOff,
                s => s,
            }
            .as_str()
            .into();
        }
        Outcome::ChangeIds(ids) => {
            if let Some(p) = v.precopies.last_mut() {
                p.change_ids = ids;
            }
            v.step = Step::AddCheckpoint.as_str().into();
        }
        Outcome::Failed(m) => fail_vm(v, m, now),
    }
}

/// A VM fails: it goes through `Canceling` (disks stopped, snapshots removed, power
/// restored) and ends `Failed`.
fn fail_vm(v: &mut VmStatus, message: String, now: Timestamp) {
    v.message = message;
    v.step = Step::Canceling.as_str().into();
    v.completed_at = Some(Time(now));
    // Remember it failed (not canceled) for the end of Canceling.
    v.phase = "Failed".into();
}

/// After the guest is off: a cold VM copies, a warm one removes its last pre-copy
/// snapshot and takes the final one.
fn next_after_power_off(v: &VmStatus) -> Step {
    if v.precopies.is_empty() {
        Step::AddCheckpoint
    } else {
        Step::RemovePrevious
    }
}

/// The cutover time of a VM (its own, else the plan's).
fn cutover_of(spec: &FerryPlanSpec, vm: &str) -> Option<Timestamp> {
    spec.vms
        .iter()
        .find(|v| vm_key(v) == vm)
        .and_then(|v| v.cutover.as_ref())
        .or(spec.cutover.as_ref())
        .map(|t| t.0)
}

fn canceled(spec: &FerryPlanSpec, v: &VmStatus) -> bool {
    spec.cancel
        .iter()
        .any(|c| *c == v.id || (!v.name.is_empty() && *c == v.name))
}

struct Ctx<'a> {
    input: &'a PlanInput<'a>,
    actions: Vec<PlanAction>,
    requeue: Option<Duration>,
}

impl Ctx<'_> {
    fn soon(&mut self, d: Duration) {
        self.requeue = Some(self.requeue.map_or(d, |r| r.min(d)));
    }
    fn event(&mut self, warning: bool, reason: &'static str, note: String) {
        self.actions.push(PlanAction::Event {
            warning,
            reason,
            note,
        });
    }
}

/// Decide what to do for a plan.
pub fn plan_plan(input: &PlanInput<'_>) -> PlanDecision {
    let spec = input.spec;
    let mut status = input.status.clone();
    let mut cx = Ctx {
        input,
        actions: Vec::new(),
        requeue: None,
    };

    // Keep one VmStatus per VM of the spec, in spec order.
    let mut vms = Vec::with_capacity(spec.vms.len());
    for vm in &spec.vms {
        let key = vm_key(vm);
        let mut v = status
            .vms
            .iter()
            .find(|s| s.id == key)
            .cloned()
            .unwrap_or_else(|| VmStatus {
                id: key.clone(),
                name: vm.name.clone().unwrap_or_default(),
                step: Step::Pending.as_str().into(),
                phase: "Pending".into(),
                ..Default::default()
            });
        if v.host.is_none() {
            v.host = vm.host.clone();
        }
        vms.push(v);
    }
    status.vms = vms;
    status.target_namespace = spec.target_namespace.clone().unwrap_or_default();
    status.archived = spec.archived;
    status.source = source_label(spec);

    // A plan that cannot run says why, in a Ready=False condition, and never starts.
    let problems = validate(spec);
    set_condition(
        &mut status,
        "Ready",
        problems.is_empty(),
        if problems.is_empty() {
            "Valid"
        } else {
            "Invalid"
        },
        &problems.join("; "),
        input.now,
    );
    if !problems.is_empty() {
        summarize(&mut status, input);
        status.ready = false;
        return PlanDecision {
            status,
            actions: cx.actions,
            requeue: None,
        };
    }
    if spec.start && status.started_at.is_none() {
        status.started_at = Some(Time(input.now));
        cx.event(
            false,
            "PlanStarted",
            format!(
                "{} VMs, {}",
                spec.vms.len(),
                if spec.warm { "warm" } else { "cold" }
            ),
        );
    }
    let archived_cancel = spec.archived;
    for v in &mut status.vms {
        if spec.start || Step::parse(&v.step) != Step::Pending {
            step_vm(&mut cx, v, archived_cancel);
        }
        v.phase = shown_phase(v, spec.warm);
    }
    if spec.archived {
        for d in input.disks.iter().filter(|d| d.retain) {
            cx.actions.push(PlanAction::ReleasePods(d.name.clone()));
        }
    }
    summarize(&mut status, input);
    PlanDecision {
        status,
        actions: cx.actions,
        requeue: cx.requeue,
    }
}

/// What is wrong with a plan's spec (empty: nothing).
pub fn validate(spec: &FerryPlanSpec) -> Vec<String> {
    let mut out = Vec::new();
    match (&spec.source.vsphere, &spec.source.nbd) {
        (Some(_), Some(_)) => out.push("source names both vsphere and nbd".to_string()),
        (None, None) => out.push("source names neither vsphere nor nbd".to_string()),
        (None, Some(_)) if spec.warm => out.push(
            "a warm plan needs a vSphere source (NBD sources have no changed-block tracking here)"
                .to_string(),
        ),
        _ => {}
    }
    if spec.vms.is_empty() {
        out.push("the plan names no VMs".into());
    }
    let mut keys = std::collections::BTreeSet::new();
    for (i, vm) in spec.vms.iter().enumerate() {
        let key = vm_key(vm);
        if key.is_empty() {
            out.push(format!("vms[{i}] has neither id nor name"));
        } else if !keys.insert(key.clone()) {
            out.push(format!("VM {key} is listed twice"));
        }
        if spec.source.nbd.is_some() && vm.disks.iter().any(|d| d.nbd_uri.is_none()) {
            out.push(format!(
                "VM {key}: every disk of an NBD plan needs an nbdUri"
            ));
        }
    }
    if let Some(i) = &spec.precopy_interval
        && parse_duration(i).is_none()
    {
        out.push(format!(
            "precopyInterval {i:?} is not a duration (60m, 1h30m, 90s)"
        ));
    }
    if let Some(t) = &spec.pvc_name_template {
        let vars = crate::names::TemplateVars {
            plan_name: "p".into(),
            vm_name: "vm".into(),
            disk_index: 0,
            shared: false,
        };
        if let Err(e) = crate::names::render_pvc_name(t, &vars) {
            out.push(e.to_string());
        }
    }
    out
}

fn set_condition(
    status: &mut FerryPlanStatus,
    type_: &str,
    ok: bool,
    reason: &str,
    message: &str,
    now: Timestamp,
) {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
    let value = if ok { "True" } else { "False" };
    if let Some(c) = status.conditions.iter_mut().find(|c| c.type_ == type_) {
        if c.status != value {
            c.last_transition_time = Time(now);
        }
        c.status = value.into();
        c.reason = reason.into();
        c.message = message.into();
        c.observed_generation = status.observed_generation;
    } else {
        status.conditions.push(Condition {
            type_: type_.into(),
            status: value.into(),
            reason: reason.into(),
            message: message.into(),
            last_transition_time: Time(now),
            observed_generation: status.observed_generation,
        });
    }
}

fn source_label(spec: &FerryPlanSpec) -> String {
    if let Some(v) = &spec.source.vsphere {
        let host = v.url.split("://").nth(1).unwrap_or(&v.url);
        host.split(['/', ':']).next().unwrap_or(host).to_string()
    } else if spec.source.nbd.is_some() {
        "nbd".into()
    } else {
        String::new()
    }
}

fn vm_disks<'a>(input: &'a PlanInput<'_>, vm: &str) -> Vec<&'a DiskView> {
    input.disks.iter().filter(|d| d.vm == vm).collect()
}

/// One step of one VM.
fn step_vm(cx: &mut Ctx<'_>, v: &mut VmStatus, archived: bool) {
    let input = cx.input;
    let spec = input.spec;
    let now = input.now;
    let managed = manages_vsphere(spec);
    let mut step = Step::parse(&v.step);

    if !step.is_terminal() && step != Step::Canceling && (canceled(spec, v) || archived) {
        cx.event(false, "VmCanceled", format!("VM {} canceled", v.id));
        v.phase = "Canceled".into();
        step = Step::Canceling;
    }
    if step == Step::Pending {
        v.started_at = Some(Time(now));
        step = Step::Inventory;
    }
    // A failed disk fails the VM: the other disks are stopped, the source restored.
    if !step.is_terminal()
        && step != Step::Canceling
        && let Some(d) = vm_disks(input, &v.id)
            .into_iter()
            .find(|d| d.phase == DiskPhase::Failed)
    {
        v.message = format!("disk {} failed: {}", d.name, d.message);
        cx.event(true, "VmFailed", format!("VM {}: {}", v.id, v.message));
        v.phase = "Failed".into();
        step = Step::Canceling;
    }
    // Read the task the VM waits on.
    let task = v.task.as_ref().and_then(|t| input.tasks.get(t)).cloned();

    match step {
        Step::Inventory => {
            if managed {
                cx.actions.push(PlanAction::FindVm { vm: v.id.clone() });
                cx.soon(Duration::ZERO);
                step = if spec.warm {
                    Step::CreateSnapshot
                } else if spec.power_off_source.unwrap_or(true) {
                    Step::PowerOff
                } else {
                    Step::AddCheckpoint
                };
            } else {
                match super::build::resolve_disks(input.name, spec, v, &[]) {
                    Ok(d) => {
                        v.disks = d;
                        step = Step::AddCheckpoint;
                    }
                    Err(e) => {
                        fail_vm(v, e, now);
                        step = Step::Canceling;
                    }
                }
                cx.soon(Duration::ZERO);
            }
        }
        Step::PowerOff => {
            if v.power_state.as_deref() == Some("poweredOff") && v.precopies.is_empty() {
                step = Step::AddCheckpoint;
            } else {
                cx.event(false, "PowerOff", format!("shutting down VM {}", v.id));
                cx.actions.push(PlanAction::PowerOff { vm: v.id.clone() });
                v.powered_off_at = Some(Time(now));
                step = Step::WaitPowerOff;
                v.message = "waiting for the guest to shut down".into();
            }
            cx.soon(Duration::ZERO);
        }
        Step::WaitPowerOff => {
            let since = v.powered_off_at.as_ref().map_or(now, |t| t.0);
            if now.duration_since(since).unsigned_abs() > POWER_OFF_TIMEOUT {
                let m = format!(
                    "the guest did not shut down within {} minutes",
                    POWER_OFF_TIMEOUT.as_secs() / 60
                );
                cx.event(true, "PowerOffTimedOut", format!("VM {}: {m}", v.id));
                fail_vm(v, m, now);
                step = Step::Canceling;
            } else {
                cx.actions
                    .push(PlanAction::ReadPowerState { vm: v.id.clone() });
                cx.soon(TASK_POLL);
            }
        }
        Step::CreateSnapshot => {
            let last = v.cutover_at.is_some();
            v.precopies.retain(|p| !p.snapshot.is_empty());
            cx.actions.push(PlanAction::CreateSnapshot {
                vm: v.id.clone(),
                name: SNAPSHOT_NAME.into(),
            });
            if last {
                v.message = "taking the final snapshot".into();
            }
            cx.soon(Duration::ZERO);
        }
        Step::WaitSnapshot => match task {
            Some(TaskView::Success(Some(snap))) => {
                v.task = None;
                let last = v.cutover_at.is_some();
                v.precopies.push(Precopy {
                    snapshot: snap.clone(),
                    start: Some(Time(now)),
                    last,
                    ..Default::default()
                });
                cx.actions.push(PlanAction::ReadChangeIds {
                    vm: v.id.clone(),
                    snapshot: snap,
                });
                step = Step::StoreDeltas;
                cx.soon(Duration::ZERO);
            }
            Some(TaskView::Success(None)) => {
                v.message = "the snapshot task ended without a snapshot".into();
                v.phase = "Failed".into();
                v.task = None;
                step = Step::Canceling;
            }
            Some(TaskView::Error(e)) => {
                v.message = format!("snapshot failed: {e}");
                v.phase = "Failed".into();
                v.task = None;
                cx.event(true, "SnapshotFailed", format!("VM {}: {e}", v.id));
                step = Step::Canceling;
            }
            Some(TaskView::Running) | None => cx.soon(TASK_POLL),
        },
        Step::StoreDeltas => {
            // Waiting for the change IDs (recorded as an outcome of ReadChangeIds).
            if let Some(p) = v.precopies.last() {
                cx.actions.push(PlanAction::ReadChangeIds {
                    vm: v.id.clone(),
                    snapshot: p.snapshot.clone(),
                });
            }
            cx.soon(Duration::ZERO);
        }
        Step::AddCheckpoint => {
            let disks = resolved_disks(v);
            if disks.is_empty() && managed {
                v.message = "the VM has no disks".into();
                v.phase = "Failed".into();
                step = Step::Canceling;
            } else {
                let n = v.precopies.len();
                let last = !spec.warm || v.precopies.last().is_some_and(|p| p.last);
                let mut checkpoints = BTreeMap::new();
                for d in &disks {
                    let cp = if spec.warm && managed {
                        let current = v.precopies[n - 1].snapshot.clone();
                        let previous = if n >= 2 {
                            v.precopies[n - 2]
                                .change_ids
                                .get(&d.source)
                                .cloned()
                                .unwrap_or_default()
                        } else {
                            String::new()
                        };
                        Some(Checkpoint { previous, current })
                    } else {
                        None
                    };
                    checkpoints.insert(d.disk_import.clone(), cp);
                }
                cx.actions.push(PlanAction::SetCheckpoints {
                    vm: v.id.clone(),
                    checkpoints,
                    last: last && (managed || !spec.warm),
                });
                v.round = u32::try_from(n.max(1)).unwrap_or(u32::MAX);
                cx.event(
                    false,
                    "RoundStarted",
                    format!(
                        "VM {}: round {}{}",
                        v.id,
                        v.round,
                        if last { " (final)" } else { "" }
                    ),
                );
                step = Step::CopyDisks;
                v.message.clear();
                cx.soon(Duration::ZERO);
            }
        }
        Step::CopyDisks => {
            let disks = vm_disks(input, &v.id);
            let expected = resolved_disks(v).len().max(1);
            let current = v.precopies.last().map(|p| p.snapshot.clone());
            let done = |d: &&DiskView| match (&current, spec.warm && managed) {
                (Some(c), true) => d.copied.contains(c),
                _ => d.phase == DiskPhase::Succeeded,
            };
            let all_done = disks.len() >= expected && disks.iter().all(done);
            let final_round = !spec.warm || !managed || v.precopies.last().is_some_and(|p| p.last);
            if all_done {
                cx.event(
                    false,
                    "RoundCompleted",
                    format!("VM {}: round {} copied", v.id, v.round),
                );
                if let Some(p) = v.precopies.last_mut() {
                    p.end = Some(Time(now));
                }
                if final_round {
                    step = if managed && spec.warm {
                        Step::RemoveFinal
                    } else {
                        Step::Completed
                    };
                } else {
                    let interval = spec
                        .precopy_interval
                        .as_deref()
                        .and_then(parse_duration)
                        .unwrap_or(DEFAULT_PRECOPY_INTERVAL)
                        .max(MIN_PRECOPY_INTERVAL);
                    v.next_precopy_at = Some(Time(add(now, interval)));
                    step = Step::Paused;
                }
                cx.soon(Duration::ZERO);
            } else if !spec.warm || managed || !disks.iter().all(|d| d.phase == DiskPhase::Paused) {
                cx.soon(Duration::from_secs(5));
            }
        }
        Step::Paused => {
            if cutover_due(spec, v, now) {
                cx.event(false, "Cutover", format!("VM {}: cutover", v.id));
                v.next_precopy_at = None;
                v.cutover_at = Some(Time(now));
                step = if spec.power_off_source.unwrap_or(true)
                    && v.power_state.as_deref() != Some("poweredOff")
                {
                    Step::PowerOff
                } else {
                    Step::RemovePrevious
                };
                cx.soon(Duration::ZERO);
            } else {
                let next = v.next_precopy_at.as_ref().map_or(now, |t| t.0);
                if next <= now {
                    step = Step::RemovePrevious;
                    cx.soon(Duration::ZERO);
                } else {
                    let mut wake = next;
                    if let Some(c) = cutover_of(spec, &v.id) {
                        wake = wake.min(c);
                    }
                    cx.soon(now.duration_until(wake).unsigned_abs());
                }
            }
        }
        Step::RemovePrevious => {
            match v.precopies.iter().rev().find(|p| !p.removed) {
                Some(p) => {
                    cx.actions.push(PlanAction::RemoveSnapshot {
                        vm: v.id.clone(),
                        snapshot: p.snapshot.clone(),
                    });
                }
                None => step = Step::CreateSnapshot,
            }
            cx.soon(Duration::ZERO);
        }
        Step::RemoveFinal => {
            match v.precopies.iter().rev().find(|p| !p.removed) {
                Some(p) => {
                    cx.actions.push(PlanAction::RemoveSnapshot {
                        vm: v.id.clone(),
                        snapshot: p.snapshot.clone(),
                    });
                }
                None => step = Step::Completed,
            }
            cx.soon(Duration::ZERO);
        }
        Step::WaitRemove => match task {
            Some(TaskView::Success(_)) | Some(TaskView::Error(_)) => {
                if let Some(TaskView::Error(e)) = &task {
                    cx.event(true, "SnapshotRemovalFailed", format!("VM {}: {e}", v.id));
                }
                if let Some(p) = v.precopies.iter_mut().rev().find(|p| !p.removed) {
                    p.removed = true;
                }
                v.task = None;
                let final_done = v
                    .precopies
                    .last()
                    .is_some_and(|p| p.last && p.end.is_some());
                step = if v.phase == "Canceled" || v.phase == "Failed" {
                    Step::Canceling
                } else if final_done {
                    Step::Completed
                } else {
                    Step::CreateSnapshot
                };
                cx.soon(Duration::ZERO);
            }
            Some(TaskView::Running) | None => cx.soon(TASK_POLL),
        },
        Step::Canceling => {
            step = cancel_step(cx, v);
        }
        Step::Completed | Step::Failed | Step::Canceled | Step::Pending => {}
    }
    if step == Step::Completed && v.completed_at.is_none() {
        v.completed_at = Some(Time(now));
        v.message.clear();
        cx.event(false, "VmCompleted", format!("VM {} migrated", v.id));
    }
    v.step = step.as_str().into();
}

/// Stop a VM's disks, remove its snapshots, restore its power; the end step once done.
fn cancel_step(cx: &mut Ctx<'_>, v: &mut VmStatus) -> Step {
    let input = cx.input;
    let spec = input.spec;
    let failed = v.phase == "Failed";
    let disks = vm_disks(input, &v.id);
    let mut waiting = false;
    for d in &disks {
        if !d.phase.is_terminal() {
            waiting = true;
            if !d.cancel {
                cx.actions.push(PlanAction::CancelDisk(d.name.clone()));
            }
        }
    }
    if waiting {
        cx.soon(Duration::from_secs(2));
        return Step::Canceling;
    }
    if let Some(t) = v.task.clone() {
        match input.tasks.get(&t) {
            Some(TaskView::Running) | None => {
                cx.soon(TASK_POLL);
                return Step::Canceling;
            }
            Some(TaskView::Success(Some(snap)))
                if !v.precopies.iter().any(|p| &p.snapshot == snap) =>
            {
                // A snapshot finished after the cancel: remove it too.
                v.precopies.push(Precopy {
                    snapshot: snap.clone(),
                    ..Default::default()
                });
                v.task = None;
            }
            Some(_) => {
                if let Some(p) = v.precopies.iter_mut().rev().find(|p| !p.removed) {
                    p.removed = true;
                }
                v.task = None;
            }
        }
    }
    if manages_vsphere(spec) {
        if let Some(p) = v.precopies.iter().rev().find(|p| !p.removed) {
            cx.actions.push(PlanAction::RemoveSnapshot {
                vm: v.id.clone(),
                snapshot: p.snapshot.clone(),
            });
            cx.soon(Duration::ZERO);
            return Step::Canceling;
        }
        if v.powered_off_at.is_some() && v.power_state.as_deref() == Some("poweredOn") {
            cx.event(
                false,
                "PowerRestored",
                format!("powering VM {} on again", v.id),
            );
            cx.actions.push(PlanAction::PowerOn { vm: v.id.clone() });
            v.powered_off_at = None;
        }
    }
    if spec.delete_volumes_on_cancel && !failed {
        for d in resolved_disks(v) {
            cx.actions.push(PlanAction::DeletePvc(d.pvc.clone()));
        }
    }
    v.completed_at.get_or_insert(Time(input.now));
    if failed { Step::Failed } else { Step::Canceled }
}

fn cutover_due(spec: &FerryPlanSpec, v: &VmStatus, now: Timestamp) -> bool {
    spec.warm && cutover_of(spec, &v.id).is_some_and(|c| c <= now)
}

/// A VM's disks with their DiskImport names filled in.
fn resolved_disks(v: &VmStatus) -> Vec<VmDisk> {
    v.disks
        .iter()
        .filter(|d| !d.disk_import.is_empty())
        .cloned()
        .collect()
}

/// The phase shown for a VM.
fn shown_phase(v: &VmStatus, warm: bool) -> String {
    match Step::parse(&v.step) {
        Step::Pending => "Pending".into(),
        Step::Completed => "Completed".into(),
        Step::Failed => "Failed".into(),
        Step::Canceled => "Canceled".into(),
        Step::Canceling => {
            if v.phase == "Failed" {
                "Failed".into()
            } else {
                "Canceled".into()
            }
        }
        Step::Paused => "Paused".into(),
        Step::PowerOff | Step::WaitPowerOff => "PowerOff".into(),
        Step::CopyDisks if warm => format!("Copying (round {})", v.round),
        Step::CopyDisks => "Copying".into(),
        _ if warm && !v.precopies.is_empty() && v.precopies.last().is_some_and(|p| p.last) => {
            "Cutover".into()
        }
        _ => "Preparing".into(),
    }
}

/// Gibibytes, floored, as the seed prints them.
fn gib(b: u64) -> u64 {
    b >> 30
}

fn summarize(status: &mut FerryPlanStatus, input: &PlanInput<'_>) {
    let spec = input.spec;
    let steps: Vec<Step> = status.vms.iter().map(|v| Step::parse(&v.step)).collect();
    let total = steps.len();
    let (mut s, mut f, mut c) = (0, 0, 0);
    for st in &steps {
        match st {
            Step::Completed => s += 1,
            Step::Failed => f += 1,
            Step::Canceled => c += 1,
            _ => {}
        }
    }
    let ended = s + f + c;
    let started = status.started_at.is_some();
    status.vms_summary = if started {
        format!("{ended}/{total} (S:{s}/F:{f}/C:{c})")
    } else {
        total.to_string()
    };

    // Progress over every disk's current round.
    let (mut done, mut all) = (0u64, 0u64);
    for v in &mut status.vms {
        let (mut vd, mut vt) = (0u64, 0u64);
        for d in input.disks.iter().filter(|d| d.vm == v.id && !d.cancel) {
            vd = vd.saturating_add(d.bytes_done);
            vt = vt.saturating_add(d.bytes_total);
        }
        v.bytes_done = vd;
        v.bytes_total = vt;
        done = done.saturating_add(vd);
        all = all.saturating_add(vt);
    }
    status.bytes_done = done;
    status.bytes_total = all;
    status.progress = if started && all > 0 {
        format!(
            "{} ({}/{} GB)",
            super::disk::percent(done, all),
            gib(done),
            gib(all)
        )
    } else {
        "-".into()
    };
    let cutover = spec.cutover.as_ref().map(|t| t.0);
    status.cutover = match (spec.warm, cutover) {
        (false, _) => "cold".into(),
        (true, None) => "warm".into(),
        (true, Some(t)) => t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
    };
    status.ready = validate(spec).is_empty();
    status.phase = if !started {
        "Created".into()
    } else if ended == total {
        if f > 0 {
            "Failed".into()
        } else if c == total {
            "Canceled".into()
        } else {
            "Completed".into()
        }
    } else if spec.warm && cutover.is_some_and(|t| t > input.now) {
        "Cutover Scheduled".into()
    } else if spec.warm
        && status
            .vms
            .iter()
            .any(|v| v.precopies.iter().any(|p| p.end.is_some()))
        && !status
            .vms
            .iter()
            .any(|v| v.precopies.iter().any(|p| p.last))
    {
        "Warm Running".into()
    } else {
        "Started".into()
    };
    if ended == total && started && status.completed_at.is_none() {
        status.completed_at = Some(Time(input.now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{NbdSource, PlanDisk, PlanSource, PlanVm, VsphereSource};

    const UUID: &str = "42125a6b-7f0c-4c6e-9a3e-3f2d1c0b9a8e";

    /// A small world the planner acts on: a fake vCenter and the DiskImports.
    struct World {
        spec: FerryPlanSpec,
        status: FerryPlanStatus,
        disks: Vec<DiskView>,
        tasks: BTreeMap<String, TaskView>,
        now: Timestamp,
        power: String,
        snapshots: Vec<String>,
        next_id: u32,
        log: Vec<String>,
    }

    fn vsphere_spec(warm: bool) -> FerryPlanSpec {
        FerryPlanSpec {
            source: PlanSource {
                vsphere: Some(VsphereSource {
                    url: "https://vc.example.com/sdk".into(),
                    secret_ref: "vc-creds".into(),
                    vddk_image: "registry.example.com/vddk:8".into(),
                    ..Default::default()
                }),
                nbd: None,
            },
            vms: vec![PlanVm {
                id: Some(UUID.into()),
                name: Some("web".into()),
                ..Default::default()
            }],
            warm,
            precopy_interval: Some("30m".into()),
            ..Default::default()
        }
    }

    impl World {
        fn new(spec: FerryPlanSpec) -> World {
            World {
                spec,
                status: FerryPlanStatus::default(),
                disks: Vec::new(),
                tasks: BTreeMap::new(),
                now: Timestamp::from_second(1_800_000_000).unwrap(),
                power: "poweredOn".into(),
                snapshots: Vec::new(),
                next_id: 1,
                log: Vec::new(),
            }
        }

        fn vm(&self) -> &VmStatus {
            &self.status.vms[0]
        }

        fn task(&mut self, result: Option<String>) -> Outcome {
            let t = format!("task-{}", self.next_id);
            self.next_id += 1;
            self.tasks.insert(t.clone(), TaskView::Success(result));
            Outcome::TaskStarted(t)
        }

        /// One reconcile: plan, then act as the reconciler would.
        fn step(&mut self) -> PlanDecision {
            let d = plan_plan(&PlanInput {
                name: "p1",
                spec: &self.spec,
                status: &self.status,
                disks: &self.disks,
                tasks: &self.tasks,
                now: self.now,
            });
            self.status = d.status.clone();
            for a in &d.actions {
                let (vm, outcome) = match a {
                    PlanAction::FindVm { vm } => (
                        vm.clone(),
                        Some(Outcome::Found {
                            uuid: Some(UUID.into()),
                            name: "web".into(),
                            host: Some("esx1.example.com".into()),
                            power_state: self.power.clone(),
                            disks: vec![
                                FoundDisk {
                                    source: "[ds1] web/web.vmdk".into(),
                                    capacity: 10 << 30,
                                },
                                FoundDisk {
                                    source: "[ds2] web/web_1.vmdk".into(),
                                    capacity: 20 << 30,
                                },
                            ],
                        }),
                    ),
                    PlanAction::CreateSnapshot { vm, .. } => {
                        let s = format!("snapshot-{}", self.next_id);
                        self.snapshots.push(s.clone());
                        self.log.push(format!("create {s}"));
                        (vm.clone(), Some(self.task(Some(s))))
                    }
                    PlanAction::RemoveSnapshot { vm, snapshot } => {
                        self.snapshots.retain(|s| s != snapshot);
                        self.log.push(format!("remove {snapshot}"));
                        (vm.clone(), Some(self.task(None)))
                    }
                    PlanAction::ReadChangeIds { vm, snapshot } => (
                        vm.clone(),
                        Some(Outcome::ChangeIds(BTreeMap::from([
                            (
                                "[ds1] web/web.vmdk".to_string(),
                                format!("52 aa-bb/{snapshot}-0"),
                            ),
                            (
                                "[ds2] web/web_1.vmdk".to_string(),
                                format!("52 aa-bb/{snapshot}-1"),
                            ),
                        ]))),
                    ),
                    PlanAction::PowerOff { vm } => {
                        self.power = "poweredOff".into();
                        self.log.push("power off".into());
                        (vm.clone(), None)
                    }
                    PlanAction::PowerOn { vm } => {
                        self.power = "poweredOn".into();
                        self.log.push("power on".into());
                        (vm.clone(), None)
                    }
                    PlanAction::ReadPowerState { vm } => {
                        (vm.clone(), Some(Outcome::PowerState(self.power.clone())))
                    }
                    PlanAction::SetCheckpoints {
                        vm,
                        checkpoints,
                        last,
                    } => {
                        for (name, cp) in checkpoints {
                            self.log.push(format!(
                                "checkpoint {name} {}{}",
                                cp.as_ref().map_or("cold".to_string(), |c| format!(
                                    "{:?}->{}",
                                    c.previous, c.current
                                )),
                                if *last { " final" } else { "" }
                            ));
                            let d = match self.disks.iter_mut().find(|d| &d.name == name) {
                                Some(d) => d,
                                None => {
                                    self.disks.push(DiskView {
                                        name: name.clone(),
                                        vm: vm.clone(),
                                        phase: DiskPhase::Pending,
                                        checkpoints: vec![],
                                        final_checkpoint: false,
                                        copied: vec![],
                                        cancel: false,
                                        retain: false,
                                        bytes_done: 0,
                                        bytes_total: 0,
                                        message: String::new(),
                                    });
                                    self.disks.last_mut().unwrap()
                                }
                            };
                            if let Some(c) = cp
                                && !d.checkpoints.contains(&c.current)
                            {
                                d.checkpoints.push(c.current.clone());
                            }
                            d.final_checkpoint = *last;
                            d.phase = DiskPhase::Running;
                            d.bytes_total = 10 << 30;
                        }
                        (vm.clone(), None)
                    }
                    PlanAction::CancelDisk(n) => {
                        let d = self.disks.iter_mut().find(|d| &d.name == n).unwrap();
                        d.cancel = true;
                        self.log.push(format!("cancel {n}"));
                        (String::new(), None)
                    }
                    PlanAction::ReleasePods(n) => {
                        self.log.push(format!("release {n}"));
                        (String::new(), None)
                    }
                    PlanAction::DeletePvc(n) => {
                        self.log.push(format!("delete pvc {n}"));
                        (String::new(), None)
                    }
                    PlanAction::Event { .. } => (String::new(), None),
                };
                if let Some(o) = outcome {
                    record("p1", &self.spec, &mut self.status, &vm, o, self.now);
                }
            }
            d
        }

        /// Plan until the VM reaches `step` (at most 30 reconciles).
        fn until(&mut self, step: Step) {
            for _ in 0..30 {
                if !self.status.vms.is_empty() && Step::parse(&self.vm().step) == step {
                    return;
                }
                self.step();
            }
            panic!(
                "never reached {step:?}: at {} ({}); log {:#?}",
                self.vm().step,
                self.vm().message,
                self.log
            );
        }

        /// Every disk copies its latest checkpoint.
        fn copy_all(&mut self) {
            for d in &mut self.disks {
                if let Some(c) = d.checkpoints.last() {
                    d.copied.push(c.clone());
                } else {
                    d.copied.push(String::new());
                }
                d.bytes_done = d.bytes_total;
                d.phase = if d.final_checkpoint {
                    DiskPhase::Succeeded
                } else {
                    DiskPhase::Paused
                };
            }
        }

        fn advance(&mut self, secs: i64) {
            self.now = self
                .now
                .checked_add(SignedDuration::from_secs(secs))
                .unwrap();
        }
    }

    #[test]
    fn a_plan_not_started_stays_created() {
        let mut w = World::new(vsphere_spec(true));
        let d = w.step();
        assert_eq!(w.status.phase, "Created");
        assert_eq!(w.status.vms_summary, "1");
        assert_eq!(w.status.progress, "-");
        assert_eq!(w.status.cutover, "warm");
        assert!(d.actions.is_empty() && w.status.ready);
    }

    #[test]
    fn a_warm_plan_runs_three_rounds_then_cuts_over() {
        let mut w = World::new(vsphere_spec(true));
        w.spec.start = true;
        w.until(Step::CopyDisks);
        assert_eq!(w.status.phase, "Started");
        assert_eq!(
            w.vm()
                .disks
                .iter()
                .map(|d| d.pvc.as_str())
                .collect::<Vec<_>>(),
            ["p1-web-disk-0", "p1-web-disk-1"]
        );
        w.copy_all();
        w.until(Step::Paused);
        assert_eq!(w.status.phase, "Warm Running");
        assert_eq!(w.vm().phase, "Paused");
        let next = w.vm().next_precopy_at.clone().unwrap().0;
        assert_eq!(next.duration_since(w.now), SignedDuration::from_mins(30));
        // Not yet due: wait until the next round.
        let d = w.step();
        assert_eq!(d.requeue, Some(Duration::from_secs(1800)));
        for _ in 0..2 {
            w.advance(1800);
            w.until(Step::CopyDisks);
            w.copy_all();
            w.until(Step::Paused);
        }
        assert_eq!(w.vm().round, 3);
        // Cutover in the future: scheduled.
        w.spec.cutover = Some(Time(
            w.now.checked_add(SignedDuration::from_mins(10)).unwrap(),
        ));
        w.step();
        assert_eq!(w.status.phase, "Cutover Scheduled");
        w.advance(600);
        w.until(Step::CopyDisks);
        assert_eq!(w.power, "poweredOff");
        w.copy_all();
        w.until(Step::Completed);
        assert_eq!(w.status.phase, "Completed");
        assert_eq!(w.status.vms_summary, "1/1 (S:1/F:0/C:0)");
        assert_eq!(w.status.progress, "100.0% (20/20 GB)");
        assert!(
            w.snapshots.is_empty(),
            "every snapshot removed: {:?}",
            w.snapshots
        );
        let expected = [
            "create snapshot-1",
            "checkpoint p1-web-disk-0 \"\"->snapshot-1",
            "checkpoint p1-web-disk-1 \"\"->snapshot-1",
            "remove snapshot-1",
            "create snapshot-3",
            "checkpoint p1-web-disk-0 \"52 aa-bb/snapshot-1-0\"->snapshot-3",
            "checkpoint p1-web-disk-1 \"52 aa-bb/snapshot-1-1\"->snapshot-3",
            "remove snapshot-3",
            "create snapshot-5",
            "checkpoint p1-web-disk-0 \"52 aa-bb/snapshot-3-0\"->snapshot-5",
            "checkpoint p1-web-disk-1 \"52 aa-bb/snapshot-3-1\"->snapshot-5",
            "power off",
            "remove snapshot-5",
            "create snapshot-7",
            "checkpoint p1-web-disk-0 \"52 aa-bb/snapshot-5-0\"->snapshot-7 final",
            "checkpoint p1-web-disk-1 \"52 aa-bb/snapshot-5-1\"->snapshot-7 final",
            "remove snapshot-7",
        ];
        assert_eq!(w.log, expected);
    }

    #[test]
    fn a_cutover_already_past_takes_the_final_round_after_the_first() {
        let mut w = World::new(vsphere_spec(true));
        w.spec.start = true;
        w.spec.cutover = Some(Time(
            w.now.checked_sub(SignedDuration::from_hours(1)).unwrap(),
        ));
        w.until(Step::CopyDisks);
        w.copy_all();
        w.step();
        w.until(Step::CopyDisks);
        assert!(
            w.disks
                .iter()
                .all(|d| d.final_checkpoint && d.checkpoints.len() == 2)
        );
        w.copy_all();
        w.until(Step::Completed);
    }

    #[test]
    fn a_cold_plan_powers_off_and_copies_once() {
        let mut w = World::new(vsphere_spec(false));
        w.spec.start = true;
        w.until(Step::CopyDisks);
        assert_eq!(w.log[0], "power off");
        assert_eq!(
            w.log[1..],
            [
                "checkpoint p1-web-disk-0 cold final",
                "checkpoint p1-web-disk-1 cold final"
            ]
        );
        assert_eq!(w.status.cutover, "cold");
        w.copy_all();
        w.until(Step::Completed);
        assert_eq!(w.status.phase, "Completed");
    }

    #[test]
    fn cancel_mid_round_stops_the_disks_removes_snapshots_and_keeps_power() {
        let mut w = World::new(vsphere_spec(true));
        w.spec.start = true;
        w.until(Step::CopyDisks);
        w.spec.cancel = vec!["web".into()];
        w.step();
        assert!(w.log.contains(&"cancel p1-web-disk-0".to_string()));
        assert_eq!(w.vm().phase, "Canceled");
        for d in &mut w.disks {
            d.phase = DiskPhase::Canceled;
        }
        w.until(Step::Canceled);
        assert!(w.snapshots.is_empty());
        assert!(
            !w.log.contains(&"power on".to_string()),
            "the plan never powered it off"
        );
        assert_eq!(w.status.phase, "Canceled");
        assert_eq!(w.status.vms_summary, "1/1 (S:0/F:0/C:1)");
    }

    #[test]
    fn cancel_after_the_cutover_power_off_powers_the_vm_on_again_and_can_delete_volumes() {
        let mut w = World::new(vsphere_spec(false));
        w.spec.start = true;
        w.spec.delete_volumes_on_cancel = true;
        w.until(Step::CopyDisks);
        w.spec.cancel = vec![UUID.into()];
        w.step();
        for d in &mut w.disks {
            d.phase = DiskPhase::Canceled;
        }
        w.until(Step::Canceled);
        assert_eq!(w.power, "poweredOn");
        assert!(w.log.contains(&"delete pvc p1-web-disk-1".to_string()));
    }

    #[test]
    fn a_failed_disk_fails_the_vm_and_stops_its_other_disks() {
        let mut w = World::new(vsphere_spec(true));
        w.spec.start = true;
        w.until(Step::CopyDisks);
        w.disks[0].phase = DiskPhase::Failed;
        w.disks[0].message = "authentication: login refused".into();
        w.step();
        assert!(w.log.contains(&"cancel p1-web-disk-1".to_string()));
        w.disks[1].phase = DiskPhase::Canceled;
        w.until(Step::Failed);
        assert_eq!(w.status.phase, "Failed");
        assert!(
            w.vm().message.contains("login refused"),
            "{}",
            w.vm().message
        );
        assert!(w.snapshots.is_empty());
    }

    #[test]
    fn a_snapshot_task_error_fails_the_vm() {
        let mut w = World::new(vsphere_spec(true));
        w.spec.start = true;
        w.until(Step::WaitSnapshot);
        let t = w.vm().task.clone().unwrap();
        w.tasks
            .insert(t, TaskView::Error("FileFault: disk locked".into()));
        w.until(Step::Failed);
        assert!(w.vm().message.contains("disk locked"));
    }

    #[test]
    fn archive_cancels_a_running_plan_and_releases_retained_pods() {
        let mut w = World::new(vsphere_spec(false));
        w.spec.start = true;
        w.until(Step::CopyDisks);
        w.copy_all();
        w.until(Step::Completed);
        w.disks[0].retain = true;
        w.spec.archived = true;
        w.step();
        assert!(w.log.contains(&"release p1-web-disk-0".to_string()));
        assert_eq!(w.status.phase, "Completed", "archiving keeps the status");
        assert!(w.status.archived, "the listing's ARCHIVED column");
    }

    #[test]
    fn an_nbd_plan_uses_the_spec_disks_and_no_vcenter() {
        let mut spec = FerryPlanSpec {
            source: PlanSource {
                vsphere: None,
                nbd: Some(NbdSource {}),
            },
            vms: vec![PlanVm {
                name: Some("db".into()),
                disks: vec![
                    PlanDisk {
                        nbd_uri: Some("nbd://10.0.0.5:10809/a".into()),
                        capacity: Some("1Gi".into()),
                        ..Default::default()
                    },
                    PlanDisk {
                        nbd_uri: Some("nbd+unix:///b?socket=/run/b.sock".into()),
                        capacity: Some("2Gi".into()),
                        pvc_name: Some("db-data".into()),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
            start: true,
            ..Default::default()
        };
        spec.pvc_name_template = Some("{{.VmName}}-{{.DiskIndex}}".into());
        let mut w = World::new(spec);
        w.until(Step::CopyDisks);
        assert_eq!(
            w.log,
            [
                "checkpoint db-0 cold final",
                "checkpoint db-data cold final"
            ]
        );
        let v = w.vm().clone();
        let di = super::super::build::disk_import_spec("p1", &w.spec, &v, 1).unwrap();
        assert_eq!(
            di.source.nbd.as_deref(),
            Some("nbd+unix:///b?socket=/run/b.sock")
        );
        assert_eq!(di.source_key, "/run/b.sock");
        assert_eq!(di.capacity, 2 << 30);
        assert_eq!(
            super::super::build::disk_import_spec("p1", &w.spec, &v, 0)
                .unwrap()
                .source_key,
            "10.0.0.5:10809"
        );
        w.copy_all();
        w.until(Step::Completed);
    }

    #[test]
    fn a_disk_import_spec_carries_vddk_source_limits_and_storage() {
        let mut w = World::new(vsphere_spec(true));
        w.spec.start = true;
        w.spec.limits.per_host_disks = Some(4);
        w.spec
            .storage
            .datastores
            .push(crate::crd::DatastoreMapping {
                datastore: "ds2".into(),
                target: crate::crd::StorageTarget {
                    storage_class: Some("fast".into()),
                    volume_mode: Some(crate::crd::VolumeMode::Filesystem),
                    access_mode: None,
                },
            });
        w.until(Step::CopyDisks);
        let v = w.vm().clone();
        let d0 = super::super::build::disk_import_spec("p1", &w.spec, &v, 0).unwrap();
        let d1 = super::super::build::disk_import_spec("p1", &w.spec, &v, 1).unwrap();
        let vddk = d0.source.vddk.as_ref().unwrap();
        assert_eq!(
            (vddk.uuid.as_str(), vddk.backing_file.as_str()),
            (UUID, "[ds1] web/web.vmdk")
        );
        assert_eq!(
            (
                d0.source_key.as_str(),
                d0.vcenter_key.as_deref(),
                d0.per_host_limit
            ),
            ("esx1.example.com", Some("vc.example.com"), Some(4))
        );
        assert_eq!(d0.pvc.volume_mode, crate::crd::VolumeMode::Block);
        assert_eq!(
            (d1.pvc.storage_class.as_deref(), d1.pvc.volume_mode),
            (Some("fast"), crate::crd::VolumeMode::Filesystem)
        );
    }

    #[test]
    fn an_invalid_plan_is_not_ready_says_why_and_never_starts() {
        let mut spec = vsphere_spec(true);
        spec.start = true;
        spec.source.nbd = Some(NbdSource {});
        spec.precopy_interval = Some("soon".into());
        spec.vms.push(spec.vms[0].clone());
        let mut w = World::new(spec);
        let d = w.step();
        assert!(d.actions.is_empty());
        assert!(!w.status.ready);
        assert_eq!(w.status.phase, "Created");
        let c = &w.status.conditions[0];
        assert_eq!(
            (c.type_.as_str(), c.status.as_str(), c.reason.as_str()),
            ("Ready", "False", "Invalid")
        );
        for m in ["both vsphere and nbd", "not a duration", "listed twice"] {
            assert!(c.message.contains(m), "{m}: {}", c.message);
        }
    }

    #[test]
    fn go_durations_parse_as_go_does() {
        assert_eq!(parse_duration("60m"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        for bad in ["", "10", "m", "5d", "-5m", "1h1", &"9".repeat(40)] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }
}
