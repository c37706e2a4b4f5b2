//! End-to-end tests of making the registry forget what `regsweep gc` deleted, against the real
//! registry (`docker-registry` 2.8) and a real Redis: a running registry keeps serving its blob
//! descriptor cache, so a client re-pushing a collected image is told "layer already exists", skips
//! the upload, and the image cannot be pulled. `--restart-command`, `--restart-url` and
//! `--redis-url` each prevent that.
//!
//! Every scene: push `app:v1` (kept), `app:v2` and `gone:v1` (each with its own config and
//! layers), delete the manifests of the last two through the API, collect, then re-push them the
//! way docker does (HEAD each blob, upload only those the registry does not have) and pull all
//! three.

pub mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::thread::JoinHandle;

use serde_json::json;
use support::Client;
use support::client::{DOCKER_CONFIG, DOCKER_LAYER, DOCKER_MANIFEST};
use support::content::{ContentGen, digest_of};
use support::redis::RedisServer;
use support::registry::{BlobCache, Registry};
use support::run::{RunOutput, field_u64};
use support::run_regsweep;
use tempfile::TempDir;

/// Blobs of one collected image: its config, its two layers and its manifest.
const BLOBS_PER_IMAGE: u64 = 4;

/// A docker image: config, layers, and its schema 2 manifest.
struct Image {
    repo: &'static str,
    tag: &'static str,
    blobs: Vec<Vec<u8>>,
    manifest: Vec<u8>,
}

impl Image {
    fn new(content: &mut ContentGen, repo: &'static str, tag: &'static str) -> Image {
        let layers: Vec<Vec<u8>> = (0..2).map(|_| content.next_bytes(512, 4096)).collect();
        let config = serde_json::to_vec(&json!({
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| digest_of(l)).collect::<Vec<_>>()},
            "config": {"Labels": {"image": format!("{repo}:{tag}")}},
        }))
        .unwrap();
        let descriptor = |media_type: &str, bytes: &[u8]| json!({"mediaType": media_type, "size": bytes.len(), "digest": digest_of(bytes)});
        let manifest = serde_json::to_vec_pretty(&json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": descriptor(DOCKER_CONFIG, &config),
            "layers": layers.iter().map(|l| descriptor(DOCKER_LAYER, l)).collect::<Vec<_>>(),
        }))
        .unwrap();
        let mut blobs = vec![config];
        blobs.extend(layers);
        Image {
            repo,
            tag,
            blobs,
            manifest,
        }
    }

    fn name(&self) -> String {
        format!("{}:{}", self.repo, self.tag)
    }

    fn digest(&self) -> String {
        digest_of(&self.manifest)
    }

    /// The config and layer digests.
    fn blob_digests(&self) -> Vec<String> {
        self.blobs.iter().map(|b| digest_of(b)).collect()
    }

    /// Pushes like docker: uploads only the blobs that `HEAD` says the registry does not have,
    /// then the manifest. Returns the digests it skipped.
    fn push(&self, client: &Client) -> Vec<String> {
        let mut skipped = Vec::new();
        for blob in &self.blobs {
            let digest = digest_of(blob);
            if client.blob_status(self.repo, &digest) == 200 {
                skipped.push(digest);
            } else {
                client.push_blob(self.repo, blob);
            }
        }
        client.put_manifest(self.repo, self.tag, DOCKER_MANIFEST, &self.manifest);
        skipped
    }

    /// Pulls the tag and every blob, checking every digest.
    fn pull(&self, client: &Client) -> Result<(), String> {
        let manifest = client.get_manifest(self.repo, self.tag);
        if manifest.status != 200 || manifest.body != self.manifest {
            return Err(format!(
                "GET manifest {}: HTTP {}, {} bytes",
                self.name(),
                manifest.status,
                manifest.body.len()
            ));
        }
        for digest in self.blob_digests() {
            let body = client.fetch_blob(self.repo, &digest)?;
            if digest_of(&body) != digest {
                return Err(format!(
                    "GET blob {digest} of {}: {} bytes hashing to {}",
                    self.name(),
                    body.len(),
                    digest_of(&body)
                ));
            }
        }
        Ok(())
    }
}

/// A supervised registry holding `kept` and the collectable `doomed` images.
struct Scene {
    dir: TempDir,
    registry: Registry,
    client: Client,
    kept: Image,
    doomed: Vec<Image>,
}

