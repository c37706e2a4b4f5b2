//! Tests of the synthetic layout writer (`examples/synth_registry.rs`, compiled in here with
//! `#[path]`): what it writes must be a registry the real components accept — the official
//! collector (`docker-registry garbage-collect`) agrees with its ground truth, the real registry
//! serves every tag with correct digests, and `regsweep gc` frees exactly the garbage it reports —
//! on a filesystem and on S3 (`moto_server`).

pub mod support;

#[path = "../examples/synth_registry.rs"]
pub mod synth;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use support::client::MANIFEST_ACCEPT;
use support::content::digest_of;
use support::registry::registry_binary;
use support::run::{RunOutput, field_u64};
use support::s3::MotoServer;
use support::storage::{repository_dirs, storage_blobs, storage_layer_links, storage_tags};
use support::{Client, Registry, run_regsweep, tree_snapshot};

const BUCKET: &str = "synth";

fn regsweep(args: &[&str]) -> RunOutput {
    run_regsweep(Path::new(env!("CARGO_BIN_EXE_regsweep")), args)
}

/// `regsweep gc <config> --min-age 0s --format json [extra…]`, which must succeed: its summary.
fn gc(config: &str, extra: &[&str]) -> (serde_json::Value, RunOutput) {
    let mut args = vec!["gc", config, "--min-age", "0s", "--format", "json"];
    args.extend_from_slice(extra);
    let run = regsweep(&args);
    run.assert_success();
    (run.json(), run)
}

fn synth(args: &[&str]) -> synth::Truth {
    synth::run_cli(args).unwrap_or_else(|e| panic!("synth_registry {args:?}: {e}"))
}

/// Every file under `dir`, recursively.
fn count_files(dir: &Path) -> u64 {
    let mut n = 0;
    for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
        let entry = entry.expect("dir entry");
        let kind = entry.file_type().expect("file type");
        if kind.is_dir() {
            n += count_files(&entry.path());
        } else {
            n += 1;
        }
    }
    n
}

/// What the official collector printed last: `N blobs marked, M blobs and K manifests eligible
/// for deletion` (in a dry run the eligible blobs are listed after it).
#[derive(Debug, PartialEq, Eq)]
struct OfficialCounts {
    marked: u64,
    blobs: u64,
    manifests: u64,
}

/// `docker-registry garbage-collect --dry-run [-m] <config>` (with no `AWS_*`/`REGISTRY_*`
/// variables: its S3 driver panics on `AWS_CA_BUNDLE`): must exit 0.
fn official_dry_run(config: &Path, delete_untagged: bool) -> OfficialCounts {
    let mut command = Command::new(registry_binary());
    command.arg("garbage-collect").arg("--dry-run");
    if delete_untagged {
        command.arg("--delete-untagged");
    }
    command.arg(config).stdin(Stdio::null());
    for (key, _) in std::env::vars_os() {
        let text = key.to_string_lossy();
        if text.starts_with("AWS_") || text.starts_with("REGISTRY_") {
            command.env_remove(&key);
        }
    }
    let output = command
        .output()
        .expect("run docker-registry garbage-collect");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "garbage-collect failed: {}\nstdout tail:\n{}\nstderr:\n{}",
        output.status,
        stdout.lines().rev().take(20).collect::<Vec<_>>().join("\n"),
        String::from_utf8_lossy(&output.stderr)
    );
    let line = stdout
        .lines()
        .find(|l| l.contains(" blobs marked, "))
        .unwrap_or_else(|| panic!("no summary line in the collector's output:\n{stdout}"));
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.trim_end_matches(',').parse().ok())
        .collect();
    assert_eq!(numbers.len(), 3, "summary line {line:?}");
    OfficialCounts {
        marked: numbers[0],
        blobs: numbers[1],
        manifests: numbers[2],
    }
}

/// What one pull of everything verified.
#[derive(Debug, Default)]
struct Pulled {
    tags: usize,
    manifests: usize,
    blobs: usize,
    media_types: BTreeSet<String>,
}

