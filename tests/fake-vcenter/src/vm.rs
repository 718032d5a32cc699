//! The mutable part of the fake: VMs (power state, disks, snapshot tree, host) and the
//! tasks that change them.
//!
//! Tasks are evaluated lazily: before each call the fake moves every task whose time has
//! come to its end state and applies its effect (a snapshot added or removed, a power
//! state changed), in the order the tasks were created, so no timer runs in the
//! background.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::inventory::{Area, DiskSpec, SnapshotSpec, TaskInfoQuirk, VmSpec};
use crate::xml::esc;

/// A VM as the fake holds it.
#[derive(Debug, Clone)]
pub(crate) struct VmState {
    pub spec: VmSpec,
    /// The current snapshot (`snapshot.currentSnapshot`).
    pub current: Option<String>,
    /// Its tasks, oldest first (`recentTask`).
    pub recent_tasks: Vec<String>,
}

/// Most tasks kept in a VM's `recentTask` (vCenter keeps about as many).
pub(crate) const MAX_RECENT: usize = 200;

/// What a task does when it ends.
#[derive(Debug, Clone)]
pub(crate) enum TaskOp {
    CreateSnapshot {
        name: String,
        description: String,
        quiesce: bool,
    },
    RemoveSnapshot {
        snapshot: String,
        remove_children: bool,
    },
    PowerOn,
    PowerOff,
}

impl TaskOp {
    /// (`info.name`, `info.descriptionId`) as vCenter sets them: the vmodl method name
    /// (what Forklift compares) and the description ID.
    pub fn names(&self) -> (&'static str, &'static str) {
        match self {
            TaskOp::CreateSnapshot { .. } => (
                "vim.VirtualMachine.createSnapshot",
                "VirtualMachine.createSnapshot",
            ),
            TaskOp::RemoveSnapshot { .. } => {
                ("vim.vm.Snapshot.remove", "VirtualMachineSnapshot.remove")
            }
            TaskOp::PowerOn => ("vim.VirtualMachine.powerOn", "VirtualMachine.powerOn"),
            TaskOp::PowerOff => ("vim.VirtualMachine.powerOff", "VirtualMachine.powerOff"),
        }
    }
}

