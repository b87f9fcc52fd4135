//! `graphvcr cassette ...`: list, show, export, import, delete, prune, verify and suggest.
//!
//! The export document (see `record`) is the lossless, reviewable form of a cassette and
//! the migration path off the store's on-disk format; HAR 1.2 is the exchange format with
//! browsers and other tools.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde_json::Value;

use crate::app::AppError;
use crate::cli::{CassetteCommand, ExportFormat, VerifyArgs};
use crate::config::{validate_cassette_name, Config, MatchingConfig};
use crate::har;
use crate::matching::{self, rules::pointer_tokens};
use crate::record::{
    decode_body, header_value, headers_to_map, ExportDocument, ExportedInteraction, Interaction,
    EXPORT_VERSION,
};
use crate::remote::{Remote, RemoteError};
use crate::store::{CassetteInfo, Store, StoreError};
use crate::upstream::Upstream;

/// Documents are read whole; refuse anything larger than this.
const MAX_IMPORT_BYTES: u64 = 1 << 30;

fn io_error(e: std::io::Error) -> AppError {
    AppError::Other(format!("cannot write output: {e}"))
}

/// Every interaction of an existing cassette, in recording order.
fn load(store: &Store, cassette: &str) -> Result<Vec<Interaction>, AppError> {
    let interactions = store.interactions(cassette, usize::MAX)?;
    if interactions.is_empty() {
        ensure_exists(store, cassette)?;
    }
    Ok(interactions)
}

/// For a cassette with no interactions: whether it exists at all.
fn ensure_exists(store: &Store, cassette: &str) -> Result<(), AppError> {
    if store.has_cassette(cassette)? {
        return Ok(());
    }
    Err(AppError::Other(format!(
        "no cassette named '{cassette}' in {}",
        store.path().display()
    )))
}

/// A cassette as an export document, built whole: the reference the streamed exports
/// are tested against.
#[cfg(test)]
fn export(store: &Store, cassette: &str) -> Result<ExportDocument, AppError> {
    Ok(ExportDocument {
        graphvcr_export: EXPORT_VERSION,
        cassette: cassette.to_owned(),
        interactions: load(store, cassette)?
            .iter()
            .map(ExportedInteraction::from_interaction)
            .collect(),
    })
}

/// A cassette's export document (or HAR log) written to `out` as the store is read: the
/// admin API's answer, streamed, so a running proxy asked for a large cassette holds a
/// few chunks of the document rather than all of it. `pretty` gives the bytes
/// `cassette export` writes.
pub fn write_export(
    store: &Store,
    cassette: &str,
    format: ExportFormat,
    base_url: &str,
    pretty: bool,
    out: &mut dyn Write,
) -> Result<(), AppError> {
    let interactions = existing_interactions(store, cassette)?;
    write_document(cassette, interactions, format, base_url, pretty, out)
}

fn write_document<E: std::fmt::Display>(
    cassette: &str,
    interactions: impl Iterator<Item = Result<Interaction, E>>,
    format: ExportFormat,
    base_url: &str,
    pretty: bool,
    out: &mut dyn Write,
) -> Result<(), AppError> {
    match format {
        ExportFormat::Json => write_json(out, pretty, &streamed_export(cassette, interactions)),
        ExportFormat::Har => {
            let base_url = base_url.trim_end_matches('/');
            let entries =
                interactions.map(|i| i.map(|i| har::entry_from_interaction(&i, base_url)));
            write_json(out, pretty, &har::document(Streamed::new(entries)))
        }
    }
}

/// A document written through a buffer: pretty and ending in a newline (stable for git
/// diffs: what `cassette export` writes), or compact.
fn write_json(
    out: &mut dyn Write,
    pretty: bool,
    document: &impl serde::Serialize,
) -> Result<(), AppError> {
    let mut out = std::io::BufWriter::with_capacity(64 << 10, out);
    let written = if pretty {
        document.serialize(&mut serde_json::Serializer::pretty(&mut out))
    } else {
        serde_json::to_writer(&mut out, document)
    };
    written.map_err(|e| json_error(e, "cannot export"))?;
    if pretty {
        out.write_all(b"\n").map_err(io_error)?;
    }
    out.flush().map_err(io_error)
}

/// A cassette's interactions as the store reads them; an error if it does not exist.
fn existing_interactions(
    store: &Store,
    cassette: &str,
) -> Result<impl Iterator<Item = Result<Interaction, StoreError>>, AppError> {
    let mut interactions = store.each_interaction(cassette).peekable();
    if interactions.peek().is_none() {
        ensure_exists(store, cassette)?;
    }
    Ok(interactions)
}

fn streamed_export<E>(
    cassette: &str,
    interactions: impl Iterator<Item = Result<Interaction, E>>,
) -> StreamedExport<'_, impl Iterator<Item = Result<ExportedInteraction, E>>> {
    StreamedExport {
        graphvcr_export: EXPORT_VERSION,
        cassette,
        interactions: Streamed::new(
            interactions.map(|i| i.map(|i| ExportedInteraction::from_interaction(&i))),
        ),
    }
}

/// A failed write of a document: the output's fault, or (`failed`) the document's.
fn json_error(error: serde_json::Error, failed: &str) -> AppError {
    if error.is_io() {
        AppError::Other(format!("cannot write output: {error}"))
    } else {
        AppError::Other(format!("{failed}: {error}"))
    }
}

