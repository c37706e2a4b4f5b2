//! Mark: which manifests, links and blobs are live.
//!
//! Roots are every tag's `current/link`, plus every revision unless untagged manifests are collected,
//! plus every object younger than the grace period (an upload or push in progress). From the roots
//! the closure follows index → child manifests → config and layers, and keeps the referrers (OCI
//! `subject`) of every live manifest. Marking is per repository for links — a `_layers` link stays
//! only if a live manifest of *that* repository references the blob — and global for blobs.
//!
//! The closure itself ([`mark`]) is pure: the manifests it needs are read and parsed beforehand by
//! [`load_manifests`] into a [`ManifestCatalog`]. Fail closed: a manifest that must be kept but cannot
//! be read or parsed, or a tag whose `current/link` is corrupt, is a [`MarkError`], and the run stops
//! before its first deletion.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use futures::{StreamExt, stream};
use roaring::RoaringBitmap;
use thiserror::Error;

use crate::digest::{Digest, DigestError};
use crate::layout;
use crate::manifest::{ManifestRefs, parse_manifest};
use crate::scan::{BlobUniverse, Inventory, Repository};
use crate::storage::Storage;

/// Larger documents are not treated as manifests (the registry itself refuses far smaller ones).
pub const MAX_MANIFEST_BYTES: u64 = 16 << 20;

/// Every manifest the mark may follow, by blob index: its references, or why it could not be used.
#[derive(Debug, Default)]
pub struct ManifestCatalog {
    manifests: HashMap<u32, Result<ManifestRefs, String>>,
    /// Those whose content could not be read at all (a storage error): unlike a document that was
    /// read and is no manifest, such a manifest may reference anything, so it can only be used
    /// when nothing needs it.
    unread: HashSet<u32>,
}

impl ManifestCatalog {
    pub fn len(&self) -> usize {
        self.manifests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.manifests.is_empty()
    }

    pub fn get(&self, index: &u32) -> Option<&Result<ManifestRefs, String>> {
        self.manifests.get(index)
    }
}

/// Manifests that were all read (parsed or not).
impl FromIterator<(u32, Result<ManifestRefs, String>)> for ManifestCatalog {
    fn from_iter<I: IntoIterator<Item = (u32, Result<ManifestRefs, String>)>>(iter: I) -> Self {
        ManifestCatalog {
            manifests: iter.into_iter().collect(),
            unread: HashSet::new(),
        }
    }
}

/// Why the mark refused to produce a result.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum MarkError {
    #[error("repository {repository}: tag {tag}: corrupt current/link: {error}")]
    CorruptTagLink {
        repository: String,
        tag: String,
        error: DigestError,
    },
    #[error("repository {repository}: manifest {digest} must be kept but cannot be used: {reason}")]
    UnreadableManifest {
        repository: String,
        digest: Digest,
        reason: String,
    },
}

/// What stays in one repository.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RepositoryMarks {
    /// Live manifests (blob indices): their revision links and tag index entries stay.
    pub manifests: RoaringBitmap,
    /// Blobs that live manifests of this repository reference: their `_layers` links stay.
    pub layers: RoaringBitmap,
}

/// The result of the mark: a compact bitmap over the indices of [`BlobUniverse`], exact (no hashing),
/// about a bit per blob when most are live and less when few are.
#[derive(Debug, Default)]
pub struct MarkSet {
    /// Every blob referenced by anything live, in any repository.
    pub blobs: RoaringBitmap,
    /// Aligned with [`Inventory::repositories`].
    pub repositories: Vec<RepositoryMarks>,
    /// Oddities that do not stop the run (kept objects, missing children).
    pub warnings: Vec<String>,
}

/// How the mark chooses its roots.
#[derive(Debug, Clone, Copy)]
pub struct MarkOptions {
    /// Collect manifests that no tag reaches (directly, through an index, or as a referrer).
    pub delete_untagged: bool,
    /// Objects modified after this instant are young: roots, whatever else holds.
    pub cutoff: SystemTime,
}

