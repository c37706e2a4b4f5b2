//! The filesystem backend.
//!
//! Purpose-built rather than object_store's `LocalFileSystem`, whose lister follows symlinks and
//! stats each file several times: a registry of tens of millions of files wants one `lstat` per file
//! and no surprises. Symbolic links are never followed nor deleted: meeting one is an error that names
//! it, so that nothing reachable through it can be judged garbage. Blocking filesystem calls run on
//! tokio's blocking pool; a listing streams its results through a bounded channel as the walk goes.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::stream::{self, BoxStream, StreamExt};
use tokio::sync::mpsc;

use super::requests::{RequestCounter, RequestKind};
use super::{Listing, ObjectMeta, PutCondition, Storage, StorageError, Version};
use crate::layout;

/// Objects sent through the listing channel at a time: amortises the hand-off between threads.
const LIST_CHUNK: usize = 512;
/// Chunks a walk may get ahead of its consumer.
const LIST_CHANNEL: usize = 4;

/// A registry root directory on a local or mounted filesystem.
#[derive(Debug, Clone)]
pub struct LocalStorage {
    root: Arc<PathBuf>,
    /// Directory reads count as `list`, file reads as `get`, unlinks as `delete`.
    counter: RequestCounter,
}

impl LocalStorage {
    /// Opens `root`, which must be an existing directory (a symlink to one is fine: it is the
    /// operator's choice of root, not something found inside the storage).
    pub fn open(root: &Path, counter: &RequestCounter) -> Result<LocalStorage, StorageError> {
        let key = root.display().to_string();
        let meta = fs::metadata(root).map_err(|source| io_error(&key, source))?;
        if !meta.is_dir() {
            return Err(StorageError::Io {
                key,
                source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
            });
        }
        Ok(LocalStorage {
            root: Arc::new(root.to_path_buf()),
            counter: counter.clone(),
        })
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key.trim_end_matches('/'))
    }
}

impl fmt::Display for LocalStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "file://{}", self.root.display())
    }
}

fn io_error(key: &str, source: io::Error) -> StorageError {
    if source.kind() == io::ErrorKind::NotFound {
        StorageError::NotFound {
            key: key.to_owned(),
        }
    } else {
        StorageError::Io {
            key: key.to_owned(),
            source,
        }
    }
}

/// Runs blocking filesystem work off the async threads.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work)
        .await
        .expect("filesystem task panicked")
}

/// The key of a directory entry, or an error if its name is not UTF-8.
fn child_key(parent_key: &str, entry: &fs::DirEntry) -> Result<String, StorageError> {
    let name = entry.file_name();
    match name.to_str() {
        Some(name) => Ok(format!("{parent_key}{name}")),
        None => Err(StorageError::NonUtf8Name {
            key: format!("{parent_key}{}", name.to_string_lossy()),
        }),
    }
}

/// A FIFO, socket or device: reading one may block forever or never end.
fn not_a_file(key: String) -> StorageError {
    StorageError::Io {
        key,
        source: io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file or directory; regsweep leaves such storage alone",
        ),
    }
}

fn object_meta(key: String, meta: &fs::Metadata) -> Result<ObjectMeta, StorageError> {
    let modified = meta.modified().map_err(|source| io_error(&key, source))?;
    Ok(ObjectMeta {
        size: if meta.is_dir() { 0 } else { meta.len() },
        modified,
        key,
    })
}

/// What one directory holds, without following links.
enum Entry {
    File(ObjectMeta),
    Dir(String),
}

fn read_dir(
    root: &Path,
    dir_key: &str,
    counter: &RequestCounter,
) -> Result<Vec<Entry>, StorageError> {
    counter.add(RequestKind::List, 1);
    let path = root.join(dir_key.trim_end_matches('/'));
    let entries = match fs::read_dir(&path) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error(dir_key, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_error(dir_key, e))?;
        let key = child_key(dir_key, &entry)?;
        // `file_type` comes from the directory entry itself (no stat, never follows a link).
        let file_type = entry.file_type().map_err(|e| io_error(&key, e))?;
        if file_type.is_symlink() {
            return Err(StorageError::Symlink { key });
        } else if file_type.is_dir() {
            out.push(Entry::Dir(key + "/"));
        } else if !file_type.is_file() {
            return Err(not_a_file(key));
        } else {
            // One lstat per file, for its size and modification time.
            let meta = entry.metadata().map_err(|e| io_error(&key, e))?;
            out.push(Entry::File(object_meta(key, &meta)?));
        }
    }
    Ok(out)
}

