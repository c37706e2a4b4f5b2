//! The run lock: two regsweep runs never delete from the same storage at once.
//!
//! The lock is one small JSON object, [`crate::layout::RUN_LOCK`], in the storage itself — the only thing
//! every run on every machine shares — written with conditional puts (create-if-absent, then
//! compare-and-swap on its version), which S3, Azure, GCS and the filesystem backend all offer. It
//! names its holder, when the run started, and a lease: the holder renews it every quarter of the
//! lease, and a lock whose lease ran out (its holder died: `kill -9`, a lost node) may be taken over
//! by the next run. `--force` takes it over at once. A released lock stays as a record of the last
//! run, marked released.
//!
//! A holder that cannot renew its lease for a whole lease, or finds that another run took the lock
//! over, stops deleting ([`RunLock::lost`]): after that instant the other run may already be sweeping.
//! Lease expiry compares clocks of different machines: keep them synchronised (NTP) and the lease
//! well above any skew.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::layout;
use crate::run_id::RunId;
use crate::storage::{PutCondition, Storage, StorageError, Version};

/// What the lock object says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRecord {
    /// The run holding (or, once released, last holding) the lock.
    pub run: String,
    /// Who runs it: host name and process ID.
    pub owner: String,
    /// The subcommand (`gc`, `restore`, …).
    pub command: String,
    /// RFC 3339, UTC.
    pub started: String,
    /// When the holder last renewed the lease (RFC 3339, UTC).
    pub renewed: String,
    pub lease_seconds: u64,
    pub released: bool,
}

impl LockRecord {
    /// The instant after which the lock may be taken over, if it can be read.
    fn expires(&self) -> Option<SystemTime> {
        let renewed = humantime::parse_rfc3339(&self.renewed).ok()?;
        renewed.checked_add(Duration::from_secs(self.lease_seconds))
    }
}

#[derive(Debug, Error)]
pub enum LockError {
    #[error(
        "another regsweep run holds the lock {key}: run {run} by {owner} ({command}), started {started}, \
         lease renewed {renewed}, expires {expires}; wait for it, or use --force if it is certainly gone"
    )]
    Held {
        key: String,
        run: String,
        owner: String,
        command: String,
        started: String,
        renewed: String,
        expires: String,
    },
    #[error("the lock {key} is not a regsweep lock record ({reason}); remove it, or use --force")]
    Corrupt { key: String, reason: String },
    #[error("the lock {key} kept changing while it was taken; is another run starting?")]
    Contended { key: String },
    #[error("cannot take the run lock: {0}")]
    Storage(#[from] StorageError),
}

/// How to take the lock.
#[derive(Debug, Clone)]
pub struct LockOptions {
    /// The lock object: [`crate::layout::RUN_LOCK`], or a shard's ([`crate::layout::run_lock`]).
    pub key: String,
    pub run: RunId,
    pub command: String,
    pub lease: Duration,
    /// Take the lock over even if its lease has not run out.
    pub force: bool,
}

/// A held run lock. Renews itself in the background until [`RunLock::release`].
#[derive(Debug)]
pub struct RunLock {
    storage: Arc<dyn Storage>,
    state: Arc<Mutex<Held>>,
    lost: Arc<AtomicBool>,
    heartbeat: JoinHandle<()>,
}

#[derive(Debug)]
struct Held {
    key: String,
    record: LockRecord,
    version: Version,
}

/// Milliseconds: a lease may be short (seconds, in tests), and a whole-second stamp would cut it.
fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

/// This machine and process, as the lock names its holder.
fn owner() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".to_owned());
    format!("{host} pid {}", std::process::id())
}

fn encode(record: &LockRecord) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(record).expect("a lock record serialises");
    bytes.push(b'\n');
    bytes
}

impl RunLock {
    /// Takes the lock, or says who holds it — or who holds a lock it excludes: the whole
    /// registry's lock ([`crate::layout::RUN_LOCK`]: `gc`, `delete`, `prune`, `restore`, `purge`,
    /// an unsharded `sweep`) and the shards' locks exclude each other; shards do not exclude one
    /// another. `--force` takes over only the lock itself.
    pub async fn acquire(
        storage: Arc<dyn Storage>,
        options: LockOptions,
    ) -> Result<RunLock, LockError> {
        let own = options.key.clone();
        let lock = Self::take(Arc::clone(&storage), options).await?;
        // Taken first, then checked: of two runs that start at once, at least one sees the other.
        match excluded_by(&storage, &own).await {
            Ok(None) => Ok(lock),
            Ok(Some(error)) | Err(error) => {
                lock.release().await;
                Err(error)
            }
        }
    }

