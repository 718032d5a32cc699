//! Real, independent container registries for the registry source's tests, and test
//! images built and pushed to them. Included with `#[path]`:
//!
//! ```ignore
//! #[path = "support/registry.rs"]
//! mod registry;
//! use registry::{Auth, Compression, Format, Image, Index, Layer, Options, Registry};
//!
//! let Some(reg) = Registry::start(Options { tls: true, auth: Auth::Token }) else {
//!     return; // a tool is missing: a loud SKIP was printed (a failure with FERRY_REQUIRE_TOOLS=1)
//! };
//! let img = Image::new() // linux/amd64
//!     .env("PATH=/usr/bin")
//!     .label("org.example.disk", "cirros")
//!     .layer(
//!         Layer::new(Compression::Gzip)
//!             .owner(107, 107)
//!             .dir("disk/", 0o555)
//!             .file("disk/disk.qcow2", &qcow2_path, 0o440), // streamed: may be a huge sparse file
//!     );
//! let pushed = reg.push(&img, "disks/cirros:1.0");
//! pushed.reference();        // "docker://127.0.0.1:PORT/disks/cirros:1.0"
//! pushed.digest_reference(); // "docker://127.0.0.1:PORT/disks/cirros@sha256:…"
//! pushed.digest;             // the manifest's digest, as the registry stores it
//! pushed.raw;                // the manifest's bytes, read back with `skopeo inspect --raw`
//! pushed.layers()[0].digest; // the layer blob's digest (also pushed.built.images[0].layers)
//! reg.ca_pem();              // Some(CA that signed the registry's cert) with tls
//! reg.credentials();         // Some(("ferry", "…")) with Basic and Token auth
//! reg.corrupt_blob(&pushed.layers()[0].digest); // same length, wrong bytes
//! ```
//!
//! # Peers
//!
//! * **Registry**: Debian's `docker-registry` (distribution 2.8) with a generated
//!   `config.yml` in a tempdir: filesystem storage there, `http.addr` 127.0.0.1 on a free
//!   port, delete enabled, no cache, no redis, no upload purging, no health checks, no
//!   `REGISTRY_*` overrides from the environment. Ready once `GET /v2/` answers (200, or
//!   401 with auth). SIGTERM then SIGKILL (after 3 s) on drop.
//! * [`Options::tls`]: `http.tls` with a server certificate for `127.0.0.1`, `::1` and
//!   `localhost` signed by a test CA ([`Registry::ca_pem`]), made by `openssl` once per
//!   test process (RSA 2048 keygen is slow on a busy machine) and copied into each
//!   registry's tempdir: every registry of one test binary shares the CA.
//! * [`Auth::Basic`]: `auth.htpasswd` with a bcrypt file from `htpasswd -Bbn`.
//! * [`Auth::Token`], [`Auth::TokenAnonymousPull`]: `auth.token` (realm, service,
//!   issuer, rootcertbundle) with `tests/registry/token_server.py` (Python stdlib; RS256
//!   JWTs signed by `openssl dgst`, the signing certificate in the `x5c` header and in
//!   the registry's `rootcertbundle`) on a free loopback port, HTTPS with `tls`. Its
//!   requests are logged ([`Registry::token_requests`]).
//!
//! # Images
//!
//! [`Image`] (one manifest) and [`Index`] (an OCI image index of several) are written
//! as an OCI image layout ([`Layout`]: `oci-layout`, `index.json`, `blobs/sha256/…`) by
//! [`Image::build`] / [`Index::build`], or by [`Registry::push`] in the registry's
//! tempdir. A [`Layer`]'s tar is written by the `tar` crate (an independent tar writer)
//! in [`TarFormat::Pax`] (ustar headers and PAX records, as Go's archive/tar writes
//! them) or [`TarFormat::Gnu`], through flate2 or zstd ([`Compression`]); regular files
//! are streamed from their path, never read whole, and the digests (blob and
//! `diff_id`) are computed by `openssl dgst` fed through a pipe (the sha2 crate is
//! ~30 MB/s in a debug build): a 4 GiB sparse disk builds in ~13 s (zstd) / ~19 s
//! (gzip). Entry names are written as given
//! (a trailing `/` on directories, `./`, even `..` or absolute names for hostile tests).
//! Every mtime is fixed, so the same image always has the same digests.
//!
//! # Pushing
//!
//! `skopeo copy oci:LAYOUT:TAG docker://127.0.0.1:PORT/REPO:TAG` (with `--all` for an
//! index), with `--preserve-digests` for [`Format::Oci`] so the registry stores exactly
//! the layout's manifest, or `--format v2s2` for [`Format::Docker`] (skopeo rewrites the
//! manifest's and index's media types to Docker's and keeps every blob; zstd layers
//! cannot be converted). The manifest is then read back with `skopeo inspect --raw`
//! ([`Pushed::raw`]) and checked against what was asked for.
//!
//! # Checks from outside
//!
//! [`Registry::curl`] (a curl command with the URL, CA and authorization set: basic
//! credentials, or a bearer token fetched from the token server for the path's
//! repository), [`Registry::get`] / [`Registry::get_unauthenticated`] ([`Response`]:
//! status, headers, body), [`Registry::bearer_token`], [`Registry::skopeo_inspect`],
//! [`Registry::skopeo_inspect_raw`], [`Registry::blob_path`],
//! [`Registry::overwrite_blob`], [`Registry::log`], [`Registry::token_requests`].
//!
//! # What distribution 2.8 does (pinned by `registry_peers.rs`)
//!
//! * An OCI manifest or index is served only to a client whose `Accept` names its
//!   media type: otherwise 404 `MANIFEST_UNKNOWN` ("OCI manifest found, but accept
//!   header does not support OCI manifests"), by tag and by digest alike.
//! * A Docker schema 2 manifest asked for *by tag* without its type in `Accept` is
//!   rewritten to a signed schema 1 (`…manifest.v1+prettyjws`); a Docker manifest list
//!   by tag to a client that accepts only schema 2 manifests is answered with the
//!   linux/amd64 manifest (its own `Docker-Content-Digest`). By digest: as stored.
//! * Blobs honour `Range` (206, `Content-Range`; several ranges: multipart/byteranges);
//!   an unsatisfiable range is 416 with the blob's full `Content-Length` but a short
//!   text body, so the connection closes early ([`Response::curl_error`]).
//! * Token auth: `aud` must be a string equal to `service` (2.8 has no audience
//!   lists), 60 s leeway on `exp`/`nbf`; the key comes from `x5c` (chain verified
//!   against `rootcertbundle`), else `jwk`, else `kid` (a libtrust fingerprint of a
//!   bundle certificate's key). `GET /v2/` needs a token with no access at all.

#![allow(dead_code)]

use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use ferry_test_kit::{free_port, next_id, run_ok};

