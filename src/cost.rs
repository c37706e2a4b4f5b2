//! Cost report (`regsweep report`): what the registry stores, what is live, what a collection would
//! reclaim and why, per repository and registry-wide, and what it costs a month.
//!
//! A report is a collection that is only prepared: one scan, the mark and the plan of a dry run
//! ([`Collection::prepare`]), plus the mark and plan of `gc -m` computed again in memory from the
//! same scan ([`Collection::replan`]). [`compute`] turns them into a [`CostReport`]; it is pure, so
//! every number is unit-tested without storage. [`render`] writes the report as text, CSV or one
//! self-contained HTML page; `--format json` is its serde form.
//!
//! Every number is defined in terms of the mark and the plan, so that the report agrees with what
//! `gc` would do with the same `--min-age` and `--upload-max-age` (README, "Cost report").

pub mod render;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::digest::Digest;
use crate::gc::{Collection, GcError, GcOptions};
use crate::layout::{self, BlobObject, RepositoryObject};
use crate::mark::MarkSet;
use crate::plan::{Deletion, Kind, SweepPlan};
use crate::scan::{BlobUniverse, Inventory};
use crate::storage::Storage;
use crate::storage::requests::{RequestCounter, Requests};

/// S3 Standard storage, first 50 TB a month, US East (N. Virginia), in USD per GiB-month (AWS bills
/// S3 storage in binary gigabytes), in effect since 2016-12-01 (README, "Cost report").
pub const S3_STANDARD_PER_GIB_MONTH: f64 = 0.023;
/// S3 Standard LIST (and PUT, COPY, POST) requests, USD per 1,000.
pub const S3_LIST_PER_1000: f64 = 0.005;
/// S3 Standard GET (and HEAD and other read) requests, USD per 1,000.
pub const S3_GET_PER_1000: f64 = 0.0004;

const GIB: f64 = (1u64 << 30) as f64;

/// Prices the report's costs are computed at, in USD.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Prices {
    pub per_gib_month: f64,
    pub per_1000_list: f64,
    pub per_1000_get: f64,
}

impl Default for Prices {
    fn default() -> Prices {
        Prices {
            per_gib_month: S3_STANDARD_PER_GIB_MONTH,
            per_1000_list: S3_LIST_PER_1000,
            per_1000_get: S3_GET_PER_1000,
        }
    }
}

impl Prices {
    /// What storing `bytes` costs a month.
    pub fn monthly(&self, bytes: u64) -> f64 {
        bytes as f64 / GIB * self.per_gib_month
    }

    /// What `requests` cost: listings and anything that writes at the LIST price, reads at the GET
    /// price; deletions are free on S3.
    pub fn requests(&self, requests: &Requests) -> f64 {
        (requests.list + requests.other) as f64 / 1000.0 * self.per_1000_list
            + (requests.get + requests.head) as f64 / 1000.0 * self.per_1000_get
    }
}

/// What the operator asked for.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    /// As in `gc`: nothing younger is reclaimable.
    pub min_age: Duration,
    /// As in `gc`: uploads with no activity for this long are reclaimable.
    pub upload_max_age: Duration,
    pub concurrency: usize,
    pub prices: Prices,
    /// How many entries the lists of largest blobs and repositories hold.
    pub top: usize,
}

/// The whole report. Field names are a contract (README, "Cost report"): add, never rename.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CostReport {
    pub storage: String,
    /// When the scan started (RFC 3339, UTC).
    pub generated_at: String,
    pub min_age_seconds: u64,
    pub upload_max_age_seconds: u64,
    pub registry: RegistryTotals,
    pub reclaimable_by_cause: ReclaimableByCause,
    /// Every repository, by name.
    pub repositories: Vec<RepositoryCost>,
    /// The repositories referencing the most bytes, largest first.
    pub largest_repositories: Vec<RepositorySize>,
    /// The largest blobs, largest first.
    pub largest_blobs: Vec<BlobSize>,
    /// Cumulative bytes referenced by one repository (unique) and by several (shared), by the
    /// month their blobs were written, oldest first, every month in between included.
    pub growth: Vec<GrowthPoint>,
    pub cost: Cost,
    /// Oddities the mark reported (kept objects).
    pub warnings: Vec<String>,
}

/// Registry-wide numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RegistryTotals {
    pub repositories: u64,
    /// Tags with a `current/link`.
    pub tags: u64,
    /// Revision links.
    pub manifests: u64,
    /// Revision links of manifests in storage that `gc -m` would remove.
    pub untagged_manifests: u64,
    pub blobs: u64,
    pub blob_bytes: u64,
    /// Files under `_uploads/`.
    pub upload_bytes: u64,
    /// `blob_bytes + upload_bytes`.
    pub stored_bytes: u64,
    /// Blobs the mark reaches from every tag and every manifest of every repository.
    pub live_bytes: u64,
    /// What `gc` would free: orphan blobs and stale uploads.
    pub reclaimable_bytes: u64,
    /// What `gc -m` would free: that and the blobs only untagged manifests reference.
    pub reclaimable_bytes_delete_untagged: u64,
    /// The part of `reclaimable_bytes` in blobs linked by no repository or by several, which no
    /// repository's `reclaimable_bytes` counts.
    pub unattributed_reclaimable_bytes: u64,
    /// Likewise for `reclaimable_bytes_delete_untagged`.
    pub unattributed_reclaimable_bytes_delete_untagged: u64,
}

