//! End-to-end tests of `regsweep gc` on object storage: S3 (a real S3 server, `moto_server`, behind
//! the real registry's S3 driver) and Azure Blob (Azurite, loaded with a tree the real registry
//! wrote). After each collection the registry is restarted and every surviving tag is pulled.

pub mod support;

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use support::Fixture;
use support::azurite::Azurite;
use support::fault_proxy::FaultProxy;
use support::model::Model;
use support::run::{RunOutput, field_u64};
use support::s3::MotoServer;
use support::storage::assert_exactly_the_live_set;
use support::{run_regsweep, verify_gone, verify_pulls};

const BUCKET: &str = "registry";
/// The registry's `rootdirectory` in the S3 fixture.
const S3_ROOT: &str = "registry";

fn regsweep(args: &[&str]) -> RunOutput {
    run_regsweep(Path::new(env!("CARGO_BIN_EXE_regsweep")), args)
}

fn all_uploads(model: &Model) -> BTreeSet<(String, String)> {
    model
        .uploads
        .iter()
        .map(|u| (u.repo.clone(), u.uuid.clone()))
        .collect()
}

/// The bucket holds exactly what the model keeps with `--delete-untagged`, and every upload.
fn assert_bucket_holds_the_live_set(moto: &MotoServer, model: &Model) {
    let copy = tempfile::tempdir().unwrap();
    moto.download(BUCKET, &format!("{S3_ROOT}/"), copy.path());
    let v2 = copy.path().join("docker/registry/v2");
    assert_exactly_the_live_set(&v2, model, true, &all_uploads(model));
}

/// A registry on moto with the standard workload pushed, stopped; and its config file.
fn stopped_s3_registry() -> (MotoServer, Fixture, String) {
    let moto = MotoServer::start();
    moto.create_bucket(BUCKET);
    let mut f = Fixture::build_s3(&moto, BUCKET);
    f.registry.stop();
    let config = f.registry.config_arg();
    (moto, f, config)
}

