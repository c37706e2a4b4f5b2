//! The deployment recipes in `deploy/` run: each one's regsweep command line is run as written
//! (with `--dry-run`, against a small registry instead of /etc/docker/registry/config.yml), and the
//! systemd units pass `systemd-analyze verify`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the recipes put the binary (deploy/Containerfile copies it there).
const INSTALLED: &str = "/usr/local/bin/regsweep";
/// The config path the recipes name.
const CONFIG: &str = "/etc/docker/registry/config.yml";

fn recipe(path: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A registry with nothing in it, and a config.yml that names it.
fn registry(dir: &Path) -> PathBuf {
    let root = dir.join("storage");
    fs::create_dir_all(root.join("docker/registry/v2/repositories")).unwrap();
    fs::create_dir_all(root.join("docker/registry/v2/blobs")).unwrap();
    let config = dir.join("config.yml");
    let yaml = format!(
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\n",
        root.display()
    );
    fs::write(&config, yaml).unwrap();
    config
}

/// The storage the AWS Batch recipes name (they run without a config file).
const S3_URL: &str = "s3://example-registry/registry?region=us-east-1";

/// Runs a recipe's regsweep arguments against the test registry in `dir` (its config for
/// [`CONFIG`], its root for [`S3_URL`]), with `env` set and `--dry-run` when asked; returns the
/// JSON summary the recipe asks for.
fn run(dir: &Path, args: &[String], env: &[(&str, String)], dry_run: bool) -> serde_json::Value {
    let config = dir.join("config.yml");
    if !config.exists() {
        registry(dir);
    }
    assert!(
        args.iter().any(|a| a == CONFIG || a == S3_URL),
        "the recipe names neither {CONFIG} nor {S3_URL}: {args:?}"
    );
    let root = dir.join("storage");
    let args: Vec<String> = args
        .iter()
        .map(|a| match a.as_str() {
            CONFIG => config.to_string_lossy().into_owned(),
            S3_URL => root.to_string_lossy().into_owned(),
            _ => a.clone(),
        })
        .chain(dry_run.then(|| "--dry-run".to_owned()))
        .collect();
    let out = Command::new(env!("CARGO_BIN_EXE_regsweep"))
        .args(&args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{args:?}\n{stdout}\n{stderr}");
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("the recipe asks for a JSON summary: {e}\n{stdout}");
    });
    if dry_run {
        assert_eq!(summary["dry_run"], true, "{stdout}");
    }
    summary
}

/// Runs a recipe's regsweep arguments, with `--dry-run`, against a test registry.
fn dry_run(args: &[String]) {
    let dir = tempfile::tempdir().unwrap();
    run(dir.path(), args, &[], true);
}

fn strings(value: &serde_yaml_ng::Value) -> Vec<String> {
    value
        .as_sequence()
        .expect("a list")
        .iter()
        .map(|v| v.as_str().expect("a string").to_owned())
        .collect()
}

/// The value after `flag` in `args`.
fn after<'a>(args: &'a [String], flag: &str) -> &'a str {
    let at = args
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("no {flag}: {args:?}"));
    &args[at + 1]
}

/// Runs the mark of a sharded recipe for real (it deletes nothing), then every shard's sweep in
/// `--dry-run`, each with the index its batch engine gives it in `variable`.
fn mark_then_every_shard(mark: &[String], sweep: &[String], variable: &str, shards: u64) {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        mark[mark.iter().position(|a| a == "--log-format").unwrap() + 2],
        "mark"
    );
    let state = after(mark, "--state");
    assert_eq!(
        after(sweep, "--state"),
        state,
        "the sweep reads another state"
    );
    let has = |args: &[String], flag: &str| args.iter().any(|a| a == flag);
    assert_eq!(
        has(mark, "--delete-untagged"),
        has(sweep, "--delete-untagged"),
        "--delete-untagged differs between mark and sweep"
    );
    for flag in ["--min-age", "--upload-max-age"] {
        let value = |args: &[String]| has(args, flag).then(|| after(args, flag).to_owned());
        assert_eq!(
            value(mark),
            value(sweep),
            "{flag} differs between mark and sweep"
        );
    }
    let summary = run(dir.path(), mark, &[], false);
    assert_eq!(summary["state"], state, "{summary}");
    assert_eq!(
        after(sweep, "--shard"),
        format!("env:{variable}/{shards}"),
        "the shard count is not the number of workers"
    );
    for index in 0..shards {
        let summary = run(dir.path(), sweep, &[(variable, index.to_string())], true);
        assert_eq!(summary["shard"], format!("{index}/{shards}"), "{summary}");
    }
}