/// `cassette export` on the store itself: the document is written as the store is read,
/// so a cassette of any size takes about one interaction's worth of memory (building the
/// document first took about five times its size).
pub fn run_export(
    store: &Store,
    cassette: &str,
    format: ExportFormat,
    base_url: &str,
    path: Option<&Path>,
    out: &mut impl Write,
) -> Result<(), AppError> {
    let interactions = existing_interactions(store, cassette)?;
    write_output(cassette, path, out, |out| {
        write_document(cassette, interactions, format, base_url, true, out)
    })
}

/// An [`ExportDocument`] whose interactions are written as they are read.
#[derive(serde::Serialize)]
#[serde(bound(serialize = "Streamed<I>: serde::Serialize"))]
struct StreamedExport<'a, I> {
    graphvcr_export: u32,
    cassette: &'a str,
    interactions: Streamed<I>,
}

/// A sequence serialized from an iterator without collecting it; the first error ends the
/// document with that error.
struct Streamed<I>(std::cell::RefCell<Option<I>>);

impl<I> Streamed<I> {
    fn new(items: I) -> Self {
        Self(std::cell::RefCell::new(Some(items)))
    }
}

impl<I, T, E> serde::Serialize for Streamed<I>
where
    I: Iterator<Item = Result<T, E>>,
    T: serde::Serialize,
    E: std::fmt::Display,
{
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error as _, SerializeSeq as _};
        let items = self
            .0
            .borrow_mut()
            .take()
            .ok_or_else(|| S::Error::custom("a streamed sequence is written once"))?;
        let mut seq = serializer.serialize_seq(None)?;
        for item in items {
            seq.serialize_element(&item.map_err(S::Error::custom)?)?;
        }
        seq.end()
    }
}

/// Writes an export to `out`, or to `path` through a file beside it that replaces `path`
/// only once complete: an export that fails part-way leaves an earlier file as it was.
fn write_output(
    cassette: &str,
    path: Option<&Path>,
    out: &mut impl Write,
    write: impl FnOnce(&mut dyn Write) -> Result<(), AppError>,
) -> Result<(), AppError> {
    let mut output = Output::open(cassette, path, out)?;
    let written = write(output.writer());
    output.finish(written)
}

/// Where an export goes (see [`write_output`]); opened before the document is written
/// and finished with how writing went, so the document may also come from an `await`.
struct Output<'a> {
    cassette: &'a str,
    out: &'a mut dyn Write,
    /// The partial file, its path, and the path it replaces once complete.
    file: Option<(std::fs::File, std::path::PathBuf, &'a Path)>,
}

impl<'a> Output<'a> {
    fn open(
        cassette: &'a str,
        path: Option<&'a Path>,
        out: &'a mut dyn Write,
    ) -> Result<Self, AppError> {
        let file = match path {
            None => None,
            Some(path) => {
                let file_name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let partial = path.with_file_name(format!(".{file_name}.partial"));
                let file = std::fs::File::create(&partial).map_err(|e| cannot_write(path, e))?;
                Some((file, partial, path))
            }
        };
        Ok(Self {
            cassette,
            out,
            file,
        })
    }

    fn writer(&mut self) -> &mut dyn Write {
        match &mut self.file {
            Some((file, _, _)) => file,
            None => &mut *self.out,
        }
    }

    /// Puts a complete file in place, or removes the partial one after a failure.
    fn finish(self, written: Result<(), AppError>) -> Result<(), AppError> {
        let Some((file, partial, path)) = self.file else {
            return written;
        };
        let placed = written
            .and_then(|()| file.sync_all().map_err(|e| cannot_write(path, e)))
            .and_then(|()| std::fs::rename(&partial, path).map_err(|e| cannot_write(path, e)));
        if placed.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
        placed?;
        eprintln!(
            "exported cassette '{}' to {}",
            self.cassette,
            path.display()
        );
        Ok(())
    }
}

fn cannot_write(path: &Path, error: std::io::Error) -> AppError {
    AppError::Other(format!("cannot write {}: {error}", path.display()))
}

/// Parses an export document.
pub fn parse_export(text: &str, origin: &Path) -> Result<ExportDocument, AppError> {
    let document: ExportDocument = parse_document(text, origin)?;
    check_export_version(document.graphvcr_export, origin)?;
    Ok(document)
}

fn parse_document<T: serde::de::DeserializeOwned>(
    text: &str,
    origin: &Path,
) -> Result<T, AppError> {
    serde_json::from_str(text).map_err(|e| {
        AppError::Other(format!(
            "{} is not a graphvcr export document: {e}",
            origin.display()
        ))
    })
}

fn check_export_version(version: u32, origin: &Path) -> Result<(), AppError> {
    if version > EXPORT_VERSION {
        return Err(AppError::Other(format!(
            "{} is export version {version}, newer than this graphvcr reads ({EXPORT_VERSION})",
            origin.display(),
        )));
    }
    Ok(())
}

/// An export document as import reads it: each interaction becomes an [`Interaction`] as
/// soon as it is parsed, so its exported form (a JSON body as a `Value`, several times
/// the body's size) is gone before the next one is read.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportForImport {
    graphvcr_export: u32,
    cassette: String,
    #[serde(deserialize_with = "interactions_as_read")]
    interactions: Vec<Interaction>,
}

