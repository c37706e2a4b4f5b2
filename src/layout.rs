//! Every path format of the registry's storage, in one place (distribution's `registry/storage/paths.go`).
//!
//! Everything lives under `docker/registry/v2/`:
//!
//! ```text
//! blobs/sha256/<2 hex>/<hex>/data                                   blob content
//! repositories/<name>/_layers/sha256/<hex>/link                     blob linked into a repository
//! repositories/<name>/_manifests/revisions/sha256/<hex>/link        manifest present in a repository
//! repositories/<name>/_manifests/revisions/sha256/<hex>/signatures/sha256/<hex>/link   (pre-2.5 residue)
//! repositories/<name>/_manifests/tags/<tag>/current/link            what the tag points to now
//! repositories/<name>/_manifests/tags/<tag>/index/sha256/<hex>/link every digest the tag pointed to
//! repositories/<name>/_uploads/<id>/…                               upload in progress
//! ```
//!
//! regsweep keeps its own objects beside `docker/`, where the registry never looks:
//!
//! ```text
//! _regsweep/lock                                                    the run lock
//! _regsweep/quarantine/<run>/docker/registry/v2/…                  what a --quarantine run moved
//! _regsweep/quarantine/<run>/run.json                               the run's record
//! _regsweep/quarantine/<run>/journal/<batch>.jsonl                  what it moved, batch by batch
//! ```
//!
//! Parsing is strict: a key that does not match a known form exactly is [`RepositoryObject::Unknown`]
//! or [`BlobObject::Unknown`], and unknown objects are never deleted.

use crate::digest::{Digest, DigestError, SHA256};
use crate::run_id::RunId;
use crate::shard::Shard;

/// The root of the registry's data below the storage root directory.
pub const V2: &str = "docker/registry/v2/";
/// Where blob contents live.
pub const BLOBS: &str = "docker/registry/v2/blobs/";
/// Where the sha256 blob shards live.
pub const SHA256_BLOBS: &str = "docker/registry/v2/blobs/sha256/";
/// Where repositories live.
pub const REPOSITORIES: &str = "docker/registry/v2/repositories/";

/// regsweep's own objects.
pub const REGSWEEP: &str = "_regsweep/";
/// The run lock: at most one regsweep run deletes from a storage at a time.
pub const RUN_LOCK: &str = "_regsweep/lock";
/// The storage's own ID, written by the first `regsweep mark`: a state is swept only where the
/// ID is the one it was made with.
pub const STORAGE_ID: &str = "_regsweep/id";
/// Where `registry:NAME` mark states live ([`crate::state`]).
pub const MARK_STATES: &str = "_regsweep/state/";
/// Where `--quarantine` runs move what they would have deleted, one directory per run.
pub const QUARANTINE: &str = "_regsweep/quarantine/";

/// The object of the mark state `registry:NAME`.
pub fn mark_state(name: &str) -> String {
    format!("{MARK_STATES}{name}")
}

/// The run lock of one shard of a sharded sweep: the shards of one state lock apart, so that they
/// can run at once; the whole registry (`0/1`) takes [`RUN_LOCK`], as `gc` does.
pub fn run_lock(shard: &Shard) -> String {
    if shard.is_whole() {
        RUN_LOCK.to_owned()
    } else {
        format!("{RUN_LOCK}-shard-{}-of-{}", shard.index(), shard.count())
    }
}

/// The directory of one quarantine run: `_regsweep/quarantine/<run>/`.
pub fn quarantine_run(run: &RunId) -> String {
    format!("{QUARANTINE}{run}/")
}

/// Where a `--quarantine` run keeps the registry object `key`:
/// `_regsweep/quarantine/<run>/<key>`.
pub fn quarantined(run: &RunId, key: &str) -> String {
    format!("{QUARANTINE}{run}/{key}")
}

