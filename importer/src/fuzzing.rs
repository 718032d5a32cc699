//! Fuzz entry points for the importer's parsers of outside input, shared by `fuzz/`
//! (cargo-fuzz) and the corpus-replay test. Each asserts "never panics, bounded work".

use crate::source::vddk::{config, options};

/// A VDDK config file from an operator: parse, then render with Ferry's AIO settings;
/// whatever parses must render to a file that parses again to the same settings count.
pub fn vddk_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(settings) = config::parse(text) {
        let nfc = config::NfcAio {
            buf_size_in_64k: Some(16),
            buf_count: Some(4),
        };
        let rendered = config::render(&settings, nfc);
        let again = config::parse(&rendered.text).expect("rendered config must parse");
        assert!(again.len() <= settings.len() + 2);
    }
}

/// A `vddk://` URI and a thumbprint from the command line or a controller.
pub fn vddk_uri(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = options::parse_uri(text);
    let _ = options::validate_thumbprint(text);
}

/// Values of the import pod's environment (quantities, booleans, checkpoints, UUIDs,
/// endpoints) and a whole environment built from the bytes.
pub fn import_env(data: &[u8]) {
    use crate::import::config;
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = config::parse_quantity(text);
    let _ = config::parse_bool(text);
    let _ = config::is_change_id(text);
    let _ = config::is_uuid(text);
    let _ = config::endpoint_host(text);
    const VARS: [&str; 8] = [
        ferry_contract::env::IMPORTER_ENDPOINT,
        ferry_contract::env::IMPORTER_IMAGE_SIZE,
        ferry_contract::env::PREALLOCATION,
        ferry_contract::env::FILESYSTEM_OVERHEAD,
        ferry_contract::env::IMPORTER_CURRENT_CHECKPOINT,
        ferry_contract::env::IMPORTER_PREVIOUS_CHECKPOINT,
        ferry_contract::env::IMPORTER_THUMBPRINT,
        ferry_contract::env::IMPORTER_UUID,
    ];
    let values = text
        .split('\n')
        .zip(VARS)
        .map(|(v, k)| (k, "", v.to_string()))
        .collect();
    let _ = config::validate(
        &config::RawInputs { values },
        std::path::Path::new("/nonexistent"),
        std::path::Path::new("/data"),
    );
}

/// A changed-extents file handed over by a controller: never panics, and whatever
/// parses is a sorted, merged map inside the disk.
pub fn changed_extents(data: &[u8]) {
    const DISK: u64 = 1 << 40;
    if let Ok(map) = crate::delta::parse_extents(data, DISK) {
        assert!(map.end().is_none_or(|e| e <= DISK));
    }
}

/// A resume journal found on a volume (written by an earlier run, or by anything else):
/// never panics, and whatever decodes encodes back to a journal that decodes the same.
pub fn journal(data: &[u8]) {
    if let Ok(j) = ferry_cbt::journal::decode(data) {
        let again = ferry_cbt::journal::encode(&j).expect("a decoded journal must encode");
        assert_eq!(ferry_cbt::journal::decode(&again).as_ref(), Ok(&j));
    }
}

/// Proxy variables from the pod's environment (lines `NAME=value`) and a target host
/// (the last line): never panics, and a chosen proxy always has a host and a port.
pub fn proxy_env(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines: Vec<&str> = text.split('\n').collect();
    let host = lines.pop().unwrap_or_default();
    let vars: Vec<(&str, &str)> = lines.iter().filter_map(|l| l.split_once('=')).collect();
    let cfg = ferry_http::ProxyConfig::from_lookup(|name| {
        vars.iter()
            .rev()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    });
    for scheme in ["https", "http"] {
        if let Ok(Some(p)) = cfg.proxy_for(scheme, host, 443) {
            assert!(!p.host.is_empty() && p.port != 0, "{p:?}");
        }
    }
}

/// A server certificate as a TLS handshake delivers it: reading its key type never
/// panics.
pub fn cert_key(data: &[u8]) {
    if let Some(key) = ferry_http::tls::describe_key(data) {
        let _ = key.supported();
        let _ = ferry_http::tls::key_problem(data);
    }
}

/// The first bytes of a source (and, split at a point the input chooses, its last
/// sector): detecting the format never panics.
pub fn source_format(data: &[u8]) {
    use crate::source::format;
    let head = &data[..data.len().min(format::HEAD_BYTES)];
    let split = data
        .first()
        .map_or(0, |b| usize::from(*b) * 16)
        .min(data.len());
    let _ = format::detect(head, Some(&data[split..]));
    let _ = format::detect(head, None).how_to_read();
}