/// The user name of [`Auth::Basic`] and [`Auth::Token`].
pub const USER: &str = "ferry";
/// Its password.
pub const PASSWORD: &str = "s3cret-Pa55";
/// The token auth `service` (the JWT's `aud`).
pub const SERVICE: &str = "ferry-test-registry";
/// The token auth `issuer` (the JWT's `iss`).
pub const ISSUER: &str = "ferry-test-token-issuer";
/// The mtime of every tar entry (2023-11-14).
pub const MTIME: u64 = 1_700_000_000;
/// How long the registry or the token server may take to come up.
pub const START_WAIT: Duration = Duration::from_secs(15);

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Every manifest media type, for an `Accept` header.
pub const ACCEPT_ALL: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.docker.distribution.manifest.v2+json";

// ---------------------------------------------------------------------------------------
// Registry

/// How the registry authenticates clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Auth {
    /// Anonymous access to everything.
    #[default]
    None,
    /// `auth.htpasswd`: HTTP basic auth with [`USER`]/[`PASSWORD`] (bcrypt).
    Basic,
    /// `auth.token`: bearer tokens from the test token server, which wants
    /// [`USER`]/[`PASSWORD`] as basic credentials on the realm request.
    Token,
    /// [`Auth::Token`], but the token server also gives anonymous clients a token that
    /// allows `pull` (Docker Hub's public repositories).
    TokenAnonymousPull,
}

/// What [`Registry::start`] starts.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// HTTPS with a certificate signed by a test CA ([`Registry::ca_pem`]); the token
    /// server too.
    pub tls: bool,
    pub auth: Auth,
}

/// A child process stopped on drop: SIGTERM, then SIGKILL after 3 s.
struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running `docker-registry` (and token server), stopped on drop; its tempdir (with
/// its storage) removed after.
pub struct Registry {
    // Fields drop in order: the processes first, then their directory.
    registry: Peer,
    token_server: Option<Peer>,
    port: u16,
    token_port: Option<u16>,
    opts: Options,
    ca: Option<PathBuf>,
    /// How long the start took (certificates, config, processes, readiness).
    pub started_in: Duration,
    dir: tempfile::TempDir,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("host", &self.host())
            .field("opts", &self.opts)
            .field("token_port", &self.token_port)
            .field("dir", &self.dir.path())
            .finish()
    }
}

/// The tools a registry with `opts` needs.
pub fn tools(opts: Options) -> Vec<&'static str> {
    // openssl: certificates, token signatures, and the layers' digests.
    let mut t = vec!["docker-registry", "skopeo", "curl", "openssl"];
    match opts.auth {
        Auth::None => {}
        Auth::Basic => t.push("htpasswd"),
        Auth::Token | Auth::TokenAnonymousPull => t.push("python3"),
    }
    t
}

fn openssl(dir: &Path, args: &[&str]) {
    run_ok(Command::new("openssl").args(args).current_dir(dir));
}

