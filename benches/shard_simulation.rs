//! A sharded collection at scale on one machine: a synthetic registry (`support/synthetic.rs`, 10 M
//! blobs by default) marked once, then swept by N shard processes, against the same registry
//! collected by one `gc`-like process.
//!
//! ```text
//! cargo bench --bench shard_simulation -- 10000000 4
//! cargo bench --bench shard_simulation -- --images-per-repository 1000000 1000000 4
//! ```
//!
//! `--images-per-repository N` puts N images in every repository instead of four (`1000000`: one
//! huge repository, which one shard owns).
//!
//! Every step runs in a child process of its own (peak RSS is per process): `gc` (scan, mark, plan,
//! re-mark and sweep in one), `mark` (the same up to the plan, then the mark state, written to a
//! temporary file), and `sweep --shard I/N` for each I. The synthetic storage accepts and records
//! every deletion, changing nothing, so every process sees the same registry. The parent checks that
//! the single run deleted exactly the synthetic registry's garbage, that the shards deleted every
//! blob the single run deleted exactly once (each only blobs of its own
//! shard) and that their summed counters equal the single run's, and prints one JSON line per
//! process and a Markdown table. With `RUST_LOG=regsweep=info`, each step also logs its stages
//! and its resident set every 250 ms on stderr (where the peak is).

#[path = "support/synthetic.rs"]
mod synthetic;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use roaring::RoaringBitmap;
use serde_json::{Value, json};

use regsweep::gc::{Collection, GcOptions};
use regsweep::progress::Progress;
use regsweep::run_id::RunId;
use regsweep::shard::Shard;
use regsweep::state::{Expectations, MarkState, StateLocation};
use regsweep::storage::Storage;
use synthetic::{Shape, SyntheticRegistry, peak_rss};

/// The synthetic storage's ID (`_regsweep/id` elsewhere).
const ID: &str = "synthetic";
/// The registry's age: past the grace period.
const AGE: Duration = Duration::from_secs(2 * 86_400);
const MIN_AGE: Duration = Duration::from_secs(3600);
const UPLOAD_MAX_AGE: Duration = Duration::from_secs(86_400);
/// What the summaries count of the work, compared between the single run and the shards' sum.
const WORK: [&str; 6] = [
    "blobs_deleted",
    "bytes_deleted",
    "manifests_deleted",
    "links_deleted",
    "tags_deleted",
    "repositories_deleted",
];

fn options() -> GcOptions {
    GcOptions {
        dry_run: false,
        delete_untagged: false,
        min_age: MIN_AGE,
        upload_max_age: UPLOAD_MAX_AGE,
        concurrency: 64,
        pause_before_sweep: None,
        quarantine: None,
    }
}

/// One step, in this (child) process: `gc`, `mark` or `sweep I N`. Writes the blobs it deleted
/// (a roaring bitmap of synthetic blob indices) to `deleted`, and prints one JSON line.
fn child(step: &[String], shape: Shape, created: SystemTime, state: &Path, deleted: &Path) {
    synthetic::log_stages_and_rss();
    let blobs = shape.blobs;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let registry = SyntheticRegistry::new(shape, created);
    let garbage = registry.shape().garbage();
    let recorded = Arc::clone(&registry.deleted);
    let storage: Arc<dyn Storage> = Arc::new(registry);
    let started = Instant::now();
    let halt = Arc::new(AtomicBool::new(false));
    let location = StateLocation::File(state.to_owned());
    let mut line = json!({ "step": step.join(" "), "blobs": blobs });
    let summary = runtime.block_on(async {
        match step[0].as_str() {
            "gc" => {
                let collection = Collection::prepare(Arc::clone(&storage), options())
                    .await
                    .expect("the synthetic registry collects");
                let summary = collection.run(halt, &Progress::default()).await;
                assert_eq!(
                    summary.blobs_deleted, garbage,
                    "the synthetic registry's garbage"
                );
                Some(summary)
            }
            "mark" => {
                let collection = Collection::prepare(Arc::clone(&storage), options())
                    .await
                    .expect("the synthetic registry marks");
                // The synthetic storage takes no writes: its ID is given, not stored.
                let state = collection.into_state(&RunId::new(SystemTime::now()), ID.to_owned());
                let bytes = state.encode();
                line["state_bytes"] = json!(bytes.len());
                line["live_blobs"] = json!(state.header.live_blobs);
                location
                    .write(&storage, bytes)
                    .await
                    .expect("write the state");
                None
            }
            "sweep" => {
                let shard = Shard::new(step[1].parse().unwrap(), step[2].parse().unwrap()).unwrap();
                let read = location.read(&storage).await.expect("read the state");
                let state = MarkState::decode(&read, &location).expect("a sound state");
                drop(read); // as `regsweep sweep` does
                let expect = Expectations {
                    storage: storage.to_string(),
                    storage_id: Some(ID.to_owned()),
                    delete_untagged: false,
                    min_age: MIN_AGE,
                    upload_max_age: UPLOAD_MAX_AGE,
                    max_age: Duration::from_secs(86_400),
                    now: SystemTime::now(),
                };
                state.check(&location, &expect).expect("a state to sweep");
                let collection =
                    Collection::prepare_sweep(Arc::clone(&storage), options(), state, shard)
                        .await
                        .expect("the shard sweeps");
                Some(collection.run(halt, &Progress::default()).await)
            }
            other => panic!("unknown step {other}"),
        }
    });
    let seconds = started.elapsed().as_secs_f64();
    let peak = peak_rss();
    if let Some(summary) = summary {
        assert_eq!(summary.errors, 0, "{:?}", summary.error_messages);
        let summary = serde_json::to_value(&summary).unwrap();
        for field in WORK.iter().chain(&["blobs_total", "repositories"]) {
            line[field] = summary[field].clone();
        }
    }
    let blobs_deleted = recorded.blobs.lock().unwrap();
    let mut out = Vec::new();
    blobs_deleted.serialize_into(&mut out).unwrap();
    std::fs::write(deleted, out).unwrap();
    line["other_keys_deleted"] = json!(recorded.other_keys.load(Ordering::Relaxed));
    line["peak_rss_bytes"] = json!(peak);
    line["bytes_per_blob"] = json!(peak as f64 / f64::from(blobs));
    line["seconds"] = json!(seconds);
    println!("{line}");
}

