//! End-to-end tests of `regsweep gc --quarantine`, `regsweep restore` and `regsweep purge` against
//! storage written by the real registry (`docker-registry` 2.8), on a filesystem, on S3
//! (`moto_server` behind the registry's S3 driver) and on Azure Blob (Azurite, loaded with a tree the
//! registry wrote): what a quarantine run removes is exactly what a
//! collection deletes, kept byte for byte under `_regsweep/quarantine/<run>/`; a restore puts the
//! registry back byte for byte and the registry serves everything again, untagged manifests
//! included; a purge deletes old runs for good and nothing younger.

pub mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

use support::azurite::Azurite;
use support::fault_proxy::FaultProxy;
use support::model::Model;
use support::run::{RunOutput, field_u64};
use support::s3::MotoServer;
use support::storage::{Node, assert_exactly_the_live_set, empty_dirs, tree_snapshot};
use support::{Fixture, run_regsweep, verify_gone, verify_pulls, verify_revisions};

const BUCKET: &str = "registry";
/// The registry's `rootdirectory` in the S3 fixture.
const S3_ROOT: &str = "registry";
const QUARANTINE: &str = "_regsweep/quarantine/";

fn regsweep(args: &[&str]) -> RunOutput {
    run_regsweep(Path::new(env!("CARGO_BIN_EXE_regsweep")), args)
}

/// `regsweep gc <config> --quarantine -m --min-age 0s --format json`, which must succeed; returns
/// the summary and the run's ID.
fn gc_quarantine(config: &str) -> (serde_json::Value, String) {
    let run = regsweep(&[
        "gc",
        config,
        "--quarantine",
        "-m",
        "--min-age",
        "0s",
        "--format",
        "json",
    ]);
    run.assert_success();
    let summary = run.json();
    let id = summary["quarantine"]["run"]
        .as_str()
        .unwrap_or_else(|| panic!("no quarantine.run in the summary:\n{}", run.describe()))
        .to_owned();
    assert_eq!(
        summary["quarantine"]["prefix"],
        format!("{QUARANTINE}{id}/"),
        "{}",
        run.describe()
    );
    (summary, id)
}

/// The registry's files (keys and contents) under a storage root, without regsweep's own
/// `_regsweep/` and without directories (they are not objects; empty ones are not restored).
fn registry_files(root: &Path) -> BTreeMap<String, Node> {
    tree_snapshot(root)
        .into_iter()
        .filter(|(key, node)| matches!(node, Node::File { .. }) && !key.starts_with("_regsweep"))
        .collect()
}

/// The registry objects a run holds, by original key.
fn quarantined_files(root: &Path, run: &str) -> BTreeMap<String, Node> {
    tree_snapshot(&root.join(QUARANTINE).join(run))
        .into_iter()
        .filter(|(key, node)| matches!(node, Node::File { .. }) && key.starts_with("docker/"))
        .collect()
}

/// The original keys a run's journal lists.
fn journaled_keys(root: &Path, run: &str) -> BTreeSet<String> {
    let dir = root.join(QUARANTINE).join(run).join("journal");
    let mut keys = BTreeSet::new();
    for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "jsonl") {
            continue;
        }
        for line in fs::read_to_string(&path).unwrap().lines() {
            let entry: serde_json::Value = serde_json::from_str(line).unwrap();
            assert!(
                entry["bytes"].is_u64() && entry["moved_at"].is_string(),
                "{line}"
            );
            assert!(
                keys.insert(entry["key"].as_str().unwrap().to_owned()),
                "{line}"
            );
        }
    }
    keys
}

fn total_len(files: &BTreeMap<String, Node>) -> u64 {
    files
        .values()
        .map(|node| match node {
            Node::File { len, .. } => *len,
            Node::Dir => 0,
        })
        .sum()
}

