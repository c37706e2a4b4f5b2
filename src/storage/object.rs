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
//! - every request is counted by the [`CountingConnector`];
//! - S3 multipart uploads, which listings do not show, are listed (ListMultipartUploads, signed
//!   with object_store's SigV4 authorizer) and aborted, so that stale uploads stop being billed.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::{self, BoxStream};
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey, AwsAuthorizer};
use object_store::azure::MicrosoftAzureBuilder;
use object_store::client::{HttpClient, HttpConnector, HttpRequestBody};
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::multipart::MultipartStore;
use object_store::path::Path;
use object_store::{
    ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion,
};

use super::requests::{CountingConnector, RequestCounter};
use super::{Listing, MultipartUpload, ObjectMeta, PutCondition, Storage, StorageError, Version};
use crate::config::{AzureConfig, AzureCredentials, GcsConfig, S3Config};
use crate::report::error_chain;

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
    /// S3 only: what listing and aborting multipart uploads needs.
    multipart: Option<S3Multipart>,
    /// The store starts a listing at a key and lists in byte order (S3 general-purpose buckets;
    /// not S3 Express directory buckets, which list unordered and which object_store then lists
    /// whole and filters).
    lists_in_order_from_key: bool,
}

/// S3's multipart-upload API, which `ObjectStore` does not cover.
struct S3Multipart {
    s3: Arc<AmazonS3>,
    /// Requests through the counting connector.
    http: HttpClient,
    /// `https://s3.<region>.amazonaws.com/<bucket>`, `<endpoint>/<bucket>`, or the
    /// virtual-hosted form.
    bucket_url: String,
    region: String,
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
            multipart: None,
            lists_in_order_from_key: false,
        }
    }

    /// S3 or an S3-compatible server, configured like the registry's `s3` driver.
    pub fn s3(config: &S3Config, counter: &RequestCounter) -> Result<Self, StorageError> {
        let url = format!("s3://{}/{}", config.bucket, config.root_directory);
        // Static keys in the config are all the registry uses; without them, the AWS credential
        // chain from the environment (keys, web identity, ECS, instance metadata).
        let static_keys = config.access_key.as_deref().is_some_and(|k| !k.is_empty());
        let builder = if static_keys {
            AmazonS3Builder::new()
        } else {
            AmazonS3Builder::from_env()
        };
        let mut builder = builder
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
            // object_store takes a virtual-hosted endpoint as the bucket's own URL; the registry
            // puts the bucket in front of the host.
            let endpoint = match (config.force_path_style, endpoint.split_once("://")) {
                (Some(false), Some((scheme, host))) => {
                    format!("{scheme}://{}.{host}", config.bucket)
                }
                _ => endpoint,
            };
            builder = builder.with_endpoint(endpoint);
        }
        // Path style unless the config asks for virtual-hosted style: it works on AWS and on every
        // S3-compatible server, which often lack wildcard DNS.
        builder = builder.with_virtual_hosted_style_request(config.force_path_style == Some(false));
        if let Some(key) = config.access_key.as_deref().filter(|_| static_keys) {
            builder = builder.with_access_key_id(key);
            if let Some(secret) = &config.secret_key {
                builder = builder.with_secret_access_key(secret.expose());
            }
            if let Some(token) = &config.session_token {
                builder = builder.with_token(token.expose());
            }
        }
        let options = client_options(allow_http, config.skip_verify);
        let builder = builder.with_client_options(options.clone());
        let setting = |key| builder.get_config_value(&key);
        let region = setting(AmazonS3ConfigKey::Region).unwrap_or_else(|| "us-east-1".to_owned());
        let virtual_hosted =
            setting(AmazonS3ConfigKey::VirtualHostedStyleRequest).is_some_and(|v| v == "true");
        let bucket_url = match (setting(AmazonS3ConfigKey::Endpoint), virtual_hosted) {
            // object_store's convention: a virtual-hosted endpoint already names the bucket.
            (Some(endpoint), true) => endpoint,
            (Some(endpoint), false) => {
                format!("{}/{}", endpoint.trim_end_matches('/'), config.bucket)
            }
            (None, true) => format!("https://{}.s3.{region}.amazonaws.com", config.bucket),
            (None, false) => format!("https://s3.{region}.amazonaws.com/{}", config.bucket),
        };
        let failed = |source| StorageError::ObjectStore {
            key: url.clone(),
            source,
        };
        let http = CountingConnector {
            counter: counter.clone(),
        }
        .connect(&options)
        .map_err(failed)?;
        let express = config.bucket.ends_with("--x-s3")
            || builder
                .get_config_value(&AmazonS3ConfigKey::S3Express)
                .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let s3 = Arc::new(builder.build().map_err(failed)?);
        let mut storage = Self::new(
            Arc::clone(&s3) as Arc<dyn ObjectStore>,
            &config.root_directory,
            url,
            S3_DELETE_BATCH,
        );
        storage.multipart = Some(S3Multipart {
            s3,
            http,
            bucket_url,
            region,
        });
        storage.lists_in_order_from_key = !express;
        Ok(storage)
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
            .build();
        Self::built(store, &config.root_directory, url, AZURE_DELETE_BATCH)
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
        // The registry prefers the key file when both are given.
        if let (None, Some(json)) = (&config.keyfile, &config.credentials_json) {
            builder = builder.with_service_account_key(json.expose());
        }
        let store = builder
            .with_client_options(client_options(false, false))
            .build();
        Self::built(store, &config.root_directory, url, GCS_DELETE_BATCH)
    }

    /// Wraps what a builder built, or names the storage in its error.
    fn built(
        store: object_store::Result<impl ObjectStore>,
        root: &str,
        url: String,
        delete_batch: usize,
    ) -> Result<Self, StorageError> {
        match store {
            Ok(store) => Ok(Self::new(Arc::new(store), root, url, delete_batch)),
            Err(source) => Err(StorageError::ObjectStore { key: url, source }),
        }
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

    /// An object_store listing of `prefix` as registry objects.
    fn objects(
        &self,
        prefix: &str,
        listing: BoxStream<'static, object_store::Result<object_store::ObjectMeta>>,
    ) -> BoxStream<'static, Result<ObjectMeta, StorageError>> {
        let root = self.root.clone();
        let prefix = prefix.to_owned();
        listing
            .map(move |item| {
                item.map(|meta| Self::meta(&root, meta))
                    .map_err(|e| error(&prefix, e))
            })
            .boxed()
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
        object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. } => {
            StorageError::PreconditionFailed {
                key: key.to_owned(),
            }
        }
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
        match self.path(prefix) {
            Ok(path) => self.objects(prefix, self.store.list(Some(&path))),
            Err(e) => stream::once(async { Err(e) }).boxed(),
        }
    }

    fn list_after(
        &self,
        prefix: &str,
        start_after: &str,
    ) -> Option<BoxStream<'static, Result<ObjectMeta, StorageError>>> {
        // S3 starts a listing at a key (`start-after`) and lists in byte order; object_store
        // emulates it elsewhere by listing everything and dropping what comes before.
        if !self.lists_in_order_from_key {
            return None;
        }
        let paths = self
            .path(prefix)
            .and_then(|p| Ok((p, self.path(start_after)?)));
        Some(match paths {
            Ok((path, offset)) => {
                self.objects(prefix, self.store.list_with_offset(Some(&path), &offset))
            }
            Err(e) => stream::once(async { Err(e) }).boxed(),
        })
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

    fn head(&self, key: &str) -> BoxFuture<'_, Result<Option<ObjectMeta>, StorageError>> {
        let key = key.to_owned();
        Box::pin(async move {
            let path = self.path(&key)?;
            match self.store.head(&path).await {
                Ok(meta) => Ok(Some(Self::meta(&self.root, meta))),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(error(&key, e)),
            }
        })
    }

    fn get_versioned(&self, key: &str) -> BoxFuture<'_, Result<(Vec<u8>, Version), StorageError>> {
        let key = key.to_owned();
        Box::pin(async move {
            let path = self.path(&key)?;
            let result = self.store.get(&path).await.map_err(|e| error(&key, e))?;
            let e_tag = result
                .meta
                .e_tag
                .clone()
                .ok_or_else(|| StorageError::ListFailed {
                    key: key.clone(),
                    reason: "the storage gave no ETag, so it cannot be updated conditionally"
                        .to_owned(),
                })?;
            let bytes = result.bytes().await.map_err(|e| error(&key, e))?;
            Ok((bytes.to_vec(), Version(e_tag)))
        })
    }

    fn put(
        &self,
        key: &str,
        content: Vec<u8>,
        condition: PutCondition,
    ) -> BoxFuture<'_, Result<Version, StorageError>> {
        let key = key.to_owned();
        Box::pin(async move {
            let path = self.path(&key)?;
            let mode = match condition {
                PutCondition::Overwrite => PutMode::Overwrite,
                PutCondition::Absent => PutMode::Create,
                PutCondition::Matches(Version(e_tag)) => PutMode::Update(UpdateVersion {
                    e_tag: Some(e_tag),
                    version: None,
                }),
            };
            let result = self
                .store
                .put_opts(&path, PutPayload::from(content), PutOptions::from(mode))
                .await
                .map_err(|e| error(&key, e))?;
            Ok(Version(result.e_tag.unwrap_or_default()))
        })
    }

    fn rename(&self, from: &str, to: &str) -> BoxFuture<'_, Result<u64, StorageError>> {
        let (from, to) = (from.to_owned(), to.to_owned());
        Box::pin(async move {
            let (source, target) = (self.path(&from)?, self.path(&to)?);
            // Server-side copy; then make sure the copy is whole before the original goes (an
            // Azure copy may still be pending when the call returns).
            let original = self
                .store
                .head(&source)
                .await
                .map_err(|e| error(&from, e))?;
            self.store
                .copy(&source, &target)
                .await
                .map_err(|e| error(&to, e))?;
            let copy = self.store.head(&target).await.map_err(|e| error(&to, e))?;
            if copy.size != original.size {
                return Err(StorageError::DeleteFailed {
                    key: from,
                    reason: format!(
                        "its copy {to} has {} bytes instead of {}; the original is kept",
                        copy.size, original.size
                    ),
                });
            }
            self.store
                .delete(&source)
                .await
                .map_err(|e| error(&from, e))?;
            Ok(original.size)
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
                            unattributed = Some(batch_failure(&e));
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

    fn multipart_uploads(
        &self,
        prefix: &str,
    ) -> BoxFuture<'_, Result<Vec<MultipartUpload>, StorageError>> {
        let prefix = prefix.to_owned();
        Box::pin(async move {
            let Some(multipart) = &self.multipart else {
                return Ok(Vec::new());
            };
            let full_prefix = format!("{}{prefix}", self.root);
            let mut uploads = Vec::new();
            let mut markers: Option<(String, String)> = None;
            loop {
                let mut url = format!(
                    "{}?uploads=&prefix={}",
                    multipart.bucket_url,
                    query_encode(&full_prefix)
                );
                if let Some((key, id)) = &markers {
                    url.push_str(&format!(
                        "&key-marker={}&upload-id-marker={}",
                        query_encode(key),
                        query_encode(id)
                    ));
                }
                let page =
                    multipart
                        .get(&url)
                        .await
                        .map_err(|reason| StorageError::ListFailed {
                            key: prefix.clone(),
                            reason: format!("listing multipart uploads: {reason}"),
                        })?;
                let Some(page) = page else {
                    // Skipping aborts is safe: the uploads' objects still go.
                    tracing::warn!("the S3 server does not list multipart uploads; none aborted");
                    return Ok(Vec::new());
                };
                for upload in xml_elements(&page, "Upload") {
                    let field = |name| xml_elements(upload, name).first().map(|t| xml_unescape(t));
                    let (Some(key), Some(upload_id), Some(initiated)) =
                        (field("Key"), field("UploadId"), field("Initiated"))
                    else {
                        continue;
                    };
                    // An unreadable date: keep the upload (treated as just started).
                    let initiated = humantime::parse_rfc3339_weak(&initiated)
                        .unwrap_or_else(|_| SystemTime::now());
                    uploads.push(MultipartUpload {
                        key: key.strip_prefix(&self.root).unwrap_or(&key).to_owned(),
                        upload_id,
                        initiated,
                    });
                }
                let truncated = xml_elements(&page, "IsTruncated").first() == Some(&"true");
                let next = |name| xml_elements(&page, name).first().map(|t| xml_unescape(t));
                match (truncated, next("NextKeyMarker"), next("NextUploadIdMarker")) {
                    (true, Some(key), Some(id)) => {
                        let next = Some((key, id));
                        if next == markers {
                            return Err(StorageError::ListFailed {
                                key: prefix.clone(),
                                reason: "listing multipart uploads: the server repeats a page"
                                    .to_owned(),
                            });
                        }
                        markers = next;
                    }
                    _ => break,
                }
            }
            Ok(uploads)
        })
    }

    fn check_listing(&self, prefix: &str) -> BoxFuture<'_, Result<(), StorageError>> {
        let prefix = prefix.to_owned();
        Box::pin(async move {
            let Some(multipart) = &self.multipart else {
                return Ok(());
            };
            // object_store stops paging when a page has no continuation token, even if it says it
            // is truncated: a server answering ListObjectsV2 the V1 way would have us see only the
            // first 1,000 keys of each listing, and collect what the rest keeps alive.
            let url = format!(
                "{}?list-type=2&max-keys=1&prefix={}",
                multipart.bucket_url,
                query_encode(&format!("{}{prefix}", self.root))
            );
            let refuse = |reason: String| StorageError::ListFailed {
                key: prefix.clone(),
                reason,
            };
            let page = multipart.get(&url).await.map_err(refuse)?;
            let page =
                page.ok_or_else(|| refuse("the server does not implement ListObjectsV2".into()))?;
            let truncated = xml_elements(&page, "IsTruncated").first() == Some(&"true");
            let token = !xml_elements(&page, "NextContinuationToken").is_empty();
            if !page.contains("<ListBucketResult") || (truncated && !token) {
                return Err(refuse(
                    "the server's ListObjectsV2 answer cannot be paged (no continuation token): \
                     regsweep cannot list this storage completely"
                        .to_owned(),
                ));
            }
            Ok(())
        })
    }

    fn abort_multipart_upload(
        &self,
        upload: &MultipartUpload,
    ) -> BoxFuture<'_, Result<(), StorageError>> {
        let upload = upload.clone();
        Box::pin(async move {
            let Some(multipart) = &self.multipart else {
                return Err(StorageError::DeleteFailed {
                    key: upload.key,
                    reason: "this storage has no multipart uploads".to_owned(),
                });
            };
            let path = self.path(&upload.key)?;
            match multipart.s3.abort_multipart(&path, &upload.upload_id).await {
                // NoSuchUpload: completed or aborted meanwhile.
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(error(&upload.key, e)),
            }
        })
    }
}