impl Scene {
    fn new(cache: BlobCache) -> Scene {
        let dir = tempfile::tempdir().expect("temp dir");
        let registry = Registry::start_supervised(&dir.path().join("registry"), cache);
        let client = registry.client();
        let mut content = ContentGen::new("e2e-restart");
        let kept = Image::new(&mut content, "app", "v1");
        let doomed = vec![
            Image::new(&mut content, "app", "v2"),
            Image::new(&mut content, "gone", "v1"),
        ];
        for image in std::iter::once(&kept).chain(&doomed) {
            assert_eq!(
                image.push(&client),
                Vec::<String>::new(),
                "{}",
                image.name()
            );
        }
        let scene = Scene {
            dir,
            registry,
            client,
            kept,
            doomed,
        };
        scene.make_garbage();
        scene
    }

    /// Deletes the doomed images' manifests through the API: their blobs become garbage.
    fn make_garbage(&self) {
        for image in &self.doomed {
            self.client.delete_manifest(image.repo, &image.digest());
        }
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `regsweep gc <config> --min-age 0s --format json [extra…]`, checked to have collected the
    /// doomed images.
    fn gc(&self, extra: &[&str]) -> RunOutput {
        let config = self.registry.config_arg();
        let mut args = vec!["gc", config.as_str(), "--min-age", "0s", "--format", "json"];
        args.extend_from_slice(extra);
        let run = run_regsweep(Path::new(env!("CARGO_BIN_EXE_regsweep")), &args);
        let summary = run.json();
        assert_eq!(
            field_u64(&summary, "blobs_deleted", &run),
            BLOBS_PER_IMAGE * self.doomed.len() as u64,
            "{}",
            run.describe()
        );
        assert_eq!(field_u64(&summary, "repositories_deleted", &run), 1);
        run
    }

    /// Re-pushes the doomed images; returns every blob the registry claimed to have.
    fn push_again(&self) -> Vec<String> {
        self.doomed
            .iter()
            .flat_map(|image| image.push(&self.client))
            .collect()
    }

    /// Every image pulls whole, with the right digests.
    fn assert_all_pull(&self) {
        for image in std::iter::once(&self.kept).chain(&self.doomed) {
            if let Err(e) = image.pull(&self.client) {
                panic!(
                    "{} does not pull: {e}\nregistry log:\n{}",
                    image.name(),
                    self.registry.log_tail(20)
                );
            }
        }
    }

    /// What a registry that did not forget does: says it has every collected blob, accepts the
    /// manifests, then cannot serve them.
    fn assert_repush_is_broken(&self) {
        let skipped = self.push_again();
        let collected: Vec<String> = self.doomed.iter().flat_map(Image::blob_digests).collect();
        assert_eq!(
            skipped, collected,
            "the registry should still claim the collected blobs"
        );
        for image in &self.doomed {
            assert!(
                image.pull(&self.client).is_err(),
                "{} pulls although its layers were collected and never uploaded again",
                image.name()
            );
        }
        self.kept.pull(&self.client).expect("the kept image pulls");
    }

    /// What a registry that forgot does: asks for every collected blob, and serves everything.
    fn assert_repush_works(&self) {
        assert_eq!(
            self.push_again(),
            Vec::<String>::new(),
            "the registry still claims collected blobs"
        );
        self.assert_all_pull();
    }

    fn pid(&self) -> u32 {
        self.registry.registry_pid().expect("the registry's pid")
    }
}

fn assert_exit_1(run: &RunOutput) {
    assert_eq!(run.status.code(), Some(1), "{}", run.describe());
}

#[test]
fn without_a_restart_the_registry_serves_collected_layers_from_its_cache() {
    let scene = Scene::new(BlobCache::InMemory);
    let pid = scene.pid();
    scene.gc(&[]).assert_success();
    assert_eq!(scene.pid(), pid, "the registry was restarted");
    scene.assert_repush_is_broken();
}

#[test]
fn the_restart_command_makes_the_registry_forget() {
    let scene = Scene::new(BlobCache::InMemory);
    let pid = scene.pid();
    let restart = scene.registry.restart_command();
    let run = scene.gc(&["--restart-command", &restart]);
    run.assert_success();
    let summary = run.json();
    assert_eq!(summary["restart"]["success"], true, "{}", run.describe());
    assert_eq!(summary["restart"]["command"], restart.as_str());
    scene.registry.wait_until_restarted(pid);
    scene.assert_repush_works();
}

/// One HTTP request as the test server received it.
#[derive(Debug)]
struct Received {
    request_line: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A one-request HTTP server on a free loopback port: runs `action` (if any) on the request,
/// answers `status` with `answer`, and hands the request back. Returns its port.
fn webhook_server(
    status: &'static str,
    answer: &'static str,
    action: Option<String>,
) -> (u16, JoinHandle<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let (stream, _) = listener.accept().expect("accept");
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut request_line = String::new();
        reader.read_line(&mut request_line).unwrap();
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').expect("a header");
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
        let mut received = Received {
            request_line: request_line.trim_end().to_owned(),
            headers,
            body: Vec::new(),
        };
        let length: usize = received
            .header("Content-Length")
            .map_or(0, |v| v.parse().unwrap());
        received.body = vec![0; length];
        reader.read_exact(&mut received.body).unwrap();
        if let Some(command) = action {
            let status = Command::new("sh").arg("-c").arg(&command).status().unwrap();
            assert!(status.success(), "{command}: {status}");
        }
        let mut stream = stream;
        write!(
            stream,
            "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{answer}",
            answer.len()
        )
        .unwrap();
        received
    });
    (port, handle)
}

