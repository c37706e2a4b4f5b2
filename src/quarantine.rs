//! Quarantine: what a `gc --quarantine` run would delete is moved instead, below
//! `_regsweep/quarantine/<run>/` in the same storage, from where [`restore`] puts it back exactly and
//! [`purge`] deletes it for good once it is old enough.
//!
//! A run keeps, beside the moved objects (each at `<run>/<original key>`, see
//! [`layout::quarantined`]):
//!
//! - `run.json`, written before the first move and rewritten at the end: run ID, start, storage,
//!   options, then finish time and counts ([`RunRecord`]);
//! - `journal/<batch>.jsonl`, one object per batch of moves, each line `{"key", "bytes",
//!   "moved_at"}` ([`JournalEntry`]), so that a run killed half-way still leaves a record.
//!
//! The objects are the truth: [`restore`] works from the listing of the run's directory and uses
//! the journal only for reporting. It restores in an order that never leaves a restored link
//! naming a missing blob, even if it is interrupted ([`RestoreStage`]).
//!
//! [`restore`] and [`purge`] are library functions over `Arc<dyn Storage>` so that the command
//! line can wrap them in the run lock like `gc`.

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::{StreamExt, TryStreamExt, stream};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::Semaphore;
use tracing::{info, warn};

use crate::digest::Digest;
use crate::gc::GcOptions;
use crate::layout::{self, BlobObject, RepositoryObject};
use crate::report::{error_chain, human_bytes};
use crate::run_id::RunId;
use crate::storage::requests::Requests;
use crate::storage::{ObjectMeta, PutCondition, Storage, StorageError};

/// Why a quarantine operation could not start.
#[derive(Debug, Error)]
pub enum QuarantineError {
    #[error("{storage}: no quarantine run under {}", layout::QUARANTINE)]
    NoRuns { storage: String },
    #[error("{storage}: no quarantine run {run} under {}", layout::QUARANTINE)]
    RunNotFound { storage: String, run: RunId },
    #[error("cannot start the quarantine run {run}; nothing was moved")]
    Begin {
        run: RunId,
        #[source]
        source: StorageError,
    },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

fn timestamp(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

fn parse_timestamp(text: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(text).ok()
}

/// `run.json`: what a quarantine run was and, once it ended, what it moved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub run: String,
    /// RFC 3339.
    pub started: String,
    pub storage: String,
    /// The collection's options, for people reading the record.
    #[serde(default)]
    pub options: serde_json::Value,
    /// RFC 3339; absent while the run is going (or if it was killed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<String>,
    #[serde(default)]
    pub objects: u64,
    #[serde(default)]
    pub bytes: u64,
    #[serde(default)]
    pub errors: u64,
}

/// One line of a run's journal: an object that was moved into the quarantine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// The original key.
    pub key: String,
    pub bytes: u64,
    /// RFC 3339.
    pub moved_at: String,
}

/// The summary's `quarantine` field: where a `gc --quarantine` run put what it removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QuarantineSummary {
    pub run: String,
    pub prefix: String,
    /// Objects moved into the quarantine.
    pub objects: u64,
    pub bytes: u64,
}

#[derive(Debug, Default)]
struct Moved {
    objects: u64,
    bytes: u64,
    errors: Vec<String>,
}

/// A quarantine run in progress: the sweep hands it the keys it would delete
/// ([`Quarantine::remove`]).
#[derive(Debug)]
pub struct Quarantine {
    storage: Arc<dyn Storage>,
    run: RunId,
    record: RunRecord,
    concurrency: usize,
    /// Moves in flight across all of the sweep's concurrent batches.
    permits: Semaphore,
    batches: AtomicU64,
    moved: Mutex<Moved>,
}

impl Quarantine {
    /// Writes the run record (refusing a run ID that is already used); nothing may be moved
    /// unless this succeeds.
    pub async fn begin(
        storage: Arc<dyn Storage>,
        run: RunId,
        options: &GcOptions,
    ) -> Result<Quarantine, QuarantineError> {
        let record = RunRecord {
            run: run.to_string(),
            started: timestamp(SystemTime::now()),
            storage: storage.to_string(),
            options: serde_json::json!({
                "delete_untagged": options.delete_untagged,
                "min_age": humantime::format_duration(options.min_age).to_string(),
                "upload_max_age": humantime::format_duration(options.upload_max_age).to_string(),
                "concurrency": options.concurrency,
            }),
            finished: None,
            objects: 0,
            bytes: 0,
            errors: 0,
        };
        let content = serde_json::to_vec_pretty(&record).expect("a run record serializes");
        storage
            .put(
                &layout::quarantine_record(&run),
                content,
                PutCondition::Absent,
            )
            .await
            .map_err(|source| QuarantineError::Begin {
                run: run.clone(),
                source,
            })?;
        info!(run = %run, prefix = layout::quarantine_run(&run), "quarantine run started");
        let concurrency = options.concurrency.max(1);
        Ok(Quarantine {
            storage,
            run,
            record,
            concurrency,
            permits: Semaphore::new(concurrency),
            batches: AtomicU64::new(0),
            moved: Mutex::new(Moved::default()),
        })
    }

