//! End-to-end tests of `regsweep gc` against storage written by the real registry
//! (`docker-registry` 2.8): push a workload through its HTTP API, collect, restart the registry,
//! pull every tag that must survive and check its digests. The expected outcome comes from the
//! harness's own model of what it pushed, never from regsweep's code.

pub mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use support::model::Model;
use support::run::{RunOutput, field_u64};
use support::storage::{
    assert_exactly_the_live_set, blob_digest_of_key, empty_dirs, removed_files, repository_dirs,
    snapshot_diff,
};
use support::{Fixture, read_plan, run_regsweep, tree_snapshot, verify_gone, verify_pulls};
use support::{verify_revisions, workload::STALE_UPLOAD_HOURS};

fn regsweep(args: &[&str]) -> RunOutput {
    run_regsweep(Path::new(env!("CARGO_BIN_EXE_regsweep")), args)
}

/// `regsweep gc <config> --min-age 0s --format json --plan-file <plan> [extra…]`.
fn gc(f: &Fixture, plan: &Path, extra: &[&str]) -> RunOutput {
    let config = f.registry.config_arg();
    let plan = plan.to_string_lossy().into_owned();
    let mut args = vec![
        "gc",
        config.as_str(),
        "--min-age",
        "0s",
        "--format",
        "json",
        "--plan-file",
        plan.as_str(),
    ];
    args.extend_from_slice(extra);
    regsweep(&args)
}

/// Sizes of every blob the model knows: configs, layers, orphans and manifests.
fn sizes(model: &Model) -> BTreeMap<String, u64> {
    let mut sizes = model.blobs.clone();
    sizes.extend(model.manifests.iter().map(|(d, m)| (d.clone(), m.size)));
    sizes
}

fn plan_blobs(plan: &Path) -> BTreeSet<String> {
    read_plan(plan)
        .iter()
        .filter_map(|entry| blob_digest_of_key(&entry.key))
        .collect()
}

/// Storage after a collection holds exactly what the model keeps, with no residue.
fn assert_storage_is_exactly_the_live_set(f: &Fixture, delete_untagged: bool) {
    let v2 = f.v2_root();
    let kept_uploads: BTreeSet<(String, String)> = f
        .model
        .kept_uploads(168)
        .iter()
        .map(|u| (u.repo.clone(), u.uuid.clone()))
        .collect();
    assert_exactly_the_live_set(&v2, &f.model, delete_untagged, &kept_uploads);
    assert_eq!(
        empty_dirs(&v2.join("repositories")),
        Vec::<String>::new(),
        "empty directories left under repositories/"
    );
}

/// After a restart (the registry forgets its blob descriptor cache), everything that must survive
/// pulls with the right digests, and everything collected answers 404.
fn assert_registry_serves_the_live_set(f: &mut Fixture, delete_untagged: bool) {
    f.registry.restart();
    verify_pulls(&f.client, &f.model).assert_ok("pull every surviving tag");
    verify_revisions(&f.client, &f.model, delete_untagged).assert_ok("pull every kept revision");
    verify_gone(&f.client, &f.model, delete_untagged).assert_ok("collected manifests are gone");
}

fn assert_counters(run: &RunOutput, model: &Model, delete_untagged: bool) {
    let summary = run.json();
    let garbage = model.expected_garbage_blobs(delete_untagged);
    let sizes = sizes(model);
    let garbage_bytes: u64 = garbage.iter().map(|d| sizes[d]).sum();
    let present = Model::count(&model.present_revisions());
    let kept = Model::count(&model.expected_revisions(delete_untagged));
    for (field, expected) in [
        ("errors", 0),
        ("blobs_total", model.all_blobs().len() as u64),
        ("bytes_total", sizes.values().sum()),
        ("blobs_deleted", garbage.len() as u64),
        ("bytes_deleted", garbage_bytes),
        ("manifests", present as u64),
        ("manifests_deleted", (present - kept) as u64),
        (
            "repositories_deleted",
            model.repos_that_must_vanish(delete_untagged).len() as u64,
        ),
        ("uploads_deleted", model.expired_uploads(168).len() as u64),
        ("repositories", model.repos.len() as u64),
    ] {
        assert_eq!(
            field_u64(&summary, field, run),
            expected,
            "summary field `{field}`:\n{}",
            run.describe()
        );
    }
}

