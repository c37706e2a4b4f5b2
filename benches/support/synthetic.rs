//! A synthetic registry for the scale benchmarks: a [`Storage`] that generates the listing, the tag
//! links and the manifests of a registry of any size on the fly, so that a measurement is regsweep's
//! own memory and time, not a filesystem's or an object store's. Deletions are accepted and
//! recorded ([`Deleted`]); nothing changes.
//!
//! The shape, for `n` blobs: a pool of shared base layers (1 %), then images of nine blobs
//! (manifest, config, seven layers; each image also uses two base layers), four images per
//! repository by default (any number, for one huge repository), repositories in 100 namespaces; every tenth image is a multi-arch index over the two
//! images before it (which are then untagged children); every tenth other image is untagged (its
//! old tag index entry remains); the last 20 % of the blobs are orphans. Every object is as old as
//! the registry is made.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use futures::future::BoxFuture;
use futures::stream::{self, BoxStream, StreamExt};
use roaring::RoaringBitmap;

use regsweep::digest::Digest;
use regsweep::layout;
use regsweep::storage::{Listing, ObjectMeta, PutCondition, Storage, StorageError, Version};

pub const IMAGE_BLOBS: u32 = 9;
/// Images per repository unless [`Shape::images_per_repository`] says otherwise.
pub const IMAGES_PER_REPOSITORY: u32 = 4;
pub const NAMESPACES: u32 = 100;

/// The shape of a synthetic registry of `blobs` blobs.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub blobs: u32,
    pub base_layers: u32,
    pub images: u32,
    pub images_per_repository: u32,
}

/// What an image is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Tagged,
    /// Tagged once; the tag has moved on (its index entry remains).
    Untagged,
    /// A child of the multi-arch index that follows it.
    Child,
    /// A multi-arch index over the two images before it.
    Index,
}

impl Shape {
    pub fn new(blobs: u32) -> Shape {
        let base_layers = (blobs / 100).max(2);
        let images = (blobs - base_layers) / 10 * 8 / IMAGE_BLOBS;
        Shape {
            blobs,
            base_layers,
            images,
            images_per_repository: IMAGES_PER_REPOSITORY,
        }
    }

    /// The same registry with `images` images in each repository (at least one).
    pub fn images_per_repository(self, images: u32) -> Shape {
        Shape {
            images_per_repository: images.max(1),
            ..self
        }
    }

    pub fn repositories(&self) -> u32 {
        self.images.div_ceil(self.images_per_repository)
    }

    pub fn role(&self, image: u32) -> Role {
        match image % 10 {
            3 | 4 if image / 10 * 10 + 5 < self.images => Role::Child,
            5 => Role::Index,
            9 => Role::Untagged,
            _ => Role::Tagged,
        }
    }

    /// The first blob of an image: its manifest.
    pub fn manifest(&self, image: u32) -> u32 {
        self.base_layers + image * IMAGE_BLOBS
    }

    /// Config and layers of an image (an index has none of its own: its eight blob slots are
    /// orphans in all but name, and counted as such).
    pub fn image_blobs(&self, image: u32) -> impl Iterator<Item = u32> {
        let first = self.manifest(image);
        let own = (self.role(image) != Role::Index).then_some(first + 1..first + IMAGE_BLOBS);
        own.into_iter().flatten().chain(self.bases(image))
    }

    /// The two base layers an image uses (blobs below [`Shape::base_layers`]).
    pub fn bases(&self, image: u32) -> [u32; 2] {
        [
            mix(u64::from(image)) as u32 % self.base_layers,
            mix(u64::from(image) + 7) as u32 % self.base_layers,
        ]
    }

    /// What a dry run without `--delete-untagged` must plan to delete: every blob no manifest
    /// references.
    pub fn garbage(&self) -> u64 {
        let mut referenced = roaring::RoaringBitmap::new();
        for image in 0..self.images {
            referenced.insert(self.manifest(image));
            referenced.extend(self.image_blobs(image));
        }
        u64::from(self.blobs) - referenced.len()
    }
}

pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Blob `i`'s digest: its shard is `i % 256` and its last four bytes are `i`, so that a key names
/// its index.
pub fn digest(i: u32) -> Digest {
    let mut bytes = [0u8; 32];
    for (n, chunk) in bytes.chunks_exact_mut(8).enumerate() {
        chunk.copy_from_slice(&mix(u64::from(i) * 4 + n as u64).to_le_bytes());
    }
    bytes[0] = (i % 256) as u8;
    bytes[28..].copy_from_slice(&i.to_le_bytes());
    Digest::from_bytes(bytes)
}

pub fn index_of(digest: &Digest) -> u32 {
    u32::from_le_bytes(digest.as_bytes()[28..].try_into().unwrap())
}

#[derive(Debug, Clone)]
pub struct SyntheticRegistry {
    shape: Shape,
    modified: SystemTime,
    /// What was deleted from it (a sweep's deletions are accepted and recorded, nothing changes).
    pub deleted: Arc<Deleted>,
}