/// The inverse of [`quarantined`]: the registry key a quarantined object came from. `None` for
/// anything that is not a registry object of that run (the run's own records, directory markers,
/// other runs, keys outside [`V2`], or with empty, `.` or `..` components), so that a restore can
/// never write outside the registry's tree.
pub fn unquarantined<'a>(run: &RunId, key: &'a str) -> Option<&'a str> {
    let original = key
        .strip_prefix(QUARANTINE)?
        .strip_prefix(run.as_str())?
        .strip_prefix('/')?;
    let inside = original.strip_prefix(V2)?;
    let sane = !inside.is_empty()
        && inside
            .split('/')
            .all(|part| !matches!(part, "" | "." | ".."));
    sane.then_some(original)
}

/// The run record of a quarantine run (`run.json`): when it started and finished, how, and what
/// it moved.
pub fn quarantine_record(run: &RunId) -> String {
    format!("{QUARANTINE}{run}/run.json")
}

/// The directory of a quarantine run's journal: one JSON-lines object per batch of moves.
pub fn quarantine_journal(run: &RunId) -> String {
    format!("{QUARANTINE}{run}/journal/")
}

/// One batch of a quarantine run's journal.
pub fn quarantine_journal_batch(run: &RunId, batch: u64) -> String {
    format!("{QUARANTINE}{run}/journal/{batch:08}.jsonl")
}

/// The run a quarantine directory (`_regsweep/quarantine/<run>/`, as a listing gives it) belongs
/// to; `None` for anything that is not a valid run ID.
pub fn quarantine_run_of(dir: &str) -> Option<RunId> {
    RunId::parse(dir.strip_prefix(QUARANTINE)?.strip_suffix('/')?)
}

/// Directories regsweep never removes, even when empty: the registry expects them.
pub fn is_anchor_dir(dir: &str) -> bool {
    V2.starts_with(dir) || dir == BLOBS || dir == SHA256_BLOBS || dir == REPOSITORIES
}

/// The prefix of one blob shard (`…/blobs/sha256/ab/`), the unit of concurrent blob listing.
pub fn blob_shard(shard: u8) -> String {
    format!("{SHA256_BLOBS}{shard:02x}/")
}

/// The key of a blob's content.
pub fn blob_data(digest: &Digest) -> String {
    let hex = digest.hex();
    format!("{SHA256_BLOBS}{}/{hex}/data", &hex[..2])
}

/// The prefix of a repository: `…/repositories/<name>/`.
pub fn repository(name: &str) -> String {
    format!("{REPOSITORIES}{name}/")
}

pub fn layer_link(repo: &str, digest: &Digest) -> String {
    format!(
        "{REPOSITORIES}{repo}/_layers/{SHA256}/{}/link",
        digest.hex()
    )
}

pub fn revision_link(repo: &str, digest: &Digest) -> String {
    format!(
        "{REPOSITORIES}{repo}/_manifests/revisions/{SHA256}/{}/link",
        digest.hex()
    )
}

pub fn revision_signature_link(repo: &str, revision: &Digest, signature: &Digest) -> String {
    format!(
        "{REPOSITORIES}{repo}/_manifests/revisions/{SHA256}/{}/signatures/{SHA256}/{}/link",
        revision.hex(),
        signature.hex()
    )
}

pub fn tag_current_link(repo: &str, tag: &str) -> String {
    format!("{REPOSITORIES}{repo}/_manifests/tags/{tag}/current/link")
}

pub fn tag_index_link(repo: &str, tag: &str, digest: &Digest) -> String {
    format!(
        "{REPOSITORIES}{repo}/_manifests/tags/{tag}/index/{SHA256}/{}/link",
        digest.hex()
    )
}

/// Link files hold 71 bytes; a larger one is corrupt and is refused by its listed size, unread.
pub const MAX_LINK_BYTES: u64 = 1024;

/// Parses the content of a link file: exactly `sha256:<64 lowercase hex>`, no newline.
pub fn parse_link(content: &[u8]) -> Result<Digest, DigestError> {
    let text = std::str::from_utf8(content)
        .map_err(|_| DigestError::Malformed(String::from_utf8_lossy(content).into_owned()))?;
    Digest::parse(text)
}