#[test]
fn delete_untagged_reclaims_exactly_the_garbage_and_every_tag_pulls() {
    let mut f = Fixture::build();
    f.registry.stop();
    let plan = f.dir().join("plan.jsonl");
    let marker = f.dir().join("restarted");
    let restart = format!("touch '{}'", marker.display());
    let run = gc(&f, &plan, &["-m", "--restart-command", &restart]);
    run.assert_success();

    assert_counters(&run, &f.model, true);
    assert_storage_is_exactly_the_live_set(&f, true);
    assert!(marker.exists(), "the restart command did not run");
    assert_eq!(run.json()["restart"]["success"], true, "{}", run.describe());
    assert_registry_serves_the_live_set(&mut f, true);

    // A second run finds nothing to do and does not restart the registry again.
    f.registry.stop();
    let again = f.dir().join("restarted-again");
    let restart = format!("touch '{}'", again.display());
    let run = gc(&f, &plan, &["-m", "--restart-command", &restart]);
    run.assert_success();
    let summary = run.json();
    for field in [
        "blobs_deleted",
        "manifests_deleted",
        "links_deleted",
        "repositories_deleted",
        "uploads_deleted",
    ] {
        assert_eq!(field_u64(&summary, field, &run), 0, "second run: {field}");
    }
    assert!(
        !again.exists(),
        "restart command ran although nothing was deleted"
    );
    assert!(read_plan(&plan).is_empty(), "second run planned deletions");
}

#[test]
fn without_delete_untagged_every_revision_survives() {
    let mut f = Fixture::build();
    let plan = f.dir().join("plan.jsonl");
    // The registry keeps running: a collection without -m only removes what no revision reaches.
    let run = gc(&f, &plan, &[]);
    run.assert_success();

    assert_counters(&run, &f.model, false);
    assert_storage_is_exactly_the_live_set(&f, false);
    assert_registry_serves_the_live_set(&mut f, false);
}

#[test]
fn dry_run_changes_nothing_and_plans_exactly_what_the_run_deletes() {
    let mut f = Fixture::build();
    f.registry.stop();
    let root = f.registry.storage_root();
    let before = tree_snapshot(&root);

    let dry_plan = f.dir().join("dry.jsonl");
    let dry = gc(&f, &dry_plan, &["-m", "--dry-run"]);
    dry.assert_success();
    let untouched = tree_snapshot(&root);
    assert_eq!(
        snapshot_diff(&before, &untouched),
        Vec::<String>::new(),
        "a dry run changed the storage"
    );
    assert_eq!(dry.json()["dry_run"], true);

    // The text form prints the same plan, one line per key.
    let config = f.registry.config_arg();
    let text = regsweep(&["gc", &config, "-m", "--dry-run", "--min-age", "0s"]);
    text.assert_success();
    let dry_entries = read_plan(&dry_plan);
    let printed = text
        .stdout
        .lines()
        .filter(|l| l.starts_with("would delete\t"))
        .count();
    assert_eq!(printed, dry_entries.len(), "{}", text.describe());

    let real_plan = f.dir().join("real.jsonl");
    let real = gc(&f, &real_plan, &["-m"]);
    real.assert_success();
    assert_eq!(
        read_plan(&real_plan),
        dry_entries,
        "the real run planned otherwise"
    );

    let after = tree_snapshot(&root);
    let planned_files: BTreeSet<String> = dry_entries
        .iter()
        .filter(|e| !e.is_directory())
        .map(|e| e.key.clone())
        .collect();
    assert_eq!(
        removed_files(&before, &after),
        planned_files,
        "files removed differ from the dry-run plan"
    );
    assert!(
        after.len() < before.len(),
        "the workload had garbage to remove"
    );

    let (dry, real) = (dry.json(), real.json());
    for field in [
        "blobs_deleted",
        "bytes_deleted",
        "manifests_deleted",
        "links_deleted",
        "tags_deleted",
        "repositories_deleted",
        "uploads_deleted",
        "blobs_total",
        "bytes_total",
    ] {
        assert_eq!(
            dry[field], real[field],
            "dry run and real run differ on {field}"
        );
    }
    assert_storage_is_exactly_the_live_set(&f, true);
    assert_registry_serves_the_live_set(&mut f, true);
}

