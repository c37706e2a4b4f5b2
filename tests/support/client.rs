//! A small client for the registry's HTTP API (plain HTTP on loopback, ureq 3).
//!
//! Push helpers assert the status the distribution spec prescribes and panic with the response
//! body otherwise; pull helpers return the status so that verification can report every failure.

use std::time::Duration;

use ureq::Agent;
use ureq::http::Response;

use super::content::digest_of;

pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";

/// Every manifest type, so that registry 2.8 answers what is stored instead of rewriting lists
/// (to the amd64 child) and schema2 (to schema1), or refusing OCI documents.
pub const MANIFEST_ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json";

/// A manifest as the registry served it.
#[derive(Debug, Clone)]
pub struct ManifestResponse {
    pub status: u16,
    /// `Content-Type`.
    pub media_type: Option<String>,
    /// `Docker-Content-Digest`.
    pub digest: Option<String>,
    pub body: Vec<u8>,
}

#[derive(Clone)]
pub struct Client {
    agent: Agent,
    base: String,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("base", &self.base).finish()
    }
}

impl Client {
    /// A client for the registry at `base_url` (`http://127.0.0.1:5000`).
    pub fn new(base_url: &str) -> Client {
        Client::with_timeout(base_url, Duration::from_secs(30))
    }

    pub fn with_timeout(base_url: &str, timeout: Duration) -> Client {
        let config = Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .build();
        Client {
            agent: Agent::new_with_config(config),
            base: base_url.trim_end_matches('/').to_owned(),
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `Location` headers may be absolute (2.8 answers `http://host/v2/...`) or relative.
    fn absolute(&self, location: &str) -> String {
        if location.starts_with("http://") || location.starts_with("https://") {
            location.to_owned()
        } else if location.starts_with('/') {
            self.url(location)
        } else {
            format!("{}/{location}", self.base)
        }
    }

    /// `GET /v2/`: the status, or `None` when nothing answers.
    pub fn ping(&self) -> Option<u16> {
        let response = self.agent.get(self.url("/v2/")).call().ok()?;
        Some(response.status().as_u16())
    }

    /// Uploads `bytes` as a blob of `repo` (monolithic: POST then PUT); returns its digest.
    pub fn push_blob(&self, repo: &str, bytes: &[u8]) -> String {
        let digest = digest_of(bytes);
        let location = self.start_upload(repo);
        let separator = if location.contains('?') { '&' } else { '?' };
        let url = format!("{location}{separator}digest={digest}");
        let mut response = self
            .agent
            .put(&url)
            .header("Content-Type", "application/octet-stream")
            .send(bytes)
            .unwrap_or_else(|e| panic!("PUT {url}: {e}"));
        expect_status(
            &mut response,
            201,
            &format!("PUT blob {digest} into {repo}"),
        );
        if let Some(answered) = header(&response, "Docker-Content-Digest") {
            assert_eq!(answered, digest, "blob digest answered for {repo}");
        }
        digest
    }

    /// `POST /v2/<repo>/blobs/uploads/`: the absolute upload URL.
    fn start_upload(&self, repo: &str) -> String {
        let url = self.url(&format!("/v2/{repo}/blobs/uploads/"));
        let mut response = self
            .agent
            .post(&url)
            .send_empty()
            .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        expect_status(&mut response, 202, &format!("start an upload in {repo}"));
        let location = header(&response, "Location")
            .unwrap_or_else(|| panic!("POST {url}: 202 without Location"));
        self.absolute(&location)
    }

    /// Cross-repository mount of `digest` from `from_repo` into `repo` (expects 201 Created).
    pub fn mount_blob(&self, repo: &str, from_repo: &str, digest: &str) {
        let url = self.url(&format!(
            "/v2/{repo}/blobs/uploads/?mount={digest}&from={from_repo}"
        ));
        let mut response = self
            .agent
            .post(&url)
            .send_empty()
            .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        expect_status(
            &mut response,
            201,
            &format!("mount {digest} from {from_repo} into {repo}"),
        );
    }

    /// `PUT /v2/<repo>/manifests/<reference>`; asserts 201 and that `Docker-Content-Digest` is the
    /// SHA-256 of the bytes sent. Returns the digest.
    pub fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> String {
        let digest = digest_of(bytes);
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}"));
        let mut response = self
            .agent
            .put(&url)
            .header("Content-Type", media_type)
            .send(bytes)
            .unwrap_or_else(|e| panic!("PUT {url}: {e}"));
        expect_status(
            &mut response,
            201,
            &format!("PUT manifest {repo}:{reference} ({media_type})"),
        );
        let answered = header(&response, "Docker-Content-Digest")
            .unwrap_or_else(|| panic!("PUT {url}: no Docker-Content-Digest"));
        assert_eq!(
            answered, digest,
            "manifest digest answered for {repo}:{reference}"
        );
        digest
    }

    /// `DELETE /v2/<repo>/manifests/<digest>` (expects 202 Accepted).
    pub fn delete_manifest(&self, repo: &str, digest: &str) {
        let url = self.url(&format!("/v2/{repo}/manifests/{digest}"));
        let mut response = self
            .agent
            .delete(&url)
            .call()
            .unwrap_or_else(|e| panic!("DELETE {url}: {e}"));
        expect_status(
            &mut response,
            202,
            &format!("DELETE manifest {repo}@{digest}"),
        );
    }

    /// Starts an upload, sends one chunk with PATCH and never completes it. Returns the upload's
    /// UUID (its directory under `_uploads/`).
    pub fn start_abandoned_upload(&self, repo: &str, bytes: &[u8]) -> String {
        let location = self.start_upload(repo);
        let mut response = self
            .agent
            .patch(&location)
            .header("Content-Type", "application/octet-stream")
            .send(bytes)
            .unwrap_or_else(|e| panic!("PATCH {location}: {e}"));
        expect_status(&mut response, 202, &format!("PATCH a chunk into {repo}"));
        if let Some(uuid) = header(&response, "Docker-Upload-UUID") {
            return uuid;
        }
        // Fall back to the last path segment of the upload URL.
        let path = location.split('?').next().unwrap_or(&location);
        path.rsplit('/').next().unwrap_or_default().to_owned()
    }

    /// `GET /v2/<repo>/manifests/<reference>` accepting every manifest type.
    pub fn get_manifest(&self, repo: &str, reference: &str) -> ManifestResponse {
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}"));
        let mut response = self
            .agent
            .get(&url)
            .header("Accept", MANIFEST_ACCEPT)
            .call()
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        ManifestResponse {
            status: response.status().as_u16(),
            media_type: header(&response, "Content-Type"),
            digest: header(&response, "Docker-Content-Digest"),
            body: read_body(&mut response, &url),
        }
    }

