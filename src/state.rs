//! Mark state: the result of `regsweep mark`, persisted for `regsweep sweep` (possibly N of them,
//! one per [`Shard`](crate::shard::Shard), on other machines, later).
//!
//! It holds what the sweep cannot see for itself: which blobs were live, and, per repository,
//! which manifests and `_layers` links were — plus the instants and options the mark ran with, so
//! that a sweep with other options, on another storage, or long after, is refused rather than
//! trusted. What was written since the mark is the sweep's business ([`crate::gc`]).
//!
//! # Format 1
//! All integers little-endian.
//!
//! | bytes | what |
//! |---|---|
//! | 8 | magic `RGSWMARK` |
//! | 4 | format version, `1` |
//! | 4 + n | header length, then the header as UTF-8 JSON ([`StateHeader`]) |
//! | 8 + 32·k | count of live blobs, then their raw sha256 digests, strictly ascending |
//! | 8 + … | count of repositories, then each, by ascending name: name length (4) and UTF-8 name; length (4) and portable roaring bitmap of its live manifests; length (4) and roaring bitmap of its live `_layers` links — both as indices into the live blobs; count (4) and its [`Facts`] (8 each, ascending); count (4) and what its tags and live manifests named that the listing did not hold (32 each); length (4) and roaring bitmap of its live manifests that named such things |
//! | 32 | SHA-256 of every byte before it |
//!
//! A reader checks the magic, the version and the checksum before it believes anything else.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use roaring::RoaringBitmap;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use thiserror::Error;

use crate::digest::Digest;
use crate::layout;
use crate::mark::{ManifestCatalog, MarkSet, RepositoryMarks};
use crate::metrics;
use crate::scan::{self, BlobUniverse, BlobUniverseBuilder, Inventory, Repository};
use crate::storage::{PutCondition, Storage, StorageError};

/// The format this build writes and reads.
pub const FORMAT: u32 = 1;
const MAGIC: &[u8; 8] = b"RGSWMARK";
const CHECKSUM_BYTES: usize = 32;

/// Where a state is kept: a local file, or `registry:NAME`, the object
/// `_regsweep/state/NAME` in the registry's own storage (beside, not in, `docker/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateLocation {
    File(PathBuf),
    Registry(String),
}

impl StateLocation {
    pub fn parse(text: &str) -> Result<StateLocation, String> {
        match text.strip_prefix("registry:") {
            Some(name) => {
                let valid = !name.is_empty()
                    && !name.starts_with('.')
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
                if valid {
                    Ok(StateLocation::Registry(name.to_owned()))
                } else {
                    Err(format!(
                        "{text:?}: a state in the registry's storage is registry:NAME, NAME of \
                         letters, digits, '.', '_' and '-'"
                    ))
                }
            }
            None if text.is_empty() => Err("the state location is empty".to_owned()),
            None => Ok(StateLocation::File(PathBuf::from(text))),
        }
    }

    /// Writes `bytes` whole or not at all: a reader never sees half a state.
    pub async fn write(
        &self,
        storage: &Arc<dyn Storage>,
        bytes: Vec<u8>,
    ) -> Result<(), StateError> {
        let failed = |reason: String| StateError::Write {
            location: self.to_string(),
            reason,
        };
        match self {
            StateLocation::Registry(name) => {
                // A single PUT replaces an object atomically.
                storage
                    .put(&layout::mark_state(name), bytes, PutCondition::Overwrite)
                    .await
                    .map_err(|e| failed(e.to_string()))?;
            }
            StateLocation::File(path) => {
                metrics::write_atomically(path, &bytes).map_err(|e| failed(e.to_string()))?;
            }
        }
        Ok(())
    }

    pub async fn read(&self, storage: &Arc<dyn Storage>) -> Result<Vec<u8>, StateError> {
        let failed = |reason: String| StateError::Read {
            location: self.to_string(),
            reason,
        };
        match self {
            StateLocation::Registry(name) => {
                storage
                    .get(&layout::mark_state(name))
                    .await
                    .map_err(|e| match e {
                        StorageError::NotFound { .. } => {
                            failed("no such state: run `regsweep mark` first".to_owned())
                        }
                        e => failed(e.to_string()),
                    })
            }
            StateLocation::File(path) => std::fs::read(path).map_err(|e| failed(e.to_string())),
        }
    }
}

impl std::fmt::Display for StateLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StateLocation::File(path) => write!(f, "{}", path.display()),
            StateLocation::Registry(name) => write!(f, "registry:{name}"),
        }
    }
}

