//! Scan: one pass over the storage that builds the [`Inventory`] the mark and the plan work from.
//!
//! Blobs are listed first, then the top-level repository namespaces, each as concurrent streaming
//! recursive listings whose objects are taken as the pages arrive. Blobs are listed as 16 key
//! ranges where the backend can start a listing at a key (S3: 16 requests beyond the pages
//! themselves), else as the 256 shards `blobs/sha256/00` … `ff` (filesystems, Azure). Links under
//! `_layers` and `_manifests/revisions` are never read: their digest is in the key. Only tag
//! `current/link` files are read, concurrently. Blobs are held as a sorted vector of 42-byte
//! entries, so that the rest of the pipeline can name a blob by its index in that vector (see
//! [`crate::mark::MarkSet`]); `_layers` links, about one per blob, are held the same way
//! ([`LayerLinks`]), which is why the blobs are listed before the repositories.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt, stream};
use thiserror::Error;

use crate::digest::{Digest, DigestError};
use crate::layout::{self, BlobObject, RepositoryObject};
use crate::shard::Shard;
use crate::storage::{MultipartUpload, ObjectMeta, Storage, StorageError};

/// Why a scan could not complete. Nothing has been deleted when one of these is returned.
#[derive(Debug, Error)]
pub enum ScanError {
    #[error("{root} is not a registry storage root: it has no {}", layout::V2)]
    NotARegistry { root: String },
    #[error("listing the storage failed: {0}")]
    Storage(#[from] StorageError),
}

/// Every sha256 blob in storage, sorted by digest. A blob is named elsewhere by its index here.
///
/// The universe is the largest structure of a run (one entry per blob; tens of millions on big
/// registries), so an entry is 42 bytes: the digest, the size in 32 bits (larger blobs are rare and
/// kept aside) and the modification time in milliseconds in 48 bits (enough for 8,900 years),
/// rounded up so that a blob never looks older than it is (the grace period errs on the side of
/// keeping). Fields are byte arrays: an alignment of 1 leaves no padding.
#[derive(Debug, Default)]
pub struct BlobUniverse {
    entries: Vec<BlobEntry>,
    /// Sizes of the blobs of 4 GiB or more.
    large: HashMap<Digest, u64>,
}

#[derive(Debug, Clone, Copy)]
struct BlobEntry {
    digest: Digest,
    /// The size, or [`LARGE`] when it is in [`BlobUniverse::large`], little-endian.
    size: [u8; 4],
    /// Milliseconds since the epoch, rounded up, little-endian in 48 bits.
    modified: [u8; 6],
}

const LARGE: u32 = u32::MAX;

/// Collects blobs in any order, then sorts them into a [`BlobUniverse`] in place (no second copy).
#[derive(Debug, Default)]
pub struct BlobUniverseBuilder {
    universe: BlobUniverse,
}

impl BlobUniverseBuilder {
    /// A builder with room for `blobs` blobs (no growth, and no slack, when the count is known).
    pub fn with_capacity(blobs: usize) -> BlobUniverseBuilder {
        BlobUniverseBuilder {
            universe: BlobUniverse {
                entries: Vec::with_capacity(blobs),
                large: HashMap::new(),
            },
        }
    }

    pub fn push(&mut self, digest: Digest, size: u64, modified: SystemTime) {
        let size = match u32::try_from(size) {
            Ok(size) if size != LARGE => size,
            _ => {
                self.universe.large.insert(digest, size);
                LARGE
            }
        };
        let millis = millis_rounded_up(modified).to_le_bytes();
        self.universe.entries.push(BlobEntry {
            digest,
            size: size.to_le_bytes(),
            modified: millis[..6].try_into().expect("6 of 8 bytes"),
        });
    }

    pub fn finish(mut self) -> BlobUniverse {
        let entries = &mut self.universe.entries;
        entries.sort_unstable_by_key(|e| e.digest);
        entries.dedup_by_key(|e| e.digest);
        entries.shrink_to_fit();
        self.universe
    }
}

/// `time` in milliseconds since the epoch, rounded up; times before 1970 are the epoch, and times
/// past 48 bits of milliseconds (the year 10889) that year.
fn millis_rounded_up(time: SystemTime) -> u64 {
    let since = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let millis = since.as_nanos().div_ceil(1_000_000);
    u64::try_from(millis).map_or(MAX_MILLIS, |m| m.min(MAX_MILLIS))
}

const MAX_MILLIS: u64 = (1 << 48) - 1;

fn split(value: u64) -> [u32; 2] {
    [(value >> 32) as u32, value as u32]
}

fn join([high, low]: [u32; 2]) -> u64 {
    (u64::from(high) << 32) | u64::from(low)
}

impl BlobUniverse {
    /// Builds the universe from `(digest, size, modified)` in any order.
    pub fn new(blobs: Vec<(Digest, u64, SystemTime)>) -> BlobUniverse {
        let mut builder = BlobUniverseBuilder::default();
        for (digest, size, modified) in blobs {
            builder.push(digest, size, modified);
        }
        builder.finish()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The index of a stored blob, or `None` when it is not in storage.
    pub fn index(&self, digest: &Digest) -> Option<u32> {
        self.entries
            .binary_search_by(|e| e.digest.cmp(digest))
            .ok()
            .map(|i| u32::try_from(i).expect("more than 2^32 blobs"))
    }

    pub fn digest(&self, index: u32) -> &Digest {
        &self.entries[index as usize].digest
    }

    pub fn size(&self, index: u32) -> u64 {
        let entry = &self.entries[index as usize];
        match u32::from_le_bytes(entry.size) {
            LARGE => self.large[&entry.digest],
            size => u64::from(size),
        }
    }

    /// When the blob was last modified, rounded up to the millisecond.
    pub fn modified(&self, index: u32) -> SystemTime {
        let mut millis = [0; 8];
        millis[..6].copy_from_slice(&self.entries[index as usize].modified);
        SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(u64::from_le_bytes(millis))
    }

    pub fn total_bytes(&self) -> u64 {
        (0..self.entries.len() as u32).map(|i| self.size(i)).sum()
    }
}

/// A link whose digest is in its key.
///
/// 40 bytes: an inventory holds about one link per blob, and a `SystemTime` (16 bytes, aligned to
/// 8) would make each 48. The time is kept to the nanosecond, as listed, because the re-mark tells
/// a link written again from one left alone by its time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    pub digest: Digest,
    /// Nanoseconds since the epoch, in two halves (an alignment of 4 packs it after the digest).
    modified: [u32; 2],
}

impl Link {
    /// A link modified at `modified`. Times before the epoch are the epoch, and times after
    /// 2554 (the end of 64-bit nanoseconds) that year.
    pub fn new(digest: Digest, modified: SystemTime) -> Link {
        let nanos = modified
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        Link {
            digest,
            modified: split(u64::try_from(nanos).unwrap_or(u64::MAX)),
        }
    }

