//! One disk's rounds: CDI's multi-stage import (`checkpoint-util.go`) kept in a
//! DiskImport's status instead of PVC annotations.
//!
//! - The next round is the first checkpoint whose `current` is not yet copied (a cold
//!   import has one round, recorded as `""`). It is final when it is the last entry and
//!   `finalCheckpoint` is set.
//! - Each round is a new pod (`importer-<pvc>-checkpoint-<current>`), created only
//!   once every other pod of the disk is gone: never two writers on one PVC.
//! - A pod needs a slot on its host (and vCenter) first; [`super::slots`] decides who
//!   gets one, first come first served.
//! - A pod's success is recorded once (by its UID), then the next round starts; with
//!   no next checkpoint a warm disk is `Paused` (holding no slot), a final one
//!   `Succeeded`.
//! - The container restarts in place (`restartPolicy: OnFailure`); more than the budget
//!   of restarts with no progress in between, or an exit whose kind a restart cannot
//!   mend, fails the disk at once.

use std::time::Duration;

use ferry_contract::exit::ErrorKind;
use ferry_contract::termination::TerminationMessage;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::observe::{PodPhase, PodView, Scrape};
use crate::crd::{Checkpoint, DiskImportSpec, DiskImportStatus, DiskPhase, VddkStatus};
use crate::names;

/// Restarts without progress before a disk fails (Forklift's IMPORTER_RETRY).
pub const DEFAULT_RESTART_BUDGET: u32 = 3;
/// Largest restart budget a spec may ask for.
pub const MAX_RESTART_BUDGET: u32 = 100;
/// How soon to look again while a pod runs or goes away (CDI requeues every 2 s).
pub const POLL: Duration = Duration::from_secs(2);
/// How soon a disk waiting for a slot looks again (slot releases also wake it).
pub const SLOT_POLL: Duration = Duration::from_secs(10);
/// At most one progress-only status write per disk this often.
pub const PROGRESS_WRITE_INTERVAL: Duration = Duration::from_secs(5);
/// The round key of a cold (single, full) copy in `checkpointsCopied`.
pub const COLD_ROUND: &str = "";

/// One round of a disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Round {
    /// 1 for the first.
    pub index: u32,
    /// The checkpoint, `None` for a cold copy.
    pub checkpoint: Option<Checkpoint>,
    /// The final round (cold copies are final).
    pub last: bool,
}

impl Round {
    /// What `checkpointsCopied` records for it.
    pub fn key(&self) -> &str {
        self.checkpoint
            .as_ref()
            .map_or(COLD_ROUND, |c| c.current.as_str())
    }

    /// Its pod's name.
    pub fn pod_name(&self, pvc: &str) -> String {
        names::pod_name(pvc, self.checkpoint.as_ref().map(|c| c.current.as_str()))
    }

    /// A full copy (cold, or a warm disk's first round).
    pub fn is_full(&self) -> bool {
        self.checkpoint
            .as_ref()
            .is_none_or(|c| c.previous.is_empty())
    }
}

/// What is next for a disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Copy this round.
    Copy(Round),
    /// Every checkpoint given is copied, and none was final: wait for more.
    AwaitCheckpoint,
    /// The final (or only) round is copied.
    Done,
}

/// CDI's `GetNextCheckpoint`, over `checkpointsCopied`.
pub fn next_round(spec: &DiskImportSpec, status: &DiskImportStatus) -> Next {
    let copied = |k: &str| status.checkpoints_copied.iter().any(|c| c == k);
    if spec.checkpoints.is_empty() {
        return if copied(COLD_ROUND) {
            Next::Done
        } else {
            Next::Copy(Round {
                index: 1,
                checkpoint: None,
                last: true,
            })
        };
    }
    let n = spec.checkpoints.len();
    for (i, c) in spec.checkpoints.iter().enumerate() {
        if !copied(&c.current) {
            return Next::Copy(Round {
                index: u32::try_from(i + 1).unwrap_or(u32::MAX),
                checkpoint: Some(c.clone()),
                last: spec.final_checkpoint && i + 1 == n,
            });
        }
    }
    if spec.final_checkpoint {
        Next::Done
    } else {
        Next::AwaitCheckpoint
    }
}

/// Whether this disk may take slots now (from [`super::slots::admit`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// It may.
    Admitted,
    /// Not yet: this says why (`host esx1: 10 of 10 in use`).
    Refused(String),
}

