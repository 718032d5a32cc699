//! io_uring refused by seccomp, as container runtimes do (reliability.md 4.5):
//! containerd/Docker return EPERM, CRI-O/Podman ENOSYS. `auto` must fall back to the
//! sync engine and say why; `uring` must fail with one clear line.
//!
//! The filter comes from a small python3 ctypes wrapper: PR_SET_NO_NEW_PRIVS, then a
//! seccomp-BPF program that fails io_uring_setup/enter/register (425-427 on x86_64)
//! with the chosen errno and allows everything else; then it execs ferry.

mod common;

use std::path::{Path, PathBuf};

use common::*;

const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

const WRAPPER: &str = r#"
import ctypes, os, sys
errno_val = int(sys.argv[1])
argv = sys.argv[2:]
BPF_LD_W_ABS, BPF_JEQ_K, BPF_RET_K = 0x20, 0x15, 0x06
AUDIT_ARCH_X86_64 = 0xC000003E
RET_ALLOW, RET_ERRNO = 0x7FFF0000, 0x00050000
class Filter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte),
                ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]
class Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Filter))]
prog = [
    Filter(BPF_LD_W_ABS, 0, 0, 4),                      # seccomp_data.arch
    Filter(BPF_JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
    Filter(BPF_RET_K, 0, 0, RET_ALLOW),                 # other ABIs: allow
    Filter(BPF_LD_W_ABS, 0, 0, 0),                      # seccomp_data.nr
    Filter(BPF_JEQ_K, 3, 0, 425),                       # io_uring_setup
    Filter(BPF_JEQ_K, 2, 0, 426),                       # io_uring_enter
    Filter(BPF_JEQ_K, 1, 0, 427),                       # io_uring_register
    Filter(BPF_RET_K, 0, 0, RET_ALLOW),
    Filter(BPF_RET_K, 0, 0, RET_ERRNO | (errno_val & 0xFFFF)),
]
arr = (Filter * len(prog))(*prog)
fprog = Prog(len(prog), arr)
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p,
                       ctypes.c_ulong, ctypes.c_ulong]
