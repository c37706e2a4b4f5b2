//! End-to-end test of `regsweep report` against storage written by the real registry
//! (`docker-registry` 2.8): the test pushes repositories that share base layers, an untagged
//! manifest, a referrer, an image deleted through the API, an orphan blob, a stale and a fresh
//! upload, and adds a dangling link; then it computes every number of the report from what it
//! pushed (and, for what the registry alone knows — upload files, blob times — from the files on
//! disk), never from regsweep's code, and compares them exactly. The report must change nothing.

pub mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use support::content::ContentGen;
use support::model::Model;
use support::run::RunOutput;
use support::workload::{Format, Ref, STALE_UPLOAD_HOURS, Workload, backdate_tree};
use support::{Registry, run_regsweep, tree_snapshot};

fn regsweep(args: &[&str]) -> RunOutput {
    run_regsweep(Path::new(env!("CARGO_BIN_EXE_regsweep")), args)
}

const APP: &str = "shop/app";
const WEB: &str = "shop/web";
const CI: &str = "tools/ci";

/// A registry built through its HTTP API, the model of what was pushed, and the digest a
/// dangling `_layers` link of `shop/web` names.
struct Built {
    registry: Registry,
    model: Model,
    dangling: String,
    _dir: tempfile::TempDir,
}

fn build() -> Built {
    let dir = tempfile::Builder::new()
        .prefix("regsweep-e2e-report-")
        .tempdir()
        .expect("create a temporary directory");
    let registry = Registry::start(dir.path());
    let client = registry.client();
    let v2 = registry.v2_root();
    let mut w = Workload::new(&client, Some(&v2), "regsweep report workload v1");

    // Two repositories over the same two base layers (mounted, so stored once).
    let base = w.layers(APP, 2);
    let mut layers = base.clone();
    layers.extend(w.layers(APP, 2));
    let v1 = w.image(
        APP,
        Format::Docker,
        &layers,
        "amd64",
        Ref::Tag("v1"),
        "app v1",
    );
    w.push_again(APP, &v1, Ref::Tag("stable"));
    w.referrer(APP, &v1, Ref::Digest, "signature of app v1");
    // Untagged: pushed by digest, one layer of its own and a base layer.
    let mut layers = vec![base[0].clone()];
    layers.extend(w.layers(APP, 1));
    w.image(
        APP,
        Format::Oci,
        &layers,
        "amd64",
        Ref::Digest,
        "app untagged",
    );
    w.abandoned_upload(APP, STALE_UPLOAD_HOURS);

    for digest in &base {
        w.mount(WEB, APP, digest);
    }
    let mut layers = base.clone();
    layers.extend(w.layers(WEB, 1));
    w.image(
        WEB,
        Format::Oci,
        &layers,
        "arm64",
        Ref::Tag("latest"),
        "web",
    );
    w.orphan(WEB);
    w.abandoned_upload(WEB, 0);

    // An image deleted through the API: its manifest stays in storage, linked nowhere.
    let layers = w.layers(CI, 2);
    let old = w.image(
        CI,
        Format::Docker,
        &layers,
        "amd64",
        Ref::Tag("old"),
        "ci old",
    );
    w.delete(CI, &old);
    let model = w.model;

    // A `_layers` link naming a blob that is not in storage.
    let dangling = support::content::digest_of(&ContentGen::new("dangling").next_bytes(10, 20));
    let hex = dangling.trim_start_matches("sha256:");
    let link = v2.join(format!("repositories/{WEB}/_layers/sha256/{hex}/link"));
    fs::create_dir_all(link.parent().unwrap()).unwrap();
    fs::write(&link, &dangling).unwrap();

    // The base layers were written a hundred days ago: the growth spans several months.
    let long_ago = SystemTime::now() - Duration::from_secs(100 * 24 * 3600);
    for digest in &base {
        backdate_tree(&blob_dir(&v2, digest), long_ago);
    }
    Built {
        registry,
        model,
        dangling,
        _dir: dir,
    }
}

