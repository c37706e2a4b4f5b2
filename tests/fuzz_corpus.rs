//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/`, minimized by `cargo fuzz cmin`)
//! and the seeds they grew from (`fuzz/seeds/<target>/`) through the link and manifest parsers,
//! with the properties the fuzz targets check (`fuzz/checks.rs`), so that what fuzzing found keeps
//! guarding the parsers on every CI run without a fuzzer.

#[path = "../fuzz/checks.rs"]
mod checks;

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use regsweep::manifest::ManifestKind;

/// Every file of `fuzz/corpus/<target>/` and `fuzz/seeds/<target>/`, with its name.
fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for dir in ["corpus", "seeds"] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz")
            .join(dir)
            .join(target);
        let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.unwrap().path();
            let bytes = fs::read(&path).unwrap();
            out.push((path.display().to_string(), bytes));
        }
    }
    out
}

/// Runs `check` on each input, naming the input whose check panics.
fn replay<T>(target: &str, check: fn(&[u8]) -> Option<T>) -> Vec<T> {
    inputs(target)
        .iter()
        .filter_map(|(name, bytes)| {
            std::panic::catch_unwind(|| check(bytes))
                .unwrap_or_else(|_| panic!("{target} input {name} breaks the parser"))
        })
        .collect()
}

#[test]
fn the_link_corpus_parses_without_panics() {
    let count = inputs("link").len();
    let digests = replay("link", checks::link);
    assert!(
        count >= 100,
        "only {count} link inputs: is the corpus there?"
    );
    // Real link files are among them, and most inputs are not links.
    assert!(digests.len() >= 3, "{} links parsed", digests.len());
    assert!(digests.len() < count);
}

#[test]
fn the_manifest_corpus_parses_without_panics() {
    let count = inputs("manifest").len();
    let kinds: BTreeSet<String> = replay("manifest", checks::manifest)
        .iter()
        .map(|kind: &ManifestKind| format!("{kind:?}"))
        .collect();
    assert!(
        count >= 100,
        "only {count} manifest inputs: is the corpus there?"
    );
    // The seeds hold a manifest of every kind the registry stores.
    let all = [
        "Schema1",
        "DockerSchema2",
        "DockerManifestList",
        "OciImageManifest",
        "OciImageIndex",
        "OciArtifactManifest",
    ];
    assert_eq!(kinds, all.iter().map(|k| k.to_string()).collect());
}
