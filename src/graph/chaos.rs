//! The chaos layer: injected Graph faults, a rate limit and added latency, so a client's
//! retry and back-off code can be exercised against recordings that never failed.
//!
//! Faults come from a ChaCha8 generator seeded from the config and drawn once per
//! request in arrival order: the same seed and the same request sequence give the same
//! faults, run after run. Injected answers are never forwarded upstream and never
//! recorded; they carry `x-graphvcr-chaos` so a test can tell them from real ones.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use http_body_util::BodyExt;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::ChaosConfig;

/// Response header on every injected answer: `fault; seq=N; status=S` or `rate-limit; …`.
pub const CHAOS_HEADER: &str = "x-graphvcr-chaos";

/// An answer the chaos layer gives instead of the real one.
#[derive(Debug)]
pub struct Injected {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// What the chaos layer decided for one request.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Answer with this instead of the real answer.
    pub inject: Option<Injected>,
    /// Headers for whatever answer goes out (the rate limit's).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

struct Window {
    started: Instant,
    used: u64,
}

/// The chaos layer of one proxy process.
pub struct Chaos {
    config: ChaosConfig,
    /// The generator and the number of requests drawn for so far.
    rng: Mutex<(ChaCha8Rng, u64)>,
    window: Mutex<Window>,
}

impl Chaos {
    /// `None` when `[chaos]` is not enabled.
    pub fn new(config: &ChaosConfig) -> Option<Self> {
        config.enabled.then(|| Self {
            config: config.clone(),
            rng: Mutex::new((ChaCha8Rng::seed_from_u64(config.seed), 0)),
            window: Mutex::new(Window {
                started: Instant::now(),
                used: 0,
            }),
        })
    }

    /// Decides for one request. Two numbers are drawn for every request, whatever its
    /// route, so one route's settings never shift another's faults.
    pub async fn decide(
        &self,
        method: &str,
        path: &str,
        client_request_id: Option<&str>,
    ) -> Verdict {
        let (seq, roll, pick) = {
            let mut guard = self.rng.lock().unwrap_or_else(|e| e.into_inner());
            guard.1 += 1;
            let roll = unit(guard.0.next_u64());
            let pick = guard.0.next_u64();
            (guard.1, roll, pick)
        };
        let mut verdict = Verdict::default();
        if let Some(limited) = self.rate_limit(&mut verdict.headers) {
            let retry_after = limited.as_secs().max(1);
            verdict.inject = Some(
                injected(
                    StatusCode::TOO_MANY_REQUESTS,
                    Some(retry_after),
                    &format!("rate-limit; seq={seq}; status=429"),
                    client_request_id,
                )
                .await,
            );
            return verdict;
        }
        let (rate, statuses) = self
            .config
            .routes
            .iter()
            .find(|r| {
                r.method
                    .as_deref()
                    .is_none_or(|m| m.eq_ignore_ascii_case(method))
                    && r.pattern.matches(path)
            })
            .map_or((self.config.rate, &self.config.statuses), |r| {
                (r.rate, &r.statuses)
            });
        if roll < rate && !statuses.is_empty() {
            let index = usize::try_from(pick % statuses.len() as u64).unwrap_or(0);
            let status =
                StatusCode::from_u16(statuses[index]).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            let retry_after = matches!(status.as_u16(), 429 | 503)
                .then(|| self.config.retry_after.as_secs().max(1));
            verdict.inject = Some(
                injected(
                    status,
                    retry_after,
                    &format!("fault; seq={seq}; status={}", status.as_u16()),
                    client_request_id,
                )
                .await,
            );
        }
        verdict
    }

    /// Counts the request against the window; `Some(time to reset)` when over the limit.
    fn rate_limit(&self, headers: &mut Vec<(HeaderName, HeaderValue)>) -> Option<Duration> {
        let limit = self.config.rate_limit;
        if limit == 0 {
            return None;
        }
        let window = self.config.rate_limit_window;
        let mut state = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if now.duration_since(state.started) >= window {
            state.started = now;
            state.used = 0;
        }
        let reset = window.saturating_sub(now.duration_since(state.started));
        let over = state.used >= limit;
        if !over {
            state.used += 1;
        }
        let reset_secs = reset.as_secs() + u64::from(reset.subsec_nanos() > 0);
        for (name, value) in [
            ("ratelimit-limit", limit),
            ("ratelimit-remaining", limit - state.used),
            ("ratelimit-reset", reset_secs),
        ] {
            headers.push((HeaderName::from_static(name), HeaderValue::from(value)));
        }
        over.then_some(reset)
    }

