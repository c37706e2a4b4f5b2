//! The ground truth: what the workload pushed, and from that alone what a correct collector must
//! keep. Nothing here calls regsweep's code.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// One manifest document (the same digest is the same document in every repository).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestInfo {
    /// The `Content-Type` it was pushed with.
    pub media_type: String,
    /// Whether the JSON itself carries `mediaType` (one OCI index deliberately does not).
    pub media_type_in_json: bool,
    pub size: u64,
    /// Child manifests of a list or index.
    pub children: Vec<String>,
    pub config: Option<String>,
    pub layers: Vec<String>,
    /// OCI `subject`: this manifest is a referrer of that one.
    pub subject: Option<String>,
    /// What it is in the workload, for messages.
    pub note: String,
}

/// An upload that was started and never completed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRecord {
    pub repo: String,
    pub uuid: String,
    pub bytes: u64,
    /// Files (and `startedat`) backdated by this many hours; 0 for a fresh upload.
    pub backdated_hours: u64,
}

/// Everything the workload did, as seen by the client.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Model {
    pub repos: BTreeSet<String>,
    /// digest → document.
    pub manifests: BTreeMap<String, ManifestInfo>,
    /// repo → every manifest digest pushed into it (by tag or by digest).
    pub revisions: BTreeMap<String, BTreeSet<String>>,
    /// repo → tag → the digest it points at now.
    pub tags: BTreeMap<String, BTreeMap<String, String>>,
    /// repo → tag → every digest it pointed at, oldest first (the tag's `index/`).
    pub tag_history: BTreeMap<String, BTreeMap<String, Vec<String>>>,
    /// repo → manifest digests deleted with `DELETE /v2/<repo>/manifests/<digest>`.
    pub deleted: BTreeMap<String, BTreeSet<String>>,
    /// Every config, layer and orphan blob uploaded: digest → size.
    pub blobs: BTreeMap<String, u64>,
    /// repo → blobs linked into it (uploaded or mounted).
    pub blob_links: BTreeMap<String, BTreeSet<String>>,
    /// Blobs uploaded that no manifest references.
    pub orphans: BTreeSet<String>,
    pub uploads: Vec<UploadRecord>,
}

impl Model {
    /// Every blob in storage after the workload: configs, layers, orphans and manifests.
    pub fn all_blobs(&self) -> BTreeSet<String> {
        self.blobs
            .keys()
            .chain(self.manifests.keys())
            .cloned()
            .collect()
    }

    /// Revisions still linked: pushed and not deleted through the API.
    pub fn present_revisions(&self) -> BTreeMap<String, BTreeSet<String>> {
        let empty = BTreeSet::new();
        self.repos
            .iter()
            .map(|repo| {
                let pushed = self.revisions.get(repo).unwrap_or(&empty);
                let deleted = self.deleted.get(repo).unwrap_or(&empty);
                (repo.clone(), pushed.difference(deleted).cloned().collect())
            })
            .collect()
    }

    /// Adds `digest` and, recursively, its child manifests to `live[repo]`.
    fn mark(&self, repo: &str, digest: &str, live: &mut BTreeMap<String, BTreeSet<String>>) {
        if !live
            .entry(repo.to_owned())
            .or_default()
            .insert(digest.to_owned())
        {
            return;
        }
        let info = self
            .manifests
            .get(digest)
            .unwrap_or_else(|| panic!("model: unknown manifest {digest}"));
        for child in &info.children {
            self.mark(repo, child, live);
        }
    }

    /// The revisions a correct collector keeps, per repository.
    ///
    /// With `delete_untagged`: every current tag and, through lists and indexes, their children;
    /// then every present referrer whose subject is kept in the same repository (to a fixpoint),
    /// with its own closure. Without: every revision not deleted through the API.
    pub fn expected_revisions(&self, delete_untagged: bool) -> BTreeMap<String, BTreeSet<String>> {
        let present = self.present_revisions();
        if !delete_untagged {
            return present;
        }
        let mut live: BTreeMap<String, BTreeSet<String>> = self
            .repos
            .iter()
            .map(|r| (r.clone(), BTreeSet::new()))
            .collect();
        for (repo, tags) in &self.tags {
            for digest in tags.values() {
                self.mark(repo, digest, &mut live);
            }
        }
        loop {
            let mut grew = false;
            for (repo, digests) in &present {
                for digest in digests {
                    let Some(subject) = &self.manifests[digest].subject else {
                        continue;
                    };
                    if live[repo].contains(subject) && !live[repo].contains(digest) {
                        self.mark(repo, digest, &mut live);
                        grew = true;
                    }
                }
            }
            if !grew {
                break;
            }
        }
        live
    }

    /// Every blob a correct collector keeps: the kept manifests with their configs and layers.
    pub fn expected_live_blobs(&self, delete_untagged: bool) -> BTreeSet<String> {
        let mut live = BTreeSet::new();
        for digests in self.expected_revisions(delete_untagged).values() {
            for digest in digests {
                live.insert(digest.clone());
                let info = &self.manifests[digest];
                live.extend(info.config.iter().cloned());
                live.extend(info.layers.iter().cloned());
            }
        }
        live
    }

    /// Blobs a correct collector deletes.
    pub fn expected_garbage_blobs(&self, delete_untagged: bool) -> BTreeSet<String> {
        let live = self.expected_live_blobs(delete_untagged);
        self.all_blobs().difference(&live).cloned().collect()
    }

