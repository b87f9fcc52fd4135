//! Configuration: flags > `GRAPHVCR_*` environment > config file > defaults, resolved once
//! at start-up into one typed [`Config`]. Nothing reads the environment or files later.
//!
//! The file form has every field optional and rejects unknown keys, so a typo is an error
//! naming the key rather than a silently ignored setting.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cli::{ServeArgs, StoreArgs};

mod graph;
mod rules;

pub use graph::{ChaosConfig, ChaosRoute, FileChaos, FileGraph, GraphConfig};
pub use rules::{FileRules, FileSanitize, LeakGuard, MatchingConfig, Replacement, SanitizeConfig};

/// The built-in defaults, named so the docs, `config.toml` and the code agree.
pub mod defaults {
    use super::Mode;
    pub const MODE: Mode = Mode::Replay;
    pub const LISTEN: &str = "127.0.0.1:7878";
    pub const CASSETTE: &str = "default";
    pub const MAX_BODY_BYTES: usize = 10 * 1024 * 1024;
    pub const MAX_HEADER_BYTES: usize = 64 * 1024;
    pub const HEADER_READ_TIMEOUT: &str = "30s";
    pub const BODY_READ_TIMEOUT: &str = "30s";
    pub const MAX_CONNECTIONS: usize = 4096;
    pub const PROVENANCE_HEADERS: bool = true;
    pub const UPSTREAM: &str = crate::graph::DEFAULT_UPSTREAM;
    pub const CONNECT_TIMEOUT: &str = "10s";
    pub const RESPONSE_TIMEOUT: &str = "100s";
    pub const MAX_RESPONSE_BYTES: usize = 100 * 1024 * 1024;
    pub const STORE: &str = "cassettes/store";
    pub const CACHE_CAPACITY_MB: u64 = 4;
    /// Replay reads the default cassette's index into memory after start-up: with the
    /// 4 MiB cache, 100,000 interactions still peak under 64 MiB (BENCHMARKS.md, items
    /// 27 and 28).
    pub const WARM_INDEX: bool = true;
    /// Long enough for a few concurrent recordings to share a flush, short next to the
    /// flush itself and to an upstream round trip.
    pub const COMMIT_DELAY: &str = "2ms";
    pub const MAX_COMMIT_DELAY: std::time::Duration = std::time::Duration::from_millis(100);
    pub const CONFIG_FILE: &str = "config.toml";
    pub const AUDIT_ENABLED: bool = true;
    pub const AUDIT_BODIES: bool = false;
    pub const AUDIT_MAX_BODY_BYTES: usize = 64 * 1024;
    pub const AUDIT_MAX_RECORDS: u64 = 100_000;
    pub const AUDIT_MAX_AGE: &str = "90days";
    pub const ADMIN_ENABLED: bool = true;
    /// The interception CA's directory, under the store.
    pub const CA_SUBDIR: &str = "ca";
}

/// What the proxy does with each request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Always forward; store every exchange.
    Record,
    /// Answer from the cassette only; never open a connection upstream.
    Replay,
    /// Replay on a match; otherwise forward and record.
    Auto,
    /// Forward; store nothing (the audit still sees it).
    Passthrough,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Record => "record",
            Self::Replay => "replay",
            Self::Auto => "auto",
            Self::Passthrough => "passthrough",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "record" => Some(Self::Record),
            "replay" => Some(Self::Replay),
            "auto" => Some(Self::Auto),
            "passthrough" => Some(Self::Passthrough),
            _ => None,
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The resolved configuration every component is built from.
#[derive(Debug, Clone)]
pub struct Config {
    pub proxy: ProxyConfig,
    pub upstream: UpstreamConfig,
    pub store: StoreConfig,
    pub matching: MatchingConfig,
    pub sanitize: SanitizeConfig,
    pub graph: GraphConfig,
    pub chaos: ChaosConfig,
    pub forward: ForwardConfig,
    pub audit: AuditConfig,
    pub admin: AdminConfig,
}

/// `[audit]`: the trail of every exchange (see `audit`).
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// Write an audit record for every exchange.
    pub enabled: bool,
    /// Keep sanitized request and response bodies in the records.
    pub bodies: bool,
    /// Bodies larger than this are not kept (their size still is).
    pub max_body_bytes: usize,
    /// Keep at most this many records, pruning the oldest; 0 keeps all.
    pub max_records: u64,
    /// Prune records older than this; `None` keeps all.
    pub max_age: Option<Duration>,
}