/// One cause of reclaimable storage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Cause {
    /// Objects of this cause: revision links, blobs, uploads or links.
    pub count: u64,
    /// Blobs it frees.
    pub blobs: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ReclaimableByCause {
    /// Freed only by `gc -m`: untagged revision links (`count`) and the blobs that only they
    /// reference, the manifests themselves included.
    pub untagged_manifests: Cause,
    /// Blobs no manifest of any repository references (`count` = `blobs`).
    pub orphan_blobs: Cause,
    /// Uploads with no activity for `--upload-max-age` (`bytes`: their files).
    pub stale_uploads: Cause,
    /// Links naming a blob that is not in storage (0 bytes).
    pub dangling_links: Cause,
}

impl ReclaimableByCause {
    /// `(name, cause)` in the order reports show them.
    pub fn named(&self) -> [(&'static str, Cause); 4] {
        [
            ("untagged_manifests", self.untagged_manifests),
            ("orphan_blobs", self.orphan_blobs),
            ("stale_uploads", self.stale_uploads),
            ("dangling_links", self.dangling_links),
        ]
    }
}

/// One repository's numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RepositoryCost {
    pub name: String,
    pub tags: u64,
    pub manifests: u64,
    pub untagged_manifests: u64,
    /// Distinct blobs its manifests reference (tagged or not), the manifests included.
    pub bytes_referenced: u64,
    /// The part of `bytes_referenced` no other repository references.
    pub bytes_unique: u64,
    /// `bytes_referenced - bytes_unique`.
    pub bytes_shared: u64,
    /// What `gc` would free of it: blobs it alone links, and its stale uploads.
    pub reclaimable_bytes: u64,
    /// Likewise for `gc -m`.
    pub reclaimable_bytes_delete_untagged: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RepositorySize {
    pub name: String,
    pub bytes_referenced: u64,
    pub bytes_unique: u64,
    pub bytes_shared: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlobSize {
    pub digest: String,
    pub bytes: u64,
    /// RFC 3339, UTC.
    pub modified: String,
    /// `live`, `untagged` (freed by `gc -m`), `orphan` (freed by `gc`) or `recent` (referenced by
    /// nothing, younger than `--min-age`).
    pub status: BlobStatus,
    /// Repositories whose manifests reference it.
    pub repositories: Vec<String>,
    /// Repositories that link it (`_layers` or revision link): where it was pushed or mounted,
    /// orphans included.
    pub linked_by: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BlobStatus {
    Live,
    Untagged,
    Orphan,
    Recent,
}

impl BlobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            BlobStatus::Live => "live",
            BlobStatus::Untagged => "untagged",
            BlobStatus::Orphan => "orphan",
            BlobStatus::Recent => "recent",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GrowthPoint {
    /// `YYYY-MM`, UTC.
    pub month: String,
    pub unique_bytes: u64,
    pub shared_bytes: u64,
}

/// Monthly costs at [`Prices`], in USD.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cost {
    pub currency: &'static str,
    pub price_per_gib_month: f64,
    pub price_per_1000_list: f64,
    pub price_per_1000_get: f64,
    pub stored_per_month: f64,
    pub live_per_month: f64,
    pub reclaimable_per_month: f64,
    pub reclaimable_delete_untagged_per_month: f64,
    /// Requests the scan sent, by kind (on a filesystem: directory reads, file reads).
    pub scan_requests: Requests,
    /// What those requests cost (on a filesystem: what the same counts would cost on S3).
    pub scan_cost: f64,
}

/// Scans, marks and plans as a dry run of `gc` and of `gc -m` would (no lock, no hooks, nothing
/// deleted), and computes the report. `counter` must be the one `storage` counts its requests in.
pub async fn report(
    storage: Arc<dyn Storage>,
    options: &ReportOptions,
    counter: &RequestCounter,
) -> Result<CostReport, GcError> {
    let started = SystemTime::now();
    let storage_name = storage.to_string();
    let collection = Collection::prepare(
        storage,
        GcOptions {
            dry_run: true,
            delete_untagged: false,
            min_age: options.min_age,
            upload_max_age: options.upload_max_age,
            concurrency: options.concurrency,
            pause_before_sweep: None,
            quarantine: None,
        },
    )
    .await?;
    let requests = counter.snapshot();
    let (_, plan_delete_untagged) = collection.replan(true)?;
    Ok(compute(&Inputs {
        storage: storage_name,
        started,
        options,
        inventory: collection.inventory(),
        marks: collection.marks(),
        plan: collection.plan(),
        plan_delete_untagged: &plan_delete_untagged,
        requests,
    }))
}

/// What [`compute`] works from.
#[derive(Debug)]
pub struct Inputs<'a> {
    pub storage: String,
    pub started: SystemTime,
    pub options: &'a ReportOptions,
    pub inventory: &'a Inventory,
    /// The mark of `gc` without `-m`: every tag and every manifest is a root.
    pub marks: &'a MarkSet,
    /// The plan of `gc`.
    pub plan: &'a SweepPlan,
    /// The plan of `gc -m` over the same scan.
    pub plan_delete_untagged: &'a SweepPlan,
    pub requests: Requests,
}

/// Who references or links a blob: nobody, one repository, or several. One `u32` a blob, because
/// the report keeps one of these for every blob of the registry.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Holders(u32);

impl Holders {
    const NONE: Holders = Holders(0);
    const SEVERAL: Holders = Holders(u32::MAX);