/// The registry's config with its S3 endpoint replaced (to go through a proxy).
fn config_with_endpoint(f: &Fixture, moto: &MotoServer, endpoint: &str) -> String {
    let text = fs::read_to_string(f.registry.config_path()).unwrap();
    assert!(text.contains(&moto.endpoint()), "{text}");
    let path = f.dir().join("through-proxy.yml");
    fs::write(&path, text.replace(&moto.endpoint(), endpoint)).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn s3_collection_through_the_registry_config_keeps_exactly_the_live_set() {
    let (moto, mut f, config) = stopped_s3_registry();

    // A dry run: the summary counts exactly the requests the server saw.
    let mark = moto.log_mark();
    let dry = regsweep(&[
        "gc",
        &config,
        "-m",
        "--min-age",
        "0s",
        "--dry-run",
        "--format",
        "json",
    ]);
    dry.assert_success();
    let seen = moto.requests_since(mark);
    let planned = dry.json();
    for kind in ["list", "get", "head", "delete"] {
        assert_eq!(
            planned["requests"][kind].as_u64(),
            Some(seen.get(kind).copied().unwrap_or(0)),
            "requests.{kind}: the server saw {seen:?}\n{}",
            dry.describe()
        );
    }
    // Only tag links and manifests are read; no `_layers` or revision link is.
    let reads = field_u64(&planned["requests"], "get", &dry);
    let tags = field_u64(&planned, "tags", &dry);
    let manifests = f.model.manifests.len() as u64;
    assert!(
        reads <= tags + manifests,
        "{reads} GETs for {tags} tags and {manifests} manifests"
    );
    assert_eq!(
        field_u64(&planned, "blobs_deleted", &dry),
        f.model.expected_garbage_blobs(true).len() as u64
    );
    // The blobs are listed in 16 key ranges (S3 starts a listing at a key), not as 256 shards:
    // on a registry this small, each range and each namespace is one page, plus seven fixed
    // requests (two listing probes, the top levels, the multipart uploads).
    let lists = field_u64(&planned["requests"], "list", &dry);
    let namespaces: BTreeSet<&str> = f
        .model
        .repos
        .iter()
        .map(|r| r.split('/').next().unwrap())
        .collect();
    let bound = 16 + namespaces.len() as u64 + 7;
    assert!(
        lists <= bound,
        "{lists} listings (at most {bound} expected)\n{}",
        dry.describe()
    );

    // The real run goes through a proxy that throttles every 4th request (503 SlowDown): retries
    // carry it through, and it deletes what the dry run planned.
    let proxy = FaultProxy::start(moto.endpoint().trim_start_matches("http://"), 4);
    let throttled = config_with_endpoint(&f, &moto, &proxy.endpoint());
    let run = regsweep(&[
        "gc",
        &throttled,
        "-m",
        "--min-age",
        "0s",
        "--format",
        "json",
    ]);
    run.assert_success();
    assert!(proxy.injected() > 0, "the proxy throttled nothing");
    let summary = run.json();
    for field in [
        "blobs_deleted",
        "bytes_deleted",
        "manifests_deleted",
        "links_deleted",
    ] {
        assert_eq!(
            summary[field],
            planned[field],
            "{field}: {}",
            run.describe()
        );
    }
    assert!(
        summary["requests"]["delete"].as_u64() < summary["links_deleted"].as_u64(),
        "deletes are not batched: {}",
        run.describe()
    );

    // Uploads on S3 cannot be backdated: all are fresh and kept.
    assert_bucket_holds_the_live_set(&moto, &f.model);

    f.registry.restart();
    verify_pulls(&f.client, &f.model).assert_ok("pull every surviving tag from S3");
    verify_gone(&f.client, &f.model, true).assert_ok("collected manifests are gone");

    // A second run deletes nothing.
    let again = regsweep(&["gc", &config, "-m", "--min-age", "0s", "--format", "json"]);
    again.assert_success();
    let summary = again.json();
    for field in [
        "blobs_deleted",
        "manifests_deleted",
        "links_deleted",
        "repositories_deleted",
    ] {
        assert_eq!(field_u64(&summary, field, &again), 0, "second run: {field}");
    }

    // Abandoned uploads: the registry's S3 driver left a multipart upload open for each; with
    // `--upload-max-age 0s` both the `_uploads` objects and those multipart uploads go.
    let mark = moto.log_mark();
    let stale = regsweep(&[
        "gc",
        &config,
        "--min-age",
        "0s",
        "--upload-max-age",
        "0s",
        "--format",
        "json",
    ]);
    stale.assert_success();
    let summary = stale.json();
    let uploads = f.model.uploads.len() as u64;
    assert_eq!(field_u64(&summary, "uploads_deleted", &stale), uploads);
    assert_eq!(
        field_u64(&summary, "multipart_uploads_aborted", &stale),
        uploads,
        "{}",
        stale.describe()
    );
    let log = fs::read_to_string(moto.log_path()).unwrap();
    let aborts = log[mark..]
        .lines()
        .filter(|l| l.contains("\"DELETE ") && l.contains("uploadId="))
        .count() as u64;
    assert_eq!(
        aborts, uploads,
        "AbortMultipartUpload requests the server saw"
    );
    let keys = moto.list_keys(BUCKET, "");
    assert!(
        !keys.iter().any(|k| k.contains("/_uploads/")),
        "upload objects left: {keys:?}"
    );
    let after = regsweep(&[
        "gc",
        &config,
        "--min-age",
        "0s",
        "--upload-max-age",
        "0s",
        "--dry-run",
        "--format",
        "json",
    ]);
    assert_eq!(
        field_u64(&after.json(), "multipart_uploads_aborted", &after),
        0
    );
}

#[test]
fn azure_collection_keeps_exactly_the_live_set_and_the_registry_serves_it() {
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
    let run = regsweep(&[
        "gc",
        config.to_str().unwrap(),
        "-m",
        "--min-age",
        "0s",
        "--format",
        "json",
    ]);
    run.assert_success();
    let summary = run.json();
    assert!(
        !run.stdout.contains(support::azurite::ACCOUNT_KEY)
            && !run.stderr.contains(support::azurite::ACCOUNT_KEY),
        "the account key leaked into the output"
    );
    assert_eq!(
        field_u64(&summary, "blobs_deleted", &run),
        f.model.expected_garbage_blobs(true).len() as u64
    );
    assert!(field_u64(&summary["requests"], "delete", &run) > 0);

    // Copy what is left back to the registry's filesystem root, then pull every surviving tag.
    let root = f.registry.storage_root();
    fs::remove_dir_all(&root).unwrap();
    fs::create_dir_all(&root).unwrap();
    azurite.download("registry", "reg/", &root);
    // Uploaded again, every upload is fresh: none is stale any more.
    assert_exactly_the_live_set(&f.v2_root(), &f.model, true, &all_uploads(&f.model));
    f.registry.restart();
    verify_pulls(&f.client, &f.model).assert_ok("pull every surviving tag after Azure");
    verify_gone(&f.client, &f.model, true).assert_ok("collected manifests are gone");
}

#[test]
fn s3_denied_deletes_are_reported_by_key_and_the_rest_goes_on() {
    let (moto, mut f, config) = stopped_s3_registry();
    let args = ["-m", "--min-age", "0s", "--format", "json"];

    let dry = regsweep(&[&["gc", config.as_str(), "--dry-run"][..], &args[..]].concat());
    dry.assert_success();
    let planned = dry.json();

    // Every request naming one orphan blob is refused: the batch of `_layers` links that holds its
    // link, so the blobs those links name must be kept.
    let orphan = f.model.orphans.iter().next().unwrap().clone();
    let hex = orphan.trim_start_matches("sha256:");
    let proxy = FaultProxy::deny(moto.endpoint().trim_start_matches("http://"), hex);
    let denied = config_with_endpoint(&f, &moto, &proxy.endpoint());
    let run = regsweep(&[&["gc", denied.as_str()][..], &args[..]].concat());
    assert_eq!(run.status.code(), Some(1), "{}", run.describe());
    assert!(proxy.injected() > 0);
    let summary = run.json();
    let messages = summary["error_messages"].to_string();
    assert!(
        messages.contains(hex),
        "no error names the denied key: {messages}"
    );
    assert!(field_u64(&summary, "errors", &run) > 0);
    // Each failed key is reported once, concisely; the phase the denial did not touch went
    // through.
    let errors = summary["error_messages"].as_array().unwrap();
    assert_eq!(errors.len() as u64, field_u64(&summary, "errors", &run));
    for error in errors {
        let error = error.as_str().unwrap();
        assert!(error.starts_with("delete docker/registry/v2/"), "{error}");
        assert!(
            error.contains("permission denied") && error.len() < 1_000,
            "{error}"
        );
    }
    assert_eq!(summary["manifests_deleted"], planned["manifests_deleted"]);
    assert!(
        field_u64(&summary, "blobs_deleted", &run) < field_u64(&planned, "blobs_deleted", &dry),
        "blobs whose links could not be deleted must be kept"
    );
    // Nothing live was lost.
    f.registry.restart();
    verify_pulls(&f.client, &f.model).assert_ok("pull every tag after denied deletes");
    f.registry.stop();

    // Without the proxy, a second run finishes the job.
    let run = regsweep(&[&["gc", config.as_str()][..], &args[..]].concat());
    run.assert_success();
    assert_bucket_holds_the_live_set(&moto, &f.model);
    f.registry.restart();
    verify_pulls(&f.client, &f.model).assert_ok("pull every tag after the second run");
}
