//! Sweep: carries out a [`SweepPlan`], phase by phase, with batched deletes and bounded concurrency.
//!
//! A failed deletion is recorded with its key and does not stop the others. Fail closed across
//! phases: when a revision link or `_layers` link could not be deleted, the blob it names is not
//! deleted either, so no failure leaves a link to a missing blob. After each batch, the directories
//! the batch emptied are removed (on backends that have directories); whichever batch deletes the
//! last object of a directory removes it, so none is left behind.
//!
//! With a [`Quarantine`], objects are moved into it instead of deleted (directory keys are still
//! deleted, multipart uploads still aborted), with the same order, batches and rules.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::{StreamExt, stream};

use crate::digest::Digest;
use crate::layout;
use crate::plan::{Deletion, Phase, SweepPlan, Target};
use crate::progress::Progress;
use crate::quarantine::Quarantine;
use crate::scan::Inventory;
use crate::storage::Storage;

/// What a sweep did.
#[derive(Debug, Default)]
pub struct SweepOutcome {
    /// Aligned with the plan's deletions: whether every key of each was deleted.
    pub done: Vec<bool>,
    /// One line per failure, naming the key.
    pub errors: Vec<String>,
    /// Directories removed because the sweep emptied them.
    pub directories_removed: u64,
}

pub async fn sweep(
    storage: &Arc<dyn Storage>,
    plan: &SweepPlan,
    inventory: &Inventory,
    concurrency: usize,
    halt: &AtomicBool,
    quarantine: Option<&Quarantine>,
    progress: &Progress,
) -> SweepOutcome {
    progress.begin(plan.deletions.len());
    let mut outcome = SweepOutcome {
        done: vec![false; plan.deletions.len()],
        ..SweepOutcome::default()
    };
    // Blobs still named by a link we failed to delete.
    let mut still_linked: HashSet<Digest> = HashSet::new();
    let batch = storage.delete_batch_size().max(1);
    let mut start = 0;
    let mut halted = 0;
    for phase in Phase::ALL {
        let end = start
            + plan.deletions[start..]
                .iter()
                .take_while(|d| d.phase == phase)
                .count();
        progress.enter(phase);
        let runnable: Vec<usize> = (start..end)
            .filter(|&i| match plan.deletions[i].target {
                Target::Blob(index) => !still_linked.contains(inventory.blobs.digest(index)),
                Target::LayerLink { .. } | Target::Keys(_) | Target::Multipart(_) => true,
            })
            .collect();
        let mut failed = 0;
        let mut batches = stream::iter(runnable.chunks(batch).map(|chunk| async move {
            if halt.load(Ordering::SeqCst) {
                // Not attempted: the run lock was lost, another run may be sweeping now.
                BatchResult {
                    halted: chunk.len(),
                    ..BatchResult::default()
                }
            } else {
                delete_batch(storage, chunk, &plan.deletions, inventory, quarantine).await
            }
        }))
        .buffer_unordered(concurrency.max(1));
        while let Some(result) = batches.next().await {
            let before = failed;
            let mut freed = 0;
            let settled = (result.deletions.len() + result.halted) as u64;
            halted += result.halted;
            outcome.directories_removed += result.directories_removed;
            for (i, failure) in result.deletions {
                match failure {
                    None => {
                        outcome.done[i] = true;
                        freed += plan.deletions[i].bytes(&inventory.blobs);
                    }
                    Some(message) => {
                        failed += 1;
                        outcome.errors.push(message);
                        if let Some((_, digest)) = plan.deletions[i].link(inventory) {
                            still_linked.insert(digest);
                        }
                    }
                }
            }
            outcome.errors.extend(result.errors);
            progress.advance(settled, failed - before, freed);
        }
        start = end;
        // A tag `delete` or `prune` could not remove still names its manifest: what the later
        // phases would delete may be that very image.
        if phase == Phase::Untag && failed > 0 {
            outcome.errors.push(format!(
                "{failed} removed tags could not be deleted: nothing else was deleted (run again)"
            ));
            break;
        }
    }
    if halted > 0 {
        outcome.errors.push(format!(
            "the run lock was lost (another run may be sweeping): {halted} deletions not attempted"
        ));
    }
    outcome
}

#[derive(Default)]
struct BatchResult {
    /// Deletions not attempted because the run was halted.
    halted: usize,
    /// Per deletion: `None` when all its keys went, else the first failure.
    deletions: Vec<(usize, Option<String>)>,
    errors: Vec<String>,
    directories_removed: u64,
}

async fn delete_batch(
    storage: &Arc<dyn Storage>,
    chunk: &[usize],
    deletions: &[Deletion],
    inventory: &Inventory,
    quarantine: Option<&Quarantine>,
) -> BatchResult {
    let mut owners = Vec::new();
    let mut keys = Vec::new();
    let mut aborted: Vec<(usize, Option<String>)> = Vec::new();
    for &i in chunk {
        if let Target::Multipart(upload) = &deletions[i].target {
            let failure = storage.abort_multipart_upload(upload).await.err();
            aborted.push((
                i,
                failure.map(|e| format!("aborting the multipart upload {}: {e}", upload.key)),
            ));
            continue;
        }
        for key in deletions[i].keys(inventory) {
            owners.push(i);
            keys.push(key);
        }
    }
    let (results, verb) = match quarantine {
        Some(quarantine) => (quarantine.remove(keys.clone()).await, "quarantine"),
        None => (storage.delete(keys.clone()).await, "delete"),
    };
    let mut failures: Vec<(usize, Option<String>)> = chunk
        .iter()
        .filter(|&&i| !matches!(deletions[i].target, Target::Multipart(_)))
        .map(|&i| (i, None))
        .collect();
    let mut emptied: Vec<String> = Vec::new();
    for ((owner, key), result) in owners.iter().zip(&keys).zip(results) {
        match result {
            Ok(()) => emptied.extend(layout::removable_parents(key).map(str::to_owned)),
            Err(e) => {
                let slot = failures.iter_mut().find(|(i, _)| i == owner);
                if let Some((_, failure @ None)) = slot {
                    *failure = Some(format!("{verb} {e}"));
                }
            }
        }
    }
    let mut errors = Vec::new();
    let directories_removed = match storage.remove_empty_dirs(emptied).await {
        Ok(n) => n,
        Err(e) => {
            errors.push(format!("removing empty directories: {e}"));
            0
        }
    };
    failures.extend(aborted);
    BatchResult {
        halted: 0,
        deletions: failures,
        errors,
        directories_removed,
    }
}