/// A directory met in a walk: the one file of a leaf directory, or a directory to read.
enum Leaf {
    File(ObjectMeta),
    Read(String),
}

/// Stats the file of a leaf directory ([`layout::leaf_file`]) rather than reading the directory;
/// a leaf directory without its file (empty, or holding something else) is read.
fn leaf(root: &Path, dir_key: String, counter: &RequestCounter) -> Result<Leaf, StorageError> {
    let Some(file) = layout::leaf_file(&dir_key) else {
        return Ok(Leaf::Read(dir_key));
    };
    let key = format!("{dir_key}{file}");
    counter.add(RequestKind::Head, 1);
    match fs::symlink_metadata(root.join(&key)) {
        Ok(meta) if meta.file_type().is_symlink() => Err(StorageError::Symlink { key }),
        Ok(meta) if meta.is_file() => Ok(Leaf::File(object_meta(key, &meta)?)),
        Ok(_) => Err(not_a_file(key)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Leaf::Read(dir_key)),
        Err(e) => Err(io_error(&key, e)),
    }
}

/// Walks `prefix` depth-first, sending objects (and empty directories, `prefix` included, as `…/`
/// keys) in chunks.
fn walk(
    root: &Path,
    prefix: &str,
    counter: &RequestCounter,
    tx: &mpsc::Sender<Result<Vec<ObjectMeta>, StorageError>>,
) {
    let mut chunk = Vec::with_capacity(LIST_CHUNK);
    let mut pending = vec![prefix.to_owned()];
    while let Some(dir_key) = pending.pop() {
        let entries = match read_dir(root, &dir_key, counter) {
            Ok(entries) => entries,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        };
        if entries.is_empty() {
            match fs::symlink_metadata(root.join(dir_key.trim_end_matches('/'))) {
                Ok(meta) => match object_meta(dir_key, &meta) {
                    Ok(marker) => chunk.push(marker),
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                },
                // Removed while we walked: nothing to report.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    let _ = tx.blocking_send(Err(io_error(&dir_key, e)));
                    return;
                }
            }
        }
        for entry in entries {
            match entry {
                Entry::File(meta) => chunk.push(meta),
                Entry::Dir(key) => match leaf(root, key, counter) {
                    Ok(Leaf::File(meta)) => chunk.push(meta),
                    Ok(Leaf::Read(key)) => pending.push(key),
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                },
            }
        }
        if chunk.len() >= LIST_CHUNK {
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(LIST_CHUNK));
            if tx.blocking_send(Ok(full)).is_err() {
                return; // the consumer went away
            }
        }
    }
    if !chunk.is_empty() {
        let _ = tx.blocking_send(Ok(chunk));
    }
}

fn delete_one(root: &Path, key: &str) -> Result<(), StorageError> {
    let path = root.join(key.trim_end_matches('/'));
    let result = if key.ends_with('/') {
        match fs::remove_dir(&path) {
            // Something was written into it since the scan: it is no longer garbage.
            Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty => Ok(()),
            other => other,
        }
    } else {
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(StorageError::Symlink {
                    key: key.to_owned(),
                });
            }
            _ => fs::remove_file(&path),
        }
    };
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other.map_err(|e| io_error(key, e)),
    }
}

/// The version of a file's content: a hash, enough to tell one lock record from the next.
fn content_version(content: &[u8]) -> Version {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    content.hash(&mut hasher);
    Version(format!("{:016x}", hasher.finish()))
}

