//! Hostile and broken input: a small registry written by the real registry (`docker-registry`
//! 2.8), copied and damaged one way per test, then collected by the `regsweep` binary
//! (`gc --min-age 0s`, not a dry run). Either the run refuses — exit 1, an error naming the damaged
//! object, and not a byte of the storage changed — or, where going on is right, it keeps the damaged
//! object, deletes exactly the garbage, and every tag still pulls from the restarted registry.

pub mod support;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use support::content::{digest_of, hex_of, sha256_hex};
use support::fault_proxy::FaultProxy;
use support::hostile::{
    copy_tree, diff, removed_blobs, run_with_deadline, small_workload, snapshot,
};
use support::run::RunOutput;
use support::s3::MotoServer;
use support::{Model, Registry, verify_pulls};

const V2: &str = "docker/registry/v2";
/// Generous: the small registry takes well under a second; a collector stuck in a cycle does not
/// finish at all.
const DEADLINE: Duration = Duration::from_secs(120);
const MIB: usize = 1 << 20;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_regsweep"))
}

/// The registry's storage after the small workload, built once per test binary.
struct Base {
    storage: PathBuf,
    model: Model,
}

fn base() -> &'static Base {
    static BASE: OnceLock<Base> = OnceLock::new();
    BASE.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("hostile-input-{}", std::process::id()));
        let mut registry = Registry::start(&dir);
        let model = small_workload(&registry.client(), Some(&registry.v2_root()));
        registry.stop();
        Base {
            storage: registry.storage_root(),
            model,
        }
    })
}

/// A private copy of the base storage, in `<dir>/storage` (where [`Registry::start`] looks).
struct Case {
    tempdir: tempfile::TempDir,
}

impl Case {
    fn new() -> Case {
        let tempdir = tempfile::Builder::new()
            .prefix("regsweep-hostile-")
            .tempdir()
            .unwrap();
        copy_tree(&base().storage, &tempdir.path().join("storage"));
        Case { tempdir }
    }

    fn dir(&self) -> &Path {
        self.tempdir.path()
    }

    fn root(&self) -> PathBuf {
        self.dir().join("storage")
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root().join(V2).join(rel)
    }

