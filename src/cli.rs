//! The command line: flags and their help. Kept apart from `main` so the help text reads as one page.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::{Resettable, TypedValueParser};
use clap::error::ErrorKind;
use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use regsweep::restart::redis::RedisUrl;
use regsweep::restart::webhook::WebhookUrl;
use regsweep::run_id::RunId;
use regsweep::select::Target;
use regsweep::shard::Shard;
use regsweep::state::StateLocation;

#[derive(Debug, Parser)]
#[command(
    name = "regsweep",
    version,
    about = "Reclaim the storage of a Docker Distribution registry: a fast, safe, complete garbage collector",
    long_about = "Reclaim the storage of a Docker Distribution registry (2.x and 3.x layout).\n\n\
        regsweep marks everything live straight on the storage and sweeps the rest: unreferenced \
        blobs, untagged manifests (with --delete-untagged), dangling links, broken tags, empty \
        repositories, stale uploads and empty directories."
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    /// Print only errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Collect garbage: mark what is live, then delete everything else.
    #[command(
        after_help = "Exit status: 0 when everything went well; 1 when the run was refused (nothing \
            deleted) or some deletions, the Redis cache flush, the restart command or the restart \
            URL failed (see the summary); 2 for bad usage."
    )]
    Gc(Box<GcArgs>),
    /// Put back every object a `gc --quarantine` run moved (default: the latest run).
    #[command(
        after_help = "Blobs go back first, then revision and layer links, then tags, so that an \
            interrupted restore never leaves a link to a missing blob. An original key that holds \
            something again keeps it: the quarantined copy is dropped if it is the same object, kept \
            and reported (exit 1) otherwise.\n\nExit status: 0 when everything went back; 1 on any \
            error or conflict (see the summary); 2 for bad usage."
    )]
    Restore(RestoreArgs),
    /// Delete for good the quarantine runs that finished longer ago than --older-than.
    #[command(
        after_help = "A run's age is its record's finish time, or, for a run that never finished, \
            the modification time of its newest object.\n\nExit status: 0 when everything went \
            well; 1 on any error; 2 for bad usage."
    )]
    Purge(PurgeArgs),
    /// Remove repositories, tags or manifests straight from the storage, then collect what became
    /// garbage.
    #[command(
        after_help = "TARGET is REPOSITORY (the whole repository), REPOSITORY:TAG, or \
            REPOSITORY@sha256:<hex> (the manifest; refused while tags point at it unless \
            --with-tags). A manifest a tag that stays points at, or that a kept multi-arch index \
            lists, is never deleted with a tag; named by digest, it refuses the run. Deleting the \
            last tag of a repository deletes the repository. The same run then sweeps what became \
            garbage, with the grace period, run lock and re-mark of `gc`. A target that does not \
            exist refuses the whole run: nothing is deleted.\n\nExit status: 0 when everything \
            went well; 1 when the run was refused or something failed (see the summary); 2 for \
            bad usage."
    )]
    Delete(Box<DeleteArgs>),
    /// Remove tags by retention rules, then collect what became garbage.
    #[command(
        after_help = "Rules come from --policy FILE (JSON: {\"rules\": [{\"repositories\": \
            \"team/**\", \"keep_last\": 10, \"keep_tags\": \"^v\\\\d+\", \
            \"delete_older_than\": \"90d\", \"delete_untagged\": true}]}) or from the flags \
            --repositories, --keep-last, --keep-tags, --older-than and -m. The first rule whose \
            glob matches a repository decides for it. A tag stays when any keep rule keeps it; \
            otherwise it goes when it is older than delete_older_than, or, without \
            delete_older_than, whenever the rule has a keep rule. Push time is the modification \
            time of the tag's current/link. --dry-run prints every decision with its rule.\n\n\
            Exit status: 0 when everything went well; 1 when the run was refused or something \
            failed (see the summary); 2 for bad usage."
    )]
    Prune(Box<PruneArgs>),
    /// Report what the storage holds, what is live, what a collection would reclaim and why, per
    /// repository, and what it costs a month. One scan; nothing is deleted or locked.
    #[command(
        after_help = "Every number is defined in the README (\"Cost report\"). Reclaimable bytes are \
            given for `gc` and for `gc -m` from the same scan, with the same --min-age and \
            --upload-max-age as gc.\n\nExit status: 0 when the report was written; 1 when the scan \
            failed or the storage holds something a collection would refuse; 2 for bad usage."
    )]
    Report(ReportArgs),
    /// Mark what is live and save it as a mark state for `regsweep sweep`; deletes nothing.
    #[command(
        after_help = "The state holds every live blob and, per repository, its live manifests and \
            layer links, with the mark's start, grace cut-offs and options, in a versioned format \
            with a SHA-256 checksum (README: \"Scheduled and sharded runs\"). --state is a local \
            file, or registry:NAME for the object _regsweep/state/NAME in the registry's own \
            storage, where every shard of a sweep can read it.\n\nExit status: 0 when the state \
            was written; 1 when the mark refused (nothing written) or the state could not be \
            written; 2 for bad usage."
    )]
    Mark(Box<MarkArgs>),
    /// Sweep from a mark state: every blob and repository, or those of one shard (--shard I/N).
    #[command(
        after_help = "Shard I of N sweeps the blobs whose digest's first byte is I, I+N, I+2N, … \
            and the links, tags and uploads of the repositories a stable hash of the name gives \
            to I; every shard lists every repository, to keep what was pushed since the mark. A \
            repository written since the mark is left as it is (the next run collects it). The \
            options (-m, --min-age, --upload-max-age) must be those of the mark; a state made \
            from another storage or more than --max-state-age ago is refused. Interrupted, a sweep \
            started again with the same state finishes the job.\n\nExit status: as gc."
    )]
    Sweep(Box<SweepArgs>),
}

