//! Helpers shared by the `ferry` binary's integration tests.
//!
//! * [`run`] / [`spawn`]: run the binary with a hard time bound and capture its output;
//!   [`Run::success`] and [`Run::failure`] check the exit contract (JSON summary on
//!   success; on failure a single `ferry: error:` line last on stderr, no panic, no JSON).
//! * [`Server`] (the test kit's): nbdkit / qemu-nbd on a Unix socket in a test's tempdir
//!   (or nbdkit on a loopback port), killed on drop; [`fake_nbd`] (the kit's too): the
//!   fault-injecting fake NBD server.
//! * [`Loop`], [`Mount`], [`FuseDisk`]: loop devices, tmpfs mounts and EIO-injecting
//!   block devices, each undone on drop.
//! * Independent checks: [`nbdcopy_reference`], [`assert_identical`] (`cmp` or
//!   `qemu-img compare`), [`assert_prefix_identical`], [`assert_filled`].
//!
//! A test whose tool or privilege is missing prints `SKIP: <reason>` and returns; CI has
//! every tool, so `FERRY_REQUIRE_TOOLS=1` there turns a missing tool into a failure.
#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ferry_test_kit::next_id;

/// The binary under test.
pub const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

/// Both I/O engines; every copy case runs with each.
pub const ENGINES: [&str; 2] = ["uring", "sync"];

/// Default bound on one `ferry` run. Generous: copies here take well under a second.
pub const RUN_LIMIT: Duration = Duration::from_secs(60);

/// How long a FUSE disk may take to come up.
pub const READY_WAIT: Duration = Duration::from_secs(10);

const MIB: u64 = 1024 * 1024;

/// Run `f` once per I/O engine ("uring", then "sync").
pub fn for_each_engine(mut f: impl FnMut(&str)) {
    for engine in ENGINES {
        f(engine);
    }
}

// ---------------------------------------------------------------------------------------
// Skips

#[allow(unused_imports)] // not every test binary uses each
pub use ferry_test_kit::{have, is_root};

/// Print a loud skip for a capability the machine lacks, recorded for
/// `scripts/test.sh`'s count.
pub fn skip(reason: &str) {
    ferry_test_kit::skip_in("ferry", reason);
}

/// False (after a loud skip) when one of `bins` is not installed. With
/// `FERRY_REQUIRE_TOOLS=1` (set by `scripts/test.sh`, which installs them all) a
/// missing tool fails the test instead.
pub fn require(bins: &[&str]) -> bool {
    ferry_test_kit::require_in("ferry", bins)
}

/// False (after a loud skip) unless we are root, on PATH are `bins`, and (when
/// `loop_devices`) the kernel offers loop devices.
pub fn require_root(bins: &[&str], loop_devices: bool) -> bool {
    if !is_root() {
        skip("needs root");
        return false;
    }
    if loop_devices && !ferry_test_kit::have_loop_devices() {
        skip("no loop device support (/dev/loop-control is missing)");
        return false;
    }
    let mut all = vec!["losetup", "mount", "umount"];
    all.extend_from_slice(bins);
    require(&all)
}

// ---------------------------------------------------------------------------------------
// Running ferry

/// A `ferry` command with a clean environment for logging (no FERRY_LOG, no colours).
pub fn ferry(args: &[&str]) -> Command {
    let mut c = Command::new(FERRY);
    c.args(args).env_remove("FERRY_LOG").env("NO_COLOR", "1");
    c
}

/// `ferry copy SRC DST --json --no-progress EXTRA...`.
pub fn copy_cmd(src: &str, dst: &Path, extra: &[&str]) -> Command {
    let mut c = ferry(&["copy", src]);
    c.arg(dst).args(["--json", "--no-progress"]).args(extra);
    c
}

/// `ferry copy ... --io-engine ENGINE`, run to completion within [`RUN_LIMIT`].
pub fn copy(src: &str, dst: &Path, engine: &str, extra: &[&str]) -> Run {
    let mut c = copy_cmd(src, dst, &["--io-engine", engine]);
    c.args(extra);
    run(c, RUN_LIMIT)
}

/// A finished process.
#[derive(Debug)]
pub struct Run {
    /// The command line, for messages.
    pub what: String,
    pub status: ExitStatus,
    pub stdout: String,
    /// stderr with ANSI colour codes removed.
    pub stderr: String,
    pub elapsed: Duration,
}

