//! Preflight inspection (`ferry inspect`): what a migration of this source onto this
//! target would meet, found before a byte is written. Each step is a [`Check`] that
//! passed, warned, failed or was skipped (because an earlier one failed); a report with
//! a failed check means the migration would fail, and `ferry inspect` exits non-zero.
//!
//! The disk steps (size, allocation from the extents, a sample read) run on any
//! [`Source`]; the vSphere steps live with the import (`import::run::inspect`), the VDDK
//! distribution's with [`vddk_libdir`].

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::source::Source;
use ferry_contract::exit::ErrorKind;

/// Longest sample read asked for.
pub const MAX_SAMPLE: Duration = Duration::from_secs(60);
/// Most of the disk the allocation step walks before it stops counting (a sparse
/// source answers in few calls; a source without extents in one).
pub const MAX_EXTENT_CALLS: usize = 100_000;
/// Dependencies `ldd` lists that are looked at (beyond, the output is not ours).
const MAX_LDD_LINES: usize = 512;

/// How one step went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Fine.
    Ok,
    /// Works, but an operator should know.
    Warn,
    /// The migration would fail.
    Fail,
    /// Not tried: an earlier step failed, or it does not apply.
    Skipped,
}

/// One step of the inspection.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// Short name (`reachable`, `thumbprint`, `cbt`, …).
    pub name: &'static str,
    /// How it went.
    pub status: Status,
    /// What was found, or why it failed.
    pub detail: String,
    /// A failure's kind (the exit status `ferry inspect` ends with for the first one).
    #[serde(skip)]
    pub kind: Option<ErrorKind>,
}

/// What the inspection found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// The source as described.
    pub source: String,
    /// The steps, in order.
    pub checks: Vec<Check>,
    /// Disk size in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Bytes the extents say hold data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocated: Option<u64>,
    /// `allocated / size`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocation_ratio: Option<f64>,
    /// Sample read rate, bytes per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_bytes_per_second: Option<f64>,
    /// The NFC AIO buffers VDDK would be given (`size_in_64k × count`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nfc_aio: Option<String>,
    /// VDDK library version found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vddk_version: Option<String>,
}

impl Report {
    /// For `source`.
    pub fn new(source: impl Into<String>) -> Report {
        Report {
            source: source.into(),
            ..Report::default()
        }
    }

    /// Add a step that did not fail.
    pub fn push(&mut self, name: &'static str, status: Status, detail: impl Into<String>) {
        self.checks.push(Check {
            name,
            status,
            detail: detail.into(),
            kind: None,
        });
    }

    /// Add a failed step.
    pub fn fail(&mut self, name: &'static str, kind: ErrorKind, detail: impl Into<String>) {
        self.checks.push(Check {
            name,
            status: Status::Fail,
            detail: detail.into(),
            kind: Some(kind),
        });
    }

    /// Add the step that `e` failed, with its kind.
    pub fn fail_with(&mut self, name: &'static str, e: &crate::Error) {
        self.fail(name, e.kind(), e.to_string());
    }

    /// The first failure.
    pub fn first_failure(&self) -> Option<&Check> {
        self.checks.iter().find(|c| c.status == Status::Fail)
    }

