//! Command-line types only. Values given here (or through `GRAPHVCR_*` variables, which
//! clap reads into the same fields) override `config.toml`; `config` resolves them.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::Mode;

#[derive(Debug, Parser)]
#[command(
    name = "graphvcr",
    version,
    about = "Record and replay Microsoft Graph traffic through a local proxy"
)]
pub struct Cli {
    /// Log format for the structured per-exchange lines on stderr.
    #[arg(long, global = true, value_enum, env = "GRAPHVCR_LOG_FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the recording/replaying reverse proxy.
    Serve(ServeArgs),
    /// Run the built-in Graph emulator (deviceStatuses), for offline work and tests.
    Emulate(EmulateArgs),
    /// Emulator -> record -> replay in one process, then replay the shipped sample cassette.
    Demo(DemoArgs),
    /// Inspect and move cassettes.
    #[command(subcommand)]
    Cassette(CassetteCommand),
    /// Query the audit trail; `audit stats` summarises it, `audit verify` checks its chain.
    Audit(Box<AuditArgs>),
    /// The local CA that forward-proxy mode uses to intercept TLS.
    #[command(subcommand)]
    Ca(CaCommand),
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create the CA (once; an existing one is kept).
    Init(CaArgs),
    /// Print the CA certificate and the environment lines that make clients trust it.
    Show(CaArgs),
    /// Print the path of the CA certificate file.
    Path(CaArgs),
}

#[derive(Debug, Clone, Args)]
pub struct CaArgs {
    /// Where the CA lives (default: `ca` under the store directory).
    #[arg(long, env = "GRAPHVCR_CA_DIR")]
    pub ca_dir: Option<PathBuf>,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Flags of `serve`. Every field is optional so that "not given" falls through to the
/// environment, then to the config file, then to the defaults.
#[derive(Debug, Default, Clone, Args)]
pub struct ServeArgs {
    /// Config file; without it `./config.toml` is read when present.
    #[arg(long, env = "GRAPHVCR_CONFIG")]
    pub config: Option<PathBuf>,
    /// record | replay | auto | passthrough.
    #[arg(long, value_enum, env = "GRAPHVCR_MODE")]
    pub mode: Option<Mode>,
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, env = "GRAPHVCR_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Upstream base URL (scheme, host, optional port).
    #[arg(long, env = "GRAPHVCR_UPSTREAM")]
    pub upstream: Option<String>,
    /// Extra PEM CA certificate(s) trusted for the upstream, besides the web roots.
    #[arg(long, env = "GRAPHVCR_UPSTREAM_CA")]
    pub upstream_ca: Option<PathBuf>,
    /// Directory of the cassette store.
    #[arg(long, env = "GRAPHVCR_STORE")]
    pub store: Option<PathBuf>,
    /// Cassette used by requests that do not name one.
    #[arg(long, env = "GRAPHVCR_CASSETTE")]
    pub cassette: Option<String>,
    /// Where the interception CA lives (created on first use; default: `ca` under the store).
    #[arg(long, env = "GRAPHVCR_CA_DIR")]
    pub ca_dir: Option<PathBuf>,
    /// HOST=ADDR:PORT: connect to ADDR:PORT for HOST, keeping HOST for TLS SNI and
    /// certificate checks (repeatable, like curl's --resolve).
    #[arg(long = "resolve", value_name = "HOST=ADDR:PORT")]
    pub resolve: Vec<String>,
    /// Serve the listener over TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, env = "GRAPHVCR_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) for --tls-cert.
    #[arg(long, env = "GRAPHVCR_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct EmulateArgs {
    /// Address to listen on; port 0 picks a free port.
    #[arg(
        long,
        env = "GRAPHVCR_EMULATE_LISTEN",
        default_value = "127.0.0.1:7879"
    )]
    pub listen: SocketAddr,
    /// Serve HTTPS with a fresh self-signed certificate for localhost and 127.0.0.1, written here.
    #[arg(long)]
    pub tls_cert_out: Option<PathBuf>,
    /// Another name for the self-signed certificate (repeatable), e.g. graph.microsoft.com
    /// to stand in for Graph behind `serve --resolve`.
    #[arg(long = "tls-name", requires = "tls_cert_out")]
    pub tls_names: Vec<String>,
    /// Serve HTTPS with this certificate chain (PEM) instead of a self-signed one.
    #[arg(long, requires = "tls_key", conflicts_with = "tls_cert_out")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Answer PATCH with 204 No Content instead of the documented 200 with the entity.
    #[arg(long)]
    pub patch_no_content: bool,
    /// Accept requests without a bearer token.
    #[arg(long)]
    pub no_auth: bool,
    /// Start every configuration id with N deterministic device statuses (for paging).
    #[arg(long, default_value_t = 0)]
    pub seed_devices: usize,
    /// Answer the 1st, (N+1)th, (2N+1)th … request with 429 and Retry-After (0: never).
    #[arg(long, default_value_t = 0)]
    pub throttle_every: u64,
    /// Retry-After seconds of throttled answers.
    #[arg(long, default_value_t = 1)]
    pub retry_after: u64,
}

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// After the demo, keep replaying the sample cassette on this address until Ctrl-C.
    #[arg(long)]
    pub serve: Option<SocketAddr>,
}

