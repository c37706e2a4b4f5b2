//! The whole collection, stage by stage: scan → mark → plan, then sweep (unless dry run) → summary.
//!
//! [`Collection::prepare`] does everything that only reads; nothing is deleted unless it succeeds,
//! and what it plans can be inspected ([`Collection::plan_entries`]) before [`Collection::run`]
//! carries it out.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use thiserror::Error;
use tracing::info;

use crate::mark::{self, MarkError, MarkOptions};
use crate::plan::{self, Kind, Phase, PlanOptions, SweepPlan};
use crate::report::Summary;
use crate::restart::Deleted;
use crate::scan::{self, Inventory, ScanError};
use crate::storage::Storage;
use crate::sweep;

/// What the operator asked for.
#[derive(Debug, Clone)]
pub struct GcOptions {
    pub dry_run: bool,
    pub delete_untagged: bool,
    /// Nothing modified more recently than this is deleted.
    pub min_age: Duration,
    /// Uploads with no activity for this long are abandoned.
    pub upload_max_age: Duration,
    /// Storage requests in flight at once.
    pub concurrency: usize,
}

/// Why nothing was deleted.
#[derive(Debug, Error)]
pub enum GcError {
    #[error(transparent)]
    Scan(#[from] ScanError),
    #[error("refusing to delete anything:\n  {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
    FailClosed(Vec<MarkError>),
}

/// A collection that has been planned and not yet carried out.
#[derive(Debug)]
pub struct Collection {
    storage: Arc<dyn Storage>,
    options: GcOptions,
    started: Instant,
    inventory: Inventory,
    plan: SweepPlan,
    warnings: Vec<String>,
}

/// One key of the plan, as `--plan-file` writes it.
#[derive(Debug, Serialize)]
pub struct PlanEntry {
    pub phase: Phase,
    pub kind: Kind,
    pub key: String,
    /// Content freed by the deletion this key belongs to (given on its first key only).
    pub bytes: u64,
}

/// `at - age`, or the epoch when that would be before it.
fn before(at: SystemTime, age: Duration) -> SystemTime {
    at.checked_sub(age).unwrap_or(SystemTime::UNIX_EPOCH)
}

impl Collection {
    /// Scans, marks and plans. Reads only.
    pub async fn prepare(
        storage: Arc<dyn Storage>,
        options: GcOptions,
    ) -> Result<Collection, GcError> {
        let started = Instant::now();
        let now = SystemTime::now();
        let concurrency = options.concurrency.max(1);

        info!(storage = %storage, "scanning");
        let inventory = scan::scan(&storage, concurrency).await?;
        info!(
            repositories = inventory.repositories.len(),
            blobs = inventory.blobs.len(),
            "scanned"
        );

        let catalog = mark::load_manifests(&storage, &inventory, concurrency).await;
        let mark_options = MarkOptions {
            delete_untagged: options.delete_untagged,
            cutoff: before(now, options.min_age),
        };
        let marks = mark::mark(&inventory, &catalog, mark_options).map_err(GcError::FailClosed)?;
        info!(
            manifests_read = catalog.len(),
            blobs_marked = marks.blobs.len(),
            "marked"
        );

        let plan = plan::plan(
            &inventory,
            &marks,
            PlanOptions {
                cutoff: mark_options.cutoff,
                upload_cutoff: before(now, options.upload_max_age),
            },
        );
        info!(deletions = plan.deletions.len(), "planned");
        Ok(Collection {
            storage,
            options,
            started,
            inventory,
            plan,
            warnings: marks.warnings,
        })
    }

    /// Every key the sweep deletes, in order.
    pub fn plan_entries(&self) -> impl Iterator<Item = PlanEntry> + '_ {
        self.plan.deletions.iter().flat_map(|deletion| {
            deletion
                .keys(&self.inventory.blobs)
                .into_iter()
                .enumerate()
                .map(|(i, key)| PlanEntry {
                    phase: deletion.phase,
                    kind: deletion.kind,
                    key,
                    bytes: if i == 0 { deletion.bytes } else { 0 },
                })
        })
    }

    /// Sweeps (unless this is a dry run) and sums up.
    pub async fn run(self) -> Summary {
        let mut summary = Summary::of_inventory(
            &self.inventory,
            self.storage.to_string(),
            self.options.dry_run,
        );
        summary.warnings = self.warnings;
        if self.options.dry_run {
            summary.count_plan(&self.plan, &self.inventory);
        } else {
            let outcome = sweep::sweep(
                &self.storage,
                &self.plan,
                &self.inventory.blobs,
                self.options.concurrency,
            )
            .await;
            let universe = &self.inventory.blobs;
            for (deletion, _) in self
                .plan
                .deletions
                .iter()
                .zip(&outcome.done)
                .filter(|(_, done)| **done)
            {
                summary.count_deletion(deletion, deletion.keys(universe).len());
            }
            summary.deleted = Deleted::of_sweep(&self.plan, &outcome.done, &self.inventory);
            // A repository any of whose deletions failed is still there.
            summary.repositories_deleted = summary.deleted.repositories.len() as u64;
            summary.directories_pruned = outcome.directories_removed;
            for error in outcome.errors {
                summary.add_error(error);
            }
        }
        summary.duration_seconds = self.started.elapsed().as_secs_f64();
        summary
    }
}
