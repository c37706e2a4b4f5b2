//! The workload: pushes a registry full of the cases a collector must get right, through the real
//! HTTP API, and records each step in a [`Model`].

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::json;

use super::client::{
    Client, DOCKER_CONFIG, DOCKER_LAYER, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_CONFIG,
    OCI_EMPTY, OCI_INDEX, OCI_LAYER, OCI_MANIFEST,
};
use super::content::{ContentGen, digest_of, rfc3339};
use super::model::{ManifestInfo, Model, UploadRecord};
use super::registry::Registry;
use super::s3::MotoServer;

/// Smallest and largest generated layer.
pub const LAYER_MIN: usize = 300;
pub const LAYER_MAX: usize = 64 * 1024;
/// How old the stale abandoned upload is made.
pub const STALE_UPLOAD_HOURS: u64 = 200;

/// Docker schema2 or OCI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Docker,
    Oci,
}

/// How a manifest is pushed: under a tag, or by digest only (untagged).
#[derive(Debug, Clone, Copy)]
pub enum Ref<'a> {
    Tag(&'a str),
    Digest,
}

/// A manifest that was pushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    pub digest: String,
    pub media_type: String,
    pub size: u64,
}

/// Pushes content through `client` and records it in `model`.
pub struct Workload<'a> {
    client: &'a Client,
    /// `None` when the storage is not a local filesystem (S3): uploads cannot be backdated.
    v2_root: Option<PathBuf>,
    content: ContentGen,
    /// Bytes of everything pushed, to re-upload or re-tag.
    bytes: BTreeMap<String, Vec<u8>>,
    pub model: Model,
}

