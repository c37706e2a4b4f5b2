//! Re-mark: what the registry wrote while the collection ran, looked at again just before the sweep.
//!
//! The registry may keep serving pushes between the scan and the sweep. A push can make live a blob
//! the plan deletes: a layer that was already in storage, unreferenced and older than the grace
//! period — the registry does not rewrite a blob it already has, so its age stays old — is linked
//! into a repository and referenced by a new manifest. So, just before the sweep, the repositories
//! are listed again; every link that is new (or young), every tag whose `current/link` changed, and
//! the closure of the manifests they name become a [`Reprieve`], and the plan spares them
//! ([`crate::plan::SweepPlan::spare`]). A repository written to since the scan keeps its tags,
//! uploads and its very existence.
//!
//! Only what changed is read: tag links listed with the same modification time as in the scan keep
//! the target the scan read, and manifests already in the catalog are not read again.
//!
//! What remains is the time between this second listing and the deletion of a blob: a push that
//! links an already-stored blob in that window can lose it. README ("Collecting while the registry
//! serves pushes") says how large it is and how to close it (`--pre-command`/`--post-command`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use futures::{StreamExt, TryStreamExt, stream};
use roaring::RoaringBitmap;

use thiserror::Error;

use crate::digest::{Digest, DigestError};
use crate::layout;
use crate::manifest::{ManifestRefs, parse_manifest};
use crate::mark::{MAX_MANIFEST_BYTES, ManifestCatalog, MarkOptions, MarkSet};
use crate::plan::Reprieve;
use crate::scan::{self, BlobUniverse, Inventory, Listed, Repository, ScanError};
use crate::select::Released;
use crate::state::{Baseline, Known};
use crate::storage::{Storage, StorageError};

/// Why the re-mark could not vouch for the plan: nothing is deleted.
#[derive(Debug, Error)]
pub enum RemarkError {
    #[error("listing the repositories again: {0}")]
    Scan(#[from] ScanError),
    #[error("reading tag links again: {0}")]
    Storage(#[from] StorageError),
    #[error(
        "repository {repository}: tag {tag}: corrupt current/link written during the run: {error}"
    )]
    CorruptTagLink {
        repository: String,
        tag: String,
        error: DigestError,
    },
    #[error(
        "repository {repository}: manifest {digest}, live since the scan, cannot be used: {reason}"
    )]
    UnreadableManifest {
        repository: String,
        digest: Digest,
        reason: String,
    },
}

/// Lists the repositories again and returns what must not be deleted any more.
pub async fn remark(
    storage: &Arc<dyn Storage>,
    inventory: &Inventory,
    marks: &MarkSet,
    catalog: &ManifestCatalog,
    options: MarkOptions,
    concurrency: usize,
) -> Result<Reprieve, RemarkError> {
    let released = Released::default();
    remark_released(
        storage,
        inventory,
        marks,
        catalog,
        options,
        concurrency,
        &released,
    )
    .await
}

/// [`remark`] after a selection (`delete`, `prune`; `inventory` as scanned, `marks` from
/// [`crate::mark::mark_released`]): a removed tag or a released revision that is unchanged since
/// the scan is no root; one written again since (a tag re-pushed) is, and makes its repository busy.
pub async fn remark_released(
    storage: &Arc<dyn Storage>,
    inventory: &Inventory,
    marks: &MarkSet,
    catalog: &ManifestCatalog,
    options: MarkOptions,
    concurrency: usize,
    released: &Released,
) -> Result<Reprieve, RemarkError> {
    let (mut repositories, oversize) =
        scan::list_repositories(storage, concurrency, &|name, listed| {
            !no_news(inventory, marks, name, listed)
        })
        .await?;
    read_changed_tag_links(
        storage,
        inventory,
        &mut repositories,
        &oversize,
        concurrency,
    )
    .await?;

    let mut reprieve = Reprieve::default();
    let mut roots_of = Vec::with_capacity(repositories.len());
    for repo in &repositories {
        let before = inventory.repository_index(&repo.name);
        let roots = roots(
            repo,
            before.map(|r| &inventory.repositories[r]),
            &inventory.blobs,
            options,
            released,
            &mut reprieve,
        )?;
        roots_of.push((before, roots));
    }
    // The manifests no scan read (pushed since) are read at once, `concurrency` at a time, rather
    // than one after another by each repository's closure: until the sweep starts, a push can
    // still race it.
    let mut read_since = HashMap::new();
    let unread = roots_of.iter().flat_map(|(_, roots)| roots.iter().copied());
    let known = |i: u32| catalog.get(&i).is_some();
    prefetch(
        storage,
        inventory,
        &known,
        unread,
        &mut read_since,
        concurrency,
    )
    .await;
    for (repo, (before, roots)) in repositories.iter().zip(roots_of) {
        let mut closure = Closure {
            storage,
            inventory,
            catalog,
            live: &|i| before.is_some_and(|r| marks.repositories[r].manifests.contains(i)),
            repository: &repo.name,
            read_since: &mut read_since,
            reprieve: &mut reprieve,
        };
        closure
            .mark(roots, referrers(repo, inventory, catalog))
            .await?;
    }
    Ok(reprieve)
}

