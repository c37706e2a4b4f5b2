//! What must hold for any input of the link and manifest parsers. Shared by the fuzz targets
//! (`fuzz_targets/`) and by `tests/fuzz_corpus.rs`, which replays the committed corpora on every
//! `cargo test`; a violated property panics.

use regsweep::digest::Digest;
use regsweep::layout::{self, BlobObject};
use regsweep::manifest::{self, ManifestKind};

/// `data` as a link file, and as a storage key (lossy UTF-8: keys are always UTF-8), bare and
/// below each prefix the key parsers expect. Returns the link's digest if it parses.
pub fn link(data: &[u8]) -> Option<Digest> {
    let digest = layout::parse_link(data).ok();
    if let Some(digest) = digest {
        // Whatever parses is exactly the canonical 71-byte form.
        assert_eq!(digest.to_string().as_bytes(), data);
    }
    let text = String::from_utf8_lossy(data);
    for key in [
        text.to_string(),
        format!("{}{text}", layout::REPOSITORIES),
        format!("{}{text}", layout::SHA256_BLOBS),
    ] {
        let parsed = layout::parse_repository_key(&key);
        if let Some(name) = parsed.repository {
            assert!(
                layout::is_valid_repository_name(name),
                "{name:?} in {key:?}"
            );
            assert!(
                key.starts_with(&layout::repository(name)),
                "{name:?} in {key:?}"
            );
        }
        if let BlobObject::Data(digest) = layout::parse_blob_key(&key) {
            assert_eq!(layout::blob_data(&digest), key);
        }
        for dir in layout::removable_parents(&key) {
            assert!(
                key.starts_with(dir) && dir.ends_with('/'),
                "{dir:?} of {key:?}"
            );
            assert!(!layout::is_anchor_dir(dir), "{dir:?} of {key:?}");
        }
    }
    digest
}

/// `data` as a stored manifest. Returns its kind if it parses; every reference it yields is then
/// a well-formed sha256 digest.
pub fn manifest(data: &[u8]) -> Option<ManifestKind> {
    let refs = manifest::parse_manifest(data).ok()?;
    for digest in refs
        .manifests
        .iter()
        .chain(&refs.blobs)
        .chain(&refs.subject)
    {
        assert_eq!(Digest::parse(&digest.to_string()).as_ref(), Ok(digest));
    }
    Some(refs.kind)
}
