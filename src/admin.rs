//! The admin API: JSON over HTTP on its own listener, for test suites and operators
//! driving a running proxy (switch mode or cassette, list and remove cassettes, read and
//! verify the audit, scrape metrics) and for the CLI while the proxy holds the store.
//!
//! Access: loopback peers are served; any other peer only with `admin.token` configured
//! and sent as `Authorization: Bearer TOKEN` ([`access`]). Errors use Graph's error
//! shape, like everything else graphvcr answers.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{channel, BodyExt, Channel, Either, Full, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::audit::query::FilterSpec;
use crate::audit::report::{self, Form};
use crate::audit::{self, AuditError, AuditLog};
use crate::cli::ExportFormat;
use crate::config::{validate_cassette_name, MatchingConfig, Mode};
use crate::metrics::{self, Metrics};
use crate::proxy::{Defaults, Proxy};
use crate::redact::Redactor;
use crate::server::{self, Body, Handler, ResponseFuture};
use crate::store::Store;
use crate::{cassette, graph};

/// Largest request body the admin API reads (an imported cassette document).
const MAX_BODY_BYTES: usize = 256 * 1024 * 1024;
/// Time a client gets to send that body.
const BODY_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether a peer may use the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Allowed,
    /// A token is configured, and the peer did not send it: 401.
    Unauthorized,
    /// No token is configured, so only loopback peers are served: 403.
    Forbidden,
}

/// The access rule, pure so it can be tested with addresses tests cannot connect from:
/// loopback is always served; others need the configured token as a Bearer token.
pub fn access(peer: IpAddr, token: Option<&str>, authorization: Option<&str>) -> Access {
    let loopback = match peer {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(v6.is_loopback(), |v4| v4.is_loopback()),
    };
    if loopback {
        return Access::Allowed;
    }
    let Some(expected) = token else {
        return Access::Forbidden;
    };
    let presented = authorization
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    match presented {
        Some(presented) if constant_time_eq(presented.as_bytes(), expected.as_bytes()) => {
            Access::Allowed
        }
        _ => Access::Unauthorized,
    }
}

/// Compares without stopping at the first difference, so timing does not reveal how
/// much of a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Debug, thiserror::Error)]
enum AdminError {
    #[error("{0}")]
    NotFound(String),
    #[error("{method} is not allowed on {path}; allowed: {allow}")]
    MethodNotAllowed {
        method: Method,
        path: String,
        allow: &'static str,
    },
    #[error("{0}")]
    BadRequest(String),
    #[error("the admin API needs `Authorization: Bearer <admin.token>` from this address")]
    Unauthorized,
    #[error("the admin API serves loopback peers only (set admin.token to admit others)")]
    Forbidden,
    #[error("{0}")]
    Internal(String),
}

impl AdminError {
    fn status(&self) -> StatusCode {
        match self {
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "ResourceNotFound",
            Self::MethodNotAllowed { .. } => "MethodNotAllowed",
            Self::BadRequest(_) => "BadRequest",
            Self::Unauthorized => "Unauthorized",
            Self::Forbidden => "Forbidden",
            Self::Internal(_) => "InternalServerError",
        }
    }
}

