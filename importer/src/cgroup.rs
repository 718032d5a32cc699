//! Finding this process's cgroup and reading its limit files, for the memory limit
//! ([`crate::memory`]) and the CPU quota ([`crate::cpu`]).
//!
//! `/proc/self/cgroup` names the process's cgroup per v1 controller (`4:memory:/path`) and
//! in v2's unified hierarchy (`0::/path`). A v1 controller's hierarchy is mounted at
//! `/sys/fs/cgroup/<controller>` (or under its co-mounted name, `cpu,cpuacct`), v2's at
//! `/sys/fs/cgroup`. A limit set on any ancestor binds too, so callers walk from the
//! process's directory up to the hierarchy's root.

use std::path::{Path, PathBuf};

/// Largest cgroup file read (`/proc/self/cgroup`, a limit file).
pub const MAX_CGROUP_FILE_BYTES: u64 = 64 * 1024;
/// Most cgroup directories walked up from the process's own, and most lines of
/// `/proc/self/cgroup` looked at.
pub const MAX_CGROUP_DEPTH: usize = 64;
/// Where the cgroup file systems are mounted.
pub const MOUNT: &str = "/sys/fs/cgroup";

/// A small file's text, or `None` when it cannot be read (capped at
/// [`MAX_CGROUP_FILE_BYTES`]).
pub fn read_small(p: &Path) -> Option<String> {
    use std::io::Read as _;
    let mut s = String::new();
    std::fs::File::open(p)
        .ok()?
        .take(MAX_CGROUP_FILE_BYTES)
        .read_to_string(&mut s)
        .ok()?;
    Some(s)
}

/// This process's `/proc/self/cgroup`.
pub fn proc_self_cgroup() -> Option<String> {
    read_small(Path::new("/proc/self/cgroup"))
}

/// Which hierarchy a [`Place`] is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// A v1 controller's own hierarchy.
    V1,
    /// The unified hierarchy.
    V2,
}

/// The process's cgroup directory for one controller, and its hierarchy's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    /// v1 or v2.
    pub version: Version,
    /// The hierarchy's mount point.
    pub root: PathBuf,
    /// The process's own directory in it (the root inside a cgroup namespace, where the
    /// path `/proc/self/cgroup` names does not exist under the mount).
    pub dir: PathBuf,
}

impl Place {
    /// The directories from the process's own up to the root, inclusive (at most
    /// [`MAX_CGROUP_DEPTH`]).
    pub fn upward(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut d = self.dir.clone();
        for _ in 0..MAX_CGROUP_DEPTH {
            out.push(d.clone());
            if d == self.root || !d.pop() || !d.starts_with(&self.root) {
                break;
            }
        }
        out
    }
}

/// Where the process's cgroup for the v1 `controller` (or, without one, the unified
/// hierarchy's) is, given the text of `/proc/self/cgroup` and the mount point `mount`
/// (normally [`MOUNT`]). A v1 controller that is mounted wins over v2, as the kernel
/// gives a controller to one hierarchy only. Paths that climb out (`..`) are ignored.
pub fn locate(mount: &Path, proc_self_cgroup: &str, controller: &str) -> Option<Place> {
    let mut v1 = None;
    let mut v2 = None;
    for line in proc_self_cgroup.lines().take(MAX_CGROUP_DEPTH) {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let rel = path.trim().trim_start_matches('/');
        if rel.split('/').any(|c| c == "..") {
            continue;
        }
        if id == "0" && controllers.is_empty() {
            v2 = Some(rel.to_string());
        } else if controllers.split(',').any(|c| c == controller) {
            v1 = Some((controllers.to_string(), rel.to_string()));
        }
    }
    if let Some((names, rel)) = v1 {
        let root = [controller, names.as_str()]
            .iter()
            .map(|n| mount.join(n))
            .find(|p| p.is_dir());
        if let Some(root) = root {
            let dir = root.join(&rel);
            let dir = if dir.is_dir() { dir } else { root.clone() };
            return Some(Place {
                version: Version::V1,
                root,
                dir,
            });
        }
    }
    let rel = v2?;
    let dir = mount.join(&rel);
    let dir = if dir.is_dir() {
        dir
    } else {
        mount.to_path_buf()
    };
    Some(Place {
        version: Version::V2,
        root: mount.to_path_buf(),
        dir,
    })
}

