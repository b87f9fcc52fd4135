//! Wiring: open the store once, build the upstream client, bind, serve, drain, flush.
//!
//! Servers are started from an already-resolved config and return a handle with their
//! real address, so the CLI, the demo and the tests start them the same way.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::admin::{Admin, AdminParts};
use crate::audit::{AuditError, AuditLog, AuditWriter};
use crate::config::{Config, ConfigError, Mode};
use crate::emulate::{Emulator, EmulatorOptions};
use crate::metrics::Metrics;
use crate::observe::Observers;
use crate::proxy::Proxy;
use crate::redact::Redactor;
use crate::remote::RemoteError;
use crate::server::{self, Limits};
use crate::store::{Owner, Store, StoreError};
use crate::tls::{self, TlsError};
use crate::upstream::Upstream;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error("{0}")]
    Other(String),
}

/// A running server: its address and how to stop it.
pub struct Running {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Running {
    /// Stops accepting, lets in-flight requests finish, and waits for the server to end.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, AppError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AppError::Bind { addr, source })
}

fn spawn<H: server::Handler>(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: Limits,
    handler: Arc<H>,
) -> Result<Running, AppError> {
    let addr = listener
        .local_addr()
        .map_err(|e| AppError::Other(format!("listener has no address: {e}")))?;
    let (stop, stopped) = oneshot::channel::<()>();
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let task = tokio::spawn(server::serve(
        listener,
        acceptor,
        limits,
        handler,
        async move {
            let _ = stopped.await;
        },
    ));
    Ok(Running {
        addr,
        stop: Some(stop),
        task,
    })
}

/// The proxy with its store; stopping it also flushes and releases the store.
pub struct ProxyServer {
    pub running: Running,
    pub proxy: Proxy,
    pub store: Store,
    /// The admin API's listener, unless `admin.enabled = false`.
    pub admin: Option<Running>,
    pub metrics: Metrics,
    audit: Option<AuditWriter>,
    warming: Warming,
}

/// Replay's index of the default cassette being read into memory after start-up
/// (`Proxy::warm`, `store.warm_index`), off the runtime's threads. Stopping waits for
/// it, since it holds a clone of the store.
struct Warming {
    cancelled: Arc<AtomicBool>,
    task: Option<JoinHandle<()>>,
}

impl Warming {
    fn start(proxy: &Proxy, enabled: bool) -> Self {
        let cancelled = Arc::new(AtomicBool::new(false));
        let defaults = proxy.defaults();
        if !enabled || !matches!(defaults.mode, Mode::Replay | Mode::Auto) {
            return Self {
                cancelled,
                task: None,
            };
        }
        let (proxy, flag) = (proxy.clone(), cancelled.clone());
        let task = tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let cassette = defaults.cassette;
            match proxy.warm(&cassette, &flag) {
                Ok(0) => {}
                Ok(requests) => tracing::info!(
                    %cassette,
                    requests,
                    ms = started.elapsed().as_millis() as u64,
                    "replay index read into memory"
                ),
                // Lookups read the store as they would have; the first one reports it.
                Err(error) => {
                    tracing::warn!(%cassette, %error, "replay index not read into memory")
                }
            }
        });
        Self {
            cancelled,
            task: Some(task),
        }
    }

    async fn stop(mut self) {
        self.cancelled.store(true, Ordering::Relaxed);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl ProxyServer {
    pub fn addr(&self) -> SocketAddr {
        self.running.addr
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|a| a.addr)
    }

    /// Drains the proxy, then the admin API, then the audit queue; then flushes and
    /// releases the store's lock (every clone of the store is gone by then).
    pub async fn stop(self) -> Result<(), AppError> {
        self.running.stop().await;
        if let Some(admin) = self.admin {
            admin.stop().await;
        }
        if let Some(audit) = self.audit {
            audit.close().await;
        }
        self.warming.stop().await;
        drop(self.proxy);
        // Intercepted tunnels were drained with the proxy's own connections, so nothing
        // should hold a clone of the store now. Everything is flushed either way; should a
        // task still hold one, only releasing the lock inside this process waits for exit.
        self.store.close()?;
        // Compacting makes the next start fast; it reads back this run's writes, so it
        // runs off the runtime's threads.
        let store = self.store;
        match tokio::task::spawn_blocking(move || store.close_and_compact()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(%error, "the store stays locked until the process exits")
            }
            Err(error) => tracing::warn!(%error, "closing the store failed"),
        }
        Ok(())
    }
}