impl From<AuditError> for AdminError {
    fn from(error: AuditError) -> Self {
        match error {
            AuditError::Query(message) => Self::BadRequest(message),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<crate::store::StoreError> for AdminError {
    fn from(error: crate::store::StoreError) -> Self {
        Self::Internal(error.to_string())
    }
}

/// The admin API handler. Clones share the proxy, store and metrics.
#[derive(Clone)]
pub struct Admin {
    proxy: Proxy,
    store: Store,
    metrics: Metrics,
    audit: Option<AuditLog>,
    token: Option<String>,
    /// The proxy's redactor, for its running count of redactions.
    redactor: Redactor,
    /// Rules that index imported cassettes, as the proxy's own recordings are.
    matching: MatchingConfig,
}

/// What the admin API is built from.
pub struct AdminParts {
    pub proxy: Proxy,
    pub store: Store,
    pub metrics: Metrics,
    pub audit: Option<AuditLog>,
    pub token: Option<String>,
    pub redactor: Redactor,
    pub matching: MatchingConfig,
}

impl Admin {
    pub fn new(parts: AdminParts) -> Self {
        let AdminParts {
            proxy,
            store,
            metrics,
            audit,
            token,
            redactor,
            matching,
        } = parts;
        Self {
            proxy,
            store,
            metrics,
            audit,
            token,
            redactor,
            matching,
        }
    }

    async fn handle(self, request: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let authorization = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let result = match access(peer.ip(), self.token.as_deref(), authorization) {
            Access::Allowed => self.route(request).await,
            Access::Unauthorized => Err(AdminError::Unauthorized),
            Access::Forbidden => Err(AdminError::Forbidden),
        };
        match result {
            Ok(response) => {
                tracing::debug!(target: "graphvcr::admin", %peer, %method, %path,
                    status = response.status().as_u16(), "admin request");
                response
            }
            Err(error) => {
                tracing::info!(target: "graphvcr::admin", %peer, %method, %path,
                    status = error.status().as_u16(), error = %error, "admin request refused");
                let mut response =
                    graph::error_response(error.status(), error.code(), &error.to_string(), None);
                match &error {
                    AdminError::MethodNotAllowed { allow, .. } => {
                        response
                            .headers_mut()
                            .insert(header::ALLOW, HeaderValue::from_static(allow));
                    }
                    AdminError::Unauthorized => {
                        response.headers_mut().insert(
                            header::WWW_AUTHENTICATE,
                            HeaderValue::from_static("Bearer realm=\"graphvcr-admin\""),
                        );
                    }
                    _ => {}
                }
                server::whole(response)
            }
        }
    }

    async fn route(&self, request: Request<Incoming>) -> Result<Response<Body>, AdminError> {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let query = request.uri().query().unwrap_or("").to_owned();
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let not_allowed = |allow: &'static str| AdminError::MethodNotAllowed {
            method: method.clone(),
            path: path.clone(),
            allow,
        };
        let answer = match (segments.as_slice(), &method) {
            (["health"], &Method::GET) => Ok(self.health()),
            (["health"], _) => Err(not_allowed("GET")),
            (["mode"], &Method::GET) => Ok(self.mode()),
            (["mode"], &Method::PUT) => self.set_mode(read_body(request).await?),
            (["mode"], _) => Err(not_allowed("GET, PUT")),
            (["cassettes"], &Method::GET) => self.cassettes(),
            (["cassettes"], _) => Err(not_allowed("GET")),
            (["cassettes", name], &Method::DELETE) => self.delete(cassette_name(name)?).await,
            (["cassettes", _], _) => Err(not_allowed("DELETE")),
            (["cassettes", name, "interactions"], &Method::GET) => {
                return self.interactions(cassette_name(name)?, &query).await;
            }
            (["cassettes", name, "interactions"], &Method::POST) => {
                let name = cassette_name(name)?;
                self.import(name, read_body(request).await?).await
            }
            (["cassettes", _, "interactions"], _) => Err(not_allowed("GET, POST")),
            (["cassettes", name, "select"], &Method::POST) => self.select(cassette_name(name)?),
            (["cassettes", name, "prune"], &Method::POST) => {
                self.prune(cassette_name(name)?, &query).await
            }
            (["cassettes", _, "prune"], _) => Err(not_allowed("POST")),
            (["cassettes", _, "select"], _) => Err(not_allowed("POST")),
            (["audit"], &Method::GET) => return self.audit(&query).await,
            (["audit"], _) => Err(not_allowed("GET")),
            (["audit", "stats"], &Method::GET) => self.audit_stats(&query).await,
            (["audit", "verify"], &Method::GET) => self.verify().await,
            (["audit", "stats" | "verify"], _) => Err(not_allowed("GET")),
            (["metrics"], &Method::GET) => Ok(self.metrics()),
            (["metrics"], _) => Err(not_allowed("GET")),
            _ => Err(AdminError::NotFound(format!(
                "no admin resource at {path}; see README.md, \"Admin API\""
            ))),
        };
        answer.map(server::whole)
    }

    fn health(&self) -> Response<Full<Bytes>> {
        let defaults = self.proxy.defaults();
        json_ok(json!({
            "status": "ok",
            "version": env!("CARGO_PKG_VERSION"),
            "pid": std::process::id(),
            "mode": defaults.mode,
            "cassette": defaults.cassette,
        }))
    }

    fn mode(&self) -> Response<Full<Bytes>> {
        let defaults = self.proxy.defaults();
        json_ok(json!({"mode": defaults.mode, "cassette": defaults.cassette}))
    }

    fn set_mode(&self, body: Bytes) -> Result<Response<Full<Bytes>>, AdminError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct ModeBody {
            mode: String,
        }
        let parsed: ModeBody = serde_json::from_slice(&body).map_err(|e| {
            AdminError::BadRequest(format!("expected {{\"mode\": \"replay\"}}: {e}"))
        })?;
        let mode = Mode::parse(&parsed.mode).ok_or_else(|| {
            AdminError::BadRequest(format!(
                "mode {:?} is not one of record, replay, auto, passthrough",
                parsed.mode
            ))
        })?;
        let mut defaults = self.proxy.defaults();
        defaults.mode = mode;
        self.proxy.set_defaults(defaults);
        tracing::info!(target: "graphvcr::admin", %mode, "default mode switched");
        Ok(self.mode())
    }

    fn select(&self, name: String) -> Result<Response<Full<Bytes>>, AdminError> {
        let Defaults { mode, .. } = self.proxy.defaults();
        tracing::info!(target: "graphvcr::admin", cassette = %name, "default cassette switched");
        self.proxy.set_defaults(Defaults {
            mode,
            cassette: name,
        });
        Ok(self.mode())
    }

    fn cassettes(&self) -> Result<Response<Full<Bytes>>, AdminError> {
        let cassettes = self.store.cassettes()?;
        Ok(json_ok(json!({
            "default": self.proxy.defaults().cassette,
            "cassettes": cassettes,
        })))
    }

    /// The cassette's export document, streamed as it is read (see [`streamed`]): compact,
    /// or with `pretty=true` the bytes `cassette export` writes; `format=har` for a HAR
    /// log, `base_url=URL` completing its reverse-mode URLs; `format=table` for the
    /// `cassette show` listing. Whether the cassette exists
    /// is settled first, while a 404 can still be sent.
    async fn interactions(&self, name: String, query: &str) -> Result<Response<Body>, AdminError> {
        if let Some(unknown) =
            query_names(query).find(|n| !["format", "pretty", "base_url"].contains(n))
        {
            return Err(AdminError::BadRequest(format!(
                "unknown parameter '{unknown}' (format, pretty, base_url)"
            )));
        }
        let format = match query_param(query, "format").as_deref() {
            None | Some("json") => Some(ExportFormat::Json),
            Some("har") => Some(ExportFormat::Har),
            // The `cassette show` listing.
            Some("table") => None,
            Some(other) => {
                return Err(AdminError::BadRequest(format!(
                    "format {other:?} is not json, har or table"
                )))
            }
        };
        let pretty = pretty_param(query)?;
        let base_url = query_param(query, "base_url")
            .unwrap_or_else(|| crate::graph::DEFAULT_UPSTREAM.to_owned());
        let store = self.store.clone();
        let known = {
            let (store, name) = (store.clone(), name.clone());
            blocking(move || Ok(store.has_cassette(&name)?)).await?
        };
        if !known {
            return Err(AdminError::NotFound(format!("no cassette named '{name}'")));
        }
        let content_type = match format {
            Some(_) => "application/json",
            None => "text/plain; charset=utf-8",
        };
        streamed(content_type, move |mut out| {
            match format {
                Some(format) => {
                    cassette::write_export(&store, &name, format, &base_url, pretty, out)
                }
                None => cassette::print_show(&store, &name, &mut out),
            }
            .map_err(|e| AdminError::Internal(e.to_string()))
        })
        .await
    }

    /// Imports an export document or a HAR 1.2 file into cassette `name`.
    async fn import(&self, name: String, body: Bytes) -> Result<Response<Full<Bytes>>, AdminError> {
        let text = std::str::from_utf8(&body)
            .map_err(|_| AdminError::BadRequest("the document is not UTF-8".into()))?;
        let imported = cassette::parse_any(text, std::path::Path::new("request body"), &name)
            .map_err(|e| AdminError::BadRequest(e.to_string()))?;
        let store = self.store.clone();
        let matching = self.matching.clone();
        let cassette = name.clone();
        let count = blocking(move || {
            cassette::import_interactions(&store, &cassette, imported.interactions, &matching)
                .map_err(|e| AdminError::BadRequest(e.to_string()))
        })
        .await?;
        Ok(json_ok(json!({"cassette": name, "imported": count})))
    }

    /// `POST /cassettes/{name}/prune?older_than=30d`: removes interactions recorded
    /// longer ago than the duration, as `graphvcr cassette prune` does.
    async fn prune(&self, name: String, query: &str) -> Result<Response<Full<Bytes>>, AdminError> {
        let text = query_param(query, "older_than")
            .ok_or_else(|| AdminError::BadRequest("older_than=DURATION is required".into()))?;
        let age = humantime::parse_duration(&text).map_err(|e| {
            AdminError::BadRequest(format!(
                "older_than {text:?} is not a duration like 30d: {e}"
            ))
        })?;
        let cutoff = std::time::SystemTime::now()
            .checked_sub(age)
            .ok_or_else(|| AdminError::BadRequest("older_than reaches before 1970".into()))?;
        let removed = self.store.prune(&name, cutoff).await?;
        Ok(json_ok(json!({"cassette": name, "removed": removed})))
    }

    async fn delete(&self, name: String) -> Result<Response<Full<Bytes>>, AdminError> {
        match self.store.delete_cassette(&name).await? {
            Some(count) => Ok(json_ok(json!({"cassette": name, "deleted": count}))),
            None => Err(AdminError::NotFound(format!("no cassette named '{name}'"))),
        }
    }

    /// The matching records, in every form written as the trail is read (see
    /// [`streamed`] and `audit::report`): a full trail of 100,000 records is ~80 MB of
    /// JSON. `pretty=true` indents a HAR log, as the CLI writes it.
    async fn audit(&self, query: &str) -> Result<Response<Body>, AdminError> {
        let pretty = pretty_param(query)?;
        let (form, content_type) = match query_param(query, "format").as_deref().unwrap_or("json") {
            "json" => (Form::Json, "application/json"),
            "jsonl" => (Form::Jsonl, "application/x-ndjson"),
            "har" => (Form::Har { pretty }, "application/json"),
            "table" => (Form::Table, "text/plain; charset=utf-8"),
            other => {
                return Err(AdminError::BadRequest(format!(
                    "format {other:?} is not one of json, jsonl, har, table"
                )))
            }
        };
        let filter = self.filter(query).await?;
        let store = self.store.clone();
        streamed(content_type, move |out| {
            report::write(&store, &filter, form, out, write_error)
        })
        .await
    }

    async fn audit_stats(&self, query: &str) -> Result<Response<Full<Bytes>>, AdminError> {
        let filter = self.filter(query).await?;
        let store = self.store.clone();
        let stats =
            blocking(move || audit::stats(&store, &filter).map_err(AdminError::from)).await?;
        Ok(json_ok(serde_json::to_value(stats).unwrap_or_default()))
    }

    /// The query string's filter, once every exchange answered so far is in the trail.
    async fn filter(&self, query: &str) -> Result<audit::query::Filter, AdminError> {
        let filter = FilterSpec::from_query(query)?.parse(std::time::SystemTime::now())?;
        self.sync_audit().await;
        Ok(filter)
    }

    async fn verify(&self) -> Result<Response<Full<Bytes>>, AdminError> {
        self.sync_audit().await;
        let store = self.store.clone();
        let verification =
            blocking(move || audit::verify(&store).map_err(AdminError::from)).await?;
        Ok(json_ok(
            serde_json::to_value(verification).unwrap_or_default(),
        ))
    }

    /// Read-your-writes: an exchange whose response a client has seen is in the answer.
    async fn sync_audit(&self) {
        if let Some(audit) = &self.audit {
            audit.sync().await;
        }
    }

    fn metrics(&self) -> Response<Full<Bytes>> {
        let records = self.audit.as_ref().map_or(0, AuditLog::records);
        text_ok(
            metrics::CONTENT_TYPE,
            self.metrics.render(
                metrics::StoreFigures {
                    bytes: self.store.size_on_disk(),
                    flushes: self.store.flushes(),
                },
                records,
                self.redactor.redaction_count(),
            ),
        )
    }
}

impl Handler for Admin {
    fn call(&self, request: Request<Incoming>, peer: SocketAddr) -> ResponseFuture {
        Box::pin(self.clone().handle(request, peer))
    }
}

fn cassette_name(name: &str) -> Result<String, AdminError> {
    validate_cassette_name("cassette", name).map_err(|e| AdminError::BadRequest(e.to_string()))?;
    Ok(name.to_owned())
}

/// The names of a query string's parameters.
fn query_names(query: &str) -> impl Iterator<Item = &str> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').map_or(p, |(name, _)| name))
}