fn interactions_as_read<'de, D>(deserializer: D) -> Result<Vec<Interaction>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct EachInteraction;

    impl<'de> serde::de::Visitor<'de> for EachInteraction {
        type Value = Vec<Interaction>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an array of interactions")
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut interactions = Vec::new();
            while let Some(exported) = seq.next_element::<ExportedInteraction>()? {
                // The cassette is the document's, known once the whole document is read.
                let interaction = exported.into_interaction("").map_err(|e| {
                    serde::de::Error::custom(format_args!(
                        "interaction {}: a base64 body does not decode: {e}",
                        interactions.len()
                    ))
                })?;
                interactions.push(interaction);
            }
            Ok(interactions)
        }
    }

    deserializer.deserialize_seq(EachInteraction)
}

/// A document read for import: the cassette name it suggests and its interactions.
pub struct Imported {
    pub cassette: String,
    pub interactions: Vec<Interaction>,
}

/// Reads a graphvcr export document or a HAR 1.2 file (told apart by their top-level
/// member); `fallback_name` names a HAR's cassette, which HAR itself cannot carry.
pub fn parse_any(text: &str, origin: &Path, fallback_name: &str) -> Result<Imported, AppError> {
    if is_har(text)
        .map_err(|e| AppError::Other(format!("{} is not JSON: {e}", origin.display())))?
    {
        let document: har::Har = serde_json::from_str(text).map_err(|e| {
            AppError::Other(format!(
                "{} is not a HAR 1.2 document: {e}",
                origin.display()
            ))
        })?;
        let interactions = document
            .log
            .entries
            .into_iter()
            .enumerate()
            .map(|(i, entry)| {
                har::interaction_from_entry(entry, fallback_name)
                    .map_err(|e| AppError::Other(format!("{} entry {i}: {e}", origin.display())))
            })
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(Imported {
            cassette: fallback_name.to_owned(),
            interactions,
        });
    }
    let document: ExportForImport = parse_document(text, origin)?;
    check_export_version(document.graphvcr_export, origin)?;
    let mut interactions = document.interactions;
    for interaction in &mut interactions {
        interaction.cassette.clone_from(&document.cassette);
    }
    Ok(Imported {
        cassette: document.cassette,
        interactions,
    })
}

/// Whether a JSON document is a HAR file (it has a top-level `log`), read without building
/// it: a `serde_json::Value` of a large document took about ten times the document's size
/// in memory, before the typed parse that follows took as much again.
fn is_har(text: &str) -> Result<bool, serde_json::Error> {
    // The top level's member names alone; their values are skipped.
    type TopLevel = BTreeMap<String, serde::de::IgnoredAny>;
    match serde_json::from_str::<TopLevel>(text) {
        Ok(top) => Ok(top.contains_key("log")),
        // JSON, but not an object with members: the export parse says what is wrong.
        Err(e) if e.is_data() => Ok(false),
        Err(e) => Err(e),
    }
}

/// Stores an export document under `name` (default: the document's own).
pub fn import(
    store: &Store,
    document: ExportDocument,
    name: Option<&str>,
    matching: &MatchingConfig,
) -> Result<(String, usize), AppError> {
    let cassette = name.unwrap_or(&document.cassette).to_owned();
    let mut interactions = Vec::with_capacity(document.interactions.len());
    for (i, exported) in document.interactions.into_iter().enumerate() {
        interactions.push(exported.into_interaction(&cassette).map_err(|e| {
            AppError::Other(format!(
                "interaction {i}: a base64 body does not decode: {e}"
            ))
        })?);
    }
    let count = import_interactions(store, &cassette, interactions, matching)?;
    Ok((cassette, count))
}

/// Stores interactions under `cassette`, keeping their order (by id where they carry
/// one) so episodes replay as recorded, and indexes them for the configured rules.
pub fn import_interactions(
    store: &Store,
    cassette: &str,
    mut interactions: Vec<Interaction>,
    matching: &MatchingConfig,
) -> Result<usize, AppError> {
    validate_cassette_name("cassette", cassette)?;
    let rule_set = matching.for_cassette(cassette);
    interactions.sort_by_key(|i| i.id);
    let records = interactions
        .into_iter()
        .map(|mut interaction| {
            interaction.cassette = cassette.to_owned();
            (rule_set.key_of(&interaction), interaction)
        })
        .collect();
    let count = store.insert_all(rule_set.fingerprint(), records)?.len();
    store.flush_now()?;
    Ok(count)
}

/// Reads a document from disk, bounded in size.
pub fn read_file(path: &Path) -> Result<String, AppError> {
    let size = std::fs::metadata(path)
        .map_err(|e| AppError::Other(format!("cannot read {}: {e}", path.display())))?
        .len();
    if size > MAX_IMPORT_BYTES {
        return Err(AppError::Other(format!(
            "{} is larger than {MAX_IMPORT_BYTES} bytes",
            path.display()
        )));
    }
    std::fs::read_to_string(path)
        .map_err(|e| AppError::Other(format!("cannot read {}: {e}", path.display())))
}

/// Prints the cassette list as an aligned table.
pub fn print_list(store: &Store, out: &mut impl Write) -> Result<(), AppError> {
    print_cassettes(store.cassettes()?, out)
}

