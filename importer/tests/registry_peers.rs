//! The registry test peers themselves (support/registry.rs), checked from outside with
//! skopeo, curl, tar and the decompressors: each auth/TLS variant starts and serves what
//! was pushed, multi-arch indexes and Docker-format pushes are stored as the tests
//! expect, layers hold the entries asked for, and `corrupt_blob` makes the registry
//! serve bytes that no longer match their digest.

#[path = "support/registry.rs"]
mod registry;
use registry::random_bytes;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use registry::{
    ACCEPT_ALL, Auth, Compression, DOCKER_CONFIG, DOCKER_LAYER_GZIP, DOCKER_LIST, DOCKER_MANIFEST,
    Format, Image, Index, Layer, OCI_INDEX, OCI_LAYER_GZIP, OCI_MANIFEST, Options, Registry,
    TarFormat, sha256_digest,
};

const MIB: usize = 1024 * 1024;

/// Written straight to stderr, so libtest does not swallow it.
fn note(msg: &str) {
    let _ = writeln!(std::io::stderr(), "{msg}");
}

/// A raw disk of `len` random bytes in `dir`.
fn raw_disk(dir: &Path, name: &str, len: usize, seed: u64) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, random_bytes(len, seed)).unwrap();
    p
}

/// A containerDisk as KubeVirt's docs build it: `FROM scratch`, `ADD --chown=107:107
/// disk.img /disk/`.
fn container_disk(disk: &Path, compression: Compression) -> Image {
    Image::new().label("ferry.test", "registry-peers").layer(
        Layer::new(compression)
            .owner(107, 107)
            .dir("disk/", 0o555)
            .file("disk/disk.img", disk, 0o440),
    )
}

/// Start, push a 1 MiB containerDisk, and check from outside that it is served.
fn serve_and_check(opts: Options, what: &str) {
    let t0 = Instant::now();
    let Some(reg) = Registry::start(opts) else {
        return;
    };
    let started = reg.started_in;
    let tmp = tempfile::tempdir().unwrap();
    let disk = raw_disk(tmp.path(), "disk.img", MIB, 7);
    let pushed = reg.push(&container_disk(&disk, Compression::Gzip), "disks/raw:1.0");
    assert_eq!(pushed.media_type(), OCI_MANIFEST);
    assert_eq!(
        pushed.reference(),
        format!("docker://{}/disks/raw:1.0", reg.host())
    );
    assert_eq!(
        pushed.digest_reference(),
        format!("docker://{}/disks/raw@{}", reg.host(), pushed.digest)
    );
    let layers = pushed.layers();
    assert_eq!(layers.len(), 1);
    assert_eq!(layers[0].media_type, OCI_LAYER_GZIP);

    // skopeo's view: by tag and by digest.
    let info = reg.skopeo_inspect("disks/raw:1.0", &[]);
    assert_eq!(info["Digest"], pushed.digest.as_str(), "{info}");
    assert_eq!(info["Architecture"], "amd64");
    assert_eq!(info["Os"], "linux");
    assert_eq!(info["Layers"][0], layers[0].digest.as_str());
    assert_eq!(info["Labels"]["ferry.test"], "registry-peers");
    let by_digest = reg.skopeo_inspect_raw(&format!("disks/raw@{}", pushed.digest));
    assert_eq!(by_digest, pushed.raw);

    // curl's view: manifest by tag, with its digest header; the blob, whose sha256 is
    // its digest and which gunzips to a tar holding the disk.
    let m = reg.get(
        "/v2/disks/raw/manifests/1.0",
        &[&format!("Accept: {ACCEPT_ALL}")],
    );
    assert_eq!(m.status, 200, "{m:?}");
    assert_eq!(m.header("content-type"), Some(OCI_MANIFEST));
    assert_eq!(
        m.header("docker-content-digest"),
        Some(pushed.digest.as_str())
    );
    assert_eq!(sha256_digest(&m.body), pushed.digest);
    let b = reg.get(&format!("/v2/disks/raw/blobs/{}", layers[0].digest), &[]);
    assert_eq!(b.status, 200);
    assert_eq!(b.body.len() as u64, layers[0].size);
    assert_eq!(sha256_digest(&b.body), layers[0].digest);
    let listing = tar_listing(&b.body, Compression::Gzip, tmp.path())
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(listing.contains("dr-xr-xr-x 107/107"), "{listing}");
    assert!(
        listing.contains(&format!(
            "-r--r----- 107/107 {MIB} 2023-11-14 22:13 disk/disk.img"
        )),
        "{listing}"
    );
    let config = reg.get(
        &format!("/v2/disks/raw/blobs/{}", pushed.config().digest),
        &[],
    );
    let config: serde_json::Value = serde_json::from_slice(&config.body).unwrap();
    assert_eq!(
        config["rootfs"]["diff_ids"][0],
        pushed.built.images[0].layers[0].diff_id.as_str()
    );

    // Without credentials: the challenge this variant sends.
    let anon = reg.get_unauthenticated(
        "/v2/disks/raw/manifests/1.0",
        &[&format!("Accept: {ACCEPT_ALL}")],
    );
    let challenge = anon.header("www-authenticate").unwrap_or("").to_string();
    match opts.auth {
        Auth::None => assert_eq!(anon.status, 200),
        Auth::Basic => {
            assert_eq!(anon.status, 401);
            assert!(challenge.starts_with("Basic realm="), "{challenge}");
        }
        Auth::Token | Auth::TokenAnonymousPull => {
            assert_eq!(anon.status, 401);
            let realm = reg.realm().unwrap();
            assert!(
                challenge.starts_with(&format!(
                    "Bearer realm=\"{realm}\",service=\"{}\"",
                    registry::SERVICE
                )) && challenge.contains("scope=\"repository:disks/raw:pull\""),
                "{challenge}"
            );
            let reqs = reg.token_requests();
            assert!(
                reqs.iter().any(
                    |r| r["params"]["scope"][0] == "repository:disks/raw:pull,push"
                        && r["user"] == registry::USER
                ),
                "skopeo asked the token server for push: {reqs:?}"
            );
        }
    }
    note(&format!(
        "registry peer {what}: started in {started:?}, push (skopeo copy) {:?}, whole check {:?}",
        pushed.push_took,
        t0.elapsed()
    ));
}