    pub fn modified(&self) -> SystemTime {
        nanos_since_epoch(self.modified)
    }
}

fn nanos_since_epoch(halves: [u32; 2]) -> SystemTime {
    SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(join(halves))
}

/// A repository's `_layers` links. A registry holds about one per blob, so a link to a stored blob
/// is held as the blob's index in the universe and the link's time: 12 bytes instead of a
/// [`Link`]'s 40. A link listed without a universe (the re-mark's listing) or to a blob the universe
/// does not hold (not stored, or another shard's) is held whole; either way, a link is the same
/// link to every consumer, which gets its blob's index from the universe it passes.
///
/// Indices are only valid in the inventory's universe ([`Inventory::replace_blobs`] moves them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayerLinks {
    /// Sorted by blob index (digest order) when the repository is finished.
    stored: Vec<StoredLink>,
    /// Sorted by digest when the repository is finished.
    whole: Vec<Link>,
}

/// A link to a stored blob: the blob's index in the universe and [`Link`]'s time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StoredLink {
    blob: u32,
    modified: [u32; 2],
}

impl StoredLink {
    /// The whole link, its digest from `universe`.
    fn link(&self, universe: &BlobUniverse) -> Link {
        Link {
            digest: *universe.digest(self.blob),
            modified: self.modified,
        }
    }
}

impl LayerLinks {
    /// `links`, by index where `universe` holds their blob, sorted.
    pub fn resolved(links: impl IntoIterator<Item = Link>, universe: &BlobUniverse) -> LayerLinks {
        let mut resolved = LayerLinks::default();
        for link in links {
            resolved.push(link, Some(universe));
        }
        resolved.finish();
        resolved
    }

    /// Adds a listed link, by index when `universe` holds its blob.
    fn push(&mut self, link: Link, universe: Option<&BlobUniverse>) {
        match universe.and_then(|u| u.index(&link.digest)) {
            Some(blob) => push_sparingly(
                &mut self.stored,
                StoredLink {
                    blob,
                    modified: link.modified,
                },
            ),
            None => push_sparingly(&mut self.whole, link),
        }
    }

    fn finish(&mut self) {
        self.stored.sort_unstable_by_key(|l| l.blob);
        self.whole.sort_unstable_by_key(|l| l.digest);
        self.stored.shrink_to_fit();
        self.whole.shrink_to_fit();
    }

    pub fn len(&self) -> usize {
        self.stored.len() + self.whole.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The link at `position` (below [`LayerLinks::len`]) and its blob's index in `universe`
    /// (`None` when the blob is not stored). Positions are stable once the repository is finished.
    pub fn get(&self, position: u32, universe: &BlobUniverse) -> (Link, Option<u32>) {
        let position = position as usize;
        match self.stored.get(position) {
            Some(stored) => (stored.link(universe), Some(stored.blob)),
            None => {
                let link = self.whole[position - self.stored.len()];
                (link, universe.index(&link.digest))
            }
        }
    }

    /// Every link with its blob's index in `universe`, in position order.
    pub fn iter<'a>(
        &'a self,
        universe: &'a BlobUniverse,
    ) -> impl Iterator<Item = (Link, Option<u32>)> + 'a {
        let stored = self.stored.iter().map(|s| (s.link(universe), Some(s.blob)));
        let whole = self.whole.iter().map(|l| (*l, universe.index(&l.digest)));
        stored.chain(whole)
    }

    /// Whether `link` is among these links, with the same modification time (`universe`: the
    /// inventory's).
    pub fn lists(&self, link: &Link, universe: &BlobUniverse) -> bool {
        let stored = universe.index(&link.digest).is_some_and(|blob| {
            holds(
                &self.stored,
                &StoredLink {
                    blob,
                    modified: link.modified,
                },
                |a, b| a.blob.cmp(&b.blob),
            )
        });
        stored || lists(&self.whole, link)
    }

    /// Moves links held by index to another universe, `to` giving a blob's index there from its
    /// index in the one they were listed against. `to` must keep the order of the blobs (the new
    /// universe holds the old one's blobs, and maybe more).
    fn reindex(&mut self, to: impl Fn(u32) -> u32) {
        for link in &mut self.stored {
            link.blob = to(link.blob);
        }
    }

    /// The links' modification times.
    fn modified(&self) -> impl Iterator<Item = SystemTime> + '_ {
        let stored = self.stored.iter().map(|s| nanos_since_epoch(s.modified));
        stored.chain(self.whole.iter().map(Link::modified))
    }
}

/// Whole links, as a listing without a universe holds them.
#[cfg(test)]
impl From<Vec<Link>> for LayerLinks {
    fn from(mut whole: Vec<Link>) -> LayerLinks {
        whole.sort_unstable_by_key(|l| l.digest);
        LayerLinks {
            stored: Vec::new(),
            whole,
        }
    }
}

/// A pre-2.5 signature link below a revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureLink {
    pub revision: Digest,
    pub signature: Digest,
    pub modified: SystemTime,
}

/// A tag's `current/link`, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagCurrent {
    /// What the link says, or why it could not be understood.
    pub target: Result<Digest, DigestError>,
    pub modified: SystemTime,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    pub name: String,
    /// `None` when the tag directory has no `current/link` (a half-written or half-deleted tag).
    pub current: Option<TagCurrent>,
    /// Sorted by digest when listed: a tag pushed at every build (`latest`) has one entry per push.
    pub index: Vec<Link>,
}

impl Tag {
    /// Whether `entry` is among the index entries, with the same modification time.
    pub fn lists_index_entry(&self, entry: &Link) -> bool {
        lists(&self.index, entry)
    }
}

/// The files of one `_uploads/<id>/` directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    pub id: String,
    pub files: Vec<ObjectMeta>,
}

impl Upload {
    /// The last time anything was written to the upload: an upload is as young as its newest file.
    pub fn last_activity(&self) -> SystemTime {
        self.files
            .iter()
            .map(|f| f.modified)
            .max()
            .unwrap_or(SystemTime::UNIX_EPOCH)
    }
}

/// Everything found in one repository.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Repository {
    pub name: String,
    pub layer_links: LayerLinks,
    /// Sorted by digest when listed.
    pub revisions: Vec<Link>,
    /// Sorted by revision and signature when listed.
    pub signatures: Vec<SignatureLink>,
    /// Sorted by name when listed.
    pub tags: Vec<Tag>,
    /// Sorted by ID when listed, each upload's files by key.
    pub uploads: Vec<Upload>,
    /// Empty directories (or directory markers) inside the repository.
    pub markers: Vec<ObjectMeta>,
    /// Objects regsweep does not recognise: never deleted, and they keep the repository alive.
    /// Sorted by key when listed.
    pub unknown: Vec<ObjectMeta>,
}

