//! End-to-end tests of `regsweep mark` and `regsweep sweep [--shard I/N]` against storage the real
//! registry (`docker-registry` 2.8) wrote, on a filesystem and on S3 (`moto_server`): the shards of
//! one mark leave exactly what one `gc` leaves and every surviving tag pulls after a restart; a
//! killed sweep started again finishes the job; pushes between the mark and the sweep survive; a
//! stale, mismatched or corrupt state is refused and nothing is deleted.

pub mod support;

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

use regsweep::layout;
use regsweep::shard::Shard;
use support::hostile::copy_tree;
use support::run::{
    Background, HANG_ENV, HANG_MARKER, PAUSE_ENV, PAUSE_MARKER, RunOutput, field_u64,
};
use support::s3::MotoServer;
use support::storage::{assert_exactly_the_live_set, blob_file, link_file, snapshot_diff};
use support::workload::{Format, Ref, Workload, backdate_tree};
use support::{Fixture, Model, read_plan, run_regsweep, tree_snapshot, verify_gone, verify_pulls};

/// What `gc` and `sweep` summaries count of the work, summed over the shards.
const WORK: [&str; 7] = [
    "blobs_deleted",
    "bytes_deleted",
    "manifests_deleted",
    "links_deleted",
    "tags_deleted",
    "repositories_deleted",
    "uploads_deleted",
];

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_regsweep"))
}

fn regsweep(args: &[&str]) -> RunOutput {
    run_regsweep(bin(), args)
}

fn kept_uploads(model: &Model) -> BTreeSet<(String, String)> {
    model
        .kept_uploads(168)
        .iter()
        .map(|u| (u.repo.clone(), u.uuid.clone()))
        .collect()
}

/// `regsweep <command> <location…> -m --min-age 0s --format json [extra…]`: the options every
/// run here shares (a mark's sweep must repeat them).
fn run_with(command: &str, location: &[&str], extra: &[&str]) -> RunOutput {
    let mut args = vec![command];
    args.extend_from_slice(location);
    args.extend_from_slice(&["-m", "--min-age", "0s", "--format", "json"]);
    args.extend_from_slice(extra);
    regsweep(&args)
}

/// `regsweep mark <location…> -m --min-age 0s --format json --state <state>`, which must succeed.
fn mark(location: &[&str], state: &str) -> RunOutput {
    let run = run_with("mark", location, &["--state", state]);
    run.assert_success();
    run
}

/// `regsweep sweep <location…> -m --min-age 0s --format json --state <state> [extra…]`.
fn sweep(location: &[&str], state: &str, extra: &[&str]) -> RunOutput {
    let mut extra_args = vec!["--state", state];
    extra_args.extend_from_slice(extra);
    run_with("sweep", location, &extra_args)
}

/// The blob digests a plan file deletes.
fn planned_blob_bytes(plan: &Path) -> Vec<u8> {
    read_plan(plan)
        .iter()
        .filter_map(|e| e.key.split("/blobs/sha256/").nth(1))
        .map(|rest| u8::from_str_radix(&rest[..2], 16).unwrap())
        .collect()
}

/// The standard workload, two hours old (past the default grace period: its garbage is due),
/// marked with `-m` and the default `--min-age`; its config and the state's path.
fn old_and_marked() -> (Fixture, String, String) {
    let f = Fixture::build();
    backdate_tree(
        &f.registry.storage_root(),
        SystemTime::now() - Duration::from_secs(2 * 3600),
    );
    let config = f.registry.config_arg();
    let state = f.dir().join("mark.state").to_string_lossy().into_owned();
    regsweep(&["mark", &config, "--state", &state, "-m"]).assert_success();
    (f, config, state)
}

/// A blob that is garbage with `-m` and that a repository still links (an API-deleted image
/// leaves its layer links): `(repository, digest)`.
fn garbage_still_linked(f: &Fixture) -> (String, String) {
    let v2 = f.v2_root();
    let garbage = f.model.expected_garbage_blobs(true);
    f.model
        .blob_links
        .iter()
        .flat_map(|(repo, blobs)| blobs.iter().map(move |b| (repo.clone(), b.clone())))
        .find(|(repo, b)| garbage.contains(b) && link_file(&v2, repo, b).is_file())
        .expect("a garbage blob that a repository still links")
}

