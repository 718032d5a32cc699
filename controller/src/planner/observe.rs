//! What the planner knows of a pod: read off a `Pod` once, so that decisions never
//! touch Kubernetes types, and tests build views directly.

use k8s_openapi::api::core::v1::{ContainerStateTerminated, Pod};

/// The main container's name in every import pod (CDI's).
pub const IMPORTER_CONTAINER: &str = "importer";

/// A pod's phase, as the kubelet reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodPhase {
    /// Not yet running (scheduling, pulling, init containers).
    Pending,
    /// The container runs (or restarts in place).
    Running,
    /// The container exited 0 (`restartPolicy: OnFailure` never restarts it then).
    Succeeded,
    /// Ended for good (evicted, deadline, node lost).
    Failed,
    /// Anything else.
    Unknown,
}

/// How a container ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// Exit status.
    pub code: i32,
    /// `Completed`, `Error`, `OOMKilled`, …
    pub reason: String,
    /// The termination message (or log tail, `FallbackToLogsOnError`).
    pub message: String,
}

impl Exit {
    fn from_k8s(t: &ContainerStateTerminated) -> Exit {
        Exit {
            code: t.exit_code,
            reason: t.reason.clone().unwrap_or_default(),
            message: t.message.clone().unwrap_or_default(),
        }
    }
}

/// One pod, as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
    /// Phase.
    pub phase: PodPhase,
    /// Deletion has begun (`deletionTimestamp` is set): it may still be writing.
    pub deleting: bool,
    /// The importer container's restarts.
    pub restarts: u32,
    /// The container is running now.
    pub running: bool,
    /// Why the container waits (`ImagePullBackOff`, `CrashLoopBackOff`, …).
    pub waiting_reason: Option<String>,
    /// Its current state, when terminated.
    pub exit: Option<Exit>,
    /// Its previous run, when it restarted.
    pub last_exit: Option<Exit>,
    /// Pod IP (for scraping `/metrics`).
    pub ip: Option<String>,
}

impl PodView {
    /// Read a pod.
    pub fn of(pod: &Pod) -> PodView {
        let status = pod.status.as_ref();
        let phase = match status.and_then(|s| s.phase.as_deref()) {
            Some("Pending") | None => PodPhase::Pending,
            Some("Running") => PodPhase::Running,
            Some("Succeeded") => PodPhase::Succeeded,
            Some("Failed") => PodPhase::Failed,
            Some(_) => PodPhase::Unknown,
        };
        let cs = status
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|v| {
                v.iter()
                    .find(|c| c.name == IMPORTER_CONTAINER)
                    .or(v.first())
            });
        let state = cs.and_then(|c| c.state.as_ref());
        PodView {
            name: pod.metadata.name.clone().unwrap_or_default(),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            phase,
            deleting: pod.metadata.deletion_timestamp.is_some(),
            restarts: cs.map_or(0, |c| {
                u32::try_from(c.restart_count.max(0)).unwrap_or(u32::MAX)
            }),
            running: state.is_some_and(|s| s.running.is_some()),
            waiting_reason: state
                .and_then(|s| s.waiting.as_ref())
                .and_then(|w| w.reason.clone()),
            exit: state
                .and_then(|s| s.terminated.as_ref())
                .map(Exit::from_k8s),
            last_exit: cs
                .and_then(|c| c.last_state.as_ref())
                .and_then(|s| s.terminated.as_ref())
                .map(Exit::from_k8s),
            ip: status.and_then(|s| s.pod_ip.clone()),
        }
    }

    /// The pod holds no writer any more: it ended and is not being torn down.
    pub fn is_finished(&self) -> bool {
        matches!(self.phase, PodPhase::Succeeded | PodPhase::Failed) && !self.deleting
    }

    /// The most recent failed run: the current state if it ended non-zero, else the
    /// previous run if that did.
    pub fn latest_failure(&self) -> Option<&Exit> {
        self.exit
            .as_ref()
            .filter(|e| e.code != 0)
            .or(self.last_exit.as_ref().filter(|e| e.code != 0))
    }
}

/// Progress read from a pod's `/metrics` (or its termination message at the end).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scrape {
    /// `ferry_import_covered_bytes_total`.
    pub covered: u64,
    /// `ferry_import_size_bytes`: the disk, or a delta's changed bytes.
    pub size: u64,
}

/// Most bytes of `/metrics` read from one pod.
pub const MAX_METRICS_BYTES: usize = 256 * 1024;

/// Read Ferry's byte counters out of a Prometheus text exposition. A sample line is
/// `name{labels} value` or `name value`; the value is a decimal (possibly `1.5e9`).
/// CDI's percentage alone (another importer image) gives `size` 100 and `covered` the
/// percent.
pub fn parse_metrics(text: &str) -> Option<Scrape> {
    use ferry_contract::metrics::{FERRY_COVERED_BYTES, FERRY_SIZE_BYTES, PROGRESS_SERIES};
    if text.len() > MAX_METRICS_BYTES {
        return None;
    }
    let covered_series = format!("{FERRY_COVERED_BYTES}_total");
    let (mut covered, mut size, mut percent) = (None, None, None);
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let (name, value) = match line.rsplit_once(' ') {
            Some(x) => x,
            None => continue,
        };
        let name = name.split('{').next().unwrap_or(name).trim();
        let value = value
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0);
        let Some(value) = value else { continue };
        // Byte counts up to 2^53 are exact in f64, far beyond any disk.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let n = value as u64;
        if name == covered_series || name == FERRY_COVERED_BYTES {
            covered = Some(n);
        } else if name == FERRY_SIZE_BYTES {
            size = Some(n);
        } else if name == PROGRESS_SERIES {
            percent = Some(n.min(100));
        }
    }
    match (covered, size, percent) {
        (Some(covered), Some(size), _) if size > 0 => Some(Scrape {
            covered: covered.min(size),
            size,
        }),
        (_, _, Some(p)) => Some(Scrape {
            covered: p,
            size: 100,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ferry_counters_are_read_and_cdi_percent_is_the_fallback() {
        let text = "# HELP x\n# TYPE ferry_import_covered_bytes counter\nferry_import_covered_bytes_total 524288\nferry_import_size_bytes 1048576\nkubevirt_cdi_import_progress_total{ownerUID=\"u\"} 50\n";
        assert_eq!(
            parse_metrics(text),
            Some(Scrape {
                covered: 524_288,
                size: 1_048_576
            })
        );
        let cdi = "kubevirt_cdi_import_progress_total{ownerUID=\"u\"} 42\n";
        assert_eq!(
            parse_metrics(cdi),
            Some(Scrape {
                covered: 42,
                size: 100
            })
        );
        assert_eq!(parse_metrics("ferry_import_size_bytes 0\n"), None);
        assert_eq!(
            parse_metrics("garbage\nferry_import_size_bytes NaN\n"),
            None
        );
        assert_eq!(parse_metrics(&"#".repeat(MAX_METRICS_BYTES + 1)), None);
        let float = "ferry_import_covered_bytes_total 2e3\nferry_import_size_bytes 1.0e4\n";
        assert_eq!(
            parse_metrics(float),
            Some(Scrape {
                covered: 2000,
                size: 10_000
            })
        );
    }
}
