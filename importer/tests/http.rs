//! HTTP(S) sources against real servers started here: nginx (Range support; HTTPS with a
//! test CA; redirects), python's http.server (no Range support), tinyproxy, and a small
//! python server that cuts responses mid-body. Every copy is compared with `cmp`
//! against `qemu-img convert -O raw` of the same image; failures are asserted by exit
//! code (their kind) and message.

mod common;

#[path = "../../vsphere/tests/support/proxy_peers.rs"]
mod proxy_peers;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;
use proxy_peers::{
    Peer, ca_and_server_cert, free_port, machine_host, nginx, tinyproxy, wait_for_port,
};

const MIB: usize = 1 << 20;

fn tools() -> bool {
    require(&[
        "nginx", "qemu-img", "python3", "gzip", "zstd", "openssl", "tar",
    ])
}

/// A web root holding a raw disk and the same disk as images and compressed files, with
/// each one's reference (`qemu-img convert -O raw`, or the raw disk).
struct Files {
    root: PathBuf,
    raw: PathBuf,
}

fn files(dir: &Path) -> Files {
    let root = dir.join("www");
    std::fs::create_dir_all(&root).unwrap();
    // 12 MiB + 4000 bytes: text, random bytes, zeroes, an odd tail.
    let raw = root.join("disk.raw");
    std::fs::write(&raw, ferry_test_kit::mixed_disk(4 * MIB, 3 * MIB, 12 * MIB)).unwrap();
    let r = raw.to_str().unwrap();
    let at = |n: &str| root.join(n).to_str().unwrap().to_string();
    sh(
        "qemu-img",
        &["convert", "-q", "-O", "qcow2", r, &at("disk.qcow2")],
    );
    sh(
        "qemu-img",
        &[
            "convert",
            "-q",
            "-c",
            "-O",
            "qcow2",
            "-o",
            "compression_type=zstd",
            r,
            &at("disk.zstd.qcow2"),
        ],
    );
    sh(
        "qemu-img",
        &[
            "convert",
            "-q",
            "-O",
            "vmdk",
            "-o",
            "subformat=streamOptimized",
            r,
            &at("disk.stream.vmdk"),
        ],
    );
    sh("gzip", &["-k", "-f", r]);
    sh("zstd", &["-q", "-f", r, "-o", &at("disk.raw.zst")]);
    // OVAs: the disk after a descriptor, as tar writes them.
    std::fs::write(root.join("vm.ovf"), "<Envelope/>").unwrap();
    for disk in ["disk.qcow2", "disk.raw"] {
        let ova = at(&format!("{disk}.ova"));
        let root_s = root.to_str().unwrap();
        sh(
            "tar",
            &["--format=ustar", "-cf", &ova, "-C", root_s, "vm.ovf", disk],
        );
    }
    Files { root, raw }
}

/// `qemu-img convert -O raw` of `img` (raw files are their own reference).
fn reference(img: &Path) -> PathBuf {
    let name = img.file_name().unwrap().to_str().unwrap();
    if let Some(inner) = name.strip_suffix(".ova") {
        return reference(&img.with_file_name(inner));
    }
    if name.contains(".raw") {
        return img.with_file_name("disk.raw");
    }
    let out = img.with_extension("ref");
    sh(
        "qemu-img",
        &[
            "convert",
            "-q",
            "-O",
            "raw",
            img.to_str().unwrap(),
            out.to_str().unwrap(),
        ],
    );
    out
}

fn check(url: &str, t: &Path, img: &Path, extra: &[&str], ctx: &str) {
    let _ = std::fs::remove_file(t);
    copy(url, t, "uring", extra).success(ctx);
    assert_identical(t, &reference(img), ctx);
}

/// The 206 and 200 answers in nginx's access log.
fn statuses(log: &Path) -> (usize, usize) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let n = |code: &str| {
        text.lines()
            .filter(|l| l.contains(&format!("\" {code} ")))
            .count()
    };
    (n("206"), n("200"))
}

