//! Self-tests of the object-storage parts of the harness (`tests/support/{s3,azurite}.rs`): the
//! real registry runs on moto's S3 and serves the standard workload after a restart, moto's
//! request log is counted, and a registry tree survives a round trip through Azurite unchanged.
//! No regsweep code runs here.

pub mod support;

use std::collections::BTreeMap;

use futures::{StreamExt, TryStreamExt, stream};
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;

use support::azurite::Azurite;
use support::objects::block_on;
use support::s3::{MotoServer, classify_request, count_requests, parse_access_line};
use support::storage::{Node, storage_blobs, tree_snapshot};
use support::{Fixture, verify_pulls};

const BUCKET: &str = "registry";

#[test]
fn registry_on_moto_serves_the_workload_and_requests_are_counted() {
    let moto = MotoServer::start();
    moto.create_bucket(BUCKET);
    let mut f = Fixture::build_s3(&moto, BUCKET);
    // Everything the registry's S3 driver sent is of a known kind.
    let pushed = moto.requests_since(0);
    println!("the registry pushing the workload: {pushed:?}");
    assert!(!pushed.contains_key("other"), "{pushed:?}");
    assert!(pushed["put"] > 0 && pushed["list"] > 0, "{pushed:?}");
    assert!(
        f.model.uploads.iter().all(|u| u.backdated_hours == 0),
        "uploads on S3 cannot be backdated"
    );
    f.registry.restart();
    verify_pulls(&f.client, &f.model).assert_ok("pull every tag from the registry on S3");

    // The rootdirectory is honoured: every key is under it.
    let prefix = f.registry.s3_v2_prefix();
    assert_eq!(prefix, "registry/docker/registry/v2/");
    let all = moto.list_keys(BUCKET, "");
    assert!(!all.is_empty());
    assert!(
        all.iter().all(|k| k.starts_with(&prefix)),
        "keys outside {prefix}: {:?}",
        all.iter()
            .filter(|k| !k.starts_with(&prefix))
            .collect::<Vec<_>>()
    );
    let copy = tempfile::tempdir().unwrap();
    moto.download(BUCKET, &prefix, copy.path());
    assert_eq!(storage_blobs(copy.path()), f.model.all_blobs());

    // One listing is at least one LIST request, and nothing else.
    let mark = moto.log_mark();
    let keys = moto.list_keys(BUCKET, &prefix);
    let seen = moto.requests_since(mark);
    println!("one list_keys of {} keys: {seen:?}", keys.len());
    assert!(seen["list"] >= 1, "{seen:?}");
    for kind in ["get", "head", "delete", "put", "post"] {
        assert_eq!(seen[kind], 0, "{kind}: {seen:?}");
    }

    // Every other kind, on a scratch prefix.
    let scratch = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(scratch.path().join("a/b")).unwrap();
    std::fs::write(scratch.path().join("a/b/one"), b"1").unwrap();
    std::fs::write(scratch.path().join("two"), b"2").unwrap();
    let mark = moto.log_mark();
    assert_eq!(moto.upload_tree(BUCKET, "scratch", scratch.path()), 2);
    let back = tempfile::tempdir().unwrap();
    moto.download(BUCKET, "scratch/", back.path());
    let seen = moto.requests_since(mark);
    println!("upload 2 files, download them: {seen:?}");
    assert_eq!((seen["put"], seen["get"]), (2, 2), "{seen:?}");
    assert!(seen["list"] >= 1, "{seen:?}");
    assert_eq!(std::fs::read(back.path().join("a/b/one")).unwrap(), b"1");
    assert_eq!(std::fs::read(back.path().join("two")).unwrap(), b"2");

    // A single DELETE and a DeleteObjects batch (`POST ?delete`) are one `delete` each.
    let store = moto.store(BUCKET);
    let mark = moto.log_mark();
    block_on(store.delete(&ObjectPath::from("scratch/two"))).unwrap();
    let batch = stream::iter([Ok(ObjectPath::from("scratch/a/b/one"))]).boxed();
    block_on(store.delete_stream(batch).try_collect::<Vec<_>>()).unwrap();
    let seen = moto.requests_since(mark);
    println!("one DELETE, one DeleteObjects: {seen:?}");
    assert_eq!((seen["delete"], seen["post"]), (2, 0), "{seen:?}");
    assert!(moto.list_keys(BUCKET, "scratch").is_empty());
}

#[test]
fn moto_access_log_lines_are_classified() {
    // Lines as moto 5 (werkzeug) writes them; the traceback line is not a request.
    let log = "\
127.0.0.1 - - [28/Nov/2026 22:12:55] \"PUT /bkt HTTP/1.1\" 200 -
127.0.0.1 - - [28/Nov/2026 22:12:55] \"PUT /bkt/a/b HTTP/1.1\" 200 -
127.0.0.1 - - [28/Nov/2026 22:12:55] \"GET /bkt?list-type=2&prefix=a/ HTTP/1.1\" 200 -
127.0.0.1 - - [28/Nov/2026 22:12:55] \"GET /bkt?prefix=a HTTP/1.1\" 200 -
127.0.0.1 - - [28/Nov/2026 22:12:55] \"GET /bkt/a/b HTTP/1.1\" 200 -
127.0.0.1 - - [28/Nov/2026 22:12:55] \"HEAD /bkt/a/b HTTP/1.1\" 200 -
127.0.0.1 - - [28/Nov/2026 22:12:55] \"POST /bkt?delete HTTP/1.1\" 200 -
127.0.0.1 - - [28/Nov/2026 22:12:55] \"DELETE /bkt/a/b HTTP/1.1\" 204 -
127.0.0.1 - - [28/Nov/2026 22:12:55] \"POST /bkt/big?uploads HTTP/1.1\" 200 -
Traceback (most recent call last):
 * Running on http://127.0.0.1:45111
";
    assert_eq!(
        parse_access_line(log.lines().nth(2).unwrap()),
        Some(("GET", "/bkt?list-type=2&prefix=a/"))
    );
    assert_eq!(classify_request("DELETE", "/bkt/a/b"), "delete");
    let expected: BTreeMap<String, u64> = [
        ("list", 2),
        ("get", 1),
        ("head", 1),
        ("delete", 2),
        ("put", 2),
        ("post", 1),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(count_requests(log), expected);
}

#[test]
fn a_registry_tree_round_trips_through_azurite() {
    let mut f = Fixture::build();
    f.registry.stop();
    let azurite = Azurite::start();
    azurite.create_container("registry");
    let root = f.registry.storage_root();
    let uploaded = azurite.upload_tree("registry", "reg", &root);
    assert!(uploaded > 0);
    assert_eq!(azurite.list_keys("registry", "reg/").len(), uploaded);

    let copy = tempfile::tempdir().unwrap();
    azurite.download("registry", "reg/", copy.path());
    // Object stores have no directories (and do not keep modification times): compare files.
    let files = |snapshot: BTreeMap<String, Node>| -> BTreeMap<String, Node> {
        snapshot
            .into_iter()
            .filter(|(_, node)| !matches!(node, Node::Dir))
            .collect()
    };
    let expected = files(tree_snapshot(&root));
    assert_eq!(expected.len(), uploaded);
    assert_eq!(files(tree_snapshot(copy.path())), expected);
}
