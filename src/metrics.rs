//! Metrics: a run's summary as a Prometheus textfile-collector file (`--metrics-file`), for runs
//! from a scheduler that node_exporter's textfile collector exports.
//!
//! One gauge per numeric field of the command's JSON summary (`gc`, `delete` and `prune`: [`Summary`];
//! `restore`: [`RestoreSummary`]; `purge`: [`PurgeSummary`]), named `regsweep_<field>` (the names
//! follow the JSON contract: fields are added, never renamed), plus `regsweep_warnings` (how many),
//! `regsweep_requests{kind}`, `regsweep_last_run_success` and
//! `regsweep_last_run_timestamp_seconds`. A run refused before its summary writes only
//! `regsweep_errors`, `regsweep_last_run_success` and `regsweep_last_run_timestamp_seconds`. Every
//! sample carries the labels `command` and `dry_run`. They are gauges, not counters: each run
//! replaces the file with its own values.
//!
//! The file is written whole to a temporary file in the same directory (a name node_exporter
//! ignores: it does not end in `.prom`) and renamed over the target, so that the collector never
//! reads half a file.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::time::SystemTime;

use serde::Serialize;

use crate::plan::Phase;
use crate::progress::Snapshot;
use crate::quarantine::{PurgeSummary, RestoreSummary};
use crate::report::{MarkSummary, Summary};
use crate::storage::requests::Requests;

/// A summary that can be exported: its numeric fields (with their help text, in the order they
/// are written) and what every summary has.
pub trait Exported: Serialize {
    const FIELDS: &'static [(&'static str, &'static str)];
    fn dry_run(&self) -> bool;
    fn errors(&self) -> u64;
    fn warnings(&self) -> usize;
    fn requests(&self) -> &Requests;
    /// Records an error of the run (the metrics file could not be written).
    fn add_error(&mut self, message: String);
}

/// The accessors every summary implements alike; `dry_run` is the summary's own field unless
/// given (a summary of a command that never deletes).
macro_rules! exported {
    ($summary:ty, $fields:expr) => {
        exported!($summary, $fields, |summary: &$summary| summary.dry_run);
    };
    ($summary:ty, $fields:expr, $dry_run:expr) => {
        impl Exported for $summary {
            const FIELDS: &'static [(&'static str, &'static str)] = $fields;
            fn dry_run(&self) -> bool {
                ($dry_run)(self)
            }
            fn errors(&self) -> u64 {
                self.errors
            }
            fn warnings(&self) -> usize {
                self.warnings.len()
            }
            fn requests(&self) -> &Requests {
                &self.requests
            }
            fn add_error(&mut self, message: String) {
                self.errors += 1;
                self.error_messages.push(message);
            }
        }
    };
}

exported!(Summary, &SUMMARY_FIELDS);
exported!(
    RestoreSummary,
    &[
        (
            "journal_entries",
            "Objects the run's journal says were moved."
        ),
        ("objects_restored", "Objects moved back."),
        ("bytes_restored", "Bytes moved back."),
        (
            "objects_skipped",
            "Objects already back (the quarantined copy dropped)."
        ),
        ("bytes_skipped", "Bytes of the objects already back."),
        (
            "conflicts",
            "Original keys holding another object (both kept)."
        ),
        ERRORS,
        DURATION,
    ]
);
exported!(
    PurgeSummary,
    &[
        ("runs_purged", "Quarantine runs deleted for good."),
        ("objects_deleted", "Quarantined objects deleted."),
        ("bytes_deleted", "Bytes of the quarantined objects deleted."),
        ERRORS,
        DURATION,
    ]
);

// `regsweep mark` deletes nothing: its samples are labelled `dry_run="true"`.
exported!(
    MarkSummary,
    &[
        (
            "started_ms",
            "When the mark started, in milliseconds since the epoch.",
        ),
        (
            "cutoff_ms",
            "The mark's cut-off (--min-age before its start), in milliseconds since the epoch.",
        ),
        (
            "upload_cutoff_ms",
            "The mark's upload cut-off (--upload-max-age before its start), in milliseconds.",
        ),
        ("min_age_seconds", "The mark's --min-age."),
        ("upload_max_age_seconds", "The mark's --upload-max-age."),
        ("blobs", "Blobs the mark listed."),
        ("bytes", "Bytes of the blobs the mark listed."),
        ("live_blobs", "Blobs live at the mark."),
        ("repositories", "Repositories the mark listed."),
        ("state_bytes", "Size of the mark state written."),
        (
            "deletions_planned",
            "What a sweep of every shard would delete at the mark.",
        ),
        (
            "bytes_reclaimable",
            "Content bytes a sweep of every shard would free at the mark.",
        ),
        ERRORS,
        DURATION,
    ],
    |_: &MarkSummary| true
);