    fn write(&self, rel: &str, content: &[u8]) {
        let path = self.path(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }

    fn blob_rel(hex: &str) -> String {
        format!("blobs/sha256/{}/{hex}/data", &hex[..2])
    }

    /// Stores `content` as the blob `hex` (whether or not that is its digest).
    fn blob_at(&self, hex: &str, content: &[u8]) {
        self.write(&Case::blob_rel(hex), content);
    }

    /// Stores `content` as a blob under its own digest; returns the hex.
    fn blob(&self, content: &[u8]) -> String {
        let hex = sha256_hex(content);
        self.blob_at(&hex, content);
        hex
    }

    /// A revision link, and a tag (current and index) unless `tag` is `None`.
    fn manifest_links(&self, repo: &str, hex: &str, tag: Option<&str>) {
        let link = format!("sha256:{hex}");
        let r = format!("repositories/{repo}/_manifests");
        self.write(&format!("{r}/revisions/sha256/{hex}/link"), link.as_bytes());
        if let Some(tag) = tag {
            self.write(&format!("{r}/tags/{tag}/current/link"), link.as_bytes());
            self.write(
                &format!("{r}/tags/{tag}/index/sha256/{hex}/link"),
                link.as_bytes(),
            );
        }
    }

    fn tag_link(repo: &str, tag: &str) -> String {
        format!("repositories/{repo}/_manifests/tags/{tag}/current/link")
    }

    fn url(&self) -> String {
        format!("file://{}", self.root().display())
    }

    /// `regsweep gc --storage <copy> --min-age 0s --format json [extra…]`.
    fn gc(&self, extra: &[&str]) -> RunOutput {
        let url = self.url();
        let mut args = vec![
            "gc",
            "--storage",
            &url,
            "--min-age",
            "0s",
            "--format",
            "json",
        ];
        args.extend_from_slice(extra);
        run_with_deadline(self.dir(), bin(), &args, DEADLINE)
    }

    /// Runs `gc` with `extra` and expects a refusal naming every needle, with nothing changed —
    /// neither in the storage nor in `also` (a directory outside it).
    fn assert_refused(&self, extra: &[&str], needles: &[&str], also: Option<&Path>) {
        let before = (snapshot(&self.root()), also.map(snapshot));
        let run = self.gc(extra);
        assert_refused_run(&run, needles);
        let after = (snapshot(&self.root()), also.map(snapshot));
        assert!(
            before == after,
            "a refused run changed the storage: {:?} {:?}\n{}",
            diff(&before.0, &after.0),
            before.1.zip(after.1).map(|(b, a)| diff(&b, &a)),
            run.describe()
        );
    }

    /// Runs `gc` with `extra`, expects success, exactly the model's garbage blobs gone, every path
    /// of `kept` still there unchanged, and every tag pulling from the restarted registry.
    /// Returns the run.
    fn assert_collected(&self, delete_untagged: bool, kept: &[&str]) -> RunOutput {
        let before = snapshot(&self.root());
        let extra: &[&str] = if delete_untagged { &["-m"] } else { &[] };
        let run = self.gc(extra);
        assert!(run.success(), "{}", run.describe());
        let after = snapshot(&self.root());
        let model = &base().model;
        assert_eq!(
            removed_blobs(&before, &after),
            model.expected_garbage_blobs(delete_untagged),
            "{}",
            run.describe()
        );
        for rel in kept {
            let key = std::ffi::OsString::from(format!("{V2}/{rel}"));
            assert!(
                before.contains_key(&key) && before.get(&key) == after.get(&key),
                "{rel} was not kept as it was\n{}",
                run.describe()
            );
        }
        let mut registry = Registry::start(self.dir());
        verify_pulls(&registry.client(), model).assert_ok("pull every tag after the collection");
        registry.stop();
        run
    }
}

fn assert_refused_run(run: &RunOutput, needles: &[&str]) {
    assert_eq!(run.status.code(), Some(1), "{}", run.describe());
    for needle in needles {
        assert!(
            run.stderr.contains(needle),
            "{needle:?} not in stderr\n{}",
            run.describe()
        );
    }
}

/// The digest a tag of the model points at.
fn tagged(repo: &str, tag: &str) -> String {
    base().model.tags[repo][tag].clone()
}

/// An untagged manifest of the model (the image pushed by digest into `app`).
fn untagged_image() -> String {
    let model = &base().model;
    model.revisions["app"]
        .iter()
        .find(|d| model.manifests[*d].note == "untagged")
        .expect("the untagged image")
        .clone()
}

#[test]
fn corrupt_tag_links_are_refused_by_name() {
    // Garbage, a digest of the wrong length, an empty file.
    let long = format!("sha256:{}", "a".repeat(63));
    let contents: [&[u8]; 3] = [b"this is no digest at all", long.as_bytes(), b""];
    for content in contents {
        // The error quotes what the link holds.
        let quoted = format!("{:?}", String::from_utf8_lossy(content));
        for extra in [&[][..], &["-m"][..]] {
            let case = Case::new();
            case.write(&Case::tag_link("app", "v1"), content);
            case.assert_refused(
                extra,
                &["repository app: tag v1: corrupt current/link", &quoted],
                None,
            );
        }
    }
}

/// Runs the binary with its data segment capped at `limit` bytes: reading a 64 MiB file whole
/// would abort it.
fn gc_with_memory_cap(case: &Case, limit: usize, extra: &[&str]) -> RunOutput {
    let url = case.url();
    let data = format!("--data={limit}");
    let bin = bin().to_string_lossy().into_owned();
    let mut args = vec![
        data.as_str(),
        "--",
        bin.as_str(),
        "gc",
        "--storage",
        &url,
        "--min-age",
        "0s",
        "--concurrency",
        "4",
        "--format",
        "json",
    ];
    args.extend_from_slice(extra);
    run_with_deadline(case.dir(), Path::new("prlimit"), &args, DEADLINE)
}

/// Enough for a collection of the small registry, far too little for a 64 MiB read.
const MEMORY_CAP: usize = 96 * MIB;

#[test]
fn oversize_links_are_never_read_whole() {
    let digits = vec![b'7'; 64 * MIB];

    // The cap itself does not break a normal run (else the checks below would prove nothing).
    let case = Case::new();
    gc_with_memory_cap(&case, MEMORY_CAP, &["--dry-run"]).assert_success();

    // A tag link of 64 MiB: refused by its listed size, unread, named.
    let case = Case::new();
    case.write(&Case::tag_link("app", "v2"), &digits);
    let before = snapshot(&case.root());
    let run = gc_with_memory_cap(&case, MEMORY_CAP, &["-m"]);
    assert_refused_run(
        &run,
        &[
            "repository app: tag v2: corrupt current/link",
            "67108864 bytes, not read",
        ],
    );
    assert_eq!(diff(&before, &snapshot(&case.root())), Vec::<String>::new());

    // A `_layers` link of 64 MiB (of a live layer): its digest is in its key, it is never read;
    // the collection goes on and keeps it.
    let case = Case::new();
    let layer = base().model.manifests[&tagged("app", "v1")].layers[0].clone();
    let rel = format!("repositories/app/_layers/sha256/{}/link", hex_of(&layer));
    case.write(&rel, &digits);
    let before = snapshot(&case.root());
    let run = gc_with_memory_cap(&case, MEMORY_CAP, &["-m"]);
    run.assert_success();
    let after = snapshot(&case.root());
    assert_eq!(
        removed_blobs(&before, &after),
        base().model.expected_garbage_blobs(true),
        "{}",
        run.describe()
    );
    let key = std::ffi::OsString::from(format!("{V2}/{rel}"));
    assert_eq!(before.get(&key), after.get(&key), "the big link changed");
}

#[test]
fn names_that_are_not_utf8_are_refused_by_name() {
    let cases: [(&str, &str); 2] = [
        (
            "repositories/app/_manifests/tags",
            "_manifests/tags/caf\u{fffd}",
        ),
        ("blobs/sha256/ab", "blobs/sha256/ab/caf\u{fffd}"),
    ];
    for (parent, needle) in cases {
        let case = Case::new();
        let mut name = b"caf".to_vec();
        name.push(0xe9); // Latin-1 `é`: not UTF-8.
        let dir = case.path(parent).join(std::ffi::OsStr::from_bytes(&name));
        fs::create_dir_all(dir.join("current")).unwrap();
        fs::write(dir.join("current/link"), digest_of(b"x")).unwrap();
        case.assert_refused(&["-m"], &[needle, "not valid UTF-8"], None);
    }
}

#[test]
fn a_tagged_manifest_that_is_not_json_is_refused_by_name() {
    let digest = tagged("app", "v1");
    for extra in [&[][..], &["-m"][..]] {
        let case = Case::new();
        case.blob_at(hex_of(&digest), b"<html>this is not JSON</html>");
        case.assert_refused(
            extra,
            &[
                &format!("repository app: manifest {digest}"),
                &Case::blob_rel(hex_of(&digest)),
                "not JSON",
            ],
            None,
        );
    }
}

#[test]
fn an_untagged_manifest_that_is_not_json_is_kept() {
    // With -m: kept with a warning naming it; the rest is collected as usual.
    let case = Case::new();
    let hex = case.blob(b"not JSON either, but stored as a manifest");
    case.manifest_links("app", &hex, None);
    let revision = format!("repositories/app/_manifests/revisions/sha256/{hex}/link");
    let run = case.assert_collected(true, &[&Case::blob_rel(&hex), &revision]);
    let warning = format!("keeping unreadable manifest sha256:{hex}");
    let warnings = run.json()["warnings"].to_string();
    assert!(warnings.contains(&warning), "{}", run.describe());

    // Without -m every revision is a root, and a root that cannot be read stops the run.
    let case = Case::new();
    case.blob_at(hex_of(&untagged_image()), b"{\"truncated\": ");
    case.assert_refused(
        &[],
        &[
            &format!("repository app: manifest {}", untagged_image()),
            "not JSON",
        ],
        None,
    );
}

#[test]
fn a_tagged_manifest_larger_than_the_limit_is_refused_unread() {
    let case = Case::new();
    let mut huge = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[],"annotations":{"pad":""#.to_vec();
    huge.resize(17 * MIB, b'x');
    huge.extend_from_slice(b"\"}}");
    let hex = case.blob(&huge);
    case.manifest_links("app", &hex, Some("huge"));
    for extra in [&[][..], &["-m"][..]] {
        case.assert_refused(
            extra,
            &[
                &format!("repository app: manifest sha256:{hex}"),
                "larger than the 16777216 bytes",
            ],
            None,
        );
    }
}

/// An OCI index listing `children` (hex), stored as the blob `at` (not its digest: a cycle can
/// only exist in a damaged storage).
fn index_at(case: &Case, at: &str, children: &[&str]) {
    let manifests: Vec<_> = children
        .iter()
        .map(|c| {
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "digest": format!("sha256:{c}"),
                "size": 1,
            })
        })
        .collect();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    });
    case.blob_at(at, &serde_json::to_vec(&index).unwrap());
}