fn blob_dir(v2: &Path, digest: &str) -> std::path::PathBuf {
    let hex = digest.trim_start_matches("sha256:");
    v2.join(format!("blobs/sha256/{}/{hex}", &hex[..2]))
}

/// Sizes of every blob the model knows: configs, layers, orphans and manifests.
fn sizes(model: &Model) -> BTreeMap<String, u64> {
    let mut sizes = model.blobs.clone();
    sizes.extend(model.manifests.iter().map(|(d, m)| (d.clone(), m.size)));
    sizes
}

/// Blobs a manifest references, itself and its children included.
fn closure(model: &Model, digest: &str, out: &mut BTreeSet<String>) {
    if !out.insert(digest.to_owned()) {
        return;
    }
    let info = &model.manifests[digest];
    out.extend(info.config.iter().cloned());
    out.extend(info.layers.iter().cloned());
    for child in &info.children {
        closure(model, child, out);
    }
}

/// Bytes of the files of each upload directory, by repository and stale or not.
fn upload_bytes(v2: &Path, model: &Model) -> Vec<(String, bool, u64)> {
    fn files(dir: &Path) -> u64 {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| {
                if p.is_dir() {
                    files(&p)
                } else {
                    p.metadata().unwrap().len()
                }
            })
            .sum()
    }
    model
        .uploads
        .iter()
        .map(|u| {
            let dir = v2.join(format!("repositories/{}/_uploads/{}", u.repo, u.uuid));
            (u.repo.clone(), u.backdated_hours >= 168, files(&dir))
        })
        .collect()
}

/// `YYYY-MM` of a file's modification time (UTC).
fn month_of(path: &Path) -> String {
    let modified = path.metadata().unwrap().modified().unwrap();
    humantime::format_rfc3339_seconds(modified).to_string()[..7].to_owned()
}

fn next_month(month: &str) -> String {
    let (year, month) = month.split_once('-').unwrap();
    let (year, month): (u32, u32) = (year.parse().unwrap(), month.parse().unwrap());
    if month == 12 {
        format!("{:04}-01", year + 1)
    } else {
        format!("{year:04}-{:02}", month + 1)
    }
}

