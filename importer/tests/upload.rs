//! `ferry upload-server` started as the upload pod starts it, on a loopback port with a
//! certificate from a test CA made here by openssl, against real clients: curl as
//! Deckhouse's docs and CDI's users run it (`curl -T`, `curl -F`, `curl --data-binary`),
//! `ferry upload`, and a Python TLS client that goes away half-way. Every target is
//! compared with the image by `cmp` or `qemu-img compare`.

mod common;

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const TOKEN: &str = "s3cr3t-t0ken";

/// A CA and a server certificate for localhost/127.0.0.1 signed by it.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn openssl(d: &Path, args: &[&str]) {
    let o = Command::new("openssl")
        .current_dir(d)
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn pki(d: &Path) -> Pki {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=ferry test CA",
    ]);
    openssl(d, &ca);
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "key.pem",
        "-out",
        "leaf.csr",
        "-subj",
        "/CN=localhost",
    ]);
    openssl(d, &csr);
    std::fs::write(
        d.join("leaf.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "cert.pem",
            "-days",
            "2",
            "-extfile",
            "leaf.ext",
        ],
    );
    Pki {
        ca: d.join("ca.pem"),
        cert: d.join("cert.pem"),
        key: d.join("key.pem"),
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running upload server.
struct Server {
    proc: Running,
    port: u16,
    termination: PathBuf,
}

impl Server {
    fn start(d: &Path, pki: &Pki, target: &Path, extra: &[&str]) -> Server {
        let port = free_port();
        let termination = d.join("termination-log");
        let mut c = ferry(&["upload-server", "--listen", &format!("127.0.0.1:{port}")]);
        c.arg("--cert")
            .arg(&pki.cert)
            .arg("--key")
            .arg(&pki.key)
            .arg("--termination-log")
            .arg(&termination)
            .args(extra)
            .arg(target)
            .env("FERRY_UPLOAD_TOKEN", TOKEN)
            .env_remove("DESTINATION")
            .env_remove("UPLOAD_IMAGE_SIZE");
        let proc = spawn(c);
        let start = Instant::now();
        while !ferry_test_kit::listening(port) {
            assert!(
                start.elapsed() < READY_WAIT,
                "the upload server did not listen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Server {
            proc,
            port,
            termination,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }

    /// Wait for the server to exit; its run and the termination message.
    fn end(self) -> (Run, String) {
        let run = self.proc.wait(RUN_LIMIT);
        let msg = std::fs::read_to_string(&self.termination).unwrap_or_default();
        (run, msg)
    }
}

/// `curl ARGS`, with the status code and the body it got.
fn curl(pki: &Pki, args: &[&str]) -> (u16, String) {
    let o = Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(&pki.ca)
        .args(["-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("run curl");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", &out));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// A 6 MiB raw disk: patterned data, a zero run, random bytes.
fn raw_disk(p: &Path) {
    let mut v: Vec<u8> = (0..2u32 << 20).map(|i| (i % 253) as u8).collect();
    v.extend(std::iter::repeat_n(0u8, 2 << 20));
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    v.extend((0..2u32 << 20).map(|_| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed as u8
    }));
    std::fs::write(p, v).unwrap();
}

fn assert_complete(run: &Run, msg: &str, ctx: &str) {
    assert!(
        run.status.success(),
        "[{ctx}] the server failed: {}",
        run.stderr
    );
    let v: serde_json::Value =
        serde_json::from_str(msg).unwrap_or_else(|e| panic!("[{ctx}] {msg:?}: {e}"));
    assert_eq!(v["message"], "Upload Complete", "[{ctx}]");
}

fn ready() -> Option<(tempfile::TempDir, Pki)> {
    if !require(&["curl", "openssl"]) {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = pki(dir.path());
    Some((dir, p))
}

#[test]
fn the_seeds_curl_t_to_upload_token_writes_the_raw_disk() {
    let Some((dir, pki)) = ready() else { return };
    let d = dir.path();
    let disk = d.join("cirros.img");
    raw_disk(&disk);
    let target = d.join("disk.img");
    let s = Server::start(d, &pki, &target, &[]);
    assert_eq!(curl(&pki, &[&s.url("/healthz")]), (200, "OK".into()));
    assert_eq!(curl(&pki, &[&s.url("/upload")]).0, 200, "ingress readiness");
    let url = s.url(&format!("/upload/{TOKEN}"));
    let (code, body) = curl(
        &pki,
        &[&url, "--progress-bar", "-T", disk.to_str().unwrap()],
    );
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("Upload Complete: 6291456 bytes received"),
        "{body}"
    );
    let (run, msg) = s.end();
    assert_complete(&run, &msg, "curl -T");
    assert_identical(&target, &disk, "curl -T");
    assert!(
        run.stderr
            .contains("Transferred 6291456/6291456 bytes (100%)"),
        "the progress log: {}",
        run.stderr
    );
}

#[test]
fn a_multipart_form_with_a_bearer_token() {
    let Some((dir, pki)) = ready() else { return };
    let d = dir.path();
    let disk = d.join("disk.raw");
    raw_disk(&disk);
    let target = d.join("out.img");
    let s = Server::start(d, &pki, &target, &[]);
    let (code, body) = curl(
        &pki,
        &[
            "-F",
            "name=cirros",
            "-F",
            &format!("file=@{}", disk.display()),
            &s.url("/v1beta1/upload-form"),
            "-H",
            &format!("Authorization: Bearer {TOKEN}"),
        ],
    );
    assert_eq!(code, 200, "{body}");
    let (run, msg) = s.end();
    assert_complete(&run, &msg, "curl -F");
    assert_identical(&target, &disk, "curl -F");
}

#[test]
fn gzipped_raw_with_data_binary_on_the_async_path() {
    let Some((dir, pki)) = ready() else { return };
    if !require(&["gzip"]) {
        return;
    }
    let d = dir.path();
    let disk = d.join("disk.raw");
    raw_disk(&disk);
    let gz = d.join("disk.raw.gz");
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!("gzip -c {} > {}", disk.display(), gz.display()))
        .status()
        .unwrap();
    assert!(st.success());
    // A directory target means DIR/disk.img.
    let vol = d.join("vol");
    std::fs::create_dir(&vol).unwrap();
    let s = Server::start(d, &pki, &vol, &[]);
    assert_eq!(
        curl(&pki, &["-I", &s.url("/v1beta1/upload-async")]).0,
        200,
        "HEAD on an async path"
    );
    let (code, body) = curl(
        &pki,
        &[
            "--data-binary",
            &format!("@{}", gz.display()),
            "-H",
            &format!("Authorization: Bearer {TOKEN}"),
            &s.url("/v1beta1/upload-async"),
        ],
    );
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("Upload received"), "{body}");
    let (run, msg) = s.end();
    assert_complete(&run, &msg, "gzip async");
    assert_identical(&vol.join("disk.img"), &disk, "gzip async");
}

fn qcow2_of(d: &Path, raw: &Path) -> PathBuf {
    let q = d.join("disk.qcow2");
    let o = Command::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .arg(raw)
        .arg(&q)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    q
}

#[test]
fn ferry_upload_of_a_qcow2_stages_it_in_scratch() {
    let Some((dir, pki)) = ready() else { return };
    if !require(&["qemu-img"]) {
        return;
    }
    let d = dir.path();
    let raw = d.join("disk.raw");
    raw_disk(&raw);
    let q = qcow2_of(d, &raw);
    let scratch = d.join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let target = d.join("disk.img");
    let s = Server::start(d, &pki, &target, &["--scratch", scratch.to_str().unwrap()]);
    let mut c = ferry(&["upload"]);
    c.arg(&q)
        .arg(s.url("/upload"))
        .args(["--token", TOKEN, "--ca"])
        .arg(&pki.ca);
    let up = run(c, RUN_LIMIT);
    assert!(up.status.success(), "ferry upload: {}", up.stderr);
    assert!(up.stdout.contains("Upload Complete"), "{}", up.stdout);
    let (srv, msg) = s.end();
    assert_complete(&srv, &msg, "qcow2 + scratch");
    let o = Command::new("qemu-img")
        .args(["compare", "-q", "-f", "raw", "-F", "qcow2"])
        .arg(&target)
        .arg(&q)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "qemu-img compare: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert_eq!(file_size(&target), 6 << 20);
}

#[test]
fn a_qcow2_without_scratch_is_refused_with_cdis_words() {
    let Some((dir, pki)) = ready() else { return };
    if !require(&["qemu-img"]) {
        return;
    }
    let d = dir.path();
    let raw = d.join("disk.raw");
    raw_disk(&raw);
    let q = qcow2_of(d, &raw);
    let target = d.join("disk.img");
    let s = Server::start(d, &pki, &target, &[]);
    let (code, body) = curl(
        &pki,
        &[
            "-T",
            q.to_str().unwrap(),
            &s.url(&format!("/upload/{TOKEN}")),
        ],
    );
    assert_eq!(code, 500, "{body}");
    assert!(body.starts_with("Saving stream failed: "), "{body}");
    assert!(body.contains("--scratch DIR"), "{body}");
    let (run, msg) = s.end();
    run.failure("qcow2 without scratch", &["qcow2", "--scratch"]);
    assert!(msg.starts_with("Unable to process data: "), "{msg}");
}

#[test]
fn no_token_is_401_a_wrong_one_403_and_the_right_one_still_uploads() {
    let Some((dir, pki)) = ready() else { return };
    let d = dir.path();
    let disk = d.join("disk.raw");
    raw_disk(&disk);
    let target = d.join("disk.img");
    let s = Server::start(d, &pki, &target, &[]);
    let f = disk.to_str().unwrap();
    let (code, body) = curl(&pki, &["-T", f, &s.url("/upload")]);
    assert_eq!(code, 401);
    assert!(body.contains("an upload token is required"), "{body}");
    let (code, body) = curl(&pki, &["-T", f, &s.url("/upload/wrong")]);
    assert_eq!(code, 403);
    assert_eq!(body, "the upload token is wrong\n");
    let (code, _) = curl(
        &pki,
        &[
            "-T",
            f,
            "-H",
            "Authorization: Bearer nope",
            &s.url("/v1beta1/upload"),
        ],
    );
    assert_eq!(code, 403);
    // ferry upload with a wrong token: one error line naming the status and the answer.
    let mut c = ferry(&["upload", f, &s.url("/upload"), "--token", "nope", "--ca"]);
    c.arg(&pki.ca);
    let up = run(c, RUN_LIMIT);
    up.failure("wrong token", &["403", "the upload token is wrong"]);
    assert!(!target.exists(), "nothing was written");
    let mut c = ferry(&["upload", f, &s.url(&format!("/upload/{TOKEN}")), "--ca"]);
    c.arg(&pki.ca);
    let up = run(c, RUN_LIMIT);
    assert!(up.status.success(), "{}", up.stderr);
    let (run, msg) = s.end();
    assert_complete(&run, &msg, "after refusals");
    assert_identical(&target, &disk, "after refusals");
}

/// A TLS client (Python's ssl) that sends the head and `send` bytes of a body of
/// `declared`, then waits `linger` seconds and goes away.
fn python_client(pki: &Pki, port: u16, send: usize, declared: usize, linger: f64) -> Running {
    let script = format!(
        r#"
import socket, ssl, time
ctx = ssl.create_default_context(cafile={ca:?})
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", {port})), server_hostname="localhost")
s.sendall(b"PUT /upload/{TOKEN} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {declared}\r\n\r\n")
sent = 0
while sent < {send}:
    n = min(65536, {send} - sent)
    s.sendall(bytes((sent + i) % 251 for i in range(n)))
    sent += n
time.sleep({linger})
s.close()
"#,
        ca = pki.ca.display().to_string()
    );
    let mut c = Command::new("python3");
    c.arg("-c").arg(script);
    spawn(c)
}

#[test]
fn a_client_that_goes_away_half_way_leaves_the_target_incomplete() {
    let Some((dir, pki)) = ready() else { return };
    if !require(&["python3"]) {
        return;
    }
    let d = dir.path();
    let target = d.join("disk.img");
    let s = Server::start(d, &pki, &target, &[]);
    let client = python_client(&pki, s.port, 3 << 20, 6 << 20, 0.2).wait(RUN_LIMIT);
    assert!(client.status.success(), "{}", client.stderr);
    let (run, msg) = s.end();
    let line = run.failure(
        "half an upload",
        &["the upload", "after 3145728 of 6291456 bytes"],
    );
    assert!(
        line.contains("broke off") || line.contains("ended"),
        "{line}"
    );
    assert!(msg.starts_with("Unable to process data: "), "{msg}");
    assert!(msg.contains("after 3145728 of 6291456 bytes"), "{msg}");
    assert!(!msg.contains("Upload Complete"));
    assert!(
        run.stderr.contains("the target is incomplete"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_second_upload_while_one_runs_is_503_and_metrics_show_the_bytes() {
    let Some((dir, pki)) = ready() else { return };
    if !require(&["python3"]) {
        return;
    }
    let d = dir.path();
    let target = d.join("disk.img");
    let s = Server::start(d, &pki, &target, &[]);
    // Half the body, then a pause while the second client knocks.
    let first = python_client(&pki, s.port, 1 << 20, 2 << 20, 3.0);
    let start = Instant::now();
    let mut downloaded = 0;
    while start.elapsed() < Duration::from_secs(10) {
        let (_, body) = curl(&pki, &[&s.url("/metrics")]);
        downloaded = body
            .lines()
            .find_map(|l| l.strip_prefix("ferry_import_downloaded_bytes_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if downloaded >= 1 << 20 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(downloaded, 1 << 20, "the bytes received, in /metrics");
    let small = d.join("small.raw");
    std::fs::File::create(&small)
        .unwrap()
        .write_all(&[7u8; 4096])
        .unwrap();
    let (code, body) = curl(
        &pki,
        &[
            "-T",
            small.to_str().unwrap(),
            &s.url(&format!("/upload/{TOKEN}")),
        ],
    );
    assert_eq!(code, 503, "{body}");
    assert_eq!(body, "an upload is already in progress\n");
    let _ = first.wait(RUN_LIMIT);
    let (run, _) = s.end();
    run.failure(
        "the first upload broke off",
        &["after 1048576 of 2097152 bytes"],
    );
}
