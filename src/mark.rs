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
use crate::manifest::{ManifestKind, ManifestRefs, parse_manifest};
use crate::scan::{BlobUniverse, Inventory, Repository};
use crate::select::Released;
use crate::storage::Storage;

/// Larger documents are not treated as manifests (the registry itself refuses far smaller ones).
pub const MAX_MANIFEST_BYTES: u64 = 16 << 20;

/// A manifest's references as blob indices, packed in one allocation —
/// `[child count | incomplete flag, subject, children…, blobs…]` — because a large registry holds
/// millions of manifests and the catalog holds them all at once. References to blobs that are not in
/// storage are left out: the mark has nothing to keep for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refs {
    pub kind: ManifestKind,
    packed: Box<[u32]>,
}

const NO_SUBJECT: u32 = u32::MAX;
const INCOMPLETE: u32 = 1 << 31;

impl Refs {
    pub fn new(refs: &ManifestRefs, universe: &BlobUniverse) -> Refs {
        let mut complete = true;
        let mut index = |digest: &Digest| {
            let found = universe.index(digest);
            complete &= found.is_some();
            found
        };
        let children: Vec<u32> = refs.manifests.iter().filter_map(&mut index).collect();
        let blobs: Vec<u32> = refs.blobs.iter().filter_map(&mut index).collect();
        let subject = refs.subject.as_ref().map_or(Some(NO_SUBJECT), &mut index);
        let count = u32::try_from(children.len()).expect("fewer than 2^31 children") & !INCOMPLETE;
        let mut packed = Vec::with_capacity(2 + children.len() + blobs.len());
        packed.push(if complete { count } else { count | INCOMPLETE });
        packed.push(subject.unwrap_or(NO_SUBJECT));
        packed.extend(children);
        packed.extend(blobs);
        Refs {
            kind: refs.kind,
            packed: packed.into_boxed_slice(),
        }
    }

    fn children_end(&self) -> usize {
        2 + (self.packed[0] & !INCOMPLETE) as usize
    }

    /// Child manifests in storage (of an index or manifest list).
    pub fn manifests(&self) -> &[u32] {
        &self.packed[2..self.children_end()]
    }

    /// Config and layer blobs in storage.
    pub fn blobs(&self) -> &[u32] {
        &self.packed[self.children_end()..]
    }

    /// The manifest this one refers to, when it is in storage.
    pub fn subject(&self) -> Option<u32> {
        Some(self.packed[1]).filter(|&s| s != NO_SUBJECT)
    }

    /// Whether every reference named a blob in storage.
    pub fn is_complete(&self) -> bool {
        self.packed[0] & INCOMPLETE == 0
    }
}

/// Every manifest the mark may follow, by blob index: its references, or why it could not be used.
#[derive(Debug, Default)]
pub struct ManifestCatalog {
    manifests: HashMap<u32, Result<Refs, String>>,
    /// The whole references of the manifests whose [`Refs`] are incomplete (broken images, or
    /// blobs pushed during the run): the re-mark must follow those too.
    incomplete: HashMap<u32, ManifestRefs>,
    /// Those whose content could not be read at all (a storage error): unlike a document that was
    /// read and is no manifest, such a manifest may reference anything, so it can only be used
    /// when nothing needs it.
    unread: HashSet<u32>,
}

impl ManifestCatalog {
    /// A catalog of manifests that were all read (parsed or not).
    pub fn of_parsed(
        universe: &BlobUniverse,
        manifests: impl IntoIterator<Item = (u32, Result<ManifestRefs, String>)>,
    ) -> ManifestCatalog {
        let mut catalog = ManifestCatalog::default();
        for (index, refs) in manifests {
            catalog.insert(index, refs.map_err(ManifestFailure::Unusable), universe);
        }
        catalog
    }

    fn insert(
        &mut self,
        index: u32,
        refs: Result<ManifestRefs, ManifestFailure>,
        universe: &BlobUniverse,
    ) {
        let refs = match refs {
            Ok(full) => {
                let refs = Refs::new(&full, universe);
                if !refs.is_complete() {
                    self.incomplete.insert(index, full);
                }
                Ok(refs)
            }
            Err(ManifestFailure::Unread(reason)) => {
                self.unread.insert(index);
                Err(reason)
            }
            Err(ManifestFailure::Unusable(reason)) => Err(reason),
        };
        self.manifests.insert(index, refs);
    }

    /// The subject (OCI referrers) a manifest names, in storage or not; `None` when it names none
    /// or could not be used.
    pub fn subject(&self, index: u32, universe: &BlobUniverse) -> Option<Digest> {
        match self.manifests.get(&index)? {
            Ok(refs) if refs.is_complete() => refs.subject().map(|s| *universe.digest(s)),
            Ok(_) => self.incomplete.get(&index)?.subject,
            Err(_) => None,
        }
    }

