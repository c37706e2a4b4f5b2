//! Progress of a long run, for people and schedulers: a progress bar on a terminal, a structured
//! log line every `--progress-interval` otherwise, and, with `--metrics-file`, the same figures as
//! Prometheus gauges while the run lasts (the summary replaces them at the end).
//!
//! The stages that only read (scan, manifests, mark) report the storage requests sent so far; the
//! sweep reports its phase and how many of the planned deletions are settled (done or failed).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;

use crate::metrics;
use crate::plan::Phase;
use crate::storage::requests::{RequestCounter, Requests};

/// How far a sweep is. Shared between the sweep, which advances it, and the reporter.
#[derive(Debug, Default)]
pub struct Progress {
    /// 0 before the sweep; then 1 + the index of the phase in [`Phase::ALL`].
    phase: AtomicU8,
    planned: AtomicU64,
    settled: AtomicU64,
    failed: AtomicU64,
    bytes_freed: AtomicU64,
}

/// A reading of [`Progress`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    /// `None` while the run still reads (scan, mark, plan).
    pub phase: Option<Phase>,
    pub planned: u64,
    pub settled: u64,
    pub failed: u64,
    pub bytes_freed: u64,
    pub requests: Requests,
}

impl Progress {
    /// The sweep starts with `planned` deletions.
    pub fn begin(&self, planned: usize) {
        self.planned.store(planned as u64, Ordering::Relaxed);
    }

    pub fn enter(&self, phase: Phase) {
        let index = Phase::ALL
            .iter()
            .position(|p| *p == phase)
            .expect("a phase");
        self.phase.store(index as u8 + 1, Ordering::Relaxed);
    }

    /// `settled` deletions ended, `failed` of them in failure, freeing `bytes`.
    pub fn advance(&self, settled: u64, failed: u64, bytes: u64) {
        self.settled.fetch_add(settled, Ordering::Relaxed);
        self.failed.fetch_add(failed, Ordering::Relaxed);
        self.bytes_freed.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn snapshot(&self, requests: Requests) -> Snapshot {
        let phase = match self.phase.load(Ordering::Relaxed) {
            0 => None,
            n => Phase::ALL.get(usize::from(n) - 1).copied(),
        };
        Snapshot {
            phase,
            planned: self.planned.load(Ordering::Relaxed),
            settled: self.settled.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            bytes_freed: self.bytes_freed.load(Ordering::Relaxed),
            requests,
        }
    }
}

impl Snapshot {
    /// One line: what the run does now and how far it is.
    pub fn line(&self) -> String {
        let r = &self.requests;
        match self.phase {
            None => format!(
                "reading the storage: {} listings, {} reads, {} lookups",
                r.list, r.get, r.head
            ),
            Some(phase) => {
                const WIDTH: u64 = 24;
                let filled = (self.settled * WIDTH)
                    .checked_div(self.planned)
                    .unwrap_or(WIDTH)
                    .min(WIDTH);
                format!(
                    "sweeping [{}{}] {}/{} deletions ({}), phase {}{}",
                    "#".repeat(filled as usize),
                    "-".repeat((WIDTH - filled) as usize),
                    self.settled,
                    self.planned,
                    crate::report::human_bytes(self.bytes_freed),
                    phase.as_str(),
                    if self.failed > 0 {
                        format!(", {} failed", self.failed)
                    } else {
                        String::new()
                    }
                )
            }
        }
    }
}

/// Where and how often progress is reported.
#[derive(Debug, Clone)]
pub struct Reporting {
    /// Between two log lines and two writes of the metrics file.
    pub interval: Duration,
    /// Redraw a progress bar on stderr (a terminal) instead of logging.
    pub bar: bool,
    pub metrics_file: Option<PathBuf>,
    pub command: String,
    pub dry_run: bool,
}

/// The reporter of a run: stops (and ends the bar's line) when dropped through [`Reporter::stop`].
pub struct Reporter {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Reporter {
    pub fn start(
        progress: Arc<Progress>,
        counter: RequestCounter,
        reporting: Reporting,
    ) -> Reporter {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let tick = if reporting.bar {
                reporting.interval.min(Duration::from_millis(250))
            } else {
                reporting.interval
            };
            let mut since_report = Duration::ZERO;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(tick) => {}
                    _ = stopped.changed() => break,
                }
                since_report += tick;
                let snapshot = progress.snapshot(counter.snapshot());
                if reporting.bar {
                    eprint!("\r\x1b[2K{}", snapshot.line());
                }
                if since_report < reporting.interval {
                    continue;
                }
                since_report = Duration::ZERO;
                if !reporting.bar {
                    log(&snapshot);
                }
                if let Some(path) = &reporting.metrics_file {
                    let text = metrics::render_progress(
                        &snapshot,
                        &reporting.command,
                        reporting.dry_run,
                        SystemTime::now(),
                    );
                    if let Err(e) = metrics::write_atomically(path, text) {
                        tracing::warn!(error = %e, path = %path.display(), "cannot write progress");
                    }
                }
            }
            if reporting.bar {
                eprintln!();
            }
        });
        Reporter { stop, task }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

fn log(s: &Snapshot) {
    let r = &s.requests;
    match s.phase {
        None => info!(
            list = r.list,
            get = r.get,
            head = r.head,
            "progress: reading the storage"
        ),
        Some(phase) => info!(
            phase = phase.as_str(),
            deletions_planned = s.planned,
            deletions_settled = s.settled,
            deletions_failed = s.failed,
            bytes_freed = s.bytes_freed,
            "progress: sweeping"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_says_what_the_run_does_and_how_far_it_is() {
        let progress = Progress::default();
        let requests = Requests {
            list: 12,
            get: 3,
            ..Requests::default()
        };
        assert_eq!(
            progress.snapshot(requests).line(),
            "reading the storage: 12 listings, 3 reads, 0 lookups"
        );
        progress.begin(200);
        progress.enter(Phase::Blobs);
        progress.advance(50, 0, 3 << 20);
        let line = progress.snapshot(requests).line();
        assert_eq!(
            line,
            format!(
                "sweeping [{}{}] 50/200 deletions (3.0 MiB), phase blobs",
                "#".repeat(6),
                "-".repeat(18)
            )
        );
        progress.advance(150, 2, 0);
        let done = progress.snapshot(requests);
        assert_eq!(
            (done.settled, done.failed, done.phase),
            (200, 2, Some(Phase::Blobs))
        );
        assert!(done.line().contains(&"#".repeat(24)) && done.line().ends_with("2 failed"));
    }
}
