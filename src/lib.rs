//! graphvcr: a recording/replay HTTP proxy for Microsoft Graph.
//!
//! # Layout
//! - [`cli`]: clap types only; [`config`]: file + env + flags resolved into one [`config::Config`].
//! - [`app`]: wiring: open the store once, build the upstream client, bind, serve, drain, flush.
//! - [`server`]: the accept loop (HTTP/1.1 + HTTP/2, TLS, limits, graceful shutdown).
//! - [`proxy`]: the per-request pipeline: body, normalise, key, mode, store or upstream, response.
//! - [`matching`]: pure request normalisation and match keys.
//! - [`redact`]: credentials removed before anything is stored or logged.
//! - [`upstream`]: the pooled client to the real Graph (or a stand-in).
//! - [`store`]: the only module that touches sled; group-commit durability.
//! - [`record`]: the stored interaction format, versioned, and its export form.
//! - [`graph`]: Graph knowledge: error envelope, request ids, the deviceStatuses schema,
//!   `$batch` split/assemble, link rewriting, OData query matching, the chaos layer, lint.
//! - [`emulate`]: the built-in Graph emulator.
//! - [`tls`]: rustls set-up and certificate minting.
//! - [`forward`]: forward-proxy mode: CONNECT interception and tunnels.
//! - [`ca`]: the local CA that signs intercepted hosts' certificates.
//! - [`har`]: HAR 1.2 conversion; [`cassette`]: the cassette subcommands.
//! - [`error`]: the proxy's error type and its mapping to status codes.
//! - [`audit`]: the hash-chained audit trail: records, queries, formats, the writer.
//! - [`observe`]: the proxy's one report per exchange, to the audit and the metrics.
//! - [`logging`]: stderr through a writer thread; the per-exchange line written directly.
//! - [`metrics`]: Prometheus counters and histograms.
//! - [`admin`]: the admin API (mode, cassettes, audit, metrics) on its own listener.
//! - [`remote`]: the CLI's client for a running proxy's admin API.

pub mod admin;
pub mod app;
pub mod audit;
pub mod ca;
pub mod cassette;
pub mod cli;
pub mod config;
pub mod demo;
pub mod emulate;
pub mod error;
pub mod forward;
pub mod graph;
pub mod har;
pub mod logging;
pub mod matching;
pub mod metrics;
pub mod observe;
pub mod proxy;
pub mod record;
pub mod redact;
pub mod remote;
pub mod server;
pub mod store;
pub mod tls;
pub mod upstream;
