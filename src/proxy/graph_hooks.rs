//! The proxy's Graph hooks, kept apart from the generic pipeline in `proxy.rs`: `$batch`
//! per sub-request, the chaos layer, and answer post-processing (headers, links, rate
//! limit, latency). The Graph knowledge itself lives in [`crate::graph`]; these hooks
//! only connect it to the proxy's own lookup, miss and record steps.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Request, StatusCode};
use hyper::body::Incoming;

use super::{
    replayed, set, Message, Outcome, Prepared, Proxy, Served, EPISODE_HEADER, INTERACTION_HEADER,
    OUTCOME_HEADER,
};
use crate::config::Mode;
use crate::error::ProxyError;
use crate::graph::{self, batch};
use crate::matching;
use crate::record;
use crate::store::Lookup;

/// Compressed bodies larger than this once decoded are left as received: a
/// decompression bomb must not take the proxy's memory.
const MAX_DECODED_BYTES: usize = 64 * 1024 * 1024;

/// What the Graph hooks need from the original request, taken before it is consumed.
pub(super) struct GraphContext {
    pub(super) client_request_id: Option<String>,
    /// `host:port` as the client reached the proxy, for link rewriting.
    pub(super) proxy_host: Option<String>,
    /// A reverse-proxy request (origin-form target); links are rewritten only then.
    pub(super) reverse: bool,
}