    /// Every tag survives a collection, pointing where it points now.
    pub fn surviving_tags(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        self.tags
            .iter()
            .filter(|(_, tags)| !tags.is_empty())
            .map(|(repo, tags)| (repo.clone(), tags.clone()))
            .collect()
    }

    /// Uploads younger than `upload_max_age_hours`: they must be kept.
    pub fn kept_uploads(&self, upload_max_age_hours: u64) -> Vec<&UploadRecord> {
        self.uploads
            .iter()
            .filter(|u| u.backdated_hours < upload_max_age_hours)
            .collect()
    }

    /// Uploads older than `upload_max_age_hours`: they must be deleted.
    pub fn expired_uploads(&self, upload_max_age_hours: u64) -> Vec<&UploadRecord> {
        self.uploads
            .iter()
            .filter(|u| u.backdated_hours >= upload_max_age_hours)
            .collect()
    }

    /// Repositories left with no revision, no tag and no upload in progress (with the default
    /// `--upload-max-age 168h`).
    pub fn repos_that_must_vanish(&self, delete_untagged: bool) -> BTreeSet<String> {
        let revisions = self.expected_revisions(delete_untagged);
        let kept_uploads: BTreeSet<&str> = self
            .kept_uploads(168)
            .iter()
            .map(|u| u.repo.as_str())
            .collect();
        self.repos
            .iter()
            .filter(|repo| {
                revisions.get(*repo).is_none_or(BTreeSet::is_empty)
                    && self.tags.get(*repo).is_none_or(BTreeMap::is_empty)
                    && !kept_uploads.contains(repo.as_str())
            })
            .cloned()
            .collect()
    }

    /// Repositories that must still exist.
    pub fn repos_that_must_stay(&self, delete_untagged: bool) -> BTreeSet<String> {
        let vanish = self.repos_that_must_vanish(delete_untagged);
        self.repos.difference(&vanish).cloned().collect()
    }

    /// `(repo, referrer digest, subject digest)` for every referrer pushed.
    pub fn referrers(&self) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        for (repo, digests) in &self.revisions {
            for digest in digests {
                if let Some(subject) = &self.manifests[digest].subject {
                    out.push((repo.clone(), digest.clone(), subject.clone()));
                }
            }
        }
        out
    }

    /// Number of revision links (repository, manifest) pairs.
    pub fn count(map: &BTreeMap<String, BTreeSet<String>>) -> usize {
        map.values().map(BTreeSet::len).sum()
    }

    /// Serialises the model, with the derived sets a reader wants, as pretty JSON.
    pub fn to_json(&self) -> String {
        let document = serde_json::json!({
            "model": self,
            "surviving_tags": self.surviving_tags(),
            "live_blobs_delete_untagged": self.expected_live_blobs(true),
            "live_blobs_keep_untagged": self.expected_live_blobs(false),
            "revisions_delete_untagged": self.expected_revisions(true),
            "revisions_keep_untagged": self.expected_revisions(false),
            "repos_that_vanish_delete_untagged": self.repos_that_must_vanish(true),
            "repos_that_vanish_keep_untagged": self.repos_that_must_vanish(false),
        });
        serde_json::to_string_pretty(&document).expect("the model serialises")
    }

    /// Reads what [`Model::to_json`] wrote.
    pub fn from_json(text: &str) -> Result<Model, String> {
        let mut document: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("model.json: {e}"))?;
        let model = document
            .get_mut("model")
            .map(serde_json::Value::take)
            .ok_or("model.json: no `model` field")?;
        serde_json::from_value(model).map_err(|e| format!("model.json: {e}"))
    }

    /// What a blob is in the workload, for failure messages: `manifest "alpine 3.19"`,
    /// `layer of "api v1", "api v2 amd64"`, `orphan`.
    pub fn explain(&self, digest: &str) -> String {
        if let Some(info) = self.manifests.get(digest) {
            return format!("manifest {:?} ({})", info.note, info.media_type);
        }
        if self.orphans.contains(digest) {
            return "orphan blob".to_owned();
        }
        let mut users = Vec::new();
        for info in self.manifests.values() {
            if info.config.as_deref() == Some(digest) {
                users.push(format!("config of {:?}", info.note));
            } else if info.layers.iter().any(|l| l == digest) {
                users.push(format!("layer of {:?}", info.note));
            }
        }
        if users.is_empty() {
            "not in the model".to_owned()
        } else {
            users.join(", ")
        }
    }

    /// Explains each digest of `digests`, one per line.
    pub fn explain_all<'d>(&self, digests: impl IntoIterator<Item = &'d String>) -> String {
        digests
            .into_iter()
            .map(|d| format!("    {d}: {}", self.explain(d)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// One-line counts, for reports.
    pub fn describe(&self) -> String {
        let lists = self
            .manifests
            .values()
            .filter(|m| !m.children.is_empty())
            .count();
        format!(
            "{} repositories, {} tags, {} manifests ({} lists/indexes, {} referrers), {} revisions \
             pushed, {} deleted via API, {} config/layer blobs ({} orphans), {} blobs in all, \
             {} abandoned uploads",
            self.repos.len(),
            self.tags.values().map(BTreeMap::len).sum::<usize>(),
            self.manifests.len(),
            lists,
            self.referrers().len(),
            Model::count(&self.revisions),
            Model::count(&self.deleted),
            self.blobs.len(),
            self.orphans.len(),
            self.all_blobs().len(),
            self.uploads.len(),
        )
    }
}
