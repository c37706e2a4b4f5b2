//! Absence check: before anything relies on a referenced blob being gone, ask the storage.
//!
//! The mark and the plan read "not in the listing" as "not in storage": a tag whose manifest is not
//! listed is broken and goes, its manifest's layers are garbage, a link to an unlisted blob is
//! dangling. A listing that misses an object (an S3-compatible server with a bug, an eventually
//! consistent replica, a range listed short) would thus turn into deleted tags and layers of a live
//! image. So every digest that is referenced — by a tag, a link or a manifest read — and was not
//! listed is looked up on its own (one HEAD each, concurrently) before the mark. One that is there
//! and older than the run, as is everything naming it, stops the run: a listing that loses objects
//! cannot be trusted with anything else either. One written since the run started, or named by
//! something that was, is a push racing the scan, not a gap: the grace period and the re-mark before
//! the sweep ([`crate::remark`]) protect what it makes live.
//!
//! Only what makes things live is looked up: tag targets, revisions and the references of the
//! manifests read; not the dangling `_layers` links the official collector leaves behind (see
//! [`referenced_unlisted`]). A registry without broken tags or images has none to look up.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::{StreamExt, TryStreamExt, stream};
use thiserror::Error;

use crate::digest::Digest;
use crate::layout;
use crate::mark::ManifestCatalog;
use crate::scan::Inventory;
use crate::storage::{Storage, StorageError};

/// Why absences could not be confirmed: nothing is deleted.
#[derive(Debug, Error)]
pub enum AbsenceError {
    #[error(
        "blob {digest} ({referrer}) is stored ({key}, modified before the run) but the listing did \
         not return it: a storage whose listings miss objects cannot be collected safely"
    )]
    ListedIncompletely {
        digest: Digest,
        referrer: String,
        key: String,
    },
    #[error("cannot confirm that blob {digest} ({referrer}) is absent: {source}")]
    Unconfirmed {
        digest: Digest,
        referrer: String,
        /// Boxed: the error travels up through every stage's result type.
        source: Box<StorageError>,
    },
}

/// How far the storage's clock may be behind this machine's: a blob written during the run may carry
/// a modification time up to this much before the run's start and still count as written during it.
pub const CLOCK_SKEW: Duration = Duration::from_secs(300);

