//! `graphvcr cassette ...`: list, show, export and import cassettes in the store.
//!
//! The export document (see `record`) is the lossless, reviewable form of a cassette and
//! the migration path off the store's on-disk format.

use std::io::Write;
use std::path::Path;

use crate::app::AppError;
use crate::config::{validate_cassette_name, MatchingConfig};
use crate::record::{ExportDocument, ExportedInteraction, EXPORT_VERSION};
use crate::store::Store;

/// Export documents are read whole; refuse anything larger than this.
const MAX_IMPORT_BYTES: u64 = 1 << 30;

/// A cassette as an export document.
pub fn export(store: &Store, cassette: &str) -> Result<ExportDocument, AppError> {
    let mut interactions = store.interactions(cassette, usize::MAX)?;
    if interactions.is_empty() && !store.cassettes()?.iter().any(|c| c.name == cassette) {
        return Err(AppError::Other(format!(
            "no cassette named '{cassette}' in {}",
            store.path().display()
        )));
    }
    // Recording order, so episodes read top to bottom as they happened.
    interactions.sort_by_key(|i| i.id);
    Ok(ExportDocument {
        graphvcr_export: EXPORT_VERSION,
        cassette: cassette.to_owned(),
        interactions: interactions
            .iter()
            .map(ExportedInteraction::from_interaction)
            .collect(),
    })
}

/// Pretty JSON with a trailing newline, stable for git diffs.
pub fn export_text(document: &ExportDocument) -> String {
    let mut text = serde_json::to_string_pretty(document).unwrap_or_default();
    text.push('\n');
    text
}

/// Parses an export document.
pub fn parse_export(text: &str, origin: &Path) -> Result<ExportDocument, AppError> {
    let document: ExportDocument = serde_json::from_str(text).map_err(|e| {
        AppError::Other(format!(
            "{} is not a graphvcr export document: {e}",
            origin.display()
        ))
    })?;
    if document.graphvcr_export > EXPORT_VERSION {
        return Err(AppError::Other(format!(
            "{} is export version {}, newer than this graphvcr reads ({EXPORT_VERSION})",
            origin.display(),
            document.graphvcr_export
        )));
    }
    Ok(document)
}

/// Reads a document into the store under `name` (default: the document's own), keeping
/// the interactions' order so episodes replay as recorded. Returns the count.
pub fn import(
    store: &Store,
    document: ExportDocument,
    name: Option<&str>,
    matching: &MatchingConfig,
) -> Result<(String, usize), AppError> {
    let cassette = name.unwrap_or(&document.cassette).to_owned();
    validate_cassette_name("cassette", &cassette)?;
    let rule_set = matching.for_cassette(&cassette);
    let mut records = Vec::with_capacity(document.interactions.len());
    let mut interactions = document.interactions;
    interactions.sort_by_key(|i| i.id);
    for (position, exported) in interactions.into_iter().enumerate() {
        let interaction = exported.into_interaction(&cassette).map_err(|e| {
            AppError::Other(format!(
                "interaction {position}: a base64 body does not decode: {e}"
            ))
        })?;
        records.push((rule_set.key_of(&interaction), interaction));
    }
    let count = store.insert_all(rule_set.fingerprint(), records)?.len();
    store.flush_now()?;
    Ok((cassette, count))
}

/// Reads an export file from disk, bounded in size.
pub fn read_export_file(path: &Path) -> Result<ExportDocument, AppError> {
    let size = std::fs::metadata(path)
        .map_err(|e| AppError::Other(format!("cannot read {}: {e}", path.display())))?
        .len();
    if size > MAX_IMPORT_BYTES {
        return Err(AppError::Other(format!(
            "{} is larger than {MAX_IMPORT_BYTES} bytes",
            path.display()
        )));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| AppError::Other(format!("cannot read {}: {e}", path.display())))?;
    parse_export(&text, path)
}

/// Prints the cassette list as an aligned table.
pub fn print_list(store: &Store, out: &mut impl Write) -> Result<(), AppError> {
    let cassettes = store.cassettes()?;
    let width = cassettes
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(0)
        .max(8);
    let io = |e: std::io::Error| AppError::Other(format!("cannot write output: {e}"));
    writeln!(out, "{:<width$}  INTERACTIONS", "CASSETTE").map_err(io)?;
    for cassette in cassettes {
        writeln!(out, "{:<width$}  {}", cassette.name, cassette.interactions).map_err(io)?;
    }
    Ok(())
}