impl GraphContext {
    pub(super) fn of(request: &Request<Incoming>) -> Self {
        let client_request_id = request
            .headers()
            .get(graph::CLIENT_REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(str::to_owned);
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .or_else(|| request.uri().authority().map(|a| a.as_str().to_owned()));
        Self {
            client_request_id,
            proxy_host: host,
            // Settled once the request's forward-proxy target is known.
            reverse: true,
        }
    }
}

impl Proxy {
    /// The chaos layer's verdict: the headers to add to the real answer, or (as `Err`)
    /// the injected answer that replaces it.
    pub(super) async fn chaos(
        &self,
        prepared: &Prepared,
        context: &GraphContext,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, Box<Served>> {
        let Some(chaos) = &self.shared.chaos else {
            return Ok(Vec::new());
        };
        let verdict = chaos
            .decide(
                prepared.method.as_str(),
                matching::path_of(&prepared.stored_request.uri),
                context.client_request_id.as_deref(),
            )
            .await;
        match verdict.inject {
            None => Ok(verdict.headers),
            Some(injected) => {
                let mut served = injected_served(injected);
                served.headers.extend(verdict.headers);
                tokio::time::sleep(chaos.delay(None)).await;
                Err(Box::new(served))
            }
        }
    }

    /// Makes an answer look as Graph would send it through this proxy: replayed answers
    /// echo `client-request-id` (and get a fresh `request-id` / `Date` when configured),
    /// links point back at the proxy, the rate limit's headers are added, and the chaos
    /// layer's latency is waited out.
    pub(super) async fn graph_finish(
        &self,
        served: &mut Served,
        context: &GraphContext,
        recorded_latency: Option<Duration>,
        chaos_headers: Vec<(HeaderName, HeaderValue)>,
    ) {
        let settings = &self.shared.graph;
        if served.outcome == Outcome::Replayed {
            graph::refresh_replayed_headers(
                &mut served.headers,
                context.client_request_id.as_deref(),
                settings.regenerate_request_id,
                settings.regenerate_date,
            );
        }
        if let (true, true, Some(host)) = (
            settings.rewrite_links,
            context.reverse,
            context.proxy_host.as_deref(),
        ) {
            // The scheme the client used to reach this listener.
            let scheme = if self.shared.config.tls.is_some() {
                "https"
            } else {
                "http"
            };
            let proxy_origin = format!("{scheme}://{host}");
            let rewrite = graph::links::Rewrite {
                upstream_origin: self.shared.upstream.origin(),
                proxy_origin: &proxy_origin,
            };
            rewrite_links(&rewrite, &mut served.headers, &mut served.body);
        }
        served.headers.extend(chaos_headers);
        if let Some(chaos) = &self.shared.chaos {
            tokio::time::sleep(chaos.delay(recorded_latency)).await;
        }
    }

    /// `$batch`: record forwards the whole batch (one upstream call) and then keeps each
    /// sub-exchange as an interaction of its own; replay answers each sub-request from
    /// its own recording; auto replays when every sub-request is recorded, else records.
    /// A body that is not a well-formed batch is handled as one ordinary request.
    pub(super) async fn exchange_batch(
        &self,
        prepared: Prepared,
        version: graph::ApiVersion,
        context: &GraphContext,
        lint: bool,
        notes: &mut Vec<String>,
    ) -> Result<(Served, Option<Duration>), ProxyError> {
        // A compressed batch body is split in its decoded form (and forwarded as sent).
        let encoding = prepared
            .forward_headers
            .get(header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok());
        let decoded = record::decode_body(encoding, &prepared.body, MAX_DECODED_BYTES);
        let parts = match batch::parse(version, decoded.as_deref().unwrap_or(&prepared.body)) {
            Ok(parts) => parts,
            Err(error) => {
                tracing::debug!(%error, "batch not split; handled as one request");
                return self.dispatch(prepared, lint, notes).await;
            }
        };
        let subs: Vec<Prepared> = parts
            .iter()
            .map(|part| self.prepare_part(&prepared, part))
            .collect();
        let replay = match prepared.mode {
            Mode::Replay => true,
            Mode::Auto => {
                let mut all = true;
                for sub in &subs {
                    self.ensure_index(&sub.cassette, sub.fingerprint).await?;
                    all &= self.shared.store.is_recorded(
                        &sub.cassette,
                        sub.fingerprint,
                        &self.key_of(sub),
                    )?;
                }
                all
            }
            _ => false,
        };
        if replay {
            let served = self.replay_batch(&parts, subs, context).await?;
            return Ok((served, None));
        }
        let served = self.forward(prepared, true).await?;
        let encoding = served
            .headers
            .get(header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok());
        let decoded = record::decode_body(encoding, &served.body, MAX_DECODED_BYTES);
        let mut answers = batch::responses(decoded.as_deref().unwrap_or(&served.body));
        let latency = served.upstream_latency.unwrap_or_default();
        for (part, mut sub) in parts.iter().zip(subs) {
            let Some(answer) = answers.remove(&part.id) else {
                continue;
            };
            let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
            let headers = header_map(&answer.headers);
            let linted = lint.then(|| Linted::of(&mut sub));
            let intent = self.shared.store.intend_write();
            let kept = self
                .keep(sub, status, headers, answer.body, latency, Some(intent))
                .await?;
            if let Some(linted) = linted {
                notes.extend(lint_exchange(&linted, &kept));
            }
        }
        Ok((served, None))
    }

    /// A sub-request as a request of its own, in the batch's cassette and mode.
    fn prepare_part(&self, batch: &Prepared, part: &batch::Part) -> Prepared {
        let method = http::Method::from_bytes(part.method.as_bytes()).unwrap_or(http::Method::GET);
        let sanitized_uri = self.shared.redactor.uri(&part.uri);
        self.prepare_message(
            Message {
                mode: batch.mode,
                cassette: batch.cassette.clone(),
                method,
                uri: part.uri.clone(),
                sanitized_uri,
                forward_headers: header_map(&part.headers),
                body: part.body.clone(),
            },
            batch.target.clone(),
        )
    }

    /// Answers each sub-request from its own recording, in request order. A sub-request
    /// with no recording gets its own miss (599, `ReplayMiss`) inside the batch, and one
    /// whose dependency failed gets 424, as Graph answers; the batch itself is 200.
    async fn replay_batch(
        &self,
        parts: &[batch::Part],
        subs: Vec<Prepared>,
        context: &GraphContext,
    ) -> Result<Served, ProxyError> {
        let provenance = self.shared.config.provenance_headers;
        let mut answered: std::collections::HashMap<String, u16> = Default::default();
        let mut entries = Vec::with_capacity(parts.len());
        for (part, sub) in parts.iter().zip(subs) {
            let answer = if let Some(dependency) = batch::failed_dependency(part, &answered) {
                let message = format!("The dependency '{dependency}' of this request failed.");
                self.sub_error(
                    StatusCode::FAILED_DEPENDENCY,
                    "FailedDependency",
                    &message,
                    context,
                )
            } else {
                match self.lookup(&sub).await? {
                    Lookup::Hit(episode) => {
                        let mut served = replayed(*episode);
                        graph::refresh_replayed_headers(
                            &mut served.headers,
                            context.client_request_id.as_deref(),
                            self.shared.graph.regenerate_request_id,
                            self.shared.graph.regenerate_date,
                        );
                        if provenance {
                            if let Some(id) = served.interaction {
                                set(&mut served.headers, INTERACTION_HEADER, &id.to_string());
                            }
                            if let Some((index, count)) = served.episode {
                                let text = format!("{}/{}", index + 1, count);
                                set(&mut served.headers, EPISODE_HEADER, &text);
                            }
                            set(
                                &mut served.headers,
                                OUTCOME_HEADER,
                                Outcome::Replayed.as_str(),
                            );
                        }
                        served.headers.remove(header::CONTENT_LENGTH);
                        served.headers.remove(header::DATE);
                        batch::SubAnswer {
                            status: served.status.as_u16(),
                            headers: header_pairs(&served.headers),
                            body: served.body,
                        }
                    }
                    Lookup::Exhausted { count } => self.sub_miss(&sub, Some(count), context),
                    Lookup::Absent => self.sub_miss(&sub, None, context),
                }
            };
            answered.insert(part.id.clone(), answer.status);
            entries.push(answer.to_json(&part.id));
        }
        let request_id = graph::new_request_id();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(graph::JSON_CONTENT_TYPE),
        );
        headers.insert("odata-version", HeaderValue::from_static("4.0"));
        set(&mut headers, graph::REQUEST_ID, &request_id);
        set(
            &mut headers,
            graph::CLIENT_REQUEST_ID,
            context.client_request_id.as_deref().unwrap_or(&request_id),
        );
        Ok(Served {
            status: StatusCode::OK,
            headers,
            body: batch::assemble(entries),
            outcome: Outcome::Replayed,
            interaction: None,
            episode: None,
            upstream_latency: None,
            refused: None,
        })
    }