/// Confirms that every referenced blob missing from the scan's listing was absent when the run
/// `started`: absent now, or written since, or named only by things of which one was written since;
/// returns how many were looked up.
pub async fn confirm(
    storage: &Arc<dyn Storage>,
    inventory: &Inventory,
    catalog: &ManifestCatalog,
    started: SystemTime,
    concurrency: usize,
) -> Result<usize, AbsenceError> {
    let absent = referenced_unlisted(inventory, catalog);
    let count = absent.len();
    let written_before = started.checked_sub(CLOCK_SKEW).unwrap_or(started);
    stream::iter(absent)
        .map(|(digest, Unlisted { referrer, youngest })| async move {
            let key = layout::blob_data(&digest);
            match storage.head(&key).await {
                Ok(None) => Ok(()),
                // Written since the run started, or named by something that was: a push racing
                // the scan. (A filesystem commits a blob by renaming its upload, which keeps the
                // time of the upload's last write: the blob itself can look older than the push.)
                Ok(Some(meta)) if meta.modified >= written_before || youngest >= written_before => {
                    tracing::info!(%digest, key, "a blob was written during the scan");
                    Ok(())
                }
                Ok(Some(_)) => Err(AbsenceError::ListedIncompletely {
                    digest,
                    referrer,
                    key,
                }),
                Err(source) => Err(AbsenceError::Unconfirmed {
                    digest,
                    referrer,
                    source: Box::new(source),
                }),
            }
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect::<()>()
        .await?;
    Ok(count)
}

/// A referenced blob the listing did not return.
#[derive(Debug, PartialEq, Eq)]
struct Unlisted {
    /// The first thing found referencing it, for the error message.
    referrer: String,
    /// When the most recently written of the things referencing it was written.
    youngest: SystemTime,
}

/// Every digest that a tag, a revision or a manifest read references and the listing did not return.
/// Pure.
fn referenced_unlisted(
    inventory: &Inventory,
    catalog: &ManifestCatalog,
) -> BTreeMap<Digest, Unlisted> {
    let universe = &inventory.blobs;
    let mut absent: BTreeMap<Digest, Unlisted> = BTreeMap::new();
    let mut note = |digest: &Digest, modified: SystemTime, referrer: &dyn Fn() -> String| {
        if universe.index(digest).is_none() {
            let unlisted = absent.entry(*digest).or_insert_with(|| Unlisted {
                referrer: referrer(),
                youngest: modified,
            });
            unlisted.youngest = unlisted.youngest.max(modified);
        }
    };
    // What makes things live: tag targets, revisions (every manifest of a repository), and what the
    // manifests read reference. Layer links, tag index entries and signature links are not looked
    // up: a blob a manifest of the repository references is looked up as that manifest's
    // reference, and removing a link to a blob that no manifest references breaks no image. (The
    // official collector leaves one dangling `_layers` link per blob it deleted: millions of HEADs
    // on a large registry, for nothing.)
    for repo in &inventory.repositories {
        let name = &repo.name;
        // Tags first: the referrer named is the one an operator recognises best.
        for tag in &repo.tags {
            if let Some(current) = &tag.current
                && let Ok(target) = &current.target
            {
                note(target, current.modified, &|| {
                    format!("tag {name}:{}", tag.name)
                });
            }
        }
        for link in &repo.revisions {
            note(&link.digest, link.modified(), &|| {
                format!("revision of repository {name}")
            });
        }
    }
    for (index, refs) in catalog.incomplete() {
        let (manifest, modified) = (universe.digest(index), universe.modified(index));
        let referenced = refs
            .manifests
            .iter()
            .chain(&refs.blobs)
            .chain(&refs.subject);
        for digest in referenced {
            note(digest, modified, &|| {
                format!("referenced by manifest {manifest}")
            });
        }
    }
    absent
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::manifest::{ManifestKind, ManifestRefs};
    use crate::scan::{BlobUniverse, Link, Repository, Tag, TagCurrent};
    use crate::storage::local::LocalStorage;
    use crate::storage::requests::RequestCounter;

    fn d(n: u8) -> Digest {
        Digest::from_bytes([n; 32])
    }

    fn link(digest: Digest) -> Link {
        Link::new(digest, SystemTime::UNIX_EPOCH)
    }

    /// Repository `app`: tag v1 → manifest 1 (listed; references child 4 and layer 5, not listed),
    /// tag v2 → manifest 2 (not listed), layer links 3 (listed) and 6 (not listed).
    fn inventory() -> (Inventory, ManifestCatalog) {
        let universe =
            BlobUniverse::new([1, 3].map(|n| (d(n), 10, SystemTime::UNIX_EPOCH)).to_vec());
        let tag = |name: &str, target| Tag {
            name: name.to_owned(),
            current: Some(TagCurrent {
                target: Ok(target),
                modified: SystemTime::UNIX_EPOCH,
            }),
            index: vec![link(target)],
        };
        let repo = Repository {
            name: "app".to_owned(),
            layer_links: vec![link(d(3)), link(d(6))].into(),
            revisions: vec![link(d(1))],
            tags: vec![tag("v1", d(1)), tag("v2", d(2))],
            ..Repository::default()
        };
        let index = universe.index(&d(1)).unwrap();
        let refs = ManifestRefs {
            kind: ManifestKind::OciImageIndex,
            manifests: vec![d(4)],
            blobs: vec![d(5)],
            subject: None,
        };
        let catalog = ManifestCatalog::of_parsed(&universe, [(index, Ok(refs))]);
        let inventory = Inventory {
            blobs: universe,
            repositories: vec![repo],
            ..Inventory::default()
        };
        (inventory, catalog)
    }

    #[test]
    fn what_makes_things_live_is_looked_up_once_and_dangling_layer_links_are_not() {
        let (inventory, catalog) = inventory();
        let absent: BTreeMap<Digest, String> = referenced_unlisted(&inventory, &catalog)
            .into_iter()
            .map(|(digest, unlisted)| (digest, unlisted.referrer))
            .collect();
        let expected = [
            (d(2), "tag app:v2".to_owned()),
            (d(4), format!("referenced by manifest {}", d(1))),
            (d(5), format!("referenced by manifest {}", d(1))),
        ];
        assert_eq!(absent, BTreeMap::from(expected));
    }

    #[tokio::test]
    async fn a_stored_blob_the_listing_missed_stops_the_run_by_name_unless_written_since() {
        let (mut inventory, catalog) = inventory();
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> =
            Arc::new(LocalStorage::open(dir.path(), &RequestCounter::default()).unwrap());
        // Nothing of 2, 4, 5 is stored: confirmed absent, one lookup each (none for the dangling
        // layer link to 6).
        let started = SystemTime::now();
        let looked_up = confirm(&storage, &inventory, &catalog, started, 4)
            .await
            .unwrap();
        assert_eq!(looked_up, 3);

        // Manifest 2 is stored, written just now: a push that raced the scan, not a gap.
        let key = layout::blob_data(&d(2));
        let path = dir.path().join(&key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"{}").unwrap();
        confirm(&storage, &inventory, &catalog, started, 4)
            .await
            .unwrap();

        // Stored since before the run (beyond the clock skew allowed): the listing missed it.
        let old = started - CLOCK_SKEW - Duration::from_secs(1);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let error = confirm(&storage, &inventory, &catalog, started, 4)
            .await
            .unwrap_err();
        assert!(
            matches!(&error, AbsenceError::ListedIncompletely { digest, .. } if *digest == d(2)),
            "{error}"
        );
        let message = error.to_string();
        assert!(
            message.contains("tag app:v2") && message.contains(&key),
            "{message}"
        );

        // The same old blob, but its tag was written since the run started: a push racing the
        // scan (on a filesystem a committed blob keeps its upload's older time), not a gap.
        let v2 = &mut inventory.repositories[0].tags[1];
        v2.current.as_mut().unwrap().modified = started;
        confirm(&storage, &inventory, &catalog, started, 4)
            .await
            .unwrap();
    }
}