/// The test PKI, made once per test process by openssl (RSA keys take a while on a busy
/// machine): a CA, a server certificate signed by it for `127.0.0.1`, `::1` and
/// `localhost`, and a self-signed token-signing certificate. PEM texts, by file name.
fn pki() -> &'static [(&'static str, String)] {
    static PKI: std::sync::OnceLock<Vec<(&'static str, String)>> = std::sync::OnceLock::new();
    PKI.get_or_init(|| {
        let tmp = tempfile::tempdir().expect("tempdir");
        let d = tmp.path();
        let rsa = ["-newkey", "rsa:2048", "-nodes"];
        let days = ["-days", "7"];
        openssl(
            d,
            &[
                &["req", "-x509"][..],
                &rsa,
                &["-keyout", "ca.key", "-out", "ca.crt"],
                &["-subj", "/CN=ferry registry test CA"],
                &days,
            ]
            .concat(),
        );
        openssl(
            d,
            &[
                &["req"][..],
                &rsa,
                &["-keyout", "server.key", "-out", "server.csr"],
                &["-subj", "/CN=127.0.0.1"],
            ]
            .concat(),
        );
        std::fs::write(
            d.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(
            d,
            &[
                &[
                    "x509",
                    "-req",
                    "-in",
                    "server.csr",
                    "-CA",
                    "ca.crt",
                    "-CAkey",
                    "ca.key",
                ][..],
                &[
                    "-CAcreateserial",
                    "-out",
                    "server.crt",
                    "-extfile",
                    "server.ext",
                ],
                &days,
            ]
            .concat(),
        );
        // The JWT signer: its certificate goes into the token's x5c header and the
        // registry's rootcertbundle.
        openssl(
            d,
            &[
                &["req", "-x509"][..],
                &rsa,
                &["-keyout", "signer.key", "-out", "signer.crt"],
                &["-subj", "/CN=ferry registry test token signer"],
                &days,
            ]
            .concat(),
        );
        [
            "ca.key",
            "ca.crt",
            "server.key",
            "server.crt",
            "signer.key",
            "signer.crt",
        ]
        .into_iter()
        .map(|f| (f, std::fs::read_to_string(d.join(f)).unwrap()))
        .collect()
    })
}

/// Write the test PKI's files into `dir`, and `dir/certs.d/ca.crt` (skopeo's
/// `--cert-dir`: every `*.crt` there is a CA).
fn write_pki(dir: &Path) {
    for (name, pem) in pki() {
        std::fs::write(dir.join(name), pem).unwrap();
    }
    std::fs::create_dir_all(dir.join("certs.d")).unwrap();
    std::fs::copy(dir.join("ca.crt"), dir.join("certs.d/ca.crt")).unwrap();
}

fn wait_for_file(path: &Path, child: &mut Child, what: &str, log: &Path) {
    let deadline = Instant::now() + START_WAIT;
    while !path.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "{what} exited early: {status}\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The token server's script, in the repository.
pub fn token_server_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/registry/token_server.py")
}

impl Registry {
    /// Start a registry; `None` after a loud skip when a tool is missing (a failure
    /// with `FERRY_REQUIRE_TOOLS=1`).
    pub fn start(opts: Options) -> Option<Registry> {
        if !ferry_test_kit::require_in("ferry", &tools(opts)) {
            return None;
        }
        let t0 = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("ferry-registry-")
            .tempdir()
            .expect("tempdir");
        let d = dir.path();
        std::fs::create_dir_all(d.join("storage")).unwrap();
        std::fs::create_dir_all(d.join("tmp")).unwrap();
        if opts.tls || matches!(opts.auth, Auth::Token | Auth::TokenAnonymousPull) {
            write_pki(d);
        }
        let scheme = if opts.tls { "https" } else { "http" };

        let mut auth_yaml = String::new();
        let mut token_server = None;
        let mut token_port = None;
        match opts.auth {
            Auth::None => {}
            Auth::Basic => {
                let line = run_ok(Command::new("htpasswd").args(["-Bbn", USER, PASSWORD]));
                std::fs::write(d.join("htpasswd"), line.trim_end().to_string() + "\n").unwrap();
                auth_yaml = format!(
                    "auth:\n  htpasswd:\n    realm: ferry-test-realm\n    path: {}\n",
                    d.join("htpasswd").display()
                );
            }
            Auth::Token | Auth::TokenAnonymousPull => {
                let port_file = d.join("token.port");
                let log = d.join("token.stderr");
                let mut cmd = Command::new("python3");
                cmd.arg(token_server_script())
                    .args(["--key", "signer.key", "--cert", "signer.crt"])
                    .args(["--issuer", ISSUER, "--service", SERVICE])
                    .args(["--user", USER, "--password", PASSWORD])
                    .arg("--port-file")
                    .arg(&port_file)
                    .arg("--log")
                    .arg(d.join("token.log"));
                if opts.tls {
                    cmd.args(["--tls-cert", "server.crt", "--tls-key", "server.key"]);
                }
                if opts.auth == Auth::TokenAnonymousPull {
                    cmd.arg("--anonymous-pull");
                }
                // A Peer at once, so that a failed start does not leave it running.
                let mut peer = Peer(
                    cmd.current_dir(d)
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(File::create(&log).unwrap())
                        .spawn()
                        .expect("start tests/registry/token_server.py"),
                );
                wait_for_file(&port_file, &mut peer.0, "token_server.py", &log);
                let port: u16 = std::fs::read_to_string(&port_file)
                    .unwrap()
                    .trim()
                    .parse()
                    .expect("token server port");
                token_server = Some(peer);
                token_port = Some(port);
                auth_yaml = format!(
                    "auth:\n  token:\n    realm: {scheme}://127.0.0.1:{port}/token\n    \
                     service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
                    d.join("signer.crt").display()
                );
            }
        }

        // A free port can be taken between our probe and the registry's bind: try again.
        let mut attempt = 0;
        let (registry, port) = loop {
            attempt += 1;
            let port = free_port();
            let tls_yaml = if opts.tls {
                format!(
                    "  tls:\n    certificate: {}\n    key: {}\n",
                    d.join("server.crt").display(),
                    d.join("server.key").display()
                )
            } else {
                String::new()
            };
            let config = format!(
                "version: 0.1\n\
                 log:\n  level: info\n  formatter: text\n\
                 storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n  \
                 maintenance:\n    uploadpurging:\n      enabled: false\n  redirect:\n    disable: true\n\
                 http:\n  addr: 127.0.0.1:{port}\n  secret: ferry-test-http-secret\n{tls_yaml}\
                 health:\n  storagedriver:\n    enabled: false\n\
                 {auth_yaml}",
                storage = d.join("storage").display(),
            );
            std::fs::write(d.join("config.yml"), config).unwrap();
            let log = d.join("registry.log");
            let mut cmd = Command::new("docker-registry");
            cmd.arg("serve").arg(d.join("config.yml"));
            for (k, _) in std::env::vars_os() {
                if k.to_string_lossy().starts_with("REGISTRY_") {
                    cmd.env_remove(k);
                }
            }
            let mut peer = Peer(
                cmd.stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(File::create(&log).unwrap())
                    .spawn()
                    .expect("start docker-registry (scripts/setup.sh installs it)"),
            );
            let deadline = Instant::now() + START_WAIT;
            let mut exited = None;
            while !ferry_test_kit::listening(port) {
                if let Some(st) = peer.0.try_wait().unwrap() {
                    exited = Some(st);
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "docker-registry did not listen on {port}"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            match exited {
                None => break (peer, port),
                Some(st) => {
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    if text.contains("address already in use") && attempt < 5 {
                        continue;
                    }
                    panic!("docker-registry exited early: {st}\n{text}");
                }
            }
        };
        let reg = Registry {
            registry,
            token_server,
            port,
            token_port,
            opts,
            ca: opts.tls.then(|| d.join("ca.crt")),
            started_in: Duration::ZERO,
            dir,
        };
        // Ready once GET /v2/ answers as a registry does.
        let r = reg.get_unauthenticated("/v2/", &[]);
        assert!(
            r.status == 200 || (r.status == 401 && opts.auth != Auth::None),
            "GET /v2/ answered {}: {}\n{}",
            r.status,
            String::from_utf8_lossy(&r.body),
            reg.log()
        );
        assert_eq!(
            r.header("docker-distribution-api-version"),
            Some("registry/2.0"),
            "GET /v2/ is not a registry's answer: {r:?}"
        );
        Some(Registry {
            started_in: t0.elapsed(),
            ..reg
        })
    }

    /// `127.0.0.1:PORT`, as in image references.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn options(&self) -> Options {
        self.opts
    }

    /// `http://127.0.0.1:PORT` or `https://…`.
    pub fn url(&self) -> String {
        let scheme = if self.opts.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.host())
    }

    /// `docker://127.0.0.1:PORT/REFERENCE` (REFERENCE: `repo:tag` or `repo@digest`).
    pub fn reference(&self, reference: &str) -> String {
        format!("docker://{}/{reference}", self.host())
    }

    /// The PEM file of the CA that signed the registry's (and token server's)
    /// certificate, with [`Options::tls`].
    pub fn ca_pem(&self) -> Option<&Path> {
        self.ca.as_deref()
    }

    /// `(user, password)` with [`Auth::Basic`] and the token modes.
    pub fn credentials(&self) -> Option<(&'static str, &'static str)> {
        (self.opts.auth != Auth::None).then_some((USER, PASSWORD))
    }

    /// The token server's realm URL, with the token modes.
    pub fn realm(&self) -> Option<String> {
        let scheme = if self.opts.tls { "https" } else { "http" };
        self.token_port
            .map(|p| format!("{scheme}://127.0.0.1:{p}/token"))
    }

    /// The registry's tempdir (config.yml, registry.log, storage/, certificates).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The registry's filesystem storage root.
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// The registry's log so far (its stderr: one line per request).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// The token server's requests so far, one JSON object each: method, path, params
    /// (query or form, without a password), user (`""` anonymous), status, access.
    pub fn token_requests(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("token.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("token log line"))
            .collect()
    }

    /// Where the registry keeps blob `digest` (`sha256:…`).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("a sha256: digest");
        self.storage()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Change bytes of blob `digest` in the registry's storage, in place and keeping
    /// its length, so that the registry serves bytes that do not match the digest:
    /// every byte of the 16 in its middle is inverted (fewer for a shorter blob).
    pub fn corrupt_blob(&self, digest: &str) {
        let path = self.blob_path(digest);
        let mut data = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("blob {digest} is not in the storage ({e})"));
        let mid = data.len() / 2;
        let (from, to) = (mid.saturating_sub(8), (mid + 8).min(data.len()));
        for b in &mut data[from..to] {
            *b = !*b;
        }
        self.overwrite_blob(digest, from as u64, &data[from..to]);
    }

    /// Overwrite `bytes` at `offset` of blob `digest` in the registry's storage.
    pub fn overwrite_blob(&self, digest: &str, offset: u64, bytes: &[u8]) {
        use std::os::unix::fs::FileExt;
        let path = self.blob_path(digest);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        let len = f.metadata().unwrap().len();
        assert!(offset + bytes.len() as u64 <= len, "past the blob's end");
        f.write_all_at(bytes, offset).unwrap();
    }

    fn skopeo(&self) -> Command {
        let d = self.dir.path();
        let mut c = Command::new("skopeo");
        // No machine configuration: no policy, auth file or registries.conf of the host.
        c.env("REGISTRY_AUTH_FILE", d.join("auth.json"))
            .env("CONTAINERS_REGISTRIES_CONF", d.join("registries.conf"))
            .env("TMPDIR", d.join("tmp"))
            .arg("--insecure-policy")
            .arg("--tmpdir")
            .arg(d.join("tmp"));
        if !d.join("registries.conf").exists() {
            std::fs::write(d.join("registries.conf"), "").unwrap();
        }
        c
    }

    /// skopeo's options for this registry on one side of a copy (`prefix`: "src-",
    /// "dest-", or "" for inspect).
    pub fn skopeo_args(&self, prefix: &str) -> Vec<String> {
        let mut a = Vec::new();
        if self.opts.tls {
            a.push(format!("--{prefix}cert-dir"));
            a.push(self.dir.path().join("certs.d").display().to_string());
        } else {
            a.push(format!("--{prefix}tls-verify=false"));
        }
        match self.credentials() {
            Some((u, p)) => {
                a.push(format!("--{prefix}creds"));
                a.push(format!("{u}:{p}"));
            }
            None => a.push(format!("--{prefix}no-creds")),
        }
        a
    }

    /// Push `what` (an [`Image`], [`Index`] or built [`Layout`]) as `repo_tag`
    /// (`REPO:TAG`), unchanged: the registry stores the layout's own manifest (or index
    /// and manifests), digests preserved.
    pub fn push(&self, what: &impl ToLayout, repo_tag: &str) -> Pushed {
        self.push_as(what, repo_tag, Format::Oci)
    }

    /// [`Registry::push`] in `format`.
    pub fn push_as(&self, what: &impl ToLayout, repo_tag: &str, format: Format) -> Pushed {
        let layout = what.to_layout(&self.dir.path().join(format!("layout-{}", next_id())));
        let zstd = layout
            .built
            .images
            .iter()
            .flat_map(|i| &i.layers)
            .any(|l| l.compression == Compression::Zstd);
        assert!(
            !(format == Format::Docker && zstd),
            "a zstd layer cannot be pushed as Docker v2s2 (skopeo: zstd compression is not \
             supported for docker images)"
        );
        let (repo, tag) = repo_tag
            .rsplit_once(':')
            .filter(|(r, _)| !r.is_empty())
            .unwrap_or_else(|| panic!("{repo_tag:?} is not REPO:TAG"));
        let digestfile = self.dir.path().join(format!("digest-{}", next_id()));
        let mut c = self.skopeo();
        c.args(["copy", "--quiet", "--retry-times", "0"]);
        if layout.built.is_index() {
            c.arg("--all");
        }
        match format {
            Format::Oci => c.arg("--preserve-digests"),
            // Not with --preserve-digests: skopeo 1.9 then silently keeps OCI.
            Format::Docker => c.args(["--format", "v2s2"]),
        };
        c.arg("--digestfile")
            .arg(&digestfile)
            .args(self.skopeo_args("dest-"))
            .arg(format!("oci:{}:{}", layout.dir.display(), layout.tag))
            .arg(self.reference(repo_tag));
        let t0 = Instant::now();
        run_ok(&mut c);
        let push_took = t0.elapsed();
        let digest = std::fs::read_to_string(&digestfile)
            .expect("skopeo --digestfile")
            .trim()
            .to_string();
        let raw = self.skopeo_inspect_raw(&format!("{repo}@{digest}"));
        let pushed = Pushed {
            host: self.host(),
            repo: repo.to_string(),
            tag: tag.to_string(),
            digest,
            raw,
            format,
            built: layout.built,
            push_took,
        };
        pushed.check();
        pushed
    }

    /// `skopeo inspect --raw docker://HOST/REFERENCE`: the manifest (or index) bytes the
    /// registry serves.
    pub fn skopeo_inspect_raw(&self, reference: &str) -> String {
        let mut c = self.skopeo();
        c.args(["inspect", "--raw", "--retry-times", "0"])
            .args(self.skopeo_args(""))
            .arg(self.reference(reference));
        run_ok(&mut c)
    }

    /// `skopeo inspect [EXTRA…] docker://HOST/REFERENCE`, parsed.
    pub fn skopeo_inspect(&self, reference: &str, extra: &[&str]) -> serde_json::Value {
        let mut c = self.skopeo();
        c.args(["inspect", "--retry-times", "0"])
            .args(extra)
            .args(self.skopeo_args(""))
            .arg(self.reference(reference));
        serde_json::from_str(&run_ok(&mut c)).expect("skopeo inspect prints JSON")
    }

    /// A bearer token from the token server for `scope` (e.g. `repository:r:pull`;
    /// `""`: none), asked for with the test credentials (or anonymously). Token modes
    /// only.
    pub fn bearer_token(&self, scope: &str, anonymous: bool) -> String {
        let realm = self.realm().expect("a token mode");
        let mut url = format!("{realm}?service={SERVICE}");
        if !scope.is_empty() {
            url.push_str("&scope=");
            url.push_str(scope);
        }
        let mut c = self.curl_base();
        if !anonymous {
            c.args(["-u", &format!("{USER}:{PASSWORD}")]);
        }
        c.args(["--fail-with-body", &url]);
        let body = run_ok(&mut c);
        let v: serde_json::Value = serde_json::from_str(&body).expect("token JSON");
        v["token"].as_str().expect("token").to_string()
    }

    fn curl_base(&self) -> Command {
        let mut c = Command::new("curl");
        c.args(["-sS", "--max-time", "60", "--noproxy", "*"]);
        if let Some(ca) = self.ca_pem() {
            c.arg("--cacert").arg(ca);
        }
        c
    }

    /// curl for `GET URL/PATH` (PATH: `/v2/…`) with the CA and the authorization the
    /// registry wants (basic credentials, or a bearer token for the path's repository:
    /// `pull`, or `registry:catalog:*` for `/v2/_catalog`). Add e.g. `-o FILE`, `-H`,
    /// `-D -`.
    pub fn curl(&self, path: &str) -> Command {
        let mut c = self.curl_base();
        match self.opts.auth {
            Auth::None => {}
            Auth::Basic => {
                c.args(["-u", &format!("{USER}:{PASSWORD}")]);
            }
            Auth::Token | Auth::TokenAnonymousPull => {
                let token = self.bearer_token(&scope_for(path), false);
                c.args(["-H", &format!("Authorization: Bearer {token}")]);
            }
        }
        c.arg(format!("{}{path}", self.url()));
        c
    }

    /// `GET PATH` with `headers` (e.g. `Accept: …`, `Range: …`), authorized as
    /// [`Registry::curl`] does.
    pub fn get(&self, path: &str, headers: &[&str]) -> Response {
        self.fetch(self.curl(path), headers)
    }

    /// `GET PATH` without any authorization.
    pub fn get_unauthenticated(&self, path: &str, headers: &[&str]) -> Response {
        let mut c = self.curl_base();
        c.arg(format!("{}{path}", self.url()));
        self.fetch(c, headers)
    }

    fn fetch(&self, mut c: Command, headers: &[&str]) -> Response {
        let id = next_id();
        let (hfile, bfile) = (
            self.dir.path().join(format!("curl-{id}.headers")),
            self.dir.path().join(format!("curl-{id}.body")),
        );
        for h in headers {
            c.args(["-H", h]);
        }
        c.arg("-D").arg(&hfile).arg("-o").arg(&bfile);
        c.args(["-w", "%{http_code}"]);
        let out = c
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {c:?}: {e}"));
        let status: u16 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        // A transfer cut short after the head (distribution's 416 says a Content-Length
        // it does not send) still has a status; no status at all is a failure.
        assert!(
            status != 0,
            "{c:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let curl_error = (!out.status.success())
            .then(|| String::from_utf8_lossy(&out.stderr).trim().to_string());
        let head = std::fs::read_to_string(&hfile).unwrap_or_default();
        let body = std::fs::read(&bfile).unwrap_or_default();
        let _ = std::fs::remove_file(&hfile);
        let _ = std::fs::remove_file(&bfile);
        let headers = head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Response {
            status,
            headers,
            body,
            curl_error,
        }
    }
}

/// The token scope for a registry path.
fn scope_for(path: &str) -> String {
    let p = path.split('?').next().unwrap_or("");
    if p.starts_with("/v2/_catalog") {
        return "registry:catalog:*".into();
    }
    let Some(rest) = p.strip_prefix("/v2/") else {
        return String::new();
    };
    for kind in ["/manifests/", "/blobs/", "/tags/"] {
        if let Some(i) = rest.rfind(kind) {
            return format!("repository:{}:pull", &rest[..i]);
        }
    }
    String::new()
}

/// An HTTP answer read by curl.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Names lowercased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// curl's complaint when it exited non-zero after a status line (e.g. `curl: (18)
    /// transfer closed with N bytes remaining to read`).
    pub curl_error: Option<String>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `len` pseudo-random bytes from `seed` (xorshift): test disks whose bytes differ.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[3]
        })
        .collect()
}

