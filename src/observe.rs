//! What the proxy reports about each finished exchange, in one call: an audit record
//! (queued to the writer, never waited on) and the metrics. Kept out of `proxy` so the
//! request pipeline carries one call site and no knowledge of either.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{HeaderMap, Response};
use http_body_util::Full;
use hyper::body::Body as _;

use crate::audit::{AuditEvent, AuditLog};
use crate::config::Mode;
use crate::graph;
use crate::metrics::{status_class, ExchangeLabels, Metrics};
use crate::proxy::{Outcome, LEAK_GUARD};
use crate::redact::Redactor;

/// Where the observations go; attached to a running proxy with `Proxy::observe`.
#[derive(Clone)]
pub struct Observers {
    pub audit: Option<AuditLog>,
    pub metrics: Metrics,
    /// The proxy's sanitizing rules, with a counter of its own: sanitizing response
    /// bodies for the audit must not count again as the proxy's redactions.
    pub redactor: Redactor,
}

/// What the request turned out to be, filled in as the pipeline learns it: the
/// defaults first, then the request's own mode and cassette, then its sanitized body.
#[derive(Debug, Clone)]
pub struct Trace {
    pub mode: Mode,
    pub cassette: String,
    pub request_bytes: u64,

    /// Sanitized; only set when the audit keeps bodies.
    pub request_body: Option<Bytes>,
    /// Remarks for the audit record, e.g. schema lint findings (never blocking).
    pub notes: Vec<String>,
}

impl Trace {
    pub fn new(mode: Mode, cassette: &str, headers: &HeaderMap) -> Self {
        Self {
            mode,
            cassette: cassette.to_owned(),
            request_bytes: headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),

            request_body: None,
            notes: Vec::new(),
        }
    }
}

/// A finished exchange, borrowed from the pipeline's last step.
pub struct Exchange<'a> {
    pub started: SystemTime,
    pub latency: Duration,
    pub peer: SocketAddr,
    /// Request facts taken before the request was consumed.
    pub request: &'a RequestFacts,
    pub trace: Trace,
    pub outcome: Outcome,
    pub upstream_latency: Option<Duration>,
    pub interaction: Option<u64>,
    pub response: &'a Response<Full<Bytes>>,
    /// As sent to the client; only set when the audit keeps bodies (sanitized here).
    pub response_body: Option<Bytes>,
}

/// The parts of a request the audit needs, copied before the pipeline takes it.
#[derive(Debug, Clone)]
pub struct RequestFacts {
    pub method: String,
    pub host: String,
    /// Path and query, sanitized as for storing and logging.
    pub uri: String,
    pub http_version: String,
    pub content_type: Option<String>,
    pub client_request_id: Option<String>,
}

/// The audit's name for a proxy outcome: `Forwarded` is what passthrough does; a
/// forward-proxy tunnel to a host that is not intercepted is `tunnel`; a chaos-injected
/// answer is `injected`; the store's failure (`Error`) is kept as `error`.
pub fn audit_outcome(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Recorded => "recorded",
        Outcome::Replayed => "replayed",
        Outcome::Forwarded => "passthrough",
        Outcome::Tunnel => "tunnel",
        Outcome::Injected => "injected",
        Outcome::Miss => "miss",
        Outcome::UpstreamError => "upstream_error",
        Outcome::Rejected => "rejected",
        Outcome::Error => "error",
    }
}

impl Observers {
    pub fn keeps_bodies(&self) -> bool {
        self.audit.as_ref().is_some_and(AuditLog::keeps_bodies)
    }

    pub async fn exchange(&self, e: Exchange<'_>) {
        let outcome = audit_outcome(e.outcome);
        let status = e.response.status().as_u16();
        self.metrics.exchange(
            ExchangeLabels {
                outcome,
                mode: e.trace.mode.as_str(),
                cassette: e.trace.cassette.clone(),
                status_class: status_class(status),
            },
            e.latency,
            e.upstream_latency,
        );
        let headers = e.response.headers();
        if headers.contains_key(&LEAK_GUARD) {
            self.metrics.leak_guard_refusals().inc();
        }
        let Some(audit) = &self.audit else { return };
        let text = |name: &HeaderName| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        audit
            .send(AuditEvent {
                started: e.started,
                mode: e.trace.mode.as_str().to_owned(),
                cassette: e.trace.cassette,
                client: e.peer,
                method: e.request.method.clone(),
                host: e.request.host.clone(),
                uri: e.request.uri.clone(),
                http_version: e.request.http_version.clone(),
                request_bytes: e.trace.request_bytes,
                response_bytes: e.response.body().size_hint().exact().unwrap_or(0),
                status,
                outcome,
                latency: e.latency,
                upstream: e.upstream_latency,
                interaction: e.interaction,
                request_id: text(&graph::REQUEST_ID_NAME),
                // The client's own id correlates with its logs; on replay the response's
                // header is the recording's.
                client_request_id: e
                    .request
                    .client_request_id
                    .clone()
                    .or_else(|| text(&graph::CLIENT_REQUEST_ID_NAME)),
                request_content_type: e.request.content_type.clone(),
                request_body: e.trace.request_body,
                notes: e.trace.notes,
                response_body: e.response_body.map(|body| {
                    let content_type = text(&header::CONTENT_TYPE);
                    self.redactor.body(content_type.as_deref(), &body)
                }),
                response_content_type: text(&header::CONTENT_TYPE),
            })
            .await;
    }
}