/// A layer blob decompressed by the CLI tools (independent readers): the tar's path.
fn decompress(blob: &[u8], compression: Compression, dir: &Path) -> PathBuf {
    let f = dir.join(format!("layer-{}", ferry_test_kit::next_id()));
    std::fs::write(&f, blob).unwrap();
    let tar = f.with_extension("tar");
    let tool = match compression {
        Compression::None => return f,
        Compression::Gzip => "gzip",
        Compression::Zstd => "zstd",
    };
    ferry_test_kit::run_ok(
        Command::new(tool)
            .args(["-d", "-c"])
            .arg(&f)
            .stdout(std::fs::File::create(&tar).unwrap()),
    );
    tar
}

/// `tar -tvf` (GNU tar) of a layer blob.
fn tar_listing(blob: &[u8], compression: Compression, dir: &Path) -> String {
    let tar = decompress(blob, compression, dir);
    ferry_test_kit::run_ok(
        Command::new("tar")
            .args(["--numeric-owner", "-tvf"])
            .arg(&tar)
            .env("TZ", "UTC"),
    )
}

#[test]
fn plain_http() {
    serve_and_check(
        Options {
            tls: false,
            auth: Auth::None,
        },
        "plain",
    );
}

#[test]
fn tls() {
    serve_and_check(
        Options {
            tls: true,
            auth: Auth::None,
        },
        "tls",
    );
}

#[test]
fn basic_auth() {
    serve_and_check(
        Options {
            tls: false,
            auth: Auth::Basic,
        },
        "basic",
    );
}

#[test]
fn token_auth() {
    serve_and_check(
        Options {
            tls: false,
            auth: Auth::Token,
        },
        "token",
    );
}

#[test]
fn token_auth_over_tls() {
    serve_and_check(
        Options {
            tls: true,
            auth: Auth::Token,
        },
        "token+tls",
    );
}

