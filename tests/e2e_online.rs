//! Online safety, end to end against the real registry (`docker-registry` 2.8): collecting while
//! the registry serves pushes, being killed with SIGKILL at any point of the sweep, the run lock,
//! and the pre/post commands. Every test ends by pulling, from the restarted registry, every image
//! that must have survived.

pub mod support;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, SystemTime};

use support::run::{
    Background, HANG_ENV, HANG_MARKER, PAUSE_ENV, PAUSE_MARKER, RunOutput, field_u64,
};
use support::storage::{assert_exactly_the_live_set, blob_file, storage_blobs};
use support::workload::{Format, Ref, Workload, backdate_tree};
use support::{Client, Fixture, Model, read_plan, run_regsweep, tree_snapshot, verify_pulls};

const MARKER_TIMEOUT: Duration = Duration::from_secs(60);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_regsweep"))
}

fn regsweep(args: &[&str]) -> RunOutput {
    run_regsweep(bin(), args)
}

/// The content of a blob, read from the filesystem storage.
fn blob_bytes(v2: &Path, digest: &str) -> Vec<u8> {
    let path = blob_file(v2, digest);
    fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Blobs that are not manifests (configs and layers), among `digests`.
fn plain_blobs(model: &Model, digests: BTreeSet<String>) -> Vec<String> {
    digests
        .into_iter()
        .filter(|d| model.blobs.contains_key(d))
        .collect()
}

/// Pushes an image into `repo` under `tag` whose layers are `reused` (blobs already in storage,
/// uploaded again as a client does that does not know it) and one new layer.
fn push_reusing(w: &mut Workload<'_>, repo: &str, tag: &str, reused: &[(String, Vec<u8>)]) {
    let mut layers: Vec<String> = reused
        .iter()
        .map(|(digest, bytes)| {
            let uploaded = w.upload(repo, bytes.clone());
            assert_eq!(&uploaded, digest);
            uploaded
        })
        .collect();
    layers.push(w.layer(repo));
    w.image(
        repo,
        Format::Oci,
        &layers,
        "amd64",
        Ref::Tag(tag),
        "pushed during gc",
    );
}

#[test]
fn pushes_during_a_collection_with_the_default_grace_period_all_pull_afterwards() {
    let mut f = Fixture::build();
    let v2 = f.v2_root();
    // Everything is two hours old: past the default one-hour grace period, the garbage is due.
    backdate_tree(
        &f.registry.storage_root(),
        SystemTime::now() - Duration::from_secs(2 * 3600),
    );
    let garbage = plain_blobs(&f.model, f.model.expected_garbage_blobs(true));
    let live = plain_blobs(&f.model, f.model.expected_live_blobs(true));
    assert!(garbage.len() >= 6, "the workload has too little garbage");
    // Reused by pushes between the mark and the sweep; the rest must be collected.
    let reused: Vec<(String, Vec<u8>)> = garbage[..3]
        .iter()
        .map(|d| (d.clone(), blob_bytes(&v2, d)))
        .collect();

    let barrier = f.dir().join("go-on");
    let barrier_text = barrier.to_string_lossy().into_owned();
    let config = f.registry.config_arg();
    let mut gc = Background::start(
        bin(),
        &["gc", &config, "-m", "--format", "json"],
        &[(PAUSE_ENV, &barrier_text)],
    );
    gc.wait_for(PAUSE_MARKER, MARKER_TIMEOUT);

    // Marked and planned: now pushes reuse garbage layers (the registry keeps their old blob
    // files and only links them), …
    let client = f.registry.client();
    let mut paused = Workload::new(
        &client,
        None,
        "pushed while regsweep was between mark and sweep",
    );
    for (i, blob) in reused.iter().enumerate() {
        push_reusing(
            &mut paused,
            "online/paused",
            &format!("t{i}"),
            std::slice::from_ref(blob),
        );
    }
    // … and a loop keeps pushing images (new layers and layers of live images) through the sweep.
    let stop = Arc::new(AtomicBool::new(false));
    let url = f.registry.url();
    let live_bytes: Vec<(String, Vec<u8>)> = live
        .iter()
        .take(8)
        .map(|d| (d.clone(), blob_bytes(&v2, d)))
        .collect();
    let looping = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            let client = Client::new(&url);
            let mut w = Workload::new(&client, None, "pushed in a loop during gc");
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) || n < 3 {
                let blob = &live_bytes[n % live_bytes.len()];
                push_reusing(
                    &mut w,
                    "online/loop",
                    &format!("l{n}"),
                    std::slice::from_ref(blob),
                );
                n += 1;
            }
            w.model
        })
    };
    fs::write(&barrier, "").unwrap();
    let run = gc.wait();
    stop.store(true, Ordering::SeqCst);
    let loop_model = looping.join().expect("the push loop");
    run.assert_success();
    assert!(
        run.stderr
            .contains("spared what the registry wrote since the scan"),
        "{}",
        run.describe()
    );

    // The reused blobs stayed; every other garbage blob went.
    let stored = storage_blobs(&v2);
    for digest in &garbage {
        let reused_now = reused.iter().any(|(d, _)| d == digest);
        assert_eq!(
            stored.contains(digest),
            reused_now,
            "{digest} (reused during the run: {reused_now}):\n{}",
            run.describe()
        );
    }
    let summary = run.json();
    assert!(field_u64(&summary, "blobs_deleted", &run) >= (garbage.len() - 3) as u64);
    assert!(
        field_u64(&summary, "deletions_spared", &run) >= 3,
        "{}",
        run.describe()
    );

    f.registry.restart();
    verify_pulls(&f.client, &f.model).assert_ok("pull every tag pushed before the run");
    verify_pulls(&f.client, &paused.model)
        .assert_ok("pull every image pushed between mark and sweep");
    verify_pulls(&f.client, &loop_model).assert_ok("pull every image pushed in the loop");
}

