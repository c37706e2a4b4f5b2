//! Manifest parsing (placeholder until the real module lands; being written now).
use crate::digest::Digest;
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestKind { Schema1, DockerSchema2, DockerManifestList, OciImageManifest, OciImageIndex }
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestRefs { pub kind: ManifestKind, pub manifests: Vec<Digest>, pub blobs: Vec<Digest>, pub subject: Option<Digest> }
#[derive(Debug, thiserror::Error)]
#[error("placeholder")]
pub struct ManifestError;
pub fn parse_manifest(_bytes: &[u8]) -> Result<ManifestRefs, ManifestError> { Err(ManifestError) }
