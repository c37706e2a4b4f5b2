//! Manifest parsing: what a stored manifest references.
//!
//! The mark only needs the edges of the graph — child manifests of an index, the config and layer
//! blobs of an image, and the `subject` of a referrer — so documents are read leniently (unknown
//! fields are ignored, as the registry does) but their references strictly: a reference that is
//! not a well-formed digest makes the whole manifest unreadable, and the mark then fails closed.
//!
//! Every reference field present in a document is collected whatever its media type says, so a
//! document with surprising extra fields marks more, never less. References with another algorithm
//! than sha256 are skipped: the registry stores those blobs outside `blobs/sha256/`, which regsweep
//! never sweeps.

use serde::Deserialize;

use crate::digest::{Digest, DigestError};

/// The manifest formats the registry stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestKind {
    /// Docker image manifest schema 1, signed or not (`fsLayers[].blobSum`).
    Schema1,
    /// `application/vnd.docker.distribution.manifest.v2+json`.
    DockerSchema2,
    /// `application/vnd.docker.distribution.manifest.list.v2+json`.
    DockerManifestList,
    /// `application/vnd.oci.image.manifest.v1+json`, or an OCI document with `config` and no
    /// `mediaType`.
    OciImageManifest,
    /// `application/vnd.oci.image.index.v1+json`, or an OCI document with `manifests` and no
    /// `mediaType`.
    OciImageIndex,
    /// `application/vnd.oci.artifact.manifest.v1+json` (the withdrawn OCI 1.1 draft, still found in
    /// registries written by some clients).
    OciArtifactManifest,
}

/// The references of one manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestRefs {
    pub kind: ManifestKind,
    /// Child manifests (of an index or manifest list).
    pub manifests: Vec<Digest>,
    /// Blobs: the config first, then the layers (or `fsLayers`, or artifact `blobs`).
    pub blobs: Vec<Digest>,
    /// The manifest this one refers to (OCI referrers: signatures, SBOMs, attestations).
    pub subject: Option<Digest>,
}

/// Why a stored manifest cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("not JSON: {0}")]
    NotJson(serde_json::Error),
    #[error("unknown manifest media type `{0}`")]
    UnknownMediaType(String),
    #[error("invalid manifest: {0}")]
    Invalid(String),
    #[error("invalid reference in manifest: {0}")]
    InvalidDigest(DigestError),
}

pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
pub const DOCKER_SCHEMA2: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_IMAGE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_IMAGE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_ARTIFACT_MANIFEST: &str = "application/vnd.oci.artifact.manifest.v1+json";

const KNOWN_MEDIA_TYPES: [&str; 7] = [
    DOCKER_SCHEMA1,
    DOCKER_SCHEMA1_SIGNED,
    DOCKER_SCHEMA2,
    DOCKER_MANIFEST_LIST,
    OCI_IMAGE_MANIFEST,
    OCI_IMAGE_INDEX,
    OCI_ARTIFACT_MANIFEST,
];

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Head {
    media_type: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    schema_version: Option<serde_json::Value>,
    media_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
    blobs: Option<Vec<Descriptor>>,
    subject: Option<Descriptor>,
    fs_layers: Option<Vec<FsLayer>>,
}

#[derive(Deserialize)]
struct Descriptor {
    digest: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FsLayer {
    blob_sum: String,
}

/// Parses a stored manifest and returns what it references.
pub fn parse_manifest(bytes: &[u8]) -> Result<ManifestRefs, ManifestError> {
    let doc: Document = serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        // A document of a type we do not know may have any shape: name the type, not the shape.
        serde_json::error::Category::Data => match serde_json::from_slice::<Head>(bytes) {
            Ok(Head {
                media_type: Some(media_type),
            }) if !KNOWN_MEDIA_TYPES.contains(&media_type.as_str()) => {
                ManifestError::UnknownMediaType(media_type)
            }
            _ => ManifestError::Invalid(e.to_string()),
        },
        _ => ManifestError::NotJson(e),
    })?;
    let kind = kind_of(&doc)?;

    let mut refs = ManifestRefs {
        kind,
        manifests: Vec::new(),
        blobs: Vec::new(),
        subject: None,
    };
    for child in doc.manifests.iter().flatten() {
        push_reference(&mut refs.manifests, &child.digest)?;
    }
    let blobs = doc
        .config
        .iter()
        .chain(doc.layers.iter().flatten())
        .chain(doc.blobs.iter().flatten());
    for blob in blobs {
        push_reference(&mut refs.blobs, &blob.digest)?;
    }
    for layer in doc.fs_layers.iter().flatten() {
        push_reference(&mut refs.blobs, &layer.blob_sum)?;
    }
    if let Some(subject) = &doc.subject {
        let mut one = Vec::with_capacity(1);
        push_reference(&mut one, &subject.digest)?;
        refs.subject = one.pop();
    }
    Ok(refs)
}