/// `[admin]`: the admin API's listener.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub enabled: bool,
    /// `None`: 127.0.0.1 on the proxy's port + 1 (an ephemeral port when the proxy's is 0,
    /// or when that port is taken).
    pub listen: Option<SocketAddr>,
    /// Bearer token that lets non-loopback peers in; without one they are refused.
    pub token: Option<String>,
}

/// Forward-proxy behaviour: which CONNECT targets are intercepted and recorded.
#[derive(Debug, Clone)]
pub struct ForwardConfig {
    /// Host globs whose TLS graphvcr terminates with its own CA to record and replay.
    pub intercept_hosts: Vec<String>,
    pub unknown_hosts: UnknownHosts,
    /// Where the interception CA lives; created on first use.
    pub ca_dir: PathBuf,
}

impl ForwardConfig {
    /// Whether `host` (no port) is one graphvcr intercepts.
    pub fn intercepts(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        self.intercept_hosts
            .iter()
            .any(|pattern| crate::matching::rules::glob(&pattern.to_ascii_lowercase(), &host))
    }
}

/// What happens to proxy requests for hosts that are not intercepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownHosts {
    /// Relayed untouched; only the audit sees them.
    Tunnel,
    /// Refused with 403.
    Deny,
}

#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub mode: Mode,
    pub listen: SocketAddr,
    /// Cassette for requests that do not name one with `x-graphvcr-cassette`.
    pub cassette: String,
    /// Larger request bodies get 413.
    pub max_body_bytes: usize,
    /// Larger request heads get 431.
    pub max_header_bytes: usize,
    pub header_read_timeout: Duration,
    /// A client that has not finished its body by then gets 408.
    pub body_read_timeout: Duration,
    pub max_connections: usize,
    /// Add `x-graphvcr-outcome` and friends to every response.
    pub provenance_headers: bool,
    /// In `auto`, recordings older than this count as absent and are recorded afresh.
    pub max_age: Option<Duration>,
    /// Certificate chain and key for a TLS listener; plain HTTP (and h2c) without.
    pub tls: Option<(PathBuf, PathBuf)>,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub url: String,
    pub ca_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    /// Whole exchange: from sending the request to the last byte of the response body.
    pub response_timeout: Duration,
    pub max_response_bytes: usize,
    /// `--resolve`: connect to this address for this host, keeping the host for TLS.
    pub resolve: Vec<(String, SocketAddr)>,
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub path: PathBuf,
    /// sled's page cache; bounds the proxy's memory with large cassettes.
    pub cache_capacity_bytes: u64,
    /// How long a flush waits for other recordings in flight to join it (zero: never).
    pub commit_delay: Duration,
    /// Read the default cassette's replay index into memory after start-up.
    pub warm_index: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

