//! Store lookup (`Store::next_episode`) on a cassette of 100,000 interactions, against one
//! of 1,000: lookups go through the index, so the two must cost about the same.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use graphvcr::matching::rules::{Exhausted, ReplayOrder, RuleSet};
use graphvcr::matching::MatchKey;
use graphvcr::store::{EpisodePolicy, Lookup, Store};

mod common;

/// A store of `count` interactions in cassette `bench` and their keys.
fn build(count: usize) -> (tempfile::TempDir, Store, u64, Vec<MatchKey>) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = Store::open(dir.path(), 8 << 20).expect("store opens");
    let rules = RuleSet::default();
    let fingerprint = rules.fingerprint();
    let records: Vec<_> = (0..count)
        .map(|index| {
            let interaction = common::interaction("bench", index);
            (rules.key_of(&interaction), interaction)
        })
        .collect();
    let keys = records.iter().map(|(key, _)| *key).collect();
    store
        .insert_all(fingerprint, records)
        .expect("interactions insert");
    store.flush_now().expect("store flushes");
    (dir, store, fingerprint, keys)
}

fn lookups(c: &mut Criterion) {
    let policy = EpisodePolicy {
        order: ReplayOrder::Sequential,
        exhausted: Exhausted::RepeatLast,
        recorded_after: None,
    };
    let mut group = c.benchmark_group("store");
    group.sample_size(30);
    for count in [1_000usize, 100_000] {
        let (_dir, store, fingerprint, keys) = build(count);
        let mut next = 0usize;
        group.bench_function(format!("next_episode, {count} interactions"), |b| {
            b.iter_batched(
                || {
                    // Cycle through every key, as the load benchmark does.
                    next = (next + 7919) % keys.len();
                    keys[next]
                },
                |key| {
                    let found = store
                        .next_episode("bench", fingerprint, black_box(&key), policy)
                        .expect("lookup");
                    assert!(matches!(found, Lookup::Hit(_)));
                    found
                },
                BatchSize::SmallInput,
            )
        });
        let missing = MatchKey([0xee; 32]);
        group.bench_function(format!("next_episode miss, {count} interactions"), |b| {
            b.iter(|| {
                store
                    .next_episode("bench", fingerprint, black_box(&missing), policy)
                    .expect("lookup")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, lookups);
criterion_main!(benches);
