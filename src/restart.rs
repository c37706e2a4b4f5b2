//! Restart: make the registry forget what was deleted.
//!
//! A running registry keeps serving its blob-descriptor cache after blobs are deleted ("layer already
//! exists", then "blob unknown"), so it must forget them after a sweep that deleted anything. Three
//! ways, run in this order:
//!
//! 1. [`redis`]: delete the registry's Redis cache entries for what was deleted ([`Deleted`]), when the
//!    registry caches in Redis (`storage.cache.blobdescriptor: redis`); no restart needed.
//! 2. A restart command ([`run_command`]): `systemctl restart docker-registry`,
//!    `kubectl rollout restart deployment/registry`, … It runs through `sh -c`; its output goes to
//!    stderr so that stdout stays the summary.
//! 3. [`webhook`]: POST the summary to a URL that restarts the registry (or tells someone to).

pub mod redis;
pub mod webhook;

use std::collections::{BTreeSet, HashMap};
use std::process::Stdio;

use serde::Serialize;
use url::Url;

use tracing::info;

use crate::digest::Digest;
use crate::layout;
use crate::plan::{Kind, SweepPlan, Target};
use crate::report::Summary;
use crate::scan::Inventory;
use crate::storage::requests::RequestCounter;
use redis::RedisUrl;
use webhook::WebhookUrl;

/// How a command run through `sh -c` ended (the restart command, `--pre-command`, `--post-command`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CommandOutcome {
    pub command: String,
    pub success: bool,
    /// The exit code, when the command exited (rather than being killed by a signal).
    pub exit_code: Option<i32>,
    /// What happened, in words: `exit status 0`, `signal: 9`, or why it could not start.
    pub status: String,
}

/// Runs `command` through `sh -c`, its output on stderr (stdout is the summary's).
pub async fn run_command(command: &str) -> CommandOutcome {
    let spawned = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(std::io::stderr())
        .status()
        .await;
    match spawned {
        Ok(status) => CommandOutcome {
            command: command.to_owned(),
            success: status.success(),
            exit_code: status.code(),
            status: status.to_string(),
        },
        Err(e) => CommandOutcome {
            command: command.to_owned(),
            success: false,
            exit_code: None,
            status: format!("could not run sh: {e}"),
        },
    }
}

/// How the registry is made to forget, after a sweep that deleted anything (`--redis-url`,
/// `--restart-command`, `--restart-url`).
#[derive(Debug, Default, Clone)]
pub struct Forget {
    pub redis_url: Option<RedisUrl>,
    pub command: Option<String>,
    pub url: Option<WebhookUrl>,
}

impl Forget {
    /// Runs the ways asked for, in order — Redis, the restart command, the webhook — recording each
    /// outcome (and each failure as an error) in `summary`. The webhook receives the summary as it
    /// stands, with the requests counted so far.
    pub async fn run(&self, summary: &mut Summary, counter: &RequestCounter) {
        if summary.dry_run {
            return;
        }
        if let Some(url) = &self.redis_url
            && !summary.deleted.is_empty()
        {
            info!(%url, "deleting the registry's Redis cache entries of what was deleted");
            let outcome = redis::forget(url, &summary.deleted).await;
            if !outcome.success {
                summary.add_error(format!("Redis cache at {url}: {}", outcome.status));
            }
            summary.redis = Some(outcome);
        }
        if !summary.deleted_anything() {
            return;
        }
        if let Some(command) = &self.command {
            info!(command, "running the restart command");
            let outcome = run_command(command).await;
            if !outcome.success {
                summary.add_error(format!(
                    "restart command `{command}` failed: {}",
                    outcome.status
                ));
            }
            summary.restart = Some(outcome);
        }
        if let Some(url) = &self.url {
            info!(%url, "calling the restart URL");
            summary.requests = counter.snapshot();
            let body = serde_json::to_vec(&*summary).expect("a summary serialises");
            let outcome = webhook::notify(url, body).await;
            if !outcome.success {
                summary.add_error(format!("restart URL {url} failed: {}", outcome.status));
            }
            summary.restart_url = Some(outcome);
        }
    }
}