/// Runs one step in a child process; returns its JSON line and the blobs it deleted.
fn run(
    me: &Path,
    step: &[&str],
    shape: Shape,
    created: SystemTime,
    dir: &Path,
) -> (Value, RoaringBitmap) {
    let deleted = dir.join(format!("{}.deleted", step.join("-")));
    let created_ms = created
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let out = std::process::Command::new(me)
        .arg("--child")
        .args([
            shape.blobs.to_string(),
            shape.images_per_repository.to_string(),
            created_ms.to_string(),
        ])
        .arg(dir.join("mark.state"))
        .arg(&deleted)
        .args(step)
        .output()
        .expect("run a step");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{step:?} failed\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    if std::env::var_os("RUST_LOG").is_some() {
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
    }
    print!("{stdout}");
    let line: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let bitmap = RoaringBitmap::deserialize_from(&std::fs::read(&deleted).unwrap()[..]).unwrap();
    (line, bitmap)
}

fn simulate(shape: Shape, shards: u32) {
    let me = std::env::current_exe().expect("the benchmark's path");
    let dir = tempfile::tempdir().unwrap();
    let created = SystemTime::now() - AGE;
    let (single, single_deleted) = run(&me, &["gc"], shape, created, dir.path());
    let (mark, _) = run(&me, &["mark"], shape, created, dir.path());
    let mut rows = vec![single.clone(), mark];
    let mut union = RoaringBitmap::new();
    let mut total = [0u64; WORK.len()];
    for i in 0..shards {
        let (line, deleted) = run(
            &me,
            &["sweep", &i.to_string(), &shards.to_string()],
            shape,
            created,
            dir.path(),
        );
        // Synthetic blob `b` is stored under the first byte `b % 256`.
        assert!(
            deleted.iter().all(|b| (b % 256) % shards == i),
            "shard {i}/{shards} deleted blobs of another shard"
        );
        assert!(
            union.is_disjoint(&deleted),
            "shard {i} deleted blobs another shard deleted"
        );
        union |= deleted;
        for (sum, field) in total.iter_mut().zip(WORK) {
            *sum += line[field].as_u64().unwrap();
        }
        rows.push(line);
    }
    assert_eq!(
        union, single_deleted,
        "the shards together deleted other blobs than one run"
    );
    for (sum, field) in total.iter().zip(WORK) {
        assert_eq!(
            Some(*sum),
            single[field].as_u64(),
            "`{field}` summed over the shards"
        );
    }
    println!(
        "\n| step | seconds | peak RSS MiB | B/blob | blobs listed | blobs deleted | other keys deleted |"
    );
    println!("|---|--:|--:|--:|--:|--:|--:|");
    for row in &rows {
        let field = |name: &str| row[name].as_u64().map_or("–".to_owned(), |n| n.to_string());
        println!(
            "| {} | {:.0} | {} | {:.0} | {} | {} | {} |",
            row["step"].as_str().unwrap(),
            row["seconds"].as_f64().unwrap(),
            row["peak_rss_bytes"].as_u64().unwrap() >> 20,
            row["bytes_per_blob"].as_f64().unwrap(),
            field("blobs_total"),
            field("blobs_deleted"),
            field("other_keys_deleted"),
        );
    }
    println!(
        "\n{shards} shards deleted {} blobs, each exactly once, the same as one run; summed \
         counters equal: {WORK:?}",
        union.len()
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this without it, and then a
    // small registry checks the shards against one run.
    let benching = std::env::args().any(|a| a == "--bench");
    let mut args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if let [flag, blobs, images, created_ms, state, deleted, step @ ..] = args.as_slice()
        && flag == "--child"
    {
        let shape =
            Shape::new(blobs.parse().unwrap()).images_per_repository(images.parse().unwrap());
        let created = SystemTime::UNIX_EPOCH + Duration::from_millis(created_ms.parse().unwrap());
        child(
            step,
            shape,
            created,
            &PathBuf::from(state),
            Path::new(deleted),
        );
        return;
    }
    let mut images = synthetic::IMAGES_PER_REPOSITORY;
    if let Some(at) = args.iter().position(|a| a == "--images-per-repository") {
        let n = args
            .drain(at..at + 2)
            .nth(1)
            .expect("--images-per-repository N");
        images = n.replace('_', "").parse().expect("a number");
    }
    let (blobs, shards) = match args.as_slice() {
        _ if !benching => (20_000, 4),
        [] => (10_000_000, 4),
        [blobs] => (blobs.replace('_', "").parse().expect("a blob count"), 4),
        [blobs, shards, ..] => (
            blobs.replace('_', "").parse().expect("a blob count"),
            shards.parse().expect("a shard count"),
        ),
    };
    simulate(Shape::new(blobs).images_per_repository(images), shards);
}