/// `sha256:HEX` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

// ---------------------------------------------------------------------------------------
// Pushed images

/// The manifest format a push stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The layout's OCI manifests and index, byte for byte (`--preserve-digests`).
    Oci,
    /// Docker schema 2 (`skopeo --format v2s2`): manifest
    /// `application/vnd.docker.distribution.manifest.v2+json`, index → manifest list,
    /// config `…container.image.v1+json`, layers `…rootfs.diff.tar.gzip` (or `.tar`);
    /// the blobs themselves unchanged. zstd layers cannot be converted (skopeo fails).
    Docker,
}

/// What a push stored.
#[derive(Debug, Clone)]
pub struct Pushed {
    /// `127.0.0.1:PORT`.
    pub host: String,
    pub repo: String,
    pub tag: String,
    /// The digest of the manifest (or index) the tag names, as the registry stores it.
    pub digest: String,
    /// Its bytes, read back with `skopeo inspect --raw`.
    pub raw: String,
    pub format: Format,
    /// What was built (the OCI layout's view; with [`Format::Docker`] the blobs are the
    /// same but the manifests differ: see [`Pushed::raw`] and [`Pushed::manifest_of`]).
    pub built: Built,
    /// How long skopeo copy took.
    pub push_took: Duration,
}

impl Pushed {
    /// `docker://HOST/REPO:TAG`.
    pub fn reference(&self) -> String {
        format!("docker://{}/{}:{}", self.host, self.repo, self.tag)
    }