#[derive(Debug, Subcommand)]
pub enum CassetteCommand {
    /// List the cassettes in the store.
    List(StoreArgs),
    /// One line per interaction: id, time, method, status, sizes, URI.
    Show {
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Write a cassette as a reviewable JSON document or HAR 1.2 (stdout unless --out).
    Export {
        name: String,
        #[arg(long, value_enum, default_value_t = ExportFormat::Json)]
        format: ExportFormat,
        #[arg(long)]
        out: Option<PathBuf>,
        /// Scheme and host for HAR URLs of reverse-mode recordings.
        #[arg(long, default_value = crate::graph::DEFAULT_UPSTREAM)]
        base_url: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Read an export document or a HAR 1.2 file into the store.
    Import {
        file: PathBuf,
        /// Store it under this name (default: the document's own; `imported` for HAR).
        #[arg(long = "as")]
        as_name: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Remove a cassette and all its interactions.
    Delete {
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Remove interactions recorded longer ago than DURATION (e.g. 30d, 12h).
    Prune {
        name: String,
        #[arg(long)]
        older_than: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Re-send recorded requests to a live upstream and report which answers changed;
    /// exits 1 when any did.
    Verify(VerifyArgs),
    /// List fields that changed between repeated recordings, as config to paste.
    Suggest {
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// `cassette verify`'s arguments.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    pub name: String,
    #[arg(long)]
    pub upstream: String,
    #[arg(long)]
    pub upstream_ca: Option<PathBuf>,
    /// `Name: value` set on every re-sent request (stored credentials are redacted).
    #[arg(long = "header")]
    pub headers: Vec<String>,
    /// Re-send every recorded method, not only GET and HEAD.
    #[arg(long)]
    pub all_methods: bool,
    /// JSON Pointer ignored in response bodies (repeatable), besides the match rules'.
    #[arg(long = "ignore")]
    pub ignore: Vec<String>,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    Json,
    Har,
}

impl CassetteCommand {
    /// Where the command finds the store (or the proxy holding it).
    pub fn store_args(&self) -> &StoreArgs {
        match self {
            Self::List(store)
            | Self::Show { store, .. }
            | Self::Export { store, .. }
            | Self::Import { store, .. }
            | Self::Delete { store, .. }
            | Self::Prune { store, .. }
            | Self::Verify(VerifyArgs { store, .. })
            | Self::Suggest { store, .. } => store,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Config file; without it `./config.toml` is read when present.
    #[arg(long, env = "GRAPHVCR_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory of the cassette store.
    #[arg(long, env = "GRAPHVCR_STORE")]
    pub store: Option<PathBuf>,
    /// A running proxy's admin API (http://HOST:PORT). Without it, the store's holder is
    /// found through the store's owner file when the store is locked.
    #[arg(long, env = "GRAPHVCR_ADMIN")]
    pub admin: Option<String>,
}

/// `graphvcr audit [FILTERS] [--format ..]`, or one of its subcommands.
#[derive(Debug, Clone, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: Option<AuditCommand>,
    #[command(flatten)]
    pub filters: AuditFilterArgs,
    /// table (aligned, for people), jsonl (one record per line) or har (HAR 1.2).
    #[arg(long, value_enum, default_value_t = AuditFormat::Table)]
    pub format: AuditFormat,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuditFormat {
    Table,
    Jsonl,
    Har,
}

#[derive(Debug, Clone, Subcommand)]
pub enum AuditCommand {
    /// Counts by outcome and status, and latency percentiles (p50/p90/p99).
    Stats {
        #[command(flatten)]
        filters: AuditFilterArgs,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Check the hash chain; exits 1 naming the first edited, inserted or removed record.
    Verify {
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// Audit filters; the admin API's `GET /audit` takes the same names as query parameters.
#[derive(Debug, Clone, Default, Args)]
pub struct AuditFilterArgs {
    /// From this time on: RFC 3339 (2026-01-31T12:00:00Z) or a duration back (1h, 30m).
    #[arg(long)]
    pub since: Option<String>,
    /// Up to this time: RFC 3339 or a duration back.
    #[arg(long)]
    pub until: Option<String>,
    /// Status codes: 404, a class like 4xx, or a list (2xx,404).
    #[arg(long)]
    pub status: Option<String>,
    /// HTTP method, any case.
    #[arg(long)]
    pub method: Option<String>,
    /// Path glob: `*` within a segment, `**` across segments, `?` one character.
    #[arg(long)]
    pub path: Option<String>,
    /// recorded, replayed, miss, passthrough, upstream_error, rejected, error, injected
    /// or tunnel.
    #[arg(long)]
    pub outcome: Option<String>,
    #[arg(long)]
    pub cassette: Option<String>,
    /// Only the most recent N matching records.
    #[arg(long)]
    pub limit: Option<String>,
}
