//! `docker://` sources against a real registry: Debian's docker-registry (distribution
//! 2.8) started by the test, plain or with TLS, anonymous, htpasswd (Basic) or token
//! (Bearer) auth, images built as OCI layouts with an independent tar writer and pushed
//! with skopeo (support/registry.rs). Every target is compared with the disk the image
//! was built from (`cmp`, `qemu-img compare`); every refusal is asserted by exit status
//! and message.

mod common;
#[path = "support/registry.rs"]
mod registry;
use registry::random_bytes;

use std::path::{Path, PathBuf};

use common::*;
use registry::{Auth, Compression, Format, Image, Index, Layer, Options, Registry};

const MIB: usize = 1024 * 1024;

/// A raw disk: `len` bytes, random data in its first and third quarters, zeroes
/// elsewhere.
fn raw_disk(dir: &Path, name: &str, len: usize, seed: u64) -> PathBuf {
    let mut v = vec![0u8; len];
    let q = len / 4;
    v[..q].copy_from_slice(&random_bytes(q, seed));
    v[2 * q..3 * q].copy_from_slice(&random_bytes(q, seed + 1));
    let p = dir.join(name);
    std::fs::write(&p, v).unwrap();
    p
}

/// A containerDisk as KubeVirt's docs build it: `FROM scratch`, `ADD --chown=107:107
/// disk.img /disk/`.
fn container_disk(name: &str, disk: &Path, compression: Compression) -> Image {
    Image::new().layer(
        Layer::new(compression)
            .owner(107, 107)
            .dir("disk/", 0o555)
            .file(&format!("disk/{name}"), disk, 0o440),
    )
}

fn tools() -> bool {
    require(&[
        "docker-registry",
        "skopeo",
        "qemu-img",
        "openssl",
        "cmp",
        "gzip",
    ])
}

/// A directory holding the registry's CA, for `--http-ca-dir` / `IMPORTER_CERT_DIR`.
fn ca_dir(reg: &Registry, dir: &Path) -> PathBuf {
    let d = dir.join("registry-ca");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::copy(reg.ca_pem().expect("a TLS registry"), d.join("ca.crt")).unwrap();
    d
}