#[test]
fn the_kubernetes_indexed_job_sweeps_every_shard_of_the_mark() {
    let text = recipe("kubernetes/sharded.yaml");
    let jobs: Vec<serde_yaml_ng::Value> = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap())
        .collect();
    let [mark, sweep] = jobs.as_slice() else {
        panic!(
            "a mark CronJob and a sweep CronJob, got {} documents",
            jobs.len()
        );
    };
    let container = |job: &serde_yaml_ng::Value| {
        assert_eq!(job["kind"], "CronJob");
        assert_eq!(job["spec"]["concurrencyPolicy"], "Forbid");
        let container =
            job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0].clone();
        assert_eq!(strings(&container["command"]), [INSTALLED]);
        container
    };
    let spec = &sweep["spec"]["jobTemplate"]["spec"];
    assert_eq!(spec["completionMode"], "Indexed");
    let shards = spec["completions"].as_u64().expect("completions");
    assert_eq!(spec["parallelism"].as_u64(), Some(shards));
    mark_then_every_shard(
        &strings(&container(mark)["args"]),
        &strings(&container(sweep)["args"]),
        "JOB_COMPLETION_INDEX",
        shards,
    );
}

#[test]
fn the_aws_batch_array_job_sweeps_every_shard_of_the_mark() {
    let definition = |name: &str| -> serde_json::Value {
        let definition: serde_json::Value =
            serde_json::from_str(&recipe(&format!("aws-batch/{name}.json"))).unwrap();
        assert_eq!(definition["jobDefinitionName"], format!("regsweep-{name}"));
        assert_eq!(definition["type"], "container");
        definition
    };
    let command = |definition: &serde_json::Value| -> Vec<String> {
        serde_json::from_value(definition["containerProperties"]["command"].clone()).unwrap()
    };
    let (mark, sweep) = (definition("mark"), definition("sweep"));
    // The submit script runs the sweep as an array of as many jobs as shards, after the mark.
    let submit = recipe("aws-batch/submit");
    let shards: u64 = submit
        .lines()
        .find_map(|l| l.strip_prefix("shards="))
        .and_then(|n| n.parse().ok())
        .expect("shards=N in the submit script");
    for needle in [
        "--job-definition regsweep-mark",
        "--job-definition regsweep-sweep",
        "--array-properties \"size=$shards\"",
        "--depends-on \"jobId=$mark\"",
    ] {
        assert!(submit.contains(needle), "the submit script lacks {needle}");
    }
    let syntax = Command::new("bash")
        .arg("-n")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/aws-batch/submit"))
        .status()
        .unwrap();
    assert!(syntax.success(), "bash -n deploy/aws-batch/submit");
    mark_then_every_shard(
        &command(&mark),
        &command(&sweep),
        "AWS_BATCH_JOB_ARRAY_INDEX",
        shards,
    );
}

#[test]
fn the_containerfile_installs_where_the_recipes_run_it() {
    let containerfile = recipe("Containerfile");
    assert!(
        containerfile.contains(&format!("ENTRYPOINT [\"{INSTALLED}\"]")),
        "{containerfile}"
    );
    assert!(
        containerfile.contains(&format!("/release/regsweep {INSTALLED}")),
        "{containerfile}"
    );
}

#[test]
fn the_kubernetes_cronjob_runs_a_collection_that_exists() {
    let job: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&recipe("kubernetes/cronjob.yaml")).unwrap();
    assert_eq!(job["kind"], "CronJob");
    assert_eq!(job["spec"]["concurrencyPolicy"], "Forbid");
    let container = &job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(strings(&container["command"]), [INSTALLED]);
    dry_run(&strings(&container["args"]));
}

#[test]
fn the_systemd_units_verify_and_run_a_collection_that_exists() {
    let service = recipe("systemd/regsweep.service");
    let exec = service
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart line");
    let words = split_quoted(exec);
    assert_eq!(words[0], INSTALLED);
    dry_run(&words[1..]);

    // systemd-analyze checks the units, the binary they start included: point it at the build.
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_regsweep");
    fs::write(
        dir.path().join("regsweep.service"),
        service.replace(INSTALLED, bin),
    )
    .unwrap();
    fs::write(
        dir.path().join("regsweep.timer"),
        recipe("systemd/regsweep.timer"),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.path().join("regsweep.service"))
        .arg(dir.path().join("regsweep.timer"))
        .output()
        .expect("systemd-analyze (Debian's systemd; scripts/install-deps installs it)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");
}

/// Splits a systemd command line into words: spaces separate, double quotes group.
fn split_quoted(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}