/// Anonymous clients get a pull token; pushes still need the credentials. The token
/// server's other answers: wrong credentials, the OAuth2 POST, a wrong service.
#[test]
fn token_anonymous_pull() {
    let Some(reg) = Registry::start(Options {
        tls: false,
        auth: Auth::TokenAnonymousPull,
    }) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let disk = raw_disk(tmp.path(), "disk.img", 4096, 3);
    let pushed = reg.push(&container_disk(&disk, Compression::None), "public/disk:1");
    let token = reg.bearer_token("repository:public/disk:pull,push", true);
    let m = reg.get_unauthenticated(
        &format!("/v2/public/disk/manifests/{}", pushed.digest),
        &[
            &format!("Authorization: Bearer {token}"),
            &format!("Accept: {OCI_MANIFEST}"),
        ],
    );
    assert_eq!(m.status, 200, "{m:?}");
    let last = reg.token_requests().pop().unwrap();
    assert_eq!(last["user"], "");
    assert_eq!(last["access"][0]["actions"], serde_json::json!(["pull"]));
    // Wrong credentials are refused, not treated as anonymous.
    let realm = reg.realm().unwrap();
    let code = |args: &[&str]| {
        let mut c = Command::new("curl");
        c.args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(args);
        ferry_test_kit::run_ok(&mut c)
    };
    let get = format!("{realm}?service={}", registry::SERVICE);
    assert_eq!(code(&["-u", "ferry:wrong", &get]), "401");
    // The OAuth2 password grant (POST) answers too; a wrong service is refused.
    let form = |pw: &str| {
        format!(
            "grant_type=password&username={}&password={pw}&service={}&scope=repository:public/disk:pull",
            registry::USER,
            registry::SERVICE
        )
    };
    assert_eq!(code(&["--data", &form(registry::PASSWORD), &realm]), "200");
    assert_eq!(code(&["--data", &form("wrong"), &realm]), "401");
    assert_eq!(code(&[&format!("{realm}?service=other")]), "400");
    let last = reg.token_requests().pop().unwrap();
    assert_eq!(last["status"], 400);
}

/// An index of linux/amd64 and linux/arm64/v8, each image with its own disk.
#[test]
fn multi_arch_index() {
    let Some(reg) = Registry::start(Options::default()) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let amd = raw_disk(tmp.path(), "amd64.img", 64 * 1024, 1);
    let arm = raw_disk(tmp.path(), "arm64.img", 96 * 1024, 2);
    let index = Index::new()
        .image(container_disk(&amd, Compression::Gzip))
        .image(container_disk(&arm, Compression::Zstd).platform("linux", "arm64", Some("v8")))
        .annotation("org.opencontainers.image.description", "two disks");
    let pushed = reg.push(&index, "multi/disk:latest");
    assert_eq!(pushed.media_type(), OCI_INDEX);
    let raw: serde_json::Value =
        serde_json::from_str(&reg.skopeo_inspect_raw("multi/disk:latest")).unwrap();
    let platforms: Vec<String> = raw["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let p = &m["platform"];
            let mut s = format!(
                "{}/{}",
                p["os"].as_str().unwrap(),
                p["architecture"].as_str().unwrap()
            );
            if let Some(v) = p["variant"].as_str() {
                s = format!("{s}/{v}");
            }
            s
        })
        .collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64/v8"]);
    // Each child manifest is there by digest, with its own layer.
    for (entry, built) in pushed.entries().iter().zip(&pushed.built.images) {
        let d = entry["digest"].as_str().unwrap();
        assert_eq!(d, built.manifest.digest);
        let m = reg.get(
            &format!("/v2/multi/disk/manifests/{d}"),
            &[&format!("Accept: {OCI_MANIFEST}")],
        );
        assert_eq!(m.status, 200);
        assert_eq!(String::from_utf8(m.body).unwrap(), built.manifest_json);
        let layer = &built.layers[0].blob;
        let b = reg.get(&format!("/v2/multi/disk/blobs/{}", layer.digest), &[]);
        assert_eq!(sha256_digest(&b.body), layer.digest);
    }
    // skopeo inspect: the index's digest, and the amd64 image's config and layers.
    let info = reg.skopeo_inspect("multi/disk:latest", &[]);
    assert_eq!(info["Digest"], pushed.digest.as_str(), "{info}");
    assert_eq!(info["Architecture"], "amd64");
    assert_eq!(
        info["Layers"][0],
        pushed.built.images[0].layers[0].blob.digest.as_str()
    );
    // The registry's answer to a client that accepts no index: 404, not the amd64 one.
    let m = reg.get(
        "/v2/multi/disk/manifests/latest",
        &[&format!("Accept: {OCI_MANIFEST}")],
    );
    assert_eq!(m.status, 404, "{m:?}");
}