    /// A sub-request's own miss: the same report as a top-level miss, in Graph's shape.
    fn sub_miss(
        &self,
        sub: &Prepared,
        exhausted_after: Option<usize>,
        context: &GraphContext,
    ) -> batch::SubAnswer {
        let error = self.miss(sub, exhausted_after);
        tracing::warn!(target: "graphvcr::exchange", method = %sub.stored_request.method,
            path = %matching::path_of(&sub.stored_request.uri), outcome = "miss",
            error = %error, "batch sub-request");
        let mut answer = self.sub_error(error.status(), error.code(), &error.to_string(), context);
        if let (ProxyError::Miss(report), Ok(mut body)) = (
            &error,
            serde_json::from_slice::<serde_json::Value>(&answer.body),
        ) {
            body["error"]["graphvcr"] = serde_json::to_value(report.as_ref()).unwrap_or_default();
            answer.body = Bytes::from(body.to_string());
        }
        answer
            .headers
            .push((OUTCOME_HEADER.to_owned(), Outcome::Miss.as_str().to_owned()));
        answer
    }

    fn sub_error(
        &self,
        status: StatusCode,
        code: &str,
        message: &str,
        context: &GraphContext,
    ) -> batch::SubAnswer {
        let request_id = graph::new_request_id();
        let client_request_id = context.client_request_id.as_deref().unwrap_or(&request_id);
        let body = graph::error_body(code, message, &request_id, client_request_id);
        batch::SubAnswer {
            status: status.as_u16(),
            headers: vec![
                (
                    "content-type".to_owned(),
                    graph::JSON_CONTENT_TYPE.to_owned(),
                ),
                (graph::REQUEST_ID.to_owned(), request_id.clone()),
                (
                    graph::CLIENT_REQUEST_ID.to_owned(),
                    client_request_id.to_owned(),
                ),
            ],
            body: Bytes::from(body.to_string()),
        }
    }
}

/// Rewrites `Location` and the body's link members; a compressed body is decoded first
/// and sent decoded when a link changed (its length and encoding headers follow).
fn rewrite_links(rewrite: &graph::links::Rewrite<'_>, headers: &mut HeaderMap, body: &mut Bytes) {
    if let Some(location) = headers
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|l| rewrite.link(l))
    {
        if let Ok(value) = HeaderValue::from_str(&location) {
            headers.insert(header::LOCATION, value);
        }
    }
    // Only JSON bodies carry link members: other bodies are not decoded or scanned.
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.to_ascii_lowercase().contains("json"));
    if !is_json {
        return;
    }
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok());
    let decoded = record::decode_body(encoding, body, MAX_DECODED_BYTES);
    if let Some(changed) = rewrite.body(decoded.as_deref().unwrap_or(body)) {
        if decoded.is_some() {
            headers.remove(header::CONTENT_ENCODING);
        }
        if headers.contains_key(header::CONTENT_LENGTH) {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(changed.len()));
        }
        *body = changed;
    }
}