/// The report every definition of the README gives for what `built` pushed.
fn expected(built: &Built) -> Value {
    let model = &built.model;
    let v2 = built.registry.v2_root();
    let sizes = sizes(model);
    let bytes = |blobs: &BTreeSet<String>| blobs.iter().map(|d| sizes[d]).sum::<u64>();
    let present = model.present_revisions();
    let tagged = model.expected_revisions(true);

    // Referenced: the closure of every manifest present in the repository.
    let referenced: BTreeMap<&String, BTreeSet<String>> = present
        .iter()
        .map(|(repo, digests)| {
            let mut blobs = BTreeSet::new();
            for digest in digests {
                closure(model, digest, &mut blobs);
            }
            (repo, blobs)
        })
        .collect();
    let holders = |digest: &String| referenced.values().filter(|b| b.contains(digest)).count();
    // Linked: `_layers` links (uploads, mounts) and revision links still there.
    let linked = |repo: &String| -> BTreeSet<String> {
        let mut links = model.blob_links.get(repo).cloned().unwrap_or_default();
        links.extend(present[repo].iter().cloned());
        links
    };
    let linkers = |digest: &String| -> Vec<&String> {
        model
            .repos
            .iter()
            .filter(|r| linked(r).contains(digest))
            .collect()
    };
    let uploads = upload_bytes(&v2, model);
    let stale_upload_bytes = |repo: Option<&String>| -> u64 {
        uploads
            .iter()
            .filter(|(r, stale, _)| *stale && repo.is_none_or(|repo| repo == r))
            .map(|(_, _, b)| b)
            .sum()
    };
    let orphans = model.expected_garbage_blobs(false);
    let garbage_m = model.expected_garbage_blobs(true);
    let exclusive = |garbage: &BTreeSet<String>, repo: &String| -> u64 {
        garbage
            .iter()
            .filter(|d| linkers(d) == [repo])
            .map(|d| sizes[d])
            .sum()
    };
    let unattributed = |garbage: &BTreeSet<String>| -> u64 {
        garbage
            .iter()
            .filter(|d| linkers(d).len() != 1)
            .map(|d| sizes[d])
            .sum()
    };

    let repositories: Vec<Value> = model
        .repos
        .iter()
        .map(|repo| {
            let blobs = &referenced[repo];
            let unique: BTreeSet<String> =
                blobs.iter().filter(|d| holders(d) == 1).cloned().collect();
            json!({
                "name": repo,
                "tags": model.tags.get(repo).map_or(0, BTreeMap::len),
                "manifests": present[repo].len(),
                "untagged_manifests": present[repo].len() - tagged[repo].len(),
                "bytes_referenced": bytes(blobs),
                "bytes_unique": bytes(&unique),
                "bytes_shared": bytes(blobs) - bytes(&unique),
                "reclaimable_bytes": exclusive(&orphans, repo) + stale_upload_bytes(Some(repo)),
                "reclaimable_bytes_delete_untagged":
                    exclusive(&garbage_m, repo) + stale_upload_bytes(Some(repo)),
            })
        })
        .collect();

    let all = model.all_blobs();
    let blob_bytes = bytes(&all);
    let all_upload_bytes: u64 = uploads.iter().map(|(_, _, b)| b).sum();
    let stale = stale_upload_bytes(None);
    let untagged_blobs: BTreeSet<String> = garbage_m.difference(&orphans).cloned().collect();
    let untagged_count = Model::count(&present) - Model::count(&tagged);

    // Growth: referenced blobs by the month of their file, cumulative, every month in between.
    let mut by_month: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let everything: BTreeSet<&String> = referenced.values().flatten().collect();
    for digest in everything {
        let month = month_of(&blob_dir(&v2, digest).join("data"));
        let entry = by_month.entry(month).or_default();
        if holders(digest) == 1 {
            entry.0 += sizes[digest];
        } else {
            entry.1 += sizes[digest];
        }
    }
    let mut growth = Vec::new();
    let (mut month, last) = (
        by_month.keys().next().unwrap().clone(),
        by_month.keys().next_back().unwrap().clone(),
    );
    let (mut unique, mut shared) = (0, 0);
    loop {
        let (u, s) = by_month.get(&month).copied().unwrap_or_default();
        unique += u;
        shared += s;
        growth.push(json!({"month": month, "unique_bytes": unique, "shared_bytes": shared}));
        if month == last {
            break;
        }
        month = next_month(&month);
    }

    json!({
        "registry": {
            "repositories": model.repos.len(),
            "tags": model.tags.values().map(BTreeMap::len).sum::<usize>(),
            "manifests": Model::count(&present),
            "untagged_manifests": untagged_count,
            "blobs": all.len(),
            "blob_bytes": blob_bytes,
            "upload_bytes": all_upload_bytes,
            "stored_bytes": blob_bytes + all_upload_bytes,
            "live_bytes": bytes(&model.expected_live_blobs(false)),
            "reclaimable_bytes": bytes(&orphans) + stale,
            "reclaimable_bytes_delete_untagged": bytes(&garbage_m) + stale,
            "unattributed_reclaimable_bytes": unattributed(&orphans),
            "unattributed_reclaimable_bytes_delete_untagged": unattributed(&garbage_m),
        },
        "reclaimable_by_cause": {
            "untagged_manifests": {
                "count": untagged_count,
                "blobs": untagged_blobs.len(),
                "bytes": bytes(&untagged_blobs),
            },
            "orphan_blobs": {"count": orphans.len(), "blobs": orphans.len(), "bytes": bytes(&orphans)},
            "stale_uploads": {
                "count": uploads.iter().filter(|u| u.1).count(),
                "blobs": 0,
                "bytes": stale,
            },
            "dangling_links": {"count": 1, "blobs": 0, "bytes": 0},
        },
        "repositories": repositories,
        "growth": growth,
    })
}