impl<'a> Workload<'a> {
    /// `v2_root` (of a filesystem registry) is needed to backdate abandoned uploads; without it
    /// (`None`, a registry on S3) every abandoned upload is left fresh.
    pub fn new(client: &'a Client, v2_root: Option<&Path>, seed: &str) -> Workload<'a> {
        Workload {
            client,
            v2_root: v2_root.map(Path::to_owned),
            content: ContentGen::new(seed),
            bytes: BTreeMap::new(),
            model: Model::default(),
        }
    }

    fn repo(&mut self, repo: &str) {
        self.model.repos.insert(repo.to_owned());
    }

    /// Uploads `bytes` into `repo` and records the blob.
    pub fn upload(&mut self, repo: &str, bytes: Vec<u8>) -> String {
        let digest = self.client.push_blob(repo, &bytes);
        self.record_link(repo, digest, bytes)
    }

    /// Pushes a one-layer OCI image (amd64) whose layer, `bytes`, `repo` already links: a client
    /// that finds the layer there uploads nothing, so only the new manifest says it is live.
    /// Returns the image and the layer's digest.
    pub fn image_on_linked_layer(
        &mut self,
        repo: &str,
        bytes: Vec<u8>,
        reference: Ref<'_>,
        note: &str,
    ) -> (Pushed, String) {
        let layer = self.record_link(repo, digest_of(&bytes), bytes);
        let layers = std::slice::from_ref(&layer);
        let image = self.image(repo, Format::Oci, layers, "amd64", reference, note);
        (image, layer)
    }

    /// Records blob `digest` (`bytes`), linked in `repo`; returns the digest.
    fn record_link(&mut self, repo: &str, digest: String, bytes: Vec<u8>) -> String {
        self.repo(repo);
        self.model.blobs.insert(digest.clone(), bytes.len() as u64);
        self.model
            .blob_links
            .entry(repo.to_owned())
            .or_default()
            .insert(digest.clone());
        self.bytes.insert(digest.clone(), bytes);
        digest
    }

    /// A new random layer (300 B … 64 KiB) uploaded into `repo`.
    pub fn layer(&mut self, repo: &str) -> String {
        let bytes = self.content.next_bytes(LAYER_MIN, LAYER_MAX);
        self.upload(repo, bytes)
    }

    /// `n` new layers.
    pub fn layers(&mut self, repo: &str, n: usize) -> Vec<String> {
        (0..n).map(|_| self.layer(repo)).collect()
    }

    /// Cross-repository mount.
    pub fn mount(&mut self, repo: &str, from: &str, digest: &str) {
        self.repo(repo);
        self.client.mount_blob(repo, from, digest);
        self.model
            .blob_links
            .entry(repo.to_owned())
            .or_default()
            .insert(digest.to_owned());
    }

    /// Uploads the same bytes again into another repository (what a client without mount does).
    pub fn reupload(&mut self, repo: &str, digest: &str) {
        let bytes = self.bytes[digest].clone();
        assert_eq!(self.upload(repo, bytes), digest);
    }

    /// A blob uploaded into `repo` that no manifest will reference.
    pub fn orphan(&mut self, repo: &str) -> String {
        let digest = self.layer(repo);
        self.model.orphans.insert(digest.clone());
        digest
    }

    fn size_of(&self, digest: &str) -> u64 {
        self.bytes[digest].len() as u64
    }

    fn put(
        &mut self,
        repo: &str,
        reference: Ref<'_>,
        bytes: Vec<u8>,
        info: ManifestInfo,
    ) -> Pushed {
        self.repo(repo);
        let digest = digest_of(&bytes);
        let reference_text = match reference {
            Ref::Tag(tag) => tag.to_owned(),
            Ref::Digest => digest.clone(),
        };
        let answered = self
            .client
            .put_manifest(repo, &reference_text, &info.media_type, &bytes);
        assert_eq!(answered, digest);
        let pushed = Pushed {
            digest: digest.clone(),
            media_type: info.media_type.clone(),
            size: bytes.len() as u64,
        };
        if let Some(existing) = self.model.manifests.get(&digest) {
            assert_eq!(
                existing.children, info.children,
                "same digest, same document"
            );
        } else {
            self.model.manifests.insert(digest.clone(), info);
        }
        self.model
            .revisions
            .entry(repo.to_owned())
            .or_default()
            .insert(digest.clone());
        if let Some(deleted) = self.model.deleted.get_mut(repo) {
            deleted.remove(&digest);
        }
        if let Ref::Tag(tag) = reference {
            self.model
                .tags
                .entry(repo.to_owned())
                .or_default()
                .insert(tag.to_owned(), digest.clone());
            let history = self
                .model
                .tag_history
                .entry(repo.to_owned())
                .or_default()
                .entry(tag.to_owned())
                .or_default();
            if !history.contains(&digest) {
                history.push(digest.clone());
            }
        }
        self.bytes.insert(digest, bytes);
        pushed
    }

    /// An image (config + `layers`, already in `repo`) for `arch`.
    pub fn image(
        &mut self,
        repo: &str,
        format: Format,
        layers: &[String],
        arch: &str,
        reference: Ref<'_>,
        note: &str,
    ) -> Pushed {
        let id = self.content.next_id();
        let config = json!({
            "architecture": arch,
            "os": "linux",
            "created": "2024-01-01T00:00:00Z",
            "config": {
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Cmd": ["/bin/sh"],
                "Labels": {"org.regsweep.fixture": format!("{note} #{id}")}
            },
            "rootfs": {"type": "layers", "diff_ids": layers},
            "history": [{"created_by": format!("regsweep fixture {note}")}]
        });
        let config_bytes = serde_json::to_vec(&config).expect("config JSON");
        let config_digest = self.upload(repo, config_bytes);
        let (media_type, config_type, layer_type) = match format {
            Format::Docker => (DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER),
            Format::Oci => (OCI_MANIFEST, OCI_CONFIG, OCI_LAYER),
        };
        let layer_descriptors: Vec<_> = layers
            .iter()
            .map(|d| json!({"mediaType": layer_type, "size": self.size_of(d), "digest": d}))
            .collect();
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": {
                "mediaType": config_type,
                "size": self.size_of(&config_digest),
                "digest": config_digest,
            },
            "layers": layer_descriptors,
        });
        let bytes = serde_json::to_vec_pretty(&manifest).expect("manifest JSON");
        let info = ManifestInfo {
            media_type: media_type.to_owned(),
            media_type_in_json: true,
            size: bytes.len() as u64,
            children: Vec::new(),
            config: Some(config_digest),
            layers: layers.to_vec(),
            subject: None,
            note: note.to_owned(),
        };
        self.put(repo, reference, bytes, info)
    }

    /// An OCI artifact (a signature) whose `subject` is `subject`, with the empty config and one
    /// small layer of its own.
    pub fn referrer(
        &mut self,
        repo: &str,
        subject: &Pushed,
        reference: Ref<'_>,
        note: &str,
    ) -> Pushed {
        let empty = self.upload(repo, b"{}".to_vec());
        let id = self.content.next_id();
        let payload = serde_json::to_vec(&json!({
            "critical": {"image": {"docker-manifest-digest": subject.digest}, "type": "cosign container image signature"},
            "optional": {"nonce": id}
        }))
        .expect("signature JSON");
        let signature = self.upload(repo, payload);
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.dev.cosign.artifact.sig.v1+json",
            "config": {"mediaType": OCI_EMPTY, "size": 2, "digest": empty},
            "layers": [{
                "mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
                "size": self.size_of(&signature),
                "digest": signature,
            }],
            "subject": {"mediaType": subject.media_type, "size": subject.size, "digest": subject.digest},
            "annotations": {"org.regsweep.fixture": note},
        });
        let bytes = serde_json::to_vec_pretty(&manifest).expect("manifest JSON");
        let info = ManifestInfo {
            media_type: OCI_MANIFEST.to_owned(),
            media_type_in_json: true,
            size: bytes.len() as u64,
            children: Vec::new(),
            config: Some(empty),
            layers: vec![signature],
            subject: Some(subject.digest.clone()),
            note: note.to_owned(),
        };
        self.put(repo, reference, bytes, info)
    }

    /// A Docker manifest list or OCI index of `children` (already pushed into `repo`), with
    /// platforms taken from `arches`. `media_type_in_json: false` leaves `mediaType` out of the
    /// JSON (OCI allows it; the Content-Type still says what it is).
    pub fn list(
        &mut self,
        repo: &str,
        format: Format,
        children: &[(&Pushed, &str)],
        reference: Ref<'_>,
        media_type_in_json: bool,
        note: &str,
    ) -> Pushed {
        let media_type = match format {
            Format::Docker => DOCKER_MANIFEST_LIST,
            Format::Oci => OCI_INDEX,
        };
        let descriptors: Vec<_> = children
            .iter()
            .map(|(child, arch)| {
                json!({
                    "mediaType": child.media_type,
                    "size": child.size,
                    "digest": child.digest,
                    "platform": {"architecture": arch, "os": "linux"},
                })
            })
            .collect();
        let mut manifest = serde_json::Map::new();
        manifest.insert("schemaVersion".into(), json!(2));
        if media_type_in_json {
            manifest.insert("mediaType".into(), json!(media_type));
        }
        manifest.insert("manifests".into(), json!(descriptors));
        let bytes = serde_json::to_vec_pretty(&manifest).expect("list JSON");
        let info = ManifestInfo {
            media_type: media_type.to_owned(),
            media_type_in_json,
            size: bytes.len() as u64,
            children: children.iter().map(|(c, _)| c.digest.clone()).collect(),
            config: None,
            layers: Vec::new(),
            subject: None,
            note: note.to_owned(),
        };
        self.put(repo, reference, bytes, info)
    }

    /// Pushes an already pushed manifest again, into `repo` under `reference` (its config and
    /// layers, or children, must be in `repo` already).
    pub fn push_again(&mut self, repo: &str, pushed: &Pushed, reference: Ref<'_>) -> Pushed {
        let bytes = self.bytes[&pushed.digest].clone();
        let info = self.model.manifests[&pushed.digest].clone();
        self.put(repo, reference, bytes, info)
    }

    /// Mounts the config and layers of image `pushed` from `from` into `repo`.
    pub fn mount_image_blobs(&mut self, repo: &str, from: &str, pushed: &Pushed) {
        let info = self.model.manifests[&pushed.digest].clone();
        for blob in info.config.iter().chain(&info.layers) {
            self.mount(repo, from, blob);
        }
    }

    /// `DELETE /v2/<repo>/manifests/<digest>`: the revision leaves `repo`, with every tag of
    /// `repo` pointing at it (registry 2.8 semantics).
    pub fn delete(&mut self, repo: &str, pushed: &Pushed) {
        self.client.delete_manifest(repo, &pushed.digest);
        self.model
            .deleted
            .entry(repo.to_owned())
            .or_default()
            .insert(pushed.digest.clone());
        if let Some(tags) = self.model.tags.get_mut(repo) {
            let gone: Vec<String> = tags
                .iter()
                .filter(|(_, d)| **d == pushed.digest)
                .map(|(t, _)| t.clone())
                .collect();
            for tag in gone {
                tags.remove(&tag);
                if let Some(history) = self.model.tag_history.get_mut(repo) {
                    history.remove(&tag);
                }
            }
        }
    }

    /// Starts an upload in `repo`, sends one chunk and abandons it. With `backdate_hours > 0`
    /// every file and directory under `_uploads/<uuid>/` gets that much older, and `startedat`
    /// is rewritten to match, as if the upload had been abandoned that long ago. Without a
    /// `v2_root` (S3) the upload is left fresh and recorded with `backdated_hours: 0`: object
    /// timestamps cannot be changed through the S3 API.
    pub fn abandoned_upload(&mut self, repo: &str, backdate_hours: u64) -> String {
        self.repo(repo);
        let bytes = self.content.next_bytes(LAYER_MIN, LAYER_MAX);
        let uuid = self.client.start_abandoned_upload(repo, &bytes);
        let mut backdated_hours = 0;
        if let Some(v2_root) = &self.v2_root {
            let dir = v2_root
                .join("repositories")
                .join(repo)
                .join("_uploads")
                .join(&uuid);
            assert!(dir.is_dir(), "upload directory {} missing", dir.display());
            if backdate_hours > 0 {
                let when = SystemTime::now() - Duration::from_secs(backdate_hours * 3600);
                let startedat = dir.join("startedat");
                if startedat.is_file() {
                    fs::write(&startedat, rfc3339(when)).expect("rewrite startedat");
                }
                backdate_tree(&dir, when);
                backdated_hours = backdate_hours;
            }
        }
        self.model.uploads.push(UploadRecord {
            repo: repo.to_owned(),
            uuid: uuid.clone(),
            bytes: bytes.len() as u64,
            backdated_hours,
        });
        uuid
    }
}

