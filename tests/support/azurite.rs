//! An Azure Blob Storage emulator for the Azure tests: Azurite (npm `azurite`, installed by
//! `scripts/install-deps` into `tools/azurite`) as a child process on a free loopback port, with
//! helpers to create containers and copy trees in and out.
//!
//! Azurite serves the well-known development account [`ACCOUNT`] / [`ACCOUNT_KEY`] path-style:
//! `http://127.0.0.1:<port>/devstoreaccount1/<container>/<blob>`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use object_store::ObjectStore;
use object_store::azure::MicrosoftAzureBuilder;
use sha2::{Digest, Sha256};
use ureq::Agent;

use super::content::http_date;
use super::objects;
use super::server::ServerProcess;

/// Overrides the Azurite blob server: an executable (`azurite-blob`) or a `.js` entry point (run
/// with `node`); relative paths are relative to the crate root.
pub const AZURITE_BIN_ENV: &str = "REGSWEEP_TEST_AZURITE_BIN";
/// Where `scripts/install-deps` installs it, relative to the crate root.
pub const DEFAULT_AZURITE_BIN: &str = "tools/azurite/node_modules/.bin/azurite-blob";
/// The emulator's development account and its key (public, documented by Microsoft).
pub const ACCOUNT: &str = "devstoreaccount1";
pub const ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
/// The `x-ms-version` of the harness's own requests.
const API_VERSION: &str = "2021-08-06";

/// An Azurite blob service on `127.0.0.1:<port>`, storing into a temporary directory. Dropping
/// it kills the process and removes the data.
pub struct Azurite {
    // Field order matters: the process dies before its data directory is removed.
    process: ServerProcess,
    agent: Agent,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for Azurite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Azurite")
            .field("service_url", &self.service_url())
            .finish()
    }
}

/// `$REGSWEEP_TEST_AZURITE_BIN`, else `tools/azurite/node_modules/.bin/azurite-blob` (both
/// relative to the crate root unless absolute). Panics with an install hint when missing.
pub fn azurite_binary() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (path, origin) = match std::env::var_os(AZURITE_BIN_ENV) {
        Some(path) => (root.join(path), AZURITE_BIN_ENV),
        None => (root.join(DEFAULT_AZURITE_BIN), "the default location"),
    };
    assert!(
        path.is_file(),
        "Azurite was not found at {} ({origin}): run scripts/install-deps (or `npm install \
         --prefix tools/azurite azurite@3.35.0`), or point {AZURITE_BIN_ENV} at azurite-blob",
        path.display()
    );
    path
}

