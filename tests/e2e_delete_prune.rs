//! End-to-end tests of `regsweep delete` and `regsweep prune` against storage written by the real
//! registry (`docker-registry` 2.8): push repositories with shared base layers, a multi-arch index
//! with a referrer, tags sharing a manifest; remove some straight from the storage; restart the
//! registry; pull every tag that must remain (digests checked), see every removed tag and manifest
//! answer 404, and find in storage exactly the blobs the images that remain use. The expectations
//! come from the harness's model of what it pushed, never from regsweep's code.

pub mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::path::Path;
use std::time::{Duration, SystemTime};

use support::model::Model;
use support::run::{Background, PAUSE_ENV, PAUSE_MARKER, RunOutput, field_u64};
use support::storage::{Node, dangling_links, repository_dirs, snapshot_diff, storage_blobs};
use support::workload::{Format, Pushed, Ref, Workload};
use support::{Client, Registry, run_regsweep, tree_snapshot, verify_gone, verify_pulls};
use support::{verify_revisions, workload::backdate_tree};

const DAY: Duration = Duration::from_secs(24 * 3600);

fn regsweep(args: &[&str]) -> RunOutput {
    run_regsweep(Path::new(env!("CARGO_BIN_EXE_regsweep")), args)
}

/// The registry, its client and the model of what was pushed, with the manifests the tests name.
struct Scene {
    _dir: tempfile::TempDir,
    registry: Registry,
    client: Client,
    model: Model,
    /// team/app: the untagged image pushed by digest.
    untagged: Pushed,
    /// team/app: the index tagged `multi`, its two children and the referrer of the index.
    multi: [Pushed; 4],
    /// team/tools: an untagged image beside `t1`.
    tools_untagged: Pushed,
}

/// Pushes:
///
/// - `library/base`: `1.0` and `1.1` over three shared base layers, `latest` = the manifest of
///   `1.1`;
/// - `team/app` (base layers mounted): `v1`, `v2`, `dev-1`, `dev-2`, `multi` (an OCI index of an
///   amd64 child over a base layer and an arm64 child), a signature of the index pushed by digest,
///   and an untagged image;
/// - `team/tools`: `t1` over a base layer, and an untagged image.
///
/// Then makes every object two days old, and each tag's `current/link` as old as `ages` says.
fn scene(ages: &[(&str, &str, Duration)]) -> Scene {
    let dir = tempfile::Builder::new()
        .prefix("regsweep-e2e-delete-")
        .tempdir()
        .expect("temporary directory");
    let registry = Registry::start(dir.path());
    let client = registry.client();
    let mut w = Workload::new(
        &client,
        Some(&registry.v2_root()),
        "regsweep delete and prune",
    );
    use Format::{Docker, Oci};

    let base_repo = "library/base";
    let base = w.layers(base_repo, 3);
    let mut layers = base[..2].to_vec();
    layers.extend(w.layers(base_repo, 2));
    w.image(
        base_repo,
        Docker,
        &layers,
        "amd64",
        Ref::Tag("1.0"),
        "base 1.0",
    );
    let mut layers = base.clone();
    layers.extend(w.layers(base_repo, 2));
    let b11 = w.image(
        base_repo,
        Docker,
        &layers,
        "amd64",
        Ref::Tag("1.1"),
        "base 1.1",
    );
    w.push_again(base_repo, &b11, Ref::Tag("latest"));

    let app = "team/app";
    for digest in &base {
        w.mount(app, base_repo, digest);
    }
    for (tag, shared) in [("v1", 2), ("v2", 3), ("dev-1", 1), ("dev-2", 1)] {
        let mut layers = base[..shared].to_vec();
        layers.extend(w.layers(app, 2));
        w.image(
            app,
            Oci,
            &layers,
            "amd64",
            Ref::Tag(tag),
            &format!("app {tag}"),
        );
    }
    let mut layers = vec![base[0].clone()];
    layers.extend(w.layers(app, 2));
    let amd64 = w.image(app, Oci, &layers, "amd64", Ref::Digest, "app multi amd64");
    let layers = w.layers(app, 2);
    let arm64 = w.image(app, Oci, &layers, "arm64", Ref::Digest, "app multi arm64");
    let children = [(&amd64, "amd64"), (&arm64, "arm64")];
    let index = w.list(
        app,
        Oci,
        &children,
        Ref::Tag("multi"),
        true,
        "app multi index",
    );
    let signature = w.referrer(app, &index, Ref::Digest, "signature of app multi");
    let layers = w.layers(app, 2);
    let untagged = w.image(app, Oci, &layers, "amd64", Ref::Digest, "app untagged");

    let tools = "team/tools";
    w.mount(tools, base_repo, &base[0]);
    let mut layers = vec![base[0].clone()];
    layers.extend(w.layers(tools, 2));
    w.image(tools, Docker, &layers, "amd64", Ref::Tag("t1"), "tools t1");
    let layers = w.layers(tools, 1);
    let tools_untagged = w.image(
        tools,
        Docker,
        &layers,
        "amd64",
        Ref::Digest,
        "tools untagged",
    );

    let v2 = registry.v2_root();
    let now = SystemTime::now();
    backdate_tree(&v2, now - 2 * DAY);
    for (repo, tag, age) in ages {
        let link = v2.join(format!(
            "repositories/{repo}/_manifests/tags/{tag}/current/link"
        ));
        File::options()
            .write(true)
            .open(&link)
            .and_then(|f| f.set_modified(now - *age))
            .unwrap_or_else(|e| panic!("backdate {}: {e}", link.display()));
    }
    let model = w.model;
    Scene {
        _dir: dir,
        registry,
        client,
        model,
        untagged,
        multi: [index, amd64, arm64, signature],
        tools_untagged,
    }
}

