//! Pulling through the registry what the model says must survive (or must be gone).

use std::collections::BTreeSet;

use super::client::Client;
use super::content::digest_of;
use super::model::Model;

/// What a verification pulled, and every failure it saw (it does not stop at the first).
#[derive(Debug, Default, Clone)]
pub struct PullReport {
    pub tags: usize,
    pub manifests: usize,
    pub blobs: usize,
    pub failures: Vec<String>,
    /// (repo, digest) already verified, manifests and blobs alike.
    seen: BTreeSet<(String, String)>,
}

impl PullReport {
    pub fn is_ok(&self) -> bool {
        self.failures.is_empty()
    }

    /// Panics listing every failure.
    pub fn assert_ok(&self, what: &str) {
        assert!(
            self.is_ok(),
            "{what}: {} failures (after {} tags, {} manifests, {} blobs):\n  {}",
            self.failures.len(),
            self.tags,
            self.manifests,
            self.blobs,
            self.failures.join("\n  ")
        );
    }

    pub fn summary(&self) -> String {
        format!(
            "{} tags pulled, {} manifests and {} blobs verified",
            self.tags, self.manifests, self.blobs
        )
    }

    /// GETs `reference` in `repo`, checks it is `digest` byte for byte, then every child manifest
    /// and every config and layer blob the model says it references.
    fn manifest(
        &mut self,
        client: &Client,
        model: &Model,
        repo: &str,
        reference: &str,
        digest: &str,
    ) {
        let response = client.get_manifest(repo, reference);
        let what = if reference == digest {
            format!("{repo}@{digest}")
        } else {
            format!("{repo}:{reference} ({digest})")
        };
        if response.status != 200 {
            self.failures.push(format!(
                "GET manifest {what}: HTTP {} {}",
                response.status,
                String::from_utf8_lossy(&response.body).trim()
            ));
            return;
        }
        if response.digest.as_deref() != Some(digest) {
            self.failures.push(format!(
                "GET manifest {what}: Docker-Content-Digest {:?}",
                response.digest
            ));
        }
        let actual = digest_of(&response.body);
        if actual != digest {
            self.failures
                .push(format!("GET manifest {what}: the body hashes to {actual}"));
            return;
        }
        let Some(info) = model.manifests.get(digest) else {
            self.failures.push(format!("{what}: not in the model"));
            return;
        };
        if response.media_type.as_deref() != Some(info.media_type.as_str()) {
            self.failures.push(format!(
                "GET manifest {what}: Content-Type {:?}, pushed as {}",
                response.media_type, info.media_type
            ));
        }
        if !self.seen.insert((repo.to_owned(), digest.to_owned())) {
            return;
        }
        self.manifests += 1;
        for child in &info.children {
            if !self.seen.contains(&(repo.to_owned(), child.clone())) {
                self.manifest(client, model, repo, child, child);
            }
        }
        for blob in info.config.iter().chain(&info.layers) {
            self.blob(client, repo, blob, &what);
        }
    }

    fn blob(&mut self, client: &Client, repo: &str, digest: &str, owner: &str) {
        if !self.seen.insert((repo.to_owned(), digest.to_owned())) {
            return;
        }
        let (status, body) = client.get_blob(repo, digest);
        if status != 200 {
            self.failures.push(format!(
                "GET blob {repo}@{digest} (of {owner}): HTTP {status} {}",
                String::from_utf8_lossy(&body).trim()
            ));
            return;
        }
        let actual = digest_of(&body);
        if actual != digest {
            self.failures.push(format!(
                "GET blob {repo}@{digest} (of {owner}): {} bytes hashing to {actual}",
                body.len()
            ));
            return;
        }
        self.blobs += 1;
    }
}

impl PullReport {
    /// Pulls every surviving tag (see [`verify_pulls`]) into this report.
    pub fn pull_tags(&mut self, client: &Client, model: &Model) {
        for (repo, tags) in model.surviving_tags() {
            for (tag, digest) in tags {
                self.tags += 1;
                self.manifest(client, model, &repo, &tag, &digest);
            }
        }
        let kept = model.expected_revisions(true);
        for (repo, digest, _subject) in model.referrers() {
            if kept
                .get(&repo)
                .is_some_and(|digests| digests.contains(&digest))
            {
                self.manifest(client, model, &repo, &digest, &digest);
            }
        }
    }

    /// Pulls by digest every revision kept in this mode (see [`verify_revisions`]).
    pub fn pull_revisions(&mut self, client: &Client, model: &Model, delete_untagged: bool) {
        for (repo, digests) in model.expected_revisions(delete_untagged) {
            for digest in digests {
                self.manifest(client, model, &repo, &digest, &digest);
            }
        }
    }
}

/// Every surviving tag pulls: its manifest (Accept: all four types) is 200, answers the model's
/// digest and hashes to it; so do its child manifests by digest, recursively, and every config and
/// layer blob. Referrers whose subject is tagged (they survive in both modes) pull by digest too.
pub fn verify_pulls(client: &Client, model: &Model) -> PullReport {
    let mut report = PullReport::default();
    report.pull_tags(client, model);
    report
}

/// Every revision the model keeps in this mode pulls by digest, with its children and blobs.
pub fn verify_revisions(client: &Client, model: &Model, delete_untagged: bool) -> PullReport {
    let mut report = PullReport::default();
    report.pull_revisions(client, model, delete_untagged);
    report
}

/// Every revision pushed that the model does not keep answers 404 by digest (run it against a
/// restarted registry: a running one may still serve its cache).
pub fn verify_gone(client: &Client, model: &Model, delete_untagged: bool) -> PullReport {
    let mut report = PullReport::default();
    let kept = model.expected_revisions(delete_untagged);
    for (repo, digests) in &model.revisions {
        for digest in digests {
            if kept.get(repo).is_some_and(|k| k.contains(digest)) {
                continue;
            }
            let response = client.get_manifest(repo, digest);
            report.manifests += 1;
            if response.status != 404 {
                report.failures.push(format!(
                    "GET manifest {repo}@{digest} ({}): HTTP {}, expected 404",
                    model.manifests[digest].note, response.status
                ));
            }
        }
    }
    report
}
