//! The real registry (`docker-registry serve`) as a child process on a free loopback port, on
//! filesystem storage or on S3 (a `moto_server`, see [`super::s3`]), and its official garbage
//! collector.

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::client::Client;

/// Where Debian's `docker-registry` package installs the binary.
pub const DEFAULT_REGISTRY_BIN: &str = "/usr/bin/docker-registry";
/// Overrides the registry binary.
pub const REGISTRY_BIN_ENV: &str = "REGSWEEP_TEST_REGISTRY_BIN";

/// `storage.s3.rootdirectory` of an S3 registry: not empty, so that the collector under test must
/// handle a root prefix (the registry's keys are `registry/docker/registry/v2/...`).
pub const S3_ROOT_DIRECTORY: &str = "/registry";

const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Where a registry keeps its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storage {
    /// `storage.filesystem` in `<dir>/storage`.
    Filesystem,
    /// `storage.s3` in `bucket` of the S3 server at `endpoint`, under [`S3_ROOT_DIRECTORY`].
    S3 { endpoint: String, bucket: String },
}

/// The registry's blob descriptor cache (`storage.cache.blobdescriptor`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobCache {
    InMemory,
    /// `redis`, with `redis.addr` = `addr` (`127.0.0.1:<port>`), `redis.password` and `redis.db`.
    Redis {
        addr: String,
        password: String,
        db: u32,
    },
}

/// A registry on `127.0.0.1:<port>`, configured by `dir/config.yml`, serving `dir/storage` or an
/// S3 bucket. Dropping it kills the process.
#[derive(Debug)]
pub struct Registry {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    storage: Storage,
    cache: BlobCache,
    /// Run under a shell loop that starts it again whenever it exits (see
    /// [`Registry::start_supervised`]); `child` is then the shell, leader of its process group.
    supervised: bool,
    child: Option<Child>,
}

/// The registry binary: `$REGSWEEP_TEST_REGISTRY_BIN`, else `/usr/bin/docker-registry`, else
/// `docker-registry` on `PATH`. Panics when there is none: these tests never skip silently.
pub fn registry_binary() -> PathBuf {
    if let Some(path) = std::env::var_os(REGISTRY_BIN_ENV) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "{REGISTRY_BIN_ENV}={} does not name a file",
            path.display()
        );
        return path;
    }
    let default = PathBuf::from(DEFAULT_REGISTRY_BIN);
    if default.is_file() {
        return default;
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("docker-registry");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "the Docker Distribution registry binary was not found ({DEFAULT_REGISTRY_BIN}, or \
         docker-registry on PATH): install it with `apt-get install docker-registry` \
         (Debian/Ubuntu), or point {REGISTRY_BIN_ENV} at a `registry` 2.x binary"
    );
}

/// A port that was free a moment ago (another process may take it before the caller binds it:
/// callers retry).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// Quotes a string for YAML (double-quoted style).
fn yaml_quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Keeps the environment from changing the registry under test: `REGISTRY_*` variables override
/// its config, and `AWS_*` ones reach its S3 driver (which panics on `AWS_CA_BUNDLE`, and would
/// pick up credentials, regions or profiles that are not the test's).
fn scrub_environment(command: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let key_text = key.to_string_lossy();
        if key_text.starts_with("REGISTRY_") || key_text.starts_with("AWS_") {
            command.env_remove(&key);
        }
    }
}

impl Registry {
    /// Writes `dir/config.yml` (filesystem storage in `dir/storage`, deletes enabled, in-memory
    /// blob descriptor cache, upload purging disabled so that the registry never races the tests
    /// on `_uploads`), starts the registry on a free port, logging to `dir/registry.log`, and waits
    /// until `GET /v2/` answers 200.
    pub fn start(dir: &Path) -> Registry {
        Registry::start_with(dir, Storage::Filesystem)
    }