/// Whether a link listed again in repository `name` is one the scan listed the same (the same
/// digest and time) and that changes nothing: any layer link or tag index entry listed the same
/// (only new ones make anything live or busy, see [`roots`]), or a revision or tag listed the same
/// whose manifest was live in the repository at the mark ([`Closure`] stops at a live manifest).
/// The re-mark does not hold these a second time: they are nearly all of a registry's links.
fn no_news(inventory: &Inventory, marks: &MarkSet, name: &str, listed: Listed<'_>) -> bool {
    let Some(r) = inventory.repository_index(name) else {
        return false;
    };
    let before = &inventory.repositories[r];
    let live = |digest: &Digest| {
        inventory
            .blobs
            .index(digest)
            .is_some_and(|i| marks.repositories[r].manifests.contains(i))
    };
    match listed {
        Listed::LayerLink(link) => before.layer_links.lists(link, &inventory.blobs),
        Listed::TagIndexEntry { tag, entry } => {
            before.tag(tag).is_some_and(|t| t.lists_index_entry(entry))
        }
        Listed::Revision(link) => before.lists_revision(link) && live(&link.digest),
        Listed::TagCurrent { tag, modified } => before
            .tag(tag)
            .and_then(|t| t.current.as_ref())
            .filter(|c| c.modified == modified)
            .is_some_and(|c| c.target.as_ref().is_ok_and(live)),
    }
}

/// For a sweep from a mark state ([`crate::state`]): the indices of the repositories of `repos`
/// that were written since the mark ([`Known`]) — new, changed, or naming something the mark did
/// not list that is stored now (a repaired broken tag, a layer committed during the mark, a child
/// put back; looked up with one HEAD each).
pub async fn busy_since_mark(
    storage: &Arc<dyn Storage>,
    baseline: &Baseline,
    repos: &[Repository],
    concurrency: usize,
) -> Result<Vec<usize>, StorageError> {
    let mut busy = Vec::new();
    let mut lookups = Vec::new();
    for (r, repo) in repos.iter().enumerate() {
        match baseline.known(repo) {
            Known::New | Known::Changed => busy.push(r),
            Known::Unchanged { unlisted } => lookups.extend(unlisted.iter().map(|d| (r, *d))),
        }
    }
    let mut found = stream::iter(lookups.into_iter().map(|(r, digest)| async move {
        let stored = storage.head(&layout::blob_data(&digest)).await?;
        Ok::<_, StorageError>((r, stored.is_some()))
    }))
    .buffer_unordered(concurrency.max(1));
    while let Some((r, stored)) = found.try_next().await? {
        if stored {
            busy.push(r);
        }
    }
    busy.sort_unstable();
    busy.dedup();
    Ok(busy)
}

