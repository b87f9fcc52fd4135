//! `graphvcr audit`, `audit stats` and `audit verify`: against the store, or through the
//! admin API of the proxy that holds it.

use std::io::Write;
use std::time::SystemTime;

use serde::Deserialize;

use bytes::Bytes;

use super::format::{self, Format, Stats};
use super::query::FilterSpec;
use super::AuditRecord;
use crate::app::AppError;
use crate::cli::{AuditArgs, AuditCommand, AuditFilterArgs, AuditFormat, StoreArgs};
use crate::remote::{self, Target};

/// Runs an audit command, writing its report to `out`. A broken chain is an error
/// (exit code 1) after the report is written.
pub async fn run(args: AuditArgs, out: &mut impl Write) -> Result<(), AppError> {
    let io = |e: std::io::Error| AppError::Other(format!("cannot write output: {e}"));
    match args.command {
        None => {
            let format = match args.format {
                AuditFormat::Jsonl => {
                    return write_lines(&args.store, spec(&args.filters), out).await
                }
                AuditFormat::Table => Format::Table,
                AuditFormat::Har => Format::Har,
            };
            let records = fetch(&args.store, spec(&args.filters)).await?;
            out.write_all(format::render(&records, format).as_bytes())
                .map_err(io)?;
        }
        Some(AuditCommand::Stats { filters, store }) => {
            let stats = stats(&store, spec(&filters)).await?;
            out.write_all(format::stats_text(&stats).as_bytes())
                .map_err(io)?;
        }
        Some(AuditCommand::Verify { store }) => {
            let (intact, message) = verify(&store).await?;
            writeln!(out, "{message}").map_err(io)?;
            if !intact {
                return Err(AppError::Other(message));
            }
        }
    }
    Ok(())
}

fn spec(filters: &AuditFilterArgs) -> FilterSpec {
    FilterSpec {
        since: filters.since.clone(),
        until: filters.until.clone(),
        status: filters.status.clone(),
        method: filters.method.clone(),
        path: filters.path.clone(),
        outcome: filters.outcome.clone(),
        cassette: filters.cassette.clone(),
        limit: filters.limit.clone(),
    }
}

async fn fetch(store: &StoreArgs, spec: FilterSpec) -> Result<Vec<AuditRecord>, AppError> {
    match remote::open(store)? {
        Target::Local(store) => {
            let filter = spec.parse(SystemTime::now())?;
            Ok(super::query(&store, &filter)?)
        }
        Target::Remote(remote) => {
            #[derive(Deserialize)]
            struct Records {
                records: Vec<AuditRecord>,
            }
            Ok(remote
                .get_json::<Records>(&path_with("/audit", spec, None))
                .await?
                .records)
        }
    }
}

/// The records as JSON Lines, written as they are read from the store (or as the proxy
/// sends them), never all held: a full trail is ~80 MB of them.
async fn write_lines(
    store: &StoreArgs,
    spec: FilterSpec,
    out: &mut impl Write,
) -> Result<(), AppError> {
    let io = |e: std::io::Error| AppError::Other(format!("cannot write output: {e}"));
    match remote::open(store)? {
        Target::Local(store) => {
            let filter = spec.parse(SystemTime::now())?;
            let mut out = std::io::BufWriter::with_capacity(64 << 10, out);
            super::query_each(&store, &filter, |record| {
                serde_json::to_writer(&mut out, &record)
                    .map_err(|e| AppError::Other(format!("cannot write output: {e}")))?;
                out.write_all(b"\n").map_err(io)
            })?;
            out.flush().map_err(io)
        }
        Target::Remote(remote) => {
            let bytes = remote
                .send(
                    http::Method::GET,
                    &path_with("/audit", spec, Some("format=jsonl")),
                    Bytes::new(),
                )
                .await?;
            out.write_all(&bytes).map_err(io)
        }
    }
}

async fn stats(store: &StoreArgs, spec: FilterSpec) -> Result<Stats, AppError> {
    match remote::open(store)? {
        Target::Local(store) => Ok(super::stats(&store, &spec.parse(SystemTime::now())?)?),
        Target::Remote(remote) => Ok(remote
            .get_json::<Stats>(&path_with("/audit/stats", spec, None))
            .await?),
    }
}

/// An admin API path with the filters (and `extra`) as its query string.
fn path_with(path: &str, spec: FilterSpec, extra: Option<&str>) -> String {
    let query: Vec<String> = [spec.to_query()]
        .into_iter()
        .chain(extra.map(str::to_owned))
        .filter(|part| !part.is_empty())
        .collect();
    if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", query.join("&"))
    }
}

async fn verify(store: &StoreArgs) -> Result<(bool, String), AppError> {
    match remote::open(store)? {
        Target::Local(store) => {
            let verification = super::verify(&store)?;
            Ok((verification.intact, verification.message))
        }
        Target::Remote(remote) => {
            #[derive(Deserialize)]
            struct Verdict {
                intact: bool,
                message: String,
            }
            let verdict: Verdict = remote.get_json("/audit/verify").await?;
            Ok((verdict.intact, verdict.message))
        }
    }
}