impl Scene {
    /// The model after `repo:tag` was removed.
    fn untag(&mut self, repo: &str, tag: &str) {
        let removed = self.model.tags.get_mut(repo).and_then(|t| t.remove(tag));
        assert!(removed.is_some(), "{repo}:{tag} is not in the model");
    }

    /// The model after team/tools lost its only tag, and with it everything.
    fn drop_tools(&mut self) {
        let t1 = self.tag_digest("team/tools", "t1");
        self.untag("team/tools", "t1");
        self.drop_revision("team/tools", &t1);
        let untagged = self.tools_untagged.digest.clone();
        self.drop_revision("team/tools", &untagged);
    }

    /// The model after the revision `digest` left `repo`.
    fn drop_revision(&mut self, repo: &str, digest: &str) {
        self.model
            .deleted
            .entry(repo.to_owned())
            .or_default()
            .insert(digest.to_owned());
    }

    fn tag_digest(&self, repo: &str, tag: &str) -> String {
        self.model.tags[repo][tag].clone()
    }

    /// After a restart: every tag the model keeps pulls with its digests, with its children,
    /// config and layers; every revision it keeps pulls by digest; every other answers 404, and so
    /// do the `removed` tags. Storage holds exactly the blobs of the revisions that stay (no
    /// garbage left, no shared layer lost) and no link to a missing blob.
    fn assert_registry_holds_exactly_the_model(&mut self, removed: &[(&str, &str)]) {
        self.registry.restart();
        verify_pulls(&self.client, &self.model).assert_ok("pull every remaining tag");
        verify_revisions(&self.client, &self.model, false)
            .assert_ok("pull every remaining revision");
        verify_gone(&self.client, &self.model, false).assert_ok("removed manifests answer 404");
        for (repo, tag) in removed {
            let status = self.client.get_manifest(repo, tag).status;
            assert_eq!(status, 404, "{repo}:{tag} answered {status}, expected 404");
        }
        let v2 = self.registry.v2_root();
        let expected = self.model.expected_live_blobs(false);
        let found = storage_blobs(&v2);
        let lost: Vec<&String> = expected.difference(&found).collect();
        let left: Vec<&String> = found.difference(&expected).collect();
        assert!(
            lost.is_empty(),
            "blobs of remaining images were deleted:\n{}",
            self.model.explain_all(lost)
        );
        assert!(
            left.is_empty(),
            "garbage left in storage:\n{}",
            self.model.explain_all(left)
        );
        assert_eq!(dangling_links(&v2), Vec::<String>::new(), "dangling links");
    }
}