impl Azurite {
    /// Starts the blob service on a free port (telemetry off, no access log, any API version,
    /// unknown headers ignored) and waits until it answers.
    pub fn start() -> Azurite {
        let bin = azurite_binary();
        let dir = tempfile::Builder::new()
            .prefix("regsweep-azurite-")
            .tempdir()
            .expect("create a temporary directory");
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).expect("create Azurite's data directory");
        let agent = Agent::new_with_config(
            Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(10)))
                .build(),
        );
        let process = ServerProcess::start(
            "azurite-blob",
            &dir.path().join("azurite.log"),
            |port| {
                let mut command = if bin.extension().is_some_and(|e| e == "js") {
                    let mut node = Command::new("node");
                    node.arg(&bin);
                    node
                } else {
                    Command::new(&bin)
                };
                command
                    .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
                    .arg("--location")
                    .arg(&data)
                    .args([
                        "--silent",
                        "--skipApiVersionCheck",
                        "--loose",
                        // Otherwise it phones home (and logs its failure to, offline).
                        "--disableTelemetry",
                    ])
                    .current_dir(dir.path());
                command
            },
            // Any answer from Azurite (an unsigned request is refused) names it in `Server`.
            |port| {
                agent
                    .get(format!("http://127.0.0.1:{port}/{ACCOUNT}?comp=list"))
                    .call()
                    .ok()
                    .and_then(|r| r.headers().get("server")?.to_str().ok().map(str::to_owned))
                    .is_some_and(|server| server.starts_with("Azurite-Blob"))
            },
        );
        Azurite {
            process,
            agent,
            _dir: dir,
        }
    }

    pub fn port(&self) -> u16 {
        self.process.port()
    }

    /// `http://127.0.0.1:<port>/devstoreaccount1`: the registry's `storage.azure.serviceurl`
    /// and object_store's endpoint.
    pub fn service_url(&self) -> String {
        format!("http://127.0.0.1:{}/{ACCOUNT}", self.process.port())
    }

    /// Azurite's output (its access log is off).
    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }

    /// Creates `container` (`PUT ?restype=container`, SharedKey-signed: object_store has no
    /// container API).
    pub fn create_container(&self, container: &str) {
        let url = format!("{}/{container}?restype=container", self.service_url());
        let date = http_date(SystemTime::now());
        // SharedKey string to sign: the verb, eleven standard headers (all empty here; an empty
        // body's Content-Length is signed as empty), the x-ms-* headers, then the resource:
        // "/<account>" + the URL path (which already starts with the account, path-style) + the
        // query parameters.
        let string_to_sign = format!(
            "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{API_VERSION}\n\
             /{ACCOUNT}/{ACCOUNT}/{container}\nrestype:container"
        );
        let key = base64_decode(ACCOUNT_KEY);
        let signature = base64_encode(&hmac_sha256(&key, string_to_sign.as_bytes()));
        let mut response = self
            .agent
            .put(&url)
            .header("x-ms-date", &date)
            .header("x-ms-version", API_VERSION)
            .header("Authorization", format!("SharedKey {ACCOUNT}:{signature}"))
            .send_empty()
            .unwrap_or_else(|e| panic!("PUT {url}: {e}"));
        let status = response.status().as_u16();
        let body = response.body_mut().read_to_string().unwrap_or_default();
        assert_eq!(status, 201, "create container {container}: {body}");
    }

    /// An object_store client for `container`, with the account key, against this emulator.
    pub fn store(&self, container: &str) -> Arc<dyn ObjectStore> {
        let store = MicrosoftAzureBuilder::new()
            .with_account(ACCOUNT)
            .with_access_key(ACCOUNT_KEY)
            .with_container_name(container)
            .with_endpoint(self.service_url())
            .with_allow_http(true)
            .build()
            .unwrap_or_else(|e| panic!("Azure client for container {container}: {e}"));
        Arc::new(store)
    }

    /// Every blob name under `prefix` in `container` (full names; `""` for all).
    pub fn list_keys(&self, container: &str, prefix: &str) -> BTreeSet<String> {
        objects::list_keys(self.store(container).as_ref(), prefix)
    }

    /// Writes every blob under `prefix` (`reg/` and `reg` are the same) to
    /// `dir/<name minus prefix>`, creating directories.
    pub fn download(&self, container: &str, prefix: &str, dir: &Path) {
        objects::download(self.store(container).as_ref(), prefix, dir);
    }

    /// Uploads every file under `dir` as blob `<prefix>/<relative path>`; returns how many.
    pub fn upload_tree(&self, container: &str, prefix: &str, dir: &Path) -> usize {
        objects::upload_tree(self.store(container).as_ref(), prefix, dir)
    }
}

/// HMAC-SHA256 (RFC 2104), for SharedKey signatures.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.map(|b| b ^ byte);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(BASE64[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn base64_decode(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes().filter(|c| *c != b'=') {
        let value = BASE64
            .iter()
            .position(|b| *b == c)
            .unwrap_or_else(|| panic!("not base64: {text}")) as u32;
        // At most 13 bits are pending: keep the accumulator from overflowing.
        acc = ((acc << 6) | value) & 0x3fff;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_the_account_key() {
        let key = base64_decode(ACCOUNT_KEY);
        assert_eq!(key.len(), 64);
        assert_eq!(base64_encode(&key), ACCOUNT_KEY);
        assert_eq!(base64_encode(b"ab"), "YWI=");
        assert_eq!(base64_encode(b"a"), "YQ==");
    }

    #[test]
    fn hmac_sha256_matches_rfc_4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