impl Repository {
    /// Whether anything in the repository was written after `instant`. Empty directories do not
    /// count: a sweep that was interrupted leaves some behind, freshly modified by its deletions.
    pub fn written_since(&self, instant: SystemTime) -> bool {
        let after = |modified: SystemTime| modified > instant;
        let links = |links: &[Link]| links.iter().any(|l| after(l.modified()));
        self.layer_links.modified().any(after)
            || links(&self.revisions)
            || self.signatures.iter().any(|s| after(s.modified))
            || self
                .tags
                .iter()
                .any(|t| links(&t.index) || t.current.as_ref().is_some_and(|c| after(c.modified)))
            || self.uploads.iter().any(|u| after(u.last_activity()))
            || self.unknown.iter().any(|o| after(o.modified))
    }

    /// Names the repository listed under `name` and tidies it ([`Repository::tidy`]).
    fn finish(mut self, name: String) -> Repository {
        self.name = name;
        self.tidy();
        self
    }

    /// Sorts the links (tag index entries too) by digest and the tags by name (signatures, uploads
    /// and unknown objects too), for the lookups below (a repository's listing is compared with an
    /// earlier one object by object), and drops the spare capacity the listing left in its links
    /// and tags (an inventory holds every link of the registry). Objects listed after can be added,
    /// and tidied again.
    fn tidy(&mut self) {
        self.signatures
            .sort_unstable_by_key(|s| (s.revision, s.signature));
        // An upload listed in pieces becomes one, its files in order.
        self.uploads.sort_by(|a, b| a.id.cmp(&b.id));
        self.uploads.dedup_by(|later, earlier| {
            if later.id != earlier.id {
                return false;
            }
            earlier.files.append(&mut later.files);
            true
        });
        for upload in &mut self.uploads {
            upload.files.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        }
        self.unknown.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        self.layer_links.finish();
        self.revisions.sort_unstable_by_key(|l| l.digest);
        // A tag listed in pieces (see `tag_mut`) becomes one.
        self.tags.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        self.tags.dedup_by(|later, earlier| {
            if later.name != earlier.name {
                return false;
            }
            if earlier.current.is_none() {
                earlier.current = later.current.take();
            }
            earlier.index.append(&mut later.index);
            true
        });
        self.revisions.shrink_to_fit();
        self.signatures.shrink_to_fit();
        self.tags.shrink_to_fit();
        for tag in &mut self.tags {
            tag.index.sort_unstable_by_key(|l| l.digest);
            tag.index.shrink_to_fit();
        }
    }

    /// Whether `link` is among the revision links, with the same modification time.
    pub fn lists_revision(&self, link: &Link) -> bool {
        lists(&self.revisions, link)
    }

    /// The tag named `name`.
    pub fn tag(&self, name: &str) -> Option<&Tag> {
        named(&self.tags, name, |t| &t.name).map(|i| &self.tags[i])
    }

    /// Whether `signature` is among the signature links, with the same modification time.
    pub fn lists_signature(&self, signature: &SignatureLink) -> bool {
        holds(&self.signatures, signature, |a, b| {
            (a.revision, a.signature).cmp(&(b.revision, b.signature))
        })
    }

    /// The upload `id`.
    pub fn upload(&self, id: &str) -> Option<&Upload> {
        named(&self.uploads, id, |u| &u.id).map(|i| &self.uploads[i])
    }

    /// Whether `object` is among the unknown objects, with the same size and time.
    pub fn lists_unknown(&self, object: &ObjectMeta) -> bool {
        holds(&self.unknown, object, |a, b| a.key.cmp(&b.key))
    }
}

/// Whether `links` (sorted by digest) holds `link`, with the same modification time.
fn lists(links: &[Link], link: &Link) -> bool {
    holds(links, link, |a, b| a.digest.cmp(&b.digest))
}

/// The position of the item named `name` among `items`, sorted by `name_of`: a binary search.
pub(crate) fn named<T>(items: &[T], name: &str, name_of: fn(&T) -> &String) -> Option<usize> {
    items
        .binary_search_by(|item| name_of(item).as_str().cmp(name))
        .ok()
}

/// Whether `items`, sorted by `order`, hold `item` itself (all of it equal, its time too): a
/// binary search, since a repository may hold millions of links and the re-mark looks each of them
/// up. On unsorted items it can only miss, and a miss counts an object as new: it keeps more,
/// never less.
fn holds<T: PartialEq>(items: &[T], item: &T, order: impl Fn(&T, &T) -> Ordering) -> bool {
    items
        .binary_search_by(|candidate| order(candidate, item))
        .is_ok_and(|i| items[i] == *item)
}

/// The result of a scan.
#[derive(Debug, Default)]
pub struct Inventory {
    /// Replaced only by [`Inventory::replace_blobs`]: layer links name their blob by its index.
    pub blobs: BlobUniverse,
    /// Sorted by name.
    pub repositories: Vec<Repository>,
    /// Empty directories outside any repository (blob directories, namespaces).
    pub markers: Vec<ObjectMeta>,
    /// Objects outside any repository that regsweep does not recognise (kept).
    pub unknown: Vec<ObjectMeta>,
    /// Multipart uploads in progress under `repositories/` (S3 only).
    pub multipart_uploads: Vec<MultipartUpload>,
    /// Tag links listed larger than a link can be: recorded as corrupt, never read.
    pub oversize_tag_links: HashSet<String>,
}

impl Inventory {
    /// The repository named `name`.
    pub fn repository(&self, name: &str) -> Option<&Repository> {
        self.repository_index(name).map(|i| &self.repositories[i])
    }

    /// Replaces the universe by `universe`, which holds every blob of the one it replaces (and
    /// maybe more: a shard's, grown by the state's live blobs), and moves the layer links held by
    /// index to it.
    pub fn replace_blobs(&mut self, universe: BlobUniverse) {
        let replaced = std::mem::replace(&mut self.blobs, universe);
        for repo in &mut self.repositories {
            repo.layer_links.reindex(|i| {
                self.blobs
                    .index(replaced.digest(i))
                    .expect("the new universe holds the blobs of the one it replaces")
            });
        }
    }

    /// The index of the repository named `name` in [`Inventory::repositories`].
    pub fn repository_index(&self, name: &str) -> Option<usize> {
        named(&self.repositories, name, |r| &r.name)
    }
}

