//! Independent proxy and TLS peers for tests, shared by `vsphere/tests/peers.rs` and
//! `importer/tests/import.rs` (included there with `#[path]`): tinyproxy as a `CONNECT`
//! proxy, socat's OpenSSL listener in front of it as an `https://` proxy, and openssl
//! for certificates, and nginx as a file server (`http/tests/nginx.rs`,
//! `importer/tests/http.rs`). `scripts/setup.sh` installs them.

#![allow(dead_code)]

use std::net::{IpAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// This machine's host name and the address it resolves to.
pub fn machine_host() -> (String, IpAddr) {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("read the host name")
        .trim()
        .to_string();
    let addr = (name.as_str(), 0)
        .to_socket_addrs()
        .unwrap_or_else(|e| panic!("host name {name:?} does not resolve: {e}"))
        .map(|a| a.ip())
        .min_by_key(|ip| ip.is_ipv6())
        .unwrap_or_else(|| panic!("host name {name:?} resolves to nothing"));
    (name, addr)
}

pub use ferry_test_kit::free_port;

/// Wait until `child` listens on `port` (a self-connection does not count:
/// [`ferry_test_kit::listening`]).
pub fn wait_for_port(port: u16, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ferry_test_kit::listening(port) {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{what} exited early: {status}");
        }
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process killed on drop.
pub struct Peer(pub Child);

impl Drop for Peer {
    /// SIGTERM first, so that nginx's master stops its workers (killed outright, it
    /// would leave them running with the port bound); SIGKILL after 3 s.
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let until = std::time::Instant::now() + std::time::Duration::from_secs(3);
        while std::time::Instant::now() < until {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// tinyproxy on a loopback port; `extra` lines are appended to its configuration.
pub fn tinyproxy(dir: &Path, extra: &str) -> (Peer, u16) {
    let port = free_port();
    let conf = dir.join("tinyproxy.conf");
    std::fs::write(
        &conf,
        format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 30\nMaxClients 20\nAllow 127.0.0.1\n\
             LogLevel Info\nLogFile \"{}\"\nPidFile \"{}\"\n{extra}\n",
            dir.join("tinyproxy.log").display(),
            dir.join("tinyproxy.pid").display()
        ),
    )
    .unwrap();
    let mut child = Command::new("tinyproxy")
        .arg("-d")
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("tinyproxy.stderr")).unwrap())
        .spawn()
        .expect("start tinyproxy (scripts/setup.sh installs it)");
    wait_for_port(port, &mut child, "tinyproxy");
    (Peer(child), port)
}

pub fn openssl(dir: &Path, args: &[&str]) {
    ferry_test_kit::run_ok(Command::new("openssl").args(args).current_dir(dir));
}

/// A CA and a server certificate for `127.0.0.1` signed by it, made by openssl.
pub fn ca_and_server_cert(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-subj",
            "/CN=ferry proxy test CA",
            "-days",
            "2",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "proxy.key",
            "-out",
            "proxy.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "proxy.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "proxy.crt",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
    (
        dir.join("ca.crt"),
        dir.join("proxy.crt"),
        dir.join("proxy.key"),
    )
}

/// socat terminating TLS on a loopback port and passing the bytes to `upstream`: with
/// tinyproxy behind it, an `https://` proxy.
pub fn socat_tls(dir: &Path, cert: &Path, key: &Path, upstream: u16) -> (Peer, u16) {
    let port = free_port();
    let mut child = Command::new("socat")
        .arg(format!(
            "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={},key={},verify=0",
            cert.display(),
            key.display()
        ))
        .arg(format!("TCP:127.0.0.1:{upstream}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("socat.stderr")).unwrap())
        .spawn()
        .expect("start socat (scripts/setup.sh installs it)");
    wait_for_port(port, &mut child, "socat");
    (Peer(child), port)
}

pub fn connects_logged(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("tinyproxy.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("Request (") && l.contains(" CONNECT "))
        .map(str::to_string)
        .collect()
}

/// nginx serving `root` on two loopback ports: plain HTTP and HTTPS with `cert`/`key`;
/// `extra` is added to both `server` blocks (locations: redirects, limits).
pub fn nginx(dir: &Path, root: &Path, cert: &Path, key: &Path, extra: &str) -> (Peer, u16, u16) {
    let (http, https) = (free_port(), free_port());
    let d = dir.display();
    // Also where the machine's name resolves, for the proxied tests.
    let (_, ip) = machine_host();
    let also = |port: u16, ssl: &str| {
        if ip.is_loopback() && ip.is_ipv4() {
            String::new()
        } else {
            format!(" listen {}{ssl};", std::net::SocketAddr::new(ip, port))
        }
    };
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "user root;\ndaemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n access_log {d}/access.log;\n client_body_temp_path {d}/body;\n\
             proxy_temp_path {d}/proxy;\n fastcgi_temp_path {d}/fastcgi;\n uwsgi_temp_path {d}/uwsgi;\n\
             scgi_temp_path {d}/scgi;\n\
             server {{ listen 127.0.0.1:{http};{also_http} root {root}; {extra} }}\n\
             server {{ listen 127.0.0.1:{https} ssl;{also_https} ssl_certificate {cert}; ssl_certificate_key {key}; root {root}; {extra} }}\n}}\n",
            also_http = also(http, ""),
            also_https = also(https, " ssl"),
            root = root.display(),
            cert = cert.display(),
            key = key.display()
        ),
    )
    .unwrap();
    let mut child = Command::new("nginx")
        .arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("nginx.stderr")).unwrap())
        .spawn()
        .expect("start nginx (scripts/setup.sh installs it)");
    wait_for_port(http, &mut child, "nginx");
    wait_for_port(https, &mut child, "nginx");
    (Peer(child), http, https)
}