/// Everything one decision about a disk needs.
#[derive(Debug, Clone)]
pub struct DiskInput<'a> {
    /// Its spec.
    pub spec: &'a DiskImportSpec,
    /// Its status as last written.
    pub status: &'a DiskImportStatus,
    /// Its pods.
    pub pods: &'a [PodView],
    /// Whether its PVC exists.
    pub pvc_exists: bool,
    /// Whether it may take a slot (asked only when it needs one).
    pub admission: Admission,
    /// Progress scraped from the current round's pod.
    pub scrape: Option<Scrape>,
    /// Now.
    pub now: Timestamp,
}

/// Something to do about a disk, in order; the reconciler stops at the first that
/// fails and plans again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskAction {
    /// Create the PVC.
    CreatePvc,
    /// Take the disk's slots (its host's, and its vCenter's); a refusal (another
    /// controller took the last) stops here.
    AcquireSlots,
    /// Create the pod of this round.
    CreatePod(Round),
    /// Delete a pod (gracefully: SIGTERM lets `ferry import` close VDDK and end).
    DeletePod(String),
    /// Give the slots back.
    ReleaseSlots,
    /// Record an event on the DiskImport.
    Event {
        /// `Normal` or `Warning`.
        warning: bool,
        /// CamelCase reason.
        reason: &'static str,
        /// One line.
        note: String,
    },
}

/// A decision: the status to write, what to do, when to look again.
#[derive(Debug, Clone, PartialEq)]
pub struct DiskDecision {
    /// The new status.
    pub status: DiskImportStatus,
    /// In order.
    pub actions: Vec<DiskAction>,
    /// Look again after this long (`None`: only on a change).
    pub requeue: Option<Duration>,
}

fn time(t: Timestamp) -> Time {
    Time(t)
}

/// The digest `ferry import` ends its success message with (`Import Complete; digest
/// blake3-64k:…`, or `; verified blake3-64k:…`), and whether it was verified.
fn digest_of(message: &str) -> (Option<String>, bool) {
    let Some((_, tail)) = message.split_once("; ") else {
        return (None, false);
    };
    let (word, digest) = tail.split_once(' ').unwrap_or(("", ""));
    let ok = digest.starts_with("blake3-64k:")
        && digest.len() == "blake3-64k:".len() + 64
        && digest["blake3-64k:".len()..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit());
    match word {
        "digest" if ok => (Some(digest.to_string()), false),
        "verified" if ok => (Some(digest.to_string()), true),
        _ => (None, false),
    }
}

fn restart_budget(spec: &DiskImportSpec) -> u32 {
    spec.pod
        .importer
        .restart_budget
        .unwrap_or(DEFAULT_RESTART_BUDGET)
        .min(MAX_RESTART_BUDGET)
}

/// `NN.N%` of done over total (empty while the total is unknown).
pub fn percent(done: u64, total: u64) -> String {
    if total == 0 {
        return String::new();
    }
    // Display only: f64 is exact enough for a percentage with one decimal.
    #[allow(clippy::cast_precision_loss)]
    let p = (done.min(total) as f64) * 100.0 / (total as f64);
    format!("{p:.1}%")
}

struct Plan<'a> {
    input: &'a DiskInput<'a>,
    status: DiskImportStatus,
    actions: Vec<DiskAction>,
}

impl Plan<'_> {
    fn event(&mut self, warning: bool, reason: &'static str, note: String) {
        self.actions.push(DiskAction::Event {
            warning,
            reason,
            note,
        });
    }

    fn release(&mut self) {
        if !self.status.slots.is_empty() {
            self.actions.push(DiskAction::ReleaseSlots);
            self.status.slots.clear();
        }
    }

    /// Delete every pod that is still there (those already going are waited for), but
    /// keep finished pods when `keep_finished`. Returns whether any pod still exists
    /// that is or may be writing.
    fn clear_pods(&mut self, keep: Option<&str>, keep_finished: bool) -> bool {
        let mut busy = false;
        for p in self.input.pods {
            if Some(p.name.as_str()) == keep {
                continue;
            }
            if p.deleting {
                busy = true;
            } else if p.is_finished() {
                if !keep_finished {
                    self.actions.push(DiskAction::DeletePod(p.name.clone()));
                }
            } else {
                busy = true;
                self.actions.push(DiskAction::DeletePod(p.name.clone()));
            }
        }
        busy
    }

    fn fail(&mut self, message: String) -> Option<Duration> {
        self.status.phase = DiskPhase::Failed;
        self.event(true, "ImportFailed", message.clone());
        self.status.message = message;
        self.release();
        let busy = self.clear_pods(None, true);
        busy.then_some(POLL)
    }

    fn finish(self, requeue: Option<Duration>) -> DiskDecision {
        DiskDecision {
            status: self.status,
            actions: self.actions,
            requeue,
        }
    }
}