/// A running process whose output is being collected.
#[derive(Debug)]
pub struct Running {
    what: String,
    child: Option<Child>,
    out: Option<JoinHandle<String>>,
    err: Option<JoinHandle<String>>,
    start: Instant,
}

fn collect(mut r: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    })
}

/// `ferry copy - DST` with `input` on standard input.
pub fn copy_stdin(input: &Path, dst: &Path, engine: &str, extra: &[&str]) -> Run {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(format!(
            "exec \"$0\" copy - \"$1\" --json --no-progress --io-engine {engine} {} < \"$2\"",
            extra.join(" ")
        ))
        .arg(FERRY)
        .arg(dst)
        .arg(input)
        .env_remove("FERRY_LOG")
        .env("NO_COLOR", "1");
    run(c, RUN_LIMIT)
}

/// Start `cmd` with stdout and stderr captured and stdin closed.
pub fn spawn(mut cmd: Command) -> Running {
    let what = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let out = child.stdout.take().map(collect);
    let err = child.stderr.take().map(collect);
    Running {
        what,
        child: Some(child),
        out,
        err,
        start: Instant::now(),
    }
}

/// Run `cmd`; fail the test if it is still running after `limit` (it is killed first).
pub fn run(cmd: Command, limit: Duration) -> Run {
    spawn(cmd).wait(limit)
}

impl Running {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Send a signal by name (TERM, INT, KILL) with kill(1).
    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args(["-s", sig, &self.pid().to_string()])
            .status()
            .expect("run kill(1)");
        assert!(st.success(), "kill -s {sig} {} failed", self.pid());
    }

    /// Whether the process has exited.
    pub fn has_exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_some())
    }

    /// Wait for exit, at most `limit` from the start; kill it and fail the test beyond.
    pub fn wait(mut self, limit: Duration) -> Run {
        let mut child = self.child.take().expect("child");
        let status = loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                break st;
            }
            if self.start.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                let err = self.err.take().map(|h| h.join().unwrap_or_default());
                panic!(
                    "{} did not finish within {limit:?} (killed); stderr:\n{}",
                    self.what,
                    strip_ansi(&err.unwrap_or_default())
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let elapsed = self.start.elapsed();
        let stdout = self
            .out
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        let stderr = self
            .err
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        Run {
            what: std::mem::take(&mut self.what),
            status,
            stdout,
            stderr: strip_ansi(&stderr),
            elapsed,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Remove ANSI escape sequences (CSI ... letter).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl Run {
    fn context(&self, ctx: &str) -> String {
        format!(
            "[{ctx}] {}\nexit: {:?}, after {:?}\nstdout:\n{}\nstderr:\n{}",
            self.what, self.status, self.elapsed, self.stdout, self.stderr
        )
    }

    /// The copy succeeded: exit 0, no panic, and stdout is one JSON summary, returned.
    pub fn success(&self, ctx: &str) -> serde_json::Value {
        let c = self.context(ctx);
        assert!(self.status.success(), "expected success\n{c}");
        assert!(!self.stderr.contains("panicked"), "panic on stderr\n{c}");
        assert!(
            !self.stderr.contains("ferry: error:"),
            "error line on success\n{c}"
        );
        let lines: Vec<&str> = self.stdout.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(lines.len(), 1, "expected one JSON line on stdout\n{c}");
        let v: serde_json::Value = serde_json::from_str(lines[0])
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e})\n{c}"));
        for key in [
            "size",
            "bytes_read",
            "bytes_written",
            "bytes_zeroed",
            "bytes_skipped",
            "seconds",
            "engine",
            "direct",
            "buf_size",
            "buf_count",
            "retries",
        ] {
            assert!(v.get(key).is_some(), "summary lacks {key}\n{c}");
        }
        v
    }

    /// The error contract: a non-zero exit code (not death by a signal), no panic, no
    /// JSON or other output on stdout, exactly one `ferry: error:` line and it is the
    /// last line of stderr (log lines may precede it), containing every one of
    /// `phrases`. Returns that line.
    pub fn failure(&self, ctx: &str, phrases: &[&str]) -> String {
        let c = self.context(ctx);
        match self.status.code() {
            Some(0) => panic!("expected failure, got exit 0\n{c}"),
            Some(_) => {}
            None => panic!("ferry died from a signal instead of exiting with an error\n{c}"),
        }
        assert!(!self.stderr.contains("panicked"), "panic on stderr\n{c}");
        assert!(
            self.stdout.trim().is_empty(),
            "stdout must stay empty on failure (no summary)\n{c}"
        );
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        let last = lines.last().copied().unwrap_or("");
        assert!(
            last.starts_with("ferry: error: "),
            "last stderr line is not the error line\n{c}"
        );
        let n = lines.iter().filter(|l| l.contains("ferry: error:")).count();
        assert_eq!(n, 1, "expected exactly one error line\n{c}");
        for p in phrases {
            assert!(last.contains(p), "error line lacks {p:?}\n{c}");
        }
        last.to_string()
    }
}