/// Copies a directory tree, keeping modification times.
fn copy_tree(from: &Path, to: &Path) {
    if to.exists() {
        fs::remove_dir_all(to).unwrap();
    }
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "cp -a {} {}",
        from.display(),
        to.display()
    );
}

#[test]
fn killed_at_any_point_of_the_sweep_every_tag_still_pulls_and_a_second_run_finishes() {
    let mut f = Fixture::build();
    f.registry.stop();
    let storage = f.registry.storage_root();
    let pristine = f.dir().join("pristine");
    copy_tree(&storage, &pristine);
    let config = f.registry.config_arg();
    let plan = f.dir().join("plan.jsonl");
    let plan_text = plan.to_string_lossy().into_owned();
    regsweep(&[
        "gc",
        &config,
        "-m",
        "--min-age",
        "0s",
        "--dry-run",
        "--plan-file",
        &plan_text,
    ])
    .assert_success();
    let keys = read_plan(&plan).len() as u64;
    assert!(keys > 50, "only {keys} deletions planned");

    // Kill points all over the sweep: early ones densely (the first phases are short), then
    // spread to the end.
    let mut points: BTreeSet<u64> = [0, 1, 2, 3, 5, 8, 13, 21, 34].into_iter().collect();
    points.extend((1..=6).map(|i| keys * i / 7));
    points.insert(keys - 1);
    for point in points {
        copy_tree(&pristine, &storage);
        let hang = point.to_string();
        let mut run = Background::start(
            bin(),
            &["gc", &config, "-m", "--min-age", "0s"],
            &[(HANG_ENV, &hang)],
        );
        run.wait_for(HANG_MARKER, MARKER_TIMEOUT);
        let killed = run.kill();
        let gone = tree_snapshot(&pristine).len() - tree_snapshot(&storage).len();
        assert!(
            gone as u64 >= point,
            "killed after {point}: only {gone} entries gone"
        );

        f.registry.restart();
        verify_pulls(&f.client, &f.model).assert_ok(&format!(
            "pull every tag after a SIGKILL after {point} deletions\n{}",
            killed.describe()
        ));
        f.registry.stop();

        // The next run (taking over the dead run's lock) finishes the job.
        let finish = regsweep(&["gc", &config, "-m", "--min-age", "0s", "--force"]);
        finish.assert_success();
        assert_exactly_the_live_set(
            &f.v2_root(),
            &f.model,
            true,
            &f.model
                .kept_uploads(168)
                .iter()
                .map(|u| (u.repo.clone(), u.uuid.clone()))
                .collect(),
        );
    }
    f.registry.restart();
    verify_pulls(&f.client, &f.model).assert_ok("pull every tag at the end");
}