    /// `docker://HOST/REPO@sha256:…`.
    pub fn digest_reference(&self) -> String {
        format!("docker://{}/{}@{}", self.host, self.repo, self.digest)
    }

    /// `HOST/REPO:TAG` (no transport).
    pub fn name(&self) -> String {
        format!("{}/{}:{}", self.host, self.repo, self.tag)
    }

    /// The stored manifest (or index), parsed.
    pub fn manifest(&self) -> serde_json::Value {
        serde_json::from_str(&self.raw).expect("the manifest is JSON")
    }

    /// The stored top-level media type.
    pub fn media_type(&self) -> String {
        self.manifest()["mediaType"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The layers of the (single) image's stored manifest. Panics for an index.
    pub fn layers(&self) -> Vec<Descriptor> {
        assert!(
            !self.built.is_index(),
            "an index: use built.images[i].layers"
        );
        descriptors(&self.manifest()["layers"])
    }

    /// The stored manifest's config descriptor. Panics for an index.
    pub fn config(&self) -> Descriptor {
        assert!(!self.built.is_index(), "an index");
        descriptor(&self.manifest()["config"])
    }

    /// For an index: the stored index's entries (digest, media type, platform).
    pub fn entries(&self) -> Vec<serde_json::Value> {
        self.manifest()["manifests"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The check every push makes: the stored top-level manifest is what was asked for.
    fn check(&self) {
        let v = self.manifest();
        let mt = v["mediaType"].as_str().unwrap_or_default();
        match self.format {
            Format::Oci => {
                assert_eq!(
                    self.digest, self.built.top.digest,
                    "skopeo changed the digest"
                );
                assert_eq!(
                    self.raw, self.built.top_json,
                    "the registry stores another manifest"
                );
            }
            Format::Docker => {
                let want = if self.built.is_index() {
                    DOCKER_LIST
                } else {
                    DOCKER_MANIFEST
                };
                assert_eq!(mt, want, "skopeo --format v2s2 stored {}", self.raw);
                if !self.built.is_index() {
                    let layers = self.layers();
                    let built = &self.built.images[0].layers;
                    assert_eq!(layers.len(), built.len());
                    for (l, b) in layers.iter().zip(built) {
                        assert_eq!(l.digest, b.blob.digest, "skopeo recompressed a layer");
                        assert_eq!(l.media_type, b.compression.docker_media_type());
                    }
                }
            }
        }
        assert_eq!(sha256_digest(self.raw.as_bytes()), self.digest);
    }
}

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

fn descriptor(v: &serde_json::Value) -> Descriptor {
    Descriptor {
        media_type: v["mediaType"].as_str().unwrap_or_default().to_string(),
        digest: v["digest"].as_str().expect("digest").to_string(),
        size: v["size"].as_u64().expect("size"),
    }
}

fn descriptors(v: &serde_json::Value) -> Vec<Descriptor> {
    v.as_array()
        .map(|a| a.iter().map(descriptor).collect())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// Images

/// A layer's compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// `application/vnd.oci.image.layer.v1.tar`.
    None,
    /// `…tar+gzip` (flate2, default level).
    Gzip,
    /// `…tar+zstd` (zstd, level 3).
    Zstd,
}

impl Compression {
    pub fn oci_media_type(self) -> &'static str {
        match self {
            Compression::None => OCI_LAYER,
            Compression::Gzip => OCI_LAYER_GZIP,
            Compression::Zstd => OCI_LAYER_ZSTD,
        }
    }

    /// What skopeo --format v2s2 makes of it (zstd: nothing, it fails).
    pub fn docker_media_type(self) -> &'static str {
        match self {
            Compression::None => DOCKER_LAYER,
            Compression::Gzip => DOCKER_LAYER_GZIP,
            Compression::Zstd => "(zstd cannot be a Docker layer)",
        }
    }
}

/// The tar dialect of a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TarFormat {
    /// ustar headers; a PAX extended header (`x`) before an entry whose name or link
    /// name exceeds 100 bytes or whose size exceeds 8 GiB - 1 (as Go's archive/tar,
    /// and so docker and buildah, write).
    #[default]
    Pax,
    /// GNU headers: `././@LongLink` (`L`/`K`) entries for long names, base-256 sizes.
    Gnu,
}

#[derive(Debug, Clone)]
enum Data {
    Path(PathBuf),
    Bytes(Vec<u8>),
}

#[derive(Debug, Clone)]
enum Kind {
    Dir,
    File(Data),
    Symlink(String),
    Hardlink(String),
}

#[derive(Debug, Clone)]
struct Entry {
    name: String,
    kind: Kind,
    mode: u32,
    uid: u64,
    gid: u64,
}

/// One layer: a tar of entries, in order, compressed.
#[derive(Debug, Clone)]
pub struct Layer {
    compression: Compression,
    format: TarFormat,
    entries: Vec<Entry>,
    uid: u64,
    gid: u64,
    level: Option<i32>,
}

impl Layer {
    pub fn new(compression: Compression) -> Layer {
        Layer {
            compression,
            format: TarFormat::default(),
            entries: Vec::new(),
            uid: 0,
            gid: 0,
            level: None,
        }
    }