/// A link as it is listed, for a listing's filter ([`list_repositories`]): which of a repository's
/// links to hold.
#[derive(Debug, Clone, Copy)]
pub enum Listed<'a> {
    LayerLink(&'a Link),
    Revision(&'a Link),
    /// A tag's `current/link`, not read yet.
    TagCurrent {
        tag: &'a str,
        modified: SystemTime,
    },
    TagIndexEntry {
        tag: &'a str,
        entry: &'a Link,
    },
}

/// Checks, before regsweep writes anything (its run lock), that `storage` holds a registry whose
/// listings can be trusted: a mistyped root must not receive a lock, let alone a sweep.
pub async fn check_registry(storage: &Arc<dyn Storage>) -> Result<(), ScanError> {
    storage.check_listing(layout::REPOSITORIES).await?;
    let top = storage.list_dir(layout::V2).await?;
    if top.objects.is_empty() && top.prefixes.is_empty() {
        return Err(ScanError::NotARegistry {
            root: storage.to_string(),
        });
    }
    Ok(())
}

/// Lists the whole registry below `storage` with at most `concurrency` requests in flight.
pub async fn scan(storage: &Arc<dyn Storage>, concurrency: usize) -> Result<Inventory, ScanError> {
    scan_shard(storage, concurrency, &Shard::WHOLE, SystemTime::UNIX_EPOCH).await
}

/// [`scan`] for the sweep of `shard`: only the shard's blobs are listed. Every repository still
/// is (what it references may lie in any shard, and the sweep must see what was written since the
/// mark), but of the repositories another shard owns, only the `_layers` links modified after
/// `cutoff` are kept (the others, about one per blob, are never needed) and no tag link is read.
pub async fn scan_shard(
    storage: &Arc<dyn Storage>,
    concurrency: usize,
    shard: &Shard,
    cutoff: SystemTime,
) -> Result<Inventory, ScanError> {
    storage.check_listing(layout::REPOSITORIES).await?;
    let top = storage.list_dir(layout::V2).await?;
    if top.objects.is_empty() && top.prefixes.is_empty() {
        return Err(ScanError::NotARegistry {
            root: storage.to_string(),
        });
    }
    let mut inventory = Inventory::default();
    inventory.unknown.extend(top.objects);

    let mut ranges = if shard.is_whole() {
        blob_ranges(storage)
    } else {
        None
    };
    let split = if ranges.is_some() {
        None
    } else {
        Some(layout::SHA256_BLOBS)
    };
    let ((blob_prefixes, blob_strays), (repository_prefixes, repository_strays)) =
        if shard.is_whole() {
            tokio::try_join!(
                prefixes_to_list(storage, layout::BLOBS, split),
                prefixes_to_list(storage, layout::REPOSITORIES, None),
            )?
        } else {
            let own = shard.blob_shards().map(layout::blob_shard).collect();
            (
                (own, Vec::new()),
                prefixes_to_list(storage, layout::REPOSITORIES, None).await?,
            )
        };
    inventory.unknown.extend(blob_strays);
    inventory.unknown.extend(repository_strays);
    // Blobs first, then repositories: a layer link is held by its blob's index in the finished
    // universe (see `LayerLinks`).
    let mut blobs = BlobUniverseBuilder::default();
    let mut listings: Vec<BoxStream<'static, Result<ObjectMeta, StorageError>>> = Vec::new();
    for prefix in &blob_prefixes {
        match ranges.take_if(|_| prefix == layout::SHA256_BLOBS) {
            Some(ranges) => listings.extend(ranges),
            None => listings.push(storage.list(prefix)),
        }
    }
    // Each object is taken as its listing page arrives: no listing is held whole.
    let mut objects = stream::iter(listings).flatten_unordered(concurrency.max(1));
    while let Some(object) = objects.try_next().await? {
        match layout::parse_blob_key(&object.key) {
            BlobObject::Data(digest) => blobs.push(digest, object.size, object.modified),
            BlobObject::DirMarker => inventory.markers.push(object),
            BlobObject::Unknown => inventory.unknown.push(object),
        }
    }
    drop(objects);
    inventory.blobs = blobs.finish();

    let keep = |name: &str, listed: Listed<'_>| match listed {
        Listed::LayerLink(link) => link.modified() > cutoff || shard.owns_repository(name),
        _ => true,
    };
    let mut listing = RepositoryListing::new(&keep, Some(&inventory.blobs));
    listing
        .list(storage, &repository_prefixes, concurrency)
        .await?;
    inventory.markers.append(&mut listing.markers);
    inventory.unknown.append(&mut listing.unknown);
    inventory.repositories = listing.repositories();
    inventory.multipart_uploads = storage.multipart_uploads(layout::REPOSITORIES).await?;
    read_tag_links(
        storage,
        &mut inventory.repositories,
        &|repo| shard.owns_repository(&repo.name),
        &listing.oversize_links,
        concurrency,
    )
    .await?;
    inventory.oversize_tag_links = listing.oversize_links;
    Ok(inventory)
}

/// Lists the repositories again (for the re-mark before the sweep), without reading any tag link:
/// every tag's `current` target is left unread (an error), for the caller to fill in; also returns
/// the tag links listed larger than a link can be (recorded as corrupt, never to be read).
///
/// Only the links `keep` accepts (given the repository's name) are held, and only the tags with a
/// link held: a second copy of every link, about one per blob, would double what the run holds.
/// Every repository listed is returned, with nothing held in it if need be.
pub async fn list_repositories(
    storage: &Arc<dyn Storage>,
    concurrency: usize,
    keep: &dyn Fn(&str, Listed<'_>) -> bool,
) -> Result<(Vec<Repository>, HashSet<String>), ScanError> {
    let (prefixes, _) = prefixes_to_list(storage, layout::REPOSITORIES, None).await?;
    let mut listing = RepositoryListing::new(keep, None);
    listing.list(storage, &prefixes, concurrency).await?;
    Ok((listing.repositories(), listing.oversize_links))
}

/// How many key ranges the sha256 blobs are listed in, where the backend can start a listing at a
/// key: enough to keep several requests in flight, few enough that the page each range wastes at
/// its end stays small beside the listing (256 shard listings would cost 256 requests even for a
/// registry of a few blobs).
const BLOB_RANGES: u16 = 16;

/// The listings of [`layout::SHA256_BLOBS`] split into [`BLOB_RANGES`] key ranges, or `None` when
/// the backend cannot start a listing at a key (then each of the 256 shards is listed).
///
/// Range `r` holds the keys after `…/sha256/<boundary r>` up to and including `…/sha256/<boundary
/// r+1>`: the ranges partition the key space, so no key is listed twice or missed.
fn blob_ranges(
    storage: &Arc<dyn Storage>,
) -> Option<Vec<BoxStream<'static, Result<ObjectMeta, StorageError>>>> {
    let boundary = |r: u16| format!("{}{:02x}", layout::SHA256_BLOBS, r * 256 / BLOB_RANGES);
    let mut ranges = Vec::with_capacity(usize::from(BLOB_RANGES));
    for r in 0..BLOB_RANGES {
        let listing = if r == 0 {
            storage.list(layout::SHA256_BLOBS)
        } else {
            storage.list_after(layout::SHA256_BLOBS, &boundary(r))?
        };
        let listing = match (r + 1 < BLOB_RANGES).then(|| boundary(r + 1)) {
            // The listing is dropped at the first key past the range: no further page is asked.
            Some(end) => listing
                .take_while(move |item| {
                    std::future::ready(item.as_ref().map_or(true, |o| o.key <= end))
                })
                .boxed(),
            None => listing,
        };
        ranges.push(in_order(listing));
    }
    Some(ranges)
}