#[test]
fn the_run_lock_refuses_a_second_run_and_is_taken_over_after_its_lease_or_by_force() {
    let mut f = Fixture::build();
    f.registry.stop();
    let config = f.registry.config_arg();
    let barrier = f.dir().join("never");
    let barrier_text = barrier.to_string_lossy().into_owned();
    let gc_args = [
        "gc",
        config.as_str(),
        "-m",
        "--min-age",
        "0s",
        "--format",
        "json",
    ];

    // A run holding the lock (paused before its sweep) makes a second one refuse, untouched.
    let root = f.registry.storage_root();
    let before = tree_snapshot(&root);
    let with_lease = [&gc_args[..], &["--lock-lease", "2s"]].concat();
    let mut holder = Background::start(bin(), &with_lease, &[(PAUSE_ENV, &barrier_text)]);
    holder.wait_for(PAUSE_MARKER, MARKER_TIMEOUT);
    let refused = regsweep(&gc_args);
    assert_eq!(refused.status.code(), Some(1), "{}", refused.describe());
    for needle in [
        "another regsweep run holds the lock",
        "_regsweep/lock",
        "pid",
    ] {
        assert!(
            refused.stderr.contains(needle),
            "{needle}: {}",
            refused.describe()
        );
    }
    assert_eq!(tree_snapshot(&root), before);

    // --force takes the live lock over and collects; the overtaken run notices (its renewal,
    // every 0.5 s, fails) and deletes nothing of its own plan.
    let forced = regsweep(&[&gc_args[..], &["--force"]].concat());
    forced.assert_success();
    assert!(field_u64(&forced.json(), "blobs_deleted", &forced) > 0);
    let collected = tree_snapshot(&root);
    thread::sleep(Duration::from_secs(1));
    fs::write(&barrier, "").unwrap();
    let halted = holder.wait();
    assert_eq!(halted.status.code(), Some(1), "{}", halted.describe());
    assert!(
        halted.stdout.contains("the run lock was lost") && halted.stdout.contains("not attempted"),
        "{}",
        halted.describe()
    );
    assert_eq!(tree_snapshot(&root), collected);
    fs::remove_file(&barrier).unwrap();

    // A run killed with the lock cannot release it: the next is refused until the lease (2 s)
    // ran out, then takes it over.
    let mut dead = Background::start(bin(), &with_lease, &[(PAUSE_ENV, &barrier_text)]);
    dead.wait_for(PAUSE_MARKER, MARKER_TIMEOUT);
    dead.kill();
    let early = regsweep(&gc_args);
    assert_eq!(early.status.code(), Some(1), "{}", early.describe());
    assert!(
        early.stderr.contains("holds the lock"),
        "{}",
        early.describe()
    );
    thread::sleep(Duration::from_millis(2500));
    let taken = regsweep(&gc_args);
    taken.assert_success();
    assert!(
        taken.stderr.contains("taking over the run lock"),
        "{}",
        taken.describe()
    );

    f.registry.restart();
    verify_pulls(&f.client, &f.model).assert_ok("pull every tag after the runs");
}