#[derive(Debug, Args)]
pub struct MarkArgs {
    #[command(flatten)]
    pub location: StorageArgs,

    /// Where to write the state: a file, or registry:NAME (in the registry's storage).
    #[arg(long, value_name = "PATH|registry:NAME", value_parser = parse_state)]
    pub state: StateLocation,

    /// The options a sweep of this state must be given too.
    #[command(flatten)]
    pub collect: CollectArgs,

    /// Storage requests in flight at once [default: 32 on object stores; 4 per CPU, from 4 to 64,
    /// on a filesystem].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: Option<u16>,

    /// Output: a text summary, or one JSON object on stdout (logs stay on stderr).
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,

    /// Write the summary's counters to FILE as Prometheus gauges (as gc does), also when the mark
    /// is refused; while it lasts, its progress.
    #[arg(long, value_name = "FILE")]
    pub metrics_file: Option<PathBuf>,

    /// How often the mark reports its progress: a log line (a progress bar on a terminal).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub progress_interval: Duration,
}

#[derive(Debug, Args)]
pub struct SweepArgs {
    #[command(flatten)]
    pub gc: GcArgs,

    /// The state `regsweep mark` wrote: a file, or registry:NAME.
    #[arg(long, value_name = "PATH|registry:NAME", value_parser = parse_state)]
    pub state: StateLocation,

    /// Sweep only shard I of N (0 <= I < N <= 256). env:VARIABLE/N reads I from the environment:
    /// env:JOB_COMPLETION_INDEX/16 in a Kubernetes Indexed Job, env:AWS_BATCH_JOB_ARRAY_INDEX/16
    /// in an AWS Batch array job.
    #[arg(long, value_name = "I/N", default_value = "0/1", value_parser = parse_shard)]
    pub shard: Shard,

    /// Refuse a state whose mark started longer ago than this.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_duration)]
    pub max_state_age: Duration,
}

#[derive(Debug, Args)]
// CONFIG may stand beside --storage here: with --storage, clap takes the first target for CONFIG
// (positionals fill in order), and `main` moves it back among the targets.
#[command(mut_arg("config", |config| config.conflicts_with(Resettable::Reset).index(1)))]
pub struct DeleteArgs {
    #[command(flatten)]
    pub gc: GcArgs,