/// Sets the modification time of every file and directory under `dir` (and `dir`) to `when`.
pub fn backdate_tree(dir: &Path, when: SystemTime) {
    let entries: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .collect();
    for entry in entries {
        let path = entry.path();
        if path.is_dir() {
            backdate_tree(&path, when);
        } else {
            File::options()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_modified(when))
                .unwrap_or_else(|e| panic!("backdate {}: {e}", path.display()));
        }
    }
    // Directories last (touching files bumps nothing, but be explicit); best effort.
    if let Ok(d) = File::open(dir) {
        let _ = d.set_modified(when);
    }
}

/// The standard workload (about 200 blobs, 7 repositories). Every case a collector must get right
/// is here; see the comments for what each step is for.
///
/// `v2_root` is the filesystem storage's `docker/registry/v2`, through which one abandoned upload
/// is made stale; `None` for a registry on S3, where every upload stays fresh (see
/// [`Workload::abandoned_upload`]).
pub fn standard_workload(client: &Client, v2_root: Option<&Path>) -> Model {
    let mut w = Workload::new(client, v2_root, "regsweep standard workload v1");
    use Format::{Docker, Oci};

    // library/alpine: Docker schema2 images over shared base layers; a re-pushed tag; referrers.
    let alpine = "library/alpine";
    let base = w.layers(alpine, 8);
    let mut layers = base[..2].to_vec();
    layers.extend(w.layers(alpine, 6));
    w.image(
        alpine,
        Docker,
        &layers,
        "amd64",
        Ref::Tag("3.18"),
        "alpine 3.18",
    );
    let mut layers = base.clone();
    layers.extend(w.layers(alpine, 6));
    let a319 = w.image(
        alpine,
        Docker,
        &layers,
        "amd64",
        Ref::Tag("3.19"),
        "alpine 3.19",
    );
    w.push_again(alpine, &a319, Ref::Tag("latest"));
    let mut layers = vec![base[0].clone()];
    layers.extend(w.layers(alpine, 8));
    let edge1 = w.image(
        alpine,
        Docker,
        &layers,
        "amd64",
        Ref::Tag("edge"),
        "alpine edge (replaced)",
    );
    let mut layers = vec![base[0].clone()];
    layers.extend(w.layers(alpine, 6));
    w.image(
        alpine,
        Docker,
        &layers,
        "amd64",
        Ref::Tag("edge"),
        "alpine edge",
    );
    // A signature of a tagged image, pushed by digest: survives --delete-untagged.
    w.referrer(alpine, &a319, Ref::Digest, "signature of alpine 3.19");
    // A signature of the image that lost its tag: collected with it.
    w.referrer(
        alpine,
        &edge1,
        Ref::Digest,
        "signature of replaced alpine edge",
    );
    for _ in 0..4 {
        w.orphan(alpine);
    }
    w.abandoned_upload(alpine, STALE_UPLOAD_HOURS);

    // team/app/api: OCI images with mounted base layers, a re-pushed tag and an OCI index whose
    // children are pushed by digest only.
    let api = "team/app/api";
    for digest in &base[..3] {
        w.mount(api, alpine, digest);
    }
    let mut layers = base[..2].to_vec();
    layers.extend(w.layers(api, 8));
    w.image(
        api,
        Oci,
        &layers,
        "amd64",
        Ref::Tag("v1"),
        "api v1 (replaced)",
    );
    let mut layers = base[..2].to_vec();
    layers.extend(w.layers(api, 8));
    w.image(api, Oci, &layers, "amd64", Ref::Tag("v1"), "api v1");
    let mut layers = base[..3].to_vec();
    layers.extend(w.layers(api, 10));
    let amd64 = w.image(api, Oci, &layers, "amd64", Ref::Digest, "api v2 amd64");
    let layers = w.layers(api, 10);
    let arm64 = w.image(api, Oci, &layers, "arm64", Ref::Digest, "api v2 arm64");
    w.list(
        api,
        Oci,
        &[(&amd64, "amd64"), (&arm64, "arm64")],
        Ref::Tag("v2"),
        true,
        "api v2 index",
    );
    for _ in 0..2 {
        w.orphan(api);
    }
    w.abandoned_upload(api, 0);

    // team/app/web: Docker manifest lists (children by digest); the base layer re-uploaded rather
    // than mounted; the tag re-pushed to a smaller list, so the ppc64le child dies with the old list.
    let web = "team/app/web";
    w.reupload(web, &base[0]);
    let mut layers = vec![base[0].clone()];
    layers.extend(w.layers(web, 8));
    let web_amd64 = w.image(web, Docker, &layers, "amd64", Ref::Digest, "web amd64");
    let layers = w.layers(web, 8);
    let web_arm64 = w.image(web, Docker, &layers, "arm64", Ref::Digest, "web arm64");
    let layers = w.layers(web, 6);
    let web_ppc = w.image(
        web,
        Docker,
        &layers,
        "ppc64le",
        Ref::Digest,
        "web ppc64le (dropped)",
    );
    let children = [
        (&web_amd64, "amd64"),
        (&web_arm64, "arm64"),
        (&web_ppc, "ppc64le"),
    ];
    w.list(
        web,
        Docker,
        &children,
        Ref::Tag("stable"),
        true,
        "web list (replaced)",
    );
    let children = [(&web_amd64, "amd64"), (&web_arm64, "arm64")];
    w.list(web, Docker, &children, Ref::Tag("stable"), true, "web list");

    // foo: a Docker image; an OCI index without `mediaType` in its JSON; a child of the web list
    // tagged directly here.
    let foo_repo = "foo";
    w.mount(foo_repo, alpine, &base[0]);
    let mut layers = vec![base[0].clone()];
    layers.extend(w.layers(foo_repo, 6));
    w.image(
        foo_repo,
        Docker,
        &layers,
        "amd64",
        Ref::Tag("1.0"),
        "foo 1.0",
    );
    let layers = w.layers(foo_repo, 8);
    let foo_amd64 = w.image(
        foo_repo,
        Oci,
        &layers,
        "amd64",
        Ref::Digest,
        "foo multi amd64",
    );
    let layers = w.layers(foo_repo, 8);
    let foo_arm64 = w.image(
        foo_repo,
        Oci,
        &layers,
        "arm64",
        Ref::Digest,
        "foo multi arm64",
    );
    let children = [(&foo_amd64, "amd64"), (&foo_arm64, "arm64")];
    w.list(
        foo_repo,
        Oci,
        &children,
        Ref::Tag("multi"),
        false,
        "foo index without mediaType",
    );
    w.mount_image_blobs(foo_repo, web, &web_amd64);
    w.push_again(foo_repo, &web_amd64, Ref::Tag("web-amd64"));
    for _ in 0..2 {
        w.orphan(foo_repo);
    }

    // foo/bar (nested under foo): images deleted through the API, one kept.
    let bar = "foo/bar";
    let layers = w.layers(bar, 6);
    let old = w.image(
        bar,
        Oci,
        &layers,
        "amd64",
        Ref::Tag("old"),
        "bar old (API-deleted)",
    );
    let layers = w.layers(bar, 8);
    w.image(bar, Oci, &layers, "amd64", Ref::Tag("keep"), "bar keep");
    let layers = w.layers(bar, 4);
    let tmp = w.image(
        bar,
        Docker,
        &layers,
        "amd64",
        Ref::Tag("tmp"),
        "bar tmp (API-deleted)",
    );
    w.delete(bar, &old);
    w.delete(bar, &tmp);

    // scratch/gone: every manifest deleted through the API; no tag left: the repository vanishes.
    let gone = "scratch/gone";
    w.mount(gone, alpine, &base[0]);
    let mut layers = vec![base[0].clone()];
    layers.extend(w.layers(gone, 6));
    let g1 = w.image(
        gone,
        Docker,
        &layers,
        "amd64",
        Ref::Tag("v1"),
        "gone v1 (API-deleted)",
    );
    w.push_again(gone, &g1, Ref::Tag("v1.0"));
    let layers = w.layers(gone, 6);
    let g2 = w.image(
        gone,
        Oci,
        &layers,
        "amd64",
        Ref::Tag("v2"),
        "gone v2 (API-deleted)",
    );
    w.orphan(gone);
    w.delete(gone, &g1);
    w.delete(gone, &g2);

    // ci/cache: manifests pushed by digest only, never tagged: vanishes with --delete-untagged.
    let cache = "ci/cache";
    let layers = w.layers(cache, 8);
    w.image(
        cache,
        Oci,
        &layers,
        "amd64",
        Ref::Digest,
        "ci cache 1 (never tagged)",
    );
    let layers = w.layers(cache, 6);
    w.image(
        cache,
        Docker,
        &layers,
        "amd64",
        Ref::Digest,
        "ci cache 2 (never tagged)",
    );

    w.model
}

