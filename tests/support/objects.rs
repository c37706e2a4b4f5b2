//! Copying trees between a local directory and an object store (S3 on moto, Azure Blob on
//! Azurite) through `object_store`, for tests that load a registry tree into a bucket or inspect
//! what a collection left there with the filesystem helpers of [`super::storage`].
//!
//! Tests are synchronous: each helper runs its requests on a small current-thread tokio runtime.

use std::collections::BTreeSet;
use std::fs;
use std::future::Future;
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

/// Runs `future` to completion on a new current-thread runtime (object_store's HTTP client needs
/// a tokio reactor; the tests themselves are synchronous).
pub fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("build a tokio runtime")
        .block_on(future)
}

/// `prefix` without leading or trailing slashes: `"reg/"`, `"/reg"` and `"reg"` all name the
/// same "directory", and `""` the whole bucket.
fn normalize(prefix: &str) -> &str {
    prefix.trim_matches('/')
}

/// The object_store prefix for a listing (`None` lists the whole bucket). object_store lists
/// whole path segments, so `reg` never matches `registry/...`.
fn list_prefix(prefix: &str) -> Option<ObjectPath> {
    let prefix = normalize(prefix);
    (!prefix.is_empty()).then(|| ObjectPath::from(prefix))
}

/// `key` relative to `prefix` (both as object_store prints them).
fn relative_key<'k>(key: &'k str, prefix: &str) -> &'k str {
    let prefix = normalize(prefix);
    if prefix.is_empty() {
        key
    } else {
        key.strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('/'))
            .unwrap_or_else(|| panic!("key {key} is not under {prefix}/"))
    }
}

/// Every key under `prefix` (full keys, not relative to `prefix`).
pub fn list_keys(store: &dyn ObjectStore, prefix: &str) -> BTreeSet<String> {
    block_on(async {
        store
            .list(list_prefix(prefix).as_ref())
            .map_ok(|meta| meta.location.to_string())
            .try_collect::<BTreeSet<String>>()
            .await
    })
    .unwrap_or_else(|e| panic!("list {prefix:?}: {e}"))
}

/// Writes every object under `prefix` to `dir/<key relative to prefix>`, creating directories.
pub fn download(store: &dyn ObjectStore, prefix: &str, dir: &Path) {
    block_on(async {
        let keys: Vec<ObjectPath> = store
            .list(list_prefix(prefix).as_ref())
            .map_ok(|meta| meta.location)
            .try_collect()
            .await
            .unwrap_or_else(|e| panic!("list {prefix:?}: {e}"));
        for key in keys {
            let object = store
                .get(&key)
                .await
                .unwrap_or_else(|e| panic!("get {key}: {e}"));
            let bytes = object
                .bytes()
                .await
                .unwrap_or_else(|e| panic!("read {key}: {e}"));
            let path = dir.join(relative_key(key.as_ref(), prefix));
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent)
                    .unwrap_or_else(|e| panic!("create {}: {e}", parent.display()));
            }
            fs::write(&path, &bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        }
    });
}

/// Every file under `dir` (recursively), sorted; directories themselves are not objects.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Uploads every file under `dir` as `<prefix>/<path relative to dir>` (empty directories are
/// lost: object stores have none). Returns how many objects were written.
pub fn upload_tree(store: &dyn ObjectStore, prefix: &str, dir: &Path) -> usize {
    let files = files_under(dir);
    block_on(async {
        for file in &files {
            let relative = file
                .strip_prefix(dir)
                .expect("a file under dir")
                .to_string_lossy()
                .into_owned();
            let key = match normalize(prefix) {
                "" => relative,
                prefix => format!("{prefix}/{relative}"),
            };
            let bytes = fs::read(file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
            // `parse`, not `from`: the key is already a `/`-separated path, and must be stored
            // exactly as the registry named it.
            let location =
                ObjectPath::parse(&key).unwrap_or_else(|e| panic!("object key {key:?}: {e}"));
            store
                .put(&location, bytes.into())
                .await
                .unwrap_or_else(|e| panic!("put {key}: {e}"));
        }
    });
    files.len()
}
