//! The run lock on real object stores: S3 conditional writes (If-None-Match / If-Match) on
//! `moto_server`, Azure's on Azurite. Same protocol as on the filesystem (unit-tested in
//! `src/lock.rs`); what is checked here is that each store really refuses the second writer.

pub mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use regsweep::config::load_registry_config;
use regsweep::layout::RUN_LOCK;
use regsweep::lock::{LockError, LockOptions, LockRecord, RunLock};
use regsweep::run_id::RunId;
use regsweep::storage::{self, PutCondition, Storage};
use support::azurite::{ACCOUNT_KEY, Azurite};
use support::s3::MotoServer;

fn open(dir: &tempfile::TempDir, yaml: &str) -> Arc<dyn Storage> {
    let path = dir.path().join("config.yml");
    std::fs::write(&path, yaml).unwrap();
    let config = load_registry_config(&path, std::iter::empty()).unwrap();
    storage::open(&config, &Default::default()).unwrap()
}

fn options(lease: Duration, force: bool) -> LockOptions {
    LockOptions {
        key: regsweep::layout::RUN_LOCK.to_owned(),
        run: RunId::new(SystemTime::now()),
        command: "gc".to_owned(),
        lease,
        force,
    }
}

async fn holder(storage: &Arc<dyn Storage>) -> LockRecord {
    serde_json::from_slice(&storage.get(RUN_LOCK).await.unwrap()).unwrap()
}

async fn exercise(storage: Arc<dyn Storage>) {
    let short = Duration::from_secs(1);
    let first = RunLock::acquire(Arc::clone(&storage), options(short, false))
        .await
        .unwrap();
    let first_run = holder(&storage).await.run;
    let refused = RunLock::acquire(Arc::clone(&storage), options(short, false))
        .await
        .unwrap_err();
    assert!(
        matches!(refused, LockError::Held { ref run, .. } if *run == first_run),
        "{refused}"
    );

    // Renewals go on (the lease of 1 s would otherwise have run out)…
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!first.lost().load(Ordering::SeqCst));
    assert!(
        RunLock::acquire(Arc::clone(&storage), options(short, false))
            .await
            .is_err(),
        "a renewed lock was taken over"
    );
    // … until a forced take-over, which the first holder notices.
    let forced = RunLock::acquire(Arc::clone(&storage), options(Duration::from_secs(60), true))
        .await
        .unwrap();
    let forced_run = holder(&storage).await.run;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(first.lost().load(Ordering::SeqCst));
    first.release().await;
    assert_eq!(
        holder(&storage).await.run,
        forced_run,
        "the loser released another's lock"
    );
    forced.release().await;
    assert!(holder(&storage).await.released);

    // A lock whose lease ran out long ago is taken over.
    let mut stale = holder(&storage).await;
    stale.released = false;
    stale.renewed =
        humantime::format_rfc3339_seconds(SystemTime::now() - Duration::from_secs(7200))
            .to_string();
    storage
        .put(
            RUN_LOCK,
            serde_json::to_vec(&stale).unwrap(),
            PutCondition::Overwrite,
        )
        .await
        .unwrap();
    RunLock::acquire(Arc::clone(&storage), options(short, false))
        .await
        .unwrap()
        .release()
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_run_lock_holds_on_s3() {
    let moto = MotoServer::start();
    moto.create_bucket("locks");
    let dir = tempfile::tempdir().unwrap();
    let storage = open(
        &dir,
        &format!(
            "version: 0.1\nstorage:\n  s3:\n    accesskey: test\n    secretkey: test\n    \
             region: us-east-1\n    bucket: locks\n    regionendpoint: {}\n    rootdirectory: /reg\n",
            moto.endpoint()
        ),
    );
    exercise(storage).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_run_lock_holds_on_azure() {
    let azurite = Azurite::start();
    azurite.create_container("locks");
    let dir = tempfile::tempdir().unwrap();
    let storage = open(
        &dir,
        &format!(
            "version: 0.1\nstorage:\n  azure:\n    accountname: devstoreaccount1\n    \
             accountkey: {ACCOUNT_KEY}\n    container: locks\n    serviceurl: {}\n    \
             rootdirectory: /reg\n",
            azurite.service_url()
        ),
    );
    exercise(storage).await;
}
