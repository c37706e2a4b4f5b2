//! Select: which tags, manifests and repositories `delete` and `prune` take away, decided from the
//! scanned [`Inventory`] alone. Pure — no I/O — so that a dry run prints exactly what a run does,
//! and every rule is unit-tested.
//!
//! A selection does not delete manifests or blobs itself. It removes tags (their directories go in
//! the first phase of the sweep, [`Phase::Untag`]) and *releases* manifests: a released revision is
//! no longer a root of the mark, so the same collection that follows removes it — unless something
//! that stays (another tag on the same digest, a kept index listing it, a manifest younger than
//! `--min-age`) still reaches it. Layers shared with the images that stay are kept by the mark as
//! always.
//!
//! What is released when a tag goes: the manifest it pointed at, the child manifests of that
//! manifest (an index's platforms) and the referrers (OCI `subject`) of all of these, in the same
//! repository. Untagged manifests that were there before are left alone (unless `-m` or a policy's
//! `delete_untagged` says otherwise).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::time::{Duration, SystemTime};

use globset::{Glob, GlobBuilder, GlobMatcher};
use regex::Regex;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::digest::Digest;
use crate::layout;
use crate::mark::ManifestCatalog;
use crate::plan::{Deletion, Kind, Phase, Target as KeyTarget};
use crate::scan::{BlobUniverse, Inventory, Repository, Tag};

/// Why a selection was refused. Nothing is deleted when one of these is returned.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SelectError {
    #[error("`{text}` is not REPOSITORY, REPOSITORY:TAG or REPOSITORY@sha256:<64 hex>: {reason}")]
    BadTarget { text: String, reason: String },
    #[error("repository {0} does not exist")]
    NoRepository(String),
    #[error("tag {repository}:{tag} does not exist")]
    NoTag { repository: String, tag: String },
    #[error("manifest {repository}@{digest} does not exist")]
    NoManifest { repository: String, digest: Digest },
    #[error(
        "manifest {repository}@{digest} is what the tags {} point at: name them, or pass --with-tags to remove them with it",
        tags.join(", ")
    )]
    Tagged {
        repository: String,
        digest: Digest,
        tags: Vec<String>,
    },
    #[error("manifest {repository}@{digest} would stay: {reason}; remove what keeps it first")]
    StillReferenced {
        repository: String,
        digest: Digest,
        reason: String,
    },
    #[error("policy: {0}")]
    Policy(String),
}

/// What a `delete` target names: a whole repository, one tag, or one manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Repository,
    Tag(String),
    Digest(Digest),
}

/// `REPOSITORY`, `REPOSITORY:TAG` or `REPOSITORY@DIGEST`, as `delete` takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub repository: String,
    pub reference: Reference,
}

impl Target {
    /// Parses and validates a target with the registry's own name, tag and digest rules.
    pub fn parse(text: &str) -> Result<Target, SelectError> {
        let bad = |reason: &str| SelectError::BadTarget {
            text: text.to_owned(),
            reason: reason.to_owned(),
        };
        let (repository, reference) = if let Some((name, digest)) = text.split_once('@') {
            let digest = Digest::parse(digest).map_err(|e| bad(&e.to_string()))?;
            (name, Reference::Digest(digest))
        } else {
            // A tag follows the last `:` after the last `/` (names hold no `:`).
            let last = text.rfind('/').map_or(0, |i| i + 1);
            match text[last..].rfind(':') {
                Some(i) => {
                    let tag = &text[last + i + 1..];
                    if !layout::is_valid_tag(tag) {
                        return Err(bad(&format!("invalid tag `{tag}`")));
                    }
                    (&text[..last + i], Reference::Tag(tag.to_owned()))
                }
                None => (text, Reference::Repository),
            }
        };
        if !layout::is_valid_repository_name(repository) {
            return Err(bad(&format!("invalid repository name `{repository}`")));
        }
        Ok(Target {
            repository: repository.to_owned(),
            reference,
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reference {
            Reference::Repository => write!(f, "{}", self.repository),
            Reference::Tag(tag) => write!(f, "{}:{tag}", self.repository),
            Reference::Digest(digest) => write!(f, "{}@{digest}", self.repository),
        }
    }
}

/// Keep or delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Keep,
    Delete,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Keep => "keep",
            Action::Delete => "delete",
        }
    }
}

/// What happens to one tag, and the rule that decided it (`--dry-run` prints these; the JSON
/// summary lists them as `decisions`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub repository: String,
    pub tag: String,
    /// What the tag points at (absent when its `current/link` is missing or corrupt).
    pub digest: Option<Digest>,
    pub action: Action,
    pub rule: String,
}

/// What the mark and the re-mark must know of a selection, by repository name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Released {
    /// Tags removed on request: not roots, and their directories go.
    pub tags: HashMap<String, HashSet<String>>,
    /// Revisions that are not roots any more: collected unless something that stays reaches them.
    pub revisions: HashMap<String, HashSet<Digest>>,
}

impl Released {
    pub fn is_empty(&self) -> bool {
        self.tags.is_empty() && self.revisions.is_empty()
    }

    /// How many tags are removed.
    pub fn tag_count(&self) -> usize {
        self.tags.values().map(HashSet::len).sum()
    }

    /// How many revisions are released.
    pub fn revision_count(&self) -> usize {
        self.revisions.values().map(HashSet::len).sum()
    }