fn print_cassettes(cassettes: Vec<CassetteInfo>, out: &mut impl Write) -> Result<(), AppError> {
    let width = cassettes
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(0)
        .max(8);
    writeln!(out, "{:<width$}  INTERACTIONS", "CASSETTE").map_err(io_error)?;
    for cassette in cassettes {
        writeln!(out, "{:<width$}  {}", cassette.name, cassette.interactions).map_err(io_error)?;
    }
    Ok(())
}

/// Prints one line per interaction: id, time, request, status, sizes.
/// Read as printed, like an export.
pub fn print_show(store: &Store, cassette: &str, out: &mut impl Write) -> Result<(), AppError> {
    let mut interactions = store.each_interaction(cassette).peekable();
    if interactions.peek().is_none() {
        ensure_exists(store, cassette)?;
    }
    let mut out = std::io::BufWriter::new(out);
    print_interactions(
        interactions.map(|i| i.map_err(AppError::from)),
        cassette,
        &mut out,
    )?;
    out.flush().map_err(io_error)
}

fn print_interactions(
    interactions: impl Iterator<Item = Result<Interaction, AppError>>,
    cassette: &str,
    out: &mut impl Write,
) -> Result<(), AppError> {
    writeln!(
        out,
        "{:>6}  {:<24}  {:<7} {:>6} {:>9} {:>9}  URI",
        "ID", "RECORDED", "METHOD", "STATUS", "REQ_BYTES", "RSP_BYTES"
    )
    .map_err(io_error)?;
    let mut count = 0usize;
    for i in interactions {
        let i = i?;
        count += 1;
        writeln!(
            out,
            "{:>6}  {:<24}  {:<7} {:>6} {:>9} {:>9}  {}",
            i.id,
            i.recorded_at,
            i.request.method,
            i.response.status,
            i.request.body.len(),
            i.response.body.len(),
            i.request.uri
        )
        .map_err(io_error)?;
    }
    writeln!(out, "{count} interactions in cassette '{cassette}'").map_err(io_error)?;
    Ok(())
}

/// The body as a JSON value (decoded when compressed), if it is JSON.
fn json_body(headers: &[crate::record::Header], body: &[u8]) -> Option<Value> {
    let decoded = decode_body(header_value(headers, "content-encoding"), body, 64 << 20);
    serde_json::from_slice(decoded.as_deref().unwrap_or(body)).ok()
}

/// What `cassette verify` found for one recorded request.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub interaction: u64,
    pub method: String,
    pub uri: String,
    /// Empty when the live answer matches the recording.
    pub changes: Vec<String>,
}

/// Options of `cassette verify`.
pub struct VerifyOptions {
    /// Re-send only these methods (upper case); all when empty.
    pub methods: Vec<String>,
    /// Headers set on every re-sent request (a live token, since stored ones are redacted).
    pub headers: Vec<(String, String)>,
    /// JSON Pointers ignored in response bodies, besides the rules' `ignore_pointers`.
    pub ignore: Vec<String>,
}

/// Re-sends the latest recording of each distinct request of `cassette` (its
/// `interactions`) to `upstream` and compares status and body (JSON bodies as values,
/// minus ignored pointers).
pub async fn verify(
    interactions: Vec<Interaction>,
    cassette: &str,
    upstream: &Upstream,
    matching: &MatchingConfig,
    options: &VerifyOptions,
) -> Result<Vec<Verdict>, AppError> {
    let rule_set = matching.for_cassette(cassette);
    let mut latest: BTreeMap<[u8; 32], Interaction> = BTreeMap::new();
    for interaction in interactions {
        if options.methods.is_empty()
            || options
                .methods
                .contains(&interaction.request.method.to_ascii_uppercase())
        {
            latest.insert(rule_set.key_of(&interaction).0, interaction);
        }
    }
    let mut verdicts = Vec::new();
    let mut recorded: Vec<Interaction> = latest.into_values().collect();
    recorded.sort_by_key(|i| i.id);
    for interaction in recorded {
        let request = &interaction.request;
        let mut headers = headers_to_map(&request.headers);
        for (name, value) in &options.headers {
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(name.as_bytes()),
                http::HeaderValue::from_str(value),
            ) {
                headers.insert(name, value);
            }
        }
        let method = http::Method::from_bytes(request.method.as_bytes()).map_err(|e| {
            AppError::Other(format!("interaction {}: bad method: {e}", interaction.id))
        })?;
        let mut changes = Vec::new();
        match upstream
            .send(method, &request.uri, headers, request.body.clone())
            .await
        {
            Err(error) => changes.push(format!("upstream failed: {error}")),
            Ok(live) => {
                if live.status.as_u16() != interaction.response.status {
                    changes.push(format!(
                        "status {} -> {}",
                        interaction.response.status,
                        live.status.as_u16()
                    ));
                }
                let rules = rule_set.rules_for(&request.method, matching::path_of(&request.uri));
                let live_headers = crate::record::headers_from_map(&live.headers);
                let pointers: Vec<&String> = rules
                    .ignore_pointers
                    .iter()
                    .chain(&options.ignore)
                    .collect();
                let strip = |mut value: Value| {
                    for pointer in &pointers {
                        matching::remove_pointer(&mut value, &pointer_tokens(pointer));
                    }
                    value
                };
                match (
                    json_body(&interaction.response.headers, &interaction.response.body),
                    json_body(&live_headers, &live.body),
                ) {
                    (Some(before), Some(after)) => {
                        let (before, after) = (strip(before), strip(after));
                        for difference in value_differences(&before, &after) {
                            changes.push(difference);
                        }
                    }
                    _ if interaction.response.body != live.body => {
                        changes.push("body changed".to_owned())
                    }
                    _ => {}
                }
            }
        }
        verdicts.push(Verdict {
            interaction: interaction.id,
            method: request.method.clone(),
            uri: request.uri.clone(),
            changes,
        });
    }
    Ok(verdicts)
}

