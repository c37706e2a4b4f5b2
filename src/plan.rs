//! Plan: what the sweep deletes, in which order. Pure — no I/O — so that a dry run prints exactly
//! what a real run does, and so that every rule is unit-tested.
//!
//! The phases run in an order that keeps every tagged image pullable if the process dies at any
//! instant, and that lets a second run find whatever the first left:
//! untagged manifests (revision links, tag index entries) → stale `_layers` links → broken tags →
//! unreferenced blobs → what is left of repositories with nothing live → stale uploads → empty
//! directories. References go before what they reference, so no crash leaves a link to a missing blob.
//! Every deletion respects the grace period: nothing modified after the cut-off goes.

use std::collections::HashSet;
use std::time::SystemTime;

use serde::Serialize;

use crate::digest::Digest;
use crate::layout::{self, RepositoryObject};
use crate::mark::{MarkSet, RepositoryMarks};
use crate::scan::{BlobUniverse, Inventory, Repository, Upload};
use crate::storage::{MultipartUpload, ObjectMeta};

/// The sweep's phases, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Tags removed on request (`delete`, `prune`): first, so that no crash leaves a tag naming a
    /// manifest the sweep already removed.
    Untag,
    Manifests,
    LayerLinks,
    Tags,
    Blobs,
    Repositories,
    Uploads,
    EmptyDirectories,
}

impl Phase {
    pub const ALL: [Phase; 8] = [
        Phase::Untag,
        Phase::Manifests,
        Phase::LayerLinks,
        Phase::Tags,
        Phase::Blobs,
        Phase::Repositories,
        Phase::Uploads,
        Phase::EmptyDirectories,
    ];

    /// The name used in plans and summaries.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Untag => "untag",
            Phase::Manifests => "manifests",
            Phase::LayerLinks => "layer_links",
            Phase::Tags => "tags",
            Phase::Blobs => "blobs",
            Phase::Repositories => "repositories",
            Phase::Uploads => "uploads",
            Phase::EmptyDirectories => "empty_directories",
        }
    }
}

/// What one deletion removes, for the counters of the summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A revision link (with its legacy signature links): the manifest leaves the repository.
    Manifest,
    /// A legacy signature link whose revision is gone.
    SignatureLink,
    TagIndexEntry,
    LayerLink,
    /// A whole tag directory whose `current/link` points at nothing in storage.
    Tag,
    /// A whole tag directory removed on request (`delete`, `prune`).
    RemovedTag,
    Blob,
    Upload,
    /// An S3 multipart upload of a stale upload, aborted rather than deleted.
    MultipartUpload,
    EmptyDirectory,
}

/// What a deletion targets. Blobs, by far the most numerous, are named by index so that a plan of
/// millions of blobs holds no strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Blob(u32),
    /// A `_layers` link, by its repository's index in the inventory and its position in the
    /// repository's `layer_links` ([`crate::scan::LayerLinks::get`]): a plan can hold millions,
    /// and a key string each would make them the largest part of it.
    LayerLink {
        repository: u32,
        link: u32,
    },
    /// Boxed, like `Multipart`: a plan holds millions of deletions (nearly all blobs), 24 bytes
    /// each with both variants boxed and 40 without.
    Keys(Box<Keys>),
    Multipart(Box<MultipartUpload>),
}

/// The keys of a deletion named by its keys, and the content they free (an upload's data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    pub keys: Vec<String>,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deletion {
    pub phase: Phase,
    pub kind: Kind,
    pub target: Target,
}

impl Deletion {
    /// A deletion of `keys` that frees no content (links, tags, directories).
    pub fn of_keys(phase: Phase, kind: Kind, keys: Vec<String>) -> Deletion {
        Deletion {
            phase,
            kind,
            target: Target::Keys(Box::new(Keys { keys, bytes: 0 })),
        }
    }

    /// The deletion of an upload's files, which frees their data.
    pub fn of_upload(phase: Phase, upload: &Upload) -> Deletion {
        let keys = upload.files.iter().map(|f| f.key.clone()).collect();
        let bytes = upload.files.iter().map(|f| f.size).sum();
        Deletion {
            phase,
            kind: Kind::Upload,
            target: Target::Keys(Box::new(Keys { keys, bytes })),
        }
    }

    /// Bytes of content freed: a blob's size (in `universe`, the plan's), an upload's data; links,
    /// directories and multipart uploads count zero.
    pub fn bytes(&self, universe: &BlobUniverse) -> u64 {
        match &self.target {
            Target::Blob(index) => universe.size(*index),
            Target::Keys(keys) => keys.bytes,
            Target::LayerLink { .. } | Target::Multipart(_) => 0,
        }
    }