#[test]
fn pre_and_post_commands_wrap_the_run_and_a_failed_pre_command_stops_it() {
    let mut f = Fixture::build();
    f.registry.stop();
    let config = f.registry.config_arg();
    let log: PathBuf = f.dir().join("hooks.log");
    let pre = format!("echo pre >> '{}'", log.display());
    let post = format!("echo post >> '{}'", log.display());
    let before = tree_snapshot(&f.registry.storage_root());

    let failed_pre = format!("echo pre >> '{}'; exit 4", log.display());
    let refused = regsweep(&[
        "gc",
        &config,
        "-m",
        "--min-age",
        "0s",
        "--pre-command",
        &failed_pre,
        "--post-command",
        &post,
    ]);
    assert_eq!(refused.status.code(), Some(1), "{}", refused.describe());
    assert!(
        refused.stderr.contains("pre-command"),
        "{}",
        refused.describe()
    );
    assert_eq!(
        tree_snapshot(&f.registry.storage_root()),
        before,
        "nothing may change"
    );
    assert_eq!(
        fs::read_to_string(&log).unwrap(),
        "pre\npost\n",
        "the post-command undoes"
    );

    fs::remove_file(&log).unwrap();
    let run = regsweep(&[
        "gc",
        &config,
        "-m",
        "--min-age",
        "0s",
        "--format",
        "json",
        "--pre-command",
        &pre,
        "--post-command",
        &post,
    ]);
    run.assert_success();
    assert_eq!(fs::read_to_string(&log).unwrap(), "pre\npost\n");
    let summary = run.json();
    assert_eq!(
        summary["pre_command"]["success"],
        true,
        "{}",
        run.describe()
    );
    assert_eq!(
        summary["post_command"]["success"],
        true,
        "{}",
        run.describe()
    );
    assert!(field_u64(&summary, "blobs_deleted", &run) > 0);

    f.registry.restart();
    verify_pulls(&f.client, &f.model).assert_ok("pull every tag");
}

/// The files (not directories) of a snapshot: a restore does not bring back empty directories.
fn files(root: &Path) -> Vec<(String, support::storage::Node)> {
    tree_snapshot(root)
        .into_iter()
        .filter(|(_, node)| matches!(node, support::storage::Node::File { .. }))
        .collect()
}

#[test]
fn a_quarantine_killed_mid_way_keeps_every_tag_pullable_and_restores_exactly() {
    let mut f = Fixture::build();
    f.registry.stop();
    let storage = f.registry.storage_root();
    let pristine = f.dir().join("pristine");
    copy_tree(&storage, &pristine);
    let original = files(&storage);
    let config = f.registry.config_arg();
    let plan = f.dir().join("plan.jsonl");
    let plan_text = plan.to_string_lossy().into_owned();
    regsweep(&[
        "gc",
        &config,
        "-m",
        "--min-age",
        "0s",
        "--dry-run",
        "--plan-file",
        &plan_text,
    ])
    .assert_success();
    let keys = read_plan(&plan).len() as u64;

    for point in [1, keys / 3, keys * 2 / 3] {
        copy_tree(&pristine, &storage);
        let hang = point.to_string();
        let mut run = Background::start(
            bin(),
            &["gc", &config, "-m", "--min-age", "0s", "--quarantine"],
            &[(HANG_ENV, &hang)],
        );
        run.wait_for(HANG_MARKER, MARKER_TIMEOUT);
        let killed = run.kill();
        assert_ne!(
            files(&storage),
            original,
            "nothing was moved before the kill"
        );

        f.registry.restart();
        verify_pulls(&f.client, &f.model).assert_ok(&format!(
            "pull every tag after a SIGKILL after {point} moves\n{}",
            killed.describe()
        ));
        f.registry.stop();

        // The restore (taking over the dead run's lock) works from what the quarantine holds.
        let restore = regsweep(&["restore", &config, "--force", "--format", "json"]);
        restore.assert_success();
        assert_eq!(
            files(&storage),
            original,
            "restore after a kill after {point} moves"
        );
    }
}
