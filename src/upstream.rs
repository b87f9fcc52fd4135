//! The one pooled client to the upstream (Graph, or a stand-in for it): rustls with the
//! web roots plus an optional extra CA, HTTP/1.1 and HTTP/2 chosen by ALPN, timeouts,
//! and failures classified so the proxy can name the cause.

use std::error::Error as StdError;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::UpstreamConfig;
use crate::tls::{self, TlsError};

/// Why an exchange with the upstream failed. Nothing is recorded for any of these.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream {upstream} refused the connection or could not be reached: {detail}")]
    Unreachable { upstream: String, detail: String },
    #[error("upstream {upstream} did not answer within {timeout:?}")]
    Timeout { upstream: String, timeout: Duration },
    #[error("TLS with upstream {upstream} failed: {detail}")]
    Tls { upstream: String, detail: String },
    #[error("upstream {upstream} broke off the exchange: {detail}")]
    Broken { upstream: String, detail: String },
    #[error("upstream {upstream} sent a response body over the {limit}-byte limit")]
    TooLarge { upstream: String, limit: usize },
}

impl UpstreamError {
    /// 504 for timeouts, 502 for everything else.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::BAD_GATEWAY,
        }
    }

    /// The Graph-style error code graphvcr answers with.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unreachable { .. } => "UpstreamUnreachable",
            Self::Timeout { .. } => "UpstreamTimeout",
            Self::Tls { .. } => "UpstreamTlsFailure",
            Self::Broken { .. } => "UpstreamConnectionBroken",
            Self::TooLarge { .. } => "UpstreamResponseTooLarge",
        }
    }
}

/// A complete upstream response.
#[derive(Debug)]
pub struct UpstreamResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub latency: Duration,
}

/// The upstream client. Cheap to clone: the connection pool is shared.
#[derive(Clone)]
pub struct Upstream {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// `scheme://authority` of the upstream.
    origin: String,
    /// Path prefix of the upstream URL, without a trailing slash.
    base_path: String,
    response_timeout: Duration,
    max_response_bytes: usize,
}

impl Upstream {
    pub fn new(config: &UpstreamConfig) -> Result<Self, TlsError> {
        let tls = tls::client_config(config.ca_file.as_deref())?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.connect_timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        // Validated by config: scheme and authority are present.
        let uri: Uri = config.url.parse().unwrap_or_default();
        let origin = format!(
            "{}://{}",
            uri.scheme_str().unwrap_or("https"),
            uri.authority().map(|a| a.as_str()).unwrap_or("")
        );
        Ok(Self {
            client,
            origin,
            base_path: uri.path().trim_end_matches('/').to_owned(),
            response_timeout: config.response_timeout,
            max_response_bytes: config.max_response_bytes,
        })
    }

    /// The upstream's `scheme://authority`.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Sends one request and reads the whole response within the response timeout.
    /// `headers` must already be free of hop-by-hop headers and `Host`: the client sets
    /// `Host` (or `:authority`) from the upstream URL.
    pub async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let uri = format!("{}{}{}", self.origin, self.base_path, path_and_query);
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = method;
        *request.uri_mut() = uri.parse().map_err(|e| UpstreamError::Broken {
            upstream: self.origin.clone(),
            detail: format!("cannot build the upstream URL {uri:?}: {e}"),
        })?;
        *request.headers_mut() = headers;
        let started = Instant::now();
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| self.classify(&e))?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, self.max_response_bytes)
                .collect()
                .await
                .map_err(|e| {
                    if e.downcast_ref::<http_body_util::LengthLimitError>()
                        .is_some()
                    {
                        UpstreamError::TooLarge {
                            upstream: self.origin.clone(),
                            limit: self.max_response_bytes,
                        }
                    } else {
                        self.classify(&*e)
                    }
                })?
                .to_bytes();
            Ok(UpstreamResponse {
                status: parts.status,
                headers: parts.headers,
                body,
                latency: started.elapsed(),
            })
        };
        match tokio::time::timeout(self.response_timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(UpstreamError::Timeout {
                upstream: self.origin.clone(),
                timeout: self.response_timeout,
            }),
        }
    }

    fn classify(&self, error: &(dyn StdError + 'static)) -> UpstreamError {
        let upstream = self.origin.clone();
        let detail = error_chain(error);
        let causes = causes(error);
        let connect_phase = causes.iter().any(|cause| {
            cause
                .downcast_ref::<hyper_util::client::legacy::Error>()
                .is_some_and(|e| e.is_connect())
        });
        if causes
            .iter()
            .any(|cause| cause.downcast_ref::<rustls::Error>().is_some())
        {
            return UpstreamError::Tls { upstream, detail };
        }
        let timed_out = causes.iter().any(|cause| {
            cause
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        });
        if timed_out {
            return UpstreamError::Timeout {
                upstream,
                timeout: self.response_timeout,
            };
        }
        if connect_phase {
            UpstreamError::Unreachable { upstream, detail }
        } else {
            UpstreamError::Broken { upstream, detail }
        }
    }
}

/// Every error in the chain. `io::Error` hides the error it wraps from `source()` (it
/// forwards to the wrapped error's own source), so wrapped errors are visited through
/// `get_ref` too: that is where rustls puts its certificate errors.
fn causes<'a>(error: &'a (dyn StdError + 'static)) -> Vec<&'a (dyn StdError + 'static)> {
    let mut out: Vec<&'a (dyn StdError + 'static)> = Vec::new();
    let mut pending = vec![error];
    while let Some(current) = pending.pop() {
        if out.len() > 32 {
            break;
        }
        out.push(current);
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                pending.push(inner);
            }
        }
        if let Some(source) = current.source() {
            pending.push(source);
        }
    }
    out
}

/// `outer: inner: innermost`, skipping repeats, for messages that name the real cause.
fn error_chain(error: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut source: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(current) = source {
        let text = current.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = current.source();
    }
    parts.join(": ")
}
