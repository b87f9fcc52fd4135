//! Concurrency and load: many clients recording and replaying through one proxy at
//! once, and a replay soak at concurrency 256 with flat memory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::echo_upstream;
use crate::support::*;

/// An upstream answering `{"path":…,"n":N}` where N counts the requests seen for that
/// path (1, 2, 3, …): each episode of a repeated request has its own answer.
async fn counting_upstream() -> TestUpstream {
    let counts: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    TestUpstream::start(move |seen| {
        let path = seen.parts.uri.path().to_owned();
        let n = {
            let mut counts = counts.lock().unwrap_or_else(|e| e.into_inner());
            let n = counts.entry(path.clone()).or_default();
            *n += 1;
            *n
        };
        let body = serde_json::json!({ "path": path, "n": n });
        let mut response =
            http::Response::new(http_body_util::Full::new(Bytes::from(body.to_string())));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        response
    })
    .await
}

fn n_of(reply: &Reply) -> u64 {
    reply.json()["n"].as_u64().unwrap_or(0)
}

async fn send(http: &Http, proxy_url: &str, mode: &str, cassette: &str, path: &str) -> Reply {
    http.send(
        "GET",
        &format!("{proxy_url}{path}"),
        &[("x-graphvcr-mode", mode), ("x-graphvcr-cassette", cassette)],
        "",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_recorders_and_sixty_four_replayers_at_once() {
    const CLIENTS: usize = 64;
    const EPISODES: u64 = 5;
    const UNIQUE: usize = 5;
    let scratch = Scratch::new();
    let upstream = counting_upstream().await;
    let mut proxy = proxy(&scratch, "replay", &upstream.url(), &[]);
    let http = Http::new();
    let base = proxy.url("");

    // Cassette `source`: each replaying client's request recorded EPISODES times.
    let mut setup = Vec::new();
    for client in 0..CLIENTS {
        let (http, base) = (http.clone(), base.clone());
        setup.push(tokio::spawn(async move {
            for _ in 0..EPISODES {
                let reply = send(
                    &http,
                    &base,
                    "record",
                    "source",
                    &format!("/v1.0/replay/{client}"),
                )
                .await;
                assert_eq!(reply.status, 200, "{}", reply.text());
            }
        }));
    }
    for task in setup {
        task.await.expect("setup client");
    }

    // At once: 64 clients record into `live`, 64 replay from `source`.
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let (recorder, recorder_base) = (http.clone(), base.clone());
        tasks.push(tokio::spawn(async move {
            let (http, base) = (recorder, recorder_base);
            let mut seen = Vec::new();
            for i in 0..UNIQUE {
                let reply = send(
                    &http,
                    &base,
                    "record",
                    "live",
                    &format!("/v1.0/live/{client}/{i}"),
                )
                .await;
                assert_eq!(
                    reply.header("x-graphvcr-outcome"),
                    Some("recorded"),
                    "{}",
                    reply.text()
                );
            }
            // The same request repeatedly: episodes must keep the order answers were sent.
            for _ in 0..EPISODES {
                let reply = send(
                    &http,
                    &base,
                    "record",
                    "live",
                    &format!("/v1.0/same/{client}"),
                )
                .await;
                assert_eq!(reply.header("x-graphvcr-outcome"), Some("recorded"));
                seen.push(n_of(&reply));
            }
            seen
        }));
        let (replayer, replayer_base) = (http.clone(), base.clone());
        tasks.push(tokio::spawn(async move {
            let (http, base) = (replayer, replayer_base);
            let mut seen = Vec::new();
            for episode in 1..=EPISODES {
                let reply = send(
                    &http,
                    &base,
                    "replay",
                    "source",
                    &format!("/v1.0/replay/{client}"),
                )
                .await;
                assert_eq!(
                    reply.header("x-graphvcr-outcome"),
                    Some("replayed"),
                    "{}",
                    reply.text()
                );
                assert_eq!(
                    reply.header("x-graphvcr-episode"),
                    Some(format!("{episode}/{EPISODES}").as_str())
                );
                seen.push(n_of(&reply));
            }
            seen
        }));
    }
    let expected: Vec<u64> = (1..=EPISODES).collect();
    for task in tasks {
        assert_eq!(
            task.await.expect("client"),
            expected,
            "answers out of order"
        );
    }
    assert!(proxy.interrupt().success(), "{}", proxy.stderr());

    let mut list = cassette_list(&scratch);
    list.sort();
    assert_eq!(
        list,
        vec![
            (
                "live".to_owned(),
                (CLIENTS * (UNIQUE + EPISODES as usize)) as u64
            ),
            ("source".to_owned(), CLIENTS as u64 * EPISODES),
        ],
        "nothing lost, nothing twice"
    );
    let exported = export(&scratch, "live");
    let mut per_path: HashMap<String, Vec<u64>> = HashMap::new();
    for interaction in exported["interactions"].as_array().expect("interactions") {
        let uri = interaction["request"]["uri"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        let n = interaction["response"]["body_json"]["n"]
            .as_u64()
            .unwrap_or(0);
        per_path.entry(uri).or_default().push(n);
    }
    for client in 0..CLIENTS {
        for i in 0..UNIQUE {
            assert_eq!(
                per_path.get(&format!("/v1.0/live/{client}/{i}")),
                Some(&vec![1])
            );
        }
        assert_eq!(
            per_path.get(&format!("/v1.0/same/{client}")),
            Some(&expected),
            "episodes of one request are stored in the order they were answered"
        );
    }

    // A fresh process replays the repeated requests in the recorded order.
    let replayer =
        crate::support::proxy(&scratch, "replay", &upstream.url(), &["--cassette", "live"]);
    for client in [0, CLIENTS - 1] {
        let mut seen = Vec::new();
        for _ in 0..EPISODES {
            seen.push(n_of(
                &http
                    .get(&replayer.url(&format!("/v1.0/same/{client}")))
                    .await,
            ));
        }
        assert_eq!(seen, expected);
    }
}

fn soak_seconds() -> u64 {
    std::env::var("GRAPHVCR_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30)
}

/// Replay at concurrency 256 for 30 s (`GRAPHVCR_SOAK_SECS`): no errors, and the
/// proxy's resident memory at the end is within 1.5x of what it was after warm-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_soak_at_concurrency_256_has_no_errors_and_flat_memory() {
    const CONCURRENCY: usize = 256;
    const PATHS: usize = 16;
    let duration = Duration::from_secs(soak_seconds());
    let warm_up = Duration::from_secs(5).min(duration / 4);
    let scratch = Scratch::new();
    let upstream = echo_upstream().await;
    // sled's page cache grows up to store.cache_capacity_mb as the audit trail is
    // written, then stays there. A 4 MiB cache (half the default) is full after
    // warm-up, so growth after it would be a leak.
    let config = write_config(&scratch, "soak.toml", "[store]\ncache_capacity_mb = 4\n");
    let proxy = proxy(
        &scratch,
        "replay",
        &upstream.url(),
        &["--cassette", "soak", "--config", &config],
    );
    let http = Http::new();
    for i in 0..PATHS {
        let reply = http
            .send(
                "PATCH",
                &proxy.url(&status_path("soak", &format!("dev-{i}"))),
                &[
                    ("x-graphvcr-mode", "record"),
                    ("content-type", "application/json"),
                ],
                SEED_BODY,
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for worker in 0..CONCURRENCY {
        let (http, ok, errors) = (http.clone(), ok.clone(), errors.clone());
        let urls: Vec<String> = (0..PATHS)
            .map(|i| proxy.url(&status_path("soak", &format!("dev-{i}"))))
            .collect();
        tasks.push(tokio::spawn(async move {
            let mut i = worker;
            while Instant::now() < deadline {
                let url = &urls[i % PATHS];
                i += 1;
                match http
                    .try_send(
                        "PATCH",
                        url,
                        &[("content-type", "application/json")],
                        Bytes::from_static(SEED_BODY.as_bytes()),
                    )
                    .await
                {
                    Ok(reply) if reply.status.is_success() => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(reply) => errors
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(format!("{}: {}", reply.status, reply.text())),
                    Err(error) => errors.lock().unwrap_or_else(|e| e.into_inner()).push(error),
                }
            }
        }));
    }
    tokio::time::sleep(warm_up).await;
    let warm_rss = rss_kib(proxy.pid()).expect("proxy RSS");
    let warm_count = ok.load(Ordering::Relaxed);
    let mut samples = vec![warm_rss];
    while Instant::now() + Duration::from_secs(5) < deadline {
        tokio::time::sleep(Duration::from_secs(5)).await;
        samples.push(rss_kib(proxy.pid()).unwrap_or(0));
    }
    for task in tasks {
        task.await.expect("soak worker");
    }
    let end_rss = rss_kib(proxy.pid()).expect("proxy RSS");
    samples.push(end_rss);
    let total = ok.load(Ordering::Relaxed);
    let errors = errors.lock().unwrap_or_else(|e| e.into_inner()).clone();
    eprintln!(
        "soak: {} s at concurrency {CONCURRENCY}: {total} answers ({:.0}/s), {} errors; RSS KiB after warm-up {warm_rss}, at end {end_rss}; samples {samples:?}",
        duration.as_secs(),
        total as f64 / duration.as_secs_f64(),
        errors.len(),
    );
    assert!(
        errors.is_empty(),
        "{} errors, e.g. {:?}",
        errors.len(),
        errors.first()
    );
    assert!(total > warm_count, "no progress after warm-up");
    assert!(
        end_rss * 2 <= warm_rss * 3,
        "RSS grew from {warm_rss} KiB after warm-up to {end_rss} KiB: {samples:?}"
    );
}