/// For a sweep from a mark state: whatever the repositories `busy` (written since the mark; their
/// tag links read) reach, wherever it is stored, becomes a [`Reprieve`], and the repositories
/// themselves are named in it (the sweep leaves them as they are; the next run collects them).
/// Every revision, tag, tag index entry and young layer link of theirs is a root, whatever the
/// options: referrers are revisions too, so they are reached. Manifests live in any repository at
/// the mark (`live_manifests`, by index in `inventory`'s universe) are not read: what they
/// reference is live. Manifests read are kept in `read_since` for the next call.
pub async fn since_mark(
    storage: &Arc<dyn Storage>,
    inventory: &Inventory,
    live_manifests: &RoaringBitmap,
    busy: &[&Repository],
    cutoff: SystemTime,
    read_since: &mut HashMap<Digest, Option<ManifestRefs>>,
    concurrency: usize,
) -> Result<Reprieve, RemarkError> {
    let catalog = ManifestCatalog::default();
    let mut reprieve = Reprieve::default();
    let live = |i: u32| live_manifests.contains(i);
    // The roots (every revision of a busy repository: with -m, all its untagged manifests) are
    // read at once; the closure then walks from the cache.
    let roots = busy.iter().flat_map(|repo| {
        let revisions = repo.revisions.iter().map(|l| l.digest);
        let tags = repo.tags.iter().flat_map(|t| {
            let current = t.current.as_ref().and_then(|c| c.target.as_ref().ok());
            current
                .copied()
                .into_iter()
                .chain(t.index.iter().map(|l| l.digest))
        });
        revisions.chain(tags)
    });
    prefetch(storage, inventory, &live, roots, read_since, concurrency).await;
    for repo in busy {
        reprieve.repositories.insert(repo.name.clone());
        // A young layer link is an upload (or a mount) whose manifest may come next.
        let links = repo.layer_links.iter(&inventory.blobs);
        for (link, _) in links.filter(|(l, _)| l.modified() > cutoff) {
            reprieve.blobs.insert(link.digest);
            reprieve.links.insert((repo.name.clone(), link.digest));
        }
        reprieve
            .blobs
            .extend(repo.signatures.iter().map(|s| s.signature));
        let mut roots: Vec<Digest> = repo.revisions.iter().map(|l| l.digest).collect();
        for tag in &repo.tags {
            if let Some(current) = &tag.current {
                match &current.target {
                    Ok(digest) => roots.push(*digest),
                    Err(error) => {
                        return Err(RemarkError::CorruptTagLink {
                            repository: repo.name.clone(),
                            tag: tag.name.clone(),
                            error: error.clone(),
                        });
                    }
                }
            }
            roots.extend(tag.index.iter().map(|l| l.digest));
        }
        let mut closure = Closure {
            storage,
            inventory,
            catalog: &catalog,
            live: &live,
            repository: &repo.name,
            read_since,
            reprieve: &mut reprieve,
        };
        closure.mark(roots, HashMap::new()).await?;
    }
    Ok(reprieve)
}

/// Reads the manifests among `digests` that are neither `known` (by index in the universe: live,
/// or in the catalog) nor read yet into `read_since`, `concurrency` at a time, as [`Closure`]
/// would one after another. What cannot be read or used is left out: the closure reads it again,
/// and says why it cannot go on.
async fn prefetch(
    storage: &Arc<dyn Storage>,
    inventory: &Inventory,
    known: &dyn Fn(u32) -> bool,
    digests: impl Iterator<Item = Digest>,
    read_since: &mut HashMap<Digest, Option<ManifestRefs>>,
    concurrency: usize,
) {
    // Nor what was listed larger than a manifest can be: the closure refuses it unread.
    let skip = |i: u32| known(i) || inventory.blobs.size(i) > MAX_MANIFEST_BYTES;
    let mut wanted: Vec<Digest> = digests
        .filter(|d| !inventory.blobs.index(d).is_some_and(skip) && !read_since.contains_key(d))
        .collect();
    wanted.sort_unstable();
    wanted.dedup();
    let mut reads = stream::iter(wanted.into_iter().map(|digest| async move {
        let read = match storage.get(&layout::blob_data(&digest)).await {
            Ok(content) if content.len() as u64 <= MAX_MANIFEST_BYTES => {
                parse_manifest(&content).ok().map(Some)
            }
            Err(StorageError::NotFound { .. }) => Some(None),
            _ => None,
        };
        (digest, read)
    }))
    .buffer_unordered(concurrency.max(1));
    while let Some((digest, read)) = reads.next().await {
        if let Some(read) = read {
            read_since.insert(digest, read);
        }
    }
}

/// Copies the targets the scan read for tag links listed unchanged; reads the others.
async fn read_changed_tag_links(
    storage: &Arc<dyn Storage>,
    inventory: &Inventory,
    repositories: &mut [Repository],
    oversize: &HashSet<String>,
    concurrency: usize,
) -> Result<(), StorageError> {
    let mut changed: Vec<Repository> = Vec::new();
    for repo in repositories.iter_mut() {
        let before = inventory.repository(&repo.name);
        let mut unread = Vec::new();
        for tag in &mut repo.tags {
            let Some(current) = tag.current.as_mut() else {
                continue;
            };
            let scanned = before
                .and_then(|b| b.tag(&tag.name))
                .and_then(|t| t.current.as_ref())
                .filter(|c| c.modified == current.modified);
            match scanned {
                Some(scanned) => current.target = scanned.target.clone(),
                None => unread.push(tag.clone()),
            }
        }
        if !unread.is_empty() {
            changed.push(Repository {
                name: repo.name.clone(),
                tags: unread,
                ..Repository::default()
            });
        }
    }
    scan::read_tag_links(storage, &mut changed, &|_| true, oversize, concurrency).await?;
    // Both sorted by name, as listed.
    for read in changed {
        let r = scan::named(repositories, &read.name, |r| &r.name).expect("read from this list");
        let repo = &mut repositories[r];
        for tag in read.tags {
            let t =
                scan::named(&repo.tags, &tag.name, |t| &t.name).expect("read from this repository");
            repo.tags[t].current = tag.current;
        }
    }
    Ok(())
}

