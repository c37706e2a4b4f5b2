//! S3 (and S3-compatible), Azure Blob and Google Cloud Storage through `object_store`.
//!
//! Keys are the registry's paths under its `rootdirectory`, as on the filesystem, so the layout,
//! scan and sweep code never know which backend they talk to. What this module adds is what
//! object storage needs:
//!
//! - listings are flat and paginated (`list` has no delimiter: one request per 1,000 keys, however
//!   deep the tree), and `list_dir` is one delimited listing;
//! - deletes go in batches (S3 DeleteObjects: 1,000 keys; Azure blob batch: 256), "already gone"
//!   counts as deleted, and a failure is reported per key;
//! - throttling (429, 503 SlowDown), server errors and timeouts are retried with exponential backoff
//!   by object_store's retry layer (10 retries within 3 minutes);
//! - every request is counted by the [`CountingConnector`].

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::{self, BoxStream};
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::path::Path;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt};

use super::requests::{CountingConnector, RequestCounter};
use super::{Listing, ObjectMeta, Storage, StorageError};
use crate::config::{AzureConfig, AzureCredentials, GcsConfig, S3Config};

/// S3 DeleteObjects takes at most 1,000 keys.
const S3_DELETE_BATCH: usize = 1_000;
/// An Azure blob batch takes at most 256 sub-requests.
const AZURE_DELETE_BATCH: usize = 256;
/// GCS has no batch delete in object_store: each key is its own request, sent concurrently.
const GCS_DELETE_BATCH: usize = 100;

/// A registry root in an object store.
pub struct ObjectStorage {
    store: Arc<dyn ObjectStore>,
    /// `rootdirectory` with a trailing `/`, or empty for the bucket root.
    root: String,
    /// `s3://bucket/root`, for messages (never credentials).
    url: String,
    delete_batch: usize,
}

impl ObjectStorage {
    /// An already built store (tests use object_store's in-memory store).
    pub fn new(store: Arc<dyn ObjectStore>, root: &str, url: String, delete_batch: usize) -> Self {
        let root = root.trim_matches('/');
        ObjectStorage {
            store,
            root: if root.is_empty() {
                String::new()
            } else {
                format!("{root}/")
            },
            url,
            delete_batch,
        }
    }