#[test]
fn delete_removes_tags_manifests_and_repositories_and_keeps_what_remains() {
    let mut s = scene(&[]);
    s.registry.stop();
    let config = s.registry.config_arg();
    let metrics = s._dir.path().join("regsweep.prom");
    let metrics_arg = metrics.to_string_lossy().into_owned();
    let run = regsweep(&[
        "delete",
        &config,
        "library/base:1.0",
        "library/base:latest",
        "team/app:multi",
        "team/tools:t1",
        "--min-age",
        "0s",
        "--format",
        "json",
        "--metrics-file",
        &metrics_arg,
    ]);
    run.assert_success();
    let summary = run.json();
    assert_eq!(
        field_u64(&summary, "tags_removed", &run),
        4,
        "{}",
        run.describe()
    );
    assert_eq!(field_u64(&summary, "repositories_deleted", &run), 1);
    assert_eq!(field_u64(&summary, "errors", &run), 0);
    let decisions = summary["decisions"].as_array().expect("decisions");
    assert_eq!(decisions.len(), 4, "{}", run.describe());
    assert!(
        decisions.iter().all(
            |d| d["action"] == "delete" && d["rule"].as_str().unwrap().starts_with("requested")
        )
    );

    // The model: 1.0 and its manifest go; `latest` goes but its manifest stays with 1.1; the
    // index, its children and its signature go; team/tools loses its last tag, so it goes whole,
    // its untagged image with it.
    let base_10 = s.tag_digest("library/base", "1.0");
    s.untag("library/base", "1.0");
    s.drop_revision("library/base", &base_10);
    s.untag("library/base", "latest");
    s.untag("team/app", "multi");
    for pushed in s.multi.clone() {
        s.drop_revision("team/app", &pushed.digest);
    }
    s.drop_tools();
    let blobs_freed = {
        let before: BTreeSet<String> = s.model.all_blobs();
        before.len() - s.model.expected_live_blobs(false).len()
    };
    assert_eq!(
        field_u64(&summary, "blobs_deleted", &run),
        blobs_freed as u64,
        "{}",
        run.describe()
    );
    s.assert_registry_holds_exactly_the_model(&[
        ("library/base", "1.0"),
        ("library/base", "latest"),
        ("team/app", "multi"),
        ("team/tools", "t1"),
    ]);
    let v2 = s.registry.v2_root();
    let repositories = repository_dirs(&v2);
    assert!(!repositories.contains("team/tools"), "{repositories:?}");
    assert!(repositories.contains("team/app") && repositories.contains("library/base"));
    assert_eq!(s.client.tags("team/tools").0, 404);

    // The metrics file holds the same counters, for node_exporter.
    let text = std::fs::read_to_string(&metrics).expect("the metrics file");
    let labels = r#"{command="delete",dry_run="false"}"#;
    for (name, value) in [
        ("tags_removed", "4".to_owned()),
        ("blobs_deleted", blobs_freed.to_string()),
        ("errors", "0".to_owned()),
        ("last_run_success", "1".to_owned()),
    ] {
        let line = format!("regsweep_{name}{labels} {value}");
        assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
    }
    assert!(
        text.contains("# TYPE regsweep_bytes_deleted gauge"),
        "{text}"
    );
}

