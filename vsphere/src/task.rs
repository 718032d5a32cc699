//! Tasks (`Task.info`), power states and per-disk change IDs: the types of the calls a
//! warm migration makes (see the call table in the crate docs).

use std::fmt;

use crate::soap::MoRef;

/// A vSphere `Task` managed object, as a `*_Task` method returns it (`task-123`, or
/// `haTask-…` on ESXi).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TaskRef {
    /// The moref value.
    pub moref: String,
}

impl TaskRef {
    /// The task with this moref value.
    pub fn new(moref: &str) -> TaskRef {
        TaskRef {
            moref: moref.to_string(),
        }
    }
}

impl fmt::Display for TaskRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.moref)
    }
}

/// `TaskInfo.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskState {
    /// Waiting to run.
    Queued,
    /// Running (`progress` may be set).
    Running,
    /// Done; `result` is set for tasks that return something.
    Success,
    /// Failed; `error` says why.
    Error,
}

impl TaskState {
    /// Read the wire value (`queued`, `running`, `success`, `error`).
    pub fn parse(s: &str) -> Option<TaskState> {
        Some(match s {
            "queued" => TaskState::Queued,
            "running" => TaskState::Running,
            "success" => TaskState::Success,
            "error" => TaskState::Error,
            _ => return None,
        })
    }

    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Running => "running",
            TaskState::Success => "success",
            TaskState::Error => "error",
        }
    }

    /// True for `success` and `error`.
    pub fn is_done(self) -> bool {
        matches!(self, TaskState::Success | TaskState::Error)
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `TaskInfo.error` (a `LocalizedMethodFault`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskFault {
    /// The fault's vim25 type (`error.fault`'s `xsi:type`), e.g. `FileFault`.
    pub name: String,
    /// `error.localizedMessage` (vcsim puts the Go type there, e.g. `*types.FileFault`).
    pub message: String,
}

/// The parts of a `TaskInfo` a controller uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskInfo {
    /// The task (`info.task`, or the one asked about).
    pub task: TaskRef,
    /// `info.name`: the method, e.g. `vim.VirtualMachine.createSnapshot` on vCenter
    /// (what Forklift compares), `CreateSnapshot` on vcsim 0.24.
    pub name: Option<String>,
    /// `info.descriptionId`, e.g. `VirtualMachine.createSnapshot`.
    pub description_id: Option<String>,
    /// `info.entity`, the object the task works on (the VM for snapshot tasks on
    /// vCenter).
    pub entity: Option<MoRef>,
    /// `info.state`.
    pub state: TaskState,
    /// `info.progress` in percent (0–100), while running.
    pub progress: Option<u8>,
    /// `info.result` when it is a moref (the new snapshot of `CreateSnapshot_Task`).
    pub result: Option<MoRef>,
    /// `info.error`, set when `state` is `error`.
    pub error: Option<TaskFault>,
    /// `info.cancelled`.
    pub cancelled: bool,
}

/// Which task [`crate::Client::running_task`] looks for in a VM's `recentTask`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskKind {
    /// `CreateSnapshot_Task` (or `CreateSnapshotEx_Task`).
    CreateSnapshot,
    /// `RemoveSnapshot_Task`.
    RemoveSnapshot,
}

impl TaskKind {
    /// Forklift's name for it (`createSnapshotTaskName`, `removeSnapshotTaskName`): the
    /// vmodl method name vCenter puts in `info.name`.
    pub fn vmodl_name(self) -> &'static str {
        match self {
            TaskKind::CreateSnapshot => "vim.VirtualMachine.createSnapshot",
            TaskKind::RemoveSnapshot => "vim.vm.Snapshot.remove",
        }
    }

    /// True when a task's `info.name` or `info.descriptionId` names this kind of task.
    ///
    /// vCenter sets `name` to the vmodl method name (`vim.VirtualMachine.createSnapshot`,
    /// what Forklift compares) and `descriptionId` to `VirtualMachine.createSnapshot`;
    /// vcsim sets `name` to `CreateSnapshot` (0.24) or `CreateSnapshotEx` (later), with the
    /// descriptionIds `VirtualMachine.createSnapshot(Ex)` and
    /// `VirtualMachineSnapshot.removeSnapshot`. Any of them matches.
    pub fn matches(self, name: Option<&str>, description_id: Option<&str>) -> bool {
        let (names, ids): (&[&str], &[&str]) = match self {
            TaskKind::CreateSnapshot => (
                &[
                    "vim.VirtualMachine.createSnapshot",
                    "vim.VirtualMachine.createSnapshotEx",
                    "CreateSnapshot_Task",
                    "CreateSnapshotEx_Task",
                    "CreateSnapshot",
                    "CreateSnapshotEx",
                ],
                &[
                    "VirtualMachine.createSnapshot",
                    "VirtualMachine.createSnapshotEx",
                ],
            ),
            TaskKind::RemoveSnapshot => (
                &[
                    "vim.vm.Snapshot.remove",
                    "RemoveSnapshot_Task",
                    "RemoveSnapshot",
                ],
                &[
                    "VirtualMachineSnapshot.remove",
                    "VirtualMachineSnapshot.removeSnapshot",
                ],
            ),
        };
        name.is_some_and(|n| names.contains(&n)) || description_id.is_some_and(|d| ids.contains(&d))
    }
}