fn kind_of(doc: &Document) -> Result<ManifestKind, ManifestError> {
    let schema1 = doc
        .schema_version
        .as_ref()
        .and_then(serde_json::Value::as_u64)
        == Some(1);
    let kind = match doc.media_type.as_deref() {
        _ if schema1 => ManifestKind::Schema1,
        Some(DOCKER_SCHEMA1 | DOCKER_SCHEMA1_SIGNED) => ManifestKind::Schema1,
        Some(DOCKER_SCHEMA2) => ManifestKind::DockerSchema2,
        Some(DOCKER_MANIFEST_LIST) => ManifestKind::DockerManifestList,
        Some(OCI_IMAGE_MANIFEST) => ManifestKind::OciImageManifest,
        Some(OCI_IMAGE_INDEX) => ManifestKind::OciImageIndex,
        Some(OCI_ARTIFACT_MANIFEST) => ManifestKind::OciArtifactManifest,
        Some(other) => return Err(ManifestError::UnknownMediaType(other.to_owned())),
        None if doc.manifests.is_some() => ManifestKind::OciImageIndex,
        None if doc.config.is_some() => ManifestKind::OciImageManifest,
        None => {
            return Err(ManifestError::Invalid(
                "no `mediaType`, and neither `manifests` nor `config`".to_owned(),
            ));
        }
    };
    // The field each kind cannot do without: a document missing it is not what it claims to be.
    let (field, present) = match kind {
        ManifestKind::Schema1 => ("fsLayers", doc.fs_layers.is_some()),
        ManifestKind::DockerSchema2 | ManifestKind::OciImageManifest => {
            ("config", doc.config.is_some())
        }
        ManifestKind::DockerManifestList | ManifestKind::OciImageIndex => {
            ("manifests", doc.manifests.is_some())
        }
        ManifestKind::OciArtifactManifest => return Ok(kind),
    };
    if present {
        Ok(kind)
    } else {
        Err(ManifestError::Invalid(format!(
            "{kind:?} without `{field}`"
        )))
    }
}