    /// The tar dialect ([`TarFormat::Pax`] by default).
    pub fn format(mut self, format: TarFormat) -> Layer {
        self.format = format;
        self
    }

    /// The compression level (flate2 0-9, zstd 1-19).
    pub fn level(mut self, level: i32) -> Layer {
        self.level = Some(level);
        self
    }

    /// The owner of the entries added after this (0:0 before; KubeVirt's containerDisks
    /// are 107:107, qemu).
    pub fn owner(mut self, uid: u64, gid: u64) -> Layer {
        self.uid = uid;
        self.gid = gid;
        self
    }

    fn push(mut self, name: &str, kind: Kind, mode: u32) -> Layer {
        self.entries.push(Entry {
            name: name.to_string(),
            kind,
            mode,
            uid: self.uid,
            gid: self.gid,
        });
        self
    }

    /// A directory (name as written: Docker writes `disk/`).
    pub fn dir(self, name: &str, mode: u32) -> Layer {
        self.push(name, Kind::Dir, mode)
    }

    /// A regular file with the contents of `src`, streamed when the layer is built.
    pub fn file(self, name: &str, src: &Path, mode: u32) -> Layer {
        self.push(name, Kind::File(Data::Path(src.to_owned())), mode)
    }

    /// A regular file with `data`.
    pub fn bytes(self, name: &str, data: &[u8], mode: u32) -> Layer {
        self.push(name, Kind::File(Data::Bytes(data.to_vec())), mode)
    }

    pub fn symlink(self, name: &str, target: &str) -> Layer {
        self.push(name, Kind::Symlink(target.to_string()), 0o777)
    }

    pub fn hardlink(self, name: &str, target: &str) -> Layer {
        self.push(name, Kind::Hardlink(target.to_string()), 0o644)
    }

    /// The whiteout of `path` (`dir/.wh.name`: removes `dir/name` of the layers below).
    pub fn whiteout(self, path: &str) -> Layer {
        let (dir, base) = match path.trim_end_matches('/').rsplit_once('/') {
            Some((d, b)) => (format!("{d}/"), b.to_string()),
            None => (String::new(), path.to_string()),
        };
        self.push(
            &format!("{dir}.wh.{base}"),
            Kind::File(Data::Bytes(Vec::new())),
            0o644,
        )
    }

    /// The opaque whiteout of directory `dir` (`dir/.wh..wh..opq`: hides what the
    /// layers below have in it).
    pub fn opaque(self, dir: &str) -> Layer {
        let dir = dir.trim_end_matches('/');
        self.push(
            &format!("{dir}/.wh..wh..opq"),
            Kind::File(Data::Bytes(Vec::new())),
            0o644,
        )
    }

    /// Write the compressed tar to a file in `blobs` (named by its digest).
    fn build(&self, blobs: &Path) -> BuiltLayer {
        let tmp = blobs.join(format!(".layer-{}.tmp", next_id()));
        let file = Hashing::new(BufWriter::with_capacity(
            1 << 20,
            File::create(&tmp).unwrap(),
        ));
        let enc = match self.compression {
            Compression::None => Enc::Plain(file),
            Compression::Gzip => Enc::Gzip(flate2::write::GzEncoder::new(
                file,
                self.level
                    .map(|l| flate2::Compression::new(l as u32))
                    .unwrap_or_default(),
            )),
            Compression::Zstd => {
                Enc::Zstd(zstd::Encoder::new(file, self.level.unwrap_or(3)).expect("zstd encoder"))
            }
        };
        let mut tar = tar::Builder::new(Hashing::new(enc));
        for e in &self.entries {
            append_entry(&mut tar, e, self.format)
                .unwrap_or_else(|err| panic!("tar entry {}: {err}", e.name));
        }
        let tarw = tar.into_inner().expect("finish the tar");
        let (enc, diff_id, tar_size) = tarw.finish();
        let file = enc.finish().expect("finish the compressor");
        let (bufw, digest, size) = file.finish();
        bufw.into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| f.sync_all())
            .expect("write the layer");
        std::fs::rename(&tmp, blobs.join(digest.strip_prefix("sha256:").unwrap())).unwrap();
        BuiltLayer {
            blob: Descriptor {
                media_type: self.compression.oci_media_type().to_string(),
                digest,
                size,
            },
            diff_id,
            tar_size,
            compression: self.compression,
        }
    }
}

/// sha256 by `openssl dgst` in a child process fed through a pipe: a layer's bytes
/// may be many GiB, and the sha2 crate hashes ~30 MB/s in a debug build (openssl
/// ~1 GB/s).
struct Sha256Pipe {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
}

