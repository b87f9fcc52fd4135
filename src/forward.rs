//! Forward-proxy mode: requests sent to graphvcr as a proxy (`HTTPS_PROXY`).
//!
//! - `CONNECT host:port` to an intercepted host: answered 200, then graphvcr terminates
//!   the client's TLS with a leaf minted by its CA for that host and serves the decrypted
//!   requests through the same pipeline as reverse mode, with the host as the target.
//!   Nothing is resolved or connected until a request actually needs the upstream, so
//!   replay works with no network and no DNS.
//! - `CONNECT` to any other host: tunnelled byte for byte (or refused), never stored.
//! - Absolute-form `http://host/...` requests: the same choice, without TLS.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::ca::{CaError, CertificateAuthority};
use crate::config::{ForwardConfig, ProxyConfig, UnknownHosts};
use crate::error::ProxyError;
use crate::proxy::Proxy;
use crate::server::{self, Handler, Limits, ResponseFuture};
use crate::upstream::Upstream;

/// Where a forward-proxy request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub https: bool,
    pub host: String,
    pub port: u16,
    /// Recorded and replayed (true), or relayed untouched (false).
    pub intercepted: bool,
}

impl Target {
    fn default_port(&self) -> u16 {
        if self.https {
            443
        } else {
            80
        }
    }

    /// `host`, or `host:port` for a non-default port: what cassettes record as the host.
    pub fn authority(&self) -> String {
        if self.port == self.default_port() {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// `scheme://authority`. The default port is left out so a `--resolve` port applies.
    pub fn origin(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}", self.authority())
    }
}

/// The target of an HTTP/1 absolute-form request (`GET http://host/path`), if it is one.
/// HTTP/2 requests always carry an authority, so they are origin-form here.
pub fn absolute_form_target(request: &Request<Incoming>, config: &ForwardConfig) -> Option<Target> {
    if request.version() == Version::HTTP_2 {
        return None;
    }
    let uri = request.uri();
    let host = uri.host()?;
    let https = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    Some(Target {
        https,
        host: host.to_ascii_lowercase(),
        port,
        intercepted: config.intercepts(host),
    })
}

/// CONNECT handling: the CA (created on first use) and the settings it needs.
pub struct Interceptor {
    config: ForwardConfig,
    limits: Limits,
    ca: Mutex<Option<Arc<CertificateAuthority>>>,
}

impl Interceptor {
    pub fn new(config: ForwardConfig, proxy: &ProxyConfig) -> Self {
        Self {
            config,
            limits: Limits {
                max_connections: proxy.max_connections,
                header_read_timeout: proxy.header_read_timeout,
                max_header_bytes: proxy.max_header_bytes,
            },
            ca: Mutex::new(None),
        }
    }

    pub fn config(&self) -> &ForwardConfig {
        &self.config
    }

    fn ca(&self) -> Result<Arc<CertificateAuthority>, CaError> {
        let mut slot = self.ca.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ca) = slot.as_ref() {
            return Ok(ca.clone());
        }
        let (ca, _) = CertificateAuthority::load_or_create(&self.config.ca_dir)?;
        let ca = Arc::new(ca);
        *slot = Some(ca.clone());
        Ok(ca)
    }

