//! The `regsweep` command: parses flags, sets up logging, and hands over to the library.

mod cli;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser};
use tracing_subscriber::EnvFilter;

use cli::{
    Cli, Command, DeleteArgs, GcArgs, LockArgs, LogFormat, MarkArgs, OutputFormat, PruneArgs,
    PurgeArgs, ReportArgs, ReportFormat, RestoreArgs, StorageArgs, SweepArgs,
};
use regsweep::config::{self, StorageConfig};
use regsweep::cost::{self, Prices, ReportOptions};
use regsweep::gc::{Collection, GcOptions};
use regsweep::layout;
use regsweep::lock::{LockOptions, RunLock};
use regsweep::metrics::{self, Exported};
use regsweep::progress::{Progress, Reporter, Reporting};
use regsweep::quarantine::{self, PurgeOptions, PurgeSummary, RestoreOptions, RestoreSummary};
use regsweep::report::{MarkSummary, Summary, error_chain};
use regsweep::restart::{CommandOutcome, Forget, run_command};
use regsweep::run_id::RunId;
use regsweep::scan;
use regsweep::select::{Policy, Request, SimpleRule, Target};
use regsweep::shard::Shard;
use regsweep::state::{self, Expectations, MarkState, StateLocation};
use regsweep::storage::fault::{HANG_AFTER_DELETES_ENV, HangAfterDeletes};
use regsweep::storage::{self, Storage, requests::RequestCounter};