    /// Like [`Registry::start`], on S3: `bucket` (which must exist) of the S3 server at `endpoint`
    /// (`http://127.0.0.1:<port>`, e.g. [`super::s3::MotoServer::endpoint`]), under
    /// [`S3_ROOT_DIRECTORY`], with access key `test`/`test`, region `us-east-1`, path-style
    /// requests and redirects disabled (blobs are served by the registry, not by S3 URLs).
    pub fn start_s3(dir: &Path, endpoint: &str, bucket: &str) -> Registry {
        Registry::start_with(
            dir,
            Storage::S3 {
                endpoint: endpoint.trim_end_matches('/').to_owned(),
                bucket: bucket.to_owned(),
            },
        )
    }

    /// A filesystem registry with `cache`, run under a supervisor (`sh -c 'while :; do
    /// docker-registry serve …; done'`, the registry's pid in [`Registry::pid_file`]) that starts it
    /// again whenever it exits, like systemd or Kubernetes would: [`Registry::restart_command`]
    /// restarts it from any process, and [`Registry::wait_until_restarted`] waits for that.
    pub fn start_supervised(dir: &Path, cache: BlobCache) -> Registry {
        Registry::start_full(dir, Storage::Filesystem, cache, true)
    }

    fn start_with(dir: &Path, storage: Storage) -> Registry {
        Registry::start_full(dir, storage, BlobCache::InMemory, false)
    }

    fn start_full(dir: &Path, storage: Storage, cache: BlobCache, supervised: bool) -> Registry {
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let dir = dir
            .canonicalize()
            .unwrap_or_else(|e| panic!("canonicalize {}: {e}", dir.display()));
        let mut registry = Registry {
            bin: registry_binary(),
            dir,
            port: 0,
            storage,
            cache,
            supervised,
            child: None,
        };
        if registry.storage == Storage::Filesystem {
            fs::create_dir_all(registry.storage_root()).expect("create the storage root");
        }
        // Another process may grab the port between our probe and the registry's bind: retry.
        for attempt in 1..=5 {
            registry.port = free_port();
            registry.write_config();
            match registry.spawn_and_wait() {
                Ok(()) => return registry,
                Err(e) if attempt < 5 && e.contains("address already in use") => continue,
                Err(e) => panic!("{e}"),
            }
        }
        unreachable!()
    }