/// Binds the admin API: `admin.listen` when set (failing start-up if it cannot), else
/// 127.0.0.1 on the proxy's port + 1, falling back to an ephemeral port when that is
/// taken (the emulator's default port is 7879) or the proxy's own port is ephemeral.
async fn bind_admin(config: &Config, proxy_addr: SocketAddr) -> Result<TcpListener, AppError> {
    if let Some(addr) = config.admin.listen {
        return bind(addr).await;
    }
    let loopback = std::net::Ipv4Addr::LOCALHOST;
    let ephemeral = SocketAddr::from((loopback, 0));
    if config.proxy.listen.port() == 0 {
        return bind(ephemeral).await;
    }
    match proxy_addr.port().checked_add(1) {
        Some(port) => match bind(SocketAddr::from((loopback, port))).await {
            Ok(listener) => Ok(listener),
            Err(error) => {
                tracing::warn!(%error, "admin API falls back to an ephemeral port");
                bind(ephemeral).await
            }
        },
        None => bind(ephemeral).await,
    }
}

/// Opens the store, builds the upstream client and starts serving.
pub async fn start_proxy(config: &Config) -> Result<ProxyServer, AppError> {
    let store = Store::open(&config.store.path, config.store.cache_capacity_bytes)?;
    store.start_flusher(config.store.commit_delay);
    let upstream = Upstream::new(&config.upstream)?;
    let redactor = Redactor::new(config.sanitize.clone());
    let proxy = Proxy::new(
        config.proxy.clone(),
        config.forward.clone(),
        config.matching.clone(),
        store.clone(),
        upstream,
        redactor.clone(),
    )
    .with_graph(config.graph.clone(), &config.chaos);
    let metrics = Metrics::new();
    let (audit_log, audit_writer) = if config.audit.enabled {
        let (log, writer) = AuditLog::start(store.clone(), &config.audit)?;
        (Some(log), Some(writer))
    } else {
        (None, None)
    };
    proxy.observe(Observers {
        audit: audit_log.clone(),
        metrics: metrics.clone(),
        // Same rules, own counter (see `Observers::redactor`).
        redactor: Redactor::new(config.sanitize.clone()),
    });
    let tls = match &config.proxy.tls {
        Some((cert, key)) => Some(tls::server_config_from_files(cert, key)?),
        None => None,
    };
    let listener = bind(config.proxy.listen).await?;
    let proxy_addr = listener
        .local_addr()
        .map_err(|e| AppError::Other(format!("listener has no address: {e}")))?;
    let admin = if config.admin.enabled {
        let listener = bind_admin(config, proxy_addr).await?;
        if config.admin.listen.is_some_and(|a| !a.ip().is_loopback())
            && config.admin.token.is_none()
        {
            tracing::warn!("admin.listen is not a loopback address but admin.token is unset: only loopback peers will be served");
        }
        let handler = Admin::new(AdminParts {
            proxy: proxy.clone(),
            store: store.clone(),
            metrics: metrics.clone(),
            audit: audit_log,
            token: config.admin.token.clone(),
            redactor,
            matching: config.matching.clone(),
        });
        Some(spawn(listener, None, Limits::default(), Arc::new(handler))?)
    } else {
        None
    };
    let limits = Limits {
        max_connections: config.proxy.max_connections,
        header_read_timeout: config.proxy.header_read_timeout,
        max_header_bytes: config.proxy.max_header_bytes,
    };
    let running = spawn(listener, tls, limits, Arc::new(proxy.clone()))?;
    store.write_owner(&Owner {
        pid: std::process::id(),
        admin: admin.as_ref().map(|a| format!("http://{}", a.addr)),
    });
    let warming = Warming::start(&proxy, config.store.warm_index);
    Ok(ProxyServer {
        running,
        proxy,
        store,
        admin,
        metrics,
        audit: audit_writer,
        warming,
    })
}