#[test]
fn four_shards_of_one_mark_leave_exactly_what_one_gc_leaves_and_every_tag_pulls() {
    let mut f = Fixture::build();
    f.registry.stop();
    let root = f.registry.storage_root();
    // The same registry, collected by one gc.
    let single = f.dir().join("single");
    copy_tree(&root, &single);
    let single_url = single.to_string_lossy().into_owned();
    let gc = run_with("gc", &["--storage", &single_url], &[]);
    gc.assert_success();

    let config = f.registry.config_arg();
    let metrics = f.dir().join("mark.prom");
    let metrics_arg = metrics.to_string_lossy().into_owned();
    let marked = mark(
        &[&config, "--metrics-file", &metrics_arg],
        "registry:nightly",
    );
    let header = marked.json();
    let exposition = fs::read_to_string(&metrics).unwrap();
    let gauge = format!(
        "regsweep_live_blobs{{command=\"mark\",dry_run=\"true\"}} {}",
        header["live_blobs"]
    );
    assert!(exposition.contains(&gauge), "{gauge} not in:\n{exposition}");
    assert!(exposition.contains("regsweep_last_run_success{command=\"mark\",dry_run=\"true\"} 1"));
    assert_eq!(
        field_u64(&header, "blobs", &marked),
        f.model.all_blobs().len() as u64
    );
    assert_eq!(
        field_u64(&header, "live_blobs", &marked),
        f.model.expected_live_blobs(true).len() as u64,
        "{}",
        marked.describe()
    );
    assert!(
        root.join("_regsweep/state/nightly").is_file(),
        "the state is not in the registry's storage"
    );

    let mut total = [0u64; WORK.len()];
    let mut repositories_swept = BTreeSet::new();
    for i in 0..4 {
        let shard = format!("{i}/4");
        let plan = f.dir().join(format!("plan-{i}.jsonl"));
        let plan_arg = plan.to_string_lossy().into_owned();
        let run = sweep(
            &[&config],
            "registry:nightly",
            &["--shard", &shard, "--plan-file", &plan_arg],
        );
        run.assert_success();
        let summary = run.json();
        assert_eq!(summary["shard"], shard.as_str(), "{}", run.describe());
        for (sum, field) in total.iter_mut().zip(WORK) {
            *sum += field_u64(&summary, field, &run);
        }
        // A shard deletes only its own blobs, and only in its own repositories.
        let bytes = planned_blob_bytes(&plan);
        assert!(
            bytes.iter().all(|b| u32::from(*b) % 4 == i),
            "shard {shard} planned blobs of other shards: {bytes:?}"
        );
        let own = Shard::new(u64::from(i), 4).unwrap();
        let entries = read_plan(&plan);
        for entry in &entries {
            if let Some(name) = layout::parse_repository_key(&entry.key).repository {
                assert!(
                    own.owns_repository(name),
                    "shard {shard} planned {}",
                    entry.key
                );
                repositories_swept.insert(name.to_owned());
            }
        }
    }
    assert!(
        repositories_swept.len() > 4,
        "too few repositories swept to tell the shards apart: {repositories_swept:?}"
    );
    let single_summary = gc.json();
    for (sum, field) in total.iter().zip(WORK) {
        assert_eq!(
            *sum,
            field_u64(&single_summary, field, &gc),
            "`{field}` summed over the shards differs from one gc"
        );
    }
    assert_eq!(
        total[0],
        f.model.expected_garbage_blobs(true).len() as u64,
        "blobs deleted"
    );

    // The same objects are left, the mark state aside.
    assert_eq!(
        snapshot_diff(&tree_snapshot(&single), &tree_snapshot(&root)),
        Vec::<String>::new(),
        "the shards left something else than one gc"
    );
    assert_exactly_the_live_set(&f.v2_root(), &f.model, true, &kept_uploads(&f.model));
    f.registry.restart();
    verify_pulls(&f.client, &f.model).assert_ok("pull every tag after the sharded sweep");
    verify_gone(&f.client, &f.model, true).assert_ok("collected manifests are gone");
}

