//! The per-request pipeline:
//! read body -> strip control and hop-by-hop headers -> redact -> match key -> mode ->
//! (store | upstream) -> response with provenance headers.
//!
//! Errors become responses in exactly one place ([`Proxy::error_response`]), in Graph's
//! error shape and marked as graphvcr's own with `x-graphvcr-outcome`.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

use crate::config::{
    validate_cassette_name, ChaosConfig, ForwardConfig, GraphConfig, LeakGuard, MatchingConfig,
    Mode, ProxyConfig, UnknownHosts,
};
use crate::error::{MissReport, Nearest, ProxyError};
use crate::forward::{self, Interceptor, Target};
use crate::graph::{self, batch, chaos::Chaos};
use crate::matching::{self, Exhausted, MatchKey, MatchRules, NormalBody, Normalized, RuleSet};
use crate::observe::{Exchange, Observers, RequestFacts, Trace};
use crate::record::{Interaction, RecordedRequest, RecordedResponse, SCHEMA_VERSION};
use crate::redact::{self, Redactor};
use crate::server::{self, Handler, ResponseFuture};
use crate::store::{EpisodePolicy, Lookup, Store, StoreError, WriteIntent};
use crate::upstream::{Upstream, UpstreamResponse};

/// The Graph hooks: `$batch`, chaos, and answer post-processing.
mod graph_hooks;
use graph_hooks::{lint_exchange, GraphContext, Linted};

/// Request header: which cassette this request uses.
pub const CASSETTE_HEADER: &str = "x-graphvcr-cassette";
/// Request header: which mode this request uses.
pub const MODE_HEADER: &str = "x-graphvcr-mode";
/// Response header: where the answer came from.
pub const OUTCOME_HEADER: &str = "x-graphvcr-outcome";
/// Response header: the recorded interaction's id.
pub const INTERACTION_HEADER: &str = "x-graphvcr-interaction";
/// Response header: `index/count` of the replayed episode (1-based index).
pub const EPISODE_HEADER: &str = "x-graphvcr-episode";
/// Response header: set when the leak guard kept an exchange out of the cassette.
pub const LEAK_GUARD_HEADER: &str = "x-graphvcr-leak-guard";
/// Prefix of every header graphvcr owns; none is forwarded or stored.
pub const CONTROL_PREFIX: &str = "x-graphvcr-";

// Parsed once: every answer carries some of these.
static OUTCOME: HeaderName = HeaderName::from_static(OUTCOME_HEADER);
static CASSETTE: HeaderName = HeaderName::from_static(CASSETTE_HEADER);
static MODE: HeaderName = HeaderName::from_static(MODE_HEADER);
static INTERACTION: HeaderName = HeaderName::from_static(INTERACTION_HEADER);
static EPISODE: HeaderName = HeaderName::from_static(EPISODE_HEADER);
/// [`LEAK_GUARD_HEADER`] as a name: the metrics look for it in every answer.
pub static LEAK_GUARD: HeaderName = HeaderName::from_static(LEAK_GUARD_HEADER);

/// Hop-by-hop headers (RFC 9110 7.6.1): meaningful for one connection only.
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Recorded,
    Replayed,
    /// Passthrough: forwarded, not stored.
    Forwarded,
    Miss,
    UpstreamError,
    /// Forward-proxy traffic to a host that is not intercepted: relayed, never stored.
    Tunnel,
    /// Refused before any work: bad body, bad control header.
    Rejected,
    /// The store failed.
    Error,
    /// The chaos layer answered instead of the cassette or the upstream.
    Injected,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Recorded => "recorded",
            Self::Replayed => "replayed",
            Self::Forwarded => "forwarded",
            Self::Miss => "miss",
            Self::UpstreamError => "upstream_error",
            Self::Tunnel => "tunnel",
            Self::Rejected => "rejected",
            Self::Error => "error",
            Self::Injected => "injected",
        }
    }
}

/// Mode and cassette for requests that do not choose their own; switchable at run time.
#[derive(Debug, Clone)]
pub struct Defaults {
    pub mode: Mode,
    pub cassette: String,
}

/// The proxy handler. Clones share everything.
#[derive(Clone)]
pub struct Proxy {
    shared: Arc<Shared>,
}

struct Shared {
    config: ProxyConfig,
    interceptor: Interceptor,
    matching: MatchingConfig,
    defaults: RwLock<Defaults>,
    store: Store,
    upstream: Upstream,
    redactor: Redactor,
    /// Audit and metrics, attached once after start-up (see `observe`).
    observers: std::sync::OnceLock<Observers>,
    graph: GraphConfig,
    chaos: Option<Chaos>,
}