const ERRORS: (&str, &str) = ("errors", "Errors (0 when the run went well).");
const DURATION: (&str, &str) = ("duration_seconds", "Duration of the run.");

/// The numeric fields of [`Summary`].
const SUMMARY_FIELDS: [(&str, &str); 21] = [
    ("repositories", "Repositories found."),
    ("tags", "Tags found."),
    (
        "manifests",
        "Revision links found (manifests in repositories).",
    ),
    ("blobs_total", "Blobs found."),
    ("bytes_total", "Bytes of the blobs found."),
    ("blobs_deleted", "Blobs deleted (dry run: that would be)."),
    (
        "bytes_deleted",
        "Bytes of blob content deleted (dry run: that would be).",
    ),
    ("manifests_deleted", "Revision links deleted."),
    (
        "links_deleted",
        "Layer links, tag index entries, signature links and tag links deleted.",
    ),
    ("tags_deleted", "Tags deleted whose manifest was missing."),
    ("tags_removed", "Tags removed on request (delete, prune)."),
    ("repositories_deleted", "Repositories deleted whole."),
    ("uploads_deleted", "Stale uploads deleted."),
    ("upload_bytes_deleted", "Bytes of stale uploads deleted."),
    ("multipart_uploads_aborted", "S3 multipart uploads aborted."),
    ("directories_deleted", "Empty directories deleted."),
    (
        "directories_pruned",
        "Directories the sweep emptied and removed.",
    ),
    (
        "unknown_objects",
        "Unrecognised objects found (never deleted).",
    ),
    (
        "deletions_spared",
        "Planned deletions dropped by the re-mark before the sweep.",
    ),
    ERRORS,
    DURATION,
];

/// Writes the families of one exposition, each with its HELP and TYPE, every sample labelled.
struct Exposition {
    labels: String,
    text: String,
}

impl Exposition {
    fn new(command: &str, dry_run: bool) -> Exposition {
        Exposition {
            labels: format!("command=\"{}\",dry_run=\"{dry_run}\"", escape(command)),
            text: String::new(),
        }
    }

    /// One gauge; each sample is `(extra labels, value)`.
    fn gauge(&mut self, name: &str, help: &str, samples: &[(String, String)]) {
        let _ = writeln!(self.text, "# HELP regsweep_{name} {help}");
        let _ = writeln!(self.text, "# TYPE regsweep_{name} gauge");
        for (extra, value) in samples {
            let labels = &self.labels;
            let _ = writeln!(self.text, "regsweep_{name}{{{labels}{extra}}} {value}");
        }
    }

    fn single(&mut self, name: &str, help: &str, value: String) {
        self.gauge(name, help, &[(String::new(), value)]);
    }

    /// `regsweep_last_run_success` and `regsweep_last_run_timestamp_seconds`, last.
    fn finish(mut self, errors: u64, now: SystemTime) -> String {
        let success = u8::from(errors == 0).to_string();
        self.single(
            "last_run_success",
            "1 when the last run had no error, else 0.",
            success,
        );
        self.single(
            "last_run_timestamp_seconds",
            "When the last run ended, in seconds since the epoch.",
            epoch_seconds(now),
        );
        self.text
    }
}

/// The textfile-collector exposition of `summary`, for a run of `command` that ended at `now`.
pub fn render<T: Exported>(summary: &T, command: &str, now: SystemTime) -> String {
    let json = serde_json::to_value(summary).expect("a summary serialises");
    let mut out = Exposition::new(command, summary.dry_run());
    for (field, help) in T::FIELDS {
        let value = json
            .get(field)
            .map_or_else(|| "0".to_owned(), |v| v.to_string());
        out.single(field, help, value);
    }
    out.single(
        "warnings",
        "Warnings (oddities kept, that did not stop the run).",
        summary.warnings().to_string(),
    );
    let r = summary.requests();
    let requests: Vec<(String, String)> = [
        ("list", r.list),
        ("get", r.get),
        ("head", r.head),
        ("delete", r.delete),
        ("other", r.other),
    ]
    .iter()
    .map(|(kind, n)| (format!(",kind=\"{kind}\""), n.to_string()))
    .collect();
    out.gauge(
        "requests",
        "Storage requests sent, by kind (filesystem: directory reads, file reads, unlinks).",
        &requests,
    );
    out.finish(summary.errors(), now)
}

/// The exposition of a run of `command` refused before it had a summary (bad configuration,
/// storage unreachable, corrupt input, a missing `delete` target): one error.
pub fn render_refused(command: &str, dry_run: bool, now: SystemTime) -> String {
    let mut out = Exposition::new(command, dry_run);
    out.single(ERRORS.0, ERRORS.1, "1".to_owned());
    out.finish(1, now)
}

