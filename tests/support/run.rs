//! Running the `regsweep` binary and reading what it wrote.

use std::fs;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};

use serde::Deserialize;

/// One finished run of a command, with everything it printed.
#[derive(Debug)]
pub struct RunOutput {
    pub command: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl RunOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// The command, its status and its output, for failure messages.
    pub fn describe(&self) -> String {
        format!(
            "$ {}\nexit: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command, self.status, self.stdout, self.stderr
        )
    }

    /// Panics with the whole output unless the command exited 0.
    pub fn assert_success(&self) -> &RunOutput {
        assert!(self.success(), "command failed:\n{}", self.describe());
        self
    }

    /// stdout parsed as one JSON object (`--format json`); panics with the output otherwise.
    pub fn json(&self) -> serde_json::Value {
        let value: serde_json::Value =
            serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| {
                panic!("stdout is not one JSON object ({e}):\n{}", self.describe())
            });
        assert!(
            value.is_object(),
            "stdout is not a JSON object:\n{}",
            self.describe()
        );
        value
    }
}

/// A numeric field of a JSON summary; panics (showing the run) when it is missing.
pub fn field_u64(summary: &serde_json::Value, name: &str, run: &RunOutput) -> u64 {
    summary
        .get(name)
        .and_then(serde_json::Value::as_u64)
        .unwrap_or_else(|| panic!("summary has no numeric `{name}`:\n{}", run.describe()))
}

/// Runs `bin args…` to completion, with `REGISTRY_*` variables removed from its environment.
pub fn run_regsweep(bin: &Path, args: &[&str]) -> RunOutput {
    let mut command = Command::new(bin);
    command.args(args).stdin(Stdio::null());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("REGISTRY_") {
            command.env_remove(key);
        }
    }
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
    RunOutput {
        command: format!("{} {}", bin.display(), args.join(" ")),
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// One line of a `--plan-file`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PlanEntry {
    pub phase: String,
    /// Relative to the storage root directory; a key ending in `/` is an empty directory.
    pub key: String,
    pub bytes: u64,
}

impl PlanEntry {
    pub fn is_directory(&self) -> bool {
        self.key.ends_with('/')
    }
}

/// Reads a plan file (JSON lines); panics with the offending line.
pub fn read_plan(path: &Path) -> Vec<PlanEntry> {
    let text = fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read the plan {}: {e}", path.display()));
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("bad plan line in {} ({e}): {line}", path.display()))
        })
        .collect()
}
