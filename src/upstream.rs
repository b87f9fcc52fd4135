//! The one pooled client to the upstream (Graph, or a stand-in for it): rustls with the
//! web roots plus an optional extra CA, HTTP/1.1 and HTTP/2 chosen by ALPN, timeouts,
//! and failures classified so the proxy can name the cause.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::net::TcpStream;

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
    client: Client<HttpsConnector<HttpConnector<OverridingResolver>>, Full<Bytes>>,
    resolver: OverridingResolver,
    connect_timeout: Duration,
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
        let resolver = OverridingResolver {
            overrides: Arc::new(config.resolve.iter().cloned().collect()),
            system: GaiResolver::new(),
        };
        let mut http = HttpConnector::new_with_resolver(resolver.clone());
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
            resolver,
            connect_timeout: config.connect_timeout,
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

    /// Sends one request to the configured upstream; see [`Upstream::send_to`].
    pub async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let uri = format!("{}{}{}", self.origin, self.base_path, path_and_query);
        self.exchange(&self.origin, uri, method, headers, body)
            .await
    }

    /// Sends one request to `origin` (`scheme://host[:port]`, forward-proxy mode) and
    /// reads the whole response within the response timeout. `headers` must already be
    /// free of hop-by-hop headers and `Host`: the client sets `Host` (or `:authority`)
    /// from the URL.
    pub async fn send_to(
        &self,
        origin: &str,
        method: Method,
        path_and_query: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let uri = format!("{origin}{path_and_query}");
        self.exchange(origin, uri, method, headers, body).await
    }

    /// Opens a raw TCP connection for a CONNECT tunnel, honouring `--resolve`.
    pub async fn connect_tunnel(&self, host: &str, port: u16) -> Result<TcpStream, UpstreamError> {
        let target = format!("{host}:{port}");
        let unreachable = |detail: String| UpstreamError::Unreachable {
            upstream: target.clone(),
            detail,
        };
        let connect = async {
            match self.resolver.overrides.get(&host.to_ascii_lowercase()) {
                Some(addr) => TcpStream::connect(*addr).await,
                None => TcpStream::connect((host, port)).await,
            }
        };
        match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(error)) => Err(unreachable(error.to_string())),
            Err(_) => Err(unreachable(format!(
                "no connection within {:?}",
                self.connect_timeout
            ))),
        }
    }

    async fn exchange(
        &self,
        origin: &str,
        uri: String,
        method: Method,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = method;
        *request.uri_mut() = uri.parse().map_err(|e| UpstreamError::Broken {
            upstream: origin.to_owned(),
            detail: format!("cannot build the upstream URL {uri:?}: {e}"),
        })?;
        *request.headers_mut() = headers;
        let started = Instant::now();
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| classify(origin, self.response_timeout, &e))?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, self.max_response_bytes)
                .collect()
                .await
                .map_err(|e| {
                    if e.downcast_ref::<http_body_util::LengthLimitError>()
                        .is_some()
                    {
                        UpstreamError::TooLarge {
                            upstream: origin.to_owned(),
                            limit: self.max_response_bytes,
                        }
                    } else {
                        classify(origin, self.response_timeout, &*e)
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
                upstream: origin.to_owned(),
                timeout: self.response_timeout,
            }),
        }
    }
}

fn classify(
    origin: &str,
    response_timeout: Duration,
    error: &(dyn StdError + 'static),
) -> UpstreamError {
    let upstream = origin.to_owned();
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
            timeout: response_timeout,
        };
    }
    if connect_phase {
        UpstreamError::Unreachable { upstream, detail }
    } else {
        UpstreamError::Broken { upstream, detail }
    }
}

/// DNS with `--resolve` overrides: an overridden host resolves to its fixed address
/// (whose port wins when the URL names none), everything else to the system resolver.
#[derive(Clone)]
pub struct OverridingResolver {
    overrides: Arc<HashMap<String, SocketAddr>>,
    system: GaiResolver,
}

impl tower_service::Service<Name> for OverridingResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        if let Some(addr) = self.overrides.get(&name.as_str().to_ascii_lowercase()) {
            let addr = *addr;
            return Box::pin(async move { Ok(vec![addr].into_iter()) });
        }
        let mut system = self.system.clone();
        Box::pin(async move {
            let addrs = system.call(name).await?;
            Ok(addrs.collect::<Vec<_>>().into_iter())
        })
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