    /// What the sweep would delete, removed from the registry: objects are moved into the
    /// quarantine, directory keys (ending in `/`, nothing to keep) deleted. One result per key, in
    /// order. The moves of the batch are journaled once they are done.
    pub async fn remove(&self, keys: Vec<String>) -> Vec<Result<(), StorageError>> {
        let mut results: Vec<Option<Result<(), StorageError>>> =
            keys.iter().map(|_| None).collect();
        let (dirs, files): (Vec<usize>, Vec<usize>) =
            (0..keys.len()).partition(|&i| keys[i].ends_with('/'));
        if !dirs.is_empty() {
            let deleted = self
                .storage
                .delete(dirs.iter().map(|&i| keys[i].clone()).collect())
                .await;
            for (&i, result) in dirs.iter().zip(deleted) {
                results[i] = Some(result);
            }
        }
        let moves: Vec<(usize, Result<u64, StorageError>, SystemTime)> = stream::iter(files)
            .map(|i| {
                let key = &keys[i];
                async move {
                    let _permit = self.permits.acquire().await.expect("never closed");
                    let to = layout::quarantined(&self.run, key);
                    // Named by the registry key, whichever end of the move failed.
                    let result = self.storage.rename(key, &to).await.map_err(|e| {
                        StorageError::DeleteFailed {
                            key: key.clone(),
                            reason: format!("not moved into the quarantine: {}", error_chain(&e)),
                        }
                    });
                    (i, result, SystemTime::now())
                }
            })
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        let mut journal = Vec::new();
        let (mut objects, mut bytes) = (0, 0);
        for (i, result, at) in moves {
            results[i] = Some(result.map(|size| {
                let entry = JournalEntry {
                    key: keys[i].clone(),
                    bytes: size,
                    moved_at: timestamp(at),
                };
                serde_json::to_writer(&mut journal, &entry).expect("a journal entry serializes");
                journal.push(b'\n');
                objects += 1;
                bytes += size;
            }));
        }
        let mut failure = None;
        if objects > 0 {
            let batch = self.batches.fetch_add(1, Ordering::Relaxed);
            let key = layout::quarantine_journal_batch(&self.run, batch);
            if let Err(e) = self
                .storage
                .put(&key, journal, PutCondition::Overwrite)
                .await
            {
                failure = Some(format!(
                    "writing the quarantine journal {e} (the objects moved are in the quarantine)"
                ));
            }
        }
        let mut moved = self.moved.lock().expect("not poisoned");
        moved.objects += objects;
        moved.bytes += bytes;
        moved.errors.extend(failure);
        results
            .into_iter()
            .map(|r| r.expect("every key has a result"))
            .collect()
    }

    /// Completes the run record with the finish time and counts. Returns the summary's
    /// `quarantine` field and the errors of the journal and the record.
    pub async fn finish(self, sweep_errors: u64) -> (QuarantineSummary, Vec<String>) {
        let moved = self.moved.into_inner().expect("not poisoned");
        let mut errors = moved.errors;
        let record = RunRecord {
            finished: Some(timestamp(SystemTime::now())),
            objects: moved.objects,
            bytes: moved.bytes,
            errors: sweep_errors + errors.len() as u64,
            ..self.record
        };
        let content = serde_json::to_vec_pretty(&record).expect("a run record serializes");
        let key = layout::quarantine_record(&self.run);
        if let Err(e) = self
            .storage
            .put(&key, content, PutCondition::Overwrite)
            .await
        {
            errors.push(format!("completing the quarantine record {e}"));
        }
        info!(run = %self.run, objects = moved.objects, bytes = moved.bytes, "quarantine run finished");
        let summary = QuarantineSummary {
            run: self.run.to_string(),
            prefix: layout::quarantine_run(&self.run),
            objects: moved.objects,
            bytes: moved.bytes,
        };
        (summary, errors)
    }
}

/// The order in which a restore puts objects back: what is referenced before what references it,
/// so that an interrupted restore never leaves a link to a missing blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RestoreStage {
    /// Blob data and upload files: they reference nothing.
    Content,
    /// Revision links (and their legacy signature links) and `_layers` links.
    Links,
    /// Tag index entries.
    TagIndex,
    /// Tags' `current/link`.
    Tags,
    /// Anything else that was moved (nothing regsweep itself moves).
    Other,
}

impl RestoreStage {
    pub const ALL: [RestoreStage; 5] = [
        RestoreStage::Content,
        RestoreStage::Links,
        RestoreStage::TagIndex,
        RestoreStage::Tags,
        RestoreStage::Other,
    ];

    /// The stage of a registry key, and the blob it links to (for links).
    pub fn of(key: &str) -> (RestoreStage, Option<Digest>) {
        if key.starts_with(layout::BLOBS) {
            return match layout::parse_blob_key(key) {
                BlobObject::Data(_) => (RestoreStage::Content, None),
                BlobObject::DirMarker | BlobObject::Unknown => (RestoreStage::Other, None),
            };
        }
        if !key.starts_with(layout::REPOSITORIES) {
            return (RestoreStage::Other, None);
        }
        match layout::parse_repository_key(key).object {
            RepositoryObject::Upload { .. } => (RestoreStage::Content, None),
            RepositoryObject::LayerLink(digest) | RepositoryObject::RevisionLink(digest) => {
                (RestoreStage::Links, Some(digest))
            }
            RepositoryObject::RevisionSignature { signature, .. } => {
                (RestoreStage::Links, Some(signature))
            }
            RepositoryObject::TagIndex { digest, .. } => (RestoreStage::TagIndex, Some(digest)),
            RepositoryObject::TagCurrent { .. } => (RestoreStage::Tags, None),
            RepositoryObject::DirMarker | RepositoryObject::Unknown => (RestoreStage::Other, None),
        }
    }

    /// Whether the key names its content (blobs by digest, links whose digest is in the key): then
    /// an object of the same size under the same key is the same object.
    fn content_addressed(key: &str) -> bool {
        match RestoreStage::of(key).0 {
            RestoreStage::Content => key.starts_with(layout::BLOBS),
            RestoreStage::Links | RestoreStage::TagIndex => true,
            RestoreStage::Tags | RestoreStage::Other => false,
        }
    }
}