/// The manifests a repository's current state makes live, and the links and blobs it keeps without
/// any manifest (new layer links: uploads whose manifest is not pushed yet). Marks the repository
/// busy when anything in it is new. `repo` is listed without the links that bring no news
/// ([`no_news`]): they would add nothing here.
fn roots(
    repo: &Repository,
    before: Option<&Repository>,
    universe: &BlobUniverse,
    options: MarkOptions,
    released: &Released,
    reprieve: &mut Reprieve,
) -> Result<Vec<Digest>, RemarkError> {
    let mut busy = before.is_none();
    let mut roots = Vec::new();
    // What removed tags point at: roots after all if the repository turns out busy, since the
    // plan then spares the tags themselves.
    let mut removed_targets = Vec::new();

    // New: not listed by the scan with the same modification time. (What the scan saw young was a
    // root of the mark already, and the plan never deletes young objects.)
    for (link, _) in repo.layer_links.iter(universe) {
        if before.is_none_or(|b| !b.layer_links.lists(&link, universe)) {
            busy = true;
            reprieve.blobs.insert(link.digest);
            reprieve.links.insert((repo.name.clone(), link.digest));
        }
    }
    for link in &repo.revisions {
        let is_new = before.is_none_or(|b| !b.lists_revision(link));
        busy |= is_new;
        let root = !options.delete_untagged && !released.revision(&repo.name, &link.digest);
        if is_new || root {
            roots.push(link.digest);
        }
    }
    for tag in &repo.tags {
        let scanned = before.and_then(|b| b.tag(&tag.name));
        if let Some(current) = &tag.current {
            let changed = scanned
                .and_then(|t| t.current.as_ref())
                .is_none_or(|c| c.modified != current.modified);
            busy |= changed;
            match &current.target {
                Ok(digest) if !changed && released.tag(&repo.name, &tag.name) => {
                    removed_targets.push(*digest)
                }
                Ok(digest) => roots.push(*digest),
                Err(error) => {
                    return Err(RemarkError::CorruptTagLink {
                        repository: repo.name.clone(),
                        tag: tag.name.clone(),
                        error: error.clone(),
                    });
                }
            }
        }
        for entry in &tag.index {
            let listed = scanned.is_some_and(|t| t.lists_index_entry(entry));
            if !listed {
                busy = true;
                roots.push(entry.digest);
            }
        }
    }
    let signatures_new = repo
        .signatures
        .iter()
        .any(|s| before.is_none_or(|b| !b.lists_signature(s)));
    let uploads_new = repo.uploads.iter().any(|upload| {
        let scanned = before.and_then(|b| b.upload(&upload.id));
        scanned.is_none_or(|u| u.files != upload.files)
    });
    let unknown_new = repo
        .unknown
        .iter()
        .any(|o| before.is_none_or(|b| !b.lists_unknown(o)));
    if busy || signatures_new || uploads_new || unknown_new {
        reprieve.repositories.insert(repo.name.clone());
        roots.extend(removed_targets);
    }
    Ok(roots)
}

/// Referrers (OCI `subject`) among a repository's revisions, by subject, as far as the catalog
/// knows them; revisions new since the scan are roots anyway. The revisions listed again without
/// news ([`no_news`]) are not among them: they are live, and the closure would stop at them.
fn referrers(
    repo: &Repository,
    inventory: &Inventory,
    catalog: &ManifestCatalog,
) -> HashMap<Digest, Vec<Digest>> {
    let universe = &inventory.blobs;
    let mut found: HashMap<Digest, Vec<Digest>> = HashMap::new();
    for revision in &repo.revisions {
        let Some(index) = universe.index(&revision.digest) else {
            continue;
        };
        if let Some(subject) = catalog.subject(index, universe) {
            found.entry(subject).or_default().push(revision.digest);
        }
    }
    found
}

/// The closure of new roots in one repository.
struct Closure<'a> {
    storage: &'a Arc<dyn Storage>,
    inventory: &'a Inventory,
    catalog: &'a ManifestCatalog,
    /// Manifests whose closure is already kept, by blob index (not read again).
    live: &'a dyn Fn(u32) -> bool,
    repository: &'a str,
    /// Manifests read during the re-mark, by digest (shared between repositories).
    read_since: &'a mut HashMap<Digest, Option<ManifestRefs>>,
    reprieve: &'a mut Reprieve,
}

