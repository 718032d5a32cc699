//! Replays the checked-in fuzz corpora of the importer's parsers on stable Rust, so CI
//! covers them without nightly (fuzz/README.md says how to fuzz for real).

use std::path::PathBuf;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut v: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let p = e.expect("dir entry").path();
            let b = std::fs::read(&p).expect("read seed");
            (p, b)
        })
        .collect();
    v.sort();
    assert!(!v.is_empty(), "empty corpus {}", dir.display());
    v
}

#[test]
fn vddk_config_corpus_replays_without_panic() {
    for (p, b) in corpus("vddk_config") {
        eprintln!("{}", p.display());
        ferry::fuzzing::vddk_config(&b);
    }
}

#[test]
fn vddk_uri_corpus_replays_without_panic() {
    for (p, b) in corpus("vddk_uri") {
        eprintln!("{}", p.display());
        ferry::fuzzing::vddk_uri(&b);
    }
}

#[test]
fn import_env_corpus_replays_without_panic() {
    for (p, b) in corpus("import_env") {
        eprintln!("{}", p.display());
        ferry::fuzzing::import_env(&b);
    }
}

#[test]
fn changed_extents_corpus_replays_without_panic() {
    for (p, b) in corpus("changed_extents") {
        eprintln!("{}", p.display());
        ferry::fuzzing::changed_extents(&b);
    }
}

#[test]
fn journal_corpus_replays_without_panic() {
    for (p, b) in corpus("journal") {
        eprintln!("{}", p.display());
        ferry::fuzzing::journal(&b);
    }
}

#[test]
fn proxy_env_corpus_replays_without_panic() {
    for (p, b) in corpus("proxy_env") {
        eprintln!("{}", p.display());
        ferry::fuzzing::proxy_env(&b);
    }
}

#[test]
fn cert_key_corpus_replays_without_panic() {
    let mut read = 0;
    let seeds = ferry_test_kit::fuzz_seeds("cert_key");
    for (p, b) in corpus("cert_key") {
        eprintln!("{}", p.display());
        ferry::fuzzing::cert_key(&b);
        // The named seeds are the four real certificates; libFuzzer's finds need not be.
        let seed = seeds.iter().any(|s| s.file_name() == p.file_name());
        read += usize::from(seed && ferry_http::tls::describe_key(&b).is_some());
        for n in (0..b.len()).step_by(7) {
            ferry::fuzzing::cert_key(&b[..n]);
        }
    }
    assert_eq!(
        read, 4,
        "every seed is a real certificate whose key is read"
    );
}

#[test]
fn source_format_corpus_replays_without_panic() {
    for (p, b) in corpus("source_format") {
        eprintln!("{}", p.display());
        ferry::fuzzing::source_format(&b);
        let found = ferry::source::format::detect(&b, None);
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("head-") {
            assert_ne!(found, ferry::source::format::Format::Raw, "{name}");
        }
    }
}

#[test]
fn stream_layers_corpus_replays_without_panic() {
    for (p, b) in corpus("stream_layers") {
        eprintln!("{}", p.display());
        ferry::fuzzing::stream_layers(&b);
    }
}

#[test]
fn qcow2_header_corpus_replays_without_panic() {
    for (p, b) in corpus("qcow2_header") {
        eprintln!("{}", p.display());
        ferry::fuzzing::qcow2_header(&b);
    }
}

#[test]
fn tar_corpus_replays_without_panic() {
    for (p, b) in corpus("tar") {
        eprintln!("{}", p.display());
        ferry::fuzzing::tar(&b);
    }
}

#[test]
fn image_qcow2_corpus_replays_without_panic() {
    for (p, b) in corpus("image_qcow2") {
        eprintln!("{}", p.display());
        ferry::fuzzing::image(ferry::source::format::Format::Qcow2, &b);
    }
}

#[test]
fn image_vmdk_corpus_replays_without_panic() {
    for (p, b) in corpus("image_vmdk") {
        eprintln!("{}", p.display());
        ferry::fuzzing::image(ferry::source::format::Format::Vmdk, &b);
    }
}

#[test]
fn vmdk_stream_corpus_replays_without_panic() {
    for (p, b) in corpus("vmdk_stream") {
        eprintln!("{}", p.display());
        ferry::fuzzing::vmdk_stream(&b);
    }
}

#[test]
fn image_vhd_corpus_replays_without_panic() {
    for (p, b) in corpus("image_vhd") {
        eprintln!("{}", p.display());
        ferry::fuzzing::image(ferry::source::format::Format::Vhd, &b);
    }
}

#[test]
fn image_vhdx_corpus_replays_without_panic() {
    for (p, b) in corpus("image_vhdx") {
        eprintln!("{}", p.display());
        ferry::fuzzing::image(ferry::source::format::Format::Vhdx, &b);
    }
}

#[test]
fn image_vdi_corpus_replays_without_panic() {
    for (p, b) in corpus("image_vdi") {
        eprintln!("{}", p.display());
        ferry::fuzzing::image(ferry::source::format::Format::Vdi, &b);
    }
}

#[test]
fn registry_corpus_replays_without_panic() {
    for (p, b) in corpus("registry") {
        eprintln!("{}", p.display());
        ferry::fuzzing::registry(&b);
    }
}

#[test]
fn multipart_corpus_replays_without_panic() {
    for (p, b) in corpus("multipart") {
        eprintln!("{}", p.display());
        ferry::fuzzing::multipart(&b);
    }
}