/// Fails a ranged listing whose keys do not come in strictly increasing order: a range stops at
/// its first key past its end, and a blob it missed would make a manifest look absent (its tag
/// broken, its layers garbage). A tripwire behind [`Storage::list_after`]'s contract.
fn in_order(
    listing: BoxStream<'static, Result<ObjectMeta, StorageError>>,
) -> BoxStream<'static, Result<ObjectMeta, StorageError>> {
    let mut last: Option<String> = None;
    listing
        .map(move |item| {
            let object = item?;
            if let Some(previous) = last.as_deref().filter(|p| *p >= object.key.as_str()) {
                return Err(StorageError::ListFailed {
                    key: object.key,
                    reason: format!(
                        "listed after {previous}: the listing is not in order, so it cannot be \
                         split into key ranges"
                    ),
                });
            }
            last = Some(object.key.clone());
            Ok(object)
        })
        .boxed()
}

/// The prefixes to list recursively below `parent` — its sub-prefixes, with `split` (if any) split
/// one level further (the 256 blob shards) — and the stray objects found on the way.
async fn prefixes_to_list(
    storage: &Arc<dyn Storage>,
    parent: &str,
    split: Option<&str>,
) -> Result<(Vec<String>, Vec<ObjectMeta>), StorageError> {
    let listing = storage.list_dir(parent).await?;
    let mut strays = listing.objects;
    let mut prefixes = Vec::new();
    for prefix in listing.prefixes {
        if Some(prefix.as_str()) == split {
            let shards = storage.list_dir(&prefix).await?;
            strays.extend(shards.objects);
            prefixes.extend(shards.prefixes);
        } else {
            prefixes.push(prefix);
        }
    }
    Ok((prefixes, strays))
}

/// Pushes with a quarter of spare room instead of doubling: the layer links of every repository are
/// held at once during the scan (about one per blob), and doubling would leave up to half of each
/// vector spare until its repository is complete.
fn push_sparingly<T>(items: &mut Vec<T>, item: T) {
    if items.len() == items.capacity() {
        items.reserve_exact((items.len() / 4).max(4));
    }
    items.push(item);
}

/// The repositories of a listing below `repositories/`, as its objects arrive.
struct RepositoryListing<'a> {
    repositories: BTreeMap<String, Repository>,
    /// For each prefix listed, the repository of its last object. A listing gives a repository's
    /// objects one after another (but for a repository nested in another, in a directory walk), so
    /// the repository a listing moves on from is tidied then: its spare room is not held while
    /// the rest of the registry is listed. One met again is added to, and tidied again.
    last: Vec<String>,
    /// Tag links refused by their listed size: never read into memory.
    oversize_links: HashSet<String>,
    /// Empty directories outside any repository.
    markers: Vec<ObjectMeta>,
    /// Objects outside any repository that regsweep does not recognise.
    unknown: Vec<ObjectMeta>,
    /// Which links to hold.
    keep: &'a dyn Fn(&str, Listed<'_>) -> bool,
    /// The finished universe, to hold layer links by index ([`LayerLinks`]).
    universe: Option<&'a BlobUniverse>,
}

impl<'a> RepositoryListing<'a> {
    fn new(
        keep: &'a dyn Fn(&str, Listed<'_>) -> bool,
        universe: Option<&'a BlobUniverse>,
    ) -> RepositoryListing<'a> {
        RepositoryListing {
            repositories: BTreeMap::new(),
            last: Vec::new(),
            oversize_links: HashSet::new(),
            markers: Vec::new(),
            unknown: Vec::new(),
            keep,
            universe,
        }
    }

    /// Lists `prefixes` recursively, `concurrency` at a time, each object taken as its page
    /// arrives (no listing is held whole).
    async fn list(
        &mut self,
        storage: &Arc<dyn Storage>,
        prefixes: &[String],
        concurrency: usize,
    ) -> Result<(), ScanError> {
        self.last = vec![String::new(); prefixes.len()];
        let listings = prefixes.iter().enumerate().map(|(listing, prefix)| {
            storage
                .list(prefix)
                .map(move |object| object.map(|object| (listing, object)))
        });
        let mut objects = stream::iter(listings).flatten_unordered(concurrency.max(1));
        while let Some((listing, object)) = objects.try_next().await? {
            self.add(listing, object);
        }
        Ok(())
    }

    /// The repositories listed, finished, by name (taken: the listing holds none after).
    fn repositories(&mut self) -> Vec<Repository> {
        std::mem::take(&mut self.repositories)
            .into_iter()
            .map(|(name, repository)| repository.finish(name))
            .collect()
    }

    /// Adds an object of the `listing`th prefix.
    fn add(&mut self, listing: usize, object: ObjectMeta) {
        let keep = self.keep;
        let parsed = layout::parse_repository_key(&object.key);
        let Some(name) = parsed.repository else {
            match parsed.object {
                RepositoryObject::DirMarker => self.markers.push(object),
                _ => self.unknown.push(object),
            }
            return;
        };
        let last = &mut self.last[listing];
        if last != name {
            if let Some(previous) = self.repositories.get_mut(last.as_str()) {
                previous.tidy();
            }
            last.clear();
            last.push_str(name);
        }
        let repositories = &mut self.repositories;
        // Looked up before inserting: an owned key per object would be one allocation per object.
        // The name is the key's alone until the repository is finished: one copy per repository.
        if !repositories.contains_key(name) {
            repositories.insert(name.to_owned(), Repository::default());
        }
        let repository = repositories.get_mut(name).expect("inserted above");
        let modified = object.modified;
        match parsed.object {
            RepositoryObject::LayerLink(digest) => {
                let link = Link::new(digest, modified);
                if keep(name, Listed::LayerLink(&link)) {
                    repository.layer_links.push(link, self.universe);
                }
            }
            RepositoryObject::RevisionLink(digest) => {
                let link = Link::new(digest, modified);
                if keep(name, Listed::Revision(&link)) {
                    repository.revisions.push(link);
                }
            }
            RepositoryObject::RevisionSignature {
                revision,
                signature,
            } => repository.signatures.push(SignatureLink {
                revision,
                signature,
                modified,
            }),
            RepositoryObject::TagCurrent { tag } => {
                if !keep(name, Listed::TagCurrent { tag, modified }) {
                    return;
                }
                let target = if object.size > layout::MAX_LINK_BYTES {
                    self.oversize_links.insert(object.key.clone());
                    Err(DigestError::Malformed(format!(
                        "<{} bytes, not read: a link holds at most {}>",
                        object.size,
                        layout::MAX_LINK_BYTES
                    )))
                } else {
                    // Filled in by `read_tag_links`.
                    Err(DigestError::Malformed(String::new()))
                };
                tag_mut(repository, tag).current = Some(TagCurrent { target, modified })
            }
            RepositoryObject::TagIndex { tag, digest } => {
                let entry = Link::new(digest, modified);
                if keep(name, Listed::TagIndexEntry { tag, entry: &entry }) {
                    tag_mut(repository, tag).index.push(entry);
                }
            }
            RepositoryObject::Upload { id } => {
                // An upload's files are listed one after another, but for a directory walk's
                // `hashstates/`, which may come after other uploads: a piece met again is added
                // again and merged when the repository is tidied (as tags are, see `tag_mut`).
                match repository.uploads.last_mut().filter(|u| u.id == id) {
                    Some(upload) => upload.files.push(object),
                    None => repository.uploads.push(Upload {
                        id: id.to_owned(),
                        files: vec![object],
                    }),
                }
            }
            RepositoryObject::DirMarker => repository.markers.push(object),
            RepositoryObject::Unknown => repository.unknown.push(object),
        }
    }
}