/// `runtime.powerState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PowerState {
    /// `poweredOn`.
    PoweredOn,
    /// `poweredOff`.
    PoweredOff,
    /// `suspended`.
    Suspended,
}

impl PowerState {
    /// Read the wire value.
    pub fn parse(s: &str) -> Option<PowerState> {
        Some(match s {
            "poweredOn" => PowerState::PoweredOn,
            "poweredOff" => PowerState::PoweredOff,
            "suspended" => PowerState::Suspended,
            _ => return None,
        })
    }

    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            PowerState::PoweredOn => "poweredOn",
            PowerState::PoweredOff => "poweredOff",
            PowerState::Suspended => "suspended",
        }
    }
}

impl fmt::Display for PowerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How [`crate::Client::power_off_for_cutover`] stops the source VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum CutoverPowerOff {
    /// Forklift's `PowerOff`: `ShutdownGuest` only. Without VMware Tools (or in a state
    /// the guest cannot be shut down from) the fault is returned and the VM stays on.
    #[default]
    GuestOnly,
    /// `ShutdownGuest`, and a hard `PowerOffVM_Task` when the guest cannot be asked
    /// (`ToolsUnavailable`, `InvalidState`, `InvalidPowerState`, e.g. a suspended VM).
    GuestThenHard,
}

/// What [`crate::Client::power_off_for_cutover`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PowerOffStarted {
    /// The VM was already powered off: nothing was sent.
    AlreadyOff,
    /// `ShutdownGuest` was accepted: the guest is shutting down; wait for `poweredOff`
    /// ([`crate::Client::wait_power_state`]).
    GuestShutdown,
    /// A hard power-off task was started (the guest could not be asked).
    HardPowerOff {
        /// The `PowerOffVM_Task`.
        task: TaskRef,
        /// The `ShutdownGuest` fault that made the fallback necessary.
        guest_fault: String,
    },
}

/// One virtual disk's change ID in a snapshot, as Forklift's `StoreSnapshotDeltas`
/// records it (`Precopy.Deltas`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskChangeId {
    /// The base disk's file ([`base_disk_name`] of the snapshot's backing file, as
    /// Forklift's `trimBackingFileName`), e.g. `[ds1] vm/vm.vmdk`: the name the
    /// DataVolume's `backingFile` has in a warm migration.
    pub backing_file: String,
    /// The file the snapshot's config names, e.g. `[ds1] vm/vm-000002.vmdk`.
    pub snapshot_file: String,
    /// The device key (stable across snapshots).
    pub device_key: i32,
    /// `backing.changeId`; `None` when CBT was off when the snapshot was taken (vcsim
    /// sets none).
    pub change_id: Option<String>,
}

