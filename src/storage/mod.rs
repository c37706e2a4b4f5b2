//! The storage trait every backend implements, and the decorators that wrap it.
//!
//! The trait is deliberately small — list, list one level, get, delete — because that is all a
//! mark-and-sweep needs, and because every extra operation is one more thing each backend (filesystem,
//! S3, Azure) must get exactly right. Methods return boxed futures and streams so that a backend chosen
//! at run time can sit behind `Arc<dyn Storage>` and be wrapped by decorators, the way object_store's
//! `LimitStore` wraps an `ObjectStore`.
//!
//! Keys are `/`-separated paths relative to the registry's root directory, e.g.
//! `docker/registry/v2/blobs/sha256/ab/<hex>/data`. A key ending in `/` is an empty directory (on a
//! filesystem) or a directory-marker object (on object stores); both carry no data.

pub mod fault;
pub mod local;
pub mod object;
pub mod requests;

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use thiserror::Error;

use crate::config::StorageConfig;
use requests::RequestCounter;

/// Opens the backend a storage configuration names; object-store backends count their requests
/// into `counter`.
pub fn open(
    config: &StorageConfig,
    counter: &RequestCounter,
) -> Result<Arc<dyn Storage>, StorageError> {
    Ok(match config {
        StorageConfig::Filesystem { root_directory } => {
            Arc::new(local::LocalStorage::open(root_directory, counter)?)
        }
        StorageConfig::S3(s3) => Arc::new(object::ObjectStorage::s3(s3, counter)?),
        StorageConfig::Azure(azure) => Arc::new(object::ObjectStorage::azure(azure, counter)?),
        StorageConfig::Gcs(gcs) => Arc::new(object::ObjectStorage::gcs(gcs, counter)?),
    })
}

/// One stored object, as a listing reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    pub modified: SystemTime,
}

impl ObjectMeta {
    /// Empty directories and directory markers end in `/`.
    pub fn is_dir_marker(&self) -> bool {
        self.key.ends_with('/')
    }
}

/// One level of a listing: the objects directly below a prefix and the sub-prefixes ("directories").
#[derive(Debug, Default)]
pub struct Listing {
    pub objects: Vec<ObjectMeta>,
    /// Each ends in `/`.
    pub prefixes: Vec<String>,
}

/// A storage failure, always naming the object it concerns.
#[derive(Debug, Error)]
pub enum StorageError {
    #[error("{key}: not found")]
    NotFound { key: String },
    #[error("{key}: {source}")]
    Io {
        key: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{key}: name is not valid UTF-8; regsweep leaves such storage alone")]
    NonUtf8Name { key: String },
    #[error("{key}: is a symbolic link; regsweep does not follow or delete links")]
    Symlink { key: String },
    #[error("{key}: {source}")]
    ObjectStore {
        key: String,
        #[source]
        source: object_store::Error,
    },
    #[error("{key}: {reason}")]
    DeleteFailed { key: String, reason: String },
    #[error("{key}: {reason}")]
    ListFailed { key: String, reason: String },
    #[error("{key}: changed by someone else since it was read (conditional write refused)")]
    PreconditionFailed { key: String },
}

/// The version of a stored object, for conditional writes: its ETag on object stores, a hash of its
/// content on filesystems. Opaque; only compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version(pub String);

/// When a [`Storage::put`] may replace what is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutCondition {
    /// Always.
    Overwrite,
    /// Only if nothing is stored under the key (create).
    Absent,
    /// Only if the stored object is still this version (compare-and-swap).
    Matches(Version),
}

/// A multipart upload in progress (S3): invisible to listings until completed, but stored and
/// billed. The registry's S3 driver starts one for each blob upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultipartUpload {
    pub key: String,
    pub upload_id: String,
    pub initiated: SystemTime,
}

