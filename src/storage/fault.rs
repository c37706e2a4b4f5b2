//! Test-only fault injection, for the crash-safety tests: a decorator that lets `N` deletions (or
//! quarantine moves, or multipart aborts) through and then stops the process from making progress,
//! so that a test can kill it with SIGKILL at an exact point of the sweep.
//!
//! Enabled only by the environment variable [`HANG_AFTER_DELETES_ENV`]; when the budget is spent it
//! prints [`HANG_MARKER`] on stderr and waits forever.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use futures::future::BoxFuture;
use futures::stream::BoxStream;

use super::{Listing, MultipartUpload, ObjectMeta, PutCondition, Storage, StorageError, Version};

/// `REGSWEEP_TEST_HANG_AFTER_DELETES=N`: hang after `N` deletions.
pub const HANG_AFTER_DELETES_ENV: &str = "REGSWEEP_TEST_HANG_AFTER_DELETES";
/// Printed on stderr when the process starts to hang.
pub const HANG_MARKER: &str = "regsweep-test: hanging";

#[derive(Debug)]
pub struct HangAfterDeletes {
    inner: Arc<dyn Storage>,
    remaining: AtomicU64,
    /// Granted operations not finished yet: the hang is announced only once they are, so that a
    /// kill on the announcement comes after exactly `N` deletions.
    in_flight: AtomicU64,
    announced: AtomicBool,
}

impl HangAfterDeletes {
    pub fn new(inner: Arc<dyn Storage>, deletions: u64) -> HangAfterDeletes {
        HangAfterDeletes {
            inner,
            remaining: AtomicU64::new(deletions),
            in_flight: AtomicU64::new(0),
            announced: AtomicBool::new(false),
        }
    }

    /// Takes up to `wanted` deletions from the budget; returns how many were granted. The caller
    /// calls [`Self::done`] once they are carried out.
    fn grant(&self, wanted: u64) -> u64 {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let before = self
            .remaining
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                Some(left - left.min(wanted))
            })
            .expect("the update always succeeds");
        before.min(wanted)
    }

    fn done(&self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }

    /// Waits for the granted operations still running, says so once, and never returns.
    async fn hang<T>(&self) -> T {
        self.done();
        while self.in_flight.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        if !self.announced.swap(true, Ordering::SeqCst) {
            eprintln!("{HANG_MARKER}");
        }
        std::future::pending().await
    }
}

impl fmt::Display for HangAfterDeletes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl Storage for HangAfterDeletes {
    fn list(&self, prefix: &str) -> BoxStream<'static, Result<ObjectMeta, StorageError>> {
        self.inner.list(prefix)
    }

    fn list_dir(&self, prefix: &str) -> BoxFuture<'_, Result<Listing, StorageError>> {
        self.inner.list_dir(prefix)
    }

    fn get(&self, key: &str) -> BoxFuture<'_, Result<Vec<u8>, StorageError>> {
        self.inner.get(key)
    }

    fn head(&self, key: &str) -> BoxFuture<'_, Result<Option<ObjectMeta>, StorageError>> {
        self.inner.head(key)
    }

    fn get_versioned(&self, key: &str) -> BoxFuture<'_, Result<(Vec<u8>, Version), StorageError>> {
        self.inner.get_versioned(key)
    }

    fn put(
        &self,
        key: &str,
        content: Vec<u8>,
        condition: PutCondition,
    ) -> BoxFuture<'_, Result<Version, StorageError>> {
        self.inner.put(key, content, condition)
    }

    fn rename(&self, from: &str, to: &str) -> BoxFuture<'_, Result<u64, StorageError>> {
        let (from, to) = (from.to_owned(), to.to_owned());
        Box::pin(async move {
            if self.grant(1) == 0 {
                return self.hang().await;
            }
            let result = self.inner.rename(&from, &to).await;
            self.done();
            result
        })
    }

    fn delete(&self, mut keys: Vec<String>) -> BoxFuture<'_, Vec<Result<(), StorageError>>> {
        Box::pin(async move {
            let granted = self.grant(keys.len() as u64) as usize;
            if granted < keys.len() {
                keys.truncate(granted);
                // The granted part goes first, so that the hang comes after exactly N deletions.
                self.inner.delete(keys).await;
                return self.hang().await;
            }
            let results = self.inner.delete(keys).await;
            self.done();
            results
        })
    }

    fn delete_batch_size(&self) -> usize {
        self.inner.delete_batch_size()
    }

    fn default_concurrency(&self) -> usize {
        self.inner.default_concurrency()
    }

    fn remove_empty_dirs(&self, dirs: Vec<String>) -> BoxFuture<'_, Result<u64, StorageError>> {
        self.inner.remove_empty_dirs(dirs)
    }

    fn check_listing(&self, prefix: &str) -> BoxFuture<'_, Result<(), StorageError>> {
        self.inner.check_listing(prefix)
    }

    fn multipart_uploads(
        &self,
        prefix: &str,
    ) -> BoxFuture<'_, Result<Vec<MultipartUpload>, StorageError>> {
        self.inner.multipart_uploads(prefix)
    }

    fn abort_multipart_upload(
        &self,
        upload: &MultipartUpload,
    ) -> BoxFuture<'_, Result<(), StorageError>> {
        let upload = upload.clone();
        Box::pin(async move {
            if self.grant(1) == 0 {
                return self.hang().await;
            }
            let result = self.inner.abort_multipart_upload(&upload).await;
            self.done();
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::storage::local::LocalStorage;

    #[tokio::test]
    async fn lets_exactly_n_deletions_through_then_hangs() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["a", "b", "c"] {
            std::fs::write(dir.path().join(name), name).unwrap();
        }
        let inner: Arc<dyn Storage> =
            Arc::new(LocalStorage::open(dir.path(), &Default::default()).unwrap());
        let storage = HangAfterDeletes::new(inner, 2);
        let keys = vec!["a".to_owned(), "b".to_owned(), "c".to_owned()];
        let hung = tokio::time::timeout(Duration::from_millis(200), storage.delete(keys)).await;
        assert!(hung.is_err(), "the third deletion must hang");
        assert!(!dir.path().join("a").exists() && !dir.path().join("b").exists());
        assert!(dir.path().join("c").exists());
    }
}