    async fn take(storage: Arc<dyn Storage>, options: LockOptions) -> Result<RunLock, LockError> {
        let key = options.key.as_str();
        let now = SystemTime::now();
        let record = LockRecord {
            run: options.run.to_string(),
            owner: owner(),
            command: options.command.clone(),
            started: rfc3339(now),
            renewed: rfc3339(now),
            lease_seconds: options.lease.as_secs().max(1),
            released: false,
        };
        // A few rounds: each lost race means another run changed the lock in between.
        for _ in 0..3 {
            match storage
                .put(key, encode(&record), PutCondition::Absent)
                .await
            {
                Ok(version) => return Ok(Self::held(storage, key, record, version, options.lease)),
                Err(StorageError::PreconditionFailed { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            let (content, version) = match storage.get_versioned(key).await {
                Ok(found) => found,
                // Released and removed by hand in between: try to create it again.
                Err(StorageError::NotFound { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            match serde_json::from_slice::<LockRecord>(&content) {
                Ok(existing) => {
                    let expired = existing.expires().is_none_or(|at| at <= now);
                    if !(existing.released || expired || options.force) {
                        return Err(LockError::Held {
                            key: key.to_owned(),
                            expires: existing.expires().map_or_else(|| "?".to_owned(), rfc3339),
                            run: existing.run,
                            owner: existing.owner,
                            command: existing.command,
                            started: existing.started,
                            renewed: existing.renewed,
                        });
                    }
                    if !existing.released {
                        warn!(
                            run = existing.run,
                            owner = existing.owner,
                            renewed = existing.renewed,
                            forced = options.force,
                            "taking over the run lock of a run that did not release it"
                        );
                    }
                }
                Err(e) if options.force => {
                    warn!(error = %e, "taking over a run lock that is not a lock record");
                }
                Err(e) => {
                    return Err(LockError::Corrupt {
                        key: key.to_owned(),
                        reason: e.to_string(),
                    });
                }
            }
            match storage
                .put(key, encode(&record), PutCondition::Matches(version))
                .await
            {
                Ok(version) => return Ok(Self::held(storage, key, record, version, options.lease)),
                Err(StorageError::PreconditionFailed { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(LockError::Contended {
            key: key.to_owned(),
        })
    }

    fn held(
        storage: Arc<dyn Storage>,
        key: &str,
        record: LockRecord,
        version: Version,
        lease: Duration,
    ) -> RunLock {
        info!(
            run = record.run,
            lease_seconds = record.lease_seconds,
            "took the run lock"
        );
        let key = key.to_owned();
        let state = Arc::new(Mutex::new(Held {
            key,
            record,
            version,
        }));
        let lost = Arc::new(AtomicBool::new(false));
        let heartbeat = tokio::spawn(renew(
            Arc::clone(&storage),
            Arc::clone(&state),
            Arc::clone(&lost),
            lease,
        ));
        RunLock {
            storage,
            state,
            lost,
            heartbeat,
        }
    }

    /// Set once the lock can no longer be trusted: deleting must stop.
    pub fn lost(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.lost)
    }

    /// Stops renewing and marks the lock released (unless another run took it over meanwhile).
    pub async fn release(self) {
        self.heartbeat.abort();
        let _ = self.heartbeat.await;
        let mut held = self.state.lock().await;
        if self.lost.load(Ordering::SeqCst) {
            warn!(
                run = held.record.run,
                "the run lock was lost before the end of the run"
            );
            return;
        }
        held.record.released = true;
        held.record.renewed = rfc3339(SystemTime::now());
        let condition = PutCondition::Matches(held.version.clone());
        match self
            .storage
            .put(&held.key, encode(&held.record), condition)
            .await
        {
            Ok(_) => info!(run = held.record.run, "released the run lock"),
            Err(e) => {
                warn!(error = %e, "could not release the run lock; the next run takes it over once its lease runs out")
            }
        }
    }
}

/// A lock held by another run that excludes the lock `own` (see [`RunLock::acquire`]).
async fn excluded_by(
    storage: &Arc<dyn Storage>,
    own: &str,
) -> Result<Option<LockError>, LockError> {
    let whole = |key: &str| key == layout::RUN_LOCK;
    let now = SystemTime::now();
    for object in storage.list_dir(layout::REGSWEEP).await?.objects {
        let key = object.key;
        if key == own || !key.starts_with(layout::RUN_LOCK) || !(whole(own) || whole(&key)) {
            continue;
        }
        let (content, version) = match storage.get_versioned(&key).await {
            Ok(found) => found,
            Err(StorageError::NotFound { .. }) => continue,
            Err(e) => return Err(e.into()),
        };
        let mut record: LockRecord =
            serde_json::from_slice(&content).map_err(|e| LockError::Corrupt {
                key: key.clone(),
                reason: e.to_string(),
            })?;
        if record.released {
            continue;
        }
        let expires = record.expires();
        let held = LockError::Held {
            key: key.clone(),
            expires: expires.map_or_else(|| "?".to_owned(), rfc3339),
            run: record.run.clone(),
            owner: record.owner.clone(),
            command: record.command.clone(),
            started: record.started.clone(),
            renewed: record.renewed.clone(),
        };
        if expires.is_some_and(|at| at > now) {
            return Ok(Some(held));
        }
        // Its lease ran out, but its holder may still be running: marked released, so that the
        // holder's next renewal fails and it stops deleting. Renewed in between: it is alive.
        record.released = true;
        match storage
            .put(&key, encode(&record), PutCondition::Matches(version))
            .await
        {
            Ok(_) => warn!(
                key,
                run = record.run,
                "released the expired lock of a run that excludes this one"
            ),
            Err(StorageError::PreconditionFailed { .. }) => return Ok(Some(held)),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(None)
}

/// Renews the lease every quarter of it; marks the lock lost when another run took it over, or when
/// no renewal succeeded for a whole lease.
async fn renew(
    storage: Arc<dyn Storage>,
    state: Arc<Mutex<Held>>,
    lost: Arc<AtomicBool>,
    lease: Duration,
) {
    let period = (lease / 4).max(Duration::from_millis(250));
    let mut last_renewal = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(period).await;
        let mut held = state.lock().await;
        held.record.renewed = rfc3339(SystemTime::now());
        let condition = PutCondition::Matches(held.version.clone());
        match storage
            .put(&held.key, encode(&held.record), condition)
            .await
        {
            Ok(version) => {
                held.version = version;
                last_renewal = tokio::time::Instant::now();
            }
            Err(StorageError::PreconditionFailed { .. }) => {
                warn!(
                    run = held.record.run,
                    "another run took the run lock over; stopping"
                );
                lost.store(true, Ordering::SeqCst);
                return;
            }
            Err(e) if last_renewal.elapsed() >= lease => {
                warn!(error = %e, "could not renew the run lock for a whole lease; stopping");
                lost.store(true, Ordering::SeqCst);
                return;
            }
            Err(e) => warn!(error = %e, "could not renew the run lock; retrying"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::local::LocalStorage;

    fn options(force: bool, lease: Duration) -> LockOptions {
        LockOptions {
            key: layout::RUN_LOCK.to_owned(),
            run: RunId::new(SystemTime::now()),
            command: "gc".to_owned(),
            lease,
            force,
        }
    }

    fn storage(dir: &std::path::Path) -> Arc<dyn Storage> {
        Arc::new(LocalStorage::open(dir, &Default::default()).unwrap())
    }

    async fn record(storage: &Arc<dyn Storage>) -> LockRecord {
        serde_json::from_slice(&storage.get(layout::RUN_LOCK).await.unwrap()).unwrap()
    }

    #[tokio::test]
    async fn the_whole_registry_lock_and_shard_locks_exclude_each_other_and_shards_do_not() {
        use crate::shard::Shard;
        let dir = tempfile::tempdir().unwrap();
        let storage = storage(dir.path());
        let hour = Duration::from_secs(3600);
        let shard = |i| LockOptions {
            key: layout::run_lock(&Shard::new(i, 4).unwrap()),
            command: "sweep".to_owned(),
            ..options(false, hour)
        };
        let first = RunLock::acquire(Arc::clone(&storage), shard(0))
            .await
            .unwrap();
        let second = RunLock::acquire(Arc::clone(&storage), shard(1))
            .await
            .unwrap();
        // A gc (or restore, purge…) is refused while a shard sweeps, naming the shard's lock…
        let err = RunLock::acquire(Arc::clone(&storage), options(false, hour))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("_regsweep/lock-shard-"), "{err}");
        // … and leaves its own lock released, not held.
        assert!(record(&storage).await.released);
        // --force takes over only the lock itself.
        assert!(
            RunLock::acquire(Arc::clone(&storage), options(true, hour))
                .await
                .is_err()
        );
        first.release().await;
        second.release().await;
        let gc = RunLock::acquire(Arc::clone(&storage), options(false, hour))
            .await
            .unwrap();
        let err = RunLock::acquire(Arc::clone(&storage), shard(2))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("holds the lock _regsweep/lock:"), "{err}");
        gc.release().await;
        RunLock::acquire(Arc::clone(&storage), shard(2))
            .await
            .unwrap()
            .release()
            .await;
    }

    #[tokio::test]
    async fn a_held_lock_refuses_a_second_run_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let storage = storage(dir.path());
        let hour = Duration::from_secs(3600);
        let first = RunLock::acquire(Arc::clone(&storage), options(false, hour))
            .await
            .unwrap();
        let err = RunLock::acquire(Arc::clone(&storage), options(false, hour))
            .await
            .unwrap_err();
        assert!(matches!(err, LockError::Held { .. }), "{err}");
        assert!(err.to_string().contains("pid"), "{err}");
        first.release().await;
        assert!(record(&storage).await.released);
        let second = RunLock::acquire(Arc::clone(&storage), options(false, hour))
            .await
            .unwrap();
        assert!(!record(&storage).await.released);
        second.release().await;
    }

    #[tokio::test]
    async fn an_expired_lease_or_force_takes_over_and_the_old_holder_notices() {
        let dir = tempfile::tempdir().unwrap();
        let storage = storage(dir.path());
        let mut stale = record_for("dead", Duration::from_secs(60));
        stale.renewed = rfc3339(SystemTime::now() - Duration::from_secs(120));
        storage
            .put(layout::RUN_LOCK, encode(&stale), PutCondition::Overwrite)
            .await
            .unwrap();
        let taker = RunLock::acquire(Arc::clone(&storage), options(false, Duration::from_secs(1)))
            .await
            .unwrap();
        assert_ne!(record(&storage).await.run, "dead");

        // A fresh lock is taken over only by force; the old holder then finds out and stops.
        let forcer = RunLock::acquire(
            Arc::clone(&storage),
            options(true, Duration::from_secs(3600)),
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(taker.lost().load(Ordering::SeqCst));
        assert!(!forcer.lost().load(Ordering::SeqCst));
        let forcer_run = record(&storage).await.run;
        taker.release().await;
        assert_eq!(
            record(&storage).await.run,
            forcer_run,
            "the loser must not release"
        );
        forcer.release().await;
    }

    #[tokio::test]
    async fn an_expired_lock_of_the_other_kind_is_released_so_that_its_holder_stops() {
        use crate::shard::Shard;
        let dir = tempfile::tempdir().unwrap();
        let storage = storage(dir.path());
        let key = layout::run_lock(&Shard::new(1, 4).unwrap());
        let mut stale = record_for("stalled", Duration::from_secs(60));
        stale.renewed = rfc3339(SystemTime::now() - Duration::from_secs(120));
        storage
            .put(&key, encode(&stale), PutCondition::Overwrite)
            .await
            .unwrap();
        let gc = RunLock::acquire(
            Arc::clone(&storage),
            options(false, Duration::from_secs(3600)),
        )
        .await
        .unwrap();
        let shard: LockRecord = serde_json::from_slice(&storage.get(&key).await.unwrap()).unwrap();
        assert!(
            shard.released,
            "a renewal by the stalled shard would still succeed"
        );
        assert_eq!(shard.run, stale.run);
        gc.release().await;
    }

    #[tokio::test]
    async fn a_corrupt_lock_is_refused_unless_forced() {
        let dir = tempfile::tempdir().unwrap();
        let storage = storage(dir.path());
        storage
            .put(
                layout::RUN_LOCK,
                b"not json".to_vec(),
                PutCondition::Overwrite,
            )
            .await
            .unwrap();
        let err = RunLock::acquire(
            Arc::clone(&storage),
            options(false, Duration::from_secs(60)),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains(layout::RUN_LOCK), "{err}");
        RunLock::acquire(storage, options(true, Duration::from_secs(60)))
            .await
            .unwrap()
            .release()
            .await;
    }

    fn record_for(run: &str, lease: Duration) -> LockRecord {
        let now = rfc3339(SystemTime::now());
        LockRecord {
            run: run.to_owned(),
            owner: "elsewhere pid 1".to_owned(),
            command: "gc".to_owned(),
            started: now.clone(),
            renewed: now,
            lease_seconds: lease.as_secs(),
            released: false,
        }
    }
}