/// A query parameter's value, percent-decoded; the first when it is given twice.
fn query_param(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .find_map(|p| p.strip_prefix(name)?.strip_prefix('='))
        .map(|v| {
            percent_encoding::percent_decode_str(v)
                .decode_utf8_lossy()
                .into_owned()
        })
}

/// `pretty=true|false`, false when absent.
fn pretty_param(query: &str) -> Result<bool, AdminError> {
    match query_param(query, "pretty").as_deref() {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(AdminError::BadRequest(format!(
            "pretty {other:?} is not true or false"
        ))),
    }
}

/// Store scans can take a while on a large store: keep them off the runtime threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, AdminError> + Send + 'static,
) -> Result<T, AdminError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| AdminError::Internal(format!("admin task failed: {e}")))?
}

async fn read_body(request: Request<Incoming>) -> Result<Bytes, AdminError> {
    let body = Limited::new(request.into_body(), MAX_BODY_BYTES);
    match tokio::time::timeout(BODY_TIMEOUT, body.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(error)) => Err(AdminError::BadRequest(format!(
            "request body could not be read: {error}"
        ))),
        Err(_) => Err(AdminError::BadRequest(format!(
            "request body did not arrive within {BODY_TIMEOUT:?}"
        ))),
    }
}

fn json_ok(value: Value) -> Response<Full<Bytes>> {
    text_ok("application/json", value.to_string())
}