/// Decide what to do about one disk.
pub fn plan_disk(input: &DiskInput<'_>) -> DiskDecision {
    let mut plan = Plan {
        input,
        status: input.status.clone(),
        actions: Vec::new(),
    };
    let spec = input.spec;
    let retain = spec.pod.importer.retain_pods;

    if spec.cancel {
        if plan.status.phase != DiskPhase::Canceled {
            plan.event(false, "ImportCanceled", "the import was canceled".into());
        }
        plan.status.phase = DiskPhase::Canceled;
        plan.status.message = "canceled".into();
        plan.release();
        let busy = plan.clear_pods(None, false);
        return plan.finish(busy.then_some(POLL));
    }
    if plan.status.phase == DiskPhase::Failed {
        plan.release();
        let busy = plan.clear_pods(None, true);
        return plan.finish(busy.then_some(POLL));
    }

    let round = match next_round(spec, &plan.status) {
        Next::Done => {
            if plan.status.phase != DiskPhase::Succeeded {
                plan.event(
                    false,
                    "ImportSucceeded",
                    format!("{} rounds copied", plan.status.round.max(1)),
                );
            }
            plan.status.phase = DiskPhase::Succeeded;
            plan.status.message.clear();
            plan.status.pod_name = None;
            plan.release();
            let busy = plan.clear_pods(None, retain);
            return plan.finish(busy.then_some(POLL));
        }
        Next::AwaitCheckpoint => {
            let copied_any = !plan.status.checkpoints_copied.is_empty();
            if copied_any && plan.status.phase != DiskPhase::Paused {
                plan.event(
                    false,
                    "ImportPaused",
                    format!(
                        "round {} copied; waiting for the next checkpoint",
                        plan.status.round
                    ),
                );
            }
            plan.status.phase = if copied_any {
                DiskPhase::Paused
            } else {
                DiskPhase::Pending
            };
            plan.status.message = "waiting for a checkpoint".into();
            plan.status.pod_name = None;
            plan.release();
            let busy = plan.clear_pods(None, retain);
            return plan.finish(busy.then_some(POLL));
        }
        Next::Copy(round) => round,
    };

    let pod_name = round.pod_name(&spec.pvc.name);
    // One writer per PVC: every other pod of this disk goes first.
    if plan.clear_pods(Some(&pod_name), retain) {
        plan.status.message =
            "waiting for the previous round's pod to end (one writer per volume)".into();
        return plan.finish(Some(POLL));
    }
    if !input.pvc_exists {
        if spec.pvc.storage_class.is_some()
            || spec.pvc.size.is_some()
            || spec.pvc.access_mode.is_some()
            || !spec.plan.is_empty()
        {
            plan.actions.push(DiskAction::CreatePvc);
        }
        plan.status.phase = DiskPhase::Pending;
        plan.status.message = format!("waiting for PVC {}", spec.pvc.name);
        return plan.finish(Some(POLL));
    }

    let Some(pod) = input.pods.iter().find(|p| p.name == pod_name) else {
        return start_round(plan, round, pod_name);
    };
    if pod.deleting {
        plan.status.message = format!("waiting for pod {pod_name} to go");
        return plan.finish(Some(POLL));
    }
    follow_pod(plan, round, pod)
}

fn start_round(mut plan: Plan<'_>, round: Round, pod_name: String) -> DiskDecision {
    let input = plan.input;
    if plan.status.slots.is_empty() {
        if let Admission::Refused(why) = &input.admission {
            if plan.status.phase != DiskPhase::Waiting {
                plan.event(false, "WaitingForSlot", why.clone());
            }
            plan.status.phase = DiskPhase::Waiting;
            plan.status.message = why.clone();
            plan.status.queued_at.get_or_insert(time(input.now));
            return plan.finish(Some(SLOT_POLL));
        }
        plan.actions.push(DiskAction::AcquireSlots);
    }
    let fresh_round = plan.status.pod_name.as_deref() != Some(pod_name.as_str());
    if fresh_round {
        plan.status.round = round.index;
        plan.status.restarts = 0;
        plan.status.restarts_at_progress = 0;
        plan.status.pods_failed = 0;
        plan.status.bytes_done = 0;
        plan.status.bytes_total = if round.is_full() {
            input.spec.capacity
        } else {
            0
        };
        plan.status.progress = percent(0, plan.status.bytes_total);
        plan.event(
            false,
            "RoundStarted",
            format!(
                "round {}{} started ({})",
                round.index,
                if round.last { ", the final one," } else { "" },
                if round.is_full() {
                    "full copy"
                } else {
                    "changed blocks"
                }
            ),
        );
    }
    plan.status.phase = DiskPhase::Scheduled;
    plan.status.pod_name = Some(pod_name);
    plan.status.queued_at = None;
    plan.status.message.clear();
    plan.actions.push(DiskAction::CreatePod(round));
    plan.finish(Some(POLL))
}

