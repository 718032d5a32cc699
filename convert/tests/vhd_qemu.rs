//! The VHD, VHDX and VDI readers against qemu: images `qemu-img convert` makes from one
//! raw disk (data, zeroes, holes, a size that is no multiple of any block) in every
//! subformat and block size it writes, each read whole through [`BlockingImage`] and
//! compared byte for byte with `qemu-img convert -O raw`, and sized as `qemu-img info`
//! sizes it; then images patched to be hostile, each refused with its kind and message.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use ferry_convert::image::{BlockingError, BlockingImage, ImageError, Mapping, Unit};
use ferry_convert::{Format, detect};

fn require(bins: &[&str]) -> bool {
    ferry_test_kit::require_in("convert", bins)
}

/// 13 MiB + 3 sectors: 1 MiB of 0xab at 0, 4 KiB of 0xcd at 5 MiB, 1 MiB of noise at
/// 7 MiB, 0xef in the last sector; zeroes (holes once converted) elsewhere.
fn raw_disk(dir: &Path) -> (PathBuf, Vec<u8>) {
    let len = (13 << 20) + 3 * 512;
    let mut d = vec![0u8; len];
    d[..1 << 20].fill(0xab);
    d[5 << 20..(5 << 20) + 4096].fill(0xcd);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in &mut d[7 << 20..8 << 20] {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x.to_le_bytes()[0];
    }
    d[len - 512..].fill(0xef);
    let p = dir.join("disk.raw");
    std::fs::write(&p, &d).unwrap();
    (p, d)
}

fn convert(raw: &Path, fmt: &str, opts: &str, out: &Path) {
    let mut args = vec!["convert", "-q", "-f", "raw", "-O", fmt];
    if !opts.is_empty() {
        args.extend(["-o", opts]);
    }
    args.extend([raw.to_str().unwrap(), out.to_str().unwrap()]);
    ferry_test_kit::sh("qemu-img", &args);
}