fn report(built: &Built, extra: &[&str]) -> RunOutput {
    let config = built.registry.config_arg();
    let mut args = vec!["report", config.as_str(), "--min-age", "0s"];
    args.extend_from_slice(extra);
    let run = regsweep(&args);
    run.assert_success();
    run
}

#[test]
fn report_numbers_equal_the_ground_truth_and_nothing_changes() {
    let mut built = build();
    built.registry.stop();
    let root = built.registry.storage_root();
    let before = tree_snapshot(&root);

    let run = report(&built, &["--format", "json", "--top", "3"]);
    let actual = run.json();
    let expected = expected(&built);
    for field in ["registry", "reclaimable_by_cause", "repositories", "growth"] {
        assert_eq!(
            actual[field],
            expected[field],
            "report field `{field}`\n--- model ---\n{}\n--- run ---\n{}",
            built.model.describe(),
            run.describe()
        );
    }
    assert!(
        expected["growth"].as_array().unwrap().len() >= 4,
        "the growth spans the hundred days: {}",
        expected["growth"]
    );
    assert_eq!(
        actual["reclaimable_by_cause"]["dangling_links"]["count"], 1,
        "the dangling link to {}",
        built.dangling
    );

    // The largest lists: as many as asked, largest first, each repository's own numbers.
    let largest = actual["largest_repositories"].as_array().unwrap();
    assert_eq!(largest.len(), 3);
    let mut repositories: Vec<&Value> = actual["repositories"].as_array().unwrap().iter().collect();
    repositories.sort_by_key(|r| std::cmp::Reverse(r["bytes_referenced"].as_u64().unwrap()));
    for (top, repo) in largest.iter().zip(&repositories) {
        assert_eq!(top["name"], repo["name"]);
        assert_eq!(top["bytes_referenced"], repo["bytes_referenced"]);
    }
    let sizes = sizes(&built.model);
    let mut all: Vec<u64> = sizes.values().copied().collect();
    all.sort_unstable_by(|a, b| b.cmp(a));
    let blobs: Vec<u64> = actual["largest_blobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| sizes[b["digest"].as_str().unwrap()])
        .collect();
    assert_eq!(blobs, all[..3]);

    // Costs at the default prices: S3 Standard.
    let cost = &actual["cost"];
    assert_eq!(cost["price_per_gib_month"], 0.023);
    let stored = expected["registry"]["stored_bytes"].as_u64().unwrap() as f64;
    let per_month = cost["stored_per_month"].as_f64().unwrap();
    assert!((per_month - stored / (1u64 << 30) as f64 * 0.023).abs() < 1e-12);
    let requests = &cost["scan_requests"];
    assert!(requests["list"].as_u64().unwrap() > 0, "{}", run.describe());
    assert_eq!(requests["delete"], 0);

    // CSV: the same rows as the JSON, header first.
    let csv = report(&built, &["--format", "csv"]).stdout;
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some(
            "repository,tags,manifests,untagged_manifests,bytes_referenced,bytes_unique,\
             bytes_shared,reclaimable_bytes,reclaimable_bytes_delete_untagged"
        )
    );
    let rows: Vec<String> = lines.map(str::to_owned).collect();
    let from_json: Vec<String> = expected["repositories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let fields = [
                "tags",
                "manifests",
                "untagged_manifests",
                "bytes_referenced",
                "bytes_unique",
                "bytes_shared",
                "reclaimable_bytes",
                "reclaimable_bytes_delete_untagged",
            ];
            let numbers: Vec<String> = fields.iter().map(|f| r[f].to_string()).collect();
            format!("{},{}", r["name"].as_str().unwrap(), numbers.join(","))
        })
        .collect();
    assert_eq!(rows, from_json);

    // Text, the default: a table with every repository.
    let text = report(&built, &[]).stdout;
    for repo in &built.model.repos {
        assert!(
            text.lines().any(|l| l.starts_with(repo.as_str())),
            "{repo} missing:\n{text}"
        );
    }

    // A report reads only: no lock, no deletion, not a byte changed.
    let after = tree_snapshot(&root);
    assert_eq!(
        support::storage::snapshot_diff(&before, &after),
        Vec::<String>::new(),
        "the report changed the storage"
    );
    assert!(!root.join("_regsweep").exists(), "the report left objects");

    // And a collection then frees what the report said it would.
    let config = built.registry.config_arg();
    let gc = regsweep(&["gc", &config, "-m", "--min-age", "0s", "--format", "json"]);
    gc.assert_success();
    let summary = gc.json();
    let freed = summary["bytes_deleted"].as_u64().unwrap()
        + summary["upload_bytes_deleted"].as_u64().unwrap();
    assert_eq!(
        json!(freed),
        actual["registry"]["reclaimable_bytes_delete_untagged"]
    );
}

