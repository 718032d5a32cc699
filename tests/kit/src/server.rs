//! Real NBD servers for tests: nbdkit (on a Unix socket or a loopback TCP port) and
//! qemu-nbd (on a Unix socket), each ready once its pid file is written (after it
//! listens: no probe connection, which would make nbdkit log a broken handshake), its
//! stderr kept in a log file next to the socket, SIGKILLed and reaped on drop.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long a server may take to listen.
pub const SERVER_WAIT: Duration = Duration::from_secs(15);

/// A number unique in this test process, for file names.
pub fn next_id() -> usize {
    static NEXT_ID: AtomicUsize = AtomicUsize::new(0);
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// A TCP port on 127.0.0.1 that nothing listens on (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("find a free port")
        .port()
}

/// Where a [`Server`] listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A Unix socket.
    Unix(PathBuf),
    /// A TCP port on 127.0.0.1.
    Tcp(u16),
}

/// An NBD server process; SIGKILLed and reaped on drop.
#[derive(Debug)]
pub struct Server {
    child: Option<Child>,
    /// Where it listens.
    pub listen: Listen,
    /// The export [`Server::uri`] names (empty: the default export).
    pub export: String,
    /// The directory it was started in ([`Server::path`]).
    pub dir: PathBuf,
    log: PathBuf,
    what: String,
    // Dropped after the process is killed.
    owned_dir: Option<tempfile::TempDir>,
}

impl Server {
    /// `nbdkit -f -U SOCK -P SOCK.pid --exit-with-parent ARGS...` on a fixed socket (a
    /// stale socket file there is removed first), so a test can start the same server
    /// again after killing it (nbdkit 1.32 may abort when its client is killed
    /// mid-reply). Logs to `SOCK` with the extension `log`.
    pub fn nbdkit_at(sock: &Path, args: &[&str]) -> Server {
        let _ = std::fs::remove_file(sock);
        let mut pidfile = sock.as_os_str().to_owned();
        pidfile.push(".pid");
        let pidfile = PathBuf::from(pidfile);
        let mut cmd = Command::new("nbdkit");
        cmd.arg("-f")
            .arg("-U")
            .arg(sock)
            .arg("-P")
            .arg(&pidfile)
            .arg("--exit-with-parent")
            .args(args);
        let what = format!("nbdkit {}", args.join(" "));
        let dir = sock.parent().unwrap_or(Path::new(".")).to_owned();
        let log = sock.with_extension("log");
        Self::start(
            cmd,
            Listen::Unix(sock.to_owned()),
            dir,
            &pidfile,
            log,
            "",
            what,
        )
    }

    /// [`Server::nbdkit_at`] on `DIR/nbdkitN.sock`, a socket of its own.
    pub fn nbdkit(dir: &Path, args: &[&str]) -> Server {
        Self::nbdkit_at(&dir.join(format!("nbdkit{}.sock", next_id())), args)
    }

    /// [`Server::nbdkit`] in a tempdir of its own, removed when the server is dropped
    /// ([`Server::path`] names files there).
    pub fn nbdkit_temp(args: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::nbdkit(dir.path(), args).owning(dir)
    }

    /// `nbdkit -f -i 127.0.0.1 -p PORT -P PIDFILE --exit-with-parent ARGS...` on a free
    /// port; logs in `dir`.
    pub fn nbdkit_tcp(dir: &Path, args: &[&str]) -> (Server, u16) {
        let port = free_port();
        let id = next_id();
        let pidfile = dir.join(format!("nbdkit{id}.pid"));
        let mut cmd = Command::new("nbdkit");
        cmd.args(["-f", "-i", "127.0.0.1", "-p", &port.to_string()])
            .arg("-P")
            .arg(&pidfile)
            .arg("--exit-with-parent")
            .args(args);
        let what = format!("nbdkit -p {port} {}", args.join(" "));
        let log = dir.join(format!("nbdkit{id}.log"));
        let s = Self::start(
            cmd,
            Listen::Tcp(port),
            dir.to_owned(),
            &pidfile,
            log,
            "",
            what,
        );
        (s, port)
    }

