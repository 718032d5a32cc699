//! qcow2 images as sources, read through their own map: images made by `qemu-img` and
//! `qemu-io` in every layout they write, copied by `ferry copy` from a file and over NBD
//! (nbdkit serving the image's bytes), each compared with `cmp` against
//! `qemu-img convert -O raw`; holes stay holes; hostile or truncated images fail by kind.

mod common;

use std::path::{Path, PathBuf};

use common::*;

const MIB: u64 = 1024 * 1024;

/// 8 MiB + 4000 bytes: 3 MiB of text, 1 MiB of random bytes, zeroes, an odd tail.
fn raw_disk(dir: &Path) -> PathBuf {
    let p = dir.join("disk.raw");
    let (m, n) = (MIB as usize, 8 * MIB as usize);
    std::fs::write(&p, ferry_test_kit::mixed_disk(3 * m, m, n)).unwrap();
    p
}

fn qemu_img(args: &[&str]) {
    sh("qemu-img", args);
}

/// `qemu-img convert -O raw IMG` (the reference).
fn reference(img: &Path) -> PathBuf {
    let out = img.with_extension("ref.raw");
    qemu_img(&[
        "convert",
        "-O",
        "raw",
        img.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    out
}

#[test]
fn qcow2_in_every_layout_qemu_writes_is_copied_exactly() {
    if !require(&["qemu-img", "cmp"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = raw_disk(dir.path());
    for (name, compress, opts) in [
        ("v3", false, "compat=1.1"),
        ("v2", false, "compat=0.10"),
        ("deflate", true, "compat=1.1"),
        ("zstd", true, "compression_type=zstd"),
        ("extended-l2", false, "extended_l2=on,cluster_size=128k"),
        ("4k-clusters", false, "cluster_size=4096"),
        ("2m-clusters", false, "cluster_size=2M"),
        ("prealloc-metadata", false, "preallocation=metadata"),
        ("prealloc-falloc", false, "preallocation=falloc"),
    ] {
        let img = dir.path().join(format!("{name}.qcow2"));
        let mut args = vec!["convert", "-q", "-O", "qcow2", "-o", opts];
        if compress {
            args.push("-c");
        }
        args.extend([raw.to_str().unwrap(), img.to_str().unwrap()]);
        qemu_img(&args);
        let want = reference(&img);
        for_each_engine(|engine| {
            let ctx = format!("{name}, engine {engine}");
            let t = dir.path().join(format!("{name}-{engine}.img"));
            let v = copy(img.to_str().unwrap(), &t, engine, &[]).success(&ctx);
            assert_eq!(
                num(&v, "size"),
                file_size(&want),
                "[{ctx}] the virtual size"
            );
            assert_identical(&t, &want, &ctx);
            // The zero half of the disk is never written as bytes.
            assert!(
                num(&v, "bytes_written") <= 5 * MIB,
                "[{ctx}] only data written: {v}"
            );
        });
    }
}

#[test]
fn qcow2_with_zero_clusters_and_subclusters_made_by_qemu_io_is_copied_exactly() {
    if !require(&["qemu-img", "qemu-io", "cmp"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for opts in ["compat=1.1", "extended_l2=on,cluster_size=64k"] {
        let img = dir.path().join("io.qcow2");
        let _ = std::fs::remove_file(&img);
        ferry_test_kit::qemu_image_with(
            &img,
            "qcow2",
            opts,
            "64M",
            &[
                "write -P 0xab 1M 64k",
                "write -P 0xcd 5M 4k",
                "write -z 1M 32k",
                "write -P 0x11 63M 1M",
                "write -P 0x22 7340544 1024",
            ],
        );
        let want = reference(&img);
        let t = dir.path().join("io.img");
        let _ = std::fs::remove_file(&t);
        copy(img.to_str().unwrap(), &t, "uring", &[]).success(opts);
        assert_identical(&t, &want, opts);
        assert!(
            allocated(&t) < 4 * MIB,
            "[{opts}] sparse: {}",
            allocated(&t)
        );
    }
}

#[test]
fn qcow2_served_over_nbd_as_bytes_is_decoded() {
    if !require(&["qemu-img", "nbdkit", "cmp"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = raw_disk(dir.path());
    let img = dir.path().join("z.qcow2");
    qemu_img(&[
        "convert",
        "-q",
        "-c",
        "-O",
        "qcow2",
        "-o",
        "compression_type=zstd",
        raw.to_str().unwrap(),
        img.to_str().unwrap(),
    ]);
    let want = reference(&img);
    let srv = Server::nbdkit(dir.path(), &["file", img.to_str().unwrap()]);
    let t = dir.path().join("t.img");
    copy(&srv.uri(), &t, "sync", &[]).success("qcow2 over NBD");
    assert_identical(&t, &want, "qcow2 over NBD");
}

#[test]
fn a_truncated_or_hostile_qcow2_fails_by_kind_and_names_the_problem() {
    if !require(&["qemu-img"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = raw_disk(dir.path());
    let img = dir.path().join("full.qcow2");
    qemu_img(&[
        "convert",
        "-q",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        img.to_str().unwrap(),
    ]);
    let bytes = std::fs::read(&img).unwrap();
    let t = dir.path().join("t.img");
    // Cut in the tables, and cut in the data: a truncated download is never a shorter
    // or zero-filled disk reported complete.
    for cut in [200_000usize, bytes.len() - 70_000] {
        let p = dir.path().join(format!("cut-{cut}.qcow2"));
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let _ = std::fs::remove_file(&t);
        let r = copy(p.to_str().unwrap(), &t, "sync", &[]);
        r.failure(
            "truncated",
            &["past the end of the image", "truncated or corrupt"],
        );
        assert_eq!(r.status.code(), Some(6), "source data: {}", r.stderr);
    }
    // A backing file naming a host file is refused before anything is read from it.
    let child = dir.path().join("child.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        img.to_str().unwrap(),
        "-F",
        "qcow2",
        child.to_str().unwrap(),
    ]);
    let _ = std::fs::remove_file(&t);
    let r = copy(child.to_str().unwrap(), &t, "sync", &[]);
    r.failure(
        "backing file",
        &["has a backing file", "never opens a file an image names"],
    );
    assert_eq!(r.status.code(), Some(2), "usage: {}", r.stderr);
    assert!(!t.exists(), "no target for a refused image");
    // An unknown incompatible feature.
    let mut odd = bytes.clone();
    odd[79] |= 0x80;
    let p = dir.path().join("odd.qcow2");
    std::fs::write(&p, odd).unwrap();
    copy(p.to_str().unwrap(), &t, "sync", &[]).failure(
        "unknown feature",
        &["unknown incompatible features (bits 0x80)"],
    );
    // An L2 table that is the L1 table itself, and a data cluster on the L1 table: the
    // image's own metadata is never read as data (exit 6).
    let be = |b: &[u8], at: usize| u64::from_be_bytes(b[at..at + 8].try_into().unwrap());
    let l1 = usize::try_from(be(&bytes, 40)).unwrap();
    let mut looped = bytes.clone();
    looped[l1..l1 + 8].copy_from_slice(&((1u64 << 63) | l1 as u64).to_be_bytes());
    let p = dir.path().join("l1-loop.qcow2");
    std::fs::write(&p, &looped).unwrap();
    let r = copy(p.to_str().unwrap(), &t, "sync", &[]);
    r.failure(
        "L2 on L1",
        &["L2 table at", "overlaps the image's L1 table"],
    );
    assert_eq!(r.status.code(), Some(6));
    let l2 = usize::try_from(be(&bytes, l1) & 0x00ff_ffff_ffff_fe00).unwrap();
    let mut on_l1 = bytes.clone();
    on_l1[l2..l2 + 8].copy_from_slice(&((1u64 << 63) | l1 as u64).to_be_bytes());
    let p = dir.path().join("on-l1.qcow2");
    std::fs::write(&p, &on_l1).unwrap();
    let r = copy(p.to_str().unwrap(), &t, "sync", &[]);
    r.failure(
        "data on L1",
        &["data cluster at", "overlaps the image's L1 table"],
    );
    assert_eq!(r.status.code(), Some(6));
}

/// An OVA as `tar` writes it (ustar, GNU and pax headers) and as python's tarfile
/// writes it: the OVF descriptor first, then the disks.
fn ova(dir: &Path, name: &str, format: &str, members: &[&Path]) -> PathBuf {
    let out = dir.join(name);
    let mut cmd = std::process::Command::new("tar");
    cmd.arg(format!("--format={format}"))
        .arg("-cf")
        .arg(&out)
        .arg("-C")
        .arg(dir);
    for m in members {
        cmd.arg(m.file_name().unwrap());
    }
    assert!(cmd.status().unwrap().success(), "tar {name}");
    out
}

fn ovf(dir: &Path, disks: &[&str]) -> PathBuf {
    let p = dir.join("vm.ovf");
    let refs: String = disks
        .iter()
        .map(|d| format!("<File ovf:href=\"{d}\" ovf:id=\"{d}\"/>"))
        .collect();
    std::fs::write(
        &p,
        format!("<?xml version=\"1.0\"?><Envelope><References>{refs}</References></Envelope>"),
    )
    .unwrap();
    p
}

#[test]
fn an_ovas_disk_is_read_in_place_from_a_file_and_passed_through_from_a_stream() {
    if !require(&["qemu-img", "tar", "python3"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw = raw_disk(d);
    let img = d.join("disk.qcow2");
    qemu_img(&[
        "convert",
        "-q",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        img.to_str().unwrap(),
    ]);
    let want = reference(&img);
    let t = d.join("t.img");
    let one = ovf(d, &["disk.qcow2"]);
    for format in ["ustar", "gnu", "pax"] {
        let a = ova(d, &format!("{format}.ova"), format, &[&one, &img]);
        let _ = std::fs::remove_file(&t);
        copy(a.to_str().unwrap(), &t, "uring", &[]).success(format);
        assert_identical(&t, &want, format);
    }
    // python's tarfile (PAX by default), a raw disk inside: from a file, and as a stream.
    let py = d.join("py.ova");
    sh(
        "python3",
        &[
            "-c",
            "import sys, tarfile\n\
             with tarfile.open(sys.argv[1], 'w') as t:\n\
             \x20   t.add(sys.argv[2], 'vm.ovf'); t.add(sys.argv[3], 'disk.raw')",
            py.to_str().unwrap(),
            one.to_str().unwrap(),
            raw.to_str().unwrap(),
        ],
    );
    let _ = std::fs::remove_file(&t);
    copy(py.to_str().unwrap(), &t, "uring", &[]).success("tarfile");
    assert_identical(&t, &raw, "tarfile");
    let _ = std::fs::remove_file(&t);
    copy_stdin(&py, &t, "sync", &[]).success("tarfile on stdin");
    assert_identical(&t, &raw, "tarfile on stdin");
    // A qcow2 inside an archive on a stream needs random access.
    let _ = std::fs::remove_file(&t);
    let r = copy_stdin(&d.join("ustar.ova"), &t, "sync", &[]);
    r.failure(
        "qcow2 in a streamed OVA",
        &["member disk.qcow2", "scratch copy would be needed"],
    );
    assert_eq!(r.status.code(), Some(2));
}

#[test]
fn an_ova_with_two_disks_needs_one_named_and_a_bad_archive_fails_by_kind() {
    if !require(&["qemu-img", "tar"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw = raw_disk(d);
    let img = d.join("disk.qcow2");
    qemu_img(&[
        "convert",
        "-q",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        img.to_str().unwrap(),
    ]);
    let two = ovf(d, &["disk.raw", "disk.qcow2"]);
    let a = ova(d, "two.ova", "ustar", &[&two, &raw, &img]);
    let t = d.join("t.img");
    // Unnamed: refused up front from a file (every member listed) and from a stream
    // (the OVF names two disks), exit 2, no target.
    let r = copy(a.to_str().unwrap(), &t, "sync", &[]);
    r.failure(
        "two disks",
        &["holds 2 disks (disk.raw, disk.qcow2): name the one to copy"],
    );
    assert_eq!(r.status.code(), Some(2));
    assert!(!t.exists());
    let r = copy_stdin(&a, &t, "sync", &[]);
    r.failure("two disks on stdin", &["holds 2 disks"]);
    assert_eq!(r.status.code(), Some(2));
    // Named, by the member's name: either one, from a file; the raw one from a stream.
    copy(a.to_str().unwrap(), &t, "sync", &["--member", "disk.qcow2"]).success("named qcow2");
    assert_identical(&t, &reference(&img), "named qcow2");
    let _ = std::fs::remove_file(&t);
    copy_stdin(&a, &t, "sync", &["--member", "disk.raw"]).success("named raw on stdin");
    assert_identical(&t, &raw, "named raw on stdin");
    let _ = std::fs::remove_file(&t);
    let r = copy(
        a.to_str().unwrap(),
        &t,
        "sync",
        &["--member", "nothing.vmdk"],
    );
    r.failure("not found", &["no member \"nothing.vmdk\"", "disk.raw"]);
    assert_eq!(r.status.code(), Some(2));
    // A symlink named as the disk is refused: nothing an archive names is opened.
    std::os::unix::fs::symlink("/etc/hostname", d.join("link.img")).unwrap();
    let l = ova(d, "link.ova", "ustar", &[&d.join("link.img")]);
    let r = copy(l.to_str().unwrap(), &t, "sync", &["--member", "link.img"]);
    r.failure(
        "symlink",
        &["member \"link.img\" is a link, not a disk image"],
    );
    assert_eq!(r.status.code(), Some(2));
    // Cut inside the disk member: a file and a stream both fail (exit 6), never a
    // shorter disk.
    let bytes = std::fs::read(&a).unwrap();
    let cut = d.join("cut.ova");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let _ = std::fs::remove_file(&t);
    let r = copy(cut.to_str().unwrap(), &t, "sync", &["--member", "disk.raw"]);
    r.failure("cut file", &["truncated"]);
    assert_eq!(r.status.code(), Some(6));
    let _ = std::fs::remove_file(&t);
    let r = copy_stdin(&cut, &t, "sync", &["--member", "disk.raw"]);
    r.failure("cut stream", &["truncated"]);
    assert_ne!(r.status.code(), Some(0));
    // A corrupt header checksum.
    let mut bad = bytes.clone();
    bad[0] ^= 0x20;
    std::fs::write(&cut, &bad).unwrap();
    let r = copy(cut.to_str().unwrap(), &t, "sync", &[]);
    // The first header no longer sums: not even recognised as a tar member list.
    assert_ne!(r.status.code(), Some(0), "{}", r.stderr);
    assert!(r.stderr.contains("checksum"), "{}", r.stderr);
}

#[test]
fn format_overrides_what_the_first_bytes_say() {
    if !require(&["qemu-img", "cmp"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw = raw_disk(d);
    let img = d.join("disk.qcow2");
    qemu_img(&[
        "convert",
        "-q",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        img.to_str().unwrap(),
    ]);
    let t = d.join("t.img");
    let i = img.to_str().unwrap();
    copy(i, &t, "sync", &["--format", "qcow2"]).success("forced qcow2");
    assert_identical(&t, &reference(&img), "forced qcow2");
    // raw: the image file's own bytes (a raw disk that holds an image is copied as is).
    let _ = std::fs::remove_file(&t);
    copy(i, &t, "sync", &["--format", "raw"]).success("forced raw");
    assert_identical(&t, &img, "forced raw");
    // A raw disk read as qcow2 names what is missing.
    let _ = std::fs::remove_file(&t);
    let r = copy(raw.to_str().unwrap(), &t, "sync", &["--format", "qcow2"]);
    r.failure("raw as qcow2", &["not a qcow2 image"]);
    assert!(!t.exists(), "no target");
    // On a stream a forced qcow2 needs scratch.
    let r = copy_stdin(&img, &t, "sync", &["--format", "qcow2"]);
    r.failure("forced qcow2 on stdin", &["scratch copy would be needed"]);
    let scratch = d.join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    copy_stdin(
        &img,
        &t,
        "sync",
        &["--format", "qcow2", "--scratch", scratch.to_str().unwrap()],
    )
    .success("forced qcow2 on stdin, staged");
    assert_identical(&t, &reference(&img), "forced qcow2 on stdin, staged");
}

/// VMware's own streamOptimized layout (grain directory at the end, after a footer),
/// written by python3-vmdkstream; None when it is not installed.
fn vmware_stream(raw: &Path, out: &Path) -> Option<PathBuf> {
    let py = "/usr/bin/python3";
    let ok = std::process::Command::new(py)
        .args(["-c", "import VMDKstream"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        skip("python3-vmdkstream (module VMDKstream) is not installed");
        return None;
    }
    sh(
        py,
        &[
            "-c",
            "import sys, VMDKstream; VMDKstream.convert_to_stream(sys.argv[1], sys.argv[2])",
            raw.to_str().unwrap(),
            out.to_str().unwrap(),
        ],
    );
    Some(out.to_path_buf())
}

#[test]
fn vmdks_are_read_through_their_maps_and_streams_in_order() {
    if !require(&["qemu-img", "gzip", "tar", "cmp"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw = raw_disk(d);
    let r = raw.to_str().unwrap();
    let t = d.join("t.img");
    let mut images = Vec::new();
    for (name, opts) in [
        ("sparse.vmdk", "subformat=monolithicSparse"),
        ("zeroed.vmdk", "subformat=monolithicSparse,zeroed_grain=on"),
        ("stream.vmdk", "subformat=streamOptimized"),
    ] {
        let p = d.join(name);
        qemu_img(&[
            "convert",
            "-q",
            "-O",
            "vmdk",
            "-o",
            opts,
            r,
            p.to_str().unwrap(),
        ]);
        images.push(p);
    }
    // VMDKstream's disks are whole sectors: its input is the first 8 MiB.
    let raw8 = d.join("disk8.raw");
    std::fs::write(&raw8, &std::fs::read(&raw).unwrap()[..8 << 20]).unwrap();
    let vmware = vmware_stream(&raw8, &d.join("vmware.vmdk"));
    // From a file, through the map: every layout.
    for img in &images {
        let ctx = img.file_name().unwrap().to_str().unwrap();
        let _ = std::fs::remove_file(&t);
        copy(img.to_str().unwrap(), &t, "uring", &[]).success(ctx);
        assert_identical(&t, &reference(img), ctx);
    }
    if let Some(v) = &vmware {
        let _ = std::fs::remove_file(&t);
        copy(v.to_str().unwrap(), &t, "uring", &[]).success("vmware layout");
        assert_identical(&t, &raw8, "vmware layout");
    }
    // As a stream (stdin, gzip-compressed, inside an OVA): streamOptimized decoded in
    // order, its size known from the header; a sparse VMDK needs random access.
    let mut streams = vec![(d.join("stream.vmdk"), reference(&d.join("stream.vmdk")))];
    streams.extend(vmware.map(|v| (v, raw8.clone())));
    for (img, want) in &streams {
        let ctx = format!("{} on stdin", img.display());
        copy_stdin(img, &t, "sync", &[]).success(&ctx);
        assert_identical(&t, want, &ctx);
        let gz = img.with_extension("vmdk.gz");
        sh("gzip", &["-k", "-f", img.to_str().unwrap()]);
        copy(gz.to_str().unwrap(), &t, "sync", &[]).success("gzip'd stream");
        assert_identical(&t, want, "gzip'd stream");
        let ova = ova(d, "s.ova", "ustar", &[&ovf(d, &["x.vmdk"]), img]);
        copy_stdin(&ova, &t, "sync", &[]).success("stream in an OVA on stdin");
        assert_identical(&t, want, "stream in an OVA on stdin");
    }
    let r = copy_stdin(&d.join("sparse.vmdk"), &t, "sync", &[]);
    r.failure(
        "sparse on stdin",
        &["VMDK image", "scratch copy would be needed"],
    );
    assert_eq!(r.status.code(), Some(2));
    // A stream cut short fails, never a shorter disk (exit 6).
    let bytes = std::fs::read(d.join("stream.vmdk")).unwrap();
    let cut = d.join("cut.vmdk");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let _ = std::fs::remove_file(&t);
    let r = copy_stdin(&cut, &t, "sync", &[]);
    r.failure("cut stream", &["truncated"]);
    assert_eq!(r.status.code(), Some(6), "{}", r.stderr);
    // A FLAT extent naming a host file: refused, the file never opened.
    let desc = d.join("flat.vmdk");
    std::fs::write(
        &desc,
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n\
         createType=\"monolithicFlat\"\nRW 8 FLAT \"/etc/hostname\" 0\n",
    )
    .unwrap();
    let r = copy(desc.to_str().unwrap(), &t, "sync", &[]);
    r.failure("flat extent", &["/etc/hostname"]);
    assert_eq!(r.status.code(), Some(2), "{}", r.stderr);
}

#[test]
fn vhd_vhdx_and_vdi_images_qemu_writes_are_copied_exactly_from_files_and_nbd() {
    if !require(&["qemu-img", "nbdkit", "cmp"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw = raw_disk(d);
    let t = d.join("t.img");
    let scratch = d.join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    for (fmt, opts) in [
        ("vpc", "subformat=dynamic"),
        ("vpc", "subformat=fixed"),
        ("vpc", "subformat=dynamic,force_size=on"),
        ("vhdx", "subformat=dynamic"),
        ("vhdx", "subformat=dynamic,block_size=8M"),
        ("vhdx", "subformat=fixed"),
        ("vdi", "static=off"),
        ("vdi", "static=on"),
    ] {
        let ctx = format!("{fmt} {opts}");
        let img = d.join(format!("disk-{}.{fmt}", opts.replace([',', '='], "-")));
        qemu_img(&[
            "convert",
            "-q",
            "-O",
            fmt,
            "-o",
            opts,
            raw.to_str().unwrap(),
            img.to_str().unwrap(),
        ]);
        // qemu's own reading, told the format (its probe takes a fixed VHD for raw).
        let want = img.with_extension("ref.raw");
        qemu_img(&[
            "convert",
            "-f",
            fmt,
            "-O",
            "raw",
            img.to_str().unwrap(),
            want.to_str().unwrap(),
        ]);
        let _ = std::fs::remove_file(&t);
        copy(img.to_str().unwrap(), &t, "uring", &[]).success(&ctx);
        assert_identical(&t, &want, &ctx);
        let srv = Server::nbdkit(d, &["file", img.to_str().unwrap()]);
        let _ = std::fs::remove_file(&t);
        copy(&srv.uri(), &t, "sync", &[]).success(&format!("{ctx} over NBD"));
        assert_identical(&t, &want, &format!("{ctx} over NBD"));
        drop(srv);
        // In order (stdin): refused as needing random access, or staged to --scratch.
        // (A fixed VHD's footer is at its end: on a stream it reads as the raw disk
        // plus its footer, as qemu's probe reads it.)
        if opts != "subformat=fixed" || fmt != "vpc" {
            let r = copy_stdin(&img, &t, "sync", &[]);
            r.failure(
                &format!("{ctx} on stdin"),
                &["scratch copy would be needed"],
            );
            assert_eq!(r.status.code(), Some(2));
            copy_stdin(&img, &t, "sync", &["--scratch", scratch.to_str().unwrap()])
                .success(&format!("{ctx} staged"));
            assert_identical(&t, &want, &format!("{ctx} staged"));
        }
    }
}

#[test]
fn huge_mostly_empty_images_are_walked_by_runs_and_their_data_lands_in_place() {
    if !require(&["qemu-img", "qemu-io"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let t = d.join("t.img");
    // 64 GiB, data at the start, past the first L2 table / grain table, and at the end.
    for (fmt, name) in [("qcow2", "big.qcow2"), ("vmdk", "big.vmdk")] {
        let img = d.join(name);
        let p = img.to_str().unwrap();
        qemu_img(&["create", "-q", "-f", fmt, p, "64G"]);
        for (byte, at) in [(0xa1, "0"), (0xb2, "40G"), (0xc3, "68719411200")] {
            sh(
                "qemu-io",
                &["-f", fmt, "-c", &format!("write -q -P {byte} {at} 64k"), p],
            );
        }
        let _ = std::fs::remove_file(&t);
        copy(p, &t, "uring", &[]).success(name);
        // qemu-img compares sparse files by their allocation, without reading 64 GiB.
        sh(
            "qemu-img",
            &[
                "compare",
                "-q",
                "-f",
                "raw",
                "-F",
                fmt,
                t.to_str().unwrap(),
                p,
            ],
        );
        assert!(allocated(&t) < 16 << 20, "{name}: the holes stay holes");
    }
}
