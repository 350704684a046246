//! Replays the fuzz corpus (`fuzz/corpus/<target>/*`) through the fuzz targets' entry
//! points on stable: every seed and every input a fuzzing run kept must be handled
//! without a panic.

use std::path::Path;

fn replay(target: &str, f: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        f(&data);
        // Truncations of each seed too: the shapes a fuzzer tries first.
        for cut in [1, data.len() / 2, data.len().saturating_sub(1)] {
            f(&data[..cut.min(data.len())]);
        }
        n += 1;
    }
    assert!(n > 0, "no corpus for {target}");
}

#[test]
fn legacy_blob_corpus() {
    replay("legacy_blob", jumpset::fuzzing::legacy_blob);
}

#[test]
fn nft_messages_corpus() {
    replay("nft_messages", jumpset::fuzzing::nft_messages);
}

#[test]
fn config_corpus() {
    replay("config", jumpset::fuzzing::config);
}
