//! The CLI's way to a store that a running proxy holds: its admin API.
//!
//! sled lets one process open a store; while `serve` runs, `graphvcr cassette ...` and
//! `graphvcr audit ...` would fail on that lock. [`open`] tries the store first and, when
//! it is locked, reads the admin URL the holder wrote into the owner file (or takes
//! `--admin URL`) and talks to the proxy instead.

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;

use crate::cli::StoreArgs;
use crate::config::{Config, ConfigError};
use crate::store::{Store, StoreError};

/// How long one admin API call may take.
const TIMEOUT: Duration = Duration::from_secs(120);
/// Largest admin API answer read (a cassette export or a large audit query).
const MAX_RESPONSE_BYTES: usize = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("admin URL {url:?} is not an http://HOST:PORT URL")]
    BadUrl { url: String },
    #[error("the proxy's admin API at {url} cannot be reached: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("the proxy's admin API at {url} did not answer within {TIMEOUT:?}")]
    Timeout { url: String },
    #[error("the proxy's admin API answered {status}: {message}")]
    Status { status: StatusCode, message: String },
    #[error("the proxy's admin API sent an answer that does not parse: {0}")]
    Decode(String),
    /// A streamed answer (a cassette's export, the audit records) whose writing failed
    /// after its status was sent; the proxy's log names the cause.
    #[error(
        "the proxy's admin API at {url} cut its answer short ({detail}); the proxy's log says why"
    )]
    CutShort { url: String, detail: String },
    #[error("cannot write the proxy's answer: {0}")]
    Output(std::io::Error),
}

/// Where a command reads and writes: the store itself, or the proxy holding it.
pub enum Target {
    Local(Store),
    Remote(Box<Remote>),
}

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Remote(#[from] RemoteError),
}

impl From<TargetError> for crate::app::AppError {
    fn from(error: TargetError) -> Self {
        match error {
            TargetError::Config(e) => Self::Config(e),
            TargetError::Store(e) => Self::Store(e),
            TargetError::Remote(e) => Self::Remote(e),
        }
    }
}

/// `--admin URL` when given; otherwise the store, or the admin API of the process
/// holding it when it is locked and that process runs one.
pub fn open(args: &StoreArgs) -> Result<Target, TargetError> {
    let config = Config::resolve(&crate::cli::ServeArgs {
        config: args.config.clone(),
        store: args.store.clone(),
        ..Default::default()
    })?;
    let token = config.admin.token.clone();
    if let Some(url) = &args.admin {
        return Ok(Target::Remote(Box::new(Remote::new(url, token)?)));
    }
    match Store::open(&config.store.path, config.store.cache_capacity_bytes) {
        Ok(store) => Ok(Target::Local(store)),
        Err(error @ StoreError::Locked { .. }) => {
            match Store::read_owner(&config.store.path).and_then(|owner| owner.admin) {
                Some(url) => {
                    tracing::debug!(%url, "store is held by a running proxy; using its admin API");
                    Ok(Target::Remote(Box::new(Remote::new(&url, token)?)))
                }
                None => Err(error.into()),
            }
        }
        Err(error) => Err(error.into()),
    }
}

