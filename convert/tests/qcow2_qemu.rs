//! The qcow2 header and L1/L2 decoding against qemu: images made by `qemu-img` and
//! `qemu-io` (every layout the reader accepts), each walked cluster by cluster and
//! compared with `qemu-img map --output=json`; and images qemu makes that must be
//! refused (backing file, external data file, LUKS), plus headers patched to be hostile.

use std::path::Path;
use std::process::Command;

use ferry_convert::Format;
use ferry_convert::image::BlockingImage;
use ferry_convert::qcow2::{Header, Mapping, Qcow2Error, Unit};

fn require(bins: &[&str]) -> bool {
    ferry_test_kit::require_in("convert", bins)
}

/// The header parsed from the image's first cluster (as the importer will read it).
fn header(img: &Path) -> Result<Header, Qcow2Error> {
    let bytes = std::fs::read(img).unwrap();
    let len = bytes.len() as u64;
    Header::parse(&bytes[..bytes.len().min(2 << 20)], Some(len))
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

/// (guest offset, length, mapping) for every run of the disk, from the tables.
fn walk(img: &Path) -> Vec<(u64, u64, Mapping)> {
    let bytes = std::fs::read(img).unwrap();
    let len = Some(bytes.len() as u64);
    let h = header(img).expect("header");
    let cs = h.cluster_size();
    let mut out: Vec<(u64, u64, Mapping)> = Vec::new();
    let mut push = |at: u64, n: u64, m: Mapping| {
        if let Some(last) = out.last_mut() {
            let follows = match (last.2, m) {
                (Mapping::Data { host: a }, Mapping::Data { host: b }) => a + last.1 == b,
                (a, b) => a == b && !matches!(a, Mapping::Compressed { .. }),
            };
            if follows && last.0 + last.1 == at {
                last.1 += n;
                return;
            }
        }
        out.push((at, n, m));
    };
    let mut guest = 0u64;
    for i in 0..u64::from(h.l1_entries) {
        if guest >= h.size {
            break;
        }
        let l1 = be64(&bytes, (h.l1_offset + i * 8) as usize);
        let span = h.l2_span().min(h.size - guest);
        let Some(l2) = h.l1_entry(l1, len).expect("L1 entry") else {
            push(guest, span, Mapping::Unallocated);
            guest += span;
            continue;
        };
        let step = if h.extended_l2 { 16 } else { 8 };
        for j in 0..h.l2_entries() {
            if guest >= h.size {
                break;
            }
            let at = (l2 + j * step) as usize;
            let bitmap = if h.extended_l2 {
                be64(&bytes, at + 8)
            } else {
                0
            };
            let n = cs.min(h.size - guest);
            match h.l2_entry(be64(&bytes, at), bitmap, len).expect("L2 entry") {
                Unit::Whole(m) => push(guest, n, m),
                Unit::Parts(subs) => {
                    let sub = cs / 32;
                    for (k, m) in subs.iter().enumerate() {
                        let s = guest + k as u64 * sub;
                        if s < h.size {
                            push(s, sub.min(h.size - s), *m);
                        }
                    }
                }
            }
            guest += n;
        }
    }
    out
}

/// Compare the walk with `qemu-img map`, byte range by byte range: data (and its host
/// offset), compressed, and "reads as zeroes" where there is no data.
fn compare_with_qemu(img: &Path, ctx: &str) -> Vec<(u64, u64, Mapping)> {
    let o = Command::new("qemu-img")
        .args(["map", "--output=json", "-f", "qcow2"])
        .arg(img)
        .output()
        .unwrap();
    assert!(o.status.success(), "qemu-img map");
    let map: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    let ours = walk(img);
    let total: u64 = ours.iter().map(|r| r.1).sum();
    assert_eq!(
        total,
        header(img).unwrap().size,
        "[{ctx}] the walk covers the disk"
    );
    let at = |g: u64| {
        ours.iter()
            .find(|r| r.0 <= g && g < r.0 + r.1)
            .map(|r| (r.0, r.2))
            .expect("covered")
    };
    for e in &map {
        let (start, length) = (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap());
        let data = e["data"].as_bool().unwrap();
        let compressed = e["compressed"].as_bool().unwrap_or(false);
        // Check the start, middle and last byte of each of qemu's runs.
        for g in [start, start + length / 2, start + length - 1] {
            let (run_start, m) = at(g);
            match m {
                Mapping::Data { host } => {
                    assert!(data && !compressed, "[{ctx}] {g}: ours data, qemu {e}");
                    let want = e["offset"].as_u64().unwrap() + (g - start);
                    assert_eq!(
                        host + (g - run_start),
                        want,
                        "[{ctx}] {g}: host offset, qemu {e}"
                    );
                }
                Mapping::Compressed { .. } => {
                    assert!(data && compressed, "[{ctx}] {g}: ours compressed, qemu {e}")
                }
                Mapping::Zero | Mapping::Unallocated => {
                    assert!(!data, "[{ctx}] {g}: ours {m:?}, qemu {e}");
                    assert!(e["zero"].as_bool().unwrap(), "[{ctx}] {g}: zero, qemu {e}");
                }
            }
        }
    }
    ours
}

#[test]
fn every_layout_qemu_writes_maps_as_qemu_reads_it() {
    if !require(&["qemu-img", "qemu-io"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let writes = [
        "write -P 0xab 1M 64k",
        "write -P 0xcd 5M 4k",
        "write -z 1M 32k",
        "write -P 0x11 63M 1M",
    ];
    for (name, opts) in [
        ("v3", "compat=1.1"),
        ("v2", "compat=0.10"),
        ("small-clusters", "cluster_size=4096"),
        ("big-clusters", "cluster_size=2M"),
        ("extended-l2", "extended_l2=on,cluster_size=128k"),
        ("prealloc-metadata", "preallocation=metadata"),
    ] {
        let img = dir.path().join(format!("{name}.qcow2"));
        ferry_test_kit::qemu_image_with(&img, "qcow2", opts, "64M", &writes);
        let h = header(&img).unwrap_or_else(|e| panic!("[{name}] {e}"));
        assert_eq!(h.size, 64 << 20, "[{name}]");
        assert_eq!(h.extended_l2, name == "extended-l2", "[{name}]");
        let runs = compare_with_qemu(&img, name);
        assert!(
            runs.iter().any(|r| matches!(r.2, Mapping::Data { .. })),
            "[{name}] some data"
        );
    }
}

#[test]
fn compressed_images_in_deflate_and_zstd_map_as_qemu_reads_them() {
    if !require(&["qemu-img"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("d.raw");
    // Compressible text, incompressible bytes, zeroes: qemu stores the middle raw.
    let d = ferry_test_kit::mixed_disk(3 << 20, 2 << 20, 8 << 20);
    std::fs::write(&raw, &d).unwrap();
    for (name, opts, comp) in [
        (
            "zlib",
            "compat=1.1",
            ferry_convert::qcow2::Compression::Deflate,
        ),
        (
            "zstd",
            "compression_type=zstd",
            ferry_convert::qcow2::Compression::Zstd,
        ),
    ] {
        let img = dir.path().join(format!("{name}.qcow2"));
        ferry_test_kit::sh(
            "qemu-img",
            &[
                "convert",
                "-q",
                "-c",
                "-O",
                "qcow2",
                "-o",
                opts,
                raw.to_str().unwrap(),
                img.to_str().unwrap(),
            ],
        );
        let h = header(&img).unwrap();
        assert_eq!(h.compression, comp, "[{name}]");
        let runs = compare_with_qemu(&img, name);
        assert!(
            runs.iter()
                .any(|r| matches!(r.2, Mapping::Compressed { .. })),
            "[{name}] compressed clusters"
        );
        assert!(
            runs.iter().any(|r| matches!(r.2, Mapping::Data { .. })),
            "[{name}] incompressible clusters stored raw"
        );
        // Read through the generic image driver, byte for byte the disk qemu made it from.
        let f = std::fs::File::open(&img).unwrap();
        let len = f.metadata().unwrap().len();
        let mut image = BlockingImage::open(f, len, Format::Qcow2).expect("open");
        let mut want = d.clone();
        want.resize(usize::try_from(image.map().size()).unwrap(), 0);
        assert!(image.read_all().expect("read") == want, "[{name}] the disk");
    }
}

#[test]
fn what_qemu_makes_but_ferry_must_not_read_is_refused() {
    if !require(&["qemu-img"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    ferry_test_kit::sh(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", &p("base.qcow2"), "1M"],
    );
    ferry_test_kit::sh(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            &p("base.qcow2"),
            "-F",
            "qcow2",
            &p("child.qcow2"),
        ],
    );
    assert_eq!(
        header(Path::new(&p("child.qcow2"))),
        Err(Qcow2Error::BackingFile)
    );
    ferry_test_kit::sh(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &format!("data_file={}", p("data.raw")),
            &p("ext.qcow2"),
            "1M",
        ],
    );
    assert_eq!(
        header(Path::new(&p("ext.qcow2"))),
        Err(Qcow2Error::ExternalDataFile)
    );
    ferry_test_kit::sh(
        "qemu-img",
        &[
            "create",
            "-q",
            "--object",
            "secret,id=s0,data=ferry",
            "-f",
            "qcow2",
            "-o",
            "encrypt.format=luks,encrypt.key-secret=s0",
            &p("luks.qcow2"),
            "1M",
        ],
    );
    assert_eq!(
        header(Path::new(&p("luks.qcow2"))),
        Err(Qcow2Error::Encrypted("LUKS"))
    );
}

#[test]
fn hostile_headers_are_refused_by_name() {
    if !require(&["qemu-img"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("ok.qcow2");
    ferry_test_kit::sh(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", img.to_str().unwrap(), "64M"],
    );
    let good = std::fs::read(&img).unwrap();
    let patched = |at: usize, bytes: &[u8]| {
        let mut b = good.clone();
        b[at..at + bytes.len()].copy_from_slice(bytes);
        Header::parse(&b, Some(b.len() as u64))
    };
    assert!(patched(0, b"QFI\xfb").is_ok(), "the unpatched image parses");
    assert_eq!(patched(4, &4u32.to_be_bytes()), Err(Qcow2Error::Version(4)));
    assert_eq!(
        patched(20, &22u32.to_be_bytes()),
        Err(Qcow2Error::ClusterBits(22))
    );
    assert_eq!(
        patched(20, &8u32.to_be_bytes()),
        Err(Qcow2Error::ClusterBits(8))
    );
    assert_eq!(
        patched(24, &(1u64 << 62).to_be_bytes()),
        Err(Qcow2Error::TooBig(1 << 62))
    );
    assert_eq!(
        patched(32, &1u32.to_be_bytes()),
        Err(Qcow2Error::Encrypted("AES"))
    );
    assert_eq!(
        patched(72, &(1u64 << 20).to_be_bytes()),
        Err(Qcow2Error::UnknownFeatures(1 << 20))
    );
    assert!(matches!(
        patched(36, &0x50_0000u32.to_be_bytes()),
        Err(Qcow2Error::L1Size { .. })
    ));
    assert!(matches!(
        patched(36, &0u32.to_be_bytes()),
        Err(Qcow2Error::L1Size { .. })
    ));
    assert!(matches!(
        patched(40, &0x1_0200u64.to_be_bytes()),
        Err(Qcow2Error::Misaligned {
            what: "L1 table",
            ..
        })
    ));
    assert!(matches!(
        patched(40, &(1u64 << 40).to_be_bytes()),
        Err(Qcow2Error::PastEnd {
            what: "L1 table",
            ..
        })
    ));
    // Cut anywhere inside the header.
    for n in [0, 3, 50, 71, 100] {
        assert!(
            matches!(
                Header::parse(&good[..n], None),
                Err(Qcow2Error::Truncated { .. }) | Err(Qcow2Error::Magic)
            ),
            "cut at {n}"
        );
    }
    // Entries that point past the end, or are not aligned.
    let h = Header::parse(&good, Some(good.len() as u64)).unwrap();
    let end = Some(good.len() as u64);
    assert!(matches!(
        h.l1_entry(1 << 40, end),
        Err(Qcow2Error::PastEnd { .. })
    ));
    assert!(matches!(
        h.l1_entry(0x1_0200, end),
        Err(Qcow2Error::Misaligned { .. })
    ));
    assert!(matches!(
        h.l2_entry(1 << 40, 0, end),
        Err(Qcow2Error::PastEnd { .. })
    ));
    assert!(matches!(
        h.l2_entry(1 << 62 | 1 << 50, 0, end),
        Err(Qcow2Error::PastEnd {
            what: "compressed cluster",
            ..
        })
    ));
}