/// How a task ended.
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    /// `success`, with the result moref (type, value), if any.
    Success(Option<(&'static str, String)>),
    /// `error` with (fault type, message, fault body XML).
    Error(String, String, String),
}

/// A task.
#[derive(Debug, Clone)]
pub(crate) struct FakeTask {
    pub moref: String,
    pub vm: String,
    pub vm_name: String,
    pub op: TaskOp,
    pub queued_at: Instant,
    pub queued_wall: SystemTime,
    pub queue: Duration,
    pub run: Duration,
    /// An injected fault: the task ends in `error` with it.
    pub fault: Option<(String, String)>,
    pub outcome: Option<Outcome>,
    pub event_chain: u64,
}

impl FakeTask {
    fn ends_at(&self) -> Instant {
        self.queued_at + self.queue + self.run
    }

    /// True when the task is due to end at `now`.
    pub fn due(&self, now: Instant) -> bool {
        self.outcome.is_none() && now >= self.ends_at()
    }

    /// The `info` value at `now`, as vCenter serializes a `TaskInfo`.
    pub fn info_xml(&self, now: Instant, quirk: Option<TaskInfoQuirk>) -> String {
        let (name, description_id) = self.op.names();
        let started = now >= self.queued_at + self.queue;
        let state = match (&self.outcome, started) {
            (Some(Outcome::Success(_)), _) => "success",
            (Some(Outcome::Error(..)), _) => "error",
            (None, true) => "running",
            (None, false) => "queued",
        };
        let mut s = format!(
            concat!(
                "<val xsi:type=\"TaskInfo\"><key>{m}</key><task type=\"Task\">{m}</task>",
                "<name>{name}</name><descriptionId>{did}</descriptionId>",
                "<entity type=\"VirtualMachine\">{vm}</entity><entityName>{vmn}</entityName>"
            ),
            m = esc(&self.moref),
            name = name,
            did = description_id,
            vm = esc(&self.vm),
            vmn = esc(&self.vm_name),
        );
        match quirk {
            Some(TaskInfoQuirk::MissingState) => {}
            Some(TaskInfoQuirk::UnknownState) => s.push_str("<state>done</state>"),
            _ => s.push_str(&format!("<state>{state}</state>")),
        }
        s.push_str("<cancelled>false</cancelled><cancelable>false</cancelable>");
        match &self.outcome {
            Some(Outcome::Error(fault, message, body)) => s.push_str(&format!(
                "<error><fault xsi:type=\"{}\">{body}</fault><localizedMessage>{}</localizedMessage></error>",
                esc(fault),
                esc(message)
            )),
            Some(Outcome::Success(Some((kind, value)))) => {
                if quirk == Some(TaskInfoQuirk::ResultNotMoref) {
                    s.push_str(&format!(
                        "<result xsi:type=\"xsd:string\">{}</result>",
                        esc(value)
                    ));
                } else {
                    s.push_str(&format!(
                        "<result type=\"{kind}\" xsi:type=\"ManagedObjectReference\">{}</result>",
                        esc(value)
                    ));
                }
            }
            Some(Outcome::Success(None)) => {}
            None if started => {
                let run = self.run.as_millis().max(1);
                let done = now
                    .saturating_duration_since(self.queued_at + self.queue)
                    .as_millis();
                s.push_str(&format!(
                    "<progress>{}</progress>",
                    (done * 100 / run).min(99)
                ));
            }
            None => {}
        }
        s.push_str(
            "<reason xsi:type=\"TaskReasonUser\"><userName>VSPHERE.LOCAL\\fake</userName></reason>",
        );
        s.push_str(&format!(
            "<queueTime>{}</queueTime>",
            timestamp(self.queued_wall)
        ));
        if started {
            s.push_str(&format!(
                "<startTime>{}</startTime>",
                timestamp(self.queued_wall + self.queue)
            ));
        }
        if self.outcome.is_some() {
            s.push_str(&format!(
                "<completeTime>{}</completeTime>",
                timestamp(self.queued_wall + self.queue + self.run)
            ));
        }
        s.push_str(&format!(
            "<eventChainId>{}</eventChainId></val>",
            self.event_chain
        ));
        s
    }
}

/// `2026-01-02T03:04:05.678Z`.
pub(crate) fn timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// The snapshot with this moref, anywhere in the tree.
#[cfg(test)]
fn find_snapshot<'a>(tree: &'a [SnapshotSpec], moref: &str) -> Option<&'a SnapshotSpec> {
    for s in tree {
        if s.moref == moref {
            return Some(s);
        }
        if let Some(f) = find_snapshot(&s.children, moref) {
            return Some(f);
        }
    }
    None
}

fn find_snapshot_mut<'a>(
    tree: &'a mut [SnapshotSpec],
    moref: &str,
) -> Option<&'a mut SnapshotSpec> {
    for s in tree {
        if s.moref == moref {
            return Some(s);
        }
        if let Some(f) = find_snapshot_mut(&mut s.children, moref) {
            return Some(f);
        }
    }
    None
}

/// The parent of `moref` (`None` for a root or an unknown snapshot).
pub(crate) fn parent_of(tree: &[SnapshotSpec], moref: &str) -> Option<String> {
    for s in tree {
        if s.children.iter().any(|c| c.moref == moref) {
            return Some(s.moref.clone());
        }
        if let Some(p) = parent_of(&s.children, moref) {
            return Some(p);
        }
    }
    None
}