/// What a backend does for the collector.
pub trait Storage: fmt::Debug + fmt::Display + Send + Sync + 'static {
    /// Every object whose key starts with `prefix` (which ends in `/`), recursively, in no particular
    /// order. A prefix that does not exist yields nothing. An error ends the stream.
    fn list(&self, prefix: &str) -> BoxStream<'static, Result<ObjectMeta, StorageError>>;

    /// Like [`Storage::list`], but only the keys after `start_after`, **in byte order**, or `None`
    /// when the backend cannot start a listing there, or does not list in order (then a listing is
    /// split by prefix instead). Lets a flat listing be split into key ranges listed concurrently,
    /// each stopped at its first key past its end: an unordered listing would silently lose keys,
    /// so a backend returns `Some` only when its order is guaranteed.
    fn list_after(
        &self,
        _prefix: &str,
        _start_after: &str,
    ) -> Option<BoxStream<'static, Result<ObjectMeta, StorageError>>> {
        None
    }

    /// The objects and sub-prefixes directly below `prefix` (which ends in `/`).
    fn list_dir(&self, prefix: &str) -> BoxFuture<'_, Result<Listing, StorageError>>;

    /// The whole content of one object.
    fn get(&self, key: &str) -> BoxFuture<'_, Result<Vec<u8>, StorageError>>;

    /// What is stored under `key` (a HEAD request; on a filesystem, a symlink or a special file is
    /// stored too, described without being followed). `None` only when nothing is there.
    fn head(&self, key: &str) -> BoxFuture<'_, Result<Option<ObjectMeta>, StorageError>>;

    /// The whole content of one object and its version, for a later conditional [`Storage::put`].
    fn get_versioned(&self, key: &str) -> BoxFuture<'_, Result<(Vec<u8>, Version), StorageError>>;

    /// Stores `content` under `key` if `condition` holds, atomically: a reader sees the old content
    /// or the new, never a part. A failed condition is [`StorageError::PreconditionFailed`].
    /// Used for regsweep's own small objects (the run lock, journals), never for registry content.
    fn put(
        &self,
        key: &str,
        content: Vec<u8>,
        condition: PutCondition,
    ) -> BoxFuture<'_, Result<Version, StorageError>>;

    /// Moves one object to another key of the same storage, without downloading it (a rename on
    /// filesystems, a server-side copy then delete on object stores). The copy is complete before
    /// the original goes; whatever is stored under `to` is replaced. Returns the object's size.
    fn rename(&self, from: &str, to: &str) -> BoxFuture<'_, Result<u64, StorageError>>;

    /// Deletes `keys`, one result per key in the same order. A key that is already gone counts as
    /// deleted. A key ending in `/` removes that directory only if it is (still) empty.
    fn delete(&self, keys: Vec<String>) -> BoxFuture<'_, Vec<Result<(), StorageError>>>;

    /// How many keys one `delete` call should carry.
    fn delete_batch_size(&self) -> usize;

    /// How many requests to keep in flight when the operator does not say (`--concurrency`). Object
    /// stores are bound by each request's latency, so they get many; a filesystem by its CPUs.
    fn default_concurrency(&self) -> usize {
        32
    }

    /// Removes those of `dirs` (each ending in `/`) that are empty, children before parents, and
    /// returns how many went. Object stores have no directories: nothing to do.
    fn remove_empty_dirs(&self, _dirs: Vec<String>) -> BoxFuture<'_, Result<u64, StorageError>> {
        Box::pin(async { Ok(0) })
    }

    /// Checks, before anything is read, that listings below `prefix` can be trusted to be
    /// complete (S3-compatible servers differ).
    fn check_listing(&self, _prefix: &str) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(async { Ok(()) })
    }

    /// The multipart uploads in progress below `prefix`. Only S3 has them.
    fn multipart_uploads(
        &self,
        _prefix: &str,
    ) -> BoxFuture<'_, Result<Vec<MultipartUpload>, StorageError>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    /// Aborts one multipart upload; one that is already gone counts as aborted.
    fn abort_multipart_upload(
        &self,
        upload: &MultipartUpload,
    ) -> BoxFuture<'_, Result<(), StorageError>> {
        let key = upload.key.clone();
        Box::pin(async move {
            Err(StorageError::DeleteFailed {
                key,
                reason: "this storage has no multipart uploads".to_owned(),
            })
        })
    }
}