#[test]
fn a_killed_sweep_started_again_from_the_same_state_finishes_and_loses_nothing() {
    let mut f = Fixture::build();
    f.registry.stop();
    let config = f.registry.config_arg();
    let state = f.dir().join("mark.state");
    let state = state.to_string_lossy().into_owned();
    mark(&[&config], &state);

    let metrics = f.dir().join("sweep.prom");
    let metrics_arg = metrics.to_string_lossy().into_owned();
    let mut args = vec![
        "--log-format",
        "json",
        "sweep",
        config.as_str(),
        "--state",
        state.as_str(),
    ];
    args.extend_from_slice(&["-m", "--min-age", "0s", "--shard", "1/2"]);
    args.extend_from_slice(&[
        "--progress-interval",
        "100ms",
        "--metrics-file",
        &metrics_arg,
    ]);
    let mut killed = Background::start(bin(), &args, &[(HANG_ENV, "3")]);
    killed.wait_for(HANG_MARKER, Duration::from_secs(120));
    // A sweep that hangs still says how far it is: log lines, and the metrics file.
    killed.wait_for("progress: sweeping", Duration::from_secs(30));
    let waited = std::time::Instant::now();
    while !metrics.exists() && waited.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let exposition = fs::read_to_string(&metrics).unwrap();
    let planned: u64 = exposition
        .lines()
        .find_map(|l| l.strip_prefix("regsweep_progress_deletions_planned{"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no planned deletions in the progress:\n{exposition}"));
    assert!(planned > 0, "{exposition}");
    assert!(
        !exposition.contains("phase=\"read\""),
        "the progress does not show the sweep:\n{exposition}"
    );
    let killed = killed.kill();
    f.registry.restart();
    verify_pulls(&f.client, &f.model).assert_ok(&format!(
        "pull every tag after a SIGKILL\n{}",
        killed.describe()
    ));
    f.registry.stop();

    // Started again (taking the dead run's lock over), then the other shard.
    let again = sweep(&[&config], &state, &["--shard", "1/2", "--force"]);
    again.assert_success();
    assert!(
        field_u64(&again.json(), "blobs_deleted", &again) > 0
            || field_u64(&again.json(), "links_deleted", &again) > 0,
        "the second sweep found nothing left to do: the kill came too late\n{}",
        again.describe()
    );
    sweep(&[&config], &state, &["--shard", "0/2"]).assert_success();
    assert_exactly_the_live_set(&f.v2_root(), &f.model, true, &kept_uploads(&f.model));
    f.registry.restart();
    verify_pulls(&f.client, &f.model).assert_ok("pull every tag at the end");
}

#[test]
fn what_is_pushed_between_the_mark_and_the_sweep_survives_the_sweep() {
    let (mut f, config, state) = old_and_marked();
    let v2 = f.v2_root();
    let blob_file = |digest: &str| blob_file(&v2, digest);
    // Garbage at the mark: plain blobs, one of which a repository still links, and an untagged
    // image manifest.
    let garbage = f.model.expected_garbage_blobs(true);
    let (linked_repo, linked) = garbage_still_linked(&f);
    let plain: Vec<String> = garbage
        .iter()
        .filter(|d| f.model.blobs.contains_key(*d) && **d != linked)
        .take(2)
        .cloned()
        .collect();
    assert_eq!(plain.len(), 2, "the workload has too little garbage");
    let untagged = f.model.present_revisions();
    let kept = f.model.expected_revisions(true);
    let (revived_repo, revived) = untagged
        .iter()
        .flat_map(|(repo, revisions)| revisions.iter().map(move |m| (repo.clone(), m.clone())))
        .find(|(repo, m)| {
            !kept.get(repo).is_some_and(|k| k.contains(m))
                && f.model.manifests[m].children.is_empty()
                && f.model.manifests[m]
                    .layers
                    .iter()
                    .all(|l| garbage.contains(l))
        })
        .expect("an untagged image whose layers are all garbage");
    let existing = f.model.repos.iter().next().unwrap().clone();
    let client = f.registry.client();
    let mut w = Workload::new(&client, None, "pushed between mark and sweep");
    let mut pushed = Vec::new();
    // Garbage layers pushed again (the registry keeps their old files and only links them): in a
    // tagged image of a repository the mark knew, and in an untagged one of a new repository (as
    // a multi-arch push writes its children before the index: under -m only a repository
    // written since the mark keeps it).
    for (repo, digest, reference) in [
        (existing.as_str(), &plain[0], Ref::Tag("late")),
        ("after/mark", &plain[1], Ref::Digest),
    ] {
        assert_eq!(
            &w.upload(repo, fs::read(blob_file(digest)).unwrap()),
            digest
        );
        let layers = vec![digest.clone(), w.layer(repo)];
        let image = w.image(
            repo,
            Format::Oci,
            &layers,
            "amd64",
            reference,
            "after the mark",
        );
        pushed.push((repo.to_owned(), image.digest, layers));
    }
    // A layer the repository still links, used again without an upload (the client finds it
    // there): nothing but the new manifest says it is live.
    let (image, reused) = w.image_on_linked_layer(
        &linked_repo,
        fs::read(blob_file(&linked)).unwrap(),
        Ref::Tag("reused"),
        "after the mark, through an old link",
    );
    pushed.push((linked_repo.clone(), image.digest, vec![reused]));
    // An untagged image tagged again, as it is (its bytes pushed under a new tag).
    let info = &f.model.manifests[&revived];
    let bytes = fs::read(blob_file(&revived)).unwrap();
    client.put_manifest(&revived_repo, "revived", &info.media_type, &bytes);
    let mut revived_blobs = info.layers.clone();
    revived_blobs.extend(info.config.clone());
    pushed.push((revived_repo.clone(), revived.clone(), revived_blobs));

    let mut deleted = 0;
    for i in 0..3 {
        let shard = format!("{i}/3");
        let run = regsweep(&[
            "sweep", &config, "--state", &state, "-m", "--shard", &shard, "--format", "json",
        ]);
        run.assert_success();
        deleted += field_u64(&run.json(), "blobs_deleted", &run);
    }
    assert!(deleted > 0, "the sweeps deleted nothing");
    for (repo, manifest, blobs) in &pushed {
        for digest in blobs.iter().chain([manifest]) {
            assert!(
                blob_file(digest).is_file(),
                "{repo}@{manifest}: {digest}, live again since the mark, was deleted"
            );
        }
    }
    f.registry.restart();
    verify_pulls(&f.client, &f.model).assert_ok("pull every tag of the mark");
    let client = f.registry.client();
    verify_pulls(&client, &w.model).assert_ok("pull every tag pushed after the mark");
    assert_eq!(client.get_manifest(&revived_repo, "revived").status, 200);
    for (repo, manifest, layers) in &pushed {
        let status = client.get_manifest(repo, manifest).status;
        assert_eq!(status, 200, "{repo}@{manifest}");
        for layer in layers {
            client
                .fetch_blob(repo, layer)
                .unwrap_or_else(|e| panic!("{repo}@{manifest}: layer {layer}: {e}"));
        }
    }
}

#[test]
fn what_is_pushed_while_the_sweep_is_between_its_plan_and_its_deletions_survives() {
    let (mut f, config, state) = old_and_marked();
    let v2 = f.v2_root();
    let blob_file = |digest: &str| blob_file(&v2, digest);
    let (repo, linked) = garbage_still_linked(&f);

    // The sweep has listed and planned (the blob is in its plan), and waits…
    let barrier = f.dir().join("go-on");
    let barrier_text = barrier.to_string_lossy().into_owned();
    let mut paused = Background::start(
        bin(),
        &[
            "sweep", &config, "--state", &state, "-m", "--format", "json",
        ],
        &[(PAUSE_ENV, &barrier_text)],
    );
    paused.wait_for(PAUSE_MARKER, Duration::from_secs(120));
    // … while a manifest uses the blob through the link its repository kept, without an upload.
    let client = f.registry.client();
    let mut w = Workload::new(&client, None, "pushed while the sweep waited");
    let (image, _) = w.image_on_linked_layer(
        &repo,
        fs::read(blob_file(&linked)).unwrap(),
        Ref::Tag("while-sweeping"),
        "pushed while the sweep waited",
    );
    fs::write(&barrier, "").unwrap();
    let run = paused.wait();
    run.assert_success();
    assert!(
        run.stderr
            .contains("spared what the registry wrote since the mark"),
        "{}",
        run.describe()
    );
    assert!(
        blob_file(&linked).is_file(),
        "{linked}, live again, was deleted"
    );
    f.registry.restart();
    let client = f.registry.client();
    verify_pulls(&client, &w.model).assert_ok(&format!("pull {repo}@{}", image.digest));
    verify_pulls(&f.client, &f.model).assert_ok("pull every tag of the mark");
}

#[test]
fn an_image_restored_with_its_old_times_between_the_mark_and_the_sweep_survives() {
    let mut f = Fixture::build();
    f.registry.stop();
    let config = f.registry.config_arg();
    let (repo, tags) = f.model.surviving_tags().into_iter().next().unwrap();
    let tag = tags.keys().next().unwrap().clone();
    // Quarantined (on a filesystem, moved: the objects keep their times) before the mark…
    let target = format!("{repo}:{tag}");
    let delete = regsweep(&[
        "delete",
        &config,
        &target,
        "--quarantine",
        "-m",
        "--min-age",
        "0s",
        "--format",
        "json",
    ]);
    delete.assert_success();
    assert_eq!(field_u64(&delete.json(), "tags_removed", &delete), 1);
    let state = f.dir().join("mark.state");
    let state = state.to_string_lossy().into_owned();
    mark(&[&config], &state);
    // … and put back after it, as it was: nothing in it is younger than the cut-off.
    regsweep(&["restore", &config, "--format", "json"]).assert_success();
    let run = sweep(&[&config], &state, &[]);
    run.assert_success();
    assert!(
        field_u64(&run.json(), "blobs_deleted", &run) > 0,
        "{}",
        run.describe()
    );
    f.registry.restart();
    verify_pulls(&f.client, &f.model).assert_ok(&format!("pull every tag, {target} included"));
}

#[test]
fn a_stale_mismatched_foreign_or_corrupt_state_is_refused_and_nothing_is_deleted() {
    let mut f = Fixture::build();
    f.registry.stop();
    let config = f.registry.config_arg();
    let root = f.registry.storage_root();
    let state_path = f.dir().join("mark.state");
    let state = state_path.to_string_lossy().into_owned();
    // The mark reports its progress too (here every millisecond).
    let marked = mark(&[&config, "--progress-interval", "1ms"], &state);
    assert!(
        marked.stderr.contains("progress: reading the storage"),
        "{}",
        marked.describe()
    );
    let before = tree_snapshot(&root);

    let refused = |extra: &[&str], state: &str, needle: &str, location: &[&str]| {
        let mut args = vec!["sweep"];
        args.extend_from_slice(location);
        args.extend_from_slice(&["--state", state]);
        args.extend_from_slice(extra);
        let run = regsweep(&args);
        assert_eq!(run.status.code(), Some(1), "{}", run.describe());
        assert!(
            run.stderr.contains(needle),
            "expected {needle:?}:\n{}",
            run.describe()
        );
        assert_eq!(
            snapshot_diff(&before, &tree_snapshot(&root)),
            Vec::<String>::new(),
            "a refused sweep changed the storage"
        );
    };
    let here: &[&str] = &[&config];
    // Other options than the mark's.
    refused(&["--min-age", "0s"], &state, "--delete-untagged", here);
    refused(&["-m", "--min-age", "2h"], &state, "--min-age", here);
    refused(
        &["-m", "--min-age", "0s", "--upload-max-age", "1h"],
        &state,
        "--upload-max-age",
        here,
    );
    // Too old.
    std::thread::sleep(Duration::from_millis(1100));
    refused(
        &["-m", "--min-age", "0s", "--max-state-age", "1s"],
        &state,
        "is stale",
        here,
    );
    // Another storage.
    let other = f.dir().join("other");
    copy_tree(&root, &other);
    let other = other.to_string_lossy().into_owned();
    refused(
        &["-m", "--min-age", "0s"],
        &state,
        "was made from",
        &["--storage", &other],
    );
    // Corrupt: one byte changed, or cut short.
    let bytes = fs::read(&state_path).unwrap();
    let mut flipped = bytes.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x40;
    let corrupt = f.dir().join("corrupt.state");
    fs::write(&corrupt, &flipped).unwrap();
    let corrupt = corrupt.to_string_lossy().into_owned();
    refused(
        &["-m", "--min-age", "0s"],
        &corrupt,
        "checksum mismatch",
        here,
    );
    let short = f.dir().join("short.state");
    fs::write(&short, &bytes[..bytes.len() - 7]).unwrap();
    let short = short.to_string_lossy().into_owned();
    refused(
        &["-m", "--min-age", "0s"],
        &short,
        "checksum mismatch",
        here,
    );
    // No state at all.
    refused(
        &["-m", "--min-age", "0s"],
        "registry:never-marked",
        "run `regsweep mark` first",
        here,
    );

    // The same name, another storage: the storage's own ID differs.
    let id_path = root.join("_regsweep/id");
    let id = fs::read_to_string(&id_path).expect("the mark wrote the storage's ID");
    fs::write(&id_path, "20200101T000000Z-000000").unwrap();
    refused(&["-m", "--min-age", "0s"], &state, "storage ID", here);
    fs::remove_file(&id_path).unwrap();
    refused(&["-m", "--min-age", "0s"], &state, "storage ID none", here);
    fs::write(&id_path, id).unwrap();

    // The same state, with the mark's options, is taken.
    sweep(&[&config], &state, &[]).assert_success();
    assert_exactly_the_live_set(&f.v2_root(), &f.model, true, &kept_uploads(&f.model));
    f.registry.restart();
    verify_pulls(&f.client, &f.model).assert_ok("pull every tag after the sweep");
}

#[test]
fn s3_four_shards_of_one_mark_in_the_bucket_leave_exactly_the_live_set() {
    const BUCKET: &str = "registry";
    let moto = MotoServer::start();
    moto.create_bucket(BUCKET);
    let mut f = Fixture::build_s3(&moto, BUCKET);
    f.registry.stop();
    let config = f.registry.config_arg();
    let prefix = f.registry.s3_v2_prefix();
    let root = prefix.trim_end_matches("docker/registry/v2/");

    // The same registry in a second bucket, collected by one gc.
    const SINGLE: &str = "single";
    moto.create_bucket(SINGLE);
    let copy = tempfile::tempdir().unwrap();
    moto.download(BUCKET, root, copy.path());
    moto.upload_tree(SINGLE, root, copy.path());
    let text = fs::read_to_string(&config).unwrap();
    let single_text: String = text
        .lines()
        .map(|line| match line.trim_start().strip_prefix("bucket:") {
            Some(_) => format!("    bucket: {SINGLE}\n"),
            None => format!("{line}\n"),
        })
        .collect();
    assert_ne!(single_text, text, "{text}");
    let single_config = f.dir().join("single.yml");
    fs::write(&single_config, single_text).unwrap();
    let single_config = single_config.to_string_lossy().into_owned();
    let gc = run_with("gc", &[&single_config], &[]);
    gc.assert_success();

    mark(&[&config], "registry:nightly");
    assert!(
        moto.list_keys(BUCKET, &format!("{root}_regsweep/state/"))
            .contains(&format!("{root}_regsweep/state/nightly")),
        "the state is not in the bucket"
    );
    let mut total = [0u64; WORK.len()];
    for i in 0..4 {
        let run = sweep(
            &[&config],
            "registry:nightly",
            &["--shard", &format!("{i}/4")],
        );
        run.assert_success();
        for (sum, field) in total.iter_mut().zip(WORK) {
            *sum += field_u64(&run.json(), field, &run);
        }
    }
    for (sum, field) in total.iter().zip(WORK) {
        assert_eq!(
            *sum,
            field_u64(&gc.json(), field, &gc),
            "`{field}` summed over the shards"
        );
    }
    assert_eq!(total[0], f.model.expected_garbage_blobs(true).len() as u64);
    // The same objects are left in both buckets, the mark state aside.
    let keys = |bucket: &str| -> BTreeSet<String> {
        moto.list_keys(bucket, root)
            .into_iter()
            .filter(|k| !k.starts_with(&format!("{root}_regsweep/")))
            .collect()
    };
    assert_eq!(
        keys(BUCKET),
        keys(SINGLE),
        "the shards left something else than one gc"
    );
    let after = tempfile::tempdir().unwrap();
    moto.download(BUCKET, root, after.path());
    // S3 objects cannot be backdated: every upload is young and stays.
    let uploads = f
        .model
        .uploads
        .iter()
        .map(|u| (u.repo.clone(), u.uuid.clone()))
        .collect();
    assert_exactly_the_live_set(
        &after.path().join("docker/registry/v2"),
        &f.model,
        true,
        &uploads,
    );
    f.registry.restart();
    verify_pulls(&f.client, &f.model).assert_ok("pull every tag after the sharded sweep on S3");
}