/// A number from the JSON summary.
pub fn num(v: &serde_json::Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("summary field {key} is not a number: {v}"))
}

// ---------------------------------------------------------------------------------------
// NBD servers

#[allow(unused_imports)] // not every test binary uses each
pub use ferry_test_kit::{Server, fake_nbd, free_port};

/// The `watermark` a resume journal records, if it is there and has one.
pub fn journal_watermark(journal: &Path) -> Option<u64> {
    std::fs::read_to_string(journal)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("watermark "))
        .and_then(|w| w.parse().ok())
}

/// Start `cmd`, wait until its journal records a durable prefix of at least `min`
/// bytes (or `limit` passes, or it exits), then kill -9 it; it must not have finished.
/// Returns the watermark left.
pub fn kill_after_progress(cmd: Command, journal: &Path, min: u64, limit: Duration) -> u64 {
    let mut running = spawn(cmd);
    let t0 = Instant::now();
    while journal_watermark(journal).is_none_or(|w| w < min)
        && t0.elapsed() < limit
        && !running.has_exited()
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    running.signal("KILL");
    let r = running.wait(Duration::from_secs(10));
    assert!(
        !r.status.success(),
        "finished before it could be killed:\n{}",
        r.stderr
    );
    journal_watermark(journal).unwrap_or(0)
}

/// Copy the export with nbdcopy into `dir/ref-N.img`: the independent reference.
pub fn nbdcopy_reference(uri: &str, dir: &Path) -> PathBuf {
    let out = dir.join(format!("ref-{}.img", next_id()));
    ferry_test_kit::nbdcopy(uri, &out);
    out
}

// ---------------------------------------------------------------------------------------
// Independent comparisons