    fn add(&mut self, repository: usize) {
        let one = Holders(u32::try_from(repository + 1).expect("fewer than 2^32 repositories"));
        *self = match *self {
            Holders::NONE => one,
            current if current == one => one,
            _ => Holders::SEVERAL,
        };
    }

    /// The one repository, if exactly one.
    fn only(self) -> Option<usize> {
        (self != Holders::NONE && self != Holders::SEVERAL).then(|| self.0 as usize - 1)
    }
}

/// What one plan frees, as a report counts it.
#[derive(Default)]
struct Freed {
    /// Blob indices, sorted.
    blobs: Vec<u32>,
    /// `(repository, bytes)` of each stale upload.
    uploads: Vec<(String, u64)>,
    /// `(repository, revision digest)` of each revision link removed.
    revisions: Vec<(String, Digest)>,
    /// Links removed whose blob is not in storage.
    dangling_links: u64,
}

impl Freed {
    fn of(plan: &SweepPlan, inventory: &Inventory) -> Freed {
        let mut freed = Freed::default();
        for deletion in &plan.deletions {
            freed.add(deletion, inventory);
        }
        freed.blobs.sort_unstable();
        freed
    }

    fn add(&mut self, deletion: &Deletion, inventory: &Inventory) {
        let universe = &inventory.blobs;
        let keys = deletion.keys(inventory);
        let missing = |digest: &Digest| universe.index(digest).is_none();
        match deletion.kind {
            Kind::Blob => {
                for key in &keys {
                    if let BlobObject::Data(digest) = layout::parse_blob_key(key) {
                        self.blobs.extend(universe.index(&digest));
                    }
                }
            }
            Kind::Upload => {
                if let Some(name) = keys
                    .first()
                    .and_then(|key| layout::parse_repository_key(key).repository)
                {
                    self.uploads
                        .push((name.to_owned(), deletion.bytes(universe)));
                }
            }
            Kind::MultipartUpload | Kind::EmptyDirectory => {}
            Kind::Manifest
            | Kind::SignatureLink
            | Kind::TagIndexEntry
            | Kind::LayerLink
            | Kind::Tag
            | Kind::RemovedTag => {
                for key in &keys {
                    let parsed = layout::parse_repository_key(key);
                    let dangling = match parsed.object {
                        RepositoryObject::RevisionLink(digest) => {
                            if let Some(name) = parsed.repository {
                                self.revisions.push((name.to_owned(), digest));
                            }
                            missing(&digest)
                        }
                        RepositoryObject::LayerLink(digest)
                        | RepositoryObject::TagIndex { digest, .. }
                        | RepositoryObject::RevisionSignature {
                            signature: digest, ..
                        } => missing(&digest),
                        // A broken tag's `current/link` names a manifest missing from storage.
                        RepositoryObject::TagCurrent { .. } => deletion.kind == Kind::Tag,
                        _ => false,
                    };
                    self.dangling_links += u64::from(dangling);
                }
            }
        }
    }