    /// Whether `tag` of `repository` is removed.
    pub fn tag(&self, repository: &str, tag: &str) -> bool {
        self.tags.get(repository).is_some_and(|t| t.contains(tag))
    }

    /// Whether the revision `digest` of `repository` is released.
    pub fn revision(&self, repository: &str, digest: &Digest) -> bool {
        self.revisions
            .get(repository)
            .is_some_and(|r| r.contains(digest))
    }

    fn remove_tag(&mut self, repository: &str, tag: &str) {
        self.tags
            .entry(repository.to_owned())
            .or_default()
            .insert(tag.to_owned());
    }

    fn release(&mut self, repository: &str, digest: Digest) -> bool {
        self.revisions
            .entry(repository.to_owned())
            .or_default()
            .insert(digest)
    }
}

/// The outcome of a selection: per-tag decisions and what the collection must take away.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Selection {
    pub decisions: Vec<Decision>,
    pub released: Released,
    /// Repositories removed whole: their uploads go too (past `--min-age`).
    pub repositories: BTreeSet<String>,
    /// Manifests named by digest: the run is refused if the mark still finds them live.
    pub requested: Vec<(String, Digest)>,
}

fn target_of(tag: &Tag) -> Option<Digest> {
    tag.current.as_ref()?.target.as_ref().ok().copied()
}

/// What `delete` takes away. Every target must exist (else nothing is deleted). `REPO@DIGEST`
/// with tags pointing at that manifest is refused unless `with_tags` (then those tags go too, as
/// the registry's `DELETE /v2/<name>/manifests/<digest>` does).
pub fn select_targets(
    inventory: &Inventory,
    targets: &[Target],
    with_tags: bool,
) -> Result<Selection, SelectError> {
    let mut selection = Selection::default();
    // Tags named as targets of their own, wherever they stand on the command line.
    let named: HashSet<(&str, &str)> = targets
        .iter()
        .filter_map(|t| match &t.reference {
            Reference::Tag(tag) => Some((t.repository.as_str(), tag.as_str())),
            _ => None,
        })
        .collect();
    let remove = |selection: &mut Selection, repo: &Repository, tag: &Tag, rule: String| {
        if !selection.released.tag(&repo.name, &tag.name) {
            selection.released.remove_tag(&repo.name, &tag.name);
            selection.decisions.push(Decision {
                repository: repo.name.clone(),
                tag: tag.name.clone(),
                digest: target_of(tag),
                action: Action::Delete,
                rule,
            });
        }
    };
    for target in targets {
        let name = &target.repository;
        let repo = inventory
            .repository(name)
            .ok_or_else(|| SelectError::NoRepository(name.clone()))?;
        match &target.reference {
            Reference::Repository => {
                for tag in &repo.tags {
                    remove(&mut selection, repo, tag, format!("requested: {target}"));
                }
                for revision in &repo.revisions {
                    selection.released.release(name, revision.digest);
                }
                selection.repositories.insert(name.clone());
            }
            Reference::Tag(wanted) => {
                let tag = repo
                    .tags
                    .iter()
                    .find(|t| &t.name == wanted)
                    .ok_or_else(|| SelectError::NoTag {
                        repository: name.clone(),
                        tag: wanted.clone(),
                    })?;
                remove(&mut selection, repo, tag, format!("requested: {target}"));
            }
            Reference::Digest(digest) => {
                if !repo.revisions.iter().any(|r| r.digest == *digest) {
                    return Err(SelectError::NoManifest {
                        repository: name.clone(),
                        digest: *digest,
                    });
                }
                let tagged: Vec<&Tag> = repo
                    .tags
                    .iter()
                    .filter(|t| target_of(t) == Some(*digest))
                    .collect();
                let all_named = tagged
                    .iter()
                    .all(|t| named.contains(&(name.as_str(), t.name.as_str())));
                if !with_tags && !all_named {
                    return Err(SelectError::Tagged {
                        repository: name.clone(),
                        digest: *digest,
                        tags: tagged.iter().map(|t| t.name.clone()).collect(),
                    });
                }
                for tag in tagged {
                    remove(&mut selection, repo, tag, format!("requested: {target}"));
                }
                selection.released.release(name, *digest);
                selection.requested.push((name.clone(), *digest));
            }
        }
    }
    Ok(selection)
}

/// What `delete` or `prune` asks to take away.
#[derive(Debug, Clone)]
pub enum Request {
    Delete {
        targets: Vec<Target>,
        /// `REPO@DIGEST` also removes the tags pointing at that manifest.
        with_tags: bool,
    },
    Prune(Policy),
}

impl Request {
    /// Decides, as of `now`, what goes; a policy never removes a tag pushed after `cutoff` (run
    /// start minus `--min-age`), a target named on the command line goes whatever its age.
    pub fn select(
        &self,
        inventory: &Inventory,
        now: SystemTime,
        cutoff: SystemTime,
    ) -> Result<Selection, SelectError> {
        match self {
            Request::Delete { targets, with_tags } => {
                select_targets(inventory, targets, *with_tags)
            }
            Request::Prune(policy) => Ok(policy.select(inventory, now, cutoff)),
        }
        .map(|selection| empty_repositories_go(inventory, selection))
    }
}