    /// How many keys [`Deletion::keys`] gives, without formatting them (a plan counts millions).
    pub fn key_count(&self) -> usize {
        match &self.target {
            Target::Keys(keys) => keys.keys.len(),
            Target::Blob(_) | Target::LayerLink { .. } | Target::Multipart(_) => 1,
        }
    }

    /// The storage keys this deletion removes.
    pub fn keys(&self, inventory: &Inventory) -> Vec<String> {
        match &self.target {
            Target::Blob(index) => vec![layout::blob_data(inventory.blobs.digest(*index))],
            &Target::LayerLink { repository, link } => {
                let (name, digest) = layer_link(inventory, repository, link);
                vec![layout::layer_link(name, &digest)]
            }
            Target::Keys(keys) => keys.keys.clone(),
            Target::Multipart(upload) => vec![upload.key.clone()],
        }
    }

    /// The repository and the blob of a revision or layer link deletion.
    pub fn link(&self, inventory: &Inventory) -> Option<(String, Digest)> {
        let key = match &self.target {
            &Target::LayerLink { repository, link } => {
                let (name, digest) = layer_link(inventory, repository, link);
                return Some((name.to_owned(), digest));
            }
            Target::Keys(keys) if matches!(self.kind, Kind::Manifest | Kind::LayerLink) => {
                layout::parse_repository_key(keys.keys.first()?)
            }
            _ => return None,
        };
        match (key.repository, key.object) {
            (
                Some(name),
                RepositoryObject::RevisionLink(digest) | RepositoryObject::LayerLink(digest),
            ) => Some((name.to_owned(), digest)),
            _ => None,
        }
    }
}

/// What a deletion belongs to, as shards split the work ([`crate::shard`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner<'a> {
    /// A blob, or an empty directory of blobs, under `blobs/sha256/<byte>/`.
    BlobShard(u8),
    Repository(&'a str),
    /// Anything else (empty directories between repositories).
    Registry,
}

impl Deletion {
    pub fn owner<'a>(&'a self, inventory: &'a Inventory) -> Owner<'a> {
        let key = match &self.target {
            Target::Blob(index) => {
                return Owner::BlobShard(inventory.blobs.digest(*index).as_bytes()[0]);
            }
            &Target::LayerLink { repository, .. } => {
                return Owner::Repository(&inventory.repositories[repository as usize].name);
            }
            Target::Keys(keys) => keys.keys.first().map_or("", String::as_str),
            Target::Multipart(upload) => &upload.key,
        };
        if let Some(name) = layout::parse_repository_key(key).repository {
            return Owner::Repository(name);
        }
        key.strip_prefix(layout::SHA256_BLOBS)
            .and_then(|rest| rest.get(..2))
            .and_then(|byte| u8::from_str_radix(byte, 16).ok())
            .map_or(Owner::Registry, Owner::BlobShard)
    }
}

/// The repository name and blob of layer link `link` of repository `repository`.
fn layer_link(inventory: &Inventory, repository: u32, link: u32) -> (&str, Digest) {
    let repository = &inventory.repositories[repository as usize];
    let (link, _) = repository.layer_links.get(link, &inventory.blobs);
    (&repository.name, link.digest)
}

/// Grace periods, as instants: what was modified after them stays.
#[derive(Debug, Clone, Copy)]
pub struct PlanOptions {
    /// Run start minus `--min-age`.
    pub cutoff: SystemTime,
    /// Run start minus `--upload-max-age`.
    pub upload_cutoff: SystemTime,
}

impl PlanOptions {
    /// An upload last active at `last_activity` may go: it is past both grace periods.
    fn upload_is_stale(&self, last_activity: SystemTime) -> bool {
        last_activity <= self.cutoff.min(self.upload_cutoff)
    }
}

/// Everything the sweep will delete, ordered by phase.
#[derive(Debug, Default)]
pub struct SweepPlan {
    pub deletions: Vec<Deletion>,
    /// Repositories left with nothing: once the plan is carried out their directories are gone.
    pub repositories_deleted: Vec<String>,
}

/// What a re-mark just before the sweep found live or busy ([`crate::remark`]): none of it may be
/// deleted, whatever the plan said.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reprieve {
    /// Blobs something live references now.
    pub blobs: HashSet<Digest>,
    /// `(repository, digest)`: revision, layer and tag index links that stay.
    pub links: HashSet<(String, Digest)>,
    /// Repositories written to since the scan: their tags, uploads and the repository itself stay.
    pub repositories: HashSet<String>,
}