/// On S3 the report's scan costs what the server saw: its request counts are the server's, and the
/// scan's cost is theirs at the default prices. The numbers are those of the model.
#[test]
fn s3_report_prices_the_requests_the_server_saw() {
    use support::s3::MotoServer;
    use support::workload::Fixture;

    let moto = MotoServer::start();
    moto.create_bucket("registry");
    let mut f = Fixture::build_s3(&moto, "registry");
    f.registry.stop();
    let config = f.registry.config_arg();

    let mark = moto.log_mark();
    let run = regsweep(&["report", &config, "--min-age", "0s", "--format", "json"]);
    run.assert_success();
    let seen = moto.requests_since(mark);
    let actual = run.json();
    let requests = &actual["cost"]["scan_requests"];
    for kind in ["list", "get", "head", "delete"] {
        assert_eq!(
            requests[kind].as_u64(),
            Some(seen.get(kind).copied().unwrap_or(0)),
            "scan_requests.{kind}: the server saw {seen:?}\n{}",
            run.describe()
        );
    }
    assert_eq!(seen.get("delete").copied().unwrap_or(0), 0, "{seen:?}");
    let count = |kind: &str| seen.get(kind).copied().unwrap_or(0) as f64;
    let cost = (count("list") + requests["other"].as_u64().unwrap() as f64) / 1000.0 * 0.005
        + (count("get") + count("head")) / 1000.0 * 0.0004;
    let reported = actual["cost"]["scan_cost"].as_f64().unwrap();
    assert!((reported - cost).abs() < 1e-12, "{reported} != {cost}");

    let model = &f.model;
    let sizes = sizes(model);
    let bytes = |blobs: &BTreeSet<String>| blobs.iter().map(|d| sizes[d]).sum::<u64>();
    let orphans = model.expected_garbage_blobs(false);
    let garbage_m = model.expected_garbage_blobs(true);
    let untagged: BTreeSet<String> = garbage_m.difference(&orphans).cloned().collect();
    let registry = &actual["registry"];
    let causes = &actual["reclaimable_by_cause"];
    for (what, value, expected) in [
        ("blobs", &registry["blobs"], model.all_blobs().len() as u64),
        ("blob_bytes", &registry["blob_bytes"], sizes.values().sum()),
        (
            "live_bytes",
            &registry["live_bytes"],
            bytes(&model.expected_live_blobs(false)),
        ),
        (
            "orphan bytes",
            &causes["orphan_blobs"]["bytes"],
            bytes(&orphans),
        ),
        (
            "untagged bytes",
            &causes["untagged_manifests"]["bytes"],
            bytes(&untagged),
        ),
        // Every upload on S3 is fresh: nothing stale.
        ("stale uploads", &causes["stale_uploads"]["count"], 0),
    ] {
        assert_eq!(value.as_u64(), Some(expected), "{what}\n{}", run.describe());
    }
}
