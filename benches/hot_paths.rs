//! Hot paths of a collection over a large registry: decoding keys and links, parsing manifests,
//! searching the blob universe, and the mark set.

use std::hint::black_box;
use std::time::SystemTime;

use criterion::{Criterion, criterion_group, criterion_main};
use roaring::RoaringBitmap;

use regsweep::digest::Digest;
use regsweep::layout;
use regsweep::manifest::parse_manifest;
use regsweep::scan::BlobUniverse;

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

criterion_group!(benches, keys_and_links, manifests, universe_and_mark_set);
criterion_main!(benches);