/// The manifests a mark of `inventory` needs: every revision and tag target in storage, then the
/// children of every index among them, until nothing new appears.
pub async fn load_manifests(
    storage: &Arc<dyn Storage>,
    inventory: &Inventory,
    concurrency: usize,
) -> ManifestCatalog {
    let universe = &inventory.blobs;
    let mut catalog = ManifestCatalog::default();
    let mut wanted: Vec<u32> = inventory
        .repositories
        .iter()
        .flat_map(|repo| {
            let revisions = repo.revisions.iter().map(|r| r.digest);
            let tags = repo
                .tags
                .iter()
                .filter_map(|t| t.current.as_ref()?.target.as_ref().ok().copied());
            revisions.chain(tags)
        })
        .filter_map(|digest| universe.index(&digest))
        .collect();
    while !wanted.is_empty() {
        wanted.sort_unstable();
        wanted.dedup();
        wanted.retain(|index| !catalog.manifests.contains_key(index));
        let loaded: Vec<(u32, Result<ManifestRefs, ManifestFailure>)> =
            stream::iter(wanted.drain(..).map(|index| async move {
                (index, read_manifest(storage, universe, index).await)
            }))
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
        for (index, refs) in loaded {
            let refs = match refs {
                Ok(refs) => {
                    wanted.extend(refs.manifests.iter().filter_map(|d| universe.index(d)));
                    Ok(refs)
                }
                Err(ManifestFailure::Unread(reason)) => {
                    catalog.unread.insert(index);
                    Err(reason)
                }
                Err(ManifestFailure::Unusable(reason)) => Err(reason),
            };
            catalog.manifests.insert(index, refs);
        }
    }
    catalog
}

/// Why a manifest could not be used.
enum ManifestFailure {
    /// The storage did not give its content (its references are unknown).
    Unread(String),
    /// Too large, or not a manifest the registry could have stored.
    Unusable(String),
}

async fn read_manifest(
    storage: &Arc<dyn Storage>,
    universe: &BlobUniverse,
    index: u32,
) -> Result<ManifestRefs, ManifestFailure> {
    let size = universe.size(index);
    if size > MAX_MANIFEST_BYTES {
        return Err(ManifestFailure::Unusable(format!(
            "{size} bytes is larger than the {MAX_MANIFEST_BYTES} bytes a manifest may have"
        )));
    }
    let key = layout::blob_data(universe.digest(index));
    let content = storage
        .get(&key)
        .await
        .map_err(|e| ManifestFailure::Unread(e.to_string()))?;
    parse_manifest(&content).map_err(|e| ManifestFailure::Unusable(format!("{key}: {e}")))
}

/// Computes what is live. Pure: all I/O happened in the scan and in [`load_manifests`].
pub fn mark(
    inventory: &Inventory,
    catalog: &ManifestCatalog,
    options: MarkOptions,
) -> Result<MarkSet, Vec<MarkError>> {
    let mut set = MarkSet::default();
    let mut errors = Vec::new();
    for repo in &inventory.repositories {
        let marks = mark_repository(
            repo,
            &inventory.blobs,
            catalog,
            options,
            &mut errors,
            &mut set.warnings,
        );
        set.blobs |= &marks.manifests;
        set.blobs |= &marks.layers;
        for signature in &repo.signatures {
            let revision_live = inventory
                .blobs
                .index(&signature.revision)
                .is_some_and(|i| marks.manifests.contains(i));
            if revision_live && let Some(i) = inventory.blobs.index(&signature.signature) {
                set.blobs.insert(i);
            }
        }
        set.repositories.push(marks);
    }
    if errors.is_empty() {
        Ok(set)
    } else {
        Err(errors)
    }
}