/// What `regsweep restore` is asked to do.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// The run to restore; the latest when `None`.
    pub run: Option<RunId>,
    pub dry_run: bool,
    pub concurrency: usize,
}

/// What a restore did (in a dry run: would do).
#[derive(Debug, Default, Clone, Serialize)]
pub struct RestoreSummary {
    pub dry_run: bool,
    pub storage: String,
    pub run: String,
    /// Objects the run's journal says were moved.
    pub journal_entries: u64,
    pub objects_restored: u64,
    pub bytes_restored: u64,
    /// Objects whose original key holds the same object again (pushed since): the existing one
    /// is kept and the quarantined copy dropped.
    pub objects_skipped: u64,
    pub bytes_skipped: u64,
    /// Objects whose original key holds something else now: both are kept (and reported as
    /// errors).
    pub conflicts: u64,
    /// Whether the run's directory is gone (everything went back).
    pub run_removed: bool,
    pub errors: u64,
    pub error_messages: Vec<String>,
    pub warnings: Vec<String>,
    pub requests: Requests,
    pub duration_seconds: f64,
}

impl RestoreSummary {
    fn error(&mut self, message: String) {
        warn!("{message}");
        self.errors += 1;
        self.error_messages.push(message);
    }
}

/// The runs in the quarantine, oldest first (run IDs sort by time).
pub async fn runs(storage: &dyn Storage) -> Result<Vec<RunId>, StorageError> {
    let listing = storage.list_dir(layout::QUARANTINE).await?;
    let mut runs: Vec<RunId> = listing
        .prefixes
        .iter()
        .filter_map(|dir| layout::quarantine_run_of(dir))
        .collect();
    runs.sort();
    Ok(runs)
}

/// Everything stored under one run's directory; an empty run does not exist.
async fn run_objects(
    storage: &dyn Storage,
    run: &RunId,
) -> Result<Vec<ObjectMeta>, QuarantineError> {
    let objects: Vec<ObjectMeta> = storage
        .list(&layout::quarantine_run(run))
        .try_collect()
        .await?;
    if objects.is_empty() {
        return Err(QuarantineError::RunNotFound {
            storage: storage.to_string(),
            run: run.clone(),
        });
    }
    Ok(objects)
}

/// The directories below `top` (which ends in `/`), `top` included, that deleting `key` may leave
/// empty.
fn parents_within<'a>(key: &'a str, top: &'a str) -> impl Iterator<Item = &'a str> {
    layout::removable_parents(key).take_while(move |dir| dir.starts_with(top))
}

/// One quarantined object to put back.
#[derive(Debug, Clone)]
struct Pending {
    object: ObjectMeta,
    original: String,
    stage: RestoreStage,
    links_to: Option<Digest>,
}

enum Restored {
    Moved(u64),
    Skipped(u64),
    Conflict(String),
    Failed(String),
}