    /// S3 or an S3-compatible server, configured like the registry's `s3` driver.
    pub fn s3(config: &S3Config, counter: &RequestCounter) -> Result<Self, StorageError> {
        let url = format!("s3://{}/{}", config.bucket, config.root_directory);
        // The AWS credential chain from the environment (keys, web identity, ECS, instance
        // metadata) unless the config names keys, as the registry does.
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&config.bucket)
            .with_http_connector(CountingConnector {
                counter: counter.clone(),
            });
        if let Some(region) = &config.region {
            builder = builder.with_region(region);
        }
        let mut allow_http = false;
        if let Some(endpoint) = &config.region_endpoint {
            let endpoint = if endpoint.contains("://") {
                endpoint.clone()
            } else if config.secure {
                format!("https://{endpoint}")
            } else {
                format!("http://{endpoint}")
            };
            allow_http = endpoint.starts_with("http://");
            builder = builder.with_endpoint(endpoint);
        }
        // Path style unless the config asks for virtual-hosted style: it works on AWS and on every
        // S3-compatible server, which often lack wildcard DNS.
        builder = builder.with_virtual_hosted_style_request(config.force_path_style == Some(false));
        if let Some(key) = config.access_key.as_deref().filter(|k| !k.is_empty()) {
            builder = builder.with_access_key_id(key);
            if let Some(secret) = &config.secret_key {
                builder = builder.with_secret_access_key(secret.expose());
            }
            if let Some(token) = &config.session_token {
                builder = builder.with_token(token.expose());
            }
        }
        let store = builder
            .with_client_options(client_options(allow_http, config.skip_verify))
            .build()
            .map_err(|source| StorageError::ObjectStore {
                key: url.clone(),
                source,
            })?;
        Ok(Self::new(
            Arc::new(store),
            &config.root_directory,
            url,
            S3_DELETE_BATCH,
        ))
    }

    /// Azure Blob Storage, configured like the registry's `azure` driver.
    pub fn azure(config: &AzureConfig, counter: &RequestCounter) -> Result<Self, StorageError> {
        let url = format!("az://{}/{}", config.container, config.root_directory);
        let mut builder = MicrosoftAzureBuilder::from_env()
            .with_account(&config.account_name)
            .with_container_name(&config.container)
            .with_http_connector(CountingConnector {
                counter: counter.clone(),
            });
        let endpoint = match (&config.service_url, &config.realm) {
            (Some(service_url), _) => Some(service_url.trim_end_matches('/').to_owned()),
            (None, Some(realm)) if realm != "core.windows.net" => {
                Some(format!("https://{}.blob.{realm}", config.account_name))
            }
            (None, _) => None,
        };
        let allow_http = endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://"));
        if let Some(endpoint) = endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        match &config.credentials {
            AzureCredentials::SharedKey => {
                if let Some(key) = &config.account_key {
                    builder = builder.with_access_key(key.expose());
                }
            }
            AzureCredentials::ClientSecret {
                client_id,
                tenant_id,
                secret,
            } => {
                builder =
                    builder.with_client_secret_authorization(client_id, secret.expose(), tenant_id);
            }
            // object_store's automatic chain: environment, workload identity, managed identity.
            AzureCredentials::DefaultCredentials => {}
        }
        let store = builder
            .with_client_options(client_options(allow_http, false))
            .build()
            .map_err(|source| StorageError::ObjectStore {
                key: url.clone(),
                source,
            })?;
        Ok(Self::new(
            Arc::new(store),
            &config.root_directory,
            url,
            AZURE_DELETE_BATCH,
        ))
    }

    /// Google Cloud Storage, configured like the registry's `gcs` driver.
    pub fn gcs(config: &GcsConfig, counter: &RequestCounter) -> Result<Self, StorageError> {
        let url = format!("gs://{}/{}", config.bucket, config.root_directory);
        let mut builder = GoogleCloudStorageBuilder::from_env()
            .with_bucket_name(&config.bucket)
            .with_http_connector(CountingConnector {
                counter: counter.clone(),
            });
        if let Some(keyfile) = &config.keyfile {
            builder = builder.with_service_account_path(keyfile.to_string_lossy());
        }
        if let Some(json) = &config.credentials_json {
            builder = builder.with_service_account_key(json.expose());
        }
        let store = builder
            .with_client_options(client_options(false, false))
            .build()
            .map_err(|source| StorageError::ObjectStore {
                key: url.clone(),
                source,
            })?;
        Ok(Self::new(
            Arc::new(store),
            &config.root_directory,
            url,
            GCS_DELETE_BATCH,
        ))
    }

    fn path(&self, key: &str) -> Result<Path, StorageError> {
        let full = format!("{}{}", self.root, key.trim_end_matches('/'));
        Path::parse(&full).map_err(|e| StorageError::ObjectStore {
            key: key.to_owned(),
            source: e.into(),
        })
    }

    /// The registry key of a listed object: its location without the root.
    fn key_of(root: &str, location: &Path) -> String {
        let location = location.as_ref();
        location.strip_prefix(root).unwrap_or(location).to_owned()
    }

    fn meta(root: &str, meta: object_store::ObjectMeta) -> ObjectMeta {
        ObjectMeta {
            key: Self::key_of(root, &meta.location),
            size: meta.size,
            modified: SystemTime::from(meta.last_modified),
        }
    }
}

fn client_options(allow_http: bool, skip_verify: bool) -> ClientOptions {
    ClientOptions::new()
        .with_allow_http(allow_http)
        .with_allow_invalid_certificates(skip_verify)
}

fn error(key: &str, source: object_store::Error) -> StorageError {
    match source {
        object_store::Error::NotFound { .. } => StorageError::NotFound {
            key: key.to_owned(),
        },
        source => StorageError::ObjectStore {
            key: key.to_owned(),
            source,
        },
    }
}

impl fmt::Debug for ObjectStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectStorage")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for ObjectStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

