//! Sizing Ferry's threads to the pod's CPU.
//!
//! A pod's CPU limit is a CFS quota: so many microseconds of CPU per period, for all the
//! process's threads together (CDI's importer pods get 750m, 75 ms per 100 ms). More
//! runnable threads than the quota holds spend it early in each period and then stand
//! still, throttled, with the copy's pipeline stalled until the next period. So at start
//! the quota is read (v2 `cpu.max`, `QUOTA PERIOD` or `max PERIOD`; v1
//! `cpu.cfs_quota_us`, -1 for none, over `cpu.cfs_period_us`; the smallest share from the
//! process's cgroup up to the root) with the CPUs the process may run on (its affinity
//! mask, which a cpuset narrows), as Go's automaxprocs and the JVM's container support
//! do, and the async runtime gets as many workers as the quota rounds up to (the JVM's
//! rounding: a 1.5-CPU pod runs 2 workers, each paid for most of the time; automaxprocs
//! rounds down), no more than the CPUs allowed nor [`DEFAULT_WORKERS`], and at least one.
//! `--threads N` (`FERRY_THREADS`) overrides it. The decision is logged.

use std::path::Path;

use crate::cgroup;

/// Workers of the async runtime without a quota: the copy's work is one reader of the
/// source, the completions of the target's writes and the bookkeeping between them; a
/// second worker keeps one busy request from stalling the rest, more only add wake-ups.
pub const DEFAULT_WORKERS: usize = 2;
/// Largest `--threads`.
pub const MAX_THREADS: usize = 256;
/// Longest CFS period the kernel accepts (v1 and v2: one second), in microseconds;
/// anything longer in a file is not a quota.
pub const MAX_PERIOD_US: u64 = 1_000_000;

/// A CPU quota: `quota_us` of CPU time per `period_us`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// CPU time per period, microseconds.
    pub quota_us: u64,
    /// The period, microseconds.
    pub period_us: u64,
}

impl Quota {
    /// In thousandths of a CPU, as Kubernetes writes limits (`750m`).
    pub fn millis(&self) -> u64 {
        self.quota_us.saturating_mul(1000) / self.period_us.max(1)
    }

    /// Whole CPUs, rounded up, at least 1.
    pub fn cpus_ceil(&self) -> usize {
        let c = self.quota_us.div_ceil(self.period_us.max(1)).max(1);
        usize::try_from(c).unwrap_or(usize::MAX)
    }
}

impl std::fmt::Display for Quota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}m", self.millis())
    }
}

/// A period and a quota as read: `None` unless both are positive numbers and the period
/// is one the kernel could have set.
fn quota_of(quota: &str, period: &str) -> Option<Quota> {
    let quota_us = quota.trim().parse::<u64>().ok().filter(|q| *q > 0)?;
    let period_us = period
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|p| (1..=MAX_PERIOD_US).contains(p))?;
    Some(Quota {
        quota_us,
        period_us,
    })
}

/// The quota in one cgroup directory, if one is set there.
fn quota_in(dir: &Path, version: cgroup::Version) -> Option<Quota> {
    match version {
        cgroup::Version::V2 => {
            let text = cgroup::read_small(&dir.join("cpu.max"))?;
            let mut w = text.split_whitespace();
            let (q, p) = (w.next()?, w.next()?);
            // "max PERIOD" is no quota (and fails to parse as a number).
            quota_of(q, p)
        }
        cgroup::Version::V1 => {
            // -1 is no quota (and fails to parse as a u64).
            let q = cgroup::read_small(&dir.join("cpu.cfs_quota_us"))?;
            let p = cgroup::read_small(&dir.join("cpu.cfs_period_us"))?;
            quota_of(&q, &p)
        }
    }
}

/// The CPU quota of the cgroup described by `proc_self_cgroup` (the text of
/// `/proc/self/cgroup`) with the cgroup file systems under `mount`: the smallest share
/// of a CPU set from the process's cgroup up to the root, or `None`.
pub fn quota_from(mount: &Path, proc_self_cgroup: &str) -> Option<Quota> {
    let place = cgroup::locate(mount, proc_self_cgroup, "cpu")?;
    place
        .upward()
        .iter()
        .filter_map(|d| quota_in(d, place.version))
        .min_by(|a, b| {
            // a.quota/a.period < b.quota/b.period, without division.
            (u128::from(a.quota_us) * u128::from(b.period_us))
                .cmp(&(u128::from(b.quota_us) * u128::from(a.period_us)))
        })
}

/// This process's CPU quota, from `/proc/self/cgroup` and `/sys/fs/cgroup`.
pub fn cgroup_cpu_quota() -> Option<Quota> {
    quota_from(Path::new(cgroup::MOUNT), &cgroup::proc_self_cgroup()?)
}

/// The CPUs this process may run on (its affinity mask: a cpuset, `taskset`), or `None`
/// when the mask cannot be read.
pub fn allowed_cpus() -> Option<usize> {
    let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).ok()?;
    let n = (0..nix::sched::CpuSet::count())
        .filter(|&i| set.is_set(i).unwrap_or(false))
        .count();
    (n > 0).then_some(n)
}

/// What sized the runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// `--threads N`.
    Asked,
    /// The CPU quota.
    Quota(Quota),
    /// The CPUs the process may run on.
    Cpuset,
    /// Neither bound: [`DEFAULT_WORKERS`].
    Default,
}

/// How many workers the async runtime gets, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizing {
    /// Worker threads (at least 1).
    pub workers: usize,
    /// What decided it.
    pub reason: Reason,
    /// The quota found, if any (also when `--threads` overrode it).
    pub quota: Option<Quota>,
    /// The CPUs the process may run on, if known.
    pub allowed: Option<usize>,
}