/// A repository whose last tags the selection removes goes whole: its untagged manifests are
/// released too, and its stale uploads go.
fn empty_repositories_go(inventory: &Inventory, mut selection: Selection) -> Selection {
    for repo in &inventory.repositories {
        let Some(removed) = selection.released.tags.get(&repo.name) else {
            continue;
        };
        let tagged = repo.tags.iter().filter(|t| target_of(t).is_some());
        if tagged.clone().all(|t| removed.contains(&t.name)) {
            for revision in &repo.revisions {
                selection.released.release(&repo.name, revision.digest);
            }
            selection.repositories.insert(repo.name.clone());
        }
    }
    selection
}

/// A `prune` policy: rules by repository glob. The first rule whose glob matches a repository
/// decides for it; repositories no rule matches are left alone.
#[derive(Debug, Clone)]
pub struct Policy {
    pub rules: Vec<Rule>,
}

/// One rule of a policy. Keep rules are OR-ed: a tag stays when any keeps it. A tag no keep rule
/// keeps is deleted when it is older than `delete_older_than`; without `delete_older_than`, when
/// the rule has a keep rule at all (keep the last 10 = delete the others). A rule with no tag
/// criterion keeps every tag (first in the list, it exempts repositories from later rules).
#[derive(Debug, Clone)]
pub struct Rule {
    /// As written in the policy, for decisions.
    pub repositories: String,
    matcher: GlobMatcher,
    pub keep_last: Option<usize>,
    pub keep_tags: Option<Regex>,
    /// The age, and how the policy wrote it (for decisions).
    pub delete_older_than: Option<(Duration, String)>,
    pub delete_untagged: bool,
}

/// A rule as the policy file spells it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    repositories: String,
    keep_last: Option<usize>,
    keep_tags: Option<String>,
    delete_older_than: Option<String>,
    #[serde(default)]
    delete_untagged: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    rules: Vec<RuleFile>,
}

/// The policy of `prune`'s simple-case flags: one rule.
#[derive(Debug, Clone, Default)]
pub struct SimpleRule {
    pub repositories: Option<String>,
    pub keep_last: Option<usize>,
    pub keep_tags: Option<String>,
    pub delete_older_than: Option<Duration>,
    pub delete_untagged: bool,
}

impl Rule {
    fn new(
        repositories: String,
        keep_last: Option<usize>,
        keep_tags: Option<String>,
        delete_older_than: Option<(Duration, String)>,
        delete_untagged: bool,
    ) -> Result<Rule, String> {
        // `*` stays within one path component, `**` crosses them, like paths.
        let matcher = GlobBuilder::new(&repositories)
            .literal_separator(true)
            .build()
            .map(|glob: Glob| glob.compile_matcher())
            .map_err(|e| format!("repositories `{repositories}`: {e}"))?;
        let keep_tags = keep_tags
            .map(|re| Regex::new(&re).map_err(|e| format!("keep_tags `{re}`: {e}")))
            .transpose()?;
        Ok(Rule {
            repositories,
            matcher,
            keep_last,
            keep_tags,
            delete_older_than,
            delete_untagged,
        })
    }

    fn matches(&self, repository: &str) -> bool {
        self.matcher.is_match(repository)
    }
}