/// Sizes equal and bytes identical: `cmp` for files up to 1 GiB, else `qemu-img
/// compare` (which reads only where either side has data, so huge sparse files are fast).
pub fn assert_identical(target: &Path, reference: &Path, ctx: &str) {
    let (a, b) = (file_size(target), file_size(reference));
    assert_eq!(
        a,
        b,
        "[{ctx}] {} has {a} bytes, the reference {b}",
        target.display()
    );
    let o = if a <= 1024 * MIB {
        Command::new("cmp").arg(target).arg(reference).output()
    } else {
        Command::new("qemu-img")
            .args(["compare", "-q", "-f", "raw", "-F", "raw"])
            .arg(target)
            .arg(reference)
            .output()
    }
    .expect("run cmp");
    assert!(
        o.status.success(),
        "[{ctx}] {} differs from {}: {}{}",
        target.display(),
        reference.display(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The first `n` bytes of `target` (e.g. a block device) equal `reference` (`cmp -n`).
pub fn assert_prefix_identical(target: &Path, reference: &Path, n: u64, ctx: &str) {
    let o = Command::new("cmp")
        .arg("-n")
        .arg(n.to_string())
        .arg(target)
        .arg(reference)
        .output()
        .expect("run cmp");
    assert!(
        o.status.success(),
        "[{ctx}] first {n} bytes of {} differ from {}: {}{}",
        target.display(),
        reference.display(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Every byte of `[offset, offset+len)` of `path` equals `byte`.
pub fn assert_filled(path: &Path, offset: u64, len: u64, byte: u8, ctx: &str) {
    use std::os::unix::fs::FileExt;
    let f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut buf = vec![0u8; MIB as usize];
    let mut at = offset;
    while at < offset + len {
        let n = (offset + len - at).min(MIB) as usize;
        f.read_exact_at(&mut buf[..n], at)
            .unwrap_or_else(|e| panic!("read {} at {at}: {e}", path.display()));
        if let Some(i) = buf[..n].iter().position(|b| *b != byte) {
            panic!(
                "[{ctx}] {} byte {} is {:#04x}, expected {byte:#04x} (untouched)",
                path.display(),
                at + i as u64,
                buf[i]
            );
        }
        at += n as u64;
    }
}

/// Size of a file or block device.
pub fn file_size(p: &Path) -> u64 {
    use std::io::Seek;
    let mut f = File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    f.seek(std::io::SeekFrom::End(0)).expect("seek")
}

/// Bytes actually allocated on disk for `p`.
pub fn allocated(p: &Path) -> u64 {
    std::fs::metadata(p).expect("stat").blocks() * 512
}

/// Write `len` bytes of `byte` over `path` from offset 0 (creating it), then fsync.
pub fn fill(path: &Path, byte: u8, len: u64) {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let chunk = vec![byte; MIB as usize];
    let mut left = len;
    while left > 0 {
        let n = left.min(MIB) as usize;
        f.write_all(&chunk[..n]).expect("write fill");
        left -= n as u64;
    }
    f.sync_all().expect("fsync fill");
}

#[allow(unused_imports)] // not every test binary uses each
pub use ferry_test_kit::{qemu_image, sh};

// ---------------------------------------------------------------------------------------
// Block devices and mounts

/// A loop device over a file; detached on drop.
#[derive(Debug)]
pub struct Loop {
    pub dev: PathBuf,
}

impl Loop {
    /// `losetup -f --show OPTS FILE`.
    pub fn new(file: &Path, opts: &[&str]) -> Loop {
        let mut args = vec!["-f", "--show"];
        args.extend_from_slice(opts);
        let f = file.to_str().expect("utf-8 path");
        args.push(f);
        let dev = sh("losetup", &args).trim().to_string();
        assert!(dev.starts_with("/dev/loop"), "losetup printed {dev:?}");
        Loop { dev: dev.into() }
    }

    /// A sparse backing file of `size` bytes in `dir`, filled with `garbage`, under a
    /// loop device with direct I/O when `direct_io`.
    pub fn with_garbage(dir: &Path, size: u64, garbage: u8, direct_io: bool) -> Loop {
        let backing = dir.join(format!("loop-backing-{}.img", next_id()));
        fill(&backing, garbage, size);
        let opts: &[&str] = if direct_io { &["--direct-io=on"] } else { &[] };
        Loop::new(&backing, opts)
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// A mount undone on drop (lazily if busy).
#[derive(Debug)]
pub struct Mount {
    pub dir: PathBuf,
}

impl Mount {
    /// `mount -t tmpfs -o OPTS tmpfs DIR` (DIR is created).
    pub fn tmpfs(dir: &Path, opts: &str) -> Mount {
        std::fs::create_dir_all(dir).expect("mkdir mountpoint");
        let d = dir.to_str().expect("utf-8 path");
        sh("mount", &["-t", "tmpfs", "-o", opts, "tmpfs", d]);
        Mount { dir: dir.into() }
    }

    /// `mount DEV DIR`.
    pub fn device(dev: &Path, dir: &Path) -> Mount {
        std::fs::create_dir_all(dir).expect("mkdir mountpoint");
        sh(
            "mount",
            &[dev.to_str().expect("utf-8"), dir.to_str().expect("utf-8")],
        );
        Mount { dir: dir.into() }
    }

    /// `mount -o remount,OPTS DIR`.
    pub fn remount(&self, opts: &str) {
        let o = format!("remount,{opts}");
        sh("mount", &["-o", &o, self.dir.to_str().expect("utf-8")]);
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        unmount(&self.dir);
    }
}

/// `umount DIR`, retried for a while (udev may briefly hold a just-detached loop
/// device open), then lazily.
pub fn unmount(dir: &Path) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        let ok = Command::new("umount")
            .arg(dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = Command::new("umount").arg("-l").arg(dir).status();
}

/// A block device whose I/O goes to an nbdkit instance: `nbdfuse` exposes the export
/// as a file, and a direct-I/O loop device sits on that file. nbdkit filters (error,
/// delay) then inject faults into the *target*. Torn down on drop: loop, mount, process.
#[derive(Debug)]
pub struct FuseDisk {
    // Declared first so it is dropped (detached) before the FUSE mount goes away.
    pub dev: Option<Loop>,
    mnt: PathBuf,
    child: Option<Child>,
}

impl FuseDisk {
    /// `nbdfuse DIR/fuse-N/disk --command nbdkit -s NBDKIT_ARGS...`, then a loop device.
    pub fn new(dir: &Path, nbdkit_args: &[&str]) -> FuseDisk {
        let mnt = dir.join(format!("fuse-{}", next_id()));
        std::fs::create_dir_all(&mnt).expect("mkdir fuse mountpoint");
        let file = mnt.join("disk");
        let log = File::create(dir.join(format!("nbdfuse-{}.log", next_id()))).expect("log");
        let child = Command::new("nbdfuse")
            .arg(&file)
            .args(["--command", "nbdkit", "-s"])
            .args(nbdkit_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start nbdfuse");
        let mut d = FuseDisk {
            dev: None,
            mnt,
            child: Some(child),
        };
        let start = Instant::now();
        while !file.exists() {
            if let Some(st) = d.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("nbdfuse exited ({st}) before exposing {}", file.display());
            }
            assert!(
                start.elapsed() < READY_WAIT,
                "nbdfuse did not expose {} within {READY_WAIT:?}",
                file.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        d.dev = Some(Loop::new(&file, &["--direct-io=on"]));
        d
    }

    /// The block device.
    pub fn path(&self) -> &Path {
        &self.dev.as_ref().expect("loop device").dev
    }
}

impl Drop for FuseDisk {
    fn drop(&mut self) {
        self.dev.take();
        unmount(&self.mnt);
        if let Some(mut c) = self.child.take() {
            let start = Instant::now();
            while c.try_wait().ok().flatten().is_none() && start.elapsed() < READY_WAIT {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `raw` converted to a qcow2 by qemu-img (uncompressed clusters), beside it.
pub fn qcow2_of(raw: &Path) -> PathBuf {
    let q = raw.with_extension("qcow2");
    ferry_test_kit::sh(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            raw.to_str().unwrap(),
            q.to_str().unwrap(),
        ],
    );
    q
}

/// This process's own cgroup directory for the v1 `controller`, or in v2's unified
/// hierarchy (then `true`) where that controller has no v1 line.
pub fn own_cgroup(controller: &str) -> Result<(PathBuf, bool), String> {
    let proc = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| e.to_string())?;
    let mount = Path::new("/sys/fs/cgroup");
    let mut found = None;
    for line in proc.lines() {
        let mut p = line.splitn(3, ':');
        let (id, ctl, path) = (p.next(), p.next(), p.next());
        let rel = path.unwrap_or("").trim_start_matches('/');
        if ctl.is_some_and(|c| c.split(',').any(|c| c == controller)) {
            found = Some((mount.join(controller).join(rel), false));
            break;
        }
        if id == Some("0") && ctl == Some("") && found.is_none() {
            found = Some((mount.join(rel), true));
        }
    }
    found.ok_or(format!("no {controller} cgroup in /proc/self/cgroup"))
}

/// A child cgroup made by a test under this process's own, in the v1 hierarchy of
/// `controller` or in v2's (whichever this machine has), with its settings written;
/// removed on drop.
pub struct Cgroup {
    pub dir: PathBuf,
    pub v2: bool,
}

impl Cgroup {
    /// `v1` / `v2`: (file, value) pairs written in the new cgroup. `Err` (the reason)
    /// when one cannot be made here.
    pub fn new(
        controller: &str,
        v1: &[(&str, &str)],
        v2: &[(&str, &str)],
    ) -> Result<Cgroup, String> {
        let (parent, v2_found) = own_cgroup(controller)?;
        if v2_found {
            // v2 hands a controller to children only when the parent enables it.
            let _ = std::fs::write(
                parent.join("cgroup.subtree_control"),
                format!("+{controller}"),
            );
        }
        let dir = parent.join(format!(
            "ferry-test-{}-{}",
            std::process::id(),
            ferry_test_kit::next_id()
        ));
        std::fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let cg = Cgroup { dir, v2: v2_found };
        for (file, value) in if v2_found { v2 } else { v1 } {
            std::fs::write(cg.dir.join(file), value).map_err(|e| format!("{file}: {e}"))?;
        }
        Ok(cg)
    }

    /// A file of the cgroup ("" when unreadable).
    pub fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.join(file)).unwrap_or_default()
    }

    /// `ferry ARGS` run inside the cgroup.
    pub fn ferry(&self, args: &[&str]) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(r#"echo $$ > "$1/cgroup.procs" && shift && exec "$@""#)
            .arg("sh")
            .arg(&self.dir)
            .arg(FERRY)
            .args(args)
            .env_remove("FERRY_LOG")
            .env("NO_COLOR", "1");
        c
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
