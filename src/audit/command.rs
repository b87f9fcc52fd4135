//! `graphvcr audit`, `audit stats` and `audit verify`: against the store, or through the
//! admin API of the proxy that holds it.

use std::io::Write;
use std::time::SystemTime;

use serde::Deserialize;

use super::format::{self, Format};
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
            let records = fetch(&args.store, spec(&args.filters)).await?;
            let format = match args.format {
                AuditFormat::Table => Format::Table,
                AuditFormat::Jsonl => Format::Jsonl,
                AuditFormat::Har => Format::Har,
            };
            out.write_all(format::render(&records, format).as_bytes())
                .map_err(io)?;
        }
        Some(AuditCommand::Stats { filters, store }) => {
            let records = fetch(&store, spec(&filters)).await?;
            out.write_all(format::stats_text(&format::stats(&records)).as_bytes())
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
            let query = spec.to_query();
            let path = if query.is_empty() {
                "/audit".to_owned()
            } else {
                format!("/audit?{query}")
            };
            Ok(remote.get_json::<Records>(&path).await?.records)
        }
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
