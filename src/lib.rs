//! regsweep: reclaim the storage of a Docker Distribution registry.
//!
//! A streaming mark-and-sweep straight on the registry's storage, laid out as the pipeline it runs:
//!
//! - [`config`]: where the storage is, from the registry's own `config.yml` or a `--storage` URL;
//! - [`storage`]: the small async trait every backend implements ([`storage::local`] for filesystems);
//! - [`layout`]: every path format of the storage, in one place;
//! - [`scan`]: concurrent listings, blobs then repositories, into an [`scan::Inventory`];
//! - [`manifest`] and [`mark`]: what is live, as a compact bitmap over the blobs;
//! - [`absence`]: a referenced blob the listing did not return is confirmed gone before the mark;
//! - [`select`]: what `delete` and `prune` take away (tags removed, manifests released) — pure;
//! - [`plan`]: what goes, in a crash-safe order — pure, so a dry run is exact;
//! - [`remark`]: just before the sweep, what pushes made live since the scan is spared;
//! - [`sweep`]: batched, concurrent deletion;
//! - [`report`]: the summary for people and schedulers, and [`metrics`], as a Prometheus textfile;
//!   [`progress`], how far a long run is, while it runs;
//! - [`restart`]: make the registry forget deleted blobs;
//! - [`quarantine`]: `--quarantine` moves instead of deleting; restore and purge;
//! - [`cost`]: `regsweep report`, what the storage holds and costs, from one scan that deletes nothing.
//!
//! [`gc::Collection`] runs them in order; `regsweep mark` persists the mark as a [`state`], and
//! `regsweep sweep` carries it out, whole or split into [`shard`]s on several machines. Around a run: [`lock`], the run lock in the storage that
//! keeps two runs from sweeping at once, and [`run_id`], the ID that names a run.

pub mod absence;
pub mod config;
pub mod cost;
pub mod digest;
pub mod gc;
pub mod layout;
pub mod lock;
pub mod manifest;
pub mod mark;
pub mod metrics;
pub mod plan;
pub mod progress;
pub mod quarantine;
pub mod remark;
pub mod report;
pub mod restart;
pub mod run_id;
pub mod scan;
pub mod select;
pub mod shard;
pub mod state;
pub mod storage;
pub mod sweep;