/// The exposition of a run still in progress (`--metrics-file` during the run): how far it is.
/// The summary's exposition replaces it when the run ends.
pub fn render_progress(
    progress: &Snapshot,
    command: &str,
    dry_run: bool,
    now: SystemTime,
) -> String {
    let mut out = Exposition::new(command, dry_run);
    let phase = progress.phase.map_or("read", Phase::as_str);
    out.gauge(
        "progress_phase",
        "1 for what the run in progress does now: read (scan, mark, plan), or a sweep phase.",
        &[(format!(",phase=\"{phase}\""), "1".to_owned())],
    );
    for (name, help, value) in [
        (
            "progress_deletions_planned",
            "Deletions the sweep in progress plans.",
            progress.planned,
        ),
        (
            "progress_deletions_settled",
            "Deletions of the sweep in progress that ended, done or failed.",
            progress.settled,
        ),
        (
            "progress_deletions_failed",
            "Deletions of the sweep in progress that failed.",
            progress.failed,
        ),
        (
            "progress_bytes_freed",
            "Content bytes the sweep in progress freed so far.",
            progress.bytes_freed,
        ),
    ] {
        out.single(name, help, value.to_string());
    }
    let r = &progress.requests;
    out.gauge(
        "progress_requests",
        "Storage requests the run in progress sent so far, by kind.",
        &[
            ("list", r.list),
            ("get", r.get),
            ("head", r.head),
            ("delete", r.delete),
        ]
        .map(|(kind, n)| (format!(",kind=\"{kind}\""), n.to_string())),
    );
    out.single(
        "progress_timestamp_seconds",
        "When this progress was written, in seconds since the epoch.",
        epoch_seconds(now),
    );
    out.text
}

