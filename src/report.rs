//! Report: the summary of a run, as one JSON object for schedulers or as text for people.
//!
//! The field names are a contract: operators' scripts and schedulers read them. Add, never rename.

use std::fmt;

use serde::Serialize;

use crate::plan::{Deletion, Kind, SweepPlan};
use crate::quarantine::QuarantineSummary;
use crate::restart::redis::RedisOutcome;
use crate::restart::webhook::WebhookOutcome;
use crate::restart::{CommandOutcome, Deleted};
use crate::scan::Inventory;
use crate::select::Decision;
use crate::state::StateHeader;
use crate::storage::requests::Requests;

/// What a run found and what it deleted (in a dry run: what it would delete).
#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct Summary {
    pub dry_run: bool,
    pub storage: String,
    pub repositories: u64,
    pub tags: u64,
    /// Revision links: manifests present in repositories.
    pub manifests: u64,
    pub blobs_total: u64,
    pub bytes_total: u64,
    pub blobs_deleted: u64,
    pub bytes_deleted: u64,
    /// Revision links removed (the manifests left their repositories; their blobs count as blobs).
    pub manifests_deleted: u64,
    /// `_layers` links, tag index entries, legacy signature links and the links of broken tags.
    pub links_deleted: u64,
    /// Tags whose `current/link` named a manifest missing from storage.
    pub tags_deleted: u64,
    /// Tags removed on request (`delete`, `prune`); their links count in `links_deleted`.
    pub tags_removed: u64,
    pub repositories_deleted: u64,
    pub uploads_deleted: u64,
    pub upload_bytes_deleted: u64,
    /// S3 multipart uploads of stale uploads, aborted.
    pub multipart_uploads_aborted: u64,
    /// Directories that were already empty (or directory markers).
    pub directories_deleted: u64,
    /// Directories the sweep emptied and removed (never in a dry run).
    pub directories_pruned: u64,
    /// Objects regsweep does not recognise; never deleted.
    pub unknown_objects: u64,
    /// Planned deletions the re-mark before the sweep dropped: pushes since the scan made them live.
    pub deletions_spared: u64,
    pub errors: u64,
    pub error_messages: Vec<String>,
    pub warnings: Vec<String>,
    /// `delete` and `prune`: every tag decided, with the rule that decided it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub decisions: Vec<Decision>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart: Option<CommandOutcome>,
    /// How `--pre-command` and `--post-command` ended, when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pre_command: Option<CommandOutcome>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub post_command: Option<CommandOutcome>,
    /// `sweep`: the mark state's run and the shard swept (`I/N`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mark: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
    /// The run, as the lock and logs name it (absent in dry runs, which take no lock).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// With `--quarantine`: where what was removed went (`run`, `prefix`, `objects`, `bytes`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quarantine: Option<QuarantineSummary>,
    /// When `--redis-url` flushed the registry's Redis cache (before the restart command).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisOutcome>,
    /// When `--restart-url` was called (after the restart command).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart_url: Option<WebhookOutcome>,
    /// Requests sent to the storage, by kind (on a filesystem: directory reads, file reads,
    /// unlinks).
    pub requests: Requests,
    pub duration_seconds: f64,
    /// What the sweep deleted, for the registry's caches to forget. Not part of the JSON.
    #[serde(skip)]
    pub deleted: Deleted,
}

impl Summary {
    /// The counts of what was found.
    pub fn of_inventory(inventory: &Inventory, storage: String, dry_run: bool) -> Summary {
        let repos = &inventory.repositories;
        let unknown =
            inventory.unknown.len() + repos.iter().map(|r| r.unknown.len()).sum::<usize>();
        Summary {
            dry_run,
            storage,
            repositories: count(repos.len()),
            tags: repos
                .iter()
                .map(|r| count(r.tags.iter().filter(|t| t.current.is_some()).count()))
                .sum(),
            manifests: repos.iter().map(|r| count(r.revisions.len())).sum(),
            blobs_total: count(inventory.blobs.len()),
            bytes_total: inventory.blobs.total_bytes(),
            unknown_objects: count(unknown),
            ..Summary::default()
        }
    }

    /// Adds one deletion of the plan made from `inventory` that went (or, in a dry run, would go).
    pub fn count_deletion(&mut self, deletion: &Deletion, inventory: &Inventory) {
        let keys = count(deletion.key_count());
        match deletion.kind {
            Kind::Manifest => {
                self.manifests_deleted += 1;
                self.links_deleted += keys - 1;
            }
            Kind::SignatureLink | Kind::TagIndexEntry | Kind::LayerLink => {
                self.links_deleted += keys
            }
            Kind::Tag => {
                self.tags_deleted += 1;
                self.links_deleted += keys;
            }
            Kind::RemovedTag => {
                self.tags_removed += 1;
                self.links_deleted += keys;
            }
            Kind::Blob => {
                self.blobs_deleted += 1;
                self.bytes_deleted += deletion.bytes(&inventory.blobs);
            }
            Kind::Upload => {
                self.uploads_deleted += 1;
                self.upload_bytes_deleted += deletion.bytes(&inventory.blobs);
            }
            Kind::MultipartUpload => self.multipart_uploads_aborted += 1,
            Kind::EmptyDirectory => self.directories_deleted += 1,
        }
    }