    /// What to remove: REPOSITORY, REPOSITORY:TAG or REPOSITORY@sha256:<hex>.
    // At least one: clap cannot require it after the optional CONFIG, so `main` does.
    #[arg(value_name = "TARGET", index = 2, value_parser = parse_target)]
    pub targets: Vec<Target>,

    /// REPOSITORY@DIGEST also removes the tags that point at the manifest (as the registry's
    /// DELETE does); without it, such a target is refused naming the tags.
    #[arg(long)]
    pub with_tags: bool,
}

#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("rules")
        .required(true)
        .multiple(true)
        .args(["policy", "keep_last", "keep_tags", "older_than", "delete_untagged"])
))]
pub struct PruneArgs {
    #[command(flatten)]
    pub gc: GcArgs,

    /// The retention rules, as JSON (see README: Prune).
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with_all = ["repositories", "keep_last", "keep_tags", "older_than"]
    )]
    pub policy: Option<PathBuf>,

    /// Only the repositories this glob matches (`*` within a path component, `**` across them);
    /// default: every repository.
    #[arg(long, value_name = "GLOB")]
    pub repositories: Option<String>,

    /// Keep the N most recently pushed tags of each repository (ties at the N-th are all kept).
    #[arg(long, value_name = "N")]
    pub keep_last: Option<usize>,

    /// Keep the tags this regular expression matches (anywhere in the tag unless anchored).
    #[arg(long, value_name = "REGEX")]
    pub keep_tags: Option<String>,

    /// Delete the tags no keep rule keeps that were pushed longer ago than this (e.g. 90d).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub older_than: Option<Duration>,
}

/// Where the storage is, for `restore` and `purge`.
#[derive(Debug, Args)]
pub struct StorageArgs {
    /// The registry's own config.yml (REGISTRY_* environment overrides apply, as in the registry).
    #[arg(
        value_name = "CONFIG",
        required_unless_present = "storage",
        conflicts_with = "storage"
    )]
    pub config: Option<PathBuf>,

    /// The storage root instead of a config file: file:///var/lib/registry (or a plain path).
    #[arg(long, value_name = "URL")]
    pub storage: Option<String>,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub location: StorageArgs,

    /// The run to restore (as printed by `gc --quarantine`); default: the latest.
    #[arg(long, value_name = "ID", value_parser = parse_run_id)]
    pub run: Option<RunId>,

    /// Change nothing: print what would be restored.
    #[arg(short = 'd', long)]
    pub dry_run: bool,

    /// Storage requests in flight at once [default: 32 on object stores; 4 per CPU, from 4 to 64,
    /// on a filesystem].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: Option<u16>,

    /// Output: a text summary, or one JSON object on stdout (logs stay on stderr).
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,

    /// Write the summary's counters to FILE as Prometheus gauges for node_exporter's textfile
    /// collector, replaced atomically, also when the run is refused.
    #[arg(long, value_name = "FILE")]
    pub metrics_file: Option<PathBuf>,

    #[command(flatten)]
    pub lock: LockArgs,
}

/// The run lock, taken by every command that changes the storage (not by dry runs).
#[derive(Debug, Args)]
pub struct LockArgs {
    /// Lease of the run lock (`_regsweep/lock` in the storage): renewed every quarter of it; a run
    /// that died is taken over by the next one once its lease ran out.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
    pub lock_lease: Duration,