/// A response whose body `produce` writes on a blocking thread, sent in chunks of
/// [`STREAM_CHUNK_BYTES`] with at most [`STREAM_CHUNKS_AHEAD`] waiting for the client: a
/// slow reader holds the writer back rather than letting the document pile up in memory.
/// The status waits for the first chunk, so a failure before it (a damaged trail's first
/// record, a whole small document) is answered as an error like any other; one after it
/// can only cut the body short (the client sees an incomplete response), and is logged.
/// A client that takes no chunk for [`STREAM_STALL_TIMEOUT`] has its answer cut short
/// too, so a stalled reader does not hold a blocking thread and the store for ever.
async fn streamed(
    content_type: &'static str,
    produce: impl FnOnce(&mut dyn Write) -> Result<(), AdminError> + Send + 'static,
) -> Result<Response<Body>, AdminError> {
    streamed_with(STREAM_STALL_TIMEOUT, content_type, produce).await
}

async fn streamed_with(
    stall_timeout: Duration,
    content_type: &'static str,
    produce: impl FnOnce(&mut dyn Write) -> Result<(), AdminError> + Send + 'static,
) -> Result<Response<Body>, AdminError> {
    let (sender, body) = Channel::new(STREAM_CHUNKS_AHEAD);
    let (started, first_chunk) = tokio::sync::oneshot::channel();
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let mut out = ChannelWriter {
            sender,
            runtime,
            stall_timeout,
            buffer: Vec::with_capacity(STREAM_CHUNK_BYTES),
            started: Some(started),
        };
        // A writer that panics must not end the body as if it were complete.
        let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| produce(&mut out)))
            .unwrap_or_else(|_| Err(AdminError::Internal("the writer panicked".to_owned())))
            .and_then(|()| out.send_buffer().map_err(write_error));
        match (written, out.started.take()) {
            (Ok(()), started) => {
                // An empty body: nothing was sent, so the status has not been either.
                if let Some(started) = started {
                    let _ = started.send(Ok(()));
                }
            }
            (Err(error), Some(started)) => {
                let _ = started.send(Err(error));
            }
            (Err(error), None) => {
                tracing::warn!(target: "graphvcr::admin", %error, "a streamed admin answer was cut short");
                out.sender.abort(std::io::Error::other(error.to_string()));
            }
        }
    });
    match first_chunk.await {
        Ok(Ok(())) => {
            let mut response = Response::new(Either::Right(body));
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            Ok(response)
        }
        Ok(Err(error)) => Err(error),
        Err(_) => Err(AdminError::Internal(
            "the writer of the answer ended without one".to_owned(),
        )),
    }
}