impl S3Multipart {
    /// A signed GET, retried on throttling and server errors like object_store's own requests.
    /// `None` when the server does not implement the request (501).
    async fn get(&self, url: &str) -> Result<Option<String>, String> {
        let credentials = self
            .s3
            .credentials()
            .get_credential()
            .await
            .map_err(|e| e.to_string())?;
        let mut delay = std::time::Duration::from_millis(100);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut request = http::Request::get(url)
                .body(HttpRequestBody::empty())
                .map_err(|e| e.to_string())?;
            AwsAuthorizer::new(&credentials, "s3", &self.region)
                .try_authorize(&mut request, None)
                .map_err(|e| e.to_string())?;
            let outcome = match self.http.execute(request).await {
                Ok(response) => {
                    let status = response.status();
                    let body = response
                        .into_body()
                        .bytes()
                        .await
                        .map_err(|e| e.to_string())?;
                    let text = String::from_utf8_lossy(&body).into_owned();
                    if status.is_success() {
                        return Ok(Some(text));
                    }
                    if status.as_u16() == 501 {
                        return Ok(None);
                    }
                    // Only the code and message: some error bodies echo the signed request,
                    // session token included.
                    let field = |name| xml_elements(&text, name).first().map(|t| xml_unescape(t));
                    let reason = format!(
                        "{status} {}: {}",
                        field("Code").unwrap_or_default(),
                        field("Message").unwrap_or_default()
                    );
                    (status.is_server_error() || status.as_u16() == 429, reason)
                }
                // Connection failures are retried a few times only: a wrong endpoint should
                // fail fast.
                Err(e) => (attempt < 3, format!("GET {url}: {}", error_chain(&e))),
            };
            match outcome {
                (true, _) if attempt < 10 => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(std::time::Duration::from_secs(15));
                }
                (_, reason) => return Err(reason),
            }
        }
    }
}