    /// A manifest's whole references, digests of blobs not in storage included.
    pub fn full(
        &self,
        index: u32,
        universe: &BlobUniverse,
    ) -> Option<Result<ManifestRefs, String>> {
        let refs = match self.manifests.get(&index)? {
            Ok(refs) => refs,
            Err(reason) => return Some(Err(reason.clone())),
        };
        if let Some(full) = self.incomplete.get(&index) {
            return Some(Ok(full.clone()));
        }
        let digests = |indices: &[u32]| indices.iter().map(|&i| *universe.digest(i)).collect();
        Some(Ok(ManifestRefs {
            kind: refs.kind,
            manifests: digests(refs.manifests()),
            blobs: digests(refs.blobs()),
            subject: refs.subject().map(|i| *universe.digest(i)),
        }))
    }

    /// The whole references of manifest `index`, when some of them are not in storage.
    pub fn incomplete_of(&self, index: u32) -> Option<&ManifestRefs> {
        self.incomplete.get(&index)
    }

    /// The whole references of the manifests that reference blobs not in storage.
    pub fn incomplete(&self) -> impl Iterator<Item = (u32, &ManifestRefs)> {
        self.incomplete.iter().map(|(&index, refs)| (index, refs))
    }

    pub fn len(&self) -> usize {
        self.manifests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.manifests.is_empty()
    }

    pub fn get(&self, index: &u32) -> Option<&Result<Refs, String>> {
        self.manifests.get(index)
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
    pub manifests: IndexSet,
    /// Blobs that live manifests of this repository reference: their `_layers` links stay.
    pub layers: IndexSet,
}

/// A sorted set of blob indices. A repository's marks are a few dozen indices spread over the
/// whole universe, where a bitmap costs far more than these 4 bytes an index; a registry has
/// hundreds of thousands of repositories.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct IndexSet(Box<[u32]>);

impl IndexSet {
    pub fn contains(&self, index: u32) -> bool {
        self.0.binary_search(&index).is_ok()
    }

    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().copied()
    }
}