/// Most bytes [`stream_layers`] decompresses from one input (a small input may inflate
/// without bound: the copy's own bound is the target and `MAX_STREAM_BYTES`).
pub const MAX_FUZZ_STREAM_OUTPUT: u64 = 16 << 20;

/// Bytes arriving in order (stdin, a compressed file): the format layer looks at the
/// head, peels gzip/xz/zstd at most once each, and the decoded stream is read to its
/// end or to [`MAX_FUZZ_STREAM_OUTPUT`]. A refusal or a read error is fine; a panic is not.
pub fn stream_layers(data: &[u8]) {
    use std::io::Read;
    let reader: Box<dyn Read + Send> = Box::new(std::io::Cursor::new(data.to_vec()));
    if let Ok(crate::source::layers::Peeled::Disk(_, r, _)) =
        crate::source::layers::peel_blocking("fuzz".into(), reader, None, None)
    {
        let mut sink = std::io::sink();
        let _ = std::io::copy(&mut r.take(MAX_FUZZ_STREAM_OUTPUT), &mut sink);
    }
}

/// A tar archive (an OVA) as both sources read one: its headers walked at the offsets
/// they name (random access) and a member picked, unnamed and by the first member's
/// name; then as a stream, the member read through [`ferry_convert::tar::MemberReader`]
/// to its end or [`MAX_FUZZ_STREAM_OUTPUT`], and the rest of the archive walked.
pub fn tar(data: &[u8]) {
    use ferry_convert::tar::{Event, MemberReader, Walker, pick};
    use std::io::Read;
    let mut w = Walker::new();
    let mut members = Vec::new();
    loop {
        let (off, len) = w.want();
        let from = usize::try_from(off).unwrap_or(usize::MAX).min(data.len());
        let to = from
            .saturating_add(usize::try_from(len).unwrap_or(usize::MAX))
            .min(data.len());
        match w.feed(&data[from..to]) {
            Ok(Some(Event::Member(m))) => members.push(m),
            Ok(Some(Event::End)) | Err(_) => break,
            Ok(None) => {}
        }
    }
    let first = members.first().map(|m| m.name.clone());
    for wanted in [None, first.as_deref()] {
        let _ = pick(&members, wanted);
        if let Ok(r) = MemberReader::open(std::io::Cursor::new(data), wanted) {
            let _ = std::io::copy(&mut r.take(MAX_FUZZ_STREAM_OUTPUT), &mut std::io::sink());
        }
    }
}

/// A qcow2 image's first bytes: the header checked, and, if it is accepted, every 8 or
/// 16 bytes after the header read as an L1 and an L2 entry of it (sans-IO: only the
/// decisions, never a read).
pub fn qcow2_header(data: &[u8]) {
    use ferry_convert::qcow2::Header;
    // As a whole image, and as the head of a longer one (its tables past these bytes).
    for len in [Some(data.len() as u64), None] {
        let Ok(h) = Header::parse(data, len) else {
            continue;
        };
        let rest = &data[ferry_convert::qcow2::FIXED_HEADER_BYTES.min(data.len())..];
        for chunk in rest.chunks_exact(16) {
            let a = u64::from_be_bytes(chunk[..8].try_into().unwrap_or_default());
            let b = u64::from_be_bytes(chunk[8..].try_into().unwrap_or_default());
            let _ = h.l1_entry(a, len);
            let _ = h.l2_entry(a, b, len);
        }
    }
}

/// Largest virtual disk the image fuzz entry reads whole (larger ones: their first units).
pub const MAX_FUZZ_DISK: u64 = 64 << 20;
/// Units looked up of a disk larger than [`MAX_FUZZ_DISK`].
pub const MAX_FUZZ_UNITS: u64 = 4096;

/// A whole image file of `format` (qcow2, VMDK, VHD, VHDX, VDI): opened through its
/// opener (every read it asks for served from `data`), then read through its map: the
/// whole disk when it is small, else its first units. Errors are fine; panics, hangs
/// and allocations the input's size does not justify are not.
pub fn image(format: ferry_convert::Format, data: &[u8]) {
    use ferry_convert::image::BlockingImage;
    let Ok(mut img) = BlockingImage::open(std::io::Cursor::new(data), data.len() as u64, format)
    else {
        return;
    };
    let (size, unit) = (img.map().size(), img.map().unit().max(1));
    if size <= MAX_FUZZ_DISK {
        let _ = img.read_all();
    } else {
        for i in 0..size.div_ceil(unit).min(MAX_FUZZ_UNITS) {
            if img.unit(i).is_err() {
                break;
            }
        }
    }
}