#[test]
fn delete_refuses_missing_targets_and_tagged_digests_and_changes_nothing() {
    let mut s = scene(&[]);
    s.registry.stop();
    let config = s.registry.config_arg();
    let root = s.registry.storage_root();
    let before = tree_snapshot(&root);
    let metrics = s._dir.path().join("refused.prom");
    let metrics_arg = metrics.to_string_lossy().into_owned();
    let v1 = s.tag_digest("team/app", "v1");
    let amd64 = s.multi[1].digest.clone();
    for (target, needle) in [
        ("team/app:v9".to_owned(), "tag team/app:v9 does not exist"),
        (
            "team/nope".to_owned(),
            "repository team/nope does not exist",
        ),
        (
            format!("team/app@{v1}"),
            "point at: name them, or pass --with-tags",
        ),
        // A child of the tagged index: deleting it would break `multi`.
        (format!("team/app@{amd64}"), "would stay"),
    ] {
        let run = regsweep(&[
            "delete",
            &config,
            "team/app:v2",
            &target,
            "--min-age",
            "0s",
            "--metrics-file",
            &metrics_arg,
        ]);
        assert_eq!(run.status.code(), Some(1), "{}", run.describe());
        assert!(
            run.stderr.contains(needle),
            "`{needle}` not said:\n{}",
            run.describe()
        );
        let metrics_text = std::fs::read_to_string(&metrics).expect("metrics of a refused run");
        assert!(
            metrics_text.contains(r#"regsweep_errors{command="delete",dry_run="false"} 1"#),
            "{metrics_text}"
        );
    }
    let bad = regsweep(&["delete", &config, "Team/App:v1"]);
    assert_eq!(bad.status.code(), Some(2), "{}", bad.describe());
    // With --storage instead of CONFIG, the first positional is a target.
    let storage = root.to_string_lossy().into_owned();
    let missing = regsweep(&[
        "delete",
        "--storage",
        &storage,
        "team/app:v9",
        "team/app:v2",
    ]);
    assert_eq!(missing.status.code(), Some(1), "{}", missing.describe());
    assert!(
        missing.stderr.contains("tag team/app:v9 does not exist"),
        "{}",
        missing.describe()
    );
    assert_eq!(
        snapshot_diff(&before, &tree_snapshot(&root)),
        Vec::<String>::new(),
        "a refused delete changed the storage"
    );

    // With --with-tags the tagged digest goes with its tag.
    let run = regsweep(&[
        "delete",
        &config,
        &format!("team/app@{v1}"),
        "--with-tags",
        "--min-age",
        "0s",
        "--format",
        "json",
    ]);
    run.assert_success();
    s.untag("team/app", "v1");
    s.drop_revision("team/app", &v1);
    s.assert_registry_holds_exactly_the_model(&[("team/app", "v1")]);
}

/// Push times: `latest` newest in library/base; team/app's `v1` 100 days old (kept by its name),
/// `dev-1` 60 days (deleted), `dev-2` 10 days (kept: too young), `multi` 40 days (deleted);
/// team/tools' only tag 40 days (deleted: the repository goes).
fn prune_scene() -> Scene {
    scene(&[
        ("library/base", "1.0", 5 * DAY),
        ("library/base", "1.1", 4 * DAY),
        ("library/base", "latest", DAY),
        ("team/app", "v1", 100 * DAY),
        ("team/app", "v2", 50 * DAY),
        ("team/app", "dev-1", 60 * DAY),
        ("team/app", "dev-2", 10 * DAY),
        ("team/app", "multi", 40 * DAY),
        ("team/tools", "t1", 40 * DAY),
    ])
}

const POLICY: &str = r#"{"rules": [
    {"repositories": "library/*", "keep_last": 1},
    {"repositories": "team/**", "keep_tags": "^v\\d+$", "delete_older_than": "30d",
     "delete_untagged": true}
]}"#;

