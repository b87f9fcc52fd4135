//! Response building on replay: decode the stored reply in either stored form, decode the
//! whole stored interaction, rebuild its header map and assemble the response with the
//! provenance headers, as `Proxy` does for a hit; and the Graph-shaped error body of a
//! replay miss.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use graphvcr::record::{headers_to_map, Interaction, StoredReply};
use http::{HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::Full;

mod common;

fn build_response(stored: &[u8]) -> Response<Full<Bytes>> {
    let interaction = Interaction::from_bytes(stored).expect("stored form decodes");
    let recorded = interaction.response;
    let mut response = Response::new(Full::new(recorded.body));
    *response.status_mut() = StatusCode::from_u16(recorded.status).unwrap_or(StatusCode::OK);
    *response.headers_mut() = headers_to_map(&recorded.headers);
    let headers = response.headers_mut();
    for (name, value) in [
        ("x-graphvcr-outcome", "replayed".to_owned()),
        ("x-graphvcr-cassette", "bench".to_owned()),
        ("x-graphvcr-interaction", interaction.id.to_string()),
        ("x-graphvcr-episode", format!("{}/{}", 1, 1)),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
    response
}

fn responses(c: &mut Criterion) {
    let interaction = common::interaction("bench", 42);
    let stored = interaction.to_bytes();
    // Schema 1, the JSON form older stores still hold.
    let stored_json = serde_json::to_vec(&interaction).expect("serialises");
    let mut group = c.benchmark_group("response");
    group.bench_function("decode stored reply (schema 2, binary)", |b| {
        b.iter(|| StoredReply::from_bytes(black_box(&stored)).expect("decodes"))
    });
    group.bench_function("decode stored reply (schema 1, JSON)", |b| {
        b.iter(|| StoredReply::from_bytes(black_box(&stored_json)).expect("decodes"))
    });
    group.bench_function("decode stored interaction", |b| {
        b.iter(|| Interaction::from_bytes(black_box(&stored)).expect("decodes"))
    });
    group.bench_function("replayed response (decode + headers + provenance)", |b| {
        b.iter(|| build_response(black_box(&stored)))
    });
    group.bench_function("replay miss error response", |b| {
        b.iter(|| {
            graphvcr::graph::error_response(
                StatusCode::from_u16(599).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                "ReplayMiss",
                black_box("no recorded interaction in cassette 'bench' matches PATCH /v1.0/x"),
                None,
            )
        })
    });
    group.finish();
}

criterion_group!(benches, responses);
criterion_main!(benches);
