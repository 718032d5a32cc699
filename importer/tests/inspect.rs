//! `ferry inspect SRC` and `ferry inspect --vddk-libdir DIR`: the allocation it reports
//! equals nbdinfo's map, an image is inspected through its map, a target too small fails
//! with the target's exit status, an unreachable source with the source's; a VDDK
//! distribution with its links kept passes, one with a dangling link, flattened links or
//! a library whose dependency is missing is named for it. (The IMPORTER_* form against
//! the fake vCenter and the fake VDDK is in `import.rs`.)

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn inspect(args: &[&str]) -> (Run, serde_json::Value) {
    let mut c = ferry(&["inspect", "--json", "--seconds", "1"]);
    c.args(args).env("FERRY_LOG", "warn");
    let r = run(c, RUN_LIMIT);
    assert!(!r.stderr.contains("panicked"), "{r:?}");
    let v = serde_json::from_str(r.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {r:?}"));
    (r, v)
}

fn step<'a>(v: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} step: {v}"))
}

/// Data bytes in nbdinfo's map of `uri` (type 0: allocated data).
fn nbdinfo_data(uri: &str) -> u64 {
    let out = Command::new("nbdinfo")
        .args(["--map", uri])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3 && f[2] == "0").then(|| f[1].parse::<u64>().unwrap())
        })
        .sum()
}

#[test]
fn inspect_reports_the_allocation_nbdinfo_maps_and_fails_on_a_small_target() {
    if !require_root(&["nbdkit", "nbdinfo", "qemu-img"], true) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = ferry_test_kit::Server::nbdkit(
        dir.path(),
        &[
            "sparse-random",
            "size=64M",
            "percent=30",
            "runlength=262144",
            "seed=6",
        ],
    );
    let (r, v) = inspect(&[&src.uri(), "--target", dir.path().to_str().unwrap()]);
    assert_eq!(r.status.code(), Some(0), "{r:?}");
    assert_eq!(v["ready"], true);
    assert_eq!(v["size"], 64 << 20);
    assert_eq!(
        v["allocated"].as_u64().unwrap(),
        nbdinfo_data(&src.uri()),
        "{v}"
    );
    assert_eq!(step(&v, "target")["status"], "ok");
    assert_eq!(step(&v, "read-rate")["status"], "ok");

    // A block device smaller than the disk: the target's kind (7).
    let backing = dir.path().join("small.img");
    fill(&backing, 0, 16 << 20);
    let dev = Loop::new(&backing, &[]);
    let (r, v) = inspect(&[&src.uri(), "--target", dev.dev.to_str().unwrap()]);
    assert_eq!(r.status.code(), Some(7), "{r:?}");
    assert_eq!(step(&v, "target")["status"], "fail");
    assert!(
        step(&v, "target")["detail"]
            .as_str()
            .unwrap()
            .contains("smaller than the disk"),
        "{v}"
    );

    // A qcow2 through its map: the virtual size.
    let q = dir.path().join("d.qcow2");
    ferry_test_kit::run_ok(
        Command::new("qemu-img")
            .args(["create", "-f", "qcow2"])
            .arg(&q)
            .arg("1G"),
    );
    let (r, v) = inspect(&[q.to_str().unwrap()]);
    assert_eq!(r.status.code(), Some(0), "{r:?}");
    assert_eq!(v["size"], 1u64 << 30);
    assert_eq!(v["allocated"], 0);

    // Nothing listening: the source's kind (3), nothing after.
    let gone = format!(
        "nbd+unix:///?socket={}",
        dir.path().join("none.sock").display()
    );
    let (r, v) = inspect(&[&gone]);
    assert_eq!(r.status.code(), Some(3), "{r:?}");
    assert_eq!(step(&v, "reachable")["status"], "fail");
}

fn built(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(Path::parent).unwrap().join(name)
}