/// Starts the emulator, over TLS when `tls` is given.
pub async fn start_emulator(
    addr: SocketAddr,
    options: EmulatorOptions,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Result<Running, AppError> {
    let listener = bind(addr).await?;
    // Its next links name the scheme it really serves.
    let options = EmulatorOptions {
        https: tls.is_some(),
        ..options
    };
    spawn(
        listener,
        tls,
        Limits::default(),
        Arc::new(Emulator::new(options)),
    )
}

/// `graphvcr serve`: runs until `shutdown` resolves, then drains and flushes.
pub async fn serve(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), AppError> {
    let server = start_proxy(&config).await?;
    tracing::info!(
        mode = %config.proxy.mode,
        cassette = %config.proxy.cassette,
        store = %config.store.path.display(),
        upstream = %config.upstream.url,
        "proxy started"
    );
    // The admin line comes first: whoever waits for `listening on` then has both.
    if let Some(admin) = server.admin_addr() {
        eprintln!("admin listening on http://{admin}");
    }
    let scheme = if config.proxy.tls.is_some() {
        "https"
    } else {
        "http"
    };
    eprintln!("listening on {scheme}://{}", server.addr());
    shutdown.await;
    tracing::info!("shutting down: finishing in-flight requests");
    server.stop().await
}

/// How the emulator serves.
#[derive(Debug, Clone)]
pub enum EmulatorTls {
    Plain,
    /// A fresh self-signed certificate for localhost, 127.0.0.1, ::1 and `names`, its
    /// PEM written to `cert_out`.
    SelfSigned {
        cert_out: PathBuf,
        names: Vec<String>,
    },
    /// A given certificate chain and key.
    Files {
        cert: PathBuf,
        key: PathBuf,
    },
}

/// `graphvcr emulate`: plain HTTP or HTTPS.
pub async fn emulate(
    addr: SocketAddr,
    options: EmulatorOptions,
    tls: EmulatorTls,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AppError> {
    let tls = match tls {
        EmulatorTls::Plain => None,
        EmulatorTls::SelfSigned { cert_out, names } => {
            let mut all: Vec<&str> = vec!["localhost", "127.0.0.1", "::1"];
            all.extend(names.iter().map(String::as_str));
            let minted = tls::self_signed(&all)?;
            tls::write_pem(&cert_out, &minted.cert_pem, false)?;
            Some(minted.config)
        }
        EmulatorTls::Files { cert, key } => Some(tls::server_config_from_files(&cert, &key)?),
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let running = start_emulator(addr, options, tls).await?;
    eprintln!("listening on {scheme}://{}", running.addr);
    shutdown.await;
    running.stop().await;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
///
/// The handlers are installed when this is called, not when the future is first polled:
/// `serve` prints `listening on` before it awaits the signal, and a signal sent as soon as
/// that line appears must find a handler (the default action would end the process
/// without draining or flushing). Call it before starting the server.
pub fn shutdown_signal() -> impl Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let install = |kind: SignalKind, name: &'static str| match signal(kind) {
            Ok(signal) => Some(signal),
            Err(error) => {
                tracing::warn!(%error, "cannot handle {name}; it will stop the process at once");
                None
            }
        };
        let mut interrupt = install(SignalKind::interrupt(), "SIGINT");
        let mut terminate = install(SignalKind::terminate(), "SIGTERM");
        async move {
            tokio::select! {
                () = received(interrupt.as_mut()) => {},
                () = received(terminate.as_mut()) => {},
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Resolves when `signal` arrives; never, when its handler could not be installed.
#[cfg(unix)]
async fn received(signal: Option<&mut tokio::signal::unix::Signal>) {
    match signal {
        Some(signal) => {
            signal.recv().await;
        }
        None => std::future::pending::<()>().await,
    }
}