/// What a sweep actually deleted, as a registry's blob-descriptor cache knows it: the cache entries
/// that must go. Empty after a dry run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Deleted {
    /// Blobs whose content was deleted.
    pub blobs: BTreeSet<Digest>,
    /// `(repository, digest)` whose `_layers` link or revision link was deleted, or whose blob was
    /// deleted while the repository linked it.
    pub links: BTreeSet<(String, Digest)>,
    /// Repositories deleted whole.
    pub repositories: BTreeSet<String>,
}

impl Deleted {
    /// What went, from the plan and the sweep's `done` flags (aligned with `plan.deletions`; missing
    /// flags count as not done). A repository counts as deleted whole only when every deletion
    /// under it went.
    pub fn of_sweep(plan: &SweepPlan, done: &[bool], inventory: &Inventory) -> Deleted {
        let universe = &inventory.blobs;
        let mut deleted = Deleted::default();
        // The repositories to delete whole, by directory: a key left under one (or under a
        // repository nested in it) keeps it. Looked up by each such key's directories, so that a
        // sweep that stopped early (millions of deletions undone) costs no list of their keys.
        let mut whole: HashMap<String, &String> = plan
            .repositories_deleted
            .iter()
            .map(|name| (layout::repository(name), name))
            .collect();
        let done = done.iter().copied().chain(std::iter::repeat(false));
        for (deletion, done) in plan.deletions.iter().zip(done) {
            if !done {
                // A blob's key is never under a repository.
                if !whole.is_empty() && !matches!(deletion.target, Target::Blob(_)) {
                    for key in deletion.keys(inventory) {
                        for (end, _) in key.match_indices('/') {
                            whole.remove(&key[..=end]);
                        }
                    }
                }
                continue;
            }
            match (deletion.kind, &deletion.target) {
                (Kind::Blob, Target::Blob(index)) => {
                    deleted.blobs.insert(*universe.digest(*index));
                }
                (Kind::Manifest | Kind::LayerLink, _) => {
                    deleted.links.extend(deletion.link(inventory));
                }
                _ => {}
            }
        }
        if !deleted.blobs.is_empty() {
            for repo in &inventory.repositories {
                let layers = repo.layer_links.iter(universe).map(|(l, _)| l);
                let linked = layers.chain(repo.revisions.iter().copied());
                for link in linked.filter(|l| deleted.blobs.contains(&l.digest)) {
                    deleted.links.insert((repo.name.clone(), link.digest));
                }
            }
        }
        deleted.repositories = whole.into_values().cloned().collect();
        deleted
    }

    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty() && self.links.is_empty() && self.repositories.is_empty()
    }
}