/// A label value as the exposition format quotes it.
/// `time` as a gauge value: seconds since the epoch, to the millisecond.
fn epoch_seconds(time: SystemTime) -> String {
    let seconds = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    format!("{seconds:.3}")
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Writes `content` to `path` atomically: a temporary file in the same directory, synced, renamed
/// over `path`. On failure the temporary file is removed and `path` is left as it was. (Also how
/// a mark state is written to a local file.)
pub fn write_atomically(path: &Path, content: impl AsRef<[u8]>) -> std::io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other(format!("{} is no file name", path.display())))?;
    let mut temporary_name = std::ffi::OsString::from(".");
    temporary_name.push(name);
    temporary_name.push(format!(".{}.tmp", std::process::id()));
    let temporary = path.with_file_name(temporary_name);
    let written = (|| {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(content.as_ref())?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::time::Duration;

    use super::*;

    /// Parses the exposition format strictly enough to catch what node_exporter rejects: every
    /// sample of a family follows its HELP and TYPE, names and labels are well formed, values are
    /// numbers, no family or sample appears twice. Returns `name{labels}` → value.
    fn parse(text: &str) -> BTreeMap<String, f64> {
        let name_ok = |n: &str| {
            !n.is_empty()
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && !n.starts_with(|c: char| c.is_ascii_digit())
        };
        let mut samples = BTreeMap::new();
        let mut families = std::collections::HashSet::new();
        let (mut help, mut typed): (Option<String>, Option<String>) = (None, None);
        assert!(text.ends_with('\n'), "the last line must end");
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, doc) = rest.split_once(' ').expect("HELP name text");
                assert!(name_ok(name) && !doc.is_empty(), "{line}");
                assert!(families.insert(name.to_owned()), "family {name} twice");
                help = Some(name.to_owned());
                typed = None;
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                assert_eq!(Some(name), help.as_deref(), "TYPE without its HELP: {line}");
                assert_eq!(kind, "gauge", "{line}");
                typed = Some(name.to_owned());
            } else {
                let (series, value) = line.rsplit_once(' ').expect("sample value");
                let (name, labels) = series.split_once('{').expect("labels");
                assert_eq!(
                    Some(name),
                    typed.as_deref(),
                    "sample outside its family: {line}"
                );
                let labels = labels.strip_suffix('}').expect("closing brace");
                for pair in labels.split(',') {
                    let (key, quoted) = pair.split_once('=').expect("label=value");
                    assert!(name_ok(key), "{line}");
                    assert!(
                        quoted.len() >= 2 && quoted.starts_with('"') && quoted.ends_with('"'),
                        "{line}"
                    );
                }
                let value: f64 = value.parse().unwrap_or_else(|e| panic!("{line}: {e}"));
                assert!(
                    samples.insert(series.to_owned(), value).is_none(),
                    "{line} twice"
                );
            }
        }
        samples
    }

    /// Every numeric field of `T`'s JSON is exported (and nothing else is listed).
    fn exports_every_number<T: Exported + Default>() {
        let json = serde_json::to_value(T::default()).unwrap();
        let numeric: BTreeSet<&str> = json
            .as_object()
            .unwrap()
            .iter()
            .filter(|(_, v)| v.is_number())
            .map(|(k, _)| k.as_str())
            .collect();
        let listed: BTreeSet<&str> = T::FIELDS.iter().map(|(f, _)| *f).collect();
        assert_eq!(numeric, listed);
    }

    #[test]
    fn every_numeric_summary_field_is_a_gauge() {
        exports_every_number::<Summary>();
        exports_every_number::<RestoreSummary>();
        exports_every_number::<MarkSummary>();
        exports_every_number::<PurgeSummary>();
        let restore = RestoreSummary {
            objects_restored: 3,
            ..RestoreSummary::default()
        };
        let samples = parse(&render(&restore, "restore", SystemTime::UNIX_EPOCH));
        let labels = r#"command="restore",dry_run="false""#;
        assert_eq!(
            samples[&format!("regsweep_objects_restored{{{labels}}}")],
            3.0
        );
    }

    #[test]
    fn a_refused_run_says_so() {
        let samples = parse(&render_refused("delete", true, SystemTime::UNIX_EPOCH));
        let labels = r#"command="delete",dry_run="true""#;
        assert_eq!(samples[&format!("regsweep_errors{{{labels}}}")], 1.0);
        assert_eq!(
            samples[&format!("regsweep_last_run_success{{{labels}}}")],
            0.0
        );
        assert_eq!(samples.len(), 3);
    }

    #[test]
    fn renders_the_summary_in_the_exposition_format() {
        let mut summary = Summary {
            blobs_deleted: 12,
            bytes_deleted: 3456,
            tags_removed: 2,
            duration_seconds: 1.25,
            ..Summary::default()
        };
        summary.requests.get = 7;
        summary.add_error("one \"quoted\" failure".into());
        summary.warnings.push("odd".into());
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_000_000_500);
        let samples = parse(&render(&summary, "prune", at));
        let labels = r#"command="prune",dry_run="false""#;
        let get = |name: &str| samples[&format!("regsweep_{name}{{{labels}}}")];
        assert_eq!(get("blobs_deleted"), 12.0);
        assert_eq!(get("bytes_deleted"), 3456.0);
        assert_eq!(get("tags_removed"), 2.0);
        assert_eq!(get("errors"), 1.0);
        assert_eq!(get("warnings"), 1.0);
        assert_eq!(get("last_run_success"), 0.0);
        assert_eq!(get("duration_seconds"), 1.25);
        assert_eq!(get("last_run_timestamp_seconds"), 1_764_000_000.5);
        assert_eq!(
            samples[&format!("regsweep_requests{{{labels},kind=\"get\"}}")],
            7.0
        );
        assert_eq!(samples.len(), SUMMARY_FIELDS.len() + 3 + 5);
    }

    #[test]
    fn progress_is_in_the_exposition_format() {
        let progress = crate::progress::Progress::default();
        let requests = Requests {
            list: 7,
            ..Requests::default()
        };
        let reading = parse(&render_progress(
            &progress.snapshot(requests),
            "sweep",
            false,
            SystemTime::UNIX_EPOCH,
        ));
        let labels = r#"command="sweep",dry_run="false""#;
        assert_eq!(
            reading[&format!("regsweep_progress_phase{{{labels},phase=\"read\"}}")],
            1.0
        );
        assert_eq!(
            reading[&format!("regsweep_progress_requests{{{labels},kind=\"list\"}}")],
            7.0
        );
        progress.begin(10);
        progress.enter(Phase::Blobs);
        progress.advance(4, 1, 4096);
        let sweeping = parse(&render_progress(
            &progress.snapshot(requests),
            "sweep",
            false,
            SystemTime::UNIX_EPOCH,
        ));
        assert_eq!(
            sweeping[&format!("regsweep_progress_phase{{{labels},phase=\"blobs\"}}")],
            1.0
        );
        for (name, value) in [
            ("deletions_planned", 10.0),
            ("deletions_settled", 4.0),
            ("deletions_failed", 1.0),
            ("bytes_freed", 4096.0),
        ] {
            assert_eq!(
                sweeping[&format!("regsweep_progress_{name}{{{labels}}}")],
                value
            );
        }
    }

    #[test]
    fn writes_atomically_and_replaces_the_previous_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("regsweep.prom");
        write_atomically(&path, "first\n").unwrap();
        write_atomically(&path, "second\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "second\n");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["regsweep.prom"], "no temporary file left");
        let missing = dir.path().join("no/such/dir/regsweep.prom");
        assert!(write_atomically(&missing, "x").is_err());
    }
}