/// Smallest CPU limit a child cgroup is made with, in thousandths of a CPU (the kernel's
/// smallest quota is 1 ms per period; 10m of a 100 ms period).
pub const MIN_CPU_LIMIT_MILLIS: u64 = 10;
/// Largest CPU limit, in thousandths of a CPU.
pub const MAX_CPU_LIMIT_MILLIS: u64 = 1_024_000;
/// The CFS period of a child cgroup made here, microseconds (the kernel's default, and
/// what Kubernetes sets).
pub const CHILD_PERIOD_US: u64 = 100_000;

/// Why a child cgroup could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// `/proc/self/cgroup` names no cgroup with the controller.
    #[error("no {0} cgroup for this process in /proc/self/cgroup (is /sys/fs/cgroup mounted?)")]
    NotFound(&'static str),
    /// A file of the cgroup file system could not be written or a directory made.
    #[error(
        "cannot make a child cgroup with a CPU limit ({what} {path}: {source}); run as root on a machine with cgroups, or without --cpu-limit"
    )]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Parse a Kubernetes CPU quantity (`750m`, `0.75`, `2`) into thousandths of a CPU,
/// between [`MIN_CPU_LIMIT_MILLIS`] and [`MAX_CPU_LIMIT_MILLIS`].
pub fn parse_cpu_millis(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let bad = || {
        format!(
            "{s:?} is not a CPU quantity between {MIN_CPU_LIMIT_MILLIS}m and {} (as Kubernetes writes them: 750m, 0.75, 2)",
            MAX_CPU_LIMIT_MILLIS / 1000
        )
    };
    let millis = if let Some(m) = t.strip_suffix('m') {
        if m.is_empty() || m.len() > 8 || !m.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        m.parse::<u64>().map_err(|_| bad())?
    } else {
        let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
        let digits = |x: &str| x.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() && frac.is_empty()
            || whole.len() > 5
            || frac.len() > 3
            || !digits(whole)
            || !digits(frac)
        {
            return Err(bad());
        }
        let w: u64 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| bad())?
        };
        let f: u64 = if frac.is_empty() {
            0
        } else {
            format!("{frac:0<3}").parse().map_err(|_| bad())?
        };
        w * 1000 + f
    };
    if !(MIN_CPU_LIMIT_MILLIS..=MAX_CPU_LIMIT_MILLIS).contains(&millis) {
        return Err(bad());
    }
    Ok(millis)
}

/// CPU time and throttling of a cgroup (`cpu.stat`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CpuStat {
    /// Periods in which the cgroup had runnable threads.
    pub periods: u64,
    /// Of them, periods that ended with the cgroup throttled.
    pub throttled_periods: u64,
    /// Time spent throttled, microseconds.
    pub throttled_us: u64,
}

impl CpuStat {
    /// From the text of `cpu.stat` (v1: `throttled_time` in ns; v2: `throttled_usec`).
    pub fn parse(text: &str) -> CpuStat {
        let mut s = CpuStat::default();
        for line in text.lines().take(MAX_CGROUP_DEPTH) {
            let mut w = line.split_whitespace();
            let (Some(k), Some(v)) = (w.next(), w.next().and_then(|v| v.parse::<u64>().ok()))
            else {
                continue;
            };
            match k {
                "nr_periods" => s.periods = v,
                "nr_throttled" => s.throttled_periods = v,
                "throttled_time" => s.throttled_us = v / 1000,
                "throttled_usec" => s.throttled_us = v,
                _ => {}
            }
        }
        s
    }
}

/// A cgroup made below this process's own with a CPU quota, for measuring a command
/// under a pod's limit (`ferry bench --cpu-limit`); removed on drop (once empty).
#[derive(Debug)]
pub struct CpuLimited {
    dir: PathBuf,
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

impl CpuLimited {
    /// A new child cgroup allowed `millis` thousandths of a CPU (a quota of
    /// `millis × 100` µs per [`CHILD_PERIOD_US`]), in v1's `cpu` hierarchy or v2's.
    pub fn new(millis: u64) -> Result<CpuLimited, CgroupError> {
        let text = proc_self_cgroup().ok_or(CgroupError::NotFound("cpu"))?;
        let place = locate(Path::new(MOUNT), &text, "cpu").ok_or(CgroupError::NotFound("cpu"))?;
        let quota = millis * CHILD_PERIOD_US / 1000;
        // A new name per cgroup (cpu.stat counts from its making): never a leftover's.
        static MADE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = place
            .dir
            .join(format!("ferry-cpu-limit-{}-{n}", std::process::id()));
        if place.version == Version::V2 {
            // A v2 child gets the cpu controller only when its parent hands it down.
            let ctl = place.dir.join("cgroup.subtree_control");
            std::fs::write(&ctl, "+cpu").map_err(io("enabling cpu in", &ctl))?;
        }
        std::fs::create_dir(&dir).map_err(io("making", &dir))?;
        let c = CpuLimited { dir };
        match place.version {
            Version::V1 => {
                let p = c.dir.join("cpu.cfs_period_us");
                std::fs::write(&p, CHILD_PERIOD_US.to_string()).map_err(io("writing", &p))?;
                let q = c.dir.join("cpu.cfs_quota_us");
                std::fs::write(&q, quota.to_string()).map_err(io("writing", &q))?;
            }
            Version::V2 => {
                let m = c.dir.join("cpu.max");
                std::fs::write(&m, format!("{quota} {CHILD_PERIOD_US}"))
                    .map_err(io("writing", &m))?;
            }
        }
        Ok(c)
    }

