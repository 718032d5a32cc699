//! Helpers shared by the integration tests: real NBD servers on Unix sockets in a
//! tempdir, killed on drop, and the known content of `nbdkit pattern`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_nbd::{Address, ConnectOptions, Uri};

#[allow(unused_imports)] // not every test binary uses each
pub use ferry_test_kit::{have, pattern_byte};

/// Returns false (after a loud, counted skip) when one of `bins` is missing; with
/// `FERRY_REQUIRE_TOOLS=1` a missing tool fails the test instead.
pub fn tools(bins: &[&str]) -> bool {
    ferry_test_kit::require_in("ferry-nbd", bins)
}

/// A server process listening on a Unix socket in its own tempdir; SIGKILLed on drop.
pub struct Server {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    what: String,
}

/// How long a server may take to create its socket.
pub const SOCKET_WAIT: Duration = Duration::from_secs(15);

impl Server {
    /// `nbdkit -f -U SOCK --exit-with-parent ARGS...`.
    pub fn nbdkit(args: &[&str]) -> Server {
        Self::nbdkit_in(tempfile::tempdir().expect("tempdir"), args)
    }

    /// Like [`Server::nbdkit`], in a given directory (so the args can name files there).
    pub fn nbdkit_in(dir: tempfile::TempDir, args: &[&str]) -> Server {
        let socket = dir.path().join("nbd.sock");
        // nbdkit writes its pidfile once it listens: waiting for it avoids probing the
        // socket (a probe connection makes nbdkit log a broken handshake).
        let pidfile = dir.path().join("nbdkit.pid");
        let mut cmd = Command::new("nbdkit");
        cmd.arg("-f").arg("-U").arg(&socket).arg("-P").arg(&pidfile);
        cmd.arg("--exit-with-parent");
        cmd.args(args);
        let what = format!("nbdkit {}", args.join(" "));
        Self::spawn(cmd, dir, socket, Some(pidfile), what)
    }

    /// `qemu-nbd -k SOCK -t ARGS...` (persistent, so several connections work).
    pub fn qemu_nbd_in(dir: tempfile::TempDir, args: &[&str]) -> Server {
        let socket = dir.path().join("qemu.sock");
        let mut cmd = Command::new("qemu-nbd");
        cmd.arg("-k").arg(&socket).arg("-t").arg("--shared=8");
        cmd.args(args);
        Self::spawn(
            cmd,
            dir,
            socket,
            None,
            format!("qemu-nbd {}", args.join(" ")),
        )
    }

    fn spawn(
        mut cmd: Command,
        dir: tempfile::TempDir,
        socket: PathBuf,
        ready_file: Option<PathBuf>,
        what: String,
    ) -> Server {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        let mut s = Server {
            child: Some(child),
            dir,
            socket,
            what,
        };
        s.wait_until_listening(ready_file.as_deref());
        s
    }

    /// Bounded wait for the server: its ready file has content, or (without one) a
    /// probe connection to the socket succeeds.
    fn wait_until_listening(&mut self, ready_file: Option<&Path>) {
        let start = Instant::now();
        loop {
            let ready = match ready_file {
                Some(f) => std::fs::metadata(f).is_ok_and(|m| m.len() > 0) && self.socket.exists(),
                None => std::os::unix::net::UnixStream::connect(&self.socket).is_ok(),
            };
            if ready {
                return;
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                panic!("{} exited before listening: {st}", self.what);
            }
            assert!(
                start.elapsed() < SOCKET_WAIT,
                "{} did not create {} within {SOCKET_WAIT:?}",
                self.what,
                self.socket.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The URI of `export` on this server.
    pub fn uri(&self, export: &str) -> Uri {
        Uri {
            address: Address::Unix(self.socket.clone()),
            export: export.to_string(),
            tls: false,
        }
    }

    /// The URI string for other tools (nbdcopy, nbdinfo).
    pub fn uri_string(&self, export: &str) -> String {
        format!("nbd+unix:///{export}?socket={}", self.socket.display())
    }

    /// SIGKILL the server now and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Options with short, test-sized timeouts.
pub fn opts() -> ConnectOptions {
    ConnectOptions {
        connect_timeout: Duration::from_secs(10),
        request_timeout: Duration::from_secs(20),
        ..ConnectOptions::default()
    }
}

/// Panics with the first mismatch against the pattern.
pub fn check_pattern(offset: u64, buf: &[u8]) {
    for (i, b) in buf.iter().enumerate() {
        let o = offset + i as u64;
        assert_eq!(*b, pattern_byte(o), "pattern mismatch at offset {o}");
    }
}

/// Run a command, panicking with its stderr on failure.
pub fn run(cmd: &mut Command) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Copy a whole export to `dst` with nbdcopy (an independent reader).
pub fn nbdcopy_to_file(uri: &str, dst: &Path) {
    run(Command::new("nbdcopy").arg(uri).arg(dst));
}

/// Checks the block-status rules of the spec for a reply to a request of `len`
/// bytes: at least one extent, no zero lengths, the first N-1 inside the request.
pub fn check_extent_rules(d: &[ferry_nbd::BlockDescriptor], len: u64) {
    assert!(!d.is_empty(), "no extents");
    assert!(
        d.iter().all(|e| e.length > 0),
        "zero-length extent in {d:?}"
    );
    let head: u64 = d[..d.len() - 1].iter().map(|e| e.length).sum();
    assert!(
        head < len,
        "first N-1 extents ({head}) reach the end of the request ({len})"
    );
}

/// Clamp extents to `[0, len)` and return (relative start, length, flags) ranges.
pub fn clamp_extents(d: &[ferry_nbd::BlockDescriptor], len: u64) -> Vec<(u64, u64, u64)> {
    let mut out = Vec::new();
    let mut at = 0u64;
    for e in d {
        if at >= len {
            break;
        }
        let n = e.length.min(len - at);
        out.push((at, n, e.flags));
        at += n;
    }
    out
}