/// `--format v2s2`: Docker media types in the manifest (and the index becomes a
/// manifest list), the blobs unchanged.
#[test]
fn docker_format() {
    let Some(reg) = Registry::start(Options {
        tls: false,
        auth: Auth::Basic,
    }) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let disk = raw_disk(tmp.path(), "disk.img", 256 * 1024, 5);
    let img = container_disk(&disk, Compression::Gzip);
    let layout = img.build(&tmp.path().join("layout"));
    let pushed = reg.push_as(&layout, "docker/disk:v2", Format::Docker);
    assert_eq!(pushed.media_type(), DOCKER_MANIFEST);
    assert_eq!(pushed.config().media_type, DOCKER_CONFIG);
    assert_eq!(pushed.config().digest, layout.built.images[0].config.digest);
    assert_eq!(pushed.layers()[0].media_type, DOCKER_LAYER_GZIP);
    assert_ne!(pushed.digest, layout.built.top.digest);
    let m = reg.get(
        "/v2/docker/disk/manifests/v2",
        &[&format!("Accept: {DOCKER_MANIFEST}")],
    );
    assert_eq!(m.status, 200);
    assert_eq!(m.header("content-type"), Some(DOCKER_MANIFEST));
    // The same layout pushed as OCI beside it: same blobs.
    let oci = reg.push(&layout, "docker/disk:oci");
    assert_eq!(oci.layers()[0].digest, pushed.layers()[0].digest);
    assert_eq!(oci.layers()[0].media_type, OCI_LAYER_GZIP);
    // A Docker-format index is a manifest list.
    let arm = raw_disk(tmp.path(), "arm.img", 4096, 9);
    let list = Index::new()
        .image(img)
        .image(container_disk(&arm, Compression::None).platform("linux", "arm64", None));
    let pushed = reg.push_as(&list, "docker/list:1", Format::Docker);
    assert_eq!(pushed.media_type(), DOCKER_LIST);
    for e in pushed.entries() {
        assert_eq!(e["mediaType"], DOCKER_MANIFEST);
    }
}

/// Every kind of entry, in every compression and both tar dialects, as GNU tar lists
/// it.
#[test]
fn layer_entries() {
    let Some(reg) = Registry::start(Options::default()) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let disk = raw_disk(tmp.path(), "disk.img", 10_000, 11);
    let long = format!("disk/{}/deep.img", "d".repeat(120));
    for (i, compression) in [Compression::None, Compression::Gzip, Compression::Zstd]
        .into_iter()
        .enumerate()
    {
        for format in [TarFormat::Pax, TarFormat::Gnu] {
            let layer = Layer::new(compression)
                .format(format)
                .bytes("etc/hostname", b"not-a-disk\n", 0o644)
                .owner(107, 107)
                .dir("disk/", 0o755)
                .file("disk/disk.img", &disk, 0o440)
                .symlink("disk/current.img", "disk.img")
                .hardlink("disk/same.img", "disk/disk.img")
                .whiteout("disk/old.img")
                .opaque("var/lib")
                .bytes(&long, b"x", 0o600);
            let pushed = reg.push(
                &Image::new().layer(layer),
                &format!("entries/{i}:{format:?}"),
            );
            let l = &pushed.layers()[0];
            assert_eq!(l.media_type, compression.oci_media_type());
            let blob = reg.get(&format!("/v2/entries/{i}/blobs/{}", l.digest), &[]);
            assert_eq!(sha256_digest(&blob.body), l.digest);
            let listing = tar_listing(&blob.body, compression, tmp.path());
            let lines: Vec<&str> = listing.lines().collect();
            assert_eq!(lines.len(), 8, "{listing}");
            for (line, want) in lines.iter().zip([
                "-rw-r--r-- 0/0 11 2023-11-14 22:13 etc/hostname",
                "drwxr-xr-x 107/107 0 2023-11-14 22:13 disk/",
                "-r--r----- 107/107 10000 2023-11-14 22:13 disk/disk.img",
                "lrwxrwxrwx 107/107 0 2023-11-14 22:13 disk/current.img -> disk.img",
                "hrw-r--r-- 107/107 0 2023-11-14 22:13 disk/same.img link to disk/disk.img",
                "-rw-r--r-- 107/107 0 2023-11-14 22:13 disk/.wh.old.img",
                "-rw-r--r-- 107/107 0 2023-11-14 22:13 var/lib/.wh..wh..opq",
                &format!("-rw------- 107/107 1 2023-11-14 22:13 {long}"),
            ]) {
                let squeezed = line.split_whitespace().collect::<Vec<_>>().join(" ");
                assert_eq!(squeezed, want, "{compression:?} {format:?}:\n{listing}");
            }
            let tar = std::fs::read(decompress(&blob.body, compression, tmp.path())).unwrap();
            assert_eq!(
                sha256_digest(&tar),
                pushed.built.images[0].layers[0].diff_id
            );
        }
    }
}

