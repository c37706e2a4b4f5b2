//! The `regsweep` command on bad input: every refusal is a clear error naming the object, with a
//! non-zero exit status and nothing deleted. Storage is written by hand here, file by file, to make
//! exactly the corruption each test needs (the end-to-end tests use the real registry).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest as _, Sha256};

const V2: &str = "docker/registry/v2";

fn regsweep(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_regsweep"))
        .args(args)
        .env_remove("REGSWEEP_LOG")
        .output()
        .expect("run regsweep")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A registry storage written directly in the 2.x layout.
struct Storage {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Storage {
    fn new() -> Storage {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("registry");
        fs::create_dir_all(root.join(V2).join("blobs")).unwrap();
        fs::create_dir_all(root.join(V2).join("repositories")).unwrap();
        Storage { _dir: dir, root }
    }

    fn url(&self) -> String {
        format!("file://{}", self.root.display())
    }

    fn write(&self, rel: &str, content: &[u8]) {
        let path = self.root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }

    /// Stores a blob, returning its hex digest.
    fn blob(&self, content: &[u8]) -> String {
        let hex = format!("{:x}", Sha256::digest(content));
        self.write(
            &format!("{V2}/blobs/sha256/{}/{hex}/data", &hex[..2]),
            content,
        );
        hex
    }

    fn blob_exists(&self, hex: &str) -> bool {
        self.root
            .join(format!("{V2}/blobs/sha256/{}/{hex}/data", &hex[..2]))
            .exists()
    }

    fn link(&self, rel: &str, hex: &str) {
        self.write(rel, format!("sha256:{hex}").as_bytes());
    }

    /// An image: config + one layer + manifest, linked into `repo` and tagged `tag`.
    fn image(&self, repo: &str, tag: &str, seed: &str) -> String {
        let config = self.blob(format!("{{\"seed\":\"{seed}\"}}").as_bytes());
        let layer = self.blob(format!("layer {seed}").as_bytes());
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{config}","size":1}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:{layer}","size":1}}]}}"#
        );
        let hex = self.blob(manifest.as_bytes());
        let r = format!("{V2}/repositories/{repo}");
        self.link(&format!("{r}/_layers/sha256/{config}/link"), &config);
        self.link(&format!("{r}/_layers/sha256/{layer}/link"), &layer);
        self.link(&format!("{r}/_manifests/revisions/sha256/{hex}/link"), &hex);
        self.link(&format!("{r}/_manifests/tags/{tag}/current/link"), &hex);
        self.link(
            &format!("{r}/_manifests/tags/{tag}/index/sha256/{hex}/link"),
            &hex,
        );
        hex
    }

    fn snapshot(&self) -> Vec<(PathBuf, Vec<u8>)> {
        fn walk(dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
            for entry in fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                let meta = fs::symlink_metadata(&path).unwrap();
                if meta.is_dir() {
                    out.push((path.clone(), Vec::new()));
                    walk(&path, out);
                } else {
                    out.push((path.clone(), fs::read(&path).unwrap_or_default()));
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.root, &mut out);
        // regsweep's own objects (the run lock) are not the registry's.
        out.retain(|(path, _)| !path.starts_with(self.root.join("_regsweep")));
        out.sort();
        out
    }
}

/// Runs `gc -m --min-age 0s` on storage that must make it refuse; checks the refusal names `needles`
/// and that not a byte changed.
fn assert_refused(storage: &Storage, needles: &[&str]) {
    let before = storage.snapshot();
    let out = regsweep(&["gc", "--storage", &storage.url(), "-m", "--min-age", "0s"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "{needle:?} not in stderr: {stderr}"
        );
    }
    assert!(
        storage.snapshot() == before,
        "storage changed after a refusal"
    );
}