fn follow_pod(mut plan: Plan<'_>, round: Round, pod: &PodView) -> DiskDecision {
    let input = plan.input;
    let spec = input.spec;
    plan.status.pod_name = Some(pod.name.clone());
    plan.status.restarts = pod.restarts;

    if let Some(s) = input.scrape
        && s.size > 0
    {
        if s.covered > plan.status.bytes_done || s.size != plan.status.bytes_total {
            if s.covered > plan.status.bytes_done {
                plan.status.restarts_at_progress = pod.restarts;
                plan.status.pods_failed = 0;
            }
            plan.status.bytes_done = s.covered;
            plan.status.bytes_total = s.size;
        }
        plan.status.progress = percent(plan.status.bytes_done, plan.status.bytes_total);
    }

    let succeeded =
        pod.phase == PodPhase::Succeeded || pod.exit.as_ref().is_some_and(|e| e.code == 0);
    if succeeded {
        let key = round.key().to_string();
        if !plan.status.copied_by.iter().any(|u| u == &pod.uid) {
            plan.status.copied_by.push(pod.uid.clone());
            if !plan.status.checkpoints_copied.contains(&key) {
                plan.status.checkpoints_copied.push(key);
            }
            if let Some(m) = pod
                .exit
                .as_ref()
                .and_then(|e| TerminationMessage::parse(&e.message).ok())
            {
                let (digest, verified) = digest_of(&m.message);
                plan.status.digest = digest;
                plan.status.verified = verified;
                if let Some(v) = m.vddk_info {
                    plan.status.vddk = Some(VddkStatus {
                        version: v.version,
                        host: v.host,
                    });
                }
            }
            plan.status.bytes_done = plan.status.bytes_total;
            plan.status.progress = percent(plan.status.bytes_done, plan.status.bytes_total);
            plan.event(
                false,
                "RoundCompleted",
                format!("round {} copied by pod {}", round.index, pod.name),
            );
        }
        plan.release();
        if !spec.pod.importer.retain_pods {
            plan.actions.push(DiskAction::DeletePod(pod.name.clone()));
        }
        plan.status.message.clear();
        return plan.finish(Some(Duration::ZERO));
    }

    if let Some(exit) = pod.latest_failure() {
        let kind = ErrorKind::from_exit_code(i64::from(exit.code));
        if let Some(kind) = kind.filter(|k| !k.is_transient()) {
            let message = format!("{kind}: {}", one_line(&exit.message, exit.code));
            let r = plan.fail(message);
            return plan.finish(r);
        }
    }
    if pod.phase == PodPhase::Failed {
        // Evicted, or ended for good: a new pod resumes from the journal.
        let message = pod.latest_failure().map_or_else(
            || "the pod failed".to_string(),
            |e| one_line(&e.message, e.code),
        );
        let spent = pod
            .restarts
            .saturating_sub(plan.status.restarts_at_progress)
            + plan.status.pods_failed
            + 1;
        if spent > restart_budget(spec) {
            let r = plan.fail(format!("restart budget exhausted: {message}"));
            return plan.finish(r);
        }
        plan.event(
            true,
            "PodFailed",
            format!("pod {} failed ({message}); starting a new one", pod.name),
        );
        plan.actions.push(DiskAction::DeletePod(pod.name.clone()));
        // The new pod counts its restarts from 0: carry what this one spent.
        plan.status.pods_failed = spent;
        plan.status.restarts_at_progress = 0;
        return plan.finish(Some(POLL));
    }
    let spent = pod
        .restarts
        .saturating_sub(plan.status.restarts_at_progress)
        + plan.status.pods_failed;
    if spent > restart_budget(spec) {
        let message = pod.latest_failure().map_or_else(
            || "no reason given".to_string(),
            |e| one_line(&e.message, e.code),
        );
        let r = plan.fail(format!(
            "restart budget exhausted ({spent} restarts without progress, budget {}): {message}",
            restart_budget(spec)
        ));
        return plan.finish(r);
    }
    if pod.restarts > input.status.restarts {
        let message = pod
            .latest_failure()
            .map_or_else(String::new, |e| one_line(&e.message, e.code));
        plan.event(
            true,
            "ImporterRestarted",
            format!("restart {} of pod {}: {message}", pod.restarts, pod.name),
        );
    }
    match pod.waiting_reason.as_deref() {
        Some(r @ ("ImagePullBackOff" | "ErrImagePull" | "InvalidImageName")) => {
            plan.status.message = format!("ImagePullFailed: {r}");
        }
        Some(r) => plan.status.message = r.to_string(),
        None => plan.status.message.clear(),
    }
    plan.status.phase = if pod.running {
        DiskPhase::Running
    } else {
        DiskPhase::Scheduled
    };
    plan.finish(Some(POLL))
}