/// A client of one proxy's admin API (hyper-util, plain HTTP: the API is on loopback
/// unless a token is configured).
pub struct Remote {
    base: String,
    token: Option<String>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Remote {
    pub fn new(url: &str, token: Option<String>) -> Result<Self, RemoteError> {
        let base = url.trim_end_matches('/').to_owned();
        let valid = base
            .parse::<http::Uri>()
            .is_ok_and(|u| u.scheme_str() == Some("http") && u.authority().is_some());
        if !valid {
            return Err(RemoteError::BadUrl {
                url: url.to_owned(),
            });
        }
        Ok(Self {
            base,
            token,
            client: Client::builder(TokioExecutor::new()).build_http(),
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends a request and returns the body of a 2xx answer; other statuses become
    /// [`RemoteError::Status`] with the Graph-shaped error's message.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<Bytes, RemoteError> {
        let exchange = async {
            let response = self.request(method, path, body).await?;
            let status = response.status();
            let bytes = self.collect(status, response.into_body()).await?;
            Ok::<_, RemoteError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(TIMEOUT, exchange)
            .await
            .map_err(|_| self.timed_out())??;
        if status.is_success() {
            return Ok(bytes);
        }
        Err(failure(status, &bytes))
    }

    /// GETs `path` and writes the body of a 2xx answer to `out` as it arrives, never
    /// holding it whole (a whole audit trail, say); other statuses are handled as by
    /// [`Remote::send`]. The answer's head, and then each part of its body, may each take
    /// up to [`TIMEOUT`].
    pub async fn copy(&self, path: &str, out: &mut dyn Write) -> Result<(), RemoteError> {
        let response = tokio::time::timeout(TIMEOUT, self.request(Method::GET, path, Bytes::new()))
            .await
            .map_err(|_| self.timed_out())??;
        let status = response.status();
        let mut body = response.into_body();
        if !status.is_success() {
            let bytes = tokio::time::timeout(TIMEOUT, self.collect(status, body))
                .await
                .map_err(|_| self.timed_out())??;
            return Err(failure(status, &bytes));
        }
        loop {
            let frame = tokio::time::timeout(TIMEOUT, body.frame())
                .await
                .map_err(|_| self.timed_out())?;
            match frame {
                None => return Ok(()),
                Some(Err(e)) => {
                    return Err(RemoteError::CutShort {
                        url: self.base.clone(),
                        detail: error_chain(&e),
                    })
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        out.write_all(&data).map_err(RemoteError::Output)?;
                    }
                }
            }
        }
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<http::Response<Incoming>, RemoteError> {
        let url = format!("{}{path}", self.base);
        let mut builder = Request::builder().method(method).uri(&url);
        if let Some(token) = &self.token {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if !body.is_empty() {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
        }
        let request = builder
            .body(Full::new(body))
            .map_err(|_| RemoteError::BadUrl { url: url.clone() })?;
        self.client
            .request(request)
            .await
            .map_err(|e| RemoteError::Unreachable {
                url: self.base.clone(),
                detail: error_chain(&e),
            })
    }

    /// A whole answer's body, up to [`MAX_RESPONSE_BYTES`].
    async fn collect(&self, status: StatusCode, body: Incoming) -> Result<Bytes, RemoteError> {
        Ok(Limited::new(body, MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| {
                let (url, detail) = (self.base.clone(), error_chain(&*e));
                if status.is_success() && !e.is::<LengthLimitError>() {
                    RemoteError::CutShort { url, detail }
                } else {
                    RemoteError::Unreachable { url, detail }
                }
            })?
            .to_bytes())
    }

    fn timed_out(&self) -> RemoteError {
        RemoteError::Timeout {
            url: self.base.clone(),
        }
    }

    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, RemoteError> {
        let bytes = self.send(Method::GET, path, Bytes::new()).await?;
        serde_json::from_slice(&bytes).map_err(|e| RemoteError::Decode(e.to_string()))
    }

    pub async fn send_json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<T, RemoteError> {
        let bytes = self.send(method, path, body).await?;
        serde_json::from_slice(&bytes).map_err(|e| RemoteError::Decode(e.to_string()))
    }
}

/// A non-2xx answer as [`RemoteError::Status`], with the Graph-shaped error's message.
fn failure(status: StatusCode, body: &[u8]) -> RemoteError {
    let message = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    RemoteError::Status { status, message }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use http_body_util::{Channel, Either};

    use super::*;
    use crate::server::{Handler, ResponseFuture, TestServer};

    /// Answers 200 and a first chunk, then fails the body, as a streamed admin answer
    /// whose writer failed part-way does; `/chunks` ends its body in three more chunks
    /// instead, and `/refused` is answered 400 in Graph's shape.
    struct CutsShort;

    impl Handler for CutsShort {
        fn call(&self, request: Request<Incoming>, _peer: SocketAddr) -> ResponseFuture {
            let path = request.uri().path().to_owned();
            let refused = path == "/refused";
            let whole = path == "/chunks";
            Box::pin(async move {
                if refused {
                    return crate::server::whole(crate::graph::error_response(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        "since 'yesterday' is not a time",
                        None,
                    ));
                }
                let (mut sender, body) = Channel::<Bytes, std::io::Error>::new(1);
                tokio::spawn(async move {
                    let _ = sender
                        .send_data(Bytes::from_static(b"{\"records\":["))
                        .await;
                    if whole {
                        for part in [&b"1,"[..], b"2", b"]}"] {
                            let _ = sender.send_data(Bytes::from_static(part)).await;
                        }
                    } else {
                        sender.abort(std::io::Error::other("the trail could not be read"));
                    }
                });
                http::Response::new(Either::Right(body))
            })
        }
    }

    #[tokio::test]
    async fn an_answer_cut_short_is_named_so_and_a_refusal_gives_its_message() {
        let server = TestServer::start(CutsShort).await;
        let remote = Remote::new(&format!("http://{}", server.addr), None).expect("remote");
        let outcome = remote.get_json::<serde_json::Value>("/audit").await;
        let Err(error @ RemoteError::CutShort { .. }) = outcome else {
            panic!("a body that fails after a 200 is an answer cut short: {outcome:?}");
        };
        assert!(
            error.to_string().contains("cut its answer short"),
            "{error}"
        );

        // Copied as it arrives, chunk by chunk; a failure part-way is named, after what
        // arrived before it (if the server flushed it before closing).
        let mut out = Vec::new();
        remote.copy("/chunks", &mut out).await.expect("copied");
        assert_eq!(out, b"{\"records\":[1,2]}");
        let mut out = Vec::new();
        let copied = remote.copy("/audit", &mut out).await;
        assert!(
            matches!(copied, Err(RemoteError::CutShort { .. })),
            "{copied:?}"
        );
        assert!(b"{\"records\":[".starts_with(&out), "{out:?}");
        let mut out = Vec::new();
        let refused = remote.copy("/refused", &mut out).await;
        let Err(RemoteError::Status { status, message }) = refused else {
            panic!("a 400 is the proxy's refusal: {refused:?}");
        };
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(message, "since 'yesterday' is not a time");
        assert!(out.is_empty(), "an error's body is not the output");
        server.stop().await;
    }
}
