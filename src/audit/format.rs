//! Output forms of audit records: an aligned table for people, JSON lines for
//! pipelines, HAR 1.2 for browser DevTools, and summary statistics.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{AuditBody, AuditRecord};

/// `--format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Jsonl,
    Har,
}

impl Format {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "table" => Some(Self::Table),
            "jsonl" => Some(Self::Jsonl),
            "har" => Some(Self::Har),
            _ => None,
        }
    }
}

/// Renders records in `format`, ending with a newline when not empty.
pub fn render(records: &[AuditRecord], format: Format) -> String {
    match format {
        Format::Table => table(records),
        Format::Jsonl => jsonl(records),
        Format::Har => {
            let mut text = serde_json::to_string_pretty(&har(records)).unwrap_or_default();
            text.push('\n');
            text
        }
    }
}

/// One JSON object per line, exactly the stored form (hash included).
pub fn jsonl(records: &[AuditRecord]) -> String {
    records
        .iter()
        .map(|r| serde_json::to_string(r).unwrap_or_default() + "\n")
        .collect()
}

/// Columns padded to their widest cell; numbers right-aligned; the path last, unpadded.
pub fn table(records: &[AuditRecord]) -> String {
    const HEADER: [&str; 10] = [
        "SEQ",
        "TIME",
        "MODE",
        "CASSETTE",
        "METHOD",
        "STATUS",
        "OUTCOME",
        "MS",
        "UPSTREAM_MS",
        "PATH",
    ];
    const RIGHT: [bool; 10] = [
        true, false, false, false, false, true, false, true, true, false,
    ];
    let rows: Vec<[String; 10]> = records
        .iter()
        .map(|r| {
            [
                r.seq.to_string(),
                r.time.clone(),
                r.mode.clone(),
                r.cassette.clone(),
                r.method.clone(),
                r.status.to_string(),
                r.outcome.clone(),
                format!("{:.1}", r.latency_ms()),
                r.upstream_ms()
                    .map_or("-".to_owned(), |ms| format!("{ms:.1}")),
                r.uri.clone(),
            ]
        })
        .collect();
    let mut widths = HEADER.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 10]| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else if RIGHT[i] {
                out.push_str(&format!("{cell:>width$}  ", width = widths[i]));
            } else {
                out.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
        out
    };
    let mut out = line(HEADER);
    for row in &rows {
        out.push_str(&line(row.each_ref().map(String::as_str)));
    }
    out
}

/// A HAR 1.2 log. Headers are not part of the audit, so their lists are empty and their
/// sizes -1 (unknown), as the spec allows; graphvcr's own fields go under `_graphvcr`.
pub fn har(records: &[AuditRecord]) -> Value {
    let entries: Vec<Value> = records.iter().map(har_entry).collect();
    json!({
        "log": {
            "version": "1.2",
            "creator": {"name": "graphvcr", "version": env!("CARGO_PKG_VERSION")},
            "pages": [],
            "entries": entries,
        }
    })
}

fn har_entry(r: &AuditRecord) -> Value {
    let query: Vec<Value> = r
        .uri
        .split_once('?')
        .map(|(_, q)| q)
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            json!({"name": unescape(name), "value": unescape(value)})
        })
        .collect();
    let total = r.latency_ms();
    let wait = r.upstream_ms().unwrap_or(total).min(total);
    let mut request = json!({
        "method": r.method,
        "url": format!("http://{}{}", if r.host.is_empty() { "localhost" } else { &r.host }, r.uri),
        "httpVersion": r.http_version,
        "cookies": [],
        "headers": [],
        "queryString": query,
        "headersSize": -1,
        "bodySize": r.request_bytes,
    });
    if let Some(body) = &r.request_body {
        request["postData"] = json!({
            "mimeType": r.request_content_type.as_deref().unwrap_or(""),
            "text": body.text,
            "params": [],
        });
    }
    let mut content = json!({
        "size": r.response_bytes,
        "mimeType": r.response_content_type.as_deref().unwrap_or(""),
    });
    if let Some(AuditBody { text, base64 }) = &r.response_body {
        content["text"] = json!(text);
        if *base64 {
            content["encoding"] = json!("base64");
        }
    }
    json!({
        "startedDateTime": r.time,
        "time": total,
        "request": request,
        "response": {
            "status": r.status,
            "statusText": status_text(r.status),
            "httpVersion": r.http_version,
            "cookies": [],
            "headers": [],
            "content": content,
            "redirectURL": "",
            "headersSize": -1,
            "bodySize": r.response_bytes,
        },
        "cache": {},
        "timings": {"send": 0, "wait": wait, "receive": total - wait},
        "serverIPAddress": "",
        "_graphvcr": {
            "seq": r.seq,
            "outcome": r.outcome,
            "mode": r.mode,
            "cassette": r.cassette,
            "client": r.client,
            "interaction": r.interaction,
            "requestId": r.request_id,
            "clientRequestId": r.client_request_id,
            "hash": r.hash,
        },
    })
}