#[test]
fn reclaims_what_the_official_collector_does_without_its_multi_arch_bug() {
    let f = Fixture::build();
    let official = f.registry.official_gc(true, false);
    // 2.8 with --delete-untagged aborts on a repository that has no tag at all ("failed to
    // retrieve tags unknown repository"); give the tagless ones an empty tags directory for the
    // duration of its run so that it gets as far as its multi-arch bug.
    let tagless: Vec<PathBuf> = repository_dirs(&f.v2_root())
        .iter()
        .map(|repo| {
            f.v2_root()
                .join("repositories")
                .join(repo)
                .join("_manifests/tags")
        })
        .filter(|tags| !tags.exists())
        .collect();
    assert!(
        !tagless.is_empty(),
        "the workload has a never-tagged repository"
    );
    for dir in &tagless {
        std::fs::create_dir_all(dir).unwrap();
    }
    let official_m = f.registry.official_gc(true, true);
    for dir in &tagless {
        std::fs::remove_dir(dir).unwrap();
    }

    let plan = f.dir().join("plan.jsonl");
    gc(&f, &plan, &["--dry-run"]).assert_success();
    let ours = plan_blobs(&plan);
    let plan_m = f.dir().join("plan-m.jsonl");
    gc(&f, &plan_m, &["--dry-run", "-m"]).assert_success();
    let ours_m = plan_blobs(&plan_m);

    assert!(!official.blobs_eligible.is_empty(), "{}", official.stdout);
    let missed: Vec<_> = official.blobs_eligible.difference(&ours).collect();
    assert!(
        missed.is_empty(),
        "the official collector reclaims blobs regsweep keeps:\n{}",
        f.model.explain_all(missed)
    );
    assert_eq!(
        ours, official.blobs_eligible,
        "without -m both collect the same blobs"
    );
    // …and regsweep also removes the residue the official collector leaves: the `_layers` links
    // of the blobs it deletes, and the repositories left with nothing.
    let entries = read_plan(&plan);
    for phase in ["layer_links", "repositories"] {
        assert!(
            entries.iter().any(|e| e.phase == phase),
            "no {phase} in the plan"
        );
    }

    // With --delete-untagged, 2.8 deletes the children of multi-arch images: everything it
    // deletes beyond regsweep must be live, and there must be some (the bug is real).
    let live = f.model.expected_live_blobs(true);
    let beyond: BTreeSet<_> = official_m.blobs_eligible.difference(&ours_m).collect();
    let not_live: Vec<_> = beyond
        .iter()
        .filter(|d| !live.contains(**d))
        .copied()
        .collect();
    assert!(
        not_live.is_empty(),
        "regsweep -m keeps garbage the official collector reclaims:\n{}",
        f.model.explain_all(not_live)
    );
    assert!(
        !beyond.is_empty(),
        "expected the official 2.8 collector to break multi-arch images"
    );
    assert_eq!(ours_m, f.model.expected_garbage_blobs(true));
}

#[test]
fn the_default_grace_period_keeps_everything_young_and_removes_stale_uploads() {
    let mut f = Fixture::build();
    f.registry.stop();
    let root = f.registry.storage_root();
    let before = tree_snapshot(&root);
    let config = f.registry.config_arg();
    // Default --min-age 1h: everything was just pushed, only the upload backdated past the
    // default --upload-max-age (168h) may go. The failing restart command makes the exit status
    // non-zero.
    let run = regsweep(&[
        "gc",
        &config,
        "-m",
        "--format",
        "json",
        "--restart-command",
        "exit 3",
    ]);
    assert_eq!(run.status.code(), Some(1), "{}", run.describe());
    let summary = run.json();
    assert_eq!(summary["restart"]["exit_code"], 3, "{}", run.describe());
    assert_eq!(field_u64(&summary, "errors", &run), 1);
    for field in [
        "blobs_deleted",
        "manifests_deleted",
        "links_deleted",
        "repositories_deleted",
    ] {
        assert_eq!(
            field_u64(&summary, field, &run),
            0,
            "{field}: {}",
            run.describe()
        );
    }
    assert_eq!(field_u64(&summary, "uploads_deleted", &run), 1);

    let stale = f.model.expired_uploads(STALE_UPLOAD_HOURS);
    assert_eq!(stale.len(), 1);
    let stale_dir = format!(
        "docker/registry/v2/repositories/{}/_uploads/{}/",
        stale[0].repo, stale[0].uuid
    );
    // Its `_uploads` directory goes with it when it held nothing else (the registry recreates it).
    let uploads_dir = format!(
        "- docker/registry/v2/repositories/{}/_uploads",
        stale[0].repo
    );
    let after = tree_snapshot(&root);
    let changes = snapshot_diff(&before, &after);
    assert!(!changes.is_empty());
    for change in &changes {
        assert!(
            change.starts_with("- ") && format!("{}/", &change[2..]).starts_with(&stale_dir)
                || *change == uploads_dir,
            "only the stale upload may change, not {change}"
        );
    }
    assert_registry_serves_the_live_set(&mut f, false);
}

/// The storage root given by URL works the same as the config file.
#[test]
fn storage_url_addresses_the_same_registry() {
    let f = Fixture::build();
    let root: PathBuf = f.registry.storage_root();
    let url = format!("file://{}", root.display());
    let by_url = regsweep(&[
        "gc",
        "--storage",
        &url,
        "--dry-run",
        "-m",
        "--min-age",
        "0s",
        "--format",
        "json",
    ]);
    let plan = f.dir().join("plan.jsonl");
    let by_config = gc(&f, &plan, &["--dry-run", "-m"]);
    let (a, b) = (by_url.json(), by_config.json());
    for field in [
        "blobs_deleted",
        "bytes_deleted",
        "manifests_deleted",
        "links_deleted",
    ] {
        assert_eq!(a[field], b[field], "{field}");
    }
    assert!(field_u64(&a, "blobs_deleted", &by_url) > 0);
}