#[test]
fn index_cycles_terminate_and_keep_everything_they_reference() {
    // The amd64 child of `multi:latest`, listed by the cycles too: it must stay either way.
    let child = base().model.manifests[&tagged("multi", "latest")].children[0].clone();
    let child = hex_of(&child).to_owned();

    // An index that lists itself, tagged.
    let case = Case::new();
    let own = sha256_hex(b"an index that lists itself");
    index_at(&case, &own, &[&own, &child]);
    case.manifest_links("app", &own, Some("loop"));
    let own_rel = Case::blob_rel(&own);
    case.assert_collected(true, &[&own_rel, &Case::blob_rel(&child)]);

    // Two indexes listing each other, one tagged; the other reached only through the cycle.
    let (a, b) = (sha256_hex(b"index a"), sha256_hex(b"index b"));
    let b_revision = format!("repositories/app/_manifests/revisions/sha256/{b}/link");
    for delete_untagged in [true, false] {
        let case = Case::new();
        index_at(&case, &a, &[&b]);
        index_at(&case, &b, &[&a, &child]);
        case.manifest_links("app", &a, Some("ab"));
        case.manifest_links("app", &b, None);
        case.assert_collected(
            delete_untagged,
            &[&Case::blob_rel(&a), &Case::blob_rel(&b), &b_revision],
        );
    }
}