    /// Mark the rest of `names` skipped after a failure.
    pub fn skip(&mut self, names: &[&'static str], why: &str) {
        for n in names {
            self.push(n, Status::Skipped, why);
        }
    }

    /// Mark skipped those of `names` that have no step yet.
    pub fn skip_missing(&mut self, names: &[&'static str], why: &str) {
        for n in names {
            if !self.checks.iter().any(|c| c.name == *n) {
                self.push(n, Status::Skipped, why);
            }
        }
    }

    /// Whether a migration would fail.
    pub fn fails(&self) -> bool {
        self.checks.iter().any(|c| c.status == Status::Fail)
    }

    /// The human form: one line a step, then the verdict.
    pub fn text(&self) -> String {
        let mut s = format!("source: {}\n", self.source);
        for c in &self.checks {
            let mark = match c.status {
                Status::Ok => "ok  ",
                Status::Warn => "WARN",
                Status::Fail => "FAIL",
                Status::Skipped => "skip",
            };
            s.push_str(&format!("  {mark} {:<12} {}\n", c.name, c.detail));
        }
        s.push_str(if self.fails() {
            "verdict: a migration would fail (see FAIL above)\n"
        } else {
            "verdict: ready\n"
        });
        s
    }
}

/// Bytes as people read them.
pub fn human(n: u64) -> String {
    scaled(n as f64)
}

fn scaled(mut v: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// The `reachable` step for a source as opened, then the disk steps ([`disk`]) for a
/// random-access one, or `size` for a stream (read once, so not sampled); the source is
/// closed after.
pub async fn input(
    r: &mut Report,
    opened: Result<crate::source::Input, crate::Error>,
    sample: Duration,
    buf_size: usize,
    count: usize,
) {
    match opened {
        Err(e) => r.fail_with("reachable", &e),
        Ok(crate::source::Input::Disk(s)) => {
            r.push("reachable", Status::Ok, s.describe());
            disk(r, &s, sample, buf_size, count).await;
            s.close().await;
        }
        Ok(crate::source::Input::Stream(mut s)) => {
            r.push(
                "reachable",
                Status::Ok,
                format!("{}: a stream, read once in order", s.describe()),
            );
            match s.size() {
                Some(n) => {
                    r.size = Some(n);
                    r.push("size", Status::Ok, format!("{n} bytes ({})", human(n)));
                }
                None => r.push("size", Status::Warn, "known only at the stream's end"),
            }
            s.close().await;
        }
    }
}

/// The disk steps: `size`, `allocation` (the extents over the whole disk), and
/// `read-rate` (reads of `buf_size` with `count` in flight over the data for `sample`).
pub async fn disk(
    r: &mut Report,
    source: &Arc<dyn Source>,
    sample: Duration,
    buf_size: usize,
    count: usize,
) {
    let size = source.size();
    r.size = Some(size);
    r.push(
        "size",
        Status::Ok,
        format!("{size} bytes ({})", human(size)),
    );
    let window = source.extent_window().max(crate::buf::BUF_ALIGN as u64);
    let mut data = Vec::new();
    let mut allocated = 0u64;
    let mut at = 0;
    let mut calls = 0;
    let t0 = Instant::now();
    while at < size && calls < MAX_EXTENT_CALLS {
        let len = window.min(size - at);
        match source.extents(at, len).await {
            Ok(m) => {
                for e in m.iter() {
                    if e.kind == ferry_cbt::ExtentKind::Data {
                        allocated += e.length;
                        if data.len() < 4096 {
                            data.push((e.offset, e.length));
                        }
                    }
                }
            }
            Err(e) => {
                r.fail(
                    "allocation",
                    e.kind(),
                    format!("reading the extents at {at}: {e}"),
                );
                return;
            }
        }
        at += len;
        calls += 1;
    }
    if at < size {
        r.push(
            "allocation",
            Status::Warn,
            format!(
                "stopped after {calls} extent calls at {at} of {size} bytes: {} allocated so far",
                human(allocated)
            ),
        );
    } else {
        let ratio = if size == 0 {
            0.0
        } else {
            allocated as f64 / size as f64
        };
        r.allocated = Some(allocated);
        r.allocation_ratio = Some(ratio);
        r.push(
            "allocation",
            Status::Ok,
            format!(
                "{} of {} hold data ({:.1} %), read in {:.1} s",
                human(allocated),
                human(size),
                100.0 * ratio,
                t0.elapsed().as_secs_f64()
            ),
        );
    }
    match sample_read(source, &data, sample.min(MAX_SAMPLE), buf_size, count).await {
        Ok((0, _)) => r.push("read-rate", Status::Skipped, "no data to read"),
        Ok((bytes, secs)) => {
            let rate = bytes as f64 / secs.max(1e-6);
            r.read_bytes_per_second = Some(rate);
            r.push(
                "read-rate",
                Status::Ok,
                format!("{}/s ({} in {secs:.1} s)", scaled(rate), human(bytes)),
            );
        }
        Err(e) => r.fail("read-rate", e.kind(), format!("a sample read failed: {e}")),
    }
}

/// Read the data ranges in order, `count` reads in flight, until `limit` passes or the
/// ranges end; the bytes read and the seconds taken.
async fn sample_read(
    source: &Arc<dyn Source>,
    data: &[(u64, u64)],
    limit: Duration,
    buf_size: usize,
    count: usize,
) -> Result<(u64, f64), crate::Error> {
    use futures::StreamExt as _;
    let align = source.block_size().max(crate::buf::BUF_ALIGN as u64);
    let piece = (buf_size as u64)
        .min(source.max_read() / align * align)
        .max(align);
    let mut pieces = data.iter().flat_map(|&(off, len)| {
        let end = off + len;
        (0..len.div_ceil(piece)).map(move |i| {
            let o = off + i * piece;
            (o, piece.min(end - o))
        })
    });
    let mut free: Vec<crate::buf::Buf> = (0..count.max(1))
        .map(|_| crate::buf::Buf::new(crate::num::usize_of(piece)))
        .collect();
    let mut in_flight = futures::stream::FuturesUnordered::new();
    let t0 = Instant::now();
    let mut bytes = 0u64;
    loop {
        while t0.elapsed() < limit
            && let Some(mut buf) = free.pop()
        {
            let Some((o, n)) = pieces.next() else {
                free.push(buf);
                break;
            };
            buf.set_len(crate::num::usize_of(n));
            in_flight.push(source.read(o, buf));
        }
        match in_flight.next().await {
            Some(b) => {
                let b = b?;
                bytes += b.len() as u64;
                free.push(b);
            }
            None => break,
        }
    }
    Ok((bytes, t0.elapsed().as_secs_f64()))
}

/// The `target` step for a disk of `size` bytes onto `target`: a block device must hold
/// it; a file's directory must have the room (what a file there already holds counts).
pub fn target_fit(
    r: &mut Report,
    target: &Path,
    size: u64,
    engine: Arc<dyn crate::engine::IoEngine>,
) {
    use std::os::unix::fs::FileTypeExt;
    let is_dev = std::fs::metadata(target).is_ok_and(|m| m.file_type().is_block_device());
    if is_dev {
        match crate::source::LocalSource::open(target, engine) {
            Ok(s) if s.size() >= size => r.push(
                "target",
                Status::Ok,
                format!(
                    "block device {} of {} holds the disk",
                    target.display(),
                    human(s.size())
                ),
            ),
            Ok(s) => r.fail(
                "target",
                ErrorKind::Target,
                format!(
                    "block device {} of {} bytes is smaller than the disk's {size}",
                    target.display(),
                    s.size()
                ),
            ),
            Err(e) => r.fail_with("target", &e),
        }
        return;
    }
    let (dir, file) = if target.is_dir() {
        (target.to_path_buf(), target.join("disk.img"))
    } else {
        let d = target
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        (d.to_path_buf(), target.to_path_buf())
    };
    let held = std::fs::metadata(&file).map_or(0, |m| {
        use std::os::unix::fs::MetadataExt;
        m.blocks() * 512
    });
    match crate::import::run::available_bytes(&dir) {
        Ok(free) if free.saturating_add(held) >= size => r.push(
            "target",
            Status::Ok,
            format!(
                "{} free in {} for a disk of {}",
                human(free + held),
                dir.display(),
                human(size)
            ),
        ),
        Ok(free) => r.fail(
            "target",
            ErrorKind::Target,
            format!(
                "{} has {} bytes free, the disk needs {size}",
                dir.display(),
                free + held
            ),
        ),
        Err(e) => r.fail_with("target", &e),
    }
}

/// The steps for a VDDK distribution at `dir` (as mounted at `/opt/vmware-vix-disklib-distrib`,
/// or an unpacked tarball): the library versions found, symbolic links kept, the
/// library's dependencies resolved by the dynamic loader (with `<dir>/lib64` on the
/// library path, as `ferry import` runs), and the library loading with every symbol
/// Ferry needs. Returns the version found.
pub fn vddk_libdir(r: &mut Report, dir: &Path) -> Option<String> {
    let lib64 = dir.join("lib64");
    let found: Vec<std::path::PathBuf> = vddk_sys::candidates(dir)
        .into_iter()
        .map(|(_, p)| p)
        .filter(|p| p.exists())
        .collect();
    let Some(lib) = found.first().cloned() else {
        r.fail(
            "vddk-library",
            ErrorKind::Usage,
            format!(
                "no libvixDiskLib.so.{{9,8,7,6}} in {} or {} (is this the vmware-vix-disklib-distrib directory?)",
                lib64.display(),
                dir.display()
            ),
        );
        r.skip(&["vddk-links", "vddk-deps", "vddk-load"], "no library");
        return None;
    };
    let versions = library_versions(lib.parent().unwrap_or(dir));
    let version = versions.last().cloned();
    r.push(
        "vddk-library",
        Status::Ok,
        format!(
            "{} (versions: {})",
            lib.display(),
            if versions.is_empty() {
                "-".to_string()
            } else {
                versions.join(", ")
            }
        ),
    );
    r.vddk_version = version.clone();
    // Symbolic links: the distribution links libvixDiskLib.so.N to .so.N.x.y; a copy that
    // followed the links has regular files instead (it works, at twice the size), and a
    // dangling link fails to load.
    let mut dangling = Vec::new();
    let mut links = 0;
    if let Ok(entries) = std::fs::read_dir(lib.parent().unwrap_or(dir)) {
        for e in entries.flatten() {
            let p = e.path();
            if std::fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink()) {
                links += 1;
                if std::fs::metadata(&p).is_err() {
                    dangling.push(p.display().to_string());
                }
            }
        }
    }
    let lib_is_link = std::fs::symlink_metadata(&lib).is_ok_and(|m| m.file_type().is_symlink());
    if !dangling.is_empty() {
        r.fail(
            "vddk-links",
            ErrorKind::Usage,
            format!("dangling symbolic links: {}", dangling.join(", ")),
        );
    } else if !lib_is_link && versions.len() > 1 {
        r.push(
            "vddk-links",
            Status::Warn,
            format!("{} is a regular file beside its versioned names: the symbolic links were not kept (copy with cp -a or tar)", lib.display()),
        );
    } else {
        r.push(
            "vddk-links",
            Status::Ok,
            format!("{links} symbolic links, none dangling"),
        );
    }
    match ldd_missing(&lib, &lib64) {
        Ok(missing) if missing.is_empty() => {
            r.push("vddk-deps", Status::Ok, "every dependency resolves (ldd)")
        }
        Ok(missing) => r.fail(
            "vddk-deps",
            ErrorKind::Usage,
            format!("the dynamic loader cannot find: {}", missing.join(", ")),
        ),
        Err(e) => r.push("vddk-deps", Status::Warn, format!("not checked: {e}")),
    }
    match vddk_sys::Library::load(dir) {
        Ok(_) => r.push(
            "vddk-load",
            Status::Ok,
            "loads, with every symbol Ferry calls",
        ),
        Err(e) => r.fail("vddk-load", ErrorKind::Usage, e.to_string()),
    }
    version
}

/// The versions of libvixDiskLib in `dir` from its file names (`libvixDiskLib.so.8.0.2`
/// → `8.0.2`), sorted.
fn library_versions(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("libvixDiskLib.so.")
                .filter(|s| s.bytes().all(|b| b.is_ascii_digit() || b == b'.') && !s.is_empty())
                .map(str::to_string)
        })
        .collect();
    v.sort_by_key(|s| {
        s.split('.')
            .map(|n| n.parse::<u64>().unwrap_or(0))
            .collect::<Vec<_>>()
    });
    v
}