/// The ID of `storage`: the content of `_regsweep/id`, written once with a random run ID when
/// `create` (by `regsweep mark`) and absent; `None` when it has none and `create` is false.
pub async fn storage_id(
    storage: &Arc<dyn Storage>,
    create: bool,
) -> Result<Option<String>, StorageError> {
    if create {
        let id = crate::run_id::RunId::new(SystemTime::now()).to_string();
        match storage
            .put(
                layout::STORAGE_ID,
                id.clone().into_bytes(),
                PutCondition::Absent,
            )
            .await
        {
            Ok(_) => return Ok(Some(id)),
            Err(StorageError::PreconditionFailed { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    match storage.get(layout::STORAGE_ID).await {
        Ok(content) => Ok(Some(String::from_utf8_lossy(&content).trim().to_owned())),
        Err(StorageError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// What a state says about its mark, as JSON in the file (and in `regsweep mark`'s summary).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateHeader {
    /// The mark's run ID.
    pub run: String,
    /// The regsweep version that wrote it.
    pub regsweep: String,
    /// The storage it was made from, as regsweep prints it.
    pub storage: String,
    /// The storage's own ID, the content of `_regsweep/id` ([`storage_id`]).
    pub storage_id: String,
    /// When the mark started (RFC 3339, for people; `started_ms` is what counts).
    pub started: String,
    /// Milliseconds since the epoch.
    pub started_ms: u64,
    /// `--min-age` before `started`: what was modified after this is young, kept by every sweep.
    pub cutoff_ms: u64,
    /// `--upload-max-age` before `started`.
    pub upload_cutoff_ms: u64,
    pub delete_untagged: bool,
    pub min_age_seconds: u64,
    pub upload_max_age_seconds: u64,
    /// Blobs the mark listed, and their bytes.
    pub blobs: u64,
    pub bytes: u64,
    pub live_blobs: u64,
    pub repositories: u64,
}

impl StateHeader {
    pub fn started(&self) -> SystemTime {
        at_millis(self.started_ms)
    }

    pub fn cutoff(&self) -> SystemTime {
        at_millis(self.cutoff_ms)
    }

    pub fn upload_cutoff(&self) -> SystemTime {
        at_millis(self.upload_cutoff_ms)
    }
}

fn at_millis(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

/// Milliseconds since the epoch, rounded down (a cut-off a little earlier keeps a little more).
pub fn millis(time: SystemTime) -> u64 {
    let since = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

/// The result of a mark.
#[derive(Debug, Clone, PartialEq)]
pub struct MarkState {
    pub header: StateHeader,
    /// Every live blob, ascending.
    live: Vec<Digest>,
    /// By ascending name.
    repositories: Vec<RepositoryState>,
}

#[derive(Debug, Clone, PartialEq)]
struct RepositoryState {
    name: String,
    /// Indices into `live`.
    manifests: RoaringBitmap,
    layers: RoaringBitmap,
    /// What made things live in the repository at the mark, as [`Facts`].
    facts: Facts,
    /// What its tags and live manifests named that the mark's listing did not hold: the targets
    /// of broken tags, and the references of manifests pushed during the mark or broken. Any of
    /// them stored at the sweep (put back, or committed late) makes the repository busy.
    unlisted: Vec<Digest>,
    /// Its live manifests with such references (positions in the live blobs): what they reference
    /// is not all live in the state, so the sweep reads them again when the repository is busy.
    incomplete: RoaringBitmap,
}

/// A repository's revisions, tags and tag index entries at the mark, each as the first 8 bytes of
/// a SHA-256, sorted: the sweep compares them with what it lists, without trusting any clock. A
/// revision, tag or index entry that was not there at the mark — pushed since, or put back by a
/// restore or a copy that kept its old modification time — makes the repository busy. A tag is its
/// name with its `current/link`'s modification time, so a tag moved since the mark is a new fact
/// too. Facts that went (deleted since, by a sweep or the API) do not: an interrupted sweep resumes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts(Vec<u64>);

impl Facts {
    /// The facts of a repository as listed.
    pub fn of(repo: &Repository) -> Facts {
        let fact = |kind: &[u8], parts: &[&[u8]]| {
            let mut hash = Sha256::new();
            hash.update(kind);
            for part in parts {
                hash.update((part.len() as u64).to_le_bytes());
                hash.update(part);
            }
            u64::from_le_bytes(hash.finalize()[..8].try_into().expect("8 bytes"))
        };
        let mut facts: Vec<u64> = repo
            .revisions
            .iter()
            .map(|r| fact(b"revision", &[r.digest.as_bytes()]))
            .collect();
        for tag in &repo.tags {
            if let Some(current) = &tag.current {
                let ms = millis(current.modified).to_le_bytes();
                facts.push(fact(b"tag", &[tag.name.as_bytes(), &ms]));
            }
            for entry in &tag.index {
                facts.push(fact(
                    b"index",
                    &[tag.name.as_bytes(), entry.digest.as_bytes()],
                ));
            }
        }
        facts.sort_unstable();
        facts.dedup();
        Facts(facts)
    }

    /// Whether `self` has a fact `before` did not.
    pub fn has_new(&self, before: &Facts) -> bool {
        self.0.iter().any(|f| before.0.binary_search(f).is_err())
    }
}

/// What the state says of a repository the sweep lists.
#[derive(Debug, PartialEq, Eq)]
pub enum Known<'a> {
    /// Not in the state: created since the mark.
    New,
    /// Written since the cut-off, or something in it makes things live that the mark did not see.
    Changed,
    /// As marked, as far as facts go; what it named that the mark did not list is still to be
    /// looked up (any of it stored now makes the repository busy too).
    Unchanged { unlisted: &'a [Digest] },
}

/// Why a state cannot be used. Nothing is deleted when one of these is returned.
#[derive(Debug, Error)]
pub enum StateError {
    #[error("mark state {location}: cannot be read: {reason}")]
    Read { location: String, reason: String },
    #[error("mark state {location}: cannot be written: {reason}")]
    Write { location: String, reason: String },
    #[error("mark state {location}: not a regsweep mark state")]
    NotAState { location: String },
    #[error("mark state {location}: format {found}; this regsweep reads format {FORMAT}")]
    Format { location: String, found: u32 },
    #[error(
        "mark state {location}: checksum mismatch, the state is corrupt or truncated (it says \
         sha256 {stored}, its content has {computed}): mark again"
    )]
    Checksum {
        location: String,
        stored: String,
        computed: String,
    },
    #[error("mark state {location}: malformed: {reason}")]
    Malformed { location: String, reason: String },
    #[error(
        "mark state {location} was made from {state}, not from {this}: sweep the storage it was \
         made from"
    )]
    OtherStorage {
        location: String,
        state: String,
        this: String,
    },
    #[error(
        "mark state {location} was made with {option} {state}, this sweep has {this}: sweep with \
         the options of the mark, or mark again"
    )]
    OtherOptions {
        location: String,
        option: &'static str,
        state: String,
        this: String,
    },
    #[error(
        "mark state {location} is stale: the mark started {started}, {age} ago, more than \
         --max-state-age {max}: mark again"
    )]
    Stale {
        location: String,
        started: String,
        age: String,
        max: String,
    },
    #[error(
        "mark state {location} says its mark started {started}, in the future: check this \
         machine's clock"
    )]
    Future { location: String, started: String },
}