    /// The cgroup's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cgroup's `cpu.stat` now.
    pub fn stat(&self) -> CpuStat {
        read_small(&self.dir.join("cpu.stat"))
            .map(|t| CpuStat::parse(&t))
            .unwrap_or_default()
    }
}

/// Move the calling process into the cgroup at `dir` (its children are born there).
pub fn enter(dir: &Path) -> Result<(), CgroupError> {
    let procs = dir.join("cgroup.procs");
    std::fs::write(&procs, std::process::id().to_string()).map_err(io("joining", &procs))
}

impl Drop for CpuLimited {
    fn drop(&mut self) {
        // The last process leaves it when it exits; rmdir succeeds once it is empty.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        tracing::warn!(dir = %self.dir.display(), "could not remove the child cgroup");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_co_mounted_v1_controller_and_the_unified_hierarchy_are_found() {
        let d = tempfile::tempdir().unwrap();
        let m = d.path();
        std::fs::create_dir_all(m.join("cpu,cpuacct/kubepods/pod1")).unwrap();
        let proc = "3:cpu,cpuacct:/kubepods/pod1\n0::/\n";
        let p = locate(m, proc, "cpu").unwrap();
        assert_eq!(p.version, Version::V1);
        assert_eq!(p.root, m.join("cpu,cpuacct"));
        assert_eq!(p.dir, m.join("cpu,cpuacct/kubepods/pod1"));
        assert_eq!(
            p.upward(),
            vec![
                m.join("cpu,cpuacct/kubepods/pod1"),
                m.join("cpu,cpuacct/kubepods"),
                m.join("cpu,cpuacct"),
            ]
        );
        // Not mounted as v1 here: the unified hierarchy.
        let p = locate(m, proc, "memory");
        assert_eq!(
            p,
            Some(Place {
                version: Version::V2,
                root: m.to_path_buf(),
                dir: m.to_path_buf()
            })
        );
        assert_eq!(locate(m, "2:cpu:/../../x\n", "cpu"), None);
        assert_eq!(locate(m, "garbage", "cpu"), None);
    }

    #[test]
    fn cpu_quantities_parse_as_kubernetes_writes_them() {
        assert_eq!(parse_cpu_millis("750m"), Ok(750));
        assert_eq!(parse_cpu_millis("0.75"), Ok(750));
        assert_eq!(parse_cpu_millis(".5"), Ok(500));
        assert_eq!(parse_cpu_millis("2"), Ok(2000));
        assert_eq!(parse_cpu_millis("1.5"), Ok(1500));
        for bad in [
            "", "m", "5m", "0", "-1", "1.2345", "1e3", "750M", "2000000", "0x10", " 1 2",
        ] {
            let e = parse_cpu_millis(bad).unwrap_err();
            assert!(e.contains("not a CPU quantity"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn cpu_stat_reads_v1_and_v2() {
        let v1 = "nr_periods 41\nnr_throttled 30\nthrottled_time 1500000000\n";
        let want = CpuStat {
            periods: 41,
            throttled_periods: 30,
            throttled_us: 1_500_000,
        };
        assert_eq!(CpuStat::parse(v1), want);
        let v2 = "usage_usec 9\nuser_usec 5\nsystem_usec 4\nnr_periods 41\nnr_throttled 30\nthrottled_usec 1500000\n";
        assert_eq!(CpuStat::parse(v2), want);
        assert_eq!(
            CpuStat::parse("garbage\n\nnr_periods x"),
            CpuStat::default()
        );
    }
}