impl From<RoaringBitmap> for IndexSet {
    fn from(bitmap: RoaringBitmap) -> IndexSet {
        IndexSet(bitmap.into_iter().collect())
    }
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
        // Each manifest is packed as it arrives: only the reads in flight are held whole.
        let batch = std::mem::take(&mut wanted);
        let mut loaded =
            stream::iter(batch.into_iter().map(|index| async move {
                (index, read_manifest(storage, universe, index).await)
            }))
            .buffer_unordered(concurrency.max(1));
        while let Some((index, refs)) = loaded.next().await {
            catalog.insert(index, refs, universe);
            if let Some(Ok(refs)) = catalog.manifests.get(&index) {
                wanted.extend(refs.manifests());
            }
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
    mark_released(inventory, catalog, options, &Released::default())
}

/// [`mark`], where the revisions `released` names are no roots even without `delete_untagged`
/// (`delete` and `prune`): they stay only if something live reaches them, or while they are young.
pub fn mark_released(
    inventory: &Inventory,
    catalog: &ManifestCatalog,
    options: MarkOptions,
    released: &Released,
) -> Result<MarkSet, Vec<MarkError>> {
    let mut set = MarkSet::default();
    let mut errors = Vec::new();
    for repo in &inventory.repositories {
        let marks = mark_repository(
            repo,
            &inventory.blobs,
            catalog,
            options,
            released.revisions.get(&repo.name),
            &mut errors,
            &mut set.warnings,
        );
        set.blobs.extend(marks.manifests.iter());
        set.blobs.extend(marks.layers.iter());
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
    released: Option<&HashSet<Digest>>,
    errors: &mut Vec<MarkError>,
    warnings: &mut Vec<String>,
) -> RepositoryMarks {
    let young = |modified: SystemTime| modified > options.cutoff;
    let mut marks = Marking::default();

    // Referrers of each manifest of this repository, by subject.
    let mut referrers: HashMap<u32, Vec<u32>> = HashMap::new();
    for revision in &repo.revisions {
        let Some(index) = universe.index(&revision.digest) else {
            continue;
        };
        if let Some(Ok(refs)) = catalog.get(&index)
            && let Some(subject) = refs.subject()
        {
            referrers.entry(subject).or_default().push(index);
        }
    }

    // Manifests not in storage are left out: nothing to keep for a tag or index pointing at a
    // missing manifest (the plan removes the broken tag; an index with a missing child is
    // already broken).
    let mut pending: Vec<u32> = Vec::new();
    let push = |pending: &mut Vec<u32>, digest: &Digest| pending.extend(universe.index(digest));
    for tag in &repo.tags {
        if let Some(current) = &tag.current {
            match &current.target {
                Ok(digest) => push(&mut pending, digest),
                Err(error) => errors.push(MarkError::CorruptTagLink {
                    repository: repo.name.clone(),
                    tag: tag.name.clone(),
                    error: error.clone(),
                }),
            }
        }
        // A young index entry may be a tag being written (index first, then current).
        for entry in tag.index.iter().filter(|l| young(l.modified())) {
            push(&mut pending, &entry.digest);
        }
    }
    let is_released = |digest: &Digest| released.is_some_and(|r| r.contains(digest));
    for revision in &repo.revisions {
        let root = !options.delete_untagged && !is_released(&revision.digest);
        if root || young(revision.modified()) {
            push(&mut pending, &revision.digest);
        }
    }
    // A young layer link is an upload whose manifest may not be pushed yet.
    for (link, blob) in repo.layer_links.iter(universe) {
        if let Some(index) = blob.filter(|_| young(link.modified())) {
            marks.layers.insert(index);
        }
    }

    while let Some(index) = pending.pop() {
        if !marks.manifests.insert(index) {
            continue;
        }
        match catalog.get(&index) {
            Some(Ok(refs)) => {
                pending.extend(refs.manifests());
                marks.layers.extend(refs.blobs().iter().copied());
                if let Some(found) = referrers.get(&index) {
                    pending.extend(found);
                }
            }
            Some(Err(reason)) => errors.push(MarkError::UnreadableManifest {
                repository: repo.name.clone(),
                digest: *universe.digest(index),
                reason: reason.clone(),
            }),
            None => errors.push(MarkError::UnreadableManifest {
                repository: repo.name.clone(),
                digest: *universe.digest(index),
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
    RepositoryMarks {
        manifests: marks.manifests.into(),
        layers: marks.layers.into(),
    }
}

/// A repository's marks while they are being found.
#[derive(Default)]
struct Marking {
    manifests: RoaringBitmap,
    layers: RoaringBitmap,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::ManifestKind;
    use crate::scan::Link;

    #[test]
    fn refs_keep_the_references_in_storage_and_say_when_some_were_not() {
        let d = |n: u8| Digest::from_bytes([n; 32]);
        let universe = BlobUniverse::new(
            [1, 2, 3, 4]
                .map(|n| (d(n), 1, SystemTime::UNIX_EPOCH))
                .to_vec(),
        );
        let full = ManifestRefs {
            kind: ManifestKind::OciImageIndex,
            manifests: vec![d(2), d(9)],
            blobs: vec![d(3), d(4)],
            subject: Some(d(1)),
        };
        let refs = Refs::new(&full, &universe);
        assert_eq!(refs.manifests(), [1]);
        assert_eq!(refs.blobs(), [2, 3]);
        assert_eq!(refs.subject(), Some(0));
        assert!(!refs.is_complete(), "d(9) is not in storage");

        let whole = ManifestRefs {
            manifests: vec![],
            subject: None,
            ..full.clone()
        };
        let refs = Refs::new(&whole, &universe);
        assert!(refs.is_complete());
        assert_eq!(
            (refs.manifests(), refs.blobs(), refs.subject()),
            (&[][..], &[2, 3][..], None)
        );

        // The catalog gives the re-mark the whole references of an incomplete manifest.
        let catalog =
            ManifestCatalog::of_parsed(&universe, [(1, Ok(full.clone())), (0, Ok(whole))]);
        assert_eq!(catalog.full(1, &universe), Some(Ok(full)));
        assert_eq!(
            catalog.full(0, &universe).unwrap().unwrap().blobs,
            [d(3), d(4)]
        );
        assert_eq!(catalog.full(2, &universe), None);
        assert_eq!(catalog.subject(1, &universe), Some(d(1)));
        assert_eq!(catalog.subject(0, &universe), None);
    }

    #[test]
    fn index_sets_answer_membership() {
        let bitmap: RoaringBitmap = [7, 3, 1 << 20].into_iter().collect();
        let set = IndexSet::from(bitmap);
        assert!(set.contains(3) && set.contains(7) && set.contains(1 << 20));
        assert!(!set.contains(4));
        assert_eq!(set.iter().collect::<Vec<_>>(), [3, 7, 1 << 20]);
    }

    /// One repository with one untagged revision whose manifest could not be used.
    fn untagged_unusable(unread: bool) -> Result<MarkSet, Vec<MarkError>> {
        let digest = Digest::from_bytes([7; 32]);
        let inventory = Inventory {
            blobs: BlobUniverse::new(vec![(digest, 10, SystemTime::UNIX_EPOCH)]),
            repositories: vec![Repository {
                name: "app".to_owned(),
                revisions: vec![Link::new(digest, SystemTime::UNIX_EPOCH)],
                ..Repository::default()
            }],
            ..Inventory::default()
        };
        let mut catalog =
            ManifestCatalog::of_parsed(&inventory.blobs, [(0, Err("why".to_owned()))]);
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