#[test]
fn collects_a_hand_made_registry() {
    let storage = Storage::new();
    let live = storage.image("app", "v1", "live");
    let orphan = storage.blob(b"nobody references me");
    let dry = regsweep(&[
        "gc",
        "--storage",
        &storage.url(),
        "--min-age",
        "0s",
        "--dry-run",
    ]);
    assert!(dry.status.success(), "{}", text(&dry.stderr));
    let plan = text(&dry.stdout);
    assert!(
        plan.contains(&orphan),
        "dry run does not list the orphan: {plan}"
    );
    assert!(
        !plan.contains(&live),
        "dry run would delete a live manifest: {plan}"
    );
    assert!(storage.blob_exists(&orphan));

    let out = regsweep(&[
        "gc",
        "--storage",
        &storage.url(),
        "--min-age",
        "0s",
        "--format",
        "json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for field in [
        "dry_run",
        "repositories",
        "tags",
        "manifests",
        "blobs_total",
        "bytes_total",
        "blobs_deleted",
        "bytes_deleted",
        "manifests_deleted",
        "links_deleted",
        "repositories_deleted",
        "uploads_deleted",
        "errors",
        "duration_seconds",
    ] {
        assert!(
            summary.get(field).is_some(),
            "summary lacks {field}: {summary}"
        );
    }
    assert_eq!(summary["blobs_total"], 4);
    assert_eq!(summary["blobs_deleted"], 1);
    assert_eq!(summary["bytes_deleted"], 20);
    assert_eq!(summary["errors"], 0);
    assert!(!storage.blob_exists(&orphan));
    assert!(storage.blob_exists(&live));
    // The orphan's directory went with it.
    let shard = storage
        .root
        .join(format!("{V2}/blobs/sha256/{}", &orphan[..2]));
    assert!(!shard.join(&orphan).exists());
}

#[test]
fn corrupt_current_link_stops_before_any_deletion() {
    let storage = Storage::new();
    storage.image("app", "v1", "a");
    storage.blob(b"garbage that must survive the refusal");
    storage.write(
        &format!("{V2}/repositories/team/web/_manifests/tags/prod/current/link"),
        b"sha256:not-a-digest\n",
    );
    storage.write(
        &format!(
            "{V2}/repositories/team/web/_layers/sha256/{}/link",
            "0".repeat(64)
        ),
        format!("sha256:{}", "0".repeat(64)).as_bytes(),
    );
    assert_refused(&storage, &["team/web", "prod", "current/link"]);
}

#[test]
fn truncated_live_manifest_stops_before_any_deletion() {
    let storage = Storage::new();
    let manifest = storage.image("app", "v1", "a");
    storage.blob(b"garbage");
    let path = format!("{V2}/blobs/sha256/{}/{manifest}/data", &manifest[..2]);
    let content = fs::read(storage.root.join(&path)).unwrap();
    storage.write(&path, &content[..content.len() / 2]);
    assert_refused(&storage, &["app", &manifest]);
}

#[test]
fn unknown_media_type_in_a_live_manifest_stops_before_any_deletion() {
    let storage = Storage::new();
    storage.blob(b"garbage");
    let odd =
        storage.blob(br#"{"schemaVersion":2,"mediaType":"application/x-unheard-of","layers":[]}"#);
    let r = format!("{V2}/repositories/odd");
    storage.link(&format!("{r}/_manifests/revisions/sha256/{odd}/link"), &odd);
    storage.link(&format!("{r}/_manifests/tags/latest/current/link"), &odd);
    assert_refused(&storage, &["odd", &odd, "application/x-unheard-of"]);
}

#[test]
fn symlinks_are_refused_and_never_followed() {
    let storage = Storage::new();
    storage.image("app", "v1", "a");
    storage.blob(b"garbage");
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("precious"), "do not touch").unwrap();
    let repo = storage.root.join(format!("{V2}/repositories/evil"));
    fs::create_dir_all(&repo).unwrap();
    std::os::unix::fs::symlink(outside.path(), repo.join("_layers")).unwrap();
    assert_refused(&storage, &["evil/_layers", "symbolic link"]);
    assert!(outside.path().join("precious").exists());
}

#[test]
fn a_directory_that_is_no_registry_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("hello"), "not a registry").unwrap();
    let out = regsweep(&[
        "gc",
        "--storage",
        dir.path().to_str().unwrap(),
        "--min-age",
        "0s",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("not a registry storage root"), "{stderr}");
    assert!(dir.path().join("hello").exists());

    let missing = dir.path().join("missing");
    let out = regsweep(&["gc", "--storage", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains(missing.to_str().unwrap()));
}

#[test]
fn config_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.yml");
    let out = regsweep(&["gc", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains(missing.to_str().unwrap()));

    let swift = dir.path().join("swift.yml");
    fs::write(
        &swift,
        "version: 0.1\nstorage:\n  swift:\n    container: c\n",
    )
    .unwrap();
    let out = regsweep(&["gc", swift.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("swift") && stderr.contains("not supported"),
        "{stderr}"
    );

    let out = regsweep(&["gc"]);
    assert_eq!(out.status.code(), Some(2), "usage errors exit 2");
    let out = regsweep(&["gc", "--storage", "/x", "--min-age", "soon"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn help_documents_every_option() {
    let out = regsweep(&["gc", "--help"]);
    let help = text(&out.stdout);
    for option in [
        "--storage",
        "--dry-run",
        "--delete-untagged",
        "-m",
        "--min-age",
        "--upload-max-age",
        "--concurrency",
        "--format",
        "--log-format",
        "--quiet",
        "--restart-command",
        "--plan-file",
        "CONFIG",
    ] {
        assert!(help.contains(option), "gc --help lacks {option}");
    }
}

#[test]
fn an_unreachable_object_store_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_regsweep"))
        .args([
            "gc",
            "--storage",
            "s3://bucket/root?endpoint=http://127.0.0.1:9&region=us-east-1",
        ])
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env_remove("AWS_CA_BUNDLE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    for needle in [
        "listing the storage failed",
        "127.0.0.1:9",
        "Connection refused",
    ] {
        assert!(stderr.contains(needle), "{needle}: {stderr}");
    }
}

#[test]
fn malformed_forget_urls_are_usage_errors_that_never_show_credentials() {
    let help = text(&regsweep(&["gc", "--help"]).stdout);
    for option in ["--redis-url", "--restart-url"] {
        assert!(help.contains(option), "gc --help lacks {option}");
    }
    for (option, url, reason) in [
        ("--redis-url", "redis://u:s3cret@cache:port", "invalid port"),
        ("--redis-url", "rediss://:s3cret@cache:6380", "TLS"),
        ("--restart-url", "ftp://u:s3cret@hooks/restart", "http://"),
        (
            "--restart-url",
            "https://u:s3cret@[hooks/restart",
            "not a URL",
        ),
    ] {
        let out = regsweep(&["gc", "--storage", "/x", option, url]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{option} {url}: {stderr}");
        assert!(
            stderr.contains(option) && stderr.contains(reason),
            "{option} {url}: {stderr}"
        );
        assert!(!stderr.contains("s3cret"), "{option} {url}: {stderr}");
    }
}

#[test]
fn report_refuses_what_gc_refuses_and_bad_prices() {
    let storage = Storage::new();
    storage.image("app", "v1", "a");
    storage.write(
        &format!("{V2}/repositories/team/web/_manifests/tags/prod/current/link"),
        b"sha256:not-a-digest\n",
    );
    let before = storage.snapshot();
    let out = regsweep(&["report", "--storage", &storage.url(), "--min-age", "0s"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    for needle in ["team/web", "prod", "current/link"] {
        assert!(
            stderr.contains(needle),
            "{needle:?} not in stderr: {stderr}"
        );
    }
    assert!(storage.snapshot() == before, "a report changed the storage");

    for (flag, value) in [
        ("--price-per-gib-month", "-1"),
        ("--price-per-1000-list", "NaN"),
        ("--price-per-1000-get", "cheap"),
        ("--format", "xml"),
    ] {
        let arg = format!("{flag}={value}");
        let out = regsweep(&["report", "--storage", &storage.url(), &arg]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {stderr}");
        assert!(stderr.contains(flag), "{flag} not named: {stderr}");
    }

    let help = text(&regsweep(&["report", "--help"]).stdout);
    for option in [
        "CONFIG",
        "--storage",
        "--format",
        "--output",
        "--price-per-gib-month",
        "--price-per-1000-list",
        "--price-per-1000-get",
        "--top",
        "--min-age",
        "--upload-max-age",
        "--concurrency",
    ] {
        assert!(help.contains(option), "report --help lacks {option}");
    }
}

#[test]
fn prune_rules_that_do_not_parse_are_usage_errors() {
    let storage = Storage::new();
    storage.image("app", "v1", "a");
    let before = storage.snapshot();
    for (flag, value, needle) in [
        ("--keep-tags", "(", "regex"),
        ("--repositories", "team/[", "team/["),
    ] {
        let url = storage.url();
        let args = ["prune", "--storage", &url, "--keep-last", "1", flag, value];
        let out = regsweep(&args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{needle:?} not in stderr: {stderr}"
        );
    }
    assert!(
        storage.snapshot() == before,
        "a refused prune changed the storage"
    );
}

#[test]
fn mark_and_sweep_refuse_bad_states_and_shards_as_usage_errors() {
    let storage = Storage::new();
    let url = storage.url();
    for (args, needle) in [
        (vec!["mark", "--storage", &url], "--state"),
        (
            vec!["mark", "--storage", &url, "--state", "registry:../up"],
            "registry:NAME",
        ),
        (
            vec!["sweep", "--storage", &url, "--state", "s", "--shard", "4/4"],
            "numbered from 0 to 3",
        ),
        (
            vec![
                "sweep",
                "--storage",
                &url,
                "--state",
                "s",
                "--shard",
                "0/300",
            ],
            "between 1 and 256",
        ),
        (
            vec![
                "sweep",
                "--storage",
                &url,
                "--state",
                "s",
                "--shard",
                "env:REGSWEEP_UNSET_INDEX/4",
            ],
            "REGSWEEP_UNSET_INDEX is not set",
        ),
    ] {
        let out = regsweep(&args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains(needle),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    // A missing state file is a refusal naming it (exit 1), and nothing is written.
    let missing = storage.root.join("no-such.state");
    let missing = missing.to_string_lossy().into_owned();
    let out = regsweep(&["sweep", "--storage", &url, "--state", &missing]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(&format!("mark state {missing}")),
        "{}",
        text(&out.stderr)
    );
    for option in [
        "--state",
        "--shard",
        "--max-state-age",
        "--progress-interval",
        "-m",
    ] {
        assert!(
            text(&regsweep(&["sweep", "--help"]).stdout).contains(option),
            "sweep --help lacks {option}"
        );
    }
}