/// corrupt_blob: the registry serves, under the right digest and length, bytes that
/// hash to something else.
#[test]
fn corrupt_blob() {
    let Some(reg) = Registry::start(Options::default()) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let disk = raw_disk(tmp.path(), "disk.img", MIB, 13);
    let pushed = reg.push(&container_disk(&disk, Compression::Gzip), "bad/disk:1");
    let layer = pushed.layers()[0].clone();
    let path = format!("/v2/bad/disk/blobs/{}", layer.digest);
    let before = reg.get(&path, &[]);
    assert_eq!(sha256_digest(&before.body), layer.digest);

    reg.corrupt_blob(&layer.digest);
    let b = reg.get(&path, &[]);
    assert_eq!(b.status, 200);
    assert_eq!(
        b.header("docker-content-digest"),
        Some(layer.digest.as_str())
    );
    assert_eq!(b.body.len() as u64, layer.size);
    assert_ne!(
        sha256_digest(&b.body),
        layer.digest,
        "corrupt_blob changed nothing"
    );
    let differ = before
        .body
        .iter()
        .zip(&b.body)
        .filter(|(x, y)| x != y)
        .count();
    assert_eq!(differ, 16);
    // HEAD still says the digest and the length.
    let mut c = reg.curl(&path);
    c.arg("-I");
    let head = ferry_test_kit::run_ok(&mut c).to_ascii_lowercase();
    assert!(
        head.contains(&format!("content-length: {}", layer.size)),
        "{head}"
    );
}

/// A 4 GiB sparse disk (1 MiB of data at 1 GiB) streamed into a zstd and a gzip layer
/// and pushed: the harness never holds a file in memory. Slow in a debug build (the
/// uncompressed tar is hashed for its diff_id): run it by name with `--ignored`.
#[test]
#[ignore]
fn big_sparse_disk() {
    let Some(reg) = Registry::start(Options::default()) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("big.img");
    let f = std::fs::File::create(&disk).unwrap();
    f.set_len(4 << 30).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &random_bytes(MIB, 17), 1 << 30).unwrap();
    for compression in [Compression::Zstd, Compression::Gzip] {
        let t0 = Instant::now();
        let layout =
            container_disk(&disk, compression).build(&tmp.path().join(format!("{compression:?}")));
        let built = t0.elapsed();
        let pushed = reg.push(&layout, &format!("big/disk:{compression:?}"));
        let l = &pushed.layers()[0];
        note(&format!(
            "4 GiB sparse disk, {compression:?}: layer of {} bytes built in {built:?}, pushed in {:?}",
            l.size, pushed.push_took
        ));
        let mut c = reg.curl(&format!("/v2/big/disk/blobs/{}", l.digest));
        let out = tmp.path().join("blob");
        c.arg("-o").arg(&out);
        ferry_test_kit::run_ok(&mut c);
        assert_eq!(sha256_digest(&std::fs::read(&out).unwrap()), l.digest);
        std::fs::remove_dir_all(tmp.path().join(format!("{compression:?}"))).unwrap();
    }
}