/// The file form: every field optional, unknown keys rejected.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub proxy: FileProxy,
    #[serde(default)]
    pub upstream: FileUpstream,
    #[serde(default)]
    pub store: FileStore,
    #[serde(default, rename = "match")]
    pub matching: FileRules,
    #[serde(default)]
    pub sanitize: FileSanitize,
    #[serde(default)]
    pub graph: FileGraph,
    #[serde(default)]
    pub chaos: FileChaos,
    #[serde(default)]
    pub forward: FileForward,
    #[serde(default)]
    pub audit: FileAudit,
    #[serde(default)]
    pub admin: FileAdmin,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAudit {
    pub enabled: Option<bool>,
    pub bodies: Option<bool>,
    pub max_body_bytes: Option<usize>,
    pub max_records: Option<u64>,
    /// A duration ("90days"), or "0" to keep records of any age.
    pub max_age: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAdmin {
    pub enabled: Option<bool>,
    pub listen: Option<String>,
    pub token: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileForward {
    pub intercept_hosts: Option<Vec<String>>,
    pub unknown_hosts: Option<String>,
    pub ca_dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileProxy {
    pub mode: Option<String>,
    pub listen: Option<String>,
    pub cassette: Option<String>,
    pub max_body_bytes: Option<usize>,
    pub max_header_bytes: Option<usize>,
    pub header_read_timeout: Option<String>,
    pub body_read_timeout: Option<String>,
    pub max_connections: Option<usize>,
    pub provenance_headers: Option<bool>,
    pub max_age: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileUpstream {
    pub url: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub connect_timeout: Option<String>,
    pub response_timeout: Option<String>,
    pub max_response_bytes: Option<usize>,
    pub resolve: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileStore {
    pub path: Option<PathBuf>,
    pub cache_capacity_mb: Option<u64>,
    pub commit_delay: Option<String>,
    pub warm_index: Option<bool>,
}

impl FileConfig {
    /// Parses config text; `origin` names the file in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            message: e.message().to_owned() + &span_hint(text, e.span()),
        })
    }

    /// Reads `explicit`, else `./config.toml` when it exists, else nothing.
    pub fn load(explicit: Option<&Path>) -> Result<Self, ConfigError> {
        let path = match explicit {
            Some(path) => path.to_owned(),
            None => {
                let default = PathBuf::from(defaults::CONFIG_FILE);
                if !default.is_file() {
                    return Ok(Self::default());
                }
                default
            }
        };
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        Self::parse(&text, &path)
    }
}

fn span_hint(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    let Some(span) = span else {
        return String::new();
    };
    let start = span.start.min(text.len());
    let line = text[..start].matches('\n').count() + 1;
    let content = text.lines().nth(line - 1).unwrap_or("").trim();
    format!(" (line {line}: `{content}`)")
}

impl Config {
    /// Resolves `serve`'s flags (already merged with the environment by clap) over the file.
    pub fn resolve(args: &ServeArgs) -> Result<Self, ConfigError> {
        let file = FileConfig::load(args.config.as_deref())?;
        Self::from_layers(args, file)
    }

    /// Resolves a command that works on the store (flags: config file and store path).
    pub fn resolve_store(args: &StoreArgs) -> Result<Self, ConfigError> {
        let serve = ServeArgs {
            config: args.config.clone(),
            store: args.store.clone(),
            ..ServeArgs::default()
        };
        Self::resolve(&serve)
    }

    /// The precedence rule itself, separated from I/O so it can be tested.
    pub fn from_layers(args: &ServeArgs, file: FileConfig) -> Result<Self, ConfigError> {
        let FileConfig {
            proxy,
            upstream,
            store,
            matching,
            sanitize,
            graph,
            chaos,
            forward,
            audit,
            admin,
        } = file;
        let store_path = args
            .store
            .clone()
            .or(store.path)
            .unwrap_or_else(|| PathBuf::from(defaults::STORE));
        let max_age = match proxy.max_age.as_deref() {
            None => None,
            Some(text) => Some(duration("proxy.max_age", Some(text), text)?),
        };
        let mode = match (args.mode, proxy.mode) {
            (Some(mode), _) => mode,
            (None, Some(text)) => Mode::parse(&text).ok_or_else(|| ConfigError::Invalid {
                key: "proxy.mode".into(),
                message: format!("{text:?} is not one of record, replay, auto, passthrough"),
            })?,
            (None, None) => defaults::MODE,
        };
        let listen = match (args.listen, proxy.listen) {
            (Some(addr), _) => addr,
            (None, Some(text)) => parse_addr("proxy.listen", &text)?,
            (None, None) => parse_addr("proxy.listen", defaults::LISTEN)?,
        };
        let cassette = args
            .cassette
            .clone()
            .or(proxy.cassette)
            .unwrap_or_else(|| defaults::CASSETTE.to_owned());
        validate_cassette_name("proxy.cassette", &cassette)?;
        let url = args
            .upstream
            .clone()
            .or(upstream.url)
            .unwrap_or_else(|| defaults::UPSTREAM.to_owned());
        validate_upstream_url(&url)?;
        let positive = |key: &str, value: usize| {
            if value == 0 {
                Err(ConfigError::Invalid {
                    key: key.to_owned(),
                    message: "must be greater than 0".to_owned(),
                })
            } else {
                Ok(value)
            }
        };
        Ok(Self {
            proxy: ProxyConfig {
                mode,
                listen,
                cassette,
                max_body_bytes: positive(
                    "proxy.max_body_bytes",
                    proxy.max_body_bytes.unwrap_or(defaults::MAX_BODY_BYTES),
                )?,
                max_header_bytes: positive(
                    "proxy.max_header_bytes",
                    proxy.max_header_bytes.unwrap_or(defaults::MAX_HEADER_BYTES),
                )?,
                header_read_timeout: duration(
                    "proxy.header_read_timeout",
                    proxy.header_read_timeout.as_deref(),
                    defaults::HEADER_READ_TIMEOUT,
                )?,
                body_read_timeout: duration(
                    "proxy.body_read_timeout",
                    proxy.body_read_timeout.as_deref(),
                    defaults::BODY_READ_TIMEOUT,
                )?,
                max_connections: positive(
                    "proxy.max_connections",
                    proxy.max_connections.unwrap_or(defaults::MAX_CONNECTIONS),
                )?,
                provenance_headers: proxy
                    .provenance_headers
                    .unwrap_or(defaults::PROVENANCE_HEADERS),
                max_age,
                tls: match (
                    args.tls_cert.clone().or(proxy.tls_cert),
                    args.tls_key.clone().or(proxy.tls_key),
                ) {
                    (Some(cert), Some(key)) => Some((cert, key)),
                    (None, None) => None,
                    _ => {
                        return Err(ConfigError::Invalid {
                            key: "proxy.tls_cert".into(),
                            message: "tls_cert and tls_key go together".into(),
                        })
                    }
                },
            },
            upstream: UpstreamConfig {
                url,
                ca_file: args.upstream_ca.clone().or(upstream.ca_file),
                connect_timeout: duration(
                    "upstream.connect_timeout",
                    upstream.connect_timeout.as_deref(),
                    defaults::CONNECT_TIMEOUT,
                )?,
                response_timeout: duration(
                    "upstream.response_timeout",
                    upstream.response_timeout.as_deref(),
                    defaults::RESPONSE_TIMEOUT,
                )?,
                max_response_bytes: positive(
                    "upstream.max_response_bytes",
                    upstream
                        .max_response_bytes
                        .unwrap_or(defaults::MAX_RESPONSE_BYTES),
                )?,
                resolve: if args.resolve.is_empty() {
                    upstream.resolve.unwrap_or_default()
                } else {
                    args.resolve.clone()
                }
                .iter()
                .map(|entry| parse_resolve(entry))
                .collect::<Result<_, _>>()?,
            },
            store: StoreConfig {
                path: store_path.clone(),
                cache_capacity_bytes: store
                    .cache_capacity_mb
                    .unwrap_or(defaults::CACHE_CAPACITY_MB)
                    .max(1)
                    * 1024
                    * 1024,
                commit_delay: commit_delay(store.commit_delay.as_deref())?,
                warm_index: store.warm_index.unwrap_or(defaults::WARM_INDEX),
            },
            matching: matching.resolve()?,
            sanitize: sanitize.resolve()?,
            audit: resolve_audit(audit)?,
            admin: resolve_admin(admin)?,
            graph: graph.resolve(),
            chaos: chaos.resolve()?,
            forward: ForwardConfig {
                intercept_hosts: forward.intercept_hosts.unwrap_or_else(|| {
                    crate::graph::GRAPH_HOSTS
                        .iter()
                        .map(|h| (*h).to_owned())
                        .collect()
                }),
                unknown_hosts: match forward.unknown_hosts.as_deref() {
                    None | Some("tunnel") => UnknownHosts::Tunnel,
                    Some("deny") => UnknownHosts::Deny,
                    Some(other) => {
                        return Err(ConfigError::Invalid {
                            key: "forward.unknown_hosts".into(),
                            message: format!("{other:?} is not one of tunnel, deny"),
                        })
                    }
                },
                ca_dir: args
                    .ca_dir
                    .clone()
                    .or(forward.ca_dir)
                    .unwrap_or_else(|| store_path.join(defaults::CA_SUBDIR)),
            },
        })
    }
}

fn resolve_audit(audit: FileAudit) -> Result<AuditConfig, ConfigError> {
    let max_age = audit
        .max_age
        .unwrap_or_else(|| defaults::AUDIT_MAX_AGE.to_owned());
    let max_age = if max_age.trim() == "0" {
        None
    } else {
        Some(duration(
            "audit.max_age",
            Some(&max_age),
            defaults::AUDIT_MAX_AGE,
        )?)
    };
    Ok(AuditConfig {
        enabled: audit.enabled.unwrap_or(defaults::AUDIT_ENABLED),
        bodies: audit.bodies.unwrap_or(defaults::AUDIT_BODIES),
        max_body_bytes: audit
            .max_body_bytes
            .unwrap_or(defaults::AUDIT_MAX_BODY_BYTES),
        max_records: audit.max_records.unwrap_or(defaults::AUDIT_MAX_RECORDS),
        max_age,
    })
}

fn resolve_admin(admin: FileAdmin) -> Result<AdminConfig, ConfigError> {
    let listen = admin
        .listen
        .filter(|text| !text.is_empty())
        .map(|text| parse_addr("admin.listen", &text))
        .transpose()?;
    let token = admin.token.filter(|t| !t.is_empty());
    if let Some(token) = &token {
        if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ConfigError::Invalid {
                key: "admin.token".into(),
                message: "must be at least 16 printable ASCII characters without spaces".into(),
            });
        }
    }
    Ok(AdminConfig {
        enabled: admin.enabled.unwrap_or(defaults::ADMIN_ENABLED),
        listen,
        token,
    })
}