fn unescape(text: &str) -> String {
    percent_encoding::percent_decode_str(&text.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

fn status_text(status: u16) -> &'static str {
    if status == crate::error::MISS_STATUS {
        return "Replay Miss";
    }
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("")
}

/// Counts and latency percentiles over a set of records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub records: usize,
    pub by_outcome: BTreeMap<String, usize>,
    pub by_status: BTreeMap<u16, usize>,
    /// p50, p90, p99 of the total latency, in milliseconds.
    pub latency_ms: Option<Percentiles>,
    /// The same over exchanges that waited on the upstream.
    pub upstream_ms: Option<Percentiles>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles; `None` for no values.
    pub fn of(mut values: Vec<f64>) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        let rank = |p: f64| {
            let index = ((p / 100.0) * values.len() as f64).ceil() as usize;
            values[index.clamp(1, values.len()) - 1]
        };
        Some(Self {
            p50: rank(50.0),
            p90: rank(90.0),
            p99: rank(99.0),
        })
    }
}

/// [`Stats`] gathered one record at a time, so a whole trail need not be held: only its
/// latencies are (8 bytes a record), for the percentiles.
#[derive(Debug, Default)]
pub struct Tally {
    records: usize,
    by_outcome: BTreeMap<String, usize>,
    by_status: BTreeMap<u16, usize>,
    latency_ms: Vec<f64>,
    upstream_ms: Vec<f64>,
}

impl Tally {
    pub fn add(&mut self, record: &AuditRecord) {
        self.records += 1;
        if let Some(count) = self.by_outcome.get_mut(&record.outcome) {
            *count += 1;
        } else {
            self.by_outcome.insert(record.outcome.clone(), 1);
        }
        *self.by_status.entry(record.status).or_insert(0) += 1;
        self.latency_ms.push(record.latency_ms());
        self.upstream_ms.extend(record.upstream_ms());
    }

    pub fn stats(self) -> Stats {
        Stats {
            records: self.records,
            by_outcome: self.by_outcome,
            by_status: self.by_status,
            latency_ms: Percentiles::of(self.latency_ms),
            upstream_ms: Percentiles::of(self.upstream_ms),
        }
    }
}

/// The statistics as aligned text.
pub fn stats_text(stats: &Stats) -> String {
    let mut out = format!("records  {}\n\n", stats.records);
    let width = stats
        .by_outcome
        .keys()
        .map(String::len)
        .max()
        .unwrap_or(0)
        .max("OUTCOME".len());
    out.push_str(&format!("{:<width$}  {:>6}\n", "OUTCOME", "COUNT"));
    for (outcome, count) in &stats.by_outcome {
        out.push_str(&format!("{outcome:<width$}  {count:>6}\n"));
    }
    out.push_str(&format!("\n{:<6}  {:>6}\n", "STATUS", "COUNT"));
    for (status, count) in &stats.by_status {
        out.push_str(&format!("{status:<6}  {count:>6}\n"));
    }
    out.push_str(&format!(
        "\n{:<12}  {:>9}  {:>9}  {:>9}\n",
        "LATENCY_MS", "P50", "P90", "P99"
    ));
    for (name, percentiles) in [
        ("total", &stats.latency_ms),
        ("upstream", &stats.upstream_ms),
    ] {
        match percentiles {
            Some(p) => out.push_str(&format!(
                "{name:<12}  {:>9.1}  {:>9.1}  {:>9.1}\n",
                p.p50, p.p90, p.p99
            )),
            None => out.push_str(&format!("{name:<12}  {:>9}  {:>9}  {:>9}\n", "-", "-", "-")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::tests::record;

    #[test]
    fn table_columns_line_up() {
        let mut long = record(10, 599, "miss");
        long.cassette = "a-much-longer-name".into();
        let text = table(&[record(1, 200, "replayed"), long]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        let column = |line: &str| line.find("/v1.0").expect("path column");
        assert_eq!(column(lines[1]), column(lines[2]));
        assert_eq!(lines[0].find("PATH"), Some(column(lines[1])));
        assert!(lines[2].contains("a-much-longer-name"));
    }

    #[test]
    fn har_has_the_required_fields() {
        let har = har(&[record(1, 599, "miss")]);
        assert_eq!(har["log"]["version"], "1.2");
        assert_eq!(har["log"]["creator"]["name"], "graphvcr");
        let entry = &har["log"]["entries"][0];
        for field in [
            "startedDateTime",
            "time",
            "request",
            "response",
            "cache",
            "timings",
        ] {
            assert!(!entry[field].is_null(), "{field}");
        }
        assert_eq!(
            entry["request"]["url"],
            "http://127.0.0.1:7878/v1.0/me/1?a=1"
        );
        assert_eq!(entry["request"]["queryString"][0]["name"], "a");
        assert_eq!(entry["response"]["statusText"], "Replay Miss");
        assert_eq!(entry["response"]["content"]["size"], 10);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let p = Percentiles::of((1..=100).map(f64::from).collect()).expect("some");
        assert_eq!((p.p50, p.p90, p.p99), (50.0, 90.0, 99.0));
        let one = Percentiles::of(vec![7.0]).expect("some");
        assert_eq!((one.p50, one.p99), (7.0, 7.0));
        assert_eq!(Percentiles::of(Vec::new()), None);
        let mut tally = Tally::default();
        for r in [record(1, 200, "replayed"), record(2, 599, "miss")] {
            tally.add(&r);
        }
        let s = tally.stats();
        assert_eq!(s.by_status.get(&599), Some(&1));
        assert!(stats_text(&s).contains("miss"));
    }
}