/// After a quarantine run: the registry lost exactly what it moved, the run holds every moved
/// object byte for byte, its journal lists each, and the summary counts them as a collection
/// does. Returns the moved files.
fn assert_quarantined(
    before: &BTreeMap<String, Node>,
    root: &Path,
    summary: &serde_json::Value,
    run: &str,
    model: &Model,
) -> BTreeMap<String, Node> {
    let after = registry_files(root);
    for (key, node) in &after {
        assert_eq!(before.get(key), Some(node), "{key} changed or appeared");
    }
    let removed: BTreeMap<String, Node> = before
        .iter()
        .filter(|(key, _)| !after.contains_key(*key))
        .map(|(key, node)| (key.clone(), node.clone()))
        .collect();
    assert!(!removed.is_empty(), "the workload has garbage");
    assert_eq!(
        quarantined_files(root, run),
        removed,
        "the quarantine does not hold exactly what the registry lost"
    );
    assert_eq!(summary["quarantine"]["objects"], removed.len() as u64);
    assert_eq!(summary["quarantine"]["bytes"], total_len(&removed));
    assert_eq!(summary["errors"], 0, "{summary}");
    assert_eq!(
        summary["blobs_deleted"],
        model.expected_garbage_blobs(true).len() as u64,
        "{summary}"
    );
    let record: serde_json::Value = serde_json::from_slice(
        &fs::read(root.join(QUARANTINE).join(run).join("run.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(record["run"], run);
    assert!(record["finished"].is_string(), "{record}");
    assert_eq!(record["objects"], removed.len() as u64, "{record}");
    assert_eq!(record["options"]["delete_untagged"], true, "{record}");
    removed
}

/// Untagged manifests that only a restore brings back (so that pulling them proves something).
fn assert_untagged_manifests_were_quarantined(model: &Model) {
    let all = model.expected_revisions(false);
    let kept = model.expected_revisions(true);
    let untagged = Model::count(&all) - Model::count(&kept);
    assert!(untagged > 0, "the workload has untagged manifests");
}

#[test]
fn quarantine_restore_and_purge_on_a_filesystem() {
    let mut f = Fixture::build();
    f.registry.stop();
    let root = f.registry.storage_root();
    let config = f.registry.config_arg();
    let before = registry_files(&root);
    assert_untagged_manifests_were_quarantined(&f.model);

    // Quarantine: the registry is left with exactly the live set, as after a collection.
    let (summary, run) = gc_quarantine(&config);
    let kept_uploads: BTreeSet<(String, String)> = f
        .model
        .kept_uploads(168)
        .iter()
        .map(|u| (u.repo.clone(), u.uuid.clone()))
        .collect();
    assert_exactly_the_live_set(&f.v2_root(), &f.model, true, &kept_uploads);
    assert_eq!(
        empty_dirs(&f.v2_root().join("repositories")),
        Vec::<String>::new()
    );
    let moved = assert_quarantined(&before, &root, &summary, &run, &f.model);
    assert_eq!(
        journaled_keys(&root, &run),
        moved.keys().cloned().collect::<BTreeSet<_>>(),
        "the journal"
    );
    f.registry.restart();
    verify_pulls(&f.client, &f.model).assert_ok("pull every tag after the quarantine");
    verify_revisions(&f.client, &f.model, true).assert_ok("pull every kept revision");
    verify_gone(&f.client, &f.model, true).assert_ok("quarantined manifests are gone");
    f.registry.stop();

    // Operator input is checked.
    let bad = regsweep(&["restore", &config, "--run", "../../docker"]);
    assert_eq!(bad.status.code(), Some(2), "{}", bad.describe());

    // A dry run restores nothing and says what it would.
    let after_gc = registry_files(&root);
    let dry = regsweep(&[
        "restore",
        &config,
        "--run",
        &run,
        "--dry-run",
        "--format",
        "json",
    ]);
    dry.assert_success();
    assert_eq!(
        field_u64(&dry.json(), "objects_restored", &dry),
        moved.len() as u64
    );
    assert_eq!(
        registry_files(&root),
        after_gc,
        "a dry run changed the registry"
    );
    assert_eq!(quarantined_files(&root, &run), moved);

    // Restore (the latest run): the registry is byte for byte what it was before the collection.
    let restore = regsweep(&["restore", &config, "--format", "json"]);
    restore.assert_success();
    let restored = restore.json();
    assert_eq!(restored["run"], run);
    assert_eq!(
        field_u64(&restored, "objects_restored", &restore),
        moved.len() as u64
    );
    assert_eq!(
        field_u64(&restored, "bytes_restored", &restore),
        total_len(&moved)
    );
    assert_eq!(
        field_u64(&restored, "journal_entries", &restore),
        moved.len() as u64
    );
    assert_eq!(field_u64(&restored, "errors", &restore), 0);
    assert_eq!(restored["run_removed"], true, "{}", restore.describe());
    let now = registry_files(&root);
    let lost: Vec<&String> = before.keys().filter(|k| !now.contains_key(*k)).collect();
    let differ: Vec<&String> = now
        .keys()
        .filter(|k| before.get(*k) != now.get(*k))
        .collect();
    assert!(
        lost.is_empty() && differ.is_empty(),
        "not restored: {lost:?}; differ: {differ:?}"
    );
    assert!(
        !root.join(QUARANTINE).join(&run).exists(),
        "the run's directory is left"
    );
    f.registry.restart();
    verify_pulls(&f.client, &f.model).assert_ok("pull every tag after the restore");
    verify_revisions(&f.client, &f.model, false)
        .assert_ok("pull every revision, untagged ones included, after the restore");
    f.registry.stop();

    // A second quarantine run; a purge of runs older than a week keeps it, one of every finished
    // run removes it for good.
    let (summary, second) = gc_quarantine(&config);
    let moved = assert_quarantined(&before, &root, &summary, &second, &f.model);
    let keep = regsweep(&["purge", &config, "--older-than", "7d", "--format", "json"]);
    keep.assert_success();
    let kept = keep.json();
    assert_eq!(
        field_u64(&kept, "runs_purged", &keep),
        0,
        "{}",
        keep.describe()
    );
    assert_eq!(field_u64(&kept, "objects_deleted", &keep), 0);
    assert_eq!(kept["runs"][0]["run"], second);
    assert_eq!(kept["runs"][0]["objects"], moved.len() as u64);
    assert_eq!(
        quarantined_files(&root, &second),
        moved,
        "a purge of old runs touched a young one"
    );

    let purge = regsweep(&["purge", &config, "--older-than", "0s", "--format", "json"]);
    purge.assert_success();
    let purged = purge.json();
    assert_eq!(
        field_u64(&purged, "runs_purged", &purge),
        1,
        "{}",
        purge.describe()
    );
    assert_eq!(
        field_u64(&purged, "objects_deleted", &purge),
        moved.len() as u64
    );
    assert_eq!(
        field_u64(&purged, "bytes_deleted", &purge),
        total_len(&moved)
    );
    let left: Vec<_> = fs::read_dir(root.join(QUARANTINE))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left in the quarantine: {left:?}");
    assert_exactly_the_live_set(&f.v2_root(), &f.model, true, &kept_uploads);
    // Nothing left to restore.
    let nothing = regsweep(&["restore", &config]);
    assert_eq!(nothing.status.code(), Some(1), "{}", nothing.describe());
    f.registry.restart();
    verify_pulls(&f.client, &f.model).assert_ok("pull every tag after the purge");
}

#[test]
fn quarantine_and_restore_on_s3() {
    let moto = MotoServer::start();
    moto.create_bucket(BUCKET);
    let mut f = Fixture::build_s3(&moto, BUCKET);
    f.registry.stop();
    let config = f.registry.config_arg();
    let download = || {
        let dir = tempfile::tempdir().unwrap();
        moto.download(BUCKET, &format!("{S3_ROOT}/"), dir.path());
        dir
    };
    let all_uploads: BTreeSet<(String, String)> = f
        .model
        .uploads
        .iter()
        .map(|u| (u.repo.clone(), u.uuid.clone()))
        .collect();
    let before = registry_files(download().path());
    assert_untagged_manifests_were_quarantined(&f.model);

    // Quarantine: server-side copies, then deletes.
    let (summary, run) = gc_quarantine(&config);
    let copy = download();
    assert_exactly_the_live_set(
        &copy.path().join("docker/registry/v2"),
        &f.model,
        true,
        &all_uploads,
    );
    let moved = assert_quarantined(&before, copy.path(), &summary, &run, &f.model);
    assert_eq!(
        journaled_keys(copy.path(), &run),
        moved.keys().cloned().collect::<BTreeSet<_>>()
    );
    f.registry.restart();
    verify_pulls(&f.client, &f.model).assert_ok("pull every tag from S3 after the quarantine");
    verify_gone(&f.client, &f.model, true).assert_ok("quarantined manifests are gone");
    f.registry.stop();

    // Restore: byte for byte, and nothing of the run is left in the bucket.
    let restore = regsweep(&["restore", &config, "--run", &run, "--format", "json"]);
    restore.assert_success();
    let restored = restore.json();
    assert_eq!(
        field_u64(&restored, "objects_restored", &restore),
        moved.len() as u64
    );
    assert_eq!(field_u64(&restored, "errors", &restore), 0);
    assert_eq!(restored["run_removed"], true, "{}", restore.describe());
    assert_eq!(
        registry_files(download().path()),
        before,
        "S3 after the restore"
    );
    let left = moto.list_keys(BUCKET, &format!("{S3_ROOT}/{QUARANTINE}"));
    assert!(left.is_empty(), "left in the quarantine: {left:?}");
    f.registry.restart();
    verify_pulls(&f.client, &f.model).assert_ok("pull every tag from S3 after the restore");
    verify_revisions(&f.client, &f.model, false)
        .assert_ok("pull every revision from S3, untagged ones included, after the restore");
    f.registry.stop();

    // A second run, during which S3 refuses to copy one garbage blob (as it refuses CopyObject
    // beyond 5 GiB): that blob stays in place, reported; everything else is quarantined.
    let orphan = f.model.orphans.iter().next().unwrap().clone();
    let hex = orphan.trim_start_matches("sha256:");
    let blob_key = format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]);
    // Only the copy's `x-amz-copy-source` header line ends with the source key.
    let proxy = FaultProxy::deny(
        moto.endpoint().trim_start_matches("http://"),
        &format!("{blob_key}\r\n"),
    );
    let text = fs::read_to_string(f.registry.config_path()).unwrap();
    let denied = f.dir().join("through-proxy.yml");
    fs::write(&denied, text.replace(&moto.endpoint(), &proxy.endpoint())).unwrap();
    let run = regsweep(&[
        "gc",
        denied.to_str().unwrap(),
        "--quarantine",
        "-m",
        "--min-age",
        "0s",
        "--format",
        "json",
    ]);
    assert_eq!(run.status.code(), Some(1), "{}", run.describe());
    assert!(proxy.injected() > 0, "the proxy denied nothing");
    let summary = run.json();
    let errors = summary["error_messages"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{}", run.describe());
    let error = errors[0].as_str().unwrap();
    assert!(
        error.starts_with(&format!("quarantine {blob_key}")),
        "{error}"
    );
    let second = summary["quarantine"]["run"].as_str().unwrap().to_owned();
    assert_eq!(summary["quarantine"]["objects"], moved.len() as u64 - 1);
    let copy = download();
    assert!(
        copy.path().join(&blob_key).is_file(),
        "the blob left its place"
    );
    assert!(
        !copy
            .path()
            .join(QUARANTINE)
            .join(&second)
            .join(&blob_key)
            .exists(),
        "a copy of the blob is in the quarantine"
    );

    // Purged for good.
    let purge = regsweep(&["purge", &config, "--older-than", "0s", "--format", "json"]);
    purge.assert_success();
    let purged = purge.json();
    assert_eq!(purged["runs"][0]["run"], second);
    assert_eq!(
        field_u64(&purged, "objects_deleted", &purge),
        moved.len() as u64 - 1
    );
    let left = moto.list_keys(BUCKET, &format!("{S3_ROOT}/{QUARANTINE}"));
    assert!(left.is_empty(), "left in the quarantine: {left:?}");
    // A collection without --quarantine takes the blob that could not be moved.
    let run = regsweep(&["gc", &config, "-m", "--min-age", "0s", "--format", "json"]);
    run.assert_success();
    assert_eq!(field_u64(&run.json(), "blobs_deleted", &run), 1);
    assert_exactly_the_live_set(
        &download().path().join("docker/registry/v2"),
        &f.model,
        true,
        &all_uploads,
    );
}

#[test]
fn quarantine_and_restore_on_azure() {
    let mut f = Fixture::build();
    f.registry.stop();
    let azurite = Azurite::start();
    azurite.create_container("registry");
    azurite.upload_tree("registry", "reg", &f.registry.storage_root());
    let config = f.dir().join("azure.yml");
    fs::write(
        &config,
        format!(
            "version: 0.1\nstorage:\n  azure:\n    accountname: devstoreaccount1\n    \
             accountkey: {key}\n    container: registry\n    serviceurl: {url}\n    \
             rootdirectory: /reg\n  delete:\n    enabled: true\n",
            key = support::azurite::ACCOUNT_KEY,
            url = azurite.service_url(),
        ),
    )
    .unwrap();
    let config = config.to_string_lossy().into_owned();
    let download = || {
        let dir = tempfile::tempdir().unwrap();
        azurite.download("registry", "reg/", dir.path());
        dir
    };
    // Uploaded again, every upload is fresh: none is stale any more.
    let all_uploads: BTreeSet<(String, String)> = f
        .model
        .uploads
        .iter()
        .map(|u| (u.repo.clone(), u.uuid.clone()))
        .collect();
    let before = registry_files(download().path());

    // Quarantine through Copy Blob, then restore.
    let (summary, run) = gc_quarantine(&config);
    let copy = download();
    assert_exactly_the_live_set(
        &copy.path().join("docker/registry/v2"),
        &f.model,
        true,
        &all_uploads,
    );
    assert_quarantined(&before, copy.path(), &summary, &run, &f.model);
    let restore = regsweep(&["restore", &config, "--run", &run, "--format", "json"]);
    restore.assert_success();
    assert_eq!(
        restore.json()["run_removed"],
        true,
        "{}",
        restore.describe()
    );
    assert_eq!(
        registry_files(download().path()),
        before,
        "Azure after the restore"
    );
    let left = azurite.list_keys("registry", &format!("reg/{QUARANTINE}"));
    assert!(left.is_empty(), "left in the quarantine: {left:?}");
}