/// Forklift's `trimBackingFileName` (`-\d\d\d\d\d\d.vmdk` → `.vmdk`, every match, the
/// `.` matching any character as in Go's regexp): the base disk of a snapshot delta,
/// `[ds1] vm/disk-000015.vmdk` → `[ds1] vm/disk.vmdk`. Names without a delta suffix are
/// returned as they are.
pub fn base_disk_name(file: &str) -> String {
    let b = file.as_bytes();
    let mut out = String::with_capacity(file.len());
    let mut copied = 0;
    let mut i = 0;
    // `-` + 6 ASCII digits + any one character (not a newline) + `vmdk` = 12 bytes when
    // the wildcard is ASCII; a multi-byte wildcard is one char too.
    while i < b.len() {
        if b[i] == b'-' && i + 7 < b.len() && b[i + 1..i + 7].iter().all(u8::is_ascii_digit) {
            let rest = &file[i + 7..];
            if let Some(c) = rest.chars().next()
                && c != '\n'
                && rest[c.len_utf8()..].starts_with("vmdk")
            {
                out.push_str(&file[copied..i]);
                out.push_str(".vmdk");
                i += 7 + c.len_utf8() + 4;
                copied = i;
                continue;
            }
        }
        i += 1;
        while i < b.len() && !file.is_char_boundary(i) {
            i += 1;
        }
    }
    out.push_str(&file[copied..]);
    out
}

/// The datastore name of a datastore path: `[ds1] vm/vm.vmdk` → `ds1`.
pub fn datastore_of(file: &str) -> Option<&str> {
    let rest = file.strip_prefix('[')?;
    let (name, _) = rest.split_once(']')?;
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_disk_name_is_forkliftss_trim_backing_file_name() {
        for (input, want) in [
            (
                "[datastore13] my-vm/disk-name-000015.vmdk",
                "[datastore13] my-vm/disk-name.vmdk",
            ),
            ("[ds1] vm/vm.vmdk", "[ds1] vm/vm.vmdk"),
            ("[ds1] vm/vm-00001.vmdk", "[ds1] vm/vm-00001.vmdk"),
            ("[ds1] vm/vm-0000012.vmdk", "[ds1] vm/vm-0000012.vmdk"),
            // Go's `.` is any character: `-000001xvmdk` matches too.
            ("[ds1] vm/vm-000001xvmdk", "[ds1] vm/vm.vmdk"),
            ("[ds1] vm/vm-000001é vmdk", "[ds1] vm/vm-000001é vmdk"),
            ("[ds1] vm/vm-000001évmdk", "[ds1] vm/vm.vmdk"),
            // Every match is replaced, as ReplaceAllString does.
            ("[ds] a-000001.vmdk/b-000002.vmdk", "[ds] a.vmdk/b.vmdk"),
            ("-000001.vmdk", ".vmdk"),
            ("", ""),
            ("é-", "é-"),
        ] {
            assert_eq!(base_disk_name(input), want, "{input}");
        }
    }

    #[test]
    fn datastore_names() {
        assert_eq!(datastore_of("[ds1] vm/vm.vmdk"), Some("ds1"));
        assert_eq!(datastore_of("[a b] x"), Some("a b"));
        assert_eq!(datastore_of("[] x"), None);
        assert_eq!(datastore_of("vm.vmdk"), None);
    }

    #[test]
    fn task_kinds_match_vcenter_and_vcsim_names() {
        let c = TaskKind::CreateSnapshot;
        assert!(c.matches(Some("vim.VirtualMachine.createSnapshot"), None));
        assert!(c.matches(
            Some("CreateSnapshot"),
            Some("VirtualMachine.createSnapshot")
        ));
        assert!(c.matches(None, Some("VirtualMachine.createSnapshotEx")));
        assert!(!c.matches(
            Some("vim.VirtualMachine.powerOff"),
            Some("VirtualMachine.powerOff")
        ));
        assert!(!c.matches(None, None));
        let r = TaskKind::RemoveSnapshot;
        assert!(r.matches(Some("vim.vm.Snapshot.remove"), None));
        assert!(r.matches(None, Some("VirtualMachineSnapshot.removeSnapshot")));
        assert!(!r.matches(Some("vim.VirtualMachine.createSnapshot"), None));
        assert_eq!(c.vmodl_name(), "vim.VirtualMachine.createSnapshot");
    }

    #[test]
    fn states_round_trip() {
        for s in ["queued", "running", "success", "error"] {
            assert_eq!(TaskState::parse(s).unwrap().as_str(), s);
        }
        assert_eq!(TaskState::parse("Success"), None);
        for s in ["poweredOn", "poweredOff", "suspended"] {
            assert_eq!(PowerState::parse(s).unwrap().as_str(), s);
        }
        assert_eq!(PowerState::parse("unknown"), None);
    }
}
