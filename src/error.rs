//! The proxy's error type. Each error knows whose fault it was, which decides its HTTP
//! status, its Graph error code and the level it is logged at. `proxy` turns every
//! error into a response in exactly one place.

use std::time::Duration;

use http::StatusCode;
use serde::Serialize;

use crate::matching::Difference;
use crate::store::StoreError;
use crate::upstream::UpstreamError;

/// The status of a replay miss. Graph never sends it, so a test (or a person reading a
/// log) can tell "not in the cassette" apart from anything Graph itself could answer.
pub const MISS_STATUS: u16 = 599;

/// Who caused a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The client sent something graphvcr will not handle (4xx).
    Client,
    /// The upstream failed (502/504).
    Upstream,
    /// The cassette store failed (500).
    Store,
    /// Replay found no recording (599).
    Miss,
    /// graphvcr itself failed (500), or cannot take the request now (503 while it shuts
    /// down).
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("request body is larger than the {limit}-byte limit (proxy.max_body_bytes)")]
    BodyTooLarge { limit: usize },
    #[error("request body was not received within {0:?} (proxy.body_read_timeout)")]
    BodyTimeout(Duration),
    #[error("request body could not be read: {0}")]
    BodyRead(String),
    #[error("header {name} has the value {value:?}; expected {expected}")]
    BadControlHeader {
        name: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("{0}")]
    Upstream(#[from] UpstreamError),
    #[error("the cassette store failed, nothing was acknowledged: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Miss(Box<MissReport>),
    #[error("CONNECT needs a host:port target, got {0:?}")]
    BadConnect(String),
    #[error("{0} is not an intercepted host and forward.unknown_hosts = \"deny\"")]
    TunnelRefused(String),
    #[error("the interception CA is not usable: {0}")]
    Ca(#[from] crate::ca::CaError),
    #[error("graphvcr is shutting down and opens no new intercepted tunnel")]
    ShuttingDown,
}

impl ProxyError {
    pub fn fault(&self) -> Fault {
        match self {
            Self::BodyTooLarge { .. }
            | Self::BodyTimeout(_)
            | Self::BodyRead(_)
            | Self::BadControlHeader { .. }
            | Self::BadConnect(_)
            | Self::TunnelRefused(_) => Fault::Client,
            Self::Upstream(_) => Fault::Upstream,
            Self::Store(_) => Fault::Store,
            Self::Miss(_) => Fault::Miss,
            Self::Ca(_) | Self::ShuttingDown => Fault::Internal,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::BodyRead(_) | Self::BadControlHeader { .. } => StatusCode::BAD_REQUEST,
            Self::Upstream(error) => error.status(),
            Self::Store(_) | Self::Ca(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::BadConnect(_) => StatusCode::BAD_REQUEST,
            Self::TunnelRefused(_) => StatusCode::FORBIDDEN,
            Self::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            Self::Miss(_) => {
                StatusCode::from_u16(MISS_STATUS).unwrap_or(StatusCode::NOT_IMPLEMENTED)
            }
        }
    }

    /// The `error.code` of the Graph-shaped body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BodyTooLarge { .. } => "RequestEntityTooLarge",
            Self::BodyTimeout(_) => "RequestTimeout",
            Self::BodyRead(_) => "BadRequest",
            Self::BadControlHeader { .. } => "InvalidGraphvcrHeader",
            Self::Upstream(error) => error.code(),
            Self::Store(_) => "CassetteStoreFailure",
            Self::Miss(_) => "ReplayMiss",
            Self::BadConnect(_) => "BadRequest",
            Self::TunnelRefused(_) => "TunnelRefused",
            Self::Ca(_) => "InterceptionCaFailure",
            Self::ShuttingDown => "ServiceUnavailable",
        }
    }
}

/// Why a replay found nothing, with the nearest recordings to show what differed.
#[derive(Debug, Clone, Serialize)]
pub struct MissReport {
    pub cassette: String,
    pub method: String,
    pub uri: String,
    pub nearest: Vec<Nearest>,
    /// Set when the request was recorded but its recorded sequence is used up
    /// (`exhausted = "miss"`): how many episodes there were.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exhausted_after: Option<usize>,
}

/// A recorded request close to the one that missed.
#[derive(Debug, Clone, Serialize)]
pub struct Nearest {
    pub interaction: u64,
    pub method: String,
    pub uri: String,
    pub differences: Vec<Difference>,
}

impl std::fmt::Display for MissReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(count) = self.exhausted_after {
            return write!(
                f,
                "the recorded sequence for {} {} in cassette '{}' is used up: all {count} episodes were served and the match rules say exhausted = \"miss\"",
                self.method, self.uri, self.cassette
            );
        }
        write!(
            f,
            "no recorded interaction in cassette '{}' matches {} {}",
            self.cassette, self.method, self.uri
        )?;
        match self.nearest.first() {
            None => write!(
                f,
                "; the cassette holds no {} request to compare",
                self.method
            ),
            Some(nearest) => {
                write!(f, "; nearest recorded: {} {}", nearest.method, nearest.uri)?;
                let shown: Vec<String> = nearest
                    .differences
                    .iter()
                    .take(5)
                    .map(|d| {
                        format!(
                            "{} (recorded {}, received {})",
                            d.field, d.recorded, d.received
                        )
                    })
                    .collect();
                if !shown.is_empty() {
                    write!(f, ", differing in {}", shown.join("; "))?;
                }
                Ok(())
            }
        }
    }
}