/// What a key below [`BLOBS`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobObject {
    /// `blobs/sha256/<2 hex>/<hex>/data`, with the shard matching the digest.
    Data(Digest),
    /// An empty directory or directory marker.
    DirMarker,
    /// Anything else (other algorithms, temp files, stray files): kept and reported.
    Unknown,
}

pub fn parse_blob_key(key: &str) -> BlobObject {
    if key.ends_with('/') {
        return BlobObject::DirMarker;
    }
    let Some(rest) = key.strip_prefix(SHA256_BLOBS) else {
        return BlobObject::Unknown;
    };
    let mut parts = rest.split('/');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(shard), Some(hex), Some("data"), None) if hex.get(..2) == Some(shard) => {
            Digest::from_hex(hex).map_or(BlobObject::Unknown, BlobObject::Data)
        }
        _ => BlobObject::Unknown,
    }
}

/// What a key inside a repository is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepositoryObject<'a> {
    LayerLink(Digest),
    RevisionLink(Digest),
    RevisionSignature {
        revision: Digest,
        signature: Digest,
    },
    TagCurrent {
        tag: &'a str,
    },
    TagIndex {
        tag: &'a str,
        digest: Digest,
    },
    /// A file of the upload `id` (`data`, `startedat`, `hashstates/…`).
    Upload {
        id: &'a str,
    },
    /// An empty directory or directory marker.
    DirMarker,
    /// Anything else: kept and reported.
    Unknown,
}

/// A key below [`REPOSITORIES`], split into the repository name and what the object is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepositoryKey<'a> {
    /// `None` for keys that belong to no repository (no `_layers`/`_manifests`/`_uploads` component),
    /// such as an empty namespace directory.
    pub repository: Option<&'a str>,
    pub object: RepositoryObject<'a>,
}

/// Splits a key below [`REPOSITORIES`]. Repository name components never start with `_`, so the first
/// component that does (`_layers` in 2.x, `_manifests` in 3.x, `_uploads`) marks where the name ends.
/// Anything else below such a component is an unknown object of that repository, which keeps it.
pub fn parse_repository_key(key: &str) -> RepositoryKey<'_> {
    let marker = key.ends_with('/');
    let rest = key.strip_prefix(REPOSITORIES).unwrap_or("");
    let components = rest.trim_end_matches('/');
    let Some(boundary) = components
        .match_indices('/')
        .map(|(i, _)| i + 1)
        .find(|&i| components[i..].starts_with('_'))
    else {
        let object = if marker {
            RepositoryObject::DirMarker
        } else {
            RepositoryObject::Unknown
        };
        return RepositoryKey {
            repository: None,
            object,
        };
    };
    let name = &components[..boundary - 1];
    let valid = is_valid_repository_name(name);
    let object = match (marker, valid) {
        (true, _) => RepositoryObject::DirMarker,
        (false, true) => parse_repository_object(&components[boundary..]),
        (false, false) => RepositoryObject::Unknown,
    };
    RepositoryKey {
        repository: valid.then_some(name),
        object,
    }
}

