//! The accept loop shared by the proxy and the emulator: HTTP/1.1 and HTTP/2 on one socket
//! (hyper-util's auto builder), optional TLS, a connection limit, header timeouts, panic
//! isolation and graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{Channel, Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulConnection, GracefulShutdown, Watcher};
use tokio::net::TcpListener;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::graph;

/// A response body: whole (every proxy and emulator answer), or written into a channel
/// as it is produced (the admin API's export of a whole cassette and its audit records,
/// so a running proxy holds a few chunks of them instead of all of it).
pub type Body = Either<Full<Bytes>, Channel<Bytes, std::io::Error>>;

/// A boxed response future: what every handler returns.
pub type ResponseFuture = Pin<Box<dyn Future<Output = Response<Body>> + Send>>;

/// A whole response as one of [`Body`].
pub fn whole(response: Response<Full<Bytes>>) -> Response<Body> {
    response.map(Either::Left)
}

/// Something that answers requests. Handlers are infallible: errors are already
/// turned into responses by the time they leave a handler.
pub trait Handler: Send + Sync + 'static {
    fn call(&self, request: Request<Incoming>, peer: SocketAddr) -> ResponseFuture;
}

/// Limits applied to every connection, before a handler sees a request.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections served at once; further ones wait in the kernel's backlog.
    pub max_connections: usize,
    /// A client must finish sending its request head within this time.
    pub header_read_timeout: Duration,
    /// Largest request head accepted; beyond it hyper answers 431.
    pub max_header_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            header_read_timeout: Duration::from_secs(30),
            max_header_bytes: 64 * 1024,
        }
    }
}

/// A connection's place under [`Limits::max_connections`]. A CONNECT's tunnel outlives
/// the request that opened it (hyper hands the socket over and the connection's task
/// ends), so every CONNECT request carries a clone in its extensions for the tunnel to
/// keep: the place is freed when both are done, and open tunnels count toward the limit.
#[derive(Clone)]
pub struct ConnectionSlot {
    /// Held, never read: dropping the last clone frees the place.
    _permit: Arc<OwnedSemaphorePermit>,
}

/// One server's graceful shutdown, shared with work that outlives the request that
/// started it: an intercepted CONNECT tunnel serves a connection of its own once the
/// CONNECT is answered, and must be drained like the connections the server accepted.
/// Every CONNECT request carries its server's handle in its extensions.
#[derive(Clone)]
pub struct Shutdown(Arc<ShutdownInner>);

struct ShutdownInner {
    /// hyper-util's watch on every connection; taken when shutdown begins.
    graceful: Mutex<Option<GracefulShutdown>>,
    /// Turns true when shutdown begins, for work that has no connection to watch yet.
    stopping: watch::Sender<bool>,
}

/// A place in a server's graceful shutdown: the drain waits until this is dropped, or,
/// once [`Joined::watch`] is called, until the watched connection has finished.
pub struct Joined {
    watcher: Watcher,
    stopping: watch::Receiver<bool>,
    shutdown: Shutdown,
}

impl Shutdown {
    fn new() -> Self {
        Self(Arc::new(ShutdownInner {
            graceful: Mutex::new(Some(GracefulShutdown::new())),
            stopping: watch::Sender::new(false),
        }))
    }

    /// Joins the graceful shutdown; `None` once it has begun (nothing new may start).
    pub fn join(&self) -> Option<Joined> {
        let graceful = self.0.graceful.lock().unwrap_or_else(|e| e.into_inner());
        let watcher = graceful.as_ref()?.watcher();
        Some(Joined {
            watcher,
            stopping: self.0.stopping.subscribe(),
            shutdown: self.clone(),
        })
    }

    /// Begins shutdown: watched connections finish their in-flight requests and close,
    /// work not yet connected gives up. Resolves when every [`Joined`] is gone.
    async fn drain(&self) {
        let graceful = self
            .0
            .graceful
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        self.0.stopping.send_replace(true);
        if let Some(graceful) = graceful {
            graceful.shutdown().await;
        }
    }
}

