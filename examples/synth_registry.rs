//! A synthetic Docker Distribution 2.x storage tree, written directly (no registry process), fast,
//! for benchmarks on millions of blobs.
//!
//! ```text
//! synth_registry --out /tmp/big --blobs 1000000          # /tmp/big/docker/registry/v2/… and /tmp/big/config.yml
//! synth_registry --out s3://bucket/root --endpoint http://127.0.0.1:5000 --blobs 10000
//! ```
//!
//! Images are realistic in shape: a pool of shared base layers (≈1.5 % of the blobs, a few very
//! popular), each image one config, 1–3 base layers and 2–8 layers of its own; schema2 and OCI
//! manifests, Docker manifest lists and OCI indexes with 2–4 platform manifests; tags re-pushed
//! several times (the older revisions stay in the tag's `index/`, untagged, sharing some layers with
//! their successor and owning others); orphan blobs, half of them still linked into a repository
//! (an upload whose manifest never came). Every digest is the real sha256 of the stored bytes and
//! every descriptor size the stored byte count, so the real registry serves the result.
//!
//! stdout gets one JSON object, the ground truth computed while generating (see [`Truth`]);
//! progress goes to stderr. The same seed gives the same tree (contents and keys; mtimes are
//! `now - --age-days`).

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime};

use clap::Parser;
use regsweep::digest::Digest;
use regsweep::layout;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// Jobs travel from the generator to the writers in batches of this many.
const BATCH: usize = 512;
/// At most this many batches wait for a writer (memory stays bounded).
const QUEUE: usize = 64;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "synth_registry",
    about = "Writes a synthetic Docker Distribution 2.x storage tree (filesystem or S3) and prints its ground truth as JSON"
)]
pub struct Args {
    /// DIR (filesystem: DIR/docker/registry/v2/… and DIR/config.yml) or s3://BUCKET[/ROOT].
    #[arg(long)]
    pub out: String,
    /// S3 endpoint, e.g. http://127.0.0.1:5000 (path-style requests).
    #[arg(long)]
    pub endpoint: Option<String>,
    /// S3 region.
    #[arg(long, default_value = "us-east-1")]
    pub region: String,
    /// Total blobs in storage (approximately; the summary says the exact count).
    #[arg(long, default_value_t = 10_000)]
    pub blobs: u64,
    /// Repositories (default: blobs/200, at least 1).
    #[arg(long)]
    pub repos: Option<u64>,
    /// Fraction of blobs that are orphans (referenced by nothing).
    #[arg(long, default_value_t = 0.2)]
    pub garbage: f64,
    /// Fraction of manifests that are untagged (older revisions of re-pushed tags).
    #[arg(long, default_value_t = 0.1)]
    pub untagged: f64,
    /// Fraction of images that are multi-arch (manifest list or OCI index).
    #[arg(long, default_value_t = 0.1)]
    pub multiarch: f64,
    /// Seed: the same seed gives the same tree.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Backdate every file's mtime by this many days (filesystem only).
    #[arg(long, default_value_t = 2.0)]
    pub age_days: f64,
    /// Parallel writers (default: 64 for S3, CPUs × 4 for a filesystem).
    #[arg(long)]
    pub concurrency: Option<usize>,
}

/// One object to store: its key below the storage root (`docker/registry/v2/…`) and its bytes.
struct Job {
    key: String,
    data: Vec<u8>,
}

/// The ground truth, counted while generating.
#[derive(Debug, Default, Clone)]
pub struct Truth {
    pub blobs: u64,
    pub repositories: u64,
    pub tags: u64,
    pub manifests: u64,
    pub manifests_untagged: u64,
    pub objects: u64,
    pub layer_links: u64,
    pub garbage_blobs: u64,
    pub garbage_blobs_untagged: u64,
    pub bytes: u64,
    pub seconds: f64,
}