#[test]
fn images_from_a_range_server_are_read_through_their_maps_over_http_and_https() {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let f = files(dir.path());
    let (ca, cert, key) = ca_and_server_cert(dir.path());
    let cas = dir.path().join("cas");
    std::fs::create_dir(&cas).unwrap();
    std::fs::copy(&ca, cas.join("ca.crt")).unwrap();
    let (_nginx, http, https) = nginx(
        dir.path(),
        &f.root,
        &cert,
        &key,
        "location = /old.qcow2 { return 302 /disk.zstd.qcow2; } \
         location = /moved { return 301 http://127.0.0.1:$server_port/disk.qcow2; } \
         location = /loop { return 302 /loop; }",
    );
    let t = dir.path().join("t.img");
    for name in [
        "disk.raw",
        "disk.raw.gz",
        "disk.raw.zst",
        "disk.qcow2",
        "disk.zstd.qcow2",
        "disk.qcow2.ova",
        "disk.stream.vmdk",
    ] {
        let img = f.root.join(name);
        check(
            &format!("http://127.0.0.1:{http}/{name}"),
            &t,
            &img,
            &[],
            name,
        );
    }
    // Progress counts the bytes downloaded: the whole raw file (plus the few bytes
    // sniffed), and of a compressed qcow2 what its map pointed at (each compressed
    // cluster's sectors, which may overlap the next one's: a little more than the file).
    for (name, whole) in [("disk.raw", true), ("disk.zstd.qcow2", false)] {
        let _ = std::fs::remove_file(&t);
        let r = copy(&format!("http://127.0.0.1:{http}/{name}"), &t, "uring", &[]);
        r.success(name);
        let stats: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
        let got = stats["bytes_downloaded"].as_u64().unwrap();
        let file = std::fs::metadata(f.root.join(name)).unwrap().len();
        if whole {
            assert!(
                (file..file + MIB as u64).contains(&got),
                "{name}: {got} downloaded of {file}"
            );
        } else {
            assert!(
                (file / 2..file + file / 16).contains(&got),
                "{name}: {got} downloaded of {file}"
            );
        }
    }
    let (ranged, whole) = statuses(&dir.path().join("access.log"));
    assert!(
        ranged > 10,
        "ranged GETs: {ranged} 206 answers, {whole} 200"
    );
    // Redirects, relative and absolute, are followed; a loop is not.
    let zq = f.root.join("disk.zstd.qcow2");
    check(
        &format!("http://127.0.0.1:{http}/old.qcow2"),
        &t,
        &zq,
        &[],
        "302",
    );
    check(
        &format!("http://127.0.0.1:{http}/moved"),
        &t,
        &f.root.join("disk.qcow2"),
        &[],
        "301",
    );
    let _ = std::fs::remove_file(&t);
    let r = copy(&format!("http://127.0.0.1:{http}/loop"), &t, "sync", &[]);
    r.failure("redirect loop", &["more than 10 redirects"]);
    assert!(!t.exists(), "no target for a redirect loop");
    // Not found: exit 5 (not_found).
    let r = copy(
        &format!("http://127.0.0.1:{http}/nothing.qcow2"),
        &t,
        "sync",
        &[],
    );
    r.failure("404", &["404"]);
    assert_eq!(r.status.code(), Some(5), "404 is not_found");
    // HTTPS: the test CA trusted with --http-ca-dir; without it the system roots do not
    // know the server (exit 4, authentication); --http-insecure accepts it.
    let url = format!("https://127.0.0.1:{https}/disk.zstd.qcow2");
    check(
        &url,
        &t,
        &zq,
        &["--http-ca-dir", cas.to_str().unwrap()],
        "https + CA",
    );
    let _ = std::fs::remove_file(&t);
    let r = copy(&url, &t, "sync", &[]);
    r.failure("https, unknown CA", &["TLS"]);
    assert_eq!(
        r.status.code(),
        Some(4),
        "an unknown CA is an authentication failure"
    );
    check(&url, &t, &zq, &["--http-insecure"], "https insecure");
}

