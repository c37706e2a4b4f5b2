//! Restart: make the registry forget what was deleted.
//!
//! A running registry keeps serving its blob-descriptor cache after blobs are deleted ("layer already
//! exists", then "blob unknown"), so it must be restarted after a sweep that deleted anything. The
//! operator says how: `systemctl restart docker-registry`, `kubectl rollout restart
//! deployment/registry`, … The command runs through `sh -c`; its output goes to stderr so that
//! stdout stays the summary.

use std::process::Stdio;

use serde::Serialize;

/// How the restart command ended.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RestartOutcome {
    pub command: String,
    pub success: bool,
    /// The exit code, when the command exited (rather than being killed by a signal).
    pub exit_code: Option<i32>,
    /// What happened, in words: `exit status 0`, `signal: 9`, or why it could not start.
    pub status: String,
}

pub async fn run_restart_command(command: &str) -> RestartOutcome {
    let spawned = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(std::io::stderr())
        .status()
        .await;
    match spawned {
        Ok(status) => RestartOutcome {
            command: command.to_owned(),
            success: status.success(),
            exit_code: status.code(),
            status: status.to_string(),
        },
        Err(e) => RestartOutcome {
            command: command.to_owned(),
            success: false,
            exit_code: None,
            status: format!("could not run sh: {e}"),
        },
    }
}