/// A state's marks over a sweep's universe ([`MarkState::apply`]).
#[derive(Debug)]
pub struct Applied {
    /// Aligned with the inventory's repositories (a repository the mark did not know has none).
    pub marks: MarkSet,
    /// Every manifest live in any repository at the mark: what it references is live too.
    pub live_manifests: RoaringBitmap,
    /// Live blobs added to the universe because the listing did not return them (other shards').
    pub unlisted: usize,
}

/// What a sweep keeps of its state to tell what was written since the mark, up to its last
/// deletion: the cut-off and each repository's [`Facts`] and unlisted references.
#[derive(Debug, Clone)]
pub struct Baseline {
    cutoff: SystemTime,
    /// By ascending name.
    repositories: Vec<(String, Facts, Vec<Digest>)>,
}

impl Baseline {
    /// The state's cut-off: what was modified after it was written since the mark, or is young.
    pub fn cutoff(&self) -> SystemTime {
        self.cutoff
    }

    /// How `repo`, as listed now, compares with the mark.
    pub fn known(&self, repo: &Repository) -> Known<'_> {
        let Ok(at) = self
            .repositories
            .binary_search_by(|(name, _, _)| name.as_str().cmp(&repo.name))
        else {
            return Known::New;
        };
        let (_, facts, unlisted) = &self.repositories[at];
        if repo.written_since(self.cutoff) || Facts::of(repo).has_new(facts) {
            Known::Changed
        } else {
            Known::Unchanged { unlisted }
        }
    }
}

/// What the sweep expects of a state: the options it was given and when it runs.
#[derive(Debug, Clone)]
pub struct Expectations {
    pub storage: String,
    /// The storage's own ID ([`storage_id`]), when it has one.
    pub storage_id: Option<String>,
    pub delete_untagged: bool,
    pub min_age: Duration,
    pub upload_max_age: Duration,
    /// A state whose mark started longer ago than this is stale.
    pub max_age: Duration,
    pub now: SystemTime,
}

/// How far a state's start may lie ahead of this machine's clock (the marking machine's clock).
const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// Gives the memory freed so far back to the system, before a large allocation: glibc keeps freed
/// heap for reuse, while an allocation of hundreds of megabytes (the live blobs, then the state's
/// encoding) is mapped afresh beside it, and the peak would hold both. Other allocators (musl's)
/// return memory by themselves.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointer; it only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Each repository's part of the state of a mark of `inventory`.
fn repository_states(
    inventory: &Inventory,
    catalog: &ManifestCatalog,
    marks: &MarkSet,
) -> Vec<RepositoryState> {
    let universe = &inventory.blobs;
    // A universe index's position among the live blobs: both are in digest order.
    let position = |i: u32| {
        assert!(
            marks.blobs.contains(i),
            "a repository's marks are among the live blobs"
        );
        (marks.blobs.rank(i) - 1) as u32
    };
    inventory
        .repositories
        .iter()
        .zip(&marks.repositories)
        .map(|(repo, repo_marks)| {
            let mut unlisted: Vec<Digest> = repo
                .tags
                .iter()
                .filter_map(|t| t.current.as_ref()?.target.as_ref().ok())
                .filter(|d| universe.index(d).is_none())
                .copied()
                .collect();
            let mut incomplete = RoaringBitmap::new();
            for manifest in repo_marks.manifests.iter() {
                if let Some(refs) = catalog.incomplete_of(manifest) {
                    incomplete.insert(position(manifest));
                    let named = refs
                        .manifests
                        .iter()
                        .chain(&refs.blobs)
                        .chain(&refs.subject);
                    unlisted.extend(named.filter(|d| universe.index(d).is_none()));
                }
            }
            unlisted.sort_unstable();
            unlisted.dedup();
            RepositoryState {
                name: repo.name.clone(),
                manifests: repo_marks.manifests.iter().map(position).collect(),
                layers: repo_marks.layers.iter().map(position).collect(),
                facts: Facts::of(repo),
                unlisted,
                incomplete,
            }
        })
        .collect()
}