/// Size the runtime: `asked` (`--threads`) wins; otherwise the quota rounded up, no
/// more than the allowed CPUs nor [`DEFAULT_WORKERS`], at least 1.
pub fn size(asked: Option<usize>, quota: Option<Quota>, allowed: Option<usize>) -> Sizing {
    let mut s = Sizing {
        workers: DEFAULT_WORKERS,
        reason: Reason::Default,
        quota,
        allowed,
    };
    if let Some(n) = asked {
        s.workers = n.clamp(1, MAX_THREADS);
        s.reason = Reason::Asked;
        return s;
    }
    if let Some(a) = allowed.filter(|a| *a < s.workers) {
        s.workers = a.max(1);
        s.reason = Reason::Cpuset;
    }
    if let Some(q) = quota.filter(|q| q.cpus_ceil() < s.workers) {
        s.workers = q.cpus_ceil();
        s.reason = Reason::Quota(q);
    }
    s
}

/// Size the runtime for this process (see [`size`]) and log the decision.
pub fn size_for_this_process(asked: Option<usize>) -> Sizing {
    let s = size(asked, cgroup_cpu_quota(), allowed_cpus());
    let quota = s.quota.map(|q| q.to_string());
    let why = match s.reason {
        Reason::Asked => "asked with --threads".to_string(),
        Reason::Quota(q) => format!(
            "the cgroup's CPU quota of {q} ({} µs per {} µs), rounded up",
            q.quota_us, q.period_us
        ),
        Reason::Cpuset => "the CPUs this process may run on".to_string(),
        Reason::Default => {
            format!("the default of {DEFAULT_WORKERS}: no CPU quota or cpuset below it")
        }
    };
    tracing::info!(
        workers = s.workers,
        quota = quota.as_deref().unwrap_or("none"),
        allowed_cpus = s.allowed.unwrap_or(0),
        reason = %why,
        "async runtime sized"
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(quota_us: u64, period_us: u64) -> Quota {
        Quota {
            quota_us,
            period_us,
        }
    }

    #[test]
    fn cdis_default_pod_gets_one_worker_and_threads_overrides() {
        let cdi = q(75_000, 100_000);
        assert_eq!(cdi.to_string(), "750m");
        let s = size(None, Some(cdi), Some(8));
        assert_eq!((s.workers, s.reason), (1, Reason::Quota(cdi)));
        // 1.5 CPUs round up; 4 CPUs are more than the default.
        assert_eq!(size(None, Some(q(150_000, 100_000)), Some(8)).workers, 2);
        let big = size(None, Some(q(400_000, 100_000)), Some(8));
        assert_eq!((big.workers, big.reason), (2, Reason::Default));
        // A cpuset of one CPU; none known; --threads wins over a quota, within its cap.
        assert_eq!(size(None, None, Some(1)).reason, Reason::Cpuset);
        assert_eq!(size(None, None, None).workers, DEFAULT_WORKERS);
        let asked = size(Some(4), Some(cdi), Some(2));
        assert_eq!((asked.workers, asked.reason), (4, Reason::Asked));
        assert_eq!(size(Some(100_000), None, None).workers, MAX_THREADS);
        assert_eq!(size(Some(0), None, None).workers, 1);
        // The smallest quota is still one worker.
        assert_eq!(size(None, Some(q(1_000, 100_000)), None).workers, 1);
    }

    #[test]
    fn quotas_are_read_from_v1_and_v2_taking_the_smallest_share() {
        let d = tempfile::tempdir().unwrap();
        let m = d.path();
        // v1: -1 in the container, 750m on the pod, 2 CPUs on kubepods.
        let ctr = m.join("cpu/kubepods/pod1/ctr");
        std::fs::create_dir_all(&ctr).unwrap();
        for (dir, quota, period) in [
            (m.join("cpu"), "-1", "100000"),
            (m.join("cpu/kubepods"), "200000", "100000"),
            (m.join("cpu/kubepods/pod1"), "75000", "100000"),
            (ctr.clone(), "-1", "100000"),
        ] {
            std::fs::write(dir.join("cpu.cfs_quota_us"), format!("{quota}\n")).unwrap();
            std::fs::write(dir.join("cpu.cfs_period_us"), format!("{period}\n")).unwrap();
        }
        let proc = "4:memory:/kubepods/pod1/ctr\n2:cpu:/kubepods/pod1/ctr\n0::/\n";
        assert_eq!(quota_from(m, proc), Some(q(75_000, 100_000)));
        assert_eq!(quota_from(m, "2:cpu:/\n"), None);
        // v2: "max PERIOD" is none; a parent's 500m over a 50 ms period.
        let d2 = tempfile::tempdir().unwrap();
        let m2 = d2.path();
        let scope = m2.join("kubepods.slice/pod2.slice/cri.scope");
        std::fs::create_dir_all(&scope).unwrap();
        std::fs::write(scope.join("cpu.max"), "max 100000\n").unwrap();
        std::fs::write(
            m2.join("kubepods.slice/pod2.slice/cpu.max"),
            "25000 50000\n",
        )
        .unwrap();
        let p = quota_from(m2, "0::/kubepods.slice/pod2.slice/cri.scope\n").unwrap();
        assert_eq!((p, p.to_string()), (q(25_000, 50_000), "500m".to_string()));
        // Garbage, a zero period, a period past the kernel's limit: no quota.
        for bad in ["", "75000", "x y", "75000 0", "75000 99999999", "0 100000"] {
            std::fs::write(scope.join("cpu.max"), bad).unwrap();
            assert_eq!(quota_in(&scope, cgroup::Version::V2), None, "{bad:?}");
        }
    }

    #[test]
    fn this_process_has_an_affinity_mask() {
        let n = allowed_cpus().expect("sched_getaffinity");
        assert!(n >= 1);
    }
}