    /// Counts a whole plan, as a dry run reports it.
    pub fn count_plan(&mut self, plan: &SweepPlan, inventory: &Inventory) {
        for deletion in &plan.deletions {
            self.count_deletion(deletion, inventory);
        }
        self.repositories_deleted = count(plan.repositories_deleted.len());
    }

    /// Whether this run deleted (or moved into the quarantine) anything the registry may cache.
    pub fn deleted_anything(&self) -> bool {
        !self.dry_run
            && (self.blobs_deleted
                + self.manifests_deleted
                + self.links_deleted
                + self.tags_deleted
                + self.tags_removed
                + self.uploads_deleted
                + self.directories_deleted)
                > 0
    }

    pub fn add_error(&mut self, message: String) {
        self.errors += 1;
        self.error_messages.push(message);
    }
}

/// An error and its sources, each once: many errors (object_store's among them) already print
/// their source, which printing the chain would repeat.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message = format!("{message}: {text}");
        }
        source = cause.source();
    }
    message
}

fn count(n: usize) -> u64 {
    u64::try_from(n).expect("count fits in u64")
}

/// `1.5 GiB`-style sizes for people.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = if self.dry_run {
            "would delete"
        } else {
            "deleted"
        };
        writeln!(f, "storage: {}", self.storage)?;
        if let (Some(mark), Some(shard)) = (&self.mark, &self.shard) {
            writeln!(f, "sweep of shard {shard} from the mark {mark}")?;
        }
        writeln!(
            f,
            "found: {} repositories, {} tags, {} manifests, {} blobs ({})",
            self.repositories,
            self.tags,
            self.manifests,
            self.blobs_total,
            human_bytes(self.bytes_total)
        )?;
        writeln!(
            f,
            "{verb}: {} blobs ({}), {} manifests, {} links, {} tags, {} repositories, {} uploads ({}), {} directories",
            self.blobs_deleted,
            human_bytes(self.bytes_deleted),
            self.manifests_deleted,
            self.links_deleted,
            self.tags_deleted + self.tags_removed,
            self.repositories_deleted,
            self.uploads_deleted,
            human_bytes(self.upload_bytes_deleted),
            self.directories_deleted
        )?;
        if let Some(quarantine) = &self.quarantine {
            writeln!(f, "{quarantine}")?;
        }
        if self.unknown_objects > 0 {
            writeln!(f, "kept {} unrecognised objects", self.unknown_objects)?;
        }
        for warning in &self.warnings {
            writeln!(f, "warning: {warning}")?;
        }
        for error in &self.error_messages {
            writeln!(f, "error: {error}")?;
        }
        if let Some(redis) = &self.redis {
            writeln!(
                f,
                "redis cache {}: {}, {} keys deleted, {} set members removed",
                redis.url, redis.status, redis.keys_deleted, redis.members_removed
            )?;
        }
        if let Some(restart) = &self.restart {
            writeln!(f, "restart command: {}", restart.status)?;
        }
        if let Some(webhook) = &self.restart_url {
            writeln!(f, "restart URL {}: {}", webhook.url, webhook.status)?;
        }
        let r = &self.requests;
        write!(
            f,
            "{} errors, {:.1} s, {} requests ({} list, {} get, {} head, {} delete, {} other)",
            self.errors,
            self.duration_seconds,
            r.total(),
            r.list,
            r.get,
            r.head,
            r.delete,
            r.other
        )
    }
}

/// What `regsweep mark` prints: the state it wrote.
#[derive(Debug, Default, Serialize)]
pub struct MarkSummary {
    /// Where the state went (`registry:NAME` or a path).
    pub state: String,
    /// The state's own header: run, storage, start, cut-offs, options, counts.
    #[serde(flatten)]
    pub header: StateHeader,
    /// Size of the state written.
    pub state_bytes: u64,
    /// What a sweep of every shard would delete now, and the content it would free.
    pub deletions_planned: u64,
    pub bytes_reclaimable: u64,
    pub warnings: Vec<String>,
    /// Errors after the state was written (the metrics file); a mark that fails writes no summary.
    pub errors: u64,
    pub error_messages: Vec<String>,
    pub requests: Requests,
    pub duration_seconds: f64,
}

impl fmt::Display for MarkSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = &self.header;
        writeln!(f, "storage: {}", h.storage)?;
        writeln!(
            f,
            "marked: {} live blobs of {} ({}), {} repositories",
            h.live_blobs,
            h.blobs,
            human_bytes(h.bytes),
            h.repositories
        )?;
        writeln!(
            f,
            "state: {} ({}), mark {} started {}",
            self.state,
            human_bytes(self.state_bytes),
            h.run,
            h.started
        )?;
        writeln!(
            f,
            "a sweep would delete now: {} objects, freeing {}",
            self.deletions_planned,
            human_bytes(self.bytes_reclaimable)
        )?;
        for warning in &self.warnings {
            writeln!(f, "warning: {warning}")?;
        }
        for error in &self.error_messages {
            writeln!(f, "error: {error}")?;
        }
        write!(f, "took {:.1}s", self.duration_seconds)
    }
}