    fn write_config(&self) {
        let driver = match &self.storage {
            Storage::Filesystem => format!(
                "  filesystem:\n    rootdirectory: {root}\n",
                root = yaml_quote(&self.storage_root().to_string_lossy()),
            ),
            // `secure: false` for moto's plain HTTP; `chunksize` is the driver's minimum (5 MiB),
            // so the small test blobs are written with single PUTs, not multipart uploads.
            Storage::S3 { endpoint, bucket } => format!(
                "  s3:\n    accesskey: test\n    secretkey: test\n    region: us-east-1\n    \
                 regionendpoint: {endpoint}\n    bucket: {bucket}\n    rootdirectory: {root}\n    \
                 secure: false\n    v4auth: true\n    chunksize: 5242880\n  \
                 redirect:\n    disable: true\n",
                endpoint = yaml_quote(endpoint),
                bucket = yaml_quote(bucket),
                root = yaml_quote(S3_ROOT_DIRECTORY),
            ),
        };
        let (cache, redis) = match &self.cache {
            BlobCache::InMemory => ("inmemory", String::new()),
            BlobCache::Redis { addr, password, db } => (
                "redis",
                format!(
                    "redis:\n  addr: {}\n  password: {}\n  db: {db}\n",
                    yaml_quote(addr),
                    yaml_quote(password)
                ),
            ),
        };
        let config = format!(
            "version: 0.1\n\
             log:\n  level: warn\n  formatter: text\n\
             storage:\n{driver}  delete:\n    enabled: true\n  \
             cache:\n    blobdescriptor: {cache}\n  maintenance:\n    uploadpurging:\n      enabled: false\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: regsweep-test-secret\n{redis}",
            port = self.port,
        );
        fs::write(self.config_path(), config).expect("write config.yml");
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open registry.log");
        let log_err = log.try_clone().expect("clone the log handle");
        let mut command = if self.supervised {
            let _ = fs::remove_file(self.pid_file());
            let mut shell = Command::new("sh");
            shell
                .arg("-c")
                .arg(r#"while :; do "$0" serve "$1" & echo $! > "$2"; wait $!; sleep 0.1; done"#)
                .arg(&self.bin)
                .arg(self.config_path())
                .arg(self.pid_file())
                // Its own process group, so that stopping it stops the registry too.
                .process_group(0);
            shell
        } else {
            let mut registry = Command::new(&self.bin);
            registry.arg("serve").arg(self.config_path());
            registry
        };
        command.stdin(Stdio::null()).stdout(log).stderr(log_err);
        scrub_environment(&mut command);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {} serve: {e}", self.bin.display()));
        self.child = Some(child);

        let client = Client::with_timeout(&self.url(), Duration::from_secs(2));
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!(
                    "the registry exited early ({status}) on port {}; log tail:\n{}",
                    self.port,
                    self.log_tail(40)
                ));
            }
            if client.ping() == Some(200) {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(format!(
                    "the registry did not answer GET /v2/ with 200 within {READY_TIMEOUT:?} on \
                     port {}; log tail:\n{}",
                    self.port,
                    self.log_tail(40)
                ));
            }
            sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.supervised {
                // The shell and the registry it runs: the process group the shell leads.
                let _ = Command::new("sh")
                    .arg("-c")
                    .arg(format!("kill -9 -{}", child.id()))
                    .status();
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Where a supervised registry's pid is (rewritten at each start).
    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("registry.pid")
    }