impl Sha256Pipe {
    fn new() -> Sha256Pipe {
        let mut child = Command::new("openssl")
            .args(["dgst", "-sha256", "-r"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start openssl dgst");
        let stdin = child.stdin.take();
        Sha256Pipe { child, stdin }
    }

    fn update(&mut self, buf: &[u8]) -> io::Result<()> {
        self.stdin.as_mut().expect("open").write_all(buf)
    }

    /// `sha256:HEX`.
    fn finish(mut self) -> String {
        drop(self.stdin.take());
        let mut out = String::new();
        self.child
            .stdout
            .take()
            .expect("stdout")
            .read_to_string(&mut out)
            .expect("read openssl dgst");
        let st = self.child.wait().expect("wait for openssl dgst");
        assert!(st.success(), "openssl dgst failed: {st}");
        let hex = out.split_whitespace().next().unwrap_or_default();
        assert_eq!(hex.len(), 64, "openssl dgst printed {out:?}");
        format!("sha256:{hex}")
    }
}

/// A writer that hashes (sha256) and counts what passes through.
struct Hashing<W> {
    inner: W,
    hash: Sha256Pipe,
    n: u64,
}

impl<W: Write> Hashing<W> {
    fn new(inner: W) -> Self {
        Hashing {
            inner,
            hash: Sha256Pipe::new(),
            n: 0,
        }
    }

    fn finish(self) -> (W, String, u64) {
        (self.inner, self.hash.finish(), self.n)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n])?;
        self.n += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

enum Enc<W: Write> {
    Plain(W),
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::Encoder<'static, W>),
}

impl<W: Write> Enc<W> {
    fn finish(self) -> io::Result<W> {
        match self {
            Enc::Plain(w) => Ok(w),
            Enc::Gzip(e) => e.finish(),
            Enc::Zstd(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for Enc<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Enc::Plain(w) => w.write(buf),
            Enc::Gzip(e) => e.write(buf),
            Enc::Zstd(e) => e.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Enc::Plain(w) => w.flush(),
            Enc::Gzip(e) => e.flush(),
            Enc::Zstd(e) => e.flush(),
        }
    }
}

/// A PAX record: `LEN key=value\n`, LEN counting itself.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let rest = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

/// Put `name` into a 100-byte header field as is (no normalisation), truncated.
fn raw_name(field: &mut [u8], name: &[u8]) {
    field.fill(0);
    let n = name.len().min(field.len());
    field[..n].copy_from_slice(&name[..n]);
}

/// A bare header of `kind` with `size` for the extension entries.
fn ext_header(format: TarFormat, name: &str, kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = match format {
        TarFormat::Pax => tar::Header::new_ustar(),
        TarFormat::Gnu => tar::Header::new_gnu(),
    };
    raw_name(&mut h.as_old_mut().name, name.as_bytes());
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(MTIME);
    h.set_cksum();
    h
}

fn append_entry<W: Write>(
    tar: &mut tar::Builder<W>,
    e: &Entry,
    format: TarFormat,
) -> io::Result<()> {
    let (ty, size, link) = match &e.kind {
        Kind::Dir => (tar::EntryType::Directory, 0, None),
        Kind::File(Data::Bytes(b)) => (tar::EntryType::Regular, b.len() as u64, None),
        Kind::File(Data::Path(p)) => (tar::EntryType::Regular, std::fs::metadata(p)?.len(), None),
        Kind::Symlink(t) => (tar::EntryType::Symlink, 0, Some(t.as_str())),
        Kind::Hardlink(t) => (tar::EntryType::Link, 0, Some(t.as_str())),
    };
    let name = e.name.as_bytes();
    let long_name = name.len() > 100;
    let long_link = link.is_some_and(|l| l.len() > 100);
    match format {
        TarFormat::Pax => {
            let mut recs = Vec::new();
            if long_name {
                recs.extend(pax_record("path", name));
            }
            if let Some(l) = link.filter(|_| long_link) {
                recs.extend(pax_record("linkpath", l.as_bytes()));
            }
            if size > 0o777_7777_7777 {
                recs.extend(pax_record("size", size.to_string().as_bytes()));
            }
            if !recs.is_empty() {
                let base = e
                    .name
                    .trim_end_matches('/')
                    .rsplit('/')
                    .next()
                    .unwrap_or("x");
                let pax_name: String = format!("PaxHeaders.0/{base}").chars().take(100).collect();
                let h = ext_header(
                    format,
                    &pax_name,
                    tar::EntryType::XHeader,
                    recs.len() as u64,
                );
                tar.append(&h, recs.as_slice())?;
            }
        }
        TarFormat::Gnu => {
            let mut long = |kind: u8, value: &[u8]| -> io::Result<()> {
                let mut data = value.to_vec();
                data.push(0);
                let h = ext_header(
                    format,
                    "././@LongLink",
                    tar::EntryType::new(kind),
                    data.len() as u64,
                );
                tar.append(&h, data.as_slice())
            };
            if let Some(l) = link.filter(|_| long_link) {
                long(b'K', l.as_bytes())?;
            }
            if long_name {
                long(b'L', name)?;
            }
        }
    }
    let mut h = match format {
        TarFormat::Pax => tar::Header::new_ustar(),
        TarFormat::Gnu => tar::Header::new_gnu(),
    };
    raw_name(&mut h.as_old_mut().name, name);
    if let Some(l) = link {
        raw_name(&mut h.as_old_mut().linkname, l.as_bytes());
    }
    h.set_entry_type(ty);
    h.set_size(size);
    h.set_mode(e.mode);
    h.set_uid(e.uid);
    h.set_gid(e.gid);
    h.set_mtime(MTIME);
    h.set_cksum();
    match &e.kind {
        Kind::File(Data::Path(p)) => {
            let f = File::open(p)?;
            let mut r = BufReader::with_capacity(1 << 20, f).take(size);
            tar.append(&h, &mut r)
        }
        Kind::File(Data::Bytes(b)) => tar.append(&h, b.as_slice()),
        _ => tar.append(&h, io::empty()),
    }
}

/// One image: a config and layers, for one platform.
#[derive(Debug, Clone)]
pub struct Image {
    os: String,
    architecture: String,
    variant: Option<String>,
    env: Vec<String>,
    labels: Vec<(String, String)>,
    annotations: Vec<(String, String)>,
    layers: Vec<Layer>,
}

impl Default for Image {
    fn default() -> Self {
        Self::new()
    }
}

impl Image {
    /// A linux/amd64 image with no layers.
    pub fn new() -> Image {
        Image {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
            env: Vec::new(),
            labels: Vec::new(),
            annotations: Vec::new(),
            layers: Vec::new(),
        }
    }

    /// The platform (`os`, `architecture`, and e.g. `v8` for arm64).
    pub fn platform(mut self, os: &str, architecture: &str, variant: Option<&str>) -> Image {
        self.os = os.into();
        self.architecture = architecture.into();
        self.variant = variant.map(str::to_string);
        self
    }

    /// An `Env` entry of the config (`KEY=VALUE`).
    pub fn env(mut self, kv: &str) -> Image {
        self.env.push(kv.into());
        self
    }

    /// A `Labels` entry of the config.
    pub fn label(mut self, k: &str, v: &str) -> Image {
        self.labels.push((k.into(), v.into()));
        self
    }

    /// An annotation of the manifest.
    pub fn annotation(mut self, k: &str, v: &str) -> Image {
        self.annotations.push((k.into(), v.into()));
        self
    }

    /// The next layer (the first is the lowest).
    pub fn layer(mut self, layer: Layer) -> Image {
        self.layers.push(layer);
        self
    }

    fn platform_json(&self) -> serde_json::Value {
        let mut p = serde_json::json!({"architecture": self.architecture, "os": self.os});
        if let Some(v) = &self.variant {
            p["variant"] = v.as_str().into();
        }
        p
    }

    /// Write layers, config and manifest into `blobs`.
    fn build_blobs(&self, blobs: &Path) -> BuiltImage {
        let layers: Vec<BuiltLayer> = self.layers.iter().map(|l| l.build(blobs)).collect();
        let mut config = serde_json::json!({
            "created": "2023-11-14T22:13:20Z",
            "architecture": self.architecture,
            "os": self.os,
            "config": {},
            "rootfs": {
                "type": "layers",
                "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>(),
            },
            "history": layers.iter().map(|_| serde_json::json!({
                "created": "2023-11-14T22:13:20Z",
                "created_by": "COPY disk.img /disk/ # ferry registry test",
            })).collect::<Vec<_>>(),
        });
        if let Some(v) = &self.variant {
            config["variant"] = v.as_str().into();
        }
        if !self.env.is_empty() {
            config["config"]["Env"] = self.env.clone().into();
        }
        if !self.labels.is_empty() {
            config["config"]["Labels"] = self
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::from(v.as_str())))
                .collect::<serde_json::Map<_, _>>()
                .into();
        }
        let config_json = serde_json::to_string(&config).unwrap();
        let config_blob = write_blob(blobs, OCI_CONFIG, config_json.as_bytes());
        let mut manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": desc_json(&config_blob),
            "layers": layers.iter().map(|l| desc_json(&l.blob)).collect::<Vec<_>>(),
        });
        if !self.annotations.is_empty() {
            manifest["annotations"] = annotations_json(&self.annotations);
        }
        let manifest_json = serde_json::to_string(&manifest).unwrap();
        let manifest_blob = write_blob(blobs, OCI_MANIFEST, manifest_json.as_bytes());
        BuiltImage {
            manifest: manifest_blob,
            manifest_json,
            config: config_blob,
            config_json,
            layers,
            platform: self.platform_json(),
        }
    }

    /// Write this image as an OCI layout at `dir` (created), tagged `latest`.
    pub fn build(&self, dir: &Path) -> Layout {
        let blobs = layout_dirs(dir);
        let img = self.build_blobs(&blobs);
        let top = img.manifest.clone();
        let top_json = img.manifest_json.clone();
        finish_layout(
            dir,
            Built {
                top,
                top_json,
                images: vec![img],
            },
        )
    }
}