fn parse_repository_object(inner: &str) -> RepositoryObject<'_> {
    let parts: Vec<&str> = inner.split('/').collect();
    let digest = |hex: &str| Digest::from_hex(hex);
    let parsed = match parts.as_slice() {
        ["_layers", SHA256, hex, "link"] => digest(hex).map(RepositoryObject::LayerLink),
        ["_manifests", "revisions", SHA256, hex, "link"] => {
            digest(hex).map(RepositoryObject::RevisionLink)
        }
        [
            "_manifests",
            "revisions",
            SHA256,
            hex,
            "signatures",
            SHA256,
            sig,
            "link",
        ] => match (digest(hex), digest(sig)) {
            (Some(revision), Some(signature)) => Some(RepositoryObject::RevisionSignature {
                revision,
                signature,
            }),
            _ => None,
        },
        ["_manifests", "tags", tag, "current", "link"] if is_valid_tag(tag) => {
            Some(RepositoryObject::TagCurrent { tag })
        }
        ["_manifests", "tags", tag, "index", SHA256, hex, "link"] if is_valid_tag(tag) => {
            digest(hex).map(|digest| RepositoryObject::TagIndex { tag, digest })
        }
        ["_uploads", id, _, ..] if !id.is_empty() => Some(RepositoryObject::Upload { id }),
        _ => None,
    };
    parsed.unwrap_or(RepositoryObject::Unknown)
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*` per component, components joined by `/`, ≤ 255 chars.
pub fn is_valid_repository_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 255 && name.split('/').all(is_valid_name_component)
}

fn is_valid_name_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    if !alnum(first) || !alnum(last) {
        return false;
    }
    // Separators between alphanumeric runs: one `.`, one or two `_`, or any number of `-`.
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let separator = &component[start..i];
        let ok = matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// `[\w][\w.-]{0,127}`.
pub fn is_valid_tag(tag: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = tag.as_bytes();
    matches!(bytes.first(), Some(&b) if word(b))
        && bytes.len() <= 128
        && bytes.iter().all(|&b| word(b) || b == b'.' || b == b'-')
}

/// The one file the registry keeps in a leaf directory of the layout — `data` in a blob's
/// directory, `link` in a `_layers`, tag `current` or tag index directory — or `None` for any
/// other directory (revision directories included: they may hold pre-2.5 `signatures/`).
///
/// These directories are most of a registry, and a lister may stat their file instead of reading
/// the directory: one system call instead of five. Anything else in such a directory is then not
/// seen; regsweep never deletes what it has not seen, and a directory that is not empty stays.
pub fn leaf_file(dir_key: &str) -> Option<&'static str> {
    if dir_key.starts_with(SHA256_BLOBS) {
        let key = format!("{dir_key}data");
        return matches!(parse_blob_key(&key), BlobObject::Data(_)).then_some("data");
    }
    let key = format!("{dir_key}link");
    matches!(
        parse_repository_key(&key).object,
        RepositoryObject::LayerLink(_)
            | RepositoryObject::TagCurrent { .. }
            | RepositoryObject::TagIndex { .. }
    )
    .then_some("link")
}

/// The directories that may be left empty once `key` is deleted: its ancestors, deepest first,
/// stopping before the anchors the registry expects to exist.
pub fn removable_parents(key: &str) -> impl Iterator<Item = &str> {
    let trimmed = key.trim_end_matches('/');
    trimmed
        .rmatch_indices('/')
        .map(move |(i, _)| &trimmed[..=i])
        .take_while(|dir| !is_anchor_dir(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf_directories_name_their_one_file() {
        let d = Digest::from_bytes([0xab; 32]);
        let dir = |key: String| key.rsplit_once('/').unwrap().0.to_owned() + "/";
        assert_eq!(leaf_file(&dir(blob_data(&d))), Some("data"));
        assert_eq!(leaf_file(&dir(layer_link("a/b", &d))), Some("link"));
        assert_eq!(leaf_file(&dir(tag_current_link("a", "v1"))), Some("link"));
        assert_eq!(leaf_file(&dir(tag_index_link("a", "v1", &d))), Some("link"));
        // Revisions may hold legacy signatures: read whole.
        assert_eq!(leaf_file(&dir(revision_link("a", &d))), None);
        for other in [
            SHA256_BLOBS.to_owned(),
            blob_shard(0xab),
            format!("{SHA256_BLOBS}ab/{}/", "z".repeat(64)),
            format!("{SHA256_BLOBS}cd/{}/", d.hex()), // shard does not match the digest
            repository("a") + "_layers/sha256/",
            repository("a") + "_manifests/tags/v1/",
            repository("a") + "_uploads/u/",
        ] {
            assert_eq!(leaf_file(&other), None, "{other}");
        }
    }

    const HEX: &str = "a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4";
    const HEX2: &str = "0000000000000000000000000000000000000000000000000000000000000001";

    fn d(hex: &str) -> Digest {
        Digest::from_hex(hex).unwrap()
    }

    #[test]
    fn builds_and_parses_blob_keys() {
        let key = blob_data(&d(HEX));
        assert_eq!(
            key,
            format!("docker/registry/v2/blobs/sha256/a3/{HEX}/data")
        );
        assert_eq!(parse_blob_key(&key), BlobObject::Data(d(HEX)));
        // Wrong shard, other files, other algorithms, markers.
        let wrong_shard = format!("docker/registry/v2/blobs/sha256/a4/{HEX}/data");
        assert_eq!(parse_blob_key(&wrong_shard), BlobObject::Unknown);
        let tmp = format!("{key}.6f1c.tmp");
        assert_eq!(parse_blob_key(&tmp), BlobObject::Unknown);
        let sha512 = format!("docker/registry/v2/blobs/sha512/a3/{HEX}{HEX}/data");
        assert_eq!(parse_blob_key(&sha512), BlobObject::Unknown);
        let marker = format!("docker/registry/v2/blobs/sha256/a3/{HEX}/");
        assert_eq!(parse_blob_key(&marker), BlobObject::DirMarker);
    }

    #[test]
    fn parses_every_repository_object() {
        let repo = "library/alpine";
        let digest = d(HEX);
        let sig = d(HEX2);
        let cases = [
            (
                layer_link(repo, &digest),
                RepositoryObject::LayerLink(digest),
            ),
            (
                revision_link(repo, &digest),
                RepositoryObject::RevisionLink(digest),
            ),
            (
                revision_signature_link(repo, &digest, &sig),
                RepositoryObject::RevisionSignature {
                    revision: digest,
                    signature: sig,
                },
            ),
            (
                tag_current_link(repo, "3.19"),
                RepositoryObject::TagCurrent { tag: "3.19" },
            ),
            (
                tag_index_link(repo, "latest", &digest),
                RepositoryObject::TagIndex {
                    tag: "latest",
                    digest,
                },
            ),
            (
                format!("{}_uploads/0b9d-11/hashstates/sha256/0", repository(repo)),
                RepositoryObject::Upload { id: "0b9d-11" },
            ),
            (
                format!("{}_manifests/tags/", repository(repo)),
                RepositoryObject::DirMarker,
            ),
            (
                format!("{}_layers/sha256/{HEX}/link.1234.tmp", repository(repo)),
                RepositoryObject::Unknown,
            ),
            (
                format!("{}_layers/sha256/{}/link", repository(repo), &HEX[1..]),
                RepositoryObject::Unknown,
            ),
        ];
        for (key, object) in cases {
            let parsed = parse_repository_key(&key);
            assert_eq!(parsed.repository, Some(repo), "{key}");
            assert_eq!(parsed.object, object, "{key}");
        }
    }

    #[test]
    fn nested_names_and_both_layout_generations() {
        // foo and foo/bar are both repositories; 2.x has _layers, 3.x may have only _manifests.
        let k1 = layer_link("foo", &d(HEX));
        let k2 = revision_link("foo/bar", &d(HEX));
        assert_eq!(parse_repository_key(&k1).repository, Some("foo"));
        assert_eq!(parse_repository_key(&k2).repository, Some("foo/bar"));
        // A namespace directory that is no repository.
        let ns = format!("{REPOSITORIES}team/");
        assert_eq!(
            parse_repository_key(&ns),
            RepositoryKey {
                repository: None,
                object: RepositoryObject::DirMarker
            }
        );
        // Unknown underscore directories are unknown objects of their repository.
        let junk_key = format!("{REPOSITORIES}foo/_junk/x");
        let junk = parse_repository_key(&junk_key);
        assert_eq!(junk.repository, Some("foo"));
        assert_eq!(junk.object, RepositoryObject::Unknown);
        // Invalid names and stray files belong to no repository.
        for key in [
            format!("{REPOSITORIES}Foo/_layers/sha256/{HEX}/link"),
            format!("{REPOSITORIES}stray-file"),
        ] {
            let parsed = parse_repository_key(&key);
            assert_eq!(parsed.repository, None, "{key}");
            assert_eq!(parsed.object, RepositoryObject::Unknown, "{key}");
        }
    }

    #[test]
    fn repository_name_grammar() {
        for ok in [
            "a",
            "library/alpine",
            "a.b",
            "a_b",
            "a__b",
            "a---b",
            "0/1/2",
        ] {
            assert!(is_valid_repository_name(ok), "{ok}");
        }
        for bad in [
            "", "A", "a/", "/a", "a..b", "a___b", "_a", "a-", "a/_b", "a b",
        ] {
            assert!(!is_valid_repository_name(bad), "{bad}");
        }
        assert!(!is_valid_repository_name(&"a".repeat(256)));
    }

    #[test]
    fn tag_grammar() {
        assert!(is_valid_tag("v1.2.3-rc_1"));
        assert!(is_valid_tag("_x"));
        assert!(!is_valid_tag(".x"));
        assert!(!is_valid_tag("-x"));
        assert!(!is_valid_tag(&"x".repeat(129)));
    }

    #[test]
    fn strict_links() {
        assert_eq!(parse_link(format!("sha256:{HEX}").as_bytes()), Ok(d(HEX)));
        assert!(parse_link(format!("sha256:{HEX}\n").as_bytes()).is_err());
        assert!(parse_link(b"").is_err());
        assert!(parse_link(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn quarantine_paths_map_both_ways_and_refuse_everything_else() {
        let run = RunId::parse("20261129T031522Z-3f9a1c").unwrap();
        let other = RunId::parse("20261129T031522Z-000001").unwrap();
        let key = blob_data(&d(HEX));
        let moved = quarantined(&run, &key);
        assert_eq!(
            moved,
            format!("_regsweep/quarantine/20261129T031522Z-3f9a1c/{key}")
        );
        assert!(moved.starts_with(&quarantine_run(&run)));
        assert_eq!(unquarantined(&run, &moved), Some(key.as_str()));
        let link = tag_current_link("team/app", "v1");
        assert_eq!(
            unquarantined(&run, &quarantined(&run, &link)),
            Some(link.as_str())
        );
        let record = quarantine_record(&run);
        let journal = quarantine_journal_batch(&run, 7);
        assert!(journal.starts_with(&quarantine_journal(&run)), "{journal}");
        for refused in [
            key.clone(),
            quarantined(&other, &key),
            record.clone(),
            journal,
            quarantine_run(&run),
            format!("{}docker/registry/v2/", quarantine_run(&run)),
            format!(
                "{}docker/registry/v2/../../../etc/passwd",
                quarantine_run(&run)
            ),
            format!("{}docker/registry/v2/blobs//x", quarantine_run(&run)),
            format!("{}elsewhere/file", quarantine_run(&run)),
            format!("_regsweep/quarantine/{run}x/{key}"),
        ] {
            assert_eq!(unquarantined(&run, &refused), None, "{refused}");
        }
        assert_eq!(quarantine_run_of(&quarantine_run(&run)), Some(run));
        assert_eq!(quarantine_run_of("_regsweep/quarantine/junk/"), None);
        assert_eq!(quarantine_run_of(&record), None);
    }

    #[test]
    fn parents_stop_at_anchors() {
        let key = blob_data(&d(HEX));
        let parents: Vec<&str> = removable_parents(&key).collect();
        assert_eq!(
            parents,
            [
                format!("{SHA256_BLOBS}a3/{HEX}/").as_str(),
                format!("{SHA256_BLOBS}a3/").as_str()
            ]
        );
        let key = layer_link("team/app", &d(HEX));
        let parents: Vec<&str> = removable_parents(&key).collect();
        assert_eq!(
            parents.last(),
            Some(&"docker/registry/v2/repositories/team/")
        );
        assert_eq!(parents.len(), 5);
        assert!(is_anchor_dir("docker/"));
        assert!(is_anchor_dir(REPOSITORIES));
        assert!(!is_anchor_dir("docker/registry/v2/repositories/team/"));
    }
}