    /// Take the run lock over even if another run's lease has not run out (when it certainly died).
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct PurgeArgs {
    #[command(flatten)]
    pub location: StorageArgs,

    /// Delete the runs that finished longer ago than this (e.g. 7d; 0s: every finished run).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub older_than: Duration,

    /// Only this run (if it is old enough).
    #[arg(long, value_name = "ID", value_parser = parse_run_id)]
    pub run: Option<RunId>,

    /// Change nothing: print what would be deleted.
    #[arg(short = 'd', long)]
    pub dry_run: bool,

    /// Storage requests in flight at once [default: 32 on object stores; 4 per CPU, from 4 to 64,
    /// on a filesystem].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: Option<u16>,

    /// Output: a text summary, or one JSON object on stdout (logs stay on stderr).
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,

    /// Write the summary's counters to FILE as Prometheus gauges for node_exporter's textfile
    /// collector, replaced atomically, also when the run is refused.
    #[arg(long, value_name = "FILE")]
    pub metrics_file: Option<PathBuf>,

    #[command(flatten)]
    pub lock: LockArgs,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub location: StorageArgs,

    /// As in gc: nothing modified more recently counts as reclaimable.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    pub min_age: Duration,

    /// As in gc: uploads with no activity for this long count as reclaimable.
    #[arg(long, value_name = "DURATION", default_value = "168h", value_parser = parse_duration)]
    pub upload_max_age: Duration,

    /// Storage requests in flight at once [default: 32 on object stores; 4 per CPU, from 4 to 64,
    /// on a filesystem].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: Option<u16>,

    /// Output: a text table, one JSON object, CSV (one row per repository) or one self-contained
    /// HTML page with charts.
    #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
    pub format: ReportFormat,

    /// Write the report to FILE instead of stdout.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Storage price in USD per GiB-month (default: S3 Standard, first 50 TB, US East).
    #[arg(long, value_name = "USD", default_value_t = regsweep::cost::S3_STANDARD_PER_GIB_MONTH, value_parser = parse_price)]
    pub price_per_gib_month: f64,

    /// Price in USD per 1,000 LIST requests (and writes) (default: S3 Standard).
    #[arg(long, value_name = "USD", default_value_t = regsweep::cost::S3_LIST_PER_1000, value_parser = parse_price)]
    pub price_per_1000_list: f64,

    /// Price in USD per 1,000 GET and HEAD requests (default: S3 Standard).
    #[arg(long, value_name = "USD", default_value_t = regsweep::cost::S3_GET_PER_1000, value_parser = parse_price)]
    pub price_per_1000_get: f64,

    /// How many of the largest blobs and repositories to list.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub top: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    Text,
    Json,
    Csv,
    Html,
}

#[derive(Debug, Args)]
pub struct GcArgs {
    /// The registry's own config.yml (REGISTRY_* environment overrides apply, as in the registry).
    #[arg(
        value_name = "CONFIG",
        required_unless_present = "storage",
        conflicts_with = "storage"
    )]
    pub config: Option<PathBuf>,

    /// The storage root instead of a config file: file:///var/lib/registry (or a plain path).
    #[arg(long, value_name = "URL")]
    pub storage: Option<String>,

    /// Do everything but delete: print the exact plan and what it would reclaim.
    #[arg(short = 'd', long)]
    pub dry_run: bool,

    #[command(flatten)]
    pub collect: CollectArgs,

    /// Storage requests in flight at once [default: 32 on object stores; 4 per CPU, from 4 to 64,
    /// on a filesystem].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: Option<u16>,

    /// Output: a text summary, or one JSON object on stdout (logs stay on stderr).
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,

    /// Write the plan to FILE as JSON lines: {"phase", "kind", "key", "bytes"}, one per object.
    #[arg(long, value_name = "FILE")]
    pub plan_file: Option<PathBuf>,

    /// Write the summary's counters to FILE as Prometheus gauges for node_exporter's textfile
    /// collector, replaced atomically, also when the run is refused.
    #[arg(long, value_name = "FILE")]
    pub metrics_file: Option<PathBuf>,

    /// How often a long run reports its progress: a log line (on a terminal, a progress bar
    /// instead) and, with --metrics-file, progress gauges until the summary replaces them.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub progress_interval: Duration,

    /// Run through `sh -c` before anything is read (not in dry runs): e.g. switch the registry to
    /// read-only, for a collection with no window at all. Its failure stops the run.
    #[arg(long, value_name = "CMD")]
    pub pre_command: Option<String>,

    /// Run through `sh -c` after the sweep (not in dry runs), whatever happened once the
    /// pre-command was started: e.g. switch the registry back to read-write.
    #[arg(long, value_name = "CMD")]
    pub post_command: Option<String>,

    #[command(flatten)]
    pub lock: LockArgs,

    /// Run through `sh -c` after a sweep that deleted anything (to restart the registry, whose
    /// blob cache still believes deleted layers exist); its failure makes the exit status non-zero.
    #[arg(long, value_name = "CMD")]
    pub restart_command: Option<String>,

    /// Move what would be deleted under _regsweep/quarantine/<run>/ in the same storage instead
    /// of deleting it (undo with `regsweep restore`, delete later with `regsweep purge`).
    #[arg(long)]
    pub quarantine: bool,
    /// Before the restart command: delete the registry's Redis blob-descriptor cache entries for
    /// what was deleted (storage.cache.blobdescriptor: redis), so that no restart is needed.
    /// redis://[user:password@]host:port[/db]; its failure makes the exit status non-zero.
    #[arg(long, value_name = "URL", value_parser = SecretUrl::<RedisUrl>(redis_url))]
    pub redis_url: Option<RedisUrl>,

    /// After the restart command: POST the JSON summary to this http(s) URL after a sweep that
    /// deleted anything (userinfo becomes Basic authentication); an answer other than 2xx or no
    /// answer within 30 s makes the exit status non-zero.
    #[arg(long, value_name = "URL", value_parser = SecretUrl::<WebhookUrl>(webhook_url))]
    pub restart_url: Option<WebhookUrl>,
}

