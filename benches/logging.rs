//! The per-exchange log line: tracing's dispatch of the `graphvcr::exchange` event and
//! `TextFormat`'s short road, written to a sink, so what is measured is the line's cost
//! on the request path (the writer thread's `write` is not).

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{criterion_group, criterion_main, Criterion};
use graphvcr::logging::TextFormat;

fn exchange_line(c: &mut Criterion) {
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_writer(std::io::sink)
        .with_ansi(false)
        .event_format(TextFormat::default())
        .finish();
    let peer: SocketAddr = "127.0.0.1:50123".parse().expect("address");
    let method = http::Method::PATCH;
    let path = "/v1.0/deviceManagement/deviceConfigurations/c1/deviceStatuses/d1".to_owned();
    let cassette = "bench".to_owned();
    tracing::subscriber::with_default(subscriber, || {
        let mut group = c.benchmark_group("log");
        group.bench_function("exchange line (dispatch + format, to a sink)", |b| {
            b.iter(|| {
                let (peer, method, path, cassette) = black_box((&peer, &method, &path, &cassette));
                tracing::info!(
                    target: "graphvcr::exchange",
                    %peer, %method, %path, status = 200u16, outcome = "replayed",
                    %cassette, latency_ms = 0.123, upstream_ms = None::<f64>,
                    interaction = Some(42u64),
                    "exchange"
                );
            })
        });
        group.bench_function("an event below the filter's level", |b| {
            b.iter(|| {
                tracing::debug!(target: "graphvcr::exchange", peer = %black_box(&peer), "exchange");
            })
        });
        group.finish();
    });
}

criterion_group!(benches, exchange_line);
criterion_main!(benches);