impl SweepPlan {
    /// Drops every deletion that would touch what `reprieve` keeps; returns how many went.
    /// `inventory` is the one the plan was made from.
    pub fn spare(&mut self, inventory: &Inventory, reprieve: &Reprieve) -> usize {
        let before = self.deletions.len();
        self.deletions
            .retain(|deletion| !deletion.is_reprieved(inventory, reprieve));
        self.repositories_deleted
            .retain(|name| !reprieve.repositories.contains(name));
        before - self.deletions.len()
    }
}

impl Deletion {
    fn is_reprieved(&self, inventory: &Inventory, reprieve: &Reprieve) -> bool {
        let keys = match &self.target {
            Target::Blob(index) => return reprieve.blobs.contains(inventory.blobs.digest(*index)),
            &Target::LayerLink { repository, link } => {
                let (name, digest) = layer_link(inventory, repository, link);
                return reprieve.links.contains(&(name.to_owned(), digest));
            }
            Target::Multipart(upload) => return busy(&upload.key, reprieve),
            Target::Keys(keys) => &keys.keys,
        };
        // Removing an empty directory cannot hurt: it fails if anything was written into it.
        if self.kind == Kind::EmptyDirectory {
            return false;
        }
        let whole = matches!(
            self.phase,
            Phase::Untag | Phase::Tags | Phase::Repositories | Phase::Uploads
        );
        keys.iter().any(|key| {
            let parsed = layout::parse_repository_key(key);
            let Some(name) = parsed.repository else {
                return false;
            };
            let digest = match parsed.object {
                RepositoryObject::RevisionLink(d)
                | RepositoryObject::LayerLink(d)
                | RepositoryObject::TagIndex { digest: d, .. }
                | RepositoryObject::RevisionSignature { revision: d, .. } => Some(d),
                _ => None,
            };
            (whole && reprieve.repositories.contains(name))
                || digest.is_some_and(|d| reprieve.links.contains(&(name.to_owned(), d)))
        })
    }
}

/// Whether `key` lies in a repository written to since the scan.
fn busy(key: &str, reprieve: &Reprieve) -> bool {
    layout::parse_repository_key(key)
        .repository
        .is_some_and(|name| reprieve.repositories.contains(name))
}

/// Decides what goes. `marks` must come from [`crate::mark::mark`] over the same `inventory`.
pub fn plan(inventory: &Inventory, marks: &MarkSet, options: PlanOptions) -> SweepPlan {
    let old = |modified: SystemTime| modified <= options.cutoff;
    let mut plan = SweepPlan::default();
    for (index, (repo, repo_marks)) in inventory
        .repositories
        .iter()
        .zip(&marks.repositories)
        .enumerate()
    {
        let index = u32::try_from(index).expect("fewer than 2^32 repositories");
        plan_repository(
            index,
            repo,
            repo_marks,
            &inventory.blobs,
            options,
            &mut plan,
        );
    }
    let universe = &inventory.blobs;
    for index in 0..u32::try_from(universe.len()).expect("more than 2^32 blobs") {
        if !marks.blobs.contains(index) && old(universe.modified(index)) {
            plan.deletions.push(Deletion {
                phase: Phase::Blobs,
                kind: Kind::Blob,
                target: Target::Blob(index),
            });
        }
    }
    plan.deletions.extend(empty_directories(
        &inventory.markers,
        options,
        Phase::EmptyDirectories,
    ));
    plan_multipart_uploads(inventory, options, &mut plan);
    // Stable: within a phase, the order above (repository by repository, blobs by digest) stays.
    plan.deletions.sort_by_key(|d| d.phase);
    plan
}