/// Remove `moref` from the tree; its children take its place unless `with_children`.
/// Returns the morefs removed (empty when it was not there).
fn remove_from(tree: &mut Vec<SnapshotSpec>, moref: &str, with_children: bool) -> Vec<String> {
    if let Some(i) = tree.iter().position(|s| s.moref == moref) {
        let s = tree.remove(i);
        let mut gone = vec![s.moref.clone()];
        if with_children {
            let mut stack: Vec<&SnapshotSpec> = s.children.iter().collect();
            while let Some(c) = stack.pop() {
                gone.push(c.moref.clone());
                stack.extend(c.children.iter());
            }
        } else {
            for (k, c) in s.children.into_iter().enumerate() {
                tree.insert(i + k, c);
            }
        }
        return gone;
    }
    for s in tree.iter_mut() {
        let gone = remove_from(&mut s.children, moref, with_children);
        if !gone.is_empty() {
            return gone;
        }
    }
    Vec::new()
}

/// The next delta file of a disk: `[ds] vm/vm.vmdk` with deltas up to `-000002` →
/// `[ds] vm/vm-000003.vmdk`.
fn next_delta(d: &DiskSpec) -> String {
    let base = base_name(&d.file_name);
    let n = std::iter::once(&d.file_name)
        .chain(d.parents.iter())
        .filter_map(|f| delta_number(f))
        .max()
        .unwrap_or(0);
    let stem = base.strip_suffix(".vmdk").unwrap_or(&base);
    format!("{stem}-{:06}.vmdk", n + 1)
}

fn delta_number(f: &str) -> Option<u32> {
    let stem = f.strip_suffix(".vmdk")?;
    let (_, n) = stem.rsplit_once('-')?;
    (n.len() == 6 && n.bytes().all(|b| b.is_ascii_digit()))
        .then(|| n.parse().ok())
        .flatten()
}

fn base_name(f: &str) -> String {
    match (f.strip_suffix(".vmdk"), delta_number(f)) {
        (Some(stem), Some(_)) => format!("{}.vmdk", &stem[..stem.len() - 7]),
        _ => f.to_string(),
    }
}

/// A fresh change ID for a disk: the CBT epoch (before `/`) of its last one (or one of
/// the fake's) with a new sequence number.
fn fresh_change_id(d: &DiskSpec, seq: u64) -> String {
    let epoch = d
        .change_id
        .as_deref()
        .and_then(|c| c.rsplit_once('/').map(|(e, _)| e.to_string()))
        .unwrap_or_else(|| {
            let k = d.key.to_be_bytes();
            format!(
                "52 66 61 6b 65 20 63 62-74 20 00 00 {:02x} {:02x} {:02x} {:02x}",
                k[0], k[1], k[2], k[3]
            )
        });
    format!("{epoch}/{seq}")
}

impl VmState {
    /// Take a snapshot: the current disks (with fresh change IDs) become the snapshot's,
    /// the VM goes on in a new delta of each disk, and the snapshot becomes the current
    /// one, a child of the previous current snapshot.
    pub fn take_snapshot(
        &mut self,
        moref: &str,
        name: &str,
        description: &str,
        quiesce: bool,
        seq: &mut u64,
        mut changed: impl FnMut(i32) -> Vec<Area>,
    ) {
        let mut snap_disks = Vec::new();
        for d in &mut self.spec.disks {
            *seq += 1;
            let cid = fresh_change_id(d, *seq);
            snap_disks.push(DiskSpec {
                key: d.key,
                file_name: d.file_name.clone(),
                capacity_bytes: d.capacity_bytes,
                change_id: Some(cid.clone()),
                parents: d.parents.clone(),
                backing: d.backing.clone(),
                previous_change_id: d.change_id.clone(),
                changed_areas: changed(d.key),
                allocated_areas: d.allocated_areas.clone(),
            });
            let delta = next_delta(d);
            d.parents
                .insert(0, std::mem::replace(&mut d.file_name, delta));
            d.change_id = Some(cid);
        }
        let node = SnapshotSpec {
            moref: moref.to_string(),
            name: name.to_string(),
            description: description.to_string(),
            quiesced: quiesce,
            disks: snap_disks,
            children: Vec::new(),
        };
        match self
            .current
            .clone()
            .and_then(|c| find_snapshot_mut(&mut self.spec.snapshots, &c))
        {
            Some(parent) => parent.children.push(node),
            None => self.spec.snapshots.push(node),
        }
        self.current = Some(moref.to_string());
    }