impl Policy {
    /// Reads a policy file's JSON; unknown fields, bad globs, regexes and durations are errors.
    pub fn from_json(text: &str) -> Result<Policy, SelectError> {
        let file: PolicyFile =
            serde_json::from_str(text).map_err(|e| SelectError::Policy(e.to_string()))?;
        let rules = file
            .rules
            .into_iter()
            .enumerate()
            .map(|(i, rule)| {
                let older = rule
                    .delete_older_than
                    .map(|d| {
                        humantime::parse_duration(&d)
                            .map(|parsed| (parsed, d.clone()))
                            .map_err(|e| format!("delete_older_than `{d}`: {e}"))
                    })
                    .transpose();
                older
                    .and_then(|older| {
                        Rule::new(
                            rule.repositories,
                            rule.keep_last,
                            rule.keep_tags,
                            older,
                            rule.delete_untagged,
                        )
                    })
                    .map_err(|e| SelectError::Policy(format!("rule {}: {e}", i + 1)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if rules.is_empty() {
            return Err(SelectError::Policy("no rules".to_owned()));
        }
        Ok(Policy { rules })
    }

    /// The one-rule policy of the simple-case flags (every repository unless `--repositories`).
    pub fn simple(rule: SimpleRule) -> Result<Policy, SelectError> {
        let rule = Rule::new(
            rule.repositories.unwrap_or_else(|| "**".to_owned()),
            rule.keep_last,
            rule.keep_tags,
            rule.delete_older_than
                .map(|d| (d, humantime::format_duration(d).to_string())),
            rule.delete_untagged,
        )
        .map_err(SelectError::Policy)?;
        Ok(Policy { rules: vec![rule] })
    }

    /// Decides every tag of every repository a rule matches, as of `now`. A tag pushed after
    /// `cutoff` (within `--min-age`) is kept whatever the rule says: it may be a push in progress.
    pub fn select(&self, inventory: &Inventory, now: SystemTime, cutoff: SystemTime) -> Selection {
        let mut selection = Selection::default();
        for repo in &inventory.repositories {
            let Some((number, rule)) = self
                .rules
                .iter()
                .enumerate()
                .find(|(_, r)| r.matches(&repo.name))
            else {
                continue;
            };
            let label = format!("rule {} ({})", number + 1, rule.repositories);
            for (tag, action, why) in decide(repo, rule, &inventory.blobs, now, cutoff) {
                if action == Action::Delete {
                    selection.released.remove_tag(&repo.name, &tag.name);
                }
                selection.decisions.push(Decision {
                    repository: repo.name.clone(),
                    tag: tag.name.clone(),
                    digest: target_of(tag),
                    action,
                    rule: format!("{label}: {why}"),
                });
            }
            if rule.delete_untagged {
                for revision in &repo.revisions {
                    selection.released.release(&repo.name, revision.digest);
                }
            }
        }
        selection
    }
}

/// One rule over one repository's tags: each tag with its action and why.
fn decide<'r>(
    repo: &'r Repository,
    rule: &Rule,
    universe: &BlobUniverse,
    now: SystemTime,
    cutoff: SystemTime,
) -> Vec<(&'r Tag, Action, String)> {
    // Only tags with a readable current/link naming a manifest in storage are decided (and
    // counted by keep_last): the others are broken (the collection removes them) or corrupt (the
    // mark refuses to run). A broken tag kept by keep_last would push out a tag that pulls.
    let tags: Vec<(&Tag, SystemTime)> = repo
        .tags
        .iter()
        .filter(|t| target_of(t).is_some_and(|d| universe.index(&d).is_some()))
        .filter_map(|t| Some((t, t.current.as_ref()?.modified)))
        .collect();
    // Keep the last N by push time; a tie at the N-th keeps every tag pushed at that instant.
    let newest_kept = rule.keep_last.and_then(|n| {
        let mut times: Vec<SystemTime> = tags.iter().map(|(_, at)| *at).collect();
        times.sort_unstable_by(|a, b| b.cmp(a));
        n.checked_sub(1).and_then(|i| times.get(i).copied())
    });
    let keeps_all = rule.keep_last.is_some_and(|n| n >= tags.len());
    let has_keep = rule.keep_last.is_some() || rule.keep_tags.is_some();
    tags.into_iter()
        .map(|(tag, pushed)| {
            let age = now.duration_since(pushed).unwrap_or_default();
            let decision = if let Some(n) = rule
                .keep_last
                .filter(|_| keeps_all || newest_kept.is_some_and(|t| pushed >= t))
            {
                (Action::Keep, format!("keep_last {n}"))
            } else if let Some(re) = rule.keep_tags.as_ref().filter(|re| re.is_match(&tag.name)) {
                (Action::Keep, format!("keep_tags {}", re.as_str()))
            } else if let Some((limit, shown)) = &rule.delete_older_than {
                if age > *limit {
                    (Action::Delete, format!("delete_older_than {shown}"))
                } else {
                    (
                        Action::Keep,
                        format!("newer than delete_older_than {shown}"),
                    )
                }
            } else if has_keep {
                (Action::Delete, "kept by no keep rule".to_owned())
            } else {
                (Action::Keep, "no tag criterion".to_owned())
            };
            match decision {
                (Action::Delete, _) if pushed > cutoff => {
                    (tag, Action::Keep, "pushed within --min-age".to_owned())
                }
                (action, why) => (tag, action, why),
            }
        })
        .collect()
}

/// Adds to `released` what goes with the released revisions and the manifests of removed tags:
/// their child manifests and the referrers of all of these, in the same repository.
pub fn release_closure(inventory: &Inventory, catalog: &ManifestCatalog, released: &mut Released) {
    let universe = &inventory.blobs;
    for repo in &inventory.repositories {
        let revisions: HashSet<Digest> = repo.revisions.iter().map(|r| r.digest).collect();
        let mut pending: Vec<Digest> = repo
            .tags
            .iter()
            .filter(|t| released.tag(&repo.name, &t.name))
            .filter_map(target_of)
            .chain(
                released
                    .revisions
                    .get(&repo.name)
                    .into_iter()
                    .flatten()
                    .copied(),
            )
            .collect();
        let mut referrers: HashMap<Digest, Vec<Digest>> = HashMap::new();
        for revision in &repo.revisions {
            if let Some(subject) = universe
                .index(&revision.digest)
                .and_then(|i| catalog.subject(i, universe))
            {
                referrers.entry(subject).or_default().push(revision.digest);
            }
        }
        let mut seen = HashSet::new();
        while let Some(digest) = pending.pop() {
            if !seen.insert(digest) {
                continue;
            }
            if revisions.contains(&digest) {
                released.release(&repo.name, digest);
            }
            if let Some(Ok(refs)) = universe.index(&digest).and_then(|i| catalog.get(&i)) {
                pending.extend(refs.manifests().iter().map(|&i| *universe.digest(i)));
            }
            pending.extend(referrers.get(&digest).into_iter().flatten());
        }
    }
}

/// Takes out of `inventory` what the selection removes outright — removed tags, and the uploads
/// (with their S3 multipart uploads) of repositories removed whole, past `cutoff` — and returns
/// their deletions. What stays in the inventory goes through the mark and the plan as usual.
///
/// Changes only the repositories' tags and uploads (and the multipart uploads): the collection keeps
/// a copy of just those as scanned for the re-mark, and the plan names layer links by their indices
/// in the inventory ([`crate::plan::Target::LayerLink`]).
pub fn strip(
    inventory: &mut Inventory,
    selection: &Selection,
    cutoff: SystemTime,
) -> Vec<Deletion> {
    let mut deletions = Vec::new();
    let mut gone_uploads: HashSet<(String, String)> = HashSet::new();
    for repo in &mut inventory.repositories {
        let name = repo.name.clone();
        repo.tags.retain(|tag| {
            if !selection.released.tag(&name, &tag.name) {
                return true;
            }
            let mut keys: Vec<String> = tag
                .index
                .iter()
                .map(|l| layout::tag_index_link(&name, &tag.name, &l.digest))
                .collect();
            if tag.current.is_some() {
                keys.push(layout::tag_current_link(&name, &tag.name));
            }
            deletions.push(Deletion::of_keys(Phase::Untag, Kind::RemovedTag, keys));
            false
        });
        if selection.repositories.contains(&name) {
            repo.uploads.retain(|upload| {
                if upload.last_activity() > cutoff {
                    return true; // a push in progress keeps the repository
                }
                gone_uploads.insert((name.clone(), upload.id.clone()));
                deletions.push(Deletion::of_upload(Phase::Repositories, upload));
                false
            });
        }
    }
    inventory.multipart_uploads.retain(|upload| {
        let key = layout::parse_repository_key(&upload.key);
        let (Some(name), layout::RepositoryObject::Upload { id }) = (key.repository, key.object)
        else {
            return true;
        };
        let gone = gone_uploads.contains(&(name.to_owned(), id.to_owned()))
            || (selection.repositories.contains(name)
                && upload.initiated <= cutoff
                && !inventory
                    .repositories
                    .iter()
                    .any(|r| r.name == name && r.uploads.iter().any(|u| u.id == id)));
        if gone {
            deletions.push(Deletion {
                phase: Phase::Repositories,
                kind: Kind::MultipartUpload,
                target: KeyTarget::Multipart(Box::new(upload.clone())),
            });
        }
        !gone
    });
    deletions
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::DigestError;
    use crate::manifest::{ManifestKind, ManifestRefs};
    use crate::scan::{BlobUniverse, Link, TagCurrent};

    const HOUR: Duration = Duration::from_secs(3600);
    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000)
    }

    fn d(n: u8) -> Digest {
        Digest::from_bytes([n; 32])
    }

    fn tag(name: &str, target: u8, age: Duration) -> Tag {
        Tag {
            name: name.into(),
            current: Some(TagCurrent {
                target: Ok(d(target)),
                modified: now() - age,
            }),
            index: vec![Link::new(d(target), now() - age)],
        }
    }

    fn repo(name: &str, tags: Vec<Tag>, revisions: &[u8]) -> Repository {
        Repository {
            name: name.into(),
            revisions: revisions
                .iter()
                .map(|&n| Link::new(d(n), now() - DAY))
                .collect(),
            tags,
            ..Repository::default()
        }
    }

    fn inventory(mut repositories: Vec<Repository>) -> Inventory {
        repositories.sort_by(|a, b| a.name.cmp(&b.name));
        let blobs = (1..=20).map(|n| (d(n), 10, now() - DAY)).collect();
        Inventory {
            blobs: BlobUniverse::new(blobs),
            repositories,
            ..Inventory::default()
        }
    }

    fn decisions(selection: &Selection) -> Vec<(String, Action, String)> {
        selection
            .decisions
            .iter()
            .map(|d| {
                (
                    format!("{}:{}", d.repository, d.tag),
                    d.action,
                    d.rule.clone(),
                )
            })
            .collect()
    }

    fn deleted_tags(selection: &Selection) -> BTreeSet<String> {
        selection
            .decisions
            .iter()
            .filter(|d| d.action == Action::Delete)
            .map(|d| format!("{}:{}", d.repository, d.tag))
            .collect()
    }

    #[test]
    fn targets_parse_with_the_registry_rules() {
        let digest = format!("{}", d(7));
        assert_eq!(
            Target::parse("team/app").unwrap().reference,
            Reference::Repository
        );
        let t = Target::parse("localhost.x/team/app:v1.2").unwrap();
        assert_eq!(
            (t.repository.as_str(), t.reference),
            ("localhost.x/team/app", Reference::Tag("v1.2".into()))
        );
        let t = Target::parse(&format!("team/app@{digest}")).unwrap();
        assert_eq!(t.reference, Reference::Digest(d(7)));
        assert_eq!(t.to_string(), format!("team/app@{digest}"));
        for bad in [
            "Team/app",
            "team/app:",
            "team/app:-x",
            "team/app@sha256:zz",
            "team//app",
            "",
            "team/app:v1:v2",
        ] {
            let error = Target::parse(bad).unwrap_err();
            assert!(
                matches!(error, SelectError::BadTarget { .. }),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn delete_targets_must_exist() {
        let inv = inventory(vec![repo("app", vec![tag("v1", 1, DAY)], &[1])]);
        let parse = |t: &str| Target::parse(t).unwrap();
        assert_eq!(
            select_targets(&inv, &[parse("app:v1"), parse("nope")], false).unwrap_err(),
            SelectError::NoRepository("nope".into())
        );
        assert_eq!(
            select_targets(&inv, &[parse("app:v2")], false).unwrap_err(),
            SelectError::NoTag {
                repository: "app".into(),
                tag: "v2".into()
            }
        );
        let error = select_targets(&inv, &[parse(&format!("app@{}", d(2)))], false).unwrap_err();
        assert!(matches!(error, SelectError::NoManifest { .. }), "{error}");
    }

    #[test]
    fn a_tagged_digest_is_refused_unless_its_tags_go_too() {
        let inv = inventory(vec![repo(
            "app",
            vec![tag("latest", 1, DAY), tag("v1", 1, DAY), tag("v2", 2, DAY)],
            &[1, 2],
        )]);
        let by_digest = Target::parse(&format!("app@{}", d(1))).unwrap();
        let error = select_targets(&inv, std::slice::from_ref(&by_digest), false).unwrap_err();
        assert!(error.to_string().contains("latest, v1"), "{error}");
        assert!(error.to_string().contains("--with-tags"), "{error}");

        let selection = select_targets(&inv, std::slice::from_ref(&by_digest), true).unwrap();
        assert_eq!(
            deleted_tags(&selection),
            BTreeSet::from(["app:latest".into(), "app:v1".into()])
        );
        assert!(selection.released.revision("app", &d(1)));
        assert_eq!(selection.requested, [("app".to_owned(), d(1))]);

        // Naming every tag as well is enough, before or after the digest.
        let all = [
            Target::parse("app:latest").unwrap(),
            by_digest,
            Target::parse("app:v1").unwrap(),
        ];
        assert!(select_targets(&inv, &all, false).is_ok());
    }

    #[test]
    fn a_whole_repository_loses_every_tag_and_revision() {
        let inv = inventory(vec![
            repo("foo", vec![tag("a", 1, DAY), tag("b", 2, DAY)], &[1, 2, 3]),
            repo("foo/bar", vec![tag("c", 4, DAY)], &[4]),
        ]);
        let selection = select_targets(&inv, &[Target::parse("foo").unwrap()], false).unwrap();
        assert_eq!(
            deleted_tags(&selection),
            BTreeSet::from(["foo:a".into(), "foo:b".into()])
        );
        for n in [1, 2, 3] {
            assert!(selection.released.revision("foo", &d(n)));
        }
        assert!(
            !selection.released.revision("foo/bar", &d(4)),
            "nested repository untouched"
        );
        assert_eq!(selection.repositories, BTreeSet::from(["foo".to_owned()]));
    }

    fn rule(json: &str) -> Policy {
        Policy::from_json(&format!(r#"{{"rules":[{json}]}}"#)).unwrap()
    }

    #[test]
    fn keep_last_counts_by_push_time_and_keeps_ties() {
        let inv = inventory(vec![repo(
            "app",
            vec![
                tag("a", 1, 5 * HOUR),
                tag("b", 2, 4 * HOUR),
                tag("c", 3, 3 * HOUR),
                tag("d", 4, 3 * HOUR),
                tag("e", 5, HOUR),
            ],
            &[1, 2, 3, 4, 5],
        )]);
        let selection =
            rule(r#"{"repositories":"**","keep_last":2}"#).select(&inv, now(), now() - HOUR);
        // e is newest; c and d tie for second: both stay.
        assert_eq!(
            deleted_tags(&selection),
            BTreeSet::from(["app:a".into(), "app:b".into()])
        );
        let decided = decisions(&selection);
        assert!(decided.contains(&(
            "app:e".into(),
            Action::Keep,
            "rule 1 (**): keep_last 2".into()
        )));
        assert!(decided.contains(&(
            "app:a".into(),
            Action::Delete,
            "rule 1 (**): kept by no keep rule".into()
        )));
        // keep_last 0 keeps nothing; more than there are keeps all.
        let none = rule(r#"{"repositories":"**","keep_last":0}"#).select(&inv, now(), now() - HOUR);
        assert_eq!(deleted_tags(&none).len(), 5);
        let all = rule(r#"{"repositories":"**","keep_last":9}"#).select(&inv, now(), now() - HOUR);
        assert!(deleted_tags(&all).is_empty());
        // Within --min-age (here 4 h 30 min), a tag is a push that may be in progress: kept.
        let young = rule(r#"{"repositories":"**","keep_last":0}"#).select(
            &inv,
            now(),
            now() - 4 * HOUR - HOUR / 2,
        );
        assert_eq!(deleted_tags(&young), BTreeSet::from(["app:a".into()]));
        assert!(decisions(&young).contains(&(
            "app:e".into(),
            Action::Keep,
            "rule 1 (**): pushed within --min-age".into()
        )));
    }

    #[test]
    fn keeps_are_ored_and_win_over_age() {
        let inv = inventory(vec![repo(
            "app",
            vec![
                tag("v1", 1, 100 * DAY),
                tag("v2", 2, 95 * DAY),
                tag("dev-old", 3, 91 * DAY),
                tag("dev-new", 4, 10 * DAY),
                tag("latest", 5, 200 * DAY),
            ],
            &[1, 2, 3, 4, 5],
        )]);
        let policy = rule(
            r#"{"repositories":"app","keep_last":1,"keep_tags":"^v\\d+$","delete_older_than":"90d"}"#,
        );
        let selection = policy.select(&inv, now(), now() - HOUR);
        assert_eq!(
            deleted_tags(&selection),
            BTreeSet::from(["app:dev-old".into(), "app:latest".into()])
        );
        let decided = decisions(&selection);
        assert!(decided.contains(&(
            "app:v1".into(),
            Action::Keep,
            r"rule 1 (app): keep_tags ^v\d+$".into()
        )));
        assert!(decided.contains(&(
            "app:dev-new".into(),
            Action::Keep,
            "rule 1 (app): keep_last 1".into()
        )));
        assert!(decided.contains(&(
            "app:latest".into(),
            Action::Delete,
            "rule 1 (app): delete_older_than 90d".into()
        )));
    }

    #[test]
    fn the_first_matching_rule_decides_and_globs_span_components_only_with_two_stars() {
        let inv = inventory(vec![
            repo("team/a", vec![tag("x", 1, 10 * DAY)], &[1]),
            repo("team/a/b", vec![tag("x", 2, 10 * DAY)], &[2]),
            repo("team/protected", vec![tag("x", 3, 10 * DAY)], &[3]),
            repo("other", vec![tag("x", 4, 10 * DAY)], &[4]),
        ]);
        let policy = Policy::from_json(
            r#"{"rules":[
                {"repositories":"team/protected"},
                {"repositories":"team/*","delete_older_than":"1d"},
                {"repositories":"team/**","keep_last":1}
            ]}"#,
        )
        .unwrap();
        let selection = policy.select(&inv, now(), now() - HOUR);
        assert_eq!(
            deleted_tags(&selection),
            BTreeSet::from(["team/a:x".into()])
        );
        let decided = decisions(&selection);
        assert!(decided.contains(&(
            "team/protected:x".into(),
            Action::Keep,
            "rule 1 (team/protected): no tag criterion".into()
        )));
        assert!(decided.contains(&(
            "team/a/b:x".into(),
            Action::Keep,
            "rule 3 (team/**): keep_last 1".into()
        )));
        assert!(
            !decided.iter().any(|(t, ..)| t == "other:x"),
            "no rule matches `other`"
        );
    }

    #[test]
    fn removing_the_last_tags_of_a_repository_removes_it() {
        let inv = inventory(vec![
            repo(
                "app",
                vec![tag("v1", 1, DAY), tag("v2", 2, DAY)],
                &[1, 2, 3],
            ),
            repo("lib", vec![tag("v1", 4, DAY)], &[4, 5]),
        ]);
        let request = Request::Delete {
            targets: ["app:v1", "lib:v1"]
                .map(|t| Target::parse(t).unwrap())
                .to_vec(),
            with_tags: false,
        };
        let selection = request.select(&inv, now(), now() - HOUR).unwrap();
        assert_eq!(selection.repositories, BTreeSet::from(["lib".to_owned()]));
        assert!(
            selection.released.revision("lib", &d(5)),
            "untagged, released"
        );
        assert!(!selection.released.revision("app", &d(3)), "app keeps v2");
    }

    #[test]
    fn delete_untagged_releases_every_revision_of_the_repository() {
        let inv = inventory(vec![
            repo("app", vec![tag("v1", 1, DAY)], &[1, 2, 3]),
            repo("lib", vec![], &[4]),
        ]);
        let selection = rule(r#"{"repositories":"app","delete_untagged":true}"#).select(
            &inv,
            now(),
            now() - HOUR,
        );
        assert!(deleted_tags(&selection).is_empty());
        for n in [1, 2, 3] {
            assert!(selection.released.revision("app", &d(n)));
        }
        assert!(!selection.released.revision("lib", &d(4)));
    }

    #[test]
    fn policies_are_validated() {
        for (bad, needle) in [
            (
                r#"{"rules":[{"repositories":"a","keep_lats":1}]}"#,
                "unknown field `keep_lats`",
            ),
            (
                r#"{"rules":[{"repositories":"a","keep_tags":"("}]}"#,
                "rule 1: keep_tags",
            ),
            (
                r#"{"rules":[{"repositories":"a","delete_older_than":"soon"}]}"#,
                "rule 1: delete_older_than",
            ),
            (
                r#"{"rules":[{"repositories":"a[","keep_last":1}]}"#,
                "rule 1: repositories",
            ),
            (r#"{"rules":[]}"#, "no rules"),
            (r#"{"rule":[]}"#, "unknown field `rule`"),
        ] {
            let error = Policy::from_json(bad).unwrap_err().to_string();
            assert!(error.contains(needle), "{bad}: {error}");
        }
    }

    #[test]
    fn broken_and_corrupt_tags_are_not_decided() {
        let mut corrupt = tag("bad", 1, DAY);
        corrupt.current.as_mut().unwrap().target = Err(DigestError::Malformed("x".into()));
        let half = Tag {
            name: "half".into(),
            current: None,
            index: vec![],
        };
        let inv = inventory(vec![repo(
            "app",
            vec![corrupt, half, tag("ok", 1, DAY)],
            &[1],
        )]);
        let selection =
            rule(r#"{"repositories":"**","keep_last":0}"#).select(&inv, now(), now() - HOUR);
        assert_eq!(deleted_tags(&selection), BTreeSet::from(["app:ok".into()]));

        // A broken tag (its manifest is not in storage), pushed last, does not count as one of
        // the last N: the tag that pulls stays.
        let inv = inventory(vec![repo(
            "app",
            vec![tag("broken", 99, DAY), tag("ok", 1, 2 * DAY)],
            &[1],
        )]);
        let selection =
            rule(r#"{"repositories":"**","keep_last":1}"#).select(&inv, now(), now() - HOUR);
        assert_eq!(deleted_tags(&selection), BTreeSet::new());
        assert_eq!(
            decisions(&selection).len(),
            1,
            "{:?}",
            decisions(&selection)
        );
    }

    #[test]
    fn a_removed_repository_loses_its_old_uploads_and_their_multipart_uploads() {
        use crate::scan::Upload;
        use crate::storage::{MultipartUpload, ObjectMeta};
        let upload = |repo: &str, id: &str, age: Duration| Upload {
            id: id.into(),
            files: vec![ObjectMeta {
                key: format!("{}_uploads/{id}/data", layout::repository(repo)),
                size: 5,
                modified: now() - age,
            }],
        };
        let multipart = |repo: &str, id: &str| MultipartUpload {
            key: format!("{}_uploads/{id}/data", layout::repository(repo)),
            upload_id: format!("mp-{id}"),
            initiated: now() - DAY,
        };
        let mut gone = repo("gone", vec![tag("v1", 1, DAY)], &[1]);
        gone.uploads = vec![
            upload("gone", "old", DAY),
            upload("gone", "pushing", Duration::ZERO),
        ];
        let mut kept = repo("kept", vec![tag("v1", 2, DAY)], &[2]);
        kept.uploads = vec![upload("kept", "old", DAY)];
        let mut inv = inventory(vec![gone, kept]);
        inv.multipart_uploads = vec![
            multipart("gone", "old"),
            multipart("gone", "pushing"),
            multipart("gone", "orphan"),
            multipart("kept", "old"),
        ];
        let selection = select_targets(&inv, &[Target::parse("gone").unwrap()], false).unwrap();
        let deletions = strip(&mut inv, &selection, now() - HOUR);

        let kinds: Vec<(Phase, Kind, Vec<String>)> = deletions
            .iter()
            .map(|d| (d.phase, d.kind, d.keys(&inv)))
            .collect();
        let data = |id: &str| format!("{}_uploads/{id}/data", layout::repository("gone"));
        assert_eq!(
            kinds,
            [
                (
                    Phase::Untag,
                    Kind::RemovedTag,
                    vec![
                        layout::tag_index_link("gone", "v1", &d(1)),
                        layout::tag_current_link("gone", "v1"),
                    ]
                ),
                (Phase::Repositories, Kind::Upload, vec![data("old")]),
                (
                    Phase::Repositories,
                    Kind::MultipartUpload,
                    vec![data("old")]
                ),
                (
                    Phase::Repositories,
                    Kind::MultipartUpload,
                    vec![data("orphan")]
                ),
            ]
        );
        // The push in progress stays, and keeps its repository; `kept` is untouched.
        assert_eq!(inv.repositories[0].uploads.len(), 1);
        assert_eq!(inv.repositories[1].uploads.len(), 1);
        let left: Vec<&str> = inv
            .multipart_uploads
            .iter()
            .map(|m| m.upload_id.as_str())
            .collect();
        assert_eq!(left, ["mp-pushing", "mp-old"]);
    }

    #[test]
    fn the_closure_of_a_removed_tag_is_released_within_its_repository() {
        // app: tag multi → index 10 (children 11, 12); 13 is a referrer of 10; 14 untagged
        // and unrelated; the same index is also a revision of `other`.
        let mut inv = inventory(vec![
            repo("app", vec![tag("multi", 10, DAY)], &[10, 11, 12, 13, 14]),
            repo("other", vec![], &[10]),
        ]);
        let refs = |manifests: &[u8], subject: Option<u8>| ManifestRefs {
            kind: if manifests.is_empty() {
                ManifestKind::OciImageManifest
            } else {
                ManifestKind::OciImageIndex
            },
            manifests: manifests.iter().map(|&n| d(n)).collect(),
            blobs: vec![],
            subject: subject.map(d),
        };
        let universe = &inv.blobs;
        let catalog = ManifestCatalog::of_parsed(
            universe,
            [
                (10, refs(&[11, 12], None)),
                (11, refs(&[], None)),
                (12, refs(&[], None)),
                (13, refs(&[], Some(10))),
                (14, refs(&[], None)),
            ]
            .map(|(n, r)| (universe.index(&d(n)).unwrap(), Ok(r))),
        );
        let mut selection =
            select_targets(&inv, &[Target::parse("app:multi").unwrap()], false).unwrap();
        release_closure(&inv, &catalog, &mut selection.released);
        let released = &selection.released.revisions;
        assert_eq!(released["app"], HashSet::from([d(10), d(11), d(12), d(13)]));
        assert!(!released.contains_key("other"));

        let deletions = strip(&mut inv, &selection, now());
        assert!(inv.repositories[0].tags.is_empty());
        assert_eq!(deletions.len(), 1);
        assert_eq!(
            deletions[0].keys(&inv),
            [
                layout::tag_index_link("app", "multi", &d(10)),
                layout::tag_current_link("app", "multi"),
            ]
        );
        assert_eq!(
            (deletions[0].phase, deletions[0].kind),
            (Phase::Untag, Kind::RemovedTag)
        );
    }
}