/// A successful answer, before provenance headers are added.
struct Served {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    outcome: Outcome,
    interaction: Option<u64>,
    episode: Option<(usize, usize)>,
    upstream_latency: Option<Duration>,
    /// Why the leak guard kept this exchange out of the cassette.
    refused: Option<String>,
}

/// A request's parts before sanitizing and keying.
struct Message {
    mode: Mode,
    cassette: String,
    method: http::Method,
    uri: String,
    sanitized_uri: String,
    forward_headers: HeaderMap,
    body: Bytes,
}

/// What a request resolved to before the mode runs.
struct Prepared {
    mode: Mode,
    cassette: String,
    method: http::Method,
    uri: String,
    forward_headers: HeaderMap,
    body: Bytes,
    stored_request: RecordedRequest,
    /// Left out in passthrough, which neither looks up nor stores: normalising the
    /// request and hashing its key were most of its preparation. [`Proxy::key_of`]
    /// computes it when missing, so no path can act on a key that was never computed.
    matched: Option<Matched>,
    fingerprint: u64,
    policy: EpisodePolicy,
    /// Forward-proxy target; `None` in reverse mode.
    target: Option<Target>,
}

/// A request as matching sees it, under its cassette's rules.
struct Matched {
    /// Left out in replay, which needs the key alone: [`matching::key_only`] computes
    /// it without a parsed body. A miss report normalises afresh.
    normalized: Option<Normalized>,
    /// The rules neither dropped members from the body nor sorted its arrays, so a JSON
    /// body in `normalized` is the body as sent.
    json_as_sent: bool,
    key: MatchKey,
}

impl Matched {
    fn of(request: &RecordedRequest, rules: &MatchRules) -> Self {
        let normalized = matching::normalize_recorded(request, rules);
        let key = normalized.key();
        Self {
            normalized: Some(normalized),
            json_as_sent: rules.ignore_pointers.is_empty() && !rules.ignore_array_order,
            key,
        }
    }

    fn key_only(request: &RecordedRequest, rules: &MatchRules) -> Self {
        Self {
            normalized: None,
            json_as_sent: false,
            key: matching::key_of_recorded(request, rules),
        }
    }
}

impl Prepared {
    /// Matching's parse of a JSON body, when it is the body as sent; `normalized` keeps
    /// no body afterwards.
    fn take_json_as_sent(&mut self) -> Option<serde_json::Value> {
        let matched = self.matched.as_mut().filter(|m| m.json_as_sent)?;
        let normalized = matched.normalized.as_mut()?;
        match std::mem::replace(&mut normalized.body, NormalBody::Empty) {
            NormalBody::Json(value) => Some(value),
            other => {
                normalized.body = other;
                None
            }
        }
    }
}

impl Proxy {
    pub fn new(
        config: ProxyConfig,
        forward: ForwardConfig,
        matching: MatchingConfig,
        store: Store,
        upstream: Upstream,
        redactor: Redactor,
    ) -> Self {
        let defaults = Defaults {
            mode: config.mode,
            cassette: config.cassette.clone(),
        };
        Self {
            shared: Arc::new(Shared {
                interceptor: Interceptor::new(forward, &config),
                config,
                matching,
                defaults: RwLock::new(defaults),
                store,
                upstream,
                redactor,
                observers: std::sync::OnceLock::new(),
                graph: GraphConfig::default(),
                chaos: None,
            }),
        }
    }

    /// Reports every exchange from now on to `observers` (audit and metrics). Set once;
    /// later calls are ignored.
    pub fn observe(&self, observers: Observers) {
        let _ = self.shared.observers.set(observers);
    }

    /// Sets the Graph behaviour (`[graph]`) and the chaos layer (`[chaos]`). Call it on a
    /// fresh proxy, before it is cloned into a server: settings never change afterwards.
    pub fn with_graph(mut self, graph: GraphConfig, chaos: &ChaosConfig) -> Self {
        match Arc::get_mut(&mut self.shared) {
            Some(shared) => {
                shared.graph = graph;
                shared.chaos = Chaos::new(chaos);
            }
            None => tracing::error!("graph settings ignored: the proxy is already shared"),
        }
        self
    }

