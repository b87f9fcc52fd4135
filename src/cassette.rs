//! `graphvcr cassette ...`: list, show, export and import cassettes in the store.
//!
//! The export document (see `record`) is the lossless, reviewable form of a cassette and
//! the migration path off the store's on-disk format.

use std::io::Write;
use std::path::Path;

use bytes::Bytes;
use http::Method;
use serde::Deserialize;

use crate::app::AppError;
use crate::cli::CassetteCommand;
use crate::config::validate_cassette_name;
use crate::matching;
use crate::record::{ExportDocument, ExportedInteraction, EXPORT_VERSION};
use crate::remote::{self, Remote, Target};
use crate::store::{CassetteInfo, Store};

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
) -> Result<(String, usize), AppError> {
    let cassette = name.unwrap_or(&document.cassette).to_owned();
    validate_cassette_name("cassette", &cassette)?;
    let mut records = Vec::with_capacity(document.interactions.len());
    let mut interactions = document.interactions;
    interactions.sort_by_key(|i| i.id);
    for (position, exported) in interactions.into_iter().enumerate() {
        let interaction = exported.into_interaction(&cassette).map_err(|e| {
            AppError::Other(format!(
                "interaction {position}: a base64 body does not decode: {e}"
            ))
        })?;
        let key = matching::normalize_recorded(&interaction.request).key();
        records.push((key, interaction));
    }
    let count = store.insert_all(records)?;
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
    print_cassettes(&store.cassettes()?, out)
}

fn print_cassettes(cassettes: &[CassetteInfo], out: &mut impl Write) -> Result<(), AppError> {
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

/// Runs a `cassette` subcommand against the store, or through the admin API of the
/// proxy holding it (see `remote`).
pub async fn run(command: CassetteCommand, out: &mut impl Write) -> Result<(), AppError> {
    let io = |e: std::io::Error| AppError::Other(format!("cannot write output: {e}"));
    match command {
        CassetteCommand::List(args) => match remote::open(&args)? {
            Target::Local(store) => print_list(&store, out)?,
            Target::Remote(remote) => {
                #[derive(Deserialize)]
                struct List {
                    cassettes: Vec<CassetteInfo>,
                }
                let list: List = remote.get_json("/cassettes").await?;
                print_cassettes(&list.cassettes, out)?;
            }
        },
        CassetteCommand::Show { name, store }
        | CassetteCommand::Export {
            name,
            out: None,
            store,
        } => {
            let text = export_text(&fetch(&store, &name).await?);
            out.write_all(text.as_bytes()).map_err(io)?;
        }
        CassetteCommand::Export {
            name,
            out: Some(path),
            store,
        } => {
            let text = export_text(&fetch(&store, &name).await?);
            std::fs::write(&path, text)
                .map_err(|e| AppError::Other(format!("cannot write {}: {e}", path.display())))?;
            eprintln!("exported cassette '{name}' to {}", path.display());
        }
        CassetteCommand::Import {
            file,
            as_name,
            store,
        } => {
            let document = read_export_file(&file)?;
            let (name, count) = match remote::open(&store)? {
                Target::Local(store) => {
                    let imported = import(&store, document, as_name.as_deref())?;
                    store.close()?;
                    imported
                }
                Target::Remote(remote) => {
                    let name = as_name.unwrap_or_else(|| document.cassette.clone());
                    validate_cassette_name("cassette", &name)?;
                    let body = Bytes::from(serde_json::to_vec(&document).unwrap_or_default());
                    #[derive(Deserialize)]
                    struct Imported {
                        imported: usize,
                    }
                    let path = format!("/cassettes/{name}/interactions");
                    let imported: Imported = remote.send_json(Method::POST, &path, body).await?;
                    (name, imported.imported)
                }
            };
            eprintln!("imported {count} interactions into cassette '{name}'");
        }
        CassetteCommand::Delete { name, store } => {
            let deleted = match remote::open(&store)? {
                Target::Local(store) => {
                    store.start_flusher();
                    let deleted = store.delete_cassette(&name).await?;
                    store.close()?;
                    deleted
                }
                Target::Remote(remote) => delete_remote(&remote, &name).await?,
            };
            match deleted {
                Some(count) => eprintln!("deleted cassette '{name}' ({count} interactions)"),
                None => return Err(AppError::Other(format!("no cassette named '{name}'"))),
            }
        }
    }
    Ok(())
}

async fn fetch(store: &crate::cli::StoreArgs, name: &str) -> Result<ExportDocument, AppError> {
    match remote::open(store)? {
        Target::Local(store) => export(&store, name),
        Target::Remote(remote) => {
            validate_cassette_name("cassette", name)?;
            Ok(remote
                .get_json(&format!("/cassettes/{name}/interactions"))
                .await?)
        }
    }
}

async fn delete_remote(remote: &Remote, name: &str) -> Result<Option<u64>, AppError> {
    validate_cassette_name("cassette", name)?;
    #[derive(Deserialize)]
    struct Deleted {
        deleted: u64,
    }
    match remote
        .send_json::<Deleted>(Method::DELETE, &format!("/cassettes/{name}"), Bytes::new())
        .await
    {
        Ok(deleted) => Ok(Some(deleted.deleted)),
        Err(crate::remote::RemoteError::Status { status, .. }) if status == 404 => Ok(None),
        Err(error) => Err(error.into()),
    }
}