#[test]
fn prune_keeps_by_rule_and_sweeps_the_rest() {
    let mut s = prune_scene();
    s.registry.stop();
    let policy = s._dir.path().join("policy.json");
    std::fs::write(&policy, POLICY).unwrap();
    let config = s.registry.config_arg();
    let policy_arg = policy.to_string_lossy().into_owned();
    let run = regsweep(&[
        "prune",
        &config,
        "--policy",
        &policy_arg,
        "--min-age",
        "0s",
        "--format",
        "json",
    ]);
    run.assert_success();
    let summary = run.json();
    assert_eq!(
        field_u64(&summary, "tags_removed", &run),
        5,
        "{}",
        run.describe()
    );

    // library/base keeps `latest`, and with it the manifest of 1.1; 1.0's goes.
    let base_10 = s.tag_digest("library/base", "1.0");
    s.untag("library/base", "1.0");
    s.untag("library/base", "1.1");
    s.drop_revision("library/base", &base_10);
    // team/app: dev-1 and multi (with its children and signature) go, and the untagged image.
    let dev_1 = s.tag_digest("team/app", "dev-1");
    s.untag("team/app", "dev-1");
    s.drop_revision("team/app", &dev_1);
    s.untag("team/app", "multi");
    for pushed in s.multi.clone() {
        s.drop_revision("team/app", &pushed.digest);
    }
    let untagged = s.untagged.digest.clone();
    s.drop_revision("team/app", &untagged);
    // team/tools loses its last tag, so the repository goes.
    s.drop_tools();
    s.assert_registry_holds_exactly_the_model(&[
        ("library/base", "1.0"),
        ("library/base", "1.1"),
        ("team/app", "dev-1"),
        ("team/app", "multi"),
        ("team/tools", "t1"),
    ]);
    assert!(!repository_dirs(&s.registry.v2_root()).contains("team/tools"));
}

#[test]
fn prune_dry_run_prints_each_decision_and_changes_nothing() {
    let mut s = prune_scene();
    s.registry.stop();
    let root = s.registry.storage_root();
    let before = tree_snapshot(&root);
    let config = s.registry.config_arg();
    // The simple-case flags: the second rule of the policy, for team/** only.
    let run = regsweep(&[
        "prune",
        &config,
        "--repositories",
        "team/**",
        "--keep-tags",
        r"^v\d+$",
        "--older-than",
        "30d",
        "--dry-run",
        "--min-age",
        "0s",
    ]);
    run.assert_success();
    let multi = s.tag_digest("team/app", "multi");
    for expected in [
        format!("delete\tteam/app:multi\t{multi}\trule 1 (team/**): delete_older_than 30days"),
        format!(
            "keep\tteam/app:v1\t{}\trule 1 (team/**): keep_tags ^v\\d+$",
            s.tag_digest("team/app", "v1")
        ),
        format!(
            "keep\tteam/app:dev-2\t{}\trule 1 (team/**): newer than delete_older_than 30days",
            s.tag_digest("team/app", "dev-2")
        ),
        format!(
            "delete\tteam/tools:t1\t{}\trule 1 (team/**): delete_older_than 30days",
            s.tag_digest("team/tools", "t1")
        ),
    ] {
        assert!(
            run.stdout.lines().any(|l| l == expected),
            "no line `{expected}`:\n{}",
            run.describe()
        );
    }
    assert!(
        !run.stdout.contains("library/base:"),
        "no rule matches library/base:\n{}",
        run.stdout
    );
    assert!(
        run.stdout
            .lines()
            .any(|l| l.starts_with("would delete\tuntag\t")),
        "{}",
        run.describe()
    );
    assert_eq!(
        snapshot_diff(&before, &tree_snapshot(&root)),
        Vec::<String>::new(),
        "a dry run changed the storage"
    );
    // Everything still pulls.
    s.assert_registry_holds_exactly_the_model(&[]);
}