impl Closure<'_> {
    async fn mark(
        &mut self,
        mut pending: Vec<Digest>,
        referrers: HashMap<Digest, Vec<Digest>>,
    ) -> Result<(), RemarkError> {
        let mut visited = HashSet::new();
        while let Some(digest) = pending.pop() {
            if !visited.insert(digest) {
                continue;
            }
            let index = self.inventory.blobs.index(&digest);
            if index.is_some_and(self.live) {
                continue;
            }
            let Some(refs) = self.refs(digest, index).await? else {
                continue; // not in storage: nothing to keep
            };
            self.keep(digest);
            for blob in &refs.blobs {
                self.keep(*blob);
            }
            pending.extend(&refs.manifests);
            pending.extend(referrers.get(&digest).into_iter().flatten());
        }
        Ok(())
    }

    fn keep(&mut self, digest: Digest) {
        self.reprieve.blobs.insert(digest);
        self.reprieve
            .links
            .insert((self.repository.to_owned(), digest));
    }

    /// A manifest's references: from the catalog, or read now; `None` when it is not in storage.
    async fn refs(
        &mut self,
        digest: Digest,
        index: Option<u32>,
    ) -> Result<Option<ManifestRefs>, RemarkError> {
        let unusable = |reason: String| RemarkError::UnreadableManifest {
            repository: self.repository.to_owned(),
            digest,
            reason,
        };
        let universe = &self.inventory.blobs;
        if let Some(known) = index.and_then(|i| self.catalog.full(i, universe)) {
            return known.map(Some).map_err(unusable);
        }
        // Listed larger than a manifest can be (a layer named as a manifest): not read.
        if let Some(size) = index
            .map(|i| universe.size(i))
            .filter(|&s| s > MAX_MANIFEST_BYTES)
        {
            return Err(unusable(format!(
                "{size} bytes is larger than the {MAX_MANIFEST_BYTES} bytes a manifest may have"
            )));
        }
        if let Some(read) = self.read_since.get(&digest) {
            return Ok(read.clone());
        }
        let read = match self.storage.get(&layout::blob_data(&digest)).await {
            Ok(content) if content.len() as u64 > MAX_MANIFEST_BYTES => {
                return Err(unusable(format!(
                    "{} bytes is larger than the {MAX_MANIFEST_BYTES} bytes a manifest may have",
                    content.len()
                )));
            }
            Ok(content) => Some(parse_manifest(&content).map_err(|e| unusable(e.to_string()))?),
            Err(StorageError::NotFound { .. }) => None,
            Err(e) => return Err(unusable(e.to_string())),
        };
        self.read_since.insert(digest, read.clone());
        Ok(read)
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::Path;
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::mark;
    use crate::plan::{self, PlanOptions, Target};
    use crate::scan::{Link, scan};
    use crate::select;
    use crate::storage::local::LocalStorage;
    use crate::storage::requests::RequestCounter;

    fn write(root: &Path, key: &str, content: &[u8]) {
        let path = root.join(key);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }

    fn blob(root: &Path, content: &[u8]) -> Digest {
        use sha2::Digest as _;
        let digest = Digest::parse(&format!("sha256:{:x}", sha2::Sha256::digest(content))).unwrap();
        write(root, &layout::blob_data(&digest), content);
        digest
    }

    fn link(root: &Path, key: &str, digest: &Digest) {
        write(root, key, digest.to_string().as_bytes());
    }

    /// Pushes `tag` of `repo` → `manifest`, as the registry writes it: layer links, revision, tag.
    fn push(root: &Path, repo: &str, tag: &str, manifest: &Digest, blobs: &[Digest]) {
        for b in blobs {
            link(root, &layout::layer_link(repo, b), b);
        }
        link(root, &layout::revision_link(repo, manifest), manifest);
        link(root, &layout::tag_index_link(repo, tag, manifest), manifest);
        link(root, &layout::tag_current_link(repo, tag), manifest);
    }

    /// A registry whose only image lost its tag long ago (its blobs are garbage), and one live image.
    fn registry(root: &Path) -> (Digest, Digest, Digest) {
        let config = blob(root, br#"{"architecture":"amd64"}"#);
        let layer = blob(root, b"an unreferenced layer");
        let manifest = blob(
            root,
            format!(
                r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":1}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer}","size":1}}]}}"#
            )
            .as_bytes(),
        );
        let other = blob(root, br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":1},"layers":[]}"#);
        push(root, "live", "v1", &other, &[]);
        (config, layer, manifest)
    }

    #[tokio::test]
    async fn a_broken_tag_whose_manifest_is_stored_again_makes_its_repository_busy() {
        use crate::state::{self, MarkState, StateHeader};
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let (config, layer, _) = registry(root);
        // `app:v1` names a manifest that is not stored (a broken tag) at the mark.
        let missing = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":1}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer}","size":1}}],"annotations":{{"x":"gone"}}}}"#
        );
        let manifest = {
            use sha2::Digest as _;
            Digest::parse(&format!("sha256:{:x}", sha2::Sha256::digest(&missing))).unwrap()
        };
        link(root, &layout::tag_current_link("app", "v1"), &manifest);
        let (storage, inventory, catalog, options, marks) = scan_and_mark(root, true).await;
        let header = StateHeader {
            cutoff_ms: state::millis(options.cutoff),
            ..StateHeader::default()
        };
        let baseline = MarkState::new(header, &inventory, &catalog, &marks).baseline();
        let busy = |repos: Vec<Repository>| {
            let storage = Arc::clone(&storage);
            let baseline = baseline.clone();
            async move {
                busy_since_mark(&storage, &baseline, &repos, 4)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|r| repos[r].name.clone())
                    .collect::<Vec<_>>()
            }
        };
        assert!(busy(inventory.repositories.clone()).await.is_empty());
        // The manifest is pushed again (to any repository): `app` must not lose its tag.
        write(root, &layout::blob_data(&manifest), missing.as_bytes());
        assert_eq!(busy(inventory.repositories.clone()).await, ["app"]);
    }

    /// The registry at `root`, scanned and marked with `-m`, everything written so far old.
    /// A registry scanned and marked, with what made it.
    type Marked = (
        Arc<dyn Storage>,
        Inventory,
        ManifestCatalog,
        MarkOptions,
        MarkSet,
    );

    async fn scan_and_mark(root: &Path, delete_untagged: bool) -> Marked {
        scan_and_mark_counted(root, delete_untagged, &RequestCounter::default()).await
    }

    /// [`scan_and_mark`] on a storage whose requests `counter` counts.
    async fn scan_and_mark_counted(
        root: &Path,
        delete_untagged: bool,
        counter: &RequestCounter,
    ) -> Marked {
        let storage: Arc<dyn Storage> = Arc::new(LocalStorage::open(root, counter).unwrap());
        let inventory = scan(&storage, 4).await.unwrap();
        let catalog = mark::load_manifests(&storage, &inventory, 4).await;
        let options = MarkOptions {
            delete_untagged,
            cutoff: SystemTime::now() + Duration::from_secs(3600),
        };
        let marks = mark::mark(&inventory, &catalog, options).unwrap();
        (storage, inventory, catalog, options, marks)
    }

    /// Scans, marks with `-m` and plans; runs `between`; re-marks and spares.
    async fn collect_and_remark(
        root: &Path,
        between: impl FnOnce(),
    ) -> (Inventory, plan::SweepPlan, usize) {
        collect_and_remark_with(root, true, between).await
    }

    async fn collect_and_remark_with(
        root: &Path,
        delete_untagged: bool,
        between: impl FnOnce(),
    ) -> (Inventory, plan::SweepPlan, usize) {
        let (storage, inventory, catalog, options, marks) =
            scan_and_mark(root, delete_untagged).await;
        let cutoff = options.cutoff;
        let mut plan = plan::plan(
            &inventory,
            &marks,
            PlanOptions {
                cutoff,
                upload_cutoff: cutoff,
            },
        );
        between();
        let reprieve = remark(&storage, &inventory, &marks, &catalog, options, 4)
            .await
            .unwrap();
        let spared = plan.spare(&inventory, &reprieve);
        (inventory, plan, spared)
    }

    fn planned_blobs(inventory: &Inventory, plan: &plan::SweepPlan) -> Vec<Digest> {
        let mut blobs: Vec<Digest> = plan
            .deletions
            .iter()
            .filter_map(|d| match d.target {
                Target::Blob(i) => Some(*inventory.blobs.digest(i)),
                _ => None,
            })
            .collect();
        blobs.sort();
        blobs
    }

    #[tokio::test]
    async fn a_removed_tag_is_no_root_unless_it_was_pushed_again() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let (config, layer, manifest) = registry(root);
        push(root, "app", "v1", &manifest, &[config, layer]);
        let storage: Arc<dyn Storage> =
            Arc::new(LocalStorage::open(root, &Default::default()).unwrap());
        let scanned = scan(&storage, 4).await.unwrap();
        let catalog = mark::load_manifests(&storage, &scanned, 4).await;
        let target = select::Target::parse("app:v1").unwrap();
        let selection = select::select_targets(&scanned, &[target], false).unwrap();
        let mut released = selection.released.clone();
        select::release_closure(&scanned, &catalog, &mut released);
        let options = MarkOptions {
            delete_untagged: false,
            cutoff: SystemTime::now() + Duration::from_secs(3600),
        };
        // The mark works on the inventory without the removed tag, the re-mark on the scan.
        let mut stripped = scan(&storage, 4).await.unwrap();
        select::strip(&mut stripped, &selection, options.cutoff);
        let marks = mark::mark_released(&stripped, &catalog, options, &released).unwrap();
        assert!(
            !marks
                .blobs
                .contains(stripped.blobs.index(&manifest).unwrap())
        );

        let reprieve = remark_released(&storage, &scanned, &marks, &catalog, options, 4, &released)
            .await
            .unwrap();
        assert_eq!(
            reprieve,
            Reprieve::default(),
            "nothing changed, nothing spared"
        );

        // The tag is pushed again (its current/link written anew) before the sweep.
        std::thread::sleep(Duration::from_millis(20));
        link(root, &layout::tag_current_link("app", "v1"), &manifest);
        let reprieve = remark_released(&storage, &scanned, &marks, &catalog, options, 4, &released)
            .await
            .unwrap();
        assert!(reprieve.repositories.contains("app"));
        for digest in [manifest, config, layer] {
            assert!(reprieve.blobs.contains(&digest), "{digest} not spared");
        }
    }

    #[tokio::test]
    async fn a_push_since_the_scan_that_reuses_garbage_blobs_spares_them() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let (config, layer, manifest) = registry(root);
        let (inventory, plan, spared) = collect_and_remark(root, || {
            // The registry links blobs it already has without rewriting them.
            push(root, "new/app", "latest", &manifest, &[config, layer]);
        })
        .await;
        assert_eq!(spared, 3, "the three blobs of the pushed image");
        assert_eq!(planned_blobs(&inventory, &plan), Vec::<Digest>::new());
    }

    #[tokio::test]
    async fn a_layer_linked_before_its_manifest_is_pushed_is_spared() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let (config, layer, manifest) = registry(root);
        let (inventory, plan, _) = collect_and_remark(root, || {
            link(root, &layout::layer_link("new/app", &layer), &layer);
        })
        .await;
        let mut expected = vec![config, manifest];
        expected.sort();
        assert_eq!(planned_blobs(&inventory, &plan), expected);
    }

    #[tokio::test]
    async fn a_layer_link_written_again_is_new_and_one_left_alone_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let (config, layer, manifest) = registry(root);
        // `old/app` links garbage blobs (an upload never followed by its manifest), among many
        // other links, so that the lookups among them matter.
        let mut linked = vec![config, layer, manifest];
        linked.extend((0..40u8).map(|n| blob(root, &[b'x', n])));
        for digest in &linked {
            link(root, &layout::layer_link("old/app", digest), digest);
        }
        let (inventory, plan, _) = collect_and_remark(root, || {
            // The same layer uploaded again: the registry writes its link anew.
            std::thread::sleep(Duration::from_millis(20));
            link(root, &layout::layer_link("old/app", &layer), &layer);
        })
        .await;
        let planned = planned_blobs(&inventory, &plan);
        assert!(
            !planned.contains(&layer),
            "the layer linked again is spared"
        );
        assert!(planned.contains(&config) && planned.contains(&manifest));
        assert_eq!(planned.len(), linked.len() - 1, "{planned:?}");
    }

    /// `app` names manifest M by a revision link and (with `tagged`) a tag, but M is not stored at
    /// the scan: its config and layer, linked in `app`, are garbage then. M is stored before the
    /// re-mark, through the blob API: no link is written again. Returns the blobs planned after
    /// the re-mark and M's config and layer.
    async fn manifest_stored_since_the_scan(
        tagged: bool,
        delete_untagged: bool,
    ) -> (Vec<Digest>, [Digest; 2]) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let (config, layer, _) = registry(root);
        let content = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":1}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer}","size":1}}],"annotations":{{"x":"late"}}}}"#
        );
        let manifest = blob(root, content.as_bytes());
        fs::remove_file(root.join(layout::blob_data(&manifest))).unwrap();
        for digest in [config, layer] {
            link(root, &layout::layer_link("app", &digest), &digest);
        }
        link(root, &layout::revision_link("app", &manifest), &manifest);
        if tagged {
            link(root, &layout::tag_current_link("app", "v1"), &manifest);
        }
        let (inventory, plan, _) = collect_and_remark_with(root, delete_untagged, || {
            write(root, &layout::blob_data(&manifest), content.as_bytes());
        })
        .await;
        (planned_blobs(&inventory, &plan), [config, layer])
    }

    #[tokio::test]
    async fn an_unchanged_link_to_a_manifest_stored_since_the_scan_is_still_a_root() {
        // By its tag (with -m a revision is no root)...
        let (planned, blobs) = manifest_stored_since_the_scan(true, true).await;
        assert!(blobs.iter().all(|b| !planned.contains(b)), "{planned:?}");
        // ... and by its revision alone (without -m).
        let (planned, blobs) = manifest_stored_since_the_scan(false, false).await;
        assert!(blobs.iter().all(|b| !planned.contains(b)), "{planned:?}");
        // Untagged with -m, it is garbage either way: the same blobs go.
        let (planned, blobs) = manifest_stored_since_the_scan(false, true).await;
        assert!(blobs.iter().all(|b| planned.contains(b)), "{planned:?}");
    }

    #[tokio::test]
    async fn only_what_the_scan_listed_the_same_and_found_live_is_no_news() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let (config, layer, manifest) = registry(root);
        push(root, "app", "v1", &manifest, &[config, layer]);
        // An untagged manifest: not live with -m.
        let untagged = blob(root, br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000001","size":1},"layers":[]}"#);
        link(root, &layout::revision_link("app", &untagged), &untagged);
        let (_, inventory, _, _, marks) = scan_and_mark(root, true).await;
        let app = inventory.repository("app").unwrap();
        let scanned =
            |links: &[Link], digest: &Digest| *links.iter().find(|l| l.digest == *digest).unwrap();
        let later = |link: Link| Link::new(link.digest, link.modified() + Duration::from_nanos(1));
        let no_news = |name: &str, listed: Listed<'_>| no_news(&inventory, &marks, name, listed);

        let revision = scanned(&app.revisions, &manifest);
        assert!(no_news("app", Listed::Revision(&revision)));
        assert!(!no_news("app", Listed::Revision(&later(revision))));
        let untagged = scanned(&app.revisions, &untagged);
        assert!(!no_news("app", Listed::Revision(&untagged)), "not live");
        assert!(
            !no_news("new", Listed::Revision(&revision)),
            "a new repository"
        );

        let (layer_link, _) = app
            .layer_links
            .iter(&inventory.blobs)
            .find(|(l, _)| l.digest == layer)
            .unwrap();
        assert!(no_news("app", Listed::LayerLink(&layer_link)));
        assert!(!no_news("app", Listed::LayerLink(&later(layer_link))));

        let v1 = app.tag("v1").unwrap();
        let modified = v1.current.as_ref().unwrap().modified;
        assert!(no_news(
            "app",
            Listed::TagCurrent {
                tag: "v1",
                modified
            }
        ));
        let moved = modified + Duration::from_nanos(1);
        assert!(!no_news(
            "app",
            Listed::TagCurrent {
                tag: "v1",
                modified: moved
            }
        ));
        assert!(!no_news(
            "app",
            Listed::TagCurrent {
                tag: "v2",
                modified
            }
        ));
        let entry = v1.index[0];
        assert!(no_news(
            "app",
            Listed::TagIndexEntry {
                tag: "v1",
                entry: &entry
            }
        ));
        let entry = later(entry);
        assert!(!no_news(
            "app",
            Listed::TagIndexEntry {
                tag: "v1",
                entry: &entry
            }
        ));
    }

    #[tokio::test]
    async fn a_tag_pushed_since_on_a_blob_larger_than_a_manifest_stops_the_sweep_unread() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        registry(root);
        let big = blob(root, &vec![0; MAX_MANIFEST_BYTES as usize + 1]);
        let counter = RequestCounter::default();
        let (storage, inventory, catalog, options, marks) =
            scan_and_mark_counted(root, true, &counter).await;
        link(root, &layout::tag_current_link("app", "big"), &big);
        let before = counter.snapshot().get;
        let err = remark(&storage, &inventory, &marks, &catalog, options, 4)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("larger than"), "{err}");
        assert_eq!(
            counter.snapshot().get - before,
            1,
            "the new tag link only: the blob is refused unread"
        );
    }

    #[tokio::test]
    async fn nothing_new_spares_nothing_and_a_new_unreadable_manifest_stops_the_sweep() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let (config, layer, manifest) = registry(root);
        let (inventory, plan, spared) = collect_and_remark(root, || {}).await;
        assert_eq!(spared, 0);
        let mut expected = vec![config, layer, manifest];
        expected.sort();
        assert_eq!(planned_blobs(&inventory, &plan), expected);

        // A tag pushed since the scan naming a blob that is not a manifest: fail closed.
        let (storage, inventory, catalog, options, marks) = scan_and_mark(root, true).await;
        let junk = blob(root, b"not a manifest");
        push(root, "new/app", "latest", &junk, &[]);
        let err = remark(&storage, &inventory, &marks, &catalog, options, 4)
            .await
            .unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("new/app") && message.contains(&junk.to_string()),
            "{message}"
        );
    }
}