if libc.prctl(38, 1, None, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
    sys.exit("wrapper: PR_SET_NO_NEW_PRIVS: " + os.strerror(ctypes.get_errno()))
if libc.prctl(22, 2, ctypes.cast(ctypes.pointer(fprog), ctypes.c_void_p), 0, 0) != 0:
    sys.exit("wrapper: PR_SET_SECCOMP: " + os.strerror(ctypes.get_errno()))
os.execv(argv[0], argv)
"#;

fn supported() -> bool {
    if std::env::consts::ARCH != "x86_64" {
        skip("the seccomp filter uses x86_64 syscall numbers");
        return false;
    }
    require(&["python3", "cmp"])
}

fn write_wrapper(dir: &Path) -> PathBuf {
    let p = dir.join("seccomp_wrap.py");
    std::fs::write(&p, WRAPPER).unwrap();
    p
}

/// `python3 WRAPPER ERRNO ferry [-v] copy SRC DST --json --no-progress EXTRA...`.
fn under_seccomp(
    wrapper: &Path,
    errno: u32,
    verbose: bool,
    src: &Path,
    dst: &Path,
    extra: &[&str],
) -> Run {
    let mut c = std::process::Command::new("python3");
    c.arg(wrapper).arg(errno.to_string()).arg(FERRY);
    if verbose {
        c.arg("-v");
    }
    c.arg("copy")
        .arg(src)
        .arg(dst)
        .args(["--json", "--no-progress"])
        .args(extra)
        .env_remove("FERRY_LOG")
        .env("NO_COLOR", "1");
    run(c, RUN_LIMIT)
}

fn sample_source(dir: &Path) -> PathBuf {
    use std::os::unix::fs::FileExt;
    let p = dir.join("source.raw");
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(8 * 1024 * 1024 + 100).unwrap();
    f.write_all_at(&[0x5a; 300_000], 12345).unwrap();
    f.write_all_at(&[0x33; 70_000], 5 * 1024 * 1024).unwrap();
    p
}

fn auto_falls_back_to_sync(errno: u32, reason: &str) {
    if !supported() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let wrapper = write_wrapper(dir.path());
    let src = sample_source(dir.path());
    let dst = dir.path().join("t.img");
    let r = under_seccomp(&wrapper, errno, true, &src, &dst, &["--io-engine", "auto"]);
    let ctx = format!("io_uring denied with errno {errno}");
    let v = r.success(&ctx);
    assert_eq!(v["engine"], "sync", "[{ctx}] {v}");
    let log = r
        .stderr
        .lines()
        .find(|l| l.contains("I/O engine selected"))
        .unwrap_or_else(|| panic!("[{ctx}] no engine log line:\n{}", r.stderr));
    assert!(log.contains("sync"), "[{ctx}] {log}");
    assert!(
        log.contains(reason),
        "[{ctx}] the log gives the reason {reason:?}: {log}"
    );
    assert_identical(&dst, &src, &ctx);
}

fn uring_required_fails(errno: u32, reason: &str) {
    if !supported() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let wrapper = write_wrapper(dir.path());
    let src = sample_source(dir.path());
    let dst = dir.path().join("t.img");
    let r = under_seccomp(
        &wrapper,
        errno,
        false,
        &src,
        &dst,
        &["--io-engine", "uring"],
    );
    r.failure(
        &format!("--io-engine uring, errno {errno}"),
        &["io_uring was requested but is not usable", reason],
    );
    assert!(!dst.exists(), "no target may be created");
}

#[test]
fn auto_engine_falls_back_to_sync_when_io_uring_gets_eperm() {
    auto_falls_back_to_sync(EPERM, "Operation not permitted");
}

#[test]
fn auto_engine_falls_back_to_sync_when_io_uring_gets_enosys() {
    auto_falls_back_to_sync(ENOSYS, "Function not implemented");
}

#[test]
fn uring_engine_fails_cleanly_when_io_uring_gets_eperm() {
    uring_required_fails(EPERM, "Operation not permitted");
}

#[test]
fn uring_engine_fails_cleanly_when_io_uring_gets_enosys() {
    uring_required_fails(ENOSYS, "Function not implemented");
}

#[test]
fn sync_engine_under_seccomp_never_tries_io_uring() {
    if !supported() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let wrapper = write_wrapper(dir.path());
    let src = sample_source(dir.path());
    let dst = dir.path().join("t.img");
    let r = under_seccomp(&wrapper, EPERM, true, &src, &dst, &["--io-engine", "sync"]);
    let v = r.success("--io-engine sync under seccomp");
    assert_eq!(v["engine"], "sync", "{v}");
    assert!(
        r.stderr.contains("requested with --io-engine sync"),
        "{}",
        r.stderr
    );
    assert_identical(&dst, &src, "sync under seccomp");
}

#[test]
fn auto_engine_picks_io_uring_when_it_is_allowed() {
    if !require(&["cmp"]) {
        return;
    }
    let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .map(|s| s.trim() != "0")
        .unwrap_or(false);
    if disabled {
        skip("kernel.io_uring_disabled is set on this host");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = sample_source(dir.path());
    let dst = dir.path().join("t.img");
    let mut c = ferry(&["-v", "copy"]);
    c.arg(&src)
        .arg(&dst)
        .args(["--json", "--no-progress", "--io-engine", "auto"]);
    let r = run(c, RUN_LIMIT);
    let v = r.success("auto without seccomp");
    assert_eq!(v["engine"], "uring", "{v}");
    assert!(
        r.stderr.contains("io_uring probe succeeded"),
        "{}",
        r.stderr
    );
    assert_identical(&dst, &src, "auto without seccomp");
}