fn write_error(error: std::io::Error) -> AdminError {
    AdminError::Internal(format!("cannot write the answer: {error}"))
}

/// Bytes per chunk of a streamed answer.
const STREAM_CHUNK_BYTES: usize = 64 * 1024;
/// Chunks a streamed answer may have written ahead of the client.
const STREAM_CHUNKS_AHEAD: usize = 4;
/// How long a streamed answer waits for the client to take a chunk.
const STREAM_STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// `Write` into a streamed body, from a blocking thread.
struct ChannelWriter {
    sender: channel::Sender<Bytes, std::io::Error>,
    runtime: tokio::runtime::Handle,
    stall_timeout: Duration,
    buffer: Vec<u8>,
    /// Told once, before the first chunk goes out: the response can then be sent.
    started: Option<tokio::sync::oneshot::Sender<Result<(), AdminError>>>,
}

impl ChannelWriter {
    fn send_buffer(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        if let Some(started) = self.started.take() {
            let _ = started.send(Ok(()));
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buffer,
            Vec::with_capacity(STREAM_CHUNK_BYTES),
        ));
        let timeout = self.stall_timeout;
        match self
            .runtime
            .block_on(tokio::time::timeout(timeout, self.sender.send_data(chunk)))
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the client went away",
            )),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the client took nothing for {timeout:?}"),
            )),
        }
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= STREAM_CHUNK_BYTES {
            self.send_buffer()?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send_buffer()
    }
}