/// `body POINTER (recorded X, now Y)` lines between two JSON values.
fn value_differences(before: &Value, after: &Value) -> Vec<String> {
    let as_request = |value: &Value| matching::Normalized {
        method: String::new(),
        host: None,
        path: String::new(),
        query: Vec::new(),
        headers: Vec::new(),
        body: matching::NormalBody::Json(value.clone()),
    };
    matching::differences(&as_request(before), &as_request(after))
        .into_iter()
        .map(|d| format!("{} (recorded {}, now {})", d.field, d.recorded, d.received))
        .collect()
}

/// Volatile fields found by comparing repeated recordings.
#[derive(Debug, Default, PartialEq)]
pub struct Suggestions {
    /// Per route (method and path): request body pointers that differed between
    /// otherwise identical requests.
    pub request_pointers: BTreeMap<(String, String), Vec<String>>,
    /// Response body pointers that differed between episodes of one request.
    pub response_pointers: Vec<String>,
    /// Response headers whose values differed between episodes of one request.
    pub response_headers: Vec<String>,
}

/// Compares repeated recordings of `cassette` (its `interactions`): requests to the same
/// method and path whose bodies differ in a few members (timestamps, GUIDs), and
/// episodes of one request whose answers differ.
pub fn suggest(
    interactions: &[Interaction],
    cassette: &str,
    matching: &MatchingConfig,
) -> Suggestions {
    let rule_set = matching.for_cassette(cassette);
    let mut suggestions = Suggestions::default();
    let mut by_route: BTreeMap<(String, String), Vec<&Interaction>> = BTreeMap::new();
    let mut by_key: BTreeMap<[u8; 32], Vec<&Interaction>> = BTreeMap::new();
    for interaction in interactions {
        let path = matching::normalize_percent(matching::path_of(&interaction.request.uri), false);
        by_route
            .entry((interaction.request.method.clone(), path))
            .or_default()
            .push(interaction);
        by_key
            .entry(rule_set.key_of(interaction).0)
            .or_default()
            .push(interaction);
    }
    for (route, group) in &by_route {
        let mut pointers = Vec::new();
        for pair in group.windows(2) {
            let (a, b) = (
                json_body(&pair[0].request.headers, &pair[0].request.body),
                json_body(&pair[1].request.headers, &pair[1].request.body),
            );
            if let (Some(a), Some(b)) = (a, b) {
                pointers.extend(changed_pointers(&a, &b));
            }
        }
        pointers.sort();
        pointers.dedup();
        if !pointers.is_empty() {
            suggestions.request_pointers.insert(route.clone(), pointers);
        }
    }
    for group in by_key.values() {
        for pair in group.windows(2) {
            let (a, b) = (&pair[0].response, &pair[1].response);
            if let (Some(x), Some(y)) = (
                json_body(&a.headers, &a.body),
                json_body(&b.headers, &b.body),
            ) {
                suggestions
                    .response_pointers
                    .extend(changed_pointers(&x, &y));
            }
            for header in &a.headers {
                let other = header_value(&b.headers, &header.name);
                if other.is_some_and(|v| v != header.value) {
                    suggestions
                        .response_headers
                        .push(header.name.to_ascii_lowercase());
                }
            }
        }
    }
    suggestions.response_pointers.sort();
    suggestions.response_pointers.dedup();
    suggestions.response_headers.sort();
    suggestions.response_headers.dedup();
    suggestions
}

/// Pointers whose values differ between two documents of the same shape. A document
/// whose shape differs (more than a handful of changes) suggests nothing: it is a
/// different request, not a volatile field.
fn changed_pointers(a: &Value, b: &Value) -> Vec<String> {
    const MAX_VOLATILE: usize = 5;
    let lines = value_differences(a, b);
    if lines.is_empty() || lines.len() > MAX_VOLATILE {
        return Vec::new();
    }
    lines
        .iter()
        .filter_map(|line| {
            line.strip_prefix("body ")?
                .split(' ')
                .next()
                .map(str::to_owned)
        })
        .filter(|pointer| pointer != "/")
        .collect()
}