#[test]
fn a_tag_pushed_again_during_a_prune_keeps_its_repository() {
    let mut s = prune_scene();
    let policy = s._dir.path().join("policy.json");
    fs::write(&policy, POLICY).unwrap();
    let barrier = s._dir.path().join("go-on");
    let (config, policy_arg, barrier_arg) = (
        s.registry.config_arg(),
        policy.to_string_lossy().into_owned(),
        barrier.to_string_lossy().into_owned(),
    );
    let args = [
        "prune",
        config.as_str(),
        "--policy",
        policy_arg.as_str(),
        "--min-age",
        "0s",
        "--format",
        "json",
    ];
    let mut run = Background::start(
        Path::new(env!("CARGO_BIN_EXE_regsweep")),
        &args,
        &[(PAUSE_ENV, barrier_arg.as_str())],
    );
    run.wait_for(PAUSE_MARKER, Duration::from_secs(60));
    // Between the scan and the sweep, someone pushes dev-1 again (the same manifest).
    let dev_1 = s.client.get_manifest("team/app", "dev-1");
    assert_eq!(dev_1.status, 200);
    let media_type = dev_1.media_type.clone().expect("Content-Type");
    s.client
        .put_manifest("team/app", "dev-1", &media_type, &dev_1.body);
    fs::write(&barrier, "").unwrap();
    let run = run.wait();
    run.assert_success();
    assert!(
        field_u64(&run.json(), "deletions_spared", &run) > 0,
        "{}",
        run.describe()
    );

    // team/app was written to since the scan: its tags stay, with what they point at; its
    // untagged image still goes. Elsewhere the policy applies as without the push.
    let untagged = s.untagged.digest.clone();
    s.drop_revision("team/app", &untagged);
    let base_10 = s.tag_digest("library/base", "1.0");
    s.untag("library/base", "1.0");
    s.untag("library/base", "1.1");
    s.drop_revision("library/base", &base_10);
    s.drop_tools();
    s.assert_registry_holds_exactly_the_model(&[
        ("library/base", "1.0"),
        ("library/base", "1.1"),
        ("team/tools", "t1"),
    ]);
}

/// The registry's files (keys and contents), without regsweep's own `_regsweep/` and without
/// directories (a restore brings back objects, not empty directories).
fn registry_files(root: &Path) -> BTreeMap<String, Node> {
    tree_snapshot(root)
        .into_iter()
        .filter(|(key, node)| matches!(node, Node::File { .. }) && !key.starts_with("_regsweep"))
        .collect()
}

#[test]
fn delete_with_quarantine_is_undone_by_restore() {
    let mut s = scene(&[]);
    s.registry.stop();
    let root = s.registry.storage_root();
    let before = registry_files(&root);
    let config = s.registry.config_arg();
    let run = regsweep(&[
        "delete",
        &config,
        "library/base:1.0",
        "team/app:multi",
        "team/tools",
        "--quarantine",
        "--min-age",
        "0s",
        "--format",
        "json",
    ]);
    run.assert_success();
    let summary = run.json();
    assert_eq!(field_u64(&summary, "tags_removed", &run), 3);
    assert!(field_u64(&summary["quarantine"], "objects", &run) > 0);
    assert_ne!(registry_files(&root), before, "nothing was moved");

    let metrics = s._dir.path().join("restore.prom");
    let metrics_arg = metrics.to_string_lossy().into_owned();
    regsweep(&["restore", &config, "--metrics-file", &metrics_arg]).assert_success();
    let text = fs::read_to_string(&metrics).expect("the metrics file of the restore");
    let restored = format!(
        r#"regsweep_objects_restored{{command="restore",dry_run="false"}} {}"#,
        summary["quarantine"]["objects"]
    );
    assert!(
        text.lines().any(|l| l == restored),
        "no `{restored}` in:\n{text}"
    );
    let after = registry_files(&root);
    let lost: Vec<&String> = before.keys().filter(|k| !after.contains_key(*k)).collect();
    let differ: Vec<&String> = after
        .keys()
        .filter(|k| before.get(*k) != after.get(*k))
        .collect();
    assert!(
        lost.is_empty() && differ.is_empty(),
        "not restored: {lost:?}; differ: {differ:?}"
    );
    s.assert_registry_holds_exactly_the_model(&[]);
}