/// Puts every object of a quarantine run back under its original key, stage by stage
/// ([`RestoreStage`]), then removes the run's directory if nothing is left in it. An original key
/// that holds something again keeps it: the quarantined copy is dropped if it is the same object,
/// kept and reported otherwise. A link whose blob could not be restored stays in the quarantine.
pub async fn restore(
    storage: Arc<dyn Storage>,
    options: RestoreOptions,
) -> Result<RestoreSummary, QuarantineError> {
    let started = Instant::now();
    let storage = storage.as_ref();
    let run = match options.run {
        Some(run) => run,
        None => runs(storage)
            .await?
            .pop()
            .ok_or_else(|| QuarantineError::NoRuns {
                storage: storage.to_string(),
            })?,
    };
    let objects = run_objects(storage, &run).await?;
    let mut summary = RestoreSummary {
        dry_run: options.dry_run,
        storage: storage.to_string(),
        run: run.to_string(),
        ..RestoreSummary::default()
    };
    let journal_prefix = layout::quarantine_journal(&run);
    let record = layout::quarantine_record(&run);
    let moved_prefix = layout::quarantined(&run, layout::V2);
    let mut records = Vec::new();
    let mut pending = Vec::new();
    for object in &objects {
        if let Some(original) = layout::unquarantined(&run, &object.key) {
            let (stage, links_to) = RestoreStage::of(original);
            pending.push(Pending {
                original: original.to_owned(),
                object: object.clone(),
                stage,
                links_to,
            });
        } else if object.key.starts_with(&moved_prefix) && !object.is_dir_marker() {
            summary.error(format!(
                "{}: not a registry key that can be restored; left in place",
                object.key
            ));
        } else {
            // The run's own objects: its record, its journal (and the filesystem backend's
            // `.guard` files beside them), directory markers.
            records.push(object.key.clone());
        }
    }
    report_journal(storage, &records, &journal_prefix, &pending, &mut summary).await;
    info!(run = %run, objects = pending.len(), dry_run = options.dry_run, "restoring");

    let concurrency = options.concurrency.max(1);
    let mut failed_blobs: HashSet<Digest> = HashSet::new();
    for stage in RestoreStage::ALL {
        let batch: Vec<&Pending> = pending.iter().filter(|p| p.stage == stage).collect();
        let outcomes: Vec<(&Pending, Restored)> = stream::iter(batch)
            .map(|p| {
                let failed = &failed_blobs;
                async move {
                    if let Some(digest) = p.links_to.filter(|d| failed.contains(d)) {
                        let reason = format!(
                            "{}: not restored, the blob it links to ({digest}) could not be",
                            p.original
                        );
                        return (p, Restored::Failed(reason));
                    }
                    (p, restore_one(storage, p, options.dry_run).await)
                }
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        for (p, outcome) in outcomes {
            match outcome {
                Restored::Moved(bytes) => {
                    summary.objects_restored += 1;
                    summary.bytes_restored += bytes;
                }
                Restored::Skipped(bytes) => {
                    summary.objects_skipped += 1;
                    summary.bytes_skipped += bytes;
                }
                Restored::Conflict(message) => {
                    summary.conflicts += 1;
                    summary.error(message);
                }
                Restored::Failed(message) => {
                    if let BlobObject::Data(digest) = layout::parse_blob_key(&p.original) {
                        failed_blobs.insert(digest);
                    }
                    summary.error(message);
                }
            }
        }
    }

    if !options.dry_run {
        let run_dir = layout::quarantine_run(&run);
        if summary.errors == 0 {
            // The record goes last: a restore killed here still leaves the run listed.
            let (last, journal): (Vec<String>, Vec<String>) =
                records.iter().cloned().partition(|key| *key == record);
            for keys in [journal, last] {
                for (key, result) in keys.iter().zip(storage.delete(keys.clone()).await) {
                    if let Err(e) = result {
                        summary.error(format!("removing {key}: {e}"));
                    }
                }
            }
        }
        let dirs: Vec<String> = objects
            .iter()
            .flat_map(|o| parents_within(&o.key, &run_dir))
            .map(str::to_owned)
            .collect();
        if let Err(e) = storage.remove_empty_dirs(dirs).await {
            summary.error(format!("removing the run's empty directories: {e}"));
        }
        summary.run_removed = storage
            .list(&run_dir)
            .try_collect::<Vec<_>>()
            .await
            .is_ok_and(|left| left.is_empty());
    }
    summary.duration_seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// Reads the run's journal (for reporting only: the objects are the truth) and warns about
/// quarantined objects it does not list (a run killed between a move and its journal write).
async fn report_journal(
    storage: &dyn Storage,
    records: &[String],
    journal_prefix: &str,
    pending: &[Pending],
    summary: &mut RestoreSummary,
) {
    let mut journaled = HashSet::new();
    let batches = records.iter().filter(|key| {
        key.strip_prefix(journal_prefix).is_some_and(|name| {
            name.ends_with(".jsonl") && !name.contains('/') && !name.starts_with('.')
        })
    });
    for key in batches {
        match storage.get(key).await {
            Ok(content) => {
                for line in content.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                    match serde_json::from_slice::<JournalEntry>(line) {
                        Ok(entry) => {
                            summary.journal_entries += 1;
                            journaled.insert(entry.key);
                        }
                        Err(e) => summary
                            .warnings
                            .push(format!("{key}: unreadable journal line: {e}")),
                    }
                }
            }
            Err(e) => summary
                .warnings
                .push(format!("reading the journal {key}: {e}")),
        }
    }
    let unjournaled = pending
        .iter()
        .filter(|p| !journaled.contains(&p.original))
        .count();
    if unjournaled > 0 {
        summary.warnings.push(format!(
            "{unjournaled} quarantined objects are not in the run's journal (the run was \
             interrupted?); they are restored all the same"
        ));
    }
}

/// Moves one object back, unless its original key holds something again.
async fn restore_one(storage: &dyn Storage, p: &Pending, dry_run: bool) -> Restored {
    let parent = &p.original[..=p
        .original
        .rfind('/')
        .expect("registry keys have directories")];
    let existing = match storage.list_dir(parent).await {
        Ok(listing) => listing.objects.into_iter().find(|o| o.key == p.original),
        Err(e) => return Restored::Failed(format!("checking {}: {e}", p.original)),
    };
    let size = p.object.size;
    let Some(existing) = existing else {
        if dry_run {
            return Restored::Moved(size);
        }
        return match storage.rename(&p.object.key, &p.original).await {
            Ok(size) => Restored::Moved(size),
            Err(e) => Restored::Failed(format!("restoring {}: {e}", p.original)),
        };
    };
    let same = existing.size == size
        && (RestoreStage::content_addressed(&p.original)
            || match (
                storage.get(&p.original).await,
                storage.get(&p.object.key).await,
            ) {
                (Ok(a), Ok(b)) => a == b,
                (Err(e), _) | (_, Err(e)) => {
                    return Restored::Failed(format!("comparing {}: {e}", p.original));
                }
            });
    if !same {
        return Restored::Conflict(format!(
            "{}: holds another object ({} bytes) since the quarantine; both kept, the quarantined \
             one ({size} bytes) is {}",
            p.original, existing.size, p.object.key
        ));
    }
    if !dry_run && let Some(Err(e)) = storage.delete(vec![p.object.key.clone()]).await.pop() {
        return Restored::Failed(format!("dropping the quarantined copy {e}"));
    }
    Restored::Skipped(size)
}

/// What `regsweep purge` is asked to do.
#[derive(Debug, Clone)]
pub struct PurgeOptions {
    /// Runs finished longer ago than this go.
    pub older_than: Duration,
    /// Only this run (if it is old enough).
    pub run: Option<RunId>,
    pub dry_run: bool,
    pub concurrency: usize,
    pub now: SystemTime,
}

/// One run a purge looked at.
#[derive(Debug, Clone, Serialize)]
pub struct PurgedRun {
    pub run: String,
    /// When the run finished (its record), or else when its newest object was written.
    pub finished: Option<String>,
    /// Quarantined objects and bytes in it (the run's own records not counted).
    pub objects: u64,
    pub bytes: u64,
    /// Whether it is old enough to go (in a dry run: would go).
    pub purged: bool,
}

/// What a purge did (in a dry run: would do).
#[derive(Debug, Default, Clone, Serialize)]
pub struct PurgeSummary {
    pub dry_run: bool,
    pub storage: String,
    pub older_than: String,
    pub runs: Vec<PurgedRun>,
    pub runs_purged: u64,
    pub objects_deleted: u64,
    pub bytes_deleted: u64,
    pub errors: u64,
    pub error_messages: Vec<String>,
    pub warnings: Vec<String>,
    pub requests: Requests,
    pub duration_seconds: f64,
}

/// When a run counts as finished: the `finished` of its record, or else (a run killed before
/// completing its record) the modification time of its newest object.
pub fn finished_at(record: Option<&RunRecord>, objects: &[ObjectMeta]) -> Option<SystemTime> {
    record
        .and_then(|r| r.finished.as_deref())
        .and_then(parse_timestamp)
        .or_else(|| objects.iter().map(|o| o.modified).max())
}

/// Whether a run that finished at `finished` is older than `older_than` at `now`. A run with no
/// time at all is kept.
pub fn is_due(finished: Option<SystemTime>, now: SystemTime, older_than: Duration) -> bool {
    finished.is_some_and(|at| now.checked_sub(older_than).is_some_and(|limit| at <= limit))
}

/// Deletes for good the quarantine runs that finished longer ago than `older_than`: the moved
/// objects first, the journal next, the run record last (so that an interrupted purge leaves the
/// run listed with its age), in batches.
pub async fn purge(
    storage: Arc<dyn Storage>,
    options: PurgeOptions,
) -> Result<PurgeSummary, QuarantineError> {
    let started = Instant::now();
    let storage = storage.as_ref();
    let mut summary = PurgeSummary {
        dry_run: options.dry_run,
        storage: storage.to_string(),
        older_than: humantime::format_duration(options.older_than).to_string(),
        ..PurgeSummary::default()
    };
    let candidates = match &options.run {
        Some(run) => vec![run.clone()],
        None => runs(storage).await?,
    };
    for run in candidates {
        let objects = run_objects(storage, &run).await?;
        let record_key = layout::quarantine_record(&run);
        let record = if objects.iter().any(|o| o.key == record_key) {
            match storage.get(&record_key).await {
                Ok(content) => match serde_json::from_slice::<RunRecord>(&content) {
                    Ok(record) => Some(record),
                    Err(e) => {
                        summary.warnings.push(format!(
                            "{record_key}: unreadable ({e}); the run's newest object dates it"
                        ));
                        None
                    }
                },
                Err(e) => {
                    summary.error(format!("reading {record_key}: {e}; run kept"));
                    continue;
                }
            }
        } else {
            None
        };
        let finished = finished_at(record.as_ref(), &objects);
        let due = is_due(finished, options.now, options.older_than);
        let moved: Vec<&ObjectMeta> = objects
            .iter()
            .filter(|o| layout::unquarantined(&run, &o.key).is_some())
            .collect();
        let (count, bytes) = (moved.len() as u64, moved.iter().map(|o| o.size).sum());
        summary.runs.push(PurgedRun {
            run: run.to_string(),
            finished: finished.map(timestamp),
            objects: count,
            bytes,
            purged: due,
        });
        if !due {
            continue;
        }
        info!(run = %run, objects = count, bytes, dry_run = options.dry_run, "purging");
        summary.runs_purged += 1;
        if options.dry_run {
            summary.objects_deleted += count;
            summary.bytes_deleted += bytes;
            continue;
        }
        // Moved objects, then the run's other objects (journal), then its record.
        let order = |o: &ObjectMeta| {
            if o.key == record_key {
                2
            } else if layout::unquarantined(&run, &o.key).is_some() {
                0
            } else {
                1
            }
        };
        let mut failed = false;
        for step in 0..3 {
            if failed {
                break; // keep the record: the run stays listed
            }
            let keys: Vec<&ObjectMeta> = objects.iter().filter(|o| order(o) == step).collect();
            let batches: Vec<Vec<(&ObjectMeta, Result<(), StorageError>)>> =
                stream::iter(keys.chunks(storage.delete_batch_size().max(1)))
                    .map(|chunk| async move {
                        let keys = chunk.iter().map(|o| o.key.clone()).collect();
                        chunk
                            .iter()
                            .copied()
                            .zip(storage.delete(keys).await)
                            .collect()
                    })
                    .buffer_unordered(options.concurrency.max(1))
                    .collect()
                    .await;
            for (object, result) in batches.into_iter().flatten() {
                match result {
                    Err(e) => {
                        failed = true;
                        summary.error(format!("delete {e}"));
                    }
                    Ok(()) if step == 0 && !object.is_dir_marker() => {
                        summary.objects_deleted += 1;
                        summary.bytes_deleted += object.size;
                    }
                    Ok(()) => {}
                }
            }
        }
        let run_dir = layout::quarantine_run(&run);
        let dirs: Vec<String> = objects
            .iter()
            .flat_map(|o| parents_within(&o.key, &run_dir))
            .map(str::to_owned)
            .collect();
        if let Err(e) = storage.remove_empty_dirs(dirs).await {
            summary.error(format!("removing the run's empty directories: {e}"));
        }
    }
    summary.duration_seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

impl PurgeSummary {
    fn error(&mut self, message: String) {
        warn!("{message}");
        self.errors += 1;
        self.error_messages.push(message);
    }
}

fn write_messages(
    f: &mut fmt::Formatter<'_>,
    warnings: &[String],
    errors: &[String],
) -> fmt::Result {
    for warning in warnings {
        writeln!(f, "warning: {warning}")?;
    }
    for error in errors {
        writeln!(f, "error: {error}")?;
    }
    Ok(())
}

fn write_requests(
    f: &mut fmt::Formatter<'_>,
    errors: u64,
    seconds: f64,
    r: &Requests,
) -> fmt::Result {
    write!(
        f,
        "{errors} errors, {seconds:.1} s, {} requests ({} list, {} get, {} head, {} delete, {} other)",
        r.total(),
        r.list,
        r.get,
        r.head,
        r.delete,
        r.other
    )
}

impl fmt::Display for RestoreSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = if self.dry_run {
            "would restore"
        } else {
            "restored"
        };
        writeln!(f, "storage: {}", self.storage)?;
        writeln!(
            f,
            "run {} ({} objects in its journal)",
            self.run, self.journal_entries
        )?;
        writeln!(
            f,
            "{verb}: {} objects ({}); already back: {} ({}); conflicts: {}",
            self.objects_restored,
            human_bytes(self.bytes_restored),
            self.objects_skipped,
            human_bytes(self.bytes_skipped),
            self.conflicts
        )?;
        if !self.dry_run && !self.run_removed {
            writeln!(f, "the run's directory is kept (something is left in it)")?;
        }
        write_messages(f, &self.warnings, &self.error_messages)?;
        write_requests(f, self.errors, self.duration_seconds, &self.requests)
    }
}

impl fmt::Display for PurgeSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = if self.dry_run {
            "would purge"
        } else {
            "purged"
        };
        writeln!(f, "storage: {}", self.storage)?;
        for run in &self.runs {
            writeln!(
                f,
                "{} run {} (finished {}): {} objects ({})",
                if run.purged { verb } else { "kept" },
                run.run,
                run.finished.as_deref().unwrap_or("never"),
                run.objects,
                human_bytes(run.bytes)
            )?;
        }
        writeln!(
            f,
            "{verb} {} runs older than {}: {} objects ({})",
            self.runs_purged,
            self.older_than,
            self.objects_deleted,
            human_bytes(self.bytes_deleted)
        )?;
        write_messages(f, &self.warnings, &self.error_messages)?;
        write_requests(f, self.errors, self.duration_seconds, &self.requests)
    }
}