/// The libraries `ldd` reports "not found" for `lib`, with `lib64` on the library path.
fn ldd_missing(lib: &Path, lib64: &Path) -> Result<Vec<String>, String> {
    let mut path = lib64.as_os_str().to_owned();
    if let Some(old) = std::env::var_os("LD_LIBRARY_PATH") {
        path.push(":");
        path.push(old);
    }
    let out = std::process::Command::new("ldd")
        .arg(lib)
        .env("LD_LIBRARY_PATH", path)
        .output()
        .map_err(|e| format!("cannot run ldd: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() && !text.contains("not found") {
        return Err(format!(
            "ldd {} failed: {}",
            lib.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(text
        .lines()
        .take(MAX_LDD_LINES)
        .filter(|l| l.contains("=> not found"))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_numerically_and_a_failed_step_fails_the_report() {
        let dir = tempfile::tempdir().expect("tempdir");
        for n in [
            "libvixDiskLib.so.8",
            "libvixDiskLib.so.8.0.10",
            "libvixDiskLib.so.8.0.2",
            "libvixDiskLib.so",
        ] {
            std::fs::write(dir.path().join(n), b"").expect("write");
        }
        assert_eq!(library_versions(dir.path()), ["8", "8.0.2", "8.0.10"]);
        let mut r = Report::new("x");
        r.push("a", Status::Ok, "fine");
        r.push("b", Status::Warn, "hm");
        assert!(!r.fails() && r.text().ends_with("verdict: ready\n"));
        r.fail("c", ErrorKind::Target, "no");
        assert!(r.fails() && r.text().contains("FAIL c"));
        assert_eq!(human(3 << 30), "3.0 GiB");
    }
}