    /// `GET <path>`: status and body.
    fn get(&self, path: &str) -> (u16, Vec<u8>) {
        let url = self.url(path);
        let mut response = self
            .agent
            .get(&url)
            .call()
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let status = response.status().as_u16();
        (status, read_body(&mut response, &url))
    }

    /// `GET /v2/<repo>/blobs/<digest>`: status and body.
    pub fn get_blob(&self, repo: &str, digest: &str) -> (u16, Vec<u8>) {
        self.get(&format!("/v2/{repo}/blobs/{digest}"))
    }

    /// `HEAD /v2/<repo>/blobs/<digest>`: the status, as a client asks before uploading a layer
    /// (200: the registry says it has it, and the client skips the upload).
    pub fn blob_status(&self, repo: &str, digest: &str) -> u16 {
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"));
        let response = self
            .agent
            .head(&url)
            .call()
            .unwrap_or_else(|e| panic!("HEAD {url}: {e}"));
        response.status().as_u16()
    }

    /// `GET /v2/<repo>/blobs/<digest>`, the body read to its end: `Err` when the status is not 200
    /// or the body cannot be read whole (a registry serving a deleted blob from its cache sends
    /// the headers of the blob and no content).
    pub fn fetch_blob(&self, repo: &str, digest: &str) -> Result<Vec<u8>, String> {
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"));
        let mut response = self
            .agent
            .get(&url)
            .call()
            .map_err(|e| format!("GET {url}: {e}"))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .read_to_vec()
            .map_err(|e| format!("GET {url}: HTTP {status}, reading the body: {e}"))?;
        if status == 200 {
            Ok(body)
        } else {
            Err(format!(
                "GET {url}: HTTP {status} {}",
                String::from_utf8_lossy(&body).trim()
            ))
        }
    }

    /// `GET /v2/<repo>/tags/list`: status and tags (empty unless 200).
    pub fn tags(&self, repo: &str) -> (u16, Vec<String>) {
        let path = format!("/v2/{repo}/tags/list");
        let (status, body) = self.get(&path);
        if status != 200 {
            return (status, Vec::new());
        }
        let value: serde_json::Value =
            serde_json::from_slice(&body).unwrap_or_else(|e| panic!("GET {path}: bad JSON: {e}"));
        let tags = value["tags"]
            .as_array()
            .map(|tags| {
                tags.iter()
                    .filter_map(|t| t.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        (status, tags)
    }
}

fn header(response: &Response<ureq::Body>, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn read_body(response: &mut Response<ureq::Body>, url: &str) -> Vec<u8> {
    response
        .body_mut()
        .with_config()
        .limit(256 * 1024 * 1024)
        .read_to_vec()
        .unwrap_or_else(|e| panic!("reading the body of {url}: {e}"))
}

fn expect_status(response: &mut Response<ureq::Body>, expected: u16, what: &str) {
    let status = response.status().as_u16();
    if status != expected {
        let body = response
            .body_mut()
            .read_to_string()
            .unwrap_or_else(|e| format!("<unreadable body: {e}>"));
        panic!("{what}: expected HTTP {expected}, got {status}: {body}");
    }
}