/// A URL fit for logs and summaries: without its userinfo (`***@` instead) and without its query
/// (`?***`), where webhook tokens often travel.
pub fn redact_url(url: &Url) -> String {
    let mut shown = url.clone();
    let had_userinfo = !url.username().is_empty() || url.password().is_some();
    // Both fail only for URLs that cannot have userinfo (`mailto:`), which have none.
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    let had_query = url.query().is_some();
    shown.set_query(None);
    shown.set_fragment(None);
    let mut text = shown.to_string();
    if had_userinfo && let Some(at) = text.find("://").map(|i| i + 3) {
        text.insert_str(at, "***@");
    }
    if had_query {
        text.push_str("?***");
    }
    text
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::plan::{Deletion, Phase};
    use crate::scan::{BlobUniverse, Link, Repository};

    fn d(n: u8) -> Digest {
        Digest::from_bytes([n; 32])
    }

    fn link(n: u8) -> Link {
        Link::new(d(n), SystemTime::UNIX_EPOCH)
    }

    fn blob(universe: &BlobUniverse, n: u8) -> Deletion {
        Deletion {
            phase: Phase::Blobs,
            kind: Kind::Blob,
            target: Target::Blob(universe.index(&d(n)).unwrap()),
        }
    }

    #[test]
    fn deleted_is_what_went_with_the_links_that_named_it() {
        let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1);
        let universe = BlobUniverse::new((1..=6).map(|n| (d(n), 1, old)).collect());
        let repository = |name: &str, layers: &[u8], revisions: &[u8]| Repository {
            name: name.into(),
            layer_links: layers.iter().map(|&n| link(n)).collect::<Vec<_>>().into(),
            revisions: revisions.iter().map(|&n| link(n)).collect(),
            ..Repository::default()
        };
        let inventory = Inventory {
            repositories: vec![
                // `app` loses its manifest 1 and layer 2; layer 3 stays linked but its blob goes.
                repository("app", &[2, 3, 4], &[1, 5]),
                // `gone` disappears whole.
                repository("gone", &[6], &[]),
                // `stuck` should have disappeared, but one of its deletions failed.
                repository("lib/stuck", &[4], &[]),
            ],
            ..Inventory::default()
        };
        let mut deletions = vec![
            Deletion::of_keys(
                Phase::Manifests,
                Kind::Manifest,
                vec![
                    layout::revision_link("app", &d(1)),
                    layout::revision_signature_link("app", &d(1), &d(5)),
                ],
            ),
            Deletion::of_keys(
                Phase::LayerLinks,
                Kind::LayerLink,
                vec![layout::layer_link("app", &d(2))],
            ),
            Deletion::of_keys(
                Phase::LayerLinks,
                Kind::LayerLink,
                vec![layout::layer_link("gone", &d(6))],
            ),
            // Failed: neither the link nor the repository went.
            Deletion::of_keys(
                Phase::LayerLinks,
                Kind::LayerLink,
                vec![layout::layer_link("lib/stuck", &d(4))],
            ),
            Deletion::of_keys(
                Phase::Tags,
                Kind::Tag,
                vec![layout::tag_current_link("app", "broken")],
            ),
        ];
        deletions.extend([1, 2, 3, 6].map(|n| blob(&universe, n)));
        // Failed: blob 4 stays.
        deletions.push(blob(&universe, 4));
        let mut done = vec![true; deletions.len()];
        done[3] = false;
        *done.last_mut().unwrap() = false;
        let inventory = Inventory {
            blobs: universe,
            ..inventory
        };
        let plan = SweepPlan {
            deletions,
            // `lib` held nothing but `lib/stuck`: with that one still there, it is too.
            repositories_deleted: vec!["gone".into(), "lib".into(), "lib/stuck".into()],
        };

        let deleted = Deleted::of_sweep(&plan, &done, &inventory);

        assert_eq!(deleted.blobs, [1, 2, 3, 6].map(d).into());
        assert_eq!(
            deleted.links,
            [("app", 1), ("app", 2), ("app", 3), ("gone", 6)]
                .map(|(r, n)| (r.to_owned(), d(n)))
                .into()
        );
        assert_eq!(deleted.repositories, ["gone".to_owned()].into());
        assert!(!deleted.is_empty());
    }

    #[test]
    fn nothing_done_means_nothing_deleted() {
        let universe = BlobUniverse::new(vec![(d(1), 1, SystemTime::UNIX_EPOCH)]);
        let plan = SweepPlan {
            deletions: vec![
                Deletion::of_keys(
                    Phase::LayerLinks,
                    Kind::LayerLink,
                    vec![layout::layer_link("app", &d(1))],
                ),
                blob(&universe, 1),
            ],
            repositories_deleted: vec!["app".into()],
        };
        let inventory = Inventory {
            blobs: universe,
            ..Inventory::default()
        };
        // A dry run has no done flags at all.
        assert!(Deleted::of_sweep(&plan, &[], &inventory).is_empty());
        assert!(Deleted::of_sweep(&plan, &[false, false], &inventory).is_empty());
    }

    #[test]
    fn redacted_urls_show_no_credentials_nor_queries() {
        let cases = [
            (
                "https://user:s3cret@hooks.example.com/restart?token=abc",
                "https://***@hooks.example.com/restart?***",
            ),
            ("http://:s3cret@10.0.0.1:8080/", "http://***@10.0.0.1:8080/"),
            (
                "redis://default:p%40ss@redis:6380/2",
                "redis://***@redis:6380/2",
            ),
            ("redis://user@[::1]:6379", "redis://***@[::1]:6379"),
            ("http://127.0.0.1:9/hook#frag", "http://127.0.0.1:9/hook"),
            ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ];
        for (url, shown) in cases {
            let redacted = redact_url(&Url::parse(url).unwrap());
            assert_eq!(redacted, shown, "{url}");
            assert!(!redacted.contains("s3cret") && !redacted.contains("p%40ss"));
        }
    }
}