/// What is collected: the options of `gc` that `mark` records and `sweep` must repeat.
#[derive(Debug, Args)]
pub struct CollectArgs {
    /// Also collect manifests that no tag reaches, directly, through an index, or as a referrer.
    #[arg(short = 'm', long)]
    pub delete_untagged: bool,

    /// Never delete an object modified more recently than this (protects pushes in progress).
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    pub min_age: Duration,

    /// Delete uploads with no activity for this long (the registry's upload purging default).
    #[arg(long, value_name = "DURATION", default_value = "168h", value_parser = parse_duration)]
    pub upload_max_age: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// A `delete` target: `REPOSITORY`, `REPOSITORY:TAG` or `REPOSITORY@DIGEST`.
fn parse_target(text: &str) -> Result<Target, String> {
    Target::parse(text).map_err(|e| e.to_string())
}

fn parse_state(text: &str) -> Result<StateLocation, String> {
    StateLocation::parse(text)
}

fn parse_shard(text: &str) -> Result<Shard, String> {
    Shard::parse_with(text, |name| std::env::var(name).ok()).map_err(|e| e.to_string())
}

/// A run ID as `gc --quarantine` printed it.
fn parse_run_id(text: &str) -> Result<RunId, String> {
    RunId::parse(text).ok_or_else(|| "not a run ID (like 20261129T031522Z-3f9a1c)".to_owned())
}

fn redis_url(text: &str) -> Result<RedisUrl, String> {
    RedisUrl::parse(text).map_err(|e| e.to_string())
}

fn webhook_url(text: &str) -> Result<WebhookUrl, String> {
    WebhookUrl::parse(text).map_err(|e| e.to_string())
}

/// Parses a URL that may hold credentials: unlike clap's own parsers, its errors never repeat the
/// value.
#[derive(Clone)]
struct SecretUrl<T>(fn(&str) -> Result<T, String>);

impl<T: Clone + Send + Sync + 'static> TypedValueParser for SecretUrl<T> {
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<T, clap::Error> {
        let name = arg.map_or_else(|| "URL".to_owned(), ToString::to_string);
        let invalid = |reason: String| {
            clap::Error::raw(
                ErrorKind::ValueValidation,
                format!("invalid value for '{name}': {reason}\n"),
            )
            .with_cmd(cmd)
        };
        let text = value
            .to_str()
            .ok_or_else(|| invalid("not UTF-8".to_owned()))?;
        (self.0)(text).map_err(invalid)
    }
}

/// A price: a finite number, zero or more.
fn parse_price(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(price) if price.is_finite() && price >= 0.0 => Ok(price),
        _ => Err("not a price in USD (examples: 0.023, 0.0125, 0)".to_owned()),
    }
}

/// Durations as operators write them: `90s`, `1h`, `168h`, `1h30m`, `7d`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (examples: 0s, 30m, 1h, 168h, 7d)"))
}