    pub fn defaults(&self) -> Defaults {
        self.shared
            .defaults
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_defaults(&self, defaults: Defaults) {
        *self
            .shared
            .defaults
            .write()
            .unwrap_or_else(|e| e.into_inner()) = defaults;
    }

    /// Handles one request; `target` is set for requests decrypted from an intercepted
    /// CONNECT tunnel (forward-proxy mode), `None` otherwise.
    pub async fn handle_target(
        self,
        request: Request<Incoming>,
        peer: SocketAddr,
        target: Option<Target>,
    ) -> Response<Full<Bytes>> {
        let started = Instant::now();
        let method = request.method().clone();
        if method == http::Method::CONNECT && target.is_none() {
            return Box::pin(self.connect(request, peer, started)).await;
        }
        let target = target
            .or_else(|| forward::absolute_form_target(&request, self.shared.interceptor.config()));
        let client_request_id = request
            .headers()
            .get(&graph::CLIENT_REQUEST_ID_NAME)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let request_target = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
        // Sanitized once: stored, matched and logged in this form.
        let sanitized_uri = self.shared.redactor.uri(request_target);
        let path = match &target {
            Some(target) => format!("{}{}", target.origin(), matching::path_of(&sanitized_uri)),
            None => matching::path_of(&sanitized_uri).to_owned(),
        };
        let defaults = self.defaults();
        let observers = self.shared.observers.get();
        let started_at = SystemTime::now();
        let facts = observers.map(|_| Self::request_facts(&request, &sanitized_uri));
        let mut trace = Trace::new(defaults.mode, &defaults.cassette, request.headers());
        let keep_bodies = observers.is_some_and(Observers::keeps_bodies);
        let (mut upstream_latency, mut interaction, mut response_body) = (None, None, None);
        let exchange = self.exchange(request, &defaults, sanitized_uri, target, &mut trace);
        let (response, outcome, status, detail) = match exchange.await {
            Ok((served, cassette)) => {
                let status = served.status;
                let outcome = served.outcome;
                let upstream_ms = served.upstream_latency.map(log_ms);
                upstream_latency = served.upstream_latency;
                interaction = served.interaction;
                if keep_bodies {
                    response_body = Some(served.body.clone());
                }
                tracing::info!(
                    target: "graphvcr::exchange",
                    %peer, %method, %path, status = status.as_u16(), outcome = outcome.as_str(),
                    %cassette, latency_ms = log_ms(started.elapsed()),
                    upstream_ms, interaction,
                    "exchange"
                );
                (self.finish(served, &cassette), outcome, status, None)
            }
            Err(error) => {
                let outcome = error_outcome(&error);
                let status = error.status();
                let response = self.error_response(&error, outcome, client_request_id.as_deref());
                (response, outcome, status, Some(error.to_string()))
            }
        };
        if let Some(detail) = detail {
            let level_is_error = matches!(outcome, Outcome::Error);
            if level_is_error {
                tracing::error!(target: "graphvcr::exchange", %peer, %method, %path,
                    status = status.as_u16(), outcome = outcome.as_str(), error = %detail, "exchange");
            } else {
                tracing::warn!(target: "graphvcr::exchange", %peer, %method, %path,
                    status = status.as_u16(), outcome = outcome.as_str(), error = %detail,
                    latency_ms = log_ms(started.elapsed()), "exchange");
            }
        }
        if let (Some(observers), Some(facts)) = (observers, &facts) {
            observers
                .exchange(Exchange {
                    started: started_at,
                    latency: started.elapsed(),
                    peer,
                    request: facts,
                    trace,
                    outcome,
                    upstream_latency,
                    interaction,
                    response: &response,
                    response_body,
                })
                .await;
        }
        response
    }

    /// What the audit keeps of a request, taken before the pipeline consumes it.
    fn request_facts(request: &Request<Incoming>, sanitized_uri: &str) -> RequestFacts {
        let header = |name: &HeaderName| {
            request
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        RequestFacts {
            method: request.method().as_str().to_owned(),
            host: header(&header::HOST)
                .or_else(|| request.uri().authority().map(|a| a.to_string()))
                .unwrap_or_default(),
            uri: sanitized_uri.to_owned(),
            http_version: version_name(request.version()).to_owned(),
            content_type: header(&header::CONTENT_TYPE),
            client_request_id: header(&graph::CLIENT_REQUEST_ID_NAME),
        }
    }

    /// A CONNECT: intercepted (TLS terminated here) or tunnelled, as configured.
    async fn connect(
        self,
        request: Request<Incoming>,
        peer: SocketAddr,
        started: Instant,
    ) -> Response<Full<Bytes>> {
        let authority = request.uri().to_string();
        // A tunnel is one audited exchange (graphvcr sees bytes, not requests, inside
        // it); an intercepted CONNECT is not, the requests decrypted from it are.
        let facts = self
            .shared
            .observers
            .get()
            .map(|_| Self::request_facts(&request, &authority));
        let started_at = SystemTime::now();
        let shared = &self.shared;
        let (response, outcome) = match shared
            .interceptor
            .connect(&self, &shared.upstream, request, peer)
            .await
        {
            Ok((response, target)) => {
                let outcome = if target.intercepted {
                    "intercepted"
                } else {
                    Outcome::Tunnel.as_str()
                };
                tracing::info!(
                    target: "graphvcr::exchange",
                    %peer, method = "CONNECT", path = %target.authority(), status = 200u16, outcome,
                    latency_ms = log_ms(started.elapsed()), "exchange"
                );
                if target.intercepted {
                    return response;
                }
                (response, Outcome::Tunnel)
            }
            Err(error) => {
                let outcome = error_outcome(&error);
                tracing::warn!(
                    target: "graphvcr::exchange",
                    %peer, method = "CONNECT", path = %authority, status = error.status().as_u16(),
                    outcome = outcome.as_str(), error = %error, "exchange"
                );
                (self.error_response(&error, outcome, None), outcome)
            }
        };
        if let (Some(observers), Some(facts)) = (self.shared.observers.get(), &facts) {
            let cassette = self.defaults().cassette;
            observers
                .exchange(Exchange {
                    started: started_at,
                    latency: started.elapsed(),
                    peer,
                    request: facts,
                    trace: Trace::new(Mode::Passthrough, &cassette, &HeaderMap::new()),
                    outcome,
                    upstream_latency: None,
                    interaction: None,
                    response: &response,
                    response_body: None,
                })
                .await;
        }
        response
    }

    async fn exchange(
        &self,
        request: Request<Incoming>,
        defaults: &Defaults,
        sanitized_uri: String,
        target: Option<Target>,
        trace: &mut Trace,
    ) -> Result<(Served, String), ProxyError> {
        let mut context = GraphContext::of(&request);
        let prepared = self
            .prepare(request, defaults, sanitized_uri, target, trace)
            .await?;
        let cassette = prepared.cassette.clone();
        if let Some(target) = prepared.target.as_ref().filter(|t| !t.intercepted) {
            if self.shared.interceptor.config().unknown_hosts == UnknownHosts::Deny {
                return Err(ProxyError::TunnelRefused(target.authority()));
            }
            let mut served = Box::pin(self.forward(prepared, false)).await?;
            served.outcome = Outcome::Tunnel;
            return Ok((served, cassette));
        }
        // Links are the proxy's to rewrite only when the client addressed the proxy itself.
        context.reverse = prepared.target.is_none();
        // Graph hook: the chaos layer answers before anything is looked up or forwarded.
        let chaos_headers = match self.chaos(&prepared, &context).await {
            Ok(headers) => headers,
            Err(injected) => return Ok((*injected, cassette)),
        };
        let lint = self.shared.graph.lint && matches!(prepared.mode, Mode::Record | Mode::Auto);
        let version = batch::detect(prepared.method.as_str(), matching::path_of(&prepared.uri));
        let (mut served, recorded_latency) = match version {
            Some(version) if prepared.mode != Mode::Passthrough => {
                Box::pin(self.exchange_batch(prepared, version, &context, lint, &mut trace.notes))
                    .await?
            }
            _ => self.dispatch(prepared, lint, &mut trace.notes).await?,
        };
        self.graph_finish(&mut served, &context, recorded_latency, chaos_headers)
            .await;
        Ok((served, cassette))
    }

    /// Runs the request's mode. Also returns a replayed answer's recorded upstream
    /// latency (for the chaos layer's latency factor).
    ///
    /// Forwarding (and CONNECT, and `$batch`) is awaited through a `Box`: the upstream
    /// client's future was over half of the handler's 9 KiB, and every replayed request
    /// paid for copying it along the chain of futures without ever running it.
    async fn dispatch(
        &self,
        mut prepared: Prepared,
        lint: bool,
        notes: &mut Vec<String>,
    ) -> Result<(Served, Option<Duration>), ProxyError> {
        let latency_of = |episode: &crate::store::Episode| {
            Duration::try_from_secs_f64(episode.reply.upstream_latency_ms / 1000.0).ok()
        };
        let mut linted = None;
        let (latency, served) = match prepared.mode {
            Mode::Replay => match self.lookup(&prepared).await? {
                Lookup::Hit(episode) => (latency_of(&episode), replayed(*episode)),
                Lookup::Exhausted { count } => return Err(self.miss(&prepared, Some(count))),
                Lookup::Absent => return Err(self.miss(&prepared, None)),
            },
            Mode::Auto => match self.lookup(&prepared).await? {
                Lookup::Hit(episode) => (latency_of(&episode), replayed(*episode)),
                Lookup::Exhausted { count } if prepared.policy.exhausted != Exhausted::Forward => {
                    return Err(self.miss(&prepared, Some(count)))
                }
                Lookup::Exhausted { .. } | Lookup::Absent => {
                    linted = lint.then(|| Linted::of(&mut prepared));
                    (None, Box::pin(self.forward(prepared, true)).await?)
                }
            },
            Mode::Record => {
                linted = lint.then(|| Linted::of(&mut prepared));
                (None, Box::pin(self.forward(prepared, true)).await?)
            }
            Mode::Passthrough => (None, Box::pin(self.forward(prepared, false)).await?),
        };
        if let (Some(linted), Outcome::Recorded) = (linted, served.outcome) {
            notes.extend(lint_exchange(&linted, &served));
        }
        Ok((served, latency))
    }

    async fn prepare(
        &self,
        request: Request<Incoming>,
        defaults: &Defaults,
        sanitized_uri: String,
        target: Option<Target>,
        trace: &mut Trace,
    ) -> Result<Prepared, ProxyError> {
        let (parts, body) = request.into_parts();
        let cassette = match parts.headers.get(&CASSETTE) {
            None => defaults.cassette.clone(),
            Some(value) => {
                let text = value.to_str().unwrap_or("");
                validate_cassette_name(CASSETTE_HEADER, text).map_err(|_| {
                    ProxyError::BadControlHeader {
                        name: CASSETTE_HEADER,
                        value: String::from_utf8_lossy(value.as_bytes()).into_owned(),
                        expected: "a cassette name of 1-128 characters from A-Z a-z 0-9 - _ .",
                    }
                })?;
                text.to_owned()
            }
        };
        let mode = match parts.headers.get(&MODE) {
            None => defaults.mode,
            Some(value) => value.to_str().ok().and_then(Mode::parse).ok_or_else(|| {
                ProxyError::BadControlHeader {
                    name: MODE_HEADER,
                    value: String::from_utf8_lossy(value.as_bytes()).into_owned(),
                    expected: "record, replay, auto or passthrough",
                }
            })?,
        };
        trace.mode = mode;
        trace.cassette.clone_from(&cassette);
        let body = self.read_body(&parts.headers, body).await?;
        trace.request_bytes = body.len() as u64;
        let forward_headers = forward_headers(&parts.headers);
        let uri = parts
            .uri
            .path_and_query()
            .map(|pq| pq.as_str().to_owned())
            .unwrap_or_else(|| "/".to_owned());
        let prepared = self.prepare_message(
            Message {
                mode,
                cassette,
                method: parts.method,
                uri,
                sanitized_uri,
                forward_headers,
                body,
            },
            target,
        );
        if self
            .shared
            .observers
            .get()
            .is_some_and(Observers::keeps_bodies)
        {
            trace.request_body = Some(prepared.stored_request.body.clone());
        }
        Ok(prepared)
    }

    /// Sanitizes a request and computes its match key under the cassette's rules. Also
    /// used for each sub-request of a `$batch`.
    fn prepare_message(&self, message: Message, target: Option<Target>) -> Prepared {
        let Message {
            mode,
            cassette,
            method,
            uri,
            sanitized_uri,
            forward_headers,
            body,
        } = message;
        let redactor = &self.shared.redactor;
        let sanitized = redactor.message(&forward_headers, &body);
        let stored_request = RecordedRequest {
            method: method.as_str().to_owned(),
            uri: sanitized_uri,
            host: target.as_ref().map(Target::authority),
            headers: sanitized.headers,
            body: sanitized.body,
        };
        let rule_set = self.shared.matching.for_cassette(&cassette);
        let rules = rule_set.rules_for(
            &stored_request.method,
            matching::path_of(&stored_request.uri),
        );
        let matched = match mode {
            Mode::Passthrough => None,
            Mode::Replay => Some(Matched::key_only(&stored_request, rules)),
            Mode::Record | Mode::Auto => Some(Matched::of(&stored_request, rules)),
        };
        let recorded_after = match (mode, self.shared.config.max_age) {
            (Mode::Auto, Some(max_age)) => SystemTime::now().checked_sub(max_age),
            _ => None,
        };
        let policy = EpisodePolicy {
            order: rules.order,
            exhausted: rules.exhausted,
            recorded_after,
        };
        let fingerprint = rule_set.fingerprint();
        Prepared {
            mode,
            cassette,
            method,
            uri,
            forward_headers,
            body,
            stored_request,
            matched,
            fingerprint,
            policy,
            target,
        }
    }

    /// Reads `cassette`'s replay index into memory (`Store::warm_episodes`) when the
    /// store already holds it for the current rules; an index still to be built is left
    /// to the first lookup, so this never writes. Blocking, for a thread of its own;
    /// returns how many requests it remembered.
    pub fn warm(&self, cassette: &str, cancelled: &AtomicBool) -> Result<usize, ProxyError> {
        let rule_set = self.rule_set(cassette);
        let fingerprint = rule_set.fingerprint();
        let store = &self.shared.store;
        if !store.index_built(cassette, fingerprint)? {
            return Ok(0);
        }
        store.ensure_index(cassette, fingerprint, &|i| rule_set.key_of(i))?;
        Ok(store.warm_episodes(cassette, fingerprint, cancelled)?)
    }

    fn rule_set(&self, cassette: &str) -> &RuleSet {
        self.shared.matching.for_cassette(cassette)
    }

    async fn read_body(&self, headers: &HeaderMap, body: Incoming) -> Result<Bytes, ProxyError> {
        let limit = self.shared.config.max_body_bytes;
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|length| length > limit as u64) {
            return Err(ProxyError::BodyTooLarge { limit });
        }
        let timeout = self.shared.config.body_read_timeout;
        match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
            Err(_) => Err(ProxyError::BodyTimeout(timeout)),
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
            Ok(Err(error)) => {
                if error
                    .downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    Err(ProxyError::BodyTooLarge { limit })
                } else {
                    Err(ProxyError::BodyRead(error.to_string()))
                }
            }
        }
    }

    /// Makes sure the cassette is indexed for its current rules. Building an index reads
    /// the whole cassette, so it runs on the blocking pool, never on a runtime thread.
    async fn ensure_index(&self, cassette: &str, fingerprint: u64) -> Result<(), ProxyError> {
        if self.shared.store.index_ready(cassette, fingerprint) {
            return Ok(());
        }
        let proxy = self.clone();
        let cassette = cassette.to_owned();
        tokio::task::spawn_blocking(move || {
            let rule_set = proxy.rule_set(&cassette);
            proxy
                .shared
                .store
                .ensure_index(&cassette, fingerprint, &|i| rule_set.key_of(i))
        })
        .await
        .map_err(|e| StoreError::Io(format!("indexing task failed: {e}")))??;
        Ok(())
    }

    /// The rules `prepared` is matched under.
    fn rules_of(&self, prepared: &Prepared) -> &MatchRules {
        let request = &prepared.stored_request;
        self.rule_set(&prepared.cassette)
            .rules_for(&request.method, matching::path_of(&request.uri))
    }

    fn key_of(&self, prepared: &Prepared) -> MatchKey {
        match &prepared.matched {
            Some(matched) => matched.key,
            None => matching::key_of_recorded(&prepared.stored_request, self.rules_of(prepared)),
        }
    }

    async fn lookup(&self, prepared: &Prepared) -> Result<Lookup, ProxyError> {
        self.ensure_index(&prepared.cassette, prepared.fingerprint)
            .await?;
        Ok(self.shared.store.next_episode(
            &prepared.cassette,
            prepared.fingerprint,
            &self.key_of(prepared),
            prepared.policy,
        )?)
    }

    fn miss(&self, prepared: &Prepared, exhausted_after: Option<usize>) -> ProxyError {
        let mut report = self.miss_report(prepared);
        report.exhausted_after = exhausted_after;
        ProxyError::Miss(Box::new(report))
    }

    /// Ranks the cassette's requests with the same method: same path first, then fewest
    /// differences. Bounded, since a miss is already the slow path.
    fn miss_report(&self, prepared: &Prepared) -> MissReport {
        const SCANNED: usize = 5_000;
        const SHOWN: usize = 3;
        let computed;
        let received = match prepared
            .matched
            .as_ref()
            .and_then(|m| m.normalized.as_ref())
        {
            Some(normalized) => normalized,
            None => {
                computed =
                    matching::normalize_recorded(&prepared.stored_request, self.rules_of(prepared));
                &computed
            }
        };
        let mut candidates: Vec<(bool, usize, Nearest)> = self
            .shared
            .store
            .interactions(&prepared.cassette, SCANNED)
            .unwrap_or_default()
            .into_iter()
            .filter(|i| i.request.method == prepared.stored_request.method)
            .map(|i| {
                let rules = self
                    .rule_set(&prepared.cassette)
                    .rules_for(&i.request.method, matching::path_of(&i.request.uri));
                let recorded = matching::normalize_recorded(&i.request, rules);
                let differences = matching::differences(&recorded, received);
                (
                    recorded.path != received.path,
                    differences.len(),
                    Nearest {
                        interaction: i.id,
                        method: i.request.method,
                        uri: i.request.uri,
                        differences,
                    },
                )
            })
            .collect();
        candidates.sort_by_key(|c| (c.0, c.1, c.2.interaction));
        candidates.dedup_by(|a, b| a.2.uri == b.2.uri && a.2.differences == b.2.differences);
        MissReport {
            cassette: prepared.cassette.clone(),
            method: prepared.stored_request.method.clone(),
            uri: prepared.stored_request.uri.clone(),
            nearest: candidates.into_iter().take(SHOWN).map(|c| c.2).collect(),
            exhausted_after: None,
        }
    }

    async fn forward(&self, prepared: Prepared, store: bool) -> Result<Served, ProxyError> {
        // Announced before the round trip, so a flush that starts meanwhile waits for it.
        let intent = store.then(|| self.shared.store.intend_write());
        let UpstreamResponse {
            status,
            mut headers,
            body,
            latency,
        } = match &prepared.target {
            None => {
                self.shared
                    .upstream
                    .send(
                        prepared.method.clone(),
                        &prepared.uri,
                        prepared.forward_headers.clone(),
                        prepared.body.clone(),
                    )
                    .await?
            }
            Some(target) => {
                self.shared
                    .upstream
                    .send_to(
                        &target.origin(),
                        prepared.method.clone(),
                        &prepared.uri,
                        prepared.forward_headers.clone(),
                        prepared.body.clone(),
                    )
                    .await?
            }
        };
        strip_hop_by_hop(&mut headers);
        self.keep(prepared, status, headers, body, latency, intent)
            .await
    }

    /// Stores a forwarded exchange (unless there is no write `intent` or the leak guard
    /// refuses) and returns the answer to give. Also used for each sub-response of a
    /// `$batch`.
    async fn keep(
        &self,
        prepared: Prepared,
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        latency: Duration,
        intent: Option<WriteIntent>,
    ) -> Result<Served, ProxyError> {
        let forwarded = |status, headers, body, refused| Served {
            status,
            headers,
            body,
            outcome: Outcome::Forwarded,
            interaction: None,
            episode: None,
            upstream_latency: Some(latency),
            refused,
        };
        let Some(intent) = intent else {
            return Ok(forwarded(status, headers, body, None));
        };
        let sanitized = self.shared.redactor.message(&headers, &body);
        let request_side = redact::Sanitized {
            headers: prepared.stored_request.headers.clone(),
            body: prepared.stored_request.body.clone(),
        };
        let leak = match self.shared.redactor.leak_guard() {
            LeakGuard::Off => None,
            _ => redact::find_leak(
                &prepared.stored_request.uri,
                &[("request", &request_side), ("response", &sanitized)],
            ),
        };
        if let Some(field) = &leak {
            tracing::warn!(
                target: "graphvcr::leak_guard",
                method = %prepared.stored_request.method,
                path = %matching::path_of(&prepared.stored_request.uri),
                found = %field,
                "a value that looks like a secret survived sanitizing; add a sanitizer for it ([sanitize] in config.toml)"
            );
            if self.shared.redactor.leak_guard() == LeakGuard::Refuse {
                return Ok(forwarded(status, headers, body, leak));
            }
        }
        self.ensure_index(&prepared.cassette, prepared.fingerprint)
            .await?;
        let key = self.key_of(&prepared);
        let interaction = Interaction {
            schema: SCHEMA_VERSION,
            id: 0,
            cassette: prepared.cassette,
            recorded_at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            upstream_latency_ms: latency.as_secs_f64() * 1000.0,
            request: prepared.stored_request,
            response: RecordedResponse {
                status: status.as_u16(),
                headers: sanitized.headers,
                body: sanitized.body,
            },
        };
        let stored = self
            .shared
            .store
            .append_intended(intent, prepared.fingerprint, key, interaction)
            .await?;
        Ok(Served {
            status,
            headers,
            body,
            outcome: Outcome::Recorded,
            interaction: Some(stored.id),
            episode: None,
            upstream_latency: Some(latency),
            refused: None,
        })
    }

    fn finish(&self, served: Served, cassette: &str) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(served.body));
        *response.status_mut() = served.status;
        *response.headers_mut() = served.headers;
        if self.shared.config.provenance_headers {
            let headers = response.headers_mut();
            headers.insert(
                OUTCOME.clone(),
                HeaderValue::from_static(served.outcome.as_str()),
            );
            set(headers, CASSETTE.clone(), cassette);
            if let Some(id) = served.interaction {
                headers.insert(INTERACTION.clone(), HeaderValue::from(id));
            }
            if let Some((index, count)) = served.episode {
                set(
                    headers,
                    EPISODE.clone(),
                    &format!("{}/{}", index + 1, count),
                );
            }
        }
        if served.refused.is_some() {
            response
                .headers_mut()
                .insert(LEAK_GUARD.clone(), HeaderValue::from_static("refused"));
        }
        response
    }

    fn error_response(
        &self,
        error: &ProxyError,
        outcome: Outcome,
        client_request_id: Option<&str>,
    ) -> Response<Full<Bytes>> {
        let message = error.to_string();
        let mut response =
            graph::error_response(error.status(), error.code(), &message, client_request_id);
        if let ProxyError::Miss(report) = error {
            let id = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned()
            };
            let mut body = graph::error_body(
                error.code(),
                &message,
                &id(graph::REQUEST_ID),
                &id(graph::CLIENT_REQUEST_ID),
            );
            // Graph's optional `details` carries the nearest recordings for people;
            // `graphvcr` carries the same, structured, for tools.
            body["error"]["details"] = report
                .nearest
                .iter()
                .map(|n| {
                    let differing: Vec<String> = n
                        .differences
                        .iter()
                        .map(|d| format!("{} (recorded {}, received {})", d.field, d.recorded, d.received))
                        .collect();
                    serde_json::json!({
                        "code": "NearestRecordedRequest",
                        "target": format!("{} {}", n.method, n.uri),
                        "message": format!("interaction {} differs in: {}", n.interaction, differing.join("; ")),
                    })
                })
                .collect();
            body["error"]["graphvcr"] = serde_json::to_value(report.as_ref()).unwrap_or_default();
            *response.body_mut() = Full::new(Bytes::from(body.to_string()));
            // 599 has no standard reason phrase; HTTP/1.1 clients then see this one.
            response
                .extensions_mut()
                .insert(hyper::ext::ReasonPhrase::from_static(b"Replay Miss"));
        }
        // graphvcr's own answers are always marked, whatever provenance_headers says.
        response
            .headers_mut()
            .insert(OUTCOME.clone(), HeaderValue::from_static(outcome.as_str()));
        response
    }
}