/// The summary line of a `gc --quarantine` run.
impl fmt::Display for QuarantineSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "quarantined: {} objects ({}) under {} (undo: regsweep restore --run {})",
            self.objects,
            human_bytes(self.bytes),
            self.prefix,
            self.run
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::local::LocalStorage;
    use crate::storage::object::ObjectStorage;
    use crate::storage::requests::RequestCounter;
    use object_store::ObjectStoreExt;
    use object_store::memory::InMemory;
    use std::collections::BTreeMap;

    const HEX: &str = "a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4";
    const HEX2: &str = "0000000000000000000000000000000000000000000000000000000000000001";

    fn d(hex: &str) -> Digest {
        Digest::from_hex(hex).unwrap()
    }

    fn link(hex: &str) -> Vec<u8> {
        format!("sha256:{hex}").into_bytes()
    }

    #[test]
    fn restore_puts_content_before_links_before_tags() {
        let repo = "team/app";
        let upload = format!("{}_uploads/0b9d/data", layout::repository(repo));
        let stray = format!("{}_junk/x", layout::repository(repo));
        let mut keys = [
            layout::tag_current_link(repo, "v1"),
            layout::tag_index_link(repo, "v1", &d(HEX)),
            layout::revision_link(repo, &d(HEX)),
            layout::revision_signature_link(repo, &d(HEX), &d(HEX2)),
            layout::layer_link(repo, &d(HEX2)),
            layout::blob_data(&d(HEX)),
            upload.clone(),
            stray.clone(),
        ];
        keys.sort_by_key(|k| RestoreStage::of(k).0);
        let stages: Vec<RestoreStage> = keys.iter().map(|k| RestoreStage::of(k).0).collect();
        assert_eq!(
            stages,
            [
                RestoreStage::Content,
                RestoreStage::Content,
                RestoreStage::Links,
                RestoreStage::Links,
                RestoreStage::Links,
                RestoreStage::TagIndex,
                RestoreStage::Tags,
                RestoreStage::Other,
            ]
        );
        assert!(keys[..2].contains(&layout::blob_data(&d(HEX))));
        assert!(keys[..2].contains(&upload));
        assert_eq!(keys[7], stray);
        // Links name the blob they need back first.
        assert_eq!(
            RestoreStage::of(&layout::layer_link(repo, &d(HEX2))),
            (RestoreStage::Links, Some(d(HEX2)))
        );
        assert_eq!(
            RestoreStage::of(&layout::tag_index_link(repo, "v1", &d(HEX))),
            (RestoreStage::TagIndex, Some(d(HEX)))
        );
        assert_eq!(
            RestoreStage::of(&layout::tag_current_link(repo, "v1")).1,
            None
        );
        assert!(RestoreStage::content_addressed(&layout::blob_data(&d(HEX))));
        assert!(!RestoreStage::content_addressed(&layout::tag_current_link(
            repo, "v1"
        )));
        assert!(!RestoreStage::content_addressed(&upload));
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn meta(key: &str, modified: u64) -> ObjectMeta {
        ObjectMeta {
            key: key.to_owned(),
            size: 1,
            modified: at(modified),
        }
    }

    #[test]
    fn purge_dates_runs_by_their_record_else_their_newest_object() {
        const DAY: u64 = 86_400;
        let week = Duration::from_secs(7 * DAY);
        let now = at(100 * DAY);
        let objects = [meta("a", 10 * DAY), meta("b", 95 * DAY)];
        let record = |finished: Option<&str>| RunRecord {
            run: "r".into(),
            started: "1970-01-01T00:00:00Z".into(),
            storage: "s".into(),
            options: serde_json::Value::Null,
            finished: finished.map(str::to_owned),
            objects: 0,
            bytes: 0,
            errors: 0,
        };
        // Finished 90 days after the epoch: 10 days ago.
        let finished = record(Some("1970-04-01T00:00:00.000Z"));
        assert_eq!(finished_at(Some(&finished), &objects), Some(at(90 * DAY)));
        assert!(is_due(finished_at(Some(&finished), &objects), now, week));
        assert!(!is_due(
            finished_at(Some(&finished), &objects),
            now,
            Duration::from_secs(11 * DAY)
        ));
        // No finish time (killed, or an unreadable time): the newest object, 5 days ago.
        for record in [None, Some(record(None)), Some(record(Some("yesterday")))] {
            assert_eq!(finished_at(record.as_ref(), &objects), Some(at(95 * DAY)));
            assert!(!is_due(finished_at(record.as_ref(), &objects), now, week));
            assert!(is_due(
                finished_at(record.as_ref(), &objects),
                now,
                Duration::from_secs(5 * DAY)
            ));
        }
        // Nothing dates it: kept. Zero age: everything finished by now goes, nothing later.
        assert!(!is_due(finished_at(None, &[]), now, Duration::ZERO));
        assert!(is_due(Some(now), now, Duration::ZERO));
        assert!(!is_due(Some(at(100 * DAY + 1)), now, Duration::ZERO));
        // An age beyond the epoch keeps everything.
        assert!(!is_due(Some(at(0)), now, Duration::from_secs(200 * DAY)));
    }

    /// A small registry tree: a blob, its layer link, a revision link, a tag.
    fn tree() -> BTreeMap<String, Vec<u8>> {
        let repo = "app";
        BTreeMap::from([
            (layout::blob_data(&d(HEX)), b"layer content".to_vec()),
            (layout::blob_data(&d(HEX2)), b"manifest".to_vec()),
            (layout::layer_link(repo, &d(HEX)), link(HEX)),
            (layout::revision_link(repo, &d(HEX2)), link(HEX2)),
            (layout::tag_current_link(repo, "v1"), link(HEX2)),
        ])
    }

    async fn contents(storage: &dyn Storage, prefix: &str) -> BTreeMap<String, Vec<u8>> {
        let objects: Vec<ObjectMeta> = storage.list(prefix).try_collect().await.unwrap();
        let mut out = BTreeMap::new();
        for object in objects.iter().filter(|o| !o.is_dir_marker()) {
            out.insert(object.key.clone(), storage.get(&object.key).await.unwrap());
        }
        out
    }

    fn options() -> GcOptions {
        GcOptions {
            dry_run: false,
            delete_untagged: true,
            min_age: Duration::ZERO,
            upload_max_age: Duration::ZERO,
            concurrency: 4,
            pause_before_sweep: None,
            quarantine: None,
        }
    }

    /// Quarantines the whole [`tree`] (and a directory key) into run `run`.
    async fn quarantine_tree(storage: &Arc<dyn Storage>, run: &RunId) -> QuarantineSummary {
        let quarantine = Quarantine::begin(Arc::clone(storage), run.clone(), &options())
            .await
            .unwrap();
        // The same run ID cannot be started twice.
        assert!(matches!(
            Quarantine::begin(Arc::clone(storage), run.clone(), &options()).await,
            Err(QuarantineError::Begin { .. })
        ));
        let mut keys: Vec<String> = tree().into_keys().collect();
        keys.push(format!("{}empty/", layout::REPOSITORIES));
        let results = quarantine.remove(keys.clone()).await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        let (summary, errors) = quarantine.finish(0).await;
        assert!(errors.is_empty(), "{errors:?}");
        summary
    }

    /// Writes `content` under `key` the way the registry would (not through regsweep's `put`,
    /// which leaves `.guard` files on filesystems).
    type Seed = Box<dyn Fn(&str, &[u8])>;

    async fn round_trip(storage: Arc<dyn Storage>, seed: Seed) {
        let before = tree();
        for (key, content) in &before {
            seed(key, content);
        }
        let run = RunId::new(SystemTime::now());
        let moved = quarantine_tree(&storage, &run).await;
        assert_eq!(moved.objects, 5);
        assert_eq!(
            moved.bytes,
            before.values().map(|c| c.len() as u64).sum::<u64>()
        );
        assert!(contents(storage.as_ref(), layout::V2).await.is_empty());
        let quarantined = contents(storage.as_ref(), &layout::quarantine_run(&run)).await;
        for (key, content) in &before {
            assert_eq!(
                quarantined.get(&layout::quarantined(&run, key)),
                Some(content)
            );
        }
        let record: RunRecord =
            serde_json::from_slice(&quarantined[&layout::quarantine_record(&run)]).unwrap();
        assert!(record.finished.is_some());
        assert_eq!((record.objects, record.bytes), (moved.objects, moved.bytes));
        let journal = &quarantined[&layout::quarantine_journal_batch(&run, 0)];
        let entries: Vec<JournalEntry> = journal
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        let journaled: Vec<&str> = entries.iter().map(|e| e.key.as_str()).collect();
        let mut expected: Vec<&str> = before.keys().map(String::as_str).collect();
        let mut journaled_sorted = journaled.clone();
        journaled_sorted.sort_unstable();
        expected.sort_unstable();
        assert_eq!(journaled_sorted, expected);

        // A dry run changes nothing; the restore (of the latest run) puts back exactly.
        let restore_options = |dry_run| RestoreOptions {
            run: None,
            dry_run,
            concurrency: 3,
        };
        let dry = restore(Arc::clone(&storage), restore_options(true))
            .await
            .unwrap();
        assert_eq!((dry.objects_restored, dry.errors), (5, 0), "{dry:?}");
        assert!(contents(storage.as_ref(), layout::V2).await.is_empty());
        let done = restore(Arc::clone(&storage), restore_options(false))
            .await
            .unwrap();
        assert_eq!((done.objects_restored, done.errors), (5, 0), "{done:?}");
        assert_eq!(done.journal_entries, 5);
        assert!(done.run_removed, "{done:?}");
        assert_eq!(contents(storage.as_ref(), layout::V2).await, before);
        assert!(
            contents(storage.as_ref(), layout::QUARANTINE)
                .await
                .is_empty()
        );
        assert!(matches!(
            restore(Arc::clone(&storage), restore_options(false)).await,
            Err(QuarantineError::NoRuns { .. })
        ));

        // Again, but the blob was pushed again and the tag moved on since: the blob's copy is
        // dropped, the tag is a conflict and both versions are kept.
        let run = RunId::new(SystemTime::now() + Duration::from_secs(1));
        quarantine_tree(&storage, &run).await;
        let blob = layout::blob_data(&d(HEX));
        let tag = layout::tag_current_link("app", "v1");
        seed(&blob, &before[&blob]);
        seed(&tag, &link(HEX));
        let done = restore(
            Arc::clone(&storage),
            RestoreOptions {
                run: Some(run.clone()),
                dry_run: false,
                concurrency: 2,
            },
        )
        .await
        .unwrap();
        assert_eq!(
            (done.objects_restored, done.objects_skipped, done.conflicts),
            (3, 1, 1),
            "{done:?}"
        );
        assert_eq!(done.errors, 1);
        assert!(done.error_messages[0].contains(&tag), "{done:?}");
        assert!(!done.run_removed);
        assert_eq!(storage.get(&tag).await.unwrap(), link(HEX));
        let left = contents(storage.as_ref(), &layout::quarantine_run(&run)).await;
        assert_eq!(left[&layout::quarantined(&run, &tag)], link(HEX2));
        assert!(!left.contains_key(&layout::quarantined(&run, &blob)));
        assert!(left.contains_key(&layout::quarantine_record(&run)));

        // Purge: not old enough, then gone for good.
        let purge_options = |older_than| PurgeOptions {
            older_than,
            run: None,
            dry_run: false,
            concurrency: 2,
            now: SystemTime::now() + Duration::from_secs(5),
        };
        let kept = purge(
            Arc::clone(&storage),
            purge_options(Duration::from_secs(3600)),
        )
        .await
        .unwrap();
        assert_eq!((kept.runs.len(), kept.runs_purged), (1, 0), "{kept:?}");
        assert_eq!(
            contents(storage.as_ref(), &layout::quarantine_run(&run)).await,
            left
        );
        let purged = purge(Arc::clone(&storage), purge_options(Duration::ZERO))
            .await
            .unwrap();
        assert_eq!(
            (purged.runs_purged, purged.objects_deleted, purged.errors),
            (1, 1, 0),
            "{purged:?}"
        );
        assert!(
            contents(storage.as_ref(), layout::QUARANTINE)
                .await
                .is_empty()
        );
        assert_eq!(storage.get(&tag).await.unwrap(), link(HEX));
    }

    fn seed_files(root: std::path::PathBuf) -> Seed {
        Box::new(move |key: &str, content: &[u8]| {
            let path = root.join(key);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        })
    }

    #[tokio::test]
    async fn round_trip_on_a_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let storage = LocalStorage::open(dir.path(), &RequestCounter::default()).unwrap();
        let root = dir.path().to_owned();
        round_trip(Arc::new(storage), seed_files(root)).await;
        // Nothing is left of the quarantine's directories.
        let quarantine = dir.path().join(layout::QUARANTINE);
        assert_eq!(std::fs::read_dir(&quarantine).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn round_trip_on_an_object_store() {
        let store = Arc::new(InMemory::new());
        let storage = ObjectStorage::new(Arc::clone(&store) as _, "root", "mem://".into(), 2);
        let seed = move |key: &str, content: &[u8]| {
            let path = object_store::path::Path::parse(format!("root/{key}")).unwrap();
            let put = store.put(&path, content.to_vec().into());
            futures::executor::block_on(put).unwrap();
        };
        round_trip(Arc::new(storage), Box::new(seed)).await;
    }

    #[tokio::test]
    async fn a_link_whose_blob_cannot_be_restored_stays_in_the_quarantine() {
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> =
            Arc::new(LocalStorage::open(dir.path(), &RequestCounter::default()).unwrap());
        let seed = seed_files(dir.path().to_owned());
        for (key, content) in tree() {
            seed(&key, &content);
        }
        let run = RunId::new(SystemTime::now());
        quarantine_tree(&storage, &run).await;
        // Something in the way of the layer's directory: its restore fails.
        let blob = layout::blob_data(&d(HEX));
        let blob_dir = dir.path().join(blob.trim_end_matches("/data"));
        std::fs::remove_dir(&blob_dir).unwrap();
        std::fs::write(&blob_dir, b"in the way").unwrap();
        let done = restore(
            Arc::clone(&storage),
            RestoreOptions {
                run: Some(run.clone()),
                dry_run: false,
                concurrency: 2,
            },
        )
        .await
        .unwrap();
        assert_eq!(done.errors, 2, "{done:?}");
        assert_eq!(done.objects_restored, 3, "{done:?}");
        let layer_link = layout::layer_link("app", &d(HEX));
        let left = contents(storage.as_ref(), &layout::quarantine_run(&run)).await;
        assert!(left.contains_key(&layout::quarantined(&run, &blob)));
        assert!(left.contains_key(&layout::quarantined(&run, &layer_link)));
        assert!(left.contains_key(&layout::quarantine_record(&run)));
        assert!(matches!(
            storage.get(&layer_link).await,
            Err(StorageError::NotFound { .. })
        ));
        // The manifest, its revision link and the tag are back.
        assert_eq!(
            storage
                .get(&layout::tag_current_link("app", "v1"))
                .await
                .unwrap(),
            link(HEX2)
        );
    }
}
