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

/// Runs a recipe's regsweep arguments, with `--dry-run` and the test registry's config.
fn dry_run(args: &[String]) {
    let dir = tempfile::tempdir().unwrap();
    let config = registry(dir.path());
    assert!(
        args.iter().any(|a| a == CONFIG),
        "the recipe names no {CONFIG}: {args:?}"
    );
    let args: Vec<String> = args
        .iter()
        .map(|a| {
            if a == CONFIG {
                config.to_string_lossy().into_owned()
            } else {
                a.clone()
            }
        })
        .chain(["--dry-run".to_owned()])
        .collect();
    let out = Command::new(env!("CARGO_BIN_EXE_regsweep"))
        .args(&args)
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
    assert_eq!(summary["dry_run"], true, "{stdout}");
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
    let strings = |value: &serde_yaml_ng::Value| -> Vec<String> {
        value
            .as_sequence()
            .expect("a list")
            .iter()
            .map(|v| v.as_str().expect("a string").to_owned())
            .collect()
    };
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