/// The tag `name` of a repository being listed. Tags are held in the listing's order and sorted
/// when the repository is tidied ([`Repository::tidy`]): a listing gives a tag's objects one
/// after another (S3's is sorted, a directory walk goes depth first), so the last tag is nearly
/// always the one, and a tag met again further on is added again and merged then. Inserting each
/// in order instead costs a quadratic number of moves when a directory's order is a hash's (ext4),
/// in a repository of 100,000 tags.
fn tag_mut<'r>(repository: &'r mut Repository, name: &str) -> &'r mut Tag {
    if repository.tags.last().is_none_or(|t| t.name != name) {
        repository.tags.push(Tag {
            name: name.to_owned(),
            current: None,
            index: Vec::new(),
        });
    }
    repository.tags.last_mut().expect("pushed above")
}

/// Reads every tag's `current/link` of the repositories `only` accepts but those listed larger than
/// a link can be (`oversize`, already recorded as corrupt), concurrently. A link that cannot be parsed is recorded as such (the mark
/// refuses to go on with it); one that cannot be read at all fails the scan.
pub async fn read_tag_links(
    storage: &Arc<dyn Storage>,
    repositories: &mut [Repository],
    only: &dyn Fn(&Repository) -> bool,
    oversize: &HashSet<String>,
    concurrency: usize,
) -> Result<(), StorageError> {
    let keys: Vec<(usize, usize, String)> = repositories
        .iter()
        .enumerate()
        .filter(|(_, repo)| only(repo))
        .flat_map(|(r, repo)| {
            repo.tags.iter().enumerate().filter_map(move |(t, tag)| {
                tag.current
                    .as_ref()
                    .map(|_| (r, t, layout::tag_current_link(&repo.name, &tag.name)))
            })
        })
        .filter(|(_, _, key)| !oversize.contains(key))
        .collect();
    let mut reads = stream::iter(keys.into_iter().map(|(r, t, key)| async move {
        match storage.get(&key).await {
            // Grown past the limit since the listing: still refused, not parsed.
            Ok(content) if content.len() as u64 > layout::MAX_LINK_BYTES => Ok((
                r,
                t,
                Some(Err(DigestError::Malformed(format!(
                    "<{} bytes: a link holds at most {}>",
                    content.len(),
                    layout::MAX_LINK_BYTES
                )))),
            )),
            Ok(content) => Ok((r, t, Some(layout::parse_link(&content)))),
            // Deleted since the listing (an untag racing the scan): the tag has no current link.
            Err(StorageError::NotFound { .. }) => Ok((r, t, None)),
            Err(e) => Err(e),
        }
    }))
    .buffer_unordered(concurrency.max(1));
    while let Some((r, t, target)) = reads.try_next().await? {
        let tag = &mut repositories[r].tags[t];
        match target {
            Some(target) => {
                if let Some(current) = tag.current.as_mut() {
                    current.target = target;
                }
            }
            None => tag.current = None,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::Path;

    use super::*;
    use crate::storage::local::LocalStorage;

    fn write(root: &Path, key: &str, content: &str) {
        let path = root.join(key);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }

    #[tokio::test]
    async fn a_ranged_listing_out_of_order_fails() {
        let meta = |key: &str| {
            Ok(ObjectMeta {
                key: key.to_owned(),
                size: 0,
                modified: SystemTime::UNIX_EPOCH,
            })
        };
        let sorted = in_order(stream::iter([meta("a"), meta("b"), meta("c")]).boxed());
        assert_eq!(sorted.try_collect::<Vec<_>>().await.unwrap().len(), 3);
        let unsorted = in_order(stream::iter([meta("a"), meta("c"), meta("b")]).boxed());
        let error = unsorted.try_collect::<Vec<_>>().await.unwrap_err();
        assert!(error.to_string().contains("b: listed after c"), "{error}");
    }

    #[test]
    fn a_link_keeps_its_time_to_the_nanosecond_in_40_bytes() {
        let digest = Digest::from_bytes([3; 32]);
        let listed =
            SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(1_764_000_000_123_456_789);
        let link = Link::new(digest, listed);
        assert_eq!(link.modified(), listed);
        let later = Link::new(digest, listed + std::time::Duration::from_nanos(1));
        assert_ne!(
            later, link,
            "a link written again a nanosecond later is new"
        );
        let before_the_epoch = SystemTime::UNIX_EPOCH - std::time::Duration::from_secs(1);
        assert_eq!(
            Link::new(digest, before_the_epoch).modified(),
            SystemTime::UNIX_EPOCH
        );
        assert_eq!(std::mem::size_of::<Link>(), 40);
    }

    #[test]
    fn the_universe_keeps_large_sizes_and_never_makes_a_blob_older() {
        let early =
            SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(1_700_000_000_000_000_001);
        let big = Digest::from_bytes([2; 32]);
        let small = Digest::from_bytes([1; 32]);
        let universe = BlobUniverse::new(vec![
            (big, 5 << 30, early),
            (small, 7, SystemTime::UNIX_EPOCH),
            (big, 5 << 30, early),
        ]);
        assert_eq!(universe.len(), 2);
        assert_eq!(universe.index(&small), Some(0));
        assert_eq!(universe.size(1), 5 << 30);
        assert_eq!(universe.size(0), 7);
        assert_eq!(universe.total_bytes(), (5 << 30) + 7);
        // Rounded up to the millisecond: never before the time listed.
        assert!(universe.modified(1) >= early);
        assert!(universe.modified(1) < early + std::time::Duration::from_millis(1));
        assert_eq!(universe.modified(0), SystemTime::UNIX_EPOCH);
        assert_eq!(size_of::<BlobEntry>(), 42);
        // Past 48 bits of milliseconds: still in the future, never older.
        let far = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1 << 40);
        let universe = BlobUniverse::new(vec![(small, 1, far)]);
        assert!(universe.modified(0) > SystemTime::now());
    }

    #[test]
    fn a_finished_repository_finds_its_links_by_digest_and_time() {
        let at = |s| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(s);
        let link = |byte: u8, s| Link::new(Digest::from_bytes([byte; 32]), at(s));
        let tag = |name: &str| Tag {
            name: name.to_owned(),
            current: None,
            index: Vec::new(),
        };
        // Blobs 1, 5 and 9 are stored: their links are held by index, 3 and 7 whole.
        let universe = BlobUniverse::new(
            [9, 1, 5]
                .map(|b| (Digest::from_bytes([b; 32]), 10, at(0)))
                .to_vec(),
        );
        let mut layer_links = LayerLinks::default();
        for b in [9, 3, 7, 1, 5] {
            layer_links.push(link(b, u64::from(b)), Some(&universe));
        }
        let repository = Repository {
            name: "app".to_owned(),
            layer_links,
            revisions: vec![link(8, 1), link(2, 1)],
            // `a` listed in two pieces, its current link and then, after others, an index entry.
            tags: vec![
                Tag {
                    current: Some(TagCurrent {
                        target: Ok(Digest::from_bytes([8; 32])),
                        modified: at(1),
                    }),
                    ..tag("a")
                },
                tag("c"),
                tag("b"),
                Tag {
                    index: vec![link(8, 1), link(6, 1)],
                    ..tag("a")
                },
            ],
            ..Repository::default()
        }
        .finish("app".to_owned());
        let digests =
            |links: &[Link]| -> Vec<u8> { links.iter().map(|l| l.digest.as_bytes()[0]).collect() };
        let layers = &repository.layer_links;
        let held: Vec<(Link, Option<u32>)> = layers.iter(&universe).collect();
        // Stored blobs first, by index (digest order), then the others by digest; every link
        // keeps its time to the nanosecond.
        let expected = [
            (1, Some(0)),
            (5, Some(1)),
            (9, Some(2)),
            (3, None),
            (7, None),
        ]
        .map(|(b, index)| (link(b, u64::from(b)), index));
        assert_eq!(held, expected);
        for (position, expected) in (0..).zip(expected) {
            assert_eq!(layers.get(position, &universe), expected);
            assert!(layers.lists(&expected.0, &universe));
        }
        assert_eq!(layers.len(), 5);
        // Written again since (another time), or never listed.
        assert!(!layers.lists(&link(5, 6), &universe));
        assert!(!layers.lists(&link(3, 4), &universe));
        assert!(!layers.lists(&link(4, 4), &universe));
        assert_eq!(digests(&repository.revisions), vec![2, 8]);
        assert!(repository.lists_revision(&link(8, 1)));
        assert!(
            !repository.lists_revision(&link(9, 9)),
            "a layer link is no revision"
        );
        let names: Vec<&str> = repository.tags.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        let a = repository.tag("a").unwrap();
        assert!(a.current.is_some());
        assert_eq!(a.index, [link(6, 1), link(8, 1)]);
        assert!(a.lists_index_entry(&link(8, 1)) && a.lists_index_entry(&link(6, 1)));
        assert!(
            !a.lists_index_entry(&link(8, 2)),
            "the entry written again since"
        );
        assert_eq!(repository.tag("b").map(|t| t.name.as_str()), Some("b"));
        assert!(repository.tag("d").is_none());
    }

    #[test]
    fn a_repository_tidied_when_its_listing_moves_on_is_the_same_when_met_again() {
        let d = |byte: u8| Digest::from_bytes([byte; 32]);
        let at = |s| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(s);
        let object = |key: String, s| ObjectMeta {
            key,
            size: 71,
            modified: at(s),
        };
        let upload =
            |id: &str, file: &str| format!("{}_uploads/{id}/{file}", layout::repository("a"));
        // Repository `a`, with `a/b` nested in it, as a directory walk may give them: `a`'s
        // objects before and after `a/b`'s, and a tag, an upload and layer links in pieces.
        let walked = [
            object(layout::layer_link("a", &d(9)), 1),
            object(layout::tag_current_link("a", "v1"), 2),
            object(upload("u", "hashstates/sha256/0"), 3),
            object(layout::layer_link("a/b", &d(4)), 4),
            object(layout::layer_link("a/b", &d(2)), 5),
            object(layout::layer_link("a", &d(3)), 6),
            object(layout::tag_index_link("a", "v1", &d(7)), 7),
            object(upload("t", "data"), 8),
            object(upload("u", "data"), 9),
            object(layout::layer_link("a", &d(1)), 10),
        ];
        let universe = BlobUniverse::new([1, 2, 9].map(|b| (d(b), 10, at(0))).to_vec());
        let keep = |_: &str, _: Listed<'_>| true;
        let listed = |order: &mut dyn Iterator<Item = &ObjectMeta>| {
            let mut listing = RepositoryListing::new(&keep, Some(&universe));
            listing.last = vec![String::new()];
            for object in order {
                listing.add(0, object.clone());
            }
            listing.repositories()
        };
        let mut sorted: Vec<&ObjectMeta> = walked.iter().collect();
        sorted.sort_by(|a, b| a.key.cmp(&b.key));
        let repositories = listed(&mut walked.iter());
        assert_eq!(repositories, listed(&mut sorted.into_iter()));
        let [a, b] = &repositories[..] else {
            panic!("{repositories:?}")
        };
        let digests = |r: &Repository| -> Vec<Digest> {
            r.layer_links
                .iter(&universe)
                .map(|(l, _)| l.digest)
                .collect()
        };
        assert_eq!(digests(a), [d(1), d(9), d(3)], "stored, then whole");
        assert_eq!(digests(b), [d(2), d(4)]);
        assert_eq!(a.tags.len(), 1);
        assert!(a.tags[0].current.is_some() && a.tags[0].index.len() == 1);
        let uploads: Vec<(&str, usize)> = a
            .uploads
            .iter()
            .map(|u| (u.id.as_str(), u.files.len()))
            .collect();
        assert_eq!(uploads, [("t", 1), ("u", 2)]);
    }

    #[test]
    fn a_finished_repository_finds_its_uploads_signatures_and_unknown_objects() {
        let at = |s| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(s);
        let object = |key: &str, s| ObjectMeta {
            key: key.to_owned(),
            size: 1,
            modified: at(s),
        };
        let upload = |id: &str, files: &[&str]| Upload {
            id: id.to_owned(),
            files: files
                .iter()
                .map(|f| object(&format!("{id}/{f}"), 1))
                .collect(),
        };
        let signature = |revision: u8, signature: u8, s| SignatureLink {
            revision: Digest::from_bytes([revision; 32]),
            signature: Digest::from_bytes([signature; 32]),
            modified: at(s),
        };
        let repository = Repository {
            // `u2` listed in two pieces.
            uploads: vec![
                upload("u3", &["data"]),
                upload("u2", &["startedat"]),
                upload("u1", &["data"]),
                upload("u2", &["data", "hashstates/sha256/0"]),
            ],
            signatures: vec![signature(2, 1, 1), signature(1, 9, 1), signature(1, 3, 1)],
            unknown: vec![object("z", 1), object("a", 2), object("m", 3)],
            ..Repository::default()
        }
        .finish("app".to_owned());
        let ids: Vec<&str> = repository.uploads.iter().map(|u| u.id.as_str()).collect();
        assert_eq!(ids, ["u1", "u2", "u3"]);
        let u2 = repository.upload("u2").unwrap();
        assert_eq!(
            u2.files,
            upload("u2", &["data", "hashstates/sha256/0", "startedat"]).files
        );
        assert!(repository.upload("u4").is_none());
        for s in [signature(1, 3, 1), signature(1, 9, 1), signature(2, 1, 1)] {
            assert!(repository.lists_signature(&s));
        }
        assert!(
            !repository.lists_signature(&signature(1, 9, 2)),
            "written again"
        );
        assert!(!repository.lists_signature(&signature(2, 3, 1)));
        for o in [object("a", 2), object("m", 3), object("z", 1)] {
            assert!(repository.lists_unknown(&o));
        }
        assert!(!repository.lists_unknown(&object("m", 4)), "written again");
        assert!(!repository.lists_unknown(&object("b", 2)));
    }

    #[tokio::test]
    async fn groups_every_object_by_repository_and_kind() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let a = Digest::from_bytes([0xaa; 32]);
        let b = Digest::from_bytes([0xbb; 32]);
        write(root, &layout::blob_data(&a), "{}");
        write(root, &layout::blob_data(&b), "layer");
        write(root, &format!("{}/stray", layout::SHA256_BLOBS), "?");
        write(root, &layout::layer_link("foo", &b), &b.to_string());
        write(root, &layout::revision_link("foo/bar", &a), &a.to_string());
        write(
            root,
            &layout::tag_current_link("foo/bar", "v1"),
            &a.to_string(),
        );
        write(
            root,
            &layout::tag_index_link("foo/bar", "v1", &a),
            &a.to_string(),
        );
        write(
            root,
            &layout::tag_current_link("foo/bar", "bad"),
            "sha256:nope",
        );
        let upload = format!("{}_uploads/u-1/", layout::repository("foo"));
        write(root, &format!("{upload}data"), "partial");
        write(root, &format!("{upload}startedat"), "2026-01-01T00:00:00Z");
        write(
            root,
            &format!("{}_junk", layout::repository("foo/bar")),
            "?",
        );
        fs::create_dir_all(root.join(layout::REPOSITORIES).join("empty/_layers")).unwrap();
        fs::create_dir_all(root.join(layout::REPOSITORIES).join("namespace")).unwrap();

        let storage: Arc<dyn Storage> =
            Arc::new(LocalStorage::open(root, &Default::default()).unwrap());
        let inventory = scan(&storage, 4).await.unwrap();

        assert_eq!(inventory.blobs.len(), 2);
        assert_eq!(inventory.blobs.index(&a), Some(0));
        assert_eq!(inventory.blobs.size(1), 5);
        let names: Vec<&str> = inventory
            .repositories
            .iter()
            .map(|r| r.name.as_str())
            .collect();
        assert_eq!(names, ["empty", "foo", "foo/bar"]);
        let [empty, foo, bar] = &inventory.repositories[..] else {
            unreachable!()
        };
        assert_eq!(empty.markers.len(), 1);
        assert_eq!(foo.layer_links.len(), 1);
        assert_eq!(foo.uploads.len(), 1);
        assert_eq!(foo.uploads[0].files.len(), 2);
        assert_eq!(bar.revisions.len(), 1);
        assert_eq!(bar.unknown.len(), 1);
        let tags: Vec<(&str, bool)> = bar
            .tags
            .iter()
            .map(|t| (t.name.as_str(), t.current.as_ref().unwrap().target.is_ok()))
            .collect();
        assert_eq!(tags, [("bad", false), ("v1", true)]);
        assert_eq!(bar.tags[1].index.len(), 1);
        assert_eq!(inventory.unknown.len(), 1, "{:?}", inventory.unknown);
        assert_eq!(inventory.markers.len(), 1, "{:?}", inventory.markers);
    }

    #[tokio::test]
    async fn oversize_tag_links_are_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let a = Digest::from_bytes([0xaa; 32]);
        write(root, &layout::blob_data(&a), "{}");
        write(root, &layout::tag_current_link("app", "ok"), &a.to_string());
        let huge = "1".repeat(layout::MAX_LINK_BYTES as usize + 1);
        write(root, &layout::tag_current_link("app", "huge"), &huge);

        let counter = crate::storage::requests::RequestCounter::default();
        let storage: Arc<dyn Storage> = Arc::new(LocalStorage::open(root, &counter).unwrap());
        let inventory = scan(&storage, 4).await.unwrap();
        let tags = &inventory.repositories[0].tags;
        assert_eq!(tags[0].name, "huge");
        let error = tags[0]
            .current
            .as_ref()
            .unwrap()
            .target
            .clone()
            .unwrap_err();
        assert!(
            error.to_string().contains("1025 bytes, not read"),
            "{error}"
        );
        assert_eq!(tags[1].current.as_ref().unwrap().target, Ok(a));
        // Only the small link was read.
        assert_eq!(counter.snapshot().get, 1);
    }

    #[tokio::test]
    async fn refuses_a_root_that_is_no_registry() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("file"), "x").unwrap();
        let storage: Arc<dyn Storage> =
            Arc::new(LocalStorage::open(dir.path(), &Default::default()).unwrap());
        let err = scan(&storage, 4).await.unwrap_err();
        assert!(matches!(err, ScanError::NotARegistry { .. }), "{err}");
    }
}