fn qemu_size(img: &Path, fmt: &str) -> u64 {
    let out = ferry_test_kit::sh(
        "qemu-img",
        &["info", "--output=json", "-f", fmt, img.to_str().unwrap()],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["virtual-size"].as_u64().unwrap()
}

fn qemu_raw(img: &Path, fmt: &str) -> Vec<u8> {
    let out = img.with_extension("qemu.raw");
    ferry_test_kit::sh(
        "qemu-img",
        &[
            "convert",
            "-q",
            "-f",
            fmt,
            "-O",
            "raw",
            img.to_str().unwrap(),
            out.to_str().unwrap(),
        ],
    );
    std::fs::read(out).unwrap()
}

fn open(bytes: Vec<u8>, format: Format) -> Result<BlockingImage<Cursor<Vec<u8>>>, ImageError> {
    let len = bytes.len() as u64;
    match BlockingImage::open(Cursor::new(bytes), len, format) {
        Ok(i) => Ok(i),
        Err(BlockingError::Image(e)) => Err(e),
        Err(e) => panic!("I/O on a cursor: {e}"),
    }
}

fn open_err(bytes: Vec<u8>, format: Format) -> ImageError {
    open(bytes, format).map(|_| ()).expect_err("refused")
}

/// Read `img` whole as `format` and compare with qemu's reading; return the units'
/// mappings.
fn compare_with_qemu(img: &Path, format: Format, ctx: &str) -> Vec<Unit> {
    let fmt = format.qemu_name().unwrap();
    let bytes = std::fs::read(img).unwrap();
    let tail = &bytes[bytes.len().saturating_sub(512)..];
    assert_eq!(
        detect(&bytes[..bytes.len().min(4096)], Some(tail)),
        format,
        "[{ctx}] detected"
    );
    let mut image = open(bytes, format).unwrap_or_else(|e| panic!("[{ctx}] {e}"));
    assert_eq!(
        image.map().size(),
        qemu_size(img, fmt),
        "[{ctx}] the virtual size qemu-img info reports"
    );
    let ours = image.read_all().unwrap_or_else(|e| panic!("[{ctx}] {e}"));
    assert!(
        ours == qemu_raw(img, fmt),
        "[{ctx}] the disk as qemu reads it"
    );
    let units = image.map().size().div_ceil(image.map().unit());
    (0..units).map(|i| image.unit(i).unwrap()).collect()
}

fn has(units: &[Unit], f: impl Fn(&Mapping) -> bool) -> bool {
    units.iter().any(|u| matches!(u, Unit::Whole(m) if f(m)))
}

#[test]
fn every_vhd_subformat_qemu_writes_reads_as_qemu_reads_it() {
    if !require(&["qemu-img"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (raw, data) = raw_disk(dir.path());
    for (name, opts) in [
        ("dynamic", "subformat=dynamic"),
        ("dynamic-force-size", "subformat=dynamic,force_size=on"),
        ("fixed", "subformat=fixed"),
        ("fixed-force-size", "subformat=fixed,force_size=on"),
    ] {
        let img = dir.path().join(format!("{name}.vhd"));
        convert(&raw, "vpc", opts, &img);
        let units = compare_with_qemu(&img, Format::Vhd, name);
        assert!(
            has(&units, |m| matches!(m, Mapping::Data { .. })),
            "[{name}] data"
        );
        if name.starts_with("dynamic") {
            assert!(
                has(&units, |m| *m == Mapping::Unallocated),
                "[{name}] holes"
            );
        }
        if name.ends_with("force-size") {
            let f = std::fs::File::open(&img).unwrap();
            let len = f.metadata().unwrap().len();
            let image = BlockingImage::open(f, len, Format::Vhd).unwrap();
            assert_eq!(image.map().size(), data.len() as u64, "[{name}] exact size");
        }
    }
}

#[test]
fn a_dynamic_vhd_sized_by_geometry_is_larger_than_asked() {
    if !require(&["qemu-img"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (opts, want) in [
        ("subformat=dynamic", 67_125_248u64),
        ("subformat=dynamic,force_size=on", 64 << 20),
    ] {
        let img = dir.path().join("g.vhd");
        ferry_test_kit::qemu_image_with(&img, "vpc", opts, "64M", &["write -P 0x5a 63M 1M"]);
        assert_eq!(qemu_size(&img, "vpc"), want, "[{opts}] qemu");
        let image = open(std::fs::read(&img).unwrap(), Format::Vhd).unwrap();
        assert_eq!(image.map().size(), want, "[{opts}] ours");
        compare_with_qemu(&img, Format::Vhd, opts);
        std::fs::remove_file(&img).unwrap();
    }
}

#[test]
fn every_vhdx_layout_qemu_writes_reads_as_qemu_reads_it() {
    if !require(&["qemu-img"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (raw, _) = raw_disk(dir.path());
    for (name, opts) in [
        ("dynamic", "subformat=dynamic"),
        ("dynamic-1m", "subformat=dynamic,block_size=1M"),
        ("dynamic-8m", "subformat=dynamic,block_size=8M"),
        ("dynamic-32m", "subformat=dynamic,block_size=32M"),
        ("fixed", "subformat=fixed"),
        ("fixed-1m", "subformat=fixed,block_size=1M"),
        ("log-1m", "log_size=1M,block_size=2M"),
        ("zero-state", "block_state_zero=on,block_size=1M"),
    ] {
        let img = dir.path().join(format!("{name}.vhdx"));
        convert(&raw, "vhdx", opts, &img);
        let units = compare_with_qemu(&img, Format::Vhdx, name);
        assert!(
            has(&units, |m| matches!(m, Mapping::Data { .. })),
            "[{name}] data"
        );
        if name == "dynamic-1m" || name == "zero-state" {
            assert!(
                has(&units, |m| matches!(
                    m,
                    Mapping::Unallocated | Mapping::Zero
                )),
                "[{name}] holes"
            );
        }
    }
}

#[test]
fn a_vhdx_qemu_io_wrote_has_blocks_never_written_as_holes() {
    if !require(&["qemu-img", "qemu-io"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("w.vhdx");
    ferry_test_kit::qemu_image_with(
        &img,
        "vhdx",
        "block_size=1M,block_state_zero=off",
        "13825k",
        &[
            "write -P 0xab 0 64k",
            "write -P 0xcd 5M 1M",
            "write -z 7M 1M",
            "write -P 0xef 13824k 1k",
        ],
    );
    let units = compare_with_qemu(&img, Format::Vhdx, "qemu-io");
    assert_eq!(units[1], Unit::Whole(Mapping::Unallocated), "never written");
    assert!(
        matches!(units[5], Unit::Whole(Mapping::Data { .. })),
        "written"
    );
    assert!(
        matches!(units[13], Unit::Whole(Mapping::Data { .. })),
        "the short last block"
    );
}

#[test]
fn vdi_dynamic_and_static_read_as_qemu_reads_them() {
    if !require(&["qemu-img"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (raw, _) = raw_disk(dir.path());
    for (name, opts) in [("dynamic", ""), ("static", "static=on")] {
        let img = dir.path().join(format!("{name}.vdi"));
        convert(&raw, "vdi", opts, &img);
        let units = compare_with_qemu(&img, Format::Vdi, name);
        assert!(
            has(&units, |m| matches!(m, Mapping::Data { .. })),
            "[{name}] data"
        );
        assert_eq!(
            has(&units, |m| *m == Mapping::Unallocated),
            name == "dynamic",
            "[{name}] holes only when dynamic"
        );
    }
}

/// A dynamic VHD with data in blocks 0 and 2 (2 MiB blocks), and its BAT's offset.
fn dynamic_vhd(dir: &Path) -> (Vec<u8>, usize) {
    let img = dir.join("h.vhd");
    ferry_test_kit::qemu_image_with(
        &img,
        "vpc",
        "subformat=dynamic",
        "8M",
        &["write -P 0x11 0 4k", "write -P 0x22 4M 4k"],
    );
    let b = std::fs::read(&img).unwrap();
    let bat = usize::try_from(u64::from_be_bytes(
        b[512 + 16..512 + 24].try_into().unwrap(),
    ))
    .unwrap();
    (b, bat)
}

/// Patch both footer copies of a VHD and recompute their checksums.
fn patch_footers(b: &mut [u8], at: usize, bytes: &[u8]) {
    let n = b.len();
    for start in [0, n - 512] {
        b[start + at..start + at + bytes.len()].copy_from_slice(bytes);
        let c = ferry_convert::vhd::checksum(&b[start..start + 512]);
        b[start + 64..start + 68].copy_from_slice(&c.to_be_bytes());
    }
}

#[test]
fn hostile_vhds_are_refused_by_name() {
    if !require(&["qemu-img", "qemu-io"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (good, bat) = dynamic_vhd(dir.path());
    assert!(
        open(good.clone(), Format::Vhd).is_ok(),
        "the unpatched image opens"
    );

    // A differencing disk (qemu-img cannot make one): the disk type patched to 4.
    let mut b = good.clone();
    patch_footers(&mut b, 60, &4u32.to_be_bytes());
    let e = open_err(b, Format::Vhd);
    assert!(e.is_refusal(), "{e}");
    assert_eq!(
        e.to_string(),
        "VHD: a differencing disk needs its parent image, which Ferry does not open (qemu-img convert it into one image first)"
    );

    // A footer whose checksum does not match.
    let mut b = good.clone();
    let n = b.len();
    b[n - 512 + 24] ^= 1;
    let e = open_err(b, Format::Vhd);
    assert!(
        matches!(&e, ImageError::Corrupt { what, .. } if what.starts_with("footer checksum")),
        "{e}"
    );

    // A BAT entry past the end of the image.
    let mut b = good.clone();
    b[bat..bat + 4].copy_from_slice(&0x00ff_ffffu32.to_be_bytes());
    let e = open_err(b, Format::Vhd);
    assert!(
        matches!(
            e,
            ImageError::PastEnd {
                what: "block",
                offset: 0x1_ffff_fe00,
                ..
            }
        ),
        "{e}"
    );

    // Two BAT entries naming the same block.
    let mut b = good.clone();
    let first: [u8; 4] = b[bat..bat + 4].try_into().unwrap();
    b[bat + 8..bat + 12].copy_from_slice(&first);
    let e = open_err(b, Format::Vhd);
    assert!(
        matches!(&e, ImageError::Corrupt { what, .. } if what.starts_with("blocks overlap")),
        "{e}"
    );

    // A BAT entry pointing into the BAT itself.
    let mut b = good.clone();
    b[bat..bat + 4].copy_from_slice(&u32::try_from(bat / 512).unwrap().to_be_bytes());
    let e = open_err(b, Format::Vhd);
    assert!(
        matches!(&e, ImageError::Corrupt { what, .. } if what.contains("overlaps the BAT")),
        "{e}"
    );

    // Absurd block sizes and table sizes in the dynamic header.
    let dyn_patch = |at: usize, v: u32| {
        let mut b = good.clone();
        b[512 + at..512 + at + 4].copy_from_slice(&v.to_be_bytes());
        open_err(b, Format::Vhd)
    };
    let e = dyn_patch(32, 3 << 20);
    assert_eq!(
        e.to_string(),
        "VHD image is corrupt: block size 3145728 is not a power of two of at least 512"
    );
    let e = dyn_patch(32, 1 << 30);
    assert!(e.is_refusal(), "{e}");
    assert!(e.to_string().contains("the most Ferry reads"), "{e}");
    let e = dyn_patch(28, u32::MAX);
    assert!(e.is_refusal(), "{e}");
    assert!(e.to_string().contains("a BAT of 4294967295 entries"), "{e}");
    let e = dyn_patch(28, 1);
    assert!(e.to_string().contains("too small for the disk"), "{e}");

    // An absurd disk size (current_size, read for other creators than qemu and vpc).
    let mut b = good.clone();
    patch_footers(&mut b, 28, b"win ");
    patch_footers(&mut b, 48, &(1u64 << 50).to_be_bytes());
    let e = open_err(b, Format::Vhd);
    assert!(
        e.is_refusal() && e.to_string().contains("larger than"),
        "{e}"
    );

    // Cut short: the footer copy at 0 is there, the footer at the end is not.
    let e = open_err(good[..good.len() - 100].to_vec(), Format::Vhd);
    assert!(e.to_string().contains("the image is truncated"), "{e}");

    // A fixed disk whose footer claims more data than there is.
    let img = dir.path().join("f.vhd");
    ferry_test_kit::qemu_image_with(&img, "vpc", "subformat=fixed,force_size=on", "1M", &[]);
    let mut b = std::fs::read(&img).unwrap();
    patch_footers(&mut b, 48, &(2u64 << 20).to_be_bytes());
    let e = open_err(b, Format::Vhd);
    assert!(matches!(e, ImageError::PastEnd { what: "data", .. }), "{e}");
}

/// Offsets (in a VHDX's bytes) of the BAT, from region table 1.
fn vhdx_bat(b: &[u8]) -> usize {
    let rt = 192 << 10;
    let count = u32::from_le_bytes(b[rt + 8..rt + 12].try_into().unwrap()) as usize;
    (0..count)
        .map(|i| rt + 16 + i * 32)
        .find(|&e| b[e..e + 4] == [0x66, 0x77, 0xC2, 0x2D])
        .map(|e| {
            usize::try_from(u64::from_le_bytes(b[e + 16..e + 24].try_into().unwrap())).unwrap()
        })
        .unwrap()
}

fn patch_vhdx_header(b: &mut [u8], h: usize, at: usize, bytes: &[u8]) {
    b[h + at..h + at + bytes.len()].copy_from_slice(bytes);
    let c = ferry_convert::vhdx::crc32c(&b[h..h + 4096], 4);
    b[h + 4..h + 8].copy_from_slice(&c.to_le_bytes());
}

#[test]
fn hostile_vhdxs_are_refused_by_name() {
    if !require(&["qemu-img", "qemu-io"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("h.vhdx");
    ferry_test_kit::qemu_image_with(
        &img,
        "vhdx",
        "block_size=1M,log_size=1M",
        "4M",
        &["write -P 0x11 0 4k", "write -P 0x22 2M 4k"],
    );
    let good = std::fs::read(&img).unwrap();
    assert!(
        open(good.clone(), Format::Vhdx).is_ok(),
        "the unpatched image opens"
    );
    let (h1, h2) = (64 << 10, 128 << 10);

    // A log that is not empty: the log GUID set in both headers, their CRC-32C fixed.
    let mut b = good.clone();
    for h in [h1, h2] {
        patch_vhdx_header(&mut b, h, 48, &[0x5a; 16]);
    }
    let e = open_err(b, Format::Vhdx);
    assert!(e.is_refusal(), "{e}");
    assert_eq!(
        e.to_string(),
        "VHDX: the VHDX log must be replayed first (e.g. by opening it in Hyper-V or qemu-img check -r all)"
    );

    // One header's checksum wrong: the other is used; both wrong: refused.
    let mut b = good.clone();
    b[h1 + 200] ^= 1;
    assert!(open(b.clone(), Format::Vhdx).is_ok(), "header 2 is used");
    b[h2 + 200] ^= 1;
    let e = open_err(b, Format::Vhdx);
    assert_eq!(
        e.to_string(),
        "VHDX image is corrupt: no valid header (header 1: checksum mismatch; header 2: checksum mismatch)"
    );

    // A region table whose checksum is wrong in both copies.
    let mut b = good.clone();
    b[(192 << 10) + 1000] ^= 1;
    b[(256 << 10) + 1000] ^= 1;
    let e = open_err(b, Format::Vhdx);
    assert!(
        e.to_string().contains("region table checksum mismatch"),
        "{e}"
    );

    // A BAT entry past the end of the image, and two naming the same block.
    let bat = vhdx_bat(&good);
    let mut b = good.clone();
    b[bat..bat + 8].copy_from_slice(&((1u64 << 40) | 6).to_le_bytes());
    let e = open_err(b, Format::Vhdx);
    assert!(
        matches!(
            e,
            ImageError::PastEnd {
                what: "block",
                offset: 0x100_0000_0000,
                ..
            }
        ),
        "{e}"
    );
    let mut b = good.clone();
    let first: [u8; 8] = b[bat..bat + 8].try_into().unwrap();
    b[bat + 8..bat + 16].copy_from_slice(&first);
    let e = open_err(b, Format::Vhdx);
    assert!(
        e.to_string()
            .starts_with("VHDX image is corrupt: blocks overlap"),
        "{e}"
    );

    // A block inside the header section, and a partially present block.
    let mut b = good.clone();
    b[bat..bat + 8].copy_from_slice(&6u64.to_le_bytes());
    let e = open_err(b, Format::Vhdx);
    assert!(e.to_string().contains("overlaps the header section"), "{e}");
    let mut b = good.clone();
    b[bat] = (b[bat] & !7) | 7;
    let e = open_err(b, Format::Vhdx);
    assert!(e.to_string().contains("partially present"), "{e}");

    // Cut short.
    let e = open_err(good[..good.len() - (1 << 20)].to_vec(), Format::Vhdx);
    assert!(matches!(e, ImageError::PastEnd { .. }), "{e}");
    let e = open_err(good[..100 << 10].to_vec(), Format::Vhdx);
    assert!(
        matches!(
            e,
            ImageError::PastEnd {
                what: "header section",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn hostile_vdis_are_refused_by_name() {
    if !require(&["qemu-img", "qemu-io"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("h.vdi");
    ferry_test_kit::qemu_image_with(
        &img,
        "vdi",
        "",
        "4M",
        &["write -P 0x11 0 4k", "write -P 0x22 2M 4k"],
    );
    let good = std::fs::read(&img).unwrap();
    assert!(
        open(good.clone(), Format::Vdi).is_ok(),
        "the unpatched image opens"
    );
    let bmap = u32::from_le_bytes(good[0x154..0x158].try_into().unwrap()) as usize;
    let patched = |at: usize, bytes: &[u8]| {
        let mut b = good.clone();
        b[at..at + bytes.len()].copy_from_slice(bytes);
        open_err(b, Format::Vdi)
    };

    // A block map entry past the end, and two naming the same block.
    let e = patched(bmap, &0x00ff_ffffu32.to_le_bytes());
    assert!(
        matches!(e, ImageError::PastEnd { what: "block", .. }),
        "{e}"
    );
    let e = patched(bmap + 8, &good[bmap..bmap + 4]);
    assert!(
        e.to_string()
            .starts_with("VDI image is corrupt: blocks overlap"),
        "{e}"
    );

    // An absurd disk size, and one larger than the block map covers.
    let e = patched(0x170, &(1u64 << 60).to_le_bytes());
    assert!(e.is_refusal(), "{e}");
    assert_eq!(
        e.to_string(),
        "VDI: disk size 1152921504606846976 bytes is larger than 8796093022208, the most Ferry accepts"
    );
    let e = patched(0x170, &(5u64 << 20).to_le_bytes());
    assert!(
        e.to_string().contains("larger than its block map covers"),
        "{e}"
    );
    let e = patched(0x180, &u32::MAX.to_le_bytes());
    assert!(
        e.is_refusal() && e.to_string().contains("the most Ferry reads"),
        "{e}"
    );

    // Versions, types and parents refused.
    let e = patched(0x44, &0x0001_0000u32.to_le_bytes());
    assert_eq!(e.to_string(), "VDI: version 1.0 is not supported (1.1 is)");
    let e = patched(0x4c, &4u32.to_le_bytes());
    assert!(
        e.is_refusal() && e.to_string().contains("differencing"),
        "{e}"
    );
    let e = patched(0x1b8, &[1; 16]);
    assert!(e.is_refusal() && e.to_string().contains("parent"), "{e}");

    // Cut short inside the data.
    let e = open_err(good[..good.len() - 100].to_vec(), Format::Vdi);
    assert!(
        matches!(e, ImageError::PastEnd { what: "block", .. }),
        "{e}"
    );
}

#[test]
fn the_fuzz_seeds_open_and_read_as_qemu_reads_them() {
    for (dir, format) in [
        ("image_vhd", Format::Vhd),
        ("image_vhdx", Format::Vhdx),
        ("image_vdi", Format::Vdi),
    ] {
        for p in ferry_test_kit::fuzz_seeds(dir) {
            let name = p.display().to_string();
            let mut image =
                open(std::fs::read(&p).unwrap(), format).unwrap_or_else(|e| panic!("[{name}] {e}"));
            let size = image.map().size();
            // qemu reads these too, except VDI blocks other than 1 MiB and VHDX logical
            // sectors of 4 KiB (both refused by qemu 10, valid in their formats).
            let qemu_reads = !name.contains("4k-sectors")
                && (format != Format::Vdi || !name.contains("4k-blocks"));
            if size <= 64 << 20 {
                let ours = image.read_all().unwrap_or_else(|e| panic!("[{name}] {e}"));
                if qemu_reads && require(&["qemu-img"]) {
                    let fmt = format.qemu_name().unwrap();
                    assert_eq!(size, qemu_size(&p, fmt), "[{name}] size");
                    let tmp = tempfile::tempdir().unwrap();
                    let copy = tmp.path().join("seed");
                    std::fs::copy(&p, &copy).unwrap();
                    assert!(
                        ours == qemu_raw(&copy, fmt),
                        "[{name}] the disk as qemu reads it"
                    );
                }
            } else if qemu_reads && require(&["qemu-img"]) {
                assert_eq!(
                    size,
                    qemu_size(&p, format.qemu_name().unwrap()),
                    "[{name}] size"
                );
            }
        }
    }
}

/// Mutate the seeds (bytes flipped where the metadata is, checksums then made right so
/// the mutation reaches past them, and cuts), open each and read it: errors are fine,
/// panics and reads past the input are not.
#[test]
fn mutated_seeds_never_panic() {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut rand = move |n: usize| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        usize::try_from(x % n.max(1) as u64).unwrap()
    };
    for (dir, format) in [
        ("image_vhd", Format::Vhd),
        ("image_vhdx", Format::Vhdx),
        ("image_vdi", Format::Vdi),
    ] {
        let (mut opened, mut refused) = (0, 0);
        for p in ferry_test_kit::fuzz_seeds(dir) {
            let seed = std::fs::read(p).unwrap();
            for round in 0..200 {
                let mut b = seed.clone();
                // Where the metadata is: the VHD footers, dynamic header and BAT; the VHDX
                // headers, region table, metadata and BAT; the VDI header and block map.
                let spots: Vec<(usize, usize)> = match format {
                    Format::Vhd => vec![(0, 2048), (b.len() - 512, 512)],
                    Format::Vhdx => vec![
                        (64 << 10, 128),
                        (128 << 10, 128),
                        (192 << 10, 128),
                        (1 << 20, 72 << 10),
                    ],
                    _ => vec![(0, 1024)],
                };
                for _ in 0..1 + rand(4) {
                    let (s, n) = spots[rand(spots.len())];
                    let at = (s + rand(n)).min(b.len() - 1);
                    b[at] = match rand(4) {
                        0 => 0xff,
                        1 => 0,
                        _ => b[at] ^ (1 << rand(8)),
                    };
                }
                match format {
                    Format::Vhd => {
                        let n = b.len();
                        for s in [0, n - 512] {
                            let c = ferry_convert::vhd::checksum(&b[s..s + 512]);
                            b[s + 64..s + 68].copy_from_slice(&c.to_be_bytes());
                        }
                    }
                    Format::Vhdx => {
                        for (h, n) in [(64 << 10, 4096), (128 << 10, 4096), (192 << 10, 64 << 10)] {
                            let c = ferry_convert::vhdx::crc32c(&b[h..h + n], 4);
                            b[h + 4..h + 8].copy_from_slice(&c.to_le_bytes());
                        }
                    }
                    _ => {}
                }
                if round % 10 == 9 {
                    b.truncate(rand(b.len()));
                }
                let Ok(mut image) = open(b, format) else {
                    refused += 1;
                    continue;
                };
                opened += 1;
                let (size, unit) = (image.map().size(), image.map().unit());
                if size <= 16 << 20 {
                    let _ = image.read_all();
                } else {
                    for i in 0..size.div_ceil(unit).min(64) {
                        let _ = image.unit(i);
                    }
                }
            }
        }
        eprintln!("{dir}: {opened} mutants opened, {refused} refused");
        assert!(
            opened > 0 && refused > 0,
            "{dir}: the mutations reach both ways"
        );
    }
}

#[test]
fn the_largest_sparse_images_qemu_makes_open_within_the_caps() {
    if !require(&["qemu-img"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (fmt, format, size) in [
        ("vpc", Format::Vhd, "2040G"),
        ("vhdx", Format::Vhdx, "64T"),
        ("vdi", Format::Vdi, "8T"),
    ] {
        let img = dir.path().join(format!("big.{fmt}"));
        ferry_test_kit::qemu_image(&img, fmt, size, &[]);
        let f = std::fs::File::open(&img).unwrap();
        let len = f.metadata().unwrap().len();
        let mut image =
            BlockingImage::open(f, len, format).unwrap_or_else(|e| panic!("[{fmt}] {e}"));
        assert_eq!(image.map().size(), qemu_size(&img, fmt), "[{fmt}]");
        let last = image.map().size().div_ceil(image.map().unit()) - 1;
        assert!(
            matches!(
                image.unit(last).unwrap(),
                Unit::Whole(Mapping::Unallocated | Mapping::Zero)
            ),
            "[{fmt}] the last unit is a hole"
        );
        std::fs::remove_file(&img).unwrap();
    }
    // One more VDI block than the cap.
    let img = dir.path().join("over.vdi");
    ferry_test_kit::qemu_image(&img, "vdi", "8193G", &[]);
    let e = open_err(std::fs::read(&img).unwrap(), Format::Vdi);
    assert!(
        e.is_refusal() && e.to_string().contains("the most Ferry"),
        "{e}"
    );
}

#[test]
fn vhdx_blocks_past_the_first_chunk_skip_the_sector_bitmap_entry() {
    if !require(&["qemu-img", "qemu-io"]) {
        return;
    }
    // 256 MiB blocks and 512-byte sectors: a sector bitmap entry after every 16 payload
    // entries, so block 18 is BAT entry 19.
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("chunks.vhdx");
    ferry_test_kit::qemu_image_with(
        &img,
        "vhdx",
        "block_size=256M",
        "5G",
        &["write -P 0x77 4608M 64k", "write -P 0x66 1G 4k"],
    );
    ferry_test_kit::sh(
        "qemu-io",
        &[
            "-f",
            "vhdx",
            "-c",
            "read -P 0x77 4608M 64k",
            img.to_str().unwrap(),
        ],
    );
    let f = std::fs::File::open(&img).unwrap();
    let len = f.metadata().unwrap().len();
    let mut image = BlockingImage::open(f, len, Format::Vhdx).unwrap();
    assert_eq!(image.map().size(), qemu_size(&img, "vhdx"));
    let mut file = std::fs::File::open(&img).unwrap();
    for (unit, within_block, fill) in [
        (4u64, 0u64, 0x66u8),
        (18, 4608 * (1 << 20) - 18 * (256 << 20), 0x77),
    ] {
        let Unit::Whole(Mapping::Data { host }) = image.unit(unit).unwrap() else {
            panic!("unit {unit} is data");
        };
        let got = ferry_convert::image::read_at(&mut file, host + within_block, 4096).unwrap();
        assert!(
            got.iter().all(|&b| b == fill),
            "unit {unit}: the bytes qemu wrote"
        );
    }
    for unit in [0, 15, 16, 17, 19] {
        assert!(
            !matches!(image.unit(unit).unwrap(), Unit::Whole(Mapping::Data { .. })),
            "unit {unit} was never written"
        );
    }
}