fn push_reference(into: &mut Vec<Digest>, reference: &str) -> Result<(), ManifestError> {
    match Digest::parse(reference) {
        Ok(digest) => into.push(digest),
        // sha384/sha512 references are valid, but those blobs live outside `blobs/sha256/`.
        Err(DigestError::UnsupportedAlgorithm(_)) => {}
        Err(malformed) => return Err(ManifestError::InvalidDigest(malformed)),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(c: char) -> String {
        std::iter::repeat_n(c, 64).collect()
    }

    fn digest(c: char) -> Digest {
        Digest::from_hex(&hex(c)).unwrap()
    }

    fn sha(c: char) -> String {
        format!("sha256:{}", hex(c))
    }

    #[test]
    fn docker_schema2_lists_config_then_layers() {
        let doc = format!(
            r#"{{
   "schemaVersion": 2,
   "mediaType": "{DOCKER_SCHEMA2}",
   "config": {{"mediaType": "application/vnd.docker.container.image.v1+json", "size": 7023, "digest": "{}"}},
   "layers": [
      {{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 32654, "digest": "{}"}},
      {{"mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", "size": 1, "digest": "{}",
        "urls": ["https://example.com/foreign"]}}
   ]
}}"#,
            sha('c'),
            sha('1'),
            sha('2')
        );
        let refs = parse_manifest(doc.as_bytes()).unwrap();
        assert_eq!(refs.kind, ManifestKind::DockerSchema2);
        assert_eq!(refs.blobs, vec![digest('c'), digest('1'), digest('2')]);
        assert!(refs.manifests.is_empty());
        assert_eq!(refs.subject, None);
    }

    #[test]
    fn manifest_list_and_index_list_children() {
        let list = format!(
            r#"{{"schemaVersion": 2, "mediaType": "{DOCKER_MANIFEST_LIST}", "manifests": [
                {{"mediaType": "{DOCKER_SCHEMA2}", "size": 1, "digest": "{}", "platform": {{"architecture": "amd64", "os": "linux"}}}},
                {{"mediaType": "{DOCKER_SCHEMA2}", "size": 1, "digest": "{}", "platform": {{"architecture": "arm64", "os": "linux"}}}}]}}"#,
            sha('a'),
            sha('b')
        );
        let refs = parse_manifest(list.as_bytes()).unwrap();
        assert_eq!(refs.kind, ManifestKind::DockerManifestList);
        assert_eq!(refs.manifests, vec![digest('a'), digest('b')]);
        assert!(refs.blobs.is_empty());

        // OCI allows an index without mediaType: its shape decides.
        let index = format!(
            r#"{{"schemaVersion": 2, "manifests": [{{"digest": "{}"}}]}}"#,
            sha('d')
        );
        let refs = parse_manifest(index.as_bytes()).unwrap();
        assert_eq!(refs.kind, ManifestKind::OciImageIndex);
        assert_eq!(refs.manifests, vec![digest('d')]);
    }

    #[test]
    fn oci_manifest_without_media_type_and_with_subject() {
        let doc = format!(
            r#"{{"schemaVersion": 2, "artifactType": "application/vnd.example.sbom",
                "config": {{"mediaType": "application/vnd.oci.empty.v1+json", "digest": "{}", "size": 2}},
                "layers": [{{"mediaType": "application/spdx+json", "digest": "{}", "size": 9}}],
                "subject": {{"mediaType": "{OCI_IMAGE_MANIFEST}", "digest": "{}", "size": 5}}}}"#,
            sha('e'),
            sha('5'),
            sha('9')
        );
        let refs = parse_manifest(doc.as_bytes()).unwrap();
        assert_eq!(refs.kind, ManifestKind::OciImageManifest);
        assert_eq!(refs.blobs, vec![digest('e'), digest('5')]);
        assert_eq!(refs.subject, Some(digest('9')));
    }

    #[test]
    fn schema1_signed_and_unsigned() {
        let unsigned = format!(
            r#"{{"schemaVersion": 1, "name": "library/hello", "tag": "latest", "architecture": "amd64",
                "fsLayers": [{{"blobSum": "{}"}}, {{"blobSum": "{}"}}],
                "history": [{{"v1Compatibility": "{{}}"}}, {{"v1Compatibility": "{{}}"}}]}}"#,
            sha('3'),
            sha('4')
        );
        let refs = parse_manifest(unsigned.as_bytes()).unwrap();
        assert_eq!(refs.kind, ManifestKind::Schema1);
        assert_eq!(refs.blobs, vec![digest('3'), digest('4')]);

        let signed = format!(
            r#"{{"schemaVersion": 1, "name": "x", "tag": "v1", "fsLayers": [{{"blobSum": "{}"}}],
                "signatures": [{{"header": {{"jwk": {{"crv": "P-256", "kty": "EC"}}, "alg": "ES256"}},
                "signature": "abc", "protected": "def"}}]}}"#,
            sha('6')
        );
        let refs = parse_manifest(signed.as_bytes()).unwrap();
        assert_eq!(refs.kind, ManifestKind::Schema1);
        assert_eq!(refs.blobs, vec![digest('6')]);
    }

    #[test]
    fn other_algorithms_are_skipped_not_rejected() {
        let doc = format!(
            r#"{{"mediaType": "{OCI_IMAGE_MANIFEST}", "config": {{"digest": "{}"}},
                "layers": [{{"digest": "sha512:{}"}}]}}"#,
            sha('7'),
            "ab".repeat(64)
        );
        assert_eq!(
            parse_manifest(doc.as_bytes()).unwrap().blobs,
            vec![digest('7')]
        );
    }

    #[test]
    fn unreadable_documents_are_errors_that_say_why() {
        let unknown =
            r#"{"schemaVersion": 2, "mediaType": "application/x-unheard-of", "config": {}}"#;
        let err = parse_manifest(unknown.as_bytes()).unwrap_err();
        assert!(
            err.to_string().contains("application/x-unheard-of"),
            "{err}"
        );

        let truncated = format!(r#"{{"mediaType": "{DOCKER_SCHEMA2}", "config": {{"digest": "#);
        assert!(matches!(
            parse_manifest(truncated.as_bytes()),
            Err(ManifestError::NotJson(_))
        ));

        let bad_digest =
            format!(r#"{{"mediaType": "{DOCKER_SCHEMA2}", "config": {{"digest": "sha256:xyz"}}}}"#);
        let err = parse_manifest(bad_digest.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("sha256:xyz"), "{err}");

        let no_digest = format!(r#"{{"mediaType": "{DOCKER_SCHEMA2}", "config": {{"size": 3}}}}"#);
        assert!(matches!(
            parse_manifest(no_digest.as_bytes()),
            Err(ManifestError::Invalid(_))
        ));

        let no_config = format!(r#"{{"mediaType": "{DOCKER_SCHEMA2}", "layers": []}}"#);
        assert!(matches!(
            parse_manifest(no_config.as_bytes()),
            Err(ManifestError::Invalid(_))
        ));

        for shapeless in ["{}", "[]", "42", r#"{"schemaVersion": 2}"#] {
            assert!(parse_manifest(shapeless.as_bytes()).is_err(), "{shapeless}");
        }
    }
}