impl Joined {
    /// Runs `work` unless shutdown begins first; `None` then.
    pub async fn unless_stopping<F: Future>(&mut self, work: F) -> Option<F::Output> {
        tokio::select! {
            output = work => Some(output),
            _ = self.stopping.wait_for(|stopping| *stopping) => None,
        }
    }

    /// Serves `connection` until it ends; when shutdown begins, it finishes its in-flight
    /// requests and closes.
    pub fn watch<C: GracefulConnection>(self, connection: C) -> impl Future<Output = C::Output> {
        self.watcher.watch(connection)
    }
}

/// Serves `listener` until `shutdown` resolves, then stops accepting and waits for
/// in-flight connections to finish. The listener is already bound, so the caller can
/// print its real address (port 0) before calling this.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    handler: Arc<H>,
    shutdown: impl Future<Output = ()>,
) {
    let builder = Arc::new(connection_builder(&limits));
    let drain = Shutdown::new();
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    tokio::pin!(shutdown);

    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Running out of file descriptors must not end the server.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        // Shutdown begins only after this loop ends.
        let Some(joined) = drain.join() else { break };
        let slot = ConnectionSlot {
            _permit: Arc::new(permit),
        };
        let service = service(
            handler.clone(),
            peer,
            Some(drain.clone()),
            Some(slot.clone()),
        );
        let builder = builder.clone();
        match tls.clone() {
            None => {
                let connection = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .into_owned();
                let connection = joined.watch(connection);
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        tracing::debug!(%peer, %error, "connection ended with an error");
                    }
                    drop(slot);
                });
            }
            Some(acceptor) => {
                let handshake_timeout = limits.header_read_timeout;
                tokio::spawn(async move {
                    let stream = match tokio::time::timeout(
                        handshake_timeout,
                        acceptor.accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(error)) => {
                            tracing::warn!(%peer, %error, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::warn!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let connection = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .into_owned();
                    if let Err(error) = joined.watch(connection).await {
                        tracing::debug!(%peer, %error, "connection ended with an error");
                    }
                    drop(slot);
                });
            }
        }
    }
    drop(listener);
    drain.drain().await;
}

/// Panics caught in request handlers since the process started (all servers in it).
static CAUGHT_PANICS: AtomicU64 = AtomicU64::new(0);

/// How many request handlers have panicked (and been answered 500) since the process
/// started. Every one is a bug: network input must never reach a panic. Exposed for
/// metrics and tests.
pub fn caught_panics() -> u64 {
    CAUGHT_PANICS.load(Ordering::Relaxed)
}

/// HTTP/1.1 and HTTP/2 (prior knowledge or ALPN) on one connection, with the limits.
fn connection_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

fn service<H: Handler>(
    handler: Arc<H>,
    peer: SocketAddr,
    shutdown: Option<Shutdown>,
    slot: Option<ConnectionSlot>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Body>, Infallible>> + Send,
> + Clone {
    hyper::service::service_fn(move |mut request: Request<Incoming>| {
        if request.method() == http::Method::CONNECT {
            if let Some(shutdown) = &shutdown {
                request.extensions_mut().insert(shutdown.clone());
            }
            if let Some(slot) = &slot {
                request.extensions_mut().insert(slot.clone());
            }
        }
        let handler = handler.clone();
        async move { Ok::<_, Infallible>(isolate_panics(handler, request, peer).await) }
    })
}

/// Terminates TLS on an already-open stream (a CONNECT tunnel being intercepted) and
/// serves HTTP/1.1 or HTTP/2 on it, as ALPN decides, until the client is done. With
/// `joined`, it takes part in that server's graceful shutdown: a shutdown during the
/// handshake ends it, one later lets in-flight requests finish and then closes.
pub async fn serve_tls_stream<H, IO>(
    io: IO,
    acceptor: TlsAcceptor,
    limits: Limits,
    handler: Arc<H>,
    peer: SocketAddr,
    host: &str,
    mut joined: Option<Joined>,
) where
    H: Handler,
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let handshake = tokio::time::timeout(limits.header_read_timeout, acceptor.accept(io));
    let handshake = match joined.as_mut() {
        Some(joined) => match joined.unless_stopping(handshake).await {
            Some(handshake) => handshake,
            None => {
                tracing::debug!(%peer, host, "shutting down: intercepted TLS handshake abandoned");
                return;
            }
        },
        None => handshake.await,
    };
    let stream = match handshake {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            tracing::warn!(
                %peer, host, %error,
                "client refused the intercepted TLS handshake; does it trust graphvcr's CA? (`graphvcr ca show`)"
            );
            return;
        }
        Err(_) => {
            tracing::warn!(%peer, host, "intercepted TLS handshake timed out");
            return;
        }
    };
    let builder = connection_builder(&limits);
    // Requests inside carry the same shutdown as the tunnel they came through. (The
    // tunnel's own task keeps its connection slot.)
    let shutdown = joined.as_ref().map(|joined| joined.shutdown.clone());
    let connection = builder.serve_connection_with_upgrades(
        TokioIo::new(stream),
        service(handler, peer, shutdown, None),
    );
    let ended = match joined {
        Some(joined) => joined.watch(connection).await,
        None => connection.await,
    };
    if let Err(error) = ended {
        tracing::debug!(%peer, host, %error, "intercepted connection ended with an error");
    }
}