fn replayed(episode: crate::store::Episode) -> Served {
    let recorded = episode.reply.response;
    let mut headers = recorded.headers;
    // A hand-edited import can carry a stale length; a wrong one would break the reply.
    if let Some(length) = headers.get(header::CONTENT_LENGTH) {
        if length.to_str().ok() != Some(recorded.body.len().to_string().as_str()) {
            headers.insert(
                header::CONTENT_LENGTH,
                HeaderValue::from(recorded.body.len()),
            );
        }
    }
    Served {
        status: StatusCode::from_u16(recorded.status).unwrap_or(StatusCode::OK),
        headers,
        body: recorded.body,
        outcome: Outcome::Replayed,
        interaction: Some(episode.reply.id),
        episode: Some((episode.index, episode.count)),
        upstream_latency: None,
        refused: None,
    }
}

impl Handler for Proxy {
    fn call(&self, request: Request<Incoming>, peer: SocketAddr) -> ResponseFuture {
        let proxy = self.clone();
        Box::pin(async move { server::whole(proxy.handle_target(request, peer, None).await) })
    }
}

fn error_outcome(error: &ProxyError) -> Outcome {
    match error {
        ProxyError::Miss(_) => Outcome::Miss,
        ProxyError::Upstream(_) => Outcome::UpstreamError,
        ProxyError::Store(_) | ProxyError::Ca(_) => Outcome::Error,
        _ => Outcome::Rejected,
    }
}