/// Pulls every tag (`repo → tag → digest` of its `current/link`, or `None` when not known) through
/// the registry's API, accepting all four manifest types: each manifest must hash to the digest
/// its reference names, children of lists and indexes are pulled by digest, and every config and
/// layer blob must hash to its digest and have its descriptor's size. Panics listing failures.
fn pull_everything(client: &Client, tags: &BTreeMap<String, BTreeMap<String, Option<String>>>) {
    let mut pulled = Pulled::default();
    let mut failures = Vec::new();
    let mut seen: HashSet<(String, String)> = HashSet::new();
    for (repo, repo_tags) in tags {
        for (tag, expected) in repo_tags {
            pulled.tags += 1;
            let what = format!("{repo}:{tag}");
            let Some(manifest) = pull_manifest(
                client,
                repo,
                tag,
                expected.as_deref(),
                None,
                &what,
                &mut failures,
            ) else {
                continue;
            };
            pulled.manifests += 1;
            pulled
                .media_types
                .insert(manifest["mediaType"].as_str().unwrap_or("").to_owned());
            let images = match manifest["manifests"].as_array() {
                Some(children) => {
                    let mut images = Vec::new();
                    for child in children {
                        let digest = child["digest"].as_str().unwrap_or_default().to_owned();
                        let size = child["size"].as_u64();
                        let what = format!("{repo}:{tag} child {digest}");
                        if let Some(image) = pull_manifest(
                            client,
                            repo,
                            &digest,
                            Some(&digest),
                            size,
                            &what,
                            &mut failures,
                        ) {
                            pulled.manifests += 1;
                            pulled
                                .media_types
                                .insert(image["mediaType"].as_str().unwrap_or("").to_owned());
                            images.push(image);
                        }
                    }
                    images
                }
                None => vec![manifest],
            };
            for image in images {
                let descriptors = std::iter::once(&image["config"])
                    .chain(image["layers"].as_array().into_iter().flatten());
                for descriptor in descriptors {
                    let digest = descriptor["digest"].as_str().unwrap_or_default().to_owned();
                    if !seen.insert((repo.clone(), digest.clone())) {
                        continue;
                    }
                    pulled.blobs += 1;
                    match client.fetch_blob(repo, &digest) {
                        Ok(body) => {
                            if digest_of(&body) != digest {
                                failures.push(format!(
                                    "{what}: blob {digest} hashes to {}",
                                    digest_of(&body)
                                ));
                            }
                            if descriptor["size"].as_u64() != Some(body.len() as u64) {
                                failures.push(format!(
                                    "{what}: blob {digest} has {} bytes, descriptor says {}",
                                    body.len(),
                                    descriptor["size"]
                                ));
                            }
                        }
                        Err(e) => failures.push(format!("{what}: {e}")),
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} pull failures:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
    eprintln!("pulled {pulled:?}");
}

/// GETs a manifest by tag or digest and checks its digest (and size): the parsed document.
fn pull_manifest(
    client: &Client,
    repo: &str,
    reference: &str,
    expected: Option<&str>,
    size: Option<u64>,
    what: &str,
    failures: &mut Vec<String>,
) -> Option<serde_json::Value> {
    let response = client.get_manifest(repo, reference);
    if response.status != 200 {
        failures.push(format!(
            "GET manifest {what}: HTTP {} {}",
            response.status,
            String::from_utf8_lossy(&response.body).trim()
        ));
        return None;
    }
    let actual = digest_of(&response.body);
    if response.digest.as_deref() != Some(actual.as_str()) {
        failures.push(format!(
            "GET manifest {what}: Docker-Content-Digest {:?}, body hashes to {actual}",
            response.digest
        ));
    }
    if let Some(expected) = expected
        && expected != actual
    {
        failures.push(format!(
            "GET manifest {what}: body hashes to {actual}, expected {expected}"
        ));
    }
    if let Some(size) = size
        && size != response.body.len() as u64
    {
        failures.push(format!(
            "GET manifest {what}: {} bytes, descriptor says {size}",
            response.body.len()
        ));
    }
    let document: serde_json::Value = match serde_json::from_slice(&response.body) {
        Ok(document) => document,
        Err(e) => {
            failures.push(format!("GET manifest {what}: not JSON: {e}"));
            return None;
        }
    };
    let media_type = document["mediaType"].as_str().unwrap_or_default();
    if media_type.is_empty()
        || !MANIFEST_ACCEPT.contains(media_type)
        || response.media_type.as_deref() != Some(media_type)
    {
        failures.push(format!(
            "GET manifest {what}: Content-Type {:?}, mediaType {media_type:?}",
            response.media_type
        ));
    }
    Some(document)
}

/// Every tag of a filesystem registry, from its `current/link` files.
fn fs_tags(v2: &Path) -> BTreeMap<String, BTreeMap<String, Option<String>>> {
    storage_tags(v2)
        .into_iter()
        .map(|(repo, tags)| (repo, tags.into_iter().map(|(t, d)| (t, Some(d))).collect()))
        .collect()
}

fn total_tags(tags: &BTreeMap<String, BTreeMap<String, Option<String>>>) -> u64 {
    tags.values().map(|t| t.len() as u64).sum()
}

/// The options that switch every feature on, at a size that keeps the tests fast.
const SMALL: [&str; 12] = [
    "--blobs",
    "400",
    "--repos",
    "4",
    "--garbage",
    "0.2",
    "--untagged",
    "0.3",
    "--multiarch",
    "0.3",
    "--seed",
    "7",
];

#[test]
fn filesystem_tree_is_accepted_by_the_official_collector_the_registry_and_regsweep() {
    let dir = tempfile::tempdir().expect("temp dir");
    let storage = dir.path().join("storage");
    let out = storage.to_string_lossy().into_owned();
    let truth = synth(&[&["--out", out.as_str()][..], &SMALL[..]].concat());
    eprintln!("ground truth: {}", truth.to_json());
    // Every feature is present.
    assert!(
        truth.garbage_blobs > 0 && truth.manifests_untagged > 0,
        "{truth:?}"
    );
    assert!(
        truth.garbage_blobs_untagged > truth.garbage_blobs,
        "{truth:?}"
    );
    assert_eq!(truth.repositories, 4);

    // The tree itself, looked at directly.
    let v2 = storage.join("docker/registry/v2");
    assert_eq!(count_files(&v2), truth.objects, "objects");
    let blobs = storage_blobs(&v2);
    assert_eq!(blobs.len() as u64, truth.blobs, "blobs");
    let links: u64 = storage_layer_links(&v2)
        .values()
        .map(|l| l.len() as u64)
        .sum();
    assert_eq!(links, truth.layer_links, "_layers links");
    assert_eq!(repository_dirs(&v2).len() as u64, truth.repositories);
    let tags = fs_tags(&v2);
    assert_eq!(total_tags(&tags), truth.tags, "tags");
    let mut bytes = 0;
    for digest in &blobs {
        let hex = &digest["sha256:".len()..];
        let data =
            fs::read(v2.join(format!("blobs/sha256/{}/{hex}/data", &hex[..2]))).expect("blob");
        assert_eq!(&digest_of(&data), digest, "blob content");
        bytes += data.len() as u64;
    }
    assert_eq!(bytes, truth.bytes, "bytes");
    // Backdated by the default 2 days.
    let link = v2.join("repositories/team-0/app-0/_manifests/tags/latest/current/link");
    let age = fs::metadata(&link)
        .and_then(|m| m.modified())
        .expect("mtime")
        .elapsed()
        .expect("age");
    assert!(age.as_secs() > 47 * 3600, "mtime only {age:?} ago");

    // The official collector, on the config the writer wrote.
    let config = storage.join("config.yml");
    let official = official_dry_run(&config, false);
    assert_eq!(
        official,
        OfficialCounts {
            marked: truth.blobs - truth.garbage_blobs,
            blobs: truth.garbage_blobs,
            manifests: 0
        },
        "official collector without -m vs {truth:?}"
    );
    // With -m, 2.8 also deletes the children of multi-arch images (distribution #3004): at least
    // the untagged manifests, more when there are lists.
    let official_m = official_dry_run(&config, true);
    eprintln!("official collector with -m: {official_m:?}");
    assert!(
        official_m.manifests >= truth.manifests_untagged,
        "{official_m:?}"
    );
    assert!(
        official_m.blobs >= truth.garbage_blobs_untagged,
        "{official_m:?}"
    );

    // The real registry serves every tag.
    let mut registry = Registry::start(dir.path());
    let client = registry.client();
    for repo in tags.keys() {
        let (status, listed) = client.tags(repo);
        assert_eq!(status, 200, "tags of {repo}");
        assert_eq!(listed.len(), tags[repo].len(), "tags of {repo}");
    }
    pull_everything(&client, &tags);
    registry.stop();

    // regsweep: the dry run with -m plans exactly the blobs the truth says.
    let config = config.to_string_lossy().into_owned();
    let (dry, run) = gc(&config, &["--dry-run", "-m"]);
    assert_eq!(field_u64(&dry, "blobs_total", &run), truth.blobs);
    assert_eq!(field_u64(&dry, "tags", &run), truth.tags);
    assert_eq!(field_u64(&dry, "manifests", &run), truth.manifests);
    assert_eq!(field_u64(&dry, "repositories", &run), truth.repositories);
    assert_eq!(
        field_u64(&dry, "blobs_deleted", &run),
        truth.garbage_blobs_untagged,
        "{}",
        run.stdout
    );
    assert_eq!(
        field_u64(&dry, "manifests_deleted", &run),
        truth.manifests_untagged
    );
    assert_eq!(
        field_u64(&dry, "unknown_objects", &run),
        0,
        "{}",
        run.stdout
    );

    // Without -m: exactly the orphans go, and every tag still pulls.
    let (summary, run) = gc(&config, &[]);
    assert_eq!(
        field_u64(&summary, "blobs_deleted", &run),
        truth.garbage_blobs,
        "{}",
        run.stdout
    );
    assert_eq!(field_u64(&summary, "manifests_deleted", &run), 0);
    assert_eq!(field_u64(&summary, "errors", &run), 0);
    assert_eq!(
        storage_blobs(&v2).len() as u64,
        truth.blobs - truth.garbage_blobs
    );
    registry.restart();
    pull_everything(&client, &tags);
    registry.stop();

    // With -m: what only untagged manifests referenced goes too, and every tag still pulls.
    let (summary, run) = gc(&config, &["-m"]);
    assert_eq!(
        field_u64(&summary, "blobs_deleted", &run),
        truth.garbage_blobs_untagged - truth.garbage_blobs,
        "{}",
        run.stdout
    );
    assert_eq!(
        field_u64(&summary, "manifests_deleted", &run),
        truth.manifests_untagged
    );
    assert_eq!(field_u64(&summary, "errors", &run), 0);
    assert_eq!(
        storage_blobs(&v2).len() as u64,
        truth.blobs - truth.garbage_blobs_untagged
    );
    registry.restart();
    pull_everything(&client, &tags);
    registry.stop();
    // Nothing left to collect.
    let (again, run) = gc(&config, &["-m", "--dry-run"]);
    assert_eq!(
        field_u64(&again, "blobs_deleted", &run),
        0,
        "{}",
        run.stdout
    );
}

#[test]
fn the_same_seed_writes_the_same_tree_and_another_seed_another() {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = |name: &str, seed: &str| {
        let out = dir.path().join(name);
        let args = [
            "--out",
            &out.to_string_lossy(),
            "--blobs",
            "300",
            "--seed",
            seed,
            "--multiarch",
            "0.5",
        ]
        .map(str::to_owned);
        let truth = synth::run_cli(args).expect("synth");
        (truth, tree_snapshot(&out.join("docker")))
    };
    let (a, tree_a) = run("a", "3");
    let (b, tree_b) = run("b", "3");
    let (c, tree_c) = run("c", "4");
    assert_eq!(a.to_json()["objects"], b.to_json()["objects"]);
    assert_eq!(a.garbage_blobs_untagged, b.garbage_blobs_untagged);
    assert!(tree_a == tree_b, "same seed, different trees");
    assert!(tree_a != tree_c, "different seeds, same tree");
    assert_eq!(
        c.repositories, 1,
        "300 blobs make one repository by default"
    );
    // Refusals: an existing tree, fractions out of range.
    let out = dir.path().join("a").to_string_lossy().into_owned();
    assert!(
        synth::run_cli(["--out", out.as_str()]).is_err(),
        "overwrote an existing tree"
    );
    let fresh = dir.path().join("d").to_string_lossy().into_owned();
    assert!(synth::run_cli(["--out", fresh.as_str(), "--garbage", "1.5"]).is_err());
}

#[test]
fn s3_tree_is_listed_and_collected_as_its_ground_truth_says_and_the_registry_serves_it() {
    let moto = MotoServer::start();
    // The writer creates the bucket itself; the root is the one the harness's S3 registry uses.
    let out = format!("s3://{BUCKET}/registry");
    let endpoint = moto.endpoint();
    let args = [
        "--out",
        out.as_str(),
        "--endpoint",
        endpoint.as_str(),
        "--blobs",
        "300",
        "--repos",
        "3",
        "--untagged",
        "0.3",
        "--multiarch",
        "0.3",
        "--seed",
        "11",
        "--concurrency",
        "16",
    ];
    let truth = synth(&args);
    eprintln!("ground truth: {}", truth.to_json());
    assert!(
        truth.manifests_untagged > 0 && truth.garbage_blobs > 0,
        "{truth:?}"
    );

    let keys = moto.list_keys(BUCKET, "");
    assert_eq!(
        keys.len() as u64,
        truth.objects,
        "objects listed in the bucket"
    );
    assert!(
        keys.iter()
            .all(|k| k.starts_with("registry/docker/registry/v2/")),
        "a key outside the root"
    );
    let blob_keys = keys
        .iter()
        .filter(|k| k.ends_with("/data") && k.contains("/blobs/sha256/"))
        .count();
    assert_eq!(blob_keys as u64, truth.blobs);
    assert_eq!(
        truth.to_json()["min_requests"]["list_pages"],
        truth.objects.div_ceil(1000)
    );

    // regsweep, pointed at the bucket by a registry config.
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("regsweep.yml");
    fs::write(
        &config,
        format!(
            "version: 0.1\nstorage:\n  s3:\n    accesskey: test\n    secretkey: test\n    region: us-east-1\n    \
             regionendpoint: \"{endpoint}\"\n    bucket: {BUCKET}\n    rootdirectory: /registry\n    secure: false\n"
        ),
    )
    .expect("write config");
    let config = config.to_string_lossy().into_owned();
    let (dry, run) = gc(&config, &["--dry-run"]);
    assert_eq!(field_u64(&dry, "blobs_total", &run), truth.blobs);
    assert_eq!(field_u64(&dry, "tags", &run), truth.tags);
    assert_eq!(field_u64(&dry, "manifests", &run), truth.manifests);
    assert_eq!(
        field_u64(&dry, "blobs_deleted", &run),
        truth.garbage_blobs,
        "{}",
        run.stdout
    );
    assert_eq!(field_u64(&dry, "unknown_objects", &run), 0);
    let (dry_m, run) = gc(&config, &["--dry-run", "-m"]);
    assert_eq!(
        field_u64(&dry_m, "blobs_deleted", &run),
        truth.garbage_blobs_untagged,
        "{}",
        run.stdout
    );
    assert_eq!(
        field_u64(&dry_m, "manifests_deleted", &run),
        truth.manifests_untagged
    );

    // The real registry's S3 driver serves every tag (found by key, digests checked on the way).
    let prefix = "registry/docker/registry/v2/repositories/";
    let mut tags: BTreeMap<String, BTreeMap<String, Option<String>>> = BTreeMap::new();
    for key in &keys {
        let Some(rest) = key
            .strip_prefix(prefix)
            .and_then(|k| k.strip_suffix("/current/link"))
        else {
            continue;
        };
        let (repo, tag) = rest.split_once("/_manifests/tags/").expect("tag key");
        tags.entry(repo.to_owned())
            .or_default()
            .insert(tag.to_owned(), None);
    }
    assert_eq!(total_tags(&tags), truth.tags);
    let registry_dir = tempfile::tempdir().expect("temp dir");
    let registry = Registry::start_s3(registry_dir.path(), &endpoint, BUCKET);
    pull_everything(&registry.client(), &tags);
}
