//! Reliability and security: bad input, upstream faults, crashes, concurrency, load and
//! secrets. Each case drives real `graphvcr` processes and checks both the specific
//! answer and that the proxy keeps serving afterwards. `RELIABILITY.md` lists the cases
//! with their numbers.

mod bad_input;
mod crash;
mod faults;
mod load;
mod security;

use std::time::Duration;

use crate::support::*;

/// Small limits keep the bad-input cases fast.
pub const LIMITS: &str = r#"
[proxy]
max_body_bytes = 65536
max_header_bytes = 8192
header_read_timeout = "1s"
body_read_timeout = "500ms"
"#;

/// An upstream that answers every request with 200 and a JSON echo of its method, path
/// and body length.
pub async fn echo_upstream() -> TestUpstream {
    TestUpstream::start(|seen| {
        let echo = serde_json::json!({
            "method": seen.parts.method.as_str(),
            "uri": seen.parts.uri.to_string(),
            "length": seen.body.len(),
        });
        let mut response = http::Response::new(http_body_util::Full::new(bytes::Bytes::from(
            echo.to_string(),
        )));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        response
    })
    .await
}

/// A plain request through `proxy` still gets its normal answer: a replay miss (599)
/// for a request nobody recorded. It uses a new connection: the proxies here close idle
/// connections after their 1 s `header_read_timeout`, and a pooled connection could race
/// that close.
pub async fn assert_still_serving(proxy: &Proc, after: &str) {
    let answer = Http::new()
        .send(
            "GET",
            &proxy.url("/v1.0/still-serving"),
            &[("x-graphvcr-mode", "replay")],
            "",
        )
        .await;
    assert_eq!(
        answer.status.as_u16(),
        599,
        "after {after}, a plain request got {}: {}",
        answer.status,
        answer.text()
    );
    assert_eq!(
        answer.json()["error"]["code"],
        "ReplayMiss",
        "after {after}"
    );
}

/// Waits (bounded) for a condition that other tasks make true.
pub async fn eventually(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !check() {
        assert!(
            started.elapsed() < limit,
            "{what} did not happen within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