fn read_file(path: &Path, key: &str) -> Result<Vec<u8>, StorageError> {
    let meta = fs::symlink_metadata(path).map_err(|e| io_error(key, e))?;
    if meta.file_type().is_symlink() {
        return Err(StorageError::Symlink {
            key: key.to_owned(),
        });
    }
    // A FIFO or device would block the read forever.
    if !meta.is_file() {
        return Err(not_a_file(key.to_owned()));
    }
    fs::read(path).map_err(|e| io_error(key, e))
}

/// Writes `content` to `path` atomically (a temporary file renamed over it), if `condition` holds.
/// The check and the write happen under an exclusive lock on a sibling `.guard` file, which every
/// regsweep process takes, so that two processes cannot both pass the same condition.
fn put_file(
    path: &Path,
    key: &str,
    content: &[u8],
    condition: &PutCondition,
) -> Result<Version, StorageError> {
    let failed = |e| io_error(key, e);
    let parent = path.parent().expect("keys are below the root");
    fs::create_dir_all(parent).map_err(failed)?;
    let name = path.file_name().expect("keys name files").to_string_lossy();
    let guard = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(parent.join(format!(".{name}.guard")))
        .map_err(failed)?;
    guard.lock().map_err(failed)?;
    let holds = match condition {
        PutCondition::Overwrite => true,
        PutCondition::Absent => !fs::exists(path).map_err(failed)?,
        PutCondition::Matches(version) => match read_file(path, key) {
            Ok(current) => content_version(&current) == *version,
            Err(StorageError::NotFound { .. }) => false,
            Err(e) => return Err(e),
        },
    };
    if !holds {
        return Err(StorageError::PreconditionFailed {
            key: key.to_owned(),
        });
    }
    let temporary = parent.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = fs::write(&temporary, content)
        .and_then(|()| fs::File::open(&temporary)?.sync_all())
        .and_then(|()| fs::rename(&temporary, path));
    if let Err(e) = written {
        let _ = fs::remove_file(&temporary);
        return Err(failed(e));
    }
    Ok(content_version(content))
}

fn rename_file(root: &Path, from: &str, to: &str) -> Result<u64, StorageError> {
    let source = root.join(from);
    let meta = fs::symlink_metadata(&source).map_err(|e| io_error(from, e))?;
    if meta.file_type().is_symlink() {
        return Err(StorageError::Symlink {
            key: from.to_owned(),
        });
    }
    let target = root.join(to);
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent).map_err(|e| io_error(to, e))?;
    }
    fs::rename(&source, &target).map_err(|e| io_error(from, e))?;
    Ok(meta.len())
}