impl Truth {
    pub fn to_json(&self) -> Value {
        let list_pages = self.objects.div_ceil(1000);
        json!({
            "blobs": self.blobs,
            "repositories": self.repositories,
            "tags": self.tags,
            "manifests": self.manifests,
            "manifests_untagged": self.manifests_untagged,
            "objects": self.objects,
            "layer_links": self.layer_links,
            "garbage_blobs": self.garbage_blobs,
            "garbage_blobs_untagged": self.garbage_blobs_untagged,
            "bytes": self.bytes,
            "min_requests": {
                "list_pages": list_pages,
                "tag_links": self.tags,
                "manifests": self.manifests,
                "total": list_pages + self.tags + self.manifests,
            },
            "seconds": (self.seconds * 1000.0).round() / 1000.0,
        })
    }
}

/// The command line: parses `args` (without the program name), writes, returns the ground truth.
pub fn run_cli<I, S>(args: I) -> Result<Truth, String>
where
    I: IntoIterator<Item = S>,
    S: Into<std::ffi::OsString> + Clone,
{
    let args = Args::try_parse_from(
        std::iter::once(std::ffi::OsString::from("synth_registry"))
            .chain(args.into_iter().map(Into::into)),
    )
    .map_err(|e| e.to_string())?;
    run(&args)
}