/// Percent-encodes a query value as SigV4 expects (everything but unreserved characters).
fn query_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The texts of every `<name>…</name>` element (not nested in itself) of an S3 XML answer.
fn xml_elements<'a>(xml: &'a str, name: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{name}>"), format!("</{name}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(&close) else { break };
        out.push(&after[..end]);
        rest = &after[end + close.len()..];
    }
    out
}

fn xml_unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// Why a whole delete batch failed, without the list of every key it carried (object_store puts
/// them all in the error's path, and each key's own error names the key).
fn batch_failure(error: &object_store::Error) -> String {
    match error {
        object_store::Error::PermissionDenied { source, .. } => {
            format!("permission denied: {source}")
        }
        object_store::Error::Unauthenticated { source, .. } => format!("unauthenticated: {source}"),
        object_store::Error::Generic { source, .. } => source.to_string(),
        other => other.to_string(),
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

    #[test]
    fn reads_a_list_multipart_uploads_answer() {
        let xml = "<ListMultipartUploadsResult><IsTruncated>true</IsTruncated>\
            <NextKeyMarker>a&amp;b</NextKeyMarker><Upload><Key>r/x/_uploads/1/data</Key>\
            <UploadId>id-1</UploadId><Initiator><ID>me</ID></Initiator>\
            <Initiated>2026-01-02T03:04:05.000Z</Initiated></Upload><Upload><Key>k2</Key>\
            </Upload></ListMultipartUploadsResult>";
        let uploads = xml_elements(xml, "Upload");
        assert_eq!(uploads.len(), 2);
        assert_eq!(xml_elements(uploads[0], "UploadId"), ["id-1"]);
        assert_eq!(xml_unescape(xml_elements(xml, "NextKeyMarker")[0]), "a&b");
        assert_eq!(
            query_encode("docker/registry v2~"),
            "docker%2Fregistry%20v2~"
        );
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
    async fn conditional_puts_and_renames() {
        let storage = storage(&["root/dir/docker/a"]).await;
        let key = "_regsweep/lock";
        let first = storage
            .put(key, b"one".to_vec(), PutCondition::Absent)
            .await
            .unwrap();
        assert!(matches!(
            storage.put(key, b"x".to_vec(), PutCondition::Absent).await,
            Err(StorageError::PreconditionFailed { .. })
        ));
        let (content, version) = storage.get_versioned(key).await.unwrap();
        assert_eq!((content.as_slice(), &version), (&b"one"[..], &first));
        storage
            .put(key, b"two".to_vec(), PutCondition::Matches(version.clone()))
            .await
            .unwrap();
        assert!(matches!(
            storage
                .put(key, b"x".to_vec(), PutCondition::Matches(version))
                .await,
            Err(StorageError::PreconditionFailed { .. })
        ));
        let moved = storage
            .rename("docker/a", "_regsweep/q/docker/a")
            .await
            .unwrap();
        assert_eq!(moved, 1);
        assert!(matches!(
            storage.get("docker/a").await,
            Err(StorageError::NotFound { .. })
        ));
        assert_eq!(storage.get("_regsweep/q/docker/a").await.unwrap(), b"x");
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