/// A registry in its own directory with the standard workload pushed.
pub struct Fixture {
    /// Keeps the directory alive (absent when built in a caller's directory).
    pub tempdir: Option<tempfile::TempDir>,
    pub registry: Registry,
    pub client: Client,
    pub model: Model,
}

impl Fixture {
    /// In a new temporary directory.
    pub fn build() -> Fixture {
        let tempdir = tempfile::Builder::new()
            .prefix("regsweep-e2e-")
            .tempdir()
            .expect("create a temporary directory");
        let mut fixture = Fixture::build_in(tempdir.path());
        fixture.tempdir = Some(tempdir);
        fixture
    }

    /// In `dir` (created if needed); the registry is left running.
    pub fn build_in(dir: &Path) -> Fixture {
        let registry = Registry::start(dir);
        let client = registry.client();
        let model = standard_workload(&client, Some(&registry.v2_root()));
        Fixture {
            tempdir: None,
            registry,
            client,
            model,
        }
    }

    /// A registry on S3 — `bucket` (which must exist) of `moto`, under
    /// [`super::registry::S3_ROOT_DIRECTORY`] — configured in a new temporary directory, with the
    /// standard workload pushed (every abandoned upload fresh). The registry is left running;
    /// [`Fixture::v2_root`] panics: download the bucket's [`Registry::s3_v2_prefix`] instead.
    pub fn build_s3(moto: &MotoServer, bucket: &str) -> Fixture {
        let tempdir = tempfile::Builder::new()
            .prefix("regsweep-e2e-s3-")
            .tempdir()
            .expect("create a temporary directory");
        let registry = Registry::start_s3(tempdir.path(), &moto.endpoint(), bucket);
        let client = registry.client();
        let model = standard_workload(&client, None);
        Fixture {
            tempdir: Some(tempdir),
            registry,
            client,
            model,
        }
    }

    pub fn dir(&self) -> &Path {
        self.registry.dir()
    }

    /// The filesystem storage's `docker/registry/v2`; panics for [`Fixture::build_s3`].
    pub fn v2_root(&self) -> PathBuf {
        self.registry.v2_root()
    }
}