pub fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(truth) => {
            println!("{}", truth.to_json());
            std::process::ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("synth_registry: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Writes the tree `args` describes and returns its ground truth.
pub fn run(args: &Args) -> Result<Truth, String> {
    for (name, value) in [
        ("--garbage", args.garbage),
        ("--untagged", args.untagged),
        ("--multiarch", args.multiarch),
    ] {
        if !(0.0..=1.0).contains(&value) {
            return Err(format!("{name} {value}: must be a fraction in [0, 1]"));
        }
    }
    if args.untagged >= 0.95 {
        return Err("--untagged must be below 0.95".to_owned());
    }
    if args.blobs == 0 {
        return Err("--blobs must be at least 1".to_owned());
    }
    if !args.age_days.is_finite() || args.age_days < 0.0 {
        return Err("--age-days must be a non-negative number".to_owned());
    }
    let start = Instant::now();
    let mut truth = if let Some(rest) = args.out.strip_prefix("s3://") {
        write_s3(args, rest)?
    } else {
        if args.endpoint.is_some() {
            return Err("--endpoint is for s3:// outputs only".to_owned());
        }
        write_fs(args, Path::new(&args.out))?
    };
    truth.seconds = start.elapsed().as_secs_f64();
    Ok(truth)
}

// ---------------------------------------------------------------------------------------------
// Generation
// ---------------------------------------------------------------------------------------------

/// SplitMix64: small, fast, deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

/// A blob as descriptors name it.
#[derive(Debug, Clone, Copy)]
struct Blob {
    id: u32,
    digest: Digest,
    size: u64,
}

impl Blob {
    fn digest_string(&self) -> String {
        format!("sha256:{}", self.digest.hex())
    }
}

/// What references a blob: nothing, only manifests no tag reaches, or a manifest a tag reaches.
const UNREFERENCED: u8 = 0;
const UNTAGGED_ONLY: u8 = 1;
const LIVE: u8 = 2;

#[derive(Debug, Clone, Copy)]
struct Platform {
    architecture: &'static str,
    variant: Option<&'static str>,
}

const PLATFORMS: [Platform; 5] = [
    Platform {
        architecture: "amd64",
        variant: None,
    },
    Platform {
        architecture: "arm64",
        variant: Some("v8"),
    },
    Platform {
        architecture: "arm",
        variant: Some("v7"),
    },
    Platform {
        architecture: "ppc64le",
        variant: None,
    },
    Platform {
        architecture: "s390x",
        variant: None,
    },
];

impl Platform {
    fn json(&self) -> Value {
        match self.variant {
            Some(variant) => {
                json!({"architecture": self.architecture, "os": "linux", "variant": variant})
            }
            None => json!({"architecture": self.architecture, "os": "linux"}),
        }
    }
}

/// The layers of a single-platform image (what a re-push partly keeps).
#[derive(Debug, Clone, Default)]
struct Layers {
    base: Vec<Blob>,
    own: Vec<Blob>,
}

/// The previous revision of a tag, for the next push to the same tag.
enum Previous {
    Image { oci: bool, layers: Layers },
    Index { oci: bool },
}

/// Generates the tree in a deterministic order, handing every object to `emit` in batches.
struct Generator<'a> {
    rng: Rng,
    seed: u64,
    emit: &'a mut dyn FnMut(Vec<Job>) -> bool,
    batch: Vec<Job>,
    aborted: bool,
    /// Per blob: [`UNREFERENCED`], [`UNTAGGED_ONLY`] or [`LIVE`].
    state: Vec<u8>,
    base_pool: Vec<Blob>,
    /// Blobs of the current repository that already have a `_layers` link.
    linked: HashSet<u32>,
    images: u64,
    truth: Truth,
    untagged: f64,
    multiarch: f64,
}

impl Generator<'_> {
    fn push(&mut self, key: String, data: Vec<u8>) {
        self.truth.objects += 1;
        self.batch.push(Job { key, data });
        if self.batch.len() >= BATCH {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.batch.is_empty() || self.aborted {
            self.batch.clear();
            return;
        }
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH));
        if !(self.emit)(batch) {
            self.aborted = true;
        }
    }

    fn new_blob(&mut self, data: Vec<u8>) -> Blob {
        let digest = Digest::from_bytes(Sha256::digest(&data).into());
        let id = u32::try_from(self.state.len()).expect("fewer than 4 billion blobs");
        self.state.push(UNREFERENCED);
        let size = data.len() as u64;
        self.truth.blobs += 1;
        self.truth.bytes += size;
        self.push(layout::blob_data(&digest), data);
        Blob { id, digest, size }
    }

    fn new_layer(&mut self) -> Blob {
        let len = self.rng.range(64, 512) as usize;
        let data = self.rng.bytes(len);
        self.new_blob(data)
    }

    fn reference(&mut self, blob: &Blob, live: bool) {
        let state = &mut self.state[blob.id as usize];
        *state = (*state).max(if live { LIVE } else { UNTAGGED_ONLY });
    }

    fn link_layer(&mut self, repo: &str, blob: &Blob) {
        if self.linked.insert(blob.id) {
            self.truth.layer_links += 1;
            self.push(layout::layer_link(repo, &blob.digest), link(&blob.digest));
        }
    }

    fn revision(&mut self, repo: &str, manifest: &Blob, live: bool) {
        self.reference(manifest, live);
        self.truth.manifests += 1;
        if !live {
            self.truth.manifests_untagged += 1;
        }
        self.push(
            layout::revision_link(repo, &manifest.digest),
            link(&manifest.digest),
        );
    }

    /// A base layer, popular ones more often (quadratic skew towards the front of the pool).
    fn base_layer(&mut self) -> Blob {
        let u = self.rng.unit();
        let i = ((u * u) * self.base_pool.len() as f64) as usize;
        self.base_pool[i.min(self.base_pool.len() - 1)]
    }

    fn config(&mut self, repo: &str, platform: &Platform, layers: &Layers) -> Blob {
        self.images += 1;
        let diff_ids: Vec<String> = layers
            .base
            .iter()
            .chain(&layers.own)
            .map(Blob::digest_string)
            .collect();
        let config = json!({
            "architecture": platform.architecture,
            "os": "linux",
            "created": "2026-01-01T00:00:00Z",
            "config": {
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Labels": {"synth.image": format!("{}-{}", self.seed, self.images), "synth.repository": repo},
            },
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        self.new_blob(serde_json::to_vec(&config).expect("JSON"))
    }

    /// One single-platform image: config, layers, manifest, all linked into `repo`. A re-push
    /// (`previous`) keeps the base layers and a prefix of the previous image's own layers.
    fn image(
        &mut self,
        repo: &str,
        oci: bool,
        live: bool,
        platform: &Platform,
        previous: Option<&Layers>,
    ) -> (Blob, Layers) {
        let mut layers = Layers::default();
        match previous {
            Some(previous) => {
                layers.base = previous.base.clone();
                let keep = self.rng.range(0, previous.own.len() as u64 - 1) as usize;
                layers.own = previous.own[..keep].to_vec();
            }
            None => {
                for _ in 0..self.rng.range(1, 3) {
                    let base = self.base_layer();
                    if !layers.base.iter().any(|b| b.id == base.id) {
                        layers.base.push(base);
                    }
                }
            }
        }
        let target = (self.rng.range(2, 8) as usize).max(layers.own.len() + 1);
        while layers.own.len() < target {
            let layer = self.new_layer();
            layers.own.push(layer);
        }
        let config = self.config(repo, platform, &layers);
        let (manifest_type, config_type, layer_type) = if oci {
            (OCI_MANIFEST, OCI_CONFIG, OCI_LAYER)
        } else {
            (DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER)
        };
        let descriptors: Vec<Value> = layers
            .base
            .iter()
            .chain(&layers.own)
            .map(|b| json!({"mediaType": layer_type, "size": b.size, "digest": b.digest_string()}))
            .collect();
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": {"mediaType": config_type, "size": config.size, "digest": config.digest_string()},
            "layers": descriptors,
        });
        let all: Vec<Blob> = std::iter::once(config)
            .chain(layers.base.iter().copied())
            .chain(layers.own.iter().copied())
            .collect();
        for blob in &all {
            self.reference(blob, live);
            self.link_layer(repo, blob);
        }
        let manifest = self.new_blob(serde_json::to_vec(&manifest).expect("JSON"));
        self.revision(repo, &manifest, live);
        (manifest, layers)
    }

    /// A multi-arch image: 2–4 platform images and the list (Docker) or index (OCI) naming them.
    fn index(&mut self, repo: &str, oci: bool, live: bool) -> Blob {
        let count = self.rng.range(2, 4) as usize;
        let (index_type, child_type) = if oci {
            (OCI_INDEX, OCI_MANIFEST)
        } else {
            (DOCKER_LIST, DOCKER_MANIFEST)
        };
        let mut children = Vec::with_capacity(count);
        for platform in &PLATFORMS[..count] {
            let (child, _) = self.image(repo, oci, live, platform, None);
            children.push(json!({
                "mediaType": child_type,
                "size": child.size,
                "digest": child.digest_string(),
                "platform": platform.json(),
            }));
        }
        let index = json!({"schemaVersion": 2, "mediaType": index_type, "manifests": children});
        let index = self.new_blob(serde_json::to_vec(&index).expect("JSON"));
        self.revision(repo, &index, live);
        index
    }

    /// One push to a tag: a re-push keeps the kind of what it replaces.
    fn push_revision(
        &mut self,
        repo: &str,
        live: bool,
        previous: Option<&Previous>,
    ) -> (Blob, Previous) {
        let (multi, oci) = match previous {
            Some(Previous::Image { oci, .. }) => (false, *oci),
            Some(Previous::Index { oci }) => (true, *oci),
            None => (self.rng.chance(self.multiarch), self.rng.chance(0.5)),
        };
        if multi {
            (self.index(repo, oci, live), Previous::Index { oci })
        } else {
            let before = match previous {
                Some(Previous::Image { layers, .. }) => Some(layers),
                _ => None,
            };
            let (manifest, layers) = self.image(repo, oci, live, &PLATFORMS[0], before);
            (manifest, Previous::Image { oci, layers })
        }
    }

    /// A tag: 1 + k pushes (k older revisions, untagged, stay in `index/`).
    fn tag(&mut self, repo: &str, tag: &str) {
        let mut revisions = 1;
        while revisions < 5 && self.rng.chance(self.untagged) {
            revisions += 1;
        }
        let mut previous: Option<Previous> = None;
        for i in 0..revisions {
            let live = i + 1 == revisions;
            let (manifest, this) = self.push_revision(repo, live, previous.as_ref());
            self.push(
                layout::tag_index_link(repo, tag, &manifest.digest),
                link(&manifest.digest),
            );
            if live {
                self.push(layout::tag_current_link(repo, tag), link(&manifest.digest));
            }
            previous = Some(this);
        }
        self.truth.tags += 1;
    }

    fn orphan(&mut self, repo: &str) {
        let blob = if self.rng.chance(0.15) {
            self.images += 1;
            let config = json!({
                "architecture": "amd64",
                "os": "linux",
                "config": {"Labels": {"synth.orphan": format!("{}-{}", self.seed, self.images)}},
                "rootfs": {"type": "layers", "diff_ids": []},
            });
            self.new_blob(serde_json::to_vec(&config).expect("JSON"))
        } else {
            self.new_layer()
        };
        // Half of them are linked into a repository: uploads whose manifest never came.
        if self.rng.chance(0.5) {
            self.link_layer(repo, &blob);
        }
    }
}