fn parse_addr(key: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    text.parse().map_err(|_| ConfigError::Invalid {
        key: key.to_owned(),
        message: format!("{text:?} is not an ADDR:PORT socket address"),
    })
}

/// `HOST=ADDR:PORT`, as `--resolve` and `upstream.resolve` take it.
fn parse_resolve(entry: &str) -> Result<(String, SocketAddr), ConfigError> {
    let invalid = || ConfigError::Invalid {
        key: "upstream.resolve".into(),
        message: format!("{entry:?} is not HOST=ADDR:PORT"),
    };
    let (host, addr) = entry.split_once('=').ok_or_else(invalid)?;
    let addr: SocketAddr = addr.trim().parse().map_err(|_| invalid())?;
    let host = host.trim().to_ascii_lowercase();
    if host.is_empty() {
        return Err(invalid());
    }
    Ok((host, addr))
}

/// `store.commit_delay`: zero turns the delay off; more than [`defaults::MAX_COMMIT_DELAY`]
/// would hold every recording that long, so it is refused.
fn commit_delay(value: Option<&str>) -> Result<Duration, ConfigError> {
    const KEY: &str = "store.commit_delay";
    let text = value.unwrap_or(defaults::COMMIT_DELAY);
    let parsed = humantime::parse_duration(text).map_err(|e| ConfigError::Invalid {
        key: KEY.to_owned(),
        message: format!("{text:?} is not a duration like \"2ms\" or \"0s\": {e}"),
    })?;
    if parsed > defaults::MAX_COMMIT_DELAY {
        return Err(ConfigError::Invalid {
            key: KEY.to_owned(),
            message: format!(
                "{text:?} is longer than the {:?} allowed: every recording would wait that long",
                defaults::MAX_COMMIT_DELAY
            ),
        });
    }
    Ok(parsed)
}