    /// `qemu-nbd -k SOCK -t --shared=8 [-x EXPORT] --pid-file PIDFILE ARGS...` in `dir`
    /// (persistent, so several connections work; `-x` only for a non-empty export).
    pub fn qemu_nbd(dir: &Path, export: &str, args: &[&str]) -> Server {
        let id = next_id();
        let socket = dir.join(format!("qemu{id}.sock"));
        let pidfile = dir.join(format!("qemu{id}.pid"));
        let named: &[&str] = if export.is_empty() {
            &[]
        } else {
            &["-x", export]
        };
        let mut cmd = Command::new("qemu-nbd");
        cmd.arg("-k")
            .arg(&socket)
            .args(["-t", "--shared=8"])
            .args(named)
            .arg("--pid-file")
            .arg(&pidfile)
            .args(args);
        let what = format!("qemu-nbd {}", [named, args].concat().join(" "));
        let log = socket.with_extension("log");
        let listen = Listen::Unix(socket);
        Self::start(cmd, listen, dir.to_owned(), &pidfile, log, export, what)
    }

    /// Keep `dir` (the server's directory) until the server is dropped.
    pub fn owning(mut self, dir: tempfile::TempDir) -> Server {
        self.owned_dir = Some(dir);
        self
    }

    fn start(
        mut cmd: Command,
        listen: Listen,
        dir: PathBuf,
        pidfile: &Path,
        log: PathBuf,
        export: &str,
        what: String,
    ) -> Server {
        let _ = std::fs::remove_file(pidfile);
        let logf = File::create(&log).expect("create server log");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(logf));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let mut s = Server {
            child: Some(child),
            listen,
            export: export.to_string(),
            dir,
            log,
            what,
            owned_dir: None,
        };
        let start = Instant::now();
        loop {
            let written = std::fs::metadata(pidfile).is_ok_and(|m| m.len() > 0);
            let bound = match &s.listen {
                Listen::Unix(sock) => sock.exists(),
                Listen::Tcp(_) => true,
            };
            if written && bound {
                return s;
            }
            if let Some(st) = s.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!(
                    "{} exited ({st}) before listening:\n{}",
                    s.what,
                    s.log_text()
                );
            }
            assert!(
                start.elapsed() < SERVER_WAIT,
                "{} did not listen within {SERVER_WAIT:?}:\n{}",
                s.what,
                s.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The Unix socket; panics for a TCP server.
    pub fn socket(&self) -> &Path {
        match &self.listen {
            Listen::Unix(sock) => sock,
            Listen::Tcp(port) => panic!("{} listens on TCP port {port}", self.what),
        }
    }

    /// The URI of [`Server::export`]: `nbd+unix:///EXPORT?socket=SOCK` or
    /// `nbd://127.0.0.1:PORT/EXPORT`.
    pub fn uri(&self) -> String {
        self.uri_for_export(&self.export)
    }

    /// The same server, but asking for another export name.
    pub fn uri_for_export(&self, export: &str) -> String {
        match &self.listen {
            Listen::Unix(sock) => format!("nbd+unix:///{export}?socket={}", sock.display()),
            Listen::Tcp(port) => format!("nbd://127.0.0.1:{port}/{export}"),
        }
    }

    /// `DIR/NAME` in the server's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The server's pid (0 once killed).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// SIGKILL the server now and reap it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// What the server logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

#[cfg(feature = "nbd")]
impl Server {
    /// The [`ferry_nbd::Uri`] of `export` on this server.
    pub fn nbd_uri(&self, export: &str) -> ferry_nbd::Uri {
        let address = match &self.listen {
            Listen::Unix(sock) => ferry_nbd::Address::Unix(sock.clone()),
            Listen::Tcp(port) => ferry_nbd::Address::Tcp {
                host: "127.0.0.1".to_string(),
                port: *port,
            },
        };
        ferry_nbd::Uri {
            address,
            export: export.to_string(),
            tls: false,
            tls_settings: Default::default(),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}