    /// Answers a CONNECT. On success the response is 200 and a task takes over the
    /// upgraded connection; the caller logs the exchange.
    pub async fn connect(
        &self,
        proxy: &Proxy,
        upstream: &Upstream,
        mut request: Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<(Response<Full<Bytes>>, Target), ProxyError> {
        let authority = request
            .uri()
            .authority()
            .ok_or_else(|| ProxyError::BadConnect(request.uri().to_string()))?;
        let target = Target {
            https: true,
            host: authority.host().to_ascii_lowercase(),
            port: authority.port_u16().unwrap_or(443),
            intercepted: self.config.intercepts(authority.host()),
        };
        let upgrade = hyper::upgrade::on(&mut request);
        // The tunnel outlives this request: it joins the server's graceful shutdown now,
        // while the CONNECT's own connection still holds the drain open, and keeps the
        // connection's place under `max_connections`. (A CONNECT that did not come
        // through `server` has neither.)
        let joined = match request.extensions().get::<server::Shutdown>() {
            Some(shutdown) => Some(shutdown.join().ok_or(ProxyError::ShuttingDown)?),
            None => None,
        };
        let slot = request
            .extensions()
            .get::<server::ConnectionSlot>()
            .cloned();
        if target.intercepted {
            let config = self.ca()?.server_config_for(&target.host)?;
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            let handler = Arc::new(Intercepted {
                proxy: proxy.clone(),
                target: target.clone(),
            });
            let limits = self.limits.clone();
            let host = target.host.clone();
            tokio::spawn(async move {
                let mut joined = joined;
                let upgraded = match joined.as_mut() {
                    Some(joined) => match joined.unless_stopping(upgrade).await {
                        Some(upgraded) => upgraded,
                        None => {
                            tracing::debug!(%peer, %host, "shutting down: CONNECT upgrade abandoned");
                            return;
                        }
                    },
                    None => upgrade.await,
                };
                match upgraded {
                    Ok(upgraded) => {
                        server::serve_tls_stream(
                            TokioIo::new(upgraded),
                            acceptor,
                            limits,
                            handler,
                            peer,
                            &host,
                            joined,
                        )
                        .await
                    }
                    Err(error) => tracing::warn!(%peer, %host, %error, "CONNECT upgrade failed"),
                }
                drop(slot);
            });
            return Ok((empty(StatusCode::OK), target));
        }
        if self.config.unknown_hosts == UnknownHosts::Deny {
            return Err(ProxyError::TunnelRefused(target.authority()));
        }
        // Connect first, so a dead target is a 502 the client sees, not a broken tunnel.
        let mut remote = upstream.connect_tunnel(&target.host, target.port).await?;
        let host = target.authority();
        tokio::spawn(async move {
            let relay = async {
                match upgrade.await {
                    Ok(upgraded) => {
                        let mut client = TokioIo::new(upgraded);
                        if let Err(error) =
                            tokio::io::copy_bidirectional(&mut client, &mut remote).await
                        {
                            tracing::debug!(%peer, %host, %error, "tunnel closed with an error");
                        }
                    }
                    Err(error) => tracing::warn!(%peer, %host, %error, "CONNECT upgrade failed"),
                }
            };
            // A tunnel carries opaque bytes, so there is no request to let finish: when
            // shutdown begins, both sockets are closed.
            let finished = match joined {
                Some(mut joined) => joined.unless_stopping(relay).await.is_some(),
                None => {
                    relay.await;
                    true
                }
            };
            if !finished {
                tracing::info!(%peer, %host, "shutting down: tunnel closed");
            }
            drop(slot);
        });
        Ok((empty(StatusCode::OK), target))
    }
}

fn empty(status: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

/// Requests decrypted from an intercepted tunnel: the proxy pipeline with a fixed target.
struct Intercepted {
    proxy: Proxy,
    target: Target,
}

impl Handler for Intercepted {
    fn call(&self, request: Request<Incoming>, peer: SocketAddr) -> ResponseFuture {
        let (proxy, target) = (self.proxy.clone(), self.target.clone());
        Box::pin(
            async move { server::whole(proxy.handle_target(request, peer, Some(target)).await) },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_and_origin_leave_default_ports_out() {
        let target = |https, port| Target {
            https,
            host: "graph.microsoft.com".into(),
            port,
            intercepted: true,
        };
        assert_eq!(target(true, 443).origin(), "https://graph.microsoft.com");
        assert_eq!(
            target(true, 8443).origin(),
            "https://graph.microsoft.com:8443"
        );
        assert_eq!(target(false, 80).authority(), "graph.microsoft.com");
    }
}