/// A failure message on one line, with the exit status when there is no message.
fn one_line(message: &str, code: i32) -> String {
    let m = ferry_contract::termination::failure_line(message);
    if m.is_empty() {
        format!("exit status {code}")
    } else {
        m
    }
}

/// Whether a new status is worth writing now: anything but progress at once; progress
/// alone at most every [`PROGRESS_WRITE_INTERVAL`]. Returns the status to write (with
/// `progressUpdatedAt` stamped) or `None`.
pub fn status_to_write(
    old: &DiskImportStatus,
    new: &DiskImportStatus,
    now: Timestamp,
) -> Option<DiskImportStatus> {
    if old == new {
        return None;
    }
    let mut without_progress = new.clone();
    without_progress.bytes_done = old.bytes_done;
    without_progress.bytes_total = old.bytes_total;
    without_progress.progress = old.progress.clone();
    without_progress.restarts_at_progress = old.restarts_at_progress;
    without_progress.progress_updated_at = old.progress_updated_at.clone();
    let only_progress = &without_progress == old;
    let due = old
        .progress_updated_at
        .as_ref()
        .is_none_or(|t| now.duration_since(t.0).unsigned_abs() >= PROGRESS_WRITE_INTERVAL);
    if only_progress && !due {
        return None;
    }
    let mut out = new.clone();
    if out.progress != old.progress || out.bytes_done != old.bytes_done {
        out.progress_updated_at = Some(time(now));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::super::observe::Exit;
    use super::*;
    use crate::crd::PvcTarget;

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    #[test]
    fn the_digest_is_read_from_the_success_message() {
        let d = format!("blake3-64k:{}", "ab".repeat(32));
        assert_eq!(digest_of("Import Complete"), (None, false));
        assert_eq!(
            digest_of(&format!("Import Complete; digest {d}")),
            (Some(d.clone()), false)
        );
        assert_eq!(
            digest_of(&format!("Import Complete; verified {d}")),
            (Some(d.clone()), true)
        );
        assert_eq!(
            digest_of("Import Complete; verified blake3-64k:zz"),
            (None, false)
        );
        assert_eq!(
            digest_of(&format!("Import Complete; guessed {d}")),
            (None, false)
        );
    }

    fn spec(checkpoints: &[(&str, &str)], last: bool) -> DiskImportSpec {
        DiskImportSpec {
            plan: "p".into(),
            source_key: "esx1".into(),
            pvc: PvcTarget {
                name: "vm1-disk-0".into(),
                ..Default::default()
            },
            capacity: 1 << 30,
            checkpoints: checkpoints
                .iter()
                .map(|(p, c)| Checkpoint {
                    previous: (*p).into(),
                    current: (*c).into(),
                })
                .collect(),
            final_checkpoint: last,
            ..Default::default()
        }
    }

    fn pod(name: &str, phase: PodPhase) -> PodView {
        PodView {
            name: name.into(),
            uid: format!("uid-{name}"),
            phase,
            deleting: false,
            restarts: 0,
            running: phase == PodPhase::Running,
            waiting_reason: None,
            exit: (phase == PodPhase::Succeeded).then(|| Exit {
                code: 0,
                reason: "Completed".into(),
                message: r#"{"scratchSpaceRequired":false,"preallocationApplied":false,"vddkInfo":{"Version":"8.0.3","Host":"esx1"},"message":"Import Complete"}"#.into(),
            }),
            last_exit: None,
            ip: Some("10.0.0.7".into()),
        }
    }

    fn run(spec: &DiskImportSpec, status: &DiskImportStatus, pods: &[PodView]) -> DiskDecision {
        plan_disk(&DiskInput {
            spec,
            status,
            pods,
            pvc_exists: true,
            admission: Admission::Admitted,
            scrape: None,
            now: now(),
        })
    }

    fn kinds(d: &DiskDecision) -> Vec<String> {
        d.actions
            .iter()
            .filter(|a| !matches!(a, DiskAction::Event { .. }))
            .map(|a| match a {
                DiskAction::CreatePod(r) => format!("create {}", r.pod_name("vm1-disk-0")),
                DiskAction::DeletePod(n) => format!("delete {n}"),
                other => format!("{other:?}"),
            })
            .collect()
    }

    fn events(d: &DiskDecision) -> Vec<&'static str> {
        d.actions
            .iter()
            .filter_map(|a| match a {
                DiskAction::Event { reason, .. } => Some(*reason),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_cold_disk_takes_a_slot_creates_one_pod_and_succeeds_once() {
        let s = spec(&[], false);
        let d = run(&s, &DiskImportStatus::default(), &[]);
        assert_eq!(kinds(&d), ["AcquireSlots", "create importer-vm1-disk-0"]);
        assert_eq!(d.status.phase, DiskPhase::Scheduled);
        assert_eq!((d.status.round, d.status.bytes_total), (1, 1 << 30));
        assert_eq!(events(&d), ["RoundStarted"]);

        let mut st = d.status.clone();
        st.slots = vec!["ferry-slot-host-esx1-0".into()];
        let running = run(&s, &st, &[pod("importer-vm1-disk-0", PodPhase::Running)]);
        assert_eq!(running.status.phase, DiskPhase::Running);
        assert!(kinds(&running).is_empty());

        let done = run(
            &s,
            &running.status,
            &[pod("importer-vm1-disk-0", PodPhase::Succeeded)],
        );
        assert_eq!(kinds(&done), ["ReleaseSlots", "delete importer-vm1-disk-0"]);
        assert_eq!(done.status.checkpoints_copied, [COLD_ROUND]);
        assert_eq!(
            done.status.vddk,
            Some(VddkStatus {
                version: "8.0.3".into(),
                host: "esx1".into()
            })
        );
        assert_eq!(done.requeue, Some(Duration::ZERO));
        // The same pod seen again (its deletion not yet observed) is not counted twice.
        let again = run(
            &s,
            &done.status,
            &[pod("importer-vm1-disk-0", PodPhase::Succeeded)],
        );
        assert_eq!(again.status.phase, DiskPhase::Succeeded);
        assert_eq!(again.status.copied_by.len(), 1);
        assert_eq!(events(&again), ["ImportSucceeded"]);
        let idle = run(&s, &again.status, &[]);
        assert!(idle.actions.is_empty() && idle.requeue.is_none());
    }

    #[test]
    fn warm_rounds_pause_between_checkpoints_and_never_overlap() {
        let mut s = spec(&[("", "snapshot-1")], false);
        let mut st = run(&s, &DiskImportStatus::default(), &[]).status;
        st.slots = vec!["slot".into()];
        let p1 = "importer-vm1-disk-0-checkpoint-snapshot-1";
        let d = run(&s, &st, &[pod(p1, PodPhase::Succeeded)]);
        let d = run(&s, &d.status, &[]);
        assert_eq!(d.status.phase, DiskPhase::Paused);
        assert_eq!(events(&d), ["ImportPaused"]);
        assert!(d.status.slots.is_empty());

        // The caller appends a checkpoint: the next round is a delta, total unknown until scraped.
        s.checkpoints.push(Checkpoint {
            previous: "52 aa-bb/1".into(),
            current: "snapshot-2".into(),
        });
        let d2 = run(&s, &d.status, &[]);
        assert_eq!(
            kinds(&d2),
            [
                "AcquireSlots",
                "create importer-vm1-disk-0-checkpoint-snapshot-2"
            ]
        );
        assert_eq!((d2.status.round, d2.status.bytes_total), (2, 0));

        // A previous round's pod still running (its deletion not yet seen) blocks the next one.
        let mut old = pod(p1, PodPhase::Running);
        let blocked = run(&s, &d.status, std::slice::from_ref(&old));
        assert_eq!(kinds(&blocked), [format!("delete {p1}")]);
        old.deleting = true;
        let blocked = run(&s, &d.status, &[old]);
        assert!(kinds(&blocked).is_empty());
        assert!(blocked.status.message.contains("one writer"));

        // The final checkpoint: success ends the disk.
        s.checkpoints.push(Checkpoint {
            previous: "52 aa-bb/2".into(),
            current: "snapshot-3".into(),
        });
        s.final_checkpoint = true;
        let mut st = d2.status.clone();
        st.checkpoints_copied.push("snapshot-2".into());
        let last = run(&s, &st, &[]);
        assert!(
            matches!(
                &last.actions[..],
                [
                    DiskAction::AcquireSlots,
                    DiskAction::Event { .. },
                    DiskAction::CreatePod(Round {
                        last: true,
                        index: 3,
                        ..
                    })
                ]
            ),
            "{:?}",
            last.actions
        );
    }

    #[test]
    fn a_full_host_makes_the_disk_wait_in_line() {
        let s = spec(&[], false);
        let st = DiskImportStatus::default();
        let d = plan_disk(&DiskInput {
            spec: &s,
            status: &st,
            pods: &[],
            pvc_exists: true,
            admission: Admission::Refused("host:esx1: 4 of 4 disks in flight".into()),
            scrape: None,
            now: now(),
        });
        assert_eq!(d.status.phase, DiskPhase::Waiting);
        assert_eq!(d.status.queued_at, Some(Time(now())));
        assert!(kinds(&d).is_empty());
        assert_eq!(d.requeue, Some(SLOT_POLL));
    }

    #[test]
    fn restarts_without_progress_spend_the_budget_and_progress_resets_it() {
        let s = spec(&[], false);
        let mut st = run(&s, &DiskImportStatus::default(), &[]).status;
        st.slots = vec!["slot".into()];
        let mut p = pod("importer-vm1-disk-0", PodPhase::Running);
        p.restarts = 3;
        p.last_exit = Some(Exit {
            code: 3,
            reason: "Error".into(),
            message: "Unable to process data: connection refused".into(),
        });
        let d = run(&s, &st, std::slice::from_ref(&p));
        assert_eq!(
            d.status.phase,
            DiskPhase::Running,
            "3 restarts is within the budget of 3"
        );
        assert_eq!(events(&d), ["ImporterRestarted"]);

        // Progress at restart 3 moves the baseline: 3 more are allowed.
        let with_progress = plan_disk(&DiskInput {
            spec: &s,
            status: &d.status,
            pods: std::slice::from_ref(&p),
            pvc_exists: true,
            admission: Admission::Admitted,
            scrape: Some(Scrape {
                covered: 1 << 20,
                size: 1 << 30,
            }),
            now: now(),
        });
        assert_eq!(with_progress.status.restarts_at_progress, 3);
        assert_eq!(with_progress.status.progress, "0.1%");
        p.restarts = 6;
        assert_eq!(
            run(&s, &with_progress.status, std::slice::from_ref(&p))
                .status
                .phase,
            DiskPhase::Running
        );
        p.restarts = 7;
        let failed = run(&s, &with_progress.status, std::slice::from_ref(&p));
        assert_eq!(failed.status.phase, DiskPhase::Failed);
        assert!(failed.status.message.starts_with("restart budget exhausted (4 restarts without progress, budget 3): Unable to process data: connection refused"), "{}", failed.status.message);
        assert_eq!(
            kinds(&failed),
            ["ReleaseSlots", "delete importer-vm1-disk-0"]
        );
    }

    #[test]
    fn a_fatal_exit_kind_fails_at_once_and_a_transient_one_restarts() {
        let s = spec(&[], false);
        let mut st = run(&s, &DiskImportStatus::default(), &[]).status;
        st.slots = vec!["slot".into()];
        let mut p = pod("importer-vm1-disk-0", PodPhase::Running);
        p.restarts = 1;
        p.last_exit = Some(Exit {
            code: 4,
            reason: "Error".into(),
            message: "Unable to process data: login refused".into(),
        });
        let d = run(&s, &st, std::slice::from_ref(&p));
        assert_eq!(d.status.phase, DiskPhase::Failed);
        assert_eq!(
            d.status.message,
            "authentication: Unable to process data: login refused"
        );
        p.last_exit = Some(Exit {
            code: 3,
            reason: "Error".into(),
            message: String::new(),
        });
        assert_eq!(run(&s, &st, &[p]).status.phase, DiskPhase::Running);
    }

    #[test]
    fn an_evicted_pod_is_replaced_and_counts_against_the_budget() {
        let s = spec(&[], false);
        let mut st = run(&s, &DiskImportStatus::default(), &[]).status;
        st.slots = vec!["slot".into()];
        let mut p = pod("importer-vm1-disk-0", PodPhase::Failed);
        p.restarts = 2;
        let d = run(&s, &st, std::slice::from_ref(&p));
        assert_eq!(kinds(&d), ["delete importer-vm1-disk-0"]);
        assert_eq!(d.status.pods_failed, 3);
        let again = run(&s, &d.status, &[]);
        assert_eq!(
            kinds(&again),
            ["create importer-vm1-disk-0"],
            "slots are still held"
        );
        p.restarts = 0;
        let out = run(&s, &again.status, &[p]);
        assert_eq!(out.status.phase, DiskPhase::Failed);
    }

    #[test]
    fn cancel_deletes_running_pods_and_releases_slots() {
        let mut s = spec(&[("", "snapshot-1")], false);
        let mut st = run(&s, &DiskImportStatus::default(), &[]).status;
        st.slots = vec!["slot".into()];
        s.cancel = true;
        let d = run(
            &s,
            &st,
            &[pod(
                "importer-vm1-disk-0-checkpoint-snapshot-1",
                PodPhase::Running,
            )],
        );
        assert_eq!(d.status.phase, DiskPhase::Canceled);
        assert_eq!(
            kinds(&d),
            [
                "ReleaseSlots",
                "delete importer-vm1-disk-0-checkpoint-snapshot-1"
            ]
        );
        assert_eq!(d.requeue, Some(POLL));
        assert_eq!(run(&s, &d.status, &[]).requeue, None);
    }

    #[test]
    fn retained_pods_stay_until_the_disk_is_archived() {
        let mut s = spec(&[], false);
        s.pod.importer.retain_pods = true;
        let mut st = run(&s, &DiskImportStatus::default(), &[]).status;
        st.slots = vec!["slot".into()];
        let done = run(&s, &st, &[pod("importer-vm1-disk-0", PodPhase::Succeeded)]);
        assert_eq!(kinds(&done), ["ReleaseSlots"]);
        let after = run(
            &s,
            &done.status,
            &[pod("importer-vm1-disk-0", PodPhase::Succeeded)],
        );
        assert!(kinds(&after).is_empty());
        s.pod.importer.retain_pods = false;
        let archived = run(
            &s,
            &after.status,
            &[pod("importer-vm1-disk-0", PodPhase::Succeeded)],
        );
        assert_eq!(kinds(&archived), ["delete importer-vm1-disk-0"]);
    }

    #[test]
    fn a_missing_pvc_is_created_then_waited_for() {
        let s = spec(&[], false);
        let d = plan_disk(&DiskInput {
            spec: &s,
            status: &DiskImportStatus::default(),
            pods: &[],
            pvc_exists: false,
            admission: Admission::Admitted,
            scrape: None,
            now: now(),
        });
        assert_eq!(kinds(&d), ["CreatePvc"]);
        assert_eq!(d.status.phase, DiskPhase::Pending);
    }

    #[test]
    fn image_pull_failures_are_reported_not_failed() {
        let s = spec(&[], false);
        let mut st = run(&s, &DiskImportStatus::default(), &[]).status;
        st.slots = vec!["slot".into()];
        let mut p = pod("importer-vm1-disk-0", PodPhase::Pending);
        p.waiting_reason = Some("ImagePullBackOff".into());
        let d = run(&s, &st, &[p]);
        assert_eq!(d.status.phase, DiskPhase::Scheduled);
        assert_eq!(d.status.message, "ImagePullFailed: ImagePullBackOff");
    }

    #[test]
    fn progress_alone_is_written_at_most_every_five_seconds() {
        let old = DiskImportStatus {
            phase: DiskPhase::Running,
            progress_updated_at: Some(Time(now())),
            ..Default::default()
        };
        let mut new = old.clone();
        new.bytes_done = 10;
        new.progress = "1.0%".into();
        assert_eq!(status_to_write(&old, &new, now()), None);
        let later = now()
            .checked_add(jiff::SignedDuration::from_secs(5))
            .unwrap();
        let w = status_to_write(&old, &new, later).unwrap();
        assert_eq!(w.progress_updated_at, Some(Time(later)));
        new.phase = DiskPhase::Failed;
        assert!(
            status_to_write(&old, &new, now()).is_some(),
            "a phase change is written at once"
        );
        assert_eq!(status_to_write(&old, &old, later), None);
    }

    #[test]
    fn next_round_follows_cdis_get_next_checkpoint() {
        let s = spec(&[("", "snapshot-1"), ("c1", "snapshot-2")], true);
        let mut st = DiskImportStatus::default();
        assert!(matches!(
            next_round(&s, &st),
            Next::Copy(Round {
                index: 1,
                last: false,
                ..
            })
        ));
        st.checkpoints_copied.push("snapshot-1".into());
        match next_round(&s, &st) {
            Next::Copy(r) => {
                assert!(r.last && !r.is_full());
                assert_eq!(r.key(), "snapshot-2");
            }
            other => panic!("{other:?}"),
        }
        st.checkpoints_copied.push("snapshot-2".into());
        assert_eq!(next_round(&s, &st), Next::Done);
        assert_eq!(percent(1, 3), "33.3%");
        assert_eq!(percent(5, 0), "");
    }
}