/// An OCI image index of images (one per platform, typically).
#[derive(Debug, Clone, Default)]
pub struct Index {
    images: Vec<Image>,
    annotations: Vec<(String, String)>,
}

impl Index {
    pub fn new() -> Index {
        Index::default()
    }

    /// The next image (its platform goes into the index entry).
    pub fn image(mut self, image: Image) -> Index {
        self.images.push(image);
        self
    }

    /// An annotation of the index.
    pub fn annotation(mut self, k: &str, v: &str) -> Index {
        self.annotations.push((k.into(), v.into()));
        self
    }

    /// Write this index and its images as an OCI layout at `dir`, tagged `latest`.
    pub fn build(&self, dir: &Path) -> Layout {
        let blobs = layout_dirs(dir);
        let images: Vec<BuiltImage> = self.images.iter().map(|i| i.build_blobs(&blobs)).collect();
        let mut index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": images.iter().map(|i| {
                let mut d = desc_json(&i.manifest);
                d["platform"] = i.platform.clone();
                d
            }).collect::<Vec<_>>(),
        });
        if !self.annotations.is_empty() {
            index["annotations"] = annotations_json(&self.annotations);
        }
        let top_json = serde_json::to_string(&index).unwrap();
        let top = write_blob(&blobs, OCI_INDEX, top_json.as_bytes());
        finish_layout(
            dir,
            Built {
                top,
                top_json,
                images,
            },
        )
    }
}

fn annotations_json(a: &[(String, String)]) -> serde_json::Value {
    a.iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::from(v.as_str())))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

fn desc_json(d: &Descriptor) -> serde_json::Value {
    serde_json::json!({"mediaType": d.media_type, "digest": d.digest, "size": d.size})
}

fn layout_dirs(dir: &Path) -> PathBuf {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    blobs
}

fn write_blob(blobs: &Path, media_type: &str, bytes: &[u8]) -> Descriptor {
    let digest = sha256_digest(bytes);
    std::fs::write(blobs.join(digest.strip_prefix("sha256:").unwrap()), bytes).unwrap();
    Descriptor {
        media_type: media_type.to_string(),
        digest,
        size: bytes.len() as u64,
    }
}

/// The layout's tag (`org.opencontainers.image.ref.name`).
pub const LAYOUT_TAG: &str = "latest";

fn finish_layout(dir: &Path, built: Built) -> Layout {
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut d = desc_json(&built.top);
    d["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": LAYOUT_TAG});
    let index = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [d]});
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_string(&index).unwrap(),
    )
    .unwrap();
    Layout {
        dir: dir.to_owned(),
        tag: LAYOUT_TAG.to_string(),
        built,
    }
}

/// A layer as built.
#[derive(Debug, Clone)]
pub struct BuiltLayer {
    /// The compressed blob.
    pub blob: Descriptor,
    /// The sha256 of the uncompressed tar (the config's `rootfs.diff_ids`).
    pub diff_id: String,
    /// The uncompressed tar's length.
    pub tar_size: u64,
    pub compression: Compression,
}

/// An image as built.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    pub manifest: Descriptor,
    pub manifest_json: String,
    pub config: Descriptor,
    pub config_json: String,
    pub layers: Vec<BuiltLayer>,
    /// `{"architecture", "os", "variant"?}`.
    pub platform: serde_json::Value,
}

/// What a layout holds.
#[derive(Debug, Clone)]
pub struct Built {
    /// The top-level manifest (one image) or index.
    pub top: Descriptor,
    pub top_json: String,
    /// The images (one, or an index's in order).
    pub images: Vec<BuiltImage>,
}

impl Built {
    pub fn is_index(&self) -> bool {
        self.top.media_type == OCI_INDEX
    }
}

/// An OCI image layout on disk.
#[derive(Debug, Clone)]
pub struct Layout {
    pub dir: PathBuf,
    pub tag: String,
    pub built: Built,
}

impl Layout {
    /// A blob's path in the layout.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.dir
            .join("blobs/sha256")
            .join(digest.strip_prefix("sha256:").expect("sha256 digest"))
    }
}

/// What [`Registry::push`] takes: built into a layout under `dir` (or already one).
pub trait ToLayout {
    fn to_layout(&self, dir: &Path) -> Layout;
}

impl ToLayout for Image {
    fn to_layout(&self, dir: &Path) -> Layout {
        self.build(dir)
    }
}

impl ToLayout for Index {
    fn to_layout(&self, dir: &Path) -> Layout {
        self.build(dir)
    }
}

impl ToLayout for Layout {
    fn to_layout(&self, _dir: &Path) -> Layout {
        self.clone()
    }
}