/// `ferry copy REF DST` with the registry's trust and credentials as flags.
fn pull(reg: &Registry, reference: &str, dst: &Path, dir: &Path, extra: &[&str]) -> Run {
    let mut args: Vec<String> = Vec::new();
    if reg.options().tls {
        args.push("--http-ca-dir".into());
        args.push(ca_dir(reg, dir).display().to_string());
    } else {
        args.push("--insecure-registry".into());
    }
    let mut cmd = copy_cmd(reference, dst, &[]);
    if let Some((user, password)) = reg.credentials() {
        let f = dir.join("registry-password");
        std::fs::write(&f, format!("{password}\n")).unwrap();
        args.push("--registry-user".into());
        args.push(user.into());
        args.push("--registry-password-file".into());
        args.push(f.display().to_string());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    cmd.args(&args);
    run(cmd, RUN_LIMIT)
}

#[test]
fn raw_disks_in_gzip_zstd_and_plain_layers_stream_into_the_target() {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(reg) = Registry::start(Options::default()) else {
        return;
    };
    let disk = raw_disk(dir.path(), "disk.img", 6 * MIB, 1);
    for (c, repo) in [
        (Compression::Gzip, "disks/raw-gzip:1"),
        (Compression::Zstd, "disks/raw-zstd:1"),
        (Compression::None, "disks/raw-plain:1"),
    ] {
        let pushed = reg.push(&container_disk("disk.img", &disk, c), repo);
        let dst = dir
            .path()
            .join(format!("{}.img", repo.replace(['/', ':'], "-")));
        let r = pull(&reg, &pushed.reference(), &dst, dir.path(), &[]);
        let v = r.success(repo);
        assert_eq!(num(&v, "bytes_read"), (6 * MIB) as u64, "{repo}");
        assert_identical(&dst, &disk, repo);
        // A gzip'ed disk file inside the layer (disk.img.gz): decompressed too.
        if c == Compression::None {
            let gz = dir.path().join("disk.img.gz");
            let out = std::process::Command::new("gzip")
                .args(["-c", "-1", disk.to_str().unwrap()])
                .output()
                .unwrap();
            std::fs::write(&gz, out.stdout).unwrap();
            let p = reg.push(
                &container_disk("disk.img.gz", &gz, c),
                "disks/raw-gz-file:1",
            );
            let dst = dir.path().join("gz-file.img");
            pull(&reg, &p.reference(), &dst, dir.path(), &[]).success("disk.img.gz");
            assert_identical(&dst, &disk, "disk.img.gz in a plain layer");
        }
        // By digest too (the manifest's digest checked against the reference).
        let dst2 = dir.path().join("by-digest.img");
        let _ = std::fs::remove_file(&dst2);
        pull(&reg, &pushed.digest_reference(), &dst2, dir.path(), &[]).success(repo);
        assert_identical(&dst2, &disk, repo);
    }
}

#[test]
fn a_qcow2_in_an_uncompressed_layer_is_read_in_place_and_in_a_gzip_layer_needs_scratch() {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(reg) = Registry::start(Options {
        tls: true,
        auth: Auth::None,
    }) else {
        return;
    };
    let raw = raw_disk(dir.path(), "disk.raw", 8 * MIB, 7);
    let q = qcow2_of(&raw);
    // Uncompressed layer, a registry that answers Range requests: the qcow2's map is
    // read first, then its clusters in place (no scratch).
    let plain = reg.push(
        &container_disk("disk.qcow2", &q, Compression::None),
        "disks/q:plain",
    );
    let dst = dir.path().join("plain.img");
    let r = pull(&reg, &plain.reference(), &dst, dir.path(), &[]);
    r.success("qcow2, plain layer");
    assert!(r.stderr.contains("disk read in place"), "{}", r.stderr);
    assert_identical(&dst, &raw, "qcow2, plain layer");
    // In a gzip layer it arrives as a stream: refused without scratch, saying why.
    let gz = reg.push(
        &container_disk("disk.qcow2", &q, Compression::Gzip),
        "disks/q:gzip",
    );
    let dst = dir.path().join("gzip.img");
    let r = pull(&reg, &gz.reference(), &dst, dir.path(), &[]);
    assert_eq!(r.status.code(), Some(2), "{}", r.stderr);
    r.failure(
        "qcow2, gzip layer",
        &["disk/disk.qcow2 holds a qcow2", "--scratch DIR"],
    );
    // With scratch it is staged and read from there.
    let scratch = dir.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let r = pull(
        &reg,
        &gz.reference(),
        &dst,
        dir.path(),
        &["--scratch", scratch.to_str().unwrap()],
    );
    r.success("qcow2, gzip layer, scratch");
    assert_identical(&dst, &raw, "qcow2, gzip layer, scratch");
    assert_eq!(
        std::fs::read_dir(&scratch).unwrap().count(),
        0,
        "scratch left empty"
    );
    // Without the registry's CA the system roots do not know it: a TLS failure (4);
    // --insecure-registry skips the check.
    let cmd = copy_cmd(&plain.reference(), &dir.path().join("x.img"), &[]);
    let r = run(cmd, RUN_LIMIT);
    assert_eq!(r.status.code(), Some(4), "{}", r.stderr);
    r.failure("unknown CA", &["TLS"]);
    let mut cmd = copy_cmd(&plain.reference(), &dir.path().join("y.img"), &[]);
    cmd.arg("--insecure-registry");
    run(cmd, RUN_LIMIT).success("insecure registry over TLS");
    assert_identical(&dir.path().join("y.img"), &raw, "insecure");
}

#[test]
fn basic_and_bearer_token_auth_are_answered_and_refusals_named() {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = raw_disk(dir.path(), "disk.img", 2 * MIB, 3);
    for auth in [Auth::Basic, Auth::Token] {
        let Some(reg) = Registry::start(Options { tls: true, auth }) else {
            return;
        };
        let what = format!("{auth:?}");
        let pushed = reg.push(
            &container_disk("disk.img", &disk, Compression::Gzip),
            "private/disk:v1",
        );
        let dst = dir.path().join(format!("{what}.img"));
        pull(&reg, &pushed.reference(), &dst, dir.path(), &[]).success(&what);
        assert_identical(&dst, &disk, &what);
        if auth == Auth::Token {
            let asked = reg.token_requests();
            assert!(
                asked
                    .iter()
                    .any(|r| r.to_string().contains("repository:private/disk:pull")),
                "the token server was asked for pull on the repository: {asked:?}"
            );
        }
        // No credentials: an authentication failure (4) that says so.
        let ca = ca_dir(&reg, dir.path());
        let mut cmd = copy_cmd(&pushed.reference(), &dir.path().join("anon.img"), &[]);
        cmd.args(["--http-ca-dir", ca.to_str().unwrap()]);
        let r = run(cmd, RUN_LIMIT);
        assert_eq!(r.status.code(), Some(4), "{what}: {}", r.stderr);
        r.failure(&what, &["authentication failed"]);
        // A wrong password.
        let f = dir.path().join("wrong");
        std::fs::write(&f, "not-the-password\n").unwrap();
        let mut cmd = copy_cmd(&pushed.reference(), &dir.path().join("wrong.img"), &[]);
        cmd.args(["--http-ca-dir", ca.to_str().unwrap()])
            .args(["--registry-user", registry::USER])
            .args(["--registry-password-file", f.to_str().unwrap()]);
        let r = run(cmd, RUN_LIMIT);
        assert_eq!(r.status.code(), Some(4), "{what}: {}", r.stderr);
        r.failure(&what, &["authentication failed"]);
    }
    // A token server that gives anonymous clients pull (Docker Hub's public images).
    let Some(reg) = Registry::start(Options {
        tls: false,
        auth: Auth::TokenAnonymousPull,
    }) else {
        return;
    };
    let pushed = reg.push(
        &container_disk("disk.img", &disk, Compression::Zstd),
        "public/disk:v1",
    );
    let dst = dir.path().join("anon-pull.img");
    let mut cmd = copy_cmd(&pushed.reference(), &dst, &[]);
    cmd.arg("--insecure-registry");
    run(cmd, RUN_LIMIT).success("anonymous token");
    assert_identical(&dst, &disk, "anonymous token");
}

#[test]
fn a_multi_arch_index_gives_the_host_architecture_or_the_one_asked_for() {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(reg) = Registry::start(Options::default()) else {
        return;
    };
    let amd = raw_disk(dir.path(), "amd64.img", MIB, 11);
    let arm = raw_disk(dir.path(), "arm64.img", MIB, 12);
    let index = Index::new()
        .image(container_disk("disk.img", &amd, Compression::Gzip))
        .image(
            container_disk("disk.img", &arm, Compression::Gzip).platform(
                "linux",
                "arm64",
                Some("v8"),
            ),
        );
    for format in [Format::Oci, Format::Docker] {
        let pushed = reg.push_as(&index, &format!("multi/disk:{format:?}"), format);
        let dst = dir.path().join("host.img");
        pull(&reg, &pushed.reference(), &dst, dir.path(), &[]).success("host arch");
        if std::env::consts::ARCH == "x86_64" {
            assert_identical(&dst, &amd, "host arch (amd64)");
        }
        let dst = dir.path().join("arm.img");
        pull(
            &reg,
            &pushed.reference(),
            &dst,
            dir.path(),
            &["--arch", "arm64"],
        )
        .success("arm64");
        assert_identical(&dst, &arm, &format!("{format:?} arm64"));
        let r = pull(
            &reg,
            &pushed.reference(),
            &dir.path().join("s390x.img"),
            dir.path(),
            &["--arch", "s390x"],
        );
        assert_eq!(r.status.code(), Some(2), "{}", r.stderr);
        r.failure(
            "s390x",
            &[
                "no manifest for linux/s390x",
                "linux/amd64",
                "linux/arm64/v8",
            ],
        );
    }
    // A single-platform image asked for another architecture: CDI's refusal.
    let one = reg.push(
        &container_disk("disk.img", &amd, Compression::Gzip),
        "single/disk:1",
    );
    let r = pull(
        &reg,
        &one.reference(),
        &dir.path().join("mismatch.img"),
        dir.path(),
        &["--arch", "arm64"],
    );
    assert_eq!(r.status.code(), Some(2), "{}", r.stderr);
    r.failure(
        "arch mismatch",
        &["architecture is \"amd64\", not the \"arm64\" asked for"],
    );
}

#[test]
fn the_disk_is_the_one_file_under_disk_and_anything_else_is_refused_by_name() {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(reg) = Registry::start(Options::default()) else {
        return;
    };
    let disk = raw_disk(dir.path(), "disk.img", MIB, 21);
    let other = raw_disk(dir.path(), "other.img", MIB, 22);
    // The disk in a second layer, after a layer of other files: found.
    let two_layers = Image::new()
        .layer(
            Layer::new(Compression::Gzip)
                .dir("etc/", 0o755)
                .bytes("etc/os-release", b"ID=test\n", 0o644)
                .whiteout("etc/old"),
        )
        .layer(Layer::new(Compression::Zstd).dir("disk/", 0o555).file(
            "disk/disk.img",
            &disk,
            0o440,
        ));
    let p = reg.push(&two_layers, "layout/second:1");
    let dst = dir.path().join("second.img");
    pull(&reg, &p.reference(), &dst, dir.path(), &[]).success("disk in layer 1");
    assert_identical(&dst, &disk, "disk in layer 1");
    for (what, image, phrases, code) in [
        (
            "two disks in one layer",
            Image::new().layer(
                Layer::new(Compression::Gzip)
                    .dir("disk/", 0o555)
                    .file("disk/a.img", &disk, 0o440)
                    .file("disk/b.img", &other, 0o440),
            ),
            vec![
                "2 files under /disk/",
                "disk/a.img (layer 0)",
                "disk/b.img (layer 0)",
            ],
            2,
        ),
        (
            "two disks in two layers",
            Image::new()
                .layer(Layer::new(Compression::Gzip).file("disk/a.img", &disk, 0o440))
                .layer(Layer::new(Compression::None).file("disk/b.img", &other, 0o440)),
            vec!["disk/a.img (layer 0)", "disk/b.img (layer 1)"],
            2,
        ),
        (
            "no disk",
            Image::new().layer(Layer::new(Compression::Gzip).bytes("README", b"hi", 0o644)),
            vec!["no disk file under /disk/", "README"],
            2,
        ),
        (
            "a whiteout under disk/",
            Image::new()
                .layer(Layer::new(Compression::Gzip).file("disk/a.img", &disk, 0o440))
                .layer(Layer::new(Compression::Gzip).whiteout("disk/a.img")),
            vec!["disk/.wh.a.img is a whiteout"],
            2,
        ),
        (
            "a symlink under disk/",
            Image::new()
                .layer(Layer::new(Compression::Gzip).symlink("disk/disk.img", "/etc/shadow")),
            vec!["disk/disk.img is a link"],
            2,
        ),
        (
            "a symlink in a plain layer",
            Image::new().layer(
                Layer::new(Compression::None)
                    .file("disk/a.img", &disk, 0o440)
                    .symlink("disk/b.img", "a.img"),
            ),
            vec!["disk/b.img is a link"],
            2,
        ),
    ] {
        let slug: String = what.replace([' ', '/'], "-").trim_matches('-').to_string();
        let p = reg.push(&image, &format!("bad/{slug}:1"));
        let dst = dir.path().join("bad.img");
        let r = pull(&reg, &p.reference(), &dst, dir.path(), &[]);
        assert_eq!(r.status.code(), Some(code), "{what}: {}", r.stderr);
        let mut ph: Vec<&str> = phrases.clone();
        ph.push(&p.repo);
        r.failure(what, &ph);
    }
}

#[test]
fn a_blob_that_does_not_match_its_digest_fails_the_copy() {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(reg) = Registry::start(Options::default()) else {
        return;
    };
    let disk = raw_disk(dir.path(), "disk.img", 4 * MIB, 31);
    for c in [Compression::Gzip, Compression::None] {
        let p = reg.push(
            &container_disk("disk.img", &disk, c),
            &format!("corrupt/{c:?}:1").to_lowercase(),
        );
        let layer = p.layers()[0].digest.clone();
        if c == Compression::None {
            // Inside the disk's bytes: the tar still walks, the hash does not match.
            reg.overwrite_blob(&layer, 512 * 4 + 100_000, b"CORRUPT!");
        } else {
            reg.corrupt_blob(&layer);
        }
        let dst = dir.path().join("corrupt.img");
        let r = pull(&reg, &p.reference(), &dst, dir.path(), &[]);
        assert_ne!(
            r.status.code(),
            Some(0),
            "{c:?}: a corrupt layer reported complete"
        );
        let msg = r.failure(&format!("{c:?}"), &[]);
        assert!(
            msg.contains(&layer[..19])
                || msg.contains("gzip")
                || msg.contains("corrupt")
                || msg.contains("invalid"),
            "{c:?}: {msg}"
        );
        if c == Compression::None {
            assert!(
                msg.contains("checksum mismatch") || msg.contains("has digest"),
                "{msg}"
            );
        }
    }
    // A digest that is well formed but not the registry's: not found (5).
    let p = reg.push(
        &container_disk("disk.img", &disk, Compression::Gzip),
        "exists/disk:1",
    );
    let missing = format!("docker://{}/{}@sha256:{}", p.host, p.repo, "0".repeat(64));
    let r = pull(
        &reg,
        &missing,
        &dir.path().join("missing.img"),
        dir.path(),
        &[],
    );
    assert_eq!(r.status.code(), Some(5), "{}", r.stderr);
    r.failure("missing digest", &["no manifest"]);
    // A tag that is not there.
    let r = pull(
        &reg,
        &format!("docker://{}/{}:nope", p.host, p.repo),
        &dir.path().join("m2.img"),
        dir.path(),
        &[],
    );
    assert_eq!(r.status.code(), Some(5), "{}", r.stderr);
    // A malformed reference is named before any connection.
    let r = run(
        copy_cmd("docker://Registry/UPPER", &dir.path().join("m3.img"), &[]),
        RUN_LIMIT,
    );
    assert_eq!(r.status.code(), Some(2), "{}", r.stderr);
    r.failure(
        "bad reference",
        &["invalid image reference", "repository component"],
    );
}