/// `sha256:<hex>`: the content of every link file (71 bytes, no newline).
fn link(digest: &Digest) -> Vec<u8> {
    format!("sha256:{}", digest.hex()).into_bytes()
}

/// Repository `r`'s name: nested under teams, top-level, three levels deep, and nested under a
/// top-level repository (`app-1` and `app-1/cache-2` are both repositories).
fn repo_name(r: u64) -> String {
    match r % 8 {
        1 | 6 => format!("app-{r}"),
        2 | 7 => format!("app-{}/cache-{r}", r - 1),
        3 => format!("org-{}/team-{}/svc-{r}", r % 3, r % 5),
        _ => format!("team-{}/app-{r}", r % 7),
    }
}

fn tag_name(i: u64) -> String {
    match i {
        0 => "latest".to_owned(),
        _ => match i % 3 {
            0 => format!("v{i}"),
            1 => format!("1.{i}.0"),
            _ => format!("build-{i}"),
        },
    }
}

/// Runs the generator, handing batches to `emit` (which answers false once the writers failed).
fn generate(args: &Args, emit: &mut dyn FnMut(Vec<Job>) -> bool) -> Truth {
    let repos = args.repos.unwrap_or(args.blobs / 200).max(1);
    let orphans = (args.blobs as f64 * args.garbage).round() as u64;
    let base_pool = ((args.blobs as f64 * 0.015).round() as u64).max(3);
    let referenced = args.blobs.saturating_sub(orphans + base_pool);
    let mut g = Generator {
        rng: Rng(args.seed ^ 0x5EED_5EED),
        seed: args.seed,
        emit,
        batch: Vec::with_capacity(BATCH),
        aborted: false,
        state: Vec::with_capacity(args.blobs as usize + 64),
        base_pool: Vec::new(),
        linked: HashSet::new(),
        images: 0,
        truth: Truth::default(),
        untagged: args.untagged,
        multiarch: args.multiarch,
    };
    for _ in 0..base_pool {
        let layer = g.new_layer();
        g.base_pool.push(layer);
    }
    // Repository sizes vary from 0.25× to 1.75× the mean.
    let weights: Vec<f64> = (0..repos).map(|_| 0.25 + 1.5 * g.rng.unit()).collect();
    let total: f64 = weights.iter().sum();
    let started = Instant::now();
    let mut last_report = Instant::now();
    let (mut orphans_done, mut weight_done) = (0u64, 0.0);
    for (r, weight) in weights.iter().enumerate() {
        if g.aborted {
            break;
        }
        let name = repo_name(r as u64);
        g.linked.clear();
        g.truth.repositories += 1;
        weight_done += weight;
        let budget = (referenced as f64 * weight / total).round() as u64;
        let first = g.truth.blobs;
        let mut t = 0;
        // Every repository has at least one tag.
        while (t == 0 || g.truth.blobs - first < budget) && !g.aborted {
            g.tag(&name, &tag_name(t));
            t += 1;
        }
        let orphans_here = (orphans as f64 * weight_done / total).round() as u64 - orphans_done;
        for _ in 0..orphans_here {
            g.orphan(&name);
        }
        orphans_done += orphans_here;
        if last_report.elapsed() > Duration::from_secs(5) {
            last_report = Instant::now();
            eprintln!(
                "synth_registry: {} of {repos} repositories, {} blobs, {} objects, {:.0} s",
                r + 1,
                g.truth.blobs,
                g.truth.objects,
                started.elapsed().as_secs_f64()
            );
        }
    }
    g.flush();
    let garbage = g.state.iter().filter(|&&s| s == UNREFERENCED).count() as u64;
    let untagged = g.state.iter().filter(|&&s| s != LIVE).count() as u64;
    g.truth.garbage_blobs = garbage;
    g.truth.garbage_blobs_untagged = untagged;
    g.truth
}

