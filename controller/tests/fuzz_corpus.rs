//! The `controller_inputs` fuzz corpus, replayed: no input may panic.

#[test]
fn controller_inputs_corpus_replays_without_panic() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/controller_inputs");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let b = std::fs::read(&p).unwrap();
        ferry_controller::fuzzing::inputs(&b);
        let mut all = b.clone();
        all[0] = 0xff;
        ferry_controller::fuzzing::inputs(&all);
        n += 1;
    }
    assert!(n >= 5, "corpus {} has {n} inputs", dir.display());
}
