//! The `regsweep` command: parses flags, sets up logging, and hands over to the library.

mod cli;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use tracing_subscriber::EnvFilter;

use cli::{Cli, Command, GcArgs, LogFormat, OutputFormat};
use regsweep::config::{self, StorageConfig};
use regsweep::gc::{Collection, GcOptions};
use regsweep::report::error_chain;
use regsweep::restart::run_restart_command;
use regsweep::restart::{redis, webhook};
use regsweep::storage::{self, requests::RequestCounter};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format, cli.quiet);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = match cli.command {
        Command::Gc(args) => runtime.block_on(gc(args, cli.quiet)),
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

fn init_logging(format: LogFormat, quiet: bool) {
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

fn storage_config(args: &GcArgs) -> Result<StorageConfig> {
    Ok(match (&args.config, &args.storage) {
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

async fn gc(args: GcArgs, quiet: bool) -> Result<ExitCode> {
    let counter = RequestCounter::default();
    let storage = storage::open(&storage_config(&args)?, &counter)
        .context("cannot open the registry's storage")?;
    let options = GcOptions {
        dry_run: args.dry_run,
        delete_untagged: args.delete_untagged,
        min_age: args.min_age,
        upload_max_age: args.upload_max_age,
        concurrency: usize::from(args.concurrency),
    };
    let collection = Collection::prepare(storage, options).await?;

    if let Some(path) = &args.plan_file {
        write_plan(&collection, path)
            .with_context(|| format!("cannot write the plan to {}", path.display()))?;
    }
    if args.dry_run && args.format == OutputFormat::Text && !quiet {
        let mut out = std::io::stdout().lock();
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

    let mut summary = collection.run().await;
    let deleted_anything = !summary.dry_run
        && (summary.blobs_deleted
            + summary.manifests_deleted
            + summary.links_deleted
            + summary.tags_deleted
            + summary.uploads_deleted
            + summary.directories_deleted)
            > 0;
    // The registry's caches forget, in this order: Redis, the restart command, the restart URL.
    if let Some(url) = &args.redis_url
        && !summary.deleted.is_empty()
    {
        tracing::info!(%url, "deleting the registry's Redis cache entries of what was deleted");
        let outcome = redis::forget(url, &summary.deleted).await;
        if !outcome.success {
            summary.add_error(format!("Redis cache at {url}: {}", outcome.status));
        }
        summary.redis = Some(outcome);
    }
    if let Some(command) = &args.restart_command
        && deleted_anything
    {
        tracing::info!(command, "running the restart command");
        let outcome = run_restart_command(command).await;
        if !outcome.success {
            summary.add_error(format!(
                "restart command `{command}` failed: {}",
                outcome.status
            ));
        }
        summary.restart = Some(outcome);
    }
    if let Some(url) = &args.restart_url
        && deleted_anything
    {
        tracing::info!(%url, "calling the restart URL");
        summary.requests = counter.snapshot();
        let outcome = webhook::notify(url, serde_json::to_vec(&summary)?).await;
        if !outcome.success {
            summary.add_error(format!("restart URL {url} failed: {}", outcome.status));
        }
        summary.restart_url = Some(outcome);
    }

    summary.requests = counter.snapshot();
    match args.format {
        OutputFormat::Json => {
            serde_json::to_writer(std::io::stdout().lock(), &summary)?;
            println!();
        }
        OutputFormat::Text if !quiet || summary.errors > 0 => println!("{summary}"),
        OutputFormat::Text => {}
    }
    Ok(if summary.errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
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
