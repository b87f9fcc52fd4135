//! Request normalisation, JSON canonicalisation and match-key hashing: the work every
//! request does before a lookup.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use graphvcr::matching::rules::MatchRules;
use graphvcr::matching::{canonical_json, key_only, normalize, RequestView};
use graphvcr::record::Header;
use serde_json::Value;
use std::hint::black_box;

mod common;

fn view<'a>(path: &'a str, headers: &'a [Header], body: &'a [u8]) -> RequestView<'a> {
    RequestView {
        method: "PATCH",
        host: None,
        path_and_query: path,
        content_type: Some("application/json"),
        content_encoding: None,
        headers,
        body,
    }
}

fn matching(c: &mut Criterion) {
    let path = common::status_path(42);
    let query_path = format!("{path}?$select=id,status&api-version=2&%7efilter=a+b");
    let body = common::reordered_body(42);
    let headers = vec![
        common::header("content-type", "application/json"),
        common::header("authorization", "Bearer [REDACTED]"),
    ];
    let rules = MatchRules::default();
    let value: Value = serde_json::from_slice(&body).expect("fixture is JSON");
    let normalized = normalize(&view(&path, &headers, &body), &rules);

    let mut group = c.benchmark_group("matching");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("normalize (path + JSON body)", |b| {
        b.iter(|| normalize(black_box(&view(&path, &headers, &body)), &rules))
    });
    group.bench_function("normalize (path + query + JSON body)", |b| {
        b.iter(|| normalize(black_box(&view(&query_path, &headers, &body)), &rules))
    });
    group.bench_function("canonical JSON", |b| {
        b.iter(|| {
            let mut out = String::new();
            canonical_json(black_box(&value), &mut out);
            out
        })
    });
    group.bench_function("match key (canonicalise + BLAKE3)", |b| {
        b.iter(|| black_box(&normalized).key())
    });
    group.bench_function("normalize + key (per request)", |b| {
        b.iter(|| normalize(black_box(&view(&path, &headers, &body)), &rules).key())
    });
    group.bench_function("key only (per replayed request)", |b| {
        b.iter(|| key_only(black_box(&view(&path, &headers, &body)), &rules))
    });
    group.finish();
}

criterion_group!(benches, matching);
criterion_main!(benches);