// ---------------------------------------------------------------------------------------------
// Filesystem
// ---------------------------------------------------------------------------------------------

fn write_fs(args: &Args, out: &Path) -> Result<Truth, String> {
    fs::create_dir_all(out).map_err(|e| format!("create {}: {e}", out.display()))?;
    let out = out
        .canonicalize()
        .map_err(|e| format!("canonicalize {}: {e}", out.display()))?;
    let v2 = out.join(layout::V2);
    if v2.exists() {
        return Err(format!(
            "{} already exists: pick an empty directory",
            v2.display()
        ));
    }
    // With --age-days 0 the files keep the time they are written at.
    let mtime = if args.age_days > 0.0 {
        let age = Duration::from_secs_f64(args.age_days * 86_400.0);
        Some(
            SystemTime::now()
                .checked_sub(age)
                .ok_or("--age-days reaches before the epoch")?,
        )
    } else {
        None
    };
    let writers = args
        .concurrency
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()) * 4);
    let writers = writers.max(1);
    let (tx, rx) = mpsc::sync_channel::<Vec<Job>>(QUEUE);
    let rx = Arc::new(Mutex::new(rx));
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<String>> = Mutex::new(None);
    let truth = std::thread::scope(|scope| {
        for _ in 0..writers {
            let rx = Arc::clone(&rx);
            let (out, failed, first_error) = (&out, &failed, &first_error);
            scope.spawn(move || {
                loop {
                    let batch = match rx.lock().expect("queue lock").recv() {
                        Ok(batch) => batch,
                        Err(_) => return,
                    };
                    if failed.load(Ordering::Relaxed) {
                        continue;
                    }
                    for job in &batch {
                        let path = out.join(&job.key);
                        if let Err(e) = write_file(&path, &job.data, mtime) {
                            failed.store(true, Ordering::Relaxed);
                            first_error
                                .lock()
                                .expect("error lock")
                                .get_or_insert_with(|| format!("write {}: {e}", path.display()));
                            break;
                        }
                    }
                }
            });
        }
        let mut emit = |batch: Vec<Job>| !failed.load(Ordering::Relaxed) && tx.send(batch).is_ok();
        let truth = generate(args, &mut emit);
        drop(tx);
        truth
    });
    if let Some(error) = first_error.into_inner().expect("error lock") {
        return Err(error);
    }
    let config = format!(
        "version: 0.1\n\
         log:\n  level: info\n  formatter: text\n\
         storage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\n  \
         cache:\n    blobdescriptor: inmemory\n\
         http:\n  addr: 127.0.0.1:5000\n",
        root = serde_json::to_string(&out.to_string_lossy()).expect("JSON string"),
    );
    let config_path = out.join("config.yml");
    fs::write(&config_path, config).map_err(|e| format!("write {}: {e}", config_path.display()))?;
    Ok(truth)
}

