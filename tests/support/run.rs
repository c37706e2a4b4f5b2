//! Running the `regsweep` binary and reading what it wrote.

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use serde::Deserialize;

/// Test-only: with this set to N, the binary lets N deletions through, says [`HANG_MARKER`] on
/// stderr and hangs (to be killed at an exact point of its sweep).
pub const HANG_ENV: &str = "REGSWEEP_TEST_HANG_AFTER_DELETES";
pub const HANG_MARKER: &str = "regsweep-test: hanging";
/// Test-only: with this set to a path, the binary says [`PAUSE_MARKER`] between its plan and its
/// re-mark, and waits until the path exists.
pub const PAUSE_ENV: &str = "REGSWEEP_TEST_PAUSE_BEFORE_SWEEP";
pub const PAUSE_MARKER: &str = "regsweep-test: paused before the sweep";

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

/// `bin args…` with `REGISTRY_*` variables removed from its environment.
fn command(bin: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(bin);
    command.args(args).stdin(Stdio::null());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("REGISTRY_") {
            command.env_remove(key);
        }
    }
    command
}

/// A `regsweep` run in the background, whose stderr is watched line by line (for the marker lines
/// of the test hooks).
pub struct Background {
    child: Child,
    command: String,
    stderr: Arc<Mutex<String>>,
    lines: mpsc::Receiver<String>,
    stdout: thread::JoinHandle<String>,
}

impl Background {
    /// Starts `bin args…` with the extra environment `env`.
    pub fn start(bin: &Path, args: &[&str], env: &[(&str, &str)]) -> Background {
        let mut command = command(bin, args);
        command
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let mut out = child.stdout.take().expect("piped stdout");
        let stdout = thread::spawn(move || {
            let mut text = String::new();
            let _ = out.read_to_string(&mut text);
            text
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, lines) = mpsc::channel();
        let err = BufReader::new(child.stderr.take().expect("piped stderr"));
        let all = Arc::clone(&stderr);
        thread::spawn(move || {
            for line in err.lines().map_while(Result::ok) {
                all.lock().unwrap().push_str(&format!("{line}\n"));
                let _ = tx.send(line);
            }
        });
        Background {
            child,
            command: format!("{} {}", bin.display(), args.join(" ")),
            stderr,
            lines,
            stdout,
        }
    }

    /// Waits until a stderr line contains `needle`; panics (with the output) after `timeout` or
    /// when the process ends first.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return,
                Ok(_) => {}
                Err(_) => panic!(
                    "`{needle}` never appeared on stderr of {}:\n{}",
                    self.command,
                    self.stderr.lock().unwrap()
                ),
            }
        }
    }

    /// SIGKILL, and what it printed until then.
    pub fn kill(mut self) -> RunOutput {
        self.child.kill().expect("kill regsweep");
        self.wait()
    }

    /// Waits for the process to end.
    pub fn wait(mut self) -> RunOutput {
        let status = self.child.wait().expect("wait for regsweep");
        let stdout = self.stdout.join().expect("stdout reader");
        // The stderr reader ends with the process; give it a moment to take the last lines.
        while self.lines.recv_timeout(Duration::from_millis(200)).is_ok() {}
        let stderr = self.stderr.lock().unwrap().clone();
        RunOutput {
            command: self.command,
            status,
            stdout,
            stderr,
        }
    }
}

/// Runs `bin args…` to completion, with `REGISTRY_*` variables removed from its environment.
pub fn run_regsweep(bin: &Path, args: &[&str]) -> RunOutput {
    let mut command = command(bin, args);
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
