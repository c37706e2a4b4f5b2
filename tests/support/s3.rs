//! A real S3 API server for the S3 tests: `moto_server` (PyPI `moto[server]`, installed by
//! `scripts/install-deps`) as a child process on a free loopback port, with helpers to create
//! buckets, copy trees in and out, and count the requests it served.
//!
//! Moto accepts any credentials; the harness uses access key `test` / secret `test` in region
//! `us-east-1`, with path-style requests (`http://127.0.0.1:<port>/<bucket>/<key>`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use ureq::Agent;

use super::objects;
use super::server::ServerProcess;

/// Overrides the `moto_server` binary.
pub const MOTO_BIN_ENV: &str = "REGSWEEP_TEST_MOTO_BIN";
pub const ACCESS_KEY: &str = "test";
pub const SECRET_KEY: &str = "test";
pub const REGION: &str = "us-east-1";

/// The request kinds [`MotoServer::requests_since`] counts (every key is present, 0 included).
pub const REQUEST_KINDS: [&str; 6] = ["list", "get", "head", "delete", "put", "post"];

/// A `moto_server` on `127.0.0.1:<port>`, logging to `<tempdir>/moto.log`. Dropping it kills the
/// process (and every bucket with it: moto keeps them in memory).
pub struct MotoServer {
    // Field order matters: the process dies before its log directory is removed.
    process: ServerProcess,
    agent: Agent,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for MotoServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MotoServer")
            .field("endpoint", &self.endpoint())
            .finish()
    }
}

/// `$REGSWEEP_TEST_MOTO_BIN`, else `moto_server` on `PATH`. Panics with an install hint when
/// there is none: these tests never skip silently.
pub fn moto_binary() -> PathBuf {
    if let Some(path) = std::env::var_os(MOTO_BIN_ENV) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "{MOTO_BIN_ENV}={} does not name a file",
            path.display()
        );
        return path;
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("moto_server");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "moto_server was not found on PATH: run scripts/install-deps (or `pip install \
         'moto[server]==5.1.22'`), or point {MOTO_BIN_ENV} at a moto_server binary"
    );
}

fn agent() -> Agent {
    Agent::new_with_config(
        Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build(),
    )
}

impl MotoServer {
    /// Starts `moto_server -H 127.0.0.1 -p <free port>` and waits until it answers S3 requests.
    pub fn start() -> MotoServer {
        let bin = moto_binary();
        let dir = tempfile::Builder::new()
            .prefix("regsweep-moto-")
            .tempdir()
            .expect("create a temporary directory");
        let agent = agent();
        let process = ServerProcess::start(
            "moto_server",
            &dir.path().join("moto.log"),
            |port| {
                let mut command = Command::new(&bin);
                command
                    .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                    .current_dir(dir.path());
                command
            },
            // ListBuckets: only moto answers it with this document (not whatever else may hold
            // the port while moto is still importing).
            |port| {
                agent
                    .get(format!("http://127.0.0.1:{port}/"))
                    .call()
                    .ok()
                    .and_then(|mut r| r.body_mut().read_to_string().ok())
                    .is_some_and(|body| body.contains("ListAllMyBucketsResult"))
            },
        );
        MotoServer {
            process,
            agent,
            _dir: dir,
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.process.port())
    }

    pub fn port(&self) -> u16 {
        self.process.port()
    }

    /// moto's output: one werkzeug access-log line per request, and tracebacks of its errors.
    pub fn log_path(&self) -> &Path {
        self.process.log_path()
    }

