//! The VMDK reader against qemu: images made by `qemu-img` and `qemu-io` (and
//! VMware-layout streams made by python3-vmdkstream), each read through the map and,
//! for streams, in order, and compared byte for byte with `qemu-img convert -O raw`;
//! what qemu makes but Ferry must not read (a flat extent, a split disk) refused by
//! name; and hostile images (patched qemu images, hand-built streams) refused with the
//! right kind and message.

use std::io::Read;
use std::path::Path;

use ferry_convert::Format;
use ferry_convert::image::{BlockingError, BlockingImage, ImageError, Mapping, Unit};
use ferry_convert::vmdk::{GD_AT_END, VmdkStreamReader, is_stream_optimized};

fn require(bins: &[&str]) -> bool {
    ferry_test_kit::require_in("convert", bins)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The disk qemu reads from `img`.
fn qemu_raw(img: &Path) -> Vec<u8> {
    let out = img.with_extension("oracle.raw");
    ferry_test_kit::sh(
        "qemu-img",
        &["convert", "-q", "-f", "vmdk", "-O", "raw", s(img), s(&out)],
    );
    std::fs::read(out).unwrap()
}

fn open_bytes(b: &[u8]) -> Result<BlockingImage<std::io::Cursor<&[u8]>>, BlockingError> {
    BlockingImage::open(std::io::Cursor::new(b), b.len() as u64, Format::Vmdk)
}

/// The disk read through the map.
fn read_map(b: &[u8]) -> Result<Vec<u8>, BlockingError> {
    open_bytes(b)?.read_all()
}

/// The disk read in order.
fn read_stream(b: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut r = VmdkStreamReader::open(b)?;
    let mut out = Vec::new();
    r.read_to_end(&mut out)?;
    Ok(out)
}

/// The image error under a failed read.
fn image_err(e: BlockingError) -> ImageError {
    match e {
        BlockingError::Image(e) => e,
        BlockingError::Io(e) => panic!("an I/O error, not an image error: {e}"),
    }
}

fn stream_err(e: std::io::Error) -> (std::io::ErrorKind, String) {
    let kind = e.kind();
    let inner = e
        .get_ref()
        .and_then(|i| i.downcast_ref::<ImageError>())
        .unwrap_or_else(|| panic!("not an image error: {e}"))
        .to_string();
    (kind, inner)
}

/// Every kind of unit the map finds.
fn kinds(b: &[u8]) -> Vec<Mapping> {
    let mut img = open_bytes(b).unwrap();
    let units = img.map().size().div_ceil(img.map().unit());
    (0..units)
        .map(|i| match img.unit(i).unwrap() {
            Unit::Whole(m) => m,
            Unit::Parts(_) => panic!("VMDK units are whole"),
        })
        .collect()
}

/// A raw disk with data, zeroes and an unaligned tail: `0xab` at 1 MiB (64 KiB),
/// text at 2 MiB, a grain of explicit zeroes at 3 MiB, random bytes near the end.
fn raw_disk(len: usize) -> Vec<u8> {
    let mut d = vec![0u8; len];
    d[1 << 20..(1 << 20) + (64 << 10)].fill(0xab);
    let text = b"ferry moves virtual disks ".repeat(2000);
    d[2 << 20..(2 << 20) + text.len()].copy_from_slice(&text);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in &mut d[len - 70_000..] {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x.to_le_bytes()[0];
    }
    d
}

#[test]
fn every_sparse_layout_qemu_writes_reads_as_qemu_converts_it() {
    if !require(&["qemu-img", "qemu-io"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let writes = [
        "write -P 0xab 1M 64k",
        "write -P 0xcd 2M 4k",
        "write -z 3M 128k",
        "write -P 0x11 5M 64k",
    ];
    for (name, opts, size) in [
        ("sparse", "subformat=monolithicSparse", "8M"),
        ("zeroed-grain", "zeroed_grain=on", "8M"),
        ("compat6", "compat6=on", "8M"),
        // Not a multiple of the grain: the last grain is short.
        ("odd-size", "subformat=monolithicSparse", "6292992"),
        ("zeroed-grain-odd", "zeroed_grain=on", "6292992"),
    ] {
        let img = dir.path().join(format!("{name}.vmdk"));
        ferry_test_kit::qemu_image_with(&img, "vmdk", opts, size, &writes);
        let b = std::fs::read(&img).unwrap();
        let want = qemu_raw(&img);
        let got = read_map(&b).unwrap_or_else(|e| panic!("[{name}] {e}"));
        assert_eq!(got.len(), want.len(), "[{name}] size");
        assert!(got == want, "[{name}] the disk differs from qemu's");
        let k = kinds(&b);
        assert!(
            k.iter().any(|m| matches!(m, Mapping::Data { .. })),
            "[{name}] data"
        );
        assert!(k.contains(&Mapping::Unallocated), "[{name}] holes");
        assert_eq!(
            k.contains(&Mapping::Zero),
            name.starts_with("zeroed-grain"),
            "[{name}] zeroed grains"
        );
        assert!(!is_stream_optimized(&b), "[{name}] not a stream");
        let (kind, msg) = stream_err(read_stream(&b).unwrap_err());
        assert_eq!(kind, std::io::ErrorKind::InvalidData, "[{name}]");
        assert!(msg.contains("it needs random access"), "[{name}] {msg}");
    }
}

#[test]
fn stream_optimized_from_qemu_reads_the_same_through_the_map_and_in_order() {
    if !require(&["qemu-img"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (name, len) in [
        ("4m", 4 << 20),
        ("odd", (3 << 20) + 4096 + 1536),
        ("unaligned", (3 << 20) + 1000),
    ] {
        let raw = dir.path().join(format!("{name}.raw"));
        let img = dir.path().join(format!("{name}.vmdk"));
        std::fs::write(&raw, raw_disk(len)).unwrap();
        ferry_test_kit::sh(
            "qemu-img",
            &[
                "convert",
                "-q",
                "-f",
                "raw",
                "-O",
                "vmdk",
                "-o",
                "subformat=streamOptimized",
                s(&raw),
                s(&img),
            ],
        );
        let b = std::fs::read(&img).unwrap();
        assert!(is_stream_optimized(&b), "[{name}]");
        let n = open_bytes(&b).unwrap().map().name();
        assert_eq!(n, "VMDK streamOptimized (64 KiB grains)", "[{name}]");
        let want = qemu_raw(&img);
        assert_eq!(
            want.len(),
            len.next_multiple_of(512),
            "[{name}] qemu's size"
        );
        let got = read_map(&b).unwrap_or_else(|e| panic!("[{name}] map: {e}"));
        assert!(got == want, "[{name}] the map's disk differs from qemu's");
        assert!(
            kinds(&b)
                .iter()
                .any(|m| matches!(m, Mapping::Compressed { .. })),
            "[{name}] compressed grains"
        );
        let streamed = read_stream(&b).unwrap_or_else(|e| panic!("[{name}] stream: {e}"));
        assert!(
            streamed == want,
            "[{name}] the streamed disk differs from qemu's"
        );
        // Cut inside the last grain: both readers fail, neither returns a shorter disk.
        let last_data = b.len() - b.iter().rev().take_while(|x| **x == 0).count();
        let cut = &b[..last_data - 10];
        assert!(
            read_map(cut).is_err(),
            "[{name}] a cut image read through the map"
        );
        let (kind, msg) = stream_err(read_stream(cut).unwrap_err());
        assert_eq!(kind, std::io::ErrorKind::UnexpectedEof, "[{name}] {msg}");
        assert!(msg.contains("truncated"), "[{name}] {msg}");
        // Without the zero sectors after the last grain (no end-of-stream marker): the
        // grain tables up front say every grain was read.
        let bare = &b[..last_data.next_multiple_of(512)];
        let streamed = read_stream(bare).unwrap_or_else(|e| panic!("[{name}] bare: {e}"));
        assert!(streamed == want, "[{name}] the bare stream's disk");
        // Cut just before the last grain's marker: a grain the tables name is missing.
        let last = grain_markers(&b).pop().expect("grains");
        let (kind, msg) = stream_err(read_stream(&b[..last]).unwrap_err());
        assert_eq!(kind, std::io::ErrorKind::UnexpectedEof, "[{name}] {msg}");
        assert!(
            msg.contains("before the last grain its grain tables name"),
            "[{name}] {msg}"
        );
    }
}

/// Where the grain markers of a stream in qemu's layout are (from its overHead on).
fn grain_markers(b: &[u8]) -> Vec<usize> {
    let mut at = usize::try_from(le64(b, 64)).unwrap() * 512;
    let mut out = Vec::new();
    while at + 12 <= b.len() {
        let size = usize::try_from(le32(b, at + 8)).unwrap();
        if size == 0 {
            break;
        }
        out.push(at);
        at += (12 + size).next_multiple_of(512);
    }
    out
}

#[test]
fn vmware_layout_streams_from_vmdkstream_read_both_ways() {
    let python = "/usr/bin/python3";
    let ok = Path::new(python).exists()
        && std::process::Command::new(python)
            .args(["-c", "import VMDKstream"])
            .output()
            .is_ok_and(|o| o.status.success());
    if !ok {
        if ferry_test_kit::tools_required() {
            panic!("python3-vmdkstream is not installed, and FERRY_REQUIRE_TOOLS=1");
        }
        ferry_test_kit::skip_in(
            "convert",
            "python3-vmdkstream (module VMDKstream for /usr/bin/python3) is not installed",
        );
        return;
    }
    if !require(&["qemu-img"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (name, len) in [
        ("4m", 4 << 20),
        ("odd", (3 << 20) + 4096 + 1536),
        ("big", 40 << 20),
    ] {
        let raw = dir.path().join(format!("{name}.raw"));
        let img = dir.path().join(format!("{name}.vmdk"));
        let disk = raw_disk(len);
        std::fs::write(&raw, &disk).unwrap();
        ferry_test_kit::run_ok(std::process::Command::new(python).args([
            "-c",
            &format!(
                "import VMDKstream; VMDKstream.convert_to_stream({:?}, {:?})",
                s(&raw),
                s(&img)
            ),
        ]));
        let b = std::fs::read(&img).unwrap();
        assert_eq!(
            u64::from_le_bytes(b[56..64].try_into().unwrap()),
            GD_AT_END,
            "[{name}] VMware's layout"
        );
        assert!(is_stream_optimized(&b), "[{name}]");
        let n = open_bytes(&b).unwrap().map().name();
        assert_eq!(
            n, "VMDK streamOptimized (64 KiB grains, directory at the end)",
            "[{name}]"
        );
        let want = qemu_raw(&img);
        assert!(
            want == disk,
            "[{name}] qemu reads the disk it was made from"
        );
        let got = read_map(&b).unwrap_or_else(|e| panic!("[{name}] map: {e}"));
        assert!(got == want, "[{name}] the map's disk differs from qemu's");
        let streamed = read_stream(&b).unwrap_or_else(|e| panic!("[{name}] stream: {e}"));
        assert!(
            streamed == want,
            "[{name}] the streamed disk differs from qemu's"
        );
        // Without its footer and end marker: the map has no directory, the stream no end.
        let cut = &b[..b.len() - 1536];
        assert!(read_map(cut).is_err(), "[{name}] no footer");
        let (kind, _) = stream_err(read_stream(cut).unwrap_err());
        assert_eq!(kind, std::io::ErrorKind::UnexpectedEof, "[{name}]");
        // Without only its end marker: the footer says the stream is whole.
        let no_eos = &b[..b.len() - 512];
        assert!(
            read_stream(no_eos).unwrap() == want,
            "[{name}] ends after the footer"
        );
    }
}

#[test]
fn flat_and_split_disks_qemu_makes_are_refused_naming_the_other_file() {
    if !require(&["qemu-img"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let flat = dir.path().join("d.vmdk");
    ferry_test_kit::qemu_image_with(&flat, "vmdk", "subformat=monolithicFlat", "4M", &[]);
    let e = image_err(read_map(&std::fs::read(&flat).unwrap()).unwrap_err());
    assert!(e.is_refusal(), "{e}");
    assert_eq!(
        e.to_string(),
        "VMDK: extent \"d-flat.vmdk\" is a separate file; Ferry reads only what is inside the input"
    );
    let split = dir.path().join("split.vmdk");
    ferry_test_kit::qemu_image_with(&split, "vmdk", "subformat=twoGbMaxExtentSparse", "4M", &[]);
    let e = image_err(read_map(&std::fs::read(&split).unwrap()).unwrap_err());
    assert!(
        e.to_string()
            .contains("\"split-s001.vmdk\" is a separate file"),
        "{e}"
    );
    // The split disk's extent alone: a sparse file without a descriptor naming it.
    let s001 = std::fs::read(dir.path().join("split-s001.vmdk")).unwrap();
    let e = image_err(read_map(&s001).unwrap_err());
    assert!(e.is_refusal(), "{e}");
    assert!(e.to_string().contains("one extent of a split disk"), "{e}");
    let (_, msg) = stream_err(read_stream(&std::fs::read(&flat).unwrap()).unwrap_err());
    assert!(msg.contains("\"d-flat.vmdk\" is a separate file"), "{msg}");
}

/// A 4 MiB monolithicSparse image from qemu with data in grain 16 (1 MiB).
fn sparse_image(dir: &Path) -> Vec<u8> {
    let img = dir.join("base.vmdk");
    ferry_test_kit::qemu_image_with(
        &img,
        "vmdk",
        "subformat=monolithicSparse",
        "4M",
        &["write -P 0xab 1M 64k"],
    );
    std::fs::read(img).unwrap()
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

fn patched(good: &[u8], at: usize, bytes: &[u8]) -> Vec<u8> {
    let mut b = good.to_vec();
    b[at..at + bytes.len()].copy_from_slice(bytes);
    b
}

/// The image with its embedded descriptor replaced by `text`.
fn with_descriptor(good: &[u8], text: &str) -> Vec<u8> {
    let mut d = text.as_bytes().to_vec();
    d.resize(20 * 512, 0);
    patched(good, 512, &d)
}

#[test]
fn hostile_headers_are_refused_by_name() {
    if !require(&["qemu-img", "qemu-io"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let good = sparse_image(dir.path());
    assert!(read_map(&good).is_ok(), "the unpatched image reads");
    let err = |b: Vec<u8>| image_err(read_map(&b).unwrap_err());
    let refused = |b: Vec<u8>, what: &str| {
        let e = err(b);
        assert!(matches!(e, ImageError::Unsupported { .. }), "{what}: {e}");
        assert!(e.to_string().contains(what), "{what}: {e}");
    };
    let corrupt = |b: Vec<u8>, what: &str| {
        let e = err(b);
        assert!(matches!(e, ImageError::Corrupt { .. }), "{what}: {e}");
        assert!(e.to_string().contains(what), "{what}: {e}");
    };
    refused(patched(&good, 12, &0u64.to_le_bytes()), "capacity 0");
    refused(
        patched(&good, 12, &(1u64 << 40).to_le_bytes()),
        "the most Ferry accepts",
    );
    refused(patched(&good, 4, &4u32.to_le_bytes()), "version 4");
    refused(
        patched(&good, 20, &3u64.to_le_bytes()),
        "grain size 3 sectors",
    );
    refused(
        patched(&good, 20, &(1u64 << 20).to_le_bytes()),
        "grain size 1048576 sectors",
    );
    refused(
        patched(&good, 44, &4096u32.to_le_bytes()),
        "4096 entries per grain table",
    );
    refused(
        patched(&good, 44, &0u32.to_le_bytes()),
        "0 entries per grain table",
    );
    refused(
        patched(&good, 36, &(1u64 << 20).to_le_bytes()),
        "embedded descriptor of",
    );
    refused(
        patched(&good, 77, &7u16.to_le_bytes()),
        "compressAlgorithm 7",
    );
    corrupt(patched(&good, 73, b"\n \n\n"), "newline-detection bytes");
    // Capacity 1 sector with 1-sector grains and one entry per table: 512 B per
    // directory entry, so a large capacity needs more entries than Ferry reads.
    let mut b = patched(&good, 20, &1u64.to_le_bytes());
    b[44..48].copy_from_slice(&1u32.to_le_bytes());
    b[12..20].copy_from_slice(&(1u64 << 30).to_le_bytes());
    refused(b, "grain directory of");
    // A grain directory past the end.
    let e = err(patched(&good, 56, &(1u64 << 30).to_le_bytes()));
    assert!(
        matches!(
            e,
            ImageError::PastEnd {
                what: "grain directory",
                ..
            }
        ),
        "{e}"
    );
    // A GD_AT_END image without a footer.
    let e = err(patched(&good, 56, &GD_AT_END.to_le_bytes()));
    assert!(e.to_string().contains("stream footer is invalid"), "{e}");
}

#[test]
fn hostile_tables_and_grains_are_refused() {
    if !require(&["qemu-img", "qemu-io"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let good = sparse_image(dir.path());
    let gd = usize::try_from(le64(&good, 56)).unwrap() * 512;
    let gt = usize::try_from(le32(&good, gd)).unwrap() * 512;
    let err = |b: Vec<u8>| image_err(read_map(&b).unwrap_err());
    // The grain table past the end, or on the descriptor.
    let e = err(patched(&good, gd, &0x10_0000u32.to_le_bytes()));
    assert!(
        matches!(
            e,
            ImageError::PastEnd {
                what: "grain table",
                ..
            }
        ),
        "{e}"
    );
    let e = err(patched(&good, gd, &2u32.to_le_bytes()));
    assert!(e.to_string().contains("overlaps the descriptor"), "{e}");
    // The grain of 1 MiB (entry 16) past the end, or on the header.
    let e = err(patched(&good, gt + 16 * 4, &0x7fff_0000u32.to_le_bytes()));
    assert!(
        matches!(e, ImageError::PastEnd { what: "grain", .. }),
        "{e}"
    );
    assert!(e.to_string().contains("truncated or corrupt"), "{e}");
    // Entry 1 without the zeroed-grain flag is sector 1: the descriptor.
    let e = err(patched(&good, gt + 16 * 4, &1u32.to_le_bytes()));
    assert!(
        e.to_string()
            .contains("the grain at sector 1 overlaps the descriptor"),
        "{e}"
    );
    // The file cut inside its grain.
    let host = usize::try_from(le32(&good, gt + 16 * 4)).unwrap() * 512;
    let e = err(good[..host + 100].to_vec());
    assert!(
        matches!(e, ImageError::PastEnd { what: "grain", .. }),
        "{e}"
    );
}

#[test]
fn hostile_descriptors_are_refused_naming_the_file() {
    if !require(&["qemu-img", "qemu-io"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let good = sparse_image(dir.path());
    let err = |b: &[u8]| image_err(read_map(b).unwrap_err());
    let head = "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n";
    // A descriptor file naming a host file, as qemu would read it (formats.md §2.2).
    let host = format!("{head}createType=\"monolithicFlat\"\nRW 1 FLAT \"/etc/hostname\" 0\n");
    let e = err(host.as_bytes());
    assert!(e.is_refusal(), "{e}");
    assert_eq!(
        e.to_string(),
        "VMDK: extent \"/etc/hostname\" is a separate file (an absolute path); Ferry reads only what is inside the input"
    );
    // The same extent inside a sparse file, beside its own and alone.
    let inside = format!(
        "{head}createType=\"monolithicSparse\"\nRW 8192 SPARSE \"base.vmdk\"\nRW 1 FLAT \"/etc/hostname\" 0\n"
    );
    let e = err(&with_descriptor(&good, &inside));
    assert!(
        e.to_string()
            .contains("\"/etc/hostname\" is a separate file"),
        "{e}"
    );
    let alone = format!("{head}createType=\"monolithicFlat\"\nRW 8192 FLAT \"/etc/hostname\" 0\n");
    let e = err(&with_descriptor(&good, &alone));
    assert!(
        e.to_string()
            .contains("\"/etc/hostname\" is a separate file"),
        "{e}"
    );
    // A path out of the image's directory.
    let up = format!("{head}createType=\"twoGbMaxExtentSparse\"\nRW 8192 SPARSE \"../x\"\n");
    let e = err(up.as_bytes());
    assert_eq!(
        e.to_string(),
        "VMDK: extent \"../x\" is a separate file (a path outside the image's directory); Ferry reads only what is inside the input"
    );
    // Capacity 0 with a descriptor that names a host file: qemu would open it.
    let mut zero = with_descriptor(&good, &alone);
    zero[12..20].copy_from_slice(&0u64.to_le_bytes());
    let e = err(&zero);
    assert!(
        e.is_refusal() && e.to_string().contains("capacity 0"),
        "{e}"
    );
    // A parent, a split createType, an extent of another size.
    let child = "# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=abcdef01\nparentFileNameHint=\"base.vmdk\"\ncreateType=\"monolithicSparse\"\nRW 8192 SPARSE \"c.vmdk\"\n";
    let e = err(&with_descriptor(&good, child));
    assert!(
        e.is_refusal() && e.to_string().contains("delta of a parent"),
        "{e}"
    );
    let split =
        format!("{head}createType=\"twoGbMaxExtentSparse\"\nRW 8192 SPARSE \"x-s001.vmdk\"\n");
    let e = err(&with_descriptor(&good, &split));
    assert!(
        e.to_string()
            .contains("createType \"twoGbMaxExtentSparse\""),
        "{e}"
    );
    let other = format!("{head}createType=\"monolithicSparse\"\nRW 4096 SPARSE \"x.vmdk\"\n");
    let e = err(&with_descriptor(&good, &other));
    assert!(matches!(e, ImageError::Corrupt { .. }), "{e}");
    let bad = format!("{head}createType=\"monolithicSparse\"\nRW many SPARSE \"x.vmdk\"\n");
    let e = err(&with_descriptor(&good, &bad));
    assert!(e.to_string().contains("invalid extent line"), "{e}");
}

// Hand-built streams in VMware's layout: header (gd = GD_AT_END), descriptor, grain
// markers, one grain table and the directory behind their markers, footer, EOS.

const GRAIN: u64 = 128;

fn header(capacity: u64, gd: u64) -> Vec<u8> {
    let mut b = vec![0u8; 512];
    b[..4].copy_from_slice(b"KDMV");
    b[4..8].copy_from_slice(&3u32.to_le_bytes());
    b[8..12].copy_from_slice(&0x30001u32.to_le_bytes());
    b[12..20].copy_from_slice(&capacity.to_le_bytes());
    b[20..28].copy_from_slice(&GRAIN.to_le_bytes());
    b[28..36].copy_from_slice(&1u64.to_le_bytes());
    b[36..44].copy_from_slice(&1u64.to_le_bytes());
    b[44..48].copy_from_slice(&512u32.to_le_bytes());
    b[56..64].copy_from_slice(&gd.to_le_bytes());
    b[64..72].copy_from_slice(&2u64.to_le_bytes());
    b[73..77].copy_from_slice(b"\n \r\n");
    b[77..79].copy_from_slice(&1u16.to_le_bytes());
    b
}

fn meta_marker(val: u64, kind: u32) -> Vec<u8> {
    let mut b = vec![0u8; 512];
    b[..8].copy_from_slice(&val.to_le_bytes());
    b[12..16].copy_from_slice(&kind.to_le_bytes());
    b
}

fn zlib(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// A stream of `capacity` sectors holding `grains` (LBA, zlib data), in the order
/// given; the grain table names each grain at its marker.
fn vmware_stream(capacity: u64, grains: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut s = header(capacity, GD_AT_END);
    let mut d = format!(
        "# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType=\"streamOptimized\"\nRDONLY {capacity} SPARSE \"s.vmdk\"\n"
    )
    .into_bytes();
    d.resize(512, 0);
    s.extend(d);
    let mut gt = vec![0u8; 2048];
    for (lba, data) in grains {
        let at = u32::try_from(s.len() / 512).unwrap();
        let i = usize::try_from(lba / GRAIN).unwrap();
        gt[i * 4..i * 4 + 4].copy_from_slice(&at.to_le_bytes());
        s.extend(lba.to_le_bytes());
        s.extend(u32::try_from(data.len()).unwrap().to_le_bytes());
        s.extend(data);
        s.resize(s.len().next_multiple_of(512), 0);
    }
    s.extend(meta_marker(4, 1));
    let gt_at = u32::try_from(s.len() / 512).unwrap();
    s.extend(gt);
    s.extend(meta_marker(1, 2));
    let gd_at = s.len() as u64 / 512;
    let mut gd = gt_at.to_le_bytes().to_vec();
    gd.resize(512, 0);
    s.extend(gd);
    s.extend(meta_marker(1, 3));
    s.extend(header(capacity, gd_at));
    s.extend(meta_marker(0, 0));
    s
}

#[test]
fn hand_built_vmware_streams_read_and_hostile_ones_are_refused() {
    let a = vec![0xabu8; 65536];
    let b: Vec<u8> = (0..65536u32).map(|i| (i * 7 % 251) as u8).collect();
    let good = vmware_stream(1024, &[(128, zlib(&a)), (512, zlib(&b))]);
    let mut want = vec![0u8; 1024 * 512];
    want[65536..131072].copy_from_slice(&a);
    want[262144..327680].copy_from_slice(&b);
    assert!(read_map(&good).unwrap() == want, "through the map");
    assert!(read_stream(&good).unwrap() == want, "in order");

    // Out of order: the stream refuses it (the map does not care).
    let swapped = vmware_stream(1024, &[(512, zlib(&b)), (128, zlib(&a))]);
    assert!(read_map(&swapped).unwrap() == want);
    let (kind, msg) = stream_err(read_stream(&swapped).unwrap_err());
    assert_eq!(kind, std::io::ErrorKind::InvalidData);
    assert!(msg.contains("out of order"), "{msg}");
    // The same grain twice.
    let twice = vmware_stream(1024, &[(128, zlib(&a)), (128, zlib(&a))]);
    let (_, msg) = stream_err(read_stream(&twice).unwrap_err());
    assert!(msg.contains("out of order"), "{msg}");

    // A decompression bomb: a marker whose data inflates to 16 grains.
    let bomb = vmware_stream(1024, &[(128, zlib(&vec![0u8; 1 << 20]))]);
    let e = image_err(read_map(&bomb).unwrap_err());
    assert!(
        e.to_string()
            .contains("inflates to more than its 65536 bytes"),
        "{e}"
    );
    let (_, msg) = stream_err(read_stream(&bomb).unwrap_err());
    assert!(
        msg.contains("inflates to more than its 65536 bytes"),
        "{msg}"
    );
    // A grain that inflates short, one that is not zlib, a marker larger than a grain.
    let short = vmware_stream(1024, &[(128, zlib(&a[..1000]))]);
    let (_, msg) = stream_err(read_stream(&short).unwrap_err());
    assert!(msg.contains("inflates to 1000 bytes"), "{msg}");
    assert!(read_map(&short).is_err());
    let garbage = vmware_stream(1024, &[(128, vec![0x55; 300])]);
    let (_, msg) = stream_err(read_stream(&garbage).unwrap_err());
    assert!(msg.contains("not a zlib stream"), "{msg}");
    assert!(read_map(&garbage).is_err());
    let mut huge = good.clone();
    huge[1024 + 8..1024 + 12].copy_from_slice(&(1u32 << 30).to_le_bytes());
    let (_, msg) = stream_err(read_stream(&huge).unwrap_err());
    assert!(msg.contains("more than a grain takes"), "{msg}");
    // A grain past the capacity.
    let past = vmware_stream(1024, &[(1024, zlib(&a))]);
    let (_, msg) = stream_err(read_stream(&past).unwrap_err());
    assert!(
        msg.contains("not the start of a grain inside the disk"),
        "{msg}"
    );

    // Truncated anywhere: never a shorter disk.
    for cut in [
        100,
        512,
        1024,
        1030,
        1500,
        good.len() - 2048,
        good.len() - 1536,
    ] {
        let r = read_stream(&good[..cut]);
        assert!(r.is_err(), "cut at {cut} read as a disk");
        assert!(read_map(&good[..cut]).is_err(), "cut at {cut} opened");
    }
    // Capacity 0 and a disk over the limit.
    let mut zero = good.clone();
    zero[12..20].copy_from_slice(&0u64.to_le_bytes());
    let (_, msg) = stream_err(read_stream(&zero).unwrap_err());
    assert!(msg.contains("capacity 0"), "{msg}");
    let (_, msg) = stream_err(VmdkStreamReader::open_with_limit(&good[..], 4096).unwrap_err());
    assert!(msg.contains("larger than 4096"), "{msg}");
}

/// The checked-in fuzz seeds (qemu-img and python3-vmdkstream images), mutated in their
/// metadata and cut short, many times: every reading ends in a disk or an error, never
/// a panic (the stable-Rust stand-in for a fuzzing run).
#[test]
fn mutated_seeds_never_panic_either_reader() {
    let seeds = ferry_test_kit::fuzz_seeds("image_vmdk");
    assert!(seeds.len() >= 3, "named seeds of image_vmdk: {seeds:?}");
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut rand = move |n: usize| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        usize::try_from(x % n as u64).unwrap()
    };
    let (mut disks, mut errors) = (0, 0);
    for seed in &seeds {
        let good = std::fs::read(seed).unwrap();
        for round in 0..300 {
            let mut b = good.clone();
            for _ in 0..1 + rand(4) {
                // Mostly the header, descriptor and tables; sometimes anywhere.
                let at = match rand(4) {
                    0 => rand(80),
                    1 => rand(16 << 10),
                    2 => b.len() - 1 - rand(2048.min(b.len())),
                    _ => rand(b.len()),
                };
                b[at] = u8::try_from(rand(256)).unwrap();
            }
            if round % 10 == 0 {
                b.truncate(rand(b.len()));
            }
            let what = format!("{} round {round}", seed.display());
            let outcome = std::panic::catch_unwind(|| {
                let mut ok = 0;
                if let Ok(mut img) = open_bytes(&b) {
                    let (size, unit) = (img.map().size(), img.map().unit());
                    if size <= 64 << 20 {
                        ok += usize::from(img.read_all().is_ok());
                    } else {
                        for i in 0..size.div_ceil(unit).min(4096) {
                            if img.unit(i).is_err() {
                                break;
                            }
                        }
                    }
                }
                if let Ok(mut r) = VmdkStreamReader::open_with_limit(&b[..], 64 << 20) {
                    let mut sink = Vec::new();
                    ok += usize::from(r.read_to_end(&mut sink).is_ok());
                }
                ok
            });
            match outcome {
                Ok(0) => errors += 1,
                Ok(_) => disks += 1,
                Err(_) => panic!("{what}: a reader panicked"),
            }
        }
    }
    assert!(disks > 0 && errors > 0, "{disks} disks, {errors} errors");
}
