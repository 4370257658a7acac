//! Replays the fuzzing corpus (`fuzz/corpus/<target>/*`, seeds and whatever
//! `cargo fuzz` found worth keeping) through the same entry points the fuzz
//! targets use: every parser of hostile input must take each without a panic.

use std::path::Path;

#[test]
fn corpus_replays_without_a_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut n = 0;
    for target in quarry::fuzz::TARGETS {
        let dir = root.join(target);
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e} (every target keeps seeds)", dir.display()));
        for e in entries.flatten() {
            let data = std::fs::read(e.path()).unwrap();
            quarry::fuzz::run(target, &data);
            n += 1;
        }
    }
    assert!(n >= quarry::fuzz::TARGETS.len(), "only {n} corpus inputs");
}

#[test]
fn every_target_has_a_fuzz_program() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/fuzz_targets");
    for target in quarry::fuzz::TARGETS {
        assert!(dir.join(format!("{target}.rs")).exists(), "{target}");
    }
}