impl MarkState {
    /// The state of a mark of `inventory`, with the manifests it read.
    #[cfg(test)]
    pub fn new(
        header: StateHeader,
        inventory: &Inventory,
        catalog: &ManifestCatalog,
        marks: &MarkSet,
    ) -> MarkState {
        let repositories = repository_states(inventory, catalog, marks);
        MarkState::assemble(header, &inventory.blobs, &marks.blobs, repositories)
    }

    /// The state of a mark of `inventory`, which it takes with the mark's catalog and marks: all
    /// but the universe and the live set (the repositories, about one link per blob, the catalog
    /// and each repository's marks) are freed before the live blobs are copied out of the
    /// universe, so that they are never held together (a mark's peak).
    pub fn of_inventory(
        header: StateHeader,
        inventory: Inventory,
        catalog: ManifestCatalog,
        marks: MarkSet,
    ) -> MarkState {
        let repositories = repository_states(&inventory, &catalog, &marks);
        // Dropped here, not at the end of the function as the rest of a destructured value is.
        drop(catalog);
        drop(inventory.repositories);
        let MarkSet {
            blobs: live,
            repositories: repository_marks,
            ..
        } = marks;
        drop(repository_marks);
        release_freed_memory();
        MarkState::assemble(header, &inventory.blobs, &live, repositories)
    }

    fn assemble(
        header: StateHeader,
        universe: &BlobUniverse,
        live: &RoaringBitmap,
        repositories: Vec<RepositoryState>,
    ) -> MarkState {
        let live: Vec<Digest> = live.iter().map(|i| *universe.digest(i)).collect();
        MarkState {
            header: StateHeader {
                live_blobs: live.len() as u64,
                repositories: repositories.len() as u64,
                ..header
            },
            live,
            repositories,
        }
    }