fn mark_repository(
    repo: &Repository,
    universe: &BlobUniverse,
    catalog: &ManifestCatalog,
    options: MarkOptions,
    errors: &mut Vec<MarkError>,
    warnings: &mut Vec<String>,
) -> RepositoryMarks {
    let young = |modified: SystemTime| modified > options.cutoff;
    let mut marks = RepositoryMarks::default();

    // Referrers of each manifest of this repository, by subject.
    let mut referrers: HashMap<u32, Vec<Digest>> = HashMap::new();
    for revision in &repo.revisions {
        let Some(index) = universe.index(&revision.digest) else {
            continue;
        };
        if let Some(Ok(refs)) = catalog.get(&index)
            && let Some(subject) = refs.subject.as_ref().and_then(|s| universe.index(s))
        {
            referrers.entry(subject).or_default().push(revision.digest);
        }
    }

    let mut pending: Vec<Digest> = Vec::new();
    for tag in &repo.tags {
        if let Some(current) = &tag.current {
            match &current.target {
                Ok(digest) => pending.push(*digest),
                Err(error) => errors.push(MarkError::CorruptTagLink {
                    repository: repo.name.clone(),
                    tag: tag.name.clone(),
                    error: error.clone(),
                }),
            }
        }
        // A young index entry may be a tag being written (index first, then current).
        pending.extend(
            tag.index
                .iter()
                .filter(|l| young(l.modified))
                .map(|l| l.digest),
        );
    }
    pending.extend(
        repo.revisions
            .iter()
            .filter(|r| !options.delete_untagged || young(r.modified))
            .map(|r| r.digest),
    );
    // A young layer link is an upload whose manifest may not be pushed yet.
    for link in repo.layer_links.iter().filter(|l| young(l.modified)) {
        if let Some(index) = universe.index(&link.digest) {
            marks.layers.insert(index);
        }
    }

    while let Some(digest) = pending.pop() {
        // Not in storage: a tag or index pointing at a missing manifest. Nothing to keep; the plan
        // removes the broken tag, and an index with a missing child is already broken.
        let Some(index) = universe.index(&digest) else {
            continue;
        };
        if !marks.manifests.insert(index) {
            continue;
        }
        match catalog.get(&index) {
            Some(Ok(refs)) => {
                pending.extend(&refs.manifests);
                for blob in &refs.blobs {
                    if let Some(b) = universe.index(blob) {
                        marks.layers.insert(b);
                    }
                }
                if let Some(found) = referrers.get(&index) {
                    pending.extend(found);
                }
            }
            Some(Err(reason)) => errors.push(MarkError::UnreadableManifest {
                repository: repo.name.clone(),
                digest,
                reason: reason.clone(),
            }),
            None => errors.push(MarkError::UnreadableManifest {
                repository: repo.name.clone(),
                digest,
                reason: "it was not loaded".to_owned(),
            }),
        }
    }

    // An untagged manifest we cannot parse may be a referrer of a live one: keep it (fail closed).
    // One we could not read at all may reference anything: that stops the run.
    for revision in &repo.revisions {
        if let Some(index) = universe.index(&revision.digest)
            && !marks.manifests.contains(index)
            && let Some(Err(reason)) = catalog.get(&index)
        {
            if catalog.unread.contains(&index) {
                errors.push(MarkError::UnreadableManifest {
                    repository: repo.name.clone(),
                    digest: revision.digest,
                    reason: reason.clone(),
                });
                continue;
            }
            marks.manifests.insert(index);
            warnings.push(format!(
                "repository {}: keeping unreadable manifest {}: {reason}",
                repo.name, revision.digest
            ));
        }
    }
    marks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::Link;

    /// One repository with one untagged revision whose manifest could not be used.
    fn untagged_unusable(unread: bool) -> Result<MarkSet, Vec<MarkError>> {
        let digest = Digest::from_bytes([7; 32]);
        let inventory = Inventory {
            blobs: BlobUniverse::new(vec![(digest, 10, SystemTime::UNIX_EPOCH)]),
            repositories: vec![Repository {
                name: "app".to_owned(),
                revisions: vec![Link {
                    digest,
                    modified: SystemTime::UNIX_EPOCH,
                }],
                ..Repository::default()
            }],
            ..Inventory::default()
        };
        let mut catalog: ManifestCatalog = [(0, Err("why".to_owned()))].into_iter().collect();
        if unread {
            catalog.unread.insert(0);
        }
        let options = MarkOptions {
            delete_untagged: true,
            cutoff: SystemTime::UNIX_EPOCH,
        };
        mark(&inventory, &catalog, options)
    }

    #[test]
    fn an_untagged_manifest_that_is_no_manifest_is_kept_with_a_warning() {
        let set = untagged_unusable(false).unwrap();
        assert!(set.repositories[0].manifests.contains(0));
        assert!(set.warnings[0].contains("app"), "{:?}", set.warnings);
    }

    #[test]
    fn an_untagged_manifest_that_cannot_be_read_stops_the_run() {
        let errors = untagged_unusable(true).unwrap_err();
        assert_eq!(
            errors,
            [MarkError::UnreadableManifest {
                repository: "app".to_owned(),
                digest: Digest::from_bytes([7; 32]),
                reason: "why".to_owned(),
            }]
        );
    }
}
