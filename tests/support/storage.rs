//! Looking straight at the filesystem storage, independently of regsweep's code.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use super::content::sha256_hex;
use super::model::Model;

/// All files and directories under `dir` (not `dir` itself), depth first, sorted.
fn walk(dir: &Path) -> Vec<(PathBuf, bool)> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        out.push((path.clone(), is_dir));
        if is_dir {
            out.extend(walk(&path));
        }
    }
    out
}

fn relative(path: &Path, root: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

/// The digest in a blob key: `.../blobs/sha256/ab/<hex>/data` → `sha256:<hex>`.
pub fn blob_digest_of_key(key: &str) -> Option<String> {
    let parts: Vec<&str> = key.trim_end_matches('/').split('/').collect();
    let n = parts.len();
    if n >= 5
        && parts[n - 1] == "data"
        && parts[n - 5] == "blobs"
        && parts[n - 4] == "sha256"
        && parts[n - 2].len() == 64
        && parts[n - 2].starts_with(parts[n - 3])
    {
        Some(format!("sha256:{}", parts[n - 2]))
    } else {
        None
    }
}

/// Every blob with content: `blobs/sha256/xx/<hex>/data` → `sha256:<hex>`.
pub fn storage_blobs(v2_root: &Path) -> BTreeSet<String> {
    blob_sizes(v2_root).into_keys().collect()
}

/// Every blob with content and its size.
pub fn blob_sizes(v2_root: &Path) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let root = v2_root.join("blobs/sha256");
    for (path, is_dir) in walk(&root) {
        if is_dir {
            continue;
        }
        if let Some(digest) =
            blob_digest_of_key(&format!("blobs/sha256/{}", relative(&path, &root)))
        {
            let len = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            out.insert(digest, len);
        }
    }
    out
}

fn blob_data_exists(v2_root: &Path, digest: &str) -> bool {
    let Some(hex) = digest.strip_prefix("sha256:") else {
        return false;
    };
    hex.len() == 64
        && v2_root
            .join("blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
            .is_file()
}

/// Every link file under `repositories/` (`_layers/.../link`, `_manifests/revisions/.../link`, a
/// tag's `current/link` and `index/.../link`) whose blob `data` does not exist or that does not
/// hold a digest, as paths relative to `v2_root`.
pub fn dangling_links(v2_root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for (path, is_dir) in walk(&v2_root.join("repositories")) {
        if is_dir || path.file_name().is_none_or(|n| n != "link") {
            continue;
        }
        let content = fs::read_to_string(&path).unwrap_or_default();
        if !blob_data_exists(v2_root, content.trim()) {
            out.push(relative(&path, v2_root));
        }
    }
    out
}

/// One entry of a [`tree_snapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir,
    File { len: u64, sha256: String },
}

/// Every file (length and SHA-256) and directory under `root`, by path relative to `root`, so that
/// two snapshots compare byte for byte and a removed empty directory shows. regsweep's own
/// objects (`_regsweep/`: the run lock, quarantines) are not part of it.
pub fn tree_snapshot(root: &Path) -> BTreeMap<String, Node> {
    walk(root)
        .into_iter()
        .filter(|(path, _)| !path.starts_with(root.join("_regsweep")))
        .map(|(path, is_dir)| {
            let node = if is_dir {
                Node::Dir
            } else {
                let bytes =
                    fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
                Node::File {
                    len: bytes.len() as u64,
                    sha256: sha256_hex(&bytes),
                }
            };
            (relative(&path, root), node)
        })
        .collect()
}

/// What changed between two snapshots, one line per path (`- removed`, `+ added`, `~ changed`).
pub fn snapshot_diff(
    before: &BTreeMap<String, Node>,
    after: &BTreeMap<String, Node>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (path, node) in before {
        match after.get(path) {
            None => out.push(format!("- {path}")),
            Some(other) if other != node => out.push(format!("~ {path}")),
            Some(_) => {}
        }
    }
    for path in after.keys() {
        if !before.contains_key(path) {
            out.push(format!("+ {path}"));
        }
    }
    out
}

/// Files (not directories) present in `before` and absent from `after`.
pub fn removed_files(
    before: &BTreeMap<String, Node>,
    after: &BTreeMap<String, Node>,
) -> BTreeSet<String> {
    before
        .iter()
        .filter(|(path, node)| matches!(node, Node::File { .. }) && !after.contains_key(*path))
        .map(|(path, _)| path.clone())
        .collect()
}

/// Repository names: directories under `repositories/` with a `_manifests`, `_layers` or
/// `_uploads` child (names nest: `foo` and `foo/bar` can both be repositories).
pub fn repository_dirs(v2_root: &Path) -> BTreeSet<String> {
    let root = v2_root.join("repositories");
    walk(&root)
        .into_iter()
        .filter(|(path, is_dir)| {
            *is_dir
                && ["_manifests", "_layers", "_uploads"]
                    .iter()
                    .any(|child| path.join(child).is_dir())
                && !relative(path, &root)
                    .split('/')
                    .any(|component| component.starts_with('_'))
        })
        .map(|(path, _)| relative(&path, &root))
        .collect()
}