/// Suggestions as config to paste into `config.toml`.
pub fn suggestions_toml(cassette: &str, suggestions: &Suggestions) -> String {
    let mut out = String::new();
    if suggestions == &Suggestions::default() {
        out.push_str(&format!(
            "# no volatile fields found in cassette '{cassette}': no repeated request differed\n"
        ));
        return out;
    }
    let list = |items: &[String]| {
        items
            .iter()
            .map(|i| format!("{i:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for ((method, path), pointers) in &suggestions.request_pointers {
        out.push_str(&format!(
            "# {method} {path}: these request body members changed between recordings\n[[match.routes]]\nroute = {path:?}\nroute_method = {method:?}\nignore_pointers = [{}]\n\n",
            list(pointers)
        ));
    }
    if !suggestions.response_pointers.is_empty() {
        out.push_str(&format!(
            "# response body members that changed between episodes of one request\n# (ignore them when verifying: graphvcr cassette verify {cassette} --ignore POINTER)\n# response_pointers = [{}]\n",
            list(&suggestions.response_pointers)
        ));
    }
    if !suggestions.response_headers.is_empty() {
        out.push_str(&format!(
            "# response headers that changed between episodes of one request\n# response_headers = [{}]\n",
            list(&suggestions.response_headers)
        ));
    }
    out
}

/// Where `verify` and `suggest` read a cassette from: the store, or the admin API of the
/// proxy that holds it (its export document, which keeps every interaction exactly).
/// Either way the comparison runs here, under this command's own config.
pub enum Source<'a> {
    Store(&'a Store),
    Remote(&'a Remote),
}

impl Source<'_> {
    /// Every interaction of an existing cassette, in recording order.
    pub async fn interactions(&self, cassette: &str) -> Result<Vec<Interaction>, AppError> {
        match self {
            Self::Store(store) => load(store, cassette),
            Self::Remote(remote) => document_interactions(fetch_remote(remote, cassette).await?),
        }
    }
}

/// `cassette verify`: re-sends, prints one line per request (and one per change), and
/// fails when any answer changed.
pub async fn run_verify(
    args: &VerifyArgs,
    source: Source<'_>,
    mut config: Config,
    out: &mut impl Write,
) -> Result<(), AppError> {
    let name = &args.name;
    config.upstream.url = args.upstream.clone();
    config.upstream.ca_file = args.upstream_ca.clone();
    let client = Upstream::new(&config.upstream)?;
    let headers = args
        .headers
        .iter()
        .map(|h| {
            h.split_once(':')
                .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
                .ok_or_else(|| AppError::Other(format!("--header {h:?} is not `Name: value`")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let options = VerifyOptions {
        methods: if args.all_methods {
            Vec::new()
        } else {
            vec!["GET".into(), "HEAD".into()]
        },
        headers,
        ignore: args.ignore.clone(),
    };
    let interactions = source.interactions(name).await?;
    let verdicts = verify(interactions, name, &client, &config.matching, &options).await?;
    let changed = verdicts.iter().filter(|v| !v.changes.is_empty()).count();
    for verdict in &verdicts {
        let state = if verdict.changes.is_empty() {
            "same"
        } else {
            "CHANGED"
        };
        writeln!(
            out,
            "{state:<8} {:>6}  {} {}",
            verdict.interaction, verdict.method, verdict.uri
        )
        .map_err(io_error)?;
        for change in &verdict.changes {
            writeln!(out, "           {change}").map_err(io_error)?;
        }
    }
    writeln!(
        out,
        "{} requests re-sent, {changed} changed",
        verdicts.len()
    )
    .map_err(io_error)?;
    if changed > 0 {
        return Err(AppError::Other(format!(
            "{changed} recorded answers in cassette '{name}' no longer match the upstream"
        )));
    }
    Ok(())
}

/// `cassette suggest`: prints the suggestions as config to paste.
pub async fn run_suggest(
    name: &str,
    source: Source<'_>,
    config: &Config,
    out: &mut impl Write,
) -> Result<(), AppError> {
    let interactions = source.interactions(name).await?;
    let suggestions = suggest(&interactions, name, &config.matching);
    out.write_all(suggestions_toml(name, &suggestions).as_bytes())
        .map_err(io_error)
}

/// Runs a `cassette` subcommand through the admin API of the proxy that holds the
/// store. `verify` and `suggest` read the cassette from it and compare here.
pub async fn run_remote(
    command: CassetteCommand,
    remote: &Remote,
    out: &mut impl Write,
) -> Result<(), AppError> {
    match command {
        CassetteCommand::List(_) => {
            #[derive(serde::Deserialize)]
            struct List {
                cassettes: Vec<CassetteInfo>,
            }
            let list: List = remote.get_json("/cassettes").await?;
            print_cassettes(list.cassettes, out)?;
        }
        // Written by the proxy as it reads the store, copied out as it arrives.
        CassetteCommand::Show { name, .. } => {
            let listing = format!("{}?format=table", interactions_path(&name)?);
            remote.copy(&listing, out).await?;
        }
        CassetteCommand::Export {
            name,
            format,
            out: path,
            base_url,
            ..
        } => {
            // The proxy writes the same bytes as an export from the store, and they are
            // copied out as they arrive: nothing of the document is held here.
            let mut query = String::from("?pretty=true");
            if matches!(format, ExportFormat::Har) {
                let base_url = percent_encoding::utf8_percent_encode(
                    &base_url,
                    percent_encoding::NON_ALPHANUMERIC,
                );
                query.push_str(&format!("&format=har&base_url={base_url}"));
            }
            let source = format!("{}{query}", interactions_path(&name)?);
            let mut output = Output::open(&name, path.as_deref(), out)?;
            let copied = remote.copy(&source, output.writer()).await;
            output.finish(copied.map_err(AppError::from))?;
        }
        CassetteCommand::Import { file, as_name, .. } => {
            let text = read_file(&file)?;
            // Parsed here too, for the document's own name and early errors.
            let imported = parse_any(&text, &file, as_name.as_deref().unwrap_or("imported"))?;
            let name = as_name.unwrap_or(imported.cassette);
            #[derive(serde::Deserialize)]
            struct Imported {
                imported: usize,
            }
            let path = interactions_path(&name)?;
            let body = bytes::Bytes::from(text);
            let imported: Imported = remote.send_json(http::Method::POST, &path, body).await?;
            eprintln!(
                "imported {} interactions into cassette '{name}'",
                imported.imported
            );
        }
        CassetteCommand::Delete { name, .. } => {
            validate_cassette_name("cassette", &name)?;
            #[derive(serde::Deserialize)]
            struct Deleted {
                deleted: u64,
            }
            let path = format!("/cassettes/{name}");
            match remote
                .send_json::<Deleted>(http::Method::DELETE, &path, bytes::Bytes::new())
                .await
            {
                Ok(deleted) => {
                    eprintln!(
                        "deleted cassette '{name}' ({} interactions)",
                        deleted.deleted
                    )
                }
                Err(RemoteError::Status { status, .. }) if status == 404 => {
                    return Err(AppError::Other(format!("no cassette named '{name}'")))
                }
                Err(error) => return Err(error.into()),
            }
        }
        CassetteCommand::Prune {
            name, older_than, ..
        } => {
            validate_cassette_name("cassette", &name)?;
            #[derive(serde::Deserialize)]
            struct Pruned {
                removed: u64,
            }
            let encoded = percent_encoding::utf8_percent_encode(
                &older_than,
                percent_encoding::NON_ALPHANUMERIC,
            );
            let path = format!("/cassettes/{name}/prune?older_than={encoded}");
            let pruned: Pruned = remote
                .send_json(http::Method::POST, &path, bytes::Bytes::new())
                .await?;
            eprintln!(
                "pruned {} interactions older than {older_than} from cassette '{name}'",
                pruned.removed
            );
        }
        CassetteCommand::Verify(args) => {
            let config = Config::resolve_store(&args.store)?;
            run_verify(&args, Source::Remote(remote), config, out).await?;
        }
        CassetteCommand::Suggest { name, store } => {
            let config = Config::resolve_store(&store)?;
            run_suggest(&name, Source::Remote(remote), &config, out).await?;
        }
    }
    Ok(())
}

async fn fetch_remote(remote: &Remote, name: &str) -> Result<ExportDocument, AppError> {
    Ok(remote.get_json(&interactions_path(name)?).await?)
}

/// The admin API's resource for cassette `name`'s export document.
fn interactions_path(name: &str) -> Result<String, AppError> {
    validate_cassette_name("cassette", name)?;
    Ok(format!("/cassettes/{name}/interactions"))
}

fn document_interactions(document: ExportDocument) -> Result<Vec<Interaction>, AppError> {
    let cassette = document.cassette.clone();
    document
        .interactions
        .into_iter()
        .map(|exported| {
            exported.into_interaction(&cassette).map_err(|e| {
                AppError::Other(format!("the proxy sent a body that does not decode: {e}"))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn document(second_body: &str) -> String {
        let interaction = |id: u64, body: &str| {
            format!(
                r#"{{"id":{id},"recorded_at":"2026-01-01T00:00:00Z","upstream_latency_ms":1.0,
                "request":{{"method":"PATCH","uri":"/v1.0/x/{id}","headers":[],"body_json":{{"b":1,"a":2}}}},
                "response":{{"status":204,"headers":[],{body}}}}}"#
            )
        };
        format!(
            r#"{{"graphvcr_export":1,"interactions":[{},{}],"cassette":"suite"}}"#,
            interaction(4, r#""body_text":"""#),
            interaction(9, second_body)
        )
    }

    fn parsed(text: &str) -> Result<Imported, String> {
        parse_any(text, Path::new("doc.json"), "fallback").map_err(|e| e.to_string())
    }

    fn stored(bodies: &[&[u8]]) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 1 << 20).expect("open");
        let records = bodies
            .iter()
            .enumerate()
            .map(|(i, body)| {
                let interaction = Interaction {
                    schema: crate::record::SCHEMA_VERSION,
                    id: 0,
                    cassette: "c".to_owned(),
                    recorded_at: "2026-01-01T00:00:00Z".to_owned(),
                    upstream_latency_ms: 1.5,
                    request: crate::record::RecordedRequest {
                        method: "PATCH".into(),
                        uri: format!("/v1.0/x/{i}"),
                        host: None,
                        headers: vec![crate::record::Header::new(
                            "content-type",
                            b"application/json",
                        )],
                        body: bytes::Bytes::copy_from_slice(body),
                    },
                    response: crate::record::RecordedResponse {
                        status: 200,
                        headers: vec![],
                        body: bytes::Bytes::copy_from_slice(body),
                    },
                };
                (matching::MatchKey([i as u8; 32]), interaction)
            })
            .collect();
        store.insert_all(1, records).expect("insert");
        (dir, store)
    }

    /// What export wrote before it streamed: the document built whole, then printed.
    fn built_whole(store: &Store, format: ExportFormat) -> Vec<u8> {
        let mut text = built_whole_as(store, format, true);
        text.push('\n');
        text.into_bytes()
    }

    /// The document built whole, printed pretty or compact.
    fn built_whole_as(store: &Store, format: ExportFormat, pretty: bool) -> String {
        fn print(document: &impl serde::Serialize, pretty: bool) -> String {
            if pretty {
                serde_json::to_string_pretty(document).expect("json")
            } else {
                serde_json::to_string(document).expect("json")
            }
        }
        match format {
            ExportFormat::Json => print(&export(store, "c").expect("export"), pretty),
            ExportFormat::Har => {
                let entries: Vec<har::Entry> = load(store, "c")
                    .expect("load")
                    .iter()
                    .map(|i| har::entry_from_interaction(i, "https://graph.example"))
                    .collect();
                print(&har::document(entries), pretty)
            }
        }
    }

    #[test]
    fn a_streamed_export_writes_the_bytes_of_the_whole_document() {
        let (_dir, store) = stored(&[
            br#"{"b":1,"a":[true]}"#,
            br#"{"f":0.1,"g":-2.5e-8,"s":"\u00e9\n"}"#,
            b"plain",
            b"\xff\x00",
            b"",
        ]);
        for format in [ExportFormat::Json, ExportFormat::Har] {
            let mut out = Vec::new();
            run_export(
                &store,
                "c",
                format,
                "https://graph.example/",
                None,
                &mut out,
            )
            .expect("export");
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&built_whole(&store, format))
            );
        }
        for format in [ExportFormat::Json, ExportFormat::Har] {
            let written = |pretty: bool| {
                let mut out = Vec::new();
                write_export(
                    &store,
                    "c",
                    format,
                    "https://graph.example/",
                    pretty,
                    &mut out,
                )
                .expect("admin export");
                out
            };
            assert_eq!(
                String::from_utf8_lossy(&written(true)),
                String::from_utf8_lossy(&built_whole(&store, format)),
                "the admin API's pretty document is the export from the store, byte for byte"
            );
            assert_eq!(
                String::from_utf8_lossy(&written(false)),
                built_whole_as(&store, format, false),
                "the admin API's compact document is the whole document's, byte for byte"
            );
        }
        let (_dir, empty) = stored(&[]);
        assert!(
            write_export(&empty, "c", ExportFormat::Json, "", false, &mut Vec::new())
                .is_err_and(|e| e.to_string().starts_with("no cassette")),
            "the compact export of a cassette that does not exist is an error"
        );
        let missing = run_export(&empty, "c", ExportFormat::Json, "", None, &mut Vec::new());
        assert!(
            missing.is_err_and(|e| e.to_string().starts_with("no cassette named 'c'")),
            "a cassette that does not exist is an error"
        );
    }

    #[test]
    fn an_export_that_fails_part_way_leaves_the_earlier_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.json");
        std::fs::write(&path, "earlier\n").expect("write");
        let failed = write_output("c", Some(&path), &mut Vec::new(), |out| {
            out.write_all(b"{\"half\":").map_err(io_error)?;
            Err(AppError::Other("the store broke".into()))
        });
        assert!(failed.is_err_and(|e| e.to_string() == "the store broke"));
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "earlier\n");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(left, ["c.json"], "no partial file left behind");

        write_output("c", Some(&path), &mut Vec::new(), |out| {
            out.write_all(b"complete\n").map_err(io_error)
        })
        .expect("write");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "complete\n");
    }

    #[test]
    fn an_export_is_read_whole_whatever_the_order_of_its_members() {
        let imported = parsed(&document(r#""body_base64":"AAE=""#)).expect("reads");
        assert_eq!(imported.cassette, "suite");
        let ids: Vec<u64> = imported.interactions.iter().map(|i| i.id).collect();
        assert_eq!(ids, [4, 9]);
        for interaction in &imported.interactions {
            assert_eq!(interaction.cassette, "suite", "named after the document");
            assert_eq!(&interaction.request.body[..], br#"{"b":1,"a":2}"#);
        }
        assert_eq!(&imported.interactions[1].response.body[..], [0, 1]);
    }

    #[test]
    fn a_bad_document_is_refused_with_what_is_wrong_and_where() {
        let refused = |text: &str| parsed(text).err().unwrap_or_default();
        let bad_body = refused(&document(r#""body_base64":"not base64!""#));
        assert!(
            bad_body.contains("doc.json is not a graphvcr export document")
                && bad_body.contains("interaction 1: a base64 body does not decode"),
            "{bad_body}"
        );
        let cut = document(r#""body_text":"""#);
        let cut = refused(&cut[..cut.len() - 20]);
        assert!(cut.starts_with("doc.json is not JSON: EOF"), "{cut}");
        let not_an_object = refused("[1, 2]");
        assert!(
            not_an_object.starts_with("doc.json is not a graphvcr export document"),
            "{not_an_object}"
        );
        let newer = refused(
            &document(r#""body_text":"""#)
                .replace(r#""graphvcr_export":1"#, r#""graphvcr_export":7"#),
        );
        assert!(newer.contains("export version 7, newer"), "{newer}");
        let har = refused(r#"{"log":{"version":"1.2"}}"#);
        assert!(
            har.starts_with("doc.json is not a HAR 1.2 document"),
            "{har}"
        );
    }
}