/// Test-only: before the sweep, wait until the file this names exists.
const PAUSE_BEFORE_SWEEP_ENV: &str = "REGSWEEP_TEST_PAUSE_BEFORE_SWEEP";

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format, cli.quiet);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = match cli.command {
        Command::Gc(args) => runtime.block_on(gc(*args, "gc", Work::Collect(None), cli.quiet)),
        Command::Delete(args) => runtime.block_on(delete(*args, cli.quiet)),
        Command::Prune(args) => runtime.block_on(prune(*args, cli.quiet)),
        Command::Restore(args) => runtime.block_on(restore(args, cli.quiet)),
        Command::Purge(args) => runtime.block_on(purge(args, cli.quiet)),
        Command::Report(args) => runtime.block_on(report(args)),
        Command::Mark(args) => runtime.block_on(mark(*args, cli.quiet)),
        Command::Sweep(args) => runtime.block_on(sweep(*args, cli.quiet)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            let message = error_chain(e.as_ref());
            tracing::error!("{message}");
            if cli.log_format == LogFormat::Text {
                // Make the reason visible even when logs are filtered out.
                eprintln!("regsweep: {message}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Set when logs are JSON: then no progress bar is drawn, whatever stderr is.
static JSON_LOGS: AtomicBool = AtomicBool::new(false);

/// Whether progress is a bar on stderr (a terminal, text logs, not quiet) rather than log lines.
fn progress_bar(quiet: bool) -> bool {
    !quiet && !JSON_LOGS.load(Ordering::Relaxed) && std::io::stderr().is_terminal()
}

fn init_logging(format: LogFormat, quiet: bool) {
    JSON_LOGS.store(format == LogFormat::Json, Ordering::Relaxed);
    let default = if quiet { "warn" } else { "info" };
    let filter =
        EnvFilter::try_from_env("REGSWEEP_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// `--concurrency`, or what the backend serves best.
fn concurrency(flag: Option<u16>, storage: &Arc<dyn Storage>) -> usize {
    flag.map_or_else(|| storage.default_concurrency(), usize::from)
}

fn storage_config(args: &GcArgs) -> Result<StorageConfig> {
    location_config(&args.config, &args.storage)
}

fn location_config(
    config: &Option<std::path::PathBuf>,
    storage: &Option<String>,
) -> Result<StorageConfig> {
    Ok(match (config, storage) {
        (Some(path), _) => {
            // `vars()` panics on a non-UTF-8 variable; the registry's own variables are UTF-8.
            let env = std::env::vars_os().filter_map(|(key, value)| {
                Some((key.into_string().ok()?, value.into_string().ok()?))
            });
            config::load_registry_config(path, env)?
        }
        (None, Some(url)) => config::parse_storage_url(url)?,
        (None, None) => unreachable!("clap requires CONFIG or --storage"),
    })
}

async fn delete(mut args: DeleteArgs, quiet: bool) -> Result<ExitCode> {
    // With --storage, the first positional (which clap takes for CONFIG) is the first target.
    if args.gc.storage.is_some()
        && let Some(first) = args.gc.config.take()
    {
        let first = first.to_string_lossy();
        match Target::parse(&first) {
            Ok(target) => args.targets.insert(0, target),
            Err(e) => Cli::command()
                .error(
                    clap::error::ErrorKind::ValueValidation,
                    format!("delete: {e}"),
                )
                .exit(),
        }
    }
    if args.targets.is_empty() {
        Cli::command()
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "delete: name at least one TARGET (REPOSITORY, REPOSITORY:TAG or REPOSITORY@DIGEST)",
            )
            .exit();
    }
    let request = Request::Delete {
        targets: args.targets,
        with_tags: args.with_tags,
    };
    gc(args.gc, "delete", Work::Collect(Some(request)), quiet).await
}

async fn prune(mut args: PruneArgs, quiet: bool) -> Result<ExitCode> {
    let policy = match &args.policy {
        Some(path) => {
            if args.gc.collect.delete_untagged {
                Cli::command()
                    .error(
                        clap::error::ErrorKind::ArgumentConflict,
                        "prune: with --policy, untagged manifests go by the rules' \
                         \"delete_untagged\": true, not -m",
                    )
                    .exit();
            }
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the policy {}", path.display()))?;
            Policy::from_json(&text).with_context(|| path.display().to_string())?
        }
        // A bad glob or regular expression in the flags is bad usage (exit 2), as clap's own.
        None => Policy::simple(SimpleRule {
            repositories: args.repositories.take(),
            keep_last: args.keep_last,
            keep_tags: args.keep_tags.take(),
            delete_older_than: args.older_than,
            delete_untagged: args.gc.collect.delete_untagged,
        })
        .unwrap_or_else(|e| {
            Cli::command()
                .error(
                    clap::error::ErrorKind::ValueValidation,
                    format!("prune: {e}"),
                )
                .exit()
        }),
    };
    // Untagged manifests go by the rules, repository by repository, not everywhere.
    args.gc.collect.delete_untagged = false;
    gc(
        args.gc,
        "prune",
        Work::Collect(Some(Request::Prune(policy))),
        quiet,
    )
    .await
}

/// What a collection starts from.
enum Work {
    /// `gc`, `delete` and `prune`: a scan and a mark, after the request (if any) took away what it
    /// selects.
    Collect(Option<Request>),
    /// `sweep`: a mark state.
    Sweep {
        state: StateLocation,
        shard: Shard,
        max_age: Duration,
    },
}

async fn sweep(args: SweepArgs, quiet: bool) -> Result<ExitCode> {
    let work = Work::Sweep {
        state: args.state,
        shard: args.shard,
        max_age: args.max_state_age,
    };
    gc(args.gc, "sweep", work, quiet).await
}

/// `gc`, `delete`, `prune` and `sweep`: a collection.
async fn gc(args: GcArgs, command: &'static str, work: Work, quiet: bool) -> Result<ExitCode> {
    let mut run = collect_and_forget(&args, command, work, quiet).await;
    if let Some(path) = &args.metrics_file {
        write_metrics(path, command, args.dry_run, &mut run);
    }
    let summary = run?;
    finish(&summary, summary.errors, args.format, quiet)
}

/// Writes the metrics file of a run — of a refused one too, so that an alert on `regsweep_errors`
/// sees it. Failing to write it is an error of the run.
fn write_metrics<T: Exported>(path: &Path, command: &str, dry_run: bool, run: &mut Result<T>) {
    let now = SystemTime::now();
    let text = match run {
        Ok(summary) => metrics::render(&*summary, command, now),
        Err(_) => metrics::render_refused(command, dry_run, now),
    };
    if let Err(e) = metrics::write_atomically(path, &text) {
        let message = format!("cannot write the metrics file {}: {e}", path.display());
        match run {
            Ok(summary) => summary.add_error(message),
            Err(_) => tracing::error!("{message}"),
        }
    }
}

/// Everything of a collection but printing its summary: lock, hooks, scan to sweep, and making the
/// registry forget what went.
async fn collect_and_forget(
    args: &GcArgs,
    command: &str,
    work: Work,
    quiet: bool,
) -> Result<Summary> {
    let counter = RequestCounter::default();
    let storage = storage::open(&storage_config(args)?, &counter)
        .context("cannot open the registry's storage")?;
    let storage = with_test_faults(storage)?;
    let run = RunId::new(SystemTime::now());

    scan::check_registry(&storage).await?;
    // Dry runs only read: they take no lock and run no hooks.
    let lock = if args.dry_run {
        None
    } else {
        let key = match &work {
            Work::Sweep { shard, .. } => layout::run_lock(shard),
            Work::Collect(_) => layout::RUN_LOCK.to_owned(),
        };
        Some(take_lock(&storage, &key, &run, command, &args.lock).await?)
    };
    let halt = lock
        .as_ref()
        .map_or_else(|| Arc::new(AtomicBool::new(false)), RunLock::lost);

    let hooks = !args.dry_run;
    let pre = match &args.pre_command {
        Some(command) if hooks => Some(run_hook("pre-command", command).await),
        _ => None,
    };
    let collected = match &pre {
        Some(outcome) if !outcome.success => Err(anyhow::anyhow!(
            "the pre-command `{}` failed ({}); nothing was read or deleted",
            outcome.command,
            outcome.status
        )),
        _ => {
            let progress = Arc::new(Progress::default());
            let reporting = Reporting {
                interval: args.progress_interval,
                bar: progress_bar(quiet),
                metrics_file: args.metrics_file.clone(),
                command: command.to_owned(),
                dry_run: args.dry_run,
            };
            let reporter = Reporter::start(Arc::clone(&progress), counter.clone(), reporting);
            let halt = Arc::clone(&halt);
            let collected = collect(args, &work, &run, storage, halt, &progress, quiet).await;
            reporter.stop().await;
            collected
        }
    };
    // Whatever happened once the pre-command started, the post-command undoes it.
    let post = match &args.post_command {
        Some(command) if hooks => Some(run_hook("post-command", command).await),
        _ => None,
    };
    release(lock).await;
    let mut summary = collected?;
    if halt.load(Ordering::SeqCst)
        && !summary
            .error_messages
            .iter()
            .any(|m| m.contains("run lock was lost"))
    {
        summary.add_error("the run lock was lost during the run: another run took it over".into());
    }
    summary.run = (!args.dry_run).then(|| run.to_string());
    summary.pre_command = pre;
    if let Some(outcome) = &post
        && !outcome.success
    {
        summary.add_error(format!(
            "post-command `{}` failed: {}",
            outcome.command, outcome.status
        ));
    }
    summary.post_command = post;

    let forget = Forget {
        redis_url: args.redis_url.clone(),
        command: args.restart_command.clone(),
        url: args.restart_url.clone(),
    };
    forget.run(&mut summary, &counter).await;

    summary.requests = counter.snapshot();
    Ok(summary)
}

/// Scans, takes away what `request` selects, marks, plans, writes the plan where asked, and sweeps
/// (unless this is a dry run).
async fn collect(
    args: &GcArgs,
    work: &Work,
    run: &RunId,
    storage: Arc<dyn Storage>,
    halt: Arc<AtomicBool>,
    progress: &Progress,
    quiet: bool,
) -> Result<Summary> {
    let options = GcOptions {
        dry_run: args.dry_run,
        delete_untagged: args.collect.delete_untagged,
        min_age: args.collect.min_age,
        upload_max_age: args.collect.upload_max_age,
        concurrency: concurrency(args.concurrency, &storage),
        pause_before_sweep: std::env::var_os(PAUSE_BEFORE_SWEEP_ENV).map(PathBuf::from),
        quarantine: args.quarantine.then(|| run.clone()),
    };
    let mut swept = None;
    let collection = match work {
        Work::Collect(Some(request)) => {
            Collection::prepare_selected(storage, options, request).await?
        }
        Work::Collect(None) => Collection::prepare(storage, options).await?,
        Work::Sweep {
            state: location,
            shard,
            max_age,
        } => {
            let state = MarkState::decode(&location.read(&storage).await?, location)?;
            let expect = Expectations {
                storage: storage.to_string(),
                storage_id: state::storage_id(&storage, false)
                    .await
                    .context("cannot read the storage's ID (_regsweep/id)")?,
                delete_untagged: args.collect.delete_untagged,
                min_age: args.collect.min_age,
                upload_max_age: args.collect.upload_max_age,
                max_age: *max_age,
                now: SystemTime::now(),
            };
            state.check(location, &expect)?;
            swept = Some((state.header.run.clone(), shard.to_string()));
            Collection::prepare_sweep(storage, options, state, *shard).await?
        }
    };

    if let Some(path) = &args.plan_file {
        write_plan(&collection, path)
            .with_context(|| format!("cannot write the plan to {}", path.display()))?;
    }
    if args.dry_run && args.format == OutputFormat::Text && !quiet {
        let mut out = std::io::stdout().lock();
        for decision in collection.decisions() {
            let digest = decision.digest.map(|d| d.to_string()).unwrap_or_default();
            writeln!(
                out,
                "{}\t{}:{}\t{digest}\t{}",
                decision.action.as_str(),
                decision.repository,
                decision.tag,
                decision.rule
            )?;
        }
        for entry in collection.plan_entries() {
            writeln!(
                out,
                "would delete\t{}\t{}\t{}",
                entry.phase.as_str(),
                entry.bytes,
                entry.key
            )?;
        }
    }
    let mut summary = collection.run(halt, progress).await;
    if let Some((mark, shard)) = swept {
        summary.mark = Some(mark);
        summary.shard = Some(shard);
    }
    Ok(summary)
}

async fn take_lock(
    storage: &Arc<dyn Storage>,
    key: &str,
    run: &RunId,
    command: &str,
    args: &LockArgs,
) -> Result<RunLock> {
    let options = LockOptions {
        key: key.to_owned(),
        run: run.clone(),
        command: command.to_owned(),
        lease: args.lock_lease,
        force: args.force,
    };
    Ok(RunLock::acquire(Arc::clone(storage), options).await?)
}

/// The run lock for a command that changes the storage; none for a dry run.
async fn locked(
    storage: &Arc<dyn Storage>,
    command: &str,
    dry_run: bool,
    args: &LockArgs,
) -> Result<Option<RunLock>> {
    if dry_run {
        return Ok(None);
    }
    let run = RunId::new(SystemTime::now());
    Ok(Some(
        take_lock(storage, layout::RUN_LOCK, &run, command, args).await?,
    ))
}

async fn release(lock: Option<RunLock>) {
    if let Some(lock) = lock {
        lock.release().await;
    }
}

async fn run_hook(name: &str, command: &str) -> CommandOutcome {
    tracing::info!(command, "running the {name}");
    let outcome = run_command(command).await;
    if !outcome.success {
        tracing::error!(command, status = outcome.status, "the {name} failed");
    }
    outcome
}

/// Test-only fault injection (`REGSWEEP_TEST_HANG_AFTER_DELETES=N`): the crash-safety tests kill the
/// process at an exact point of the sweep.
fn with_test_faults(storage: Arc<dyn Storage>) -> Result<Arc<dyn Storage>> {
    let Some(value) = std::env::var_os(HANG_AFTER_DELETES_ENV) else {
        return Ok(storage);
    };
    let deletions = value
        .to_str()
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("{HANG_AFTER_DELETES_ENV} must be a number"))?;
    Ok(Arc::new(HangAfterDeletes::new(storage, deletions)))
}

fn write_plan(collection: &Collection, path: &std::path::Path) -> Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for entry in collection.plan_entries() {
        serde_json::to_writer(&mut out, &entry)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

/// Opens the storage `restore` and `purge` work on.
fn open_location(
    location: &StorageArgs,
    counter: &RequestCounter,
) -> Result<std::sync::Arc<dyn storage::Storage>> {
    let config = location_config(&location.config, &location.storage)?;
    storage::open(&config, counter).context("cannot open the registry's storage")
}

/// Prints a summary as `format` asks; exit status 1 if it counts errors.
fn finish<T: serde::Serialize + std::fmt::Display>(
    summary: &T,
    errors: u64,
    format: OutputFormat,
    quiet: bool,
) -> Result<ExitCode> {
    match format {
        OutputFormat::Json => {
            serde_json::to_writer(std::io::stdout().lock(), summary)?;
            println!();
        }
        OutputFormat::Text if !quiet || errors > 0 => println!("{summary}"),
        OutputFormat::Text => {}
    }
    Ok(if errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn restore(args: RestoreArgs, quiet: bool) -> Result<ExitCode> {
    let mut run = run_restore(&args).await;
    if let Some(path) = &args.metrics_file {
        write_metrics(path, "restore", args.dry_run, &mut run);
    }
    let summary = run?;
    finish(&summary, summary.errors, args.format, quiet)
}

async fn run_restore(args: &RestoreArgs) -> Result<RestoreSummary> {
    let counter = RequestCounter::default();
    let storage = open_location(&args.location, &counter)?;
    let options = RestoreOptions {
        run: args.run.clone(),
        dry_run: args.dry_run,
        concurrency: concurrency(args.concurrency, &storage),
    };
    let lock = locked(&storage, "restore", args.dry_run, &args.lock).await?;
    let restored = quarantine::restore(Arc::clone(&storage), options).await;
    release(lock).await;
    let mut summary = restored?;
    summary.requests = counter.snapshot();
    Ok(summary)
}

async fn purge(args: PurgeArgs, quiet: bool) -> Result<ExitCode> {
    let mut run = run_purge(&args).await;
    if let Some(path) = &args.metrics_file {
        write_metrics(path, "purge", args.dry_run, &mut run);
    }
    let summary = run?;
    finish(&summary, summary.errors, args.format, quiet)
}

async fn run_purge(args: &PurgeArgs) -> Result<PurgeSummary> {
    let counter = RequestCounter::default();
    let storage = open_location(&args.location, &counter)?;
    let options = PurgeOptions {
        older_than: args.older_than,
        run: args.run.clone(),
        dry_run: args.dry_run,
        concurrency: concurrency(args.concurrency, &storage),
        now: std::time::SystemTime::now(),
    };
    let lock = locked(&storage, "purge", args.dry_run, &args.lock).await?;
    let purged = quarantine::purge(Arc::clone(&storage), options).await;
    release(lock).await;
    let mut summary = purged?;
    summary.requests = counter.snapshot();
    Ok(summary)
}

/// `regsweep report`: one scan, no lock, no hooks, nothing deleted.
async fn report(args: ReportArgs) -> Result<ExitCode> {
    let counter = RequestCounter::default();
    let storage = open_location(&args.location, &counter)?;
    scan::check_registry(&storage).await?;
    let options = ReportOptions {
        min_age: args.min_age,
        upload_max_age: args.upload_max_age,
        concurrency: concurrency(args.concurrency, &storage),
        prices: Prices {
            per_gib_month: args.price_per_gib_month,
            per_1000_list: args.price_per_1000_list,
            per_1000_get: args.price_per_1000_get,
        },
        top: args.top,
    };
    let report = cost::report(storage, &options, &counter).await?;
    let text = match args.format {
        ReportFormat::Text => report.to_string(),
        ReportFormat::Json => serde_json::to_string(&report)? + "\n",
        ReportFormat::Csv => cost::render::csv(&report),
        ReportFormat::Html => cost::render::html(&report),
    };
    match &args.output {
        Some(path) => std::fs::write(path, text)
            .with_context(|| format!("cannot write the report to {}", path.display()))?,
        None => std::io::stdout().lock().write_all(text.as_bytes())?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `regsweep mark`: scan, mark, and write the state; nothing is deleted, no lock is taken.
async fn mark(args: MarkArgs, quiet: bool) -> Result<ExitCode> {
    let mut run = run_mark(&args, quiet).await;
    if let Some(path) = &args.metrics_file {
        write_metrics(path, "mark", true, &mut run);
    }
    let summary = run?;
    finish(&summary, summary.errors, args.format, quiet)
}

async fn run_mark(args: &MarkArgs, quiet: bool) -> Result<MarkSummary> {
    let counter = RequestCounter::default();
    let storage = open_location(&args.location, &counter)?;
    scan::check_registry(&storage).await?;
    let run = RunId::new(SystemTime::now());
    let options = GcOptions {
        dry_run: true,
        delete_untagged: args.collect.delete_untagged,
        min_age: args.collect.min_age,
        upload_max_age: args.collect.upload_max_age,
        concurrency: concurrency(args.concurrency, &storage),
        pause_before_sweep: None,
        quarantine: None,
    };
    let started = std::time::Instant::now();
    let reporting = Reporting {
        interval: args.progress_interval,
        bar: progress_bar(quiet),
        metrics_file: args.metrics_file.clone(),
        command: "mark".to_owned(),
        dry_run: true,
    };
    let reporter = Reporter::start(Arc::default(), counter.clone(), reporting);
    let collection = Collection::prepare(Arc::clone(&storage), options).await;
    reporter.stop().await;
    let collection = collection?;
    let storage_id = state::storage_id(&storage, true)
        .await
        .context("cannot write the storage's ID (_regsweep/id)")?
        .expect("created");
    let plan = collection.plan();
    let deletions_planned = plan.deletions.len() as u64;
    let blobs = &collection.inventory().blobs;
    let bytes_reclaimable = plan.deletions.iter().map(|d| d.bytes(blobs)).sum();
    let warnings = collection.marks().warnings.clone();
    // The inventory is the largest thing in memory: gone before the state is encoded.
    let state = collection.into_state(&run, storage_id);
    let bytes = state.encode();
    let state_bytes = bytes.len() as u64;
    args.state.write(&storage, bytes).await?;
    tracing::info!(state = %args.state, bytes = state_bytes, "wrote the mark state");
    let summary = MarkSummary {
        state: args.state.to_string(),
        header: state.header,
        state_bytes,
        deletions_planned,
        bytes_reclaimable,
        warnings,
        requests: counter.snapshot(),
        duration_seconds: started.elapsed().as_secs_f64(),
        ..MarkSummary::default()
    };
    Ok(summary)
}