/// Largest disk the VMDK stream fuzz entry decodes.
pub const MAX_FUZZ_VMDK_STREAM: u64 = 64 << 20;

/// A streamOptimized VMDK arriving in order: `ferry_convert::vmdk::VmdkStreamReader`
/// over the bytes, read to its end (a disk of at most [`MAX_FUZZ_VMDK_STREAM`]). Errors
/// are fine; panics, hangs and allocations the input does not justify are not.
pub fn vmdk_stream(data: &[u8]) {
    use std::io::Read;
    let Ok(r) = ferry_convert::vmdk::VmdkStreamReader::open_with_limit(data, MAX_FUZZ_VMDK_STREAM)
    else {
        return;
    };
    let _ = std::io::copy(&mut r.take(MAX_FUZZ_VMDK_STREAM), &mut std::io::sink());
}

/// What a registry sends: a manifest or index (with and without a `Content-Type`), an
/// image config, a `WWW-Authenticate` challenge, a token answer, and a reference as a
/// user or CDI writes it. Whatever parses must be within the caps.
pub fn registry(data: &[u8]) {
    use crate::source::registry::{auth, manifest, reference};
    for ct in [
        None,
        Some(manifest::OCI_MANIFEST),
        Some(manifest::OCI_INDEX),
        Some("application/json"),
    ] {
        match manifest::Manifest::parse(data, ct) {
            Ok(manifest::Manifest::Image { layers, .. }) => {
                assert!(layers.len() <= manifest::MAX_LAYERS);
            }
            Ok(manifest::Manifest::Index(m)) => {
                assert!(m.len() <= manifest::MAX_INDEX_ENTRIES);
                let _ = manifest::pick_platform(&m, "amd64", Some("v8"));
            }
            Err(_) => {}
        }
    }
    let _ = manifest::ImageConfig::parse(data);
    if let Ok(t) = auth::parse_token(data) {
        assert!(t.token.len() <= auth::MAX_TOKEN_BYTES);
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = auth::parse_challenges(text.split('\n'));
    if let Ok(r) = reference::Reference::parse(text) {
        assert!(r.repository.len() <= reference::MAX_REPOSITORY_BYTES);
        // What is printed parses to the same reference.
        assert_eq!(
            reference::Reference::parse(&r.to_string())
                .ok()
                .map(|x| x.repository),
            Some(r.repository)
        );
    }
    let _ = reference::Reference::parse(&format!("docker://{text}"));
}

/// An upload's `multipart/form-data` body: the first line is the Content-Type, the rest
/// the body, fed in chunks whose sizes the first byte chooses. Never panics, the file's
/// bytes are never more than the body's, and the chunking changes nothing: the same
/// bytes, or an error either way.
pub fn multipart(data: &[u8]) {
    use crate::upload::multipart::{Multipart, boundary};
    let cut = data.iter().position(|b| *b == b'\n').unwrap_or(data.len());
    let content_type = String::from_utf8_lossy(&data[..cut]);
    let body = data.get(cut + 1..).unwrap_or_default();
    let b = boundary(&content_type).unwrap_or_else(|_| "XyZ".to_string());
    let read = |chunk: usize| -> Result<Vec<u8>, crate::upload::multipart::MultipartError> {
        let mut m = Multipart::new(&b);
        let mut out = Vec::new();
        for c in body.chunks(chunk.max(1)) {
            let n = m.feed(c, &mut out)?;
            assert!(n <= c.len());
            if m.is_done() {
                assert_eq!(m.feed(c, &mut out)?, 0, "nothing is taken after the end");
                break;
            }
            assert_eq!(n, c.len(), "all is taken before the end");
        }
        m.finish()?;
        assert!(out.len() <= body.len());
        Ok(out)
    };
    let whole = read(body.len());
    let chunked = read(1 + usize::from(data.first().copied().unwrap_or(0)) % 97);
    match (&whole, &chunked) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "the chunking changed the file"),
        (Err(_), Err(_)) => {}
        _ => panic!("the chunking changed the outcome: {whole:?} vs {chunked:?}"),
    }
}
