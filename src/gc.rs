//! The whole collection, stage by stage: scan → mark → plan, then sweep (unless dry run) → summary.
//!
//! [`Collection::prepare`] does everything that only reads; nothing is deleted unless it succeeds,
//! and what it plans can be inspected ([`Collection::plan_entries`]) before [`Collection::run`]
//! carries it out.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant, SystemTime};

use roaring::RoaringBitmap;
use serde::Serialize;
use thiserror::Error;
use tracing::info;

use crate::absence::{self, AbsenceError};
use crate::digest::Digest;
use crate::manifest::ManifestRefs;
use crate::mark::{self, ManifestCatalog, MarkError, MarkOptions, MarkSet};
use crate::plan::{self, Kind, Owner, Phase, PlanOptions, Reprieve, SweepPlan};
use crate::progress::Progress;
use crate::quarantine::Quarantine;
use crate::remark;
use crate::report::{Summary, error_chain};
use crate::restart::Deleted;
use crate::run_id::RunId;
use crate::scan::{self, Inventory, Listed, Repository, ScanError, Tag, Upload};
use crate::select::{self, Decision, Released, Request, SelectError, Selection};
use crate::shard::Shard;
use crate::state::{self, Baseline, MarkState, StateHeader};
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
    /// Test hook: before the re-mark, wait until this file exists (see `REGSWEEP_TEST_PAUSE_BEFORE_SWEEP`
    /// in the binary), so that a test can push while the collection is between mark and sweep.
    pub pause_before_sweep: Option<std::path::PathBuf>,
    /// Move what would be deleted into this quarantine run instead (`--quarantine`).
    pub quarantine: Option<RunId>,
}