fn plan_repository(
    repository: u32,
    repo: &Repository,
    marks: &RepositoryMarks,
    universe: &BlobUniverse,
    options: PlanOptions,
    plan: &mut SweepPlan,
) {
    let old = |modified: SystemTime| modified <= options.cutoff;
    let name = repo.name.as_str();
    let live = |digest: &Digest| {
        universe
            .index(digest)
            .is_some_and(|i| marks.manifests.contains(i))
    };
    let mut kept_anything = !repo.unknown.is_empty();
    let mut deletions = Vec::new();

    // Manifests: revision links that no live thing reaches, with their signature links.
    let mut kept_revisions: HashSet<Digest> = HashSet::new();
    for revision in &repo.revisions {
        if live(&revision.digest) || !old(revision.modified()) {
            kept_revisions.insert(revision.digest);
            continue;
        }
        let mut doomed = vec![layout::revision_link(name, &revision.digest)];
        doomed.extend(
            repo.signatures
                .iter()
                .filter(|s| s.revision == revision.digest && old(s.modified))
                .map(|s| layout::revision_signature_link(name, &s.revision, &s.signature)),
        );
        deletions.push(Deletion::of_keys(Phase::Manifests, Kind::Manifest, doomed));
    }
    kept_anything |= !kept_revisions.is_empty();
    let revision_listed: HashSet<Digest> = repo.revisions.iter().map(|r| r.digest).collect();
    for signature in &repo.signatures {
        if revision_listed.contains(&signature.revision) {
            continue; // decided with its revision above
        }
        if old(signature.modified) && !live(&signature.revision) {
            let key =
                layout::revision_signature_link(name, &signature.revision, &signature.signature);
            deletions.push(Deletion::of_keys(
                Phase::Manifests,
                Kind::SignatureLink,
                vec![key],
            ));
        } else {
            kept_anything = true;
        }
    }

    // Tags: a tag whose current/link names nothing in storage (or that has no current/link) goes
    // whole, unless any of it is young (a tag being written); otherwise only its stale index entries.
    for tag in &repo.tags {
        let target = tag
            .current
            .as_ref()
            .and_then(|c| c.target.as_ref().ok().copied());
        let broken = target.is_none_or(|d| universe.index(&d).is_none());
        if broken {
            let current_old = tag.current.as_ref().is_none_or(|c| old(c.modified));
            if current_old && tag.index.iter().all(|l| old(l.modified())) {
                let mut doomed: Vec<String> = tag
                    .index
                    .iter()
                    .map(|l| layout::tag_index_link(name, &tag.name, &l.digest))
                    .collect();
                if tag.current.is_some() {
                    doomed.push(layout::tag_current_link(name, &tag.name));
                }
                deletions.push(Deletion::of_keys(Phase::Tags, Kind::Tag, doomed));
                continue;
            }
        }
        kept_anything = true;
        for entry in &tag.index {
            let keep = Some(entry.digest) == target
                || kept_revisions.contains(&entry.digest)
                || !old(entry.modified());
            if !keep {
                let key = layout::tag_index_link(name, &tag.name, &entry.digest);
                deletions.push(Deletion::of_keys(
                    Phase::Manifests,
                    Kind::TagIndexEntry,
                    vec![key],
                ));
            }
        }
    }

    // Layer links: stay while a live manifest of this repository references the blob (or it is a
    // live manifest itself, as some clients fetch manifests through the blob endpoint).
    for (index, (link, blob)) in repo.layer_links.iter(universe).enumerate() {
        let referenced =
            blob.is_some_and(|i| marks.layers.contains(i) || marks.manifests.contains(i));
        if referenced || !old(link.modified()) {
            kept_anything = true;
        } else {
            deletions.push(Deletion {
                phase: Phase::LayerLinks,
                kind: Kind::LayerLink,
                target: Target::LayerLink {
                    repository,
                    link: u32::try_from(index).expect("fewer than 2^32 links"),
                },
            });
        }
    }

    // Uploads and empty directories: by age. In a repository with nothing else left, they are what
    // remains of it, and go in the repositories phase.
    let stale_uploads: Vec<Deletion> = repo
        .uploads
        .iter()
        .filter(|u| options.upload_is_stale(u.last_activity()))
        .map(|u| Deletion::of_upload(Phase::Uploads, u))
        .collect();
    let markers = empty_directories(&repo.markers, options, Phase::EmptyDirectories);
    kept_anything |= stale_uploads.len() < repo.uploads.len() || markers.len() < repo.markers.len();
    let remains = stale_uploads.into_iter().chain(markers);
    if kept_anything {
        deletions.extend(remains);
    } else {
        deletions.extend(remains.map(|d| Deletion {
            phase: Phase::Repositories,
            ..d
        }));
        plan.repositories_deleted.push(repo.name.clone());
    }
    plan.deletions.extend(deletions);
}

/// Multipart uploads of stale uploads (S3): listings do not show them, but they are stored and
/// billed.
fn plan_multipart_uploads(inventory: &Inventory, options: PlanOptions, plan: &mut SweepPlan) {
    for upload in &inventory.multipart_uploads {
        let key = layout::parse_repository_key(&upload.key);
        let (Some(name), RepositoryObject::Upload { id }) = (key.repository, key.object) else {
            continue; // not the registry's: leave it
        };
        // The upload's own files tell its last activity (each PATCH writes them); the multipart
        // upload's start time only says when it began.
        let files = inventory.repository(name).and_then(|r| r.upload(id));
        let last_activity = files.map_or(upload.initiated, |files| files.last_activity());
        if options.upload_is_stale(last_activity) {
            plan.deletions.push(Deletion {
                phase: Phase::Uploads,
                kind: Kind::MultipartUpload,
                target: Target::Multipart(Box::new(upload.clone())),
            });
        }
    }
}

