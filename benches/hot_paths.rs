//! Hot paths of a collection over a large registry: decoding keys and links, parsing manifests,
//! searching the blob universe, the mark set, and marking and planning a whole registry.

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use roaring::RoaringBitmap;

use regsweep::digest::Digest;
use regsweep::layout;
use regsweep::manifest::{ManifestKind, ManifestRefs, parse_manifest};
use regsweep::mark::{ManifestCatalog, MarkOptions, mark};
use regsweep::plan::{PlanOptions, plan};
use regsweep::scan::{BlobUniverse, Inventory, LayerLinks, Link, Repository, Tag, TagCurrent};

/// Deterministic, well-spread digests (splitmix64).
fn digests(n: usize) -> Vec<Digest> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    (0..n)
        .map(|_| {
            let mut bytes = [0u8; 32];
            for chunk in bytes.chunks_exact_mut(8) {
                state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                chunk.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
            }
            Digest::from_bytes(bytes)
        })
        .collect()
}

fn keys_and_links(c: &mut Criterion) {
    let digest = digests(1)[0];
    let blob_key = layout::blob_data(&digest);
    let layer_key = layout::layer_link("library/alpine", &digest);
    let link = digest.to_string();
    c.bench_function("parse_blob_key", |b| {
        b.iter(|| layout::parse_blob_key(black_box(&blob_key)))
    });
    c.bench_function("parse_repository_key", |b| {
        b.iter(|| layout::parse_repository_key(black_box(&layer_key)))
    });
    c.bench_function("parse_link", |b| {
        b.iter(|| layout::parse_link(black_box(link.as_bytes())))
    });
}

fn manifests(c: &mut Criterion) {
    let d = digests(9);
    let layers: Vec<String> = d[1..]
        .iter()
        .map(|l| {
            format!(r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{l}","size":31000000}}"#)
        })
        .collect();
    let image = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":7023}},"layers":[{}],"annotations":{{"org.opencontainers.image.created":"2026-11-01T00:00:00Z"}}}}"#,
        d[0],
        layers.join(",")
    );
    c.bench_function("parse_manifest/oci_image_8_layers", |b| {
        b.iter(|| parse_manifest(black_box(image.as_bytes())).unwrap())
    });
}

fn universe_and_mark_set(c: &mut Criterion) {
    const N: usize = 1_000_000;
    let all = digests(N);
    let universe = BlobUniverse::new(
        all.iter()
            .map(|d| (*d, 1, SystemTime::UNIX_EPOCH))
            .collect(),
    );
    let probes: Vec<Digest> = all.iter().step_by(997).copied().collect();
    c.bench_function("universe_index/1M", |b| {
        b.iter(|| {
            probes
                .iter()
                .filter_map(|p| universe.index(black_box(p)))
                .count()
        })
    });
    c.bench_function("mark_set_insert_every_third/1M", |b| {
        b.iter(|| {
            let mut marks = RoaringBitmap::new();
            for i in (0..N as u32).step_by(3) {
                marks.insert(i);
            }
            marks
        })
    });
    let mut marks = RoaringBitmap::new();
    marks.insert_range(0..N as u32 / 2);
    c.bench_function("mark_set_iterate_unmarked/1M", |b| {
        b.iter(|| (0..N as u32).filter(|&i| !marks.contains(i)).count())
    });
}

/// A registry of `images` images (a manifest, a config and three layers each, in repositories of
/// 20 images) in which every fifth image is untagged, plus `images` orphan blobs: `6 * images`
/// blobs in all, everything two hours old.
fn registry(images: usize) -> (Inventory, ManifestCatalog) {
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let all = digests(6 * images);
    let link = |digest: Digest| Link::new(digest, old);
    let universe = BlobUniverse::new(all.iter().map(|d| (*d, 1000, old)).collect());
    let mut repositories = Vec::new();
    let mut layer_links: Vec<Vec<Link>> = Vec::new();
    let mut refs = Vec::new();
    for (i, image) in all[..5 * images].chunks_exact(5).enumerate() {
        if i % 20 == 0 {
            repositories.push(Repository {
                name: format!("team{:03}/app{i:07}", i % 1000),
                ..Repository::default()
            });
            layer_links.push(Vec::new());
        }
        let repo = repositories.last_mut().expect("a repository");
        let (manifest, blobs) = (image[0], &image[1..]);
        repo.revisions.push(link(manifest));
        let links = layer_links.last_mut().expect("a repository's links");
        links.extend(blobs.iter().map(|&b| link(b)));
        if i % 5 != 4 {
            repo.tags.push(Tag {
                name: format!("v{i:07}"),
                current: Some(TagCurrent {
                    target: Ok(manifest),
                    modified: old,
                }),
                index: vec![link(manifest)],
            });
        }
        refs.push((
            manifest,
            ManifestRefs {
                kind: ManifestKind::OciImageManifest,
                manifests: Vec::new(),
                blobs: blobs.to_vec(),
                subject: None,
            },
        ));
    }
    for (repo, links) in repositories.iter_mut().zip(layer_links) {
        repo.revisions.sort_by_key(|l| l.digest);
        repo.layer_links = LayerLinks::resolved(links, &universe);
    }
    repositories.sort_by(|a, b| a.name.cmp(&b.name));
    let inventory = Inventory {
        blobs: universe,
        repositories,
        ..Inventory::default()
    };
    let catalog = ManifestCatalog::of_parsed(
        &inventory.blobs,
        refs.into_iter()
            .map(|(digest, refs)| (inventory.blobs.index(&digest).expect("a blob"), Ok(refs))),
    );
    (inventory, catalog)
}

/// Marking and planning (pure, no I/O) of a registry of 120,000 blobs, with and without
/// `--delete-untagged`.
fn mark_and_plan(c: &mut Criterion) {
    let (inventory, catalog) = registry(20_000);
    let cutoff = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000);
    let options = PlanOptions {
        cutoff,
        upload_cutoff: cutoff,
    };
    let mut group = c.benchmark_group("plan/120k_blobs");
    group.sample_size(20);
    for (name, delete_untagged) in [("plain", false), ("delete_untagged", true)] {
        let marks = mark(
            &inventory,
            &catalog,
            MarkOptions {
                delete_untagged,
                cutoff,
            },
        )
        .expect("a clean registry marks");
        group.bench_function(format!("mark/{name}"), |b| {
            b.iter(|| {
                mark(
                    black_box(&inventory),
                    &catalog,
                    MarkOptions {
                        delete_untagged,
                        cutoff,
                    },
                )
            })
        });
        group.bench_function(format!("plan/{name}"), |b| {
            b.iter(|| plan(black_box(&inventory), &marks, options).deletions.len())
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    keys_and_links,
    manifests,
    universe_and_mark_set,
    mark_and_plan
);
criterion_main!(benches);