#[test]
fn a_server_without_ranges_streams_what_streams_and_refuses_what_needs_a_map() {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let f = files(dir.path());
    let port = free_port();
    let child = Command::new("python3")
        .args(["-m", "http.server", "--bind", "127.0.0.1", "--directory"])
        .arg(&f.root)
        .arg(port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut peer = Peer(child);
    wait_for_port(port, &mut peer.0, "python3 -m http.server");
    let t = dir.path().join("t.img");
    for name in [
        "disk.raw",
        "disk.raw.gz",
        "disk.raw.zst",
        "disk.raw.ova",
        "disk.stream.vmdk",
    ] {
        check(
            &format!("http://127.0.0.1:{port}/{name}"),
            &t,
            &f.root.join(name),
            &[],
            name,
        );
    }
    let _ = std::fs::remove_file(&t);
    let r = copy(
        &format!("http://127.0.0.1:{port}/disk.qcow2"),
        &t,
        "sync",
        &[],
    );
    r.failure(
        "qcow2 without Range",
        &["holds a qcow2 image", "a scratch copy would be needed"],
    );
    assert_eq!(r.status.code(), Some(2), "a usage refusal");
    assert!(!t.exists(), "no target for a refused image");
    let r = copy(
        &format!("http://127.0.0.1:{port}/disk.qcow2.ova"),
        &t,
        "sync",
        &[],
    );
    r.failure(
        "qcow2 in an OVA without Range",
        &["member disk.qcow2", "a scratch copy would be needed"],
    );
    // Given a scratch directory, such images are staged there (and the file is gone
    // afterwards); one that is not a directory is a usage error.
    let scratch = dir.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let s = scratch.to_str().unwrap();
    for name in ["disk.qcow2", "disk.zstd.qcow2", "disk.qcow2.ova"] {
        check(
            &format!("http://127.0.0.1:{port}/{name}"),
            &t,
            &f.root.join(name),
            &["--scratch", s],
            &format!("{name} staged"),
        );
        assert_eq!(
            std::fs::read_dir(&scratch).unwrap().count(),
            0,
            "{name}: scratch left empty"
        );
    }
    let _ = std::fs::remove_file(&t);
    let r = copy(
        &format!("http://127.0.0.1:{port}/disk.qcow2"),
        &t,
        "sync",
        &["--scratch", f.raw.to_str().unwrap()],
    );
    r.failure("scratch not a dir", &["--scratch", "not a directory"]);
    assert_eq!(r.status.code(), Some(2));
}

/// A python server that answers ranges (`ranges`) or not (`plain`) and cuts every
/// third response (or, `plain`, the first) after half its body; or (`expire`) answers
/// ranges whole but refuses the sixth request with 403, as an expired signed URL or
/// registry token is refused.
const CUTTING_SERVER: &str = r#"
import http.server, os, socket, sys
root, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
count = [0]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a):
        pass
    def do_GET(self):
        data = open(os.path.join(root, self.path.lstrip("/")), "rb").read()
        rng = self.headers.get("Range")
        count[0] += 1
        if mode == "expire" and count[0] == 6:
            self.send_response(403)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if mode in ("ranges", "expire") and rng and rng.startswith("bytes="):
            a, b = rng[6:].split("-")
            a = int(a)
            b = min(int(b) if b else len(data) - 1, len(data) - 1)
            body = data[a:b + 1]
            self.send_response(206)
            self.send_header("Content-Range", "bytes %d-%d/%d" % (a, b, len(data)))
        else:
            body = data
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = count[0] == 1 if mode == "plain" else (mode == "ranges" and count[0] % 3 == 0)
        if cut and len(body) > 1:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(body)
http.server.ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
"#;

fn cutting_server(dir: &Path, root: &Path, mode: &str) -> (Peer, u16) {
    let script = dir.join(format!("cut-{mode}.py"));
    std::fs::write(&script, CUTTING_SERVER).unwrap();
    let port = free_port();
    let child = Command::new("python3")
        .arg(&script)
        .arg(root)
        .arg(port.to_string())
        .arg(mode)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut peer = Peer(child);
    wait_for_port(port, &mut peer.0, "the cutting server");
    (peer, port)
}

#[test]
fn a_refusal_after_the_url_was_opened_opens_it_again_and_the_copy_goes_on() {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let f = files(dir.path());
    let t = dir.path().join("t.img");
    let (_srv, port) = cutting_server(dir.path(), &f.root, "expire");
    let url = format!("http://127.0.0.1:{port}/disk.raw");
    let r = copy(
        &url,
        &t,
        "sync",
        &["--buf-size-in-64k", "1", "--http-connections", "1"],
    );
    let v = r.success("403 mid-copy");
    assert!(num(&v, "retries") >= 1, "the refusal was retried: {v}");
    assert!(
        r.stderr.contains("expired token or signed URL"),
        "{}",
        r.stderr
    );
    assert_identical(&t, &f.root.join("disk.raw"), "403 mid-copy");
}