/// Runs the handler with a panic boundary around every poll, so a panic costs one
/// request, not the connection or the process; the client gets Graph's 500 shape
/// instead of a dropped socket; the panic is logged at error and counted
/// ([`caught_panics`]).
///
/// The handler runs inside the connection's own task rather than a task of its own: a
/// spawn per request costs an allocation and a cross-thread wake-up on the hot path, and
/// a detached task outlives its connection (a client that hangs up mid-request would
/// leave it running past graceful shutdown, still holding the store).
async fn isolate_panics<H: Handler>(
    handler: Arc<H>,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let mut future = handler.call(request, peer);
    let outcome = std::future::poll_fn(|cx| {
        // After a panic the future is dropped unpolled: `Ready` ends this poll_fn.
        match std::panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
            Ok(Poll::Ready(response)) => Poll::Ready(Ok(response)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => Poll::Ready(Err(payload)),
        }
    })
    .await;
    match outcome {
        Ok(response) => response,
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".to_owned());
            let total = CAUGHT_PANICS.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::error!(%peer, panic = %message, caught_panics = total, "request handler panicked");
            whole(graph::error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalServerError",
                "graphvcr hit an internal error while handling this request; it keeps serving",
                None,
            ))
        }
    }
}

/// A server on a loopback ephemeral port for unit tests, stopped by [`TestServer::stop`].
#[cfg(test)]
pub(crate) struct TestServer {
    pub addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

#[cfg(test)]
impl TestServer {
    pub async fn start<H: Handler>(handler: H) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(
            listener,
            None,
            Limits::default(),
            Arc::new(handler),
            async move {
                let _ = stopped.await;
            },
        ));
        Self { addr, stop, task }
    }

    /// Shuts the server down and waits until it has ended cleanly.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.expect("server ends cleanly");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Panics on `/panic`, answers 204 otherwise.
    struct Panicky;

    impl Handler for Panicky {
        fn call(&self, request: Request<Incoming>, _peer: SocketAddr) -> ResponseFuture {
            let explode = request.uri().path() == "/panic";
            Box::pin(async move {
                assert!(!explode, "deliberate panic from a test handler");
                let mut response = Response::new(Full::new(Bytes::new()));
                *response.status_mut() = StatusCode::NO_CONTENT;
                whole(response)
            })
        }
    }

    async fn exchange(addr: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
            .await
            .expect("answer within 10 s")
            .expect("read");
        String::from_utf8_lossy(&answer).into_owned()
    }

    #[tokio::test]
    async fn a_panicking_handler_is_answered_500_counted_and_the_server_keeps_serving() {
        let server = TestServer::start(Panicky).await;
        let addr = server.addr;
        let before = caught_panics();
        let answer = exchange(addr, "/panic").await;
        assert!(answer.starts_with("HTTP/1.1 500"), "{answer}");
        assert!(answer.contains("\"InternalServerError\""), "{answer}");
        assert!(answer.contains("request-id"), "{answer}");
        assert!(caught_panics() > before, "the panic was counted");
        let after = exchange(addr, "/fine").await;
        assert!(after.starts_with("HTTP/1.1 204"), "{after}");
        server.stop().await;
    }
}
