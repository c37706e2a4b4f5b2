//! A registry full of garbage, for demos and for trying regsweep by hand.
//!
//! ```text
//! cargo run --example registry_fixture -- build /tmp/reg          # prints /tmp/reg/config.yml
//! cargo run -- gc /tmp/reg/config.yml --delete-untagged --min-age 0s
//! cargo run --example registry_fixture -- verify /tmp/reg --delete-untagged
//! ```
//!
//! `build` starts the real registry (`docker-registry`, `apt-get install docker-registry`) in DIR,
//! pushes the standard workload of the end-to-end tests, stops the registry and writes
//! `DIR/model.json`: the ground truth of what must survive (tags → digests, live blobs and
//! revisions for both modes). `verify` starts the registry on the same storage and pulls
//! everything that must survive; it exits non-zero on any failure.

#[path = "../tests/support/mod.rs"]
pub mod support;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use support::storage::{dangling_links, repository_dirs, storage_blobs};
use support::{Fixture, Model, PullReport, Registry};

const USAGE: &str =
    "usage:\n  registry_fixture build <DIR>\n  registry_fixture verify <DIR> [--delete-untagged]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["build", dir] => build(Path::new(dir)),
        ["verify", dir] => verify(Path::new(dir), false),
        ["verify", dir, "--delete-untagged" | "-m"]
        | ["verify", "--delete-untagged" | "-m", dir] => verify(Path::new(dir), true),
        _ => Err(USAGE.to_owned()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("registry_fixture: {message}");
            ExitCode::FAILURE
        }
    }
}

fn model_path(dir: &Path) -> PathBuf {
    dir.join("model.json")
}

fn build(dir: &Path) -> Result<(), String> {
    if dir.join("storage").exists() {
        return Err(format!(
            "{} already holds a storage/ directory: pick an empty directory",
            dir.display()
        ));
    }
    let mut fixture = Fixture::build_in(dir);
    fixture.registry.stop();
    let model = &fixture.model;
    std::fs::write(model_path(dir), model.to_json())
        .map_err(|e| format!("write {}: {e}", model_path(dir).display()))?;
    eprintln!("pushed {}", model.describe());
    eprintln!(
        "a correct collector keeps {} blobs with --delete-untagged, {} without; repositories that \
         must vanish: {:?} / {:?}",
        model.expected_live_blobs(true).len(),
        model.expected_live_blobs(false).len(),
        model.repos_that_must_vanish(true),
        model.repos_that_must_vanish(false),
    );
    eprintln!("model written to {}", model_path(dir).display());
    println!("{}", fixture.registry.config_path().display());
    Ok(())
}

fn verify(dir: &Path, delete_untagged: bool) -> Result<(), String> {
    let path = model_path(dir);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "read {}: {e} (run `registry_fixture build` first)",
            path.display()
        )
    })?;
    let model = Model::from_json(&text)?;
    let mut registry = Registry::start(dir);
    let client = registry.client();

    let mut report = PullReport::default();
    report.pull_tags(&client, &model);
    report.pull_revisions(&client, &model, delete_untagged);
    registry.stop();

    let v2 = registry.v2_root();
    let blobs = storage_blobs(&v2);
    let live = model.expected_live_blobs(delete_untagged);
    let missing: Vec<&String> = live.difference(&blobs).collect();
    let garbage_left = blobs.difference(&live).count();
    let dangling = dangling_links(&v2);
    let repos = repository_dirs(&v2);
    let vanished_but_present: Vec<String> = model
        .repos_that_must_vanish(delete_untagged)
        .into_iter()
        .filter(|r| repos.contains(r))
        .collect();
    eprintln!(
        "storage: {} blobs ({} must be live, {} garbage left), {} dangling links, {} repositories \
         ({} that a collection removes still present: {:?})",
        blobs.len(),
        live.len(),
        garbage_left,
        dangling.len(),
        repos.len(),
        vanished_but_present.len(),
        vanished_but_present,
    );

    let mut failures = report.failures.clone();
    failures.extend(
        missing
            .iter()
            .map(|d| format!("live blob {d} missing from storage")),
    );
    println!(
        "{} tags pulled, {} blobs verified ({} manifests pulled)",
        report.tags, report.blobs, report.manifests
    );
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} failures:\n  {}",
            failures.len(),
            failures.join("\n  ")
        ))
    }
}