    /// Latency to add before an answer goes out: the fixed part plus, for a replayed
    /// answer, its recorded upstream latency times the factor.
    pub fn delay(&self, recorded: Option<Duration>) -> Duration {
        let scaled = recorded
            .map(|d| d.mul_f64(self.config.latency_factor))
            .unwrap_or_default();
        self.config.latency + scaled
    }
}

/// A uniform number in [0, 1) from the top 53 bits.
fn unit(bits: u64) -> f64 {
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// Graph's error code for each injectable status.
fn code(status: StatusCode) -> &'static str {
    match status.as_u16() {
        408 => "RequestTimeout",
        409 => "Conflict",
        429 => "TooManyRequests",
        502 => "BadGateway",
        503 => "ServiceUnavailable",
        504 => "GatewayTimeout",
        507 => "InsufficientStorage",
        _ => "InternalServerError",
    }
}

async fn injected(
    status: StatusCode,
    retry_after: Option<u64>,
    label: &str,
    client_request_id: Option<&str>,
) -> Injected {
    let message = format!(
        "Injected by the graphvcr chaos layer ({label}); the request was not sent upstream."
    );
    let response = super::error_response(status, code(status), &message, client_request_id);
    let (mut parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if let Some(seconds) = retry_after {
        parts
            .headers
            .insert(http::header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    if let Ok(value) = HeaderValue::from_str(label) {
        parts
            .headers
            .insert(HeaderName::from_static(CHAOS_HEADER), value);
    }
    Injected {
        status,
        headers: parts.headers,
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(rate: f64) -> ChaosConfig {
        ChaosConfig {
            enabled: true,
            seed: 42,
            rate,
            ..ChaosConfig::default()
        }
    }

    async fn run(chaos: &Chaos, n: usize) -> Vec<u16> {
        let mut statuses = Vec::new();
        for _ in 0..n {
            let verdict = chaos.decide("GET", "/v1.0/x", None).await;
            statuses.push(verdict.inject.map_or(200, |i| i.status.as_u16()));
        }
        statuses
    }

    #[tokio::test]
    async fn same_seed_same_faults() {
        let a = run(&Chaos::new(&config(0.5)).expect("on"), 50).await;
        let b = run(&Chaos::new(&config(0.5)).expect("on"), 50).await;
        assert_eq!(a, b);
        assert!(a.contains(&200) && a.iter().any(|s| *s != 200), "{a:?}");
        let other = run(
            &Chaos::new(&ChaosConfig {
                seed: 43,
                ..config(0.5)
            })
            .expect("on"),
            50,
        )
        .await;
        assert_ne!(a, other);
        assert!(run(&Chaos::new(&config(0.0)).expect("on"), 20)
            .await
            .iter()
            .all(|s| *s == 200));
        assert!(Chaos::new(&ChaosConfig::default()).is_none());
    }

    #[tokio::test]
    async fn per_route_rates_and_latency() {
        let config = ChaosConfig {
            routes: vec![crate::config::ChaosRoute {
                pattern: crate::matching::rules::PathPattern::parse("/v1.0/always/**")
                    .expect("pattern"),
                method: Some("GET".into()),
                rate: 1.0,
                statuses: vec![507],
            }],
            latency: Duration::from_millis(10),
            latency_factor: 2.0,
            ..config(0.0)
        };
        let chaos = Chaos::new(&config).expect("on");
        for _ in 0..5 {
            let hit = chaos.decide("GET", "/v1.0/always/x", None).await;
            assert_eq!(hit.inject.map(|i| i.status.as_u16()), Some(507));
            let other_method = chaos.decide("POST", "/v1.0/always/x", None).await;
            assert!(other_method.inject.is_none());
            assert!(chaos
                .decide("GET", "/v1.0/never", None)
                .await
                .inject
                .is_none());
        }
        assert_eq!(chaos.delay(None), Duration::from_millis(10));
        assert_eq!(
            chaos.delay(Some(Duration::from_millis(5))),
            Duration::from_millis(20)
        );
    }

    #[tokio::test]
    async fn rate_limit_window() {
        let chaos = Chaos::new(&ChaosConfig {
            rate_limit: 2,
            ..config(0.0)
        })
        .expect("on");
        let first = chaos.decide("GET", "/x", None).await;
        assert!(first.inject.is_none());
        let remaining = |v: &Verdict| {
            v.headers
                .iter()
                .find(|(n, _)| n == "ratelimit-remaining")
                .and_then(|(_, v)| v.to_str().ok().map(str::to_owned))
        };
        assert_eq!(remaining(&first).as_deref(), Some("1"));
        assert!(chaos.decide("GET", "/x", None).await.inject.is_none());
        let third = chaos.decide("GET", "/x", Some("c")).await;
        let injected = third.inject.expect("limited");
        assert_eq!(injected.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(injected.headers.contains_key(http::header::RETRY_AFTER));
        assert_eq!(
            injected
                .headers
                .get("client-request-id")
                .and_then(|v| v.to_str().ok()),
            Some("c")
        );
    }
}
