//! Peak memory of a whole dry-run collection at scale, fed by a synthetic listing.
//!
//! ```text
//! cargo bench --bench scale_memory -- 1000000 3000000 10000000
//! ```
//!
//! Each size runs in a child process of its own (peak RSS is per process) and prints one JSON line:
//! blobs, peak RSS, bytes per blob, seconds, and what the dry run planned, checked against the ground
//! truth of the synthetic registry (a wrong plan fails the benchmark: a fast wrong answer is no
//! result). The storage is generated on the fly — listings, tag links and manifests — so the
//! measurement is regsweep's own memory, not a filesystem's or an object store's.
//!
//! The synthetic registry is `support/synthetic.rs`.

#[path = "support/synthetic.rs"]
mod synthetic;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant, SystemTime};

use regsweep::gc::{Collection, GcOptions};
use regsweep::progress::Progress;
use regsweep::storage::Storage;
use synthetic::{SyntheticRegistry, peak_rss};

fn measure(blobs: u32) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let baseline = peak_rss();
    let registry =
        SyntheticRegistry::new(blobs, SystemTime::now() - Duration::from_secs(2 * 86_400));
    let expected_garbage = registry.shape().garbage();
    let storage: Arc<dyn Storage> = Arc::new(registry);
    let started = Instant::now();
    let summary = runtime.block_on(async {
        let options = GcOptions {
            dry_run: true,
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
    assert_eq!(
        summary.blobs_deleted, expected_garbage,
        "planned blob deletions differ from the synthetic registry's garbage"
    );
    println!(
        "{}",
        serde_json::json!({
            "blobs": blobs,
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
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if let [flag, blobs] = args.as_slice()
        && flag == "--child"
    {
        measure(blobs.parse().expect("a blob count"));
        return;
    }
    let sizes: Vec<u32> = if !benching {
        vec![20_000]
    } else if args.is_empty() {
        vec![1_000_000, 3_000_000, 10_000_000]
    } else {
        args.iter()
            .map(|a| a.replace('_', "").parse().expect("blob counts"))
            .collect()
    };
    let me = std::env::current_exe().expect("the benchmark's path");
    for blobs in sizes {
        let status = std::process::Command::new(&me)
            .args(["--child", &blobs.to_string()])
            .status()
            .expect("run a measurement");
        assert!(status.success(), "the measurement at {blobs} blobs failed");
    }
}