#[test]
fn the_restart_url_receives_the_summary_and_restarts_the_registry() {
    let scene = Scene::new(BlobCache::InMemory);
    let pid = scene.pid();
    let (port, server) =
        webhook_server("204 No Content", "", Some(scene.registry.restart_command()));
    let url = format!("http://regsweep:hook-s3cret@127.0.0.1:{port}/registry/restart?key=k3y");
    let run = scene.gc(&["--restart-url", &url]);
    run.assert_success();
    let received = server.join().expect("the webhook server");

    assert_eq!(
        received.request_line,
        "POST /registry/restart?key=k3y HTTP/1.1"
    );
    assert_eq!(received.header("Content-Type"), Some("application/json"));
    // The userinfo arrives as Basic authentication: base64("regsweep:hook-s3cret").
    assert_eq!(
        received.header("Authorization"),
        Some("Basic cmVnc3dlZXA6aG9vay1zM2NyZXQ=")
    );
    let body: serde_json::Value = serde_json::from_slice(&received.body).expect("a JSON body");
    assert_eq!(body["blobs_deleted"], BLOBS_PER_IMAGE * 2);
    assert_eq!(body["dry_run"], false);
    assert!(body.get("restart_url").is_none(), "{body}");

    let summary = run.json();
    let outcome = &summary["restart_url"];
    assert_eq!(outcome["success"], true, "{}", run.describe());
    assert_eq!(outcome["http_status"], 204);
    assert_eq!(
        outcome["url"],
        format!("http://***@127.0.0.1:{port}/registry/restart?***")
    );
    for secret in ["hook-s3cret", "k3y"] {
        assert!(
            !run.stdout.contains(secret) && !run.stderr.contains(secret),
            "{secret} printed:\n{}",
            run.describe()
        );
    }
    scene.registry.wait_until_restarted(pid);
    scene.assert_repush_works();
}

#[test]
fn a_failing_restart_url_is_an_error_and_exit_status_1() {
    let scene = Scene::new(BlobCache::InMemory);
    let (port, server) = webhook_server("500 Internal Server Error", "cannot restart", None);
    let url = format!("http://ops:hook-s3cret@127.0.0.1:{port}/restart");
    let run = scene.gc(&["--restart-url", &url]);
    server.join().expect("the webhook server");
    assert_exit_1(&run);
    let summary = run.json();
    assert_eq!(field_u64(&summary, "errors", &run), 1);
    let error = summary["error_messages"][0].as_str().unwrap();
    let shown = format!("http://***@127.0.0.1:{port}/restart");
    assert!(
        error.contains(&shown) && error.contains("500") && error.contains("cannot restart"),
        "{error}"
    );
    assert_eq!(summary["restart_url"]["http_status"], 500);
    assert_eq!(summary["restart_url"]["success"], false);

    // Nothing listening: a connection failure, named the same way. (New garbage first: the URL
    // is called only after a sweep that deleted something.)
    let mut content = ContentGen::new("e2e-restart-more");
    let more = Image::new(&mut content, "app", "v3");
    more.push(&scene.client);
    scene.client.delete_manifest(more.repo, &more.digest());
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let url = format!("http://ops:hook-s3cret@127.0.0.1:{port}/restart");
    let config = scene.registry.config_path();
    let run = run_regsweep(
        Path::new(env!("CARGO_BIN_EXE_regsweep")),
        &[
            "gc",
            &config.to_string_lossy(),
            "--min-age",
            "0s",
            "--format",
            "json",
            "--restart-url",
            &url,
        ],
    );
    assert_exit_1(&run);
    let summary = run.json();
    assert_eq!(field_u64(&summary, "blobs_deleted", &run), BLOBS_PER_IMAGE);
    let error = summary["error_messages"][0].as_str().unwrap();
    assert!(
        error.contains(&format!("http://***@127.0.0.1:{port}/restart")),
        "{error}"
    );
    assert!(summary["restart_url"]["http_status"].is_null(), "{summary}");
    assert!(
        !run.stdout.contains("hook-s3cret") && !run.stderr.contains("hook-s3cret"),
        "{}",
        run.describe()
    );
}

/// The Redis database the registry caches in: not the default one, so that the flush must `SELECT`
/// it (and `AUTH` first: the test Redis requires a password).
const DB: u32 = 3;