/// Milliseconds to the microsecond for the log line: `0.019`, not `0.019266000000000002`.
fn log_ms(duration: Duration) -> f64 {
    duration.as_micros() as f64 / 1000.0
}

/// As `Debug` prints it (`HTTP/1.1`), without formatting one per request.
fn version_name(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/?",
    }
}

fn set(headers: &mut HeaderMap, name: impl header::IntoHeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

/// The request headers to send upstream: no hop-by-hop headers, no `Host` (the client
/// sets the upstream's), none of graphvcr's own.
fn forward_headers(incoming: &HeaderMap) -> HeaderMap {
    let mut headers = incoming.clone();
    strip_hop_by_hop(&mut headers);
    headers.remove(header::HOST);
    let own: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with(CONTROL_PREFIX))
        .cloned()
        .collect();
    for name in own {
        headers.remove(name);
    }
    headers
}

/// Removes the fixed hop-by-hop set and every header the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty())
        .collect();
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    for name in listed {
        headers.remove(name.as_str());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_names_read_as_debug_prints_them() {
        for version in [
            http::Version::HTTP_09,
            http::Version::HTTP_10,
            http::Version::HTTP_11,
            http::Version::HTTP_2,
            http::Version::HTTP_3,
        ] {
            assert_eq!(version_name(version), format!("{version:?}"));
        }
    }

    #[test]
    fn log_milliseconds_keep_microseconds_only() {
        assert_eq!(log_ms(Duration::from_nanos(19_266)).to_string(), "0.019");
        assert_eq!(log_ms(Duration::from_millis(1500)).to_string(), "1500");
    }

    #[test]
    fn hop_by_hop_and_own_headers_are_not_forwarded() {
        let mut incoming = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, x-drop-me"),
            ("x-drop-me", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("host", "127.0.0.1:7878"),
            ("x-graphvcr-cassette", "c"),
            ("authorization", "Bearer t"),
            ("content-type", "application/json"),
        ] {
            incoming.append(name, HeaderValue::from_static(value));
        }
        let forwarded = forward_headers(&incoming);
        let mut names: Vec<&str> = forwarded.keys().map(|n| n.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, vec!["authorization", "content-type"]);
    }
}
