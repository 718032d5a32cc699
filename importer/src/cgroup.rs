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
}