/// Writes one file. Every file of the layout is alone in its directory (`<hex>/data`,
/// `<hex>/link`, `current/link`), so the directory is created first, and its parents only when
/// that finds them missing.
fn write_file(path: &Path, data: &[u8], mtime: Option<SystemTime>) -> io::Result<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    match fs::create_dir(parent) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir_all(parent)?,
        Err(e) => return Err(e),
    }
    let mut file = File::create(path)?;
    file.write_all(data)?;
    match mtime {
        Some(mtime) => file.set_modified(mtime),
        None => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------
// S3
// ---------------------------------------------------------------------------------------------

fn write_s3(args: &Args, location: &str) -> Result<Truth, String> {
    use futures::{StreamExt, TryStreamExt};
    use object_store::aws::{AmazonS3Builder, AwsCredential};
    use object_store::path::Path as StorePath;
    use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

    let (bucket, root) = location.split_once('/').unwrap_or((location, ""));
    let root = root.trim_matches('/');
    if bucket.is_empty() {
        return Err(format!("--out s3://{location}: no bucket"));
    }
    let endpoint = args
        .endpoint
        .as_deref()
        .ok_or("--endpoint is required for s3:// outputs")?
        .trim_end_matches('/')
        .to_owned();
    let key_id = std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_else(|_| "test".to_owned());
    let secret = std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_else(|_| "test".to_owned());
    let store = AmazonS3Builder::new()
        .with_endpoint(&endpoint)
        .with_allow_http(true)
        .with_virtual_hosted_style_request(false)
        .with_region(&args.region)
        .with_access_key_id(&key_id)
        .with_secret_access_key(&secret)
        .with_bucket_name(bucket)
        .build()
        .map_err(|e| format!("S3 client: {e}"))?;
    let store = Arc::new(store);
    let prefix = if root.is_empty() {
        String::new()
    } else {
        format!("{root}/")
    };
    let concurrency = args.concurrency.unwrap_or(64).max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    runtime.block_on(async {
        let credential = AwsCredential {
            key_id: key_id.clone(),
            secret_key: secret.clone(),
            token: None,
        };
        create_bucket(&endpoint, bucket, &args.region, &credential).await?;
        let existing = StorePath::parse(format!("{prefix}{}", layout::V2))
            .map_err(|e| format!("bad root {root:?}: {e}"))?;
        if let Some(first) = store.list(Some(&existing)).next().await {
            let meta = first.map_err(|e| format!("list s3://{bucket}/{existing}: {e}"))?;
            return Err(format!(
                "s3://{bucket}/{existing} is not empty (holds {}): pick an empty root",
                meta.location
            ));
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Job>>(QUEUE);
        let args = args.clone();
        let generator = tokio::task::spawn_blocking(move || {
            let mut emit = |batch: Vec<Job>| tx.blocking_send(batch).is_ok();
            generate(&args, &mut emit)
        });
        let batches = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let written = batches
            .flat_map(futures::stream::iter)
            .map(|job| {
                let store = Arc::clone(&store);
                let key = format!("{prefix}{}", job.key);
                async move {
                    let path = StorePath::parse(&key).map_err(|e| format!("key {key}: {e}"))?;
                    store
                        .put(&path, PutPayload::from(job.data))
                        .await
                        .map_err(|e| format!("PUT {key}: {e}"))?;
                    Ok::<u64, String>(1)
                }
            })
            .buffer_unordered(concurrency)
            .try_fold(0u64, |n, one| async move { Ok(n + one) });
        // The first failure drops the stream (and the receiver): the generator then stops.
        let written = written.await?;
        let truth = generator.await.map_err(|e| format!("generator: {e}"))?;
        if written != truth.objects {
            return Err(format!("wrote {written} objects of {}", truth.objects));
        }
        Ok(truth)
    })
}

/// Creates `bucket` unless it exists (one SigV4-signed `PUT /<bucket>`, path-style).
async fn create_bucket(
    endpoint: &str,
    bucket: &str,
    region: &str,
    credential: &object_store::aws::AwsCredential,
) -> Result<(), String> {
    use object_store::aws::AwsAuthorizer;
    let body = if region == "us-east-1" {
        Vec::new()
    } else {
        format!(
            "<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
             <LocationConstraint>{region}</LocationConstraint></CreateBucketConfiguration>"
        )
        .into_bytes()
    };
    let url = format!("{endpoint}/{bucket}");
    let mut request = http::Request::builder()
        .method("PUT")
        .uri(&url)
        .body(object_store::client::HttpRequestBody::from(body.clone()))
        .map_err(|e| format!("PUT {url}: {e}"))?;
    AwsAuthorizer::new(credential, "s3", region)
        .try_authorize(&mut request, None)
        .map_err(|e| format!("sign PUT {url}: {e}"))?;
    let response = reqwest::Client::new()
        .put(&url)
        .headers(request.headers().clone())
        .body(body)
        .send()
        .await
        .map_err(|e| format!("PUT {url}: {e}"))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    if status.is_success() || text.contains("BucketAlreadyOwnedByYou") {
        Ok(())
    } else {
        Err(format!("create bucket {bucket}: HTTP {status}: {text}"))
    }
}