#[test]
fn a_vddk_distribution_is_checked_for_links_dependencies_and_symbols() {
    if !require(&["ldd", "gcc"]) {
        return;
    }
    let fake = built("libvixDiskLib.so");
    if !fake.is_file() {
        panic!(
            "{} is missing: build it first: cargo build -p fake-vddk",
            fake.display()
        );
    }
    let dir = tempfile::tempdir().unwrap();
    // As the tarball lays it out: lib64/libvixDiskLib.so.8.0.2 and links to it.
    let good = dir.path().join("good");
    let lib64 = good.join("lib64");
    std::fs::create_dir_all(&lib64).unwrap();
    std::fs::copy(&fake, lib64.join("libvixDiskLib.so.8.0.2")).unwrap();
    std::os::unix::fs::symlink("libvixDiskLib.so.8.0.2", lib64.join("libvixDiskLib.so.8")).unwrap();
    std::os::unix::fs::symlink("libvixDiskLib.so.8", lib64.join("libvixDiskLib.so")).unwrap();
    let (r, v) = inspect(&["--vddk-libdir", good.to_str().unwrap()]);
    assert_eq!(r.status.code(), Some(0), "{r:?}");
    assert_eq!(v["vddk_version"], "8.0.2", "{v}");
    for s in ["vddk-library", "vddk-links", "vddk-deps", "vddk-load"] {
        assert_eq!(step(&v, s)["status"], "ok", "{s}: {v}");
    }

    // Copied without its links: works, with a warning.
    let flat = dir.path().join("flat/lib64");
    std::fs::create_dir_all(&flat).unwrap();
    for n in ["libvixDiskLib.so.8.0.2", "libvixDiskLib.so.8"] {
        std::fs::copy(&fake, flat.join(n)).unwrap();
    }
    let (r, v) = inspect(&["--vddk-libdir", dir.path().join("flat").to_str().unwrap()]);
    assert_eq!(r.status.code(), Some(0), "{r:?}");
    assert_eq!(step(&v, "vddk-links")["status"], "warn", "{v}");

    // A dangling link.
    let dangling = dir.path().join("dangling/lib64");
    std::fs::create_dir_all(&dangling).unwrap();
    std::fs::copy(&fake, dangling.join("libvixDiskLib.so.8")).unwrap();
    std::os::unix::fs::symlink("libgone.so.1", dangling.join("libssl.so.1")).unwrap();
    let (r, v) = inspect(&[
        "--vddk-libdir",
        dir.path().join("dangling").to_str().unwrap(),
    ]);
    assert_eq!(r.status.code(), Some(2), "{r:?}");
    assert_eq!(step(&v, "vddk-links")["status"], "fail", "{v}");

    // A library that needs a library nobody ships: named by ldd.
    let deps = dir.path().join("deps/lib64");
    std::fs::create_dir_all(&deps).unwrap();
    let c = dir.path().join("x.c");
    std::fs::write(&c, "int helper(void) { return 1; }\n").unwrap();
    let helper = dir.path().join("libferrytestmissing.so");
    ferry_test_kit::run_ok(
        Command::new("gcc")
            .args(["-shared", "-fPIC", "-o"])
            .arg(&helper)
            .arg(&c),
    );
    ferry_test_kit::run_ok(
        Command::new("gcc")
            .args(["-shared", "-fPIC", "-o"])
            .arg(deps.join("libvixDiskLib.so.8"))
            .arg(&c)
            .arg(format!("-L{}", dir.path().display()))
            .args(["-Wl,--no-as-needed", "-lferrytestmissing"]),
    );
    std::fs::remove_file(&helper).unwrap();
    let (r, v) = inspect(&["--vddk-libdir", dir.path().join("deps").to_str().unwrap()]);
    assert_eq!(r.status.code(), Some(2), "{r:?}");
    let d = step(&v, "vddk-deps");
    assert_eq!(d["status"], "fail", "{v}");
    assert!(
        d["detail"]
            .as_str()
            .unwrap()
            .contains("libferrytestmissing.so"),
        "{v}"
    );
    assert_eq!(step(&v, "vddk-load")["status"], "fail", "{v}");

    // Nothing there.
    let (r, v) = inspect(&[
        "--vddk-libdir",
        dir.path().join("nothing").to_str().unwrap(),
    ]);
    assert_eq!(r.status.code(), Some(2), "{r:?}");
    assert_eq!(step(&v, "vddk-library")["status"], "fail");
}

/// `scripts/vddk-image.sh TARBALL --layout-only DIR` lays a VMware-style tarball out as
/// the VDDK image's entrypoint does in /opt, links kept, after `ferry inspect` passed it;
/// a tarball whose distribution is broken stops before anything is laid out.
#[test]
fn the_vddk_image_script_keeps_links_and_refuses_a_broken_distribution() {
    if !require(&["tar", "ldd"]) {
        return;
    }
    let fake = built("libvixDiskLib.so");
    assert!(
        fake.is_file(),
        "{} is missing: cargo build -p fake-vddk",
        fake.display()
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/vddk-image.sh");
    let dir = tempfile::tempdir().unwrap();
    let make = |name: &str, dangling: bool| {
        let root = dir.path().join(name);
        let lib64 = root.join("vmware-vix-disklib-distrib/lib64");
        std::fs::create_dir_all(&lib64).unwrap();
        std::fs::create_dir_all(root.join("vmware-vix-disklib-distrib/include")).unwrap();
        std::fs::copy(&fake, lib64.join("libvixDiskLib.so.8.0.2")).unwrap();
        std::os::unix::fs::symlink("libvixDiskLib.so.8.0.2", lib64.join("libvixDiskLib.so.8"))
            .unwrap();
        if dangling {
            std::os::unix::fs::symlink("libcrypto.so.3.0.9", lib64.join("libcrypto.so.3")).unwrap();
        }
        let tarball = dir.path().join(format!("{name}.tar.gz"));
        ferry_test_kit::run_ok(
            Command::new("tar")
                .arg("-czf")
                .arg(&tarball)
                .arg("-C")
                .arg(&root)
                .arg("vmware-vix-disklib-distrib"),
        );
        tarball
    };
    let out = dir.path().join("opt");
    let good = make("good", false);
    let mut c = Command::new("bash");
    c.arg(&script)
        .arg(&good)
        .arg("--layout-only")
        .arg(&out)
        .env("FERRY", FERRY);
    let r = run(c, RUN_LIMIT);
    assert!(r.status.success(), "{r:?}");
    let lib = out.join("vmware-vix-disklib-distrib/lib64/libvixDiskLib.so.8");
    assert!(
        std::fs::symlink_metadata(&lib)
            .unwrap()
            .file_type()
            .is_symlink(),
        "the link was not kept"
    );
    let (r, v) = inspect(&[
        "--vddk-libdir",
        out.join("vmware-vix-disklib-distrib").to_str().unwrap(),
    ]);
    assert_eq!(r.status.code(), Some(0), "{r:?}");
    assert_eq!(v["vddk_version"], "8.0.2");

    let bad = make("bad", true);
    let out2 = dir.path().join("opt2");
    let mut c = Command::new("bash");
    c.arg(&script)
        .arg(&bad)
        .arg("--layout-only")
        .arg(&out2)
        .env("FERRY", FERRY);
    let r = run(c, RUN_LIMIT);
    assert!(!r.status.success(), "{r:?}");
    assert!(r.stdout.contains("FAIL vddk-links"), "{r:?}");
    assert!(!out2.exists(), "laid out a broken distribution");
}