/// Why nothing was deleted.
#[derive(Debug, Error)]
pub enum GcError {
    #[error(transparent)]
    Scan(#[from] ScanError),
    #[error("refusing to delete anything: what was written since the mark: {0}")]
    SinceMark(#[from] remark::RemarkError),
    #[error(transparent)]
    Absence(#[from] AbsenceError),
    #[error("refusing to delete anything: {0}")]
    Select(#[from] SelectError),
    #[error("refusing to delete anything:\n  {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
    FailClosed(Vec<MarkError>),
}

/// A collection that has been planned and not yet carried out.
#[derive(Debug)]
pub struct Collection {
    storage: Arc<dyn Storage>,
    options: GcOptions,
    started: Instant,
    /// The run's start by the clock: its grace periods count back from it.
    started_at: SystemTime,
    inventory: Inventory,
    catalog: ManifestCatalog,
    marks: MarkSet,
    mark_options: MarkOptions,
    plan_options: PlanOptions,
    plan: SweepPlan,
    /// What `delete` or `prune` took away before the mark (empty for `gc`).
    released: Released,
    /// Each repository's tags and uploads as scanned, when a selection took some out of
    /// `inventory` (the only fields [`select::strip`] changes, so the only ones copied: a copy of
    /// the layer links would hold one more link per blob): the re-mark compares the storage with
    /// what the scan saw, and the summary counts what was found.
    scanned: Option<Vec<(Vec<Tag>, Vec<Upload>)>>,
    decisions: Vec<Decision>,
    /// A sweep from a mark state (`regsweep sweep`).
    from_state: Option<FromState>,
}

/// What a sweep from a mark state keeps of it until its last deletion.
#[derive(Debug)]
struct FromState {
    /// To tell, just before the sweep, what was written since the mark.
    baseline: Baseline,
    /// Manifests live in any repository at the mark (indices in the inventory's universe).
    live_manifests: RoaringBitmap,
    /// The live blobs of other shards added to the universe (not listed, never deleted, not
    /// counted).
    unlisted_blobs: usize,
    /// Manifests read for what busy repositories reach, by digest: the re-mark does not read them
    /// again (a manifest's content is its digest's; those found missing are looked for again).
    read_since: HashMap<Digest, Option<ManifestRefs>>,
}

/// Drops every deletion in a repository `reprieve` names (written since the mark: left as it is)
/// and every one that would touch what it keeps; returns how many went.
fn spare_busy(plan: &mut SweepPlan, inventory: &Inventory, reprieve: &Reprieve) -> usize {
    let busy = &reprieve.repositories;
    let before = plan.deletions.len();
    plan.deletions.retain(|d| match d.owner(inventory) {
        Owner::Repository(name) => !busy.contains(name),
        _ => true,
    });
    plan.repositories_deleted
        .retain(|name| !busy.contains(name));
    before - plan.deletions.len() + plan.spare(inventory, reprieve)
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
        Collection::prepare_inner(storage, options, None).await
    }

    /// Scans, takes away what `request` selects (`delete`, `prune`: see [`crate::select`]), then
    /// marks and plans, so that the sweep removes the selection and the garbage it makes. Reads
    /// only; a target that does not exist, or a manifest named by digest that something kept
    /// still reaches, refuses the whole run.
    pub async fn prepare_selected(
        storage: Arc<dyn Storage>,
        options: GcOptions,
        request: &Request,
    ) -> Result<Collection, GcError> {
        Collection::prepare_inner(storage, options, Some(request)).await
    }

    async fn prepare_inner(
        storage: Arc<dyn Storage>,
        options: GcOptions,
        request: Option<&Request>,
    ) -> Result<Collection, GcError> {
        let started = Instant::now();
        let now = SystemTime::now();
        let concurrency = options.concurrency.max(1);

        info!(storage = %storage, "scanning");
        let mut inventory = scan::scan(&storage, concurrency).await?;
        info!(
            repositories = inventory.repositories.len(),
            blobs = inventory.blobs.len(),
            "scanned"
        );
        let selection = request
            .map(|request| request.select(&inventory, now, before(now, options.min_age)))
            .transpose()?
            .unwrap_or_default();

        let catalog = mark::load_manifests(&storage, &inventory, concurrency).await;
        let looked_up = absence::confirm(&storage, &inventory, &catalog, now, concurrency).await?;
        info!(
            blobs = looked_up,
            "confirmed absent what the listing did not return"
        );
        let mark_options = MarkOptions {
            delete_untagged: options.delete_untagged,
            cutoff: before(now, options.min_age),
        };
        let mut released = selection.released.clone();
        let mut scanned = None;
        let mut removed = Vec::new();
        if request.is_some() {
            select::release_closure(&inventory, &catalog, &mut released);
            scanned = Some(
                inventory
                    .repositories
                    .iter()
                    .map(|r| (r.tags.clone(), r.uploads.clone()))
                    .collect(),
            );
            removed = select::strip(&mut inventory, &selection, mark_options.cutoff);
            info!(
                tags_removed = released.tag_count(),
                manifests_released = released.revision_count(),
                "selected"
            );
        }
        let marks = mark::mark_released(&inventory, &catalog, mark_options, &released)
            .map_err(GcError::FailClosed)?;
        info!(
            manifests_read = catalog.len(),
            blobs_marked = marks.blobs.len(),
            "marked"
        );
        refuse_kept_requests(&inventory, &marks, &selection, mark_options.cutoff)?;

        let plan_options = PlanOptions {
            cutoff: mark_options.cutoff,
            upload_cutoff: before(now, options.upload_max_age),
        };
        let mut plan = plan::plan(&inventory, &marks, plan_options);
        if !removed.is_empty() {
            plan.deletions.extend(removed);
            // Stable: within a phase, the plan's own order stays.
            plan.deletions.sort_by_key(|d| d.phase);
        }
        info!(deletions = plan.deletions.len(), "planned");
        Ok(Collection {
            storage,
            options,
            started,
            started_at: now,
            inventory,
            catalog,
            marks,
            mark_options,
            plan_options,
            plan,
            released,
            scanned,
            decisions: selection.decisions,
            from_state: None,
        })
    }

    /// Prepares the sweep of one shard from a mark state (`regsweep sweep`): lists the shard's
    /// blobs and every repository, takes what was live from the state, and plans the deletions of
    /// the shard's blobs and repositories, with the state's grace cut-offs. Repositories written
    /// since the mark ([`remark::busy_since_mark`]) are left as they are, and whatever they reach
    /// is kept ([`remark::since_mark`]). Reads only; `state` must have passed
    /// [`MarkState::check`](crate::state::MarkState::check), and is dropped as soon as its marks
    /// are in the inventory.
    pub async fn prepare_sweep(
        storage: Arc<dyn Storage>,
        options: GcOptions,
        state: MarkState,
        shard: Shard,
    ) -> Result<Collection, GcError> {
        let started = Instant::now();
        let concurrency = options.concurrency.max(1);
        let header = state.header.clone();
        let cutoff = header.cutoff();
        info!(storage = %storage, %shard, mark = header.run, "scanning");
        let mut inventory = scan::scan_shard(&storage, concurrency, &shard, cutoff).await?;
        info!(
            repositories = inventory.repositories.len(),
            blobs = inventory.blobs.len(),
            "scanned"
        );
        let baseline = state.baseline();
        let busy =
            remark::busy_since_mark(&storage, &baseline, &inventory.repositories, concurrency)
                .await
                .map_err(ScanError::from)?;
        let mut busy: HashSet<String> = busy
            .into_iter()
            .map(|r| inventory.repositories[r].name.clone())
            .collect();
        // A tag link of its own that cannot be read now (written while it was read, corrupt): the
        // closure of a busy repository refuses the run on it, as gc's mark does, rather than the
        // plan taking the tag for broken.
        busy.extend(
            inventory
                .repositories
                .iter()
                .filter(|r| {
                    shard.owns_repository(&r.name)
                        && r.tags
                            .iter()
                            .any(|t| t.current.as_ref().is_some_and(|c| c.target.is_err()))
                })
                .map(|r| r.name.clone()),
        );
        // Of the other shards' repositories, only the busy ones matter here (for what they reach);
        // their tag links are read now.
        inventory
            .repositories
            .retain(|r| shard.owns_repository(&r.name) || busy.contains(&r.name));
        scan::read_tag_links(
            &storage,
            &mut inventory.repositories,
            &|r| !shard.owns_repository(&r.name),
            &inventory.oversize_tag_links,
            concurrency,
        )
        .await
        .map_err(ScanError::from)?;
        let applied = state.apply(&mut inventory);
        // The live blobs are in the universe now: the state's own copy goes.
        drop(state);
        let busy_repositories: Vec<&Repository> = inventory
            .repositories
            .iter()
            .filter(|r| busy.contains(&r.name))
            .collect();
        let mut read_since = HashMap::new();
        let reprieve = remark::since_mark(
            &storage,
            &inventory,
            &applied.live_manifests,
            &busy_repositories,
            cutoff,
            &mut read_since,
            concurrency,
        )
        .await?;
        let mark_options = MarkOptions {
            delete_untagged: header.delete_untagged,
            cutoff,
        };
        let plan_options = PlanOptions {
            cutoff,
            upload_cutoff: header.upload_cutoff(),
        };
        let mut plan = plan::plan(&inventory, &applied.marks, plan_options);
        plan.deletions.retain(|d| shard.owns(d.owner(&inventory)));
        plan.repositories_deleted
            .retain(|name| shard.owns_repository(name));
        let spared = spare_busy(&mut plan, &inventory, &reprieve);
        info!(
            deletions = plan.deletions.len(),
            busy_repositories = busy.len(),
            spared,
            "planned"
        );
        Ok(Collection {
            storage,
            options,
            started,
            started_at: header.started(),
            inventory,
            catalog: ManifestCatalog::default(),
            marks: applied.marks,
            mark_options,
            plan_options,
            plan,
            released: Released::default(),
            scanned: None,
            decisions: Vec::new(),
            from_state: Some(FromState {
                baseline,
                live_manifests: applied.live_manifests,
                unlisted_blobs: applied.unlisted,
                read_since,
            }),
        })
    }

    /// The mark state of this collection's mark, for `regsweep sweep` (`run` names the mark,
    /// `storage_id` is the storage's [`state::storage_id`]). The collection is taken, and freed as
    /// the state is built: the plan first, then the repositories, the catalog and the per-repository
    /// marks.
    pub fn into_state(self, run: &RunId, storage_id: String) -> MarkState {
        let header = StateHeader {
            run: run.to_string(),
            regsweep: env!("CARGO_PKG_VERSION").to_owned(),
            storage: self.storage.to_string(),
            storage_id,
            started: humantime::format_rfc3339_millis(self.started_at).to_string(),
            started_ms: state::millis(self.started_at),
            cutoff_ms: state::millis(self.mark_options.cutoff),
            upload_cutoff_ms: state::millis(self.plan_options.upload_cutoff),
            delete_untagged: self.mark_options.delete_untagged,
            min_age_seconds: self.options.min_age.as_secs(),
            upload_max_age_seconds: self.options.upload_max_age.as_secs(),
            blobs: self.inventory.blobs.len() as u64,
            bytes: self.inventory.blobs.total_bytes(),
            live_blobs: 0,
            repositories: 0,
        };
        let Collection {
            inventory,
            catalog,
            marks,
            plan,
            ..
        } = self;
        drop(plan);
        MarkState::of_inventory(header, inventory, catalog, marks)
    }

    /// What the scan found.
    pub fn inventory(&self) -> &Inventory {
        &self.inventory
    }

    /// What the mark found live.
    pub fn marks(&self) -> &MarkSet {
        &self.marks
    }

    /// What the sweep would delete.
    pub fn plan(&self) -> &SweepPlan {
        &self.plan
    }

    /// The mark and the plan of the same scan with `--delete-untagged` as given, computed again in
    /// memory (nothing is read, the grace periods are the same): a report tells what `gc` and
    /// `gc -m` would each reclaim from one scan.
    pub fn replan(&self, delete_untagged: bool) -> Result<(MarkSet, SweepPlan), GcError> {
        let mark_options = MarkOptions {
            delete_untagged,
            ..self.mark_options
        };
        let marks = mark::mark(&self.inventory, &self.catalog, mark_options)
            .map_err(GcError::FailClosed)?;
        let plan = plan::plan(&self.inventory, &marks, self.plan_options);
        Ok((marks, plan))
    }

    /// Every tag `delete` or `prune` decided, with the rule that decided it.
    pub fn decisions(&self) -> &[Decision] {
        &self.decisions
    }

    /// Swaps the tags and uploads of the inventory's repositories with those as scanned (a second
    /// call swaps them back): the re-mark and the summary look at what the scan found, the plan's
    /// targets at the repositories and layer links, which are the same in both.
    fn swap_scanned(&mut self) {
        if let Some(scanned) = self.scanned.as_mut() {
            for (repo, (tags, uploads)) in self.inventory.repositories.iter_mut().zip(scanned) {
                std::mem::swap(&mut repo.tags, tags);
                std::mem::swap(&mut repo.uploads, uploads);
            }
        }
    }

    /// Every key the sweep deletes, in order.
    pub fn plan_entries(&self) -> impl Iterator<Item = PlanEntry> + '_ {
        self.plan.deletions.iter().flat_map(|deletion| {
            deletion
                .keys(&self.inventory)
                .into_iter()
                .enumerate()
                .map(|(i, key)| PlanEntry {
                    phase: deletion.phase,
                    kind: deletion.kind,
                    key,
                    bytes: if i == 0 {
                        deletion.bytes(&self.inventory.blobs)
                    } else {
                        0
                    },
                })
        })
    }

    /// Sweeps (unless this is a dry run) and sums up. Before the sweep, the re-mark spares what
    /// pushes made live since the scan; if it fails, nothing is deleted. Once `halt` is set (the run
    /// lock was lost), no further deletion starts.
    pub async fn run(mut self, halt: Arc<AtomicBool>, progress: &Progress) -> Summary {
        self.swap_scanned();
        let mut summary = Summary::of_inventory(
            &self.inventory,
            self.storage.to_string(),
            self.options.dry_run,
        );
        self.swap_scanned();
        if let Some(from) = &self.from_state {
            summary.blobs_total -= from.unlisted_blobs as u64;
        }
        summary.warnings = std::mem::take(&mut self.marks.warnings);
        summary.decisions = std::mem::take(&mut self.decisions);
        if self.options.dry_run {
            summary.count_plan(&self.plan, &self.inventory);
        } else {
            match self.remark().await {
                Ok(spared) => summary.deletions_spared = spared as u64,
                Err(error) => {
                    summary.add_error(format!(
                        "refusing to delete anything: the re-mark before the sweep failed: {error}"
                    ));
                    summary.duration_seconds = self.started.elapsed().as_secs_f64();
                    return summary;
                }
            }
            let quarantine = match &self.options.quarantine {
                Some(run) => {
                    let storage = Arc::clone(&self.storage);
                    match Quarantine::begin(storage, run.clone(), &self.options).await {
                        Ok(quarantine) => Some(quarantine),
                        Err(e) => {
                            summary.add_error(error_chain(&e));
                            summary.duration_seconds = self.started.elapsed().as_secs_f64();
                            return summary;
                        }
                    }
                }
                None => None,
            };
            let outcome = sweep::sweep(
                &self.storage,
                &self.plan,
                &self.inventory,
                self.options.concurrency,
                &halt,
                quarantine.as_ref(),
                progress,
            )
            .await;
            for (deletion, _) in self
                .plan
                .deletions
                .iter()
                .zip(&outcome.done)
                .filter(|(_, done)| **done)
            {
                summary.count_deletion(deletion, &self.inventory);
            }
            summary.deleted = Deleted::of_sweep(&self.plan, &outcome.done, &self.inventory);
            // A repository any of whose deletions failed is still there.
            summary.repositories_deleted = summary.deleted.repositories.len() as u64;
            summary.directories_pruned = outcome.directories_removed;
            for error in outcome.errors {
                summary.add_error(error);
            }
            if let Some(quarantine) = quarantine {
                let (moved, errors) = quarantine.finish(summary.errors).await;
                summary.quarantine = Some(moved);
                for error in errors {
                    summary.add_error(error);
                }
            }
        }
        summary.duration_seconds = self.started.elapsed().as_secs_f64();
        summary
    }

    /// Lists the repositories again and drops from the plan whatever became live since the scan;
    /// returns how many deletions it dropped.
    async fn remark(&mut self) -> Result<usize, remark::RemarkError> {
        if let Some(barrier) = &self.options.pause_before_sweep {
            eprintln!("{PAUSE_MARKER}");
            while !barrier.exists() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        if self.from_state.is_some() {
            return self.remark_since_mark().await;
        }
        // The re-mark compares the storage with what the scan saw, selection or not.
        self.swap_scanned();
        let reprieve = remark::remark_released(
            &self.storage,
            &self.inventory,
            &self.marks,
            &self.catalog,
            self.mark_options,
            self.options.concurrency.max(1),
            &self.released,
        )
        .await;
        self.swap_scanned();
        let reprieve = reprieve?;
        let spared = self.plan.spare(&self.inventory, &reprieve);
        if spared > 0 {
            info!(
                spared,
                busy_repositories = reprieve.repositories.len(),
                "spared what the registry wrote since the scan"
            );
        }
        Ok(spared)
    }

    /// The re-mark of a sweep from a mark state: the repositories are listed again (without their
    /// old layer links), and those written since the mark — now, not only at the scan — are left
    /// as they are, with whatever they reach. What is written since the mark is written after its
    /// cut-off, or changes the facts the state recorded, so this needs no comparison with the
    /// sweep's own scan.
    async fn remark_since_mark(&mut self) -> Result<usize, remark::RemarkError> {
        let from = self.from_state.as_mut().expect("a sweep from a mark state");
        // A manifest's content never changes, but one that was not stored may be now.
        from.read_since.retain(|_, read| read.is_some());
        let concurrency = self.options.concurrency.max(1);
        let cutoff = from.baseline.cutoff();
        let (mut repos, oversize) =
            scan::list_repositories(&self.storage, concurrency, &|_, listed| match listed {
                Listed::LayerLink(link) => link.modified() > cutoff,
                _ => true,
            })
            .await?;
        let busy =
            remark::busy_since_mark(&self.storage, &from.baseline, &repos, concurrency).await?;
        let busy: HashSet<String> = busy.into_iter().map(|r| repos[r].name.clone()).collect();
        scan::read_tag_links(
            &self.storage,
            &mut repos,
            &|r| busy.contains(&r.name),
            &oversize,
            concurrency,
        )
        .await?;
        let busy_repositories: Vec<&Repository> =
            repos.iter().filter(|r| busy.contains(&r.name)).collect();
        let reprieve = remark::since_mark(
            &self.storage,
            &self.inventory,
            &from.live_manifests,
            &busy_repositories,
            cutoff,
            &mut from.read_since,
            concurrency,
        )
        .await?;
        let spared = spare_busy(&mut self.plan, &self.inventory, &reprieve);
        if spared > 0 {
            info!(
                spared,
                busy_repositories = busy.len(),
                "spared what the registry wrote since the mark"
            );
        }
        Ok(spared)
    }
}

/// Refuses a selection whose manifests named by digest would stay: something kept (a tag on the
/// same digest, an index listing it, a referrer's subject…) reaches them, or they are younger than
/// the grace period. Deleting their revision link would break what reaches them.
fn refuse_kept_requests(
    inventory: &Inventory,
    marks: &MarkSet,
    selection: &Selection,
    cutoff: SystemTime,
) -> Result<(), SelectError> {
    for (name, digest) in &selection.requested {
        let Some(r) = inventory.repository_index(name) else {
            continue;
        };
        let repo = &inventory.repositories[r];
        let young = repo
            .revisions
            .iter()
            .any(|l| l.digest == *digest && l.modified() > cutoff);
        let live = inventory
            .blobs
            .index(digest)
            .is_some_and(|i| marks.repositories[r].manifests.contains(i));
        let reason = if young {
            "it was pushed within --min-age"
        } else if live {
            "a tag or manifest that stays refers to it (a multi-arch index listing it, or a tag on \
             the same digest)"
        } else {
            continue;
        };
        return Err(SelectError::StillReferenced {
            repository: name.clone(),
            digest: *digest,
            reason: reason.to_owned(),
        });
    }
    Ok(())
}

/// Printed on stderr when [`GcOptions::pause_before_sweep`] makes the run wait.
pub const PAUSE_MARKER: &str = "regsweep-test: paused before the sweep";