fn empty_directories(markers: &[ObjectMeta], options: PlanOptions, phase: Phase) -> Vec<Deletion> {
    markers
        .iter()
        .filter(|m| m.modified <= options.cutoff && !layout::is_anchor_dir(&m.key))
        .map(|m| Deletion::of_keys(phase, Kind::EmptyDirectory, vec![m.key.clone()]))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use super::*;
    use crate::digest::DigestError;
    use crate::manifest::{ManifestKind, ManifestRefs};
    use crate::mark::{self, ManifestCatalog, MarkError, MarkOptions};
    use crate::scan::{LayerLinks, Link, Tag, TagCurrent, Upload};

    const NOW: Duration = Duration::from_secs(1_000_000);
    const HOUR: Duration = Duration::from_secs(3600);

    fn at(age: Duration) -> SystemTime {
        SystemTime::UNIX_EPOCH + NOW - age
    }

    fn d(n: u8) -> Digest {
        Digest::from_bytes([n; 32])
    }

    /// A registry under construction: blobs, manifests and repositories, all two hours old unless said.
    #[derive(Default)]
    struct Fixture {
        blobs: Vec<(Digest, u64, SystemTime)>,
        manifests: Vec<(Digest, Result<ManifestRefs, String>)>,
        repositories: Vec<Repository>,
        multipart_uploads: Vec<MultipartUpload>,
    }

    impl Fixture {
        fn blob(&mut self, n: u8) -> Digest {
            self.blobs.push((d(n), 100 + u64::from(n), at(2 * HOUR)));
            d(n)
        }

        fn manifest(
            &mut self,
            n: u8,
            manifests: &[u8],
            blobs: &[u8],
            subject: Option<u8>,
        ) -> Digest {
            self.blob(n);
            let refs = ManifestRefs {
                kind: if manifests.is_empty() {
                    ManifestKind::OciImageManifest
                } else {
                    ManifestKind::OciImageIndex
                },
                manifests: manifests.iter().map(|&m| d(m)).collect(),
                blobs: blobs.iter().map(|&b| d(b)).collect(),
                subject: subject.map(d),
            };
            self.manifests.push((d(n), Ok(refs)));
            d(n)
        }

        fn repo(&mut self, name: &str) -> &mut Repository {
            self.repositories.push(Repository {
                name: name.into(),
                ..Repository::default()
            });
            self.repositories.last_mut().unwrap()
        }

        /// The inventory, its layer links held as a scan holds them: by index where their blob is
        /// stored, whole where not (a plan names a link by its position among both).
        fn inventory(&self) -> Inventory {
            let blobs = BlobUniverse::new(self.blobs.clone());
            let mut repositories = self.repositories.clone();
            repositories.sort_by(|a, b| a.name.cmp(&b.name));
            for repo in &mut repositories {
                let links: Vec<Link> = repo.layer_links.iter(&blobs).map(|(l, _)| l).collect();
                repo.layer_links = LayerLinks::resolved(links, &blobs);
            }
            Inventory {
                blobs,
                repositories,
                multipart_uploads: self.multipart_uploads.clone(),
                ..Inventory::default()
            }
        }

        fn catalog(&self, inventory: &Inventory) -> ManifestCatalog {
            ManifestCatalog::of_parsed(
                &inventory.blobs,
                self.manifests
                    .iter()
                    .map(|(digest, refs)| (inventory.blobs.index(digest).unwrap(), refs.clone())),
            )
        }

        fn run(&self, delete_untagged: bool) -> Result<(Inventory, SweepPlan), Vec<MarkError>> {
            let inventory = self.inventory();
            let catalog = self.catalog(&inventory);
            let cutoff = at(HOUR);
            let marks = mark::mark(
                &inventory,
                &catalog,
                MarkOptions {
                    delete_untagged,
                    cutoff,
                },
            )?;
            let plan = plan(
                &inventory,
                &marks,
                PlanOptions {
                    cutoff,
                    upload_cutoff: at(168 * HOUR),
                },
            );
            Ok((inventory, plan))
        }
    }

    fn link(digest: Digest) -> Link {
        Link::new(digest, at(2 * HOUR))
    }

    fn tag(name: &str, target: Digest) -> Tag {
        Tag {
            name: name.into(),
            current: Some(TagCurrent {
                target: Ok(target),
                modified: at(2 * HOUR),
            }),
            index: vec![link(target)],
        }
    }

    fn deleted(inventory: &Inventory, plan: &SweepPlan) -> BTreeSet<String> {
        plan.deletions
            .iter()
            .flat_map(|del| {
                let keys = del.keys(inventory);
                assert_eq!(del.key_count(), keys.len(), "{del:?}");
                keys
            })
            .collect()
    }

    fn deleted_blobs(inventory: &Inventory, plan: &SweepPlan) -> BTreeSet<Digest> {
        plan.deletions
            .iter()
            .filter_map(|del| match del.target {
                Target::Blob(i) => Some(*inventory.blobs.digest(i)),
                _ => None,
            })
            .collect()
    }

    /// repo "app": tag v1 → M (config 1, layers 2, 3); untagged U (layer 4); orphan blob 9 linked.
    fn simple() -> Fixture {
        let mut f = Fixture::default();
        for n in [1, 2, 3, 4, 9] {
            f.blob(n);
        }
        let m = f.manifest(10, &[], &[1, 2, 3], None);
        let u = f.manifest(11, &[], &[1, 4], None);
        let repo = f.repo("app");
        repo.revisions = vec![link(m), link(u)];
        repo.layer_links = [1, 2, 3, 4, 9].map(|n| link(d(n))).to_vec().into();
        repo.tags = vec![tag("v1", m)];
        f
    }

    #[test]
    fn delete_untagged_collects_untagged_manifests_and_their_exclusive_blobs() {
        let (inventory, plan) = simple().run(true).unwrap();
        assert_eq!(
            deleted_blobs(&inventory, &plan),
            BTreeSet::from([d(4), d(9), d(11)])
        );
        let keys = deleted(&inventory, &plan);
        assert!(keys.contains(&layout::revision_link("app", &d(11))));
        assert!(keys.contains(&layout::layer_link("app", &d(4))));
        assert!(keys.contains(&layout::layer_link("app", &d(9))));
        assert!(!keys.contains(&layout::layer_link("app", &d(1))));
        assert!(!keys.contains(&layout::revision_link("app", &d(10))));
        assert!(plan.repositories_deleted.is_empty());
        // Ordered: references before what they reference.
        let phases: Vec<Phase> = plan.deletions.iter().map(|d| d.phase).collect();
        assert!(phases.is_sorted(), "{phases:?}");
        assert_eq!(phases.first(), Some(&Phase::Manifests));
        assert_eq!(phases.last(), Some(&Phase::Blobs));
    }

    #[test]
    fn every_deletion_has_the_owner_a_shard_splits_by() {
        let (inventory, plan) = simple().run(true).unwrap();
        for deletion in &plan.deletions {
            let key = deletion.keys(&inventory).remove(0);
            let expected = match deletion.target {
                Target::Blob(index) => {
                    Owner::BlobShard(inventory.blobs.digest(index).as_bytes()[0])
                }
                _ => Owner::Repository("app"),
            };
            assert_eq!(deletion.owner(&inventory), expected, "{key}");
        }
        let keys = |key: &str| {
            Deletion::of_keys(
                Phase::EmptyDirectories,
                Kind::EmptyDirectory,
                vec![key.to_owned()],
            )
        };
        let deletion = keys("docker/registry/v2/blobs/sha256/ab/");
        assert_eq!(deletion.owner(&inventory), Owner::BlobShard(0xab));
        let deletion = keys(&format!("{}ab/{}/", layout::SHA256_BLOBS, d(0xab).hex()));
        assert_eq!(deletion.owner(&inventory), Owner::BlobShard(0xab));
        let deletion = keys("docker/registry/v2/repositories/team/app/_uploads/");
        assert_eq!(deletion.owner(&inventory), Owner::Repository("team/app"));
        let deletion = keys("docker/registry/v2/repositories/");
        assert_eq!(deletion.owner(&inventory), Owner::Registry);
    }

    #[test]
    fn without_delete_untagged_every_revision_is_a_root() {
        let (inventory, plan) = simple().run(false).unwrap();
        assert_eq!(deleted_blobs(&inventory, &plan), BTreeSet::from([d(9)]));
        assert_eq!(
            deleted(&inventory, &plan),
            BTreeSet::from([layout::layer_link("app", &d(9)), layout::blob_data(&d(9))])
        );
    }

    #[test]
    fn index_children_and_referrers_of_live_manifests_survive() {
        let mut f = Fixture::default();
        for n in 1..=6 {
            f.blob(n);
        }
        let child_a = f.manifest(20, &[], &[1, 2], None);
        let child_b = f.manifest(21, &[], &[1, 3], None);
        let list = f.manifest(22, &[20, 21], &[], None);
        let signature = f.manifest(23, &[], &[4], Some(22));
        let garbage = f.manifest(24, &[], &[5], None);
        let garbage_sbom = f.manifest(25, &[], &[6], Some(24));
        let repo = f.repo("multi");
        repo.revisions = [child_a, child_b, list, signature, garbage, garbage_sbom]
            .map(link)
            .to_vec();
        repo.layer_links = (1..=6).map(|n| link(d(n))).collect::<Vec<_>>().into();
        repo.tags = vec![tag("latest", list)];
        let (inventory, plan) = f.run(true).unwrap();
        assert_eq!(
            deleted_blobs(&inventory, &plan),
            BTreeSet::from([d(5), d(6), garbage, garbage_sbom])
        );
    }

    #[test]
    fn a_reprieve_spares_blobs_links_and_busy_repositories() {
        let mut f = simple();
        let gone = f.manifest(12, &[], &[5], None);
        f.blob(5);
        let old_repo = f.repo("old");
        old_repo.revisions = vec![link(gone)];
        old_repo.layer_links = vec![link(d(5))].into();
        old_repo.tags = vec![tag("dangling", d(99))];
        let (inventory, mut plan) = f.run(true).unwrap();
        assert_eq!(plan.repositories_deleted, ["old"]);
        let before = deleted(&inventory, &plan);
        // A push since the scan tagged U again in "app", and wrote into "old".
        let reprieve = Reprieve {
            blobs: HashSet::from([d(11), d(1), d(4)]),
            links: HashSet::from([
                ("app".to_owned(), d(11)),
                ("app".to_owned(), d(1)),
                ("app".to_owned(), d(4)),
            ]),
            repositories: HashSet::from(["old".to_owned()]),
        };
        let spared = plan.spare(&inventory, &reprieve);
        let after = deleted(&inventory, &plan);
        let spared_keys: BTreeSet<String> = before.difference(&after).cloned().collect();
        assert_eq!(
            spared_keys,
            BTreeSet::from([
                layout::revision_link("app", &d(11)),
                layout::layer_link("app", &d(4)),
                layout::blob_data(&d(4)),
                layout::blob_data(&d(11)),
                layout::tag_current_link("old", "dangling"),
                layout::tag_index_link("old", "dangling", &d(99)),
            ]),
            "spared {spared}"
        );
        assert_eq!(spared, 5, "revision, layer link, two blobs, one tag");
        // The old repository's untagged manifest still goes (nothing reprieved it), but not the
        // repository as a whole.
        assert!(after.contains(&layout::revision_link("old", &d(12))));
        assert!(plan.repositories_deleted.is_empty());
    }

    #[test]
    fn young_objects_and_their_closure_stay() {
        let mut f = simple();
        // U was pushed ten minutes ago; an orphan blob too.
        let revision = &mut f.repositories[0].revisions[1];
        *revision = Link::new(revision.digest, at(Duration::from_secs(600)));
        f.blobs.push((d(8), 5, at(Duration::from_secs(600))));
        let (inventory, plan) = f.run(true).unwrap();
        assert_eq!(deleted_blobs(&inventory, &plan), BTreeSet::from([d(9)]));
    }

    #[test]
    fn a_young_layer_link_keeps_its_blob() {
        let mut f = simple();
        let young = Link::new(d(9), at(Duration::from_secs(60)));
        f.repositories[0].layer_links = [link(d(1)), link(d(4)), young].to_vec().into();
        let (inventory, plan) = f.run(true).unwrap();
        assert!(!deleted_blobs(&inventory, &plan).contains(&d(9)));
        assert!(!deleted(&inventory, &plan).contains(&layout::layer_link("app", &d(9))));
    }

    #[test]
    fn dangling_links_and_broken_tags_go() {
        let mut f = simple();
        let repo = &mut f.repositories[0];
        repo.revisions.push(link(d(50))); // manifest blob gone
        // Layer blob 51 gone.
        repo.layer_links = [1, 2, 3, 4, 9, 51].map(|n| link(d(n))).to_vec().into();
        repo.tags.push(tag("broken", d(50)));
        repo.tags.push(Tag {
            name: "half".into(),
            current: None,
            index: vec![link(d(10))],
        });
        let (inventory, plan) = f.run(false).unwrap();
        let keys = deleted(&inventory, &plan);
        for key in [
            layout::revision_link("app", &d(50)),
            layout::layer_link("app", &d(51)),
            layout::tag_current_link("app", "broken"),
            layout::tag_index_link("app", "broken", &d(50)),
            layout::tag_index_link("app", "half", &d(10)),
        ] {
            assert!(keys.contains(&key), "{key} not planned");
        }
        let tags = plan
            .deletions
            .iter()
            .filter(|d| d.kind == Kind::Tag)
            .count();
        assert_eq!(tags, 2);
    }

    #[test]
    fn a_repository_left_with_nothing_goes_whole_but_recent_uploads_keep_it() {
        let mut f = simple();
        let old = f.manifest(30, &[], &[2], None);
        let gone = f.repo("gone");
        gone.revisions = vec![link(old)];
        gone.layer_links = vec![link(d(2))].into();
        gone.uploads = vec![Upload {
            id: "u1".into(),
            files: vec![ObjectMeta {
                key: format!("{}_uploads/u1/data", layout::repository("gone")),
                size: 7,
                modified: at(200 * HOUR),
            }],
        }];
        let (inventory, plan) = f.run(true).unwrap();
        assert_eq!(plan.repositories_deleted, ["gone"]);
        let upload = plan
            .deletions
            .iter()
            .find(|d| d.kind == Kind::Upload)
            .unwrap();
        assert_eq!(
            (upload.phase, upload.bytes(&inventory.blobs)),
            (Phase::Repositories, 7)
        );
        // Blob 2 is still used by app's tagged manifest.
        assert!(!deleted_blobs(&inventory, &plan).contains(&d(2)));

        // The same with an upload active an hour and a half ago: kept, and the repository with it.
        f.repositories[1].uploads[0].files[0].modified = at(90 * Duration::from_secs(60));
        let (_, plan) = f.run(true).unwrap();
        assert!(plan.repositories_deleted.is_empty());
        assert!(plan.deletions.iter().all(|d| d.kind != Kind::Upload));
    }

    #[test]
    fn a_deletion_is_24_bytes_and_a_blob_frees_its_listed_size() {
        assert_eq!(std::mem::size_of::<Deletion>(), 24);
        let (inventory, plan) = simple().run(true).unwrap();
        let blob = plan
            .deletions
            .iter()
            .find(|d| matches!(d.target, Target::Blob(_)))
            .unwrap();
        let Target::Blob(index) = blob.target else {
            unreachable!()
        };
        assert_eq!(blob.bytes(&inventory.blobs), inventory.blobs.size(index));
        assert!(blob.bytes(&inventory.blobs) > 0);
    }

    #[test]
    fn multipart_uploads_go_with_their_stale_upload_only() {
        let mut f = simple();
        let app = layout::repository("app");
        let upload = |id: &str, modified| Upload {
            id: id.into(),
            files: vec![ObjectMeta {
                key: format!("{app}_uploads/{id}/startedat"),
                size: 20,
                modified,
            }],
        };
        // Sorted by ID, as a scanned repository's uploads are (the plan looks them up by ID).
        f.repositories[0].uploads = vec![
            upload("active", at(HOUR / 2)),
            upload("stale", at(200 * HOUR)),
        ];
        // Some S3 servers report any old start time: the upload's own files decide.
        let multipart = |id: &str, initiated| MultipartUpload {
            key: format!("{app}_uploads/{id}/data"),
            upload_id: format!("mp-{id}"),
            initiated,
        };
        f.multipart_uploads = vec![
            multipart("active", at(1000 * HOUR)),
            multipart("stale", at(200 * HOUR)),
            multipart("orphan-old", at(200 * HOUR)),
            multipart("orphan-young", at(2 * HOUR)),
            MultipartUpload {
                key: "elsewhere/object".into(),
                upload_id: "x".into(),
                initiated: at(1000 * HOUR),
            },
        ];
        let (_, plan) = f.run(true).unwrap();
        let mut aborted: Vec<&str> = plan
            .deletions
            .iter()
            .filter_map(|d| match &d.target {
                Target::Multipart(m) => Some(m.upload_id.as_str()),
                _ => None,
            })
            .collect();
        aborted.sort_unstable();
        assert_eq!(aborted, ["mp-orphan-old", "mp-stale"]);
    }

    #[test]
    fn fail_closed_on_corrupt_tag_links_and_unreadable_live_manifests() {
        let mut f = simple();
        f.repositories[0].tags.push(Tag {
            name: "bad".into(),
            current: Some(TagCurrent {
                target: Err(DigestError::Malformed("sha256:zz".into())),
                modified: at(2 * HOUR),
            }),
            index: vec![],
        });
        f.manifests[0].1 = Err("truncated".into());
        let errors = f.run(true).unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(matches!(&errors[0], MarkError::CorruptTagLink { tag, .. } if tag == "bad"));
        assert!(
            matches!(&errors[1], MarkError::UnreadableManifest { digest, .. } if *digest == d(10))
        );
    }

    #[test]
    fn an_unreadable_untagged_manifest_is_kept() {
        let mut f = simple();
        f.manifests[1].1 = Err("not JSON".into());
        let (inventory, plan) = f.run(true).unwrap();
        let keys = deleted(&inventory, &plan);
        assert!(!keys.contains(&layout::revision_link("app", &d(11))));
        assert!(!deleted_blobs(&inventory, &plan).contains(&d(11)));
    }
}