fn repo_dir(v2_root: &Path, repo: &str) -> PathBuf {
    v2_root.join("repositories").join(repo)
}

/// Digests under `<dir>/sha256/<hex>/link`, whether or not the link holds the same digest.
fn linked_digests(dir: &Path) -> BTreeSet<String> {
    let Ok(entries) = fs::read_dir(dir.join("sha256")) else {
        return BTreeSet::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.path().join("link").is_file())
        .map(|e| format!("sha256:{}", e.file_name().to_string_lossy()))
        .collect()
}

/// repo → manifest revisions linked (`_manifests/revisions/sha256/<hex>/link`); repositories with
/// none are listed with an empty set.
pub fn storage_revisions(v2_root: &Path) -> BTreeMap<String, BTreeSet<String>> {
    repository_dirs(v2_root)
        .into_iter()
        .map(|repo| {
            let dir = repo_dir(v2_root, &repo).join("_manifests/revisions");
            (repo, linked_digests(&dir))
        })
        .collect()
}

/// repo → blobs linked into it (`_layers/sha256/<hex>/link`).
pub fn storage_layer_links(v2_root: &Path) -> BTreeMap<String, BTreeSet<String>> {
    repository_dirs(v2_root)
        .into_iter()
        .map(|repo| {
            let dir = repo_dir(v2_root, &repo).join("_layers");
            (repo, linked_digests(&dir))
        })
        .collect()
}

/// repo → tag → digest in `current/link`; only repositories with tags are listed.
pub fn storage_tags(v2_root: &Path) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for repo in repository_dirs(v2_root) {
        let dir = repo_dir(v2_root, &repo).join("_manifests/tags");
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        let mut tags = BTreeMap::new();
        for entry in entries.filter_map(Result::ok) {
            if let Ok(digest) = fs::read_to_string(entry.path().join("current/link")) {
                tags.insert(
                    entry.file_name().to_string_lossy().into_owned(),
                    digest.trim().to_owned(),
                );
            }
        }
        if !tags.is_empty() {
            out.insert(repo, tags);
        }
    }
    out
}

/// `(repo, uuid)` of every upload directory.
pub fn upload_dirs(v2_root: &Path) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for repo in repository_dirs(v2_root) {
        let Ok(entries) = fs::read_dir(repo_dir(v2_root, &repo).join("_uploads")) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            out.insert((
                repo.clone(),
                entry.file_name().to_string_lossy().into_owned(),
            ));
        }
    }
    out
}

/// Directories under `dir` with nothing in them, relative to `dir`.
pub fn empty_dirs(dir: &Path) -> Vec<String> {
    walk(dir)
        .into_iter()
        .filter(|(path, is_dir)| {
            *is_dir
                && fs::read_dir(path)
                    .map(|mut d| d.next().is_none())
                    .unwrap_or(false)
        })
        .map(|(path, _)| relative(&path, dir))
        .collect()
}

/// Panics unless the storage under `v2_root` holds exactly what `model` keeps after a collection
/// (`delete_untagged` or not): the live blobs and no other, the kept revision links, every tag,
/// no dangling link, exactly the repositories that must stay, and the upload directories
/// `uploads` (`(repo, uuid)`).
pub fn assert_exactly_the_live_set(
    v2_root: &Path,
    model: &Model,
    delete_untagged: bool,
    uploads: &BTreeSet<(String, String)>,
) {
    let expected = model.expected_live_blobs(delete_untagged);
    let actual = storage_blobs(v2_root);
    let lost: Vec<_> = expected.difference(&actual).collect();
    let left: Vec<_> = actual.difference(&expected).collect();
    assert!(
        lost.is_empty(),
        "LIVE BLOBS DELETED:\n{}",
        model.explain_all(lost)
    );
    assert!(
        left.is_empty(),
        "garbage left behind:\n{}",
        model.explain_all(left)
    );
    let non_empty = |map: BTreeMap<String, BTreeSet<String>>| {
        map.into_iter()
            .filter(|(_, v)| !v.is_empty())
            .collect::<BTreeMap<_, _>>()
    };
    assert_eq!(
        non_empty(storage_revisions(v2_root)),
        non_empty(model.expected_revisions(delete_untagged)),
        "revision links"
    );
    assert_eq!(storage_tags(v2_root), model.surviving_tags(), "tags");
    assert_eq!(
        dangling_links(v2_root),
        Vec::<String>::new(),
        "dangling links"
    );
    assert_eq!(
        repository_dirs(v2_root),
        model.repos_that_must_stay(delete_untagged),
        "repositories"
    );
    assert_eq!(&upload_dirs(v2_root), uploads, "uploads");
}

/// Where a filesystem registry rooted at `v2` keeps the content of blob `digest`.
pub fn blob_file(v2: &Path, digest: &str) -> PathBuf {
    let hex = digest.trim_start_matches("sha256:");
    v2.join(format!("blobs/sha256/{}/{hex}/data", &hex[..2]))
}

/// Where it keeps `repo`'s `_layers` link to `digest`.
pub fn link_file(v2: &Path, repo: &str, digest: &str) -> PathBuf {
    let hex = digest.trim_start_matches("sha256:");
    v2.join(format!("repositories/{repo}/_layers/sha256/{hex}/link"))
}
