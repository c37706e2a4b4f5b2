//! Peak memory of a whole collection at scale, fed by a synthetic listing.
//!
//! ```text
//! cargo bench --bench scale_memory -- 1000000 3000000 10000000
//! cargo bench --bench scale_memory -- --sweep 1000000
//! cargo bench --bench scale_memory -- --images-per-repository 1000000 --sweep 100000 200000
//! ```
//!
//! Each size runs in a child process of its own (peak RSS is per process) and prints one JSON line:
//! blobs, peak RSS, bytes per blob, seconds, and what the run planned, checked against the ground
//! truth of the synthetic registry (a wrong plan fails the benchmark: a fast wrong answer is no
//! result). The storage is generated on the fly — listings, tag links and manifests — so the
//! measurement is regsweep's own memory, not a filesystem's or an object store's.
//!
//! A dry run by default; with `--sweep`, the whole `gc` (re-mark and sweep too), whose deletions the
//! synthetic storage accepts and records without changing anything. `--images-per-repository N`
//! puts N images (nine blobs each) in every repository instead of four: `1000000` makes one huge
//! repository, where anything quadratic in a repository's size shows.
//!
//! The synthetic registry is `support/synthetic.rs`. With `RUST_LOG=regsweep=info`, each run also
//! logs its stages and its resident set every 250 ms on stderr (where the peak is).

#[path = "support/synthetic.rs"]
mod synthetic;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant, SystemTime};

use regsweep::gc::{Collection, GcOptions};
use regsweep::progress::Progress;
use regsweep::storage::Storage;
use synthetic::{Shape, SyntheticRegistry, peak_rss};

/// What one measurement runs on, and how.
#[derive(Debug, Clone, Copy)]
struct Run {
    images_per_repository: u32,
    sweep: bool,
}

fn measure(blobs: u32, run: Run) {
    synthetic::log_stages_and_rss();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let baseline = peak_rss();
    let shape = Shape::new(blobs).images_per_repository(run.images_per_repository);
    let registry =
        SyntheticRegistry::new(shape, SystemTime::now() - Duration::from_secs(2 * 86_400));
    let expected_garbage = registry.shape().garbage();
    let storage: Arc<dyn Storage> = Arc::new(registry);
    let started = Instant::now();
    let summary = runtime.block_on(async {
        let options = GcOptions {
            dry_run: !run.sweep,
            delete_untagged: false,
            min_age: Duration::from_secs(3600),
            upload_max_age: Duration::from_secs(86_400),
            concurrency: 64,
            pause_before_sweep: None,
            quarantine: None,
        };
        let collection = Collection::prepare(storage, options)
            .await
            .expect("the synthetic registry collects");
        collection
            .run(Arc::new(AtomicBool::new(false)), &Progress::default())
            .await
    });
    let seconds = started.elapsed().as_secs_f64();
    let peak = peak_rss();
    assert_eq!(summary.blobs_total, u64::from(blobs), "blobs listed");
    assert_eq!(summary.errors, 0, "{:?}", summary.error_messages);
    assert_eq!(
        summary.blobs_deleted, expected_garbage,
        "planned blob deletions differ from the synthetic registry's garbage"
    );
    println!(
        "{}",
        serde_json::json!({
            "blobs": blobs,
            "sweep": run.sweep,
            "images_per_repository": run.images_per_repository,
            "repositories": summary.repositories,
            "tags": summary.tags,
            "manifests": summary.manifests,
            "blobs_deleted": summary.blobs_deleted,
            "peak_rss_bytes": peak,
            "baseline_rss_bytes": baseline,
            "bytes_per_blob": peak as f64 / f64::from(blobs),
            "seconds": seconds,
        })
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this without it, and then a
    // small size checks the plan against the ground truth (in debug, the measurement sizes would
    // take many minutes).
    let benching = std::env::args().any(|a| a == "--bench");
    let mut run = Run {
        images_per_repository: synthetic::IMAGES_PER_REPOSITORY,
        sweep: false,
    };
    let mut child = false;
    let mut sizes: Vec<u32> = Vec::new();
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--child" => child = true,
            "--sweep" => run.sweep = true,
            "--images-per-repository" => {
                let n = args.next().expect("--images-per-repository N");
                run.images_per_repository = n.replace('_', "").parse().expect("a number");
            }
            size => sizes.push(size.replace('_', "").parse().expect("blob counts")),
        }
    }
    if child {
        measure(sizes[0], run);
        return;
    }
    let mut runs = vec![run];
    if !benching {
        // The ground truth at a small size, dry and swept, with the default repositories and with
        // one huge repository.
        sizes = vec![20_000];
        let huge = Run {
            images_per_repository: u32::MAX,
            sweep: true,
        };
        runs = vec![run, huge];
    } else if sizes.is_empty() {
        sizes = vec![1_000_000, 3_000_000, 10_000_000];
    }
    let me = std::env::current_exe().expect("the benchmark's path");
    for (blobs, run) in sizes
        .into_iter()
        .flat_map(|b| runs.iter().map(move |r| (b, *r)))
    {
        let mut command = std::process::Command::new(&me);
        command.args(["--child", &blobs.to_string()]);
        command.args([
            "--images-per-repository",
            &run.images_per_repository.to_string(),
        ]);
        if run.sweep {
            command.arg("--sweep");
        }
        let status = command.status().expect("run a measurement");
        assert!(status.success(), "the measurement at {blobs} blobs failed");
    }
}