/// A registry caching blob descriptors in a real Redis.
fn redis_scene() -> (RedisServer, Scene) {
    let dir = tempfile::tempdir().expect("temp dir");
    let redis = RedisServer::start(dir.path());
    let scene = Scene::new(BlobCache::Redis {
        addr: redis.addr(),
        password: support::redis::PASSWORD.to_owned(),
        db: DB,
    });
    // Keep the Redis directory alive as long as the scene's.
    std::fs::rename(dir.keep(), scene.dir().join("redis")).expect("move the Redis directory");
    (redis, scene)
}

#[test]
fn without_the_redis_flush_a_redis_cached_registry_serves_collected_layers() {
    let (redis, scene) = redis_scene();
    scene.gc(&[]).assert_success();
    assert!(
        redis
            .keys(DB)
            .contains(&"repository::gone::blobs".to_owned()),
        "{:?}",
        redis.keys(DB)
    );
    scene.assert_repush_is_broken();
}

#[test]
fn the_redis_flush_makes_the_registry_forget_without_a_restart() {
    let (redis, scene) = redis_scene();
    let kept_blobs = scene.kept.blob_digests();
    let collected: Vec<String> = scene.doomed.iter().flat_map(Image::blob_digests).collect();
    // The registry cached every blob it received: globally and per repository.
    let keys = redis.keys(DB);
    for digest in kept_blobs.iter().chain(&collected) {
        assert!(keys.contains(&format!("blobs::{digest}")), "{keys:?}");
    }
    for digest in &collected[..3] {
        assert!(
            keys.contains(&format!("repository::app::blobs::{digest}")),
            "{keys:?}"
        );
    }
    assert!(keys.contains(&"repository::gone::blobs".to_owned()));

    let pid = scene.pid();
    assert_eq!(
        redis.keys(0),
        Vec::<String>::new(),
        "the registry caches in {DB}"
    );
    let run = scene.gc(&["--redis-url", &redis.url(DB)]);
    run.assert_success();
    let summary = run.json();
    let outcome = &summary["redis"];
    assert_eq!(outcome["success"], true, "{}", run.describe());
    assert_eq!(
        outcome["url"],
        format!("redis://***@{}/{DB}", redis.addr()),
        "{}",
        run.describe()
    );
    let password = support::redis::PASSWORD;
    assert!(
        !run.stdout.contains(password) && !run.stderr.contains(password),
        "{}",
        run.describe()
    );
    // `blobs::` of the 8 collected blobs (deleting a manifest through the API leaves its key: the
    // registry's `Clear` removes `digest` but not `size`), the 3 + 3 per-repository hashes of the
    // configs and layers linked in `app` and `gone`, the set of `gone`.
    assert_eq!(
        field_u64(outcome, "keys_deleted", &run),
        8 + 3 + 3 + 1,
        "{outcome}"
    );
    assert_eq!(field_u64(outcome, "members_removed", &run), 3, "{outcome}");

    // Exactly the collected entries are gone; the kept image's stay.
    let keys = redis.keys(DB);
    for digest in &collected {
        assert!(!keys.contains(&format!("blobs::{digest}")), "{keys:?}");
        assert!(
            !keys.contains(&format!("repository::app::blobs::{digest}")),
            "{keys:?}"
        );
    }
    for digest in &kept_blobs {
        assert!(keys.contains(&format!("blobs::{digest}")), "{keys:?}");
        assert!(
            keys.contains(&format!("repository::app::blobs::{digest}")),
            "{keys:?}"
        );
    }
    assert!(!keys.contains(&"repository::gone::blobs".to_owned()));
    let members = redis.members(DB, "repository::app::blobs");
    for digest in &kept_blobs {
        assert!(members.contains(digest), "{members:?}");
    }
    for digest in &collected[..3] {
        assert!(!members.contains(digest), "{members:?}");
    }

    assert_eq!(scene.pid(), pid, "the registry was restarted");
    scene.assert_repush_works();
}

#[test]
fn an_unreachable_redis_is_an_error_and_exit_status_1() {
    let scene = Scene::new(BlobCache::InMemory);
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let url = format!("redis://:r3dis-pass@127.0.0.1:{port}/0");
    let run = scene.gc(&["--redis-url", &url]);
    assert_exit_1(&run);
    let summary = run.json();
    let error = summary["error_messages"][0].as_str().unwrap();
    assert!(
        error.contains(&format!("redis://***@127.0.0.1:{port}/0")) && error.contains("connect"),
        "{error}"
    );
    assert_eq!(summary["redis"]["success"], false);
    assert!(
        !run.stdout.contains("r3dis-pass") && !run.stderr.contains("r3dis-pass"),
        "{}",
        run.describe()
    );
}