    fn contains_blob(&self, index: u32) -> bool {
        self.blobs.binary_search(&index).is_ok()
    }
}

/// The report of one scan. Pure.
pub fn compute(inputs: &Inputs<'_>) -> CostReport {
    let inventory = inputs.inventory;
    let universe = &inventory.blobs;
    let blob_count = universe.len();
    let repos = &inventory.repositories;
    let prices = inputs.options.prices;

    // Who references each blob (through the manifests of the plain mark), who links it.
    let mut referenced = vec![Holders::NONE; blob_count];
    let mut referenced_by: Vec<Vec<u32>> = Vec::with_capacity(repos.len());
    for (r, marks) in inputs.marks.repositories.iter().enumerate() {
        let mut blobs: Vec<u32> = marks.manifests.iter().chain(marks.layers.iter()).collect();
        blobs.sort_unstable();
        blobs.dedup();
        for &i in &blobs {
            referenced[i as usize].add(r);
        }
        referenced_by.push(blobs);
    }
    let mut linked = vec![Holders::NONE; blob_count];
    for (r, repo) in repos.iter().enumerate() {
        let layers = repo.layer_links.iter(universe).filter_map(|(_, i)| i);
        let revisions = repo
            .revisions
            .iter()
            .filter_map(|l| universe.index(&l.digest));
        for i in layers.chain(revisions) {
            linked[i as usize].add(r);
        }
    }

    let gc = Freed::of(inputs.plan, inputs.inventory);
    let gc_m = Freed::of(inputs.plan_delete_untagged, inputs.inventory);

    let mut repositories: Vec<RepositoryCost> = repos
        .iter()
        .zip(&referenced_by)
        .enumerate()
        .map(|(r, (repo, blobs))| {
            let bytes_referenced = blobs.iter().map(|&i| universe.size(i)).sum();
            let bytes_unique = blobs
                .iter()
                .filter(|&&i| referenced[i as usize].only() == Some(r))
                .map(|&i| universe.size(i))
                .sum();
            RepositoryCost {
                name: repo.name.clone(),
                tags: count(repo.tags.iter().filter(|t| t.current.is_some()).count()),
                manifests: count(repo.revisions.len()),
                bytes_referenced,
                bytes_unique,
                bytes_shared: bytes_referenced - bytes_unique,
                ..RepositoryCost::default()
            }
        })
        .collect();

    // Reclaimable: blobs the plan deletes that one repository alone links, and stale uploads.
    let attribute = |freed: &Freed,
                     field: fn(&mut RepositoryCost) -> &mut u64,
                     repositories: &mut [RepositoryCost]| {
        let mut unattributed = 0;
        for &i in &freed.blobs {
            match linked[i as usize].only() {
                Some(r) => *field(&mut repositories[r]) += universe.size(i),
                None => unattributed += universe.size(i),
            }
        }
        for (name, bytes) in &freed.uploads {
            match inventory.repository_index(name) {
                Some(r) => *field(&mut repositories[r]) += bytes,
                None => unattributed += bytes,
            }
        }
        unattributed
    };
    let unattributed = attribute(&gc, |r| &mut r.reclaimable_bytes, &mut repositories);
    let unattributed_m = attribute(
        &gc_m,
        |r| &mut r.reclaimable_bytes_delete_untagged,
        &mut repositories,
    );

    // Untagged manifests: the revision links `gc -m` removes whose manifest is in storage (the
    // others, which `gc` removes too, are dangling links).
    let untagged: Vec<&(String, Digest)> = gc_m
        .revisions
        .iter()
        .filter(|(_, digest)| universe.index(digest).is_some())
        .collect();
    for (name, _) in &untagged {
        if let Some(r) = inventory.repository_index(name) {
            repositories[r].untagged_manifests += 1;
        }
    }
    let untagged_blobs: Vec<u32> = gc_m
        .blobs
        .iter()
        .copied()
        .filter(|&i| !gc.contains_blob(i))
        .collect();
    let bytes_of = |blobs: &[u32]| blobs.iter().map(|&i| universe.size(i)).sum::<u64>();
    let upload_bytes_of = |freed: &Freed| freed.uploads.iter().map(|(_, b)| b).sum::<u64>();

    let reclaimable_by_cause = ReclaimableByCause {
        untagged_manifests: Cause {
            count: count(untagged.len()),
            blobs: count(untagged_blobs.len()),
            bytes: bytes_of(&untagged_blobs),
        },
        orphan_blobs: Cause {
            count: count(gc.blobs.len()),
            blobs: count(gc.blobs.len()),
            bytes: bytes_of(&gc.blobs),
        },
        stale_uploads: Cause {
            count: count(gc.uploads.len()),
            blobs: 0,
            bytes: upload_bytes_of(&gc),
        },
        dangling_links: Cause {
            count: gc.dangling_links,
            blobs: 0,
            bytes: 0,
        },
    };

    let blob_bytes = universe.total_bytes();
    let upload_bytes: u64 = repos
        .iter()
        .flat_map(|r| &r.uploads)
        .flat_map(|u| &u.files)
        .map(|f| f.size)
        .sum();
    let live_bytes = inputs.marks.blobs.iter().map(|i| universe.size(i)).sum();
    let registry = RegistryTotals {
        repositories: count(repos.len()),
        tags: repositories.iter().map(|r| r.tags).sum(),
        manifests: repositories.iter().map(|r| r.manifests).sum(),
        untagged_manifests: count(untagged.len()),
        blobs: count(blob_count),
        blob_bytes,
        upload_bytes,
        stored_bytes: blob_bytes + upload_bytes,
        live_bytes,
        reclaimable_bytes: bytes_of(&gc.blobs) + upload_bytes_of(&gc),
        reclaimable_bytes_delete_untagged: bytes_of(&gc_m.blobs) + upload_bytes_of(&gc_m),
        unattributed_reclaimable_bytes: unattributed,
        unattributed_reclaimable_bytes_delete_untagged: unattributed_m,
    };

    let top = inputs.options.top;
    let mut largest: Vec<&RepositoryCost> = repositories.iter().collect();
    largest.sort_by(|a, b| {
        b.bytes_referenced
            .cmp(&a.bytes_referenced)
            .then_with(|| a.name.cmp(&b.name))
    });
    let largest_repositories = largest
        .into_iter()
        .take(top)
        .map(|r| RepositorySize {
            name: r.name.clone(),
            bytes_referenced: r.bytes_referenced,
            bytes_unique: r.bytes_unique,
            bytes_shared: r.bytes_shared,
        })
        .collect();

    let largest_blobs = largest_blobs(universe, top)
        .into_iter()
        .map(|i| BlobSize {
            digest: universe.digest(i).to_string(),
            bytes: universe.size(i),
            modified: rfc3339(universe.modified(i)),
            status: if gc.contains_blob(i) {
                BlobStatus::Orphan
            } else if gc_m.contains_blob(i) {
                BlobStatus::Untagged
            } else if inputs.marks.blobs.contains(i) {
                BlobStatus::Live
            } else {
                BlobStatus::Recent
            },
            repositories: referenced_by
                .iter()
                .zip(repos)
                .filter(|(blobs, _)| blobs.binary_search(&i).is_ok())
                .map(|(_, repo)| repo.name.clone())
                .collect(),
            linked_by: repos
                .iter()
                .filter(|repo| {
                    let digest = universe.digest(i);
                    repo.layer_links
                        .iter(universe)
                        .any(|(_, blob)| blob == Some(i))
                        || repo.revisions.iter().any(|link| link.digest == *digest)
                })
                .map(|repo| repo.name.clone())
                .collect(),
        })
        .collect();

    let growth = growth(universe, &referenced, inputs.started);

    let cost = Cost {
        currency: "USD",
        price_per_gib_month: prices.per_gib_month,
        price_per_1000_list: prices.per_1000_list,
        price_per_1000_get: prices.per_1000_get,
        stored_per_month: prices.monthly(registry.stored_bytes),
        live_per_month: prices.monthly(registry.live_bytes),
        reclaimable_per_month: prices.monthly(registry.reclaimable_bytes),
        reclaimable_delete_untagged_per_month: prices
            .monthly(registry.reclaimable_bytes_delete_untagged),
        scan_requests: inputs.requests,
        scan_cost: prices.requests(&inputs.requests),
    };

    CostReport {
        storage: inputs.storage.clone(),
        generated_at: rfc3339(inputs.started),
        min_age_seconds: inputs.options.min_age.as_secs(),
        upload_max_age_seconds: inputs.options.upload_max_age.as_secs(),
        registry,
        reclaimable_by_cause,
        repositories,
        largest_repositories,
        largest_blobs,
        growth,
        cost,
        warnings: inputs.marks.warnings.clone(),
    }
}

/// The indices of the `top` largest blobs, largest first (ties by digest).
fn largest_blobs(universe: &BlobUniverse, top: usize) -> Vec<u32> {
    let mut indices: Vec<u32> =
        (0..u32::try_from(universe.len()).expect("more than 2^32 blobs")).collect();
    let order = |a: &u32, b: &u32| universe.size(*b).cmp(&universe.size(*a)).then(a.cmp(b));
    if top < indices.len() {
        if top == 0 {
            return Vec::new();
        }
        indices.select_nth_unstable_by(top - 1, order);
        indices.truncate(top);
    }
    indices.sort_unstable_by(order);
    indices
}

/// Cumulative unique and shared referenced bytes by the month each blob was written. A blob dated
/// after `now` (clock skew, or a time set by hand) counts in `now`'s month, so that the months end
/// there.
fn growth(universe: &BlobUniverse, referenced: &[Holders], now: SystemTime) -> Vec<GrowthPoint> {
    let mut by_month: BTreeMap<(i32, u32), (u64, u64)> = BTreeMap::new();
    for (i, holders) in referenced.iter().enumerate() {
        if *holders == Holders::NONE {
            continue;
        }
        let index = i as u32;
        let written = universe.modified(index).min(now);
        let entry = by_month.entry(month_of(written)).or_default();
        if *holders == Holders::SEVERAL {
            entry.1 += universe.size(index);
        } else {
            entry.0 += universe.size(index);
        }
    }
    let (Some(&first), Some(&last)) = (by_month.keys().next(), by_month.keys().next_back()) else {
        return Vec::new();
    };
    let mut points = Vec::new();
    let (mut unique, mut shared) = (0, 0);
    let mut month = first;
    loop {
        if let Some((u, s)) = by_month.get(&month) {
            unique += u;
            shared += s;
        }
        points.push(GrowthPoint {
            month: format!("{:04}-{:02}", month.0, month.1),
            unique_bytes: unique,
            shared_bytes: shared,
        });
        if month == last {
            return points;
        }
        month = if month.1 == 12 {
            (month.0 + 1, 1)
        } else {
            (month.0, month.1 + 1)
        };
    }
}

/// `(year, month)` of `time`, UTC.
fn month_of(time: SystemTime) -> (i32, u32) {
    let text = rfc3339(time);
    let year = text[..4].parse().expect("RFC 3339 year");
    let month = text[5..7].parse().expect("RFC 3339 month");
    (year, month)
}

/// `time` in RFC 3339 (UTC), between the epoch and the last second of year 9999, what it can write
/// (it panics outside): a file's modification time can be set before or after.
fn rfc3339(time: SystemTime) -> String {
    let latest = SystemTime::UNIX_EPOCH + Duration::from_secs(253_402_300_799);
    humantime::format_rfc3339_seconds(time.clamp(SystemTime::UNIX_EPOCH, latest)).to_string()
}

fn count(n: usize) -> u64 {
    u64::try_from(n).expect("count fits in u64")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::manifest::{ManifestKind, ManifestRefs};
    use crate::mark::{self, ManifestCatalog, MarkOptions};
    use crate::plan::{self, PlanOptions};
    use crate::scan::{Link, Repository, Tag, TagCurrent, Upload};
    use crate::storage::ObjectMeta;

    /// 2026-01-01T00:00:00Z, 2026-03-01 and 2026-04-01 (the scan).
    const JANUARY: u64 = 1_767_225_600;
    const MARCH: u64 = 1_772_323_200;
    const NOW: u64 = 1_775_001_600;
    const HOUR: Duration = Duration::from_secs(3600);

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)
    }

    fn d(n: u8) -> Digest {
        Digest::from_bytes([n; 32])
    }

    fn size(n: u8) -> u64 {
        1000 + u64::from(n)
    }

    fn link(n: u8) -> Link {
        Link::new(d(n), at(MARCH))
    }

    fn tag(name: &str, n: u8) -> Tag {
        Tag {
            name: name.into(),
            current: Some(TagCurrent {
                target: Ok(d(n)),
                modified: at(MARCH),
            }),
            index: vec![link(n)],
        }
    }

    fn image(layers: &[u8]) -> Result<ManifestRefs, String> {
        Ok(ManifestRefs {
            kind: ManifestKind::OciImageManifest,
            manifests: vec![],
            blobs: layers.iter().map(|&n| d(n)).collect(),
            subject: None,
        })
    }

    /// `app`: tag v1 → manifest 10 (layers 1, 2, 3), untagged manifest 11 (layers 1, 4), orphan 9
    /// linked, a stale upload of 7 bytes. `lib`: tag latest → 12 (layers 1, 5), a `_layers` link
    /// to blob 77, which is not in storage. Blob 20 (a manifest deleted through the API) is linked
    /// nowhere. Blob 1 was written in January, every other in March.
    fn registry() -> (Inventory, ManifestCatalog) {
        let mut blobs: Vec<(Digest, u64, SystemTime)> = [2, 3, 4, 5, 9, 10, 11, 12, 20]
            .map(|n| (d(n), size(n), at(MARCH)))
            .to_vec();
        blobs.push((d(1), size(1), at(JANUARY + 3600)));
        let app = Repository {
            name: "app".into(),
            layer_links: [1, 2, 3, 4, 9].map(link).to_vec().into(),
            revisions: vec![link(10), link(11)],
            tags: vec![tag("v1", 10)],
            uploads: vec![Upload {
                id: "u1".into(),
                files: vec![ObjectMeta {
                    key: format!("{}_uploads/u1/data", layout::repository("app")),
                    size: 7,
                    modified: at(JANUARY),
                }],
            }],
            ..Repository::default()
        };
        let lib = Repository {
            name: "lib".into(),
            layer_links: vec![link(1), link(5), link(77)].into(),
            revisions: vec![link(12)],
            tags: vec![tag("latest", 12)],
            ..Repository::default()
        };
        let inventory = Inventory {
            blobs: BlobUniverse::new(blobs),
            repositories: vec![app, lib],
            ..Inventory::default()
        };
        let catalog = ManifestCatalog::of_parsed(
            &inventory.blobs,
            [
                (10, image(&[1, 2, 3])),
                (11, image(&[1, 4])),
                (12, image(&[1, 5])),
            ]
            .map(|(n, refs)| (inventory.blobs.index(&d(n)).unwrap(), refs)),
        );
        (inventory, catalog)
    }

    fn report_of(inventory: &Inventory, catalog: &ManifestCatalog, top: usize) -> CostReport {
        let cutoff = at(NOW) - HOUR;
        let plan_options = PlanOptions {
            cutoff,
            upload_cutoff: at(NOW) - 168 * HOUR,
        };
        let mark = |delete_untagged| {
            mark::mark(
                inventory,
                catalog,
                MarkOptions {
                    delete_untagged,
                    cutoff,
                },
            )
            .unwrap()
        };
        let marks = mark(false);
        let plan = plan::plan(inventory, &marks, plan_options);
        let plan_delete_untagged = plan::plan(inventory, &mark(true), plan_options);
        let options = ReportOptions {
            min_age: HOUR,
            upload_max_age: 168 * HOUR,
            concurrency: 1,
            prices: Prices::default(),
            top,
        };
        compute(&Inputs {
            storage: "file:///registry".into(),
            started: at(NOW),
            options: &options,
            inventory,
            marks: &marks,
            plan: &plan,
            plan_delete_untagged: &plan_delete_untagged,
            requests: Requests {
                list: 2000,
                get: 10_000,
                head: 0,
                delete: 0,
                other: 0,
            },
        })
    }

    fn sum(blobs: &[u8]) -> u64 {
        blobs.iter().map(|&n| size(n)).sum()
    }

    #[test]
    fn every_number_follows_its_definition() {
        let (inventory, catalog) = registry();
        let report = report_of(&inventory, &catalog, 10);

        let app = &report.repositories[0];
        let lib = &report.repositories[1];
        assert_eq!(
            app,
            &RepositoryCost {
                name: "app".into(),
                tags: 1,
                manifests: 2,
                untagged_manifests: 1,
                bytes_referenced: sum(&[1, 2, 3, 4, 10, 11]),
                bytes_unique: sum(&[2, 3, 4, 10, 11]),
                bytes_shared: sum(&[1]),
                reclaimable_bytes: sum(&[9]) + 7,
                reclaimable_bytes_delete_untagged: sum(&[4, 9, 11]) + 7,
            }
        );
        assert_eq!(
            lib,
            &RepositoryCost {
                name: "lib".into(),
                tags: 1,
                manifests: 1,
                untagged_manifests: 0,
                bytes_referenced: sum(&[1, 5, 12]),
                bytes_unique: sum(&[5, 12]),
                bytes_shared: sum(&[1]),
                reclaimable_bytes: 0,
                reclaimable_bytes_delete_untagged: 0,
            }
        );

        let all = [1, 2, 3, 4, 5, 9, 10, 11, 12, 20];
        assert_eq!(
            report.registry,
            RegistryTotals {
                repositories: 2,
                tags: 2,
                manifests: 3,
                untagged_manifests: 1,
                blobs: 10,
                blob_bytes: sum(&all),
                upload_bytes: 7,
                stored_bytes: sum(&all) + 7,
                live_bytes: sum(&[1, 2, 3, 4, 5, 10, 11, 12]),
                reclaimable_bytes: sum(&[9, 20]) + 7,
                reclaimable_bytes_delete_untagged: sum(&[4, 9, 11, 20]) + 7,
                unattributed_reclaimable_bytes: sum(&[20]),
                unattributed_reclaimable_bytes_delete_untagged: sum(&[20]),
            }
        );
        let causes = report.reclaimable_by_cause;
        assert_eq!(
            causes.untagged_manifests,
            Cause {
                count: 1,
                blobs: 2,
                bytes: sum(&[4, 11])
            }
        );
        assert_eq!(
            causes.orphan_blobs,
            Cause {
                count: 2,
                blobs: 2,
                bytes: sum(&[9, 20])
            }
        );
        assert_eq!(
            causes.stale_uploads,
            Cause {
                count: 1,
                blobs: 0,
                bytes: 7
            }
        );
        assert_eq!(
            causes.dangling_links,
            Cause {
                count: 1,
                blobs: 0,
                bytes: 0
            }
        );
        // What the repositories and the unattributed part add up to is the registry's.
        let t = &report.registry;
        let by_repo: u64 = report
            .repositories
            .iter()
            .map(|r| r.reclaimable_bytes)
            .sum();
        assert_eq!(
            by_repo + t.unattributed_reclaimable_bytes,
            t.reclaimable_bytes
        );
        assert_eq!(
            causes.orphan_blobs.bytes + causes.stale_uploads.bytes,
            t.reclaimable_bytes
        );
        assert_eq!(
            t.reclaimable_bytes + causes.untagged_manifests.bytes,
            t.reclaimable_bytes_delete_untagged
        );
    }

    #[test]
    fn largest_lists_growth_and_cost() {
        let (inventory, catalog) = registry();
        let report = report_of(&inventory, &catalog, 3);

        let largest: Vec<(&str, u64)> = report
            .largest_repositories
            .iter()
            .map(|r| (r.name.as_str(), r.bytes_referenced))
            .collect();
        assert_eq!(
            largest,
            [
                ("app", sum(&[1, 2, 3, 4, 10, 11])),
                ("lib", sum(&[1, 5, 12]))
            ]
        );
        let blobs: Vec<(String, BlobStatus, Vec<String>, Vec<String>)> = report
            .largest_blobs
            .iter()
            .map(|b| {
                let names = (b.repositories.clone(), b.linked_by.clone());
                (b.digest.clone(), b.status, names.0, names.1)
            })
            .collect();
        let lib = vec!["lib".to_owned()];
        let app = vec!["app".to_owned()];
        assert_eq!(
            blobs,
            [
                (d(20).to_string(), BlobStatus::Orphan, vec![], vec![]),
                (d(12).to_string(), BlobStatus::Live, lib.clone(), lib),
                (d(11).to_string(), BlobStatus::Untagged, app.clone(), app),
            ]
        );
        assert_eq!(report.largest_blobs[0].bytes, size(20));
        assert_eq!(report.largest_blobs[0].modified, "2026-03-01T00:00:00Z");

        let unique_in_march = sum(&[2, 3, 4, 5, 10, 11, 12]);
        let growth: Vec<(&str, u64, u64)> = report
            .growth
            .iter()
            .map(|p| (p.month.as_str(), p.unique_bytes, p.shared_bytes))
            .collect();
        assert_eq!(
            growth,
            [
                ("2026-01", 0, size(1)),
                ("2026-02", 0, size(1)),
                ("2026-03", unique_in_march, size(1)),
            ]
        );

        let cost = &report.cost;
        let gib = (1u64 << 30) as f64;
        assert_eq!(
            cost.stored_per_month,
            report.registry.stored_bytes as f64 / gib * 0.023
        );
        // 2,000 LIST at $0.005 and 10,000 GET at $0.0004 per 1,000.
        assert!(
            (cost.scan_cost - (0.01 + 0.004)).abs() < 1e-12,
            "{}",
            cost.scan_cost
        );
        assert_eq!(report.generated_at, "2026-04-01T00:00:00Z");
    }

    #[test]
    fn young_objects_are_not_reclaimable() {
        let (mut inventory, catalog) = registry();
        // The orphan was written ten minutes before the scan.
        let mut blobs: Vec<(Digest, u64, SystemTime)> = (0..inventory.blobs.len() as u32)
            .map(|i| {
                let digest = *inventory.blobs.digest(i);
                let modified = if digest == d(9) {
                    at(NOW) - Duration::from_secs(600)
                } else {
                    inventory.blobs.modified(i)
                };
                (digest, inventory.blobs.size(i), modified)
            })
            .collect();
        blobs.sort_by_key(|b| b.0);
        inventory.replace_blobs(BlobUniverse::new(blobs));
        let report = report_of(&inventory, &catalog, 10);
        assert_eq!(report.reclaimable_by_cause.orphan_blobs.count, 1);
        assert_eq!(report.repositories[0].reclaimable_bytes, 7);
        let recent = report
            .largest_blobs
            .iter()
            .find(|b| b.digest == d(9).to_string());
        assert_eq!(recent.map(|b| b.status), Some(BlobStatus::Recent));
    }

    #[test]
    fn times_past_year_9999_are_written_as_its_last_second_and_grow_nothing() {
        let far = at(400_000_000_000);
        assert_eq!(rfc3339(far), "9999-12-31T23:59:59Z");
        let before_epoch = SystemTime::UNIX_EPOCH - Duration::from_secs(86_400);
        assert_eq!(rfc3339(before_epoch), "1970-01-01T00:00:00Z");
        assert_eq!(month_of(far), (9999, 12));

        // A referenced blob dated in the far future counts in the month of the scan.
        let (mut inventory, catalog) = registry();
        let mut blobs: Vec<(Digest, u64, SystemTime)> = (0..inventory.blobs.len() as u32)
            .map(|i| {
                let digest = *inventory.blobs.digest(i);
                let modified = if digest == d(2) {
                    far
                } else {
                    inventory.blobs.modified(i)
                };
                (digest, inventory.blobs.size(i), modified)
            })
            .collect();
        blobs.sort_by_key(|b| b.0);
        inventory.replace_blobs(BlobUniverse::new(blobs));
        let report = report_of(&inventory, &catalog, 10);
        let months: Vec<&str> = report.growth.iter().map(|p| p.month.as_str()).collect();
        assert_eq!(months, ["2026-01", "2026-02", "2026-03", "2026-04"]);
        let last = report.growth.last().unwrap();
        assert_eq!(last.unique_bytes, sum(&[2, 3, 4, 5, 10, 11, 12]));
    }

    #[test]
    fn renders_csv_text_and_html() {
        let (inventory, catalog) = registry();
        let mut report = report_of(&inventory, &catalog, 10);
        let csv = render::csv(&report);
        let lines: Vec<&str> = csv.split("\r\n").collect();
        assert_eq!(lines[0], render::CSV_HEADER);
        assert_eq!(
            lines[1],
            format!(
                "app,1,2,1,{},{},{},{},{}",
                sum(&[1, 2, 3, 4, 10, 11]),
                sum(&[2, 3, 4, 10, 11]),
                size(1),
                size(9) + 7,
                sum(&[4, 9, 11]) + 7
            )
        );
        assert_eq!(lines.len(), 4, "header, two rows, and the last line break");

        let text = report.to_string();
        assert!(text.contains("REPOSITORY"), "{text}");
        assert!(text.lines().any(|l| l.starts_with("lib ")), "{text}");

        // Names come from the storage: whatever they hold is escaped.
        report.repositories[0].name = "<script>alert(1)</script>\"".into();
        report.largest_repositories[0].name = report.repositories[0].name.clone();
        let html = render::html(&report);
        assert!(!html.contains("<script>alert"), "unescaped name");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;"));
        assert_eq!(html.matches("<svg class=\"chart\"").count(), 3);
        // Unique and shared of two repositories, three causes with bytes, two stacks of growth
        // (January and February shared only, March both).
        assert_eq!(html.matches("class=\"mark\"").count(), 4 + 3 + 4);
        assert_eq!(html.matches("<script>").count(), 1);
    }

    #[test]
    fn csv_quotes_what_needs_quoting() {
        let report = CostReport {
            repositories: vec![RepositoryCost {
                name: "a,\"b\"".into(),
                ..RepositoryCost::default()
            }],
            ..empty_report()
        };
        let csv = render::csv(&report);
        assert!(csv.contains("\"a,\"\"b\"\"\",0,"), "{csv}");
    }

    fn empty_report() -> CostReport {
        let (inventory, catalog) = registry();
        CostReport {
            repositories: vec![],
            ..report_of(&inventory, &catalog, 0)
        }
    }
}