#[test]
fn a_dropped_connection_resumes_at_its_byte_with_ranges_and_fails_without() {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let f = files(dir.path());
    let t = dir.path().join("t.img");
    {
        let (_srv, port) = cutting_server(dir.path(), &f.root, "ranges");
        for name in ["disk.qcow2", "disk.zstd.qcow2", "disk.raw"] {
            check(
                &format!("http://127.0.0.1:{port}/{name}"),
                &t,
                &f.root.join(name),
                &[],
                &format!("{name}, every third response cut"),
            );
        }
    }
    let (_srv, port) = cutting_server(dir.path(), &f.root, "plain");
    let _ = std::fs::remove_file(&t);
    let r = copy(
        &format!("http://127.0.0.1:{port}/disk.raw.gz"),
        &t,
        "sync",
        &[],
    );
    let line = r.failure("a cut body without ranges", &["disk.raw.gz"]);
    assert!(
        line.contains("cannot resume") || line.contains("ended after"),
        "{line}"
    );
}

#[test]
fn images_come_through_a_proxy() {
    if !tools() || !require(&["tinyproxy"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let f = files(dir.path());
    let (_, cert, key) = ca_and_server_cert(dir.path());
    let (_nginx, http, _) = nginx(dir.path(), &f.root, &cert, &key, "");
    let pdir = dir.path().join("tinyproxy");
    std::fs::create_dir(&pdir).unwrap();
    let (_proxy, pport) = tinyproxy(&pdir, "");
    let (host, ip) = machine_host();
    assert!(
        ip.is_loopback(),
        "{host} resolves to {ip}: this test needs a loopback address"
    );
    let t = dir.path().join("t.img");
    let url = format!("http://{host}:{http}/disk.zstd.qcow2");
    let mut c = copy_cmd(&url, &t, &["--io-engine", "sync"]);
    c.env("http_proxy", format!("http://127.0.0.1:{pport}"))
        .env_remove("no_proxy")
        .env_remove("NO_PROXY");
    run(c, RUN_LIMIT).success("through tinyproxy");
    assert_identical(
        &t,
        &reference(&f.root.join("disk.zstd.qcow2")),
        "through tinyproxy",
    );
    let log = std::fs::read_to_string(pdir.join("tinyproxy.log")).unwrap_or_default();
    assert!(log.contains(&format!("GET {url}")), "{log}");
}

/// `sha256sum FILE` (an independent hash).
fn sha256sum(p: &Path) -> String {
    let out = sh("sha256sum", &[p.to_str().unwrap()]);
    out.split_whitespace().next().unwrap().to_string()
}

#[test]
fn a_checksum_covers_the_downloaded_bytes_and_a_mismatch_fails_the_copy() {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let f = files(dir.path());
    let (_, cert, key) = ca_and_server_cert(dir.path());
    let (_nginx, http, _) = nginx(dir.path(), &f.root, &cert, &key, "");
    let t = dir.path().join("t.img");
    for name in ["disk.zstd.qcow2", "disk.raw.gz", "disk.raw"] {
        let img = f.root.join(name);
        let good = format!("sha256:{}", sha256sum(&img));
        for src in [
            format!("http://127.0.0.1:{http}/{name}"),
            img.to_str().unwrap().to_string(),
        ] {
            check(
                &src,
                &t,
                &img,
                &["--checksum", &good],
                &format!("{src} {good}"),
            );
            let _ = std::fs::remove_file(&t);
            let bad = format!("sha256:{}", "0".repeat(64));
            let r = copy(&src, &t, "sync", &["--checksum", &bad]);
            let line = r.failure(&src, &["checksum mismatch", &bad, &good["sha256:".len()..]]);
            assert_eq!(
                r.status.code(),
                Some(6),
                "a mismatch is source_data: {line}"
            );
        }
    }
    let r = copy(
        &f.raw.to_string_lossy(),
        &t,
        "sync",
        &["--checksum", "sha256:12"],
    );
    r.failure("a short checksum", &["expected 64 hex characters"]);
    assert_eq!(r.status.code(), Some(2));
}