    /// Remove a snapshot; returns the morefs removed (empty: not in the tree).
    pub fn remove_snapshot(&mut self, moref: &str, with_children: bool) -> Vec<String> {
        let parent = parent_of(&self.spec.snapshots, moref);
        let gone = remove_from(&mut self.spec.snapshots, moref, with_children);
        if let Some(c) = &self.current
            && gone.contains(c)
        {
            self.current = parent;
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(file: &str, parents: &[&str], cid: Option<&str>) -> DiskSpec {
        DiskSpec {
            key: 2000,
            file_name: file.into(),
            capacity_bytes: 1 << 20,
            change_id: cid.map(str::to_string),
            parents: parents.iter().map(|p| p.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn deltas_are_numbered_after_the_highest() {
        assert_eq!(
            next_delta(&disk("[ds] a/a.vmdk", &[], None)),
            "[ds] a/a-000001.vmdk"
        );
        assert_eq!(
            next_delta(&disk(
                "[ds] a/a-000002.vmdk",
                &["[ds] a/a-000001.vmdk", "[ds] a/a.vmdk"],
                None
            )),
            "[ds] a/a-000003.vmdk"
        );
        assert_eq!(
            base_name("[ds] a/my-disk-000010.vmdk"),
            "[ds] a/my-disk.vmdk"
        );
        assert_eq!(base_name("[ds] a/my-disk.vmdk"), "[ds] a/my-disk.vmdk");
    }

    #[test]
    fn change_ids_keep_the_epoch() {
        let d = disk("[ds] a/a.vmdk", &[], Some("52 de/81"));
        assert_eq!(fresh_change_id(&d, 90), "52 de/90");
        let d = disk("[ds] a/a.vmdk", &[], None);
        assert!(fresh_change_id(&d, 1).ends_with("00 00 07 d0/1"));
    }

    #[test]
    fn snapshots_chain_and_removal_reparents() {
        let mut vm = VmState {
            spec: VmSpec {
                disks: vec![disk("[ds] a/a.vmdk", &[], Some("e/1"))],
                ..Default::default()
            },
            current: None,
            recent_tasks: Vec::new(),
        };
        let mut seq = 10;
        vm.take_snapshot("snapshot-1", "s1", "", false, &mut seq, |_| Vec::new());
        vm.take_snapshot("snapshot-2", "s2", "", true, &mut seq, |_| Vec::new());
        assert_eq!(vm.spec.disks[0].file_name, "[ds] a/a-000002.vmdk");
        assert_eq!(
            vm.spec.disks[0].parents,
            ["[ds] a/a-000001.vmdk", "[ds] a/a.vmdk"]
        );
        let s2 = find_snapshot(&vm.spec.snapshots, "snapshot-2").unwrap();
        assert_eq!(s2.disks[0].file_name, "[ds] a/a-000001.vmdk");
        assert_eq!(s2.disks[0].change_id.as_deref(), Some("e/12"));
        assert_eq!(s2.disks[0].previous_change_id.as_deref(), Some("e/11"));
        assert_eq!(
            parent_of(&vm.spec.snapshots, "snapshot-2").as_deref(),
            Some("snapshot-1")
        );
        assert_eq!(vm.remove_snapshot("snapshot-1", false), ["snapshot-1"]);
        assert_eq!(vm.spec.snapshots[0].moref, "snapshot-2");
        assert_eq!(vm.current.as_deref(), Some("snapshot-2"));
        assert_eq!(vm.remove_snapshot("snapshot-2", false), ["snapshot-2"]);
        assert_eq!(vm.current, None);
        assert!(vm.remove_snapshot("snapshot-2", false).is_empty());
    }

    #[test]
    fn timestamps() {
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_767_323_045_678);
        assert_eq!(timestamp(t), "2026-01-02T03:04:05.678Z");
    }
}
