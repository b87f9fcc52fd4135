//! Prometheus metrics, served as text by the admin API's `GET /metrics`.
//!
//! Built on `prometheus-client` (the Prometheus project's own Rust crate): the registry
//! is filled once at start-up; counters and histograms are atomics, so updating them on
//! the request path takes no lock. Gauges that are expensive or live elsewhere (store
//! size, audit length) are read at scrape time.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The content type `GET /metrics` answers with.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Labels of the exchange counter. Cassette names are chosen by the test suites that
/// use the proxy, so their number stays small.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExchangeLabels {
    pub outcome: &'static str,
    pub mode: &'static str,
    pub cassette: String,
    /// `2xx`, `4xx`, `5xx`...
    pub status_class: &'static str,
}

/// The process's metrics. Clones share them.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    exchanges: Family<ExchangeLabels, Counter>,
    latency: Histogram,
    upstream_latency: Histogram,
    redactions: Counter,
    store_flushes: Counter,
    leak_guard_refusals: Counter,
    store_bytes: Gauge,
    audit_records: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("graphvcr");
        let exchanges = Family::<ExchangeLabels, Counter>::default();
        // 1 ms to ~65 s: replay answers in well under a millisecond, Graph in tens to
        // hundreds, a throttled or slow call in seconds.
        let latency = Histogram::new(exponential_buckets(0.001, 2.0, 17));
        let upstream_latency = Histogram::new(exponential_buckets(0.001, 2.0, 17));
        let redactions = Counter::default();
        let store_flushes = Counter::default();
        let leak_guard_refusals = Counter::default();
        let store_bytes = Gauge::default();
        let audit_records = Gauge::default();
        registry.register(
            "exchanges",
            "Exchanges answered, by outcome, mode, cassette and status class",
            exchanges.clone(),
        );
        registry.register(
            "exchange_duration_seconds",
            "Time from a request's arrival to its response",
            latency.clone(),
        );
        registry.register(
            "upstream_duration_seconds",
            "Time waiting on the upstream, for exchanges that were forwarded",
            upstream_latency.clone(),
        );
        registry.register(
            "redactions",
            "Credential values replaced before storing or logging",
            redactions.clone(),
        );
        registry.register(
            "leak_guard_refusals",
            "Recordings refused because a secret would have reached the store",
            leak_guard_refusals.clone(),
        );
        registry.register(
            "store_flushes",
            "Flushes of the cassette store to disk (concurrent recordings share one)",
            store_flushes.clone(),
        );
        registry.register(
            "store_size_bytes",
            "Bytes the cassette store occupies on disk",
            store_bytes.clone(),
        );
        registry.register(
            "audit_records",
            "Records in the audit trail",
            audit_records.clone(),
        );
        Self {
            inner: Arc::new(Inner {
                registry,
                exchanges,
                latency,
                upstream_latency,
                redactions,
                store_flushes,
                leak_guard_refusals,
                store_bytes,
                audit_records,
            }),
        }
    }

    /// Counts one finished exchange.
    pub fn exchange(
        &self,
        labels: ExchangeLabels,
        latency: Duration,
        upstream_latency: Option<Duration>,
    ) {
        self.inner.exchanges.get_or_create(&labels).inc();
        self.inner.latency.observe(latency.as_secs_f64());
        if let Some(upstream) = upstream_latency {
            self.inner.upstream_latency.observe(upstream.as_secs_f64());
        }
    }

    /// The leak-guard counter, shared with whoever refuses.
    pub fn leak_guard_refusals(&self) -> Counter {
        self.inner.leak_guard_refusals.clone()
    }

    /// The text exposition, with the scrape-time values brought up to date first.
    /// `redactions` and `store_flushes` are running totals kept by the redactor and the
    /// store (each counts with an atomic of its own).
    pub fn render(&self, store: StoreFigures, audit_records: u64, redactions: u64) -> String {
        catch_up(&self.inner.redactions, redactions);
        catch_up(&self.inner.store_flushes, store.flushes);
        let store_bytes = store.bytes;
        self.inner
            .store_bytes
            .set(i64::try_from(store_bytes).unwrap_or(i64::MAX));
        self.inner
            .audit_records
            .set(i64::try_from(audit_records).unwrap_or(i64::MAX));
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.inner.registry);
        text
    }
}

/// The store's figures at scrape time.
pub struct StoreFigures {
    pub bytes: u64,
    pub flushes: u64,
}

/// Brings a counter up to a running total counted elsewhere.
fn catch_up(counter: &Counter, total: u64) {
    let seen = counter.get();
    if total > seen {
        counter.inc_by(total - seen);
    }
}

/// `2xx` for 204, `5xx` for 599; static, so counting an exchange allocates only the
/// cassette label.
pub fn status_class(status: u16) -> &'static str {
    match status / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        5 => "5xx",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let metrics = Metrics::new();
        metrics.exchange(
            ExchangeLabels {
                outcome: "replayed",
                mode: "replay",
                cassette: "default".into(),
                status_class: status_class(200),
            },
            Duration::from_millis(2),
            None,
        );
        let store = StoreFigures {
            bytes: 4096,
            flushes: 3,
        };
        let text = metrics.render(store, 1, 1);
        for needle in [
            "graphvcr_exchanges_total{outcome=\"replayed\",mode=\"replay\",cassette=\"default\",status_class=\"2xx\"} 1",
            "graphvcr_exchange_duration_seconds_count 1",
            "graphvcr_redactions_total 1",
            "graphvcr_store_size_bytes 4096",
            "graphvcr_store_flushes_total 3",
            "# EOF",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
    }
}