    /// The pid of the registry process a supervisor runs now.
    pub fn registry_pid(&self) -> Option<u32> {
        fs::read_to_string(self.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// A shell command that restarts a supervised registry (kills it; the supervisor starts it
    /// again, on the same port and storage, with an empty in-memory cache).
    pub fn restart_command(&self) -> String {
        assert!(
            self.supervised,
            "restart_command() of an unsupervised registry"
        );
        format!("kill -KILL \"$(cat '{}')\"", self.pid_file().display())
    }

    /// Waits until a supervised registry runs another process than `old_pid` and answers
    /// `GET /v2/` with 200; panics with the log tail after 20 s.
    pub fn wait_until_restarted(&self, old_pid: u32) {
        let client = Client::with_timeout(&self.url(), Duration::from_secs(2));
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let pid = self.registry_pid();
            if pid.is_some_and(|pid| pid != old_pid) && client.ping() == Some(200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the registry (pid {old_pid}) was not restarted within {READY_TIMEOUT:?} (pid now \
                 {pid:?}); log tail:\n{}",
                self.log_tail(40)
            );
            sleep(Duration::from_millis(50));
        }
    }

    /// Stops the registry (SIGKILL: every write of the filesystem driver completed before its
    /// response was sent, so nothing is lost). Idempotent.
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Starts the registry again on the same port and storage (the in-memory blob descriptor cache
    /// starts empty, as after a real restart).
    pub fn restart(&mut self) {
        self.stop();
        let mut last = String::new();
        // The port was ours a moment ago; give the kernel a few tries to release it.
        for _ in 0..10 {
            match self.spawn_and_wait() {
                Ok(()) => return,
                Err(e) if e.contains("address already in use") => {
                    last = e;
                    sleep(Duration::from_millis(300));
                }
                Err(e) => panic!("{e}"),
            }
        }
        panic!("restart: {last}");
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A client for this registry.
    pub fn client(&self) -> Client {
        Client::new(&self.url())
    }

    /// The directory the registry was started in (canonical).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.yml")
    }

    /// [`Registry::config_path`] as regsweep's command line takes it.
    pub fn config_arg(&self) -> String {
        self.config_path().to_string_lossy().into_owned()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("registry.log")
    }

    /// Where this registry keeps its content.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// `storage.filesystem.rootdirectory`. Filesystem registries only: panics on S3 (see
    /// [`Registry::s3_v2_prefix`], and download the bucket to look at the tree).
    pub fn storage_root(&self) -> PathBuf {
        assert!(
            self.storage == Storage::Filesystem,
            "storage_root() of a registry on {:?}: only filesystem registries have one",
            self.storage
        );
        self.dir.join("storage")
    }

    /// `<rootdirectory>/docker/registry/v2`. Filesystem registries only: panics on S3.
    pub fn v2_root(&self) -> PathBuf {
        self.storage_root().join("docker/registry/v2")
    }

    /// The key prefix of `<rootdirectory>/docker/registry/v2/` in the bucket of an S3 registry:
    /// `registry/docker/registry/v2/`. Panics on a filesystem registry.
    pub fn s3_v2_prefix(&self) -> String {
        assert!(
            matches!(self.storage, Storage::S3 { .. }),
            "s3_v2_prefix() of a filesystem registry"
        );
        format!(
            "{}/docker/registry/v2/",
            S3_ROOT_DIRECTORY.trim_matches('/')
        )
    }

    /// The last `lines` lines of the registry's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(self.log_path()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Runs the official collector, `docker-registry garbage-collect [--dry-run]
    /// [--delete-untagged] config.yml`, and parses what it printed; panics with its output on a
    /// non-zero exit.
    ///
    /// The registry may be running or stopped: the collector opens the storage itself, and a dry
    /// run only reads. After a real (non-dry) run on a running registry, call [`Registry::restart`]:
    /// its blob descriptor cache still believes the deleted blobs exist.
    pub fn official_gc(&self, dry_run: bool, delete_untagged: bool) -> OfficialGc {
        let mut command = Command::new(&self.bin);
        command.arg("garbage-collect");
        if dry_run {
            command.arg("--dry-run");
        }
        if delete_untagged {
            command.arg("--delete-untagged");
        }
        command.arg(self.config_path()).stdin(Stdio::null());
        scrub_environment(&mut command);
        let output = command
            .output()
            .unwrap_or_else(|e| panic!("run {} garbage-collect: {e}", self.bin.display()));
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(
            output.status.success(),
            "garbage-collect (dry_run={dry_run}, delete_untagged={delete_untagged}) failed: \
             {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            output.status
        );
        OfficialGc::parse(stdout, stderr)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What the official collector printed.
#[derive(Debug, Clone, Default)]
pub struct OfficialGc {
    /// `blob eligible for deletion: sha256:…`
    pub blobs_eligible: BTreeSet<String>,
    /// `manifest eligible for deletion: sha256:…` (a revision of some repository; the line does
    /// not say which).
    pub manifests_eligible: BTreeSet<String>,
    /// `<repo>: marking manifest sha256:…` and `<repo>: marking blob sha256:…`.
    pub marked: BTreeSet<String>,
    pub stdout: String,
    pub stderr: String,
}

impl OfficialGc {
    pub fn parse(stdout: String, stderr: String) -> OfficialGc {
        let mut gc = OfficialGc::default();
        for line in stdout.lines() {
            let digest = line
                .split_whitespace()
                .rev()
                .find(|word| word.starts_with("sha256:"))
                .map(str::to_owned);
            let Some(digest) = digest else { continue };
            if line.contains("blob eligible for deletion") {
                gc.blobs_eligible.insert(digest);
            } else if line.contains("manifest eligible for deletion") {
                gc.manifests_eligible.insert(digest);
            } else if line.contains(": marking ") {
                gc.marked.insert(digest);
            }
        }
        gc.stdout = stdout;
        gc.stderr = stderr;
        gc
    }
}