fn duration(key: &str, value: Option<&str>, default: &str) -> Result<Duration, ConfigError> {
    let text = value.unwrap_or(default);
    let parsed = humantime::parse_duration(text).map_err(|e| ConfigError::Invalid {
        key: key.to_owned(),
        message: format!("{text:?} is not a duration like \"30s\" or \"2m\": {e}"),
    })?;
    if parsed.is_zero() {
        return Err(ConfigError::Invalid {
            key: key.to_owned(),
            message: "must be longer than zero".to_owned(),
        });
    }
    Ok(parsed)
}

/// Cassette names become key prefixes in the store and path segments in the admin API.
pub fn validate_cassette_name(key: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            key: key.to_owned(),
            message: format!("{name:?} is not a cassette name (1-128 of A-Z a-z 0-9 - _ .)"),
        })
    }
}

fn validate_upstream_url(url: &str) -> Result<(), ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        key: "upstream.url".to_owned(),
        message,
    };
    let uri: http::Uri = url
        .parse()
        .map_err(|e| invalid(format!("{url:?} is not a URL: {e}")))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => {
            return Err(invalid(format!(
                "{url:?} must start with http:// or https://"
            )))
        }
    }
    if uri.authority().is_none() {
        return Err(invalid(format!("{url:?} has no host")));
    }
    if uri.query().is_some() {
        return Err(invalid(format!("{url:?} must not carry a query")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(args: ServeArgs, file: &str) -> Result<Config, ConfigError> {
        Config::from_layers(&args, FileConfig::parse(file, Path::new("test.toml"))?)
    }

    #[test]
    fn shipped_config_equals_the_defaults() {
        let text = include_str!("../config.toml");
        let shipped = resolve(ServeArgs::default(), text).expect("shipped config.toml parses");
        let defaults = resolve(ServeArgs::default(), "").expect("defaults");
        assert_eq!(format!("{shipped:?}"), format!("{defaults:?}"));
    }

    #[test]
    fn flags_beat_the_file() {
        let args = ServeArgs {
            mode: Some(Mode::Record),
            cassette: Some("flag".into()),
            ..ServeArgs::default()
        };
        let config = resolve(
            args,
            "[proxy]\nmode = \"auto\"\ncassette = \"file\"\nlisten = \"127.0.0.1:9\"\n",
        )
        .expect("config");
        assert_eq!(config.proxy.mode, Mode::Record);
        assert_eq!(config.proxy.cassette, "flag");
        assert_eq!(config.proxy.listen.port(), 9);
    }

    #[test]
    fn reading_the_index_at_start_up_is_on_unless_turned_off() {
        let default = resolve(ServeArgs::default(), "").expect("defaults");
        assert!(default.store.warm_index);
        let off = resolve(ServeArgs::default(), "[store]\nwarm_index = false\n").expect("off");
        assert!(!off.store.warm_index);
        let error = resolve(ServeArgs::default(), "[store]\nwarm_index = \"yes\"\n")
            .expect_err("not a boolean")
            .to_string();
        assert!(error.contains("warm_index"), "{error}");
    }

    #[test]
    fn the_commit_delay_defaults_to_2ms_and_zero_turns_it_off() {
        let default = resolve(ServeArgs::default(), "").expect("defaults");
        assert_eq!(default.store.commit_delay, Duration::from_millis(2));
        let off = resolve(ServeArgs::default(), "[store]\ncommit_delay = \"0s\"\n").expect("0s");
        assert_eq!(off.store.commit_delay, Duration::ZERO);
    }

    #[test]
    fn errors_name_the_key() {
        let check = |text: &str, needle: &str| {
            let error = resolve(ServeArgs::default(), text)
                .expect_err(text)
                .to_string();
            assert!(error.contains(needle), "{error:?} should name {needle:?}");
        };
        check("[proxy]\nmood = \"replay\"\n", "mood");
        check("[nonsense]\n", "nonsense");
        check("[proxy]\nmode = \"rewind\"\n", "proxy.mode");
        check("[store]\ncommit_delay = \"soon\"\n", "store.commit_delay");
        check(
            "[store]\ncommit_delay = \"1s\"\n",
            "longer than the 100ms allowed",
        );
        check("[proxy]\nlisten = \"here\"\n", "proxy.listen");
        check("[proxy]\ncassette = \"a/b\"\n", "proxy.cassette");
        check("[upstream]\nurl = \"ftp://x\"\n", "upstream.url");
        check(
            "[upstream]\nconnect_timeout = \"soon\"\n",
            "upstream.connect_timeout",
        );
        check("[proxy]\nmax_body_bytes = 0\n", "proxy.max_body_bytes");
        check("[proxy]\nmax_body_bytes = \"big\"\n", "max_body_bytes");
        check("[audit]\nmax_age = \"forever\"\n", "audit.max_age");
        check("[audit]\nkeep = true\n", "keep");
        check("[admin]\nlisten = \"nowhere\"\n", "admin.listen");
        check("[admin]\ntoken = \"short\"\n", "admin.token");
        check("[graph]\nregenerate = true\n", "regenerate");
        check("[chaos]\nrate = 2.0\n", "chaos.rate");
        check("[match]\nodata = \"yes\"\n", "odata");
    }
}
