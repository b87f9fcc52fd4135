//! `graphvcr audit`, `audit stats` and `audit verify`: against the store, or through the
//! admin API of the proxy that holds it.

use std::io::Write;
use std::time::SystemTime;

use serde::Deserialize;

use super::format::{self, Stats};
use super::query::FilterSpec;
use super::report::{self, Form};
use crate::app::AppError;
use crate::cli::{AuditArgs, AuditCommand, AuditFilterArgs, AuditFormat, StoreArgs};
use crate::remote::{self, Target};

/// Runs an audit command, writing its report to `out`. A broken chain is an error
/// (exit code 1) after the report is written.
pub async fn run(args: AuditArgs, out: &mut impl Write) -> Result<(), AppError> {
    let io = |e: std::io::Error| AppError::Other(format!("cannot write output: {e}"));
    match args.command {
        None => write_records(&args.store, spec(&args.filters), args.format, out).await?,
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

/// The records, written as they are read from the store (or as the proxy sends them),
/// never all held: a full trail is ~80 MB of them. Locally and through a proxy the
/// output is the same bytes.
async fn write_records(
    store: &StoreArgs,
    spec: FilterSpec,
    format: AuditFormat,
    out: &mut impl Write,
) -> Result<(), AppError> {
    let io = |e: std::io::Error| AppError::Other(format!("cannot write output: {e}"));
    let mut out = std::io::BufWriter::with_capacity(64 << 10, out);
    match remote::open(store)? {
        Target::Local(store) => {
            let form = match format {
                AuditFormat::Table => Form::Table,
                AuditFormat::Jsonl => Form::Jsonl,
                AuditFormat::Har => Form::Har { pretty: true },
            };
            let filter = spec.parse(SystemTime::now())?;
            report::write(&store, &filter, form, &mut out, io)?;
        }
        Target::Remote(remote) => {
            let form = match format {
                AuditFormat::Table => "format=table",
                AuditFormat::Jsonl => "format=jsonl",
                AuditFormat::Har => "format=har&pretty=true",
            };
            remote
                .copy(&path_with("/audit", spec, Some(form)), &mut out)
                .await?;
        }
    }
    out.flush().map_err(io)
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