/// What distribution 2.8 answers to clients that leave out media types or ask for odd
/// ranges: facts the registry source has to live with, pinned here so an upgrade of the
/// peer shows up.
#[test]
fn distribution_quirks() {
    let Some(reg) = Registry::start(Options::default()) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let disk = raw_disk(tmp.path(), "disk.img", 4096, 5);
    let arm = raw_disk(tmp.path(), "arm.img", 4096, 6);
    let img = container_disk(&disk, Compression::Gzip);
    let docker = reg.push_as(&img, "q/docker:1", Format::Docker);
    let index = Index::new()
        .image(img.clone())
        .image(container_disk(&arm, Compression::Gzip).platform("linux", "arm64", None));
    let list = reg.push_as(&index, "q/list:1", Format::Docker);
    reg.push(&index, "q/index:1");
    let accept = |t: &str| format!("Accept: {t}");
    let ctype = |r: &registry::Response| r.header("content-type").unwrap_or("").to_string();
    const SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

    // A schema 2 manifest asked for by tag without its type in Accept: rewritten to a
    // signed schema 1 (by digest: served as stored, whatever the Accept).
    for h in [
        vec![],
        vec!["Accept: */*".to_string()],
        vec![accept(OCI_MANIFEST)],
    ] {
        let h: Vec<&str> = h.iter().map(String::as_str).collect();
        assert_eq!(ctype(&reg.get("/v2/q/docker/manifests/1", &h)), SCHEMA1);
    }
    let r = reg.get(&format!("/v2/q/docker/manifests/{}", docker.digest), &[]);
    assert_eq!((r.status, ctype(&r)), (200, DOCKER_MANIFEST.to_string()));

    // A Docker manifest list by tag to a client that accepts only manifests: the
    // linux/amd64 one, under its own digest; with no Accept, that one as schema 1.
    let r = reg.get("/v2/q/list/manifests/1", &[&accept(DOCKER_MANIFEST)]);
    assert_eq!(ctype(&r), DOCKER_MANIFEST);
    let amd64 = list.entries()[0]["digest"].as_str().unwrap().to_string();
    assert_eq!(r.header("docker-content-digest"), Some(amd64.as_str()));
    assert_eq!(ctype(&reg.get("/v2/q/list/manifests/1", &[])), SCHEMA1);
    // An OCI index: no such fallback, 404 MANIFEST_UNKNOWN, even to a client that
    // accepts Docker lists.
    for t in [OCI_MANIFEST, DOCKER_LIST] {
        let r = reg.get("/v2/q/index/manifests/1", &[&accept(t)]);
        assert_eq!(r.status, 404);
        assert!(String::from_utf8_lossy(&r.body).contains("does not support OCI indexes"));
    }

    // An OCI manifest asked for without its type in Accept: 404 (no fallback).
    let oci = reg.push(&img, "q/oci:1");
    let r = reg.get("/v2/q/oci/manifests/1", &[&accept(DOCKER_MANIFEST)]);
    assert_eq!(r.status, 404, "{r:?}");
    assert!(
        String::from_utf8_lossy(&r.body).contains("accept header does not support OCI manifests")
    );
    // By digest too.
    let r = reg.get(&format!("/v2/q/oci/manifests/{}", oci.digest), &[]);
    assert_eq!(r.status, 404, "{r:?}");

    // Ranges: one is 206 with Content-Range; several, multipart/byteranges; one past
    // the end, 416 whose Content-Length is the blob's while the body is a short text,
    // so the connection closes early (curl: "transfer closed with N bytes remaining").
    let layer = &docker.layers()[0];
    let blob = format!("/v2/q/docker/blobs/{}", layer.digest);
    let r = reg.get(&blob, &["Range: bytes=10-19"]);
    assert_eq!((r.status, r.body.len()), (206, 10));
    let r = reg.get(&blob, &["Range: bytes=0-1,5-6"]);
    assert_eq!(r.status, 206);
    assert!(ctype(&r).starts_with("multipart/byteranges"), "{r:?}");
    let r = reg.get(&blob, &["Range: bytes=99999999-"]);
    assert_eq!(r.status, 416);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes */{}", layer.size).as_str())
    );
    assert_eq!(
        r.header("content-length"),
        Some(layer.size.to_string().as_str())
    );
    assert!(
        r.curl_error.as_deref().unwrap_or("").contains("(18)"),
        "{r:?}"
    );
    // Unknown blob and manifest: 404 with the registry's error codes.
    let zero = format!("sha256:{}", "0".repeat(64));
    let r = reg.get(&format!("/v2/q/docker/blobs/{zero}"), &[]);
    assert_eq!(r.status, 404);
    assert!(String::from_utf8_lossy(&r.body).contains("BLOB_UNKNOWN"));
    let r = reg.get("/v2/nope/manifests/1", &[&accept(ACCEPT_ALL)]);
    assert_eq!(r.status, 404);
    assert!(String::from_utf8_lossy(&r.body).contains("MANIFEST_UNKNOWN"));
}
