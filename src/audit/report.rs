//! The records a filter matches, written out in one of the output forms as the trail is
//! read: the CLI and the admin API hold one record at a time (with a `limit`, that many),
//! never the whole trail, which at its default retention is ~80 MB of JSON.

use std::cell::RefCell;
use std::io::Write;

use serde::ser::{Error as _, SerializeSeq};
use serde::{Serialize, Serializer};

use super::format::{self, Table};
use super::query::Filter;
use super::{query_each, AuditError};
use crate::store::Store;

/// An output form of [`write`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// The aligned table: the trail is read twice, first for the columns' widths.
    Table,
    /// One stored record per line.
    Jsonl,
    /// The admin API's `{"records":[...]}`, compact.
    Json,
    /// A HAR 1.2 log; `pretty` for people and diffs, compact for the admin API.
    Har { pretty: bool },
}

/// Writes the records `filter` matches to `out` as `form`. A failure to read the trail
/// is the caller's `E` from [`AuditError`]; a failure to write is `write_error`'s.
pub fn write<E: From<AuditError>>(
    store: &Store,
    filter: &Filter,
    form: Form,
    out: &mut dyn Write,
    write_error: impl Fn(std::io::Error) -> E,
) -> Result<(), E> {
    match form {
        Form::Table => write_table(store, filter, out, write_error),
        Form::Jsonl | Form::Json => {
            let lines = form == Form::Jsonl;
            if !lines {
                out.write_all(b"{\"records\":[").map_err(&write_error)?;
            }
            let mut first = true;
            query_each(store, filter, |record| {
                if !lines && !first {
                    out.write_all(b",").map_err(&write_error)?;
                }
                first = false;
                serde_json::to_writer(&mut *out, &record)
                    .map_err(|e| write_error(std::io::Error::from(e)))?;
                if lines {
                    out.write_all(b"\n").map_err(&write_error)?;
                }
                Ok::<_, E>(())
            })?;
            if !lines {
                out.write_all(b"]}").map_err(&write_error)?;
            }
            Ok(())
        }
        Form::Har { pretty } => {
            let failure = RefCell::new(None);
            let document = HarDocument {
                log: HarLog {
                    version: "1.2",
                    creator: Creator {
                        name: "graphvcr",
                        version: env!("CARGO_PKG_VERSION"),
                    },
                    pages: [],
                    entries: Entries {
                        store,
                        filter,
                        failure: &failure,
                    },
                },
            };
            let written = if pretty {
                let mut serializer = serde_json::Serializer::pretty(&mut *out);
                document.serialize(&mut serializer)
            } else {
                document.serialize(&mut serde_json::Serializer::new(&mut *out))
            };
            // The trail's own failure, kept aside, says more than its serde form.
            if let Some(error) = failure.into_inner() {
                return Err(E::from(error));
            }
            written.map_err(|e| write_error(std::io::Error::from(e)))?;
            if pretty {
                out.write_all(b"\n").map_err(&write_error)?;
            }
            Ok(())
        }
    }
}

/// The table's widths come from a first read; the second writes the rows, and stops at
/// the last record the first one saw, so records appended in between cannot overflow a
/// column or shift a `limit`'s window.
fn write_table<E: From<AuditError>>(
    store: &Store,
    filter: &Filter,
    out: &mut dyn Write,
    write_error: impl Fn(std::io::Error) -> E,
) -> Result<(), E> {
    let mut table = Table::default();
    let mut last = None;
    query_each(store, filter, |record| {
        table.fit(&record);
        last = Some(record.seq);
        Ok::<_, E>(())
    })?;
    out.write_all(table.header().as_bytes())
        .map_err(&write_error)?;
    let Some(last) = last else {
        return Ok(());
    };
    let seen = Filter {
        through_seq: Some(last),
        ..filter.clone()
    };
    query_each(store, &seen, |record| {
        out.write_all(table.row(&record).as_bytes())
            .map_err(&write_error)
    })
}

#[derive(Serialize)]
struct HarDocument<'a> {
    log: HarLog<'a>,
}

/// Headers are not part of the audit, so the entries' lists are empty and their sizes -1
/// (unknown), as the spec allows; graphvcr's own fields go under `_graphvcr`.
#[derive(Serialize)]
struct HarLog<'a> {
    version: &'static str,
    creator: Creator,
    pages: [(); 0],
    entries: Entries<'a>,
}

#[derive(Serialize)]
struct Creator {
    name: &'static str,
    version: &'static str,
}