    /// Refuses a state made for another storage, with other options, too long ago or in the
    /// future.
    pub fn check(&self, location: &StateLocation, expect: &Expectations) -> Result<(), StateError> {
        let location = location.to_string();
        let h = &self.header;
        if h.storage != expect.storage {
            return Err(StateError::OtherStorage {
                location,
                state: h.storage.clone(),
                this: expect.storage.clone(),
            });
        }
        // The same name may denote another storage (the same bucket name on another endpoint,
        // the same path on another host): the ID the storage holds tells.
        if expect.storage_id.as_deref() != Some(h.storage_id.as_str()) {
            return Err(StateError::OtherStorage {
                location,
                state: format!("{} (storage ID {})", h.storage, h.storage_id),
                this: format!(
                    "{} (storage ID {})",
                    expect.storage,
                    expect.storage_id.as_deref().unwrap_or("none")
                ),
            });
        }
        // The cut-offs are what the sweep uses: they must be those the options give.
        // (An age longer than the time since the epoch gives the epoch, as `gc` computes it.)
        let consistent = |cutoff_ms: u64, age_seconds: u64| {
            h.started_ms
                .checked_sub(age_seconds.saturating_mul(1000))
                .map_or(cutoff_ms == 0, |expected| cutoff_ms <= expected)
        };
        if !consistent(h.cutoff_ms, h.min_age_seconds)
            || !consistent(h.upload_cutoff_ms, h.upload_max_age_seconds)
        {
            return Err(StateError::Malformed {
                location,
                reason: "its cut-offs are later than its start and options allow".to_owned(),
            });
        }
        let human = |seconds: u64| humantime::format_duration(Duration::from_secs(seconds));
        let differs: [(&'static str, String, String); 3] = [
            (
                "--delete-untagged",
                h.delete_untagged.to_string(),
                expect.delete_untagged.to_string(),
            ),
            (
                "--min-age",
                human(h.min_age_seconds).to_string(),
                human(expect.min_age.as_secs()).to_string(),
            ),
            (
                "--upload-max-age",
                human(h.upload_max_age_seconds).to_string(),
                human(expect.upload_max_age.as_secs()).to_string(),
            ),
        ];
        if let Some((option, state, this)) = differs.into_iter().find(|(_, s, t)| s != t) {
            return Err(StateError::OtherOptions {
                location,
                option,
                state,
                this,
            });
        }
        let started = h.started();
        if started > expect.now + CLOCK_SKEW {
            return Err(StateError::Future {
                location,
                started: h.started.clone(),
            });
        }
        let age = expect.now.duration_since(started).unwrap_or_default();
        if age > expect.max_age {
            return Err(StateError::Stale {
                location,
                started: h.started.clone(),
                age: humantime::format_duration(Duration::from_secs(age.as_secs())).to_string(),
                max: humantime::format_duration(expect.max_age).to_string(),
            });
        }
        Ok(())
    }

    /// Live blobs, ascending.
    pub fn live(&self) -> &[Digest] {
        &self.live
    }

    fn repository(&self, name: &str) -> Option<&RepositoryState> {
        scan::named(&self.repositories, name, |r| &r.name).map(|i| &self.repositories[i])
    }

    /// Adds the live blobs the listing of `inventory` did not return (other shards' blobs) to its
    /// universe, as never-deletable entries, and gives the state's marks over that universe.
    pub fn apply(&self, inventory: &mut Inventory) -> Applied {
        let listed = &inventory.blobs;
        let unlisted_count = self
            .live
            .iter()
            .filter(|d| listed.index(d).is_none())
            .count();
        // Reserved exactly: a growing vector of millions of entries would double at the worst time.
        let mut universe = BlobUniverseBuilder::with_capacity(listed.len() + unlisted_count);
        for i in 0..listed.len() as u32 {
            universe.push(*listed.digest(i), listed.size(i), listed.modified(i));
        }
        let mut unlisted = 0;
        for digest in self.live.iter().filter(|d| listed.index(d).is_none()) {
            universe.push(*digest, 0, SystemTime::UNIX_EPOCH);
            unlisted += 1;
        }
        inventory.replace_blobs(universe.finish());
        let universe = &inventory.blobs;
        let index = |k: u32| {
            universe
                .index(&self.live[k as usize])
                .expect("every live blob is in the universe")
        };
        let map = |set: &RoaringBitmap| -> RoaringBitmap { set.iter().map(index).collect() };
        let marks = MarkSet {
            blobs: (0..self.live.len() as u32).map(index).collect(),
            repositories: inventory
                .repositories
                .iter()
                .map(|repo| match self.repository(&repo.name) {
                    Some(state) => RepositoryMarks {
                        manifests: map(&state.manifests).into(),
                        layers: map(&state.layers).into(),
                    },
                    None => RepositoryMarks::default(),
                })
                .collect(),
            warnings: Vec::new(),
        };
        // What a complete live manifest references is live: such a manifest need not be read
        // again. One that referenced what the mark did not list must be.
        let mut live_manifests = RoaringBitmap::new();
        let mut incomplete = RoaringBitmap::new();
        for state in &self.repositories {
            live_manifests |= &state.manifests;
            incomplete |= &state.incomplete;
        }
        live_manifests -= incomplete;
        Applied {
            marks,
            live_manifests: map(&live_manifests),
            unlisted,
        }
    }

    /// What the sweep keeps of the state once its marks are applied.
    pub fn baseline(&self) -> Baseline {
        Baseline {
            cutoff: self.header.cutoff(),
            repositories: self
                .repositories
                .iter()
                .map(|r| (r.name.clone(), r.facts.clone(), r.unlisted.clone()))
                .collect(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let header = serde_json::to_vec(&self.header).expect("a header serializes");
        let mut out = Vec::with_capacity(64 + header.len() + 32 * self.live.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT.to_le_bytes());
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(&(self.live.len() as u64).to_le_bytes());
        for digest in &self.live {
            out.extend_from_slice(digest.as_bytes());
        }
        out.extend_from_slice(&(self.repositories.len() as u64).to_le_bytes());
        for repo in &self.repositories {
            out.extend_from_slice(&(repo.name.len() as u32).to_le_bytes());
            out.extend_from_slice(repo.name.as_bytes());
            for set in [&repo.manifests, &repo.layers] {
                out.extend_from_slice(&(set.serialized_size() as u32).to_le_bytes());
                set.serialize_into(&mut out).expect("writing to memory");
            }
            out.extend_from_slice(&(repo.facts.0.len() as u32).to_le_bytes());
            for fact in &repo.facts.0 {
                out.extend_from_slice(&fact.to_le_bytes());
            }
            out.extend_from_slice(&(repo.unlisted.len() as u32).to_le_bytes());
            for digest in &repo.unlisted {
                out.extend_from_slice(digest.as_bytes());
            }
            out.extend_from_slice(&(repo.incomplete.serialized_size() as u32).to_le_bytes());
            repo.incomplete
                .serialize_into(&mut out)
                .expect("writing to memory");
        }
        let checksum = Sha256::digest(&out);
        out.extend_from_slice(&checksum);
        out
    }

    pub fn decode(bytes: &[u8], location: &StateLocation) -> Result<MarkState, StateError> {
        let location = location.to_string();
        if bytes.len() < MAGIC.len() + 4 || &bytes[..MAGIC.len()] != MAGIC {
            return Err(StateError::NotAState { location });
        }
        let found = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if found != FORMAT {
            return Err(StateError::Format { location, found });
        }
        let malformed = |reason: String| StateError::Malformed {
            location: location.clone(),
            reason,
        };
        let Some(body_len) = bytes.len().checked_sub(CHECKSUM_BYTES) else {
            return Err(malformed("shorter than its checksum".to_owned()));
        };
        let (body, stored) = bytes.split_at(body_len);
        let computed = Sha256::digest(body);
        if computed.as_slice() != stored {
            return Err(StateError::Checksum {
                location,
                stored: hex(stored),
                computed: hex(&computed),
            });
        }
        let mut reader = Reader {
            bytes: body,
            at: 12,
        };
        decode_body(&mut reader).map_err(malformed)
    }
}

fn decode_body(r: &mut Reader<'_>) -> Result<MarkState, String> {
    let header_len = r.u32()? as usize;
    let header: StateHeader =
        serde_json::from_slice(r.take(header_len)?).map_err(|e| format!("header: {e}"))?;
    let live_count = usize::try_from(r.u64()?).map_err(|e| e.to_string())?;
    let live_bytes = r.take(
        live_count
            .checked_mul(32)
            .ok_or("live blob count overflows")?,
    )?;
    let live: Vec<Digest> = live_bytes
        .chunks_exact(32)
        .map(|c| Digest::from_bytes(c.try_into().expect("32 bytes")))
        .collect();
    if live.windows(2).any(|w| w[0] >= w[1]) {
        return Err("live blobs are not strictly ascending".to_owned());
    }
    let repo_count = r.u64()?;
    let mut repositories: Vec<RepositoryState> = Vec::new();
    for _ in 0..repo_count {
        let name_len = r.u32()? as usize;
        let name = std::str::from_utf8(r.take(name_len)?)
            .map_err(|_| "a repository name is not UTF-8".to_owned())?
            .to_owned();
        if repositories.last().is_some_and(|last| last.name >= name) {
            return Err(format!("repository {name}: not in ascending order"));
        }
        let mut sets = [RoaringBitmap::new(), RoaringBitmap::new()];
        for set in &mut sets {
            let len = r.u32()? as usize;
            *set = RoaringBitmap::deserialize_from(r.take(len)?)
                .map_err(|e| format!("repository {name}: {e}"))?;
            if set.max().is_some_and(|max| max as usize >= live.len()) {
                return Err(format!("repository {name}: marks beyond the live blobs"));
            }
        }
        let [manifests, layers] = sets;
        let count = r.u32()? as usize;
        let facts: Vec<u64> = r
            .take(count.checked_mul(8).ok_or("fact count overflows")?)?
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        if facts.windows(2).any(|w| w[0] >= w[1]) {
            return Err(format!(
                "repository {name}: facts are not strictly ascending"
            ));
        }
        let count = r.u32()? as usize;
        let unlisted = r
            .take(count.checked_mul(32).ok_or("unlisted count overflows")?)?
            .chunks_exact(32)
            .map(|c| Digest::from_bytes(c.try_into().expect("32 bytes")))
            .collect();
        let len = r.u32()? as usize;
        let incomplete = RoaringBitmap::deserialize_from(r.take(len)?)
            .map_err(|e| format!("repository {name}: {e}"))?;
        if !incomplete.is_subset(&manifests) {
            return Err(format!(
                "repository {name}: incomplete manifests that are not live"
            ));
        }
        repositories.push(RepositoryState {
            name,
            manifests,
            layers,
            facts: Facts(facts),
            unlisted,
            incomplete,
        });
    }
    if r.at != r.bytes.len() {
        return Err(format!(
            "{} bytes after the last repository",
            r.bytes.len() - r.at
        ));
    }
    if header.live_blobs != live.len() as u64 || header.repositories != repo_count {
        return Err("the header's counts disagree with the content".to_owned());
    }
    Ok(MarkState {
        header,
        live,
        repositories,
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| format!("ends early, at byte {}", self.bytes.len()))?;
        let taken = &self.bytes[self.at..end];
        self.at = end;
        Ok(taken)
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{ManifestKind, ManifestRefs};
    use crate::scan::{BlobUniverse, LayerLinks, Link, Tag, TagCurrent};

    fn d(n: u8) -> Digest {
        Digest::from_bytes([n; 32])
    }

    const HOUR: Duration = Duration::from_secs(3600);

    /// Blobs 1..=6; repository `a` keeps manifest 2 and layers 3, 4; `b` keeps manifest 5 and
    /// layer 3; blobs 1 and 6 are garbage.
    /// The instant everything of the fixture was written: an hour before the cut-off.
    const T: Duration = Duration::from_secs(1_000_000);

    fn link(n: u8) -> Link {
        Link::new(d(n), SystemTime::UNIX_EPOCH + T)
    }

    fn tag(name: &str, target: u8) -> Tag {
        Tag {
            name: name.to_owned(),
            current: Some(TagCurrent {
                target: Ok(d(target)),
                modified: SystemTime::UNIX_EPOCH + T,
            }),
            index: vec![link(target)],
        }
    }

    /// `a`: tag v1 → manifest 2 (layers 3, 4); `b`: manifest 5 (layer 3), and tag `gone` → 9,
    /// which is not in storage.
    fn repositories() -> Vec<Repository> {
        vec![
            Repository {
                name: "a".to_owned(),
                revisions: vec![link(2)],
                layer_links: vec![link(3), link(4)].into(),
                tags: vec![tag("v1", 2)],
                ..Repository::default()
            },
            Repository {
                name: "b".to_owned(),
                revisions: vec![link(5)],
                layer_links: vec![link(3)].into(),
                tags: vec![tag("gone", 9)],
                ..Repository::default()
            },
        ]
    }

    fn state() -> (MarkState, Inventory) {
        let t = SystemTime::UNIX_EPOCH + T;
        let inventory = Inventory {
            blobs: BlobUniverse::new((1..=6).map(|n| (d(n), u64::from(n), t)).collect()),
            repositories: repositories(),
            ..Inventory::default()
        };
        let index = |n: u8| inventory.blobs.index(&d(n)).unwrap();
        let marks_of = |manifests: &[u8], layers: &[u8]| RepositoryMarks {
            manifests: manifests
                .iter()
                .map(|&n| index(n))
                .collect::<RoaringBitmap>()
                .into(),
            layers: layers
                .iter()
                .map(|&n| index(n))
                .collect::<RoaringBitmap>()
                .into(),
        };
        let marks = MarkSet {
            blobs: [2, 3, 4, 5].map(index).into_iter().collect(),
            repositories: vec![marks_of(&[2], &[3, 4]), marks_of(&[5], &[3])],
            warnings: Vec::new(),
        };
        let header = StateHeader {
            run: "20261129T120000Z-abcdef".to_owned(),
            regsweep: "test".to_owned(),
            storage: "file:///registry".to_owned(),
            storage_id: "20261101T000000Z-0a1b2c".to_owned(),
            started: "2026-11-29T12:00:00.000Z".to_owned(),
            started_ms: millis(t + 2 * HOUR),
            cutoff_ms: millis(t + HOUR),
            upload_cutoff_ms: millis(t),
            delete_untagged: true,
            min_age_seconds: 3600,
            upload_max_age_seconds: 7200,
            blobs: 6,
            bytes: 21,
            live_blobs: 0,
            repositories: 0,
        };
        // Manifest 2 also names blob 8, which the listing did not hold (pushed during the mark).
        let refs = ManifestRefs {
            kind: ManifestKind::OciImageManifest,
            manifests: Vec::new(),
            blobs: vec![d(3), d(4), d(8)],
            subject: None,
        };
        let catalog = ManifestCatalog::of_parsed(&inventory.blobs, [(index(2), Ok(refs))]);
        (
            MarkState::new(header, &inventory, &catalog, &marks),
            inventory,
        )
    }

    fn location() -> StateLocation {
        StateLocation::parse("registry:nightly").unwrap()
    }

    #[test]
    fn a_state_survives_its_encoding_and_gives_back_the_marks_over_any_listing() {
        let (state, _) = state();
        assert_eq!(state.live(), [d(2), d(3), d(4), d(5)]);
        assert_eq!((state.header.live_blobs, state.header.repositories), (4, 2));
        let decoded = MarkState::decode(&state.encode(), &location()).unwrap();
        assert_eq!(decoded, state);

        // A shard that listed blobs 1, 3 and 6, and repositories b and c (new since the mark); b's
        // links to 3 and 6 are held by index, its link to 4 (not listed) whole.
        let t = SystemTime::UNIX_EPOCH;
        let listed = BlobUniverse::new([1, 3, 6].map(|n| (d(n), 10, t)).to_vec());
        let mut repositories = ["b", "c"].map(|name| Repository {
            name: name.to_owned(),
            ..Repository::default()
        });
        repositories[0].layer_links = LayerLinks::resolved([3, 4, 6].map(link), &listed);
        let mut shard = Inventory {
            blobs: listed,
            repositories: repositories.to_vec(),
            ..Inventory::default()
        };
        let applied = decoded.apply(&mut shard);
        let layers: Vec<(Link, Option<u32>)> = shard.repositories[0]
            .layer_links
            .iter(&shard.blobs)
            .collect();
        let index = |n: u8| shard.blobs.index(&d(n));
        assert_eq!(
            layers,
            [
                (link(3), index(3)),
                (link(6), index(6)),
                (link(4), index(4))
            ],
            "links held by index name the same blobs in the universe that replaced the listed one"
        );
        let marks = &applied.marks;
        assert_eq!(applied.unlisted, 3, "2, 4 and 5 were not listed");
        let universe = &shard.blobs;
        let digests = |set: &mut dyn Iterator<Item = u32>| -> Vec<Digest> {
            set.map(|i| *universe.digest(i)).collect()
        };
        assert_eq!(universe.len(), 6);
        assert_eq!(digests(&mut marks.blobs.iter()), [d(2), d(3), d(4), d(5)]);
        assert_eq!(digests(&mut marks.repositories[0].manifests.iter()), [d(5)]);
        assert_eq!(digests(&mut marks.repositories[0].layers.iter()), [d(3)]);
        assert_eq!(marks.repositories[1], RepositoryMarks::default());
        assert_eq!(
            universe.size(universe.index(&d(3)).unwrap()),
            10,
            "as listed"
        );
        assert_eq!(
            digests(&mut applied.live_manifests.iter()),
            [d(5)],
            "live in a or b, and complete (2 names 8, which the mark did not list)"
        );
    }

    #[test]
    fn the_baseline_tells_what_was_written_since_the_mark_without_trusting_clocks() {
        let (state, _) = state();
        let baseline = state.baseline();
        let [a, b] = <[Repository; 2]>::try_from(repositories()).unwrap();
        assert_eq!(baseline.known(&a), Known::Unchanged { unlisted: &[d(8)] });
        assert_eq!(baseline.known(&b), Known::Unchanged { unlisted: &[d(9)] });
        let changed = |change: &dyn Fn(&mut Repository)| {
            let mut repo = a.clone();
            change(&mut repo);
            baseline.known(&repo)
        };
        // A manifest put back with its old modification time (a restore, `cp -a`).
        assert_eq!(changed(&|r| r.revisions.push(link(7))), Known::Changed);
        // A tag moved, a new tag, a new index entry, whatever their times say.
        let earlier = SystemTime::UNIX_EPOCH + T - Duration::from_secs(60);
        assert_eq!(
            changed(&|r| r.tags[0].current.as_mut().unwrap().modified = earlier),
            Known::Changed
        );
        assert_eq!(changed(&|r| r.tags.push(tag("v2", 2))), Known::Changed);
        assert_eq!(changed(&|r| r.tags[0].index.push(link(6))), Known::Changed);
        // Anything written after the cut-off (an upload's layer link).
        let young = Link::new(d(6), state.header.cutoff() + Duration::from_secs(1));
        assert_eq!(
            changed(&|r| r.layer_links = vec![link(3), young].into()),
            Known::Changed
        );
        // What went since (a sweep that was interrupted, an API delete) changes nothing.
        assert_eq!(
            changed(&|r| {
                r.revisions.clear();
                r.tags.clear();
                r.layer_links = LayerLinks::default();
            }),
            Known::Unchanged { unlisted: &[d(8)] }
        );
        let new = Repository {
            name: "c".to_owned(),
            ..Repository::default()
        };
        assert_eq!(baseline.known(&new), Known::New);
    }

    #[test]
    fn every_corruption_is_detected_before_anything_is_believed() {
        let (state, _) = state();
        let bytes = state.encode();
        for at in [
            0,
            9,
            13,
            40,
            bytes.len() / 2,
            bytes.len() - 40,
            bytes.len() - 1,
        ] {
            let mut corrupt = bytes.clone();
            corrupt[at] ^= 0x01;
            let error = MarkState::decode(&corrupt, &location()).unwrap_err();
            assert!(
                matches!(
                    error,
                    StateError::Checksum { .. }
                        | StateError::NotAState { .. }
                        | StateError::Format { .. }
                ),
                "byte {at}: {error}"
            );
            assert!(error.to_string().contains("registry:nightly"), "{error}");
        }
        for len in [0, 5, 12, 40, bytes.len() - 1] {
            assert!(
                MarkState::decode(&bytes[..len], &location()).is_err(),
                "cut at {len}"
            );
        }
        let mut future = bytes.clone();
        future[8] = 2;
        assert!(matches!(
            MarkState::decode(&future, &location()),
            Err(StateError::Format { found: 2, .. })
        ));
        // A well-sealed body that lies about its counts is malformed, not trusted.
        let mut lying = state.clone();
        lying.header.live_blobs = 3;
        let error = MarkState::decode(&lying.encode(), &location()).unwrap_err();
        assert!(matches!(error, StateError::Malformed { .. }), "{error}");
    }

    #[test]
    fn a_sweep_with_other_options_another_storage_or_too_late_is_refused() {
        let (state, _) = state();
        let expect = Expectations {
            storage: "file:///registry".to_owned(),
            storage_id: Some("20261101T000000Z-0a1b2c".to_owned()),
            delete_untagged: true,
            min_age: HOUR,
            upload_max_age: 2 * HOUR,
            max_age: 24 * HOUR,
            now: state.header.started() + HOUR,
        };
        state.check(&location(), &expect).unwrap();
        let refused = |change: &dyn Fn(&mut Expectations), needle: &str| {
            let mut other = expect.clone();
            change(&mut other);
            let error = state.check(&location(), &other).unwrap_err().to_string();
            assert!(error.contains(needle), "{error}");
        };
        refused(&|e| e.delete_untagged = false, "--delete-untagged true");
        refused(&|e| e.min_age = 2 * HOUR, "--min-age 1h");
        refused(&|e| e.upload_max_age = HOUR, "--upload-max-age 2h");
        refused(
            &|e| e.storage = "s3://elsewhere".to_owned(),
            "file:///registry",
        );
        refused(&|e| e.now = state.header.started() + 25 * HOUR, "stale");
        refused(&|e| e.now = state.header.started() - HOUR, "in the future");
        // Cut-offs later than the start and options allow.
        let mut late = state.clone();
        late.header.cutoff_ms = late.header.started_ms;
        let error = late.check(&location(), &expect).unwrap_err().to_string();
        assert!(error.contains("cut-offs"), "{error}");
        // An upload age beyond the epoch ("never") is clamped to it, and consistent.
        let mut forever = state.clone();
        forever.header.upload_max_age_seconds = 100 * 365 * 86_400;
        forever.header.upload_cutoff_ms = 0;
        let mut never = expect.clone();
        never.upload_max_age = Duration::from_secs(100 * 365 * 86_400);
        forever.check(&location(), &never).unwrap();
        // A little clock skew is no future.
        let mut skewed = expect.clone();
        skewed.now = state.header.started() - Duration::from_secs(60);
        state.check(&location(), &skewed).unwrap();
    }

    #[test]
    fn locations_are_files_or_names_in_the_registry() {
        assert_eq!(
            StateLocation::parse("registry:nightly-01.v1").unwrap(),
            StateLocation::Registry("nightly-01.v1".to_owned())
        );
        assert_eq!(
            StateLocation::parse("/var/lib/regsweep/mark").unwrap(),
            StateLocation::File(PathBuf::from("/var/lib/regsweep/mark"))
        );
        for bad in [
            "registry:",
            "registry:../x",
            "registry:a/b",
            "registry:.hidden",
            "",
        ] {
            assert!(StateLocation::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            layout::mark_state("nightly"),
            "_regsweep/state/nightly",
            "outside docker/"
        );
    }
}
