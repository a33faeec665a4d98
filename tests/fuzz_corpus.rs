//! Replays the fuzz targets' saved corpus (fuzz/corpus/<target>/), so every input the
//! fuzzer found interesting keeps being checked by an ordinary `cargo test`. The targets
//! themselves run with `cargo fuzz` (fuzz/README.md).

#[path = "../fuzz/harness.rs"]
mod harness;

use std::path::PathBuf;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut inputs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", dir.display()))
        .map(|entry| {
            let path = entry.expect("a directory entry").path();
            let bytes = std::fs::read(&path).expect("a corpus file");
            (path, bytes)
        })
        .collect();
    inputs.sort();
    inputs
}

#[test]
fn decode_corpus_replays_cleanly() {
    let inputs = corpus("decode");
    assert!(
        inputs.len() >= 10,
        "the decode corpus is missing or nearly empty"
    );
    for (path, bytes) in inputs {
        let replay = std::panic::catch_unwind(|| harness::decode(&bytes));
        assert!(replay.is_ok(), "{} fails", path.display());
    }
}

#[test]
fn connection_corpus_replays_cleanly() {
    let inputs = corpus("connection");
    assert!(
        inputs.len() >= 10,
        "the connection corpus is missing or nearly empty"
    );
    for (path, bytes) in inputs {
        let replay = std::panic::catch_unwind(|| harness::connection(&bytes));
        assert!(replay.is_ok(), "{} fails", path.display());
    }
}

#[test]
fn datagram_corpus_replays_cleanly() {
    let inputs = corpus("datagram");
    assert!(
        inputs.len() >= 10,
        "the datagram corpus is missing or nearly empty"
    );
    let mut ran = 0;
    for (path, bytes) in inputs {
        let replay = std::panic::catch_unwind(|| harness::datagram(&bytes));
        ran += replay.unwrap_or_else(|_| panic!("{} fails", path.display()));
    }
    assert!(
        ran >= 5,
        "the corpus hands only {ran} requests to the handler"
    );
}