/// The deletions a synthetic registry accepted.
#[derive(Debug, Default)]
pub struct Deleted {
    /// Blob indices.
    pub blobs: Mutex<RoaringBitmap>,
    /// Every other key.
    pub other_keys: AtomicU64,
}

impl std::fmt::Display for SyntheticRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "synthetic registry of {} blobs", self.shape.blobs)
    }
}

impl SyntheticRegistry {
    /// A registry of `shape`, every object modified at `modified`.
    pub fn new(shape: Shape, modified: SystemTime) -> SyntheticRegistry {
        SyntheticRegistry {
            shape,
            modified,
            deleted: Arc::default(),
        }
    }

    pub fn shape(&self) -> Shape {
        self.shape
    }

    fn meta(&self, key: String, size: u64) -> Result<ObjectMeta, StorageError> {
        Ok(ObjectMeta {
            key,
            size,
            modified: self.modified,
        })
    }

    fn repository_name(repository: u32) -> String {
        format!("ns-{}/app-{repository}", repository % NAMESPACES)
    }

    /// The `_layers` links of the base layers the images of repository `repository` use: each
    /// once, as a registry links a blob once per repository.
    fn base_objects(
        &self,
        repository: u32,
        images: std::ops::Range<u32>,
    ) -> Vec<Result<ObjectMeta, StorageError>> {
        let name = Self::repository_name(repository);
        let bases: RoaringBitmap = images.flat_map(|image| self.shape.bases(image)).collect();
        bases
            .iter()
            .map(|base| self.meta(layout::layer_link(&name, &digest(base)), 71))
            .collect()
    }

    /// The objects of one image in repository `repository`, as its listing gives them (its base
    /// layers' links are the repository's: [`SyntheticRegistry::base_objects`]).
    fn image_objects(&self, repository: u32, image: u32) -> Vec<Result<ObjectMeta, StorageError>> {
        let name = Self::repository_name(repository);
        let shape = self.shape;
        let manifest = digest(shape.manifest(image));
        let mut objects = vec![self.meta(layout::revision_link(&name, &manifest), 71)];
        for blob in shape.image_blobs(image).filter(|&b| b >= shape.base_layers) {
            objects.push(self.meta(layout::layer_link(&name, &digest(blob)), 71));
        }
        let tag = format!("t{image}");
        match shape.role(image) {
            Role::Tagged | Role::Index => {
                objects.push(self.meta(layout::tag_current_link(&name, &tag), 71));
                objects.push(self.meta(layout::tag_index_link(&name, &tag, &manifest), 71));
            }
            Role::Untagged => {
                // The tag moved to the image before it.
                let tag = format!("t{}", image - 1);
                objects.push(self.meta(layout::tag_index_link(&name, &tag, &manifest), 71));
            }
            Role::Child => {}
        }
        objects
    }

    fn manifest_document(&self, image: u32) -> String {
        let shape = self.shape;
        let mut json = String::new();
        if shape.role(image) == Role::Index {
            json.push_str(
                r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":["#,
            );
            for (n, child) in [image - 2, image - 1].into_iter().enumerate() {
                let sep = if n == 0 { "" } else { "," };
                let _ = write!(
                    json,
                    r#"{sep}{{"mediaType":"application/vnd.oci.image.manifest.v1+json","size":900,"digest":"{}","platform":{{"architecture":"arch{n}","os":"linux"}}}}"#,
                    digest(shape.manifest(child))
                );
            }
            json.push_str("]}");
            return json;
        }
        let mut blobs = shape.image_blobs(image);
        let config = blobs.next().expect("an image has a config");
        let _ = write!(
            json,
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","size":1500,"digest":"{}"}},"layers":["#,
            digest(config)
        );
        for (n, layer) in blobs.enumerate() {
            let sep = if n == 0 { "" } else { "," };
            let _ = write!(
                json,
                r#"{sep}{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","size":3000000,"digest":"{}"}}"#,
                digest(layer)
            );
        }
        json.push_str("]}");
        json
    }

    fn blob_size(&self, i: u32) -> u64 {
        if i >= self.shape.base_layers && (i - self.shape.base_layers).is_multiple_of(IMAGE_BLOBS) {
            1200
        } else {
            u64::from(mix(u64::from(i)) as u32 % 50_000_000)
        }
    }
}

fn unsupported<T: Send + 'static>(key: &str) -> BoxFuture<'static, Result<T, StorageError>> {
    let key = key.to_owned();
    Box::pin(async move {
        Err(StorageError::ListFailed {
            key,
            reason: "a synthetic registry is read-only".to_owned(),
        })
    })
}