fn text_ok(content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(peer: &str, token: Option<&str>, authorization: Option<&str>, expected: Access) {
        let ip: IpAddr = peer.parse().expect("address");
        assert_eq!(
            access(ip, token, authorization),
            expected,
            "{peer} token={token:?} authorization={authorization:?}"
        );
    }

    #[test]
    fn access_rule() {
        let token = Some("0123456789abcdef-secret");
        check("127.0.0.1", None, None, Access::Allowed);
        check("127.8.9.10", None, None, Access::Allowed);
        check("::1", None, None, Access::Allowed);
        check("::ffff:127.0.0.1", None, None, Access::Allowed);
        check("127.0.0.1", token, None, Access::Allowed);
        check("192.0.2.10", None, None, Access::Forbidden);
        check(
            "192.0.2.10",
            None,
            Some("Bearer anything"),
            Access::Forbidden,
        );
        check("2001:db8::1", None, None, Access::Forbidden);
        check("::ffff:192.0.2.10", None, None, Access::Forbidden);
        check("192.0.2.10", token, None, Access::Unauthorized);
        check(
            "192.0.2.10",
            token,
            Some("Bearer wrong"),
            Access::Unauthorized,
        );
        check(
            "192.0.2.10",
            token,
            Some("Basic 0123456789abcdef-secret"),
            Access::Unauthorized,
        );
        check(
            "192.0.2.10",
            token,
            Some("Bearer 0123456789abcdef-secre"),
            Access::Unauthorized,
        );
        check(
            "192.0.2.10",
            token,
            Some("Bearer 0123456789abcdef-secret"),
            Access::Allowed,
        );
        check(
            "192.0.2.10",
            token,
            Some("bearer 0123456789abcdef-secret"),
            Access::Allowed,
        );
        check(
            "2001:db8::1",
            token,
            Some("Bearer 0123456789abcdef-secret"),
            Access::Allowed,
        );
    }

    /// A body `streamed` and read back: every frame, and whether it ended cleanly.
    async fn read_streamed(response: Response<Body>) -> (Vec<Bytes>, Result<(), String>) {
        let mut body = response.into_body();
        let mut frames = Vec::new();
        loop {
            match tokio::time::timeout(Duration::from_secs(10), body.frame()).await {
                Err(_) => return (frames, Err("no frame within 10 s".to_owned())),
                Ok(None) => return (frames, Ok(())),
                Ok(Some(Err(error))) => return (frames, Err(error.to_string())),
                Ok(Some(Ok(frame))) => frames.extend(frame.into_data().ok()),
            }
        }
    }

    #[tokio::test]
    async fn a_streamed_answer_arrives_whole_in_chunks() {
        let document: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let expected = document.clone();
        let response = streamed("application/json", move |out| {
            for piece in document.chunks(1000) {
                out.write_all(piece).map_err(write_error)?;
            }
            Ok(())
        })
        .await
        .expect("an answer");
        assert_eq!(
            response.headers().get(header::CONTENT_TYPE),
            Some(&HeaderValue::from_static("application/json"))
        );
        let (frames, ended) = read_streamed(response).await;
        assert_eq!(ended, Ok(()));
        assert!(
            frames.len() >= expected.len() / STREAM_CHUNK_BYTES,
            "sent in chunks, not whole: {} frames",
            frames.len()
        );
        assert!(frames.iter().all(|f| f.len() <= STREAM_CHUNK_BYTES + 1000));
        assert_eq!(frames.concat(), expected);
    }

    #[tokio::test]
    async fn a_streamed_answer_that_fails_before_its_first_chunk_is_an_error_answer() {
        let failed = streamed("application/json", |out| {
            out.write_all(b"{\"records\":[").map_err(write_error)?;
            Err(AdminError::Internal(
                "the trail could not be read".to_owned(),
            ))
        })
        .await;
        let Err(error) = failed else {
            panic!("an error before any chunk went out is answered as an error");
        };
        assert_eq!(error.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(
            error.to_string().contains("the trail could not be read"),
            "{error}"
        );
        let empty = streamed("application/json", |_| Ok(()))
            .await
            .expect("an empty body is an answer");
        assert_eq!(read_streamed(empty).await, (Vec::new(), Ok(())));
    }

    #[tokio::test]
    async fn a_streamed_answer_that_fails_part_way_ends_in_an_error() {
        let response = streamed("application/json", |out| {
            out.write_all(&[b'x'; 3 * STREAM_CHUNK_BYTES])
                .map_err(write_error)?;
            Err(AdminError::Internal(
                "the store could not be read".to_owned(),
            ))
        })
        .await
        .expect("the first chunks went out");
        let (frames, ended) = read_streamed(response).await;
        assert_eq!(frames.concat().len(), 3 * STREAM_CHUNK_BYTES);
        assert!(
            ended
                .as_ref()
                .is_err_and(|e| e.contains("the store could not be read")),
            "the body ends in the error, not cleanly: {ended:?}"
        );
    }

    #[tokio::test]
    async fn a_streamed_answer_whose_writer_panics_is_an_error() {
        let failed = streamed("application/json", |out| {
            out.write_all(b"{\"interactions\":[").map_err(write_error)?;
            panic!("deliberate panic from a test writer");
        })
        .await;
        assert!(
            failed.is_err_and(|e| e.to_string().contains("the writer panicked")),
            "a panic is an error, never a complete answer"
        );
    }

    #[tokio::test]
    async fn a_streamed_answer_to_a_client_that_stops_reading_is_cut_short() {
        let (outcome, told) = tokio::sync::oneshot::channel();
        let response = streamed_with(Duration::from_millis(50), "application/json", move |out| {
            let mut result = Ok(());
            // Far more than the chunks allowed ahead, none of them read.
            for _ in 0..64 {
                result = out.write_all(&[b'x'; STREAM_CHUNK_BYTES]);
                if result.is_err() {
                    break;
                }
            }
            let _ = outcome.send(result.map_err(|e| e.kind()));
            Ok(())
        })
        .await
        .expect("the first chunk went out");
        let result = tokio::time::timeout(Duration::from_secs(10), told)
            .await
            .expect("the writer ends")
            .expect("outcome");
        assert_eq!(result, Err(std::io::ErrorKind::TimedOut));
        // Held, never read, until the writer gave up.
        drop(response);
    }

    #[tokio::test]
    async fn a_streamed_answer_stops_writing_once_the_client_goes_away() {
        let (outcome, told) = tokio::sync::oneshot::channel();
        let response = streamed("application/json", move |out| {
            let mut written = 0usize;
            let result = loop {
                if let Err(error) = out.write_all(&[b'x'; 1024]) {
                    break Err(error);
                }
                written += 1024;
                // Far more than the chunks allowed ahead: the writer must have been
                // told long before this.
                if written > 1024 * STREAM_CHUNK_BYTES {
                    break Ok(());
                }
            };
            let _ = outcome.send(result.map_err(|e| e.kind()));
            Ok(())
        })
        .await
        .expect("the first chunk went out");
        drop(response);
        let result = tokio::time::timeout(Duration::from_secs(10), told)
            .await
            .expect("the writer ends")
            .expect("outcome");
        assert_eq!(result, Err(std::io::ErrorKind::BrokenPipe));
    }
}