    /// The last `lines` lines of moto's log.
    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }

    /// Creates `bucket` (moto needs no signature for it).
    pub fn create_bucket(&self, bucket: &str) {
        let url = format!("{}/{bucket}", self.endpoint());
        let mut response = self
            .agent
            .put(&url)
            .send_empty()
            .unwrap_or_else(|e| panic!("PUT {url}: {e}"));
        let status = response.status().as_u16();
        let body = response.body_mut().read_to_string().unwrap_or_default();
        assert_eq!(status, 200, "create bucket {bucket}: {body}");
    }

    /// An object_store client for `bucket`, as the harness configures it: path-style, plain HTTP,
    /// `test`/`test`, `us-east-1`.
    pub fn store(&self, bucket: &str) -> Arc<dyn ObjectStore> {
        let store = AmazonS3Builder::new()
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .with_virtual_hosted_style_request(false)
            .with_region(REGION)
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .with_bucket_name(bucket)
            .build()
            .unwrap_or_else(|e| panic!("S3 client for bucket {bucket}: {e}"));
        Arc::new(store)
    }

    /// Every key under `prefix` in `bucket` (full keys; `""` for the whole bucket).
    pub fn list_keys(&self, bucket: &str, prefix: &str) -> BTreeSet<String> {
        objects::list_keys(self.store(bucket).as_ref(), prefix)
    }

    /// Writes every object under `prefix` (`registry/` and `registry` are the same) to
    /// `dir/<key minus prefix>`, creating directories.
    pub fn download(&self, bucket: &str, prefix: &str, dir: &Path) {
        objects::download(self.store(bucket).as_ref(), prefix, dir);
    }

    /// Uploads every file under `dir` as `<prefix>/<relative path>`; returns how many.
    pub fn upload_tree(&self, bucket: &str, prefix: &str, dir: &Path) -> usize {
        objects::upload_tree(self.store(bucket).as_ref(), prefix, dir)
    }

    /// The current length of moto's log, in bytes: pass it to [`MotoServer::requests_since`].
    pub fn log_mark(&self) -> usize {
        std::fs::metadata(self.log_path()).map_or(0, |m| m.len() as usize)
    }

    /// The requests moto served since `mark` (a [`MotoServer::log_mark`]), by kind: see
    /// [`classify_request`]. Every kind of [`REQUEST_KINDS`] is a key, with 0 when none was seen.
    ///
    /// Werkzeug writes a request's log line before it sends the response, so every request
    /// answered before this call is counted.
    pub fn requests_since(&self, mark: usize) -> BTreeMap<String, u64> {
        let log = std::fs::read(self.log_path()).unwrap_or_default();
        let text = String::from_utf8_lossy(log.get(mark..).unwrap_or_default());
        count_requests(&text)
    }
}

/// Counts the access-log lines of `log` by kind (see [`classify_request`]); other lines (startup
/// banner, tracebacks) are ignored.
pub fn count_requests(log: &str) -> BTreeMap<String, u64> {
    let mut counts: BTreeMap<String, u64> =
        REQUEST_KINDS.iter().map(|k| ((*k).to_owned(), 0)).collect();
    for (method, target) in log.lines().filter_map(parse_access_line) {
        *counts
            .entry(classify_request(method, target).to_owned())
            .or_default() += 1;
    }
    counts
}

/// `127.0.0.1 - - [28/Nov/2026 22:12:55] "GET /bkt?list-type=2&prefix=a/ HTTP/1.1" 200 -` →
/// `("GET", "/bkt?list-type=2&prefix=a/")`.
pub fn parse_access_line(line: &str) -> Option<(&str, &str)> {
    let (_, request) = line.split_once("] \"")?;
    let mut words = request.split(' ');
    let method = words.next()?;
    let target = words.next()?;
    let protocol = words.next()?;
    (protocol.starts_with("HTTP/") && target.starts_with('/')).then_some((method, target))
}

/// The kind of a path-style S3 request (`/<bucket>[/<key>][?query]`):
/// - `list`: GET on a bucket (ListObjects v1/v2, and bucket subresources such as `?uploads`:
///   nothing the tests drive reads a bucket any other way);
/// - `get`: GET of an object;
/// - `head`: HEAD of anything;
/// - `delete`: DELETE of anything, and `POST /<bucket>?delete` (DeleteObjects: one batch, one
///   request);
/// - `put`: PUT of anything (objects, parts, copies, buckets);
/// - `post`: other POSTs (multipart upload start and completion);
/// - `other`: any other method.
pub fn classify_request(method: &str, target: &str) -> &'static str {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let is_bucket = !path.trim_start_matches('/').contains('/')
        || path.trim_start_matches('/').split_once('/').map(|(_, k)| k) == Some("");
    let has_param = |name: &str| {
        query
            .split('&')
            .any(|pair| pair.split_once('=').map_or(pair, |(n, _)| n) == name)
    };
    match method {
        "GET" if is_bucket => "list",
        "GET" => "get",
        "HEAD" => "head",
        "DELETE" => "delete",
        "POST" if is_bucket && has_param("delete") => "delete",
        "POST" => "post",
        "PUT" => "put",
        _ => "other",
    }
}