impl Storage for ObjectStorage {
    fn list(&self, prefix: &str) -> BoxStream<'static, Result<ObjectMeta, StorageError>> {
        let path = match self.path(prefix) {
            Ok(path) => path,
            Err(e) => return stream::once(async { Err(e) }).boxed(),
        };
        let root = self.root.clone();
        let prefix = prefix.to_owned();
        self.store
            .list(Some(&path))
            .map(move |item| {
                item.map(|meta| Self::meta(&root, meta))
                    .map_err(|e| error(&prefix, e))
            })
            .boxed()
    }

    fn list_dir(&self, prefix: &str) -> BoxFuture<'_, Result<Listing, StorageError>> {
        let prefix = prefix.to_owned();
        Box::pin(async move {
            let path = self.path(&prefix)?;
            let result = self
                .store
                .list_with_delimiter(Some(&path))
                .await
                .map_err(|e| error(&prefix, e))?;
            Ok(Listing {
                objects: result
                    .objects
                    .into_iter()
                    .map(|meta| Self::meta(&self.root, meta))
                    .collect(),
                prefixes: result
                    .common_prefixes
                    .iter()
                    .map(|p| format!("{}/", Self::key_of(&self.root, p)))
                    .collect(),
            })
        })
    }

    fn get(&self, key: &str) -> BoxFuture<'_, Result<Vec<u8>, StorageError>> {
        let key = key.to_owned();
        Box::pin(async move {
            let path = self.path(&key)?;
            let result = self.store.get(&path).await.map_err(|e| error(&key, e))?;
            let bytes = result.bytes().await.map_err(|e| error(&key, e))?;
            Ok(bytes.to_vec())
        })
    }

    fn delete(&self, keys: Vec<String>) -> BoxFuture<'_, Vec<Result<(), StorageError>>> {
        Box::pin(async move {
            // Object stores have no directories: a directory key names nothing to delete.
            let mut paths = Vec::with_capacity(keys.len());
            let mut outcome: Vec<Option<Result<(), StorageError>>> = Vec::with_capacity(keys.len());
            let mut index_of = HashMap::with_capacity(keys.len());
            for (i, key) in keys.iter().enumerate() {
                if key.ends_with('/') {
                    outcome.push(Some(Ok(())));
                    continue;
                }
                match self.path(key) {
                    Ok(path) => {
                        index_of.insert(path.clone(), i);
                        paths.push(Ok(path));
                        outcome.push(None);
                    }
                    Err(e) => outcome.push(Some(Err(e))),
                }
            }
            let mut unattributed = None;
            let mut results = self.store.delete_stream(stream::iter(paths).boxed());
            while let Some(result) = results.next().await {
                let (path, result) = match result {
                    Ok(path) => (path, Ok(())),
                    // Already gone: what we wanted.
                    Err(object_store::Error::NotFound { path, .. }) => match Path::parse(&path) {
                        Ok(path) => (path, Ok(())),
                        Err(_) => continue,
                    },
                    Err(e) => match failed_path(&e).and_then(|p| index_of.get(&p)) {
                        Some(&i) => {
                            outcome[i] = Some(Err(error(&keys[i], e)));
                            continue;
                        }
                        // A whole batch failed: every key it carried that has no result yet.
                        None => {
                            unattributed = Some(e.to_string());
                            continue;
                        }
                    },
                };
                if let Some(&i) = index_of.get(&path) {
                    outcome[i] = Some(result);
                }
            }
            outcome
                .into_iter()
                .zip(&keys)
                .map(|(result, key)| {
                    result.unwrap_or_else(|| {
                        Err(StorageError::DeleteFailed {
                            key: key.clone(),
                            reason: unattributed
                                .clone()
                                .unwrap_or_else(|| "the store did not confirm it".to_owned()),
                        })
                    })
                })
                .collect()
        })
    }

    fn delete_batch_size(&self) -> usize {
        self.delete_batch
    }
}

/// The object a per-key delete error names, when object_store says.
fn failed_path(error: &object_store::Error) -> Option<Path> {
    match error {
        object_store::Error::Precondition { path, .. }
        | object_store::Error::AlreadyExists { path, .. }
        | object_store::Error::PermissionDenied { path, .. }
        | object_store::Error::Unauthenticated { path, .. } => Path::parse(path).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;
    use object_store::PutPayload;
    use object_store::memory::InMemory;

    async fn storage(keys: &[&str]) -> ObjectStorage {
        let store = InMemory::new();
        for key in keys {
            store
                .put(&Path::parse(key).unwrap(), PutPayload::from_static(b"x"))
                .await
                .unwrap();
        }
        ObjectStorage::new(Arc::new(store), "/root/dir/", "mem://".into(), 2)
    }

    #[tokio::test]
    async fn keys_are_relative_to_the_root_directory() {
        let s = storage(&["root/dir/a/b/c", "root/dir/a/d", "root/other/x"]).await;
        let mut keys: Vec<String> = s.list("a/").map_ok(|m| m.key).try_collect().await.unwrap();
        keys.sort();
        assert_eq!(keys, ["a/b/c", "a/d"]);

        let listing = s.list_dir("a/").await.unwrap();
        assert_eq!(listing.prefixes, ["a/b/"]);
        assert_eq!(listing.objects.len(), 1);
        assert_eq!(listing.objects[0].key, "a/d");
        assert_eq!(s.get("a/d").await.unwrap(), b"x");
        assert!(matches!(
            s.get("a/missing").await,
            Err(StorageError::NotFound { .. })
        ));
    }

    #[tokio::test]
    async fn deleting_reports_each_key_and_gone_is_deleted() {
        let s = storage(&["root/dir/a/b/c", "root/dir/a/d"]).await;
        let results = s
            .delete(vec!["a/b/c".into(), "a/gone".into(), "a/b/".into()])
            .await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        let left: Vec<String> = s.list("a/").map_ok(|m| m.key).try_collect().await.unwrap();
        assert_eq!(left, ["a/d"]);
    }
}