/// What the lint needs of a request that is about to be recorded, taken before the
/// request is consumed.
pub(super) struct Linted {
    method: String,
    path: String,
    /// The body, decoded when compressed; empty when `json` holds it.
    body: Bytes,
    /// The body as matching parsed it, when its rules left it as sent.
    json: Option<serde_json::Value>,
}

impl Linted {
    /// Only for a request that will be forwarded and kept: it takes matching's parse of
    /// the body, which a replay miss's report would still need.
    pub(super) fn of(prepared: &mut Prepared) -> Self {
        let json = prepared.take_json_as_sent();
        let request = &prepared.stored_request;
        // Checked decoded, as matching reads it (and as answers are checked).
        let body = match json {
            Some(_) => Bytes::new(),
            None => {
                let encoding = record::header_value(&request.headers, "content-encoding");
                record::decode_body(encoding, &request.body, MAX_DECODED_BYTES)
                    .map_or_else(|| request.body.clone(), Bytes::from)
            }
        };
        Self {
            method: request.method.clone(),
            path: matching::path_of(&request.uri).to_owned(),
            body,
            json,
        }
    }
}

/// Logs schema problems of a recorded deviceStatuses exchange (record and auto) and
/// returns them as audit notes (`lint: METHOD PATH: finding`).
pub(super) fn lint_exchange(linted: &Linted, served: &Served) -> Vec<String> {
    let (method, path) = (&linted.method, &linted.path);
    let request_body = match &linted.json {
        Some(value) => graph::lint::RequestBody::Parsed(value),
        None => graph::lint::RequestBody::Bytes(&linted.body),
    };
    let encoding = served
        .headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok());
    let decoded = record::decode_body(encoding, &served.body, MAX_DECODED_BYTES);
    let response_body = decoded.as_deref().unwrap_or(&served.body);
    let findings = graph::lint::exchange(
        method,
        path,
        request_body,
        served.status.as_u16(),
        response_body,
    );
    if !findings.is_empty() {
        let listed: Vec<String> = findings.iter().map(ToString::to_string).collect();
        tracing::warn!(
            target: "graphvcr::lint",
            %method, %path, interaction = served.interaction,
            findings = %listed.join("; "),
            "recorded deviceStatuses exchange does not fit the Graph schema"
        );
    }
    findings
        .iter()
        .map(|finding| format!("lint: {method} {path}: {finding}"))
        .collect()
}

fn injected_served(injected: graph::chaos::Injected) -> Served {
    Served {
        status: injected.status,
        headers: injected.headers,
        body: injected.body,
        outcome: Outcome::Injected,
        interaction: None,
        episode: None,
        upstream_latency: None,
        refused: None,
    }
}

fn header_map(pairs: &[(String, String)]) -> HeaderMap {
    let mut map = HeaderMap::with_capacity(pairs.len());
    for (name, value) in pairs {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            map.append(name, value);
        }
    }
    map
}

fn header_pairs(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter_map(|(name, value)| {
            Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
        })
        .collect()
}