impl Storage for SyntheticRegistry {
    fn list(&self, prefix: &str) -> BoxStream<'static, Result<ObjectMeta, StorageError>> {
        let this = self.clone();
        if let Some(shard) = prefix
            .strip_prefix(layout::SHA256_BLOBS)
            .and_then(|s| u32::from_str_radix(s.trim_end_matches('/'), 16).ok())
        {
            let blobs = self.shape.blobs;
            return stream::iter((shard..blobs).step_by(256))
                .map(move |i| this.meta(layout::blob_data(&digest(i)), this.blob_size(i)))
                .boxed();
        }
        if let Some(namespace) = prefix
            .strip_prefix(layout::REPOSITORIES)
            .and_then(|s| s.strip_prefix("ns-"))
            .and_then(|s| s.trim_end_matches('/').parse::<u32>().ok())
        {
            let shape = self.shape;
            let per_repository = shape.images_per_repository;
            // Image by image: a huge repository's listing is not held whole, here either.
            return stream::iter((namespace..shape.repositories()).step_by(NAMESPACES as usize))
                .flat_map(move |r| {
                    let first = r * per_repository;
                    let images = first..first.saturating_add(per_repository).min(shape.images);
                    let this = this.clone();
                    let bases = this.base_objects(r, images.clone());
                    stream::iter(bases).chain(
                        stream::iter(images)
                            .flat_map(move |image| stream::iter(this.image_objects(r, image))),
                    )
                })
                .boxed();
        }
        stream::empty().boxed()
    }

    fn list_dir(&self, prefix: &str) -> BoxFuture<'_, Result<Listing, StorageError>> {
        let prefixes = match prefix {
            layout::V2 => vec![layout::BLOBS.to_owned(), layout::REPOSITORIES.to_owned()],
            layout::BLOBS => vec![layout::SHA256_BLOBS.to_owned()],
            layout::SHA256_BLOBS => (0..=255u8).map(layout::blob_shard).collect(),
            layout::REPOSITORIES => (0..NAMESPACES)
                .map(|n| format!("{}ns-{n}/", layout::REPOSITORIES))
                .collect(),
            _ => Vec::new(),
        };
        Box::pin(async move {
            Ok(Listing {
                objects: Vec::new(),
                prefixes,
            })
        })
    }

    fn get(&self, key: &str) -> BoxFuture<'_, Result<Vec<u8>, StorageError>> {
        let parsed = layout::parse_repository_key(key);
        let content = if let layout::RepositoryObject::TagCurrent { tag } = parsed.object {
            let image: u32 = tag[1..].parse().expect("a synthetic tag");
            Some(digest(self.shape.manifest(image)).to_string().into_bytes())
        } else if let layout::BlobObject::Data(d) = layout::parse_blob_key(key) {
            let i = index_of(&d);
            (i >= self.shape.base_layers)
                .then(|| self.manifest_document((i - self.shape.base_layers) / IMAGE_BLOBS))
                .map(String::into_bytes)
        } else {
            None
        };
        let key = key.to_owned();
        Box::pin(async move { content.ok_or(StorageError::NotFound { key }) })
    }

    fn head(&self, key: &str) -> BoxFuture<'_, Result<Option<ObjectMeta>, StorageError>> {
        let stored = match layout::parse_blob_key(key) {
            layout::BlobObject::Data(d) if index_of(&d) < self.shape.blobs => self
                .meta(key.to_owned(), self.blob_size(index_of(&d)))
                .map(Some),
            _ => Ok(None),
        };
        Box::pin(async move { stored })
    }

    fn get_versioned(&self, key: &str) -> BoxFuture<'_, Result<(Vec<u8>, Version), StorageError>> {
        unsupported(key)
    }

    fn put(
        &self,
        key: &str,
        _content: Vec<u8>,
        _condition: PutCondition,
    ) -> BoxFuture<'_, Result<Version, StorageError>> {
        unsupported(key)
    }

    fn rename(&self, from: &str, _to: &str) -> BoxFuture<'_, Result<u64, StorageError>> {
        unsupported(from)
    }

    fn delete(&self, keys: Vec<String>) -> BoxFuture<'_, Vec<Result<(), StorageError>>> {
        let mut blobs = self.deleted.blobs.lock().expect("not poisoned");
        let results = keys
            .iter()
            .map(|key| {
                match layout::parse_blob_key(key) {
                    layout::BlobObject::Data(d) => {
                        blobs.insert(index_of(&d));
                    }
                    _ => {
                        self.deleted.other_keys.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(())
            })
            .collect();
        Box::pin(async move { results })
    }

    fn delete_batch_size(&self) -> usize {
        1000
    }
}

/// The process's peak resident set, in bytes.
pub fn peak_rss() -> u64 {
    status_bytes("VmHWM:")
}

/// The resident set now, in bytes.
pub fn rss() -> u64 {
    status_bytes("VmRSS:")
}

fn status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"))
        * 1024
}

/// With `RUST_LOG` set (e.g. `RUST_LOG=regsweep=info`): regsweep's stage logs on stderr, with the
/// resident set logged every 250 ms among them, to tell which stage holds the peak.
pub fn log_stages_and_rss() {
    if std::env::var_os("RUST_LOG").is_none() {
        return;
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    std::thread::spawn(|| {
        loop {
            eprintln!("rss_mib={}", rss() >> 20);
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
    });
}
