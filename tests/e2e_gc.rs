//! End-to-end tests of `regsweep gc` against storage written by the real registry.

pub mod support;

use support::Fixture;
use support::storage::{dangling_links, storage_blobs};

#[test]
fn smoke_harness_pushes_pulls_and_matches_the_official_gc() {
    let mut f = Fixture::build();
    eprintln!("workload: {}", f.model.describe());
    eprintln!("{}", f.model.to_json().len());
    f.registry.restart();
    let v2 = f.v2_root();
    assert_eq!(storage_blobs(&v2), f.model.all_blobs());
    assert!(dangling_links(&v2).is_empty(), "{:?}", dangling_links(&v2));
    let report = support::verify_pulls(&f.client, &f.model);
    report.assert_ok("verify_pulls");
    eprintln!("{}", report.summary());
    let gc = f.registry.official_gc(true, false);
    eprintln!("{}", gc.stdout);
    eprintln!("{}", gc.stderr);
}
