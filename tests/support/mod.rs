//! Test harness shared by the end-to-end tests and `examples/registry_fixture.rs`: the real
//! Docker Distribution registry (`docker-registry` 2.8) run as a child process, an HTTP client for
//! its API, a deterministic workload with a ground-truth model of what must survive a garbage
//! collection, storage inspection helpers, and a runner for the `regsweep` binary. For object
//! storage: an S3 server (`moto_server`, [`s3`]) the registry can run on, and an Azure Blob
//! emulator (Azurite, [`azurite`]), both installed by `scripts/install-deps`; and a Redis server
//! ([`redis`]) for registries that cache blob descriptors in it.
//!
//! Consumers declare it `pub mod support;` (tests) or
//! `#[path = "../tests/support/mod.rs"] pub mod support;` (examples). The `pub` matters: each
//! consumer uses only part of the harness, and public items of a public module are not reported as
//! dead code, so no `allow(dead_code)` is needed.
//!
//! The model is computed by this harness only, from what it pushed — never by regsweep's code.

pub mod azurite;
pub mod client;
pub mod content;
pub mod fault_proxy;
pub mod hostile;
pub mod model;
pub mod objects;
pub mod redis;
pub mod registry;
pub mod run;
pub mod s3;
pub mod server;
pub mod storage;
pub mod verify;
pub mod workload;

pub use client::{Client, ManifestResponse};
pub use model::Model;
pub use registry::{OfficialGc, Registry, Storage};
pub use run::{RunOutput, read_plan, run_regsweep};
pub use storage::{dangling_links, repository_dirs, storage_blobs, tree_snapshot};
pub use verify::{PullReport, verify_gone, verify_pulls, verify_revisions};
pub use workload::{Fixture, standard_workload};