impl Storage for LocalStorage {
    fn list(&self, prefix: &str) -> BoxStream<'static, Result<ObjectMeta, StorageError>> {
        let root = Arc::clone(&self.root);
        let prefix = prefix.to_owned();
        let counter = self.counter.clone();
        // The walk starts when the listing is first polled, not when it is made: a caller may
        // make hundreds of listings and poll a few at a time, and each walk holds a thread and
        // fills its channel.
        stream::once(async move {
            let (tx, rx) = mpsc::channel(LIST_CHANNEL);
            tokio::task::spawn_blocking(move || walk(&root, &prefix, &counter, &tx));
            stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|chunk| (chunk, rx))
            })
        })
        .flatten()
        .flat_map(|chunk| {
            let items: Vec<Result<ObjectMeta, StorageError>> = match chunk {
                Ok(objects) => objects.into_iter().map(Ok).collect(),
                Err(e) => vec![Err(e)],
            };
            stream::iter(items)
        })
        .boxed()
    }

    fn list_dir(&self, prefix: &str) -> BoxFuture<'_, Result<Listing, StorageError>> {
        let root = Arc::clone(&self.root);
        let prefix = prefix.to_owned();
        let counter = self.counter.clone();
        Box::pin(blocking(move || {
            let mut listing = Listing::default();
            for entry in read_dir(&root, &prefix, &counter)? {
                match entry {
                    Entry::File(meta) => listing.objects.push(meta),
                    Entry::Dir(key) => listing.prefixes.push(key),
                }
            }
            Ok(listing)
        }))
    }

    fn get(&self, key: &str) -> BoxFuture<'_, Result<Vec<u8>, StorageError>> {
        let path = self.path(key);
        let key = key.to_owned();
        self.counter.add(RequestKind::Get, 1);
        Box::pin(blocking(move || read_file(&path, &key)))
    }

    fn head(&self, key: &str) -> BoxFuture<'_, Result<Option<ObjectMeta>, StorageError>> {
        let path = self.path(key);
        let key = key.to_owned();
        self.counter.add(RequestKind::Head, 1);
        Box::pin(blocking(move || match fs::symlink_metadata(&path) {
            Ok(meta) => object_meta(key, &meta).map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error(&key, e)),
        }))
    }

    fn get_versioned(&self, key: &str) -> BoxFuture<'_, Result<(Vec<u8>, Version), StorageError>> {
        let path = self.path(key);
        let key = key.to_owned();
        self.counter.add(RequestKind::Get, 1);
        Box::pin(blocking(move || {
            let content = read_file(&path, &key)?;
            let version = content_version(&content);
            Ok((content, version))
        }))
    }

    fn put(
        &self,
        key: &str,
        content: Vec<u8>,
        condition: PutCondition,
    ) -> BoxFuture<'_, Result<Version, StorageError>> {
        let path = self.path(key);
        let key = key.to_owned();
        self.counter.add(RequestKind::Other, 1);
        Box::pin(blocking(move || {
            put_file(&path, &key, &content, &condition)
        }))
    }

    fn rename(&self, from: &str, to: &str) -> BoxFuture<'_, Result<u64, StorageError>> {
        let root = Arc::clone(&self.root);
        let (from, to) = (from.to_owned(), to.to_owned());
        self.counter.add(RequestKind::Other, 1);
        Box::pin(blocking(move || rename_file(&root, &from, &to)))
    }

    fn delete(&self, keys: Vec<String>) -> BoxFuture<'_, Vec<Result<(), StorageError>>> {
        let root = Arc::clone(&self.root);
        self.counter.add(RequestKind::Delete, keys.len() as u64);
        Box::pin(blocking(move || {
            keys.iter().map(|key| delete_one(&root, key)).collect()
        }))
    }

    fn delete_batch_size(&self) -> usize {
        64
    }

    /// Four per CPU, from 4 to 64: with a warm cache each request is a system call or two, and more
    /// threads than that only add memory (BENCHMARKS.md: 100k blobs on 2 CPUs, fastest at 4 to 16
    /// in flight, slower and 30 % larger at 32); a cold cache on an SSD wants a few per CPU.
    fn default_concurrency(&self) -> usize {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        (cpus * 4).clamp(4, 64)
    }

    fn remove_empty_dirs(&self, mut dirs: Vec<String>) -> BoxFuture<'_, Result<u64, StorageError>> {
        let root = Arc::clone(&self.root);
        Box::pin(blocking(move || {
            // Deepest first, so that a parent is tried after its children went.
            dirs.sort_unstable_by_key(|d| std::cmp::Reverse(d.matches('/').count()));
            dirs.dedup();
            let mut removed = 0;
            for dir in &dirs {
                match fs::remove_dir(root.join(dir.trim_end_matches('/'))) {
                    Ok(()) => removed += 1,
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::NotFound | io::ErrorKind::DirectoryNotEmpty
                        ) => {}
                    Err(e) => return Err(io_error(dir, e)),
                }
            }
            Ok(removed)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;

    fn write(root: &Path, rel: &str, body: &str) {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, body).unwrap();
    }

    async fn keys(storage: &LocalStorage, prefix: &str) -> Vec<String> {
        let mut keys: Vec<String> = storage
            .list(prefix)
            .map_ok(|m| m.key)
            .try_collect()
            .await
            .unwrap();
        keys.sort();
        keys
    }

    #[tokio::test]
    async fn lists_recursively_with_empty_dirs_as_markers() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a/b/c", "123");
        write(dir.path(), "a/d", "");
        fs::create_dir_all(dir.path().join("a/empty/deeper")).unwrap();
        let storage = LocalStorage::open(dir.path(), &RequestCounter::default()).unwrap();
        assert_eq!(
            keys(&storage, "a/").await,
            ["a/b/c", "a/d", "a/empty/deeper/"]
        );
        assert_eq!(keys(&storage, "missing/").await, Vec::<String>::new());
        assert_eq!(keys(&storage, "a/empty/deeper/").await, ["a/empty/deeper/"]);
        let listing = storage.list_dir("a/").await.unwrap();
        assert_eq!(listing.objects.len(), 1);
        assert_eq!(listing.prefixes.len(), 2);
    }

    #[tokio::test]
    async fn symlinks_are_errors_and_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        write(outside.path(), "precious", "x");
        fs::create_dir_all(dir.path().join("a")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("a/link")).unwrap();
        let storage = LocalStorage::open(dir.path(), &RequestCounter::default()).unwrap();
        let err = storage
            .list("a/")
            .try_collect::<Vec<_>>()
            .await
            .unwrap_err();
        assert!(matches!(err, StorageError::Symlink { ref key } if key == "a/link"));
        let results = storage.delete(vec!["a/link".into()]).await;
        assert!(matches!(results[0], Err(StorageError::Symlink { .. })));
        assert!(outside.path().join("precious").exists());
    }

    #[tokio::test]
    async fn conditional_puts_are_compare_and_swap() {
        let dir = tempfile::tempdir().unwrap();
        let storage = LocalStorage::open(dir.path(), &RequestCounter::default()).unwrap();
        let key = "_regsweep/lock";
        let first = storage
            .put(key, b"one".to_vec(), PutCondition::Absent)
            .await
            .unwrap();
        let again = storage
            .put(key, b"two".to_vec(), PutCondition::Absent)
            .await;
        assert!(matches!(
            again,
            Err(StorageError::PreconditionFailed { .. })
        ));
        let (content, version) = storage.get_versioned(key).await.unwrap();
        assert_eq!((content.as_slice(), &version), (&b"one"[..], &first));
        let second = storage
            .put(key, b"two".to_vec(), PutCondition::Matches(version.clone()))
            .await
            .unwrap();
        let stale = storage
            .put(key, b"three".to_vec(), PutCondition::Matches(version))
            .await;
        assert!(matches!(
            stale,
            Err(StorageError::PreconditionFailed { .. })
        ));
        storage
            .put(key, b"three".to_vec(), PutCondition::Matches(second))
            .await
            .unwrap();
        assert_eq!(storage.get(key).await.unwrap(), b"three");
        storage
            .put(key, b"four".to_vec(), PutCondition::Overwrite)
            .await
            .unwrap();
        assert_eq!(storage.get(key).await.unwrap(), b"four");
    }

    #[tokio::test]
    async fn renames_into_new_directories_and_never_through_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a/file", "1");
        let storage = LocalStorage::open(dir.path(), &RequestCounter::default()).unwrap();
        assert_eq!(storage.rename("a/file", "q/run/a/file").await.unwrap(), 1);
        assert!(!dir.path().join("a/file").exists());
        assert_eq!(fs::read(dir.path().join("q/run/a/file")).unwrap(), b"1");
        std::os::unix::fs::symlink("/etc/hostname", dir.path().join("a/link")).unwrap();
        let err = storage.rename("a/link", "q/link").await.unwrap_err();
        assert!(matches!(err, StorageError::Symlink { .. }), "{err}");
        assert!(matches!(
            storage.rename("a/missing", "q/missing").await,
            Err(StorageError::NotFound { .. })
        ));
    }

    #[tokio::test]
    async fn deletes_tolerate_missing_and_keep_non_empty_dirs() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "x/y/file", "1");
        fs::create_dir_all(dir.path().join("x/empty")).unwrap();
        let storage = LocalStorage::open(dir.path(), &RequestCounter::default()).unwrap();
        let results = storage
            .delete(vec!["x/y/file".into(), "x/gone".into(), "x/".into()])
            .await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert!(dir.path().join("x/y").is_dir());
        let removed = storage
            .remove_empty_dirs(vec!["x/".into(), "x/y/".into(), "x/empty/".into()])
            .await
            .unwrap();
        assert_eq!(removed, 3);
        assert!(!dir.path().join("x").exists());
    }
}
