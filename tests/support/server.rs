//! A helper server (moto, Azurite) as a child process on a free loopback port, its output logged
//! to a file, killed on drop. Shared by [`super::s3`] and [`super::azurite`].

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::registry::free_port;

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const SPAWN_ATTEMPTS: usize = 5;

/// A running server. Dropping it kills the process.
#[derive(Debug)]
pub struct ServerProcess {
    name: String,
    port: u16,
    log: PathBuf,
    child: Option<Child>,
}

/// Why a start failed.
enum StartError {
    /// The port was taken between our probe and the server's bind: try another one.
    PortTaken(String),
    Fatal(String),
}

impl ServerProcess {
    /// Starts `command(port)` on a free port, stdout and stderr appended to `log`, and waits until
    /// `ready(port)` is true. Retries with another port when the server exits complaining that the
    /// port is in use (another process took it after our probe); panics with the log otherwise.
    pub fn start(
        name: &str,
        log: &Path,
        command: impl Fn(u16) -> Command,
        ready: impl Fn(u16) -> bool,
    ) -> ServerProcess {
        let mut last = String::new();
        for _ in 0..SPAWN_ATTEMPTS {
            let mut server = ServerProcess {
                name: name.to_owned(),
                port: free_port(),
                log: log.to_owned(),
                child: None,
            };
            match server.spawn_and_wait(command(server.port), &ready) {
                Ok(()) => return server,
                Err(StartError::PortTaken(e)) => last = e,
                Err(StartError::Fatal(e)) => panic!("{e}"),
            }
        }
        panic!("{last}");
    }

    fn spawn_and_wait(
        &mut self,
        mut command: Command,
        ready: &impl Fn(u16) -> bool,
    ) -> Result<(), StartError> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("open {}: {e}", self.log.display()));
        let log_err = log.try_clone().expect("clone the log handle");
        command.stdin(Stdio::null()).stdout(log).stderr(log_err);
        let child = command.spawn().map_err(|e| {
            StartError::Fatal(format!(
                "spawn {} ({:?}): {e}",
                self.name,
                command.get_program()
            ))
        })?;
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                let message = format!(
                    "{} exited early ({status}) on port {}; log tail:\n{}",
                    self.name,
                    self.port,
                    self.log_tail(40)
                );
                return Err(
                    if message.contains("in use") || message.contains("EADDRINUSE") {
                        StartError::PortTaken(message)
                    } else {
                        StartError::Fatal(message)
                    },
                );
            }
            // `ready` must recognise the server, not just an open port: another process may
            // hold the port while ours is still starting (and about to fail to bind).
            if ready(self.port) {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(StartError::Fatal(format!(
                    "{} did not become ready within {READY_TIMEOUT:?} on port {}; log tail:\n{}",
                    self.name,
                    self.port,
                    self.log_tail(40)
                )));
            }
            sleep(Duration::from_millis(100));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The file the server's stdout and stderr go to.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