#[test]
fn symlinks_out_of_the_root_are_refused_untouched() {
    let outside = tempfile::tempdir().unwrap();
    let secret_dir = outside.path().join("dir");
    fs::create_dir_all(secret_dir.join("_layers/sha256")).unwrap();
    fs::write(secret_dir.join("precious"), "keep me").unwrap();
    // Looks like garbage to a collector that would follow the link: an orphan blob.
    let file = outside.path().join("file");
    fs::write(&file, "unreferenced bytes").unwrap();

    let blob = Case::blob_rel(&sha256_hex(b"unreferenced bytes"));
    let links = [
        ("repositories/evil", secret_dir.as_path()),
        (blob.as_str(), file.as_path()),
    ];
    for (rel, target) in links {
        for extra in [&[][..], &["-m"][..]] {
            let case = Case::new();
            let path = case.path(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            symlink(target, &path).unwrap();
            case.assert_refused(
                extra,
                &[&format!("{V2}/{rel}"), "symbolic link"],
                Some(outside.path()),
            );
            assert!(fs::symlink_metadata(&path).unwrap().is_symlink());
        }
    }
}

#[test]
fn a_fifo_in_place_of_a_link_is_refused_not_read() {
    // Reading a FIFO with no writer blocks forever: the run must refuse it instead, in time.
    let case = Case::new();
    let rel = Case::tag_link("app", "v1");
    fs::remove_file(case.path(&rel)).unwrap();
    let status = std::process::Command::new("mkfifo")
        .arg(case.path(&rel))
        .status()
        .unwrap();
    assert!(status.success());
    case.assert_refused(
        &["-m"],
        &[&format!("{V2}/{rel}"), "not a regular file"],
        None,
    );
}

/// Runs `gc -m` as `nobody` (the tests run as root, whom permissions do not stop).
fn gc_as_nobody(case: &Case) -> RunOutput {
    let url = case.url();
    let bin = bin().to_string_lossy().into_owned();
    let args = [
        "--reuid=nobody",
        "--regid=nogroup",
        "--clear-groups",
        bin.as_str(),
        "gc",
        "--storage",
        &url,
        "--min-age",
        "0s",
        "-m",
    ];
    run_with_deadline(case.dir(), Path::new("setpriv"), &args, DEADLINE)
}

/// A copy owned by `nobody` (so that a run as `nobody` could delete anything), with `rel` made
/// inaccessible to it.
fn owned_by_nobody(rel: &str) -> Case {
    let case = Case::new();
    fs::set_permissions(case.dir(), fs::Permissions::from_mode(0o755)).unwrap();
    let status = std::process::Command::new("chown")
        .args(["-R", "nobody:nogroup"])
        .arg(case.root())
        .status()
        .unwrap();
    assert!(status.success());
    fs::set_permissions(case.path(rel), fs::Permissions::from_mode(0o000)).unwrap();
    case
}

#[test]
fn permission_denied_is_refused_by_name() {
    // An unlistable directory, an unreadable tagged manifest, and an unreadable untagged one (a
    // manifest that cannot be read may reference anything, tagged or not).
    let manifest = Case::blob_rel(hex_of(&tagged("app", "v2")));
    let untagged = Case::blob_rel(hex_of(&untagged_image()));
    for rel in ["repositories/multi/_manifests", &manifest, &untagged] {
        let case = owned_by_nobody(rel);
        let before = snapshot(&case.root());
        let run = gc_as_nobody(&case);
        assert_refused_run(&run, &[&format!("{V2}/{rel}"), "Permission denied"]);
        assert_eq!(diff(&before, &snapshot(&case.root())), Vec::<String>::new());
    }

    // The same copy with permissions restored: `nobody` collects it (so the refusals above were
    // not for want of rights to delete).
    let case = owned_by_nobody("repositories/multi/_manifests");
    fs::set_permissions(
        case.path("repositories/multi/_manifests"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let before = snapshot(&case.root());
    gc_as_nobody(&case).assert_success();
    assert_eq!(
        removed_blobs(&before, &snapshot(&case.root())),
        base().model.expected_garbage_blobs(true)
    );
}

/// Keys of the blobs in `keys` (`…/blobs/sha256/xx/<hex>/data`), as `sha256:<hex>`.
fn blob_digests<'k>(keys: impl IntoIterator<Item = &'k String>) -> BTreeSet<String> {
    keys.into_iter()
        .filter_map(|key| {
            let (_, rest) = key.split_once("/blobs/sha256/")?;
            let (hex, data) = rest.get(3..)?.split_once('/')?;
            (data == "data").then(|| format!("sha256:{hex}"))
        })
        .collect()
}

#[test]
fn s3_faults_are_retried_or_refused_by_name() {
    const BUCKET: &str = "hostile";
    let moto = MotoServer::start();
    moto.create_bucket(BUCKET);
    let dir = tempfile::tempdir().unwrap();
    let mut registry = Registry::start_s3(dir.path(), &moto.endpoint(), BUCKET);
    let model = small_workload(&registry.client(), None);
    registry.stop();
    let upstream = moto.endpoint().trim_start_matches("http://").to_owned();
    let config = fs::read_to_string(registry.config_path()).unwrap();
    let through = |proxy: &FaultProxy| {
        let path = dir.path().join("through-proxy.yml");
        fs::write(&path, config.replace(&moto.endpoint(), &proxy.endpoint())).unwrap();
        let path = path.to_string_lossy().into_owned();
        let mut args = vec!["gc", path.as_str(), "--min-age", "0s", "-m"];
        args.extend(["--format", "json"]);
        run_with_deadline(dir.path(), bin(), &args, Duration::from_secs(300))
    };
    // The registry's keys (regsweep's own run lock under `registry/_regsweep/` aside).
    let keys = || {
        let mut keys = moto.list_keys(BUCKET, "registry/");
        keys.retain(|k| !k.starts_with("registry/_regsweep/"));
        keys
    };
    let before = keys();
    let manifest_key = |digest: &str| {
        format!(
            "registry/{V2}/blobs/sha256/{}/{}/data",
            &hex_of(digest)[..2],
            hex_of(digest)
        )
    };

    // A manifest GET that always fails — 403 (not retried) on a tagged manifest and on an untagged
    // one (which, unread, might reference anything), 503 (retried, then given up) on a tagged
    // one: refused, naming the manifest, nothing deleted.
    let untagged = model.revisions["app"]
        .iter()
        .find(|d| model.manifests[*d].note == "untagged")
        .unwrap()
        .clone();
    let tagged = model.tags["app"]["v1"].clone();
    type Proxy = fn(&str, &str) -> FaultProxy;
    let faults: [(&str, Proxy, &str); 3] = [
        (&untagged, FaultProxy::deny, "403"),
        (&tagged, FaultProxy::deny, "403"),
        (&tagged, FaultProxy::slow_down_always, "503"),
    ];
    for (digest, proxy, status) in faults {
        let key = manifest_key(digest);
        let proxy = proxy(&upstream, &format!("{}/data", hex_of(digest)));
        let run = through(&proxy);
        let named = key.trim_start_matches("registry/");
        assert_refused_run(
            &run,
            &[&format!("repository app: manifest {digest}"), named, status],
        );
        // 403 is final; 503 is retried ten times before the run gives up.
        let expected = if status == "503" { 11 } else { 1 };
        assert_eq!(proxy.injected(), expected, "{}", run.describe());
        assert_eq!(keys(), before, "a refused run deleted objects");
    }

    // A listing that misses a stored manifest (of tag app:v1; the proxy dates everything in 2020,
    // before the run): its tag would look broken and its layers unreferenced. The lookup of what the listing did not return finds
    // it: refused by name, nothing deleted.
    let proxy = FaultProxy::hide_listed(&upstream, &format!("{}/data", hex_of(&tagged)));
    let run = through(&proxy);
    assert_refused_run(
        &run,
        &[
            &format!("blob {tagged} (tag app:"),
            "the listing did not return it",
        ],
    );
    assert!(proxy.injected() > 0, "no listing page lost the manifest");
    assert_eq!(keys(), before, "a refused run deleted objects");

    // `delete app:v1` where the storage refuses to delete the tag (403 on the DeleteObjects that
    // names its `current/link`): the tag stays, so nothing it points at may go — the run stops
    // after the untag phase, nothing deleted, and the tag still pulls.
    let proxy = FaultProxy::deny(&upstream, "tags/v1/current/link</Key>");
    let path = dir.path().join("deny-untag.yml");
    fs::write(&path, config.replace(&moto.endpoint(), &proxy.endpoint())).unwrap();
    let path = path.to_string_lossy().into_owned();
    let args = ["delete", path.as_str(), "app:v1", "--min-age", "0s"];
    let run = run_with_deadline(dir.path(), bin(), &args, Duration::from_secs(300));
    assert_eq!(run.status.code(), Some(1), "{}", run.describe());
    let message = "removed tags could not be deleted: nothing else was deleted";
    assert!(
        run.stdout.contains(message) || run.stderr.contains(message),
        "{}",
        run.describe()
    );
    assert_eq!(proxy.injected(), 1, "{}", run.describe());
    assert_eq!(keys(), before, "objects deleted although the tag stayed");

    // A storage that answers 503 to its first 6 requests (its first request, sent alone, is thus
    // retried 6 times): the run collects exactly the garbage; every tag pulls from the restarted
    // registry. (Ten retries of one request within three minutes is the budget: a storage that
    // answers 503 for longer stops the run before any deletion, like the 503 case above.)
    let proxy = FaultProxy::throttle_first(&upstream, 6);
    let run = through(&proxy);
    assert!(run.success(), "{}", run.describe());
    assert_eq!(proxy.injected(), 6);
    let after = keys();
    let removed: Vec<&String> = before.difference(&after).collect();
    assert_eq!(
        blob_digests(removed),
        model.expected_garbage_blobs(true),
        "{}",
        run.describe()
    );
    registry.restart();
    verify_pulls(&registry.client(), &model).assert_ok("pull every tag after the collection");
}
