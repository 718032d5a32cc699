//! Replays the checked-in seeds of the `vsphere_soap` fuzz target on stable Rust, so CI
//! covers the SOAP readers without nightly (fuzz/README.md says how to fuzz for real).

use std::path::PathBuf;

#[test]
fn vsphere_soap_corpus_replays_without_panic() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/vsphere_soap");
    let mut seeds: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    seeds.sort();
    assert!(seeds.len() >= 10, "{seeds:?}");
    for p in seeds {
        eprintln!("{}", p.display());
        ferry_vsphere::fuzzing::soap_response(&std::fs::read(&p).expect("read seed"));
    }
}

#[test]
fn truncated_and_corrupted_seeds_do_not_panic() {
    let doc = include_str!("../src/testdata/task_info_success.xml").as_bytes();
    for n in (0..doc.len()).step_by(7) {
        ferry_vsphere::fuzzing::soap_response(&doc[..n]);
        let mut d = doc.to_vec();
        d[n] ^= 0x20;
        ferry_vsphere::fuzzing::soap_response(&d);
    }
}