/// The entries, serialized as the trail is read. A failure to read it ends the document
/// and is kept in `failure` for the caller.
struct Entries<'a> {
    store: &'a Store,
    filter: &'a Filter,
    failure: &'a RefCell<Option<AuditError>>,
}

/// Why reading the entries stopped: the trail, or the serializer (a failed write).
enum Stopped<S> {
    Trail(AuditError),
    Serializer(S),
}

impl<S> From<AuditError> for Stopped<S> {
    fn from(error: AuditError) -> Self {
        Self::Trail(error)
    }
}

impl Serialize for Entries<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(None)?;
        let read = query_each(self.store, self.filter, |record| {
            seq.serialize_element(&format::har_entry(&record))
                .map_err(Stopped::Serializer)
        });
        match read {
            Ok(()) => seq.end(),
            Err(Stopped::Serializer(error)) => Err(error),
            Err(Stopped::Trail(error)) => {
                let message = error.to_string();
                *self.failure.borrow_mut() = Some(error);
                Err(S::Error::custom(message))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::audit::tests::trail;

    /// A store in a fresh directory (kept as long as the guard) with `count` records, or
    /// none at all.
    fn trail_of(count: u64) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 1 << 20).expect("open");
        if count > 0 {
            trail(&store, count);
        }
        (dir, store)
    }

    fn written(store: &Store, filter: &Filter, form: Form) -> String {
        let mut out = Vec::new();
        write(store, filter, form, &mut out, |e| {
            AuditError::Query(e.to_string())
        })
        .expect("write");
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn every_form_holds_the_matching_records_in_order() {
        let (_dir, store) = trail_of(12);
        let newest = Filter {
            limit: Some(3),
            ..Filter::default()
        };
        let seqs = |records: &[Value]| -> Vec<u64> {
            records.iter().filter_map(|r| r["seq"].as_u64()).collect()
        };

        let lines: Vec<Value> = written(&store, &newest, Form::Jsonl)
            .lines()
            .map(|line| serde_json::from_str(line).expect("a JSON line"))
            .collect();
        assert_eq!(seqs(&lines), [10, 11, 12]);

        let json: Value =
            serde_json::from_str(&written(&store, &newest, Form::Json)).expect("JSON");
        assert_eq!(
            seqs(json["records"].as_array().expect("records")),
            [10, 11, 12]
        );

        for pretty in [true, false] {
            let text = written(&store, &newest, Form::Har { pretty });
            assert_eq!(text.ends_with('\n'), pretty, "{text}");
            let har: Value = serde_json::from_str(&text).expect("HAR");
            assert_eq!(har["log"]["version"], "1.2");
            assert_eq!(har["log"]["pages"], serde_json::json!([]));
            let entries = har["log"]["entries"].as_array().expect("entries");
            let graphvcr: Vec<Value> = entries.iter().map(|e| e["_graphvcr"].clone()).collect();
            assert_eq!(seqs(&graphvcr), [10, 11, 12]);
        }

        let table = written(&store, &Filter::default(), Form::Table);
        let rows: Vec<&str> = table.lines().collect();
        assert_eq!(rows.len(), 13, "{table}");
        assert!(rows[0].starts_with("SEQ"), "{table}");
        // SEQ is right-aligned, as wide as its header.
        assert!(rows[1].starts_with("  1  2026-"), "{table}");
        assert!(rows[12].starts_with(" 12  2026-"), "{table}");
        let path_column = |row: &str| row.find("/v1.0").expect("path column");
        assert_eq!(path_column(rows[1]), path_column(rows[12]));
    }

    #[test]
    fn no_matching_record_is_an_empty_document() {
        let (_dir, store) = trail_of(0);
        let none = Filter::default();
        assert_eq!(written(&store, &none, Form::Jsonl), "");
        assert_eq!(written(&store, &none, Form::Json), r#"{"records":[]}"#);
        let table = written(&store, &none, Form::Table);
        assert_eq!(table.lines().count(), 1, "the header alone: {table}");
        let har: Value = serde_json::from_str(&written(&store, &none, Form::Har { pretty: false }))
            .expect("HAR");
        assert_eq!(har["log"]["entries"], serde_json::json!([]));
    }

    /// The bound the table's second read uses: records after it are not read, and a
    /// limit counts back from it.
    #[test]
    fn a_through_seq_bound_comes_before_the_limit() {
        let (_dir, store) = trail_of(5);
        let through = Filter {
            through_seq: Some(3),
            limit: Some(2),
            ..Filter::default()
        };
        let lines = written(&store, &through, Form::Jsonl);
        let seqs: Vec<u64> = lines
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok()?["seq"].as_u64())
            .collect();
        assert_eq!(seqs, [2, 3]);
    }
}
